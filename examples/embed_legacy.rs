//! A legacy, blocking, thread-per-request service that embeds the gateway as a library.
//!
//! - Every 1003 message is written to the service's own store (a JSON-lines file, `fsync`ed)
//!   *before* the gateway relays it: the handler claims 1003 with `Claim::Observe`, and its
//!   blocking write runs on the gateway's worker pool, never on a reactor.
//! - Request 5001 `{"with":"bob","limit":20}` answers the conversation history from that store
//!   (a blocking file read).
//! - The service pushes from its own code: a line-based control port, one thread per
//!   connection, the old way: `PUSH <user> <text>`, `ONLINE <user>`, `KICK <user>`.
//!
//! ```text
//! cargo run --release --example embed_legacy -- --listen 127.0.0.1:10001 --control 127.0.0.1:10003
//! printf 'PUSH bob hello from the back office\n' | nc -q1 127.0.0.1 10003
//! ```
//!
//! stdout: `msggate listening on ADDR`, then `control listening on ADDR`. Tokens are checked
//! against `--secret` (the development secret by default; mint with `msggate token`).

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use clap::Parser;
use msggate::{Claim, Config, Gateway, GatewayHandle, Handler, Msg, Reply, Request, Session};
use serde_json::{json, Value};

#[derive(Parser)]
struct Args {
    /// WebSocket address.
    #[arg(long, default_value = "127.0.0.1:10001")]
    listen: SocketAddr,
    /// The service's own control port (thread per connection).
    #[arg(long, default_value = "127.0.0.1:10003")]
    control: SocketAddr,
    /// The message store (JSON lines), appended to.
    #[arg(long, default_value = "embed_legacy-messages.jsonl")]
    store: PathBuf,
    /// Token secret; the development secret when absent.
    #[arg(long)]
    secret: Option<String>,
}

const HISTORY: i32 = 5001;

/// The service's store and logic; the gateway calls it on its worker threads.
struct Legacy {
    path: PathBuf,
    file: Mutex<File>,
}

impl Handler for Legacy {
    fn claim(&self, req_identifier: i32) -> Claim {
        match req_identifier {
            msggate::ident::SEND_MSG => Claim::Observe,
            HISTORY => Claim::Handler,
            _ => Claim::Gateway,
        }
    }

    /// Persist first; only a stored message is relayed.
    fn on_message(&self, _session: &Session, msg: &Msg) -> Result<(), Reply> {
        let at = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
        let content: Value = serde_json::from_str(msg.content()).unwrap_or(Value::Null);
        let line = json!({"sendID": msg.send_id, "recvID": msg.recv_id, "clientMsgID": msg.client_msg_id,
                          "content": content, "at": at});
        let mut file = self.file.lock().unwrap_or_else(|e| e.into_inner());
        writeln!(file, "{line}")
            .and_then(|()| file.sync_data())
            .map_err(|e| Reply::error(msggate::codes::SERVER_INTERNAL, format!("not stored: {e}")))
    }

    fn on_request(&self, session: &Session, req: &Request) -> Reply {
        #[derive(serde::Deserialize)]
        struct Ask {
            with: String,
            #[serde(default = "twenty")]
            limit: usize,
        }
        fn twenty() -> usize {
            20
        }
        let ask: Ask = match req.data() {
            Ok(a) => a,
            Err(reply) => return reply,
        };
        let me = session.user();
        let file = match File::open(&self.path) {
            Ok(f) => f,
            Err(e) => return Reply::error(msggate::codes::SERVER_INTERNAL, format!("store unreadable: {e}")),
        };
        let mut msgs: Vec<Value> = BufReader::new(file)
            .lines()
            .map_while(Result::ok)
            .filter_map(|l| serde_json::from_str::<Value>(&l).ok())
            .filter(|m| {
                let (s, r) = (m["sendID"].as_str(), m["recvID"].as_str());
                (s == Some(me) && r == Some(&ask.with)) || (s == Some(&ask.with) && r == Some(me))
            })
            .collect();
        let skip = msgs.len().saturating_sub(ask.limit);
        msgs.drain(..skip);
        Reply::with_data(&json!({ "msgs": msgs }))
    }
}

/// One control connection, on its own thread: read a command, answer a line.
fn serve_control(stream: TcpStream, gateway: GatewayHandle) {
    let mut out = match stream.try_clone() {
        Ok(s) => s,
        Err(_) => return,
    };
    for line in BufReader::new(stream).lines().map_while(Result::ok) {
        let mut words = line.splitn(3, ' ');
        let answer = match (words.next(), words.next(), words.next()) {
            (Some("PUSH"), Some(user), Some(text)) => {
                let msg = json!({"sendID": "legacy", "recvID": user, "contentType": 101, "content": text});
                match gateway.push(user, &msg) {
                    Ok(r) => format!("OK delivered={} sessions={}", r.delivered(), r.sessions.len()),
                    Err(e) => format!("ERR {e}"),
                }
            }
            (Some("ONLINE"), Some(user), None) => {
                let platforms: Vec<String> = gateway.sessions(user).iter().map(|s| s.platform.to_string()).collect();
                format!("ONLINE {user} platforms={}", platforms.join(","))
            }
            (Some("KICK"), Some(user), None) => format!("KICKED {}", gateway.kick(user, None).len()),
            _ => format!("ERR unknown command {line:?}: PUSH <user> <text> | ONLINE <user> | KICK <user>"),
        };
        if writeln!(out, "{answer}").is_err() {
            return;
        }
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    simplelog::TermLogger::init(
        log::LevelFilter::Info,
        simplelog::Config::default(),
        simplelog::TerminalMode::Stderr,
        simplelog::ColorChoice::Never,
    )
    .ok();
    let file = OpenOptions::new().create(true).append(true).open(&args.store)?;
    let legacy = Legacy { path: args.store.clone(), file: Mutex::new(file) };
    let config = Config { listen: args.listen, secret: args.secret, ..Config::default() };
    let gateway = Gateway::start_with(config, legacy)?;
    println!("msggate listening on {}", gateway.local_addr());
    let control = TcpListener::bind(args.control)?;
    println!("control listening on {}", control.local_addr()?);
    std::io::stdout().flush()?;
    for stream in control.incoming() {
        let Ok(stream) = stream else { continue };
        let gateway = gateway.clone();
        std::thread::spawn(move || serve_control(stream, gateway));
    }
    Ok(())
}
