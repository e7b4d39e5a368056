//! Liveness and readiness.
//!
//! `/health` does no I/O: it answers as long as the process serves HTTP, so a slow database
//! never gets a healthy pod restarted. `/health/ready` checks PostgreSQL and Redis at the same
//! time, each bounded by [`CHECK_LIMIT`], and answers 503 when either is down, so a load
//! balancer stops sending traffic without the probe ever hanging. The database check uses a
//! connection of its own ([`crate::db::probe`]): a request pool saturated by traffic (or
//! by requests stuck behind a locked row) is busy, not down, and must not take every replica
//! out of service at once.
//!
//! The router serves `/health` with [`liveness_endpoint`], outside poem-openapi and outside the
//! load-shedding layers (see `routes`): probes arrive all the time, and a liveness probe shed by
//! the concurrency limit would get a busy but healthy pod restarted. The operation below stays
//! for the OpenAPI document; both build their answer with [`liveness`].

use std::time::Duration;

use poem::{Endpoint, Response, endpoint::make_sync, http::header};
use poem_openapi::{ApiResponse, Object, OpenApi, OperationId, Tags, payload::Json};
use serde::Serialize;

use super::AppState;
use crate::{db::probe::Probe, queue::RedisPool};

/// Bound of one dependency check.
pub const CHECK_LIMIT: Duration = Duration::from_secs(2);

#[derive(Tags)]
enum HealthTags {
    /// Liveness and readiness probes.
    Health,
}

/// Liveness answer.
#[derive(Object)]
pub struct Health {
    /// Always `healthy`.
    pub status: String,
    /// Server time (RFC 3339).
    pub timestamp: chrono::DateTime<chrono::Utc>,
    /// Crate version.
    pub version: String,
}

/// State of each dependency.
#[derive(Object)]
pub struct Dependencies {
    /// `connected` or `disconnected`.
    pub database: String,
    /// `connected` or `disconnected`.
    pub redis: String,
}

/// Readiness answer.
#[derive(Object)]
pub struct Readiness {
    /// `ready` or `not_ready`.
    pub status: String,
    /// Per dependency.
    pub dependencies: Dependencies,
}

#[derive(ApiResponse)]
enum ReadyResponse {
    /// Every dependency answers.
    #[oai(status = 200)]
    Ready(Json<Readiness>),
    /// At least one dependency is down.
    #[oai(status = 503)]
    NotReady(Json<Readiness>),
}

/// `/health` and `/health/ready`.
pub struct HealthApi {
    /// Shared state.
    pub state: AppState,
}

/// The liveness answer, as of now.
pub fn liveness() -> Health {
    Health {
        status: "healthy".to_owned(),
        timestamp: chrono::Utc::now(),
        version: env!("CARGO_PKG_VERSION").to_owned(),
    }
}

/// `GET /health` as a plain endpoint: the same body as the documented operation, serialised
/// directly instead of through poem-openapi's router and intermediate JSON value (in an A/B on
/// the bench machine a plain route served 160k req/s, the operation 111k), and labelled with
/// the operation's id for logs and metrics.
pub fn liveness_endpoint() -> impl Endpoint<Output = Response> {
    /// `Health` as poem-openapi writes it (timestamp in `to_rfc3339` form).
    #[derive(Serialize)]
    struct Body<'a> {
        status: &'a str,
        timestamp: String,
        version: &'a str,
    }
    poem::get(make_sync(|_| {
        let health = liveness();
        let body = serde_json::to_vec(&Body {
            status: &health.status,
            timestamp: health.timestamp.to_rfc3339(),
            version: &health.version,
        })
        .unwrap_or_default();
        let mut response = Response::builder()
            .header(header::CONTENT_TYPE, "application/json; charset=utf-8")
            .body(body);
        response.set_data(OperationId("health"));
        response
    }))
}

fn word(up: bool) -> String {
    if up { "connected" } else { "disconnected" }.to_owned()
}

impl Readiness {
    /// Whether every dependency answered.
    pub fn is_ready(&self) -> bool {
        self.status == "ready"
    }
}

/// The readiness answer, as of now: PostgreSQL (on the probe's own connection) and Redis
/// checked at the same time, each within [`CHECK_LIMIT`]. The API's `/health/ready` and the
/// worker's (on its metrics listener) give the same answer in the same shape.
pub async fn readiness(probe: &Probe, redis: &RedisPool) -> Readiness {
    let (database, redis) = tokio::join!(probe.answers(CHECK_LIMIT), redis.ping(CHECK_LIMIT));
    Readiness {
        status: if database && redis {
            "ready"
        } else {
            "not_ready"
        }
        .to_owned(),
        dependencies: Dependencies {
            database: word(database),
            redis: word(redis),
        },
    }
}

#[OpenApi(tag = "HealthTags::Health")]
impl HealthApi {
    /// Liveness: the process serves HTTP.
    #[oai(path = "/health", method = "get", operation_id = "health")]
    async fn health(&self) -> Json<Health> {
        Json(liveness())
    }

    /// Readiness: PostgreSQL and Redis answer within 2 s each.
    #[oai(path = "/health/ready", method = "get", operation_id = "health_ready")]
    async fn ready(&self) -> ReadyResponse {
        let body = readiness(&self.state.probe, self.state.queue.redis()).await;
        if body.is_ready() {
            ReadyResponse::Ready(Json(body))
        } else {
            ReadyResponse::NotReady(Json(body))
        }
    }
}
