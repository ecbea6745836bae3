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
//! read, so nothing is missed (except a FIN or RST that came in the same edge as the data: after
//! one is reported, reads always reach the kernel); it saves the `recv` that would only say `EAGAIN`, one of the
//! three syscalls a relayed message costs. (tokio clears readiness on short reads likewise.)

use std::io::{self, ErrorKind, Read, Write};
use std::rc::Rc;

use mio::net::TcpStream;

pub(crate) struct Socket {
    /// Shared with the connection only while it answers a failed upgrade, which tungstenite
    /// reports after dropping this wrapper.
    stream: Rc<TcpStream>,
    held: bool,
    /// The last read was short and no readable event has come since.
    drained: bool,
    /// The peer's FIN or RST was reported: it may have come in the same edge as the data a
    /// short read just took, so every read asks the kernel from now on.
    hup: bool,
}

impl Socket {
    /// Wraps `stream` with writes held.
    pub(crate) fn held(stream: TcpStream) -> Socket {
        Socket { stream: Rc::new(stream), held: true, drained: false, hup: false }
    }

    /// The socket itself, to answer on after tungstenite gave up on the upgrade.
    pub(crate) fn stream(&self) -> Rc<TcpStream> {
        self.stream.clone()
    }

    /// Makes the coming close a reset (`SO_LINGER` 0): for a peer that let a deadline pass,
    /// so that no orphaned socket waits in FIN_WAIT for minutes with our unsent bytes.
    pub(crate) fn reset_on_close(&self) {
        let _ = socket2::SockRef::from(&*self.stream).set_linger(Some(std::time::Duration::ZERO));
    }

    /// Sends our FIN; reading goes on.
    pub(crate) fn shutdown_write(&self) {
        let _ = self.stream.shutdown(std::net::Shutdown::Write);
    }

    pub(crate) fn is_held(&self) -> bool {
        self.held
    }

    pub(crate) fn release(&mut self) {
        self.held = false;
    }

    /// The reactor got a readable event (or must look anyway): the next read asks the kernel.
    /// `hup`: the event also reported the peer's FIN or an error.
    pub(crate) fn readable(&mut self, hup: bool) {
        self.drained = false;
        self.hup |= hup;
    }
}

impl Read for Socket {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.drained {
            return Err(ErrorKind::WouldBlock.into());
        }
        let n = (&*self.stream).read(buf)?;
        self.drained = !self.hup && n > 0 && n < buf.len();
        Ok(n)
    }
}

impl Write for Socket {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.held {
            return Err(ErrorKind::WouldBlock.into());
        }
        (&*self.stream).write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        if self.held {
            return Err(ErrorKind::WouldBlock.into());
        }
        (&*self.stream).flush()
    }
}
