//! What can go wrong reading from PostgreSQL, said about the user's query file.
//!
//! In: driver and server errors (`tokio_postgres::Error`) and the query they came from. Out:
//! a `SourceError` (typed variants, each with its hint; the server's errors as a
//! `SqlFailure` located at the query file's line, with an excerpt). Pure: no I/O.

use std::time::Duration;

use tokio_postgres::error::{ErrorPosition, SqlState};

use crate::job::query::RenderedQuery;

/// Everything that can go wrong reading from PostgreSQL. `Display` gives the message and,
/// on following lines, `hint: …`.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("{message}{}", fmt_hint(.hint))]
    Config { message: String, hint: String },
    #[error("cannot connect to PostgreSQL at {target}: {message}{}", fmt_hint(.hint))]
    Connect {
        target: String,
        message: String,
        hint: String,
    },
    #[error("queries run read-only: {context} tried to write: {message}{}", fmt_hint(&Some("a job's query may only read; do writes in a migration or a scheduled SQL job, not in kdit".to_string())))]
    ReadOnly { context: String, message: String },
    #[error("{context} timed out after {timeout} (statement_timeout){}", fmt_hint(&Some(format!("raise {setting} (now `{timeout}`), or make the query faster"))))]
    Timeout {
        context: String,
        timeout: String,
        /// Where the timeout is set: `query.timeout` in the job file, or `--timeout`.
        setting: String,
    },
    #[error("{context} was cancelled")]
    Cancelled { context: String },
    #[error("{0}")]
    Sql(Box<SqlFailure>),
    #[error("{context}: {message}{}", fmt_hint(.hint))]
    Columns {
        context: String,
        message: String,
        hint: Option<String>,
    },
    #[error("{context}: lost the connection to PostgreSQL: {message}")]
    Connection { context: String, message: String },
}

/// An error the server reported for the query, located in the query file.
#[derive(Debug, thiserror::Error)]
#[error("{context}: {location}{message}{}{}", .excerpt.as_deref().map(|e| format!("\n{e}")).unwrap_or_default(), fmt_hint(.hint))]
pub struct SqlFailure {
    pub context: String,
    /// `file.sql:LINE: ` when the server gave a position.
    pub location: String,
    /// Source line in the query file, when known.
    pub line: Option<usize>,
    pub message: String,
    pub sqlstate: String,
    pub hint: Option<String>,
    pub excerpt: Option<String>,
}

fn fmt_hint(h: &impl HintText) -> String {
    match h.hint_text() {
        Some(h) if !h.is_empty() => format!("\nhint: {h}"),
        _ => String::new(),
    }
}

trait HintText {
    fn hint_text(&self) -> Option<&str>;
}
impl HintText for String {
    fn hint_text(&self) -> Option<&str> {
        Some(self)
    }
}
impl HintText for Option<String> {
    fn hint_text(&self) -> Option<&str> {
        self.as_deref()
    }
}

impl SourceError {
    /// The line of the query file the error points at, if any.
    pub fn line(&self) -> Option<usize> {
        match self {
            SourceError::Sql(f) => f.line,
            _ => None,
        }
    }
}

/// Turns server errors into messages about the user's query file.
#[derive(Debug, Clone)]
pub(super) struct ErrorMapper {
    pub(super) query: RenderedQuery,
    pub(super) context: String,
    /// Characters added before the query's text (the `LIMIT` wrapper).
    pub(super) prefix_chars: usize,
    pub(super) timeout: Option<Duration>,
    /// Running for a job (rather than `kdit query run`).
    pub(super) job: bool,
}

impl ErrorMapper {
    pub(super) fn map(&self, e: &tokio_postgres::Error) -> SourceError {
        let context = self.context.clone();
        let Some(db) = e.as_db_error() else {
            if e.is_closed() {
                return SourceError::Connection {
                    context,
                    message: error_chain(e),
                };
            }
            return SourceError::Connection {
                context,
                message: error_chain(e),
            };
        };
        let code = db.code();
        if *code == SqlState::READ_ONLY_SQL_TRANSACTION {
            return SourceError::ReadOnly {
                context,
                message: db.message().to_string(),
            };
        }
        if *code == SqlState::QUERY_CANCELED {
            if db.message().contains("statement timeout") {
                return SourceError::Timeout {
                    setting: if self.job {
                        "`query.timeout` in the job file".into()
                    } else {
                        "`--timeout`".into()
                    },
                    context,
                    timeout: self
                        .timeout
                        .map(|t| humantime::format_duration(t).to_string())
                        .unwrap_or_else(|| "the server's statement_timeout".into()),
                };
            }
            return SourceError::Cancelled { context };
        }
        let (location, line, excerpt) = match db.position() {
            Some(ErrorPosition::Original(pos)) => self.locate(*pos as usize),
            _ => (String::new(), None, None),
        };
        let mut hint = db.hint().map(str::to_string);
        if db
            .message()
            .contains("multiple commands into a prepared statement")
        {
            hint = Some("a job's query is one statement: remove the `;` between statements".into());
        }
        if let Some(d) = db.detail() {
            hint = Some(match hint {
                Some(h) => format!("{h} ({d})"),
                None => d.to_string(),
            });
        }
        SourceError::Sql(Box::new(SqlFailure {
            context,
            location,
            line,
            message: db.message().to_string(),
            sqlstate: code.code().to_string(),
            hint,
            excerpt,
        }))
    }

    /// The query file's line for a 1-based character position in the SQL sent.
    fn locate(&self, pos: usize) -> (String, Option<usize>, Option<String>) {
        let Some(idx) = pos.checked_sub(1 + self.prefix_chars) else {
            return (String::new(), None, None);
        };
        let sql = &self.query.sql;
        // Past the end (end of input, or the LIMIT wrapper's tail): point just after the
        // query's last visible character.
        let count = sql.chars().count();
        let idx = if idx >= count {
            sql.trim_end().chars().count().saturating_sub(1)
        } else {
            idx
        };
        let mut line = 1;
        let mut col: usize = 1;
        let mut found = false;
        for (i, ch) in sql.chars().enumerate() {
            if i == idx {
                found = true;
                break;
            }
            if ch == '\n' {
                line += 1;
                col = 1;
            } else {
                col += 1;
            }
        }
        if !found {
            return (String::new(), None, None);
        }
        let text = sql.lines().nth(line - 1).unwrap_or_default();
        let caret = format!("{}^", " ".repeat(col.saturating_sub(1)));
        match self.query.source_line(line) {
            Some(src) => (
                format!("{}:{src}: ", self.query.label),
                Some(src),
                Some(format!("  {src:>4} | {text}\n       | {caret}")),
            ),
            None => (
                format!("line {line} of the rendered query: "),
                None,
                Some(format!("  {line:>4} | {text}\n       | {caret}")),
            ),
        }
    }
}

/// An error's message followed by its sources', each left out when the text says it already.
pub(super) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(inner) = src {
        let t = inner.to_string();
        if !s.contains(&t) {
            s.push_str(": ");
            s.push_str(&t);
        }
        src = inner.source();
    }
    s
}
