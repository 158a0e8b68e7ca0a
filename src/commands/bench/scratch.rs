//! What the benchmarks share: a scratch database seeded with `generate_series` rows
//! (`Scratch`, `seed`, `SEED`, `QUERY`), `psql`'s `COPY … TO STDOUT` as the floor to compare
//! with (`time_copy`), and this process's peak memory and CPU time.
//!
//! In: the server from `DATABASE_URL` / `PG*`, a row count. Out: a seeded database, seconds,
//! bytes. I/O: creates and drops databases, runs `psql`, reads `/proc/self`.

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{Context as _, Result, bail};

use crate::rows::source::{Source, SourceConfig};

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
