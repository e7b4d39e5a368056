//! The service benchmark: the real release binaries under load, beside raw ceilings measured in
//! the same run on the same machine.
//!
//! ```text
//! cargo bench --bench service              full run (10 s per figure after a 3 s warm-up)
//! cargo bench --bench service -- --smoke   a few seconds per figure (CI: runs, judges nothing)
//! cargo bench --bench service -- --worker  the worker's figures only (drains, memory)
//! ```
//!
//! What it does, in order (details and the figures of a real run: `docs/performance.md`):
//!
//! 1. starts its own PostgreSQL and Redis with `nix/dev-services.sh` (state in
//!    `<target>/bench-services`, ports 55632 and 56579; override with `AI_AGENTS_BENCH_DEV_DIR`,
//!    `AI_AGENTS_BENCH_PG_PORT`, `AI_AGENTS_BENCH_REDIS_PORT`; PostgreSQL binaries from
//!    `AI_AGENTS_PG_BIN` if set), and stops them at the end;
//! 2. builds the release binaries (`cargo build --release --bins --locked`, `SQLX_OFFLINE=true`;
//!    a smoke run takes the static ones instead when they exist, as in CI), creates a fresh database as the owner role, migrates it with `ai-agents-api migrate`, and
//!    runs the API and the worker as subprocesses (environment `test`, JSON logs at `warn`,
//!    the application role, a fresh queue prefix per phase);
//! 3. drives load over loopback sockets with `wrk -t1 -c32` and with in-process loops, and
//!    measures start-up, memory and binary sizes;
//! 4. prints a table and one JSON line per figure with the ratio to its ceiling, to the Python
//!    original (shared/PEER-FIGURES.md) and whether the budget holds. It reports; it asserts
//!    nothing, and exits non-zero only when it cannot measure at all.
//!
//! Only loopback traffic: every server it starts listens on 127.0.0.1.
//!
//! One module per concern: [`settings`] (the command line and the environment), [`services`]
//! (PostgreSQL and Redis), [`binaries`] (building and running the binaries under test),
//! [`wrk`] (HTTP load), [`ceilings`] (what the HTTP figures are compared with), [`drain`] (the
//! worker's drains and their raw loop), [`procfs`] (CPU and memory from /proc), [`measure`]
//! (the phases of a run, in order), and [`figure`] and [`report`] (the table and JSON lines).

mod binaries;
mod ceilings;
mod drain;
mod figure;
mod measure;
mod procfs;
mod report;
mod services;
mod settings;
mod wrk;

use std::{error::Error, process::ExitCode, time::Instant};

use ai_agents::domain::TenantId;
use uuid::Uuid;

use crate::{
    binaries::{cargo_build, musl_binaries},
    measure::{Run, measure},
    procfs::{busy_processes, load_average},
    report::Report,
    services::{Services, cleanup},
    settings::{Settings, progress},
};

/// Any error of a run: it ends the run with its message.
type BoxError = Box<dyn Error + Send + Sync>;
/// The result of a step of a run.
type Res<T> = Result<T, BoxError>;

/// The admin token of the API under test.
const TOKEN: &str = "bench-token-0123456789abcdef0123";
/// The encryption key of the API under test.
const KEY: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";
/// The tenant every request and job of a run belongs to.
const TENANT: &str = "bench";
/// Same as the services' defaults (contract §4), used by the API, the worker and the ceilings.
const DB_POOL: u32 = 20;
/// Redis connections of the API (its default) and of the POST ceiling.
const REDIS_CONNECTIONS: usize = 10;
/// Concurrent connections of wrk, and tasks of the POST ceiling.
const CONNECTIONS: u32 = 32;

/// The bench's tenant as the services' domain type.
fn bench_tenant() -> TenantId {
    TenantId::parse(TENANT).expect("TENANT is a valid tenant id")
}

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

/// The whole run: services up, binaries built, the phases measured, everything cleaned up and
/// stopped (also when a phase failed), then the report.
async fn run(s: &Settings) -> Res<()> {
    let t = Instant::now();
    wrk::ensure_installed()?;
    let mut report = Report::new(s);
    report.context("load average before", load_average());
    report.context("busy processes before", busy_processes());

    progress(t, "starting PostgreSQL and Redis (nix/dev-services.sh)");
    let services = Services::start(s)?;
    if cfg!(debug_assertions) {
        report.note(
            "the harness itself is an unoptimised build (--profile dev): its ceilings and raw \
             loops are low, and so are its ratios' denominators"
                .into(),
        );
    }
    if s.bins_are_static() {
        report.note(format!(
            "smoke run: the binaries under test are the static ones in {} (no release build)",
            s.bins.display()
        ));
    } else {
        progress(t, "building the release binaries");
        cargo_build(s, &["build", "--release", "--bins", "--locked"])?;
    }
    let musl = if s.worker_only {
        None
    } else {
        musl_binaries(s, t, &mut report)
    };

    let run_id = Uuid::new_v4().simple().to_string()[..10].to_owned();
    let db_name = format!("ai_agents_bench_{run_id}");
    let run = Run {
        s,
        t,
        id: &run_id,
        db_name: &db_name,
        services: &services,
    };
    let result = measure(&run, musl.as_deref(), &mut report).await;
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
