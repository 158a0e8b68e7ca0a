//! The row feed: the job's query run against PostgreSQL, each row transformed, handed to the
//! diff through a bounded channel (so reading, diffing and sending overlap while memory stays
//! flat).
//!
//! In: a compiled job, its mapping, a source pool. Out: a `sync::Feed` each time one is asked
//! for (plan and apply each read the rows once). I/O (PostgreSQL).

use std::sync::Arc;
use std::time::Instant;

use tokio::sync::mpsc;

use crate::compile::Job;
use crate::diff::{Desired, Rejected, RowOutcome};
use crate::query::{RenderedQuery, StoredQuery};
use crate::source::{RunContext, Source};
use crate::sync::{Feed, QueryDone, RowSource};
use crate::transform::Mapping;

/// Rows in flight between the query and the diff.
const CHANNEL_ROWS: usize = 4096;

/// A job's rows from PostgreSQL.
pub struct PgRows {
    source: Source,
    mapping: Arc<Mapping>,
    query: RenderedQuery,
    ctx: RunContext,
}

impl PgRows {
    /// Prepares the job's query and mapping; fails on problems `validate` would also find.
    pub fn new(job: &Job, source: Source, ctx: RunContext) -> Result<PgRows, String> {
        let stored = match &job.query_file {
            Some(f) => StoredQuery::parse(f.display().to_string(), &job.query_text),
            None => StoredQuery::inline(&job.query_text),
        }
        .map_err(|e| e.to_string())?;
        let query = stored
            .render(&job.spec.query.params)
            .map_err(|e| e.to_string())?;
        let defaults = job.project.as_ref().and_then(|p| p.spec.defaults.as_ref());
        let mapping = Mapping::compile(&job.spec.profiles, defaults)
            .map_err(|errors| {
                errors
                    .iter()
                    .map(|e| format!("{}: {}", e.field, e.message))
                    .collect::<Vec<_>>()
                    .join("; ")
            })?
            .with_extra_columns(&job.spec.query.columns);
        let mut ctx = ctx;
        ctx.job = Some(job.name().to_string());
        if ctx.timeout.is_none() {
            ctx.timeout = job
                .spec
                .query
                .timeout
                .or_else(|| job.project.as_ref()?.spec.defaults.as_ref()?.timeout)
                .map(|t| t.0);
        }
        Ok(PgRows {
            source,
            mapping: Arc::new(mapping),
            query,
            ctx,
        })
    }
}

impl RowSource for PgRows {
    fn label(&self) -> String {
        let params = self.query.describe_params();
        if params.is_empty() {
            self.query.label.clone()
        } else {
            format!("{} ({params})", self.query.label)
        }
    }

    fn feed(&self) -> Feed {
        let (tx, rx) = mpsc::channel(CHANNEL_ROWS);
        let source = self.source.clone();
        let mapping = self.mapping.clone();
        let query = self.query.clone();
        let ctx = self.ctx.clone();
        let task = tokio::spawn(async move {
            let result = produce(&source, &mapping, &query, &ctx, &tx).await;
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
    mapping: &Mapping,
    query: &RenderedQuery,
    ctx: &RunContext,
    tx: &mpsc::Sender<Result<RowOutcome, String>>,
) -> Result<QueryDone, String> {
    let started = Instant::now();
    let mut rows = source.stream(query, ctx).await.map_err(|e| e.to_string())?;
    let mut transformer = mapping.bind(rows.columns()).map_err(|problems| {
        problems
            .iter()
            .map(|p| format!("field `{}`: {}", p.field, p.message))
            .collect::<Vec<_>>()
            .join("; ")
    })?;
    let mut n = 0u64;
    while let Some(next) = rows.next().await {
        let cells = next.map_err(|e| e.to_string())?;
        n += 1;
        let outcome = match transformer.row(n, &cells) {
            Ok(p) => RowOutcome::Profile(Desired {
                row: p.row_number,
                key: p.key,
                attributes: serde_json::Value::Object(p.attributes),
                unset: p.unset.iter().map(|f| f.to_string()).collect(),
            }),
            Err(r) => RowOutcome::Reject(Rejected {
                row: r.row_number,
                key: r.key.unwrap_or_default(),
                field: r.field.unwrap_or_default(),
                rule: r.rule.as_str().to_string(),
                message: r.message,
            }),
        };
        if tx.send(Ok(outcome)).await.is_err() {
            // The consumer stopped (Ctrl-C or an error of its own).
            return Ok(QueryDone {
                rows: n,
                seconds: started.elapsed().as_secs_f64(),
            });
        }
    }
    rows.finish().await.map_err(|e| e.to_string())?;
    Ok(QueryDone {
        rows: n,
        seconds: started.elapsed().as_secs_f64(),
    })
}
