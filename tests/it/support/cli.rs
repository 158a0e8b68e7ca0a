//! Runs the real `kdit` binary in a temporary folder and compares its output exactly, in the
//! manner of just's `Test` builder: write files, run, assert stdout, stderr and exit status.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// A test folder with files, and a kdit invocation to run in it.
pub struct Kdit {
    dir: tempfile::TempDir,
    args: Vec<String>,
    env: Vec<(String, String)>,
}

/// What a run printed and how it ended.
#[derive(Debug)]
pub struct Run {
    pub stdout: String,
    pub stderr: String,
    pub code: i32,
}

impl Kdit {
    pub fn new() -> Kdit {
        Kdit {
            dir: tempfile::tempdir().expect("temp dir"),
            args: Vec::new(),
            env: Vec::new(),
        }
    }

    /// Writes `contents` to `path` inside the test folder (creating parent folders).
    pub fn file(self, path: &str, contents: impl AsRef<[u8]>) -> Kdit {
        let full = self.dir.path().join(path);
        if let Some(parent) = full.parent() {
            std::fs::create_dir_all(parent).expect("create dirs");
        }
        std::fs::write(full, contents).expect("write file");
        self
    }

    pub fn args(mut self, args: &[&str]) -> Kdit {
        self.args.extend(args.iter().map(|s| s.to_string()));
        self
    }

    pub fn env(mut self, key: &str, value: &str) -> Kdit {
        self.env.push((key.into(), value.into()));
        self
    }

    /// The test folder (for tests that change a file between runs).
    #[allow(dead_code)]
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn run(&self) -> Run {
        let out: Output = Command::new(bin())
            .args(&self.args)
            .current_dir(self.dir.path())
            .env("NO_COLOR", "1")
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .output()
            .expect("run kdit");
        Run {
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
            code: out.status.code().unwrap_or(-1),
        }
    }
}

impl Default for Kdit {
    fn default() -> Self {
        Kdit::new()
    }
}

impl Run {
    /// Asserts the exit code, showing the output when it differs.
    pub fn code(&self, expected: i32) -> &Run {
        assert_eq!(
            self.code, expected,
            "exit code\n--- stdout\n{}\n--- stderr\n{}",
            self.stdout, self.stderr
        );
        self
    }

    pub fn stdout(&self, expected: &str) -> &Run {
        pretty_eq(&self.stdout, expected, "stdout");
        self
    }

    pub fn stderr(&self, expected: &str) -> &Run {
        pretty_eq(&self.stderr, expected, "stderr");
        self
    }

    pub fn stdout_has(&self, needle: &str) -> &Run {
        assert!(
            self.stdout.contains(needle),
            "stdout lacks {needle:?}\n--- stdout\n{}\n--- stderr\n{}",
            self.stdout,
            self.stderr
        );
        self
    }

    pub fn stderr_has(&self, needle: &str) -> &Run {
        assert!(
            self.stderr.contains(needle),
            "stderr lacks {needle:?}\n--- stderr\n{}",
            self.stderr
        );
        self
    }
}

fn pretty_eq(actual: &str, expected: &str, what: &str) {
    if actual != expected {
        panic!("{what} differs\n--- expected\n{expected}\n--- actual\n{actual}\n---");
    }
}

/// The kdit binary Cargo built for these tests.
pub fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_kdit"))
}

/// The repository root (for the committed examples and schemas).
pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}
