//! The value type rows are made of: a `Cell` per value, a `Column` per result column, and
//! how timestamps are written as text.
//!
//! In: values decoded by `source` (or a job file's JSON constants, `json_to_cell`). Out:
//! `Cell`s the transform reads, and RFC 3339 text for timestamps. Pure: no I/O.

use chrono::{DateTime, NaiveDate, NaiveDateTime, Utc};
use serde_json::Value;

/// One value of a result row.
#[derive(Debug, Clone, PartialEq)]
pub enum Cell {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    /// Exact decimal digits as PostgreSQL has them (`412.50`), or `NaN`/`Infinity`/`-Infinity`.
    Numeric(String),
    Text(String),
    /// `None` for `infinity`/`-infinity` (kept as text in `Text`).
    Date(NaiveDate),
    /// A `timestamp without time zone`, taken to be UTC.
    Timestamp(NaiveDateTime),
    Timestamptz(DateTime<Utc>),
    Uuid(uuid::Uuid),
    Json(serde_json::Value),
    Array(Vec<Cell>),
    /// A value PostgreSQL sent that kdit cannot represent (JSON nested deeper than the
    /// decoder allows): the row is rejected, the query goes on.
    Unreadable(String),
}

impl Cell {
    pub fn is_null(&self) -> bool {
        matches!(self, Cell::Null)
    }

    /// The value as text, as `psql` would show it (without quoting).
    pub fn to_text(&self) -> Option<String> {
        Some(match self {
            Cell::Null => return None,
            Cell::Bool(b) => b.to_string(),
            Cell::Int(i) => i.to_string(),
            Cell::Float(f) => f.to_string(),
            Cell::Numeric(s) | Cell::Text(s) => s.clone(),
            Cell::Date(d) => d.format("%Y-%m-%d").to_string(),
            Cell::Timestamp(t) => format_datetime(&t.and_utc()),
            Cell::Timestamptz(t) => format_datetime(t),
            Cell::Uuid(u) => u.to_string(),
            Cell::Json(j) => j.to_string(),
            Cell::Unreadable(why) => format!("<{why}>"),
            Cell::Array(items) => {
                let parts: Vec<String> = items
                    .iter()
                    .map(|c| c.to_text().unwrap_or_else(|| "NULL".into()))
                    .collect();
                format!("{{{}}}", parts.join(","))
            }
        })
    }
}

/// RFC 3339 in UTC with `Z`, seconds precision unless there are fractions.
pub fn format_datetime(t: &DateTime<Utc>) -> String {
    let mut out = Vec::with_capacity(30);
    write_datetime(&mut out, t);
    // ASCII digits and separators, or chrono's text: always UTF-8.
    String::from_utf8(out).unwrap_or_default()
}

/// `format_datetime`, written at the end of `out`.
pub fn write_datetime(out: &mut Vec<u8>, t: &DateTime<Utc>) {
    use chrono::{Datelike as _, Timelike as _};
    let nanos = t.timestamp_subsec_nanos();
    // Years 0–9999 without a leap second, by hand: this runs for every timestamp of every
    // row. The same text as chrono's `to_rfc3339_opts(AutoSi, true)` (a test compares them).
    if !(0..=9999).contains(&t.year()) || nanos >= 1_000_000_000 {
        out.extend_from_slice(
            t.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true)
                .as_bytes(),
        );
        return;
    }
    push_digits(out, t.year() as u32, 4);
    for (sep, n) in [
        (b'-', t.month()),
        (b'-', t.day()),
        (b'T', t.hour()),
        (b':', t.minute()),
        (b':', t.second()),
    ] {
        out.push(sep);
        push_digits(out, n, 2);
    }
    let (frac, width) = match nanos {
        0 => (0, 0),
        n if n % 1_000_000 == 0 => (n / 1_000_000, 3),
        n if n % 1_000 == 0 => (n / 1_000, 6),
        n => (n, 9),
    };
    if width > 0 {
        out.push(b'.');
        push_digits(out, frac, width);
    }
    out.push(b'Z');
}

/// `n` in decimal, zero-padded to `width` digits (`n` has at most `width`).
fn push_digits(out: &mut Vec<u8>, n: u32, width: u32) {
    for p in (0..width).rev() {
        out.push(b'0' + (n / 10u32.pow(p) % 10) as u8);
    }
}

/// A result column.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Column {
    pub name: String,
    /// PostgreSQL's name for the type (`text`, `numeric`, `_int4`, an enum's name, …).
    pub type_name: String,
    /// Whether kdit can read values of this type.
    pub supported: bool,
}

/// A JSON value (a job file's `value:` or `default:`, or an element of a JSON list) as a cell:
/// objects stay JSON.
pub(crate) fn json_to_cell(v: &Value) -> Cell {
    match v {
        Value::Null => Cell::Null,
        Value::Bool(b) => Cell::Bool(*b),
        Value::Number(n) => match n.as_i64() {
            Some(i) => Cell::Int(i),
            None => Cell::Float(n.as_f64().unwrap_or(f64::NAN)),
        },
        Value::String(s) => Cell::Text(s.clone()),
        Value::Array(items) => Cell::Array(items.iter().map(json_to_cell).collect()),
        Value::Object(_) => Cell::Json(v.clone()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn datetimes_print_as_chrono_prints_them() {
        let mut next = crate::rows::testing::xorshift(0x853C_49E6_748F_EA9Bu64);
        for i in 0..100_000 {
            let Some(t) = crate::rows::testing::datetime(&mut next, i) else {
                continue;
            };
            assert_eq!(
                format_datetime(&t),
                t.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true),
                "{t:?}"
            );
        }
    }
}
