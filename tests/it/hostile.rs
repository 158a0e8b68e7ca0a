//! Hostile input: generated job files and row values must never make kdit panic.
//!
//! Property-based (proptest, bounded case counts so the file runs in seconds): the job-file
//! loader and compiler on arbitrary text and on mutated valid job files; the row transform on
//! arbitrary cells. Then a corpus of malformed job files (`tests/corpus/jobs/*.yaml`, each
//! naming the diagnostic code it must produce) and hostile values through a real PostgreSQL
//! table and the real binary.

use crate::support;

use std::path::Path;
use std::sync::Arc;

use kdit::job::load::{Kind, parse_text};
use kdit::job::spec::JobSpec;
use kdit::rows::cell::{Cell, Column};
use kdit::rows::transform::{Mapping, Transformer};
use proptest::prelude::*;
use support::cli::{Kdit, repo};
use support::pg::TestDb;

const VALID: &str = r#"version: 1
name: hostile
description: a job with one of everything the loader checks
query:
  sql: select email, phone, name, n, f, doc, tags, seen from t order by email
  timeout: 30s
profiles:
  key: email
  default_region: US
  fields:
    email: { column: email, transform: [trim, lowercase] }
    phone_number: { column: phone, transform: e164 }
    first_name: { column: name, transform: trim }
    properties.n: { column: n, type: number }
    properties.f: f
    properties.doc: doc
    properties.tags: tags
    properties.seen: { column: seen, type: datetime }
    properties.label: { template: "{{ name }}-{{ n }}" }
  on_null: keep
lists:
  - name: Everyone
    mode: mirror
batch: { size: 100 }
guards: { max_invalid: 10%, max_removals: 5% }
"#;

/// Loads and compiles `text` as a job file; checks every diagnostic is located.
fn load_and_compile(text: String) -> Result<(), TestCaseError> {
    let has_lines = !text.is_empty();
    let loaded = parse_text::<JobSpec>(Path::new("jobs/fuzz.yaml"), text, Kind::Job);
    let (_, compiled) = kdit::job::compile::compile(&loaded, None);
    for d in loaded.diagnostics.iter().chain(compiled.iter()) {
        if has_lines {
            prop_assert!(
                d.line >= 1,
                "diagnostic without a line: {} {}\n---\n{}",
                d.code,
                d.message,
                loaded.file.text
            );
        }
        prop_assert!(!d.message.is_empty(), "empty message for {}", d.code);
    }
    Ok(())
}

/// One edit of a valid job file.
#[derive(Debug, Clone)]
enum Edit {
    Delete(usize, usize),
    Insert(usize, String),
    DuplicateLine(usize),
    SwapLines(usize, usize),
    Indent(usize, usize),
    Replace(usize, char),
}

fn edit() -> impl Strategy<Value = Edit> {
    let piece = prop_oneof![
        any::<String>(),
        Just(": ".to_string()),
        Just("\n  - ".to_string()),
        Just("{{".to_string()),
        Just("&a *a ".to_string()),
        Just("!!binary ".to_string()),
        Just("\t".to_string()),
        Just("'".to_string()),
        Just("\"\\u0000\"".to_string()),
        Just("[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[".to_string()),
        Just("pk_live_0123456789abcdef".to_string()),
        Just("postgres://u:secret@h/db".to_string()),
    ];
    prop_oneof![
        (any::<usize>(), 0usize..40).prop_map(|(a, n)| Edit::Delete(a, n)),
        (any::<usize>(), piece).prop_map(|(a, s)| Edit::Insert(a, s)),
        any::<usize>().prop_map(Edit::DuplicateLine),
        (any::<usize>(), any::<usize>()).prop_map(|(a, b)| Edit::SwapLines(a, b)),
        (any::<usize>(), 0usize..6).prop_map(|(a, n)| Edit::Indent(a, n)),
        (any::<usize>(), any::<char>()).prop_map(|(a, c)| Edit::Replace(a, c)),
    ]
}

fn apply(text: &str, e: &Edit) -> String {
    let chars: Vec<char> = text.chars().collect();
    let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
    let at = |a: usize, len: usize| if len == 0 { 0 } else { a % len };
    match e {
        Edit::Delete(a, n) => {
            let start = at(*a, chars.len());
            let end = (start + n).min(chars.len());
            chars[..start].iter().chain(&chars[end..]).collect()
        }
        Edit::Insert(a, s) => {
            let i = at(*a, chars.len() + 1);
            let mut out: String = chars[..i].iter().collect();
            out.push_str(s);
            out.extend(&chars[i..]);
            out
        }
        Edit::Replace(a, c) => {
            let mut chars = chars;
            if !chars.is_empty() {
                let i = at(*a, chars.len());
                chars[i] = *c;
            }
            chars.into_iter().collect()
        }
        Edit::DuplicateLine(a) => {
            if !lines.is_empty() {
                let i = at(*a, lines.len());
                lines.insert(i, lines[i].clone());
            }
            lines.join("\n")
        }
        Edit::SwapLines(a, b) => {
            if !lines.is_empty() {
                let (i, j) = (at(*a, lines.len()), at(*b, lines.len()));
                lines.swap(i, j);
            }
            lines.join("\n")
        }
        Edit::Indent(a, n) => {
            if !lines.is_empty() {
                let i = at(*a, lines.len());
                lines[i] = format!("{}{}", " ".repeat(*n), lines[i].trim_start());
            }
            lines.join("\n")
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_text_never_panics_the_loader(text in any::<String>()) {
        load_and_compile(text)?;
    }

    #[test]
    fn arbitrary_bytes_read_lossily_never_panic_the_loader(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
        load_and_compile(String::from_utf8_lossy(&bytes).into_owned())?;
    }

    #[test]
    fn mutated_valid_jobs_never_panic_the_loader(edits in proptest::collection::vec(edit(), 1..6)) {
        let mut text = VALID.to_string();
        for e in &edits {
            text = apply(&text, e);
        }
        load_and_compile(text)?;
    }
}

// ---------------------------------------------------------------------------------------
// The row transform.

const COLUMNS: [(&str, &str); 8] = [
    ("email", "text"),
    ("phone", "text"),
    ("name", "text"),
    ("n", "numeric"),
    ("f", "float8"),
    ("doc", "jsonb"),
    ("tags", "_text"),
    ("seen", "timestamptz"),
];

fn transformer() -> Transformer {
    let loaded = parse_text::<JobSpec>(Path::new("jobs/hostile.yaml"), VALID.into(), Kind::Job);
    assert!(loaded.diagnostics.is_empty(), "{:?}", loaded.diagnostics);
    let spec = loaded.spec.expect("the valid job loads");
    let mapping = Arc::new(Mapping::compile(&spec.profiles, None).expect("mapping compiles"));
    let columns: Vec<Column> = COLUMNS
        .iter()
        .map(|(name, t)| Column {
            name: name.to_string(),
            type_name: t.to_string(),
            supported: true,
        })
        .collect();
    mapping.bind(&columns).expect("columns bind")
}

/// Text that is hard to handle: huge, control characters, lossy UTF-8, odd unicode.
fn hostile_text() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<String>(),
        proptest::collection::vec(any::<u8>(), 0..200)
            .prop_map(|b| String::from_utf8_lossy(&b).into_owned()),
        (0u32..0x20, 1usize..50)
            .prop_map(|(c, n)| char::from_u32(c).unwrap().to_string().repeat(n)),
        (1usize..300_000).prop_map(|n| "x".repeat(n)),
        (1usize..5000).prop_map(|n| format!("{}@example.com", "a".repeat(n))),
        Just("\u{202e}evil@example.com".to_string()),
        Just("  ".to_string()),
        Just("+1 (201) 555-0123".to_string()),
        Just("+999999999999999999999".to_string()),
        Just("ana@example.com".to_string()),
        Just("{{ 7 * 7 }}".to_string()),
        Just("\u{feff}bom@example.com".to_string()),
    ]
}

fn hostile_number() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("NaN".to_string()),
        Just("Infinity".to_string()),
        Just("-Infinity".to_string()),
        Just("1e308".to_string()),
        (1usize..2000).prop_map(|n| "9".repeat(n)),
        (1usize..2000).prop_map(|n| format!("0.{}1", "0".repeat(n))),
        any::<i64>().prop_map(|i| i.to_string()),
        any::<f64>().prop_map(|f| f.to_string()),
        hostile_text(),
    ]
}

fn nested_json(depth: usize, array: bool) -> serde_json::Value {
    let mut v = serde_json::json!("leaf");
    for i in 0..depth {
        v = if array {
            serde_json::Value::Array(vec![v])
        } else {
            serde_json::json!({ format!("k{i}"): v })
        };
    }
    v
}

fn hostile_json() -> impl Strategy<Value = serde_json::Value> {
    let leaf = prop_oneof![
        Just(serde_json::Value::Null),
        any::<bool>().prop_map(serde_json::Value::from),
        any::<i64>().prop_map(serde_json::Value::from),
        any::<f64>().prop_map(|f| serde_json::Number::from_f64(f)
            .map(serde_json::Value::Number)
            .unwrap_or(serde_json::Value::Null)),
        hostile_text().prop_map(serde_json::Value::from),
    ];
    prop_oneof![
        leaf.prop_recursive(6, 64, 8, |inner| prop_oneof![
            proptest::collection::vec(inner.clone(), 0..8).prop_map(serde_json::Value::Array),
            proptest::collection::vec((hostile_text(), inner), 0..8)
                .prop_map(|kv| serde_json::Value::Object(kv.into_iter().collect())),
        ]),
        // Up to serde_json's decoding limit (128): no deeper value can come from PostgreSQL.
        (1usize..128, any::<bool>()).prop_map(|(d, a)| nested_json(d, a)),
    ]
}

/// Any cell of any variant: the transform must cope even when a cell's variant does not
/// match its column's type.
fn hostile_cell() -> impl Strategy<Value = Cell> {
    let scalar = prop_oneof![
        Just(Cell::Null),
        any::<bool>().prop_map(Cell::Bool),
        any::<i64>().prop_map(Cell::Int),
        prop_oneof![
            any::<f64>(),
            Just(f64::NAN),
            Just(f64::INFINITY),
            Just(f64::NEG_INFINITY),
            Just(1e308),
            Just(-0.0),
            Just(f64::MIN_POSITIVE / 2.0),
        ]
        .prop_map(Cell::Float),
        hostile_number().prop_map(Cell::Numeric),
        hostile_text().prop_map(Cell::Text),
        (-300_000i64..300_000).prop_map(|d| Cell::Date(
            chrono::NaiveDate::from_num_days_from_ce_opt(d as i32 + 730_000)
                .unwrap_or(chrono::NaiveDate::MAX)
        )),
        prop_oneof![
            Just(chrono::DateTime::<chrono::Utc>::MIN_UTC),
            Just(chrono::DateTime::<chrono::Utc>::MAX_UTC),
            (0i64..4_000_000_000).prop_map(|s| chrono::DateTime::from_timestamp(s, 0).unwrap()),
        ]
        .prop_map(Cell::Timestamptz),
        any::<u128>().prop_map(|u| Cell::Uuid(uuid::Uuid::from_u128(u))),
        hostile_json().prop_map(Cell::Json),
    ];
    prop_oneof![
        4 => scalar.clone(),
        1 => proptest::collection::vec(scalar, 0..6).prop_map(Cell::Array),
    ]
}

/// A row whose cells mostly have their column's natural variant, sometimes any variant.
fn hostile_row() -> impl Strategy<Value = Vec<Cell>> {
    let typed = (
        hostile_text().prop_map(Cell::Text),
        hostile_text().prop_map(Cell::Text),
        hostile_text().prop_map(Cell::Text),
        hostile_number().prop_map(Cell::Numeric),
        any::<f64>().prop_map(Cell::Float),
        hostile_json().prop_map(Cell::Json),
        proptest::collection::vec(hostile_text().prop_map(Cell::Text), 0..5).prop_map(Cell::Array),
        Just(Cell::Timestamptz(chrono::DateTime::<chrono::Utc>::MAX_UTC)),
    )
        .prop_map(|(a, b, c, d, e, f, g, h)| vec![a, b, c, d, e, f, g, h]);
    (
        typed,
        proptest::collection::vec(proptest::option::weighted(0.3, hostile_cell()), 8),
    )
        .prop_map(|(mut row, overrides)| {
            for (cell, o) in row.iter_mut().zip(overrides) {
                if let Some(o) = o {
                    *cell = o;
                }
            }
            row
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn hostile_rows_give_a_profile_or_a_reject_with_a_rule(rows in proptest::collection::vec(hostile_row(), 1..4)) {
        let mut t = transformer();
        for (i, cells) in rows.into_iter().enumerate() {
            match t.row(i as u64 + 1, cells) {
                Ok(p) => {
                    // A profile is always serialisable to the JSON Klaviyo gets.
                    let json = serde_json::from_str::<serde_json::Value>(p.attributes.get());
                    prop_assert!(json.is_ok(), "{json:?}");
                }
                Err(r) => {
                    prop_assert_eq!(r.row_number, i as u64 + 1);
                    prop_assert!(!r.rule.as_str().is_empty());
                    prop_assert!(!r.message.is_empty(), "reject without a message: {:?}", r);
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// The corpus of malformed job files: `# expect: <code>` on the first line.

#[test]
fn every_corpus_job_gives_its_expected_error() {
    let dir = repo().join("tests/corpus/jobs");
    let mut entries: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    entries.sort();
    assert!(entries.len() >= 10, "the corpus is small: {entries:?}");
    let mut t = Kdit::new();
    let mut expected = Vec::new();
    for p in &entries {
        let bytes = std::fs::read(p).unwrap();
        let text = String::from_utf8_lossy(&bytes);
        let code = text
            .lines()
            .next()
            .and_then(|l| l.strip_prefix("# expect: "))
            .unwrap_or_else(|| panic!("{} lacks a `# expect: <code>` first line", p.display()))
            .trim()
            .to_string();
        let name = p.file_name().unwrap().to_str().unwrap().to_string();
        t = t.file(&format!("jobs/{name}"), &bytes);
        expected.push((name, code));
    }
    let run = t
        .file("jobs/queries/q.sql", "select 1 as email")
        .args(&["validate", "--format", "json", "jobs"])
        .run();
    assert_eq!(run.code, 65, "{}\n{}", run.stdout, run.stderr);
    assert!(!run.stderr.contains("panicked"), "{}", run.stderr);
    let doc: serde_json::Value = serde_json::from_str(&run.stdout)
        .unwrap_or_else(|e| panic!("json output: {e}\n{}", run.stdout));
    let diags = doc["diagnostics"].as_array().unwrap();
    for (name, code) in expected {
        let mine: Vec<(&str, u64)> = diags
            .iter()
            .filter(|d| d["file"].as_str().is_some_and(|f| f.ends_with(&name)))
            .map(|d| (d["code"].as_str().unwrap(), d["line"].as_u64().unwrap()))
            .collect();
        assert!(
            mine.iter().any(|(c, _)| *c == code),
            "{name}: expected `{code}`, got {mine:?}"
        );
        assert!(
            mine.iter().all(|(_, line)| *line >= 1),
            "{name}: a diagnostic has no line: {mine:?}"
        );
    }
}

// ---------------------------------------------------------------------------------------
// Hostile values through a real PostgreSQL table and the real binary.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_values_from_postgresql_are_clear_rejects_or_values() {
    let db = TestDb::new().await;
    db.execute(&format!(
        "create table t (id int primary key, email text, name text, n numeric, f float8, doc jsonb);
         insert into t values
           (1, 'huge@example.com', repeat('x', 200000), 1, 1, '{{}}'),
           (2, 'ctrl@example.com', E'a\\x01b\\x07c\\x1b[31mred\\x7f', 2, 2, '{{}}'),
           (3, 'big@example.com', 'Big', 1e308, 1e308, '{{}}'),
           (4, 'nan@example.com', 'NaN', 'NaN', 'NaN', '{{}}'),
           (5, 'deep@example.com', 'Deep', 5, 5, '{deep}'::jsonb),
           (6, E'tab\\t@example.com', 'Tab', 6, 6, '{{}}'),
           (7, 'ok@example.com', E'line\\nbreak', 7, 7, '{{\"a\": [1, {{\"b\": null}}]}}'),
           (8, 'inf@example.com', 'Inf', 8, 'Infinity', '{{}}');",
        // serde_json's own limit is 128 levels; see the test below for deeper values.
        deep = format_args!("{}1{}", "[".repeat(100), "]".repeat(100))
    ))
    .await;
    let job = r#"version: 1
name: hostile
query:
  sql: select id, email, name, n, f, doc from t order by id
profiles:
  key: email
  fields:
    email: email
    external_id: id
    first_name: name
    properties.n: { column: n, type: number }
    properties.f: f
    properties.doc: doc
"#;
    let run = Kdit::new()
        .file("job.yaml", job)
        .env("DATABASE_URL", &format!("{}?sslmode=disable", db.url))
        .args(&["preview", "job.yaml", "--limit", "20", "--format", "json"])
        .run();
    assert!(!run.stderr.contains("panicked"), "{}", run.stderr);
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    let doc: serde_json::Value = serde_json::from_str(&run.stdout)
        .unwrap_or_else(|e| panic!("preview --json: {e}\n{}", run.stdout));
    let rejects = doc["rejects"].as_array().expect("rejects");
    let rule = |row: u64| {
        rejects
            .iter()
            .find(|r| r["row_number"] == row)
            .map(|r| r["rule"].as_str().unwrap().to_string())
    };
    // 1e308 has 309 digits: more than Klaviyo keeps.
    assert_eq!(rule(3).as_deref(), Some("numeric_precision"), "{doc}");
    assert_eq!(rule(4).as_deref(), Some("numeric_precision"), "{doc}");
    assert_eq!(rule(6).as_deref(), Some("email_syntax"), "{doc}");
    assert_eq!(rule(8).as_deref(), Some("numeric_precision"), "{doc}");
    for r in rejects {
        assert!(!r["message"].as_str().unwrap().is_empty(), "{r}");
    }
    let profiles = doc["profiles"].as_array().expect("profiles");
    let ok = |row: u64| profiles.iter().any(|p| p["row_number"] == row);
    assert!(
        ok(2) || rule(2).is_some(),
        "control characters: a value or a reject: {doc}"
    );
    assert!(ok(7), "ordinary nesting passes: {doc}");
    assert!(ok(1) || rule(1).is_some(), "{doc}");
    assert!(ok(5) || rule(5).is_some(), "{doc}");
    assert_eq!(profiles.len() + rejects.len(), 8, "{doc}");
}

/// jsonb nested deeper than serde_json's recursion limit (128) cannot be decoded: that row
/// is rejected with a reason, the rows around it still go.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jsonb_deeper_than_the_decoder_allows_rejects_only_its_row() {
    let db = TestDb::new().await;
    db.execute(&format!(
        "create table t (id int primary key, email text, doc jsonb);
         insert into t values (1, 'a@example.com', '{{}}'), (2, 'b@example.com', '{deep}'::jsonb), (3, 'c@example.com', '[1]');",
        deep = format_args!("{}1{}", "[".repeat(5000), "]".repeat(5000))
    ))
    .await;
    let job = "version: 1\nname: deep\nquery:\n  sql: select id, email, doc from t order by id\nprofiles:\n  key: email\n  fields:\n    email: email\n    properties.doc: doc\n";
    let run = Kdit::new()
        .file("job.yaml", job)
        .env("DATABASE_URL", &format!("{}?sslmode=disable", db.url))
        .args(&["preview", "job.yaml", "--format", "json"])
        .run();
    assert!(!run.stderr.contains("panicked"), "{}", run.stderr);
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    let doc: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
    let rejects = doc["rejects"].as_array().unwrap();
    assert_eq!(rejects.len(), 1, "{doc}");
    assert_eq!(rejects[0]["row_number"], 2);
    assert_eq!(rejects[0]["rule"], "type_cast");
    assert!(
        rejects[0]["message"]
            .as_str()
            .unwrap()
            .contains("nested deeper than 128 levels"),
        "{doc}"
    );
    assert_eq!(doc["profiles"].as_array().unwrap().len(), 2, "{doc}");
}

// ---------------------------------------------------------------------------------------
// Found by fuzzing (fuzz/job_file): a job's stored query named a device.

/// `query.file: /dev/zero` made `kdit validate` read until it ran out of memory (a FIFO or
/// `/dev/stdin` waited forever). Stored queries are now regular files of at most 1 MiB, as
/// job files are; the device case is also in the corpus (`query-file-device.yaml`).
#[test]
fn a_query_file_that_is_a_device_or_huge_is_refused_not_read() {
    use kdit::job::load::{MAX_FILE_BYTES, ReadQueryError, read_query};
    assert!(matches!(
        read_query(Path::new("/dev/zero")),
        Err(ReadQueryError::NotAFile)
    ));
    let dir = tempfile::tempdir().unwrap();
    assert!(matches!(
        read_query(dir.path()),
        Err(ReadQueryError::NotAFile)
    ));

    let big = format!("select 1 as email -- {}\n", "x".repeat(MAX_FILE_BYTES));
    let run = Kdit::new()
        .file("jobs/queries/big.sql", &big)
        .file(
            "jobs/big.yaml",
            "version: 1\nname: big\nquery: { file: queries/big.sql }\nprofiles:\n  key: email\n  fields:\n    email: email\n",
        )
        .args(&["validate", "jobs"])
        .run();
    assert_eq!(run.code, 65, "{}\n{}", run.stdout, run.stderr);
    let out = format!("{}{}", run.stdout, run.stderr);
    assert!(
        out.contains(&format!(
            "error[file-too-large]: query file `queries/big.sql` is {} bytes or more",
            big.len()
        )),
        "{out}"
    );
}
