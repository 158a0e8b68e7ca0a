//! `kdit query list`: the stored queries of a project, their parameters, and which jobs use
//! them.
//!
//! In: paths (job files or folders). Out: `QueryEntry`s, rendered as text or JSON on stdout.
//! Reads files through `validate`; no database.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::exit::ExitStatus;
use crate::job::query::StoredQuery;
use crate::job::workspace::{PathError, validate};

#[derive(Debug, clap::Args)]
pub struct QueryListArgs {
    /// Job files or folders (default: jobs/).
    #[arg(default_value = "jobs")]
    pub paths: Vec<PathBuf>,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

/// `kdit query list`.
pub fn command(args: &QueryListArgs) -> serde_json::Result<ExitStatus> {
    let entries = match list(&args.paths) {
        Ok(e) => e,
        Err(e) => {
            crate::output::error(e);
            return Ok(ExitStatus::Usage);
        }
    };
    if args.json {
        crate::output::data_line(serde_json::to_string_pretty(&entries)?);
    } else {
        crate::output::data(render(&entries));
    }
    Ok(ExitStatus::Success)
}

/// One stored query.
#[derive(Debug, Clone, Serialize)]
pub struct QueryEntry {
    pub file: PathBuf,
    pub params: Vec<ParamEntry>,
    /// Jobs using it: (job name, job file).
    pub used_by: Vec<(String, PathBuf)>,
    /// Why the file could not be read or parsed, if so.
    pub problem: Option<String>,
}

/// One declared parameter.
#[derive(Debug, Clone, Serialize)]
pub struct ParamEntry {
    pub name: String,
    #[serde(rename = "type")]
    pub ty: String,
    pub default: Option<String>,
    pub description: Option<String>,
}

/// Lists the stored queries under `paths`: those jobs use, and `.sql` files in the folders.
pub fn list(paths: &[PathBuf]) -> Result<Vec<QueryEntry>, PathError> {
    let v = validate(paths)?;
    let mut by_file: BTreeMap<PathBuf, Vec<(String, PathBuf)>> = BTreeMap::new();
    for job in &v.jobs {
        if let Some(q) = &job.query_file {
            by_file
                .entry(normalize(q))
                .or_default()
                .push((job.name().to_string(), job.path.clone()));
        }
    }
    // Stored queries nobody uses yet are worth showing too.
    for p in paths {
        if p.is_dir() {
            collect_sql(p, &mut by_file);
        }
    }
    let mut out = Vec::new();
    for (file, mut used_by) in by_file {
        used_by.sort();
        let (params, problem) = match crate::job::load::read_query(&file) {
            Err(e) => (Vec::new(), Some(format!("cannot read: {e}"))),
            Ok(text) => match StoredQuery::parse(file.display().to_string(), &text) {
                Err(e) => (Vec::new(), Some(e.to_string())),
                Ok(q) => (
                    q.params
                        .iter()
                        .map(|p| ParamEntry {
                            name: p.name.clone(),
                            ty: p.ty.name().to_string(),
                            default: p.default.as_ref().map(|d| d.to_string()),
                            description: p.description.clone(),
                        })
                        .collect(),
                    None,
                ),
            },
        };
        out.push(QueryEntry {
            file,
            params,
            used_by,
            problem,
        });
    }
    Ok(out)
}

fn normalize(p: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            std::path::Component::CurDir => {}
            std::path::Component::ParentDir => {
                out.pop();
            }
            other => out.push(other),
        }
    }
    out
}

fn collect_sql(dir: &Path, into: &mut BTreeMap<PathBuf, Vec<(String, PathBuf)>>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let path = e.path();
        if path.is_dir() {
            if !e.file_name().to_string_lossy().starts_with('.') {
                collect_sql(&path, into);
            }
        } else if path.extension().is_some_and(|x| x == "sql") {
            into.entry(normalize(&path)).or_default();
        }
    }
}

/// The human rendering.
pub fn render(entries: &[QueryEntry]) -> String {
    let mut o = String::new();
    if entries.is_empty() {
        o.push_str("no stored queries found (jobs with inline SQL have none)\n");
        return o;
    }
    for (i, e) in entries.iter().enumerate() {
        if i > 0 {
            o.push('\n');
        }
        let _ = writeln!(o, "{}", e.file.display());
        if let Some(p) = &e.problem {
            let _ = writeln!(o, "  problem  {p}");
        }
        if e.params.is_empty() {
            let _ = writeln!(o, "  params   (none)");
        }
        let nw = e
            .params
            .iter()
            .map(|p| p.name.len() + p.ty.len() + 1)
            .max()
            .unwrap_or(0);
        for (j, p) in e.params.iter().enumerate() {
            let label = if j == 0 { "params" } else { "" };
            let head = format!("{} {}", p.name, p.ty);
            let default = match &p.default {
                Some(d) => format!("= {d}"),
                None => "(no default)".to_string(),
            };
            let desc = p
                .description
                .as_deref()
                .map(|d| format!("  {d}"))
                .unwrap_or_default();
            let _ = writeln!(o, "  {label:<8} {head:<nw$}  {default}{desc}");
        }
        if e.used_by.is_empty() {
            let _ = writeln!(o, "  used by  (no job)");
        } else {
            let jobs: Vec<String> = e
                .used_by
                .iter()
                .map(|(n, p)| format!("{n} ({})", p.display()))
                .collect();
            let _ = writeln!(o, "  used by  {}", jobs.join(", "));
        }
    }
    o
}
