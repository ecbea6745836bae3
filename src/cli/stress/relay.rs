//! `stress relay`, and the engine `fanout` and `idle` run on: a fixed set of sessions opened
//! during the ramp and held; during the window some of them send 1003s (closed loop with
//! `--inflight` unacknowledged each, or open loop at `--rate` msgs/s in total) to recipients
//! chosen by the scenario; latency is measured from the write to the ack and to each
//! recipient session's 2001. Every message has a unique clientMsgID (`SENDER.SEQ.NANOS`), so
//! losses are exact: after the drain every (message, recipient session) pair not received is a
//! lost push, every ack not received within `--stall-timeout` a lost ack. Only messages that
//! reached the socket are expected: one still in the write buffer when its session ended is the
//! `send_failed` error.
//!
//! Owns one client thread's sessions, its senders' outstanding messages and the set of pushes
//! it received. Must not block or sleep, and must not share per-message state across threads
//! (each thread keeps its own; the merge at the end decides what was lost).

use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::churn::clip;
use super::client::{Driver, End, Net, Out};
use super::report::{Lat, Stall, Summary};
use super::run::{self, Phase, Scenario, Shared, CLOSE_GRACE};
use super::wire::{self, Frame, MsgId};
use super::{Common, Failure, Ready};

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    common: Common,

    /// Unacknowledged messages each user keeps in flight (closed loop).
    #[arg(long, value_name = "K", default_value_t = 1)]
    inflight: usize,

    /// Open loop instead: send this many messages per second in total, whatever the acks do.
    #[arg(long, value_name = "MSGS_PER_S")]
    rate: Option<f64>,

    /// Bytes of content per message.
    #[arg(long, value_name = "BYTES", default_value_t = 100)]
    size: usize,
}

pub fn run_relay(args: Args) -> Result<(), Failure> {
    let users = args.common.users.unwrap_or(1000);
    if users < 2 {
        return Err(Failure::Config("relay needs --users 2 or more (users send to each other)".into()));
    }
    let load = Load::new(args.inflight, args.rate, args.size)?;
    let ready = args.common.resolve("relay", users, users)?;
    let names: Vec<String> = (0..users).map(|u| format!("{}r{u}", ready.prefix)).collect();
    let plan = Plan {
        users: names.into_iter().map(|name| UserSpec { name, sessions: Vec::new() }).collect(),
        sessions: (0..users as u32).map(|u| SessionSpec { user: u, platform: 1, sends: true }).collect(),
        choice: Choice::Random,
        load,
    };
    let params = json!({"inflight": args.inflight, "rate": args.rate, "size": args.size});
    execute("relay", plan, ready, params, |_| Vec::new())
}

/// How senders send.
#[derive(Debug, Clone, Copy)]
pub struct Load {
    pub inflight: usize,
    pub rate: Option<f64>,
    pub size: usize,
}

impl Load {
    pub fn new(inflight: usize, rate: Option<f64>, size: usize) -> Result<Load, Failure> {
        if inflight == 0 {
            return Err(Failure::Config("--inflight must be at least 1".into()));
        }
        if rate.is_some_and(|r| !(r > 0.0 && r.is_finite())) {
            return Err(Failure::Config("--rate must be a positive number of messages per second".into()));
        }
        if size > 50_000 {
            return Err(Failure::Config(
                "--size must be at most 50000 bytes (the gateway's frame limit is 51200)".into(),
            ));
        }
        Ok(Load { inflight, rate, size })
    }
}

pub struct UserSpec {
    pub name: String,
    /// Filled by `execute`: the sessions of this user (global indices).
    pub sessions: Vec<u32>,
}

pub struct SessionSpec {
    pub user: u32,
    pub platform: i64,
    pub sends: bool,
}

/// Whom a sender writes to.
pub enum Choice {
    /// A random user other than the sender's.
    Random,
    /// These users in turn.
    RoundRobin(Vec<u32>),
}

pub struct Plan {
    pub users: Vec<UserSpec>,
    pub sessions: Vec<SessionSpec>,
    pub choice: Choice,
    pub load: Load,
}

/// Read-only data every thread shares.
struct Static {
    users: Vec<UserSpec>,
    choice: Choice,
    load: Load,
    content: String,
}

struct Pending {
    sent_at: Instant,
    recipient: u32,
    sent_ns: u64,
}

struct Sess {
    global: u32,
    user: u32,
    url: String,
    who: String,
    sends: bool,
    conn: Option<usize>,
    open: bool,
    seq: u32,
    rr: usize,
    pending: HashMap<u32, Pending>,
}

/// What a thread hands back: the pushes it received and the messages it sent.
pub struct Collected {
    received: HashSet<(u64, u32)>,
    /// (message key, recipient user, sent ns).
    sent: Vec<(u64, u32, u64)>,
    /// Keys of messages in `sent` that never reached the socket (their session ended first):
    /// no push is expected for them.
    unsent: HashSet<u64>,
}

struct Thread {
    sess: Vec<Sess>,
    st: Arc<Static>,
    shared: Arc<Shared>,
    stall: Duration,
    concurrency: usize,
    connecting: usize,
    next_connect: usize,
    ramp_done: bool,
    started: bool,
    window_start: Option<Instant>,
    rate_sent: u64,
    rate_rr: usize,
    /// Local indices of the sessions that send (for `--rate`).
    senders: Vec<usize>,
    drained: bool,
    stop_at: Option<Instant>,
    last_check: Instant,
    rng: u64,
    coll: Collected,
}

/// Runs `plan`; `extra_failures` may add scenario-specific verdicts from the summary.
pub fn execute(
    scenario: &'static str,
    mut plan: Plan,
    ready: Ready,
    params: Value,
    extra_failures: impl FnOnce(&Summary) -> Vec<String>,
) -> Result<(), Failure> {
    let s = &ready.settings;
    for (i, sp) in plan.sessions.iter().enumerate() {
        plan.users[sp.user as usize].sessions.push(i as u32);
    }
    let shared = Arc::new(Shared::new(s.threads));
    let threads = s.threads;
    let now = Instant::now();
    let st = Arc::new(Static {
        content: wire::content(plan.load.size),
        users: std::mem::take(&mut plan.users),
        choice: plan.choice,
        load: plan.load,
    });
    let mut drivers: Vec<Thread> = (0..threads)
        .map(|t| Thread {
            sess: Vec::new(),
            st: st.clone(),
            shared: shared.clone(),
            stall: s.stall,
            concurrency: s.ramp_concurrency.div_ceil(threads).max(1),
            connecting: 0,
            next_connect: 0,
            ramp_done: false,
            started: false,
            window_start: None,
            rate_sent: 0,
            rate_rr: 0,
            senders: Vec::new(),
            drained: false,
            stop_at: None,
            last_check: now,
            rng: 0x9E37_79B9_7F4A_7C15 ^ (t as u64 + 1).wrapping_mul(0xBF58_476D_1CE4_E5B9),
            coll: Collected { received: HashSet::new(), sent: Vec::new(), unsent: HashSet::new() },
        })
        .collect();
    let wanted = plan.sessions.len() as u64;
    for (i, sp) in plan.sessions.iter().enumerate() {
        let name = &st.users[sp.user as usize].name;
        let d = &mut drivers[i % threads];
        d.sess.push(Sess {
            global: i as u32,
            user: sp.user,
            url: s.target.url(name, sp.platform),
            who: format!("{name} (platform {}, session {i})", sp.platform),
            sends: sp.sends,
            conn: None,
            open: false,
            seq: 0,
            rr: i,
            pending: HashMap::new(),
        });
    }
    for d in &mut drivers {
        d.senders = (0..d.sess.len()).filter(|&li| d.sess[li].sends).collect();
    }
    let outcome = run::run(s, shared, drivers)?;
    let mut tally = outcome.tally;

    // Which (message, recipient session) pairs never arrived.
    let mut received: HashSet<(u64, u32)> = HashSet::new();
    let mut sent = Vec::new();
    let mut unsent = HashSet::new();
    for c in outcome.extras {
        if received.is_empty() {
            received = c.received;
        } else {
            received.extend(c.received);
        }
        sent.extend(c.sent);
        unsent.extend(c.unsent);
    }
    sent.retain(|(key, _, _)| !unsent.contains(key));
    let stall_ns = s.stall.as_nanos() as u64;
    for (key, recipient, sent_ns) in sent {
        for &session in &st.users[recipient as usize].sessions {
            if received.contains(&(key, session)) {
                continue;
            }
            let (sender, seq) = ((key >> 32) as u32, key as u32);
            let waited_ns = outcome.stop_ns.saturating_sub(sent_ns);
            if waited_ns < stall_ns {
                // The run stopped before this push's deadline (only when it stopped early).
                tally.error("outstanding_at_stop", || {
                    format!("2001 of message {sender}.{seq} at session {session}: sent {waited_ns} ns before the stop")
                });
                continue;
            }
            tally.counts.lost_pushes += 1;
            tally.stall(Stall {
                kind: "push",
                user: st.users[recipient as usize].name.clone(),
                what: format!(
                    "2001 of message {sender}.{seq} (sent by session {sender}) at session {session}: never arrived"
                ),
                waited_ms: waited_ns / 1_000_000,
                at_ms: outcome.stop_ns / 1_000_000,
            });
        }
    }
    let mut failures = outcome.failures;
    if outcome.drain_timed_out && tally.stalls_total() == 0 {
        tally.error("drain_timeout", || "work still outstanding when the drain ended".into());
    }
    let mut summary = Summary {
        scenario,
        url: ready.url.clone(),
        threads,
        users: st.users.len(),
        params,
        ramp_s: outcome.ramp_s,
        window_s: outcome.window_s,
        drain_s: outcome.drain_s,
        sessions_wanted: wanted,
        sessions_open: outcome.held_at_window_end,
        sessions_at_ramp_end: outcome.held_at_ramp_end,
        tally,
        server: outcome.server,
        client_cpu_us: outcome.client_cpu_us,
        failures: Vec::new(),
    };
    let senders = plan.sessions.iter().any(|s| s.sends);
    if failures.is_empty() && senders && summary.tally.counts.sent == 0 {
        failures.push("no message was sent".into());
    }
    if failures.is_empty() && summary.sessions_open < wanted {
        failures
            .push(format!("only {} of {wanted} sessions were open at the end of the window", summary.sessions_open));
    }
    failures.extend(extra_failures(&summary));
    summary.failures = failures;
    super::conclude(summary, ready.json)
}

impl Thread {
    fn rand(&mut self) -> u64 {
        // xorshift64*
        self.rng ^= self.rng >> 12;
        self.rng ^= self.rng << 25;
        self.rng ^= self.rng >> 27;
        self.rng.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn pick_recipient(&mut self, li: usize) -> u32 {
        let n = self.st.users.len() as u64;
        let me = self.sess[li].user;
        match &self.st.choice {
            Choice::Random => loop {
                let u = (self.rand() % n) as u32;
                if u != me || n < 2 {
                    return u;
                }
            },
            Choice::RoundRobin(list) => {
                let s = &mut self.sess[li];
                s.rr = s.rr.wrapping_add(1);
                list[s.rr % list.len()]
            }
        }
    }

    fn send(&mut self, net: &mut Net, li: usize, now: Instant) -> bool {
        let Some(conn) = self.sess[li].conn.filter(|_| self.sess[li].open) else { return false };
        let recipient = self.pick_recipient(li);
        let st = &self.st;
        let s = &mut self.sess[li];
        // Consumed only when queued: a session's last N queued messages are its last N seqs.
        let seq = s.seq;
        let id = MsgId { sender: s.global, seq, sent_ns: self.shared.now_ns() };
        let text = wire::send_frame(
            &st.users[s.user as usize].name,
            u64::from(seq),
            &st.users[recipient as usize].name,
            id,
            &st.content,
        );
        if !net.send(conn, text) {
            return false;
        }
        s.seq = s.seq.wrapping_add(1);
        s.pending.insert(seq, Pending { sent_at: now, recipient, sent_ns: id.sent_ns });
        self.coll.sent.push((id.key(), recipient, id.sent_ns));
        net.tally.counts.sent += 1;
        self.shared.sent.fetch_add(1, Relaxed);
        self.shared.acks_outstanding.fetch_add(1, Relaxed);
        self.shared.pushes_expected.fetch_add(st.users[recipient as usize].sessions.len() as u64, Relaxed);
        true
    }

    fn on_text(&mut self, net: &mut Net, li: usize, text: &str, now: Instant) {
        let frame = match Frame::parse(text) {
            Ok(f) => f,
            Err(e) => {
                let who = self.sess[li].who.clone();
                return net.error("bad_json", || format!("{who}: {e}: {}", clip(text)));
            }
        };
        let phase = self.shared.phase();
        match frame.req {
            wire::PUSH => {
                let Some(push) = frame.push().filter(|p| !p.msgs.is_empty()) else {
                    return net.error("bad_push", || format!("a 2001 without messages: {}", clip(text)));
                };
                let me = self.sess[li].global;
                let now_ns = self.shared.now_ns();
                for m in push.msgs {
                    let Some(id) = m.client_msg_id.as_deref().and_then(MsgId::parse) else {
                        let who = self.sess[li].who.clone();
                        net.error("unexpected_push", || {
                            format!("{who}: a clientMsgID this run did not send: {}", clip(text))
                        });
                        continue;
                    };
                    if !self.coll.received.insert((id.key(), me)) {
                        net.tally.counts.duplicate_pushes += 1;
                        let who = self.sess[li].who.clone();
                        net.error("duplicate_push", || format!("{who}: message {}.{} pushed twice", id.sender, id.seq));
                        continue;
                    }
                    let waited_ns = now_ns.saturating_sub(id.sent_ns);
                    net.tally.latency(Lat::Push, waited_ns / 1000);
                    net.tally.counts.pushes += 1;
                    if phase == Phase::Run {
                        net.tally.counts.pushes_window += 1;
                    }
                    self.shared.pushes.fetch_add(1, Relaxed);
                    self.shared.pushes_received.fetch_add(1, Relaxed);
                    if waited_ns >= self.stall.as_nanos() as u64 {
                        let who = self.sess[li].who.clone();
                        let what = format!("2001 of message {}.{} arrived late", id.sender, id.seq);
                        net.stall("push", &who, what, Duration::from_nanos(waited_ns));
                    }
                }
            }
            wire::SEND if self.sess[li].sends => {
                let s = &mut self.sess[li];
                let Some(p) = seq_of_incr(frame.incr()).and_then(|seq| s.pending.remove(&seq)) else {
                    let who = s.who.clone();
                    return net.error("unexpected_ack", || {
                        format!("{who}: an ack for no outstanding message (late after a stall?): {}", clip(text))
                    });
                };
                net.tally.latency(Lat::Ack, now.duration_since(p.sent_at).as_micros() as u64);
                net.tally.counts.acks += 1;
                if phase == Phase::Run {
                    net.tally.counts.acks_window += 1;
                }
                self.shared.acks.fetch_add(1, Relaxed);
                self.shared.acks_outstanding.fetch_sub(1, Relaxed);
                let expected = self.st.users[p.recipient as usize].sessions.len() as i64;
                if frame.err_code != 0 {
                    let who = s.who.clone();
                    net.error(&format!("ack_err_code_{}", frame.err_code), || format!("{who}: {}", clip(text)));
                } else {
                    let delivered = frame.ack().and_then(|a| a.delivered);
                    if delivered != Some(expected) {
                        let who = s.who.clone();
                        let to = self.st.users[p.recipient as usize].name.clone();
                        net.error("delivered_mismatch", || {
                            format!("{who}: ack says delivered {delivered:?}, {to} holds {expected} sessions")
                        });
                    }
                }
                let _ = p.sent_ns;
                if phase == Phase::Run && self.st.load.rate.is_none() {
                    self.send(net, li, now);
                }
            }
            wire::KICK => {
                let who = self.sess[li].who.clone();
                net.error("kicked", || format!("{who}: 2002 kicked by another session of the same user"));
            }
            _ => {
                let who = self.sess[li].who.clone();
                let kind = if frame.err_code != 0 {
                    format!("err_code_{}", frame.err_code)
                } else {
                    "unexpected_frame".into()
                };
                net.error(&kind, || format!("{who}: {}", clip(text)));
            }
        }
    }

    fn on_end(&mut self, net: &mut Net, li: usize, id: usize, end: End, unsent: u64) {
        let phase = self.shared.phase();
        let s = &mut self.sess[li];
        if s.conn != Some(id) {
            return;
        }
        let was_open = s.open;
        s.conn = None;
        s.open = false;
        if was_open {
            self.shared.held.fetch_sub(1, Relaxed);
        } else {
            self.connecting -= 1;
        }
        // Its last `unsent` messages never left this process: neither an ack nor a push can be
        // expected for them, so they are not lost but failed sends (and not in messages_sent).
        for k in 0..unsent.min(u64::from(u32::MAX)) as u32 {
            let seq = s.seq.wrapping_sub(1).wrapping_sub(k);
            let Some(p) = s.pending.remove(&seq) else { continue }; // already declared lost
            let key = MsgId { sender: s.global, seq, sent_ns: 0 }.key();
            self.coll.unsent.insert(key);
            net.tally.counts.sent -= 1;
            self.shared.sent.fetch_sub(1, Relaxed);
            self.shared.acks_outstanding.fetch_sub(1, Relaxed);
            let sessions = self.st.users[p.recipient as usize].sessions.len() as u64;
            self.shared.pushes_expected.fetch_sub(sessions, Relaxed);
            let who = s.who.clone();
            net.error("send_failed", || {
                format!("{who}: message {}.{seq} never reached the socket: the session ended first", s.global)
            });
        }
        if phase == Phase::Stop {
            return;
        }
        if phase == Phase::Ramp {
            self.shared.ramp_failed.fetch_add(1, Relaxed);
        }
        let who = s.who.clone();
        match &end {
            End::ServerClosed { code: Some(1008), reason } if reason == "kicked" => {
                net.error("kicked", || format!("{who}: closed 1008 kicked by another session of the same user"))
            }
            End::ServerClosed { code: Some(code), reason } => {
                net.error(&format!("closed_{code}"), || format!("{who}: the server closed with {code} {reason:?}"))
            }
            End::ServerClosed { code: None, reason } => {
                net.error("closed_without_close_frame", || format!("{who}: {reason}"))
            }
            End::Closed => net.error("closed", || format!("{who}: closed")),
            End::Failed | End::Stalled => {}
        }
        // Its acks cannot come any more.
        let s = &mut self.sess[li];
        let lost = s.pending.len() as u64;
        s.pending.clear();
        net.tally.counts.lost_acks += lost;
        self.shared.acks_outstanding.fetch_sub(lost as i64, Relaxed);
    }

    fn check_stalls(&mut self, net: &mut Net, now: Instant) {
        let stall = self.stall;
        for s in &mut self.sess {
            if s.pending.is_empty() {
                continue;
            }
            let mut lost = Vec::new();
            s.pending.retain(|&seq, p| {
                let keep = now.duration_since(p.sent_at) < stall;
                if !keep {
                    lost.push((seq, p.recipient, now.duration_since(p.sent_at)));
                }
                keep
            });
            for (seq, recipient, waited) in lost {
                net.tally.counts.lost_acks += 1;
                self.shared.acks_outstanding.fetch_sub(1, Relaxed);
                let what = format!("ack of message {}.{seq} to {}", s.global, self.st.users[recipient as usize].name);
                net.stall("ack", &s.who, what, waited);
            }
        }
    }

    fn ramp(&mut self, net: &mut Net) {
        while self.connecting < self.concurrency && self.next_connect < self.sess.len() {
            let li = self.next_connect;
            self.next_connect += 1;
            let s = &mut self.sess[li];
            s.conn = Some(net.connect(li as u32, &s.who, &s.url));
            self.connecting += 1;
        }
        if !self.ramp_done && self.next_connect == self.sess.len() && self.connecting == 0 {
            self.ramp_done = true;
            self.shared.ready.fetch_add(1, Relaxed);
        }
    }
}

impl Driver for Thread {
    fn on(&mut self, net: &mut Net, out: Out) {
        let now = Instant::now();
        match out {
            Out::Open { id, owner } => {
                let s = &mut self.sess[owner as usize];
                if s.conn == Some(id) {
                    s.open = true;
                    self.connecting -= 1;
                    self.shared.held.fetch_add(1, Relaxed);
                }
            }
            Out::Text { owner, text, .. } => self.on_text(net, owner as usize, &text, now),
            Out::End { id, owner, end, unsent } => self.on_end(net, owner as usize, id, end, unsent),
        }
    }

    fn tick(&mut self, net: &mut Net, now: Instant) -> Duration {
        let mut wait = Duration::from_millis(20);
        match self.shared.phase() {
            Phase::Ramp => self.ramp(net),
            Phase::Run => match self.st.load.rate {
                None if !self.started => {
                    self.started = true;
                    for li in 0..self.sess.len() {
                        if self.sess[li].sends {
                            for _ in 0..self.st.load.inflight {
                                self.send(net, li, now);
                            }
                        }
                    }
                }
                None => {}
                Some(rate) => {
                    let start = *self.window_start.get_or_insert(now);
                    let threads = self.shared_threads();
                    let due = (now.duration_since(start).as_secs_f64() * rate / threads as f64) as u64;
                    let mut budget = due.saturating_sub(self.rate_sent).min(10_000);
                    while budget > 0 && !self.senders.is_empty() {
                        self.rate_rr = self.rate_rr.wrapping_add(1);
                        let li = self.senders[self.rate_rr % self.senders.len()];
                        self.send(net, li, now);
                        self.rate_sent += 1; // a send to a closed session is skipped, not retried
                        budget -= 1;
                    }
                    wait = Duration::from_millis(1);
                }
            },
            Phase::Drain => {
                if !self.drained && self.sess.iter().all(|s| s.pending.is_empty()) {
                    self.drained = true;
                    self.shared.drained.fetch_add(1, Relaxed);
                }
            }
            Phase::Stop => {
                if self.stop_at.is_none() {
                    self.stop_at = Some(now);
                    for s in &mut self.sess {
                        if let Some(id) = s.conn {
                            net.close(id);
                        }
                    }
                }
            }
        }
        if now.duration_since(self.last_check) >= Duration::from_millis(50) {
            self.last_check = now;
            self.check_stalls(net, now);
        }
        wait
    }

    fn finished(&self, net: &Net) -> bool {
        self.stop_at.is_some_and(|t| net.len() == 0 || t.elapsed() >= CLOSE_GRACE)
    }
}

/// The sequence number an ack's msgIncr names: ours are u32, so anything larger (a hostile
/// 2^32 + k) names none, rather than k.
fn seq_of_incr(incr: Option<u64>) -> Option<u32> {
    u32::try_from(incr?).ok()
}

impl Thread {
    fn shared_threads(&self) -> usize {
        self.shared.threads.max(1)
    }
}

impl Scenario for Thread {
    type Extra = Collected;

    fn finish(mut self, net: &mut Net) -> Collected {
        // The drain normally declared these; what is left is lost only once --stall-timeout old.
        let now = Instant::now();
        self.check_stalls(net, now);
        for s in &mut self.sess {
            for (seq, p) in s.pending.drain() {
                let (who, waited) = (s.who.clone(), now.duration_since(p.sent_at));
                net.error("outstanding_at_stop", || {
                    format!("{who}: ack of message {}.{seq} sent only {waited:?} before the stop", s.global)
                });
            }
        }
        self.coll
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_ack_names_a_sequence_number_only_when_msg_incr_fits_in_u32() {
        assert_eq!(seq_of_incr(Some(7)), Some(7));
        assert_eq!(seq_of_incr(Some(u64::from(u32::MAX))), Some(u32::MAX));
        assert_eq!(seq_of_incr(Some((1 << 32) + 7)), None, "must not match seq 7");
        assert_eq!(seq_of_incr(None), None);
    }
}
