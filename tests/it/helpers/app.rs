//! The API as most tests see it: built and served in the test's own process on a random port
//! (`Application::build`, the production code path), with a test configuration, on a fresh
//! database and key prefix.

use std::collections::HashMap;

use ai_agents::{
    api::Application,
    config::{Config, Requirements},
    queue::{Queue, RedisPool},
};
use serde_json::{Value, json};

use super::{Outage, TestDb, host_port, queue_prefix, redis_url, via};

/// A valid encryption key for tests.
pub const TEST_KEY: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";
/// The admin token of test apps.
pub const TEST_TOKEN: &str = "test-token-0123456789abcdef";

/// Variables of a test configuration for `db` and `prefix`.
pub fn test_vars(database_url: &str, redis_url: &str, prefix: &str) -> HashMap<String, String> {
    [
        ("AI_AGENTS_ENVIRONMENT", "test"),
        ("AI_AGENTS_LOG_LEVEL", "warn"),
        ("AI_AGENTS_BIND_ADDR", "127.0.0.1:0"),
        ("AI_AGENTS_DATABASE_URL", database_url),
        ("AI_AGENTS_DATABASE_POOL_SIZE", "5"),
        ("AI_AGENTS_DATABASE_MIN_CONNECTIONS", "0"),
        // Generous: debug builds on a loaded 2-core machine open connections slowly. Requests
        // still give up after the API's 3 s cap.
        ("AI_AGENTS_DATABASE_CONNECT_TIMEOUT_SECS", "10"),
        ("AI_AGENTS_REDIS_URL", redis_url),
        ("AI_AGENTS_REDIS_MAX_CONNECTIONS", "2"),
        ("AI_AGENTS_REDIS_POOL_TIMEOUT_SECS", "1"),
        ("AI_AGENTS_QUEUE_PREFIX", prefix),
        ("AI_AGENTS_ADMIN_TOKEN", TEST_TOKEN),
        ("AI_AGENTS_ENCRYPTION_KEY", TEST_KEY),
        ("AI_AGENTS_REQUEST_TIMEOUT_SECS", "10"),
        ("AI_AGENTS_SHUTDOWN_GRACE_SECS", "5"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect()
}

/// The body of a `POST /api/v1/tenants` that creates `tenant_id` (secrets derived from the id,
/// so that two tenants never share one).
pub fn tenant_body(tenant_id: &str) -> Value {
    json!({
        "tenant_id": tenant_id,
        "name": format!("Tenant {tenant_id}"),
        "servicedesk_url": "https://desk.example.com",
        "servicedesk_api_key": format!("api-key-of-{tenant_id}"),
        "webhook_signing_secret": format!("webhook-secret-of-{tenant_id}"),
    })
}

/// A running API on a random port.
pub struct TestApp {
    /// Base URL, e.g. `http://127.0.0.1:12345`.
    pub base: String,
    /// The database behind it.
    pub db: TestDb,
    /// Its key prefix.
    pub prefix: String,
    /// The queue, for inspection.
    pub queue: Queue,
    /// An HTTP client.
    pub http: reqwest::Client,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl TestApp {
    /// An API on a fresh database and prefix.
    pub async fn spawn() -> Self {
        let db = TestDb::new().await;
        let url = db.app_url.clone();
        Self::spawn_with(db, &url, &redis_url(), |_| {}).await
    }

    /// An API on a fresh database that it reaches through a relay, which the test may cut,
    /// freeze or slow down.
    pub async fn behind_a_relay() -> (Self, Outage) {
        let db = TestDb::new().await;
        let relay = Outage::relay(&host_port(&db.app_url)).await;
        let url = via(&db.app_url, relay.addr);
        (
            Self::spawn_with(db, &url, &redis_url(), |_| {}).await,
            relay,
        )
    }

    /// An API with explicit URLs and variable overrides.
    pub async fn spawn_with(
        db: TestDb,
        database_url: &str,
        redis_url: &str,
        adjust: impl FnOnce(&mut HashMap<String, String>),
    ) -> Self {
        let prefix = queue_prefix();
        let mut vars = test_vars(database_url, redis_url, &prefix);
        adjust(&mut vars);
        let config = Config::from_map(&vars, Requirements::Api).expect("test config is valid");
        let queue = Queue::new(RedisPool::new(&config.redis).expect("redis url"), &prefix);
        let app = Application::build(config).await.expect("app builds");
        let base = format!("http://{}", app.addr());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(app.run_until_stopped(async move {
            let _ = stopped.await;
        }));
        Self {
            base,
            db,
            prefix,
            queue,
            http: reqwest::Client::new(),
            stop: Some(stop),
        }
    }

    /// `base` + `path`.
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// An authorised request.
    pub fn req(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        self.http
            .request(method, self.url(path))
            .bearer_auth(TEST_TOKEN)
    }

    /// The JSON body of an authorised `GET path`, whatever its status (the caller's asserts
    /// on the body say what it expected).
    pub async fn get_json(&self, path: &str) -> Value {
        self.req(reqwest::Method::GET, path)
            .send()
            .await
            .expect("request")
            .json()
            .await
            .expect("json")
    }

    /// Creates a tenant and asserts 201.
    pub async fn create_tenant(&self, tenant_id: &str) -> Value {
        let response = self
            .req(reqwest::Method::POST, "/api/v1/tenants")
            .json(&tenant_body(tenant_id))
            .send()
            .await
            .expect("request");
        assert_eq!(response.status(), 201, "{:?}", response.text().await);
        response.json().await.expect("json")
    }

    /// Creates an enhancement and asserts 202.
    pub async fn create_enhancement(&self, tenant_id: &str, ticket_id: &str) -> Value {
        let response = self
            .req(reqwest::Method::POST, "/api/v1/enhancements")
            .json(&json!({"tenant_id": tenant_id, "ticket_id": ticket_id}))
            .send()
            .await
            .expect("request");
        assert_eq!(response.status(), 202, "{:?}", response.text().await);
        response.json().await.expect("json")
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// The Content-Type of `response` (empty when it has none or it is not text).
pub fn content_type(response: &reqwest::Response) -> String {
    response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned()
}

/// Asserts a problem+json answer with `status`; returns the body.
pub async fn assert_problem(response: reqwest::Response, status: u16) -> Value {
    assert_eq!(response.status().as_u16(), status, "unexpected status");
    let content_type = content_type(&response);
    assert!(
        content_type.starts_with("application/problem+json"),
        "content-type {content_type}"
    );
    let body: Value = response.json().await.expect("problem body is JSON");
    for key in ["type", "title", "status", "detail"] {
        assert!(body.get(key).is_some(), "{key} missing in {body}");
    }
    assert_eq!(body["status"], status);
    body
}
