//! HTTP as Klaviyo speaks it: the request a handler sees (`Req`), the reply it returns
//! (`Reply`), JSON:API error objects (`ApiError`), the header checks every `/api` call passes
//! (key, revision, content type) and the query helpers (paging cursors, sparse fieldsets).
//! Pure functions over already-read requests; no I/O here.

use std::fmt::Write as _;

use hyper::{HeaderMap, Method, StatusCode};
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use serde_json::{Map, Value, json};

/// The revision whose shapes the sandbox answers with, whatever well-formed revision is asked.
pub const REVISION: &str = "2026-07-15";
/// The media type of every JSON:API body.
pub const JSONAPI: &str = "application/vnd.api+json";
/// Largest request body Klaviyo accepts on `/api` (5 MB, decompressed).
pub const MAX_BODY: usize = 5 * 1024 * 1024;

/// A JSON:API error, as Klaviyo returns it in `{"errors":[...]}`. Boxed so the many
/// `Result<_, ApiError>`s stay small.
#[derive(Debug, Clone)]
pub struct ApiError(Box<ErrorBody>);

#[derive(Debug, Clone)]
pub struct ErrorBody {
    pub status: StatusCode,
    pub code: String,
    pub title: String,
    pub detail: String,
    pub pointer: Option<String>,
    pub parameter: Option<String>,
    pub meta: Map<String, Value>,
}

impl std::ops::Deref for ApiError {
    type Target = ErrorBody;
    fn deref(&self) -> &ErrorBody {
        &self.0
    }
}

impl std::ops::DerefMut for ApiError {
    fn deref_mut(&mut self) -> &mut ErrorBody {
        &mut self.0
    }
}

impl ApiError {
    pub fn new(status: StatusCode, code: &str, title: &str, detail: impl Into<String>) -> Self {
        ApiError(Box::new(ErrorBody {
            status,
            code: code.to_string(),
            title: title.to_string(),
            detail: detail.into(),
            pointer: None,
            parameter: None,
            meta: Map::new(),
        }))
    }

    /// 400 `invalid`: the most common Klaviyo error for a bad body or parameter.
    pub fn invalid(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid", "Invalid input.", detail)
    }

    pub fn not_found(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", "Not found.", detail)
    }

    pub fn conflict(code: &str, detail: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, code, "Conflict.", detail)
    }

    pub fn pointer(mut self, pointer: impl Into<String>) -> Self {
        self.pointer = Some(pointer.into());
        self
    }

    pub fn parameter(mut self, parameter: impl Into<String>) -> Self {
        self.parameter = Some(parameter.into());
        self
    }

    pub fn meta(mut self, key: &str, value: Value) -> Self {
        self.meta.insert(key.to_string(), value);
        self
    }

    /// The error object alone (also used for bulk-import errors).
    pub fn object(&self) -> Value {
        let mut source = Map::new();
        if let Some(p) = &self.pointer {
            source.insert("pointer".into(), Value::String(p.clone()));
        }
        if let Some(p) = &self.parameter {
            source.insert("parameter".into(), Value::String(p.clone()));
        }
        json!({
            "id": uuid::Uuid::new_v4().to_string(),
            "status": self.status.as_u16(),
            "code": self.code,
            "title": self.title,
            "detail": self.detail,
            "source": source,
            "meta": self.meta,
        })
    }

    pub fn body(&self) -> Value {
        json!({ "errors": [self.object()] })
    }
}

/// What a handler answers: a status, an optional JSON:API body and extra headers.
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub body: Option<Value>,
}

impl Reply {
    pub fn ok(body: Value) -> Self {
        Reply {
            status: StatusCode::OK,
            body: Some(body),
        }
    }
    pub fn created(body: Value) -> Self {
        Reply {
            status: StatusCode::CREATED,
            body: Some(body),
        }
    }
    pub fn accepted(body: Option<Value>) -> Self {
        Reply {
            status: StatusCode::ACCEPTED,
            body,
        }
    }
    pub fn no_content() -> Self {
        Reply {
            status: StatusCode::NO_CONTENT,
            body: None,
        }
    }
}

pub type ApiResult = Result<Reply, ApiError>;

/// A request after routing: path parameters filled in, query decoded, body read.
#[derive(Debug)]
pub struct Req {
    pub method: Method,
    /// The path as requested, without a trailing slash.
    pub path: String,
    pub params: Vec<String>,
    pub query: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// `http://127.0.0.1:PORT`, used to build absolute links as Klaviyo does.
    pub base: String,
}

/// Characters kept verbatim in query values of links we build.
const QUERY_VALUE: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

impl Req {
    pub fn param(&self, i: usize) -> &str {
        self.params.get(i).map(String::as_str).unwrap_or("")
    }

    /// A query parameter given once; repeating one is a 400 as on Klaviyo.
    pub fn q(&self, name: &str) -> Result<Option<&str>, ApiError> {
        let mut found = None;
        for (k, v) in &self.query {
            if k == name {
                if found.is_some() {
                    return Err(ApiError::invalid(format!(
                        "The query parameter '{name}' may only be given once."
                    ))
                    .parameter(name));
                }
                found = Some(v.as_str());
            }
        }
        Ok(found)
    }

    /// Rejects query parameters this operation does not know (Klaviyo answers 400).
    pub fn allow_params(&self, allowed: &[&str]) -> Result<(), ApiError> {
        for (k, _) in &self.query {
            let known = allowed.iter().any(|a| {
                if let Some(prefix) = a.strip_suffix("[*]") {
                    k.starts_with(prefix) && k.ends_with(']')
                } else {
                    a == k
                }
            });
            if !known {
                return Err(
                    ApiError::invalid(format!("'{k}' is not a valid query parameter."))
                        .parameter(k),
                );
            }
        }
        Ok(())
    }

    /// Parses the body as JSON; anything else is Klaviyo's 400 "Malformed JSON".
    pub fn json(&self) -> Result<Value, ApiError> {
        if self.body.is_empty() {
            return Err(ApiError::invalid("A request body is required.").pointer("/data"));
        }
        serde_json::from_slice(&self.body).map_err(|e| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "parse_error",
                "Malformed request body.",
                format!("The request body is not valid JSON: {e}."),
            )
        })
    }

    /// `page[size]` within `1..=max`, `default` when absent.
    pub fn page_size(&self, default: usize, max: usize) -> Result<usize, ApiError> {
        match self.q("page[size]")? {
            None => Ok(default),
            Some(s) => match s.parse::<usize>() {
                Ok(n) if (1..=max).contains(&n) => Ok(n),
                _ => Err(ApiError::invalid(format!(
                    "page[size] must be an integer between 1 and {max}."
                ))
                .parameter("page[size]")),
            },
        }
    }

    /// The decoded `page[cursor]`: the sort key of the last item of the previous page.
    pub fn cursor(&self) -> Result<Option<String>, ApiError> {
        match self.q("page[cursor]")? {
            None => Ok(None),
            Some(c) => decode_cursor(c)
                .map(Some)
                .ok_or_else(|| ApiError::invalid("Invalid page cursor.").parameter("page[cursor]")),
        }
    }

    /// `fields[TYPE]` as a list of attribute names.
    pub fn fields(&self, ty: &str) -> Result<Option<Vec<String>>, ApiError> {
        Ok(self.q(&format!("fields[{ty}]"))?.map(|s| {
            s.split(',')
                .map(|f| f.trim().to_string())
                .filter(|f| !f.is_empty())
                .collect()
        }))
    }

    /// `sort=[-]field` checked against the fields the operation sorts by: (field, descending).
    pub fn sort(&self, allowed: &[&str]) -> Result<Option<(String, bool)>, ApiError> {
        let Some(s) = self.q("sort")? else {
            return Ok(None);
        };
        let (field, desc) = match s.strip_prefix('-') {
            Some(f) => (f, true),
            None => (s, false),
        };
        if !allowed.contains(&field) {
            return Err(ApiError::invalid(format!(
                "'{s}' is not a valid sort field for this resource."
            ))
            .parameter("sort"));
        }
        Ok(Some((field.to_string(), desc)))
    }

    /// One page of an already filtered and sorted collection; the cursor is an offset.
    pub fn offset_page<T>(
        &self,
        items: Vec<T>,
        size: usize,
    ) -> Result<(Vec<T>, Option<String>), ApiError> {
        let start = match self.cursor()? {
            None => 0,
            Some(c) => c
                .strip_prefix('o')
                .and_then(|n| n.parse::<usize>().ok())
                .ok_or_else(|| {
                    ApiError::invalid("Invalid page cursor.").parameter("page[cursor]")
                })?,
        };
        let total = items.len();
        let page: Vec<T> = items.into_iter().skip(start).take(size).collect();
        let next = (start + size < total).then(|| format!("o{}", start + size));
        Ok((page, next))
    }

    /// Values of `include`, each checked against what the operation allows.
    pub fn includes(&self, allowed: &[&str]) -> Result<Vec<String>, ApiError> {
        let Some(inc) = self.q("include")? else {
            return Ok(vec![]);
        };
        let mut out = Vec::new();
        for i in inc.split(',').map(str::trim) {
            if !allowed.contains(&i) {
                return Err(ApiError::invalid(format!(
                    "'{i}' is not an allowed include parameter for this resource."
                ))
                .parameter("include"));
            }
            out.push(i.to_string());
        }
        Ok(out)
    }

    /// Values of `additional-fields[TYPE]`.
    pub fn additional(&self, ty: &str) -> Result<Vec<String>, ApiError> {
        Ok(self
            .q(&format!("additional-fields[{ty}]"))?
            .map(|s| s.split(',').map(|f| f.trim().to_string()).collect())
            .unwrap_or_default())
    }

    fn link_with(&self, cursor: Option<&str>) -> String {
        let mut url = format!("{}{}", self.base, self.path);
        let mut first = true;
        let mut push = |url: &mut String, k: &str, v: &str| {
            url.push(if first { '?' } else { '&' });
            first = false;
            let _ = write!(
                url,
                "{}={}",
                utf8_percent_encode(k, QUERY_VALUE),
                utf8_percent_encode(v, QUERY_VALUE)
            );
        };
        for (k, v) in &self.query {
            if k != "page[cursor]" {
                push(&mut url, k, v);
            }
        }
        if let Some(c) = cursor {
            push(&mut url, "page[cursor]", &encode_cursor(c));
        }
        url
    }

    pub fn self_link(&self) -> String {
        self.link_with(self.query_cursor_raw().as_deref())
    }

    fn query_cursor_raw(&self) -> Option<String> {
        self.query
            .iter()
            .find(|(k, _)| k == "page[cursor]")
            .and_then(|(_, v)| decode_cursor(v))
    }

    /// Collection links: `self` always, `next` only while more items follow.
    pub fn collection_links(&self, next_key: Option<&str>) -> Value {
        let mut links = Map::new();
        links.insert("self".into(), Value::String(self.self_link()));
        if let Some(k) = next_key {
            links.insert("next".into(), Value::String(self.link_with(Some(k))));
        }
        Value::Object(links)
    }
}

/// Cursors are opaque to clients; hex keeps them URL-safe without another dependency.
pub fn encode_cursor(key: &str) -> String {
    let mut s = String::with_capacity(key.len() * 2 + 2);
    s.push_str("c1");
    for b in key.as_bytes() {
        let _ = write!(s, "{b:02x}");
    }
    s
}

pub fn decode_cursor(c: &str) -> Option<String> {
    let hex = c.strip_prefix("c1")?;
    if hex.len() % 2 != 0 {
        return None;
    }
    let bytes: Option<Vec<u8>> = (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok())
        .collect();
    String::from_utf8(bytes?).ok()
}

/// Checks `Authorization: Klaviyo-API-Key <key>`.
pub fn check_auth(headers: &HeaderMap, key: &str) -> Result<(), ApiError> {
    let unauthorized = |detail: &str| {
        ApiError::new(
            StatusCode::UNAUTHORIZED,
            "not_authenticated",
            "Authentication credentials were not provided.",
            detail,
        )
    };
    let Some(value) = headers.get(hyper::header::AUTHORIZATION) else {
        return Err(unauthorized(
            "Missing `Authorization` header: send `Authorization: Klaviyo-API-Key <private key>`.",
        ));
    };
    let value = value.to_str().unwrap_or("");
    let Some(given) = value.strip_prefix("Klaviyo-API-Key ") else {
        return Err(unauthorized(
            "Authorization header must use the `Klaviyo-API-Key` scheme.",
        ));
    };
    if given.trim() != key {
        let mut e = unauthorized("Incorrect authentication credentials.");
        e.code = "authentication_failed".into();
        e.title = "Incorrect authentication credentials.".into();
        return Err(e);
    }
    Ok(())
}

/// Checks the `revision` header: `YYYY-MM-DD` with an optional `.suffix`, a real date.
pub fn check_revision(headers: &HeaderMap) -> Result<(), ApiError> {
    let Some(value) = headers.get("revision") else {
        return Err(ApiError::invalid(format!(
            "Missing `revision` header, e.g. `revision: {REVISION}`."
        ))
        .parameter("revision"));
    };
    let value = value.to_str().unwrap_or("");
    if !revision_well_formed(value) {
        return Err(ApiError::invalid(format!(
            "Invalid revision '{value}': expected YYYY-MM-DD with an optional .suffix."
        ))
        .parameter("revision"));
    }
    Ok(())
}

pub fn revision_well_formed(value: &str) -> bool {
    let (date, suffix) = match value.split_once('.') {
        Some((d, s)) => (d, Some(s)),
        None => (value, None),
    };
    if let Some(s) = suffix
        && (s.is_empty() || !s.chars().all(|c| c.is_ascii_alphanumeric()))
    {
        return false;
    }
    date.len() == 10 && chrono::NaiveDate::parse_from_str(date, "%Y-%m-%d").is_ok()
}

/// Bodies must be JSON:API or plain JSON (415 otherwise), as Klaviyo accepts both in practice.
pub fn check_content_type(headers: &HeaderMap) -> Result<(), ApiError> {
    let unsupported = |detail: String| {
        ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "Unsupported media type.",
            detail,
        )
    };
    let Some(ct) = headers.get(hyper::header::CONTENT_TYPE) else {
        return Err(unsupported(format!(
            "Missing Content-Type; send `{JSONAPI}`."
        )));
    };
    let ct = ct.to_str().unwrap_or("").to_ascii_lowercase();
    let essence = ct.split(';').next().unwrap_or("").trim();
    if essence != JSONAPI && essence != "application/json" {
        return Err(unsupported(format!(
            "Unsupported media type \"{essence}\" in request; send `{JSONAPI}`."
        )));
    }
    if let Some(enc) = headers.get(hyper::header::CONTENT_ENCODING) {
        let enc = enc.to_str().unwrap_or("");
        if !enc.eq_ignore_ascii_case("identity") {
            return Err(unsupported(format!(
                "Unsupported Content-Encoding \"{enc}\"."
            )));
        }
    }
    Ok(())
}

/// Timestamps in responses look like `2022-11-08T00:00:00+00:00`.
pub fn ts(millis: i64) -> String {
    chrono::DateTime::from_timestamp_millis(millis)
        .unwrap_or_default()
        .format("%Y-%m-%dT%H:%M:%S%.3f+00:00")
        .to_string()
}

pub fn now_millis() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// `data` of a single-resource body, checked to be an object of `ty`.
pub fn data_object<'a>(body: &'a Value, ty: &str) -> Result<&'a Map<String, Value>, ApiError> {
    let data = body
        .get("data")
        .and_then(Value::as_object)
        .ok_or_else(|| ApiError::invalid("`data` must be an object.").pointer("/data"))?;
    match data.get("type").and_then(Value::as_str) {
        Some(t) if t == ty => Ok(data),
        Some(t) => Err(
            ApiError::invalid(format!("Expected resource type '{ty}', got '{t}'."))
                .pointer("/data/type"),
        ),
        None => Err(ApiError::invalid("`data.type` is required.").pointer("/data/type")),
    }
}

/// `data.attributes` (an object; absent counts as empty).
pub fn attributes(data: &Map<String, Value>) -> Result<Map<String, Value>, ApiError> {
    match data.get("attributes") {
        None | Some(Value::Null) => Ok(Map::new()),
        Some(Value::Object(m)) => Ok(m.clone()),
        Some(_) => {
            Err(ApiError::invalid("`attributes` must be an object.").pointer("/data/attributes"))
        }
    }
}

/// A relationship body `{"data":[{"type":ty,"id":..},..]}` as ids, at most `max`.
pub fn linkage_ids(body: &Value, ty: &str, max: usize) -> Result<Vec<String>, ApiError> {
    let items = body
        .get("data")
        .and_then(Value::as_array)
        .ok_or_else(|| ApiError::invalid("`data` must be an array.").pointer("/data"))?;
    if items.len() > max {
        return Err(ApiError::invalid(format!(
            "At most {max} items may be sent in one request; got {}.",
            items.len()
        ))
        .pointer("/data"));
    }
    let mut ids = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        if item.get("type").and_then(Value::as_str) != Some(ty) {
            return Err(ApiError::invalid(format!("Expected resource type '{ty}'."))
                .pointer(format!("/data/{i}/type")));
        }
        let id = item.get("id").and_then(Value::as_str).ok_or_else(|| {
            ApiError::invalid("`id` is required.").pointer(format!("/data/{i}/id"))
        })?;
        ids.push(id.to_string());
    }
    Ok(ids)
}

/// An optional string attribute: absent, explicitly null, or a string (400 for other types).
pub fn opt_str(
    attrs: &Map<String, Value>,
    key: &str,
    prefix: &str,
) -> Result<Option<Option<String>>, ApiError> {
    match attrs.get(key) {
        None => Ok(None),
        Some(Value::Null) => Ok(Some(None)),
        Some(Value::String(s)) => Ok(Some(Some(s.clone()))),
        Some(_) => Err(ApiError::invalid(format!("'{key}' must be a string."))
            .pointer(format!("{prefix}/{key}"))),
    }
}

pub fn opt_bool(
    attrs: &Map<String, Value>,
    key: &str,
    prefix: &str,
) -> Result<Option<bool>, ApiError> {
    match attrs.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(_) => Err(ApiError::invalid(format!("'{key}' must be a boolean."))
            .pointer(format!("{prefix}/{key}"))),
    }
}

/// Keeps only the listed attributes (sparse fieldsets); nested `a.b` keeps `b` inside `a`.
pub fn sparse(attrs: Map<String, Value>, fields: Option<&[String]>) -> Map<String, Value> {
    let Some(fields) = fields else {
        return attrs;
    };
    let mut out = Map::new();
    for f in fields {
        if let Some((outer, inner)) = f.split_once('.') {
            if let Some(Value::Object(o)) = attrs.get(outer) {
                let entry = out
                    .entry(outer.to_string())
                    .or_insert_with(|| Value::Object(Map::new()));
                if let (Value::Object(e), Some(v)) = (entry, o.get(inner)) {
                    e.insert(inner.to_string(), v.clone());
                }
            }
        } else if let Some(v) = attrs.get(f) {
            out.insert(f.clone(), v.clone());
        }
    }
    out
}

/// The "Resource not found" answer for an unknown path.
pub fn unknown_path(path: &str) -> ApiError {
    ApiError::not_found(format!("The path {path} could not be found."))
}

pub fn method_not_allowed(method: &Method) -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "Method not allowed.",
        format!("Method \"{method}\" not allowed."),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sandbox_revision_format() {
        assert!(revision_well_formed("2026-07-15"));
        assert!(revision_well_formed("2024-10-15.pre"));
        assert!(!revision_well_formed("2024-13-15"));
        assert!(!revision_well_formed("latest"));
        assert!(!revision_well_formed("2024-10-15."));
    }

    #[test]
    fn sandbox_cursor_round_trip() {
        let c = encode_cursor("01ABC/é");
        assert_eq!(decode_cursor(&c).as_deref(), Some("01ABC/é"));
        assert_eq!(decode_cursor("zz"), None);
    }
}
