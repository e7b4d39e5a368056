//! The orphan sweeper: `pending` rows whose job was lost are queued again.
//!
//! The API commits a row, then queues its job; a process that dies between the two leaves a
//! `pending` row without a job (contract section 6: "a `pending` row whose job was lost is
//! queued again"). A sweep looks in two steps:
//!
//! 1. **Cheap, by time.** A row's first job is added to the stream after the row was last
//!    written, and stream ids are times, so only a `pending` row untouched since before the
//!    oldest entry still in the stream — by more than `AI_AGENTS_WORKER_ORPHAN_AFTER_SECS`, a
//!    margin for the gap between commit and `XADD` and for the clocks of PostgreSQL and Redis —
//!    can have lost its job. The rows of a backlog are not looked at.
//! 2. **Exact, by content.** A job can come back into the stream with a newer id than its row
//!    (a promoted retry, a dead worker's job put back) or wait in the retry schedule; both are
//!    read at one moment, and the rows whose jobs are there are left alone (a second copy
//!    would be an extra delivery, starting the attempt count over). With more than 10,000 jobs
//!    in either, the sweep waits for a later turn rather than guess.
//!
//! The rows left are touched (so the next sweep leaves them alone while their new job waits)
//! and their job queued again. Should a job still reach the stream after all, the second
//! delivery finds the row claimed or final and is dropped (fencing), so a sweep never runs a
//! job twice at once. One worker sweeps at a time (a lock key with a TTL).

use std::{collections::BTreeMap, time::Duration};

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::retry::JobError;
use crate::{
    db::{
        enhancements,
        scope::{CrossTenantTx, TenantTx},
    },
    domain::TenantId,
    queue::{Job, JobKind, Queue, QueueError, QueuedJobs},
};

/// Rows looked at per sweep.
const SWEEP_LIMIT: i64 = 500;
/// Most jobs looked through per sweep in the stream and in the retry schedule each; with more
/// there, the sweep waits for a later turn, as it could not tell their rows from orphans.
const SCAN_LIMIT: usize = 10_000;

/// Why a sweep stopped.
#[derive(Debug, thiserror::Error)]
pub enum SweepError {
    /// Redis failed.
    #[error(transparent)]
    Queue(#[from] QueueError),
    /// PostgreSQL failed.
    #[error(transparent)]
    Database(#[from] JobError),
}

impl From<sqlx::Error> for SweepError {
    fn from(e: sqlx::Error) -> Self {
        Self::Database(e.into())
    }
}

/// Queues again the jobs of orphaned `pending` rows, if this worker holds the sweep lock for
/// the next `period`; returns how many.
pub async fn sweep(
    pool: &sqlx::PgPool,
    queue: &Queue,
    consumer: &str,
    orphan_after: Duration,
    period: Duration,
) -> Result<u64, SweepError> {
    if !take_lock(queue, consumer, period).await? {
        return Ok(0);
    }
    let now_ms = queue.redis_now_ms().await?;
    let oldest_ms = queue.oldest_entry_ms().await?.unwrap_or(now_ms).min(now_ms);
    let margin = u64::try_from(orphan_after.as_millis()).unwrap_or(u64::MAX);
    let cutoff_ms = i64::try_from(oldest_ms.saturating_sub(margin)).unwrap_or(0);
    let Some(cutoff) = DateTime::<Utc>::from_timestamp_millis(cutoff_ms) else {
        return Ok(0);
    };
    let mut tx = CrossTenantTx::begin(pool).await?;
    let stale = enhancements::stale_pending(&mut tx, cutoff, SWEEP_LIMIT).await?;
    tx.finish().await?;
    if stale.is_empty() {
        return Ok(0);
    }
    let queued = match queue.queued_jobs(SCAN_LIMIT).await? {
        QueuedJobs::Seen(queued) => queued,
        QueuedJobs::TooMany => {
            tracing::info!(
                limit = SCAN_LIMIT,
                "orphan sweep skipped: more jobs are queued than it looks through"
            );
            return Ok(0);
        }
    };
    let mut by_tenant: BTreeMap<String, Vec<Uuid>> = BTreeMap::new();
    for (id, tenant) in stale {
        if !queued.contains(&id) {
            by_tenant.entry(tenant).or_default().push(id);
        }
    }
    let mut requeued = 0;
    for (tenant, ids) in by_tenant {
        let Ok(tenant) = TenantId::parse(&tenant) else {
            continue;
        };
        let mut tx = TenantTx::begin(pool, &tenant).await?;
        let touched = enhancements::touch_stale_pending(&mut tx, &ids, cutoff).await?;
        tx.commit().await?;
        for id in touched {
            // A crash here leaves the row touched without a job: the next sweep after the
            // margin finds it again.
            queue
                .enqueue(&Job::new(JobKind::Enhancement {
                    enhancement_id: id,
                    tenant_id: tenant.clone(),
                }))
                .await?;
            tracing::warn!(enhancement_id = %id, tenant_id = %tenant, "pending row without a job: queued again");
            requeued += 1;
        }
    }
    Ok(requeued)
}

/// `SET lock consumer NX PX period`: whether this worker sweeps this time.
async fn take_lock(queue: &Queue, consumer: &str, period: Duration) -> Result<bool, QueueError> {
    let mut set = redis::cmd("SET");
    set.arg(&queue.keys().sweep_lock)
        .arg(consumer)
        .arg("NX")
        .arg("PX")
        .arg(u64::try_from(period.as_millis()).unwrap_or(u64::MAX).max(1));
    let taken: Option<String> = queue.redis().query(&set).await?;
    Ok(taken.is_some())
}
