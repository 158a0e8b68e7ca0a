//! The workspace: every job file and project file under the given paths, found, loaded and
//! checked offline, all problems reported at once (what `kdit validate` prints, and how the
//! other commands load their job).
//!
//! In: paths (files or folders). Out: a `Validation` (files, compiled jobs, diagnostics),
//! rendered by the `validate` command. Reads files through `load`; touches no database or
//! network.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::job::compile::{Job, Project, compile};
use crate::job::diagnostic::{Diagnostic, Severity};
use crate::job::load::{Kind, load};
use crate::job::spec::{JobSpec, ProjectSpec};

/// Names a project file may have.
pub const PROJECT_FILES: &[&str] = &["kdit.yaml", "kdit.yml"];

/// The result of validating a set of paths.
#[derive(Debug, Default)]
pub struct Validation {
    pub files: Vec<FileResult>,
    pub jobs: Vec<Job>,
    pub diagnostics: Vec<Diagnostic>,
}

/// One checked file.
#[derive(Debug, Clone, Serialize)]
pub struct FileResult {
    pub path: PathBuf,
    pub kind: &'static str,
    pub errors: usize,
    pub warnings: usize,
}

impl Validation {
    pub fn errors(&self) -> usize {
        self.diagnostics
            .iter()
            .filter(|d| d.severity == Severity::Error)
            .count()
    }
    pub fn warnings(&self) -> usize {
        self.diagnostics
            .iter()
            .filter(|d| d.severity == Severity::Warning)
            .count()
    }
}

/// A path that could not be searched (a usage error, not an invalid job).
#[derive(Debug, thiserror::Error)]
#[error("{path}: {reason}")]
pub struct PathError {
    pub path: String,
    pub reason: String,
}

/// Finds the job files under `paths`: files as given, folders searched for `*.yaml`/`*.yml`.
pub fn discover(paths: &[PathBuf]) -> Result<(Vec<PathBuf>, Vec<PathBuf>), PathError> {
    let mut jobs = Vec::new();
    let mut projects = Vec::new();
    for path in paths {
        let meta = std::fs::metadata(path).map_err(|e| PathError {
            path: path.display().to_string(),
            reason: if e.kind() == std::io::ErrorKind::NotFound {
                "no such file or folder".into()
            } else {
                e.to_string()
            },
        })?;
        if meta.is_dir() {
            walk(path, &mut jobs, &mut projects).map_err(|e| PathError {
                path: path.display().to_string(),
                reason: e.to_string(),
            })?;
        } else if is_project_file(path) {
            projects.push(path.clone());
        } else {
            jobs.push(path.clone());
        }
    }
    jobs.sort();
    jobs.dedup();
    projects.sort();
    projects.dedup();
    Ok((jobs, projects))
}

fn is_project_file(path: &Path) -> bool {
    path.file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| PROJECT_FILES.contains(&n))
}

fn walk(dir: &Path, jobs: &mut Vec<PathBuf>, projects: &mut Vec<PathBuf>) -> std::io::Result<()> {
    let mut entries: Vec<_> = std::fs::read_dir(dir)?.collect::<Result<_, _>>()?;
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let path = entry.path();
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with('.') {
            continue;
        }
        let ft = entry.file_type()?;
        if ft.is_dir() {
            walk(&path, jobs, projects)?;
        } else if name.ends_with(".yaml") || name.ends_with(".yml") {
            if is_project_file(&path) {
                projects.push(path);
            } else {
                jobs.push(path);
            }
        }
    }
    Ok(())
}

/// The project file that governs `job`: the nearest `kdit.yaml` in its folder or above.
pub fn find_project_file(job: &Path) -> Option<PathBuf> {
    let abs = std::path::absolute(job).ok()?;
    let mut dir = abs.parent();
    while let Some(d) = dir {
        for name in PROJECT_FILES {
            let candidate = d.join(name);
            if candidate.is_file() {
                // Keep the path as the user would write it, relative when possible.
                let cwd = std::env::current_dir().ok();
                return Some(
                    cwd.and_then(|c| candidate.strip_prefix(&c).ok().map(Path::to_path_buf))
                        .unwrap_or(candidate),
                );
            }
        }
        if d.join(".git").exists() {
            break;
        }
        dir = d.parent();
    }
    None
}

/// Loads and checks a project file, once per path.
pub struct Projects {
    cache: HashMap<PathBuf, Option<Project>>,
}

impl Projects {
    pub fn new() -> Projects {
        Projects {
            cache: HashMap::new(),
        }
    }

    /// The project governing `job`, loading it (and recording its diagnostics) the first time.
    pub fn for_job(
        &mut self,
        job: &Path,
        diags: &mut Vec<Diagnostic>,
        files: &mut Vec<FileResult>,
    ) -> Option<Project> {
        let path = find_project_file(job)?;
        self.load(&path, diags, files)
    }

    pub fn load(
        &mut self,
        path: &Path,
        diags: &mut Vec<Diagnostic>,
        files: &mut Vec<FileResult>,
    ) -> Option<Project> {
        if let Some(p) = self.cache.get(path) {
            return p.clone();
        }
        let loaded = load::<ProjectSpec>(path, Kind::Project);
        let mut d = loaded.diagnostics;
        if let Some(spec) = &loaded.spec {
            check_project(spec, path, &loaded.file.text, &loaded.map, &mut d);
        }
        files.push(file_result(path, "project", &d));
        let ok = !d.iter().any(|x| x.severity == Severity::Error);
        diags.extend(d);
        let project = loaded.spec.filter(|_| ok).map(|spec| Project {
            path: path.to_path_buf(),
            spec,
        });
        self.cache.insert(path.to_path_buf(), project.clone());
        project
    }
}

impl Default for Projects {
    fn default() -> Self {
        Projects::new()
    }
}

fn check_project(
    spec: &ProjectSpec,
    path: &Path,
    text: &str,
    map: &crate::job::load::SourceMap,
    out: &mut Vec<Diagnostic>,
) {
    let Some(catalog) = &spec.tags else { return };
    let at = |d: Diagnostic, pointer: &str| {
        let (l, c, w) = map.value(pointer);
        d.at(text, l, c, w)
    };
    if catalog.groups.len() > 50 {
        out.push(at(
            Diagnostic::error(
                "tag-limit",
                path,
                format!("{} tag groups; Klaviyo allows 50", catalog.groups.len()),
            ),
            "/tags/groups",
        ));
    }
    let total: usize = catalog.groups.iter().map(|g| g.tags.len()).sum();
    if total > 500 {
        out.push(at(
            Diagnostic::error(
                "tag-limit",
                path,
                format!("{total} tags; Klaviyo allows 500 per account"),
            ),
            "/tags/groups",
        ));
    }
    let mut groups: HashMap<&str, (usize, bool)> = HashMap::new();
    for (g, group) in catalog.groups.iter().enumerate() {
        let Some((first, exclusive)) = groups.insert(group.name.as_str(), (g, group.exclusive))
        else {
            continue;
        };
        let (line, _, _) = map.value(&format!("/tags/groups/{first}/name"));
        let message = if exclusive == group.exclusive {
            format!("tag group `{}` is declared twice", group.name)
        } else {
            format!(
                "tag group `{}` is declared twice, once exclusive and once not",
                group.name
            )
        };
        out.push(at(
            Diagnostic::error("duplicate-tag-group", path, message).hint(format!(
                "first declared on line {line}; merge the two (Klaviyo fixes a group's `exclusive` when it is created and cannot change it)"
            )),
            &format!("/tags/groups/{g}/name"),
        ));
    }
    let mut seen: HashMap<&str, String> = HashMap::new();
    for (g, group) in catalog.groups.iter().enumerate() {
        for (t, tag) in group.tags.iter().enumerate() {
            let pointer = format!("/tags/groups/{g}/tags/{t}");
            if let Some(first) = seen.insert(tag.as_str(), group.name.clone()) {
                out.push(at(
                    Diagnostic::error(
                        "duplicate-tag",
                        path,
                        format!("tag `{tag}` is listed twice"),
                    )
                    .hint(format!(
                        "it is already in group `{first}`; a tag belongs to one group"
                    )),
                    &pointer,
                ));
            }
        }
    }
}

fn file_result(path: &Path, kind: &'static str, diags: &[Diagnostic]) -> FileResult {
    FileResult {
        path: path.to_path_buf(),
        kind,
        errors: diags
            .iter()
            .filter(|d| d.severity == Severity::Error)
            .count(),
        warnings: diags
            .iter()
            .filter(|d| d.severity == Severity::Warning)
            .count(),
    }
}

/// Validates every file under `paths`.
pub fn validate(paths: &[PathBuf]) -> Result<Validation, PathError> {
    let (job_paths, project_paths) = discover(paths)?;
    let mut v = Validation::default();
    let mut projects = Projects::new();
    for p in &project_paths {
        projects.load(p, &mut v.diagnostics, &mut v.files);
    }
    let mut names: HashMap<String, PathBuf> = HashMap::new();
    for path in &job_paths {
        let project = projects.for_job(path, &mut v.diagnostics, &mut v.files);
        let loaded = load::<JobSpec>(path, Kind::Job);
        let mut diags = loaded.diagnostics.clone();
        let (job, more) = compile(&loaded, project.as_ref());
        diags.extend(more);
        if let Some(spec) = &loaded.spec {
            if let Some(first) = names.get(&spec.name) {
                diags.push(
                    loaded.at_value(
                        Diagnostic::error(
                            "duplicate-job-name",
                            path,
                            format!("job name `{}` is already used", spec.name),
                        )
                        .hint(format!(
                            "by {}; names key state and locks, so each job needs its own",
                            first.display()
                        )),
                        "/name",
                    ),
                );
            } else {
                names.insert(spec.name.clone(), path.clone());
            }
        }
        v.files.push(file_result(path, "job", &diags));
        if let Some(job) = job
            && !diags.iter().any(|d| d.severity == Severity::Error)
        {
            v.jobs.push(job);
        }
        v.diagnostics.extend(diags);
    }
    Ok(v)
}
