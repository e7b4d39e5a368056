//! The worker's own HTTP listener (when `AI_AGENTS_WORKER_METRICS_ADDR` is set): `/metrics`,
//! and the probes of its pod, `/health` and `/health/ready`.
//!
//! The worker takes no traffic. Its listener keeps job metrics scrapeable without routing them
//! through the API, and gives the kubelet the probes every HTTP-serving pod has: liveness
//! answered by the worker's own runtime (a wedged process stops answering and is restarted), and
//! readiness when PostgreSQL and Redis answer, checked exactly as the API checks them (a worker
//! that cannot reach them takes no job, and its pod says so instead of looking fine).

use std::{net::SocketAddr, sync::Arc};

use poem::{
    EndpointExt, Response, Route, Server, get, handler,
    http::StatusCode,
    listener::{Listener, TcpListener},
    web::Data,
};
use poem_openapi::types::ToJSON;

use crate::{
    api::health::{liveness_endpoint, readiness},
    db::probe::Probe,
    queue::RedisPool,
};

/// What `/health/ready` checks: connections of their own, outside the job loop's pools, so a
/// busy worker is not reported down.
pub struct Probes {
    /// PostgreSQL's probe connection.
    pub database: Probe,
    /// Redis, for its `PING`.
    pub redis: RedisPool,
}

#[handler]
fn metrics() -> Response {
    Response::builder()
        .content_type("text/plain; version=0.0.4")
        .body(crate::metrics::render())
}

#[handler]
async fn ready(probes: Data<&Arc<Probes>>) -> Response {
    let answer = readiness(&probes.database, &probes.redis).await;
    let status = if answer.is_ready() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    Response::builder()
        .status(status)
        .content_type("application/json; charset=utf-8")
        .body(answer.to_json_string())
}

/// Binds `addr` and serves `/metrics`, `/health` and `/health/ready` in the background.
pub async fn spawn(addr: SocketAddr, probes: Probes) -> std::io::Result<()> {
    crate::metrics::install();
    let acceptor = TcpListener::bind(addr).into_acceptor().await?;
    let app = Route::new()
        .at("/metrics", get(metrics))
        .at("/health", liveness_endpoint())
        .at("/health/ready", get(ready))
        .data(Arc::new(probes))
        .boxed();
    tokio::spawn(async move {
        if let Err(e) = Server::new_with_acceptor(acceptor).run(app).await {
            tracing::error!(error = %e, "metrics server stopped");
        }
    });
    Ok(())
}
