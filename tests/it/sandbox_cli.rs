//! `kdit sandbox` as a user runs it: the real binary prints its base URL and key on stdout,
//! serves until stopped, rejects a bad `--faults` spec, and `--bench` prints its figures.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

fn kdit() -> Command {
    Command::new(env!("CARGO_BIN_EXE_kdit"))
}

/// Stops the sandbox process this test started, even when an assertion fails first.
struct Running(std::process::Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test]
async fn sandbox_cli_serves_and_prints_key() {
    let mut child = Running(
        kdit()
            .args([
                "sandbox",
                "--port",
                "0",
                "--api-key",
                "pk_cli_test",
                "--rate-limits",
                "off",
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("kdit runs"),
    );
    let stdout = child.0.stdout.take().expect("stdout");
    let mut lines = BufReader::new(stdout).lines();
    let base = lines
        .next()
        .and_then(Result::ok)
        .and_then(|l| l.strip_prefix("base_url: ").map(str::to_string))
        .expect("base_url line");
    let key = lines
        .next()
        .and_then(Result::ok)
        .and_then(|l| l.strip_prefix("api_key:").map(|k| k.trim().to_string()))
        .expect("api_key line");
    assert_eq!(key, "pk_cli_test");
    let _ = rustls::crypto::ring::default_provider().install_default();
    let r = reqwest::Client::new()
        .get(format!("{base}/api/accounts"))
        .header("Authorization", format!("Klaviyo-API-Key {key}"))
        .header("revision", "2026-07-15")
        .send()
        .await
        .expect("request");
    assert_eq!(r.status().as_u16(), 200);
}

#[test]
fn sandbox_cli_rejects_bad_faults() {
    let out = kdit()
        .args(["sandbox", "--port", "0", "--faults", "teapot=5%"])
        .output()
        .expect("kdit runs");
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--faults") && err.contains("teapot"), "{err}");
}

#[test]
fn sandbox_cli_bench() {
    let out = kdit()
        .args(["sandbox", "--bench", "--bench-profiles", "2000"])
        .output()
        .expect("kdit runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("2000 profiles imported"), "{text}");
}
