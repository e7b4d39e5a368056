//! The tenant endpoints against a real API, PostgreSQL and Redis.

use ai_agents::{
    crypto::{Binding, Keyring, SecretField},
    domain::TenantId,
};
use reqwest::Method;
use secrecy::{ExposeSecret, SecretString};
use serde_json::{Value, json};

use crate::helpers::{TEST_KEY, TestApp, assert_problem};

fn valid_body(tenant_id: &str) -> Value {
    json!({
        "tenant_id": tenant_id,
        "name": "Acme",
        "servicedesk_url": "https://desk.acme.test",
        "servicedesk_api_key": "sd-key-PLAINTEXT-1",
        "webhook_signing_secret": "wh-secret-PLAINTEXT-1",
        "enhancement_preferences": {"tone": "formal"}
    })
}

/// A valid body with `field` set to `value` (added when it is not a field of the body).
fn with(field: &str, value: Value) -> Value {
    let mut body = valid_body("x");
    body[field] = value;
    body
}

#[tokio::test]
async fn create_read_update_delete() {
    let app = TestApp::spawn().await;
    let created = app
        .req(Method::POST, "/api/v1/tenants")
        .json(&valid_body("acme"))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 201);
    let tenant: Value = created.json().await.unwrap();
    assert_eq!(tenant["tenant_id"], "acme");
    assert_eq!(tenant["enhancement_preferences"]["tone"], "formal");

    let fetched = app.get_json("/api/v1/tenants/acme").await;
    assert_eq!(fetched["name"], "Acme");

    let patched = app
        .req(Method::PATCH, "/api/v1/tenants/acme")
        .json(&json!({"name": "Acme Corp", "servicedesk_api_key": "rotated-key"}))
        .send()
        .await
        .unwrap();
    assert_eq!(patched.status(), 200);
    let patched: Value = patched.json().await.unwrap();
    assert_eq!(patched["name"], "Acme Corp");
    assert_eq!(patched["servicedesk_url"], "https://desk.acme.test");
    assert!(patched["updated_at"].as_str() > tenant["updated_at"].as_str());

    let deleted = app
        .req(Method::DELETE, "/api/v1/tenants/acme")
        .send()
        .await
        .unwrap();
    assert_eq!(deleted.status(), 204);
    assert_problem(
        app.req(Method::GET, "/api/v1/tenants/acme")
            .send()
            .await
            .unwrap(),
        404,
    )
    .await;
    assert_problem(
        app.req(Method::DELETE, "/api/v1/tenants/acme")
            .send()
            .await
            .unwrap(),
        404,
    )
    .await;
    assert_problem(
        app.req(Method::PATCH, "/api/v1/tenants/acme")
            .json(&json!({"name": "x"}))
            .send()
            .await
            .unwrap(),
        404,
    )
    .await;
}

#[tokio::test]
async fn duplicate_tenant_is_a_conflict() {
    let app = TestApp::spawn().await;
    app.create_tenant("dup").await;
    let again = app
        .req(Method::POST, "/api/v1/tenants")
        .json(&valid_body("dup"))
        .send()
        .await
        .unwrap();
    let body = assert_problem(again, 409).await;
    assert!(body["detail"].as_str().unwrap().contains("dup"));
}

#[tokio::test]
async fn secrets_never_leave_and_are_stored_encrypted() {
    let app = TestApp::spawn().await;
    let mut responses = Vec::new();
    let created = app
        .req(Method::POST, "/api/v1/tenants")
        .json(&valid_body("s1"))
        .send()
        .await
        .unwrap();
    responses.push(created.text().await.unwrap());
    let created = app
        .req(Method::POST, "/api/v1/tenants")
        .json(&valid_body("s2"))
        .send()
        .await
        .unwrap();
    responses.push(created.text().await.unwrap());
    responses.push(
        app.req(Method::GET, "/api/v1/tenants/s1")
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap(),
    );
    responses.push(
        app.req(Method::GET, "/api/v1/tenants")
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap(),
    );
    let patched = app
        .req(Method::PATCH, "/api/v1/tenants/s1")
        .json(&json!({"webhook_signing_secret": "wh-secret-PLAINTEXT-2"}))
        .send()
        .await
        .unwrap();
    responses.push(patched.text().await.unwrap());
    for text in &responses {
        assert!(!text.contains("PLAINTEXT"), "secret in response: {text}");
        assert!(
            !text.contains("servicedesk_api_key"),
            "secret field in response: {text}"
        );
        assert!(
            !text.contains("webhook_signing_secret"),
            "secret field in response: {text}"
        );
    }

    let owner = app.db.owner_pool().await;
    let mut tx = owner.begin().await.unwrap();
    sqlx::query("SELECT set_config('app.cross_tenant', 'on', true)")
        .execute(&mut *tx)
        .await
        .unwrap();
    let rows: Vec<(String, String, String)> = sqlx::query_as(
        "SELECT tenant_id, servicedesk_api_key_encrypted, webhook_signing_secret_encrypted \
         FROM tenant_configs ORDER BY tenant_id",
    )
    .fetch_all(&mut *tx)
    .await
    .unwrap();
    assert_eq!(rows.len(), 2);
    let keyring = Keyring::new(&SecretString::from(TEST_KEY), &[]).unwrap();
    let tagged = format!("v2:{}:", keyring.current_key_id());
    for (_, key, secret) in &rows {
        assert!(key.starts_with(&tagged) && secret.starts_with(&tagged));
        assert!(!key.contains("PLAINTEXT") && !secret.contains("PLAINTEXT"));
    }
    // The same plaintext was sent for both tenants: the ciphertexts still differ.
    assert_ne!(rows[0].1, rows[1].1);
    let s1 = TenantId::parse("s1").unwrap();
    let open = |stored: &str, field| {
        keyring
            .decrypt(stored, Binding { tenant: &s1, field })
            .unwrap()
            .secret
            .expose_secret()
            .to_owned()
    };
    assert_eq!(
        open(&rows[0].1, SecretField::ServicedeskApiKey),
        "sd-key-PLAINTEXT-1"
    );
    assert_eq!(
        open(&rows[0].2, SecretField::WebhookSigningSecret),
        "wh-secret-PLAINTEXT-2"
    );
}

/// A secret sent where the schema wants another type is refused without being quoted back:
/// the parser's message names the expected type, never the value received.
#[tokio::test]
async fn a_secret_of_the_wrong_type_is_not_echoed() {
    let app = TestApp::spawn().await;
    app.create_tenant("echo").await;
    let marker = "sk-live-WRONG-TYPE-marker";
    for (field, value) in [
        ("servicedesk_api_key", json!([marker])),
        ("webhook_signing_secret", json!({"secret": marker})),
    ] {
        for method in [Method::POST, Method::PATCH] {
            let path = if method == Method::POST {
                "/api/v1/tenants"
            } else {
                "/api/v1/tenants/echo"
            };
            let body = if method == Method::POST {
                with(field, value.clone())
            } else {
                json!({ field: value.clone() })
            };
            let response = app
                .req(method.clone(), path)
                .json(&body)
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), 400, "{method} {field}");
            let text = response.text().await.unwrap();
            println!("{method} {field} = {value}: {text}");
            assert!(!text.contains(marker), "{method} {field}: {text}");
            assert!(
                text.contains("Expected input type"),
                "{method} {field}: {text}"
            );
        }
    }
}

#[tokio::test]
async fn paging_visits_every_tenant_exactly_once() {
    let app = TestApp::spawn().await;
    let owner = app.db.owner_pool().await;
    for i in 0..120 {
        let id = format!("tenant-{i:03}");
        let mut tx = owner.begin().await.unwrap();
        sqlx::query("SELECT set_config('app.current_tenant_id', $1, true)")
            .bind(&id)
            .execute(&mut *tx)
            .await
            .unwrap();
        sqlx::query(
            "INSERT INTO tenant_configs (tenant_id, name, servicedesk_url, \
             servicedesk_api_key_encrypted, webhook_signing_secret_encrypted) \
             VALUES ($1, $1, 'https://x.test', 'v1:x', 'v1:x')",
        )
        .bind(&id)
        .execute(&mut *tx)
        .await
        .unwrap();
        tx.commit().await.unwrap();
    }
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    let mut pages = 0;
    loop {
        let mut path = "/api/v1/tenants?limit=7".to_owned();
        if let Some(c) = &cursor {
            path.push_str(&format!("&cursor={c}"));
        }
        let page = app.get_json(&path).await;
        pages += 1;
        for item in page["items"].as_array().unwrap() {
            seen.push(item["tenant_id"].as_str().unwrap().to_owned());
        }
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => break,
        }
        assert!(pages < 100, "paging does not end");
    }
    let mut unique = seen.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(seen.len(), 120);
    assert_eq!(unique.len(), 120);
    assert_eq!(pages, 18);
    let first = app.get_json("/api/v1/tenants").await;
    assert_eq!(
        first["items"].as_array().unwrap().len(),
        50,
        "default limit"
    );
}

#[tokio::test]
async fn bad_input_is_rejected_with_problems() {
    let app = TestApp::spawn().await;
    app.create_tenant("exists").await;
    let long = "x".repeat(101);
    let cases: Vec<(&str, Value)> = vec![
        ("missing fields", json!({"tenant_id": "a"})),
        ("uppercase id", with("tenant_id", json!("Acme"))),
        ("leading dash", with("tenant_id", json!("-acme"))),
        ("empty id", with("tenant_id", json!(""))),
        ("long id", with("tenant_id", json!(long))),
        ("id not a string", with("tenant_id", json!(42))),
        ("empty name", with("name", json!(""))),
        ("blank name", with("name", json!("   "))),
        ("long name", with("name", json!("n".repeat(256)))),
        ("ftp url", with("servicedesk_url", json!("ftp://x.test"))),
        ("no host", with("servicedesk_url", json!("https://"))),
        (
            "long url",
            with(
                "servicedesk_url",
                json!(format!("https://x.test/{}", "a".repeat(500))),
            ),
        ),
        ("empty key", with("servicedesk_api_key", json!(""))),
        ("null secret", with("webhook_signing_secret", Value::Null)),
        (
            "prefs not object",
            with("enhancement_preferences", json!([1, 2])),
        ),
        ("unknown field", with("admin", json!(true))),
        ("array body", json!([1, 2, 3])),
    ];
    for (name, body) in cases {
        let response = app
            .req(Method::POST, "/api/v1/tenants")
            .json(&body)
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        assert!((400..500).contains(&status), "{name}: {status}");
        assert_problem(response, status).await;
    }
    let malformed = app
        .req(Method::POST, "/api/v1/tenants")
        .header("content-type", "application/json")
        .body("{\"tenant_id\": ")
        .send()
        .await
        .unwrap();
    assert_problem(malformed, 400).await;
    let wrong_type = app
        .req(Method::POST, "/api/v1/tenants")
        .header("content-type", "text/plain")
        .body("hello")
        .send()
        .await
        .unwrap();
    let status = wrong_type.status().as_u16();
    assert!((400..500).contains(&status));
    assert_problem(wrong_type, status).await;
    let patch_id = app
        .req(Method::PATCH, "/api/v1/tenants/exists")
        .json(&json!({"tenant_id": "other"}))
        .send()
        .await
        .unwrap();
    assert_problem(patch_id, 400).await;
    let patch_bad = app
        .req(Method::PATCH, "/api/v1/tenants/exists")
        .json(&json!({"servicedesk_url": "nope"}))
        .send()
        .await
        .unwrap();
    assert_problem(patch_bad, 400).await;
    for query in [
        "limit=0",
        "limit=101",
        "limit=abc",
        "limit=-1",
        "cursor=not-a-cursor",
    ] {
        let response = app
            .req(Method::GET, &format!("/api/v1/tenants?{query}"))
            .send()
            .await
            .unwrap();
        assert_problem(response, 400).await;
    }
    assert_problem(
        app.req(Method::GET, "/api/v1/tenants/NOT_VALID")
            .send()
            .await
            .unwrap(),
        404,
    )
    .await;
}

#[tokio::test]
async fn every_route_needs_the_token() {
    let app = TestApp::spawn().await;
    let routes = [
        (Method::POST, "/api/v1/tenants"),
        (Method::GET, "/api/v1/tenants"),
        (Method::GET, "/api/v1/tenants/acme"),
        (Method::PATCH, "/api/v1/tenants/acme"),
        (Method::DELETE, "/api/v1/tenants/acme"),
        (Method::POST, "/api/v1/enhancements"),
        (Method::GET, "/api/v1/enhancements"),
        (
            Method::GET,
            "/api/v1/enhancements/00000000-0000-0000-0000-000000000000",
        ),
        (Method::GET, "/api/v1/queue/stats"),
    ];
    for (method, path) in routes {
        let none = app
            .http
            .request(method.clone(), app.url(path))
            .json(&json!({}))
            .send()
            .await
            .unwrap();
        assert_problem(none, 401).await;
        let wrong = app
            .http
            .request(method.clone(), app.url(path))
            .bearer_auth("test-token-0123456789abcdeX")
            .json(&json!({}))
            .send()
            .await
            .unwrap();
        assert_problem(wrong, 401).await;
        let basic = app
            .http
            .request(method, app.url(path))
            .basic_auth("admin", Some("x"))
            .send()
            .await
            .unwrap();
        assert_problem(basic, 401).await;
    }
}

#[tokio::test]
async fn oversized_bodies_get_413_with_or_without_length() {
    let app = TestApp::spawn().await;
    let big = format!("{{\"tenant_id\":\"{}\"}}", "a".repeat(1024 * 1024 + 10));
    let with_length = app
        .req(Method::POST, "/api/v1/tenants")
        .header("content-type", "application/json")
        .body(big.clone())
        .send()
        .await
        .unwrap();
    assert_problem(with_length, 413).await;
    let chunks: Vec<Result<String, std::io::Error>> = big
        .as_bytes()
        .chunks(64 * 1024)
        .map(|c| Ok(String::from_utf8_lossy(c).into_owned()))
        .collect();
    let chunked = app
        .req(Method::POST, "/api/v1/tenants")
        .header("content-type", "application/json")
        .body(reqwest::Body::wrap_stream(futures_util::stream::iter(
            chunks,
        )))
        .send()
        .await
        .unwrap();
    assert_problem(chunked, 413).await;
    // Just under the limit is parsed (and refused for its content, not its size).
    let small = format!("{{\"tenant_id\":\"{}\"}}", "a".repeat(1000 * 1024));
    let response = app
        .req(Method::POST, "/api/v1/tenants")
        .header("content-type", "application/json")
        .body(small)
        .send()
        .await
        .unwrap();
    assert_problem(response, 400).await;
}
