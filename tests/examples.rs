//! The examples, run as the programs they are: the raw echo server and the legacy service
//! that embeds the gateway.

use std::io::{BufRead as _, BufReader, Write as _};
use std::net::{SocketAddr, TcpStream};

use serde_json::{json, Value};
use tungstenite::Message;

use crate::proc::{example, Proc, PATIENCE};
use crate::util::{watchdog, Client, SECRET, STEP};

#[test]
fn echo_example_echoes_text_and_binary_without_a_token() {
    watchdog(4 * STEP, || {
        let mut echo = Proc::spawn(&mut example("echo", &["--listen", "127.0.0.1:0", "--io-threads", "1"]));
        let addr = echo.listen_addr();
        let mut c = Client::connect_query(addr, "", "echo").expect("no token needed");
        c.ws.send(Message::text("héllo")).unwrap();
        let big = vec![7u8; 1 << 20];
        c.ws.send(Message::binary(big.clone())).unwrap();
        assert_eq!(c.recv(), Message::text("héllo"));
        assert_eq!(c.recv(), Message::binary(big));
        c.close();
    });
}

/// A line-protocol exchange with the example's control port.
fn control(addr: SocketAddr, line: &str) -> String {
    let mut s = TcpStream::connect_timeout(&addr, STEP).unwrap();
    s.set_read_timeout(Some(PATIENCE)).unwrap();
    writeln!(s, "{line}").unwrap();
    let mut answer = String::new();
    BufReader::new(s).read_line(&mut answer).unwrap();
    answer.trim_end().to_owned()
}

#[test]
fn embed_legacy_stores_before_relaying_answers_history_and_pushes_from_its_own_code() {
    watchdog(6 * STEP, || {
        let dir = std::env::temp_dir().join(format!("msggate-embed-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let store = dir.join("messages.jsonl");
        let _ = std::fs::remove_file(&store);
        let args = ["--listen", "127.0.0.1:0", "--control", "127.0.0.1:0", "--secret", SECRET];
        let mut service = Proc::spawn(example("embed_legacy", &args).arg("--store").arg(&store));
        let addr = service.listen_addr();
        let line = service.next_line();
        let control_addr: SocketAddr = line.strip_prefix("control listening on ").expect(&line).parse().unwrap();

        let mut alice = Client::connect(addr, "alice", 1);
        let mut bob = Client::connect(addr, "bob", 1);
        let incr = alice.send_msg("bob", "kept forever");
        assert_eq!(alice.await_reply(&incr)["data"]["delivered"], 1);
        assert_eq!(bob.await_push()["content"], "kept forever");
        let stored: Value = serde_json::from_str(std::fs::read_to_string(&store).unwrap().trim()).unwrap();
        assert_eq!((stored["sendID"].as_str(), stored["content"].as_str()), (Some("alice"), Some("kept forever")));

        alice.send_json(&json!({"reqIdentifier": 5001, "sendID": "alice", "msgIncr": "h", "data": {"with": "bob"}}));
        let history = alice.await_reply("h");
        assert_eq!(history["data"]["msgs"].as_array().map(Vec::len), Some(1), "{history}");

        assert_eq!(control(control_addr, "PUSH bob from the back office"), "OK delivered=1 sessions=1");
        assert_eq!(bob.await_push()["content"], "from the back office");
        assert_eq!(control(control_addr, "ONLINE bob"), "ONLINE bob platforms=1");
        assert_eq!(control(control_addr, "KICK bob"), "KICKED 1");
        assert_eq!(bob.recv_until(|v| v["reqIdentifier"] == 2002)["errCode"], 0);
        assert!(control(control_addr, "FROB").starts_with("ERR unknown command"));
        drop(service);
        let _ = std::fs::remove_dir_all(&dir);
    });
}
