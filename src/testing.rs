//! Helpers for the crate's unit tests.

/// A small deterministic pseudo-random sequence (xorshift64) for tests that compare a fast
/// path with the general one over many generated inputs. `seed` must not be 0.
pub(crate) fn xorshift(mut seed: u64) -> impl FnMut() -> u64 {
    move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    }
}
