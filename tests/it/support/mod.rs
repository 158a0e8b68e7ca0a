//! Shared test harness: run the real `kdit` binary against temporary files; a PostgreSQL
//! database per test.
pub mod api;
pub mod cli;
pub mod openapi;
pub mod pg;
pub mod snap;
pub mod world;
