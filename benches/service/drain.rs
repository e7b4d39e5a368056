//! The drains: a stream already holding the jobs, emptied by the real worker, and by the
//! least work a consumer must do for each job (its ceiling).

use std::{
    collections::BTreeMap,
    time::{Duration, Instant},
};

use ai_agents::{
    db::scope::TenantTx,
    domain::TenantId,
    queue::{Job, JobKind},
};
use sqlx::{Connection, Executor, PgConnection, PgPool};
use uuid::Uuid;

use crate::{
    BoxError, Res, TENANT, bench_tenant,
    binaries::{Proc, spawn},
    procfs::{CpuShare, CpuSnapshot, Memory, ProcessCpu, memory, proc_ticks},
    services::{Services, redis_conn},
    settings::Settings,
};

/// `n` pending rows (one INSERT) and the stream's consumer group, before any consumer starts;
/// their jobs are queued by [`queue_jobs`].
pub async fn seed_rows(s: &Settings, pool: &PgPool, prefix: &str, n: usize) -> Res<Vec<Uuid>> {
    let ids: Vec<Uuid> = (0..n).map(|_| Uuid::now_v7()).collect();
    let mut tx = TenantTx::begin(pool, &bench_tenant()).await?;
    sqlx::query(
        "INSERT INTO enhancement_history (id, tenant_id, ticket_id, status, context)
         SELECT id, $2, 'DRAIN-' || ord, 'pending', '{}'::jsonb
         FROM unnest($1::uuid[]) WITH ORDINALITY AS t(id, ord)",
    )
    .bind(&ids)
    .bind(TENANT)
    .execute(tx.conn())
    .await?;
    tx.commit().await?;
    let mut owner = PgConnection::connect(
        &s.owner_url(pool.connect_options().get_database().unwrap_or("ai_agents")),
    )
    .await?;
    owner.execute("ANALYZE enhancement_history").await?;
    owner.close().await.ok();

    let mut conn = redis_conn(s).await?;
    let _: redis::Value = redis::cmd("XGROUP")
        .arg("CREATE")
        .arg(format!("{prefix}:jobs"))
        .arg(ai_agents::queue::GROUP)
        .arg("0")
        .arg("MKSTREAM")
        .query_async(&mut conn)
        .await?;
    Ok(ids)
}

/// The jobs of `ids` (rows of [`seed_rows`]), queued with pipelined XADDs.
pub async fn queue_jobs(s: &Settings, prefix: &str, ids: &[Uuid]) -> Res<()> {
    let mut conn = redis_conn(s).await?;
    let stream = format!("{prefix}:jobs");
    for chunk in ids.chunks(500) {
        let mut pipe = redis::pipe();
        for id in chunk {
            let job = Job::new(JobKind::Enhancement {
                enhancement_id: *id,
                tenant_id: TenantId::parse(TENANT)?,
            });
            pipe.cmd("XADD")
                .arg(&stream)
                .arg("*")
                .arg("job")
                .arg(job.encode())
                .ignore();
        }
        let () = pipe.query_async(&mut conn).await?;
    }
    Ok(())
}

/// How many of `ids` are `completed`.
pub async fn count_completed(pool: &PgPool, ids: &[Uuid]) -> Res<u64> {
    let mut tx = TenantTx::begin(pool, &bench_tenant()).await?;
    let n: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM enhancement_history WHERE id = ANY($1) AND status = 'completed'",
    )
    .bind(ids)
    .fetch_one(tx.conn())
    .await?;
    tx.commit().await?;
    Ok(u64::try_from(n).unwrap_or(0))
}

/// One drain of a stream: how long it took, how many jobs, the CPU used meanwhile.
pub struct Drain {
    /// From the start until the stream was empty (or the limit).
    pub seconds: f64,
    /// Jobs taken off the stream.
    pub jobs: usize,
    /// Whether the limit ended it.
    pub timed_out: bool,
    /// Who used the CPU meanwhile (the worker or this process as the server).
    pub cpu: CpuShare,
}

impl Drain {
    /// The figure.
    pub fn jobs_per_second(&self) -> f64 {
        self.jobs as f64 / self.seconds.max(1e-9)
    }
}

/// How long a drain may take before it is reported as timed out.
fn drain_limit(s: &Settings) -> Duration {
    Duration::from_secs(if s.smoke { 60 } else { 180 })
}

/// How long a worker may take from its start until it reads.
const READY_LIMIT: Duration = Duration::from_secs(30);

/// A warm worker's drain, as Celery's figure was measured (its worker already up): starts a
/// worker on the empty stream of [`seed_rows`] and waits until it reads (blocked in `XREADGROUP` on
/// the empty stream), then queues the jobs of `ids` and times from the first XADD until the stream
/// is empty (every job acknowledged, which happens after its row is `completed`). Also returns
/// the worker's start-up: from its exec until it read.
pub async fn worker_drain(
    s: &Settings,
    vars: &BTreeMap<String, String>,
    prefix: &str,
    ids: &[Uuid],
    services: &Services,
) -> Res<(Drain, Memory, Duration)> {
    let stream = format!("{prefix}:jobs");
    let mut conn = redis_conn(s).await?;
    let exec = Instant::now();
    let mut worker = Proc::new(spawn(
        &s.bin("ai-agents-worker"),
        &[],
        vars,
        s,
        "worker-drain",
    )?);
    while !blocked_in_read(&mut conn).await? {
        if exec.elapsed() > READY_LIMIT {
            return Err(format!("the worker did not read within {READY_LIMIT:?}").into());
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let start_up = exec.elapsed();
    let before = CpuSnapshot::take(ProcessCpu::Pid(worker.pid), services);
    let started = Instant::now();
    queue_jobs(s, prefix, ids).await?;
    let mut timed_out = false;
    let mut left: usize;
    let mut server_ticks = 0;
    loop {
        left = redis::cmd("XLEN")
            .arg(&stream)
            .query_async(&mut conn)
            .await?;
        server_ticks = server_ticks.max(proc_ticks(&worker.pid.to_string()));
        if left == 0 {
            break;
        }
        if started.elapsed() > drain_limit(s) {
            timed_out = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let seconds = started.elapsed().as_secs_f64();
    let mut after = CpuSnapshot::take(ProcessCpu::Pid(worker.pid), services);
    after.server = after.server.max(server_ticks);
    let memory = memory(worker.pid)?;
    worker.stop().await;
    Ok((
        Drain {
            seconds,
            jobs: ids.len() - left,
            timed_out,
            cpu: before.share_until(&after, 0),
        },
        memory,
        start_up,
    ))
}

/// Whether a client of Redis waits in `XREADGROUP` (the worker's reader on an empty stream:
/// no other client of the bench blocks).
async fn blocked_in_read(conn: &mut redis::aio::MultiplexedConnection) -> Res<bool> {
    let clients: String = redis::cmd("CLIENT").arg("LIST").query_async(conn).await?;
    Ok(clients.lines().any(|client| {
        client.contains(" cmd=xreadgroup") && client.split(' ').any(|f| f == "flags=b")
    }))
}

/// The raw ceiling of a drain: `concurrency` tasks, each with its own Redis connection, doing
/// XREADGROUP (COUNT 1) → one tenant-scoped transaction with the final UPDATE → XACK + XDEL in
/// one MULTI, until the stream is empty.
pub async fn raw_drain(
    s: &Settings,
    pool: &PgPool,
    prefix: &str,
    concurrency: usize,
    services: &Services,
) -> Res<Drain> {
    let stream = format!("{prefix}:jobs");
    let mut conns = Vec::new();
    for _ in 0..concurrency {
        conns.push(redis_conn(s).await?);
    }
    let before = CpuSnapshot::take(ProcessCpu::SelfProcess, services);
    let started = Instant::now();
    let limit = started + drain_limit(s);
    let mut tasks = tokio::task::JoinSet::new();
    for (i, mut conn) in conns.into_iter().enumerate() {
        let pool = pool.clone();
        let stream = stream.clone();
        tasks.spawn(async move {
            let consumer = format!("raw-{i}");
            let mut done = 0_usize;
            let mut last = Instant::now();
            type Reply = Option<Vec<(String, Vec<(String, BTreeMap<String, String>)>)>>;
            while Instant::now() < limit {
                let reply: Reply = redis::cmd("XREADGROUP")
                    .arg("GROUP")
                    .arg(ai_agents::queue::GROUP)
                    .arg(&consumer)
                    .arg("COUNT")
                    .arg(1)
                    .arg("BLOCK")
                    .arg(100)
                    .arg("STREAMS")
                    .arg(&stream)
                    .arg(">")
                    .query_async(&mut conn)
                    .await?;
                let Some((entry, fields)) = reply
                    .into_iter()
                    .flatten()
                    .flat_map(|(_, entries)| entries)
                    .next()
                else {
                    break; // the stream is empty: every job was handed out
                };
                let job = Job::decode(fields.get("job").map_or("", String::as_str))?;
                let JobKind::Enhancement {
                    enhancement_id,
                    tenant_id,
                } = job.kind
                else {
                    return Err::<_, BoxError>("unexpected job kind".into());
                };
                let mut tx = TenantTx::begin(&pool, &tenant_id).await?;
                sqlx::query(
                    "UPDATE enhancement_history
                     SET status = 'completed', processing_time_ms = 0,
                         context_gathered = '{}'::jsonb, completed_at = now()
                     WHERE id = $1 AND status IN ('pending', 'processing')",
                )
                .bind(enhancement_id)
                .execute(tx.conn())
                .await?;
                tx.commit().await?;
                let () = redis::pipe()
                    .atomic()
                    .cmd("XACK")
                    .arg(&stream)
                    .arg(ai_agents::queue::GROUP)
                    .arg(&entry)
                    .ignore()
                    .cmd("XDEL")
                    .arg(&stream)
                    .arg(&entry)
                    .ignore()
                    .query_async(&mut conn)
                    .await?;
                done += 1;
                last = Instant::now();
            }
            Ok((done, last))
        });
    }
    let mut jobs = 0;
    let mut end = started;
    while let Some(r) = tasks.join_next().await {
        let (done, last) = r??;
        jobs += done;
        end = end.max(last);
    }
    let after = CpuSnapshot::take(ProcessCpu::SelfProcess, services);
    let mut conn = redis_conn(s).await?;
    let left: usize = redis::cmd("XLEN")
        .arg(&stream)
        .query_async(&mut conn)
        .await?;
    Ok(Drain {
        seconds: end.duration_since(started).as_secs_f64(),
        jobs,
        timed_out: left > 0,
        cpu: before.share_until(&after, 0),
    })
}
