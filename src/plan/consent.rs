//! Consent from columns, planned: `consent.subscribe` for created profiles,
//! `consent.consented_at` (historical imports) and `consent.unsubscribe` +
//! `unsubscribe_column`.
//!
//! In: the job's consent settings, each row's consent values, what kdit last confirmed for
//! the row (the hidden fields that carry them: `job::profiles::with_carrier`). Out: per profile to send
//! the consent change it carries (`ConsentAction`), and the plan's counts. Pure: the
//! subscription calls are `apply::consent`'s, after Klaviyo confirmed the profile.
//!
//! How the values travel: the consent columns are read as two hidden fields under the
//! profile property `kdit_consent` (typed `datetime` and `boolean` by the transform, so bad
//! values are rejected rows like any other). They are part of the profile's hash and of the
//! payload kept in the state — so a changed consent column re-sends the row and kdit knows
//! what it last applied — and are taken out of every profile before it is sent to Klaviyo
//! (`strip`).

use std::collections::HashMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use serde_json::value::RawValue;

use crate::job::compile::Job;
use crate::job::spec::JobSpec;
use crate::plan::Action;

use crate::job::attributes::CONSENT_CARRIER as CARRIER;
use crate::job::profiles::{CONSENTED_AT as AT, UNSUBSCRIBE};

/// Whether the job reads consent values from columns (so rows carry them).
pub fn reads_columns(spec: &JobSpec) -> bool {
    spec.consent.as_ref().is_some_and(|c| {
        c.consented_at.is_some() || (!c.unsubscribe.is_empty() && c.unsubscribe_column.is_some())
    })
}

/// A field key of the hidden consent fields as the job author knows it (for rejects).
pub fn author_field(job: &JobSpec, field: &str) -> Option<String> {
    let c = job.consent.as_ref()?;
    if field == format!("properties.{CARRIER}.{AT}") {
        return c
            .consented_at
            .as_ref()
            .map(|col| format!("consent.consented_at ({col})"));
    }
    if field == format!("properties.{CARRIER}.{UNSUBSCRIBE}") {
        return c
            .unsubscribe_column
            .as_ref()
            .map(|col| format!("consent.unsubscribe_column ({col})"));
    }
    None
}

/// A row's consent values.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RowConsent {
    pub consented_at: Option<String>,
    pub unsubscribe: bool,
}

impl RowConsent {
    /// The values carried in a profile's attributes (or in a state payload).
    pub fn of(attributes: &Value) -> RowConsent {
        RowConsent::from_carrier(&attributes["properties"][CARRIER])
    }

    /// From the carrier object itself.
    pub fn from_carrier(c: &Value) -> RowConsent {
        RowConsent {
            consented_at: c[AT].as_str().map(str::to_string),
            unsubscribe: c[UNSUBSCRIBE].as_bool() == Some(true),
        }
    }
}

/// The profile without the consent carrier, as Klaviyo gets it.
pub fn strip(attributes: &RawValue) -> Box<RawValue> {
    let mut v: Value = match serde_json::from_str(attributes.get()) {
        Ok(v) => v,
        Err(_) => return attributes.to_owned(),
    };
    if let Some(props) = v.get_mut("properties").and_then(Value::as_object_mut) {
        props.remove(CARRIER);
        if props.is_empty()
            && let Some(o) = v.as_object_mut()
        {
            o.remove("properties");
        }
    }
    serde_json::value::to_raw_value(&v).unwrap_or_else(|_| attributes.to_owned())
}

/// The consent change a profile's send carries.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ConsentAction {
    /// Subscribe to the job's `consent.subscribe` channels; with a time, as a historical
    /// import with that `consented_at`.
    Subscribe { consented_at: Option<String> },
    /// Unsubscribe from the job's `consent.unsubscribe` channels.
    Unsubscribe,
}

/// Decides each profile's consent change while the plan is made, and counts them.
#[derive(Debug, Default)]
pub struct Planner {
    subscribe: bool,
    historical: bool,
    unsubscribe: bool,
    /// What kdit last confirmed, by key (only keys whose payload carried consent values).
    previous: HashMap<String, RowConsent>,
    pub subscribes: u64,
    pub unsubscribes: u64,
}

impl Planner {
    /// `previous`: the consent carriers of the job's state payloads, by key.
    pub fn new(job: &Job, previous: HashMap<String, Value>) -> Planner {
        let c = job.spec.consent.as_ref();
        Planner {
            subscribe: c.is_some_and(|c| !c.subscribe.is_empty()),
            historical: c.is_some_and(|c| c.consented_at.is_some()),
            unsubscribe: c
                .is_some_and(|c| !c.unsubscribe.is_empty() && c.unsubscribe_column.is_some()),
            previous: previous
                .into_iter()
                .map(|(k, v)| (k, RowConsent::from_carrier(&v)))
                .collect(),
            subscribes: 0,
            unsubscribes: 0,
        }
    }

    /// Whether the job changes consent at all.
    pub fn active(&self) -> bool {
        self.subscribe || self.unsubscribe
    }

    /// The consent change of a profile about to be sent (`action` from the diff).
    ///
    /// - `unsubscribe`: the row's flag is true and was not when kdit last confirmed it.
    /// - `subscribe` with `consented_at`: the row has a time that differs from the one kdit
    ///   last confirmed (a new profile, or consent given since), and is not flagged to
    ///   unsubscribe. Rows without a time never consented and are left alone.
    /// - `subscribe` without it: the profiles the run creates (not flagged to unsubscribe).
    pub fn decide(
        &mut self,
        key: &str,
        action: Action,
        attributes: &RawValue,
    ) -> Option<ConsentAction> {
        if !self.active() || action == Action::Unchanged {
            return None;
        }
        let now = if self.historical || self.unsubscribe {
            let v: Value = serde_json::from_str(attributes.get()).unwrap_or(Value::Null);
            RowConsent::of(&v)
        } else {
            RowConsent::default()
        };
        let before = self.previous.get(key).cloned().unwrap_or_default();
        let decided = if self.unsubscribe && now.unsubscribe {
            (!before.unsubscribe || action == Action::Create).then_some(ConsentAction::Unsubscribe)
        } else if !self.subscribe {
            None
        } else if self.historical {
            match &now.consented_at {
                Some(at)
                    if action == Action::Create || before.consented_at.as_ref() != Some(at) =>
                {
                    Some(ConsentAction::Subscribe {
                        consented_at: Some(at.clone()),
                    })
                }
                _ => None,
            }
        } else {
            (action == Action::Create).then_some(ConsentAction::Subscribe { consented_at: None })
        };
        match decided {
            Some(ConsentAction::Unsubscribe) => self.unsubscribes += 1,
            Some(ConsentAction::Subscribe { .. }) => self.subscribes += 1,
            None => {}
        }
        decided
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn raw(v: Value) -> Box<RawValue> {
        serde_json::value::to_raw_value(&v).unwrap()
    }

    #[test]
    fn the_carrier_never_reaches_klaviyo() {
        let a =
            raw(json!({"email": "a@x.com", "properties": {CARRIER: {AT: "2020-01-01T00:00:00Z"}}}));
        assert_eq!(strip(&a).get(), r#"{"email":"a@x.com"}"#);
        let b = raw(
            json!({"email": "a@x.com", "properties": {"ltv": 1, CARRIER: {UNSUBSCRIBE: true}}}),
        );
        assert_eq!(
            strip(&b).get(),
            r#"{"email":"a@x.com","properties":{"ltv":1}}"#
        );
    }
}
