//! The dead-letter stream: jobs that failed for good, kept for operators.
//!
//! A stream rather than a list because each letter then has an id (to retry or purge one) and a
//! time (its id), and `XTRIM` bounds it by count and by age: a worker trims it as it writes
//! (`MAXLEN ~ AI_AGENTS_DEAD_LETTER_MAX`) and every few seconds by age
//! (`AI_AGENTS_DEAD_LETTER_RETENTION_DAYS`), so under `noeviction` a flood of failures cannot
//! fill Redis and stop every enqueue. `ai-agents-worker dead list | retry | purge` operate it.

use std::time::Duration;

use redis::Value;

use super::{Job, Queue, QueueError, StreamEntry, scripts};

/// One dead letter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    /// Its stream id (`MILLISECONDS-SEQUENCE`, when it died).
    pub id: String,
    /// The job as last delivered (raw: it may not decode).
    pub job: String,
    /// Why it was given up.
    pub error: String,
    /// Deliveries it had.
    pub attempts: u32,
    /// When it was given up (RFC 3339).
    pub failed_at: String,
}

impl DeadLetter {
    fn from_entry((id, fields): StreamEntry) -> Self {
        let text = |name: &str| {
            fields
                .get(name.as_bytes())
                .map(|v| String::from_utf8_lossy(v).into_owned())
                .unwrap_or_default()
        };
        Self {
            attempts: text("attempts").parse().unwrap_or(0),
            job: text("job"),
            error: text("error"),
            failed_at: text("failed_at"),
            id,
        }
    }
}

/// How much of the dead-letter stream is kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    /// Most letters kept (trimmed approximately, in whole stream nodes).
    pub max_count: u64,
    /// Letters older than this are dropped.
    pub max_age: Duration,
}

impl Queue {
    /// The newest `limit` dead letters, newest first.
    pub async fn dead_letters(&self, limit: usize) -> Result<Vec<DeadLetter>, QueueError> {
        let mut range = redis::cmd("XREVRANGE");
        range
            .arg(&self.keys.dead)
            .arg("+")
            .arg("-")
            .arg("COUNT")
            .arg(limit);
        let entries: Vec<StreamEntry> = self.redis.query(&range).await?;
        Ok(entries.into_iter().map(DeadLetter::from_entry).collect())
    }

    /// The dead letter with `id`, if it is still there.
    pub async fn dead_letter(&self, id: &str) -> Result<Option<DeadLetter>, QueueError> {
        let mut range = redis::cmd("XRANGE");
        range.arg(&self.keys.dead).arg(id).arg(id);
        let entries: Vec<StreamEntry> = self.redis.query(&range).await?;
        Ok(entries.into_iter().next().map(DeadLetter::from_entry))
    }

    /// Moves `letter` back into the jobs stream as `job`, atomically; false when another
    /// operator moved or purged it first.
    pub async fn requeue_dead(&self, letter: &DeadLetter, job: &Job) -> Result<bool, QueueError> {
        let mut invocation = scripts::DEAD_RETRY.prepare_invoke();
        invocation
            .key(&self.keys.dead)
            .key(&self.keys.jobs)
            .arg(&letter.id)
            .arg(job.encode());
        let moved: i64 = self.redis.invoke(&invocation).await?;
        Ok(moved == 1)
    }

    /// Deletes the dead letters older than `older_than`, or all of them; returns how many.
    pub async fn purge_dead(&self, older_than: Option<Duration>) -> Result<u64, QueueError> {
        match older_than {
            Some(age) => self.trim_dead_older_than(age, false).await,
            None => {
                let mut pipe = redis::pipe();
                pipe.atomic()
                    .cmd("XLEN")
                    .arg(&self.keys.dead)
                    .cmd("DEL")
                    .arg(&self.keys.dead)
                    .ignore();
                let (count,): (u64,) = self.redis.query_pipe(&pipe).await?;
                Ok(count)
            }
        }
    }

    /// Applies `retention`'s age bound (the count bound is applied as letters are written);
    /// returns how many letters went.
    pub async fn trim_dead(&self, retention: Retention) -> Result<u64, QueueError> {
        self.trim_dead_older_than(retention.max_age, true).await
    }

    async fn trim_dead_older_than(
        &self,
        age: Duration,
        approximate: bool,
    ) -> Result<u64, QueueError> {
        let now_ms = self.redis_now_ms().await?;
        let cutoff = now_ms.saturating_sub(u64::try_from(age.as_millis()).unwrap_or(u64::MAX));
        let mut trim = redis::cmd("XTRIM");
        trim.arg(&self.keys.dead).arg("MINID");
        if approximate {
            trim.arg("~");
        }
        trim.arg(cutoff);
        Ok(self.redis.query(&trim).await?)
    }

    /// Redis's clock in milliseconds: stream ids are made from it, so ages are measured on it.
    pub async fn redis_now_ms(&self) -> Result<u64, QueueError> {
        let (seconds, micros): (u64, u64) = self.redis.query(&redis::cmd("TIME")).await?;
        Ok(seconds * 1000 + micros / 1000)
    }

    /// Converts a dead-letter list of earlier builds into the stream (a no-op otherwise).
    pub(crate) async fn convert_dead_letters(&self) -> Result<(), QueueError> {
        let mut invocation = scripts::DEAD_FROM_LIST.prepare_invoke();
        invocation.key(&self.keys.dead);
        let converted: Value = self.redis.invoke(&invocation).await?;
        if let Value::Int(n) = converted
            && n > 0
        {
            tracing::info!(count = n, "dead-letter list converted to a stream");
        }
        Ok(())
    }
}
