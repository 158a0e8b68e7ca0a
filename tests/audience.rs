//! End to end, the audience side: segments kept as code, Klaviyo tags on lists and segments,
//! profile tags, with the real `kdit` binary, a real PostgreSQL database and an in-process
//! sandbox (a copy of the small harness of tests/sync.rs).

mod support;

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
    let w = World::start(
        &format!(
            "create table customers (id int primary key, email text, ltv numeric, vip bool);
             insert into customers (id, email, ltv, vip)
             select n, 'Customer' || n || '@Example.com', (n * 7 % 500)::numeric / 4, n % 10 = 0
             from generate_series(1, {customers}) n;"
        ),
        SandboxConfig {
            rate_limits: RateLimits::Off,
            ..SandboxConfig::default()
        },
    )
    .await;
    w.write("kdit.yaml", PROJECT);
    w
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
    assert!(again.stdout.contains("No changes."), "{}", again.stdout);

    // The preview lists exactly the members the sandbox computes.
    let preview = w
        .ok(&["segment", "preview", "Big spenders", "--limit", "1000"])
        .await;
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
    assert_eq!(masked.stdout.lines().count(), 2, "{}", masked.stdout);
    assert!(
        masked.stdout.lines().all(|l| l.starts_with("c*")),
        "{}",
        masked.stdout
    );
    let missing = w.kdit(&["segment", "preview", "Nobody"]).await;
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
    assert!(again.stdout.contains("No changes."), "{}", again.stdout);
    w.write(
        "a.yaml",
        &std::fs::read_to_string(w.dir.path().join("a.yaml"))
            .unwrap()
            .replace("profiles: [vip]", "profiles: [vip, kdit]"),
    );
    let plan = w.ok(&["plan", "a.yaml"]).await;
    assert!(plan.stdout.contains("~ 30 to update"), "{}", plan.stdout);
    w.ok(&["run", "a.yaml", "-q"]).await;
    assert_eq!(
        tags("customer7@example.com"),
        HashSet::from(["vip".to_string(), "active".to_string(), "kdit".to_string()])
    );
    let again = w.ok(&["plan", "a.yaml"]).await;
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
    assert!(again.stdout.contains("No changes."), "{}", again.stdout);
    assert_eq!(
        w.calls("POST /api/profile-subscription-bulk-create-jobs"),
        1
    );

    // What kdit cannot do yet is refused before any write, not done differently.
    w.write(
        "historic.yaml",
        &job(
            "historic",
            "consent:\n  subscribe: [email]\n  consented_at: ltv\n",
        ),
    );
    let refused = w.kdit(&["run", "historic.yaml"]).await;
    assert_eq!(refused.code, 1, "{}\n{}", refused.stdout, refused.stderr);
    assert!(
        refused.stderr.contains("`consent.consented_at`"),
        "{}",
        refused.stderr
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
    assert_eq!(run.code, 1, "{}\n{}", run.stdout, run.stderr);
    assert!(
        run.stderr
            .contains("Klaviyo refused to create segment \"Over 100\": rate limited; an account may create or update at most 100 segments a day"),
        "{}",
        run.stderr
    );
    assert_eq!(w.sb.segments().len(), 100);
}
