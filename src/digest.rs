//! Digests: the hashes and fingerprints that the state stores and the plan compares, and the
//! prefetch hint the tables keyed by them use. Pure (leaf): no I/O, nothing of kdit imported.

use serde_json::value::RawValue;
use sha2::{Digest, Sha256};

/// A payload's fingerprint: the first 16 bytes of SHA-256 over its canonical JSON.
pub type Hash = [u8; 16];

/// Hashes a profile payload (attributes as serialised JSON, plus fields to unset).
pub fn hash_payload(attributes: &RawValue, unset: &[String]) -> Hash {
    let mut h = Sha256::new();
    h.update(attributes.get().as_bytes());
    for u in unset {
        h.update([0u8]);
        h.update(u.as_bytes());
    }
    let full = h.finalize();
    let mut out = [0u8; 16];
    out.copy_from_slice(&full[..16]);
    out
}

/// A row fingerprint (`rows::source::decode::row_fingerprint`).
pub type Fingerprint = [u8; 16];

/// The in-memory hash of a key (SipHash; stable within one process, which is all it needs).
pub fn key_hash(key: &str) -> u64 {
    use std::hash::{Hash as _, Hasher as _};
    let mut h = std::hash::DefaultHasher::new();
    key.hash(&mut h);
    h.finish()
}

/// What a row's contribution to a plan's rows digest is: its payload hash tied to its key (see
/// `diff::Differ`), the same whether the row was recognised or transformed. The payload hash
/// is already a SHA-256 digest; the mix only has to make sums over different sets of rows
/// differ, which a non-linear mix of both halves with the key does (a linear one would let
/// two keys swap payloads unnoticed), at a few nanoseconds instead of a second SHA-256.
pub fn row_mix(key_hash: u64, hash: &Hash) -> u128 {
    fn fmix(mut x: u64) -> u64 {
        // SplitMix64's finaliser.
        x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        x ^ (x >> 31)
    }
    let half = |b: &[u8]| u64::from_le_bytes(b.try_into().unwrap_or([0; 8]));
    let lo = half(&hash[..8]) ^ key_hash;
    let hi = half(&hash[8..]) ^ key_hash.rotate_left(29);
    let a = fmix(lo ^ fmix(hi));
    let b = fmix(hi ^ a);
    (u128::from(b) << 64) | u128::from(a)
}

/// Lower-case hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Asks the CPU to start loading the cache line holding `item`. Lookups of a batch are issued
/// in stages, each prefetching what the next reads: a million-entry table lives in main memory,
/// and a hundred misses waited on together cost little more than one waited on alone.
#[inline(always)]
pub fn prefetch<T>(item: Option<&T>) {
    #[cfg(target_arch = "x86_64")]
    if let Some(item) = item {
        use std::arch::x86_64::{_MM_HINT_T0, _mm_prefetch};
        // SAFETY: SSE is part of x86_64's baseline; a prefetch is a hint that reads nothing the
        // program sees and cannot fault, and the pointer comes from a live reference anyway.
        unsafe { _mm_prefetch::<_MM_HINT_T0>((item as *const T).cast::<i8>()) };
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = item;
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn payload_hashes_change_with_any_field() {
        let raw = |v: serde_json::Value| serde_json::value::to_raw_value(&v).unwrap();
        let a = hash_payload(&raw(json!({"email": "a@x.com", "first_name": "A"})), &[]);
        let b = hash_payload(&raw(json!({"email": "a@x.com", "first_name": "B"})), &[]);
        let c = hash_payload(
            &raw(json!({"email": "a@x.com", "first_name": "A"})),
            &["plan".into()],
        );
        assert_ne!(a, b);
        assert_ne!(a, c);
        assert_eq!(
            a,
            hash_payload(&raw(json!({"email": "a@x.com", "first_name": "A"})), &[])
        );
    }

    #[test]
    fn row_mixes_tell_keys_and_payloads_apart_in_any_sum() {
        let (a, b) = (key_hash("a@x.com"), key_hash("b@x.com"));
        let (ha, hb): (Hash, Hash) = ([1; 16], [2; 16]);
        let sum = |rows: &[(u64, Hash)]| {
            rows.iter()
                .fold(0u128, |s, (k, h)| s.wrapping_add(row_mix(*k, h)))
        };
        // Order does not matter; which key has which payload does.
        assert_eq!(sum(&[(a, ha), (b, hb)]), sum(&[(b, hb), (a, ha)]));
        assert_ne!(sum(&[(a, ha), (b, hb)]), sum(&[(a, hb), (b, ha)]));
        assert_ne!(row_mix(a, &ha), row_mix(b, &ha));
        assert_ne!(row_mix(a, &ha), row_mix(a, &hb));
        // Every bit of the payload hash counts.
        for byte in 0..16 {
            for bit in 0..8 {
                let mut h = ha;
                h[byte] ^= 1 << bit;
                assert_ne!(row_mix(a, &h), row_mix(a, &ha), "byte {byte} bit {bit}");
            }
        }
    }
}
