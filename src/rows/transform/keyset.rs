//! The keys seen in a run, for the duplicate-key check (the first row with a key wins):
//! every duplicate check of the transform uses these two sets.
//!
//! In: key hashes (`digest::key_hash`), and for keys the state already holds, the index of
//! their state entry. Out: whether each key is new to the run. Pure: no I/O.
//!
//! Keys the state holds take one bit each, by their entry's index (`StateKeyBits`); other
//! keys go into a hash set of their 64-bit hashes (`KeySet`): a million-key no-change run
//! then keeps 125 kB of bits instead of a 32 MB hash set.

/// Key hashes seen in a run (`digest::key_hash`). Open addressing with linear probing over
/// plain `u64`s, 0 marking a free slot (the hash 0 is kept apart). Unlike a general set, it can be told the keys coming next
/// (`prefetch`): with a million keys it is far bigger than the caches, and fetching a batch's
/// slots together costs one wait for memory instead of one per row.
#[derive(Default)]
pub(super) struct KeySet {
    /// A power of two long, or empty before the first key.
    slots: Vec<u64>,
    /// 64 minus log2 of `slots.len()`.
    shift: u32,
    /// Slots in use.
    used: usize,
    zero: bool,
}

impl KeySet {
    fn slot(&self, h: u64) -> usize {
        // Mixed once more (Fibonacci hashing), so hashes that differ only in low bits spread.
        (h.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> self.shift) as usize
    }

    /// Adds a key; whether it was new.
    pub(super) fn insert(&mut self, h: u64) -> bool {
        if h == 0 {
            return !std::mem::replace(&mut self.zero, true);
        }
        // At most three quarters full.
        if (self.used + 1) * 4 > self.slots.len() * 3 {
            self.grow();
        }
        let mask = self.slots.len() - 1;
        let mut i = self.slot(h);
        loop {
            match self.slots[i] {
                0 => {
                    self.slots[i] = h;
                    self.used += 1;
                    return true;
                }
                s if s == h => return false,
                _ => i = (i + 1) & mask,
            }
        }
    }

    fn grow(&mut self) {
        let len = (self.slots.len() * 2).max(1024);
        let old = std::mem::replace(&mut self.slots, vec![0; len]);
        self.shift = 64 - len.trailing_zeros();
        self.used = 0;
        for h in old.into_iter().filter(|h| *h != 0) {
            self.insert(h);
        }
    }

    /// Starts fetching the slot of a key about to be inserted (a hint; changes nothing).
    pub(super) fn prefetch(&self, h: u64) {
        crate::digest::prefetch(self.slots.get(self.slot(h)));
    }

    /// Keys in the set (the tests compare it with `HashSet`'s).
    #[cfg(test)]
    fn len(&self) -> usize {
        self.used + usize::from(self.zero)
    }
}

/// Keys the state holds that were seen in a run: one bit per state entry, by the entry's
/// index (`KnownRows::index_of_key`). Empty (every key new) until `new` sizes it.
#[derive(Default)]
pub(super) struct StateKeyBits(Vec<u64>);

impl StateKeyBits {
    /// Room for a state of `keys` entries.
    pub(super) fn new(keys: usize) -> StateKeyBits {
        StateKeyBits(vec![0; keys.div_ceil(64)])
    }

    /// Whether the key of state entry `index` is new to this run; remembers it.
    pub(super) fn first_sight(&mut self, index: u32) -> bool {
        let (word, bit) = (index as usize / 64, 1u64 << (index % 64));
        let Some(w) = self.0.get_mut(word) else {
            return true;
        };
        let first = *w & bit == 0;
        *w |= bit;
        first
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The key set answers as a `HashSet` does: through growth, for repeated keys and for 0.
    #[test]
    fn the_key_set_is_a_set() {
        let mut next = crate::rows::testing::xorshift(0x5851_F42D_4C95_7F2Du64);
        let mut keys = KeySet::default();
        let mut reference = std::collections::HashSet::new();
        for i in 0..300_000u64 {
            let h = match i % 5 {
                // Repeats, keys sharing their top bits (neighbouring slots), and 0.
                0 => next() % 50_000,
                1 => (next() % 64) << 58 | (i % 7),
                2 if i % 1000 == 2 => 0,
                _ => next(),
            };
            if i % 3 == 0 {
                keys.prefetch(h);
            }
            assert_eq!(keys.insert(h), reference.insert(h), "key {h:#x}");
        }
        assert_eq!(keys.len(), reference.len());
        assert!(reference.contains(&0));
    }
}
