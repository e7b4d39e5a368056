//! ai-agents: the foundation of an AI ticket-enhancement platform.
//!
//! A request enters through [`api`] (HTTP, poem-openapi), which hands it to its use case in
//! [`service`]; that stores it with [`db`] in PostgreSQL under row-level security and queues
//! it with [`queue`] in Redis. A job leaves the queue in
//! [`worker`], which processes it with retries and acknowledges it only once its result is
//! stored. Tenant secrets are sealed by [`crypto`] and checked or re-encrypted by
//! [`secrets_admin`] (`ai-agents-api secrets verify|rotate`). [`config`] and [`telemetry`] serve
//! both binaries, whose thin entry points in `src/bin/` read their arguments, [`boot`] and run
//! one of the [`commands`].

pub mod api;
pub mod boot;
pub mod commands;
pub mod config;
pub mod crypto;
pub mod db;
pub mod domain;
pub mod healthcheck;
pub mod metrics;
pub mod os;
pub mod queue;
pub mod secrets_admin;
pub mod service;
pub mod shutdown;
pub mod telemetry;
pub mod worker;

/// On musl, the allocator both binaries use: musl's own serialises every allocation behind a
/// single lock and made the static API serve `/health` about 5x slower than the glibc build
/// (docs/performance.md). glibc builds keep the system allocator.
#[cfg(target_env = "musl")]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Installs ring as the process-wide rustls crypto provider.
///
/// The redis crate builds its TLS configuration from rustls's process default. With only ring
/// in the graph that default is implied, but should any dependency ever enable aws-lc-rs as
/// well, rustls could not pick one and `rediss://` would fail at connect time. Installing ring
/// explicitly at start removes the ambiguity. Calling it twice is harmless.
pub fn install_tls_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}
