//! Fault and crash suites at scale: a large sync under injected faults, PostgreSQL dropping
//! the query mid-stream, SIGKILL at several points of a run and SIGINT. Every scenario ends
//! with the sandbox equal to the source: no duplicates, no lost rows.

use crate::support;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use kdit::sandbox::{FaultSpec, RateLimits, SandboxConfig};
use serde_json::Value;
use support::world::World;

const JOB: &str = r#"version: 1
name: pressure
query:
  sql: select id, email, first_name from customers where not gone order by id
profiles:
  key: email
  fields:
    email: { column: email, transform: [trim, lowercase] }
    external_id: id
    first_name: first_name
lists:
  - name: Everyone
    mode: mirror
batch: { size: BATCH }
"#;

/// A slow query: each row waits `ms` milliseconds on the server, so there is time to act
/// while it streams.
fn slow_job(batch: usize, ms: f64) -> String {
    JOB.replace("BATCH", &batch.to_string()).replace(
        "where not gone",
        &format!("where not gone and pg_sleep({}) is not null", ms / 1000.0),
    )
}

/// A test database with `n` customers, a sandbox, and `job.yaml` = `JOB` with `batch`.
async fn world(n: usize, config: SandboxConfig, batch: usize) -> World {
    let w = World::start(
        &format!(
            "create table customers (id int primary key, email text, first_name text, gone bool not null default false);
             insert into customers (id, email, first_name)
             select n, 'Customer' || n || '@Example.com ', 'Name' || n from generate_series(1, {n}) n;"
        ),
        config,
    )
    .await;
    w.job(&JOB.replace("BATCH", &batch.to_string()));
    w
}

/// Profiles kdit recorded as confirmed in its state.
async fn confirmed(w: &World) -> i64 {
    let db = w.db.client().await;
    db.query_opt(
        "select count(*) from kdit.profiles where job like 'pressure@%'",
        &[],
    )
    .await
    .ok()
    .flatten()
    .map(|r| r.get(0))
    .unwrap_or(0)
}

/// Re-runs until done and checks the sandbox equals the source.
async fn converges(w: &World, want: &HashSet<String>) {
    let again = w.kdit(&["run", "job.yaml", "-q"]).await;
    assert_eq!(again.code, 0, "re-run:\n{}\n{}", again.stdout, again.stderr);
    assert_eq!(&w.emails(), want);
    assert_eq!(w.list_members("Everyone"), want.len());
    let plan = w.kdit(&["plan", "job.yaml"]).await;
    assert!(plan.stdout.contains("No changes."), "{}", plan.stdout);
}

/// Emails of customers 1..=n.
fn expected(n: usize) -> HashSet<String> {
    (1..=n)
        .map(|i| format!("customer{i}@example.com"))
        .collect()
}

/// Polls `cond` every 5 ms for up to 30 s.
async fn wait_for<F, Fut>(what: &str, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if cond().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    panic!("timed out waiting for {what}");
}

/// Whether a backend other than ours is in the job's slow query (waiting in pg_sleep).
async fn query_running(db: &tokio_postgres::Client) -> bool {
    db.query_one(
        "select count(*) from pg_stat_activity where wait_event = 'PgSleep' and datname = current_database() and pid <> pg_backend_pid()",
        &[],
    )
    .await
    .map(|r| r.get::<_, i64>(0) > 0)
    .unwrap_or(false)
}

fn kill(pid: u32, signal: &str) {
    let s = std::process::Command::new("kill")
        .args([&format!("-{signal}"), &pid.to_string()])
        .status()
        .expect("kill");
    assert!(s.success(), "kill -{signal} {pid}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_sync_under_faults_ends_equal_to_the_source() {
    let n: usize = std::env::var("KDIT_PRESSURE_ROWS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(100_000);
    let w = world(
        n,
        SandboxConfig {
            rate_limits: RateLimits::Off,
            faults: "429=10%,5xx=5%,drop=2%,slow=1%:100ms".parse().unwrap(),
            seed: 11,
            ..SandboxConfig::default()
        },
        1000,
    )
    .await;
    let started = Instant::now();
    let run = w
        .kdit(&["run", "job.yaml", "-q", "--report", "r.json"])
        .await;
    let secs = started.elapsed().as_secs_f64();
    eprintln!("{n} rows under faults: {secs:.1} s");
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    assert_eq!(w.emails(), expected(n));
    assert_eq!(w.list_members("Everyone"), n);
    let report: Value =
        serde_json::from_str(&std::fs::read_to_string(w.dir.path().join("r.json")).unwrap())
            .unwrap();
    assert_eq!(report["created"].as_u64(), Some(n as u64), "{report}");
    assert!(report["api"]["retries"].as_u64().unwrap() > 0, "{report}");
    w.sb.set_faults(FaultSpec::none(), None);
    let plan = w.kdit(&["plan", "job.yaml"]).await;
    assert!(plan.stdout.contains("No changes."), "{}", plan.stdout);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgresql_dropping_the_query_fails_clearly_and_applies_nothing() {
    let w = world(
        300,
        SandboxConfig {
            rate_limits: RateLimits::Off,
            ..SandboxConfig::default()
        },
        100,
    )
    .await;
    assert_eq!(w.kdit(&["run", "job.yaml", "-q"]).await.code, 0);
    // Rows leave the query: a completed query would remove them from the mirror.
    w.db.execute("update customers set gone = true where id <= 50; update customers set first_name = 'X' where id = 60;")
        .await;
    w.job(&slow_job(100, 10.0));
    let writes_before = w.calls("POST") + w.calls("DELETE") + w.calls("PATCH");
    let child = w.command(&["run", "job.yaml", "-q"]).spawn().unwrap();
    let db = w.db.client().await;
    wait_for("the slow query", || query_running(&db)).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let killed: i64 = db
        .query_one(
            "select count(pg_terminate_backend(pid)) from pg_stat_activity where wait_event = 'PgSleep' and datname = current_database() and pid <> pg_backend_pid()",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(killed >= 1);
    let out = tokio::time::timeout(Duration::from_secs(30), child.wait_with_output())
        .await
        .expect("kdit ends after its backend is terminated")
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_ne!(out.status.code(), Some(0), "{stderr}");
    eprintln!("kdit said: {stderr}");
    assert!(
        stderr.contains("terminat") || stderr.contains("connection"),
        "the error says what happened: {stderr}"
    );
    assert_eq!(
        w.calls("POST") + w.calls("DELETE") + w.calls("PATCH"),
        writes_before,
        "nothing applied after the query failed"
    );
    assert_eq!(w.list_members("Everyone"), 300, "no list removals");
    // The next run is fine.
    w.job(&JOB.replace("BATCH", "100"));
    let again = w.kdit(&["run", "job.yaml", "-q"]).await;
    assert_eq!(again.code, 0, "{}\n{}", again.stdout, again.stderr);
    assert_eq!(w.list_members("Everyone"), 250);
    assert_eq!(
        w.sb.profile_by_email("customer60@example.com")
            .unwrap()
            .attributes["first_name"],
        "X"
    );
}

/// Where a SIGKILL lands.
#[derive(Debug, Clone, Copy)]
enum KillPoint {
    /// While PostgreSQL streams the query's rows (nothing sent yet).
    DuringQuery,
    /// After the first bulk job was posted, before Klaviyo finished it.
    BulkJobInFlight,
    /// Between batches: some confirmed and recorded, more to go.
    BetweenBatches,
}

async fn killed_at(point: KillPoint) {
    let w = world(
        1500,
        SandboxConfig {
            rate_limits: RateLimits::Off,
            job_latency: Duration::from_millis(300),
            ..SandboxConfig::default()
        },
        250,
    )
    .await;
    if let KillPoint::DuringQuery = point {
        w.job(&slow_job(250, 2.0));
    }
    let mut child = w.command(&["run", "job.yaml", "-q"]).spawn().unwrap();
    let db = w.db.client().await;
    match point {
        KillPoint::DuringQuery => {
            wait_for("the slow query", || query_running(&db)).await;
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        KillPoint::BulkJobInFlight => {
            wait_for("a bulk job", || async {
                w.calls("POST /api/profile-bulk-import-jobs") >= 1
            })
            .await;
        }
        KillPoint::BetweenBatches => {
            wait_for("two confirmed batches", || async {
                confirmed(&w).await >= 500
            })
            .await;
        }
    }
    let confirmed = confirmed(&w).await;
    child.start_kill().unwrap();
    let _ = child.wait().await;
    match point {
        KillPoint::DuringQuery => {
            assert_eq!(
                w.calls("POST /api/profile-bulk-import-jobs"),
                0,
                "{point:?}"
            );
            assert_eq!(confirmed, 0);
        }
        KillPoint::BulkJobInFlight => assert!(confirmed < 1500, "{point:?}: {confirmed}"),
        KillPoint::BetweenBatches => {
            assert!((500..1500).contains(&confirmed), "{point:?}: {confirmed}")
        }
    }
    // A killed run leaves its lock row behind; the re-run must not be refused for it.
    w.job(&JOB.replace("BATCH", "250"));
    converges(&w, &expected(1500)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_during_the_query_then_a_rerun_converges() {
    killed_at(KillPoint::DuringQuery).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_with_a_bulk_job_in_flight_then_a_rerun_converges() {
    killed_at(KillPoint::BulkJobInFlight).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_between_batches_then_a_rerun_converges() {
    killed_at(KillPoint::BetweenBatches).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigint_stops_within_seconds_with_130_and_says_how_to_resume() {
    let w = world(
        2000,
        SandboxConfig {
            rate_limits: RateLimits::Off,
            job_latency: Duration::from_millis(400),
            ..SandboxConfig::default()
        },
        200,
    )
    .await;
    let child = w.command(&["run", "job.yaml", "-q"]).spawn().unwrap();
    let pid = child.id().unwrap();
    wait_for("a bulk job", || async {
        w.calls("POST /api/profile-bulk-import-jobs") >= 1
    })
    .await;
    let sent = Instant::now();
    kill(pid, "INT");
    let out = tokio::time::timeout(Duration::from_secs(10), child.wait_with_output())
        .await
        .expect("kdit stops within 10 s of Ctrl-C")
        .unwrap();
    let took = sent.elapsed();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(took < Duration::from_secs(5), "stopped after {took:?}");
    assert_eq!(out.status.code(), Some(130), "{stderr}");
    assert!(
        stderr.contains("run `kdit run job.yaml` again to resume"),
        "{stderr}"
    );
    assert!(w.emails().len() < 2000);
    converges(&w, &expected(2000)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigint_during_the_query_cancels_it_and_exits_130() {
    let w = world(
        500,
        SandboxConfig {
            rate_limits: RateLimits::Off,
            ..SandboxConfig::default()
        },
        100,
    )
    .await;
    w.job(&slow_job(100, 20.0));
    let child = w.command(&["run", "job.yaml", "-q"]).spawn().unwrap();
    let pid = child.id().unwrap();
    let db = w.db.client().await;
    wait_for("the slow query", || query_running(&db)).await;
    let sent = Instant::now();
    kill(pid, "INT");
    let out = tokio::time::timeout(Duration::from_secs(10), child.wait_with_output())
        .await
        .expect("kdit stops within 10 s of Ctrl-C")
        .unwrap();
    let took = sent.elapsed();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(took < Duration::from_secs(5), "stopped after {took:?}");
    assert_eq!(out.status.code(), Some(130), "{stderr}");
    assert!(stderr.contains("was cancelled"), "{stderr}");
    assert!(stderr.contains("run `kdit run job.yaml` again"), "{stderr}");
    assert_eq!(w.calls("POST /api/profile-bulk-import-jobs"), 0);
    // The query was cancelled on the server, not left running.
    wait_for("the query to be gone", || async {
        !query_running(&db).await
    })
    .await;
    w.job(&JOB.replace("BATCH", "100"));
    converges(&w, &expected(500)).await;
}
