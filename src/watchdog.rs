//! The stall watchdog: progress beacons that threads publish, and a thread that reads them.
//!
//! Owns [`Beacon`] (the watched thread's side: a counter bumped once per loop turn, what the
//! thread is doing, the length of its private backlog), [`Watched`] (the watchdog's side: a
//! beacon plus a way to read the thread's queue from outside), the [`Health`] snapshot and the
//! [`Watchdog`] thread that reports a thread with queued work and no progress for
//! `stall_after`, once per episode.
//!
//! It must not block anything it watches: a beacon is relaxed atomics only, queue lengths are
//! read with `len()`, and the only lock here (the watchdog's own bookkeeping) is never taken by
//! a watched thread. It sends into no queue but its own stop channel.

use std::fmt;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{bounded, RecvTimeoutError, Sender};
use parking_lot::Mutex;

use crate::error::{Error, Result};

/// What a watched thread publishes. Atomics only: publishing never blocks or allocates.
#[derive(Debug)]
pub struct Beacon {
    progress: AtomicU64,
    doing: AtomicUsize,
    backlog: AtomicUsize,
    labels: &'static [&'static str],
}

impl Beacon {
    /// A beacon whose thread describes what it does with one of `labels` (by index; the
    /// first label is the initial one).
    pub fn new(labels: &'static [&'static str]) -> Beacon {
        Beacon { progress: AtomicU64::new(0), doing: AtomicUsize::new(0), backlog: AtomicUsize::new(0), labels }
    }

    /// One loop turn (or one event) done.
    #[inline]
    pub fn turn(&self) {
        self.progress.fetch_add(1, Relaxed);
    }

    /// The thread now does `labels[what]`.
    #[inline]
    pub fn doing(&self, what: usize) {
        self.doing.store(what, Relaxed);
    }

    /// Work the thread holds privately (events waiting for room in another queue).
    #[inline]
    pub fn backlog(&self, len: usize) {
        self.backlog.store(len, Relaxed);
    }

    /// The thread has ended (or is about to): it holds no work and cannot stall any more.
    pub fn exit(&self) {
        self.backlog.store(0, Relaxed);
        self.doing.store(EXITED, Relaxed);
    }

    /// Turns completed so far.
    pub fn progress(&self) -> u64 {
        self.progress.load(Relaxed)
    }

    fn has_exited(&self) -> bool {
        self.doing.load(Relaxed) == EXITED
    }

    fn label(&self) -> &'static str {
        match self.doing.load(Relaxed) {
            EXITED => "exited",
            i => self.labels.get(i).copied().unwrap_or("?"),
        }
    }
}

/// `Beacon::doing` of a thread that has ended.
const EXITED: usize = usize::MAX;

/// A queue's fill level, read from outside its consumer.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct QueueDepth {
    /// Items waiting.
    pub len: usize,
    /// The queue's capacity.
    pub capacity: usize,
}

type Probe<T> = Box<dyn Fn() -> T + Send + Sync>;

/// One watched thread, as the watchdog sees it.
pub struct Watched {
    name: String,
    beacon: Arc<Beacon>,
    queue: Probe<QueueDepth>,
    fallbacks: Probe<u64>,
    turns_every: Option<Duration>,
}

impl Watched {
    /// Watches the thread publishing `beacon`, whose input queue `queue` reads.
    pub fn new(
        name: impl Into<String>,
        beacon: Arc<Beacon>,
        queue: impl Fn() -> QueueDepth + Send + Sync + 'static,
    ) -> Watched {
        Watched { name: name.into(), beacon, queue: Box::new(queue), fallbacks: Box::new(|| 0), turns_every: None }
    }

    /// How many times producers found this thread's queue full and took their fallback.
    pub fn fallbacks(mut self, count: impl Fn() -> u64 + Send + Sync + 'static) -> Watched {
        self.fallbacks = Box::new(count);
        self
    }

    /// The thread turns at least once per `period` even when idle (a poll with a timeout), so
    /// no progress for `max(stall_after, 2 × period)` is a stall whatever its queue shows: it
    /// catches a thread stuck on work that no queue length reveals.
    pub fn turns_every(mut self, period: Duration) -> Watched {
        self.turns_every = Some(period);
        self
    }
}

impl fmt::Debug for Watched {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Watched").field("name", &self.name).field("beacon", &self.beacon).finish_non_exhaustive()
    }
}

/// One thread's state in a [`Health`] snapshot.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ThreadHealth {
    /// The thread's name.
    pub name: String,
    /// Loop turns completed.
    pub progress: u64,
    /// What it last said it was doing.
    pub doing: &'static str,
    /// Its input queue.
    pub queue: QueueDepth,
    /// Work it holds privately, waiting for room elsewhere.
    pub backlog: usize,
    /// Times producers found its queue full and took their fallback.
    pub fallbacks: u64,
    /// Time since its progress counter last moved (as seen by the watchdog, to within one
    /// check interval).
    pub since_progress: Duration,
    /// Queued work and no progress for at least `stall_after`.
    pub stalled: bool,
}

/// Every watched thread's state at one moment.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Health {
    /// One entry per watched thread, in the order they were watched.
    pub threads: Vec<ThreadHealth>,
}

impl Health {
    /// The threads that are stalled now.
    pub fn stalled(&self) -> impl Iterator<Item = &ThreadHealth> {
        self.threads.iter().filter(|t| t.stalled)
    }
}

impl fmt::Display for Health {
    /// A table, one line per thread.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let width = self.threads.iter().map(|t| t.name.len()).max().unwrap_or(0).max(6);
        writeln!(
            f,
            "  {:width$}  {:>10}  {:>13}  {:>7}  {:>9}  {:>13}  doing",
            "thread", "progress", "queue", "backlog", "fallbacks", "last progress"
        )?;
        for t in &self.threads {
            let queue = format!("{}/{}", t.queue.len, t.queue.capacity);
            let age = format!("{:.1}s ago", t.since_progress.as_secs_f64());
            let flag = if t.stalled { "  <- STALLED" } else { "" };
            writeln!(
                f,
                "  {:width$}  {:>10}  {queue:>13}  {:>7}  {:>9}  {age:>13}  {}{flag}",
                t.name, t.progress, t.backlog, t.fallbacks, t.doing
            )?;
        }
        Ok(())
    }
}

/// A newly detected stall: which thread, for how long, and everyone's state.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct StallReport {
    /// The stalled thread.
    pub thread: String,
    /// What it said it was doing.
    pub doing: &'static str,
    /// How long it has had work and made no progress.
    pub stalled_for: Duration,
    /// Every watched thread, the stalled one included.
    pub health: Health,
}

impl fmt::Display for StallReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "STALL: thread {} has had queued work and made no progress for {:.1}s (doing: {}); every watched thread:",
            self.thread,
            self.stalled_for.as_secs_f64(),
            self.doing
        )?;
        write!(f, "{}", self.health)
    }
}

/// The watchdog's bookkeeping for one thread.
#[derive(Debug, Clone, Copy)]
struct Track {
    progress: u64,
    changed: Instant,
    /// First check that saw work and no progress since the last change.
    stuck_since: Option<Instant>,
    reported: bool,
}

/// Watched threads and what the watchdog has seen of them. Pure: [`Monitor::check`] takes the
/// time as an argument, so the detection rule is unit-tested without threads or clocks.
#[derive(Debug)]
pub struct Monitor {
    watched: Vec<Watched>,
    stall_after: Duration,
    track: Mutex<Vec<Track>>,
}

impl Monitor {
    /// Watches `watched`; a thread with work and no progress for `stall_after` is stalled.
    pub fn new(watched: Vec<Watched>, stall_after: Duration) -> Monitor {
        let now = Instant::now();
        let track = watched
            .iter()
            .map(|w| Track { progress: w.beacon.progress(), changed: now, stuck_since: None, reported: false })
            .collect();
        Monitor { watched, stall_after, track: Mutex::new(track) }
    }

    /// How often the watchdog thread checks: a fifth of `stall_after`, between 10 ms and 1 s.
    pub fn interval(&self) -> Duration {
        (self.stall_after / 5).clamp(Duration::from_millis(10), Duration::from_secs(1))
    }

    /// Looks at every thread at time `now` and returns the stalls not reported before. A stall
    /// ends (and may be reported again later) when its thread makes progress.
    pub fn check(&self, now: Instant) -> Vec<StallReport> {
        let mut track = self.track.lock();
        let mut fresh = Vec::new();
        let mut health = Health::default();
        for (w, t) in self.watched.iter().zip(track.iter_mut()) {
            let progress = w.beacon.progress();
            let queue = (w.queue)();
            let backlog = w.beacon.backlog.load(Relaxed);
            if progress != t.progress {
                if t.reported {
                    log::warn!("{}: progressing again after a stall", w.name);
                }
                *t = Track { progress, changed: now, stuck_since: None, reported: false };
            } else if (queue.len > 0 || backlog > 0) && !w.beacon.has_exited() {
                t.stuck_since.get_or_insert(now);
            } else {
                t.stuck_since = None;
            }
            let stalled_for = self.stalled_for(w, t, now);
            if stalled_for.is_some() && !t.reported {
                t.reported = true;
                fresh.push((health.threads.len(), stalled_for.unwrap_or_default()));
            }
            health.threads.push(self.row(w, t, now, queue, stalled_for.is_some()));
        }
        fresh
            .into_iter()
            .map(|(i, stalled_for)| {
                let t = &health.threads[i];
                StallReport { thread: t.name.clone(), doing: t.doing, stalled_for, health: health.clone() }
            })
            .collect()
    }

    /// How long `w` has been stalled, if it is: work and no progress for `stall_after`, or,
    /// for a thread that turns periodically, no progress at all for long enough.
    fn stalled_for(&self, w: &Watched, t: &Track, now: Instant) -> Option<Duration> {
        if w.beacon.has_exited() || w.beacon.progress() != t.progress {
            return None;
        }
        let with_work = t.stuck_since.map(|s| now.saturating_duration_since(s)).filter(|d| *d >= self.stall_after);
        let silent = now.saturating_duration_since(t.changed);
        let silent = w.turns_every.filter(|p| silent >= self.stall_after.max(*p * 2)).map(|_| silent);
        with_work.max(silent)
    }

    fn row(&self, w: &Watched, t: &Track, now: Instant, queue: QueueDepth, stalled: bool) -> ThreadHealth {
        ThreadHealth {
            name: w.name.clone(),
            progress: w.beacon.progress(),
            doing: w.beacon.label(),
            queue,
            backlog: w.beacon.backlog.load(Relaxed),
            fallbacks: (w.fallbacks)(),
            since_progress: now.saturating_duration_since(t.changed),
            stalled,
        }
    }

    /// Every thread's state now, as of the last check.
    pub fn health(&self) -> Health {
        self.snapshot(Instant::now())
    }

    fn snapshot(&self, now: Instant) -> Health {
        let track = self.track.lock();
        let threads = self
            .watched
            .iter()
            .zip(track.iter())
            .map(|(w, t)| self.row(w, t, now, (w.queue)(), self.stalled_for(w, t, now).is_some()))
            .collect();
        Health { threads }
    }
}

/// The watchdog thread. Dropping it stops and joins the thread.
pub struct Watchdog {
    monitor: Arc<Monitor>,
    stop: Option<Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Watchdog {
    /// Starts a thread named `name` that checks `monitor` every [`Monitor::interval`] and calls
    /// `on_stall` once for each newly detected stall.
    pub fn spawn(
        monitor: Arc<Monitor>,
        name: impl Into<String>,
        mut on_stall: impl FnMut(&StallReport) + Send + 'static,
    ) -> Result<Watchdog> {
        let (stop, stopped) = bounded::<()>(1);
        let m = monitor.clone();
        let thread = std::thread::Builder::new()
            .name(name.into())
            .spawn(move || {
                let interval = m.interval();
                while let Err(RecvTimeoutError::Timeout) = stopped.recv_timeout(interval) {
                    for report in m.check(Instant::now()) {
                        on_stall(&report);
                    }
                }
            })
            .map_err(Error::io("spawning the watchdog thread"))?;
        Ok(Watchdog { monitor, stop: Some(stop), thread: Some(thread) })
    }

    /// Every watched thread's state now.
    pub fn health(&self) -> Health {
        self.monitor.health()
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(thread) = self.thread.take() {
            if thread.join().is_err() {
                log::error!("the watchdog thread panicked");
            }
        }
    }
}

impl fmt::Debug for Watchdog {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Watchdog").field("monitor", &self.monitor).finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    const LABELS: &[&str] = &["waiting", "working"];

    fn one(queued: Arc<AtomicUsize>) -> (Arc<Beacon>, Monitor) {
        let beacon = Arc::new(Beacon::new(LABELS));
        let q = queued.clone();
        let w = Watched::new("t", beacon.clone(), move || QueueDepth { len: q.load(Relaxed), capacity: 4 });
        (beacon, Monitor::new(vec![w], Duration::from_secs(5)))
    }

    #[test]
    fn idle_thread_without_work_is_never_stalled() {
        let (_beacon, m) = one(Arc::new(AtomicUsize::new(0)));
        let t0 = Instant::now();
        assert!(m.check(t0 + Duration::from_secs(60)).is_empty());
        assert!(m.check(t0 + Duration::from_secs(600)).is_empty());
    }

    #[test]
    fn work_without_progress_is_reported_once_after_stall_after() {
        let queued = Arc::new(AtomicUsize::new(1));
        let (beacon, m) = one(queued);
        beacon.doing(1);
        let t0 = Instant::now();
        assert!(m.check(t0).is_empty(), "the clock starts when work is first seen");
        assert!(m.check(t0 + Duration::from_secs(4)).is_empty());
        let reports = m.check(t0 + Duration::from_secs(5));
        assert_eq!(reports.len(), 1);
        let r = &reports[0];
        assert_eq!((r.thread.as_str(), r.doing, r.stalled_for), ("t", "working", Duration::from_secs(5)));
        assert!(r.health.threads[0].stalled && r.health.threads[0].queue.len == 1);
        assert!(r.to_string().contains("STALLED"), "{r}");
        assert!(m.check(t0 + Duration::from_secs(9)).is_empty(), "reported once per episode");
    }

    #[test]
    fn long_idle_then_work_is_not_a_stall_at_once() {
        let queued = Arc::new(AtomicUsize::new(0));
        let (_beacon, m) = one(queued.clone());
        let t0 = Instant::now();
        assert!(m.check(t0 + Duration::from_secs(100)).is_empty());
        queued.store(3, Relaxed);
        assert!(m.check(t0 + Duration::from_secs(101)).is_empty(), "work just arrived");
        assert_eq!(m.check(t0 + Duration::from_secs(106)).len(), 1);
    }

    #[test]
    fn progress_ends_the_episode_and_a_new_one_is_reported_again() {
        let queued = Arc::new(AtomicUsize::new(1));
        let (beacon, m) = one(queued);
        let t0 = Instant::now();
        m.check(t0);
        assert_eq!(m.check(t0 + Duration::from_secs(5)).len(), 1);
        beacon.turn();
        assert!(m.check(t0 + Duration::from_secs(6)).is_empty());
        assert!(!m.snapshot(t0 + Duration::from_secs(6)).threads[0].stalled);
        assert!(m.check(t0 + Duration::from_secs(7)).is_empty());
        assert_eq!(m.check(t0 + Duration::from_secs(12)).len(), 1);
    }

    #[test]
    fn a_private_backlog_counts_as_work() {
        let (beacon, m) = one(Arc::new(AtomicUsize::new(0)));
        beacon.backlog(2);
        let t0 = Instant::now();
        m.check(t0);
        assert_eq!(m.check(t0 + Duration::from_secs(5)).len(), 1);
    }

    #[test]
    fn an_exited_thread_is_never_stalled_whatever_its_last_backlog() {
        let queued = Arc::new(AtomicUsize::new(2));
        let (beacon, m) = one(queued);
        beacon.backlog(5);
        beacon.exit();
        let t0 = Instant::now();
        m.check(t0);
        assert!(m.check(t0 + Duration::from_secs(60)).is_empty());
        let h = m.snapshot(t0 + Duration::from_secs(60));
        assert_eq!((h.threads[0].doing, h.threads[0].backlog, h.threads[0].stalled), ("exited", 0, false));
    }

    #[test]
    fn a_periodic_thread_silent_for_long_is_stalled_even_with_empty_queues() {
        let beacon = Arc::new(Beacon::new(LABELS));
        let w = Watched::new("reactor", beacon.clone(), QueueDepth::default).turns_every(Duration::from_secs(4));
        let m = Monitor::new(vec![w], Duration::from_secs(5));
        let t0 = Instant::now();
        beacon.turn();
        m.check(t0);
        assert!(m.check(t0 + Duration::from_secs(7)).is_empty(), "within 2 x its period");
        let r = m.check(t0 + Duration::from_secs(8));
        assert_eq!(r.len(), 1, "silent for 2 x its period");
        assert_eq!(r[0].stalled_for, Duration::from_secs(8));
        beacon.turn();
        assert!(m.check(t0 + Duration::from_secs(9)).is_empty());
        assert!(!m.snapshot(t0 + Duration::from_secs(9)).threads[0].stalled);
    }

    #[test]
    fn watchdog_thread_reports_and_stops_on_drop() {
        let beacon = Arc::new(Beacon::new(LABELS));
        let w = Watched::new("stuck", beacon, || QueueDepth { len: 1, capacity: 1 }).fallbacks(|| 7);
        let monitor = Arc::new(Monitor::new(vec![w], Duration::from_millis(50)));
        let (tx, rx) = bounded(4);
        let dog = Watchdog::spawn(monitor, "test-watchdog", move |r| {
            let _ = tx.try_send(r.clone());
        })
        .unwrap();
        let report = rx.recv_timeout(Duration::from_secs(10)).expect("a stall report");
        assert_eq!(report.thread, "stuck");
        assert_eq!(report.health.threads[0].fallbacks, 7);
        assert!(dog.health().threads[0].stalled);
        drop(dog); // joins: the test would hang here if the thread did not stop
        let after = rx.recv_timeout(Duration::from_secs(1));
        assert_eq!(after, Err(RecvTimeoutError::Disconnected), "one report per episode, then the thread ended");
    }
}
