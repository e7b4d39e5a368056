//! The HTTP API: routes, shared state and the server's life cycle.
//!
//! [`Application::build`] does everything that can fail at start — bind the listener, create
//! the pools, apply migrations when asked — and [`Application::run_until_stopped`] serves until
//! the shutdown future resolves, then drains in-flight requests within the grace period. Tests
//! build the same application on port 0, so the tested path is the production path.

pub mod auth;
pub mod enhancements;
pub mod health;
pub mod idle;
pub mod linger;
pub mod middleware;
pub mod openapi;
pub mod paging;
pub mod problem;
pub mod queue;
pub mod server;
pub mod state;
pub mod tenants;
pub mod text;

pub use openapi::{openapi, openapi_document};
pub use state::AppState;

use std::{net::SocketAddr, sync::Arc, time::Duration};

use poem::{
    EndpointExt, Route,
    endpoint::{BoxEndpoint, make_sync},
    http::StatusCode,
    middleware::{CatchPanic, SetHeader},
};
use secrecy::{ExposeSecret, SecretString};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::{
    config::{Config, DatabaseConfig},
    crypto::Keyring,
    db,
    queue::{Queue, RedisPool},
};

/// Why the API could not start. Messages never contain secrets.
#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    /// A listen address is taken or not ours.
    #[error("cannot listen on {variable} ({addr})")]
    Bind {
        /// The variable that names the address.
        variable: &'static str,
        /// The address.
        addr: SocketAddr,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The database could not be set up.
    #[error(transparent)]
    Database(#[from] db::DbSetupError),
    /// The Redis URL is unusable.
    #[error("AI_AGENTS_REDIS_URL is not usable")]
    Redis(#[source] redis::RedisError),
    /// The encryption keys are unusable, or the development key cannot be read.
    #[error(transparent)]
    Keys(#[from] crate::crypto::LoadError),
}

/// A built, bound, not yet serving API.
pub struct Application {
    listener: TcpListener,
    addr: SocketAddr,
    metrics_listener: Option<TcpListener>,
    state: AppState,
    admin_token: SecretString,
    config: Config,
}

/// Longest wait of a request for a database connection (see [`Application::build`]).
pub const REQUEST_DB_WAIT: Duration = Duration::from_secs(3);

/// Most requests served at once; more get an immediate 503 instead of queueing without bound.
pub const MAX_CONCURRENT_REQUESTS: usize = 1024;

impl Application {
    /// Creates pools, applies migrations if configured, binds the listener.
    pub async fn build(config: Config) -> Result<Self, StartupError> {
        if config.run_migrations {
            migrate_at_start(&config.database).await?;
        }
        // Requests wait for a connection at most REQUEST_DB_WAIT: during an outage a client
        // gets its 503 in seconds, not after the full acquire timeout.
        // The readiness probe's connection is one of the pool size.
        let request_db = DatabaseConfig {
            connect_timeout: config.database.connect_timeout.min(REQUEST_DB_WAIT),
            ..db::beside_the_probe(&config.database)
        };
        let pool = db::connect_lazy(&request_db)?;
        let probe = Arc::new(db::probe::Probe::new(&config.database)?);
        let redis = RedisPool::new(&config.redis).map_err(StartupError::Redis)?;
        let queue = Queue::new(redis, &config.redis.queue_prefix);
        if let Err(e) = queue.ensure_group().await {
            // Not fatal: the API serves (and reports not ready) until Redis is back.
            tracing::warn!(
                error = &e as &dyn std::error::Error,
                "Redis not reachable at start"
            );
        }

        let keyring = Keyring::load(config.encryption_key.as_ref(), &config.encryption_old_keys)?;
        let admin_token = admin_token(config.admin_token.as_ref());

        let listener = bind("AI_AGENTS_BIND_ADDR", config.bind_addr).await?;
        let addr = listener.local_addr().unwrap_or(config.bind_addr);
        let metrics_listener = match config.api_metrics_addr {
            Some(metrics_addr) => Some(bind("AI_AGENTS_API_METRICS_ADDR", metrics_addr).await?),
            None => None,
        };
        crate::metrics::install();
        Ok(Self {
            listener,
            addr,
            metrics_listener,
            state: AppState {
                slots: Arc::new(db::slots::TenantSlots::for_pool(
                    request_db.pool_size,
                    REQUEST_DB_WAIT,
                )),
                pool,
                probe,
                answer_within: config.database.session_limits.answer_within(),
                allow_internal_urls: config.allow_internal_urls,
                queue,
                keyring: Arc::new(keyring),
            },
            admin_token,
            config,
        })
    }

    /// The bound address (port 0 resolved).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Where `/metrics` is served when it has a listener of its own.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_listener
            .as_ref()
            .and_then(|l| l.local_addr().ok())
    }

    /// The shared state (tests inspect the database and queue through it).
    pub fn state(&self) -> &AppState {
        &self.state
    }

    /// Serves until `shutdown` resolves, then lets in-flight requests finish within the grace.
    pub async fn run_until_stopped(
        self,
        shutdown: impl Future<Output = ()> + Send,
    ) -> std::io::Result<()> {
        let separate_metrics = self.metrics_listener.is_some();
        let app = routes(
            self.state.clone(),
            self.admin_token,
            &self.config,
            !separate_metrics,
        );
        let limits = server::ConnectionLimits {
            read_timeout: self.config.client_read_timeout,
        };
        let grace = self.config.shutdown_grace;
        let stop = CancellationToken::new();
        let metrics = self.metrics_listener.map(|listener| {
            let endpoint = Route::new()
                .at("/metrics", metrics_endpoint(self.state.clone()))
                .with(middleware::ProblemErrors)
                .boxed();
            tracing::info!(addr = ?listener.local_addr().ok(), "serving /metrics on its own port");
            let stop = stop.clone();
            tokio::spawn(server::serve(
                listener,
                endpoint,
                limits,
                async move { stop.cancelled().await },
                grace,
            ))
        });
        tracing::info!(addr = %self.addr, environment = self.config.environment.as_str(), "listening");
        let stopping = {
            let stop = stop.clone();
            async move {
                shutdown.await;
                stop.cancel();
            }
        };
        let served = server::serve(self.listener, app, limits, stopping, grace).await;
        stop.cancel();
        if let Some(metrics) = metrics {
            let _ = metrics.await;
        }
        served?;
        tracing::info!("stopped");
        Ok(())
    }
}

/// Applies pending migrations on a pool of their own with the full acquire timeout: at start the
/// database may still be coming up, and waiting for it is right there.
async fn migrate_at_start(database: &DatabaseConfig) -> Result<(), StartupError> {
    let pool = db::connect_for_migrations(database)?;
    db::migrate(&pool).await?;
    pool.close().await;
    tracing::info!("migrations applied");
    Ok(())
}

/// The configured admin token (with a warning when it is short), or in development (where none
/// is required) a random one, printed once on the terminal.
fn admin_token(configured: Option<&SecretString>) -> SecretString {
    if let Some(token) = configured {
        if token.expose_secret().len() < 16 {
            tracing::warn!(
                "AI_AGENTS_ADMIN_TOKEN is shorter than 16 characters; use a long random token"
            );
        }
        return token.clone();
    }
    let token = format!(
        "dev-{}{}",
        uuid::Uuid::new_v4().simple(),
        uuid::Uuid::new_v4().simple()
    );
    // Deliberately not through the log pipeline.
    eprintln!("AI_AGENTS_ADMIN_TOKEN is not set; this development server accepts: Bearer {token}");
    SecretString::from(token)
}

/// Binds a listener for the address named by `variable`.
async fn bind(variable: &'static str, addr: SocketAddr) -> Result<TcpListener, StartupError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| StartupError::Bind {
            variable,
            addr,
            source,
        })
}

/// `GET /metrics`: the process's metrics, with the gauges of external state (pool, queue
/// depth, job outcomes across workers) read now, each read bounded.
pub fn metrics_endpoint(state: AppState) -> impl poem::Endpoint<Output = poem::Response> {
    poem::get(poem::endpoint::make(move |_| {
        let state = state.clone();
        async move {
            crate::metrics::set_pool(&state.pool);
            if let Ok(Ok(stats)) =
                tokio::time::timeout(health::CHECK_LIMIT, state.queue.stats()).await
            {
                crate::metrics::set_queue_depth(&stats);
            }
            if let Ok(Ok(counts)) =
                tokio::time::timeout(health::CHECK_LIMIT, state.queue.outcomes()).await
            {
                crate::metrics::set_job_outcomes(&counts);
            }
            poem::Response::builder()
                .content_type("text/plain; version=0.0.4")
                .body(crate::metrics::render())
        }
    }))
}

/// The whole HTTP surface with its middleware; `/metrics` only when `with_metrics` (else it
/// has a listener of its own, see [`Application::run_until_stopped`]).
pub fn routes(
    state: AppState,
    admin_token: SecretString,
    config: &Config,
    with_metrics: bool,
) -> BoxEndpoint<'static> {
    let api = openapi(&state);
    let docs = api.swagger_ui();
    let spec_text = Arc::new(openapi_document(&api.spec()));
    let spec = poem::endpoint::make(move |_| {
        let text = Arc::clone(&spec_text);
        async move {
            poem::Response::builder()
                .content_type("application/json; charset=utf-8")
                .body(text.as_str().to_owned())
        }
    });
    let security_headers = SetHeader::new()
        .overriding("x-content-type-options", "nosniff")
        .overriding("x-frame-options", "DENY")
        .overriding("referrer-policy", "no-referrer");
    let mut shed = Route::new()
        .nest("/docs", docs)
        .at("/openapi.json", spec)
        .at("/favicon.ico", make_sync(|_| StatusCode::NO_CONTENT));
    if with_metrics {
        shed = shed.at("/metrics", metrics_endpoint(state.clone()));
    }
    // Outermost last: the token before the body, the body before a concurrency slot, the
    // deadline around the handler alone (see `middleware`).
    let shed = shed
        .nest("/", api)
        .data(auth::AdminToken(admin_token.clone()))
        .with(middleware::Deadline(config.request_timeout))
        .with(middleware::ConcurrencyLimit::new(MAX_CONCURRENT_REQUESTS))
        .with(middleware::BodyLimit {
            read_timeout: config.client_read_timeout,
        })
        .with(middleware::TokenGate(admin_token))
        .with(CatchPanic::new().with_handler(|_| {
            middleware::problem_response(&problem::Problem::new(
                500,
                "an unexpected error occurred",
            ))
        }));
    // Liveness is answered before the limits: it does no I/O, cannot hang, and must not be
    // shed when the API is busy (see `health`). Every request still gets an id, a span, its
    // metrics and the security headers.
    Route::new()
        .at("/health", health::liveness_endpoint())
        .nest("/", shed)
        .with(middleware::HeaderLimits)
        .with(middleware::ProblemErrors)
        .with(security_headers)
        .with(middleware::RequestContext)
        .boxed()
}
