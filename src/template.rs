//! The minijinja environment for field templates (`template: "{{ plan | upper }}"`).
//!
//! In: template sources from job files. Out: compiled templates and the columns each one
//! reads. Pure. Undefined names are errors (strict), nothing is HTML-escaped, and `none`
//! (a NULL column) renders as the empty string, so `"{{ first }} {{ last }}"` works when one
//! of them is NULL. A template whose output is empty or only whitespace yields NULL.

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
}
