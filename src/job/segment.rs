//! Segment conditions as people write them, and the Klaviyo definition they become.
//!
//! In: a condition string from a job file (`properties.lifetime_value > 500`,
//! `in list "Weekly Active"`). Out: a `Condition`, which renders as one of Klaviyo's
//! `profile-property` / `profile-group-membership` condition objects. Pure.

use std::collections::HashMap;

use serde_json::{Map, Value, json};

use crate::job::spec::{ConditionGroupSpec, SegmentSpec};

use crate::job::attributes::FieldPath;

/// A parsed segment condition.
#[derive(Debug, Clone, PartialEq)]
pub enum Condition {
    /// `in list "X"` / `not in list "X"`.
    Member { list: String, is_member: bool },
    /// A filter on a profile attribute or custom property.
    Property { field: FieldPath, filter: Value },
}

/// A condition that does not parse.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConditionError {
    pub message: String,
    pub hint: String,
}

const FORMS: &str = "write e.g. `properties.lifetime_value > 500`, `email ends with \"@example.com\"`, `properties.kdit_tags has \"vip\"`, `properties.plan is set`, `in list \"Weekly Active\"`";

impl Condition {
    /// The list a membership condition names.
    pub fn list_name(&self) -> Option<&str> {
        match self {
            Condition::Member { list, .. } => Some(list),
            Condition::Property { .. } => None,
        }
    }

    /// The top-level custom property a condition filters on.
    pub fn custom_property(&self) -> Option<&str> {
        match self {
            Condition::Property {
                field: FieldPath::Property(p),
                ..
            } => p.first().map(String::as_str),
            _ => None,
        }
    }

    /// Klaviyo's condition object; `list_id` resolves list names to Klaviyo ids.
    pub fn to_klaviyo(&self, list_id: &dyn Fn(&str) -> Option<String>) -> Value {
        match self {
            Condition::Member { list, is_member } => json!({
                "type": "profile-group-membership",
                "is_member": is_member,
                "group_ids": [list_id(list).unwrap_or_else(|| list.clone())],
            }),
            Condition::Property { field, filter } => json!({
                "type": "profile-property",
                "property": klaviyo_property(field),
                "filter": filter,
            }),
        }
    }
}

/// How Klaviyo's segment API names a profile field: `email`, `location['city']`,
/// `properties['Name']`.
pub fn klaviyo_property(field: &FieldPath) -> String {
    match field {
        FieldPath::Standard(s) => (*s).to_string(),
        FieldPath::Location(s) => format!("location['{s}']"),
        FieldPath::Property(p) => format!("properties['{}']", p.join(".")),
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Word(String),
    Str(String),
    Num(f64),
    Op(&'static str),
    List(Vec<String>),
}

fn tokenize(s: &str) -> Result<Vec<Tok>, String> {
    let chars: Vec<char> = s.chars().collect();
    let mut i = 0;
    let mut out = Vec::new();
    while i < chars.len() {
        let c = chars[i];
        if c.is_whitespace() {
            i += 1;
        } else if c == '"' || c == '\'' {
            let (text, next) = quoted(&chars, i)?;
            out.push(Tok::Str(text));
            i = next;
        } else if c == '[' {
            let mut items = Vec::new();
            i += 1;
            loop {
                while i < chars.len() && (chars[i].is_whitespace() || chars[i] == ',') {
                    i += 1;
                }
                match chars.get(i) {
                    Some(']') => {
                        i += 1;
                        break;
                    }
                    Some('"') | Some('\'') => {
                        let (text, next) = quoted(&chars, i)?;
                        items.push(text);
                        i = next;
                    }
                    _ => return Err("a list holds quoted strings: [\"a\", \"b\"]".into()),
                }
            }
            out.push(Tok::List(items));
        } else if "<>=!".contains(c) {
            let two: String = chars[i..chars.len().min(i + 2)].iter().collect();
            let (op, len) = match two.as_str() {
                ">=" => (">=", 2),
                "<=" => ("<=", 2),
                "!=" => ("!=", 2),
                "==" => ("=", 2),
                _ => match c {
                    '>' => (">", 1),
                    '<' => ("<", 1),
                    '=' => ("=", 1),
                    _ => return Err("`!` must be followed by `=`".into()),
                },
            };
            out.push(Tok::Op(op));
            i += len;
        } else if c.is_ascii_digit()
            || (c == '-' && chars.get(i + 1).is_some_and(|d| d.is_ascii_digit()))
        {
            let start = i;
            i += 1;
            while i < chars.len() && (chars[i].is_ascii_digit() || chars[i] == '.') {
                i += 1;
            }
            let text: String = chars[start..i].iter().collect();
            out.push(Tok::Num(
                text.parse()
                    .map_err(|_| format!("`{text}` is not a number"))?,
            ));
        } else {
            let start = i;
            while i < chars.len() && !chars[i].is_whitespace() && !"<>=!\"'[".contains(chars[i]) {
                i += 1;
            }
            out.push(Tok::Word(chars[start..i].iter().collect()));
        }
    }
    Ok(out)
}

fn quoted(chars: &[char], start: usize) -> Result<(String, usize), String> {
    let q = chars[start];
    let mut i = start + 1;
    let mut text = String::new();
    while i < chars.len() {
        match chars[i] {
            '\\' if i + 1 < chars.len() => {
                text.push(chars[i + 1]);
                i += 2;
            }
            c if c == q => return Ok((text, i + 1)),
            c => {
                text.push(c);
                i += 1;
            }
        }
    }
    Err("a quoted string is not closed".into())
}

/// Parses one condition.
pub fn parse_condition(text: &str) -> Result<Condition, ConditionError> {
    let fail = |m: String| ConditionError {
        message: format!("segment condition `{text}`: {m}"),
        hint: FORMS.to_string(),
    };
    let toks = tokenize(text).map_err(fail)?;
    let words: Vec<Option<&str>> = toks
        .iter()
        .map(|t| match t {
            Tok::Word(w) => Some(w.as_str()),
            _ => None,
        })
        .collect();
    // Membership.
    let member = match words.as_slice() {
        [Some("in"), Some("list"), _] => Some((true, 2)),
        [Some("not"), Some("in"), Some("list"), _] => Some((false, 3)),
        _ => None,
    };
    if let Some((is_member, at)) = member {
        return match &toks[at] {
            Tok::Str(list) if !list.trim().is_empty() => Ok(Condition::Member {
                list: list.clone(),
                is_member,
            }),
            _ => Err(fail(
                "the list name must be quoted, e.g. `in list \"VIP\"`".into(),
            )),
        };
    }
    let Some(Tok::Word(prop)) = toks.first() else {
        return Err(fail(
            "it must start with a field such as `properties.plan`".into(),
        ));
    };
    let field = FieldPath::parse(prop).map_err(|e| ConditionError {
        message: format!("segment condition `{text}`: {}", e.message),
        hint: e.hint,
    })?;
    let rest = &toks[1..];
    let word = |i: usize| match rest.get(i) {
        Some(Tok::Word(w)) => Some(w.as_str()),
        _ => None,
    };
    let filter = match (rest.first(), rest.get(1), rest.len()) {
        (Some(Tok::Op(op)), Some(value), 2) => compare(op, value).map_err(fail)?,
        _ => match (word(0), word(1), word(2), rest.len()) {
            (Some("is"), Some("set"), _, 2) => json!({"type": "existence", "operator": "is-set"}),
            (Some("is"), Some("not"), Some("set"), 3) => {
                json!({"type": "existence", "operator": "not-set"})
            }
            (Some("contains"), _, _, 2) => string_op("contains", rest.get(1)).map_err(fail)?,
            (Some("not"), Some("contains"), _, 3) => {
                string_op("not-contains", rest.get(2)).map_err(fail)?
            }
            (Some("starts"), Some("with"), _, 3) => {
                string_op("starts-with", rest.get(2)).map_err(fail)?
            }
            (Some("ends"), Some("with"), _, 3) => {
                string_op("ends-with", rest.get(2)).map_err(fail)?
            }
            (Some("has"), _, _, 2) => list_op("contains", rest.get(1)).map_err(fail)?,
            (Some("not"), Some("has"), _, 3) => {
                list_op("not-contains", rest.get(2)).map_err(fail)?
            }
            (Some("in"), _, _, 2) | (Some("not"), Some("in"), _, 3) => {
                let negated = word(0) == Some("not");
                match rest.last() {
                    Some(Tok::List(items)) => {
                        json!({"type": "string", "operator": if negated {"not-in"} else {"in"}, "value": items})
                    }
                    _ => return Err(fail("`in` takes a list: in [\"a\", \"b\"]".into())),
                }
            }
            _ => return Err(fail("the operator is not one kdit knows".into())),
        },
    };
    Ok(Condition::Property { field, filter })
}

fn compare(op: &str, value: &Tok) -> Result<Value, String> {
    let numeric =
        |operator: &str, n: f64| json!({"type": "numeric", "operator": operator, "value": n});
    match (op, value) {
        ("=", Tok::Num(n)) => Ok(numeric("equals", *n)),
        ("!=", Tok::Num(n)) => Ok(numeric("not-equals", *n)),
        (">", Tok::Num(n)) => Ok(numeric("greater-than", *n)),
        (">=", Tok::Num(n)) => Ok(numeric("greater-than-or-equal", *n)),
        ("<", Tok::Num(n)) => Ok(numeric("less-than", *n)),
        ("<=", Tok::Num(n)) => Ok(numeric("less-than-or-equal", *n)),
        ("=", Tok::Str(s)) => Ok(json!({"type": "string", "operator": "equals", "value": s})),
        ("!=", Tok::Str(s)) => Ok(json!({"type": "string", "operator": "not-equals", "value": s})),
        ("=", Tok::Word(w)) if w == "true" || w == "false" => {
            Ok(json!({"type": "boolean", "operator": "equals", "value": w == "true"}))
        }
        (_, Tok::Word(w)) => Err(format!(
            "`{w}` must be quoted, or be a number, true or false"
        )),
        (_, Tok::Str(_)) => Err(format!("`{op}` compares numbers; strings take `=` or `!=`")),
        _ => Err(format!("`{op}` needs a number or a quoted string after it")),
    }
}

fn string_op(operator: &str, value: Option<&Tok>) -> Result<Value, String> {
    match value {
        Some(Tok::Str(s)) => Ok(json!({"type": "string", "operator": operator, "value": s})),
        _ => Err(format!("`{operator}` takes a quoted string")),
    }
}

fn list_op(operator: &str, value: Option<&Tok>) -> Result<Value, String> {
    match value {
        Some(Tok::Str(s)) => Ok(json!({"type": "list", "operator": operator, "value": s})),
        Some(Tok::Num(n)) => Ok(json!({"type": "list", "operator": operator, "value": n})),
        _ => Err("`has` takes a quoted string or a number".into()),
    }
}

/// Klaviyo's cap on conditions in one segment.
pub const MAX_CONDITIONS: usize = 100;

/// The condition texts of a segment, group by group.
fn groups(spec: &SegmentSpec) -> Vec<Vec<&str>> {
    spec.definition
        .all
        .iter()
        .map(|g| match g {
            ConditionGroupSpec::One(c) => vec![c.as_str()],
            ConditionGroupSpec::Any(a) => a.any.iter().map(String::as_str).collect(),
        })
        .collect()
}

/// How many conditions a segment has.
pub fn condition_count(spec: &SegmentSpec) -> usize {
    groups(spec).iter().map(Vec::len).sum()
}

/// The Klaviyo definition a segment spec asks for; list names resolved by `list_id`
/// (a name without an id stays as the name, for plans made before the list exists).
pub fn definition(
    spec: &SegmentSpec,
    list_id: &dyn Fn(&str) -> Option<String>,
) -> Result<Value, String> {
    let mut condition_groups = Vec::new();
    for group in groups(spec) {
        let mut conditions = Vec::new();
        for text in group {
            let c = parse_condition(text).map_err(|e| e.message)?;
            conditions.push(c.to_klaviyo(list_id));
        }
        condition_groups.push(json!({ "conditions": conditions }));
    }
    Ok(json!({ "condition_groups": condition_groups }))
}

/// A definition in a form where equal meanings compare equal: nulls dropped, numbers as
/// floats (Klaviyo may answer `500` for `500.0`).
pub fn normalise(v: &Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(
            m.iter()
                .filter(|(_, v)| !v.is_null())
                .map(|(k, v)| (k.clone(), normalise(v)))
                .collect::<Map<String, Value>>(),
        ),
        Value::Array(a) => Value::Array(a.iter().map(normalise).collect()),
        Value::Number(n) => n.as_f64().map(|f| json!(f)).unwrap_or_else(|| v.clone()),
        other => other.clone(),
    }
}

fn short(v: &Value) -> String {
    match v {
        Value::String(s) => format!("{s:?}"),
        Value::Number(n) => match n.as_f64() {
            Some(f) if f.fract() == 0.0 && f.abs() < 1e15 => format!("{}", f as i64),
            _ => n.to_string(),
        },
        Value::Array(a) => format!("[{}]", a.iter().map(short).collect::<Vec<_>>().join(", ")),
        other => other.to_string(),
    }
}

/// One Klaviyo condition, compactly: `properties['ltv'] > 500`, `in list "VIP"`.
pub fn describe_condition(c: &Value, list_names: &HashMap<String, String>) -> String {
    match c["type"].as_str() {
        Some("profile-group-membership") => {
            let id = c["group_ids"][0].as_str().unwrap_or("?");
            let name = list_names.get(id).map(String::as_str).unwrap_or(id);
            let not = if c["is_member"].as_bool() == Some(false) {
                "not "
            } else {
                ""
            };
            format!("{not}in list {name:?}")
        }
        Some("profile-property") => {
            let f = &c["filter"];
            let op = match (f["type"].as_str(), f["operator"].as_str().unwrap_or("?")) {
                (_, "equals") => "=",
                (_, "not-equals") => "!=",
                (_, "greater-than") => ">",
                (_, "greater-than-or-equal") => ">=",
                (_, "less-than") => "<",
                (_, "less-than-or-equal") => "<=",
                (Some("list"), "contains") => "has",
                (Some("list"), "not-contains") => "not has",
                (_, "is-set") => "is set",
                (_, "not-set") => "is not set",
                (_, other) => other,
            };
            let prop = c["property"].as_str().unwrap_or("?");
            match f.get("value") {
                Some(v) => format!("{prop} {op} {}", short(v)),
                None => format!("{prop} {op}"),
            }
        }
        Some(other) => format!("({other} condition)"),
        None => "(unreadable condition)".into(),
    }
}

/// A definition's groups, each as one line (`a or b`).
pub fn describe(def: &Value, list_names: &HashMap<String, String>) -> Vec<String> {
    def["condition_groups"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|g| {
            g["conditions"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|c| describe_condition(c, list_names))
                .collect::<Vec<_>>()
                .join(" or ")
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kl(text: &str) -> Value {
        parse_condition(text)
            .unwrap()
            .to_klaviyo(&|name| Some(format!("id-{name}")))
    }

    #[test]
    fn conditions_become_klaviyo_objects() {
        assert_eq!(
            kl("properties.lifetime_value > 500"),
            json!({"type": "profile-property", "property": "properties['lifetime_value']",
                   "filter": {"type": "numeric", "operator": "greater-than", "value": 500.0}})
        );
        assert_eq!(
            kl("in list \"Weekly Active\""),
            json!({"type": "profile-group-membership", "is_member": true, "group_ids": ["id-Weekly Active"]})
        );
        assert_eq!(
            kl("location.city = 'Lyon'")["property"],
            json!("location['city']")
        );
        assert_eq!(
            kl("properties.kdit_tags has \"vip\"")["filter"]["type"],
            json!("list")
        );
        assert_eq!(
            kl("properties.plan is not set")["filter"]["operator"],
            json!("not-set")
        );
        assert_eq!(
            kl("email ends with \"@x.com\"")["filter"]["operator"],
            json!("ends-with")
        );
        assert_eq!(
            kl("properties.vip = true")["filter"]["type"],
            json!("boolean")
        );
        assert_eq!(
            kl("properties.tier in [\"a\", \"b\"]")["filter"]["value"],
            json!(["a", "b"])
        );
    }

    #[test]
    fn bad_conditions_explain_themselves() {
        for bad in [
            "properties.x >",
            "in list VIP",
            "nope > 1",
            "properties.x ~ 3",
            "properties.x > \"a\"",
        ] {
            let e = parse_condition(bad).unwrap_err();
            assert!(e.message.contains(bad), "{e:?}");
        }
    }
}
