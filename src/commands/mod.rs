//! The subcommands: one file each, arguments beside the command. Nothing imports this folder
//! but `cli` and `main`.

pub mod bench;
pub mod inspect;
pub mod query;
pub mod run;
pub mod segment;
pub mod tags;
