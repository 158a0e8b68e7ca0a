//! The Klaviyo client: one reqwest client for the whole process, the revision pinned here,
//! rate limits respected, failures retried.
//!
//! In: requests from `apply` / `plan`. Out: JSON:API documents or a `KlaviyoError` carrying
//! Klaviyo's own `code` and `detail`. Network I/O. Works against real Klaviyo and the sandbox
//! alike: only the base URL differs.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use rand::Rng;
use reqwest::{Method, StatusCode};
use serde_json::Value;

use super::ratelimit::{Headers, RateLimiter, Tier};

/// The API revision every request asks for.
pub const REVISION: &str = "2026-07-15";
/// Real Klaviyo.
pub const DEFAULT_BASE_URL: &str = "https://a.klaviyo.com";
/// Most attempts for one request (the first try included).
pub const MAX_ATTEMPTS: u32 = 8;
/// Longest `Retry-After` kdit waits out; longer ones fail the request at once.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(120);

/// A Klaviyo private API key. Its `Debug` and `Display` never show it.
#[derive(Clone)]
pub struct ApiKey(String);

impl ApiKey {
    pub fn new(key: impl Into<String>) -> ApiKey {
        ApiKey(key.into())
    }
    /// The key itself, for the Authorization header only.
    fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ApiKey(***)")
    }
}

impl fmt::Display for ApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

/// Where and how to reach Klaviyo.
#[derive(Debug, Clone)]
pub struct Config {
    pub base_url: String,
    pub api_key: ApiKey,
    /// Respect Klaviyo's published rate limits client-side.
    pub rate_limits: bool,
    /// Delay unit for retries (tests shorten it).
    pub backoff_base: Duration,
}

impl Config {
    pub fn new(base_url: impl Into<String>, api_key: ApiKey) -> Config {
        Config {
            base_url: base_url.into().trim_end_matches('/').to_string(),
            api_key,
            rate_limits: true,
            backoff_base: Duration::from_millis(250),
        }
    }
}

/// A request Klaviyo refused for good, or that kept failing.
#[derive(Debug, thiserror::Error)]
pub enum KlaviyoError {
    #[error("Klaviyo answered {status} to {request}: {code}: {detail}")]
    Api {
        status: u16,
        /// `METHOD /path`.
        request: String,
        code: String,
        detail: String,
        body: Box<Value>,
    },
    #[error("{request} failed after {attempts} attempts: {last}")]
    GaveUp {
        request: String,
        attempts: u32,
        last: String,
    },
    #[error("Klaviyo sent a response kdit cannot read for {request}: {why}")]
    Unreadable { request: String, why: String },
}

impl KlaviyoError {
    pub fn status(&self) -> Option<u16> {
        match self {
            KlaviyoError::Api { status, .. } => Some(*status),
            _ => None,
        }
    }
}

/// What the client did, for reports.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct Stats {
    /// Requests sent, by `METHOD /path-template`.
    pub calls: BTreeMap<String, u64>,
    pub total_calls: u64,
    pub rate_limited: u64,
    pub retries: u64,
    pub server_errors: u64,
    pub connection_errors: u64,
}

/// A successful response.
#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub body: Option<Value>,
}

/// The one Klaviyo client of a process.
#[derive(Debug, Clone)]
pub struct Client {
    http: reqwest::Client,
    config: Arc<Config>,
    limiter: Arc<RateLimiter>,
    stats: Arc<Mutex<Stats>>,
}

/// Installs rustls' ring provider once (reqwest is built without a default provider).
fn install_crypto() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

impl Client {
    pub fn new(config: Config) -> Result<Client, reqwest::Error> {
        install_crypto();
        let http = reqwest::Client::builder()
            .user_agent(concat!("kdit/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(Duration::from_secs(10))
            .timeout(Duration::from_secs(120))
            .pool_max_idle_per_host(32)
            .build()?;
        let limiter = if config.rate_limits {
            RateLimiter::klaviyo()
        } else {
            RateLimiter::unlimited()
        };
        Ok(Client {
            http,
            config: Arc::new(config),
            limiter: Arc::new(limiter),
            stats: Arc::new(Mutex::new(Stats::default())),
        })
    }

    pub fn base_url(&self) -> &str {
        &self.config.base_url
    }

    pub fn stats(&self) -> Stats {
        self.stats.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn count(&self, f: impl FnOnce(&mut Stats)) {
        f(&mut self.stats.lock().unwrap_or_else(|e| e.into_inner()));
    }

    /// Sends one request, retrying 429s (after `Retry-After`), 5xx and connection errors
    /// (exponential backoff with jitter). Other 4xx are returned at once as `Api` errors.
    /// `template` names the endpoint for statistics (`POST /api/lists/{id}/relationships/profiles`).
    pub async fn send(
        &self,
        tier: Tier,
        method: Method,
        path_and_query: &str,
        template: &str,
        body: Option<&Value>,
    ) -> Result<Response, KlaviyoError> {
        let bytes = body.map(|b| serde_json::to_vec(b).unwrap_or_default());
        self.send_bytes(tier, method, path_and_query, template, bytes.as_deref())
            .await
    }

    /// `send` with a body already serialised.
    pub async fn send_bytes(
        &self,
        tier: Tier,
        method: Method,
        path_and_query: &str,
        template: &str,
        body: Option<&[u8]>,
    ) -> Result<Response, KlaviyoError> {
        let url = if path_and_query.starts_with("http") {
            path_and_query.to_string()
        } else {
            format!("{}{}", self.config.base_url, path_and_query)
        };
        let path = path_and_query
            .split('?')
            .next()
            .unwrap_or(path_and_query)
            .to_string();
        let mut last = String::new();
        for attempt in 1..=MAX_ATTEMPTS {
            let reserved = self.limiter.acquire(tier, template).await;
            self.count(|s| {
                s.total_calls += 1;
                *s.calls.entry(template.to_string()).or_default() += 1;
                if attempt > 1 {
                    s.retries += 1;
                }
            });
            let mut req = self
                .http
                .request(method.clone(), &url)
                .header(
                    "Authorization",
                    format!("Klaviyo-API-Key {}", self.config.api_key.expose()),
                )
                .header("revision", REVISION)
                .header("Accept", "application/vnd.api+json");
            if let Some(b) = body {
                req = req
                    .header("Content-Type", "application/vnd.api+json")
                    .body(b.to_vec());
            }
            let resp = match req.send().await {
                Ok(r) => r,
                Err(e) => {
                    self.count(|s| s.connection_errors += 1);
                    last = format!("connection error: {}", without_url(&e));
                    self.backoff(attempt).await;
                    continue;
                }
            };
            let status = resp.status();
            if status != StatusCode::TOO_MANY_REQUESTS {
                let h = |name: &str| {
                    resp.headers()
                        .get(name)
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| v.trim().parse::<f64>().ok())
                        .filter(|v| v.is_finite() && *v >= 0.0)
                        .map(|v| v.ceil() as u32)
                };
                let headers = Headers {
                    limit: h("RateLimit-Limit"),
                    remaining: h("RateLimit-Remaining"),
                    reset: h("RateLimit-Reset"),
                };
                self.limiter
                    .observe(tier, template, reserved, Instant::now(), headers);
            }
            if status == StatusCode::TOO_MANY_REQUESTS {
                let wait = resp
                    .headers()
                    .get("Retry-After")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.trim().parse::<f64>().ok())
                    .map(Duration::from_secs_f64)
                    .unwrap_or(Duration::from_secs(1));
                self.count(|s| s.rate_limited += 1);
                if wait > MAX_RETRY_AFTER {
                    // A daily cap, not a busy second: waiting hours helps nobody.
                    return Err(KlaviyoError::Api {
                        status: 429,
                        request: format!("{method} {path}"),
                        code: "throttled".into(),
                        detail: format!(
                            "rate limited for {:.0} s (a daily limit?); try again later",
                            wait.as_secs_f64()
                        ),
                        body: Box::new(Value::Null),
                    });
                }
                self.limiter.pause(tier, template, wait);
                last = format!("429 rate limited (Retry-After {}s)", wait.as_secs_f64());
                continue;
            }
            let bytes = match resp.bytes().await {
                Ok(b) => b,
                Err(e) => {
                    self.count(|s| s.connection_errors += 1);
                    last = format!("connection lost reading the response: {}", without_url(&e));
                    self.backoff(attempt).await;
                    continue;
                }
            };
            if status.is_server_error() {
                self.count(|s| s.server_errors += 1);
                last = format!("{} {}", status.as_u16(), first_error(&bytes).1);
                self.backoff(attempt).await;
                continue;
            }
            let parsed: Option<Value> = if bytes.is_empty() {
                None
            } else {
                match serde_json::from_slice(&bytes) {
                    Ok(v) => Some(v),
                    Err(e) => {
                        return Err(KlaviyoError::Unreadable {
                            request: format!("{method} {path}"),
                            why: e.to_string(),
                        });
                    }
                }
            };
            if status.is_client_error() {
                let (code, detail) = first_error(&bytes);
                return Err(KlaviyoError::Api {
                    status: status.as_u16(),
                    request: format!("{method} {path}"),
                    code,
                    detail,
                    body: Box::new(parsed.unwrap_or(Value::Null)),
                });
            }
            return Ok(Response {
                status: status.as_u16(),
                body: parsed,
            });
        }
        Err(KlaviyoError::GaveUp {
            request: format!("{method} {path}"),
            attempts: MAX_ATTEMPTS,
            last,
        })
    }

    async fn backoff(&self, attempt: u32) {
        let base = self.config.backoff_base.as_secs_f64() * 2f64.powi(attempt as i32 - 1);
        let capped = base.min(30.0);
        let jitter = rand::rng().random_range(0.5..1.0);
        tokio::time::sleep(Duration::from_secs_f64(capped * jitter)).await;
    }
}

/// A reqwest error's text without the URL (which is harmless, but noisy).
fn without_url(e: &reqwest::Error) -> String {
    let mut s = e.to_string();
    if let Some(url) = e.url() {
        s = s
            .replace(&format!(" ({url})"), "")
            .replace(url.as_str(), "<url>");
    }
    let mut source = std::error::Error::source(e);
    while let Some(inner) = source {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        source = inner.source();
    }
    s
}

/// Klaviyo's first error `code` and `detail` from an error body.
fn first_error(bytes: &[u8]) -> (String, String) {
    let v: Value = serde_json::from_slice(bytes).unwrap_or(Value::Null);
    let e = &v["errors"][0];
    let code = e["code"].as_str().unwrap_or("unknown").to_string();
    let detail = e["detail"]
        .as_str()
        .or_else(|| e["title"].as_str())
        .unwrap_or("no detail given")
        .to_string();
    (code, detail)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_keys_never_print() {
        let k = ApiKey::new("pk_secret_value_1234567890");
        assert_eq!(format!("{k} {k:?}"), "*** ApiKey(***)");
        let c = Config::new("http://x/", k);
        assert!(!format!("{c:?}").contains("pk_secret"));
        assert_eq!(c.base_url, "http://x");
    }

    #[test]
    fn error_bodies_give_code_and_detail() {
        let body = br#"{"errors":[{"id":"1","code":"duplicate_profile","title":"Conflict.","detail":"A profile already exists."}]}"#;
        assert_eq!(
            first_error(body),
            (
                "duplicate_profile".into(),
                "A profile already exists.".into()
            )
        );
        assert_eq!(first_error(b"oops").0, "unknown");
    }
}
