//! The command line: clap-derive types, parsed once, then dispatched by `main`. Each
//! subcommand's arguments live beside the command, in `commands/`.

use clap::{Args, Parser, Subcommand};

/// kdit keeps Klaviyo in step with customer data in PostgreSQL.
///
/// Job files (YAML, in git) say which rows to read and how they become Klaviyo profiles,
/// list members, segments and tags. kdit checks them offline (`validate`), shows what a run
/// would change (`plan`) and makes it so (`run`).
#[derive(Debug, Parser)]
#[command(name = "kdit", version, about, long_about)]
pub struct Cli {
    /// Diagnostic log lines on stderr as `text` or `json` (one object a line, for CI log
    /// collectors). Levels come from KDIT_LOG or RUST_LOG (default `warn`).
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text, env = "KDIT_LOG_FORMAT")]
    pub log_format: LogFormat,
    /// Quieter: no progress and no summary on stderr, only errors are logged.
    #[arg(short, long, global = true)]
    pub quiet: bool,
    #[command(subcommand)]
    pub command: Command,
}

/// How log lines are written to stderr.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Check job files offline: YAML, schema and meaning. Reports every problem at once.
    ///
    /// Needs no database and no credentials. Exit status: 0 valid, 65 invalid job files,
    /// 64 usage error (e.g. a path that does not exist).
    Validate(crate::commands::validate::ValidateArgs),
    /// Print the JSON Schema of job files (or, with --project, of kdit.yaml).
    ///
    /// The committed copies live in schemas/; editors with yaml-language-server use them
    /// for completion and hover docs.
    Schema(crate::commands::validate::SchemaArgs),
    /// Show what a run would change in Klaviyo: profiles, list members, lists to create.
    ///
    /// Reads the query and the state; writes nothing. `-o plan.json` saves the plan for
    /// `kdit apply`. Exit status: 0, or with --detailed-exitcode 0 no changes / 2 changes.
    Plan(crate::commands::run::PlanArgs),
    /// Plan, print the plan, then apply it: bulk imports, list adds and removals.
    ///
    /// One run per job at a time (a PostgreSQL advisory lock). State is recorded only after
    /// Klaviyo confirms, so an interrupted run resumes where it stopped.
    Run(crate::commands::run::RunArgs),
    /// Apply a plan saved by `kdit plan -o`, exactly; refused when the state or the query's
    /// result moved since it was made.
    Apply(crate::commands::run::ApplyPlanArgs),
    /// Past runs of a job, from the ledger: when, how long, what changed, what failed.
    History(crate::commands::run::HistoryArgs),
    /// Connect and check a job: its query runs (LIMIT 0) and returns every mapped column.
    Check(crate::commands::inspect::CheckArgs),
    /// Show the first profiles a job would send, and any rejected rows.
    Preview(crate::commands::inspect::PreviewArgs),
    /// Benchmarks: rows, seconds, throughput and peak memory.
    Bench(crate::commands::bench::BenchArgs),
    /// Stored queries: list them (with their parameters and the jobs that use them), or run one.
    Query {
        #[command(subcommand)]
        command: QueryCommand,
    },
    /// Run a local Klaviyo-compatible API server for trying and testing jobs.
    Sandbox(crate::commands::sandbox::SandboxArgs),
    /// Segments kept as code: see who is in one.
    Segment {
        #[command(subcommand)]
        command: crate::commands::segment::SegmentCommand,
    },
    /// The tag catalog and where each tag is used; put a tag on (or take it off) the lists
    /// and segments matching a pattern, with a plan first.
    ///
    /// `kdit tags show` reads the catalog, the job files and Klaviyo (`--offline`: not
    /// Klaviyo). `kdit tags add|remove TAG --lists 'Weekly*'` prints a plan; `--apply` makes
    /// the changes. Exit status: 0, or with --detailed-exitcode 0 no changes / 2 changes.
    Tags {
        #[command(subcommand)]
        command: crate::commands::tags::TagsCommand,
    },
    /// Print a shell completion script, e.g. `kdit completions bash > /etc/bash_completion.d/kdit`.
    Completions(CompletionsArgs),
    /// Print kdit's man page (roff), e.g. `kdit man > kdit.1 && man ./kdit.1`.
    Man,
}

#[derive(Debug, Args)]
pub struct CompletionsArgs {
    /// The shell to complete for.
    #[arg(value_enum)]
    pub shell: clap_complete::Shell,
}

#[derive(Debug, Subcommand)]
pub enum QueryCommand {
    /// List stored queries (.sql files), their parameters and which jobs use them.
    List(crate::commands::query::QueryListArgs),
    /// Run a stored query (read-only) and show its first rows.
    Run(crate::commands::inspect::QueryRunArgs),
}
