//! A job's `profiles` section compiled into a `Mapping`: the one profiles compiler.
//!
//! In: a job's `ProfilesSpec` (with the hidden consent fields, `with_carrier`) and project
//! `Defaults`. Out: a `Mapping` (each field's path, origin, transforms, type, default, region
//! and NULL policy; its templates compiled) or every `MappingError` at once. `job::compile`
//! calls it once per job; `rows::transform` binds the result to a query's columns. Pure: no
//! I/O.

use std::fmt;
use std::sync::Arc;

use minijinja::Environment;
use serde_json::Value;

use crate::job::attributes::{CONSENT_CARRIER, FieldPath};
use crate::job::spec::{
    Defaults, FieldMapping, FieldSource, JobSpec, NullPolicy, ProfileKey, ProfilesSpec, Transform,
    ValueType,
};
use crate::job::template::SimpleTemplate;

/// The hidden consent field holding a row's `consent.consented_at` value.
pub const CONSENTED_AT: &str = "consented_at";
/// The hidden consent field holding a row's `consent.unsubscribe_column` value.
pub const UNSUBSCRIBE: &str = "unsubscribe";

/// The job spec the rows are read with: the job's own, plus the hidden consent fields when
/// the job reads consent from columns (see `plan::consent`).
pub fn with_carrier(spec: &JobSpec) -> JobSpec {
    let mut spec = spec.clone();
    let Some(c) = spec.consent.clone() else {
        return spec;
    };
    let hidden = |column: &str, ty: ValueType| {
        FieldSource::Mapping(Box::new(FieldMapping {
            column: Some(column.to_string()),
            value_type: Some(ty),
            on_null: Some(NullPolicy::Keep),
            ..FieldMapping::default()
        }))
    };
    if let Some(col) = &c.consented_at {
        spec.profiles.fields.insert(
            format!("properties.{CONSENT_CARRIER}.{CONSENTED_AT}"),
            hidden(col, ValueType::Datetime),
        );
    }
    if let (false, Some(col)) = (c.unsubscribe.is_empty(), &c.unsubscribe_column) {
        spec.profiles.fields.insert(
            format!("properties.{CONSENT_CARRIER}.{UNSUBSCRIBE}"),
            hidden(col, ValueType::Boolean),
        );
    }
    spec
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

/// Where a field's value comes from, by column name.
#[derive(Debug, Clone)]
pub(crate) enum Origin {
    Column(String),
    /// Template name in the environment, the columns it reads, and the template when it
    /// is simple enough to render without minijinja.
    Template(String, Vec<String>, Option<Arc<SimpleTemplate>>),
    /// A `value:` (made a cell when the mapping is bound).
    Constant(Value),
}

/// One field of the `profiles` section, compiled.
#[derive(Debug, Clone)]
pub(crate) struct MappedField {
    pub(crate) key: String,
    pub(crate) path: FieldPath,
    pub(crate) origin: Origin,
    pub(crate) transforms: Vec<Transform>,
    pub(crate) value_type: Option<ValueType>,
    /// The `default:` value (made a cell when the mapping is bound).
    pub(crate) default: Option<Value>,
    pub(crate) region: Option<phonenumber::country::Id>,
    pub(crate) on_null: NullPolicy,
}

/// A job's `profiles` section, checked and ready to bind to a query's columns.
pub struct Mapping {
    pub(crate) key: ProfileKey,
    pub(crate) fields: Vec<MappedField>,
    pub(crate) env: Environment<'static>,
    /// Columns named in `query.columns`, which must exist too.
    pub(crate) extra_columns: Vec<String>,
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
                Origin::Constant(m.value.clone().unwrap_or(Value::Null))
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
                default: m.default.clone(),
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
}
