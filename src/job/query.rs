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

use std::collections::HashSet;
use std::fmt;
use std::sync::{Arc, Mutex};

use chrono::{DateTime, NaiveDate, Utc};
use indexmap::IndexMap;
use minijinja::value::{Object, ObjectRepr, Value};
use minijinja::{Environment, UndefinedBehavior};

use crate::job::spec::{ParamScalar, ParamValue, parse_duration};

/// A parameter's SQL type, as declared in `-- @param` lines.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParamType {
    Text,
    Int,
    BigInt,
    Numeric,
    Bool,
    Date,
    Timestamptz,
    Interval,
    TextArray,
    IntArray,
}

impl ParamType {
    pub const ALL: &'static [ParamType] = &[
        ParamType::Text,
        ParamType::Int,
        ParamType::BigInt,
        ParamType::Numeric,
        ParamType::Bool,
        ParamType::Date,
        ParamType::Timestamptz,
        ParamType::Interval,
        ParamType::TextArray,
        ParamType::IntArray,
    ];

    /// The name written in `@param` lines and used in the placeholder's cast.
    pub fn name(self) -> &'static str {
        match self {
            ParamType::Text => "text",
            ParamType::Int => "int",
            ParamType::BigInt => "bigint",
            ParamType::Numeric => "numeric",
            ParamType::Bool => "bool",
            ParamType::Date => "date",
            ParamType::Timestamptz => "timestamptz",
            ParamType::Interval => "interval",
            ParamType::TextArray => "text[]",
            ParamType::IntArray => "int[]",
        }
    }

    pub fn parse(s: &str) -> Option<ParamType> {
        let s = s.to_ascii_lowercase();
        let alias = match s.as_str() {
            "integer" | "int4" => "int",
            "int8" => "bigint",
            "boolean" => "bool",
            "decimal" => "numeric",
            "varchar" => "text",
            "timestamp with time zone" => "timestamptz",
            "integer[]" | "int4[]" => "int[]",
            other => other,
        };
        ParamType::ALL.iter().copied().find(|t| t.name() == alias)
    }
}

impl fmt::Display for ParamType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A parameter declared by a `-- @param` line.
#[derive(Debug, Clone, PartialEq)]
pub struct ParamDecl {
    pub name: String,
    pub ty: ParamType,
    /// The default, as written (already checked to convert to `ty`).
    pub default: Option<ParamValue>,
    pub description: Option<String>,
    /// 1-based line in the query file.
    pub line: usize,
}

/// A value ready to bind, already converted to its parameter's type.
#[derive(Debug, Clone, PartialEq)]
pub enum BindValue {
    Text(String),
    Int(i32),
    BigInt(i64),
    /// Exact decimal digits; bound as text and cast with `::numeric`.
    Numeric(String),
    Bool(bool),
    Date(NaiveDate),
    Timestamptz(DateTime<Utc>),
    /// A PostgreSQL interval literal (e.g. `7 days 0 seconds`); bound as text, cast `::interval`.
    Interval(String),
    TextArray(Vec<String>),
    IntArray(Vec<i32>),
}

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

impl fmt::Display for BindValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BindValue::Text(s) | BindValue::Numeric(s) | BindValue::Interval(s) => f.write_str(s),
            BindValue::Int(i) => write!(f, "{i}"),
            BindValue::BigInt(i) => write!(f, "{i}"),
            BindValue::Bool(b) => write!(f, "{b}"),
            BindValue::Date(d) => write!(f, "{d}"),
            BindValue::Timestamptz(t) => write!(f, "{}", t.to_rfc3339()),
            BindValue::TextArray(v) => write!(f, "[{}]", v.join(", ")),
            BindValue::IntArray(v) => write!(
                f,
                "[{}]",
                v.iter()
                    .map(|i| i.to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        }
    }
}

/// Something wrong with a query and its parameters, as `kdit validate` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueryProblem {
    /// 1-based line in the query's text, when the problem has one.
    pub line: Option<usize>,
    pub message: String,
    pub hint: Option<String>,
}

impl fmt::Display for QueryProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(l) = self.line {
            write!(f, "line {l}: ")?;
        }
        f.write_str(&self.message)?;
        if let Some(h) = &self.hint {
            write!(f, "\nhint: {h}")?;
        }
        Ok(())
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

fn type_hint(ty: ParamType) -> &'static str {
    match ty {
        ParamType::Text => "any text",
        ParamType::Int => "an integer between -2147483648 and 2147483647",
        ParamType::BigInt => "an integer",
        ParamType::Numeric => "a number such as `12.50`",
        ParamType::Bool => "`true` or `false`",
        ParamType::Date => "a date such as `2026-01-31`",
        ParamType::Timestamptz => "a time such as `2026-01-31T09:00:00Z`",
        ParamType::Interval => "a duration such as `7d`, `12h` or `1h 30m`",
        ParamType::TextArray => "a list such as `[a, b]`",
        ParamType::IntArray => "a list of integers such as `[1, 2]`",
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

const MARK_OPEN: char = '\u{E000}';
const MARK_CLOSE: char = '\u{E001}';

/// The template with a marker naming its source line at the start of every line that does
/// not begin inside a template tag. Rendering it tells which source line each output line
/// came from.
fn mark_lines(text: &str) -> String {
    let mut out = String::with_capacity(text.len() * 2);
    let mut in_tag: Option<&str> = None;
    let mut line = 1;
    let mut at_line_start = true;
    let bytes = text.as_bytes();
    let mut i = 0;
    while i < text.len() {
        if at_line_start && in_tag.is_none() {
            out.push(MARK_OPEN);
            out.push_str(&line.to_string());
            out.push(MARK_CLOSE);
        }
        at_line_start = false;
        let rest = &text[i..];
        match in_tag {
            None => {
                if let Some(open) = ["{{", "{%", "{#"].iter().find(|o| rest.starts_with(**o)) {
                    in_tag = Some(match *open {
                        "{{" => "}}",
                        "{%" => "%}",
                        _ => "#}",
                    });
                    out.push_str(open);
                    i += 2;
                    continue;
                }
            }
            Some(close) => {
                if rest.starts_with(close) {
                    in_tag = None;
                    out.push_str(close);
                    i += 2;
                    continue;
                }
            }
        }
        let ch = rest.chars().next().expect("non-empty");
        out.push(ch);
        if bytes[i] == b'\n' {
            line += 1;
            at_line_start = true;
        }
        i += ch.len_utf8();
    }
    out
}

fn line_map_from_marked(marked: &str, real: &str) -> Option<Vec<usize>> {
    let mut stripped = String::with_capacity(marked.len());
    let mut map = Vec::new();
    let mut last = 1;
    for l in marked.split('\n') {
        let mut first: Option<usize> = None;
        let mut chars = l.chars().peekable();
        let mut text = String::new();
        while let Some(c) = chars.next() {
            if c == MARK_OPEN {
                let mut num = String::new();
                for d in chars.by_ref() {
                    if d == MARK_CLOSE {
                        break;
                    }
                    num.push(d);
                }
                if first.is_none() {
                    first = num.parse().ok();
                }
            } else {
                text.push(c);
            }
        }
        let n = first.unwrap_or(last);
        last = n;
        map.push(n);
        if !stripped.is_empty() || map.len() > 1 {
            stripped.push('\n');
        }
        stripped.push_str(&text);
    }
    (stripped == real).then_some(map)
}

/// `{{ … }}` inside a SQL string literal (`'{{ name }}'`) would become the text `$1::text`,
/// not the value: report it.
fn quoted_placeholders(text: &str) -> Vec<QueryProblem> {
    let mut problems = Vec::new();
    let mut in_quote = false;
    let mut in_comment = false;
    let mut line = 1;
    let mut i = 0;
    let b = text.as_bytes();
    while i < b.len() {
        let c = b[i];
        if c == b'\n' {
            line += 1;
            in_comment = false;
            i += 1;
            continue;
        }
        if in_comment {
            i += 1;
            continue;
        }
        if b[i..].starts_with(b"{{") || b[i..].starts_with(b"{%") || b[i..].starts_with(b"{#") {
            let close: &[u8] = match b[i + 1] {
                b'{' => b"}}",
                b'%' => b"%}",
                _ => b"#}",
            };
            if in_quote && b[i + 1] == b'{' {
                let end = text[i..].find("}}").map(|e| i + e + 2).unwrap_or(b.len());
                problems.push(QueryProblem {
                    line: Some(line),
                    message: format!(
                        "`{}` is inside a quoted SQL string, so it would be sent as the text `$1`, not as the value",
                        &text[i..end]
                    ),
                    hint: Some("remove the quotes: parameters are bound as values of their declared type".into()),
                });
            }
            match text[i + 2..].find(std::str::from_utf8(close).unwrap_or("}}")) {
                Some(e) => {
                    line += text[i..i + 2 + e].matches('\n').count();
                    i = i + 2 + e + 2;
                }
                None => break,
            }
            continue;
        }
        if !in_quote && b[i..].starts_with(b"--") {
            in_comment = true;
            i += 2;
            continue;
        }
        if c == b'\'' {
            in_quote = !in_quote;
        }
        i += 1;
    }
    problems
}

/// The first line where `name` appears inside a template tag.
fn reference_line(text: &str, name: &str) -> Option<usize> {
    for (start, end) in tag_spans(text) {
        let tag = &text[start..end];
        if contains_word(tag, name) {
            return Some(text[..start].matches('\n').count() + 1);
        }
    }
    None
}

fn tag_spans(text: &str) -> Vec<(usize, usize)> {
    let mut spans = Vec::new();
    let mut i = 0;
    while i < text.len() {
        let rest = &text[i..];
        let Some(pos) = rest.find(['{']) else { break };
        let at = i + pos;
        let close = match text.get(at..at + 2) {
            Some("{{") => "}}",
            Some("{%") => "%}",
            _ => {
                i = at + 1;
                continue;
            }
        };
        match text[at + 2..].find(close) {
            Some(e) => {
                spans.push((at, at + 2 + e + 2));
                i = at + 2 + e + 2;
            }
            None => break,
        }
    }
    spans
}

fn is_ident(c: char) -> bool {
    c.is_alphanumeric() || c == '_'
}

fn find_word(hay: &str, word: &str) -> Option<usize> {
    let mut from = 0;
    while let Some(p) = hay[from..].find(word) {
        let at = from + p;
        let before = hay[..at].chars().next_back();
        let after = hay[at + word.len()..].chars().next();
        let prev_ok = before.is_none_or(|c| !is_ident(c) && c != '.');
        if prev_ok && after.is_none_or(|c| !is_ident(c)) {
            return Some(at);
        }
        from = at + word.len();
    }
    None
}

fn contains_word(hay: &str, word: &str) -> bool {
    find_word(hay, word).is_some()
}

/// Reads the `-- @param` lines of the comment header.
fn parse_header(text: &str, problems: &mut Vec<QueryProblem>) -> Vec<ParamDecl> {
    let mut params: Vec<ParamDecl> = Vec::new();
    let mut in_header = true;
    for (idx, raw) in text.lines().enumerate() {
        let line = idx + 1;
        let t = raw.trim();
        let comment = t.strip_prefix("--").map(str::trim);
        let is_param = comment.is_some_and(|c| c.starts_with("@param"));
        if !(t.is_empty() || comment.is_some()) {
            in_header = false;
        }
        if !is_param {
            continue;
        }
        if !in_header {
            problems.push(QueryProblem {
                line: Some(line),
                message: "`@param` after the query has started".into(),
                hint: Some("declare parameters in the comment lines at the top of the file".into()),
            });
            continue;
        }
        let body = comment.unwrap_or_default()["@param".len()..].trim();
        match parse_param_line(body) {
            Ok((name, ty, default, description)) => {
                if params.iter().any(|p| p.name == name) {
                    problems.push(QueryProblem {
                        line: Some(line),
                        message: format!("parameter `{name}` is declared twice"),
                        hint: None,
                    });
                    continue;
                }
                if let Some(d) = &default
                    && let Err(e) = convert(d, ty)
                {
                    problems.push(QueryProblem {
                        line: Some(line),
                        message: format!("the default of `{name}` ({ty}): {e}"),
                        hint: Some(type_hint(ty).into()),
                    });
                    continue;
                }
                params.push(ParamDecl {
                    name,
                    ty,
                    default,
                    description,
                    line,
                });
            }
            Err((message, hint)) => problems.push(QueryProblem {
                line: Some(line),
                message,
                hint: Some(hint),
            }),
        }
    }
    params
}

type ParamLine = (String, ParamType, Option<ParamValue>, Option<String>);

fn parse_param_line(body: &str) -> Result<ParamLine, (String, String)> {
    let syntax = "write `-- @param <name> <type> [= <default>] [description]`".to_string();
    let (name, rest) = split_token(body);
    if name.is_empty() {
        return Err(("`@param` without a name".into(), syntax));
    }
    if !name.chars().all(is_ident) || name.starts_with(|c: char| c.is_ascii_digit()) {
        return Err((
            format!("`{name}` is not a valid parameter name"),
            "use letters, digits and underscores".into(),
        ));
    }
    let (ty_s, rest) = split_token(rest);
    if ty_s.is_empty() {
        return Err((format!("parameter `{name}` has no type"), syntax));
    }
    let Some(ty) = ParamType::parse(ty_s) else {
        let names: Vec<&str> = ParamType::ALL.iter().map(|t| t.name()).collect();
        return Err((
            format!("`{ty_s}` is not a parameter type"),
            match crate::job::attributes::suggest(ty_s, &names) {
                Some(s) => format!("did you mean `{s}`?"),
                None => format!("types are: {}", names.join(", ")),
            },
        ));
    };
    let rest = rest.trim_start();
    let (default, rest) = if let Some(after) = rest.strip_prefix('=') {
        let after = after.trim_start();
        let (tok, rest) = if let Some(q) = after.chars().next().filter(|c| *c == '\'' || *c == '"')
        {
            match after[1..].find(q) {
                Some(end) => (&after[1..1 + end], &after[end + 2..]),
                None => {
                    return Err((
                        format!("unterminated quote in the default of `{name}`"),
                        syntax,
                    ));
                }
            }
        } else if after.starts_with('[') {
            match after.find(']') {
                Some(end) => (&after[..=end], &after[end + 1..]),
                None => {
                    return Err((
                        format!("unterminated list in the default of `{name}`"),
                        syntax,
                    ));
                }
            }
        } else {
            split_token(after)
        };
        if tok.is_empty() && !after.starts_with(['\'', '"']) {
            return Err((format!("`{name}` has `=` but no default"), syntax));
        }
        (Some(default_value(tok, ty)), rest)
    } else {
        (None, rest)
    };
    let description = Some(rest.trim().to_string()).filter(|d| !d.is_empty());
    Ok((name.to_string(), ty, default, description))
}

fn default_value(tok: &str, ty: ParamType) -> ParamValue {
    if let Some(inner) = tok.strip_prefix('[').and_then(|t| t.strip_suffix(']')) {
        let items = inner
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(|s| {
                let s = s.trim_matches(['\'', '"']);
                match s.parse::<i64>() {
                    Ok(i) if ty == ParamType::IntArray => ParamScalar::Integer(i),
                    _ => ParamScalar::Text(s.to_string()),
                }
            })
            .collect();
        return ParamValue::List(items);
    }
    ParamValue::Text(tok.to_string())
}

fn split_token(s: &str) -> (&str, &str) {
    let s = s.trim_start();
    match s.find(char::is_whitespace) {
        Some(i) => (&s[..i], &s[i..]),
        None => (s, ""),
    }
}

/// The type inline SQL gives a parameter, from its value.
pub fn infer_type(v: &ParamValue) -> ParamType {
    match v {
        ParamValue::Bool(_) => ParamType::Bool,
        ParamValue::Integer(_) => ParamType::BigInt,
        ParamValue::Number(_) => ParamType::Numeric,
        ParamValue::Text(s) if parse_duration(s).is_ok() => ParamType::Interval,
        ParamValue::Text(_) => ParamType::Text,
        ParamValue::List(items) => {
            if !items.is_empty()
                && items
                    .iter()
                    .all(|i| matches!(i, ParamScalar::Integer(n) if i32::try_from(*n).is_ok()))
            {
                ParamType::IntArray
            } else {
                ParamType::TextArray
            }
        }
    }
}

/// Converts a job's value to a parameter's declared type.
pub fn convert(v: &ParamValue, ty: ParamType) -> Result<BindValue, String> {
    let scalar_text = |v: &ParamValue| -> Option<String> {
        match v {
            ParamValue::Text(s) => Some(s.clone()),
            ParamValue::Integer(i) => Some(i.to_string()),
            ParamValue::Number(n) => Some(n.to_string()),
            ParamValue::Bool(b) => Some(b.to_string()),
            ParamValue::List(_) => None,
        }
    };
    let not = |what: &str| format!("`{v}` is not {what}");
    match ty {
        ParamType::Text => scalar_text(v)
            .map(BindValue::Text)
            .ok_or_else(|| "a list is not text".to_string()),
        ParamType::Int => match v {
            ParamValue::Integer(i) => i32::try_from(*i)
                .map(BindValue::Int)
                .map_err(|_| format!("{i} is out of range for int")),
            ParamValue::Text(s) => s
                .trim()
                .parse()
                .map(BindValue::Int)
                .map_err(|_| not("an int")),
            _ => Err(not("an int")),
        },
        ParamType::BigInt => match v {
            ParamValue::Integer(i) => Ok(BindValue::BigInt(*i)),
            ParamValue::Text(s) => s
                .trim()
                .parse()
                .map(BindValue::BigInt)
                .map_err(|_| not("a bigint")),
            _ => Err(not("a bigint")),
        },
        ParamType::Numeric => match v {
            ParamValue::Integer(i) => Ok(BindValue::Numeric(i.to_string())),
            ParamValue::Number(n) if n.is_finite() => Ok(BindValue::Numeric(n.to_string())),
            ParamValue::Text(s) if is_decimal(s.trim()) => Ok(BindValue::Numeric(s.trim().into())),
            _ => Err(not("a number")),
        },
        ParamType::Bool => match v {
            ParamValue::Bool(b) => Ok(BindValue::Bool(*b)),
            ParamValue::Text(s) => match s.trim().to_ascii_lowercase().as_str() {
                "true" | "yes" | "on" | "t" | "1" => Ok(BindValue::Bool(true)),
                "false" | "no" | "off" | "f" | "0" => Ok(BindValue::Bool(false)),
                _ => Err(not("a boolean")),
            },
            _ => Err(not("a boolean")),
        },
        ParamType::Date => match v {
            ParamValue::Text(s) => NaiveDate::parse_from_str(s.trim(), "%Y-%m-%d")
                .map(BindValue::Date)
                .map_err(|_| not("a date (YYYY-MM-DD)")),
            _ => Err(not("a date (YYYY-MM-DD)")),
        },
        ParamType::Timestamptz => match v {
            ParamValue::Text(s) => parse_timestamptz(s.trim())
                .map(BindValue::Timestamptz)
                .ok_or_else(|| not("a timestamp with time zone")),
            _ => Err(not("a timestamp with time zone")),
        },
        ParamType::Interval => match v {
            ParamValue::Text(s) => parse_duration(s)
                .map(|d| BindValue::Interval(interval_literal(d)))
                .map_err(|_| not("a duration")),
            _ => Err(not("a duration")),
        },
        ParamType::TextArray => match v {
            ParamValue::List(items) => Ok(BindValue::TextArray(
                items.iter().map(|i| i.to_string()).collect(),
            )),
            other => scalar_text(other)
                .map(|s| BindValue::TextArray(vec![s]))
                .ok_or_else(|| not("a list of text")),
        },
        ParamType::IntArray => {
            let one = |s: &ParamScalar| -> Result<i32, String> {
                match s {
                    ParamScalar::Integer(i) => {
                        i32::try_from(*i).map_err(|_| format!("{i} is out of range for int"))
                    }
                    ParamScalar::Text(t) => {
                        t.trim().parse().map_err(|_| format!("`{t}` is not an int"))
                    }
                    other => Err(format!("`{other}` is not an int")),
                }
            };
            match v {
                ParamValue::List(items) => items
                    .iter()
                    .map(one)
                    .collect::<Result<Vec<_>, _>>()
                    .map(BindValue::IntArray),
                ParamValue::Integer(i) => {
                    one(&ParamScalar::Integer(*i)).map(|i| BindValue::IntArray(vec![i]))
                }
                _ => Err(not("a list of integers")),
            }
        }
    }
}

fn parse_timestamptz(s: &str) -> Option<DateTime<Utc>> {
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Some(t.with_timezone(&Utc));
    }
    if let Ok(t) = DateTime::parse_from_str(s, "%Y-%m-%d %H:%M:%S%#z") {
        return Some(t.with_timezone(&Utc));
    }
    NaiveDate::parse_from_str(s, "%Y-%m-%d")
        .ok()
        .and_then(|d| d.and_hms_opt(0, 0, 0))
        .map(|t| t.and_utc())
}

/// Whole days stay days (so `now() - 7d` crosses DST like `interval '7 days'`).
fn interval_literal(d: std::time::Duration) -> String {
    let secs = d.as_secs();
    let (days, rest) = (secs / 86_400, secs % 86_400);
    let micros = d.subsec_micros();
    let secs = if micros == 0 {
        format!("{rest} seconds")
    } else {
        format!("{rest}.{micros:06} seconds")
    };
    match (days, rest, micros) {
        (0, _, _) => secs,
        (d, 0, 0) => format!("{d} days"),
        (d, _, _) => format!("{d} days {secs}"),
    }
}

pub(crate) fn is_decimal(s: &str) -> bool {
    let s = s.strip_prefix(['-', '+']).unwrap_or(s);
    let (int, frac) = s.split_once('.').unwrap_or((s, ""));
    (!int.is_empty() || !frac.is_empty())
        && int.chars().all(|c| c.is_ascii_digit())
        && frac.chars().all(|c| c.is_ascii_digit())
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

    fn params(pairs: &[(&str, ParamValue)]) -> IndexMap<String, ParamValue> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect()
    }

    const ACTIVE: &str = "\
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
    fn header_declares_params_with_lines() {
        let q = StoredQuery::parse("active.sql", ACTIVE).unwrap();
        let names: Vec<_> = q
            .params
            .iter()
            .map(|p| (p.name.as_str(), p.ty, p.line))
            .collect();
        assert_eq!(
            names,
            vec![
                ("since", ParamType::Interval, 2),
                ("region", ParamType::Text, 3),
                ("min_orders", ParamType::Int, 4)
            ]
        );
        assert_eq!(q.params[0].default, Some(ParamValue::Text("7d".into())));
        assert_eq!(q.params[0].description.as_deref(), Some("How far back"));
        assert_eq!(q.params[1].default, None);
    }

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
    fn header_errors_have_lines() {
        let e = StoredQuery::parse("q.sql", "-- @param x intt\n-- @param y int = zz\nselect 1")
            .unwrap_err();
        let p = e.problems();
        assert_eq!(p.len(), 2, "{p:?}");
        assert_eq!(p[0].line, Some(1));
        assert!(p[0].hint.as_deref().unwrap().contains("did you mean `int`"));
        assert_eq!(p[1].line, Some(2));
    }

    #[test]
    fn placeholders_inside_quotes_are_refused() {
        let e = StoredQuery::parse(
            "q.sql",
            "-- @param n text\nselect 'it''s' as a,\n  x from t where name = '{{ n }}' -- '{{ n }}' in a comment is fine\n",
        )
        .unwrap_err();
        assert_eq!(e.problems().len(), 1, "{e}");
        assert_eq!(e.problems()[0].line, Some(3), "{e}");
        assert!(
            StoredQuery::parse("q.sql", "-- @param n text\nselect {{ n }}, 'a' || {{ n }}").is_ok()
        );
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

    #[test]
    fn conversions() {
        assert!(convert(&ParamValue::Integer(1 << 40), ParamType::Int).is_err());
        assert_eq!(
            convert(&ParamValue::Text("12.50".into()), ParamType::Numeric),
            Ok(BindValue::Numeric("12.50".into()))
        );
        assert!(convert(&ParamValue::Text("12,5".into()), ParamType::Numeric).is_err());
        assert!(convert(&ParamValue::Text("2026-02-30".into()), ParamType::Date).is_err());
        assert!(
            convert(
                &ParamValue::Text("2026-02-03T10:00:00+01:00".into()),
                ParamType::Timestamptz
            )
            .is_ok()
        );
        assert_eq!(
            convert(&ParamValue::Text("1h 30m".into()), ParamType::Interval),
            Ok(BindValue::Interval("5400 seconds".into()))
        );
        assert_eq!(
            convert(
                &ParamValue::List(vec![ParamScalar::Text("a".into())]),
                ParamType::TextArray
            ),
            Ok(BindValue::TextArray(vec!["a".into()]))
        );
    }
}
