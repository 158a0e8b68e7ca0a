//! Email addresses and phone numbers as Klaviyo accepts them.
//!
//! In: text. Out: whether it is an email address Klaviyo accepts (a quick one-pass check for
//! the common shape, the full RFC 5322 check otherwise), the address normalised (trimmed,
//! domain lowercased), or a phone number in E.164 form. Pure: no I/O.

/// Longest email Klaviyo accepts.
pub const MAX_EMAIL: usize = 100;

/// Trims, lowercases the domain, checks the syntax.
pub fn normalise_email(s: &str) -> Option<String> {
    let s = s.trim();
    let (local, domain) = s.rsplit_once('@')?;
    let e = format!("{local}@{}", domain.to_lowercase());
    valid_email(&e).then_some(e)
}

/// `normalise_email` taking the text: an address already trimmed with a lowercase domain is
/// checked and kept as it is, with no copy. `Err` gives the text back as it came.
pub(super) fn normalise_email_owned(s: String) -> Result<String, String> {
    let plain = s.trim().len() == s.len()
        && s.rsplit_once('@')
            .is_some_and(|(_, d)| !d.bytes().any(|b| b.is_ascii_uppercase()) && d.is_ascii());
    if plain {
        return if valid_email(&s) { Ok(s) } else { Err(s) };
    }
    normalise_email(&s).ok_or(s)
}

/// The common shape of an address, checked in one pass: ASCII dot-atoms before the `@`,
/// letter/digit/hyphen labels after it, within RFC 5321's lengths. Whatever it accepts the
/// full check (`valid_email`) accepts too; it only spares that check's cost.
fn plain_email(s: &str) -> bool {
    let Some((local, domain)) = s.rsplit_once('@') else {
        return false;
    };
    let atext = |b: u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-/=?^_`{|}~".contains(&b);
    let label = |l: &[u8]| {
        !l.is_empty()
            && l.len() <= 63
            && l[0].is_ascii_alphanumeric()
            && l[l.len() - 1].is_ascii_alphanumeric()
            && l.iter().all(|b| b.is_ascii_alphanumeric() || *b == b'-')
    };
    (1..=64).contains(&local.len())
        && local
            .as_bytes()
            .split(|b| *b == b'.')
            .all(|a| !a.is_empty() && a.iter().all(|b| atext(*b)))
        && domain.len() <= 253
        && domain.contains('.')
        && domain.as_bytes().split(|b| *b == b'.').all(label)
}

/// Email syntax as Klaviyo accepts it: RFC 5322 address, and a domain with a dot.
pub fn valid_email(s: &str) -> bool {
    plain_email(s) || full_email_check(s)
}

fn full_email_check(s: &str) -> bool {
    if !email_address::EmailAddress::is_valid(s) || s.chars().any(char::is_whitespace) {
        return false;
    }
    match s.rsplit_once('@') {
        Some((local, domain)) => {
            !local.is_empty()
                && domain.contains('.')
                && !domain.starts_with('.')
                && !domain.ends_with('.')
                && !domain.starts_with('[')
        }
        None => false,
    }
}

/// A phone number in E.164 form (`+15005550006`), read in `region` when it has no `+`.
pub fn to_e164(s: &str, region: Option<phonenumber::country::Id>) -> Result<String, String> {
    let trimmed = s.trim();
    if region.is_none() && !trimmed.starts_with('+') {
        return Err(
            "not in international form (`+…`) and no region to read it in; set `default_region`"
                .into(),
        );
    }
    let n = phonenumber::parse(region, trimmed).map_err(|e| format!("not a phone number ({e})"))?;
    if !phonenumber::is_valid(&n) {
        return Err("not a valid phone number for its country".into());
    }
    Ok(n.format().mode(phonenumber::Mode::E164).to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The quick email check never accepts what the full one refuses, and accepts the usual
    /// addresses.
    #[test]
    fn the_quick_email_check_accepts_only_what_the_full_one_does() {
        let mut next = crate::rows::testing::xorshift(0x2545_F491_4F6C_DD1Du64);
        let pieces = [
            "ab", "Z9", ".", "-", "@", "+", "x.com", "é", " ", "..", "\"", "a-", "-b", "[1]", "co",
            "_", "!#", "<", "\\", "東", "@a.b", "\t", "1", "q.", ".r", "(c)", "%", "~", "`",
        ];
        let mut accepted = 0;
        for _ in 0..300_000 {
            let n = 1 + next() % 8;
            let s: String = (0..n)
                .map(|_| pieces[(next() % pieces.len() as u64) as usize])
                .collect();
            if plain_email(&s) {
                accepted += 1;
                assert!(full_email_check(&s), "{s:?} passed the quick check only");
            }
        }
        assert!(
            accepted > 100,
            "the random addresses never took the quick path"
        );
        for ok in [
            "ana@example.com",
            "a.b+c@mail.example.co.uk",
            "x_y-z@a-b.io",
        ] {
            assert!(plain_email(ok) && full_email_check(ok), "{ok}");
        }
        let long_local = format!("{}@example.com", "a".repeat(65));
        for bad in [
            "a..b@x.com",
            ".a@x.com",
            "a@x",
            "a@-x.com",
            "a@x-.com",
            "a@x..com",
            &long_local,
        ] {
            assert!(!plain_email(bad), "{bad}");
        }
        assert!(!valid_email(&long_local));
    }

    #[test]
    fn emails_and_phones() {
        assert!(valid_email("ana@example.com"));
        assert!(!valid_email("ana@localhost"));
        assert!(!valid_email("ana example.com"));
        assert!(!valid_email("@example.com"));
        assert_eq!(
            normalise_email("  Ana@Example.COM "),
            Some("Ana@example.com".into())
        );
        let us = Some(phonenumber::country::Id::US);
        assert_eq!(to_e164("(201) 555-0123", us), Ok("+12015550123".into()));
        assert!(to_e164("201 555 0123", None).is_err());
        assert!(to_e164("12", us).is_err());
        assert_eq!(to_e164("+44 20 7946 0958", us), Ok("+442079460958".into()));
    }
}
