//! Problems found in a user's file, and the three ways kdit prints them.
//!
//! In: diagnostics collected by `load` and `compile`. Out: text for a terminal (`human`),
//! a JSON document (`json`) or GitHub workflow annotations (`github`). Pure: callers choose
//! where the text goes.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use serde::Serialize;

/// How bad a problem is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Error,
    Warning,
}

/// One problem in one file, with where it is and what to do about it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Diagnostic {
    pub severity: Severity,
    /// A stable, kebab-case name for the kind of problem (`unknown-key`, `yaml-syntax`, …).
    pub code: &'static str,
    pub file: PathBuf,
    /// 1-based line; 0 when the problem concerns the whole file.
    pub line: usize,
    /// 1-based column; 0 when unknown.
    pub column: usize,
    pub message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hint: Option<String>,
    /// The offending line of the file, for display.
    #[serde(skip)]
    pub source_line: Option<String>,
    /// How many characters to underline from `column`.
    #[serde(skip)]
    pub width: usize,
}

impl Diagnostic {
    pub fn error(code: &'static str, file: &Path, message: impl Into<String>) -> Diagnostic {
        Diagnostic {
            severity: Severity::Error,
            code,
            file: file.to_path_buf(),
            line: 0,
            column: 0,
            message: message.into(),
            hint: None,
            source_line: None,
            width: 1,
        }
    }

    pub fn hint(mut self, hint: impl Into<String>) -> Diagnostic {
        self.hint = Some(hint.into());
        self
    }

    pub fn warning(mut self) -> Diagnostic {
        self.severity = Severity::Warning;
        self
    }

    /// Places the diagnostic at `line:column` (1-based) of `text`, remembering the line.
    pub fn at(mut self, text: &str, line: usize, column: usize, width: usize) -> Diagnostic {
        self.line = line;
        self.column = column;
        self.width = width.max(1);
        self.source_line = line
            .checked_sub(1)
            .and_then(|i| text.lines().nth(i))
            .map(|l| l.to_string());
        self
    }
}

/// Output formats of `kdit validate`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// Messages with the offending line and a caret, for people.
    Human,
    /// One JSON document, for tools.
    Json,
    /// GitHub Actions workflow annotations (`::error file=…`).
    Github,
}

/// Renders one diagnostic for a terminal, in the manner of rustc and just.
pub fn render_human(d: &Diagnostic) -> String {
    let mut out = String::new();
    let label = match d.severity {
        Severity::Error => "error",
        Severity::Warning => "warning",
    };
    let _ = writeln!(out, "{label}[{}]: {}", d.code, d.message);
    let file = d.file.display();
    if d.line == 0 {
        let _ = writeln!(out, "  --> {file}");
    } else {
        let _ = writeln!(out, "  --> {file}:{}:{}", d.line, d.column.max(1));
        if let Some(src) = &d.source_line {
            let num = d.line.to_string();
            let pad = " ".repeat(num.len());
            let shown: String = src.chars().take(160).collect();
            let _ = writeln!(out, "{pad} |");
            let _ = writeln!(out, "{num} | {shown}");
            let caret_pad: String = shown
                .chars()
                .take(d.column.saturating_sub(1))
                .map(|c| if c == '\t' { '\t' } else { ' ' })
                .collect();
            let _ = writeln!(out, "{pad} | {caret_pad}{}", "^".repeat(d.width.min(80)));
        }
    }
    if let Some(hint) = &d.hint {
        let _ = writeln!(out, "  = hint: {hint}");
    }
    out
}

/// Renders one diagnostic as a GitHub Actions workflow command.
pub fn render_github(d: &Diagnostic) -> String {
    let level = match d.severity {
        Severity::Error => "error",
        Severity::Warning => "warning",
    };
    let mut props = format!("file={}", escape_property(&d.file.display().to_string()));
    if d.line > 0 {
        let _ = write!(props, ",line={},col={}", d.line, d.column.max(1));
    }
    let _ = write!(props, ",title=kdit {}", escape_property(d.code));
    let mut message = d.message.clone();
    if let Some(hint) = &d.hint {
        message.push_str("\nhint: ");
        message.push_str(hint);
    }
    format!("::{level} {props}::{}\n", escape_data(&message))
}

fn escape_data(s: &str) -> String {
    s.replace('%', "%25")
        .replace('\r', "%0D")
        .replace('\n', "%0A")
}

fn escape_property(s: &str) -> String {
    escape_data(s).replace(':', "%3A").replace(',', "%2C")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn human_rendering_points_at_the_column() {
        let text = "version: 1\nbacth: 3\n";
        let d = Diagnostic::error("unknown-key", Path::new("j.yaml"), "unknown key `bacth`")
            .at(text, 2, 1, 5)
            .hint("did you mean `batch`?");
        assert_eq!(
            render_human(&d),
            "error[unknown-key]: unknown key `bacth`\n  --> j.yaml:2:1\n  |\n2 | bacth: 3\n  | ^^^^^\n  = hint: did you mean `batch`?\n"
        );
    }

    #[test]
    fn github_annotations_escape_their_fields() {
        let d = Diagnostic::error("x", Path::new("a,b.yaml"), "50% bad\nreally").at("a\n", 1, 2, 1);
        assert_eq!(
            render_github(&d),
            "::error file=a%2Cb.yaml,line=1,col=2,title=kdit x::50%25 bad%0Areally\n"
        );
    }
}
