//! The row feed: the job's query run against PostgreSQL, each row transformed, handed to the
//! diff through a bounded channel (so reading, diffing and sending overlap while memory stays
//! flat).
//!
//! In: a compiled job (its query and mapping), a source pool. Out: a `Feed` each time one is
//! asked for (plan and apply each read the rows once), through the diff's input port
//! `RowSource`; a failure is a typed `FeedError` (a cancelled query is `FeedError::Cancelled`).
//! I/O (PostgreSQL).

use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use crate::job::compile::Job;
use crate::job::spec::JobSpec;
use crate::plan::Rejected;
use crate::rows::source::error::SourceError;
use crate::rows::source::{Interrupt, Source};
use crate::rows::transform::{Reject, StreamedRow};
use crate::rows::{self, JobQuery, RowsError};
use crate::state::snapshot::KnownRows;

/// Rows flowing from the source: outcomes on a bounded channel, in batches (one hand-over per
/// row would cost as much as a no-change run's diff), and the task producing them (which
/// reports the row count and query time, or the error that stopped it). An error ends the
/// outcomes: every row before it has been handed over.
pub type Feed = (
    mpsc::Receiver<Result<Vec<StreamedRow>, FeedError>>,
    JoinHandle<Result<QueryDone, FeedError>>,
);

/// How a query went.
#[derive(Debug, Clone, Copy, Default)]
pub struct QueryDone {
    pub rows: u64,
    pub seconds: f64,
}

/// Why a feed stopped (or could not start). Cloned: it goes down the channel and is the
/// producing task's result as well.
#[derive(Debug, Clone, thiserror::Error)]
pub enum FeedError {
    /// The query was cancelled (Ctrl-C): no row after it was read, nothing was written.
    #[error("{context} was cancelled")]
    Cancelled { context: String },
    /// The source failed: connection, SQL, timeout, an unreadable row.
    #[error(transparent)]
    Source(Arc<SourceError>),
    /// The rows could not be produced: the query or the mapping against its columns.
    #[error(transparent)]
    Rows(Arc<RowsError>),
    /// The fingerprint recipe could not be written.
    #[error(transparent)]
    Recipe(Arc<serde_json::Error>),
    /// The state could not be read: the plan is abandoned, and so are the rows.
    #[error("the state was not read; the rows were not needed")]
    StateNotRead,
}

impl From<SourceError> for FeedError {
    fn from(e: SourceError) -> FeedError {
        match e {
            SourceError::Cancelled { context } => FeedError::Cancelled { context },
            e => FeedError::Source(Arc::new(e)),
        }
    }
}

impl From<RowsError> for FeedError {
    fn from(e: RowsError) -> FeedError {
        match e {
            RowsError::Source(e) => e.into(),
            e => FeedError::Rows(Arc::new(e)),
        }
    }
}

/// Something that can run the job's query (again) and feed its rows: the diff's input port.
pub trait RowSource: Send + Sync {
    /// Starts the query at once; its rows are read once `known` arrives (the state is read
    /// meanwhile, while the server works towards the first row). Rows whose fingerprint is in
    /// `known` may come as `StreamedRow::Known` (unchanged, not transformed). If `known` never
    /// arrives (its sender dropped), the feed ends with an error.
    fn feed(&self, known: oneshot::Receiver<Arc<KnownRows>>) -> Feed;
    /// The query as shown in plans: file name (or "inline SQL") and parameters.
    fn label(&self) -> String;
}

/// Batches in flight between the query and the diff.
const CHANNEL_BATCHES: usize = 8;

/// A job's rows from PostgreSQL.
pub struct PgRows {
    source: Source,
    query: Arc<JobQuery>,
    interrupt: Option<Interrupt>,
    /// The job as written (rejects of hidden consent fields are named after its keys).
    spec: Arc<JobSpec>,
    /// What besides a row's values decides its profile (for row fingerprints).
    recipe: Arc<Vec<u8>>,
}

impl PgRows {
    /// Prepares the job's query and mapping; fails on problems `validate` would also find.
    pub fn new(
        job: &Job,
        source: Source,
        interrupt: Option<Interrupt>,
    ) -> Result<PgRows, FeedError> {
        let defaults = job.project.as_ref().and_then(|p| p.spec.defaults.as_ref());
        // The job's mapping carries the consent columns as hidden fields (see `consent`).
        let query = rows::prepare(job)?;
        // The hidden consent fields are part of the recipe: adding consent columns to a job
        // must not leave its rows "known".
        let recipe = serde_json::to_vec(&(
            &job.read_profiles,
            defaults,
            &job.spec.query.columns,
            job.profile_tags_salt(),
        ))
        .map_err(|e| FeedError::Recipe(Arc::new(e)))?;
        Ok(PgRows {
            source,
            query: Arc::new(query),
            interrupt,
            spec: Arc::new(job.spec.clone()),
            recipe: Arc::new(recipe),
        })
    }
}

impl RowSource for PgRows {
    fn label(&self) -> String {
        let params = self.query.rendered.describe_params();
        if params.is_empty() {
            self.query.rendered.label.clone()
        } else {
            format!("{} ({params})", self.query.rendered.label)
        }
    }

    fn feed(&self, known: oneshot::Receiver<Arc<KnownRows>>) -> Feed {
        let (tx, rx) = mpsc::channel(CHANNEL_BATCHES);
        let source = self.source.clone();
        let query = self.query.clone();
        let interrupt = self.interrupt.clone();
        let spec = self.spec.clone();
        let recipe = self.recipe.clone();
        let task = tokio::spawn(async move {
            let result = produce(&source, &query, &spec, interrupt, &recipe, known, &tx).await;
            if let Err(e) = &result {
                // The consumer must learn the rows are incomplete (a mirror must not remove
                // members just because the query failed half way).
                let _ = tx.send(Err(e.clone())).await;
            }
            result
        });
        (rx, task)
    }
}

async fn produce(
    source: &Source,
    query: &JobQuery,
    spec: &JobSpec,
    interrupt: Option<Interrupt>,
    recipe: &[u8],
    known: oneshot::Receiver<Arc<KnownRows>>,
    tx: &mpsc::Sender<Result<Vec<StreamedRow>, FeedError>>,
) -> Result<QueryDone, FeedError> {
    let mut stream = match query.open(source, None, interrupt).await {
        Ok(s) => s,
        // A consent column the query lacks is named as the job file names it.
        Err(RowsError::Columns(mut problems)) => {
            for p in &mut problems {
                if let Some(f) = crate::plan::consent::author_field(spec, &p.field) {
                    p.field = f;
                }
            }
            return Err(RowsError::Columns(problems).into());
        }
        Err(e) => return Err(e.into()),
    };
    let Ok(known) = known.await else {
        // The state could not be read: the plan is abandoned, and so are the rows.
        return Err(FeedError::StateNotRead);
    };
    stream.restart_clock();
    stream.fingerprint_rows(recipe);
    stream.skip_known(known);
    // The stream's batches go to the diff as they are (up to 512 rows each).
    while let Some(next) = stream.next_batch().await {
        // The rows before an error went in earlier batches (then the error, from the caller).
        if tx.send(Ok(next?)).await.is_err() {
            // The consumer stopped (Ctrl-C or an error of its own): end the query.
            break;
        }
    }
    let totals = stream.finish().await?;
    Ok(QueryDone {
        rows: totals.rows,
        seconds: totals.elapsed.as_secs_f64(),
    })
}

/// A rejected row as the plan and the work file keep it: a hidden consent field is named as
/// the job file names it.
pub fn rejected(spec: &JobSpec, r: Reject) -> Rejected {
    Rejected {
        row: r.row_number,
        key: r.key.unwrap_or_default(),
        field: r
            .field
            .map(|f| crate::plan::consent::author_field(spec, &f).unwrap_or(f))
            .unwrap_or_default(),
        rule: r.rule.as_str().to_string(),
        message: r.message,
    }
}
