//! Klaviyo's REST API as kdit uses it: typed calls over the one `Client`.
//!
//! In: profile payloads, list names and ids. Out: Klaviyo's answers as small Rust types.
//! Network I/O through `client`. Shapes follow `../shared/klaviyo/openapi.json` (revision
//! 2026-07-15); `ratelimit` holds the tiers each call is budgeted against.

pub mod audience;
pub mod client;
pub mod ratelimit;
pub mod watch;

use reqwest::Method;
use serde_json::value::RawValue;
use serde_json::{Value, json};

pub use client::{ApiKey, Client, Config, KlaviyoError, Stats};
use ratelimit::Tier;

/// Most profiles in one bulk import job.
pub const BULK_MAX_PROFILES: usize = 10_000;
/// Most bytes in one request body.
pub const BULK_MAX_BYTES: usize = 5 * 1024 * 1024;
/// Most profile ids per list membership call.
pub const LIST_MEMBERS_MAX: usize = 1_000;

/// A bulk import job's progress.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BulkJob {
    pub id: String,
    pub status: String,
    pub total: u64,
    pub completed: u64,
    pub failed: u64,
}

impl BulkJob {
    pub fn is_done(&self) -> bool {
        matches!(self.status.as_str(), "complete" | "cancelled")
    }

    pub(crate) fn from_resource(data: &Value) -> BulkJob {
        let a = &data["attributes"];
        BulkJob {
            id: data["id"].as_str().unwrap_or_default().to_string(),
            status: a["status"].as_str().unwrap_or_default().to_string(),
            total: a["total_count"].as_u64().unwrap_or(0),
            completed: a["completed_count"].as_u64().unwrap_or(0),
            failed: a["failed_count"].as_u64().unwrap_or(0),
        }
    }
}

/// One profile a bulk import could not take.
#[derive(Debug, Clone)]
pub struct ImportError {
    pub code: String,
    pub detail: String,
    /// The profile as it was sent (attributes), to tie the error back to a row.
    pub original: Value,
}

fn unreadable(method: &str, path: &str, why: &str) -> KlaviyoError {
    KlaviyoError::Unreadable {
        request: format!("{method} {path}"),
        why: why.into(),
    }
}

/// Percent-encodes a query-string value.
pub fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(b as char)
            }
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// A string literal for Klaviyo's filter language.
fn filter_string(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_default()
}

impl Client {
    /// Checks the credentials (one XS-tier call). Returns the account id.
    pub async fn account(&self) -> Result<String, KlaviyoError> {
        let r = self
            .send(
                Tier::Xs,
                Method::GET,
                "/api/accounts",
                "GET /api/accounts",
                None,
            )
            .await?;
        r.body
            .as_ref()
            .and_then(|b| b["data"][0]["id"].as_str())
            .map(str::to_string)
            .ok_or_else(|| unreadable("GET", "/api/accounts", "no account in the response"))
    }

    /// Finds a list by exact name; the oldest when several share it.
    pub async fn find_list(&self, name: &str) -> Result<Option<String>, KlaviyoError> {
        let path = format!(
            "/api/lists?filter={}&sort=created",
            encode(&format!("equals(name,{})", filter_string(name)))
        );
        let r = self
            .send(Tier::L, Method::GET, &path, "GET /api/lists", None)
            .await?;
        Ok(r.body
            .as_ref()
            .and_then(|b| b["data"][0]["id"].as_str())
            .map(str::to_string))
    }

    /// Creates a list; returns its id.
    pub async fn create_list(&self, name: &str) -> Result<String, KlaviyoError> {
        let body = json!({"data": {"type": "list", "attributes": {"name": name}}});
        let r = self
            .send(
                Tier::M,
                Method::POST,
                "/api/lists",
                "POST /api/lists",
                Some(&body),
            )
            .await?;
        r.body
            .as_ref()
            .and_then(|b| b["data"]["id"].as_str())
            .map(str::to_string)
            .ok_or_else(|| unreadable("POST", "/api/lists", "no list id in the response"))
    }

    /// Adds (`add = true`) or removes profiles from a list, ≤ 1,000 ids per call.
    pub async fn list_membership(
        &self,
        list_id: &str,
        profile_ids: &[String],
        add: bool,
    ) -> Result<(), KlaviyoError> {
        let path = format!("/api/lists/{list_id}/relationships/profiles");
        let (method, template) = if add {
            (Method::POST, "POST /api/lists/{id}/relationships/profiles")
        } else {
            (
                Method::DELETE,
                "DELETE /api/lists/{id}/relationships/profiles",
            )
        };
        for chunk in profile_ids.chunks(LIST_MEMBERS_MAX) {
            let data: Vec<Value> = chunk
                .iter()
                .map(|id| json!({"type": "profile", "id": id}))
                .collect();
            let body = json!({ "data": data });
            self.send(Tier::M, method.clone(), &path, template, Some(&body))
                .await?;
        }
        Ok(())
    }

    /// Looks up profile ids by one identifier (`email`, `phone_number`, `external_id`),
    /// 100 values per call. Returns (identifier value, profile id) pairs.
    pub async fn profile_ids(
        &self,
        field: &str,
        values: &[String],
    ) -> Result<Vec<(String, String)>, KlaviyoError> {
        let mut out = Vec::new();
        for chunk in values.chunks(100) {
            let list: Vec<String> = chunk.iter().map(|v| filter_string(v)).collect();
            let filter = format!("any({field},[{}])", list.join(","));
            let mut next = Some(format!(
                "/api/profiles?filter={}&fields%5Bprofile%5D={field}&page%5Bsize%5D=100",
                encode(&filter)
            ));
            while let Some(path) = next.take() {
                let r = self
                    .send(Tier::L, Method::GET, &path, "GET /api/profiles", None)
                    .await?;
                let body = r.body.unwrap_or(Value::Null);
                for p in body["data"].as_array().into_iter().flatten() {
                    if let (Some(id), Some(v)) = (p["id"].as_str(), p["attributes"][field].as_str())
                    {
                        out.push((v.to_string(), id.to_string()));
                    }
                }
                next = body["links"]["next"].as_str().map(str::to_string);
            }
        }
        Ok(out)
    }

    /// Starts a bulk import job of profiles (each given as its serialised `attributes`),
    /// adding everyone to `list_ids`. The body is written directly from the serialised
    /// attributes: no tree of values is built for 10,000 profiles.
    pub async fn start_bulk_import(
        &self,
        profiles: &[&RawValue],
        list_ids: &[String],
    ) -> Result<BulkJob, KlaviyoError> {
        self.start_bulk_import_with_meta(profiles, list_ids, None)
            .await
    }

    /// `start_bulk_import` with the same serialised `meta` (e.g. `patch_properties`) on
    /// every profile.
    pub async fn start_bulk_import_with_meta(
        &self,
        profiles: &[&RawValue],
        list_ids: &[String],
        meta: Option<&str>,
    ) -> Result<BulkJob, KlaviyoError> {
        let meta_len = meta.map_or(0, |m| m.len() + 8);
        let mut body = String::with_capacity(
            profiles
                .iter()
                .map(|p| p.get().len() + 40 + meta_len)
                .sum::<usize>()
                + 256,
        );
        body.push_str(
            r#"{"data":{"type":"profile-bulk-import-job","attributes":{"profiles":{"data":["#,
        );
        for (i, p) in profiles.iter().enumerate() {
            if i > 0 {
                body.push(',');
            }
            body.push_str(r#"{"type":"profile","attributes":"#);
            body.push_str(p.get());
            if let Some(m) = meta {
                body.push_str(r#","meta":"#);
                body.push_str(m);
            }
            body.push('}');
        }
        body.push_str("]}}");
        if !list_ids.is_empty() {
            let lists: Vec<Value> = list_ids
                .iter()
                .map(|id| json!({"type": "list", "id": id}))
                .collect();
            body.push_str(r#","relationships":{"lists":{"data":"#);
            body.push_str(&Value::from(lists).to_string());
            body.push_str("}}");
        }
        body.push_str("}}");
        let r = self
            .send_bytes(
                Tier::M,
                Method::POST,
                "/api/profile-bulk-import-jobs",
                "POST /api/profile-bulk-import-jobs",
                Some(body.as_bytes()),
            )
            .await?;
        let job = BulkJob::from_resource(&r.body.unwrap_or(Value::Null)["data"]);
        if job.id.is_empty() {
            return Err(unreadable(
                "POST",
                "/api/profile-bulk-import-jobs",
                "no job id in the response",
            ));
        }
        Ok(job)
    }

    /// A bulk import job's current status.
    pub async fn bulk_import(&self, job_id: &str) -> Result<BulkJob, KlaviyoError> {
        let path = format!("/api/profile-bulk-import-jobs/{job_id}");
        let r = self
            .send(
                Tier::M,
                Method::GET,
                &path,
                "GET /api/profile-bulk-import-jobs/{job_id}",
                None,
            )
            .await?;
        Ok(BulkJob::from_resource(
            &r.body.unwrap_or(Value::Null)["data"],
        ))
    }

    /// Every per-profile error of a bulk import job.
    pub async fn import_errors(&self, job_id: &str) -> Result<Vec<ImportError>, KlaviyoError> {
        let mut out = Vec::new();
        let mut next = Some(format!(
            "/api/profile-bulk-import-jobs/{job_id}/import-errors?page%5Bsize%5D=100"
        ));
        while let Some(path) = next.take() {
            let r = self
                .send(
                    Tier::M,
                    Method::GET,
                    &path,
                    "GET /api/profile-bulk-import-jobs/{id}/import-errors",
                    None,
                )
                .await?;
            let body = r.body.unwrap_or(Value::Null);
            for e in body["data"].as_array().into_iter().flatten() {
                let a = &e["attributes"];
                out.push(ImportError {
                    code: a["code"].as_str().unwrap_or("invalid").to_string(),
                    detail: a["detail"]
                        .as_str()
                        .or(a["title"].as_str())
                        .unwrap_or("")
                        .to_string(),
                    original: a["original_payload"].clone(),
                });
            }
            next = body["links"]["next"].as_str().map(str::to_string);
        }
        Ok(out)
    }

    /// Create-or-update one profile (`POST /api/profile-import`); the endpoint that can clear
    /// fields (null) and unset properties. Returns the profile id.
    pub async fn import_profile(
        &self,
        attributes: Value,
        unset: &[String],
    ) -> Result<String, KlaviyoError> {
        let mut data = json!({"type": "profile", "attributes": attributes});
        if !unset.is_empty() {
            data["meta"] = json!({"patch_properties": {"unset": unset}});
        }
        let body = json!({ "data": data });
        let r = self
            .send(
                Tier::L,
                Method::POST,
                "/api/profile-import",
                "POST /api/profile-import",
                Some(&body),
            )
            .await?;
        r.body
            .as_ref()
            .and_then(|b| b["data"]["id"].as_str())
            .map(str::to_string)
            .ok_or_else(|| {
                unreadable(
                    "POST",
                    "/api/profile-import",
                    "no profile id in the response",
                )
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_values_are_encoded() {
        assert_eq!(
            encode("equals(name,\"A B\")"),
            "equals%28name%2C%22A%20B%22%29"
        );
        assert_eq!(filter_string("say \"hi\""), "\"say \\\"hi\\\"\"");
    }
}
