//! The transform threads: long-lived, at a lower priority than the thread reading rows,
//! each taking a batch of rows at a time and making of every row what the stream needs.
//!
//! In: batches of rows as PostgreSQL sent them (`tokio_postgres::Row`), numbered by their
//! first row. Out: per batch, what became of each row (`BuiltRow`: fingerprinted and found in
//! the state, or decoded and transformed, or unreadable), sent back on a oneshot channel.
//! I/O: none (the rows are already read); starts threads and lowers their priority.

use std::sync::Arc;

use sha2::Sha256;
use tokio::sync::oneshot;
use tokio_postgres::Row;

use crate::digest::Fingerprint;
use crate::rows::cell::{Cell, Column};
use crate::rows::source::decode::{RowDecoder, Undecodable, row_fingerprint};
use crate::rows::transform::{ProfileRow, Reject, RowBuilder};
use crate::state::snapshot::{KnownRows, Recognised};

/// What a transform thread made of a row.
pub(super) enum BuiltRow {
    Transformed(Result<ProfileRow, Reject>),
    /// Known to the state; its row is built after all if the key turns out to be a duplicate.
    Known(Recognised),
    Unreadable(Undecodable),
}

/// What every transform thread needs, shared.
pub(super) struct BatchBuilder {
    pub(super) builder: Arc<RowBuilder>,
    pub(super) columns: Vec<Column>,
    pub(super) decoder: RowDecoder,
    /// Fingerprints rows (`ProfileStream::fingerprint_rows`), and the rows the state knows.
    pub(super) fingerprint: Option<Sha256>,
    pub(super) known: Option<Arc<KnownRows>>,
}

impl BatchBuilder {
    /// What became of a batch of rows, the first numbered `first`. Fingerprints come first,
    /// so the state's lookups of the whole batch overlap (`KnownRows::get_all`).
    fn build_batch(&self, first: u64, rows: &[Row]) -> Vec<BuiltRow> {
        let mut cells = Vec::new();
        let Some(f) = &self.fingerprint else {
            return rows
                .iter()
                .enumerate()
                .map(|(i, row)| self.build(first + i as u64, row, None, &mut cells))
                .collect();
        };
        let fps: Vec<Fingerprint> = rows.iter().map(|row| row_fingerprint(f, row)).collect();
        let known = match self.known.as_deref() {
            Some(known) => known.get_all(&fps),
            None => vec![None; fps.len()],
        };
        rows.iter()
            .zip(fps)
            .zip(known)
            .enumerate()
            .map(|(i, ((row, fp), known))| match known {
                Some(k) => BuiltRow::Known(k),
                None => self.build(first + i as u64, row, Some(fp), &mut cells),
            })
            .collect()
    }

    /// `cells` is scratch space, reused from row to row.
    fn build(
        &self,
        row_number: u64,
        row: &Row,
        source: Option<Fingerprint>,
        cells: &mut Vec<Cell>,
    ) -> BuiltRow {
        match self.decoder.decode_into(row, &self.columns, cells) {
            Ok(()) => {
                BuiltRow::Transformed(self.builder.build_in(row_number, cells).map(|mut p| {
                    p.source = source;
                    p
                }))
            }
            Err(e) => BuiltRow::Unreadable(e),
        }
    }
}

/// A transformed batch: what became of each row, and the rows themselves, handed back so they
/// are dropped on the thread that read them (their buffers' reference counts stay on one core).
pub(super) type BuiltBatch = (Vec<BuiltRow>, Vec<Row>);

/// A batch for the threads: its first row's number, its rows, where the result goes.
type BatchTask = (
    u64,
    Vec<Row>,
    oneshot::Sender<std::thread::Result<BuiltBatch>>,
);

/// Threads that transform batches of rows; they end when the pool is dropped.
pub(super) struct Pool {
    tasks: std::sync::mpsc::Sender<BatchTask>,
}

impl Pool {
    pub(super) fn start(threads: usize, work: Arc<BatchBuilder>) -> Pool {
        let (tasks, queue) = std::sync::mpsc::channel::<BatchTask>();
        let queue = Arc::new(std::sync::Mutex::new(queue));
        for _ in 0..threads.max(1) {
            let queue = queue.clone();
            let work = work.clone();
            let spawned = std::thread::Builder::new()
                .name("kdit-transform".into())
                .spawn(move || {
                    lower_priority();
                    loop {
                        // The lock is held only while taking a batch, never while working on it.
                        let next = match queue.lock() {
                            Ok(q) => q.recv(),
                            Err(_) => return,
                        };
                        let Ok((first, rows, done)) = next else {
                            return;
                        };
                        let built = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                            (work.build_batch(first, &rows), rows)
                        }));
                        // The stream may have stopped waiting (dropped, or a row failed before).
                        let _ = done.send(built);
                    }
                });
            if let Err(e) = spawned {
                // With no thread at all, `next` reports the batch as unanswered.
                tracing::warn!("cannot start a transform thread: {e}");
            }
        }
        Pool { tasks }
    }

    pub(super) fn submit(
        &self,
        first: u64,
        rows: Vec<Row>,
    ) -> oneshot::Receiver<std::thread::Result<BuiltBatch>> {
        let (done, result) = oneshot::channel();
        // The threads live as long as the pool: sending cannot fail while it exists.
        let _ = self.tasks.send((first, rows, done));
        result
    }
}

/// Transform threads yield to the thread reading rows (and to PostgreSQL, when it runs on
/// this machine): reading is the one step that cannot be spread over cores, and batches
/// already read keep the transform threads busy whenever a core is free.
fn lower_priority() {
    #[cfg(target_os = "linux")]
    // SAFETY: plain system calls on the calling thread; no memory is shared with them.
    unsafe {
        let tid = libc::gettid();
        let now = libc::getpriority(libc::PRIO_PROCESS, tid as libc::id_t);
        libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, (now + 5).min(19));
    }
}
