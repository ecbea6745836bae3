//! Shared test utilities: a gateway on 127.0.0.1:0, a blocking WebSocket client with timeouts,
//! expectations that wait with a deadline, and a hang watchdog. No fixed ports, no sleeps as
//! synchronisation: every wait is a read with a timeout or a condition polled until a deadline.

#![allow(dead_code)]

use std::net::{SocketAddr, TcpStream};
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use msggate::{Config, Gateway, GatewayHandle, TokenKey};
use serde_json::{json, Value};
use tungstenite::protocol::CloseFrame;
use tungstenite::{Message, WebSocket};

pub const SECRET: &str = "test-secret";
/// How long any single expectation may take before the test fails.
pub const STEP: Duration = Duration::from_secs(5);

/// Runs `f` on its own thread and fails the test if it has not finished within `limit`.
/// A hang anywhere fails the test; it never hangs the run.
pub fn watchdog<F: FnOnce() + Send + 'static>(limit: Duration, f: F) {
    let (done_tx, done_rx) = mpsc::channel::<()>();
    let worker = std::thread::Builder::new()
        .name("test-body".into())
        .spawn(move || {
            f();
            let _ = done_tx.send(());
        })
        .unwrap();
    match done_rx.recv_timeout(limit) {
        Ok(()) => worker.join().unwrap(),
        Err(mpsc::RecvTimeoutError::Disconnected) => {
            // The body panicked: re-raise its panic here.
            if let Err(panic) = worker.join() {
                std::panic::resume_unwind(panic);
            }
        }
        Err(mpsc::RecvTimeoutError::Timeout) => panic!("test hung: not finished within {limit:?}"),
    }
}

/// A config for tests: port 0, the test secret, two reactors.
pub fn config() -> Config {
    Config { listen: "127.0.0.1:0".parse().unwrap(), secret: Some(SECRET.into()), io_threads: 2, ..Config::default() }
}

/// Starts a gateway with the test config as changed by `tweak`.
pub fn start(tweak: impl FnOnce(&mut Config)) -> GatewayHandle {
    let mut c = config();
    tweak(&mut c);
    Gateway::start(c).expect("gateway starts")
}

pub fn now_secs() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

/// A valid token for `user` on `platform`.
pub fn token(user: &str, platform: i64) -> String {
    TokenKey::new(SECRET.as_bytes()).mint(user, platform, now_secs() + 3600)
}

/// The query string of a valid login.
pub fn login_query(user: &str, platform: i64) -> String {
    format!("token={}&sendID={user}&platformID={platform}&operationID=op-{user}", token(user, platform))
}

/// Waits until `cond` holds, checking every few milliseconds, or fails naming `what`.
pub fn eventually(limit: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out after {limit:?} waiting for: {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Waits until the gateway holds no sockets, no sessions and an empty registry.
pub fn assert_drained(gw: &GatewayHandle) {
    let drained = || {
        let s = gw.stats();
        s.connections == 0 && s.sessions == 0 && s.registry_sessions == 0 && gw.registry_len() == 0
    };
    let deadline = Instant::now() + 2 * STEP;
    while !drained() {
        assert!(
            Instant::now() < deadline,
            "not drained within {:?}: registry {}, {:#?}",
            2 * STEP,
            gw.registry_len(),
            gw.stats()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(gw.stats().online_users, 0);
}

/// What a refused upgrade returned.
#[derive(Debug)]
pub struct Refused {
    pub status: u16,
    pub body: Value,
}

/// A blocking WebSocket client with a read timeout on every receive.
pub struct Client {
    pub ws: WebSocket<TcpStream>,
    pub user: String,
    incr: u64,
    /// Frames received while waiting for something else.
    pub stash: Vec<Value>,
}

impl Client {
    /// Logs `user` in on `platform`; panics if the upgrade fails.
    pub fn connect(addr: SocketAddr, user: &str, platform: i64) -> Client {
        Client::connect_query(addr, &login_query(user, platform), user).expect("upgrade succeeds")
    }

    /// Upgrades with an arbitrary query string.
    pub fn connect_query(addr: SocketAddr, query: &str, user: &str) -> Result<Client, Refused> {
        let stream = TcpStream::connect_timeout(&addr, STEP).expect("tcp connect");
        stream.set_read_timeout(Some(STEP)).unwrap();
        stream.set_write_timeout(Some(STEP)).unwrap();
        stream.set_nodelay(true).unwrap();
        let url = format!("ws://{addr}/?{query}");
        match tungstenite::client::client(url.as_str(), stream) {
            Ok((ws, _)) => Ok(Client { ws, user: user.to_owned(), incr: 0, stash: Vec::new() }),
            Err(tungstenite::HandshakeError::Failure(tungstenite::Error::Http(resp))) => {
                let status = resp.status().as_u16();
                let body = resp.body().as_deref().map(|b| serde_json::from_slice(b).expect("JSON body"));
                Err(Refused { status, body: body.unwrap_or(Value::Null) })
            }
            Err(e) => panic!("handshake failed unexpectedly: {e}"),
        }
    }

    pub fn set_timeout(&mut self, t: Duration) {
        self.ws.get_mut().set_read_timeout(Some(t)).unwrap();
    }

    pub fn send_text(&mut self, text: &str) {
        self.ws.send(Message::text(text)).expect("send");
    }

    pub fn send_json(&mut self, v: &Value) {
        self.send_text(&v.to_string());
    }

    /// The next message of any kind; panics on timeout or error.
    pub fn recv(&mut self) -> Message {
        match self.ws.read() {
            Ok(m) => m,
            Err(e) => panic!("{}: expected a message, got {e}", self.user),
        }
    }

    /// The next text/binary frame as JSON, skipping pings and pongs.
    pub fn recv_json(&mut self) -> Value {
        loop {
            match self.recv() {
                Message::Text(t) => return serde_json::from_str(&t).expect("server sends JSON"),
                Message::Binary(b) => return serde_json::from_slice(&b).expect("server sends JSON"),
                Message::Close(c) => panic!("{}: expected a frame, got close {c:?}", self.user),
                _ => continue,
            }
        }
    }

    /// Waits for a JSON frame matching `pred`, stashing the others.
    pub fn recv_until(&mut self, mut pred: impl FnMut(&Value) -> bool) -> Value {
        if let Some(i) = self.stash.iter().position(&mut pred) {
            return self.stash.remove(i);
        }
        loop {
            let v = self.recv_json();
            if pred(&v) {
                return v;
            }
            self.stash.push(v);
        }
    }

    /// Waits for the close frame (skipping anything else) and returns it; then finishes the
    /// close handshake.
    pub fn expect_close(&mut self) -> Option<CloseFrame> {
        loop {
            match self.ws.read() {
                Ok(Message::Close(c)) => {
                    // Drain until tungstenite reports the handshake done.
                    while self.ws.read().is_ok() {}
                    return c;
                }
                Ok(Message::Text(t)) => self.stash.push(serde_json::from_str(&t).unwrap_or(Value::Null)),
                Ok(_) => {}
                Err(e) => panic!("{}: expected a close frame, got {e}", self.user),
            }
        }
    }

    /// Sends a 1003 to `to`; returns the msgIncr to match the ack with.
    pub fn send_msg(&mut self, to: &str, content: &str) -> String {
        self.incr += 1;
        let incr = format!("{}-{}", self.user, self.incr);
        self.send_json(&json!({
            "reqIdentifier": 1003,
            "sendID": self.user,
            "operationID": format!("op-{incr}"),
            "msgIncr": incr,
            "data": {"recvID": to, "clientMsgID": format!("c-{incr}"), "contentType": 101, "content": content},
        }));
        incr
    }

    /// Waits for the response whose msgIncr is `incr`.
    pub fn await_reply(&mut self, incr: &str) -> Value {
        self.recv_until(|v| v["msgIncr"] == incr && v["reqIdentifier"] != 2001)
    }

    /// Waits for the next 2001 push and returns its message.
    pub fn await_push(&mut self) -> Value {
        let v = self.recv_until(|v| v["reqIdentifier"] == 2001);
        v["data"]["msgs"][0].clone()
    }

    /// Sends a close frame and waits for the handshake to finish.
    pub fn close(mut self) {
        let _ = self.ws.close(None);
        loop {
            match self.ws.read() {
                Ok(_) => continue,
                Err(_) => return,
            }
        }
    }
}
