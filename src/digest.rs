//! Digests: the hashes and fingerprints the state stores and the plan compares. Pure (leaf).
