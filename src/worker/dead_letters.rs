//! Operating the dead-letter stream: `ai-agents-worker dead list | retry | purge`.
//!
//! Retrying a dead letter re-opens its enhancement (`failed` → `pending`, error cleared) and
//! then moves the letter back into the jobs stream as a fresh first attempt, atomically in
//! Redis. If the row cannot be re-opened (it was deleted, or retried already) the letter stays
//! where it is and the operator is told why.

use std::time::Duration;

use sqlx::PgPool;

use crate::{
    db::{enhancements, scope::TenantTx},
    queue::{DeadLetter, Job, JobKind, Queue, QueueError, job::DecodeError},
};

/// What retrying one dead letter did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Retried {
    /// Back in the queue (its row re-opened, for an enhancement).
    Queued,
    /// Not found (retried or purged by someone else).
    Gone,
    /// Left where it is, with the reason.
    Kept(String),
}

/// Why an operation failed.
#[derive(Debug, thiserror::Error)]
pub enum DeadLetterError {
    /// Redis failed.
    #[error(transparent)]
    Queue(#[from] QueueError),
    /// PostgreSQL failed.
    #[error("the database is unavailable: {0}")]
    Database(#[from] sqlx::Error),
}

/// Retries the dead letter `id`.
pub async fn retry(queue: &Queue, pool: &PgPool, id: &str) -> Result<Retried, DeadLetterError> {
    let Some(letter) = queue.dead_letter(id).await? else {
        return Ok(Retried::Gone);
    };
    retry_letter(queue, pool, &letter).await
}

/// Retries every dead letter, oldest first; the outcome of each, by id.
pub async fn retry_all(
    queue: &Queue,
    pool: &PgPool,
) -> Result<Vec<(String, Retried)>, DeadLetterError> {
    let mut letters = queue.dead_letters(usize::MAX >> 1).await?;
    letters.reverse();
    let mut outcomes = Vec::with_capacity(letters.len());
    for letter in letters {
        let outcome = retry_letter(queue, pool, &letter).await?;
        outcomes.push((letter.id, outcome));
    }
    Ok(outcomes)
}

async fn retry_letter(
    queue: &Queue,
    pool: &PgPool,
    letter: &DeadLetter,
) -> Result<Retried, DeadLetterError> {
    let job = match Job::decode(&letter.job) {
        Ok(job) => job,
        Err(DecodeError::BadTenant(_)) => {
            return Ok(Retried::Kept("its tenant id is invalid".to_owned()));
        }
        Err(DecodeError::Undecodable(_)) => {
            return Ok(Retried::Kept("its job does not decode".to_owned()));
        }
    };
    let job = Job { attempt: 0, ..job };
    if let JobKind::Enhancement {
        enhancement_id,
        tenant_id,
    } = &job.kind
    {
        let mut tx = TenantTx::begin(pool, tenant_id).await?;
        let reopened = enhancements::reopen_failed(&mut tx, *enhancement_id).await?;
        tx.commit().await?;
        if !reopened {
            return Ok(Retried::Kept(format!(
                "enhancement {enhancement_id} is not `failed` (deleted, or retried already)"
            )));
        }
    }
    if queue.requeue_dead(letter, &job).await? {
        Ok(Retried::Queued)
    } else {
        Ok(Retried::Gone)
    }
}

/// Parses an age such as `30s`, `15m`, `12h` or `7d` (a bare number is seconds).
pub fn parse_age(text: &str) -> Option<Duration> {
    let text = text.trim();
    let (number, unit) = text
        .find(|c: char| !c.is_ascii_digit())
        .map_or((text, "s"), |i| text.split_at(i));
    let n: u64 = number.parse().ok()?;
    let seconds = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3_600,
        "d" => 86_400,
        _ => return None,
    };
    Some(Duration::from_secs(n.checked_mul(seconds)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ages() {
        assert_eq!(parse_age("45"), Some(Duration::from_secs(45)));
        assert_eq!(parse_age("15m"), Some(Duration::from_secs(900)));
        assert_eq!(parse_age("12h"), Some(Duration::from_secs(43_200)));
        assert_eq!(parse_age("7d"), Some(Duration::from_secs(604_800)));
        for bad in ["", "d", "7w", "-1d", "1.5h"] {
            assert_eq!(parse_age(bad), None, "{bad}");
        }
    }
}
