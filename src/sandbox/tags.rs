//! Tags and tag groups (`/api/tags…`, `/api/tag-groups…`): a default group that always
//! exists and cannot be deleted, exclusive groups (one of their tags per resource), at most 500
//! tags, 50 groups and 100 tags per list or segment; PATCH answers 204. Tags attach to lists and
//! segments only. In: routed requests; out: JSON:API replies and tag changes in the store.

use std::sync::Arc;

use serde_json::{Value, json};

use super::filter;
use super::http::{
    ApiError, ApiResult, Reply, Req, attributes, data_object, linkage_ids, opt_bool, opt_str,
    sparse,
};
use super::resources::{attach_group, tag_group_resource, tag_resource, tags_on};
use super::shared::Shared;
use super::store::{Tag, TagGroup};

const MAX_TAGS: usize = 500;
const MAX_GROUPS: usize = 50;
const MAX_TAGS_PER_RESOURCE: usize = 100;

fn tag_not_found(id: &str) -> ApiError {
    ApiError::not_found(format!("A tag with id {id} does not exist."))
}
fn group_not_found(id: &str) -> ApiError {
    ApiError::not_found(format!("A tag group with id {id} does not exist."))
}

fn fields(mut r: Value, req: &Req, ty: &str) -> Result<Value, ApiError> {
    let f = req.fields(ty)?;
    if let Some(Value::Object(a)) = r.get_mut("attributes") {
        *a = sparse(std::mem::take(a), f.as_deref());
    }
    Ok(r)
}

fn name_matches(c: &filter::Cond, name: &str) -> bool {
    let w = c.value.as_str().unwrap_or("");
    match c.op.as_str() {
        "equals" => name == w,
        "contains" => name.contains(w),
        "starts-with" => name.starts_with(w),
        "ends-with" => name.ends_with(w),
        _ => false,
    }
}

/// One page of `(id, item)` pairs and the next cursor.
type Page<'a, V> = (Vec<(&'a String, &'a V)>, Option<String>);

/// A page of tags or tag groups: filtered by `keep`, sorted by `sort=±id|±name`, offset cursor.
fn page_keys<'a, V>(
    map: &'a std::collections::BTreeMap<String, V>,
    req: &Req,
    size: usize,
    name: impl Fn(&V) -> &str,
    keep: impl Fn(&String, &V) -> bool,
) -> Result<Page<'a, V>, ApiError> {
    let sort = req.sort(&["id", "name"])?;
    let mut items: Vec<_> = map.iter().filter(|(k, v)| keep(k, v)).collect();
    if let Some((field, desc)) = sort {
        items.sort_by(|a, b| {
            let o = if field == "name" {
                name(a.1).cmp(name(b.1))
            } else {
                a.0.cmp(b.0)
            };
            if desc { o.reverse() } else { o }
        });
    }
    req.offset_page(items, size)
}

pub fn list(shared: &Arc<Shared>, req: &Req) -> ApiResult {
    req.allow_params(&[
        "fields[*]",
        "filter",
        "page[cursor]",
        "page[size]",
        "sort",
        "include",
    ])?;
    let size = req.page_size(50, 50)?;
    let include = !req.includes(&["tag-group"])?.is_empty();
    let conds = match req.q("filter")? {
        Some(f) => filter::parse(
            f,
            &[("name", &["contains", "ends-with", "equals", "starts-with"])],
        )?,
        None => vec![],
    };
    let store = shared.store();
    let (page, next) = page_keys(
        &store.tags,
        req,
        size,
        |t| &t.name,
        |_, t| conds.iter().all(|c| name_matches(c, &t.name)),
    )?;
    let mut data = Vec::new();
    let mut included = Vec::new();
    for (id, t) in page {
        let r = fields(tag_resource(&shared.base_url, id, t), req, "tag")?;
        if include {
            attach_group(&store, &shared.base_url, t, &mut included);
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
    req.allow_params(&["fields[*]", "include"])?;
    let include = !req.includes(&["tag-group"])?.is_empty();
    let store = shared.store();
    let id = req.param(0);
    let t = store.tags.get(id).ok_or_else(|| tag_not_found(id))?;
    let r = fields(tag_resource(&shared.base_url, id, t), req, "tag")?;
    let mut body = json!({"data": r, "links": {"self": req.self_link()}});
    if include {
        let mut included = Vec::new();
        attach_group(&store, &shared.base_url, t, &mut included);
        body["included"] = Value::Array(included);
    }
    Ok(Reply::ok(body))
}

pub fn create(shared: &Arc<Shared>, req: &Req) -> ApiResult {
    req.allow_params(&[])?;
    let body = req.json()?;
    let data = data_object(&body, "tag")?;
    let attrs = attributes(data)?;
    let name = match opt_str(&attrs, "name", "/data/attributes")? {
        Some(Some(n)) if !n.trim().is_empty() => n,
        _ => return Err(ApiError::invalid("'name' is required.").pointer("/data/attributes/name")),
    };
    let group = data
        .get("relationships")
        .and_then(|r| r.get("tag-group"))
        .and_then(|g| g.get("data"))
        .filter(|d| !d.is_null());
    let mut store = shared.store();
    let group_id = match group {
        Some(g) => {
            if g.get("type").and_then(Value::as_str) != Some("tag-group") {
                return Err(ApiError::invalid("Expected resource type 'tag-group'.")
                    .pointer("/data/relationships/tag-group/data/type"));
            }
            let gid = g.get("id").and_then(Value::as_str).unwrap_or("");
            if !store.tag_groups.contains_key(gid) {
                return Err(group_not_found(gid).pointer("/data/relationships/tag-group/data/id"));
            }
            gid.to_string()
        }
        None => store.default_tag_group(),
    };
    if store.tags.len() >= MAX_TAGS {
        return Err(ApiError::invalid(format!(
            "An account may have at most {MAX_TAGS} tags."
        )));
    }
    if store
        .tags
        .values()
        .any(|t| t.group == group_id && t.name == name)
    {
        return Err(ApiError::conflict(
            "conflict",
            format!("A tag named '{name}' already exists in this tag group."),
        )
        .pointer("/data/attributes/name"));
    }
    let id = store.new_uuid();
    let t = Tag {
        name,
        group: group_id,
        lists: Default::default(),
        segments: Default::default(),
    };
    let r = tag_resource(&shared.base_url, &id, &t);
    store.tags.insert(id, t);
    Ok(Reply::created(json!({"data": r})))
}

fn body_id_matches(data: &serde_json::Map<String, Value>, id: &str) -> Result<(), ApiError> {
    match data.get("id").and_then(Value::as_str) {
        Some(b) if b == id => Ok(()),
        Some(_) => Err(ApiError::conflict(
            "conflict",
            "The id in the body does not match the id in the URL.",
        )
        .pointer("/data/id")),
        None => Err(ApiError::invalid("`data.id` is required.").pointer("/data/id")),
    }
}

pub fn update(shared: &Arc<Shared>, req: &Req) -> ApiResult {
    req.allow_params(&[])?;
    let body = req.json()?;
    let data = data_object(&body, "tag")?;
    let id = req.param(0);
    body_id_matches(data, id)?;
    let attrs = attributes(data)?;
    for k in attrs.keys() {
        if k != "name" {
            return Err(
                ApiError::invalid(format!("'{k}' cannot be changed on a tag."))
                    .pointer(format!("/data/attributes/{k}")),
            );
        }
    }
    let name = match opt_str(&attrs, "name", "/data/attributes")? {
        Some(Some(n)) if !n.trim().is_empty() => n,
        _ => return Err(ApiError::invalid("'name' is required.").pointer("/data/attributes/name")),
    };
    let mut store = shared.store();
    let t = store.tags.get_mut(id).ok_or_else(|| tag_not_found(id))?;
    t.name = name;
    Ok(Reply::no_content())
}

pub fn delete(shared: &Arc<Shared>, req: &Req) -> ApiResult {
    let mut store = shared.store();
    let id = req.param(0);
    store.tags.remove(id).ok_or_else(|| tag_not_found(id))?;
    Ok(Reply::no_content())
}

pub fn group_of(shared: &Arc<Shared>, req: &Req, ids_only: bool) -> ApiResult {
    let store = shared.store();
    let id = req.param(0);
    let t = store.tags.get(id).ok_or_else(|| tag_not_found(id))?;
    let data = if ids_only {
        json!({"type": "tag-group", "id": t.group})
    } else {
        match store.tag_groups.get(&t.group) {
            Some(g) => tag_group_resource(&shared.base_url, &t.group, g),
            None => Value::Null,
        }
    };
    Ok(Reply::ok(
        json!({"data": data, "links": {"self": req.self_link()}}),
    ))
}

pub fn related(shared: &Arc<Shared>, req: &Req, kind: &str) -> ApiResult {
    let store = shared.store();
    let id = req.param(0);
    let t = store.tags.get(id).ok_or_else(|| tag_not_found(id))?;
    let ids = if kind == "list" {
        &t.lists
    } else {
        &t.segments
    };
    let data: Vec<Value> = ids.iter().map(|i| json!({"type": kind, "id": i})).collect();
    Ok(Reply::ok(
        json!({"data": data, "links": req.collection_links(None)}),
    ))
}

/// `POST`/`DELETE /api/tags/{id}/relationships/lists|segments`.
pub fn relate(shared: &Arc<Shared>, req: &Req, kind: &str, add: bool) -> ApiResult {
    req.allow_params(&[])?;
    let body = req.json()?;
    let ids = linkage_ids(&body, kind, 100)?;
    let mut store = shared.store();
    let tag_id = req.param(0).to_string();
    let tag = store
        .tags
        .get(&tag_id)
        .ok_or_else(|| tag_not_found(&tag_id))?
        .clone();
    for (i, rid) in ids.iter().enumerate() {
        let exists = if kind == "list" {
            store.lists.contains_key(rid)
        } else {
            store.segments.contains_key(rid)
        };
        if !exists {
            return Err(
                ApiError::not_found(format!("A {kind} with id {rid} does not exist."))
                    .pointer(format!("/data/{i}/id")),
            );
        }
        if !add {
            continue;
        }
        let on = tags_on(&store, kind, rid);
        if on.contains(&tag_id) {
            continue;
        }
        if on.len() >= MAX_TAGS_PER_RESOURCE {
            return Err(ApiError::invalid(format!(
                "A {kind} may carry at most {MAX_TAGS_PER_RESOURCE} tags."
            ))
            .pointer(format!("/data/{i}/id")));
        }
        let exclusive = store
            .tag_groups
            .get(&tag.group)
            .is_some_and(|g| g.exclusive);
        if exclusive
            && on
                .iter()
                .any(|o| store.tags.get(o).is_some_and(|t| t.group == tag.group))
        {
            return Err(ApiError::invalid(format!(
                "The {kind} {rid} already has a tag from the exclusive tag group of this tag."
            ))
            .pointer(format!("/data/{i}/id")));
        }
    }
    if let Some(t) = store.tags.get_mut(&tag_id) {
        let set = if kind == "list" {
            &mut t.lists
        } else {
            &mut t.segments
        };
        for rid in ids {
            if add {
                set.insert(rid);
            } else {
                set.remove(&rid);
            }
        }
    }
    Ok(Reply::no_content())
}

/// `GET /api/lists/{id}/tags` and `/api/segments/{id}/tags` (+ relationships).
pub fn for_resource(shared: &Arc<Shared>, req: &Req, kind: &str, ids_only: bool) -> ApiResult {
    let store = shared.store();
    let rid = req.param(0);
    let exists = if kind == "list" {
        store.lists.contains_key(rid)
    } else {
        store.segments.contains_key(rid)
    };
    if !exists {
        return Err(ApiError::not_found(format!(
            "A {kind} with id {rid} does not exist."
        )));
    }
    let data: Vec<Value> = tags_on(&store, kind, rid)
        .iter()
        .filter_map(|id| {
            store.tags.get(id).map(|t| {
                if ids_only {
                    json!({"type": "tag", "id": id})
                } else {
                    tag_resource(&shared.base_url, id, t)
                }
            })
        })
        .collect();
    Ok(Reply::ok(
        json!({"data": data, "links": req.collection_links(None)}),
    ))
}

pub fn list_groups(shared: &Arc<Shared>, req: &Req) -> ApiResult {
    req.allow_params(&["fields[*]", "filter", "page[cursor]", "page[size]", "sort"])?;
    let size = req.page_size(25, 25)?;
    let conds = match req.q("filter")? {
        Some(f) => filter::parse(
            f,
            &[
                ("name", &["contains", "ends-with", "equals", "starts-with"]),
                ("exclusive", &["equals"]),
                ("default", &["equals"]),
            ],
        )?,
        None => vec![],
    };
    let store = shared.store();
    let (page, next) = page_keys(
        &store.tag_groups,
        req,
        size,
        |g| &g.name,
        |_, g| {
            conds.iter().all(|c| match c.field.as_str() {
                "exclusive" => c.value == filter::Lit::Bool(g.exclusive),
                "default" => c.value == filter::Lit::Bool(g.default),
                _ => name_matches(c, &g.name),
            })
        },
    )?;
    let mut data = Vec::new();
    for (id, g) in page {
        data.push(fields(
            tag_group_resource(&shared.base_url, id, g),
            req,
            "tag-group",
        )?);
    }
    Ok(Reply::ok(
        json!({"data": data, "links": req.collection_links(next.as_deref())}),
    ))
}

pub fn get_group(shared: &Arc<Shared>, req: &Req) -> ApiResult {
    req.allow_params(&["fields[*]"])?;
    let store = shared.store();
    let id = req.param(0);
    let g = store
        .tag_groups
        .get(id)
        .ok_or_else(|| group_not_found(id))?;
    let r = fields(
        tag_group_resource(&shared.base_url, id, g),
        req,
        "tag-group",
    )?;
    Ok(Reply::ok(
        json!({"data": r, "links": {"self": req.self_link()}}),
    ))
}

pub fn create_group(shared: &Arc<Shared>, req: &Req) -> ApiResult {
    req.allow_params(&[])?;
    let body = req.json()?;
    let data = data_object(&body, "tag-group")?;
    let attrs = attributes(data)?;
    let name = match opt_str(&attrs, "name", "/data/attributes")? {
        Some(Some(n)) if !n.trim().is_empty() => n,
        _ => return Err(ApiError::invalid("'name' is required.").pointer("/data/attributes/name")),
    };
    let exclusive = opt_bool(&attrs, "exclusive", "/data/attributes")?.unwrap_or(false);
    let mut store = shared.store();
    if store.tag_groups.len() >= MAX_GROUPS {
        return Err(ApiError::invalid(format!(
            "An account may have at most {MAX_GROUPS} tag groups."
        )));
    }
    let id = store.new_uuid();
    let g = TagGroup {
        name,
        exclusive,
        default: false,
    };
    let r = tag_group_resource(&shared.base_url, &id, &g);
    store.tag_groups.insert(id, g);
    Ok(Reply::created(json!({"data": r})))
}

pub fn update_group(shared: &Arc<Shared>, req: &Req) -> ApiResult {
    req.allow_params(&[])?;
    let body = req.json()?;
    let data = data_object(&body, "tag-group")?;
    let id = req.param(0);
    body_id_matches(data, id)?;
    let attrs = attributes(data)?;
    for k in attrs.keys() {
        if k != "name" {
            return Err(
                ApiError::invalid(format!("'{k}' cannot be changed on a tag group."))
                    .pointer(format!("/data/attributes/{k}")),
            );
        }
    }
    let name = match opt_str(&attrs, "name", "/data/attributes")? {
        Some(Some(n)) if !n.trim().is_empty() => n,
        _ => return Err(ApiError::invalid("'name' is required.").pointer("/data/attributes/name")),
    };
    let mut store = shared.store();
    let g = store
        .tag_groups
        .get_mut(id)
        .ok_or_else(|| group_not_found(id))?;
    g.name = name;
    Ok(Reply::no_content())
}

pub fn delete_group(shared: &Arc<Shared>, req: &Req) -> ApiResult {
    let mut store = shared.store();
    let id = req.param(0);
    let g = store
        .tag_groups
        .get(id)
        .ok_or_else(|| group_not_found(id))?;
    if g.default {
        return Err(ApiError::invalid(
            "The default tag group cannot be deleted.",
        ));
    }
    store.tag_groups.remove(id);
    store.tags.retain(|_, t| t.group != id);
    Ok(Reply::no_content())
}

pub fn group_tags(shared: &Arc<Shared>, req: &Req, ids_only: bool) -> ApiResult {
    let store = shared.store();
    let id = req.param(0);
    if !store.tag_groups.contains_key(id) {
        return Err(group_not_found(id));
    }
    let data: Vec<Value> = store
        .tags
        .iter()
        .filter(|(_, t)| t.group == id)
        .map(|(tid, t)| {
            if ids_only {
                json!({"type": "tag", "id": tid})
            } else {
                tag_resource(&shared.base_url, tid, t)
            }
        })
        .collect();
    Ok(Reply::ok(
        json!({"data": data, "links": req.collection_links(None)}),
    ))
}
