//! The scale figure of docs/performance.md: how long 1, 2 and 4 worker processes take to drain
//! the same queue, against one PostgreSQL and one Redis, and which process runs out of CPU —
//! what `maxReplicaCount` of the worker's autoscaler buys (docs/deployment.md).
//!
//! Not part of every test run (it is `#[ignore]`d, and only meaningful in release mode):
//!
//! ```text
//! cargo test --release --test it -- scale:: --ignored --nocapture
//! ```
//!
//! Per worker count it takes a fresh database and key prefix, queues the jobs through the real
//! API (`POST /api/v1/enhancements`, 32 at a time, before any worker runs), then starts that
//! many `ai-agents-worker` processes at once and times from their start until every row is
//! `completed`. It depends only on the contract's behaviour, not on how the worker is built.
//! CPU is read from `/proc` over the drain, for the workers, PostgreSQL (postmaster and
//! backends) and Redis when they run on this machine, and for the machine as a whole.
//!
//! `AI_AGENTS_SCALE_JOBS` (20000), `AI_AGENTS_SCALE_WORKERS` (`1,2,4`) and
//! `AI_AGENTS_SCALE_CONCURRENCY` (4, jobs in flight per worker) change the run. It fails only
//! when a job is not completed, a worker does not stop cleanly, or the drain exceeds 10 min.

use std::{
    collections::HashMap,
    sync::Arc,
    time::{Duration, Instant},
};

use crate::helpers::{TestApp, WORKER, command, procfs, redis_url, test_vars};
use ai_agents::{db::scope::TenantTx, domain::TenantId};
use sqlx::PgPool;
use tokio::{process::Child, task::JoinSet};

const TENANT: &str = "scale";
const SEEDING_CLIENTS: usize = 32;
const DRAIN_LIMIT: Duration = Duration::from_secs(600);

fn setting(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_owned())
}

/// One row of the table.
struct Drain {
    workers: usize,
    seconds: f64,
    cpu_workers: f64,
    cpu_postgres: Option<f64>,
    cpu_redis: Option<f64>,
    /// This test process (its polling), counted out of "other".
    cpu_self: f64,
    cpu_machine: f64,
    /// Stolen by the host for other guests (part of `cpu_machine`).
    cpu_steal: f64,
    load_average: String,
}

impl Drain {
    /// CPU used by none of the processes measured: other users of the machine.
    fn cpu_other(&self) -> f64 {
        let ours = self.cpu_workers
            + self.cpu_postgres.unwrap_or(0.0)
            + self.cpu_redis.unwrap_or(0.0)
            + self.cpu_self
            + self.cpu_steal;
        (self.cpu_machine - ours).max(0.0)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement of minutes; run explicitly in release mode (see the module docs)"]
async fn drain_time_with_one_two_and_four_workers() {
    let jobs: usize = setting("AI_AGENTS_SCALE_JOBS", "20000").parse().unwrap();
    let concurrency = setting("AI_AGENTS_SCALE_CONCURRENCY", "4");
    let counts: Vec<usize> = setting("AI_AGENTS_SCALE_WORKERS", "1,2,4")
        .split(',')
        .map(|n| n.trim().parse().unwrap())
        .collect();
    let mut rows = Vec::new();
    let mut versions = String::new();
    for &workers in &counts {
        let app = Arc::new(TestApp::spawn().await);
        app.create_tenant(TENANT).await;
        let started = Instant::now();
        seed(&app, jobs).await;
        eprintln!(
            "scale: {jobs} jobs queued through the API in {:.1} s; starting {workers} worker(s)",
            started.elapsed().as_secs_f64()
        );
        let owner = app.db.owner_pool().await;
        let mut vars = test_vars(&app.db.app_url, &redis_url(), &app.prefix);
        // As k8s/worker.yaml runs it.
        for (name, value) in [
            ("AI_AGENTS_WORKER_CONCURRENCY", concurrency.as_str()),
            ("AI_AGENTS_DATABASE_POOL_SIZE", "8"),
            ("AI_AGENTS_DATABASE_MIN_CONNECTIONS", "2"),
            ("AI_AGENTS_REDIS_MAX_CONNECTIONS", "10"),
        ] {
            vars.insert(name.to_owned(), value.to_owned());
        }
        versions = service_versions(&owner).await;
        drop(app); // the API stops: only the workers and the services run during the drain
        rows.push(drain(&owner, &vars, workers, jobs).await);
        owner.close().await;
    }
    print_table(jobs, &concurrency, &versions, &rows);
}

/// Queues `n` enhancements through the API, `SEEDING_CLIENTS` requests at a time.
async fn seed(app: &Arc<TestApp>, n: usize) {
    let mut clients = JoinSet::new();
    for client in 0..SEEDING_CLIENTS {
        let app = Arc::clone(app);
        clients.spawn(async move {
            for i in (client..n).step_by(SEEDING_CLIENTS) {
                app.create_enhancement(TENANT, &format!("SCALE-{i}")).await;
            }
        });
    }
    while let Some(done) = clients.join_next().await {
        done.expect("a seeding client panicked");
    }
}

/// Starts `workers` processes on the queued jobs and times them until every row is completed.
async fn drain(
    owner: &PgPool,
    vars: &HashMap<String, String>,
    workers: usize,
    jobs: usize,
) -> Drain {
    let postgres = postgres_pids(owner).await;
    let redis = redis_pid().await;
    let before_pg = ticks_of(&postgres);
    let before_redis = redis.map(|p| procfs::proc_ticks(&p.to_string()));
    let before_machine = procfs::machine_ticks();
    let before_self = procfs::proc_ticks("self");
    let load_average = procfs::load_average();
    let started = Instant::now();
    let mut children: Vec<Child> = (0..workers)
        .map(|_| {
            command(WORKER, vars)
                .stdout(std::process::Stdio::inherit())
                .stderr(std::process::Stdio::inherit())
                .spawn()
                .expect("worker starts")
        })
        .collect();
    let pids: Vec<u32> = children.iter().map(|c| c.id().unwrap()).collect();
    let mut worker_ticks = vec![0; workers];
    while unfinished(owner).await {
        assert!(
            started.elapsed() < DRAIN_LIMIT,
            "{workers} worker(s) did not drain {jobs} jobs in {DRAIN_LIMIT:?}"
        );
        for (ticks, pid) in worker_ticks.iter_mut().zip(&pids) {
            *ticks = procfs::proc_ticks(&pid.to_string()).max(*ticks);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let elapsed = started.elapsed();
    for (ticks, pid) in worker_ticks.iter_mut().zip(&pids) {
        *ticks = procfs::proc_ticks(&pid.to_string()).max(*ticks);
    }
    let after_pg = ticks_of(&postgres_pids(owner).await);
    let after_machine = procfs::machine_ticks();
    let row = Drain {
        workers,
        seconds: elapsed.as_secs_f64(),
        cpu_workers: procfs::percent(worker_ticks.iter().sum(), elapsed),
        cpu_postgres: (!postgres.is_empty()).then(|| {
            let used = after_pg
                .iter()
                .map(|(pid, t)| t.saturating_sub(before_pg.get(pid).copied().unwrap_or(0)))
                .sum();
            procfs::percent(used, elapsed)
        }),
        cpu_redis: redis.zip(before_redis).map(|(pid, before)| {
            procfs::percent(
                procfs::proc_ticks(&pid.to_string()).saturating_sub(before),
                elapsed,
            )
        }),
        cpu_self: procfs::percent(
            procfs::proc_ticks("self").saturating_sub(before_self),
            elapsed,
        ),
        cpu_machine: procfs::percent(
            after_machine.busy.saturating_sub(before_machine.busy),
            elapsed,
        ),
        cpu_steal: procfs::percent(
            after_machine.steal.saturating_sub(before_machine.steal),
            elapsed,
        ),
        load_average,
    };
    assert_eq!(
        completed(owner).await,
        jobs as i64,
        "every job must end `completed`"
    );
    for child in &children {
        terminate(child);
    }
    for child in &mut children {
        let status = tokio::time::timeout(Duration::from_secs(30), child.wait())
            .await
            .expect("a worker stops within 30 s of SIGTERM")
            .unwrap();
        assert!(status.success(), "a worker exited with {status}");
    }
    row
}

fn terminate(child: &Child) {
    let pid = child.id().expect("worker still running").to_string();
    let status = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    assert!(status.success(), "kill -TERM {pid} failed");
}

/// A transaction of the owner in which row-level security admits the tenant's rows.
async fn tenant_tx(owner: &PgPool) -> TenantTx {
    TenantTx::begin(owner, &TenantId::parse(TENANT).unwrap())
        .await
        .unwrap()
}

/// Whether a row is still `pending` or `processing` (an index probe on `status`, cheap enough
/// to ask every 20 ms without loading the database being measured).
async fn unfinished(owner: &PgPool) -> bool {
    let mut tx = tenant_tx(owner).await;
    let found: bool = sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM enhancement_history WHERE status IN ('pending', 'processing'))",
    )
    .fetch_one(tx.conn())
    .await
    .unwrap();
    tx.commit().await.unwrap();
    found
}

async fn completed(owner: &PgPool) -> i64 {
    let mut tx = tenant_tx(owner).await;
    let n =
        sqlx::query_scalar("SELECT count(*) FROM enhancement_history WHERE status = 'completed'")
            .fetch_one(tx.conn())
            .await
            .unwrap();
    tx.commit().await.unwrap();
    n
}

/// The postmaster and its children, found through our own backend's parent; empty when
/// PostgreSQL runs elsewhere (another host or container).
async fn postgres_pids(owner: &PgPool) -> Vec<u32> {
    let backend: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
        .fetch_one(owner)
        .await
        .unwrap();
    let Some(postmaster) = u32::try_from(backend).ok().and_then(procfs::parent_of) else {
        return Vec::new();
    };
    let mut pids = procfs::children_of(postmaster);
    pids.push(postmaster);
    pids
}

fn ticks_of(pids: &[u32]) -> HashMap<u32, u64> {
    pids.iter()
        .map(|pid| (*pid, procfs::proc_ticks(&pid.to_string())))
        .collect()
}

/// The Redis server's pid (`INFO server`), if it runs on this machine.
async fn redis_pid() -> Option<u32> {
    let client = redis::Client::open(redis_url()).ok()?;
    let mut conn = client.get_multiplexed_async_connection().await.ok()?;
    let info: String = redis::cmd("INFO")
        .arg("server")
        .query_async(&mut conn)
        .await
        .ok()?;
    let pid: u32 = info
        .lines()
        .find_map(|l| l.strip_prefix("process_id:"))?
        .trim()
        .parse()
        .ok()?;
    std::path::Path::new(&format!("/proc/{pid}/stat"))
        .exists()
        .then_some(pid)
}

async fn service_versions(owner: &PgPool) -> String {
    let postgres: String = sqlx::query_scalar("SHOW server_version")
        .fetch_one(owner)
        .await
        .unwrap_or_default();
    let redis = match redis::Client::open(redis_url()) {
        Ok(client) => match client.get_multiplexed_async_connection().await {
            Ok(mut conn) => redis::cmd("INFO")
                .arg("server")
                .query_async::<String>(&mut conn)
                .await
                .ok()
                .and_then(|i| {
                    i.lines()
                        .find_map(|l| l.strip_prefix("redis_version:"))
                        .map(|v| v.trim().to_owned())
                })
                .unwrap_or_default(),
            Err(_) => String::new(),
        },
        Err(_) => String::new(),
    };
    format!("PostgreSQL {postgres}, Redis {redis}")
}

fn print_table(jobs: usize, concurrency: &str, versions: &str, rows: &[Drain]) {
    let cpu = |v: Option<f64>| v.map_or("n/a".to_owned(), |v| format!("{v:.0}"));
    let base = rows.first().map_or(1.0, |r| jobs as f64 / r.seconds);
    eprintln!(
        "\nscale: {jobs} jobs, concurrency {concurrency} per worker, {} cores, {versions}",
        procfs::cores()
    );
    eprintln!(
        "| workers | drain s | jobs/s | speed-up | CPU % workers | postgres | redis | other processes | stolen by the host | machine busy (of {}) | load average before |",
        procfs::cores() * 100
    );
    eprintln!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|");
    for r in rows {
        let rate = jobs as f64 / r.seconds;
        eprintln!(
            "| {} | {:.2} | {:.0} | {:.2}× | {:.0} | {} | {} | {:.0} | {:.0} | {:.0} | {} |",
            r.workers,
            r.seconds,
            rate,
            rate / base,
            r.cpu_workers,
            cpu(r.cpu_postgres),
            cpu(r.cpu_redis),
            r.cpu_other(),
            r.cpu_steal,
            r.cpu_machine,
            r.load_average
        );
    }
}
