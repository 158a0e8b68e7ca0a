//! Shared test harness: run the real `kdit` binary against temporary files.
#![allow(dead_code)]

pub mod cli;
