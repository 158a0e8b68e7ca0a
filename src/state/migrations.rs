//! The state schema's migrations: the SQL that creates and upgrades kdit's tables, in order,
//! and the clause every write of a job's profiles uses to bump its generation.
//!
//! In: the state schema's name. Out: SQL text. Pure: `State::migrate` runs it (PostgreSQL).

/// Schema migrations, applied in order; `{schema}` is replaced by the state schema's name.
pub(super) const MIGRATIONS: &[&str] = &[
    // 1: profiles, list memberships, lists, ledger.
    r#"
    create table {schema}.profiles (
        job text not null,
        key text not null,
        hash bytea not null,
        payload jsonb not null,
        lists text[] not null default '{}',
        run_id bigint,
        updated_at timestamptz not null default now(),
        primary key (job, key)
    );
    create table {schema}.lists (
        job text not null,
        name text not null,
        klaviyo_id text not null,
        primary key (job, name)
    );
    create table {schema}.runs (
        id bigserial primary key,
        job text not null,
        started_at timestamptz not null default now(),
        finished_at timestamptz,
        status text not null default 'running',
        holder text not null,
        summary jsonb
    );
    create index on {schema}.runs (job, id desc);
    create table {schema}.batches (
        run_id bigint not null references {schema}.runs(id),
        seq int not null,
        bulk_job_id text,
        profiles int not null,
        failed int not null default 0,
        status text not null,
        confirmed_at timestamptz,
        primary key (run_id, seq)
    );
    "#,
    // 2: the fingerprint of the source row each confirmed payload was made from.
    r#"
    alter table {schema}.profiles add column source bytea;
    "#,
    // 3: what kdit did on the audience side per job: the catalog tags it put on lists and
    // segments (so a tag a job drops is taken off again, and only those), and the segments
    // it manages (so one a job stops declaring is reported, never silently forgotten).
    r#"
    create table {schema}.tagged (
        job text not null,
        tag text not null,
        kind text not null,
        target text not null,
        target_id text not null,
        tag_id text not null,
        primary key (job, tag, kind, target)
    );
    create table {schema}.segments (
        job text not null,
        name text not null,
        klaviyo_id text not null,
        primary key (job, name)
    );
    "#,
    // 4: confirmed payloads move out of `profiles` into a table of their own, so the
    // snapshot every run reads scans a narrow table (the payloads are read only for the few
    // keys a plan shows field diffs of, and by consent). `profiles` is rebuilt rather than
    // altered: a dropped column's data would stay in every row until a rewrite.
    r#"
    create table {schema}.payloads (
        job text not null,
        key text not null,
        payload jsonb not null,
        primary key (job, key)
    );
    insert into {schema}.payloads (job, key, payload)
        select job, key, payload from {schema}.profiles;
    alter table {schema}.profiles rename to profiles_v3;
    alter index {schema}.profiles_pkey rename to profiles_v3_pkey;
    create table {schema}.profiles (
        job text not null,
        key text not null,
        hash bytea not null,
        lists text[] not null default '{}',
        run_id bigint,
        updated_at timestamptz not null default now(),
        source bytea,
        primary key (job, key)
    );
    insert into {schema}.profiles (job, key, hash, lists, run_id, updated_at, source)
        select job, key, hash, lists, run_id, updated_at, source from {schema}.profiles_v3;
    drop table {schema}.profiles_v3;
    analyze {schema}.profiles;
    analyze {schema}.payloads;
    "#,
    // 5: `profiles` narrows to what every run's snapshot reads, in fixed-size types: the
    // hashes as `uuid` (16 bytes, no length header), list memberships as a bitmask whose bits
    // `list_bits` names per job (a `text[]` cost as much to send as the rest of the row), and
    // no `run_id` or `updated_at` (never read back). A job's state version is now a counter
    // every write bumps, in `versions`.
    r#"
    create table {schema}.list_bits (
        job text not null,
        name text not null,
        bit smallint not null check (bit between 0 and 63),
        primary key (job, name),
        unique (job, bit)
    );
    insert into {schema}.list_bits (job, name, bit)
        select job, name, bit from (
            select job, name, row_number() over (partition by job order by name) - 1 as bit
            from (select distinct job, unnest(lists) as name from {schema}.profiles) n
        ) b where bit < 64;
    create table {schema}.versions (
        job text primary key,
        generation bigint not null
    );
    insert into {schema}.versions (job, generation)
        select distinct job, 1 from {schema}.profiles;
    alter table {schema}.profiles rename to profiles_v4;
    alter index {schema}.profiles_pkey rename to profiles_v4_pkey;
    create table {schema}.profiles (
        job text not null,
        key text not null,
        hash uuid not null,
        source uuid,
        lists bigint not null default 0,
        primary key (job, key)
    );
    insert into {schema}.profiles (job, key, hash, source, lists)
        select p.job, p.key,
               -- Hashes were always 16 bytes; anything else could match nothing anyway.
               case when length(p.hash) = 16 then encode(p.hash, 'hex') else md5(p.hash) end::uuid,
               case when length(p.source) = 16 then encode(p.source, 'hex')::uuid end,
               coalesce((select bit_or(1::bigint << b.bit) from {schema}.list_bits b
                         where b.job = p.job and b.name = any(p.lists)), 0)
        from {schema}.profiles_v4 p;
    drop table {schema}.profiles_v4;
    analyze {schema}.profiles;
    "#,
];

/// The statement (or, in a `with`, the clause) that bumps the generation of the job in `$1`:
/// part of every statement that changes a job's profiles, so the two never disagree.
pub(super) fn bump_sql(schema: &str) -> String {
    format!(
        "insert into {schema}.versions (job, generation) values ($1, 1)
         on conflict (job) do update set generation = {schema}.versions.generation + 1"
    )
}
