//! The order of the stages. `make_plan`: the query starts, the state's snapshot loads
//! meanwhile, the rows go through the diff into a `Plan` (each profile to send and each
//! rejected row written to the plan's work file), then the removals, the audience and the
//! guards. `run`, under the job's run lock (recorded in the ledger): the plan is made, a saved
//! plan is held to it (`plan::file::stale_reason`), a tripped guard stops the run before any
//! write, unchanged rows' fingerprints are recorded, lists are resolved, segments and tags
//! applied, then the profiles (`apply`); the state's statistics are refreshed after a large
//! write, and the report and rejects files written.
//!
//! In: a compiled job, a `RowSource`, a state store, a Klaviyo client, output options. Out: a
//! plan, or a run's exit status and `Report`. I/O through the stages it calls; what the user
//! reads as a run goes (the plan, a guard's refusal, the interruption notice, the summary) it
//! hands to the caller's `Narrate`, which prints it.

pub mod feed;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Instant;

use crate::apply::progress::Progress;
use crate::apply::report::{Report, spilled_rejects, write_rejects};
use crate::apply::spill::{Refresh, Spill, ToSend};
use crate::apply::{ApplyError, Settings, apply, record_fingerprints, resolve_lists};
use crate::exit::ExitStatus;
use crate::job::compile::Job;
use crate::klaviyo::Client;
use crate::plan::diff::Differ;
use crate::plan::{FORMAT_VERSION, Plan};
use crate::rows::transform::StreamedRow;
use crate::state::{State, StateError};
use crate::sync::feed::{FeedError, RowSource};

/// What a run shows the user as it goes. The caller prints it (`commands::run`, through
/// `output`); `run` only says when.
pub trait Narrate: Sync {
    /// The plan is made (not called when a saved plan is being applied).
    fn plan(&self, plan: &Plan, out: &Output);
    /// A guard stopped the run before any write.
    fn guard_tripped(&self);
    /// Ctrl-C stopped the apply after the batches in flight.
    fn interrupted(&self, job: &Job);
    /// The run's report, at its end.
    fn done(&self, report: &Report, out: &Output);
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
    /// The rows stopped (or never started); `FeedError::Cancelled` when Ctrl-C cancelled the
    /// query.
    #[error(transparent)]
    Feed(#[from] FeedError),
    /// The task reading the rows panicked or was cancelled.
    #[error("the query task failed: {0}")]
    QueryTask(#[from] tokio::task::JoinError),
    /// A row the state recognised has no entry any more.
    #[error("row {row}: the state changed while the plan was made; run again")]
    StateChanged { row: u64 },
    /// A saved plan no longer matches the rows or the state.
    #[error("the saved plan is stale: {why}; run `kdit plan` again")]
    StalePlan { why: String },
    /// The plan's work file (`doing`: "cannot create the plan's work file", …).
    #[error("{doing}: {source}")]
    WorkFile {
        doing: &'static str,
        source: std::io::Error,
    },
    /// A file the run writes (`--report`, `--rejects`).
    #[error("cannot write {}: {source}", .path.display())]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Report(#[from] serde_json::Error),
}

impl SyncError {
    /// Whether Ctrl-C cancelled the query (nothing was written).
    pub fn is_cancelled(&self) -> bool {
        matches!(self, SyncError::Feed(FeedError::Cancelled { .. }))
    }
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
    let spill_error = |source| SyncError::WorkFile {
        doing: "cannot write the plan's work file",
        source,
    };
    while let Some(batch) = rx.recv().await {
        for next in batch? {
            match next {
                StreamedRow::Profile(p) => {
                    let unset: Vec<String> = p.unset.iter().map(|f| f.to_string()).collect();
                    let decision = differ.observe(&p, &unset);
                    let consent = consent.decide(&p.key, decision.action, &p.attributes);
                    let Some(spill) = spill.as_deref_mut() else {
                        continue;
                    };
                    if decision.sends() {
                        spill
                            .send(ToSend {
                                row: p.row_number,
                                key: p.key,
                                hash: decision.hash,
                                action: decision.action,
                                adds: decision.add_lists,
                                unset,
                                consent,
                                attributes: p.attributes,
                                source: p.source,
                            })
                            .map_err(spill_error)?;
                    } else if let Some(source) = p.source {
                        // Unchanged, but the state lacks this row's fingerprint (the mapping
                        // changed, or kdit did): record it so the next run can skip the row.
                        spill
                            .refresh(Refresh { key: p.key, source })
                            .map_err(spill_error)?;
                    }
                }
                StreamedRow::Known {
                    row_number,
                    index,
                    mix,
                } => {
                    if !differ.observe_known(index, mix) {
                        return Err(SyncError::StateChanged { row: row_number });
                    }
                }
                StreamedRow::Rejected(r) => {
                    let r = feed::rejected(&job.spec, r);
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
    let done = task.await??;
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
    say: &dyn Narrate,
    stop: Arc<AtomicBool>,
) -> Result<ExitStatus, SyncError> {
    let run_id = state.begin_run(job.name(), holder).await?;
    let result = run_locked(job, rows, state, client, run_id, saved, out, say, stop).await;
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
    say: &dyn Narrate,
    stop: Arc<AtomicBool>,
) -> Result<(ExitStatus, Option<Report>), SyncError> {
    let mut spill = Spill::create().map_err(|source| SyncError::WorkFile {
        doing: "cannot create the plan's work file",
        source,
    })?;
    let (plan, removals) = make_plan(job, rows, state, client, Some(&mut spill)).await?;
    if let Some(saved) = saved {
        if let Some(why) = crate::plan::file::stale_reason(saved, &plan) {
            return Err(SyncError::StalePlan { why });
        }
    } else {
        say.plan(&plan, out);
    }
    if !plan.guards_ok() {
        say.guard_tripped();
        return Ok((ExitStatus::GuardTripped, None));
    }
    record_fingerprints(job, state, &spill).await?;
    if !plan.has_changes() {
        if let Some(path) = &out.rejects {
            let rejects = spilled_rejects(&spill).map_err(|source| SyncError::WorkFile {
                doing: "reading the plan's work file",
                source,
            })?;
            write_rejects(path, &rejects).map_err(|e| cannot_write(path, e))?;
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
            save_report(path, &report)?;
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
            say.interrupted(job);
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
        save_report(path, &report)?;
    }
    if let Some(path) = &out.rejects {
        write_rejects(path, &failures).map_err(|e| cannot_write(path, e))?;
    }
    say.done(&report, out);
    let status = if report.failed + report.rejected > 0 {
        ExitStatus::PartialFailure
    } else {
        ExitStatus::Success
    };
    Ok((status, Some(report)))
}

fn cannot_write(path: &Path, source: std::io::Error) -> SyncError {
    SyncError::Write {
        path: path.to_path_buf(),
        source,
    }
}

/// Writes the run's report (`--report`).
fn save_report(path: &Path, report: &Report) -> Result<(), SyncError> {
    let text = serde_json::to_string_pretty(report)?;
    std::fs::write(path, text).map_err(|e| cannot_write(path, e))
}
