//! Prometheus metrics shared by the API and the worker.
//!
//! Counters and histograms are recorded where things happen (the request middleware, the
//! worker loop); gauges that describe external state (queue depth, pool size) are read at
//! scrape time by [`render`], so they are never stale.

use std::sync::OnceLock;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

use crate::queue::QueueStats;

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

const LATENCY_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 120.0,
];

/// Installs the process-wide recorder once and returns its handle.
pub fn install() -> &'static PrometheusHandle {
    HANDLE.get_or_init(|| {
        let builder = PrometheusBuilder::new();
        let builder = builder
            .set_buckets(LATENCY_BUCKETS)
            .unwrap_or_else(|_| PrometheusBuilder::new());
        let recorder = builder.build_recorder();
        let handle = recorder.handle();
        // Fails only if another recorder is installed already; then ours simply stays unused.
        let _ = metrics::set_global_recorder(recorder);
        metrics::gauge!(
            "ai_agents_build_info",
            "version" => env!("CARGO_PKG_VERSION"),
            "revision" => option_env!("AI_AGENTS_GIT_REVISION").unwrap_or("unknown"),
        )
        .set(1.0);
        for outcome in ["completed", "retried", "dead"] {
            metrics::counter!("ai_agents_job_outcomes_total", "outcome" => outcome).absolute(0);
        }
        handle
    })
}

/// Counts one HTTP request and its latency.
pub fn record_request(method: &str, route: &'static str, status: u16, seconds: f64) {
    let status = status.to_string();
    metrics::counter!(
        "http_requests_total",
        "method" => method.to_owned(),
        "route" => route,
        "status" => status,
    )
    .increment(1);
    metrics::histogram!("http_request_duration_seconds", "method" => method.to_owned(), "route" => route)
        .record(seconds);
}

/// Tracks requests being served right now.
pub fn requests_in_flight(delta: f64) {
    metrics::gauge!("http_requests_in_flight").increment(delta);
}

/// Counts one finished job attempt by kind and outcome.
pub fn record_job(kind: &'static str, outcome: &'static str, attempt: u32, seconds: f64) {
    metrics::counter!("jobs_total", "kind" => kind, "outcome" => outcome).increment(1);
    metrics::histogram!("job_duration_seconds", "kind" => kind).record(seconds);
    metrics::histogram!("job_attempt", "kind" => kind).record(f64::from(attempt + 1));
}

/// Sets the queue-depth gauges.
pub fn set_queue_depth(stats: &QueueStats) {
    for (state, value) in [
        ("pending", stats.pending),
        ("in_flight", stats.in_flight),
        ("retrying", stats.retrying),
        ("dead", stats.dead),
    ] {
        #[allow(clippy::cast_precision_loss)]
        metrics::gauge!("queue_jobs", "state" => state).set(value as f64);
    }
}

/// Sets the cluster-wide job outcome counters (read from Redis at scrape time).
pub fn set_job_outcomes(counts: &std::collections::HashMap<String, u64>) {
    for outcome in ["completed", "retried", "dead"] {
        let value = counts.get(outcome).copied().unwrap_or(0);
        metrics::counter!("ai_agents_job_outcomes_total", "outcome" => outcome).absolute(value);
    }
}

/// Sets the database pool gauges.
pub fn set_pool(pool: &sqlx::PgPool) {
    metrics::gauge!("db_pool_connections", "state" => "open").set(f64::from(pool.size()));
    #[allow(clippy::cast_precision_loss)]
    metrics::gauge!("db_pool_connections", "state" => "idle").set(pool.num_idle() as f64);
    metrics::gauge!("db_pool_max_connections").set(f64::from(pool.options().get_max_connections()));
}

/// The text exposition of every metric.
pub fn render() -> String {
    let handle = install();
    handle.run_upkeep();
    handle.render()
}
