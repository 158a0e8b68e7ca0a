//! Segments (`/api/segments…`): create and update with a `definition` (100 a day each),
//! deactivation-only PATCH rule, `is_processing` briefly true after a change, and membership
//! computed from the profiles the sandbox holds (see membership.rs). In: routed requests; out:
//! JSON:API replies.

use std::sync::Arc;

use serde_json::{Value, json};

use super::filter::{self, ListQuery};
use super::http::{
    ApiError, ApiResult, Reply, Req, attributes, data_object, now_millis, opt_bool, opt_str, sparse,
};
use super::lists::member_page;
use super::membership::refresh_members;
use super::resources::{attach_tags, segment_resource};
use super::shared::Shared;
use super::store::{Segment, Store};

fn segment_not_found(id: &str) -> ApiError {
    ApiError::not_found(format!("A segment with id {id} does not exist."))
}

const CONDITION_TYPES: &[&str] = &[
    "profile-property",
    "profile-group-membership",
    "profile-metric",
    "profile-metric-funnel",
    "profile-marketing-consent",
    "profile-permissions",
    "profile-postal-code-distance",
    "profile-region",
    "profile-predictive-analytics",
    "profile-has-custom-object",
];

/// Filter types and operators a `profile-property` condition accepts (spec schemas
/// `StringOperatorStringFilter`, `NumericOperatorNumericFilter`, … in `ProfilePropertyCondition`).
const PROPERTY_FILTERS: &[(&str, &[&str])] = &[
    (
        "string",
        &[
            "equals",
            "not-equals",
            "contains",
            "not-contains",
            "starts-with",
            "not-starts-with",
            "ends-with",
            "not-ends-with",
            "regex",
            "nregex",
            "in",
            "not-in",
            "phone-country-code-in",
            "phone-country-code-not-in",
        ],
    ),
    (
        "numeric",
        &[
            "equals",
            "not-equals",
            "greater-than",
            "greater-than-or-equal",
            "less-than",
            "less-than-or-equal",
        ],
    ),
    ("boolean", &["equals"]),
    (
        "date",
        &[
            "after",
            "before",
            "between-static",
            "in-the-last",
            "in-the-next",
            "at-least",
            "between",
            "anniversary-last",
            "anniversary-next",
            "calendar-month",
            "anniversary",
            "anniversary-month",
        ],
    ),
    (
        "list",
        &[
            "contains",
            "not-contains",
            "length-equals",
            "length-greater-than",
            "length-greater-than-or-equal",
            "length-less-than",
            "length-less-than-or-equal",
        ],
    ),
    ("existence", &["is-set", "not-set"]),
];

/// Lists named by `profile-group-membership` conditions must exist.
fn check_groups(store: &Store, def: &Value) -> Result<(), ApiError> {
    let groups = def
        .get("condition_groups")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    for (g, group) in groups.iter().enumerate() {
        let conds = group
            .get("conditions")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        for (c, cond) in conds.iter().enumerate() {
            if cond.get("type").and_then(Value::as_str) != Some("profile-group-membership") {
                continue;
            }
            for (i, gid) in cond
                .get("group_ids")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .enumerate()
            {
                let gid = gid.as_str().unwrap_or("");
                if !store.lists.contains_key(gid) {
                    return Err(ApiError::invalid(format!("A list with id {gid} does not exist."))
                        .pointer(format!(
                            "/data/attributes/definition/condition_groups/{g}/conditions/{c}/group_ids/{i}"
                        )));
                }
            }
        }
    }
    Ok(())
}

/// Checks the parts of a definition the sandbox evaluates; the rest is stored verbatim.
fn validate_definition(def: &Value) -> Result<(), ApiError> {
    let base = "/data/attributes/definition";
    let groups = def
        .get("condition_groups")
        .and_then(Value::as_array)
        .ok_or_else(|| {
            ApiError::invalid("`definition.condition_groups` must be an array.")
                .pointer(format!("{base}/condition_groups"))
        })?;
    if groups.is_empty() {
        return Err(
            ApiError::invalid("A segment definition needs at least one condition group.")
                .pointer(format!("{base}/condition_groups")),
        );
    }
    let mut total = 0;
    for (g, group) in groups.iter().enumerate() {
        let gp = format!("{base}/condition_groups/{g}/conditions");
        let conds = group
            .get("conditions")
            .and_then(Value::as_array)
            .filter(|c| !c.is_empty())
            .ok_or_else(|| {
                ApiError::invalid("Each condition group needs a non-empty `conditions` array.")
                    .pointer(&gp)
            })?;
        total += conds.len();
        for (c, cond) in conds.iter().enumerate() {
            let cp = format!("{gp}/{c}");
            let ty = cond.get("type").and_then(Value::as_str).unwrap_or("");
            if !CONDITION_TYPES.contains(&ty) {
                return Err(
                    ApiError::invalid(format!("'{ty}' is not a valid condition type."))
                        .pointer(format!("{cp}/type")),
                );
            }
            match ty {
                "profile-property" => {
                    if cond.get("property").and_then(Value::as_str).is_none() {
                        return Err(ApiError::invalid("`property` is required.")
                            .pointer(format!("{cp}/property")));
                    }
                    let f = cond.get("filter");
                    let ty = f.and_then(|f| f.get("type")).and_then(Value::as_str);
                    let op = f.and_then(|f| f.get("operator")).and_then(Value::as_str);
                    let (Some(ty), Some(op)) = (ty, op) else {
                        return Err(ApiError::invalid("`filter` needs `type` and `operator`.")
                            .pointer(format!("{cp}/filter")));
                    };
                    if !PROPERTY_FILTERS
                        .iter()
                        .any(|(t, ops)| *t == ty && ops.contains(&op))
                    {
                        return Err(ApiError::invalid(format!(
                            "'{op}' is not a valid operator for a '{ty}' filter on a profile property."
                        ))
                        .pointer(format!("{cp}/filter/operator")));
                    }
                }
                "profile-group-membership" => {
                    if cond.get("is_member").and_then(Value::as_bool).is_none() {
                        return Err(ApiError::invalid("`is_member` must be a boolean.")
                            .pointer(format!("{cp}/is_member")));
                    }
                    let ids_ok = cond
                        .get("group_ids")
                        .and_then(Value::as_array)
                        .is_some_and(|a| !a.is_empty() && a.iter().all(Value::is_string));
                    if !ids_ok {
                        return Err(ApiError::invalid(
                            "`group_ids` must be a non-empty array of list ids.",
                        )
                        .pointer(format!("{cp}/group_ids")));
                    }
                }
                _ => {}
            }
        }
    }
    if total > 100 {
        return Err(ApiError::invalid("A segment may have at most 100 conditions.").pointer(base));
    }
    Ok(())
}

fn with_fields(mut r: Value, req: &Req, count: Option<usize>) -> Result<Value, ApiError> {
    let fields = req.fields("segment")?;
    if let Some(Value::Object(a)) = r.get_mut("attributes") {
        let mut s = sparse(std::mem::take(a), fields.as_deref());
        if let Some(n) = count {
            s.insert("profile_count".into(), json!(n));
        }
        *a = s;
    }
    Ok(r)
}

const SEGMENT_FILTERS: &[(&str, &[&str])] = &[
    ("name", &["any", "equals"]),
    ("id", &["any", "equals"]),
    ("created", &["greater-than"]),
    ("updated", &["greater-than"]),
    ("is_active", &["any", "equals"]),
    ("is_starred", &["equals"]),
];

pub fn list(shared: &Arc<Shared>, req: &Req) -> ApiResult {
    let ListQuery {
        size,
        include,
        conds,
        sort,
    } = ListQuery::parse(req, SEGMENT_FILTERS)?;
    let store = shared.store();
    let keep = |id: &String, s: &Segment| {
        conds.iter().all(|c| match c.field.as_str() {
            "name" => c.value.strings().contains(&s.name),
            "id" => c.value.strings().contains(id),
            "is_active" => match &c.value {
                filter::Lit::Bool(b) => *b == s.is_active,
                filter::Lit::List(l) => l.contains(&filter::Lit::Bool(s.is_active)),
                _ => false,
            },
            "is_starred" => c.value == filter::Lit::Bool(s.is_starred),
            _ => {
                let at = if c.field == "created" {
                    s.created
                } else {
                    s.updated
                };
                c.value
                    .as_str()
                    .and_then(|v| chrono::DateTime::parse_from_rfc3339(v).ok())
                    .is_some_and(|t| at > t.timestamp_millis())
            }
        })
    };
    let mut items: Vec<(&String, &Segment)> = store
        .segments
        .iter()
        .filter(|(id, s)| keep(id, s))
        .collect();
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
    for (id, s) in page {
        let mut r = with_fields(segment_resource(&shared.base_url, id, s), req, None)?;
        if include {
            attach_tags(
                &store,
                &shared.base_url,
                "segment",
                id,
                &mut r,
                &mut included,
            );
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
    req.allow_params(&["fields[*]", "additional-fields[segment]", "include"])?;
    let mut count = false;
    for f in req.additional("segment")? {
        if f != "profile_count" {
            return Err(ApiError::invalid(format!(
                "'{f}' is not a valid additional field for 'segment'."
            ))
            .parameter("additional-fields[segment]"));
        }
        count = true;
    }
    let include = req
        .includes(&["flow-triggers", "tags"])?
        .iter()
        .any(|i| i == "tags");
    let mut store = shared.store();
    let id = req.param(0);
    if !store.segments.contains_key(id) {
        return Err(segment_not_found(id));
    }
    let n = if count && refresh_members(&mut store, id) {
        store
            .segments
            .get(id)
            .and_then(|s| s.members.as_ref())
            .map(|(_, m)| m.len())
    } else {
        None
    };
    let s = store
        .segments
        .get(id)
        .ok_or_else(|| segment_not_found(id))?;
    let mut r = with_fields(segment_resource(&shared.base_url, id, s), req, n)?;
    let mut included = Vec::new();
    if include {
        attach_tags(
            &store,
            &shared.base_url,
            "segment",
            id,
            &mut r,
            &mut included,
        );
    }
    let mut body = json!({"data": r, "links": {"self": req.self_link()}});
    if include {
        body["included"] = Value::Array(included);
    }
    Ok(Reply::ok(body))
}

pub fn create(shared: &Arc<Shared>, req: &Req) -> ApiResult {
    req.allow_params(&[])?;
    let body = req.json()?;
    let data = data_object(&body, "segment")?;
    let attrs = attributes(data)?;
    let name = match opt_str(&attrs, "name", "/data/attributes")? {
        Some(Some(n)) if !n.trim().is_empty() => n,
        _ => return Err(ApiError::invalid("'name' is required.").pointer("/data/attributes/name")),
    };
    let definition = attrs
        .get("definition")
        .filter(|d| d.is_object())
        .cloned()
        .ok_or_else(|| {
            ApiError::invalid("'definition' is required.").pointer("/data/attributes/definition")
        })?;
    validate_definition(&definition)?;
    let is_starred = opt_bool(&attrs, "is_starred", "/data/attributes")?.unwrap_or(false);
    let mut store = shared.store();
    check_groups(&store, &definition)?;
    store.take_daily("segments", 100)?;
    let id = store.new_short_id();
    let now = now_millis();
    let s = Segment {
        name,
        definition,
        created: now,
        updated: now,
        is_active: true,
        is_starred,
        processing_until: now + shared.segment_processing.as_millis() as i64,
        members: None,
    };
    let r = segment_resource(&shared.base_url, &id, &s);
    store.segments.insert(id, s);
    Ok(Reply::created(json!({"data": r})))
}

pub fn update(shared: &Arc<Shared>, req: &Req) -> ApiResult {
    req.allow_params(&[])?;
    let body = req.json()?;
    let data = data_object(&body, "segment")?;
    let id = req.param(0);
    match data.get("id").and_then(Value::as_str) {
        Some(b) if b == id => {}
        Some(_) => {
            return Err(ApiError::conflict(
                "conflict",
                "The id in the body does not match the id in the URL.",
            )
            .pointer("/data/id"));
        }
        None => return Err(ApiError::invalid("`data.id` is required.").pointer("/data/id")),
    }
    let attrs = attributes(data)?;
    let is_active = opt_bool(&attrs, "is_active", "/data/attributes")?;
    let present = attrs.iter().filter(|(_, v)| !v.is_null()).count();
    if is_active == Some(false) && present > 1 {
        return Err(ApiError::invalid(
            "Deactivating a segment (is_active: false) must be the only change in the request.",
        )
        .pointer("/data/attributes/is_active"));
    }
    for k in attrs.keys() {
        if !matches!(
            k.as_str(),
            "name" | "definition" | "is_starred" | "is_active"
        ) {
            return Err(ApiError::invalid(format!(
                "'{k}' is not a valid field for the resource 'segment'."
            ))
            .pointer(format!("/data/attributes/{k}")));
        }
    }
    let name = opt_str(&attrs, "name", "/data/attributes")?;
    let definition = attrs.get("definition").filter(|d| !d.is_null()).cloned();
    if let Some(d) = &definition {
        validate_definition(d)?;
    }
    let is_starred = opt_bool(&attrs, "is_starred", "/data/attributes")?;
    let mut store = shared.store();
    if !store.segments.contains_key(id) {
        return Err(segment_not_found(id));
    }
    if let Some(d) = &definition {
        check_groups(&store, d)?;
    }
    store.take_daily("segment updates", 100)?;
    let now = now_millis();
    let s = store
        .segments
        .get_mut(id)
        .ok_or_else(|| segment_not_found(id))?;
    if let Some(Some(n)) = name {
        s.name = n;
    }
    if let Some(d) = definition {
        s.definition = d;
        s.members = None;
        s.processing_until = now + shared.segment_processing.as_millis() as i64;
    }
    if let Some(b) = is_starred {
        s.is_starred = b;
    }
    if let Some(a) = is_active {
        if a && !s.is_active {
            s.processing_until = now + shared.segment_processing.as_millis() as i64;
        }
        s.is_active = a;
    }
    s.updated = now;
    let r = segment_resource(&shared.base_url, id, s);
    Ok(Reply::ok(json!({"data": r})))
}

pub fn delete(shared: &Arc<Shared>, req: &Req) -> ApiResult {
    let mut store = shared.store();
    let id = req.param(0);
    store
        .segments
        .remove(id)
        .ok_or_else(|| segment_not_found(id))?;
    for t in store.tags.values_mut() {
        t.segments.remove(id);
    }
    Ok(Reply::no_content())
}

pub fn members(shared: &Arc<Shared>, req: &Req, ids_only: bool) -> ApiResult {
    let mut store = shared.store();
    let id = req.param(0);
    if !refresh_members(&mut store, id) {
        return Err(segment_not_found(id));
    }
    let store = &*store;
    let members = store
        .segments
        .get(id)
        .and_then(|s| s.members.as_ref())
        .map(|(_, m)| m)
        .ok_or_else(|| segment_not_found(id))?;
    member_page(shared, req, store, members, ids_only)
}
