//! Stored queries: SQL text with a minijinja template for *structure only*, and typed
//! parameters declared in header comments.
//!
//! In: a query's label (its file path, or `inline SQL`), its text, and the job's parameter
//! values. Out: a `StoredQuery` (declared parameters with their lines), the problems
//! `kdit validate` reports, and a `RenderedQuery`: SQL where every parameter is a bind
//! placeholder (`$1::interval`) plus the values to bind. Values never enter the SQL text.
//! Pure: no I/O, no database.
//!
//! A `.sql` file declares its parameters at the top:
//!
//! ```sql
//! -- @param since interval = 7d   How far back to look
//! -- @param region text           Optional: only this region
//! select email from customers
//! where last_order_at >= now() - {{ since }}
//! {% if region is defined %} and region = {{ region }} {% endif %}
//! ```
//!
//! A parameter without value and without default is *undefined*, so `is defined` tests work.
//! `{% if flag %}` tests a parameter's value (its truthiness), which shapes the SQL without
//! pasting the value into it. Inline SQL (`query.sql`) declares nothing: each parameter's
//! type is inferred from its value — booleans `bool`, integers `bigint`, other numbers
//! `numeric`, text that reads as a duration (`7d`, `1h 30m`) `interval`, other text `text`,
//! lists of integers `int[]`, other lists `text[]`.
//!
//! This file parses and renders; `header` reads the `-- @param` lines, `lint` maps rendered
//! lines back to source lines and finds placeholders inside quoted strings, and `convert`
//! turns values into bind values of a parameter's type.

pub mod convert;
pub mod header;
pub mod lint;

use std::collections::HashSet;
use std::fmt;
use std::sync::{Arc, Mutex};

use indexmap::IndexMap;
use minijinja::value::{Object, ObjectRepr, Value};
use minijinja::{Environment, UndefinedBehavior};

pub(crate) use convert::is_decimal;
pub use convert::{BindValue, ParamType, convert, infer_type};
pub use header::ParamDecl;
pub use lint::QueryProblem;

use crate::job::spec::ParamValue;
use convert::type_hint;
use header::parse_header;
use lint::{contains_word, line_map_from_marked, mark_lines, quoted_placeholders, reference_line};

/// One bind parameter: `$index` in the rendered SQL.
#[derive(Debug, Clone, PartialEq)]
pub struct Bind {
    pub name: String,
    pub ty: ParamType,
    pub value: BindValue,
}

/// A query ready to run: SQL with placeholders, and the values for them in order.
#[derive(Debug, Clone, PartialEq)]
pub struct RenderedQuery {
    /// Where the query came from: a file path or `inline SQL`.
    pub label: String,
    pub sql: String,
    /// `binds[0]` is `$1`.
    pub binds: Vec<Bind>,
    /// For each line of `sql` (0-based index), the 1-based line of the source it came from,
    /// when known exactly.
    pub line_map: Option<Vec<usize>>,
}

impl RenderedQuery {
    /// The source line for a 1-based line of the rendered SQL.
    pub fn source_line(&self, rendered_line: usize) -> Option<usize> {
        self.line_map
            .as_ref()
            .and_then(|m| m.get(rendered_line.checked_sub(1)?).copied())
    }

    /// `name = value` for each bind, for messages.
    pub fn describe_params(&self) -> String {
        self.binds
            .iter()
            .map(|b| format!("{} = {}", b.name, b.value))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// Why a query cannot be parsed or rendered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QueryError {
    #[error("{label}: {}", join_problems(.problems))]
    Invalid {
        label: String,
        problems: Vec<QueryProblem>,
    },
}

impl QueryError {
    pub fn problems(&self) -> &[QueryProblem] {
        match self {
            QueryError::Invalid { problems, .. } => problems,
        }
    }
}

fn join_problems(p: &[QueryProblem]) -> String {
    p.iter()
        .map(|p| p.to_string())
        .collect::<Vec<_>>()
        .join("\n")
}

/// A parsed stored query (or inline SQL).
#[derive(Debug, Clone)]
pub struct StoredQuery {
    pub label: String,
    pub text: String,
    /// Declared parameters, in declaration order. Empty for inline SQL.
    pub params: Vec<ParamDecl>,
    /// Inline SQL infers parameter types from values instead of declaring them.
    pub inline: bool,
    /// Names the template references (top-level variables), with the first line of each.
    pub references: IndexMap<String, usize>,
}

/// Names minijinja provides itself; they are not parameters.
const TEMPLATE_GLOBALS: &[&str] = &["range", "dict", "namespace", "debug", "loop", "self"];

impl StoredQuery {
    /// Parses a `.sql` file: its `-- @param` header and its template syntax.
    pub fn parse(label: impl Into<String>, text: &str) -> Result<StoredQuery, QueryError> {
        Self::parse_with(label.into(), text, false)
    }

    /// Parses inline SQL from a job file; parameter types come from the values.
    pub fn inline(text: &str) -> Result<StoredQuery, QueryError> {
        Self::parse_with("inline SQL".to_string(), text, true)
    }

    fn parse_with(label: String, text: &str, inline: bool) -> Result<StoredQuery, QueryError> {
        let mut problems = Vec::new();
        let params = if inline {
            Vec::new()
        } else {
            parse_header(text, &mut problems)
        };
        let env = query_env();
        let references = match env.template_from_str(text) {
            Ok(t) => {
                let mut names: Vec<String> = t
                    .undeclared_variables(false)
                    .into_iter()
                    .filter(|n| !TEMPLATE_GLOBALS.contains(&n.as_str()))
                    .collect();
                names.sort();
                let mut refs: Vec<(String, usize)> = names
                    .into_iter()
                    .map(|n| {
                        let line = reference_line(text, &n).unwrap_or(1);
                        (n, line)
                    })
                    .collect();
                refs.sort_by_key(|(_, l)| *l);
                refs.into_iter().collect()
            }
            Err(e) => {
                problems.push(QueryProblem {
                    line: e.line(),
                    message: format!(
                        "template syntax error: {}",
                        e.detail().unwrap_or("invalid template")
                    ),
                    hint: Some(
                        "the query is a minijinja template: `{{ param }}` for a value, \
                         `{% if param is defined %}…{% endif %}` for optional parts"
                            .into(),
                    ),
                });
                IndexMap::new()
            }
        };
        problems.extend(quoted_placeholders(text));
        if !problems.is_empty() {
            return Err(QueryError::Invalid { label, problems });
        }
        Ok(StoredQuery {
            label,
            text: text.to_string(),
            params,
            inline,
            references,
        })
    }

    /// Every problem with these parameter values, without touching a database.
    pub fn check(&self, values: &IndexMap<String, ParamValue>) -> Vec<QueryProblem> {
        match self.render(values) {
            Ok(_) => Vec::new(),
            Err(e) => e.problems().to_vec(),
        }
    }

    /// The SQL with placeholders and the values to bind.
    pub fn render(
        &self,
        values: &IndexMap<String, ParamValue>,
    ) -> Result<RenderedQuery, QueryError> {
        let (resolved, mut problems) = self.resolve(values);
        let env = query_env();
        // Render; a parameter used without a value is reported, given a stand-in value and
        // rendered again, so one pass finds every missing parameter.
        let mut trial = resolved.clone();
        for name in self.references.keys() {
            if !trial.contains_key(name) && !self.params.iter().any(|p| &p.name == name) {
                trial.insert(
                    name.clone(),
                    (ParamType::Text, BindValue::Text(String::new())),
                );
            }
        }
        let mut rendered = None;
        for _ in 0..=self.params.len() {
            match render_with(&env, &self.text, &trial) {
                Ok(r) => {
                    rendered = Some(r);
                    break;
                }
                Err(e) => {
                    let (problem, missing) = self.render_problem(&e, &trial);
                    problems.push(problem);
                    match missing {
                        Some(p) => {
                            trial.insert(p.name.clone(), (p.ty, BindValue::Text(String::new())));
                        }
                        None => break,
                    }
                }
            }
        }
        let (sql, order) = match rendered {
            Some(r) if problems.is_empty() => r,
            _ => {
                return Err(QueryError::Invalid {
                    label: self.label.clone(),
                    problems,
                });
            }
        };
        let marked_src = mark_lines(&self.text);
        let line_map = render_with(&env, &marked_src, &resolved)
            .ok()
            .and_then(|(marked, _)| line_map_from_marked(&marked, &sql));
        let binds = order
            .into_iter()
            .map(|name| {
                let (ty, value) = resolved
                    .get(&name)
                    .cloned()
                    .expect("placeholder names come from resolved params");
                Bind { name, ty, value }
            })
            .collect();
        Ok(RenderedQuery {
            label: self.label.clone(),
            sql,
            binds,
            line_map,
        })
    }

    /// Explains a render failure: usually a parameter used as a value that has none.
    fn render_problem(
        &self,
        e: &minijinja::Error,
        resolved: &IndexMap<String, (ParamType, BindValue)>,
    ) -> (QueryProblem, Option<&ParamDecl>) {
        if e.kind() == minijinja::ErrorKind::UndefinedError
            && let Some(line) = e.line()
        {
            let line_text = self.text.lines().nth(line - 1).unwrap_or_default();
            if let Some(p) = self
                .params
                .iter()
                .find(|p| !resolved.contains_key(&p.name) && contains_word(line_text, &p.name))
            {
                let problem = QueryProblem {
                    line: Some(p.line),
                    message: format!("parameter `{}` needs a value (line {line} uses it)", p.name),
                    hint: Some(format!(
                        "give it under `query.params`, give it a default (`-- @param {} {} = …`), \
                         or use it only inside `{{% if {} is defined %}}`",
                        p.name, p.ty, p.name
                    )),
                };
                return (problem, Some(p));
            }
        }
        let problem = QueryProblem {
            line: e.line(),
            message: format!("cannot render the query: {}", e.detail().unwrap_or("error")),
            hint: None,
        };
        (problem, None)
    }

    /// The declared (or, inline, given) parameters with their converted values.
    fn resolve(
        &self,
        values: &IndexMap<String, ParamValue>,
    ) -> (IndexMap<String, (ParamType, BindValue)>, Vec<QueryProblem>) {
        let mut problems = Vec::new();
        let mut out = IndexMap::new();
        if self.inline {
            for (name, v) in values {
                let ty = infer_type(v);
                match convert(v, ty) {
                    Ok(b) => {
                        out.insert(name.clone(), (ty, b));
                    }
                    Err(e) => problems.push(QueryProblem {
                        line: None,
                        message: format!("parameter `{name}`: {e}"),
                        hint: None,
                    }),
                }
            }
            for (name, line) in &self.references {
                if !values.contains_key(name) {
                    problems.push(QueryProblem {
                        line: Some(*line),
                        message: format!("the query uses `{name}`, which has no value"),
                        hint: Some(format!("add `{name}` under `query.params`")),
                    });
                }
            }
            return (out, problems);
        }
        for (name, line) in &self.references {
            if !self.params.iter().any(|p| &p.name == name) {
                let declared: Vec<&str> = self.params.iter().map(|p| p.name.as_str()).collect();
                problems.push(QueryProblem {
                    line: Some(*line),
                    message: format!("the query uses `{name}`, which is not a declared parameter"),
                    hint: Some(match crate::job::attributes::suggest(name, &declared) {
                        Some(s) => format!("did you mean `{s}`?"),
                        None => {
                            format!("declare it at the top of the file: `-- @param {name} text`")
                        }
                    }),
                });
            }
        }
        for name in values.keys() {
            if !self.params.iter().any(|p| &p.name == name) {
                let declared: Vec<&str> = self.params.iter().map(|p| p.name.as_str()).collect();
                problems.push(QueryProblem {
                    line: None,
                    message: format!("`{name}` is not a parameter of {}", self.label),
                    hint: Some(match crate::job::attributes::suggest(name, &declared) {
                        Some(s) => format!("did you mean `{s}`?"),
                        None if declared.is_empty() => "this query declares no parameters".into(),
                        None => format!("its parameters are: {}", declared.join(", ")),
                    }),
                });
            }
        }
        for p in &self.params {
            let value = values.get(&p.name).or(p.default.as_ref());
            if let Some(v) = value {
                match convert(v, p.ty) {
                    Ok(b) => {
                        out.insert(p.name.clone(), (p.ty, b));
                    }
                    Err(e) => problems.push(QueryProblem {
                        line: Some(p.line),
                        message: format!("parameter `{}` ({}): {e}", p.name, p.ty),
                        hint: Some(type_hint(p.ty).into()),
                    }),
                }
            }
        }
        (out, problems)
    }
}

fn query_env() -> Environment<'static> {
    let mut env = Environment::new();
    env.set_undefined_behavior(UndefinedBehavior::Strict);
    // SQL is not HTML: never escape.
    env.set_auto_escape_callback(|_| minijinja::AutoEscape::None);
    env
}

/// A parameter in the template: renders as its placeholder, tests as its value.
#[derive(Debug)]
struct Placeholder {
    name: String,
    ty: ParamType,
    truthy: bool,
    order: Arc<Mutex<Vec<String>>>,
}

impl Object for Placeholder {
    fn repr(self: &Arc<Self>) -> ObjectRepr {
        ObjectRepr::Plain
    }
    fn is_true(self: &Arc<Self>) -> bool {
        self.truthy
    }
    fn render(self: &Arc<Self>, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut order = self.order.lock().unwrap_or_else(|e| e.into_inner());
        let n = match order.iter().position(|n| n == &self.name) {
            Some(i) => i + 1,
            None => {
                order.push(self.name.clone());
                order.len()
            }
        };
        write!(f, "${n}::{}", self.ty)
    }
}

fn render_with(
    env: &Environment<'static>,
    text: &str,
    params: &IndexMap<String, (ParamType, BindValue)>,
) -> Result<(String, Vec<String>), minijinja::Error> {
    let order = Arc::new(Mutex::new(Vec::new()));
    let ctx: IndexMap<String, Value> = params
        .iter()
        .map(|(name, (ty, v))| {
            let truthy = match v {
                BindValue::Bool(b) => *b,
                BindValue::Text(s) => !s.is_empty(),
                BindValue::TextArray(a) => !a.is_empty(),
                BindValue::IntArray(a) => !a.is_empty(),
                BindValue::Int(i) => *i != 0,
                BindValue::BigInt(i) => *i != 0,
                _ => true,
            };
            let p = Placeholder {
                name: name.clone(),
                ty: *ty,
                truthy,
                order: order.clone(),
            };
            (name.clone(), Value::from_object(p))
        })
        .collect();
    let tmpl = env.template_from_str(text)?;
    let sql = tmpl.render(Value::from_pairs(ctx))?;
    let order = order.lock().unwrap_or_else(|e| e.into_inner()).clone();
    Ok((sql, order))
}

/// Declared parameters the template never uses (for a `kdit validate` warning).
pub fn unused_params(q: &StoredQuery) -> Vec<&ParamDecl> {
    let used: HashSet<&String> = q.references.keys().collect();
    q.params
        .iter()
        .filter(|p| !used.contains(&p.name))
        .collect()
}
#[cfg(test)]
mod tests {
    use super::*;
    use crate::job::spec::ParamScalar;

    fn params(pairs: &[(&str, ParamValue)]) -> IndexMap<String, ParamValue> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect()
    }

    pub(super) const ACTIVE: &str = "\
-- Customers active recently.
-- @param since interval = 7d  How far back
-- @param region text          Only this region
-- @param min_orders int = 1
select email, region
from customers
where last_order_at >= now() - {{ since }}
  and orders >= {{ min_orders }}
{% if region is defined %}
  and region = {{ region }}
  and backup_region <> {{ region }}
{% endif %}
";

    #[test]
    fn values_become_placeholders_once_each() {
        let q = StoredQuery::parse("active.sql", ACTIVE).unwrap();
        let r = q
            .render(&params(&[("region", ParamValue::Text("EU".into()))]))
            .unwrap();
        assert!(r.sql.contains("now() - $1::interval"), "{}", r.sql);
        assert!(r.sql.contains("orders >= $2::int"), "{}", r.sql);
        assert!(r.sql.contains("region = $3::text"), "{}", r.sql);
        assert!(r.sql.contains("backup_region <> $3::text"), "{}", r.sql);
        assert!(!r.sql.contains("EU"));
        assert_eq!(r.binds.len(), 3);
        assert_eq!(r.binds[0].value, BindValue::Interval("7 days".into()));
        assert_eq!(r.binds[1].value, BindValue::Int(1));
        assert_eq!(r.binds[2].value, BindValue::Text("EU".into()));
        // Line map: `and region = …` is line 10 of the file.
        let line = r
            .sql
            .lines()
            .position(|l| l.contains("region = $3"))
            .unwrap()
            + 1;
        assert_eq!(r.source_line(line), Some(10));
    }

    #[test]
    fn optional_params_are_undefined_without_value() {
        let q = StoredQuery::parse("active.sql", ACTIVE).unwrap();
        let r = q.render(&IndexMap::new()).unwrap();
        assert!(!r.sql.contains("region ="), "{}", r.sql);
        assert_eq!(r.binds.len(), 2);
        let line = r.sql.lines().position(|l| l.contains("orders >=")).unwrap() + 1;
        assert_eq!(r.source_line(line), Some(8));
    }

    #[test]
    fn check_reports_every_problem() {
        let q = StoredQuery::parse(
            "q.sql",
            "-- @param since interval\n-- @param n int\nselect {{ since }}, {{ n }}, {{ nope }}\n",
        )
        .unwrap();
        let problems = q.check(&params(&[
            ("n", ParamValue::Text("many".into())),
            ("extra", ParamValue::Integer(1)),
        ]));
        let text: Vec<String> = problems.iter().map(|p| p.to_string()).collect();
        assert!(
            text.iter()
                .any(|p| p.contains("line 3") && p.contains("`nope`")),
            "{text:?}"
        );
        assert!(
            text.iter()
                .any(|p| p.contains("`extra` is not a parameter")),
            "{text:?}"
        );
        assert!(
            text.iter()
                .any(|p| p.contains("line 1") && p.contains("`since` needs a value (line 3")),
            "{text:?}"
        );
        assert!(
            text.iter()
                .any(|p| p.contains("line 2") && p.contains("`many` is not an int")),
            "{text:?}"
        );
        assert!(q.render(&IndexMap::new()).is_err());
    }

    #[test]
    fn template_syntax_errors_have_lines() {
        let e = StoredQuery::parse("q.sql", "select 1\n{% if %}\n").unwrap_err();
        assert_eq!(e.problems()[0].line, Some(2), "{e}");
    }

    #[test]
    fn inline_sql_infers_types() {
        let q = StoredQuery::inline("select * from t where a > now() - {{ since }} and b = {{ name }} and c = any({{ ids }}) and d = {{ on }} and e > {{ amount }}").unwrap();
        let r = q
            .render(&params(&[
                ("since", ParamValue::Text("7d".into())),
                ("name", ParamValue::Text("x".into())),
                (
                    "ids",
                    ParamValue::List(vec![ParamScalar::Integer(1), ParamScalar::Integer(2)]),
                ),
                ("on", ParamValue::Bool(true)),
                ("amount", ParamValue::Number(12.5)),
            ]))
            .unwrap();
        assert!(
            r.sql.contains("$1::interval")
                && r.sql.contains("$2::text")
                && r.sql.contains("$3::int[]")
                && r.sql.contains("$4::bool")
                && r.sql.contains("$5::numeric"),
            "{}",
            r.sql
        );
        let missing = q.check(&IndexMap::new());
        assert_eq!(missing.len(), 5);
    }

    #[test]
    fn injection_stays_a_value() {
        let q = StoredQuery::parse(
            "q.sql",
            "-- @param name text\nselect * from customers where name = {{ name }}",
        )
        .unwrap();
        let evil = "'; drop table customers; --";
        let r = q
            .render(&params(&[("name", ParamValue::Text(evil.into()))]))
            .unwrap();
        assert!(!r.sql.contains("drop"), "{}", r.sql);
        assert_eq!(r.binds[0].value, BindValue::Text(evil.into()));
    }

    #[test]
    fn bool_params_shape_structure_by_value() {
        let q = StoredQuery::parse(
            "q.sql",
            "-- @param vip bool = false\nselect 1{% if vip %} where vip{% endif %}",
        )
        .unwrap();
        assert_eq!(
            q.render(&IndexMap::new()).unwrap().sql,
            "-- @param vip bool = false\nselect 1"
        );
        let r = q
            .render(&params(&[("vip", ParamValue::Bool(true))]))
            .unwrap();
        assert!(r.sql.ends_with("where vip"), "{}", r.sql);
        assert!(r.binds.is_empty());
    }
}
