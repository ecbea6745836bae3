//! The gateway's configuration: one plain struct with documented defaults and a `validate()`.
//!
//! Owns defaults and range checks. It must not read files, flags or the environment: the binary
//! merges those into a `Config` and the library only ever sees the finished struct.

use std::net::SocketAddr;
use std::time::Duration;

use crate::error::{Error, Result};
use crate::policy::MultiLoginPolicy;

/// The secret used when none is configured. Only for development on loopback: the gateway logs a
/// loud warning and refuses to listen on any other address with it.
pub const DEV_SECRET: &str = "msggate-dev-secret";

/// Everything a gateway needs to start. Build it with `Config::default()` and struct update
/// syntax; [`Gateway::start`](crate::Gateway::start) calls [`Config::validate`] first.
#[derive(Debug, Clone)]
pub struct Config {
    /// Address to listen on. Default `127.0.0.1:10001`; port 0 picks a free port.
    pub listen: SocketAddr,
    /// HS256 secret that signs client tokens. Default `None`: [`DEV_SECRET`], loopback only.
    pub secret: Option<String>,
    /// Reactor threads driving socket I/O. Default: the number of available cores.
    pub io_threads: usize,
    /// Capacity of the register role's queue. Default 1024; 1 is valid and safe.
    pub register_queue: usize,
    /// Capacity of the unregister role's queue. Default 1024; 1 is valid and safe.
    pub unregister_queue: usize,
    /// Capacity of each reactor's queue of freshly accepted sockets. Default 1024. When it is
    /// full the acceptor refuses the socket with HTTP 503 (errCode 1601).
    pub handoff_queue: usize,
    /// Capacity of each reactor's inbox of frames pushed to its sessions by other threads.
    /// Default 65536. A push that finds it full closes the recipient with 1013 (try again later)
    /// rather than leaving a silent gap in its stream.
    pub inbox_queue: usize,
    /// What a new login does to the user's existing sessions. Default `same-terminal-kick`.
    pub multi_login_policy: MultiLoginPolicy,
    /// Largest accepted message, in bytes; larger closes the session with 1009. Default 51200
    /// (OpenIM's read limit), and this is the value enforced.
    pub max_message_size: usize,
    /// Most sockets the gateway holds, handshakes in flight included. Default 100000. Past it a
    /// handshake is answered with HTTP 503 (errCode 1601).
    pub max_connections: usize,
    /// Time a socket has to complete the WebSocket upgrade and be registered. Default 10 s; also
    /// the slowloris defence.
    pub handshake_timeout: Duration,
    /// How often the server pings every session. Default 27 s.
    pub ping_interval: Duration,
    /// A session silent (no frame, no pong) for longer than this is closed. Default 30 s.
    pub idle_timeout: Duration,
    /// How long a closing session waits for the peer's close frame. Default 3 s.
    pub close_timeout: Duration,
    /// Bytes that may wait for one session (queued for it plus unsent in its socket buffer)
    /// before it is closed as a slow consumer (1008). Default 256 KiB.
    pub outbound_budget: usize,
    /// Bytes of each session's read buffer, allocated for its life. Default 1024: small keeps
    /// idle sessions cheap; larger messages grow the buffer as they arrive.
    pub read_buffer_size: usize,
    /// `SO_SNDBUF` of every accepted socket, in bytes. Default `None`: the kernel's default,
    /// which it tunes as the connection goes. `Some(n)` pins it, which caps the kernel memory a
    /// slow client can hold; Linux doubles `n` (for its bookkeeping), raises it to its minimum
    /// (about 4.5 KiB) and caps it at `net.core.wmem_max`. At least [`MIN_SOCKET_BUFFER`]. A
    /// small value forces partial writes, which is how the conformance run exercises them.
    pub socket_send_buffer: Option<usize>,
    /// On shutdown, how long sessions get to finish their close handshake. Default 2 s.
    pub shutdown_timeout: Duration,
    /// Most users one session may watch at once with 2005 presence subscriptions. Default 1000.
    /// A request that would go past it changes nothing and is answered with errCode 1001.
    pub max_subscriptions: usize,
    /// A role thread or reactor with queued work and no progress for this long is reported
    /// once, at error level, with a dump of every thread (the stall watchdog). Default 5 s.
    pub stall_after: Duration,
    /// Threads of the handler's worker pool, started only with
    /// [`Gateway::start_with`](crate::Gateway::start_with). Default 4. A session's requests
    /// always go to the same worker, so they are handled in order.
    pub workers: usize,
    /// Capacity of each worker's queue. Default 1024. A request that finds it full is answered
    /// at once with errCode 503 "server busy".
    pub worker_queue: usize,
    /// Whether an upgrade needs a token. Default true. False accepts anyone, with `sendID` and
    /// `platformID` optional (an absent `sendID` becomes `anonymous-<conn>`, an absent platform
    /// Web): for conformance suites and raw echo servers, never for a real deployment.
    pub require_token: bool,
    /// Address of the admin HTTP API (`/healthz`, `/metrics`, `/debug/roles`, `/online`,
    /// `/push`, `/kick`; see `docs/ADMIN.md`). Default `None`: no admin server. The library
    /// leaves it off because tests and embedders start many gateways in one process, which must
    /// not fight over one port; `msggate serve` turns it on at `127.0.0.1:10002`. Port 0 picks a
    /// free port ([`GatewayHandle::admin_addr`](crate::GatewayHandle::admin_addr) tells which).
    pub admin_listen: Option<SocketAddr>,
    /// Bearer token the admin API requires (`Authorization: Bearer <token>`) on every endpoint
    /// but `/healthz`. Default `None`: no authentication, allowed only when `admin_listen` is a
    /// loopback address. Must not be empty.
    pub admin_token: Option<String>,
    /// Testing only: the register role pauses this long before each event, to stand in for a
    /// slow or overloaded role. Zero (the default) in any real deployment.
    #[doc(hidden)]
    pub register_delay: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: SocketAddr::from(([127, 0, 0, 1], 10001)),
            secret: None,
            io_threads: std::thread::available_parallelism().map_or(2, |n| n.get()),
            register_queue: 1024,
            unregister_queue: 1024,
            handoff_queue: 1024,
            inbox_queue: 65536,
            multi_login_policy: MultiLoginPolicy::default(),
            max_message_size: 51200,
            max_connections: 100_000,
            handshake_timeout: Duration::from_secs(10),
            ping_interval: Duration::from_secs(27),
            idle_timeout: Duration::from_secs(30),
            close_timeout: Duration::from_secs(3),
            outbound_budget: 256 * 1024,
            read_buffer_size: 1024,
            socket_send_buffer: None,
            shutdown_timeout: Duration::from_secs(2),
            max_subscriptions: 1000,
            stall_after: Duration::from_secs(5),
            workers: 4,
            worker_queue: 1024,
            require_token: true,
            admin_listen: None,
            admin_token: None,
            register_delay: Duration::ZERO,
        }
    }
}

/// Largest value accepted for `max_message_size` (64 MiB, tungstenite's own default ceiling).
pub const MAX_MESSAGE_SIZE_LIMIT: usize = 64 << 20;

/// Smallest `socket_send_buffer` accepted (the kernel raises smaller values anyway).
pub const MIN_SOCKET_BUFFER: usize = 1024;
/// Largest `socket_send_buffer` accepted: `setsockopt` takes a C `int`, which the kernel
/// doubles.
pub const MAX_SOCKET_BUFFER: usize = 1 << 30;

impl Config {
    /// Checks every field; the error names the first bad one as the CLI spells it.
    pub fn validate(&self) -> Result<()> {
        fn at_least(field: &'static str, value: usize, min: usize) -> Result<()> {
            if value < min {
                return Err(Error::config(field, format!("must be at least {min}, got {value}")));
            }
            Ok(())
        }
        fn positive(field: &'static str, value: Duration) -> Result<()> {
            if value.is_zero() {
                return Err(Error::config(field, "must be longer than zero"));
            }
            Ok(())
        }
        at_least("io_threads", self.io_threads, 1)?;
        if self.io_threads > 256 {
            return Err(Error::config("io_threads", format!("at most 256, got {}", self.io_threads)));
        }
        at_least("register_queue", self.register_queue, 1)?;
        at_least("unregister_queue", self.unregister_queue, 1)?;
        at_least("handoff_queue", self.handoff_queue, 1)?;
        at_least("inbox_queue", self.inbox_queue, 1)?;
        at_least("workers", self.workers, 1)?;
        at_least("worker_queue", self.worker_queue, 1)?;
        at_least("max_message_size", self.max_message_size, 16)?;
        if self.max_message_size > MAX_MESSAGE_SIZE_LIMIT {
            return Err(Error::config(
                "max_message_size",
                format!("at most {MAX_MESSAGE_SIZE_LIMIT} bytes, got {}", self.max_message_size),
            ));
        }
        at_least("max_connections", self.max_connections, 1)?;
        at_least("max_subscriptions", self.max_subscriptions, 1)?;
        at_least("read_buffer_size", self.read_buffer_size, 64)?;
        if let Some(n) = self.socket_send_buffer {
            if !(MIN_SOCKET_BUFFER..=MAX_SOCKET_BUFFER).contains(&n) {
                return Err(Error::config(
                    "socket_send_buffer",
                    format!("must be between {MIN_SOCKET_BUFFER} and {MAX_SOCKET_BUFFER} bytes, got {n}"),
                ));
            }
        }
        at_least("outbound_budget", self.outbound_budget, self.max_message_size)
            .map_err(|_| Error::config("outbound_budget", "must be at least max_message_size"))?;
        positive("handshake_timeout", self.handshake_timeout)?;
        positive("ping_interval", self.ping_interval)?;
        positive("idle_timeout", self.idle_timeout)?;
        positive("close_timeout", self.close_timeout)?;
        if self.stall_after < Duration::from_millis(100) {
            return Err(Error::config("stall_after", format!("must be at least 100ms, got {:?}", self.stall_after)));
        }
        if self.ping_interval >= self.idle_timeout {
            return Err(Error::config(
                "ping_interval",
                format!(
                    "must be shorter than idle_timeout ({:?}), or live clients are closed between pings",
                    self.idle_timeout
                ),
            ));
        }
        match &self.secret {
            Some(s) if s.is_empty() => return Err(Error::config("secret", "must not be empty")),
            None if !self.listen.ip().is_loopback() => {
                return Err(Error::config(
                    "secret",
                    format!(
                        "no secret set: refusing to listen on non-loopback {} with the development secret",
                        self.listen
                    ),
                ))
            }
            _ => {}
        }
        match (&self.admin_token, self.admin_listen) {
            (Some(t), _) if t.is_empty() => return Err(Error::config("admin_token", "must not be empty")),
            (Some(t), _) if t.chars().any(|c| c.is_control() || c == ' ') => {
                return Err(Error::config("admin_token", "must not contain spaces or control characters"))
            }
            (None, Some(addr)) if !addr.ip().is_loopback() => {
                return Err(Error::config(
                    "admin_token",
                    format!("no admin token set: refusing to serve the admin API on non-loopback {addr} without one"),
                ))
            }
            _ => {}
        }
        Ok(())
    }

    /// The secret tokens are checked against: the configured one, or [`DEV_SECRET`].
    pub fn secret_or_dev(&self) -> &str {
        self.secret.as_deref().unwrap_or(DEV_SECRET)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_match_the_docs() {
        let c = Config::default();
        c.validate().unwrap();
        assert_eq!(c.listen.to_string(), "127.0.0.1:10001");
        assert_eq!((c.register_queue, c.unregister_queue), (1024, 1024));
        assert_eq!(c.max_message_size, 51200);
        assert_eq!(c.max_connections, 100_000);
        assert_eq!(c.handshake_timeout, Duration::from_secs(10));
        assert_eq!((c.ping_interval, c.idle_timeout), (Duration::from_secs(27), Duration::from_secs(30)));
        assert_eq!(c.stall_after, Duration::from_secs(5));
        assert_eq!(c.max_subscriptions, 1000);
    }

    #[test]
    fn validate_names_the_bad_field() {
        let cases: Vec<(&str, Config)> = vec![
            ("register_queue", Config { register_queue: 0, ..Config::default() }),
            ("unregister_queue", Config { unregister_queue: 0, ..Config::default() }),
            ("io_threads", Config { io_threads: 0, ..Config::default() }),
            ("max_message_size", Config { max_message_size: MAX_MESSAGE_SIZE_LIMIT + 1, ..Config::default() }),
            ("ping_interval", Config { ping_interval: Duration::from_secs(40), ..Config::default() }),
            ("handshake_timeout", Config { handshake_timeout: Duration::ZERO, ..Config::default() }),
            ("secret", Config { secret: Some(String::new()), ..Config::default() }),
            ("secret", Config { listen: "0.0.0.0:10001".parse().unwrap(), ..Config::default() }),
            ("outbound_budget", Config { outbound_budget: 10, ..Config::default() }),
            ("stall_after", Config { stall_after: Duration::ZERO, ..Config::default() }),
            ("workers", Config { workers: 0, ..Config::default() }),
            ("worker_queue", Config { worker_queue: 0, ..Config::default() }),
            ("max_subscriptions", Config { max_subscriptions: 0, ..Config::default() }),
            ("socket_send_buffer", Config { socket_send_buffer: Some(0), ..Config::default() }),
            ("socket_send_buffer", Config { socket_send_buffer: Some(MIN_SOCKET_BUFFER - 1), ..Config::default() }),
            ("socket_send_buffer", Config { socket_send_buffer: Some(MAX_SOCKET_BUFFER + 1), ..Config::default() }),
            ("admin_token", Config { admin_listen: Some("0.0.0.0:10002".parse().unwrap()), ..Config::default() }),
            ("admin_token", Config { admin_listen: Some("[::]:0".parse().unwrap()), ..Config::default() }),
            ("admin_token", Config { admin_token: Some(String::new()), ..Config::default() }),
            ("admin_token", Config { admin_token: Some("a b".into()), ..Config::default() }),
        ];
        for (field, config) in cases {
            match config.validate() {
                Err(Error::Config { field: got, reason }) => assert_eq!(got, field, "{reason}"),
                other => panic!("{field}: expected a config error, got {other:?}"),
            }
        }
    }

    #[test]
    fn admin_api_is_off_by_default_and_needs_a_token_off_loopback() {
        assert_eq!(Config::default().admin_listen, None);
        Config { admin_listen: Some("127.0.0.1:0".parse().unwrap()), ..Config::default() }.validate().unwrap();
        Config { admin_listen: Some("[::1]:0".parse().unwrap()), ..Config::default() }.validate().unwrap();
        Config {
            admin_listen: Some("0.0.0.0:10002".parse().unwrap()),
            admin_token: Some("t0ken".into()),
            ..Config::default()
        }
        .validate()
        .unwrap();
    }

    #[test]
    fn socket_send_buffer_is_the_kernels_by_default_and_accepts_its_bounds() {
        assert_eq!(Config::default().socket_send_buffer, None);
        for n in [MIN_SOCKET_BUFFER, 4096, MAX_SOCKET_BUFFER] {
            Config { socket_send_buffer: Some(n), ..Config::default() }.validate().unwrap();
        }
    }

    #[test]
    fn capacity_one_queues_are_valid() {
        Config { register_queue: 1, unregister_queue: 1, handoff_queue: 1, inbox_queue: 1, ..Config::default() }
            .validate()
            .unwrap();
    }

    #[test]
    fn public_address_is_fine_with_a_real_secret() {
        let c = Config { listen: "0.0.0.0:10001".parse().unwrap(), secret: Some("s3cret".into()), ..Config::default() };
        c.validate().unwrap();
    }
}
