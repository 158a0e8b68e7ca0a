//! `kdit tags`: the project's tag catalog, where each tag is used, and bulk changes.
//!
//! - `kdit tags show [PATHS]`: the catalog's groups and tags; per tag, the jobs using it
//!   (from the job files) and the lists and segments Klaviyo has it on (`--offline` skips
//!   Klaviyo); groups whose `exclusive` in Klaviyo differs from the catalog.
//! - `kdit tags add|remove TAG --lists PATTERN --segments PATTERN`: a plan first (which
//!   lists and segments matching the glob patterns gain or lose the tag); `--apply` makes it
//!   so, through `POST`/`DELETE /api/tags/{id}/relationships/{lists,segments}`, at most 100
//!   ids a call. Like `kdit plan` / `kdit run`: without `--apply` nothing is written.
//!
//! In: paths, the project file, Klaviyo. Out: text on stdout, an exit status. The planning
//! (`plan_bulk`) and the glob matching are pure; the rest is I/O.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use crate::apply::audience::{AudienceError, TagIds, catalog_group, group_conflicts, group_for};
use crate::commands::fail;
use crate::exit::ExitStatus;
use crate::job::compile::{Job, Project};
use crate::job::spec::TagCatalog;
use crate::klaviyo::Client;
use crate::klaviyo::audience::LiveTag;
use crate::output::{self, Hinted};
use crate::plan::TagGroupConflict;

/// Most list or segment ids sent in one tag-relationship call (Klaviyo's maximum is not
/// documented; the emulator, and kdit, keep to 100).
pub const RELATE_MAX: usize = 100;
/// Most tags one list or segment may carry.
pub const MAX_TAGS_PER_RESOURCE: usize = 100;

/// `kdit tags …` subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum TagsCommand {
    /// The tag catalog, the jobs using each tag, and where Klaviyo has it.
    Show(ShowArgs),
    /// Put a tag on the lists and segments matching patterns (a plan; `--apply` does it).
    Add(BulkArgs),
    /// Take a tag off the lists and segments matching patterns (a plan; `--apply` does it).
    Remove(BulkArgs),
}

/// Options of `kdit tags show`.
#[derive(Debug, Clone, clap::Args)]
pub struct ShowArgs {
    /// Job files or folders (default: jobs/); the project file is the one governing them.
    #[arg(default_value = "jobs")]
    pub paths: Vec<PathBuf>,
    /// The project file (default: the nearest kdit.yaml at or above the first path).
    #[arg(long)]
    pub project: Option<PathBuf>,
    /// Do not read Klaviyo: show the catalog and the job files only.
    #[arg(long)]
    pub offline: bool,
    #[command(flatten)]
    pub klaviyo: crate::commands::connect::KlaviyoArgs,
}

/// Options of `kdit tags add` / `kdit tags remove`.
#[derive(Debug, Clone, clap::Args)]
pub struct BulkArgs {
    /// The tag (from the project's catalog when it has one).
    pub tag: String,
    /// Lists whose name matches this glob (`*` any text, `?` one character), e.g.
    /// `'Weekly*'`. May be repeated.
    #[arg(long = "lists", value_name = "PATTERN")]
    pub lists: Vec<String>,
    /// Segments whose name matches this glob. May be repeated.
    #[arg(long = "segments", value_name = "PATTERN")]
    pub segments: Vec<String>,
    /// Make the changes (without it, only the plan is printed).
    #[arg(long, alias = "yes")]
    pub apply: bool,
    /// Exit 0 when there is nothing to change, 2 when there is (plan only).
    #[arg(long)]
    pub detailed_exitcode: bool,
    /// The project file (default: the nearest kdit.yaml at or above this folder).
    #[arg(long)]
    pub project: Option<PathBuf>,
    #[command(flatten)]
    pub klaviyo: crate::commands::connect::KlaviyoArgs,
    /// The global `-q`: no `hint:` / `done:` lines on stderr (errors still show).
    #[arg(skip)]
    pub quiet: bool,
}

/// Whether `name` matches the glob `pattern` (`*`: any text, `?`: one character; the rest
/// literally, case-sensitive like Klaviyo's names).
pub fn glob_match(pattern: &str, name: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let n: Vec<char> = name.chars().collect();
    let (mut i, mut j) = (0, 0);
    let (mut star, mut mark) = (None, 0);
    while j < n.len() {
        if i < p.len() && (p[i] == '?' || p[i] == n[j]) {
            i += 1;
            j += 1;
        } else if i < p.len() && p[i] == '*' {
            star = Some(i);
            mark = j;
            i += 1;
        } else if let Some(s) = star {
            i = s + 1;
            mark += 1;
            j = mark;
        } else {
            return false;
        }
    }
    while i < p.len() && p[i] == '*' {
        i += 1;
    }
    i == p.len()
}

/// One list or segment a bulk change looks at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resource {
    /// `list` or `segment`.
    pub kind: &'static str,
    pub id: String,
    pub name: String,
    /// The tags on it now.
    pub tags: Vec<LiveTag>,
}

/// What a bulk change does to one resource.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Put the tag on, first taking off these tags of its exclusive group.
    Add {
        replaces: Vec<LiveTag>,
    },
    Remove,
    /// Already as asked.
    Nothing,
    /// Cannot be done, and why.
    Refused(String),
}

/// The plan of a bulk change: per matching resource, its step. Pure.
pub fn plan_bulk(
    catalog: Option<&TagCatalog>,
    tag: &str,
    tag_id: Option<&str>,
    add: bool,
    resources: &[Resource],
) -> Vec<Step> {
    let group = catalog_group(catalog, tag);
    resources
        .iter()
        .map(|r| {
            let has = tag_id.is_some_and(|id| r.tags.iter().any(|t| t.id == id));
            match (add, has) {
                (true, true) | (false, false) => Step::Nothing,
                (false, true) => Step::Remove,
                (true, false) => {
                    let replaces: Vec<LiveTag> = match group {
                        Some((g, true)) => r
                            .tags
                            .iter()
                            .filter(|t| catalog_group(catalog, &t.name).is_some_and(|(o, _)| o == g))
                            .cloned()
                            .collect(),
                        _ => Vec::new(),
                    };
                    if r.tags.len() - replaces.len() >= MAX_TAGS_PER_RESOURCE {
                        Step::Refused(format!(
                            "it carries {} tags already; Klaviyo allows {MAX_TAGS_PER_RESOURCE} per {}",
                            r.tags.len(),
                            r.kind
                        ))
                    } else {
                        Step::Add { replaces }
                    }
                }
            }
        })
        .collect()
}

/// The project file: `--project`, else the nearest kdit.yaml at or above `start`.
fn project(explicit: Option<&Path>, start: &Path) -> Result<Option<Project>, String> {
    let path = match explicit {
        Some(p) => {
            if !p.is_file() {
                return Err(format!("{}: no such project file", p.display()));
            }
            p.to_path_buf()
        }
        None => match crate::job::workspace::find_project_file(&start.join("_")) {
            Some(p) => p,
            None => return Ok(None),
        },
    };
    let mut diags = Vec::new();
    let mut files = Vec::new();
    let loaded = crate::job::workspace::Projects::new().load(&path, &mut diags, &mut files);
    if diags
        .iter()
        .any(|d| d.severity == crate::job::diagnostic::Severity::Error)
    {
        let mut out = Vec::new();
        let v = crate::job::workspace::Validation {
            files,
            jobs: Vec::new(),
            diagnostics: diags,
        };
        let _ =
            crate::commands::validate::render(&v, crate::job::diagnostic::Format::Human, &mut out);
        return Err(format!(
            "the project file is invalid:\n{}",
            String::from_utf8_lossy(&out).trim_end()
        ));
    }
    Ok(loaded)
}

/// The Klaviyo id of a tag (found in its catalog group, else in the `kdit` group).
async fn find_tag(
    client: &Client,
    catalog: Option<&TagCatalog>,
    tag: &str,
) -> Result<Option<String>, AudienceError> {
    let (group, _) = group_for(catalog, tag);
    let Some(g) = client.tag_group(group).await? else {
        return Ok(None);
    };
    Ok(client
        .group_tags(&g.id)
        .await?
        .into_iter()
        .find(|t| t.name == tag)
        .map(|t| t.id))
}

/// The lists and segments matching the patterns, with their tags.
async fn matching(client: &Client, args: &BulkArgs) -> Result<Vec<Resource>, AudienceError> {
    let mut out = Vec::new();
    for (kind, plural, patterns) in [
        ("list", "lists", &args.lists),
        ("segment", "segments", &args.segments),
    ] {
        if patterns.is_empty() {
            continue;
        }
        let mut named = client.all_named(plural).await?;
        named.sort_by(|a, b| a.1.cmp(&b.1).then(a.0.cmp(&b.0)));
        for (id, name) in named {
            if patterns.iter().any(|p| glob_match(p, &name)) {
                let tags = client.tags_on(plural, &id).await?;
                out.push(Resource {
                    kind,
                    id,
                    name,
                    tags,
                });
            }
        }
    }
    Ok(out)
}

/// `kdit tags add|remove`.
pub async fn bulk(args: &BulkArgs, add: bool) -> ExitStatus {
    if args.lists.is_empty() && args.segments.is_empty() {
        output::error(
            Hinted::new(format!(
                "say which lists or segments to {}",
                if add { "tag" } else { "untag" }
            ))
            .hint("add `--lists 'Weekly*'` and/or `--segments 'PATTERN'` (globs: `*` any text, `?` one character)"),
        );
        return ExitStatus::Usage;
    }
    let project = match project(args.project.as_deref(), Path::new(".")) {
        Ok(p) => p,
        Err(e) => {
            output::error(e);
            return ExitStatus::InvalidJobs;
        }
    };
    let catalog = project.as_ref().and_then(|p| p.spec.tags.as_ref());
    if let (Some(c), Some(p)) = (catalog, &project)
        && catalog_group(Some(c), &args.tag).is_none()
    {
        let all: Vec<&str> = c
            .groups
            .iter()
            .flat_map(|g| g.tags.iter().map(String::as_str))
            .collect();
        let close = all
            .iter()
            .filter(|t| strsim::levenshtein(t, &args.tag) <= 2)
            .collect::<Vec<_>>();
        let hint = match close.first() {
            Some(t) => format!("did you mean `{t}`? (tags: {})", all.join(", ")),
            None => format!(
                "add it to a group under `tags.groups` in {} (tags now: {})",
                p.path.display(),
                all.join(", ")
            ),
        };
        output::error(
            Hinted::new(format!(
                "tag `{}` is not in the tag catalog of {}",
                args.tag,
                p.path.display()
            ))
            .hint(hint),
        );
        return ExitStatus::InvalidJobs;
    }
    let target = match crate::commands::connect::Target::new(&args.klaviyo).await {
        Ok(t) => t,
        Err(e) => return fail(e),
    };
    let client = &target.client;
    let result = async {
        let tag_id = find_tag(client, catalog, &args.tag).await?;
        let resources = matching(client, args).await?;
        let conflicts =
            group_conflicts(catalog, |g| g.tags.iter().any(|t| t == &args.tag), client).await?;
        Ok::<_, AudienceError>((tag_id, resources, conflicts))
    }
    .await;
    let (tag_id, resources, conflicts) = match result {
        Ok(r) => r,
        Err(e) => return fail(e),
    };
    let steps = plan_bulk(catalog, &args.tag, tag_id.as_deref(), add, &resources);
    output::data(render_bulk(args, add, &resources, &steps, &conflicts));
    let changes = steps
        .iter()
        .filter(|s| matches!(s, Step::Add { .. } | Step::Remove))
        .count();
    let refused = steps.iter().any(|s| matches!(s, Step::Refused(_)));
    if !args.apply {
        if changes > 0 && !args.quiet {
            output::hint(format_args!(
                "nothing was changed; run again with --apply to {} the tag",
                if add { "add" } else { "remove" }
            ));
        }
        return if args.detailed_exitcode && changes > 0 {
            ExitStatus::Changes
        } else {
            ExitStatus::Success
        };
    }
    if changes > 0 {
        match carry_out(client, catalog, &args.tag, tag_id, &resources, &steps).await {
            Ok(()) if args.quiet => {}
            Ok(()) => output::say_line(format_args!(
                "done: tag \"{}\" {} {}",
                args.tag,
                if add { "added to" } else { "removed from" },
                changed(&resources, &steps).unwrap_or_default()
            )),
            Err(e) => return fail(e),
        }
    }
    target.save();
    if refused {
        ExitStatus::PartialFailure
    } else {
        ExitStatus::Success
    }
}

/// Carries out a bulk plan: exclusive-group tags off, then the tag on (or off), ≤ 100 ids a
/// call per kind.
async fn carry_out(
    client: &Client,
    catalog: Option<&TagCatalog>,
    tag: &str,
    tag_id: Option<String>,
    resources: &[Resource],
    steps: &[Step],
) -> Result<(), AudienceError> {
    let mut tag_ids = TagIds::default();
    let id = match tag_id {
        Some(id) => id,
        None => tag_ids.ensure(catalog, client, tag).await?,
    };
    let mut on: BTreeMap<(&str, bool), Vec<String>> = BTreeMap::new();
    let mut displaced: HashMap<(String, &str), Vec<String>> = HashMap::new();
    for (r, s) in resources.iter().zip(steps) {
        let plural = if r.kind == "list" {
            "lists"
        } else {
            "segments"
        };
        match s {
            Step::Add { replaces } => {
                for t in replaces {
                    displaced
                        .entry((t.id.clone(), plural))
                        .or_default()
                        .push(r.id.clone());
                }
                on.entry((plural, true)).or_default().push(r.id.clone());
            }
            Step::Remove => on.entry((plural, false)).or_default().push(r.id.clone()),
            _ => {}
        }
    }
    for ((old, plural), ids) in &displaced {
        for chunk in ids.chunks(RELATE_MAX) {
            client.relate_tag(old, plural, chunk, false).await?;
        }
    }
    for ((plural, add), ids) in &on {
        for chunk in ids.chunks(RELATE_MAX) {
            client.relate_tag(&id, plural, chunk, *add).await?;
        }
    }
    Ok(())
}

/// The plan of a bulk change, Terraform style.
pub fn render_bulk(
    args: &BulkArgs,
    add: bool,
    resources: &[Resource],
    steps: &[Step],
    conflicts: &[TagGroupConflict],
) -> String {
    let mut o = String::new();
    let patterns = |kind: &str, p: &[String]| {
        let n = resources.iter().filter(|r| r.kind == kind).count();
        format!(
            "{} {} {}",
            crate::output::thousands(n as u64),
            if n == 1 {
                kind.to_string()
            } else {
                format!("{kind}s")
            },
            p.iter()
                .map(|p| format!("`{p}`"))
                .collect::<Vec<_>>()
                .join(", ")
        )
    };
    let mut matched = Vec::new();
    if !args.lists.is_empty() {
        matched.push(format!("{} match", patterns("list", &args.lists)));
    }
    if !args.segments.is_empty() {
        matched.push(format!("{} match", patterns("segment", &args.segments)));
    }
    let _ = writeln!(o, "tag      {:?}", args.tag);
    let _ = writeln!(o, "matched  {}", matched.join("; "));
    let _ = writeln!(o);
    let _ = writeln!(o, "Tags");
    for c in conflicts {
        let _ = writeln!(o, "  ! {}", crate::plan::render::conflict_text(c));
    }
    if resources.is_empty() {
        let _ = writeln!(o, "    (no list or segment matches)");
    }
    let w = resources
        .iter()
        .map(|r| r.name.len() + 2)
        .max()
        .unwrap_or(0);
    for (r, s) in resources.iter().zip(steps) {
        let name = format!("{:?}", r.name);
        let kind = format!("{:<7}", r.kind);
        let _ = match s {
            Step::Add { replaces } if replaces.is_empty() => {
                writeln!(o, "  + {kind} {name:<w$}   gets {:?}", args.tag)
            }
            Step::Add { replaces } => writeln!(
                o,
                "  + {kind} {name:<w$}   gets {:?} (replaces {}: exclusive group)",
                args.tag,
                replaces
                    .iter()
                    .map(|t| format!("{:?}", t.name))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            Step::Remove => writeln!(o, "  - {kind} {name:<w$}   loses {:?}", args.tag),
            Step::Nothing if add => writeln!(o, "    {kind} {name:<w$}   has it already"),
            Step::Nothing => writeln!(o, "    {kind} {name:<w$}   does not have it"),
            Step::Refused(why) => writeln!(o, "  ! {kind} {name:<w$}   cannot get it: {why}"),
        };
    }
    let _ = writeln!(o);
    match changed(resources, steps) {
        None => {
            let _ = writeln!(o, "No changes.");
        }
        Some(what) => {
            let _ = writeln!(
                o,
                "Plan: tag {:?} to {} {what}.",
                args.tag,
                if add { "add to" } else { "remove from" },
            );
        }
    }
    o
}

/// The lists and segments a bulk plan changes, counted (`2 lists and 1 segment`); `None`
/// when it changes nothing.
fn changed(resources: &[Resource], steps: &[Step]) -> Option<String> {
    let count = |kind: &str| {
        resources
            .iter()
            .zip(steps)
            .filter(|(r, s)| r.kind == kind && matches!(s, Step::Add { .. } | Step::Remove))
            .count() as u64
    };
    let parts: Vec<String> = [("list", "lists"), ("segment", "segments")]
        .iter()
        .map(|(one, many)| (count(one), one, many))
        .filter(|(n, _, _)| *n > 0)
        .map(|(n, one, many)| {
            format!(
                "{} {}",
                crate::output::thousands(n),
                if n == 1 { one } else { many }
            )
        })
        .collect();
    (!parts.is_empty()).then(|| parts.join(" and "))
}

/// Where a job uses a tag: `job NAME: lists "A", "B"` / `segments …` / `profiles (property)`.
fn job_uses(job: &Job, tag: &str) -> Option<String> {
    let mut parts = Vec::new();
    let quoted = |v: Vec<&String>| {
        v.iter()
            .map(|n| format!("{n:?}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    if job.spec.tags.lists.iter().any(|t| t == tag) && !job.spec.lists.is_empty() {
        parts.push(format!(
            "lists {}",
            quoted(job.spec.lists.iter().map(|l| &l.name).collect())
        ));
    }
    if job.spec.tags.segments.iter().any(|t| t == tag) && !job.spec.segments.is_empty() {
        parts.push(format!(
            "segments {}",
            quoted(job.spec.segments.iter().map(|s| &s.name).collect())
        ));
    }
    if job.spec.tags.profiles.iter().any(|t| t == tag) {
        parts.push(format!("profiles (property `{}`)", job.tag_property));
    }
    (!parts.is_empty()).then(|| format!("job {}: {}", job.name(), parts.join("; ")))
}

/// Where Klaviyo has each tag of a group: tag name → (lists, segments) by name.
type Held = HashMap<String, (Vec<String>, Vec<String>)>;

/// Reads what Klaviyo holds for the catalog: per group, whether it exists and the
/// lists/segments each of its tags is on.
async fn klaviyo_usage(
    client: &Client,
    catalog: &TagCatalog,
) -> Result<(HashMap<String, Option<bool>>, Held), AudienceError> {
    let mut names: HashMap<String, String> = HashMap::new();
    for kind in ["lists", "segments"] {
        for (id, name) in client.all_named(kind).await? {
            names.insert(id, name);
        }
    }
    let name_of = |id: &String| names.get(id).cloned().unwrap_or_else(|| id.clone());
    let mut groups = HashMap::new();
    let mut held = Held::new();
    for g in &catalog.groups {
        let live = client.tag_group(&g.name).await?;
        groups.insert(g.name.clone(), live.as_ref().map(|l| l.exclusive));
        let Some(live) = live else { continue };
        for t in client.group_tags(&live.id).await? {
            if !g.tags.contains(&t.name) {
                continue;
            }
            let lists = client.tag_relations(&t.id, "lists").await?;
            let segments = client.tag_relations(&t.id, "segments").await?;
            let mut l: Vec<String> = lists.iter().map(name_of).collect();
            let mut s: Vec<String> = segments.iter().map(name_of).collect();
            l.sort();
            s.sort();
            held.insert(t.name, (l, s));
        }
    }
    Ok((groups, held))
}

/// `kdit tags show`.
pub async fn show(args: &ShowArgs) -> ExitStatus {
    let validation = match crate::job::workspace::validate(&args.paths) {
        Ok(v) => v,
        Err(e) => {
            output::error(e);
            return ExitStatus::Usage;
        }
    };
    let start = args
        .paths
        .first()
        .cloned()
        .unwrap_or_else(|| PathBuf::from("."));
    let project = match project(args.project.as_deref(), &start) {
        Ok(p) => p,
        Err(e) => {
            output::error(e);
            return ExitStatus::InvalidJobs;
        }
    };
    if validation.errors() > 0 {
        output::warning(format_args!(
            "{} problems in the job files (see `kdit validate`); jobs that do not compile are left out",
            validation.errors()
        ));
    }
    let Some((path, catalog)) = project
        .as_ref()
        .and_then(|p| p.spec.tags.as_ref().map(|c| (p.path.clone(), c)))
    else {
        output::data_line(
            "No tag catalog: jobs may use any tag; kdit puts them in the tag group \"kdit\".",
        );
        output::data_line(
            "hint: declare one under `tags.groups` in kdit.yaml to fix the tags jobs may use",
        );
        return ExitStatus::Success;
    };
    let live = if args.offline {
        None
    } else {
        let target = match crate::commands::connect::Target::new(&args.klaviyo).await {
            Ok(t) => t,
            Err(e) => {
                return fail(e.hint(
                    "`kdit tags show --offline` shows the catalog and the job files without Klaviyo",
                ));
            }
        };
        match klaviyo_usage(&target.client, catalog).await {
            Ok(u) => Some(u),
            Err(e) => return fail(e),
        }
    };
    let mut o = String::new();
    let _ = writeln!(o, "Tag catalog ({})", path.display());
    let w = catalog
        .groups
        .iter()
        .flat_map(|g| g.tags.iter().map(String::len))
        .max()
        .unwrap_or(0);
    let pad = " ".repeat(w + 6);
    for g in &catalog.groups {
        let _ = writeln!(o);
        let mut head = format!(
            "{}   {}",
            g.name,
            if g.exclusive {
                "exclusive"
            } else {
                "not exclusive"
            }
        );
        if let Some((groups, _)) = &live {
            match groups.get(&g.name).copied().flatten() {
                None => head.push_str("   (not in Klaviyo yet: created by the first run using it)"),
                Some(k) if k != g.exclusive => {
                    head.push('\n');
                    head.push_str(&format!(
                        "  ! {}",
                        crate::plan::render::conflict_text(&TagGroupConflict {
                            group: g.name.clone(),
                            catalog_exclusive: g.exclusive,
                            klaviyo_exclusive: k,
                        })
                    ));
                }
                Some(_) => {}
            }
        }
        let _ = writeln!(o, "{head}");
        for t in &g.tags {
            let uses: Vec<String> = validation
                .jobs
                .iter()
                .filter_map(|j| job_uses(j, t))
                .collect();
            let mut lines = if uses.is_empty() {
                vec!["no job uses it".to_string()]
            } else {
                uses
            };
            if let Some((_, held)) = &live {
                let quoted = |v: &[String]| {
                    v.iter()
                        .map(|n| format!("{n:?}"))
                        .collect::<Vec<_>>()
                        .join(", ")
                };
                lines.push(match held.get(t) {
                    Some((l, s)) if !l.is_empty() || !s.is_empty() => {
                        let mut parts = Vec::new();
                        if !l.is_empty() {
                            parts.push(format!("lists {}", quoted(l)));
                        }
                        if !s.is_empty() {
                            parts.push(format!("segments {}", quoted(s)));
                        }
                        format!("in Klaviyo: {}", parts.join("; "))
                    }
                    _ => "in Klaviyo: on no list or segment".to_string(),
                });
            }
            for (i, line) in lines.iter().enumerate() {
                if i == 0 {
                    let _ = writeln!(o, "  {t:<w$}    {line}");
                } else {
                    let _ = writeln!(o, "{pad}{line}");
                }
            }
        }
    }
    output::data(o);
    ExitStatus::Success
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::job::spec::TagGroupSpec;

    #[test]
    fn globs_match_like_a_shell() {
        assert!(glob_match("Weekly*", "Weekly Active"));
        assert!(glob_match("Weekly*", "Weekly"));
        assert!(!glob_match("Weekly*", "Monthly Weekly"));
        assert!(glob_match("*VIP*", "Gold VIP list"));
        assert!(glob_match("List ?", "List 7"));
        assert!(!glob_match("List ?", "List 10"));
        assert!(glob_match("*", ""));
        assert!(!glob_match("weekly*", "Weekly Active"));
    }

    fn tag(id: &str, name: &str) -> LiveTag {
        LiveTag {
            id: id.into(),
            name: name.into(),
        }
    }

    #[test]
    fn a_bulk_plan_adds_removes_and_respects_exclusive_groups() {
        let catalog = TagCatalog {
            profile_property: None,
            groups: vec![TagGroupSpec {
                name: "lifecycle".into(),
                exclusive: true,
                tags: vec!["active".into(), "lapsed".into()],
            }],
        };
        let r = |tags: Vec<LiveTag>| Resource {
            kind: "list",
            id: "L".into(),
            name: "Weekly".into(),
            tags,
        };
        let resources = vec![
            r(vec![]),
            r(vec![tag("t1", "active")]),
            r(vec![tag("t2", "lapsed")]),
        ];
        let steps = plan_bulk(Some(&catalog), "active", Some("t1"), true, &resources);
        assert_eq!(steps[0], Step::Add { replaces: vec![] });
        assert_eq!(steps[1], Step::Nothing);
        assert_eq!(
            steps[2],
            Step::Add {
                replaces: vec![tag("t2", "lapsed")]
            }
        );
        let steps = plan_bulk(Some(&catalog), "active", Some("t1"), false, &resources);
        assert_eq!(steps, vec![Step::Nothing, Step::Remove, Step::Nothing]);
        let full = r((0..100)
            .map(|i| tag(&format!("x{i}"), &format!("x{i}")))
            .collect());
        assert!(matches!(
            plan_bulk(Some(&catalog), "active", None, true, &[full])[0],
            Step::Refused(_)
        ));
    }
}
