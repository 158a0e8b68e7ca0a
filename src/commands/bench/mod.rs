//! `kdit bench source`: how fast rows go from PostgreSQL through transform and validation,
//! next to `psql`'s `COPY … TO STDOUT` of the same query.
//!
//! In: a row count and the server from `DATABASE_URL` / `PG*`. Out: rows, seconds, rows/s,
//! peak memory (`VmHWM`) and the COPY time, written to the given writer. Does I/O: creates a
//! scratch database, seeds it with `generate_series`, drops it afterwards.

pub mod sync;

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{Context as _, Result, bail};

use crate::job::spec::JobSpec;
use crate::rows::source::{Source, SourceConfig};
use crate::rows::{RowOutcome, prepare};

/// `kdit bench …`
#[derive(Debug, clap::Args)]
pub struct BenchArgs {
    #[command(subcommand)]
    pub command: BenchCommand,
}

#[derive(Debug, clap::Subcommand)]
pub enum BenchCommand {
    /// Time query + transform + validation against `COPY … TO STDOUT`.
    Source(BenchSourceArgs),
    /// Whole syncs into an in-process sandbox: first sync, no-change re-run, 1% changed,
    /// 1% removed from a mirrored list; wall time, profiles/s, API calls, peak memory.
    Sync(crate::commands::bench::sync::BenchSyncArgs),
}

#[derive(Debug, clap::Args)]
pub struct BenchSourceArgs {
    /// Rows to seed and read.
    #[arg(long, default_value_t = 1_000_000)]
    pub rows: u64,
    /// Keep the scratch database afterwards (its name is printed).
    #[arg(long)]
    pub keep: bool,
    /// Leave out the phone field (libphonenumber parsing is the costliest transform).
    #[arg(long)]
    pub no_phone: bool,
    /// Threads transforming rows (default: cores, at most 4).
    #[arg(long)]
    pub threads: Option<usize>,
}

/// Seeds `customers` with `$ROWS` rows (shared by the sync benchmark).
pub(crate) const SEED: &str = "
create table customers as
select g as id,
       case when g % 10 = 0 then '  User' || g || '@Example.COM ' else 'user' || g || '@example.com' end as email,
       '(201) ' || (200 + g % 700) || '-' || lpad((g % 10000)::text, 4, '0') as phone,
       'First' || g as first_name,
       'Last' || (g % 5000) as last_name,
       (array['Zürich', 'Lisbon', 'Austin', 'Osaka'])[g % 4 + 1] as city,
       round((g % 100000)::numeric / 100 + 10, 2) as lifetime_value,
       (g % 50)::int as orders,
       (array['free', 'pro', 'team'])[g % 3 + 1] as plan,
       timestamptz '2026-01-01 00:00:00+00' - (g % 100000) * interval '1 minute' as last_order_at,
       g % 7 = 0 as vip
from generate_series(1, $ROWS) g;
analyze customers;
";

/// The benchmark query over `customers`.
pub(crate) const QUERY: &str = "select id, email, phone, first_name, last_name, city, lifetime_value, orders, plan, last_order_at, vip from customers";

fn bench_job(phone: bool) -> Result<JobSpec> {
    let yaml = format!(
        r#"version: 1
name: bench
query:
  sql: "{QUERY}"
profiles:
  key: email
  default_region: US
  fields:
    email: {{ column: email, transform: [trim, email] }}
    phone_number: {{ column: phone, transform: e164 }}
    external_id: id
    first_name: first_name
    last_name: {{ column: last_name, transform: trim }}
    location.city: city
    properties.lifetime_value: {{ column: lifetime_value, type: number }}
    properties.orders: orders
    properties.plan: {{ template: "{{{{ plan | upper }}}}" }}
    properties.last_order_at: last_order_at
    properties.vip: vip
"#
    );
    let yaml = if phone {
        yaml
    } else {
        yaml.lines()
            .filter(|l| !l.contains("phone_number"))
            .collect::<Vec<_>>()
            .join("\n")
    };
    Ok(yaml_serde::from_str(&yaml)?)
}

/// Peak resident set size of this process, in bytes (Linux `VmHWM`).
pub fn peak_rss() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// CPU time this process has used so far (user + system, all threads), in seconds.
pub fn cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command name (which may hold spaces) are space-separated.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    // Linux reports these in USER_HZ, 100 on every architecture kdit runs on.
    Some(ticks as f64 / 100.0)
}

/// A database made for one benchmark, dropped by `finish` unless kept.
pub(crate) struct Scratch {
    admin: Source,
    pub name: String,
    pub config: SourceConfig,
}

impl Scratch {
    /// Creates `<prefix>_<pid>` on the server of `DATABASE_URL` / `PG*`.
    pub(crate) async fn create(prefix: &str) -> Result<Scratch> {
        let base = SourceConfig::from_env()?;
        let admin = Source::connect(base.clone()).await?;
        let name = format!("{prefix}_{}", std::process::id());
        let client = admin.client().await?;
        client
            .batch_execute(&format!("drop database if exists {name}"))
            .await?;
        client
            .batch_execute(&format!("create database {name}"))
            .await
            .context("cannot create the scratch database")?;
        let config = base.with_dbname(&name);
        Ok(Scratch {
            admin,
            name,
            config,
        })
    }

    /// Drops the database, or says where it was kept.
    pub(crate) async fn finish(self, keep: bool, out: &mut dyn Write) -> Result<()> {
        if keep {
            writeln!(out, "kept database {}", self.name)?;
        } else {
            self.admin
                .client()
                .await?
                .batch_execute(&format!(
                    "drop database if exists {} with (force)",
                    self.name
                ))
                .await?;
        }
        Ok(())
    }
}

/// Seconds `psql` takes to `COPY (query) TO STDOUT` into /dev/null: the floor to compare with.
pub(crate) fn time_copy(cfg: &SourceConfig, query: &str) -> Result<f64> {
    let started = Instant::now();
    let status = Command::new("psql")
        .args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-c"])
        .arg(format!("COPY ({query}) TO STDOUT"))
        .envs(cfg.libpq_env())
        .stdout(Stdio::null())
        .status()
        .context("cannot run psql for the COPY comparison")?;
    if !status.success() {
        bail!("psql COPY failed ({status})");
    }
    Ok(started.elapsed().as_secs_f64())
}

/// Connects to the scratch database and fills `customers` with `rows` rows (`SEED`).
pub(crate) async fn seed(cfg: &SourceConfig, rows: u64, out: &mut dyn Write) -> Result<Source> {
    let source = Source::connect(cfg.clone()).await?;
    let started = Instant::now();
    source
        .client()
        .await?
        .batch_execute(&SEED.replace("$ROWS", &rows.to_string()))
        .await
        .context("seeding failed")?;
    writeln!(
        out,
        "seeded {} rows in {:.1} s",
        crate::output::thousands(rows),
        started.elapsed().as_secs_f64()
    )?;
    Ok(source)
}

/// Runs the benchmark and writes its figures.
pub async fn bench_source(args: &BenchSourceArgs, out: &mut dyn Write) -> Result<()> {
    let scratch = Scratch::create("kdit_bench").await?;
    let result = run(args, &scratch.config, out).await;
    scratch.finish(args.keep, out).await?;
    result
}

async fn run(args: &BenchSourceArgs, cfg: &SourceConfig, out: &mut dyn Write) -> Result<()> {
    let source = seed(cfg, args.rows, out).await?;

    let job = bench_job(!args.no_phone)?;
    let jq = prepare(&job, std::path::Path::new("bench.yaml"), None)?;
    let rss_before = peak_rss().unwrap_or(0);
    let cpu_before = cpu_seconds().unwrap_or(0.0);
    let started = Instant::now();
    let mut stream = jq.open(&source, None, None).await?;
    if let Some(t) = args.threads {
        stream.set_threads(t);
    }
    // On the runtime, as `kdit run` reads its rows (`feed`), next to the connection's task.
    let totals = tokio::spawn(async move {
        let mut bytes = 0usize;
        while let Some(r) = stream.next().await {
            if let RowOutcome::Profile(p) = r? {
                // Stand-in for the next stage: touch the payload so nothing is optimised away.
                bytes += p.attributes.get().len() + p.key.len();
            }
        }
        std::hint::black_box(bytes);
        stream.finish().await
    })
    .await??;
    let secs = started.elapsed().as_secs_f64();
    let cpu = cpu_seconds().unwrap_or(0.0) - cpu_before;
    let peak = peak_rss().unwrap_or(0);

    // The source stage alone: rows streamed and decoded into cells, no mapping.
    let read_started = Instant::now();
    let rendered = crate::job::query::StoredQuery::inline(QUERY)?.render(&Default::default())?;
    let mut rows = source.stream(&rendered, &Default::default()).await?;
    tokio::spawn(async move {
        while let Some(r) = rows.next().await {
            r?;
        }
        rows.finish().await
    })
    .await??;
    let read_secs = read_started.elapsed().as_secs_f64();

    let copy_secs = time_copy(cfg, QUERY)?;

    let mb = |b: u64| b as f64 / (1024.0 * 1024.0);
    writeln!(
        out,
        "rows        {} ({} profiles, {} rejected)",
        totals.rows, totals.profiles, totals.rejected
    )?;
    writeln!(
        out,
        "kdit        {secs:.2} s  {:.0} rows/s  (query + transform + validation, streamed)",
        totals.rows as f64 / secs
    )?;
    writeln!(
        out,
        "kdit CPU    {cpu:.2} s  {:.2} µs a row  (all of kdit's threads; PostgreSQL's not counted)",
        cpu * 1e6 / totals.rows.max(1) as f64
    )?;
    writeln!(
        out,
        "read only   {read_secs:.2} s  {:.0} rows/s  (rows decoded into typed cells, no mapping)",
        totals.rows as f64 / read_secs
    )?;
    writeln!(
        out,
        "COPY        {copy_secs:.2} s  {:.0} rows/s  (psql COPY … TO STDOUT > /dev/null)",
        totals.rows as f64 / copy_secs
    )?;
    writeln!(
        out,
        "ratio       {:.2}× COPY (read only: {:.2}× COPY)",
        secs / copy_secs,
        read_secs / copy_secs
    )?;
    writeln!(
        out,
        "peak RSS    {:.1} MB (VmHWM; {:.1} MB before the run)",
        mb(peak),
        mb(rss_before)
    )?;
    Ok(())
}
