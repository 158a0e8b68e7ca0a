//! `kdit bench source`: how fast rows go from PostgreSQL through transform and validation,
//! next to `psql`'s `COPY … TO STDOUT` of the same query.
//!
//! In: a row count and the server from `DATABASE_URL` / `PG*`. Out: rows, seconds, rows/s,
//! peak memory (`VmHWM`) and the COPY time, written to the given writer. Does I/O: creates a
//! scratch database, seeds it with `generate_series`, drops it afterwards.

use std::io::Write;
use std::time::Instant;

use anyhow::Result;

use crate::commands::bench::scratch::{QUERY, Scratch, cpu_seconds, peak_rss, seed, time_copy};
use crate::job::compile::Job;
use crate::rows::source::SourceConfig;
use crate::rows::{StreamedRow, prepare};

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

fn bench_job(phone: bool) -> Result<Job> {
    let yaml = format!(
        r#"version: 1
name: bench
query:
  sql: "{QUERY}"
  columns: [plan]
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
    let loaded = crate::job::load::parse_text::<crate::job::spec::JobSpec>(
        std::path::Path::new("bench.yaml"),
        yaml,
        crate::job::load::Kind::Job,
    );
    match crate::job::compile::compile(&loaded, None) {
        (Some(job), _) => Ok(job),
        (None, problems) => anyhow::bail!(
            "the bench job does not compile: {}",
            problems
                .iter()
                .chain(&loaded.diagnostics)
                .map(|d| d.message.clone())
                .collect::<Vec<_>>()
                .join("; ")
        ),
    }
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
    let jq = prepare(&job)?;
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
            if let StreamedRow::Profile(p) = r? {
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
