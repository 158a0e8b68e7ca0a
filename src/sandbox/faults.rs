//! Fault injection: a share of requests answered 429 or 5xx, dropped without an answer, or
//! delayed, and a share of bulk-import profiles failed. In: a spec like
//! `429=10%,5xx=5%,drop=2%,slow=1%:2s,bulk-fail=1%` and a seed; out: one decision per request,
//! reproducible for a given seed and request order. No I/O.
//!
//! Grammar: comma-separated `KIND=PERCENT%[:DURATION]`, KIND one of `429`, `5xx` (500, 502 or
//! 503 at random), `500`, `502`, `503`, `drop`, `slow` (DURATION like `2s` or `250ms`, default
//! 2s), `bulk-fail`. The `%` is optional. `none` or an empty string means no faults.

use std::str::FromStr;
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

/// How often each fault happens, as fractions in `0.0..=1.0`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct FaultSpec {
    pub too_many: f64,
    pub server_any: f64,
    pub server_500: f64,
    pub server_502: f64,
    pub server_503: f64,
    pub drop: f64,
    pub slow: f64,
    #[serde(with = "humantime_serde_ms")]
    pub slow_for: Duration,
    pub bulk_fail: f64,
}

impl Default for FaultSpec {
    fn default() -> Self {
        FaultSpec {
            too_many: 0.0,
            server_any: 0.0,
            server_500: 0.0,
            server_502: 0.0,
            server_503: 0.0,
            drop: 0.0,
            slow: 0.0,
            slow_for: Duration::from_secs(2),
            bulk_fail: 0.0,
        }
    }
}

impl FaultSpec {
    pub fn none() -> Self {
        Self::default()
    }

    pub fn is_none(&self) -> bool {
        *self == FaultSpec::none() || {
            let mut s = self.clone();
            s.slow_for = Duration::from_secs(2);
            s == FaultSpec::none()
        }
    }
}

impl FromStr for FaultSpec {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let mut spec = FaultSpec::none();
        let s = s.trim();
        if s.is_empty() || s == "none" {
            return Ok(spec);
        }
        for part in s.split(',') {
            let part = part.trim();
            let (kind, rest) = part
                .split_once('=')
                .ok_or_else(|| format!("fault `{part}`: expected KIND=PERCENT%, e.g. 429=10%"))?;
            let (pct, dur) = match rest.split_once(':') {
                Some((p, d)) => (p, Some(d)),
                None => (rest, None),
            };
            let pct = pct.trim().trim_end_matches('%');
            let share: f64 = pct
                .parse()
                .map_err(|_| format!("fault `{part}`: `{pct}` is not a percentage"))?;
            if !(0.0..=100.0).contains(&share) {
                return Err(format!("fault `{part}`: percentage must be within 0..=100"));
            }
            let share = share / 100.0;
            if dur.is_some() && kind.trim() != "slow" {
                return Err(format!("fault `{part}`: only `slow` takes a duration"));
            }
            match kind.trim() {
                "429" => spec.too_many = share,
                "5xx" => spec.server_any = share,
                "500" => spec.server_500 = share,
                "502" => spec.server_502 = share,
                "503" => spec.server_503 = share,
                "drop" => spec.drop = share,
                "slow" => {
                    spec.slow = share;
                    if let Some(d) = dur {
                        spec.slow_for = humantime::parse_duration(d.trim())
                            .map_err(|e| format!("fault `{part}`: bad duration: {e}"))?;
                    }
                }
                "bulk-fail" => spec.bulk_fail = share,
                other => {
                    return Err(format!(
                        "unknown fault kind `{other}` (known: 429, 5xx, 500, 502, 503, drop, slow, bulk-fail)"
                    ));
                }
            }
        }
        let total = spec.too_many
            + spec.server_any
            + spec.server_500
            + spec.server_502
            + spec.server_503
            + spec.drop
            + spec.slow;
        if total > 1.0 + 1e-9 {
            return Err("request fault percentages add up to more than 100%".into());
        }
        Ok(spec)
    }
}

/// What happens to one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    None,
    TooMany,
    Server(u16),
    Drop,
    Slow(Duration),
}

/// The active spec and the seeded generator behind every decision.
#[derive(Debug)]
pub struct Faults {
    pub spec: FaultSpec,
    rng: StdRng,
}

impl Faults {
    pub fn new(spec: FaultSpec, seed: u64) -> Self {
        Faults {
            spec,
            rng: StdRng::seed_from_u64(seed ^ 0x6661_756c_7473),
        }
    }

    pub fn set(&mut self, spec: FaultSpec, seed: Option<u64>) {
        self.spec = spec;
        if let Some(seed) = seed {
            self.rng = StdRng::seed_from_u64(seed ^ 0x6661_756c_7473);
        }
    }

    /// One draw per request: the shares are laid end to end on `0..1`.
    pub fn request_fault(&mut self) -> Fault {
        let s = &self.spec;
        if s.too_many + s.server_any + s.server_500 + s.server_502 + s.server_503 + s.drop + s.slow
            == 0.0
        {
            return Fault::None;
        }
        let r: f64 = self.rng.random();
        let mut edge = 0.0;
        let mut hit = |share: f64| {
            edge += share;
            r < edge
        };
        if hit(s.too_many) {
            return Fault::TooMany;
        }
        if hit(s.server_any) {
            let codes = [500, 502, 503];
            return Fault::Server(codes[self.rng.random_range(0..codes.len())]);
        }
        if hit(s.server_500) {
            return Fault::Server(500);
        }
        if hit(s.server_502) {
            return Fault::Server(502);
        }
        if hit(s.server_503) {
            return Fault::Server(503);
        }
        if hit(s.drop) {
            return Fault::Drop;
        }
        if hit(s.slow) {
            return Fault::Slow(s.slow_for);
        }
        Fault::None
    }

    /// Whether the next bulk-import profile fails by injection.
    pub fn bulk_profile_fails(&mut self) -> bool {
        self.spec.bulk_fail > 0.0 && self.rng.random::<f64>() < self.spec.bulk_fail
    }
}

/// `slow_for` as whole milliseconds in JSON.
mod humantime_serde_ms {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(d.as_millis() as u64)
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        Ok(Duration::from_millis(u64::deserialize(d)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sandbox_fault_grammar() {
        let s: FaultSpec = "429=10%,5xx=5%,drop=2%,slow=1%:250ms,bulk-fail=1%"
            .parse()
            .expect("parses");
        assert_eq!(s.too_many, 0.10);
        assert_eq!(s.slow_for, Duration::from_millis(250));
        assert_eq!(s.bulk_fail, 0.01);
        assert!("429=10".parse::<FaultSpec>().is_ok());
        assert!("teapot=1%".parse::<FaultSpec>().is_err());
        assert!("429=60%,5xx=60%".parse::<FaultSpec>().is_err());
        assert!("429=x".parse::<FaultSpec>().is_err());
        assert!("".parse::<FaultSpec>().expect("empty").is_none());
    }

    #[test]
    fn sandbox_faults_deterministic() {
        let spec: FaultSpec = "429=30%,5xx=30%".parse().expect("parses");
        let draw = |seed| {
            let mut f = Faults::new(spec.clone(), seed);
            (0..50).map(|_| f.request_fault()).collect::<Vec<_>>()
        };
        assert_eq!(draw(7), draw(7));
        assert_ne!(draw(7), draw(8));
    }
}
