//! JSON:API resources the handlers share: profiles, lists, segments, tags and tag groups as
//! resource objects, a profile's `subscriptions` attribute, and the `include=` helpers that add
//! a list's or segment's tags (or a tag's group) to `included`. In: store records and the base
//! URL; out: `serde_json::Value`s. No I/O.

use serde_json::{Map, Value, json};

use super::http::{now_millis, sparse, ts};
use super::store::{List, Profile, Segment, Store, Tag, TagGroup};

/// A profile as a JSON:API resource. `extra` adds attributes such as `joined_group_at`.
pub fn profile_resource(
    p: &Profile,
    base: &str,
    fields: Option<&[String]>,
    with_subscriptions: bool,
    extra: Option<(&str, Value)>,
) -> Value {
    let id = p.id.to_string();
    let mut attrs = sparse(p.attributes(), fields);
    if let Some((k, v)) = extra {
        attrs.insert(k.to_string(), v);
    }
    if with_subscriptions {
        attrs.insert("subscriptions".into(), subscriptions_attribute(p));
    }
    let rel = |name: &str| {
        json!({"links": {
            "self": format!("{base}/api/profiles/{id}/relationships/{name}/"),
            "related": format!("{base}/api/profiles/{id}/{name}/"),
        }})
    };
    json!({
        "type": "profile",
        "id": id,
        "attributes": attrs,
        "relationships": {"lists": rel("lists"), "segments": rel("segments")},
        "links": {"self": format!("{base}/api/profiles/{id}/")},
    })
}

/// The `subscriptions` attribute for a profile, in the response schema's shape.
pub fn subscriptions_attribute(p: &Profile) -> Value {
    let stored: Map<String, Value> = p
        .subscriptions
        .as_deref()
        .and_then(|s| serde_json::from_str(s).ok())
        .unwrap_or_default();
    let get = |k: &str| stored.get(k).cloned().unwrap_or(Value::Null);
    let consent = |v: &Value| {
        v.get("consent")
            .and_then(Value::as_str)
            .unwrap_or("NEVER_SUBSCRIBED")
            .to_string()
    };
    let at = |v: &Value| v.get("at").and_then(Value::as_i64).map(ts);
    let detail = |v: &Value| v.get("detail").cloned().unwrap_or(Value::Null);
    let method = |v: &Value| {
        if v.is_null() {
            Value::Null
        } else {
            json!("API")
        }
    };
    let mut out = Map::new();
    if p.email.is_some() {
        let m = get("email_marketing");
        out.insert(
            "email".into(),
            json!({"marketing": {
                "can_receive_email_marketing": consent(&m) == "SUBSCRIBED",
                "consent": consent(&m),
                "consent_timestamp": at(&m),
                "last_updated": at(&m),
                "method": method(&m),
                "method_detail": detail(&m),
                "custom_method_detail": detail(&m),
                "double_optin": null,
                "suppression": [],
                "list_suppressions": [],
            }}),
        );
    }
    if p.phone_number.is_some() {
        let m = get("sms_marketing");
        let t = get("sms_transactional");
        out.insert(
            "sms".into(),
            json!({
                "marketing": {
                    "can_receive_sms_marketing": consent(&m) == "SUBSCRIBED",
                    "consent": consent(&m),
                    "consent_timestamp": at(&m),
                    "method": method(&m),
                    "method_detail": detail(&m),
                    "last_updated": at(&m),
                },
                "transactional": {
                    "can_receive_sms_transactional": consent(&t) == "SUBSCRIBED",
                    "consent": consent(&t),
                    "consent_timestamp": at(&t),
                    "method": method(&t),
                    "method_detail": detail(&t),
                    "last_updated": at(&t),
                },
            }),
        );
    }
    Value::Object(out)
}

/// A list as a JSON:API resource.
pub fn list_resource(base: &str, id: &str, l: &List) -> Value {
    let rel = |name: &str| {
        json!({"links": {
            "self": format!("{base}/api/lists/{id}/relationships/{name}/"),
            "related": format!("{base}/api/lists/{id}/{name}/"),
        }})
    };
    json!({
        "type": "list",
        "id": id,
        "attributes": {
            "name": l.name,
            "created": ts(l.created),
            "updated": ts(l.updated),
            "opt_in_process": l.opt_in_process,
        },
        "relationships": {"profiles": rel("profiles"), "tags": rel("tags")},
        "links": {"self": format!("{base}/api/lists/{id}/")},
    })
}

/// A segment as a JSON:API resource (`is_processing` from the clock).
pub fn segment_resource(base: &str, id: &str, s: &Segment) -> Value {
    let rel = |name: &str| {
        json!({"links": {
            "self": format!("{base}/api/segments/{id}/relationships/{name}/"),
            "related": format!("{base}/api/segments/{id}/{name}/"),
        }})
    };
    json!({
        "type": "segment",
        "id": id,
        "attributes": {
            "name": s.name,
            "definition": s.definition,
            "created": ts(s.created),
            "updated": ts(s.updated),
            "is_active": s.is_active,
            "is_processing": now_millis() < s.processing_until,
            "is_starred": s.is_starred,
        },
        "relationships": {"profiles": rel("profiles"), "tags": rel("tags")},
        "links": {"self": format!("{base}/api/segments/{id}/")},
    })
}

/// A tag as a JSON:API resource, with its group as linkage.
pub fn tag_resource(base: &str, id: &str, t: &Tag) -> Value {
    let rel = |name: &str| {
        json!({
            "self": format!("{base}/api/tags/{id}/relationships/{name}/"),
            "related": format!("{base}/api/tags/{id}/{name}/"),
        })
    };
    json!({
        "type": "tag",
        "id": id,
        "attributes": {"name": t.name},
        "relationships": {
            "tag-group": {"data": {"type": "tag-group", "id": t.group}, "links": rel("tag-group")},
            "lists": {"links": rel("lists")},
            "segments": {"links": rel("segments")},
        },
        "links": {"self": format!("{base}/api/tags/{id}/")},
    })
}

/// A tag group as a JSON:API resource.
pub fn tag_group_resource(base: &str, id: &str, g: &TagGroup) -> Value {
    json!({
        "type": "tag-group",
        "id": id,
        "attributes": {"name": g.name, "exclusive": g.exclusive, "default": g.default},
        "relationships": {"tags": {"links": {
            "self": format!("{base}/api/tag-groups/{id}/relationships/tags/"),
            "related": format!("{base}/api/tag-groups/{id}/tags/"),
        }}},
        "links": {"self": format!("{base}/api/tag-groups/{id}/")},
    })
}

/// The ids of the tags on a list (`kind` "list") or a segment, in id order.
pub fn tags_on(store: &Store, kind: &str, rid: &str) -> Vec<String> {
    store
        .tags
        .iter()
        .filter(|(_, t)| {
            if kind == "list" {
                t.lists.contains(rid)
            } else {
                t.segments.contains(rid)
            }
        })
        .map(|(id, _)| id.clone())
        .collect()
}

/// For `include=tags` on lists and segments: fills `relationships.tags.data` of `r` and adds
/// the tags to `included` (each once).
pub fn attach_tags(
    store: &Store,
    base: &str,
    kind: &str,
    rid: &str,
    r: &mut Value,
    included: &mut Vec<Value>,
) {
    let ids = tags_on(store, kind, rid);
    r["relationships"]["tags"]["data"] = ids
        .iter()
        .map(|i| json!({"type": "tag", "id": i}))
        .collect();
    for id in ids {
        if included.iter().any(|v| v["id"] == id.as_str()) {
            continue;
        }
        if let Some(t) = store.tags.get(&id) {
            included.push(tag_resource(base, &id, t));
        }
    }
}

/// For `include=tag-group` on tags: adds the tag's group to `included` (once).
pub fn attach_group(store: &Store, base: &str, t: &Tag, included: &mut Vec<Value>) {
    if included.iter().any(|v| v["id"] == t.group.as_str()) {
        return;
    }
    if let Some(g) = store.tag_groups.get(&t.group) {
        included.push(tag_group_resource(base, &t.group, g));
    }
}
