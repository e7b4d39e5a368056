//! A small set of multiplexed Redis connections shared by a process.
//!
//! One multiplexed connection already pipelines many concurrent commands; a few of them spread
//! the load over `AI_AGENTS_REDIS_MAX_CONNECTIONS` sockets. They connect lazily (the API starts
//! while Redis is down) and reconnect by themselves. Every command is bounded by the pool
//! timeout, so a dead Redis makes callers fail fast instead of hanging. Blocking commands
//! (`XREADGROUP BLOCK`, `BLPOP`) must not use these connections: see [`RedisPool::dedicated`].

use std::{
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use redis::{
    AsyncConnectionConfig, Client, ErrorKind, RedisError,
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
        let mut conn = self.get();
        matches!(
            tokio::time::timeout(limit, redis::cmd("PING").query_async::<String>(&mut conn)).await,
            Ok(Ok(_))
        )
    }
}

/// The error used when a Redis command exceeds its bound.
pub fn timeout_error() -> RedisError {
    RedisError::from(std::io::Error::new(
        std::io::ErrorKind::TimedOut,
        "Redis timed out",
    ))
}
