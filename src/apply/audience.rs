//! The audience side of a job: segments kept as code and Klaviyo tags on the job's lists and
//! segments.
//!
//! In: a compiled job, list ids, the Klaviyo client, the state (the segments and tags kdit
//! manages). Out: the plan's `Segments` and `Tags` lines (`plan`, reading Klaviyo at plan
//! time), then the same changes carried out (`apply`). A segment's comparison with Klaviyo's
//! (`segment_change`, over `job::segment`'s definitions, normalisation and compact
//! descriptions) is pure and unit-tested here; the rest is Klaviyo and PostgreSQL I/O.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use serde_json::Value;

use crate::job::compile::Job;
use crate::job::segment::{condition_count, definition, describe, normalise};
use crate::job::spec::{SegmentSpec, TagCatalog};
use crate::klaviyo::{Client, KlaviyoError};
use crate::plan::{SegmentAction, SegmentChange, TagChange, TagGroupConflict};
use crate::state::{State, StateError, Tagged};

/// Errors of the audience side.
#[derive(Debug, thiserror::Error)]
pub enum AudienceError {
    #[error(transparent)]
    Klaviyo(#[from] KlaviyoError),
    #[error(transparent)]
    State(#[from] StateError),
    #[error("{0}")]
    Other(String),
}

/// What to do about one segment, comparing the wanted definition with Klaviyo's.
pub fn segment_change(
    spec: &SegmentSpec,
    wanted: &Value,
    live: Option<&Value>,
    list_names: &HashMap<String, String>,
) -> SegmentChange {
    let after = describe(wanted, list_names);
    let (action, before) = match live {
        None => (SegmentAction::Create, Vec::new()),
        Some(l) if normalise(l) == normalise(wanted) => (SegmentAction::None, Vec::new()),
        Some(l) => (SegmentAction::Update, describe(l, list_names)),
    };
    SegmentChange {
        name: spec.name.clone(),
        action,
        conditions: condition_count(spec),
        before,
        after,
    }
}

/// The job's lists: name → Klaviyo id, for those that exist.
async fn list_ids(job: &Job, client: &Client) -> Result<BTreeMap<String, String>, KlaviyoError> {
    let mut out = BTreeMap::new();
    for l in &job.spec.lists {
        if let Some(id) = client.find_list(&l.name).await? {
            out.insert(l.name.clone(), id);
        }
    }
    Ok(out)
}

fn names_of(ids: &BTreeMap<String, String>) -> HashMap<String, String> {
    ids.iter().map(|(n, i)| (i.clone(), n.clone())).collect()
}

/// The catalog group a tag belongs to: (group name, exclusive).
fn tag_group<'a>(job: &'a Job, tag: &str) -> Option<(&'a str, bool)> {
    catalog_group(job_catalog(job), tag)
}

/// The job's project's tag catalog, if any.
pub fn job_catalog(job: &Job) -> Option<&TagCatalog> {
    job.project.as_ref()?.spec.tags.as_ref()
}

/// The catalog group a tag belongs to: (group name, exclusive).
pub fn catalog_group<'a>(catalog: Option<&'a TagCatalog>, tag: &str) -> Option<(&'a str, bool)> {
    catalog?
        .groups
        .iter()
        .find(|g| g.tags.iter().any(|t| t == tag))
        .map(|g| (g.name.as_str(), g.exclusive))
}

/// The group a tag goes in: its catalog group, else `kdit` (not exclusive).
pub fn group_for<'a>(catalog: Option<&'a TagCatalog>, tag: &str) -> (&'a str, bool) {
    catalog_group(catalog, tag).unwrap_or((DEFAULT_TAG_GROUP, false))
}

/// The tag group of tags used without a catalog.
pub const DEFAULT_TAG_GROUP: &str = "kdit";

/// Tags of an exclusive catalog group other than `tag` that sit on the resource already.
fn displaced(job: &Job, tag: &str, present: &[String]) -> Vec<String> {
    let Some((group, true)) = tag_group(job, tag) else {
        return Vec::new();
    };
    present
        .iter()
        .filter(|p| *p != tag && tag_group(job, p).is_some_and(|(g, _)| g == group))
        .cloned()
        .collect()
}

/// Tag changes for one resource (list or segment).
fn tag_changes(
    job: &Job,
    on: &str,
    target: &str,
    wanted: &[String],
    present: &[String],
) -> Vec<TagChange> {
    wanted
        .iter()
        .filter(|t| !present.contains(t))
        .map(|t| TagChange {
            tag: t.clone(),
            on: on.to_string(),
            target: target.to_string(),
            replaces: displaced(job, t, present),
            remove: false,
        })
        .collect()
}

/// The audience half of a plan.
#[derive(Debug, Default)]
pub struct AudiencePlan {
    pub segments: Vec<SegmentChange>,
    pub tags: Vec<TagChange>,
    pub dropped_segments: Vec<String>,
    pub conflicts: Vec<TagGroupConflict>,
}

/// Whether the job still asks for `tag` on the list or segment `target`.
fn still_wanted(job: &Job, t: &Tagged) -> bool {
    match t.kind.as_str() {
        "list" => {
            job.spec.lists.iter().any(|l| l.name == t.target)
                && job.spec.tags.lists.contains(&t.tag)
        }
        _ => {
            job.spec.segments.iter().any(|s| s.name == t.target)
                && job.spec.tags.segments.contains(&t.tag)
        }
    }
}

/// The tags on a list or segment; none when it no longer exists.
async fn present_on(
    client: &Client,
    kind: &str,
    id: &str,
) -> Result<Vec<crate::klaviyo::audience::LiveTag>, KlaviyoError> {
    match client.tags_on(kind, id).await {
        Err(KlaviyoError::Api { status: 404, .. }) => Ok(Vec::new()),
        other => other,
    }
}

/// Tags kdit put on lists/segments for this job that the job no longer asks for and that
/// are still there. `forget`: also drop the records of those already gone from Klaviyo
/// (taken off by hand, or the resource deleted) — only when applying: a plan writes nothing.
async fn dropped_tags(
    job: &Job,
    client: &Client,
    state: &State<'_>,
    forget: bool,
) -> Result<Vec<Tagged>, AudienceError> {
    let mut out = Vec::new();
    for t in state.tagged(job.name()).await? {
        if still_wanted(job, &t) {
            continue;
        }
        let kind = if t.kind == "list" {
            "lists"
        } else {
            "segments"
        };
        if present_on(client, kind, &t.target_id)
            .await?
            .iter()
            .any(|p| p.id == t.tag_id)
        {
            out.push(t);
        } else if forget {
            // Gone already (taken off by hand, or the resource deleted): nothing to do.
            state
                .forget_tag(job.name(), &t.tag, &t.kind, &t.target)
                .await?;
        }
    }
    Ok(out)
}

/// Catalog groups the job's tags belong to whose `exclusive` in Klaviyo differs from the
/// catalog (Klaviyo cannot change it after a group is created).
pub async fn group_conflicts(
    catalog: Option<&crate::job::spec::TagCatalog>,
    used: impl Fn(&crate::job::spec::TagGroupSpec) -> bool,
    client: &Client,
) -> Result<Vec<TagGroupConflict>, KlaviyoError> {
    let mut out = Vec::new();
    for g in catalog.into_iter().flat_map(|c| &c.groups) {
        if !used(g) {
            continue;
        }
        if let Some(live) = client.tag_group(&g.name).await?
            && live.exclusive != g.exclusive
        {
            out.push(TagGroupConflict {
                group: g.name.clone(),
                catalog_exclusive: g.exclusive,
                klaviyo_exclusive: live.exclusive,
            });
        }
    }
    Ok(out)
}

/// The plan's segment and tag lines: reads Klaviyo and kdit's state, changes nothing.
pub async fn plan(
    job: &Job,
    client: &Client,
    state: &State<'_>,
) -> Result<AudiencePlan, AudienceError> {
    let managed = state.segments(job.name()).await?;
    let mut out = AudiencePlan {
        dropped_segments: managed
            .iter()
            .filter(|(n, _)| !job.spec.segments.iter().any(|s| &s.name == n))
            .map(|(n, _)| n.clone())
            .collect(),
        ..AudiencePlan::default()
    };
    for t in dropped_tags(job, client, state, false).await? {
        out.tags.push(TagChange {
            tag: t.tag,
            on: t.kind,
            target: t.target,
            replaces: Vec::new(),
            remove: true,
        });
    }
    if job.spec.segments.is_empty()
        && job.spec.tags.lists.is_empty()
        && job.spec.tags.segments.is_empty()
    {
        return Ok(out);
    }
    let wanted_tags: Vec<&String> = job
        .spec
        .tags
        .lists
        .iter()
        .chain(&job.spec.tags.segments)
        .collect();
    out.conflicts = group_conflicts(
        job.project.as_ref().and_then(|p| p.spec.tags.as_ref()),
        |g| g.tags.iter().any(|t| wanted_tags.contains(&t)),
        client,
    )
    .await?;
    let ids = list_ids(job, client).await?;
    let names = names_of(&ids);
    let lookup = |n: &str| ids.get(n).cloned();
    let mut adds = Vec::new();
    if !job.spec.tags.lists.is_empty() {
        for l in &job.spec.lists {
            let present = match ids.get(&l.name) {
                Some(id) => tag_names(client.tags_on("lists", id).await?),
                None => Vec::new(),
            };
            adds.extend(tag_changes(
                job,
                "list",
                &l.name,
                &job.spec.tags.lists,
                &present,
            ));
        }
    }
    for s in &job.spec.segments {
        let wanted = definition(s, &lookup).map_err(AudienceError::Other)?;
        let live = client.find_segment(&s.name).await?;
        out.segments.push(segment_change(
            s,
            &wanted,
            live.as_ref().map(|l| &l.definition),
            &names,
        ));
        if !job.spec.tags.segments.is_empty() {
            let present = match &live {
                Some(l) => tag_names(client.tags_on("segments", &l.id).await?),
                None => Vec::new(),
            };
            adds.extend(tag_changes(
                job,
                "segment",
                &s.name,
                &job.spec.tags.segments,
                &present,
            ));
        }
    }
    out.tags.extend(adds);
    Ok(out)
}

fn tag_names(tags: Vec<crate::klaviyo::audience::LiveTag>) -> Vec<String> {
    tags.into_iter().map(|t| t.name).collect()
}

/// Explains a refused segment write (the XS tier and the daily cap of 100).
fn segment_write_error(name: &str, what: &str, e: KlaviyoError) -> AudienceError {
    let capped = match &e {
        KlaviyoError::Api { status: 429, .. } => true,
        KlaviyoError::GaveUp { last, .. } => last.starts_with("429"),
        _ => false,
    };
    if capped {
        AudienceError::Other(format!(
            "Klaviyo refused to {what} segment \"{name}\": rate limited; an account may create or update at most 100 segments a day (and 15 a minute), so the daily cap is likely reached ({e}); try again tomorrow"
        ))
    } else {
        AudienceError::Other(format!("cannot {what} segment \"{name}\": {e}"))
    }
}

/// What the audience side did.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct AudienceReport {
    pub segments_created: Vec<String>,
    pub segments_updated: Vec<String>,
    pub tags_added: u64,
    pub tags_removed: u64,
}

/// Makes Klaviyo's segments and tags what the job asks for, and records what kdit did in
/// the state. `list_ids`: the job's lists, name → id, all resolved (created) already.
pub async fn apply(
    job: &Job,
    client: &Client,
    state: &State<'_>,
    list_ids: &BTreeMap<String, String>,
) -> Result<AudienceReport, AudienceError> {
    let mut report = AudienceReport::default();
    let lookup = |n: &str| list_ids.get(n).cloned();
    let mut segment_ids = Vec::new();
    for s in &job.spec.segments {
        let wanted = definition(s, &lookup).map_err(AudienceError::Other)?;
        let id = match client.find_segment(&s.name).await? {
            None => {
                let id = client
                    .create_segment(&s.name, &wanted)
                    .await
                    .map_err(|e| segment_write_error(&s.name, "create", e))?;
                report.segments_created.push(s.name.clone());
                id
            }
            Some(live) => {
                if normalise(&live.definition) != normalise(&wanted) {
                    client
                        .update_segment(&live.id, &wanted)
                        .await
                        .map_err(|e| segment_write_error(&s.name, "update", e))?;
                    report.segments_updated.push(s.name.clone());
                }
                live.id
            }
        };
        state.save_segment(job.name(), &s.name, &id).await?;
        segment_ids.push((s.name.as_str(), id));
    }
    // Tags kdit put there for this job that the job dropped come off first (an exclusive
    // group's new tag may need the room).
    for t in dropped_tags(job, client, state, true).await? {
        let kind = if t.kind == "list" {
            "lists"
        } else {
            "segments"
        };
        client
            .relate_tag(&t.tag_id, kind, std::slice::from_ref(&t.target_id), false)
            .await?;
        state
            .forget_tag(job.name(), &t.tag, &t.kind, &t.target)
            .await?;
        report.tags_removed += 1;
    }
    let managed = state.segments(job.name()).await?;
    for (name, _) in managed {
        if !job.spec.segments.iter().any(|s| s.name == name) {
            state.forget_segment(job.name(), &name).await?;
        }
    }
    let mut targets: Vec<(&str, &str, String, &[String])> = Vec::new();
    if !job.spec.tags.lists.is_empty() {
        for l in &job.spec.lists {
            if let Some(id) = list_ids.get(&l.name) {
                targets.push(("lists", &l.name, id.clone(), &job.spec.tags.lists));
            }
        }
    }
    if !job.spec.tags.segments.is_empty() {
        for (name, id) in segment_ids {
            targets.push(("segments", name, id, &job.spec.tags.segments));
        }
    }
    let mut tags = TagIds::default();
    for (kind, target, id, wanted) in targets {
        let singular = if kind == "lists" { "list" } else { "segment" };
        let present = client.tags_on(kind, &id).await?;
        let present_names: Vec<String> = present.iter().map(|t| t.name.clone()).collect();
        for tag in wanted {
            if present_names.contains(tag) {
                continue;
            }
            for old in displaced(job, tag, &present_names) {
                if let Some(t) = present.iter().find(|t| t.name == old) {
                    client
                        .relate_tag(&t.id, kind, std::slice::from_ref(&id), false)
                        .await?;
                    state.forget_tag(job.name(), &old, singular, target).await?;
                }
            }
            let tag_id = tags.ensure(job_catalog(job), client, tag).await?;
            client
                .relate_tag(&tag_id, kind, std::slice::from_ref(&id), true)
                .await?;
            state
                .record_tag(
                    job.name(),
                    &Tagged {
                        tag: tag.clone(),
                        kind: singular.to_string(),
                        target: target.to_string(),
                        target_id: id.clone(),
                        tag_id,
                    },
                )
                .await?;
            report.tags_added += 1;
        }
    }
    Ok(report)
}

/// Tag ids found or created during one apply.
#[derive(Default)]
pub struct TagIds {
    groups: HashMap<String, String>,
    tags: HashMap<String, String>,
}

impl TagIds {
    /// The id of a tag, creating its group (as the catalog says) and the tag when absent.
    pub async fn ensure(
        &mut self,
        catalog: Option<&TagCatalog>,
        client: &Client,
        tag: &str,
    ) -> Result<String, AudienceError> {
        if let Some(id) = self.tags.get(tag) {
            return Ok(id.clone());
        }
        let (group, exclusive) = group_for(catalog, tag);
        let group_id = match self.groups.get(group) {
            Some(id) => id.clone(),
            None => {
                let id = match client.find_tag_group(group).await? {
                    Some(id) => id,
                    None => client.create_tag_group(group, exclusive).await?,
                };
                self.groups.insert(group.to_string(), id.clone());
                id
            }
        };
        let existing = client.group_tags(&group_id).await?;
        let id = match existing.into_iter().find(|t| t.name == tag) {
            Some(t) => t.id,
            None => client.create_tag(tag, &group_id).await?,
        };
        self.tags.insert(tag.to_string(), id.clone());
        Ok(id)
    }
}

/// Members of a segment once Klaviyo has finished computing it (polls `is_processing`
/// for up to `wait`).
pub async fn preview(
    client: &Client,
    name: &str,
    limit: usize,
    wait: Duration,
) -> Result<Vec<String>, AudienceError> {
    let Some(mut seg) = client.find_segment(name).await? else {
        return Err(AudienceError::Other(format!(
            "Klaviyo has no segment named \"{name}\"; `kdit run` creates the segments of a job"
        )));
    };
    let started = std::time::Instant::now();
    while seg.is_processing {
        if started.elapsed() >= wait {
            return Err(AudienceError::Other(format!(
                "segment \"{name}\" is still being computed by Klaviyo after {}s; try again shortly",
                wait.as_secs()
            )));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        seg = client.segment(&seg.id).await?;
    }
    Ok(client.segment_members(&seg.id, limit).await?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::job::spec::{AnyGroup, ConditionGroupSpec, SegmentDefinition};
    use serde_json::json;

    fn spec(all: Vec<ConditionGroupSpec>) -> SegmentSpec {
        SegmentSpec {
            name: "Big spenders".into(),
            definition: SegmentDefinition { all },
        }
    }

    #[test]
    fn definitions_compare_by_meaning_and_describe_compactly() {
        let s = spec(vec![
            ConditionGroupSpec::One("properties.ltv > 500".into()),
            ConditionGroupSpec::Any(AnyGroup {
                any: vec![
                    "in list \"VIP\"".into(),
                    "properties.kdit_tags has \"vip\"".into(),
                ],
            }),
        ]);
        let wanted = definition(&s, &|n| Some(format!("id-{n}"))).unwrap();
        let names: HashMap<String, String> = [("id-VIP".to_string(), "VIP".to_string())].into();
        let mut live = wanted.clone();
        live["condition_groups"][0]["conditions"][0]["filter"]["value"] = json!(500);
        live["condition_groups"][0]["conditions"][0]["filter"]["extra"] = Value::Null;
        assert_eq!(
            segment_change(&s, &wanted, Some(&live), &names).action,
            SegmentAction::None
        );
        let c = segment_change(&s, &wanted, None, &names);
        assert_eq!((c.action, c.conditions), (SegmentAction::Create, 3));
        assert_eq!(
            c.after,
            vec![
                "properties['ltv'] > 500".to_string(),
                "in list \"VIP\" or properties['kdit_tags'] has \"vip\"".to_string()
            ]
        );
        live["condition_groups"][0]["conditions"][0]["filter"]["value"] = json!(100);
        let u = segment_change(&s, &wanted, Some(&live), &names);
        assert_eq!(u.action, SegmentAction::Update);
        assert_eq!(u.before[0], "properties['ltv'] > 100");
    }
}
