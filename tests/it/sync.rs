//! End to end: the real `kdit` binary syncing a real PostgreSQL database into an in-process
//! sandbox, reached exactly as real Klaviyo would be (KLAVIYO_BASE_URL + KLAVIYO_API_KEY).

use crate::support;

use std::collections::HashSet;
use std::time::Duration;

use kdit::sandbox::{FaultSpec, RateLimits, Sandbox, SandboxConfig};
use serde_json::Value;
use support::world::World;

const JOB: &str = r#"version: 1
name: shop-sync
query:
  sql: select id, email, first_name, ltv, vip from customers where not gone order by id
profiles:
  key: email
  fields:
    email: { column: email, transform: [trim, lowercase] }
    external_id: id
    first_name: first_name
    properties.ltv: { column: ltv, type: number }
    properties.vip: vip
lists:
  - name: Everyone
    mode: mirror
batch: { size: 100 }
"#;

/// A test database with `customers` rows, a sandbox, and `job.yaml` = `JOB`.
async fn world(customers: usize) -> World {
    world_with(
        customers,
        SandboxConfig {
            rate_limits: RateLimits::Off,
            ..SandboxConfig::default()
        },
    )
    .await
}

async fn world_with(customers: usize, config: SandboxConfig) -> World {
    let w = World::start(
        &format!(
            "create table customers (id int primary key, email text, first_name text, ltv numeric, vip bool, gone bool not null default false);
             insert into customers (id, email, first_name, ltv, vip)
             select n, 'Customer' || n || '@Example.com ', 'Name' || n, (n * 7 % 500)::numeric / 4, n % 10 = 0
             from generate_series(1, {customers}) n;"
        ),
        config,
    )
    .await;
    w.job(JOB);
    w
}

fn expected_emails(range: std::ops::RangeInclusive<usize>) -> HashSet<String> {
    range.map(|n| format!("customer{n}@example.com")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_sync_creates_everything_and_a_rerun_changes_nothing() {
    let w = world(250).await;
    let run = w
        .kdit(&["run", "job.yaml", "--report", "report.json"])
        .await;
    run.snapshot("sync/first_sync_creates_everything_and_a_rerun_changes_nothing__run");
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    assert!(run.stdout.contains("+ 250 to create"), "{}", run.stdout);
    assert!(
        run.stdout.contains("+ Everyone   created, + 250 add"),
        "{}",
        run.stdout
    );
    assert_eq!(w.emails(), expected_emails(1..=250));
    assert_eq!(w.list_members("Everyone"), 250);
    let p =
        w.sb.profile_by_email("customer10@example.com")
            .expect("profile");
    assert_eq!(p.external_id.as_deref(), Some("10"));
    assert_eq!(p.attributes["first_name"], "Name10");
    assert_eq!(p.attributes["properties"]["ltv"], serde_json::json!(17.5));
    assert_eq!(p.attributes["properties"]["vip"], true);
    let report: Value =
        serde_json::from_str(&std::fs::read_to_string(w.path("report.json")).unwrap()).unwrap();
    assert_eq!(report["created"], 250);
    assert_eq!(report["bulk_jobs"], 3);
    assert_eq!(w.calls("POST /api/profile-bulk-import-jobs"), 3);

    let bulk_before = w.calls("POST /api/profile-bulk-import-jobs");
    let again = w.kdit(&["run", "job.yaml"]).await;
    again.snapshot("sync/first_sync_creates_everything_and_a_rerun_changes_nothing__again");
    assert_eq!(again.code, 0, "{}\n{}", again.stdout, again.stderr);
    assert!(again.stdout.contains("No changes."), "{}", again.stdout);
    assert_eq!(
        w.calls("POST /api/profile-bulk-import-jobs"),
        bulk_before,
        "a no-change run sent profiles"
    );
    assert_eq!(
        w.calls("POST /api/lists/{id}/relationships/profiles") + w.calls("DELETE"),
        0
    );

    let history = w.kdit(&["history", "job.yaml"]).await;
    history.snapshot("sync/first_sync_creates_everything_and_a_rerun_changes_nothing__history");
    assert_eq!(history.code, 0, "{}", history.stderr);
    assert!(history.stdout.contains("250 created"), "{}", history.stdout);
}

/// A run that writes many profiles refreshes the state's statistics, so the next run reads
/// the state as the table now is; a run writing a few does not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_run_refreshes_the_state_statistics() {
    // What the planner believes `kdit.profiles` holds (-1 or 0 until analysed with rows).
    async fn believed_rows(w: &World) -> f32 {
        w.db.client()
            .await
            .query_one(
                "select reltuples from pg_class where oid = 'kdit.profiles'::regclass",
                &[],
            )
            .await
            .unwrap()
            .get(0)
    }
    // Vacuums of `kdit.profiles` (counted when the vacuuming connection ends: kdit's has).
    async fn vacuums(w: &World) -> i64 {
        let db = w.db.client().await;
        let mut count = 0;
        for _ in 0..40 {
            count = db
                .query_one(
                    "select vacuum_count from pg_stat_user_tables
                     where schemaname = 'kdit' and relname = 'profiles'",
                    &[],
                )
                .await
                .unwrap()
                .get(0);
            if count > 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
            let _ = db.execute("select pg_stat_clear_snapshot()", &[]).await;
        }
        count
    }
    let w = world(1_200).await;
    let run = w.kdit(&["run", "job.yaml"]).await;
    run.snapshot("sync/a_large_run_refreshes_the_state_statistics__run");
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    assert_eq!(believed_rows(&w).await, 1_200.0);
    // A run that wrote the whole state vacuums it too.
    assert_eq!(vacuums(&w).await, 1);

    let small = world(10).await;
    let run = small.kdit(&["run", "job.yaml"]).await;
    run.snapshot("sync/a_large_run_refreshes_the_state_statistics__run_2");
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    assert!(
        believed_rows(&small).await <= 0.0,
        "10 writes do not call for an analyze"
    );
    assert_eq!(
        vacuums(&small).await,
        0,
        "10 writes do not call for a vacuum"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changed_rows_are_sent_with_field_level_diffs_and_left_rows_leave_the_mirror() {
    let w = world(200).await;
    assert_eq!(w.kdit(&["run", "job.yaml", "-q"]).await.code, 0);
    w.db.execute("update customers set first_name = 'Renamed' where id in (3, 4); update customers set gone = true where id = 5;").await;
    let plan = w.kdit(&["plan", "job.yaml", "--detailed-exitcode"]).await;
    plan.snapshot(
        "sync/changed_rows_are_sent_with_field_level_diffs_and_left_rows_leave_the_mirror__plan",
    );
    assert_eq!(plan.code, 2, "{}\n{}", plan.stdout, plan.stderr);
    assert!(
        plan.stdout.contains("  ~   2 to update\n"),
        "{}",
        plan.stdout
    );
    assert!(
        plan.stdout.contains(
            "Plan: 2 profiles to write in 1 bulk job, 1 list to change (0 adds, 1 removal).\n"
        ),
        "{}",
        plan.stdout
    );
    assert!(
        plan.stdout.contains("first_name  \"Name3\" → \"Renamed\""),
        "{}",
        plan.stdout
    );
    assert!(
        plan.stdout
            .contains("~ Everyone   - 1 remove (rows left the query)"),
        "{}",
        plan.stdout
    );

    let bulk_before = w.calls("POST /api/profile-bulk-import-jobs");
    let run = w.kdit(&["run", "job.yaml", "--report", "r.json"]).await;
    run.snapshot(
        "sync/changed_rows_are_sent_with_field_level_diffs_and_left_rows_leave_the_mirror__run",
    );
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    let report: Value =
        serde_json::from_str(&std::fs::read_to_string(w.path("r.json")).unwrap()).unwrap();
    assert_eq!(
        (report["updated"].as_u64(), report["created"].as_u64()),
        (Some(2), Some(0))
    );
    assert_eq!(report["list_removals"], 1);
    assert_eq!(
        w.calls("POST /api/profile-bulk-import-jobs"),
        bulk_before + 1
    );
    assert_eq!(
        w.sb.profile_by_email("customer3@example.com")
            .unwrap()
            .attributes["first_name"],
        "Renamed"
    );
    assert_eq!(w.list_members("Everyone"), 199);
    // Removal is list membership only: the profile stays.
    assert!(w.sb.profile_by_email("customer5@example.com").is_some());
    assert!(
        w.kdit(&["plan", "job.yaml"])
            .await
            .stdout
            .contains("No changes.")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_saved_plan_applies_and_a_stale_one_is_refused() {
    let w = world(50).await;
    let plan = w.kdit(&["plan", "job.yaml", "-o", "plan.json"]).await;
    plan.snapshot("sync/a_saved_plan_applies_and_a_stale_one_is_refused__plan");
    assert_eq!(plan.code, 0, "{}", plan.stderr);
    let applied = w.kdit(&["apply", "plan.json"]).await;
    applied.snapshot("sync/a_saved_plan_applies_and_a_stale_one_is_refused__applied");
    assert_eq!(applied.code, 0, "{}\n{}", applied.stdout, applied.stderr);
    assert_eq!(w.emails().len(), 50);

    // The same plan again: the state moved (it was applied).
    let again = w.kdit(&["apply", "plan.json"]).await;
    again.snapshot("sync/a_saved_plan_applies_and_a_stale_one_is_refused__again");
    assert_eq!(again.code, 1);
    assert!(
        again
            .stderr
            .contains("the saved plan is stale: the state moved"),
        "{}",
        again.stderr
    );

    // A fresh plan, then the data changes before it is applied.
    w.db.execute("update customers set first_name = 'Late' where id = 1")
        .await;
    assert_eq!(
        w.kdit(&["plan", "job.yaml", "-o", "plan2.json"]).await.code,
        0
    );
    w.db.execute("update customers set first_name = 'Later' where id = 2")
        .await;
    let stale = w.kdit(&["apply", "plan2.json"]).await;
    stale.snapshot("sync/a_saved_plan_applies_and_a_stale_one_is_refused__stale");
    assert_eq!(stale.code, 1);
    assert!(
        stale
            .stderr
            .contains("the query's result changed since the plan was made"),
        "{}",
        stale.stderr
    );
    assert_eq!(
        w.sb.profile_by_email("customer1@example.com")
            .unwrap()
            .attributes["first_name"],
        "Name1"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limit_storms_and_server_errors_still_converge() {
    let faults: FaultSpec = "429=15%,5xx=10%,drop=3%".parse().unwrap();
    let w = world_with(
        300,
        SandboxConfig {
            rate_limits: RateLimits::Off,
            faults,
            seed: 7,
            ..SandboxConfig::default()
        },
    )
    .await;
    let run = w.kdit(&["run", "job.yaml", "--report", "r.json"]).await;
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    assert_eq!(w.emails(), expected_emails(1..=300));
    assert_eq!(w.list_members("Everyone"), 300);
    let report: Value =
        serde_json::from_str(&std::fs::read_to_string(w.path("r.json")).unwrap()).unwrap();
    let retried = report["api"]["retries"].as_u64().unwrap();
    assert!(
        retried > 0,
        "faults were injected, so the report counts retries: {report}"
    );
    assert!(
        report["api"]["rate_limited"].as_u64().unwrap() > 0,
        "{report}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rejected_rows_and_import_errors_land_in_the_rejects_file() {
    let faults: FaultSpec = "bulk-fail=10%".parse().unwrap();
    let w = world_with(
        100,
        SandboxConfig {
            rate_limits: RateLimits::Off,
            faults,
            seed: 3,
            ..SandboxConfig::default()
        },
    )
    .await;
    w.db.execute("update customers set email = 'not-an-email' where id = 7; update customers set email = null where id = 8;").await;
    let run = w
        .kdit(&[
            "run",
            "job.yaml",
            "--rejects",
            "rejects.csv",
            "--report",
            "r.json",
        ])
        .await;
    assert_eq!(
        run.code, 67,
        "partial failure: {}\n{}",
        run.stdout, run.stderr
    );
    let csv = std::fs::read_to_string(w.path("rejects.csv")).unwrap();
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(lines[0], "row,key,field,rule,message");
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("7,") && l.contains("email_syntax")),
        "{csv}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("8,") && l.contains("key_missing")),
        "{csv}"
    );
    let report: Value =
        serde_json::from_str(&std::fs::read_to_string(w.path("r.json")).unwrap()).unwrap();
    let failed = report["failed"].as_u64().unwrap();
    assert!(
        failed > 0,
        "bulk-fail faults should fail some profiles: {report}"
    );
    assert_eq!(lines.len() as u64 - 1, failed + 2, "{csv}");
    assert_eq!(w.emails().len() as u64, 98 - failed);
    // The failed profiles were not recorded as synced: the next run sends them again.
    w.sb.set_faults(FaultSpec::none(), None);
    let again = w.kdit(&["run", "job.yaml", "--report", "r2.json"]).await;
    again.snapshot("sync/rejected_rows_and_import_errors_land_in_the_rejects_file__again");
    assert_eq!(again.code, 67, "{}", again.stderr);
    let r2: Value =
        serde_json::from_str(&std::fs::read_to_string(w.path("r2.json")).unwrap()).unwrap();
    assert_eq!(r2["created"].as_u64().unwrap(), failed);
    assert_eq!(w.emails().len(), 98);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_concurrent_run_is_refused_with_who_holds_the_lock() {
    let w = world(10).await;
    let client = w.db.client().await;
    let state = kdit::state::State::open(&client, "kdit").await.unwrap();
    let run_id = state.begin_run("shop-sync", "ci-host:4242").await.unwrap();
    let second = w.kdit(&["run", "job.yaml"]).await;
    second.snapshot("sync/a_second_concurrent_run_is_refused_with_who_holds_the_lock__second");
    assert_eq!(second.code, 1);
    assert!(
        second.stderr.contains(&format!(
            "job `shop-sync` is already running (run #{run_id} by ci-host:4242, since "
        )),
        "{}",
        second.stderr
    );
    assert!(w.sb.profiles().is_empty());
    state
        .finish_run("shop-sync", run_id, "ok", &Value::Null)
        .await
        .unwrap();
    assert_eq!(w.kdit(&["run", "job.yaml", "-q"]).await.code, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_killed_mid_way_resumes_without_duplicates() {
    let w = world_with(
        2000,
        SandboxConfig {
            rate_limits: RateLimits::Off,
            job_latency: Duration::from_millis(400),
            ..SandboxConfig::default()
        },
    )
    .await;
    w.job(&JOB.replace("size: 100", "size: 200"));
    let mut child = w
        .command(&["run", "job.yaml", "-q"])
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Kill once a few batches were confirmed (recorded in the state) but before the end.
    let db = w.db.client().await;
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let mut confirmed = 0i64;
    while std::time::Instant::now() < deadline {
        let row = db
            .query_opt(
                "select count(*) from kdit.profiles where job like 'shop-sync@%'",
                &[],
            )
            .await
            .ok()
            .flatten();
        confirmed = row.map(|r| r.get(0)).unwrap_or(0);
        if confirmed >= 400 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    child.start_kill().unwrap();
    let _ = child.wait().await;
    assert!(
        (400..2000).contains(&confirmed),
        "killed at {confirmed} confirmed profiles"
    );
    let again = w.kdit(&["run", "job.yaml", "--report", "r.json"]).await;
    assert_eq!(again.code, 0, "{}\n{}", again.stdout, again.stderr);
    assert_eq!(w.emails(), expected_emails(1..=2000));
    assert_eq!(w.list_members("Everyone"), 2000);
    let report: Value =
        serde_json::from_str(&std::fs::read_to_string(w.path("r.json")).unwrap()).unwrap();
    // Only what was not confirmed before the kill is sent again.
    let resent = report["created"].as_u64().unwrap();
    assert!(
        resent <= 2000 - confirmed as u64,
        "{resent} sent again after {confirmed} were confirmed"
    );
    assert!(
        w.kdit(&["plan", "job.yaml"])
            .await
            .stdout
            .contains("No changes.")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_guard_stops_a_mass_removal_before_any_write() {
    let w = world(100).await;
    w.job(&format!("{JOB}guards: {{ max_removals: 5% }}\n"));
    assert_eq!(w.kdit(&["run", "job.yaml", "-q"]).await.code, 0);
    w.db.execute("update customers set gone = true where id <= 20; update customers set first_name = 'X' where id = 50;").await;
    let run = w.kdit(&["run", "job.yaml"]).await;
    run.snapshot("sync/a_guard_stops_a_mass_removal_before_any_write__run");
    assert_eq!(run.code, 66, "{}\n{}", run.stdout, run.stderr);
    assert!(run.stdout.contains("✗ STOP"), "{}", run.stdout);
    assert!(
        run.stderr
            .contains("a guard stopped the run before any write"),
        "{}",
        run.stderr
    );
    let writes: u64 =
        w.sb.request_counts()
            .iter()
            .filter(|(k, _)| !k.starts_with("GET"))
            .map(|(_, v)| *v)
            .sum();
    assert_eq!(w.list_members("Everyone"), 100);
    assert_eq!(
        w.sb.profile_by_email("customer50@example.com")
            .unwrap()
            .attributes["first_name"],
        "Name50"
    );
    assert_eq!(
        writes,
        w.calls("POST /api/profile-bulk-import-jobs") + w.calls("POST /api/lists"),
        "only the first run wrote"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_an_api_key_the_error_says_what_to_do() {
    let w = world(1).await;
    let out = w
        .command(&["plan", "job.yaml"])
        .env_remove("KLAVIYO_API_KEY")
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("KLAVIYO_API_KEY is not set"), "{stderr}");
    assert!(stderr.contains("--sandbox"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_is_kept_per_klaviyo_account() {
    let mut w = world(30).await;
    assert_eq!(w.kdit(&["run", "job.yaml", "-q"]).await.code, 0);
    // Another account (a fresh sandbox) knows none of it: everything is created there too.
    w.sb = Sandbox::start(SandboxConfig {
        rate_limits: RateLimits::Off,
        ..SandboxConfig::default()
    })
    .await
    .unwrap();
    let plan = w.kdit(&["plan", "job.yaml"]).await;
    plan.snapshot("sync/state_is_kept_per_klaviyo_account__plan");
    assert!(plan.stdout.contains("+ 30 to create"), "{}", plan.stdout);
    assert_eq!(w.kdit(&["run", "job.yaml", "-q"]).await.code, 0);
    assert_eq!(w.emails().len(), 30);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_request_kdit_sends_matches_klaviyos_spec() {
    let w = world_with(
        120,
        SandboxConfig {
            rate_limits: RateLimits::Off,
            capture_bodies: true,
            ..SandboxConfig::default()
        },
    )
    .await;
    // `on_null: unset` exercises the profile-import endpoint (bulk import cannot clear).
    w.job(&JOB.replace("  key: email\n", "  key: email\n  on_null: unset\n"));
    assert_eq!(w.kdit(&["run", "job.yaml", "-q"]).await.code, 0);
    w.db.execute("update customers set first_name = null where id = 2; update customers set gone = true where id in (3, 4);").await;
    let run = w
        .kdit(&["run", "job.yaml", "-q", "--report", "r.json"])
        .await;
    run.snapshot("sync/every_request_kdit_sends_matches_klaviyos_spec__run");
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(
        w.sb.profile_by_email("customer2@example.com")
            .unwrap()
            .attributes["first_name"]
            .is_null()
    );
    // The checker itself refuses a body the spec does not allow.
    assert!(
        support::openapi::check_request(
            "POST",
            "/api/lists",
            &serde_json::json!({"data": {"type": "list"}})
        )
        .is_err()
    );
    let captured = w.sb.captured_requests();
    let methods: HashSet<String> = captured
        .iter()
        .map(|c| {
            format!(
                "{} {}",
                c.method,
                support::openapi::template_for(&c.uri).unwrap_or_default()
            )
        })
        .collect();
    for expected in [
        "POST /api/lists",
        "POST /api/profile-bulk-import-jobs",
        "POST /api/profile-import",
        "DELETE /api/lists/{id}/relationships/profiles",
    ] {
        assert!(
            methods.contains(expected),
            "no {expected} among {methods:?}"
        );
    }
    for c in &captured {
        let body: Value = serde_json::from_slice(&c.body).expect("request bodies are JSON");
        if let Err(e) = support::openapi::check_request(&c.method, &c.uri, &body) {
            panic!("kdit sent a request Klaviyo's spec does not allow:\n{e}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mirror_keyed_by_external_id_removes_exactly_the_rows_that_left() {
    let w = world(40).await;
    w.job(
        &JOB.replace("  key: email\n", "  key: external_id\n")
            .replace(
                "external_id: id",
                "external_id: { column: id, type: string }",
            ),
    );
    assert_eq!(w.kdit(&["run", "job.yaml", "-q"]).await.code, 0);
    assert_eq!(w.list_members("Everyone"), 40);
    w.db.execute("update customers set gone = true where id in (7, 8, 9)")
        .await;
    let plan = w.kdit(&["plan", "job.yaml"]).await;
    plan.snapshot("sync/a_mirror_keyed_by_external_id_removes_exactly_the_rows_that_left__plan");
    assert!(
        plan.stdout.contains("- 3 remove (rows left the query)"),
        "{}",
        plan.stdout
    );
    assert!(plan.stdout.contains("- e.g. 7, 8, 9"), "{}", plan.stdout);
    assert_eq!(w.kdit(&["run", "job.yaml", "-q"]).await.code, 0);
    let list =
        w.sb.lists()
            .into_iter()
            .find(|l| l.name == "Everyone")
            .unwrap();
    let gone: HashSet<String> = ["7", "8", "9"]
        .iter()
        .map(|x| {
            w.sb.profiles()
                .into_iter()
                .find(|p| p.external_id.as_deref() == Some(*x))
                .unwrap()
                .id
        })
        .collect();
    assert_eq!(list.members.len(), 37);
    assert!(list.members.iter().all(|m| !gone.contains(m)));
    assert!(
        w.kdit(&["plan", "job.yaml"])
            .await
            .stdout
            .contains("No changes.")
    );
}

/// The plan a `kdit plan --json` prints.
async fn plan_json(w: &World, job: &str) -> Value {
    let out = w.kdit(&["plan", job, "--json"]).await;
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    serde_json::from_str(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", out.stdout))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unchanged_rows_are_recognised_by_fingerprint_without_being_transformed() {
    let w = world(300).await;
    w.ok(&["run", "job.yaml", "-q"]).await;

    // Every row is exactly as sent: recognised, none transformed.
    let p = plan_json(&w, "job.yaml").await;
    assert_eq!(
        (p["unchanged"].as_u64(), p["recognised"].as_u64()),
        (Some(300), Some(300)),
        "{p}"
    );

    // A mapping change that leaves every payload as it was: no row is recognised (the
    // fingerprints cover the mapping), nothing is sent, and the run records the new
    // fingerprints so the next plan recognises every row again.
    let trimmed = JOB.replace(
        "first_name: first_name",
        "first_name: { column: first_name, transform: trim }",
    );
    w.job(&trimmed);
    let p = plan_json(&w, "job.yaml").await;
    assert_eq!(
        (p["unchanged"].as_u64(), p["recognised"].as_u64()),
        (Some(300), Some(0)),
        "{p}"
    );
    let bulk = w.calls("POST /api/profile-bulk-import-jobs");
    let run = w.ok(&["run", "job.yaml"]).await;
    run.snapshot(
        "sync/unchanged_rows_are_recognised_by_fingerprint_without_being_transformed__run",
    );
    assert!(run.stdout.contains("No changes."), "{}", run.stdout);
    assert_eq!(w.calls("POST /api/profile-bulk-import-jobs"), bulk);
    let p = plan_json(&w, "job.yaml").await;
    assert_eq!(p["recognised"].as_u64(), Some(300), "{p}");

    // A changed row is not recognised: it is transformed and sent, with its new value.
    w.db.execute("update customers set first_name = 'Changed' where id = 7")
        .await;
    let p = plan_json(&w, "job.yaml").await;
    assert_eq!(
        (p["updates"].as_u64(), p["recognised"].as_u64()),
        (Some(1), Some(299)),
        "{p}"
    );
    w.ok(&["run", "job.yaml", "-q"]).await;
    let seven =
        w.sb.profile_by_email("customer7@example.com")
            .expect("profile");
    assert_eq!(seven.attributes["first_name"], "Changed");
    let p = plan_json(&w, "job.yaml").await;
    assert_eq!(
        (p["updates"].as_u64(), p["recognised"].as_u64()),
        (Some(0), Some(300)),
        "{p}"
    );

    // A row repeated byte for byte: the first is recognised, the copy is still refused as a
    // duplicate key (it is transformed to say so).
    w.job(&trimmed.replace(
        "from customers where not gone order by id",
        "from customers where not gone union all select id, email, first_name, ltv, vip from customers where id = 1",
    ));
    let p = plan_json(&w, "job.yaml").await;
    assert_eq!(
        (p["rows"].as_u64(), p["rejected"].as_u64()),
        (Some(301), Some(1)),
        "{p}"
    );
    assert_eq!(p["reject_counts"][0]["rule"], "duplicate_key", "{p}");
    assert_eq!(p["recognised"].as_u64(), Some(300), "{p}");

    // A changed copy of a known row's key, after it and before it: whichever comes first
    // wins, recognised or transformed, and the other is refused as a duplicate.
    let query = "select id, email, first_name, ltv, vip from customers where not gone order by id";
    let copy = "select id, email, 'Other' as first_name, ltv, vip from customers where id =";
    for (sql, updates, recognised) in [
        (
            format!(
                "{} union all {copy} 2",
                query.trim_end_matches(" order by id")
            ),
            0,
            300,
        ),
        (format!("({copy} 3) union all ({query})"), 1, 299),
    ] {
        w.job(&trimmed.replace(query, &sql));
        let p = plan_json(&w, "job.yaml").await;
        assert_eq!(
            (
                p["rows"].as_u64(),
                p["rejected"].as_u64(),
                p["updates"].as_u64(),
                p["recognised"].as_u64()
            ),
            (Some(301), Some(1), Some(updates), Some(recognised)),
            "{sql}: {p}"
        );
        assert_eq!(p["reject_counts"][0]["rule"], "duplicate_key", "{p}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_version_3_state_migrates_and_still_diffs_fields_and_lists() {
    let w = world(120).await;
    assert_eq!(w.kdit(&["run", "job.yaml", "-q"]).await.code, 0);
    // Put the state back as migration 3 left it: each confirmed payload inline in
    // `profiles`, hashes as `bytea`, list memberships as names, a write time on every row.
    w.db.execute(
        "create table kdit.profiles_v3 as
           select p.job, p.key, decode(replace(p.hash::text, '-', ''), 'hex') as hash,
                  l.payload,
                  array(select b.name from kdit.list_bits b
                        where b.job = p.job and p.lists & (1::bigint << b.bit) <> 0) as lists,
                  null::bigint as run_id, now() as updated_at,
                  decode(replace(p.source::text, '-', ''), 'hex') as source
           from kdit.profiles p join kdit.payloads l using (job, key);
         drop table kdit.profiles, kdit.payloads, kdit.list_bits, kdit.versions;
         alter table kdit.profiles_v3 rename to profiles;
         alter table kdit.profiles add primary key (job, key),
           alter column hash set not null, alter column payload set not null,
           alter column lists set not null, alter column lists set default '{}',
           alter column updated_at set not null, alter column updated_at set default now();
         delete from kdit.migrations where version >= 4;",
    )
    .await;
    let db = w.db.client().await;
    let inline: i64 = db
        .query_one(
            "select count(*) from kdit.profiles
             where payload->>'email' is not null and lists = '{Everyone}'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(inline, 120);

    // The next run migrates, and finds nothing to do: every row is still recognised by its
    // fingerprint, and still a member of the list.
    let again = w.kdit(&["plan", "job.yaml", "--json"]).await;
    again.snapshot("sync/a_version_3_state_migrates_and_still_diffs_fields_and_lists__again");
    assert_eq!(again.code, 0, "{}\n{}", again.stdout, again.stderr);
    let p: Value = serde_json::from_str(&again.stdout).expect("plan JSON");
    assert_eq!(
        (p["unchanged"].as_u64(), p["recognised"].as_u64()),
        (Some(120), Some(120)),
        "{p}"
    );
    assert_eq!(p["lists"][0]["adds"], 0, "{p}");
    assert_eq!(p["lists"][0]["removes"], 0, "{p}");
    let version: i32 = db
        .query_one("select max(version) from kdit.migrations", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(version, 5);
    let payload_column: i64 = db
        .query_one(
            "select count(*) from information_schema.columns
             where table_schema = 'kdit' and table_name = 'profiles' and column_name = 'payload'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(payload_column, 0, "profiles still has the payload column");
    let moved: i64 = db
        .query_one(
            "select count(*) from kdit.payloads where job like 'shop-sync@%'
             and payload->'properties' ? 'ltv'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(moved, 120);

    // The payloads moved with the profiles: a change shows old → new field by field.
    w.db.execute("update customers set first_name = 'Renamed' where id = 7;")
        .await;
    let plan = w.kdit(&["plan", "job.yaml"]).await;
    plan.snapshot("sync/a_version_3_state_migrates_and_still_diffs_fields_and_lists__plan");
    assert!(
        plan.stdout.contains("  ~   1 to update\n"),
        "{}",
        plan.stdout
    );
    assert!(
        plan.stdout.contains("first_name  \"Name7\" → \"Renamed\""),
        "{}",
        plan.stdout
    );
    let run = w.kdit(&["run", "job.yaml", "-q"]).await;
    run.snapshot("sync/a_version_3_state_migrates_and_still_diffs_fields_and_lists__run");
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    let confirmed: String = db
        .query_one(
            "select payload->>'first_name' from kdit.payloads
             where job like 'shop-sync@%' and key = 'customer7@example.com'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(confirmed, "Renamed");
    assert!(
        w.kdit(&["plan", "job.yaml"])
            .await
            .stdout
            .contains("No changes.")
    );

    // Memberships migrated too: a row that leaves the query leaves the mirrored list.
    w.db.execute("update customers set gone = true where id = 9;")
        .await;
    let plan = w.kdit(&["plan", "job.yaml"]).await;
    plan.snapshot("sync/a_version_3_state_migrates_and_still_diffs_fields_and_lists__plan_2");
    assert!(
        plan.stdout
            .contains("~ Everyone   - 1 remove (rows left the query)"),
        "{}",
        plan.stdout
    );
    assert_eq!(w.kdit(&["run", "job.yaml", "-q"]).await.code, 0);
    assert_eq!(w.list_members("Everyone"), 119);
    let plan = w.kdit(&["plan", "job.yaml"]).await;
    plan.snapshot("sync/a_version_3_state_migrates_and_still_diffs_fields_and_lists__plan_3");
    assert!(plan.stdout.contains("No changes."), "{}", plan.stdout);
}

/// List memberships are kept as a 64-bit mask a job's lists name bits of. With every bit
/// taken, a new list takes back the bit of one the job no longer declares, clearing it from
/// the members, and memberships of the lists the job keeps stay as they were.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_list_takes_back_the_bit_of_a_dropped_one_when_all_64_are_taken() {
    let w = world(40).await;
    assert_eq!(w.kdit(&["run", "job.yaml", "-q"]).await.code, 0);
    // 63 lists the job once had, every profile a member of each.
    w.db.execute(
        "insert into kdit.list_bits (job, name, bit)
           select job, 'Old ' || b, b from (select distinct job from kdit.list_bits) j,
           generate_series(1, 63) b;
         update kdit.profiles set lists = -1;",
    )
    .await;
    let plan = w.kdit(&["plan", "job.yaml"]).await;
    plan.snapshot(
        "sync/a_new_list_takes_back_the_bit_of_a_dropped_one_when_all_64_are_taken__plan",
    );
    assert!(plan.stdout.contains("No changes."), "{}", plan.stdout);

    w.job(&JOB.replace(
        "lists:\n",
        "lists:\n  - name: Newcomers\n    mode: mirror\n",
    ));
    let plan = w.kdit(&["plan", "job.yaml"]).await;
    plan.snapshot(
        "sync/a_new_list_takes_back_the_bit_of_a_dropped_one_when_all_64_are_taken__plan_2",
    );
    assert!(
        plan.stdout.contains("+ Newcomers   created, + 40 add"),
        "{}",
        plan.stdout
    );
    assert!(
        plan.stdout
            .lines()
            .any(|l| l.trim_start().starts_with("Everyone ") && l.ends_with("no change")),
        "{}",
        plan.stdout
    );
    let db = w.db.client().await;
    let row = db
        .query_one(
            "select count(*), count(*) filter (where name like 'Old %'),
                    (select count(*) from kdit.profiles p
                     where p.lists & (1::bigint << n.bit) <> 0)
             from kdit.list_bits b, (select bit from kdit.list_bits where name = 'Newcomers') n
             group by n.bit",
            &[],
        )
        .await
        .unwrap();
    let (bits, old, members_of_new): (i64, i64, i64) = (row.get(0), row.get(1), row.get(2));
    assert_eq!((bits, old, members_of_new), (64, 62, 0));

    let run = w.kdit(&["run", "job.yaml", "-q"]).await;
    run.snapshot("sync/a_new_list_takes_back_the_bit_of_a_dropped_one_when_all_64_are_taken__run");
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    assert_eq!(w.list_members("Newcomers"), 40);
    let plan = w.kdit(&["plan", "job.yaml"]).await;
    plan.snapshot(
        "sync/a_new_list_takes_back_the_bit_of_a_dropped_one_when_all_64_are_taken__plan_3",
    );
    assert!(plan.stdout.contains("No changes."), "{}", plan.stdout);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_saved_plan_is_stale_after_a_run_that_only_updated_profiles() {
    let w = world(30).await;
    assert_eq!(w.kdit(&["run", "job.yaml", "-q"]).await.code, 0);
    let plan = w.kdit(&["plan", "job.yaml", "-o", "plan.json"]).await;
    plan.snapshot("sync/a_saved_plan_is_stale_after_a_run_that_only_updated_profiles__plan");
    assert!(plan.stdout.contains("No changes."), "{}", plan.stdout);
    // Two runs in between: one updates a profile, one puts it back. The rows are as they
    // were when the plan was made and the state holds as many profiles; only the latest
    // write tells the state moved.
    w.db.execute("update customers set first_name = 'Briefly' where id = 4")
        .await;
    assert_eq!(w.kdit(&["run", "job.yaml", "-q"]).await.code, 0);
    w.db.execute("update customers set first_name = 'Name4' where id = 4")
        .await;
    assert_eq!(w.kdit(&["run", "job.yaml", "-q"]).await.code, 0);
    let stale = w.kdit(&["apply", "plan.json"]).await;
    stale.snapshot("sync/a_saved_plan_is_stale_after_a_run_that_only_updated_profiles__stale");
    assert_eq!(stale.code, 1, "{}\n{}", stale.stdout, stale.stderr);
    assert!(
        stale
            .stderr
            .contains("the saved plan is stale: the state moved"),
        "{}",
        stale.stderr
    );
    // A fresh plan applies.
    assert_eq!(
        w.kdit(&["plan", "job.yaml", "-o", "plan2.json"]).await.code,
        0
    );
    let applied = w.kdit(&["apply", "plan2.json"]).await;
    applied.snapshot("sync/a_saved_plan_is_stale_after_a_run_that_only_updated_profiles__applied");
    assert_eq!(applied.code, 0, "{}\n{}", applied.stdout, applied.stderr);
}
