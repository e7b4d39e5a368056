//! Prometheus metrics shared by the API and the worker.
//!
//! Counters and histograms are recorded where things happen (the request middleware, the
//! worker loop); gauges that describe external state (queue depth, pool size) are read at
//! scrape time by [`render`], so they are never stale.

use std::{
    collections::HashMap,
    sync::{
        OnceLock, PoisonError, RwLock,
        atomic::{AtomicI64, Ordering},
    },
};

use metrics::{Counter, Histogram};

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

use crate::queue::QueueStats;

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// The outcomes of settled deliveries, as counted in Redis (`queue::Settlement::outcome`, and
/// `reclaimed` for jobs of dead or silent workers put back).
const JOB_OUTCOMES: [&str; 6] = [
    "completed",
    "retried",
    "dead",
    "dropped",
    "duplicate",
    "reclaimed",
];

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
        for outcome in JOB_OUTCOMES {
            metrics::counter!("ai_agents_job_outcomes_total", "outcome" => outcome).absolute(0);
        }
        handle
    })
}

/// Handles of metric series seen so far, by their label values. Registering a series on every
/// event (hashing its labels, allocating their strings) cost more than serving `/health`.
type SeriesCache<K, V> = OnceLock<RwLock<HashMap<K, V>>>;

/// The cached handles for `key`, registered by `register` the first time.
fn series<K, V>(cache: &SeriesCache<K, V>, key: K, register: impl FnOnce(&K) -> V) -> V
where
    K: std::hash::Hash + Eq,
    V: Clone,
{
    // Handles taken before the recorder exists would be no-ops forever: install it first.
    let cache = cache.get_or_init(|| {
        install();
        RwLock::default()
    });
    if let Some(handles) = cache
        .read()
        .unwrap_or_else(PoisonError::into_inner)
        .get(&key)
    {
        return handles.clone();
    }
    let handles = register(&key);
    cache
        .write()
        .unwrap_or_else(PoisonError::into_inner)
        .insert(key, handles.clone());
    handles
}

/// The method as a label: the common ones by name, anything else as `OTHER`, so a client
/// inventing methods cannot grow the series without bound.
fn method_label(method: &str) -> &'static str {
    match method {
        "GET" => "GET",
        "HEAD" => "HEAD",
        "POST" => "POST",
        "PUT" => "PUT",
        "PATCH" => "PATCH",
        "DELETE" => "DELETE",
        "OPTIONS" => "OPTIONS",
        _ => "OTHER",
    }
}

/// Counts one HTTP request and its latency.
pub fn record_request(method: &str, route: &'static str, status: u16, seconds: f64) {
    static SERIES: SeriesCache<(&'static str, &'static str, u16), (Counter, Histogram)> =
        OnceLock::new();
    let (counter, histogram) = series(
        &SERIES,
        (method_label(method), route, status),
        |&(method, route, status)| {
            (
                metrics::counter!(
                    "http_requests_total",
                    "method" => method,
                    "route" => route,
                    "status" => status.to_string(),
                ),
                metrics::histogram!("http_request_duration_seconds", "method" => method, "route" => route),
            )
        },
    );
    counter.increment(1);
    histogram.record(seconds);
}

/// Requests being served right now: a plain atomic counter, published as the
/// `http_requests_in_flight` gauge at scrape time (a gauge update per request is a contended
/// compare-and-swap loop on an `f64`).
static IN_FLIGHT: AtomicI64 = AtomicI64::new(0);

/// Counts a request in flight until the returned guard is dropped, however the request ends.
pub fn request_in_flight() -> InFlight {
    IN_FLIGHT.fetch_add(1, Ordering::Relaxed);
    InFlight(())
}

/// See [`request_in_flight`].
pub struct InFlight(());

impl Drop for InFlight {
    fn drop(&mut self) {
        IN_FLIGHT.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Counts one finished job attempt by kind and outcome.
pub fn record_job(kind: &'static str, outcome: &'static str, attempt: u32, seconds: f64) {
    static SERIES: SeriesCache<(&'static str, &'static str), (Counter, Histogram, Histogram)> =
        OnceLock::new();
    let (count, duration, attempts) = series(&SERIES, (kind, outcome), |&(kind, outcome)| {
        (
            metrics::counter!("jobs_total", "kind" => kind, "outcome" => outcome),
            metrics::histogram!("job_duration_seconds", "kind" => kind),
            metrics::histogram!("job_attempt", "kind" => kind),
        )
    });
    count.increment(1);
    duration.record(seconds);
    attempts.record(f64::from(attempt + 1));
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
    for outcome in JOB_OUTCOMES {
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
    metrics::gauge!("http_requests_in_flight").set(IN_FLIGHT.load(Ordering::Relaxed) as f64);
    handle.run_upkeep();
    handle.render()
}
