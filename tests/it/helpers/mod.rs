//! The harness every test module shares: real PostgreSQL and Redis, a fresh database and key
//! prefix per test, the real binaries where a test needs a process.
//!
//! The services come from `nix/dev-services.sh` (or CI's): `AI_AGENTS_DATABASE_URL` must name a
//! role that may create databases (the schema owner in development), `AI_AGENTS_REDIS_URL` a
//! Redis, and `AI_AGENTS_APP_DATABASE_URL` (optional) gives the application role's credentials.
//! Every test gets its own database, migrated by the owner, and talks to it as the application
//! role, so row-level security is in force exactly as in production.
//!
//! * [`services`]: where the shared services are, a fresh database ([`TestDb`]), a key prefix;
//! * [`app`]: the API in this process on a random port ([`TestApp`]), its configuration and the
//!   problem+json check;
//! * [`process`]: the binaries as child processes (environment, signals, [`ApiProcess`]);
//! * [`outage`]: faults a test injects (a relay it can cut, a Redis of its own);
//! * [`worker`]: the worker harness (a database with probes, a running `ai-agents-worker`);
//! * [`procfs`]: CPU time from `/proc` (the scale test; the benchmark includes the same file).

pub mod app;
pub mod outage;
pub mod process;
pub mod procfs;
pub mod services;
pub mod worker;

use std::time::Duration;

pub use app::{
    TEST_KEY, TEST_TOKEN, TestApp, assert_problem, content_type, tenant_body, test_vars,
};
pub use outage::{Outage, OwnRedis};
pub use process::{API, ApiProcess, Run, WORKER, command, run, signal};
pub use services::{
    TestDb, app_role, closed_port, host_port, owner_url, queue_prefix, redis_pool, redis_url,
    terminate_sessions, via,
};

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
