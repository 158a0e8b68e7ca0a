//! Segment membership: which profiles a segment definition matches, and each segment's
//! member cache (id → joined time), recomputed after a write. In: the store; out: the
//! members, cached on the segment. No I/O.
//!
//! Evaluation: condition groups are ANDed, the conditions inside a group ORed. Emulated
//! condition types: `profile-property` (string, numeric, boolean, list, existence and static
//! date filters) and `profile-group-membership` (lists). Every other valid condition type is
//! accepted and stored but matches nobody, since the sandbox has no events, consent history or
//! predictions to evaluate it against.

use std::collections::BTreeMap;

use serde_json::{Map, Value};
use ulid::Ulid;

use super::http::{now_millis, ts};
use super::store::{Profile, Store};

/// A profile attribute named the way segment conditions name it.
fn property(p: &Profile, doc: &Map<String, Value>, name: &str) -> Option<Value> {
    let s = |v: &Option<Box<str>>| v.as_deref().map(|s| Value::String(s.into()));
    let inner = |prefix: &str| -> Option<String> {
        let rest = name.strip_prefix(prefix)?;
        let key = rest
            .strip_prefix("['")
            .and_then(|r| r.strip_suffix("']"))
            .or_else(|| rest.strip_prefix("[\"").and_then(|r| r.strip_suffix("\"]")))
            .or_else(|| rest.strip_prefix('.'))?;
        Some(key.to_string())
    };
    if let Some(k) = inner("properties") {
        return doc.get("properties").and_then(|p| p.get(&k)).cloned();
    }
    if let Some(k) = inner("location") {
        return doc.get("location").and_then(|p| p.get(&k)).cloned();
    }
    match name {
        "email" => s(&p.email),
        "phone_number" => s(&p.phone_number),
        "external_id" => s(&p.external_id),
        "created" => Some(Value::String(ts(p.created))),
        "updated" => Some(Value::String(ts(p.updated))),
        other => doc.get(other).cloned(),
    }
    .filter(|v| !v.is_null())
}

fn as_f64(v: &Value) -> Option<f64> {
    match v {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

fn as_time(v: &Value) -> Option<i64> {
    let s = v.as_str()?;
    chrono::DateTime::parse_from_rfc3339(s)
        .map(|t| t.timestamp_millis())
        .ok()
        .or_else(|| {
            chrono::NaiveDate::parse_from_str(s, "%Y-%m-%d")
                .ok()
                .and_then(|d| d.and_hms_opt(0, 0, 0))
                .map(|d| d.and_utc().timestamp_millis())
        })
}

fn unit_ms(unit: Option<&str>) -> i64 {
    match unit {
        Some("hour") => 3_600_000,
        Some("week") => 7 * 86_400_000,
        _ => 86_400_000,
    }
}

/// One `profile-property` filter against the property's value (`None` when unset).
fn filter_matches(f: &Value, v: Option<&Value>) -> bool {
    let ty = f.get("type").and_then(Value::as_str).unwrap_or("");
    let op = f.get("operator").and_then(Value::as_str).unwrap_or("");
    let want = f.get("value");
    if ty == "existence" {
        return match op {
            "is-set" => v.is_some(),
            "not-set" => v.is_none(),
            _ => false,
        };
    }
    let Some(v) = v else {
        return false;
    };
    match ty {
        "string" => {
            let Some(have) = v
                .as_str()
                .map(str::to_string)
                .or_else(|| as_f64(v).map(|n| n.to_string()))
            else {
                return false;
            };
            let w = want.and_then(Value::as_str).unwrap_or("");
            let list = || -> Vec<&str> {
                want.and_then(Value::as_array)
                    .map(|a| a.iter().filter_map(Value::as_str).collect())
                    .unwrap_or_default()
            };
            match op {
                "equals" => have == w,
                "not-equals" => have != w,
                "contains" => have.contains(w),
                "not-contains" => !have.contains(w),
                "starts-with" => have.starts_with(w),
                "not-starts-with" => !have.starts_with(w),
                "ends-with" => have.ends_with(w),
                "not-ends-with" => !have.ends_with(w),
                "in" => list().contains(&have.as_str()),
                "not-in" => !list().contains(&have.as_str()),
                _ => false,
            }
        }
        "numeric" => {
            let (Some(have), Some(w)) = (as_f64(v), want.and_then(as_f64)) else {
                return false;
            };
            match op {
                "equals" => have == w,
                "not-equals" => have != w,
                "greater-than" => have > w,
                "greater-than-or-equal" => have >= w,
                "less-than" => have < w,
                "less-than-or-equal" => have <= w,
                _ => false,
            }
        }
        "boolean" => {
            let have = match v {
                Value::Bool(b) => Some(*b),
                Value::String(s) if s.eq_ignore_ascii_case("true") => Some(true),
                Value::String(s) if s.eq_ignore_ascii_case("false") => Some(false),
                _ => None,
            };
            op == "equals" && have.is_some() && have == want.and_then(Value::as_bool)
        }
        "list" => {
            let items: Vec<Value> = match v {
                Value::Array(a) => a.clone(),
                other => vec![other.clone()],
            };
            let n = items.len() as i64;
            let k = want.and_then(Value::as_i64).unwrap_or(-1);
            let contains = |w: &Value| items.iter().any(|i| i == w);
            match op {
                "contains" => want.is_some_and(contains),
                "not-contains" => !want.is_some_and(contains),
                "length-equals" => n == k,
                "length-greater-than" => n > k,
                "length-greater-than-or-equal" => n >= k,
                "length-less-than" => n < k,
                "length-less-than-or-equal" => n <= k,
                _ => false,
            }
        }
        "date" => {
            let Some(have) = as_time(v) else {
                return false;
            };
            let at = |k: &str| f.get(k).and_then(as_time);
            let now = now_millis();
            let span = || {
                f.get("quantity").and_then(Value::as_i64).unwrap_or(0)
                    * unit_ms(f.get("unit").and_then(Value::as_str))
            };
            match op {
                "after" => at("date").is_some_and(|d| have > d),
                "before" => at("date").is_some_and(|d| have < d),
                "between-static" => {
                    matches!((at("start"), at("end")), (Some(s), Some(e)) if have >= s && have <= e)
                }
                "in-the-last" => have <= now && have >= now - span(),
                "in-the-next" => have >= now && have <= now + span(),
                "at-least" => have <= now - span(),
                _ => false,
            }
        }
        _ => false,
    }
}

fn condition_matches(store: &Store, p: &Profile, doc: &Map<String, Value>, c: &Value) -> bool {
    match c.get("type").and_then(Value::as_str) {
        Some("profile-property") => {
            let name = c.get("property").and_then(Value::as_str).unwrap_or("");
            let v = property(p, doc, name);
            c.get("filter")
                .is_some_and(|f| filter_matches(f, v.as_ref()))
        }
        Some("profile-group-membership") => {
            let is_member = c.get("is_member").and_then(Value::as_bool).unwrap_or(true);
            let in_any = c
                .get("group_ids")
                .and_then(Value::as_array)
                .is_some_and(|ids| {
                    ids.iter().filter_map(Value::as_str).any(|g| {
                        store
                            .lists
                            .get(g)
                            .is_some_and(|l| l.members.contains_key(&p.id))
                    })
                });
            in_any == is_member
        }
        _ => false,
    }
}

/// Whether a profile is in a segment with this definition.
pub fn evaluate(store: &Store, p: &Profile, def: &Value) -> bool {
    let Some(groups) = def.get("condition_groups").and_then(Value::as_array) else {
        return false;
    };
    let doc = p.doc();
    groups.iter().all(|g| {
        g.get("conditions")
            .and_then(Value::as_array)
            .is_some_and(|cs| cs.iter().any(|c| condition_matches(store, p, &doc, c)))
    })
}

/// Makes sure the segment's member cache is current; false when there is no such segment.
/// Membership is recomputed only after a write, so relative date filters (`in-the-last`)
/// are evaluated as of the last change.
pub fn refresh_members(store: &mut Store, id: &str) -> bool {
    let version = store.version;
    let Some(seg) = store.segments.get(id) else {
        return false;
    };
    if seg.members.as_ref().is_some_and(|(v, _)| *v == version) {
        return true;
    }
    let def = seg.definition.clone();
    let matching: Vec<Ulid> = store
        .profiles
        .values()
        .filter(|p| evaluate(store, p, &def))
        .map(|p| p.id)
        .collect();
    let now = now_millis();
    let Some(seg) = store.segments.get_mut(id) else {
        return false;
    };
    let before = seg.members.take().map(|(_, m)| m).unwrap_or_default();
    let members = matching
        .into_iter()
        .map(|u| (u, *before.get(&u).unwrap_or(&now)))
        .collect();
    seg.members = Some((version, members));
    true
}

/// Current members (id → joined time).
pub fn current_members(store: &mut Store, id: &str) -> Option<BTreeMap<Ulid, i64>> {
    if !refresh_members(store, id) {
        return None;
    }
    store
        .segments
        .get(id)
        .and_then(|s| s.members.as_ref())
        .map(|(_, m)| m.clone())
}
