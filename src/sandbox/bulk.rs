//! Bulk profile import jobs (`/api/profile-bulk-import-jobs…`). In: a job of up to 10,000
//! profiles; out: 202 with the queued job, then a tokio task moves it through `processing` to
//! `complete`, upserting each profile (nulls ignored, `patch_properties` honoured), recording
//! per-profile errors with their original payload, and adding everyone to the job's lists.

use std::sync::Arc;

use serde_json::{Value, json};
use ulid::Ulid;

use super::http::{ApiError, ApiResult, Reply, Req, data_object, now_millis, ts};
use super::profiles::{self, cursor_ulid, page_after};
use super::resources::{list_resource, profile_resource};
use super::shared::Shared;
use super::store::{BulkJob, ImportError, JobStatus, parse_profile};

const MAX_PROFILES: usize = 10_000;
const MAX_PROFILE_BYTES: usize = 100 * 1024;
/// Profiles processed per lock hold, so reads are not starved during a big job.
const CHUNK: usize = 2_000;

fn job_not_found(id: &str) -> ApiError {
    ApiError::not_found(format!(
        "A profile bulk import job with id {id} does not exist."
    ))
}

fn rel_links(base: &str, id: &str, name: &str) -> Value {
    json!({
        "self": format!("{base}/api/profile-bulk-import-jobs/{id}/relationships/{name}/"),
        "related": format!("{base}/api/profile-bulk-import-jobs/{id}/{name}/"),
    })
}

fn resource(base: &str, id: &str, job: &BulkJob) -> Value {
    let lists: Vec<Value> = job
        .lists
        .iter()
        .map(|l| json!({"type":"list","id":l}))
        .collect();
    json!({
        "type": "profile-bulk-import-job",
        "id": id,
        "attributes": {
            "status": job.status.as_str(),
            "created_at": ts(job.created_at),
            "total_count": job.total,
            "completed_count": job.completed,
            "failed_count": job.failed,
            "completed_at": job.completed_at.map(ts),
            "expires_at": ts(job.created_at + 7 * 86_400_000),
            "started_at": job.started_at.map(ts),
        },
        "relationships": {
            "lists": {"data": lists, "links": rel_links(base, id, "lists")},
            "profiles": {"links": rel_links(base, id, "profiles")},
            "import-errors": {"links": rel_links(base, id, "import-errors")},
        },
        "links": {"self": format!("{base}/api/profile-bulk-import-jobs/{id}/")},
    })
}

pub fn create(shared: &Arc<Shared>, req: &Req) -> ApiResult {
    req.allow_params(&[])?;
    let mut body = req.json()?;
    let (total, list_ids) = validate_job(&body)?;
    // Move the profiles out of the parsed body: a 10,000-profile job is too big to copy.
    let pending = match body.pointer_mut("/data/attributes/profiles/data") {
        Some(Value::Array(a)) => std::mem::take(a),
        _ => Vec::new(),
    };
    let mut store = shared.store();
    for (i, l) in list_ids.iter().enumerate() {
        if !store.lists.contains_key(l) {
            return Err(
                ApiError::not_found(format!("A list with id {l} does not exist."))
                    .pointer(format!("/data/relationships/lists/data/{i}/id")),
            );
        }
    }
    let id = store.new_ulid().to_string();
    let job = BulkJob {
        status: JobStatus::Queued,
        created_at: now_millis(),
        started_at: None,
        completed_at: None,
        total,
        completed: 0,
        failed: 0,
        lists: list_ids,
        pending,
        profiles: Vec::new(),
        errors: Vec::new(),
    };
    let out = resource(&shared.base_url, &id, &job);
    store.jobs.insert(id.clone(), job);
    drop(store);
    let shared2 = shared.clone();
    tokio::spawn(async move { process(shared2, id).await });
    Ok(Reply::accepted(Some(json!({"data": out}))))
}

/// Checks a job body's shape and limits; returns the profile count and the list ids.
fn validate_job(body: &Value) -> Result<(usize, Vec<String>), ApiError> {
    let data = data_object(body, "profile-bulk-import-job")?;
    let attrs = match data.get("attributes") {
        Some(Value::Object(a)) => a,
        _ => {
            return Err(
                ApiError::invalid("`attributes` must be an object.").pointer("/data/attributes")
            );
        }
    };
    let profiles = attrs
        .get("profiles")
        .and_then(|p| p.get("data"))
        .and_then(Value::as_array)
        .ok_or_else(|| {
            ApiError::invalid("`profiles.data` must be an array of profiles.")
                .pointer("/data/attributes/profiles/data")
        })?;
    if profiles.is_empty() {
        return Err(
            ApiError::invalid("A bulk import job needs at least one profile.")
                .pointer("/data/attributes/profiles/data"),
        );
    }
    if profiles.len() > MAX_PROFILES {
        return Err(ApiError::invalid(format!(
            "A bulk import job may hold at most {MAX_PROFILES} profiles; got {}.",
            profiles.len()
        ))
        .pointer("/data/attributes/profiles/data"));
    }
    for (i, p) in profiles.iter().enumerate() {
        if !p.is_object() || p.get("type").and_then(Value::as_str) != Some("profile") {
            return Err(
                ApiError::invalid("Each item must be a resource of type 'profile'.")
                    .pointer(format!("/data/attributes/profiles/data/{i}")),
            );
        }
    }
    let mut list_ids = Vec::new();
    if let Some(rel) = data.get("relationships").filter(|v| !v.is_null()) {
        let lists = rel.get("lists").and_then(|l| l.get("data"));
        if let Some(lists) = lists {
            let arr = lists.as_array().ok_or_else(|| {
                ApiError::invalid("`relationships.lists.data` must be an array.")
                    .pointer("/data/relationships/lists/data")
            })?;
            for (i, l) in arr.iter().enumerate() {
                let ptr = format!("/data/relationships/lists/data/{i}");
                if l.get("type").and_then(Value::as_str) != Some("list") {
                    return Err(ApiError::invalid("Expected resource type 'list'.").pointer(ptr));
                }
                let id = l
                    .get("id")
                    .and_then(Value::as_str)
                    .ok_or_else(|| ApiError::invalid("`id` is required.").pointer(ptr.clone()))?;
                list_ids.push(id.to_string());
            }
        }
    }
    Ok((profiles.len(), list_ids))
}

/// Marks the job `processing` and takes its profiles.
fn start(shared: &Shared, id: &str) -> Vec<Value> {
    let mut store = shared.store();
    let Some(job) = store.jobs.get_mut(id) else {
        return Vec::new();
    };
    job.status = JobStatus::Processing;
    job.started_at = Some(now_millis());
    std::mem::take(&mut job.pending)
}

/// Imports one chunk under one lock hold.
fn process_chunk(shared: &Shared, id: &str, chunk_no: usize, chunk: &[Value]) {
    let mut injected: Vec<bool> = Vec::with_capacity(chunk.len());
    {
        let mut faults = shared.faults();
        for _ in chunk {
            injected.push(faults.bulk_profile_fails());
        }
    }
    let mut store = shared.store();
    let lists = store
        .jobs
        .get(id)
        .map(|j| j.lists.clone())
        .unwrap_or_default();
    let mut done = Vec::with_capacity(chunk.len());
    let mut errors = Vec::new();
    for (k, item) in chunk.iter().enumerate() {
        let i = chunk_no * CHUNK + k;
        let prefix = format!("/data/attributes/profiles/data/{i}");
        let result = if injected[k] {
            Err(ApiError::new(
                hyper::StatusCode::INTERNAL_SERVER_ERROR,
                "error",
                "Import failed.",
                "This profile failed by the sandbox's bulk-fail fault setting.",
            )
            .pointer(prefix.clone()))
        } else {
            import_one(&mut store, item, &prefix)
        };
        match result {
            Ok(pid) => done.push(pid),
            Err(e) => errors.push(ImportError {
                id: uuid::Uuid::new_v4().to_string(),
                error: e,
                original_payload: item.clone(),
            }),
        }
    }
    let now = now_millis();
    for l in &lists {
        if let Some(list) = store.lists.get_mut(l) {
            for pid in &done {
                list.members.entry(*pid).or_insert(now);
            }
        }
    }
    store.version += 1;
    if let Some(job) = store.jobs.get_mut(id) {
        job.completed += done.len();
        job.failed += errors.len();
        job.profiles.extend(done);
        job.errors.extend(errors);
    }
}

/// Runs one job to completion.
async fn process(shared: Arc<Shared>, id: String) {
    // Let the 202 go out first so clients can observe `queued`.
    tokio::task::yield_now().await;
    let pending = start(&shared, &id);
    if !shared.job_latency.is_zero() {
        tokio::time::sleep(shared.job_latency).await;
    }
    for (chunk_no, chunk) in pending.chunks(CHUNK).enumerate() {
        process_chunk(&shared, &id, chunk_no, chunk);
        tokio::task::yield_now().await;
    }
    finish(&shared, &id);
}

fn finish(shared: &Shared, id: &str) {
    let mut store = shared.store();
    if let Some(job) = store.jobs.get_mut(id) {
        job.profiles.sort();
        job.profiles.dedup();
        job.status = JobStatus::Complete;
        job.completed_at = Some(now_millis());
    }
}

/// Length of a value's JSON encoding, without building it.
fn encoded_len(v: &Value) -> usize {
    struct Count(usize);
    impl std::io::Write for Count {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0 += buf.len();
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut c = Count(0);
    let _ = serde_json::to_writer(&mut c, v);
    c.0
}

fn import_one(
    store: &mut super::store::Store,
    item: &Value,
    prefix: &str,
) -> Result<Ulid, ApiError> {
    if encoded_len(item) > MAX_PROFILE_BYTES {
        return Err(
            ApiError::invalid("A profile must be at most 100 KB.").pointer(prefix.to_string())
        );
    }
    let attrs = match item.get("attributes") {
        Some(Value::Object(m)) => m,
        _ => {
            return Err(ApiError::invalid("`attributes` must be an object.")
                .pointer(format!("{prefix}/attributes")));
        }
    };
    let input = parse_profile(
        attrs,
        item.get("meta"),
        false,
        &format!("{prefix}/attributes"),
    )?;
    let id = item.get("id").and_then(Value::as_str);
    if id.is_none() && !input.has_identifier() {
        return Err(super::store::missing_identifier().pointer(format!("{prefix}/attributes")));
    }
    store.upsert_profile(id, &input).map(|(pid, _)| pid)
}

pub fn get(shared: &Arc<Shared>, req: &Req) -> ApiResult {
    req.allow_params(&["fields[*]", "include"])?;
    let store = shared.store();
    let id = req.param(0);
    let job = store.jobs.get(id).ok_or_else(|| job_not_found(id))?;
    let mut body =
        json!({"data": resource(&shared.base_url, id, job), "links": {"self": req.self_link()}});
    if req.q("include")? == Some("lists") {
        let included: Vec<Value> = job
            .lists
            .iter()
            .filter_map(|l| {
                store
                    .lists
                    .get(l)
                    .map(|list| list_resource(&shared.base_url, l, list))
            })
            .collect();
        body["included"] = Value::Array(included);
    }
    Ok(Reply::ok(body))
}

pub fn list(shared: &Arc<Shared>, req: &Req) -> ApiResult {
    req.allow_params(&[
        "fields[*]",
        "filter",
        "page[size]",
        "page[cursor]",
        "sort",
        "include",
    ])?;
    let size = req.page_size(20, 100)?;
    let conds = match req.q("filter")? {
        Some(f) => super::filter::parse(f, &[("status", &["any", "equals"])])?,
        None => vec![],
    };
    // Job ids are ULIDs, so id order is creation order.
    let descending = req.sort(&["created_at"])?.is_some_and(|(_, d)| d);
    let store = shared.store();
    let mut ids: Vec<&String> = store
        .jobs
        .iter()
        .filter(|(_, j)| {
            conds
                .iter()
                .all(|c| c.value.strings().iter().any(|s| s == j.status.as_str()))
        })
        .map(|(id, _)| id)
        .collect();
    ids.sort();
    if descending {
        ids.reverse();
    }
    let (page, next) = req.offset_page(ids, size)?;
    let data: Vec<Value> = page
        .iter()
        .filter_map(|id| {
            store
                .jobs
                .get(*id)
                .map(|j| resource(&shared.base_url, id, j))
        })
        .collect();
    Ok(Reply::ok(
        json!({"data": data, "links": req.collection_links(next.as_deref())}),
    ))
}

pub fn errors(shared: &Arc<Shared>, req: &Req) -> ApiResult {
    req.allow_params(&["fields[*]", "page[size]", "page[cursor]"])?;
    let size = req.page_size(20, 100)?;
    let start: usize = match req.cursor()? {
        None => 0,
        Some(c) => c
            .parse()
            .map_err(|_| ApiError::invalid("Invalid page cursor.").parameter("page[cursor]"))?,
    };
    let store = shared.store();
    let id = req.param(0);
    let job = store.jobs.get(id).ok_or_else(|| job_not_found(id))?;
    let data: Vec<Value> = job
        .errors
        .iter()
        .skip(start)
        .take(size)
        .map(|e| {
            let mut source = serde_json::Map::new();
            source.insert(
                "pointer".into(),
                Value::String(e.error.pointer.clone().unwrap_or_else(|| "/data".into())),
            );
            json!({
                "type": "import-error",
                "id": e.id,
                "attributes": {
                    "code": e.error.code,
                    "title": e.error.title,
                    "detail": e.error.detail,
                    "source": source,
                    "original_payload": e.original_payload,
                },
            })
        })
        .collect();
    let next = (start + size < job.errors.len()).then(|| (start + size).to_string());
    Ok(Reply::ok(
        json!({"data": data, "links": req.collection_links(next.as_deref())}),
    ))
}

pub fn profiles(shared: &Arc<Shared>, req: &Req, ids_only: bool) -> ApiResult {
    req.allow_params(&[
        "fields[*]",
        "additional-fields[profile]",
        "page[size]",
        "page[cursor]",
    ])?;
    let size = req.page_size(20, 100)?;
    let fields = req.fields("profile")?;
    let subs = !ids_only && profiles::wants_subscriptions(req)?;
    let after = cursor_ulid(req)?;
    let store = shared.store();
    let id = req.param(0);
    let job = store.jobs.get(id).ok_or_else(|| job_not_found(id))?;
    let start = after.map_or(0, |a| job.profiles.partition_point(|x| *x <= a));
    let (page, next) = page_after(job.profiles.iter().skip(start).copied(), size);
    let data: Vec<Value> = page
        .iter()
        .filter_map(|pid| store.profiles.get(pid))
        .map(|p| {
            if ids_only {
                json!({"type": "profile", "id": p.id.to_string()})
            } else {
                profile_resource(p, &shared.base_url, fields.as_deref(), subs, None)
            }
        })
        .collect();
    Ok(Reply::ok(
        json!({"data": data, "links": req.collection_links(next.as_deref())}),
    ))
}

pub fn lists(shared: &Arc<Shared>, req: &Req, ids_only: bool) -> ApiResult {
    req.allow_params(&["fields[*]"])?;
    let store = shared.store();
    let id = req.param(0);
    let job = store.jobs.get(id).ok_or_else(|| job_not_found(id))?;
    let data: Vec<Value> = job
        .lists
        .iter()
        .filter_map(|l| {
            if ids_only {
                Some(json!({"type": "list", "id": l}))
            } else {
                store
                    .lists
                    .get(l)
                    .map(|list| list_resource(&shared.base_url, l, list))
            }
        })
        .collect();
    Ok(Reply::ok(
        json!({"data": data, "links": req.collection_links(None)}),
    ))
}
