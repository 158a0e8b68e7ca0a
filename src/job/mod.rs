//! The job: files → a checked `Job`. Pure except reading job, project and query files
//! (`load`, `workspace`).

pub mod attributes;
pub mod compile;
pub mod diagnostic;
pub mod load;
pub mod profiles;
pub mod query;
pub mod segment;
pub mod spec;
pub mod template;
pub mod workspace;
