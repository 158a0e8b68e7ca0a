//! Klaviyo profile attributes: which field keys a job may map, and where each lands in a
//! profile payload.
//!
//! In: a field key as written in a job file (`email`, `location.city`, `properties.a.b`).
//! Out: a `FieldPath`, or an error with a hint. Pure; shared by `compile` (validation) and
//! `transform` (building payloads) so both agree on what a key means.

use std::fmt;

/// The profile property carrying a row's consent values through the diff and the state.
/// Never sent to Klaviyo; a job may not map it itself.
pub const CONSENT_CARRIER: &str = "kdit_consent";

/// Klaviyo's standard (top-level) profile attributes a job may set.
pub const STANDARD: &[&str] = &[
    "email",
    "phone_number",
    "external_id",
    "first_name",
    "last_name",
    "organization",
    "title",
    "image",
    "locale",
];

/// The attributes of a profile's `location`.
pub const LOCATION: &[&str] = &[
    "address1",
    "address2",
    "city",
    "country",
    "region",
    "zip",
    "timezone",
    "ip",
    "latitude",
    "longitude",
];

/// Longest custom property name kdit accepts (Klaviyo documents no limit for profiles; this
/// keeps names usable in segment conditions and the UI).
pub const MAX_PROPERTY_NAME: usize = 100;

/// Where a mapped field goes in the profile's `attributes`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum FieldPath {
    /// `attributes.<name>`.
    Standard(&'static str),
    /// `attributes.location.<name>`.
    Location(&'static str),
    /// `attributes.properties.<a>.<b>…`: custom properties, nested by dots.
    Property(Vec<String>),
}

impl FieldPath {
    /// Parses a job file's field key.
    pub fn parse(key: &str) -> Result<FieldPath, FieldKeyError> {
        if let Some(name) = STANDARD.iter().find(|s| **s == key) {
            return Ok(FieldPath::Standard(name));
        }
        if let Some(rest) = key.strip_prefix("location.") {
            return match LOCATION.iter().find(|s| **s == rest) {
                Some(name) => Ok(FieldPath::Location(name)),
                None => Err(FieldKeyError {
                    message: format!("`{rest}` is not a Klaviyo location attribute"),
                    hint: suggest(rest, LOCATION)
                        .map(|s| format!("did you mean `location.{s}`?"))
                        .unwrap_or_else(|| {
                            format!("location attributes are: {}", LOCATION.join(", "))
                        }),
                }),
            };
        }
        if key == "properties" || key.starts_with("properties.") {
            let rest = key.strip_prefix("properties").unwrap_or_default();
            let rest = rest.strip_prefix('.').unwrap_or(rest);
            return parse_property(rest).map(FieldPath::Property);
        }
        let mut candidates: Vec<&str> = STANDARD.to_vec();
        candidates.extend(["location.city", "properties.<name>"]);
        Err(FieldKeyError {
            message: format!("`{key}` is not a Klaviyo profile attribute"),
            hint: match suggest(key, STANDARD) {
                Some(s) => format!("did you mean `{s}`? Custom fields go under `properties.{key}`"),
                None => format!(
                    "standard attributes are {}, `location.<attr>`; custom fields go under `properties.{key}`",
                    STANDARD.join(", ")
                ),
            },
        })
    }

    /// Is this one of the identifiers Klaviyo matches profiles by?
    pub fn is_identifier(&self) -> bool {
        matches!(
            self,
            FieldPath::Standard("email" | "phone_number" | "external_id")
        )
    }
}

impl fmt::Display for FieldPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FieldPath::Standard(s) => f.write_str(s),
            FieldPath::Location(s) => write!(f, "location.{s}"),
            FieldPath::Property(p) => write!(f, "properties.{}", p.join(".")),
        }
    }
}

fn parse_property(rest: &str) -> Result<Vec<String>, FieldKeyError> {
    let malformed = |why: String| FieldKeyError {
        message: format!("malformed custom property key `properties.{rest}`: {why}"),
        hint: "write `properties.<name>`, e.g. `properties.lifetime_value`; dots nest objects"
            .to_string(),
    };
    if rest.is_empty() {
        return Err(malformed("the property name is missing".into()));
    }
    let mut parts = Vec::new();
    for part in rest.split('.') {
        if part.is_empty() {
            return Err(malformed("it has an empty name between dots".into()));
        }
        if part.trim() != part {
            return Err(malformed(format!(
                "`{part}` starts or ends with whitespace"
            )));
        }
        if part.starts_with('$') {
            return Err(malformed(format!(
                "`{part}` starts with `$`, which Klaviyo reserves for its own properties"
            )));
        }
        if part.chars().any(|c| c.is_control()) {
            return Err(malformed(format!("`{part}` contains control characters")));
        }
        if part.chars().count() > MAX_PROPERTY_NAME {
            return Err(malformed(format!(
                "a name is longer than {MAX_PROPERTY_NAME} characters"
            )));
        }
        parts.push(part.to_string());
    }
    Ok(parts)
}

/// A field key a job may not use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldKeyError {
    pub message: String,
    pub hint: String,
}

/// The closest candidate to `word`, if one is close enough to be a likely typo.
pub fn suggest<'a>(word: &str, candidates: &[&'a str]) -> Option<&'a str> {
    candidates
        .iter()
        .map(|c| (strsim::jaro_winkler(word, c), *c))
        .filter(|(score, _)| *score >= 0.8)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, c)| c)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_parse_to_paths() {
        assert_eq!(FieldPath::parse("email"), Ok(FieldPath::Standard("email")));
        assert_eq!(
            FieldPath::parse("location.city"),
            Ok(FieldPath::Location("city"))
        );
        assert_eq!(
            FieldPath::parse("properties.a.b"),
            Ok(FieldPath::Property(vec!["a".into(), "b".into()]))
        );
    }

    #[test]
    fn bad_keys_get_hints() {
        let e = FieldPath::parse("frist_name").unwrap_err();
        assert!(e.hint.contains("did you mean `first_name`"), "{e:?}");
        let e = FieldPath::parse("location.cty").unwrap_err();
        assert!(e.hint.contains("location.city"), "{e:?}");
        assert!(FieldPath::parse("properties.").is_err());
        assert!(FieldPath::parse("properties.a..b").is_err());
        assert!(FieldPath::parse("properties.$email").is_err());
    }
}
