//! The worker: takes jobs from the queue and runs them, at least once, with retries.
//!
//! Shaped like mini-redis's server loop. One reader takes a slot from a semaphore of
//! `AI_AGENTS_WORKER_CONCURRENCY` permits, then reads one job (prefetch 1 per slot), and hands
//! job and permit to a task; the permit returns when the task ends. A maintenance task beats
//! the heartbeat and reclaims jobs of dead workers; a promotion task moves due retries back
//! into the stream.
//!
//! Each job runs under two limits: at the soft limit its cancellation token fires (the job is
//! asked to stop); at the hard limit its future is dropped and the attempt counts as failed.
//! The outcome decides the entry's next place, in one atomic Redis step: acknowledged (done),
//! the retry set (transient failure with retries left), or the dead-letter list (permanent
//! failure, or retries used up; the enhancement is marked `failed` first).
//!
//! On SIGTERM/SIGINT the reader stops, in-flight jobs get `AI_AGENTS_SHUTDOWN_GRACE_SECS` to
//! finish, the heartbeat is removed so other workers reclaim whatever is left at once, and
//! `run` returns.

pub mod jobs;
pub mod metrics_server;
pub mod retry;

use std::{sync::Arc, time::Duration, time::Instant};

use backon::{ExponentialBuilder, Retryable};
use tokio::{sync::Semaphore, task::JoinSet};
use tokio_util::sync::CancellationToken;

use crate::{
    config::Config,
    db,
    queue::{Consumer, Delivery, Job, Queue, QueueError, RedisPool},
};
use jobs::JobContext;
use retry::{JobError, RetryPolicy};

/// How long one blocking read waits; bounds how long shutdown takes to notice.
const READ_BLOCK: Duration = Duration::from_secs(1);
/// Period of heartbeat and reclaim.
const MAINTENANCE_EVERY: Duration = Duration::from_secs(2);

/// Why the worker could not run at all.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    /// Bad database settings.
    #[error(transparent)]
    Database(#[from] db::DbSetupError),
    /// Bad Redis settings.
    #[error("AI_AGENTS_REDIS_URL is not usable")]
    Redis(#[source] redis::RedisError),
}

struct Shared {
    ctx: JobContext,
    consumer: Consumer,
    policy: RetryPolicy,
    soft_limit: Duration,
    hard_limit: Duration,
}

/// Runs the worker until `shutdown` is cancelled.
pub async fn run(config: &Config, shutdown: CancellationToken) -> Result<(), WorkerError> {
    let pool = db::connect_lazy(&config.database)?;
    let redis = RedisPool::new(&config.redis).map_err(WorkerError::Redis)?;
    let queue = Queue::new(redis, &config.redis.queue_prefix);
    let consumer = Consumer::new(queue.clone());
    let name = consumer.name().to_owned();
    crate::metrics::install();
    tracing::info!(consumer = %name, concurrency = config.worker.concurrency, "worker starting");
    if config.worker.reclaim_after <= config.worker.time_limit {
        tracing::warn!(
            "AI_AGENTS_WORKER_RECLAIM_AFTER_SECS is not above AI_AGENTS_TASK_TIME_LIMIT_SECS: a job \
             still running may be reclaimed and run twice at once (the stored effect stays single)"
        );
    }

    // Join the group before taking work; Redis may still be starting: retry, never crash-loop.
    let joined = until_ok_or_cancelled(&shutdown, || async {
        queue.ensure_group().await?;
        consumer.heartbeat().await
    })
    .await;
    if !joined {
        return Ok(());
    }

    let shared = Arc::new(Shared {
        ctx: JobContext {
            pool,
            queue: queue.clone(),
            consumer: name.clone(),
        },
        consumer,
        policy: RetryPolicy {
            max_retries: config.worker.max_retries,
            base: config.worker.retry_base,
        },
        soft_limit: config.worker.soft_time_limit,
        hard_limit: config.worker.time_limit,
    });
    // Jobs of workers that died while we were away come back before we start reading.
    maintain(&shared, config.worker.reclaim_after).await;
    tracing::info!(consumer = %name, "worker ready");

    // Maintenance outlives the shutdown signal: the heartbeat must keep beating while
    // in-flight jobs drain, or other workers would take those jobs for orphans.
    let maintenance_stop = CancellationToken::new();
    let maintenance = {
        let shared = Arc::clone(&shared);
        let stop = maintenance_stop.clone();
        let reclaim_after = config.worker.reclaim_after;
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    () = stop.cancelled() => break,
                    () = tokio::time::sleep(MAINTENANCE_EVERY) => maintain(&shared, reclaim_after).await,
                }
            }
        })
    };

    // Due retries go back to the stream promptly (a fraction of the base delay), so the
    // schedule stays close to base, 2×base, 4×base rather than rounding up to the
    // maintenance period.
    let promotion = {
        let shared = Arc::clone(&shared);
        let stop = shutdown.clone();
        let every =
            (config.worker.retry_base / 4).clamp(Duration::from_millis(50), MAINTENANCE_EVERY);
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    () = stop.cancelled() => break,
                    () = tokio::time::sleep(every) => {
                        if let Err(e) = shared.consumer.promote_due_retries().await {
                            tracing::warn!(error = &e as &dyn std::error::Error, "retry promotion failed");
                        }
                    }
                }
            }
        })
    };

    let slots = Arc::new(Semaphore::new(config.worker.concurrency));
    let mut tasks = JoinSet::new();
    let mut read_errors = 0_u32;
    while !shutdown.is_cancelled() {
        let permit = tokio::select! {
            permit = Arc::clone(&slots).acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => break,
            },
            () = shutdown.cancelled() => break,
        };
        // Reap finished tasks so the set does not grow.
        while tasks.try_join_next().is_some() {}
        match shared.consumer.next(READ_BLOCK).await {
            Ok(Some(delivery)) => {
                read_errors = 0;
                let shared = Arc::clone(&shared);
                tasks.spawn(async move {
                    handle(&shared, delivery).await;
                    drop(permit);
                });
            }
            Ok(None) => {}
            Err(e) => {
                read_errors = read_errors.saturating_add(1);
                let pause = Duration::from_millis(200 * u64::from(read_errors.min(25)));
                tracing::warn!(
                    error = &e as &dyn std::error::Error,
                    retry_in_ms = pause.as_millis() as u64,
                    "cannot read jobs"
                );
                tokio::select! {
                    () = tokio::time::sleep(pause) => {}
                    () = shutdown.cancelled() => {}
                }
            }
        }
    }

    tracing::info!(in_flight = tasks.len(), "draining in-flight jobs");
    let grace = config.shutdown_grace;
    let drained =
        tokio::time::timeout(grace, async { while tasks.join_next().await.is_some() {} }).await;
    if drained.is_err() {
        tracing::warn!(
            left = tasks.len(),
            "grace period over; unfinished jobs will be redelivered"
        );
        tasks.abort_all();
    }
    maintenance_stop.cancel();
    let _ = maintenance.await;
    promotion.abort();
    if let Err(e) = shared.consumer.leave().await {
        tracing::warn!(
            error = &e as &dyn std::error::Error,
            "could not leave the group cleanly"
        );
    }
    tracing::info!("worker stopped");
    Ok(())
}

/// Heartbeat and reclaim; failures are logged and tried again next time.
async fn maintain(shared: &Shared, reclaim_after: Duration) {
    let consumer = &shared.consumer;
    if let Err(e) = consumer.heartbeat().await {
        tracing::warn!(error = &e as &dyn std::error::Error, "heartbeat failed");
        return;
    }
    match consumer.reclaim(reclaim_after).await {
        Ok(0) => {}
        Ok(n) => tracing::warn!(
            count = n,
            "jobs of dead or silent workers put back in the queue"
        ),
        Err(e) => tracing::warn!(error = &e as &dyn std::error::Error, "reclaim failed"),
    }
}

/// Runs one delivery and moves its entry to its next place.
async fn handle(shared: &Shared, delivery: Delivery) {
    let started = Instant::now();
    let job = match Job::decode(&delivery.payload) {
        Ok(job) => job,
        Err(error) => {
            tracing::error!(entry = %delivery.entry_id, %error, "undecodable job dead-lettered");
            settle(|| shared.consumer.dead_letter(&delivery, &error, 1)).await;
            crate::metrics::record_job("unknown", "dead", 0, 0.0);
            return;
        }
    };
    let kind = jobs::kind_name(&job);

    // The soft limit asks the job to stop (its token fires) and lets it go on; the hard limit
    // abandons it. Both timers live in this task: no helper task per job.
    let cancel = CancellationToken::new();
    let run = async {
        let job_run = jobs::execute(&shared.ctx, &job, cancel.clone());
        tokio::pin!(job_run);
        tokio::select! {
            outcome = &mut job_run => outcome,
            () = tokio::time::sleep(shared.soft_limit) => {
                cancel.cancel();
                job_run.await
            }
        }
    };
    let outcome = match tokio::time::timeout(shared.hard_limit, run).await {
        Ok(outcome) => outcome,
        Err(_) => Err(JobError::Transient(format!(
            "hard time limit of {} s exceeded",
            shared.hard_limit.as_secs()
        ))),
    };
    let seconds = started.elapsed().as_secs_f64();

    match outcome {
        Ok(()) => {
            settle(|| shared.consumer.ack(&delivery)).await;
            crate::metrics::record_job(kind, "completed", job.attempt, seconds);
            tracing::debug!(job_id = %job.id, kind, "job done");
        }
        Err(JobError::Transient(error)) => match shared.policy.delay_after(job.attempt) {
            Some(delay) => {
                tracing::warn!(job_id = %job.id, kind, attempt = job.attempt + 1, %error, retry_in_ms = delay.as_millis() as u64, "job failed; will retry");
                let next = job.next_attempt();
                settle(|| shared.consumer.retry_later(&delivery, &next, delay)).await;
                crate::metrics::record_job(kind, "retried", job.attempt, seconds);
            }
            None => {
                let error = format!("gave up after {} attempts: {error}", job.attempt + 1);
                give_up(shared, &delivery, &job, &error).await;
                crate::metrics::record_job(kind, "dead", job.attempt, seconds);
            }
        },
        Err(JobError::Permanent(error)) => {
            give_up(shared, &delivery, &job, &error).await;
            crate::metrics::record_job(kind, "dead", job.attempt, seconds);
        }
    }
}

/// Marks the enhancement failed, then dead-letters the job. If the database cannot be reached
/// to record the failure, the job stays unacknowledged and comes back later: its enhancement
/// must not stay `pending` forever.
async fn give_up(shared: &Shared, delivery: &Delivery, job: &Job, error: &str) {
    tracing::error!(job_id = %job.id, attempts = job.attempt + 1, %error, "job failed for good");
    let recorded = (|| jobs::mark_failed(&shared.ctx, job, error))
        .retry(
            ExponentialBuilder::default()
                .with_min_delay(Duration::from_millis(500))
                .with_max_times(5),
        )
        .when(|e| matches!(e, JobError::Transient(_)))
        .await;
    if let Err(e) = recorded {
        tracing::error!(job_id = %job.id, error = %e, "cannot record the failure; the job will be redelivered");
        return;
    }
    settle(|| {
        shared
            .consumer
            .dead_letter(delivery, error, job.attempt + 1)
    })
    .await;
}

/// Retries a queue write a few times; if Redis stays away the entry remains in flight and is
/// reclaimed later, which is safe because processing is idempotent.
async fn settle<F, Fut>(write: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<(), QueueError>>,
{
    let result = write
        .retry(
            ExponentialBuilder::default()
                .with_min_delay(Duration::from_millis(200))
                .with_max_times(6),
        )
        .await;
    if let Err(e) = result {
        tracing::error!(
            error = &e as &dyn std::error::Error,
            "cannot update the queue; the job will be redelivered"
        );
    }
}

/// Calls `f` with backoff until it succeeds or `shutdown` fires; false if cancelled.
async fn until_ok_or_cancelled<F, Fut>(shutdown: &CancellationToken, mut f: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<(), QueueError>>,
{
    let mut delays = backon::BackoffBuilder::build(
        ExponentialBuilder::default()
            .with_min_delay(Duration::from_millis(250))
            .with_max_delay(Duration::from_secs(5))
            .without_max_times()
            .with_jitter(),
    );
    loop {
        match f().await {
            Ok(()) => return true,
            Err(e) => {
                let pause = delays.next().unwrap_or(Duration::from_secs(5));
                tracing::warn!(
                    error = &e as &dyn std::error::Error,
                    retry_in_ms = pause.as_millis() as u64,
                    "Redis not reachable yet"
                );
                tokio::select! {
                    () = tokio::time::sleep(pause) => {}
                    () = shutdown.cancelled() => return false,
                }
            }
        }
    }
}
