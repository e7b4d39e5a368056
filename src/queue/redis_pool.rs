//! A small set of multiplexed Redis connections shared by a process.
//!
//! One multiplexed connection already pipelines many concurrent commands; a few of them spread
//! the load over `AI_AGENTS_REDIS_MAX_CONNECTIONS` sockets. They connect lazily (the API starts
//! while Redis is down) and reconnect by themselves. Every command is bounded by the pool
//! timeout, so a dead Redis makes callers fail fast instead of hanging. Blocking commands
//! (`XREADGROUP BLOCK`, `BLPOP`) must not use these connections: see [`RedisPool::dedicated`].
//!
//! A `ConnectionManager` notices that its connection died (Redis restarted, a proxy dropped
//! it) only when a command fails on it, and it returns that failure to the caller while it
//! reconnects: after a restart, the first command on each pooled connection would fail. The
//! command methods here ([`RedisPool::query`], [`RedisPool::query_pipe`],
//! [`RedisPool::invoke`]) therefore send a command that failed on a dropped connection once
//! more, on the reconnected one. Only a dropped connection is retried — never a timeout,
//! whose command may still run — and every command sent this way must be safe to run twice:
//! the queue's writes are (an enqueued job may arrive twice: delivery is at-least-once, and the
//! worker fences duplicates), and its state changes are Lua scripts that check before acting.

use std::{
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use redis::{
    AsyncConnectionConfig, Client, Cmd, ErrorKind, FromRedisValue, Pipeline, RedisError,
    ScriptInvocation,
    aio::{ConnectionManager, ConnectionManagerConfig, MultiplexedConnection},
};
use secrecy::ExposeSecret;

use crate::config::RedisConfig;

/// Round-robin over lazily connected multiplexed connections.
#[derive(Clone)]
pub struct RedisPool {
    client: Client,
    connections: Arc<[ConnectionManager]>,
    next: Arc<AtomicUsize>,
    timeout: Duration,
}

impl RedisPool {
    /// Creates the pool without connecting.
    pub fn new(config: &RedisConfig) -> Result<Self, RedisError> {
        let client = Client::open(config.url.expose_secret()).map_err(|_| {
            RedisError::from((
                ErrorKind::InvalidClientConfig,
                "AI_AGENTS_REDIS_URL is invalid",
            ))
        })?;
        let manager_config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(config.pool_timeout))
            .set_response_timeout(Some(config.pool_timeout))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_secs(1));
        let connections = (0..config.max_connections)
            .map(|_| client.get_connection_manager_lazy(manager_config.clone()))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self {
            client,
            connections: connections.into(),
            next: Arc::new(AtomicUsize::new(0)),
            timeout: config.pool_timeout,
        })
    }

    /// A shared connection for ordinary (non-blocking) commands.
    pub fn get(&self) -> ConnectionManager {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.connections.len();
        self.connections[i].clone()
    }

    /// Bound of one command.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// A connection of its own without a response timeout, for blocking commands.
    ///
    /// The redis crate's default 500 ms response timeout would cut every `BLOCK` short; the
    /// caller bounds its blocking commands itself.
    pub async fn dedicated(&self) -> Result<MultiplexedConnection, RedisError> {
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(self.timeout))
            .set_response_timeout(None);
        match tokio::time::timeout(
            self.timeout,
            self.client
                .get_multiplexed_async_connection_with_config(&config),
        )
        .await
        {
            Ok(result) => result,
            Err(_) => Err(timeout_error()),
        }
    }

    /// Whether Redis answers `PING` within `limit`.
    pub async fn ping(&self, limit: Duration) -> bool {
        let ping = redis::cmd("PING");
        matches!(
            tokio::time::timeout(limit, self.query::<String>(&ping)).await,
            Ok(Ok(_))
        )
    }

    /// Sends `cmd` on a shared connection, bounded by the pool timeout, once more if the
    /// connection had dropped (see the module doc).
    pub async fn query<T: FromRedisValue>(&self, cmd: &Cmd) -> Result<T, RedisError> {
        self.retrying_once(|mut conn| async move { cmd.query_async(&mut conn).await })
            .await
    }

    /// Like [`RedisPool::query`] for a pipeline (or a `MULTI`/`EXEC` transaction).
    pub async fn query_pipe<T: FromRedisValue>(&self, pipe: &Pipeline) -> Result<T, RedisError> {
        self.retrying_once(|mut conn| async move { pipe.query_async(&mut conn).await })
            .await
    }

    /// Like [`RedisPool::query`] for a Lua script (`EVALSHA`, loading it when Redis lost it).
    pub async fn invoke<T: FromRedisValue>(
        &self,
        script: &ScriptInvocation<'_>,
    ) -> Result<T, RedisError> {
        self.retrying_once(|mut conn| async move { script.invoke_async(&mut conn).await })
            .await
    }

    async fn retrying_once<T, F, Fut>(&self, send: F) -> Result<T, RedisError>
    where
        F: Fn(ConnectionManager) -> Fut,
        Fut: Future<Output = Result<T, RedisError>>,
    {
        let conn = self.get();
        match bounded(self.timeout, send(conn.clone())).await {
            Err(e) if connection_dropped(&e) => {
                tracing::debug!(error = %e, "Redis connection dropped; sending again on a new one");
                bounded(self.timeout, send(conn)).await
            }
            other => other,
        }
    }
}

/// A connection that was open and is gone (not a refusal, not a timeout): the manager has
/// started reconnecting, and the next command waits for the new connection.
fn connection_dropped(e: &RedisError) -> bool {
    (e.is_connection_dropped() || e.is_unrecoverable_error())
        && !e.is_connection_refusal()
        && !e.is_timeout()
}

/// Runs a Redis future under a deadline, turning the deadline into a Redis I/O error.
pub async fn bounded<T>(
    limit: Duration,
    future: impl Future<Output = Result<T, RedisError>>,
) -> Result<T, RedisError> {
    match tokio::time::timeout(limit, future).await {
        Ok(result) => result,
        Err(_) => Err(timeout_error()),
    }
}

/// Whether Redis answered `e` (or one command of the pipeline or transaction that failed
/// with `e`) with the error code `code`, e.g. `NOGROUP`.
pub fn has_code(e: &RedisError, code: &str) -> bool {
    e.code() == Some(code)
        || e.clone()
            .into_server_errors()
            .is_some_and(|errors| errors.iter().any(|(_, error)| error.code() == code))
}

/// The error used when a Redis command exceeds its bound.
pub fn timeout_error() -> RedisError {
    RedisError::from(std::io::Error::new(
        std::io::ErrorKind::TimedOut,
        "Redis timed out",
    ))
}
