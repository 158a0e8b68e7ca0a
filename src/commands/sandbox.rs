//! `kdit sandbox`: start the local Klaviyo API (`crate::sandbox`) and serve until Ctrl-C or
//! SIGTERM, saving its state to `--state-file`; or, with `--bench`, measure bulk imports
//! against it.
//!
//! In: `SandboxArgs`. Out: the base URL and API key on stdout (a script may read them), the
//! notices on stderr; the bench's timings on stdout. I/O: network, `--state-file`.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::output;
use crate::sandbox::{FaultSpec, REVISION, RateLimits, Sandbox, SandboxConfig, bench_bulk_from};

/// Options of `kdit sandbox`.
#[derive(Debug, Clone, clap::Args)]
pub struct SandboxArgs {
    /// Port to listen on (0 picks a free one).
    #[arg(long, default_value_t = 4010)]
    pub port: u16,
    /// `klaviyo` enforces Klaviyo's per-endpoint limits; `off` for speed runs.
    #[arg(long, value_enum, default_value_t = RateLimits::Klaviyo)]
    pub rate_limits: RateLimits,
    /// Faults to inject, e.g. `429=10%,5xx=5%,drop=2%,slow=1%:2s,bulk-fail=1%` (see docs/sandbox.md).
    #[arg(long, default_value = "")]
    pub faults: String,
    /// Seed for fault decisions and generated ids (same seed, same request order → same faults).
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Private API key to accept (default: a fresh `pk_sandbox_…` key, printed at start).
    #[arg(long, env = "KDIT_SANDBOX_API_KEY")]
    pub api_key: Option<String>,
    /// Keep state in this file between restarts (loaded at start, saved on Ctrl-C or SIGTERM).
    #[arg(long)]
    pub state_file: Option<PathBuf>,
    /// Measure bulk imports against a fresh in-process sandbox (rate limits off) and exit.
    #[arg(long)]
    pub bench: bool,
    /// With `--bench`: how many profiles to import, in jobs of 10,000 (e.g. 1000000).
    #[arg(long, default_value_t = 10_000, requires = "bench")]
    pub bench_profiles: usize,
}

/// Runs the sandbox until Ctrl-C.
pub async fn command(args: SandboxArgs) -> anyhow::Result<()> {
    let faults: FaultSpec = args
        .faults
        .parse()
        .map_err(|e: String| anyhow::anyhow!("--faults: {e}"))?;
    if args.bench {
        return bench(args.bench_profiles).await;
    }
    let sb = Sandbox::start(SandboxConfig {
        port: args.port,
        api_key: args.api_key,
        rate_limits: args.rate_limits,
        faults,
        seed: args.seed,
        state_file: args.state_file.clone(),
        ..SandboxConfig::default()
    })
    .await?;
    // stdout carries data a script may read; everything else goes to stderr.
    output::data_line(format_args!("base_url: {}", sb.base_url()));
    output::data_line(format_args!("api_key:  {}", sb.api_key()));
    output::say_line(format_args!(
        "kdit sandbox: Klaviyo API revision {REVISION} emulated; rate limits {}; inspect state at {}/_sandbox/stats; Ctrl-C stops",
        match args.rate_limits {
            RateLimits::Klaviyo => "on",
            RateLimits::Off => "off",
        },
        sb.base_url()
    ));
    wait_for_stop().await?;
    if let Some(p) = &args.state_file {
        sb.save()?;
        output::say_line(format_args!("kdit sandbox: state saved to {}", p.display()));
    }
    Ok(())
}

/// Ctrl-C, or SIGTERM on Unix (what service managers and `kill` send).
async fn wait_for_stop() -> anyhow::Result<()> {
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            r = tokio::signal::ctrl_c() => r?,
            _ = term.recv() => {}
        }
        Ok(())
    }
    #[cfg(not(unix))]
    {
        tokio::signal::ctrl_c().await?;
        Ok(())
    }
}

/// Imports `total` generated profiles in bulk jobs of 10,000 over HTTP (rate limits off) and
/// prints how long each job took to be accepted and completed, and the memory held.
async fn bench(total: usize) -> anyhow::Result<()> {
    let sb = Sandbox::start(SandboxConfig {
        rate_limits: RateLimits::Off,
        ..SandboxConfig::default()
    })
    .await?;
    let rss_before = rss_kib();
    let start = Instant::now();
    let mut worst = Duration::ZERO;
    let mut first = None;
    let mut done = 0;
    while done < total {
        let n = (total - done).min(10_000);
        let r = bench_bulk_from(&sb, n, done).await?;
        worst = worst.max(r.completed);
        first.get_or_insert(r);
        done += n;
    }
    if let Some(r) = first {
        output::data_line(format_args!(
            "first bulk job of {} profiles: accepted in {:.1?}, complete in {:.1?}",
            r.profiles, r.accepted, r.completed
        ));
    }
    output::data_line(format_args!(
        "{} profiles imported in {:.2?} (slowest job {:.1?}); {} profiles held",
        done,
        start.elapsed(),
        worst,
        sb.profile_count()
    ));
    if let (Some(a), Some(b)) = (rss_before, rss_kib()) {
        let per = (b.saturating_sub(a) * 1024) as f64 / sb.profile_count().max(1) as f64;
        output::data_line(format_args!(
            "resident memory: {} MiB ({per:.0} bytes per profile)",
            b / 1024
        ));
    }
    Ok(())
}

/// Resident set size in KiB (Linux only).
fn rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}
