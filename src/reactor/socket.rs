//! The socket a connection's tungstenite state machine reads and writes: a mio `TcpStream`
//! (an in-memory pipe in the fuzzing harness, through the [`Stream`] trait) whose writes can be
//! held back.
//!
//! Owns one trick: the upgrade's `101 Switching Protocols` is held (writes report `WouldBlock`)
//! from accept until the reactor releases it, so that the response leaves only after the token
//! was judged and the session is in the registry. A client whose upgrade completed is online,
//! and every kick its login causes has been ordered. Holding never blocks anything: the reactor
//! resumes the handshake itself when it releases the hold.
//!
//! And one saving: after a short read (fewer bytes than asked for) the kernel's buffer was
//! empty, so the next read reports `WouldBlock` without a syscall until the reactor sees a new
//! readable event. mio is edge-triggered and Linux raises an edge for every arrival after the
//! read, so nothing is missed; it saves the `recv` that would only say `EAGAIN`, one of the
//! three syscalls a relayed message costs. (tokio clears readiness on short reads likewise.)
//! Except once the peer has closed its side: a FIN or RST that arrived with the last data
//! raises no edge of its own after the read, so from then on every read asks the kernel, until
//! it answers end of stream. (tokio keeps its closed readiness likewise.)
//!
//! It also ends a connection on request: a FIN (once) when a failed connection's close frame
//! is out, and a reset (`SO_LINGER` 0) for a peer that let the close deadline pass.

use std::io::{self, ErrorKind, Read, Write};
use std::rc::Rc;

use mio::net::TcpStream;

/// What a [`Socket`] needs of the stream under it: reads and writes through a shared reference
/// (as `&TcpStream` allows, so that the connection can keep the stream to answer a failed
/// upgrade after tungstenite dropped its socket), and the two ways to end it. `TcpStream` in
/// the gateway, so the hot path is the same static calls as before; the fuzzing harness
/// (`harness.rs`) puts an in-memory pipe here.
pub(crate) trait Stream {
    fn read(&self, buf: &mut [u8]) -> io::Result<usize>;
    fn write(&self, buf: &[u8]) -> io::Result<usize>;
    /// Sends FIN after whatever was written; errors are ignored (the peer is gone already).
    fn shutdown_write(&self);
    /// Makes the coming close a reset (`SO_LINGER` 0).
    fn reset_on_close(&self);
}

impl Stream for TcpStream {
    fn read(&self, buf: &mut [u8]) -> io::Result<usize> {
        Read::read(&mut &*self, buf)
    }

    fn write(&self, buf: &[u8]) -> io::Result<usize> {
        Write::write(&mut &*self, buf)
    }

    fn shutdown_write(&self) {
        let _ = self.shutdown(std::net::Shutdown::Write);
    }

    fn reset_on_close(&self) {
        let _ = socket2::SockRef::from(self).set_linger(Some(std::time::Duration::ZERO));
    }
}

/// Writes `response` without blocking and shuts the sending side: for a socket no WebSocket
/// will run on (over `max_connections`, a refused upgrade). Best effort: whatever the client
/// already sent (up to 64 KiB) is read first, so that closing does not turn into a reset that
/// could destroy the response in flight.
pub(crate) fn answer_and_close<S: Stream + ?Sized>(stream: &S, response: &[u8]) {
    let mut scratch = [0u8; 2048];
    for _ in 0..32 {
        match stream.read(&mut scratch) {
            Ok(n) if n > 0 => continue,
            _ => break,
        }
    }
    let _ = stream.write(response);
    stream.shutdown_write();
}

pub(crate) struct Socket<S: Stream = TcpStream> {
    /// Shared with the connection only while it answers a failed upgrade, which tungstenite
    /// reports after dropping this wrapper.
    stream: Rc<S>,
    held: bool,
    /// The last read was short and no readable event has come since.
    drained: bool,
    /// The reactor saw the peer's FIN (or an error): short reads no longer mean drained.
    peer_closed: bool,
    /// Our side is shut down for writing (FIN sent).
    fin: bool,
}

impl<S: Stream> Socket<S> {
    /// Wraps `stream` with writes held.
    pub(crate) fn held(stream: S) -> Socket<S> {
        Socket { stream: Rc::new(stream), held: true, drained: false, peer_closed: false, fin: false }
    }

    /// The stream itself, to answer on after tungstenite gave up on the upgrade.
    pub(crate) fn stream(&self) -> Rc<S> {
        self.stream.clone()
    }

    pub(crate) fn is_held(&self) -> bool {
        self.held
    }

    pub(crate) fn release(&mut self) {
        self.held = false;
    }

    /// Sends FIN after whatever was written, once: how a failed connection ends its side.
    pub(crate) fn finish_writes(&mut self) {
        if !self.fin {
            self.fin = true;
            self.stream.shutdown_write();
        }
    }

    /// Makes the coming close a reset: for a peer that let a deadline pass, so that no
    /// orphaned socket waits in FIN_WAIT for minutes with our unsent bytes.
    pub(crate) fn reset_on_close(&self) {
        self.stream.reset_on_close();
    }

    /// The reactor got a readable event (or must look anyway): the next read asks the kernel.
    /// `peer_closed`: the event says the peer shut down its side (or the socket failed).
    pub(crate) fn readable(&mut self, peer_closed: bool) {
        self.drained = false;
        self.peer_closed |= peer_closed;
    }
}

impl<S: Stream> Read for Socket<S> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.drained {
            return Err(ErrorKind::WouldBlock.into());
        }
        let n = self.stream.read(buf)?;
        self.drained = n > 0 && n < buf.len() && !self.peer_closed;
        Ok(n)
    }
}

impl<S: Stream> Write for Socket<S> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.held {
            return Err(ErrorKind::WouldBlock.into());
        }
        self.stream.write(buf)
    }

    /// Nothing is buffered here (a `TcpStream`'s flush is a no-op too).
    fn flush(&mut self) -> io::Result<()> {
        if self.held {
            return Err(ErrorKind::WouldBlock.into());
        }
        Ok(())
    }
}
