//! The run's timeline, shared by every scenario: spawn the client threads, ramp (open what the
//! scenario holds), the measurement window (`--duration`), the drain (at most
//! `--stall-timeout` + [`DRAIN_MARGIN`]), stop (at most [`CLOSE_GRACE`] plus the joins); take
//! the /proc samples at the phase boundaries; show the live progress line; merge what the
//! threads measured.
//!
//! Scenarios send nothing after the window (a churn cycle not sent yet when it ends is closed,
//! not counted), so every message was sent before the drain began, and the drain, longer than
//! `--stall-timeout`, lets each one reach its own deadline before anything is counted lost.
//!
//! Owns [`Shared`] (the phase and the live counters every thread updates) and the bounds that
//! make a run end whatever the server does. Must not know any scenario's protocol logic.

use std::sync::atomic::{AtomicI64, AtomicU64, AtomicU8, AtomicUsize, Ordering::Relaxed};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use super::client::{self, Driver, Net, Target};
use super::proc::Sample;
use super::report::{ServerSamples, Tally};
use super::Failure;

/// How long threads get to close their connections after the drain.
pub const CLOSE_GRACE: Duration = Duration::from_secs(1);

/// The drain lasts at most `--stall-timeout` plus this: time for the threads (which check their
/// deadlines every 20-50 ms) to declare what was sent just before the window ended.
pub const DRAIN_MARGIN: Duration = Duration::from_millis(300);

/// Where the run is; every thread reads it each turn.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Phase {
    /// Opening what the scenario holds; nothing is measured but handshakes.
    Ramp = 0,
    /// The measurement window.
    Run = 1,
    /// No new work; waiting for what is outstanding.
    Drain = 2,
    /// Close everything and return.
    Stop = 3,
}

/// State shared by the client threads and the main thread.
pub struct Shared {
    phase: AtomicU8,
    /// Client threads in the run.
    pub threads: usize,
    start: Instant,
    /// Threads done with the ramp.
    pub ready: AtomicUsize,
    /// Threads with nothing outstanding in the drain.
    pub drained: AtomicUsize,
    /// Sessions that could not be opened during the ramp.
    pub ramp_failed: AtomicU64,
    /// Sessions the scenario holds for the whole run (relay's, idle's and fanout's sessions,
    /// churn's listeners) that are open now; the scenarios keep it.
    pub held: AtomicI64,
    // Live counters for the progress line (the reports use the threads' tallies).
    pub open: AtomicI64,
    pub handshakes: AtomicU64,
    pub errors: AtomicU64,
    pub stalls: AtomicU64,
    pub sent: AtomicU64,
    pub acks: AtomicU64,
    pub pushes: AtomicU64,
    pub cycles: AtomicU64,
    pub kicks: AtomicU64,
    /// Acks awaited (relay, fanout): sent minus acked minus declared lost.
    pub acks_outstanding: AtomicI64,
    /// Pushes the sent messages should produce, and the distinct ones received.
    pub pushes_expected: AtomicU64,
    pub pushes_received: AtomicU64,
}

impl Shared {
    pub fn new(threads: usize) -> Shared {
        Shared {
            phase: AtomicU8::new(Phase::Ramp as u8),
            threads,
            start: Instant::now(),
            ready: AtomicUsize::new(0),
            drained: AtomicUsize::new(0),
            ramp_failed: AtomicU64::new(0),
            held: AtomicI64::new(0),
            open: AtomicI64::new(0),
            handshakes: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            stalls: AtomicU64::new(0),
            sent: AtomicU64::new(0),
            acks: AtomicU64::new(0),
            pushes: AtomicU64::new(0),
            cycles: AtomicU64::new(0),
            kicks: AtomicU64::new(0),
            acks_outstanding: AtomicI64::new(0),
            pushes_expected: AtomicU64::new(0),
            pushes_received: AtomicU64::new(0),
        }
    }

    pub fn phase(&self) -> Phase {
        match self.phase.load(Relaxed) {
            0 => Phase::Ramp,
            1 => Phase::Run,
            2 => Phase::Drain,
            _ => Phase::Stop,
        }
    }

    fn set_phase(&self, p: Phase) {
        self.phase.store(p as u8, Relaxed);
    }

    /// Milliseconds since the run started.
    pub fn ms_since_start(&self, now: Instant) -> u64 {
        now.saturating_duration_since(self.start).as_millis() as u64
    }

    /// Nanoseconds since the run started: the clock carried in clientMsgIDs.
    pub fn now_ns(&self) -> u64 {
        self.start.elapsed().as_nanos() as u64
    }

    fn nothing_outstanding(&self) -> bool {
        self.acks_outstanding.load(Relaxed) <= 0
            && self.pushes_received.load(Relaxed) >= self.pushes_expected.load(Relaxed)
    }
}

/// The run's settings every scenario shares.
pub struct Settings {
    pub scenario: &'static str,
    pub target: Arc<Target>,
    pub threads: usize,
    pub duration: Duration,
    pub stall: Duration,
    pub ramp_timeout: Duration,
    pub server_pid: Option<u32>,
    /// Connections opening at once during the ramp, over all threads.
    pub ramp_concurrency: usize,
}

/// What a run produced, before the scenario turns it into a report.
pub struct Outcome<X> {
    pub tally: Tally,
    pub extras: Vec<X>,
    pub ramp_s: f64,
    pub window_s: f64,
    pub drain_s: f64,
    pub server: Option<ServerSamples>,
    pub client_cpu_us: Option<u64>,
    /// Held sessions ([`Shared::held`]) open when the ramp ended (when `server.ramp_end` was taken).
    pub held_at_ramp_end: u64,
    /// Held sessions open when the window ended (when `server.window_end` was taken).
    pub held_at_window_end: u64,
    /// The drain ended with work outstanding.
    pub drain_timed_out: bool,
    /// When the stop began, ns since the run started: pushes not read by then are lost if they
    /// were sent at least `--stall-timeout` earlier.
    pub stop_ns: u64,
    pub failures: Vec<String>,
}

/// A scenario's per-thread driver that can also hand back what it collected.
pub trait Scenario: Driver + Send + 'static {
    type Extra: Send + 'static;
    /// Called once the thread's loop ended: count what is still outstanding as lost when it was
    /// sent at least `--stall-timeout` ago (with a stall record), else as the
    /// `outstanding_at_stop` error (the run stopped before its deadline: not a loss).
    fn finish(self, net: &mut Net) -> Self::Extra;
}

/// Runs the drivers (one per thread) through ramp, window, drain and stop.
pub fn run<S: Scenario>(
    settings: &Settings,
    shared: Arc<Shared>,
    drivers: Vec<S>,
) -> Result<Outcome<S::Extra>, Failure> {
    let threads = drivers.len();
    let pid = settings.server_pid;
    let before = Sample::take(pid);
    let (done_tx, done_rx) = mpsc::channel::<()>();
    let mut handles = Vec::with_capacity(threads);
    for (i, mut driver) in drivers.into_iter().enumerate() {
        let mut net = Net::new(settings.target.clone(), shared.clone(), settings.stall, i)
            .map_err(|e| Failure::Runtime(format!("cannot create a mio Poll: {e}")))?;
        let done_tx = done_tx.clone();
        let h = std::thread::Builder::new()
            .name(format!("stress-{i}"))
            .spawn(move || {
                let result = client::run(&mut net, &mut driver);
                let extra = driver.finish(&mut net);
                net.drop_all();
                let _ = done_tx.send(());
                result.map(|()| (net.tally, extra)).map_err(|e| format!("client thread {i}: poll failed: {e}"))
            })
            .map_err(|e| Failure::Runtime(format!("cannot start a client thread: {e}")))?;
        handles.push(h);
    }
    drop(done_tx);

    let progress = Progress::new(settings.scenario, shared.clone());
    let mut failures = Vec::new();
    let mut finished = 0usize;
    // Waits up to `d` for a thread to finish; counts it.
    let tick = |d: Duration, finished: &mut usize| {
        if done_rx.recv_timeout(d).is_ok() {
            *finished += 1;
        }
    };

    // Ramp.
    let ramp_start = Instant::now();
    while shared.ready.load(Relaxed) < threads && finished < threads {
        if ramp_start.elapsed() >= settings.ramp_timeout {
            failures.push(format!(
                "the ramp did not finish within --ramp-timeout {}: {} sessions open",
                humantime::format_duration(settings.ramp_timeout),
                shared.open.load(Relaxed)
            ));
            break;
        }
        progress.update("ramp");
        tick(Duration::from_millis(100), &mut finished);
    }
    let ramp_s = ramp_start.elapsed().as_secs_f64();
    let failed = shared.ramp_failed.load(Relaxed);
    if failed > 0 {
        failures.push(format!("{failed} sessions could not be opened during the ramp; nothing was measured"));
    }
    let ramp_end = Sample::take(pid);
    let held_at_ramp_end = shared.held.load(Relaxed).max(0) as u64;
    let client_start = Sample::take(None);

    // Window.
    let mut window_s = 0.0;
    let mut drain_s = 0.0;
    let mut window_end = ramp_end;
    let mut client_cpu_us = None;
    let mut held_at_window_end = held_at_ramp_end;
    let mut drain_timed_out = false;
    if failures.is_empty() && finished < threads {
        shared.set_phase(Phase::Run);
        let window_start = Instant::now();
        while window_start.elapsed() < settings.duration && finished < threads {
            progress.update("run");
            tick(
                settings.duration.saturating_sub(window_start.elapsed()).min(Duration::from_millis(200)),
                &mut finished,
            );
        }
        window_end = Sample::take(pid);
        client_cpu_us = Sample::take(None).cpu_us.zip(client_start.cpu_us).map(|(b, a)| b.saturating_sub(a));
        window_s = window_start.elapsed().as_secs_f64();
        held_at_window_end = shared.held.load(Relaxed).max(0) as u64;

        // Drain: the threads declare their own stalls after --stall-timeout; the margin lets them.
        shared.set_phase(Phase::Drain);
        let drain_start = Instant::now();
        let limit = settings.stall + DRAIN_MARGIN;
        while !(shared.drained.load(Relaxed) >= threads && shared.nothing_outstanding()) && finished < threads {
            if drain_start.elapsed() >= limit {
                drain_timed_out = true;
                break;
            }
            progress.update("drain");
            tick(Duration::from_millis(10), &mut finished);
        }
        drain_s = drain_start.elapsed().as_secs_f64();
    }
    shared.set_phase(Phase::Stop);
    let stop_ns = shared.now_ns();
    progress.update("stop");

    let mut tally = Tally::default();
    let mut extras = Vec::with_capacity(threads);
    for h in handles {
        match h.join() {
            Ok(Ok((t, x))) => {
                tally.merge(t);
                extras.push(x);
            }
            Ok(Err(msg)) => failures.push(msg),
            Err(_) => failures.push("a client thread panicked".into()),
        }
    }
    progress.finish();
    let server = pid.map(|pid| ServerSamples { pid, before, ramp_end, window_end });
    Ok(Outcome {
        tally,
        extras,
        ramp_s,
        window_s,
        drain_s,
        server,
        client_cpu_us,
        held_at_ramp_end,
        held_at_window_end,
        drain_timed_out,
        stop_ns,
        failures,
    })
}

/// The live progress line on stderr (drawn only when stderr is a terminal).
struct Progress {
    bar: ProgressBar,
    shared: Arc<Shared>,
    last: std::cell::Cell<(Instant, u64, u64, u64)>,
}

impl Progress {
    fn new(scenario: &str, shared: Arc<Shared>) -> Progress {
        let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
        if let Ok(style) = ProgressStyle::with_template("{spinner} {elapsed:>4} {prefix} {msg}") {
            bar.set_style(style);
        }
        bar.set_prefix(scenario.to_owned());
        Progress { bar, shared, last: std::cell::Cell::new((Instant::now(), 0, 0, 0)) }
    }

    fn update(&self, phase: &str) {
        let s = &self.shared;
        let (t, hs0, pushes0, cycles0) = self.last.get();
        let dt = t.elapsed().as_secs_f64();
        if dt < 0.25 && phase == "run" {
            return;
        }
        let (hs, pushes, cycles) = (s.handshakes.load(Relaxed), s.pushes.load(Relaxed), s.cycles.load(Relaxed));
        let rate = |a: u64, b: u64| if dt > 0.0 { a.saturating_sub(b) as f64 / dt } else { 0.0 };
        self.bar.set_message(format!(
            "{phase}: open {} ({:.0} hs/s) | sent {} acks {} pushes {} ({:.0}/s) | cycles {} ({:.0}/s) kicks {} | errors {} stalls {}",
            s.open.load(Relaxed),
            rate(hs, hs0),
            s.sent.load(Relaxed),
            s.acks.load(Relaxed),
            pushes,
            rate(pushes, pushes0),
            cycles,
            rate(cycles, cycles0),
            s.kicks.load(Relaxed),
            s.errors.load(Relaxed),
            s.stalls.load(Relaxed),
        ));
        self.bar.tick();
        self.last.set((Instant::now(), hs, pushes, cycles));
    }

    fn finish(&self) {
        self.bar.finish_and_clear();
    }
}
