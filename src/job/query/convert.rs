//! Parameter values: the SQL types a `-- @param` line declares, and a job's values converted
//! to them (or, for inline SQL, the type inferred from the value).
//!
//! In: a job's parameter value (`ParamValue`) and a type. Out: a `BindValue` ready to bind, or
//! why the value does not fit; the type inline SQL infers; `is_decimal`, which the transform
//! also uses. Pure.

use std::fmt;

use chrono::{DateTime, NaiveDate, Utc};

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

pub(super) fn type_hint(ty: ParamType) -> &'static str {
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

#[cfg(test)]
mod tests {
    use super::*;

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
