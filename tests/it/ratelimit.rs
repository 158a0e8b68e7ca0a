//! kdit's client against the sandbox with Klaviyo's real limits, over real HTTP: many tasks
//! asking at once for longer than the burst window, the limiter paced by the `RateLimit-*`
//! headers the sandbox sends. No 429 may reach kdit, and most of what the windows allow is
//! used. (The ≥ 90% proof over two simulated minutes is the unit test in
//! `src/klaviyo/ratelimit.rs`; here wall-clock noise on a busy machine is allowed for.)

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use kdit::klaviyo::client::{ApiKey, Client, Config};
use kdit::klaviyo::ratelimit::{Tier, allowed_by_fixed_windows};
use kdit::sandbox::{Sandbox, SandboxConfig};
use reqwest::Method;

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_millis() as u64
}

/// `tasks` tasks send `template` as fast as the limiter lets them for `seconds`; returns the
/// wall-clock times (ms) of the answers, the client and the sandbox.
async fn hammer(
    tier: Tier,
    path: &'static str,
    template: &'static str,
    tasks: usize,
    seconds: u64,
) -> (Vec<u64>, Client, Sandbox) {
    let sb = Sandbox::start(SandboxConfig::default())
        .await
        .expect("sandbox starts");
    let client =
        Client::new(Config::new(sb.base_url(), ApiKey::new(sb.api_key()))).expect("client builds");
    let times = Arc::new(Mutex::new(Vec::new()));
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..tasks {
        let (client, times) = (client.clone(), times.clone());
        set.spawn(async move {
            loop {
                // Stop asking when the next slot would come after the deadline.
                let r = tokio::time::timeout_at(
                    deadline.into(),
                    client.send(tier, Method::GET, path, template, None),
                )
                .await;
                match r {
                    Ok(r) => {
                        r.expect("request succeeds");
                        times.lock().unwrap().push(now_ms());
                    }
                    Err(_) => return,
                }
            }
        });
    }
    while let Some(r) = set.join_next().await {
        r.expect("task finishes");
    }
    let mut times = times.lock().unwrap().clone();
    times.sort_unstable();
    (times, client, sb)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn steady_and_burst_windows_are_used_without_a_429() {
    // GET /api/accounts is XS (1/s, 15/min): 16 s cross a burst window every second and
    // either fill a minute's 15 or cross a minute's boundary.
    let (times, client, sb) = hammer(Tier::Xs, "/api/accounts", "GET /api/accounts", 4, 16).await;
    assert_eq!(
        sb.stats().by_status.get(&429),
        None,
        "the sandbox answered 429"
    );
    assert_eq!(client.stats().rate_limited, 0);
    let (first, last) = (times[0], *times.last().unwrap());
    let allowed = allowed_by_fixed_windows(first, last, 1, 15);
    let sent = times.len() as u64;
    assert!(
        sent * 4 >= allowed * 3 && sent >= 10,
        "{sent} sent, {allowed} allowed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_tasks_stays_within_ten_a_second() {
    // GET /api/profile-bulk-import-jobs is M (10/s, 150/min); 16 tasks for 4 s.
    let (times, client, sb) = hammer(
        Tier::M,
        "/api/profile-bulk-import-jobs",
        "GET /api/profile-bulk-import-jobs",
        16,
        4,
    )
    .await;
    assert_eq!(
        sb.stats().by_status.get(&429),
        None,
        "the sandbox answered 429"
    );
    assert_eq!(client.stats().rate_limited, 0);
    let (first, last) = (times[0], *times.last().unwrap());
    let allowed = allowed_by_fixed_windows(first, last, 10, 150);
    let sent = times.len() as u64;
    assert!(
        sent * 4 >= allowed * 3 && sent >= 30,
        "{sent} sent, {allowed} allowed"
    );
}
