//! The commands that touch PostgreSQL and Klaviyo — `plan`, `run`, `apply`, `history` —
//! from parsed arguments to an exit status: load and check the job, connect, then hand over
//! to `sync`.
//!
//! In: clap arguments and the environment. Out: an `ExitStatus`. I/O.

use std::path::{Path, PathBuf};

use clap::Args;

use crate::exit::ExitStatus;
use crate::job::compile::Job;
use crate::job::diagnostic::{Format, Severity};
use crate::klaviyo::{ApiKey, Client, Config};
use crate::rows::source::{Interrupt, Source, SourceConfig};
use crate::sandbox::{RateLimits, Sandbox, SandboxConfig};
use crate::state::State;
use crate::sync::feed::PgRows;
use crate::sync::{self, Output};

/// Environment variables kdit reads (documented in the README).
pub mod env {
    pub const DATABASE_URL: &str = "DATABASE_URL";
    pub const KLAVIYO_API_KEY: &str = "KLAVIYO_API_KEY";
    pub const KLAVIYO_BASE_URL: &str = "KLAVIYO_BASE_URL";
    pub const STATE_SCHEMA: &str = "KDIT_STATE_SCHEMA";
}

/// Where kdit sends its requests.
#[derive(Debug, Clone, Args)]
pub struct KlaviyoArgs {
    /// Use a local sandbox instead of Klaviyo: started in-process, its data kept in
    /// `.kdit/sandbox.json` so runs see what earlier runs sent. Needs no API key.
    #[arg(long)]
    pub sandbox: bool,
    /// Klaviyo's rate limits, respected client-side; `off` only makes sense against a
    /// sandbox started with `--rate-limits off`.
    #[arg(long, value_enum, default_value_t = RateLimits::Klaviyo)]
    pub rate_limits: RateLimits,
}

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

/// A failure to report and the exit status it means.
pub struct Failed(pub ExitStatus);

/// Loads and checks one job, printing its problems to stderr.
pub fn load_job(path: &Path) -> Result<Job, Failed> {
    let v = match crate::job::workspace::validate(&[path.to_path_buf()]) {
        Ok(v) => v,
        Err(e) => {
            eprintln!("error: {e}");
            return Err(Failed(ExitStatus::Usage));
        }
    };
    let errors = v
        .diagnostics
        .iter()
        .filter(|d| d.severity == Severity::Error)
        .count();
    if errors > 0 || v.jobs.is_empty() {
        let mut buf = Vec::new();
        let _ = crate::job::workspace::render(&v, Format::Human, &mut buf);
        eprint!("{}", String::from_utf8_lossy(&buf));
        return Err(Failed(ExitStatus::InvalidJobs));
    }
    Ok(v.jobs.into_iter().next().expect("one valid job"))
}

/// The Klaviyo client (and the in-process sandbox it talks to, kept alive with it).
pub struct Target {
    pub client: Client,
    pub sandbox: Option<Sandbox>,
}

impl Target {
    pub async fn new(args: &KlaviyoArgs) -> Result<Target, String> {
        if args.sandbox {
            std::fs::create_dir_all(".kdit").map_err(|e| format!("cannot create .kdit/: {e}"))?;
            let sb = Sandbox::start(SandboxConfig {
                rate_limits: args.rate_limits,
                state_file: Some(PathBuf::from(".kdit/sandbox.json")),
                ..SandboxConfig::default()
            })
            .await
            .map_err(|e| format!("cannot start the sandbox: {e:#}"))?;
            let mut config = Config::new(sb.base_url(), ApiKey::new(sb.api_key()));
            config.rate_limits = args.rate_limits == RateLimits::Klaviyo;
            let client = Client::new(config).map_err(|e| e.to_string())?;
            return Ok(Target {
                client,
                sandbox: Some(sb),
            });
        }
        let key = std::env::var(env::KLAVIYO_API_KEY).map_err(|_| {
            format!(
                "{} is not set\nhint: export your Klaviyo private API key, or add --sandbox to try the job against a local sandbox",
                env::KLAVIYO_API_KEY
            )
        })?;
        let base = std::env::var(env::KLAVIYO_BASE_URL)
            .unwrap_or_else(|_| crate::klaviyo::client::DEFAULT_BASE_URL.to_string());
        let mut config = Config::new(base, ApiKey::new(key));
        config.rate_limits = args.rate_limits == RateLimits::Klaviyo;
        let client = Client::new(config).map_err(|e| e.to_string())?;
        Ok(Target {
            client,
            sandbox: None,
        })
    }

    /// Keeps what the sandbox holds for the next run.
    pub fn save(&self) {
        if let Some(sb) = &self.sandbox
            && let Err(e) = sb.save()
        {
            eprintln!("warning: could not save the sandbox's data: {e:#}");
        }
    }
}

/// The state schema: `KDIT_STATE_SCHEMA`, else the project's, else `kdit` (`kdit_sandbox`
/// for sandbox runs, so they never mix with real Klaviyo's state).
fn state_schema(job: &Job, sandbox: bool) -> String {
    if let Ok(s) = std::env::var(env::STATE_SCHEMA) {
        return s;
    }
    let base = job
        .project
        .as_ref()
        .and_then(|p| p.spec.state.as_ref()?.schema.clone())
        .unwrap_or_else(|| "kdit".to_string());
    if sandbox {
        format!("{base}_sandbox")
    } else {
        base
    }
}

/// Opens the state store for the account the client reaches (one credential check).
async fn open_state<'a>(
    db: &'a tokio_postgres::Client,
    job: &Job,
    target: &Target,
    sandbox: bool,
) -> Result<State<'a>, String> {
    let account = target.client.account().await.map_err(|e| match e.status() {
        Some(400 | 401 | 403) => format!("Klaviyo refused the API key: {e}\nhint: check KLAVIYO_API_KEY (a private key with the scopes kdit needs)"),
        _ => e.to_string(),
    })?;
    let state = State::open(db, &state_schema(job, sandbox))
        .await
        .map_err(|e| e.to_string())?;
    Ok(state.for_account(&account))
}

async fn connect() -> Result<Source, String> {
    let config = SourceConfig::from_env().map_err(|e| e.to_string())?;
    Source::connect(config).await.map_err(|e| e.to_string())
}

fn holder() -> String {
    let host = std::fs::read_to_string("/etc/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "localhost".into());
    format!("{host}:{}", std::process::id())
}

fn fail(msg: impl std::fmt::Display) -> ExitStatus {
    eprintln!("error: {msg}");
    ExitStatus::Failure
}

/// What plan and run need before anything else: the checked job, the source pool, the
/// Klaviyo client and one connection for the state (which the run lock lives on).
struct Session {
    job: Job,
    source: Source,
    target: Target,
    db: deadpool_postgres::Object,
}

impl Session {
    /// Loads the job and connects; on failure, the message is printed and the status returned.
    async fn open(job_path: &Path, klaviyo: &KlaviyoArgs) -> Result<Session, ExitStatus> {
        let job = load_job(job_path).map_err(|Failed(s)| s)?;
        let source = connect().await.map_err(fail)?;
        let target = Target::new(klaviyo).await.map_err(fail)?;
        let db = source.client().await.map_err(fail)?;
        Ok(Session {
            job,
            source,
            target,
            db,
        })
    }
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
    let rows = match PgRows::new(&job, source.clone(), Some(Interrupt::ctrl_c())) {
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
    sync::print_plan(&plan, &out);
    if let Some(path) = &args.out {
        if let Err(e) = crate::plan::file::save(&plan, path) {
            return fail(e);
        }
        eprintln!(
            "plan saved to {}; apply it with `kdit apply {}`",
            path.display(),
            path.display()
        );
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
        eprintln!("error: {e}");
        eprintln!(
            "interrupted before any write; run `kdit run {}` again to start over",
            job_path.display()
        );
        ExitStatus::Interrupted
    };
    if dry_run {
        return match sync::make_plan(&job, &rows, &state, &target.client, None).await {
            Ok((plan, _)) => {
                sync::print_plan(&plan, &out);
                ExitStatus::Success
            }
            Err(e) if stop.fired() => interrupted(&e),
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
        Err(e) if stop.fired() => interrupted(&e),
        Err(e) => fail(e),
    }
}

/// What Ctrl-C during `kdit run` sets: `flag` stops the apply after the batches in flight,
/// `interrupt` cancels a streaming query on the server.
struct Stop {
    flag: std::sync::Arc<std::sync::atomic::AtomicBool>,
    interrupt: Interrupt,
}

impl Stop {
    fn fired(&self) -> bool {
        self.flag.load(std::sync::atomic::Ordering::Relaxed)
    }
}

/// The first Ctrl-C sets the flag and cancels the query; the second ends the process (130).
fn stop_on_ctrl_c() -> Stop {
    let flag = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (trigger, interrupt) = Interrupt::new();
    let f = flag.clone();
    tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            eprintln!(
                "stopping: cancelling the query, or letting batches in flight confirm (Ctrl-C again to quit now)"
            );
            f.store(true, std::sync::atomic::Ordering::Relaxed);
            trigger.fire();
            if tokio::signal::ctrl_c().await.is_ok() {
                std::process::exit(ExitStatus::Interrupted.code());
            }
        }
    });
    Stop { flag, interrupt }
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
        Err(Failed(s)) => return s,
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
        println!(
            "{}",
            serde_json::to_string_pretty(&runs).unwrap_or_default()
        );
        return ExitStatus::Success;
    }
    if out.is_empty() {
        println!("no runs of `{}` yet", job.name());
        return ExitStatus::Success;
    }
    println!(
        "{:>5}  {:<19}  {:>7}  {:<11}  {:<7}  summary",
        "run", "started (UTC)", "seconds", "status", "target"
    );
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
        println!(
            "{:>5}  {:<19}  {:>7.1}  {:<11}  {:<7}  {summary}",
            r.id,
            r.started_at,
            r.seconds,
            r.status,
            if *sb { "sandbox" } else { "klaviyo" }
        );
    }
    ExitStatus::Success
}
