//! A job's compiled `Mapping` (`job::profiles`) checked against a query's columns.
//!
//! In: the job's `Mapping` and the query's `Column`s. Out: per field, where its value comes
//! from in a row (and its default as a cell), or every `ColumnProblem` (a mapped column the
//! query lacks, or has with a type that cannot feed the field) before any row is read. Pure:
//! no I/O.

use std::fmt;
use std::sync::Arc;

use crate::job::attributes::FieldPath;
use crate::job::profiles::{MappedField, Mapping, Origin};
use crate::job::spec::ValueType;
use crate::job::template::SimpleTemplate;
use crate::rows::cell::{Cell, Column, json_to_cell};

/// A field bound to a query's columns: its index into `Mapping::fields`, where its value
/// comes from in a row, and its `default` as a cell.
pub(super) type BoundField = (usize, BoundOrigin, Option<Cell>);

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

impl Mapping {
    /// Checks the query's columns against the mapping, before any row is read: for each
    /// field (by index into `fields`), where its value comes from in a row (`bind` makes the
    /// `Transformer` of it).
    pub(super) fn bind_columns(
        &self,
        columns: &[Column],
    ) -> Result<Vec<BoundField>, Vec<ColumnProblem>> {
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
                Origin::Constant(v) => BoundOrigin::Constant(json_to_cell(v)),
            };
            bound.push((fi, source, f.default.as_ref().map(json_to_cell)));
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
