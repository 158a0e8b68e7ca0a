//! Lists (`/api/lists…`): create (150 a day), read with `filter=equals(name,…)` ten per page,
//! rename, delete, and membership by Klaviyo profile id, at most 1,000 ids per call. In: routed
//! requests; out: JSON:API replies and list changes in the store.

use std::ops::Bound;
use std::sync::Arc;

use hyper::StatusCode;
use serde_json::{Value, json};
use ulid::Ulid;

use super::filter::{self, ListQuery};
use super::http::{
    ApiError, ApiResult, Reply, Req, attributes, data_object, linkage_ids, now_millis, opt_str,
    sparse, ts,
};
use super::profiles::{self, cursor_ulid, page_after};
use super::resources::{attach_tags, list_resource, profile_resource};
use super::shared::Shared;
use super::store::{List, Store};

pub fn list_not_found(id: &str) -> ApiError {
    ApiError::not_found(format!("A list with id {id} does not exist."))
}

fn with_fields(mut r: Value, req: &Req, count: Option<usize>) -> Result<Value, ApiError> {
    let fields = req.fields("list")?;
    if let Some(Value::Object(a)) = r.get_mut("attributes") {
        let mut s = sparse(std::mem::take(a), fields.as_deref());
        if let Some(n) = count {
            s.insert("profile_count".into(), json!(n));
        }
        *a = s;
    }
    Ok(r)
}

fn wants_count(req: &Req) -> Result<bool, ApiError> {
    let mut want = false;
    for f in req.additional("list")? {
        if f == "profile_count" {
            want = true;
        } else {
            return Err(ApiError::invalid(format!(
                "'{f}' is not a valid additional field for 'list'."
            ))
            .parameter("additional-fields[list]"));
        }
    }
    Ok(want)
}

const LIST_FILTERS: &[(&str, &[&str])] = &[
    ("name", &["any", "equals"]),
    ("id", &["any", "equals"]),
    ("created", &["greater-than"]),
    ("updated", &["greater-than"]),
];

pub fn list(shared: &Arc<Shared>, req: &Req) -> ApiResult {
    let ListQuery {
        size,
        include,
        conds,
        sort,
    } = ListQuery::parse(req, LIST_FILTERS)?;
    let store = shared.store();
    let keep = |id: &String, l: &List| {
        conds.iter().all(|c| match c.field.as_str() {
            "name" => c.value.strings().contains(&l.name),
            "id" => c.value.strings().contains(id),
            _ => {
                let at = if c.field == "created" {
                    l.created
                } else {
                    l.updated
                };
                c.value
                    .as_str()
                    .and_then(|s| chrono::DateTime::parse_from_rfc3339(s).ok())
                    .is_some_and(|t| at > t.timestamp_millis())
            }
        })
    };
    let mut items: Vec<(&String, &List)> =
        store.lists.iter().filter(|(id, l)| keep(id, l)).collect();
    if let Some((field, desc)) = &sort {
        items.sort_by(|a, b| {
            let o = match field.as_str() {
                "name" => a.1.name.cmp(&b.1.name),
                "created" => a.1.created.cmp(&b.1.created),
                "updated" => a.1.updated.cmp(&b.1.updated),
                _ => a.0.cmp(b.0),
            };
            if *desc { o.reverse() } else { o }
        });
    }
    let (page, next) = req.offset_page(items, size)?;
    let mut data = Vec::new();
    let mut included = Vec::new();
    for (id, l) in page {
        let mut r = with_fields(list_resource(&shared.base_url, id, l), req, None)?;
        if include {
            attach_tags(&store, &shared.base_url, "list", id, &mut r, &mut included);
        }
        data.push(r);
    }
    let mut body = json!({"data": data, "links": req.collection_links(next.as_deref())});
    if include {
        body["included"] = Value::Array(included);
    }
    Ok(Reply::ok(body))
}

pub fn get(shared: &Arc<Shared>, req: &Req) -> ApiResult {
    req.allow_params(&["fields[*]", "additional-fields[list]", "include"])?;
    let count = wants_count(req)?;
    let include = req
        .includes(&["flow-triggers", "tags"])?
        .iter()
        .any(|i| i == "tags");
    let store = shared.store();
    let id = req.param(0);
    let l = store.lists.get(id).ok_or_else(|| list_not_found(id))?;
    let mut r = with_fields(
        list_resource(&shared.base_url, id, l),
        req,
        count.then_some(l.members.len()),
    )?;
    let mut included = Vec::new();
    if include {
        attach_tags(&store, &shared.base_url, "list", id, &mut r, &mut included);
    }
    let mut body = json!({"data": r, "links": {"self": req.self_link()}});
    if include {
        body["included"] = Value::Array(included);
    }
    Ok(Reply::ok(body))
}

fn opt_in(attrs: &serde_json::Map<String, Value>) -> Result<Option<String>, ApiError> {
    match opt_str(attrs, "opt_in_process", "/data/attributes")? {
        None | Some(None) => Ok(None),
        Some(Some(v)) if v == "single_opt_in" || v == "double_opt_in" => Ok(Some(v)),
        Some(Some(v)) => Err(ApiError::invalid(format!(
            "'{v}' is not a valid opt_in_process; use single_opt_in or double_opt_in."
        ))
        .pointer("/data/attributes/opt_in_process")),
    }
}

pub fn create(shared: &Arc<Shared>, req: &Req) -> ApiResult {
    req.allow_params(&[])?;
    let body = req.json()?;
    let data = data_object(&body, "list")?;
    let attrs = attributes(data)?;
    let name = match opt_str(&attrs, "name", "/data/attributes")? {
        Some(Some(n)) if !n.trim().is_empty() => n,
        _ => {
            return Err(ApiError::invalid("'name' is required.").pointer("/data/attributes/name"));
        }
    };
    let opt_in = opt_in(&attrs)?.unwrap_or_else(|| "single_opt_in".into());
    let mut store = shared.store();
    store.take_daily("lists", 150)?;
    let id = store.new_short_id();
    let now = now_millis();
    let l = List {
        name,
        created: now,
        updated: now,
        opt_in_process: opt_in,
        members: Default::default(),
    };
    let r = list_resource(&shared.base_url, &id, &l);
    store.lists.insert(id, l);
    Ok(Reply::created(json!({"data": r})))
}

fn check_body_id(data: &serde_json::Map<String, Value>, path_id: &str) -> Result<(), ApiError> {
    match data.get("id").and_then(Value::as_str) {
        Some(id) if id == path_id => Ok(()),
        Some(_) => Err(ApiError::new(
            StatusCode::CONFLICT,
            "conflict",
            "Conflict.",
            "The id in the body does not match the id in the URL.",
        )
        .pointer("/data/id")),
        None => Err(ApiError::invalid("`data.id` is required.").pointer("/data/id")),
    }
}

pub fn update(shared: &Arc<Shared>, req: &Req) -> ApiResult {
    req.allow_params(&[])?;
    let body = req.json()?;
    let data = data_object(&body, "list")?;
    let id = req.param(0);
    check_body_id(data, id)?;
    let attrs = attributes(data)?;
    let name = opt_str(&attrs, "name", "/data/attributes")?;
    let opt_in = opt_in(&attrs)?;
    let mut store = shared.store();
    let l = store.lists.get_mut(id).ok_or_else(|| list_not_found(id))?;
    if let Some(Some(n)) = name {
        l.name = n;
    }
    if let Some(o) = opt_in {
        l.opt_in_process = o;
    }
    l.updated = now_millis();
    let r = list_resource(&shared.base_url, id, l);
    Ok(Reply::ok(json!({"data": r})))
}

pub fn delete(shared: &Arc<Shared>, req: &Req) -> ApiResult {
    let mut store = shared.store();
    let id = req.param(0);
    store.lists.remove(id).ok_or_else(|| list_not_found(id))?;
    for t in store.tags.values_mut() {
        t.lists.remove(id);
    }
    Ok(Reply::no_content())
}

/// Profile ids from a membership body; every id must name an existing profile (400 otherwise,
/// before anything changes).
fn member_ids(store: &Store, req: &Req) -> Result<Vec<Ulid>, ApiError> {
    let body = req.json()?;
    let ids = linkage_ids(&body, "profile", 1000)?;
    let mut out = Vec::with_capacity(ids.len());
    for (i, id) in ids.iter().enumerate() {
        match Ulid::from_string(id)
            .ok()
            .filter(|u| store.profiles.contains_key(u))
        {
            Some(u) => out.push(u),
            None => {
                return Err(
                    ApiError::invalid(format!("A profile with id {id} does not exist."))
                        .pointer(format!("/data/{i}/id")),
                );
            }
        }
    }
    Ok(out)
}

pub fn add(shared: &Arc<Shared>, req: &Req) -> ApiResult {
    req.allow_params(&[])?;
    let mut store = shared.store();
    let id = req.param(0);
    if !store.lists.contains_key(id) {
        return Err(list_not_found(id));
    }
    let ids = member_ids(&store, req)?;
    let now = now_millis();
    if let Some(l) = store.lists.get_mut(id) {
        for u in ids {
            l.members.entry(u).or_insert(now);
        }
    }
    Ok(Reply::no_content())
}

pub fn remove(shared: &Arc<Shared>, req: &Req) -> ApiResult {
    req.allow_params(&[])?;
    let mut store = shared.store();
    let id = req.param(0);
    if !store.lists.contains_key(id) {
        return Err(list_not_found(id));
    }
    let ids = member_ids(&store, req)?;
    if let Some(l) = store.lists.get_mut(id) {
        for u in ids {
            l.members.remove(&u);
        }
    }
    Ok(Reply::no_content())
}

pub const MEMBER_FILTERS: &[(&str, &[&str])] = &[
    ("email", &["any", "equals"]),
    ("phone_number", &["any", "equals"]),
    ("push_token", &["any", "equals"]),
    ("_kx", &["equals"]),
    ("profile_id", &["any", "equals"]),
    (
        "joined_group_at",
        &[
            "greater-than",
            "greater-or-equal",
            "less-than",
            "less-or-equal",
        ],
    ),
];

/// Pages members (id → joined time) in id order, for lists and segments alike.
pub fn member_page(
    shared: &Arc<Shared>,
    req: &Req,
    store: &Store,
    members: &std::collections::BTreeMap<Ulid, i64>,
    ids_only: bool,
) -> ApiResult {
    req.allow_params(&[
        "fields[*]",
        "additional-fields[profile]",
        "filter",
        "page[size]",
        "page[cursor]",
        "sort",
    ])?;
    let size = req.page_size(20, 100)?;
    let fields = req.fields("profile")?;
    let subs = !ids_only && profiles::wants_subscriptions(req)?;
    let conds = match req.q("filter")? {
        Some(f) => filter::parse(f, MEMBER_FILTERS)?,
        None => vec![],
    };
    let sort = req.sort(&["joined_group_at"])?;
    let keep = |id: &Ulid, joined: i64| {
        let Some(p) = store.profiles.get(id) else {
            return false;
        };
        conds.iter().all(|c| match c.field.as_str() {
            "email" | "phone_number" => profiles::ident_matches(p, &c.field, &c.value),
            "profile_id" => c.value.strings().contains(&id.to_string()),
            "joined_group_at" => c
                .value
                .as_str()
                .and_then(|s| chrono::DateTime::parse_from_rfc3339(s).ok())
                .is_some_and(|t| {
                    let t = t.timestamp_millis();
                    match c.op.as_str() {
                        "greater-than" => joined > t,
                        "greater-or-equal" => joined >= t,
                        "less-than" => joined < t,
                        _ => joined <= t,
                    }
                }),
            _ => false,
        })
    };
    let (page, next) = match sort {
        // Sorted by join time: collect, sort, page by offset.
        Some((_, desc)) => {
            let mut items: Vec<(Ulid, i64)> = members
                .iter()
                .filter(|(id, j)| keep(id, **j))
                .map(|(id, j)| (*id, *j))
                .collect();
            items.sort_by(|a, b| {
                let o = a.1.cmp(&b.1).then(a.0.cmp(&b.0));
                if desc { o.reverse() } else { o }
            });
            let (page, next) = req.offset_page(items, size)?;
            (page.into_iter().map(|(id, _)| id).collect(), next)
        }
        None => {
            let lower = cursor_ulid(req)?.map_or(Bound::Unbounded, Bound::Excluded);
            page_after(
                members
                    .range((lower, Bound::Unbounded))
                    .filter(|(id, j)| keep(id, **j))
                    .map(|(id, _)| *id),
                size,
            )
        }
    };
    let data: Vec<Value> = page
        .iter()
        .filter_map(|id| {
            store
                .profiles
                .get(id)
                .map(|p| (p, members.get(id).copied().unwrap_or(0)))
        })
        .map(|(p, joined)| {
            if ids_only {
                json!({"type": "profile", "id": p.id.to_string()})
            } else {
                profile_resource(
                    p,
                    &shared.base_url,
                    fields.as_deref(),
                    subs,
                    Some(("joined_group_at", Value::String(ts(joined)))),
                )
            }
        })
        .collect();
    Ok(Reply::ok(
        json!({"data": data, "links": req.collection_links(next.as_deref())}),
    ))
}

pub fn members(shared: &Arc<Shared>, req: &Req, ids_only: bool) -> ApiResult {
    let store = shared.store();
    let id = req.param(0);
    let l = store.lists.get(id).ok_or_else(|| list_not_found(id))?;
    member_page(shared, req, &store, &l.members, ids_only)
}
