//! Profile writes as the API receives them: the JSON:API `attributes` (and `meta`) of a
//! profile body checked against Klaviyo's rules and turned into a `ProfileInput`.
//!
//! In: a body's attributes object and meta, and the JSON pointer to report errors at. Out: a
//! validated `ProfileInput` (each identifier absent, cleared or set; other attributes to merge;
//! `patch_properties` operations), or the `ApiError` Klaviyo would answer. Pure.

use serde_json::{Map, Value};

use crate::sandbox::http::ApiError;

/// Writable string attributes besides identifiers.
pub const SCALARS: &[&str] = &[
    "first_name",
    "last_name",
    "organization",
    "locale",
    "title",
    "image",
];
pub const LOCATION: &[&str] = &[
    "address1",
    "address2",
    "city",
    "country",
    "latitude",
    "longitude",
    "region",
    "zip",
    "timezone",
    "ip",
];

/// A value in a write: left alone, cleared, or set.
#[derive(Debug, Clone, Default, PartialEq)]
pub enum ProfileField {
    #[default]
    Absent,
    Null,
    Set(String),
}

/// A validated profile write (create, update, upsert, or one bulk row).
#[derive(Debug, Clone, Default)]
pub struct ProfileInput {
    pub email: ProfileField,
    pub phone_number: ProfileField,
    pub external_id: ProfileField,
    /// Other attributes to merge; `Value::Null` clears (never present for bulk rows).
    pub other: Map<String, Value>,
    pub append: Map<String, Value>,
    pub unappend: Map<String, Value>,
    pub unset: Vec<String>,
}

impl ProfileInput {
    pub fn has_identifier(&self) -> bool {
        [&self.email, &self.phone_number, &self.external_id]
            .iter()
            .any(|f| matches!(f, ProfileField::Set(_)))
    }
}

/// Parses `attributes` (and `meta`) of a profile body. `nulls_clear` is false for bulk import,
/// where Klaviyo ignores nulls instead of clearing fields. `prefix` is the JSON pointer of the
/// attributes object, for error sources.
pub fn parse_profile(
    attrs: &Map<String, Value>,
    meta: Option<&Value>,
    nulls_clear: bool,
    prefix: &str,
) -> Result<ProfileInput, ApiError> {
    let mut input = ProfileInput::default();
    for (k, v) in attrs {
        let ptr = || format!("{prefix}/{k}");
        if v.is_null() && !nulls_clear {
            continue;
        }
        match k.as_str() {
            "email" | "phone_number" | "external_id" => {
                let f = match v {
                    Value::Null => ProfileField::Null,
                    Value::String(s) => {
                        let s = s.trim().to_string();
                        validate_identifier(k, &s).map_err(|e| e.pointer(ptr()))?;
                        ProfileField::Set(s)
                    }
                    _ => {
                        return Err(
                            ApiError::invalid(format!("'{k}' must be a string.")).pointer(ptr())
                        );
                    }
                };
                match k.as_str() {
                    "email" => input.email = f,
                    "phone_number" => input.phone_number = f,
                    _ => input.external_id = f,
                }
            }
            "_kx" | "anonymous_id" => {}
            "first_name" | "last_name" | "organization" | "locale" | "title" | "image" => {
                if !(v.is_string() || v.is_null()) {
                    return Err(
                        ApiError::invalid(format!("'{k}' must be a string.")).pointer(ptr())
                    );
                }
                input.other.insert(k.clone(), v.clone());
            }
            "location" => match v {
                Value::Null => {
                    input.other.insert(k.clone(), Value::Null);
                }
                Value::Object(loc) => {
                    let mut clean = Map::new();
                    for (lk, lv) in loc {
                        if !LOCATION.contains(&lk.as_str()) {
                            return Err(ApiError::invalid(format!(
                                "'{lk}' is not a valid location field."
                            ))
                            .pointer(format!("{}/{lk}", ptr())));
                        }
                        let ok = match lk.as_str() {
                            "latitude" | "longitude" => {
                                lv.is_string() || lv.is_number() || lv.is_null()
                            }
                            _ => lv.is_string() || lv.is_null(),
                        };
                        if !ok {
                            return Err(ApiError::invalid(format!(
                                "Invalid value for location '{lk}'."
                            ))
                            .pointer(format!("{}/{lk}", ptr())));
                        }
                        if lv.is_null() && !nulls_clear {
                            continue;
                        }
                        clean.insert(lk.clone(), lv.clone());
                    }
                    input.other.insert(k.clone(), Value::Object(clean));
                }
                _ => {
                    return Err(ApiError::invalid("'location' must be an object.").pointer(ptr()));
                }
            },
            "properties" => match v {
                Value::Null => {
                    input.other.insert(k.clone(), Value::Null);
                }
                Value::Object(props) => {
                    let props = if nulls_clear {
                        props.clone()
                    } else {
                        props
                            .iter()
                            .filter(|(_, v)| !v.is_null())
                            .map(|(k, v)| (k.clone(), v.clone()))
                            .collect()
                    };
                    input.other.insert(k.clone(), Value::Object(props));
                }
                _ => {
                    return Err(ApiError::invalid("'properties' must be an object.").pointer(ptr()));
                }
            },
            other => {
                return Err(ApiError::invalid(format!(
                    "'{other}' is not a valid field for the resource 'profile'."
                ))
                .pointer(ptr()));
            }
        }
    }
    if let Some(meta) = meta.filter(|m| !m.is_null()) {
        let meta_ptr = prefix.trim_end_matches("/attributes").to_string() + "/meta";
        let Some(meta) = meta.as_object() else {
            return Err(ApiError::invalid("'meta' must be an object.").pointer(meta_ptr));
        };
        if let Some(pp) = meta.get("patch_properties").filter(|v| !v.is_null()) {
            let ptr = format!("{meta_ptr}/patch_properties");
            let pp = pp.as_object().ok_or_else(|| {
                ApiError::invalid("'patch_properties' must be an object.").pointer(&ptr)
            })?;
            for (k, v) in pp {
                match (k.as_str(), v) {
                    (_, Value::Null) => {}
                    ("append", Value::Object(m)) => input.append = m.clone(),
                    ("unappend", Value::Object(m)) => input.unappend = m.clone(),
                    ("unset", Value::String(s)) => input.unset = vec![s.clone()],
                    ("unset", Value::Array(a)) => {
                        for item in a {
                            let s = item.as_str().ok_or_else(|| {
                                ApiError::invalid("'unset' must name properties as strings.")
                                    .pointer(format!("{ptr}/unset"))
                            })?;
                            input.unset.push(s.to_string());
                        }
                    }
                    _ => {
                        return Err(ApiError::invalid(format!(
                            "Invalid patch_properties operation '{k}'."
                        ))
                        .pointer(format!("{ptr}/{k}")));
                    }
                }
            }
        }
    }
    Ok(input)
}

/// Klaviyo's identifier rules: email ≤ 100 characters with valid syntax, phone in E.164.
pub fn validate_identifier(kind: &str, value: &str) -> Result<(), ApiError> {
    match kind {
        "email" => {
            if value.chars().count() > 100 {
                return Err(ApiError::invalid(
                    "Email address must be at most 100 characters.",
                ));
            }
            if !email_address::EmailAddress::is_valid(value) || !value.contains('.') {
                return Err(ApiError::invalid(format!(
                    "Invalid email address: '{value}'."
                )));
            }
        }
        "phone_number" => {
            let digits = value.strip_prefix('+').unwrap_or("");
            let ok = (8..=15).contains(&digits.len())
                && digits.bytes().all(|b| b.is_ascii_digit())
                && !digits.starts_with('0');
            if !ok {
                return Err(ApiError::invalid(format!(
                    "Invalid phone number format (Example of a valid phone number format: +12345678901): '{value}'."
                )));
            }
        }
        _ => {
            if value.is_empty() {
                return Err(ApiError::invalid("external_id must not be empty."));
            }
        }
    }
    Ok(())
}

pub fn missing_identifier() -> ApiError {
    ApiError::invalid("At least one identifier (email, phone_number or external_id) is required.")
        .pointer("/data/attributes")
}
