//! The commands that touch PostgreSQL and Klaviyo — `plan`, `run`, `apply`, `history` —
//! from parsed arguments to an exit status: load and check the job, connect (`connect`), then
//! hand over to `sync`.
//!
//! In: clap arguments and the environment. Out: an `ExitStatus`. I/O.

use std::path::{Path, PathBuf};

use clap::Args;

use crate::apply::report::Report;
use crate::commands::connect::cancel_on_ctrl_c;
use crate::commands::connect::{
    KlaviyoArgs, Session, connect, holder, load_job, open_state, state_schema, stop_on_ctrl_c,
};
use crate::commands::fail;
use crate::exit::ExitStatus;
use crate::job::compile::Job;
use crate::output;
use crate::plan::Plan;
use crate::plan::render::{self, Options};
use crate::state::State;
use crate::sync::feed::PgRows;
use crate::sync::{self, Narrate, Output};

/// Options of `kdit plan`.
#[derive(Debug, Clone, Args)]
pub struct PlanArgs {
    /// The job file.
    pub job: PathBuf,
    /// Save the plan to this file, for `kdit apply`.
    #[arg(short = 'o', long)]
    pub out: Option<PathBuf>,
    /// Examples shown per kind of change.
    #[arg(long, default_value_t = 3)]
    pub show: usize,
    /// Mask emails and phone numbers (for plans posted to pull requests).
    #[arg(long)]
    pub mask: bool,
    /// Print the plan as JSON.
    #[arg(long)]
    pub json: bool,
    /// Exit 0 when there is nothing to change, 2 when there is (1 on errors).
    #[arg(long)]
    pub detailed_exitcode: bool,
    #[command(flatten)]
    pub klaviyo: KlaviyoArgs,
}

/// Options of `kdit run` and `kdit apply`.
#[derive(Debug, Clone, Args)]
pub struct ApplyArgs {
    /// Write a JSON report (counts, durations, API calls, retries) to this file.
    #[arg(long)]
    pub report: Option<PathBuf>,
    /// Write rejected and failed rows to this file (CSV when it ends in .csv, else JSON lines).
    #[arg(long)]
    pub rejects: Option<PathBuf>,
    /// No progress and no summary on stderr: set by the global `-q/--quiet`.
    #[arg(skip)]
    pub quiet: bool,
    #[command(flatten)]
    pub klaviyo: KlaviyoArgs,
}

/// Options of `kdit run`.
#[derive(Debug, Clone, Args)]
pub struct RunArgs {
    /// The job file.
    pub job: PathBuf,
    /// Print the plan and stop.
    #[arg(long)]
    pub dry_run: bool,
    /// Examples shown per kind of change.
    #[arg(long, default_value_t = 3)]
    pub show: usize,
    /// Mask emails and phone numbers in the plan.
    #[arg(long)]
    pub mask: bool,
    #[command(flatten)]
    pub apply: ApplyArgs,
}

/// Options of `kdit apply`.
#[derive(Debug, Clone, Args)]
pub struct ApplyPlanArgs {
    /// A plan saved by `kdit plan -o`.
    pub plan: PathBuf,
    #[command(flatten)]
    pub apply: ApplyArgs,
}

/// Options of `kdit history`.
#[derive(Debug, Clone, Args)]
pub struct HistoryArgs {
    /// The job file.
    pub job: PathBuf,
    /// How many runs to show.
    #[arg(long, default_value_t = 20)]
    pub limit: i64,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

/// `kdit plan`.
pub async fn plan(args: PlanArgs) -> ExitStatus {
    let Session {
        job,
        source,
        target,
        db,
    } = match Session::open(&args.job, &args.klaviyo).await {
        Ok(s) => s,
        Err(status) => return status,
    };
    let state = match open_state(&db, &job, &target, args.klaviyo.sandbox).await {
        Ok(s) => s,
        Err(e) => return fail(e),
    };
    let rows = match PgRows::new(&job, source.clone(), Some(cancel_on_ctrl_c())) {
        Ok(r) => r,
        Err(e) => return fail(e),
    };
    let (plan, _) = match sync::make_plan(&job, &rows, &state, &target.client, None).await {
        Ok(p) => p,
        Err(e) => return fail(e),
    };
    let out = Output {
        show: args.show,
        mask: args.mask,
        json: args.json,
        ..Output::default()
    };
    print_plan(&plan, &out);
    if let Some(path) = &args.out {
        if let Err(e) = crate::plan::file::save(&plan, path) {
            return fail(e);
        }
        output::say_line(format_args!(
            "plan saved to {}; apply it with `kdit apply {}`",
            path.display(),
            path.display()
        ));
    }
    if args.detailed_exitcode && plan.has_changes() {
        ExitStatus::Changes
    } else {
        ExitStatus::Success
    }
}

/// `kdit run` (and `kdit apply PLAN` when `saved` is given).
pub async fn run(
    job_path: &Path,
    args: &ApplyArgs,
    out: Output,
    saved: Option<crate::plan::Plan>,
    dry_run: bool,
) -> ExitStatus {
    let Session {
        job,
        source,
        target,
        db,
    } = match Session::open(job_path, &args.klaviyo).await {
        Ok(s) => s,
        Err(status) => return status,
    };
    let state = match open_state(&db, &job, &target, args.klaviyo.sandbox).await {
        Ok(s) => s,
        Err(e) => return fail(e),
    };
    // One Ctrl-C handler for the whole run, installed before the query: it cancels the query
    // on the server while rows stream, and stops the apply after the batches in flight.
    let stop = stop_on_ctrl_c();
    let rows = match PgRows::new(&job, source.clone(), Some(stop.interrupt.clone())) {
        Ok(r) => r,
        Err(e) => return fail(e),
    };
    let interrupted = |e: &dyn std::fmt::Display| {
        output::error(e);
        output::say_line(format_args!(
            "interrupted before any write; run `kdit run {}` again to start over",
            job_path.display()
        ));
        ExitStatus::Interrupted
    };
    if dry_run {
        return match sync::make_plan(&job, &rows, &state, &target.client, None).await {
            Ok((plan, _)) => {
                print_plan(&plan, &out);
                ExitStatus::Success
            }
            Err(e) if e.is_cancelled() => interrupted(&e),
            Err(e) => fail(e),
        };
    }
    let result = sync::run(
        &job,
        &rows,
        &state,
        &target.client,
        &holder(),
        saved.as_ref(),
        &out,
        &Printer,
        stop.flag.clone(),
    )
    .await;
    target.save();
    match result {
        Ok(status) => status,
        Err(sync::SyncError::Apply(crate::apply::ApplyError::Interrupted)) => {
            ExitStatus::Interrupted
        }
        // Ctrl-C while the query streamed: it was cancelled; nothing was written.
        Err(e) if e.is_cancelled() => interrupted(&e),
        Err(e) => fail(e),
    }
}

/// `kdit apply PLAN`.
pub async fn apply(args: ApplyPlanArgs) -> ExitStatus {
    let plan = match crate::plan::file::load(&args.plan) {
        Ok(p) => p,
        Err(e) => return fail(e),
    };
    let job_path = PathBuf::from(&plan.job_file);
    let out = Output {
        quiet: args.apply.quiet,
        report: args.apply.report.clone(),
        rejects: args.apply.rejects.clone(),
        ..Output::default()
    };
    run(&job_path, &args.apply, out, Some(plan), false).await
}

/// `kdit history`.
pub async fn history(args: HistoryArgs) -> ExitStatus {
    let job = match load_job(&args.job) {
        Ok(j) => j,
        Err(failed) => return failed.status(),
    };
    let source = match connect().await {
        Ok(s) => s,
        Err(e) => return fail(e),
    };
    let db = match source.client().await {
        Ok(c) => c,
        Err(e) => return fail(e),
    };
    let mut out = Vec::new();
    for sandbox in [false, true] {
        let state = match State::open(&db, &state_schema(&job, sandbox)).await {
            Ok(s) => s,
            Err(e) => return fail(e),
        };
        match state.history(job.name(), args.limit).await {
            Ok(runs) => out.extend(runs.into_iter().map(|r| (sandbox, r))),
            Err(e) => return fail(e),
        }
    }
    if args.json {
        let runs: Vec<serde_json::Value> = out
            .iter()
            .map(|(sb, r)| serde_json::json!({"sandbox": sb, "run": r}))
            .collect();
        output::data_line(serde_json::to_string_pretty(&runs).unwrap_or_default());
        return ExitStatus::Success;
    }
    if out.is_empty() {
        output::data_line(format_args!("no runs of `{}` yet", job.name()));
        return ExitStatus::Success;
    }
    output::data_line(format_args!(
        "{:>5}  {:<19}  {:>7}  {:<11}  {:<7}  summary",
        "run", "started (UTC)", "seconds", "status", "target"
    ));
    for (sb, r) in &out {
        let s = &r.summary;
        let summary = if s.is_object() && s.get("created").is_some() {
            format!(
                "{} created, {} updated, {} unchanged, {} rejected, {} failed",
                s["created"], s["updated"], s["unchanged"], s["rejected"], s["failed"]
            )
        } else if let Some(e) = s.get("error").and_then(|e| e.as_str()) {
            e.to_string()
        } else {
            String::new()
        };
        output::data_line(format_args!(
            "{:>5}  {:<19}  {:>7.1}  {:<11}  {:<7}  {summary}",
            r.id,
            r.started_at,
            r.seconds,
            r.status,
            if *sb { "sandbox" } else { "klaviyo" }
        ));
    }
    ExitStatus::Success
}

/// Prints a plan to stdout in the chosen rendering.
fn print_plan(plan: &Plan, out: &Output) {
    let opts = Options {
        show: out.show,
        mask: out.mask,
    };
    if out.json {
        output::data_line(render::json(plan, opts));
    } else {
        output::data(render::human(plan, opts));
    }
}

/// What `kdit run` and `kdit apply` show as the run goes (`sync::Narrate`).
struct Printer;

impl Narrate for Printer {
    fn plan(&self, plan: &Plan, out: &Output) {
        print_plan(plan, out);
    }

    fn guard_tripped(&self) {
        output::error(
            output::Hinted::new("a guard stopped the run before any write (see Guards above)")
                .hint("if the change is intended, raise the guard in the job file for this run"),
        );
    }

    fn interrupted(&self, job: &Job) {
        output::say_line(format_args!(
            "interrupted: batches already sent were confirmed and recorded; run `kdit run {}` again to resume",
            job.path.display()
        ));
    }

    fn done(&self, report: &Report, out: &Output) {
        if !out.quiet {
            output::say(report.summary());
            if let Some(path) = &out.report {
                output::say_line(format_args!("report: {}", path.display()));
            }
        }
    }
}
