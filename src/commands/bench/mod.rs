//! `kdit bench`: the benchmarks' command and dispatch. `source` times rows from PostgreSQL
//! through the transform; `sync` times whole syncs into an in-process sandbox; `scratch` is
//! what both share (the seeded scratch database, the COPY floor, peak memory).
//!
//! In: parsed arguments. Out: the chosen benchmark's figures, written to the given writer.
//! I/O through the benchmark run.

pub mod scratch;
pub mod source;
pub mod sync;

use std::io::Write;

use anyhow::Result;

/// `kdit bench …`
#[derive(Debug, clap::Args)]
pub struct BenchArgs {
    #[command(subcommand)]
    pub command: BenchCommand,
}

#[derive(Debug, clap::Subcommand)]
pub enum BenchCommand {
    /// Time query + transform + validation against `COPY … TO STDOUT`.
    Source(crate::commands::bench::source::BenchSourceArgs),
    /// Whole syncs into an in-process sandbox: first sync, no-change re-run, 1% changed,
    /// 1% removed from a mirrored list; wall time, profiles/s, API calls, peak memory.
    Sync(crate::commands::bench::sync::BenchSyncArgs),
}

/// `kdit bench …`: runs the chosen benchmark.
pub async fn command(args: &BenchArgs, out: &mut dyn Write) -> Result<()> {
    match &args.command {
        BenchCommand::Source(a) => source::bench_source(a, out).await,
        BenchCommand::Sync(a) => sync::bench_sync(a, out).await,
    }
}
