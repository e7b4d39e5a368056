//! Test harness: real PostgreSQL and Redis, a fresh database and key prefix per test.
//!
//! The services come from `nix/dev-services.sh` (or CI's): `AI_AGENTS_DATABASE_URL` must name a
//! role that may create databases (the schema owner in development), `AI_AGENTS_REDIS_URL` a
//! Redis, and `AI_AGENTS_APP_DATABASE_URL` (optional) gives the application role's credentials. Every test gets its own database, migrated by the owner, and talks to it as the
//! application role, so row-level security is in force exactly as in production.
#![allow(dead_code)]

pub mod procfs;

use std::{
    collections::HashMap,
    net::SocketAddr,
    process::Stdio,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use ai_agents::{
    api::Application,
    config::{Config, Requirements},
    queue::{Queue, RedisPool},
};
use sqlx::{Connection, Executor, PgConnection, PgPool};
use tokio::{net::TcpListener, sync::watch};

/// The owner URL of the development database (CREATEDB in development and CI).
pub fn owner_url() -> String {
    std::env::var("AI_AGENTS_DATABASE_URL")
        .unwrap_or_else(|_| ai_agents::config::DEV_DATABASE_URL.to_owned())
}

/// The Redis URL.
pub fn redis_url() -> String {
    std::env::var("AI_AGENTS_REDIS_URL")
        .unwrap_or_else(|_| ai_agents::config::DEV_REDIS_URL.to_owned())
}

/// Replaces the database name (and optionally the credentials) of a PostgreSQL URL.
fn with_database(url: &str, database: &str, credentials: Option<&str>) -> String {
    let (scheme, rest) = url.split_once("://").expect("URL has a scheme");
    let (auth_host, _) = rest.split_once('/').unwrap_or((rest, ""));
    let host = auth_host.rsplit_once('@').map_or(auth_host, |(_, h)| h);
    let auth = match credentials {
        Some(c) => format!("{c}@"),
        None => auth_host
            .rsplit_once('@')
            .map(|(a, _)| format!("{a}@"))
            .unwrap_or_default(),
    };
    format!("{scheme}://{auth}{host}/{database}")
}

/// The application role's `user:password`: from AI_AGENTS_APP_DATABASE_URL (what
/// `nix/dev-services.sh env` and CI export), else the development default.
fn app_credentials() -> String {
    std::env::var("AI_AGENTS_APP_DATABASE_URL")
        .ok()
        .and_then(|url| {
            let rest = url.split_once("://")?.1;
            Some(rest.rsplit_once('@')?.0.to_owned())
        })
        .unwrap_or_else(|| "ai_agents_app:ai_agents_app".to_owned())
}

/// The application role's name.
pub fn app_role() -> String {
    let credentials = app_credentials();
    credentials
        .split_once(':')
        .map_or(credentials.as_str(), |(user, _)| user)
        .to_owned()
}

/// A fresh, migrated database.
pub struct TestDb {
    /// Its name.
    pub name: String,
    /// URL as the schema owner.
    pub owner_url: String,
    /// URL as the application role (no BYPASSRLS, not owner).
    pub app_url: String,
}

impl TestDb {
    /// Creates and migrates a new database.
    pub async fn new() -> Self {
        let db = Self::empty().await;
        let pool = PgPool::connect(&db.owner_url)
            .await
            .expect("connect as owner");
        ai_agents::db::MIGRATOR
            .run(&pool)
            .await
            .expect("migrations apply");
        pool.close().await;
        db
    }

    /// Creates a new database without migrating it.
    pub async fn empty() -> Self {
        let base = owner_url();
        let name = format!(
            "ai_agents_test_{}",
            &uuid::Uuid::new_v4().simple().to_string()[..12]
        );
        let mut admin = PgConnection::connect(&base).await.expect(
            "PostgreSQL is not reachable: start it with `nix/dev-services.sh start` \
             and export the variables of `nix/dev-services.sh env`",
        );
        let create = format!(r#"CREATE DATABASE "{name}""#);
        admin
            .execute(sqlx::AssertSqlSafe(create))
            .await
            .expect("create database");
        admin.close().await.ok();
        let owner_url = with_database(&base, &name, None);
        // The deployments' default privileges (nix/dev-services.sh, k8s/postgres/init-roles.sh)
        // live in their own database; a throwaway database gets the same: what the owner
        // creates is readable by the application role, and only the migrations grant writes.
        let mut owner = PgConnection::connect(&owner_url)
            .await
            .expect("connect as owner");
        let grant = format!(
            r#"ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT SELECT ON TABLES TO "{}""#,
            app_role()
        );
        owner
            .execute(sqlx::AssertSqlSafe(grant))
            .await
            .expect("default privileges");
        owner.close().await.ok();
        Self {
            owner_url,
            app_url: with_database(&base, &name, Some(&app_credentials())),
            name,
        }
    }

    /// A pool as the owner (for inspecting and arranging data).
    pub async fn owner_pool(&self) -> PgPool {
        PgPool::connect(&self.owner_url)
            .await
            .expect("connect as owner")
    }

    /// A pool as the application role.
    pub async fn app_pool(&self) -> PgPool {
        PgPool::connect(&self.app_url)
            .await
            .expect("connect as app role")
    }
}

/// A fresh Redis key prefix.
pub fn queue_prefix() -> String {
    format!("test-{}", &uuid::Uuid::new_v4().simple().to_string()[..12])
}

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

    /// Creates a tenant and asserts 201.
    pub async fn create_tenant(&self, tenant_id: &str) -> serde_json::Value {
        let response = self
            .req(reqwest::Method::POST, "/api/v1/tenants")
            .json(&serde_json::json!({
                "tenant_id": tenant_id,
                "name": format!("Tenant {tenant_id}"),
                "servicedesk_url": "https://desk.example.com",
                "servicedesk_api_key": format!("api-key-of-{tenant_id}"),
                "webhook_signing_secret": format!("webhook-secret-of-{tenant_id}"),
            }))
            .send()
            .await
            .expect("request");
        assert_eq!(response.status(), 201, "{:?}", response.text().await);
        response.json().await.expect("json")
    }

    /// Creates an enhancement and asserts 202.
    pub async fn create_enhancement(&self, tenant_id: &str, ticket_id: &str) -> serde_json::Value {
        let response = self
            .req(reqwest::Method::POST, "/api/v1/enhancements")
            .json(&serde_json::json!({"tenant_id": tenant_id, "ticket_id": ticket_id}))
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

/// Asserts a problem+json answer with `status`; returns the body.
pub async fn assert_problem(response: reqwest::Response, status: u16) -> serde_json::Value {
    assert_eq!(response.status().as_u16(), status, "unexpected status");
    let content_type = response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    assert!(
        content_type.starts_with("application/problem+json"),
        "content-type {content_type}"
    );
    let body: serde_json::Value = response.json().await.expect("problem body is JSON");
    for key in ["type", "title", "status", "detail"] {
        assert!(body.get(key).is_some(), "{key} missing in {body}");
    }
    assert_eq!(body["status"], status);
    body
}

/// A TCP relay in front of a real server, which a test can cut to simulate an outage.
pub struct Outage {
    /// The relay's address.
    pub addr: SocketAddr,
    up: Arc<AtomicBool>,
    cut: watch::Sender<u64>,
}

impl Outage {
    /// Relays to `target` (`host:port`).
    pub async fn relay(target: &str) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind relay");
        let addr = listener.local_addr().expect("addr");
        let up = Arc::new(AtomicBool::new(true));
        let (cut, _) = watch::channel(0_u64);
        let target = target.to_owned();
        let (state, cuts) = (Arc::clone(&up), cut.clone());
        tokio::spawn(async move {
            loop {
                let Ok((mut inbound, _)) = listener.accept().await else {
                    return;
                };
                if !state.load(Ordering::SeqCst) {
                    drop(inbound);
                    continue;
                }
                let target = target.clone();
                let mut cut_rx = cuts.subscribe();
                tokio::spawn(async move {
                    let Ok(mut outbound) = tokio::net::TcpStream::connect(&target).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                        _ = cut_rx.changed() => {}
                    }
                });
            }
        });
        Self { addr, up, cut }
    }

    /// Drops every relayed connection and refuses new ones.
    pub fn down(&self) {
        self.up.store(false, Ordering::SeqCst);
        self.cut.send_modify(|n| *n += 1);
    }

    /// Accepts connections again.
    pub fn up(&self) {
        self.up.store(true, Ordering::SeqCst);
    }
}

/// `host:port` of a URL.
pub fn host_port(url: &str) -> String {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let authority = rest.split('/').next().unwrap_or(rest);
    authority
        .rsplit_once('@')
        .map_or(authority, |(_, h)| h)
        .to_owned()
}

/// The same URL pointed at `addr`.
pub fn via(url: &str, addr: SocketAddr) -> String {
    url.replacen(&host_port(url), &addr.to_string(), 1)
}

/// A free TCP port on loopback with nothing listening (bound, then released).
pub fn closed_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("addr").port()
}

/// Variables a spawned binary inherits from the test process although its environment is
/// otherwise cleared: `PATH`, and `LLVM_PROFILE_FILE`, which `cargo llvm-cov` sets so that an
/// instrumented binary writes its coverage profile where the report merges it (without it, the
/// lines that run only inside the spawned binaries would count as never run).
const INHERITED_VARS: [&str; 2] = ["PATH", "LLVM_PROFILE_FILE"];

/// Starts a binary of this package with `vars` only (plus [`INHERITED_VARS`]); stdout and
/// stderr captured.
pub fn command(binary: &str, vars: &HashMap<String, String>) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new(binary);
    cmd.env_clear();
    for name in INHERITED_VARS {
        if let Some(value) = std::env::var_os(name) {
            cmd.env(name, value);
        }
    }
    cmd.envs(vars)
        .current_dir(std::env::temp_dir())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    cmd
}

/// Ends a spawned binary that is still running with SIGTERM and waits up to `limit` for it
/// (blocking: it runs in `Drop`). For helpers that own a child until their test ends: the
/// SIGKILL of `kill_on_drop` leaves no coverage profile, so the lines only that process ran
/// would count as never run. A child still alive after `limit` gets the SIGKILL when it drops.
pub fn terminate(child: &mut tokio::process::Child, limit: Duration) {
    let Ok(None) = child.try_wait() else {
        return;
    };
    let Some(pid) = child.id() else {
        return;
    };
    let signalled = std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .is_ok_and(|s| s.success());
    let deadline = std::time::Instant::now() + limit;
    while signalled && std::time::Instant::now() < deadline && matches!(child.try_wait(), Ok(None))
    {
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Polls `check` every 50 ms until it is true or `limit` passes; whether it became true.
pub async fn eventually<F, Fut>(limit: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + limit;
    while tokio::time::Instant::now() < deadline {
        if check().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

/// A redis-server of the test's own, with AOF, in a temporary directory: for tests that
/// restart, freeze or stop Redis without disturbing the shared one.
pub struct OwnRedis {
    port: u16,
    dir: std::path::PathBuf,
    child: Option<tokio::process::Child>,
}

impl OwnRedis {
    /// Starts it on a free port and waits until it answers.
    pub async fn start() -> Self {
        let dir =
            std::env::temp_dir().join(format!("ai-agents-redis-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).expect("redis dir");
        let mut redis = Self {
            port: closed_port(),
            dir,
            child: None,
        };
        redis.launch().await;
        redis
    }

    /// Its URL.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    async fn launch(&mut self) {
        let child = tokio::process::Command::new("redis-server")
            .arg("--port")
            .arg(self.port.to_string())
            .args(["--bind", "127.0.0.1"])
            .arg("--dir")
            .arg(&self.dir)
            .args(["--appendonly", "yes", "--appendfsync", "everysec"])
            .args(["--save", ""])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("redis-server starts (is it on PATH?)");
        self.child = Some(child);
        let url = self.url();
        let up = eventually(Duration::from_secs(10), || {
            let url = url.clone();
            async move {
                let Ok(client) = redis::Client::open(url) else {
                    return false;
                };
                let Ok(mut conn) = client.get_multiplexed_async_connection().await else {
                    return false;
                };
                redis::cmd("PING")
                    .query_async::<String>(&mut conn)
                    .await
                    .is_ok_and(|p| p == "PONG")
            }
        })
        .await;
        assert!(up, "own redis-server did not come up");
    }

    fn signal(&self, signal: &str) {
        let pid = self
            .child
            .as_ref()
            .and_then(tokio::process::Child::id)
            .expect("running");
        let status = std::process::Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(pid.to_string())
            .status()
            .expect("kill runs");
        assert!(status.success(), "kill -{signal}");
    }

    /// SIGSTOP: the server keeps its connections but answers nothing (a frozen Redis).
    pub fn freeze(&self) {
        self.signal("STOP");
    }

    /// SIGCONT after [`OwnRedis::freeze`]: it executes whatever was sent meanwhile.
    pub fn thaw(&self) {
        self.signal("CONT");
    }

    /// SIGTERM (a graceful shutdown that flushes the AOF), then the same port and directory.
    pub async fn restart(&mut self) {
        self.signal("TERM");
        let mut child = self.child.take().expect("running");
        tokio::time::timeout(Duration::from_secs(10), child.wait())
            .await
            .expect("redis-server stops")
            .expect("wait");
        self.launch().await;
    }
}

impl Drop for OwnRedis {
    fn drop(&mut self) {
        if let Some(child) = &mut self.child {
            let _ = child.start_kill();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The real `ai-agents-api` binary, serving on a free port of 127.0.0.1.
pub struct ApiProcess {
    /// Base URL, e.g. `http://127.0.0.1:12345`.
    pub base: String,
    /// Its `host:port`.
    pub addr: SocketAddr,
    child: tokio::process::Child,
}

impl ApiProcess {
    /// Starts it with `vars` (a bind address on a free port is added) and waits until
    /// `/health` answers.
    pub async fn start(mut vars: HashMap<String, String>) -> Self {
        let port = closed_port();
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        vars.insert("AI_AGENTS_BIND_ADDR".into(), addr.to_string());
        let child = command(env!("CARGO_BIN_EXE_ai-agents-api"), &vars)
            .stdout(Stdio::null())
            .spawn()
            .expect("ai-agents-api starts");
        let base = format!("http://{addr}");
        let health = format!("{base}/health");
        let client = reqwest::Client::new();
        let up = eventually(Duration::from_secs(20), || {
            let request = client.get(&health).send();
            async move { request.await.is_ok_and(|r| r.status() == 200) }
        })
        .await;
        assert!(up, "ai-agents-api did not answer /health");
        Self { base, addr, child }
    }

    /// `base` + `path`.
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.id().expect("running")
    }
}

impl Drop for ApiProcess {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}
