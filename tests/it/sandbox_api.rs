//! The sandbox's Klaviyo behaviour over real HTTP: auth and headers, profiles, bulk import,
//! lists, segments, tags, consent, rate limits, faults and the `/_sandbox` views. Every body
//! sent and received is checked against openapi.json by the harness in `support/api.rs`.

use crate::support::api as sandbox;

use std::time::Duration;

use kdit::sandbox::{FaultSpec, RateLimits, SandboxConfig};
use sandbox::{Api, REVISION, openapi};
use serde_json::{Value, json};

fn profile(attrs: Value) -> Value {
    json!({"data": {"type": "profile", "attributes": attrs}})
}

// ---------------------------------------------------------------- HTTP conventions

#[tokio::test]
async fn sandbox_accounts_and_credentials() {
    let api = Api::new().await;
    assert!(api.sb.api_key().starts_with("pk_sandbox_"));
    let r = api.get("/api/accounts").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["data"][0]["type"], "account");

    // Wrong key, no key, another scheme: Klaviyo's 401.
    for auth in [Some("Klaviyo-API-Key pk_wrong"), None, Some("Bearer x")] {
        let mut rb = api
            .http
            .get(api.url("/api/accounts"))
            .header("revision", REVISION);
        if let Some(a) = auth {
            rb = rb.header("Authorization", a);
        }
        let r = api.send(rb).await;
        assert_eq!(r.status, 401);
        openapi::check_response("GET", "/api/accounts", 401, r.body.as_ref()).expect("valid");
        assert!(r.json()["errors"][0]["id"].is_string());
    }
}

#[tokio::test]
async fn sandbox_custom_api_key() {
    let api = Api::with(SandboxConfig {
        api_key: Some("pk_test_123".into()),
        rate_limits: RateLimits::Off,
        ..SandboxConfig::default()
    })
    .await;
    assert_eq!(api.sb.api_key(), "pk_test_123");
    assert_eq!(api.get("/api/accounts").await.status, 200);
}

#[tokio::test]
async fn sandbox_revision_header() {
    let api = Api::new().await;
    let key = format!("Klaviyo-API-Key {}", api.sb.api_key());
    for (rev, want) in [
        (None, 400),
        (Some("yesterday"), 400),
        (Some("2024-02-30"), 400),
        (Some("2024-10-15"), 200),
        (Some("2026-07-15.pre"), 200),
    ] {
        let mut rb = api
            .http
            .get(api.url("/api/accounts"))
            .header("Authorization", &key);
        if let Some(r) = rev {
            rb = rb.header("revision", r);
        }
        let r = api.send(rb).await;
        assert_eq!(r.status, want, "revision {rev:?}");
        openapi::check_response("GET", "/api/accounts", r.status, r.body.as_ref()).expect("valid");
    }
}

#[tokio::test]
async fn sandbox_content_types_paths_and_methods() {
    let api = Api::new().await;
    let key = format!("Klaviyo-API-Key {}", api.sb.api_key());
    let body = serde_json::to_vec(&profile(json!({"email": "ct@example.com"}))).expect("json");
    let send = |ct: &'static str, path: &'static str| {
        api.http
            .post(api.url(path))
            .header("Authorization", &key)
            .header("revision", REVISION)
            .header("Content-Type", ct)
            .body(body.clone())
    };
    let r = api.send(send("text/plain", "/api/profiles")).await;
    assert_eq!(r.status, 415);
    openapi::check_response("POST", "/api/profiles", 415, r.body.as_ref()).expect("valid");
    // Plain JSON works, and so does a trailing slash.
    let r = api.send(send("application/json", "/api/profiles/")).await;
    assert_eq!(r.status, 201, "{:?}", r.body);
    let r = api
        .send(send(
            "application/vnd.api+json; charset=utf-8",
            "/api/profile-import/",
        ))
        .await;
    assert_eq!(r.status, 200);

    let r = api.get("/api/lists/").await;
    assert_eq!(r.status, 200);

    // Unknown paths: JSON:API 404. Known path, wrong method: 405.
    let r = api
        .send(
            api.http
                .get(api.url("/api/nope"))
                .header("Authorization", &key)
                .header("revision", REVISION),
        )
        .await;
    assert_eq!(r.status, 404);
    assert_eq!(r.error_code(), "not_found");
    let r = api
        .send(
            api.http
                .delete(api.url("/api/profiles"))
                .header("Authorization", &key)
                .header("revision", REVISION),
        )
        .await;
    assert_eq!(r.status, 405);
    assert!(r.json()["errors"][0]["detail"].is_string());
    let r = api.send(api.http.get(api.url("/"))).await;
    assert_eq!(r.status, 404);
}

#[tokio::test]
async fn sandbox_never_panics_on_bad_input() {
    let api = Api::new().await;
    let key = format!("Klaviyo-API-Key {}", api.sb.api_key());
    let post = |path: &str, body: Vec<u8>| {
        api.http
            .post(api.url(path))
            .header("Authorization", &key)
            .header("revision", REVISION)
            .header("Content-Type", "application/vnd.api+json")
            .body(body)
    };
    let bad_bodies: Vec<Vec<u8>> = vec![
        b"{".to_vec(),
        b"".to_vec(),
        b"null".to_vec(),
        b"[]".to_vec(),
        b"{\"data\": 5}".to_vec(),
        b"{\"data\": {\"type\": 7}}".to_vec(),
        b"{\"data\": {\"type\": \"profile\", \"attributes\": []}}".to_vec(),
        b"{\"data\": {\"type\": \"profile\", \"attributes\": {\"email\": 12}}}".to_vec(),
        b"{\"data\": {\"type\": \"profile\", \"attributes\": {\"location\": \"x\"}}}".to_vec(),
        b"{\"data\": {\"type\": \"profile\", \"attributes\": {\"email\": \"a@b.co\"}, \"meta\": 3}}"
            .to_vec(),
        vec![0xff, 0xfe, 0x00],
    ];
    let paths = [
        "/api/profiles",
        "/api/profile-import",
        "/api/profile-bulk-import-jobs",
        "/api/lists",
        "/api/segments",
        "/api/tags",
        "/api/tag-groups",
        "/api/profile-subscription-bulk-create-jobs",
        "/api/profile-subscription-bulk-delete-jobs",
    ];
    for path in paths {
        for b in &bad_bodies {
            let r = api.send(post(path, b.clone())).await;
            assert_eq!(
                r.status,
                400,
                "{path} {:?} → {:?}",
                String::from_utf8_lossy(b),
                r.body
            );
            openapi::check_response("POST", path, 400, r.body.as_ref()).expect("valid");
        }
    }
    // Wrong query values.
    for q in [
        "/api/profiles?page[size]=abc",
        "/api/profiles?page[size]=0",
        "/api/profiles?page[size]=101",
        "/api/profiles?page[cursor]=zzz",
        "/api/profiles?filter=equals(email",
        "/api/profiles?filter=equals(first_name,\"x\")",
        "/api/profiles?bogus=1",
        "/api/lists?page[size]=11",
    ] {
        let r = api.get(q).await;
        assert_eq!(r.status, 400, "{q}");
    }
    // A body over 5 MB is refused (413), with or without Content-Length.
    let huge = vec![b' '; 5 * 1024 * 1024 + 10];
    let r = api.send(post("/api/profiles", huge.clone())).await;
    assert_eq!(r.status, 413);
    // Chunked, without Content-Length, over a raw socket.
    let addr = api.sb.base_url().trim_start_matches("http://").to_string();
    let mut sock = tokio::net::TcpStream::connect(&addr)
        .await
        .expect("connect");
    let head = format!(
        "POST /api/profiles HTTP/1.1\r\nHost: {addr}\r\nAuthorization: {key}\r\nrevision: {REVISION}\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
    );
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    sock.write_all(head.as_bytes()).await.expect("write");
    for _ in 0..6 {
        let chunk = vec![b' '; 1 << 20];
        let _ = sock
            .write_all(format!("{:x}\r\n", chunk.len()).as_bytes())
            .await;
        let _ = sock.write_all(&chunk).await;
        let _ = sock.write_all(b"\r\n").await;
    }
    let _ = sock.write_all(b"0\r\n\r\n").await;
    let mut buf = vec![0u8; 4096];
    let n = sock.read(&mut buf).await.expect("read");
    let text = String::from_utf8_lossy(&buf[..n]);
    assert!(text.starts_with("HTTP/1.1 413"), "{text}");
    // Still serving.
    assert_eq!(api.get("/api/accounts").await.status, 200);
}

// ---------------------------------------------------------------- profiles

#[tokio::test]
async fn sandbox_profile_create_duplicate_and_validation() {
    let api = Api::new().await;
    let id = api
        .create_profile(json!({"email": "Ana@Example.com", "first_name": "Ana",
            "phone_number": "+15005550006", "external_id": "c-1",
            "location": {"city": "Boston", "latitude": 42.36}, "properties": {"ltv": 12.5}}))
        .await;
    for dup in [
        json!({"email": "ana@example.com"}),
        json!({"phone_number": "+15005550006"}),
        json!({"external_id": "c-1", "email": "other@example.com"}),
    ] {
        let r = api.post("/api/profiles", &profile(dup)).await;
        assert_eq!(r.status, 409);
        assert_eq!(r.error_code(), "duplicate_profile");
        assert_eq!(r.json()["errors"][0]["meta"]["duplicate_profile_id"], id);
    }
    let long = format!("{}@example.com", "a".repeat(95));
    for bad in [
        json!({"email": "not-an-email"}),
        json!({"email": long}),
        json!({"phone_number": "555-1234"}),
        json!({"phone_number": "+0123456789"}),
        json!({"first_name": "no identifier"}),
        json!({"email": "x@example.com", "favourite_colour": "red"}),
    ] {
        let r = api.post("/api/profiles", &profile(bad.clone())).await;
        assert_eq!(r.status, 400, "{bad}");
        assert!(r.json()["errors"][0]["source"]["pointer"].is_string());
    }
    let r = api.get(&format!("/api/profiles/{id}")).await;
    assert_eq!(r.status, 200);
    let a = &r.json()["data"]["attributes"];
    assert_eq!(a["email"], "Ana@Example.com");
    assert_eq!(a["location"]["city"], "Boston");
    assert_eq!(a["properties"]["ltv"], 12.5);
    let r = api.get("/api/profiles/01GDDKASAP8TKDDA2GRZDSVP4H").await;
    assert_eq!(r.status, 404);
}

#[tokio::test]
async fn sandbox_profile_filters_paging_fields() {
    let api = Api::new().await;
    let mut ids = vec![];
    for i in 0..5 {
        ids.push(
            api.create_profile(json!({"email": format!("p{i}@example.com"),
                "external_id": format!("x{i}"), "first_name": format!("P{i}")}))
                .await,
        );
    }
    let r = api
        .get("/api/profiles?filter=equals(email,\"p3@example.com\")")
        .await;
    assert_eq!(r.json()["data"].as_array().map(Vec::len), Some(1));
    assert_eq!(r.json()["data"][0]["id"], ids[3]);
    let r = api
        .get("/api/profiles?filter=any(external_id,[\"x1\",\"x4\",\"nope\"])&fields[profile]=email,external_id")
        .await;
    let data = r.json()["data"].as_array().cloned().unwrap_or_default();
    assert_eq!(data.len(), 2);
    let attrs = data[0]["attributes"].as_object().expect("attrs");
    assert_eq!(attrs.len(), 2, "sparse fieldset: {attrs:?}");
    let r = api
        .get(&format!("/api/profiles?filter=equals(id,\"{}\")", ids[0]))
        .await;
    assert_eq!(r.json()["data"][0]["id"], ids[0]);
    let r = api
        .get("/api/profiles?filter=equals(phone_number,\"+15005550000\")")
        .await;
    assert_eq!(r.json()["data"].as_array().map(Vec::len), Some(0));

    // Cursor paging with absolute next links, 2 at a time.
    let mut seen = vec![];
    let mut next = Some(api.url("/api/profiles?page[size]=2"));
    let mut pages = 0;
    while let Some(url) = next {
        let r = api.get(&url).await;
        pages += 1;
        for p in r.json()["data"].as_array().cloned().unwrap_or_default() {
            seen.push(p["id"].as_str().unwrap_or_default().to_string());
        }
        next = r.json()["links"]["next"].as_str().map(str::to_string);
        if let Some(n) = &next {
            assert!(
                n.starts_with("http://127.0.0.1:"),
                "absolute next link: {n}"
            );
        }
    }
    assert_eq!(pages, 3);
    assert_eq!(seen, ids);
    let r = api.get("/api/profiles?sort=-id&page[size]=1").await;
    assert_eq!(r.json()["data"][0]["id"], ids[4]);
}

#[tokio::test]
async fn sandbox_profile_patch_null_clears() {
    let api = Api::new().await;
    let id = api
        .create_profile(json!({"email": "pat@example.com", "first_name": "Pat",
            "last_name": "Lee", "properties": {"a": 1, "b": 2}}))
        .await;
    let body = json!({"data": {"type": "profile", "id": id, "attributes": {
        "first_name": null, "title": "Dr", "properties": {"a": null, "c": 3}}}});
    let r = api.patch(&format!("/api/profiles/{id}"), &body).await;
    assert_eq!(r.status, 200);
    let a = &r.json()["data"]["attributes"];
    assert_eq!(a["first_name"], Value::Null);
    assert_eq!(a["last_name"], "Lee");
    assert_eq!(a["title"], "Dr");
    assert_eq!(a["properties"], json!({"b": 2, "c": 3}));

    // Another profile's email → 409; id mismatch → 409; unknown id → 404.
    let other = api
        .create_profile(json!({"email": "other@example.com"}))
        .await;
    let body = json!({"data": {"type": "profile", "id": id, "attributes": {"email": "other@example.com"}}});
    let r = api.patch(&format!("/api/profiles/{id}"), &body).await;
    assert_eq!(r.status, 409);
    assert_eq!(r.json()["errors"][0]["meta"]["duplicate_profile_id"], other);
    let body = json!({"data": {"type": "profile", "id": other, "attributes": {}}});
    assert_eq!(
        api.patch(&format!("/api/profiles/{id}"), &body)
            .await
            .status,
        409
    );
    let ghost = "01GDDKASAP8TKDDA2GRZDSVP4H";
    let body = json!({"data": {"type": "profile", "id": ghost, "attributes": {}}});
    assert_eq!(
        api.patch(&format!("/api/profiles/{ghost}"), &body)
            .await
            .status,
        404
    );
}

#[tokio::test]
async fn sandbox_profile_import_upsert_and_patch_properties() {
    let api = Api::new().await;
    let body = json!({"data": {"type": "profile", "attributes": {
        "email": "up@example.com", "properties": {"tags": ["a"], "gone": 1, "keep": true}}}});
    let r = api.post("/api/profile-import", &body).await;
    assert_eq!(r.status, 201);
    let id = r.json()["data"]["id"].clone();
    // Existing email + new phone: the phone is added to that profile (200).
    let body = json!({"data": {"type": "profile",
        "attributes": {"email": "up@example.com", "phone_number": "+442071838750"},
        "meta": {"patch_properties": {"append": {"tags": ["b", "c"]}, "unappend": {"tags": "a"},
            "unset": "gone"}}}});
    let r = api.post("/api/profile-import", &body).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["data"]["id"], id);
    let a = &r.json()["data"]["attributes"];
    assert_eq!(a["phone_number"], "+442071838750");
    assert_eq!(a["properties"], json!({"tags": ["b", "c"], "keep": true}));
    // Found by phone alone.
    let r = api
        .post(
            "/api/profile-import",
            &profile(json!({"phone_number": "+442071838750", "first_name": "Up"})),
        )
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["data"]["id"], id);
    // Identifiers of two different profiles → 409 naming the other one.
    let other = api.create_profile(json!({"external_id": "ext-9"})).await;
    let r = api
        .post(
            "/api/profile-import",
            &profile(json!({"email": "up@example.com", "external_id": "ext-9"})),
        )
        .await;
    assert_eq!(r.status, 409);
    assert_eq!(r.json()["errors"][0]["meta"]["duplicate_profile_id"], other);
    // By id; unknown id → 404.
    let body =
        json!({"data": {"type": "profile", "id": other, "attributes": {"first_name": "Nine"}}});
    assert_eq!(api.post("/api/profile-import", &body).await.status, 200);
    let body =
        json!({"data": {"type": "profile", "id": "01GDDKASAP8TKDDA2GRZDSVP4H", "attributes": {}}});
    assert_eq!(api.post("/api/profile-import", &body).await.status, 404);
}

// ---------------------------------------------------------------- bulk import

#[tokio::test]
async fn sandbox_bulk_import_job_lifecycle() {
    let api = Api::new().await;
    let list = api.create_list("Imported").await;
    let existing = api
        .create_profile(
            json!({"email": "keep@example.com", "first_name": "Keep", "last_name": "Me",
            "properties": {"tags": ["old"]}}),
        )
        .await;
    let body = json!({"data": {"type": "profile-bulk-import-job", "attributes": {"profiles": {"data": [
        {"type": "profile", "attributes": {"email": "new1@example.com", "first_name": "New"}},
        {"type": "profile", "attributes": {"email": "keep@example.com", "first_name": null, "last_name": "Changed"},
            "meta": {"patch_properties": {"append": {"tags": "vip"}}}},
        {"type": "profile", "attributes": {"email": "broken"}},
        {"type": "profile", "attributes": {"phone_number": "12"}},
        {"type": "profile", "attributes": {"external_id": "ext-1", "properties": {"n": 1}}}
    ]}}, "relationships": {"lists": {"data": [{"type": "list", "id": list}]}}}});
    let r = api.post("/api/profile-bulk-import-jobs", &body).await;
    assert_eq!(r.status, 202);
    let a = &r.json()["data"]["attributes"];
    assert_eq!(a["status"], "queued");
    assert_eq!(a["total_count"], 5);
    let job = r.json()["data"]["id"].as_str().expect("id").to_string();
    let mut status = String::new();
    for _ in 0..500 {
        let j = api
            .get(&format!("/api/profile-bulk-import-jobs/{job}"))
            .await;
        status = j.json()["data"]["attributes"]["status"]
            .as_str()
            .unwrap_or("")
            .into();
        if status == "complete" {
            let a = &j.json()["data"]["attributes"];
            assert_eq!(a["completed_count"], 3);
            assert_eq!(a["failed_count"], 2);
            assert!(a["completed_at"].is_string());
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(status, "complete");
    let errs = api
        .get(&format!(
            "/api/profile-bulk-import-jobs/{job}/import-errors"
        ))
        .await;
    let errs = errs.json()["data"].as_array().cloned().unwrap_or_default();
    assert_eq!(errs.len(), 2);
    assert_eq!(
        errs[0]["attributes"]["original_payload"]["attributes"]["email"],
        "broken"
    );
    assert_eq!(
        errs[0]["attributes"]["source"]["pointer"],
        "/data/attributes/profiles/data/2/attributes/email"
    );
    let ids = api
        .get(&format!(
            "/api/profile-bulk-import-jobs/{job}/relationships/profiles"
        ))
        .await;
    assert_eq!(ids.json()["data"].as_array().map(Vec::len), Some(3));
    let full = api
        .get(&format!(
            "/api/profile-bulk-import-jobs/{job}/profiles?page[size]=2"
        ))
        .await;
    assert_eq!(full.json()["data"].as_array().map(Vec::len), Some(2));
    assert!(full.json()["links"]["next"].is_string());
    let l = api
        .get(&format!("/api/profile-bulk-import-jobs/{job}/lists"))
        .await;
    assert_eq!(l.json()["data"][0]["id"], list);
    let jobs = api
        .get("/api/profile-bulk-import-jobs?filter=equals(status,\"complete\")")
        .await;
    assert_eq!(jobs.json()["data"].as_array().map(Vec::len), Some(1));

    // Nulls did not clear; patch_properties applied; everyone imported is on the list.
    let keep = api.sb.profile_by_email("keep@example.com").expect("kept");
    assert_eq!(keep.id, existing);
    assert_eq!(api.sb.profile(&existing), Some(keep.clone()));
    assert_eq!(keep.attributes["first_name"], "Keep");
    assert_eq!(keep.attributes["last_name"], "Changed");
    assert_eq!(keep.attributes["properties"]["tags"], json!(["old", "vip"]));
    let lists = api.sb.lists();
    assert_eq!(lists[0].members.len(), 3);
    let r = api
        .get(&format!(
            "/api/profile-bulk-import-jobs/{job}?include=lists"
        ))
        .await;
    assert_eq!(r.json()["included"][0]["type"], "list");
}

#[tokio::test]
async fn sandbox_bulk_import_limits() {
    let api = Api::new().await;
    let many: Vec<Value> = (0..10_001)
        .map(|i| json!({"type": "profile", "attributes": {"email": format!("m{i}@example.com")}}))
        .collect();
    let body = json!({"data": {"type": "profile-bulk-import-job", "attributes": {"profiles": {"data": many}}}});
    let r = api.post("/api/profile-bulk-import-jobs", &body).await;
    assert_eq!(r.status, 400);
    let body = json!({"data": {"type": "profile-bulk-import-job", "attributes": {"profiles": {"data": [
        {"type": "profile", "attributes": {"email": "a@example.com"}}]}},
        "relationships": {"lists": {"data": [{"type": "list", "id": "NoSuch"}]}}}});
    assert_eq!(
        api.post("/api/profile-bulk-import-jobs", &body)
            .await
            .status,
        404
    );
    assert_eq!(
        api.get("/api/profile-bulk-import-jobs/nope").await.status,
        404
    );
}

#[tokio::test]
async fn sandbox_bulk_import_10k_throughput() {
    let api = Api::new().await;
    let r = kdit::sandbox::bench_bulk(&api.sb, 10_000)
        .await
        .expect("bench runs");
    eprintln!(
        "10,000-profile bulk import: accepted in {:?}, complete in {:?}",
        r.accepted, r.completed
    );
    assert_eq!(api.sb.profile_count(), 10_000);
    // Generous bound for an unoptimized build on a shared machine; release is far below.
    assert!(
        r.completed < Duration::from_secs(3),
        "took {:?}",
        r.completed
    );
}

// ---------------------------------------------------------------- lists

#[tokio::test]
async fn sandbox_lists_crud_and_membership() {
    let api = Api::new().await;
    let a = api.create_list("Weekly Active").await;
    let _b = api.create_list("Lapsed").await;
    let r = api
        .get("/api/lists?filter=equals(name,\"Weekly Active\")")
        .await;
    assert_eq!(r.json()["data"].as_array().map(Vec::len), Some(1));
    assert_eq!(r.json()["data"][0]["id"], a);
    let r = api
        .post_invalid("/api/lists", &json!({"data": {"type": "list", "attributes": {"name": "X", "opt_in_process": "triple"}}}))
        .await;
    assert_eq!(r.status, 400);

    let patch = json!({"data": {"type": "list", "id": a, "attributes": {"name": "Weekly"}}});
    let r = api.patch(&format!("/api/lists/{a}"), &patch).await;
    assert_eq!(r.json()["data"]["attributes"]["name"], "Weekly");

    let mut ids = vec![];
    for i in 0..3 {
        ids.push(
            api.create_profile(json!({"email": format!("l{i}@example.com")}))
                .await,
        );
    }
    let rel = |ids: &[String]| json!({"data": ids.iter().map(|i| json!({"type": "profile", "id": i})).collect::<Vec<_>>()});
    let path = format!("/api/lists/{a}/relationships/profiles");
    let r = api.post(&path, &rel(&ids)).await;
    assert_eq!(r.status, 204);
    assert_eq!(
        api.post(&path, &rel(&ids[..1])).await.status,
        204,
        "re-adding is a no-op"
    );
    let r = api
        .get(&format!("/api/lists/{a}/profiles?page[size]=2"))
        .await;
    assert_eq!(r.json()["data"].as_array().map(Vec::len), Some(2));
    assert!(r.json()["data"][0]["attributes"]["joined_group_at"].is_string());
    assert!(r.json()["links"]["next"].is_string());
    let r = api
        .get(&format!(
            "/api/lists/{a}/profiles?filter=equals(email,\"l1@example.com\")"
        ))
        .await;
    assert_eq!(r.json()["data"][0]["id"], ids[1]);
    assert_eq!(api.delete(&path, Some(&rel(&ids[..2]))).await.status, 204);
    let r = api.get(&path).await;
    assert_eq!(r.json()["data"], json!([{"type": "profile", "id": ids[2]}]));
    let r = api
        .get(&format!(
            "/api/lists/{a}?additional-fields[list]=profile_count"
        ))
        .await;
    assert_eq!(r.json()["data"]["attributes"]["profile_count"], 1);

    // Unknown profile ids and more than 1,000 ids are refused.
    let r = api
        .post(&path, &rel(&["01GDDKASAP8TKDDA2GRZDSVP4H".to_string()]))
        .await;
    assert_eq!(r.status, 400);
    let many: Vec<String> = (0..1001).map(|_| ids[0].clone()).collect();
    assert_eq!(api.post(&path, &rel(&many)).await.status, 400);

    assert_eq!(
        api.delete(&format!("/api/lists/{a}"), None).await.status,
        204
    );
    assert_eq!(api.get(&format!("/api/lists/{a}")).await.status, 404);
}

#[tokio::test]
async fn sandbox_lists_paging_and_daily_cap() {
    let api = Api::new().await;
    for i in 0..12 {
        api.create_list(&format!("L{i}")).await;
    }
    let r = api.get("/api/lists").await;
    assert_eq!(r.json()["data"].as_array().map(Vec::len), Some(10));
    let next = r.json()["links"]["next"]
        .as_str()
        .expect("next")
        .to_string();
    let r = api.get(&next).await;
    assert_eq!(r.json()["data"].as_array().map(Vec::len), Some(2));
    assert!(r.json()["links"].get("next").is_none());
    for i in 12..150 {
        api.create_list(&format!("L{i}")).await;
    }
    let r = api
        .post(
            "/api/lists",
            &json!({"data": {"type": "list", "attributes": {"name": "one too many"}}}),
        )
        .await;
    assert_eq!(r.status, 429);
    assert!(r.header("retry-after").is_some());
}

// ---------------------------------------------------------------- segments

fn segment_body(name: &str, groups: Value) -> Value {
    json!({"data": {"type": "segment", "attributes": {"name": name,
        "definition": {"condition_groups": groups}}}})
}

#[tokio::test]
async fn sandbox_segments_membership() {
    let api = Api::new().await;
    let list = api.create_list("Members").await;
    let vip = api
        .create_profile(json!({"email": "vip@example.com", "properties": {"tags": ["vip"], "ltv": 500, "active": true}}))
        .await;
    let low = api
        .create_profile(json!({"email": "low@example.com", "properties": {"tags": ["x"], "ltv": "20", "active": false}}))
        .await;
    let _none = api.create_profile(json!({"email": "none@gmail.com"})).await;
    api.post(
        &format!("/api/lists/{list}/relationships/profiles"),
        &json!({"data": [{"type": "profile", "id": low}]}),
    )
    .await;

    // (tags contains vip OR in list) AND ltv set.
    let body = segment_body(
        "VIP or listed",
        json!([
            {"conditions": [
                {"type": "profile-property", "property": "properties['tags']",
                 "filter": {"type": "list", "operator": "contains", "value": "vip"}},
                {"type": "profile-group-membership", "is_member": true, "group_ids": [list]}]},
            {"conditions": [
                {"type": "profile-property", "property": "properties['ltv']",
                 "filter": {"type": "existence", "operator": "is-set"}}]}
        ]),
    );
    let r = api.post("/api/segments", &body).await;
    assert_eq!(r.status, 201, "{:?}", r.body);
    assert_eq!(r.json()["data"]["attributes"]["is_processing"], true);
    let seg = r.json()["data"]["id"].as_str().expect("id").to_string();
    let r = api
        .get(&format!("/api/segments/{seg}/relationships/profiles"))
        .await;
    let mut got: Vec<String> = r.json()["data"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .map(|p| p["id"].as_str().unwrap_or("").to_string())
        .collect();
    got.sort();
    let mut want = vec![vip.clone(), low.clone()];
    want.sort();
    assert_eq!(got, want);
    tokio::time::sleep(Duration::from_millis(250)).await;
    let r = api
        .get(&format!(
            "/api/segments/{seg}?additional-fields[segment]=profile_count"
        ))
        .await;
    assert_eq!(r.json()["data"]["attributes"]["is_processing"], false);
    assert_eq!(r.json()["data"]["attributes"]["profile_count"], 2);

    // Numeric, boolean and string filters.
    for (filter, prop, want) in [
        (
            json!({"type": "numeric", "operator": "greater-than", "value": 100}),
            "properties['ltv']",
            vec![vip.clone()],
        ),
        (
            json!({"type": "numeric", "operator": "less-than-or-equal", "value": 20}),
            "properties['ltv']",
            vec![low.clone()],
        ),
        (
            json!({"type": "boolean", "operator": "equals", "value": false}),
            "properties['active']",
            vec![low.clone()],
        ),
        (
            json!({"type": "string", "operator": "ends-with", "value": "@gmail.com"}),
            "email",
            vec![_none.clone()],
        ),
        (
            json!({"type": "existence", "operator": "not-set"}),
            "properties['tags']",
            vec![_none.clone()],
        ),
    ] {
        let body = segment_body(
            "f",
            json!([{"conditions": [
            {"type": "profile-property", "property": prop, "filter": filter}]}]),
        );
        let r = api.post("/api/segments", &body).await;
        let id = r.json()["data"]["id"].as_str().expect("id").to_string();
        let r = api.get(&format!("/api/segments/{id}/profiles")).await;
        let got: Vec<String> = r.json()["data"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .iter()
            .map(|p| p["id"].as_str().unwrap_or("").to_string())
            .collect();
        assert_eq!(got, want, "{filter}");
    }

    // Deactivation must be the only change.
    let bad = json!({"data": {"type": "segment", "id": seg, "attributes": {"is_active": false, "name": "x"}}});
    assert_eq!(
        api.patch(&format!("/api/segments/{seg}"), &bad)
            .await
            .status,
        400
    );
    let ok = json!({"data": {"type": "segment", "id": seg, "attributes": {"is_active": false}}});
    let r = api.patch(&format!("/api/segments/{seg}"), &ok).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["data"]["attributes"]["is_active"], false);
    let r = api
        .get("/api/segments?filter=equals(is_active,false)")
        .await;
    assert_eq!(r.json()["data"].as_array().map(Vec::len), Some(1));

    let bad = segment_body("bad", json!([{"conditions": [{"type": "profile-vibes"}]}]));
    assert_eq!(api.post_invalid("/api/segments", &bad).await.status, 400);
    let bad = segment_body(
        "bad",
        json!([{"conditions": [{"type": "profile-property", "property": "email",
        "filter": {"type": "numeric", "operator": "contains", "value": 1}}]}]),
    );
    assert_eq!(api.post_invalid("/api/segments", &bad).await.status, 400);
    let bad = segment_body(
        "bad",
        json!([{"conditions": [{"type": "profile-group-membership",
        "is_member": true, "group_ids": ["NoList"]}]}]),
    );
    let r = api.post("/api/segments", &bad).await;
    assert_eq!(r.status, 400);
    assert!(
        r.json()["errors"][0]["source"]["pointer"]
            .as_str()
            .is_some_and(|p| p.ends_with("/group_ids/0"))
    );
    assert_eq!(
        api.delete(&format!("/api/segments/{seg}"), None)
            .await
            .status,
        204
    );
    assert_eq!(
        api.get(&format!("/api/segments/{seg}/profiles"))
            .await
            .status,
        404
    );
}

// ---------------------------------------------------------------- tags

#[tokio::test]
async fn sandbox_tags_and_groups() {
    let api = Api::new().await;
    let r = api.get("/api/tag-groups").await;
    let default = r.json()["data"][0].clone();
    assert_eq!(default["attributes"]["default"], true);
    let default_id = default["id"].as_str().expect("id").to_string();
    assert_eq!(
        api.delete(&format!("/api/tag-groups/{default_id}"), None)
            .await
            .status,
        400
    );

    let r = api
        .post(
            "/api/tags",
            &json!({"data": {"type": "tag", "attributes": {"name": "automated"}}}),
        )
        .await;
    assert_eq!(r.status, 201);
    assert_eq!(
        r.json()["data"]["relationships"]["tag-group"]["data"]["id"],
        default_id
    );
    let tag = r.json()["data"]["id"].as_str().expect("id").to_string();

    let r = api
        .post("/api/tag-groups", &json!({"data": {"type": "tag-group", "attributes": {"name": "Tier", "exclusive": true}}}))
        .await;
    assert_eq!(r.status, 201);
    let tier = r.json()["data"]["id"].as_str().expect("id").to_string();
    let mk = |name: &str| {
        json!({"data": {"type": "tag", "attributes": {"name": name},
        "relationships": {"tag-group": {"data": {"type": "tag-group", "id": tier}}}}})
    };
    let gold = api.post("/api/tags", &mk("gold")).await.json()["data"]["id"]
        .as_str()
        .expect("id")
        .to_string();
    let silver = api.post("/api/tags", &mk("silver")).await.json()["data"]["id"]
        .as_str()
        .expect("id")
        .to_string();

    let list = api.create_list("Tagged").await;
    let seg = api
        .post(
            "/api/segments",
            &segment_body(
                "S",
                json!([{"conditions": [{"type": "profile-property",
            "property": "email", "filter": {"type": "existence", "operator": "is-set"}}]}]),
            ),
        )
        .await
        .json()["data"]["id"]
        .as_str()
        .expect("id")
        .to_string();
    let on_list = json!({"data": [{"type": "list", "id": list}]});
    assert_eq!(
        api.post(&format!("/api/tags/{tag}/relationships/lists"), &on_list)
            .await
            .status,
        204
    );
    assert_eq!(
        api.post(&format!("/api/tags/{gold}/relationships/lists"), &on_list)
            .await
            .status,
        204
    );
    // Exclusive group: a second tier tag on the same list is refused.
    assert_eq!(
        api.post(&format!("/api/tags/{silver}/relationships/lists"), &on_list)
            .await
            .status,
        400
    );
    let on_seg = json!({"data": [{"type": "segment", "id": seg}]});
    assert_eq!(
        api.post(
            &format!("/api/tags/{silver}/relationships/segments"),
            &on_seg
        )
        .await
        .status,
        204
    );
    let r = api
        .get(&format!("/api/tags/{tag}/relationships/lists"))
        .await;
    assert_eq!(r.json()["data"], json!([{"type": "list", "id": list}]));
    let r = api.get(&format!("/api/lists/{list}/tags")).await;
    assert_eq!(r.json()["data"].as_array().map(Vec::len), Some(2));
    let r = api
        .get(&format!("/api/tags/{silver}/relationships/segments"))
        .await;
    assert_eq!(r.json()["data"][0]["id"], seg);
    assert_eq!(
        api.delete(
            &format!("/api/tags/{gold}/relationships/lists"),
            Some(&on_list)
        )
        .await
        .status,
        204
    );
    assert_eq!(
        api.post(&format!("/api/tags/{silver}/relationships/lists"), &on_list)
            .await
            .status,
        204
    );

    let r = api
        .patch(
            &format!("/api/tags/{tag}"),
            &json!({"data": {"type": "tag", "id": tag, "attributes": {"name": "auto"}}}),
        )
        .await;
    assert_eq!(r.status, 204);
    assert!(r.body.is_none());
    let r = api.get("/api/tags?filter=starts-with(name,\"au\")").await;
    assert_eq!(r.json()["data"][0]["attributes"]["name"], "auto");
    let r = api
        .patch(
            &format!("/api/tag-groups/{tier}"),
            &json!({"data": {"type": "tag-group", "id": tier, "attributes": {"name": "Tiers"}}}),
        )
        .await;
    assert_eq!(r.status, 204);
    let tags = api.sb.tags();
    assert_eq!(tags.len(), 3);
    assert_eq!(
        api.delete(&format!("/api/tag-groups/{tier}"), None)
            .await
            .status,
        204
    );
    assert_eq!(api.sb.tags().len(), 1, "deleting a group deletes its tags");
    assert_eq!(
        api.delete(&format!("/api/tags/{tag}"), None).await.status,
        204
    );
    assert_eq!(api.get(&format!("/api/tags/{tag}")).await.status, 404);
}

#[tokio::test]
async fn sandbox_tag_limits() {
    let api = Api::new().await;
    let list = api.create_list("Many").await;
    let on_list = json!({"data": [{"type": "list", "id": list}]});
    for i in 0..101 {
        let r = api
            .post(
                "/api/tags",
                &json!({"data": {"type": "tag", "attributes": {"name": format!("t{i}")}}}),
            )
            .await;
        let id = r.json()["data"]["id"].as_str().expect("id").to_string();
        let r = api
            .post(&format!("/api/tags/{id}/relationships/lists"), &on_list)
            .await;
        assert_eq!(r.status, if i < 100 { 204 } else { 400 }, "tag {i}");
    }
    for i in 101..500 {
        let r = api
            .post(
                "/api/tags",
                &json!({"data": {"type": "tag", "attributes": {"name": format!("t{i}")}}}),
            )
            .await;
        assert_eq!(r.status, 201);
    }
    let r = api
        .post(
            "/api/tags",
            &json!({"data": {"type": "tag", "attributes": {"name": "t500"}}}),
        )
        .await;
    assert_eq!(r.status, 400);
    for i in 1..50 {
        let r = api
            .post(
                "/api/tag-groups",
                &json!({"data": {"type": "tag-group", "attributes": {"name": format!("g{i}")}}}),
            )
            .await;
        assert_eq!(r.status, 201, "group {i}");
    }
    let r = api
        .post(
            "/api/tag-groups",
            &json!({"data": {"type": "tag-group", "attributes": {"name": "g50"}}}),
        )
        .await;
    assert_eq!(r.status, 400);
}

// ---------------------------------------------------------------- consent

#[tokio::test]
async fn sandbox_subscriptions() {
    let api = Api::new().await;
    let list = api.create_list("Newsletter").await;
    let body = json!({"data": {"type": "profile-subscription-bulk-create-job", "attributes": {
        "custom_source": "kdit test",
        "profiles": {"data": [
            {"type": "profile", "attributes": {"email": "sub@example.com",
                "subscriptions": {"email": {"marketing": {"consent": "SUBSCRIBED"}}}}},
            {"type": "profile", "attributes": {"phone_number": "+15005550006",
                "subscriptions": {"sms": {"marketing": {"consent": "SUBSCRIBED"}}}}}
        ]}},
        "relationships": {"list": {"data": {"type": "list", "id": list}}}}});
    let r = api
        .post("/api/profile-subscription-bulk-create-jobs", &body)
        .await;
    assert_eq!(r.status, 202);
    assert!(r.body.is_none());
    let r = api
        .get("/api/profiles?filter=equals(email,\"sub@example.com\")&additional-fields[profile]=subscriptions")
        .await;
    let m = &r.json()["data"][0]["attributes"]["subscriptions"]["email"]["marketing"];
    assert_eq!(m["consent"], "SUBSCRIBED");
    assert_eq!(m["can_receive_email_marketing"], true);
    assert_eq!(m["method_detail"], "kdit test");
    assert_eq!(api.sb.lists()[0].members.len(), 2);

    // consented_at without historical_import, and an over-long batch, are refused.
    let bad = json!({"data": {"type": "profile-subscription-bulk-create-job", "attributes": {
        "profiles": {"data": [{"type": "profile", "attributes": {"email": "x@example.com",
            "subscriptions": {"email": {"marketing": {"consent": "SUBSCRIBED", "consented_at": "2024-01-01T00:00:00Z"}}}}}]}}}});
    assert_eq!(
        api.post("/api/profile-subscription-bulk-create-jobs", &bad)
            .await
            .status,
        400
    );

    let unsub = json!({"data": {"type": "profile-subscription-bulk-delete-job", "attributes": {
        "profiles": {"data": [{"type": "profile", "attributes": {"email": "sub@example.com",
            "subscriptions": {"email": {"marketing": {"consent": "UNSUBSCRIBED"}}}}}]}}}});
    assert_eq!(
        api.post("/api/profile-subscription-bulk-delete-jobs", &unsub)
            .await
            .status,
        202
    );
    let p = api.sb.profile_by_email("sub@example.com").expect("profile");
    assert_eq!(
        p.subscriptions.expect("consent")["email"]["marketing"]["consent"],
        "UNSUBSCRIBED"
    );
    let many: Vec<Value> = (0..101)
        .map(|i| {
            json!({"type": "profile", "attributes": {"email": format!("u{i}@example.com"),
            "subscriptions": {"email": {"marketing": {"consent": "UNSUBSCRIBED"}}}}})
        })
        .collect();
    let body = json!({"data": {"type": "profile-subscription-bulk-delete-job", "attributes": {"profiles": {"data": many}}}});
    assert_eq!(
        api.post("/api/profile-subscription-bulk-delete-jobs", &body)
            .await
            .status,
        400
    );
}

// ---------------------------------------------------------------- rate limits and faults

#[tokio::test]
async fn sandbox_rate_limit_headers_and_429() {
    let api = Api::with(SandboxConfig::default()).await;
    let r = api.get("/api/accounts").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("ratelimit-limit"), Some("15"));
    assert_eq!(r.header("ratelimit-remaining"), Some("14"));
    let reset: u64 = r
        .header("ratelimit-reset")
        .and_then(|s| s.parse().ok())
        .expect("reset");
    assert!((1..=60).contains(&reset));
    // XS burst is 1/s: the next call in the same second is throttled (unless the second
    // just rolled over, so try a few times).
    let mut limited = None;
    for _ in 0..5 {
        let r = api.get("/api/accounts").await;
        if r.status == 429 {
            limited = Some(r);
            break;
        }
    }
    let r = limited.expect("a 429 within the burst window");
    assert!(r.header("retry-after").is_some());
    assert!(r.header("ratelimit-limit").is_none());
    assert_eq!(r.error_code(), "throttled");
    // Other endpoints have their own windows.
    let r = api.get("/api/profiles").await;
    assert_eq!(r.header("ratelimit-limit"), Some("750"));
    api.sb.set_rate_limits(RateLimits::Off);
    for _ in 0..3 {
        let r = api.get("/api/accounts").await;
        assert_eq!(r.status, 200);
        assert!(r.header("ratelimit-limit").is_none());
    }
}

#[tokio::test]
async fn sandbox_faults_inject_errors() {
    let spec: FaultSpec = "5xx=100%".parse().expect("spec");
    let api = Api::with(SandboxConfig {
        rate_limits: RateLimits::Off,
        faults: spec,
        seed: 3,
        ..SandboxConfig::default()
    })
    .await;
    for _ in 0..5 {
        let r = api.get("/api/accounts").await;
        assert!([500, 502, 503].contains(&r.status), "{}", r.status);
    }
    api.sb.set_faults("429=100%".parse().expect("spec"), None);
    let r = api.get("/api/accounts").await;
    assert_eq!(r.status, 429);
    assert!(r.header("retry-after").is_some());

    api.sb.set_faults("drop=100%".parse().expect("spec"), None);
    let err = api
        .http
        .get(api.url("/api/accounts"))
        .header(
            "Authorization",
            format!("Klaviyo-API-Key {}", api.sb.api_key()),
        )
        .header("revision", REVISION)
        .send()
        .await;
    assert!(err.is_err(), "connection dropped without a response");

    // Switch faults off over HTTP, then slow responses.
    let r = api
        .send(
            api.http
                .post(api.url("/_sandbox/faults"))
                .body(r#"{"spec": "slow=100%:300ms"}"#),
        )
        .await;
    assert_eq!(r.status, 200);
    let t = std::time::Instant::now();
    assert_eq!(api.get("/api/accounts").await.status, 200);
    assert!(t.elapsed() >= Duration::from_millis(300));
    let r = api
        .send(
            api.http
                .post(api.url("/_sandbox/faults"))
                .body(r#"{"spec": "bogus"}"#),
        )
        .await;
    assert_eq!(r.status, 400);

    // Bulk failures.
    api.sb
        .set_faults("bulk-fail=100%".parse().expect("spec"), None);
    let body = json!({"data": {"type": "profile-bulk-import-job", "attributes": {"profiles": {"data": [
        {"type": "profile", "attributes": {"email": "f1@example.com"}},
        {"type": "profile", "attributes": {"email": "f2@example.com"}}]}}}});
    let job = api.bulk(&body).await;
    let j = api
        .get(&format!("/api/profile-bulk-import-jobs/{job}"))
        .await;
    assert_eq!(j.json()["data"]["attributes"]["failed_count"], 2);
    assert_eq!(api.sb.profile_count(), 0);
}

#[tokio::test]
async fn sandbox_faults_deterministic_by_seed() {
    async fn run(seed: u64) -> Vec<u16> {
        let api = Api::with(SandboxConfig {
            rate_limits: RateLimits::Off,
            faults: "429=30%,5xx=30%".parse().expect("spec"),
            seed,
            ..SandboxConfig::default()
        })
        .await;
        let mut out = vec![];
        for _ in 0..20 {
            out.push(api.get("/api/accounts").await.status);
        }
        out
    }
    let a = run(42).await;
    assert_eq!(a, run(42).await);
    assert!(a.contains(&200) && a.iter().any(|s| *s != 200));
}

// ---------------------------------------------------------------- inspection

#[tokio::test]
async fn sandbox_inspection_and_reset() {
    let api = Api::new().await;
    api.create_profile(json!({"email": "seen@example.com"}))
        .await;
    api.get("/api/profiles").await;
    api.get("/api/profiles").await;
    api.post(
        "/api/profiles",
        &profile(json!({"email": "seen@example.com"})),
    )
    .await;
    let counts = api.sb.request_counts();
    assert_eq!(counts.get("GET /api/profiles"), Some(&2));
    assert_eq!(counts.get("POST /api/profiles"), Some(&2));
    let stats = api.sb.stats();
    assert_eq!(stats.by_endpoint_status["POST /api/profiles"][&409], 1);
    assert_eq!(stats.total, 4);

    let log = api.sb.requests();
    assert_eq!(log.len(), 4);
    assert_eq!(log[3].endpoint, "POST /api/profiles");
    assert_eq!(log[3].status, 409);
    assert_eq!(log[1].uri, "/api/profiles");
    let r = api.send(api.http.get(api.url("/_sandbox/requests"))).await;
    assert_eq!(r.json()["requests"][0]["status"], 201);
    let r = api.send(api.http.get(api.url("/_sandbox/stats"))).await;
    assert_eq!(r.json()["by_endpoint"]["GET /api/profiles"], 2);
    let r = api
        .send(
            api.http
                .get(api.url("/_sandbox/profiles?email=SEEN@example.com")),
        )
        .await;
    assert_eq!(r.json()["count"], 1);
    let r = api.send(api.http.get(api.url("/_sandbox/lists"))).await;
    assert_eq!(r.json()["lists"], json!([]));
    let r = api.send(api.http.post(api.url("/_sandbox/reset"))).await;
    assert_eq!(r.status, 200);
    assert_eq!(api.sb.profile_count(), 0);
    assert_eq!(api.sb.stats().total, 0);
    let r = api.send(api.http.get(api.url("/_sandbox/nope"))).await;
    assert_eq!(r.status, 404);
}

#[tokio::test]
async fn sandbox_state_file_round_trip() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("state.json");
    let config = SandboxConfig {
        rate_limits: RateLimits::Off,
        state_file: Some(path.clone()),
        ..SandboxConfig::default()
    };
    let api = Api::with(config.clone()).await;
    let id = api
        .create_profile(json!({"email": "persist@example.com"}))
        .await;
    let list = api.create_list("Kept").await;
    api.post(
        &format!("/api/lists/{list}/relationships/profiles"),
        &json!({"data": [{"type": "profile", "id": id}]}),
    )
    .await;
    api.sb.save().expect("saved");
    drop(api);
    let api = Api::with(config).await;
    assert_eq!(
        api.sb.profile_by_email("persist@example.com").map(|p| p.id),
        Some(id.clone())
    );
    assert_eq!(api.sb.lists()[0].members, vec![id]);
    let r = api
        .get("/api/profiles?filter=equals(email,\"persist@example.com\")")
        .await;
    assert_eq!(r.json()["data"].as_array().map(Vec::len), Some(1));
}

// ---------------------------------------------------------------- the spec checker itself

#[test]
fn sandbox_openapi_checker_catches_violations() {
    assert_eq!(
        openapi::template_for("/api/profiles/01GDDKASAP8TKDDA2GRZDSVP4H/").as_deref(),
        Some("/api/profiles/{id}")
    );
    assert_eq!(
        openapi::template_for("/api/lists/Ab12Cd/relationships/profiles").as_deref(),
        Some("/api/lists/{id}/relationships/profiles")
    );
    assert_eq!(
        openapi::template_for("https://a.klaviyo.com/api/profile-import/?x=1").as_deref(),
        Some("/api/profile-import")
    );
    assert_eq!(openapi::template_for("/api/nope"), None);
    let ok = json!({"data": {"type": "profile", "attributes": {"email": "a@example.com"}}});
    openapi::check_request("POST", "/api/profiles", &ok).expect("valid request");
    let bad = json!({"data": {"type": "profile", "attributes": {"email": 5}}});
    assert!(openapi::check_request("POST", "/api/profiles", &bad).is_err());
    let bad = json!({"data": {"type": "list", "attributes": {}}});
    assert!(openapi::check_request("POST", "/api/profiles", &bad).is_err());
    // Responses: a missing required member, a wrong enum value, a body where none belongs.
    let bad = json!({"data": [{"type": "account", "id": "x"}]});
    assert!(openapi::check_response("GET", "/api/accounts", 200, Some(&bad)).is_err());
    let bad = json!({"data": {"type": "profile-bulk-import-job", "id": "x", "attributes": {
        "status": "exploded", "created_at": "2024-01-01T00:00:00+00:00", "total_count": 1},
        "links": {"self": "http://x/"}}});
    assert!(
        openapi::check_response("POST", "/api/profile-bulk-import-jobs", 202, Some(&bad)).is_err()
    );
    assert!(openapi::check_response("DELETE", "/api/lists/x", 204, Some(&json!({}))).is_err());
    openapi::check_response("DELETE", "/api/lists/x", 204, None).expect("no body");
    let err = json!({"errors": [{"id": "1", "code": "invalid", "title": "t", "detail": "d"}]});
    openapi::check_response("GET", "/api/lists", 400, Some(&err)).expect("error body");
    assert!(openapi::check_response("GET", "/api/lists", 400, Some(&json!({}))).is_err());
}

#[tokio::test]
async fn sandbox_query_parameter_rate_limits() {
    let api = Api::with(SandboxConfig::default()).await;
    let list = api.create_list("Counted").await;
    let r = api.get(&format!("/api/lists/{list}")).await;
    assert_eq!(r.header("ratelimit-limit"), Some("750"));
    let r = api
        .get(&format!(
            "/api/lists/{list}?additional-fields[list]=profile_count"
        ))
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("ratelimit-limit"), Some("15"));
}

#[tokio::test]
async fn sandbox_bulk_conflicts_and_ids() {
    let api = Api::new().await;
    let a = api.create_profile(json!({"email": "a@example.com"})).await;
    let _b = api.create_profile(json!({"external_id": "b-1"})).await;
    let body = json!({"data": {"type": "profile-bulk-import-job", "attributes": {"profiles": {"data": [
        // email of one profile, external id of another: refused, never merged.
        {"type": "profile", "attributes": {"email": "a@example.com", "external_id": "b-1"}},
        // by Klaviyo id: the email changes on that profile.
        {"type": "profile", "id": a, "attributes": {"email": "a2@example.com"}},
        {"type": "profile", "id": "01GDDKASAP8TKDDA2GRZDSVP4H", "attributes": {"email": "z@example.com"}}
    ]}}}});
    let job = api.bulk(&body).await;
    let errs = api
        .get(&format!(
            "/api/profile-bulk-import-jobs/{job}/import-errors"
        ))
        .await;
    let errs = errs.json()["data"].as_array().cloned().unwrap_or_default();
    let codes: Vec<&str> = errs
        .iter()
        .filter_map(|e| e["attributes"]["code"].as_str())
        .collect();
    assert_eq!(codes, vec!["duplicate_profile", "not_found"]);
    assert_eq!(
        api.sb.profile_by_email("a2@example.com").map(|p| p.id),
        Some(a)
    );
}

#[tokio::test]
async fn sandbox_segment_member_paging_and_nested_fields() {
    let api = Api::new().await;
    for i in 0..3 {
        api.create_profile(json!({"email": format!("s{i}@example.com"), "location": {"city": "Oslo", "zip": "0150"}}))
            .await;
    }
    let body = segment_body(
        "Oslo",
        json!([{"conditions": [{"type": "profile-property", "property": "location['city']",
            "filter": {"type": "string", "operator": "equals", "value": "Oslo"}}]}]),
    );
    let seg = api.post("/api/segments", &body).await.json()["data"]["id"]
        .as_str()
        .expect("id")
        .to_string();
    let mut url = Some(api.url(&format!(
        "/api/segments/{seg}/profiles?page[size]=2&fields[profile]=email,location.city"
    )));
    let mut n = 0;
    while let Some(u) = url {
        let r = api.get(&u).await;
        for p in r.json()["data"].as_array().cloned().unwrap_or_default() {
            assert_eq!(p["attributes"]["location"], json!({"city": "Oslo"}));
            assert!(p["attributes"]["joined_group_at"].is_string());
            n += 1;
        }
        url = r.json()["links"]["next"].as_str().map(str::to_string);
    }
    assert_eq!(n, 3);
    assert_eq!(api.sb.segments()[0].members.len(), 3);
}

#[tokio::test]
async fn sandbox_historical_consent() {
    let api = Api::new().await;
    let body = json!({"data": {"type": "profile-subscription-bulk-create-job", "attributes": {
        "historical_import": true,
        "profiles": {"data": [{"type": "profile", "attributes": {"email": "old@example.com",
            "subscriptions": {"email": {"marketing": {"consent": "SUBSCRIBED",
                "consented_at": "2020-05-01T10:00:00+00:00"}}}}}]}}}});
    assert_eq!(
        api.post("/api/profile-subscription-bulk-create-jobs", &body)
            .await
            .status,
        202
    );
    let p = api.sb.profile_by_email("old@example.com").expect("created");
    let m = &p.subscriptions.expect("consent")["email"]["marketing"];
    assert_eq!(m["consent_timestamp"], "2020-05-01T10:00:00.000+00:00");
    // Without consented_at a historical import is refused.
    let body = json!({"data": {"type": "profile-subscription-bulk-create-job", "attributes": {
        "historical_import": true,
        "profiles": {"data": [{"type": "profile", "attributes": {"email": "old2@example.com",
            "subscriptions": {"email": {"marketing": {"consent": "SUBSCRIBED"}}}}}]}}}});
    assert_eq!(
        api.post("/api/profile-subscription-bulk-create-jobs", &body)
            .await
            .status,
        400
    );
}

#[tokio::test]
async fn sandbox_includes() {
    let api = Api::new().await;
    let pid = api
        .create_profile(json!({"email": "inc@example.com"}))
        .await;
    let list = api.create_list("Included").await;
    api.post(
        &format!("/api/lists/{list}/relationships/profiles"),
        &json!({"data": [{"type": "profile", "id": pid}]}),
    )
    .await;
    let seg = api
        .post(
            "/api/segments",
            &segment_body(
                "All",
                json!([{"conditions": [{"type": "profile-property",
            "property": "email", "filter": {"type": "existence", "operator": "is-set"}}]}]),
            ),
        )
        .await
        .json()["data"]["id"]
        .as_str()
        .expect("id")
        .to_string();
    let tag = api
        .post(
            "/api/tags",
            &json!({"data": {"type": "tag", "attributes": {"name": "inc"}}}),
        )
        .await
        .json()["data"]["id"]
        .as_str()
        .expect("id")
        .to_string();
    api.post(
        &format!("/api/tags/{tag}/relationships/lists"),
        &json!({"data": [{"type": "list", "id": list}]}),
    )
    .await;

    let r = api
        .get(&format!("/api/profiles/{pid}?include=lists,segments"))
        .await;
    assert_eq!(
        r.json()["data"]["relationships"]["lists"]["data"][0]["id"],
        list
    );
    assert_eq!(
        r.json()["data"]["relationships"]["segments"]["data"][0]["id"],
        seg
    );
    assert_eq!(r.json()["included"].as_array().map(Vec::len), Some(2));
    let r = api.get(&format!("/api/lists/{list}?include=tags")).await;
    assert_eq!(r.json()["included"][0]["attributes"]["name"], "inc");
    let r = api.get("/api/lists?include=tags").await;
    assert_eq!(
        r.json()["data"][0]["relationships"]["tags"]["data"][0]["id"],
        tag
    );
    let r = api.get("/api/tags?include=tag-group").await;
    assert_eq!(r.json()["included"][0]["attributes"]["default"], true);
    let r = api.get(&format!("/api/segments/{seg}?include=tags")).await;
    assert_eq!(r.json()["included"], json!([]));
    let r = api
        .get(&format!("/api/profiles/{pid}/lists?fields[list]=name"))
        .await;
    assert_eq!(
        r.json()["data"][0]["attributes"],
        json!({"name": "Included"})
    );
    let r = api
        .get(&format!("/api/profiles/{pid}/relationships/segments"))
        .await;
    assert_eq!(r.json()["data"], json!([{"type": "segment", "id": seg}]));
    let r = api.get(&format!("/api/profiles/{pid}/segments")).await;
    assert_eq!(r.json()["data"][0]["attributes"]["name"], "All");
    let r = api
        .get(&format!("/api/profiles/{pid}/relationships/lists"))
        .await;
    assert_eq!(r.json()["data"], json!([{"type": "list", "id": list}]));
    let r = api.get("/api/profiles?include=lists").await;
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["errors"][0]["source"]["parameter"], "include");
}

#[tokio::test]
async fn sandbox_sorting() {
    let api = Api::new().await;
    let mut first = String::new();
    for e in ["c@example.com", "a@example.com", "b@example.com"] {
        let id = api.create_profile(json!({"email": e})).await;
        if first.is_empty() {
            first = id;
        }
    }
    // Touch the first profile last, so `updated` order differs from id order.
    tokio::time::sleep(Duration::from_millis(5)).await;
    let body = json!({"data": {"type": "profile", "id": first, "attributes": {"title": "x"}}});
    api.patch(&format!("/api/profiles/{first}"), &body).await;
    let emails = |r: &sandbox::Resp| -> Vec<String> {
        r.json()["data"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .iter()
            .map(|p| p["attributes"]["email"].as_str().unwrap_or("").to_string())
            .collect()
    };
    let r = api.get("/api/profiles?sort=email&page[size]=2").await;
    assert_eq!(emails(&r), ["a@example.com", "b@example.com"]);
    let next = r.json()["links"]["next"]
        .as_str()
        .expect("next")
        .to_string();
    assert_eq!(emails(&api.get(&next).await), ["c@example.com"]);
    let r = api.get("/api/profiles?sort=-email").await;
    assert_eq!(
        emails(&r),
        ["c@example.com", "b@example.com", "a@example.com"]
    );
    let r = api.get("/api/profiles?sort=-updated&page[size]=1").await;
    assert_eq!(emails(&r), ["c@example.com"]);
    assert_eq!(api.get("/api/profiles?sort=first_name").await.status, 400);

    for name in ["Zeta", "Alpha", "Mid"] {
        api.create_list(name).await;
    }
    let names = |r: &sandbox::Resp| -> Vec<String> {
        r.json()["data"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .iter()
            .map(|l| l["attributes"]["name"].as_str().unwrap_or("").to_string())
            .collect()
    };
    assert_eq!(
        names(&api.get("/api/lists?sort=name").await),
        ["Alpha", "Mid", "Zeta"]
    );
    assert_eq!(
        names(&api.get("/api/lists?sort=-name&page[size]=1").await),
        ["Zeta"]
    );
    assert_eq!(api.get("/api/lists?sort=size").await.status, 400);
    for name in ["b-tag", "a-tag"] {
        api.post(
            "/api/tags",
            &json!({"data": {"type": "tag", "attributes": {"name": name}}}),
        )
        .await;
    }
    assert_eq!(
        names(&api.get("/api/tags?sort=name").await),
        ["a-tag", "b-tag"]
    );

    let list = api.sb.lists()[0].id.clone();
    let ids: Vec<String> = api.sb.profiles().iter().map(|p| p.id.clone()).collect();
    for id in ids.iter().rev() {
        api.post(
            &format!("/api/lists/{list}/relationships/profiles"),
            &json!({"data": [{"type": "profile", "id": id}]}),
        )
        .await;
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let r = api
        .get(&format!(
            "/api/lists/{list}/relationships/profiles?sort=joined_group_at"
        ))
        .await;
    let got: Vec<&str> = r.json()["data"]
        .as_array()
        .map(|a| a.iter().filter_map(|p| p["id"].as_str()).collect())
        .unwrap_or_default();
    let want: Vec<&str> = ids.iter().rev().map(String::as_str).collect();
    assert_eq!(got, want);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sandbox_concurrent_load_with_faults() {
    let api = std::sync::Arc::new(
        Api::with(SandboxConfig {
            rate_limits: RateLimits::Off,
            faults: "5xx=10%,drop=5%,slow=5%:5ms,bulk-fail=10%"
                .parse()
                .expect("spec"),
            seed: 9,
            ..SandboxConfig::default()
        })
        .await,
    );
    let mut tasks = tokio::task::JoinSet::new();
    for t in 0..16 {
        let api = api.clone();
        tasks.spawn(async move {
            let key = format!("Klaviyo-API-Key {}", api.sb.api_key());
            let mut sent = 0u64;
            for i in 0..20 {
                let body = json!({"data": {"type": "profile", "attributes": {
                    "email": format!("t{t}-{i}@example.com"), "properties": {"i": i}}}});
                let rb = if i % 3 == 0 {
                    api.http.get(api.url("/api/profiles?page[size]=5"))
                } else {
                    api.http
                        .post(api.url("/api/profile-import"))
                        .header("Content-Type", "application/vnd.api+json")
                        .body(body.to_string())
                };
                sent += 1;
                // Dropped connections surface as errors; everything else must be a response.
                if let Ok(r) = rb
                    .header("Authorization", &key)
                    .header("revision", REVISION)
                    .send()
                    .await
                {
                    let status = r.status().as_u16();
                    assert!([200, 201, 500, 502, 503].contains(&status), "{status}");
                }
            }
            sent
        });
    }
    let mut sent = 0;
    while let Some(n) = tasks.join_next().await {
        sent += n.expect("task");
    }
    let stats = api.sb.stats();
    // Every request reached the sandbox (a client may resend one it could not write).
    assert!(stats.total >= sent, "{} < {sent}", stats.total);
    assert!(
        stats.by_status.get(&0).copied().unwrap_or(0) > 0,
        "some connections dropped"
    );
    api.sb.set_faults(FaultSpec::none(), None);
    assert_eq!(api.get("/api/accounts").await.status, 200);
}
