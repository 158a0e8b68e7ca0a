//! Consent: `POST /api/profile-subscription-bulk-create-jobs` (≤ 1,000 profiles, consent
//! `SUBSCRIBED`) and `…-delete-jobs` (≤ 100, consent `UNSUBSCRIBED`), both 202 with no body
//! and not pollable. In: the job body; out: consent recorded on each profile (created when
//! missing), readable with `additional-fields[profile]=subscriptions`, and list membership.
//!
//! The whole request is validated before anything changes; Klaviyo processes these jobs
//! asynchronously, the sandbox applies them before answering so tests can read the result.

use std::sync::Arc;

use serde_json::{Map, Value, json};
use ulid::Ulid;

use super::http::{ApiError, ApiResult, Reply, Req, attributes, data_object, now_millis};
use super::shared::Shared;
use super::store::{ProfileField, ProfileInput, validate_identifier};

/// Channels the sandbox records: (request path, stored key).
const CHANNELS: &[(&str, &str, &str)] = &[
    ("email", "marketing", "email_marketing"),
    ("sms", "marketing", "sms_marketing"),
    ("sms", "transactional", "sms_transactional"),
];

/// One profile of a job, validated: who it is and which channels change.
struct ConsentItem {
    id: Option<String>,
    input: ProfileInput,
    channels: Vec<(&'static str, Option<i64>)>,
}

fn parse_items(
    attrs: &Map<String, Value>,
    max: usize,
    want: &str,
    historical: bool,
) -> Result<Vec<ConsentItem>, ApiError> {
    let base = "/data/attributes/profiles/data";
    let profiles = attrs
        .get("profiles")
        .and_then(|p| p.get("data"))
        .and_then(Value::as_array)
        .ok_or_else(|| ApiError::invalid("`profiles.data` must be an array.").pointer(base))?;
    if profiles.is_empty() || profiles.len() > max {
        return Err(ApiError::invalid(format!(
            "Between 1 and {max} profiles may be sent in one job; got {}.",
            profiles.len()
        ))
        .pointer(base));
    }
    let mut items = Vec::with_capacity(profiles.len());
    for (i, p) in profiles.iter().enumerate() {
        let ptr = format!("{base}/{i}");
        if p.get("type").and_then(Value::as_str) != Some("profile") {
            return Err(ApiError::invalid("Expected resource type 'profile'.")
                .pointer(format!("{ptr}/type")));
        }
        let a = p
            .get("attributes")
            .and_then(Value::as_object)
            .ok_or_else(|| {
                ApiError::invalid("`attributes` must be an object.")
                    .pointer(format!("{ptr}/attributes"))
            })?;
        let mut input = ProfileInput::default();
        for (k, slot) in [
            ("email", &mut input.email),
            ("phone_number", &mut input.phone_number),
        ] {
            match a.get(k) {
                None | Some(Value::Null) => {}
                Some(Value::String(s)) => {
                    validate_identifier(k, s.trim())
                        .map_err(|e| e.pointer(format!("{ptr}/attributes/{k}")))?;
                    *slot = ProfileField::Set(s.trim().to_string());
                }
                Some(_) => {
                    return Err(ApiError::invalid(format!("'{k}' must be a string."))
                        .pointer(format!("{ptr}/attributes/{k}")));
                }
            }
        }
        let subs = a
            .get("subscriptions")
            .and_then(Value::as_object)
            .ok_or_else(|| {
                ApiError::invalid("`subscriptions` is required.")
                    .pointer(format!("{ptr}/attributes/subscriptions"))
            })?;
        let mut channels = Vec::new();
        for (channel, kind, key) in CHANNELS {
            let Some(params) = subs
                .get(*channel)
                .and_then(|c| c.get(*kind))
                .filter(|v| !v.is_null())
            else {
                continue;
            };
            let pp = format!("{ptr}/attributes/subscriptions/{channel}/{kind}");
            if params.get("consent").and_then(Value::as_str) != Some(want) {
                return Err(ApiError::invalid(format!("`consent` must be \"{want}\"."))
                    .pointer(format!("{pp}/consent")));
            }
            let consented_at = match params.get("consented_at") {
                None | Some(Value::Null) => None,
                Some(v) => {
                    if !historical {
                        return Err(ApiError::invalid(
                            "`consented_at` may only be given with `historical_import: true`.",
                        )
                        .pointer(format!("{pp}/consented_at")));
                    }
                    let t = v
                        .as_str()
                        .and_then(|s| chrono::DateTime::parse_from_rfc3339(s).ok())
                        .map(|t| t.timestamp_millis())
                        .filter(|t| *t <= now_millis())
                        .ok_or_else(|| {
                            ApiError::invalid("`consented_at` must be a past date-time.")
                                .pointer(format!("{pp}/consented_at"))
                        })?;
                    Some(t)
                }
            };
            if historical && want == "SUBSCRIBED" && consented_at.is_none() {
                return Err(ApiError::invalid(
                    "`consented_at` is required for a historical import.",
                )
                .pointer(format!("{pp}/consented_at")));
            }
            let needs = if *channel == "email" {
                &input.email
            } else {
                &input.phone_number
            };
            if !matches!(needs, ProfileField::Set(_))
                && p.get("id").and_then(Value::as_str).is_none()
            {
                return Err(ApiError::invalid(format!(
                    "A {channel} subscription needs the profile's {}.",
                    if *channel == "email" {
                        "email"
                    } else {
                        "phone_number"
                    }
                ))
                .pointer(format!("{ptr}/attributes")));
            }
            channels.push((*key, consented_at));
        }
        let id = p.get("id").and_then(Value::as_str).map(str::to_string);
        if id.is_none() && !input.has_identifier() {
            return Err(super::store::missing_identifier().pointer(format!("{ptr}/attributes")));
        }
        items.push(ConsentItem {
            id,
            input,
            channels,
        });
    }
    Ok(items)
}

fn list_rel(data: &Map<String, Value>) -> Result<Option<String>, ApiError> {
    let Some(l) = data
        .get("relationships")
        .and_then(|r| r.get("list"))
        .and_then(|l| l.get("data"))
        .filter(|d| !d.is_null())
    else {
        return Ok(None);
    };
    if l.get("type").and_then(Value::as_str) != Some("list") {
        return Err(ApiError::invalid("Expected resource type 'list'.")
            .pointer("/data/relationships/list/data/type"));
    }
    l.get("id")
        .and_then(Value::as_str)
        .map(|s| Some(s.to_string()))
        .ok_or_else(|| {
            ApiError::invalid("`id` is required.").pointer("/data/relationships/list/data/id")
        })
}

fn run(shared: &Arc<Shared>, req: &Req, subscribe: bool) -> ApiResult {
    req.allow_params(&[])?;
    let body = req.json()?;
    let ty = if subscribe {
        "profile-subscription-bulk-create-job"
    } else {
        "profile-subscription-bulk-delete-job"
    };
    let data = data_object(&body, ty)?;
    let attrs = attributes(data)?;
    let historical = subscribe
        && attrs
            .get("historical_import")
            .and_then(Value::as_bool)
            .unwrap_or(false);
    let source = attrs
        .get("custom_source")
        .and_then(Value::as_str)
        .map(str::to_string);
    let (max, want) = if subscribe {
        (1000, "SUBSCRIBED")
    } else {
        (100, "UNSUBSCRIBED")
    };
    let items = parse_items(&attrs, max, want, historical)?;
    let list = list_rel(data)?;
    let mut store = shared.store();
    if let Some(l) = &list
        && !store.lists.contains_key(l)
    {
        return Err(
            ApiError::not_found(format!("A list with id {l} does not exist."))
                .pointer("/data/relationships/list/data/id"),
        );
    }
    let now = now_millis();
    for item in items {
        let pid: Ulid = store.upsert_profile(item.id.as_deref(), &item.input)?.0;
        let member = list
            .as_ref()
            .and_then(|l| store.lists.get(l))
            .is_some_and(|l| l.members.contains_key(&pid));
        if let Some(l) = list.as_ref().and_then(|l| store.lists.get_mut(l)) {
            if subscribe {
                l.members.entry(pid).or_insert(now);
            } else {
                l.members.remove(&pid);
            }
        }
        // Unsubscribing a list member only takes them off that list; everyone else loses
        // consent globally, as the spec warns.
        if !subscribe && member {
            continue;
        }
        let mut subs: Map<String, Value> = store
            .profiles
            .get(&pid)
            .and_then(|p| p.subscriptions.as_deref())
            .and_then(|s| serde_json::from_str(s).ok())
            .unwrap_or_default();
        for (key, at) in &item.channels {
            subs.insert(
                (*key).to_string(),
                json!({"consent": want, "at": at.unwrap_or(now), "detail": source}),
            );
        }
        store.set_subscriptions(pid, Value::Object(subs));
    }
    Ok(Reply::accepted(None))
}

pub fn subscribe(shared: &Arc<Shared>, req: &Req) -> ApiResult {
    run(shared, req, true)
}

pub fn unsubscribe(shared: &Arc<Shared>, req: &Req) -> ApiResult {
    run(shared, req, false)
}
