//! `msggate`: the command-line front end of the msggate library.
//!
//! A thin layer: it parses flags, environment and an optional TOML file into a
//! [`msggate::Config`], sets up logging, file-descriptor limits and signal handling, and hands
//! everything else to the library. Subcommands live in `src/cli/`, one module each.

#![forbid(unsafe_code)]

mod cli;

use std::process::ExitCode;

fn main() -> ExitCode {
    let args = cli::Cli::parse_args();
    match cli::run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => {
            eprintln!("msggate: {failure}");
            ExitCode::from(failure.exit_code())
        }
    }
}
