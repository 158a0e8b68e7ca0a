//! Client-side rate limiting: one limiter per process, shared by every task, with a budget
//! per Klaviyo operation (`METHOD /api/template`) sized by its rate-limit tier (burst per
//! second and steady per minute). Klaviyo gives each endpoint its own limit: the tiers name
//! sizes of limits, not shared pools.
//!
//! In: `acquire(tier, operation)` before each request, `observe` with the `RateLimit-*`
//! headers of each answer, `pause` on a 429. Out: the request may go now, or after a wait that
//! keeps kdit inside both of Klaviyo's fixed windows, so kdit itself causes no 429.
//!
//! How the budget is used to the full:
//! - The burst window (1 s) is a sliding log: never more than `burst` sends in any span of
//!   one second plus the network allowance, which no fixed second can exceed.
//! - The steady window (60 s) is Klaviyo's fixed minute. `RateLimit-Reset` (seconds to the
//!   window's end) tells where the minute ends; each answer bounds the boundary from both
//!   sides and the bounds are intersected. Each send is charged to every server minute its
//!   arrival might fall in (given the boundary's uncertainty and the network allowance), and
//!   a send goes when each of those minutes has room. So kdit sends the full `steady` at the
//!   start of each minute instead of spreading a sliding minute over two fixed ones.
//! - Until the boundary is known (or when the answers contradict fixed minutes) the steady
//!   window is a sliding log too, which is always safe.
//! - `RateLimit-Remaining` below what kdit itself used means someone else shares the
//!   account: the difference is charged to that minute. `RateLimit-Limit` below the tier's
//!   steady lowers it. A bucket's first request goes alone, so its answer's headers are known
//!   before the burst.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Klaviyo's rate-limit tiers (burst per second, steady per minute), from the spec's
/// `x-klaviyo-ratelimit`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Tier {
    Xs,
    S,
    M,
    L,
    Xl,
}

impl Tier {
    pub const ALL: [Tier; 5] = [Tier::Xs, Tier::S, Tier::M, Tier::L, Tier::Xl];

    /// (burst per second, steady per minute).
    pub fn limits(self) -> (u32, u32) {
        match self {
            Tier::Xs => (1, 15),
            Tier::S => (3, 60),
            Tier::M => (10, 150),
            Tier::L => (75, 750),
            Tier::Xl => (350, 3500),
        }
    }
}

/// The `RateLimit-*` headers of one answer (they describe the steady window).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Headers {
    pub limit: Option<u32>,
    pub remaining: Option<u32>,
    /// Seconds until the steady window resets.
    pub reset: Option<u32>,
}

/// Nanoseconds relative to the limiter's origin (may be negative).
type Ns = i128;

const SECOND: Ns = 1_000_000_000;
const MINUTE: Ns = 60 * SECOND;
/// Bounds of the network allowance: how much later than its reservation a send may be
/// counted by Klaviyo (the longest recent round trip, within these bounds).
const MIN_SLACK: Ns = 10_000_000;
const MAX_SLACK: Ns = SECOND;
/// How long a bucket's first request goes alone before the others follow anyway.
const PROBE_TIMEOUT: Ns = 2 * SECOND;

/// What is known of where Klaviyo's fixed minutes end: some boundary lies in `[lo, hi]`, and
/// boundaries repeat every 60 s.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Unknown,
    Known {
        lo: Ns,
        hi: Ns,
    },
    /// The answers contradicted fixed minutes: sliding windows only.
    Inconsistent,
}

#[derive(Debug)]
struct Bucket {
    burst: u32,
    steady: u32,
    /// Reservation times of recent sends, oldest first.
    sent: VecDeque<Ns>,
    phase: Phase,
    /// Requests of others charged to a server minute (its index under `hi`), from `Remaining`.
    foreign: Option<(i64, u32)>,
    /// The most recent round trips, for the network allowance.
    rtts: VecDeque<Ns>,
    /// The first request's reservation, while its answer is awaited.
    probe: Option<Ns>,
    observed: bool,
    /// No sends before this (a 429's `Retry-After`, or `Remaining: 0`).
    paused_until: Option<Ns>,
}

/// Index of the server minute holding `t` if a boundary is at `b`.
fn minute_of(t: Ns, b: Ns) -> i64 {
    (t - b).div_euclid(MINUTE) as i64
}

impl Bucket {
    fn new(tier: Tier) -> Bucket {
        let (burst, steady) = tier.limits();
        Bucket {
            burst,
            steady,
            sent: VecDeque::new(),
            phase: Phase::Unknown,
            foreign: None,
            rtts: VecDeque::new(),
            probe: None,
            observed: false,
            paused_until: None,
        }
    }

    fn slack(&self) -> Ns {
        self.rtts
            .iter()
            .copied()
            .max()
            .unwrap_or(0)
            .clamp(MIN_SLACK, MAX_SLACK)
    }

    /// The server minutes a send reserved at `t` may be counted in.
    fn minutes(&self, t: Ns, lo: Ns, hi: Ns, slack: Ns) -> (i64, i64) {
        (minute_of(t, hi), minute_of(t + slack, lo))
    }

    /// Sends charged to server minute `k`.
    fn charged(&self, k: i64, lo: Ns, hi: Ns, slack: Ns, up_to: Ns) -> u32 {
        self.sent
            .iter()
            .filter(|&&s| s <= up_to)
            .filter(|&&s| {
                let (a, b) = self.minutes(s, lo, hi, slack);
                a <= k && k <= b
            })
            .count() as u32
    }

    /// The wait before a send at `now` (zero: it may go, and is recorded).
    fn try_acquire(&mut self, now: Ns) -> Ns {
        if let Some(until) = self.paused_until {
            if until > now {
                return until - now;
            }
            self.paused_until = None;
        }
        if let Some(p) = self.probe {
            if !self.observed && now < p + PROBE_TIMEOUT {
                // The first answer's headers tell how much of the minute is left.
                return MIN_SLACK.min(p + PROBE_TIMEOUT - now).max(1);
            }
        }
        let slack = self.slack();
        while self
            .sent
            .front()
            .is_some_and(|&t| now - t > 2 * MINUTE + 2 * MAX_SLACK)
        {
            self.sent.pop_front();
        }
        let mut wait: Ns = 0;
        // Burst: at most `burst` sends in any span of one second plus the allowance.
        let burst = self.burst as usize;
        let span = SECOND + slack;
        let recent = self.sent.iter().rev().take_while(|&&t| now - t < span);
        if recent.count() >= burst {
            let t = self.sent[self.sent.len() - burst];
            wait = wait.max(t + span - now);
        }
        // Steady.
        match self.phase {
            Phase::Known { lo, hi } => {
                let (first, last) = self.minutes(now, lo, hi, slack);
                for k in first..=last {
                    let foreign = match self.foreign {
                        Some((fk, n)) if fk == k => n,
                        _ => 0,
                    };
                    if self.charged(k, lo, hi, slack, now) + foreign >= self.steady {
                        // Wait until a send can no longer land in minute k.
                        let b = hi + (k as Ns + 1) * MINUTE;
                        wait = wait.max(b - now);
                    }
                }
            }
            Phase::Unknown | Phase::Inconsistent => {
                let steady = self.steady as usize;
                let span = MINUTE + slack;
                let recent = self.sent.iter().rev().take_while(|&&t| now - t < span);
                if recent.count() >= steady {
                    let t = self.sent[self.sent.len() - steady];
                    wait = wait.max(t + span - now);
                }
            }
        }
        if wait == 0 {
            self.sent.push_back(now);
            if !self.observed && self.probe.is_none() {
                self.probe = Some(now);
            }
        }
        wait
    }

    fn observe(&mut self, sent: Ns, received: Ns, h: Headers) {
        self.observed = true;
        let rtt = (received - sent).max(0);
        if self.rtts.len() == 16 {
            self.rtts.pop_front();
        }
        self.rtts.push_back(rtt);
        if let Some(limit) = h.limit.filter(|l| *l > 0) {
            self.steady = self.steady.min(limit);
        }
        let Some(reset) = h.reset.filter(|r| (1..=60).contains(r)) else {
            return;
        };
        let reset = reset as Ns * SECOND;
        // The server read its clock between `sent` and `received`; `Reset` is whole seconds,
        // rounded either way: the boundary lies within a second of `that moment + Reset`.
        let (a, b) = (sent + reset - SECOND, received + reset + SECOND);
        self.phase = match self.phase {
            Phase::Unknown => Phase::Known { lo: a, hi: b },
            Phase::Known { lo, hi } => {
                // Move the new bounds by whole minutes next to the known ones.
                let shift = ((lo + hi) / 2 - (a + b) / 2) as f64 / MINUTE as f64;
                let shift = shift.round() as Ns * MINUTE;
                let (a, b) = (a + shift, b + shift);
                let (lo, hi) = (lo.max(a), hi.min(b));
                if lo <= hi {
                    Phase::Known { lo, hi }
                } else {
                    Phase::Inconsistent
                }
            }
            Phase::Inconsistent => Phase::Inconsistent,
        };
        let Some(remaining) = h.remaining else {
            return;
        };
        let limit = h.limit.unwrap_or(self.steady);
        let used = limit.saturating_sub(remaining);
        match self.phase {
            Phase::Known { lo, hi } => {
                let slack = self.slack();
                let (first, _) = self.minutes(sent, lo, hi, slack);
                let (_, last) = self.minutes(received, lo, hi, slack);
                if first == last {
                    // Requests the server counted that kdit did not send: any of kdit's own
                    // reserved before this answer came may have overtaken this request.
                    let ours = self.charged(first, lo, hi, slack, received);
                    let extra = used.saturating_sub(ours);
                    let n = match self.foreign {
                        Some((k, n)) if k == first => n.max(extra),
                        _ => extra,
                    };
                    self.foreign = (n > 0).then_some((first, n));
                }
            }
            Phase::Unknown | Phase::Inconsistent => {
                if remaining == 0 {
                    let until = received + reset + SECOND;
                    self.paused_until = Some(self.paused_until.map_or(until, |u| u.max(until)));
                }
            }
        }
    }
}

/// The most requests Klaviyo's fixed windows let through between `a` and `b` (milliseconds
/// since the epoch, both included): for each wall-clock minute the span touches, `steady`, or
/// `burst` per wall-clock second touched when that is less. A client sending this many in the
/// span used 100% of what it was allowed.
pub fn allowed_by_fixed_windows(a: u64, b: u64, burst: u64, steady: u64) -> u64 {
    let mut total = 0;
    let mut minute = a / 60_000;
    while minute * 60_000 <= b {
        let start = (minute * 60_000).max(a);
        let end = ((minute + 1) * 60_000 - 1).min(b);
        let seconds = end / 1000 - start / 1000 + 1;
        total += steady.min(burst * seconds);
        minute += 1;
    }
    total
}

/// The process-wide limiter.
#[derive(Debug)]
pub struct RateLimiter {
    enabled: bool,
    origin: Instant,
    buckets: Mutex<HashMap<(Tier, String), Bucket>>,
}

impl RateLimiter {
    /// A limiter with Klaviyo's published budgets.
    pub fn klaviyo() -> RateLimiter {
        RateLimiter::with(true)
    }

    /// A limiter that never waits (for a sandbox started with `--rate-limits off`).
    pub fn unlimited() -> RateLimiter {
        RateLimiter::with(false)
    }

    fn with(enabled: bool) -> RateLimiter {
        RateLimiter {
            enabled,
            origin: Instant::now(),
            buckets: Mutex::new(HashMap::new()),
        }
    }

    fn ns(&self, t: Instant) -> Ns {
        if t >= self.origin {
            (t - self.origin).as_nanos() as Ns
        } else {
            -((self.origin - t).as_nanos() as Ns)
        }
    }

    fn with_bucket<R>(&self, tier: Tier, op: &str, f: impl FnOnce(&mut Bucket) -> R) -> R {
        let mut buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        let key = (tier, op.to_string());
        f(buckets.entry(key).or_insert_with(|| Bucket::new(tier)))
    }

    /// How long to wait before a request of `op` (`METHOD /api/template`, of `tier`) may go,
    /// reserving the slot when it is zero.
    pub fn try_acquire(&self, tier: Tier, op: &str, now: Instant) -> Duration {
        if !self.enabled {
            return Duration::ZERO;
        }
        let now = self.ns(now);
        let wait = self.with_bucket(tier, op, |b| b.try_acquire(now));
        Duration::from_nanos(wait.max(0) as u64)
    }

    /// Waits until a request of `op` may go; returns the moment its slot was reserved (for
    /// `observe`).
    pub async fn acquire(&self, tier: Tier, op: &str) -> Instant {
        loop {
            let now = Instant::now();
            let wait = self.try_acquire(tier, op, now);
            if wait.is_zero() {
                return now;
            }
            tokio::time::sleep(wait).await;
        }
    }

    /// An answer (not a 429) to a request reserved at `sent` arrived at `received`.
    pub fn observe(&self, tier: Tier, op: &str, sent: Instant, received: Instant, h: Headers) {
        if !self.enabled {
            return;
        }
        let (sent, received) = (self.ns(sent), self.ns(received));
        self.with_bucket(tier, op, |b| b.observe(sent, received, h));
    }

    /// Klaviyo said 429: hold every request of `op` for `retry_after`.
    pub fn pause(&self, tier: Tier, op: &str, retry_after: Duration) {
        let until = self.ns(Instant::now()) + retry_after.as_nanos() as Ns;
        self.with_bucket(tier, op, |b| {
            b.paused_until = Some(b.paused_until.map_or(until, |u| u.max(until)));
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sandbox::ratelimit::{Decision, RateLimiter as Server};

    const BULK: &str = "POST /api/profile-bulk-import-jobs";
    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn burst_then_wait_for_the_next_second() {
        let l = RateLimiter::klaviyo();
        let t0 = Instant::now();
        // The first request goes alone until its answer is seen.
        assert!(l.try_acquire(Tier::M, BULK, t0).is_zero());
        assert!(!l.try_acquire(Tier::M, BULK, t0).is_zero());
        l.observe(Tier::M, BULK, t0, t0 + MS, Headers::default());
        for _ in 1..10 {
            assert!(l.try_acquire(Tier::M, BULK, t0 + MS).is_zero());
        }
        let wait = l.try_acquire(Tier::M, BULK, t0 + MS);
        assert!(wait > Duration::from_millis(990) && wait <= Duration::from_millis(1010));
        assert!(l.try_acquire(Tier::M, BULK, t0 + wait + MS).is_zero());
        // Another operation of the same tier has its own budget.
        assert!(
            l.try_acquire(Tier::M, "GET /api/profile-bulk-import-jobs", t0 + MS)
                .is_zero()
        );
    }

    #[test]
    fn a_pause_holds_the_operation() {
        let l = RateLimiter::klaviyo();
        l.pause(Tier::L, "GET /api/profiles", Duration::from_secs(5));
        assert!(
            l.try_acquire(Tier::L, "GET /api/profiles", Instant::now()) > Duration::from_secs(4)
        );
        assert!(
            l.try_acquire(Tier::S, "GET /api/tags", Instant::now())
                .is_zero()
        );
        assert!(
            RateLimiter::unlimited()
                .try_acquire(Tier::Xs, "GET /api/accounts", Instant::now())
                .is_zero()
        );
    }

    /// A small deterministic generator for latencies.
    struct Lcg(u64);
    impl Lcg {
        fn below(&mut self, n: u64) -> u64 {
            self.0 = self
                .0
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (self.0 >> 33) % n
        }
    }

    struct Run {
        sent: u64,
        limited: u64,
        first_ms: u64,
        last_ms: u64,
    }

    /// Drives the limiter against the sandbox's model of Klaviyo's windows on a simulated
    /// clock: as many requests as the limiter lets go, each counted by the server after a
    /// random network delay, its answer (with `RateLimit-*` unless `headers` is false) seen
    /// after another one. `others` requests of another client hit the server first.
    fn simulate(start_ms: u64, seconds: u64, headers: bool, others: u32, seed: u64) -> Run {
        let l = RateLimiter::klaviyo();
        let mut server = Server::new(true);
        let mut rng = Lcg(seed);
        let t0 = Instant::now();
        for i in 0..others as u64 {
            // Spread over the 20 s before the start, within the burst limit.
            let at = start_ms - 20_000 + i * 120;
            assert!(matches!(
                server.check_at("POST", "/api/profile-bulk-import-jobs", &[], at),
                Decision::Allowed { .. }
            ));
        }
        // (answer time in ms from the start, reservation time, headers)
        let mut answers: Vec<(u64, u64, Headers)> = Vec::new();
        let mut now = 0u64; // µs from the start
        let end = seconds * 1_000_000;
        let mut run = Run {
            sent: 0,
            limited: 0,
            first_ms: 0,
            last_ms: 0,
        };
        let at = |us: u64| t0 + Duration::from_micros(us);
        // Requests on the wire: (arrival in µs from the start, reservation).
        let mut wire: Vec<(u64, u64)> = Vec::new();
        while now < end {
            // The server counts requests in the order they arrive, not as they were reserved.
            wire.sort_by_key(|w| w.0);
            while wire.first().is_some_and(|w| w.0 <= now) {
                let (arrive, sent) = wire.remove(0);
                let server_ms = start_ms + arrive / 1000;
                let h = match server.check_at(
                    "POST",
                    "/api/profile-bulk-import-jobs",
                    &[],
                    server_ms,
                ) {
                    Decision::Allowed {
                        limit,
                        remaining,
                        reset,
                    } => {
                        if run.sent == 0 {
                            run.first_ms = server_ms;
                        }
                        run.sent += 1;
                        run.last_ms = server_ms;
                        Headers {
                            limit: Some(limit),
                            remaining: Some(remaining),
                            reset: Some(reset as u32),
                        }
                    }
                    Decision::Limited { .. } => {
                        run.limited += 1;
                        Headers::default()
                    }
                    Decision::Unlimited => unreachable!(),
                };
                let h = if headers { h } else { Headers::default() };
                answers.push((arrive + 200 + rng.below(5_000), sent, h));
            }
            answers.sort_by_key(|a| a.0);
            while answers.first().is_some_and(|a| a.0 <= now) {
                let (recv, sent, h) = answers.remove(0);
                l.observe(Tier::M, BULK, at(sent), at(recv), h);
            }
            let wait = l.try_acquire(Tier::M, BULK, at(now));
            if wait.is_zero() {
                wire.push((now + 200 + rng.below(8_000), now));
                // Tasks reserve at distinct moments; their requests may overtake each other.
                now += 1 + rng.below(300);
            } else {
                // Sleep until the wait is over or the next arrival or answer.
                let wake = now + (wait.as_micros() as u64).max(1);
                now = answers
                    .iter()
                    .map(|a| a.0)
                    .chain(wire.iter().map(|w| w.0))
                    .fold(wake, u64::min);
            }
        }
        run
    }

    #[test]
    fn paces_to_at_least_90_percent_of_both_windows_without_a_429() {
        // Several starting points within the minute and second, two simulated minutes each.
        for (i, offset) in [0u64, 1_234, 17_500, 37_321, 59_950]
            .into_iter()
            .enumerate()
        {
            let start = 29_000_000 * 60_000 + offset;
            let run = simulate(start, 125, true, 0, i as u64 + 1);
            assert_eq!(run.limited, 0, "429s at offset {offset}");
            let allowed = allowed_by_fixed_windows(run.first_ms, run.last_ms, 10, 150);
            let share = run.sent as f64 / allowed as f64;
            // The target is 90%; this deterministic simulation reaches 97-100%, so less than
            // 95% is a pacing regression (e.g. kdit's own overtaking requests taken for
            // another client's, which cost 5-8 a minute).
            assert!(share >= 0.95, "offset {offset}: {} of {allowed}", run.sent);
            assert!(share <= 1.0);
            eprintln!("offset {offset}: {} sent, {allowed} allowed", run.sent);
            // And against the plain per-minute rate over the same two minutes.
            assert!(run.sent >= 270, "offset {offset}: {}", run.sent);
        }
    }

    #[test]
    fn without_headers_the_sliding_windows_still_cause_no_429() {
        for (i, offset) in [0u64, 29_999, 45_500].into_iter().enumerate() {
            let run = simulate(29_000_000 * 60_000 + offset, 125, false, 0, i as u64 + 7);
            assert_eq!(run.limited, 0, "429s at offset {offset}");
            assert!(run.sent >= 300, "{}", run.sent);
        }
    }

    #[test]
    fn requests_of_another_client_seen_in_remaining_are_left_room() {
        for (i, others) in [20u32, 100, 149].into_iter().enumerate() {
            let run = simulate(
                29_000_000 * 60_000 + 30_000,
                70,
                true,
                others,
                i as u64 + 11,
            );
            assert_eq!(run.limited, 0, "429s with {others} other requests");
            assert!(run.sent >= 150, "{}", run.sent);
        }
    }

    #[test]
    fn allowed_counts_fixed_windows() {
        // A whole minute: the steady limit.
        assert_eq!(allowed_by_fixed_windows(0, 59_999, 10, 150), 150);
        // 5 s: the burst binds.
        assert_eq!(allowed_by_fixed_windows(60_000, 64_999, 10, 150), 50);
        // 90 s from the middle of a minute: two minutes touched.
        assert_eq!(allowed_by_fixed_windows(30_000, 119_999, 10, 150), 300);
    }
}
