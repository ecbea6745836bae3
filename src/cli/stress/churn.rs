//! `stress churn`: the seed's program. Every user loops connect → send a message → wait for the
//! ack (and with `--expect-push` for its listener's 2001) → disconnect. `--overlap` opens the next
//! connection before the previous one is closed, so the server's same-terminal kick closes the
//! old one on every cycle (2002 then close 1008: counted as kicks; a kick that does not come
//! within the stall timeout is a `kick` stall and a `missing_kick` error).
//!
//! With `--expect-push` user `cN` sends to `lN`, a listener session opened during the ramp and
//! held for the whole run, so a 2001 that does not come is a real loss, not an offline partner.
//! Without it, `cN` sends to `c(N+1)`, who may be offline (delivered 0 is fine).
//!
//! Owns the per-user cycle state machines of one client thread. Must not block or sleep: every
//! wait is a deadline checked in `tick`.

use std::time::{Duration, Instant};

use serde_json::json;

use super::client::{Driver, End, Net, Out};
use super::report::{Lat, Summary};
use super::run::{self, Phase, Scenario, Shared, CLOSE_GRACE};
use super::wire::{self, Frame, MsgId};
use super::{Common, Failure};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    common: Common,

    /// Open each cycle's connection before closing the previous one (same user, same platform):
    /// the server must kick the old one (2002 + close 1008) every cycle.
    #[arg(long)]
    overlap: bool,

    /// Each user sends to its own listener session, held open the whole run, and a cycle also
    /// waits for the listener's 2001.
    #[arg(long)]
    expect_push: bool,

    /// The platformID the churning sessions log in with (1..=11).
    #[arg(long, value_name = "N", default_value_t = 1, value_parser = clap::value_parser!(i64).range(1..=11))]
    platform: i64,
}

/// Pause before the next cycle after a failed one, so a refusing server is not hammered.
const RETRY: Duration = Duration::from_millis(50);

struct Wait {
    incr: u64,
    id: String,
    sent_at: Instant,
    acked: bool,
    pushed: bool,
}

struct Prev {
    id: usize,
    /// The 2002 frame came.
    kick_frame: bool,
    /// When its successor opened: the kick is due from then on.
    due_since: Option<Instant>,
}

struct User {
    idx: u32,
    name: String,
    partner: String,
    url: String,
    listener_url: String,
    listener: Option<usize>,
    listener_open: bool,
    conn: Option<usize>,
    cycle: u64,
    cycle_start: Instant,
    wait: Option<Wait>,
    prevs: Vec<Prev>,
    retry_at: Option<Instant>,
}

struct Thread {
    users: Vec<User>,
    overlap: bool,
    expect_push: bool,
    stall: Duration,
    shared: Arc<Shared>,
    /// Listeners connecting at once during the ramp (this thread's share of --ramp-concurrency).
    concurrency: usize,
    /// Listeners connecting now.
    connecting: usize,
    /// The next user whose listener the ramp opens.
    next_listener: usize,
    ready: bool,
    drained: bool,
    stop_at: Option<Instant>,
    last_check: Instant,
}

pub fn run(args: Args) -> Result<(), Failure> {
    let users = args.common.users.unwrap_or(100);
    let per_user = if args.overlap { 2 } else { 1 } + usize::from(args.expect_push);
    // A closed connection may linger until the server's close frame: one more each.
    let ready = args.common.resolve("churn", users, users.saturating_mul(per_user + 1))?;
    let s = &ready.settings;
    let shared = Arc::new(Shared::new(s.threads));
    let now = Instant::now();
    let mut threads: Vec<Thread> = (0..s.threads)
        .map(|_| Thread {
            users: Vec::new(),
            overlap: args.overlap,
            expect_push: args.expect_push,
            stall: s.stall,
            shared: shared.clone(),
            concurrency: s.ramp_concurrency.div_ceil(s.threads).max(1),
            connecting: 0,
            next_listener: 0,
            ready: false,
            drained: false,
            stop_at: None,
            last_check: now,
        })
        .collect();
    for u in 0..users {
        let name = format!("{}c{u}", ready.prefix);
        let listener = format!("{}l{u}", ready.prefix);
        let partner = if args.expect_push { listener.clone() } else { format!("{}c{}", ready.prefix, (u + 1) % users) };
        let t = &mut threads[u % s.threads];
        t.users.push(User {
            idx: u as u32,
            url: s.target.url(&name, args.platform),
            listener_url: if args.expect_push { s.target.url(&listener, 1) } else { String::new() },
            name,
            partner,
            listener: None,
            listener_open: false,
            conn: None,
            cycle: 0,
            cycle_start: now,
            wait: None,
            prevs: Vec::new(),
            retry_at: None,
        });
    }
    let outcome = run::run(s, shared, threads)?;
    let mut tally = outcome.tally;
    let c = &tally.counts;
    let mut failures = outcome.failures;
    // Past a failed ramp nothing was measured: these verdicts would only repeat it.
    let ramp_ok = failures.is_empty();
    if ramp_ok && c.cycles == 0 {
        failures.push("no cycle completed".into());
    }
    let listeners_open = if args.expect_push { outcome.held_at_window_end } else { 0 };
    if ramp_ok && args.expect_push && listeners_open < users as u64 {
        failures.push(format!("only {listeners_open} of {users} listeners were open at the end of the window"));
    }
    if args.overlap && c.cycles > 1 && c.kicks == 0 {
        failures.push("--overlap: the server kicked no old session (does it implement same-terminal kick?)".into());
    }
    if outcome.drain_timed_out && tally.stalls_total() == 0 {
        tally.error("drain_timeout", || "work still outstanding when the drain ended".into());
    }
    let summary = Summary {
        scenario: "churn",
        url: ready.url.clone(),
        threads: s.threads,
        users,
        params: json!({"overlap": args.overlap, "expect_push": args.expect_push, "platform": args.platform}),
        ramp_s: outcome.ramp_s,
        window_s: outcome.window_s,
        drain_s: outcome.drain_s,
        sessions_wanted: if args.expect_push { users as u64 } else { 0 },
        sessions_open: listeners_open,
        sessions_at_ramp_end: if args.expect_push { outcome.held_at_ramp_end } else { 0 },
        tally,
        server: outcome.server,
        client_cpu_us: outcome.client_cpu_us,
        failures,
    };
    super::conclude(summary, ready.json)
}

/// Owner ids: 2 * local index for the churning connections, + 1 for the listener.
fn owner(i: usize, listener: bool) -> u32 {
    (i * 2 + usize::from(listener)) as u32
}

impl Thread {
    fn start_cycle(&mut self, net: &mut Net, i: usize, now: Instant) {
        let u = &mut self.users[i];
        u.cycle += 1;
        u.cycle_start = now;
        u.retry_at = None;
        u.conn = Some(net.connect(owner(i, false), &u.name, &u.url));
    }

    /// The cycle ended without completing: drop it and try again shortly.
    fn abort_cycle(&mut self, net: &mut Net, i: usize, now: Instant) {
        let u = &mut self.users[i];
        if let Some(id) = u.conn.take() {
            net.close(id);
        }
        u.wait = None;
        // Old sessions waiting for a kick that this (failed) login will not cause: close them.
        // Those already due (an earlier login opened) stay tracked: their kick is still coming.
        u.prevs.retain(|p| {
            if p.due_since.is_none() {
                net.close(p.id);
            }
            p.due_since.is_some()
        });
        u.retry_at = Some(now + RETRY);
    }

    fn complete_cycle(&mut self, net: &mut Net, i: usize, now: Instant) {
        let phase = self.shared.phase();
        let u = &mut self.users[i];
        u.wait = None;
        net.tally.latency(Lat::Cycle, now.duration_since(u.cycle_start).as_micros() as u64);
        net.tally.counts.cycles += 1;
        if phase == Phase::Run {
            net.tally.counts.cycles_window += 1;
        }
        self.shared.cycles.fetch_add(1, Relaxed);
        let Some(id) = u.conn.take() else { return };
        if self.overlap && phase == Phase::Run {
            u.prevs.push(Prev { id, kick_frame: false, due_since: None });
            self.start_cycle(net, i, now);
        } else {
            net.close(id);
            if phase == Phase::Run {
                self.start_cycle(net, i, now);
            }
        }
    }

    fn on_open(&mut self, net: &mut Net, i: usize, id: usize, listener: bool, now: Instant) {
        let u = &mut self.users[i];
        if listener {
            if u.listener == Some(id) && !u.listener_open {
                u.listener_open = true;
                self.connecting = self.connecting.saturating_sub(1);
                self.shared.held.fetch_add(1, Relaxed);
            }
            return;
        }
        if u.conn != Some(id) {
            return;
        }
        if self.shared.phase() != Phase::Run {
            // Opened after the window: its message would be sent too late for the drain to wait
            // --stall-timeout for it. Closed, not counted (the same as in the drain's tick).
            return self.abort_cycle(net, i, now);
        }
        for p in &mut u.prevs {
            p.due_since.get_or_insert(now);
        }
        let msg = MsgId { sender: u.idx, seq: u.cycle as u32, sent_ns: self.shared.now_ns() };
        let text = wire::send_frame(&u.name, u.cycle, &u.partner, msg, "\"churn\"");
        let wait = Wait {
            incr: u.cycle,
            id: format!("{}.{}.{}", msg.sender, msg.seq, msg.sent_ns),
            sent_at: now,
            acked: false,
            pushed: !self.expect_push,
        };
        if net.send(id, text) {
            u.wait = Some(wait);
            net.tally.counts.sent += 1;
            self.shared.sent.fetch_add(1, Relaxed);
        } else {
            // Not queued (the connection ended as it opened): without this the user would hold
            // an open cycle that waits for nothing until the end of the run.
            let who = u.name.clone();
            net.error("send_failed", || format!("{who}: the cycle's 1003 could not be written"));
            self.abort_cycle(net, i, now);
        }
    }

    fn on_text(&mut self, net: &mut Net, i: usize, id: usize, listener: bool, text: &str, now: Instant) {
        let phase = self.shared.phase();
        let expect_push = self.expect_push;
        let u = &mut self.users[i];
        let frame = match Frame::parse(text) {
            Ok(f) => f,
            Err(e) => {
                let who = u.name.clone();
                return net.error("bad_json", || format!("{who}: {e}: {}", clip(text)));
            }
        };
        if listener {
            if frame.req != wire::PUSH {
                let who = u.name.clone();
                return net.error("unexpected_frame", || format!("listener of {who}: {}", clip(text)));
            }
            let msgs = frame.push().map(|p| p.msgs).unwrap_or_default();
            if msgs.is_empty() {
                return net.error("bad_push", || format!("a 2001 without messages: {}", clip(text)));
            }
            for m in msgs {
                let cid = m.client_msg_id.as_deref().unwrap_or("");
                match &mut u.wait {
                    Some(w) if w.id == cid && !w.pushed => {
                        w.pushed = true;
                        net.tally.latency(Lat::Push, now.duration_since(w.sent_at).as_micros() as u64);
                        net.tally.counts.pushes += 1;
                        if phase == Phase::Run {
                            net.tally.counts.pushes_window += 1;
                        }
                        self.shared.pushes.fetch_add(1, Relaxed);
                    }
                    _ => {
                        let who = u.name.clone();
                        let cid = cid.to_owned();
                        net.error("unexpected_push", || {
                            format!("listener of {who} got {cid:?}, not the awaited message")
                        });
                    }
                }
            }
        } else if frame.req == wire::PUSH {
            // Without --expect-push a churning user is its neighbour's partner: pushes are normal.
        } else if u.conn == Some(id) {
            match frame.req {
                wire::SEND => {
                    let Some(w) = u.wait.as_mut().filter(|w| frame.incr() == Some(w.incr) && !w.acked) else {
                        let who = u.name.clone();
                        return net.error("unexpected_ack", || format!("{who}: {}", clip(text)));
                    };
                    w.acked = true;
                    net.tally.latency(Lat::Ack, now.duration_since(w.sent_at).as_micros() as u64);
                    net.tally.counts.acks += 1;
                    if phase == Phase::Run {
                        net.tally.counts.acks_window += 1;
                    }
                    self.shared.acks.fetch_add(1, Relaxed);
                    if frame.err_code != 0 {
                        let who = u.name.clone();
                        let kind = format!("ack_err_code_{}", frame.err_code);
                        net.error(&kind, || format!("{who}: {}", clip(text)));
                    } else if expect_push && frame.ack().and_then(|a| a.delivered) == Some(0) {
                        let who = u.name.clone();
                        net.error("ack_not_delivered", || {
                            format!("{who}: the listener was not online: {}", clip(text))
                        });
                    }
                }
                wire::KICK => {
                    let who = u.name.clone();
                    net.error("unexpected_kick", || format!("{who}: the newest session was kicked"));
                }
                _ => {
                    let who = u.name.clone();
                    net.error("unexpected_frame", || format!("{who}: {}", clip(text)));
                }
            }
        } else if let Some(p) = u.prevs.iter_mut().find(|p| p.id == id) {
            if frame.req == wire::KICK {
                p.kick_frame = true;
            } else {
                let who = u.name.clone();
                net.error("unexpected_frame", || format!("{who} (old session): {}", clip(text)));
            }
        }
        if u.wait.as_ref().is_some_and(|w| w.acked && w.pushed) {
            self.complete_cycle(net, i, now);
        }
    }

    fn on_end(&mut self, net: &mut Net, i: usize, id: usize, listener: bool, end: End, now: Instant) {
        let phase = self.shared.phase();
        let u = &mut self.users[i];
        if listener {
            if u.listener != Some(id) {
                return;
            }
            u.listener = None;
            if std::mem::take(&mut u.listener_open) {
                self.shared.held.fetch_sub(1, Relaxed);
            } else {
                self.connecting = self.connecting.saturating_sub(1);
            }
            if phase == Phase::Ramp {
                self.shared.ramp_failed.fetch_add(1, Relaxed);
            } else if phase < Phase::Stop {
                unexpected_end(net, &format!("listener of {}", u.name), &end);
            }
            return;
        }
        if u.conn == Some(id) {
            if phase < Phase::Stop {
                unexpected_end(net, &u.name, &end);
            }
            u.conn = None;
            self.abort_cycle(net, i, now);
        } else if let Some(pos) = u.prevs.iter().position(|p| p.id == id) {
            let p = u.prevs.swap_remove(pos);
            match end {
                End::ServerClosed { code: Some(code), ref reason }
                    if code == 1008 || p.kick_frame || reason == "kicked" =>
                {
                    net.tally.counts.kicks += 1;
                    self.shared.kicks.fetch_add(1, Relaxed);
                    let who = u.name.clone();
                    if !p.kick_frame {
                        net.error("kick_without_2002", || format!("{who}: close {code} without a 2002 frame first"));
                    }
                    if code != 1008 {
                        let kind = format!("kick_close_code_{code}");
                        net.error(&kind, || format!("{who}: kicked with close {code} {reason:?}, not 1008"));
                    }
                }
                other => unexpected_end(net, &format!("{} (old session awaiting its kick)", u.name), &other),
            }
        }
        // Anything else is a connection we closed after its cycle: its failures are counted by Net.
    }

    /// Per-user deadlines: the awaited ack or push, the awaited kick.
    fn check_stalls(&mut self, net: &mut Net, now: Instant) {
        for i in 0..self.users.len() {
            let u = &mut self.users[i];
            if let Some(w) = &u.wait {
                let waited = now.duration_since(w.sent_at);
                if waited >= self.stall {
                    let (kind, what) = if !w.acked {
                        net.tally.counts.lost_acks += 1;
                        ("ack", format!("ack of message {} (msgIncr {}) to {}", w.id, w.incr, u.partner))
                    } else {
                        net.tally.counts.lost_pushes += 1;
                        ("push", format!("2001 of message {} at listener {}", w.id, u.partner))
                    };
                    net.stall(kind, &u.name, what, waited);
                    self.abort_cycle(net, i, now);
                    continue;
                }
            }
            let stall = self.stall;
            let u = &mut self.users[i];
            let mut k = 0;
            while k < u.prevs.len() {
                let p = &u.prevs[k];
                match p.due_since {
                    Some(since) if now.duration_since(since) >= stall => {
                        let waited = now.duration_since(since);
                        net.stall(
                            "kick",
                            &u.name,
                            "2002 + close 1008 on the old session after a new login".into(),
                            waited,
                        );
                        let who = u.name.clone();
                        net.error("missing_kick", || format!("{who}: old session not kicked within the stall timeout"));
                        net.close(p.id);
                        u.prevs.swap_remove(k);
                    }
                    _ => k += 1,
                }
            }
        }
    }
}

fn unexpected_end(net: &mut Net, who: &str, end: &End) {
    match end {
        End::ServerClosed { code: Some(code), reason } => {
            let kind = format!("closed_{code}");
            net.error(&kind, || format!("{who}: the server closed with {code} {reason:?}"));
        }
        End::ServerClosed { code: None, reason } => {
            net.error("closed_without_close_frame", || format!("{who}: {reason}"));
        }
        End::Closed => net.error("closed", || format!("{who}: closed")),
        End::Failed | End::Stalled => {} // already counted
    }
}

pub(super) fn clip(text: &str) -> String {
    match text.char_indices().nth(200) {
        Some((i, _)) => format!("{}…", &text[..i]),
        None => text.to_owned(),
    }
}

impl Driver for Thread {
    fn on(&mut self, net: &mut Net, out: Out) {
        let now = Instant::now();
        match out {
            Out::Open { id, owner } => self.on_open(net, owner as usize / 2, id, owner % 2 == 1, now),
            Out::Text { id, owner, text } => self.on_text(net, owner as usize / 2, id, owner % 2 == 1, &text, now),
            Out::End { id, owner, end, .. } => self.on_end(net, owner as usize / 2, id, owner % 2 == 1, end, now),
        }
    }

    fn tick(&mut self, net: &mut Net, now: Instant) -> Duration {
        match self.shared.phase() {
            Phase::Ramp => {
                // The listeners, at most `concurrency` connecting at once.
                while self.expect_push && self.connecting < self.concurrency && self.next_listener < self.users.len() {
                    let i = self.next_listener;
                    self.next_listener += 1;
                    let u = &mut self.users[i];
                    let who = format!("{} (listener)", u.partner);
                    u.listener = Some(net.connect(owner(i, true), &who, &u.listener_url));
                    self.connecting += 1;
                }
                if !self.ready
                    && (!self.expect_push || (self.next_listener == self.users.len() && self.connecting == 0))
                {
                    self.ready = true;
                    self.shared.ready.fetch_add(1, Relaxed);
                }
            }
            Phase::Run => {
                for i in 0..self.users.len() {
                    let u = &self.users[i];
                    if u.conn.is_none() && u.retry_at.is_none_or(|t| now >= t) {
                        self.start_cycle(net, i, now);
                    }
                }
            }
            Phase::Drain => {
                // No new work after the window: a cycle whose message is not sent yet (still
                // connecting) is closed and not counted; only what was sent is waited for.
                for i in 0..self.users.len() {
                    let u = &self.users[i];
                    if u.conn.is_some() && u.wait.is_none() {
                        self.abort_cycle(net, i, now);
                    }
                }
                if !self.drained && self.users.iter().all(|u| u.conn.is_none() && u.prevs.is_empty()) {
                    self.drained = true;
                    self.shared.drained.fetch_add(1, Relaxed);
                }
            }
            Phase::Stop => {
                if self.stop_at.is_none() {
                    self.stop_at = Some(now);
                    for u in &mut self.users {
                        for id in
                            u.conn.take().into_iter().chain(u.listener.take()).chain(u.prevs.drain(..).map(|p| p.id))
                        {
                            net.close(id);
                        }
                    }
                }
            }
        }
        if now.duration_since(self.last_check) >= Duration::from_millis(20) {
            self.last_check = now;
            self.check_stalls(net, now);
        }
        Duration::from_millis(20)
    }

    fn finished(&self, net: &Net) -> bool {
        self.stop_at.is_some_and(|t| net.len() == 0 || t.elapsed() >= CLOSE_GRACE)
    }
}

impl Scenario for Thread {
    type Extra = ();

    fn finish(mut self, net: &mut Net) {
        // The drain normally declares these (every message was sent before it began, and it
        // lasts longer than --stall-timeout); what is left is lost only once --stall-timeout old.
        let now = Instant::now();
        self.check_stalls(net, now);
        for u in &self.users {
            if let Some(w) = &u.wait {
                let who = u.name.clone();
                let waited = now.duration_since(w.sent_at);
                net.error("outstanding_at_stop", || {
                    format!("{who}: message {} sent only {waited:?} before the run stopped (not counted as lost)", w.id)
                });
            }
        }
    }
}
