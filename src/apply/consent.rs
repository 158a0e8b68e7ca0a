//! Consent carried out: after Klaviyo confirmed a batch's profiles, the subscription bulk
//! jobs for the consent changes their sends carry (`ConsentAction`, decided by
//! `plan::consent` while the plan was made): subscriptions, then unsubscriptions.
//!
//! In: the job's consent settings, the confirmed profiles with a consent change. Out: how
//! many were subscribed and unsubscribed, and a `Failure` for each row whose change Klaviyo
//! refused (the profile itself is in). I/O (Klaviyo).

use serde_json::value::RawValue;
use serde_json::{Value, json};

use crate::apply::report::Failure;
use crate::job::compile::Job;
use crate::klaviyo::Client;
use crate::plan::consent::ConsentAction;

/// One profile's part in a subscription job.
pub struct Subject {
    pub email: Option<String>,
    pub phone_number: Option<String>,
    pub consented_at: Option<String>,
}

impl Subject {
    pub fn of(attributes: &RawValue, consented_at: Option<String>) -> Subject {
        let a: Value = serde_json::from_str(attributes.get()).unwrap_or(Value::Null);
        Subject {
            email: a["email"].as_str().map(str::to_string),
            phone_number: a["phone_number"].as_str().map(str::to_string),
            consented_at,
        }
    }
}

/// The `profiles.data` entry of one subject for a subscription job: `consent` is
/// `SUBSCRIBED` or `UNSUBSCRIBED`; a channel is asked only when the profile has its
/// identifier. `None` when no channel applies.
pub fn profile_entry(s: &Subject, channels: &[&str], consent: &str) -> Option<Value> {
    let mut attributes = serde_json::Map::new();
    let mut subs = serde_json::Map::new();
    let mut params = json!({ "consent": consent });
    if let Some(at) = &s.consented_at {
        params["consented_at"] = json!(at);
    }
    if let Some(e) = &s.email {
        attributes.insert("email".into(), json!(e));
        if channels.contains(&"email") {
            subs.insert("email".into(), json!({ "marketing": params.clone() }));
        }
    }
    if let Some(p) = &s.phone_number {
        attributes.insert("phone_number".into(), json!(p));
        if channels.contains(&"sms") {
            subs.insert("sms".into(), json!({ "marketing": params }));
        }
    }
    if subs.is_empty() {
        return None;
    }
    attributes.insert("subscriptions".into(), Value::Object(subs));
    Some(json!({"type": "profile", "attributes": attributes}))
}

/// Whether an RFC 3339 time lies in the future (Klaviyo refuses those as `consented_at`).
pub fn in_future(at: &str) -> bool {
    chrono::DateTime::parse_from_rfc3339(at).is_ok_and(|t| t > chrono::Utc::now())
}

/// A profile Klaviyo confirmed whose send carries a consent change.
pub struct Consenting<'a> {
    pub row: u64,
    pub key: &'a str,
    /// The attributes as sent (with the consent carrier, if the job reads consent columns).
    pub attributes: &'a RawValue,
    pub action: &'a ConsentAction,
}

/// What the subscription jobs of one batch came to.
#[derive(Debug, Default)]
pub struct ConsentOutcome {
    pub subscribed: u64,
    pub unsubscribed: u64,
    /// Rows whose consent change was not made, in the order found.
    pub failures: Vec<Failure>,
}

/// Carries out the consent changes of a confirmed batch (`consent`): subscriptions, then
/// unsubscriptions. A refused job is a failure of its rows (the profiles themselves are in).
pub async fn change_consent(
    client: &Client,
    job: &Job,
    confirmed: &[Consenting<'_>],
) -> ConsentOutcome {
    let mut o = ConsentOutcome::default();
    let Some(c) = &job.spec.consent else {
        return o;
    };
    let names = |v: &[crate::job::spec::ConsentChannel]| -> Vec<&'static str> {
        v.iter().map(|c| c.name()).collect()
    };
    let (sub_channels, unsub_channels) = (names(&c.subscribe), names(&c.unsubscribe));
    let source = format!("kdit {}", job.name());
    for subscribe in [true, false] {
        let mut rows: Vec<(u64, String)> = Vec::new();
        let mut entries = Vec::new();
        for i in confirmed {
            let at = match (i.action, subscribe) {
                (ConsentAction::Subscribe { consented_at }, true) => consented_at.clone(),
                (ConsentAction::Unsubscribe, false) => None,
                _ => continue,
            };
            if at.as_deref().is_some_and(in_future) {
                o.failures.push(Failure {
                    row: i.row,
                    key: i.key.to_string(),
                    field: "consent.consented_at".into(),
                    rule: "consented_at".into(),
                    message: format!(
                        "consent time {} is in the future; Klaviyo takes only past times in a historical import (the profile was sent, not subscribed)",
                        at.unwrap_or_default()
                    ),
                });
                continue;
            }
            let (consent, channels) = if subscribe {
                ("SUBSCRIBED", &sub_channels)
            } else {
                ("UNSUBSCRIBED", &unsub_channels)
            };
            if let Some(e) = profile_entry(&Subject::of(i.attributes, at), channels, consent) {
                entries.push(e);
                rows.push((i.row, i.key.to_string()));
            }
        }
        if entries.is_empty() {
            continue;
        }
        let historical = subscribe && c.consented_at.is_some();
        match client
            .subscription_jobs(&entries, subscribe, historical, &source)
            .await
        {
            Ok(()) if subscribe => o.subscribed += entries.len() as u64,
            Ok(()) => o.unsubscribed += entries.len() as u64,
            Err(e) => {
                let (rule, what) = if subscribe {
                    ("subscribe", "subscribed")
                } else {
                    ("unsubscribe", "unsubscribed")
                };
                for (row, key) in rows {
                    o.failures.push(Failure {
                        row,
                        key,
                        field: "consent".into(),
                        rule: rule.into(),
                        message: format!("the profile was sent but not {what}: {e}"),
                    });
                }
            }
        }
    }
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subscription_entries_follow_the_spec_shape() {
        let s = Subject {
            email: Some("a@x.com".into()),
            phone_number: None,
            consented_at: Some("2020-01-01T00:00:00Z".into()),
        };
        let e = profile_entry(&s, &["email", "sms"], "SUBSCRIBED").unwrap();
        assert_eq!(
            e["attributes"]["subscriptions"]["email"]["marketing"]["consented_at"],
            "2020-01-01T00:00:00Z"
        );
        assert!(e["attributes"]["subscriptions"].get("sms").is_none());
        assert!(profile_entry(&s, &["sms"], "UNSUBSCRIBED").is_none());
        assert!(in_future("2999-01-01T00:00:00Z"));
        assert!(!in_future("2000-01-01T00:00:00Z"));
    }
}
