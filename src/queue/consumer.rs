//! The worker's side of the queue: read, settle, heartbeat, reclaim, promote retries.
//!
//! Each worker process is one consumer of the group, named `HOST-PID-RANDOM` so two processes
//! never share a name. Reads block on a dedicated connection (no client-side response timeout)
//! for at most the `block` the caller passes, which keeps shutdown prompt, and take up to as
//! many entries as the caller has free slots. Every move of an entry is one Lua script
//! ([`super::scripts`]) that first checks the entry is still this consumer's: a delivery that
//! was taken back from a worker presumed dead can no longer be settled by that worker.

use std::{
    collections::{HashMap, HashSet},
    time::Duration,
};

use redis::{Value, aio::MultiplexedConnection};

use super::{GROUP, Job, Queue, QueueError, StreamEntry, bounded, origin::Origin, scripts};

/// One stream entry handed to a worker.
#[derive(Debug, Clone)]
pub struct Delivery {
    /// Stream entry id: unique per delivery, so it is also the delivery's claim on its row.
    pub entry_id: String,
    /// The raw job text (it may not decode).
    pub payload: String,
}

/// Where a delivery goes when it is settled.
#[derive(Debug, Clone, PartialEq)]
pub enum Settlement {
    /// Done: acknowledged and deleted.
    Completed,
    /// Failed for now: `next` (one attempt further) waits in the retry set for `delay`.
    Retry {
        /// The job as it will be delivered next.
        next: Job,
        /// How long it waits.
        delay: Duration,
    },
    /// Failed for good: moved to the dead-letter stream.
    Dead {
        /// Why.
        error: String,
        /// Deliveries it had.
        attempts: u32,
    },
    /// Its row does not exist (deleted with its tenant, or never committed): acknowledged and
    /// dropped, not dead-lettered.
    Dropped,
    /// Another delivery of the same job runs it: acknowledged and dropped.
    Duplicate,
}

impl Settlement {
    /// The outcome's name in the counters and metrics.
    pub fn outcome(&self) -> &'static str {
        match self {
            Self::Completed => "completed",
            Self::Retry { .. } => "retried",
            Self::Dead { .. } => "dead",
            Self::Dropped => "dropped",
            Self::Duplicate => "duplicate",
        }
    }
}

/// How long a heartbeat lasts; a worker silent for longer is presumed dead.
pub const HEARTBEAT_TTL: Duration = Duration::from_secs(10);

/// A worker process's membership in the consumer group.
pub struct Consumer {
    queue: Queue,
    name: String,
    /// Where this process runs, to recognise dead consumers of the same host at once.
    origin: Origin,
    dead_letter_cap: u64,
    reader: tokio::sync::Mutex<Option<MultiplexedConnection>>,
}

/// Field values stay bytes: a payload that is not UTF-8 must reach the dead-letter stream, not
/// fail the whole read.
type ReadReply = Option<Vec<(String, Vec<StreamEntry>)>>;

impl Consumer {
    /// A consumer with a name unique to this process; it caps the dead-letter stream at about
    /// `dead_letter_cap` letters as it writes them.
    pub fn new(queue: Queue, dead_letter_cap: u64) -> Self {
        let origin = Origin::of_this_process();
        let name = origin.consumer_name();
        Self {
            queue,
            name,
            origin,
            dead_letter_cap: dead_letter_cap.max(1),
            reader: tokio::sync::Mutex::new(None),
        }
    }

    /// This consumer's name in the group.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The Redis client name of this consumer's reading connection.
    fn client_name(&self) -> String {
        format!("{}:{}", self.queue.keys().jobs, self.name)
    }

    /// The queue this consumer reads.
    pub fn queue(&self) -> &Queue {
        &self.queue
    }

    /// Waits up to `block` for jobs and takes up to `max` of them; empty when none came.
    pub async fn next_batch(
        &self,
        max: usize,
        block: Duration,
    ) -> Result<Vec<Delivery>, QueueError> {
        let mut slot = self.reader.lock().await;
        let reader = match &mut *slot {
            Some(reader) => reader,
            None => slot.insert(self.connect_reader().await?),
        };
        let block_ms = u64::try_from(block.as_millis()).unwrap_or(u64::MAX).max(1);
        let read = bounded(block + self.queue.redis().timeout(), async {
            redis::cmd("XREADGROUP")
                .arg("GROUP")
                .arg(GROUP)
                .arg(&self.name)
                .arg("COUNT")
                .arg(max.max(1))
                .arg("BLOCK")
                .arg(block_ms)
                .arg("STREAMS")
                .arg(&self.queue.keys().jobs)
                .arg(">")
                .query_async::<ReadReply>(reader)
                .await
        })
        .await;
        let reply = match read {
            Ok(reply) => reply,
            Err(e) if super::redis_pool::has_code(&e, "NOGROUP") => {
                // The stream or group vanished (Redis without persistence restarted).
                self.queue.ensure_group().await?;
                return Ok(Vec::new());
            }
            Err(e) => {
                // Reconnect on the next call rather than reuse a broken connection.
                *slot = None;
                return Err(e.into());
            }
        };
        Ok(reply
            .into_iter()
            .flatten()
            .flat_map(|(_, entries)| entries)
            .map(|(entry_id, fields)| Delivery {
                entry_id,
                payload: fields
                    .get(b"job".as_slice())
                    .map(|v| String::from_utf8_lossy(v).into_owned())
                    .unwrap_or_default(),
            })
            .collect())
    }

    /// The reading connection, named after this consumer: when the process dies, the kernel
    /// closes it and the other workers see at once that this consumer is gone.
    async fn connect_reader(&self) -> Result<MultiplexedConnection, QueueError> {
        let mut conn = self.queue.redis().dedicated().await?;
        let named: Result<Value, _> = bounded(self.queue.redis().timeout(), async {
            redis::cmd("CLIENT")
                .arg("SETNAME")
                .arg(self.client_name())
                .query_async(&mut conn)
                .await
        })
        .await;
        match named {
            // Some managed Redis services refuse CLIENT: the heartbeat alone then decides.
            Ok(_) => Ok(conn),
            Err(e) if e.code() == Some("ERR") => Ok(conn),
            Err(e) => Err(e.into()),
        }
    }

    /// Settles deliveries in one atomic step; for each, whether it was still this consumer's
    /// (false: it was taken back meanwhile, and nothing was changed for it).
    pub async fn settle(
        &self,
        settlements: &[(&Delivery, Settlement)],
    ) -> Result<Vec<bool>, QueueError> {
        if settlements.is_empty() {
            return Ok(Vec::new());
        }
        let keys = self.queue.keys();
        let now = chrono::Utc::now();
        let mut invocation = scripts::SETTLE.prepare_invoke();
        invocation
            .key(&keys.jobs)
            .key(&keys.retry)
            .key(&keys.dead)
            .key(&keys.outcomes)
            .arg(GROUP)
            .arg(&self.name)
            .arg(self.dead_letter_cap)
            .arg(now.to_rfc3339());
        for (delivery, settlement) in settlements {
            let (due, payload, error, attempts) = match settlement {
                Settlement::Retry { next, delay } => {
                    let due = now.timestamp_millis()
                        + i64::try_from(delay.as_millis()).unwrap_or(i64::MAX / 2);
                    (due, next.encode(), String::new(), 0)
                }
                Settlement::Dead { error, attempts } => {
                    (0, delivery.payload.clone(), error.clone(), *attempts)
                }
                _ => (0, String::new(), String::new(), 0),
            };
            invocation
                .arg(&delivery.entry_id)
                .arg(settlement.outcome())
                .arg(due)
                .arg(payload)
                .arg(error)
                .arg(attempts);
        }
        let settled: Vec<i64> = self.queue.redis().invoke(&invocation).await?;
        Ok(settled.into_iter().map(|n| n == 1).collect())
    }

    /// For each entry id, whether it is still in flight (in the group's pending list, held
    /// by any consumer).
    pub async fn in_flight(&self, entry_ids: &[&str]) -> Result<Vec<bool>, QueueError> {
        if entry_ids.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipe = redis::pipe();
        for id in entry_ids {
            pipe.cmd("XPENDING")
                .arg(&self.queue.keys().jobs)
                .arg(GROUP)
                .arg(*id)
                .arg(*id)
                .arg(1);
        }
        let found: Vec<Vec<Value>> = self.queue.redis().query_pipe(&pipe).await?;
        Ok(found
            .into_iter()
            .map(|entries| !entries.is_empty())
            .collect())
    }

    /// Tells the other workers this one is alive.
    pub async fn heartbeat(&self) -> Result<(), QueueError> {
        let mut set = redis::cmd("SET");
        set.arg(self.queue.keys().alive(&self.name))
            .arg(self.origin.heartbeat_value())
            .arg("PX")
            .arg(u64::try_from(HEARTBEAT_TTL.as_millis()).unwrap_or(10_000));
        let _: Value = self.queue.redis().query(&set).await?;
        Ok(())
    }

    /// Moves retries that are due back into the stream; returns how many.
    pub async fn promote_due_retries(&self) -> Result<u64, QueueError> {
        let keys = self.queue.keys();
        let mut invocation = scripts::PROMOTE.prepare_invoke();
        invocation
            .key(&keys.retry)
            .key(&keys.jobs)
            .arg(chrono::Utc::now().timestamp_millis())
            .arg(100);
        Ok(self.queue.redis().invoke(&invocation).await?)
    }

    /// Puts back, one attempt further, the jobs held by dead workers (heartbeat expired, or
    /// reading connection gone with the heartbeat overdue or, at start, the process ended on
    /// this host) and the jobs any worker has held
    /// longer than `reclaim_after` without settling them (which a live worker never does: its
    /// hard time limit ends every job sooner). Forgets dead consumers with nothing pending.
    /// Returns how many jobs went back.
    ///
    /// `at_start`: this process has just started, so a consumer of this host that has ended
    /// may be its predecessor, dead at once ([`Origin::saw_end_of`]).
    pub async fn reclaim(
        &self,
        reclaim_after: Duration,
        at_start: bool,
    ) -> Result<u64, QueueError> {
        let keys = self.queue.keys();
        let redis = self.queue.redis();
        let mut info = redis::cmd("XINFO");
        info.arg("CONSUMERS").arg(&keys.jobs).arg(GROUP);
        let consumers: Vec<HashMap<String, Value>> = redis.query(&info).await?;
        let connected = self.connected_consumers().await;
        let mut requeued = 0;
        for consumer in consumers {
            let name = match consumer.get("name") {
                Some(Value::BulkString(b)) => String::from_utf8_lossy(b).into_owned(),
                Some(Value::SimpleString(s)) => s.clone(),
                _ => continue,
            };
            if name == self.name {
                continue;
            }
            let pending = match consumer.get("pending") {
                Some(Value::Int(n)) => *n,
                _ => 0,
            };
            if !self.is_dead(&name, connected.as_ref(), at_start).await? {
                continue;
            }
            if pending > 0 {
                let mut held = redis::cmd("XPENDING");
                held.arg(&keys.jobs)
                    .arg(GROUP)
                    .arg("-")
                    .arg("+")
                    .arg(1000)
                    .arg(&name);
                let held: Vec<(String, String, u64, u64)> = redis.query(&held).await?;
                let ids: Vec<String> = held.into_iter().map(|(id, ..)| id).collect();
                requeued += self.requeue(&name, &ids).await?;
            } else {
                let mut forget = redis::cmd("XGROUP");
                forget
                    .arg("DELCONSUMER")
                    .arg(&keys.jobs)
                    .arg(GROUP)
                    .arg(&name);
                let _: i64 = redis.query(&forget).await?;
            }
        }
        Ok(requeued + self.requeue_held_longer_than(reclaim_after).await?)
    }

    /// Whether consumer `name` is dead: no heartbeat, or its reading connection gone (when
    /// `connected` lists the connections) and either its beat overdue or, `at_start`, its
    /// process ended on this host ([`Origin::saw_end_of`]). A worker killed outright still has a heartbeat for a
    /// few seconds, but its connection is gone at once; a worker that is only reconnecting its
    /// reader keeps beating, so its jobs stay where they are.
    async fn is_dead(
        &self,
        name: &str,
        connected: Option<&HashSet<String>>,
        at_start: bool,
    ) -> Result<bool, QueueError> {
        let keys = self.queue.keys();
        // Milliseconds left on its heartbeat (-2: none), and what it holds, in one round trip.
        let mut read = redis::pipe();
        read.cmd("PTTL")
            .arg(keys.alive(name))
            .cmd("GET")
            .arg(keys.alive(name));
        let (heartbeat_ttl, beat): (i64, Option<String>) =
            self.queue.redis().query_pipe(&read).await?;
        let alive = heartbeat_ttl > 0;
        // Its last beat is older than two maintenance periods.
        let beat_overdue =
            heartbeat_ttl < i64::try_from(HEARTBEAT_TTL.as_millis()).unwrap_or(10_000) - 4_500;
        let client = format!("{}:{name}", keys.jobs);
        let connected = connected.is_none_or(|names| names.contains(&client));
        // At start-up, its connection gone and its process ended on this host: dead, whatever
        // its beat.
        if !connected && at_start && self.origin.saw_end_of(name, beat.as_deref()) {
            return Ok(true);
        }
        Ok(!(alive && (connected || !beat_overdue)))
    }

    /// Puts back, one attempt further, this consumer's own entries pending longer than
    /// `min_idle` that `is_held` says no task of this process holds: entries of a read whose
    /// answer never arrived (it timed out here, yet Redis carried it out, e.g. after being
    /// frozen), which would otherwise wait for the reclaim time. Returns how many went back.
    pub async fn requeue_unheld(
        &self,
        min_idle: Duration,
        is_held: impl Fn(&str) -> bool,
    ) -> Result<u64, QueueError> {
        let idle_ms = u64::try_from(min_idle.as_millis()).unwrap_or(u64::MAX);
        let mut mine = redis::cmd("XPENDING");
        mine.arg(&self.queue.keys().jobs)
            .arg(GROUP)
            .arg("IDLE")
            .arg(idle_ms)
            .arg("-")
            .arg("+")
            .arg(1000)
            .arg(&self.name);
        let mine: Vec<(String, String, u64, u64)> = self.queue.redis().query(&mine).await?;
        let lost: Vec<String> = mine
            .into_iter()
            .map(|(id, ..)| id)
            .filter(|id| !is_held(id))
            .collect();
        self.requeue(&self.name, &lost).await
    }

    /// Puts back the jobs any worker has held longer than `reclaim_after`.
    async fn requeue_held_longer_than(&self, reclaim_after: Duration) -> Result<u64, QueueError> {
        let idle_ms = u64::try_from(reclaim_after.as_millis()).unwrap_or(u64::MAX);
        let mut stale = redis::cmd("XPENDING");
        stale
            .arg(&self.queue.keys().jobs)
            .arg(GROUP)
            .arg("IDLE")
            .arg(idle_ms)
            .arg("-")
            .arg("+")
            .arg(1000);
        let stale: Vec<(String, String, u64, u64)> = self.queue.redis().query(&stale).await?;
        let ids: Vec<String> = stale.into_iter().map(|(id, ..)| id).collect();
        self.requeue("", &ids).await
    }

    /// Names of the connected clients; `None` where `CLIENT LIST` is not allowed (some managed
    /// Redis services), and then only the heartbeat decides.
    async fn connected_consumers(&self) -> Option<HashSet<String>> {
        let mut list = redis::cmd("CLIENT");
        list.arg("LIST").arg("TYPE").arg("normal");
        let list: String = self.queue.redis().query(&list).await.ok()?;
        Some(
            list.lines()
                .filter_map(|line| line.split(' ').find_map(|f| f.strip_prefix("name=")))
                .filter(|name| !name.is_empty())
                .map(str::to_owned)
                .collect(),
        )
    }

    /// Requeues `ids` if they still belong to `owner` (any consumer when empty).
    async fn requeue(&self, owner: &str, ids: &[String]) -> Result<u64, QueueError> {
        if ids.is_empty() {
            return Ok(0);
        }
        let keys = self.queue.keys();
        let mut invocation = scripts::REQUEUE.prepare_invoke();
        invocation
            .key(&keys.jobs)
            .key(&keys.outcomes)
            .arg(GROUP)
            .arg(owner);
        for id in ids {
            invocation.arg(id);
        }
        Ok(self.queue.redis().invoke(&invocation).await?)
    }

    /// Leaves the group on a clean shutdown: drops the heartbeat so that anything still held
    /// is reclaimed at once by the other workers.
    pub async fn leave(&self) -> Result<(), QueueError> {
        let mut del = redis::cmd("DEL");
        del.arg(self.queue.keys().alive(&self.name));
        let _: i64 = self.queue.redis().query(&del).await?;
        Ok(())
    }
}
