//! When a failed job is tried again, and which failures deserve another try.
//!
//! The schedule is backon's exponential backoff from `AI_AGENTS_WORKER_RETRY_BASE_MS` (2 s,
//! 4 s, 8 s …) plus up to 10 % jitter, so retries of many jobs that failed together do not hit
//! the recovering dependency in lock-step. backon's own jitter adds up to 100 %, which would
//! double the documented retry window, hence the smaller one here. The schedule is computed per
//! attempt from the attempt counter the job carries, and the wait itself happens in Redis (the
//! retry set), so it survives a worker restart.

use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};

/// The error underneath a job failure (a database or Redis error), kept for the logs.
pub type Cause = Box<dyn std::error::Error + Send + Sync>;

/// A job failure, classified. Its message is what is stored with the job (the dead letter, the
/// row's `error_message`) and already names the cause; the cause itself stays attached as the
/// error's source, so logs can show its whole chain.
#[derive(Debug, thiserror::Error)]
pub enum JobError {
    /// Worth another try: a dependency was unavailable or the job ran out of time.
    #[error("{message}")]
    Transient {
        /// What went wrong.
        message: String,
        /// The underlying error, if there is one.
        #[source]
        cause: Option<Cause>,
    },
    /// Will fail again: the data is gone or the payload is bad.
    #[error("{message}")]
    Permanent {
        /// What went wrong.
        message: String,
        /// The underlying error, if there is one.
        #[source]
        cause: Option<Cause>,
    },
}

impl JobError {
    /// A transient failure without an underlying error.
    pub fn transient(message: impl Into<String>) -> Self {
        Self::Transient {
            message: message.into(),
            cause: None,
        }
    }

    /// A permanent failure without an underlying error.
    pub fn permanent(message: impl Into<String>) -> Self {
        Self::Permanent {
            message: message.into(),
            cause: None,
        }
    }

    /// Whether another try may succeed.
    pub fn is_transient(&self) -> bool {
        matches!(self, Self::Transient { .. })
    }
}

impl From<sqlx::Error> for JobError {
    fn from(e: sqlx::Error) -> Self {
        // Decoding errors, constraint violations and similar are bugs or bad data: another
        // try fails the same way. Everything the shared classifier calls transient is retried.
        let message = format!("database error: {e}");
        let transient = crate::db::is_transient(&e);
        let cause = Some(Cause::from(e));
        if transient {
            Self::Transient { message, cause }
        } else {
            Self::Permanent { message, cause }
        }
    }
}

impl From<redis::RedisError> for JobError {
    /// Redis refusing or not answering is an outage: worth another try.
    fn from(e: redis::RedisError) -> Self {
        Self::Transient {
            message: format!("Redis error: {e}"),
            cause: Some(Cause::from(e)),
        }
    }
}

/// The retry schedule of a worker.
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    /// Retries after the first attempt.
    pub max_retries: u32,
    /// First delay.
    pub base: Duration,
}

impl RetryPolicy {
    /// The delay before retry number `attempt + 1` (after `attempt + 1` failed attempts), or
    /// `None` when the retries are used up.
    pub fn delay_after(&self, attempt: u32) -> Option<Duration> {
        let retries = usize::try_from(self.max_retries).unwrap_or(usize::MAX);
        let nominal = ExponentialBuilder::default()
            .with_min_delay(self.base)
            .with_factor(2.0)
            .with_max_times(retries)
            .without_max_delay()
            .build()
            .nth(usize::try_from(attempt).unwrap_or(usize::MAX))?;
        Some(nominal + nominal.mul_f64(jitter_fraction() * 0.1))
    }
}

/// A random number in [0, 1).
fn jitter_fraction() -> f64 {
    let bits = uuid::Uuid::new_v4().as_u128() as u64 >> 11;
    #[allow(clippy::cast_precision_loss)]
    let fraction = bits as f64 / (1_u64 << 53) as f64;
    fraction
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_from_the_base_and_stops_after_max_retries() {
        let policy = RetryPolicy {
            max_retries: 3,
            base: Duration::from_secs(2),
        };
        for (attempt, secs) in [(0, 2.0), (1, 4.0), (2, 8.0)] {
            let delay = policy
                .delay_after(attempt)
                .expect("retry left")
                .as_secs_f64();
            assert!(
                delay >= secs && delay <= secs * 1.1,
                "attempt {attempt}: {delay}"
            );
        }
        assert_eq!(policy.delay_after(3), None);
        assert_eq!(
            RetryPolicy {
                max_retries: 0,
                base: Duration::from_secs(1)
            }
            .delay_after(0),
            None
        );
    }

    #[test]
    fn classifies_database_errors_and_keeps_them_as_the_source() {
        use std::error::Error as _;

        let timed_out = JobError::from(sqlx::Error::PoolTimedOut);
        assert!(timed_out.is_transient());
        let source = timed_out.source().expect("the sqlx error is the source");
        assert_eq!(
            timed_out.to_string(),
            format!("database error: {source}"),
            "the message still names the cause"
        );
        assert!(source.downcast_ref::<sqlx::Error>().is_some());
        let missing = JobError::from(sqlx::Error::RowNotFound);
        assert!(!missing.is_transient());
        assert!(missing.source().is_some());
        assert!(
            JobError::transient("soft time limit reached")
                .source()
                .is_none()
        );
    }
}
