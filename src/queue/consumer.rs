//! The worker's side of the queue: read, acknowledge, retry, dead-letter, reclaim.
//!
//! Each worker process is one consumer of the group, named `HOST-PID-RANDOM` so two processes
//! never share a name. Reads block on a dedicated connection (no client-side response timeout)
//! for at most the `block` the caller passes, which keeps shutdown prompt. Every state change
//! of an entry is one atomic step in Redis: acknowledge-and-delete, acknowledge-and-schedule-
//! retry, acknowledge-and-dead-letter, or acknowledge-and-requeue. A crash between two steps
//! therefore leaves the job either where it was or where it was going, never nowhere.

use std::{collections::HashMap, time::Duration};

use redis::{Script, Value, aio::MultiplexedConnection};

use super::{DeadLetter, GROUP, Job, Queue, QueueError, StreamEntry, bounded};

/// One stream entry handed to a worker.
#[derive(Debug, Clone)]
pub struct Delivery {
    /// Stream entry id, for acknowledging.
    pub entry_id: String,
    /// The raw job text (it may not decode).
    pub payload: String,
}

/// Moves due retries back into the stream.
const PROMOTE_SCRIPT: &str = r"
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, ARGV[2])
for _, member in ipairs(due) do
  redis.call('ZREM', KEYS[1], member)
  redis.call('XADD', KEYS[2], '*', 'job', member)
end
return #due
";

/// Puts in-flight entries back at the end of the stream, unless they were acknowledged since.
const REQUEUE_SCRIPT: &str = r"
local n = 0
for i = 2, #ARGV do
  local id = ARGV[i]
  local entry = redis.call('XRANGE', KEYS[1], id, id)
  if redis.call('XACK', KEYS[1], ARGV[1], id) == 1 then
    redis.call('XDEL', KEYS[1], id)
    if entry[1] then
      redis.call('XADD', KEYS[1], '*', unpack(entry[1][2]))
      n = n + 1
    end
  end
end
return n
";

/// How long a heartbeat lasts; a worker silent for longer is presumed dead.
pub const HEARTBEAT_TTL: Duration = Duration::from_secs(10);

/// A worker process's membership in the consumer group.
pub struct Consumer {
    queue: Queue,
    name: String,
    reader: tokio::sync::Mutex<Option<MultiplexedConnection>>,
}

/// Field values stay bytes: a payload that is not UTF-8 must reach the dead-letter list, not
/// fail the whole read.
type ReadReply = Option<Vec<(String, Vec<StreamEntry>)>>;

impl Consumer {
    /// A consumer with a name unique to this process.
    pub fn new(queue: Queue) -> Self {
        let host = std::env::var("HOSTNAME")
            .ok()
            .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
            .map(|h| h.trim().to_owned())
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| "worker".to_owned());
        let suffix = uuid::Uuid::new_v4().simple().to_string();
        let name = format!("{host}-{}-{}", std::process::id(), &suffix[..8]);
        Self {
            queue,
            name,
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

    /// Waits up to `block` for the next job; `None` when none came.
    pub async fn next(&self, block: Duration) -> Result<Option<Delivery>, QueueError> {
        let mut slot = self.reader.lock().await;
        let reader = match &mut *slot {
            Some(reader) => reader,
            None => {
                let mut conn = self.queue.redis().dedicated().await?;
                // The connection carries the consumer's name: when the process dies, the
                // kernel closes it and the other workers see at once that this consumer is gone.
                let _: Value = bounded(self.queue.redis().timeout(), async {
                    redis::cmd("CLIENT")
                        .arg("SETNAME")
                        .arg(self.client_name())
                        .query_async(&mut conn)
                        .await
                })
                .await
                .or_else(|e| {
                    if e.code() == Some("ERR") {
                        Ok(Value::Nil)
                    } else {
                        Err(e)
                    }
                })?;
                slot.insert(conn)
            }
        };
        let block_ms = u64::try_from(block.as_millis()).unwrap_or(u64::MAX).max(1);
        let read = bounded(block + self.queue.redis().timeout(), async {
            redis::cmd("XREADGROUP")
                .arg("GROUP")
                .arg(GROUP)
                .arg(&self.name)
                .arg("COUNT")
                .arg(1)
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
            Err(e) if e.code() == Some("NOGROUP") => {
                // The stream or group vanished (Redis without persistence restarted).
                self.queue.ensure_group().await?;
                return Ok(None);
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
            .next()
            .map(|(entry_id, fields)| Delivery {
                entry_id,
                payload: fields
                    .get(b"job".as_slice())
                    .map(|v| String::from_utf8_lossy(v).into_owned())
                    .unwrap_or_default(),
            }))
    }

    /// Acknowledges a finished job and removes it from the stream.
    pub async fn ack(&self, delivery: &Delivery) -> Result<(), QueueError> {
        let keys = self.queue.keys();
        let mut conn = self.queue.redis().get();
        let _: Value = bounded(self.queue.redis().timeout(), async {
            redis::pipe()
                .atomic()
                .cmd("XACK")
                .arg(&keys.jobs)
                .arg(GROUP)
                .arg(&delivery.entry_id)
                .cmd("XDEL")
                .arg(&keys.jobs)
                .arg(&delivery.entry_id)
                .cmd("HINCRBY")
                .arg(&keys.outcomes)
                .arg("completed")
                .arg(1)
                .query_async(&mut conn)
                .await
        })
        .await?;
        Ok(())
    }

    /// Acknowledges a failed attempt and schedules `next` (the job, one attempt further) after
    /// `delay`, in one step.
    pub async fn retry_later(
        &self,
        delivery: &Delivery,
        next: &Job,
        delay: Duration,
    ) -> Result<(), QueueError> {
        let keys = self.queue.keys();
        let due = chrono::Utc::now().timestamp_millis()
            + i64::try_from(delay.as_millis()).unwrap_or(i64::MAX / 2);
        let mut conn = self.queue.redis().get();
        let _: Value = bounded(self.queue.redis().timeout(), async {
            redis::pipe()
                .atomic()
                .cmd("XACK")
                .arg(&keys.jobs)
                .arg(GROUP)
                .arg(&delivery.entry_id)
                .cmd("XDEL")
                .arg(&keys.jobs)
                .arg(&delivery.entry_id)
                .cmd("ZADD")
                .arg(&keys.retry)
                .arg(due)
                .arg(next.encode())
                .cmd("HINCRBY")
                .arg(&keys.outcomes)
                .arg("retried")
                .arg(1)
                .query_async(&mut conn)
                .await
        })
        .await?;
        Ok(())
    }

    /// Acknowledges a job that failed for good and records it in the dead-letter list.
    pub async fn dead_letter(
        &self,
        delivery: &Delivery,
        error: &str,
        attempts: u32,
    ) -> Result<(), QueueError> {
        let keys = self.queue.keys();
        let letter = DeadLetter {
            job: delivery.payload.clone(),
            error: error.to_owned(),
            attempts,
            failed_at: chrono::Utc::now(),
        };
        let letter = serde_json::to_string(&letter).unwrap_or_default();
        let mut conn = self.queue.redis().get();
        let _: Value = bounded(self.queue.redis().timeout(), async {
            redis::pipe()
                .atomic()
                .cmd("XACK")
                .arg(&keys.jobs)
                .arg(GROUP)
                .arg(&delivery.entry_id)
                .cmd("XDEL")
                .arg(&keys.jobs)
                .arg(&delivery.entry_id)
                .cmd("LPUSH")
                .arg(&keys.dead)
                .arg(letter)
                .cmd("HINCRBY")
                .arg(&keys.outcomes)
                .arg("dead")
                .arg(1)
                .query_async(&mut conn)
                .await
        })
        .await?;
        Ok(())
    }

    /// Tells the other workers this one is alive.
    pub async fn heartbeat(&self) -> Result<(), QueueError> {
        let mut conn = self.queue.redis().get();
        let _: Value = bounded(self.queue.redis().timeout(), async {
            redis::cmd("SET")
                .arg(self.queue.keys().alive(&self.name))
                .arg(1)
                .arg("PX")
                .arg(u64::try_from(HEARTBEAT_TTL.as_millis()).unwrap_or(10_000))
                .query_async(&mut conn)
                .await
        })
        .await?;
        Ok(())
    }

    /// Moves retries that are due back into the stream; returns how many.
    pub async fn promote_due_retries(&self) -> Result<u64, QueueError> {
        let keys = self.queue.keys();
        let mut conn = self.queue.redis().get();
        let now = chrono::Utc::now().timestamp_millis();
        let moved: u64 = bounded(self.queue.redis().timeout(), async {
            Script::new(PROMOTE_SCRIPT)
                .key(&keys.retry)
                .key(&keys.jobs)
                .arg(now)
                .arg(100)
                .invoke_async(&mut conn)
                .await
        })
        .await?;
        Ok(moved)
    }

    /// Puts back jobs held by dead workers (heartbeat expired, or reading connection gone) or held longer than
    /// `reclaim_after` by anyone; forgets dead consumers with nothing pending. Returns how many
    /// jobs went back.
    pub async fn reclaim(&self, reclaim_after: Duration) -> Result<u64, QueueError> {
        let keys = self.queue.keys();
        let limit = self.queue.redis().timeout();
        let mut conn = self.queue.redis().get();
        let consumers: Vec<HashMap<String, Value>> = bounded(limit, async {
            redis::cmd("XINFO")
                .arg("CONSUMERS")
                .arg(&keys.jobs)
                .arg(GROUP)
                .query_async(&mut conn)
                .await
        })
        .await?;
        // Names of the connected clients; `None` where CLIENT LIST is not allowed (some managed
        // Redis services), and then only the heartbeat decides.
        let connected: Option<std::collections::HashSet<String>> = bounded(limit, async {
            redis::cmd("CLIENT")
                .arg("LIST")
                .arg("TYPE")
                .arg("normal")
                .query_async::<String>(&mut conn)
                .await
        })
        .await
        .ok()
        .map(|list| {
            list.lines()
                .filter_map(|line| line.split(' ').find_map(|f| f.strip_prefix("name=")))
                .filter(|name| !name.is_empty())
                .map(str::to_owned)
                .collect()
        });
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
            // Milliseconds left on its heartbeat (-2: none).
            let heartbeat_ttl: i64 = bounded(limit, async {
                redis::cmd("PTTL")
                    .arg(keys.alive(&name))
                    .query_async(&mut conn)
                    .await
            })
            .await?;
            let alive = heartbeat_ttl > 0;
            // Its last beat is older than two maintenance periods.
            let beat_overdue =
                heartbeat_ttl < i64::try_from(HEARTBEAT_TTL.as_millis()).unwrap_or(10_000) - 4_500;
            let client = format!("{}:{name}", keys.jobs);
            // A worker killed outright still has a heartbeat for a few seconds, but its
            // connection is gone at once.
            let connected = connected
                .as_ref()
                .is_none_or(|names| names.contains(&client));
            // Dead: no heartbeat, or no connection and a beat overdue (a worker that is only
            // reconnecting its reader keeps beating, so its jobs stay where they are).
            if alive && (connected || !beat_overdue) {
                continue;
            }
            if pending > 0 {
                let held: Vec<(String, String, u64, u64)> = bounded(limit, async {
                    redis::cmd("XPENDING")
                        .arg(&keys.jobs)
                        .arg(GROUP)
                        .arg("-")
                        .arg("+")
                        .arg(1000)
                        .arg(&name)
                        .query_async(&mut conn)
                        .await
                })
                .await?;
                let ids: Vec<String> = held.into_iter().map(|(id, ..)| id).collect();
                requeued += self.requeue(&ids).await?;
            } else {
                let _: i64 = bounded(limit, async {
                    redis::cmd("XGROUP")
                        .arg("DELCONSUMER")
                        .arg(&keys.jobs)
                        .arg(GROUP)
                        .arg(&name)
                        .query_async(&mut conn)
                        .await
                })
                .await?;
            }
        }
        let idle_ms = u64::try_from(reclaim_after.as_millis()).unwrap_or(u64::MAX);
        let stale: Vec<(String, String, u64, u64)> = bounded(limit, async {
            redis::cmd("XPENDING")
                .arg(&keys.jobs)
                .arg(GROUP)
                .arg("IDLE")
                .arg(idle_ms)
                .arg("-")
                .arg("+")
                .arg(1000)
                .query_async(&mut conn)
                .await
        })
        .await?;
        let ids: Vec<String> = stale.into_iter().map(|(id, ..)| id).collect();
        requeued += self.requeue(&ids).await?;
        Ok(requeued)
    }

    async fn requeue(&self, ids: &[String]) -> Result<u64, QueueError> {
        if ids.is_empty() {
            return Ok(0);
        }
        let mut conn = self.queue.redis().get();
        let script = Script::new(REQUEUE_SCRIPT);
        let mut invocation = script.key(&self.queue.keys().jobs);
        invocation.arg(GROUP);
        for id in ids {
            invocation.arg(id);
        }
        let n: u64 = bounded(
            self.queue.redis().timeout(),
            invocation.invoke_async(&mut conn),
        )
        .await?;
        Ok(n)
    }

    /// Leaves the group on a clean shutdown: drops the heartbeat so that anything still held
    /// is reclaimed at once by the other workers.
    pub async fn leave(&self) -> Result<(), QueueError> {
        let mut conn = self.queue.redis().get();
        let _: i64 = bounded(self.queue.redis().timeout(), async {
            redis::cmd("DEL")
                .arg(self.queue.keys().alive(&self.name))
                .query_async(&mut conn)
                .await
        })
        .await?;
        Ok(())
    }
}
