//! A job's rows as profiles: the source and transform stages joined, for `plan`, `run`,
//! `preview` and `check`.
//!
//! In: a job file's `JobSpec` (its query and `profiles` section) and project `Defaults`;
//! a `Source`. Out: a `JobQuery` (the stored query rendered with its parameters, the
//! compiled mapping, the timeout) and, once opened, a `ProfileStream` yielding one
//! `RowOutcome` (a `ProfileRow` or a `Reject`) per row, in query order, with bounded memory.
//! `prepare` reads the query file from disk; `open` talks to PostgreSQL.

use std::collections::VecDeque;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::query::{QueryError, RenderedQuery, StoredQuery};
use sha2::{Digest as _, Sha256};
use tokio_postgres::Row;

use crate::source::{
    Column, Interrupt, Rows, RunContext, Source, SourceError, Undecodable, decode_row,
    row_fingerprint,
};
use crate::spec::{Defaults, JobSpec, Threshold};
use crate::state::KnownRows;
use crate::transform::{
    ColumnProblem, InvalidGuard, Mapping, MappingError, ProfileRow, Reject, Transformer,
    check_invalid, par_map,
};

/// Why a job's rows cannot be produced.
#[derive(Debug, thiserror::Error)]
pub enum RowsError {
    #[error("{}: {message}", .path.display())]
    Job { path: PathBuf, message: String },
    #[error("{0}")]
    Query(#[from] QueryError),
    #[error("{}", join(.0))]
    Mapping(Vec<MappingError>),
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

/// Reads the job's query (a file relative to the job file, or inline SQL), renders it with
/// the job's parameters and compiles the profile mapping.
pub fn prepare(
    job: &JobSpec,
    job_path: &Path,
    defaults: Option<&Defaults>,
) -> Result<JobQuery, RowsError> {
    let query = match (&job.query.file, &job.query.sql) {
        (Some(file), None) => {
            let path = job_path.parent().unwrap_or(Path::new(".")).join(file);
            let text = std::fs::read_to_string(&path).map_err(|e| RowsError::Job {
                path: job_path.to_path_buf(),
                message: format!("cannot read query file {}: {e}", path.display()),
            })?;
            StoredQuery::parse(file.clone(), &text)?
        }
        (None, Some(sql)) => StoredQuery::inline(sql)?,
        _ => {
            return Err(RowsError::Job {
                path: job_path.to_path_buf(),
                message: "`query` needs exactly one of `file` or `sql`".into(),
            });
        }
    };
    let rendered = query.render(&job.query.params)?;
    let mapping = Arc::new(
        Mapping::compile(&job.profiles, defaults)
            .map_err(RowsError::Mapping)?
            .with_extra_columns(&job.query.columns),
    );
    Ok(JobQuery {
        job_name: job.name.clone(),
        query,
        rendered,
        mapping,
        timeout: job
            .query
            .timeout
            .or(defaults.and_then(|d| d.timeout))
            .map(|d| d.0),
        max_invalid: job
            .guards
            .as_ref()
            .and_then(|g| g.max_invalid)
            .or(defaults.and_then(|d| d.guards.as_ref().and_then(|g| g.max_invalid))),
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
            ready: VecDeque::new(),
            failed: None,
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

/// Rows transformed together (on several threads).
const BATCH: usize = 2048;

/// One row's fate.
#[derive(Debug, Clone, PartialEq)]
pub enum RowOutcome {
    Profile(ProfileRow),
    Rejected(Reject),
    /// A row whose fingerprint the state knows (see `ProfileStream::skip_known`): its profile
    /// is unchanged, so it was not transformed. `key_hash` is `Snapshot::key_hash` of its key.
    Known {
        row_number: u64,
        key_hash: u64,
    },
}

/// What a worker thread made of a row.
enum Built {
    Done(Result<ProfileRow, Reject>),
    /// Known to the state; the row is kept in case its key turns out to be a duplicate.
    Known(u64, Row),
    Unreadable(Undecodable),
}

/// Profiles (and rejects) of a running query, in row order.
pub struct ProfileStream {
    rows: Rows,
    transformer: Transformer,
    /// Fingerprints rows (see `fingerprint_rows`), and the rows the state knows.
    fingerprint: Option<Sha256>,
    known: Option<Arc<KnownRows>>,
    /// Outcomes of the current batch not yet handed out.
    ready: VecDeque<RowOutcome>,
    /// An error that ended the rows after a partial batch; reported after that batch.
    failed: Option<SourceError>,
    /// Threads transforming a batch.
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

    /// Rows whose fingerprint is in `known` come out as `RowOutcome::Known`, untransformed
    /// (needs `fingerprint_rows`).
    pub fn skip_known(&mut self, known: Arc<KnownRows>) {
        if !known.is_empty() {
            self.known = Some(known);
        }
    }

    /// Rows are read in batches of `BATCH`; each batch is decoded and transformed on several
    /// threads; outcomes still come out one at a time, in row order.
    pub async fn next(&mut self) -> Option<Result<RowOutcome, SourceError>> {
        if let Some(o) = self.ready.pop_front() {
            return Some(Ok(o));
        }
        if let Some(e) = self.failed.take() {
            return Some(Err(e));
        }
        let mut batch = Vec::with_capacity(BATCH);
        while batch.len() < BATCH {
            match self.rows.next_raw().await {
                Some(Ok(row)) => batch.push(row),
                Some(Err(e)) => {
                    if batch.is_empty() {
                        return Some(Err(e));
                    }
                    self.failed = Some(e);
                    break;
                }
                None => break,
            }
        }
        if batch.is_empty() {
            return None;
        }
        let first = self.rows.count() + 1 - batch.len() as u64;
        let built = {
            let columns = self.rows.columns();
            let transformer = &self.transformer;
            let fingerprint = self.fingerprint.as_ref();
            let known = self.known.as_deref();
            par_map(batch, self.threads, |i, row| {
                let source = fingerprint.map(|f| row_fingerprint(f, &row));
                if let (Some(fp), Some(known)) = (&source, known)
                    && let Some(key_hash) = known.get(fp)
                {
                    return Built::Known(key_hash, row);
                }
                match decode_row(&row, columns) {
                    Ok(cells) => {
                        Built::Done(transformer.build(first + i as u64, cells).map(|mut p| {
                            p.source = source;
                            p
                        }))
                    }
                    Err(e) => Built::Unreadable(e),
                }
            })
        };
        for (i, b) in built.into_iter().enumerate() {
            let row_number = first + i as u64;
            let outcome = match b {
                Built::Done(r) => self.transformer.dedup(r),
                Built::Known(key_hash, _) if self.transformer.first_sight(key_hash) => {
                    self.ready.push_back(RowOutcome::Known {
                        row_number,
                        key_hash,
                    });
                    self.profiles += 1;
                    continue;
                }
                // A second row with a known row's key: build it to say why it is refused.
                Built::Known(_, row) => match decode_row(&row, self.rows.columns()) {
                    Ok(cells) => {
                        let built = self.transformer.build(row_number, cells);
                        self.transformer.dedup(built)
                    }
                    Err(e) => {
                        self.failed = Some(self.rows.unreadable(row_number, e));
                        break;
                    }
                },
                Built::Unreadable(e) => {
                    // The query ends here; what came before still counts.
                    self.failed = Some(self.rows.unreadable(row_number, e));
                    break;
                }
            };
            self.ready.push_back(match outcome {
                Ok(p) => {
                    self.profiles += 1;
                    RowOutcome::Profile(p)
                }
                Err(r) => {
                    self.rejected += 1;
                    RowOutcome::Rejected(r)
                }
            });
        }
        match self.ready.pop_front() {
            Some(o) => Some(Ok(o)),
            None => self.failed.take().map(Err),
        }
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
