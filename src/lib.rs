//! kdit keeps Klaviyo in step with customer data in PostgreSQL.
//!
//! The folders run in pipeline order (see ARCHITECTURE.md): `job` loads job files and checks
//! them into a `Job`; `state` is kdit's memory in PostgreSQL; `rows` streams the job's query
//! from PostgreSQL and turns each row into a Klaviyo profile payload; `plan` compares the rows
//! with the state's snapshot into a `Plan` and renders it; `apply` carries a plan out through
//! the `klaviyo` client; `sync` orders the stages; `commands` are the subcommands. `digest`,
//! `output` and `exit` are leaves every stage may use; `sandbox` is a local Klaviyo API.

pub mod apply;
pub mod cli;
pub mod commands;
pub mod digest;
pub mod exit;
pub mod job;
pub mod klaviyo;
pub mod output;
pub mod plan;
pub mod rows;
pub mod sandbox;
pub mod state;
pub mod sync;
