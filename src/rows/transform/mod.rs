//! Rows → Klaviyo profile payloads, or precise rejections.
//!
//! In: a job's `Mapping` (compiled once, by `job::profiles`, with the project's defaults);
//! the query's columns (bound by `mapping` once, before any row is read: a mapped column the
//! query lacks is an error then); then each row's `Cell`s. Out: per row a `ProfileRow` (the
//! key, the attributes payload with nested `location` and `properties`, the fields to unset)
//! or a `Reject` (`reject`) naming the row, field, rule and a masked value. Pure: no I/O.
//!
//! In this file: `Transformer` (one run: builds rows and rejects duplicate keys), its
//! thread-safe half `RowBuilder` (one row: each field's value by `value`, written by
//! `payload`), and the `max_invalid` guard. Email and phone checks are in `email`, the sets
//! of keys seen in `keyset`.
//!
//! Validation mirrors what Klaviyo would refuse, so nothing is sent that would fail there:
//! email syntax and ≤ 100 characters, E.164 phone numbers, a non-empty key, property names,
//! numbers Klaviyo can hold, and ≤ 100 KB per profile. Duplicate keys within a run: the
//! **first** row with a key wins and later rows with the same key are rejected
//! (`duplicate_key`). First, not last, because rows are streamed: a winner already sent
//! downstream cannot be taken back, and keeping every row until the end would cost memory
//! proportional to the result. Keys are remembered as 64-bit hashes (8–9 bytes per row), or
//! as one bit each for keys the state holds.
//!
//! NULL and empty: a NULL column (after `default`) or text that is empty after the transforms
//! is *no value*: left out under `on_null: keep`, listed in `unset` under `on_null: unset`,
//! and a missing key (`key_missing`) for the key field.

pub mod email;
pub mod keyset;
pub mod mapping;
pub mod payload;
pub mod reject;
pub mod value;

use std::fmt;
use std::sync::Arc;

use serde::Serialize;
use serde_json::value::RawValue;
use serde_json::{Map, Value};

use self::keyset::{KeySet, StateKeyBits};
use self::mapping::{BoundField, BoundOrigin};
use self::payload::Payload;
use self::reject::{BoxedFailure, FieldFailure, fail};
use self::value::field_value;
use crate::job::attributes::FieldPath;
use crate::job::spec::{NullPolicy, Threshold};
use crate::rows::cell::{Cell, Column};

pub use self::email::{MAX_EMAIL, normalise_email, to_e164, valid_email};
pub use self::mapping::ColumnProblem;
pub use self::reject::{Reject, Rule, mask, mask_email, mask_phone};
pub use self::value::{MAX_PROPERTY_DEPTH, cell_to_json_lossy, decimal_to_json};
pub use crate::job::profiles::{Mapping, MappingError};

/// Largest serialised profile Klaviyo accepts (bulk import: 100 KB per profile).
pub const MAX_PROFILE_BYTES: usize = 100 * 1024;

/// A row turned into a profile.
#[derive(Debug, Clone, Serialize)]
pub struct ProfileRow {
    /// 1-based position of the row in the query's result.
    pub row_number: u64,
    /// The value of the job's key field (normalised, unmasked).
    pub key: String,
    /// The profile's `attributes` (standard attributes, `location`, `properties`), serialised
    /// once, on the thread that built them, in the order the job file maps its fields.
    pub attributes: Box<RawValue>,
    /// Fields that were NULL under `on_null: unset`: to be cleared in Klaviyo.
    #[serde(skip_serializing_if = "Vec::is_empty", serialize_with = "paths")]
    pub unset: Vec<FieldPath>,
    /// The fingerprint of the row (`source::row_fingerprint`), when the stream made one.
    #[serde(skip)]
    pub source: Option<crate::digest::Fingerprint>,
    /// `digest::key_hash` of `key`, worked out on the thread that built the row.
    #[serde(skip)]
    pub key_hash: u64,
}

/// One row's fate, as the stream hands it to the diff (`plan::diff::Differ` reads it as is).
#[derive(Debug, Clone, PartialEq)]
pub enum StreamedRow {
    Profile(ProfileRow),
    Rejected(Reject),
    /// A row whose fingerprint the state knows (`ProfileStream::skip_known`): its profile is
    /// unchanged and already in every list, so it was not transformed. `index` is its state
    /// entry's (`Snapshot::see_index`), `mix` its share of the rows digest (`digest::row_mix`).
    Known {
        row_number: u64,
        index: u32,
        mix: u128,
    },
}

impl PartialEq for ProfileRow {
    fn eq(&self, other: &ProfileRow) -> bool {
        self.row_number == other.row_number
            && self.key == other.key
            && self.attributes.get() == other.attributes.get()
            && self.unset == other.unset
            && self.source == other.source
    }
}

impl ProfileRow {
    /// The attributes as a JSON object (for previews and tests; the payload is `attributes`).
    pub fn attribute_map(&self) -> Map<String, Value> {
        serde_json::from_str(self.attributes.get()).unwrap_or_default()
    }
}

fn paths<S: serde::Serializer>(p: &[FieldPath], s: S) -> Result<S::Ok, S::Error> {
    s.collect_seq(p.iter().map(|p| p.to_string()))
}

impl Mapping {
    /// Checks the query's columns against the mapping, before any row is read. (The checks
    /// are `Mapping::bind_columns`, in `mapping`; this half makes the `Transformer`, so
    /// `mapping` needs nothing from this file.)
    pub fn bind(self: &Arc<Self>, columns: &[Column]) -> Result<Transformer, Vec<ColumnProblem>> {
        Ok(Transformer {
            builder: Arc::new(RowBuilder {
                mapping: self.clone(),
                fields: self.bind_columns(columns)?,
            }),
            seen: KeySet::default(),
            state_keys: StateKeyBits::default(),
        })
    }
}

/// Turns rows into profiles for one run; remembers keys to reject duplicates.
pub struct Transformer {
    builder: Arc<RowBuilder>,
    /// Key hashes (`digest::key_hash`, already well mixed: no second hashing).
    seen: KeySet,
    /// Keys the state holds, by their entry's index (see `expect_state_keys`).
    state_keys: StateKeyBits,
}

impl Transformer {
    /// Turns one row into a profile, or says why it cannot be sent.
    pub fn row(&mut self, row_number: u64, cells: Vec<Cell>) -> Result<ProfileRow, Reject> {
        let built = self.build(row_number, cells);
        self.dedup(built)
    }

    /// Turns a batch of consecutive rows (the first is `first_row_number`) into outcomes, in
    /// order, spreading the work over up to `threads` scoped threads (`par_map`). Duplicate
    /// keys are resolved afterwards in row order, so the result is the same as calling `row`
    /// for each. Only the `row_transform` fuzz target calls it; runs batch rows through the
    /// stream's long-lived pool (`rows::pool`) instead.
    pub fn rows(
        &mut self,
        first_row_number: u64,
        batch: Vec<Vec<Cell>>,
        threads: usize,
    ) -> Vec<Result<ProfileRow, Reject>> {
        let me = &*self;
        let built = par_map(batch, threads, |i, cells| {
            me.build(first_row_number + i as u64, cells)
        });
        built.into_iter().map(|b| self.dedup(b)).collect()
    }

    /// Rejects a profile whose key an earlier row had (the first row wins).
    pub fn dedup(&mut self, built: Result<ProfileRow, Reject>) -> Result<ProfileRow, Reject> {
        let p = built?;
        if !self.seen.insert(p.key_hash) {
            return Err(self.duplicate(&p));
        }
        Ok(p)
    }

    /// Keys the state holds are checked for duplicates by one bit each, by their entry's
    /// index, rather than in the set of key hashes: a state of `keys` entries.
    pub fn expect_state_keys(&mut self, keys: usize) {
        self.state_keys = StateKeyBits::new(keys);
    }

    /// Whether the key of state entry `index` is new to this run; remembers it.
    pub fn first_sight_of_state_key(&mut self, index: u32) -> bool {
        self.state_keys.first_sight(index)
    }

    /// `dedup`, for a profile whose key the state holds at entry `state_index` (checked by its
    /// bit; `None`: a key the state lacks, checked in the set of key hashes).
    pub fn dedup_state_key(
        &mut self,
        built: Result<ProfileRow, Reject>,
        state_index: Option<u32>,
    ) -> Result<ProfileRow, Reject> {
        match (built, state_index) {
            (Ok(p), Some(i)) if !self.first_sight_of_state_key(i) => Err(self.duplicate(&p)),
            (Ok(p), Some(_)) => Ok(p),
            (built, _) => self.dedup(built),
        }
    }

    /// The reject of a profile whose key an earlier row had.
    pub fn duplicate(&self, p: &ProfileRow) -> Reject {
        let key_field = self.builder.mapping.key.field();
        self.builder.reject(
            p.row_number,
            Some(&p.key),
            Some(key_field),
            *fail(
                Rule::DuplicateKey,
                format!("an earlier row has the same {key_field}; the first row wins"),
                None,
            ),
        )
    }

    /// Everything but the duplicate check (see `RowBuilder::build`).
    pub fn build(&self, row_number: u64, cells: Vec<Cell>) -> Result<ProfileRow, Reject> {
        self.builder.build(row_number, cells)
    }

    /// The half of the transformer that needs no mutable state, for threads of their own.
    pub fn builder(&self) -> Arc<RowBuilder> {
        self.builder.clone()
    }

    /// Says that a key (by `digest::key_hash`) is about to go through `dedup`, so its place in
    /// the set is fetched from memory meanwhile (a hint).
    pub fn prefetch(&self, key_hash: u64) {
        self.seen.prefetch(key_hash);
    }
}

/// A mapping bound to a query's columns: turns one row into a profile or a reject, on any
/// thread. The duplicate check, which needs every key seen so far, is `Transformer::dedup`.
pub struct RowBuilder {
    mapping: Arc<Mapping>,
    /// Index into `mapping.fields`, where the field's value comes from in a row, its default.
    fields: Vec<BoundField>,
}

impl RowBuilder {
    /// Everything but the duplicate check: needs no mutable state, so it runs on any thread.
    pub fn build(&self, row_number: u64, mut cells: Vec<Cell>) -> Result<ProfileRow, Reject> {
        self.build_in(row_number, &mut cells)
    }

    /// Which of the query's `columns` some field reads: `build_in` never looks at the others.
    pub fn reads(&self, columns: usize) -> Vec<bool> {
        let mut read = vec![false; columns];
        let mut mark = |i: usize| {
            if let Some(r) = read.get_mut(i) {
                *r = true;
            }
        };
        for (_, origin, _) in &self.fields {
            match origin {
                BoundOrigin::Column(i, _) => mark(*i),
                BoundOrigin::Template(_, cols, simple) => {
                    cols.iter().for_each(|(_, i)| mark(*i));
                    if let Some((_, at)) = simple {
                        at.iter().for_each(|i| mark(*i));
                    }
                }
                BoundOrigin::Constant(_) => {}
            }
        }
        read
    }

    /// `build` from cells the caller keeps (values may be taken out of them).
    pub fn build_in(&self, row_number: u64, cells: &mut [Cell]) -> Result<ProfileRow, Reject> {
        thread_local! {
            /// Where a row's values and then its payload are written, reused from row to row.
            static SCRATCH: std::cell::RefCell<(Vec<u8>, Vec<u8>)> =
                const { std::cell::RefCell::new((Vec::new(), Vec::new())) };
        }
        SCRATCH.with(|scratch| match scratch.try_borrow_mut() {
            Ok(mut scratch) => {
                let (leaves, out) = &mut *scratch;
                let built = self.build_with(row_number, cells, leaves, out);
                if leaves.capacity() > 1 << 20 || out.capacity() > 1 << 20 {
                    // An oversized profile: do not keep its buffers for the rows after it.
                    *scratch = (Vec::new(), Vec::new());
                }
                built
            }
            Err(_) => self.build_with(row_number, cells, &mut Vec::new(), &mut Vec::new()),
        })
    }

    fn build_with(
        &self,
        row_number: u64,
        cells: &mut [Cell],
        leaves: &mut Vec<u8>,
        out: &mut Vec<u8>,
    ) -> Result<ProfileRow, Reject> {
        let mut attributes = Payload::new(self.fields.len(), leaves);
        let mut unset = Vec::new();
        let mut key: Option<String> = None;
        let key_field = self.mapping.key.field();
        let mut pending: Option<(String, BoxedFailure)> = None;
        for (i, origin, default) in &self.fields {
            let f = &self.mapping.fields[*i];
            let mut text = None;
            match field_value(
                &self.mapping.env,
                f,
                origin,
                default.as_ref(),
                cells,
                &mut attributes,
                &mut text,
            ) {
                Ok(true) => {
                    // Written into the payload already: the text itself can be the key, or
                    // go back to the cell it was taken from, for the next row's text.
                    match (text, origin) {
                        (text, _) if f.key == key_field => key = text,
                        (Some(s), BoundOrigin::Column(c, true)) if s.capacity() <= 4096 => {
                            if let Some(cell) = cells.get_mut(*c) {
                                *cell = Cell::Text(s);
                            }
                        }
                        _ => {}
                    }
                }
                Ok(false) => {
                    if f.on_null == NullPolicy::Unset && f.key != key_field {
                        unset.push(f.path.clone());
                    }
                }
                Err(e) => {
                    if f.key == key_field {
                        // The key itself is bad: report that, unmasked key unknown.
                        return Err(self.reject(row_number, None, Some(&f.key), *e));
                    }
                    if pending.is_none() {
                        pending = Some((f.key.clone(), e));
                    }
                }
            }
        }
        let Some(key) = key.filter(|k| !k.trim().is_empty()) else {
            return Err(Reject {
                row_number,
                key: None,
                field: Some(key_field.to_string()),
                rule: Rule::KeyMissing,
                message: format!("the key `{key_field}` is empty"),
                value: None,
            });
        };
        if let Some((field, e)) = pending {
            return Err(self.reject(row_number, Some(&key), Some(&field), *e));
        }
        let attributes = match attributes.finish(out) {
            Ok(a) => a,
            Err(e) => {
                return Err(self.reject(
                    row_number,
                    Some(&key),
                    None,
                    *fail(Rule::TypeCast, format!("cannot be sent as JSON: {e}"), None),
                ));
            }
        };
        let size = attributes.get().len();
        if size > MAX_PROFILE_BYTES {
            return Err(self.reject(
                row_number,
                Some(&key),
                None,
                *fail(
                    Rule::PayloadTooLarge,
                    format!(
                        "the profile is {} KB; Klaviyo accepts at most {} KB",
                        size.div_ceil(1024),
                        MAX_PROFILE_BYTES / 1024
                    ),
                    None,
                ),
            ));
        }
        Ok(ProfileRow {
            row_number,
            key_hash: crate::digest::key_hash(&key),
            key,
            attributes,
            unset,
            source: None,
        })
    }

    fn reject(
        &self,
        row_number: u64,
        key: Option<&str>,
        field: Option<&str>,
        e: FieldFailure,
    ) -> Reject {
        let key_field = self.mapping.key.field();
        Reject {
            row_number,
            key: key.map(|k| mask(key_field, k)),
            field: field.map(str::to_string),
            rule: e.rule,
            message: e.message,
            value: e.value.map(|v| mask(field.unwrap_or(""), &v)),
        }
    }
}

/// `f(index, item)` for every item, in order, on up to `threads` scoped threads (this one
/// included). Only `Transformer::rows` uses it (so only the fuzz target); the stream's
/// threads are `rows::pool`.
pub fn par_map<T: Send, U: Send>(
    items: Vec<T>,
    threads: usize,
    f: impl Fn(usize, T) -> U + Sync,
) -> Vec<U> {
    let threads = threads.clamp(1, 16);
    if threads == 1 || items.len() < 64 {
        return items
            .into_iter()
            .enumerate()
            .map(|(i, t)| f(i, t))
            .collect();
    }
    let chunk = items.len().div_ceil(threads);
    let mut chunks: Vec<(usize, Vec<T>)> = Vec::with_capacity(threads);
    let mut iter = items.into_iter();
    let mut start = 0;
    loop {
        let part: Vec<T> = iter.by_ref().take(chunk).collect();
        if part.is_empty() {
            break;
        }
        let n = part.len();
        chunks.push((start, part));
        start += n;
    }
    let f = &f;
    let (first_start, first_part) = chunks.remove(0);
    std::thread::scope(|scope| {
        let handles: Vec<_> = chunks
            .into_iter()
            .map(|(start, part)| {
                scope.spawn(move || {
                    part.into_iter()
                        .enumerate()
                        .map(|(i, t)| f(start + i, t))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        // The first chunk runs on this thread meanwhile.
        let mut out: Vec<U> = first_part
            .into_iter()
            .enumerate()
            .map(|(i, t)| f(first_start + i, t))
            .collect();
        for h in handles {
            match h.join() {
                Ok(part) => out.extend(part),
                Err(panic) => std::panic::resume_unwind(panic),
            }
        }
        out
    })
}

/// The `max_invalid` guard: may a run with `rejected` of `rows` rows go on?
#[derive(Debug, Clone, PartialEq)]
pub struct InvalidGuard {
    pub rejected: u64,
    pub rows: u64,
    /// The most rejects allowed, when the job sets `guards.max_invalid`.
    pub limit: Option<u64>,
    pub threshold: Option<Threshold>,
}

impl InvalidGuard {
    pub fn passed(&self) -> bool {
        self.limit.is_none_or(|l| self.rejected <= l)
    }
}

impl fmt::Display for InvalidGuard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.threshold, self.limit) {
            (Some(t), Some(l)) => {
                let mark = if self.passed() { '✓' } else { '✗' };
                write!(
                    f,
                    "invalid {} ≤ {t} (limit {l} of {} rows) {mark}",
                    self.rejected, self.rows
                )
            }
            _ => write!(
                f,
                "invalid {} of {} rows (no max_invalid guard)",
                self.rejected, self.rows
            ),
        }
    }
}

/// Evaluates `guards.max_invalid` for `rejected` rows out of `rows` read.
pub fn check_invalid(max_invalid: Option<Threshold>, rejected: u64, rows: u64) -> InvalidGuard {
    InvalidGuard {
        rejected,
        rows,
        limit: max_invalid.map(|t| t.limit(rows)),
        threshold: max_invalid,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guards() {
        let g = check_invalid(Some(Threshold::Percent(1.0)), 12, 1000);
        assert!(!g.passed());
        assert_eq!(g.limit, Some(10));
        assert!(check_invalid(Some(Threshold::Count(12)), 12, 1000).passed());
        assert!(check_invalid(None, 500, 1000).passed());
    }
}
