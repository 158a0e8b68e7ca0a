//! Apply: a plan in, Klaviyo changed, state recorded only after Klaviyo confirms.
//!
//! In: the job, the plan and its work file (`spill`: every profile to send, every rejected
//! row), the state store and the Klaviyo client. Out: a `Report` of every row and the rows
//! that failed. Profiles go in bulk import jobs (≤ 10,000 / 5 MB, several in flight), grouped
//! by the lists they must join; per-profile import errors are tied back to rows; a batch
//! Klaviyo refuses whole is split so valid rows still go; consent changes follow a confirmed
//! batch (`consent`); mirror removals go by Klaviyo id, looked up by the job's key. I/O.

pub mod audience;
pub mod consent;
pub mod progress;
pub mod report;
pub mod spill;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde_json::value::RawValue;
use serde_json::{Value, json};
use tokio::task::JoinSet;

use crate::apply::consent::{Consenting, change_consent};
use crate::apply::report::{Failure, Report};
use crate::apply::spill::{Spill, Spilled};
use crate::digest::{Fingerprint, Hash};
use crate::job::compile::Job;
use crate::klaviyo::watch::Watcher;
use crate::klaviyo::{BULK_MAX_BYTES, Client, KlaviyoError};
use crate::plan::{Action, Plan};
use crate::state::{Confirmed, State, StateError};

/// Errors that stop a run.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error(transparent)]
    State(#[from] StateError),
    #[error(transparent)]
    Klaviyo(#[from] KlaviyoError),
    #[error("reading rows: {0}")]
    Source(String),
    #[error("interrupted")]
    Interrupted,
}

/// One profile on its way to Klaviyo.
#[derive(Debug, Clone)]
struct BatchItem {
    row: u64,
    key: String,
    /// The attributes as serialised JSON: ~300 bytes a profile rather than a tree of values,
    /// so batches in flight stay small.
    attributes: Box<RawValue>,
    unset: Vec<String>,
    hash: Hash,
    source: Option<Fingerprint>,
    action: Action,
    /// Lists this send adds the profile to.
    adds: u32,
    /// The consent change carried out once Klaviyo confirmed the profile.
    consent: Option<crate::plan::consent::ConsentAction>,
}

/// What one bulk batch came back with.
#[derive(Debug, Default)]
struct BatchOutcome {
    seq: i32,
    bulk_ids: Vec<String>,
    confirmed: Vec<BatchItem>,
    failures: Vec<Failure>,
    /// Profiles subscribed (consent) after this batch.
    subscribed: u64,
    /// Profiles unsubscribed after this batch.
    unsubscribed: u64,
}

/// Settings of one apply.
pub struct Settings {
    pub batch_size: usize,
    pub concurrency: usize,
    /// Set by Ctrl-C: stop sending new batches, let in-flight ones confirm.
    pub stop: Arc<AtomicBool>,
    /// Called with (rows seen, profiles confirmed) as work progresses.
    pub progress: Box<dyn Fn(u64, u64) + Send + Sync>,
}

/// Klaviyo list ids for the job's lists, creating the absent ones.
pub async fn resolve_lists(
    job: &Job,
    client: &Client,
    state: &State<'_>,
    create: bool,
) -> Result<(Vec<Option<String>>, Vec<String>), ApplyError> {
    let mut ids = Vec::new();
    let mut created = Vec::new();
    for list in &job.spec.lists {
        let found = client.find_list(&list.name).await?;
        let id = match found {
            Some(id) => Some(id),
            None if create => {
                let id = client.create_list(&list.name).await?;
                created.push(list.name.clone());
                Some(id)
            }
            None => None,
        };
        if let Some(id) = &id {
            state.save_list_id(job.name(), &list.name, id).await?;
        }
        ids.push(id);
    }
    Ok((ids, created))
}

/// Records the fingerprints of unchanged rows the state did not know (the spill's refresh
/// lines), so the next run recognises them. Nothing is sent: Klaviyo already has these
/// payloads, so this is safe before, after or without any send.
pub async fn record_fingerprints(
    job: &Job,
    state: &State<'_>,
    spill: &Spill,
) -> Result<(), ApplyError> {
    if spill.refreshes == 0 {
        return Ok(());
    }
    let unreadable =
        |e: std::io::Error| ApplyError::Source(format!("reading the plan's work file: {e}"));
    let mut chunk: Vec<(String, Fingerprint)> = Vec::new();
    for entry in spill.read().map_err(unreadable)? {
        if let Spilled::Refresh(r) = entry.map_err(unreadable)? {
            chunk.push((r.key, r.source));
            if chunk.len() >= REFRESH_CHUNK {
                state.refresh_sources(job.name(), &chunk).await?;
                chunk.clear();
            }
        }
    }
    state.refresh_sources(job.name(), &chunk).await?;
    Ok(())
}

/// Sends what the plan found (its spill): profiles in bulk imports, then mirror removals.
#[allow(clippy::too_many_arguments)]
pub async fn apply(
    job: &Job,
    plan: &Plan,
    run_id: i64,
    client: &Client,
    state: &State<'_>,
    list_ids: &[String],
    spill: &Spill,
    removals: &[Vec<String>],
    settings: Settings,
) -> Result<(Report, Vec<Failure>), ApplyError> {
    let started = Instant::now();
    let mut failures: Vec<Failure> = Vec::new();
    let mut report = Report {
        format_version: 1,
        job: job.name().to_string(),
        run_id,
        ..Report::default()
    };
    // Pending batches, by the set of lists their profiles join.
    let mut buckets: HashMap<u64, (Vec<BatchItem>, usize)> = HashMap::new();
    let mut batches = Batches {
        in_flight: JoinSet::new(),
        client,
        watcher: Watcher::start(client.clone(), POLL_INTERVAL),
        list_ids,
        key_field: job.key.field(),
        concurrency: settings.concurrency.max(1),
        job,
        run_id,
        state,
        seq: 0,
        meta: job.profile_tags_meta().map(Arc::from),
        consent: job.spec.consent.is_some(),
        totals: Totals {
            report: &mut report,
            failures: &mut failures,
            confirmed: 0,
        },
    };
    let batch_size = settings.batch_size.max(1);
    // Every profile carries the job's `meta` (profile tags) too.
    let meta_len = batches.meta.as_ref().map_or(0, |m| m.len() + 8);
    // Room for the envelope around the profiles.
    let byte_budget = BULK_MAX_BYTES - 64 * 1024;
    let unreadable =
        |e: std::io::Error| ApplyError::Source(format!("reading the plan's work file: {e}"));

    let mut seen = 0u64;
    for entry in spill.read().map_err(unreadable)? {
        if settings.stop.load(Ordering::Relaxed) {
            break;
        }
        match entry.map_err(unreadable)? {
            // Recorded by `record_fingerprints`, sends or not.
            Spilled::Refresh(_) => continue,
            Spilled::Reject(r) => {
                seen += 1;
                batches.totals.failures.push(Failure {
                    row: r.row,
                    key: r.key,
                    field: r.field,
                    rule: r.rule,
                    message: r.message,
                });
            }
            Spilled::Send(s) => {
                seen += 1;
                let size = s.attributes.get().len() + 32 + meta_len;
                let bits = s.adds;
                let bucket = buckets.entry(bits).or_default();
                if !bucket.0.is_empty() && bucket.1 + size > byte_budget {
                    let items = std::mem::take(&mut bucket.0);
                    bucket.1 = 0;
                    batches.send(items, bits).await?;
                }
                let bucket = buckets.entry(bits).or_default();
                bucket.0.push(BatchItem {
                    row: s.row,
                    key: s.key,
                    attributes: s.attributes,
                    unset: s.unset,
                    hash: s.hash,
                    source: s.source,
                    action: s.action,
                    adds: bits.count_ones(),
                    consent: s.consent,
                });
                bucket.1 += size;
                if bucket.0.len() >= batch_size {
                    let items = std::mem::take(&mut bucket.0);
                    bucket.1 = 0;
                    batches.send(items, bits).await?;
                }
            }
        }
        if seen % 5_000 == 0 {
            (settings.progress)(seen, batches.totals.confirmed);
        }
    }
    let interrupted = settings.stop.load(Ordering::Relaxed);
    if !interrupted {
        let mut rest: Vec<(u64, Vec<BatchItem>)> = buckets
            .into_iter()
            .map(|(bits, (items, _))| (bits, items))
            .filter(|(_, i)| !i.is_empty())
            .collect();
        rest.sort_by_key(|(bits, _)| *bits);
        for (bits, items) in rest {
            batches.send(items, bits).await?;
        }
    }
    // Let every batch in flight confirm, even when interrupted: they were sent.
    while batches.finish_one().await? {
        (settings.progress)(seen, batches.totals.confirmed);
    }
    drop(batches);
    if interrupted {
        return Err(ApplyError::Interrupted);
    }

    // Mirror removals: members kdit added whose rows left the query.
    for (i, keys) in removals.iter().enumerate() {
        if keys.is_empty() {
            continue;
        }
        let found = client.profile_ids(job.key.field(), keys).await?;
        let ids: Vec<String> = found.iter().map(|(_, id)| id.clone()).collect();
        client.list_membership(&list_ids[i], &ids, false).await?;
        let name = &job.spec.lists[i].name;
        state.confirm_removals(job.name(), name, keys).await?;
        report.list_removals += keys.len() as u64;
    }

    report.rows = plan.rows;
    report.unchanged = plan.unchanged;
    report.rejected = plan.rejected;
    report.seconds = started.elapsed().as_secs_f64();
    report.api = client.stats();
    let attempted = report.rows.max(1);
    report.success_rate = (report.rows - report.rejected - report.failed) as f64 / attempted as f64;
    report.status = if report.failed + report.rejected > 0 {
        "partial".into()
    } else {
        "ok".into()
    };
    failures.sort_by_key(|f| f.row);
    Ok((report, failures))
}

/// Records a finished batch: state for what Klaviyo confirmed, the ledger entry.
async fn record(
    o: &BatchOutcome,
    job: &Job,
    run_id: i64,
    state: &State<'_>,
) -> Result<(), ApplyError> {
    let confirmed: Vec<Confirmed> = o
        .confirmed
        .iter()
        .map(|i| Confirmed {
            key: &i.key,
            hash: i.hash,
            payload: &i.attributes,
            source: i.source,
        })
        .collect();
    let lists: Vec<String> = job.spec.lists.iter().map(|l| l.name.clone()).collect();
    state
        .confirm_profiles(job.name(), &confirmed, &lists)
        .await?;
    let status = if o.failures.is_empty() {
        "confirmed"
    } else {
        "partial"
    };
    state
        .record_batch(
            run_id,
            o.seq,
            o.bulk_ids.first().map(String::as_str),
            (o.confirmed.len() + o.failures.len()) as i32,
            o.failures.len() as i32,
            status,
        )
        .await?;
    Ok(())
}

/// Unchanged rows' fingerprints recorded in one statement.
const REFRESH_CHUNK: usize = 5_000;

/// How often the watcher asks Klaviyo about bulk jobs in flight.
const POLL_INTERVAL: Duration = Duration::from_millis(750);

/// Running totals of an apply.
struct Totals<'r> {
    report: &'r mut Report,
    failures: &'r mut Vec<Failure>,
    confirmed: u64,
}

impl Totals<'_> {
    fn add(&mut self, o: BatchOutcome) {
        self.report.bulk_jobs += o.bulk_ids.len() as u64;
        for item in &o.confirmed {
            match item.action {
                Action::Create => self.report.created += 1,
                Action::Update => self.report.updated += 1,
                _ => {}
            }
            self.report.list_adds += u64::from(item.adds);
        }
        self.confirmed += o.confirmed.len() as u64;
        self.report.confirmed += o.confirmed.len() as u64;
        self.report.failed += o.failures.len() as u64;
        self.report.subscribed += o.subscribed;
        self.report.unsubscribed += o.unsubscribed;
        self.failures.extend(o.failures);
    }
}

/// Batches in flight: at most `concurrency`, each recorded in the state as it confirms.
struct Batches<'a, 'r> {
    in_flight: JoinSet<BatchOutcome>,
    client: &'a Client,
    watcher: Watcher,
    list_ids: &'a [String],
    key_field: &'static str,
    concurrency: usize,
    job: &'a Job,
    run_id: i64,
    state: &'a State<'a>,
    seq: i32,
    totals: Totals<'r>,
    /// The `meta` each profile carries (profile tags).
    meta: Option<Arc<str>>,
    /// Whether the job changes consent (`consent`): its rows carry what to do, and the
    /// consent values ride in their payloads, to be taken out before sending.
    consent: bool,
}

impl Batches<'_, '_> {
    /// Starts a batch, first waiting for (and recording) one in flight when at the limit.
    async fn send(&mut self, items: Vec<BatchItem>, bits: u64) -> Result<(), ApplyError> {
        while self.in_flight.len() >= self.concurrency {
            self.finish_one().await?;
        }
        self.seq += 1;
        let ids: Vec<String> = (0..self.list_ids.len())
            .filter(|i| bits & (1 << i) != 0)
            .map(|i| self.list_ids[i].clone())
            .collect();
        let client = self.client.clone();
        let watcher = self.watcher.clone();
        let (key_field, seq) = (self.key_field, self.seq);
        let meta = self.meta.clone();
        let strip = self.consent && crate::plan::consent::reads_columns(&self.job.spec);
        self.in_flight.spawn(async move {
            send_batch(client, watcher, items, ids, key_field, seq, meta, strip).await
        });
        Ok(())
    }

    /// Waits for one batch in flight and records it; false when none is left.
    async fn finish_one(&mut self) -> Result<bool, ApplyError> {
        let Some(done) = self.in_flight.join_next().await else {
            return Ok(false);
        };
        let outcome = done.map_err(|e| ApplyError::Source(format!("a batch task failed: {e}")))?;
        record(&outcome, self.job, self.run_id, self.state).await?;
        let mut outcome = outcome;
        if self.consent {
            let consenting: Vec<Consenting> = outcome
                .confirmed
                .iter()
                .filter_map(|i| {
                    Some(Consenting {
                        row: i.row,
                        key: &i.key,
                        attributes: &i.attributes,
                        action: i.consent.as_ref()?,
                    })
                })
                .collect();
            let done = change_consent(self.client, self.job, &consenting).await;
            outcome.subscribed += done.subscribed;
            outcome.unsubscribed += done.unsubscribed;
            outcome.failures.extend(done.failures);
        }
        self.totals.add(outcome);
        Ok(true)
    }
}

/// Sends one batch to completion: bulk import, poll, import errors, field clearing.
/// `strip`: take the consent carrier out of each profile before sending.
#[allow(clippy::too_many_arguments)]
async fn send_batch(
    client: Client,
    watcher: Watcher,
    items: Vec<BatchItem>,
    list_ids: Vec<String>,
    key_field: &'static str,
    seq: i32,
    meta: Option<Arc<str>>,
    strip: bool,
) -> BatchOutcome {
    let mut out = BatchOutcome {
        seq,
        ..BatchOutcome::default()
    };
    let mut queue = vec![items];
    while let Some(chunk) = queue.pop() {
        let stripped: Vec<Box<RawValue>> = if strip {
            chunk
                .iter()
                .map(|i| crate::plan::consent::strip(&i.attributes))
                .collect()
        } else {
            Vec::new()
        };
        let profiles: Vec<&RawValue> = if strip {
            stripped.iter().map(AsRef::as_ref).collect()
        } else {
            chunk.iter().map(|i| i.attributes.as_ref()).collect()
        };
        let job = match client
            .start_bulk_import_with_meta(&profiles, &list_ids, meta.as_deref())
            .await
        {
            Ok(job) => job,
            Err(KlaviyoError::Api {
                status,
                code,
                detail,
                ..
            }) if status == 400 || status == 413 => {
                // Refused whole: split so the valid profiles still go; a single profile
                // refused is a failure of that row.
                if chunk.len() > 1 {
                    let mut a = chunk;
                    let b = a.split_off(a.len() / 2);
                    queue.push(a);
                    queue.push(b);
                } else {
                    let i = &chunk[0];
                    out.failures.push(Failure {
                        row: i.row,
                        key: i.key.clone(),
                        field: String::new(),
                        rule: code,
                        message: detail,
                    });
                }
                continue;
            }
            Err(e) => {
                for i in &chunk {
                    out.failures.push(Failure {
                        row: i.row,
                        key: i.key.clone(),
                        field: String::new(),
                        rule: "klaviyo".into(),
                        message: e.to_string(),
                    });
                }
                continue;
            }
        };
        out.bulk_ids.push(job.id.clone());
        let finished = match watcher.wait(job).await {
            Ok(j) => j,
            Err(e) => {
                for i in &chunk {
                    out.failures.push(Failure {
                        row: i.row,
                        key: i.key.clone(),
                        field: String::new(),
                        rule: "klaviyo".into(),
                        message: e.to_string(),
                    });
                }
                continue;
            }
        };
        let mut failed: HashMap<String, (String, String)> = HashMap::new();
        if finished.failed > 0 {
            match client.import_errors(&finished.id).await {
                Ok(errors) => {
                    for e in errors {
                        let ident = e.original["attributes"][key_field]
                            .as_str()
                            .or_else(|| e.original[key_field].as_str())
                            .unwrap_or_default()
                            .to_string();
                        failed.insert(ident, (e.code, e.detail));
                    }
                }
                Err(e) => {
                    for i in &chunk {
                        out.failures.push(Failure {
                            row: i.row,
                            key: i.key.clone(),
                            field: String::new(),
                            rule: "klaviyo".into(),
                            message: format!("import errors unavailable: {e}"),
                        });
                    }
                    continue;
                }
            }
        }
        let identifiers: HashSet<String> = failed.keys().cloned().collect();
        for item in chunk {
            if identifiers.contains(&item.key) {
                let (code, detail) = failed.get(&item.key).cloned().unwrap_or_default();
                out.failures.push(Failure {
                    row: item.row,
                    key: item.key.clone(),
                    field: String::new(),
                    rule: code,
                    message: detail,
                });
                continue;
            }
            if item.action == Action::Update && !item.unset.is_empty() {
                // Bulk import cannot clear fields: the profile-import endpoint can.
                if let Err(e) = clear_fields(&client, &item, key_field).await {
                    out.failures.push(Failure {
                        row: item.row,
                        key: item.key.clone(),
                        field: item.unset.join(","),
                        rule: "clear".into(),
                        message: e.to_string(),
                    });
                    continue;
                }
            }
            out.confirmed.push(item);
        }
    }
    out
}

async fn clear_fields(
    client: &Client,
    item: &BatchItem,
    key_field: &str,
) -> Result<(), KlaviyoError> {
    let mut attributes = json!({ key_field: item.key });
    let mut props = Vec::new();
    for field in &item.unset {
        if let Some(p) = field.strip_prefix("properties.") {
            props.push(p.split('.').next().unwrap_or(p).to_string());
        } else if let Some(l) = field.strip_prefix("location.") {
            attributes["location"][l] = Value::Null;
        } else {
            attributes[field.as_str()] = Value::Null;
        }
    }
    client.import_profile(attributes, &props).await.map(|_| ())
}
