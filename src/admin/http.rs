//! Just enough HTTP/1.1 for the admin API: read one request (head and `Content-Length` body,
//! both bounded) from a socket under a deadline, write one response, close.
//!
//! Owns the wire format and its limits. It must not know any route or touch the gateway. Every
//! read is bounded in bytes and in time ([`Deadline`]), so a silent or dribbling client holds
//! the admin thread for at most [`CONN_DEADLINE`] and cannot hold up a shutdown for long.

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, Ordering::Acquire};
use std::time::{Duration, Instant};

/// Largest request head (request line and headers) accepted; past it: 431.
pub(crate) const MAX_HEAD: usize = 16 * 1024;
/// Largest request body accepted; past it: 413 (the body is not read).
pub(crate) const MAX_BODY: usize = 1 << 20;
/// Time one connection may take from accept to the end of its request.
pub(crate) const CONN_DEADLINE: Duration = Duration::from_secs(3);
/// Longest wait for the client to close after the response.
const LINGER: Duration = Duration::from_millis(250);
/// How often a blocked read looks at the stop flag.
const STOP_CHECK: Duration = Duration::from_millis(50);

/// One parsed request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Request {
    /// `GET`, `POST`, ... as sent.
    pub(crate) method: String,
    /// The path, without the query.
    pub(crate) path: String,
    /// The raw query string after `?` (empty when none).
    pub(crate) query: String,
    /// Header names lower-cased, values trimmed.
    pub(crate) headers: Vec<(String, String)>,
    /// The body (at most [`MAX_BODY`] bytes).
    pub(crate) body: Vec<u8>,
}

impl Request {
    /// The first header called `name` (lower-case).
    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }
}

/// Why no request came out of a connection.
#[derive(Debug)]
pub(crate) enum Refusal {
    /// Answer with this status and message, then close.
    Answer(u16, String),
    /// The peer went away, timed out, or the gateway is stopping: just close.
    Drop(io::Error),
}

impl From<io::Error> for Refusal {
    fn from(e: io::Error) -> Refusal {
        Refusal::Drop(e)
    }
}

fn answer(status: u16, msg: impl Into<String>) -> Refusal {
    Refusal::Answer(status, msg.into())
}

/// Reads one request from `s`. With `Expect: 100-continue` and an acceptable length it writes
/// the interim `100 Continue` before reading the body.
pub(crate) fn read_request<S: Read + Write>(s: &mut S) -> Result<Request, Refusal> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(i) = find(&buf, b"\r\n\r\n") {
            break i;
        }
        if buf.len() > MAX_HEAD {
            return Err(answer(431, format!("request head larger than {MAX_HEAD} bytes")));
        }
        let n = s.read(&mut chunk)?;
        if n == 0 {
            return Err(Refusal::Drop(io::ErrorKind::UnexpectedEof.into()));
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    if head_end > MAX_HEAD {
        return Err(answer(431, format!("request head larger than {MAX_HEAD} bytes")));
    }
    let head = std::str::from_utf8(&buf[..head_end]).map_err(|_| answer(400, "request head is not UTF-8"))?;
    let mut lines = head.split("\r\n");
    let request_line = lines.next().unwrap_or_default();
    let mut parts = request_line.split(' ');
    let (Some(method), Some(target), Some(version), None) = (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(answer(400, "malformed request line"));
    };
    if !version.starts_with("HTTP/1.") || method.is_empty() || !target.starts_with('/') {
        return Err(answer(400, "malformed request line"));
    }
    let mut headers = Vec::new();
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            return Err(answer(400, "malformed header line"));
        };
        headers.push((name.trim().to_ascii_lowercase(), value.trim().to_owned()));
    }
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let mut req = Request {
        method: method.to_owned(),
        path: path.to_owned(),
        query: query.to_owned(),
        headers,
        body: Vec::new(),
    };
    if req.header("transfer-encoding").is_some() {
        return Err(answer(411, "send the body with Content-Length, not Transfer-Encoding"));
    }
    if req.headers.iter().filter(|(k, _)| k == "content-length").count() > 1 {
        return Err(answer(400, "more than one Content-Length"));
    }
    let len = match req.header("content-length") {
        None => 0,
        Some(v) if !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()) => {
            v.parse::<u64>().map_err(|_| answer(413, format!("Content-Length {v} is too large")))?
        }
        Some(v) => return Err(answer(400, format!("bad Content-Length {v:?}"))),
    };
    if len > MAX_BODY as u64 {
        return Err(answer(413, format!("request body larger than {MAX_BODY} bytes")));
    }
    let len = len as usize; // ≤ MAX_BODY
    let mut body = buf.split_off(head_end + 4);
    if body.len() < len && req.header("expect").is_some_and(|v| v.eq_ignore_ascii_case("100-continue")) {
        s.write_all(b"HTTP/1.1 100 Continue\r\n\r\n")?;
        s.flush()?;
    }
    while body.len() < len {
        let n = s.read(&mut chunk)?;
        if n == 0 {
            return Err(Refusal::Drop(io::ErrorKind::UnexpectedEof.into()));
        }
        body.extend_from_slice(&chunk[..n]);
    }
    body.truncate(len); // no pipelining: anything after the body is ignored
    req.body = body;
    Ok(req)
}

/// One response: status, content type, body, and optional extra headers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Response {
    pub(crate) status: u16,
    pub(crate) content_type: &'static str,
    pub(crate) body: String,
    pub(crate) headers: Vec<(&'static str, String)>,
}

impl Response {
    /// The bytes on the wire, `Connection: close` included.
    pub(crate) fn to_bytes(&self) -> Vec<u8> {
        let mut out = format!(
            "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: close\r\nCache-Control: no-store\r\n",
            self.status,
            reason(self.status),
            self.content_type,
            self.body.len()
        );
        for (k, v) in &self.headers {
            out.push_str(&format!("{k}: {v}\r\n"));
        }
        out.push_str("\r\n");
        let mut bytes = out.into_bytes();
        bytes.extend_from_slice(self.body.as_bytes());
        bytes
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        404 => "Not Found",
        405 => "Method Not Allowed",
        411 => "Length Required",
        413 => "Content Too Large",
        415 => "Unsupported Media Type",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "Unknown",
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// A socket whose reads and writes give up at a deadline, or soon after `stop` is set.
pub(crate) struct Deadline<'a> {
    pub(crate) stream: TcpStream,
    pub(crate) deadline: Instant,
    pub(crate) stop: &'a AtomicBool,
}

impl Deadline<'_> {
    fn slice(&self) -> io::Result<Duration> {
        if self.stop.load(Acquire) {
            return Err(io::Error::other("the gateway is shutting down"));
        }
        let left = self.deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::ErrorKind::TimedOut.into());
        }
        Ok(left.min(STOP_CHECK))
    }

    /// After the response: stop writing, then read and discard what the client still sends
    /// (an unread body would turn our close into a reset that can destroy the response in
    /// flight) until it closes, the deadline passes or a few MiB have gone.
    pub(crate) fn linger(&mut self) {
        let _ = self.stream.shutdown(std::net::Shutdown::Write);
        self.deadline = self.deadline.min(Instant::now() + LINGER);
        let mut sink = [0u8; 16 * 1024];
        let mut budget = 4 * MAX_BODY;
        while budget > 0 {
            match self.read(&mut sink) {
                Ok(0) | Err(_) => return,
                Ok(n) => budget = budget.saturating_sub(n),
            }
        }
    }
}

impl Read for Deadline<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            self.stream.set_read_timeout(Some(self.slice()?))?;
            match self.stream.read(buf) {
                Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => continue,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                other => return other,
            }
        }
    }
}

impl Write for Deadline<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        loop {
            self.stream.set_write_timeout(Some(self.slice()?))?;
            match self.stream.write(buf) {
                Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => continue,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                other => return other,
            }
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        self.stream.flush()
    }
}

/// Decodes one `application/x-www-form-urlencoded` component (`%41` and `+`).
pub(crate) fn url_decode(s: &str) -> Option<String> {
    let mut out = Vec::with_capacity(s.len());
    let mut bytes = s.bytes();
    while let Some(b) = bytes.next() {
        match b {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = |c: Option<u8>| (c? as char).to_digit(16);
                let (hi, lo) = (hex(bytes.next())?, hex(bytes.next())?);
                out.push((hi * 16 + lo) as u8);
            }
            _ => out.push(b),
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    /// Reads from `input`, records what is written.
    struct Pipe {
        input: Cursor<Vec<u8>>,
        written: Vec<u8>,
    }

    impl Read for Pipe {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let n = buf.len().min(7); // small reads: splits everywhere
            self.input.read(&mut buf[..n])
        }
    }

    impl Write for Pipe {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.written.extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    fn read(raw: &[u8]) -> (Result<Request, Refusal>, Vec<u8>) {
        let mut p = Pipe { input: Cursor::new(raw.to_vec()), written: Vec::new() };
        (read_request(&mut p), p.written)
    }

    fn status(raw: &[u8]) -> u16 {
        match read(raw).0 {
            Err(Refusal::Answer(status, _)) => status,
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    #[test]
    fn parses_a_post_with_body_and_query() {
        let raw = b"POST /push?x=1 HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nAuthorization:  Bearer t \r\n\r\nhello";
        let req = read(raw).0.unwrap();
        assert_eq!((req.method.as_str(), req.path.as_str(), req.query.as_str()), ("POST", "/push", "x=1"));
        assert_eq!(req.header("authorization"), Some("Bearer t"));
        assert_eq!(req.body, b"hello");
    }

    #[test]
    fn expect_continue_gets_an_interim_response() {
        // Reads are 7 bytes: at most 6 of the 20-byte body come along with the head.
        let raw = b"POST /kick HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 20\r\n\r\n{\"userIDs\":[\"abcd\"]}";
        let (req, written) = read(raw);
        assert_eq!(req.unwrap().body, br#"{"userIDs":["abcd"]}"#);
        assert_eq!(written, b"HTTP/1.1 100 Continue\r\n\r\n");
    }

    #[test]
    fn refuses_what_it_cannot_bound_or_parse() {
        assert_eq!(status(format!("POST / HTTP/1.1\r\nContent-Length: {}\r\n\r\n", MAX_BODY + 1).as_bytes()), 413);
        assert_eq!(status(b"POST / HTTP/1.1\r\nContent-Length: 1000000000000000000000\r\n\r\n"), 413);
        assert_eq!(status(b"POST / HTTP/1.1\r\nContent-Length: +5\r\n\r\nabcde"), 400);
        assert_eq!(status(b"POST / HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\nabcde"), 400);
        assert_eq!(status(b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"), 411);
        assert_eq!(status(b"GET /\r\n\r\n"), 400);
        assert_eq!(status(b"GET / HTTP/1.1\r\nno colon\r\n\r\n"), 400);
        let mut big = b"GET / HTTP/1.1\r\nX: ".to_vec();
        big.extend(std::iter::repeat_n(b'a', MAX_HEAD + 10));
        assert_eq!(status(&big), 431);
        assert!(matches!(read(b"GET / HTTP/1.1\r\n").0, Err(Refusal::Drop(_))), "EOF mid-head");
        assert!(matches!(read(b"POST / HTTP/1.1\r\nContent-Length: 9\r\n\r\nab").0, Err(Refusal::Drop(_))));
    }

    #[test]
    fn response_bytes() {
        let r = Response {
            status: 405,
            content_type: "application/json",
            body: "{}".into(),
            headers: vec![("Allow", "GET".into())],
        };
        let text = String::from_utf8(r.to_bytes()).unwrap();
        assert!(text.starts_with("HTTP/1.1 405 Method Not Allowed\r\n"), "{text}");
        assert!(text.contains("Content-Length: 2\r\n") && text.contains("Allow: GET\r\n"), "{text}");
        assert!(text.ends_with("\r\n\r\n{}"), "{text}");
    }

    #[test]
    fn url_decoding() {
        assert_eq!(url_decode("a%20b+c%2Fd").as_deref(), Some("a b c/d"));
        assert_eq!(url_decode("%e4%b8%ad").as_deref(), Some("中"));
        assert_eq!(url_decode("%zz"), None);
        assert_eq!(url_decode("%4"), None);
        assert_eq!(url_decode("%ff"), None);
    }
}
