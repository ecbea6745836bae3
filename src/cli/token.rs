//! `msggate token`: mint a token for a client, signed with the gateway's secret.

use std::io::Write as _;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use msggate::{Platform, TokenKey, DEV_SECRET};

use super::Failure;

#[derive(Debug, clap::Args)]
#[command(after_help = "The token is printed on stdout as one line. Connect with \
    ws://HOST:PORT/?token=TOKEN&sendID=USER&platformID=N&operationID=ANY")]
pub struct Args {
    /// The user the token is issued to (the client's sendID).
    #[arg(long, value_name = "USER")]
    user: String,

    /// The platform the token is issued for: OpenIM's platformID 1..=11 or its name
    /// (1 IOS, 2 Android, 3 Windows, 4 OSX, 5 Web, 6 MiniWeb, 7 Linux, 8 APad, 9 IPad, 10 Admin, 11 HarmonyOS).
    #[arg(long, value_name = "N", value_parser = parse_platform)]
    platform: Platform,

    /// How long the token is valid, e.g. 24h, 30m, 7days.
    #[arg(long, value_name = "DUR", default_value = "24h", value_parser = humantime::parse_duration)]
    ttl: Duration,

    /// The gateway's HS256 secret. Default: the development secret, which only a gateway
    /// started without a secret accepts.
    #[arg(long, value_name = "S", env = "MSGGATE_SECRET", hide_env_values = true)]
    secret: Option<String>,
}

fn parse_platform(s: &str) -> Result<Platform, String> {
    let found = match s.trim().parse::<i64>() {
        Ok(id) => Platform::from_id(id),
        Err(_) => Platform::ALL.into_iter().find(|p| p.name().eq_ignore_ascii_case(s.trim())),
    };
    found.ok_or_else(|| {
        let all: Vec<String> = Platform::ALL.iter().map(|p| format!("{} {}", p.id(), p.name())).collect();
        format!("platform must be an OpenIM platformID from 1 to 11 or its name ({})", all.join(", "))
    })
}

pub fn run(args: Args) -> Result<(), Failure> {
    if args.user.is_empty() {
        return Err(Failure::Config("--user must not be empty".into()));
    }
    if args.ttl.is_zero() {
        return Err(Failure::Config("--ttl must be longer than zero".into()));
    }
    let secret = match &args.secret {
        Some(s) if s.is_empty() => return Err(Failure::Config("--secret must not be empty".into())),
        Some(s) => s.as_str(),
        None => {
            eprintln!(
                "msggate: warning: no --secret or MSGGATE_SECRET given; this token is signed with the \
                 development secret and only works against a gateway running without a secret"
            );
            DEV_SECRET
        }
    };
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_err(|_| Failure::Runtime("the system clock is before 1970".into()))?
        .as_secs();
    let exp = now.saturating_add(args.ttl.as_secs().max(1));
    let token = TokenKey::new(secret.as_bytes()).mint(&args.user, i64::from(args.platform.id()), exp);
    let mut out = std::io::stdout().lock();
    writeln!(out, "{token}")
        .and_then(|()| out.flush())
        .map_err(|e| Failure::Runtime(format!("cannot write the token to stdout: {e}")))
}
