//! Client-side rate limiting: one limiter per process, shared by every task, with a budget
//! per Klaviyo rate-limit tier (burst per second and steady per minute).
//!
//! In: `acquire(tier)` before each request. Out: the request may go now, or after a wait that
//! keeps kdit inside both of Klaviyo's windows. Klaviyo counts in fixed windows; a sliding log
//! of recent sends never exceeds a fixed window either, so kdit itself causes no 429.

use std::collections::VecDeque;
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

    fn index(self) -> usize {
        self as usize
    }
}

#[derive(Debug)]
struct Window {
    burst: u32,
    steady: u32,
    sent: VecDeque<Instant>,
    /// No sends before this instant (set by a 429's Retry-After).
    paused_until: Option<Instant>,
}

/// The process-wide limiter.
#[derive(Debug)]
pub struct RateLimiter {
    enabled: bool,
    windows: [Mutex<Window>; 5],
}

const SECOND: Duration = Duration::from_secs(1);
const MINUTE: Duration = Duration::from_secs(60);

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
        let w = |t: Tier| {
            let (burst, steady) = t.limits();
            Mutex::new(Window {
                burst,
                steady,
                sent: VecDeque::with_capacity(steady as usize),
                paused_until: None,
            })
        };
        RateLimiter {
            enabled,
            windows: Tier::ALL.map(w),
        }
    }

    /// How long to wait before a request of `tier` may go, reserving the slot when it is zero.
    pub fn try_acquire(&self, tier: Tier, now: Instant) -> Duration {
        if !self.enabled {
            return Duration::ZERO;
        }
        let mut w = self.windows[tier.index()]
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if let Some(until) = w.paused_until {
            if until > now {
                return until - now;
            }
            w.paused_until = None;
        }
        while w
            .sent
            .front()
            .is_some_and(|t| now.duration_since(*t) >= MINUTE)
        {
            w.sent.pop_front();
        }
        let mut wait = Duration::ZERO;
        if w.sent.len() >= w.steady as usize {
            let oldest = w.sent[w.sent.len() - w.steady as usize];
            wait = wait.max(MINUTE.saturating_sub(now.duration_since(oldest)));
        }
        let in_last_second = w
            .sent
            .iter()
            .rev()
            .take_while(|t| now.duration_since(**t) < SECOND)
            .count();
        if in_last_second >= w.burst as usize {
            let idx = w.sent.len() - w.burst as usize;
            wait = wait.max(SECOND.saturating_sub(now.duration_since(w.sent[idx])));
        }
        if wait.is_zero() {
            w.sent.push_back(now);
        }
        wait
    }

    /// Waits until a request of `tier` may go.
    pub async fn acquire(&self, tier: Tier) {
        loop {
            let wait = self.try_acquire(tier, Instant::now());
            if wait.is_zero() {
                return;
            }
            tokio::time::sleep(wait).await;
        }
    }

    /// Klaviyo said 429: hold every request of this tier for `retry_after`.
    pub fn pause(&self, tier: Tier, retry_after: Duration) {
        let mut w = self.windows[tier.index()]
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let until = Instant::now() + retry_after;
        w.paused_until = Some(w.paused_until.map_or(until, |u| u.max(until)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn burst_then_wait_for_the_next_second() {
        let l = RateLimiter::klaviyo();
        let t0 = Instant::now();
        for _ in 0..10 {
            assert_eq!(l.try_acquire(Tier::M, t0), Duration::ZERO);
        }
        let wait = l.try_acquire(Tier::M, t0);
        assert_eq!(wait, SECOND);
        assert_eq!(l.try_acquire(Tier::M, t0 + SECOND), Duration::ZERO);
    }

    #[test]
    fn steady_window_caps_a_minute() {
        let l = RateLimiter::klaviyo();
        let t0 = Instant::now();
        let mut sent = 0;
        let mut now = t0;
        // Ask every 10 ms for 70 s of virtual time.
        while now < t0 + Duration::from_secs(70) {
            if l.try_acquire(Tier::M, now).is_zero() {
                sent += 1;
            }
            now += Duration::from_millis(10);
        }
        // 150 in the first minute, then the window slides: at most 150 + the 10 s tail's share.
        assert!(sent <= 150 + 100, "{sent}");
        assert!(sent >= 150, "{sent}");
        // No 60 s span holds more than 150 sends.
        let w = l.windows[Tier::M.index()].lock().unwrap();
        let v: Vec<Instant> = w.sent.iter().copied().collect();
        for (i, t) in v.iter().enumerate() {
            let n = v[i..]
                .iter()
                .take_while(|u| u.duration_since(*t) < MINUTE)
                .count();
            assert!(n <= 150);
        }
    }

    #[test]
    fn a_pause_holds_the_tier() {
        let l = RateLimiter::klaviyo();
        l.pause(Tier::L, Duration::from_secs(5));
        assert!(l.try_acquire(Tier::L, Instant::now()) > Duration::from_secs(4));
        assert!(l.try_acquire(Tier::S, Instant::now()).is_zero());
        assert!(
            RateLimiter::unlimited()
                .try_acquire(Tier::Xs, Instant::now())
                .is_zero()
        );
    }
}
