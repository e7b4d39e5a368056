//! The ceilings of the HTTP figures, measured in the same run on the same machine: a bare hyper
//! server under the same wrk (for `GET /health`), and the database and Redis work of one
//! `POST /api/v1/enhancements` done directly from in-process tasks (for the POST).

use std::{
    convert::Infallible,
    net::SocketAddr,
    time::{Duration, Instant},
};

use ai_agents::{
    db::scope::TenantTx,
    domain::TenantId,
    queue::{Job, JobKind},
};
use http_body_util::Full;
use hyper::{body::Bytes, server::conn::http1, service::service_fn};
use hyper_util::rt::TokioIo;
use sqlx::Row;
use tokio::net::TcpListener;
use uuid::Uuid;

use crate::{
    BoxError, CONNECTIONS, REDIS_CONNECTIONS, Res, TENANT, bench_tenant,
    procfs::{CpuSnapshot, ProcessCpu},
    services::{Services, app_pool, redis_conn},
    settings::Settings,
    wrk::Load,
};

/// A bare hyper 1.x hello-world server on the bench's own runtime (2 worker threads on 2 cores,
/// like the API's default runtime).
pub async fn hello_server() -> Res<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let _ = stream.set_nodelay(true);
            tokio::spawn(async move {
                let service = service_fn(|_request| async {
                    Ok::<_, Infallible>(hyper::Response::new(Full::new(Bytes::from_static(
                        b"Hello, World!",
                    ))))
                });
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    Ok(addr)
}

/// What the API does for one POST, minus HTTP: a tenant-scoped transaction (begin,
/// `set_config`, the INSERT … RETURNING the row, commit) and the XADD of the job — from 32 tasks
/// over a pool of 20 connections and 10 multiplexed Redis connections, like the API's defaults.
pub async fn post_ceiling(s: &Settings, db: &str, prefix: &str, services: &Services) -> Res<Load> {
    let pool = app_pool(s, db).await?;
    let mut redis = Vec::new();
    for _ in 0..REDIS_CONNECTIONS {
        redis.push(redis_conn(s).await?);
    }
    let stream = format!("{prefix}:jobs");
    let round = |seconds: u32| {
        let deadline = Instant::now() + Duration::from_secs(u64::from(seconds));
        let mut tasks = tokio::task::JoinSet::new();
        for task in 0..CONNECTIONS as usize {
            let pool = pool.clone();
            let mut conn = redis[task % redis.len()].clone();
            let stream = stream.clone();
            tasks.spawn(async move {
                let mut latencies = Vec::new();
                while Instant::now() < deadline {
                    let started = Instant::now();
                    let id = Uuid::now_v7();
                    let mut tx = TenantTx::begin(&pool, &bench_tenant()).await?;
                    let row = sqlx::query(
                        "INSERT INTO enhancement_history (id, tenant_id, ticket_id, status, context)
                         VALUES ($1, $2, $3, 'pending', $4)
                         RETURNING id, tenant_id, ticket_id, status, context, context_gathered,
                                   llm_output, error_message, processing_time_ms, created_at,
                                   completed_at",
                    )
                    .bind(id)
                    .bind(TENANT)
                    .bind("BENCH-1")
                    .bind(serde_json::json!({"source": "direct"}))
                    .fetch_one(tx.conn())
                    .await?;
                    let _: Uuid = row.try_get("id")?;
                    tx.commit().await?;
                    let job = Job::new(JobKind::Enhancement {
                        enhancement_id: id,
                        tenant_id: TenantId::parse(TENANT)?,
                    });
                    let _: String = redis::cmd("XADD")
                        .arg(&stream)
                        .arg("*")
                        .arg("job")
                        .arg(job.encode())
                        .query_async(&mut conn)
                        .await?;
                    latencies.push(started.elapsed());
                }
                Ok::<_, BoxError>(latencies)
            });
        }
        tasks
    };
    let mut warm = round(s.warmup);
    while let Some(r) = warm.join_next().await {
        r??;
    }
    let before = CpuSnapshot::take(ProcessCpu::SelfProcess, services);
    let started = Instant::now();
    let mut tasks = round(s.duration);
    let mut latencies = Vec::new();
    while let Some(r) = tasks.join_next().await {
        latencies.extend(r??);
    }
    let elapsed = started.elapsed().as_secs_f64();
    let after = CpuSnapshot::take(ProcessCpu::SelfProcess, services);
    pool.close().await;
    latencies.sort_unstable();
    Ok(Load {
        rps: latencies.len() as f64 / elapsed,
        p50_ms: percentile(&latencies, 0.50),
        p99_ms: percentile(&latencies, 0.99),
        requests: latencies.len() as u64,
        non_2xx: 0,
        socket_errors: 0,
        cpu: before.share_until(&after, 0),
    })
}

/// The `p` quantile of `sorted` latencies, in milliseconds (nearest rank).
fn percentile(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let index = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[index].as_secs_f64() * 1000.0
}
