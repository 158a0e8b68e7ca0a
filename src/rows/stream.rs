//! A job's rows as profiles: the source, the transform threads and the transform joined,
//! for `plan`, `run`, `preview` and `check`.
//!
//! In: a compiled `Job` (its parsed query, compiled mapping, timeout and guard, project
//! defaults merged); a `Source`. Out: a `JobQuery` (the stored query rendered with its
//! parameters, the mapping, the timeout) and, once opened, a `ProfileStream` yielding one
//! `StreamedRow` (a `ProfileRow`, a `Reject`, or a row the state knows) per row, in query
//! order, with bounded memory. `prepare` reads no file; `open` talks to PostgreSQL.

use std::collections::VecDeque;
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use sha2::{Digest as _, Sha256};
use tokio::sync::oneshot;
use tokio_postgres::Row;

use crate::job::compile::Job;
use crate::job::query::{QueryError, RenderedQuery, StoredQuery};
use crate::job::spec::Threshold;
use crate::rows::cell::Column;
use crate::rows::pool::{BatchBuilder, BuiltBatch, BuiltRow, Pool};
use crate::rows::source::decode::{RowDecoder, Undecodable, decode_row};
use crate::rows::source::error::SourceError;
use crate::rows::source::{Interrupt, Rows, RunContext, Source};
use crate::rows::transform::{
    ColumnProblem, InvalidGuard, Mapping, ProfileRow, Reject, StreamedRow, Transformer,
    check_invalid,
};
use crate::state::snapshot::KnownRows;

/// Why a job's rows cannot be produced.
#[derive(Debug, thiserror::Error)]
pub enum RowsError {
    #[error("{0}")]
    Query(#[from] QueryError),
    #[error("{}", join(.0))]
    Columns(Vec<ColumnProblem>),
    #[error(transparent)]
    Source(#[from] SourceError),
}

fn join<T: fmt::Display>(items: &[T]) -> String {
    items
        .iter()
        .map(|i| i.to_string())
        .collect::<Vec<_>>()
        .join("\n")
}

/// A job's query and mapping, checked offline and ready to run.
#[derive(Debug)]
pub struct JobQuery {
    pub job_name: String,
    pub query: StoredQuery,
    pub rendered: RenderedQuery,
    pub mapping: Arc<Mapping>,
    /// `query.timeout`, else the project's default.
    pub timeout: Option<Duration>,
    /// `guards.max_invalid`, else the project's default.
    pub max_invalid: Option<Threshold>,
}

/// Renders the compiled job's query with its parameters; the mapping, timeout and guard
/// are the job's (`job::compile` made them; nothing is read from disk here).
pub fn prepare(job: &Job) -> Result<JobQuery, RowsError> {
    let query = job.query.clone()?;
    let rendered = query.render(&job.spec.query.params)?;
    Ok(JobQuery {
        job_name: job.name().to_string(),
        query,
        rendered,
        mapping: job.mapping.clone(),
        timeout: job.timeout,
        max_invalid: job.max_invalid,
    })
}

impl JobQuery {
    /// The run context for this job's query.
    pub fn context(&self, limit: Option<u64>, interrupt: Option<Interrupt>) -> RunContext {
        RunContext {
            job: Some(self.job_name.clone()),
            timeout: self.timeout,
            limit,
            interrupt,
        }
    }

    /// Starts the query and binds the mapping to its columns: a mapped column the query
    /// lacks fails here, before any row is read.
    pub async fn open(
        &self,
        source: &Source,
        limit: Option<u64>,
        interrupt: Option<Interrupt>,
    ) -> Result<ProfileStream, RowsError> {
        let started = Instant::now();
        let rows = source
            .stream(&self.rendered, &self.context(limit, interrupt))
            .await?;
        let transformer = self
            .mapping
            .bind(rows.columns())
            .map_err(RowsError::Columns)?;
        Ok(ProfileStream {
            rows,
            transformer,
            fingerprint: None,
            known: None,
            state_keys: None,
            ready: VecDeque::new(),
            failed: None,
            exhausted: false,
            pool: None,
            in_flight: VecDeque::new(),
            threads: std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1)
                .min(4),
            rejected: 0,
            profiles: 0,
            started,
            max_invalid: self.max_invalid,
        })
    }
}

/// A `ProfileStream` owns what it needs, so it can move into a task of its own.
#[allow(dead_code)]
fn assert_send_static() {
    fn is<T: Send + 'static>() {}
    is::<ProfileStream>();
    is::<JobQuery>();
}

/// Rows handed to a transform thread at a time: small enough that the threads start early
/// and take turns finely with the reader (512 measured best on 2 cores; 2,048 was 15% slower).
const BATCH: usize = 512;
/// Batches kept in flight per transform thread, so a thread never waits for the reader.
const IN_FLIGHT_PER_THREAD: usize = 4;

/// Profiles (and rejects) of a running query, in row order.
pub struct ProfileStream {
    rows: Rows,
    transformer: Transformer,
    /// Fingerprints rows (see `fingerprint_rows`), and the rows the state knows.
    fingerprint: Option<Sha256>,
    known: Option<Arc<KnownRows>>,
    /// The state's keys: a profile's key found here is checked for duplicates by its entry's
    /// index (`KnownRows::index_of_key`, `Transformer::dedup_state_key`).
    state_keys: Option<Arc<KnownRows>>,
    /// Outcomes of the current batch not yet handed out.
    ready: VecDeque<StreamedRow>,
    /// The error that ended the rows; reported after the outcomes of the rows before it.
    failed: Option<SourceError>,
    /// No more rows will be read (the query ended, failed or a row could not be read).
    exhausted: bool,
    /// The transform threads, started with the first batch.
    pool: Option<Pool>,
    /// Batches handed to the threads, oldest first: the first row's number and the result.
    in_flight: VecDeque<(u64, oneshot::Receiver<std::thread::Result<BuiltBatch>>)>,
    /// Threads transforming batches.
    threads: usize,
    rejected: u64,
    profiles: u64,
    started: Instant,
    max_invalid: Option<Threshold>,
}

/// Counts at the end of a query.
#[derive(Debug, Clone, PartialEq)]
pub struct RowTotals {
    pub rows: u64,
    pub profiles: u64,
    pub rejected: u64,
    pub elapsed: Duration,
    pub invalid_guard: InvalidGuard,
}

impl ProfileStream {
    pub fn columns(&self) -> &[Column] {
        self.rows.columns()
    }

    /// How many threads transform a batch of rows (default: the machine's cores, at most 4).
    pub fn set_threads(&mut self, threads: usize) {
        self.threads = threads.max(1);
    }

    /// Fingerprints every row (`ProfileRow::source`): SHA-256 over `recipe` (what besides the
    /// values decides the profile: the mapping and its settings), the columns' names and types,
    /// and the values as PostgreSQL sent them.
    pub fn fingerprint_rows(&mut self, recipe: &[u8]) {
        let mut h = Sha256::new();
        h.update(b"kdit row fingerprint 1\0");
        h.update(env!("CARGO_PKG_VERSION").as_bytes());
        h.update((recipe.len() as u64).to_le_bytes());
        h.update(recipe);
        for c in self.rows.columns() {
            h.update(c.name.as_bytes());
            h.update(b"\0");
            h.update(c.type_name.as_bytes());
            h.update(b"\0");
        }
        self.fingerprint = Some(h);
    }

    /// Counts the query's time from now (the query was started early, and its rows were not
    /// wanted until now).
    pub fn restart_clock(&mut self) {
        self.started = Instant::now();
    }

    /// Rows whose fingerprint is in `known` come out as `StreamedRow::Known`, untransformed
    /// (needs `fingerprint_rows`).
    pub fn skip_known(&mut self, known: Arc<KnownRows>) {
        if known.keys() > 0 {
            self.transformer.expect_state_keys(known.keys());
            self.state_keys = Some(known.clone());
        }
        if !known.is_empty() {
            self.known = Some(known);
        }
    }

    /// Rejects a profile whose key an earlier row had (the first row wins).
    fn dedup(&mut self, built: Result<ProfileRow, Reject>) -> Result<ProfileRow, Reject> {
        let index = match (&built, &self.state_keys) {
            (Ok(p), Some(keys)) => keys.index_of_key(p.key_hash),
            _ => None,
        };
        self.transformer.dedup_state_key(built, index)
    }

    /// Rows are read in batches of `BATCH` and handed to the transform threads, which
    /// fingerprint, decode and build them while the next batches are read; outcomes still
    /// come out one at a time, in row order. `fingerprint_rows` and `skip_known` must be
    /// called before the first `next`.
    pub async fn next(&mut self) -> Option<Result<StreamedRow, SourceError>> {
        if self.ready.is_empty()
            && let Err(e) = self.fill().await?
        {
            return Some(Err(e));
        }
        self.ready.pop_front().map(Ok)
    }

    /// `next` a batch at a time: the outcomes of the rows of one transformed batch (up to
    /// `BATCH`), in row order, as the transform threads made them; the error that ended the
    /// rows after the batches before it.
    pub async fn next_batch(&mut self) -> Option<Result<Vec<StreamedRow>, SourceError>> {
        if self.ready.is_empty()
            && let Err(e) = self.fill().await?
        {
            return Some(Err(e));
        }
        Some(Ok(Vec::from(std::mem::take(&mut self.ready))))
    }

    /// Waits until outcomes are ready: `None` when the rows ended, the error that ended them.
    async fn fill(&mut self) -> Option<Result<(), SourceError>> {
        while self.ready.is_empty() {
            // Keep every thread busy, with batches waiting, while reading goes on.
            while !self.exhausted && self.in_flight.len() < IN_FLIGHT_PER_THREAD * self.threads {
                self.read_batch().await;
            }
            let Some((first, result)) = self.in_flight.pop_front() else {
                return self.failed.take().map(Err);
            };
            match result.await {
                Ok(Ok((built, rows))) => self.absorb(first, built, &rows),
                // A panic on a transform thread is a bug: surface it here, on the caller's thread.
                Ok(Err(panic)) => std::panic::resume_unwind(panic),
                Err(_) => {
                    self.exhausted = true;
                    self.in_flight.clear();
                    return Some(Err(SourceError::Config {
                        message: "a transform thread stopped without an answer".into(),
                        hint: "this is a bug in kdit: please report it with the job file".into(),
                    }));
                }
            }
        }
        Some(Ok(()))
    }

    /// Reads up to `BATCH` rows and hands them to the threads.
    async fn read_batch(&mut self) {
        let mut batch = Vec::with_capacity(BATCH);
        while batch.len() < BATCH {
            match self.rows.next_batch(&mut batch, BATCH).await {
                Ok(true) => {}
                Ok(false) => {
                    self.exhausted = true;
                    break;
                }
                Err(e) => {
                    self.failed = Some(e);
                    self.exhausted = true;
                    break;
                }
            }
        }
        if batch.is_empty() {
            return;
        }
        let first = self.rows.count() + 1 - batch.len() as u64;
        let pool = self.pool.get_or_insert_with(|| {
            let builder = self.transformer.builder();
            // Text no field reads is not copied out of the rows.
            let decoder = RowDecoder::reading(&batch[0], &builder.reads(batch[0].len()));
            Pool::start(
                self.threads,
                Arc::new(BatchBuilder {
                    builder,
                    columns: self.rows.columns().to_vec(),
                    decoder,
                    fingerprint: self.fingerprint.clone(),
                    known: self.known.clone(),
                }),
            )
        });
        self.in_flight.push_back((first, pool.submit(first, batch)));
    }

    /// Turns a transformed batch into outcomes: duplicate keys are settled here, in row order.
    fn absorb(&mut self, first: u64, built: Vec<BuiltRow>, rows: &[Row]) {
        self.ready.reserve(built.len());
        // The batch's keys are looked up together: their places in the set are fetched first.
        for b in &built {
            if let BuiltRow::Transformed(Ok(p)) = b {
                self.transformer.prefetch(p.key_hash);
            }
        }
        for (i, b) in built.into_iter().enumerate() {
            let row_number = first + i as u64;
            let outcome = match b {
                BuiltRow::Transformed(r) => self.dedup(r),
                BuiltRow::Known(known)
                    if self.transformer.first_sight_of_state_key(known.index) =>
                {
                    self.ready.push_back(StreamedRow::Known {
                        row_number,
                        index: known.index,
                        mix: known.mix,
                    });
                    self.profiles += 1;
                    continue;
                }
                // A second row with a known row's key: build it to say why it is refused.
                BuiltRow::Known(_) => match decode_row(&rows[i], self.rows.columns()) {
                    Ok(cells) => {
                        let built = self.transformer.build(row_number, cells);
                        self.dedup(built)
                    }
                    Err(e) => return self.stop_at(row_number, e),
                },
                BuiltRow::Unreadable(e) => return self.stop_at(row_number, e),
            };
            self.ready.push_back(match outcome {
                Ok(p) => {
                    self.profiles += 1;
                    StreamedRow::Profile(p)
                }
                Err(r) => {
                    self.rejected += 1;
                    StreamedRow::Rejected(r)
                }
            });
        }
    }

    /// A row that cannot be read ends the query there; what came before still counts, and
    /// the batches read after it are dropped.
    fn stop_at(&mut self, row_number: u64, e: Undecodable) {
        self.failed = Some(self.rows.unreadable(row_number, e));
        self.exhausted = true;
        self.in_flight.clear();
    }

    /// Ends the query's transaction; the counts and the `max_invalid` verdict.
    pub async fn finish(self) -> Result<RowTotals, SourceError> {
        let rows = self.rows.finish().await?;
        Ok(RowTotals {
            rows,
            profiles: self.profiles,
            rejected: self.rejected,
            elapsed: self.started.elapsed(),
            invalid_guard: check_invalid(self.max_invalid, self.rejected, rows),
        })
    }
}
