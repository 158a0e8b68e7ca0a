//! A field's value in a row: taken from its column, template or constant, defaulted,
//! transformed, cast to its `type`, checked against what Klaviyo accepts, and written into the
//! payload as JSON.
//!
//! In: a compiled field (`MappedField`), where its value is in the row (`BoundOrigin`), and
//! the row's `Cell`s. Out: the value written into the `Payload` (or NULL: no value), or the
//! field's failure (`BoxedFailure`). Pure: no I/O.
//!
//! Numbers: PostgreSQL `numeric` values arrive as exact decimal text. Klaviyo stores numbers
//! as doubles, and serde_json (without `arbitrary_precision`, which would change
//! `serde_json::Number` for the whole program) holds i64/u64/f64. A numeric is sent as a JSON
//! number when that number prints back as the same decimal (every value of up to 15
//! significant digits, so all money amounts: `412.50` is sent as `412.5`); a numeric with
//! more digits than a double keeps is rejected (`numeric_precision`) rather than silently
//! rounded — round it in SQL or map it with `type: string`.

use chrono::{DateTime, NaiveDate, NaiveDateTime, Utc};
use minijinja::Environment;
use minijinja::value::{Serde, Value as JValue};
use serde_json::Value;

use super::email::{MAX_EMAIL, normalise_email_owned, to_e164, valid_email};
use super::mapping::BoundOrigin;
use super::payload::{Payload, write_datetime_json};
use super::reject::{BoxedFailure, Rule, fail};
use crate::job::attributes::{FieldPath, MAX_PROPERTY_NAME};
use crate::job::profiles::MappedField;
use crate::job::spec::{Transform, ValueType};
use crate::rows::cell::{Cell, format_datetime, json_to_cell};

/// Deepest nesting kdit sends inside a property value.
pub const MAX_PROPERTY_DEPTH: usize = 10;

/// Writes a field's final JSON value into `payload` (`Ok(true)`; `text` gets the value's
/// text, if it is text), or says it is NULL (`Ok(false)`).
pub(super) fn field_value<'m>(
    env: &Environment<'static>,
    f: &'m MappedField,
    origin: &BoundOrigin,
    default: Option<&Cell>,
    cells: &mut [Cell],
    payload: &mut Payload<'m, '_>,
    text: &mut Option<String>,
) -> Result<bool, BoxedFailure> {
    let mut v = match origin {
        BoundOrigin::Column(i, true) => cells
            .get_mut(*i)
            .map(|c| std::mem::replace(c, Cell::Null))
            .unwrap_or(Cell::Null),
        BoundOrigin::Column(i, false) => cells.get(*i).cloned().unwrap_or(Cell::Null),
        BoundOrigin::Constant(c) => c.clone(),
        BoundOrigin::Template(name, cols, simple) => {
            let text = |i: usize| match cells.get(i) {
                Some(Cell::Text(s)) => Some(s.as_str()),
                _ => None,
            };
            let quick = simple
                .as_ref()
                .and_then(|(t, at)| t.render(|k| at.get(k).and_then(|i| text(*i))));
            let out = match quick {
                Some(out) => out,
                None => {
                    let ctx = JValue::from_pairs(cols.iter().map(|(n, i)| {
                        (
                            n.as_str(),
                            cell_to_template(cells.get(*i).unwrap_or(&Cell::Null)),
                        )
                    }));
                    env.get_template(name)
                        .and_then(|t| t.render(ctx))
                        .map_err(|e| {
                            fail(
                                Rule::Template,
                                format!("template failed: {}", e.detail().unwrap_or("error")),
                                None,
                            )
                        })?
                }
            };
            if out.trim().is_empty() {
                Cell::Null
            } else {
                Cell::Text(out)
            }
        }
    };
    if v.is_null()
        && let Some(d) = default
    {
        v = d.clone();
    }
    if v.is_null() {
        return Ok(false);
    }
    for t in &f.transforms {
        v = apply_transform(*t, v, f)?;
    }
    // Empty text is no value: a blank email is a missing key, not a malformed one.
    if matches!(&v, Cell::Text(s) if s.is_empty()) {
        return Ok(false);
    }
    if let Some(ty) = f.value_type {
        v = cast(v, ty)?;
    }
    if v.is_null() {
        return Ok(false);
    }
    // A timestamp in `location` or `properties` is written straight into the payload, as the
    // text `finish` makes of it (no key is there, and text needs no checks there).
    let at = match &v {
        Cell::Timestamptz(t) => Some(*t),
        Cell::Timestamp(t) => Some(t.and_utc()),
        _ => None,
    };
    if let Some(t) = at
        && matches!(f.path, FieldPath::Location(_) | FieldPath::Property(_))
    {
        payload.insert_with(&f.path, |out| write_datetime_json(out, &t));
        return Ok(true);
    }
    // Text, the common case, is neither turned into a `Value` nor moved until it is written.
    if let Cell::Text(s) = v {
        validate(&s, f)?;
        payload.insert_str(&f.path, &s);
        *text = Some(s);
        return Ok(true);
    }
    let json = finish(v, f)?;
    validate(json.as_str().unwrap_or_default(), f)?;
    payload.insert(&f.path, &json);
    if let Value::String(s) = json {
        *text = Some(s);
    }
    Ok(true)
}

fn scalar_text(v: &Cell) -> Option<String> {
    match v {
        Cell::Text(s) | Cell::Numeric(s) => Some(s.clone()),
        Cell::Int(_) | Cell::Float(_) | Cell::Bool(_) | Cell::Uuid(_) => v.to_text(),
        Cell::Json(Value::String(s)) => Some(s.clone()),
        _ => None,
    }
}

fn apply_transform(t: Transform, v: Cell, f: &MappedField) -> Result<Cell, BoxedFailure> {
    // Text, the common case, is taken rather than copied.
    let text = match v {
        Cell::Text(s) => Ok(s),
        other => scalar_text(&other).ok_or(other),
    };
    let s = match text {
        Ok(s) => s,
        Err(v) => {
            let name = format!("{t:?}").to_lowercase();
            return Err(fail(
                Rule::Transform,
                format!("`{name}` applies to text, not to this value"),
                Some(&v),
            ));
        }
    };
    Ok(match t {
        Transform::Trim if s.trim().len() == s.len() => Cell::Text(s),
        Transform::Trim => Cell::Text(s.trim().to_string()),
        Transform::Lowercase => Cell::Text(s.to_lowercase()),
        Transform::Uppercase => Cell::Text(s.to_uppercase()),
        Transform::Email => Cell::Text(normalise_email_owned(s).map_err(|s| {
            fail(
                Rule::EmailSyntax,
                "not a valid email address",
                Some(&Cell::Text(s)),
            )
        })?),
        Transform::E164 => Cell::Text(
            to_e164(&s, f.region)
                .map_err(|m| fail(Rule::PhoneE164, m, Some(&Cell::Text(s.clone()))))?,
        ),
    })
}

fn parse_datetime(s: &str) -> Option<DateTime<Utc>> {
    let s = s.trim();
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Some(t.with_timezone(&Utc));
    }
    for f in ["%Y-%m-%d %H:%M:%S%.f%#z", "%Y-%m-%dT%H:%M:%S%.f%#z"] {
        if let Ok(t) = DateTime::parse_from_str(s, f) {
            return Some(t.with_timezone(&Utc));
        }
    }
    for f in ["%Y-%m-%d %H:%M:%S%.f", "%Y-%m-%dT%H:%M:%S%.f"] {
        if let Ok(t) = NaiveDateTime::parse_from_str(s, f) {
            return Some(t.and_utc());
        }
    }
    NaiveDate::parse_from_str(s, "%Y-%m-%d")
        .ok()
        .and_then(|d| d.and_hms_opt(0, 0, 0))
        .map(|t| t.and_utc())
}

fn cast(v: Cell, ty: ValueType) -> Result<Cell, BoxedFailure> {
    let bad =
        |v: &Cell, what: &str| fail(Rule::TypeCast, format!("cannot be read as {what}"), Some(v));
    Ok(match ty {
        ValueType::String => match &v {
            Cell::Json(Value::String(s)) => Cell::Text(s.clone()),
            Cell::Json(j) => Cell::Text(j.to_string()),
            Cell::Array(_) => Cell::Text(cell_to_json_lossy(&v).to_string()),
            other => Cell::Text(other.to_text().unwrap_or_default()),
        },
        ValueType::Number => match v {
            Cell::Int(_) | Cell::Float(_) | Cell::Numeric(_) => v,
            Cell::Text(ref s) => {
                let t = s.trim();
                if let Ok(i) = t.parse::<i64>() {
                    Cell::Int(i)
                } else if crate::job::query::is_decimal(t) {
                    Cell::Numeric(t.to_string())
                } else if let Some(x) = t.parse::<f64>().ok().filter(|x| x.is_finite()) {
                    Cell::Float(x)
                } else {
                    return Err(bad(&v, "a number"));
                }
            }
            Cell::Json(Value::Number(ref n)) => json_to_cell(&Value::Number(n.clone())),
            _ => return Err(bad(&v, "a number")),
        },
        ValueType::Integer => match v {
            Cell::Int(_) => v,
            Cell::Float(x) if x.fract() == 0.0 && x.abs() < 9.0e15 => Cell::Int(x as i64),
            Cell::Numeric(ref s) | Cell::Text(ref s) => {
                let t = s.trim();
                let int_part = match t.split_once('.') {
                    Some((i, frac)) if frac.chars().all(|c| c == '0') => i,
                    Some(_) => return Err(bad(&v, "an integer")),
                    None => t,
                };
                match int_part.parse::<i64>() {
                    Ok(i) => Cell::Int(i),
                    Err(_) => return Err(bad(&v, "an integer")),
                }
            }
            Cell::Json(Value::Number(ref n)) if n.is_i64() => Cell::Int(n.as_i64().unwrap_or(0)),
            _ => return Err(bad(&v, "an integer")),
        },
        ValueType::Boolean => match v {
            Cell::Bool(_) => v,
            Cell::Int(0) => Cell::Bool(false),
            Cell::Int(1) => Cell::Bool(true),
            Cell::Json(Value::Bool(b)) => Cell::Bool(b),
            Cell::Text(ref s) => match s.trim().to_ascii_lowercase().as_str() {
                "true" | "t" | "yes" | "y" | "1" | "on" => Cell::Bool(true),
                "false" | "f" | "no" | "n" | "0" | "off" => Cell::Bool(false),
                _ => return Err(bad(&v, "a boolean")),
            },
            _ => return Err(bad(&v, "a boolean")),
        },
        ValueType::Date => match v {
            Cell::Date(_) => v,
            Cell::Timestamp(t) => Cell::Date(t.date()),
            Cell::Timestamptz(t) => Cell::Date(t.date_naive()),
            Cell::Text(ref s) => match NaiveDate::parse_from_str(s.trim(), "%Y-%m-%d")
                .ok()
                .or_else(|| parse_datetime(s).map(|t| t.date_naive()))
            {
                Some(d) => Cell::Date(d),
                None => return Err(bad(&v, "a date (YYYY-MM-DD)")),
            },
            _ => return Err(bad(&v, "a date")),
        },
        ValueType::Datetime => match v {
            Cell::Timestamptz(_) => v,
            Cell::Timestamp(t) => Cell::Timestamptz(t.and_utc()),
            Cell::Date(d) => match d.and_hms_opt(0, 0, 0) {
                Some(t) => Cell::Timestamptz(t.and_utc()),
                None => return Err(bad(&v, "a date and time")),
            },
            Cell::Text(ref s) => match parse_datetime(s) {
                Some(t) => Cell::Timestamptz(t),
                None => return Err(bad(&v, "a date and time (RFC 3339)")),
            },
            _ => return Err(bad(&v, "a date and time")),
        },
        ValueType::List => match v {
            Cell::Array(_) => v,
            Cell::Json(Value::Array(items)) => {
                Cell::Array(items.iter().map(json_to_cell).collect())
            }
            Cell::Text(ref s) if s.trim_start().starts_with('[') => {
                match serde_json::from_str::<Value>(s) {
                    Ok(Value::Array(items)) => {
                        Cell::Array(items.iter().map(json_to_cell).collect())
                    }
                    _ => return Err(bad(&v, "a list")),
                }
            }
            other => Cell::Array(vec![other]),
        },
        ValueType::Json => match v {
            Cell::Text(ref s) => match serde_json::from_str::<Value>(s) {
                Ok(j) => Cell::Json(j),
                Err(_) => return Err(bad(&v, "JSON")),
            },
            other => other,
        },
    })
}

/// The JSON Klaviyo gets for a value, checking numbers and attribute shapes.
fn finish(v: Cell, f: &MappedField) -> Result<Value, BoxedFailure> {
    // Text is the common case: move it, no copy.
    let v = match v {
        Cell::Text(s) => return Ok(Value::String(s)),
        other => other,
    };
    let json = cell_to_json(&v)?;
    match &f.path {
        FieldPath::Standard(_) | FieldPath::Location(_) => {
            let numeric_ok = matches!(f.path, FieldPath::Location("latitude" | "longitude"));
            match json {
                Value::String(_) => Ok(json),
                Value::Number(_) if numeric_ok => Ok(json),
                Value::Number(_) | Value::Bool(_) => {
                    Ok(Value::String(v.to_text().unwrap_or_default()))
                }
                _ => Err(fail(
                    Rule::AttributeType,
                    format!("`{}` takes text, not a list or object", f.key),
                    Some(&v),
                )),
            }
        }
        FieldPath::Property(_) => {
            check_property_names(&json, 1).map_err(|m| fail(Rule::PropertyName, m, None))?;
            Ok(json)
        }
    }
}

fn check_property_names(v: &Value, depth: usize) -> Result<(), String> {
    match v {
        Value::Object(m) => {
            if depth > MAX_PROPERTY_DEPTH {
                return Err(format!("nested deeper than {MAX_PROPERTY_DEPTH} levels"));
            }
            for (k, inner) in m {
                if k.is_empty()
                    || k.starts_with('$')
                    || k.chars().count() > MAX_PROPERTY_NAME
                    || k.chars().any(char::is_control)
                {
                    let shown: String = k.chars().take(40).collect();
                    return Err(format!(
                        "property name `{shown}` is empty, starts with `$`, has control characters or is longer than {MAX_PROPERTY_NAME} characters"
                    ));
                }
                check_property_names(inner, depth + 1)?;
            }
            Ok(())
        }
        Value::Array(items) => {
            if depth > MAX_PROPERTY_DEPTH {
                return Err(format!("nested deeper than {MAX_PROPERTY_DEPTH} levels"));
            }
            items
                .iter()
                .try_for_each(|i| check_property_names(i, depth + 1))
        }
        _ => Ok(()),
    }
}

/// Checks a value's text (`""` for a value that is not text) against what Klaviyo accepts
/// for the field.
fn validate(s: &str, f: &MappedField) -> Result<(), BoxedFailure> {
    let text = || Some(Cell::Text(s.to_string()));
    match f.path {
        FieldPath::Standard("email") => {
            // A character is at least a byte: count characters only when the bytes exceed.
            if s.len() > MAX_EMAIL && s.chars().count() > MAX_EMAIL {
                return Err(fail(
                    Rule::EmailTooLong,
                    format!("longer than Klaviyo's {MAX_EMAIL} characters"),
                    text().as_ref(),
                ));
            }
            // After the `email` transform the address was already checked.
            if !f.transforms.contains(&Transform::Email) && !valid_email(s) {
                return Err(fail(
                    Rule::EmailSyntax,
                    "not a valid email address",
                    text().as_ref(),
                ));
            }
        }
        FieldPath::Standard("phone_number") => {
            let e164_shape = s.len() >= 8
                && s.len() <= 16
                && s.starts_with('+')
                && s[1..].chars().all(|c| c.is_ascii_digit())
                && !s[1..].starts_with('0');
            if !e164_shape {
                return Err(fail(
                    Rule::PhoneE164,
                    "not in E.164 form (`+15005550006`); add `transform: e164` and a `default_region`",
                    text().as_ref(),
                ));
            }
            // After the `e164` transform the number was already parsed and checked.
            if !f.transforms.contains(&Transform::E164)
                && let Err(m) = to_e164(s, None)
            {
                return Err(fail(Rule::PhoneE164, m, text().as_ref()));
            }
        }
        _ => {}
    }
    Ok(())
}

/// An exact decimal as a JSON number, when a JSON number (i64, u64 or f64) says exactly
/// the same value.
pub fn decimal_to_json(s: &str) -> Option<Value> {
    let t = s.trim();
    if let Ok(i) = t.parse::<i64>() {
        return Some(Value::from(i));
    }
    if let Ok(u) = t.parse::<u64>() {
        return Some(Value::from(u));
    }
    if !crate::job::query::is_decimal(t) {
        return None;
    }
    let (neg, body) = match t.strip_prefix('-') {
        Some(b) => (true, b),
        None => (false, t.strip_prefix('+').unwrap_or(t)),
    };
    let (int, frac) = body.split_once('.').unwrap_or((body, ""));
    let frac = frac.trim_end_matches('0');
    let int = int.trim_start_matches('0');
    if frac.is_empty() {
        // `25.00`: an integer, if it fits.
        let int = if int.is_empty() { "0" } else { int };
        return if neg {
            format!("-{int}").parse::<i64>().ok().map(Value::from)
        } else {
            int.parse::<u64>().ok().map(Value::from)
        };
    }
    // Up to 15 significant digits always survive a double (DBL_DIG), and `m / 10^k` with both
    // exact is the correctly rounded double, the same `parse` gives: no need to print it back.
    let significant = if int.is_empty() {
        frac.trim_start_matches('0').len()
    } else {
        int.len() + frac.len()
    };
    if significant <= 15 && frac.len() <= 22 {
        let m = int
            .bytes()
            .chain(frac.bytes())
            .fold(0u64, |m, d| m * 10 + u64::from(d - b'0'));
        let x = m as f64 / 10f64.powi(frac.len() as i32);
        return serde_json::Number::from_f64(if neg { -x } else { x }).map(Value::Number);
    }
    let x: f64 = t.parse().ok()?;
    if !x.is_finite() {
        return None;
    }
    // Does the shortest form of the double give back the same digits?
    let back = format!("{}", x.abs());
    let (bi, bf) = back.split_once('.').unwrap_or((&back, ""));
    let same = bi.trim_start_matches('0') == int && bf.trim_end_matches('0') == frac;
    if !same {
        return None;
    }
    serde_json::Number::from_f64(x).map(Value::Number)
}

fn cell_to_json(v: &Cell) -> Result<Value, BoxedFailure> {
    Ok(match v {
        Cell::Null => Value::Null,
        Cell::Bool(b) => Value::Bool(*b),
        Cell::Int(i) => Value::from(*i),
        Cell::Float(x) => match serde_json::Number::from_f64(*x) {
            Some(n) => Value::Number(n),
            None => {
                return Err(fail(
                    Rule::NumericPrecision,
                    "NaN and infinity are not numbers Klaviyo accepts",
                    Some(v),
                ));
            }
        },
        Cell::Numeric(s) => match decimal_to_json(s) {
            Some(n) => n,
            None => {
                return Err(fail(
                    Rule::NumericPrecision,
                    "has more digits than Klaviyo keeps (a double holds ~15 significant digits), or is NaN/infinity; round it in SQL or map it with `type: string`",
                    Some(v),
                ));
            }
        },
        Cell::Text(s) => Value::String(s.clone()),
        Cell::Date(d) => Value::String(d.format("%Y-%m-%d").to_string()),
        Cell::Timestamp(t) => Value::String(format_datetime(&t.and_utc())),
        Cell::Timestamptz(t) => Value::String(format_datetime(t)),
        Cell::Uuid(u) => Value::String(u.to_string()),
        Cell::Json(j) => j.clone(),
        Cell::Array(items) => {
            Value::Array(items.iter().map(cell_to_json).collect::<Result<_, _>>()?)
        }
        Cell::Unreadable(why) => {
            return Err(fail(Rule::TypeCast, format!("cannot be read: {why}"), None));
        }
    })
}

/// JSON for previews: like the payload, but numbers that would be rejected show as text.
pub fn cell_to_json_lossy(v: &Cell) -> Value {
    match v {
        Cell::Array(items) => Value::Array(items.iter().map(cell_to_json_lossy).collect()),
        other => cell_to_json(other)
            .unwrap_or_else(|_| Value::String(other.to_text().unwrap_or_default())),
    }
}

fn cell_to_template(v: &Cell) -> JValue {
    match v {
        Cell::Null => JValue::from(()),
        Cell::Bool(b) => JValue::from(*b),
        Cell::Int(i) => JValue::from(*i),
        Cell::Float(x) => JValue::from(*x),
        Cell::Numeric(s) => match s.parse::<i64>() {
            Ok(i) => JValue::from(i),
            Err(_) => s
                .parse::<f64>()
                .map(JValue::from)
                .unwrap_or_else(|_| JValue::from(s.as_str())),
        },
        Cell::Json(j) => JValue::from(Serde(j)),
        Cell::Array(items) => JValue::from(items.iter().map(cell_to_template).collect::<Vec<_>>()),
        other => JValue::from(other.to_text().unwrap_or_default()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::job::profiles::Origin;
    use crate::job::spec::NullPolicy;

    #[test]
    fn decimals_with_zero_fractions_are_integers() {
        assert_eq!(decimal_to_json("37.00"), Some(Value::from(37)));
        assert_eq!(decimal_to_json("-5.0"), Some(Value::from(-5)));
        assert_eq!(decimal_to_json("0.00"), Some(Value::from(0)));
    }

    #[test]
    fn decimals_keep_their_digits_or_are_refused() {
        assert_eq!(decimal_to_json("412.50"), Some(serde_json::json!(412.5)));
        assert_eq!(decimal_to_json("-0.0001"), Some(serde_json::json!(-0.0001)));
        assert_eq!(decimal_to_json("12"), Some(serde_json::json!(12)));
        assert_eq!(
            decimal_to_json("18446744073709551615"),
            Some(serde_json::json!(u64::MAX))
        );
        assert_eq!(decimal_to_json("999999999999999.99"), None);
        assert_eq!(decimal_to_json("12345678901234567890.1"), None);
        assert_eq!(decimal_to_json("123456789012345678901234"), None);
        assert_eq!(decimal_to_json("NaN"), None);
        assert_eq!(decimal_to_json("0.1"), Some(serde_json::json!(0.1)));
        assert_eq!(decimal_to_json("25.00"), Some(serde_json::json!(25)));
        assert_eq!(decimal_to_json("-0.00"), Some(serde_json::json!(0)));
        assert_eq!(decimal_to_json("-7.0"), Some(serde_json::json!(-7)));
    }

    /// Decimals of up to 15 significant digits take a shortcut; it must give exactly the
    /// double that parsing gives, for every length, scale and sign.
    #[test]
    fn short_decimals_become_the_double_parsing_gives() {
        let mut next = crate::rows::testing::xorshift(0x9E37_79B9_7F4A_7C15u64);
        for _ in 0..200_000 {
            let digits = 1 + next() % 15;
            let m = next() % 10u64.pow(digits as u32);
            let scale = next() % 20;
            let text = format!("{m:0width$}", width = scale as usize + 1);
            let (int, frac) = text.split_at(text.len() - scale as usize);
            let sign = if next() % 2 == 0 { "-" } else { "" };
            let s = if frac.is_empty() {
                format!("{sign}{int}.5")
            } else {
                format!("{sign}{int}.{frac}7")
            };
            let expected = s.parse::<f64>().unwrap();
            let significant = s.trim_start_matches('-').replace('.', "");
            let significant = significant.trim_start_matches('0').trim_end_matches('0');
            match decimal_to_json(&s) {
                Some(Value::Number(n)) => assert_eq!(n.as_f64(), Some(expected), "{s}"),
                None => assert!(significant.len() > 15, "{s} was refused"),
                other => panic!("{s} gave {other:?}"),
            }
        }
    }

    /// Timestamps written straight into the payload are the JSON `finish` makes of them, for
    /// every precision, and years outside 0–9999.
    #[test]
    fn timestamps_are_written_as_finish_writes_them() {
        let mut next = crate::rows::testing::xorshift(0x2F0F_6A1B_9C3D_5E7Fu64);
        let field = MappedField {
            key: "properties.at".into(),
            path: FieldPath::Property(vec!["at".into()]),
            origin: Origin::Column("at".into()),
            transforms: Vec::new(),
            value_type: None,
            default: None,
            region: None,
            on_null: NullPolicy::Keep,
        };
        for i in 0..50_000u64 {
            let Some(t) = crate::rows::testing::datetime(&mut next, i) else {
                continue;
            };
            for cell in [Cell::Timestamptz(t), Cell::Timestamp(t.naive_utc())] {
                let Ok(json) = finish(cell, &field) else {
                    panic!("{t} was refused");
                };
                let general = serde_json::to_string(&json).unwrap();
                let mut direct = Vec::new();
                write_datetime_json(&mut direct, &t);
                assert_eq!(String::from_utf8(direct).unwrap(), general);
            }
        }
    }
}
