#!/usr/bin/env python3
"""Checks Autobahn|Testsuite fuzzingclient reports for scripts/autobahn.sh.

Owns the verdict of a conformance run: every EXPECTED case (the suite's own case list, resolved
from the spec by the suite's code) must have run, with behavior OK, NON-STRICT or INFORMATIONAL
and behaviorClose OK or INFORMATIONAL; the server must have been alive when the suite finished
and must have exited 0 on SIGTERM. wstest itself exits 0 whatever happened (an unreachable
server gives an empty index.json; a server that dies mid-run skips the remaining cases), so
this is the only judge. It must not run the suite or start servers, and it never passes a run it
could not read.

Usage:
  autobahn_check.py --expected EXPECTED.json --expected-count N --agent NAME RUN_DIR...
  autobahn_check.py --self-test

Each RUN_DIR holds reports/index.json (wstest's outdir) and server.json, written by the script:
{"name": ..., "args": ..., "alive_at_end": bool, "exit_code": int or null, "wall_seconds": float}.
Prints a summary table per run; exits 1 if any run fails, 2 on bad usage or unreadable input.
"""

import argparse
import collections
import json
import os
import sys
import tempfile

GOOD_BEHAVIOR = ("OK", "NON-STRICT", "INFORMATIONAL")
GOOD_CLOSE = ("OK", "INFORMATIONAL")


def case_key(case_id):
    return tuple(int(x) for x in case_id.split("."))


def check_run(run_dir, expected, agent):
    """Returns (summary dict, list of problems) for one run directory."""
    problems = []
    server = {}
    try:
        with open(os.path.join(run_dir, "server.json")) as f:
            server = json.load(f)
    except (OSError, ValueError) as e:
        problems.append("server.json unreadable: %s" % e)
    name = server.get("name", os.path.basename(run_dir.rstrip("/")))

    results = {}
    index_path = os.path.join(run_dir, "reports", "index.json")
    try:
        with open(index_path) as f:
            index = json.load(f)
        results = index.get(agent, {})
        if not results:
            problems.append("index.json has no results for agent %r (server unreachable?)" % agent)
        others = sorted(set(index) - {agent})
        if others:
            problems.append("index.json has results for unexpected agents %s" % others)
    except (OSError, ValueError) as e:
        problems.append("%s unreadable: %s" % (index_path, e))

    behaviors = collections.Counter()
    closes = collections.Counter()
    not_strict = []
    for case_id in sorted(expected, key=case_key):
        r = results.get(case_id)
        if r is None:
            behaviors["MISSING"] += 1
            problems.append("case %s did not run" % case_id)
            continue
        b, c = r.get("behavior"), r.get("behaviorClose")
        behaviors[b] += 1
        closes[c] += 1
        if b not in GOOD_BEHAVIOR or c not in GOOD_CLOSE:
            problems.append(
                "case %s: behavior %s, behaviorClose %s (remote close code %s; see %s)"
                % (case_id, b, c, r.get("remoteCloseCode"), r.get("reportfile"))
            )
        elif b != "OK" or c != "OK":
            not_strict.append("%s %s/%s" % (case_id, b, c))
    extra = sorted(set(results) - set(expected), key=case_key)
    if extra:
        problems.append("cases not expected ran: %s" % ", ".join(extra))

    if server.get("alive_at_end") is not True:
        problems.append("the echo server was not alive when the suite finished")
    if server.get("exit_code") != 0:
        problems.append("the echo server did not exit 0 on SIGTERM (exit: %s)" % server.get("exit_code"))

    large = {k: v for k, v in results.items() if k.startswith("9.")}
    summary = {
        "name": name,
        "args": server.get("args", ""),
        "ran": sum(1 for k in expected if k in results),
        "expected": len(expected),
        "behaviors": behaviors,
        "closes": closes,
        "not_strict": not_strict,
        "wall": server.get("wall_seconds"),
        "case_ms": sum(v.get("duration", 0) for v in results.values()),
        "large_ms": sum(v.get("duration", 0) for v in large.values()),
        "large_max": max(((v.get("duration", 0), k) for k, v in large.items()), default=(0, "-")),
    }
    return summary, problems


def print_summary(s, problems, out):
    b, c = s["behaviors"], s["closes"]
    wall = "%.1f s" % s["wall"] if isinstance(s["wall"], (int, float)) else "?"
    out.write("\n== %s (echo %s)\n" % (s["name"], s["args"]))
    out.write("| ran | OK | NON-STRICT | INFORMATIONAL | other | missing | close OK | close INFORMATIONAL | close other | wall |\n")
    out.write("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |\n")
    other = sum(n for k, n in b.items() if k not in GOOD_BEHAVIOR + ("MISSING",))
    close_other = sum(n for k, n in c.items() if k not in GOOD_CLOSE)
    out.write(
        "| %d/%d | %d | %d | %d | %d | %d | %d | %d | %d | %s |\n"
        % (s["ran"], s["expected"], b["OK"], b["NON-STRICT"], b["INFORMATIONAL"], other, b["MISSING"],
           c["OK"], c["INFORMATIONAL"], close_other, wall)
    )
    out.write(
        "cases' own time %.1f s; 9.* (large messages) %.1f s, longest %s (%d ms)\n"
        % (s["case_ms"] / 1000.0, s["large_ms"] / 1000.0, s["large_max"][1], s["large_max"][0])
    )
    if s["not_strict"]:
        out.write("not plain OK (allowed): %s\n" % ", ".join(s["not_strict"]))
    for p in problems[:40]:
        out.write("FAIL: %s\n" % p)
    if len(problems) > 40:
        out.write("FAIL: ... and %d more\n" % (len(problems) - 40))
    out.write("verdict: %s\n" % ("FAILED" if problems else "passed"))


def check(run_dirs, expected, agent, out=sys.stdout):
    """Checks every run; the closing line counts expected cases over all runs, and a run's
    other problems (server dead, unreadable reports) each count as one failure more."""
    passed = failed = 0
    for run_dir in run_dirs:
        summary, problems = check_run(run_dir, expected, agent)
        print_summary(summary, problems, out)
        bad_cases = sum(1 for p in problems if p.startswith("case "))
        passed += summary["ran"] - sum(1 for p in problems if p.startswith("case ") and "did not run" not in p)
        failed += bad_cases + (len(problems) - bad_cases)
    out.write("\nautobahn: %d passed, %d failed\n" % (passed, failed))
    return failed == 0


def self_test():
    """The checker must reject each way a run can go wrong, and accept a good one."""
    expected = ["1.1.1", "2.1", "7.3.2", "9.1.1"]
    good = {k: {"behavior": "OK", "behaviorClose": "OK", "duration": 5, "reportfile": "x.json"} for k in expected}
    good["7.3.2"] = {"behavior": "INFORMATIONAL", "behaviorClose": "INFORMATIONAL", "duration": 1}
    good_server = {"name": "t", "args": "", "alive_at_end": True, "exit_code": 0, "wall_seconds": 1.0}

    def doctor(**changes):
        results = dict(good)
        for k, v in changes.get("results", {}).items():
            if v is None:
                results.pop(k, None)
            else:
                results[k] = v
        index = changes.get("index", {"msggate": results})
        return index, dict(good_server, **changes.get("server", {}))

    cases = {
        "good": (doctor(), True),
        "empty index (server unreachable)": (doctor(index={}), False),
        "empty agent": (doctor(index={"msggate": {}}), False),
        "a case skipped (server died mid-run)": (doctor(results={"9.1.1": None}), False),
        "behavior FAILED": (doctor(results={"2.1": {"behavior": "FAILED", "behaviorClose": "OK"}}), False),
        "close FAILED BY CLIENT": (
            doctor(results={"7.3.2": {"behavior": "OK", "behaviorClose": "FAILED BY CLIENT"}}), False),
        "close UNCLEAN": (doctor(results={"1.1.1": {"behavior": "OK", "behaviorClose": "UNCLEAN"}}), False),
        "an unexpected case": (doctor(results={"12.1.1": {"behavior": "OK", "behaviorClose": "OK"}}), False),
        "server dead at the end": (doctor(server={"alive_at_end": False}), False),
        "server exit 1 on SIGTERM": (doctor(server={"exit_code": 1}), False),
        "server killed on SIGTERM": (doctor(server={"exit_code": None}), False),
    }
    bad = []
    with tempfile.TemporaryDirectory() as tmp:
        for label, ((index, server), should_pass) in cases.items():
            run = os.path.join(tmp, str(len(os.listdir(tmp))))
            os.makedirs(os.path.join(run, "reports"))
            with open(os.path.join(run, "reports", "index.json"), "w") as f:
                json.dump(index, f)
            with open(os.path.join(run, "server.json"), "w") as f:
                json.dump(server, f)
            passed = check([run], expected, "msggate", out=open(os.devnull, "w"))
            if passed != should_pass:
                bad.append("%s: checker said %s" % (label, "pass" if passed else "fail"))
        # No server.json and no reports at all.
        os.makedirs(os.path.join(tmp, "nothing"))
        if check([os.path.join(tmp, "nothing")], expected, "msggate", out=open(os.devnull, "w")):
            bad.append("a run that left nothing behind: checker said pass")
    for b in bad:
        print("self-test FAIL: %s" % b)
    print("checker self-test: %d cases, %s" % (len(cases) + 1, "FAILED" if bad else "every bad run rejected"))
    return not bad


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--expected", help="JSON list of the case ids the spec selects")
    ap.add_argument("--expected-count", type=int, help="how many cases the pinned suite version selects")
    ap.add_argument("--agent", default="msggate")
    ap.add_argument("--self-test", action="store_true")
    ap.add_argument("runs", nargs="*")
    a = ap.parse_args()
    if a.self_test:
        return 0 if self_test() else 1
    if not a.expected or not a.runs:
        ap.error("--expected and at least one run directory are required")
    try:
        with open(a.expected) as f:
            expected = json.load(f)
    except (OSError, ValueError) as e:
        print("FAIL: cannot read the expected case list %s: %s" % (a.expected, e))
        return 2
    if not isinstance(expected, list) or not expected:
        print("FAIL: the expected case list is empty")
        return 2
    if a.expected_count is not None and len(expected) != a.expected_count:
        print("FAIL: the suite selects %d cases, expected %d (suite version changed?)" % (len(expected), a.expected_count))
        return 2
    return 0 if check(a.runs, expected, a.agent) else 1


if __name__ == "__main__":
    sys.exit(main())
