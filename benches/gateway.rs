//! Benchmarks through the public API: upgrade admission (query parsing + HS256 verification)
//! and a 1:1 relay round trip through a real gateway on loopback (send 1003, receive the 2001 on
//! the recipient and the ack on the sender).
//!
//! `cargo bench --bench gateway`. Numbers go in notes and docs as ratios within one run; these
//! machines are shared and noisy.

use std::net::TcpStream;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use criterion::{criterion_group, criterion_main, Criterion};
use msggate::{admit, Config, Gateway, TokenKey};
use tungstenite::{Message, WebSocket};

const SECRET: &str = "bench-secret";

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

fn admission(c: &mut Criterion) {
    let key = TokenKey::new(SECRET.as_bytes());
    let query = format!("token={}&sendID=user-42&platformID=1&operationID=op", key.mint("user-42", 1, now() + 3600));
    c.bench_function("admit (parse query + verify HS256)", |b| {
        b.iter(|| admit(Some(std::hint::black_box(&query)), &key, now()).unwrap())
    });
}

fn connect(addr: std::net::SocketAddr, user: &str) -> WebSocket<TcpStream> {
    let token = TokenKey::new(SECRET.as_bytes()).mint(user, 1, now() + 3600);
    let stream = TcpStream::connect(addr).unwrap();
    stream.set_nodelay(true).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let url = format!("ws://{addr}/?token={token}&sendID={user}&platformID=1&operationID=bench");
    tungstenite::client::client(url.as_str(), stream).unwrap().0
}

fn next_text(ws: &mut WebSocket<TcpStream>) -> String {
    loop {
        if let Message::Text(t) = ws.read().unwrap() {
            return t.to_string();
        }
    }
}

fn relay_round_trip(c: &mut Criterion) {
    let gateway = Gateway::start(Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        secret: Some(SECRET.into()),
        io_threads: 2,
        ..Config::default()
    })
    .unwrap();
    let addr = gateway.local_addr();
    let mut rx = connect(addr, "rx");
    let mut tx = connect(addr, "tx");
    while gateway.registry_len() < 2 {
        std::thread::yield_now();
    }
    let frame = r#"{"reqIdentifier":1003,"sendID":"tx","operationID":"o","msgIncr":"1","data":{"recvID":"rx","clientMsgID":"c","contentType":101,"content":"hello, this is a benchmark message"}}"#;
    c.bench_function("relay round trip (1003 -> 2001 + ack, loopback)", |b| {
        b.iter(|| {
            tx.send(Message::text(frame)).unwrap();
            let push = next_text(&mut rx);
            let ack = next_text(&mut tx);
            assert!(push.contains("\"reqIdentifier\":2001") && ack.contains("\"delivered\":1"));
        })
    });
    gateway.shutdown();
}

criterion_group!(benches, admission, relay_round_trip);
criterion_main!(benches);
