//! The job queue on Redis 7: a stream with a consumer group, a retry schedule and a dead-letter
//! list.
//!
//! * `PREFIX:jobs` — a stream. `XADD` enqueues; workers read with `XREADGROUP` in the group
//!   `workers`, one entry per free slot, so an entry is *pending* until it is read and then
//!   *in flight* (in the group's pending-entries list) until acknowledged. Acknowledging is
//!   `XACK` + `XDEL` in one `MULTI`, so the stream holds exactly the unfinished jobs.
//! * `PREFIX:retry` — a sorted set of jobs waiting for a retry, scored by due time (ms). Moving
//!   a failed job there and acknowledging it happen in one `MULTI`, and a Lua script moves due
//!   jobs back into the stream atomically, so a retry survives any crash.
//! * `PREFIX:dead` — a list of jobs that failed for good, with the error.
//! * `PREFIX:alive:CONSUMER` — a heartbeat key with a short TTL per worker process; each
//!   worker's reading connection also carries its consumer name (`CLIENT SETNAME`). Jobs held by
//!   a consumer whose heartbeat expired or whose connection is gone (a killed process: at once),
//!   or held longer than the reclaim time (a hung one), are put back in the stream.
//!
//! See `docs/architecture.md` for why streams and what the guarantees are.

pub mod consumer;
pub mod job;
pub mod redis_pool;

use std::collections::HashMap;

use redis::{RedisError, Value};
use serde::Serialize;

pub use consumer::{Consumer, Delivery};
pub use job::{Job, JobKind};
pub use redis_pool::RedisPool;

/// The consumer group every worker joins.
pub const GROUP: &str = "workers";

/// Why a queue operation failed. Always transient from the caller's point of view.
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    /// Redis refused, dropped the connection or did not answer in time.
    #[error("Redis is unavailable")]
    Redis(#[from] RedisError),
}

/// The Redis keys of one deployment.
#[derive(Debug, Clone)]
pub struct Keys {
    /// The stream of jobs.
    pub jobs: String,
    /// The retry schedule.
    pub retry: String,
    /// The dead-letter list.
    pub dead: String,
    /// Counts of finished attempts by outcome (a hash), for metrics across all workers.
    pub outcomes: String,
    prefix: String,
}

impl Keys {
    /// Keys under `prefix`.
    pub fn new(prefix: &str) -> Self {
        Self {
            jobs: format!("{prefix}:jobs"),
            retry: format!("{prefix}:retry"),
            dead: format!("{prefix}:dead"),
            outcomes: format!("{prefix}:outcomes"),
            prefix: prefix.to_owned(),
        }
    }

    /// The heartbeat key of a consumer.
    pub fn alive(&self, consumer: &str) -> String {
        format!("{}:alive:{consumer}", self.prefix)
    }

    /// A fresh reply list for a ping.
    pub fn ping_reply(&self) -> String {
        format!("{}:ping:{}", self.prefix, uuid::Uuid::new_v4())
    }
}

/// Counts shown by `GET /api/v1/queue/stats`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct QueueStats {
    /// Queued and not yet taken.
    pub pending: u64,
    /// Taken and not yet acknowledged.
    pub in_flight: u64,
    /// Waiting for a retry.
    pub retrying: u64,
    /// In the dead-letter queue.
    pub dead: u64,
}

/// A job in the dead-letter queue.
#[derive(Debug, Clone, serde::Deserialize, Serialize)]
pub struct DeadLetter {
    /// The job as it was last delivered (raw, since it may not decode).
    pub job: String,
    /// Why it was given up.
    pub error: String,
    /// Attempts made.
    pub attempts: u32,
    /// When it was given up.
    pub failed_at: chrono::DateTime<chrono::Utc>,
}

/// A stream entry as read: id and raw fields (kept as bytes: not every payload is UTF-8).
pub(crate) type StreamEntry = (String, HashMap<Vec<u8>, Vec<u8>>);

/// Producer-side and inspection access to the queue.
#[derive(Clone)]
pub struct Queue {
    redis: RedisPool,
    keys: Keys,
}

impl Queue {
    /// A queue under `prefix` on `redis`.
    pub fn new(redis: RedisPool, prefix: &str) -> Self {
        Self {
            redis,
            keys: Keys::new(prefix),
        }
    }

    /// The keys in use.
    pub fn keys(&self) -> &Keys {
        &self.keys
    }

    /// The connection pool.
    pub fn redis(&self) -> &RedisPool {
        &self.redis
    }

    /// Appends a job; returns its stream entry id.
    pub async fn enqueue(&self, job: &Job) -> Result<String, QueueError> {
        let mut xadd = redis::cmd("XADD");
        xadd.arg(&self.keys.jobs)
            .arg("*")
            .arg("job")
            .arg(job.encode());
        Ok(self.redis.query(&xadd).await?)
    }

    /// Removes a stream entry that no worker took yet (a ping nobody answered).
    pub async fn withdraw(&self, entry_id: &str) -> Result<(), QueueError> {
        let mut xdel = redis::cmd("XDEL");
        xdel.arg(&self.keys.jobs).arg(entry_id);
        let _: i64 = self.redis.query(&xdel).await?;
        Ok(())
    }

    /// Creates the stream and the consumer group if they do not exist yet.
    pub async fn ensure_group(&self) -> Result<(), QueueError> {
        let mut create = redis::cmd("XGROUP");
        create
            .arg("CREATE")
            .arg(&self.keys.jobs)
            .arg(GROUP)
            .arg("0")
            .arg("MKSTREAM");
        match self.redis.query::<Value>(&create).await {
            Ok(_) => Ok(()),
            Err(e) if e.code() == Some("BUSYGROUP") => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Counts of pending, in-flight, retrying and dead jobs, read atomically.
    pub async fn stats(&self) -> Result<QueueStats, QueueError> {
        match self.read_stats().await {
            // The stream exists but no worker created the group yet.
            Err(QueueError::Redis(e)) if e.code() == Some("NOGROUP") => {
                self.ensure_group().await?;
                self.read_stats().await
            }
            other => other,
        }
    }

    async fn read_stats(&self) -> Result<QueueStats, QueueError> {
        let mut pipe = redis::pipe();
        pipe.atomic()
            .cmd("XLEN")
            .arg(&self.keys.jobs)
            .cmd("XPENDING")
            .arg(&self.keys.jobs)
            .arg(GROUP)
            .cmd("ZCARD")
            .arg(&self.keys.retry)
            .cmd("LLEN")
            .arg(&self.keys.dead);
        let (len, pending, retrying, dead): (u64, Value, u64, u64) =
            self.redis.query_pipe(&pipe).await?;
        let in_flight = match pending {
            Value::Array(items) => match items.first() {
                Some(Value::Int(n)) => u64::try_from(*n).unwrap_or(0),
                _ => 0,
            },
            _ => 0,
        };
        Ok(QueueStats {
            pending: len.saturating_sub(in_flight),
            in_flight,
            retrying,
            dead,
        })
    }

    /// The oldest `count` jobs still waiting or in flight (for operators).
    pub async fn peek(&self, count: usize) -> Result<Vec<Job>, QueueError> {
        let mut xrange = redis::cmd("XRANGE");
        xrange
            .arg(&self.keys.jobs)
            .arg("-")
            .arg("+")
            .arg("COUNT")
            .arg(count);
        let entries: Vec<StreamEntry> = self.redis.query(&xrange).await?;
        Ok(entries
            .into_iter()
            .filter_map(|(_, fields)| {
                let raw = fields.get(b"job".as_slice())?;
                Job::decode(std::str::from_utf8(raw).ok()?).ok()
            })
            .collect())
    }

    /// Attempts finished by outcome (`completed`, `retried`, `dead`) across every worker.
    pub async fn outcomes(&self) -> Result<HashMap<String, u64>, QueueError> {
        let mut hgetall = redis::cmd("HGETALL");
        hgetall.arg(&self.keys.outcomes);
        Ok(self.redis.query(&hgetall).await?)
    }

    /// The newest `count` dead letters.
    pub async fn dead_letters(&self, count: isize) -> Result<Vec<DeadLetter>, QueueError> {
        let mut lrange = redis::cmd("LRANGE");
        lrange.arg(&self.keys.dead).arg(0).arg(count - 1);
        let raw: Vec<String> = self.redis.query(&lrange).await?;
        Ok(raw
            .iter()
            .filter_map(|r| serde_json::from_str(r).ok())
            .collect())
    }
}

pub(crate) use redis_pool::bounded;
