//! The admin HTTP API: one accepting thread, and a short-lived thread per connection (at most
//! [`MAX_CONNS`]), serving `/healthz`, `/metrics`, `/debug/roles`, `/online`, `/push` and
//! `/kick` for one gateway (`docs/ADMIN.md`).
//!
//! Owns the admin threads, routing, bearer-token auth, request and response JSON, and the JSON
//! errors. It must not keep the gateway running (its [`GatewayHandle`] is a non-owning one),
//! must not block on a gateway queue (it calls only non-blocking [`GatewayHandle`] methods),
//! and must not be waited on by any gateway thread: nobody sends to it, and its only link back
//! is the stop flag and `mio` waker shutdown uses.

mod exposition;
mod http;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering::*};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Instant;

use mio::net::TcpListener;
use mio::{Events, Interest, Poll, Token, Waker};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};
use crate::gateway::GatewayHandle;
use crate::policy::Platform;
use crate::protocol::codes;
use crate::watchdog::Health;

use exposition::process_stats;
use http::{Deadline, Refusal, Request, Response};

const LISTENER: Token = Token(0);
const WAKER: Token = Token(1);
/// Connections served at once (one thread each); more get an immediate 503.
const MAX_CONNS: usize = 16;
/// Most user ids one request may name.
const MAX_USERS: usize = 10_000;

/// The admin listener, bound but not yet served (binding first lets a busy port fail the start
/// before any gateway thread exists).
pub(crate) struct Bound {
    poll: Poll,
    listener: TcpListener,
    waker: Arc<Waker>,
    addr: SocketAddr,
}

/// A running admin thread; [`Admin::stop`] ends it.
pub(crate) struct Admin {
    stop: Arc<AtomicBool>,
    waker: Arc<Waker>,
    thread: Option<JoinHandle<()>>,
}

/// Binds the admin listener on `addr` (port 0 picks one).
pub(crate) fn bind(addr: SocketAddr) -> Result<Bound> {
    let std_listener = std::net::TcpListener::bind(addr).map_err(Error::io("binding the admin address"))?;
    std_listener.set_nonblocking(true).map_err(Error::io("configuring the admin listener"))?;
    let addr = std_listener.local_addr().map_err(Error::io("reading the admin address"))?;
    let mut listener = TcpListener::from_std(std_listener);
    let poll = Poll::new().map_err(Error::io("creating the admin poll"))?;
    poll.registry()
        .register(&mut listener, LISTENER, Interest::READABLE)
        .map_err(Error::io("registering the admin listener"))?;
    let waker = Arc::new(Waker::new(poll.registry(), WAKER).map_err(Error::io("creating the admin waker"))?);
    Ok(Bound { poll, listener, waker, addr })
}

impl Bound {
    /// The address it is bound to.
    pub(crate) fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Starts the admin thread for `gateway`.
    pub(crate) fn spawn(self, gateway: GatewayHandle, token: Option<String>, name: String) -> Result<Admin> {
        let stop = Arc::new(AtomicBool::new(false));
        let waker = self.waker.clone();
        let ctx = Arc::new(Ctx { gateway, token_digest: token.map(|t| digest(&t)), stop: stop.clone() });
        let thread = std::thread::Builder::new()
            .name(name)
            .spawn(move || serve(self, ctx))
            .map_err(Error::io("spawning the admin thread"))?;
        Ok(Admin { stop, waker, thread: Some(thread) })
    }
}

impl Admin {
    /// Ends the admin thread: a request in progress finishes (its reads give up within 50 ms of
    /// the flag), and the thread is joined unless it is the caller (the admin thread dropping
    /// the last gateway handle it upgraded runs the shutdown itself).
    pub(crate) fn stop(&mut self) {
        self.stop.store(true, Release);
        if let Err(e) = self.waker.wake() {
            log::error!("cannot wake the admin thread: {e}");
        }
        if let Some(thread) = self.thread.take() {
            if thread.thread().id() != std::thread::current().id() && thread.join().is_err() {
                log::error!("the admin thread panicked");
            }
        }
    }
}

/// What the admin thread knows: a gateway handle that does not keep it running, and the
/// token's digest.
struct Ctx {
    gateway: GatewayHandle,
    token_digest: Option<[u8; 32]>,
    stop: Arc<AtomicBool>,
}

fn serve(mut bound: Bound, ctx: Arc<Ctx>) {
    log::info!("msggate admin API listening on {}", bound.addr);
    let mut events = Events::with_capacity(8);
    // One short-lived thread per connection, at most MAX_CONNS at once: a silent client holds
    // only its own thread (for up to CONN_DEADLINE), never `/healthz` for everyone else.
    let mut conns: Vec<JoinHandle<()>> = Vec::new();
    let conn_name = format!("{}-conn", std::thread::current().name().unwrap_or("msggate-admin"));
    while !ctx.stop.load(Acquire) {
        if let Err(e) = bound.poll.poll(&mut events, None) {
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            log::error!("admin poll failed, the admin API stops: {e}");
            break;
        }
        // Edge-triggered: accept until the listener is empty.
        while !ctx.stop.load(Acquire) {
            match bound.listener.accept() {
                Ok((stream, _)) => {
                    conns.retain(|c| !c.is_finished());
                    if conns.len() >= MAX_CONNS {
                        busy(stream.into());
                        continue;
                    }
                    let (ctx, stream) = (ctx.clone(), stream.into());
                    match std::thread::Builder::new().name(conn_name.clone()).spawn(move || connection(stream, &ctx)) {
                        Ok(c) => conns.push(c),
                        Err(e) => {
                            crate::throttle::log_throttled!(log::Level::Warn, "admin: no thread for a connection: {e}")
                        }
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) => {
                    crate::throttle::log_throttled!(log::Level::Warn, "admin accept failed: {e}");
                    break;
                }
            }
        }
    }
    // Connections see the stop flag within 50 ms.
    for c in conns {
        let _ = c.join();
    }
    log::debug!("admin API on {} stopped", bound.addr);
}

/// Over [`MAX_CONNS`]: a canned 503, written without waiting, and the socket closed.
fn busy(stream: std::net::TcpStream) {
    let body = r#"{"errCode":503,"errMsg":"too many admin connections, try again"}"#;
    let resp = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = std::io::Write::write(&mut &stream, resp.as_bytes()); // non-blocking: best effort
}

/// One connection: one request, one response, close. Never panics on input; a panic anyway (a
/// bug) is caught so the admin API survives it.
fn connection(stream: std::net::TcpStream, ctx: &Ctx) {
    if let Err(e) = stream.set_nonblocking(false) {
        log::debug!("admin: cannot configure an accepted socket: {e}");
        return;
    }
    let mut conn = Deadline { stream, deadline: Instant::now() + http::CONN_DEADLINE, stop: &ctx.stop };
    let response = match http::read_request(&mut conn) {
        Ok(req) => std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| route(&req, ctx)))
            .unwrap_or_else(|_| error(500, "internal error (a bug): see the gateway's log")),
        Err(Refusal::Answer(status, msg)) => error(status, &msg),
        Err(Refusal::Drop(e)) => {
            log::debug!("admin: dropped a connection: {e}");
            return;
        }
    };
    let bytes = response.to_bytes();
    conn.deadline = Instant::now() + http::CONN_DEADLINE; // the answer gets its own time
    if let Err(e) = std::io::Write::write_all(&mut conn, &bytes) {
        log::debug!("admin: cannot write a response: {e}");
        return;
    }
    conn.linger();
}

/// The routes: path, the one method it takes, whether it needs the token.
const ROUTES: &[(&str, &str, bool)] = &[
    ("/healthz", "GET", false),
    ("/metrics", "GET", true),
    ("/debug/roles", "GET", true),
    ("/online", "GET", true),
    ("/push", "POST", true),
    ("/kick", "POST", true),
];

fn route(req: &Request, ctx: &Ctx) -> Response {
    let route = ROUTES.iter().find(|(path, _, _)| *path == req.path);
    let needs_token = route.is_none_or(|r| r.2);
    if needs_token && !authorized(req, ctx.token_digest.as_ref()) {
        let mut r = error(401, "missing or wrong bearer token: send Authorization: Bearer <admin token>");
        r.headers.push(("WWW-Authenticate", "Bearer realm=\"msggate admin\"".into()));
        return r;
    }
    let Some(&(path, method, _)) = route else {
        return error(404, &format!("no such endpoint {:?}; see docs/ADMIN.md", req.path));
    };
    if req.method != method {
        let mut r = error(405, &format!("{path} takes {method}, not {}", req.method));
        r.headers.push(("Allow", method.into()));
        return r;
    }
    // A browser page can send a "simple" cross-site POST (text/plain, no preflight); it cannot
    // send application/json without a preflight this server never answers.
    if method == "POST"
        && !req.header("content-type").is_some_and(|t| t.to_ascii_lowercase().starts_with("application/json"))
    {
        return error(415, &format!("{path} takes Content-Type: application/json"));
    }
    let gateway = &ctx.gateway;
    let result = match path {
        "/healthz" => return healthz(gateway),
        "/metrics" => return metrics(gateway),
        "/debug/roles" => roles(gateway),
        "/online" => online(gateway, &req.query),
        "/push" => push(gateway, &req.body),
        "/kick" => kick(gateway, &req.body),
        _ => Err((404, "no such endpoint".to_owned())),
    };
    match result {
        Ok(data) => ok(data),
        Err((status, msg)) => error(status, &msg),
    }
}

fn digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// `Authorization: Bearer <token>` matches, compared in constant time (over SHA-256 digests,
/// so not even the length leaks). Always true when no token is configured.
fn authorized(req: &Request, expected: Option<&[u8; 32]>) -> bool {
    let Some(expected) = expected else { return true };
    let Some(given) = req.header("authorization").and_then(|v| {
        let (scheme, token) = v.split_once(' ')?;
        scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
    }) else {
        return false;
    };
    digest(given).iter().zip(expected).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0
}

/// Why `/healthz` should answer 503, if it should: shutdown under way, or a stalled thread.
pub(crate) fn unhealthy(shutting_down: bool, health: &Health) -> Option<String> {
    if shutting_down {
        return Some("shutting down".into());
    }
    let stalled: Vec<String> = health
        .stalled()
        .map(|t| format!("{} ({}, no progress for {:.1}s)", t.name, t.doing, t.since_progress.as_secs_f64()))
        .collect();
    (!stalled.is_empty()).then(|| format!("stalled: {}", stalled.join(", ")))
}

fn healthz(gw: &GatewayHandle) -> Response {
    match unhealthy(gw.is_shutting_down(), &gw.health()) {
        None => text(200, "ok\n"),
        Some(why) => text(503, &format!("{why}\n")),
    }
}

fn metrics(gw: &GatewayHandle) -> Response {
    let health = gw.health();
    let prefix = format!("msggate-{}-", gw.local_addr().port());
    let workers = gw.worker_depths();
    let reactors = gw.reactor_connections();
    let sample = exposition::Sample {
        stats: gw.stats(),
        policy: gw.config().multi_login_policy.name(),
        threads: &health.threads,
        thread_prefix: &prefix,
        workers: &workers,
        reactor_conns: &reactors,
        process: process_stats(),
    };
    Response {
        status: 200,
        content_type: "text/plain; version=0.0.4; charset=utf-8",
        body: exposition::render(&sample),
        headers: Vec::new(),
    }
}

/// `/debug/roles`: one watched thread.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct RoleThread<'a> {
    name: &'a str,
    progress: u64,
    doing: &'a str,
    queue_depth: usize,
    queue_capacity: usize,
    backlog: usize,
    fallbacks: u64,
    last_progress_age_ms: u64,
    stalled: bool,
}

/// `/debug/roles`: one reactor.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct RoleReactor {
    id: usize,
    connections: usize,
    inbox_depth: usize,
    inbox_capacity: usize,
}

/// `/debug/roles`: one handler worker.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct RoleWorker {
    id: usize,
    queue_depth: usize,
    queue_capacity: usize,
}

fn roles(gw: &GatewayHandle) -> Outcome {
    let health = gw.health();
    let threads: Vec<RoleThread<'_>> = health
        .threads
        .iter()
        .map(|t| RoleThread {
            name: &t.name,
            progress: t.progress,
            doing: t.doing,
            queue_depth: t.queue.len,
            queue_capacity: t.queue.capacity,
            backlog: t.backlog,
            fallbacks: t.fallbacks,
            last_progress_age_ms: u64::try_from(t.since_progress.as_millis()).unwrap_or(u64::MAX),
            stalled: t.stalled,
        })
        .collect();
    let inboxes = gw.inbox_depths();
    let reactors: Vec<RoleReactor> = gw
        .reactor_connections()
        .into_iter()
        .enumerate()
        .map(|(id, connections)| {
            let (inbox_depth, inbox_capacity) = inboxes.get(id).copied().unwrap_or_default();
            RoleReactor { id, connections, inbox_depth, inbox_capacity }
        })
        .collect();
    let workers: Vec<RoleWorker> = gw
        .worker_depths()
        .into_iter()
        .enumerate()
        .map(|(id, (queue_depth, queue_capacity))| RoleWorker { id, queue_depth, queue_capacity })
        .collect();
    raw(&Roles { shutting_down: gw.is_shutting_down(), threads, reactors, workers })
}

/// `/debug/roles`.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Roles<'a> {
    shutting_down: bool,
    threads: Vec<RoleThread<'a>>,
    reactors: Vec<RoleReactor>,
    workers: Vec<RoleWorker>,
}

type Outcome = std::result::Result<Box<RawValue>, (u16, String)>;

/// `v` serialized once, field order kept (a `Value` would sort the keys).
fn raw(v: &impl Serialize) -> Outcome {
    serde_json::value::to_raw_value(v).map_err(|e| (500, format!("cannot serialize the response: {e}")))
}

fn bad(msg: impl Into<String>) -> (u16, String) {
    (400, msg.into())
}

fn check_users(users: &[String]) -> std::result::Result<(), (u16, String)> {
    if users.is_empty() {
        return Err(bad("userIDs must name at least one user"));
    }
    if users.len() > MAX_USERS {
        return Err(bad(format!("at most {MAX_USERS} userIDs per request, got {}", users.len())));
    }
    if users.iter().any(String::is_empty) {
        return Err(bad("userIDs must not contain an empty id"));
    }
    Ok(())
}

fn online(gw: &GatewayHandle, query: &str) -> Outcome {
    let mut users = Vec::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        match key {
            "userID" => users.push(http::url_decode(value).ok_or_else(|| bad(format!("bad encoding in {pair:?}")))?),
            other => return Err(bad(format!("unknown query parameter {other:?}; expected userID=..."))),
        }
    }
    check_users(&users)?;
    let users: Vec<UserStatus> = gw
        .online(&users)
        .into_iter()
        .map(|u| {
            let detail: Vec<PlatformStatus> = u
                .sessions
                .iter()
                .map(|s| PlatformStatus {
                    platform_id: s.platform,
                    platform: Platform::from_id(i64::from(s.platform)).map_or("?", Platform::name),
                    conn_id: s.conn,
                    is_background: s.background,
                })
                .collect();
            let status = if detail.is_empty() { "offline" } else { "online" };
            UserStatus { user_id: u.user, status, detail_platform_status: detail }
        })
        .collect();
    raw(&users)
}

/// `/online`: one user (OpenIM's `GetUsersOnlineStatus` names).
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct UserStatus {
    #[serde(rename = "userID")]
    user_id: String,
    status: &'static str,
    detail_platform_status: Vec<PlatformStatus>,
}

/// `/online`: one session of a user.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct PlatformStatus {
    #[serde(rename = "platformID")]
    platform_id: u8,
    platform: &'static str,
    #[serde(rename = "connID")]
    conn_id: crate::mailbox::ConnId,
    is_background: bool,
}

/// `POST /push` body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PushBody {
    #[serde(rename = "userIDs")]
    user_ids: Vec<String>,
    /// Kept as sent: the 2001 carries these bytes.
    data: Box<RawValue>,
}

/// `POST /kick` body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct KickBody {
    #[serde(rename = "userIDs")]
    user_ids: Vec<String>,
    #[serde(rename = "platformID", default)]
    platform_id: Option<i64>,
}

fn parse<'a, T: Deserialize<'a>>(body: &'a [u8]) -> std::result::Result<T, (u16, String)> {
    serde_json::from_slice(body).map_err(|e| bad(format!("bad JSON body: {e}")))
}

fn push(gw: &GatewayHandle, body: &[u8]) -> Outcome {
    let req: PushBody = parse(body)?;
    check_users(&req.user_ids)?;
    if !req.data.get().trim_start().starts_with('{') {
        return Err(bad("data must be a JSON object (the message, as OpenIM's MsgData)"));
    }
    let (len, max) = (req.data.get().len(), gw.config().max_message_size);
    if len > max {
        return Err((413, format!("data is {len} bytes, over max_message_size ({max})")));
    }
    let reports = gw.push_many_raw(&req.user_ids, &req.data).map_err(|e| bad(e.to_string()))?;
    let users: Vec<UserPush> = reports
        .into_iter()
        .map(|r| {
            let resp = r
                .sessions
                .iter()
                .map(|s| {
                    let (result_code, result) = match s.result {
                        Ok(()) => (codes::OK, "delivered"),
                        Err(why) => (-1, why.reason()),
                    };
                    SessionPushResult { conn_id: s.conn, platform_id: s.platform, result_code, result }
                })
                .collect();
            UserPush { user_id: r.user, resp }
        })
        .collect();
    raw(&users)
}

/// `/push`: one user (OpenIM's `SuperGroupOnlineBatchPushOneMsg` shape).
#[derive(Serialize)]
struct UserPush {
    #[serde(rename = "userID")]
    user_id: String,
    resp: Vec<SessionPushResult>,
}

/// `/push`: one session of a user.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct SessionPushResult {
    #[serde(rename = "connID")]
    conn_id: crate::mailbox::ConnId,
    #[serde(rename = "platformID")]
    platform_id: u8,
    result_code: i32,
    result: &'static str,
}

fn kick(gw: &GatewayHandle, body: &[u8]) -> Outcome {
    let req: KickBody = parse(body)?;
    check_users(&req.user_ids)?;
    let platform = match req.platform_id {
        None => None,
        Some(id) => Some(Platform::from_id(id).ok_or_else(|| bad(format!("platformID must be 1..=11, got {id}")))?),
    };
    let users: Vec<UserKick> = req
        .user_ids
        .into_iter()
        .map(|user| {
            let kicked =
                gw.kick(&user, platform).iter().map(|s| Kicked { conn_id: s.conn, platform_id: s.platform }).collect();
            UserKick { user_id: user, kicked }
        })
        .collect();
    raw(&users)
}

/// `/kick`: one user and the sessions told to close.
#[derive(Serialize)]
struct UserKick {
    #[serde(rename = "userID")]
    user_id: String,
    kicked: Vec<Kicked>,
}

/// `/kick`: one session told to close.
#[derive(Serialize)]
struct Kicked {
    #[serde(rename = "connID")]
    conn_id: crate::mailbox::ConnId,
    #[serde(rename = "platformID")]
    platform_id: u8,
}

/// OpenIM's response envelope, fields in OpenIM's order.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Envelope<'a, T: Serialize> {
    err_code: i32,
    err_msg: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    data: Option<T>,
}

fn ok(data: Box<RawValue>) -> Response {
    json_response(200, &Envelope { err_code: codes::OK, err_msg: "", data: Some(data) })
}

/// A JSON error: errCode is OpenIM's 1001 (args) for 400, 1002 (no permission) for 401, and
/// the HTTP status otherwise.
fn error(status: u16, msg: &str) -> Response {
    let code = match status {
        400 => codes::ARGS,
        401 => codes::NO_PERMISSION,
        s => i32::from(s),
    };
    json_response(status, &Envelope::<()> { err_code: code, err_msg: msg, data: None })
}

fn json_response(status: u16, v: &impl Serialize) -> Response {
    let body = serde_json::to_string(v).unwrap_or_else(|e| format!(r#"{{"errCode":500,"errMsg":"{e}"}}"#));
    Response { status, content_type: "application/json", body, headers: Vec::new() }
}

fn text(status: u16, body: &str) -> Response {
    Response { status, content_type: "text/plain; charset=utf-8", body: body.to_owned(), headers: Vec::new() }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::watchdog::{QueueDepth, ThreadHealth};
    use std::time::Duration;

    fn req(headers: &[(&str, &str)]) -> Request {
        Request {
            method: "GET".into(),
            path: "/metrics".into(),
            query: String::new(),
            headers: headers.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            body: Vec::new(),
        }
    }

    #[test]
    fn bearer_auth() {
        let d = digest("s3cret");
        assert!(authorized(&req(&[]), None));
        assert!(!authorized(&req(&[]), Some(&d)));
        assert!(authorized(&req(&[("authorization", "Bearer s3cret")]), Some(&d)));
        assert!(authorized(&req(&[("authorization", "bearer s3cret")]), Some(&d)));
        assert!(!authorized(&req(&[("authorization", "Bearer s3cre")]), Some(&d)));
        assert!(!authorized(&req(&[("authorization", "Basic s3cret")]), Some(&d)));
        assert!(!authorized(&req(&[("authorization", "s3cret")]), Some(&d)));
    }

    #[test]
    fn healthz_decision() {
        let mut health = Health::default();
        assert_eq!(unhealthy(false, &health), None);
        assert_eq!(unhealthy(true, &health).as_deref(), Some("shutting down"));
        health.threads.push(ThreadHealth {
            name: "msggate-1-register".into(),
            progress: 3,
            doing: "registering",
            queue: QueueDepth { len: 1, capacity: 1 },
            backlog: 0,
            fallbacks: 0,
            since_progress: Duration::from_millis(5200),
            stalled: true,
        });
        let why = unhealthy(false, &health).unwrap();
        assert!(why.starts_with("stalled: msggate-1-register (registering, no progress for 5.2s)"), "{why}");
        assert_eq!(unhealthy(true, &health).as_deref(), Some("shutting down"));
    }

    #[test]
    fn errors_are_openim_shaped() {
        let r = error(400, "nope");
        assert_eq!(r.body, r#"{"errCode":1001,"errMsg":"nope"}"#);
        assert_eq!(error(401, "x").body, r#"{"errCode":1002,"errMsg":"x"}"#);
        assert_eq!(error(404, "x").body, r#"{"errCode":404,"errMsg":"x"}"#);
    }
}
