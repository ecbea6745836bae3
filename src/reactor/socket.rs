//! The socket a connection's tungstenite state machine reads and writes: a mio `TcpStream`
//! whose writes can be held back.
//!
//! Owns one trick: the upgrade's `101 Switching Protocols` is held (writes report `WouldBlock`)
//! from accept until the reactor releases it, so that the response leaves only after the token
//! was judged and the session is in the registry. A client whose upgrade completed is online,
//! and every kick its login causes has been ordered. Holding never blocks anything: the reactor
//! resumes the handshake itself when it releases the hold.

use std::io::{self, ErrorKind, Read, Write};

use mio::net::TcpStream;

pub(crate) struct Socket {
    stream: TcpStream,
    held: bool,
}

impl Socket {
    /// Wraps `stream` with writes held.
    pub(crate) fn held(stream: TcpStream) -> Socket {
        Socket { stream, held: true }
    }

    pub(crate) fn is_held(&self) -> bool {
        self.held
    }

    pub(crate) fn release(&mut self) {
        self.held = false;
    }
}

impl Read for Socket {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.stream.read(buf)
    }
}

impl Write for Socket {
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
