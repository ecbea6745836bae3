// The real-browser test's driver: Debian's chromium, driven by playwright-core, talks to a running
// msggate from page JavaScript (the browser's own WebSocket) and checks what the pages see.
// It owns only the browser side: scripts/browser-test.sh builds and starts the gateway, mints the
// tokens and passes them in the environment. It must not start a gateway, download a browser, use
// a fixed port, or sleep to synchronise: every wait is for an event, with a deadline.
//
// Environment (all required): BT_WS_PORT, BT_USER_A, BT_TOKEN_A, BT_USER_B, BT_TOKEN_B,
// BT_USER_C, BT_TOKEN_C (a good token for the oversize test), BT_USER_BAD, BT_TOKEN_BAD (signed with
// the wrong secret), BT_MAX_MESSAGE_SIZE (the gateway's max_message_size, bytes).
// Optional: BT_CHROMIUM (default /usr/bin/chromium).

import http from "node:http";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { isDeepStrictEqual } from "node:util";
import { chromium } from "playwright-core";

const GLOBAL_TIMEOUT_MS = 120_000;
const STEP_TIMEOUT_MS = 15_000;

const globalTimer = setTimeout(() => {
  console.log(`FAIL global timeout: the test did not finish within ${GLOBAL_TIMEOUT_MS / 1000}s`);
  process.exit(1);
}, GLOBAL_TIMEOUT_MS);

function env(name) {
  const v = process.env[name];
  if (v === undefined || v === "") {
    console.log(`FAIL setup: environment variable ${name} is not set`);
    process.exit(1);
  }
  return v;
}

const cfg = {
  port: Number(env("BT_WS_PORT")),
  a: { user: env("BT_USER_A"), token: env("BT_TOKEN_A") },
  b: { user: env("BT_USER_B"), token: env("BT_TOKEN_B") },
  c: { user: env("BT_USER_C"), token: env("BT_TOKEN_C") },
  bad: { user: env("BT_USER_BAD"), token: env("BT_TOKEN_BAD") },
  maxMessageSize: Number(env("BT_MAX_MESSAGE_SIZE")),
  chromium: process.env.BT_CHROMIUM || "/usr/bin/chromium",
};

let passed = 0;
let failed = 0;
function pass(name, detail = "") {
  passed++;
  console.log(`PASS ${name}${detail ? `: ${detail}` : ""}`);
}
function fail(name, why) {
  failed++;
  console.log(`FAIL ${name}: ${why}`);
}
class CheckFailed extends Error {}
function check(cond, why) {
  if (!cond) throw new CheckFailed(why);
}

// The page's helper: a registry of sockets, each recording every event in order, so the driver
// can wait for "the n-th message" or "the close" with page.waitForFunction and a deadline.
const PAGE_HTML = `<!doctype html>
<html><head><meta charset="utf-8"><title>msggate browser test</title></head>
<body><p>msggate browser test page</p>
<script>
window.sockets = [];
window.openWs = (url) => {
  const rec = { events: [], ws: new WebSocket(url) };
  const id = window.sockets.push(rec) - 1;
  const at = () => performance.now();
  rec.ws.onopen = () => rec.events.push({ type: "open", t: at() });
  rec.ws.onmessage = (e) => rec.events.push({ type: "message", data: String(e.data), binary: typeof e.data !== "string", t: at() });
  rec.ws.onerror = () => rec.events.push({ type: "error", t: at() });
  rec.ws.onclose = (e) => rec.events.push({ type: "close", code: e.code, reason: e.reason, wasClean: e.wasClean, t: at() });
  return id;
};
window.sendWs = (id, text) => { const t = performance.now(); window.sockets[id].ws.send(text); return { t, buffered: window.sockets[id].ws.bufferedAmount }; };
window.eventsOf = (id) => window.sockets[id].events;
</script></body></html>`;

function startPageServer() {
  return new Promise((resolve, reject) => {
    const server = http.createServer((req, res) => {
      if (req.url === "/" || req.url === "/index.html") {
        res.writeHead(200, { "content-type": "text/html; charset=utf-8" });
        res.end(PAGE_HTML);
      } else {
        res.writeHead(404);
        res.end();
      }
    });
    server.once("error", reject);
    server.listen(0, "127.0.0.1", () => resolve(server));
  });
}

function wsUrl(who, opts = {}) {
  const q = new URLSearchParams({
    token: who.token,
    sendID: who.user,
    platformID: "5",
    operationID: opts.operationID || `bt-${who.user}`,
  });
  if (opts.msgResp) q.set("isMsgResp", "true");
  return `ws://127.0.0.1:${cfg.port}/?${q}`;
}

async function open(page, url) {
  return page.evaluate((u) => window.openWs(u), url);
}

// Waits until socket `id` on `page` has recorded an event that `pred` (a page-side predicate
// source over the events array) accepts, then returns the events.
async function waitEvents(page, id, predSrc, what) {
  try {
    await page.waitForFunction(
      ([i, src]) => new Function("events", `return (${src})(events);`)(window.eventsOf(i)),
      [id, predSrc],
      { timeout: STEP_TIMEOUT_MS, polling: 10 },
    );
  } catch (e) {
    const evs = await page.evaluate((i) => window.eventsOf(i), id);
    throw new CheckFailed(`timed out after ${STEP_TIMEOUT_MS}ms waiting for ${what}; events so far: ${summarize(evs)}`);
  }
  return page.evaluate((i) => window.eventsOf(i), id);
}

function summarize(evs) {
  return JSON.stringify(
    evs.map((e) => (e.type === "message" ? { type: e.type, data: e.data.length > 200 ? `${e.data.slice(0, 200)}…(${e.data.length} chars)` : e.data } : e)),
  );
}

const messages = (evs) => evs.filter((e) => e.type === "message").map((e) => JSON.parse(e.data));
const nMessages = (n) => `(evs) => evs.filter((e) => e.type === "message").length >= ${n}`;
const hasClose = `(evs) => evs.some((e) => e.type === "close")`;
const hasOpenOrClose = `(evs) => evs.some((e) => e.type === "open" || e.type === "close")`;

function envelope(from, to, msgIncr, clientMsgID, content) {
  return {
    reqIdentifier: 1003,
    sendID: from.user,
    operationID: `op-${clientMsgID}`,
    msgIncr,
    data: { recvID: to.user, clientMsgID, contentType: 101, content },
  };
}

// Sends one 1003 from A to B (state `s`: their pages, socket ids and how many frames each has
// had) and checks B's 2001 push and A's ack against each other and against what was sent.
async function relay(name, s, content, msgIncr, clientMsgID) {
  const env = envelope(cfg.a, cfg.b, msgIncr, clientMsgID, content);
  await s.pageA.evaluate(([i, t]) => window.sendWs(i, t), [s.idA, JSON.stringify(env)]);
  const evB = await waitEvents(s.pageB, s.idB, nMessages(s.seenB + 1), `B's 2001 push (${name})`);
  const evA = await waitEvents(s.pageA, s.idA, nMessages(s.seenA + 1), `A's 1003 ack (${name})`);
  const push = messages(evB)[s.seenB];
  const ack = messages(evA)[s.seenA];
  s.seenA++;
  s.seenB++;
  check(push.reqIdentifier === 2001, `B's frame is not a 2001: ${JSON.stringify(push).slice(0, 300)}`);
  check(push.errCode === 0, `push errCode ${push.errCode}`);
  check(Array.isArray(push.data?.msgs) && push.data.msgs.length === 1, `push data.msgs is not one message`);
  const m = push.data.msgs[0];
  check(m.sendID === cfg.a.user && m.recvID === cfg.b.user, `push sendID/recvID ${m.sendID}/${m.recvID}`);
  check(m.clientMsgID === clientMsgID, `push clientMsgID ${m.clientMsgID}, want ${clientMsgID}`);
  check(m.contentType === 101, `push contentType ${m.contentType}`);
  check(isDeepStrictEqual(m.content, content), `push content differs from what A sent (got ${JSON.stringify(m.content).slice(0, 120)})`);
  check(typeof m.serverMsgID === "string" && m.serverMsgID.length > 0, `push has no serverMsgID`);
  check(Number.isInteger(m.sendTime) && Math.abs(m.sendTime - Date.now()) < 60_000, `push sendTime ${m.sendTime} is not now`);
  check(ack.reqIdentifier === 1003, `A's frame is not the 1003 ack: ${JSON.stringify(ack).slice(0, 300)}`);
  check(ack.errCode === 0, `ack errCode ${ack.errCode} (${ack.errMsg})`);
  check(ack.msgIncr === msgIncr, `ack msgIncr ${JSON.stringify(ack.msgIncr)}, want ${JSON.stringify(msgIncr)}`);
  check(ack.operationID === env.operationID, `ack operationID ${ack.operationID}`);
  check(ack.data?.clientMsgID === clientMsgID, `ack clientMsgID ${ack.data?.clientMsgID}`);
  check(ack.data?.serverMsgID === m.serverMsgID, `ack serverMsgID ${ack.data?.serverMsgID} ≠ push's ${m.serverMsgID}`);
  check(ack.data?.sendTime === m.sendTime, `ack sendTime ${ack.data?.sendTime} ≠ push's ${m.sendTime}`);
  check(ack.data?.delivered === 1, `ack delivered ${ack.data?.delivered}, want 1 (B has one session)`);
  return { push, ack, bytes: Buffer.byteLength(JSON.stringify(env)) };
}

async function step(name, fn) {
  const t0 = performance.now();
  try {
    const detail = await fn();
    pass(name, `${detail ? `${detail}, ` : ""}${Math.round(performance.now() - t0)}ms`);
    return true;
  } catch (e) {
    fail(name, e instanceof CheckFailed ? e.message : e?.stack || String(e));
    return false;
  }
}

async function main() {
  const pageServer = await startPageServer();
  const pageUrl = `http://127.0.0.1:${pageServer.address().port}/`;
  const userDataDir = fs.mkdtempSync(path.join(os.tmpdir(), "msggate-browser-profile-"));
  let context;
  try {
    // launchPersistentContext is how playwright takes a --user-data-dir: a fresh, empty one.
    context = await chromium.launchPersistentContext(userDataDir, {
      executablePath: cfg.chromium,
      headless: true,
      timeout: 60_000,
      args: [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-quic",
        "--no-first-run",
        "--disable-component-update",
        "--disable-sync",
      ],
    });
    const pageA = await context.newPage();
    const pageB = await context.newPage();
    for (const p of [pageA, pageB]) {
      p.on("pageerror", (e) => console.log(`page error: ${e}`));
      await p.goto(pageUrl, { timeout: STEP_TIMEOUT_MS });
    }
    const ua = await pageA.evaluate(() => navigator.userAgent);
    console.log(`browser: ${ua}; page ${pageUrl}; gateway ws://127.0.0.1:${cfg.port}`);
    const s = { pageA, pageB, idA: -1, idB: -1, seenA: 0, seenB: 0 };

    const connected = await step("connect: two pages open WebSockets with Web (platform 5) tokens", async () => {
      // A asks for isMsgResp=true (the browser mode: a first frame reports the outcome); B does not.
      s.idA = await open(pageA, wsUrl(cfg.a, { msgResp: true }));
      s.idB = await open(pageB, wsUrl(cfg.b));
      const evA = await waitEvents(pageA, s.idA, nMessages(1), "A's isMsgResp first frame");
      check(evA[0].type === "open", `A's first event is ${evA[0].type}, not open`);
      const first = messages(evA)[0];
      check(isDeepStrictEqual(first, { errCode: 0, errMsg: "", errDlt: "" }), `A's isMsgResp first frame is ${JSON.stringify(first)}`);
      s.seenA = 1;
      const evB = await waitEvents(pageB, s.idB, hasOpenOrClose, "B's open");
      check(evB[0].type === "open", `B's first event is ${evB[0].type}: ${summarize(evB)}`);
      return `A got ${JSON.stringify(first)}`;
    });
    if (!connected) return;

    await step("relay: A sends a 1003 to B; B gets the 2001 push, A the ack", async () => {
      const r = await relay("ascii", s, "hello from page A", "1", "bt-c1");
      return `serverMsgID ${r.ack.data.serverMsgID}, delivered ${r.ack.data.delivered}`;
    });

    await step("non-ASCII: emoji, CJK, RTL, combining marks and a JSON object round-trip", async () => {
      const text = "héllo 👋🏽 你好世界 こんにちは 안녕 🇯🇵 👨‍👩‍👧 مرحبا e\u0301 \u{1F600}\u{10FFFF} \"quotes\" \\ \n\t";
      await relay("non-ASCII string", s, text, "2", "bt-c2-😀");
      const obj = { text: "猫 🐱", list: [1, "二", { "ключ": "значение" }], nested: { emoji: "🚀" } };
      await relay("non-ASCII object", s, obj, "3", "bt-c3");
      return `${[...text].length} code points`;
    });

    await step(`large: a message of exactly max_message_size (${cfg.maxMessageSize} bytes) round-trips`, async () => {
      // Multi-byte characters make the byte count differ from the string length; size the
      // content so that the whole UTF-8 frame is exactly the limit.
      const probe = JSON.stringify(envelope(cfg.a, cfg.b, "4", "bt-c4", ""));
      const unit = "あ"; // 3 bytes in UTF-8
      const room = cfg.maxMessageSize - Buffer.byteLength(probe);
      check(room > 3, `max_message_size ${cfg.maxMessageSize} leaves no room for content`);
      const content = unit.repeat(Math.floor(room / 3)) + "x".repeat(room % 3);
      const r = await relay("large", s, content, "4", "bt-c4");
      check(r.bytes === cfg.maxMessageSize, `frame was ${r.bytes} bytes, meant ${cfg.maxMessageSize}`);
      return `${r.bytes} bytes sent, push ${Buffer.byteLength(JSON.stringify(r.push))} bytes`;
    });

    await step("oversize: a 1 MiB message from a third socket gets close 1009; A and B unaffected", async () => {
      const idC = await open(pageA, wsUrl(cfg.c));
      const evC0 = await waitEvents(pageA, idC, hasOpenOrClose, "C's open");
      check(evC0[0].type === "open", `C did not open: ${summarize(evC0)}`);
      const big = JSON.stringify(envelope(cfg.c, cfg.b, "1", "bt-big", "z".repeat(1 << 20)));
      check(Buffer.byteLength(big) > cfg.maxMessageSize, "the oversize message is not over the limit");
      const sent = await pageA.evaluate(([i, t]) => window.sendWs(i, t), [idC, big]);
      const evC = await waitEvents(pageA, idC, hasClose, "C's close after the oversize message");
      const close = evC.find((e) => e.type === "close");
      const closeMs = Math.round(close.t - sent.t);
      check(close.code === 1009, `C closed with ${close.code} "${close.reason}", want 1009`);
      check(messages(evC).length === 0, `C got frames before its close: ${summarize(evC)}`);
      const evB = await pageB.evaluate((i) => window.eventsOf(i), s.idB);
      check(messages(evB).length === s.seenB, `B got the oversize message or something else: ${summarize(evB.slice(-1))}`);
      await relay("after oversize", s, "still here", "5", "bt-c5");
      return `close ${close.code} "${close.reason}" clean=${close.wasClean} ${closeMs}ms after the send`;
    });

    await step("bad token, isMsgResp=true: the page sees the 1502 error frame, then close 1008", async () => {
      const id = await open(pageB, wsUrl(cfg.bad, { msgResp: true, operationID: "bt-bad" }));
      const ev = await waitEvents(pageB, id, hasClose, "the close after the error frame");
      const types = ev.map((e) => e.type);
      check(
        isDeepStrictEqual(types, ["open", "message", "close"]),
        `events are ${JSON.stringify(types)}, want open, one message, close: ${summarize(ev)}`,
      );
      const frame = JSON.parse(ev[1].data);
      check(frame.errCode === 1502, `errCode ${frame.errCode}, want 1502 (signature wrong): ${ev[1].data}`);
      check(typeof frame.errMsg === "string" && frame.errMsg.length > 0, `errMsg is empty: ${ev[1].data}`);
      check(frame.errDlt === "", `errDlt ${JSON.stringify(frame.errDlt)}`);
      const close = ev[2];
      check(close.code === 1008, `close code ${close.code}, want 1008`);
      check(close.wasClean, "the close was not clean (no close handshake)");
      check(close.reason.length > 0 && frame.errMsg.startsWith(close.reason), `close reason "${close.reason}" is not the errMsg "${frame.errMsg}"`);
      return `frame ${ev[1].data}, close ${close.code} "${close.reason}"`;
    });

    await step("bad token without isMsgResp: the upgrade is refused, the page never opens", async () => {
      const id = await open(pageB, wsUrl(cfg.bad, { operationID: "bt-bad-plain" }));
      const ev = await waitEvents(pageB, id, hasClose, "the close of the refused upgrade");
      check(!ev.some((e) => e.type === "open" || e.type === "message"), `the socket opened or got a frame: ${summarize(ev)}`);
      const close = ev.find((e) => e.type === "close");
      check(close.code === 1006 && !close.wasClean, `close ${close.code} clean=${close.wasClean}, want 1006 unclean (failed handshake)`);
      return `events ${JSON.stringify(ev.map((e) => e.type))}, close ${close.code}`;
    });

    await step("A and B are still connected and got nothing unexpected", async () => {
      for (const [page, id, seen, who] of [[pageA, s.idA, s.seenA, "A"], [pageB, s.idB, s.seenB, "B"]]) {
        const ev = await page.evaluate((i) => window.eventsOf(i), id);
        check(!ev.some((e) => e.type === "close" || e.type === "error"), `${who} closed: ${summarize(ev.slice(-2))}`);
        check(messages(ev).length === seen, `${who} got ${messages(ev).length} frames, expected ${seen}`);
        check(!ev.some((e) => e.binary), `${who} got a binary frame`);
      }
      return `A ${s.seenA} frames, B ${s.seenB} frames`;
    });
  } finally {
    if (context) await context.close().catch((e) => console.log(`closing the browser: ${e}`));
    pageServer.close();
    fs.rmSync(userDataDir, { recursive: true, force: true });
  }
}

try {
  await main();
} catch (e) {
  fail("browser", e?.stack || String(e));
}
clearTimeout(globalTimer);
if (passed + failed === 0) fail("browser", "no check ran");
console.log(`browser: ${passed} passed, ${failed} failed`);
process.exit(failed === 0 ? 0 : 1);
