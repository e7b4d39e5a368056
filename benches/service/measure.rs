//! The phases of one run, in order: a migrated database; the HTTP figures of the API beside
//! their ceilings; the same for the static musl API (when it was built); start-up; the
//! worker's idle memory and its drains beside the raw loop. Each phase adds its figures and
//! notes to the report, in the order the table shows them.

use std::{
    collections::BTreeMap,
    path::Path,
    time::{Duration, Instant},
};

use crate::{
    Res, TENANT, TOKEN,
    binaries::{Proc, base_vars, create_tenant, launch_api, spawn, startup_once},
    ceilings::{hello_server, post_ceiling},
    drain::{count_completed, queue_jobs, raw_drain, seed_rows, worker_drain},
    procfs::{Memory, ProcessCpu, command_line, memory},
    report::Report,
    services::{Services, app_pool, create_database, redis_xlen},
    settings::{Settings, progress},
    wrk::{Load, wrk},
};

/// What every phase of a run shares.
pub struct Run<'a> {
    /// The settings.
    pub s: &'a Settings,
    /// When the run started (for the progress lines).
    pub t: Instant,
    /// The run's id: its database and its Redis keys are named after it.
    pub id: &'a str,
    /// The run's database.
    pub db_name: &'a str,
    /// PostgreSQL and Redis.
    pub services: &'a Services,
}

impl Run<'_> {
    /// A queue prefix of this run, for one phase.
    fn prefix(&self, phase: &str) -> String {
        format!("bench-{}-{phase}", self.id)
    }

    /// The environment of the binaries with the queue prefix of `phase`.
    fn vars_for(&self, vars: &BTreeMap<String, String>, phase: &str) -> BTreeMap<String, String> {
        let mut vars = vars.clone();
        vars.insert("AI_AGENTS_QUEUE_PREFIX".into(), self.prefix(phase));
        vars
    }

    /// wrk on `path` of the API on `addr`, whose CPU is that of process `pid`; `post` drives
    /// `POST /api/v1/enhancements` with the bench's Lua script.
    async fn wrk_api(&self, addr: &str, path: &str, pid: u32, post: bool) -> Res<Load> {
        let script = self.s.root.join("benches/post_enhancement.lua");
        let script: Option<(&Path, &[&str])> = post.then_some((&script, &[TOKEN, TENANT]));
        wrk(
            self.s,
            &format!("http://{addr}{path}"),
            script,
            ProcessCpu::Pid(pid),
            self.services,
        )
        .await
    }
}

/// Measures everything but the binaries' sizes, into `report`.
pub async fn measure(run: &Run<'_>, musl: Option<&Path>, report: &mut Report) -> Res<()> {
    let vars = prepare(run, report).await?;
    if run.s.worker_only {
        // The drains' tenant, made through the API as the HTTP phase would.
        let (mut api, addr) = launch_api(run.s, &run.s.bin("ai-agents-api"), &vars, "api").await?;
        create_tenant(addr).await?;
        api.stop().await;
        let (idle, loaded) = worker_figures(run, &vars, report).await?;
        report.worker_memory(idle, loaded);
        return Ok(());
    }
    let http = http_figures(run, &vars, report).await?;
    if let Some(dir) = musl {
        musl_figures(run, dir, &vars, &http, report).await?;
    }
    startup_figure(run, &vars, report).await?;
    let (worker_idle, worker_loaded) = worker_figures(run, &vars, report).await?;
    report.memory(http.api_idle, http.api_loaded, worker_idle, worker_loaded);
    Ok(())
}

/// A fresh database, created by the owner and migrated by the binary; the binaries' variables.
async fn prepare(run: &Run<'_>, report: &mut Report) -> Res<BTreeMap<String, String>> {
    let s = run.s;
    report.context("PostgreSQL", create_database(s, run.db_name).await?);
    report.context("Redis", command_line("redis-server", &["--version"]));
    report.context("wrk", command_line("wrk", &["--version"]));
    let vars = base_vars(s, &s.app_url(run.db_name), &run.prefix("api"));
    let mut migrate_vars = vars.clone();
    migrate_vars.insert("AI_AGENTS_DATABASE_URL".into(), s.owner_url(run.db_name));
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
            s.log_dir().display()
        )
        .into());
    }
    Ok(vars)
}

/// What the HTTP phase leaves for the later ones.
struct Http {
    /// The hyper ceiling of `GET /health`.
    hyper: Load,
    /// The in-process ceiling of the POST.
    post_ceiling: Load,
    /// The API's memory before any load.
    api_idle: Memory,
    /// The API's memory after the loads.
    api_loaded: Memory,
}

/// The hyper ceiling, then the API under the same wrk (`/health`, `/health/ready`, the POST),
/// then the POST's in-process ceiling.
async fn http_figures(
    run: &Run<'_>,
    vars: &BTreeMap<String, String>,
    report: &mut Report,
) -> Res<Http> {
    let (s, t) = (run.s, run.t);
    progress(t, "hyper hello-world ceiling");
    let hello = hello_server().await?;
    let hyper = wrk(
        s,
        &format!("http://{hello}/"),
        None,
        ProcessCpu::SelfProcess,
        run.services,
    )
    .await?;
    report.note(format!("hyper ceiling: {}", hyper.cpu_line()));

    progress(t, "API: start, idle memory");
    let (mut api, api_addr) = launch_api(s, &s.bin("ai-agents-api"), vars, "api").await?;
    create_tenant(api_addr).await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let api_idle = memory(api.pid)?;
    let addr = api_addr.to_string();

    progress(t, "API: GET /health");
    let health = run.wrk_api(&addr, "/health", api.pid, false).await?;
    progress(t, "API: GET /health/ready");
    let ready = run.wrk_api(&addr, "/health/ready", api.pid, false).await?;
    progress(t, "API: POST /api/v1/enhancements (no worker running)");
    let post = run
        .wrk_api(&addr, "/api/v1/enhancements", api.pid, true)
        .await?;
    let api_loaded = memory(api.pid)?;
    let queued = redis_xlen(s, &format!("{}:jobs", run.prefix("api")))
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
    let post_ceiling = post_ceiling(s, run.db_name, &run.prefix("direct"), run.services).await?;

    report.wrk_figures(&hyper, &health, &ready, &post, &post_ceiling);
    Ok(Http {
        hyper,
        post_ceiling,
        api_idle,
        api_loaded,
    })
}

/// The static musl API (what the images ship) in `dir`, under the same loads.
async fn musl_figures(
    run: &Run<'_>,
    dir: &Path,
    vars: &BTreeMap<String, String>,
    http: &Http,
    report: &mut Report,
) -> Res<()> {
    progress(
        run.t,
        "static musl API: GET /health, POST /api/v1/enhancements",
    );
    let vars = run.vars_for(vars, "musl");
    let (mut api, addr) = launch_api(run.s, &dir.join("ai-agents-api"), &vars, "api-musl").await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let idle = memory(api.pid)?;
    let addr = addr.to_string();
    let health = run.wrk_api(&addr, "/health", api.pid, false).await?;
    let post = run
        .wrk_api(&addr, "/api/v1/enhancements", api.pid, true)
        .await?;
    api.stop().await;
    report.musl_figures(&http.hyper, &health, &post, &http.post_ceiling, idle);
    Ok(())
}

/// Exec to the first 200 from `/health/ready`, a few times.
async fn startup_figure(
    run: &Run<'_>,
    vars: &BTreeMap<String, String>,
    report: &mut Report,
) -> Res<()> {
    progress(run.t, "start-up: exec to first 200 from /health/ready");
    let mut startups = Vec::new();
    for _ in 0..run.s.startup_runs {
        startups.push(startup_once(run.s, vars).await?);
    }
    report.startup(&startups);
    Ok(())
}

/// The worker's idle memory, then drains at concurrency 4 and 16 beside the raw loop; the
/// worker's memory idle and after its last drain.
async fn worker_figures(
    run: &Run<'_>,
    vars: &BTreeMap<String, String>,
    report: &mut Report,
) -> Res<(Memory, Option<Memory>)> {
    let s = run.s;
    progress(run.t, "worker: idle memory");
    let mut worker = Proc::new(spawn(
        &s.bin("ai-agents-worker"),
        &[],
        &run.vars_for(vars, "idle"),
        s,
        "worker-idle",
    )?);
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let worker_idle = memory(worker.pid)?;
    worker.stop().await;

    let pool = app_pool(s, run.db_name).await?;
    let mut drains = BTreeMap::new();
    let mut worker_loaded = None;
    let mut start_ups = Vec::new();
    for concurrency in [4_usize, 16] {
        for raw in [false, true] {
            let label = if raw { "raw loop" } else { "worker" };
            progress(
                run.t,
                &format!(
                    "drain: {} jobs, {label}, concurrency {concurrency}",
                    s.drain_jobs
                ),
            );
            let prefix = run.prefix(&format!(
                "drain-{}-{concurrency}",
                if raw { "raw" } else { "w" }
            ));
            let ids = seed_rows(s, &pool, &prefix, s.drain_jobs).await?;
            let drain = if raw {
                queue_jobs(s, &prefix, &ids).await?;
                raw_drain(s, &pool, &prefix, concurrency, run.services).await?
            } else {
                let mut v = vars.clone();
                v.insert("AI_AGENTS_QUEUE_PREFIX".into(), prefix.clone());
                v.insert(
                    "AI_AGENTS_WORKER_CONCURRENCY".into(),
                    concurrency.to_string(),
                );
                let (drain, mem, start_up) =
                    worker_drain(s, &v, &prefix, &ids, run.services).await?;
                worker_loaded = Some(mem);
                start_ups.push(start_up);
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
    report.worker_startup(
        &start_ups
            .iter()
            .map(|d| d.as_secs_f64() * 1000.0)
            .collect::<Vec<_>>(),
    );
    report.drains(s, &drains);
    Ok((worker_idle, worker_loaded))
}
