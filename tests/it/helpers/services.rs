//! The shared PostgreSQL and Redis, and what each test takes of them: a database of its own
//! (named `ai_agents_test_…`; nothing drops it) and a key prefix of its own, so that tests run
//! in parallel without seeing each other.

use std::net::SocketAddr;

use ai_agents::{
    config::{Config, Requirements},
    queue::RedisPool,
};
use sqlx::{Connection, Executor, PgConnection, PgPool};

use super::test_vars;

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
        // The deployments' default privileges (k8s/postgres/init-roles.sh, which
        // nix/dev-services.sh runs too) live in their own database; a throwaway database gets
        // the same: what the owner creates is readable by the application role, and only the
        // migrations grant writes.
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

/// A Redis connection pool on `redis_url` with the test settings, for a test that looks at a
/// queue from outside (the prefix is the `Queue`'s business).
pub fn redis_pool(redis_url: &str) -> RedisPool {
    let vars = test_vars("postgres://unused@127.0.0.1/unused", redis_url, "unused");
    let config = Config::from_map(&vars, Requirements::Worker).expect("test config is valid");
    RedisPool::new(&config.redis).expect("redis url")
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

/// Ends every other session of the role and database of `app_url` (`pg_terminate_backend`,
/// as an operator, a pooler or a failover manager does); how many there were, and when the
/// call was sent and answered.
pub async fn terminate_sessions(app_url: &str) -> (i64, std::time::Instant, std::time::Instant) {
    let mut operator = PgConnection::connect(app_url).await.expect("connect");
    let sent = std::time::Instant::now();
    let ended: i64 = sqlx::query_scalar(
        "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) FROM pg_stat_activity
         WHERE usename = current_user AND datname = current_database()
           AND pid <> pg_backend_pid()",
    )
    .fetch_one(&mut operator)
    .await
    .expect("terminate");
    let answered = std::time::Instant::now();
    operator.close().await.ok();
    (ended, sent, answered)
}

/// A free TCP port on loopback with nothing listening (bound, then released).
pub fn closed_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("addr").port()
}
