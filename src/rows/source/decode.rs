//! PostgreSQL's binary format → `Cell`s: which column types kdit reads, a decoder per
//! column chosen once (`RowDecoder`), the binary decoders themselves, and a row's
//! fingerprint over its values as sent.
//!
//! In: `tokio_postgres::Row`s (values in binary format). Out: `Vec<Cell>` per row, or an
//! `Undecodable` naming the column; `row_fingerprint`. Pure: no I/O (the rows are already
//! read); runs on the transform threads.

use chrono::{DateTime, NaiveDate};
use tokio_postgres::Row;
use tokio_postgres::types::{FromSql, Kind, Type};

use super::error::error_chain;
use crate::rows::cell::{Cell, Column};

/// Whether kdit can read values of a column of type `ty`.
pub(super) fn supported(ty: &Type) -> bool {
    match ty.kind() {
        Kind::Enum(_) => true,
        Kind::Domain(inner) => supported(inner),
        Kind::Array(inner) => supported(inner),
        _ => {
            matches!(
                *ty,
                Type::BOOL
                    | Type::INT2
                    | Type::INT4
                    | Type::INT8
                    | Type::OID
                    | Type::FLOAT4
                    | Type::FLOAT8
                    | Type::NUMERIC
                    | Type::TEXT
                    | Type::VARCHAR
                    | Type::BPCHAR
                    | Type::NAME
                    | Type::CHAR
                    | Type::UNKNOWN
                    | Type::DATE
                    | Type::TIMESTAMP
                    | Type::TIMESTAMPTZ
                    | Type::UUID
                    | Type::JSON
                    | Type::JSONB
                    | Type::VOID
            ) || ty.name() == "citext"
        }
    }
}

type BoxError = Box<dyn std::error::Error + Sync + Send>;

fn take<const N: usize>(raw: &[u8]) -> Result<[u8; N], BoxError> {
    raw.get(..N)
        .and_then(|s| s.try_into().ok())
        .ok_or_else(|| "truncated value".into())
}

const PG_EPOCH_DAYS_FROM_CE: i32 = 730_120; // 2000-01-01

/// How a column's values are read, chosen once per column from its type (matching a type
/// against every case for each value costs more than reading most values).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Decoder {
    Bool,
    Int2,
    Int4,
    Oid,
    Int8,
    Float4,
    Float8,
    Numeric,
    Char,
    Date,
    Timestamp,
    Timestamptz,
    Uuid,
    Void,
    Json,
    Jsonb,
    /// text, varchar, bpchar, name, unknown, citext, enums: UTF-8 text on the wire.
    Text,
    /// Text no one reads (`RowDecoder::reading`): checked as `Text` checks it, then NULL.
    Unread,
    /// Domains and arrays: worked out from the type for each value.
    ByType,
}

impl Decoder {
    pub fn of(ty: &Type) -> Decoder {
        match ty.kind() {
            Kind::Domain(_) | Kind::Array(_) => return Decoder::ByType,
            Kind::Enum(_) => return Decoder::Text,
            _ => {}
        }
        match *ty {
            Type::BOOL => Decoder::Bool,
            Type::INT2 => Decoder::Int2,
            Type::INT4 => Decoder::Int4,
            Type::OID => Decoder::Oid,
            Type::INT8 => Decoder::Int8,
            Type::FLOAT4 => Decoder::Float4,
            Type::FLOAT8 => Decoder::Float8,
            Type::NUMERIC => Decoder::Numeric,
            Type::CHAR => Decoder::Char,
            Type::DATE => Decoder::Date,
            Type::TIMESTAMP => Decoder::Timestamp,
            Type::TIMESTAMPTZ => Decoder::Timestamptz,
            Type::UUID => Decoder::Uuid,
            Type::VOID => Decoder::Void,
            Type::JSON => Decoder::Json,
            Type::JSONB => Decoder::Jsonb,
            _ => Decoder::Text,
        }
    }
}

fn decode(ty: &Type, raw: &[u8]) -> Result<Cell, BoxError> {
    decode_as(Decoder::of(ty), ty, raw)
}

fn decode_as(d: Decoder, ty: &Type, raw: &[u8]) -> Result<Cell, BoxError> {
    Ok(match d {
        Decoder::ByType => match ty.kind() {
            Kind::Domain(inner) => return decode(inner, raw),
            Kind::Array(inner) => return decode_array(inner, raw),
            _ => Cell::Text(std::str::from_utf8(raw)?.to_string()),
        },
        Decoder::Bool => Cell::Bool(take::<1>(raw)?[0] != 0),
        Decoder::Int2 => Cell::Int(i16::from_be_bytes(take(raw)?) as i64),
        Decoder::Int4 => Cell::Int(i32::from_be_bytes(take(raw)?) as i64),
        Decoder::Oid => Cell::Int(u32::from_be_bytes(take(raw)?) as i64),
        Decoder::Int8 => Cell::Int(i64::from_be_bytes(take(raw)?)),
        // Through the shortest decimal of the f32, so `1.1::float4` is 1.1, not 1.100000023841858.
        Decoder::Float4 => {
            let x = f32::from_be_bytes(take(raw)?);
            Cell::Float(x.to_string().parse::<f64>().unwrap_or(x as f64))
        }
        Decoder::Float8 => Cell::Float(f64::from_be_bytes(take(raw)?)),
        Decoder::Numeric => Cell::Numeric(decode_numeric(raw)?),
        Decoder::Char => Cell::Text((take::<1>(raw)?[0] as char).to_string()),
        Decoder::Date => {
            let days = i32::from_be_bytes(take(raw)?);
            match days {
                i32::MAX => Cell::Text("infinity".into()),
                i32::MIN => Cell::Text("-infinity".into()),
                d => Cell::Date(
                    NaiveDate::from_num_days_from_ce_opt(PG_EPOCH_DAYS_FROM_CE + d)
                        .ok_or("date out of range")?,
                ),
            }
        }
        Decoder::Timestamp | Decoder::Timestamptz => {
            let micros = i64::from_be_bytes(take(raw)?);
            match micros {
                i64::MAX => Cell::Text("infinity".into()),
                i64::MIN => Cell::Text("-infinity".into()),
                m => {
                    let t = DateTime::from_timestamp_micros(m + 946_684_800_000_000)
                        .ok_or("timestamp out of range")?;
                    if d == Decoder::Timestamp {
                        Cell::Timestamp(t.naive_utc())
                    } else {
                        Cell::Timestamptz(t)
                    }
                }
            }
        }
        Decoder::Uuid => Cell::Uuid(uuid::Uuid::from_slice(raw)?),
        Decoder::Void => Cell::Null,
        Decoder::Json => json_cell(raw)?,
        Decoder::Jsonb => {
            let (version, rest) = raw.split_first().ok_or("empty jsonb")?;
            if *version != 1 {
                return Err(format!("unsupported jsonb version {version}").into());
            }
            json_cell(rest)?
        }
        Decoder::Text => Cell::Text(std::str::from_utf8(raw)?.to_string()),
        Decoder::Unread => {
            std::str::from_utf8(raw)?;
            Cell::Null
        }
    })
}

/// Binary array format: ndim, has-null flag, element oid, (dim, lower bound) per dimension,
/// then length-prefixed elements. Multi-dimensional arrays are flattened.
fn decode_array(elem: &Type, raw: &[u8]) -> Result<Cell, BoxError> {
    let ndim = i32::from_be_bytes(take(raw)?);
    if ndim == 0 {
        return Ok(Cell::Array(Vec::new()));
    }
    let mut at = 12;
    let mut total: usize = 1;
    for _ in 0..ndim {
        let dim = i32::from_be_bytes(take(&raw[at.min(raw.len())..])?);
        total = total.saturating_mul(dim.max(0) as usize);
        at += 8;
    }
    let mut items = Vec::with_capacity(total.min(1 << 16));
    for _ in 0..total {
        let len = i32::from_be_bytes(take(raw.get(at..).ok_or("truncated array")?)?);
        at += 4;
        if len < 0 {
            items.push(Cell::Null);
        } else {
            let end = at + len as usize;
            let bytes = raw.get(at..end).ok_or("truncated array")?;
            items.push(decode(elem, bytes)?);
            at = end;
        }
    }
    Ok(Cell::Array(items))
}

/// Binary numeric: ndigits, weight, sign, dscale, then base-10000 digits. Decoded to the
/// exact decimal text PostgreSQL would print.
pub(crate) fn decode_numeric(raw: &[u8]) -> Result<String, BoxError> {
    let field = |off: usize| -> Result<[u8; 2], BoxError> {
        take(raw.get(off..).ok_or("truncated numeric")?)
    };
    let ndigits = i16::from_be_bytes(field(0)?).max(0) as usize;
    let weight = i16::from_be_bytes(field(2)?) as i32;
    let sign = u16::from_be_bytes(field(4)?);
    let dscale = u16::from_be_bytes(field(6)?) as usize;
    match sign {
        0xC000 => return Ok("NaN".into()),
        0xD000 => return Ok("Infinity".into()),
        0xF000 => return Ok("-Infinity".into()),
        _ => {}
    }
    let mut digits = Vec::with_capacity(ndigits);
    for i in 0..ndigits {
        let off = 8 + i * 2;
        digits.push(u16::from_be_bytes(take(
            raw.get(off..).ok_or("truncated numeric")?,
        )?));
    }
    let digit = |k: i32| -> u16 {
        if k < 0 {
            0
        } else {
            digits.get(k as usize).copied().unwrap_or(0)
        }
    };
    let mut s = String::with_capacity((weight.max(0) as usize + 1) * 4 + dscale + 2);
    if sign == 0x4000 {
        s.push('-');
    }
    // Base-10000 digits as four decimal digits each, without `fmt` (this runs per value).
    let push4 = |s: &mut String, d: u16| {
        let d = d.min(9999);
        for div in [1000, 100, 10, 1] {
            s.push(char::from(b'0' + (d / div % 10) as u8));
        }
    };
    if weight < 0 {
        s.push('0');
    } else {
        for k in 0..=weight {
            let d = digit(k);
            if k == 0 {
                // The leading group without its leading zeros.
                let mut started = false;
                for div in [1000, 100, 10, 1] {
                    let x = (d.min(9999) / div % 10) as u8;
                    if x != 0 || started || div == 1 {
                        started = true;
                        s.push(char::from(b'0' + x));
                    }
                }
            } else {
                push4(&mut s, d);
            }
        }
    }
    if dscale > 0 {
        s.push('.');
        let start = s.len();
        let mut j = 1;
        while s.len() - start < dscale {
            push4(&mut s, digit(weight + j));
            j += 1;
        }
        s.truncate(start + dscale);
    }
    Ok(s)
}

/// A json/jsonb value; one nested past serde_json's depth limit becomes `Cell::Unreadable`
/// so only its row is rejected. Other parse errors (which PostgreSQL never sends) stay errors.
fn json_cell(raw: &[u8]) -> Result<Cell, serde_json::Error> {
    match serde_json::from_slice(raw) {
        Ok(v) => Ok(Cell::Json(v)),
        Err(e) if e.to_string().contains("recursion limit exceeded") => Ok(Cell::Unreadable(
            "JSON nested deeper than 128 levels".to_string(),
        )),
        Err(e) => Err(e),
    }
}

/// A value `decode_row` could not read: the column, and why.
#[derive(Debug, Clone)]
pub struct Undecodable {
    pub column: String,
    pub detail: String,
}

/// A row's values, one per column.
pub fn decode_row(row: &Row, columns: &[Column]) -> Result<Vec<Cell>, Undecodable> {
    let mut cells = Vec::with_capacity(columns.len());
    RowDecoder::of(row).decode_into(row, columns, &mut cells)?;
    Ok(cells)
}

/// Reads rows of one query: each column's `Decoder`, chosen once.
#[derive(Debug, Clone)]
pub struct RowDecoder(Vec<Decoder>);

impl RowDecoder {
    /// The decoders for rows shaped like `row` (every row of a query has the same columns).
    pub fn of(row: &Row) -> RowDecoder {
        RowDecoder(
            row.columns()
                .iter()
                .map(|c| Decoder::of(c.type_()))
                .collect(),
        )
    }

    /// Like `of`, for readers of some columns only (`read[i]`: column `i` is read): text in
    /// the other columns is checked as it would be (a value that cannot be read still ends
    /// the query) but not copied out, and comes out NULL.
    pub fn reading(row: &Row, read: &[bool]) -> RowDecoder {
        let mut d = RowDecoder::of(row);
        for (i, d) in d.0.iter_mut().enumerate() {
            if *d == Decoder::Text && !read.get(i).copied().unwrap_or(true) {
                *d = Decoder::Unread;
            }
        }
        d
    }

    /// Replaces `cells` with the row's values, one per column. Text is written into the
    /// buffer of the text `cells` held at its place, if any, so a caller that puts buffers
    /// back (`RowBuilder::build_in`) decodes rows without allocating for them.
    pub fn decode_into(
        &self,
        row: &Row,
        columns: &[Column],
        cells: &mut Vec<Cell>,
    ) -> Result<(), Undecodable> {
        cells.truncate(self.0.len());
        let types = row.columns();
        for (i, d) in self.0.iter().enumerate() {
            let cell = match row.try_get::<_, RawValue>(i) {
                Ok(RawValue(None)) => Ok(Cell::Null),
                Ok(RawValue(Some(raw))) if *d == Decoder::Text => match std::str::from_utf8(raw) {
                    Ok(text) => {
                        if let Some(Cell::Text(buf)) = cells.get_mut(i) {
                            buf.clear();
                            buf.push_str(text);
                            continue;
                        }
                        Ok(Cell::Text(text.to_string()))
                    }
                    Err(e) => Err(e.into()),
                },
                Ok(RawValue(Some(raw))) => decode_as(*d, types[i].type_(), raw),
                Err(e) => Err(e.into()),
            };
            match cell {
                Ok(c) if i < cells.len() => cells[i] = c,
                Ok(c) => cells.push(c),
                Err(e) => {
                    cells.truncate(i);
                    return Err(Undecodable {
                        column: columns
                            .get(i)
                            .map(|c| c.name.clone())
                            .unwrap_or_else(|| format!("column {}", i + 1)),
                        detail: error_chain(&*e),
                    });
                }
            }
        }
        Ok(())
    }
}

/// A row's fingerprint: SHA-256 (first 16 bytes) over `prefix` (whatever must change the
/// fingerprint besides the values: the mapping, the columns) and the row's values exactly as
/// PostgreSQL sent them. Equal fingerprints mean equal values, so the same profile.
pub fn row_fingerprint(prefix: &sha2::Sha256, row: &Row) -> [u8; 16] {
    use sha2::Digest as _;
    let mut h = prefix.clone();
    for i in 0..row.len() {
        match row.try_get::<_, RawValue>(i) {
            Ok(RawValue(Some(raw))) => {
                h.update((raw.len() as u32).to_le_bytes());
                h.update(raw);
            }
            _ => h.update(u32::MAX.to_le_bytes()),
        }
    }
    let full = h.finalize();
    let mut out = [0u8; 16];
    out.copy_from_slice(&full[..16]);
    out
}

/// A value's bytes as sent (binary format), whatever its type; `None` for NULL.
struct RawValue<'a>(Option<&'a [u8]>);

impl<'a> FromSql<'a> for RawValue<'a> {
    fn from_sql(_: &Type, raw: &'a [u8]) -> Result<Self, BoxError> {
        Ok(RawValue(Some(raw)))
    }
    fn from_sql_null(_: &Type) -> Result<Self, BoxError> {
        Ok(RawValue(None))
    }
    fn accepts(_: &Type) -> bool {
        true
    }
}

impl<'a> FromSql<'a> for Cell {
    fn from_sql(ty: &Type, raw: &'a [u8]) -> Result<Self, BoxError> {
        decode(ty, raw)
    }
    fn from_sql_null(_: &Type) -> Result<Self, BoxError> {
        Ok(Cell::Null)
    }
    fn accepts(_: &Type) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numeric_decodes_exactly() {
        // 412.50: ndigits 2, weight 0, sign +, dscale 2, digits [412, 5000]
        let raw = [0, 2, 0, 0, 0, 0, 0, 2, 0x01, 0x9C, 0x13, 0x88];
        assert_eq!(decode_numeric(&raw).unwrap(), "412.50");
        // -0.0001: ndigits 1, weight -1, sign -, dscale 4, digits [1]
        let raw = [0, 1, 0xFF, 0xFF, 0x40, 0, 0, 4, 0, 1];
        assert_eq!(decode_numeric(&raw).unwrap(), "-0.0001");
        // 10000: ndigits 1, weight 1, digits [1]
        let raw = [0, 1, 0, 1, 0, 0, 0, 0, 0, 1];
        assert_eq!(decode_numeric(&raw).unwrap(), "10000");
        // Truncated input is an error, not a panic.
        for n in 0..raw.len() {
            assert!(decode_numeric(&raw[..n]).is_err() || n >= 8);
        }
        assert!(decode(&Type::INT4, &[0, 1]).is_err());
        assert!(decode(&Type::TEXT_ARRAY, &[0, 0, 0, 1, 0]).is_err());
    }
}
