//! The worker's maintenance, on interval timers while it runs: its heartbeat and the reclaim of
//! jobs held by dead or silent workers, the promotion of due retries, the orphan sweep and the
//! dead-letter trim. The heartbeat outlives the shutdown signal (the jobs still draining must
//! not look orphaned); the rest stops with it.

use std::{sync::Arc, time::Duration};

use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;

use super::{Shared, sweeper};

/// Period of heartbeat and reclaim.
const MAINTENANCE_EVERY: Duration = Duration::from_secs(2);
/// Period of the orphan sweep (one worker of all sweeps each time).
const SWEEP_EVERY: Duration = Duration::from_secs(10);
/// Period of the dead-letter trim by age.
const TRIM_EVERY: Duration = Duration::from_secs(60);

/// Maintenance on interval timers until `stop` (see the module doc). Promotion, sweeping and
/// trimming end with `shutdown`; the heartbeat goes on until `stop`.
pub(super) async fn run(shared: Arc<Shared>, shutdown: CancellationToken, stop: CancellationToken) {
    let ticker = |period: Duration| {
        let mut interval = tokio::time::interval(period);
        interval.set_missed_tick_behavior(MissedTickBehavior::Delay);
        interval.reset();
        interval
    };
    // Due retries go back promptly (a fraction of the base delay), so the schedule stays close
    // to base, 2×base, 4×base rather than rounding up to the maintenance period.
    let promote_every =
        (shared.settings.retry_base / 4).clamp(Duration::from_millis(50), MAINTENANCE_EVERY);
    let (mut beat, mut promote, mut sweep, mut trim) = (
        ticker(MAINTENANCE_EVERY),
        ticker(promote_every),
        ticker(SWEEP_EVERY),
        ticker(TRIM_EVERY),
    );
    let mut sweeping: Option<tokio::task::JoinHandle<()>> = None;
    loop {
        let working = !shutdown.is_cancelled();
        tokio::select! {
            () = stop.cancelled() => break,
            _ = beat.tick() => heartbeat_and_reclaim(&shared, false).await,
            _ = promote.tick(), if working => {
                if let Err(e) = shared.consumer.promote_due_retries().await {
                    tracing::warn!(error = &e as &dyn std::error::Error, "retry promotion failed");
                }
            }
            // The sweep runs beside the timers, not in their way: on a stuck database it may
            // hang for up to its period, and the heartbeat must not wait for it.
            _ = sweep.tick(), if working => {
                if sweeping.as_ref().is_none_or(tokio::task::JoinHandle::is_finished) {
                    sweeping = Some(tokio::spawn(sweep_once(Arc::clone(&shared))));
                }
            }
            _ = trim.tick(), if working => {
                match shared.consumer.queue().trim_dead(shared.settings.dead_letters).await {
                    Ok(0) => {}
                    Ok(n) => tracing::info!(count = n, "expired dead letters removed"),
                    Err(e) => tracing::warn!(error = &e as &dyn std::error::Error, "dead-letter trim failed"),
                }
            }
        }
    }
    if let Some(sweeping) = sweeping {
        sweeping.abort();
    }
}

/// One orphan sweep, bounded by its period: one that outlives it is stuck on a dependency, and
/// the next sweep starts afresh.
async fn sweep_once(shared: Arc<Shared>) {
    let swept = tokio::time::timeout(
        SWEEP_EVERY,
        sweeper::sweep(
            &shared.pool,
            shared.consumer.queue(),
            shared.consumer.name(),
            shared.settings.orphan_after,
            SWEEP_EVERY,
        ),
    )
    .await;
    match swept {
        Ok(Ok(0)) => {}
        Ok(Ok(n)) => tracing::warn!(count = n, "orphaned pending rows queued again"),
        Ok(Err(e)) => {
            tracing::warn!(error = &e as &dyn std::error::Error, "orphan sweep failed");
        }
        Err(_) => tracing::warn!(
            limit_s = SWEEP_EVERY.as_secs(),
            "orphan sweep abandoned: it outlived its period"
        ),
    }
}

/// Heartbeat, reclaim, and the entries of lost reads; failures are logged and tried again next
/// time. `at_start`: the first run of this process, which takes back at once the jobs of a
/// predecessor that ended on this host.
pub(super) async fn heartbeat_and_reclaim(shared: &Shared, at_start: bool) {
    let consumer = &shared.consumer;
    if let Err(e) = consumer.heartbeat().await {
        tracing::warn!(error = &e as &dyn std::error::Error, "heartbeat failed");
        return;
    }
    match consumer
        .reclaim(shared.settings.reclaim_after, at_start)
        .await
    {
        Ok(0) => {}
        Ok(n) => tracing::warn!(
            count = n,
            "jobs of dead or silent workers put back in the queue"
        ),
        Err(e) => tracing::warn!(error = &e as &dyn std::error::Error, "reclaim failed"),
    }
    // A read that timed out here may still have been carried out by Redis (a frozen server
    // runs what it was sent once it thaws): its entries are this consumer's, but no task has
    // them. Past any read's bound they cannot belong to a read still under way.
    let lost_after =
        super::READ_BLOCK + consumer.queue().redis().timeout() + Duration::from_secs(1);
    match consumer
        .requeue_unheld(lost_after, |id| shared.holds(id))
        .await
    {
        Ok(0) => {}
        Ok(n) => tracing::warn!(
            count = n,
            "jobs of a read whose answer was lost put back in the queue"
        ),
        Err(e) => tracing::warn!(
            error = &e as &dyn std::error::Error,
            "lost-read check failed"
        ),
    }
}
