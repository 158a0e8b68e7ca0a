//! The plan: what a run will change, as a value. Built by `diff`, printed by `render`, saved
//! with `kdit plan -o`, checked again by `kdit apply` before anything is sent.
//!
//! Holds counts, samples and fingerprints — never the rows — so plans stay small whatever
//! the row count. Also the plan's vocabulary shared by the diff, the work file and apply
//! (`Action`, `Rejected`). Pure; `file` alone reads and writes (plan files).

pub mod consent;
pub mod diff;
pub mod file;
pub mod render;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::job::spec::Threshold;

/// The plan file's format version.
pub const FORMAT_VERSION: u32 = 1;

/// What a run will change.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Plan {
    pub format_version: u32,
    pub job: String,
    /// The job file the plan was made from.
    pub job_file: String,
    /// The query, as a label (file name or "inline SQL") and its parameters.
    pub query: String,
    pub query_seconds: f64,
    /// Rows the query returned.
    pub rows: u64,
    pub creates: u64,
    pub updates: u64,
    pub unchanged: u64,
    /// Of the unchanged, rows the state recognised by their fingerprint (the values exactly
    /// as last sent, the mapping the same), so they were neither transformed nor hashed.
    #[serde(default)]
    pub recognised: u64,
    pub rejected: u64,
    pub create_samples: Vec<String>,
    pub update_samples: Vec<UpdateSample>,
    pub reject_counts: Vec<RejectCount>,
    pub reject_samples: Vec<Rejected>,
    pub lists: Vec<ListChange>,
    /// Segments kept as code: created, changed or unchanged.
    #[serde(default)]
    pub segments: Vec<SegmentChange>,
    /// Klaviyo tags to put on the job's lists and segments.
    #[serde(default)]
    pub tags: Vec<TagChange>,
    /// Marketing channels the profiles this run creates are subscribed to
    /// (`consent.subscribe`); empty: consent is not touched.
    #[serde(default)]
    pub consent: Vec<String>,
    /// Profiles this run subscribes (`consent.subscribe`).
    #[serde(default)]
    pub subscribes: u64,
    /// The column `consented_at` comes from (a historical import), if any.
    #[serde(default)]
    pub consented_at: Option<String>,
    /// Channels `consent.unsubscribe` withdraws consent from.
    #[serde(default)]
    pub unsubscribe: Vec<String>,
    /// The column saying a row withdrew consent.
    #[serde(default)]
    pub unsubscribe_column: Option<String>,
    /// Profiles this run unsubscribes.
    #[serde(default)]
    pub unsubscribes: u64,
    /// Segments kdit managed for this job that the job no longer declares: left in
    /// Klaviyo, no longer managed after this run.
    #[serde(default)]
    pub dropped_segments: Vec<String>,
    /// Tag groups whose `exclusive` in Klaviyo differs from the catalog.
    #[serde(default)]
    pub tag_group_conflicts: Vec<TagGroupConflict>,
    /// Profiles the state held before this run.
    pub state_profiles: u64,
    /// The last finished run: (id, when).
    pub last_run: Option<(i64, String)>,
    pub batch_size: u64,
    pub guards: Vec<GuardCheck>,
    /// Fingerprint of the query's result, to refuse a stale saved plan.
    pub rows_digest: String,
    /// Fingerprint of the state the plan was made against.
    pub state_version: String,
}

/// A row that will not be sent, and why.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Rejected {
    pub row: u64,
    /// The key, masked when personal.
    pub key: String,
    pub field: String,
    pub rule: String,
    pub message: String,
}

/// What to do with a row's profile.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    Create,
    Update,
    /// Same payload, but not yet in every list the job adds it to.
    ListsOnly,
    Unchanged,
}

/// One profile's changed fields.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct UpdateSample {
    pub key: String,
    pub changes: Vec<FieldChange>,
}

/// One field, old → new (`None`: absent or cleared).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct FieldChange {
    pub field: String,
    pub old: Option<Value>,
    pub new: Option<Value>,
}

/// Rejected rows by field and rule.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RejectCount {
    pub field: String,
    pub rule: String,
    pub count: u64,
}

/// One list's membership changes.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ListChange {
    pub name: String,
    pub mirror: bool,
    /// Whether the list exists in Klaviyo already (else the run creates it).
    pub exists: bool,
    pub adds: u64,
    pub removes: u64,
    pub add_samples: Vec<String>,
    pub remove_samples: Vec<String>,
}

/// What a run does to a segment.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum SegmentAction {
    /// Klaviyo matches the job.
    #[default]
    None,
    Create,
    Update,
}

/// One segment of the job.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SegmentChange {
    pub name: String,
    pub action: SegmentAction,
    pub conditions: usize,
    /// Klaviyo's condition groups, compactly (updates only).
    pub before: Vec<String>,
    /// The job's condition groups, compactly.
    pub after: Vec<String>,
}

/// A Klaviyo tag to put on a list or segment.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TagChange {
    pub tag: String,
    /// `list` or `segment`.
    pub on: String,
    pub target: String,
    /// Tags of the same exclusive group taken off first.
    #[serde(default)]
    pub replaces: Vec<String>,
    /// Taken off (`-`): a tag kdit put there for this job, which the job no longer asks for.
    #[serde(default)]
    pub remove: bool,
}

/// A tag group whose `exclusive` setting in Klaviyo differs from the catalog's (Klaviyo
/// cannot change it after creation).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TagGroupConflict {
    pub group: String,
    /// What the catalog says.
    pub catalog_exclusive: bool,
    /// What Klaviyo has.
    pub klaviyo_exclusive: bool,
}

/// A guard's verdict.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct GuardCheck {
    pub name: String,
    pub value: u64,
    pub limit: u64,
    pub of: u64,
    pub threshold: String,
    pub ok: bool,
}

impl Plan {
    /// Profiles to send in bulk imports.
    pub fn profile_writes(&self) -> u64 {
        self.creates + self.updates
    }

    pub fn has_changes(&self) -> bool {
        self.profile_writes() > 0
            || self
                .lists
                .iter()
                .any(|l| l.adds > 0 || l.removes > 0 || !l.exists)
            || self.audience_changes()
    }

    /// Records the job's consent settings and the counts the diff found.
    pub fn consent_changes(
        &mut self,
        job: &crate::job::compile::Job,
        subscribes: u64,
        unsubscribes: u64,
    ) {
        let Some(c) = &job.spec.consent else { return };
        let names = |v: &[crate::job::spec::ConsentChannel]| {
            v.iter().map(|c| c.name().to_string()).collect()
        };
        self.consent = names(&c.subscribe);
        self.consented_at = c.consented_at.clone();
        self.subscribes = subscribes;
        if c.unsubscribe_column.is_some() {
            self.unsubscribe = names(&c.unsubscribe);
            self.unsubscribe_column = c.unsubscribe_column.clone();
            self.unsubscribes = unsubscribes;
        }
    }

    /// Whether segments or tags change.
    pub fn audience_changes(&self) -> bool {
        !self.tags.is_empty()
            || !self.dropped_segments.is_empty()
            || self
                .segments
                .iter()
                .any(|s| s.action != SegmentAction::None)
    }

    pub fn guards_ok(&self) -> bool {
        self.guards.iter().all(|g| g.ok)
    }

    /// Evaluates the job's guards against this plan.
    pub fn check_guards(
        &mut self,
        max_invalid: Option<Threshold>,
        max_removals: Option<Threshold>,
    ) {
        self.guards.clear();
        if let Some(t) = max_invalid {
            let limit = t.limit(self.rows);
            self.guards.push(GuardCheck {
                name: "invalid".into(),
                value: self.rejected,
                limit,
                of: self.rows,
                threshold: t.to_string(),
                ok: self.rejected <= limit,
            });
        }
        if let Some(t) = max_removals {
            for l in self.lists.iter().filter(|l| l.mirror) {
                let members = self.state_profiles;
                let limit = t.limit(members);
                self.guards.push(GuardCheck {
                    name: format!("removals from \"{}\"", l.name),
                    value: l.removes,
                    limit,
                    of: members,
                    threshold: t.to_string(),
                    ok: l.removes <= limit,
                });
            }
        }
    }

    /// Estimated Klaviyo calls by kind, for the plan's footer.
    pub fn estimate(&self) -> Estimate {
        let batch = self.batch_size.max(1);
        let sends = self.creates + self.updates + self.lists_only_sends();
        let bulk = sends.div_ceil(batch);
        let created_lists = self.lists.iter().filter(|l| !l.exists).count() as u64;
        let list_lookups = self.lists.len() as u64;
        let removals: u64 = self
            .lists
            .iter()
            .map(|l| l.removes.div_ceil(100) + l.removes.div_ceil(1000))
            .sum();
        // A bulk job is polled about once before it completes.
        let calls = bulk * 2 + created_lists + list_lookups + removals;
        // M tier (bulk import, lists): 10/s burst, 150/min steady.
        let m_calls = bulk * 2 + created_lists + removals;
        let mut seconds = if m_calls <= 150 {
            m_calls as f64 / 10.0
        } else {
            m_calls as f64 / 2.5
        };
        // Segment writes are XS tier (1/s); tag calls S tier (3/s).
        let segment_writes = self
            .segments
            .iter()
            .filter(|s| s.action != SegmentAction::None)
            .count() as u64;
        let tag_calls = self.tags.len() as u64 * 2;
        let calls = calls + segment_writes + tag_calls;
        seconds += segment_writes as f64 + tag_calls as f64 / 3.0;
        Estimate {
            calls,
            bulk_jobs: bulk,
            seconds,
        }
    }

    fn lists_only_sends(&self) -> u64 {
        // Profiles that only need list adds ride in bulk imports too.
        let max_adds = self.lists.iter().map(|l| l.adds).max().unwrap_or(0);
        max_adds.saturating_sub(self.creates + self.updates)
    }
}

/// How many calls and how long, roughly.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Estimate {
    pub calls: u64,
    pub bulk_jobs: u64,
    pub seconds: f64,
}

/// Masks an identifier for display: `ana@example.com` → `a**@example.com`,
/// `+14155550100` → `+1*******0100`.
pub fn mask(key: &str) -> String {
    if let Some((user, domain)) = key.split_once('@') {
        let first: String = user.chars().take(1).collect();
        return format!(
            "{first}{}@{domain}",
            "*".repeat(user.chars().count().saturating_sub(1).min(8))
        );
    }
    let chars: Vec<char> = key.chars().collect();
    if chars.len() <= 4 {
        return "*".repeat(chars.len());
    }
    let keep_start = if chars[0] == '+' { 2 } else { 1 };
    let tail: String = chars[chars.len() - 4..].iter().collect();
    let head: String = chars[..keep_start].iter().collect();
    format!("{head}{}{tail}", "*".repeat(chars.len() - 4 - keep_start))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_keep_a_hint_of_the_value() {
        assert_eq!(mask("ana@example.com"), "a**@example.com");
        assert_eq!(mask("+14155550100"), "+1******0100");
        assert_eq!(mask("12"), "**");
    }

    #[test]
    fn guards_trip_past_their_limits() {
        let mut p = Plan {
            rows: 1000,
            rejected: 11,
            state_profiles: 1000,
            ..Plan::default()
        };
        p.lists.push(ListChange {
            name: "VIP".into(),
            mirror: true,
            exists: true,
            adds: 0,
            removes: 60,
            add_samples: vec![],
            remove_samples: vec![],
        });
        p.check_guards(Some(Threshold::Percent(1.0)), Some(Threshold::Percent(5.0)));
        assert_eq!(
            p.guards.iter().map(|g| g.ok).collect::<Vec<_>>(),
            vec![false, false]
        );
        p.rejected = 10;
        p.lists[0].removes = 50;
        p.check_guards(Some(Threshold::Percent(1.0)), Some(Threshold::Percent(5.0)));
        assert!(p.guards_ok());
    }
}
