//! The `-- @param` header of a stored query: each declared parameter with its type, default,
//! description and line.
//!
//! In: a `.sql` file's text. Out: the `ParamDecl`s of its comment header, and a `QueryProblem`
//! for each line that does not declare a parameter properly (bad name or type, a default that
//! does not convert, a duplicate, `@param` after the query started). Pure.

use super::convert::{ParamType, convert, type_hint};
use super::lint::{QueryProblem, is_ident};
use crate::job::spec::{ParamScalar, ParamValue};

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

/// Reads the `-- @param` lines of the comment header.
pub(super) fn parse_header(text: &str, problems: &mut Vec<QueryProblem>) -> Vec<ParamDecl> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::job::query::StoredQuery;
    use crate::job::query::tests::ACTIVE;

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
    fn header_errors_have_lines() {
        let e = StoredQuery::parse("q.sql", "-- @param x intt\n-- @param y int = zz\nselect 1")
            .unwrap_err();
        let p = e.problems();
        assert_eq!(p.len(), 2, "{p:?}");
        assert_eq!(p[0].line, Some(1));
        assert!(p[0].hint.as_deref().unwrap().contains("did you mean `int`"));
        assert_eq!(p[1].line, Some(2));
    }
}
