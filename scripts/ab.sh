#!/usr/bin/env bash
# Head to head: two msggate builds (`serve --io-threads 2`), alternating on one machine, driven
# by the same `msggate stress` (the second build's), so that machine drift hits both alike.
# Prints server CPU per relayed message and per churn cycle for each round. Loopback only;
# every run is bounded by its --duration and every server started here is stopped.
#
#   scripts/ab.sh OLD_BINARY NEW_BINARY     # e.g. a build of an older commit vs target/release/msggate
#
# Knobs (environment): ROUNDS (3), RELAY_USERS (1000), CHURN_USERS (100), DURATION (10s).
set -euo pipefail
[ $# -eq 2 ] || { echo "usage: $0 OLD_BINARY NEW_BINARY" >&2; exit 2; }
OLD=$1 NEW=$2
ROUNDS=${ROUNDS:-3} RELAY_USERS=${RELAY_USERS:-1000} CHURN_USERS=${CHURN_USERS:-100} DURATION=${DURATION:-10s}
OUT=$(mktemp -d "${TMPDIR:-/tmp}/msggate-ab.XXXXXX")
PID=
trap '[ -n "$PID" ] && kill "$PID" 2>/dev/null; rm -rf "$OUT"' EXIT

one() { # BINARY TAG SCENARIO ARGS...
  local bin=$1 tag=$2 addr=""; shift 2
  "$bin" serve --listen 127.0.0.1:0 --no-admin --secret ab --io-threads 2 --log-level warn >"$OUT/$tag.out" 2>"$OUT/$tag.err" &
  PID=$!
  for _ in $(seq 1 200); do
    addr=$(grep -o 'msggate listening on [0-9.:]*' "$OUT/$tag.out" | sed 's/msggate listening on //') || true
    [ -n "$addr" ] && break
    sleep 0.05
  done
  [ -n "$addr" ] || { echo "$tag: the server did not report its address" >&2; exit 1; }
  "$NEW" stress "$@" --url "ws://$addr" --secret ab --server-pid "$PID" --json "$OUT/$tag.json" >/dev/null 2>&1 || true
  kill "$PID"; wait "$PID" 2>/dev/null || true; PID=
  python3 - "$OUT/$tag.json" "$tag" <<'PY'
import json, sys
d = json.load(open(sys.argv[1])); s = d.get("server") or {}
per = "cpu_us_per_msg" if s.get("cpu_us_per_msg") is not None else "cpu_us_per_cycle"
print(f"{sys.argv[2]:<16} {per} {s.get(per) or float('nan'):8.2f}")
PY
}

for round in $(seq 1 "$ROUNDS"); do
  one "$OLD" "old-relay-$round" relay --users "$RELAY_USERS" --duration "$DURATION"
  one "$NEW" "new-relay-$round" relay --users "$RELAY_USERS" --duration "$DURATION"
  one "$OLD" "old-churn-$round" churn --users "$CHURN_USERS" --duration "$DURATION"
  one "$NEW" "new-churn-$round" churn --users "$CHURN_USERS" --duration "$DURATION"
done
