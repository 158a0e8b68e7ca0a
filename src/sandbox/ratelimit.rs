//! Klaviyo's rate limits: per account and operation, a fixed 1-second burst window and a fixed
//! 60-second steady window, with the numbers from the spec's `x-klaviyo-ratelimit` (see
//! `ratelimit_table.rs`). Some query parameters (`additional-fields[list]=profile_count`,
//! `include=lists`, …) add a stricter limit that is counted as well. In: method, path template
//! and query of each request; out: allowed (with the values for `RateLimit-*` headers) or
//! limited (with `Retry-After`). No I/O.

use std::collections::HashMap;
use std::time::{SystemTime, UNIX_EPOCH};

use super::ratelimit_table::{QUERY_LIMITS, RATE_LIMITS};

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

    pub fn check(&mut self, method: &str, template: &str, query: &[(String, String)]) -> Decision {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        self.check_at(method, template, query, now.as_millis() as u64)
    }

    /// The decision at `now_ms` (milliseconds since the epoch); windows align to wall-clock
    /// seconds and minutes, so `Reset` is the time to the next full minute. Every window that
    /// applies must have room; then all of them count the request, and the headers describe
    /// the strictest one.
    pub fn check_at(
        &mut self,
        method: &str,
        template: &str,
        query: &[(String, String)],
        now_ms: u64,
    ) -> Decision {
        if !self.enabled {
            return Decision::Unlimited;
        }
        let primary = format!("{method} {template}");
        let Some(&limits) = self.limits.get(&primary) else {
            return Decision::Unlimited;
        };
        let mut windows = vec![(primary, limits)];
        for (m, p, param, value, burst, steady) in QUERY_LIMITS {
            if *m != method || *p != template {
                continue;
            }
            // `include=list` in the docs is sent as `include=lists`.
            let used = query.iter().any(|(k, v)| {
                k == param
                    && v.split(',')
                        .any(|x| x.trim() == *value || x.trim().strip_suffix('s') == Some(value))
            });
            if used {
                windows.push((format!("{m} {p} {param}={value}"), (*burst, *steady)));
            }
        }
        let second = now_ms / 1000;
        let minute = second / 60;
        let reset = 60 - (second % 60);
        let mut retry_after = 0;
        for (key, (burst, steady)) in &windows {
            let w = self.windows.entry(key.clone()).or_default();
            if w.second != second {
                w.second = second;
                w.in_second = 0;
            }
            if w.minute != minute {
                w.minute = minute;
                w.in_minute = 0;
            }
            if w.in_minute >= *steady {
                retry_after = retry_after.max(reset);
            } else if w.in_second >= *burst {
                retry_after = retry_after.max(1);
            }
        }
        if retry_after > 0 {
            return Decision::Limited { retry_after };
        }
        let mut strictest: Option<(u32, u32)> = None;
        for (key, (_, steady)) in &windows {
            let w = self.windows.entry(key.clone()).or_default();
            w.in_second += 1;
            w.in_minute += 1;
            let remaining = steady - w.in_minute;
            if strictest.is_none_or(|(l, _)| *steady < l) {
                strictest = Some((*steady, remaining));
            }
        }
        let (limit, remaining) = strictest.unwrap_or(limits);
        Decision::Allowed {
            limit,
            remaining,
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
            rl.check_at("GET", "/api/accounts", &[], t0),
            Decision::Allowed {
                limit: 15,
                remaining: 14,
                reset: 60
            }
        ));
        assert_eq!(
            rl.check_at("GET", "/api/accounts", &[], t0 + 10),
            Decision::Limited { retry_after: 1 }
        );
        for i in 1..15 {
            assert!(matches!(
                rl.check_at("GET", "/api/accounts", &[], t0 + i * 1000),
                Decision::Allowed { .. }
            ));
        }
        assert_eq!(
            rl.check_at("GET", "/api/accounts", &[], t0 + 15_000),
            Decision::Limited { retry_after: 45 }
        );
        assert!(matches!(
            rl.check_at("GET", "/api/accounts", &[], t0 + 60_000),
            Decision::Allowed { .. }
        ));
    }

    #[test]
    fn sandbox_ratelimit_query_parameter_limits() {
        let mut rl = RateLimiter::new(true);
        let t0 = 1_000_000 * 60_000;
        let q = vec![(
            "additional-fields[list]".to_string(),
            "profile_count".to_string(),
        )];
        assert!(matches!(
            rl.check_at("GET", "/api/lists/{id}", &q, t0),
            Decision::Allowed {
                limit: 15,
                remaining: 14,
                ..
            }
        ));
        assert_eq!(
            rl.check_at("GET", "/api/lists/{id}", &q, t0 + 1),
            Decision::Limited { retry_after: 1 }
        );
        // Without the parameter only the endpoint's own (L) limits apply.
        assert!(matches!(
            rl.check_at("GET", "/api/lists/{id}", &[], t0 + 2),
            Decision::Allowed {
                limit: 750,
                remaining: 748,
                ..
            }
        ));
    }

    /// The committed table must equal what `tests/sandbox/gen_ratelimits.py` makes of openapi.json.
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
            "src/sandbox/ratelimit_table.rs is stale: run `python3 tests/sandbox/gen_ratelimits.py`"
        );

        // Query-parameter limits, read from the descriptions the same way the script does.
        let between = |s: &str, start: &str, end: &str| -> Option<String> {
            let i = s.find(start)? + start.len();
            let j = s[i..].find(end)? + i;
            Some(s[i..j].to_string())
        };
        let mut extra = Vec::new();
        for (path, item) in spec["paths"].as_object().expect("paths") {
            for (method, op) in item.as_object().expect("path item") {
                let desc = op.get("description").and_then(|d| d.as_str()).unwrap_or("");
                let marker = "Rate limits when using the `";
                for part in desc.split(marker).skip(1) {
                    let Some((param, rest)) = part.split_once('`') else {
                        continue;
                    };
                    let Some((k, v)) = param.split_once('=') else {
                        continue;
                    };
                    let burst = between(rest, "Burst: `", "/s`").and_then(|b| b.parse().ok());
                    let steady = between(rest, "Steady: `", "/m`").and_then(|b| b.parse().ok());
                    if let (Some(b), Some(st)) = (burst, steady) {
                        extra.push((
                            method.to_uppercase(),
                            path.clone(),
                            k.to_string(),
                            v.to_string(),
                            b,
                            st,
                        ));
                    }
                }
            }
        }
        extra.sort();
        let table: Vec<(String, String, String, String, u32, u32)> = QUERY_LIMITS
            .iter()
            .map(|(m, p, k, v, b, s)| {
                (
                    m.to_string(),
                    p.to_string(),
                    k.to_string(),
                    v.to_string(),
                    *b,
                    *s,
                )
            })
            .collect();
        assert_eq!(
            table, extra,
            "QUERY_LIMITS is stale: run `python3 tests/sandbox/gen_ratelimits.py`"
        );
    }
}
