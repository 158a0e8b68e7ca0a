//! Klaviyo's rate limits: per account and operation, a fixed 1-second burst window and a fixed
//! 60-second steady window, with the numbers from the spec's `x-klaviyo-ratelimit` (see
//! `ratelimit_table.rs`). In: method and path template of each request; out: allowed (with the
//! values for `RateLimit-*` headers) or limited (with `Retry-After`). No I/O.

use std::collections::HashMap;
use std::time::{SystemTime, UNIX_EPOCH};

use super::ratelimit_table::RATE_LIMITS;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Rate limits are off.
    Unlimited,
    /// Values for `RateLimit-Limit`, `-Remaining`, `-Reset` (steady window).
    Allowed {
        limit: u32,
        remaining: u32,
        reset: u64,
    },
    /// 429 with `Retry-After: retry_after`.
    Limited { retry_after: u64 },
}

#[derive(Debug, Default, Clone, Copy)]
struct Window {
    second: u64,
    in_second: u32,
    minute: u64,
    in_minute: u32,
}

/// Counters per operation. Klaviyo counts per account; the sandbox serves one account.
#[derive(Debug)]
pub struct RateLimiter {
    enabled: bool,
    /// `"METHOD /api/template"` → (burst, steady).
    limits: HashMap<String, (u32, u32)>,
    windows: HashMap<String, Window>,
}

impl RateLimiter {
    pub fn new(enabled: bool) -> Self {
        let limits = RATE_LIMITS
            .iter()
            .map(|(m, p, burst, steady, _)| (format!("{m} {p}"), (*burst, *steady)))
            .collect();
        RateLimiter {
            enabled,
            limits,
            windows: HashMap::new(),
        }
    }

    pub fn set_enabled(&mut self, enabled: bool) {
        self.enabled = enabled;
        self.windows.clear();
    }

    pub fn enabled(&self) -> bool {
        self.enabled
    }

    pub fn check(&mut self, method: &str, template: &str) -> Decision {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        self.check_at(method, template, now.as_millis() as u64)
    }

    /// The decision at `now_ms` (milliseconds since the epoch); windows align to wall-clock
    /// seconds and minutes, so `Reset` is the time to the next full minute.
    pub fn check_at(&mut self, method: &str, template: &str, now_ms: u64) -> Decision {
        if !self.enabled {
            return Decision::Unlimited;
        }
        let key = format!("{method} {template}");
        let Some(&(burst, steady)) = self.limits.get(&key) else {
            return Decision::Unlimited;
        };
        let second = now_ms / 1000;
        let minute = second / 60;
        let w = self.windows.entry(key).or_default();
        if w.second != second {
            w.second = second;
            w.in_second = 0;
        }
        if w.minute != minute {
            w.minute = minute;
            w.in_minute = 0;
        }
        let reset = 60 - (second % 60);
        if w.in_minute >= steady {
            return Decision::Limited { retry_after: reset };
        }
        if w.in_second >= burst {
            return Decision::Limited { retry_after: 1 };
        }
        w.in_second += 1;
        w.in_minute += 1;
        Decision::Allowed {
            limit: steady,
            remaining: steady - w.in_minute,
            reset,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sandbox_ratelimit_burst_then_steady() {
        let mut rl = RateLimiter::new(true);
        // GET /api/accounts is XS: 1/s, 15/m.
        let t0 = 1_000_000 * 60_000;
        assert!(matches!(
            rl.check_at("GET", "/api/accounts", t0),
            Decision::Allowed {
                limit: 15,
                remaining: 14,
                reset: 60
            }
        ));
        assert_eq!(
            rl.check_at("GET", "/api/accounts", t0 + 10),
            Decision::Limited { retry_after: 1 }
        );
        for i in 1..15 {
            assert!(matches!(
                rl.check_at("GET", "/api/accounts", t0 + i * 1000),
                Decision::Allowed { .. }
            ));
        }
        assert_eq!(
            rl.check_at("GET", "/api/accounts", t0 + 15_000),
            Decision::Limited { retry_after: 45 }
        );
        assert!(matches!(
            rl.check_at("GET", "/api/accounts", t0 + 60_000),
            Decision::Allowed { .. }
        ));
    }

    /// The committed table must equal what `scripts/gen_ratelimits.py` makes of openapi.json.
    #[test]
    fn sandbox_ratelimit_table_matches_spec() {
        let path =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/klaviyo/openapi.json");
        let text = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
        let spec: serde_json::Value = serde_json::from_str(&text).expect("openapi.json parses");
        let parse = |v: &serde_json::Value, unit: &str| -> u32 {
            v.as_str()
                .and_then(|s| s.strip_suffix(unit))
                .and_then(|s| s.parse().ok())
                .expect("rate limit like 10/s")
        };
        let mut from_spec = Vec::new();
        for (path, item) in spec["paths"].as_object().expect("paths") {
            for (method, op) in item.as_object().expect("path item") {
                let Some(rl) = op.get("x-klaviyo-ratelimit") else {
                    continue;
                };
                from_spec.push((
                    method.to_uppercase(),
                    path.clone(),
                    parse(&rl["burst"], "/s"),
                    parse(&rl["steady"], "/m"),
                    rl.get("daily").map(|d| parse(d, "/d")),
                ));
            }
        }
        from_spec.sort();
        let table: Vec<_> = RATE_LIMITS
            .iter()
            .map(|(m, p, b, s, d)| (m.to_string(), p.to_string(), *b, *s, *d))
            .collect();
        assert_eq!(
            table, from_spec,
            "src/sandbox/ratelimit_table.rs is stale: run `python3 scripts/gen_ratelimits.py`"
        );
    }
}
