//! Commands that look at a job's data without changing anything: `kdit query run`,
//! `kdit check`, `kdit preview`.
//!
//! In: parsed arguments (clap `Args` structs) and a writer for the output. Out: rows,
//! check lines or previews written as a table or JSON, and whether everything passed.
//! Does I/O: reads job and query files, queries PostgreSQL (read-only).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Result, anyhow};
use indexmap::IndexMap;
use serde_json::{Value, json};

use crate::commands::connect::{Failed, cancel_on_ctrl_c};
use crate::job::compile::Job;
use crate::job::query::StoredQuery;
use crate::job::spec::ParamValue;
use crate::output::Hinted;
use crate::rows::source::{Cell, Interrupt, RunContext, Source, SourceConfig};
use crate::rows::transform::{ProfileRow, Reject, cell_to_json_lossy};
use crate::rows::{JobQuery, RowsError, StreamedRow, prepare};

/// Output format for rows and previews.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum RowsFormat {
    #[default]
    Table,
    Json,
}

/// `kdit query run NAME|FILE`
#[derive(Debug, clap::Args)]
pub struct QueryRunArgs {
    /// A `.sql` file, or the name of one under `queries/` (`active` → `queries/active.sql`).
    pub query: String,
    /// A parameter value, `name=value` (repeatable). Values read like YAML: `7d`, `12`,
    /// `true`, `[a, b]`.
    #[arg(long = "param", short = 'p', value_name = "NAME=VALUE")]
    pub params: Vec<String>,
    /// Show at most this many rows.
    #[arg(long, default_value_t = 20)]
    pub limit: u64,
    /// Statement timeout, e.g. `30s`.
    #[arg(long, value_parser = crate::job::spec::parse_duration)]
    pub timeout: Option<std::time::Duration>,
    #[arg(long, value_enum, default_value_t)]
    pub format: RowsFormat,
}

/// `kdit check JOB`
#[derive(Debug, clap::Args)]
pub struct CheckArgs {
    /// The job file.
    pub job: PathBuf,
}

/// `kdit preview JOB`
#[derive(Debug, clap::Args)]
pub struct PreviewArgs {
    /// The job file.
    pub job: PathBuf,
    /// Read at most this many rows.
    #[arg(long, default_value_t = 10)]
    pub limit: u64,
    #[arg(long, value_enum, default_value_t)]
    pub format: RowsFormat,
}

/// Parses `name=value`; the value is read as YAML (so `12` is a number, `[a, b]` a list).
pub fn parse_param(s: &str) -> Result<(String, ParamValue)> {
    let (k, v) = s
        .split_once('=')
        .ok_or_else(|| anyhow!("`{s}` is not `name=value`"))?;
    let value = yaml_serde::from_str::<ParamValue>(v)
        .ok()
        .unwrap_or_else(|| ParamValue::Text(v.to_string()));
    Ok((k.trim().to_string(), value))
}

fn resolve_query_path(q: &str) -> PathBuf {
    let p = PathBuf::from(q);
    if p.exists() || q.ends_with(".sql") || q.contains('/') {
        return p;
    }
    PathBuf::from("queries").join(format!("{q}.sql"))
}

async fn connect() -> Result<Source> {
    Ok(Source::connect(SourceConfig::from_env()?).await?)
}

/// `kdit query run`: the first rows of a stored query.
pub async fn query_run(args: &QueryRunArgs, out: &mut dyn Write) -> Result<()> {
    let path = resolve_query_path(&args.query);
    let text = crate::job::load::read_query(&path).map_err(|e| match e {
        // As `fs::read_to_string` said it, with the path.
        crate::job::load::ReadQueryError::Io(e) => {
            anyhow::Error::new(e).context(format!("cannot read query file {}", path.display()))
        }
        e => anyhow!("cannot read query file {}: {e}", path.display()),
    })?;
    let query = StoredQuery::parse(path.display().to_string(), &text)?;
    let params: IndexMap<String, ParamValue> = args
        .params
        .iter()
        .map(|p| parse_param(p))
        .collect::<Result<_>>()?;
    let rendered = query.render(&params)?;
    let source = connect().await?;
    let ctx = RunContext {
        job: None,
        timeout: args.timeout,
        limit: Some(args.limit),
        interrupt: Some(cancel_on_ctrl_c()),
    };
    let started = Instant::now();
    let mut rows = source.stream(&rendered, &ctx).await?;
    let columns: Vec<String> = rows.columns().iter().map(|c| c.name.clone()).collect();
    let mut data: Vec<Vec<Cell>> = Vec::new();
    while let Some(r) = rows.next().await {
        data.push(r?);
    }
    let n = rows.finish().await?;
    match args.format {
        RowsFormat::Json => {
            let list: Vec<Value> = data
                .iter()
                .map(|r| {
                    Value::Object(
                        columns
                            .iter()
                            .zip(r)
                            .map(|(c, v)| (c.clone(), cell_to_json_lossy(v)))
                            .collect(),
                    )
                })
                .collect();
            writeln!(out, "{}", serde_json::to_string_pretty(&list)?)?;
        }
        RowsFormat::Table => {
            let cells: Vec<Vec<String>> = data
                .iter()
                .map(|r| {
                    r.iter()
                        .map(|c| c.to_text().unwrap_or_else(|| "NULL".into()))
                        .collect()
                })
                .collect();
            write_table(out, &columns, &cells)?;
            let params = rendered.describe_params();
            writeln!(
                out,
                "{n} row{} in {:.2}s{}{}",
                if n == 1 { "" } else { "s" },
                started.elapsed().as_secs_f64(),
                if params.is_empty() {
                    String::new()
                } else {
                    format!(" ({params})")
                },
                if n == args.limit {
                    format!(" — limited to {}, use --limit for more", args.limit)
                } else {
                    String::new()
                }
            )?;
        }
    }
    Ok(())
}

/// Writes rows as an aligned text table; long values are cut at 40 characters.
pub fn write_table(out: &mut dyn Write, header: &[String], rows: &[Vec<String>]) -> Result<()> {
    const MAX: usize = 40;
    let cut = |s: &str| -> String {
        let one_line = s.replace('\n', "⏎");
        if one_line.chars().count() > MAX {
            format!("{}…", one_line.chars().take(MAX - 1).collect::<String>())
        } else {
            one_line
        }
    };
    let header: Vec<String> = header.iter().map(|h| cut(h)).collect();
    let rows: Vec<Vec<String>> = rows
        .iter()
        .map(|r| r.iter().map(|c| cut(c)).collect())
        .collect();
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for r in &rows {
        for (i, c) in r.iter().enumerate() {
            if let Some(w) = widths.get_mut(i) {
                *w = (*w).max(c.chars().count());
            }
        }
    }
    let line = |cells: &[String]| -> String {
        cells
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let pad = widths[i].saturating_sub(c.chars().count());
                format!("{c}{}", " ".repeat(pad))
            })
            .collect::<Vec<_>>()
            .join("  ")
            .trim_end()
            .to_string()
    };
    writeln!(out, "{}", line(&header))?;
    writeln!(
        out,
        "{}",
        widths
            .iter()
            .map(|w| "─".repeat(*w))
            .collect::<Vec<_>>()
            .join("  ")
    )?;
    for r in &rows {
        writeln!(out, "{}", line(r))?;
    }
    Ok(())
}

/// `kdit check JOB`: one line per check; `Ok(true)` when all passed.
pub async fn check(args: &CheckArgs, out: &mut dyn Write) -> Result<bool> {
    let job = checked_job(&args.job)?;
    let config = SourceConfig::from_env();
    check_job(&job, config, out).await
}

/// Loads a job through `validate`'s loader (problems printed with `file:line:col`); the
/// compiled job has the project's defaults merged.
fn checked_job(path: &Path) -> Result<Job> {
    let job = crate::commands::connect::load_job(path).map_err(|failed| match failed {
        // Refused as a usage error (exit 64), already said: `main` prints nothing more.
        Failed::SeveralJobs => anyhow::Error::new(failed),
        Failed::Path | Failed::Invalid => anyhow::anyhow!(
            "{} is not a valid job file (problems above)",
            path.display()
        ),
    })?;
    Ok(job)
}

/// What `preview` and `check` read a job's rows with: its query, and its mapping as the job
/// file writes it (no hidden consent fields).
fn shown_query(job: &Job) -> Result<JobQuery, RowsError> {
    let mut jq = prepare(job)?;
    jq.mapping = job.shown_mapping.clone();
    Ok(jq)
}

/// The checks of `kdit check` for a compiled job.
pub async fn check_job(
    job: &Job,
    config: Result<SourceConfig, crate::rows::source::SourceError>,
    out: &mut dyn Write,
) -> Result<bool> {
    let mut ok = true;
    let jq = match shown_query(job) {
        Ok(jq) => {
            let params = jq.rendered.describe_params();
            writeln!(
                out,
                "✓ query     {}{}",
                jq.query.label,
                if params.is_empty() {
                    String::new()
                } else {
                    format!(" ({params})")
                }
            )?;
            jq
        }
        Err(e) => {
            writeln!(out, "✗ job       {}", indent(&e.to_string()))?;
            return Ok(false);
        }
    };
    let connected = match config {
        Ok(c) => Source::connect(c).await,
        Err(e) => Err(e),
    };
    let source = match connected {
        Ok(s) => {
            writeln!(out, "✓ database  {}", s.target())?;
            s
        }
        Err(e) => {
            writeln!(out, "✗ database  {}", indent(&format!("{e:#}")))?;
            return Ok(false);
        }
    };
    let started = Instant::now();
    let columns = match source
        .describe(&jq.rendered, &jq.context(Some(0), None))
        .await
    {
        Ok(c) => {
            writeln!(
                out,
                "✓ runs      read-only with LIMIT 0 in {} ms, {} columns{}",
                started.elapsed().as_millis(),
                c.len(),
                jq.timeout
                    .map(|t| format!(", timeout {}", humantime::format_duration(t)))
                    .unwrap_or_default()
            )?;
            c
        }
        Err(e) => {
            writeln!(out, "✗ runs      {}", indent(&e.to_string()))?;
            return Ok(false);
        }
    };
    let problems = match jq.mapping.bind(&columns) {
        Ok(_) => Vec::new(),
        Err(p) => p,
    };
    for (key, source) in &job.spec.profiles.fields {
        let m = source.mapping();
        let mine: Vec<_> = problems.iter().filter(|p| &p.field == key).collect();
        let from = if let Some(c) = &m.column {
            let ty = columns
                .iter()
                .find(|col| &col.name == c)
                .map(|col| format!(" ({})", col.type_name))
                .unwrap_or_default();
            format!("column {c}{ty}")
        } else if m.template.is_some() {
            "template".to_string()
        } else {
            "constant".to_string()
        };
        if mine.is_empty() {
            writeln!(out, "✓ field     {key} ← {from}")?;
        } else {
            ok = false;
            for p in mine {
                let problem = p
                    .hint
                    .iter()
                    .fold(Hinted::new(p.message.clone()), |e, h| e.hint(h.clone()));
                writeln!(
                    out,
                    "✗ field     {key} ← {from}: {}",
                    indent(&problem.to_string())
                )?;
            }
        }
    }
    for p in problems.iter().filter(|p| p.field == "query.columns") {
        ok = false;
        writeln!(out, "✗ column    {}", indent(&p.to_string()))?;
    }
    Ok(ok)
}

fn indent(s: &str) -> String {
    s.replace('\n', "\n            ")
}

/// `kdit preview JOB`: the first profiles and any rejects.
pub async fn preview(args: &PreviewArgs, out: &mut dyn Write) -> Result<()> {
    let job = checked_job(&args.job)?;
    let source = connect().await?;
    preview_job(
        &job,
        &source,
        args.limit,
        args.format,
        Some(cancel_on_ctrl_c()),
        out,
    )
    .await
}

/// `kdit preview` for a loaded job and a connected source.
pub async fn preview_job(
    job: &Job,
    source: &Source,
    limit: u64,
    format: RowsFormat,
    interrupt: Option<Interrupt>,
    out: &mut dyn Write,
) -> Result<()> {
    let jq = shown_query(job)?;
    let mut stream = jq.open(source, Some(limit), interrupt).await?;
    let mut profiles: Vec<ProfileRow> = Vec::new();
    let mut rejects: Vec<Reject> = Vec::new();
    while let Some(r) = stream.next().await {
        match r.map_err(RowsError::from)? {
            StreamedRow::Profile(p) => profiles.push(p),
            StreamedRow::Rejected(r) => rejects.push(r),
            // Only a stream told to skip known rows yields these; a preview shows every row.
            StreamedRow::Known { .. } => {}
        }
    }
    let totals = stream.finish().await?;
    write_preview(out, format, &job.spec.profiles.fields, &profiles, &rejects)?;
    if format == RowsFormat::Table {
        writeln!(
            out,
            "{} rows read (limit {limit}): {} profiles, {} rejected",
            totals.rows, totals.profiles, totals.rejected
        )?;
    }
    Ok(())
}

/// Writes profiles and rejects as a table (one column per mapped field) or JSON.
pub fn write_preview(
    out: &mut dyn Write,
    format: RowsFormat,
    fields: &IndexMap<String, crate::job::spec::FieldSource>,
    profiles: &[ProfileRow],
    rejects: &[Reject],
) -> Result<()> {
    match format {
        RowsFormat::Json => {
            let doc = json!({
                "profiles": profiles,
                "rejects": rejects,
            });
            writeln!(out, "{}", serde_json::to_string_pretty(&doc)?)?;
        }
        RowsFormat::Table => {
            let mut header = vec!["row".to_string()];
            header.extend(fields.keys().cloned());
            let rows: Vec<Vec<String>> = profiles
                .iter()
                .map(|p| {
                    let mut r = vec![p.row_number.to_string()];
                    let attributes = p.attribute_map();
                    for key in fields.keys() {
                        let v = lookup(&attributes, key);
                        let unset = p.unset.iter().any(|u| &u.to_string() == key);
                        r.push(match v {
                            Some(Value::String(s)) => s.clone(),
                            Some(other) => other.to_string(),
                            None if unset => "(unset)".into(),
                            None => String::new(),
                        });
                    }
                    r
                })
                .collect();
            write_table(out, &header, &rows)?;
            if !rejects.is_empty() {
                writeln!(out)?;
                writeln!(out, "Rejected")?;
                for r in rejects {
                    writeln!(out, "  ! {r}")?;
                }
            }
        }
    }
    Ok(())
}

fn lookup<'a>(attributes: &'a serde_json::Map<String, Value>, key: &str) -> Option<&'a Value> {
    let mut parts = key.split('.');
    let mut cur = attributes.get(parts.next()?)?;
    for p in parts {
        cur = cur.get(p)?;
    }
    Some(cur)
}
