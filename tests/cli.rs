//! The `msggate` binary end to end: flags, environment, TOML file, exit codes, the listen line,
//! tokens, and a graceful SIGTERM. Every child is killed by its guard's `Drop`, and every wait is
//! bounded, so a misbehaving binary fails a test instead of hanging it.

use crate::proc::{msggate, run, Proc, PATIENCE};
use crate::util::watchdog;
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::Message;

/// A hang anywhere fails the test; the slowest of these takes about a second.
const LIMIT: std::time::Duration = std::time::Duration::from_secs(60);

/// Runs `msggate serve` expecting a configuration error: exit 2 and `needle` on stderr.
fn expect_config_error(cmd: &mut Command, needle: &str) {
    let out = run(cmd);
    assert_eq!(out.status.code(), Some(2), "expected exit 2; stderr:\n{}", out.stderr);
    assert!(out.stderr.contains(needle), "stderr should mention {needle:?}:\n{}", out.stderr);
    assert!(out.stdout.is_empty(), "nothing on stdout when start-up fails: {:?}", out.stdout);
}

/// Mints a token with the real binary.
fn mint(args: &[&str]) -> String {
    let mut full = vec!["token"];
    full.extend_from_slice(args);
    let out = run(&mut msggate(&full));
    assert!(out.status.success(), "msggate token failed: {}\n{}", out.status, out.stderr);
    let token = out.stdout.trim().to_owned();
    assert_eq!(out.stdout.lines().count(), 1, "one line on stdout: {:?}", out.stdout);
    token
}

/// A TOML file in the temp directory, removed on drop.
struct TempToml(PathBuf);

impl TempToml {
    fn new(contents: &str) -> TempToml {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!("msggate-cli-test-{}-{n}.toml", std::process::id()));
        std::fs::write(&path, contents).expect("write temp TOML");
        TempToml(path)
    }

    fn path(&self) -> &str {
        self.0.to_str().expect("temp path is UTF-8")
    }
}

impl Drop for TempToml {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

#[test]
fn serve_on_port_zero_accepts_an_authenticated_client_and_sigterm_exits_0_quickly() {
    watchdog(LIMIT, || {
        // --no-admin: `serve` would otherwise take 127.0.0.1:10002, which parallel tests share.
        let mut server =
            Proc::spawn(&mut msggate(&["serve", "--listen", "127.0.0.1:0", "--no-admin", "--secret", "s"]));
        let addr = server.listen_addr();
        let token = mint(&["--secret", "s", "--user", "u1", "--platform", "1"]);

        let stream = TcpStream::connect_timeout(&addr, PATIENCE).expect("connect");
        stream.set_read_timeout(Some(PATIENCE)).unwrap();
        stream.set_write_timeout(Some(PATIENCE)).unwrap();
        let url = format!("ws://{addr}/?token={token}&sendID=u1&platformID=1&operationID=op");
        let (mut ws, response) = tungstenite::client(url.as_str(), stream).expect("WebSocket upgrade");
        assert_eq!(response.status().as_u16(), 101);

        ws.send(Message::text(r#"{"type":"ping"}"#)).expect("send ping");
        let reply = loop {
            match ws.read().expect("read pong") {
                Message::Text(t) => break t.to_string(),
                Message::Ping(_) | Message::Pong(_) => continue,
                other => panic!("expected the pong, got {other:?}"),
            }
        };
        assert_eq!(reply, r#"{"type":"pong"}"#);

        let term_sent = Instant::now();
        let kill = Command::new("kill").args(["-TERM", &server.pid().to_string()]).status().expect("run kill");
        assert!(kill.success(), "kill -TERM failed");

        let close = loop {
            match ws.read().expect("read the close frame") {
                Message::Close(frame) => break frame,
                Message::Ping(_) | Message::Pong(_) | Message::Text(_) => continue,
                other => panic!("expected a close frame, got {other:?}"),
            }
        };
        let close = close.expect("close frame carries a code");
        assert_eq!(close.code, CloseCode::Away, "shutdown closes with 1001: {close:?}");
        let _ = ws.flush(); // our close reply
        drop(ws);

        let out = server.finish_within(Duration::from_secs(5).saturating_sub(term_sent.elapsed()));
        let took = term_sent.elapsed();
        assert_eq!(out.status.code(), Some(0), "stderr:\n{}", out.stderr);
        assert!(took < Duration::from_secs(5), "shutdown took {took:?}");
        assert!(out.stderr.contains("shut down"), "a summary line on stderr:\n{}", out.stderr);
        assert!(out.stdout.is_empty(), "only the listen line on stdout: {:?}", out.stdout);
    });
}

#[test]
fn invalid_config_names_the_field_and_exits_2() {
    watchdog(LIMIT, || {
        expect_config_error(
            &mut msggate(&["serve", "--listen", "127.0.0.1:0", "--register-queue", "0"]),
            "register_queue",
        );
        // The presence cap, by flag, environment and file.
        let listen = ["serve", "--listen", "127.0.0.1:0"];
        expect_config_error(msggate(&listen).args(["--max-subscriptions", "0"]), "max_subscriptions");
        expect_config_error(msggate(&listen).env("MSGGATE_MAX_SUBSCRIPTIONS", "0"), "max_subscriptions");
        let zero = TempToml::new("max_subscriptions = 0\n");
        expect_config_error(msggate(&listen).args(["--config", zero.path()]), "max_subscriptions");
        expect_config_error(msggate(&listen).args(["--socket-send-buffer", "10"]), "socket_send_buffer");
        // A value clap cannot parse is a usage error, also exit 2.
        expect_config_error(
            &mut msggate(&["serve", "--listen", "127.0.0.1:0", "--handshake-timeout", "soon"]),
            "--handshake-timeout",
        );
    });
}

#[test]
fn env_and_toml_config_apply_with_flags_winning() {
    watchdog(LIMIT, || {
        let listen = ["serve", "--listen", "127.0.0.1:0", "--no-admin"];

        // The file is read...
        let zero = TempToml::new("register_queue = 0\n");
        expect_config_error(msggate(&listen).args(["--config", zero.path()]), "register_queue");
        // ...also when named by MSGGATE_CONFIG...
        expect_config_error(msggate(&listen).env("MSGGATE_CONFIG", zero.path()), "register_queue");
        // ...and the environment beats it.
        let mut server =
            Proc::spawn(msggate(&listen).args(["--config", zero.path()]).env("MSGGATE_REGISTER_QUEUE", "5"));
        server.listen_addr();
        drop(server);

        // The environment is read, and a flag beats it.
        expect_config_error(msggate(&listen).env("MSGGATE_REGISTER_QUEUE", "0"), "register_queue");
        let mut server =
            Proc::spawn(msggate(&listen).args(["--register-queue", "5"]).env("MSGGATE_REGISTER_QUEUE", "0"));
        server.listen_addr();
        drop(server);

        // Unknown keys are refused by name.
        let unknown = TempToml::new("register_queue = 8\nregister_queeu = 8\n");
        expect_config_error(msggate(&listen).args(["--config", unknown.path()]), "register_queeu");
    });
}

#[test]
fn token_subcommand_mints_a_verifiable_token() {
    watchdog(LIMIT, || {
        let token = mint(&["--secret", "k", "--user", "u9", "--platform", "5"]);
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs();
        let claims = msggate::TokenKey::new(b"k").verify(&token, now).expect("token verifies with the same secret");
        assert_eq!((claims.user_id.as_str(), claims.platform_id), ("u9", 5));
        let ttl = claims.exp - now;
        assert!((24 * 3600 - 60..=24 * 3600 + 60).contains(&ttl), "default ttl is 24h, got {ttl}s");
        assert!(msggate::TokenKey::new(b"other").verify(&token, now).is_err());

        let out = run(&mut msggate(&["token", "--secret", "k", "--user", "u9", "--platform", "12"]));
        assert!(!out.status.success(), "platform 12 must be refused");
        assert!(out.stdout.is_empty(), "no token printed: {:?}", out.stdout);
        assert!(out.stderr.contains("platform") && out.stderr.contains("11"), "a clear message:\n{}", out.stderr);

        // Without a secret: the development secret, with a warning.
        let out = run(&mut msggate(&["token", "--user", "u9", "--platform", "1"]));
        assert!(out.status.success(), "{}", out.stderr);
        assert!(out.stderr.contains("development secret"), "warns about the dev secret:\n{}", out.stderr);
        let claims = msggate::TokenKey::new(msggate::DEV_SECRET.as_bytes()).verify(out.stdout.trim(), now).unwrap();
        assert_eq!(claims.user_id, "u9");
    });
}

#[test]
fn serve_refuses_non_loopback_without_secret() {
    watchdog(LIMIT, || {
        expect_config_error(&mut msggate(&["serve", "--listen", "0.0.0.0:0"]), "secret");
    });
}
