//! Benchmarks: upgrade admission (query parsing + HS256 verification); the envelope codec
//! (decoding a 1003 send, encoding its 2001 push and ack); the registry with the register
//! role's kick path (register a new user, register kicking an older session, unregister), on a
//! registry already holding 10k users; the multi-login policy table; and a 1:1 relay round trip
//! through a real gateway on loopback (send 1003, receive the 2001 on the recipient and the ack
//! on the sender). The crate-private parts are reached through `msggate::bench`, which calls the
//! code the gateway runs.
//!
//! `cargo bench --bench gateway`. Numbers go in notes and docs as ratios within one run; these
//! machines are shared and noisy.

use std::net::TcpStream;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use criterion::{criterion_group, criterion_main, Criterion};
use msggate::bench::{decode_send, encode_push_and_ack, RegistryBench};
use msggate::{admit, Config, Gateway, MultiLoginPolicy, Platform, TokenKey};
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

const SEND: &str = r#"{"reqIdentifier":1003,"sendID":"user-42","operationID":"op-7f3a","msgIncr":"17","data":{"recvID":"user-43","clientMsgID":"c-8d1e2f","contentType":101,"content":"hello, this is a benchmark message of a typical length"}}"#;

fn envelope(c: &mut Criterion) {
    assert!(decode_send(SEND).is_some());
    c.bench_function("envelope decode (1003 send: envelope + data)", |b| {
        b.iter(|| decode_send(std::hint::black_box(SEND)))
    });
    c.bench_function("envelope decode + encode (1003 in; 2001 push + ack out)", |b| {
        b.iter(|| encode_push_and_ack(std::hint::black_box(SEND)))
    });
}

/// A registry holding 10k users on two platforms each, as a busy gateway's would.
fn populated(policy: MultiLoginPolicy) -> RegistryBench {
    let mut r = RegistryBench::new(policy);
    for i in 0..10_000 {
        r.register(&format!("resident-{i}"), Platform::Ios);
        r.register(&format!("resident-{i}"), Platform::Windows);
    }
    r
}

fn registry(c: &mut Criterion) {
    let mut r = populated(MultiLoginPolicy::SameTerminalKick);
    c.bench_function("registry register + unregister (new user, 10k resident)", |b| {
        b.iter(|| {
            let s = r.register("newcomer", Platform::Android);
            assert!(r.unregister(&s));
        })
    });
    let mut r = populated(MultiLoginPolicy::SameTerminalKick);
    let mut current = r.register("churner", Platform::Ios);
    c.bench_function("registry register kicking the same terminal (2002 + close order)", |b| {
        b.iter(|| current = r.register("churner", Platform::Ios))
    });
    assert_eq!(r.len(), 20_001, "each login replaced the previous one");
    assert!(r.unregister(&current));
}

fn policy(c: &mut Criterion) {
    let policies = [
        MultiLoginPolicy::NotKick,
        MultiLoginPolicy::SameTerminalKick,
        MultiLoginPolicy::SameClassKick,
        MultiLoginPolicy::PcAndOther,
    ];
    let platforms: Vec<Platform> = (1..=11).filter_map(Platform::from_id).collect();
    assert_eq!(platforms.len(), 11);
    c.bench_function("policy decisions (4 policies x 11 x 11 platform pairs)", |b| {
        b.iter(|| {
            let mut kicks = 0u32;
            for p in std::hint::black_box(&policies) {
                for &old in &platforms {
                    for &new in &platforms {
                        kicks += u32::from(p.kicks(old, new));
                    }
                }
            }
            kicks
        })
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

/// One 1003 from `tx` to `rx`: the push arrives at `rx` and the ack at `tx`.
fn relay_once(tx: &mut WebSocket<TcpStream>, rx: &mut WebSocket<TcpStream>) {
    let frame = r#"{"reqIdentifier":1003,"sendID":"tx","operationID":"o","msgIncr":"1","data":{"recvID":"rx","clientMsgID":"c","contentType":101,"content":"hello, this is a benchmark message"}}"#;
    tx.send(Message::text(frame)).unwrap();
    let push = next_text(rx);
    let ack = next_text(tx);
    assert!(push.contains("\"reqIdentifier\":2001") && ack.contains("\"delivered\":1"));
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
    c.bench_function("relay round trip (1003 -> 2001 + ack, loopback)", |b| b.iter(|| relay_once(&mut tx, &mut rx)));
    gateway.shutdown();
}

/// Observes 1003 (a no-op `on_message`) and serves 5000: the cost of the worker hop.
struct Hop;

impl msggate::Handler for Hop {
    fn claim(&self, req_identifier: i32) -> msggate::Claim {
        match req_identifier {
            1003 => msggate::Claim::Observe,
            5000 => msggate::Claim::Handler,
            _ => msggate::Claim::Gateway,
        }
    }
    fn on_request(&self, _s: &msggate::Session, _r: &msggate::Request) -> msggate::Reply {
        msggate::Reply::ok()
    }
}

fn handler_round_trip(c: &mut Criterion) {
    let config = Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        secret: Some(SECRET.into()),
        io_threads: 2,
        workers: 2,
        ..Config::default()
    };
    let gateway = Gateway::start_with(config, Hop).unwrap();
    let addr = gateway.local_addr();
    let mut rx = connect(addr, "rx");
    let mut tx = connect(addr, "tx");
    while gateway.registry_len() < 2 {
        std::thread::yield_now();
    }
    c.bench_function("reactor round trip (text ping -> pong, loopback)", |b| {
        b.iter(|| {
            tx.send(Message::text(r#"{"type":"ping"}"#)).unwrap();
            assert!(next_text(&mut tx).contains("pong"));
        })
    });
    let request = r#"{"reqIdentifier":5000,"sendID":"tx","operationID":"o","msgIncr":"1"}"#;
    c.bench_function("handler round trip (claimed request -> worker -> reply, loopback)", |b| {
        b.iter(|| {
            tx.send(Message::text(request)).unwrap();
            assert!(next_text(&mut tx).contains("\"reqIdentifier\":5000"));
        })
    });
    c.bench_function("observed relay round trip (1003 -> worker -> 2001 + ack, loopback)", |b| {
        b.iter(|| relay_once(&mut tx, &mut rx))
    });
    gateway.shutdown();
}

criterion_group!(benches, admission, envelope, registry, policy, relay_round_trip, handler_round_trip);
criterion_main!(benches);
