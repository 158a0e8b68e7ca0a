//! Job-file and project-file types: what a user writes, as serde + schemars types.
//!
//! In: YAML already parsed into a JSON value (see `load`). Out: typed `JobSpec` / `ProjectSpec`.
//! No I/O here. The doc comments on these types are the JSON Schema's descriptions, which
//! editors (yaml-language-server) show on hover, so they are written for the job author.

use std::borrow::Cow;
use std::fmt;
use std::time::Duration;

use indexmap::IndexMap;
use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A kdit job: which rows to read from PostgreSQL and how they become Klaviyo profiles,
/// list memberships, segments and tags.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(title = "kdit job file")]
pub struct JobSpec {
    /// Optional link to this schema, for editors that read a `$schema` key instead of the
    /// `# yaml-language-server: $schema=…` modeline.
    #[serde(rename = "$schema", default, skip_serializing_if = "Option::is_none")]
    pub schema: Option<String>,
    /// Job-file format version. Always `1`.
    pub version: FormatVersion,
    /// The job's name: used in state, locks, reports and `kdit history`. Lowercase letters,
    /// digits and dashes.
    #[schemars(regex(pattern = r"^[a-z0-9][a-z0-9-]{0,62}$"))]
    pub name: String,
    /// What this job is for, in a sentence.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// The SQL query whose rows become profiles.
    pub query: QuerySpec,
    /// How each row becomes a Klaviyo profile.
    pub profiles: ProfilesSpec,
    /// Klaviyo lists this job manages, by name.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub lists: Vec<ListSpec>,
    /// Tags: a list-valued profile property for profiles, real Klaviyo tags for lists and
    /// segments. Every tag must be in the project's tag catalog when the project has one.
    #[serde(default, skip_serializing_if = "TagsSpec::is_empty")]
    pub tags: TagsSpec,
    /// Segment definitions kept as code. Klaviyo computes their membership.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub segments: Vec<SegmentSpec>,
    /// Marketing consent changes. Off unless a job asks: kdit never touches consent otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consent: Option<ConsentSpec>,
    /// How many profiles go in one Klaviyo bulk import job.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch: Option<BatchSpec>,
    /// Limits past which kdit refuses to apply anything.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guards: Option<GuardsSpec>,
}

/// The format version of a job or project file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FormatVersion;

impl Serialize for FormatVersion {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u8(1)
    }
}

impl<'de> Deserialize<'de> for FormatVersion {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match u64::deserialize(d)? {
            1 => Ok(FormatVersion),
            other => Err(serde::de::Error::custom(format!(
                "unsupported version {other}: this kdit reads version 1"
            ))),
        }
    }
}

impl JsonSchema for FormatVersion {
    fn schema_name() -> Cow<'static, str> {
        "FormatVersion".into()
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({ "description": "Format version. Always 1.", "const": 1 })
    }
}

/// Where the rows come from: a stored query file or inline SQL, with parameters.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct QuerySpec {
    /// A stored query: a `.sql` file (minijinja template for structure only), relative to
    /// this job file. Several jobs may share one. Give either `file` or `sql`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<String>,
    /// Inline SQL, for short queries. Give either `file` or `sql`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sql: Option<String>,
    /// Parameter values. They travel to PostgreSQL as bind parameters (`$1`, `$2`, …) and are
    /// never pasted into the SQL text. Durations such as `7d` are allowed for `interval`
    /// parameters.
    #[serde(default, skip_serializing_if = "IndexMap::is_empty")]
    pub params: IndexMap<String, ParamValue>,
    /// Statement timeout (e.g. `30s`, `2m`). The query runs in a READ ONLY transaction.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<HumanDuration>,
    /// Columns the query returns beyond those the field mappings name, so templates may use
    /// them (checked offline by `kdit validate`, against the database by `kdit check`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub columns: Vec<String>,
}

/// A query parameter value: text, number, boolean, or a list of those.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum ParamValue {
    Bool(bool),
    Integer(i64),
    Number(f64),
    Text(String),
    List(Vec<ParamScalar>),
}

/// One element of a list parameter.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum ParamScalar {
    Bool(bool),
    Integer(i64),
    Number(f64),
    Text(String),
}

impl fmt::Display for ParamScalar {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ParamScalar::Bool(b) => write!(f, "{b}"),
            ParamScalar::Integer(i) => write!(f, "{i}"),
            ParamScalar::Number(n) => write!(f, "{n}"),
            ParamScalar::Text(s) => write!(f, "{s}"),
        }
    }
}

impl fmt::Display for ParamValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ParamValue::Bool(b) => write!(f, "{b}"),
            ParamValue::Integer(i) => write!(f, "{i}"),
            ParamValue::Number(n) => write!(f, "{n}"),
            ParamValue::Text(s) => write!(f, "{s}"),
            ParamValue::List(items) => {
                let parts: Vec<String> = items.iter().map(|i| i.to_string()).collect();
                write!(f, "[{}]", parts.join(", "))
            }
        }
    }
}

/// How rows become profiles.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ProfilesSpec {
    /// What identifies a row's profile: `email`, `phone_number` or `external_id`. The field
    /// with this name must be mapped.
    pub key: ProfileKey,
    /// Klaviyo profile field → where its value comes from. Keys are Klaviyo's standard
    /// attributes (`email`, `first_name`, …), `location.<attr>`, or custom
    /// `properties.<name>` (dots nest). A plain string value names a column.
    pub fields: IndexMap<String, FieldSource>,
    /// What a NULL column means: `keep` leaves Klaviyo's value alone, `unset` clears it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_null: Option<NullPolicy>,
    /// Default region (ISO 3166 alpha-2, e.g. `US`) for `e164` phone transforms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_region: Option<String>,
}

/// The identifier that keys a job's rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ProfileKey {
    Email,
    PhoneNumber,
    ExternalId,
}

impl ProfileKey {
    pub fn field(self) -> &'static str {
        match self {
            ProfileKey::Email => "email",
            ProfileKey::PhoneNumber => "phone_number",
            ProfileKey::ExternalId => "external_id",
        }
    }
}

impl fmt::Display for ProfileKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.field())
    }
}

/// What a NULL value does to the Klaviyo field.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum NullPolicy {
    /// Leave Klaviyo's current value alone.
    #[default]
    Keep,
    /// Clear the field in Klaviyo (sent through the profile endpoint that can clear fields).
    Unset,
}

/// Where one profile field's value comes from: a column name, or a full mapping.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum FieldSource {
    /// The name of a column of the query.
    Column(String),
    /// A column, template or constant, with transforms.
    Mapping(Box<FieldMapping>),
}

/// A full field mapping. Give exactly one of `column`, `template` or `value`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FieldMapping {
    /// The query column that holds the value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub column: Option<String>,
    /// A minijinja template over the row's columns, e.g. `"{{ plan | upper }}"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template: Option<String>,
    /// A constant value for every row.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<serde_json::Value>,
    /// Transforms applied in order: `trim`, `lowercase`, `uppercase`, `e164`, `email`.
    #[serde(default, skip_serializing_if = "Transforms::is_empty")]
    pub transform: Transforms,
    /// Convert the value to this type before sending.
    #[serde(rename = "type", default, skip_serializing_if = "Option::is_none")]
    pub value_type: Option<ValueType>,
    /// Value used when the column is NULL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default: Option<serde_json::Value>,
    /// Region for the `e164` transform (ISO 3166 alpha-2, e.g. `US`); overrides
    /// `profiles.default_region`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_region: Option<String>,
    /// NULL policy for this field; overrides `profiles.on_null`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_null: Option<NullPolicy>,
}

impl FieldSource {
    /// The mapping, with a bare column name expanded.
    pub fn mapping(&self) -> Cow<'_, FieldMapping> {
        match self {
            FieldSource::Column(c) => Cow::Owned(FieldMapping {
                column: Some(c.clone()),
                ..FieldMapping::default()
            }),
            FieldSource::Mapping(m) => Cow::Borrowed(m.as_ref()),
        }
    }
}

/// One transform or a list of them.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum Transforms {
    #[default]
    None,
    One(Transform),
    Many(Vec<Transform>),
}

impl Transforms {
    pub fn is_empty(&self) -> bool {
        self.as_slice().is_empty()
    }
    pub fn as_slice(&self) -> &[Transform] {
        match self {
            Transforms::None => &[],
            Transforms::One(t) => std::slice::from_ref(t),
            Transforms::Many(v) => v,
        }
    }
}

/// A value transform.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Transform {
    /// Remove leading and trailing whitespace.
    Trim,
    /// Lowercase the text.
    Lowercase,
    /// Uppercase the text.
    Uppercase,
    /// Normalise a phone number to E.164 (`+15005550006`); needs a region.
    E164,
    /// Normalise an email address: trim and lowercase the domain (and check its syntax).
    Email,
}

/// A type to convert a value to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ValueType {
    String,
    Number,
    Integer,
    Boolean,
    Date,
    Datetime,
    List,
    Json,
}

/// A Klaviyo list this job manages.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ListSpec {
    /// The list's name in Klaviyo. kdit finds it by name and creates it when absent.
    pub name: String,
    /// `add` only adds the query's profiles; `mirror` also removes profiles whose rows left
    /// the query (list membership only, never consent).
    #[serde(default)]
    pub mode: ListMode,
}

/// How a job manages a list.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ListMode {
    /// Add the query's profiles; never remove anyone.
    #[default]
    Add,
    /// Make the list's kdit-managed members equal the query's profiles.
    Mirror,
}

/// Tags a job applies.
#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TagsSpec {
    /// Tags put on every profile of this job, kept in a list-valued profile property
    /// (Klaviyo cannot tag profiles). Tags other jobs put there are left alone.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub profiles: Vec<String>,
    /// Klaviyo tags put on this job's lists. A tag kdit put on a list for this job and
    /// later dropped from here is taken off by the next run.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub lists: Vec<String>,
    /// Klaviyo tags put on this job's segments (dropped ones are taken off, as for lists).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub segments: Vec<String>,
    /// The profile property that holds profile tags (default: the project's, else `kdit_tags`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub property: Option<String>,
}

impl TagsSpec {
    pub fn is_empty(&self) -> bool {
        self.profiles.is_empty()
            && self.lists.is_empty()
            && self.segments.is_empty()
            && self.property.is_none()
    }
}

/// A segment kept as code.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SegmentSpec {
    /// The segment's name in Klaviyo.
    pub name: String,
    /// Who is in the segment. `all` holds condition groups that must all match; a group is a
    /// condition, or `any:` of conditions of which one must match. Conditions read like
    /// `properties.lifetime_value > 500`, `email ends with "@example.com"`,
    /// `properties.kdit_tags has "vip"`, `properties.plan is set`,
    /// `in list "Weekly Active"` or `not in list "Lapsed"`.
    pub definition: SegmentDefinition,
}

/// A segment definition: groups ANDed, conditions inside a group ORed.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SegmentDefinition {
    /// Condition groups; every one must match.
    pub all: Vec<ConditionGroupSpec>,
}

/// One condition, or several of which any may match.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum ConditionGroupSpec {
    /// A single condition.
    One(String),
    /// Conditions of which at least one must match.
    Any(AnyGroup),
}

/// Conditions of which at least one must match.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AnyGroup {
    /// The conditions.
    pub any: Vec<String>,
}

/// Consent changes a job makes. Only what is written here happens.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ConsentSpec {
    /// Channels to subscribe profiles to: `email`, `sms`. Without `consented_at`: the
    /// profiles each run creates (the account's opt-in setting applies).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub subscribe: Vec<ConsentChannel>,
    /// Column holding when each row's consent was given (a historical import: no
    /// confirmation mail is sent; the time must be in the past). Rows with a time are
    /// subscribed with it when first sent and whenever the time changes; rows without one
    /// are not subscribed. Needs `subscribe`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consented_at: Option<String>,
    /// Channels to unsubscribe profiles from, for rows where `unsubscribe_column` is true
    /// (once each time the column turns true). Explicit by design: kdit never unsubscribes
    /// anybody otherwise.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub unsubscribe: Vec<ConsentChannel>,
    /// Boolean column saying a row's profile withdrew consent. Needs `unsubscribe`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unsubscribe_column: Option<String>,
}

/// A marketing channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ConsentChannel {
    Email,
    Sms,
}

impl ConsentChannel {
    /// Klaviyo's name for the channel.
    pub fn name(self) -> &'static str {
        match self {
            ConsentChannel::Email => "email",
            ConsentChannel::Sms => "sms",
        }
    }
}

/// Batching of profile writes.
#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BatchSpec {
    /// Profiles per bulk import job (Klaviyo allows at most 10,000 and 5 MB).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub size: Option<u64>,
    /// Bulk import jobs in flight at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 32))]
    pub concurrency: Option<u64>,
}

/// Safety limits checked before any write.
#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct GuardsSpec {
    /// Most rejected rows tolerated, as a count (`25`) or a share of rows (`1%`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_invalid: Option<Threshold>,
    /// Most list removals tolerated, as a count or a share of the list's members (`5%`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_removals: Option<Threshold>,
}

/// A limit: an absolute count or a percentage.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Threshold {
    Count(u64),
    Percent(f64),
}

impl Threshold {
    /// The limit for a population of `total`.
    pub fn limit(self, total: u64) -> u64 {
        match self {
            Threshold::Count(n) => n,
            Threshold::Percent(p) => ((total as f64) * p / 100.0).floor() as u64,
        }
    }
}

impl fmt::Display for Threshold {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Threshold::Count(n) => write!(f, "{n}"),
            Threshold::Percent(p) => write!(f, "{p}%"),
        }
    }
}

impl std::str::FromStr for Threshold {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let t = s.trim();
        if let Some(p) = t.strip_suffix('%') {
            let v: f64 = p
                .trim()
                .parse()
                .map_err(|_| format!("`{s}` is not a percentage like `1%` or `0.5%`"))?;
            if !(0.0..=100.0).contains(&v) {
                return Err(format!("`{s}` is outside 0%..100%"));
            }
            Ok(Threshold::Percent(v))
        } else {
            t.parse()
                .map(Threshold::Count)
                .map_err(|_| format!("`{s}` is neither a count like `25` nor a share like `1%`"))
        }
    }
}

impl Serialize for Threshold {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Threshold::Count(n) => s.serialize_u64(*n),
            Threshold::Percent(_) => s.serialize_str(&self.to_string()),
        }
    }
}

impl<'de> Deserialize<'de> for Threshold {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            N(u64),
            S(String),
        }
        match Raw::deserialize(d)? {
            Raw::N(n) => Ok(Threshold::Count(n)),
            Raw::S(s) => s.parse().map_err(serde::de::Error::custom),
        }
    }
}

impl JsonSchema for Threshold {
    fn schema_name() -> Cow<'static, str> {
        "Threshold".into()
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "description": "A count (`25`) or a percentage (`1%`).",
            "anyOf": [
                { "type": "integer", "minimum": 0 },
                { "type": "string", "pattern": r"^\s*[0-9]+(\.[0-9]+)?\s*%\s*$" }
            ]
        })
    }
}

/// A duration written the humane way: `30s`, `2m`, `7d`, `1h 30m`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HumanDuration(pub Duration);

impl fmt::Display for HumanDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", humantime::format_duration(self.0))
    }
}

impl Serialize for HumanDuration {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        parse_duration(&s)
            .map(HumanDuration)
            .map_err(serde::de::Error::custom)
    }
}

/// Parses `30s`, `2m`, `7d`, `1h 30m`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s.trim())
        .map_err(|e| format!("`{s}` is not a duration ({e}); write e.g. `30s`, `2m`, `7d`"))
}

impl JsonSchema for HumanDuration {
    fn schema_name() -> Cow<'static, str> {
        "Duration".into()
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "description": "A duration such as `30s`, `2m`, `7d` or `1h 30m`.",
            "type": "string",
            "pattern": r"^\s*([0-9]+\s*[a-zA-Zµ]+\s*)+$"
        })
    }
}

/// The project file (`kdit.yaml`): what the jobs of a repository share.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(title = "kdit project file")]
pub struct ProjectSpec {
    /// Optional link to this schema.
    #[serde(rename = "$schema", default, skip_serializing_if = "Option::is_none")]
    pub schema: Option<String>,
    /// Project-file format version. Always `1`.
    pub version: FormatVersion,
    /// The predefined tag catalog. When present, jobs may only use tags it lists.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tags: Option<TagCatalog>,
    /// Defaults for every job of the project.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub defaults: Option<Defaults>,
    /// Where kdit keeps its state.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<StateSpec>,
}

/// The tag catalog: tag groups and their tags.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TagCatalog {
    /// Profile property holding profile tags (default `kdit_tags`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub profile_property: Option<String>,
    /// Tag groups (Klaviyo allows 50); each tag belongs to one group.
    pub groups: Vec<TagGroupSpec>,
}

/// A tag group of the catalog.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TagGroupSpec {
    /// The group's name in Klaviyo.
    pub name: String,
    /// An exclusive group allows one of its tags per list or segment.
    #[serde(default)]
    pub exclusive: bool,
    /// The group's tags.
    pub tags: Vec<String>,
}

/// Project-wide defaults; a job's own settings win.
#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Defaults {
    /// Default batch settings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch: Option<BatchSpec>,
    /// Default guards.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guards: Option<GuardsSpec>,
    /// Default NULL policy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_null: Option<NullPolicy>,
    /// Default phone region for `e164` (ISO 3166 alpha-2).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_region: Option<String>,
    /// Default query timeout.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<HumanDuration>,
}

/// Where state lives.
#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct StateSpec {
    /// PostgreSQL schema for kdit's tables (default `kdit`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schema: Option<String>,
    /// Name of the environment variable holding the state database URL (default: the source
    /// database, `DATABASE_URL`). Never the URL itself: it may hold a password.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub database_url_env: Option<String>,
}

/// The JSON Schema of job files, as committed in `schemas/job.schema.json`.
pub fn job_schema() -> serde_json::Value {
    serde_json::to_value(schemars::schema_for!(JobSpec)).expect("schema serialises")
}

/// The JSON Schema of project files, as committed in `schemas/project.schema.json`.
pub fn project_schema() -> serde_json::Value {
    serde_json::to_value(schemars::schema_for!(ProjectSpec)).expect("schema serialises")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thresholds_parse_counts_and_percentages() {
        assert_eq!("25".parse::<Threshold>(), Ok(Threshold::Count(25)));
        assert_eq!("1%".parse::<Threshold>(), Ok(Threshold::Percent(1.0)));
        assert_eq!(Threshold::Percent(5.0).limit(1000), 50);
        assert!("101%".parse::<Threshold>().is_err());
        assert!("lots".parse::<Threshold>().is_err());
    }

    #[test]
    fn durations_are_humane() {
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("7d"), Ok(Duration::from_secs(7 * 86400)));
        assert!(parse_duration("soon").is_err());
    }
}
