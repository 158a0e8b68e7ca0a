//! The `kdit` binary: parse the command line, run the command, turn its outcome into the
//! process exit code. The only place kdit exits: at the end of `main`, on a usage error, and
//! on a second Ctrl-C while a command listens for the first (`block_on`). What it prints goes
//! through `kdit::output`.
#![expect(
    clippy::exit,
    reason = "main is the one place the process exits (`[lints]` denies it elsewhere)"
)]

use std::io::Write;

use clap::{CommandFactory, Parser};
use kdit::cli::{Cli, Command, LogFormat, QueryCommand};
use kdit::exit::ExitStatus;
use kdit::output;

fn main() {
    tune_allocator();
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            let status = if e.use_stderr() {
                ExitStatus::Usage
            } else {
                ExitStatus::Success
            };
            std::process::exit(status.code());
        }
    };
    init_logging(cli.log_format, cli.quiet);
    tracing::debug!(version = env!("CARGO_PKG_VERSION"), "kdit starting");
    let status = match run(cli) {
        Ok(status) => status,
        Err(e) => {
            output::error(format_args!("{e:#}"));
            ExitStatus::Failure
        }
    };
    tracing::debug!(exit_code = status.code(), "kdit done");
    std::process::exit(status.code());
}

/// Log lines go to stderr (stdout is for results). The level comes from KDIT_LOG, then
/// RUST_LOG, default `warn` (`error` with --quiet). Colour only on a terminal without NO_COLOR.
/// kdit never logs secrets: connection settings are logged without passwords, API keys never.
fn init_logging(format: LogFormat, quiet: bool) {
    use tracing_subscriber::EnvFilter;
    let default = if quiet { "error" } else { "warn" };
    let directives = std::env::var("KDIT_LOG")
        .or_else(|_| std::env::var("RUST_LOG"))
        .unwrap_or_else(|_| default.to_string());
    let filter = EnvFilter::try_new(&directives).unwrap_or_else(|e| {
        output::warning(format_args!("ignoring the log filter `{directives}`: {e}"));
        EnvFilter::new(default)
    });
    let ansi = output::fancy();
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Text => builder.with_ansi(ansi).try_init(),
        LogFormat::Json => builder
            .json()
            .with_ansi(false)
            .with_current_span(false)
            .try_init(),
    };
}

/// Runs a command's future. A second Ctrl-C while the command listens for the first
/// (`kdit::commands::connect`) ends the process here (130), even if the command is stuck.
fn block_on<F: std::future::Future>(f: F) -> std::io::Result<F::Output> {
    let rt = tokio::runtime::Runtime::new()?;
    rt.spawn(async {
        kdit::commands::connect::second_ctrl_c().await;
        std::process::exit(ExitStatus::Interrupted.code());
    });
    Ok(rt.block_on(f))
}

fn run(cli: Cli) -> anyhow::Result<ExitStatus> {
    match cli.command {
        Command::Validate(args) => Ok(kdit::commands::validate::command(&args)?),
        Command::Schema(args) => Ok(kdit::commands::validate::schema(&args)?),
        Command::Query {
            command: QueryCommand::List(args),
        } => Ok(kdit::commands::query::command(&args)?),
        Command::Plan(args) => Ok(block_on(kdit::commands::run::plan(args))?),
        Command::Run(mut args) => {
            args.apply.quiet = cli.quiet;
            let out = kdit::sync::Output {
                show: args.show,
                mask: args.mask,
                quiet: args.apply.quiet,
                report: args.apply.report.clone(),
                rejects: args.apply.rejects.clone(),
                ..Default::default()
            };
            Ok(block_on(kdit::commands::run::run(
                &args.job,
                &args.apply,
                out,
                None,
                args.dry_run,
            ))?)
        }
        Command::Apply(mut args) => {
            args.apply.quiet = cli.quiet;
            Ok(block_on(kdit::commands::run::apply(args))?)
        }
        Command::Completions(args) => {
            let mut cmd = Cli::command();
            clap_complete::generate(args.shell, &mut cmd, "kdit", &mut output::stdout());
            Ok(ExitStatus::Success)
        }
        Command::Man => {
            let mut out = output::stdout().lock();
            clap_mangen::Man::new(Cli::command()).render(&mut out)?;
            out.flush()?;
            Ok(ExitStatus::Success)
        }
        Command::History(args) => Ok(block_on(kdit::commands::run::history(args))?),
        Command::Query {
            command: QueryCommand::Run(a),
        } => Ok(block_on(async {
            report(kdit::commands::inspect::query_run(&a, &mut output::stdout()).await)
        })?),
        Command::Check(args) => Ok(block_on(async {
            match kdit::commands::inspect::check(&args, &mut output::stdout()).await {
                Ok(true) => ExitStatus::Success,
                Ok(false) => ExitStatus::Failure,
                Err(e) => report::<()>(Err(e)),
            }
        })?),
        Command::Segment {
            command: kdit::commands::segment::SegmentCommand::Preview(args),
        } => Ok(block_on(kdit::commands::segment::preview_command(&args))?),
        Command::Tags { command } => Ok(block_on(async {
            match command {
                kdit::commands::tags::TagsCommand::Show(a) => kdit::commands::tags::show(&a).await,
                kdit::commands::tags::TagsCommand::Add(mut a) => {
                    a.quiet = cli.quiet;
                    kdit::commands::tags::bulk(&a, true).await
                }
                kdit::commands::tags::TagsCommand::Remove(mut a) => {
                    a.quiet = cli.quiet;
                    kdit::commands::tags::bulk(&a, false).await
                }
            }
        })?),
        Command::Preview(args) => Ok(block_on(async {
            report(kdit::commands::inspect::preview(&args, &mut output::stdout()).await)
        })?),
        Command::Bench(args) => Ok(block_on(async {
            report(kdit::commands::bench::command(&args, &mut output::stdout()).await)
        })?),
        Command::Sandbox(args) => {
            let rt = tokio::runtime::Runtime::new()?;
            rt.block_on(kdit::commands::sandbox::command(args))?;
            Ok(ExitStatus::Success)
        }
    }
}

/// Prints an error chain and maps a cancelled query to the interrupted status. A job path
/// refused by `load_job` was reported already: its status stands, nothing more is printed.
fn report<T>(r: anyhow::Result<T>) -> ExitStatus {
    match r {
        Ok(_) => ExitStatus::Success,
        Err(e) => {
            if let Some(failed) = e.downcast_ref::<kdit::commands::connect::Failed>() {
                return failed.status();
            }
            output::error(format_args!("{e:#}"));
            let cancelled = e.chain().any(|c| {
                matches!(
                    c.downcast_ref::<kdit::rows::source::SourceError>(),
                    Some(kdit::rows::source::SourceError::Cancelled { .. })
                ) || matches!(
                    c.downcast_ref::<kdit::rows::RowsError>(),
                    Some(kdit::rows::RowsError::Source(
                        kdit::rows::source::SourceError::Cancelled { .. }
                    ))
                )
            });
            if cancelled {
                ExitStatus::Interrupted
            } else {
                ExitStatus::Failure
            }
        }
    }
}

/// mimalloc: the row stage allocates and frees small strings and payloads per row on its
/// (long-lived) transform threads, where glibc's allocator spent a fifth of the time.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// mimalloc (v3) keeps freed memory for a second before handing it back to the OS. A run
/// frees its snapshot and row batches in bulk, so that second kept 15–25 MB more resident
/// at a million rows than the run ever used at once. 10 ms (mimalloc v2's default) hands it back promptly, at no measured cost in time.
/// `MIMALLOC_PURGE_DELAY`, when set, still wins.
fn tune_allocator() {
    /// `mi_option_purge_delay` in mimalloc's `mi_option_t` (the same in v2 and v3).
    const PURGE_DELAY: std::ffi::c_int = 15;
    unsafe extern "C" {
        fn mi_option_set(option: std::ffi::c_int, value: std::ffi::c_long);
    }
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
        // SAFETY: sets a plain option value; mimalloc reads it at its next purge decision.
        unsafe { mi_option_set(PURGE_DELAY, 10) };
    }
}
