//! Checks JSON bodies against Klaviyo's OpenAPI spec (`../shared/klaviyo/openapi.json`).
//! In: an HTTP method, a concrete request path (or a template), a status and a body; out:
//! `Ok(())` or a message listing every schema violation. Reads the spec once per test binary.
//!
//! OpenAPI 3.0 is not quite JSON Schema: `nullable: true` is rewritten into a `null` type
//! alternative before compiling, and `$ref`s resolve inside the spec's `components`. Klaviyo's
//! spec uses `oneOf` where it means `anyOf` (e.g. a numeric filter value is
//! `oneOf: [integer, number]`, which no integer could satisfy), so `oneOf` is read as `anyOf`.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};

use serde_json::{Map, Value, json};

struct Spec {
    raw: Value,
    /// `components` with OpenAPI-only constructs rewritten to JSON Schema.
    components: Value,
    /// Path templates, split into segments.
    templates: Vec<(String, Vec<String>)>,
}

fn spec_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/klaviyo/openapi.json")
}

fn spec() -> &'static Spec {
    static SPEC: OnceLock<Spec> = OnceLock::new();
    SPEC.get_or_init(|| {
        let path = spec_path();
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| {
            panic!(
                "Klaviyo's OpenAPI spec is required at {}: {e}",
                path.display()
            )
        });
        let raw: Value = serde_json::from_str(&text).expect("openapi.json is valid JSON");
        let mut components = raw["components"].clone();
        rewrite_nullable(&mut components);
        let templates = raw["paths"]
            .as_object()
            .expect("spec has paths")
            .keys()
            .map(|k| (k.clone(), k.split('/').map(str::to_string).collect()))
            .collect();
        Spec {
            raw,
            components,
            templates,
        }
    })
}

/// `nullable: true` → also accept `null`; `oneOf` → `anyOf`.
fn rewrite_nullable(v: &mut Value) {
    match v {
        Value::Array(a) => a.iter_mut().for_each(rewrite_nullable),
        Value::Object(m) => {
            m.values_mut().for_each(rewrite_nullable);
            if !m.contains_key("anyOf")
                && let Some(one) = m.remove("oneOf")
            {
                m.insert("anyOf".into(), one);
            }
            if m.remove("nullable") == Some(Value::Bool(true)) {
                if let Some(r) = m.remove("$ref") {
                    m.insert("anyOf".into(), json!([{"$ref": r}, {"type": "null"}]));
                } else if let Some(t) = m.get("type").cloned() {
                    if let Value::String(t) = t {
                        m.insert("type".into(), json!([t, "null"]));
                    }
                    if let Some(Value::Array(e)) = m.get_mut("enum") {
                        e.push(Value::Null);
                    }
                } else {
                    let inner = Value::Object(std::mem::take(m));
                    m.insert("anyOf".into(), json!([inner, {"type": "null"}]));
                }
            }
        }
        _ => {}
    }
}

/// The spec's template for a concrete path such as `/api/profiles/01H…/` or a full URL
/// (`http://127.0.0.1:4010/api/lists?page[size]=10`); literal segments win over `{…}`.
pub fn template_for(path: &str) -> Option<String> {
    let path = match path.split_once("://") {
        Some((_, rest)) => rest.find('/').map_or("/", |i| &rest[i..]),
        None => path,
    };
    let path = path.split('?').next().unwrap_or(path);
    let path = if path.len() > 1 {
        path.trim_end_matches('/')
    } else {
        path
    };
    let parts: Vec<&str> = path.split('/').collect();
    let mut best: Option<(usize, &String)> = None;
    for (t, segs) in &spec().templates {
        if segs.len() != parts.len() {
            continue;
        }
        let mut params = 0;
        let ok = segs.iter().zip(&parts).all(|(s, p)| {
            if s.starts_with('{') {
                params += 1;
                !p.is_empty()
            } else {
                s == p
            }
        });
        if ok && best.is_none_or(|(n, _)| params < n) {
            best = Some((params, t));
        }
    }
    best.map(|(_, t)| t.clone())
}

fn resolve<'a>(raw: &'a Value, v: &'a Value) -> &'a Value {
    match v.get("$ref").and_then(Value::as_str) {
        Some(r) => {
            let ptr = r.trim_start_matches('#');
            raw.pointer(ptr).unwrap_or(&Value::Null)
        }
        None => v,
    }
}

fn operation(method: &str, template: &str) -> Result<&'static Value, String> {
    let s = spec();
    s.raw["paths"]
        .get(template)
        .and_then(|p| p.get(method.to_ascii_lowercase()))
        .ok_or_else(|| format!("the spec has no operation {method} {template}"))
}

/// The schema for a response status (exact code, then `4XX`/`5XX`, then `default`).
fn response_schema(method: &str, template: &str, status: u16) -> Result<Option<Value>, String> {
    let s = spec();
    let op = operation(method, template)?;
    let responses = &op["responses"];
    let class = format!("{}XX", status / 100);
    let resp = [status.to_string(), class, "default".to_string()]
        .iter()
        .find_map(|k| responses.get(k))
        .ok_or_else(|| format!("{method} {template}: the spec lists no response {status}"))?;
    let resp = resolve(&s.raw, resp);
    Ok(resp
        .get("content")
        .and_then(|c| {
            c.get("application/vnd.api+json")
                .or_else(|| c.get("application/json"))
        })
        .and_then(|c| c.get("schema"))
        .cloned())
}

fn request_schema(method: &str, template: &str) -> Result<Option<Value>, String> {
    let s = spec();
    let op = operation(method, template)?;
    let Some(body) = op.get("requestBody") else {
        return Ok(None);
    };
    let body = resolve(&s.raw, body);
    Ok(body
        .get("content")
        .and_then(|c| {
            c.get("application/vnd.api+json")
                .or_else(|| c.get("application/json"))
        })
        .and_then(|c| c.get("schema"))
        .cloned())
}

type Compiled = Arc<jsonschema::Validator>;

fn compile(key: String, schema: Value) -> Result<Compiled, String> {
    static CACHE: OnceLock<Mutex<HashMap<String, Compiled>>> = OnceLock::new();
    let cache = CACHE.get_or_init(|| Mutex::new(HashMap::new()));
    if let Some(v) = cache.lock().unwrap_or_else(|e| e.into_inner()).get(&key) {
        return Ok(v.clone());
    }
    let mut schema = schema;
    rewrite_nullable(&mut schema);
    let mut root = Map::new();
    root.insert("allOf".into(), json!([schema]));
    root.insert("components".into(), spec().components.clone());
    let v = jsonschema::draft4::options()
        .should_validate_formats(true)
        .build(&Value::Object(root))
        .map_err(|e| format!("cannot compile schema for {key}: {e}"))?;
    let v = Arc::new(v);
    cache
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(key, v.clone());
    Ok(v)
}

fn run(v: &jsonschema::Validator, body: &Value, what: &str) -> Result<(), String> {
    let errors: Vec<String> = v
        .iter_errors(body)
        .map(|e| format!("  at {}: {e}", e.instance_path()))
        .collect();
    if errors.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "{what} violates openapi.json:\n{}\nbody: {}",
            errors.join("\n"),
            serde_json::to_string(body).unwrap_or_default()
        ))
    }
}

/// Checks a response body. `path` may be concrete (`/api/lists/Ab12Cd/`) or a template.
/// A status with no body in the spec (204, bodiless 202) requires an empty body (`None`).
pub fn check_response(
    method: &str,
    path: &str,
    status: u16,
    body: Option<&Value>,
) -> Result<(), String> {
    let template = template_for(path).ok_or_else(|| format!("no spec path matches {path}"))?;
    let schema = response_schema(method, &template, status)?;
    let what = format!("response {status} of {method} {template}");
    match (schema, body) {
        (None, None) => Ok(()),
        (None, Some(b)) => Err(format!("{what} must have no body, got {b}")),
        (Some(_), None) => Err(format!("{what} must have a body")),
        (Some(s), Some(b)) => {
            let v = compile(format!("res {method} {template} {status}"), s)?;
            run(&v, b, &what)
        }
    }
}

/// Checks a request body against the operation's request schema.
pub fn check_request(method: &str, path: &str, body: &Value) -> Result<(), String> {
    let template = template_for(path).ok_or_else(|| format!("no spec path matches {path}"))?;
    let what = format!("request body of {method} {template}");
    let schema = request_schema(method, &template)?
        .ok_or_else(|| format!("{method} {template} takes no request body"))?;
    let v = compile(format!("req {method} {template}"), schema)?;
    run(&v, body, &what)
}
