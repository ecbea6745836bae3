//! The binary's logger: simplelog formats each record, a bounded queue carries the line, one
//! thread writes it to stderr.
//!
//! A reactor that logs must never wait for stderr: a stalled pipe (a paused terminal, a log
//! shipper that stopped reading) would otherwise stall every thread that logs. Lines that find
//! the queue full are dropped and counted, and the writer says how many when it catches up.

use std::io::{self, Write};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{bounded, Sender};
use log::LevelFilter;

/// Lines that may wait for the writer thread.
const QUEUE: usize = 8192;

#[derive(Default)]
struct Counters {
    queued: AtomicU64,
    written: AtomicU64,
    dropped: AtomicU64,
}

/// What simplelog writes into: whole lines go to the queue with `try_send`.
struct QueueWriter {
    tx: Sender<Vec<u8>>,
    line: Vec<u8>,
    counters: Arc<Counters>,
}

impl Write for QueueWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.line.extend_from_slice(buf);
        while let Some(end) = self.line.iter().position(|&b| b == b'\n') {
            let rest = self.line.split_off(end + 1);
            let line = std::mem::replace(&mut self.line, rest);
            match self.tx.try_send(line) {
                Ok(()) => self.counters.queued.fetch_add(1, Relaxed),
                Err(_) => self.counters.dropped.fetch_add(1, Relaxed), // fallback: drop, count
            };
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Flushes queued lines (for up to a second) when dropped: hold it until the process exits.
pub struct Flush {
    counters: Arc<Counters>,
}

impl Flush {
    /// Waits until the writer has written every queued line, or a second has passed.
    pub fn now(&self) {
        let deadline = Instant::now() + Duration::from_secs(1);
        while self.counters.written.load(Relaxed) < self.counters.queued.load(Relaxed) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(2));
        }
    }
}

impl Drop for Flush {
    fn drop(&mut self) {
        self.now();
    }
}

/// Installs the logger at `level`.
pub fn init(level: LevelFilter) -> Flush {
    let counters = Arc::new(Counters::default());
    let (tx, rx) = bounded::<Vec<u8>>(QUEUE);
    let writer_counters = counters.clone();
    let spawned = std::thread::Builder::new().name("msggate-log".into()).spawn(move || {
        let mut stderr = io::stderr();
        let mut reported = 0;
        for line in rx.iter() {
            let dropped = writer_counters.dropped.load(Relaxed);
            if dropped > reported {
                let _ =
                    writeln!(stderr, "[msggate] {} log lines dropped: stderr was not keeping up", dropped - reported);
                reported = dropped;
            }
            let _ = stderr.write_all(&line);
            writer_counters.written.fetch_add(1, Relaxed);
        }
    });
    if let Err(e) = spawned {
        eprintln!("msggate: warning: cannot start the log writer thread: {e}; logging is off");
        return Flush { counters };
    }
    let config = simplelog::ConfigBuilder::new().set_time_format_rfc3339().build();
    let writer = QueueWriter { tx, line: Vec::new(), counters: counters.clone() };
    if let Err(e) = simplelog::WriteLogger::init(level, config, writer) {
        eprintln!("msggate: warning: cannot initialise logging: {e}");
    }
    Flush { counters }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn whole_lines_are_queued_and_overflow_is_counted_not_blocking() {
        let counters = Arc::new(Counters::default());
        let (tx, rx) = bounded(2);
        let mut w = QueueWriter { tx, line: Vec::new(), counters: counters.clone() };
        w.write_all(b"one\ntw").unwrap();
        w.write_all(b"o\nthree\nfour\n").unwrap(); // the queue holds two: the rest is dropped
        assert_eq!(rx.try_iter().collect::<Vec<_>>(), vec![b"one\n".to_vec(), b"two\n".to_vec()]);
        assert_eq!((counters.queued.load(Relaxed), counters.dropped.load(Relaxed)), (2, 2));
    }
}
