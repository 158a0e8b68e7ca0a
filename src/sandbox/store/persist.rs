//! The `--state-file`: the account saved as JSON and loaded back when the sandbox starts.
//!
//! In: a `Store` (to save) or a state file's path and the seed (to load). Out: the file, or a
//! `Store` with its profiles re-indexed. I/O: reads and writes the state file (written to a
//! `.tmp` file first, then renamed over it). Bulk jobs are not kept.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};
use ulid::Ulid;

use super::{List, Profile, Segment, Store, Tag, TagGroup};

impl Store {
    /// Writes lists, segments, tags and profiles to `path` (bulk jobs are not kept).
    pub fn save(&self, path: &Path) -> anyhow::Result<()> {
        let snap = SavedStore {
            seed: self.seed,
            account_id: Some(self.account_id.clone()),
            profiles: self
                .profiles
                .values()
                .map(|p| SavedProfile {
                    id: p.id.to_string(),
                    email: p.email.as_deref().map(str::to_string),
                    phone_number: p.phone_number.as_deref().map(str::to_string),
                    external_id: p.external_id.as_deref().map(str::to_string),
                    created: p.created,
                    updated: p.updated,
                    doc: p.doc.to_string(),
                    subscriptions: p.subscriptions.as_deref().map(str::to_string),
                })
                .collect(),
            lists: self.lists.clone(),
            segments: self.segments.clone(),
            tag_groups: self.tag_groups.clone(),
            tags: self.tags.clone(),
        };
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, serde_json::to_vec(&snap)?)?;
        std::fs::rename(&tmp, path)?;
        Ok(())
    }

    pub fn load(path: &Path, seed: u64) -> anyhow::Result<Store> {
        let snap: SavedStore = serde_json::from_slice(&std::fs::read(path)?)?;
        let mut s = Store::new(seed);
        s.seed = snap.seed;
        if let Some(id) = snap.account_id {
            s.account_id = id;
        }
        s.lists = snap.lists;
        s.segments = snap.segments;
        if !snap.tag_groups.is_empty() {
            s.tag_groups = snap.tag_groups;
        }
        s.tags = snap.tags;
        for p in snap.profiles {
            let id = Ulid::from_string(&p.id)?;
            // The profile goes in first: the indexes confirm hits against it.
            s.profiles.insert(Profile {
                id,
                email: p.email.map(String::into_boxed_str),
                phone_number: p.phone_number.map(String::into_boxed_str),
                external_id: p.external_id.map(String::into_boxed_str),
                created: p.created,
                updated: p.updated,
                doc: p.doc.into_boxed_str(),
                subscriptions: p.subscriptions.map(String::into_boxed_str),
            });
            if let Some(p) = s.profiles.get(&id) {
                if let Some(e) = &p.email {
                    s.by_email.insert(e, id, &s.profiles);
                }
                if let Some(ph) = &p.phone_number {
                    s.by_phone.insert(ph, id, &s.profiles);
                }
                if let Some(x) = &p.external_id {
                    s.by_external.insert(x, id, &s.profiles);
                }
            }
        }
        Ok(s)
    }
}

/// One profile in the state file, identifiers as plain strings.
#[derive(Serialize, Deserialize)]
struct SavedProfile {
    id: String,
    email: Option<String>,
    phone_number: Option<String>,
    external_id: Option<String>,
    created: i64,
    updated: i64,
    doc: String,
    subscriptions: Option<String>,
}

/// The state file's contents: the account without its bulk jobs.
#[derive(Serialize, Deserialize)]
struct SavedStore {
    seed: u64,
    #[serde(default)]
    account_id: Option<String>,
    profiles: Vec<SavedProfile>,
    lists: BTreeMap<String, List>,
    segments: BTreeMap<String, Segment>,
    tag_groups: BTreeMap<String, TagGroup>,
    tags: BTreeMap<String, Tag>,
}
