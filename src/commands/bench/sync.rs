//! `kdit bench sync`: whole syncs of seeded rows into an in-process sandbox (rate limits
//! off), each run by the real `kdit` binary as a child process so its own peak memory is
//! measured, next to `psql`'s `COPY … TO STDOUT` of the same query; and one rate-limited
//! sync (Klaviyo's real limits, small batches) that measures the share of the allowed
//! request rate kdit used.
//!
//! In: a row count, the scenarios, the rate-limited run's length, and the server from
//! `DATABASE_URL` / `PG*`. Out: one table — scenario, rows, wall seconds, profiles/s, API
//! calls, 429s, peak RSS — and the rate-limited run's share. I/O: a scratch database (dropped
//! afterwards), temp folders, sandboxes, child processes.

use std::io::Write;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use serde_json::Value;

use crate::commands::bench::scratch::{QUERY, Scratch, seed, time_copy};
use crate::klaviyo::client::{ApiKey, Client, Config};
use crate::klaviyo::ratelimit::Tier;
use crate::rows::source::{Source, SourceConfig};
use crate::sandbox::{RateLimits, Sandbox, SandboxConfig};
use reqwest::Method;

#[derive(Debug, clap::Args)]
pub struct BenchSyncArgs {
    /// Rows to seed and sync.
    #[arg(long, default_value_t = 1_000_000)]
    pub rows: u64,
    /// Keep the scratch database afterwards (its name is printed).
    #[arg(long)]
    pub keep: bool,
    /// Which scenarios to run: all of them, or only the rate-limited sync.
    #[arg(long, value_enum, default_value_t = Scenarios::All)]
    pub scenario: Scenarios,
    /// The rate-limited sync has work for at least this many seconds of Klaviyo's limits.
    #[arg(long, default_value_t = 90)]
    pub seconds: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Scenarios {
    /// Every scenario (first sync, re-run, 1% changed, 1% removed, rate-limited sync).
    All,
    /// Only the sync under Klaviyo's real rate limits.
    Limited,
}

/// Profiles per bulk import in the rate-limited sync: small, so the bulk-import endpoint's
/// limit (M tier: 10/s, 150/min) binds long before the sandbox or PostgreSQL does.
const LIMITED_BATCH: u64 = 100;
/// The bottleneck operation of the rate-limited sync and its limits (burst/s, steady/min).
const BOTTLENECK: &str = "POST /api/profile-bulk-import-jobs";
const BOTTLENECK_LIMITS: (u64, u64) = (10, 150);

/// Rows for a rate-limited sync that keeps kdit busy for at least `seconds`: each minute
/// allows 150 bulk imports, and the first (partial) minute may be used up early.
pub fn limited_rows(seconds: u64) -> u64 {
    let minutes = seconds.div_ceil(60) + 1;
    LIMITED_BATCH * BOTTLENECK_LIMITS.1 * minutes
}

/// One measured run.
struct Measured {
    scenario: String,
    rows: u64,
    seconds: f64,
    profiles_sent: u64,
    calls: u64,
    rate_limited: u64,
    peak_rss: u64,
    bottleneck: u64,
}

fn job_yaml() -> String {
    format!(
        r#"version: 1
name: bench-sync
query:
  sql: "{QUERY}"
{MAPPING}lists:
  - name: Bench members
    mode: mirror
batch: {{ size: 10000, concurrency: 8 }}
"#
    )
}

/// The rate-limited sync's job: the first `rows` customers in bulk imports of 100.
fn limited_job_yaml(rows: u64) -> String {
    format!(
        r#"version: 1
name: bench-rate
query:
  sql: "{QUERY} where id <= {rows}"
{MAPPING}lists:
  - name: Bench rate
batch: {{ size: {LIMITED_BATCH}, concurrency: 16 }}
"#
    )
}

const MAPPING: &str = r#"profiles:
  key: email
  default_region: US
  fields:
    email: { column: email, transform: [trim, email] }
    external_id: id
    first_name: first_name
    last_name: { column: last_name, transform: trim }
    location.city: city
    properties.lifetime_value: { column: lifetime_value, type: number }
    properties.orders: orders
    properties.plan: plan
    properties.last_order_at: last_order_at
    properties.vip: vip
"#;

/// Peak RSS (`VmHWM`) of a running process, in bytes.
fn peak_rss_of(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// Runs `kdit run` as a child and measures it.
async fn measure(
    scenario: &str,
    dir: &std::path::Path,
    db_env: &[(&'static str, String)],
    sb: &Sandbox,
    limits: RateLimits,
) -> Result<Measured> {
    let report = dir.join("report.json");
    let _ = std::fs::remove_file(&report);
    let started = Instant::now();
    let mut child = tokio::process::Command::new(std::env::current_exe()?)
        .args(["run", "job.yaml", "-q", "--rate-limits"])
        .arg(if limits == RateLimits::Off {
            "off"
        } else {
            "klaviyo"
        })
        .arg("--report")
        .arg(&report)
        .current_dir(dir)
        .env_remove("DATABASE_URL")
        .envs(db_env.iter().map(|(k, v)| (*k, v.as_str())))
        .env("KLAVIYO_BASE_URL", sb.base_url())
        .env("KLAVIYO_API_KEY", sb.api_key())
        .stdout(Stdio::null())
        .spawn()
        .context("cannot start kdit run")?;
    let pid = child.id().unwrap_or(0);
    let mut peak = 0;
    let status = loop {
        if let Some(p) = peak_rss_of(pid) {
            peak = peak.max(p);
        }
        tokio::select! {
            s = child.wait() => break s?,
            _ = tokio::time::sleep(Duration::from_millis(20)) => {}
        }
    };
    let seconds = started.elapsed().as_secs_f64();
    if !status.success() {
        bail!("{scenario}: kdit run failed ({status})");
    }
    let r: Value = serde_json::from_str(&std::fs::read_to_string(&report)?)?;
    let (sent, calls, limited, rows) = (
        r["created"].as_u64().unwrap_or(0) + r["updated"].as_u64().unwrap_or(0),
        r["api"]["total_calls"].as_u64().unwrap_or(0),
        r["api"]["rate_limited"].as_u64().unwrap_or(0),
        r["rows"].as_u64().unwrap_or(0),
    );
    // Calls of the rate-limited sync's bottleneck operation.
    let bottleneck = r["api"]["calls"][BOTTLENECK].as_u64().unwrap_or(0);
    Ok(Measured {
        scenario: scenario.into(),
        rows,
        seconds,
        profiles_sent: sent,
        calls,
        rate_limited: limited,
        peak_rss: peak,
        bottleneck,
    })
}

/// Runs the benchmark and prints its table.
pub async fn bench_sync(args: &BenchSyncArgs, out: &mut dyn Write) -> Result<()> {
    let scratch = Scratch::create("kdit_bench_sync").await?;
    let result = run(args, &scratch.config, out).await;
    scratch.finish(args.keep, out).await?;
    result
}

async fn run(args: &BenchSyncArgs, cfg: &SourceConfig, out: &mut dyn Write) -> Result<()> {
    let limited_rows = limited_rows(args.seconds);
    let rows = match args.scenario {
        Scenarios::All => args.rows.max(limited_rows),
        Scenarios::Limited => limited_rows,
    };
    let source = seed(cfg, rows, out).await?;
    let dir = std::env::temp_dir().join(format!("kdit-bench-sync-{}", std::process::id()));
    std::fs::create_dir_all(dir.join("rate"))?;
    std::fs::write(dir.join("job.yaml"), job_yaml())?;
    std::fs::write(dir.join("rate/job.yaml"), limited_job_yaml(limited_rows))?;
    let result = scenarios(args, rows, cfg, &source, &dir, out).await;
    let _ = std::fs::remove_dir_all(&dir);
    result
}

/// The rate-limited sync, measured on the sandbox's side.
struct Limited {
    run: Measured,
    /// When the sandbox accepted each bulk import (ms since the epoch), in order.
    accepted: Vec<u64>,
    /// 429s the sandbox answered, to any request.
    sandbox_429s: u64,
}

impl Limited {
    /// First and last bulk import: the span in which kdit had more work than the limit let go.
    fn span(&self) -> (u64, u64) {
        (
            self.accepted.first().copied().unwrap_or(0),
            self.accepted.last().copied().unwrap_or(0),
        )
    }

    /// What Klaviyo's windows allowed on the bottleneck operation within the span.
    fn allowed(&self) -> u64 {
        let (a, b) = self.span();
        let (burst, steady) = BOTTLENECK_LIMITS;
        crate::klaviyo::ratelimit::allowed_by_fixed_windows(a, b, burst, steady)
    }

    /// Bulk imports in each wall-clock minute lying wholly inside the span.
    fn full_minutes(&self) -> Vec<u64> {
        let (a, b) = self.span();
        let mut minutes = Vec::new();
        let mut m = a.div_ceil(60_000);
        while (m + 1) * 60_000 - 1 <= b {
            let range = m * 60_000..(m + 1) * 60_000;
            minutes.push(self.accepted.iter().filter(|t| range.contains(t)).count() as u64);
            m += 1;
        }
        minutes
    }
}

/// Runs the rate-limited sync into a fresh sandbox with Klaviyo's limits, then reads when
/// the sandbox accepted each bulk import (limits off for that read).
async fn limited(dir: &std::path::Path, db_env: &[(&'static str, String)]) -> Result<Limited> {
    let sb = Sandbox::start(SandboxConfig::default()).await?;
    let run = measure(
        "rate-limited, batch 100",
        &dir.join("rate"),
        db_env,
        &sb,
        RateLimits::Klaviyo,
    )
    .await?;
    let sandbox_429s = sb.stats().by_status.get(&429).copied().unwrap_or(0);
    sb.set_rate_limits(RateLimits::Off);
    let mut config = Config::new(sb.base_url(), ApiKey::new(sb.api_key()));
    config.rate_limits = false;
    let client = Client::new(config)?;
    let mut accepted = Vec::new();
    let mut next =
        Some("/api/profile-bulk-import-jobs?sort=created_at&page%5Bsize%5D=100".to_string());
    while let Some(url) = next.take() {
        let r = client
            .send(
                Tier::M,
                Method::GET,
                &url,
                "GET /api/profile-bulk-import-jobs",
                None,
            )
            .await?;
        let body = r.body.unwrap_or(Value::Null);
        for job in body["data"].as_array().into_iter().flatten() {
            let at = job["attributes"]["created_at"].as_str().unwrap_or_default();
            let at = chrono::DateTime::parse_from_rfc3339(at)
                .with_context(|| format!("bulk import created_at {at:?}"))?;
            accepted.push(at.timestamp_millis() as u64);
        }
        next = body["links"]["next"].as_str().map(str::to_string);
    }
    accepted.sort_unstable();
    Ok(Limited {
        run,
        accepted,
        sandbox_429s,
    })
}

async fn scenarios(
    args: &BenchSyncArgs,
    rows: u64,
    cfg: &SourceConfig,
    source: &Source,
    dir: &std::path::Path,
    out: &mut dyn Write,
) -> Result<()> {
    let db_env = cfg.libpq_env();
    let mut results = Vec::new();
    let mut copy = None;
    if args.scenario == Scenarios::All {
        let sb = Sandbox::start(SandboxConfig {
            rate_limits: RateLimits::Off,
            ..SandboxConfig::default()
        })
        .await?;
        results.push(measure("first sync", dir, &db_env, &sb, RateLimits::Off).await?);
        results.push(measure("no-change re-run", dir, &db_env, &sb, RateLimits::Off).await?);
        let client = source.client().await?;
        client
            .batch_execute(
                "update customers set first_name = first_name || ' (changed)' where id % 100 = 0",
            )
            .await?;
        results.push(measure("1% changed", dir, &db_env, &sb, RateLimits::Off).await?);
        client
            .batch_execute("delete from customers where id % 100 = 1")
            .await?;
        results.push(
            measure(
                "1% left a mirrored list",
                dir,
                &db_env,
                &sb,
                RateLimits::Off,
            )
            .await?,
        );
        drop(client);
        copy = Some(time_copy(cfg, QUERY)?);
    }
    // Small bulk imports under Klaviyo's real limits: the bulk-import endpoint binds.
    let limited = limited(dir, &db_env).await?;

    let mb = |b: u64| b as f64 / (1024.0 * 1024.0);
    writeln!(
        out,
        "{:<26} {:>10} {:>8} {:>12} {:>9} {:>6} {:>10}",
        "scenario", "rows", "wall s", "profiles/s", "API calls", "429s", "peak RSS"
    )?;
    for m in results.iter().chain([&limited.run]) {
        let rows = if m.rows == 0 { rows } else { m.rows };
        writeln!(
            out,
            "{:<26} {:>10} {:>8.2} {:>12} {:>9} {:>6} {:>7.1} MB",
            m.scenario,
            crate::output::thousands(rows),
            m.seconds,
            crate::output::thousands((rows as f64 / m.seconds) as u64),
            m.calls,
            m.rate_limited,
            mb(m.peak_rss)
        )?;
    }
    if let Some(copy) = copy {
        writeln!(
            out,
            "{:<26} {:>10} {:>8.2}",
            "psql COPY TO STDOUT",
            crate::output::thousands(rows),
            copy
        )?;
        let first = &results[0];
        writeln!(
            out,
            "first sync: {} profiles in {} API calls = one call per {} profiles; no-change re-run = {:.2}× COPY",
            crate::output::thousands(first.profiles_sent),
            first.calls,
            crate::output::thousands(first.profiles_sent / first.calls.max(1)),
            results[1].seconds / copy
        )?;
    }
    let (a, b) = limited.span();
    let sent = limited.accepted.len() as u64;
    let allowed = limited.allowed();
    let span = (b - a) as f64 / 1000.0;
    writeln!(
        out,
        "rate-limited: {sent} × {BOTTLENECK} (kdit counted {}) in {span:.1} s from the first to the last; \
         Klaviyo's windows (10/s, 150/min) allowed {allowed} there: {:.1}% used",
        limited.run.bottleneck,
        100.0 * sent as f64 / allowed.max(1) as f64,
    )?;
    let full = limited.full_minutes();
    writeln!(
        out,
        "rate-limited: whole minutes inside that span: {} ({:?} of 150 each); 429s answered by the sandbox: {}, seen by kdit: {}",
        full.len(),
        full,
        limited.sandbox_429s,
        limited.run.rate_limited
    )?;
    Ok(())
}
