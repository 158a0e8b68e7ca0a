//! The sync commands — `plan`, `run`, `apply`, `history` — wiring the stages together:
//! rows from the source, state from PostgreSQL, lists from Klaviyo, the diff into a plan,
//! the plan rendered, then applied.
//!
//! In: a compiled job, a row feed, a state store, a Klaviyo client. Out: plans, reports,
//! exit statuses. I/O through the stages it calls; no logic of its own beyond the order.

pub mod feed;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Instant;

use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::apply::progress::Progress;
use crate::apply::spill::{Refresh, Spill, ToSend};
use crate::apply::{
    ApplyError, Failure, Report, Settings, apply, record_fingerprints, resolve_lists,
};
use crate::exit::ExitStatus;
use crate::job::compile::Job;
use crate::klaviyo::Client;
use crate::plan::diff::{Differ, RowOutcome};
use crate::plan::render::{self, Options};
use crate::plan::{FORMAT_VERSION, Plan};
use crate::state::{KnownRows, State, StateError};

/// Rows flowing from the source: outcomes on a bounded channel, in batches (one hand-over per
/// row would cost as much as a no-change run's diff), and the task producing them (which
/// reports the row count and query time, or the error that stopped it). An error ends the
/// outcomes: every row before it has been handed over.
pub type Feed = (
    mpsc::Receiver<Result<Vec<RowOutcome>, String>>,
    JoinHandle<Result<QueryDone, String>>,
);

/// How a query went.
#[derive(Debug, Clone, Copy, Default)]
pub struct QueryDone {
    pub rows: u64,
    pub seconds: f64,
}

/// Something that can run the job's query (again) and feed its rows.
pub trait RowSource: Send + Sync {
    /// Starts the query at once; its rows are read once `known` arrives (the state is read
    /// meanwhile, while the server works towards the first row). Rows whose fingerprint is in
    /// `known` may come as `RowOutcome::Known` (unchanged, not transformed). If `known` never
    /// arrives (its sender dropped), the feed ends with an error.
    fn feed(&self, known: tokio::sync::oneshot::Receiver<Arc<KnownRows>>) -> Feed;
    /// The query as shown in plans: file name (or "inline SQL") and parameters.
    fn label(&self) -> String;
}

/// Output options shared by plan, run and apply.
#[derive(Debug, Clone, Default)]
pub struct Output {
    pub show: usize,
    pub mask: bool,
    pub json: bool,
    pub quiet: bool,
    pub report: Option<PathBuf>,
    pub rejects: Option<PathBuf>,
}

/// Errors of a sync command.
#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error(transparent)]
    State(#[from] StateError),
    #[error(transparent)]
    Apply(#[from] ApplyError),
    #[error(transparent)]
    Klaviyo(#[from] crate::klaviyo::KlaviyoError),
    #[error(transparent)]
    Audience(#[from] crate::apply::audience::AudienceError),
    #[error("{0}")]
    Other(String),
}

/// Runs the query through the diff: the plan and, per mirrored list, the keys to remove.
/// With a `spill`, every profile to send and every rejected row is written to it, so the
/// apply sends exactly what the plan shows without reading the rows again.
pub async fn make_plan(
    job: &Job,
    rows: &dyn RowSource,
    state: &State<'_>,
    client: &Client,
    mut spill: Option<&mut Spill>,
) -> Result<(Plan, Vec<Vec<String>>), SyncError> {
    let list_names: Vec<String> = job.spec.lists.iter().map(|l| l.name.clone()).collect();
    let started = std::time::Instant::now();
    // The query starts before the state is read: a query that sorts or joins works towards
    // its first row on the server while the snapshot loads.
    let (known, known_later) = tokio::sync::oneshot::channel();
    let (mut rx, task) = rows.feed(known_later);
    let mut snapshot = state.snapshot(job.name(), &list_names).await?;
    let _ = known.send(snapshot.known.clone());
    tracing::debug!(
        "state: read the snapshot of job {} in {:.2} s",
        job.name(),
        started.elapsed().as_secs_f64()
    );
    let mut existing = Vec::new();
    for name in &list_names {
        existing.push(client.find_list(name).await?.is_some());
    }
    let lists: Vec<(String, bool)> = job
        .spec
        .lists
        .iter()
        .map(|l| (l.name.clone(), l.mode == crate::job::spec::ListMode::Mirror))
        .collect();
    let last_run = snapshot.last_run.clone();
    let base = Plan {
        format_version: FORMAT_VERSION,
        job: job.name().to_string(),
        job_file: job.path.display().to_string(),
        query: rows.label(),
        batch_size: job.batch_size,
        last_run,
        ..Plan::default()
    };
    let mut consent = crate::plan::consent::Planner::new(
        job,
        if crate::plan::consent::reads_columns(&job.spec) {
            state.consent_carriers(job.name()).await?
        } else {
            HashMap::new()
        },
    );
    let feeding = std::time::Instant::now();
    let mut differ = Differ::new(&mut snapshot, &lists, base).with_salt(job.profile_tags_salt());
    let spill_error =
        |e: std::io::Error| SyncError::Other(format!("cannot write the plan's work file: {e}"));
    while let Some(batch) = rx.recv().await {
        for next in batch.map_err(SyncError::Other)? {
            match next {
                RowOutcome::Profile(d) => {
                    let decision = differ.observe(&d);
                    let consent = consent.decide(&d.key, decision.action, &d.attributes);
                    let Some(spill) = spill.as_deref_mut() else {
                        continue;
                    };
                    if decision.sends() {
                        spill
                            .send(ToSend {
                                row: d.row,
                                key: d.key,
                                hash: decision.hash,
                                action: decision.action,
                                adds: decision.add_lists,
                                unset: d.unset,
                                consent,
                                attributes: d.attributes,
                                source: d.source,
                            })
                            .map_err(spill_error)?;
                    } else if let Some(source) = d.source {
                        // Unchanged, but the state lacks this row's fingerprint (the mapping
                        // changed, or kdit did): record it so the next run can skip the row.
                        spill
                            .refresh(Refresh { key: d.key, source })
                            .map_err(spill_error)?;
                    }
                }
                RowOutcome::Known { row, index, mix } => {
                    if !differ.observe_known(index, mix) {
                        return Err(SyncError::Other(format!(
                            "row {row}: the state changed while the plan was made; run again"
                        )));
                    }
                }
                RowOutcome::Reject(r) => {
                    differ.reject(&r);
                    if let Some(spill) = spill.as_deref_mut() {
                        spill.reject(&r).map_err(spill_error)?;
                    }
                }
            }
        }
    }
    if let Some(spill) = spill {
        spill.close().map_err(spill_error)?;
    }
    let done = task
        .await
        .map_err(|e| SyncError::Other(format!("the query task failed: {e}")))?
        .map_err(SyncError::Other)?;
    tracing::debug!(
        "rows: read, matched and diffed in {:.2} s",
        feeding.elapsed().as_secs_f64()
    );
    // Old payloads of the update samples, for field-level diffs.
    let sample_keys = differ.update_sample_keys();
    let old = if sample_keys.is_empty() {
        HashMap::new()
    } else {
        state.payloads(job.name(), &sample_keys).await?
    };
    let mirrored = differ.mirrored();
    let mut plan = differ.finish(&old, &existing);
    let removals = if plan.lists.iter().any(|l| l.removes > 0) {
        state
            .removal_keys(job.name(), &snapshot, &list_names, mirrored)
            .await?
    } else {
        vec![Vec::new(); list_names.len()]
    };
    for (l, keys) in plan.lists.iter_mut().zip(&removals) {
        l.remove_samples = keys
            .iter()
            .take(crate::plan::diff::SAMPLES)
            .cloned()
            .collect();
    }
    let audience = crate::apply::audience::plan(job, client, state).await?;
    plan.segments = audience.segments;
    plan.tags = audience.tags;
    plan.dropped_segments = audience.dropped_segments;
    plan.tag_group_conflicts = audience.conflicts;
    plan.consent_changes(job, consent.subscribes, consent.unsubscribes);
    plan.query_seconds = done.seconds;
    plan.check_guards(job.guards.max_invalid, job.guards.max_removals);
    Ok((plan, removals))
}

/// Prints a plan to stdout in the chosen rendering.
pub fn print_plan(plan: &Plan, out: &Output) {
    let opts = Options {
        show: out.show,
        mask: out.mask,
    };
    if out.json {
        println!("{}", render::json(plan, opts));
    } else {
        print!("{}", render::human(plan, opts));
    }
}

/// Writes a plan file (`kdit plan -o`).
pub fn save_plan(plan: &Plan, path: &Path) -> Result<(), SyncError> {
    let text = serde_json::to_string_pretty(plan).map_err(|e| SyncError::Other(e.to_string()))?;
    std::fs::write(path, text)
        .map_err(|e| SyncError::Other(format!("cannot write {}: {e}", path.display())))
}

/// Reads a plan file.
pub fn load_plan(path: &Path) -> Result<Plan, SyncError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| SyncError::Other(format!("cannot read {}: {e}", path.display())))?;
    let plan: Plan = serde_json::from_str(&text)
        .map_err(|e| SyncError::Other(format!("{} is not a kdit plan: {e}", path.display())))?;
    if plan.format_version != FORMAT_VERSION {
        return Err(SyncError::Other(format!(
            "{} has plan format {}, this kdit reads format {FORMAT_VERSION}; make a new plan",
            path.display(),
            plan.format_version
        )));
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
            crate::output::thousands(saved.rows),
            crate::output::thousands(fresh.rows)
        ));
    }
    None
}

/// Profiles written by one run from which the state's statistics are refreshed at its end.
const ANALYZE_AFTER: u64 = 1_000;
/// The share of the state (1 in N profiles) a run must write for `profiles` to be vacuumed at
/// its end as well (autovacuum's own default is 1 in 5, when autovacuum runs).
const VACUUM_SHARE: u64 = 10;

/// Plans and applies one job under its run lock. `saved`: a plan to hold the run to.
#[allow(clippy::too_many_arguments)]
pub async fn run(
    job: &Job,
    rows: &dyn RowSource,
    state: &State<'_>,
    client: &Client,
    holder: &str,
    saved: Option<&Plan>,
    out: &Output,
    stop: Arc<AtomicBool>,
) -> Result<ExitStatus, SyncError> {
    let run_id = state.begin_run(job.name(), holder).await?;
    let result = run_locked(job, rows, state, client, run_id, saved, out, stop).await;
    let (status, summary) = match &result {
        Ok((status, report)) => (
            match status {
                ExitStatus::Success => "ok",
                ExitStatus::PartialFailure => "partial",
                ExitStatus::GuardTripped => "guard",
                _ => "failed",
            },
            serde_json::to_value(report).unwrap_or_default(),
        ),
        Err(SyncError::Apply(ApplyError::Interrupted)) => ("interrupted", serde_json::Value::Null),
        Err(e) => ("failed", serde_json::json!({ "error": e.to_string() })),
    };
    state
        .finish_run(job.name(), run_id, status, &summary)
        .await?;
    result.map(|(s, _)| s)
}

#[allow(clippy::too_many_arguments)]
async fn run_locked(
    job: &Job,
    rows: &dyn RowSource,
    state: &State<'_>,
    client: &Client,
    run_id: i64,
    saved: Option<&Plan>,
    out: &Output,
    stop: Arc<AtomicBool>,
) -> Result<(ExitStatus, Option<Report>), SyncError> {
    let mut spill = Spill::create()
        .map_err(|e| SyncError::Other(format!("cannot create the plan's work file: {e}")))?;
    let (plan, removals) = make_plan(job, rows, state, client, Some(&mut spill)).await?;
    if let Some(saved) = saved {
        if let Some(why) = stale_reason(saved, &plan) {
            return Err(SyncError::Other(format!(
                "the saved plan is stale: {why}; run `kdit plan` again"
            )));
        }
    } else {
        print_plan(&plan, out);
    }
    if !plan.guards_ok() {
        eprintln!("error: a guard stopped the run before any write (see Guards above)");
        eprintln!("hint: if the change is intended, raise the guard in the job file for this run");
        return Ok((ExitStatus::GuardTripped, None));
    }
    record_fingerprints(job, state, &spill).await?;
    if !plan.has_changes() {
        if let Some(path) = &out.rejects {
            write_rejects(path, &spilled_rejects(&spill)?)?;
        }
        // Nothing to send; the ledger still records what the run saw.
        let report = Report {
            format_version: 1,
            job: job.name().to_string(),
            run_id,
            status: "ok".into(),
            rows: plan.rows,
            unchanged: plan.unchanged,
            rejected: plan.rejected,
            api: client.stats(),
            ..Report::default()
        };
        if let Some(path) = &out.report {
            let text = serde_json::to_string_pretty(&report)
                .map_err(|e| SyncError::Other(e.to_string()))?;
            std::fs::write(path, text)
                .map_err(|e| SyncError::Other(format!("cannot write {}: {e}", path.display())))?;
        }
        let status = if plan.rejected > 0 {
            ExitStatus::PartialFailure
        } else {
            ExitStatus::Success
        };
        return Ok((status, Some(report)));
    }
    let (list_ids, created) = resolve_lists(job, client, state, true).await?;
    let list_ids: Vec<String> = list_ids
        .into_iter()
        .map(|i| i.unwrap_or_default())
        .collect();
    let audience = if plan.audience_changes() {
        let by_name = job
            .spec
            .lists
            .iter()
            .zip(&list_ids)
            .map(|(l, id)| (l.name.clone(), id.clone()))
            .collect();
        Some(crate::apply::audience::apply(job, client, state, &by_name).await?)
    } else {
        None
    };
    let progress = Arc::new(Progress::new(plan.rows, out.quiet));
    let p = progress.clone();
    let settings = Settings {
        batch_size: job.batch_size as usize,
        concurrency: job.concurrency as usize,
        stop: stop.clone(),
        progress: Box::new(move |rows, confirmed| p.update(rows, confirmed)),
    };
    let started = Instant::now();
    let result = apply(
        job, &plan, run_id, client, state, &list_ids, &spill, &removals, settings,
    )
    .await;
    progress.finish();
    let (mut report, failures) = match result {
        Ok(r) => r,
        Err(ApplyError::Interrupted) => {
            eprintln!(
                "interrupted: batches already sent were confirmed and recorded; run `kdit run {}` again to resume",
                job.path.display()
            );
            return Err(SyncError::Apply(ApplyError::Interrupted));
        }
        Err(e) => return Err(e.into()),
    };
    report.lists_created = created;
    let written = report.created + report.updated;
    let vacuum = written * VACUUM_SHARE >= plan.state_profiles + report.created;
    if written >= ANALYZE_AFTER
        && let Err(e) = state.analyze(vacuum).await
    {
        tracing::warn!("could not refresh the state's statistics: {e}");
    }
    if let Some(a) = audience {
        report.segments_created = a.segments_created;
        report.segments_updated = a.segments_updated;
        report.tags_added = a.tags_added;
        report.tags_removed = a.tags_removed;
    }
    report.seconds = started.elapsed().as_secs_f64();
    if let Some(path) = &out.report {
        let text =
            serde_json::to_string_pretty(&report).map_err(|e| SyncError::Other(e.to_string()))?;
        std::fs::write(path, text)
            .map_err(|e| SyncError::Other(format!("cannot write {}: {e}", path.display())))?;
    }
    if let Some(path) = &out.rejects {
        write_rejects(path, &failures)?;
    }
    if !out.quiet {
        eprintln!(
            "done: {} created, {} updated, {} unchanged, {} rejected, {} failed; {} list adds, {} removals; {} API calls ({} rate-limited, {} retries) in {:.1}s",
            crate::output::thousands(report.created),
            crate::output::thousands(report.updated),
            crate::output::thousands(report.unchanged),
            crate::output::thousands(report.rejected),
            crate::output::thousands(report.failed),
            crate::output::thousands(report.list_adds),
            crate::output::thousands(report.list_removals),
            crate::output::thousands(report.api.total_calls),
            report.api.rate_limited,
            report.api.retries,
            report.seconds
        );
        let mut audience = Vec::new();
        if !report.segments_created.is_empty() {
            audience.push(format!(
                "{} segments created",
                report.segments_created.len()
            ));
        }
        if !report.segments_updated.is_empty() {
            audience.push(format!(
                "{} segments updated",
                report.segments_updated.len()
            ));
        }
        if report.tags_added > 0 {
            audience.push(format!("{} tags added", report.tags_added));
        }
        if report.tags_removed > 0 {
            audience.push(format!("{} tags removed", report.tags_removed));
        }
        if report.subscribed > 0 {
            audience.push(format!(
                "{} profiles subscribed",
                crate::output::thousands(report.subscribed)
            ));
        }
        if report.unsubscribed > 0 {
            audience.push(format!(
                "{} profiles unsubscribed",
                crate::output::thousands(report.unsubscribed)
            ));
        }
        if !audience.is_empty() {
            eprintln!("audience: {}", audience.join(", "));
        }
        if let Some(path) = &out.report {
            eprintln!("report: {}", path.display());
        }
    }
    let status = if report.failed + report.rejected > 0 {
        ExitStatus::PartialFailure
    } else {
        ExitStatus::Success
    };
    Ok((status, Some(report)))
}

/// Every rejected row the plan found.
fn spilled_rejects(spill: &Spill) -> Result<Vec<Failure>, SyncError> {
    let mut out = Vec::new();
    let read_error =
        |e: std::io::Error| SyncError::Other(format!("reading the plan's work file: {e}"));
    for entry in spill.read().map_err(read_error)? {
        if let crate::apply::spill::Entry::Reject(r) = entry.map_err(read_error)? {
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
pub fn write_rejects(path: &Path, failures: &[Failure]) -> Result<(), SyncError> {
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
        .map_err(|e| SyncError::Other(format!("cannot write {}: {e}", path.display())))
}
