//! Why a row will not be sent: the `Rule` it broke, the `Reject` that says so, and the
//! masking of personal values in it.
//!
//! In: a field's failure (`FieldFailure`: rule, message, offending value) and the row's
//! key. Out: a `Reject` with the key and value masked (`a***@example.com`,
//! `+1******0006`, `A***`). Pure: no I/O.

use std::fmt;
use std::hash::Hash;

use serde::Serialize;

use super::email::valid_email;
use crate::rows::cell::Cell;

/// Why a row was rejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Rule {
    /// The key field is NULL or empty.
    KeyMissing,
    /// An earlier row had the same key.
    DuplicateKey,
    /// Not a valid email address.
    EmailSyntax,
    /// Longer than Klaviyo's 100 characters.
    EmailTooLong,
    /// Not a valid phone number in E.164 form.
    PhoneE164,
    /// The value cannot be converted to the field's `type`.
    TypeCast,
    /// A transform cannot apply to the value.
    Transform,
    /// A field template failed.
    Template,
    /// A number with more digits than Klaviyo keeps, or NaN/infinity.
    NumericPrecision,
    /// A property name Klaviyo would refuse (inside a JSON value).
    PropertyName,
    /// A value of the wrong shape for a standard attribute (e.g. a list as `first_name`).
    AttributeType,
    /// The profile is larger than 100 KB.
    PayloadTooLarge,
}

impl Rule {
    pub fn as_str(self) -> &'static str {
        match self {
            Rule::KeyMissing => "key_missing",
            Rule::DuplicateKey => "duplicate_key",
            Rule::EmailSyntax => "email_syntax",
            Rule::EmailTooLong => "email_too_long",
            Rule::PhoneE164 => "phone_e164",
            Rule::TypeCast => "type_cast",
            Rule::Transform => "transform",
            Rule::Template => "template",
            Rule::NumericPrecision => "numeric_precision",
            Rule::PropertyName => "property_name",
            Rule::AttributeType => "attribute_type",
            Rule::PayloadTooLarge => "payload_too_large",
        }
    }
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A row that will not be sent, and why. Personal values are masked.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Reject {
    pub row_number: u64,
    /// The row's key, masked (`a***@example.com`), when it has one.
    pub key: Option<String>,
    /// The field key as written in the job (`email`, `properties.ltv`), if one field is at fault.
    pub field: Option<String>,
    pub rule: Rule,
    pub message: String,
    /// The offending value, masked when personal, shortened when long.
    pub value: Option<String>,
}

impl fmt::Display for Reject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "row {}", self.row_number)?;
        if let Some(k) = &self.key {
            write!(f, " ({k})")?;
        }
        if let Some(field) = &self.field {
            write!(f, " {field}")?;
        }
        write!(f, ": {} [{}]", self.message, self.rule)?;
        if let Some(v) = &self.value {
            write!(f, " value `{v}`")?;
        }
        Ok(())
    }
}

/// Why one field of a row cannot be sent; the row's `Reject` is made from it.
pub(super) struct FieldFailure {
    pub(super) rule: Rule,
    pub(super) message: String,
    pub(super) value: Option<String>,
}

/// Boxed: a field's `Result` stays as small as its value, and failures are rare.
pub(super) type BoxedFailure = Box<FieldFailure>;

/// A field's failure; `value` is shown (masked) in the reject.
pub(super) fn fail(rule: Rule, message: impl Into<String>, value: Option<&Cell>) -> BoxedFailure {
    Box::new(FieldFailure {
        rule,
        message: message.into(),
        value: value.and_then(Cell::to_text),
    })
}

/// Masks personal values for messages: emails `a***@example.com`, phones `+1******0006`,
/// names and address lines `A***`. Other values are shown, cut at 80 characters.
pub fn mask(field: &str, value: &str) -> String {
    if field == "email" || (value.contains('@') && valid_email(value.trim())) {
        return mask_email(value);
    }
    if field == "phone_number" || field.ends_with("phone") {
        return mask_phone(value);
    }
    if matches!(
        field,
        "first_name" | "last_name" | "location.address1" | "location.address2" | "location.ip"
    ) {
        let first: String = value.chars().take(1).collect();
        return format!("{first}***");
    }
    if value.chars().count() > 80 {
        let head: String = value.chars().take(77).collect();
        return format!("{head}…");
    }
    value.to_string()
}

/// `ana@example.com` → `a***@example.com`.
pub fn mask_email(s: &str) -> String {
    match s.rsplit_once('@') {
        Some((local, domain)) => {
            let first: String = local.chars().take(1).collect();
            format!("{first}***@{domain}")
        }
        None => mask_phone(s),
    }
}

/// `+15005550006` → `+1******0006`: the first two and last four characters stay.
pub fn mask_phone(s: &str) -> String {
    let chars: Vec<char> = s.chars().collect();
    if chars.len() <= 6 {
        return "*".repeat(chars.len());
    }
    let head: String = chars[..2].iter().collect();
    let tail: String = chars[chars.len() - 4..].iter().collect();
    format!("{head}{}{tail}", "*".repeat(chars.len() - 6))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks() {
        assert_eq!(mask_email("ana@example.com"), "a***@example.com");
        assert_eq!(mask_phone("+15005550006"), "+1******0006");
        assert_eq!(mask("email", "not-an-email"), "no******mail");
        assert_eq!(mask("first_name", "Ana"), "A***");
        assert_eq!(mask("properties.plan", "gold"), "gold");
        assert_eq!(
            mask("properties.contact", "bo@example.com"),
            "b***@example.com"
        );
    }
}
