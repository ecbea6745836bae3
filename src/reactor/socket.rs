//! The socket a connection's tungstenite state machine reads and writes: a mio `TcpStream`
//! whose writes can be held back.
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

use std::io::{self, ErrorKind, Read, Write};

use mio::net::TcpStream;

/// `S` is a `TcpStream` in the gateway; the fuzzing harness (`harness.rs`) puts an in-memory
/// pipe there. Generic, so the TCP path pays nothing for it.
pub(crate) struct Socket<S = TcpStream> {
    stream: S,
    held: bool,
    /// The last read was short and no readable event has come since.
    drained: bool,
}

impl<S> Socket<S> {
    /// Wraps `stream` with writes held.
    pub(crate) fn held(stream: S) -> Socket<S> {
        Socket { stream, held: true, drained: false }
    }

    pub(crate) fn is_held(&self) -> bool {
        self.held
    }

    pub(crate) fn release(&mut self) {
        self.held = false;
    }

    /// The reactor got a readable event (or must look anyway): the next read asks the kernel.
    pub(crate) fn readable(&mut self) {
        self.drained = false;
    }
}

impl<S: Read> Read for Socket<S> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.drained {
            return Err(ErrorKind::WouldBlock.into());
        }
        let n = self.stream.read(buf)?;
        self.drained = n > 0 && n < buf.len();
        Ok(n)
    }
}

impl<S: Write> Write for Socket<S> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.held {
            return Err(ErrorKind::WouldBlock.into());
        }
        self.stream.write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        if self.held {
            return Err(ErrorKind::WouldBlock.into());
        }
        self.stream.flush()
    }
}
