//! What the sandbox holds, for tests and users: `GET /_sandbox/profiles|lists|segments|tags|stats`,
//! `GET|POST /_sandbox/faults`, `POST /_sandbox/rate-limits`, `POST /_sandbox/reset`, and the
//! same views for the in-process `Sandbox` handle. No authentication: the sandbox only listens
//! on 127.0.0.1. In: the store; out: plain JSON (not JSON:API), built from the view types
//! `SandboxProfile`, `SandboxList`, `SandboxSegment` and `SandboxTag` (re-exported by the
//! sandbox module).

use std::sync::Arc;

use axum::body::Body;
use hyper::{Method, Response, StatusCode};
use serde::Serialize;
use serde_json::{Value, json};

use super::faults::FaultSpec;
use super::http::ApiError;
use super::membership::current_members;
use super::resources::subscriptions_attribute;
use super::shared::{Shared, Stats};
use super::store::{Profile, Store};

/// A profile as the sandbox holds it.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct SandboxProfile {
    pub id: String,
    pub email: Option<String>,
    pub phone_number: Option<String>,
    pub external_id: Option<String>,
    /// All attributes as the API returns them (names, location, properties, timestamps).
    pub attributes: serde_json::Value,
    /// Consent per channel, once a subscription job touched the profile.
    pub subscriptions: Option<serde_json::Value>,
}

/// A list and its member profile ids.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct SandboxList {
    pub id: String,
    pub name: String,
    pub opt_in_process: String,
    pub members: Vec<String>,
    pub tags: Vec<String>,
}

/// A segment, its stored definition and its current members.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct SandboxSegment {
    pub id: String,
    pub name: String,
    pub definition: serde_json::Value,
    pub is_active: bool,
    pub members: Vec<String>,
    pub tags: Vec<String>,
}

/// A tag with its group and the lists/segments it is on.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct SandboxTag {
    pub id: String,
    pub name: String,
    pub group_id: String,
    pub group_name: String,
    pub lists: Vec<String>,
    pub segments: Vec<String>,
}

pub fn profile_view(p: &Profile) -> SandboxProfile {
    SandboxProfile {
        id: p.id.to_string(),
        email: p.email.as_deref().map(str::to_string),
        phone_number: p.phone_number.as_deref().map(str::to_string),
        external_id: p.external_id.as_deref().map(str::to_string),
        attributes: Value::Object(p.attributes()),
        subscriptions: p.subscriptions.as_ref().map(|_| subscriptions_attribute(p)),
    }
}

fn tags_on(store: &Store, list: Option<&str>, segment: Option<&str>) -> Vec<String> {
    store
        .tags
        .iter()
        .filter(|(_, t)| {
            list.is_some_and(|l| t.lists.contains(l))
                || segment.is_some_and(|s| t.segments.contains(s))
        })
        .map(|(_, t)| t.name.clone())
        .collect()
}

pub fn lists_view(store: &Store) -> Vec<SandboxList> {
    store
        .lists
        .iter()
        .map(|(id, l)| SandboxList {
            id: id.clone(),
            name: l.name.clone(),
            opt_in_process: l.opt_in_process.clone(),
            members: l.members.keys().map(|u| u.to_string()).collect(),
            tags: tags_on(store, Some(id), None),
        })
        .collect()
}

pub fn segments_view(store: &mut Store) -> Vec<SandboxSegment> {
    let ids: Vec<String> = store.segments.keys().cloned().collect();
    let mut out = Vec::new();
    for id in ids {
        let members = current_members(store, &id).unwrap_or_default();
        if let Some(s) = store.segments.get(&id) {
            out.push(SandboxSegment {
                id: id.clone(),
                name: s.name.clone(),
                definition: s.definition.clone(),
                is_active: s.is_active,
                members: members.keys().map(|u| u.to_string()).collect(),
                tags: tags_on(store, None, Some(&id)),
            });
        }
    }
    out
}

pub fn tags_view(store: &Store) -> Vec<SandboxTag> {
    store
        .tags
        .iter()
        .map(|(id, t)| SandboxTag {
            id: id.clone(),
            name: t.name.clone(),
            group_id: t.group.clone(),
            group_name: store
                .tag_groups
                .get(&t.group)
                .map(|g| g.name.clone())
                .unwrap_or_default(),
            lists: t.lists.iter().cloned().collect(),
            segments: t.segments.iter().cloned().collect(),
        })
        .collect()
}

pub fn reset(shared: &Shared) {
    shared.store().reset();
    *shared.stats() = Stats::default();
    let enabled = shared.limiter().enabled();
    shared.limiter().set_enabled(enabled);
}

fn json(status: StatusCode, v: &Value) -> Response<Body> {
    Response::builder()
        .status(status)
        .header(hyper::header::CONTENT_TYPE, "application/json")
        .body(Body::from(serde_json::to_vec(v).unwrap_or_default()))
        .unwrap_or_else(|_| Response::new(Body::empty()))
}

fn err(e: ApiError) -> Response<Body> {
    json(e.status, &e.body())
}

fn to_value<T: serde::Serialize>(v: &T) -> Value {
    serde_json::to_value(v).unwrap_or(Value::Null)
}

pub fn handle(
    shared: &Arc<Shared>,
    method: &Method,
    path: &str,
    query: &[(String, String)],
    body: &[u8],
) -> Response<Body> {
    let m = method.as_str();
    let route = path.trim_start_matches("/_sandbox").trim_start_matches('/');
    match (m, route) {
        ("GET", "profiles") => {
            let store = shared.store();
            let email = query
                .iter()
                .find(|(k, _)| k == "email")
                .map(|(_, v)| v.as_str());
            let v: Vec<SandboxProfile> = match email {
                Some(e) => store
                    .find_email(e)
                    .and_then(|id| store.profiles.get(&id))
                    .map(profile_view)
                    .into_iter()
                    .collect(),
                None => store.profiles.values().map(profile_view).collect(),
            };
            json(StatusCode::OK, &json!({"count": v.len(), "profiles": v}))
        }
        ("GET", "lists") => json(
            StatusCode::OK,
            &json!({"lists": lists_view(&shared.store())}),
        ),
        ("GET", "segments") => json(
            StatusCode::OK,
            &json!({"segments": segments_view(&mut shared.store())}),
        ),
        ("GET", "tags") => json(StatusCode::OK, &json!({"tags": tags_view(&shared.store())})),
        ("GET", "stats") => json(StatusCode::OK, &to_value(&*shared.stats())),
        ("GET", "requests") => {
            let stats = shared.stats();
            json(
                StatusCode::OK,
                &json!({"requests": to_value(&stats.recent)}),
            )
        }
        ("POST", "reset") => {
            reset(shared);
            json(StatusCode::OK, &json!({"reset": true}))
        }
        ("GET", "faults") => json(StatusCode::OK, &to_value(&shared.faults().spec)),
        ("POST", "faults") => {
            // Either {"spec": "429=10%,…", "seed": 7} or the FaultSpec fields themselves.
            let v: Value = match serde_json::from_slice(body) {
                Ok(v) => v,
                Err(e) => return err(ApiError::invalid(format!("Body is not JSON: {e}."))),
            };
            let seed = v.get("seed").and_then(Value::as_u64);
            let spec = match v.get("spec") {
                Some(Value::String(s)) => s.parse::<FaultSpec>().map_err(ApiError::invalid),
                _ => serde_json::from_value::<FaultSpec>(v.clone())
                    .map_err(|e| ApiError::invalid(format!("Invalid fault settings: {e}."))),
            };
            match spec {
                Ok(spec) => {
                    shared.faults().set(spec.clone(), seed);
                    json(StatusCode::OK, &to_value(&spec))
                }
                Err(e) => err(e),
            }
        }
        ("POST", "rate-limits") => {
            let v: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
            match v.get("mode").and_then(Value::as_str) {
                Some("klaviyo") => shared.limiter().set_enabled(true),
                Some("off") => shared.limiter().set_enabled(false),
                _ => {
                    return err(ApiError::invalid(
                        "Send {\"mode\": \"klaviyo\"} or {\"mode\": \"off\"}.",
                    ));
                }
            }
            json(StatusCode::OK, &v)
        }
        _ => err(ApiError::not_found(format!(
            "Unknown sandbox endpoint {m} {path}; see docs/sandbox.md."
        ))),
    }
}
