//! Klaviyo's `?filter=` expressions: `equals(email,"a@x.com")`, `any(id,["a","b"])`,
//! `greater-than(created,2024-01-01T00:00:00Z)`, several joined by commas or `and(...)`.
//! In: the decoded parameter and the fields/operators an endpoint allows; out: a list of
//! conditions (all must hold) or a 400 naming the problem. Pure.

use super::http::ApiError;

/// A literal in a filter.
#[derive(Debug, Clone, PartialEq)]
pub enum Lit {
    Str(String),
    Num(f64),
    Bool(bool),
    Null,
    /// An unquoted token such as a datetime.
    Bare(String),
    List(Vec<Lit>),
}

impl Lit {
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Lit::Str(s) | Lit::Bare(s) => Some(s),
            _ => None,
        }
    }

    /// The strings an `equals` or `any` condition accepts.
    pub fn strings(&self) -> Vec<String> {
        match self {
            Lit::List(items) => items
                .iter()
                .filter_map(|l| l.as_str().map(str::to_string))
                .collect(),
            other => other
                .as_str()
                .map(|s| vec![s.to_string()])
                .unwrap_or_default(),
        }
    }
}

/// One `op(field, value)`.
#[derive(Debug, Clone, PartialEq)]
pub struct Cond {
    pub op: String,
    pub field: String,
    pub value: Lit,
}

fn bad(detail: impl Into<String>) -> ApiError {
    ApiError::invalid(detail).parameter("filter")
}

/// Parses `filter` and checks each condition against `allowed`: `(field, &[operators])`.
/// The query of `GET /api/lists` and `GET /api/segments`: 10 a page, `include=tags`
/// (and flow-triggers), a filter over `filters`, sort by created/id/name/updated.
pub struct ListQuery {
    pub size: usize,
    /// Whether `include=tags` was asked for.
    pub include: bool,
    pub conds: Vec<Cond>,
    pub sort: Option<(String, bool)>,
}

impl ListQuery {
    pub fn parse(
        req: &super::http::Req,
        filters: &[(&str, &[&str])],
    ) -> Result<ListQuery, ApiError> {
        req.allow_params(&[
            "fields[*]",
            "filter",
            "page[cursor]",
            "page[size]",
            "sort",
            "include",
        ])?;
        let size = req.page_size(10, 10)?;
        let include = req
            .includes(&["flow-triggers", "tags"])?
            .iter()
            .any(|i| i == "tags");
        let conds = match req.q("filter")? {
            Some(f) => parse(f, filters)?,
            None => vec![],
        };
        let sort = req.sort(&["created", "id", "name", "updated"])?;
        Ok(ListQuery {
            size,
            include,
            conds,
            sort,
        })
    }
}

pub fn parse(filter: &str, allowed: &[(&str, &[&str])]) -> Result<Vec<Cond>, ApiError> {
    let mut p = Parser {
        s: filter.as_bytes(),
        i: 0,
        src: filter,
    };
    let mut out = Vec::new();
    loop {
        p.skip_ws();
        p.expr(&mut out)?;
        p.skip_ws();
        if p.i >= p.s.len() {
            break;
        }
        p.expect(b',')?;
    }
    for c in &out {
        let Some((_, ops)) = allowed.iter().find(|(f, _)| *f == c.field) else {
            return Err(bad(format!(
                "'{}' is not a valid field for filtering.",
                c.field
            )));
        };
        if !ops.contains(&c.op.as_str()) {
            return Err(bad(format!(
                "'{}' is not a valid operator for '{}'; allowed: {}.",
                c.op,
                c.field,
                ops.join(", ")
            )));
        }
        if c.op == "any" && !matches!(c.value, Lit::List(_)) {
            return Err(bad(format!(
                "'any' on '{}' takes a list of values.",
                c.field
            )));
        }
    }
    Ok(out)
}

struct Parser<'a> {
    s: &'a [u8],
    i: usize,
    src: &'a str,
}

impl Parser<'_> {
    fn skip_ws(&mut self) {
        while self.i < self.s.len() && self.s[self.i].is_ascii_whitespace() {
            self.i += 1;
        }
    }

    fn expect(&mut self, c: u8) -> Result<(), ApiError> {
        self.skip_ws();
        if self.s.get(self.i) == Some(&c) {
            self.i += 1;
            Ok(())
        } else {
            Err(bad(format!(
                "Invalid filter '{}': expected '{}' at position {}.",
                self.src, c as char, self.i
            )))
        }
    }

    fn ident(&mut self) -> String {
        self.skip_ws();
        let start = self.i;
        while self.i < self.s.len()
            && (self.s[self.i].is_ascii_alphanumeric() || b"-_.[]'$".contains(&self.s[self.i]))
        {
            // `properties['x']` style fields include brackets and quotes.
            self.i += 1;
        }
        String::from_utf8_lossy(&self.s[start..self.i]).into_owned()
    }

    fn expr(&mut self, out: &mut Vec<Cond>) -> Result<(), ApiError> {
        let op = self.ident();
        if op.is_empty() {
            return Err(bad(format!("Invalid filter '{}'.", self.src)));
        }
        self.expect(b'(')?;
        if op == "and" {
            loop {
                self.expr(out)?;
                self.skip_ws();
                if self.s.get(self.i) == Some(&b',') {
                    self.i += 1;
                    continue;
                }
                break;
            }
            return self.expect(b')');
        }
        let field = self.ident();
        if field.is_empty() {
            return Err(bad(format!(
                "Invalid filter '{}': missing field.",
                self.src
            )));
        }
        self.expect(b',')?;
        let value = self.literal()?;
        self.expect(b')')?;
        out.push(Cond { op, field, value });
        Ok(())
    }

    fn literal(&mut self) -> Result<Lit, ApiError> {
        self.skip_ws();
        match self.s.get(self.i) {
            Some(b'"') | Some(b'\'') => {
                let q = self.s[self.i];
                self.i += 1;
                let mut buf = Vec::new();
                while self.i < self.s.len() && self.s[self.i] != q {
                    if self.s[self.i] == b'\\' && self.i + 1 < self.s.len() {
                        self.i += 1;
                    }
                    buf.push(self.s[self.i]);
                    self.i += 1;
                }
                if self.i >= self.s.len() {
                    return Err(bad(format!(
                        "Invalid filter '{}': unterminated string.",
                        self.src
                    )));
                }
                self.i += 1;
                Ok(Lit::Str(String::from_utf8_lossy(&buf).into_owned()))
            }
            Some(b'[') => {
                self.i += 1;
                let mut items = Vec::new();
                self.skip_ws();
                if self.s.get(self.i) == Some(&b']') {
                    self.i += 1;
                    return Ok(Lit::List(items));
                }
                loop {
                    items.push(self.literal()?);
                    self.skip_ws();
                    match self.s.get(self.i) {
                        Some(b',') => self.i += 1,
                        Some(b']') => {
                            self.i += 1;
                            break;
                        }
                        _ => {
                            return Err(bad(format!(
                                "Invalid filter '{}': unterminated list.",
                                self.src
                            )));
                        }
                    }
                }
                Ok(Lit::List(items))
            }
            Some(_) => {
                let start = self.i;
                while self.i < self.s.len() && !b",)]".contains(&self.s[self.i]) {
                    self.i += 1;
                }
                let tok = String::from_utf8_lossy(&self.s[start..self.i])
                    .trim()
                    .to_string();
                Ok(match tok.as_str() {
                    "" => {
                        return Err(bad(format!(
                            "Invalid filter '{}': missing value.",
                            self.src
                        )));
                    }
                    "true" => Lit::Bool(true),
                    "false" => Lit::Bool(false),
                    "null" => Lit::Null,
                    t => t.parse::<f64>().map(Lit::Num).unwrap_or(Lit::Bare(tok)),
                })
            }
            None => Err(bad(format!(
                "Invalid filter '{}': missing value.",
                self.src
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALLOWED: &[(&str, &[&str])] = &[
        ("email", &["any", "equals"]),
        ("created", &["greater-than"]),
    ];

    #[test]
    fn sandbox_filter_parses() {
        let c = parse(r#"equals(email,"a@x.com")"#, ALLOWED).expect("ok");
        assert_eq!(c[0].value, Lit::Str("a@x.com".into()));
        let c = parse(r#"any(email,['a@x.com',"b@x.com"])"#, ALLOWED).expect("ok");
        assert_eq!(c[0].value.strings(), vec!["a@x.com", "b@x.com"]);
        let c = parse(
            r#"and(equals(email,"a@x.com"),greater-than(created,2024-01-01T00:00:00Z))"#,
            ALLOWED,
        )
        .expect("ok");
        assert_eq!(c.len(), 2);
        assert_eq!(c[1].value, Lit::Bare("2024-01-01T00:00:00Z".into()));
    }

    #[test]
    fn sandbox_filter_rejects() {
        assert!(parse(r#"equals(phone,"x")"#, ALLOWED).is_err());
        assert!(parse(r#"contains(email,"x")"#, ALLOWED).is_err());
        assert!(parse(r#"equals(email,"x""#, ALLOWED).is_err());
        assert!(parse("any(email,\"x\")", ALLOWED).is_err());
        assert!(parse("))((", ALLOWED).is_err());
        assert!(parse("", ALLOWED).is_err());
    }
}
