//! What a run did: the `Report` (`kdit run --report`, the ledger's summary) and the rows that
//! did not make it (`Failure`), written by `--rejects` as CSV or JSON lines.
//!
//! In: counts from `apply`, failures, the plan's work file. Out: the report value, the rejects
//! file. File I/O (`write_rejects`, `spilled_rejects`).

use std::path::Path;

use serde::Serialize;

use crate::apply::spill::{Spill, Spilled};
use crate::klaviyo::Stats;
use crate::output::thousands;

/// A row that did not make it into Klaviyo (rejected before sending, or refused by Klaviyo).
#[derive(Debug, Clone, Serialize)]
pub struct Failure {
    pub row: u64,
    pub key: String,
    pub field: String,
    pub rule: String,
    pub message: String,
}

/// What a run did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Report {
    pub format_version: u32,
    pub job: String,
    pub run_id: i64,
    pub status: String,
    pub seconds: f64,
    pub rows: u64,
    pub created: u64,
    pub updated: u64,
    pub unchanged: u64,
    pub rejected: u64,
    pub failed: u64,
    pub confirmed: u64,
    pub bulk_jobs: u64,
    pub cleared: u64,
    pub lists_created: Vec<String>,
    pub list_adds: u64,
    pub list_removals: u64,
    pub segments_created: Vec<String>,
    pub segments_updated: Vec<String>,
    pub tags_added: u64,
    /// Profiles subscribed to marketing (`consent.subscribe`).
    pub subscribed: u64,
    /// Profiles unsubscribed from marketing (`consent.unsubscribe`).
    #[serde(default)]
    pub unsubscribed: u64,
    /// Tags taken off lists and segments (dropped from the job).
    #[serde(default)]
    pub tags_removed: u64,
    pub api: Stats,
    pub success_rate: f64,
}

impl Report {
    /// The run's summary as printed on stderr: a `done:` line, and an `audience:` line when
    /// segments, tags or consent changed.
    pub fn summary(&self) -> String {
        let mut text = format!(
            "done: {} created, {} updated, {} unchanged, {} rejected, {} failed; {} list adds, {} removals; {} API calls ({} rate-limited, {} retries) in {:.1}s\n",
            thousands(self.created),
            thousands(self.updated),
            thousands(self.unchanged),
            thousands(self.rejected),
            thousands(self.failed),
            thousands(self.list_adds),
            thousands(self.list_removals),
            thousands(self.api.total_calls),
            self.api.rate_limited,
            self.api.retries,
            self.seconds
        );
        let mut audience = Vec::new();
        if !self.segments_created.is_empty() {
            audience.push(format!("{} segments created", self.segments_created.len()));
        }
        if !self.segments_updated.is_empty() {
            audience.push(format!("{} segments updated", self.segments_updated.len()));
        }
        if self.tags_added > 0 {
            audience.push(format!("{} tags added", self.tags_added));
        }
        if self.tags_removed > 0 {
            audience.push(format!("{} tags removed", self.tags_removed));
        }
        if self.subscribed > 0 {
            audience.push(format!(
                "{} profiles subscribed",
                thousands(self.subscribed)
            ));
        }
        if self.unsubscribed > 0 {
            audience.push(format!(
                "{} profiles unsubscribed",
                thousands(self.unsubscribed)
            ));
        }
        if !audience.is_empty() {
            text.push_str(&format!("audience: {}\n", audience.join(", ")));
        }
        text
    }
}

/// Every rejected row the plan found (the work file's reject lines), in row order as
/// written.
pub fn spilled_rejects(spill: &Spill) -> std::io::Result<Vec<Failure>> {
    let mut out = Vec::new();
    for entry in spill.read()? {
        if let Spilled::Reject(r) = entry? {
            out.push(Failure {
                row: r.row,
                key: r.key,
                field: r.field,
                rule: r.rule,
                message: r.message,
            });
        }
    }
    Ok(out)
}

/// Writes rejected and failed rows: CSV when the file ends in `.csv`, JSON lines otherwise.
pub fn write_rejects(path: &Path, failures: &[Failure]) -> std::io::Result<()> {
    let mut text = String::new();
    let csv = path.extension().is_some_and(|e| e == "csv");
    if csv {
        text.push_str("row,key,field,rule,message\n");
    }
    for f in failures {
        if csv {
            let q = |s: &str| format!("\"{}\"", s.replace('"', "\"\""));
            text.push_str(&format!(
                "{},{},{},{},{}\n",
                f.row,
                q(&f.key),
                q(&f.field),
                q(&f.rule),
                q(&f.message)
            ));
        } else {
            text.push_str(&serde_json::to_string(f).unwrap_or_default());
            text.push('\n');
        }
    }
    std::fs::write(path, text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_summary_says_what_changed_and_the_audience_only_when_it_changed() {
        let mut r = Report {
            created: 1_204,
            updated: 3,
            list_adds: 1_204,
            seconds: 2.345,
            ..Report::default()
        };
        r.api.total_calls = 12;
        assert_eq!(
            r.summary(),
            "done: 1,204 created, 3 updated, 0 unchanged, 0 rejected, 0 failed; 1,204 list adds, 0 removals; 12 API calls (0 rate-limited, 0 retries) in 2.3s\n"
        );
        r.segments_created = vec!["VIP".into()];
        r.tags_added = 2;
        r.subscribed = 1_000;
        assert!(r.summary().ends_with(
            "\naudience: 1 segments created, 2 tags added, 1,000 profiles subscribed\n"
        ));
    }
}
