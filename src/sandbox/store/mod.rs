//! The sandbox's account state: profiles (indexed by id, email, phone and external id), lists
//! with their members, segments, tags and tag groups, bulk import jobs. Handlers mutate it under
//! one lock. No I/O here: `persist` saves and loads it for `--state-file`, and `input` parses
//! the profile writes it applies.
//!
//! Profiles are kept compact for million-profile benchmarks: identifiers as boxed strings and
//! every other attribute as one serialized JSON object, parsed only when read or written.

pub mod input;
mod persist;

use std::collections::{BTreeMap, BTreeSet, HashMap};

use hyper::StatusCode;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use ulid::Ulid;

pub use self::input::{
    LOCATION, ProfileField, ProfileInput, SCALARS, missing_identifier, parse_profile,
    validate_identifier,
};
use super::http::{ApiError, now_millis, ts};

/// One profile.
#[derive(Debug, Clone)]
pub struct Profile {
    pub id: Ulid,
    pub email: Option<Box<str>>,
    pub phone_number: Option<Box<str>>,
    pub external_id: Option<Box<str>>,
    pub created: i64,
    pub updated: i64,
    /// Non-identifier attributes (names, location, properties) as a JSON object.
    pub doc: Box<str>,
    /// Consent per channel as a JSON object, once a subscription job touched the profile.
    pub subscriptions: Option<Box<str>>,
}

impl Profile {
    pub fn doc(&self) -> Map<String, Value> {
        serde_json::from_str(&self.doc).unwrap_or_default()
    }

    /// Attributes as Klaviyo returns them: every field present, null when unset.
    pub fn attributes(&self) -> Map<String, Value> {
        let doc = self.doc();
        let mut a = Map::new();
        let s = |v: &Option<Box<str>>| {
            v.as_deref()
                .map_or(Value::Null, |s| Value::String(s.into()))
        };
        a.insert("email".into(), s(&self.email));
        a.insert("phone_number".into(), s(&self.phone_number));
        a.insert("external_id".into(), s(&self.external_id));
        for k in SCALARS {
            a.insert((*k).into(), doc.get(*k).cloned().unwrap_or(Value::Null));
        }
        a.insert("created".into(), Value::String(ts(self.created)));
        a.insert("updated".into(), Value::String(ts(self.updated)));
        a.insert("last_event_date".into(), Value::Null);
        let mut loc = Map::new();
        let stored = doc.get("location").and_then(Value::as_object);
        for k in LOCATION {
            loc.insert(
                (*k).into(),
                stored
                    .and_then(|l| l.get(*k))
                    .cloned()
                    .unwrap_or(Value::Null),
            );
        }
        a.insert("location".into(), Value::Object(loc));
        a.insert(
            "properties".into(),
            doc.get("properties").cloned().unwrap_or_else(|| json!({})),
        );
        a
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct List {
    pub name: String,
    pub created: i64,
    pub updated: i64,
    pub opt_in_process: String,
    /// Member id → joined time (millis).
    #[serde(with = "ulid_map")]
    pub members: BTreeMap<Ulid, i64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Segment {
    pub name: String,
    pub definition: Value,
    pub created: i64,
    pub updated: i64,
    pub is_active: bool,
    pub is_starred: bool,
    /// Until this time (millis) the segment reports `is_processing: true`.
    pub processing_until: i64,
    /// Members (id → first time seen matching) as of store version `.0`; recomputed on read
    /// once anything changed.
    #[serde(skip)]
    pub members: Option<(u64, BTreeMap<Ulid, i64>)>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TagGroup {
    pub name: String,
    pub exclusive: bool,
    pub default: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Tag {
    pub name: String,
    pub group: String,
    pub lists: BTreeSet<String>,
    pub segments: BTreeSet<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobStatus {
    Queued,
    Processing,
    Complete,
}

impl JobStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            JobStatus::Queued => "queued",
            JobStatus::Processing => "processing",
            JobStatus::Complete => "complete",
        }
    }
}

/// A bulk profile import job.
#[derive(Debug, Clone)]
pub struct BulkJob {
    pub status: JobStatus,
    pub created_at: i64,
    pub started_at: Option<i64>,
    pub completed_at: Option<i64>,
    pub total: usize,
    pub completed: usize,
    pub failed: usize,
    pub lists: Vec<String>,
    /// The profile objects as posted, kept until processed.
    pub pending: Vec<Value>,
    pub profiles: Vec<Ulid>,
    pub errors: Vec<ImportError>,
}

#[derive(Debug, Clone)]
pub struct ImportError {
    pub id: String,
    pub error: ApiError,
    pub original_payload: Value,
}

/// Profiles in id order. Ids come from a monotonic generator, so new profiles append and a
/// sorted Vec with binary search does the work of a BTreeMap at about half the memory (a
/// BTreeMap filled in ascending order leaves its nodes half empty).
#[derive(Debug, Default)]
pub struct ProfileTable {
    rows: Vec<Profile>,
}

impl ProfileTable {
    fn pos(&self, id: &Ulid) -> Result<usize, usize> {
        self.rows.binary_search_by(|p| p.id.cmp(id))
    }
    pub fn get(&self, id: &Ulid) -> Option<&Profile> {
        self.pos(id).ok().map(|i| &self.rows[i])
    }
    pub fn get_mut(&mut self, id: &Ulid) -> Option<&mut Profile> {
        self.pos(id).ok().map(|i| &mut self.rows[i])
    }
    pub fn contains_key(&self, id: &Ulid) -> bool {
        self.pos(id).is_ok()
    }
    /// Replaces the profile with this id, or adds it in order.
    pub fn insert(&mut self, p: Profile) {
        match self.pos(&p.id) {
            Ok(i) => self.rows[i] = p,
            Err(i) => self.rows.insert(i, p),
        }
    }
    pub fn values(&self) -> std::slice::Iter<'_, Profile> {
        self.rows.iter()
    }
    pub fn len(&self) -> usize {
        self.rows.len()
    }
    pub fn last_id(&self) -> Option<Ulid> {
        self.rows.last().map(|p| p.id)
    }
    /// Profiles with ids above `after`, ascending.
    pub fn after(&self, after: Option<Ulid>) -> std::slice::Iter<'_, Profile> {
        let start = after.map_or(0, |a| self.rows.partition_point(|p| p.id <= a));
        self.rows[start..].iter()
    }
    /// Profiles with ids below `before`, descending.
    pub fn before(&self, before: Option<Ulid>) -> std::iter::Rev<std::slice::Iter<'_, Profile>> {
        let end = before.map_or(self.rows.len(), |b| self.rows.partition_point(|p| p.id < b));
        self.rows[..end].iter().rev()
    }
}

/// Everything the account holds.
pub struct Store {
    pub profiles: ProfileTable,
    by_email: IdentIndex,
    by_phone: IdentIndex,
    by_external: IdentIndex,
    ulids: ulid::Generator,
    pub rng: StdRng,
    pub lists: BTreeMap<String, List>,
    pub segments: BTreeMap<String, Segment>,
    pub tag_groups: BTreeMap<String, TagGroup>,
    pub tags: BTreeMap<String, Tag>,
    pub jobs: BTreeMap<String, BulkJob>,
    /// Creates per UTC day for the daily caps (lists 150/day, segments 100/day).
    pub daily: HashMap<(&'static str, i64), u32>,
    /// Bumped on every write, so derived data (segment members) knows when to recompute.
    pub version: u64,
    seed: u64,
    /// This account's id (also its public key), random per account like Klaviyo's, so a
    /// client can tell one sandbox's data from another's.
    pub account_id: String,
}

/// Which identifier an index covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ident {
    Email,
    Phone,
    External,
}

impl Ident {
    fn of(self, p: &Profile) -> Option<&str> {
        match self {
            Ident::Email => p.email.as_deref(),
            Ident::Phone => p.phone_number.as_deref(),
            Ident::External => p.external_id.as_deref(),
        }
    }

    /// Emails match case-insensitively, other identifiers exactly.
    fn norm(self, s: &str) -> Box<str> {
        match self {
            Ident::Email => s.to_ascii_lowercase().into_boxed_str(),
            _ => s.into(),
        }
    }

    fn same(self, a: &str, b: &str) -> bool {
        match self {
            Ident::Email => a.eq_ignore_ascii_case(b),
            _ => a == b,
        }
    }
}

/// Identifier → profile id. Keyed by a 64-bit hash so the identifier's text is not stored a
/// second time (a million emails would otherwise cost ~50 MB more); a hit is confirmed against
/// the profile itself, and the rare identifier whose hash is already taken by a different
/// identifier is kept by its full text in `overflow`.
#[derive(Debug)]
struct IdentIndex {
    kind: Ident,
    by_hash: HashMap<u64, Ulid>,
    overflow: HashMap<Box<str>, Ulid>,
    /// All ones; tests clear bits to force collisions.
    mask: u64,
}

impl IdentIndex {
    fn new(kind: Ident) -> Self {
        IdentIndex {
            kind,
            by_hash: HashMap::new(),
            overflow: HashMap::new(),
            mask: u64::MAX,
        }
    }

    fn hash(&self, s: &str) -> u64 {
        use std::hash::Hasher;
        // Fixed keys: the same identifier hashes the same in every run.
        let mut h = std::hash::DefaultHasher::new();
        h.write(self.kind.norm(s).as_bytes());
        h.finish() & self.mask
    }

    fn get(&self, key: &str, profiles: &ProfileTable) -> Option<Ulid> {
        if let Some(id) = self.overflow.get(&self.kind.norm(key)) {
            return Some(*id);
        }
        let id = *self.by_hash.get(&self.hash(key))?;
        let p = profiles.get(&id)?;
        self.kind
            .of(p)
            .is_some_and(|v| self.kind.same(v, key))
            .then_some(id)
    }

    fn insert(&mut self, key: &str, id: Ulid, profiles: &ProfileTable) {
        let h = self.hash(key);
        let taken_by_other = self.by_hash.get(&h).is_some_and(|owner| {
            *owner != id
                && profiles
                    .get(owner)
                    .and_then(|p| self.kind.of(p))
                    .is_some_and(|v| !self.kind.same(v, key))
        });
        if taken_by_other {
            self.overflow.insert(self.kind.norm(key), id);
        } else {
            self.by_hash.insert(h, id);
        }
    }

    fn remove(&mut self, key: &str, id: Ulid) {
        let norm = self.kind.norm(key);
        if self.overflow.get(&norm) == Some(&id) {
            self.overflow.remove(&norm);
            return;
        }
        let h = self.hash(key);
        if self.by_hash.get(&h) == Some(&id) {
            self.by_hash.remove(&h);
        }
    }
}

impl Store {
    pub fn new(seed: u64) -> Self {
        let mut s = Store {
            profiles: ProfileTable::default(),
            by_email: IdentIndex::new(Ident::Email),
            by_phone: IdentIndex::new(Ident::Phone),
            by_external: IdentIndex::new(Ident::External),
            ulids: ulid::Generator::new(),
            rng: StdRng::seed_from_u64(seed),
            lists: BTreeMap::new(),
            segments: BTreeMap::new(),
            tag_groups: BTreeMap::new(),
            tags: BTreeMap::new(),
            jobs: BTreeMap::new(),
            daily: HashMap::new(),
            version: 0,
            seed,
            account_id: new_account_id(),
        };
        let gid = s.new_uuid();
        s.tag_groups.insert(
            gid,
            TagGroup {
                name: "Default".into(),
                exclusive: false,
                default: true,
            },
        );
        s
    }

    /// Back to a fresh account (same seed, a new account id).
    pub fn reset(&mut self) {
        *self = Store::new(self.seed);
    }

    /// A new id above every profile id so far (also after loading a state file or a clock
    /// step backwards), so profiles append in order.
    pub fn new_ulid(&mut self) -> Ulid {
        let u = self.ulids.generate().unwrap_or_else(|_| Ulid::new());
        match self.profiles.last_id() {
            Some(last) if u <= last => Ulid(last.0.wrapping_add(1)),
            _ => u,
        }
    }

    /// Six alphanumeric characters, like Klaviyo's list and segment ids.
    pub fn new_short_id(&mut self) -> String {
        const ALPHABET: &[u8] = b"ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz23456789";
        loop {
            let id: String = (0..6)
                .map(|_| ALPHABET[self.rng.random_range(0..ALPHABET.len())] as char)
                .collect();
            if !self.lists.contains_key(&id) && !self.segments.contains_key(&id) {
                return id;
            }
        }
    }

    pub fn new_uuid(&mut self) -> String {
        let bytes: [u8; 16] = self.rng.random();
        uuid::Builder::from_random_bytes(bytes)
            .into_uuid()
            .to_string()
    }

    pub fn default_tag_group(&self) -> String {
        self.tag_groups
            .iter()
            .find(|(_, g)| g.default)
            .map(|(id, _)| id.clone())
            .unwrap_or_default()
    }

    pub fn profile_by_str(&self, id: &str) -> Option<&Profile> {
        Ulid::from_string(id)
            .ok()
            .and_then(|u| self.profiles.get(&u))
    }

    pub fn find_email(&self, email: &str) -> Option<Ulid> {
        self.by_email.get(email, &self.profiles)
    }
    pub fn find_phone(&self, phone: &str) -> Option<Ulid> {
        self.by_phone.get(phone, &self.profiles)
    }
    pub fn find_external(&self, ext: &str) -> Option<Ulid> {
        self.by_external.get(ext, &self.profiles)
    }

    /// Who owns each identifier in `input` (email, phone, external id order).
    fn owners(&self, input: &ProfileInput) -> Vec<Ulid> {
        let mut v = Vec::new();
        if let ProfileField::Set(e) = &input.email
            && let Some(id) = self.find_email(e)
        {
            v.push(id);
        }
        if let ProfileField::Set(p) = &input.phone_number
            && let Some(id) = self.find_phone(p)
        {
            v.push(id);
        }
        if let ProfileField::Set(x) = &input.external_id
            && let Some(id) = self.find_external(x)
        {
            v.push(id);
        }
        v
    }

    fn duplicate(id: Ulid) -> ApiError {
        ApiError::conflict(
            "duplicate_profile",
            "A profile already exists with one of these identifiers.",
        )
        .pointer("/data/attributes")
        .meta("duplicate_profile_id", Value::String(id.to_string()))
    }

    /// `POST /api/profiles`: 409 `duplicate_profile` when any identifier is taken.
    pub fn create_profile(&mut self, input: &ProfileInput) -> Result<Ulid, ApiError> {
        if !input.has_identifier() {
            return Err(missing_identifier());
        }
        if let Some(owner) = self.owners(input).first() {
            return Err(Self::duplicate(*owner));
        }
        let id = self.new_ulid();
        let now = now_millis();
        self.profiles.insert(Profile {
            id,
            email: None,
            phone_number: None,
            external_id: None,
            created: now,
            updated: now,
            doc: "{}".into(),
            subscriptions: None,
        });
        self.apply(id, input)?;
        Ok(id)
    }

    /// Create-or-update. The profile is found by `id` when given, else by email, then phone,
    /// then external id. Identifiers that point at a different profile than the one chosen
    /// are a 409 `duplicate_profile` naming that other profile: the sandbox never merges.
    pub fn upsert_profile(
        &mut self,
        id: Option<&str>,
        input: &ProfileInput,
    ) -> Result<(Ulid, bool), ApiError> {
        let target = match id {
            Some(id) => Some(
                self.profile_by_str(id)
                    .map(|p| p.id)
                    .ok_or_else(|| profile_not_found(id).pointer("/data/id"))?,
            ),
            None => self.owners(input).first().copied(),
        };
        match target {
            Some(t) => {
                self.apply(t, input)?;
                Ok((t, false))
            }
            None => Ok((self.create_profile(input)?, true)),
        }
    }

    /// Applies a write to an existing profile: identifiers first (checked for conflicts), then
    /// attributes, then `patch_properties` (append, unappend, unset, in that order).
    pub fn apply(&mut self, id: Ulid, input: &ProfileInput) -> Result<(), ApiError> {
        for owner in self.owners(input) {
            if owner != id {
                return Err(Self::duplicate(owner));
            }
        }
        let Some(p) = self.profiles.get(&id) else {
            return Err(profile_not_found(&id.to_string()));
        };
        // Clearing every identifier would leave a profile nobody can find.
        let after = |f: &ProfileField, cur: &Option<Box<str>>| match f {
            ProfileField::Absent => cur.is_some(),
            ProfileField::Null => false,
            ProfileField::Set(_) => true,
        };
        if !(after(&input.email, &p.email)
            || after(&input.phone_number, &p.phone_number)
            || after(&input.external_id, &p.external_id))
        {
            return Err(missing_identifier());
        }
        let mut p = p.clone();
        let mut changed = false;
        let profiles = &self.profiles;
        changed |= set_ident(&mut self.by_email, profiles, &mut p.email, &input.email, id);
        changed |= set_ident(
            &mut self.by_phone,
            profiles,
            &mut p.phone_number,
            &input.phone_number,
            id,
        );
        changed |= set_ident(
            &mut self.by_external,
            profiles,
            &mut p.external_id,
            &input.external_id,
            id,
        );
        let mut doc = p.doc();
        let before = doc.clone();
        for (k, v) in &input.other {
            match (k.as_str(), v) {
                (_, Value::Null) => {
                    doc.remove(k);
                }
                ("location" | "properties", Value::Object(new)) => {
                    let entry = doc
                        .entry(k.clone())
                        .or_insert_with(|| Value::Object(Map::new()));
                    if !entry.is_object() {
                        *entry = Value::Object(Map::new());
                    }
                    if let Value::Object(cur) = entry {
                        for (nk, nv) in new {
                            if nv.is_null() {
                                cur.remove(nk);
                            } else {
                                cur.insert(nk.clone(), nv.clone());
                            }
                        }
                    }
                }
                _ => {
                    doc.insert(k.clone(), v.clone());
                }
            }
        }
        if !input.append.is_empty() || !input.unappend.is_empty() || !input.unset.is_empty() {
            let props = doc
                .entry("properties".to_string())
                .or_insert_with(|| Value::Object(Map::new()));
            if let Value::Object(props) = props {
                patch_properties(props, input);
            }
        }
        changed |= doc != before;
        if changed {
            p.doc = serde_json::to_string(&doc)
                .unwrap_or_else(|_| "{}".into())
                .into_boxed_str();
            p.updated = now_millis();
        }
        self.profiles.insert(p);
        Ok(())
    }

    pub fn set_subscriptions(&mut self, id: Ulid, subs: Value) {
        if let Some(p) = self.profiles.get_mut(&id) {
            p.subscriptions = Some(subs.to_string().into_boxed_str());
            p.updated = now_millis();
        }
    }

    /// Counts one create against a daily cap; Klaviyo answers 429 past it.
    pub fn take_daily(&mut self, what: &'static str, cap: u32) -> Result<(), ApiError> {
        let day = now_millis() / 86_400_000;
        let n = self.daily.entry((what, day)).or_insert(0);
        if *n >= cap {
            return Err(ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "throttled",
                "Request was throttled.",
                format!("Daily limit of {cap} {what} per day reached."),
            ));
        }
        *n += 1;
        Ok(())
    }
}

fn set_ident(
    index: &mut IdentIndex,
    profiles: &ProfileTable,
    slot: &mut Option<Box<str>>,
    field: &ProfileField,
    id: Ulid,
) -> bool {
    match field {
        ProfileField::Absent => false,
        ProfileField::Null => {
            if let Some(old) = slot.take() {
                index.remove(&old, id);
                true
            } else {
                false
            }
        }
        ProfileField::Set(v) => {
            if slot.as_deref() == Some(v.as_str()) {
                return false;
            }
            if let Some(old) = slot.take() {
                index.remove(&old, id);
            }
            index.insert(v, id, profiles);
            *slot = Some(v.clone().into_boxed_str());
            true
        }
    }
}

/// `append` adds values not already present (a scalar property becomes a one-item array),
/// `unappend` removes every equal value, `unset` drops keys.
fn patch_properties(props: &mut Map<String, Value>, input: &ProfileInput) {
    let as_items = |v: &Value| match v {
        Value::Array(a) => a.clone(),
        other => vec![other.clone()],
    };
    for (k, v) in &input.append {
        let entry = props
            .entry(k.clone())
            .or_insert_with(|| Value::Array(vec![]));
        if !entry.is_array() {
            let old = entry.take();
            *entry = Value::Array(if old.is_null() { vec![] } else { vec![old] });
        }
        if let Value::Array(arr) = entry {
            for item in as_items(v) {
                if !arr.contains(&item) {
                    arr.push(item);
                }
            }
        }
    }
    for (k, v) in &input.unappend {
        if let Some(Value::Array(arr)) = props.get_mut(k) {
            let remove = as_items(v);
            arr.retain(|x| !remove.contains(x));
        }
    }
    for k in &input.unset {
        props.remove(k);
    }
}
pub fn profile_not_found(id: &str) -> ApiError {
    ApiError::not_found(format!("A profile with id {id} does not exist."))
}

/// Serializes `BTreeMap<Ulid, i64>` with string keys (ulid's serde support is not enabled).
mod ulid_map {
    use std::collections::BTreeMap;

    use serde::{Deserialize, Deserializer, Serialize, Serializer};
    use ulid::Ulid;

    pub fn serialize<S: Serializer>(m: &BTreeMap<Ulid, i64>, s: S) -> Result<S::Ok, S::Error> {
        let v: BTreeMap<String, i64> = m.iter().map(|(k, v)| (k.to_string(), *v)).collect();
        v.serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<BTreeMap<Ulid, i64>, D::Error> {
        let v = BTreeMap::<String, i64>::deserialize(d)?;
        v.into_iter()
            .map(|(k, v)| {
                Ulid::from_string(&k)
                    .map(|u| (u, v))
                    .map_err(serde::de::Error::custom)
            })
            .collect()
    }
}

/// Six alphanumeric characters from the OS's randomness (not the seeded generator, which
/// drives faults and must stay reproducible).
fn new_account_id() -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz23456789";
    let mut rng = rand::rng();
    (0..6)
        .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input(email: Option<&str>, phone: Option<&str>, ext: Option<&str>) -> ProfileInput {
        let f =
            |v: Option<&str>| v.map_or(ProfileField::Absent, |s| ProfileField::Set(s.to_string()));
        ProfileInput {
            email: f(email),
            phone_number: f(phone),
            external_id: f(ext),
            ..ProfileInput::default()
        }
    }

    /// With every hash equal, each lookup must still find exactly the right profile.
    #[test]
    fn sandbox_identifier_index_survives_collisions() {
        let mut s = Store::new(1);
        for idx in [&mut s.by_email, &mut s.by_phone, &mut s.by_external] {
            idx.mask = 0;
        }
        let mut ids = Vec::new();
        for i in 0..50 {
            let email = format!("P{i}@Example.com");
            let phone = format!("+1555000{i:04}");
            let ext = format!("x{i}");
            let id = s
                .create_profile(&input(Some(&email), Some(&phone), Some(&ext)))
                .expect("created");
            ids.push(id);
        }
        for (i, id) in ids.iter().enumerate() {
            assert_eq!(s.find_email(&format!("p{i}@example.com")), Some(*id));
            assert_eq!(s.find_phone(&format!("+1555000{i:04}")), Some(*id));
            assert_eq!(s.find_external(&format!("x{i}")), Some(*id));
        }
        assert_eq!(s.find_email("nobody@example.com"), None);
        // Change and clear identifiers; old values stop matching, new ones match.
        let change = ProfileInput {
            email: ProfileField::Set("new0@example.com".into()),
            external_id: ProfileField::Null,
            ..ProfileInput::default()
        };
        s.apply(ids[0], &change).expect("applied");
        assert_eq!(s.find_email("p0@example.com"), None);
        assert_eq!(s.find_email("NEW0@example.com"), Some(ids[0]));
        assert_eq!(s.find_external("x0"), None);
        assert_eq!(s.find_external("x1"), Some(ids[1]));
        // A taken identifier is still a conflict.
        let clash = input(Some("p1@example.com"), None, None);
        assert!(s.create_profile(&clash).is_err());
    }
}
