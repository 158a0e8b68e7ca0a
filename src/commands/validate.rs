//! `kdit validate` and `kdit schema`: the offline commands. A `Validation` (from
//! `job::workspace`) rendered for people (`file:line:col` with the line), as JSON, or as
//! GitHub workflow commands; the JSON Schemas of job and project files.
//!
//! In: paths and a format, or which schema. Out: text on stdout, problems on stderr, an exit
//! status. Reads job files; touches no database or network.

use std::io::Write;
use std::path::PathBuf;

use clap::Args;

use crate::exit::ExitStatus;
use crate::job::diagnostic::{Format, render_github, render_human};
use crate::job::workspace::{Validation, validate};
use crate::output::{self, Hinted};

#[derive(Debug, Args)]
pub struct ValidateArgs {
    /// Job files or folders to check (folders are searched for *.yaml and *.yml).
    #[arg(default_value = "jobs")]
    pub paths: Vec<PathBuf>,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Human)]
    pub format: Format,
}

#[derive(Debug, Args)]
pub struct SchemaArgs {
    /// Print the schema of the project file (kdit.yaml) instead of job files.
    #[arg(long)]
    pub project: bool,
}

/// `kdit validate`.
pub fn command(args: &ValidateArgs) -> std::io::Result<ExitStatus> {
    let v = match validate(&args.paths) {
        Ok(v) => v,
        Err(e) => {
            output::error(
                Hinted::new(e.to_string())
                    .hint("give job files or folders that exist (default: jobs/)"),
            );
            return Ok(ExitStatus::Usage);
        }
    };
    let stdout = output::stdout();
    let mut out = stdout.lock();
    render(&v, args.format, &mut out)?;
    out.flush()?;
    Ok(if v.errors() > 0 {
        ExitStatus::InvalidJobs
    } else {
        ExitStatus::Success
    })
}

/// `kdit schema`.
pub fn schema(args: &SchemaArgs) -> serde_json::Result<ExitStatus> {
    let schema = if args.project {
        crate::job::spec::project_schema()
    } else {
        crate::job::spec::job_schema()
    };
    output::data_line(serde_json::to_string_pretty(&schema)?);
    Ok(ExitStatus::Success)
}

/// Writes the validation in the chosen format.
pub fn render(v: &Validation, format: Format, out: &mut dyn Write) -> std::io::Result<()> {
    match format {
        Format::Human => {
            for d in &v.diagnostics {
                writeln!(out, "{}", render_human(d))?;
            }
            let jobs = v.files.iter().filter(|f| f.kind == "job").count();
            let invalid = v.files.iter().filter(|f| f.errors > 0).count();
            let plural = |n: usize, w: &str| format!("{n} {w}{}", if n == 1 { "" } else { "s" });
            let mut tail = String::new();
            if v.warnings() > 0 {
                tail = format!(", {}", plural(v.warnings(), "warning"));
            }
            if invalid == 0 {
                writeln!(out, "ok: {} valid{tail}", plural(jobs, "job file"))?;
            } else {
                writeln!(
                    out,
                    "error: {} of {} invalid ({}{tail})",
                    invalid,
                    plural(v.files.len(), "file"),
                    plural(v.errors(), "error")
                )?;
            }
        }
        Format::Json => {
            let doc = serde_json::json!({
                "format_version": 1,
                "valid": v.errors() == 0,
                "files": v.files,
                "diagnostics": v.diagnostics,
            });
            serde_json::to_writer_pretty(&mut *out, &doc)?;
            writeln!(out)?;
        }
        Format::Github => {
            for d in &v.diagnostics {
                write!(out, "{}", render_github(d))?;
            }
            let invalid = v.files.iter().filter(|f| f.errors > 0).count();
            writeln!(
                out,
                "kdit validate: {} files checked, {invalid} invalid, {} errors",
                v.files.len(),
                v.errors()
            )?;
        }
    }
    Ok(())
}
