//! The database side of a batch of deliveries: claiming their rows before the jobs run, and
//! recording their results after, each with one call for the whole batch.
//!
//! A batch is what one `XREADGROUP` returned (up to the free slots). Claiming moves every row to
//! `processing` under its delivery's claim, tenant by tenant, in one call (one round trip, one
//! transaction) whose commit does not wait for the disk (a lost claim is redone by the
//! redelivery). Recording marks the finished jobs `completed`, each only under its claim, in one
//! call whose commit does wait for the disk; the deliveries are acknowledged only after that
//! commit, so a crash in between redelivers jobs whose rows are already final, which then change
//! nothing. If a batch call fails (one row can fail a whole statement), every delivery of the
//! batch is handled on its own, concurrently, so one bad row affects only itself.

use std::time::Duration;

use backon::{ExponentialBuilder, Retryable};
use futures_util::future::join_all;
use uuid::Uuid;

use super::{
    jobs::Output,
    retry::{JobError, RetryPolicy},
};
use crate::{
    db::{
        self,
        enhancements::{self, ClaimOutcome, ClaimRequest, Completion, Failing},
        scope::TenantTx,
    },
    domain::TenantId,
    queue::{Consumer, Delivery, Job, JobKind, Settlement},
};

/// A delivery whose job decoded, and the row it works on (none for a ping).
#[derive(Debug, Clone)]
pub struct Taken {
    /// The stream entry.
    pub delivery: Delivery,
    /// Its job.
    pub job: Job,
    /// The enhancement row and its tenant, for enhancement jobs.
    pub row: Option<(Uuid, TenantId)>,
}

/// What happens next to a delivery.
#[derive(Debug)]
pub enum Next {
    /// Its row is claimed (or it needs none): run the job.
    Run(Taken),
    /// Settle it so, without running anything.
    Settle(Delivery, Settlement),
    /// It failed for good: mark its row `failed` (under its claim), then dead-letter it.
    GiveUp(Taken, String),
}

/// How long claiming may take.
#[derive(Debug, Clone, Copy)]
pub struct ClaimBounds {
    /// Lock waits, ended by the server: the time left before the hard limit, at most the
    /// session's `lock_timeout`.
    pub lock_wait: Duration,
    /// Each call, ended on this side ([`db::within`], [`db::call_within`]): a frozen server
    /// ends nothing.
    pub call_within: Duration,
}

/// Decodes a batch and claims the rows of its enhancement jobs within `bounds`.
pub async fn start(
    pool: &sqlx::PgPool,
    consumer: &Consumer,
    policy: RetryPolicy,
    bounds: ClaimBounds,
    deliveries: Vec<Delivery>,
) -> Vec<Next> {
    let mut next = Vec::with_capacity(deliveries.len());
    let mut to_claim = Vec::new();
    for delivery in deliveries {
        let job = match Job::decode(&delivery.payload) {
            Ok(job) => job,
            Err(e) => {
                let error = e.to_string();
                tracing::error!(entry = %delivery.entry_id, %error, "undecodable job dead-lettered");
                next.push(Next::Settle(
                    delivery,
                    Settlement::Dead { error, attempts: 1 },
                ));
                continue;
            }
        };
        let row = match &job.kind {
            JobKind::Ping { .. } => None,
            JobKind::Enhancement {
                enhancement_id,
                tenant_id,
            } => Some((*enhancement_id, tenant_id.clone())),
        };
        let taken = Taken { delivery, job, row };
        if taken.row.is_some() {
            to_claim.push(taken);
        } else {
            next.push(Next::Run(taken));
        }
    }
    let claimed = claim_all(pool, consumer, bounds, &to_claim).await;
    for (taken, outcome) in to_claim.into_iter().zip(claimed) {
        next.push(after_claim(taken, outcome, policy));
    }
    next
}

/// What a claim's outcome means for its delivery.
fn after_claim(taken: Taken, outcome: Result<ClaimOutcome, JobError>, policy: RetryPolicy) -> Next {
    match outcome {
        // Every delivery counts, also those whose worker died: past the budget, the job is
        // given up even though this delivery could run it (a job that kills its worker).
        Ok(ClaimOutcome::Claimed) if taken.job.attempt > policy.max_retries => {
            let error = format!(
                "given up: delivered {} times without an outcome (each time its worker died, \
                 lost it, or could not record the outcome, e.g. with the database down)",
                taken.job.attempt
            );
            Next::GiveUp(taken, error)
        }
        Ok(ClaimOutcome::Claimed) => Next::Run(taken),
        Ok(ClaimOutcome::Finished) => {
            tracing::info!(job_id = %taken.job.id, "row already final; redelivery ignored");
            Next::Settle(taken.delivery, Settlement::Duplicate)
        }
        Ok(ClaimOutcome::Missing) => {
            tracing::warn!(job_id = %taken.job.id, entry = %taken.delivery.entry_id,
                "the job's row does not exist; job dropped");
            Next::Settle(taken.delivery, Settlement::Dropped)
        }
        Ok(ClaimOutcome::HeldBy(holder)) => {
            tracing::info!(job_id = %taken.job.id, holder = %holder,
                "another delivery of the job is running it; this one dropped");
            Next::Settle(taken.delivery, Settlement::Duplicate)
        }
        Err(error) => failed(taken, error, policy),
    }
}

/// A failed attempt: retried later while retries are left and the failure is transient,
/// else given up.
pub fn failed(taken: Taken, error: JobError, policy: RetryPolicy) -> Next {
    let attempts = taken.job.attempt + 1;
    match error {
        JobError::Transient { message: error, .. } => match policy.delay_after(taken.job.attempt) {
            Some(delay) => {
                tracing::warn!(job_id = %taken.job.id, attempt = attempts, %error,
                    retry_in_ms = delay.as_millis() as u64, "job failed; will retry");
                let next = taken.job.next_attempt();
                Next::Settle(taken.delivery, Settlement::Retry { next, delay })
            }
            None => Next::GiveUp(taken, format!("gave up after {attempts} attempts: {error}")),
        },
        JobError::Permanent { message, .. } => Next::GiveUp(taken, message),
    }
}

/// Claims the rows of `batch` in one call; a delivery whose row another, dead delivery still
/// holds takes it over. On a failed batch, each on its own.
async fn claim_all(
    pool: &sqlx::PgPool,
    consumer: &Consumer,
    bounds: ClaimBounds,
    batch: &[Taken],
) -> Vec<Result<ClaimOutcome, JobError>> {
    if batch.is_empty() {
        return Vec::new();
    }
    let requests: Vec<ClaimRequest<'_>> = batch.iter().map(|t| request(t, None)).collect();
    let claim = |requests| claim_in_one(pool, bounds, requests);
    let mut outcomes = match claim(&requests).await {
        Ok(outcomes) => outcomes.into_iter().map(Ok).collect(),
        Err(e) if batch.len() > 1 => {
            tracing::warn!(error = %e, size = batch.len(), "claiming a batch failed; one by one");
            join_all(requests.iter().map(|request| async move {
                claim(std::slice::from_ref(request))
                    .await
                    .map(|mut outcome| outcome.remove(0))
            }))
            .await
        }
        Err(e) => vec![Err(e)],
    };
    // Rows held by another delivery: taken over when that delivery is no longer in flight
    // (acknowledged, retried or requeued: its worker moved on or died).
    let held: Vec<(usize, String)> = outcomes
        .iter()
        .enumerate()
        .filter_map(|(i, outcome)| match outcome {
            Ok(ClaimOutcome::HeldBy(holder)) => Some((i, holder.clone())),
            _ => None,
        })
        .collect();
    if held.is_empty() {
        return outcomes;
    }
    let holders: Vec<&str> = held.iter().map(|(_, holder)| holder.as_str()).collect();
    let Ok(in_flight) = consumer.in_flight(&holders).await else {
        return outcomes;
    };
    for ((i, holder), alive) in held.iter().zip(in_flight) {
        if alive {
            continue;
        }
        let taken = &batch[*i];
        let takeover = [request(taken, Some(holder))];
        outcomes[*i] = claim_in_one(pool, bounds, &takeover)
            .await
            .map(|mut outcome| outcome.remove(0));
    }
    outcomes
}

/// Claims `requests` in one call ([`enhancements::claim`]) within `bounds`.
async fn claim_in_one(
    pool: &sqlx::PgPool,
    bounds: ClaimBounds,
    requests: &[ClaimRequest<'_>],
) -> Result<Vec<ClaimOutcome>, JobError> {
    let claim = enhancements::claim(pool, requests, bounds.lock_wait);
    Ok(db::within(bounds.call_within, claim).await?)
}

fn request<'a>(taken: &'a Taken, takeover_from: Option<&'a str>) -> ClaimRequest<'a> {
    let (id, tenant) = taken
        .row
        .as_ref()
        .expect("only enhancement jobs are claimed");
    ClaimRequest {
        tenant,
        id: *id,
        claim: &taken.delivery.entry_id,
        takeover_from,
    }
}

/// A job that ran, with its result.
#[derive(Debug)]
pub struct Finished {
    /// The delivery and its job.
    pub taken: Taken,
    /// What the job produced, or why it failed.
    pub result: Result<Output, JobError>,
}

/// Records the results of finished jobs: the completed enhancements in one transaction (each
/// under its claim, the call bounded by `call_within` on this side), then what each delivery
/// becomes. A completion whose claim was lost is retried later, never acknowledged as done by
/// this delivery.
pub async fn record(
    pool: &sqlx::PgPool,
    policy: RetryPolicy,
    call_within: Duration,
    finished: Vec<Finished>,
) -> Vec<Next> {
    let mut next = Vec::with_capacity(finished.len());
    let mut completed = Vec::new();
    for Finished { taken, result } in finished {
        match result {
            Ok(output @ Output::Enhanced { .. }) if taken.row.is_some() => {
                completed.push((taken, output));
            }
            Ok(_) => next.push(Next::Settle(taken.delivery, Settlement::Completed)),
            Err(error) => next.push(failed(taken, error, policy)),
        }
    }
    if completed.is_empty() {
        return next;
    }
    let recorded = match complete_in_one(pool, call_within, &completed).await {
        Ok(recorded) => recorded.into_iter().map(Ok).collect(),
        Err(e) if completed.len() > 1 => {
            tracing::warn!(error = %e, size = completed.len(), "recording a batch failed; one by one");
            join_all(completed.iter().map(|item| async move {
                complete_in_one(pool, call_within, std::slice::from_ref(item))
                    .await
                    .map(|mut recorded| recorded.remove(0))
            }))
            .await
        }
        Err(e) => vec![Err(e)],
    };
    for ((taken, _), recorded) in completed.into_iter().zip(recorded) {
        next.push(match recorded {
            Ok(true) => Next::Settle(taken.delivery, Settlement::Completed),
            Ok(false) => {
                tracing::warn!(job_id = %taken.job.id, "the job's claim was lost before its result was recorded");
                failed(taken, JobError::transient("the claim on the row was lost"), policy)
            }
            Err(error) => failed(taken, error, policy),
        });
    }
    next
}

/// One call marking `items` completed ([`enhancements::complete`]); whether each was recorded.
async fn complete_in_one(
    pool: &sqlx::PgPool,
    call_within: Duration,
    items: &[(Taken, Output)],
) -> Result<Vec<bool>, JobError> {
    let completions: Vec<Completion<'_>> = items
        .iter()
        .filter_map(|(taken, output)| {
            let Output::Enhanced {
                context_gathered,
                llm_output,
                processing_time_ms,
            } = output
            else {
                return None;
            };
            let (id, tenant) = taken.row.as_ref()?;
            Some(Completion {
                tenant,
                id: *id,
                claim: &taken.delivery.entry_id,
                processing_time_ms: *processing_time_ms,
                context_gathered,
                llm_output: llm_output.as_deref(),
            })
        })
        .collect();
    Ok(db::within(call_within, enhancements::complete(pool, &completions)).await?)
}

/// Marks the row of a job given up `failed` with `error`, under its claim, retrying while the
/// database is unavailable (each try bounded by `call_within` on this side); the settlement
/// for its delivery, or `None` when the failure could not be recorded (the delivery then stays
/// unsettled and comes back after the reclaim time: its row must not stay unfinished for ever).
///
/// A row that another delivery holds is that delivery's to finish while it is in flight. One
/// no longer in flight will never finish it (its worker died after its claim committed, e.g.
/// while the claim statement outlived the process): the row is failed in its place, or it would
/// stay `processing` without a job.
pub async fn give_up(
    pool: &sqlx::PgPool,
    consumer: &Consumer,
    call_within: Duration,
    taken: &Taken,
    error: &str,
) -> Option<Settlement> {
    let attempts = taken.job.attempt + 1;
    tracing::error!(job_id = %taken.job.id, attempts, %error, "job failed for good");
    let Some((id, tenant)) = &taken.row else {
        return Some(Settlement::Dead {
            error: error.to_owned(),
            attempts,
        });
    };
    let claim = taken.delivery.entry_id.as_str();
    let mark = |takeover_from| {
        mark_failed(
            pool,
            call_within,
            (tenant, *id),
            claim,
            takeover_from,
            error,
        )
    };
    let mut marked = mark(None).await;
    if let Ok(Failing::HeldBy(holder)) = &marked {
        match consumer.in_flight(&[holder.as_str()]).await.as_deref() {
            Ok([false]) => {
                tracing::warn!(job_id = %taken.job.id, holder = %holder,
                    "the row is held by a delivery no longer in flight; failed in its place");
                marked = mark(Some(holder.as_str())).await;
            }
            Ok(_) => {}
            // Whether the holder lives is unknown: decide on a later delivery.
            Err(e) => marked = Err(JobError::transient(e.to_string())),
        }
    }
    match marked {
        Ok(Failing::Failed) => Some(Settlement::Dead {
            error: error.to_owned(),
            attempts,
        }),
        // Final already, gone, or held by a delivery in flight: not this delivery's to fail.
        Ok(Failing::Closed | Failing::HeldBy(_)) => Some(Settlement::Dropped),
        Err(e) => {
            tracing::error!(job_id = %taken.job.id, error = %e,
                "cannot record the failure; the job will be redelivered");
            None
        }
    }
}

/// [`enhancements::fail`] in the row's tenant scope, retrying while the database is
/// unavailable, each try bounded by `call_within` on this side.
async fn mark_failed(
    pool: &sqlx::PgPool,
    call_within: Duration,
    (tenant, id): (&TenantId, Uuid),
    claim: &str,
    takeover_from: Option<&str>,
    error: &str,
) -> Result<Failing, JobError> {
    let attempt = || async {
        let marked = db::within(call_within, async {
            let mut tx = TenantTx::begin(pool, tenant).await?;
            let marked = enhancements::fail(&mut tx, id, claim, takeover_from, error).await?;
            tx.commit().await?;
            Ok::<_, sqlx::Error>(marked)
        });
        Ok::<Failing, JobError>(marked.await?)
    };
    attempt
        .retry(
            ExponentialBuilder::default()
                .with_min_delay(Duration::from_millis(500))
                .with_max_times(5),
        )
        .when(JobError::is_transient)
        .await
}
