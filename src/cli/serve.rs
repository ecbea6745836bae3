//! `msggate serve`: layer flags, environment and a TOML file into a `Config` and run the gateway.
//!
//! Precedence per setting: flag > `MSGGATE_*` environment variable (clap does these two) >
//! `--config` file > `Config::default()`. Defaults are never restated here: the help texts read
//! them from `Config::default()`.

use std::io::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use log::LevelFilter;
use msggate::{Config, Gateway, MultiLoginPolicy};
use serde::{Deserialize, Deserializer};
use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::iterator::Signals;

use super::{Failure, OpenFileLimit, RESERVED_FDS};

/// Where `msggate serve` serves the admin API unless told otherwise. The library's
/// `Config::admin_listen` defaults to off instead: many gateways may share one process there.
pub const DEFAULT_ADMIN_LISTEN: SocketAddr =
    SocketAddr::V4(std::net::SocketAddrV4::new(std::net::Ipv4Addr::LOCALHOST, 10002));

/// Beyond `shutdown_timeout`, how long joining threads may take before the process gives up.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

fn dur(d: Duration) -> String {
    humantime::format_duration(d).to_string()
}

// Each flag's `[default: ...]` is appended by `document_defaults`, from `Config::default()`.
#[derive(Debug, clap::Args)]
#[command(after_help = "Every flag can also be set by the MSGGATE_* environment variable shown, or by a key in \
    the --config TOML file spelled like the flag in snake_case (register_queue = 64, handshake_timeout = \"5s\"). \
    Precedence: flag, then environment, then file, then the default.\n\n\
    On start msggate prints `msggate listening on ADDR` to stdout, with the real bound address, then \
    `msggate admin listening on ADDR` unless --no-admin; everything else is logged to stderr. SIGINT or SIGTERM closes every session with 1001 and exits 0.")]
pub struct Args {
    /// TOML file with settings; keys are the flag names in snake_case.
    #[arg(long, value_name = "FILE", env = "MSGGATE_CONFIG")]
    config: Option<PathBuf>,

    /// Address to listen on; port 0 picks a free port.
    #[arg(long, value_name = "ADDR", env = "MSGGATE_LISTEN")]
    listen: Option<SocketAddr>,

    /// HS256 secret that signs client tokens.
    #[arg(long, value_name = "S", env = "MSGGATE_SECRET", hide_env_values = true)]
    secret: Option<String>,

    /// Reactor threads driving socket I/O.
    #[arg(long, value_name = "N", env = "MSGGATE_IO_THREADS")]
    io_threads: Option<usize>,

    /// Capacity of the register role's queue.
    #[arg(long, value_name = "N", env = "MSGGATE_REGISTER_QUEUE")]
    register_queue: Option<usize>,

    /// Capacity of the unregister role's queue.
    #[arg(long, value_name = "N", env = "MSGGATE_UNREGISTER_QUEUE")]
    unregister_queue: Option<usize>,

    /// Capacity of each reactor's queue of accepted sockets; when every reactor's is full, sockets wait in a bounded accept backlog, then get HTTP 503.
    #[arg(long, value_name = "N", env = "MSGGATE_HANDOFF_QUEUE")]
    handoff_queue: Option<usize>,

    /// Capacity of each reactor's inbox of frames pushed by other threads.
    #[arg(long, value_name = "N", env = "MSGGATE_INBOX_QUEUE")]
    inbox_queue: Option<usize>,

    /// What a new login does to the user's other sessions: not-kick (0), same-terminal-kick (1),
    /// same-class-kick (4) or pc-and-other (5), by name or OpenIM number.
    #[arg(long, value_name = "P", env = "MSGGATE_MULTI_LOGIN_POLICY")]
    multi_login_policy: Option<MultiLoginPolicy>,

    /// Largest accepted message; larger closes the session with 1009.
    #[arg(long, value_name = "BYTES", env = "MSGGATE_MAX_MESSAGE_SIZE")]
    max_message_size: Option<usize>,

    /// Most sockets held, handshakes included; past it upgrades get HTTP 503.
    #[arg(long, value_name = "N", env = "MSGGATE_MAX_CONNECTIONS")]
    max_connections: Option<usize>,

    /// Time a socket has to complete the WebSocket upgrade and be registered.
    #[arg(long, value_name = "DUR", env = "MSGGATE_HANDSHAKE_TIMEOUT", value_parser = humantime::parse_duration)]
    handshake_timeout: Option<Duration>,

    /// How often every session is pinged; must be shorter than --idle-timeout.
    #[arg(long, value_name = "DUR", env = "MSGGATE_PING_INTERVAL", value_parser = humantime::parse_duration)]
    ping_interval: Option<Duration>,

    /// A session silent for longer than this is closed.
    #[arg(long, value_name = "DUR", env = "MSGGATE_IDLE_TIMEOUT", value_parser = humantime::parse_duration)]
    idle_timeout: Option<Duration>,

    /// How long a closing session waits for the peer's close frame.
    #[arg(long, value_name = "DUR", env = "MSGGATE_CLOSE_TIMEOUT", value_parser = humantime::parse_duration)]
    close_timeout: Option<Duration>,

    /// Bytes that may wait for one session before it is closed as a slow consumer (1008).
    #[arg(long, value_name = "BYTES", env = "MSGGATE_OUTBOUND_BUDGET")]
    outbound_budget: Option<usize>,

    /// Initial size of each session's read buffer.
    #[arg(long, value_name = "BYTES", env = "MSGGATE_READ_BUFFER_SIZE")]
    read_buffer_size: Option<usize>,

    /// SO_SNDBUF of every accepted socket (Linux doubles it, within its own minimum and net.core.wmem_max).
    #[arg(long, value_name = "BYTES", env = "MSGGATE_SOCKET_SEND_BUFFER")]
    socket_send_buffer: Option<usize>,

    /// On shutdown, how long sessions get to finish their close handshake.
    #[arg(long, value_name = "DUR", env = "MSGGATE_SHUTDOWN_TIMEOUT", value_parser = humantime::parse_duration)]
    shutdown_timeout: Option<Duration>,

    /// Most users one session may watch with 2005 presence subscriptions; a request past it gets errCode 1001.
    #[arg(long, value_name = "N", env = "MSGGATE_MAX_SUBSCRIPTIONS")]
    max_subscriptions: Option<usize>,

    /// A role thread or reactor with queued work and no progress for this long is reported once, at error level, with a dump of every thread.
    #[arg(long, value_name = "DUR", env = "MSGGATE_STALL_AFTER", value_parser = humantime::parse_duration)]
    stall_after: Option<Duration>,

    /// Address of the admin HTTP API (/healthz, /metrics, /debug/roles, /online, /push, /kick); port 0 picks a free port.
    #[arg(long, value_name = "ADDR", env = "MSGGATE_ADMIN_LISTEN")]
    admin_listen: Option<SocketAddr>,

    /// Do not serve the admin HTTP API (wins over --admin-listen and MSGGATE_ADMIN_LISTEN).
    #[arg(long, env = "MSGGATE_NO_ADMIN", value_parser = clap::builder::BoolishValueParser::new())]
    no_admin: bool,

    /// Bearer token the admin API requires on every endpoint but /healthz; required off loopback.
    #[arg(long, value_name = "T", env = "MSGGATE_ADMIN_TOKEN", hide_env_values = true)]
    admin_token: Option<String>,

    /// Log level on stderr.
    #[arg(long, value_name = "LEVEL", env = "MSGGATE_LOG_LEVEL", ignore_case = true)]
    log_level: Option<LogLevel>,
}

/// Appends each flag's default to its help text, read from `Config::default()` so that no
/// number is restated here. Panics (in the unit test first) if an id names no flag.
pub fn document_defaults(cmd: clap::Command) -> clap::Command {
    let d = Config::default();
    let defaults: [(&str, String); 24] = [
        ("config", "none".into()),
        ("listen", d.listen.to_string()),
        ("secret", "none, i.e. the public development secret, loopback only".into()),
        ("io_threads", format!("one per available core, {} here", d.io_threads)),
        ("register_queue", d.register_queue.to_string()),
        ("unregister_queue", d.unregister_queue.to_string()),
        ("handoff_queue", d.handoff_queue.to_string()),
        ("inbox_queue", d.inbox_queue.to_string()),
        ("multi_login_policy", d.multi_login_policy.to_string()),
        ("max_message_size", d.max_message_size.to_string()),
        ("max_connections", d.max_connections.to_string()),
        ("handshake_timeout", dur(d.handshake_timeout)),
        ("ping_interval", dur(d.ping_interval)),
        ("idle_timeout", dur(d.idle_timeout)),
        ("close_timeout", dur(d.close_timeout)),
        ("outbound_budget", d.outbound_budget.to_string()),
        ("read_buffer_size", d.read_buffer_size.to_string()),
        ("socket_send_buffer", "the kernel's, auto-tuned".into()),
        ("shutdown_timeout", dur(d.shutdown_timeout)),
        ("max_subscriptions", d.max_subscriptions.to_string()),
        ("stall_after", dur(d.stall_after)),
        ("admin_listen", DEFAULT_ADMIN_LISTEN.to_string()),
        ("admin_token", "none: the admin API is open, loopback only".into()),
        ("log_level", LogLevel::DEFAULT.name().into()),
    ];
    defaults.into_iter().fold(cmd, |cmd, (id, default)| {
        cmd.mut_arg(id, |mut arg| {
            let help = arg.get_help().map(ToString::to_string).unwrap_or_default();
            if let Some(long) = arg.get_long_help().map(ToString::to_string) {
                arg = arg.long_help(format!("{long} [default: {default}]"));
            }
            arg.help(format!("{help} [default: {default}]"))
        })
    })
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Deserialize)]
#[serde(rename_all = "lowercase")]
enum LogLevel {
    Off,
    Error,
    Warn,
    Info,
    Debug,
    Trace,
}

impl LogLevel {
    const DEFAULT: LogLevel = LogLevel::Info;

    fn name(self) -> &'static str {
        match self {
            LogLevel::Off => "off",
            LogLevel::Error => "error",
            LogLevel::Warn => "warn",
            LogLevel::Info => "info",
            LogLevel::Debug => "debug",
            LogLevel::Trace => "trace",
        }
    }

    fn filter(self) -> LevelFilter {
        match self {
            LogLevel::Off => LevelFilter::Off,
            LogLevel::Error => LevelFilter::Error,
            LogLevel::Warn => LevelFilter::Warn,
            LogLevel::Info => LevelFilter::Info,
            LogLevel::Debug => LevelFilter::Debug,
            LogLevel::Trace => LevelFilter::Trace,
        }
    }
}

/// The `--config` file: every key optional, unknown keys refused.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    listen: Option<SocketAddr>,
    secret: Option<String>,
    io_threads: Option<usize>,
    register_queue: Option<usize>,
    unregister_queue: Option<usize>,
    handoff_queue: Option<usize>,
    inbox_queue: Option<usize>,
    #[serde(default, deserialize_with = "de_policy")]
    multi_login_policy: Option<MultiLoginPolicy>,
    max_message_size: Option<usize>,
    max_connections: Option<usize>,
    #[serde(default, deserialize_with = "de_duration")]
    handshake_timeout: Option<Duration>,
    #[serde(default, deserialize_with = "de_duration")]
    ping_interval: Option<Duration>,
    #[serde(default, deserialize_with = "de_duration")]
    idle_timeout: Option<Duration>,
    #[serde(default, deserialize_with = "de_duration")]
    close_timeout: Option<Duration>,
    outbound_budget: Option<usize>,
    read_buffer_size: Option<usize>,
    socket_send_buffer: Option<usize>,
    #[serde(default, deserialize_with = "de_duration")]
    shutdown_timeout: Option<Duration>,
    max_subscriptions: Option<usize>,
    #[serde(default, deserialize_with = "de_duration")]
    stall_after: Option<Duration>,
    admin_listen: Option<SocketAddr>,
    no_admin: Option<bool>,
    admin_token: Option<String>,
    log_level: Option<LogLevel>,
}

/// A duration as a humantime string: `"10s"`, `"500ms"`, `"2m"`.
fn de_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    let s = String::deserialize(d)?;
    humantime::parse_duration(&s)
        .map(Some)
        .map_err(|e| serde::de::Error::custom(format!("{e} in {s:?}; expected a duration like \"10s\" or \"500ms\"")))
}

/// A policy by name (`"same-class-kick"`) or OpenIM number (`4` or `"4"`).
fn de_policy<'de, D: Deserializer<'de>>(d: D) -> Result<Option<MultiLoginPolicy>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum NameOrNumber {
        Name(String),
        Number(i64),
    }
    let s = match NameOrNumber::deserialize(d)? {
        NameOrNumber::Name(s) => s,
        NameOrNumber::Number(n) => n.to_string(),
    };
    s.parse().map(Some).map_err(serde::de::Error::custom)
}

impl FileConfig {
    fn load(path: &Path) -> Result<FileConfig, Failure> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| Failure::Config(format!("cannot read config file {}: {e}", path.display())))?;
        toml::from_str(&text).map_err(|e| {
            Failure::Config(format!("invalid config file {}: {}", path.display(), e.to_string().trim_end()))
        })
    }
}

/// Flag or environment (clap has already chosen between them), else file, else default.
fn layer<T>(flag_or_env: Option<T>, file: Option<T>, default: T) -> T {
    flag_or_env.or(file).unwrap_or(default)
}

impl Args {
    /// The gateway configuration and the log level these arguments describe.
    fn resolve(self) -> Result<(Config, LevelFilter), Failure> {
        let file = match &self.config {
            Some(path) => FileConfig::load(path)?,
            None => FileConfig::default(),
        };
        let d = Config::default();
        // The admin address: the first layer (flags and environment, then the file) that says
        // anything decides, `no_admin` winning within it; else the CLI's default.
        let admin_listen = if self.no_admin {
            None
        } else if self.admin_listen.is_some() {
            self.admin_listen
        } else {
            match (file.no_admin, file.admin_listen) {
                (Some(true), Some(_)) => {
                    return Err(Failure::Config("the config file sets both no_admin = true and admin_listen".into()))
                }
                (Some(true), None) => None,
                (_, Some(addr)) => Some(addr),
                (_, None) => Some(DEFAULT_ADMIN_LISTEN),
            }
        };
        let config = Config {
            listen: layer(self.listen, file.listen, d.listen),
            secret: self.secret.or(file.secret).or(d.secret),
            io_threads: layer(self.io_threads, file.io_threads, d.io_threads),
            register_queue: layer(self.register_queue, file.register_queue, d.register_queue),
            unregister_queue: layer(self.unregister_queue, file.unregister_queue, d.unregister_queue),
            handoff_queue: layer(self.handoff_queue, file.handoff_queue, d.handoff_queue),
            inbox_queue: layer(self.inbox_queue, file.inbox_queue, d.inbox_queue),
            multi_login_policy: layer(self.multi_login_policy, file.multi_login_policy, d.multi_login_policy),
            max_message_size: layer(self.max_message_size, file.max_message_size, d.max_message_size),
            max_connections: layer(self.max_connections, file.max_connections, d.max_connections),
            handshake_timeout: layer(self.handshake_timeout, file.handshake_timeout, d.handshake_timeout),
            ping_interval: layer(self.ping_interval, file.ping_interval, d.ping_interval),
            idle_timeout: layer(self.idle_timeout, file.idle_timeout, d.idle_timeout),
            close_timeout: layer(self.close_timeout, file.close_timeout, d.close_timeout),
            outbound_budget: layer(self.outbound_budget, file.outbound_budget, d.outbound_budget),
            read_buffer_size: layer(self.read_buffer_size, file.read_buffer_size, d.read_buffer_size),
            socket_send_buffer: self.socket_send_buffer.or(file.socket_send_buffer).or(d.socket_send_buffer),
            shutdown_timeout: layer(self.shutdown_timeout, file.shutdown_timeout, d.shutdown_timeout),
            max_subscriptions: layer(self.max_subscriptions, file.max_subscriptions, d.max_subscriptions),
            stall_after: layer(self.stall_after, file.stall_after, d.stall_after),
            admin_listen,
            admin_token: self.admin_token.or(file.admin_token).or(d.admin_token),
            // Library only: `serve` runs no handler, and always requires tokens.
            workers: d.workers,
            worker_queue: d.worker_queue,
            require_token: d.require_token,
            register_delay: d.register_delay, // testing only: not a flag
        };
        let level = layer(self.log_level, file.log_level, LogLevel::DEFAULT).filter();
        Ok((config, level))
    }
}

pub fn run(args: Args) -> Result<(), Failure> {
    let (config, level) = args.resolve()?;
    config.validate()?;
    let _log_flush = super::logging::init(level); // flushes queued log lines when run returns
    raise_open_file_limit(config.max_connections);

    // Installed before the gateway starts so that an early signal is queued, not fatal.
    let mut signals = Signals::new([SIGINT, SIGTERM])
        .map_err(|e| Failure::Runtime(format!("cannot install the SIGINT/SIGTERM handlers: {e}")))?;
    let drain_limit = config.shutdown_timeout + SHUTDOWN_GRACE;

    let handle = Gateway::start(config)?;
    announce(handle.local_addr(), handle.admin_addr());

    let Some(signal) = signals.forever().next() else {
        return Err(Failure::Runtime("the signal iterator ended without a signal".into()));
    };
    log::info!("received {}: shutting down (at most {})", signal_name(signal), dur(drain_limit));
    // A second signal, or a shutdown that overruns, ends the process without waiting further.
    std::thread::spawn(move || {
        if let Some(signal) = signals.forever().next() {
            log::warn!("received {} again: exiting without waiting for the shutdown", signal_name(signal));
            std::process::exit(1);
        }
    });
    std::thread::spawn(move || {
        std::thread::sleep(drain_limit);
        log::error!("shutdown still running after {}: exiting anyway", dur(drain_limit));
        std::process::exit(1);
    });
    // `shutdown` logs its one-line summary ("shut down in ...") at info itself; logging the
    // returned `ShutdownSummary` here too would print it twice.
    handle.shutdown();
    Ok(())
}

fn signal_name(signal: i32) -> &'static str {
    signal_hook::low_level::signal_name(signal).unwrap_or("a signal")
}

/// The lines on stdout, for scripts that started the gateway on port 0: the listen address
/// first (tests and the stress tooling read it), then the admin address when it is on.
fn announce(addr: SocketAddr, admin: Option<SocketAddr>) {
    let mut out = std::io::stdout().lock();
    let admin = admin.map(|a| format!("msggate admin listening on {a}\n")).unwrap_or_default();
    if let Err(e) = write!(out, "msggate listening on {addr}\n{admin}").and_then(|()| out.flush()) {
        log::warn!("cannot write the listen address to stdout: {e}");
    }
}

/// Raises the open-file limit and reports the connection ceiling it allows.
fn raise_open_file_limit(max_connections: usize) {
    let limit = match super::raise_open_file_limit() {
        Ok(limit) => limit,
        Err(OpenFileLimit { kept: Some(soft), why }) => {
            log::warn!("cannot raise the open-file limit ({why}); staying at {soft}");
            soft
        }
        Err(OpenFileLimit { kept: None, why }) => {
            log::warn!("cannot raise or read the open-file limit: {why}");
            return;
        }
    };
    if limit == rlimit::INFINITY {
        log::info!("open-file limit: unlimited");
        return;
    }
    let ceiling = limit.saturating_sub(RESERVED_FDS);
    log::info!("open-file limit {limit}: room for about {ceiling} connections ({RESERVED_FDS} descriptors reserved)");
    if u64::try_from(max_connections).map_or(true, |m| m > ceiling) {
        log::warn!(
            "max_connections {max_connections} exceeds the ~{ceiling} connections the open-file limit allows; \
             sockets past it cannot be accepted (raise the hard limit: ulimit -Hn)"
        );
    }
}
