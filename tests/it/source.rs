//! Integration tests for the source stage against a real PostgreSQL: every test gets a
//! database of its own (see `support::pg`).

use crate::support;

use std::time::Duration;

use indexmap::IndexMap;
use kdit::job::query::StoredQuery;
use kdit::job::spec::ParamValue;
use kdit::rows::cell::Cell;
use kdit::rows::source::{RowDecoder, RunContext, Source, SourceConfig, SourceError};
use support::pg::TestDb;

async fn source(db: &TestDb) -> Source {
    Source::connect(SourceConfig::parse(&db.url).expect("url parses"))
        .await
        .expect("connects")
}

fn params(pairs: &[(&str, ParamValue)]) -> IndexMap<String, ParamValue> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.clone()))
        .collect()
}

async fn all_rows(
    src: &Source,
    q: &StoredQuery,
    p: &IndexMap<String, ParamValue>,
    ctx: &RunContext,
) -> Result<(Vec<String>, Vec<Vec<Cell>>), SourceError> {
    let r = q.render(p).expect("renders");
    let mut rows = src.stream(&r, ctx).await?;
    let cols = rows.columns().iter().map(|c| c.name.clone()).collect();
    let mut out = Vec::new();
    while let Some(row) = rows.next().await {
        out.push(row?);
    }
    rows.finish().await?;
    Ok((cols, out))
}

async fn run_sql(src: &Source, sql: &str, ctx: &RunContext) -> Result<Vec<Vec<Cell>>, SourceError> {
    let q = StoredQuery::parse("test.sql", sql).expect("parses");
    all_rows(src, &q, &IndexMap::new(), ctx)
        .await
        .map(|(_, r)| r)
}

/// Numerics of every scale and size, positive and negative, read exactly as PostgreSQL
/// prints them.
#[tokio::test]
async fn numerics_read_as_postgresql_prints_them() {
    let db = TestDb::new().await;
    let src = source(&db).await;
    let rows = run_sql(
        &src,
        "select n, n::text from (
           select (g * 7919 % 100003)::numeric / (10::numeric ^ (g % 9)) * (case when g % 2 = 0 then -1 else 1 end) as n
             from generate_series(0, 3000) g
           union all select v::numeric from unnest(array['0', '0.0000', '10000', '9999.9999', '100000000',
             '0.00012', '123456789012345678901234567890.000000000000000000001', '1e-20', '-42.4200']) v
         ) t",
        &RunContext::default(),
    )
    .await
    .unwrap();
    assert_eq!(rows.len(), 3010);
    for r in &rows {
        match (&r[0], &r[1]) {
            (Cell::Numeric(n), Cell::Text(t)) => assert_eq!(n, t),
            other => panic!("unexpected cells {other:?}"),
        }
    }
}

#[tokio::test]
async fn every_column_type_reads_exactly() {
    let db = TestDb::new().await;
    db.execute(
        "create type mood as enum ('happy', 'sad');
         create domain email_d as text;",
    )
    .await;
    let src = source(&db).await;
    let rows = run_sql(
        &src,
        "select 'ana'::text as t, 'x'::varchar(3) as v, 'ab'::char(4) as c,
                1::int2 as i2, 2::int4 as i4, 9007199254740993::int8 as i8,
                412.50::numeric as money, 12345678901234567890.123456789::numeric as big,
                (-0.0001)::numeric as tiny, 'NaN'::numeric as nan,
                1.1::float4 as f4, 2.25::float8 as f8, true as b,
                '2026-01-31'::date as d, '2026-01-31 10:11:12.5'::timestamp as ts,
                '2026-01-31 10:11:12+02'::timestamptz as tstz,
                'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11'::uuid as u,
                '{\"a\": [1, 2.5, null]}'::json as j, '{\"b\": true}'::jsonb as jb,
                array['x', null, 'z'] as ta, array[1, 2] as ia, '{}'::int[] as empty,
                array[[1,2],[3,4]] as matrix,
                'happy'::mood as m, 'a@b.co'::email_d as dom,
                null::text as nt, null::int as ni, 'Zoë 東京 🎉'::text as uni,
                'infinity'::date as dinf",
        &RunContext::default(),
    )
    .await
    .unwrap();
    let r = &rows[0];
    use Cell::*;
    let expected = vec![
        Text("ana".into()),
        Text("x".into()),
        Text("ab  ".into()),
        Int(1),
        Int(2),
        Int(9007199254740993),
        Numeric("412.50".into()),
        Numeric("12345678901234567890.123456789".into()),
        Numeric("-0.0001".into()),
        Numeric("NaN".into()),
        Float(1.1),
        Float(2.25),
        Bool(true),
        Date(chrono::NaiveDate::from_ymd_opt(2026, 1, 31).unwrap()),
        Timestamp(
            chrono::NaiveDate::from_ymd_opt(2026, 1, 31)
                .unwrap()
                .and_hms_milli_opt(10, 11, 12, 500)
                .unwrap(),
        ),
        Timestamptz("2026-01-31T08:11:12Z".parse().unwrap()),
        Uuid("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11".parse().unwrap()),
        Json(serde_json::json!({"a": [1, 2.5, null]})),
        Json(serde_json::json!({"b": true})),
        Array(vec![Text("x".into()), Null, Text("z".into())]),
        Array(vec![Int(1), Int(2)]),
        Array(vec![]),
        Array(vec![Int(1), Int(2), Int(3), Int(4)]),
        Text("happy".into()),
        Text("a@b.co".into()),
        Null,
        Null,
        Text("Zoë 東京 🎉".into()),
        Text("infinity".into()),
    ];
    assert_eq!(r, &expected);
    assert_eq!(r[15].to_text().unwrap(), "2026-01-31T08:11:12Z");
    assert_eq!(r[14].to_text().unwrap(), "2026-01-31T10:11:12.500Z");
}

#[tokio::test]
async fn unsupported_types_are_refused_before_rows() {
    let db = TestDb::new().await;
    let src = source(&db).await;
    let e = run_sql(
        &src,
        "select '1 day'::interval as gap, 1 as n",
        &RunContext::default(),
    )
    .await
    .unwrap_err();
    let msg = e.to_string();
    assert!(
        msg.contains("`gap` (interval)") && msg.contains("::text"),
        "{msg}"
    );
}

#[tokio::test]
async fn writes_are_refused_read_only() {
    let db = TestDb::new().await;
    db.execute(
        "create table customers (email text);
         insert into customers values ('a@example.com');
         create function sneaky() returns int language plpgsql as
           $$ begin create table pwned (x int); return 1; end $$;",
    )
    .await;
    let src = source(&db).await;
    let ctx = RunContext {
        job: Some("weekly".into()),
        ..RunContext::default()
    };
    for sql in [
        "with x as (insert into customers values ('evil@example.com') returning *) select * from x",
        "select sneaky()",
        "select nextval('no_such_seq_but_read_only_first'::regclass)",
    ] {
        let e = run_sql(&src, sql, &ctx).await.unwrap_err();
        let msg = e.to_string();
        if sql.contains("nextval") {
            // The sequence does not exist: a plain SQL error, still nothing written.
            assert!(matches!(e, SourceError::Sql(_)), "{msg}");
            continue;
        }
        assert!(matches!(e, SourceError::ReadOnly { .. }), "{sql}: {msg}");
        assert!(
            msg.starts_with("queries run read-only: job `weekly`, query test.sql"),
            "{msg}"
        );
    }
    let n = db
        .client()
        .await
        .query_one("select count(*) from customers", &[])
        .await
        .unwrap()
        .get::<_, i64>(0);
    assert_eq!(n, 1);
    let pwned = db
        .client()
        .await
        .query_opt("select 1 from pg_tables where tablename = 'pwned'", &[])
        .await
        .unwrap();
    assert!(pwned.is_none());
}

#[tokio::test]
async fn timeouts_say_which_and_how_to_change() {
    let db = TestDb::new().await;
    let src = source(&db).await;
    let ctx = RunContext {
        job: Some("slow".into()),
        timeout: Some(Duration::from_secs(1)),
        limit: None,
        interrupt: None,
    };
    let started = std::time::Instant::now();
    let e = run_sql(&src, "select pg_sleep(5)", &ctx).await.unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(4));
    let msg = e.to_string();
    assert!(matches!(e, SourceError::Timeout { .. }), "{msg}");
    assert!(
        msg.contains("timed out after 1s (statement_timeout)"),
        "{msg}"
    );
    assert!(msg.contains("query.timeout"), "{msg}");
    // The pool still works afterwards.
    assert_eq!(
        run_sql(&src, "select 1", &RunContext::default())
            .await
            .unwrap()
            .len(),
        1
    );
}

#[tokio::test]
async fn syntax_errors_point_at_the_query_file_line() {
    let db = TestDb::new().await;
    db.execute("create table customers (email text, region text)")
        .await;
    let src = source(&db).await;
    let text = "\
-- Active customers
-- @param region text
select email
from customers
{% if region is defined %}
where region = {{ region }}
{% endif %}
  and emial_typo_here ===
";
    let q = StoredQuery::parse("queries/active.sql", text).unwrap();
    for (p, line) in [
        (params(&[("region", ParamValue::Text("EU".into()))]), 8),
        (IndexMap::new(), 8),
    ] {
        let r = q.render(&p).unwrap();
        for limit in [None, Some(10)] {
            let ctx = RunContext {
                limit,
                ..RunContext::default()
            };
            let e = src.stream(&r, &ctx).await.err().expect("syntax error");
            let msg = e.to_string();
            assert_eq!(e.line(), Some(line), "{msg}");
            assert!(
                msg.contains(&format!("queries/active.sql:{line}: ")),
                "{msg}"
            );
            assert!(msg.contains("syntax error"), "{msg}");
        }
    }
    // Two statements are refused, with a hint.
    let q = StoredQuery::parse("two.sql", "select 1;\nselect 2").unwrap();
    let e = src
        .stream(&q.render(&IndexMap::new()).unwrap(), &RunContext::default())
        .await
        .err()
        .unwrap();
    assert!(
        e.to_string()
            .contains("hint: a job's query is one statement"),
        "{e}"
    );
    // A server hint comes through.
    let q = StoredQuery::parse("h.sql", "select\n  lenght('x')").unwrap();
    let e = src
        .stream(&q.render(&IndexMap::new()).unwrap(), &RunContext::default())
        .await
        .err()
        .unwrap();
    let msg = e.to_string();
    assert_eq!(e.line(), Some(2), "{msg}");
    assert!(msg.contains("hint: No function matches"), "{msg}");
}

#[tokio::test]
async fn injection_through_a_parameter_stays_data() {
    let db = TestDb::new().await;
    db.execute(
        "create table customers (email text, name text);
         insert into customers values ('a@example.com', 'Ana');",
    )
    .await;
    let src = source(&db).await;
    let q = StoredQuery::parse(
        "q.sql",
        "-- @param name text\nselect email, {{ name }} as echoed from customers where name = {{ name }} or {{ name }} = ''",
    )
    .unwrap();
    let evil = "'; drop table customers; --";
    let (_, rows) = all_rows(
        &src,
        &q,
        &params(&[("name", ParamValue::Text(evil.into()))]),
        &RunContext::default(),
    )
    .await
    .unwrap();
    assert!(rows.is_empty());
    let (_, rows) = all_rows(
        &src,
        &StoredQuery::parse("q.sql", "-- @param name text\nselect {{ name }} as echoed").unwrap(),
        &params(&[("name", ParamValue::Text(evil.into()))]),
        &RunContext::default(),
    )
    .await
    .unwrap();
    assert_eq!(rows[0][0], Cell::Text(evil.into()));
    let n: i64 = db
        .client()
        .await
        .query_one("select count(*) from customers", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 1, "the table is still there");
}

#[tokio::test]
async fn every_parameter_type_binds() {
    let db = TestDb::new().await;
    let src = source(&db).await;
    let q = StoredQuery::parse(
        "p.sql",
        "-- @param t text
-- @param i int
-- @param b bigint
-- @param n numeric
-- @param f bool
-- @param d date
-- @param ts timestamptz
-- @param since interval
-- @param tags text[]
-- @param ids int[]
select {{ t }} as t, {{ i }} as i, {{ b }} as b, {{ n }} as n, {{ f }} as f, {{ d }} as d,
       {{ ts }} as ts, (timestamptz '2026-01-08 00:00:00+00' - {{ since }})::text as since,
       {{ tags }} as tags, {{ ids }} as ids",
    )
    .unwrap();
    use kdit::job::spec::ParamScalar as S;
    let p = params(&[
        ("t", ParamValue::Text("hé".into())),
        ("i", ParamValue::Integer(7)),
        ("b", ParamValue::Integer(1 << 40)),
        ("n", ParamValue::Text("0.10".into())),
        ("f", ParamValue::Bool(true)),
        ("d", ParamValue::Text("2026-02-01".into())),
        ("ts", ParamValue::Text("2026-02-01T00:00:00Z".into())),
        ("since", ParamValue::Text("7d".into())),
        (
            "tags",
            ParamValue::List(vec![S::Text("a".into()), S::Text("b".into())]),
        ),
        ("ids", ParamValue::List(vec![S::Integer(1), S::Integer(2)])),
    ]);
    let (_, rows) = all_rows(&src, &q, &p, &RunContext::default())
        .await
        .unwrap();
    use Cell::*;
    assert_eq!(
        rows[0],
        vec![
            Text("hé".into()),
            Int(7),
            Int(1 << 40),
            Numeric("0.10".into()),
            Bool(true),
            Date(chrono::NaiveDate::from_ymd_opt(2026, 2, 1).unwrap()),
            Timestamptz("2026-02-01T00:00:00Z".parse().unwrap()),
            Text("2026-01-01 00:00:00+00".into()),
            Array(vec![Text("a".into()), Text("b".into())]),
            Array(vec![Int(1), Int(2)]),
        ]
    );
}

#[tokio::test]
async fn rows_stream_and_limit_wraps() {
    let db = TestDb::new().await;
    let src = source(&db).await;
    let q = StoredQuery::parse("g.sql", "select g as n from generate_series(1, 50000) g;").unwrap();
    let (_, rows) = all_rows(&src, &q, &IndexMap::new(), &RunContext::default())
        .await
        .unwrap();
    assert_eq!(rows.len(), 50000);
    assert_eq!(rows[49999], vec![Cell::Int(50000)]);
    let ctx = RunContext {
        limit: Some(3),
        ..RunContext::default()
    };
    let (cols, rows) = all_rows(&src, &q, &IndexMap::new(), &ctx).await.unwrap();
    assert_eq!(cols, vec!["n"]);
    assert_eq!(rows.len(), 3);
    let cols = src
        .describe(&q.render(&IndexMap::new()).unwrap(), &RunContext::default())
        .await
        .unwrap();
    assert_eq!(cols[0].name, "n");
    assert_eq!(cols[0].type_name, "int4");
}

#[tokio::test]
async fn a_dropped_stream_does_not_poison_the_pool() {
    let db = TestDb::new().await;
    let src = source(&db).await;
    let q = StoredQuery::parse("g.sql", "select g from generate_series(1, 100000) g").unwrap();
    for _ in 0..6 {
        let mut rows = src
            .stream(&q.render(&IndexMap::new()).unwrap(), &RunContext::default())
            .await
            .unwrap();
        rows.next().await.unwrap().unwrap();
        drop(rows);
    }
    assert_eq!(
        run_sql(&src, "select 1", &RunContext::default())
            .await
            .unwrap()
            .len(),
        1
    );
}

/// A run context whose interrupt fires after `delay`.
fn interrupted_after(delay: Duration) -> RunContext {
    let (trigger, interrupt) = kdit::rows::source::Interrupt::new();
    tokio::spawn(async move {
        tokio::time::sleep(delay).await;
        trigger.fire();
    });
    RunContext {
        interrupt: Some(interrupt),
        ..RunContext::default()
    }
}

#[tokio::test]
async fn interrupt_cancels_the_query_on_the_server() {
    let db = TestDb::new().await;
    let src = source(&db).await;
    let started = std::time::Instant::now();
    // Slow before the first row, and slow between rows.
    for sql in [
        "select pg_sleep(30)",
        "select g, case when g = 2 then pg_sleep(30) end as s from generate_series(1, 3) g",
    ] {
        let ctx = interrupted_after(Duration::from_millis(300));
        let e = run_sql(&src, sql, &ctx).await.unwrap_err();
        assert!(matches!(e, SourceError::Cancelled { .. }), "{e}");
    }
    assert!(started.elapsed() < Duration::from_secs(10));
    assert_eq!(
        run_sql(&src, "select 1", &RunContext::default())
            .await
            .unwrap()
            .len(),
        1
    );
}

/// The batch reader (`Rows::next_batch`, what `kdit run` reads with) is interrupted as the
/// row-at-a-time one is, and keeps the rows read before the interrupt.
#[tokio::test]
async fn interrupt_cancels_a_batch_read_and_keeps_the_rows_before() {
    let db = TestDb::new().await;
    let src = source(&db).await;
    let started = std::time::Instant::now();
    for (sql, before) in [
        ("select pg_sleep(30)", 0),
        (
            "select g, case when g = 3 then pg_sleep(30) end as s from generate_series(1, 4) g",
            2,
        ),
    ] {
        let ctx = interrupted_after(Duration::from_millis(300));
        let q = StoredQuery::parse("test.sql", sql).expect("parses");
        let r = q.render(&IndexMap::new()).expect("renders");
        let mut rows = match src.stream(&r, &ctx).await {
            Ok(rows) => rows,
            // Cancelled before the first row came back.
            Err(e) => {
                assert!(matches!(e, SourceError::Cancelled { .. }), "{e}");
                assert_eq!(before, 0);
                continue;
            }
        };
        let mut batch = Vec::new();
        let e = loop {
            match rows.next_batch(&mut batch, 512).await {
                Ok(true) => continue,
                Ok(false) => panic!("{sql}: the rows ended instead of being cancelled"),
                Err(e) => break e,
            }
        };
        assert!(matches!(e, SourceError::Cancelled { .. }), "{e}");
        assert_eq!(batch.len(), before, "{sql}");
        assert_eq!(rows.count(), before as u64);
    }
    assert!(started.elapsed() < Duration::from_secs(10));
}

#[tokio::test]
async fn unreachable_server_is_a_clear_error() {
    // Port 1 on localhost: nothing listens there.
    let cfg = SourceConfig::parse(
        "postgres://kdit:TopSecret99@127.0.0.1:1/app?sslmode=disable&connect_timeout=2",
    )
    .unwrap();
    let started = std::time::Instant::now();
    let e = Source::connect(cfg).await.unwrap_err();
    let msg = e.to_string();
    assert!(
        msg.starts_with("cannot connect to PostgreSQL at postgres://kdit:****@127.0.0.1:1/app"),
        "{msg}"
    );
    assert!(
        msg.contains("nothing accepts connections there (4 attempts)"),
        "{msg}"
    );
    assert!(!msg.contains("TopSecret99"), "{msg}");
    assert!(!format!("{e:?}").contains("TopSecret99"));
    // Retried with backoff (0.2 + 0.4 + 0.8 s), then gave up.
    assert!(started.elapsed() >= Duration::from_millis(1400));
}

#[tokio::test]
async fn wrong_password_never_prints_it() {
    // The local server trusts 127.0.0.1 (pg_hba.conf), so a wrong password is accepted
    // there. A wrong *user* exercises the same authentication-failure path; the password
    // given must not appear in any message.
    let db = TestDb::new().await;
    let url = format!(
        "postgres://no_such_role_kdit:Hunter2Secret@127.0.0.1:5432/{}?sslmode=disable",
        db.name
    );
    let e = Source::connect(SourceConfig::parse(&url).unwrap())
        .await
        .unwrap_err();
    let msg = e.to_string();
    assert!(msg.contains("no_such_role_kdit"), "{msg}");
    assert!(
        msg.contains("hint: check the user name and password"),
        "{msg}"
    );
    assert!(!msg.contains("Hunter2Secret"), "{msg}");
    assert!(!format!("{e:?}").contains("Hunter2Secret"));
}

#[tokio::test]
async fn tls_modes_connect_or_explain() {
    let db = TestDb::new().await;
    let base = db.url.clone();
    let sep = if base.contains('?') { '&' } else { '?' };
    // The local server has ssl=on with a self-signed certificate: require encrypts without
    // checking it; verify-full refuses it.
    for mode in ["disable", "prefer", "require"] {
        let cfg = SourceConfig::parse(&format!("{base}{sep}sslmode={mode}")).unwrap();
        let src = Source::connect(cfg)
            .await
            .unwrap_or_else(|e| panic!("{mode}: {e}"));
        let rows = run_sql(
            &src,
            "select ssl from pg_stat_ssl where pid = pg_backend_pid()",
            &RunContext::default(),
        )
        .await
        .unwrap();
        let ssl = rows[0][0] == Cell::Bool(true);
        assert_eq!(ssl, mode != "disable", "{mode}");
    }
    let cfg = SourceConfig::parse(&format!("{base}{sep}sslmode=verify-full")).unwrap();
    let e = Source::connect(cfg).await.unwrap_err().to_string();
    assert!(e.contains("cannot connect"), "{e}");
    assert!(
        e.contains("certificate") || e.contains("Certificate"),
        "{e}"
    );

    // With the server's own certificate as the root (sslrootcert): verify-ca accepts it;
    // verify-full also checks the host name, which is `localhost` in Debian's certificate.
    let cert: String = db
        .client()
        .await
        .query_one("show ssl_cert_file", &[])
        .await
        .unwrap()
        .get(0);
    let with = |base: &str, opts: &str| SourceConfig::parse(&format!("{base}{sep}{opts}")).unwrap();
    Source::connect(with(
        &base,
        &format!("sslmode=verify-ca&sslrootcert={cert}"),
    ))
    .await
    .unwrap_or_else(|e| panic!("verify-ca with the server's certificate as root: {e}"));
    let e = Source::connect(with(
        &base,
        &format!("sslmode=verify-full&sslrootcert={cert}"),
    ))
    .await
    .unwrap_err()
    .to_string();
    assert!(e.contains("not valid for name \"127.0.0.1\""), "{e}");
    let localhost = base.replacen("127.0.0.1", "localhost", 1);
    Source::connect(with(
        &localhost,
        &format!("sslmode=verify-full&sslrootcert={cert}"),
    ))
    .await
    .unwrap_or_else(|e| panic!("verify-full to localhost: {e}"));
    let e = Source::connect(with(&base, "sslmode=require&sslrootcert=/nonexistent.pem"))
        .await
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("cannot read sslrootcert /nonexistent.pem"),
        "{e}"
    );
}

// ---- rows → profiles -------------------------------------------------------------------

use kdit::job::compile::Job;
use kdit::job::load::{Kind, parse_text};
use kdit::job::spec::JobSpec;
use kdit::rows::transform::{Mapping, ProfileRow, Reject, Rule};
use kdit::rows::{RowsError, StreamedRow, prepare};
use serde_json::json;

fn job_yaml(profiles_yaml: &str, sql: &str) -> String {
    let indented: String = profiles_yaml.lines().map(|l| format!("  {l}\n")).collect();
    let sql_block: String = sql.lines().map(|l| format!("    {l}\n")).collect();
    format!(
        "version: 1\nname: test-job\nquery:\n  sql: |\n{sql_block}  timeout: 10s\nprofiles:\n{indented}guards:\n  max_invalid: 1\n"
    )
}

/// A compiled job (as `kdit run` gets it) with an inline query.
fn make_job(profiles_yaml: &str, sql: &str) -> Job {
    compile_job(
        std::path::Path::new("jobs/test.yaml"),
        job_yaml(profiles_yaml, sql),
    )
}

fn compile_job(path: &std::path::Path, yaml: String) -> Job {
    let loaded = parse_text::<JobSpec>(path, yaml.clone(), Kind::Job);
    let (job, problems) = kdit::job::compile::compile(&loaded, None);
    job.unwrap_or_else(|| panic!("{:?}{problems:?}\n{yaml}", loaded.diagnostics))
}

/// A job `validate` may refuse for its mapping (a template reading an undeclared column),
/// with the mapping compiled all the same (the rows check the columns themselves).
fn unchecked_job(profiles_yaml: &str, sql: &str) -> Job {
    let mut job = make_job("key: email\nfields:\n  email: email", sql);
    let spec: JobSpec = yaml_serde::from_str(&job_yaml(profiles_yaml, sql)).unwrap();
    job.mapping = std::sync::Arc::new(Mapping::compile(&spec.profiles, None).unwrap());
    job.spec = spec;
    job
}

async fn profiles_of(
    db: &TestDb,
    profiles_yaml: &str,
    sql: &str,
) -> (Vec<ProfileRow>, Vec<Reject>) {
    let src = source(db).await;
    // Some mappings here read columns in templates that no field maps (which `validate`
    // would have declared under `query.columns`): the rows take them all the same.
    let job = unchecked_job(profiles_yaml, sql);
    let jq = prepare(&job).unwrap();
    let mut stream = jq.open(&src, None, None).await.unwrap();
    let (mut ok, mut bad) = (Vec::new(), Vec::new());
    while let Some(r) = stream.next().await {
        match r.unwrap() {
            StreamedRow::Profile(p) => ok.push(p),
            StreamedRow::Rejected(r) => bad.push(r),
            StreamedRow::Known { .. } => panic!("no known rows were given"),
        }
    }
    let totals = stream.finish().await.unwrap();
    assert_eq!(totals.rows as usize, ok.len() + bad.len());
    (ok, bad)
}

#[tokio::test]
async fn rows_become_klaviyo_profiles() {
    let db = TestDb::new().await;
    let (ok, bad) = profiles_of(
        &db,
        r#"key: email
default_region: US
on_null: keep
fields:
  email: { column: email, transform: [trim, email] }
  phone_number: { column: phone, transform: e164 }
  external_id: id
  first_name: { column: first, transform: [trim, uppercase] }
  last_name: { column: last, transform: lowercase, on_null: unset }
  organization: { column: org, default: "Independent" }
  locale: { value: "en-US" }
  location.city: city
  location.latitude: { column: lat, type: number }
  properties.lifetime_value: { column: ltv, type: number }
  properties.orders: { column: orders, type: integer }
  properties.vip: { column: vip, type: boolean }
  properties.signup: { column: signup, type: date }
  properties.last_seen: { column: seen, type: datetime }
  properties.tags: { column: tags, type: list }
  properties.prefs: { column: prefs, type: json }
  properties.code: { column: code, type: string }
  properties.plan.label: { template: "{{ plan | upper }} ({{ first }})" }
  properties.uk_phone: { column: uk, transform: e164, default_region: GB }
  properties.note: note
  properties.whole: whole"#,
        r#"select 42 as id, '  Ana@Example.COM ' as email, '(201) 555-0123' as phone,
  ' zoë ' as first, null::text as last, null::text as org, 'Zürich' as city,
  47.3769::numeric as lat, 412.50::numeric as ltv, '7'::text as orders, 'yes' as vip,
  timestamptz '2026-01-31 23:30:00-05' as signup, date '2026-02-01' as seen,
  array['a','b'] as tags, '{"news": true}' as prefs, 7::int as code, 'pro' as plan,
  '020 7946 0958' as uk, null::text as note, 25.00::numeric as whole"#,
    )
    .await;
    assert!(bad.is_empty(), "{bad:?}");
    let p = &ok[0];
    assert_eq!(p.row_number, 1);
    assert_eq!(p.key, "Ana@example.com");
    assert_eq!(
        serde_json::Value::Object(p.attribute_map()),
        json!({
            "email": "Ana@example.com",
            "phone_number": "+12015550123",
            "external_id": "42",
            "first_name": "ZOË",
            "organization": "Independent",
            "locale": "en-US",
            "location": { "city": "Zürich", "latitude": 47.3769 },
            "properties": {
                "lifetime_value": 412.5,
                "orders": 7,
                "vip": true,
                "signup": "2026-02-01",
                "last_seen": "2026-02-01T00:00:00Z",
                "tags": ["a", "b"],
                "prefs": { "news": true },
                "code": "7",
                "plan": { "label": "PRO ( zoë )" },
                "uk_phone": "+442079460958",
                "whole": 25
            }
        })
    );
    // last_name is NULL under on_null: unset; note is NULL under keep (omitted).
    assert_eq!(
        p.unset.iter().map(|u| u.to_string()).collect::<Vec<_>>(),
        vec!["last_name"]
    );
}

#[tokio::test]
async fn invalid_rows_are_rejected_with_reasons() {
    let db = TestDb::new().await;
    db.execute(
        "create table c (n int, email text, phone text, ltv numeric, first text, prefs jsonb, big text);
         insert into c values
           (1, 'ok@example.com', '+12015550123', 1.5, '5', null, null),
           (2, 'not an email', null, null, null, null, null),
           (3, repeat('a', 95) || '@example.com', null, null, null, null, null),
           (4, 'bad-phone@example.com', '12345', null, null, null, null),
           (5, null, null, null, null, null, null),
           (6, '   ', null, null, null, null, null),
           (7, 'OK@example.com', null, null, null, null, null),
           (8, 'precise@example.com', null, 12345678901234567.891, null, null, null),
           (9, 'list@example.com', null, null, null, null, null),
           (10, 'dollar@example.com', null, null, null, '{\"$secret\": 1}', null),
           (11, 'huge@example.com', null, null, null, null, repeat('x', 110000)),
           (12, 'cast@example.com', null, null, 'abc', null, null);",
    )
    .await;
    let (ok, bad) = profiles_of(
        &db,
        r#"key: email
fields:
  email: { column: email, transform: [trim, lowercase] }
  phone_number: phone
  first_name: { column: first_arr, type: json }
  properties.ltv: ltv
  properties.prefs: prefs
  properties.big: big
  properties.count: { column: first, type: integer }"#,
        r#"select *, case when n = 9 then '["x"]' end as first_arr from c order by n"#,
    )
    .await;
    assert_eq!(ok.iter().map(|p| p.row_number).collect::<Vec<_>>(), vec![1]);
    let rules: Vec<(u64, Rule)> = bad.iter().map(|r| (r.row_number, r.rule)).collect();
    assert_eq!(
        rules,
        vec![
            (2, Rule::EmailSyntax),
            (3, Rule::EmailTooLong),
            (4, Rule::PhoneE164),
            (5, Rule::KeyMissing),
            (6, Rule::KeyMissing),
            (7, Rule::DuplicateKey),
            (8, Rule::NumericPrecision),
            (9, Rule::AttributeType),
            (10, Rule::PropertyName),
            (11, Rule::PayloadTooLarge),
            (12, Rule::TypeCast),
        ]
    );
    let by_row = |n: u64| bad.iter().find(|r| r.row_number == n).unwrap();
    // Personal values are masked.
    assert_eq!(by_row(4).value.as_deref(), Some("*****"));
    assert_eq!(by_row(4).key.as_deref(), Some("b***@example.com"));
    assert_eq!(by_row(7).key.as_deref(), Some("o***@example.com"));
    assert_eq!(by_row(7).field.as_deref(), Some("email"));
    assert_eq!(by_row(2).value.as_deref(), Some("no******mail"));
    assert_eq!(by_row(8).value.as_deref(), Some("12345678901234567.891"));
    assert!(by_row(8).message.contains("type: string"));
    let shown = by_row(12).to_string();
    assert!(
        shown.starts_with(
            "row 12 (c***@example.com) properties.count: cannot be read as an integer [type_cast]"
        ),
        "{shown}"
    );
}

/// Many batches in flight on several threads still come out in row order, and a duplicate
/// is refused whichever batch the first row with its key was in.
#[tokio::test]
async fn rows_in_many_batches_come_out_in_order_with_duplicates_across_batches() {
    let db = TestDb::new().await;
    let src = source(&db).await;
    let job = make_job(
        "key: email\nfields:\n  email: { column: email, transform: email }\n  properties.n: n",
        "select g as n, 'u' || (g % 7000) || '@example.com' as email from generate_series(1, 20000) g",
    );
    let jq = prepare(&job).unwrap();
    for threads in [1, 3] {
        let mut stream = jq.open(&src, None, None).await.unwrap();
        stream.set_threads(threads);
        let mut row = 0u64;
        while let Some(r) = stream.next().await {
            row += 1;
            match r.unwrap() {
                StreamedRow::Profile(p) => {
                    assert!(row <= 7000, "row {row} should be a duplicate");
                    assert_eq!(p.row_number, row);
                    assert_eq!(p.key, format!("u{}@example.com", row % 7000));
                    assert_eq!(p.attribute_map()["properties"]["n"], row);
                }
                StreamedRow::Rejected(r) => {
                    assert!(row > 7000, "row {row} was refused: {r}");
                    assert_eq!((r.row_number, r.rule), (row, Rule::DuplicateKey));
                }
                StreamedRow::Known { .. } => panic!("no known rows were given"),
            }
        }
        let totals = stream.finish().await.unwrap();
        assert_eq!(
            (totals.rows, totals.profiles, totals.rejected),
            (20000, 7000, 13000)
        );
    }
}

/// Text in columns no field reads is only checked, not copied out (`RowDecoder::reading`),
/// and text is decoded into the buffers of the row before (NULL, short and long text taking
/// turns in a column): the outcomes are those of the general path, which decodes every
/// column into cells of its own (`Rows::next` + `Transformer::row`), and the cells the same.
#[tokio::test]
async fn unread_columns_change_no_outcome() {
    let db = TestDb::new().await;
    let src = source(&db).await;
    let job = unchecked_job(
        "key: email\nfields:\n  email: { column: email, transform: [trim, email] }\n  first_name: first\n  properties.n: n\n  properties.label: { template: \"{{ plan | upper }}\" }\n  properties.note: { template: \"{{ note }}!\" }\n  last_name: { column: nick, transform: trim }\n  properties.memo: memo",
        "select g as n, 'spare ' || g as spare, case when g % 97 = 0 then 'bad' else ' U' || (g % 900) || '@Example.com' end as email,
           null::text as nothing, 'Zoë' || g as first, g::numeric / 7 as ratio, (array['free', 'pro'])[g % 2 + 1] as plan,
           case when g % 3 = 0 then null else 'n' || g end as note, 'Zürich' as city,
           case g % 4 when 0 then null when 1 then '  Nick ' || g else 'n' || g end as nick,
           case when g % 5 = 0 then null when g % 7 = 0 then repeat('long memo ', 500 + g % 3) else 'm' || g end as memo
         from generate_series(1, 3000) g order by g",
    );
    let jq = prepare(&job).unwrap();
    let mut stream = jq.open(&src, None, None).await.unwrap();
    stream.set_threads(2);
    let mut fast = Vec::new();
    while let Some(r) = stream.next().await {
        fast.push(r.unwrap());
    }
    stream.finish().await.unwrap();

    let mut rows = src
        .stream(&jq.rendered, &jq.context(None, None))
        .await
        .unwrap();
    let mut transformer = jq.mapping.bind(rows.columns()).unwrap();
    let mut general = Vec::new();
    let mut n = 0;
    while let Some(cells) = rows.next().await {
        n += 1;
        general.push(match transformer.row(n, cells.unwrap()) {
            Ok(p) => StreamedRow::Profile(p),
            Err(r) => StreamedRow::Rejected(r),
        });
    }
    rows.finish().await.unwrap();
    assert_eq!(fast.len(), 3000);
    assert!(fast.iter().any(|o| matches!(o, StreamedRow::Rejected(_))));
    let memo = |o: &StreamedRow| match o {
        StreamedRow::Profile(p) => p.attribute_map()["properties"]
            .get("memo")
            .and_then(|m| m.as_str().map(str::len)),
        _ => None,
    };
    assert!(fast.iter().any(|o| memo(o) > Some(4096)));
    assert_eq!(fast, general);

    // The decoder itself: columns read decode as before, unread text is NULL.
    let mut rows = src
        .stream(&jq.rendered, &jq.context(None, None))
        .await
        .unwrap();
    let columns = rows.columns().to_vec();
    let read = jq
        .mapping
        .bind(&columns)
        .unwrap()
        .builder()
        .reads(columns.len());
    let names: Vec<&str> = columns.iter().map(|c| c.name.as_str()).collect();
    let unread: Vec<&str> = names
        .iter()
        .zip(&read)
        .filter(|(_, r)| !**r)
        .map(|(n, _)| *n)
        .collect();
    assert_eq!(unread, ["spare", "nothing", "ratio", "city"]);
    let (mut reused, mut some) = (Vec::new(), Vec::new());
    while let Some(row) = rows.next_raw().await {
        let row = row.unwrap();
        let all = kdit::rows::source::decode_row(&row, &columns).unwrap();
        RowDecoder::of(&row)
            .decode_into(&row, &columns, &mut reused)
            .unwrap();
        assert_eq!(reused, all);
        RowDecoder::reading(&row, &read)
            .decode_into(&row, &columns, &mut some)
            .unwrap();
        assert_eq!(some.len(), all.len());
        for (i, (a, s)) in all.iter().zip(&some).enumerate() {
            let text = columns[i].type_name == "text";
            if read[i] || !text {
                assert_eq!(a, s, "column {}", names[i]);
            } else {
                assert_eq!(s, &Cell::Null, "column {}", names[i]);
            }
        }
    }
    rows.finish().await.unwrap();
}

#[tokio::test]
async fn phone_keys_and_guards() {
    let db = TestDb::new().await;
    let src = source(&db).await;
    let job = make_job(
        "key: phone_number\nfields:\n  phone_number: { column: phone, transform: e164, default_region: US }",
        "select * from (values ('201-555-0123'), ('+1 201 555 0124'), ('555'), ('+1 (201) 555-0123')) v(phone)",
    );
    let jq = prepare(&job).unwrap();
    let mut stream = jq.open(&src, None, None).await.unwrap();
    let mut outcomes = Vec::new();
    while let Some(r) = stream.next().await {
        outcomes.push(r.unwrap());
    }
    let totals = stream.finish().await.unwrap();
    assert!(matches!(&outcomes[0], StreamedRow::Profile(p) if p.key == "+12015550123"));
    assert!(matches!(&outcomes[1], StreamedRow::Profile(p) if p.key == "+12015550124"));
    assert!(
        matches!(&outcomes[2], StreamedRow::Rejected(r) if r.rule == Rule::PhoneE164 && r.key.is_none())
    );
    assert!(
        matches!(&outcomes[3], StreamedRow::Rejected(r) if r.rule == Rule::DuplicateKey && r.key.as_deref() == Some("+1******0123"))
    );
    assert_eq!((totals.rows, totals.profiles, totals.rejected), (4, 2, 2));
    // guards.max_invalid: 1 in the test job
    assert!(!totals.invalid_guard.passed(), "{}", totals.invalid_guard);
}

#[tokio::test]
async fn a_mapped_column_the_query_lacks_fails_before_rows() {
    let db = TestDb::new().await;
    let src = source(&db).await;
    let job = unchecked_job(
        "key: email\nfields:\n  email: email\n  first_name: frist_name\n  properties.x: { template: \"{{ nope }}\" }",
        "select 'a@example.com' as email, 'Ana' as first_name",
    );
    let jq = prepare(&job).unwrap();
    let err = jq.open(&src, None, None).await.err().expect("fails");
    let RowsError::Columns(problems) = &err else {
        panic!("{err}")
    };
    assert_eq!(problems.len(), 2, "{err}");
    let msg = err.to_string();
    assert!(
        msg.contains("first_name: the query returns no column `frist_name`"),
        "{msg}"
    );
    assert!(msg.contains("did you mean `first_name`?"), "{msg}");
    assert!(
        msg.contains("properties.x: the query returns no column `nope`"),
        "{msg}"
    );
    // So is an ambiguous column.
    let job3 = make_job(
        "key: email\nfields:\n  email: email",
        "select 'a@example.com' as email, 'b@example.com' as email",
    );
    let jq = prepare(&job3).unwrap();
    let msg = jq
        .open(&src, None, None)
        .await
        .err()
        .expect("fails")
        .to_string();
    assert!(
        msg.contains("email: the query returns more than one column named `email`"),
        "{msg}"
    );
    // A column of the wrong shape for a standard attribute is caught before rows too.
    let job2 = make_job(
        "key: email\nfields:\n  email: email\n  first_name: names",
        "select 'a@example.com' as email, array['Ana'] as names",
    );
    let jq = prepare(&job2).unwrap();
    let msg = jq
        .open(&src, None, None)
        .await
        .err()
        .expect("fails")
        .to_string();
    assert!(
        msg.contains("`first_name` takes text, but column `names` is _text"),
        "{msg}"
    );
}

#[tokio::test]
async fn mapping_errors_are_all_reported() {
    // The one profiles compiler (`job::compile` calls it; `validate` finds these first).
    let job: JobSpec = yaml_serde::from_str(&job_yaml(
        "key: external_id\ndefault_region: XX\nfields:\n  email: email\n  frist_name: a\n  properties.t: { template: \"{{ x \" }\n  properties.y: { column: a, value: 1 }",
        "select 1",
    ))
    .unwrap();
    let errors = Mapping::compile(&job.profiles, None).unwrap_err();
    let msg = errors
        .iter()
        .map(|e| e.to_string())
        .collect::<Vec<_>>()
        .join("\n");
    for expected in [
        "default_region: `XX` is not an ISO 3166",
        "frist_name: `frist_name` is not a Klaviyo profile attribute",
        "properties.t: template syntax error",
        "properties.y: gives more than one",
        "external_id: the job's key is `external_id`, but no field `external_id` is mapped",
    ] {
        assert!(msg.contains(expected), "missing `{expected}` in:\n{msg}");
    }
}

#[tokio::test]
async fn batches_on_several_threads_match_one_thread() {
    let db = TestDb::new().await;
    let src = source(&db).await;
    let job = make_job(
        "key: email\nfields:\n  email: { column: email, transform: [trim, lowercase] }\n  properties.n: n\n  properties.label: { template: \"{{ n }}-{{ email }}\" }",
        "select g as n, case when g % 777 = 0 then 'bad' else ' U' || (g % 3000) || '@Example.com' end as email from generate_series(1, 9000) g order by g",
    );
    let jq = prepare(&job).unwrap();
    let mut runs = Vec::new();
    for threads in [1, 2, 4] {
        let mut stream = jq.open(&src, None, None).await.unwrap();
        stream.set_threads(threads);
        let mut outcomes = Vec::new();
        while let Some(r) = stream.next().await {
            outcomes.push(r.unwrap());
        }
        let totals = stream.finish().await.unwrap();
        assert_eq!(totals.rows, 9000);
        runs.push(outcomes);
    }
    assert_eq!(runs[0], runs[1]);
    assert_eq!(runs[0], runs[2]);
    let outcomes = &runs[0];
    // Rows come out in order; the first valid row of each key wins.
    let mut seen = std::collections::HashSet::new();
    for (i, o) in outcomes.iter().enumerate() {
        let n = i as u64 + 1;
        let bad = n % 777 == 0;
        let first = !bad && seen.insert(n % 3000);
        match o {
            StreamedRow::Profile(p) => {
                assert_eq!(p.row_number, n);
                assert!(first, "row {n} should not be a profile");
            }
            StreamedRow::Rejected(r) => {
                assert_eq!(r.row_number, n);
                let want = if bad {
                    Rule::EmailSyntax
                } else {
                    Rule::DuplicateKey
                };
                assert!(!first, "row {n} should be a profile");
                assert_eq!(r.rule, want, "row {n}");
            }
            StreamedRow::Known { .. } => panic!("no known rows were given"),
        }
    }
}

// ---- commands ----------------------------------------------------------------------------

#[tokio::test]
async fn check_prints_one_line_per_check() {
    let db = TestDb::new().await;
    db.execute("create table customers (id int, email text, tags text[], ltv numeric)")
        .await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("queries")).unwrap();
    std::fs::write(
        dir.path().join("queries/active.sql"),
        "-- @param min numeric = 0\nselect id, email, tags, ltv from customers where ltv >= {{ min }}\n",
    )
    .unwrap();
    let job_path = dir.path().join("weekly.yaml");
    let job = compile_job(
        &job_path,
        "version: 1\nname: weekly\nquery:\n  file: queries/active.sql\n  timeout: 5s\nprofiles:\n  key: email\n  fields:\n    email: email\n    external_id: id\n    first_name: tags\n    last_name: surname\n    properties.ltv: { column: ltv, type: number }\n".into(),
    );
    let mut out = Vec::new();
    let ok = kdit::commands::inspect::check_job(&job, SourceConfig::parse(&db.url), &mut out)
        .await
        .unwrap();
    let text = String::from_utf8(out).unwrap();
    assert!(!ok, "{text}");
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(
        lines[0], "✓ query     queries/active.sql (min = 0)",
        "{text}"
    );
    assert!(lines[1].starts_with("✓ database  postgres://"), "{text}");
    assert!(
        lines[2].starts_with("✓ runs      read-only with LIMIT 0 in "),
        "{text}"
    );
    assert!(lines[2].ends_with(" ms, 4 columns, timeout 5s"), "{text}");
    assert_eq!(lines[3], "✓ field     email ← column email (text)");
    assert_eq!(lines[4], "✓ field     external_id ← column id (int4)");
    assert!(
        lines[5].starts_with("✗ field     first_name ← column tags (_text): `first_name` takes text, but column `tags` is _text"),
        "{text}"
    );
    assert!(text.contains("✗ field     last_name ← column surname: the query returns no column `surname`\n            hint: the query returns: id, email, tags, ltv\n"), "{text}");
    assert!(
        text.contains("✓ field     properties.ltv ← column ltv (numeric)"),
        "{text}"
    );

    // An unreachable server is one failed line, not a crash.
    let mut out = Vec::new();
    let ok = kdit::commands::inspect::check_job(
        &job,
        SourceConfig::parse("postgres://u:pw@127.0.0.1:1/x?sslmode=disable&connect_timeout=1"),
        &mut out,
    )
    .await
    .unwrap();
    let text = String::from_utf8(out).unwrap();
    assert!(!ok);
    assert!(
        text.contains(
            "✗ database  cannot connect to PostgreSQL at postgres://u:****@127.0.0.1:1/x"
        ),
        "{text}"
    );
}

#[tokio::test]
async fn preview_shows_profiles_and_rejects() {
    let db = TestDb::new().await;
    let src = source(&db).await;
    let job = make_job(
        "key: email\nfields:\n  email: { column: email, transform: [trim, lowercase] }\n  properties.n: n",
        "select g as n, case when g = 2 then 'nope' else 'u' || g || '@example.com' end as email from generate_series(1, 100) g",
    );
    let mut out = Vec::new();
    kdit::commands::inspect::preview_job(
        &job,
        &src,
        3,
        kdit::commands::inspect::RowsFormat::Table,
        None,
        &mut out,
    )
    .await
    .unwrap();
    let text = String::from_utf8(out).unwrap();
    assert_eq!(
        text,
        "row  email           properties.n
───  ──────────────  ────────────
1    u1@example.com  1
3    u3@example.com  3

Rejected
  ! row 2 email: not a valid email address [email_syntax] value `****`
3 rows read (limit 3): 2 profiles, 1 rejected
"
    );
    let mut out = Vec::new();
    kdit::commands::inspect::preview_job(
        &job,
        &src,
        1,
        kdit::commands::inspect::RowsFormat::Json,
        None,
        &mut out,
    )
    .await
    .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
    assert_eq!(
        v,
        json!({"profiles": [{"row_number": 1, "key": "u1@example.com", "attributes": {"email": "u1@example.com", "properties": {"n": 1}}}], "rejects": []})
    );
}

#[tokio::test]
async fn an_error_in_the_middle_of_the_rows_is_reported() {
    let db = TestDb::new().await;
    let src = source(&db).await;
    let q = StoredQuery::parse(
        "queries/div.sql",
        "-- @param at int = 3000\nselect g, 1 / (g - {{ at }}) as x\nfrom generate_series(1, 5000) g",
    )
    .unwrap();
    let r = q.render(&IndexMap::new()).unwrap();
    let mut rows = src
        .stream(
            &r,
            &RunContext {
                job: Some("div".into()),
                ..RunContext::default()
            },
        )
        .await
        .unwrap();
    let mut n = 0;
    let err = loop {
        match rows.next().await {
            Some(Ok(_)) => n += 1,
            Some(Err(e)) => break e,
            None => panic!("expected an error after {n} rows"),
        }
    };
    assert!(n < 3000, "{n}");
    let msg = err.to_string();
    assert!(
        msg.starts_with("job `div`, query queries/div.sql: division by zero"),
        "{msg}"
    );
    assert!(rows.next().await.is_none());
}

// ---- the real binary -----------------------------------------------------------------------

fn kdit(dir: &std::path::Path, url: &str, args: &[&str]) -> (i32, String, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_kdit"))
        .args(args)
        .current_dir(dir)
        .env("DATABASE_URL", url)
        .output()
        .expect("runs kdit");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test]
async fn the_binary_runs_queries_checks_and_previews() {
    let db = TestDb::new().await;
    db.execute(
        "create table customers (id int, email text, plan text);
         insert into customers values (1, 'Ana@Example.com', 'pro'), (2, 'bob@example.com', null);",
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("queries")).unwrap();
    std::fs::write(
        dir.path().join("queries/customers.sql"),
        "-- @param min int = 0\nselect id, email, plan from customers where id > {{ min }} order by id\n",
    )
    .unwrap();
    std::fs::write(
        dir.path().join("job.yaml"),
        "version: 1\nname: customers\nquery:\n  file: queries/customers.sql\nprofiles:\n  key: email\n  fields:\n    email: { column: email, transform: email }\n    properties.plan: { column: plan, on_null: unset }\n",
    )
    .unwrap();

    let (code, out, err) = kdit(
        dir.path(),
        &db.url,
        &["query", "run", "customers", "--param", "min=1"],
    );
    assert_eq!(code, 0, "{err}");
    assert!(out.starts_with("id  email            plan\n──  ───────────────  ────\n2   bob@example.com  NULL\n1 row in "), "{out}");
    assert!(out.contains("(min = 1)"), "{out}");

    let (code, out, err) = kdit(
        dir.path(),
        &db.url,
        &["query", "run", "customers", "--format", "json"],
    );
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        v[0],
        json!({"id": 1, "email": "Ana@Example.com", "plan": "pro"})
    );

    let (code, out, err) = kdit(dir.path(), &db.url, &["check", "job.yaml"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("✓ field     properties.plan ← column plan (text)"),
        "{out}"
    );

    let (code, out, err) = kdit(
        dir.path(),
        &db.url,
        &["preview", "job.yaml", "--format", "json"],
    );
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["profiles"][0]["key"], "Ana@example.com");
    assert_eq!(v["profiles"][1]["unset"], json!(["properties.plan"]));

    // Failures: exit status 1, message on stderr, nothing on stdout.
    std::fs::write(
        dir.path().join("bad.yaml"),
        "version: 1\nname: bad\nquery:\n  file: queries/customers.sql\nprofiles:\n  key: email\n  fields:\n    email: mail\n",
    )
    .unwrap();
    let (code, out, _) = kdit(dir.path(), &db.url, &["check", "bad.yaml"]);
    assert_eq!(code, 1);
    assert!(
        out.contains("✗ field     email ← column mail: the query returns no column `mail`"),
        "{out}"
    );
    let (code, out, err) = kdit(
        dir.path(),
        "postgres://x:Secret123@127.0.0.1:1/db?sslmode=disable",
        &["query", "run", "customers"],
    );
    assert_eq!(code, 1);
    assert!(out.is_empty());
    assert!(
        err.starts_with("error: cannot connect to PostgreSQL at postgres://x:****@127.0.0.1:1/db"),
        "{err}"
    );
    assert!(!err.contains("Secret123"));
}
