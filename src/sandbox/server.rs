//! The sandbox's HTTP server: accepts connections on a TCP listener, routes each request to
//! the resource handlers and wraps them in Klaviyo's cross-cutting behaviour (auth, revision,
//! content type, body limit, faults, rate limits, request log). Does network I/O.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tokio::net::TcpListener;
use tokio::task::JoinSet;

use super::faults::Fault;
use super::http::{self, ApiError, ApiResult, JSONAPI, MAX_BODY, Reply, Req};
use super::ratelimit::Decision;
use super::shared::{CapturedRequest, Shared};
use super::{bulk, inspect, lists, profiles, segments, subscriptions, tags};

/// Every path template the sandbox answers, with the methods it implements.
pub(crate) const ROUTES: &[(&str, &[&str])] = &[
    ("/api/accounts", &["GET"]),
    ("/api/profiles", &["GET", "POST"]),
    ("/api/profiles/{id}", &["GET", "PATCH"]),
    ("/api/profiles/{id}/lists", &["GET"]),
    ("/api/profiles/{id}/relationships/lists", &["GET"]),
    ("/api/profiles/{id}/segments", &["GET"]),
    ("/api/profiles/{id}/relationships/segments", &["GET"]),
    ("/api/profile-import", &["POST"]),
    ("/api/profile-bulk-import-jobs", &["GET", "POST"]),
    ("/api/profile-bulk-import-jobs/{job_id}", &["GET"]),
    ("/api/profile-bulk-import-jobs/{id}/import-errors", &["GET"]),
    ("/api/profile-bulk-import-jobs/{id}/profiles", &["GET"]),
    (
        "/api/profile-bulk-import-jobs/{id}/relationships/profiles",
        &["GET"],
    ),
    ("/api/profile-bulk-import-jobs/{id}/lists", &["GET"]),
    (
        "/api/profile-bulk-import-jobs/{id}/relationships/lists",
        &["GET"],
    ),
    ("/api/lists", &["GET", "POST"]),
    ("/api/lists/{id}", &["GET", "PATCH", "DELETE"]),
    ("/api/lists/{id}/profiles", &["GET"]),
    (
        "/api/lists/{id}/relationships/profiles",
        &["GET", "POST", "DELETE"],
    ),
    ("/api/lists/{id}/tags", &["GET"]),
    ("/api/lists/{id}/relationships/tags", &["GET"]),
    ("/api/segments", &["GET", "POST"]),
    ("/api/segments/{id}", &["GET", "PATCH", "DELETE"]),
    ("/api/segments/{id}/profiles", &["GET"]),
    ("/api/segments/{id}/relationships/profiles", &["GET"]),
    ("/api/segments/{id}/tags", &["GET"]),
    ("/api/segments/{id}/relationships/tags", &["GET"]),
    ("/api/tags", &["GET", "POST"]),
    ("/api/tags/{id}", &["GET", "PATCH", "DELETE"]),
    ("/api/tags/{id}/tag-group", &["GET"]),
    ("/api/tags/{id}/relationships/tag-group", &["GET"]),
    (
        "/api/tags/{id}/relationships/lists",
        &["GET", "POST", "DELETE"],
    ),
    (
        "/api/tags/{id}/relationships/segments",
        &["GET", "POST", "DELETE"],
    ),
    ("/api/tag-groups", &["GET", "POST"]),
    ("/api/tag-groups/{id}", &["GET", "PATCH", "DELETE"]),
    ("/api/tag-groups/{id}/tags", &["GET"]),
    ("/api/tag-groups/{id}/relationships/tags", &["GET"]),
    ("/api/profile-subscription-bulk-create-jobs", &["POST"]),
    ("/api/profile-subscription-bulk-delete-jobs", &["POST"]),
];

/// Finds the template matching `path` and the values of its `{…}` segments.
pub(crate) fn route(path: &str) -> Option<(&'static str, &'static [&'static str], Vec<String>)> {
    let parts: Vec<&str> = path.split('/').collect();
    'outer: for (template, methods) in ROUTES {
        let tparts: Vec<&str> = template.split('/').collect();
        if tparts.len() != parts.len() {
            continue;
        }
        let mut params = Vec::new();
        for (t, p) in tparts.iter().zip(&parts) {
            if t.starts_with('{') {
                if p.is_empty() {
                    continue 'outer;
                }
                params.push(
                    percent_encoding::percent_decode_str(p)
                        .decode_utf8_lossy()
                        .into_owned(),
                );
            } else if t != p {
                continue 'outer;
            }
        }
        return Some((template, methods, params));
    }
    None
}

fn dispatch(shared: &Arc<Shared>, template: &str, req: &Req) -> ApiResult {
    let m = req.method.as_str();
    match (m, template) {
        ("GET", "/api/accounts") => profiles::get_accounts(shared, req),
        ("GET", "/api/profiles") => profiles::list(shared, req),
        ("POST", "/api/profiles") => profiles::create(shared, req),
        ("GET", "/api/profiles/{id}") => profiles::get(shared, req),
        ("PATCH", "/api/profiles/{id}") => profiles::update(shared, req),
        ("GET", "/api/profiles/{id}/lists") => profiles::groups(shared, req, "list", false),
        ("GET", "/api/profiles/{id}/relationships/lists") => {
            profiles::groups(shared, req, "list", true)
        }
        ("GET", "/api/profiles/{id}/segments") => profiles::groups(shared, req, "segment", false),
        ("GET", "/api/profiles/{id}/relationships/segments") => {
            profiles::groups(shared, req, "segment", true)
        }
        ("POST", "/api/profile-import") => profiles::import(shared, req),
        ("GET", "/api/profile-bulk-import-jobs") => bulk::list(shared, req),
        ("POST", "/api/profile-bulk-import-jobs") => bulk::create(shared, req),
        ("GET", "/api/profile-bulk-import-jobs/{job_id}") => bulk::get(shared, req),
        ("GET", "/api/profile-bulk-import-jobs/{id}/import-errors") => bulk::errors(shared, req),
        ("GET", "/api/profile-bulk-import-jobs/{id}/profiles") => {
            bulk::profiles(shared, req, false)
        }
        ("GET", "/api/profile-bulk-import-jobs/{id}/relationships/profiles") => {
            bulk::profiles(shared, req, true)
        }
        ("GET", "/api/profile-bulk-import-jobs/{id}/lists") => bulk::lists(shared, req, false),
        ("GET", "/api/profile-bulk-import-jobs/{id}/relationships/lists") => {
            bulk::lists(shared, req, true)
        }
        ("GET", "/api/lists") => lists::list(shared, req),
        ("POST", "/api/lists") => lists::create(shared, req),
        ("GET", "/api/lists/{id}") => lists::get(shared, req),
        ("PATCH", "/api/lists/{id}") => lists::update(shared, req),
        ("DELETE", "/api/lists/{id}") => lists::delete(shared, req),
        ("GET", "/api/lists/{id}/profiles") => lists::members(shared, req, false),
        ("GET", "/api/lists/{id}/relationships/profiles") => lists::members(shared, req, true),
        ("POST", "/api/lists/{id}/relationships/profiles") => lists::add(shared, req),
        ("DELETE", "/api/lists/{id}/relationships/profiles") => lists::remove(shared, req),
        ("GET", "/api/lists/{id}/tags") => tags::for_resource(shared, req, "list", false),
        ("GET", "/api/lists/{id}/relationships/tags") => {
            tags::for_resource(shared, req, "list", true)
        }
        ("GET", "/api/segments") => segments::list(shared, req),
        ("POST", "/api/segments") => segments::create(shared, req),
        ("GET", "/api/segments/{id}") => segments::get(shared, req),
        ("PATCH", "/api/segments/{id}") => segments::update(shared, req),
        ("DELETE", "/api/segments/{id}") => segments::delete(shared, req),
        ("GET", "/api/segments/{id}/profiles") => segments::members(shared, req, false),
        ("GET", "/api/segments/{id}/relationships/profiles") => {
            segments::members(shared, req, true)
        }
        ("GET", "/api/segments/{id}/tags") => tags::for_resource(shared, req, "segment", false),
        ("GET", "/api/segments/{id}/relationships/tags") => {
            tags::for_resource(shared, req, "segment", true)
        }
        ("GET", "/api/tags") => tags::list(shared, req),
        ("POST", "/api/tags") => tags::create(shared, req),
        ("GET", "/api/tags/{id}") => tags::get(shared, req),
        ("PATCH", "/api/tags/{id}") => tags::update(shared, req),
        ("DELETE", "/api/tags/{id}") => tags::delete(shared, req),
        ("GET", "/api/tags/{id}/tag-group") => tags::group_of(shared, req, false),
        ("GET", "/api/tags/{id}/relationships/tag-group") => tags::group_of(shared, req, true),
        ("GET", "/api/tags/{id}/relationships/lists") => tags::related(shared, req, "list"),
        ("POST", "/api/tags/{id}/relationships/lists") => tags::relate(shared, req, "list", true),
        ("DELETE", "/api/tags/{id}/relationships/lists") => {
            tags::relate(shared, req, "list", false)
        }
        ("GET", "/api/tags/{id}/relationships/segments") => tags::related(shared, req, "segment"),
        ("POST", "/api/tags/{id}/relationships/segments") => {
            tags::relate(shared, req, "segment", true)
        }
        ("DELETE", "/api/tags/{id}/relationships/segments") => {
            tags::relate(shared, req, "segment", false)
        }
        ("GET", "/api/tag-groups") => tags::list_groups(shared, req),
        ("POST", "/api/tag-groups") => tags::create_group(shared, req),
        ("GET", "/api/tag-groups/{id}") => tags::get_group(shared, req),
        ("PATCH", "/api/tag-groups/{id}") => tags::update_group(shared, req),
        ("DELETE", "/api/tag-groups/{id}") => tags::delete_group(shared, req),
        ("GET", "/api/tag-groups/{id}/tags") => tags::group_tags(shared, req, false),
        ("GET", "/api/tag-groups/{id}/relationships/tags") => tags::group_tags(shared, req, true),
        ("POST", "/api/profile-subscription-bulk-create-jobs") => {
            subscriptions::subscribe(shared, req)
        }
        ("POST", "/api/profile-subscription-bulk-delete-jobs") => {
            subscriptions::unsubscribe(shared, req)
        }
        _ => Err(http::method_not_allowed(&req.method)),
    }
}

/// Marker error: hyper closes the connection without answering (the `drop` fault).
#[derive(Debug)]
pub(crate) struct DropConnection;

impl std::fmt::Display for DropConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("connection dropped by fault injection")
    }
}
impl std::error::Error for DropConnection {}

fn json_response(status: StatusCode, body: Option<&Value>, content_type: &str) -> Response<Body> {
    let mut b = Response::builder().status(status);
    let body = match body {
        Some(v) => {
            b = b.header(hyper::header::CONTENT_TYPE, content_type);
            Body::from(serde_json::to_vec(v).unwrap_or_default())
        }
        None => Body::empty(),
    };
    b.body(body)
        .unwrap_or_else(|_| Response::new(Body::empty()))
}

fn error_response(e: &ApiError) -> Response<Body> {
    json_response(e.status, Some(&e.body()), JSONAPI)
}

/// One request, start to finish. Errors only to drop the connection.
pub(crate) async fn handle(
    shared: Arc<Shared>,
    req: Request<Incoming>,
) -> Result<Response<Body>, DropConnection> {
    let method = req.method().clone();
    let uri = req.uri().to_string();
    let raw_path = req.uri().path().to_string();
    let path = if raw_path.len() > 1 {
        raw_path.trim_end_matches('/').to_string()
    } else {
        raw_path.clone()
    };

    if path == "/_sandbox" || path.starts_with("/_sandbox/") {
        let query = parse_query(req.uri().query());
        let body = match read_body(req).await {
            Ok(b) => b,
            Err(e) => return Ok(error_response(&e)),
        };
        return Ok(inspect::handle(&shared, &method, &path, &query, &body));
    }

    let routed = route(&path);
    let endpoint = match &routed {
        Some((t, _, _)) => format!("{method} {t}"),
        None => format!("{method} (unknown)"),
    };
    let result = process(&shared, req, method, path, routed).await;
    let (status, resp) = match result {
        Outcome::Reply(r) => (r.status().as_u16(), Ok(r)),
        Outcome::Drop => (0, Err(DropConnection)),
    };
    shared.stats().record(&endpoint, &uri, status);
    resp
}

enum Outcome {
    Reply(Response<Body>),
    Drop,
}

type Routed = Option<(&'static str, &'static [&'static str], Vec<String>)>;

async fn process(
    shared: &Arc<Shared>,
    req: Request<Incoming>,
    method: Method,
    path: String,
    routed: Routed,
) -> Outcome {
    let headers = req.headers().clone();
    let Some((template, methods, params)) = routed else {
        return Outcome::Reply(error_response(&http::unknown_path(&path)));
    };
    if !methods.contains(&method.as_str()) {
        return Outcome::Reply(error_response(&http::method_not_allowed(&method)));
    }
    if let Err(e) = http::check_auth(&headers, &shared.api_key) {
        return Outcome::Reply(error_response(&e));
    }
    if let Err(e) = http::check_revision(&headers) {
        return Outcome::Reply(error_response(&e));
    }

    let fault = shared.faults().request_fault();
    match fault {
        Fault::None => {}
        Fault::TooMany => {
            return Outcome::Reply(too_many(1));
        }
        Fault::Server(code) => {
            let status = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            let e = ApiError::new(
                status,
                "error",
                "A server error occurred.",
                "Injected by the sandbox's fault settings.",
            );
            return Outcome::Reply(error_response(&e));
        }
        Fault::Drop => return Outcome::Drop,
        Fault::Slow(d) => tokio::time::sleep(d).await,
    }

    let query = parse_query(req.uri().query());
    let limit_headers = match shared.limiter().check(method.as_str(), template, &query) {
        Decision::Unlimited => None,
        Decision::Allowed {
            limit,
            remaining,
            reset,
        } => Some((limit, remaining, reset)),
        Decision::Limited { retry_after } => return Outcome::Reply(too_many(retry_after)),
    };

    let has_body = method == Method::POST || method == Method::PATCH || {
        method == Method::DELETE
            && headers
                .get(hyper::header::CONTENT_LENGTH)
                .is_some_and(|v| v.as_bytes() != b"0")
    };
    if has_body && let Err(e) = http::check_content_type(&headers) {
        return Outcome::Reply(error_response(&e));
    }
    let uri = req.uri().to_string();
    let body = match read_body(req).await {
        Ok(b) => b,
        Err(e) => return Outcome::Reply(error_response(&e)),
    };
    if let Some(captured) = &shared.captured
        && !body.is_empty()
    {
        captured
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(CapturedRequest {
                method: method.to_string(),
                uri,
                body: body.clone(),
            });
    }
    let r = Req {
        method,
        path,
        params,
        query,
        body,
        base: shared.base_url.clone(),
    };
    let result = dispatch(shared, template, &r);
    if r.method != Method::GET {
        shared.store().version += 1;
    }
    let mut resp = match result {
        Ok(Reply { status, body }) => json_response(status, body.as_ref(), JSONAPI),
        Err(e) if e.status == StatusCode::TOO_MANY_REQUESTS => too_many(retry_to_midnight()),
        Err(e) => error_response(&e),
    };
    if let Some((limit, remaining, reset)) = limit_headers
        && resp.status() != StatusCode::TOO_MANY_REQUESTS
    {
        let h = resp.headers_mut();
        h.insert("ratelimit-limit", limit.into());
        h.insert("ratelimit-remaining", remaining.into());
        h.insert("ratelimit-reset", reset.into());
    }
    Outcome::Reply(resp)
}

fn retry_to_midnight() -> u64 {
    let now = chrono::Utc::now().timestamp();
    (86_400 - now.rem_euclid(86_400)) as u64
}

/// Klaviyo's 429: a JSON:API error and only `Retry-After`, no `RateLimit-*` headers.
fn too_many(retry_after: u64) -> Response<Body> {
    let e = ApiError::new(
        StatusCode::TOO_MANY_REQUESTS,
        "throttled",
        "Request was throttled.",
        format!("Request was throttled. Expected available in {retry_after} second(s)."),
    );
    let mut resp = error_response(&e);
    resp.headers_mut()
        .insert(hyper::header::RETRY_AFTER, retry_after.into());
    resp
}

pub(crate) fn parse_query(q: Option<&str>) -> Vec<(String, String)> {
    q.map(|q| {
        form_urlencoded::parse(q.as_bytes())
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect()
    })
    .unwrap_or_default()
}

/// Reads the body, refusing more than 5 MB (413) before buffering it all.
async fn read_body(req: Request<Incoming>) -> Result<Vec<u8>, ApiError> {
    let too_large = || {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "request_too_large",
            "Request entity too large.",
            "The request body must be at most 5 MB.",
        )
    };
    if let Some(len) = req.headers().get(hyper::header::CONTENT_LENGTH)
        && len
            .to_str()
            .ok()
            .and_then(|s| s.parse::<usize>().ok())
            .is_some_and(|n| n > MAX_BODY)
    {
        return Err(too_large());
    }
    let body = Body::new(req.into_body());
    axum::body::to_bytes(body, MAX_BODY)
        .await
        .map(|b| b.to_vec())
        .map_err(|_| too_large())
}

/// Accepts connections until the task is aborted; aborting also ends every open connection.
pub(crate) async fn serve(listener: TcpListener, shared: Arc<Shared>) {
    let mut conns: JoinSet<()> = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                };
                let _ = stream.set_nodelay(true);
                let shared = shared.clone();
                conns.spawn(async move {
                    let svc = hyper::service::service_fn(move |req| handle(shared.clone(), req));
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
}

pub(crate) async fn bind(port: u16) -> std::io::Result<(TcpListener, SocketAddr)> {
    let listener = TcpListener::bind(("127.0.0.1", port)).await?;
    let addr = listener.local_addr()?;
    Ok((listener, addr))
}
