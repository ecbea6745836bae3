//! The command line: the subcommand enum, the failure type and its exit codes.
//!
//! Each subcommand is a module with an `Args` struct (clap derive) and a
//! `run(Args) -> Result<(), Failure>`. Adding one (e.g. `stress`) is a new module, a new
//! [`Command`] variant and one match arm in [`run`].

mod logging;
mod serve;
mod stress;
mod token;

use std::fmt;

use clap::{CommandFactory as _, FromArgMatches as _, Parser, Subcommand};

/// A WebSocket instant-messaging gateway speaking OpenIM's msggateway protocol.
#[derive(Debug, Parser)]
#[command(name = "msggate", version, about, propagate_version = true)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the gateway until SIGINT or SIGTERM.
    Serve(Box<serve::Args>),
    /// Mint an HS256 token for a client to connect with.
    Token(token::Args),
    /// Load-test a running gateway and check it stays live (churn, relay, idle, fanout).
    Stress(stress::Args),
}

impl Cli {
    /// The full command definition, help texts completed at run time.
    pub fn command_with_defaults() -> clap::Command {
        Cli::command().mut_subcommand("serve", serve::document_defaults)
    }

    /// Parses the process's arguments; on a usage error (or --help) prints and exits like clap.
    pub fn parse_args() -> Cli {
        let matches = Cli::command_with_defaults().get_matches();
        Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit())
    }
}

/// Runs the chosen subcommand.
pub fn run(cli: Cli) -> Result<(), Failure> {
    match cli.command {
        Command::Serve(args) => serve::run(*args),
        Command::Token(args) => token::run(args),
        Command::Stress(args) => stress::run(args),
    }
}

/// Descriptors kept free for things other than connections (logs, polls, wakers, threads).
pub(crate) const RESERVED_FDS: u64 = 64;

/// Why the open-file limit could not be raised.
#[derive(Debug)]
pub(crate) struct OpenFileLimit {
    /// The soft limit left in force, when it could be read.
    pub(crate) kept: Option<u64>,
    /// The system's error.
    pub(crate) why: String,
}

/// Raises the soft open-file limit to the hard limit (`msggate serve` and `msggate stress` both
/// do this at start) and returns the limit now in force ([`rlimit::INFINITY`] for none).
pub(crate) fn raise_open_file_limit() -> Result<u64, OpenFileLimit> {
    rlimit::increase_nofile_limit(u64::MAX).map_err(|e| OpenFileLimit {
        kept: rlimit::getrlimit(rlimit::Resource::NOFILE).ok().map(|(soft, _)| soft),
        why: e.to_string(),
    })
}

/// Why the binary exits unsuccessfully. Printed as `msggate: <message>` on stderr.
#[derive(Debug)]
pub enum Failure {
    /// Bad configuration or arguments (exit 2, like clap's usage errors).
    Config(String),
    /// Something failed while running: binding, signals, threads (exit 1).
    Runtime(String),
}

impl Failure {
    /// The process exit code for this failure.
    pub fn exit_code(&self) -> u8 {
        match self {
            Failure::Config(_) => 2,
            Failure::Runtime(_) => 1,
        }
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Failure::Config(msg) | Failure::Runtime(msg) => f.write_str(msg),
        }
    }
}

impl From<msggate::Error> for Failure {
    fn from(e: msggate::Error) -> Failure {
        match e {
            msggate::Error::Config { .. } => Failure::Config(e.to_string()),
            _ => Failure::Runtime(e.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_definition_is_consistent() {
        Cli::command_with_defaults().debug_assert();
    }

    #[test]
    fn serve_help_states_defaults() {
        let mut cmd = Cli::command_with_defaults();
        let help = cmd.find_subcommand_mut("serve").unwrap().render_help().to_string();
        let d = msggate::Config::default();
        assert!(help.contains(&format!("[default: {}]", d.register_queue)), "{help}");
        assert!(help.contains("[default: 10s]") && help.contains("[default: info]"), "{help}");
        assert!(help.contains("MSGGATE_REGISTER_QUEUE") && help.contains("MSGGATE_CONFIG"), "{help}");
    }
}
