//! `stress idle`: open N sessions (against 127.0.0.1, spread over 127.x source addresses past 20000
//! per address), hold them for `--duration` while reading (so that tungstenite answers the server's
//! pings and the server does not close them as silent), then close them. Reports handshakes per
//! second during the ramp and, with `--server-pid`, the server's RSS growth per session: RSS at the
//! end of the hold minus RSS before the first connect, divided by the sessions open.
//!
//! Owns only the plan: the relay engine (relay.rs) runs it with no sender. Must not send
//! anything on the held sessions.

use serde_json::json;

use super::relay::{self, Choice, Load, Plan, SessionSpec, UserSpec};
use super::{Common, Failure};

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    common: Common,

    /// The platformID the sessions log in with (1..=11).
    #[arg(long, value_name = "N", default_value_t = 1, value_parser = clap::value_parser!(i64).range(1..=11))]
    platform: i64,
}

pub fn run(args: Args) -> Result<(), Failure> {
    let users = args.common.users.unwrap_or(1000);
    let ready = args.common.resolve("idle", users, users)?;
    let plan = Plan {
        users: (0..users).map(|u| UserSpec { name: format!("{}i{u}", ready.prefix), sessions: Vec::new() }).collect(),
        sessions: (0..users as u32).map(|user| SessionSpec { user, platform: args.platform, sends: false }).collect(),
        choice: Choice::Random,
        load: Load::new(1, None, 0)?,
    };
    let params = json!({"platform": args.platform, "source_addrs": ready.settings.target.sources()});
    relay::execute("idle", plan, ready, params, |_| Vec::new())
}
