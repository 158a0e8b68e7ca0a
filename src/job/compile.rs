//! Spec → Job: the meaning checks no schema can express, and the checked job later stages use.
//!
//! In: a loaded job file (typed spec + source map) and its project, if any. Out: a `Job` and
//! every problem found, each located in the job file (or in the stored query file). Reads the
//! stored query file (through `load::read_query`; nothing else reads it); otherwise pure.
//! The `Job` holds everything the rows need: the parsed query, the compiled profile mapping
//! (`profiles`), the timeout and guards, the project's defaults merged in here once.
//!
//! `compile` runs one `Compiler` section after another (query, profile fields, lists, tags,
//! exclusive tag groups, segments, consent, batch and guards); the diagnostics come out in
//! that order.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use crate::job::attributes::FieldPath;
use crate::job::diagnostic::{Diagnostic, Severity};
use crate::job::load::{Loaded, MAX_FILE_BYTES, ReadQueryError, pointer_join, read_query};
use crate::job::profiles::{Mapping, with_carrier};
use crate::job::query::{QueryError, QueryProblem, StoredQuery};
use crate::job::spec::{
    Defaults, GuardsSpec, JobSpec, ListMode, ProfileKey, ProfilesSpec, ProjectSpec, Threshold,
    Transform,
};

/// Klaviyo's cap on profiles per bulk import job.
pub const MAX_BATCH: u64 = 10_000;
/// kdit's default bulk import size.
pub const DEFAULT_BATCH: u64 = 10_000;
/// Bulk import jobs in flight by default.
pub const DEFAULT_CONCURRENCY: u64 = 4;
/// Default profile property holding profile tags.
pub const DEFAULT_TAG_PROPERTY: &str = "kdit_tags";

/// A project file with its location.
#[derive(Debug, Clone)]
pub struct Project {
    pub path: PathBuf,
    pub spec: ProjectSpec,
}

impl Project {
    /// Every tag the catalog defines, when the project has a catalog.
    pub fn catalog(&self) -> Option<BTreeSet<&str>> {
        self.spec.tags.as_ref().map(|c| {
            c.groups
                .iter()
                .flat_map(|g| g.tags.iter().map(String::as_str))
                .collect()
        })
    }
}

/// A checked job, ready for the source and the diff.
#[derive(Debug, Clone)]
pub struct Job {
    pub spec: JobSpec,
    pub path: PathBuf,
    /// The stored query file, when the job uses one.
    pub query_file: Option<PathBuf>,
    /// The query parsed, labelled as the job file names it (its file, or `inline SQL`); an
    /// error only for what `validate` lets through (an empty query file).
    pub query: Result<StoredQuery, QueryError>,
    /// The profile mapping the rows are read with: the job's fields, project defaults
    /// merged, `query.columns` required, plus the hidden consent fields when the job reads
    /// consent from columns (`profiles::with_carrier`).
    pub mapping: Arc<Mapping>,
    /// The `profiles` section `mapping` was compiled from (the hidden consent fields
    /// included): part of the row-fingerprint recipe.
    pub read_profiles: ProfilesSpec,
    /// The mapping as the job file writes it (no hidden consent fields), for `preview` and
    /// `check`; the same mapping when the job reads no consent columns.
    pub shown_mapping: Arc<Mapping>,
    /// `query.timeout`, else the project's default.
    pub timeout: Option<Duration>,
    /// `guards.max_invalid`, else the project's default's.
    pub max_invalid: Option<Threshold>,
    pub key: ProfileKey,
    pub batch_size: u64,
    pub concurrency: u64,
    pub guards: GuardsSpec,
    pub tag_property: String,
    pub project: Option<Project>,
}

impl Job {
    pub fn name(&self) -> &str {
        &self.spec.name
    }

    /// Lists this job mirrors (it removes members whose rows left the query).
    pub fn mirrored_lists(&self) -> impl Iterator<Item = &str> {
        self.spec
            .lists
            .iter()
            .filter(|l| l.mode == ListMode::Mirror)
            .map(|l| l.name.as_str())
    }
}

/// Checks a loaded job. Returns the job when there were no errors. Each section adds its
/// problems in turn, so diagnostics come out in this order.
pub fn compile(
    loaded: &Loaded<JobSpec>,
    project: Option<&Project>,
) -> (Option<Job>, Vec<Diagnostic>) {
    let Some(spec) = &loaded.spec else {
        return (None, Vec::new());
    };
    let mut c = Compiler::new(loaded, spec, project);
    let (query_file, query) = c.query();
    c.profile_fields();
    let mappings = c.mappings();
    c.lists();
    c.tags();
    c.exclusive_groups();
    c.segments();
    c.consent();
    let (batch_size, concurrency, guards, tag_property) = c.batch_and_guards();

    let out = c.out;
    let has_errors = out.iter().any(|d| d.severity == Severity::Error);
    let defaults = project.and_then(|p| p.spec.defaults.as_ref());
    let job = (!has_errors).then_some(mappings).flatten().map(
        |(read_profiles, mapping, shown_mapping)| Job {
            spec: spec.clone(),
            path: loaded.file.path.clone(),
            query_file,
            query,
            read_profiles,
            mapping,
            shown_mapping,
            timeout: spec
                .query
                .timeout
                .or(defaults.and_then(|d| d.timeout))
                .map(|d| d.0),
            max_invalid: spec
                .guards
                .as_ref()
                .and_then(|g| g.max_invalid)
                .or(defaults.and_then(|d| d.guards.as_ref().and_then(|g| g.max_invalid))),
            key: spec.profiles.key,
            batch_size,
            concurrency,
            guards,
            tag_property,
            project: project.cloned(),
        },
    );
    (job, out)
}

/// One job being checked: the loaded file, its spec, the project with its defaults, and the
/// problems found so far.
struct Compiler<'a> {
    loaded: &'a Loaded<JobSpec>,
    spec: &'a JobSpec,
    project: Option<&'a Project>,
    defaults: Defaults,
    out: Vec<Diagnostic>,
}

impl<'a> Compiler<'a> {
    fn new(loaded: &'a Loaded<JobSpec>, spec: &'a JobSpec, project: Option<&'a Project>) -> Self {
        let defaults = project
            .and_then(|p| p.spec.defaults.clone())
            .unwrap_or_default();
        Compiler {
            loaded,
            spec,
            project,
            defaults,
            out: Vec::new(),
        }
    }

    /// An error located in the job file.
    fn err(&self, code: &'static str, msg: String) -> Diagnostic {
        Diagnostic::error(code, &self.loaded.file.path, msg)
    }

    /// The query: its source (file or inline SQL), timeout, and the stored query's own
    /// problems with the job's parameters. Gives the query file and the parsed query.
    fn query(&mut self) -> (Option<PathBuf>, Result<StoredQuery, QueryError>) {
        let (loaded, spec) = (self.loaded, self.spec);
        let path = loaded.file.path.as_path();
        let mut query_file = None;
        let mut query_text = String::new();
        match (&spec.query.file, &spec.query.sql) {
            (Some(_), Some(_)) => self.out.push(
                loaded.at_key(
                    self.err("query-source", "the query has both `file` and `sql`".into())
                        .hint("keep one: a stored query file, or inline SQL"),
                    "/query/sql",
                ),
            ),
            (None, None) => self.out.push(
                loaded.at_key(
                    self.err(
                        "query-source",
                        "the query has neither `file` nor `sql`".into(),
                    )
                    .hint("add `file: queries/<name>.sql` (a stored query) or `sql: \"select …\"`"),
                    "/query",
                ),
            ),
            (Some(file), None) => {
                let resolved = resolve_relative(path, file);
                match read_query(&resolved) {
                    Ok(text) => {
                        query_text = text;
                        query_file = Some(resolved);
                    }
                    Err(ReadQueryError::TooLarge(bytes)) => self.out.push(
                        loaded.at_value(
                            self.err(
                                "file-too-large",
                                format!(
                                    "query file `{file}` is {bytes} bytes or more; kdit reads \
                                     stored queries of at most {MAX_FILE_BYTES} bytes"
                                ),
                            )
                            .hint("is this really a stored query? Data belongs in PostgreSQL"),
                            "/query/file",
                        ),
                    ),
                    Err(e) => self.out.push(
                        loaded.at_value(
                            self.err(
                                "query-file-missing",
                                format!(
                                    "query file `{file}` cannot be read: {}",
                                    match &e {
                                        ReadQueryError::Io(e) => io_reason(e),
                                        _ => "not a regular file".into(),
                                    }
                                ),
                            )
                            .hint(format!(
                                "paths are relative to the job file; looked for {}",
                                resolved.display()
                            )),
                            "/query/file",
                        ),
                    ),
                }
            }
            (None, Some(sql)) => query_text = sql.clone(),
        }
        if let Some(t) = spec.query.timeout
            && t.0.is_zero()
        {
            self.out.push(
                loaded.at_value(
                    self.err(
                        "invalid-value",
                        "`query.timeout` must be longer than zero".into(),
                    )
                    .hint("e.g. `timeout: 2m`"),
                    "/query/timeout",
                ),
            );
        }
        let parsed = match &query_file {
            Some(f) => StoredQuery::parse(f.display().to_string(), &query_text),
            None => StoredQuery::inline(&query_text),
        };
        if !query_text.is_empty() {
            let problems = match &parsed {
                Ok(q) => q.check(&spec.query.params),
                Err(e) => e.problems().to_vec(),
            };
            for problem in problems {
                self.out.push(query_diagnostic(
                    loaded,
                    query_file.as_deref(),
                    &query_text,
                    problem,
                ));
            }
        }
        // The rows' query is labelled as the job file names it.
        let parsed = match (&spec.query.file, parsed) {
            (Some(file), Ok(mut q)) => {
                q.label = file.clone();
                Ok(q)
            }
            (Some(file), Err(QueryError::Invalid { problems, .. })) => Err(QueryError::Invalid {
                label: file.clone(),
                problems,
            }),
            (None, parsed) => parsed,
        };
        (query_file, parsed)
    }

    /// The profile fields: names, sources, templates, phone regions, null policy, and the key.
    fn profile_fields(&mut self) {
        let (loaded, spec) = (self.loaded, self.spec);
        let defaults = &self.defaults;
        let mut columns: BTreeSet<String> = spec.query.columns.iter().cloned().collect();
        for source in spec.profiles.fields.values() {
            if let Some(c) = &source.mapping().column {
                columns.insert(c.clone());
            }
        }
        let job_region = spec
            .profiles
            .default_region
            .clone()
            .or(defaults.default_region.clone());
        if let Some(r) = &spec.profiles.default_region {
            check_region(loaded, &mut self.out, r, "/profiles/default_region");
        }
        for (key, source) in &spec.profiles.fields {
            let pointer = pointer_join("/profiles/fields", key);
            let fpath = match FieldPath::parse(key) {
                Ok(p) => p,
                Err(e) => {
                    let code = if key.starts_with("properties") {
                        "malformed-property"
                    } else {
                        "unknown-attribute"
                    };
                    self.out
                        .push(loaded.at_key(self.err(code, e.message).hint(e.hint), &pointer));
                    continue;
                }
            };
            if let FieldPath::Property(parts) = &fpath
                && parts.first().map(String::as_str)
                    == Some(crate::job::attributes::CONSENT_CARRIER)
            {
                self.out.push(loaded.at_key(
                    self.err(
                        "reserved-property",
                        format!("`properties.{}` is reserved for kdit's consent bookkeeping", crate::job::attributes::CONSENT_CARRIER),
                    )
                    .hint("pick another property name; consent columns go under `consent:` (`consented_at`, `unsubscribe_column`)"),
                    &pointer,
                ));
                continue;
            }
            let mapping = source.mapping().into_owned();
            let given = [
                mapping.column.is_some(),
                mapping.template.is_some(),
                mapping.value.is_some(),
            ]
            .iter()
            .filter(|b| **b)
            .count();
            if given != 1 {
                self.out.push(loaded.at_key(
                    self.err(
                        "field-source",
                        format!(
                            "field `{key}` needs exactly one of `column`, `template` or `value` ({given} given)"
                        ),
                    )
                    .hint("e.g. `first_name: { column: first_name, transform: trim }`"),
                    &pointer,
                ));
            }
            if let Some(template) = &mapping.template {
                check_template(
                    loaded,
                    &mut self.out,
                    template,
                    &columns,
                    &pointer_join(&pointer, "template"),
                );
            }
            if let Some(r) = &mapping.default_region {
                check_region(
                    loaded,
                    &mut self.out,
                    r,
                    &pointer_join(&pointer, "default_region"),
                );
            }
            let region = mapping.default_region.clone().or(job_region.clone());
            if mapping.transform.as_slice().contains(&Transform::E164) && region.is_none() {
                self.out.push(
                    loaded.at_value(
                        self.err(
                            "phone-region",
                            format!("field `{key}` uses the `e164` transform but no region is set"),
                        )
                        .hint(
                            "add `default_region: US` (ISO country code) to the field or to `profiles`",
                        ),
                        &pointer,
                    ),
                );
            }
        }
        let key = spec.profiles.key;
        if !spec.profiles.fields.contains_key(key.field()) {
            self.out.push(
                loaded.at_value(
                    self.err(
                        "key-not-mapped",
                        format!("the profile key is `{key}` but no field maps `{key}`"),
                    )
                    .hint(format!("add `{key}: <column>` under `profiles.fields`")),
                    "/profiles/key",
                ),
            );
        }
    }

    /// The profile mapping, compiled once (`profiles::Mapping::compile`) when the checks so
    /// far found no error: the one the rows are read with (hidden consent fields included)
    /// and the one the job file writes. What only the compiler catches (an empty column name)
    /// is reported at its field.
    fn mappings(&mut self) -> Option<(ProfilesSpec, Arc<Mapping>, Arc<Mapping>)> {
        if self.out.iter().any(|d| d.severity == Severity::Error) {
            return None;
        }
        let (loaded, spec) = (self.loaded, self.spec);
        let defaults = self.project.and_then(|p| p.spec.defaults.as_ref());
        let compile = |profiles| {
            Mapping::compile(profiles, defaults)
                .map(|m| Arc::new(m.with_extra_columns(&spec.query.columns)))
        };
        let read = with_carrier(spec).profiles;
        let both = compile(&read).and_then(|mapping| {
            let shown = if read.fields.len() == spec.profiles.fields.len() {
                mapping.clone()
            } else {
                compile(&spec.profiles)?
            };
            Ok((mapping, shown))
        });
        match both {
            Ok((mapping, shown)) => Some((read, mapping, shown)),
            Err(errors) => {
                for e in errors {
                    let pointer = if e.field == "default_region" {
                        "/profiles/default_region".to_string()
                    } else {
                        pointer_join("/profiles/fields", &e.field)
                    };
                    let mut d = self.err("field-source", e.message);
                    if let Some(h) = e.hint {
                        d = d.hint(h);
                    }
                    self.out.push(loaded.at_key(d, &pointer));
                }
                None
            }
        }
    }

    /// Lists: names present and unique, and at most 64.
    fn lists(&mut self) {
        let (loaded, spec) = (self.loaded, self.spec);
        let mut seen: HashMap<String, usize> = HashMap::new();
        for (i, list) in spec.lists.iter().enumerate() {
            let pointer = format!("/lists/{i}/name");
            if list.name.trim().is_empty() {
                self.out.push(loaded.at_value(
                    self.err("invalid-value", "a list name is empty".into()),
                    &pointer,
                ));
                continue;
            }
            let norm = list.name.trim().to_lowercase();
            if let Some(first) = seen.get(&norm) {
                let (line, _, _) = loaded.map.value(&format!("/lists/{first}/name"));
                self.out.push(
                    loaded.at_value(
                        self.err(
                            "duplicate-list",
                            format!("list `{}` is named twice", list.name),
                        )
                        .hint(format!(
                            "first named on line {line}; a job manages each list once"
                        )),
                        &pointer,
                    ),
                );
            } else {
                seen.insert(norm, i);
            }
        }

        if spec.lists.len() > 64 {
            self.out.push(
                loaded.at_key(
                    self.err(
                        "too-many-lists",
                        format!(
                            "the job manages {} lists; kdit handles at most 64 per job",
                            spec.lists.len()
                        ),
                    )
                    .hint("split the job: one job per group of lists"),
                    "/lists",
                ),
            );
        }
    }

    /// Tags: each in the project's catalog, when it has one.
    fn tags(&mut self) {
        let (loaded, spec) = (self.loaded, self.spec);
        let project = self.project;
        let catalog = project.and_then(Project::catalog);
        for (group, tags) in [
            ("profiles", &spec.tags.profiles),
            ("lists", &spec.tags.lists),
            ("segments", &spec.tags.segments),
        ] {
            for (i, tag) in tags.iter().enumerate() {
                let pointer = format!("/tags/{group}/{i}");
                match &catalog {
                    Some(cat) if !cat.contains(tag.as_str()) => {
                        let all: Vec<&str> = cat.iter().copied().collect();
                        let hint = match crate::job::attributes::suggest(tag, &all) {
                            Some(s) => format!(
                                "did you mean `{s}`? Or add `{tag}` to the catalog in {}",
                                project_name(project)
                            ),
                            None => format!(
                                "add `{tag}` to the tag catalog in {}",
                                project_name(project)
                            ),
                        };
                        self.out.push(
                            loaded.at_value(
                                self.err(
                                    "unknown-tag",
                                    format!("tag `{tag}` is not in the project's tag catalog"),
                                )
                                .hint(hint),
                                &pointer,
                            ),
                        );
                    }
                    _ => {}
                }
            }
        }
    }

    /// An exclusive tag group allows one of its tags per list or segment.
    fn exclusive_groups(&mut self) {
        let (loaded, spec) = (self.loaded, self.spec);
        let project = self.project;
        if let Some(catalog) = project.and_then(|p| p.spec.tags.as_ref()) {
            for (group, tags) in [
                ("lists", &spec.tags.lists),
                ("segments", &spec.tags.segments),
            ] {
                for g in catalog.groups.iter().filter(|g| g.exclusive) {
                    let from: Vec<(usize, &String)> = tags
                        .iter()
                        .enumerate()
                        .filter(|(_, t)| g.tags.contains(t))
                        .collect();
                    if let [_, (i, second), ..] = from.as_slice() {
                        self.out.push(loaded.at_value(
                            self.err(
                                "exclusive-tags",
                                format!(
                                    "tag group `{}` is exclusive: one of its tags per list or segment, and `tags.{group}` has `{}` and `{second}`",
                                    g.name, from[0].1
                                ),
                            )
                            .hint("keep one of them"),
                            &format!("/tags/{group}/{i}"),
                        ));
                    }
                }
            }
        }
    }

    /// Segments: unique names, condition count and syntax, and the lists and properties the
    /// conditions name; `tags.segments` needs segments to tag.
    fn segments(&mut self) {
        let (loaded, spec) = (self.loaded, self.spec);
        if !spec.tags.segments.is_empty() && spec.segments.is_empty() {
            self.out.push(
                loaded.at_key(
                    self.err(
                        "tags-without-segments",
                        "`tags.segments` is set but the job defines no segments".into(),
                    )
                    .warning(),
                    "/tags/segments",
                ),
            );
        }

        let job_lists: BTreeSet<String> = spec.lists.iter().map(|l| l.name.clone()).collect();
        let mut seen_segments: HashMap<String, usize> = HashMap::new();
        for (i, segment) in spec.segments.iter().enumerate() {
            if let Some(first) = seen_segments.insert(segment.name.to_lowercase(), i) {
                let (line, _, _) = loaded.map.value(&format!("/segments/{first}/name"));
                self.out.push(
                    loaded.at_value(
                        self.err(
                            "duplicate-segment",
                            format!("segment `{}` is defined twice", segment.name),
                        )
                        .hint(format!("first defined on line {line}")),
                        &format!("/segments/{i}/name"),
                    ),
                );
            }
            let count = crate::job::segment::condition_count(segment);
            if count > crate::job::segment::MAX_CONDITIONS {
                self.out.push(loaded.at_key(
                    self.err(
                        "too-many-conditions",
                        format!(
                            "segment `{}` has {count} conditions; Klaviyo allows at most {}",
                            segment.name,
                            crate::job::segment::MAX_CONDITIONS
                        ),
                    )
                    .hint("split it into several segments, or use `in [\"a\", \"b\"]` for several values"),
                    &format!("/segments/{i}/definition"),
                ));
            }
            if segment.definition.all.is_empty() {
                self.out.push(
                    loaded.at_key(
                        self.err(
                            "empty-segment",
                            format!("segment `{}` has no conditions", segment.name),
                        )
                        .hint("add at least one condition under `definition.all`"),
                        &format!("/segments/{i}/definition/all"),
                    ),
                );
            }
            for (g, group) in segment.definition.all.iter().enumerate() {
                let conditions: Vec<(String, &str)> = match group {
                    crate::job::spec::ConditionGroupSpec::One(c) => {
                        vec![(format!("/segments/{i}/definition/all/{g}"), c.as_str())]
                    }
                    crate::job::spec::ConditionGroupSpec::Any(a) => a
                        .any
                        .iter()
                        .enumerate()
                        .map(|(j, c)| {
                            (
                                format!("/segments/{i}/definition/all/{g}/any/{j}"),
                                c.as_str(),
                            )
                        })
                        .collect(),
                };
                for (pointer, text) in conditions {
                    match crate::job::segment::parse_condition(text) {
                        Ok(cond) => {
                            if let Some(list) = cond.list_name()
                                && !job_lists.contains(list)
                            {
                                self.out.push(loaded.at_value(
                                    self.err("unknown-list", format!("the condition refers to list `{list}`, which this job does not manage"))
                                        .hint(format!("lists of this job: {}", if job_lists.is_empty() { "none".to_string() } else { job_lists.iter().cloned().collect::<Vec<_>>().join(", ") })),
                                    &pointer,
                                ));
                            }
                            if let Some(prop) = cond.custom_property()
                                && !sets_property(spec, prop)
                            {
                                self.out.push(loaded.at_value(
                                    self.err("unknown-property", format!("the condition uses `properties.{prop}`, which this job never sets"))
                                        .hint("map it under `profiles.fields`, or check the spelling")
                                        .warning(),
                                    &pointer,
                                ));
                            }
                        }
                        Err(e) => self.out.push(loaded.at_value(
                            self.err("segment-condition", e.message).hint(e.hint),
                            &pointer,
                        )),
                    }
                }
            }
        }
    }

    /// Consent: the columns and channels fit together.
    fn consent(&mut self) {
        let (loaded, spec) = (self.loaded, self.spec);
        if let Some(consent) = &spec.consent {
            if !consent.unsubscribe.is_empty() && consent.unsubscribe_column.is_none() {
                self.out.push(
                    loaded.at_key(
                        self.err(
                            "consent",
                            "`consent.unsubscribe` needs `unsubscribe_column`".into(),
                        )
                        .hint("name the boolean column that says a row's profile withdrew consent"),
                        "/consent/unsubscribe",
                    ),
                );
            }
            if consent.consented_at.is_some() && consent.subscribe.is_empty() {
                self.out.push(
                    loaded.at_key(
                        self.err(
                            "consent",
                            "`consent.consented_at` is set but `consent.subscribe` names no channel".into(),
                        )
                        .hint("`consented_at` dates the subscriptions of a historical import: add `subscribe: [email]` (or `sms`), or remove it"),
                        "/consent/consented_at",
                    ),
                );
            }
            if consent.unsubscribe_column.is_some() && consent.unsubscribe.is_empty() {
                self.out.push(
                    loaded.at_key(
                        self.err(
                            "consent",
                            "`consent.unsubscribe_column` is set but `consent.unsubscribe` names no channel".into(),
                        )
                        .hint("kdit unsubscribes only from channels a job names explicitly: add `unsubscribe: [email]` (or `sms`), or remove the column"),
                        "/consent/unsubscribe_column",
                    ),
                );
            }
            for (key, pointer) in [
                (&consent.consented_at, "/consent/consented_at"),
                (&consent.unsubscribe_column, "/consent/unsubscribe_column"),
            ] {
                if key.as_deref().is_some_and(|c| c.trim().is_empty()) {
                    self.out.push(
                        loaded.at_value(
                            self.err("consent", "the column name is empty".into())
                                .hint("name a column the query returns"),
                            pointer,
                        ),
                    );
                }
            }
            if consent.subscribe.is_empty() && consent.unsubscribe.is_empty() {
                self.out.push(
                    loaded.at_key(
                        self.err(
                            "consent",
                            "`consent` is set but subscribes and unsubscribes nothing".into(),
                        )
                        .warning(),
                        "/consent",
                    ),
                );
            }
        }
    }

    /// Batch size (at most Klaviyo's cap) and concurrency, guards and the tag property, each
    /// from the job, then the project's defaults, then kdit's.
    fn batch_and_guards(&mut self) -> (u64, u64, GuardsSpec, String) {
        let (loaded, spec) = (self.loaded, self.spec);
        let (project, defaults) = (self.project, &self.defaults);
        let batch = spec
            .batch
            .clone()
            .or(defaults.batch.clone())
            .unwrap_or_default();
        let batch_size = batch.size.unwrap_or(DEFAULT_BATCH);
        if batch_size > MAX_BATCH {
            self.out.push(loaded.at_value(
                self.err(
                    "batch-too-large",
                    format!("batch size {batch_size} is above Klaviyo's limit of {MAX_BATCH} profiles per bulk import job"),
                )
                .hint(format!("use `size: {MAX_BATCH}` or less")),
                "/batch/size",
            ));
        }
        let guards = spec
            .guards
            .clone()
            .or(defaults.guards.clone())
            .unwrap_or_default();
        let tag_property = spec
            .tags
            .property
            .clone()
            .or_else(|| project.and_then(|p| p.spec.tags.as_ref()?.profile_property.clone()))
            .unwrap_or_else(|| DEFAULT_TAG_PROPERTY.to_string());
        let concurrency = batch.concurrency.unwrap_or(DEFAULT_CONCURRENCY);
        (batch_size, concurrency, guards, tag_property)
    }
}

/// Places a stored-query problem: in the `.sql` file at its line, or in the job file.
fn query_diagnostic(
    loaded: &Loaded<JobSpec>,
    query_file: Option<&Path>,
    query_text: &str,
    problem: QueryProblem,
) -> Diagnostic {
    // A problem about a parameter the job sets points at that parameter.
    let param = loaded.spec.as_ref().and_then(|spec| {
        spec.query
            .params
            .keys()
            .find(|k| problem.message.contains(&format!("`{k}`")))
            .cloned()
    });
    let file = match (query_file, problem.line) {
        (Some(f), Some(_)) => f,
        _ => loaded.file.path.as_path(),
    };
    let mut d = Diagnostic::error("query", file, problem.message);
    if let Some(h) = problem.hint {
        d = d.hint(h);
    }
    match (query_file, problem.line) {
        (Some(_), Some(line)) => d.at(query_text, line, 1, 1),
        (_, None) if param.is_some() => loaded.at_key(
            d,
            &pointer_join("/query/params", param.as_deref().unwrap_or_default()),
        ),
        (Some(_), None) => loaded.at_value(d, "/query/file"),
        (None, Some(line)) => {
            // Inline SQL in a block scalar (`sql: |`) starts on the line after the key.
            let (key_line, _, _) = loaded.map.key("/query/sql");
            let (value_line, _, _) = loaded.map.value("/query/sql");
            let key_text = loaded
                .file
                .text
                .lines()
                .nth(key_line.saturating_sub(1))
                .unwrap_or("");
            let block = key_text.trim_end().ends_with(['|', '>', '-', '+']);
            let at = if block {
                key_line + line
            } else if value_line == key_line {
                key_line
            } else {
                value_line + line - 1
            };
            d.at(&loaded.file.text, at, 1, 1)
        }
        (None, None) => loaded.at_value(d, "/query/sql"),
    }
}

fn sets_property(spec: &JobSpec, prop: &str) -> bool {
    let tag_prop = spec
        .tags
        .property
        .as_deref()
        .unwrap_or(DEFAULT_TAG_PROPERTY);
    (prop == tag_prop && !spec.tags.profiles.is_empty())
        || spec.profiles.fields.keys().any(|k| {
            k.strip_prefix("properties.")
                .is_some_and(|p| p == prop || p.starts_with(&format!("{prop}.")))
        })
}

fn project_name(project: Option<&Project>) -> String {
    project
        .map(|p| p.path.display().to_string())
        .unwrap_or_else(|| "kdit.yaml".into())
}

fn io_reason(e: &std::io::Error) -> String {
    match e.kind() {
        std::io::ErrorKind::NotFound => "no such file".into(),
        std::io::ErrorKind::PermissionDenied => "permission denied".into(),
        _ => e.to_string(),
    }
}

/// A path in a job file, relative to the job file's folder.
pub fn resolve_relative(job_path: &Path, relative: &str) -> PathBuf {
    let rel = Path::new(relative);
    if rel.is_absolute() {
        rel.to_path_buf()
    } else {
        job_path.parent().unwrap_or(Path::new(".")).join(rel)
    }
}

fn check_region(loaded: &Loaded<JobSpec>, out: &mut Vec<Diagnostic>, region: &str, pointer: &str) {
    if region.parse::<phonenumber::country::Id>().is_err() {
        out.push(
            loaded.at_value(
                Diagnostic::error(
                    "phone-region",
                    &loaded.file.path,
                    format!("`{region}` is not a country code phone numbers know"),
                )
                .hint("use an ISO 3166 alpha-2 code in capitals, e.g. `US`, `GB`, `DE`"),
                pointer,
            ),
        );
    }
}

fn check_template(
    loaded: &Loaded<JobSpec>,
    out: &mut Vec<Diagnostic>,
    template: &str,
    columns: &BTreeSet<String>,
    pointer: &str,
) {
    let env = minijinja::Environment::new();
    match env.template_from_str(template) {
        Err(e) => out.push(
            loaded.at_value(
                Diagnostic::error(
                    "template-syntax",
                    &loaded.file.path,
                    format!(
                        "the template does not parse: {}",
                        e.detail().unwrap_or("syntax error")
                    ),
                )
                .hint("templates are minijinja (Jinja2): `{{ column | filter }}`"),
                pointer,
            ),
        ),
        Ok(t) => {
            let mut unknown: Vec<String> = t
                .undeclared_variables(false)
                .into_iter()
                .filter(|v| !columns.contains(v) && v != "row")
                .collect();
            unknown.sort();
            for v in unknown {
                out.push(
                    loaded.at_value(
                        Diagnostic::error(
                            "template-column",
                            &loaded.file.path,
                            format!("the template uses `{v}`, a column the mapping never defines"),
                        )
                        .hint(format!(
                            "map it in a field, or declare it under `query.columns: [{v}]`"
                        )),
                        pointer,
                    ),
                );
            }
        }
    }
}
impl Job {
    /// The `meta` every bulk-imported profile of the job carries: its profile tags appended to
    /// the tag property (`meta.patch_properties.append`), so tags other jobs put there stay.
    /// `None` when the job has no profile tags.
    pub fn profile_tags_meta(&self) -> Option<String> {
        if self.spec.tags.profiles.is_empty() {
            return None;
        }
        let mut append = serde_json::Map::new();
        append.insert(
            self.tag_property.clone(),
            serde_json::json!(self.spec.tags.profiles),
        );
        Some(serde_json::json!({"patch_properties": {"append": append}}).to_string())
    }

    /// What the profile tags add to each profile's hash: empty without tags, so the hashes of
    /// jobs without profile tags stay as they were.
    pub fn profile_tags_salt(&self) -> Vec<u8> {
        self.profile_tags_meta()
            .map(|m| format!("\0tags\0{m}").into_bytes())
            .unwrap_or_default()
    }
}
