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

/// The `i`th of a run of timestamps from `next` (`xorshift`): seconds near the epoch, across
/// years 0–12,000 and far outside 0–9999; nanoseconds of every precision (none, milli, micro,
/// nano). None where chrono has no such time.
pub(crate) fn datetime(
    next: &mut impl FnMut() -> u64,
    i: u64,
) -> Option<chrono::DateTime<chrono::Utc>> {
    let secs = match i % 4 {
        0 => (next() % 600_000_000_000) as i64 - 300_000_000_000,
        1 => (next() % 400_000_000_000) as i64 - 62_000_000_000,
        _ => (next() % 4_000_000_000) as i64,
    };
    let nanos = match i % 5 {
        0 => 0,
        1 => (next() % 1000) as u32 * 1_000_000,
        2 => (next() % 1_000_000) as u32 * 1000,
        _ => (next() % 1_000_000_000) as u32,
    };
    chrono::DateTime::from_timestamp(secs, nanos)
}
