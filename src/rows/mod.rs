//! A job's rows as profiles, for `plan`, `run`, `preview` and `check`: PostgreSQL rows in,
//! one `ProfileRow` or `Reject` per row out, in query order.
//!
//! In pipeline order: `cell` (the value type a row is made of: pure), `source` (PostgreSQL:
//! connect, run the query, decode its rows: network I/O), `transform` (cells → profile
//! payloads or rejects: pure, imports neither `source` nor the state), `pool` (the threads
//! that decode and transform batches of rows) and `stream` (`prepare` from the compiled
//! `Job`, then a `ProfileStream` joining the source, the pool and the transform; reads no
//! file: the job loader read the query).

pub mod cell;
mod pool;
pub mod source;
pub mod stream;
#[cfg(test)]
mod testing;
pub mod transform;

pub use stream::{JobQuery, ProfileStream, RowTotals, RowsError, prepare};
pub use transform::StreamedRow;
