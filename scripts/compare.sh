#!/usr/bin/env bash
# Side by side, in one run: msggate (--io-threads 2 and 1) against the tokio reference peer
# (../shared/peers/tokio-relay, --worker-threads 2 --read-buffer 4096, its fair tuned setting),
# driven by the same `msggate stress` scenarios. Every scenario gets a fresh server.
#
#   scripts/compare.sh                  # the table, the JSON reports and the plot under target/compare/
#   UPDATE_DOCS=1 scripts/compare.sh    # also copy the plot to docs/relay-latency.svg
#
# Knobs (environment): IDLE_USERS (10000), RELAY_USERS (1000), CHURN_USERS (100), DURATION (10s),
# RATES ("5000 10000 20000 40000 60000 80000", total msgs/s for the latency sweep, 5 s each),
# SERVERS ("msggate-io2 msggate-io1 tokio-relay"). Loopback only; every run is bounded by its
# --duration, and every server started here is stopped on exit.
set -euo pipefail
cd "$(dirname "$0")/.."

IDLE_USERS=${IDLE_USERS:-10000}
RELAY_USERS=${RELAY_USERS:-1000}
CHURN_USERS=${CHURN_USERS:-100}
DURATION=${DURATION:-10s}
RATES=${RATES:-"5000 10000 20000 40000 60000 80000"}
SERVERS=${SERVERS:-"msggate-io2 msggate-io1 tokio-relay"}
SECRET=compare-secret
OUT=${OUT:-target/compare/$(date +%Y%m%d-%H%M%S)}
mkdir -p "$OUT"

echo "== building msggate and the tokio peer" >&2
cargo build --release --quiet
if [[ " $SERVERS " == *" tokio-relay "* ]]; then
  cargo build --release --quiet --manifest-path ../shared/peers/tokio-relay/Cargo.toml --target-dir target/tokio-relay
fi
MSGGATE=target/release/msggate
PEER=target/tokio-relay/release/tokio-relay

PID=""
URL=""
cleanup() { if [[ -n "$PID" ]]; then kill "$PID" 2>/dev/null || true; wait "$PID" 2>/dev/null || true; fi; }
trap cleanup EXIT

# start_server NAME LOG: starts NAME on 127.0.0.1:0; sets PID and URL from the line it prints.
start_server() {
  local name=$1 log=$2
  case $name in
    msggate-io*)
      "$MSGGATE" serve --listen 127.0.0.1:0 --no-admin --secret "$SECRET" --io-threads "${name#msggate-io}" \
        --log-level warn >"$log.out" 2>"$log.err" &
      PID=$!; local file=$log.out pattern='msggate listening on ' ;;
    tokio-relay)
      "$PEER" --listen 127.0.0.1:0 --secret "$SECRET" --worker-threads 2 --read-buffer 4096 \
        >"$log.out" 2>"$log.err" &
      PID=$!; local file=$log.err pattern='tokio-relay listening on ' ;;
    *) echo "unknown server $name" >&2; exit 2 ;;
  esac
  local addr=""
  for _ in $(seq 1 200); do
    addr=$(grep -o "${pattern}[0-9.:]*" "$file" 2>/dev/null | head -1 | sed "s/${pattern}//") || true
    [[ -n "$addr" ]] && break
    kill -0 "$PID" 2>/dev/null || { echo "$name exited at start:" >&2; cat "$log.err" >&2; exit 1; }
    sleep 0.05
  done
  [[ -n "$addr" ]] || { echo "$name did not report its address" >&2; exit 1; }
  URL="ws://$addr"
}

stop_server() { kill "$PID" 2>/dev/null || true; wait "$PID" 2>/dev/null || true; PID=""; }

# run NAME SCENARIO_FILE -- stress args...: a fresh server, one stress run, its JSON kept even
# when the run fails (the table shows what failed).
run() {
  local server=$1 tag=$2; shift 3
  start_server "$server" "$OUT/$server-$tag"
  echo "== $server: stress $*" >&2
  if ! "$MSGGATE" stress "$@" --url "$URL" --secret "$SECRET" --server-pid "$PID" \
      --json "$OUT/$server-$tag.json" >"$OUT/$server-$tag.report" 2>"$OUT/$server-$tag.stress.err"; then
    echo "   (failed: see $OUT/$server-$tag.report)" >&2
  fi
  stop_server
}

for server in $SERVERS; do
  run "$server" idle -- idle --users "$IDLE_USERS" --duration 5s
  run "$server" relay -- relay --users "$RELAY_USERS" --duration "$DURATION"
  run "$server" churn -- churn --users "$CHURN_USERS" --duration "$DURATION"
  run "$server" churn-overlap -- churn --users "$CHURN_USERS" --duration "$DURATION" --overlap
  for rate in $RATES; do
    run "$server" "rate-$rate" -- relay --users "$RELAY_USERS" --rate "$rate" --duration 5s
  done
done

python3 - "$OUT" "$SERVERS" "$RATES" <<'PY'
import json, os, sys
out, servers, rates = sys.argv[1], sys.argv[2].split(), sys.argv[3].split()

def load(server, tag):
    try:
        return json.load(open(os.path.join(out, f"{server}-{tag}.json")))
    except (OSError, ValueError):
        return None

def get(d, path):
    for k in path.split("."):
        if not isinstance(d, dict) or d.get(k) is None:
            return None
        d = d[k]
    return d

rows = [
    ("server RSS per idle session (KiB)", "idle", "server.rss_per_session_kib", "{:.2f}"),
    ("idle sessions held", "idle", "sessions_open", "{:.0f}"),
    ("handshakes per second", "idle", "handshakes_per_s", "{:,.0f}"),
    (f"relay: messages per second", "relay", "messages_per_s", "{:,.0f}"),
    ("relay: server CPU µs per message", "relay", "server.cpu_us_per_msg", "{:.2f}"),
    ("relay: p50 push latency (µs)", "relay", "latency_us.push.p50", "{:,.0f}"),
    ("relay: p99 push latency (µs)", "relay", "latency_us.push.p99", "{:,.0f}"),
    ("churn: cycles per second", "churn", "cycles_per_s", "{:,.0f}"),
    ("churn --overlap: cycles per second", "churn-overlap", "cycles_per_s", "{:,.0f}"),
    ("churn --overlap: kicks", "churn-overlap", "kicks", "{:,.0f}"),
]
header = ["metric"] + servers
if "msggate-io2" in servers and "tokio-relay" in servers:
    header.append("msggate-io2 / peer")
lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
for label, tag, path, fmt in rows:
    cells, values = [label], {}
    for s in servers:
        d = load(s, tag)
        v = get(d, path) if d else None
        values[s] = v
        if d is None:
            cells.append("no report")
        elif v is None:
            cells.append("n/a")
        else:
            cell = fmt.format(v)
            if not d.get("ok", True):
                cell += " (FAILED: " + "; ".join(d.get("failures", []))[:60] + ")"
            cells.append(cell)
    if len(header) > len(servers) + 1:
        a, b = values.get("msggate-io2"), values.get("tokio-relay")
        cells.append(f"{a / b:.2f}x" if isinstance(a, (int, float)) and isinstance(b, (int, float)) and b else "")
    lines.append("| " + " | ".join(cells) + " |")
table = "\n".join(lines)
print(table)
open(os.path.join(out, "table.md"), "w").write(table + "\n")

series = []
for s in servers:
    points = []
    for r in rates:
        d = load(s, f"rate-{r}")
        if not d or not d.get("ok", False):
            continue
        points.append({
            "offered": int(r),
            "achieved": d.get("messages_per_s"),
            "p50_us": get(d, "latency_us.push.p50"),
            "p99_us": get(d, "latency_us.push.p99"),
            "p999_us": get(d, "latency_us.push.p99_9"),
        })
    series.append({"server": s, "points": points})
json.dump({"title": "relay latency (send to recipient's 2001) vs offered load", "series": series},
          open(os.path.join(out, "latency.json"), "w"), indent=1)
PY

if python3 scripts/plot_latency.py "$OUT/latency.json" "$OUT/relay-latency.svg"; then
  if [[ "${UPDATE_DOCS:-0}" == 1 ]]; then cp "$OUT/relay-latency.svg" docs/relay-latency.svg; fi
  echo "reports, table.md and relay-latency.svg in $OUT" >&2
else
  echo "no plot: no rate run succeeded (see the *-rate-*.report files); reports and table.md in $OUT" >&2
  exit 1
fi
