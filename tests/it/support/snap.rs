//! Whole-output checks: a command's exit code, stdout and stderr, after redacting what differs
//! from run to run (durations, rates, ports, temp folders, ids), compared with a committed
//! snapshot `tests/it/snapshots/NAME.txt`. The whole text is compared, so every line the
//! command prints is checked, not just the lines a test thought of.
//!
//! `KDIT_BLESS=1 cargo test --test it` writes the snapshots of the tests it runs instead of
//! comparing them (review them with `git diff`); it is refused when `CI` is set, so CI only
//! compares, and a missing snapshot fails the test like a different one.

use std::path::PathBuf;
use std::sync::OnceLock;

use regex::Regex;

/// Compares `kdit`'s exit code, stdout and stderr with the snapshot `name`.
#[track_caller]
pub fn check(name: &str, code: i32, stdout: &str, stderr: &str) {
    let actual = redact(&format!(
        "exit: {code}\n--- stdout\n{stdout}--- stderr\n{stderr}"
    ));
    let path = dir().join(format!("{name}.txt"));
    let bless = std::env::var_os("KDIT_BLESS").is_some_and(|v| v == "1");
    if bless {
        assert!(
            std::env::var_os("CI").is_none(),
            "KDIT_BLESS is refused when CI is set: CI compares snapshots, it never writes them"
        );
        std::fs::create_dir_all(path.parent().expect("a folder"))
            .expect("create the snapshot folder");
        std::fs::write(&path, &actual).expect("write the snapshot");
    }
    let expected = std::fs::read_to_string(&path).unwrap_or_else(|_| {
        panic!(
            "no snapshot {}; the output was:\n{actual}\n(write it with KDIT_BLESS=1 and review it)",
            path.display()
        )
    });
    if actual != expected {
        panic!(
            "output differs from the snapshot {}\n--- expected\n{expected}\n--- actual\n{actual}\n\
             ---\n(if the change is wanted: KDIT_BLESS=1, then review the diff)",
            path.display()
        );
    }
}

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/it/snapshots")
}

/// Replaces what differs between runs of the same test with a fixed placeholder: wall-clock
/// times (`[time]`), durations (`[dur]`, `[secs]`: the seconds of `kdit history`, of a JSON
/// plan, of a rate limit's wait), the
/// sandbox's port (`[port]`) and temp folders (`[tmp]`).
pub fn redact(text: &str) -> String {
    static RULES: OnceLock<Vec<(Regex, &'static str)>> = OnceLock::new();
    let rules = RULES.get_or_init(|| {
        [
            (
                r"\d{4}-\d{2}-\d{2}[ T]\d{2}:\d{2}(:\d{2}(\.\d+)?)?",
                "[time]",
            ),
            (r"(\[time\]) +\d+\.\d ", "$1 [secs] "),
            (r"\b\d+(\.\d+)?(ms|s)\b", "[dur]"),
            (r#"("\w*seconds": )[\d.e-]+"#, "$1[secs]"),
            (r"rate limited for \d+ s\b", "rate limited for [secs] s"),
            (r"(127\.0\.0\.1|localhost):\d+", "$1:[port]"),
            (r"/tmp/\.tmp\w+", "[tmp]"),
        ]
        .into_iter()
        .map(|(re, with)| (Regex::new(re).expect("a redaction pattern"), with))
        .collect()
    });
    let mut text = text.to_string();
    for (re, with) in rules {
        text = re.replace_all(&text, *with).into_owned();
    }
    text
}
