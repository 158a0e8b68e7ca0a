//! The end-to-end harness: a PostgreSQL database of the test's own, an in-process sandbox
//! reached exactly as real Klaviyo would be (`KLAVIYO_BASE_URL` + `KLAVIYO_API_KEY`), a
//! folder for job files, and the real `kdit` binary run in it.

use std::collections::HashSet;
use std::path::PathBuf;

use kdit::sandbox::{Sandbox, SandboxConfig};

use super::pg::TestDb;

/// A test database, a sandbox and a folder.
pub struct World {
    pub db: TestDb,
    pub sb: Sandbox,
    pub dir: tempfile::TempDir,
}

/// What a run printed and how it ended.
pub struct Out {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Out {
    /// Compares the whole output (code, stdout, stderr) with the snapshot `name`
    /// (`support::snap`).
    #[track_caller]
    pub fn snapshot(&self, name: &str) -> &Out {
        super::snap::check(name, self.code, &self.stdout, &self.stderr);
        self
    }
}

impl World {
    /// Runs `setup_sql` in a fresh database and starts a sandbox with `config`.
    pub async fn start(setup_sql: &str, config: SandboxConfig) -> World {
        let db = TestDb::new().await;
        db.execute(setup_sql).await;
        let sb = Sandbox::start(config).await.expect("sandbox");
        let dir = tempfile::tempdir().expect("temp dir");
        World { db, sb, dir }
    }

    /// Writes a file in the test folder.
    pub fn write(&self, file: &str, text: &str) {
        std::fs::write(self.dir.path().join(file), text).expect("write file");
    }

    /// Writes `job.yaml`.
    pub fn job(&self, text: &str) {
        self.write("job.yaml", text);
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// `kdit ARGS` in the test folder, pointed at the test database and the sandbox.
    pub fn command(&self, args: &[&str]) -> tokio::process::Command {
        let mut c = tokio::process::Command::new(env!("CARGO_BIN_EXE_kdit"));
        c.args(args)
            .current_dir(self.dir.path())
            .env("DATABASE_URL", format!("{}?sslmode=disable", self.db.url))
            .env("KLAVIYO_BASE_URL", self.sb.base_url())
            .env("KLAVIYO_API_KEY", self.sb.api_key())
            .env("NO_COLOR", "1")
            .env_remove("KDIT_STATE_SCHEMA")
            .env_remove("RUST_LOG")
            .env_remove("KDIT_LOG")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true);
        c
    }

    /// Runs kdit to the end; fails the test on a panic or a leaked API key.
    pub async fn kdit(&self, args: &[&str]) -> Out {
        let o = self.command(args).output().await.expect("run kdit");
        let out = Out {
            code: o.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        };
        assert!(
            !out.stderr.contains("panicked"),
            "kdit panicked:\n{}",
            out.stderr
        );
        assert!(
            !out.stdout.contains(self.sb.api_key()) && !out.stderr.contains(self.sb.api_key()),
            "the API key leaked into the output"
        );
        out
    }

    /// Runs kdit and requires exit status 0.
    pub async fn ok(&self, args: &[&str]) -> Out {
        let out = self.kdit(args).await;
        assert_eq!(out.code, 0, "{args:?}\n{}\n{}", out.stdout, out.stderr);
        out
    }

    /// Emails of the sandbox's profiles; fails on duplicates.
    pub fn emails(&self) -> HashSet<String> {
        let profiles = self.sb.profiles();
        let emails: HashSet<String> = profiles.iter().filter_map(|p| p.email.clone()).collect();
        assert_eq!(
            emails.len(),
            profiles.len(),
            "duplicate profiles in the sandbox"
        );
        emails
    }

    /// Members of the sandbox's list `name` (0 when there is no such list).
    pub fn list_members(&self, name: &str) -> usize {
        self.sb
            .lists()
            .iter()
            .find(|l| l.name == name)
            .map(|l| l.members.len())
            .unwrap_or(0)
    }

    /// Requests the sandbox answered whose endpoint starts with `prefix`.
    pub fn calls(&self, prefix: &str) -> u64 {
        self.sb
            .request_counts()
            .iter()
            .filter(|(k, _)| k.starts_with(prefix))
            .map(|(_, v)| *v)
            .sum()
    }
}
