//! What a worker does with each kind of job.
//!
//! The enhancement job of this foundation is a placeholder: it moves the row `pending` →
//! `processing` → `completed` with `processing_time_ms` and `completed_at`, each step in a
//! tenant-scoped transaction. The real enhancement logic will replace the middle. A job whose
//! row is already final does nothing, which makes redelivery harmless.

use std::time::Instant;

use serde_json::json;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::retry::JobError;
use crate::{
    db::{
        enhancements::{self, StartOutcome},
        scope::TenantTx,
    },
    domain::TenantId,
    queue::{Job, JobKind, Queue},
};

/// Everything a job may use.
pub struct JobContext {
    /// PostgreSQL.
    pub pool: PgPool,
    /// The queue (for ping answers).
    pub queue: Queue,
    /// This worker's consumer name, for ping answers.
    pub consumer: String,
}

/// Runs `job`. `cancel` is triggered at the soft time limit.
pub async fn execute(
    ctx: &JobContext,
    job: &Job,
    cancel: CancellationToken,
) -> Result<(), JobError> {
    match &job.kind {
        JobKind::Enhancement {
            enhancement_id,
            tenant_id,
        } => enhance(ctx, *enhancement_id, tenant_id, cancel).await,
        JobKind::Ping { reply_to } => pong(ctx, reply_to).await,
    }
}

/// The job kind's name, for logs and metrics.
pub fn kind_name(job: &Job) -> &'static str {
    match job.kind {
        JobKind::Enhancement { .. } => "enhancement",
        JobKind::Ping { .. } => "ping",
    }
}

async fn enhance(
    ctx: &JobContext,
    id: Uuid,
    tenant_id: &str,
    cancel: CancellationToken,
) -> Result<(), JobError> {
    let tenant =
        TenantId::parse(tenant_id).map_err(|e| JobError::Permanent(format!("bad payload: {e}")))?;
    let started = Instant::now();
    // The `processing` mark is advisory: lost in a crash, the row stays `pending` and the
    // redelivered job sets it again, so it need not wait for a disk flush.
    let mut tx = TenantTx::begin_unsynced(&ctx.pool, &tenant).await?;
    match enhancements::start_processing(&mut tx, id).await? {
        StartOutcome::Started => {}
        StartOutcome::AlreadyFinished => {
            tracing::info!(enhancement_id = %id, "already finished; redelivery ignored");
            return Ok(());
        }
        StartOutcome::Missing => {
            return Err(JobError::Permanent(format!(
                "enhancement {id} of tenant {tenant} no longer exists"
            )));
        }
    }
    tx.commit().await?;

    // Placeholder for the enhancement logic, which must watch `cancel` (the soft time limit).
    if cancel.is_cancelled() {
        return Err(JobError::Transient("soft time limit reached".to_owned()));
    }
    let gathered = json!({});

    let elapsed_ms = i32::try_from(started.elapsed().as_millis()).unwrap_or(i32::MAX);
    let mut tx = TenantTx::begin(&ctx.pool, &tenant).await?;
    enhancements::complete(&mut tx, id, elapsed_ms, &gathered, None).await?;
    tx.commit().await?;
    Ok(())
}

/// Marks the enhancement of a job that failed for good as `failed`.
pub async fn mark_failed(ctx: &JobContext, job: &Job, error: &str) -> Result<(), JobError> {
    let JobKind::Enhancement {
        enhancement_id,
        tenant_id,
    } = &job.kind
    else {
        return Ok(());
    };
    let Ok(tenant) = TenantId::parse(tenant_id) else {
        return Ok(());
    };
    let mut tx = TenantTx::begin(&ctx.pool, &tenant).await?;
    enhancements::fail(&mut tx, *enhancement_id, error).await?;
    tx.commit().await?;
    Ok(())
}

async fn pong(ctx: &JobContext, reply_to: &str) -> Result<(), JobError> {
    let answer = format!(
        "pong from {} (ai-agents-worker {})",
        ctx.consumer,
        env!("CARGO_PKG_VERSION")
    );
    let mut conn = ctx.queue.redis().get();
    let result: Result<(), redis::RedisError> = redis::pipe()
        .atomic()
        .cmd("LPUSH")
        .arg(reply_to)
        .arg(&answer)
        .ignore()
        .cmd("EXPIRE")
        .arg(reply_to)
        .arg(60)
        .ignore()
        .query_async(&mut conn)
        .await;
    result.map_err(|e| JobError::Transient(format!("Redis error: {e}")))
}
