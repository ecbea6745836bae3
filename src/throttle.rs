//! Log lines that can repeat once per connection, throttled to one per second per call site.
//!
//! A flood (10k bogus clients, a wave of slow consumers) must not turn a reactor or the acceptor
//! into a stderr writer: the metrics count every event, the log says what happened and how many
//! similar lines it left out. Owns nothing but the per-call-site timestamps.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{SystemTime, UNIX_EPOCH};

/// One call site's state: the second it last logged in, and lines suppressed since.
pub(crate) struct Throttle {
    last_second: AtomicU64,
    suppressed: AtomicU64,
}

impl Throttle {
    pub(crate) const fn new() -> Throttle {
        Throttle { last_second: AtomicU64::new(0), suppressed: AtomicU64::new(0) }
    }

    /// `Some(n)` if this call may log (n lines were suppressed before it), `None` otherwise.
    pub(crate) fn admit(&self) -> Option<u64> {
        let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        let last = self.last_second.load(Relaxed);
        if now != last && self.last_second.compare_exchange(last, now, Relaxed, Relaxed).is_ok() {
            return Some(self.suppressed.swap(0, Relaxed));
        }
        self.suppressed.fetch_add(1, Relaxed);
        None
    }
}

/// `log!` at most once per second from this call site, noting how many lines it skipped.
macro_rules! log_throttled {
    ($level:expr, $($arg:tt)+) => {{
        static THROTTLE: $crate::throttle::Throttle = $crate::throttle::Throttle::new();
        if log::log_enabled!($level) {
            if let Some(skipped) = THROTTLE.admit() {
                if skipped == 0 {
                    log::log!($level, $($arg)+);
                } else {
                    log::log!($level, "{} ({skipped} similar lines suppressed)", format_args!($($arg)+));
                }
            }
        }
    }};
}
pub(crate) use log_throttled;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admits_once_per_second_and_counts_the_rest() {
        let t = Throttle::new();
        assert_eq!(t.admit(), Some(0));
        assert_eq!(t.admit(), None);
        assert_eq!(t.admit(), None);
        assert_eq!(t.suppressed.load(Relaxed), 2);
        t.last_second.store(1, Relaxed); // as if the second had turned
        assert_eq!(t.admit(), Some(2));
    }
}
