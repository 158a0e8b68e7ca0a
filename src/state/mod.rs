//! The state store in PostgreSQL: what Klaviyo last confirmed for each job and key, list
//! memberships kdit made, the run ledger, and the per-job run lock.
//!
//! In: a connection and a schema name. Out: a `Snapshot` for the diff, and writes recorded
//! only after Klaviyo confirms them. I/O (PostgreSQL). Migrations are versioned in
//! `MIGRATIONS`; kdit creates its schema on first use.

use std::collections::HashMap;
use std::sync::Arc;

use crate::digest::{Fingerprint, Hash, row_mix};
use crate::digest::{key_hash, prefetch};
use serde_json::Value;
use serde_json::value::RawValue;
use tokio_postgres::Client as PgClient;

/// Schema migrations, applied in order; `{schema}` is replaced by the state schema's name.
const MIGRATIONS: &[&str] = &[
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
fn bump_sql(schema: &str) -> String {
    format!(
        "insert into {schema}.versions (job, generation) values ($1, 1)
         on conflict (job) do update set generation = {schema}.versions.generation + 1"
    )
}

/// `text` as an SQL string literal (an escape string, so it reads the same whatever
/// `standard_conforming_strings` says).
fn literal(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 3);
    out.push_str("E'");
    for c in text.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\'' => out.push_str("''"),
            c => out.push(c),
        }
    }
    out.push('\'');
    out
}

/// Decodes the rows of a binary `COPY … TO STDOUT` of `N` columns as its data arrives, in
/// chunks that need not end on a row's end.
#[derive(Default)]
struct CopyReader<const N: usize> {
    /// Bytes of a row (or of the header) not complete yet.
    pending: Vec<u8>,
    header_done: bool,
    ended: bool,
}

/// The binary COPY signature.
const COPY_SIGNATURE: &[u8] = b"PGCOPY\n\xff\r\n\0";

impl<const N: usize> CopyReader<N> {
    /// Decodes every complete row in `pending` + `chunk`, keeping the rest.
    fn feed(
        &mut self,
        chunk: &[u8],
        row: &mut impl FnMut([Option<&[u8]>; N]) -> Result<(), String>,
    ) -> Result<(), String> {
        if self.pending.is_empty() {
            let used = self.rows(chunk, row)?;
            self.pending.extend_from_slice(&chunk[used..]);
        } else {
            let mut data = std::mem::take(&mut self.pending);
            data.extend_from_slice(chunk);
            let used = self.rows(&data, row)?;
            data.drain(..used);
            self.pending = data;
        }
        Ok(())
    }

    /// Decodes the complete rows at the start of `data`; returns the bytes used.
    fn rows(
        &mut self,
        data: &[u8],
        row: &mut impl FnMut([Option<&[u8]>; N]) -> Result<(), String>,
    ) -> Result<usize, String> {
        let mut at = 0;
        if !self.header_done {
            let fixed = COPY_SIGNATURE.len() + 8;
            if data.len() < fixed {
                return Ok(0);
            }
            if &data[..COPY_SIGNATURE.len()] != COPY_SIGNATURE {
                return Err("not a binary COPY".into());
            }
            let ext = be_i32(&data[COPY_SIGNATURE.len() + 4..]).max(0) as usize;
            if data.len() < fixed + ext {
                return Ok(0);
            }
            at = fixed + ext;
            self.header_done = true;
        }
        while !self.ended && data.len() >= at + 2 {
            let fields = i16::from_be_bytes([data[at], data[at + 1]]);
            if fields == -1 {
                self.ended = true;
                at += 2;
                break;
            }
            if fields as usize != N {
                return Err(format!("a row of {fields} columns, not {N}"));
            }
            let mut p = at + 2;
            let mut values: [Option<&[u8]>; N] = [None; N];
            let mut complete = true;
            for v in &mut values {
                if data.len() < p + 4 {
                    complete = false;
                    break;
                }
                let len = be_i32(&data[p..]);
                p += 4;
                if len < 0 {
                    continue;
                }
                let len = len as usize;
                if data.len() < p + len {
                    complete = false;
                    break;
                }
                *v = Some(&data[p..p + len]);
                p += len;
            }
            if !complete {
                break;
            }
            row(values)?;
            at = p;
        }
        if self.ended && at < data.len() {
            return Err("data after the end of the COPY".into());
        }
        Ok(at)
    }

    /// Checks that the COPY ended where it should.
    fn finish(&self) -> Result<(), String> {
        if self.ended && self.pending.is_empty() {
            Ok(())
        } else {
            Err("the COPY ended part-way through".into())
        }
    }
}

fn be_i32(b: &[u8]) -> i32 {
    i32::from_be_bytes([b[0], b[1], b[2], b[3]])
}

/// A catalog tag kdit put on a list or segment for a job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tagged {
    pub tag: String,
    /// `list` or `segment`.
    pub kind: String,
    /// The list's or segment's name.
    pub target: String,
    pub target_id: String,
    pub tag_id: String,
}

/// Errors of the state store.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("state store: {0}")]
    Db(#[from] tokio_postgres::Error),
    #[error(
        "job `{job}` is already running (run #{run} by {holder}, since {since}); wait for it, or stop it first"
    )]
    Locked {
        job: String,
        run: i64,
        holder: String,
        since: String,
    },
    #[error("state schema name `{0}` is not a plain identifier (letters, digits, underscores)")]
    BadSchema(String),
    #[error("state store: cannot read the profiles' state: {0}")]
    Snapshot(String),
}

/// A handle on the state store.
pub struct State<'a> {
    db: &'a PgClient,
    schema: String,
    /// The Klaviyo account the state describes: what was synced to one account says
    /// nothing about another, so profiles and lists are kept per account.
    account: String,
}

/// What the state says about one key, in memory for the diff.
#[derive(Debug, Clone)]
pub struct Entry {
    pub hash: Hash,
    /// Bits (by index into the job's lists) of the lists kdit added this key to.
    pub lists: u64,
}

/// Everything the diff needs from the state, for one job.
///
/// Entries are kept by a 64-bit hash of the key in one vector — 32 bytes a key, plus a bit for
/// whether this run's rows showed it, against 130 in a map of owned strings — because a
/// million-key job must diff in well under 150 MB. The keys themselves stay in PostgreSQL;
/// `State::removal_keys` reads them back for the few that leave a mirrored list.
#[derive(Debug, Default)]
pub struct Snapshot {
    /// Entries added by `insert`, until `seal` moves them into `keys`.
    pending: Vec<(u64, Entry)>,
    /// Row fingerprints added by `insert_known` (with their entry's index), until `seal`.
    pending_known: Vec<(Fingerprint, u32)>,
    keys: Arc<Keys>,
    /// One bit an entry (by index): set by the diff when the key shows up in this run's rows.
    seen: Vec<u64>,
    /// Fingerprints of the rows that made the confirmed payloads (complete members only).
    pub known: Arc<KnownRows>,
    /// The last finished run, if any: (id, finished at).
    pub last_run: Option<(i64, String)>,
    /// A fingerprint of the state as loaded, so a saved plan can tell it moved.
    pub version: String,
}

/// The state's entries in the order they were read, shared read-only by the diff and the
/// transform threads (which find a known row's entry by its index). Finding a key needs an
/// index sorted by key hash: it is built the first time a key is looked up, because a run
/// whose rows are all recognised by their fingerprint never looks one up.
#[derive(Debug, Default)]
pub struct Keys {
    entries: Vec<(u64, Entry)>,
    index: std::sync::OnceLock<KeyIndex>,
}

/// (key hash, entry index), sorted, with its directory.
#[derive(Debug, Default)]
struct KeyIndex {
    sorted: Vec<(u64, u32)>,
    directory: Directory,
}

impl Keys {
    fn index(&self) -> &KeyIndex {
        self.index.get_or_init(|| {
            let mut sorted: Vec<(u64, u32)> = self
                .entries
                .iter()
                .enumerate()
                .map(|(i, (h, _))| (*h, i as u32))
                .collect();
            sorted.sort_unstable();
            let directory = Directory::build(sorted.iter().map(|(h, _)| *h));
            KeyIndex { sorted, directory }
        })
    }

    /// The index of the entry of a key (by `Snapshot::key_hash`).
    fn position(&self, h: u64) -> Option<usize> {
        if self.entries.is_empty() {
            return None;
        }
        let index = self.index();
        let slice = &index.sorted[index.directory.range(h)];
        let i = slice.partition_point(|(k, _)| *k < h);
        slice
            .get(i)
            .filter(|(k, _)| *k == h)
            .map(|(_, at)| *at as usize)
    }
}

/// Where each run of equal top bits starts in a vector sorted by a uniformly spread 64-bit
/// hash, so a lookup binary-searches a handful of neighbours instead of the whole vector
/// (a million keys: one or two cache misses rather than twenty).
#[derive(Debug, Default)]
struct Directory {
    shift: u32,
    starts: Vec<u32>,
}

impl Directory {
    fn build(sorted: impl ExactSizeIterator<Item = u64>) -> Directory {
        let n = sorted.len();
        // About two entries a slot: a lookup then reads one or two cache lines of entries.
        let bits = (usize::BITS - (n / 2).leading_zeros()).clamp(1, 24);
        let shift = 64 - bits;
        let mut starts = vec![0u32; (1 << bits) + 1];
        for h in sorted {
            starts[(h >> shift) as usize + 1] += 1;
        }
        for i in 1..starts.len() {
            starts[i] += starts[i - 1];
        }
        Directory { shift, starts }
    }

    fn slot(&self, h: u64) -> usize {
        (h >> self.shift) as usize
    }

    /// The index range that can hold `h`.
    fn range(&self, h: u64) -> std::ops::Range<usize> {
        if self.starts.is_empty() {
            return 0..0;
        }
        let slot = self.slot(h);
        self.starts[slot] as usize..self.starts[slot + 1] as usize
    }
}

/// Gives back a vector's spare room when there is much of it: a reallocation copies the
/// vector into fresh pages, which costs more than a few spare entries.
fn shrink<T>(v: &mut Vec<T>) {
    if v.capacity() - v.len() > v.len() / 8 {
        v.shrink_to_fit();
    }
}

/// A row `KnownRows` recognised: its state entry's index (`Snapshot::see_index`), its key
/// hash, and its contribution to the rows digest (`row_mix`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Recognised {
    pub index: u32,
    pub key_hash: u64,
    pub mix: u128,
}

/// The rows whose profiles Klaviyo already has, by fingerprint: a row found here is unchanged
/// and in every list of the job, so it needs no transform and no diff of its payload.
#[derive(Debug, Default)]
pub struct KnownRows {
    /// (fingerprint, index of the entry in `keys`), sorted.
    entries: Vec<(Fingerprint, u32)>,
    directory: Directory,
    keys: Arc<Keys>,
}

impl KnownRows {
    fn top(fp: &Fingerprint) -> u64 {
        u64::from_be_bytes(fp[..8].try_into().unwrap_or([0; 8]))
    }

    /// The entry a row with this fingerprint made, if the state knows the row.
    pub fn get(&self, fp: &Fingerprint) -> Option<Recognised> {
        let range = self.directory.range(KnownRows::top(fp));
        self.index_in(fp, range).and_then(|i| self.recognised(i))
    }

    /// The entry index of a fingerprint, looked for in `range` of `entries`.
    fn index_in(&self, fp: &Fingerprint, range: std::ops::Range<usize>) -> Option<u32> {
        let slice = &self.entries[range];
        let i = slice.binary_search_by(|(f, _)| f.cmp(fp)).ok()?;
        Some(slice[i].1)
    }

    fn recognised(&self, index: u32) -> Option<Recognised> {
        let (key_hash, entry) = self.keys.entries.get(index as usize)?;
        Some(Recognised {
            index,
            key_hash: *key_hash,
            mix: row_mix(*key_hash, &entry.hash),
        })
    }

    /// `get` for a batch of fingerprints, with the memory reads of all of them overlapped:
    /// the same answers, in order, at a fraction of the waiting.
    pub fn get_all(&self, fps: &[Fingerprint]) -> Vec<Option<Recognised>> {
        if self.entries.is_empty() {
            return vec![None; fps.len()];
        }
        let starts = &self.directory.starts;
        let slots: Vec<usize> = fps
            .iter()
            .map(|fp| {
                let slot = self.directory.slot(KnownRows::top(fp));
                prefetch(starts.get(slot));
                slot
            })
            .collect();
        let ranges: Vec<std::ops::Range<usize>> = slots
            .iter()
            .map(|&slot| {
                let range = starts[slot] as usize..starts[slot + 1] as usize;
                prefetch(self.entries.get(range.start));
                range
            })
            .collect();
        let found: Vec<Option<u32>> = fps
            .iter()
            .zip(ranges)
            .map(|(fp, range)| {
                let index = self.index_in(fp, range);
                if let Some(index) = index {
                    prefetch(self.keys.entries.get(index as usize));
                }
                index
            })
            .collect();
        found
            .into_iter()
            .map(|index| index.and_then(|i| self.recognised(i)))
            .collect()
    }

    /// The index of the state entry of a key (by `Snapshot::key_hash`), if the state has it.
    pub fn index_of_key(&self, key_hash: u64) -> Option<u32> {
        self.keys.position(key_hash).map(|i| i as u32)
    }

    /// How many keys the state has (known rows or not).
    pub fn keys(&self) -> usize {
        self.keys.entries.len()
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

impl Snapshot {
    /// Room for `entries` entries (and as many known rows), so loading a large state does
    /// not copy its vectors as they grow.
    pub fn reserve(&mut self, entries: usize) {
        self.pending.reserve_exact(entries);
        self.pending_known.reserve_exact(entries);
    }

    /// Adds an entry; call `seal` once all are in. Returns its index.
    pub fn insert(&mut self, key: &str, entry: Entry) -> u32 {
        self.insert_hashed(key_hash(key), entry)
    }

    fn insert_hashed(&mut self, key_hash: u64, entry: Entry) -> u32 {
        self.pending.push((key_hash, entry));
        (self.pending.len() - 1) as u32
    }

    /// Adds the fingerprint of the row that made the confirmed payload of the entry at
    /// `index` (as `insert` returned it); call `seal` once all are in.
    pub fn insert_known(&mut self, fp: Fingerprint, index: u32) {
        self.pending_known.push((fp, index));
    }

    /// Readies the entries and known rows for lookups.
    pub fn seal(&mut self) {
        let mut entries = std::mem::take(&mut self.pending);
        shrink(&mut entries);
        self.seen = vec![0; entries.len().div_ceil(64)];
        self.keys = Arc::new(Keys {
            entries,
            index: Default::default(),
        });
        let mut known = std::mem::take(&mut self.pending_known);
        known.sort_unstable();
        known.dedup_by(|a, b| a.0 == b.0);
        shrink(&mut known);
        let directory = Directory::build(known.iter().map(|(fp, _)| KnownRows::top(fp)));
        self.known = Arc::new(KnownRows {
            entries: known,
            directory,
            keys: self.keys.clone(),
        });
    }

    /// Marks the entry at `index` (`Recognised::index`) seen; false if there is none.
    pub fn see_index(&mut self, index: u32) -> bool {
        let i = index as usize;
        if i >= self.keys.entries.len() {
            return false;
        }
        self.seen[i / 64] |= 1 << (i % 64);
        true
    }

    /// Marks a key seen in this run's rows; its entry, if it has one.
    pub fn see(&mut self, key: &str) -> Option<&Entry> {
        let i = self.keys.position(key_hash(key))?;
        self.see_index(i as u32);
        Some(&self.keys.entries[i].1)
    }

    /// Whether the diff saw a key in this run's rows (false for a key the state lacks).
    pub fn seen(&self, key: &str) -> bool {
        self.keys
            .position(key_hash(key))
            .is_some_and(|i| self.seen[i / 64] & (1 << (i % 64)) != 0)
    }

    pub fn len(&self) -> usize {
        self.keys.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.entries.is_empty()
    }

    pub fn get(&self, key: &str) -> Option<&Entry> {
        self.keys
            .position(key_hash(key))
            .map(|i| &self.keys.entries[i].1)
    }

    /// The entries of keys the diff did not see in this run's rows.
    pub fn unseen(&self) -> impl Iterator<Item = &Entry> {
        self.keys
            .entries
            .iter()
            .enumerate()
            .filter(|(i, _)| self.seen[i / 64] & (1 << (i % 64)) == 0)
            .map(|(_, (_, e))| e)
    }

    pub fn reset_seen(&mut self) {
        self.seen.iter_mut().for_each(|w| *w = 0);
    }
}

impl<'a> State<'a> {
    /// Opens the store, creating and migrating its schema as needed.
    pub async fn open(db: &'a PgClient, schema: &str) -> Result<State<'a>, StateError> {
        if schema.is_empty()
            || !schema
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_')
            || schema.starts_with(|c: char| c.is_ascii_digit())
        {
            return Err(StateError::BadSchema(schema.to_string()));
        }
        let state = State {
            db,
            schema: schema.to_string(),
            account: String::new(),
        };
        state.migrate().await?;
        Ok(state)
    }

    pub fn schema(&self) -> &str {
        &self.schema
    }

    /// Scopes profile and list state to a Klaviyo account (its id from `GET /api/accounts`).
    pub fn for_account(mut self, account: &str) -> State<'a> {
        self.account = account.to_string();
        self
    }

    /// The key profile and list state is kept under for a job.
    fn scope(&self, job: &str) -> String {
        if self.account.is_empty() {
            job.to_string()
        } else {
            format!("{job}@{}", self.account)
        }
    }

    async fn migrate(&self) -> Result<(), StateError> {
        let s = &self.schema;
        // Serialise concurrent first runs on one advisory lock.
        self.db
            .execute(
                "select pg_advisory_lock(hashtextextended('kdit:migrate', 0))",
                &[],
            )
            .await?;
        let result = async {
            self.db
                .batch_execute(&format!(
                    "create schema if not exists {s};
                     create table if not exists {s}.migrations (
                         version int primary key,
                         applied_at timestamptz not null default now());"
                ))
                .await?;
            let row = self
                .db
                .query_one(&format!("select coalesce(max(version), 0) from {s}.migrations"), &[])
                .await?;
            let current: i32 = row.get(0);
            for (i, sql) in MIGRATIONS.iter().enumerate().skip(current as usize) {
                let version = i as i32 + 1;
                self.db
                    .batch_execute(&format!(
                        "begin; {} insert into {s}.migrations (version) values ({version}); commit;",
                        sql.replace("{schema}", s)
                    ))
                    .await?;
            }
            Ok::<(), tokio_postgres::Error>(())
        }
        .await;
        self.db
            .execute(
                "select pg_advisory_unlock(hashtextextended('kdit:migrate', 0))",
                &[],
            )
            .await?;
        result?;
        Ok(())
    }

    /// Takes the job's run lock (held by this connection until `finish_run` or disconnect)
    /// and opens a ledger entry. Refuses, naming the holder, when another run has it.
    pub async fn begin_run(&self, job: &str, holder: &str) -> Result<i64, StateError> {
        let got: bool = self
            .db
            .query_one(
                "select pg_try_advisory_lock(hashtextextended('kdit:job:' || $1, 0))",
                &[&job],
            )
            .await?
            .get(0);
        if !got {
            let s = &self.schema;
            let row = self
                .db
                .query_opt(
                    &format!(
                        "select id, holder, to_char(started_at at time zone 'UTC', 'YYYY-MM-DD HH24:MI:SS \"UTC\"')
                         from {s}.runs where job = $1 and status = 'running' order by id desc limit 1"
                    ),
                    &[&job],
                )
                .await?;
            let (run, holder, since) = row
                .map(|r| {
                    (
                        r.get::<_, i64>(0),
                        r.get::<_, String>(1),
                        r.get::<_, String>(2),
                    )
                })
                .unwrap_or((0, "another kdit process".into(), "a moment ago".into()));
            return Err(StateError::Locked {
                job: job.to_string(),
                run,
                holder,
                since,
            });
        }
        let s = &self.schema;
        // A run that died (kill -9) left its entry 'running'; we hold the lock, so it is over.
        self.db
            .execute(
                &format!("update {s}.runs set status = 'interrupted' where job = $1 and status = 'running'"),
                &[&job],
            )
            .await?;
        let row = self
            .db
            .query_one(
                &format!("insert into {s}.runs (job, holder) values ($1, $2) returning id"),
                &[&job, &holder],
            )
            .await?;
        Ok(row.get(0))
    }

    /// Refreshes PostgreSQL's statistics of the profile tables. After a run that wrote many
    /// rows (a first sync), the next run's snapshot would otherwise be planned for the table as
    /// it was before (autovacuum catches up only after a while, if it runs at all): an index
    /// scan over a million rows instead of one sequential read. With `vacuum`, `profiles` is
    /// vacuumed too: its dead row versions go and its rows are marked committed once, so the
    /// next snapshot (which reads every row) does not do that work while the job waits.
    pub async fn analyze(&self, vacuum: bool) -> Result<(), StateError> {
        let s = &self.schema;
        if vacuum {
            // VACUUM cannot share a statement string (an implicit transaction) with another.
            self.db
                .batch_execute(&format!("vacuum (analyze) {s}.profiles"))
                .await?;
        } else {
            self.db
                .batch_execute(&format!("analyze {s}.profiles"))
                .await?;
        }
        self.db
            .batch_execute(&format!("analyze {s}.payloads"))
            .await?;
        Ok(())
    }

    /// Closes a ledger entry and releases the job's lock.
    pub async fn finish_run(
        &self,
        job: &str,
        run: i64,
        status: &str,
        summary: &Value,
    ) -> Result<(), StateError> {
        let s = &self.schema;
        self.db
            .execute(
                &format!("update {s}.runs set status = $2, finished_at = now(), summary = $3 where id = $1"),
                &[&run, &status, summary],
            )
            .await?;
        self.db
            .execute(
                "select pg_advisory_unlock(hashtextextended('kdit:job:' || $1, 0))",
                &[&job],
            )
            .await?;
        Ok(())
    }

    /// Loads the job's state for the diff. `lists` are the job's list names, in order.
    pub async fn snapshot(&self, job: &str, lists: &[String]) -> Result<Snapshot, StateError> {
        let name = job;
        let job = self.scope(job);
        let job = job.as_str();
        let s = &self.schema;
        // Which bit of the stored membership mask is which of the job's lists.
        let bits = self.list_bits(job, lists).await?;
        // The last finished run: shown in the plan, and its row count sizes the vectors.
        let last = self
            .db
            .query_opt(
                &format!(
                    "select id, to_char(finished_at at time zone 'UTC', 'YYYY-MM-DD HH24:MI \"UTC\"'),
                            coalesce((summary->>'rows')::bigint, 0)
                     from {s}.runs where job = $1 and status in ('ok', 'partial') order by id desc limit 1"
                ),
                &[&name],
            )
            .await?;
        let mut snap = Snapshot::default();
        if let Some(r) = &last {
            let rows: i64 = r.get(2);
            let rows = usize::try_from(rows).unwrap_or(0).min(1 << 28);
            snap.reserve(rows + rows / 16);
        }
        snap.last_run = last.map(|r| (r.get(0), r.get(1)));
        // Every write to a job's profiles bumps its generation. Read before the rows: a write
        // in between makes the version older than the rows, so a plan saved from them is
        // refused as stale rather than taken as current.
        let generation: i64 = self
            .db
            .query_opt(
                &format!("select generation from {s}.versions where job = $1"),
                &[&job],
            )
            .await?
            .map_or(0, |r| r.get(0));
        // Streamed: a million keys must not sit in memory twice (rows, then the entries).
        // Binary COPY: no per-row message parsing into `Row`s, and rows decoded in place.
        // COPY takes no parameters, so the job goes in as an escaped literal.
        let copy = self
            .db
            .copy_out(&format!(
                "copy (select key, hash, lists, source from {s}.profiles where job = {})
                 to stdout (format binary)",
                literal(job)
            ))
            .await?;
        futures::pin_mut!(copy);
        let all_lists = if lists.is_empty() {
            0
        } else {
            u64::MAX >> (64 - lists.len().min(64))
        };
        // The common case: the job's lists hold bits 0, 1, 2… in order, and a mask is used as
        // it is; otherwise each bit is moved to its list's place.
        let in_order = bits.iter().enumerate().all(|(i, b)| *b as usize == i);
        let job_bits = |mask: u64| -> u64 {
            if in_order {
                return mask & all_lists;
            }
            let mut out = 0;
            for (i, b) in bits.iter().enumerate() {
                out |= ((mask >> b) & 1) << i;
            }
            out
        };
        let mut count = 0u64;
        let mut reader = CopyReader::<4>::default();
        let mut add = |row: [Option<&[u8]>; 4]| -> Result<(), String> {
            let [Some(key), Some(hash), Some(mask), source] = row else {
                return Err("a NULL key, hash or lists".into());
            };
            let hash: Hash = hash.try_into().map_err(|_| "a malformed hash")?;
            let mask: [u8; 8] = mask.try_into().map_err(|_| "a malformed lists mask")?;
            let lists = job_bits(u64::from_be_bytes(mask));
            count += 1;
            let key = std::str::from_utf8(key).map_err(|e| e.to_string())?;
            let at = snap.insert_hashed(key_hash(key), Entry { hash, lists });
            if let Some(fp) = source.and_then(|s| Fingerprint::try_from(s).ok())
                && lists & all_lists == all_lists
            {
                snap.insert_known(fp, at);
            }
            Ok(())
        };
        while let Some(chunk) = futures::StreamExt::next(&mut copy).await {
            reader
                .feed(&chunk?, &mut add)
                .map_err(StateError::Snapshot)?;
        }
        reader.finish().map_err(StateError::Snapshot)?;
        snap.seal();
        snap.version = format!("{count}#{generation}");
        Ok(snap)
    }

    /// The bit of the stored membership mask of each of `lists` (for the scoped `job`), in
    /// order, giving bits to lists that have none. A job has 64 bits: when they are all taken,
    /// the bit of a list the job no longer declares is taken back (its memberships cleared).
    /// `plan` runs without the job's lock, so a bit another process took first is read back.
    async fn list_bits(&self, job: &str, lists: &[String]) -> Result<Vec<u8>, StateError> {
        let s = &self.schema;
        let mut attempts = 0;
        'again: loop {
            attempts += 1;
            let rows = self
                .db
                .query(
                    &format!("select name, bit from {s}.list_bits where job = $1"),
                    &[&job],
                )
                .await?;
            let mut by_name: HashMap<String, u8> = rows
                .into_iter()
                .map(|r| (r.get::<_, String>(0), r.get::<_, i16>(1) as u8))
                .collect();
            let mut out = Vec::with_capacity(lists.len());
            // More than 64 lists in one job is refused when the job is compiled.
            for list in lists.iter().take(64) {
                if let Some(b) = by_name.get(list) {
                    out.push(*b);
                    continue;
                }
                let used: u64 = by_name.values().fold(0, |m, b| m | 1 << b);
                let bit = if used != u64::MAX {
                    used.trailing_ones() as u8
                } else {
                    let Some((old, bit)) = by_name
                        .iter()
                        .filter(|(n, _)| !lists.contains(n))
                        .map(|(n, b)| (n.clone(), *b))
                        .min()
                    else {
                        break;
                    };
                    self.release_bit(job, &old, bit).await?;
                    by_name.remove(&old);
                    bit
                };
                let taken = self
                    .db
                    .execute(
                        &format!(
                            "insert into {s}.list_bits (job, name, bit) values ($1, $2, $3)
                             on conflict do nothing"
                        ),
                        &[&job, list, &i16::from(bit)],
                    )
                    .await?;
                if taken == 0 && attempts < 5 {
                    // Another run or plan gave this list (or this bit) out meanwhile.
                    continue 'again;
                }
                by_name.insert(list.clone(), bit);
                out.push(bit);
            }
            return Ok(out);
        }
    }

    /// Takes a list's bit back: clears it from every member and forgets the list's name.
    async fn release_bit(&self, job: &str, name: &str, bit: u8) -> Result<(), StateError> {
        let s = &self.schema;
        self.db.batch_execute("begin").await?;
        let released = async {
            self.db
                .execute(
                    &format!(
                        "update {s}.profiles set lists = lists & ~(1::bigint << $2)
                         where job = $1 and lists & (1::bigint << $2) <> 0"
                    ),
                    &[&job, &i32::from(bit)],
                )
                .await?;
            self.db
                .execute(
                    &format!("delete from {s}.list_bits where job = $1 and name = $2"),
                    &[&job, &name],
                )
                .await?;
            self.bump(job).await
        }
        .await;
        self.db
            .batch_execute(if released.is_ok() {
                "commit"
            } else {
                "rollback"
            })
            .await?;
        released
    }

    /// Bumps the generation of a (scoped) job's state.
    async fn bump(&self, job: &str) -> Result<(), StateError> {
        self.db.execute(&bump_sql(&self.schema), &[&job]).await?;
        Ok(())
    }

    /// Keys to remove from each list in `mirrored` (bits by list index): members kdit added
    /// that the run's rows did not show (`seen` unset by the diff). Sorted.
    pub async fn removal_keys(
        &self,
        job: &str,
        snapshot: &Snapshot,
        lists: &[String],
        mirrored: u64,
    ) -> Result<Vec<Vec<String>>, StateError> {
        let job = self.scope(job);
        let s = &self.schema;
        let mut out = vec![Vec::new(); lists.len()];
        let rows = self
            .db
            .query_raw(
                &format!("select key from {s}.profiles where job = $1"),
                [&job as &(dyn tokio_postgres::types::ToSql + Sync)],
            )
            .await?;
        futures::pin_mut!(rows);
        while let Some(row) = futures::StreamExt::next(&mut rows).await {
            let row = row?;
            let key: &str = row.get(0);
            if let Some(e) = snapshot.get(key)
                && !snapshot.seen(key)
            {
                let gone = e.lists & mirrored;
                for (i, keys) in out.iter_mut().enumerate() {
                    if gone & (1 << i) != 0 {
                        keys.push(key.to_string());
                    }
                }
            }
        }
        for keys in &mut out {
            keys.sort();
        }
        Ok(out)
    }

    /// The last confirmed payloads of some keys (for field-level diffs of samples).
    pub async fn payloads(
        &self,
        job: &str,
        keys: &[String],
    ) -> Result<HashMap<String, Value>, StateError> {
        let job = self.scope(job);
        let job = job.as_str();
        let s = &self.schema;
        let rows = self
            .db
            .query(
                &format!("select key, payload from {s}.payloads where job = $1 and key = any($2)"),
                &[&job, &keys],
            )
            .await?;
        Ok(rows.into_iter().map(|r| (r.get(0), r.get(1))).collect())
    }

    /// The consent values kdit last confirmed for the job's profiles (the `kdit_consent`
    /// carrier of their payloads), for the keys that have any.
    pub async fn consent_carriers(&self, job: &str) -> Result<HashMap<String, Value>, StateError> {
        let job = self.scope(job);
        let job = job.as_str();
        let s = &self.schema;
        let rows = self
            .db
            .query(
                &format!(
                    "select key, payload->'properties'->'{c}' from {s}.payloads
                     where job = $1 and payload->'properties' ? '{c}'",
                    c = crate::job::attributes::CONSENT_CARRIER
                ),
                &[&job],
            )
            .await?;
        Ok(rows.into_iter().map(|r| (r.get(0), r.get(1))).collect())
    }

    /// The catalog tags kdit put on lists and segments for a job.
    pub async fn tagged(&self, job: &str) -> Result<Vec<Tagged>, StateError> {
        let job = self.scope(job);
        let s = &self.schema;
        let rows = self
            .db
            .query(
                &format!(
                    "select tag, kind, target, target_id, tag_id from {s}.tagged
                     where job = $1 order by kind, target, tag"
                ),
                &[&job],
            )
            .await?;
        Ok(rows
            .into_iter()
            .map(|r| Tagged {
                tag: r.get(0),
                kind: r.get(1),
                target: r.get(2),
                target_id: r.get(3),
                tag_id: r.get(4),
            })
            .collect())
    }

    /// Records a tag kdit put on a list or segment for a job.
    pub async fn record_tag(&self, job: &str, t: &Tagged) -> Result<(), StateError> {
        let job = self.scope(job);
        let s = &self.schema;
        self.db
            .execute(
                &format!(
                    "insert into {s}.tagged (job, tag, kind, target, target_id, tag_id)
                     values ($1, $2, $3, $4, $5, $6)
                     on conflict (job, tag, kind, target) do update
                       set target_id = excluded.target_id, tag_id = excluded.tag_id"
                ),
                &[&job, &t.tag, &t.kind, &t.target, &t.target_id, &t.tag_id],
            )
            .await?;
        Ok(())
    }

    /// Forgets a tag kdit put on a list or segment (taken off, or gone from Klaviyo).
    pub async fn forget_tag(
        &self,
        job: &str,
        tag: &str,
        kind: &str,
        target: &str,
    ) -> Result<(), StateError> {
        let job = self.scope(job);
        let s = &self.schema;
        self.db
            .execute(
                &format!(
                    "delete from {s}.tagged where job = $1 and tag = $2 and kind = $3 and target = $4"
                ),
                &[&job, &tag, &kind, &target],
            )
            .await?;
        Ok(())
    }

    /// The (name, Klaviyo id) pairs a job keeps in `table` (`lists` or `segments`).
    async fn ids(&self, table: &str, job: &str) -> Result<Vec<(String, String)>, StateError> {
        let job = self.scope(job);
        let s = &self.schema;
        let rows = self
            .db
            .query(
                &format!("select name, klaviyo_id from {s}.{table} where job = $1 order by name"),
                &[&job],
            )
            .await?;
        Ok(rows.into_iter().map(|r| (r.get(0), r.get(1))).collect())
    }

    /// Records a name's Klaviyo id for a job in `table` (`lists` or `segments`).
    async fn save_id(
        &self,
        table: &str,
        job: &str,
        name: &str,
        id: &str,
    ) -> Result<(), StateError> {
        let job = self.scope(job);
        let s = &self.schema;
        self.db
            .execute(
                &format!(
                    "insert into {s}.{table} (job, name, klaviyo_id) values ($1, $2, $3)
                     on conflict (job, name) do update set klaviyo_id = excluded.klaviyo_id"
                ),
                &[&job, &name, &id],
            )
            .await?;
        Ok(())
    }

    /// The segments kdit manages for a job: (name, Klaviyo id).
    pub async fn segments(&self, job: &str) -> Result<Vec<(String, String)>, StateError> {
        self.ids("segments", job).await
    }

    /// Records that kdit manages a segment for a job.
    pub async fn save_segment(&self, job: &str, name: &str, id: &str) -> Result<(), StateError> {
        self.save_id("segments", job, name, id).await
    }

    /// Stops managing a segment for a job (it stays in Klaviyo).
    pub async fn forget_segment(&self, job: &str, name: &str) -> Result<(), StateError> {
        let job = self.scope(job);
        let s = &self.schema;
        self.db
            .execute(
                &format!("delete from {s}.segments where job = $1 and name = $2"),
                &[&job, &name],
            )
            .await?;
        Ok(())
    }

    /// Klaviyo ids of the job's lists that kdit resolved before.
    pub async fn list_ids(&self, job: &str) -> Result<HashMap<String, String>, StateError> {
        Ok(self.ids("lists", job).await?.into_iter().collect())
    }

    pub async fn save_list_id(&self, job: &str, name: &str, id: &str) -> Result<(), StateError> {
        self.save_id("lists", job, name, id).await
    }

    /// Records profiles Klaviyo confirmed: their payloads and hashes, and that they are now
    /// members of `lists` (the job's lists, which `snapshot` gave bits). One statement writes
    /// `profiles`, `payloads` and the job's generation, so they never disagree.
    pub async fn confirm_profiles(
        &self,
        job: &str,
        confirmed: &[Confirmed<'_>],
        lists: &[String],
    ) -> Result<(), StateError> {
        let job = self.scope(job);
        let job = job.as_str();
        if confirmed.is_empty() {
            return Ok(());
        }
        let s = &self.schema;
        let keys: Vec<&str> = confirmed.iter().map(|c| c.key).collect();
        let hashes: Vec<&[u8]> = confirmed.iter().map(|c| c.hash.as_slice()).collect();
        let payloads: Vec<tokio_postgres::types::Json<&RawValue>> = confirmed
            .iter()
            .map(|c| tokio_postgres::types::Json(c.payload))
            .collect();
        let sources: Vec<Option<&[u8]>> = confirmed
            .iter()
            .map(|c| c.source.as_ref().map(|f| f.as_slice()))
            .collect();
        let bump = bump_sql(s);
        self.db
            .execute(
                &format!(
                    "with t as (
                         select * from unnest($2::text[], $3::bytea[], $4::jsonb[], $6::bytea[])
                           as t(k, h, p, f)
                     ), member as (
                         select coalesce(bit_or(1::bigint << bit), 0) as mask
                         from {s}.list_bits where job = $1 and name = any($5)
                     ), version as (
                         {bump}
                     ), profiles as (
                         insert into {s}.profiles (job, key, hash, lists, source)
                         select $1, k, encode(h, 'hex')::uuid, (select mask from member),
                                encode(f, 'hex')::uuid
                         from t
                         on conflict (job, key) do update
                           set hash = excluded.hash, lists = excluded.lists,
                               source = excluded.source
                     )
                     insert into {s}.payloads (job, key, payload)
                     select $1, k, p from t
                     on conflict (job, key) do update set payload = excluded.payload"
                ),
                &[&job, &keys, &hashes, &payloads, &lists, &sources],
            )
            .await?;
        Ok(())
    }

    /// Records the fingerprints of rows whose profiles were unchanged (the payload Klaviyo has
    /// is the one the row makes), so the next run can skip them. Changes nothing else: the
    /// state's version stays, so a saved plan is not made stale by it.
    pub async fn refresh_sources(
        &self,
        job: &str,
        rows: &[(String, Fingerprint)],
    ) -> Result<(), StateError> {
        if rows.is_empty() {
            return Ok(());
        }
        let job = self.scope(job);
        let s = &self.schema;
        let keys: Vec<&str> = rows.iter().map(|(k, _)| k.as_str()).collect();
        let sources: Vec<&[u8]> = rows.iter().map(|(_, f)| f.as_slice()).collect();
        self.db
            .execute(
                &format!(
                    "update {s}.profiles p set source = encode(t.f, 'hex')::uuid
                     from unnest($2::text[], $3::bytea[]) as t(k, f)
                     where p.job = $1 and p.key = t.k"
                ),
                &[&job, &keys, &sources],
            )
            .await?;
        Ok(())
    }

    /// Records that keys left a list (mirror removals Klaviyo confirmed).
    pub async fn confirm_removals(
        &self,
        job: &str,
        list: &str,
        keys: &[String],
    ) -> Result<(), StateError> {
        let job = self.scope(job);
        let job = job.as_str();
        let s = &self.schema;
        let bump = bump_sql(s);
        self.db
            .execute(
                &format!(
                    "with version as (
                         {bump}
                     )
                     update {s}.profiles
                     set lists = lists & ~coalesce((select 1::bigint << bit from {s}.list_bits
                                                    where job = $1 and name = $2), 0)
                     where job = $1 and key = any($3)"
                ),
                &[&job, &list, &keys],
            )
            .await?;
        Ok(())
    }

    /// Records a bulk import batch in the ledger.
    pub async fn record_batch(
        &self,
        run: i64,
        seq: i32,
        bulk_job: Option<&str>,
        profiles: i32,
        failed: i32,
        status: &str,
    ) -> Result<(), StateError> {
        let s = &self.schema;
        self.db
            .execute(
                &format!(
                    "insert into {s}.batches (run_id, seq, bulk_job_id, profiles, failed, status, confirmed_at)
                     values ($1, $2, $3, $4, $5, $6, case when $6 = 'confirmed' then now() end)
                     on conflict (run_id, seq) do update set bulk_job_id = excluded.bulk_job_id,
                       failed = excluded.failed, status = excluded.status, confirmed_at = excluded.confirmed_at"
                ),
                &[&run, &seq, &bulk_job, &profiles, &failed, &status],
            )
            .await?;
        Ok(())
    }

    /// Past runs of a job, newest first.
    pub async fn history(&self, job: &str, limit: i64) -> Result<Vec<RunRecord>, StateError> {
        let s = &self.schema;
        let rows = self
            .db
            .query(
                &format!(
                    "select id, status, holder,
                            to_char(started_at at time zone 'UTC', 'YYYY-MM-DD HH24:MI:SS'),
                            extract(epoch from (coalesce(finished_at, now()) - started_at))::float8,
                            coalesce(summary, 'null'::jsonb)
                     from {s}.runs where job = $1 order by id desc limit $2"
                ),
                &[&job, &limit],
            )
            .await?;
        Ok(rows
            .into_iter()
            .map(|r| RunRecord {
                id: r.get(0),
                status: r.get(1),
                holder: r.get(2),
                started_at: r.get(3),
                seconds: r.get(4),
                summary: r.get(5),
            })
            .collect())
    }
}

/// A profile Klaviyo confirmed, to record.
#[derive(Debug, Clone)]
pub struct Confirmed<'a> {
    pub key: &'a str,
    pub hash: Hash,
    pub payload: &'a RawValue,
    /// The fingerprint of the row the payload was made from, when known.
    pub source: Option<Fingerprint>,
}

/// One run from the ledger.
#[derive(Debug, Clone, serde::Serialize)]
pub struct RunRecord {
    pub id: i64,
    pub status: String,
    pub holder: String,
    pub started_at: String,
    pub seconds: f64,
    pub summary: Value,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::digest::hash_payload;
    use serde_json::json;
    use sha2::{Digest, Sha256};

    #[test]
    fn payload_hashes_change_with_any_field() {
        let raw = |v: serde_json::Value| serde_json::value::to_raw_value(&v).unwrap();
        let a = hash_payload(&raw(json!({"email": "a@x.com", "first_name": "A"})), &[]);
        let b = hash_payload(&raw(json!({"email": "a@x.com", "first_name": "B"})), &[]);
        let c = hash_payload(
            &raw(json!({"email": "a@x.com", "first_name": "A"})),
            &["plan".into()],
        );
        assert_ne!(a, b);
        assert_ne!(a, c);
        assert_eq!(
            a,
            hash_payload(&raw(json!({"email": "a@x.com", "first_name": "A"})), &[])
        );
    }

    #[test]
    fn row_mixes_tell_keys_and_payloads_apart_in_any_sum() {
        let (a, b) = (key_hash("a@x.com"), key_hash("b@x.com"));
        let (ha, hb): (Hash, Hash) = ([1; 16], [2; 16]);
        let sum = |rows: &[(u64, Hash)]| {
            rows.iter()
                .fold(0u128, |s, (k, h)| s.wrapping_add(row_mix(*k, h)))
        };
        // Order does not matter; which key has which payload does.
        assert_eq!(sum(&[(a, ha), (b, hb)]), sum(&[(b, hb), (a, ha)]));
        assert_ne!(sum(&[(a, ha), (b, hb)]), sum(&[(a, hb), (b, ha)]));
        assert_ne!(row_mix(a, &ha), row_mix(b, &ha));
        assert_ne!(row_mix(a, &ha), row_mix(a, &hb));
        // Every bit of the payload hash counts.
        for byte in 0..16 {
            for bit in 0..8 {
                let mut h = ha;
                h[byte] ^= 1 << bit;
                assert_ne!(row_mix(a, &h), row_mix(a, &ha), "byte {byte} bit {bit}");
            }
        }
    }

    #[test]
    fn lookups_find_every_key_and_nothing_else_at_any_size() {
        for n in [0usize, 1, 7, 100, 5_000] {
            let mut snap = Snapshot::default();
            for i in 0..n {
                let key = format!("k{i}@x.com");
                let entry = Entry {
                    hash: [i as u8; 16],
                    lists: 0,
                };
                let at = snap.insert(&key, entry);
                let fp: Fingerprint = Sha256::digest(key.as_bytes())[..16].try_into().unwrap();
                snap.insert_known(fp, at);
            }
            // A fingerprint pointing at no entry is no known row.
            snap.insert_known([7; 16], u32::MAX);
            snap.seal();
            let known = snap.known.clone();
            let mut fps = Vec::new();
            for i in 0..n {
                let key = format!("k{i}@x.com");
                assert_eq!(
                    snap.get(&key).map(|e| e.hash),
                    Some([i as u8; 16]),
                    "{n}: {key}"
                );
                let fp: Fingerprint = Sha256::digest(key.as_bytes())[..16].try_into().unwrap();
                let found = known.get(&fp).expect("a known row");
                assert_eq!(found.key_hash, key_hash(&key), "{n}: {key}");
                assert_eq!(found.mix, row_mix(found.key_hash, &[i as u8; 16]));
                assert!(snap.see_index(found.index));
                assert!(snap.seen(&key), "{n}: {key}");
                fps.push(fp);
                fps.push([0xee; 16]);
            }
            // The batch lookup answers as one lookup at a time does.
            let one_by_one: Vec<_> = fps.iter().map(|fp| known.get(fp)).collect();
            assert_eq!(known.get_all(&fps), one_by_one);
            assert_eq!(one_by_one.iter().flatten().count(), n);
            assert_eq!(known.get(&[7; 16]), None);
            assert_eq!(snap.unseen().count(), 0);
            assert!(snap.get("absent@x.com").is_none());
            assert_eq!(known.get(&[0xff; 16]), None);
            assert_eq!(known.get(&[0; 16]), None);
        }
    }

    /// A row of the snapshot's COPY: text key, uuid hash, bigint lists, uuid source or NULL.
    type CopyRow<'a> = (&'a str, &'a [u8], i64, Option<&'a [u8]>);

    /// A binary COPY of rows.
    fn copy_bytes(rows: &[CopyRow]) -> Vec<u8> {
        let mut out = COPY_SIGNATURE.to_vec();
        out.extend(0i32.to_be_bytes());
        out.extend(4i32.to_be_bytes());
        out.extend(b"ext!");
        let field = |out: &mut Vec<u8>, v: Option<&[u8]>| match v {
            Some(v) => {
                out.extend((v.len() as i32).to_be_bytes());
                out.extend(v);
            }
            None => out.extend((-1i32).to_be_bytes()),
        };
        for (key, hash, lists, source) in rows {
            out.extend(4i16.to_be_bytes());
            field(&mut out, Some(key.as_bytes()));
            field(&mut out, Some(hash));
            field(&mut out, Some(&lists.to_be_bytes()));
            field(&mut out, *source);
        }
        out.extend((-1i16).to_be_bytes());
        out
    }

    #[test]
    fn binary_copy_rows_decode_whatever_the_chunks() {
        let rows: &[CopyRow] = &[
            ("a@x.com", &[1; 16], 3, Some(&[9; 16])),
            ("b@x.com", &[2; 16], 0, None),
            ("ü@x.com", &[3; 16], i64::MIN, Some(&[])),
        ];
        let bytes = copy_bytes(rows);
        for size in [1, 2, 3, 7, 64, bytes.len()] {
            let mut reader = CopyReader::<4>::default();
            let mut seen = Vec::new();
            let mut add = |row: [Option<&[u8]>; 4]| -> Result<(), String> {
                let lists = i64::from_be_bytes(row[2].unwrap().try_into().unwrap());
                seen.push((
                    String::from_utf8(row[0].unwrap().to_vec()).unwrap(),
                    row[1].unwrap().to_vec(),
                    lists,
                    row[3].map(|s| s.to_vec()),
                ));
                Ok(())
            };
            for chunk in bytes.chunks(size) {
                reader.feed(chunk, &mut add).unwrap();
            }
            reader.finish().unwrap();
            let expected: Vec<_> = rows
                .iter()
                .map(|(k, h, l, s)| (k.to_string(), h.to_vec(), *l, s.map(|s| s.to_vec())))
                .collect();
            assert_eq!(seen, expected, "chunks of {size}");
        }
        // Cut short: refused, never taken for the whole state.
        let mut reader = CopyReader::<4>::default();
        reader
            .feed(&bytes[..bytes.len() - 5], &mut |_| Ok(()))
            .unwrap();
        assert!(reader.finish().is_err());
    }

    #[test]
    fn literals_are_quoted_so_nothing_escapes_them() {
        assert_eq!(literal("shop-sync@abc"), "E'shop-sync@abc'");
        assert_eq!(literal(r"o'k\"), r"E'o''k\\'");
    }
}
