//! The job queue on Redis 7: a stream with a consumer group, a retry schedule and a dead-letter
//! stream.
//!
//! * `PREFIX:jobs` — a stream. `XADD` enqueues; workers read with `XREADGROUP` in the group
//!   `workers`, up to one entry per free slot, so an entry is *pending* until it is read and then
//!   *in flight* (in the group's pending-entries list) until settled. Settling acknowledges and
//!   deletes the entry, so the stream holds exactly the unfinished jobs.
//! * `PREFIX:retry` — a sorted set of jobs waiting for a retry, scored by due time (ms).
//! * `PREFIX:dead` — a stream of jobs that failed for good, with the error: each has an id and a
//!   time, so operators can list, retry and purge them (`ai-agents-worker dead …`), and it is
//!   trimmed by count and age, so it cannot fill Redis.
//! * `PREFIX:alive:CONSUMER` — a heartbeat key with a short TTL per worker process; each
//!   worker's reading connection also carries its consumer name (`CLIENT SETNAME`). Jobs held by
//!   a consumer whose heartbeat expired or whose connection is gone (a killed process: at once),
//!   or held longer than the reclaim time (a hung one), are put back in the stream, one attempt
//!   further.
//! * `PREFIX:outcomes` — counts of settled deliveries by outcome, across all workers.
//!
//! Every move of an entry (settle, requeue, promote, dead-letter retry) is a Lua script in
//! `lua/` (see [`scripts`]), atomic and checking before it acts. See `docs/architecture.md`
//! for why streams and what the guarantees are.

pub mod consumer;
pub mod dead;
pub mod job;
mod origin;
pub mod redis_pool;
pub(crate) mod scripts;

use std::collections::{HashMap, HashSet};

use redis::{RedisError, Value};
use serde::Serialize;
use uuid::Uuid;

pub use consumer::{Consumer, Delivery, Settlement};
pub use dead::DeadLetter;
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
    /// Counts of settled deliveries by outcome (a hash), for metrics across all workers.
    pub outcomes: String,
    /// The lock that lets one worker at a time sweep for orphaned rows.
    pub sweep_lock: String,
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
            sweep_lock: format!("{prefix}:sweep-lock"),
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

    /// Whether `key` is a ping reply list of this deployment ([`Keys::ping_reply`]'s form):
    /// a worker answers a ping only there, so a crafted ping cannot make it write to (or set
    /// an expiry on) any other key.
    pub fn is_ping_reply(&self, key: &str) -> bool {
        key.strip_prefix(&self.prefix)
            .and_then(|rest| rest.strip_prefix(":ping:"))
            .is_some_and(|id| uuid::Uuid::parse_str(id).is_ok())
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

/// A stream entry as read: id and raw fields (kept as bytes: not every payload is UTF-8).
pub(crate) type StreamEntry = (String, HashMap<Vec<u8>, Vec<u8>>);

/// The job of a stream entry; `None` when its payload is missing or does not decode.
fn job_of((_, fields): &StreamEntry) -> Option<Job> {
    Job::decode(std::str::from_utf8(fields.get(b"job".as_slice())?).ok()?).ok()
}

/// The enhancements whose jobs are queued, read at one moment ([`Queue::queued_jobs`]).
#[derive(Debug)]
pub enum QueuedJobs {
    /// Every enhancement with a job in the stream (waiting or in flight) or in the retry
    /// schedule.
    Seen(HashSet<Uuid>),
    /// More jobs are queued than were looked through: no answer.
    TooMany,
}

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

    /// Creates the stream and the consumer group if they do not exist yet, and converts a
    /// dead-letter list of earlier builds into the dead-letter stream.
    pub async fn ensure_group(&self) -> Result<(), QueueError> {
        self.convert_dead_letters().await?;
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
            Err(QueueError::Redis(e)) if redis_pool::has_code(&e, "NOGROUP") => {
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
            .cmd("XLEN")
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
        Ok(self
            .oldest_entries(count)
            .await?
            .iter()
            .filter_map(job_of)
            .collect())
    }

    /// The time (Redis clock, ms) of the oldest entry still in the jobs stream, waiting or in
    /// flight; `None` when the stream is empty.
    pub async fn oldest_entry_ms(&self) -> Result<Option<u64>, QueueError> {
        Ok(self
            .oldest_entries(1)
            .await?
            .first()
            .and_then(|(id, _)| id.split('-').next()?.parse().ok()))
    }

    /// The enhancements whose jobs are in the stream or the retry schedule, both read at one
    /// moment (`MULTI`: a promotion or a requeue moves a job between them atomically, so it is
    /// seen in one or the other). Looks through at most `cap` of each: what the orphan sweep
    /// needs to tell a lost job from one that waits, whatever its entry's age.
    pub async fn queued_jobs(&self, cap: usize) -> Result<QueuedJobs, QueueError> {
        let mut pipe = redis::pipe();
        pipe.atomic()
            .cmd("XRANGE")
            .arg(&self.keys.jobs)
            .arg("-")
            .arg("+")
            .arg("COUNT")
            .arg(cap.saturating_add(1))
            .cmd("ZRANGE")
            .arg(&self.keys.retry)
            .arg(0)
            .arg(cap);
        let (entries, retrying): (Vec<StreamEntry>, Vec<String>) =
            self.redis.query_pipe(&pipe).await?;
        // ZRANGE 0 cap returns up to cap + 1 members: more than the cap means "too many".
        if entries.len() > cap || retrying.len() > cap {
            return Ok(QueuedJobs::TooMany);
        }
        let in_stream = entries.iter().filter_map(job_of);
        let in_schedule = retrying.iter().filter_map(|raw| Job::decode(raw).ok());
        Ok(QueuedJobs::Seen(
            in_stream
                .chain(in_schedule)
                .filter_map(|job| match job.kind {
                    JobKind::Enhancement { enhancement_id, .. } => Some(enhancement_id),
                    JobKind::Ping { .. } => None,
                })
                .collect(),
        ))
    }

    /// The oldest `count` entries of the jobs stream (`XRANGE - + COUNT count`).
    async fn oldest_entries(&self, count: usize) -> Result<Vec<StreamEntry>, QueueError> {
        let mut xrange = redis::cmd("XRANGE");
        xrange
            .arg(&self.keys.jobs)
            .arg("-")
            .arg("+")
            .arg("COUNT")
            .arg(count);
        Ok(self.redis.query(&xrange).await?)
    }

    /// Settled deliveries by outcome (`completed`, `retried`, `dead`, `dropped`,
    /// `duplicate`, `reclaimed`) across every worker.
    pub async fn outcomes(&self) -> Result<HashMap<String, u64>, QueueError> {
        let mut hgetall = redis::cmd("HGETALL");
        hgetall.arg(&self.keys.outcomes);
        Ok(self.redis.query(&hgetall).await?)
    }
}

pub(crate) use redis_pool::bounded;
