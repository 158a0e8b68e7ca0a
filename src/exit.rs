//! Process exit statuses: one enum, turned into the process exit code by `main`. (A second
//! Ctrl-C still ends the process at once where it is caught, in `rows::source` and
//! `commands::connect`, with 130.)

/// Every way kdit can end. The numbers are documented in the README's exit-code table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitStatus {
    /// Everything worked; for `plan --detailed-exitcode`, nothing to change.
    Success,
    /// A runtime failure: database, Klaviyo, I/O.
    Failure,
    /// `plan --detailed-exitcode`: the plan has changes.
    Changes,
    /// Command line misuse (clap's own code).
    Usage,
    /// One or more job files are invalid.
    InvalidJobs,
    /// A guard (max_invalid, max_removals) stopped the run before any write.
    GuardTripped,
    /// Some rows were rejected or failed in Klaviyo, the rest went through.
    PartialFailure,
    /// Interrupted (Ctrl-C); the next run resumes.
    Interrupted,
}

impl ExitStatus {
    pub fn code(self) -> i32 {
        match self {
            ExitStatus::Success => 0,
            ExitStatus::Failure => 1,
            ExitStatus::Changes => 2,
            ExitStatus::Usage => 64,
            ExitStatus::InvalidJobs => 65,
            ExitStatus::GuardTripped => 66,
            ExitStatus::PartialFailure => 67,
            ExitStatus::Interrupted => 130,
        }
    }
}
