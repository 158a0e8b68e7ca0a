//! Test harness for the sandbox: starts an in-process sandbox and talks to it over real HTTP.
//! Every request body sent to `/api` and every response body received is checked against
//! openapi.json; a violation fails the test.

use kdit::sandbox::{RateLimits, Sandbox, SandboxConfig};
use reqwest::header::HeaderMap;
use serde_json::Value;

pub use super::openapi;

pub const REVISION: &str = "2026-07-15";

pub struct Api {
    pub sb: Sandbox,
    pub http: reqwest::Client,
}

/// A response: status, headers and the parsed body (None when empty).
#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: Option<Value>,
}

impl Resp {
    pub fn json(&self) -> &Value {
        self.body.as_ref().unwrap_or(&Value::Null)
    }
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
    pub fn error_code(&self) -> &str {
        self.json()["errors"][0]["code"].as_str().unwrap_or("")
    }
}

impl Api {
    /// A sandbox with rate limits off (most tests are about behaviour, not pacing).
    pub async fn new() -> Api {
        Self::with(SandboxConfig {
            rate_limits: RateLimits::Off,
            ..SandboxConfig::default()
        })
        .await
    }

    pub async fn with(config: SandboxConfig) -> Api {
        // reqwest is built without a default TLS provider; plain HTTP still needs one installed.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let sb = Sandbox::start(config).await.expect("sandbox starts");
        Api {
            sb,
            http: reqwest::Client::new(),
        }
    }

    pub fn url(&self, path: &str) -> String {
        if path.starts_with("http") {
            path.to_string()
        } else {
            format!("{}{path}", self.sb.base_url())
        }
    }

    /// Sends a request the way a Klaviyo client does, checking both bodies against the spec.
    pub async fn call(&self, method: &str, path: &str, body: Option<&Value>) -> Resp {
        self.call_checked(method, path, body, true).await
    }

    /// Sends a body the spec itself rejects (to test the sandbox's 4xx); the response is
    /// still checked.
    pub async fn post_invalid(&self, path: &str, body: &Value) -> Resp {
        self.call_checked("POST", path, Some(body), false).await
    }

    async fn call_checked(
        &self,
        method: &str,
        path: &str,
        body: Option<&Value>,
        check_request: bool,
    ) -> Resp {
        let path_only = path
            .strip_prefix(self.sb.base_url())
            .unwrap_or(path)
            .to_string();
        if let Some(b) = body
            && check_request
            && let Err(e) = openapi::check_request(method, &path_only, b)
        {
            panic!("{e}");
        }
        let mut rb = self
            .http
            .request(method.parse().expect("method"), self.url(path))
            .header(
                "Authorization",
                format!("Klaviyo-API-Key {}", self.sb.api_key()),
            )
            .header("revision", REVISION)
            .header("Accept", "application/vnd.api+json");
        if let Some(b) = body {
            rb = rb
                .header("Content-Type", "application/vnd.api+json")
                .body(serde_json::to_vec(b).expect("serializes"));
        }
        let resp = self.send(rb).await;
        if let Err(e) = openapi::check_response(method, &path_only, resp.status, resp.body.as_ref())
        {
            panic!("{e}");
        }
        resp
    }

    pub async fn send(&self, rb: reqwest::RequestBuilder) -> Resp {
        let r = rb.send().await.expect("request sent");
        let status = r.status().as_u16();
        let headers = r.headers().clone();
        let bytes = r.bytes().await.expect("body read");
        let body = if bytes.is_empty() {
            None
        } else {
            Some(serde_json::from_slice(&bytes).unwrap_or_else(|e| {
                panic!(
                    "response is not JSON ({e}): {}",
                    String::from_utf8_lossy(&bytes)
                )
            }))
        };
        Resp {
            status,
            headers,
            body,
        }
    }

    pub async fn get(&self, path: &str) -> Resp {
        self.call("GET", path, None).await
    }
    pub async fn post(&self, path: &str, body: &Value) -> Resp {
        self.call("POST", path, Some(body)).await
    }
    pub async fn patch(&self, path: &str, body: &Value) -> Resp {
        self.call("PATCH", path, Some(body)).await
    }
    pub async fn delete(&self, path: &str, body: Option<&Value>) -> Resp {
        self.call("DELETE", path, body).await
    }

    /// Creates a profile and returns its id.
    pub async fn create_profile(&self, attrs: Value) -> String {
        let r = self
            .post(
                "/api/profiles",
                &serde_json::json!({"data": {"type": "profile", "attributes": attrs}}),
            )
            .await;
        assert_eq!(r.status, 201, "{:?}", r.body);
        r.json()["data"]["id"].as_str().expect("id").to_string()
    }

    pub async fn create_list(&self, name: &str) -> String {
        let r = self
            .post(
                "/api/lists",
                &serde_json::json!({"data": {"type": "list", "attributes": {"name": name}}}),
            )
            .await;
        assert_eq!(r.status, 201, "{:?}", r.body);
        r.json()["data"]["id"].as_str().expect("id").to_string()
    }

    /// Posts a bulk job and waits until it is complete; returns the job id.
    pub async fn bulk(&self, body: &Value) -> String {
        let r = self.post("/api/profile-bulk-import-jobs", body).await;
        assert_eq!(r.status, 202, "{:?}", r.body);
        let id = r.json()["data"]["id"].as_str().expect("id").to_string();
        for _ in 0..2000 {
            let j = self
                .get(&format!("/api/profile-bulk-import-jobs/{id}"))
                .await;
            if j.json()["data"]["attributes"]["status"] == "complete" {
                return id;
            }
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        panic!("bulk job {id} did not complete");
    }
}
