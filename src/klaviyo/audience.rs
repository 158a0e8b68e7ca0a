//! Klaviyo calls for the audience side: segments, tag groups, tags and their relationships.
//!
//! In: names, ids and segment definitions. Out: Klaviyo's answers as small Rust types.
//! Network I/O through the one `Client`; tiers per `../shared/klaviyo/API-NOTES.md` §6–7
//! (segment writes XS, segment reads L, every tag call S).

use reqwest::Method;
use serde_json::{Value, json};

use super::ratelimit::Tier;
use super::{Client, KlaviyoError, encode, filter_string, unreadable};

/// A segment as Klaviyo has it.
#[derive(Debug, Clone, PartialEq)]
pub struct LiveSegment {
    pub id: String,
    /// `null` when Klaviyo cannot express the definition through the API.
    pub definition: Value,
    pub is_processing: bool,
}

/// A tag on a list or segment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LiveTag {
    pub id: String,
    pub name: String,
}

/// A tag group as Klaviyo has it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LiveTagGroup {
    pub id: String,
    pub name: String,
    pub exclusive: bool,
}

fn id_of(body: &Option<Value>, method: &str, path: &str) -> Result<String, KlaviyoError> {
    body.as_ref()
        .and_then(|b| b["data"]["id"].as_str())
        .map(str::to_string)
        .ok_or_else(|| unreadable(method, path, "no id in the response"))
}

impl Client {
    /// Finds a segment by exact name; the oldest when several share it.
    pub async fn find_segment(&self, name: &str) -> Result<Option<LiveSegment>, KlaviyoError> {
        let path = format!(
            "/api/segments?filter={}&sort=created",
            encode(&format!("equals(name,{})", filter_string(name)))
        );
        let r = self
            .send(Tier::L, Method::GET, &path, "GET /api/segments", None)
            .await?;
        let body = r.body.unwrap_or(Value::Null);
        let d = &body["data"][0];
        Ok(d["id"].as_str().map(|id| LiveSegment {
            id: id.to_string(),
            definition: d["attributes"]["definition"].clone(),
            is_processing: d["attributes"]["is_processing"].as_bool().unwrap_or(false),
        }))
    }

    /// One segment by id.
    pub async fn segment(&self, id: &str) -> Result<LiveSegment, KlaviyoError> {
        let path = format!("/api/segments/{id}");
        let r = self
            .send(Tier::L, Method::GET, &path, "GET /api/segments/{id}", None)
            .await?;
        let body = r.body.unwrap_or(Value::Null);
        let d = &body["data"];
        Ok(LiveSegment {
            id: id.to_string(),
            definition: d["attributes"]["definition"].clone(),
            is_processing: d["attributes"]["is_processing"].as_bool().unwrap_or(false),
        })
    }

    /// Creates a segment (XS tier, 100 a day per account); returns its id.
    pub async fn create_segment(
        &self,
        name: &str,
        definition: &Value,
    ) -> Result<String, KlaviyoError> {
        let body = json!({"data": {"type": "segment", "attributes": {"name": name, "definition": definition}}});
        let r = self
            .send(
                Tier::Xs,
                Method::POST,
                "/api/segments",
                "POST /api/segments",
                Some(&body),
            )
            .await?;
        id_of(&r.body, "POST", "/api/segments")
    }

    /// Replaces a segment's definition (XS tier, 100 a day per account).
    pub async fn update_segment(&self, id: &str, definition: &Value) -> Result<(), KlaviyoError> {
        let body = json!({"data": {"type": "segment", "id": id, "attributes": {"definition": definition}}});
        let path = format!("/api/segments/{id}");
        self.send(
            Tier::Xs,
            Method::PATCH,
            &path,
            "PATCH /api/segments/{id}",
            Some(&body),
        )
        .await?;
        Ok(())
    }

    /// Emails (or phone numbers / external ids when a profile has no email) of a segment's
    /// members, at most `limit`, 100 a page.
    pub async fn segment_members(
        &self,
        id: &str,
        limit: usize,
    ) -> Result<Vec<String>, KlaviyoError> {
        let mut out = Vec::new();
        let mut next = Some(format!(
            "/api/segments/{id}/profiles?fields%5Bprofile%5D=email,phone_number,external_id&page%5Bsize%5D=100"
        ));
        while let Some(path) = next.take() {
            if out.len() >= limit {
                break;
            }
            let r = self
                .send(
                    Tier::L,
                    Method::GET,
                    &path,
                    "GET /api/segments/{id}/profiles",
                    None,
                )
                .await?;
            let body = r.body.unwrap_or(Value::Null);
            for p in body["data"].as_array().into_iter().flatten() {
                let a = &p["attributes"];
                let who = a["email"]
                    .as_str()
                    .or(a["phone_number"].as_str())
                    .or(a["external_id"].as_str())
                    .or(p["id"].as_str())
                    .unwrap_or_default();
                out.push(who.to_string());
            }
            next = body["links"]["next"].as_str().map(str::to_string);
        }
        out.truncate(limit);
        Ok(out)
    }

    /// Finds a tag group by exact name.
    pub async fn find_tag_group(&self, name: &str) -> Result<Option<String>, KlaviyoError> {
        Ok(self.tag_group(name).await?.map(|g| g.id))
    }

    /// A tag group by exact name, with its `exclusive` setting.
    pub async fn tag_group(&self, name: &str) -> Result<Option<LiveTagGroup>, KlaviyoError> {
        let path = format!(
            "/api/tag-groups?filter={}",
            encode(&format!("equals(name,{})", filter_string(name)))
        );
        let r = self
            .send(Tier::S, Method::GET, &path, "GET /api/tag-groups", None)
            .await?;
        let d = r.body.as_ref().map(|b| &b["data"][0]);
        Ok(d.and_then(|d| {
            Some(LiveTagGroup {
                id: d["id"].as_str()?.to_string(),
                name: d["attributes"]["name"].as_str().unwrap_or(name).to_string(),
                exclusive: d["attributes"]["exclusive"].as_bool().unwrap_or(false),
            })
        }))
    }

    /// Creates a tag group; returns its id.
    pub async fn create_tag_group(
        &self,
        name: &str,
        exclusive: bool,
    ) -> Result<String, KlaviyoError> {
        let body = json!({"data": {"type": "tag-group", "attributes": {"name": name, "exclusive": exclusive}}});
        let r = self
            .send(
                Tier::S,
                Method::POST,
                "/api/tag-groups",
                "POST /api/tag-groups",
                Some(&body),
            )
            .await?;
        id_of(&r.body, "POST", "/api/tag-groups")
    }

    /// The tags of a tag group.
    pub async fn group_tags(&self, group_id: &str) -> Result<Vec<LiveTag>, KlaviyoError> {
        self.tag_pages(
            format!("/api/tag-groups/{group_id}/tags"),
            "GET /api/tag-groups/{id}/tags",
        )
        .await
    }

    /// Creates a tag in a group; returns its id.
    pub async fn create_tag(&self, name: &str, group_id: &str) -> Result<String, KlaviyoError> {
        let body = json!({"data": {"type": "tag", "attributes": {"name": name},
            "relationships": {"tag-group": {"data": {"type": "tag-group", "id": group_id}}}}});
        let r = self
            .send(
                Tier::S,
                Method::POST,
                "/api/tags",
                "POST /api/tags",
                Some(&body),
            )
            .await?;
        id_of(&r.body, "POST", "/api/tags")
    }

    /// The tags on a list (`kind` = `lists`) or segment (`segments`).
    pub async fn tags_on(&self, kind: &str, id: &str) -> Result<Vec<LiveTag>, KlaviyoError> {
        let template = if kind == "lists" {
            "GET /api/lists/{id}/tags"
        } else {
            "GET /api/segments/{id}/tags"
        };
        self.tag_pages(format!("/api/{kind}/{id}/tags"), template)
            .await
    }

    async fn tag_pages(&self, first: String, template: &str) -> Result<Vec<LiveTag>, KlaviyoError> {
        let mut out = Vec::new();
        let mut next = Some(first);
        while let Some(path) = next.take() {
            let r = self
                .send(Tier::S, Method::GET, &path, template, None)
                .await?;
            let body = r.body.unwrap_or(Value::Null);
            for t in body["data"].as_array().into_iter().flatten() {
                if let (Some(id), Some(name)) = (t["id"].as_str(), t["attributes"]["name"].as_str())
                {
                    out.push(LiveTag {
                        id: id.to_string(),
                        name: name.to_string(),
                    });
                }
            }
            next = body["links"]["next"].as_str().map(str::to_string);
        }
        Ok(out)
    }

    /// Every list (`kind` = `lists`) or segment (`segments`) of the account: (id, name),
    /// following `links.next` (Klaviyo pages these 10 at a time).
    pub async fn all_named(&self, kind: &str) -> Result<Vec<(String, String)>, KlaviyoError> {
        let template = format!("GET /api/{kind}");
        let mut out = Vec::new();
        let mut next = Some(format!("/api/{kind}"));
        while let Some(path) = next.take() {
            let r = self
                .send(Tier::L, Method::GET, &path, &template, None)
                .await?;
            let body = r.body.unwrap_or(Value::Null);
            for d in body["data"].as_array().into_iter().flatten() {
                if let (Some(id), Some(name)) = (d["id"].as_str(), d["attributes"]["name"].as_str())
                {
                    out.push((id.to_string(), name.to_string()));
                }
            }
            next = body["links"]["next"].as_str().map(str::to_string);
        }
        Ok(out)
    }

    /// Ids of the lists (`kind` = `lists`) or segments a tag is on.
    pub async fn tag_relations(
        &self,
        tag_id: &str,
        kind: &str,
    ) -> Result<Vec<String>, KlaviyoError> {
        let template = format!("GET /api/tags/{{id}}/relationships/{kind}");
        let mut out = Vec::new();
        let mut next = Some(format!("/api/tags/{tag_id}/relationships/{kind}"));
        while let Some(path) = next.take() {
            let r = self
                .send(Tier::S, Method::GET, &path, &template, None)
                .await?;
            let body = r.body.unwrap_or(Value::Null);
            for d in body["data"].as_array().into_iter().flatten() {
                if let Some(id) = d["id"].as_str() {
                    out.push(id.to_string());
                }
            }
            next = body["links"]["next"].as_str().map(str::to_string);
        }
        Ok(out)
    }

    /// Puts a tag on (`add`) or takes it off lists (`kind` = `lists`) or segments.
    pub async fn relate_tag(
        &self,
        tag_id: &str,
        kind: &str,
        ids: &[String],
        add: bool,
    ) -> Result<(), KlaviyoError> {
        if ids.is_empty() {
            return Ok(());
        }
        let rtype = if kind == "lists" { "list" } else { "segment" };
        let path = format!("/api/tags/{tag_id}/relationships/{kind}");
        let method = if add { Method::POST } else { Method::DELETE };
        let template = format!("{method} /api/tags/{{id}}/relationships/{kind}");
        let data: Vec<Value> = ids
            .iter()
            .map(|id| json!({"type": rtype, "id": id}))
            .collect();
        self.send(
            Tier::S,
            method,
            &path,
            &template,
            Some(&json!({ "data": data })),
        )
        .await?;
        Ok(())
    }
}

/// Most profiles in one subscription bulk-create job.
pub const SUBSCRIBE_MAX: usize = 1_000;
/// Most profiles in one subscription bulk-delete (unsubscribe) job.
pub const UNSUBSCRIBE_MAX: usize = 100;

impl Client {
    /// Sends subscription jobs (L tier; Klaviyo answers 202 and processes them later, not
    /// pollable): `subscribe` → `profile-subscription-bulk-create-jobs` (≤ 1,000 a call;
    /// `historical` sets `historical_import`, the entries then carry `consented_at`), else
    /// `profile-subscription-bulk-delete-jobs` (≤ 100 a call, no list: consent is withdrawn
    /// globally). `entries`: `profiles.data` items (see `consent::profile_entry`).
    pub async fn subscription_jobs(
        &self,
        entries: &[Value],
        subscribe: bool,
        historical: bool,
        source: &str,
    ) -> Result<(), KlaviyoError> {
        let (max, ty, path) = if subscribe {
            (
                SUBSCRIBE_MAX,
                "profile-subscription-bulk-create-job",
                "/api/profile-subscription-bulk-create-jobs",
            )
        } else {
            (
                UNSUBSCRIBE_MAX,
                "profile-subscription-bulk-delete-job",
                "/api/profile-subscription-bulk-delete-jobs",
            )
        };
        for chunk in entries.chunks(max) {
            let mut attributes = json!({"profiles": {"data": chunk}});
            if subscribe {
                attributes["custom_source"] = json!(source);
                if historical {
                    attributes["historical_import"] = json!(true);
                }
            }
            let body = json!({"data": {"type": ty, "attributes": attributes}});
            self.send(
                Tier::L,
                Method::POST,
                path,
                &format!("POST {path}"),
                Some(&body),
            )
            .await?;
        }
        Ok(())
    }
}
