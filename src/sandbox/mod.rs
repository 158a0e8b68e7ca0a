//! `kdit sandbox`: a local, stateful server that behaves like Klaviyo's REST API (revision
//! 2026-07-15) for everything kdit uses — accounts, profiles, bulk import jobs, lists,
//! segments, tags and subscriptions — with Klaviyo's status codes, error objects, rate limits
//! and switchable faults. In: a `SandboxConfig` (from `kdit sandbox`, `commands::sandbox`, or
//! a test); out: a server on 127.0.0.1 that runs until the `Sandbox`
//! handle is dropped. State is in memory, optionally saved to `--state-file`.
//!
//! The in-process handle also reads the state directly (`profiles()`, `lists()`, `stats()`)
//! so tests can assert what a sync did; the same views are served under `/_sandbox/...`.

mod bulk;
mod faults;
mod filter;
mod http;
mod inspect;
mod lists;
mod membership;
mod profiles;
pub(crate) mod ratelimit;
mod ratelimit_table;
mod resources;
mod segments;
mod server;
mod shared;
mod store;
mod subscriptions;
mod tags;

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use tokio::task::JoinHandle;

pub use faults::FaultSpec;
pub use http::REVISION;
pub use inspect::{SandboxList, SandboxProfile, SandboxSegment, SandboxTag};
pub use shared::{CapturedRequest, LoggedRequest, REQUEST_LOG_SIZE, Stats};

use shared::Shared;

/// Whether Klaviyo's rate limits are enforced.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Default)]
pub enum RateLimits {
    #[default]
    Klaviyo,
    Off,
}

/// Everything a sandbox needs to start; `Default` is Klaviyo's limits, no faults, a free port.
#[derive(Debug, Clone)]
pub struct SandboxConfig {
    /// 0 picks a free port.
    pub port: u16,
    /// Key to accept; `None` makes a `pk_sandbox_…` key.
    pub api_key: Option<String>,
    pub rate_limits: RateLimits,
    pub faults: FaultSpec,
    pub seed: u64,
    pub state_file: Option<PathBuf>,
    /// Extra time a bulk import job stays `processing` (default none: jobs finish at once).
    pub job_latency: Duration,
    /// How long a segment reports `is_processing: true` after create/update.
    pub segment_processing: Duration,
    /// Keep every request body received (see `Sandbox::captured_requests`).
    pub capture_bodies: bool,
}

impl Default for SandboxConfig {
    fn default() -> Self {
        SandboxConfig {
            port: 0,
            api_key: None,
            rate_limits: RateLimits::Klaviyo,
            faults: FaultSpec::none(),
            seed: 0,
            state_file: None,
            job_latency: Duration::ZERO,
            segment_processing: Duration::from_millis(200),
            capture_bodies: false,
        }
    }
}

/// A running in-process sandbox; stops when dropped.
pub struct Sandbox {
    shared: Arc<Shared>,
    task: JoinHandle<()>,
    state_file: Option<PathBuf>,
}

impl Sandbox {
    /// Binds `127.0.0.1:port` (0 = any free port) and serves in the current tokio runtime.
    pub async fn start(config: SandboxConfig) -> anyhow::Result<Sandbox> {
        let (listener, addr) = server::bind(config.port)
            .await
            .with_context(|| format!("cannot listen on 127.0.0.1:{}", config.port))?;
        let store = match &config.state_file {
            Some(p) if p.exists() => store::Store::load(p, config.seed)
                .with_context(|| format!("cannot load sandbox state from {}", p.display()))?,
            _ => store::Store::new(config.seed),
        };
        let api_key = config
            .api_key
            .clone()
            .unwrap_or_else(|| format!("pk_sandbox_{}", uuid::Uuid::new_v4().simple()));
        let shared = Arc::new(Shared {
            store: Mutex::new(store),
            limiter: Mutex::new(ratelimit::RateLimiter::new(
                config.rate_limits == RateLimits::Klaviyo,
            )),
            faults: Mutex::new(faults::Faults::new(config.faults.clone(), config.seed)),
            stats: Mutex::new(Stats::default()),
            api_key,
            base_url: format!("http://{addr}"),
            job_latency: config.job_latency,
            segment_processing: config.segment_processing,
            captured: config.capture_bodies.then(|| Mutex::new(Vec::new())),
        });
        let task = tokio::spawn(server::serve(listener, shared.clone()));
        Ok(Sandbox {
            shared,
            task,
            state_file: config.state_file,
        })
    }

    /// `http://127.0.0.1:PORT` — use it where the client would use `https://a.klaviyo.com`.
    pub fn base_url(&self) -> &str {
        &self.shared.base_url
    }

    /// The private key the sandbox accepts.
    pub fn api_key(&self) -> &str {
        &self.shared.api_key
    }

    /// Every profile, in id order.
    pub fn profiles(&self) -> Vec<SandboxProfile> {
        let store = self.shared.store();
        store.profiles.values().map(inspect::profile_view).collect()
    }

    /// The profile with this Klaviyo id, if any.
    pub fn profile(&self, id: &str) -> Option<SandboxProfile> {
        let store = self.shared.store();
        store.profile_by_str(id).map(inspect::profile_view)
    }

    /// The profile with this email (case-insensitive), if any.
    pub fn profile_by_email(&self, email: &str) -> Option<SandboxProfile> {
        let store = self.shared.store();
        let id = store.find_email(email)?;
        store.profiles.get(&id).map(inspect::profile_view)
    }

    pub fn profile_count(&self) -> usize {
        self.shared.store().profiles.len()
    }

    pub fn lists(&self) -> Vec<SandboxList> {
        inspect::lists_view(&self.shared.store())
    }

    pub fn segments(&self) -> Vec<SandboxSegment> {
        inspect::segments_view(&mut self.shared.store())
    }

    pub fn tags(&self) -> Vec<SandboxTag> {
        inspect::tags_view(&self.shared.store())
    }

    /// The request log: counts per endpoint (`METHOD /api/template`) and per status.
    pub fn stats(&self) -> Stats {
        self.shared.stats().clone()
    }

    /// Requests per endpoint, e.g. `counts["POST /api/profile-bulk-import-jobs"]`.
    pub fn request_counts(&self) -> std::collections::BTreeMap<String, u64> {
        self.shared.stats().by_endpoint.clone()
    }

    /// Every request body received, when `SandboxConfig::capture_bodies` is on.
    pub fn captured_requests(&self) -> Vec<CapturedRequest> {
        self.shared
            .captured
            .as_ref()
            .map(|c| c.lock().unwrap_or_else(|e| e.into_inner()).clone())
            .unwrap_or_default()
    }

    /// The most recent requests (up to `REQUEST_LOG_SIZE`), oldest first.
    pub fn requests(&self) -> Vec<LoggedRequest> {
        self.shared.stats().recent.iter().cloned().collect()
    }

    /// Replaces the fault settings (and reseeds when `seed` is given).
    pub fn set_faults(&self, spec: FaultSpec, seed: Option<u64>) {
        self.shared.faults().set(spec, seed);
    }

    pub fn set_rate_limits(&self, mode: RateLimits) {
        self.shared
            .limiter()
            .set_enabled(mode == RateLimits::Klaviyo);
    }

    /// Forgets every profile, list, segment, tag, job and logged request.
    pub fn reset(&self) {
        inspect::reset(&self.shared);
    }

    /// Saves state to the configured `--state-file`, if any.
    pub fn save(&self) -> anyhow::Result<()> {
        if let Some(p) = &self.state_file {
            self.shared.store().save(p)?;
        }
        Ok(())
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Timings of one bulk import run.
#[derive(Debug, Clone)]
pub struct BenchResult {
    pub profiles: usize,
    pub accepted: Duration,
    pub completed: Duration,
}

/// Runs one bulk import of `n` generated profiles over HTTP and polls until complete.
pub async fn bench_bulk(sb: &Sandbox, n: usize) -> anyhow::Result<BenchResult> {
    bench_bulk_from(sb, n, 0).await
}

/// `bench_bulk`, numbering the generated profiles from `first`.
pub async fn bench_bulk_from(sb: &Sandbox, n: usize, first: usize) -> anyhow::Result<BenchResult> {
    let profiles: Vec<_> = (first..first + n)
        .map(|i| {
            serde_json::json!({"type":"profile","attributes":{
                "email": format!("bench{i}@example.com"),
                "first_name": "Bench", "properties": {"n": i}}})
        })
        .collect();
    let body = serde_json::json!({"data":{"type":"profile-bulk-import-job",
        "attributes":{"profiles":{"data":profiles}}}});
    // reqwest is built without a default TLS provider; plain HTTP still needs one installed.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let client = reqwest::Client::new();
    let start = Instant::now();
    let resp = client
        .post(format!("{}/api/profile-bulk-import-jobs", sb.base_url()))
        .header("Authorization", format!("Klaviyo-API-Key {}", sb.api_key()))
        .header("revision", REVISION)
        .header("Content-Type", http::JSONAPI)
        .body(serde_json::to_vec(&body)?)
        .send()
        .await?;
    let accepted = start.elapsed();
    anyhow::ensure!(
        resp.status().as_u16() == 202,
        "bulk job not accepted: {}",
        resp.status()
    );
    let job: serde_json::Value = resp.json().await?;
    let id = job["data"]["id"].as_str().unwrap_or_default().to_string();
    loop {
        let v: serde_json::Value = client
            .get(format!(
                "{}/api/profile-bulk-import-jobs/{id}",
                sb.base_url()
            ))
            .header("Authorization", format!("Klaviyo-API-Key {}", sb.api_key()))
            .header("revision", REVISION)
            .send()
            .await?
            .json()
            .await?;
        if v["data"]["attributes"]["status"] == "complete" {
            break;
        }
        anyhow::ensure!(
            start.elapsed() < Duration::from_secs(60),
            "bulk job did not complete"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    Ok(BenchResult {
        profiles: n,
        accepted,
        completed: start.elapsed(),
    })
}
