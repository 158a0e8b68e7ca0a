//! The state in memory for the diff: each key's confirmed payload hash and list memberships,
//! and the fingerprints of the rows that made them, indexed for lookups by key and by row.
//!
//! In: entries and fingerprints as the store reads them (`State::snapshot`). Out: a sealed
//! `Snapshot`, and the `KnownRows` the row stage recognises unchanged rows by. Pure: no I/O
//! (the store fills it from PostgreSQL).

use std::sync::Arc;

use crate::digest::{Fingerprint, Hash, key_hash, prefetch, row_mix};

/// What the state says about one key, in memory for the diff.
#[derive(Debug, Clone)]
pub struct Entry {
    pub hash: Hash,
    /// Bits (by index into the job's lists) of the lists kdit added this key to.
    pub lists: u64,
}

/// Everything the diff needs from the state, for one job.
///
/// Entries are kept by a 64-bit hash of the key in one vector — 32 bytes a key, plus a bit for
/// whether this run's rows showed it, against 130 in a map of owned strings — because a
/// million-key job must diff in well under 150 MB. The keys themselves stay in PostgreSQL;
/// `State::removal_keys` reads them back for the few that leave a mirrored list.
#[derive(Debug, Default)]
pub struct Snapshot {
    /// Entries added by `insert`, until `seal` moves them into `keys`.
    pending: Vec<(u64, Entry)>,
    /// Row fingerprints added by `insert_known` (with their entry's index), until `seal`.
    pending_known: Vec<(Fingerprint, u32)>,
    keys: Arc<Keys>,
    /// One bit an entry (by index): set by the diff when the key shows up in this run's rows.
    seen: Vec<u64>,
    /// Fingerprints of the rows that made the confirmed payloads (complete members only).
    pub known: Arc<KnownRows>,
    /// The last finished run, if any: (id, finished at).
    pub last_run: Option<(i64, String)>,
    /// A fingerprint of the state as loaded, so a saved plan can tell it moved.
    pub version: String,
}

/// The state's entries in the order they were read, shared read-only by the diff and the
/// transform threads (which find a known row's entry by its index). Finding a key needs an
/// index sorted by key hash: it is built the first time a key is looked up, because a run
/// whose rows are all recognised by their fingerprint never looks one up.
#[derive(Debug, Default)]
pub struct Keys {
    entries: Vec<(u64, Entry)>,
    index: std::sync::OnceLock<KeyIndex>,
}

/// (key hash, entry index), sorted, with its directory.
#[derive(Debug, Default)]
struct KeyIndex {
    sorted: Vec<(u64, u32)>,
    directory: Directory,
}

impl Keys {
    fn index(&self) -> &KeyIndex {
        self.index.get_or_init(|| {
            let mut sorted: Vec<(u64, u32)> = self
                .entries
                .iter()
                .enumerate()
                .map(|(i, (h, _))| (*h, i as u32))
                .collect();
            sorted.sort_unstable();
            let directory = Directory::build(sorted.iter().map(|(h, _)| *h));
            KeyIndex { sorted, directory }
        })
    }

    /// The index of the entry of a key (by `Snapshot::key_hash`).
    fn position(&self, h: u64) -> Option<usize> {
        if self.entries.is_empty() {
            return None;
        }
        let index = self.index();
        let slice = &index.sorted[index.directory.range(h)];
        let i = slice.partition_point(|(k, _)| *k < h);
        slice
            .get(i)
            .filter(|(k, _)| *k == h)
            .map(|(_, at)| *at as usize)
    }
}

/// Where each run of equal top bits starts in a vector sorted by a uniformly spread 64-bit
/// hash, so a lookup binary-searches a handful of neighbours instead of the whole vector
/// (a million keys: one or two cache misses rather than twenty).
#[derive(Debug, Default)]
struct Directory {
    shift: u32,
    starts: Vec<u32>,
}

impl Directory {
    fn build(sorted: impl ExactSizeIterator<Item = u64>) -> Directory {
        let n = sorted.len();
        // About two entries a slot: a lookup then reads one or two cache lines of entries.
        let bits = (usize::BITS - (n / 2).leading_zeros()).clamp(1, 24);
        let shift = 64 - bits;
        let mut starts = vec![0u32; (1 << bits) + 1];
        for h in sorted {
            starts[(h >> shift) as usize + 1] += 1;
        }
        for i in 1..starts.len() {
            starts[i] += starts[i - 1];
        }
        Directory { shift, starts }
    }

    fn slot(&self, h: u64) -> usize {
        (h >> self.shift) as usize
    }

    /// The index range that can hold `h`.
    fn range(&self, h: u64) -> std::ops::Range<usize> {
        if self.starts.is_empty() {
            return 0..0;
        }
        let slot = self.slot(h);
        self.starts[slot] as usize..self.starts[slot + 1] as usize
    }
}

/// Gives back a vector's spare room when there is much of it: a reallocation copies the
/// vector into fresh pages, which costs more than a few spare entries.
fn shrink<T>(v: &mut Vec<T>) {
    if v.capacity() - v.len() > v.len() / 8 {
        v.shrink_to_fit();
    }
}

/// A row `KnownRows` recognised: its state entry's index (`Snapshot::see_index`), its key
/// hash, and its contribution to the rows digest (`row_mix`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Recognised {
    pub index: u32,
    pub key_hash: u64,
    pub mix: u128,
}

/// The rows whose profiles Klaviyo already has, by fingerprint: a row found here is unchanged
/// and in every list of the job, so it needs no transform and no diff of its payload.
#[derive(Debug, Default)]
pub struct KnownRows {
    /// (fingerprint, index of the entry in `keys`), sorted.
    entries: Vec<(Fingerprint, u32)>,
    directory: Directory,
    keys: Arc<Keys>,
}

impl KnownRows {
    fn top(fp: &Fingerprint) -> u64 {
        u64::from_be_bytes(fp[..8].try_into().unwrap_or([0; 8]))
    }

    /// The entry a row with this fingerprint made, if the state knows the row.
    pub fn get(&self, fp: &Fingerprint) -> Option<Recognised> {
        let range = self.directory.range(KnownRows::top(fp));
        self.index_in(fp, range).and_then(|i| self.recognised(i))
    }

    /// The entry index of a fingerprint, looked for in `range` of `entries`.
    fn index_in(&self, fp: &Fingerprint, range: std::ops::Range<usize>) -> Option<u32> {
        let slice = &self.entries[range];
        let i = slice.binary_search_by(|(f, _)| f.cmp(fp)).ok()?;
        Some(slice[i].1)
    }

    fn recognised(&self, index: u32) -> Option<Recognised> {
        let (key_hash, entry) = self.keys.entries.get(index as usize)?;
        Some(Recognised {
            index,
            key_hash: *key_hash,
            mix: row_mix(*key_hash, &entry.hash),
        })
    }

    /// `get` for a batch of fingerprints, with the memory reads of all of them overlapped:
    /// the same answers, in order, at a fraction of the waiting.
    pub fn get_all(&self, fps: &[Fingerprint]) -> Vec<Option<Recognised>> {
        if self.entries.is_empty() {
            return vec![None; fps.len()];
        }
        let starts = &self.directory.starts;
        let slots: Vec<usize> = fps
            .iter()
            .map(|fp| {
                let slot = self.directory.slot(KnownRows::top(fp));
                prefetch(starts.get(slot));
                slot
            })
            .collect();
        let ranges: Vec<std::ops::Range<usize>> = slots
            .iter()
            .map(|&slot| {
                let range = starts[slot] as usize..starts[slot + 1] as usize;
                prefetch(self.entries.get(range.start));
                range
            })
            .collect();
        let found: Vec<Option<u32>> = fps
            .iter()
            .zip(ranges)
            .map(|(fp, range)| {
                let index = self.index_in(fp, range);
                if let Some(index) = index {
                    prefetch(self.keys.entries.get(index as usize));
                }
                index
            })
            .collect();
        found
            .into_iter()
            .map(|index| index.and_then(|i| self.recognised(i)))
            .collect()
    }

    /// The index of the state entry of a key (by `Snapshot::key_hash`), if the state has it.
    pub fn index_of_key(&self, key_hash: u64) -> Option<u32> {
        self.keys.position(key_hash).map(|i| i as u32)
    }

    /// How many keys the state has (known rows or not).
    pub fn keys(&self) -> usize {
        self.keys.entries.len()
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

impl Snapshot {
    /// Room for `entries` entries (and as many known rows), so loading a large state does
    /// not copy its vectors as they grow.
    pub fn reserve(&mut self, entries: usize) {
        self.pending.reserve_exact(entries);
        self.pending_known.reserve_exact(entries);
    }

    /// Adds an entry; call `seal` once all are in. Returns its index.
    pub fn insert(&mut self, key: &str, entry: Entry) -> u32 {
        self.insert_hashed(key_hash(key), entry)
    }

    pub(super) fn insert_hashed(&mut self, key_hash: u64, entry: Entry) -> u32 {
        self.pending.push((key_hash, entry));
        (self.pending.len() - 1) as u32
    }

    /// Adds the fingerprint of the row that made the confirmed payload of the entry at
    /// `index` (as `insert` returned it); call `seal` once all are in.
    pub fn insert_known(&mut self, fp: Fingerprint, index: u32) {
        self.pending_known.push((fp, index));
    }

    /// Readies the entries and known rows for lookups.
    pub fn seal(&mut self) {
        let mut entries = std::mem::take(&mut self.pending);
        shrink(&mut entries);
        self.seen = vec![0; entries.len().div_ceil(64)];
        self.keys = Arc::new(Keys {
            entries,
            index: Default::default(),
        });
        let mut known = std::mem::take(&mut self.pending_known);
        known.sort_unstable();
        known.dedup_by(|a, b| a.0 == b.0);
        shrink(&mut known);
        let directory = Directory::build(known.iter().map(|(fp, _)| KnownRows::top(fp)));
        self.known = Arc::new(KnownRows {
            entries: known,
            directory,
            keys: self.keys.clone(),
        });
    }

    /// Marks the entry at `index` (`Recognised::index`) seen; false if there is none.
    pub fn see_index(&mut self, index: u32) -> bool {
        let i = index as usize;
        if i >= self.keys.entries.len() {
            return false;
        }
        self.seen[i / 64] |= 1 << (i % 64);
        true
    }

    /// Marks a key seen in this run's rows; its entry, if it has one.
    pub fn see(&mut self, key: &str) -> Option<&Entry> {
        let i = self.keys.position(key_hash(key))?;
        self.see_index(i as u32);
        Some(&self.keys.entries[i].1)
    }

    /// Whether the diff saw a key in this run's rows (false for a key the state lacks).
    pub fn seen(&self, key: &str) -> bool {
        self.keys
            .position(key_hash(key))
            .is_some_and(|i| self.seen[i / 64] & (1 << (i % 64)) != 0)
    }

    pub fn len(&self) -> usize {
        self.keys.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.entries.is_empty()
    }

    pub fn get(&self, key: &str) -> Option<&Entry> {
        self.keys
            .position(key_hash(key))
            .map(|i| &self.keys.entries[i].1)
    }

    /// The entries of keys the diff did not see in this run's rows.
    pub fn unseen(&self) -> impl Iterator<Item = &Entry> {
        self.keys
            .entries
            .iter()
            .enumerate()
            .filter(|(i, _)| self.seen[i / 64] & (1 << (i % 64)) == 0)
            .map(|(_, (_, e))| e)
    }

    pub fn reset_seen(&mut self) {
        self.seen.iter_mut().for_each(|w| *w = 0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sha2::{Digest, Sha256};

    #[test]
    fn lookups_find_every_key_and_nothing_else_at_any_size() {
        for n in [0usize, 1, 7, 100, 5_000] {
            let mut snap = Snapshot::default();
            for i in 0..n {
                let key = format!("k{i}@x.com");
                let entry = Entry {
                    hash: [i as u8; 16],
                    lists: 0,
                };
                let at = snap.insert(&key, entry);
                let fp: Fingerprint = Sha256::digest(key.as_bytes())[..16].try_into().unwrap();
                snap.insert_known(fp, at);
            }
            // A fingerprint pointing at no entry is no known row.
            snap.insert_known([7; 16], u32::MAX);
            snap.seal();
            let known = snap.known.clone();
            let mut fps = Vec::new();
            for i in 0..n {
                let key = format!("k{i}@x.com");
                assert_eq!(
                    snap.get(&key).map(|e| e.hash),
                    Some([i as u8; 16]),
                    "{n}: {key}"
                );
                let fp: Fingerprint = Sha256::digest(key.as_bytes())[..16].try_into().unwrap();
                let found = known.get(&fp).expect("a known row");
                assert_eq!(found.key_hash, key_hash(&key), "{n}: {key}");
                assert_eq!(found.mix, row_mix(found.key_hash, &[i as u8; 16]));
                assert!(snap.see_index(found.index));
                assert!(snap.seen(&key), "{n}: {key}");
                fps.push(fp);
                fps.push([0xee; 16]);
            }
            // The batch lookup answers as one lookup at a time does.
            let one_by_one: Vec<_> = fps.iter().map(|fp| known.get(fp)).collect();
            assert_eq!(known.get_all(&fps), one_by_one);
            assert_eq!(one_by_one.iter().flatten().count(), n);
            assert_eq!(known.get(&[7; 16]), None);
            assert_eq!(snap.unseen().count(), 0);
            assert!(snap.get("absent@x.com").is_none());
            assert_eq!(known.get(&[0xff; 16]), None);
            assert_eq!(known.get(&[0; 16]), None);
        }
    }
}
