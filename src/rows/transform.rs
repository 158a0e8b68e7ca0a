//! Rows → Klaviyo profile payloads, or precise rejections.
//!
//! In: a job's `ProfilesSpec` (+ project `Defaults`), compiled once into a `Mapping`; the
//! query's columns (bound once, before any row is read: a mapped column the query lacks is
//! an error then); then each row's `Cell`s. Out: per row a `ProfileRow` (the key, the
//! attributes payload with nested `location` and `properties`, the fields to unset) or a
//! `Reject` naming the row, field, rule and a masked value. Pure: no I/O.
//!
//! Validation mirrors what Klaviyo would refuse, so nothing is sent that would fail there:
//! email syntax and ≤ 100 characters, E.164 phone numbers, a non-empty key, property names,
//! numbers Klaviyo can hold, and ≤ 100 KB per profile. Duplicate keys within a run: the
//! **first** row with a key wins and later rows with the same key are rejected
//! (`duplicate_key`). First, not last, because rows are streamed: a winner already sent
//! downstream cannot be taken back, and keeping every row until the end would cost memory
//! proportional to the result. Keys are remembered as 64-bit hashes (8–9 bytes per row).
//!
//! Numbers: PostgreSQL `numeric` values arrive as exact decimal text. Klaviyo stores numbers
//! as doubles, and serde_json (without `arbitrary_precision`, which would change
//! `serde_json::Number` for the whole program) holds i64/u64/f64. A numeric is sent as a JSON
//! number when that number prints back as the same decimal (every value of up to 15
//! significant digits, so all money amounts: `412.50` is sent as `412.5`); a numeric with
//! more digits than a double keeps is rejected (`numeric_precision`) rather than silently
//! rounded — round it in SQL or map it with `type: string`.
//!
//! NULL and empty: a NULL column (after `default`) or text that is empty after the transforms
//! is *no value*: left out under `on_null: keep`, listed in `unset` under `on_null: unset`,
//! and a missing key (`key_missing`) for the key field.

use std::fmt;
use std::hash::Hash;
use std::sync::Arc;

use chrono::{DateTime, NaiveDate, NaiveDateTime, Utc};
use minijinja::Environment;
use minijinja::value::{Serde, Value as JValue};
use serde::Serialize;
use serde_json::value::RawValue;
use serde_json::{Map, Value};

use crate::job::attributes::{FieldPath, MAX_PROPERTY_NAME};
use crate::job::spec::{
    Defaults, NullPolicy, ProfileKey, ProfilesSpec, Threshold, Transform, ValueType,
};
use crate::job::template::SimpleTemplate;
use crate::rows::source::{Cell, Column, format_datetime, write_datetime};

/// Longest email Klaviyo accepts.
pub const MAX_EMAIL: usize = 100;
/// Largest serialised profile Klaviyo accepts (bulk import: 100 KB per profile).
pub const MAX_PROFILE_BYTES: usize = 100 * 1024;
/// Deepest nesting kdit sends inside a property value.
pub const MAX_PROPERTY_DEPTH: usize = 10;

/// A row turned into a profile.
#[derive(Debug, Clone, Serialize)]
pub struct ProfileRow {
    /// 1-based position of the row in the query's result.
    pub row_number: u64,
    /// The value of the job's key field (normalised, unmasked).
    pub key: String,
    /// The profile's `attributes` (standard attributes, `location`, `properties`), serialised
    /// once, on the thread that built them, in the order the job file maps its fields.
    pub attributes: Box<RawValue>,
    /// Fields that were NULL under `on_null: unset`: to be cleared in Klaviyo.
    #[serde(skip_serializing_if = "Vec::is_empty", serialize_with = "paths")]
    pub unset: Vec<FieldPath>,
    /// The fingerprint of the row (`source::row_fingerprint`), when the source made one.
    #[serde(skip)]
    pub source: Option<crate::digest::Fingerprint>,
    /// `Snapshot::key_hash` of `key`, worked out on the thread that built the row.
    #[serde(skip)]
    pub key_hash: u64,
}

impl PartialEq for ProfileRow {
    fn eq(&self, other: &ProfileRow) -> bool {
        self.row_number == other.row_number
            && self.key == other.key
            && self.attributes.get() == other.attributes.get()
            && self.unset == other.unset
            && self.source == other.source
    }
}

impl ProfileRow {
    /// The attributes as a JSON object (for previews and tests; the payload is `attributes`).
    pub fn attribute_map(&self) -> Map<String, Value> {
        serde_json::from_str(self.attributes.get()).unwrap_or_default()
    }
}

fn paths<S: serde::Serializer>(p: &[FieldPath], s: S) -> Result<S::Ok, S::Error> {
    s.collect_seq(p.iter().map(|p| p.to_string()))
}

/// Why a row was rejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Rule {
    /// The key field is NULL or empty.
    KeyMissing,
    /// An earlier row had the same key.
    DuplicateKey,
    /// Not a valid email address.
    EmailSyntax,
    /// Longer than Klaviyo's 100 characters.
    EmailTooLong,
    /// Not a valid phone number in E.164 form.
    PhoneE164,
    /// The value cannot be converted to the field's `type`.
    TypeCast,
    /// A transform cannot apply to the value.
    Transform,
    /// A field template failed.
    Template,
    /// A number with more digits than Klaviyo keeps, or NaN/infinity.
    NumericPrecision,
    /// A property name Klaviyo would refuse (inside a JSON value).
    PropertyName,
    /// A value of the wrong shape for a standard attribute (e.g. a list as `first_name`).
    AttributeType,
    /// The profile is larger than 100 KB.
    PayloadTooLarge,
}

impl Rule {
    pub fn as_str(self) -> &'static str {
        match self {
            Rule::KeyMissing => "key_missing",
            Rule::DuplicateKey => "duplicate_key",
            Rule::EmailSyntax => "email_syntax",
            Rule::EmailTooLong => "email_too_long",
            Rule::PhoneE164 => "phone_e164",
            Rule::TypeCast => "type_cast",
            Rule::Transform => "transform",
            Rule::Template => "template",
            Rule::NumericPrecision => "numeric_precision",
            Rule::PropertyName => "property_name",
            Rule::AttributeType => "attribute_type",
            Rule::PayloadTooLarge => "payload_too_large",
        }
    }
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A row that will not be sent, and why. Personal values are masked.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Reject {
    pub row_number: u64,
    /// The row's key, masked (`a***@example.com`), when it has one.
    pub key: Option<String>,
    /// The field key as written in the job (`email`, `properties.ltv`), if one field is at fault.
    pub field: Option<String>,
    pub rule: Rule,
    pub message: String,
    /// The offending value, masked when personal, shortened when long.
    pub value: Option<String>,
}

impl fmt::Display for Reject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "row {}", self.row_number)?;
        if let Some(k) = &self.key {
            write!(f, " ({k})")?;
        }
        if let Some(field) = &self.field {
            write!(f, " {field}")?;
        }
        write!(f, ": {} [{}]", self.message, self.rule)?;
        if let Some(v) = &self.value {
            write!(f, " value `{v}`")?;
        }
        Ok(())
    }
}

/// A problem in a job's `profiles` section, found when compiling the mapping.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MappingError {
    /// The field key (`email`, `properties.plan`), or `key`/`default_region`.
    pub field: String,
    pub message: String,
    pub hint: Option<String>,
}

impl fmt::Display for MappingError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "profiles.fields.{}: {}", self.field, self.message)?;
        if let Some(h) = &self.hint {
            write!(f, "\nhint: {h}")?;
        }
        Ok(())
    }
}

/// A mapped column the query does not return, or returns with an unusable type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ColumnProblem {
    pub field: String,
    pub column: String,
    pub message: String,
    pub hint: Option<String>,
}

impl fmt::Display for ColumnProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.message)?;
        if let Some(h) = &self.hint {
            write!(f, "\nhint: {h}")?;
        }
        Ok(())
    }
}

#[derive(Debug, Clone)]
enum Origin {
    Column(String),
    /// Template name in the environment, the columns it reads, and the template when it
    /// is simple enough to render without minijinja.
    Template(String, Vec<String>, Option<Arc<SimpleTemplate>>),
    Constant(Cell),
}

#[derive(Debug, Clone)]
struct Field {
    key: String,
    path: FieldPath,
    origin: Origin,
    transforms: Vec<Transform>,
    value_type: Option<ValueType>,
    default: Option<Cell>,
    region: Option<phonenumber::country::Id>,
    on_null: NullPolicy,
}

/// A job's `profiles` section, checked and ready to bind to a query's columns.
pub struct Mapping {
    key: ProfileKey,
    fields: Vec<Field>,
    env: Environment<'static>,
    /// Columns named in `query.columns`, which must exist too.
    extra_columns: Vec<String>,
}

impl fmt::Debug for Mapping {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Mapping")
            .field("key", &self.key)
            .field("fields", &self.fields)
            .finish()
    }
}

fn parse_region(s: &str) -> Result<phonenumber::country::Id, String> {
    s.trim()
        .to_ascii_uppercase()
        .parse()
        .map_err(|_| format!("`{s}` is not an ISO 3166 alpha-2 region such as `US` or `GB`"))
}

impl Mapping {
    /// Checks the `profiles` section and compiles its templates. Every problem is reported.
    pub fn compile(
        spec: &ProfilesSpec,
        defaults: Option<&Defaults>,
    ) -> Result<Mapping, Vec<MappingError>> {
        let mut errors = Vec::new();
        let mut env = crate::job::template::field_env();
        let on_null = spec
            .on_null
            .or(defaults.and_then(|d| d.on_null))
            .unwrap_or_default();
        let profile_region = match spec
            .default_region
            .as_deref()
            .or(defaults.and_then(|d| d.default_region.as_deref()))
        {
            Some(r) => match parse_region(r) {
                Ok(id) => Some(id),
                Err(message) => {
                    errors.push(MappingError {
                        field: "default_region".into(),
                        message,
                        hint: None,
                    });
                    None
                }
            },
            None => None,
        };
        let mut fields = Vec::new();
        for (key, source) in &spec.fields {
            let err = |message: String, hint: Option<String>| MappingError {
                field: key.clone(),
                message,
                hint,
            };
            let path = match FieldPath::parse(key) {
                Ok(p) => p,
                Err(e) => {
                    errors.push(err(e.message, Some(e.hint)));
                    continue;
                }
            };
            let m = source.mapping();
            let given = [m.column.is_some(), m.template.is_some(), m.value.is_some()]
                .iter()
                .filter(|b| **b)
                .count();
            if given != 1 {
                errors.push(err(
                    if given == 0 {
                        "says neither where its value comes from".into()
                    } else {
                        "gives more than one of `column`, `template` and `value`".into()
                    },
                    Some("give exactly one of `column`, `template` or `value`".into()),
                ));
                continue;
            }
            let origin = if let Some(c) = &m.column {
                if c.trim().is_empty() {
                    errors.push(err("the column name is empty".into(), None));
                    continue;
                }
                Origin::Column(c.clone())
            } else if let Some(t) = &m.template {
                let name = format!("profiles.fields.{key}");
                match crate::job::template::add_field_template(&mut env, &name, t) {
                    Ok(cols) => {
                        Origin::Template(name, cols, SimpleTemplate::parse(t).map(Arc::new))
                    }
                    Err(message) => {
                        errors.push(err(message, None));
                        continue;
                    }
                }
            } else {
                Origin::Constant(json_to_cell(m.value.as_ref().unwrap_or(&Value::Null)))
            };
            let region = match m.default_region.as_deref() {
                Some(r) => match parse_region(r) {
                    Ok(id) => Some(id),
                    Err(message) => {
                        errors.push(err(message, None));
                        continue;
                    }
                },
                None => profile_region,
            };
            let transforms = m.transform.as_slice().to_vec();
            fields.push(Field {
                key: key.clone(),
                path,
                origin,
                transforms,
                value_type: m.value_type,
                default: m.default.as_ref().map(json_to_cell),
                region,
                on_null: m.on_null.unwrap_or(on_null),
            });
        }
        if !spec.fields.contains_key(spec.key.field()) {
            errors.push(MappingError {
                field: spec.key.field().into(),
                message: format!(
                    "the job's key is `{}`, but no field `{}` is mapped",
                    spec.key,
                    spec.key.field()
                ),
                hint: Some(format!(
                    "map it, e.g. `{}: {{ column: … }}`",
                    spec.key.field()
                )),
            });
        }
        if errors.is_empty() {
            Ok(Mapping {
                key: spec.key,
                fields,
                env,
                extra_columns: Vec::new(),
            })
        } else {
            Err(errors)
        }
    }

    /// Columns named by `query.columns` that must exist as well.
    pub fn with_extra_columns(mut self, columns: &[String]) -> Mapping {
        self.extra_columns = columns.to_vec();
        self
    }

    pub fn key(&self) -> ProfileKey {
        self.key
    }

    /// Every column the mapping reads, in first-use order.
    pub fn columns(&self) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        let mut add = |c: &String| {
            if !out.contains(c) {
                out.push(c.clone());
            }
        };
        for f in &self.fields {
            match &f.origin {
                Origin::Column(c) => add(c),
                Origin::Template(_, cols, _) => cols.iter().for_each(&mut add),
                Origin::Constant(_) => {}
            }
        }
        self.extra_columns.iter().for_each(add);
        out
    }

    /// Checks the query's columns against the mapping, before any row is read.
    pub fn bind(self: &Arc<Self>, columns: &[Column]) -> Result<Transformer, Vec<ColumnProblem>> {
        let names: Vec<&str> = columns.iter().map(|c| c.name.as_str()).collect();
        let index = |c: &str| names.iter().position(|n| *n == c);
        let mut problems = Vec::new();
        for c in self.columns() {
            if names.iter().filter(|n| **n == c).count() > 1 {
                problems.push(ColumnProblem {
                    field: self
                        .fields
                        .iter()
                        .find(|f| match &f.origin {
                            Origin::Column(col) => *col == c,
                            Origin::Template(_, cols, _) => cols.contains(&c),
                            Origin::Constant(_) => false,
                        })
                        .map(|f| f.key.clone())
                        .unwrap_or_else(|| "query.columns".into()),
                    column: c.clone(),
                    message: format!("the query returns more than one column named `{c}`"),
                    hint: Some(format!("alias them in the query, e.g. `b.{c} as b_{c}`")),
                });
            }
        }
        let missing = |field: &str, column: &str| ColumnProblem {
            field: field.to_string(),
            column: column.to_string(),
            message: format!("the query returns no column `{column}`"),
            hint: Some(match crate::job::attributes::suggest(column, &names) {
                Some(s) => format!(
                    "did you mean `{s}`? The query returns: {}",
                    names.join(", ")
                ),
                None => format!("the query returns: {}", names.join(", ")),
            }),
        };
        // A column read by exactly one field is moved out of the row instead of cloned.
        let mut uses = vec![0usize; columns.len()];
        for f in &self.fields {
            match &f.origin {
                Origin::Column(c) => index(c).into_iter().for_each(|i| uses[i] += 1),
                Origin::Template(_, cols, _) => cols
                    .iter()
                    .filter_map(|c| index(c))
                    .for_each(|i| uses[i] += 1),
                Origin::Constant(_) => {}
            }
        }
        let mut bound = Vec::new();
        for (fi, f) in self.fields.iter().enumerate() {
            let source = match &f.origin {
                Origin::Column(c) => match index(c) {
                    Some(i) => {
                        if let Some(p) = unusable(f, &columns[i]) {
                            problems.push(p);
                        }
                        BoundOrigin::Column(i, uses[i] == 1)
                    }
                    None => {
                        problems.push(missing(&f.key, c));
                        continue;
                    }
                },
                Origin::Template(name, cols, simple) => {
                    let mut idx = Vec::new();
                    for c in cols {
                        match index(c) {
                            Some(i) => idx.push((c.clone(), i)),
                            None => problems.push(missing(&f.key, c)),
                        }
                    }
                    let simple = simple.as_ref().and_then(|t| {
                        let at = t
                            .names()
                            .iter()
                            .map(|n| index(n))
                            .collect::<Option<Vec<_>>>()?;
                        Some((t.clone(), at))
                    });
                    BoundOrigin::Template(name.clone(), idx, simple)
                }
                Origin::Constant(c) => BoundOrigin::Constant(c.clone()),
            };
            bound.push((fi, source));
        }
        for c in &self.extra_columns {
            if index(c).is_none() {
                problems.push(missing("query.columns", c));
            }
        }
        if !problems.is_empty() {
            return Err(problems);
        }
        Ok(Transformer {
            builder: Arc::new(RowBuilder {
                mapping: self.clone(),
                fields: bound,
            }),
            seen: KeySet::default(),
        })
    }
}

/// Whether a column's type can feed a field at all (checked by `kdit check`).
fn unusable(f: &Field, col: &Column) -> Option<ColumnProblem> {
    let t = col.type_name.as_str();
    let is_array = t.starts_with('_');
    let is_json = t == "json" || t == "jsonb";
    let wants_text = !matches!(f.path, FieldPath::Property(_))
        && !matches!(f.path, FieldPath::Location("latitude" | "longitude"))
        && !matches!(f.value_type, Some(ValueType::Json | ValueType::List));
    let problem = |message: String, hint: &str| ColumnProblem {
        field: f.key.clone(),
        column: col.name.clone(),
        message,
        hint: Some(hint.to_string()),
    };
    if !col.supported {
        return Some(problem(
            format!("column `{}` has type {t}, which kdit cannot read", col.name),
            "cast it in the query, e.g. `col::text`",
        ));
    }
    if wants_text && (is_array || is_json) && f.value_type != Some(ValueType::String) {
        return Some(problem(
            format!("`{}` takes text, but column `{}` is {t}", f.key, col.name),
            "pick a text column, or map it under `properties.` to keep the structure",
        ));
    }
    let numeric_like = matches!(
        t,
        "int2" | "int4" | "int8" | "numeric" | "float4" | "float8"
    );
    let date_like = matches!(t, "date" | "timestamp" | "timestamptz");
    let bad_cast = match f.value_type {
        Some(ValueType::Number | ValueType::Integer) => {
            is_array || is_json || date_like || t == "bool" || t == "uuid"
        }
        Some(ValueType::Date | ValueType::Datetime) => {
            is_array || is_json || numeric_like || t == "bool" || t == "uuid"
        }
        Some(ValueType::Boolean) => is_array || is_json || date_like || t == "uuid",
        _ => false,
    };
    if bad_cast {
        let ty = f
            .value_type
            .map(|v| format!("{v:?}").to_lowercase())
            .unwrap_or_default();
        return Some(problem(
            format!(
                "column `{}` is {t}, which cannot become `type: {ty}`",
                col.name
            ),
            "change the column in the query or the field's `type`",
        ));
    }
    None
}

#[derive(Debug, Clone)]
enum BoundOrigin {
    /// Column index, and whether this field is its only reader (so it can take the value).
    Column(usize, bool),
    /// Template name, the columns it reads by name and index, and a simple template with
    /// the column index of each of its uses.
    Template(
        String,
        Vec<(String, usize)>,
        Option<(Arc<SimpleTemplate>, Vec<usize>)>,
    ),
    Constant(Cell),
}

/// Turns rows into profiles for one run; remembers keys to reject duplicates.
pub struct Transformer {
    builder: Arc<RowBuilder>,
    /// Key hashes (`Snapshot::key_hash`, already well mixed: no second hashing).
    seen: KeySet,
}

/// Key hashes seen in a run (`Snapshot::key_hash`). Open addressing with linear probing over plain `u64`s, 0 marking a free slot (the
/// hash 0 is kept apart). Unlike a general set, it can be told the keys coming next
/// (`prefetch`): with a million keys it is far bigger than the caches, and fetching a batch's
/// slots together costs one wait for memory instead of one per row.
#[derive(Default)]
struct KeySet {
    /// A power of two long, or empty before the first key.
    slots: Vec<u64>,
    /// 64 minus log2 of `slots.len()`.
    shift: u32,
    /// Slots in use.
    used: usize,
    zero: bool,
}

impl KeySet {
    fn slot(&self, h: u64) -> usize {
        // Mixed once more (Fibonacci hashing), so hashes that differ only in low bits spread.
        (h.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> self.shift) as usize
    }

    /// Adds a key; whether it was new.
    fn insert(&mut self, h: u64) -> bool {
        if h == 0 {
            return !std::mem::replace(&mut self.zero, true);
        }
        // At most three quarters full.
        if (self.used + 1) * 4 > self.slots.len() * 3 {
            self.grow();
        }
        let mask = self.slots.len() - 1;
        let mut i = self.slot(h);
        loop {
            match self.slots[i] {
                0 => {
                    self.slots[i] = h;
                    self.used += 1;
                    return true;
                }
                s if s == h => return false,
                _ => i = (i + 1) & mask,
            }
        }
    }

    fn grow(&mut self) {
        let len = (self.slots.len() * 2).max(1024);
        let old = std::mem::replace(&mut self.slots, vec![0; len]);
        self.shift = 64 - len.trailing_zeros();
        self.used = 0;
        for h in old.into_iter().filter(|h| *h != 0) {
            self.insert(h);
        }
    }

    /// Starts fetching the slot of a key about to be inserted (a hint; changes nothing).
    fn prefetch(&self, h: u64) {
        if let Some(slot) = self.slots.get(self.slot(h)) {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: a prefetch reads nothing into the program and cannot fault; the address
            // is a live element anyway.
            unsafe {
                use std::arch::x86_64::{_MM_HINT_T0, _mm_prefetch};
                _mm_prefetch::<_MM_HINT_T0>((slot as *const u64).cast());
            }
            #[cfg(not(target_arch = "x86_64"))]
            let _ = slot;
        }
    }

    /// Keys in the set (the tests compare it with `HashSet`'s).
    #[cfg(test)]
    fn len(&self) -> usize {
        self.used + usize::from(self.zero)
    }
}

struct Failure {
    rule: Rule,
    message: String,
    value: Option<String>,
}

/// Boxed: a field's `Result` stays as small as its value, and failures are rare.
type FieldFailure = Box<Failure>;

fn fail(rule: Rule, message: impl Into<String>, value: Option<&Cell>) -> FieldFailure {
    Box::new(Failure {
        rule,
        message: message.into(),
        value: value.and_then(Cell::to_text),
    })
}

impl Transformer {
    /// Turns one row into a profile, or says why it cannot be sent.
    pub fn row(&mut self, row_number: u64, cells: Vec<Cell>) -> Result<ProfileRow, Reject> {
        let built = self.build(row_number, cells);
        self.dedup(built)
    }

    /// Turns a batch of consecutive rows (the first is `first_row_number`) into outcomes, in
    /// order, spreading the work over up to `threads` threads. Duplicate keys are resolved
    /// afterwards in row order, so the result is the same as calling `row` for each.
    pub fn rows(
        &mut self,
        first_row_number: u64,
        batch: Vec<Vec<Cell>>,
        threads: usize,
    ) -> Vec<Result<ProfileRow, Reject>> {
        let me = &*self;
        let built = par_map(batch, threads, |i, cells| {
            me.build(first_row_number + i as u64, cells)
        });
        built.into_iter().map(|b| self.dedup(b)).collect()
    }

    /// Rejects a profile whose key an earlier row had (the first row wins).
    pub fn dedup(&mut self, built: Result<ProfileRow, Reject>) -> Result<ProfileRow, Reject> {
        let p = built?;
        if !self.seen.insert(p.key_hash) {
            return Err(self.duplicate(&p));
        }
        Ok(p)
    }

    /// The reject of a profile whose key an earlier row had.
    pub fn duplicate(&self, p: &ProfileRow) -> Reject {
        let key_field = self.builder.mapping.key.field();
        self.builder.reject(
            p.row_number,
            Some(&p.key),
            Some(key_field),
            *fail(
                Rule::DuplicateKey,
                format!("an earlier row has the same {key_field}; the first row wins"),
                None,
            ),
        )
    }

    /// Everything but the duplicate check (see `RowBuilder::build`).
    pub fn build(&self, row_number: u64, cells: Vec<Cell>) -> Result<ProfileRow, Reject> {
        self.builder.build(row_number, cells)
    }

    /// The half of the transformer that needs no mutable state, for threads of their own.
    pub fn builder(&self) -> Arc<RowBuilder> {
        self.builder.clone()
    }

    /// Says that a key (by `Snapshot::key_hash`) is about to go through `dedup`, so its place in the set is fetched from memory meanwhile (a hint).
    pub fn prefetch(&self, key_hash: u64) {
        self.seen.prefetch(key_hash);
    }
}

/// A mapping bound to a query's columns: turns one row into a profile or a reject, on any
/// thread. The duplicate check, which needs every key seen so far, is `Transformer::dedup`.
pub struct RowBuilder {
    mapping: Arc<Mapping>,
    /// Index into `mapping.fields`, and where the field's value comes from in a row.
    fields: Vec<(usize, BoundOrigin)>,
}

impl RowBuilder {
    /// Everything but the duplicate check: needs no mutable state, so it runs on any thread.
    pub fn build(&self, row_number: u64, mut cells: Vec<Cell>) -> Result<ProfileRow, Reject> {
        self.build_in(row_number, &mut cells)
    }

    /// Which of the query's `columns` some field reads: `build_in` never looks at the others.
    pub fn reads(&self, columns: usize) -> Vec<bool> {
        let mut read = vec![false; columns];
        let mut mark = |i: usize| {
            if let Some(r) = read.get_mut(i) {
                *r = true;
            }
        };
        for (_, origin) in &self.fields {
            match origin {
                BoundOrigin::Column(i, _) => mark(*i),
                BoundOrigin::Template(_, cols, simple) => {
                    cols.iter().for_each(|(_, i)| mark(*i));
                    if let Some((_, at)) = simple {
                        at.iter().for_each(|i| mark(*i));
                    }
                }
                BoundOrigin::Constant(_) => {}
            }
        }
        read
    }

    /// `build` from cells the caller keeps (values may be taken out of them).
    pub fn build_in(&self, row_number: u64, cells: &mut [Cell]) -> Result<ProfileRow, Reject> {
        thread_local! {
            /// Where a row's values and then its payload are written, reused from row to row.
            static SCRATCH: std::cell::RefCell<(Vec<u8>, Vec<u8>)> =
                const { std::cell::RefCell::new((Vec::new(), Vec::new())) };
        }
        SCRATCH.with(|scratch| match scratch.try_borrow_mut() {
            Ok(mut scratch) => {
                let (leaves, out) = &mut *scratch;
                let built = self.build_with(row_number, cells, leaves, out);
                if leaves.capacity() > 1 << 20 || out.capacity() > 1 << 20 {
                    // An oversized profile: do not keep its buffers for the rows after it.
                    *scratch = (Vec::new(), Vec::new());
                }
                built
            }
            Err(_) => self.build_with(row_number, cells, &mut Vec::new(), &mut Vec::new()),
        })
    }

    fn build_with(
        &self,
        row_number: u64,
        cells: &mut [Cell],
        leaves: &mut Vec<u8>,
        out: &mut Vec<u8>,
    ) -> Result<ProfileRow, Reject> {
        let mut attributes = Payload::new(self.fields.len(), leaves);
        let mut unset = Vec::new();
        let mut key: Option<String> = None;
        let key_field = self.mapping.key.field();
        let mut pending: Option<(String, FieldFailure)> = None;
        for (i, origin) in &self.fields {
            let f = &self.mapping.fields[*i];
            let mut text = None;
            match field_value(
                &self.mapping.env,
                f,
                origin,
                cells,
                &mut attributes,
                &mut text,
            ) {
                Ok(true) => {
                    // Written into the payload already: the text itself can be the key, or
                    // go back to the cell it was taken from, for the next row's text.
                    match (text, origin) {
                        (text, _) if f.key == key_field => key = text,
                        (Some(s), BoundOrigin::Column(c, true)) if s.capacity() <= 4096 => {
                            if let Some(cell) = cells.get_mut(*c) {
                                *cell = Cell::Text(s);
                            }
                        }
                        _ => {}
                    }
                }
                Ok(false) => {
                    if f.on_null == NullPolicy::Unset && f.key != key_field {
                        unset.push(f.path.clone());
                    }
                }
                Err(e) => {
                    if f.key == key_field {
                        // The key itself is bad: report that, unmasked key unknown.
                        return Err(self.reject(row_number, None, Some(&f.key), *e));
                    }
                    if pending.is_none() {
                        pending = Some((f.key.clone(), e));
                    }
                }
            }
        }
        let Some(key) = key.filter(|k| !k.trim().is_empty()) else {
            return Err(Reject {
                row_number,
                key: None,
                field: Some(key_field.to_string()),
                rule: Rule::KeyMissing,
                message: format!("the key `{key_field}` is empty"),
                value: None,
            });
        };
        if let Some((field, e)) = pending {
            return Err(self.reject(row_number, Some(&key), Some(&field), *e));
        }
        let attributes = match attributes.finish(out) {
            Ok(a) => a,
            Err(e) => {
                return Err(self.reject(
                    row_number,
                    Some(&key),
                    None,
                    *fail(Rule::TypeCast, format!("cannot be sent as JSON: {e}"), None),
                ));
            }
        };
        let size = attributes.get().len();
        if size > MAX_PROFILE_BYTES {
            return Err(self.reject(
                row_number,
                Some(&key),
                None,
                *fail(
                    Rule::PayloadTooLarge,
                    format!(
                        "the profile is {} KB; Klaviyo accepts at most {} KB",
                        size.div_ceil(1024),
                        MAX_PROFILE_BYTES / 1024
                    ),
                    None,
                ),
            ));
        }
        Ok(ProfileRow {
            row_number,
            key_hash: crate::digest::key_hash(&key),
            key,
            attributes,
            unset,
            source: None,
        })
    }

    fn reject(
        &self,
        row_number: u64,
        key: Option<&str>,
        field: Option<&str>,
        e: Failure,
    ) -> Reject {
        let key_field = self.mapping.key.field();
        Reject {
            row_number,
            key: key.map(|k| mask(key_field, k)),
            field: field.map(str::to_string),
            rule: e.rule,
            message: e.message,
            value: e.value.map(|v| mask(field.unwrap_or(""), &v)),
        }
    }
}

/// `f(index, item)` for every item, in order, on up to `threads` threads (this one included).
pub fn par_map<T: Send, U: Send>(
    items: Vec<T>,
    threads: usize,
    f: impl Fn(usize, T) -> U + Sync,
) -> Vec<U> {
    let threads = threads.clamp(1, 16);
    if threads == 1 || items.len() < 64 {
        return items
            .into_iter()
            .enumerate()
            .map(|(i, t)| f(i, t))
            .collect();
    }
    let chunk = items.len().div_ceil(threads);
    let mut chunks: Vec<(usize, Vec<T>)> = Vec::with_capacity(threads);
    let mut iter = items.into_iter();
    let mut start = 0;
    loop {
        let part: Vec<T> = iter.by_ref().take(chunk).collect();
        if part.is_empty() {
            break;
        }
        let n = part.len();
        chunks.push((start, part));
        start += n;
    }
    let f = &f;
    let (first_start, first_part) = chunks.remove(0);
    std::thread::scope(|scope| {
        let handles: Vec<_> = chunks
            .into_iter()
            .map(|(start, part)| {
                scope.spawn(move || {
                    part.into_iter()
                        .enumerate()
                        .map(|(i, t)| f(start + i, t))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        // The first chunk runs on this thread meanwhile.
        let mut out: Vec<U> = first_part
            .into_iter()
            .enumerate()
            .map(|(i, t)| f(first_start + i, t))
            .collect();
        for h in handles {
            match h.join() {
                Ok(part) => out.extend(part),
                Err(panic) => std::panic::resume_unwind(panic),
            }
        }
        out
    })
}

/// Writes a field's final JSON value into `payload` (`Ok(true)`; `text` gets the value's
/// text, if it is text), or says it is NULL (`Ok(false)`).
fn field_value<'m>(
    env: &Environment<'static>,
    f: &'m Field,
    origin: &BoundOrigin,
    cells: &mut [Cell],
    payload: &mut Payload<'m, '_>,
    text: &mut Option<String>,
) -> Result<bool, FieldFailure> {
    let mut v = match origin {
        BoundOrigin::Column(i, true) => cells
            .get_mut(*i)
            .map(|c| std::mem::replace(c, Cell::Null))
            .unwrap_or(Cell::Null),
        BoundOrigin::Column(i, false) => cells.get(*i).cloned().unwrap_or(Cell::Null),
        BoundOrigin::Constant(c) => c.clone(),
        BoundOrigin::Template(name, cols, simple) => {
            let text = |i: usize| match cells.get(i) {
                Some(Cell::Text(s)) => Some(s.as_str()),
                _ => None,
            };
            let quick = simple
                .as_ref()
                .and_then(|(t, at)| t.render(|k| at.get(k).and_then(|i| text(*i))));
            let out = match quick {
                Some(out) => out,
                None => {
                    let ctx = JValue::from_pairs(cols.iter().map(|(n, i)| {
                        (
                            n.as_str(),
                            cell_to_template(cells.get(*i).unwrap_or(&Cell::Null)),
                        )
                    }));
                    env.get_template(name)
                        .and_then(|t| t.render(ctx))
                        .map_err(|e| {
                            fail(
                                Rule::Template,
                                format!("template failed: {}", e.detail().unwrap_or("error")),
                                None,
                            )
                        })?
                }
            };
            if out.trim().is_empty() {
                Cell::Null
            } else {
                Cell::Text(out)
            }
        }
    };
    if v.is_null()
        && let Some(d) = &f.default
    {
        v = d.clone();
    }
    if v.is_null() {
        return Ok(false);
    }
    for t in &f.transforms {
        v = apply_transform(*t, v, f)?;
    }
    // Empty text is no value: a blank email is a missing key, not a malformed one.
    if matches!(&v, Cell::Text(s) if s.is_empty()) {
        return Ok(false);
    }
    if let Some(ty) = f.value_type {
        v = cast(v, ty)?;
    }
    if v.is_null() {
        return Ok(false);
    }
    // A timestamp in `location` or `properties` is written straight into the payload, as the
    // text `finish` makes of it (no key is there, and text needs no checks there).
    let at = match &v {
        Cell::Timestamptz(t) => Some(*t),
        Cell::Timestamp(t) => Some(t.and_utc()),
        _ => None,
    };
    if let Some(t) = at
        && matches!(f.path, FieldPath::Location(_) | FieldPath::Property(_))
    {
        payload.insert_with(&f.path, |out| write_datetime_json(out, &t));
        return Ok(true);
    }
    // Text, the common case, is neither turned into a `Value` nor moved until it is written.
    if let Cell::Text(s) = v {
        validate(&s, f)?;
        payload.insert_str(&f.path, &s);
        *text = Some(s);
        return Ok(true);
    }
    let json = finish(v, f)?;
    validate(json.as_str().unwrap_or_default(), f)?;
    payload.insert(&f.path, &json);
    if let Value::String(s) = json {
        *text = Some(s);
    }
    Ok(true)
}

fn scalar_text(v: &Cell) -> Option<String> {
    match v {
        Cell::Text(s) | Cell::Numeric(s) => Some(s.clone()),
        Cell::Int(_) | Cell::Float(_) | Cell::Bool(_) | Cell::Uuid(_) => v.to_text(),
        Cell::Json(Value::String(s)) => Some(s.clone()),
        _ => None,
    }
}

fn apply_transform(t: Transform, v: Cell, f: &Field) -> Result<Cell, FieldFailure> {
    // Text, the common case, is taken rather than copied.
    let text = match v {
        Cell::Text(s) => Ok(s),
        other => scalar_text(&other).ok_or(other),
    };
    let s = match text {
        Ok(s) => s,
        Err(v) => {
            let name = format!("{t:?}").to_lowercase();
            return Err(fail(
                Rule::Transform,
                format!("`{name}` applies to text, not to this value"),
                Some(&v),
            ));
        }
    };
    Ok(match t {
        Transform::Trim if s.trim().len() == s.len() => Cell::Text(s),
        Transform::Trim => Cell::Text(s.trim().to_string()),
        Transform::Lowercase => Cell::Text(s.to_lowercase()),
        Transform::Uppercase => Cell::Text(s.to_uppercase()),
        Transform::Email => Cell::Text(normalise_email_owned(s).map_err(|s| {
            fail(
                Rule::EmailSyntax,
                "not a valid email address",
                Some(&Cell::Text(s)),
            )
        })?),
        Transform::E164 => Cell::Text(
            to_e164(&s, f.region)
                .map_err(|m| fail(Rule::PhoneE164, m, Some(&Cell::Text(s.clone()))))?,
        ),
    })
}

/// Trims, lowercases the domain, checks the syntax.
pub fn normalise_email(s: &str) -> Option<String> {
    let s = s.trim();
    let (local, domain) = s.rsplit_once('@')?;
    let e = format!("{local}@{}", domain.to_lowercase());
    valid_email(&e).then_some(e)
}

/// `normalise_email` taking the text: an address already trimmed with a lowercase domain is
/// checked and kept as it is, with no copy. `Err` gives the text back as it came.
fn normalise_email_owned(s: String) -> Result<String, String> {
    let plain = s.trim().len() == s.len()
        && s.rsplit_once('@')
            .is_some_and(|(_, d)| !d.bytes().any(|b| b.is_ascii_uppercase()) && d.is_ascii());
    if plain {
        return if valid_email(&s) { Ok(s) } else { Err(s) };
    }
    normalise_email(&s).ok_or(s)
}

/// The common shape of an address, checked in one pass: ASCII dot-atoms before the `@`,
/// letter/digit/hyphen labels after it, within RFC 5321's lengths. Whatever it accepts the
/// full check (`valid_email`) accepts too; it only spares that check's cost.
fn plain_email(s: &str) -> bool {
    let Some((local, domain)) = s.rsplit_once('@') else {
        return false;
    };
    let atext = |b: u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-/=?^_`{|}~".contains(&b);
    let label = |l: &[u8]| {
        !l.is_empty()
            && l.len() <= 63
            && l[0].is_ascii_alphanumeric()
            && l[l.len() - 1].is_ascii_alphanumeric()
            && l.iter().all(|b| b.is_ascii_alphanumeric() || *b == b'-')
    };
    (1..=64).contains(&local.len())
        && local
            .as_bytes()
            .split(|b| *b == b'.')
            .all(|a| !a.is_empty() && a.iter().all(|b| atext(*b)))
        && domain.len() <= 253
        && domain.contains('.')
        && domain.as_bytes().split(|b| *b == b'.').all(label)
}

/// Email syntax as Klaviyo accepts it: RFC 5322 address, and a domain with a dot.
pub fn valid_email(s: &str) -> bool {
    plain_email(s) || full_email_check(s)
}

fn full_email_check(s: &str) -> bool {
    if !email_address::EmailAddress::is_valid(s) || s.chars().any(char::is_whitespace) {
        return false;
    }
    match s.rsplit_once('@') {
        Some((local, domain)) => {
            !local.is_empty()
                && domain.contains('.')
                && !domain.starts_with('.')
                && !domain.ends_with('.')
                && !domain.starts_with('[')
        }
        None => false,
    }
}

/// A phone number in E.164 form (`+15005550006`), read in `region` when it has no `+`.
pub fn to_e164(s: &str, region: Option<phonenumber::country::Id>) -> Result<String, String> {
    let trimmed = s.trim();
    if region.is_none() && !trimmed.starts_with('+') {
        return Err(
            "not in international form (`+…`) and no region to read it in; set `default_region`"
                .into(),
        );
    }
    let n = phonenumber::parse(region, trimmed).map_err(|e| format!("not a phone number ({e})"))?;
    if !phonenumber::is_valid(&n) {
        return Err("not a valid phone number for its country".into());
    }
    Ok(n.format().mode(phonenumber::Mode::E164).to_string())
}

fn parse_datetime(s: &str) -> Option<DateTime<Utc>> {
    let s = s.trim();
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Some(t.with_timezone(&Utc));
    }
    for f in ["%Y-%m-%d %H:%M:%S%.f%#z", "%Y-%m-%dT%H:%M:%S%.f%#z"] {
        if let Ok(t) = DateTime::parse_from_str(s, f) {
            return Some(t.with_timezone(&Utc));
        }
    }
    for f in ["%Y-%m-%d %H:%M:%S%.f", "%Y-%m-%dT%H:%M:%S%.f"] {
        if let Ok(t) = NaiveDateTime::parse_from_str(s, f) {
            return Some(t.and_utc());
        }
    }
    NaiveDate::parse_from_str(s, "%Y-%m-%d")
        .ok()
        .and_then(|d| d.and_hms_opt(0, 0, 0))
        .map(|t| t.and_utc())
}

fn cast(v: Cell, ty: ValueType) -> Result<Cell, FieldFailure> {
    let bad =
        |v: &Cell, what: &str| fail(Rule::TypeCast, format!("cannot be read as {what}"), Some(v));
    Ok(match ty {
        ValueType::String => match &v {
            Cell::Json(Value::String(s)) => Cell::Text(s.clone()),
            Cell::Json(j) => Cell::Text(j.to_string()),
            Cell::Array(_) => Cell::Text(cell_to_json_lossy(&v).to_string()),
            other => Cell::Text(other.to_text().unwrap_or_default()),
        },
        ValueType::Number => match v {
            Cell::Int(_) | Cell::Float(_) | Cell::Numeric(_) => v,
            Cell::Text(ref s) => {
                let t = s.trim();
                if let Ok(i) = t.parse::<i64>() {
                    Cell::Int(i)
                } else if crate::job::query::is_decimal(t) {
                    Cell::Numeric(t.to_string())
                } else if let Some(x) = t.parse::<f64>().ok().filter(|x| x.is_finite()) {
                    Cell::Float(x)
                } else {
                    return Err(bad(&v, "a number"));
                }
            }
            Cell::Json(Value::Number(ref n)) => json_to_cell(&Value::Number(n.clone())),
            _ => return Err(bad(&v, "a number")),
        },
        ValueType::Integer => match v {
            Cell::Int(_) => v,
            Cell::Float(x) if x.fract() == 0.0 && x.abs() < 9.0e15 => Cell::Int(x as i64),
            Cell::Numeric(ref s) | Cell::Text(ref s) => {
                let t = s.trim();
                let int_part = match t.split_once('.') {
                    Some((i, frac)) if frac.chars().all(|c| c == '0') => i,
                    Some(_) => return Err(bad(&v, "an integer")),
                    None => t,
                };
                match int_part.parse::<i64>() {
                    Ok(i) => Cell::Int(i),
                    Err(_) => return Err(bad(&v, "an integer")),
                }
            }
            Cell::Json(Value::Number(ref n)) if n.is_i64() => Cell::Int(n.as_i64().unwrap_or(0)),
            _ => return Err(bad(&v, "an integer")),
        },
        ValueType::Boolean => match v {
            Cell::Bool(_) => v,
            Cell::Int(0) => Cell::Bool(false),
            Cell::Int(1) => Cell::Bool(true),
            Cell::Json(Value::Bool(b)) => Cell::Bool(b),
            Cell::Text(ref s) => match s.trim().to_ascii_lowercase().as_str() {
                "true" | "t" | "yes" | "y" | "1" | "on" => Cell::Bool(true),
                "false" | "f" | "no" | "n" | "0" | "off" => Cell::Bool(false),
                _ => return Err(bad(&v, "a boolean")),
            },
            _ => return Err(bad(&v, "a boolean")),
        },
        ValueType::Date => match v {
            Cell::Date(_) => v,
            Cell::Timestamp(t) => Cell::Date(t.date()),
            Cell::Timestamptz(t) => Cell::Date(t.date_naive()),
            Cell::Text(ref s) => match NaiveDate::parse_from_str(s.trim(), "%Y-%m-%d")
                .ok()
                .or_else(|| parse_datetime(s).map(|t| t.date_naive()))
            {
                Some(d) => Cell::Date(d),
                None => return Err(bad(&v, "a date (YYYY-MM-DD)")),
            },
            _ => return Err(bad(&v, "a date")),
        },
        ValueType::Datetime => match v {
            Cell::Timestamptz(_) => v,
            Cell::Timestamp(t) => Cell::Timestamptz(t.and_utc()),
            Cell::Date(d) => match d.and_hms_opt(0, 0, 0) {
                Some(t) => Cell::Timestamptz(t.and_utc()),
                None => return Err(bad(&v, "a date and time")),
            },
            Cell::Text(ref s) => match parse_datetime(s) {
                Some(t) => Cell::Timestamptz(t),
                None => return Err(bad(&v, "a date and time (RFC 3339)")),
            },
            _ => return Err(bad(&v, "a date and time")),
        },
        ValueType::List => match v {
            Cell::Array(_) => v,
            Cell::Json(Value::Array(items)) => {
                Cell::Array(items.iter().map(json_to_cell).collect())
            }
            Cell::Text(ref s) if s.trim_start().starts_with('[') => {
                match serde_json::from_str::<Value>(s) {
                    Ok(Value::Array(items)) => {
                        Cell::Array(items.iter().map(json_to_cell).collect())
                    }
                    _ => return Err(bad(&v, "a list")),
                }
            }
            other => Cell::Array(vec![other]),
        },
        ValueType::Json => match v {
            Cell::Text(ref s) => match serde_json::from_str::<Value>(s) {
                Ok(j) => Cell::Json(j),
                Err(_) => return Err(bad(&v, "JSON")),
            },
            other => other,
        },
    })
}

/// The JSON Klaviyo gets for a value, checking numbers and attribute shapes.
fn finish(v: Cell, f: &Field) -> Result<Value, FieldFailure> {
    // Text is the common case: move it, no copy.
    let v = match v {
        Cell::Text(s) => return Ok(Value::String(s)),
        other => other,
    };
    let json = cell_to_json(&v)?;
    match &f.path {
        FieldPath::Standard(_) | FieldPath::Location(_) => {
            let numeric_ok = matches!(f.path, FieldPath::Location("latitude" | "longitude"));
            match json {
                Value::String(_) => Ok(json),
                Value::Number(_) if numeric_ok => Ok(json),
                Value::Number(_) | Value::Bool(_) => {
                    Ok(Value::String(v.to_text().unwrap_or_default()))
                }
                _ => Err(fail(
                    Rule::AttributeType,
                    format!("`{}` takes text, not a list or object", f.key),
                    Some(&v),
                )),
            }
        }
        FieldPath::Property(_) => {
            check_property_names(&json, 1).map_err(|m| fail(Rule::PropertyName, m, None))?;
            Ok(json)
        }
    }
}

fn check_property_names(v: &Value, depth: usize) -> Result<(), String> {
    match v {
        Value::Object(m) => {
            if depth > MAX_PROPERTY_DEPTH {
                return Err(format!("nested deeper than {MAX_PROPERTY_DEPTH} levels"));
            }
            for (k, inner) in m {
                if k.is_empty()
                    || k.starts_with('$')
                    || k.chars().count() > MAX_PROPERTY_NAME
                    || k.chars().any(char::is_control)
                {
                    let shown: String = k.chars().take(40).collect();
                    return Err(format!(
                        "property name `{shown}` is empty, starts with `$`, has control characters or is longer than {MAX_PROPERTY_NAME} characters"
                    ));
                }
                check_property_names(inner, depth + 1)?;
            }
            Ok(())
        }
        Value::Array(items) => {
            if depth > MAX_PROPERTY_DEPTH {
                return Err(format!("nested deeper than {MAX_PROPERTY_DEPTH} levels"));
            }
            items
                .iter()
                .try_for_each(|i| check_property_names(i, depth + 1))
        }
        _ => Ok(()),
    }
}

/// Checks a value's text (`""` for a value that is not text) against what Klaviyo accepts
/// for the field.
fn validate(s: &str, f: &Field) -> Result<(), FieldFailure> {
    let text = || Some(Cell::Text(s.to_string()));
    match f.path {
        FieldPath::Standard("email") => {
            // A character is at least a byte: count characters only when the bytes exceed.
            if s.len() > MAX_EMAIL && s.chars().count() > MAX_EMAIL {
                return Err(fail(
                    Rule::EmailTooLong,
                    format!("longer than Klaviyo's {MAX_EMAIL} characters"),
                    text().as_ref(),
                ));
            }
            // After the `email` transform the address was already checked.
            if !f.transforms.contains(&Transform::Email) && !valid_email(s) {
                return Err(fail(
                    Rule::EmailSyntax,
                    "not a valid email address",
                    text().as_ref(),
                ));
            }
        }
        FieldPath::Standard("phone_number") => {
            let e164_shape = s.len() >= 8
                && s.len() <= 16
                && s.starts_with('+')
                && s[1..].chars().all(|c| c.is_ascii_digit())
                && !s[1..].starts_with('0');
            if !e164_shape {
                return Err(fail(
                    Rule::PhoneE164,
                    "not in E.164 form (`+15005550006`); add `transform: e164` and a `default_region`",
                    text().as_ref(),
                ));
            }
            // After the `e164` transform the number was already parsed and checked.
            if !f.transforms.contains(&Transform::E164)
                && let Err(m) = to_e164(s, None)
            {
                return Err(fail(Rule::PhoneE164, m, text().as_ref()));
            }
        }
        _ => {}
    }
    Ok(())
}

/// A profile's attributes while its row is built. Insertion-ordered with the semantics of
/// `serde_json::Map` under `preserve_order` (a key set again keeps its place), so it
/// serialises to the same bytes (a test compares them), but keys are borrowed from the
/// mapping and nothing is hashed: a profile has a handful of keys, and a linear scan beats
/// hashing them. Values are written as JSON into `leaves` as they are set; the tree keeps
/// only where each one is, so no JSON value is moved into it or kept.
struct Payload<'m, 'b> {
    root: Object<'m>,
    leaves: &'b mut Vec<u8>,
    /// Writing a value failed (it never does for a `Value`): the payload cannot be made.
    failed: Option<serde_json::Error>,
}

#[derive(Default)]
struct Object<'m>(Vec<(&'m str, Node<'m>)>);

enum Node<'m> {
    /// A value's JSON: `leaves[start..end]`.
    Leaf(usize, usize),
    Object(Object<'m>),
}

impl<'m> Object<'m> {
    fn slot(&mut self, key: &'m str) -> Option<usize> {
        // Keys come from the mapping, so the same key is mostly the same memory.
        self.0
            .iter()
            .position(|(k, _)| std::ptr::eq(*k, key) || *k == key)
    }

    /// Sets `key` to the value at `leaves[start..end]`, keeping its place when it was set
    /// before. (The node is made here from plain numbers: built by the caller and passed in,
    /// it was copied through memory at a cost that showed.)
    fn set(&mut self, key: &'m str, start: usize, end: usize) {
        match self.slot(key) {
            Some(i) => self.0[i].1 = Node::Leaf(start, end),
            None => self.0.push((key, Node::Leaf(start, end))),
        }
    }

    /// The node at `key`, an empty object put there first when the key is new.
    fn entry(&mut self, key: &'m str) -> &mut Node<'m> {
        let i = match self.slot(key) {
            Some(i) => i,
            None => {
                self.0
                    .push((key, Node::Object(Object(Vec::with_capacity(8)))));
                self.0.len() - 1
            }
        };
        &mut self.0[i].1
    }

    /// Sets `attributes.<path>` to the value at `leaves[start..end]`, creating `location` /
    /// nested property objects.
    fn insert(&mut self, path: &'m FieldPath, start: usize, end: usize) {
        match path {
            FieldPath::Standard(name) => self.set(name, start, end),
            FieldPath::Location(name) => {
                if let Node::Object(m) = self.entry("location") {
                    m.set(name, start, end);
                }
            }
            FieldPath::Property(parts) => {
                let mut cur = self.entry("properties");
                for (i, p) in parts.iter().enumerate() {
                    let Node::Object(m) = cur else { return };
                    if i + 1 == parts.len() {
                        m.set(p, start, end);
                        return;
                    }
                    cur = m.entry(p);
                    if !matches!(cur, Node::Object(_)) {
                        *cur = Node::Object(Object::default());
                    }
                }
            }
        }
    }

    fn write_json(&self, leaves: &[u8], out: &mut Vec<u8>) -> serde_json::Result<()> {
        out.push(b'{');
        for (i, (k, v)) in self.0.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            write_json_str(out, k)?;
            out.push(b':');
            match v {
                Node::Leaf(start, end) => out.extend_from_slice(&leaves[*start..*end]),
                Node::Object(o) => o.write_json(leaves, out)?,
            }
        }
        out.push(b'}');
        Ok(())
    }
}

impl<'m, 'b> Payload<'m, 'b> {
    /// `leaves` is scratch space, reused from row to row.
    fn new(fields: usize, leaves: &'b mut Vec<u8>) -> Payload<'m, 'b> {
        leaves.clear();
        Payload {
            root: Object(Vec::with_capacity(fields)),
            leaves,
            failed: None,
        }
    }

    /// Sets `attributes.<path>` to the JSON `write` writes.
    fn insert_with(&mut self, path: &'m FieldPath, write: impl FnOnce(&mut Vec<u8>)) {
        let start = self.leaves.len();
        write(self.leaves);
        self.root.insert(path, start, self.leaves.len());
    }

    /// Sets `attributes.<path>` to the text `s`.
    fn insert_str(&mut self, path: &'m FieldPath, s: &str) {
        let start = self.leaves.len();
        if let Err(e) = write_json_str(self.leaves, s) {
            self.failed.get_or_insert(e);
        }
        self.root.insert(path, start, self.leaves.len());
    }

    /// Sets `attributes.<path>` to `v`, written as serde_json writes it.
    fn insert(&mut self, path: &'m FieldPath, v: &Value) {
        let start = self.leaves.len();
        let written = match v {
            Value::String(s) => write_json_str(self.leaves, s),
            v => serde_json::to_writer(&mut *self.leaves, v),
        };
        if let Err(e) = written {
            self.failed.get_or_insert(e);
        }
        self.root.insert(path, start, self.leaves.len());
    }

    /// The payload as JSON, in one allocation of the exact size; `out` is scratch space.
    fn finish(mut self, out: &mut Vec<u8>) -> serde_json::Result<Box<RawValue>> {
        if let Some(e) = self.failed.take() {
            return Err(e);
        }
        out.clear();
        self.root.write_json(self.leaves, out)?;
        debug_assert!(std::str::from_utf8(out).is_ok());
        // SAFETY: `write_json` writes text only from `str`s, ASCII punctuation and
        // serde_json's own output: valid UTF-8.
        let json = unsafe { String::from_utf8_unchecked(out.as_slice().to_vec()) };
        // SAFETY: `write_json` writes one JSON object with no surrounding whitespace: its
        // keys and texts quoted and escaped as serde_json does, every other value written
        // by serde_json itself.
        Ok(unsafe { RawValue::from_string_unchecked(json) })
    }
}

/// A timestamp as a JSON string: `format_datetime`'s text, which has nothing to escape.
fn write_datetime_json(out: &mut Vec<u8>, t: &DateTime<Utc>) {
    out.push(b'"');
    write_datetime(out, t);
    out.push(b'"');
}

/// A JSON string as serde_json writes it: text with no `"`, `\` or control character (nearly
/// all text) is copied as it is; other text is left to serde_json's escaping.
fn write_json_str(out: &mut Vec<u8>, s: &str) -> serde_json::Result<()> {
    if needs_escape(s.as_bytes()) {
        return serde_json::to_writer(out, s);
    }
    out.reserve(s.len() + 2);
    out.push(b'"');
    out.extend_from_slice(s.as_bytes());
    out.push(b'"');
    Ok(())
}

/// Whether text has a byte JSON escapes (`"`, `\`, below 0x20), eight bytes at a time.
fn needs_escape(b: &[u8]) -> bool {
    const ONES: u64 = u64::from_ne_bytes([1; 8]);
    const HIGH: u64 = u64::from_ne_bytes([0x80; 8]);
    // A byte of `x` is below `n` (n ≤ 0x80) exactly when `(x - n·ONES) & !x & HIGH` has its
    // high bit: borrows only ever come from such a byte, so the answer for a word is exact.
    let any = |x: u64| {
        let quote = x ^ (ONES * u64::from(b'"'));
        let backslash = x ^ (ONES * u64::from(b'\\'));
        ((x.wrapping_sub(ONES * 0x20) & !x)
            | (quote.wrapping_sub(ONES) & !quote)
            | (backslash.wrapping_sub(ONES) & !backslash))
            & HIGH
            != 0
    };
    let word = |w: &[u8]| u64::from_ne_bytes(w.try_into().unwrap_or([0; 8]));
    if b.len() < 8 {
        return b.iter().any(|b| *b < 0x20 || *b == b'"' || *b == b'\\');
    }
    // Whole words, then the last eight bytes (overlapping the words before them): no copy
    // of the tail into a buffer, which would cost more than the check.
    b.chunks_exact(8).any(|w| any(word(w))) || any(word(&b[b.len() - 8..]))
}

/// An exact decimal as a JSON number, when a JSON number (i64, u64 or f64) says exactly
/// the same value.
pub fn decimal_to_json(s: &str) -> Option<Value> {
    let t = s.trim();
    if let Ok(i) = t.parse::<i64>() {
        return Some(Value::from(i));
    }
    if let Ok(u) = t.parse::<u64>() {
        return Some(Value::from(u));
    }
    if !crate::job::query::is_decimal(t) {
        return None;
    }
    let (neg, body) = match t.strip_prefix('-') {
        Some(b) => (true, b),
        None => (false, t.strip_prefix('+').unwrap_or(t)),
    };
    let (int, frac) = body.split_once('.').unwrap_or((body, ""));
    let frac = frac.trim_end_matches('0');
    let int = int.trim_start_matches('0');
    if frac.is_empty() {
        // `25.00`: an integer, if it fits.
        let int = if int.is_empty() { "0" } else { int };
        return if neg {
            format!("-{int}").parse::<i64>().ok().map(Value::from)
        } else {
            int.parse::<u64>().ok().map(Value::from)
        };
    }
    // Up to 15 significant digits always survive a double (DBL_DIG), and `m / 10^k` with both
    // exact is the correctly rounded double, the same `parse` gives: no need to print it back.
    let significant = if int.is_empty() {
        frac.trim_start_matches('0').len()
    } else {
        int.len() + frac.len()
    };
    if significant <= 15 && frac.len() <= 22 {
        let m = int
            .bytes()
            .chain(frac.bytes())
            .fold(0u64, |m, d| m * 10 + u64::from(d - b'0'));
        let x = m as f64 / 10f64.powi(frac.len() as i32);
        return serde_json::Number::from_f64(if neg { -x } else { x }).map(Value::Number);
    }
    let x: f64 = t.parse().ok()?;
    if !x.is_finite() {
        return None;
    }
    // Does the shortest form of the double give back the same digits?
    let back = format!("{}", x.abs());
    let (bi, bf) = back.split_once('.').unwrap_or((&back, ""));
    let same = bi.trim_start_matches('0') == int && bf.trim_end_matches('0') == frac;
    if !same {
        return None;
    }
    serde_json::Number::from_f64(x).map(Value::Number)
}

fn cell_to_json(v: &Cell) -> Result<Value, FieldFailure> {
    Ok(match v {
        Cell::Null => Value::Null,
        Cell::Bool(b) => Value::Bool(*b),
        Cell::Int(i) => Value::from(*i),
        Cell::Float(x) => match serde_json::Number::from_f64(*x) {
            Some(n) => Value::Number(n),
            None => {
                return Err(fail(
                    Rule::NumericPrecision,
                    "NaN and infinity are not numbers Klaviyo accepts",
                    Some(v),
                ));
            }
        },
        Cell::Numeric(s) => match decimal_to_json(s) {
            Some(n) => n,
            None => {
                return Err(fail(
                    Rule::NumericPrecision,
                    "has more digits than Klaviyo keeps (a double holds ~15 significant digits), or is NaN/infinity; round it in SQL or map it with `type: string`",
                    Some(v),
                ));
            }
        },
        Cell::Text(s) => Value::String(s.clone()),
        Cell::Date(d) => Value::String(d.format("%Y-%m-%d").to_string()),
        Cell::Timestamp(t) => Value::String(format_datetime(&t.and_utc())),
        Cell::Timestamptz(t) => Value::String(format_datetime(t)),
        Cell::Uuid(u) => Value::String(u.to_string()),
        Cell::Json(j) => j.clone(),
        Cell::Array(items) => {
            Value::Array(items.iter().map(cell_to_json).collect::<Result<_, _>>()?)
        }
        Cell::Unreadable(why) => {
            return Err(fail(Rule::TypeCast, format!("cannot be read: {why}"), None));
        }
    })
}

/// JSON for previews: like the payload, but numbers that would be rejected show as text.
pub fn cell_to_json_lossy(v: &Cell) -> Value {
    match v {
        Cell::Array(items) => Value::Array(items.iter().map(cell_to_json_lossy).collect()),
        other => cell_to_json(other)
            .unwrap_or_else(|_| Value::String(other.to_text().unwrap_or_default())),
    }
}

fn json_to_cell(v: &Value) -> Cell {
    match v {
        Value::Null => Cell::Null,
        Value::Bool(b) => Cell::Bool(*b),
        Value::Number(n) => match n.as_i64() {
            Some(i) => Cell::Int(i),
            None => Cell::Float(n.as_f64().unwrap_or(f64::NAN)),
        },
        Value::String(s) => Cell::Text(s.clone()),
        Value::Array(items) => Cell::Array(items.iter().map(json_to_cell).collect()),
        Value::Object(_) => Cell::Json(v.clone()),
    }
}

fn cell_to_template(v: &Cell) -> JValue {
    match v {
        Cell::Null => JValue::from(()),
        Cell::Bool(b) => JValue::from(*b),
        Cell::Int(i) => JValue::from(*i),
        Cell::Float(x) => JValue::from(*x),
        Cell::Numeric(s) => match s.parse::<i64>() {
            Ok(i) => JValue::from(i),
            Err(_) => s
                .parse::<f64>()
                .map(JValue::from)
                .unwrap_or_else(|_| JValue::from(s.as_str())),
        },
        Cell::Json(j) => JValue::from(Serde(j)),
        Cell::Array(items) => JValue::from(items.iter().map(cell_to_template).collect::<Vec<_>>()),
        other => JValue::from(other.to_text().unwrap_or_default()),
    }
}

/// Masks personal values for messages: emails `a***@example.com`, phones `+1******0006`,
/// names and address lines `A***`. Other values are shown, cut at 80 characters.
pub fn mask(field: &str, value: &str) -> String {
    if field == "email" || (value.contains('@') && valid_email(value.trim())) {
        return mask_email(value);
    }
    if field == "phone_number" || field.ends_with("phone") {
        return mask_phone(value);
    }
    if matches!(
        field,
        "first_name" | "last_name" | "location.address1" | "location.address2" | "location.ip"
    ) {
        let first: String = value.chars().take(1).collect();
        return format!("{first}***");
    }
    if value.chars().count() > 80 {
        let head: String = value.chars().take(77).collect();
        return format!("{head}…");
    }
    value.to_string()
}

/// `ana@example.com` → `a***@example.com`.
pub fn mask_email(s: &str) -> String {
    match s.rsplit_once('@') {
        Some((local, domain)) => {
            let first: String = local.chars().take(1).collect();
            format!("{first}***@{domain}")
        }
        None => mask_phone(s),
    }
}

/// `+15005550006` → `+1******0006`: the first two and last four characters stay.
pub fn mask_phone(s: &str) -> String {
    let chars: Vec<char> = s.chars().collect();
    if chars.len() <= 6 {
        return "*".repeat(chars.len());
    }
    let head: String = chars[..2].iter().collect();
    let tail: String = chars[chars.len() - 4..].iter().collect();
    format!("{head}{}{tail}", "*".repeat(chars.len() - 6))
}

/// The `max_invalid` guard: may a run with `rejected` of `rows` rows go on?
#[derive(Debug, Clone, PartialEq)]
pub struct InvalidGuard {
    pub rejected: u64,
    pub rows: u64,
    /// The most rejects allowed, when the job sets `guards.max_invalid`.
    pub limit: Option<u64>,
    pub threshold: Option<Threshold>,
}

impl InvalidGuard {
    pub fn passed(&self) -> bool {
        self.limit.is_none_or(|l| self.rejected <= l)
    }
}

impl fmt::Display for InvalidGuard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.threshold, self.limit) {
            (Some(t), Some(l)) => {
                let mark = if self.passed() { '✓' } else { '✗' };
                write!(
                    f,
                    "invalid {} ≤ {t} (limit {l} of {} rows) {mark}",
                    self.rejected, self.rows
                )
            }
            _ => write!(
                f,
                "invalid {} of {} rows (no max_invalid guard)",
                self.rejected, self.rows
            ),
        }
    }
}

/// Evaluates `guards.max_invalid` for `rejected` rows out of `rows` read.
pub fn check_invalid(max_invalid: Option<Threshold>, rejected: u64, rows: u64) -> InvalidGuard {
    InvalidGuard {
        rejected,
        rows,
        limit: max_invalid.map(|t| t.limit(rows)),
        threshold: max_invalid,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decimals_with_zero_fractions_are_integers() {
        assert_eq!(decimal_to_json("37.00"), Some(Value::from(37)));
        assert_eq!(decimal_to_json("-5.0"), Some(Value::from(-5)));
        assert_eq!(decimal_to_json("0.00"), Some(Value::from(0)));
    }

    #[test]
    fn masks() {
        assert_eq!(mask_email("ana@example.com"), "a***@example.com");
        assert_eq!(mask_phone("+15005550006"), "+1******0006");
        assert_eq!(mask("email", "not-an-email"), "no******mail");
        assert_eq!(mask("first_name", "Ana"), "A***");
        assert_eq!(mask("properties.plan", "gold"), "gold");
        assert_eq!(
            mask("properties.contact", "bo@example.com"),
            "b***@example.com"
        );
    }

    #[test]
    fn decimals_keep_their_digits_or_are_refused() {
        assert_eq!(decimal_to_json("412.50"), Some(serde_json::json!(412.5)));
        assert_eq!(decimal_to_json("-0.0001"), Some(serde_json::json!(-0.0001)));
        assert_eq!(decimal_to_json("12"), Some(serde_json::json!(12)));
        assert_eq!(
            decimal_to_json("18446744073709551615"),
            Some(serde_json::json!(u64::MAX))
        );
        assert_eq!(decimal_to_json("999999999999999.99"), None);
        assert_eq!(decimal_to_json("12345678901234567890.1"), None);
        assert_eq!(decimal_to_json("123456789012345678901234"), None);
        assert_eq!(decimal_to_json("NaN"), None);
        assert_eq!(decimal_to_json("0.1"), Some(serde_json::json!(0.1)));
        assert_eq!(decimal_to_json("25.00"), Some(serde_json::json!(25)));
        assert_eq!(decimal_to_json("-0.00"), Some(serde_json::json!(0)));
        assert_eq!(decimal_to_json("-7.0"), Some(serde_json::json!(-7)));
    }

    /// The quick email check never accepts what the full one refuses, and accepts the usual
    /// addresses.
    #[test]
    fn the_quick_email_check_accepts_only_what_the_full_one_does() {
        let mut next = crate::rows::testing::xorshift(0x2545_F491_4F6C_DD1Du64);
        let pieces = [
            "ab", "Z9", ".", "-", "@", "+", "x.com", "é", " ", "..", "\"", "a-", "-b", "[1]", "co",
            "_", "!#", "<", "\\", "東", "@a.b", "\t", "1", "q.", ".r", "(c)", "%", "~", "`",
        ];
        let mut accepted = 0;
        for _ in 0..300_000 {
            let n = 1 + next() % 8;
            let s: String = (0..n)
                .map(|_| pieces[(next() % pieces.len() as u64) as usize])
                .collect();
            if plain_email(&s) {
                accepted += 1;
                assert!(full_email_check(&s), "{s:?} passed the quick check only");
            }
        }
        assert!(
            accepted > 100,
            "the random addresses never took the quick path"
        );
        for ok in [
            "ana@example.com",
            "a.b+c@mail.example.co.uk",
            "x_y-z@a-b.io",
        ] {
            assert!(plain_email(ok) && full_email_check(ok), "{ok}");
        }
        let long_local = format!("{}@example.com", "a".repeat(65));
        for bad in [
            "a..b@x.com",
            ".a@x.com",
            "a@x",
            "a@-x.com",
            "a@x-.com",
            "a@x..com",
            &long_local,
        ] {
            assert!(!plain_email(bad), "{bad}");
        }
        assert!(!valid_email(&long_local));
    }

    /// Decimals of up to 15 significant digits take a shortcut; it must give exactly the
    /// double that parsing gives, for every length, scale and sign.
    #[test]
    fn short_decimals_become_the_double_parsing_gives() {
        let mut next = crate::rows::testing::xorshift(0x9E37_79B9_7F4A_7C15u64);
        for _ in 0..200_000 {
            let digits = 1 + next() % 15;
            let m = next() % 10u64.pow(digits as u32);
            let scale = next() % 20;
            let text = format!("{m:0width$}", width = scale as usize + 1);
            let (int, frac) = text.split_at(text.len() - scale as usize);
            let sign = if next() % 2 == 0 { "-" } else { "" };
            let s = if frac.is_empty() {
                format!("{sign}{int}.5")
            } else {
                format!("{sign}{int}.{frac}7")
            };
            let expected = s.parse::<f64>().unwrap();
            let significant = s.trim_start_matches('-').replace('.', "");
            let significant = significant.trim_start_matches('0').trim_end_matches('0');
            match decimal_to_json(&s) {
                Some(Value::Number(n)) => assert_eq!(n.as_f64(), Some(expected), "{s}"),
                None => assert!(significant.len() > 15, "{s} was refused"),
                other => panic!("{s} gave {other:?}"),
            }
        }
    }

    #[test]
    fn emails_and_phones() {
        assert!(valid_email("ana@example.com"));
        assert!(!valid_email("ana@localhost"));
        assert!(!valid_email("ana example.com"));
        assert!(!valid_email("@example.com"));
        assert_eq!(
            normalise_email("  Ana@Example.COM "),
            Some("Ana@example.com".into())
        );
        let us = Some(phonenumber::country::Id::US);
        assert_eq!(to_e164("(201) 555-0123", us), Ok("+12015550123".into()));
        assert!(to_e164("201 555 0123", None).is_err());
        assert!(to_e164("12", us).is_err());
        assert_eq!(to_e164("+44 20 7946 0958", us), Ok("+442079460958".into()));
    }

    /// The attributes as kdit built them before `Payload`: a tree of `Value`s with the
    /// semantics of `serde_json::Map` under `preserve_order`, serialised by serde_json.
    mod reference {
        use super::*;

        #[derive(Default)]
        pub struct Object<'m>(pub Vec<(&'m str, Node<'m>)>);

        pub enum Node<'m> {
            Leaf(Value),
            Object(Object<'m>),
        }

        impl<'m> Object<'m> {
            fn slot(&mut self, key: &'m str) -> Option<usize> {
                self.0.iter().position(|(k, _)| *k == key)
            }

            fn set(&mut self, key: &'m str, node: Node<'m>) {
                match self.slot(key) {
                    Some(i) => self.0[i].1 = node,
                    None => self.0.push((key, node)),
                }
            }

            fn entry(&mut self, key: &'m str) -> &mut Node<'m> {
                let i = match self.slot(key) {
                    Some(i) => i,
                    None => {
                        self.0.push((key, Node::Object(Object::default())));
                        self.0.len() - 1
                    }
                };
                &mut self.0[i].1
            }

            pub fn insert(&mut self, path: &'m FieldPath, v: Value) {
                match path {
                    FieldPath::Standard(name) => self.set(name, Node::Leaf(v)),
                    FieldPath::Location(name) => {
                        if let Node::Object(m) = self.entry("location") {
                            m.set(name, Node::Leaf(v));
                        }
                    }
                    FieldPath::Property(parts) => {
                        let mut cur = self.entry("properties");
                        for (i, p) in parts.iter().enumerate() {
                            let Node::Object(m) = cur else { return };
                            if i + 1 == parts.len() {
                                m.set(p, Node::Leaf(v));
                                return;
                            }
                            cur = m.entry(p);
                            if !matches!(cur, Node::Object(_)) {
                                *cur = Node::Object(Object::default());
                            }
                        }
                    }
                }
            }
        }

        impl Serialize for Object<'_> {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                use serde::ser::SerializeMap as _;
                let mut map = s.serialize_map(Some(self.0.len()))?;
                for (k, v) in &self.0 {
                    map.serialize_entry(k, v)?;
                }
                map.end()
            }
        }

        impl Serialize for Node<'_> {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                match self {
                    Node::Leaf(v) => v.serialize(s),
                    Node::Object(o) => o.serialize(s),
                }
            }
        }
    }

    /// The payload gives the bytes serde_json gives for the tree of `Value`s kdit built before
    /// (`reference`) with the same paths: every kind of value, text that needs escaping or
    /// not, keys set again, and paths that run into values set before (`location` or a
    /// property set as a value, then as an object).
    #[test]
    fn payloads_are_written_as_serde_json_writes_them() {
        let mut next = crate::rows::testing::xorshift(0xD1B5_4A32_D192_ED03u64);
        let pieces = [
            "a",
            "Zürich",
            "\"",
            "\\",
            "\n",
            "\t",
            "\u{1}",
            "\u{1f}",
            "\u{7f}",
            "東京",
            " ",
            "/",
            "é",
            "\r",
            "\u{8}",
            "\u{c}",
            "x@example.com",
            "'",
            "<",
            "\u{2028}",
            "😀",
            "",
        ];
        fn text(next: &mut impl FnMut() -> u64, pieces: &[&str]) -> String {
            (0..next() % 6)
                .map(|_| pieces[(next() % pieces.len() as u64) as usize])
                .collect()
        }
        fn leaf(next: &mut impl FnMut() -> u64, pieces: &[&str], depth: u32) -> Value {
            match next() % if depth > 2 { 7 } else { 9 } {
                0..=2 => Value::String(text(next, pieces)),
                3 => Value::from(next() as i64),
                4 => Value::from(next()),
                5 => Value::from(f64::from_bits(next() % (0x7FEu64 << 52))),
                6 => [Value::Null, Value::Bool(true), Value::Bool(false)][(next() % 3) as usize]
                    .clone(),
                7 => Value::Array(
                    (0..next() % 4)
                        .map(|_| leaf(next, pieces, depth + 1))
                        .collect(),
                ),
                _ => Value::Object(
                    (0..next() % 4)
                        .map(|_| (text(next, pieces), leaf(next, pieces, depth + 1)))
                        .collect(),
                ),
            }
        }
        let mut paths = vec![
            FieldPath::Standard("email"),
            FieldPath::Standard("first_name"),
            FieldPath::Standard("location"),
            FieldPath::Standard("properties"),
            FieldPath::Standard("k\"\u{1}"),
            FieldPath::Location("city"),
            FieldPath::Location("zip"),
            FieldPath::Location("é\n"),
        ];
        let parts = ["a", "b", "plan", "é\"q", "\u{2}"];
        for x in 0..parts.len() {
            paths.push(FieldPath::Property(vec![parts[x].to_string()]));
            for y in 0..parts.len() {
                paths.push(FieldPath::Property(vec![parts[x].into(), parts[y].into()]));
                paths.push(FieldPath::Property(vec![
                    parts[x].into(),
                    parts[y].into(),
                    "z".into(),
                ]));
            }
        }
        let (mut leaves, mut out) = (Vec::new(), Vec::new());
        let (mut escaped, mut replaced) = (0, 0);
        for _ in 0..20_000 {
            let mut payload = Payload::new(4, &mut leaves);
            let mut tree = reference::Object::default();
            for _ in 0..next() % 9 {
                let path = &paths[(next() % paths.len() as u64) as usize];
                let v = leaf(&mut next, &pieces, 0);
                payload.insert(path, &v);
                tree.insert(path, v);
            }
            let expected = serde_json::to_string(&tree).unwrap();
            assert_eq!(payload.finish(&mut out).unwrap().get(), expected);
            escaped += usize::from(expected.contains('\\'));
            replaced += usize::from(expected.contains("\"location\":{") && tree.0.len() > 2);
        }
        assert!(escaped > 1000, "escaping was hardly tested");
        assert!(replaced > 100, "nesting was hardly tested");
    }

    /// Timestamps written straight into the payload are the JSON `finish` makes of them, for
    /// every precision, and years outside 0–9999.
    #[test]
    fn timestamps_are_written_as_finish_writes_them() {
        let mut next = crate::rows::testing::xorshift(0x2F0F_6A1B_9C3D_5E7Fu64);
        let field = Field {
            key: "properties.at".into(),
            path: FieldPath::Property(vec!["at".into()]),
            origin: Origin::Column("at".into()),
            transforms: Vec::new(),
            value_type: None,
            default: None,
            region: None,
            on_null: NullPolicy::Keep,
        };
        for i in 0..50_000u64 {
            let Some(t) = crate::rows::testing::datetime(&mut next, i) else {
                continue;
            };
            for cell in [Cell::Timestamptz(t), Cell::Timestamp(t.naive_utc())] {
                let Ok(json) = finish(cell, &field) else {
                    panic!("{t} was refused");
                };
                let general = serde_json::to_string(&json).unwrap();
                let mut direct = Vec::new();
                write_datetime_json(&mut direct, &t);
                assert_eq!(String::from_utf8(direct).unwrap(), general);
            }
        }
    }

    /// The word-at-a-time check finds every byte JSON escapes, wherever it sits, and nothing
    /// else: every byte value at every position of texts of up to 20 bytes.
    #[test]
    fn escapes_are_found_at_every_position() {
        for len in 1..=20 {
            for at in 0..len {
                for b in 0..=255u8 {
                    let mut text = vec![b'a'; len];
                    text[at] = b;
                    let want = b < 0x20 || b == b'"' || b == b'\\';
                    assert_eq!(needs_escape(&text), want, "{b:#x} at {at} of {len}");
                }
            }
        }
        assert!(!needs_escape(b""));
        assert!(!needs_escape("Zürich 東京 😀".as_bytes()));
    }

    /// The key set answers as a `HashSet` does: through growth, for repeated keys and for 0.
    #[test]
    fn the_key_set_is_a_set() {
        let mut next = crate::rows::testing::xorshift(0x5851_F42D_4C95_7F2Du64);
        let mut keys = KeySet::default();
        let mut reference = std::collections::HashSet::new();
        for i in 0..300_000u64 {
            let h = match i % 5 {
                // Repeats, keys sharing their top bits (neighbouring slots), and 0.
                0 => next() % 50_000,
                1 => (next() % 64) << 58 | (i % 7),
                2 if i % 1000 == 2 => 0,
                _ => next(),
            };
            if i % 3 == 0 {
                keys.prefetch(h);
            }
            assert_eq!(keys.insert(h), reference.insert(h), "key {h:#x}");
        }
        assert_eq!(keys.len(), reference.len());
        assert!(reference.contains(&0));
    }

    #[test]
    fn guards() {
        let g = check_invalid(Some(Threshold::Percent(1.0)), 12, 1000);
        assert!(!g.passed());
        assert_eq!(g.limit, Some(10));
        assert!(check_invalid(Some(Threshold::Count(12)), 12, 1000).passed());
        assert!(check_invalid(None, 500, 1000).passed());
    }
}
