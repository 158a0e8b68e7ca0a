//! Secrets canaries: a recognisable API key and database password go in through the
//! environment, every command runs with trace logging in text and JSON, and neither canary
//! may appear in any stdout, stderr, plan, report or rejects file.

use crate::support;

use std::path::Path;

use kdit::sandbox::{RateLimits, Sandbox, SandboxConfig};
use support::pg::{TestDb, admin_url, connect};

const JOB: &str = r#"version: 1
name: canary
query:
  file: queries/customers.sql
profiles:
  key: email
  fields:
    email: { column: email, transform: [trim, lowercase] }
    external_id: id
    first_name: first_name
lists:
  - name: Everyone
    mode: mirror
"#;

struct Canaries {
    key: String,
    password: String,
}

impl Canaries {
    fn assert_absent(&self, what: &str, text: &str) {
        for (name, c) in [
            ("API key", &self.key),
            ("database password", &self.password),
        ] {
            assert!(
                !text.contains(c.as_str()),
                "the canary {name} leaked into {what}:\n{text}"
            );
        }
        // Also not split or encoded in an obvious way.
        assert!(
            !text.contains("canary-pw"),
            "password fragment in {what}:\n{text}"
        );
        assert!(
            !text.contains("pk_canary"),
            "API key fragment in {what}:\n{text}"
        );
    }
}

fn kdit(dir: &Path, env: &[(&str, &str)], args: &[&str]) -> (i32, String, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_kdit"))
        .args(args)
        .current_dir(dir)
        .env("NO_COLOR", "1")
        .env("RUST_LOG", "trace")
        .env_remove("KDIT_LOG")
        .env_remove("KDIT_STATE_SCHEMA")
        .envs(env.iter().copied())
        .output()
        .expect("run kdit");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!stderr.contains("panicked"), "{stderr}");
    (out.status.code().unwrap_or(-1), stdout, stderr)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn canary_key_and_password_never_appear_in_any_output() {
    let tag = format!("{}_{}", std::process::id(), uuid::Uuid::new_v4().simple());
    let role = format!("kdit_canary_{tag}");
    // Declared before the database, so dropped after it (even when the test fails): roles
    // are cluster-wide and would outlive the test.
    let _role = DropRole(role.clone());
    let db = TestDb::new().await;
    let c = Canaries {
        key: format!("pk_canary_{}", uuid::Uuid::new_v4().simple()),
        password: format!("canary-pw-{}", uuid::Uuid::new_v4().simple()),
    };
    db.execute(&format!(
        "create table customers (id int primary key, email text, first_name text);
         insert into customers select n, 'Customer' || n || '@Example.com', 'Name' || n from generate_series(1, 20) n;
         update customers set email = 'not-an-email' where id = 7;
         create role {role} login password '{pw}';
         grant create, connect, temporary on database \"{db}\" to {role};
         grant usage, create on schema public to {role};
         grant select on customers to {role};",
        pw = c.password,
        db = db.name
    ))
    .await;

    let sb = Sandbox::start(SandboxConfig {
        api_key: Some(c.key.clone()),
        rate_limits: RateLimits::Off,
        ..SandboxConfig::default()
    })
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("queries")).unwrap();
    std::fs::write(
        dir.path().join("queries/customers.sql"),
        "select id, email, first_name from customers order by id",
    )
    .unwrap();
    std::fs::write(dir.path().join("job.yaml"), JOB).unwrap();
    let url = format!(
        "postgres://{role}:{pw}@127.0.0.1:5432/{db}?sslmode=disable",
        pw = c.password,
        db = db.name
    );
    let env = [
        ("DATABASE_URL", url.as_str()),
        ("KLAVIYO_BASE_URL", sb.base_url()),
        ("KLAVIYO_API_KEY", c.key.as_str()),
    ];
    let commands: [(&[&str], i32); 8] = [
        (&["validate", "job.yaml"], 0),
        (&["check", "job.yaml"], 0),
        (&["preview", "job.yaml", "--limit", "20"], 0),
        (&["plan", "job.yaml", "-o", "plan.json"], 0),
        (
            &[
                "run",
                "job.yaml",
                "--report",
                "r.json",
                "--rejects",
                "rj.csv",
            ],
            67,
        ),
        (&["history", "job.yaml"], 0),
        (&["query", "run", "queries/customers.sql"], 0),
        // First pass: stale (the run moved the state). Second: nothing moved, the plan
        // applies, its one rejected row makes it a partial success.
        (&["apply", "plan.json"], 1),
    ];
    for format in ["text", "json"] {
        for (args, want) in commands {
            let mut all = vec!["--log-format", format];
            all.extend_from_slice(args);
            let (code, stdout, stderr) = kdit(dir.path(), &env, &all);
            let what = format!("`kdit {}`", all.join(" "));
            let want = if args[0] == "apply" && format == "json" {
                67
            } else {
                want
            };
            assert_eq!(code, want, "{what}\n{stdout}\n{stderr}");
            c.assert_absent(&format!("the stdout of {what}"), &stdout);
            c.assert_absent(&format!("the stderr of {what}"), &stderr);
            if format == "json" {
                assert!(
                    stderr.lines().any(|l| l.starts_with('{')),
                    "{what}: trace logging logs"
                );
            }
        }
        for file in ["plan.json", "r.json", "rj.csv"] {
            let text = std::fs::read_to_string(dir.path().join(file))
                .unwrap_or_else(|e| panic!("{file}: {e}"));
            c.assert_absent(file, &text);
        }
        let rejects = std::fs::read_to_string(dir.path().join("rj.csv")).unwrap();
        assert!(rejects.contains("email_syntax"), "{rejects}");
    }
    assert_eq!(sb.profiles().len(), 19);

    // A failing connection (nothing listens on port 1): the password is not echoed.
    let bad = format!(
        "postgres://{role}:{pw}@127.0.0.1:1/nope?sslmode=disable",
        pw = c.password
    );
    for args in [
        &["plan", "job.yaml"][..],
        &["check", "job.yaml"],
        &["query", "run", "queries/customers.sql"],
    ] {
        let (code, stdout, stderr) = kdit(
            dir.path(),
            &[
                ("DATABASE_URL", bad.as_str()),
                ("KLAVIYO_BASE_URL", sb.base_url()),
                ("KLAVIYO_API_KEY", c.key.as_str()),
            ],
            args,
        );
        assert_eq!(code, 1, "{stdout}\n{stderr}");
        assert!(
            format!("{stdout}{stderr}").contains("@127.0.0.1:1/nope"),
            "the error says where: {stdout}{stderr}"
        );
        c.assert_absent("a connection error", &format!("{stdout}{stderr}"));
    }
    // Nor a wrong key: the sandbox refuses it, the message does not echo it.
    let (code, stdout, stderr) = kdit(
        dir.path(),
        &[
            ("DATABASE_URL", url.as_str()),
            ("KLAVIYO_BASE_URL", sb.base_url()),
            ("KLAVIYO_API_KEY", "pk_canary_wrong_key_0123456789"),
        ],
        &["plan", "job.yaml"],
    );
    assert_eq!(code, 1, "{stdout}\n{stderr}");
    c.assert_absent("a refused key", &format!("{stdout}{stderr}"));
}

/// Drops a role once its test database is gone.
struct DropRole(String);

impl Drop for DropRole {
    fn drop(&mut self) {
        let role = self.0.clone();
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async {
                let _ = connect(&admin_url())
                    .await
                    .batch_execute(&format!("drop role if exists {role}"))
                    .await;
            });
        })
        .join();
    }
}
