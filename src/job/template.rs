//! The minijinja environment for field templates (`template: "{{ plan | upper }}"`).
//!
//! In: template sources from job files. Out: compiled templates and the columns each one
//! reads. Pure. Undefined names are errors (strict), nothing is HTML-escaped, and `none`
//! (a NULL column) renders as the empty string, so `"{{ first }} {{ last }}"` works when one
//! of them is NULL. A template whose output is empty or only whitespace yields NULL.
//!
//! Most field templates are text and `{{ column | filter }}` with `upper`, `lower` or `trim`.
//! `SimpleTemplate` recognises that shape and renders it without minijinja (a quarter of the
//! transform's time otherwise) when its columns hold text; anything else goes to minijinja.

use std::collections::BTreeSet;

use minijinja::{Environment, UndefinedBehavior};

/// The environment every field template of a job is compiled in.
pub fn field_env() -> Environment<'static> {
    let mut env = Environment::new();
    env.set_undefined_behavior(UndefinedBehavior::Strict);
    env.set_auto_escape_callback(|_| minijinja::AutoEscape::None);
    env.set_formatter(|out, state, value| {
        if value.is_none() {
            Ok(())
        } else {
            minijinja::escape_formatter(out, state, value)
        }
    });
    env
}

/// Names minijinja itself provides: they are not columns.
const GLOBALS: &[&str] = &["range", "dict", "namespace", "debug", "loop", "self"];

/// Adds a template to `env` under `name`; returns the columns it reads, or a message.
pub fn add_field_template(
    env: &mut Environment<'static>,
    name: &str,
    source: &str,
) -> Result<Vec<String>, String> {
    env.add_template_owned(name.to_string(), source.to_string())
        .map_err(|e| {
            format!(
                "template syntax error: {}",
                e.detail().unwrap_or("invalid template")
            )
        })?;
    let t = env.get_template(name).map_err(|e| e.to_string())?;
    let cols: BTreeSet<String> = t
        .undeclared_variables(false)
        .into_iter()
        .filter(|n| !GLOBALS.contains(&n.as_str()))
        .collect();
    Ok(cols.into_iter().collect())
}

/// A template made only of text and `{{ name | filter | … }}` with `upper`, `lower` and
/// `trim`: rendered by hand, exactly as minijinja would render it for text values.
#[derive(Debug, Clone, PartialEq)]
pub struct SimpleTemplate {
    parts: Vec<Part>,
}

#[derive(Debug, Clone, PartialEq)]
enum Part {
    Text(String),
    Name(String, Vec<SimpleFilter>),
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum SimpleFilter {
    Upper,
    Lower,
    Trim,
}

/// Words a template expression may hold that are not variables.
const NOT_NAMES: &[&str] = &[
    "true", "false", "none", "True", "False", "None", "and", "or", "not", "in", "is", "if", "else",
];

impl SimpleTemplate {
    /// The template, when it has the simple shape; `None` sends it to minijinja.
    pub fn parse(source: &str) -> Option<SimpleTemplate> {
        // Newlines (minijinja drops a trailing one), blocks, comments and whitespace control
        // are minijinja's business.
        if source.contains(['\n', '\r']) || source.contains("{%") || source.contains("{#") {
            return None;
        }
        let mut parts = Vec::new();
        let mut rest = source;
        while let Some(open) = rest.find("{{") {
            if open > 0 {
                parts.push(Part::Text(rest[..open].to_string()));
            }
            let after = &rest[open + 2..];
            let close = after.find("}}")?;
            let expr = &after[..close];
            if expr.starts_with(['-', '+']) || expr.ends_with(['-', '+']) {
                return None;
            }
            let mut pieces = expr.split('|').map(str::trim);
            let name = pieces.next()?;
            let ident = name.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
                && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
            if !ident || NOT_NAMES.contains(&name) || GLOBALS.contains(&name) {
                return None;
            }
            let filters = pieces
                .map(|f| match f {
                    "upper" => Some(SimpleFilter::Upper),
                    "lower" => Some(SimpleFilter::Lower),
                    "trim" => Some(SimpleFilter::Trim),
                    _ => None,
                })
                .collect::<Option<Vec<_>>>()?;
            parts.push(Part::Name(name.to_string(), filters));
            rest = &after[close + 2..];
        }
        if !rest.is_empty() {
            parts.push(Part::Text(rest.to_string()));
        }
        Some(SimpleTemplate { parts })
    }

    /// The names the template reads, once per use, in order (`render` asks by this position).
    pub fn names(&self) -> Vec<&str> {
        self.parts
            .iter()
            .filter_map(|p| match p {
                Part::Name(n, _) => Some(n.as_str()),
                Part::Text(_) => None,
            })
            .collect()
    }

    /// Renders with `value(i)` for the i-th use of a name (see `names`); `None` when a value
    /// is not text, for minijinja to render instead.
    pub fn render<'a>(&self, value: impl Fn(usize) -> Option<&'a str>) -> Option<String> {
        // One name with one filter, the usual shape: the filter's result is the output.
        if let [Part::Name(_, filters)] = self.parts.as_slice()
            && let [f] = filters.as_slice()
        {
            return Some(apply(*f, value(0)?));
        }
        let mut out = String::new();
        let mut i = 0;
        for p in &self.parts {
            match p {
                Part::Text(t) => out.push_str(t),
                Part::Name(_, filters) => {
                    let v = value(i)?;
                    i += 1;
                    match filters.as_slice() {
                        [] => out.push_str(v),
                        [first, more @ ..] => {
                            let mut s = apply(*first, v);
                            for f in more {
                                s = apply(*f, &s);
                            }
                            out.push_str(&s);
                        }
                    }
                }
            }
        }
        Some(out)
    }
}

fn apply(f: SimpleFilter, s: &str) -> String {
    match f {
        SimpleFilter::Upper => s.to_uppercase(),
        SimpleFilter::Lower => s.to_lowercase(),
        SimpleFilter::Trim => s.trim().to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use minijinja::Value;

    #[test]
    fn none_renders_empty_and_undefined_is_an_error() {
        let mut env = field_env();
        let cols = add_field_template(&mut env, "t", "{{ first }} {{ last | upper }}").unwrap();
        assert_eq!(cols, vec!["first", "last"]);
        let t = env.get_template("t").unwrap();
        let ctx = Value::from_pairs([("first", Value::from(())), ("last", Value::from("<li>"))]);
        assert_eq!(t.render(ctx).unwrap(), " <LI>");
        assert!(t.render(Value::from_pairs([("first", 1)])).is_err());
        assert!(add_field_template(&mut env, "bad", "{{ x ").is_err());
    }

    /// The hand-rendered shape gives what minijinja gives, for any text, and every other
    /// shape is left to minijinja.
    #[test]
    fn simple_templates_render_as_minijinja_does() {
        let texts = [
            "",
            "ana",
            " Ana  ",
            "straße",
            "ÉCOLE",
            "İstanbul",
            "\t x \u{a0}",
            "<b>&amp;",
            "{{ x }}",
            "ǅ",
            "東京",
        ];
        let templates = [
            "{{ a }}",
            "{{a|upper}}",
            "{{ a | lower }} {{ b | upper | trim }}",
            "x {{ a|trim|upper }}-{{ a }} }} y",
            "{{ b | trim | lower | upper }}",
            "plain",
            "{{ a }}{{ b }}{{ a }}",
        ];
        let mut env = field_env();
        for (n, source) in templates.iter().enumerate() {
            let simple = SimpleTemplate::parse(source).unwrap_or_else(|| panic!("{source}"));
            let name = format!("t{n}");
            add_field_template(&mut env, &name, source).unwrap();
            let t = env.get_template(&name).unwrap();
            for a in texts {
                for b in texts {
                    let expected = t.render(Value::from_pairs([("a", a), ("b", b)])).unwrap();
                    let names = simple.names();
                    let got = simple.render(|i| Some(if names[i] == "a" { a } else { b }));
                    assert_eq!(
                        got.as_deref(),
                        Some(expected.as_str()),
                        "{source} a={a:?} b={b:?}"
                    );
                }
            }
        }
        for other in [
            "{% if a %}x{% endif %}",
            "{{ a | title }}",
            "{{- a }}",
            "{{ a }}\n",
            "{{ a ~ b }}",
            "{{ a.b }}",
            "{{ none }}",
            "{{ a | trim('x') }}",
            "{{ range }}",
            "{# c #}{{ a }}",
            "{{ a",
        ] {
            assert_eq!(SimpleTemplate::parse(other), None, "{other}");
        }
    }
}
