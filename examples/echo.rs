//! A raw WebSocket echo server on the gateway's real reactor and session code.
//!
//! Every text and binary message is sent back as it came, no envelope, no token; messages up
//! to 16 MiB. It is what the conformance suite (Autobahn) runs against:
//!
//! ```text
//! cargo run --release --example echo -- --listen 127.0.0.1:9001 [--io-threads N] [--sndbuf BYTES]
//! ```
//!
//! `--sndbuf` pins every accepted socket's `SO_SNDBUF` (`Config::socket_send_buffer`); a small
//! one forces partial writes of large messages.
//!
//! It prints `msggate listening on ADDR` on stdout and runs until SIGINT or SIGTERM.

use std::io::Write as _;
use std::net::SocketAddr;

use clap::Parser;
use msggate::{Config, Gateway};

#[derive(Parser)]
struct Args {
    /// Address to listen on; port 0 picks a free one.
    #[arg(long, default_value = "127.0.0.1:9001")]
    listen: SocketAddr,
    /// Reactor threads.
    #[arg(long, default_value_t = 2)]
    io_threads: usize,
    /// Worker threads running the echo handler.
    #[arg(long, default_value_t = 2)]
    workers: usize,
    /// SO_SNDBUF of every accepted socket, in bytes (Linux doubles it and has a minimum);
    /// default: the kernel's.
    #[arg(long, value_name = "BYTES")]
    sndbuf: Option<usize>,
}

const MAX_MESSAGE: usize = 16 << 20;

fn main() -> Result<(), msggate::Error> {
    let args = Args::parse();
    simplelog::TermLogger::init(
        log::LevelFilter::Warn,
        simplelog::Config::default(),
        simplelog::TerminalMode::Stderr,
        simplelog::ColorChoice::Never,
    )
    .ok();
    let config = Config {
        listen: args.listen,
        io_threads: args.io_threads,
        workers: args.workers,
        require_token: false,
        max_message_size: MAX_MESSAGE,
        // An echo of the largest message must fit beside one being read.
        outbound_budget: 4 * MAX_MESSAGE,
        read_buffer_size: 4096,
        socket_send_buffer: args.sndbuf,
        ..Config::default()
    };
    let gateway = Gateway::start_with(config, msggate::raw(|_session, frame| Some(frame)))?;
    println!("msggate listening on {}", gateway.local_addr());
    let _ = std::io::stdout().flush();
    let mut signals = signal_hook::iterator::Signals::new([signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM])
        .map_err(|source| msggate::Error::Io { context: "installing signal handlers", source })?;
    signals.forever().next();
    gateway.shutdown();
    Ok(())
}
