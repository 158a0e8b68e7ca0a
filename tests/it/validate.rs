//! `kdit validate` and `kdit schema` through the real binary: every kind of problem, with its
//! exact message, location and exit status.

use crate::support;

use serde_json::Value;
use support::cli::{Kdit, repo};

const VALID: &str = r#"version: 1
name: demo
query:
  sql: select 1 as id, 'a@example.com' as email
profiles:
  key: email
  fields:
    email: email
    external_id: id
"#;

/// Runs `kdit validate --format json` on one job file and returns (code, line, col, message).
fn problems(job: &str, extra: &[(&str, &str)]) -> (i32, Vec<(String, usize, usize, String)>) {
    let mut t = Kdit::new().file("job.yaml", job);
    for (path, contents) in extra {
        t = t.file(path, contents);
    }
    let run = t.args(&["validate", "--format", "json", "job.yaml"]).run();
    let doc: Value = serde_json::from_str(&run.stdout)
        .unwrap_or_else(|e| panic!("json output: {e}\n{}\n{}", run.stdout, run.stderr));
    let list = doc["diagnostics"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| {
            (
                d["code"].as_str().unwrap().to_string(),
                d["line"].as_u64().unwrap() as usize,
                d["column"].as_u64().unwrap() as usize,
                d["message"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    (run.code, list)
}

fn one(job: &str, extra: &[(&str, &str)]) -> (String, usize, usize, String) {
    let (code, mut list) = problems(job, extra);
    assert_eq!(code, 65, "invalid jobs exit with 65: {list:?}");
    assert_eq!(list.len(), 1, "expected exactly one problem: {list:?}");
    list.remove(0)
}

fn p(code: &str, line: usize, col: usize, msg: &str) -> (String, usize, usize, String) {
    (code.to_string(), line, col, msg.to_string())
}

#[test]
fn a_valid_job_passes_with_exit_zero() {
    Kdit::new()
        .file("jobs/a.yaml", VALID)
        .args(&["validate"])
        .run()
        .code(0)
        .stdout("ok: 1 job file valid\n");
}

#[test]
fn the_committed_examples_and_jobs_are_valid() {
    let root = repo();
    let run = Kdit::new()
        .args(&[
            "validate",
            root.join("jobs").to_str().unwrap(),
            root.join("examples").to_str().unwrap(),
        ])
        .run();
    run.code(0).stdout_has("valid");
    assert!(!run.stdout.contains("warning"), "{}", run.stdout);
}

#[test]
fn human_output_shows_file_line_column_source_and_hint() {
    let job = VALID.replace("profiles:\n", "profiles:\n  on_nul: keep\n");
    Kdit::new()
        .file("job.yaml", job)
        .args(&["validate", "job.yaml"])
        .run()
        .code(65)
        .stdout(
            "error[unknown-key]: unknown key `on_nul` in `profiles`
  --> job.yaml:6:3
  |
6 |   on_nul: keep
  |   ^^^^^^
  = hint: did you mean `on_null`?

error: 1 of 1 file invalid (1 error)
",
        );
}

#[test]
fn github_format_prints_workflow_annotations() {
    let job = VALID.replace("key: email", "key: emale");
    Kdit::new()
        .file("job.yaml", job)
        .args(&["validate", "--format", "github", "job.yaml"])
        .run()
        .code(65)
        .stdout(
            "::error file=job.yaml,line=6,col=8,title=kdit invalid-value::`emale` is not a valid value for `profiles.key`%0Ahint: did you mean `email`?
kdit validate: 1 files checked, 1 invalid, 1 errors
",
        );
}

#[test]
fn yaml_syntax_errors_are_located() {
    let job = VALID.replace("  key: email\n", "  key: [email\n");
    let (code, line, col, msg) = one(&job, &[]);
    assert_eq!(code, "yaml-syntax");
    assert_eq!((line, col), (7, 9));
    assert_eq!(
        msg,
        "invalid YAML: did not find expected ',' or ']' (while parsing a flow sequence at line 6 column 8)"
    );
}

#[test]
fn wrong_types_missing_keys_and_unknown_keys() {
    assert_eq!(
        one(&VALID.replace("version: 1", "version: \"one\""), &[]),
        p("invalid-value", 1, 10, "`version` must be 1, not \"one\"")
    );
    assert_eq!(
        one(&format!("{VALID}batch: {{ size: many }}\n"), &[]),
        p(
            "wrong-type",
            10,
            16,
            "`batch.size` must be an integer, not a string"
        )
    );
    assert_eq!(
        one(&VALID.replace("  key: email\n", ""), &[]),
        p(
            "missing-key",
            6,
            3,
            "missing required key `key` in `profiles`"
        )
    );
    assert_eq!(
        one(&format!("{VALID}bacth: {{ size: 10 }}\n"), &[]),
        p("unknown-key", 10, 1, "unknown key `bacth`")
    );
}

#[test]
fn all_problems_of_all_files_are_reported_at_once() {
    let bad = VALID
        .replace("name: demo", "name: demo\ncolour: blue")
        .replace("external_id: id", "external_id: id\n    frist_name: first");
    let run = Kdit::new()
        .file("jobs/a.yaml", &bad)
        .file(
            "jobs/b.yaml",
            VALID
                .replace("demo", "other")
                .replace("key: email", "key: phone_number"),
        )
        .file("jobs/c.yaml", VALID.replace("demo", "third"))
        .args(&["validate", "--format", "json"])
        .run();
    run.code(65);
    let doc: Value = serde_json::from_str(&run.stdout).unwrap();
    let codes: Vec<(&str, &str)> = doc["diagnostics"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| (d["file"].as_str().unwrap(), d["code"].as_str().unwrap()))
        .collect();
    assert_eq!(
        codes,
        vec![
            ("jobs/a.yaml", "unknown-key"),
            ("jobs/a.yaml", "unknown-attribute"),
            ("jobs/b.yaml", "key-not-mapped"),
        ]
    );
    assert_eq!(doc["valid"], Value::Bool(false));
}

#[test]
fn a_missing_query_file_is_named() {
    let job = VALID.replace(
        "sql: select 1 as id, 'a@example.com' as email",
        "file: queries/nope.sql",
    );
    assert_eq!(
        one(&job, &[]),
        p(
            "query-file-missing",
            4,
            9,
            "query file `queries/nope.sql` cannot be read: no such file"
        )
    );
}

#[test]
fn a_stored_query_next_to_the_job_is_found() {
    let job = VALID.replace(
        "sql: select 1 as id, 'a@example.com' as email",
        "file: queries/q.sql",
    );
    let (code, list) = problems(
        &job,
        &[("queries/q.sql", "select 1 as id, 'a@b.co' as email\n")],
    );
    assert_eq!((code, list), (0, vec![]));
}

#[test]
fn a_template_column_the_mapping_never_defines() {
    let job = VALID.replace(
        "external_id: id",
        "external_id: id\n    properties.plan: { template: \"{{ plan | upper }}\" }",
    );
    assert_eq!(
        one(&job, &[]),
        p(
            "template-column",
            10,
            34,
            "the template uses `plan`, a column the mapping never defines"
        )
    );
    let declared = job.replace("  sql:", "  columns: [plan]\n  sql:");
    assert_eq!(problems(&declared, &[]).1, vec![]);
}

#[test]
fn unknown_attributes_and_malformed_property_keys() {
    assert_eq!(
        one(
            &VALID.replace("external_id: id", "external_id: id\n    frist_name: id"),
            &[]
        ),
        p(
            "unknown-attribute",
            10,
            5,
            "`frist_name` is not a Klaviyo profile attribute"
        )
    );
    assert_eq!(
        one(
            &VALID.replace("external_id: id", "external_id: id\n    location.cty: id"),
            &[]
        ),
        p(
            "unknown-attribute",
            10,
            5,
            "`cty` is not a Klaviyo location attribute"
        )
    );
    assert_eq!(
        one(
            &VALID.replace("external_id: id", "external_id: id\n    properties..x: id"),
            &[]
        ),
        p(
            "malformed-property",
            10,
            5,
            "malformed custom property key `properties..x`: it has an empty name between dots"
        )
    );
}

#[test]
fn duplicate_list_names() {
    let job = format!("{VALID}lists:\n  - name: VIP\n  - name: vip\n    mode: mirror\n");
    assert_eq!(
        one(&job, &[]),
        p("duplicate-list", 12, 11, "list `vip` is named twice")
    );
}

#[test]
fn batch_size_above_klaviyos_limit() {
    assert_eq!(
        one(&format!("{VALID}batch: {{ size: 10001 }}\n"), &[]),
        p(
            "batch-too-large",
            10,
            16,
            "batch size 10001 is above Klaviyo's limit of 10000 profiles per bulk import job"
        )
    );
    assert_eq!(
        problems(&format!("{VALID}batch: {{ size: 10000 }}\n"), &[]).1,
        vec![]
    );
}

#[test]
fn tags_must_be_in_the_project_catalog() {
    let project =
        "version: 1\ntags:\n  groups:\n    - name: lifecycle\n      tags: [active, vip]\n";
    let job = format!("{VALID}tags:\n  profiles: [activ]\n  lists: [vip]\n");
    let run = Kdit::new()
        .file("kdit.yaml", project)
        .file("job.yaml", &job)
        .args(&["validate", "job.yaml"])
        .run();
    run.code(65).stdout(
        "error[unknown-tag]: tag `activ` is not in the project's tag catalog
  --> job.yaml:11:14
   |
11 |   profiles: [activ]
   |              ^^^^^
  = hint: did you mean `active`? Or add `activ` to the catalog in kdit.yaml

error: 1 of 2 files invalid (1 error)
",
    );
}

#[test]
fn a_tag_group_declared_twice_with_two_exclusive_settings_is_an_error() {
    let project = "version: 1\ntags:\n  groups:\n    - name: lifecycle\n      exclusive: true\n      tags: [active]\n    - name: lifecycle\n      tags: [vip]\n";
    let run = Kdit::new()
        .file("kdit.yaml", project)
        .file("job.yaml", VALID)
        .args(&["validate", "job.yaml"])
        .run();
    run.code(65).stdout(
        "error[duplicate-tag-group]: tag group `lifecycle` is declared twice, once exclusive and once not
  --> kdit.yaml:7:13
  |
7 |     - name: lifecycle
  |             ^^^^^^^^^
  = hint: first declared on line 4; merge the two (Klaviyo fixes a group's `exclusive` when it is created and cannot change it)

error: 1 of 2 files invalid (1 error)
",
    );
}

#[test]
fn consent_keys_need_their_partners() {
    let (_, list) = problems(
        &format!("{VALID}consent:\n  consented_at: opted_in_at\n  unsubscribe_column: opted_out\n"),
        &[],
    );
    let messages: Vec<&str> = list.iter().map(|d| d.3.as_str()).collect();
    assert!(
        messages
            .contains(&"`consent.consented_at` is set but `consent.subscribe` names no channel"),
        "{list:?}"
    );
    assert!(
        messages.contains(
            &"`consent.unsubscribe_column` is set but `consent.unsubscribe` names no channel"
        ),
        "{list:?}"
    );
    assert_eq!(
        one(
            &format!("{VALID}consent:\n  subscribe: [email]\n  unsubscribe: [email]\n"),
            &[]
        ),
        p(
            "consent",
            12,
            3,
            "`consent.unsubscribe` needs `unsubscribe_column`"
        )
    );
    assert_eq!(
        one(
            &VALID.replace("    external_id: id\n", "    properties.kdit_consent: id\n"),
            &[]
        ),
        p(
            "reserved-property",
            9,
            5,
            "`properties.kdit_consent` is reserved for kdit's consent bookkeeping"
        )
    );
}

#[test]
fn the_key_must_be_mapped() {
    let job = VALID
        .replace("key: email", "key: external_id")
        .replace("    external_id: id\n", "");
    assert_eq!(
        one(&job, &[]),
        p(
            "key-not-mapped",
            6,
            8,
            "the profile key is `external_id` but no field maps `external_id`"
        )
    );
}

#[test]
fn a_phone_transform_needs_a_region() {
    let job = VALID.replace(
        "external_id: id",
        "external_id: id\n    phone_number: { column: phone, transform: e164 }",
    );
    assert_eq!(
        one(&job, &[]),
        p(
            "phone-region",
            10,
            19,
            "field `phone_number` uses the `e164` transform but no region is set"
        )
    );
    let with_region = job.replace("transform: e164", "transform: e164, default_region: GB");
    assert_eq!(problems(&with_region, &[]).1, vec![]);
    let bad_region = job.replace("transform: e164", "transform: e164, default_region: XX");
    assert_eq!(one(&bad_region, &[]).0, "phone-region");
}

#[test]
fn secrets_in_job_files_are_errors() {
    let key = format!("{VALID}description: key pk_{}\n", "a1b2c3d4e5f6g7h8i9j0k1");
    assert_eq!(
        one(&key, &[]),
        p(
            "secret-in-file",
            10,
            14,
            "this looks like a literal Klaviyo private API key (`pk_…`)"
        )
    );
    let url = format!("{VALID}description: \"postgres://app:s3cret@db/shop\"\n");
    assert_eq!(
        one(&url, &[]),
        p("secret-in-file", 10, 14, "this URL carries a password")
    );
    // The secret itself is never echoed back in the message or the hint.
    let run = Kdit::new()
        .file("job.yaml", &url)
        .args(&["validate", "--format", "json", "job.yaml"])
        .run();
    let doc: Value = serde_json::from_str(&run.stdout).unwrap();
    assert!(!doc["diagnostics"].to_string().contains("s3cret"));
}

#[test]
fn segment_conditions_are_checked() {
    let job = format!(
        "{VALID}lists:\n  - name: VIP\nsegments:\n  - name: big\n    definition:\n      all:\n        - in list \"VIPs\"\n        - properties.ltv >> 3\n"
    );
    let (code, list) = problems(&job, &[]);
    assert_eq!(code, 65);
    assert_eq!(list[0].0, "unknown-list");
    assert_eq!((list[0].1, list[0].2), (16, 11));
    assert_eq!(list[1].0, "segment-condition");
}

#[test]
fn exit_codes_are_distinct() {
    Kdit::new()
        .args(&["validate", "nowhere"])
        .run()
        .code(64)
        .stderr_has("nowhere: no such file or folder");
    Kdit::new()
        .args(&["validate", "--format", "xml"])
        .run()
        .code(64);
    Kdit::new().args(&["frobnicate"]).run().code(64);
    Kdit::new()
        .args(&["--help"])
        .run()
        .code(0)
        .stdout_has("validate");
}

#[test]
fn the_committed_schemas_match_the_types() {
    for (flag, file) in [
        (None, "schemas/job.schema.json"),
        (Some("--project"), "schemas/project.schema.json"),
    ] {
        let mut args = vec!["schema"];
        args.extend(flag);
        let run = Kdit::new().args(&args).run();
        run.code(0);
        let committed = std::fs::read_to_string(repo().join(file)).unwrap();
        assert!(
            run.stdout == committed,
            "{file} is out of date with the job-file types; regenerate it with:\n    cargo run -- schema{} > {file}",
            flag.map(|f| format!(" {f}")).unwrap_or_default()
        );
    }
}

#[test]
fn schema_descriptions_come_from_doc_comments() {
    let schema: Value = serde_json::from_str(&Kdit::new().args(&["schema"]).run().stdout).unwrap();
    let desc = schema["properties"]["query"]["description"]
        .as_str()
        .unwrap();
    assert_eq!(desc, "The SQL query whose rows become profiles.");
}

#[test]
fn examples_start_with_the_schema_modeline() {
    for dir in ["jobs", "examples"] {
        for entry in std::fs::read_dir(repo().join(dir)).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "yaml") {
                let text = std::fs::read_to_string(&path).unwrap();
                assert!(
                    text.starts_with("# yaml-language-server: $schema="),
                    "{} lacks the modeline",
                    path.display()
                );
            }
        }
    }
}

#[test]
fn hostile_files_never_panic() {
    let deep = format!("{}1{}", "[".repeat(10_000), "]".repeat(10_000));
    let mut laughs = String::from(
        "a: &a [\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\"]\n",
    );
    for i in 0..9u8 {
        let prev = (b'a' + i) as char;
        let next = (b'a' + i + 1) as char;
        laughs.push_str(&format!("{next}: &{next} [*{prev},*{prev},*{prev},*{prev},*{prev},*{prev},*{prev},*{prev},*{prev}]\n"));
    }
    let big = "x".repeat(10 * 1024 * 1024);
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "truncated.yaml",
            VALID.as_bytes()[..VALID.len() / 2].to_vec(),
            "",
        ),
        (
            "garbage.yaml",
            (0..=255u8).cycle().take(4096).collect(),
            "not-utf8",
        ),
        ("deep.yaml", deep.into_bytes(), "yaml-too-deep"),
        ("laughs.yaml", laughs.into_bytes(), ""),
        ("big.yaml", big.into_bytes(), "file-too-large"),
        ("empty.yaml", Vec::new(), ""),
        (
            "tabs.yaml",
            b"version: 1\n\tname: x\n".to_vec(),
            "yaml-syntax",
        ),
        ("list.yaml", b"- 1\n- 2\n".to_vec(), "wrong-type"),
        (
            "two.yaml",
            format!("{VALID}---\n{VALID}").into_bytes(),
            "yaml-syntax",
        ),
    ];
    for (name, contents, expected_code) in cases {
        let run = Kdit::new()
            .file(name, contents)
            .args(&["validate", "--format", "json", name])
            .run();
        assert_eq!(run.code, 65, "{name}: {}\n{}", run.stdout, run.stderr);
        assert!(
            !run.stderr.contains("panicked"),
            "{name} panicked: {}",
            run.stderr
        );
        let doc: Value = serde_json::from_str(&run.stdout).unwrap();
        if !expected_code.is_empty() {
            assert_eq!(
                doc["diagnostics"][0]["code"], expected_code,
                "{name}: {}",
                run.stdout
            );
        }
    }
}

#[test]
fn two_hundred_job_files_validate_quickly() {
    let mut t = Kdit::new().file("jobs/queries/q.sql", "select 1 as id, 'a@b.co' as email\n");
    for i in 0..200 {
        let job = VALID.replace("demo", &format!("job-{i}")).replace(
            "sql: select 1 as id, 'a@example.com' as email",
            "file: queries/q.sql",
        );
        t = t.file(&format!("jobs/job-{i}.yaml"), job);
    }
    let start = std::time::Instant::now();
    t.args(&["validate", "jobs"])
        .run()
        .code(0)
        .stdout("ok: 200 job files valid\n");
    let took = start.elapsed();
    // A debug build on a busy 2-core CI machine: generous, still catches an accidental
    // quadratic or a per-file schema compile.
    assert!(took.as_secs_f64() < 3.0, "200 files took {took:?}");
}

#[test]
fn stored_query_parameters_are_checked_against_their_declarations() {
    let job = VALID.replace(
        "sql: select 1 as id, 'a@example.com' as email",
        "file: queries/q.sql\n  params: { since: 7d, extra: 3 }",
    );
    let sql = "-- @param since interval  how far back\nselect 1 as id, 'a@b.co' as email\nwhere now() - {{ sinse }} < now()\n";
    let (code, list) = problems(&job, &[("queries/q.sql", sql)]);
    assert_eq!(code, 65);
    assert_eq!(
        list,
        vec![
            p(
                "query",
                3,
                1,
                "the query uses `sinse`, which is not a declared parameter"
            ),
            p(
                "query",
                5,
                24,
                "`extra` is not a parameter of queries/q.sql"
            ),
        ]
    );
}

#[test]
fn inline_sql_parameters_must_have_values() {
    let job = VALID.replace(
        "sql: select 1 as id, 'a@example.com' as email",
        "sql: |\n    select 1 as id, 'a@b.co' as email\n    where x > {{ nope }}",
    );
    assert_eq!(
        one(&job, &[]),
        p("query", 6, 1, "the query uses `nope`, which has no value")
    );
}

#[test]
fn query_list_shows_parameters_and_the_jobs_using_each_query() {
    let q = "-- @param since interval = 7d  how far back\n-- @param country text\nselect 1 as id, 'a@b.co' as email where now() - {{ since }} < now()\n";
    let job = |name: &str| {
        VALID.replace("demo", name).replace(
            "sql: select 1 as id, 'a@example.com' as email",
            "file: queries/shared.sql",
        )
    };
    Kdit::new()
        .file("jobs/queries/shared.sql", q)
        .file("jobs/queries/unused.sql", "select 1\n")
        .file("jobs/a.yaml", job("alpha"))
        .file("jobs/b.yaml", job("beta"))
        .args(&["query", "list"])
        .run()
        .code(0)
        .stdout(
            "jobs/queries/shared.sql
  params   since interval  = 7d  how far back
           country text    (no default)
  used by  alpha (jobs/a.yaml), beta (jobs/b.yaml)

jobs/queries/unused.sql
  params   (none)
  used by  (no job)
",
        );
}

#[test]
fn commands_acting_on_one_job_refuse_a_path_holding_several() {
    // `plan`, `run`, `apply` (through its plan's job file), `check`, `preview` and `history`
    // act on one job: given a folder of several, they refuse (usage, 64) before anything
    // connects, rather than act on the first. The database named here cannot be reached, so
    // a command that went on would fail differently.
    let plan = r#"{"format_version": 1, "job": "alpha", "job_file": "jobs", "query": "inline SQL",
        "query_seconds": 0.0, "rows": 0, "creates": 0, "updates": 0, "unchanged": 0,
        "rejected": 0, "create_samples": [], "update_samples": [], "reject_counts": [],
        "reject_samples": [], "lists": [], "state_profiles": 0, "last_run": null,
        "batch_size": 1000, "guards": [], "rows_digest": "", "state_version": ""}"#;
    let folder = || {
        Kdit::new()
            .file("jobs/a.yaml", VALID.replace("demo", "alpha"))
            .file("jobs/b.yaml", VALID.replace("demo", "beta"))
            // Invalid: the refusal comes first, whatever the jobs hold.
            .file("jobs/c.yaml", "version: 1\nname: gamma\n")
            .file("plan.json", plan)
            .env("DATABASE_URL", "postgres://nobody@127.0.0.1:1/nowhere")
            .env("KLAVIYO_API_KEY", "pk_not_a_key")
    };
    let refusal = "error: jobs holds 3 jobs: jobs/a.yaml, jobs/b.yaml, jobs/c.yaml; name one
hint: give the file of the one job to act on, e.g. jobs/a.yaml
";
    let commands: [&[&str]; 7] = [
        &["plan", "jobs"],
        &["run", "jobs"],
        &["run", "--dry-run", "jobs"],
        &["apply", "plan.json"],
        &["check", "jobs"],
        &["preview", "jobs"],
        &["history", "jobs"],
    ];
    for args in commands {
        let mut run = folder().args(args).run();
        // The command's name in front, so a failure says which one.
        run.stderr = format!("{args:?}\n{}", run.stderr);
        run.code(64)
            .stdout("")
            .stderr(&format!("{args:?}\n{refusal}"));
    }
    // The folder is named as given.
    Kdit::new()
        .file("jobs/a.yaml", VALID.replace("demo", "alpha"))
        .file("jobs/b.yaml", VALID.replace("demo", "beta"))
        .args(&["plan", "jobs/"])
        .run()
        .code(64)
        .stderr(
            "error: jobs/ holds 2 jobs: jobs/a.yaml, jobs/b.yaml; name one
hint: give the file of the one job to act on, e.g. jobs/a.yaml
",
        );
}

/// A job that validated cannot be made to read a device or a huge file at run time: the query
/// file is read once, by the job loader's checked reader, and `plan` refuses it with the words
/// `validate` uses.
#[test]
fn a_query_file_replaced_after_validation_is_refused_at_run_time() {
    use support::cli::bin;
    let t = Kdit::new()
        .file(
            "jobs/q.yaml",
            "version: 1\nname: q\nquery: { file: queries/q.sql }\nprofiles:\n  key: email\n  fields:\n    email: email\n",
        )
        .file("jobs/queries/q.sql", "select 'a@example.com' as email\n");
    let kdit = |args: &[&str]| {
        let out = std::process::Command::new(bin())
            .args(args)
            .current_dir(t.path())
            .env("NO_COLOR", "1")
            .env(
                "DATABASE_URL",
                "postgres://kdit@127.0.0.1:1/none?connect_timeout=1",
            )
            .output()
            .expect("run kdit");
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, stdout, stderr) = kdit(&["validate", "jobs/q.yaml"]);
    assert_eq!(code, 0, "{stdout}{stderr}");
    let query = t.path().join("jobs/queries/q.sql");

    let big = format!(
        "select 'a@example.com' as email -- {}\n",
        "x".repeat(2 << 20)
    );
    let device = || {
        std::fs::remove_file(&query).unwrap();
        std::os::unix::fs::symlink("/dev/zero", &query).unwrap();
    };
    let huge = || {
        std::fs::remove_file(&query).unwrap();
        std::fs::write(&query, &big).unwrap();
    };
    for (replace, error) in [
        (
            &device as &dyn Fn(),
            "error[query-file-missing]: query file `queries/q.sql` cannot be read: not a regular file".to_string(),
        ),
        (
            &huge as &dyn Fn(),
            format!(
                "error[file-too-large]: query file `queries/q.sql` is {} bytes or more",
                big.len()
            ),
        ),
    ] {
        replace();
        let (code, stdout, stderr) = kdit(&["validate", "jobs/q.yaml"]);
        assert_eq!(code, 65, "{stdout}{stderr}");
        let said = format!("{stdout}{stderr}");
        assert!(said.contains(&error), "{said}");
        let (code, stdout, plan_said) = kdit(&["plan", "--sandbox", "jobs/q.yaml"]);
        assert_eq!(code, 65, "{stdout}{plan_said}");
        assert_eq!(stdout, "");
        assert!(plan_said.contains(&error), "{plan_said}");
        // Word for word what `validate` says about the job.
        assert_eq!(plan_said, said, "plan:\n{plan_said}\nvalidate:\n{said}");
    }
}
