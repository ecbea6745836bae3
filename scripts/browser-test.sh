#!/usr/bin/env bash
# The real-browser test (issue 6): installs Debian's chromium and the pinned playwright-core if
# missing, builds msggate, starts `msggate serve` on 127.0.0.1:0 with a random secret, mints Web
# (platform 5) tokens, runs scripts/browser/test.mjs against it, stops the server and exits
# non-zero on any failure. It owns only this orchestration: the checks live in test.mjs.
# It must not download a browser build (no `npx playwright install`: the network reaches only
# package registries), use a fixed port, leave the server running, or run any step unbounded.
# Usage: bash scripts/browser-test.sh   (docs/BROWSER.md)
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
T0=$SECONDS
step() { echo "== browser-test: $* (t=$((SECONDS - T0))s)"; }
die() { echo "FAIL browser-test: $*"; exit 1; }

CHROMIUM=/usr/bin/chromium
MAX_MESSAGE_SIZE=51200 # the gateway's default; passed to the server explicitly so they agree

# --- chromium (Debian's package) -------------------------------------------------------------
step "chromium"
if [ ! -x "$CHROMIUM" ]; then
  SUDO=()
  if [ "$(id -u)" -ne 0 ]; then SUDO=(sudo -n); fi
  apt_install() {
    timeout 900 "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive \
      apt-get -o DPkg::Lock::Timeout=300 install -y --no-install-recommends chromium
  }
  if ! apt_install; then
    echo "apt-get install failed; updating the package lists and retrying"
    timeout 600 "${SUDO[@]}" apt-get -o DPkg::Lock::Timeout=300 update
    apt_install
  fi
fi
[ -x "$CHROMIUM" ] || die "$CHROMIUM is missing after the install"
# Debian's wrapper script prints a harmless shell warning on some machines; keep only the version.
CHROMIUM_VERSION=$(timeout 60 "$CHROMIUM" --version 2>/dev/null | head -n1)
echo "$CHROMIUM_VERSION"

# --- node and playwright-core (pinned in scripts/browser/package-lock.json) --------------------
step "playwright-core"
command -v node >/dev/null || die "node is not installed (playwright-core needs Node.js >= 20)"
NODE_MAJOR=$(node -p 'process.versions.node.split(".")[0]')
[ "$NODE_MAJOR" -ge 20 ] || die "node $(node --version) is too old; playwright-core needs >= 20"
(cd scripts/browser && timeout 300 npm ci --no-audit --no-fund --loglevel=error) || die "npm ci failed"
echo "node $(node --version), playwright-core $(node -p 'require("./scripts/browser/node_modules/playwright-core/package.json").version')"

# --- msggate ---------------------------------------------------------------------------------
step "cargo build --release"
timeout 1200 cargo build --release --bin msggate || die "cargo build failed"
TARGET_DIR=${CARGO_TARGET_DIR:-target}
case "$TARGET_DIR" in /*) ;; *) TARGET_DIR=$ROOT/$TARGET_DIR ;; esac
BIN=$TARGET_DIR/release/msggate
[ -x "$BIN" ] || die "$BIN was not built"

TMP=$(mktemp -d "${TMPDIR:-/tmp}/msggate-browser-test.XXXXXX")
SERVER_PID=
cleanup() {
  if [ -n "$SERVER_PID" ] && kill -0 "$SERVER_PID" 2>/dev/null; then
    kill -TERM "$SERVER_PID" 2>/dev/null || true
    wait "$SERVER_PID" 2>/dev/null || true
  fi
  exec 3<&- 2>/dev/null || true
  rm -rf "$TMP"
}
trap cleanup EXIT

step "start msggate serve"
SECRET=$(head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n')
mkfifo "$TMP/stdout"
# The secret goes through the environment, not argv. `timeout` bounds the server's whole life
# and passes our SIGTERM on to it; --foreground so that it does so once (without it, timeout also
# signals its process group, and a second SIGTERM tells msggate to exit without its shutdown).
MSGGATE_SECRET=$SECRET timeout --foreground 600 "$BIN" serve --listen 127.0.0.1:0 --no-admin \
  --max-message-size "$MAX_MESSAGE_SIZE" >"$TMP/stdout" 2>"$TMP/server.log" &
SERVER_PID=$!
exec 3<"$TMP/stdout"
LINE=
read -r -t 30 -u 3 LINE || true
case "$LINE" in
  "msggate listening on "*) ADDR=${LINE#msggate listening on } ;;
  *) cat "$TMP/server.log"; die "the server did not say where it listens within 30s (got: '$LINE')" ;;
esac
PORT=${ADDR##*:}
echo "msggate listening on $ADDR (pid $SERVER_PID)"

mint() { # user, secret
  MSGGATE_SECRET=$2 timeout 30 "$BIN" token --user "$1" --platform 5 --ttl 10m
}
RUN=$$-$RANDOM
export BT_WS_PORT=$PORT BT_MAX_MESSAGE_SIZE=$MAX_MESSAGE_SIZE BT_CHROMIUM=$CHROMIUM
export BT_USER_A=alice-$RUN BT_USER_B=bob-$RUN BT_USER_C=carol-$RUN BT_USER_BAD=mallory-$RUN
BT_TOKEN_A=$(mint "$BT_USER_A" "$SECRET")
BT_TOKEN_B=$(mint "$BT_USER_B" "$SECRET")
BT_TOKEN_C=$(mint "$BT_USER_C" "$SECRET")
# Signed with another secret: the gateway must answer 1502 (signature wrong).
BT_TOKEN_BAD=$(mint "$BT_USER_BAD" "not-$SECRET")
export BT_TOKEN_A BT_TOKEN_B BT_TOKEN_C BT_TOKEN_BAD

step "node scripts/browser/test.mjs"
RC=0
timeout 180 node scripts/browser/test.mjs || RC=$?

step "stop msggate"
kill -TERM "$SERVER_PID"
SERVER_RC=0
wait "$SERVER_PID" || SERVER_RC=$?
SERVER_PID=
if [ "$SERVER_RC" -ne 0 ]; then
  echo "FAIL server: exited $SERVER_RC after SIGTERM (want 0); its log:"
  cat "$TMP/server.log"
  RC=1
else
  echo "PASS server: exited 0 after SIGTERM"
fi
if grep -q "panicked" "$TMP/server.log"; then
  echo "FAIL server: a thread panicked; its log:"
  cat "$TMP/server.log"
  RC=1
fi

if [ "$RC" -ne 0 ]; then
  echo "== browser-test FAILED (exit $RC) after $((SECONDS - T0))s; server log tail:"
  tail -n 40 "$TMP/server.log" || true
  exit 1
fi
echo "== browser-test passed in $((SECONDS - T0))s ($CHROMIUM_VERSION)"
