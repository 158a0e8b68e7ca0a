//! A job's `profiles` section compiled into a `Mapping`, and checked against a query's
//! columns.
//!
//! In: a job's `ProfilesSpec` (+ project `Defaults`); later the query's `Column`s. Out: a
//! `Mapping` (each field's path, origin, transforms, type, default, region and NULL policy;
//! its templates compiled) or every `MappingError` at once; then, per field, where its value
//! comes from in a row, or every `ColumnProblem` (a mapped column the query lacks, or has
//! with a type that cannot feed the field) before any row is read. Pure: no I/O.

use std::fmt;
use std::sync::Arc;

use minijinja::Environment;
use serde_json::Value;

use crate::job::attributes::FieldPath;
use crate::job::spec::{Defaults, NullPolicy, ProfileKey, ProfilesSpec, Transform, ValueType};
use crate::job::template::SimpleTemplate;
use crate::rows::cell::{Cell, Column, json_to_cell};

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

/// Where a field's value comes from, by column name.
#[derive(Debug, Clone)]
pub(super) enum Origin {
    Column(String),
    /// Template name in the environment, the columns it reads, and the template when it
    /// is simple enough to render without minijinja.
    Template(String, Vec<String>, Option<Arc<SimpleTemplate>>),
    Constant(Cell),
}

/// One field of the `profiles` section, compiled.
#[derive(Debug, Clone)]
pub(super) struct MappedField {
    pub(super) key: String,
    pub(super) path: FieldPath,
    pub(super) origin: Origin,
    pub(super) transforms: Vec<Transform>,
    pub(super) value_type: Option<ValueType>,
    pub(super) default: Option<Cell>,
    pub(super) region: Option<phonenumber::country::Id>,
    pub(super) on_null: NullPolicy,
}

/// A job's `profiles` section, checked and ready to bind to a query's columns.
pub struct Mapping {
    pub(super) key: ProfileKey,
    pub(super) fields: Vec<MappedField>,
    pub(super) env: Environment<'static>,
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
            fields.push(MappedField {
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

    /// Checks the query's columns against the mapping, before any row is read: for each
    /// field (by index into `fields`), where its value comes from in a row (`bind` makes the
    /// `Transformer` of it).
    pub(super) fn bind_columns(
        &self,
        columns: &[Column],
    ) -> Result<Vec<(usize, BoundOrigin)>, Vec<ColumnProblem>> {
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
        Ok(bound)
    }
}

/// Whether a column's type can feed a field at all (checked by `kdit check`).
fn unusable(f: &MappedField, col: &Column) -> Option<ColumnProblem> {
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

/// Where a field's value comes from, by column index in the query's rows.
#[derive(Debug, Clone)]
pub(super) enum BoundOrigin {
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
