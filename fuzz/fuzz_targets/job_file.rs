//! Arbitrary bytes as a job file, through what `kdit validate` does with one: the loader
//! (size limit, UTF-8, YAML, positions, secrets, JSON Schema, typing), the compiler (with and
//! without the repository's `jobs/kdit.yaml` project), every rendering of the diagnostics,
//! and, for a job that compiles, the offline half of a run (`rows::prepare`: query render,
//! profile mapping).
//!
//! Never panics; every input either compiles or yields an error diagnostic with a message.
//! Seeds: `jobs/` and `tests/corpus/jobs/` (see `scripts/fuzz`).
#![no_main]

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use kdit::commands::validate::render;
use kdit::job::compile::{Project, compile};
use kdit::job::diagnostic::{Diagnostic, Format, Severity};
use kdit::job::load::{Kind, load_bytes};
use kdit::job::spec::JobSpec;
use kdit::job::workspace::{FileResult, Projects, Validation};
use libfuzzer_sys::fuzz_target;

/// The repository's `jobs/`: a job there resolves `file: queries/…` to the real stored queries.
fn jobs_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../jobs")
}

fn project() -> &'static Project {
    static PROJECT: OnceLock<Project> = OnceLock::new();
    PROJECT.get_or_init(|| {
        let (mut diags, mut files) = (Vec::new(), Vec::new());
        Projects::new()
            .load(&jobs_dir().join("kdit.yaml"), &mut diags, &mut files)
            .unwrap_or_else(|| panic!("jobs/kdit.yaml must load: {diags:?}"))
    })
}

fn check(diags: &[Diagnostic]) {
    for d in diags {
        assert!(!d.message.is_empty(), "empty message for `{}`", d.code);
        assert!(!d.code.is_empty(), "diagnostic without a code: {d:?}");
    }
}

fuzz_target!(|bytes: &[u8]| {
    let path = jobs_dir().join("fuzz-input.yaml");
    let loaded = load_bytes::<JobSpec>(&path, bytes.to_vec(), Kind::Job);
    check(&loaded.diagnostics);
    if loaded.spec.is_none() {
        assert!(
            loaded
                .diagnostics
                .iter()
                .any(|d| d.severity == Severity::Error),
            "no job and no error"
        );
    }
    for project in [None, Some(project())] {
        let (job, more) = compile(&loaded, project);
        check(&more);
        let diagnostics: Vec<Diagnostic> =
            loaded.diagnostics.iter().chain(&more).cloned().collect();
        let failed = diagnostics.iter().any(|d| d.severity == Severity::Error);
        assert!(
            job.is_some() || failed,
            "neither a job nor an error: {diagnostics:?}"
        );
        if let Some(job) = &job
            && !failed
        {
            // What `plan` does next, offline. It may refuse (e.g. a parameter the query
            // cannot bind), but never panic.
            let _ = kdit::rows::prepare(job);
        }
        let errors = diagnostics
            .iter()
            .filter(|d| d.severity == Severity::Error)
            .count();
        let v = Validation {
            files: vec![FileResult {
                path: path.clone(),
                kind: "job",
                errors,
                warnings: diagnostics.len() - errors,
            }],
            jobs: job.into_iter().filter(|_| !failed).collect(),
            diagnostics,
        };
        for format in [Format::Human, Format::Json, Format::Github] {
            let mut out = Vec::new();
            render(&v, format, &mut out).expect("rendering into memory cannot fail");
        }
    }
});
