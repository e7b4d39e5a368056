//! The worker's own `/metrics` endpoint (when `AI_AGENTS_WORKER_METRICS_ADDR` is set).
//!
//! The worker serves no other HTTP; a tiny poem server on its own port keeps job metrics
//! scrapeable without routing them through the API.

use std::net::SocketAddr;

use poem::{
    EndpointExt, Route, Server, get, handler,
    listener::{Acceptor, Listener, TcpListener},
};

#[handler]
fn metrics() -> poem::Response {
    poem::Response::builder()
        .content_type("text/plain; version=0.0.4")
        .body(crate::metrics::render())
}

#[handler]
fn health() -> &'static str {
    "ok"
}

/// Binds `addr` and serves `/metrics` and `/health` in the background.
pub async fn spawn(addr: SocketAddr) -> std::io::Result<()> {
    crate::metrics::install();
    let acceptor = TcpListener::bind(addr).into_acceptor().await?;
    let _ = acceptor.local_addr();
    let app = Route::new()
        .at("/metrics", get(metrics))
        .at("/health", get(health))
        .boxed();
    tokio::spawn(async move {
        if let Err(e) = Server::new_with_acceptor(acceptor).run(app).await {
            tracing::error!(error = %e, "metrics server stopped");
        }
    });
    Ok(())
}
