//! The enhancement and queue endpoints against a real API, PostgreSQL and Redis.

use reqwest::Method;
use serde_json::{Value, json};

use crate::helpers::{
    Outage, TestApp, TestDb, assert_problem, eventually, host_port, redis_url, via,
};

#[tokio::test]
async fn create_stores_pending_row_and_queues_one_job() {
    let app = TestApp::spawn().await;
    app.create_tenant("acme").await;
    let response = app
        .req(Method::POST, "/api/v1/enhancements")
        .json(&json!({"tenant_id": "acme", "ticket_id": "INC-42", "context": {"priority": "high"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202);
    let created: Value = response.json().await.unwrap();
    assert_eq!(created["status"], "pending");
    assert_eq!(created["ticket_id"], "INC-42");
    assert_eq!(created["context"]["priority"], "high");
    for key in [
        "id",
        "tenant_id",
        "ticket_id",
        "status",
        "context_gathered",
        "llm_output",
        "error_message",
        "processing_time_ms",
        "created_at",
        "completed_at",
    ] {
        assert!(created.get(key).is_some(), "{key} missing");
    }

    let id = created["id"].as_str().unwrap();
    let fetched = app.get_json(&format!("/api/v1/enhancements/{id}")).await;
    assert_eq!(fetched, created);

    let stats = app.get_json("/api/v1/queue/stats").await;
    assert_eq!(
        stats,
        json!({"pending": 1, "in_flight": 0, "retrying": 0, "dead": 0})
    );
    let jobs = app.queue.peek(10).await.unwrap();
    assert_eq!(jobs.len(), 1);
    match &jobs[0].kind {
        ai_agents::queue::JobKind::Enhancement {
            enhancement_id,
            tenant_id,
        } => {
            assert_eq!(enhancement_id.to_string(), id);
            assert_eq!(tenant_id, "acme");
        }
        other => panic!("unexpected job {other:?}"),
    }
}

#[tokio::test]
async fn unknown_tenant_is_404_and_leaves_nothing() {
    let app = TestApp::spawn().await;
    let response = app
        .req(Method::POST, "/api/v1/enhancements")
        .json(&json!({"tenant_id": "ghost", "ticket_id": "T-1"}))
        .send()
        .await
        .unwrap();
    assert_problem(response, 404).await;
    assert_eq!(app.queue.stats().await.unwrap().pending, 0);
    let missing = app
        .req(
            Method::GET,
            &format!("/api/v1/enhancements/{}", uuid::Uuid::now_v7()),
        )
        .send()
        .await
        .unwrap();
    assert_problem(missing, 404).await;
}

#[tokio::test]
async fn bad_enhancement_input_is_4xx() {
    let app = TestApp::spawn().await;
    app.create_tenant("acme").await;
    let cases = [
        json!({"tenant_id": "acme"}),
        json!({"ticket_id": "T"}),
        json!({"tenant_id": "acme", "ticket_id": ""}),
        json!({"tenant_id": "acme", "ticket_id": "   "}),
        json!({"tenant_id": "acme", "ticket_id": "x".repeat(101)}),
        json!({"tenant_id": "acme", "ticket_id": 7}),
        json!({"tenant_id": "acme", "ticket_id": "T", "context": "text"}),
        json!({"tenant_id": "acme", "ticket_id": "T", "context": [1]}),
        json!({"tenant_id": "acme", "ticket_id": "T", "context": {"a": "nul\u{0}"}}),
        json!({"tenant_id": "acme", "ticket_id": "T", "extra": 1}),
        json!({"tenant_id": "ACME", "ticket_id": "T"}),
    ];
    for body in cases {
        let response = app
            .req(Method::POST, "/api/v1/enhancements")
            .json(&body)
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        assert!((400..500).contains(&status), "{body}: {status}");
        assert_problem(response, status).await;
    }
    for path in [
        "/api/v1/enhancements/not-a-uuid",
        "/api/v1/enhancements?status=done",
        "/api/v1/enhancements?limit=0",
        "/api/v1/enhancements?limit=1000",
        "/api/v1/enhancements?cursor=zzz",
    ] {
        let response = app.req(Method::GET, path).send().await.unwrap();
        assert_problem(response, 400).await;
    }
    assert_eq!(
        app.queue.stats().await.unwrap().pending,
        0,
        "nothing was queued"
    );
}

#[tokio::test]
async fn list_filters_and_pages_newest_first() {
    let app = TestApp::spawn().await;
    app.create_tenant("a").await;
    app.create_tenant("b").await;
    let mut a_ids = Vec::new();
    for i in 0..25 {
        a_ids.push(
            app.create_enhancement("a", &format!("A-{i}")).await["id"]
                .as_str()
                .unwrap()
                .to_owned(),
        );
    }
    for i in 0..5 {
        app.create_enhancement("b", &format!("B-{i}")).await;
    }
    let mut seen = Vec::new();
    let mut cursor = String::new();
    loop {
        let page = app
            .get_json(&format!(
                "/api/v1/enhancements?tenant_id=a&limit=10&cursor={cursor}"
            ))
            .await;
        for item in page["items"].as_array().unwrap() {
            assert_eq!(item["tenant_id"], "a");
            seen.push(item["id"].as_str().unwrap().to_owned());
        }
        match page["next_cursor"].as_str() {
            Some(next) => cursor = next.to_owned(),
            None => break,
        }
    }
    a_ids.reverse();
    assert_eq!(seen, a_ids, "every row once, newest first");

    let all = app.get_json("/api/v1/enhancements?limit=100").await;
    assert_eq!(all["items"].as_array().unwrap().len(), 30);
    let pending = app
        .get_json("/api/v1/enhancements?status=pending&tenant_id=b")
        .await;
    assert_eq!(pending["items"].as_array().unwrap().len(), 5);
    let done = app.get_json("/api/v1/enhancements?status=completed").await;
    assert_eq!(done["items"].as_array().unwrap().len(), 0);
    let ghost = app
        .get_json("/api/v1/enhancements?tenant_id=Not-Valid")
        .await;
    assert_eq!(ghost["items"].as_array().unwrap().len(), 0);
}

#[tokio::test]
async fn deleting_a_tenant_removes_its_history() {
    let app = TestApp::spawn().await;
    app.create_tenant("gone").await;
    let id = app.create_enhancement("gone", "T-1").await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(
        app.req(Method::DELETE, "/api/v1/tenants/gone")
            .send()
            .await
            .unwrap()
            .status(),
        204
    );
    let response = app
        .req(Method::GET, &format!("/api/v1/enhancements/{id}"))
        .send()
        .await
        .unwrap();
    assert_problem(response, 404).await;
}

#[tokio::test]
async fn redis_down_means_503_fast_and_no_orphan_row() {
    let redis = Outage::relay(&host_port(&redis_url())).await;
    let db = TestDb::new().await;
    let app_url = db.app_url.clone();
    let app = TestApp::spawn_with(db, &app_url, &via(&redis_url(), redis.addr), |_| {}).await;
    app.create_tenant("acme").await;
    app.create_enhancement("acme", "before").await;

    redis.down();
    let started = std::time::Instant::now();
    let response = app
        .req(Method::POST, "/api/v1/enhancements")
        .json(&json!({"tenant_id": "acme", "ticket_id": "during"}))
        .send()
        .await
        .unwrap();
    let elapsed = started.elapsed();
    assert!(response.headers().get("retry-after").is_some());
    assert_problem(response, 503).await;
    assert!(
        elapsed < std::time::Duration::from_secs(5),
        "took {elapsed:?}"
    );
    let stats = app
        .req(Method::GET, "/api/v1/queue/stats")
        .send()
        .await
        .unwrap();
    assert_problem(stats, 503).await;

    let rows = app.get_json("/api/v1/enhancements?tenant_id=acme").await;
    let tickets: Vec<&str> = rows["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["ticket_id"].as_str().unwrap())
        .collect();
    assert_eq!(tickets, vec!["before"], "no row without a job");

    redis.up();
    let recovered = eventually(std::time::Duration::from_secs(10), || async {
        app.req(Method::POST, "/api/v1/enhancements")
            .json(&json!({"tenant_id": "acme", "ticket_id": "after"}))
            .send()
            .await
            .map(|r| r.status() == 202)
            .unwrap_or(false)
    })
    .await;
    assert!(recovered, "the API recovers when Redis returns");
}

#[tokio::test]
async fn database_down_means_503_and_recovery() {
    let (app, relay) = TestApp::behind_a_relay().await;
    app.create_tenant("acme").await;

    relay.down();
    let started = std::time::Instant::now();
    let response = app
        .req(Method::GET, "/api/v1/tenants/acme")
        .send()
        .await
        .unwrap();
    assert!(response.headers().get("retry-after").is_some());
    assert_problem(response, 503).await;
    let create = app
        .req(Method::POST, "/api/v1/enhancements")
        .json(&json!({"tenant_id": "acme", "ticket_id": "T"}))
        .send()
        .await
        .unwrap();
    assert_problem(create, 503).await;
    assert!(
        started.elapsed() < std::time::Duration::from_secs(8),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(
        app.queue.stats().await.unwrap().pending,
        0,
        "no job without a row"
    );

    relay.up();
    let recovered = eventually(std::time::Duration::from_secs(10), || async {
        app.req(Method::GET, "/api/v1/tenants/acme")
            .send()
            .await
            .map(|r| r.status() == 200)
            .unwrap_or(false)
    })
    .await;
    assert!(recovered, "the API recovers without a restart");
}

/// A status the code does not know (written by a newer schema, say) is an error answered with
/// a 500, never shown as another status.
#[tokio::test]
async fn an_unknown_stored_status_is_an_error_not_pending() {
    let app = TestApp::spawn().await;
    app.create_tenant("acme").await;
    let created = app.create_enhancement("acme", "T-1").await;
    let id = created["id"].as_str().unwrap().to_owned();
    let owner = app.db.owner_pool().await;
    let mut tx = owner.begin().await.unwrap();
    for statement in [
        "ALTER TABLE enhancement_history DROP CONSTRAINT enhancement_history_status_valid",
        "SELECT set_config('app.current_tenant_id', 'acme', true)",
    ] {
        sqlx::query(statement).execute(&mut *tx).await.unwrap();
    }
    sqlx::query("UPDATE enhancement_history SET status = 'cancelled' WHERE id = $1::uuid")
        .bind(&id)
        .execute(&mut *tx)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    for path in [
        format!("/api/v1/enhancements/{id}"),
        "/api/v1/enhancements?tenant_id=acme".to_owned(),
        "/api/v1/enhancements".to_owned(),
    ] {
        let response = app.req(Method::GET, &path).send().await.unwrap();
        let body = assert_problem(response, 500).await;
        assert!(!body.to_string().contains("cancelled"), "{path}: {body}");
    }
}
