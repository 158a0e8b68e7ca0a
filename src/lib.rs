//! kdit keeps Klaviyo in step with customer data in PostgreSQL.
//!
//! The pipeline (see ARCHITECTURE.md): `spec` reads job files, `compile` checks them into a
//! `Job`, `source` streams rows from PostgreSQL, `transform` turns rows into Klaviyo profile
//! payloads, `diff` compares them with `state` into a `plan`, `render` prints it and `apply`
//! carries it out through the `klaviyo` client. `sandbox` is a local Klaviyo API for tests.

pub mod apply;
pub mod attributes;
pub mod audience;
pub mod bench;
pub mod bench_sync;
pub mod cli;
pub mod commands;
pub mod compile;
pub mod consent;
pub mod diagnostic;
pub mod diff;
pub mod exit;
pub mod feed;
pub mod inspect;
pub mod inventory;
pub mod klaviyo;
pub mod load;
pub mod plan;
pub mod progress;
pub mod query;
pub mod render;
pub mod rows;
pub mod sandbox;
pub mod segment;
pub mod source;
pub mod spec;
pub mod spill;
pub mod state;
pub mod sync;
pub mod tags;
pub mod template;
#[cfg(test)]
mod testing;
pub mod transform;
pub mod validate;
