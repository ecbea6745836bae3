#!/usr/bin/env bash
# RFC 6455 conformance: Autobahn|Testsuite's fuzzingclient against examples/echo.rs (the gateway's
# real reactors with a raw echo handler), three runs: --io-threads 1, --io-threads 2, and
# --io-threads 2 with a tiny SO_SNDBUF (partial writes). Every case but the compression ones
# (12.*, 13.*: tungstenite has no permessage-deflate) must pass; scripts/autobahn_check.py judges
# the reports, because wstest exits 0 whatever happened. See docs/CONFORMANCE.md.
#
# Installs the suite into ${CARGO_TARGET_DIR:-target}/autobahn/venv (reused when present) from
# PyPI with pyenv's Python 2.7.18; nothing is written to $HOME. Fails, loudly, without Python 2.7.
# Every step is bounded in time. Environment: AUTOBAHN_PYTHON2 overrides the interpreter.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

SUITE_VERSION=25.10.1
# Cases the pinned suite selects with cases ["*"] minus 12.* and 13.*; the checker also gets the
# list itself, resolved by the suite's own code, and fails every one of them that did not run.
EXPECTED_COUNT=301
# SO_SNDBUF for the partial-write run. Linux doubles it (8 KiB of buffer) and floors it at
# about 4.5 KiB, so this is close to the smallest buffer it honours.
SMALL_SNDBUF=4096

TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
WORK=$TARGET/autobahn
VENV=$WORK/venv
TMP=$(mktemp -d)
ECHO_PID=

cleanup() {
  if [[ -n $ECHO_PID ]] && kill -0 "$ECHO_PID" 2>/dev/null; then
    kill -KILL "$ECHO_PID" 2>/dev/null || true
  fi
  rm -rf "$TMP"
}
trap cleanup EXIT

say() { printf '== autobahn: %s\n' "$*"; }
die() { printf 'autobahn: FAILED: %s\n' "$*" >&2; exit 1; }

# --- Python 2.7 and the suite --------------------------------------------------------------------
PY2=${AUTOBAHN_PYTHON2:-}
if [[ -z $PY2 ]]; then
  if command -v pyenv >/dev/null 2>&1; then
    PY2="$(pyenv root)/versions/2.7.18/bin/python2.7"
  else
    die "pyenv is not installed, so there is no Python 2.7.18 for Autobahn|Testsuite (a Python 2 program). Install pyenv's 2.7.18 or set AUTOBAHN_PYTHON2 to a python2.7."
  fi
fi
if ! [[ -x $PY2 ]] || ! "$PY2" -c 'import sys; assert sys.version_info[:2] == (2, 7)' 2>/dev/null; then
  die "no Python 2.7 at $PY2: Autobahn|Testsuite needs one (pyenv install 2.7.18, or set AUTOBAHN_PYTHON2). Not passing silently."
fi

# Nothing in $HOME: virtualenv keeps its app data under XDG_DATA_HOME, pip its cache under
# XDG_CACHE_HOME.
export XDG_DATA_HOME=$TMP/xdg-data XDG_CACHE_HOME=$TMP/xdg-cache PIP_DISABLE_PIP_VERSION_CHECK=1
export PYTHONWARNINGS=ignore::DeprecationWarning

installed_version() {
  "$VENV/bin/python" -c 'import autobahntestsuite; print(autobahntestsuite.__version__)' 2>/dev/null || true
}
if [[ -x $VENV/bin/wstest && $(installed_version) == "$SUITE_VERSION" ]]; then
  say "reusing $VENV (autobahntestsuite $SUITE_VERSION)"
else
  say "installing autobahntestsuite $SUITE_VERSION into $VENV"
  rm -rf "$VENV"
  mkdir -p "$WORK"
  # virtualenv < 20.16 is the last that runs on Python 2.7; it lives only in a temp dir.
  timeout 300 "$PY2" -m pip install --quiet --no-cache-dir --target "$TMP/virtualenv" 'virtualenv<20.16' \
    || die "installing virtualenv for Python 2.7 failed"
  PYTHONPATH=$TMP/virtualenv timeout 300 "$PY2" -m virtualenv --quiet "$VENV" \
    || die "creating the Python 2.7 virtualenv failed"
  timeout 600 "$VENV/bin/pip" install --quiet --no-cache-dir "autobahntestsuite==$SUITE_VERSION" \
    || die "pip install autobahntestsuite==$SUITE_VERSION failed"
  [[ $(installed_version) == "$SUITE_VERSION" ]] || die "autobahntestsuite $SUITE_VERSION did not install"
fi

# The cases the spec selects, resolved by the suite's own code (the checker's EXPECTED set).
CASES='"cases": ["*"], "exclude-cases": ["12.*", "13.*"], "exclude-agent-cases": {}'
timeout 60 "$VENV/bin/python" - >"$WORK/expected-cases.json" <<EOF || die "listing the suite's cases failed"
import json
from autobahntestsuite.case import Cases, CaseCategories, CaseSubCategories
from autobahntestsuite.caseset import CaseSet
spec = json.loads('{$CASES}')
print(json.dumps(CaseSet("Fuzzing", "Case", Cases, CaseCategories, CaseSubCategories).parseSpecCases(spec)))
EOF

# --- The echo server ------------------------------------------------------------------------------
say "cargo build --release --example echo"
timeout 900 cargo build --release --example echo || die "building examples/echo.rs failed"
ECHO_BIN=$TARGET/release/examples/echo
[[ -x $ECHO_BIN ]] || die "no echo binary at $ECHO_BIN"

# run NAME ECHO-ARGS...: one suite run against a fresh echo server on 127.0.0.1:0.
run() {
  local name=$1
  shift
  local dir=$WORK/runs/$name
  rm -rf "$dir"
  mkdir -p "$dir"
  say "run $name: echo $*"
  : >"$dir/echo.stdout" # exists before the background child opens it, for the reads below
  "$ECHO_BIN" --listen 127.0.0.1:0 "$@" >"$dir/echo.stdout" 2>"$dir/echo.stderr" &
  ECHO_PID=$!
  local addr= deadline=$((SECONDS + 15))
  while [[ -z $addr ]] && ((SECONDS < deadline)) && kill -0 "$ECHO_PID" 2>/dev/null; do
    addr=$(sed -n 's/^msggate listening on //p' "$dir/echo.stdout" || true)
    [[ -n $addr ]] || sleep 0.1
  done
  if [[ -z $addr ]]; then
    echo "echo never printed its address; its stderr:" >&2
    cat "$dir/echo.stderr" >&2
  fi
  cat >"$dir/spec.json" <<EOF
{"outdir": "$dir/reports", "servers": [{"agent": "msggate", "url": "ws://${addr:-127.0.0.1:1}"}],
 $CASES}
EOF
  local start=$EPOCHREALTIME rc=0
  # The suite's own case timeouts bound each case; 300 s bounds the whole run (normally ~20 s).
  (cd "$dir" && timeout 300 "$VENV/bin/wstest" -m fuzzingclient -s spec.json >wstest.log 2>&1) || rc=$?
  local wall
  wall=$(python3 -c "print(round($EPOCHREALTIME - $start, 1))")
  ((rc == 0)) || echo "wstest exited $rc (see $dir/wstest.log)" >&2
  local alive=false exit_code=null
  if kill -0 "$ECHO_PID" 2>/dev/null; then
    alive=true
    kill -TERM "$ECHO_PID"
  fi
  # Exit within 10 s of SIGTERM (shutdown_timeout is 2 s), else killed and reported.
  if timeout 10 tail -s 0.1 --pid="$ECHO_PID" -f /dev/null; then
    wait "$ECHO_PID" && exit_code=0 || exit_code=$?
  else
    echo "echo did not exit within 10 s of SIGTERM; killing it" >&2
    kill -KILL "$ECHO_PID" 2>/dev/null || true
    wait "$ECHO_PID" 2>/dev/null || true
  fi
  ECHO_PID=
  printf '{"name": "%s", "args": "%s", "alive_at_end": %s, "exit_code": %s, "wall_seconds": %s}\n' \
    "$name" "$*" "$alive" "$exit_code" "$wall" >"$dir/server.json"
  RUN_DIRS+=("$dir")
}

python3 scripts/autobahn_check.py --self-test || die "the checker's self-test failed"

RUN_DIRS=()
run io-threads-1 --io-threads 1
run io-threads-2 --io-threads 2
run io-threads-2-sndbuf --io-threads 2 --sndbuf "$SMALL_SNDBUF"

say "checking ${#RUN_DIRS[@]} runs (reports under $WORK/runs)"
python3 scripts/autobahn_check.py --agent msggate --expected "$WORK/expected-cases.json" \
  --expected-count "$EXPECTED_COUNT" "${RUN_DIRS[@]}"
