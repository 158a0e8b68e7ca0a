//! End to end, the audience side: segments kept as code, Klaviyo tags on lists and segments,
//! profile tags, with the real `kdit` binary, a real PostgreSQL database and an in-process
//! sandbox (a copy of the small harness of tests/it/sync.rs).

use crate::support;

use std::collections::HashSet;

use kdit::sandbox::{RateLimits, SandboxConfig};
use support::world::World;

const PROJECT: &str = r#"version: 1
tags:
  profile_property: kdit_tags
  groups:
    - name: lifecycle
      exclusive: true
      tags: [active, lapsed, vip]
    - name: source
      tags: [automated, kdit]
"#;

/// A job over the `customers` table, with `extra` appended (segments, tags).
fn job(name: &str, extra: &str) -> String {
    format!(
        r#"version: 1
name: {name}
query:
  sql: select id, email, ltv, vip from customers order by id
profiles:
  key: email
  fields:
    email: {{ column: email, transform: [trim, lowercase] }}
    properties.ltv: {{ column: ltv, type: number }}
    properties.vip: vip
lists:
  - name: Everyone
    mode: mirror
{extra}"#
    )
}

const SEGMENT: &str = r#"segments:
  - name: Big spenders
    definition:
      all:
        - properties.ltv > 100
        - any: ['in list "Everyone"', properties.vip = true]
"#;

/// A test database with `customers` rows, a sandbox, and the project file.
async fn world(customers: usize) -> World {
    world_with(customers, false).await
}

/// As `world`; `capture`: the sandbox keeps every request body (see `spec_checked`).
async fn world_with(customers: usize, capture: bool) -> World {
    let w = World::start(
        &format!(
            "create table customers (id int primary key, email text, ltv numeric, vip bool);
             insert into customers (id, email, ltv, vip)
             select n, 'Customer' || n || '@Example.com', (n * 7 % 500)::numeric / 4, n % 10 = 0
             from generate_series(1, {customers}) n;"
        ),
        SandboxConfig {
            rate_limits: RateLimits::Off,
            capture_bodies: capture,
            ..SandboxConfig::default()
        },
    )
    .await;
    w.write("kdit.yaml", PROJECT);
    w
}

/// Every request kdit sent (the sandbox captured them) is one Klaviyo's OpenAPI spec allows;
/// returns the captured (method, path template, body) of those matching `endpoint`.
fn spec_checked(w: &World, endpoint: &str) -> Vec<serde_json::Value> {
    let mut out = Vec::new();
    for c in w.sb.captured_requests() {
        if c.body.is_empty() {
            continue;
        }
        let body: serde_json::Value =
            serde_json::from_slice(&c.body).expect("request bodies are JSON");
        if let Err(e) = support::openapi::check_request(&c.method, &c.uri, &body) {
            panic!("kdit sent a request Klaviyo's spec does not allow:\n{e}");
        }
        let template = support::openapi::template_for(&c.uri).unwrap_or_default();
        if format!("{} {template}", c.method) == endpoint {
            out.push(body);
        }
    }
    out
}

/// A profile's email marketing consent in the sandbox: (consent, consent_timestamp).
fn email_consent(w: &World, email: &str) -> (String, String) {
    let p = w.sb.profile_by_email(email).expect("profile");
    let subs = p.subscriptions.unwrap_or_default();
    let m = &subs["email"]["marketing"];
    (
        m["consent"]
            .as_str()
            .unwrap_or("NEVER_SUBSCRIBED")
            .to_string(),
        m["consent_timestamp"]
            .as_str()
            .unwrap_or_default()
            .to_string(),
    )
}

fn segment(w: &World, name: &str) -> kdit::sandbox::SandboxSegment {
    w.sb.segments()
        .into_iter()
        .find(|s| s.name == name)
        .unwrap_or_else(|| panic!("no segment {name}"))
}

fn list_id(w: &World, name: &str) -> String {
    w.sb.lists()
        .into_iter()
        .find(|l| l.name == name)
        .map(|l| l.id)
        .unwrap_or_else(|| panic!("no list {name}"))
}

/// Names of the tags on a list or segment id.
fn tags_on(w: &World, id: &str) -> HashSet<String> {
    w.sb.tags()
        .into_iter()
        .filter(|t| t.lists.iter().any(|l| l == id) || t.segments.iter().any(|s| s == id))
        .map(|t| t.name)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_segment_is_created_updated_left_alone_and_previewed() {
    let w = world(80).await;
    w.write("job.yaml", &job("shop", SEGMENT));
    let plan = w.ok(&["plan", "job.yaml"]).await;
    plan.snapshot("audience/a_segment_is_created_updated_left_alone_and_previewed__plan");
    assert!(
        plan.stdout
            .contains("Segments\n  + Big spenders   created (3 conditions)\n"),
        "{}",
        plan.stdout
    );
    assert!(
        plan.stdout.contains("1 segment to create"),
        "{}",
        plan.stdout
    );
    assert!(w.sb.segments().is_empty(), "plan wrote a segment");

    w.ok(&["run", "job.yaml", "-q"]).await;
    let seg = segment(&w, "Big spenders");
    let everyone = list_id(&w, "Everyone");
    let groups = seg.definition["condition_groups"].as_array().unwrap();
    assert_eq!(groups.len(), 2);
    assert_eq!(
        groups[1]["conditions"][0]["group_ids"][0],
        serde_json::json!(everyone),
        "list names resolve to list ids"
    );
    assert_eq!(w.calls("POST /api/segments"), 1);

    // Nothing differs: a no-op.
    let again = w.ok(&["run", "job.yaml"]).await;
    again.snapshot("audience/a_segment_is_created_updated_left_alone_and_previewed__again");
    assert!(
        again.stdout.contains("    Big spenders   no change\n"),
        "{}",
        again.stdout
    );
    assert!(again.stdout.contains("No changes."), "{}", again.stdout);
    assert_eq!(
        w.calls("POST /api/segments") + w.calls("PATCH /api/segments"),
        1
    );

    // The YAML changes: the segment is updated in place.
    w.write(
        "job.yaml",
        &job(
            "shop",
            &SEGMENT.replace("properties.ltv > 100", "properties.ltv >= 50"),
        ),
    );
    let plan = w.kdit(&["plan", "job.yaml", "--detailed-exitcode"]).await;
    plan.snapshot("audience/a_segment_is_created_updated_left_alone_and_previewed__plan_2");
    assert_eq!(plan.code, 2, "{}\n{}", plan.stdout, plan.stderr);
    assert!(
        plan.stdout.contains(
            "  ~ Big spenders   definition changed\n      - properties['ltv'] > 100\n      + properties['ltv'] >= 50\n"
        ),
        "{}",
        plan.stdout
    );
    assert!(
        plan.stdout.contains("Plan: 1 segment to change.\n"),
        "{}",
        plan.stdout
    );
    w.ok(&["run", "job.yaml", "-q"]).await;
    assert_eq!(w.calls("PATCH /api/segments"), 1);
    let seg = segment(&w, "Big spenders");
    assert_eq!(seg.id, segment(&w, "Big spenders").id);
    assert_eq!(
        seg.definition["condition_groups"][0]["conditions"][0]["filter"]["operator"],
        "greater-than-or-equal"
    );
    let again = w.ok(&["plan", "job.yaml", "--detailed-exitcode"]).await;
    again.snapshot("audience/a_segment_is_created_updated_left_alone_and_previewed__again_2");
    assert!(again.stdout.contains("No changes."), "{}", again.stdout);

    // The preview lists exactly the members the sandbox computes.
    let preview = w
        .ok(&["segment", "preview", "Big spenders", "--limit", "1000"])
        .await;
    preview.snapshot("audience/a_segment_is_created_updated_left_alone_and_previewed__preview");
    let shown: HashSet<String> = preview.stdout.lines().map(str::to_string).collect();
    let profiles = w.sb.profiles();
    let expected: HashSet<String> = seg
        .members
        .iter()
        .filter_map(|id| profiles.iter().find(|p| &p.id == id)?.email.clone())
        .collect();
    assert!(!expected.is_empty());
    assert_eq!(shown, expected);
    let masked = w
        .ok(&[
            "segment",
            "preview",
            "Big spenders",
            "--limit",
            "2",
            "--mask",
        ])
        .await;
    masked.snapshot("audience/a_segment_is_created_updated_left_alone_and_previewed__masked");
    assert_eq!(masked.stdout.lines().count(), 2, "{}", masked.stdout);
    assert!(
        masked.stdout.lines().all(|l| l.starts_with("c*")),
        "{}",
        masked.stdout
    );
    let missing = w.kdit(&["segment", "preview", "Nobody"]).await;
    missing.snapshot("audience/a_segment_is_created_updated_left_alone_and_previewed__missing");
    assert_eq!(missing.code, 1);
    assert!(
        missing.stderr.contains("no segment named \"Nobody\""),
        "{}",
        missing.stderr
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn catalog_tags_land_on_lists_and_segments_once() {
    let w = world(20).await;
    let tags = "tags:\n  lists: [automated]\n  segments: [vip, kdit]\n";
    w.write("job.yaml", &job("shop", &format!("{SEGMENT}{tags}")));
    let plan = w.ok(&["plan", "job.yaml"]).await;
    plan.snapshot("audience/catalog_tags_land_on_lists_and_segments_once__plan");
    assert!(
        plan.stdout.contains(
            "Tags\n  + automated   on list \"Everyone\"\n  + vip         on segment \"Big spenders\"\n  + kdit        on segment \"Big spenders\"\n"
        ),
        "{}",
        plan.stdout
    );
    w.ok(&["run", "job.yaml", "-q"]).await;
    let list = list_id(&w, "Everyone");
    let seg = segment(&w, "Big spenders").id;
    assert_eq!(tags_on(&w, &list), HashSet::from(["automated".to_string()]));
    assert_eq!(
        tags_on(&w, &seg),
        HashSet::from(["vip".to_string(), "kdit".to_string()])
    );
    let all = w.sb.tags();
    let vip = all.iter().find(|t| t.name == "vip").unwrap();
    assert_eq!(vip.group_name, "lifecycle");

    let posts = w.calls("POST /api/tags");
    let again = w.ok(&["run", "job.yaml"]).await;
    again.snapshot("audience/catalog_tags_land_on_lists_and_segments_once__again");
    assert!(again.stdout.contains("No changes."), "{}", again.stdout);
    assert_eq!(w.calls("POST /api/tags"), posts, "a no-op run wrote tags");

    // Exclusive group: `active` replaces `vip` on the segment.
    w.write(
        "job.yaml",
        &job(
            "shop",
            &format!("{SEGMENT}{}", tags.replace("vip", "active")),
        ),
    );
    let plan = w.ok(&["plan", "job.yaml"]).await;
    plan.snapshot("audience/catalog_tags_land_on_lists_and_segments_once__plan_2");
    assert!(
        plan.stdout.contains(
            "  + active   on segment \"Big spenders\" (replaces \"vip\": exclusive group)\n"
        ),
        "{}",
        plan.stdout
    );
    w.ok(&["run", "job.yaml", "-q"]).await;
    assert_eq!(
        tags_on(&w, &seg),
        HashSet::from(["active".to_string(), "kdit".to_string()])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn profile_tags_of_two_jobs_coexist_and_a_tag_change_resends() {
    let w = world(30).await;
    w.write(
        "a.yaml",
        &job(
            "shop-a",
            "tags:\n  profiles: [vip]\nsegments:\n  - name: Tagged active\n    definition:\n      all: ['properties.kdit_tags has \"active\"']\n",
        ),
    );
    w.write("b.yaml", &job("shop-b", "tags:\n  profiles: [active]\n"));
    w.ok(&["run", "a.yaml", "-q"]).await;
    w.ok(&["run", "b.yaml", "-q"]).await;
    let tags = |email: &str| -> HashSet<String> {
        let p = w.sb.profile_by_email(email).expect("profile");
        p.attributes["properties"]["kdit_tags"]
            .as_array()
            .unwrap_or_else(|| panic!("no tags on {email}: {}", p.attributes))
            .iter()
            .filter_map(|v| v.as_str().map(str::to_string))
            .collect()
    };
    let both = HashSet::from(["vip".to_string(), "active".to_string()]);
    assert_eq!(tags("customer1@example.com"), both);
    assert_eq!(tags("customer30@example.com"), both);
    assert_eq!(w.sb.profiles().len(), 30);
    // A segment of job A sees the tag job B put on the same people.
    assert_eq!(segment(&w, "Tagged active").members.len(), 30);

    // Unchanged tags: nothing to send. Changed tags: every profile goes again.
    let again = w.ok(&["plan", "a.yaml"]).await;
    again.snapshot("audience/profile_tags_of_two_jobs_coexist_and_a_tag_change_resends__again");
    assert!(again.stdout.contains("No changes."), "{}", again.stdout);
    w.write(
        "a.yaml",
        &std::fs::read_to_string(w.dir.path().join("a.yaml"))
            .unwrap()
            .replace("profiles: [vip]", "profiles: [vip, kdit]"),
    );
    let plan = w.ok(&["plan", "a.yaml"]).await;
    plan.snapshot("audience/profile_tags_of_two_jobs_coexist_and_a_tag_change_resends__plan");
    assert!(plan.stdout.contains("~ 30 to update"), "{}", plan.stdout);
    w.ok(&["run", "a.yaml", "-q"]).await;
    assert_eq!(
        tags("customer7@example.com"),
        HashSet::from(["vip".to_string(), "active".to_string(), "kdit".to_string()])
    );
    let again = w.ok(&["plan", "a.yaml"]).await;
    again.snapshot("audience/profile_tags_of_two_jobs_coexist_and_a_tag_change_resends__again_2");
    assert!(again.stdout.contains("No changes."), "{}", again.stdout);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn validation_knows_klaviyo_segment_and_tag_limits() {
    let w = world(1).await;
    let many: String = (0..101)
        .map(|i| format!("        - properties.ltv > {i}\n"))
        .collect();
    w.write(
        "job.yaml",
        &job(
            "shop",
            &format!(
                "tags:\n  lists: [vip, active]\nsegments:\n  - name: Huge\n    definition:\n      all:\n{many}"
            ),
        ),
    );
    let v = w.kdit(&["validate", "job.yaml"]).await;
    v.snapshot("audience/validation_knows_klaviyo_segment_and_tag_limits__v");
    assert_eq!(v.code, 65, "{}\n{}", v.stdout, v.stderr);
    let text = format!("{}{}", v.stdout, v.stderr);
    assert!(
        text.contains("segment `Huge` has 101 conditions; Klaviyo allows at most 100"),
        "{text}"
    );
    assert!(
        text.contains("tag group `lifecycle` is exclusive"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consent_changes_only_when_a_job_asks() {
    let w = world(10).await;
    w.write("plain.yaml", &job("plain", ""));
    let plain = w.ok(&["run", "plain.yaml"]).await;
    plain.snapshot("audience/consent_changes_only_when_a_job_asks__plain");
    assert!(!plain.stdout.contains("Consent"), "{}", plain.stdout);
    assert!(w.sb.profiles().iter().all(|p| p.subscriptions.is_none()));
    assert_eq!(w.calls("POST /api/profile-subscription"), 0);

    // A job asking for email consent subscribes the profiles its run creates, once.
    w.db.execute("insert into customers values (11, 'new11@example.com', 1, false), (12, 'new12@example.com', 2, false)").await;
    w.write(
        "consent.yaml",
        &job("with-consent", "consent:\n  subscribe: [email]\n")
            .replace("from customers", "from customers where id > 10"),
    );
    let plan = w.ok(&["plan", "consent.yaml"]).await;
    plan.snapshot("audience/consent_changes_only_when_a_job_asks__plan");
    assert!(
        plan.stdout.contains(
            "Consent\n  + 2 to subscribe to email marketing (the profiles this run creates)\n"
        ),
        "{}",
        plan.stdout
    );
    w.ok(&["run", "consent.yaml", "-q", "--report", "r.json"])
        .await;
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(w.dir.path().join("r.json")).unwrap())
            .unwrap();
    assert_eq!(report["subscribed"], 2);
    for n in [11, 12] {
        let p =
            w.sb.profile_by_email(&format!("new{n}@example.com"))
                .unwrap();
        let subs = p.subscriptions.expect("subscribed");
        assert_eq!(
            subs["email"]["marketing"]["consent"], "SUBSCRIBED",
            "{subs}"
        );
    }
    assert!(
        w.sb.profile_by_email("customer1@example.com")
            .unwrap()
            .subscriptions
            .is_none(),
        "a profile of the other job was touched"
    );
    assert_eq!(
        w.calls("POST /api/profile-subscription-bulk-create-jobs"),
        1
    );
    let again = w.ok(&["run", "consent.yaml"]).await;
    again.snapshot("audience/consent_changes_only_when_a_job_asks__again");
    assert!(again.stdout.contains("No changes."), "{}", again.stdout);
    assert_eq!(
        w.calls("POST /api/profile-subscription-bulk-create-jobs"),
        1
    );

    assert_eq!(
        w.calls("POST /api/profile-subscription-bulk-delete-jobs"),
        0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_daily_segment_cap_stops_the_run_with_a_clear_error() {
    let w = world(3).await;
    let segments: String = (0..101)
        .map(|i| {
            format!("  - name: Over {i}\n    definition:\n      all: [properties.ltv > {i}]\n")
        })
        .collect();
    w.write("job.yaml", &job("shop", &format!("segments:\n{segments}")));
    let run = w
        .kdit(&["run", "job.yaml", "-q", "--rate-limits", "off"])
        .await;
    run.snapshot("audience/the_daily_segment_cap_stops_the_run_with_a_clear_error__run");
    assert_eq!(run.code, 1, "{}\n{}", run.stdout, run.stderr);
    assert!(
        run.stderr
            .contains("Klaviyo refused to create segment \"Over 100\": rate limited; an account may create or update at most 100 segments a day"),
        "{}",
        run.stderr
    );
    assert_eq!(w.sb.segments().len(), 100);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn historical_consent_and_unsubscribe_follow_their_columns_only_when_asked() {
    let w = world_with(10, true).await;
    w.db.execute(
        "alter table customers add column opted_in_at timestamptz, add column opted_out bool;
         update customers set opted_in_at = '2021-03-04 05:06:07+00' where id <= 3;
         update customers set opted_in_at = '2022-01-02 03:04:05+00' where id = 4;
         update customers set opted_out = (id = 2);",
    )
    .await;
    let query = "select id, email, ltv, vip, opted_in_at, opted_out from customers order by id";
    let with = |consent: &str| {
        job("history", consent).replace(
            "select id, email, ltv, vip from customers order by id",
            query,
        )
    };
    // The consent columns alone change nothing: no `consent` key, no consent call.
    w.write("plain.yaml", &with(""));
    w.ok(&["run", "plain.yaml", "-q"]).await;
    assert_eq!(w.calls("POST /api/profile-subscription"), 0);
    assert_eq!(
        email_consent(&w, "customer2@example.com").0,
        "NEVER_SUBSCRIBED"
    );

    // Historical import: rows with a consent time are subscribed with that time.
    w.write(
        "job.yaml",
        &with("consent:\n  subscribe: [email]\n  consented_at: opted_in_at\n"),
    );
    let plan = w.ok(&["plan", "job.yaml"]).await;
    plan.snapshot(
        "audience/historical_consent_and_unsubscribe_follow_their_columns_only_when_asked__plan",
    );
    assert!(
        plan.stdout.contains(
            "Consent\n  + 4 to subscribe to email marketing (historical import, consented_at from column `opted_in_at`)\n"
        ),
        "{}",
        plan.stdout
    );
    assert!(!plan.stdout.contains("unsubscribe"), "{}", plan.stdout);
    w.ok(&["run", "job.yaml", "-q"]).await;
    for n in 1..=3 {
        let (consent, at) = email_consent(&w, &format!("customer{n}@example.com"));
        assert_eq!(consent, "SUBSCRIBED");
        assert!(at.starts_with("2021-03-04T05:06:07"), "customer{n}: {at}");
    }
    let (consent, at) = email_consent(&w, "customer4@example.com");
    assert_eq!(consent, "SUBSCRIBED");
    assert!(at.starts_with("2022-01-02T03:04:05"), "{at}");
    for n in 5..=10 {
        assert_eq!(
            email_consent(&w, &format!("customer{n}@example.com")).0,
            "NEVER_SUBSCRIBED",
            "customer{n} never consented"
        );
    }
    let subscriptions = spec_checked(&w, "POST /api/profile-subscription-bulk-create-jobs");
    assert_eq!(subscriptions.len(), 1);
    assert_eq!(
        subscriptions[0]["data"]["attributes"]["historical_import"],
        true
    );
    // The consent columns never reach the profile itself.
    let p = w.sb.profile_by_email("customer1@example.com").unwrap();
    assert!(
        p.attributes["properties"].get("kdit_consent").is_none(),
        "{}",
        p.attributes
    );

    // Re-run: nothing to do. A customer consenting later is subscribed on the next run.
    let again = w.ok(&["run", "job.yaml"]).await;
    again.snapshot(
        "audience/historical_consent_and_unsubscribe_follow_their_columns_only_when_asked__again",
    );
    assert!(again.stdout.contains("No changes."), "{}", again.stdout);
    w.db.execute("update customers set opted_in_at = '2023-05-06 07:08:09+00' where id = 7")
        .await;
    let plan = w.ok(&["plan", "job.yaml"]).await;
    plan.snapshot(
        "audience/historical_consent_and_unsubscribe_follow_their_columns_only_when_asked__plan_2",
    );
    assert!(
        plan.stdout
            .contains("  + 1 to subscribe to email marketing (historical import"),
        "{}",
        plan.stdout
    );
    w.ok(&["run", "job.yaml", "-q"]).await;
    let (consent, at) = email_consent(&w, "customer7@example.com");
    assert_eq!(consent, "SUBSCRIBED");
    assert!(at.starts_with("2023-05-06T07:08:09"), "{at}");
    assert_eq!(
        w.calls("POST /api/profile-subscription-bulk-create-jobs"),
        2
    );
    assert_eq!(
        w.calls("POST /api/profile-subscription-bulk-delete-jobs"),
        0
    );

    // Unsubscribe only behind its explicit key: a column alone is a validation error.
    w.write(
        "half.yaml",
        &with("consent:\n  subscribe: [email]\n  unsubscribe_column: opted_out\n"),
    );
    let v = w.kdit(&["validate", "half.yaml"]).await;
    v.snapshot(
        "audience/historical_consent_and_unsubscribe_follow_their_columns_only_when_asked__v",
    );
    assert_eq!(v.code, 65, "{}\n{}", v.stdout, v.stderr);
    assert!(
        format!("{}{}", v.stdout, v.stderr).contains(
            "`consent.unsubscribe_column` is set but `consent.unsubscribe` names no channel"
        ),
        "{}{}",
        v.stdout,
        v.stderr
    );
    let refused = w.kdit(&["run", "half.yaml"]).await;
    refused.snapshot(
        "audience/historical_consent_and_unsubscribe_follow_their_columns_only_when_asked__refused",
    );
    assert_eq!(refused.code, 65, "{}", refused.stderr);
    assert_eq!(
        w.calls("POST /api/profile-subscription-bulk-delete-jobs"),
        0
    );

    // With `unsubscribe`, the flagged row is unsubscribed, on its own plan line; nobody is
    // subscribed again although every row is re-sent once (the new column joins the hash).
    w.write(
        "job.yaml",
        &with("consent:\n  subscribe: [email]\n  consented_at: opted_in_at\n  unsubscribe: [email]\n  unsubscribe_column: opted_out\n"),
    );
    let plan = w.ok(&["plan", "job.yaml"]).await;
    plan.snapshot(
        "audience/historical_consent_and_unsubscribe_follow_their_columns_only_when_asked__plan_3",
    );
    assert!(
        plan.stdout.contains(
            "Consent\n  - 1 to unsubscribe from email marketing (rows where `opted_out` is true)\n"
        ),
        "{}",
        plan.stdout
    );
    assert!(!plan.stdout.contains("to subscribe"), "{}", plan.stdout);
    w.ok(&["run", "job.yaml", "-q"]).await;
    assert_eq!(email_consent(&w, "customer2@example.com").0, "UNSUBSCRIBED");
    assert_eq!(email_consent(&w, "customer1@example.com").0, "SUBSCRIBED");
    assert_eq!(
        w.calls("POST /api/profile-subscription-bulk-create-jobs"),
        2
    );
    assert_eq!(
        w.calls("POST /api/profile-subscription-bulk-delete-jobs"),
        1
    );
    let again = w.ok(&["run", "job.yaml"]).await;
    again.snapshot(
        "audience/historical_consent_and_unsubscribe_follow_their_columns_only_when_asked__again_2",
    );
    assert!(again.stdout.contains("No changes."), "{}", again.stdout);
    assert_eq!(
        w.calls("POST /api/profile-subscription-bulk-delete-jobs"),
        1
    );
    let unsubscriptions = spec_checked(&w, "POST /api/profile-subscription-bulk-delete-jobs");
    assert_eq!(
        unsubscriptions[0]["data"]["attributes"]["profiles"]["data"][0]["attributes"]["email"],
        "customer2@example.com"
    );

    // A bad consent time is a rejected row naming the job's key, not a crash.
    w.db.execute("alter table customers alter column opted_in_at type text; update customers set opted_in_at = 'soon' where id = 9")
        .await;
    let bad = w.kdit(&["plan", "job.yaml"]).await;
    bad.snapshot(
        "audience/historical_consent_and_unsubscribe_follow_their_columns_only_when_asked__bad",
    );
    assert_eq!(bad.code, 0, "{}\n{}", bad.stdout, bad.stderr);
    assert!(
        bad.stdout.contains("consent.consented_at (opted_in_at)"),
        "{}",
        bad.stdout
    );
    // A consent column the query lacks: named as the job file names it, with a hint.
    w.write(
        "missing.yaml",
        &with("consent:\n  subscribe: [email]\n  consented_at: opted_at\n"),
    );
    let missing = w.kdit(&["plan", "missing.yaml"]).await;
    missing.snapshot(
        "audience/historical_consent_and_unsubscribe_follow_their_columns_only_when_asked__missing",
    );
    assert_eq!(missing.code, 1, "{}", missing.stderr);
    assert!(
        missing.stderr.contains(
            "error: consent.consented_at (opted_at): the query returns no column `opted_at`\nhint: did you mean"
        ),
        "{}",
        missing.stderr
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_tag_comes_off_and_a_dropped_segment_is_reported() {
    let w = world_with(12, true).await;
    // The catalog's `lifecycle` group starts out non-exclusive in Klaviyo.
    w.write(
        "kdit.yaml",
        &PROJECT.replace("exclusive: true", "exclusive: false"),
    );
    w.write(
        "shop.yaml",
        &job(
            "shop",
            &format!("{SEGMENT}tags:\n  lists: [automated]\n  segments: [vip, kdit]\n"),
        ),
    );
    // Another job tags the same list: its tag is not shop's to take off.
    w.write("other.yaml", &job("other", "tags:\n  lists: [kdit]\n"));
    w.ok(&["run", "shop.yaml", "-q"]).await;
    w.ok(&["run", "other.yaml", "-q"]).await;
    let list = list_id(&w, "Everyone");
    let seg = segment(&w, "Big spenders").id;
    let set = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<HashSet<_>>();
    assert_eq!(tags_on(&w, &list), set(&["automated", "kdit"]));
    assert_eq!(tags_on(&w, &seg), set(&["vip", "kdit"]));

    // The catalog now says exclusive: Klaviyo cannot change that, the plan says so.
    w.write("kdit.yaml", PROJECT);
    // shop stops tagging its list, and stops putting `kdit` on its segment.
    w.write(
        "shop.yaml",
        &job("shop", &format!("{SEGMENT}tags:\n  segments: [vip]\n")),
    );
    let plan = w.kdit(&["plan", "shop.yaml", "--detailed-exitcode"]).await;
    plan.snapshot("audience/a_dropped_tag_comes_off_and_a_dropped_segment_is_reported__plan");
    assert_eq!(plan.code, 2, "{}\n{}", plan.stdout, plan.stderr);
    assert!(
        plan.stdout.contains("Tags\n  ! tag group \"lifecycle\" is exclusive in the catalog but not exclusive in Klaviyo; Klaviyo cannot change `exclusive` after a group is created"),
        "{}",
        plan.stdout
    );
    assert!(
        plan.stdout.contains(
            "  - kdit        off segment \"Big spenders\" (no longer in the job)\n  - automated   off list \"Everyone\" (no longer in the job)\n"
        ) || plan.stdout.contains(
            "  - automated   off list \"Everyone\" (no longer in the job)\n  - kdit        off segment \"Big spenders\" (no longer in the job)\n"
        ),
        "{}",
        plan.stdout
    );
    assert!(
        !plan.stdout.contains("kdit        off list"),
        "other's tag is not shop's: {}",
        plan.stdout
    );
    assert!(plan.stdout.contains("2 tags to remove"), "{}", plan.stdout);
    assert_eq!(
        tags_on(&w, &list),
        set(&["automated", "kdit"]),
        "plan wrote"
    );
    let run = w
        .ok(&["run", "shop.yaml", "-q", "--report", "r.json"])
        .await;
    run.snapshot("audience/a_dropped_tag_comes_off_and_a_dropped_segment_is_reported__run");
    assert_eq!(run.code, 0);
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(w.path("r.json")).unwrap()).unwrap();
    assert_eq!(report["tags_removed"], 2);
    assert_eq!(tags_on(&w, &list), set(&["kdit"]));
    assert_eq!(tags_on(&w, &seg), set(&["vip"]));
    let again = w.ok(&["plan", "shop.yaml", "--detailed-exitcode"]).await;
    again.snapshot("audience/a_dropped_tag_comes_off_and_a_dropped_segment_is_reported__again");
    assert!(again.stdout.contains("No changes."), "{}", again.stdout);

    // shop no longer declares its segment: the plan says so, the run leaves it in Klaviyo
    // (taking off the tag shop put there) and stops managing it.
    w.write("shop.yaml", &job("shop", ""));
    let plan = w.kdit(&["plan", "shop.yaml", "--detailed-exitcode"]).await;
    plan.snapshot("audience/a_dropped_tag_comes_off_and_a_dropped_segment_is_reported__plan_2");
    assert_eq!(plan.code, 2, "{}\n{}", plan.stdout, plan.stderr);
    assert!(
        plan.stdout.contains("Segments\n  ! Big spenders   no longer declared by this job: left in Klaviyo (kdit never deletes segments), no longer managed after this run\n"),
        "{}",
        plan.stdout
    );
    assert!(
        plan.stdout
            .contains("  - vip   off segment \"Big spenders\" (no longer in the job)\n"),
        "{}",
        plan.stdout
    );
    w.ok(&["run", "shop.yaml", "-q"]).await;
    assert_eq!(segment(&w, "Big spenders").id, seg, "the segment stays");
    assert!(tags_on(&w, &seg).is_empty());
    assert_eq!(tags_on(&w, &list), set(&["kdit"]));
    let again = w.ok(&["plan", "shop.yaml", "--detailed-exitcode"]).await;
    again.snapshot("audience/a_dropped_tag_comes_off_and_a_dropped_segment_is_reported__again_2");
    assert!(again.stdout.contains("No changes."), "{}", again.stdout);
    assert!(!again.stdout.contains("Big spenders"), "{}", again.stdout);
    spec_checked(&w, "");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kdit_tags_plans_then_applies_a_tag_across_matching_lists_and_segments() {
    let w = world_with(6, true).await;
    w.write(
        "job.yaml",
        r#"version: 1
name: lists
query:
  sql: select id, email, ltv from customers order by id
profiles:
  key: email
  fields:
    email: { column: email, transform: [trim, lowercase] }
    properties.ltv: { column: ltv, type: number }
lists:
  - name: Weekly Active
  - name: Weekly Lapsed
  - name: Monthly Digest
segments:
  - name: Weekly big spenders
    definition:
      all: [properties.ltv > 100]
  - name: Everyone else
    definition:
      all: [properties.ltv <= 100]
tags:
  lists: [kdit]
"#,
    );
    w.ok(&["run", "job.yaml", "-q"]).await;
    let set = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<HashSet<_>>();
    let weekly_active = list_id(&w, "Weekly Active");
    let weekly_lapsed = list_id(&w, "Weekly Lapsed");
    let monthly = list_id(&w, "Monthly Digest");
    let big = segment(&w, "Weekly big spenders").id;
    let other = segment(&w, "Everyone else").id;

    // The plan names exactly the matching lists and segments, and writes nothing.
    let args = [
        "tags",
        "add",
        "automated",
        "--lists",
        "Weekly*",
        "--segments",
        "Weekly*",
    ];
    let plan = w.ok(&args).await;
    plan.snapshot(
        "audience/kdit_tags_plans_then_applies_a_tag_across_matching_lists_and_segments__plan",
    );
    assert_eq!(
        plan.stdout,
        "tag      \"automated\"\nmatched  2 lists `Weekly*` match; 1 segment `Weekly*` match\n\nTags\n  + list    \"Weekly Active\"         gets \"automated\"\n  + list    \"Weekly Lapsed\"         gets \"automated\"\n  + segment \"Weekly big spenders\"   gets \"automated\"\n\nPlan: tag \"automated\" to add to 2 lists and 1 segment.\n"
    );
    assert!(
        plan.stderr.contains("run again with --apply"),
        "{}",
        plan.stderr
    );
    assert!(
        w.sb.tags().iter().all(|t| t.name != "automated"),
        "the plan wrote"
    );
    let pending = w
        .kdit(&[&args[..], &["--detailed-exitcode"]].concat())
        .await;
    pending.snapshot(
        "audience/kdit_tags_plans_then_applies_a_tag_across_matching_lists_and_segments__pending",
    );
    assert_eq!(pending.code, 2);
    // `-q`: the same plan on stdout, no hint on stderr.
    let quiet = w.ok(&[&["-q"], &args[..]].concat()).await;
    quiet.snapshot(
        "audience/kdit_tags_plans_then_applies_a_tag_across_matching_lists_and_segments__quiet",
    );
    assert_eq!(
        (quiet.stdout.as_str(), quiet.stderr.as_str()),
        (plan.stdout.as_str(), "")
    );

    // --apply lands it; a second --apply is a no-op.
    let applied = w.ok(&[&args[..], &["--apply"]].concat()).await;
    applied.snapshot(
        "audience/kdit_tags_plans_then_applies_a_tag_across_matching_lists_and_segments__applied",
    );
    assert!(
        applied
            .stderr
            .contains("done: tag \"automated\" added to 2 lists and 1 segment"),
        "{}",
        applied.stderr
    );
    assert_eq!(tags_on(&w, &weekly_active), set(&["kdit", "automated"]));
    assert_eq!(tags_on(&w, &weekly_lapsed), set(&["kdit", "automated"]));
    assert_eq!(tags_on(&w, &big), set(&["automated"]));
    assert_eq!(tags_on(&w, &monthly), set(&["kdit"]));
    assert!(tags_on(&w, &other).is_empty());
    let writes = w.calls("POST /api/tags") + w.calls("DELETE /api/tags");
    let again = w.ok(&[&args[..], &["--apply"]].concat()).await;
    again.snapshot(
        "audience/kdit_tags_plans_then_applies_a_tag_across_matching_lists_and_segments__again",
    );
    assert!(
        again.stdout.ends_with("\nNo changes.\n"),
        "{}",
        again.stdout
    );
    assert!(again.stdout.contains("has it already"), "{}", again.stdout);
    assert_eq!(
        w.calls("POST /api/tags") + w.calls("DELETE /api/tags"),
        writes
    );

    // `show`: the catalog, the jobs using each tag, and what Klaviyo holds.
    let show = w.ok(&["tags", "show", "."]).await;
    show.snapshot(
        "audience/kdit_tags_plans_then_applies_a_tag_across_matching_lists_and_segments__show",
    );
    assert!(
        show.stdout.contains("  automated    no job uses it\n               in Klaviyo: lists \"Weekly Active\", \"Weekly Lapsed\"; segments \"Weekly big spenders\"\n"),
        "{}",
        show.stdout
    );
    assert!(
        show.stdout.contains("  kdit         job lists: lists \"Weekly Active\", \"Weekly Lapsed\", \"Monthly Digest\"\n               in Klaviyo: lists "),
        "{}",
        show.stdout
    );
    assert!(
        show.stdout
            .contains("lifecycle   exclusive   (not in Klaviyo yet"),
        "{}",
        show.stdout
    );
    let offline = w.ok(&["tags", "show", ".", "--offline"]).await;
    offline.snapshot(
        "audience/kdit_tags_plans_then_applies_a_tag_across_matching_lists_and_segments__offline",
    );
    assert!(!offline.stdout.contains("in Klaviyo"), "{}", offline.stdout);

    // Removing: a plan, then --apply, then nothing left to do.
    let remove = ["tags", "remove", "automated", "--lists", "Weekly*"];
    let plan = w.ok(&remove).await;
    plan.snapshot(
        "audience/kdit_tags_plans_then_applies_a_tag_across_matching_lists_and_segments__plan_2",
    );
    assert!(
        plan.stdout.contains("  - list    \"Weekly Active\"   loses \"automated\"\n  - list    \"Weekly Lapsed\"   loses \"automated\"\n"),
        "{}",
        plan.stdout
    );
    assert!(
        plan.stdout
            .ends_with("\nPlan: tag \"automated\" to remove from 2 lists.\n"),
        "{}",
        plan.stdout
    );
    assert_eq!(tags_on(&w, &weekly_active), set(&["kdit", "automated"]));
    w.ok(&[&remove[..], &["--apply"]].concat()).await;
    assert_eq!(tags_on(&w, &weekly_active), set(&["kdit"]));
    assert_eq!(tags_on(&w, &weekly_lapsed), set(&["kdit"]));
    assert_eq!(
        tags_on(&w, &big),
        set(&["automated"]),
        "segments were not named"
    );
    let again = w.ok(&[&remove[..], &["--apply"]].concat()).await;
    again.snapshot(
        "audience/kdit_tags_plans_then_applies_a_tag_across_matching_lists_and_segments__again_2",
    );
    assert!(
        again.stdout.ends_with("\nNo changes.\n"),
        "{}",
        again.stdout
    );

    // An exclusive group: the new tag replaces its sibling.
    w.ok(&[
        "tags",
        "add",
        "active",
        "--lists",
        "Weekly Active",
        "--apply",
    ])
    .await;
    let plan = w
        .ok(&["tags", "add", "lapsed", "--lists", "Weekly ?ctive"])
        .await;
    plan.snapshot(
        "audience/kdit_tags_plans_then_applies_a_tag_across_matching_lists_and_segments__plan_3",
    );
    assert!(
        plan.stdout.contains("  + list    \"Weekly Active\"   gets \"lapsed\" (replaces \"active\": exclusive group)\n"),
        "{}",
        plan.stdout
    );
    w.ok(&["tags", "add", "lapsed", "--lists", "Weekly ?ctive", "--yes"])
        .await;
    assert_eq!(tags_on(&w, &weekly_active), set(&["kdit", "lapsed"]));

    // Bad input: a tag outside the catalog, no pattern.
    let unknown = w.kdit(&["tags", "add", "activ", "--lists", "*"]).await;
    unknown.snapshot(
        "audience/kdit_tags_plans_then_applies_a_tag_across_matching_lists_and_segments__unknown",
    );
    assert_eq!(unknown.code, 65, "{}", unknown.stderr);
    assert!(
        unknown.stderr.contains("error: tag `activ` is not in the tag catalog of kdit.yaml\nhint: did you mean `active`?"),
        "{}",
        unknown.stderr
    );
    let nothing = w.kdit(&["tags", "add", "active"]).await;
    nothing.snapshot(
        "audience/kdit_tags_plans_then_applies_a_tag_across_matching_lists_and_segments__nothing",
    );
    assert_eq!(nothing.code, 64, "{}", nothing.stderr);
    assert!(
        nothing.stderr.contains("hint: add `--lists 'Weekly*'`"),
        "{}",
        nothing.stderr
    );
    spec_checked(&w, "");
}
