//! The subcommands: one file each, arguments beside the command; `connect` is what the
//! commands reaching PostgreSQL and Klaviyo share. Nothing imports this folder but `cli` and
//! `main`.
//!
//! In: parsed arguments. Out: exit statuses, output on stdout, messages on stderr.

pub mod bench;
pub mod connect;
pub mod inspect;
pub mod query;
pub mod run;
pub mod sandbox;
pub mod segment;
pub mod tags;
pub mod validate;

use crate::exit::ExitStatus;

/// Prints `error: {msg}` on stderr: the command failed.
pub fn fail(msg: impl std::fmt::Display) -> ExitStatus {
    crate::output::error(msg);
    ExitStatus::Failure
}
