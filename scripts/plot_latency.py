#!/usr/bin/env python3
"""Plots relay latency percentiles against offered load, one colour per server, as an SVG.

Input (written by scripts/compare.sh):

    {"title": "...", "series": [{"server": "msggate", "points": [
        {"offered": 10000, "achieved": 9990, "p50_us": 210, "p99_us": 900, "p999_us": 2100}, ...]}]}

Usage: plot_latency.py IN.json OUT.svg

No dependencies beyond the standard library: the SVG is written by hand, so the plot can be
remade on any machine that runs the comparison. The y axis is logarithmic (latency spans
orders of magnitude near saturation); p50 is dashed, p99 solid, p99.9 dotted.
"""

import json
import math
import sys
from xml.sax.saxutils import escape

W, H = 860, 520
LEFT, RIGHT, TOP, BOTTOM = 80, 200, 50, 60
COLOURS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e"]
PERCENTILES = [("p50_us", "p50", "6,4"), ("p99_us", "p99", ""), ("p999_us", "p99.9", "2,3")]


def nice_ticks(lo, hi, n=6):
    """Round tick values covering [lo, hi] on a linear axis."""
    span = max(hi - lo, 1e-9)
    raw = span / n
    mag = 10 ** math.floor(math.log10(raw))
    step = min((m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw), default=10 * mag)
    start = math.floor(lo / step) * step
    ticks = []
    t = start
    while t <= hi + step * 0.001:
        ticks.append(t)
        t += step
    return ticks


def fmt_us(us):
    if us >= 1000:
        ms = us / 1000
        return f"{ms:g} ms" if ms >= 10 or ms == int(ms) else f"{ms:.1f} ms"
    return f"{us:g} µs"


def main():
    if len(sys.argv) != 3:
        sys.exit("usage: plot_latency.py IN.json OUT.svg")
    data = json.load(open(sys.argv[1]))
    series = [s for s in data["series"] if s.get("points")]
    if not series:
        sys.exit("plot_latency.py: no points to plot")
    xs = [p["offered"] for s in series for p in s["points"]]
    ys = [p[k] for s in series for p in s["points"] for k, _, _ in PERCENTILES if p.get(k)]
    x_ticks = nice_ticks(0, max(xs))
    x_max = x_ticks[-1]
    y_lo = 10 ** math.floor(math.log10(max(min(ys), 1)))
    y_hi = 10 ** math.ceil(math.log10(max(ys)))
    if y_hi <= y_lo:
        y_hi = y_lo * 10

    pw, ph = W - LEFT - RIGHT, H - TOP - BOTTOM

    def px(x):
        return LEFT + pw * x / x_max

    def py(y):
        return TOP + ph * (1 - (math.log10(max(y, y_lo)) - math.log10(y_lo)) / (math.log10(y_hi) - math.log10(y_lo)))

    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" font-family="sans-serif" font-size="12">',
        f'<rect width="{W}" height="{H}" fill="white"/>',
        f'<text x="{LEFT + pw / 2}" y="24" text-anchor="middle" font-size="15">{escape(data.get("title", "relay latency vs offered load"))}</text>',
    ]
    # Grid and axes.
    for t in x_ticks:
        x = px(t)
        out.append(f'<line x1="{x:.1f}" y1="{TOP}" x2="{x:.1f}" y2="{TOP + ph}" stroke="#ddd"/>')
        out.append(f'<text x="{x:.1f}" y="{TOP + ph + 18}" text-anchor="middle">{t:g}</text>')
    decade = y_lo
    while decade <= y_hi * 1.0001:
        y = py(decade)
        out.append(f'<line x1="{LEFT}" y1="{y:.1f}" x2="{LEFT + pw}" y2="{y:.1f}" stroke="#ccc"/>')
        out.append(f'<text x="{LEFT - 8}" y="{y + 4:.1f}" text-anchor="end">{fmt_us(decade)}</text>')
        for m in range(2, 10):
            if decade * m < y_hi:
                ym = py(decade * m)
                out.append(f'<line x1="{LEFT}" y1="{ym:.1f}" x2="{LEFT + pw}" y2="{ym:.1f}" stroke="#f0f0f0"/>')
        decade *= 10
    out.append(f'<rect x="{LEFT}" y="{TOP}" width="{pw}" height="{ph}" fill="none" stroke="#333"/>')
    out.append(f'<text x="{LEFT + pw / 2}" y="{H - 18}" text-anchor="middle">offered load (messages per second)</text>')
    out.append(
        f'<text x="18" y="{TOP + ph / 2}" text-anchor="middle" transform="rotate(-90 18 {TOP + ph / 2})">'
        "latency, send to recipient's 2001 (log scale)</text>"
    )
    # Lines.
    legend_y = TOP + 10
    for i, s in enumerate(series):
        colour = COLOURS[i % len(COLOURS)]
        pts = sorted(s["points"], key=lambda p: p["offered"])
        for key, label, dash in PERCENTILES:
            coords = [(px(p["offered"]), py(p[key])) for p in pts if p.get(key)]
            if not coords:
                continue
            path = " ".join(f"{x:.1f},{y:.1f}" for x, y in coords)
            dash_attr = f' stroke-dasharray="{dash}"' if dash else ""
            out.append(f'<polyline points="{path}" fill="none" stroke="{colour}" stroke-width="2"{dash_attr}/>')
            for x, y in coords:
                out.append(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="2.5" fill="{colour}"/>')
            lx = LEFT + pw + 15
            out.append(f'<line x1="{lx}" y1="{legend_y}" x2="{lx + 28}" y2="{legend_y}" stroke="{colour}" stroke-width="2"{dash_attr}/>')
            out.append(f'<text x="{lx + 34}" y="{legend_y + 4}">{escape(s["server"])} {label}</text>')
            legend_y += 18
        legend_y += 8
    out.append("</svg>")
    with open(sys.argv[2], "w") as f:
        f.write("\n".join(out) + "\n")


if __name__ == "__main__":
    main()
