//! What the commands that touch PostgreSQL and Klaviyo share before any work: the job
//! loaded and checked (`load_job`), the Klaviyo target (`--sandbox` or the API key), the
//! source pool and the state store for the account, the run holder's name and the Ctrl-C
//! listener (the first Ctrl-C stops the command's stages; the second is `main`'s, which
//! waits for it with `second_ctrl_c`).
//!
//! In: a job path, `KlaviyoArgs` and the environment (`env`). Out: a `Job`, a `Target`, a
//! `Session`, a `State`, a `Stop`; a `Failed` status once the problem is printed on stderr.
//! I/O: reads job files, connects to PostgreSQL and Klaviyo, may start a sandbox.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, LazyLock};

use clap::Args;

use crate::commands::fail;
use crate::exit::ExitStatus;
use crate::job::compile::Job;
use crate::job::diagnostic::{Format, Severity};
use crate::klaviyo::{ApiKey, Client, Config};
use crate::output::{self, Hinted};
use crate::rows::source::{Interrupt, Source, SourceConfig};
use crate::sandbox::{RateLimits, Sandbox, SandboxConfig};
use crate::state::State;

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

/// Why no job was loaded. The problem is already printed on stderr.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Failed {
    /// The path does not exist or cannot be searched.
    #[error("the job path cannot be read (reported above)")]
    Path,
    /// The path holds more than one job, and the command acts on one.
    #[error("the path holds more than one job (reported above)")]
    SeveralJobs,
    /// The job is invalid, or the path holds none.
    #[error("the job is invalid (reported above)")]
    Invalid,
}

impl Failed {
    /// The exit status it means: usage for a path that names no job or several.
    pub fn status(self) -> ExitStatus {
        match self {
            Failed::Path | Failed::SeveralJobs => ExitStatus::Usage,
            Failed::Invalid => ExitStatus::InvalidJobs,
        }
    }
}

/// Loads and checks the one job at `path` (a job file, or a folder holding one), printing
/// its problems to stderr. A path holding several jobs is refused before anything connects:
/// the command would otherwise act on one of them, unasked.
pub fn load_job(path: &Path) -> Result<Job, Failed> {
    let v = match crate::job::workspace::validate(&[path.to_path_buf()]) {
        Ok(v) => v,
        Err(e) => {
            output::error(e);
            return Err(Failed::Path);
        }
    };
    let files: Vec<String> = v
        .files
        .iter()
        .filter(|f| f.kind == "job")
        .map(|f| f.path.display().to_string())
        .collect();
    if files.len() > 1 {
        output::error(
            Hinted::new(format!(
                "{} holds {} jobs: {}; name one",
                path.display(),
                files.len(),
                files.join(", ")
            ))
            .hint(format!(
                "give the file of the one job to act on, e.g. {}",
                files[0]
            )),
        );
        return Err(Failed::SeveralJobs);
    }
    let errors = v
        .diagnostics
        .iter()
        .filter(|d| d.severity == Severity::Error)
        .count();
    if errors > 0 || v.jobs.is_empty() {
        let mut buf = Vec::new();
        let _ = crate::commands::validate::render(&v, Format::Human, &mut buf);
        output::say(String::from_utf8_lossy(&buf));
        return Err(Failed::Invalid);
    }
    Ok(v.jobs.into_iter().next().expect("one valid job"))
}

/// The Klaviyo client (and the in-process sandbox it talks to, kept alive with it).
pub struct Target {
    pub client: Client,
    pub sandbox: Option<Sandbox>,
}

impl Target {
    pub async fn new(args: &KlaviyoArgs) -> Result<Target, Hinted> {
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
            Hinted::new(format!("{} is not set", env::KLAVIYO_API_KEY)).hint(
                "export your Klaviyo private API key, or add --sandbox to try the job against a local sandbox",
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
            output::warning(format_args!("could not save the sandbox's data: {e:#}"));
        }
    }
}

/// The state schema: `KDIT_STATE_SCHEMA`, else the project's, else `kdit` (`kdit_sandbox`
/// for sandbox runs, so they never mix with real Klaviyo's state).
pub(crate) fn state_schema(job: &Job, sandbox: bool) -> String {
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
pub(crate) async fn open_state<'a>(
    db: &'a tokio_postgres::Client,
    job: &Job,
    target: &Target,
    sandbox: bool,
) -> Result<State<'a>, Hinted> {
    let account = target
        .client
        .account()
        .await
        .map_err(|e| match e.status() {
            Some(400 | 401 | 403) => Hinted::new(format!("Klaviyo refused the API key: {e}"))
                .hint("check KLAVIYO_API_KEY (a private key with the scopes kdit needs)"),
            _ => Hinted::new(e.to_string()),
        })?;
    let state = State::open(db, &state_schema(job, sandbox))
        .await
        .map_err(|e| Hinted::new(e.to_string()))?;
    Ok(state.for_account(&account))
}

pub(crate) async fn connect() -> Result<Source, String> {
    let config = SourceConfig::from_env().map_err(|e| e.to_string())?;
    Source::connect(config).await.map_err(|e| e.to_string())
}

pub(crate) fn holder() -> String {
    let host = std::fs::read_to_string("/etc/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "localhost".into());
    format!("{host}:{}", std::process::id())
}

/// What plan and run need before anything else: the checked job, the source pool, the
/// Klaviyo client and one connection for the state (which the run lock lives on).
pub(crate) struct Session {
    pub job: Job,
    pub source: Source,
    pub target: Target,
    pub db: deadpool_postgres::Object,
}

impl Session {
    /// Loads the job and connects; on failure, the message is printed and the status returned.
    pub(crate) async fn open(
        job_path: &Path,
        klaviyo: &KlaviyoArgs,
    ) -> Result<Session, ExitStatus> {
        let job = load_job(job_path).map_err(Failed::status)?;
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

/// What Ctrl-C during `kdit run` sets: `flag` stops the apply after the batches in flight,
/// `interrupt` cancels a streaming query on the server.
pub(crate) struct Stop {
    pub flag: Arc<AtomicBool>,
    pub interrupt: Interrupt,
}

/// Told by the listener of the second Ctrl-C; `main` waits for it (`second_ctrl_c`).
static QUIT: LazyLock<tokio::sync::Notify> = LazyLock::new(tokio::sync::Notify::new);

/// Resolves when Ctrl-C is pressed a second time while a command listens for it: `main`
/// then ends the process (130). Ctrl-C needs a second way out because, once a command
/// listens for it, it no longer ends the process, and the cancel request itself may hang.
pub async fn second_ctrl_c() {
    QUIT.notified().await;
}

/// Listens for Ctrl-C: the first says `notice` on stderr and calls `first`; the second is
/// passed on to `main` (`second_ctrl_c`).
fn on_ctrl_c(notice: &'static str, first: impl FnOnce() + Send + 'static) {
    tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            output::say_line(notice);
            first();
            if tokio::signal::ctrl_c().await.is_ok() {
                QUIT.notify_one();
            }
        }
    });
}

/// An interrupt that fires when the user presses Ctrl-C (the query is cancelled on the
/// server); a second Ctrl-C ends kdit (130).
pub(crate) fn cancel_on_ctrl_c() -> Interrupt {
    let (trigger, interrupt) = Interrupt::new();
    on_ctrl_c(
        "interrupted: cancelling the query on the server (Ctrl-C again to quit now)",
        move || trigger.fire(),
    );
    interrupt
}

/// The first Ctrl-C sets the flag and cancels the query; the second ends kdit (130).
pub(crate) fn stop_on_ctrl_c() -> Stop {
    let flag = Arc::new(AtomicBool::new(false));
    let (trigger, interrupt) = Interrupt::new();
    let f = flag.clone();
    on_ctrl_c(
        "stopping: cancelling the query, or letting batches in flight confirm (Ctrl-C again to quit now)",
        move || {
            f.store(true, Ordering::Relaxed);
            trigger.fire();
        },
    );
    Stop { flag, interrupt }
}
