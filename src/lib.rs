//! msggate: a WebSocket instant-messaging gateway on plain OS threads.
//!
//! It speaks OpenIM's msggateway protocol (JSON envelope, HS256 tokens, multi-login policies)
//! on a handful of threads: an acceptor, `io_threads` mio reactors that own every socket, and
//! two role threads that own the register and unregister queues. Every cross-thread send is a
//! `try_send` with a defined fallback, so no thread ever blocks on a queue whose consumer could
//! be waiting on it: the register/unregister deadlock that froze OpenIM's gateway cannot form.
//! `docs/ARCHITECTURE.md` makes the argument; `docs/PROTOCOL.md` documents the wire format.
//!
//! Embedding services push, kick and ask who is online through [`GatewayHandle`], from any
//! thread and without blocking, and plug their own logic in with a [`Handler`], which runs on a
//! bounded pool of worker threads and so may block.
//!
//! ```no_run
//! let gateway = msggate::Gateway::start(msggate::Config::default())?;
//! println!("listening on {}", gateway.local_addr());
//! gateway.shutdown();
//! # Ok::<(), msggate::Error>(())
//! ```

#![forbid(unsafe_code)]
#![warn(missing_docs, rust_2018_idioms)]

mod acceptor;
mod admin;
mod admission;
#[doc(hidden)]
pub mod bench;
mod config;
mod dispatch;
mod error;
#[doc(hidden)]
pub mod fuzzing;
mod gateway;
mod handler;
mod mailbox;
mod metrics;
mod outbox;
mod policy;
mod presence;
mod protocol;
mod reactor;
mod registry;
mod roles;
mod throttle;
mod token;
mod watchdog;
mod worker;

pub use crate::{
    admission::{admit, admit_open, Identity, Rejection},
    config::{Config, DEV_SECRET, MAX_MESSAGE_SIZE_LIMIT, MAX_SOCKET_BUFFER, MIN_SOCKET_BUFFER},
    error::{Error, Result},
    gateway::{Gateway, GatewayHandle, PushReport, SessionPush, ShutdownSummary, UserOnline},
    handler::{on, raw, Claim, Frame, Handler, Msg, On, Raw, Reply, Request, Session},
    mailbox::{ConnId, NotDelivered},
    metrics::Snapshot,
    policy::{MultiLoginPolicy, Platform, PlatformClass},
    protocol::{codes, ident},
    registry::OnlineSession,
    token::{Claims, TokenError, TokenKey},
    watchdog::{Beacon, Health, Monitor, QueueDepth, StallReport, ThreadHealth, Watchdog, Watched},
};
