//! Accounts and profiles: `GET /api/accounts`, `GET/POST /api/profiles`,
//! `GET/PATCH /api/profiles/{id}`, `POST /api/profile-import`. In: routed requests; out:
//! JSON:API replies, and writes to the store. Also what the list, segment and bulk-job
//! endpoints share with it: `wants_subscriptions`, the paging helpers (`page_after`,
//! `cursor_ulid`) and `ident_matches`.

use std::sync::Arc;

use serde_json::{Map, Value, json};
use ulid::Ulid;

use super::filter::{self, Cond, Lit};
use super::http::{ApiError, ApiResult, Reply, Req, attributes, data_object, sparse};
use super::membership::refresh_members;
use super::resources::{list_resource, profile_resource, segment_resource};
use super::shared::Shared;
use super::store::{Profile, Store, parse_profile, profile_not_found};

/// Query parameters every profile collection accepts.
pub const PROFILE_PARAMS: &[&str] = &[
    "filter",
    "page[size]",
    "page[cursor]",
    "fields[*]",
    "additional-fields[profile]",
    "sort",
    "include",
];

pub fn get_accounts(shared: &Arc<Shared>, req: &Req) -> ApiResult {
    req.allow_params(&["fields[*]"])?;
    let id = shared.store().account_id.clone();
    let attrs = json!({
        "test_account": true,
        "contact_information": {
            "default_sender_name": "kdit sandbox",
            "default_sender_email": "sandbox@example.com",
            "website_url": "https://example.com",
            "organization_name": "kdit sandbox",
            "street_address": {"address1": "1 Sandbox Way", "address2": null, "city": "Boston",
                "region": "MA", "country": "US", "zip": "02110"}
        },
        "industry": "Software / SaaS",
        "timezone": "UTC",
        "preferred_currency": "USD",
        "public_api_key": id,
        "locale": "en-US"
    });
    let attrs = sparse(
        attrs.as_object().cloned().unwrap_or_default(),
        req.fields("account")?.as_deref(),
    );
    Ok(Reply::ok(json!({
        "data": [{"type": "account", "id": id, "attributes": attrs,
            "links": {"self": format!("{}/api/accounts/{id}/", shared.base_url)}}],
        "links": req.collection_links(None),
    })))
}

/// Checks `additional-fields[profile]`; only `subscriptions` is emulated
/// (`predictive_analytics` is accepted and left out).
pub fn wants_subscriptions(req: &Req) -> Result<bool, ApiError> {
    let mut subs = false;
    for f in req.additional("profile")? {
        match f.as_str() {
            "subscriptions" => subs = true,
            "predictive_analytics" => {}
            other => {
                return Err(ApiError::invalid(format!(
                    "'{other}' is not a valid additional field for 'profile'."
                ))
                .parameter("additional-fields[profile]"));
            }
        }
    }
    Ok(subs)
}

const PROFILE_FILTERS: &[(&str, &[&str])] = &[
    ("id", &["any", "equals"]),
    ("email", &["any", "equals"]),
    ("phone_number", &["any", "equals"]),
    ("external_id", &["any", "equals"]),
    ("_kx", &["equals"]),
    ("created", &["greater-than", "less-than"]),
    ("updated", &["greater-than", "less-than"]),
];

/// Whether a profile satisfies one filter condition.
pub fn matches(p: &Profile, c: &Cond) -> bool {
    let ident = |v: &Option<Box<str>>, fold: bool| {
        let Some(v) = v.as_deref() else {
            return false;
        };
        c.value.strings().iter().any(|s| {
            if fold {
                s.eq_ignore_ascii_case(v)
            } else {
                s == v
            }
        })
    };
    match c.field.as_str() {
        "id" => c.value.strings().iter().any(|s| *s == p.id.to_string()),
        "email" => ident(&p.email, true),
        "phone_number" => ident(&p.phone_number, false),
        "external_id" => ident(&p.external_id, false),
        "_kx" => false,
        "created" | "updated" => {
            let at = if c.field == "created" {
                p.created
            } else {
                p.updated
            };
            let Some(t) = c
                .value
                .as_str()
                .and_then(|s| chrono::DateTime::parse_from_rfc3339(s).ok())
            else {
                return false;
            };
            let t = t.timestamp_millis();
            match c.op.as_str() {
                "greater-than" => at > t,
                "greater-or-equal" => at >= t,
                "less-than" => at < t,
                "less-or-equal" => at <= t,
                _ => false,
            }
        }
        _ => false,
    }
}

/// Profiles an identifier filter can pick from the indexes directly, if any condition allows.
fn indexed(store: &Store, conds: &[Cond]) -> Option<Vec<Ulid>> {
    for c in conds {
        let vals = c.value.strings();
        let ids: Vec<Ulid> = match c.field.as_str() {
            "id" => vals
                .iter()
                .filter_map(|s| Ulid::from_string(s).ok())
                .collect(),
            "email" => vals.iter().filter_map(|s| store.find_email(s)).collect(),
            "phone_number" => vals.iter().filter_map(|s| store.find_phone(s)).collect(),
            "external_id" => vals.iter().filter_map(|s| store.find_external(s)).collect(),
            _ => continue,
        };
        let mut ids: Vec<Ulid> = ids
            .into_iter()
            .filter(|id| store.profiles.contains_key(id))
            .collect();
        ids.sort();
        ids.dedup();
        return Some(ids);
    }
    None
}

/// One page of ids in id order after the cursor; the next cursor when more follow.
pub fn page_after(ids: impl Iterator<Item = Ulid>, size: usize) -> (Vec<Ulid>, Option<String>) {
    let mut page: Vec<Ulid> = ids.take(size + 1).collect();
    let next = if page.len() > size {
        page.truncate(size);
        page.last().map(|u| u.to_string())
    } else {
        None
    };
    (page, next)
}

pub fn cursor_ulid(req: &Req) -> Result<Option<Ulid>, ApiError> {
    match req.cursor()? {
        None => Ok(None),
        Some(c) => Ulid::from_string(&c)
            .map(Some)
            .map_err(|_| ApiError::invalid("Invalid page cursor.").parameter("page[cursor]")),
    }
}

pub fn list(shared: &Arc<Shared>, req: &Req) -> ApiResult {
    req.allow_params(PROFILE_PARAMS)?;
    let size = req.page_size(20, 100)?;
    let fields = req.fields("profile")?;
    let subs = wants_subscriptions(req)?;
    let conds = match req.q("filter")? {
        Some(f) => filter::parse(f, PROFILE_FILTERS)?,
        None => vec![],
    };
    // Conversations and push tokens do not exist in the sandbox: nothing to include.
    let included = !req.includes(&["conversations", "push-tokens"])?.is_empty();
    let sort = req.sort(&[
        "created",
        "email",
        "id",
        "updated",
        // No suppressions exist in the sandbox, so these order like `id`.
        "subscriptions.email.marketing.list_suppressions.timestamp",
        "subscriptions.email.marketing.suppression.timestamp",
    ])?;
    let descending = sort.as_ref().is_some_and(|(_, d)| *d);
    let by_key = sort
        .as_ref()
        .map(|(f, _)| f.as_str())
        .filter(|f| matches!(*f, "email" | "updated"));
    if let Some(field) = by_key {
        return sorted_list(
            shared,
            req,
            &conds,
            field,
            descending,
            size,
            fields.as_deref(),
            subs,
        );
    }
    let after = cursor_ulid(req)?;
    let store = shared.store();
    let keep = |p: &Profile| conds.iter().all(|c| matches(p, c));
    let (page, next) = if let Some(ids) = indexed(&store, &conds) {
        let mut ids: Vec<Ulid> = ids
            .into_iter()
            .filter(|id| store.profiles.get(id).is_some_and(keep))
            .collect();
        if descending {
            ids.reverse();
        }
        let start = match after {
            Some(a) => ids
                .iter()
                .position(|x| *x == a)
                .map_or(ids.len(), |i| i + 1),
            None => 0,
        };
        page_after(ids.into_iter().skip(start), size)
    } else if descending {
        page_after(
            store
                .profiles
                .before(after)
                .filter(|p| keep(p))
                .map(|p| p.id),
            size,
        )
    } else {
        page_after(
            store
                .profiles
                .after(after)
                .filter(|p| keep(p))
                .map(|p| p.id),
            size,
        )
    };
    let data: Vec<Value> = page
        .iter()
        .filter_map(|id| store.profiles.get(id))
        .map(|p| profile_resource(p, &shared.base_url, fields.as_deref(), subs, None))
        .collect();
    let mut body = json!({
        "data": data,
        "links": req.collection_links(next.as_deref()),
    });
    if included {
        body["included"] = json!([]);
    }
    Ok(Reply::ok(body))
}

/// `GET /api/profiles?sort=±email|±updated`: every matching profile sorted, offset cursor.
#[allow(clippy::too_many_arguments)]
fn sorted_list(
    shared: &Arc<Shared>,
    req: &Req,
    conds: &[Cond],
    field: &str,
    descending: bool,
    size: usize,
    fields: Option<&[String]>,
    subs: bool,
) -> ApiResult {
    let store = shared.store();
    let mut items: Vec<&Profile> = match indexed(&store, conds) {
        Some(ids) => ids.iter().filter_map(|id| store.profiles.get(id)).collect(),
        None => store.profiles.values().collect(),
    };
    items.retain(|p| conds.iter().all(|c| matches(p, c)));
    items.sort_by(|a, b| {
        let o = if field == "email" {
            // Profiles without an email sort last, as nulls do.
            (a.email.is_none(), a.email.as_deref()).cmp(&(b.email.is_none(), b.email.as_deref()))
        } else {
            a.updated.cmp(&b.updated)
        };
        let o = o.then(a.id.cmp(&b.id));
        if descending { o.reverse() } else { o }
    });
    let (page, next) = req.offset_page(items, size)?;
    let data: Vec<Value> = page
        .iter()
        .map(|p| profile_resource(p, &shared.base_url, fields, subs, None))
        .collect();
    Ok(Reply::ok(json!({
        "data": data,
        "links": req.collection_links(next.as_deref()),
    })))
}

pub fn get(shared: &Arc<Shared>, req: &Req) -> ApiResult {
    req.allow_params(&["fields[*]", "additional-fields[profile]", "include"])?;
    let fields = req.fields("profile")?;
    let subs = wants_subscriptions(req)?;
    let includes = req.includes(&["conversations", "lists", "push-tokens", "segments"])?;
    let mut store = shared.store();
    let id = store
        .profile_by_str(req.param(0))
        .map(|p| p.id)
        .ok_or_else(|| profile_not_found(req.param(0)))?;
    let base = &shared.base_url;
    let mut included = Vec::new();
    let mut linkage = Vec::new();
    if includes.iter().any(|i| i == "lists") {
        let lists: Vec<(String, Value)> = store
            .lists
            .iter()
            .filter(|(_, l)| l.members.contains_key(&id))
            .map(|(lid, l)| (lid.clone(), list_resource(base, lid, l)))
            .collect();
        linkage.push((
            "lists",
            "list",
            lists.iter().map(|(i, _)| i.clone()).collect::<Vec<_>>(),
        ));
        included.extend(lists.into_iter().map(|(_, r)| r));
    }
    if includes.iter().any(|i| i == "segments") {
        let ids: Vec<String> = store.segments.keys().cloned().collect();
        let mut mine = Vec::new();
        for sid in ids {
            refresh_members(&mut store, &sid);
            if let Some(s) = store.segments.get(&sid)
                && s.members.as_ref().is_some_and(|(_, m)| m.contains_key(&id))
            {
                included.push(segment_resource(base, &sid, s));
                mine.push(sid);
            }
        }
        linkage.push(("segments", "segment", mine));
    }
    let p = store
        .profiles
        .get(&id)
        .ok_or_else(|| profile_not_found(req.param(0)))?;
    let mut data = profile_resource(p, base, fields.as_deref(), subs, None);
    for (rel, ty, ids) in linkage {
        data["relationships"][rel]["data"] =
            ids.iter().map(|i| json!({"type": ty, "id": i})).collect();
    }
    let mut body = json!({"data": data, "links": {"self": req.self_link()}});
    if !includes.is_empty() {
        body["included"] = Value::Array(included);
    }
    Ok(Reply::ok(body))
}

/// `GET /api/profiles/{id}/lists|segments` (and `/relationships/…`): what the profile is in.
pub fn groups(shared: &Arc<Shared>, req: &Req, kind: &str, ids_only: bool) -> ApiResult {
    req.allow_params(&["fields[*]"])?;
    let mut store = shared.store();
    let id = store
        .profile_by_str(req.param(0))
        .map(|p| p.id)
        .ok_or_else(|| profile_not_found(req.param(0)))?;
    let base = &shared.base_url;
    let fields = req.fields(kind)?;
    let mut data = Vec::new();
    if kind == "list" {
        for (lid, l) in store
            .lists
            .iter()
            .filter(|(_, l)| l.members.contains_key(&id))
        {
            data.push(if ids_only {
                json!({"type": "list", "id": lid})
            } else {
                let mut r = list_resource(base, lid, l);
                if let Some(Value::Object(a)) = r.get_mut("attributes") {
                    *a = sparse(std::mem::take(a), fields.as_deref());
                }
                r
            });
        }
    } else {
        let ids: Vec<String> = store.segments.keys().cloned().collect();
        for sid in ids {
            refresh_members(&mut store, &sid);
            let Some(s) = store.segments.get(&sid) else {
                continue;
            };
            if !s.members.as_ref().is_some_and(|(_, m)| m.contains_key(&id)) {
                continue;
            }
            data.push(if ids_only {
                json!({"type": "segment", "id": sid})
            } else {
                let mut r = segment_resource(base, &sid, s);
                if let Some(Value::Object(a)) = r.get_mut("attributes") {
                    *a = sparse(std::mem::take(a), fields.as_deref());
                }
                r
            });
        }
    }
    Ok(Reply::ok(
        json!({"data": data, "links": req.collection_links(None)}),
    ))
}

fn single(shared: &Arc<Shared>, store: &Store, id: Ulid) -> Value {
    match store.profiles.get(&id) {
        Some(p) => json!({"data": profile_resource(p, &shared.base_url, None, false, None)}),
        None => json!({"data": null}),
    }
}

/// Rejects bodies with members the endpoint does not take (`id` on create, `meta` on create).
fn reject_keys(data: &Map<String, Value>, keys: &[&str]) -> Result<(), ApiError> {
    for k in keys {
        if data.get(*k).is_some_and(|v| !v.is_null()) {
            return Err(
                ApiError::invalid(format!("'{k}' is not allowed in this request."))
                    .pointer(format!("/data/{k}")),
            );
        }
    }
    Ok(())
}

/// Klaviyo limits single-profile writes to 100 KB.
fn check_profile_size(req: &Req) -> Result<(), ApiError> {
    if req.body.len() > 100 * 1024 {
        return Err(ApiError::invalid("Profile payloads must be at most 100 KB.").pointer("/data"));
    }
    Ok(())
}

pub fn create(shared: &Arc<Shared>, req: &Req) -> ApiResult {
    req.allow_params(&["additional-fields[profile]"])?;
    check_profile_size(req)?;
    let body = req.json()?;
    let data = data_object(&body, "profile")?;
    reject_keys(data, &["id", "meta"])?;
    let input = parse_profile(&attributes(data)?, None, true, "/data/attributes")?;
    let mut store = shared.store();
    let id = store.create_profile(&input)?;
    Ok(Reply::created(single(shared, &store, id)))
}

pub fn update(shared: &Arc<Shared>, req: &Req) -> ApiResult {
    req.allow_params(&["additional-fields[profile]"])?;
    check_profile_size(req)?;
    let body = req.json()?;
    let data = data_object(&body, "profile")?;
    let path_id = req.param(0);
    match data.get("id").and_then(Value::as_str) {
        Some(id) if id == path_id => {}
        Some(_) => {
            return Err(ApiError::conflict(
                "conflict",
                "The id in the body does not match the id in the URL.",
            )
            .pointer("/data/id"));
        }
        None => return Err(ApiError::invalid("`data.id` is required.").pointer("/data/id")),
    }
    let input = parse_profile(
        &attributes(data)?,
        data.get("meta"),
        true,
        "/data/attributes",
    )?;
    let mut store = shared.store();
    let id = store
        .profile_by_str(path_id)
        .map(|p| p.id)
        .ok_or_else(|| profile_not_found(path_id))?;
    store.apply(id, &input)?;
    Ok(Reply::ok(single(shared, &store, id)))
}

pub fn import(shared: &Arc<Shared>, req: &Req) -> ApiResult {
    req.allow_params(&["additional-fields[profile]"])?;
    check_profile_size(req)?;
    let body = req.json()?;
    let data = data_object(&body, "profile")?;
    let id = match data.get("id") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(_) => return Err(ApiError::invalid("`data.id` must be a string.").pointer("/data/id")),
    };
    let input = parse_profile(
        &attributes(data)?,
        data.get("meta"),
        true,
        "/data/attributes",
    )?;
    if id.is_none() && !input.has_identifier() {
        return Err(super::store::missing_identifier());
    }
    let mut store = shared.store();
    let (pid, created) = store.upsert_profile(id.as_deref(), &input)?;
    let body = single(shared, &store, pid);
    Ok(if created {
        Reply::created(body)
    } else {
        Reply::ok(body)
    })
}

/// Literal helper for other modules' filters on identifier fields.
pub fn ident_matches(p: &Profile, field: &str, value: &Lit) -> bool {
    matches(
        p,
        &Cond {
            op: "any".into(),
            field: field.into(),
            value: value.clone(),
        },
    )
}
