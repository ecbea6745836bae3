//! The crate's one error type and its `Result` alias.
//!
//! Owns the classification of failures a caller of the library can see: bad configuration,
//! I/O at start-up, and token problems. It must not grow per-session outcomes: how a single
//! session ended (peer closed normally, kicked, slow consumer, protocol violation, bug) is a
//! [`crate::SessionEnd`] and is counted in metrics, never surfaced as an `Error` to the caller.

use std::io;

/// What can go wrong when starting, configuring or talking to a gateway.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A configuration field is out of range; `field` names it as the CLI and TOML spell it.
    #[error("invalid configuration: {field}: {reason}")]
    Config {
        /// The offending field, e.g. `register_queue`.
        field: &'static str,
        /// Why the value was refused.
        reason: String,
    },
    /// Binding, polling or spawning failed at start-up.
    #[error("I/O error while {context}: {source}")]
    Io {
        /// What the gateway was doing.
        context: &'static str,
        /// The operating system's error.
        #[source]
        source: io::Error,
    },
    /// A call into a running gateway was malformed: a push whose message is not a JSON object,
    /// an empty user id. Nothing was sent.
    #[error("bad request: {0}")]
    BadRequest(String),
    /// A token could not be verified (see [`crate::TokenError`] for the OpenIM code).
    #[error(transparent)]
    Token(#[from] crate::token::TokenError),
}

impl Error {
    pub(crate) fn io(context: &'static str) -> impl FnOnce(io::Error) -> Error {
        move |source| Error::Io { context, source }
    }

    pub(crate) fn config(field: &'static str, reason: impl Into<String>) -> Error {
        Error::Config { field, reason: reason.into() }
    }
}

/// `Result` with the crate's [`Error`] as the default error type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
