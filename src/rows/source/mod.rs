//! PostgreSQL: connect, and stream the rows of a job's query.
//!
//! In: a `SourceConfig` (`config`) and a `RenderedQuery`. Out: the statement's columns and
//! its rows as PostgreSQL sent them (`Rows::next_batch`, decoded on any thread by `decode`)
//! or as `Vec<Cell>` (`Rows::next`), or a `SourceError` (`error`) that names the job, the
//! query file and line, the server's message and hint. Does I/O (network).
//!
//! Queries run inside a `READ ONLY` transaction with `SET LOCAL statement_timeout`, values
//! travel as bind parameters, rows are streamed (tokio-postgres reads the socket only as fast
//! as rows are consumed, so memory stays flat) and a `CancelHandle` cancels the query on the
//! server. Passwords never appear in messages: see `config::redact`.

pub mod config;
pub mod decode;
pub mod error;

use std::fmt;
use std::pin::Pin;
use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Object, Pool, RecyclingMethod, Runtime};
use futures::StreamExt;
use tokio_postgres::error::SqlState;
use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::{CancelToken, Row, RowStream};

use self::config::{Tls, scrub, tls_connector};
use self::decode::supported;
use self::error::{ErrorMapper, error_chain};
use crate::job::query::{BindValue, ParamType, RenderedQuery};

pub use self::config::{DATABASE_URL, DEFAULT_CONNECT_TIMEOUT, SourceConfig, SslMode, redact};
pub use self::decode::{Decoder, RowDecoder, Undecodable, decode_row, row_fingerprint};
pub use self::error::{SourceError, SqlFailure};
/// The values and columns of the source's rows (defined in `rows::cell`, which is pure).
pub use crate::rows::cell::{Cell, Column};

/// Asks a running query to stop: the server gets a cancel request and the query ends with
/// `SourceError::Cancelled`. Clones watch the same signal.
#[derive(Debug, Clone)]
pub struct Interrupt {
    rx: tokio::sync::watch::Receiver<bool>,
}

/// Fires an `Interrupt`.
#[derive(Debug)]
pub struct InterruptTrigger {
    tx: tokio::sync::watch::Sender<bool>,
}

impl InterruptTrigger {
    pub fn fire(&self) {
        let _ = self.tx.send(true);
    }
}

impl Interrupt {
    pub fn new() -> (InterruptTrigger, Interrupt) {
        let (tx, rx) = tokio::sync::watch::channel(false);
        (InterruptTrigger { tx }, Interrupt { rx })
    }

    /// Resolves once fired (never, if the trigger is dropped unfired).
    async fn fired(&mut self) {
        if self.rx.wait_for(|v| *v).await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

/// What a query run is part of, for messages and limits.
#[derive(Debug, Clone, Default)]
pub struct RunContext {
    /// Cancels the query on the server when fired (e.g. on Ctrl-C: `commands::connect`).
    pub interrupt: Option<Interrupt>,
    /// The job's name, when running for a job.
    pub job: Option<String>,
    /// `statement_timeout` for the query.
    pub timeout: Option<Duration>,
    /// Stop after this many rows (wraps the query in `select * from (…) q limit N`).
    pub limit: Option<u64>,
}

impl RunContext {
    fn describe(&self, q: &RenderedQuery) -> String {
        match &self.job {
            Some(j) => format!("job `{j}`, query {}", q.label),
            None => format!("query {}", q.label),
        }
    }
}

/// A connection pool to the source database.
#[derive(Clone)]
pub struct Source {
    pool: Pool,
    tls: Tls,
    config: SourceConfig,
}

impl fmt::Debug for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Source")
            .field("target", &self.config.target)
            .finish()
    }
}

const CONNECT_ATTEMPTS: u32 = 4;

impl Source {
    /// Builds the pool and opens one connection to check the server is there. Retries a
    /// refused connection a few times with backoff (a server that is starting up); any other
    /// failure is reported at once.
    pub async fn connect(config: SourceConfig) -> Result<Source, SourceError> {
        let tls = tls_connector(&config)?;
        let mgr_config = ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        };
        let manager = match &tls {
            Tls::None => Manager::from_config(config.pg.clone(), tokio_postgres::NoTls, mgr_config),
            Tls::Rustls(t) => Manager::from_config(config.pg.clone(), t.clone(), mgr_config),
        };
        let timeout = config
            .pg
            .get_connect_timeout()
            .copied()
            .unwrap_or(DEFAULT_CONNECT_TIMEOUT);
        let pool = Pool::builder(manager)
            .max_size(4)
            .runtime(Runtime::Tokio1)
            .create_timeout(Some(timeout + Duration::from_secs(1)))
            .wait_timeout(Some(timeout * 3))
            .build()
            .map_err(|e| SourceError::Config {
                message: format!("cannot set up the connection pool: {e}"),
                hint: String::new(),
            })?;
        let source = Source { pool, tls, config };
        drop(source.client().await?);
        Ok(source)
    }

    /// The connection string, password masked.
    pub fn target(&self) -> &str {
        &self.config.target
    }

    /// A pooled connection, retrying a refused connection with backoff.
    pub async fn client(&self) -> Result<Object, SourceError> {
        let mut delay = Duration::from_millis(200);
        let mut attempt = 1;
        loop {
            match self.pool.get().await {
                Ok(c) => return Ok(c),
                Err(e) => {
                    let refused = is_refused(&e);
                    if refused && attempt < CONNECT_ATTEMPTS {
                        tracing::debug!(attempt, "connection refused; retrying");
                        tokio::time::sleep(delay).await;
                        delay *= 2;
                        attempt += 1;
                        continue;
                    }
                    return Err(self.connect_error(&e, refused, attempt));
                }
            }
        }
    }

    fn connect_error(
        &self,
        e: &deadpool_postgres::PoolError,
        refused: bool,
        attempts: u32,
    ) -> SourceError {
        use deadpool_postgres::PoolError;
        let password = self.config.password.as_deref();
        let (message, hint) = match e {
            PoolError::Backend(pg) => {
                let code = pg.code().cloned();
                let msg = match pg.as_db_error() {
                    Some(db) => db.message().to_string(),
                    None => error_chain(pg),
                };
                let hint = if refused {
                    format!(
                        "nothing accepts connections there ({attempts} attempts); is PostgreSQL running, and are host and port right? \
                         Set DATABASE_URL or PGHOST/PGPORT"
                    )
                } else if code == Some(SqlState::INVALID_PASSWORD)
                    || code == Some(SqlState::INVALID_AUTHORIZATION_SPECIFICATION)
                {
                    "check the user name and password in DATABASE_URL (or PGUSER/PGPASSWORD)".into()
                } else if code == Some(SqlState::INVALID_CATALOG_NAME) {
                    "check the database name in DATABASE_URL (or PGDATABASE)".into()
                } else if msg.contains("TLS") || msg.contains("tls") || msg.contains("certificate")
                {
                    "check sslmode: `disable` for servers without TLS, `verify-full` needs a certificate trusted by the roots (sslrootcert)".into()
                } else {
                    String::new()
                };
                (msg, hint)
            }
            PoolError::Timeout(_) => (
                "timed out while connecting".to_string(),
                "raise connect_timeout in DATABASE_URL (seconds), or check the network path".into(),
            ),
            other => (other.to_string(), String::new()),
        };
        SourceError::Connect {
            target: self.config.target.clone(),
            message: scrub(&message, password),
            hint,
        }
    }

    /// The columns of a query, by running it with `LIMIT 0` in a read-only transaction.
    pub async fn describe(
        &self,
        q: &RenderedQuery,
        ctx: &RunContext,
    ) -> Result<Vec<Column>, SourceError> {
        let ctx = RunContext {
            limit: Some(0),
            ..ctx.clone()
        };
        let mut rows = self.stream(q, &ctx).await?;
        let columns = rows.columns().to_vec();
        while let Some(r) = rows.next().await {
            r?;
        }
        rows.finish().await?;
        Ok(columns)
    }

    /// Starts a query: begins a read-only transaction, sets the timeout, prepares and
    /// executes the statement. Rows arrive through `Rows::next`.
    pub async fn stream(&self, q: &RenderedQuery, ctx: &RunContext) -> Result<Rows, SourceError> {
        let client = self.client().await?;
        let context = ctx.describe(q);
        let (sql, prefix_chars) = match ctx.limit {
            Some(n) => {
                let prefix = "select * from (\n";
                (
                    format!(
                        "{prefix}{}\n) kdit_q limit {n}",
                        strip_trailing_semicolons(&q.sql)
                    ),
                    prefix.chars().count(),
                )
            }
            None => (q.sql.clone(), 0),
        };
        let mut setup = String::from("begin transaction read only");
        if let Some(t) = ctx.timeout {
            setup.push_str(&format!(
                "; set local statement_timeout = {}",
                t.as_millis().max(1)
            ));
        }
        let mapper = ErrorMapper {
            query: q.clone(),
            context: context.clone(),
            prefix_chars,
            timeout: ctx.timeout,
            job: ctx.job.is_some(),
        };
        if let Err(e) = client.batch_execute(&setup).await {
            return Err(mapper.map(&e));
        }
        let types: Vec<Type> = q.binds.iter().map(|b| bind_type(b.ty)).collect();
        let stmt = match client.prepare_typed(&sql, &types).await {
            Ok(s) => s,
            Err(e) => {
                let _ = client.batch_execute("rollback").await;
                return Err(mapper.map(&e));
            }
        };
        let columns: Vec<Column> = stmt
            .columns()
            .iter()
            .map(|c| Column {
                name: c.name().to_string(),
                type_name: c.type_().name().to_string(),
                supported: supported(c.type_()),
            })
            .collect();
        let unsupported: Vec<String> = columns
            .iter()
            .filter(|c| !c.supported)
            .map(|c| format!("`{}` ({})", c.name, c.type_name))
            .collect();
        if !unsupported.is_empty() {
            let _ = client.batch_execute("rollback").await;
            return Err(SourceError::Columns {
                context,
                message: format!(
                    "kdit cannot read columns of type {}",
                    unsupported.join(", ")
                ),
                hint: Some("cast them in the query, e.g. `col::text`".into()),
            });
        }
        let params: Vec<&(dyn ToSql + Sync)> =
            q.binds.iter().map(|b| bind_value(&b.value)).collect();
        let cancel = CancelHandle {
            token: client.cancel_token(),
            tls: self.tls.clone(),
        };
        // The server flushes nothing until the first rows are ready, so a slow query blocks
        // here: watch the interrupt meanwhile.
        let query = client.query_raw(&stmt, params);
        let mut interrupt = ctx.interrupt.clone();
        let mut cancel_sent = false;
        let result = match interrupt.as_mut() {
            Some(i) => {
                tokio::pin!(query);
                tokio::select! {
                    r = &mut query => r,
                    _ = i.fired() => {
                        cancel_sent = true;
                        let _ = cancel.cancel().await;
                        query.await
                    }
                }
            }
            None => query.await,
        };
        let stream = match result {
            Ok(s) => s,
            Err(e) => {
                let _ = client.batch_execute("rollback").await;
                return Err(mapper.map(&e));
            }
        };
        Ok(Rows {
            columns,
            decoder: None,
            stream: Box::pin(stream),
            client: Some(client),
            mapper,
            cancel,
            interrupt: if cancel_sent { None } else { interrupt },
            rows: 0,
            done: false,
        })
    }
}

fn strip_trailing_semicolons(sql: &str) -> &str {
    let mut s = sql.trim_end();
    while let Some(t) = s.strip_suffix(';') {
        s = t.trim_end();
    }
    s
}

fn is_refused(e: &deadpool_postgres::PoolError) -> bool {
    use std::error::Error as _;
    let deadpool_postgres::PoolError::Backend(pg) = e else {
        return false;
    };
    let mut src: Option<&(dyn std::error::Error + 'static)> = pg.source();
    while let Some(s) = src {
        if let Some(io) = s.downcast_ref::<std::io::Error>() {
            return io.kind() == std::io::ErrorKind::ConnectionRefused;
        }
        src = s.source();
    }
    false
}

/// Cancels a running query on the server (PostgreSQL's cancel request, on a new connection).
#[derive(Clone)]
pub struct CancelHandle {
    token: CancelToken,
    tls: Tls,
}

impl CancelHandle {
    pub async fn cancel(&self) -> Result<(), String> {
        let r = match &self.tls {
            Tls::None => self.token.cancel_query(tokio_postgres::NoTls).await,
            Tls::Rustls(t) => self.token.cancel_query(t.clone()).await,
        };
        r.map_err(|e| e.to_string())
    }
}

/// The rows of a running query, in order, one at a time.
pub struct Rows {
    columns: Vec<Column>,
    /// How `next` reads the columns, chosen at the first row.
    decoder: Option<RowDecoder>,
    stream: Pin<Box<RowStream>>,
    /// Held for the transaction's lifetime. `None` once finished.
    client: Option<Object>,
    mapper: ErrorMapper,
    cancel: CancelHandle,
    /// Watched until it fires once.
    interrupt: Option<Interrupt>,
    rows: u64,
    done: bool,
}

impl Rows {
    pub fn columns(&self) -> &[Column] {
        &self.columns
    }

    pub fn cancel_handle(&self) -> CancelHandle {
        self.cancel.clone()
    }

    /// Rows read so far.
    pub fn count(&self) -> u64 {
        self.rows
    }

    /// The next row's values, one per column.
    pub async fn next(&mut self) -> Option<Result<Vec<Cell>, SourceError>> {
        let row = match self.next_raw().await? {
            Ok(row) => row,
            Err(e) => return Some(Err(e)),
        };
        let decoder = self.decoder.get_or_insert_with(|| RowDecoder::of(&row));
        let mut cells = Vec::with_capacity(self.columns.len());
        match decoder.decode_into(&row, &self.columns, &mut cells) {
            Ok(()) => Some(Ok(cells)),
            Err(e) => {
                self.done = true;
                Some(Err(self.unreadable(self.rows, e)))
            }
        }
    }

    /// The error for a row `decode_row` could not read: it ends the query.
    pub fn unreadable(&self, row_number: u64, e: Undecodable) -> SourceError {
        SourceError::Columns {
            context: self.mapper.context.clone(),
            message: format!(
                "cannot read column `{}` of row {row_number}: {}",
                e.column, e.detail
            ),
            hint: None,
        }
    }

    /// The next row as PostgreSQL sent it, not yet decoded (`decode_row` decodes it, on any
    /// thread).
    pub async fn next_raw(&mut self) -> Option<Result<Row, SourceError>> {
        let mut one = Vec::with_capacity(1);
        loop {
            match self.next_batch(&mut one, 1).await {
                Err(e) => return Some(Err(e)),
                Ok(more) => {
                    if let Some(row) = one.pop() {
                        return Some(Ok(row));
                    }
                    if !more {
                        return None;
                    }
                    // The interrupt fired: read on, to the server's "canceled" error.
                }
            }
        }
    }

    /// Up to `max` more rows into `out`, as PostgreSQL sent them (`next_raw` a batch at a time:
    /// the interrupt is watched once for the batch, not once a row). `Ok(true)` while more
    /// rows may come; an error ends the rows, after the rows before it.
    pub async fn next_batch(
        &mut self,
        out: &mut Vec<Row>,
        max: usize,
    ) -> Result<bool, SourceError> {
        if self.done {
            return Ok(false);
        }
        let before = out.len();
        let Rows {
            stream,
            interrupt,
            cancel,
            ..
        } = self;
        // Some(result) when the rows ended (or failed); None when the batch is full.
        let read = async {
            while out.len() < max {
                match stream.next().await {
                    Some(Ok(row)) => out.push(row),
                    Some(Err(e)) => return Some(Err(e)),
                    None => return Some(Ok(())),
                }
            }
            None
        };
        let ended = match interrupt.as_mut() {
            Some(i) => {
                tokio::select! {
                    ended = read => ended,
                    _ = i.fired() => {
                        // Rows already read stay in `out`; the next call reads on, unwatched,
                        // to the server's "canceled" error.
                        *interrupt = None;
                        let _ = cancel.cancel().await;
                        None
                    }
                }
            }
            None => read.await,
        };
        self.rows += (out.len() - before) as u64;
        match ended {
            None => Ok(true),
            Some(Ok(())) => {
                self.done = true;
                Ok(false)
            }
            Some(Err(e)) => {
                self.done = true;
                Err(self.mapper.map(&e))
            }
        }
    }

    /// Ends the read-only transaction and returns the connection to the pool.
    pub async fn finish(mut self) -> Result<u64, SourceError> {
        if let Some(client) = self.client.take() {
            client
                .batch_execute("commit")
                .await
                .map_err(|e| self.mapper.map(&e))?;
        }
        Ok(self.rows)
    }
}

impl Drop for Rows {
    fn drop(&mut self) {
        // Dropped mid-query: the connection is inside a transaction with a statement
        // running, so it must not go back to the pool. Taking it closes it.
        if let Some(client) = self.client.take() {
            drop(Object::take(client));
        }
    }
}

/// The PostgreSQL type a parameter is bound as. Numeric and interval travel as text and are
/// cast in SQL (`$1::interval`), so humane durations and exact decimals need no float.
fn bind_type(ty: ParamType) -> Type {
    match ty {
        ParamType::Text | ParamType::Numeric | ParamType::Interval => Type::TEXT,
        ParamType::Int => Type::INT4,
        ParamType::BigInt => Type::INT8,
        ParamType::Bool => Type::BOOL,
        ParamType::Date => Type::DATE,
        ParamType::Timestamptz => Type::TIMESTAMPTZ,
        ParamType::TextArray => Type::TEXT_ARRAY,
        ParamType::IntArray => Type::INT4_ARRAY,
    }
}

fn bind_value(v: &BindValue) -> &(dyn ToSql + Sync) {
    match v {
        BindValue::Text(s) | BindValue::Numeric(s) | BindValue::Interval(s) => s,
        BindValue::Int(i) => i,
        BindValue::BigInt(i) => i,
        BindValue::Bool(b) => b,
        BindValue::Date(d) => d,
        BindValue::Timestamptz(t) => t,
        BindValue::TextArray(a) => a,
        BindValue::IntArray(a) => a,
    }
}
