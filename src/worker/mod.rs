//! The worker: takes jobs from the queue and runs them, at least once, with retries.
//!
//! Shaped like mini-redis's server: [`Worker::build`] prepares everything, and
//! [`Worker::run_until_stopped`] runs three parts until the shutdown token fires:
//!
//! * the **read loop** waits for free slots (a semaphore of `AI_AGENTS_WORKER_CONCURRENCY`
//!   permits) and takes up to that many jobs with one `XREADGROUP`; a task per batch claims
//!   their rows in one transaction ([`batch::start`]) and runs the claimed jobs side by side,
//!   each under its soft limit (its cancellation token fires) and hard limit (its future is
//!   dropped: a failed attempt), while the read loop waits for the next free slot;
//! * the **recorder** receives the finished jobs (a job's slot is free once its result is
//!   queued for the recorder, so the next batch is claimed while this one is recorded), records
//!   the completed ones in one transaction ([`batch::record`]), then settles every delivery in
//!   one atomic Redis step — done, retry later, or dead letter (after marking the row
//!   `failed`);
//! * **maintenance** (`maintenance`), on interval timers: the heartbeat and the reclaim of jobs
//!   of dead or silent workers, the promotion of due retries, the orphan sweep ([`sweeper`])
//!   and the dead-letter trim.
//!
//! On SIGTERM/SIGINT the read loop stops, in-flight jobs get `AI_AGENTS_SHUTDOWN_GRACE_SECS` to
//! finish and be recorded (the heartbeat goes on meanwhile), the heartbeat is removed so other
//! workers reclaim at once whatever is left, and [`Worker::run_until_stopped`] returns.

pub mod batch;
pub mod dead_letters;
pub mod jobs;
mod maintenance;
pub mod metrics_server;
pub mod retry;
pub mod sweeper;

use std::{
    collections::HashSet,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use backon::{BackoffBuilder, ExponentialBuilder, Retryable};
use futures_util::{FutureExt, StreamExt, stream::FuturesUnordered};
use sqlx::PgPool;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tracing::Instrument;

use crate::{
    config::{Config, SessionLimits, WorkerConfig},
    db,
    queue::{Consumer, Delivery, Queue, RedisPool, Settlement},
};
use batch::{Finished, Next, Taken};
use jobs::JobContext;
use retry::{JobError, RetryPolicy};

/// How long one blocking read waits; bounds how long shutdown takes to notice.
const READ_BLOCK: Duration = Duration::from_secs(1);
/// Most finished jobs recorded in one transaction.
const RECORD_BATCH: usize = 256;

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

/// What every part of the worker shares.
struct Shared {
    pool: PgPool,
    session: SessionLimits,
    consumer: Consumer,
    ctx: JobContext,
    policy: RetryPolicy,
    settings: WorkerConfig,
    grace: Duration,
    /// Entry ids read by this process and not yet settled. A pending entry of this consumer
    /// that is not here came from a read whose answer was lost (see `maintenance`).
    held: Mutex<HashSet<String>>,
}

impl Shared {
    /// Notes deliveries as held by this process.
    fn hold(&self, deliveries: &[Delivery]) {
        let mut held = self
            .held
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        held.extend(deliveries.iter().map(|d| d.entry_id.clone()));
    }

    /// Forgets deliveries this process is done with: settled, or left for a later redelivery.
    fn release<'a>(&self, entry_ids: impl IntoIterator<Item = &'a str>) {
        let mut held = self
            .held
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for id in entry_ids {
            held.remove(id);
        }
    }

    /// How long one database call may take on this side ([`db::call_within`]).
    fn call_within(&self) -> Duration {
        db::call_within(&self.pool, self.session.answer_within())
    }

    /// Whether this process holds the delivery of `entry_id`.
    fn holds(&self, entry_id: &str) -> bool {
        self.held
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .contains(entry_id)
    }
}

/// A built worker, ready to run.
pub struct Worker {
    shared: Arc<Shared>,
}

/// A finished job on its way to the recorder.
struct Done {
    finished: Finished,
    kind: &'static str,
    seconds: f64,
}

impl Worker {
    /// Creates the pools and the consumer; connects to nothing yet (both may still be starting).
    pub fn build(config: &Config) -> Result<Self, WorkerError> {
        // With its HTTP listener, the worker's readiness probe has a connection of its own,
        // one of the pool size.
        let pool = if config.worker.metrics_addr.is_some() {
            db::connect_lazy(&db::beside_the_probe(&config.database))?
        } else {
            db::connect_lazy(&config.database)?
        };
        let redis = RedisPool::new(&config.redis).map_err(WorkerError::Redis)?;
        let queue = Queue::new(redis, &config.redis.queue_prefix);
        let consumer = Consumer::new(queue.clone(), config.worker.dead_letters.max_count);
        let ctx = JobContext {
            queue,
            consumer: consumer.name().to_owned(),
        };
        Ok(Self {
            shared: Arc::new(Shared {
                pool,
                session: config.database.session_limits,
                ctx,
                consumer,
                policy: RetryPolicy {
                    max_retries: config.worker.max_retries,
                    base: config.worker.retry_base,
                },
                settings: config.worker.clone(),
                grace: config.shutdown_grace,
                held: Mutex::new(HashSet::new()),
            }),
        })
    }

    /// This worker's consumer name.
    pub fn name(&self) -> &str {
        self.shared.consumer.name()
    }

    /// Runs until `shutdown` is cancelled, then drains (see the module doc).
    pub async fn run_until_stopped(self, shutdown: CancellationToken) -> Result<(), WorkerError> {
        let shared = self.shared;
        crate::metrics::install();
        tracing::info!(consumer = %shared.consumer.name(), concurrency = shared.settings.concurrency, "worker starting");
        if !join(&shared, &shutdown).await {
            return Ok(());
        }
        // Jobs of workers that died while we were away come back before we start reading.
        maintenance::heartbeat_and_reclaim(&shared, true).await;
        tracing::info!(consumer = %shared.consumer.name(), "worker ready");

        // Maintenance outlives the shutdown signal: the heartbeat must keep beating while
        // in-flight jobs drain, or other workers would take those jobs for orphans.
        let maintenance_stop = CancellationToken::new();
        let maintenance = tokio::spawn(maintenance::run(
            Arc::clone(&shared),
            shutdown.clone(),
            maintenance_stop.clone(),
        ));
        // Room for four slots' worth of finished jobs: the recorder then commits them in
        // batches of up to that many, one disk flush for all.
        let (done_tx, done_rx) = mpsc::channel::<Done>(4 * shared.settings.concurrency.max(1));
        let recorder = tokio::spawn(record(Arc::clone(&shared), done_rx));
        let batches = TaskTracker::new();
        read(&shared, &shutdown, &done_tx, &batches).await;
        drop(done_tx);
        drain(&shared, batches, recorder).await;

        maintenance_stop.cancel();
        let _ = maintenance.await;
        if let Err(e) = shared.consumer.leave().await {
            tracing::warn!(
                error = &e as &dyn std::error::Error,
                "could not leave the group cleanly"
            );
        }
        tracing::info!("worker stopped");
        Ok(())
    }
}

/// Runs the worker of `config` until `shutdown` is cancelled.
pub async fn run(config: &Config, shutdown: CancellationToken) -> Result<(), WorkerError> {
    Worker::build(config)?.run_until_stopped(shutdown).await
}

/// Joins the group before taking work. Redis may still be starting: retry with backoff, never
/// crash-loop. False if cancelled first.
async fn join(shared: &Shared, shutdown: &CancellationToken) -> bool {
    let mut delays = ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(250))
        .with_max_delay(Duration::from_secs(5))
        .without_max_times()
        .with_jitter()
        .build();
    loop {
        let joined = async {
            shared.consumer.queue().ensure_group().await?;
            shared.consumer.heartbeat().await
        };
        match joined.await {
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

/// The read loop: free slots → one read → a task for the batch.
async fn read(
    shared: &Arc<Shared>,
    shutdown: &CancellationToken,
    done: &mpsc::Sender<Done>,
    batches: &TaskTracker,
) {
    let slots = Arc::new(Semaphore::new(shared.settings.concurrency));
    let mut backoff = read_backoff();
    while !shutdown.is_cancelled() {
        let first = tokio::select! {
            permit = Arc::clone(&slots).acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => break,
            },
            () = shutdown.cancelled() => break,
        };
        let mut free = vec![first];
        while let Ok(permit) = Arc::clone(&slots).try_acquire_owned() {
            free.push(permit);
        }
        let deliveries = match shared.consumer.next_batch(free.len(), READ_BLOCK).await {
            Ok(deliveries) => {
                backoff = read_backoff();
                deliveries
            }
            Err(e) => {
                let pause = backoff.next().unwrap_or(Duration::from_secs(5));
                tracing::warn!(
                    error = &e as &dyn std::error::Error,
                    retry_in_ms = pause.as_millis() as u64,
                    "cannot read jobs"
                );
                tokio::select! {
                    () = tokio::time::sleep(pause) => {}
                    () = shutdown.cancelled() => {}
                }
                continue;
            }
        };
        if deliveries.is_empty() {
            continue;
        }
        shared.hold(&deliveries);
        // Slots beyond the jobs read return at once; the others travel with their jobs.
        free.truncate(deliveries.len());
        let read_at = tokio::time::Instant::now();
        batches.spawn(process(
            Arc::clone(shared),
            deliveries,
            read_at,
            free,
            done.clone(),
        ));
    }
}

/// One batch: claims its rows, settles at once what needs no run, runs the claimed jobs side
/// by side (each hands its result to the recorder, then frees its slot). The time limits count from the
/// read, so claiming is part of a job's time: a live worker settles every delivery well
/// before `AI_AGENTS_WORKER_RECLAIM_AFTER_SECS` (greater than the hard limit) would let
/// another worker take it.
async fn process(
    shared: Arc<Shared>,
    deliveries: Vec<Delivery>,
    read_at: tokio::time::Instant,
    mut free: Vec<OwnedSemaphorePermit>,
    done: mpsc::Sender<Done>,
) {
    // Claiming counts against the hard limit. The server ends a claim's lock waits (the only
    // way a live server makes it take long) when they would outlast it; this side ends a call
    // that a frozen or failed-over server never answers. Nothing keeps waiting once the attempt
    // is given up.
    let left = shared.settings.time_limit.saturating_sub(read_at.elapsed());
    let next = batch::start(
        &shared.pool,
        &shared.consumer,
        shared.policy,
        batch::ClaimBounds {
            lock_wait: shared.session.lock_timeout.min(left),
            call_within: shared.call_within().min(left),
        },
        deliveries,
    )
    .await;
    let mut settle_now = Vec::new();
    let mut runs = FuturesUnordered::new();
    for step in next {
        match step {
            Next::Run(taken) => {
                let slot = free.pop().expect("one slot per delivery");
                runs.push(run_job(&shared, taken, read_at, slot, &done));
            }
            Next::Settle(delivery, settlement) => settle_now.push((delivery, settlement)),
            Next::GiveUp(taken, error) => {
                match batch::give_up(
                    &shared.pool,
                    &shared.consumer,
                    shared.call_within(),
                    &taken,
                    &error,
                )
                .await
                {
                    Some(settlement) => settle_now.push((taken.delivery, settlement)),
                    None => shared.release([taken.delivery.entry_id.as_str()]),
                }
            }
        }
    }
    let settling = async {
        settle(&shared, &settle_now).await;
        for (delivery, settlement) in &settle_now {
            let kind = jobs::kind_of(&delivery.payload);
            crate::metrics::record_job(kind, settlement.outcome(), 0, 0.0);
        }
        // The slots of the deliveries settled without running.
        release_together(free);
    };
    let running = async {
        // The slots of jobs that finish together come back together, so the read loop takes
        // one batch for them all rather than one per slot (a batch of one costs a read and a
        // claim like a batch of four).
        while let Some(slot) = runs.next().await {
            let mut slots = vec![slot];
            while let Some(Some(slot)) = runs.next().now_or_never() {
                slots.push(slot);
            }
            release_together(slots);
        }
    };
    tokio::join!(settling, running);
}

/// Gives `slots` back to the semaphore at once: one wake-up of the read loop for all of them.
fn release_together(slots: Vec<OwnedSemaphorePermit>) {
    let mut slots = slots.into_iter();
    if let Some(mut all) = slots.next() {
        for slot in slots {
            all.merge(slot);
        }
        drop(all);
    }
}

/// Backoff of failed reads: 200 ms doubling to 5 s, with jitter, for ever.
fn read_backoff() -> backon::ExponentialBackoff {
    ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(200))
        .with_max_delay(Duration::from_secs(5))
        .without_max_times()
        .with_jitter()
        .build()
}

/// Runs one claimed job under its limits, in a span with its id, kind and attempt, hands the
/// result to the recorder, and gives back the job's slot.
async fn run_job(
    shared: &Shared,
    taken: Taken,
    read_at: tokio::time::Instant,
    slot: OwnedSemaphorePermit,
    done: &mpsc::Sender<Done>,
) -> OwnedSemaphorePermit {
    let kind = jobs::kind_name(&taken.job);
    let span =
        tracing::info_span!("job", job_id = %taken.job.id, kind, attempt = taken.job.attempt + 1);
    let started = Instant::now();
    let result = limited(shared, &taken, read_at).instrument(span).await;
    let seconds = started.elapsed().as_secs_f64();
    let finished = Finished { taken, result };
    // The recorder is gone only when the grace period ended: the delivery is then redelivered.
    let _ = done
        .send(Done {
            finished,
            kind,
            seconds,
        })
        .await;
    // The slot is free once the result is queued for the recorder: the next batch is read and
    // claimed while this one is recorded. The recorder's queue is bounded (four slots' worth),
    // so at most about six times the concurrency wait to be acknowledged.
    slot
}

/// The job under its soft limit (its token fires, it may go on) and its hard limit (it is
/// abandoned: a transient failure), both counted from `read_at`. Both timers live in this
/// task: no helper task per job.
async fn limited(
    shared: &Shared,
    taken: &Taken,
    read_at: tokio::time::Instant,
) -> Result<jobs::Output, JobError> {
    let cancel = CancellationToken::new();
    let run = async {
        let job = jobs::execute(&shared.ctx, &taken.job, cancel.clone());
        tokio::pin!(job);
        tokio::select! {
            outcome = &mut job => outcome,
            () = tokio::time::sleep_until(read_at + shared.settings.soft_time_limit) => {
                cancel.cancel();
                job.await
            }
        }
    };
    match tokio::time::timeout_at(read_at + shared.settings.time_limit, run).await {
        Ok(outcome) => outcome,
        Err(_) => Err(JobError::transient(format!(
            "hard time limit of {} s exceeded",
            shared.settings.time_limit.as_secs()
        ))),
    }
}

/// The recorder: whatever finished jobs are waiting → one transaction → one settle. While it
/// records one batch the read loop claims and runs the next, so the two overlap. Ends when
/// every sender is gone (the read loop stopped, every job task ended).
async fn record(shared: Arc<Shared>, mut done: mpsc::Receiver<Done>) {
    let mut batch = Vec::new();
    while done.recv_many(&mut batch, RECORD_BATCH).await > 0 {
        let mut metrics = Vec::with_capacity(batch.len());
        let mut finished = Vec::with_capacity(batch.len());
        for Done {
            finished: f,
            kind,
            seconds,
        } in batch.drain(..)
        {
            metrics.push((kind, f.taken.job.attempt, seconds));
            finished.push(f);
        }
        let call_within = shared.call_within();
        let next = batch::record(&shared.pool, shared.policy, call_within, finished).await;
        let mut settlements = Vec::with_capacity(next.len());
        for (step, (kind, attempt, seconds)) in next.into_iter().zip(metrics) {
            let settlement = match step {
                Next::Settle(delivery, settlement) => Some((delivery, settlement)),
                Next::GiveUp(taken, error) => {
                    let settlement =
                        batch::give_up(&shared.pool, &shared.consumer, call_within, &taken, &error)
                            .await;
                    if settlement.is_none() {
                        shared.release([taken.delivery.entry_id.as_str()]);
                    }
                    settlement.map(|settlement| (taken.delivery, settlement))
                }
                Next::Run(_) => None,
            };
            if let Some((delivery, settlement)) = settlement {
                crate::metrics::record_job(kind, settlement.outcome(), attempt, seconds);
                settlements.push((delivery, settlement));
            }
        }
        settle(&shared, &settlements).await;
    }
}

/// Settles deliveries, retrying while Redis is away; if it stays away, they remain in flight
/// and are reclaimed later, which is safe because recording is idempotent and fenced. Either
/// way this process is done with them.
async fn settle(shared: &Shared, settlements: &[(Delivery, Settlement)]) {
    if settlements.is_empty() {
        return;
    }
    let pairs: Vec<(&Delivery, Settlement)> =
        settlements.iter().map(|(d, s)| (d, s.clone())).collect();
    let settled = (|| shared.consumer.settle(&pairs))
        .retry(
            ExponentialBuilder::default()
                .with_min_delay(Duration::from_millis(200))
                .with_max_times(6),
        )
        .await;
    match settled {
        Ok(mine) => {
            for ((delivery, _), mine) in settlements.iter().zip(mine) {
                if !mine {
                    tracing::warn!(entry = %delivery.entry_id,
                        "delivery was no longer this worker's when settled: taken back, or \
                         settled by an earlier try whose answer was lost");
                }
            }
        }
        Err(e) => tracing::error!(
            error = &e as &dyn std::error::Error,
            "cannot update the queue; the jobs will be redelivered"
        ),
    }
    shared.release(settlements.iter().map(|(d, _)| d.entry_id.as_str()));
}

/// After the read loop: waits up to the grace period for the running batches and the
/// recorder. What is left then is dropped with the process and redelivered.
async fn drain(shared: &Shared, batches: TaskTracker, mut recorder: tokio::task::JoinHandle<()>) {
    tracing::info!(batches = batches.len(), "draining in-flight jobs");
    batches.close();
    let drained = tokio::time::timeout(shared.grace, async {
        batches.wait().await;
        let _ = (&mut recorder).await;
    })
    .await;
    if drained.is_err() {
        tracing::warn!(
            batches = batches.len(),
            "grace period over; unfinished jobs will be redelivered"
        );
        recorder.abort();
    }
}
