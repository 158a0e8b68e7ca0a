//! `kdit bench sync`: whole syncs of seeded rows into an in-process sandbox (rate limits
//! off), each run by the real `kdit` binary as a child process so its own peak memory is
//! measured, next to `psql`'s `COPY … TO STDOUT` of the same query.
//!
//! In: a row count and the server from `DATABASE_URL` / `PG*`. Out: one table — scenario,
//! rows, wall seconds, profiles/s, API calls, 429s, peak RSS. I/O: a scratch database (dropped
//! afterwards), a temp folder, a sandbox, child processes.

use std::io::Write;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use serde_json::Value;

use crate::bench::{QUERY, Scratch, seed, time_copy};
use crate::sandbox::{RateLimits, Sandbox, SandboxConfig};
use crate::source::{Source, SourceConfig};

#[derive(Debug, clap::Args)]
pub struct BenchSyncArgs {
    /// Rows to seed and sync.
    #[arg(long, default_value_t = 1_000_000)]
    pub rows: u64,
    /// Keep the scratch database afterwards (its name is printed).
    #[arg(long)]
    pub keep: bool,
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
    m_tier: u64,
}

fn job_yaml() -> String {
    format!(
        r#"version: 1
name: bench-sync
query:
  sql: "{QUERY}"
profiles:
  key: email
  default_region: US
  fields:
    email: {{ column: email, transform: [trim, email] }}
    external_id: id
    first_name: first_name
    last_name: {{ column: last_name, transform: trim }}
    location.city: city
    properties.lifetime_value: {{ column: lifetime_value, type: number }}
    properties.orders: orders
    properties.plan: plan
    properties.last_order_at: last_order_at
    properties.vip: vip
lists:
  - name: Bench members
    mode: mirror
batch: {{ size: 10000, concurrency: 8 }}
"#
    )
}

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
    // Calls against the M tier (10/s, 150/min): bulk imports, their polls, list writes.
    let m_tier: u64 = r["api"]["calls"]
        .as_object()
        .map(|m| {
            m.iter()
                .filter(|(k, _)| {
                    k.contains("profile-bulk-import-jobs")
                        || k.starts_with("POST /api/lists")
                        || k.starts_with("DELETE /api/lists")
                })
                .filter_map(|(_, v)| v.as_u64())
                .sum()
        })
        .unwrap_or(0);
    Ok(Measured {
        scenario: scenario.into(),
        rows,
        seconds,
        profiles_sent: sent,
        calls,
        rate_limited: limited,
        peak_rss: peak,
        m_tier,
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
    let source = seed(cfg, args.rows, out).await?;
    let dir = std::env::temp_dir().join(format!("kdit-bench-sync-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    std::fs::write(dir.join("job.yaml"), job_yaml())?;
    let result = scenarios(args, cfg, &source, &dir, out).await;
    let _ = std::fs::remove_dir_all(&dir);
    result
}

async fn scenarios(
    args: &BenchSyncArgs,
    cfg: &SourceConfig,
    source: &Source,
    dir: &std::path::Path,
    out: &mut dyn Write,
) -> Result<()> {
    let db_env = cfg.libpq_env();
    let sb = Sandbox::start(SandboxConfig {
        rate_limits: RateLimits::Off,
        ..SandboxConfig::default()
    })
    .await?;

    let mut results = Vec::new();
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
    // The same first sync into another account with Klaviyo's real limits: how much of the
    // allowed request rate kdit uses (the bulk-import tier, M: 150 a minute, binds).
    let limited_sb = Sandbox::start(SandboxConfig::default()).await?;
    let limited = measure(
        "first sync, Klaviyo limits",
        dir,
        &db_env,
        &limited_sb,
        RateLimits::Klaviyo,
    )
    .await?;
    let allowed = 150.0 * (limited.seconds / 60.0).max(1.0);
    let share = limited.m_tier as f64 / allowed;
    results.push(limited);

    let copy = time_copy(cfg, QUERY)?;

    let mb = |b: u64| b as f64 / (1024.0 * 1024.0);
    writeln!(
        out,
        "{:<26} {:>10} {:>8} {:>12} {:>9} {:>6} {:>10}",
        "scenario", "rows", "wall s", "profiles/s", "API calls", "429s", "peak RSS"
    )?;
    for m in &results {
        let rows = if m.rows == 0 { args.rows } else { m.rows };
        writeln!(
            out,
            "{:<26} {:>10} {:>8.2} {:>12} {:>9} {:>6} {:>7.1} MB",
            m.scenario,
            crate::render::thousands(rows),
            m.seconds,
            crate::render::thousands((rows as f64 / m.seconds) as u64),
            m.calls,
            m.rate_limited,
            mb(m.peak_rss)
        )?;
    }
    writeln!(
        out,
        "{:<26} {:>10} {:>8.2}",
        "psql COPY TO STDOUT",
        crate::render::thousands(args.rows),
        copy
    )?;
    let first = &results[0];
    writeln!(
        out,
        "first sync: {} profiles in {} API calls = one call per {} profiles; no-change re-run = {:.2}× COPY",
        crate::render::thousands(first.profiles_sent),
        first.calls,
        crate::render::thousands(first.profiles_sent / first.calls.max(1)),
        results[1].seconds / copy
    )?;
    writeln!(
        out,
        "with Klaviyo's limits: {} bulk-tier calls in {:.1} s = {:.0}% of the 150/min allowed; 429s: {}",
        results[4].m_tier,
        results[4].seconds,
        share * 100.0,
        results[4].rate_limited
    )?;
    Ok(())
}
