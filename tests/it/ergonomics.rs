//! CI ergonomics: shell completions, the man page, JSON log lines, --quiet and NO_COLOR.

use crate::support;

use support::cli::{Kdit, repo};

const SUBCOMMANDS: [&str; 8] = [
    "validate", "plan", "run", "apply", "history", "check", "preview", "sandbox",
];

#[test]
fn completions_cover_every_subcommand() {
    for shell in ["bash", "zsh", "fish", "powershell", "elvish"] {
        let run = Kdit::new().args(&["completions", shell]).run();
        run.code(0);
        assert!(run.stdout.len() > 500, "{shell}: {}", run.stdout);
        for sub in SUBCOMMANDS {
            assert!(run.stdout.contains(sub), "{shell} completion lacks `{sub}`");
        }
        assert!(run.stdout.contains("log-format"), "{shell}: global flags");
    }
    Kdit::new()
        .args(&["completions", "tcsh"])
        .run()
        .code(64)
        .stderr_has("invalid value 'tcsh'");
}

#[test]
fn the_man_page_is_roff_and_names_the_subcommands() {
    let run = Kdit::new().args(&["man"]).run();
    run.code(0);
    assert!(run.stdout.starts_with(".ie"), "{}", &run.stdout[..80]);
    assert!(run.stdout.contains(".TH kdit 1"), "{}", run.stdout);
    for sub in SUBCOMMANDS {
        assert!(run.stdout.contains(sub), "man page lacks `{sub}`");
    }
}

#[test]
fn json_log_lines_parse_as_json() {
    let run = Kdit::new()
        .file(
            "jobs/a.yaml",
            std::fs::read(repo().join("examples/quickstart.yaml")).unwrap(),
        )
        .env("KDIT_LOG", "debug")
        .args(&["--log-format", "json", "validate", "jobs"])
        .run();
    run.code(0);
    let lines: Vec<&str> = run.stderr.lines().filter(|l| !l.is_empty()).collect();
    assert!(lines.len() >= 2, "debug logging logs: {}", run.stderr);
    for l in lines {
        let v: serde_json::Value =
            serde_json::from_str(l).unwrap_or_else(|e| panic!("not a JSON log line ({e}): {l}"));
        assert!(
            v["level"].is_string() && v["fields"]["message"].is_string(),
            "{l}"
        );
    }
}

#[test]
fn text_logs_honour_no_color_and_quiet_silences_them() {
    let run = Kdit::new()
        .file(
            "jobs/a.yaml",
            std::fs::read(repo().join("examples/quickstart.yaml")).unwrap(),
        )
        .env("RUST_LOG", "debug")
        .args(&["validate", "jobs"])
        .run();
    run.code(0).stderr_has("kdit starting");
    assert!(
        !run.stderr.contains('\u{1b}'),
        "colour with NO_COLOR: {:?}",
        run.stderr
    );
    // --quiet lowers the default level to errors (an explicit level still wins).
    let quiet = Kdit::new()
        .file(
            "jobs/a.yaml",
            std::fs::read(repo().join("examples/quickstart.yaml")).unwrap(),
        )
        .args(&["-q", "validate", "jobs"])
        .run();
    quiet.code(0).stderr("");
}

#[test]
fn the_example_github_workflow_is_valid_yaml_running_validate_and_plan() {
    let text = std::fs::read_to_string(repo().join("examples/.github/workflows/kdit.yml")).unwrap();
    let doc: serde_json::Value = yaml_serde::from_str(&text).expect("valid YAML");
    assert!(doc["on"]["pull_request"].is_object(), "{doc}");
    assert!(text.contains("kdit validate --format github jobs/"));
    assert!(text.contains("kdit plan") && text.contains("--mask"));
}
