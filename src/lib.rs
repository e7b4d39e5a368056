//! ai-agents: the foundation of an AI ticket-enhancement platform.
//!
//! A request enters through [`api`] (HTTP, poem-openapi), is stored by [`db`] in PostgreSQL
//! under row-level security and queued by [`queue`] in Redis; a job leaves the queue in
//! [`worker`], which processes it with retries and acknowledges it only once its result is
//! stored. [`config`] and [`telemetry`] serve both binaries, whose thin entry points live in
//! `src/bin/`.

pub mod api;
pub mod config;
pub mod crypto;
pub mod db;
pub mod domain;
pub mod healthcheck;
pub mod metrics;
pub mod queue;
pub mod secret;
pub mod shutdown;
pub mod telemetry;
pub mod worker;
