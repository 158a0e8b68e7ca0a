//! kdit's integration tests, one test binary (as uv's `tests/it` and just's `tests/lib.rs`):
//! the crate and the harness are compiled and linked once rather than once per file, and the
//! test threads stay busy across files. Run one file's tests with
//! `cargo test --test it sync::` (the module path is the filter).

mod support;

mod audience;
mod ergonomics;
mod hostile;
mod layout;
mod pressure;
mod ratelimit;
mod sandbox_api;
mod sandbox_cli;
mod secrets;
mod source;
mod sync;
mod validate;
