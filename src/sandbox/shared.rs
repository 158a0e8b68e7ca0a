//! The state every connection of a sandbox shares (`Shared`: the store, rate limiter, fault
//! settings, request statistics and the sandbox's key and address) and the request log it
//! keeps (`Stats`, `LoggedRequest`, `CapturedRequest`). In: built by `Sandbox::start`; out:
//! lock guards for the handlers and the router. No I/O.

use std::collections::BTreeMap;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use serde::Serialize;

use super::faults::Faults;
use super::ratelimit::RateLimiter;
use super::store::Store;

/// State shared by every connection.
pub(crate) struct Shared {
    pub store: Mutex<Store>,
    pub limiter: Mutex<RateLimiter>,
    pub faults: Mutex<Faults>,
    pub stats: Mutex<Stats>,
    pub api_key: String,
    pub base_url: String,
    pub job_latency: Duration,
    pub segment_processing: Duration,
    /// Bodies of the `/api` requests received, when `SandboxConfig::capture_bodies` is on
    /// (tests check that every request a client sends matches Klaviyo's spec).
    pub captured: Option<Mutex<Vec<CapturedRequest>>>,
}

/// A request body as received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CapturedRequest {
    pub method: String,
    /// The path and query as sent.
    pub uri: String,
    pub body: Vec<u8>,
}

impl Shared {
    /// Locks the store; a handler that panicked cannot leave it half-written in a way that
    /// matters more than stopping the whole sandbox, so poisoning is ignored.
    pub fn store(&self) -> MutexGuard<'_, Store> {
        self.store.lock().unwrap_or_else(|e| e.into_inner())
    }
    pub fn stats(&self) -> MutexGuard<'_, Stats> {
        self.stats.lock().unwrap_or_else(|e| e.into_inner())
    }
    pub fn faults(&self) -> MutexGuard<'_, Faults> {
        self.faults.lock().unwrap_or_else(|e| e.into_inner())
    }
    pub fn limiter(&self) -> MutexGuard<'_, RateLimiter> {
        self.limiter.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Requests seen, by endpoint (`METHOD /path/{template}`) and by status.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct Stats {
    pub total: u64,
    pub by_endpoint: BTreeMap<String, u64>,
    pub by_status: BTreeMap<u16, u64>,
    pub by_endpoint_status: BTreeMap<String, BTreeMap<u16, u64>>,
    /// The most recent requests, oldest first (at most `REQUEST_LOG_SIZE`).
    #[serde(skip)]
    pub recent: std::collections::VecDeque<LoggedRequest>,
}

/// How many requests `Stats::recent` keeps.
pub const REQUEST_LOG_SIZE: usize = 10_000;

/// One request as the sandbox answered it.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct LoggedRequest {
    /// `METHOD /api/template`.
    pub endpoint: String,
    /// The path and query as sent.
    pub uri: String,
    /// 0 when the connection was dropped by fault injection.
    pub status: u16,
}

impl Stats {
    pub(super) fn record(&mut self, endpoint: &str, uri: &str, status: u16) {
        if self.recent.len() == REQUEST_LOG_SIZE {
            self.recent.pop_front();
        }
        self.recent.push_back(LoggedRequest {
            endpoint: endpoint.to_string(),
            uri: uri.to_string(),
            status,
        });
        self.total += 1;
        *self.by_endpoint.entry(endpoint.to_string()).or_default() += 1;
        *self.by_status.entry(status).or_default() += 1;
        *self
            .by_endpoint_status
            .entry(endpoint.to_string())
            .or_default()
            .entry(status)
            .or_default() += 1;
    }
}
