//! The service benchmark: the real release binaries under load, beside raw ceilings measured in
//! the same run on the same machine.
//!
//! ```text
//! cargo bench --bench service              full run (10 s per figure after a 3 s warm-up)
//! cargo bench --bench service -- --smoke   a few seconds per figure (CI: runs, judges nothing)
//! ```
//!
//! What it does, in order (details and the figures of a real run: `docs/performance.md`):
//!
//! 1. starts its own PostgreSQL and Redis with `nix/dev-services.sh` (state in
//!    `<target>/bench-services`, ports 55632 and 56579; override with `AI_AGENTS_BENCH_DEV_DIR`,
//!    `AI_AGENTS_BENCH_PG_PORT`, `AI_AGENTS_BENCH_REDIS_PORT`; PostgreSQL binaries from
//!    `AI_AGENTS_PG_BIN` if set), and stops them at the end;
//! 2. builds the release binaries (`cargo build --release --bins --locked`, `SQLX_OFFLINE=true`),
//!    creates a fresh database as the owner role, migrates it with `ai-agents-api migrate`, and
//!    runs the API and the worker as subprocesses (environment `test`, JSON logs at `warn`,
//!    the application role, a fresh queue prefix per phase);
//! 3. drives load over loopback sockets with `wrk -t1 -c32` and with in-process loops, and
//!    measures start-up, memory and binary sizes;
//! 4. prints a table and one JSON line per figure with the ratio to its ceiling, to the Python
//!    original (shared/PEER-FIGURES.md) and whether the budget holds. It reports; it asserts
//!    nothing, and exits non-zero only when it cannot measure at all.
//!
//! Only loopback traffic: every server it starts listens on 127.0.0.1.

use std::{
    collections::BTreeMap,
    convert::Infallible,
    error::Error,
    fmt::Write as _,
    net::{SocketAddr, TcpListener as StdTcpListener},
    path::{Path, PathBuf},
    process::{ExitCode, Stdio},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use ai_agents::{
    db::scope::TenantTx,
    domain::TenantId,
    queue::{Job, JobKind},
};
use http_body_util::Full;
use hyper::{body::Bytes, server::conn::http1, service::service_fn};
use hyper_util::rt::TokioIo;
use redis::{AsyncConnectionConfig, aio::MultiplexedConnection};
use sqlx::{
    Connection, Executor, PgConnection, PgPool, Row,
    postgres::{PgConnectOptions, PgPoolOptions},
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    process::{Child, Command},
};
use uuid::Uuid;

type BoxError = Box<dyn Error + Send + Sync>;
type Res<T> = Result<T, BoxError>;

const TOKEN: &str = "bench-token-0123456789abcdef0123";
const KEY: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";
const TENANT: &str = "bench";
/// Same as the services' defaults (contract §4), used by the API, the worker and the ceilings.
const DB_POOL: u32 = 20;
const REDIS_CONNECTIONS: usize = 10;
const CONNECTIONS: u32 = 32;

/// The Python original on the same machine kind (shared/PEER-FIGURES.md).
mod python {
    /// `GET /health`, 1 uvicorn worker, access log off.
    pub const HEALTH_RPS: f64 = 5835.0;
    /// Its p99 (7.5–10 ms): the better end.
    pub const HEALTH_P99_MS: f64 = 7.5;
    /// `POST /api/v1/enhancements`, 1 worker.
    pub const POST_RPS: f64 = 271.0;
    /// Its p99.
    pub const POST_P99_MS: f64 = 213.0;
    /// Celery prefork 4, placeholder enhancement jobs.
    pub const DRAIN_JOBS_S: f64 = 187.0;
    /// API start to first 200 from `/health/ready`.
    pub const STARTUP_MS: f64 = 1110.0;
    /// Idle RSS of the API (1 uvicorn worker).
    pub const API_RSS_MIB: f64 = 97.0;
    /// Idle RSS of the Celery worker (5 processes).
    pub const WORKER_RSS_MIB: f64 = 385.0;
    /// Python dependencies: 141 MB.
    pub const DEPS_MIB: f64 = 141.0e6 / 1_048_576.0;
}

// ------------------------------------------------------------------------------- settings

struct Settings {
    smoke: bool,
    duration: u32,
    warmup: u32,
    drain_jobs: usize,
    startup_runs: usize,
    root: PathBuf,
    target: PathBuf,
    state: PathBuf,
    pg_port: u16,
    redis_port: u16,
}

impl Settings {
    fn from_args() -> Res<Self> {
        let mut smoke = false;
        for arg in std::env::args().skip(1) {
            match arg.as_str() {
                "--smoke" => smoke = true,
                // cargo passes `--bench` to harness-less benches.
                "--bench" => {}
                "-h" | "--help" => {
                    println!(
                        "usage: cargo bench --bench service [-- --smoke]\n\
                         env: AI_AGENTS_BENCH_DEV_DIR, AI_AGENTS_BENCH_PG_PORT, \
                         AI_AGENTS_BENCH_REDIS_PORT, AI_AGENTS_PG_BIN, CARGO_TARGET_DIR"
                    );
                    std::process::exit(0);
                }
                other if other.starts_with('-') => {
                    return Err(format!("unknown option {other} (try --smoke)").into());
                }
                _ => {} // a name filter from `cargo bench NAME`: there is only one benchmark
            }
        }
        let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
        let target =
            std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| root.join("target"), PathBuf::from);
        let target = if target.is_absolute() {
            target
        } else {
            root.join(target)
        };
        let state = std::env::var_os("AI_AGENTS_BENCH_DEV_DIR")
            .map_or_else(|| target.join("bench-services"), PathBuf::from);
        let port = |name: &str, default: u16| -> Res<u16> {
            match std::env::var(name) {
                Ok(v) => v
                    .parse()
                    .map_err(|_| format!("{name}={v} is not a port").into()),
                Err(_) => Ok(default),
            }
        };
        Ok(Self {
            smoke,
            duration: if smoke { 2 } else { 10 },
            warmup: if smoke { 1 } else { 3 },
            drain_jobs: if smoke { 2_000 } else { 10_000 },
            startup_runs: 10,
            root,
            target,
            state,
            pg_port: port("AI_AGENTS_BENCH_PG_PORT", 55632)?,
            redis_port: port("AI_AGENTS_BENCH_REDIS_PORT", 56579)?,
        })
    }

    fn owner_url(&self, db: &str) -> String {
        format!(
            "postgres://ai_agents_owner:ai_agents_owner@127.0.0.1:{}/{db}",
            self.pg_port
        )
    }

    fn app_url(&self, db: &str) -> String {
        format!(
            "postgres://ai_agents_app:ai_agents_app@127.0.0.1:{}/{db}",
            self.pg_port
        )
    }

    fn redis_url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.redis_port)
    }

    fn bin(&self, name: &str) -> PathBuf {
        self.target.join("release").join(name)
    }
}

fn progress(started: Instant, text: &str) {
    eprintln!("[bench {:>6.1}s] {text}", started.elapsed().as_secs_f64());
}

// ------------------------------------------------------------------------------- main

fn main() -> ExitCode {
    let settings = match Settings::from_args() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("bench: {e}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("bench: cannot start tokio: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        tokio::select! {
            result = run(&settings) => result,
            _ = tokio::signal::ctrl_c() => Err("interrupted".into()),
        }
    });
    // Guards (services, child processes) have been dropped here: everything is stopped.
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bench: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(s: &Settings) -> Res<()> {
    let t = Instant::now();
    which("wrk").ok_or("wrk is not installed (Debian: apt-get install wrk)")?;
    let mut report = Report::new(s);
    report.context("load average before", load_average());
    report.context("busy processes before", busy_processes());

    progress(t, "starting PostgreSQL and Redis (nix/dev-services.sh)");
    let services = Services::start(s)?;
    progress(t, "building the release binaries");
    cargo_build(s, &["build", "--release", "--bins", "--locked"])?;
    let musl = musl_binaries(s, t, &mut report);

    let run_id = Uuid::new_v4().simple().to_string()[..10].to_owned();
    let db_name = format!("ai_agents_bench_{run_id}");
    let result = measure(
        s,
        t,
        &run_id,
        &db_name,
        &services,
        musl.as_deref(),
        &mut report,
    )
    .await;
    progress(t, "cleaning up");
    cleanup(s, &run_id, &db_name).await;
    drop(services);
    let result = result.and_then(|()| {
        report.sizes(s, musl);
        report.context("load average after", load_average());
        report.print();
        report.save(&s.state.join("last-run.jsonl"))
    });
    progress(t, "done");
    result
}

async fn measure(
    s: &Settings,
    t: Instant,
    run_id: &str,
    db_name: &str,
    services: &Services,
    musl: Option<&Path>,
    report: &mut Report,
) -> Res<()> {
    // A fresh database, created by the owner and migrated by the binary.
    let mut admin = PgConnection::connect(&s.owner_url("ai_agents")).await?;
    admin
        .execute(sqlx::AssertSqlSafe(format!(
            r#"CREATE DATABASE "{db_name}""#
        )))
        .await?;
    let version: String = sqlx::query_scalar("SHOW server_version")
        .fetch_one(&mut admin)
        .await?;
    admin.close().await.ok();
    report.context("PostgreSQL", version);
    report.context("Redis", command_line("redis-server", &["--version"]));
    report.context("wrk", command_line("wrk", &["--version"]));
    let vars = base_vars(s, &s.app_url(db_name), &format!("bench-{run_id}-api"));
    let mut migrate_vars = vars.clone();
    migrate_vars.insert("AI_AGENTS_DATABASE_URL".into(), s.owner_url(db_name));
    let status = spawn(
        &s.bin("ai-agents-api"),
        &["migrate"],
        &migrate_vars,
        s,
        "migrate",
    )?
    .wait()
    .await?;
    if !status.success() {
        return Err(format!(
            "ai-agents-api migrate failed ({status}); see {}",
            log_dir(s).display()
        )
        .into());
    }

    // ---- HTTP: the hyper ceiling, then the API, all with the same wrk.
    progress(t, "hyper hello-world ceiling");
    let hello = hello_server().await?;
    let hyper_health = wrk(
        s,
        &format!("http://{hello}/"),
        None,
        ProcessCpu::SelfProcess,
        services,
    )
    .await?;
    report.note(format!("hyper ceiling: {}", hyper_health.cpu_line()));

    progress(t, "API: start, idle memory");
    let (mut api, api_addr) = launch_api(s, &s.bin("ai-agents-api"), &vars, "api").await?;
    create_tenant(api_addr).await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let api_idle = memory(api.pid)?;

    progress(t, "API: GET /health");
    let health = wrk(
        s,
        &format!("http://{api_addr}/health"),
        None,
        ProcessCpu::Pid(api.pid),
        services,
    )
    .await?;
    progress(t, "API: GET /health/ready");
    let ready = wrk(
        s,
        &format!("http://{api_addr}/health/ready"),
        None,
        ProcessCpu::Pid(api.pid),
        services,
    )
    .await?;
    progress(t, "API: POST /api/v1/enhancements (no worker running)");
    let script = s.root.join("benches/post_enhancement.lua");
    let post = wrk(
        s,
        &format!("http://{api_addr}/api/v1/enhancements"),
        Some((&script, &[TOKEN, TENANT])),
        ProcessCpu::Pid(api.pid),
        services,
    )
    .await?;
    let api_loaded = memory(api.pid)?;
    let queued = redis_xlen(s, &format!("bench-{run_id}-api:jobs"))
        .await
        .unwrap_or(0);
    report.note(format!(
        "POST: {} requests answered 2xx by wrk's count in the measured run; {queued} jobs queued in Redis with the warm-up (no worker ran)",
        post.requests.saturating_sub(post.non_2xx)
    ));
    api.stop().await;

    progress(
        t,
        "POST ceiling: the same transaction + XADD from 32 tasks in-process",
    );
    let post_ceiling =
        post_ceiling(s, db_name, &format!("bench-{run_id}-direct"), services).await?;

    report.wrk_figures(&hyper_health, &health, &ready, &post, &post_ceiling);

    // ---- The static musl API (what the images ship), same loads, when it was built.
    if let Some(dir) = musl {
        progress(t, "static musl API: GET /health, POST /api/v1/enhancements");
        let mut v = vars.clone();
        v.insert(
            "AI_AGENTS_QUEUE_PREFIX".into(),
            format!("bench-{run_id}-musl"),
        );
        let (mut api, addr) = launch_api(s, &dir.join("ai-agents-api"), &v, "api-musl").await?;
        tokio::time::sleep(Duration::from_secs(1)).await;
        let idle = memory(api.pid)?;
        let health = wrk(
            s,
            &format!("http://{addr}/health"),
            None,
            ProcessCpu::Pid(api.pid),
            services,
        )
        .await?;
        let post = wrk(
            s,
            &format!("http://{addr}/api/v1/enhancements"),
            Some((&script, &[TOKEN, TENANT])),
            ProcessCpu::Pid(api.pid),
            services,
        )
        .await?;
        api.stop().await;
        report.musl_figures(&hyper_health, &health, &post, &post_ceiling, idle);
    }

    // ---- Start-up: exec to the first 200 from /health/ready.
    progress(t, "start-up: exec to first 200 from /health/ready");
    let mut startups = Vec::new();
    for _ in 0..s.startup_runs {
        startups.push(startup_once(s, &vars).await?);
    }
    report.startup(&startups);

    // ---- Worker: idle memory, then drains at concurrency 4 and 16 beside the raw loop.
    progress(t, "worker: idle memory");
    let mut idle_vars = vars.clone();
    idle_vars.insert(
        "AI_AGENTS_QUEUE_PREFIX".into(),
        format!("bench-{run_id}-idle"),
    );
    let mut worker = Proc::new(spawn(
        &s.bin("ai-agents-worker"),
        &[],
        &idle_vars,
        s,
        "worker-idle",
    )?);
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let worker_idle = memory(worker.pid)?;
    worker.stop().await;

    let pool = app_pool(s, db_name).await?;
    let mut drains = BTreeMap::new();
    let mut worker_loaded = None;
    for concurrency in [4_usize, 16] {
        for raw in [false, true] {
            let label = if raw { "raw loop" } else { "worker" };
            progress(
                t,
                &format!(
                    "drain: {} jobs, {label}, concurrency {concurrency}",
                    s.drain_jobs
                ),
            );
            let prefix = format!(
                "bench-{run_id}-drain-{}-{concurrency}",
                if raw { "raw" } else { "w" }
            );
            let ids = seed_jobs(s, &pool, &prefix, s.drain_jobs).await?;
            let drain = if raw {
                raw_drain(s, &pool, &prefix, concurrency, services).await?
            } else {
                let mut v = vars.clone();
                v.insert("AI_AGENTS_QUEUE_PREFIX".into(), prefix.clone());
                v.insert(
                    "AI_AGENTS_WORKER_CONCURRENCY".into(),
                    concurrency.to_string(),
                );
                let (drain, mem) = worker_drain(s, &v, &prefix, services).await?;
                worker_loaded = Some(mem);
                drain
            };
            let completed = count_completed(&pool, &ids).await?;
            report.note(format!(
                "drain {label} c={concurrency}: {completed}/{} rows completed in {:.2} s; {}",
                ids.len(),
                drain.seconds,
                drain.cpu.line("worker/loop")
            ));
            drains.insert((concurrency, raw), (drain, completed));
        }
    }
    pool.close().await;
    report.drains(s, &drains);
    report.memory(api_idle, api_loaded, worker_idle, worker_loaded);
    Ok(())
}

// ------------------------------------------------------------------------------- services

struct Services {
    script: PathBuf,
    envs: Vec<(String, String)>,
    pg_data: PathBuf,
    redis_pidfile: PathBuf,
}

impl Services {
    fn start(s: &Settings) -> Res<Self> {
        std::fs::create_dir_all(&s.state)?;
        std::fs::create_dir_all(log_dir(s))?;
        let services = Self {
            script: s.root.join("nix/dev-services.sh"),
            envs: vec![
                ("AI_AGENTS_DEV_DIR".into(), s.state.display().to_string()),
                ("AI_AGENTS_DEV_PG_PORT".into(), s.pg_port.to_string()),
                ("AI_AGENTS_DEV_REDIS_PORT".into(), s.redis_port.to_string()),
            ],
            pg_data: s.state.join("postgres"),
            redis_pidfile: s.state.join("redis/redis.pid"),
        };
        let output = services.script_command("start").output()?;
        if !output.status.success() {
            return Err(format!(
                "nix/dev-services.sh start failed:\n{}\n(state in {}; remove it to start afresh)",
                String::from_utf8_lossy(&output.stderr),
                s.state.display()
            )
            .into());
        }
        Ok(services)
    }

    fn script_command(&self, command: &str) -> std::process::Command {
        let mut cmd = std::process::Command::new("bash");
        cmd.arg(&self.script)
            .arg(command)
            .envs(self.envs.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null());
        cmd
    }

    /// The postmaster and its children (backends), by pid.
    fn postgres_pids(&self) -> Vec<u32> {
        let Some(postmaster) = std::fs::read_to_string(self.pg_data.join("postmaster.pid"))
            .ok()
            .and_then(|t| t.lines().next().and_then(|l| l.trim().parse::<u32>().ok()))
        else {
            return Vec::new();
        };
        let mut pids = vec![postmaster];
        pids.extend(children_of(postmaster));
        pids
    }

    fn redis_pid(&self) -> Option<u32> {
        std::fs::read_to_string(&self.redis_pidfile)
            .ok()
            .and_then(|t| t.trim().parse().ok())
    }
}

impl Drop for Services {
    fn drop(&mut self) {
        match self.script_command("stop").output() {
            Ok(o) if o.status.success() => {}
            Ok(o) => eprintln!(
                "bench: nix/dev-services.sh stop failed: {}",
                String::from_utf8_lossy(&o.stderr)
            ),
            Err(e) => eprintln!("bench: cannot run nix/dev-services.sh stop: {e}"),
        }
    }
}

fn log_dir(s: &Settings) -> PathBuf {
    s.state.join("bench-logs")
}

fn cargo_build(s: &Settings, args: &[&str]) -> Res<()> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = std::process::Command::new(cargo)
        .args(args)
        .current_dir(&s.root)
        .env("SQLX_OFFLINE", "true")
        .stdin(Stdio::null())
        .status()?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("cargo {} failed ({status})", args.join(" ")).into())
    }
}

/// The static binaries: a full run builds them (a no-op when they are up to date); a smoke run
/// takes existing ones (CI's static check has just built them) or skips their figures.
fn musl_binaries(s: &Settings, t: Instant, report: &mut Report) -> Option<PathBuf> {
    let dir = s.target.join("x86_64-unknown-linux-musl/release");
    let present = || {
        ["ai-agents-api", "ai-agents-worker"]
            .iter()
            .all(|b| dir.join(b).is_file())
    };
    if s.smoke {
        if present() {
            report.note(format!("static binaries: existing {}", dir.display()));
            return Some(dir);
        }
        report.note("static musl binaries absent: size figures skipped in smoke mode (a full run builds them)".into());
        return None;
    }
    progress(
        t,
        "building the static musl binaries (once; not part of any figure)",
    );
    match cargo_build(
        s,
        &[
            "build",
            "--release",
            "--locked",
            "--target",
            "x86_64-unknown-linux-musl",
            "--bins",
        ],
    ) {
        Ok(()) if present() => Some(dir),
        Ok(()) => None,
        Err(e) => {
            report.note(format!(
                "static musl binaries could not be built ({e}): size figures skipped"
            ));
            None
        }
    }
}

async fn cleanup(s: &Settings, run_id: &str, db_name: &str) {
    if let Ok(mut admin) = PgConnection::connect(&s.owner_url("ai_agents")).await {
        // The owner may not terminate the application role's sessions (`WITH (FORCE)` is
        // refused), so wait for the dropped pools' connections to go away.
        let drop = format!(r#"DROP DATABASE IF EXISTS "{db_name}""#);
        for attempt in 1..=20 {
            match admin.execute(sqlx::AssertSqlSafe(drop.clone())).await {
                Ok(_) => break,
                Err(e) if attempt == 20 => eprintln!("bench: could not drop {db_name}: {e}"),
                Err(_) => tokio::time::sleep(Duration::from_millis(250)).await,
            }
        }
        admin.close().await.ok();
    }
    if let Ok(mut conn) = redis_conn(s).await {
        let mut cursor = 0_u64;
        loop {
            let reply: Result<(u64, Vec<String>), _> = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(format!("bench-{run_id}-*"))
                .arg("COUNT")
                .arg(1000)
                .query_async(&mut conn)
                .await;
            let Ok((next, keys)) = reply else { break };
            if !keys.is_empty() {
                let _: Result<i64, _> = redis::cmd("DEL").arg(&keys).query_async(&mut conn).await;
            }
            if next == 0 {
                break;
            }
            cursor = next;
        }
    }
}

// ------------------------------------------------------------------------------- processes

fn base_vars(s: &Settings, database_url: &str, prefix: &str) -> BTreeMap<String, String> {
    [
        ("AI_AGENTS_ENVIRONMENT", "test"),
        ("AI_AGENTS_LOG_FORMAT", "json"),
        ("AI_AGENTS_LOG_LEVEL", "warn"),
        ("AI_AGENTS_DATABASE_URL", database_url),
        ("AI_AGENTS_REDIS_URL", &s.redis_url()),
        ("AI_AGENTS_QUEUE_PREFIX", prefix),
        ("AI_AGENTS_ADMIN_TOKEN", TOKEN),
        ("AI_AGENTS_ENCRYPTION_KEY", KEY),
        ("AI_AGENTS_RUN_MIGRATIONS", "false"),
        ("AI_AGENTS_SHUTDOWN_GRACE_SECS", "5"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect()
}

/// Starts a binary with exactly `vars` (plus PATH), outside the checkout (so no `.env` is read),
/// its output appended to `<state>/bench-logs/LOG.log`.
fn spawn(
    bin: &Path,
    args: &[&str],
    vars: &BTreeMap<String, String>,
    s: &Settings,
    log: &str,
) -> Res<Child> {
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log_dir(s).join(format!("{log}.log")))?;
    let child = Command::new(bin)
        .args(args)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .envs(vars)
        .current_dir(std::env::temp_dir())
        .stdin(Stdio::null())
        .stdout(file.try_clone()?)
        .stderr(file)
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", bin.display()))?;
    Ok(child)
}

/// A child that is stopped with SIGTERM (then SIGKILL) and never outlives the bench.
struct Proc {
    child: Child,
    pid: u32,
}

impl Proc {
    fn new(child: Child) -> Self {
        let pid = child.id().unwrap_or(0);
        Self { child, pid }
    }

    async fn stop(&mut self) {
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &self.pid.to_string()])
            .status();
        if tokio::time::timeout(Duration::from_secs(10), self.child.wait())
            .await
            .is_err()
        {
            let _ = self.child.start_kill();
            let _ = self.child.wait().await;
        }
    }
}

fn free_port() -> Res<u16> {
    Ok(StdTcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn which(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|p| p.join(name))
            .find(|p| p.is_file())
    })
}

fn command_line(cmd: &str, args: &[&str]) -> String {
    std::process::Command::new(cmd)
        .args(args)
        .output()
        .map(|o| {
            let mut text = String::from_utf8_lossy(&o.stdout).into_owned();
            text.push_str(&String::from_utf8_lossy(&o.stderr));
            text.lines().next().unwrap_or_default().trim().to_owned()
        })
        .unwrap_or_default()
}

// ------------------------------------------------------------------------------- HTTP

/// One HTTP/1.1 request on a fresh connection; (status, body).
async fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: Option<&str>,
) -> Res<(u16, String)> {
    let exchange = async {
        let mut stream = TcpStream::connect(addr).await?;
        let mut request = format!(
            "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nAuthorization: Bearer {TOKEN}\r\n"
        );
        if let Some(body) = body {
            let _ = write!(
                request,
                "Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            );
        } else {
            request.push_str("\r\n");
        }
        stream.write_all(request.as_bytes()).await?;
        let mut answer = Vec::new();
        stream.read_to_end(&mut answer).await?;
        Ok::<_, std::io::Error>(answer)
    };
    let answer = tokio::time::timeout(Duration::from_secs(5), exchange)
        .await
        .map_err(|_| "HTTP request timed out")??;
    let text = String::from_utf8_lossy(&answer);
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or("malformed HTTP answer")?;
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    Ok((status, body))
}

async fn wait_ready(addr: SocketAddr, limit: Duration) -> Res<Duration> {
    let started = Instant::now();
    loop {
        if let Ok((200, _)) = http(addr, "GET", "/health/ready", None).await {
            return Ok(started.elapsed());
        }
        if started.elapsed() > limit {
            return Err(format!("the API on {addr} was not ready within {limit:?}").into());
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

async fn create_tenant(addr: SocketAddr) -> Res<()> {
    let body = format!(
        r#"{{"tenant_id":"{TENANT}","name":"Bench","servicedesk_url":"https://desk.example.com","servicedesk_api_key":"bench-key","webhook_signing_secret":"bench-secret"}}"#
    );
    let (status, answer) = http(addr, "POST", "/api/v1/tenants", Some(&body)).await?;
    if status == 201 {
        Ok(())
    } else {
        Err(format!("creating the tenant answered {status}: {answer}").into())
    }
}

/// A bare hyper 1.x hello-world server on the bench's own runtime (2 worker threads on 2 cores,
/// like the API's default runtime).
async fn hello_server() -> Res<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let _ = stream.set_nodelay(true);
            tokio::spawn(async move {
                let service = service_fn(|_request| async {
                    Ok::<_, Infallible>(hyper::Response::new(Full::new(Bytes::from_static(
                        b"Hello, World!",
                    ))))
                });
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    Ok(addr)
}

// ------------------------------------------------------------------------------- wrk

#[derive(Clone, Copy)]
enum ProcessCpu {
    SelfProcess,
    Pid(u32),
}

#[derive(Debug, Default, Clone)]
struct Load {
    rps: f64,
    p50_ms: f64,
    p99_ms: f64,
    requests: u64,
    non_2xx: u64,
    socket_errors: u64,
    cpu: CpuShare,
}

impl Load {
    fn cpu_line(&self) -> String {
        self.cpu.line("server")
    }
}

/// CPU used during a measurement, in % of one core (2 cores = 200 %).
#[derive(Debug, Default, Clone, Copy)]
struct CpuShare {
    load: f64,
    server: f64,
    postgres: f64,
    redis: f64,
    machine: f64,
}

impl CpuShare {
    fn line(&self, server: &str) -> String {
        let ours = self.load + self.server + self.postgres + self.redis;
        format!(
            "CPU %: load generator {:.0}, {server} {:.0}, postgres {:.0}, redis {:.0}, other processes {:.0}, idle {:.0} (of {})",
            self.load,
            self.server,
            self.postgres,
            self.redis,
            (self.machine - ours).max(0.0),
            (cores() as f64 * 100.0 - self.machine).max(0.0),
            cores() * 100
        )
    }
}

/// CPU ticks of the processes involved and of the whole machine, at one instant.
struct CpuSnapshot {
    at: Instant,
    server: u64,
    postgres: u64,
    redis: u64,
    machine_busy: u64,
}

impl CpuSnapshot {
    fn take(server: ProcessCpu, services: &Services) -> Self {
        let server = match server {
            ProcessCpu::SelfProcess => proc_ticks("self"),
            ProcessCpu::Pid(pid) => proc_ticks(&pid.to_string()),
        };
        Self {
            at: Instant::now(),
            server,
            postgres: services
                .postgres_pids()
                .iter()
                .map(|p| proc_ticks(&p.to_string()))
                .sum(),
            redis: services
                .redis_pid()
                .map_or(0, |p| proc_ticks(&p.to_string())),
            machine_busy: machine_busy_ticks(),
        }
    }

    /// Shares since `self`, with `load` ticks used by the load generator.
    fn share_until(&self, end: &Self, load_ticks: u64) -> CpuShare {
        let secs = end.at.duration_since(self.at).as_secs_f64().max(1e-3);
        let pct = |ticks: u64| ticks as f64 / clock_ticks() / secs * 100.0;
        CpuShare {
            load: pct(load_ticks),
            server: pct(end.server.saturating_sub(self.server)),
            postgres: pct(end.postgres.saturating_sub(self.postgres)),
            redis: pct(end.redis.saturating_sub(self.redis)),
            machine: pct(end.machine_busy.saturating_sub(self.machine_busy)),
        }
    }
}

async fn wrk(
    s: &Settings,
    url: &str,
    script: Option<(&Path, &[&str])>,
    server: ProcessCpu,
    services: &Services,
) -> Res<Load> {
    let run = |seconds: u32| {
        let mut cmd = Command::new("wrk");
        cmd.arg("-t1")
            .arg(format!("-c{CONNECTIONS}"))
            .arg(format!("-d{seconds}s"))
            .arg("--latency");
        if let Some((path, _)) = script {
            cmd.arg("-s").arg(path);
        }
        cmd.arg(url);
        if let Some((_, args)) = script {
            cmd.arg("--").args(args.iter());
        }
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        cmd
    };
    // Warm-up: connections, pools, caches; the result is discarded.
    let warm = run(s.warmup).output().await?;
    if !warm.status.success() {
        return Err(format!("wrk failed: {}", String::from_utf8_lossy(&warm.stderr)).into());
    }
    let before = CpuSnapshot::take(server, services);
    let child = run(s.duration).spawn()?;
    let pid = child.id().unwrap_or(0);
    // wrk's own CPU, sampled every 50 ms while it runs (an exited, not yet reaped wrk still
    // shows its final times, so at most the last 50 ms are missed).
    let wrk_cpu = Arc::new(AtomicU64::new(0));
    let sampler = {
        let wrk_cpu = Arc::clone(&wrk_cpu);
        tokio::spawn(async move {
            loop {
                wrk_cpu.fetch_max(proc_ticks(&pid.to_string()), Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
    };
    let output = child.wait_with_output().await?;
    let after = CpuSnapshot::take(server, services);
    sampler.abort();
    let wrk_ticks = wrk_cpu.load(Ordering::Relaxed);
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    if !output.status.success() {
        return Err(format!(
            "wrk failed: {}{text}",
            String::from_utf8_lossy(&output.stderr)
        )
        .into());
    }
    let mut load = parse_wrk(&text).ok_or_else(|| format!("cannot read wrk's output:\n{text}"))?;
    load.cpu = before.share_until(&after, wrk_ticks);
    Ok(load)
}

fn parse_wrk(text: &str) -> Option<Load> {
    let mut load = Load::default();
    let mut in_distribution = false;
    for line in text.lines() {
        let line = line.trim();
        if line.starts_with("Latency Distribution") {
            in_distribution = true;
            continue;
        }
        if in_distribution {
            if let Some(rest) = line.strip_prefix("50%") {
                load.p50_ms = parse_duration_ms(rest.trim())?;
            } else if let Some(rest) = line.strip_prefix("99%") {
                load.p99_ms = parse_duration_ms(rest.trim())?;
                in_distribution = false;
            }
            continue;
        }
        if let Some(rest) = line.strip_prefix("Requests/sec:") {
            load.rps = rest.trim().parse().ok()?;
        } else if line.contains(" requests in ") {
            load.requests = line.split_whitespace().next()?.parse().ok()?;
        } else if let Some(rest) = line.strip_prefix("Non-2xx or 3xx responses:") {
            load.non_2xx = rest.trim().parse().ok()?;
        } else if let Some(rest) = line.strip_prefix("Socket errors:") {
            load.socket_errors = rest
                .split(',')
                .filter_map(|part| part.split_whitespace().last()?.parse::<u64>().ok())
                .sum();
        }
    }
    (load.rps > 0.0).then_some(load)
}

fn parse_duration_ms(text: &str) -> Option<f64> {
    let split = text.find(|c: char| c.is_ascii_alphabetic())?;
    let (number, unit) = text.split_at(split);
    let value: f64 = number.trim().parse().ok()?;
    Some(match unit {
        "us" => value / 1000.0,
        "ms" => value,
        "s" => value * 1000.0,
        "m" => value * 60_000.0,
        _ => return None,
    })
}

// ------------------------------------------------------------------------------- direct loops

async fn app_pool(s: &Settings, db: &str) -> Res<PgPool> {
    let options: PgConnectOptions = s.app_url(db).parse()?;
    Ok(PgPoolOptions::new()
        .max_connections(DB_POOL)
        .min_connections(5)
        .acquire_timeout(Duration::from_secs(10))
        .connect_with(options)
        .await?)
}

async fn redis_conn(s: &Settings) -> Res<MultiplexedConnection> {
    let client = redis::Client::open(s.redis_url())?;
    let config = AsyncConnectionConfig::new().set_response_timeout(None);
    Ok(client
        .get_multiplexed_async_connection_with_config(&config)
        .await?)
}

async fn redis_xlen(s: &Settings, key: &str) -> Res<u64> {
    let mut conn = redis_conn(s).await?;
    Ok(redis::cmd("XLEN").arg(key).query_async(&mut conn).await?)
}

/// What the API does for one POST, minus HTTP: a tenant-scoped transaction (begin,
/// `set_config`, the INSERT … RETURNING the row, commit) and the XADD of the job — from 32 tasks
/// over a pool of 20 connections and 10 multiplexed Redis connections, like the API's defaults.
async fn post_ceiling(s: &Settings, db: &str, prefix: &str, services: &Services) -> Res<Load> {
    let pool = app_pool(s, db).await?;
    let mut redis = Vec::new();
    for _ in 0..REDIS_CONNECTIONS {
        redis.push(redis_conn(s).await?);
    }
    let stream = format!("{prefix}:jobs");
    let round = |seconds: u32| {
        let deadline = Instant::now() + Duration::from_secs(u64::from(seconds));
        let mut tasks = tokio::task::JoinSet::new();
        for task in 0..CONNECTIONS as usize {
            let pool = pool.clone();
            let mut conn = redis[task % redis.len()].clone();
            let stream = stream.clone();
            tasks.spawn(async move {
                let mut latencies = Vec::new();
                while Instant::now() < deadline {
                    let started = Instant::now();
                    let id = Uuid::now_v7();
                    let mut tx = TenantTx::begin(&pool, &bench_tenant()).await?;
                    let row = sqlx::query(
                        "INSERT INTO enhancement_history (id, tenant_id, ticket_id, status, context)
                         VALUES ($1, $2, $3, 'pending', $4)
                         RETURNING id, tenant_id, ticket_id, status, context, context_gathered,
                                   llm_output, error_message, processing_time_ms, created_at,
                                   completed_at",
                    )
                    .bind(id)
                    .bind(TENANT)
                    .bind("BENCH-1")
                    .bind(serde_json::json!({"source": "direct"}))
                    .fetch_one(tx.conn())
                    .await?;
                    let _: Uuid = row.try_get("id")?;
                    tx.commit().await?;
                    let job = Job::new(JobKind::Enhancement {
                        enhancement_id: id,
                        tenant_id: TenantId::parse(TENANT)?,
                    });
                    let _: String = redis::cmd("XADD")
                        .arg(&stream)
                        .arg("*")
                        .arg("job")
                        .arg(job.encode())
                        .query_async(&mut conn)
                        .await?;
                    latencies.push(started.elapsed());
                }
                Ok::<_, BoxError>(latencies)
            });
        }
        tasks
    };
    let mut warm = round(s.warmup);
    while let Some(r) = warm.join_next().await {
        r??;
    }
    let before = CpuSnapshot::take(ProcessCpu::SelfProcess, services);
    let started = Instant::now();
    let mut tasks = round(s.duration);
    let mut latencies = Vec::new();
    while let Some(r) = tasks.join_next().await {
        latencies.extend(r??);
    }
    let elapsed = started.elapsed().as_secs_f64();
    let after = CpuSnapshot::take(ProcessCpu::SelfProcess, services);
    pool.close().await;
    latencies.sort_unstable();
    Ok(Load {
        rps: latencies.len() as f64 / elapsed,
        p50_ms: percentile(&latencies, 0.50),
        p99_ms: percentile(&latencies, 0.99),
        requests: latencies.len() as u64,
        non_2xx: 0,
        socket_errors: 0,
        cpu: before.share_until(&after, 0),
    })
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let index = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[index].as_secs_f64() * 1000.0
}

/// `n` pending rows (one INSERT) and their jobs (pipelined XADDs), before any consumer starts.
async fn seed_jobs(s: &Settings, pool: &PgPool, prefix: &str, n: usize) -> Res<Vec<Uuid>> {
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
    let stream = format!("{prefix}:jobs");
    let _: redis::Value = redis::cmd("XGROUP")
        .arg("CREATE")
        .arg(&stream)
        .arg(ai_agents::queue::GROUP)
        .arg("0")
        .arg("MKSTREAM")
        .query_async(&mut conn)
        .await?;
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
    Ok(ids)
}

/// The bench's tenant as the services' domain type.
fn bench_tenant() -> TenantId {
    TenantId::parse(TENANT).expect("TENANT is a valid tenant id")
}

async fn count_completed(pool: &PgPool, ids: &[Uuid]) -> Res<u64> {
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

struct Drain {
    seconds: f64,
    jobs: usize,
    timed_out: bool,
    cpu: CpuShare,
}

impl Drain {
    fn jobs_per_second(&self) -> f64 {
        self.jobs as f64 / self.seconds.max(1e-9)
    }
}

fn drain_limit(s: &Settings) -> Duration {
    Duration::from_secs(if s.smoke { 60 } else { 180 })
}

/// Starts a worker on a stream already holding the jobs; time from exec until the stream is
/// empty (every job acknowledged, which happens after its row is `completed`).
async fn worker_drain(
    s: &Settings,
    vars: &BTreeMap<String, String>,
    prefix: &str,
    services: &Services,
) -> Res<(Drain, Memory)> {
    let stream = format!("{prefix}:jobs");
    let mut conn = redis_conn(s).await?;
    let total: usize = redis::cmd("XLEN")
        .arg(&stream)
        .query_async(&mut conn)
        .await?;
    let before = CpuSnapshot::take(ProcessCpu::SelfProcess, services);
    let started = Instant::now();
    let mut worker = Proc::new(spawn(
        &s.bin("ai-agents-worker"),
        &[],
        vars,
        s,
        "worker-drain",
    )?);
    let before = CpuSnapshot {
        server: 0,
        ..before
    };
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
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let seconds = started.elapsed().as_secs_f64();
    let mut after = CpuSnapshot::take(ProcessCpu::Pid(worker.pid), services);
    after.server = after.server.max(server_ticks);
    let memory = memory(worker.pid)?;
    worker.stop().await;
    Ok((
        Drain {
            seconds,
            jobs: total - left,
            timed_out,
            cpu: before.share_until(&after, 0),
        },
        memory,
    ))
}

/// The raw ceiling of a drain: `concurrency` tasks, each with its own Redis connection, doing
/// XREADGROUP (COUNT 1) → one tenant-scoped transaction with the final UPDATE → XACK + XDEL in
/// one MULTI, until the stream is empty.
async fn raw_drain(
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

/// Exec of `ai-agents-api` (migrations off, a fresh port) until its first 200 from
/// `/health/ready`, in milliseconds.
/// Starts an API binary on a free loopback port and waits until it is ready.
async fn launch_api(
    s: &Settings,
    bin: &Path,
    vars: &BTreeMap<String, String>,
    label: &str,
) -> Res<(Proc, SocketAddr)> {
    let addr: SocketAddr = ([127, 0, 0, 1], free_port()?).into();
    let mut vars = vars.clone();
    vars.insert("AI_AGENTS_BIND_ADDR".into(), addr.to_string());
    let api = Proc::new(spawn(bin, &[], &vars, s, label)?);
    wait_ready(addr, Duration::from_secs(30)).await?;
    Ok((api, addr))
}

async fn startup_once(s: &Settings, vars: &BTreeMap<String, String>) -> Res<f64> {
    let port = free_port()?;
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let mut vars = vars.clone();
    vars.insert("AI_AGENTS_BIND_ADDR".into(), addr.to_string());
    let started = Instant::now();
    let mut api = Proc::new(spawn(
        &s.bin("ai-agents-api"),
        &[],
        &vars,
        s,
        "api-startup",
    )?);
    let ready = wait_ready(addr, Duration::from_secs(20)).await;
    let elapsed = started.elapsed();
    api.stop().await;
    ready?;
    Ok(elapsed.as_secs_f64() * 1000.0)
}

// ------------------------------------------------------------------------------- /proc

fn clock_ticks() -> f64 {
    static TICKS: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    *TICKS.get_or_init(|| {
        command_line("getconf", &["CLK_TCK"])
            .parse()
            .unwrap_or(100.0)
    })
}

fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// utime + stime of a process (`self` or a pid); 0 if it is gone.
fn proc_ticks(pid: &str) -> u64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0;
    };
    // Fields after the command name (which may contain spaces) start at field 3.
    let Some((_, rest)) = stat.rsplit_once(')') else {
        return 0;
    };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let field = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<u64>().ok())
            .unwrap_or(0)
    };
    field(11) + field(12)
}

fn children_of(parent: u32) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                .and_then(|stat| {
                    let (_, rest) = stat.rsplit_once(')')?;
                    rest.split_whitespace().nth(1)?.parse::<u32>().ok()
                })
                == Some(parent)
        })
        .collect()
}

fn machine_busy_ticks() -> u64 {
    let Ok(stat) = std::fs::read_to_string("/proc/stat") else {
        return 0;
    };
    let Some(cpu) = stat.lines().next() else {
        return 0;
    };
    let values: Vec<u64> = cpu
        .split_whitespace()
        .skip(1)
        .filter_map(|v| v.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal: busy = all but idle and iowait.
    values.iter().take(8).sum::<u64>()
        - values.get(3).copied().unwrap_or(0)
        - values.get(4).copied().unwrap_or(0)
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

/// Processes that used noticeable CPU over the last second (other work on a shared machine).
fn busy_processes() -> String {
    let snapshot = || -> BTreeMap<u32, (String, u64)> {
        std::fs::read_dir("/proc")
            .into_iter()
            .flatten()
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
            .filter_map(|pid| {
                let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).ok()?;
                Some((pid, (comm.trim().to_owned(), proc_ticks(&pid.to_string()))))
            })
            .collect()
    };
    let first = snapshot();
    std::thread::sleep(Duration::from_secs(1));
    let second = snapshot();
    let mut busy: Vec<(f64, String)> = second
        .iter()
        .filter_map(|(pid, (comm, ticks))| {
            let before = first.get(pid).map_or(0, |(_, t)| *t);
            let pct = ticks.saturating_sub(before) as f64 / clock_ticks() * 100.0;
            (pct >= 10.0).then(|| (pct, format!("{comm} {pct:.0}%")))
        })
        .collect();
    busy.sort_by(|a, b| b.0.total_cmp(&a.0));
    if busy.is_empty() {
        "none above 10 % of a core".into()
    } else {
        busy.into_iter()
            .map(|(_, t)| t)
            .collect::<Vec<_>>()
            .join(", ")
    }
}

#[derive(Debug, Clone, Copy)]
struct Memory {
    rss_mib: f64,
    hwm_mib: f64,
}

fn memory(pid: u32) -> Res<Memory> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .map_err(|e| format!("process {pid} is gone: {e}"))?;
    let kib = |key: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    Ok(Memory {
        rss_mib: kib("VmRSS:") / 1024.0,
        hwm_mib: kib("VmHWM:") / 1024.0,
    })
}

// ------------------------------------------------------------------------------- report

/// One figure of the table and of the JSON lines.
struct Figure {
    name: &'static str,
    value: f64,
    unit: &'static str,
    ceiling: Option<f64>,
    python: Option<f64>,
    budget: Budget,
    extra: Vec<(&'static str, f64)>,
}

#[derive(Clone, Copy)]
enum Budget {
    None,
    /// value ≥ factor × ceiling
    OfCeiling(f64),
    /// value ≥ factor × ceiling and ≥ times × Python
    OfCeilingAndPython(f64, f64),
    /// value < limit
    Below(f64),
}

impl Budget {
    fn text(self) -> String {
        match self {
            Self::None => String::new(),
            Self::OfCeiling(f) => format!(">= {f}x ceiling"),
            Self::OfCeilingAndPython(f, p) => format!(">= {f}x ceiling, >= {p}x Python"),
            Self::Below(limit) => format!("< {limit}"),
        }
    }
}

/// `f` with the CPU shares and error counts of the wrk run it comes from.
fn with_cpu(f: Figure, l: &Load) -> Figure {
    f.extra("wrk_cpu_pct", l.cpu.load)
        .extra("server_cpu_pct", l.cpu.server)
        .extra("non_2xx", l.non_2xx as f64)
        .extra("socket_errors", l.socket_errors as f64)
}

impl Figure {
    fn new(name: &'static str, value: f64, unit: &'static str) -> Self {
        Self {
            name,
            value,
            unit,
            ceiling: None,
            python: None,
            budget: Budget::None,
            extra: Vec::new(),
        }
    }
    fn ceiling(mut self, c: f64) -> Self {
        self.ceiling = Some(c);
        self
    }
    fn python(mut self, p: f64) -> Self {
        self.python = Some(p);
        self
    }
    fn budget(mut self, b: Budget) -> Self {
        self.budget = b;
        self
    }
    fn extra(mut self, key: &'static str, v: f64) -> Self {
        self.extra.push((key, v));
        self
    }
    fn ratio(&self) -> Option<f64> {
        self.ceiling.filter(|c| *c > 0.0).map(|c| self.value / c)
    }
    /// How many times the Python figure: for rates value ÷ Python, for times and sizes
    /// Python ÷ value (so above 1 is better either way).
    fn vs_python(&self) -> Option<f64> {
        let p = self.python?;
        if self.value <= 0.0 {
            return None;
        }
        Some(if self.higher_is_better() {
            self.value / p
        } else {
            p / self.value
        })
    }
    fn higher_is_better(&self) -> bool {
        self.unit.ends_with("/s")
    }
    fn met(&self) -> Option<bool> {
        match self.budget {
            Budget::None => None,
            Budget::OfCeiling(f) => self.ratio().map(|r| r >= f),
            Budget::OfCeilingAndPython(f, p) => Some(self.ratio()? >= f && self.vs_python()? >= p),
            Budget::Below(limit) => Some(self.value < limit),
        }
    }
    fn json(&self) -> String {
        let mut object = serde_json::Map::new();
        let num = |v: f64| {
            serde_json::Number::from_f64((v * 1000.0).round() / 1000.0)
                .map_or(serde_json::Value::Null, serde_json::Value::Number)
        };
        let opt = |v: Option<f64>| v.map_or(serde_json::Value::Null, num);
        object.insert("figure".into(), self.name.into());
        object.insert("value".into(), num(self.value));
        object.insert("unit".into(), self.unit.into());
        object.insert("ceiling".into(), opt(self.ceiling));
        object.insert("ratio".into(), opt(self.ratio()));
        object.insert("python".into(), opt(self.python));
        object.insert("vs_python".into(), opt(self.vs_python()));
        let budget = self.budget.text();
        object.insert(
            "budget".into(),
            if budget.is_empty() {
                serde_json::Value::Null
            } else {
                budget.into()
            },
        );
        object.insert(
            "budget_met".into(),
            self.met()
                .map_or(serde_json::Value::Null, serde_json::Value::Bool),
        );
        for (key, v) in &self.extra {
            object.insert((*key).into(), num(*v));
        }
        serde_json::Value::Object(object).to_string()
    }
}

struct Report {
    smoke: bool,
    context: Vec<(String, String)>,
    figures: Vec<Figure>,
    notes: Vec<String>,
}

impl Report {
    fn new(s: &Settings) -> Self {
        let cpu = std::fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|c| {
                c.lines()
                    .find(|l| l.starts_with("model name"))
                    .and_then(|l| l.split_once(':'))
                    .map(|(_, m)| m.trim().to_owned())
            })
            .unwrap_or_default();
        let mut report = Self {
            smoke: s.smoke,
            context: Vec::new(),
            figures: Vec::new(),
            notes: Vec::new(),
        };
        report.context(
            "mode",
            format!(
                "{} ({} s per figure after {} s warm-up, wrk -t1 -c{CONNECTIONS}, {} drain jobs)",
                if s.smoke { "smoke" } else { "full" },
                s.duration,
                s.warmup,
                s.drain_jobs
            ),
        );
        report.context("date", command_line("date", &["-u", "+%Y-%m-%d %H:%M UTC"]));
        report.context("machine", format!("{} cores, {cpu}", cores()));
        report
    }

    fn context(&mut self, key: &str, value: String) {
        self.context.push((key.to_owned(), value));
    }

    fn note(&mut self, text: String) {
        self.notes.push(text);
    }

    fn wrk_figures(
        &mut self,
        hyper: &Load,
        health: &Load,
        ready: &Load,
        post: &Load,
        direct: &Load,
    ) {
        self.figures.push(with_cpu(
            Figure::new("hyper_hello_rps", hyper.rps, "req/s"),
            hyper,
        ));
        self.figures.push(
            with_cpu(Figure::new("health_rps", health.rps, "req/s"), health)
                .ceiling(hyper.rps)
                .python(python::HEALTH_RPS)
                .budget(Budget::OfCeiling(0.7)),
        );
        self.figures
            .push(Figure::new("health_p50", health.p50_ms, "ms").ceiling(hyper.p50_ms));
        self.figures.push(
            Figure::new("health_p99", health.p99_ms, "ms")
                .ceiling(hyper.p99_ms)
                .python(python::HEALTH_P99_MS),
        );
        self.figures.push(
            // Readiness asks PostgreSQL and Redis each time: a ratio, but no budget.
            with_cpu(Figure::new("health_ready_rps", ready.rps, "req/s"), ready).ceiling(hyper.rps),
        );
        self.figures
            .push(Figure::new("health_ready_p50", ready.p50_ms, "ms").ceiling(hyper.p50_ms));
        self.figures
            .push(Figure::new("health_ready_p99", ready.p99_ms, "ms").ceiling(hyper.p99_ms));
        self.figures.push(
            with_cpu(
                Figure::new("post_enhancements_rps", post.rps, "req/s"),
                post,
            )
            .ceiling(direct.rps)
            .python(python::POST_RPS)
            .budget(Budget::OfCeilingAndPython(0.5, 10.0)),
        );
        self.figures
            .push(Figure::new("post_enhancements_p50", post.p50_ms, "ms").ceiling(direct.p50_ms));
        self.figures.push(
            Figure::new("post_enhancements_p99", post.p99_ms, "ms")
                .ceiling(direct.p99_ms)
                .python(python::POST_P99_MS),
        );
        self.note(format!("GET /health: {}", health.cpu_line()));
        self.note(format!("GET /health/ready: {}", ready.cpu_line()));
        self.note(format!("POST /api/v1/enhancements: {}", post.cpu_line()));
        self.note(format!(
            "POST ceiling (in-process loop): {}",
            direct.cpu.line("bench loop")
        ));
        for (name, load) in [
            ("hyper", hyper),
            ("/health", health),
            ("/health/ready", ready),
            ("POST", post),
        ] {
            if load.non_2xx > 0 || load.socket_errors > 0 {
                self.note(format!(
                    "WARNING {name}: {} non-2xx answers, {} socket errors",
                    load.non_2xx, load.socket_errors
                ));
            }
        }
    }

    fn musl_figures(
        &mut self,
        hyper: &Load,
        health: &Load,
        post: &Load,
        direct: &Load,
        idle: Memory,
    ) {
        self.figures.push(
            with_cpu(Figure::new("musl_health_rps", health.rps, "req/s"), health)
                .extra("p99_ms", health.p99_ms)
                .ceiling(hyper.rps)
                .python(python::HEALTH_RPS)
                .budget(Budget::OfCeiling(0.7)),
        );
        self.figures.push(
            with_cpu(
                Figure::new("musl_post_enhancements_rps", post.rps, "req/s"),
                post,
            )
            .extra("p99_ms", post.p99_ms)
            .ceiling(direct.rps)
            .python(python::POST_RPS)
            .budget(Budget::OfCeilingAndPython(0.5, 10.0)),
        );
        self.figures.push(
            Figure::new("musl_api_rss_idle", idle.rss_mib, "MiB")
                .python(python::API_RSS_MIB)
                .budget(Budget::Below(20.0))
                .extra("vmhwm_mib", idle.hwm_mib),
        );
        self.note(format!(
            "static musl API, GET /health: {}",
            health.cpu_line()
        ));
        self.note(format!("static musl API, POST: {}", post.cpu_line()));
    }

    fn startup(&mut self, samples: &[f64]) {
        let mut sorted = samples.to_vec();
        sorted.sort_by(f64::total_cmp);
        let median = if sorted.is_empty() {
            0.0
        } else if sorted.len().is_multiple_of(2) {
            (sorted[sorted.len() / 2 - 1] + sorted[sorted.len() / 2]) / 2.0
        } else {
            sorted[sorted.len() / 2]
        };
        let mut f = Figure::new("startup_to_ready", median, "ms")
            .python(python::STARTUP_MS)
            .budget(Budget::Below(100.0));
        if let (Some(min), Some(max)) = (sorted.first(), sorted.last()) {
            f = f.extra("min_ms", *min).extra("max_ms", *max);
        }
        self.figures.push(f);
    }

    fn drains(&mut self, s: &Settings, drains: &BTreeMap<(usize, bool), (Drain, u64)>) {
        for concurrency in [4_usize, 16] {
            let (Some((worker, completed)), Some((raw, _))) = (
                drains.get(&(concurrency, false)),
                drains.get(&(concurrency, true)),
            ) else {
                continue;
            };
            let name = if concurrency == 4 {
                "drain_c4"
            } else {
                "drain_c16"
            };
            self.figures.push(
                Figure::new(name, worker.jobs_per_second(), "jobs/s")
                    .ceiling(raw.jobs_per_second())
                    .python(python::DRAIN_JOBS_S)
                    .budget(Budget::OfCeilingAndPython(0.5, 10.0))
                    .extra("jobs", worker.jobs as f64)
                    .extra("seconds", worker.seconds)
                    .extra("worker_cpu_pct", worker.cpu.server)
                    .extra("ceiling_seconds", raw.seconds),
            );
            if worker.timed_out || raw.timed_out || *completed < s.drain_jobs as u64 {
                self.note(format!(
                    "WARNING drain c={concurrency}: worker {} jobs (timed out: {}), {completed} completed; raw loop timed out: {}",
                    worker.jobs, worker.timed_out, raw.timed_out
                ));
            }
        }
    }

    fn memory(
        &mut self,
        api_idle: Memory,
        api_loaded: Memory,
        worker_idle: Memory,
        worker_loaded: Option<Memory>,
    ) {
        self.figures.push(
            Figure::new("api_rss_idle", api_idle.rss_mib, "MiB")
                .python(python::API_RSS_MIB)
                .budget(Budget::Below(20.0))
                .extra("vmhwm_mib", api_idle.hwm_mib),
        );
        self.figures.push(
            Figure::new("api_rss_after_load", api_loaded.rss_mib, "MiB")
                .extra("vmhwm_mib", api_loaded.hwm_mib),
        );
        self.figures
            .push(Figure::new("api_peak_rss", api_loaded.hwm_mib, "MiB"));
        self.figures.push(
            Figure::new("worker_rss_idle", worker_idle.rss_mib, "MiB")
                .python(python::WORKER_RSS_MIB)
                .budget(Budget::Below(20.0))
                .extra("vmhwm_mib", worker_idle.hwm_mib),
        );
        if let Some(m) = worker_loaded {
            self.figures.push(
                Figure::new("worker_rss_after_drain", m.rss_mib, "MiB")
                    .extra("vmhwm_mib", m.hwm_mib),
            );
            self.figures
                .push(Figure::new("worker_peak_rss", m.hwm_mib, "MiB"));
        }
    }

    fn sizes(&mut self, s: &Settings, musl: Option<PathBuf>) {
        let mib = |p: &Path| {
            std::fs::metadata(p)
                .ok()
                .map(|m| m.len() as f64 / 1_048_576.0)
        };
        if let Some(dir) = musl {
            for (name, bin) in [
                ("api_binary_musl", "ai-agents-api"),
                ("worker_binary_musl", "ai-agents-worker"),
            ] {
                if let Some(size) = mib(&dir.join(bin)) {
                    self.figures.push(
                        Figure::new(name, size, "MiB")
                            .python(python::DEPS_MIB)
                            .budget(Budget::Below(15.0)),
                    );
                }
            }
        }
        for (name, bin) in [
            ("api_binary_glibc", "ai-agents-api"),
            ("worker_binary_glibc", "ai-agents-worker"),
        ] {
            if let Some(size) = mib(&s.bin(bin)) {
                self.figures.push(Figure::new(name, size, "MiB"));
            }
        }
    }

    fn print(&self) {
        let mut out = String::new();
        let _ = writeln!(out, "\nai-agents service benchmark");
        for (k, v) in &self.context {
            let _ = writeln!(out, "  {k:<22} {v}");
        }
        let _ = writeln!(
            out,
            "\n| {:<24} | {:>10} | {:<6} | {:>10} | {:>7} | {:>9} | {:>8} | {:<30} | {:<4} |",
            "figure", "value", "unit", "ceiling", "ratio", "Python", "vs Py", "budget", "met"
        );
        let _ = writeln!(
            out,
            "|{:-<26}|{:->12}|{:-<8}|{:->12}|{:->9}|{:->11}|{:->10}|{:-<32}|{:-<6}|",
            "", "", "", "", "", "", "", "", ""
        );
        let fmt = |v: Option<f64>, decimals: usize| {
            v.map_or_else(|| "-".to_owned(), |v| format!("{v:.decimals$}"))
        };
        for f in &self.figures {
            let decimals = if f.value >= 1000.0 {
                0
            } else if f.value >= 10.0 {
                1
            } else {
                2
            };
            let _ = writeln!(
                out,
                "| {:<24} | {:>10} | {:<6} | {:>10} | {:>7} | {:>9} | {:>8} | {:<30} | {:<4} |",
                f.name,
                fmt(Some(f.value), decimals),
                f.unit,
                fmt(f.ceiling, decimals),
                fmt(f.ratio(), 2) + if f.ratio().is_some() { "x" } else { "" },
                fmt(f.python, 1),
                fmt(f.vs_python(), 1) + if f.vs_python().is_some() { "x" } else { "" },
                f.budget.text(),
                match f.met() {
                    Some(true) => "yes",
                    Some(false) => "NO",
                    None => "",
                }
            );
        }
        let _ = writeln!(
            out,
            "\nratio = value / ceiling (for latencies above 1 means slower); vs Py = times better than the Python original (rates: value / Python; times, sizes: Python / value)."
        );
        if self.smoke {
            let _ = writeln!(out, "smoke mode: short runs, figures are indicative only.");
        }
        for note in &self.notes {
            let _ = writeln!(out, "note: {note}");
        }
        let _ = writeln!(out);
        for f in &self.figures {
            let _ = writeln!(out, "{}", f.json());
        }
        print!("{out}");
    }

    fn save(&self, path: &Path) -> Res<()> {
        let mut text = String::new();
        for f in &self.figures {
            text.push_str(&f.json());
            text.push('\n');
        }
        std::fs::write(path, text)?;
        eprintln!("bench: JSON lines also written to {}", path.display());
        Ok(())
    }
}
