//! Rows vs state → what must change. Pure and streaming: rows go through one at a time, so
//! memory holds the state's fingerprints, never the rows.
//!
//! In: the rows as the stream hands them over (`rows::transform::StreamedRow`: profiles,
//! recognised rows, rejects as `Rejected`), and the `Snapshot` from `state`. Out: a `RowDecision` per row (what to send) and, at the end, the `Plan`. What
//! feeds it rows (`RowSource`, `Feed`) is `sync::feed`'s, which reads them from PostgreSQL.

use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::digest::{Hash, hash_payload, hex, row_mix};
use crate::plan::{Action, FieldChange, ListChange, Plan, RejectCount, Rejected, UpdateSample};
use crate::rows::transform::ProfileRow;
use crate::state::snapshot::Snapshot;

/// The diff's verdict on one row.
#[derive(Debug, Clone, Copy)]
pub struct RowDecision {
    pub action: Action,
    pub hash: Hash,
    /// Bits (by the job's list index) of the lists the profile must be added to.
    pub add_lists: u64,
}

impl RowDecision {
    pub fn sends(&self) -> bool {
        self.action != Action::Unchanged
    }
}

/// How many examples a plan keeps of each kind of change.
pub const SAMPLES: usize = 20;

/// The streaming diff of one job run.
pub struct Differ<'s> {
    snapshot: &'s mut Snapshot,
    list_names: Vec<String>,
    mirrored: u64,
    all_lists: u64,
    plan: Plan,
    /// Order-independent digest of the rows (sum of per-row hashes), so a saved plan can tell
    /// whether the query's result moved even when the query has no ORDER BY.
    digest: u128,
    update_new: Vec<(String, Value, Vec<String>)>,
    list_adds: Vec<u64>,
    list_add_samples: Vec<Vec<String>>,
    /// Mixed into every profile's hash: what a send carries beyond its attributes (the
    /// job's profile tags), so changing it re-sends. Empty for a job without profile tags, so
    /// its hashes are the payload's alone.
    salt: Vec<u8>,
}

impl<'s> Differ<'s> {
    /// `lists` are the job's lists as (name, mirrored).
    pub fn new(snapshot: &'s mut Snapshot, lists: &[(String, bool)], plan: Plan) -> Differ<'s> {
        snapshot.reset_seen();
        let mut mirrored = 0;
        for (i, (_, m)) in lists.iter().enumerate() {
            if *m {
                mirrored |= 1 << i;
            }
        }
        let n = lists.len();
        Differ {
            snapshot,
            list_names: lists.iter().map(|(n, _)| n.clone()).collect(),
            mirrored,
            all_lists: if n == 0 { 0 } else { u64::MAX >> (64 - n) },
            plan,
            digest: 0,
            update_new: Vec::new(),
            list_adds: vec![0; n],
            list_add_samples: vec![Vec::new(); n],
            salt: Vec::new(),
        }
    }

    /// Mixes `salt` into every profile's hash (see the field).
    pub fn with_salt(mut self, salt: Vec<u8>) -> Self {
        self.salt = salt;
        self
    }

    /// Classifies one desired profile. `unset` is `p.unset` as field keys (`first_name`,
    /// `properties.plan`), as the caller also sends them.
    pub fn observe(&mut self, d: &ProfileRow, unset: &[String]) -> RowDecision {
        let mut hash = hash_payload(&d.attributes, unset);
        if !self.salt.is_empty() {
            use sha2::Digest as _;
            let mut h = sha2::Sha256::new();
            h.update(hash);
            h.update(&self.salt);
            hash.copy_from_slice(&h.finalize()[..16]);
        }
        self.mix(d.key_hash, &hash);
        self.plan.rows += 1;
        let (action, add_lists) = match self.snapshot.see(&d.key) {
            None => (Action::Create, self.all_lists),
            Some(e) => {
                let missing = self.all_lists & !e.lists;
                if e.hash != hash {
                    (Action::Update, missing)
                } else if missing != 0 {
                    (Action::ListsOnly, missing)
                } else {
                    (Action::Unchanged, 0)
                }
            }
        };
        match action {
            Action::Create => {
                self.plan.creates += 1;
                if self.plan.create_samples.len() < SAMPLES {
                    self.plan.create_samples.push(d.key.clone());
                }
            }
            Action::Update => {
                self.plan.updates += 1;
                if self.update_new.len() < SAMPLES {
                    self.update_new.push((
                        d.key.clone(),
                        serde_json::from_str(d.attributes.get()).unwrap_or(Value::Null),
                        unset.to_vec(),
                    ));
                }
            }
            Action::ListsOnly | Action::Unchanged => self.plan.unchanged += 1,
        }
        for i in 0..self.list_names.len() {
            if add_lists & (1 << i) != 0 {
                self.list_adds[i] += 1;
                if self.list_add_samples[i].len() < SAMPLES {
                    self.list_add_samples[i].push(d.key.clone());
                }
            }
        }
        RowDecision {
            action,
            hash,
            add_lists,
        }
    }

    /// Counts a row `KnownRows` recognised: unchanged, as if `observe` had said so. False
    /// when the state has no such key (it cannot happen unless the state is inconsistent).
    pub fn observe_known(&mut self, index: u32, mix: u128) -> bool {
        if !self.snapshot.see_index(index) {
            return false;
        }
        self.digest = self.digest.wrapping_add(mix);
        self.plan.rows += 1;
        self.plan.unchanged += 1;
        self.plan.recognised += 1;
        true
    }

    /// Counts a rejected row.
    pub fn reject(&mut self, r: &Rejected) {
        self.plan.rows += 1;
        self.plan.rejected += 1;
        let mut h = Sha256::new();
        h.update(r.row.to_le_bytes());
        h.update(r.rule.as_bytes());
        let full = h.finalize();
        let mut hash = [0u8; 16];
        hash.copy_from_slice(&full[..16]);
        self.mix(0, &hash);
        match self
            .plan
            .reject_counts
            .iter_mut()
            .find(|c| c.rule == r.rule && c.field == r.field)
        {
            Some(c) => c.count += 1,
            None => self.plan.reject_counts.push(RejectCount {
                field: r.field.clone(),
                rule: r.rule.clone(),
                count: 1,
            }),
        }
        if self.plan.reject_samples.len() < SAMPLES {
            self.plan.reject_samples.push(r.clone());
        }
    }

    fn mix(&mut self, key_hash: u64, hash: &Hash) {
        self.digest = self.digest.wrapping_add(row_mix(key_hash, hash));
    }

    /// Keys of the update samples, whose old payloads `finish` wants.
    pub fn update_sample_keys(&self) -> Vec<String> {
        self.update_new.iter().map(|(k, _, _)| k.clone()).collect()
    }

    /// Bits of the job's mirrored lists.
    pub fn mirrored(&self) -> u64 {
        self.mirrored
    }

    /// How many members leave each list: members kdit added whose rows left the query
    /// (only mirrored lists lose members).
    fn removal_counts(&self) -> Vec<u64> {
        let mut out = vec![0; self.list_names.len()];
        for e in self.snapshot.unseen() {
            let gone = e.lists & self.mirrored;
            for (i, n) in out.iter_mut().enumerate() {
                if gone & (1 << i) != 0 {
                    *n += 1;
                }
            }
        }
        out
    }

    /// Finishes the plan. `old` gives the last confirmed payloads of the update samples;
    /// `existing` says which lists already exist in Klaviyo.
    pub fn finish(
        mut self,
        old: &std::collections::HashMap<String, Value>,
        existing: &[bool],
    ) -> Plan {
        let removals = self.removal_counts();
        for (key, new, unset) in std::mem::take(&mut self.update_new) {
            let before = old.get(&key).cloned().unwrap_or(Value::Null);
            self.plan.update_samples.push(UpdateSample {
                changes: field_changes(&before, &new, &unset),
                key,
            });
        }
        for (i, name) in self.list_names.iter().enumerate() {
            self.plan.lists.push(ListChange {
                name: name.clone(),
                mirror: self.mirrored & (1 << i) != 0,
                exists: existing.get(i).copied().unwrap_or(false),
                adds: self.list_adds[i],
                removes: removals[i],
                add_samples: std::mem::take(&mut self.list_add_samples[i]),
                // Filled in by the caller, who reads the keys back from the state.
                remove_samples: Vec::new(),
            });
        }
        self.plan.state_profiles = self.snapshot.len() as u64;
        self.plan.rows_digest = hex(&self.digest.to_le_bytes());
        self.plan.state_version = self.snapshot.version.clone();
        self.plan
    }
}

/// Field-level differences between two payloads, flattened to field keys.
pub fn field_changes(old: &Value, new: &Value, unset: &[String]) -> Vec<FieldChange> {
    let mut a = Vec::new();
    flatten("", old, &mut a);
    let mut b = Vec::new();
    flatten("", new, &mut b);
    let mut out = Vec::new();
    for (k, v) in &b {
        match a.iter().find(|(ka, _)| ka == k) {
            Some((_, va)) if va == v => {}
            Some((_, va)) => out.push(FieldChange {
                field: k.clone(),
                old: Some(va.clone()),
                new: Some(v.clone()),
            }),
            None => out.push(FieldChange {
                field: k.clone(),
                old: None,
                new: Some(v.clone()),
            }),
        }
    }
    for (k, va) in &a {
        if !b.iter().any(|(kb, _)| kb == k) && unset.iter().any(|u| u == k) {
            out.push(FieldChange {
                field: k.clone(),
                old: Some(va.clone()),
                new: None,
            });
        }
    }
    out
}

fn flatten(prefix: &str, v: &Value, out: &mut Vec<(String, Value)>) {
    match v {
        Value::Object(m)
            if prefix.is_empty() || prefix == "location" || prefix.starts_with("properties") =>
        {
            for (k, inner) in m {
                let key = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                if matches!(inner, Value::Object(_))
                    && (key == "location" || key.starts_with("properties"))
                {
                    flatten(&key, inner, out);
                } else {
                    out.push((key, inner.clone()));
                }
            }
        }
        Value::Null => {}
        other => out.push((prefix.to_string(), other.clone())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::snapshot::Entry;
    use serde_json::json;

    fn desired(row: u64, key: &str, name: &str) -> ProfileRow {
        ProfileRow {
            row_number: row,
            key: key.into(),
            attributes: serde_json::value::to_raw_value(&json!({"email": key, "first_name": name}))
                .unwrap(),
            unset: vec![],
            source: None,
            key_hash: crate::digest::key_hash(key),
        }
    }

    #[test]
    fn creates_updates_unchanged_and_mirror_removals() {
        let mut snap = Snapshot::default();
        let same = desired(1, "a@x.com", "A");
        snap.insert(
            "a@x.com",
            Entry {
                hash: hash_payload(&same.attributes, &[]),
                lists: 1,
            },
        );
        snap.insert(
            "b@x.com",
            Entry {
                hash: [0; 16],
                lists: 1,
            },
        );
        snap.insert(
            "gone@x.com",
            Entry {
                hash: [0; 16],
                lists: 1,
            },
        );
        snap.seal();
        let lists = vec![("VIP".to_string(), true)];
        let mut d = Differ::new(&mut snap, &lists, Plan::default());
        assert_eq!(d.observe(&same, &[]).action, Action::Unchanged);
        assert_eq!(
            d.observe(&desired(2, "b@x.com", "B"), &[]).action,
            Action::Update
        );
        let c = d.observe(&desired(3, "c@x.com", "C"), &[]);
        assert_eq!((c.action, c.add_lists), (Action::Create, 1));
        let plan = d.finish(&Default::default(), &[true]);
        assert_eq!((plan.creates, plan.updates, plan.unchanged), (1, 1, 1));
        assert!(!snap.seen("gone@x.com"));
        assert!(snap.seen("b@x.com"));
        assert!(snap.seen("a@x.com"));
        assert_eq!(snap.unseen().count(), 1);
        assert_eq!(plan.lists[0].adds, 1);
        assert_eq!(plan.lists[0].removes, 1);
    }

    #[test]
    fn the_rows_digest_ignores_row_order() {
        let rows = [desired(1, "a@x.com", "A"), desired(2, "b@x.com", "B")];
        let digest = |order: &[usize]| {
            let mut snap = Snapshot::default();
            let mut d = Differ::new(&mut snap, &[], Plan::default());
            for i in order {
                d.observe(&rows[*i], &[]);
            }
            d.finish(&Default::default(), &[]).rows_digest
        };
        assert_eq!(digest(&[0, 1]), digest(&[1, 0]));
        assert_ne!(digest(&[0, 1]), digest(&[0]));
    }

    #[test]
    fn a_recognised_row_counts_in_the_digest_as_the_transformed_row_does() {
        // A plan saved when the state lacked the rows' fingerprints must still match the
        // rows once a run has recorded them: both paths give the same digest.
        let row = desired(1, "a@x.com", "A");
        let mut snap = Snapshot::default();
        let entry = Entry {
            hash: hash_payload(&row.attributes, &[]),
            lists: 1,
        };
        let at = snap.insert("a@x.com", entry);
        snap.insert_known([9; 16], at);
        snap.seal();
        let lists = vec![("VIP".to_string(), true)];
        let known = snap.known.get(&[9; 16]).expect("known");
        let by_known = {
            let mut d = Differ::new(&mut snap, &lists, Plan::default());
            assert!(d.observe_known(known.index, known.mix));
            assert!(!d.observe_known(7, 0), "no entry has index 7");
            d.finish(&Default::default(), &[true])
        };
        assert!(snap.seen("a@x.com"));
        let by_row = {
            let mut d = Differ::new(&mut snap, &lists, Plan::default());
            assert_eq!(d.observe(&row, &[]).action, Action::Unchanged);
            d.finish(&Default::default(), &[true])
        };
        assert_eq!(by_known.rows_digest, by_row.rows_digest);
        assert_eq!((by_known.unchanged, by_known.recognised), (1, 1));
        assert_eq!(by_known.lists[0].removes, 0);
    }

    #[test]
    fn field_changes_flatten_nested_attributes() {
        let old = json!({"first_name": "Bob", "properties": {"ltv": 412.5, "plan": "free"}});
        let new = json!({"first_name": "Robert", "properties": {"ltv": 530.0}});
        let changes = field_changes(&old, &new, &["properties.plan".to_string()]);
        let names: Vec<&str> = changes.iter().map(|c| c.field.as_str()).collect();
        assert_eq!(
            names,
            vec!["first_name", "properties.ltv", "properties.plan"]
        );
        assert_eq!(changes[2].new, None);
    }
}
