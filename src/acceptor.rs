//! The acceptor thread: accepts until `WouldBlock` and deals sockets to reactors round-robin.
//!
//! Owns the listening socket, the connection ceiling and the hand-off `try_send`. Fallback
//! when every reactor's hand-off queue is full: the socket waits in the acceptor's own bounded
//! backlog and is retried every millisecond; when that backlog is full too, or the socket has
//! waited a whole handshake timeout, it is refused with HTTP 503 and errCode 1601, counted and
//! logged. Past `max_connections` it is refused at once. It blocks only in its own `poll`.

use std::collections::VecDeque;
use std::io::ErrorKind;
use std::sync::atomic::Ordering::*;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Sender, TrySendError};
use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token};

use crate::mailbox::Mailbox;
use crate::metrics::{add, inc};
use crate::protocol::{codes, status_json};
use crate::reactor::{answer_and_close, http_error, Shared, WAKE};
use crate::throttle::log_throttled;
use crate::watchdog::Beacon;

const LISTENER: Token = Token(0);
/// Poll timeout after the process ran out of descriptors, before accepting again.
const EMFILE_BACKOFF: Duration = Duration::from_millis(50);
/// Sockets that may wait in the acceptor while every reactor's hand-off queue is full.
pub(crate) const ACCEPT_BACKLOG: usize = 4096;
/// Poll timeout while sockets wait in the acceptor's backlog.
const BACKLOG_RETRY: Duration = Duration::from_millis(1);
/// The kernel's queue of connections not yet accepted (capped by `net.core.somaxconn`). The
/// standard library's 128 drops SYNs when thousands of clients reconnect at once, and each drop
/// costs that client a 1 s retransmission.
pub(crate) const LISTEN_BACKLOG: i32 = 4096;

/// Binds the listening socket: non-blocking, `SO_REUSEADDR` (a restart does not wait for old
/// connections in TIME_WAIT), and a [`LISTEN_BACKLOG`]-deep accept queue.
pub(crate) fn bind(addr: std::net::SocketAddr) -> std::io::Result<TcpListener> {
    let socket = socket2::Socket::new(socket2::Domain::for_address(addr), socket2::Type::STREAM, None)?;
    socket.set_reuse_address(true)?;
    socket.bind(&addr.into())?;
    socket.listen(LISTEN_BACKLOG)?;
    socket.set_nonblocking(true)?;
    Ok(TcpListener::from_std(socket.into()))
}

/// What the acceptor tells the watchdog it is doing (indices into this).
pub(crate) const ACCEPTOR_LABELS: &[&str] = &["polling", "accepting and handing off", "retrying its backlog"];

/// One reactor as the acceptor sees it.
pub(crate) struct Lane {
    pub(crate) handoff: Sender<TcpStream>,
    pub(crate) mailbox: Arc<Mailbox>,
}

pub(crate) struct Acceptor {
    pub(crate) poll: Poll,
    pub(crate) listener: TcpListener,
    pub(crate) lanes: Vec<Lane>,
    pub(crate) shared: Arc<Shared>,
    pub(crate) pending: VecDeque<(TcpStream, Instant)>,
    pub(crate) next: usize,
    pub(crate) beacon: Arc<Beacon>,
}

impl Acceptor {
    pub(crate) fn run(mut self) {
        if let Err(e) = self.poll.registry().register(&mut self.listener, LISTENER, Interest::READABLE) {
            log::error!("acceptor: cannot poll the listener: {e}");
            return;
        }
        let mut events = Events::with_capacity(64);
        let mut backoff = None;
        while !self.shared.shutdown.load(Acquire) {
            let timeout = if self.pending.is_empty() { backoff } else { Some(BACKLOG_RETRY) };
            self.beacon.backlog(self.pending.len());
            self.beacon.turn();
            self.beacon.doing(0);
            if let Err(e) = self.poll.poll(&mut events, timeout) {
                if e.kind() != ErrorKind::Interrupted {
                    log::error!("acceptor: poll failed: {e}; no longer accepting");
                    break;
                }
            }
            backoff = None;
            if self.shared.shutdown.load(Acquire) {
                break;
            }
            self.beacon.doing(2);
            self.retry_pending();
            self.beacon.doing(1);
            loop {
                match self.listener.accept() {
                    Ok((stream, peer)) => {
                        inc(&self.shared.metrics.accepted);
                        log::trace!("accepted {peer}");
                        self.hand_off(stream);
                    }
                    Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == ErrorKind::Interrupted || e.kind() == ErrorKind::ConnectionAborted => {}
                    Err(e) => {
                        // EMFILE/ENFILE: the pending connection stays in the kernel's backlog;
                        // edge-triggered readiness will not repeat, so poll again after a pause.
                        log_throttled!(
                            log::Level::Error,
                            "acceptor: accept failed: {e}; retrying in {EMFILE_BACKOFF:?}"
                        );
                        backoff = Some(EMFILE_BACKOFF);
                        break;
                    }
                }
            }
        }
        // Sockets still waiting for a reactor: refused, and the gauge kept true.
        while let Some((stream, _)) = self.pending.pop_front() {
            add(&self.shared.metrics.connections, -1);
            refuse(stream, "the gateway is shutting down");
        }
        self.beacon.exit();
        log::debug!("acceptor: stopped accepting");
    }

    /// Gives `stream` to a reactor, round-robin, or keeps it in the backlog, or refuses it.
    fn hand_off(&mut self, stream: TcpStream) {
        let metrics = self.shared.metrics.clone();
        let max = self.shared.config.max_connections as i64;
        if metrics.connections.load(Relaxed) >= max {
            inc(&metrics.refused_max_connections);
            log_throttled!(log::Level::Warn, "refusing a connection: {max} connections held (max_connections)");
            refuse(stream, "too many connections: the gateway is at max_connections");
            return;
        }
        let _ = stream.set_nodelay(true);
        if let Some(bytes) = self.shared.config.socket_send_buffer {
            if let Err(e) = socket2::SockRef::from(&stream).set_send_buffer_size(bytes) {
                log_throttled!(log::Level::Warn, "cannot set SO_SNDBUF to {bytes} on an accepted socket: {e}");
            }
        }
        add(&metrics.connections, 1);
        if !self.pending.is_empty() {
            self.keep(stream, Instant::now()); // behind the ones already waiting
            return;
        }
        if let Err(stream) = self.try_lanes(stream) {
            inc(&metrics.handoff_queue_full);
            self.keep(stream, Instant::now());
        }
    }

    /// Offers `stream` to each reactor once, starting with the next in turn.
    fn try_lanes(&mut self, mut stream: TcpStream) -> Result<(), TcpStream> {
        for _ in 0..self.lanes.len() {
            let lane = &self.lanes[self.next % self.lanes.len()];
            self.next = self.next.wrapping_add(1);
            match lane.handoff.try_send(stream) {
                Ok(()) => {
                    lane.mailbox.wake();
                    return Ok(());
                }
                Err(TrySendError::Full(s) | TrySendError::Disconnected(s)) => stream = s,
            }
        }
        Err(stream)
    }

    fn keep(&mut self, stream: TcpStream, since: Instant) {
        if self.pending.len() >= ACCEPT_BACKLOG {
            self.refuse_busy(stream, "every reactor's hand-off queue and the accept backlog are full");
        } else {
            self.pending.push_back((stream, since));
        }
    }

    fn retry_pending(&mut self) {
        let limit = self.shared.config.handshake_timeout;
        while let Some((stream, since)) = self.pending.pop_front() {
            if since.elapsed() >= limit {
                self.refuse_busy(stream, "no reactor could take the connection within the handshake timeout");
                continue;
            }
            if let Err(stream) = self.try_lanes(stream) {
                self.pending.push_front((stream, since));
                return;
            }
        }
    }

    fn refuse_busy(&self, stream: TcpStream, why: &str) {
        add(&self.shared.metrics.connections, -1);
        inc(&self.shared.metrics.refused_handoff_full);
        log_throttled!(log::Level::Warn, "refusing a connection: {why}");
        refuse(stream, "server busy: no reactor could take the connection");
    }
}

/// Answers HTTP 503 with errCode 1601 without blocking, then closes.
fn refuse(stream: TcpStream, msg: &str) {
    answer_and_close(&stream, &http_error(503, &status_json(codes::CONN_OVER_MAX, msg), &[]));
}

pub(crate) fn waker(poll: &Poll) -> std::io::Result<mio::Waker> {
    mio::Waker::new(poll.registry(), WAKE)
}
