//! Structured rows (the `arbitrary` crate) through a compiled job's mapping: the transforms
//! (`trim`, `lowercase`, `e164`, `email`), templates, casts, property nesting and Klaviyo's
//! validation rules, exactly as a run does it (`rows::prepare` → `Mapping::bind` →
//! `Transformer::row` / `Transformer::rows`).
//!
//! Cells are hostile: text with control characters, lossy UTF-8, huge strings; numerics out
//! of range, NaN, long digit strings; nested JSON (up to the 128 levels PostgreSQL's values
//! can reach through the decoder); NULLs; any variant in any column.
//!
//! Never panics; every row gives a profile (serialisable, at most 100 KB) or a reject (its
//! row number, a rule, a message); the parallel `rows` gives what `row` gives row by row.
#![no_main]

use std::path::Path;
use std::sync::{Arc, OnceLock};

use arbitrary::Arbitrary;
use kdit::job::load::{Kind, parse_text};
use kdit::job::spec::JobSpec;
use kdit::rows::cell::{Cell, Column};
use kdit::rows::transform::{MAX_PROFILE_BYTES, Mapping, ProfileRow, Reject, Transformer};
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

/// Representative jobs: (job file, the query's columns and their PostgreSQL types).
const JOBS: [(&str, &[(&str, &str)]); 3] = [
    (
        // Email key, e164 with the job's region, trims, casts, a template over two columns.
        r#"version: 1
name: fuzz-contact
query: { sql: "select * from t", columns: [plan] }
profiles:
  key: email
  default_region: US
  fields:
    email: { column: email, transform: [trim, lowercase] }
    phone_number: { column: phone, transform: e164 }
    first_name: { column: first_name, transform: trim }
    properties.ltv: { column: ltv, type: number }
    properties.n: { column: n, type: integer }
    properties.plan: { template: "{{ plan | upper }}-{{ n }}" }
    properties.seen: { column: seen, type: datetime }
    properties.tags: { column: tags, type: list }
    properties.doc: { column: doc, type: json }
  on_null: unset
"#,
        &[
            ("email", "text"),
            ("phone", "text"),
            ("first_name", "text"),
            ("ltv", "numeric"),
            ("n", "int8"),
            ("plan", "text"),
            ("seen", "timestamptz"),
            ("tags", "_text"),
            ("doc", "jsonb"),
        ],
    ),
    (
        // Phone key (a field's own region), location, nested properties, defaults, booleans.
        r#"version: 1
name: fuzz-phone
query: { sql: "select * from t" }
profiles:
  key: phone_number
  fields:
    phone_number: { column: phone, transform: [trim, e164], default_region: GB }
    email: { column: email, transform: email, on_null: keep }
    external_id: id
    last_name: { column: name, transform: uppercase, default: "Unknown" }
    location.city: city
    location.latitude: { column: lat, type: number }
    location.longitude: { column: lon, type: number }
    properties.account.tier.name: { column: tier, transform: lowercase }
    properties.account.active: { column: active, type: boolean }
    properties.account.since: { column: since, type: date }
    properties.account.score: { column: score, type: string }
    properties.source: { value: "fuzz" }
  on_null: keep
"#,
        &[
            ("phone", "text"),
            ("email", "text"),
            ("id", "int8"),
            ("name", "text"),
            ("city", "text"),
            ("lat", "float8"),
            ("lon", "numeric"),
            ("tier", "text"),
            ("active", "bool"),
            ("since", "date"),
            ("score", "float8"),
        ],
    ),
    (
        // External id key, raw JSON and arrays as properties, a template over JSON.
        r#"version: 1
name: fuzz-external
query: { sql: "select * from t" }
profiles:
  key: external_id
  fields:
    external_id: { column: id, type: string }
    email: { column: email, transform: [trim, email] }
    organization: { column: org, type: string }
    properties.meta: meta
    properties.list: { column: items, type: list }
    properties.uuid: uid
    properties.when: { column: at, type: datetime }
    properties.label: { template: "{{ org }}/{{ meta }}" }
  on_null: unset
"#,
        &[
            ("id", "uuid"),
            ("email", "text"),
            ("org", "text"),
            ("meta", "json"),
            ("items", "_int8"),
            ("uid", "uuid"),
            ("at", "timestamp"),
        ],
    ),
];

struct Compiled {
    mapping: Arc<Mapping>,
    columns: Vec<Column>,
}

fn jobs() -> &'static [Compiled] {
    static JOBS_COMPILED: OnceLock<Vec<Compiled>> = OnceLock::new();
    JOBS_COMPILED.get_or_init(|| {
        JOBS.iter()
            .map(|(text, columns)| {
                let path = Path::new("jobs/fuzz.yaml");
                let loaded = parse_text::<JobSpec>(path, text.to_string(), Kind::Job);
                assert!(loaded.diagnostics.is_empty(), "{:?}", loaded.diagnostics);
                let (job, diags) = kdit::job::compile::compile(&loaded, None);
                assert!(diags.is_empty(), "{diags:?}");
                let job = job.expect("the job compiles");
                let prepared =
                    kdit::rows::prepare(&job).unwrap_or_else(|e| panic!("the job prepares: {e}"));
                let columns: Vec<Column> = columns
                    .iter()
                    .map(|(name, t)| Column {
                        name: name.to_string(),
                        type_name: t.to_string(),
                        supported: true,
                    })
                    .collect();
                if let Err(p) = prepared.mapping.bind(&columns) {
                    panic!("the columns bind: {p:?}");
                }
                Compiled {
                    mapping: prepared.mapping,
                    columns,
                }
            })
            .collect()
    })
}

/// Text that is hard to handle.
#[derive(Debug, Arbitrary)]
enum Text {
    Any(String),
    /// Bytes read lossily, as a client that is not strict about UTF-8 would.
    Lossy(Vec<u8>),
    /// A control character (or DEL) repeated.
    Control(u8, u8),
    /// One character repeated up to ~300,000 times (larger than a profile may be).
    Huge(char, u16, u8),
    Email(String, String),
    Phone(Vec<u8>, bool),
    Known(u8),
}

const KNOWN: [&str; 16] = [
    "",
    "  ",
    "ana@example.com",
    " Ana@Example.COM ",
    "\u{202e}evil@example.com",
    "\u{feff}bom@example.com",
    "+1 (201) 555-0123",
    "+44 20 7946 0958",
    "020 7946 0958",
    "+999999999999999999999",
    "{{ 7 * 7 }}",
    "{% for x in range(99999999) %}{% endfor %}",
    "a\u{0}b",
    "\u{1b}[31mred\u{7f}",
    "ünïcödé@exämple.com",
    "1e308",
];

impl Text {
    fn build(self) -> String {
        match self {
            Text::Any(s) => s,
            Text::Lossy(b) => String::from_utf8_lossy(&b).into_owned(),
            Text::Control(c, n) => {
                let c = if c % 33 == 32 {
                    '\u{7f}'
                } else {
                    char::from(c % 32)
                };
                c.to_string().repeat(n as usize + 1)
            }
            Text::Huge(c, n, scale) => c.to_string().repeat(n as usize * (scale as usize % 5)),
            Text::Email(local, domain) => format!("{local}@{domain}"),
            Text::Phone(digits, plus) => {
                let digits: String = digits.iter().map(|d| char::from(b'0' + d % 10)).collect();
                if plus { format!("+{digits}") } else { digits }
            }
            Text::Known(i) => KNOWN[i as usize % KNOWN.len()].to_string(),
        }
    }
}

/// PostgreSQL `numeric` text: exact digits (any length), specials, or not a number at all.
#[derive(Debug, Arbitrary)]
enum Numeric {
    Digits {
        negative: bool,
        integer: Vec<u8>,
        fraction: Option<Vec<u8>>,
    },
    Nines(u16),
    Tiny(u16),
    Special(u8),
    Float(f64),
    Int(i64),
    Text(Text),
}

impl Numeric {
    fn build(self) -> String {
        let digits = |v: &[u8]| {
            v.iter()
                .map(|d| char::from(b'0' + d % 10))
                .collect::<String>()
        };
        match self {
            Numeric::Digits {
                negative,
                integer,
                fraction,
            } => {
                let mut s = if negative {
                    "-".to_string()
                } else {
                    String::new()
                };
                let i = digits(&integer);
                s.push_str(if i.is_empty() { "0" } else { &i });
                if let Some(f) = fraction {
                    s.push('.');
                    s.push_str(&digits(&f));
                }
                s
            }
            Numeric::Nines(n) => "9".repeat(n as usize % 3000 + 1),
            Numeric::Tiny(n) => format!("0.{}1", "0".repeat(n as usize % 3000)),
            Numeric::Special(i) => {
                ["NaN", "Infinity", "-Infinity", "-0", "0.000"][i as usize % 5].into()
            }
            Numeric::Float(f) => f.to_string(),
            Numeric::Int(i) => i.to_string(),
            Numeric::Text(t) => t.build(),
        }
    }
}

/// JSON as PostgreSQL's json/jsonb can hold it.
#[derive(Debug, Arbitrary)]
enum Json {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Text(Text),
    Array(Vec<Json>),
    Object(Vec<(Text, Json)>),
    /// A chain of single-element arrays or objects, `depth` deep.
    Deep(u8, bool),
}

/// serde_json's recursion limit: PostgreSQL values nested deeper reach the transform as
/// `Cell::Unreadable` (see `source.rs`), never as JSON.
const MAX_JSON_DEPTH: usize = 127;

impl Json {
    fn build(self, depth: usize) -> Value {
        if depth >= MAX_JSON_DEPTH {
            return Value::Null;
        }
        match self {
            Json::Null => Value::Null,
            Json::Bool(b) => Value::Bool(b),
            Json::Int(i) => Value::from(i),
            Json::Float(f) => serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number),
            Json::Text(t) => Value::String(t.build()),
            Json::Array(items) => {
                Value::Array(items.into_iter().map(|j| j.build(depth + 1)).collect())
            }
            Json::Object(kv) => Value::Object(
                kv.into_iter()
                    .map(|(k, v)| (k.build(), v.build(depth + 1)))
                    .collect(),
            ),
            Json::Deep(n, array) => {
                let mut v = Value::from("leaf");
                for i in 0..(n as usize).min(MAX_JSON_DEPTH - depth) {
                    v = if array {
                        Value::Array(vec![v])
                    } else {
                        serde_json::json!({ format!("k{i}"): v })
                    };
                }
                v
            }
        }
    }
}

/// A cell of any variant (not necessarily its column's).
#[derive(Debug, Arbitrary)]
enum FuzzCell {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    FloatSpecial(u8),
    Numeric(Numeric),
    Text(Text),
    Date(i32),
    Timestamp(i64, u32),
    Timestamptz(i64, u32),
    Uuid(u128),
    Json(Json),
    Array(Vec<Scalar>),
    Unreadable(String),
}

/// Array elements: PostgreSQL arrays hold scalars (multi-dimensional ones are flattened).
#[derive(Debug, Arbitrary)]
enum Scalar {
    Null,
    Int(i64),
    Float(f64),
    Text(Text),
    Numeric(Numeric),
    Bool(bool),
}

impl FuzzCell {
    fn build(self) -> Cell {
        match self {
            FuzzCell::Null => Cell::Null,
            FuzzCell::Bool(b) => Cell::Bool(b),
            FuzzCell::Int(i) => Cell::Int(i),
            FuzzCell::Float(f) => Cell::Float(f),
            FuzzCell::FloatSpecial(i) => Cell::Float(
                [
                    f64::NAN,
                    f64::INFINITY,
                    f64::NEG_INFINITY,
                    1e308,
                    -0.0,
                    f64::MIN_POSITIVE / 2.0,
                    f64::MAX,
                    f64::EPSILON,
                ][i as usize % 8],
            ),
            FuzzCell::Numeric(n) => Cell::Numeric(n.build()),
            FuzzCell::Text(t) => Cell::Text(t.build()),
            FuzzCell::Date(d) => Cell::Date(
                chrono::NaiveDate::from_num_days_from_ce_opt(d).unwrap_or(chrono::NaiveDate::MAX),
            ),
            FuzzCell::Timestamp(s, n) => Cell::Timestamp(
                chrono::DateTime::from_timestamp(s, n)
                    .unwrap_or(chrono::DateTime::<chrono::Utc>::MIN_UTC)
                    .naive_utc(),
            ),
            FuzzCell::Timestamptz(s, n) => Cell::Timestamptz(
                chrono::DateTime::from_timestamp(s, n)
                    .unwrap_or(chrono::DateTime::<chrono::Utc>::MAX_UTC),
            ),
            FuzzCell::Uuid(u) => Cell::Uuid(uuid::Uuid::from_u128(u)),
            FuzzCell::Json(j) => Cell::Json(j.build(0)),
            FuzzCell::Array(items) => Cell::Array(
                items
                    .into_iter()
                    .map(|s| match s {
                        Scalar::Null => Cell::Null,
                        Scalar::Int(i) => Cell::Int(i),
                        Scalar::Float(f) => Cell::Float(f),
                        Scalar::Text(t) => Cell::Text(t.build()),
                        Scalar::Numeric(n) => Cell::Numeric(n.build()),
                        Scalar::Bool(b) => Cell::Bool(b),
                    })
                    .collect(),
            ),
            FuzzCell::Unreadable(s) => Cell::Unreadable(s),
        }
    }
}

#[derive(Debug, Arbitrary)]
struct Input {
    job: u8,
    /// Threads for `Transformer::rows` (its parallel path needs 64 rows or more).
    threads: u8,
    rows: Vec<Vec<FuzzCell>>,
}

fn check(first: u64, outcomes: &[Result<ProfileRow, Reject>]) {
    for (i, outcome) in outcomes.iter().enumerate() {
        let row_number = first + i as u64;
        match outcome {
            Ok(p) => {
                assert_eq!(p.row_number, row_number);
                assert!(!p.key.trim().is_empty(), "a profile without a key: {p:?}");
                let json = p.attributes.get().as_bytes();
                serde_json::from_slice::<serde_json::Value>(json).expect("a profile is valid JSON");
                assert!(
                    json.len() <= MAX_PROFILE_BYTES,
                    "a profile of {} bytes passed the 100 KB limit",
                    json.len()
                );
            }
            Err(r) => {
                assert_eq!(r.row_number, row_number);
                assert!(!r.rule.as_str().is_empty());
                assert!(!r.message.is_empty(), "a reject without a message: {r:?}");
            }
        }
    }
}

fuzz_target!(|input: Input| {
    let job = &jobs()[input.job as usize % JOBS.len()];
    let width = job.columns.len();
    // A row from the source has exactly one cell per column.
    let rows: Vec<Vec<Cell>> = input
        .rows
        .into_iter()
        .take(256)
        .map(|cells| {
            let mut row: Vec<Cell> = cells.into_iter().take(width).map(FuzzCell::build).collect();
            row.resize(width, Cell::Null);
            row
        })
        .collect();

    let bind = || -> Transformer { job.mapping.bind(&job.columns).expect("the columns bind") };
    let mut one_by_one = bind();
    let expected: Vec<Result<ProfileRow, Reject>> = rows
        .iter()
        .enumerate()
        .map(|(i, cells)| one_by_one.row(i as u64 + 1, cells.clone()))
        .collect();
    check(1, &expected);

    let mut batched = bind();
    let got = batched.rows(1, rows, input.threads as usize % 5);
    assert_eq!(got, expected, "rows() differs from row() one by one");
});
