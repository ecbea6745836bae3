//! `stress fanout`: one sender to many recipients (`--recipients M`: each message goes to each of
//! M users in turn, one 1003 per recipient), and/or one recipient user holding many sessions
//! (`--sessions S`: every message must reach all S, and the ack's `delivered` must be S).
//!
//! S sessions of one user on one platform only coexist under `--multi-login-policy not-kick`;
//! `--spread-platforms` logs them in on platforms 1..=11 in turn instead (enough for up to 11
//! under the default same-terminal-kick). A kick is counted as the `kicked` error and the report
//! says what to change. Owns only the plan; the relay engine (relay.rs) runs it.

use serde_json::json;

use super::relay::{self, Choice, Load, Plan, SessionSpec, UserSpec};
use super::report::Summary;
use super::{Common, Failure};

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    common: Common,

    /// Users the sender writes to, in turn.
    #[arg(long, value_name = "M", default_value_t = 100)]
    recipients: usize,

    /// Sessions each recipient user holds; every message must reach each of them.
    #[arg(long, value_name = "S", default_value_t = 1)]
    sessions: usize,

    /// Log a recipient's sessions in on platforms 1, 2, ..., 11, 1, ... instead of all on 1.
    #[arg(long)]
    spread_platforms: bool,

    /// Unacknowledged messages the sender keeps in flight. Default: M (one round).
    #[arg(long, value_name = "K")]
    inflight: Option<usize>,

    /// Open loop instead: send this many messages per second.
    #[arg(long, value_name = "MSGS_PER_S")]
    rate: Option<f64>,

    /// Bytes of content per message.
    #[arg(long, value_name = "BYTES", default_value_t = 100)]
    size: usize,
}

pub fn run(args: Args) -> Result<(), Failure> {
    if args.common.users.is_some() {
        return Err(Failure::Config("fanout takes --recipients and --sessions, not --users".into()));
    }
    let (m, s) = (args.recipients, args.sessions);
    if m == 0 || s == 0 {
        return Err(Failure::Config("--recipients and --sessions must be at least 1".into()));
    }
    let load = Load::new(args.inflight.unwrap_or(m), args.rate, args.size)?;
    let total = m.saturating_mul(s).saturating_add(1);
    let ready = args.common.resolve("fanout", m + 1, total)?;
    let mut users = vec![UserSpec { name: format!("{}fs", ready.prefix), sessions: Vec::new() }];
    users.extend((0..m).map(|r| UserSpec { name: format!("{}fr{r}", ready.prefix), sessions: Vec::new() }));
    let mut sessions = vec![SessionSpec { user: 0, platform: 1, sends: true }];
    for r in 0..m {
        for k in 0..s {
            let platform = if args.spread_platforms { (k % 11) as i64 + 1 } else { 1 };
            sessions.push(SessionSpec { user: r as u32 + 1, platform, sends: false });
        }
    }
    let plan = Plan { users, sessions, choice: Choice::RoundRobin((1..=m as u32).collect()), load };
    let params = json!({
        "recipients": m, "sessions": s, "spread_platforms": args.spread_platforms,
        "inflight": load.inflight, "rate": args.rate, "size": args.size,
    });
    relay::execute("fanout", plan, ready, params, |summary: &Summary| {
        let mut why = Vec::new();
        let mismatched = summary.tally.error_count("delivered_mismatch");
        if mismatched > 0 {
            why.push(format!("{mismatched} acks did not report delivered = {s}"));
        }
        if summary.tally.error_count("kicked") == 0 {
            return why;
        }
        why.push(format!(
            "the server kicked recipient sessions: {s} sessions of one user need the server to run with \
             --multi-login-policy not-kick{}",
            if s <= 11 && !args.spread_platforms { ", or pass --spread-platforms (distinct platforms)" } else { "" }
        ));
        why
    })
}
