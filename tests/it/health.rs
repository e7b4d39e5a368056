//! Probes, documentation and metrics endpoints.

use std::time::{Duration, Instant};

use serde_json::Value;

use futures_util::future::join_all;

use crate::helpers::{TestApp, TestDb, assert_problem, closed_port, redis_url};

/// `GET /health/ready`, asserting that it answered within its bound (2 s, with 0.5 s for a
/// loaded machine): a probe never hangs, whatever its dependencies do.
async fn ready_in_time(app: &TestApp) -> reqwest::Response {
    let started = Instant::now();
    let ready = app.http.get(app.url("/health/ready")).send().await.unwrap();
    assert!(
        started.elapsed() < Duration::from_millis(2500),
        "{:?}",
        started.elapsed()
    );
    ready
}

#[tokio::test]
async fn health_and_ready_when_everything_is_up() {
    let app = TestApp::spawn().await;
    let health = app.http.get(app.url("/health")).send().await.unwrap();
    assert_eq!(health.status(), 200);
    assert!(health.headers().get("x-request-id").is_some());
    let body: Value = health.json().await.unwrap();
    assert_eq!(body["status"], "healthy");
    assert_eq!(body["version"], env!("CARGO_PKG_VERSION"));
    assert!(chrono::DateTime::parse_from_rfc3339(body["timestamp"].as_str().unwrap()).is_ok());

    let ready = app.http.get(app.url("/health/ready")).send().await.unwrap();
    assert_eq!(ready.status(), 200);
    let body: Value = ready.json().await.unwrap();
    assert_eq!(
        body,
        serde_json::json!({"status": "ready", "dependencies": {"database": "connected", "redis": "connected"}})
    );
}

#[tokio::test]
async fn not_ready_within_two_seconds_when_redis_is_unreachable() {
    let db = TestDb::new().await;
    let url = db.app_url.clone();
    let app = TestApp::spawn_with(
        db,
        &url,
        &format!("redis://127.0.0.1:{}", closed_port()),
        |_| {},
    )
    .await;
    let ready = ready_in_time(&app).await;
    assert_eq!(ready.status(), 503);
    let body: Value = ready.json().await.unwrap();
    assert_eq!(body["status"], "not_ready");
    assert_eq!(body["dependencies"]["database"], "connected");
    assert_eq!(body["dependencies"]["redis"], "disconnected");
    assert_eq!(
        app.http
            .get(app.url("/health"))
            .send()
            .await
            .unwrap()
            .status(),
        200,
        "liveness does no I/O"
    );
}

#[tokio::test]
async fn not_ready_within_two_seconds_when_postgres_is_unreachable() {
    let db = TestDb::empty().await;
    let url = format!(
        "postgres://ai_agents_app:ai_agents_app@127.0.0.1:{}/x",
        closed_port()
    );
    let app = TestApp::spawn_with(db, &url, &redis_url(), |_| {}).await;
    let ready = ready_in_time(&app).await;
    assert_eq!(ready.status(), 503);
    let body: Value = ready.json().await.unwrap();
    assert_eq!(body["dependencies"]["database"], "disconnected");
    assert_eq!(body["dependencies"]["redis"], "connected");
}

#[tokio::test]
async fn not_ready_within_two_seconds_when_postgres_hangs() {
    // A listener that accepts and never answers: the check must still end in time.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = silent.local_addr().unwrap().port();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = silent.accept().await {
            held.push(socket);
        }
    });
    let db = TestDb::empty().await;
    let url = format!("postgres://ai_agents_app:ai_agents_app@127.0.0.1:{port}/x");
    let app = TestApp::spawn_with(db, &url, &redis_url(), |_| {}).await;
    let ready = ready_in_time(&app).await;
    assert_eq!(ready.status(), 503);
}

/// Probes that arrive together share one question to PostgreSQL. Asked one after another, a
/// burst of probes (anyone may send them) on a slow but healthy database would queue the
/// kubelet's behind them until it ran out of time, and that probe would drop a connection that
/// was merely slow: the replica out of service with nothing down.
#[tokio::test]
async fn a_burst_of_probes_on_a_slow_database_shares_one_answer() {
    let (app, relay) = TestApp::behind_a_relay().await;
    assert_eq!(
        ready_in_time(&app).await.status(),
        200,
        "before the slowdown"
    );

    relay.slow_down(Duration::from_millis(600));
    let started = Instant::now();
    let burst = join_all((0..8).map(|_| ready_in_time(&app))).await;
    let statuses: Vec<u16> = burst.iter().map(|r| r.status().as_u16()).collect();
    let after = ready_in_time(&app).await.status();
    println!(
        "8 probes with 600 ms to every answer: {statuses:?} in {:.2?}; the next one: {after}",
        started.elapsed()
    );
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    assert_eq!(after, 200, "the slow connection was kept");
}

#[tokio::test]
async fn openapi_document_is_complete() {
    let app = TestApp::spawn().await;
    let spec: Value = app
        .http
        .get(app.url("/openapi.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(spec["openapi"].as_str().unwrap().starts_with("3."));
    assert_eq!(
        spec["components"]["securitySchemes"]["AdminAuth"]["scheme"],
        "bearer"
    );
    let expected = [
        ("/api/v1/tenants", "post"),
        ("/api/v1/tenants", "get"),
        ("/api/v1/tenants/{tenant_id}", "get"),
        ("/api/v1/tenants/{tenant_id}", "patch"),
        ("/api/v1/tenants/{tenant_id}", "delete"),
        ("/api/v1/enhancements", "post"),
        ("/api/v1/enhancements", "get"),
        ("/api/v1/enhancements/{id}", "get"),
        ("/api/v1/queue/stats", "get"),
        ("/health", "get"),
        ("/health/ready", "get"),
    ];
    for (path, method) in expected {
        let operation = &spec["paths"][path][method];
        assert!(operation.is_object(), "{method} {path} missing");
        assert!(
            operation["summary"].is_string(),
            "{method} {path} has no summary"
        );
        assert!(operation["tags"].is_array(), "{method} {path} has no tags");
        if path.starts_with("/api/v1") {
            assert_eq!(
                operation["security"][0]["AdminAuth"],
                serde_json::json!([]),
                "{path}"
            );
            for status in ["400", "401", "503"] {
                let content =
                    &operation["responses"][status]["content"]["application/problem+json"];
                assert!(
                    content.is_object(),
                    "{method} {path} does not document {status}"
                );
            }
        }
    }
    let tenant_id = &spec["components"]["schemas"]["TenantCreate"]["properties"]["tenant_id"];
    assert_eq!(tenant_id["maxLength"], 100);
    assert_eq!(tenant_id["pattern"], "^[a-z0-9][a-z0-9_-]*$");
    assert_eq!(
        spec["components"]["schemas"]["TenantCreate"]["additionalProperties"],
        false
    );
    let tenant = &spec["components"]["schemas"]["Tenant"]["properties"];
    assert!(
        tenant.get("servicedesk_api_key").is_none()
            && tenant.get("webhook_signing_secret").is_none()
    );
}

#[tokio::test]
async fn docs_page_renders() {
    let app = TestApp::spawn().await;
    let docs = app.http.get(app.url("/docs")).send().await.unwrap();
    assert_eq!(docs.status(), 200);
    assert!(
        docs.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/html")
    );
    let html = docs.text().await.unwrap();
    assert!(html.contains("swagger"), "not the Swagger UI");
}

#[tokio::test]
async fn unknown_routes_and_methods_are_problems() {
    let app = TestApp::spawn().await;
    assert_problem(app.http.get(app.url("/nope")).send().await.unwrap(), 404).await;
    let put = app.http.put(app.url("/health")).send().await.unwrap();
    let status = put.status().as_u16();
    assert!(status == 404 || status == 405, "{status}");
    assert_problem(put, status).await;
}

#[tokio::test]
async fn request_ids_are_kept_or_made() {
    let app = TestApp::spawn().await;
    let kept = app
        .http
        .get(app.url("/health"))
        .header("x-request-id", "abc-123")
        .send()
        .await
        .unwrap();
    assert_eq!(kept.headers()["x-request-id"], "abc-123");
    let unsafe_id = app
        .http
        .get(app.url("/health"))
        .header("x-request-id", "a b\"c")
        .send()
        .await
        .unwrap();
    assert_ne!(unsafe_id.headers()["x-request-id"], "a b\"c");
}

#[tokio::test]
async fn metrics_in_prometheus_format() {
    let app = TestApp::spawn().await;
    app.create_tenant("acme").await;
    app.http.get(app.url("/health")).send().await.unwrap();
    let metrics = app.http.get(app.url("/metrics")).send().await.unwrap();
    assert_eq!(metrics.status(), 200);
    assert!(
        metrics.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain")
    );
    let text = metrics.text().await.unwrap();
    for name in [
        "http_requests_total",
        "http_request_duration_seconds_bucket",
        "queue_jobs",
        "db_pool_connections",
        "ai_agents_build_info",
        "ai_agents_job_outcomes_total",
    ] {
        assert!(text.contains(name), "{name} missing from /metrics");
    }
    assert!(
        text.contains(r#"route="create_tenant""#),
        "routes are labelled by operation"
    );
}
