//! The state store in PostgreSQL: what Klaviyo last confirmed for each job and key, list
//! memberships kdit made, the run ledger, and the per-job run lock.
//!
//! In: a connection and a schema name. Out: a `Snapshot` for the diff, and writes recorded
//! only after Klaviyo confirms them. I/O (PostgreSQL). Migrations are versioned in
//! `migrations::MIGRATIONS`; kdit creates its schema on first use. The snapshot's in-memory
//! index is `snapshot` (pure), the binary COPY it is read with `copy`.

mod copy;
mod migrations;
pub mod snapshot;

use std::collections::HashMap;

use crate::digest::{Fingerprint, Hash, key_hash};
use serde_json::Value;
use serde_json::value::RawValue;
use tokio_postgres::Client as PgClient;

use self::copy::{CopyReader, literal};
use self::migrations::{MIGRATIONS, bump_sql};

use self::snapshot::{Entry, Snapshot};

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
        // The ledger (`runs`) keys a job by its name; the profile state (`profiles`,
        // `list_bits`, `versions`) by the job scoped to the Klaviyo account.
        let runs_job = job;
        let profiles_job = self.scope(job);
        let profiles_job = profiles_job.as_str();
        let s = &self.schema;
        // Which bit of the stored membership mask is which of the job's lists.
        let bits = self.list_bits(profiles_job, lists).await?;
        // The last finished run: shown in the plan, and its row count sizes the vectors.
        let last = self
            .db
            .query_opt(
                &format!(
                    "select id, to_char(finished_at at time zone 'UTC', 'YYYY-MM-DD HH24:MI \"UTC\"'),
                            coalesce((summary->>'rows')::bigint, 0)
                     from {s}.runs where job = $1 and status in ('ok', 'partial') order by id desc limit 1"
                ),
                &[&runs_job],
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
                &[&profiles_job],
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
                literal(profiles_job)
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
