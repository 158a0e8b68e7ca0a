//! Output helpers: numbers and words as the user reads them (leaf).
