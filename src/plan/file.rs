//! Plan files: a plan saved by `kdit plan -o` and read back by `kdit apply`, the format
//! check, and why a saved plan no longer applies.
//!
//! In: a `Plan` and a path; for `stale_reason`, the saved plan and a fresh one. Out: the file,
//! the plan read back, or the reason. File I/O (`save`, `load`); `stale_reason` is pure.

use std::path::{Path, PathBuf};

use crate::plan::{FORMAT_VERSION, Plan};

/// Why a plan file could not be written or read.
#[derive(Debug, thiserror::Error)]
pub enum PlanFileError {
    #[error("{0}")]
    Encode(serde_json::Error),
    #[error("cannot write {}: {error}", path.display())]
    Write {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("cannot read {}: {error}", path.display())]
    Read {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("{} is not a kdit plan: {error}", path.display())]
    NotAPlan {
        path: PathBuf,
        error: serde_json::Error,
    },
    #[error(
        "{} has plan format {found}, this kdit reads format {FORMAT_VERSION}; make a new plan",
        path.display()
    )]
    Format { path: PathBuf, found: u32 },
}

/// Writes a plan file (`kdit plan -o`).
pub fn save(plan: &Plan, path: &Path) -> Result<(), PlanFileError> {
    let text = serde_json::to_string_pretty(plan).map_err(PlanFileError::Encode)?;
    std::fs::write(path, text).map_err(|error| PlanFileError::Write {
        path: path.to_path_buf(),
        error,
    })
}

/// Reads a plan file, refusing one of another format version.
pub fn load(path: &Path) -> Result<Plan, PlanFileError> {
    let text = std::fs::read_to_string(path).map_err(|error| PlanFileError::Read {
        path: path.to_path_buf(),
        error,
    })?;
    let plan: Plan = serde_json::from_str(&text).map_err(|error| PlanFileError::NotAPlan {
        path: path.to_path_buf(),
        error,
    })?;
    if plan.format_version != FORMAT_VERSION {
        return Err(PlanFileError::Format {
            path: path.to_path_buf(),
            found: plan.format_version,
        });
    }
    Ok(plan)
}

/// Why a saved plan no longer applies, if it doesn't.
pub fn stale_reason(saved: &Plan, fresh: &Plan) -> Option<String> {
    if saved.job != fresh.job {
        return Some(format!(
            "it is a plan for job `{}`, not `{}`",
            saved.job, fresh.job
        ));
    }
    if saved.state_version != fresh.state_version {
        return Some(
            "the state moved since the plan was made (another run applied changes)".into(),
        );
    }
    if saved.rows_digest != fresh.rows_digest {
        return Some(format!(
            "the query's result changed since the plan was made ({} rows then, {} now)",
            crate::output::words::thousands(saved.rows),
            crate::output::words::thousands(fresh.rows)
        ));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_saved_plan_reads_back_and_another_format_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("plan.json");
        let plan = Plan {
            format_version: FORMAT_VERSION,
            job: "vip".into(),
            rows: 3,
            ..Plan::default()
        };
        save(&plan, &path).unwrap();
        let back = load(&path).unwrap();
        assert_eq!((back.job.as_str(), back.rows), ("vip", 3));
        assert_eq!(stale_reason(&plan, &back), None);
        let moved = Plan {
            rows_digest: "other".into(),
            rows: 4,
            ..back.clone()
        };
        assert_eq!(
            stale_reason(&plan, &moved).unwrap(),
            "the query's result changed since the plan was made (3 rows then, 4 now)"
        );
        save(
            &Plan {
                format_version: 0,
                ..plan
            },
            &path,
        )
        .unwrap();
        assert_eq!(
            load(&path).unwrap_err().to_string(),
            format!(
                "{} has plan format 0, this kdit reads format 1; make a new plan",
                path.display()
            )
        );
    }
}
