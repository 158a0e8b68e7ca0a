//! The one printer (leaf): everything a user reads leaves kdit through here. Data a script
//! may read goes to stdout (`data`, `data_line`, `stdout`); errors, warnings, hints,
//! summaries and progress go to stderr (`error`, `warning`, `hint`, `say`, `say_line`,
//! `bar`). Whether stderr gets colour and live bars (a terminal, `NO_COLOR` unset) is decided
//! once, in `fancy`. An error carries its hints one way: `Hinted`, shown as the message and
//! then `hint: …` on a line of its own. Also how numbers read (`thousands`, `plural`).
//!
//! The print macros are denied everywhere else (`[lints]` in Cargo.toml).
#![allow(
    clippy::print_stdout,
    clippy::print_stderr,
    reason = "the one printer: every other module prints through these functions"
)]

use std::fmt::{self, Display};
use std::io::IsTerminal;

pub mod words;
pub use words::{plural, thousands};

/// Data a script may read, on stdout, as is (no newline added).
pub fn data(text: impl Display) {
    print!("{text}");
}

/// Data a script may read, on stdout, then a newline.
pub fn data_line(text: impl Display) {
    println!("{text}");
}

/// Stdout, for renderers that write as they go (validation, tables, benchmarks, the man
/// page, completions).
pub fn stdout() -> std::io::Stdout {
    std::io::stdout()
}

/// A message for the user on stderr, as is (no prefix, no newline added): summaries,
/// notices, text rendered elsewhere.
pub fn say(text: impl Display) {
    eprint!("{text}");
}

/// A message for the user on stderr, then a newline.
pub fn say_line(text: impl Display) {
    eprintln!("{text}");
}

/// `error: …` on stderr. A `Hinted` error brings its hints, each on a line of its own.
pub fn error(e: impl Display) {
    eprintln!("error: {e}");
}

/// `warning: …` on stderr.
pub fn warning(msg: impl Display) {
    eprintln!("warning: {msg}");
}

/// `hint: …` on stderr, on a line of its own: what to do about what was said just before.
pub fn hint(msg: impl Display) {
    eprintln!("hint: {msg}");
}

/// Whether stderr is for a person who sees colour and live bars: a terminal, and `NO_COLOR`
/// is not set. Decided here only.
pub fn fancy() -> bool {
    std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none()
}

/// A live progress bar on stderr for `total` steps, when stderr is `fancy`; `None` otherwise
/// (the caller prints plain lines with `say_line`).
pub fn bar(total: u64) -> Option<indicatif::ProgressBar> {
    fancy().then(|| {
        indicatif::ProgressBar::with_draw_target(
            Some(total),
            indicatif::ProgressDrawTarget::stderr(),
        )
    })
}

/// An error message with hints: what went wrong, then what to do about it. Shown (by
/// `Display`, so also inside other messages) as the message, then `hint: …` on a line of its
/// own for each hint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hinted {
    message: String,
    hints: Vec<String>,
}

impl Hinted {
    /// A message without a hint yet.
    pub fn new(message: impl Into<String>) -> Hinted {
        Hinted {
            message: message.into(),
            hints: Vec::new(),
        }
    }

    /// Adds a hint (shown after the ones before it).
    pub fn hint(mut self, hint: impl Into<String>) -> Hinted {
        self.hints.push(hint.into());
        self
    }

    /// The message without its hints.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// The hints, in order.
    pub fn hints(&self) -> &[String] {
        &self.hints
    }
}

impl Display for Hinted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)?;
        for h in &self.hints {
            write!(f, "\nhint: {h}")?;
        }
        Ok(())
    }
}

impl std::error::Error for Hinted {}

impl From<String> for Hinted {
    fn from(message: String) -> Hinted {
        Hinted::new(message)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hints_follow_the_message_one_a_line() {
        let e = Hinted::new("KLAVIYO_API_KEY is not set")
            .hint("export it")
            .hint("or add --sandbox");
        assert_eq!(
            e.to_string(),
            "KLAVIYO_API_KEY is not set\nhint: export it\nhint: or add --sandbox"
        );
        assert_eq!(Hinted::new("plain").to_string(), "plain");
    }
}
