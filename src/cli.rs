//! The command line: clap-derive types, parsed once, then dispatched.

use clap::{Parser, Subcommand};

/// kdit keeps Klaviyo in step with customer data in PostgreSQL.
#[derive(Debug, Parser)]
#[command(name = "kdit", version, about, long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a local Klaviyo-compatible API server for trying and testing jobs.
    Sandbox(crate::sandbox::SandboxArgs),
    /// Stored queries: run one (read-only) and preview its rows.
    Query(crate::inspect::QueryArgs),
    /// Connect and check a job: its query runs (LIMIT 0) and returns every mapped column.
    Check(crate::inspect::CheckArgs),
    /// Show the first profiles a job would send, and any rejected rows.
    Preview(crate::inspect::PreviewArgs),
    /// Benchmarks.
    Bench(crate::bench::BenchArgs),
}
