//! The run's settings: `--smoke` or a full run, the ports and directories, the URLs.

use std::{
    path::{Path, PathBuf},
    time::Instant,
};

use crate::Res;

/// What one run measures, for how long, and where its services and binaries live.
pub struct Settings {
    /// `--smoke`: short runs, figures indicative only (CI runs this, judging nothing).
    pub smoke: bool,
    /// `--worker`: only the worker's figures (its memory, the drains and their raw loops), for
    /// tuning the worker without the HTTP phases and the static build.
    pub worker_only: bool,
    /// Seconds each load figure is measured.
    pub duration: u32,
    /// Seconds of load before each measurement, discarded.
    pub warmup: u32,
    /// Jobs of each drain.
    pub drain_jobs: usize,
    /// Start-ups whose median is the start-up figure.
    pub startup_runs: usize,
    /// The checkout.
    pub root: PathBuf,
    /// Cargo's target directory.
    pub target: PathBuf,
    /// Where the binaries under test are: the host release build, or in a smoke run the static
    /// binaries when they exist (CI's static check has just built them, and a smoke run judges
    /// nothing: no second release build of the whole graph for it).
    pub bins: PathBuf,
    /// The services' state (`nix/dev-services.sh`), the logs and the last run's JSON lines.
    pub state: PathBuf,
    /// PostgreSQL's port.
    pub pg_port: u16,
    /// Redis's port.
    pub redis_port: u16,
}

impl Settings {
    /// From the command line and the environment (see the crate documentation).
    pub fn from_args() -> Res<Self> {
        let mut smoke = false;
        let mut worker_only = false;
        for arg in std::env::args().skip(1) {
            match arg.as_str() {
                "--smoke" => smoke = true,
                "--worker" => worker_only = true,
                // cargo passes `--bench` to harness-less benches.
                "--bench" => {}
                "-h" | "--help" => {
                    println!(
                        "usage: cargo bench --bench service [-- [--smoke] [--worker]]\n\
                         env: AI_AGENTS_BENCH_DEV_DIR, AI_AGENTS_BENCH_PG_PORT, \
                         AI_AGENTS_BENCH_REDIS_PORT, AI_AGENTS_PG_BIN, CARGO_TARGET_DIR"
                    );
                    std::process::exit(0);
                }
                other if other.starts_with('-') => {
                    return Err(format!("unknown option {other} (try --smoke or --worker)").into());
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
        let static_dir = static_dir(&target);
        let bins = if smoke && has_both_binaries(&static_dir) {
            static_dir
        } else {
            target.join("release")
        };
        Ok(Self {
            smoke,
            worker_only,
            duration: if smoke { 2 } else { 10 },
            warmup: if smoke { 1 } else { 3 },
            drain_jobs: if smoke { 2_000 } else { 10_000 },
            startup_runs: 10,
            root,
            target,
            bins,
            state,
            pg_port: port("AI_AGENTS_BENCH_PG_PORT", 55632)?,
            redis_port: port("AI_AGENTS_BENCH_REDIS_PORT", 56579)?,
        })
    }

    /// The URL of database `db` as the owner role (creates databases, runs migrations).
    pub fn owner_url(&self, db: &str) -> String {
        format!(
            "postgres://ai_agents_owner:ai_agents_owner@127.0.0.1:{}/{db}",
            self.pg_port
        )
    }

    /// The URL of database `db` as the application role (what the API and the worker use).
    pub fn app_url(&self, db: &str) -> String {
        format!(
            "postgres://ai_agents_app:ai_agents_app@127.0.0.1:{}/{db}",
            self.pg_port
        )
    }

    /// The URL of the bench's Redis.
    pub fn redis_url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.redis_port)
    }

    /// The binary under test `name` ([`Settings::bins`]).
    pub fn bin(&self, name: &str) -> PathBuf {
        self.bins.join(name)
    }

    /// Where the static musl release binaries are built.
    pub fn static_dir(&self) -> PathBuf {
        static_dir(&self.target)
    }

    /// Whether the binaries under test are the static ones (a smoke run that found them).
    pub fn bins_are_static(&self) -> bool {
        self.bins == self.static_dir()
    }

    /// Where the binaries' output goes, one file per role (`api.log`, `worker-drain.log`, …).
    pub fn log_dir(&self) -> PathBuf {
        self.state.join("bench-logs")
    }
}

/// Where cargo puts the static musl release binaries under `target`.
fn static_dir(target: &Path) -> PathBuf {
    target.join("x86_64-unknown-linux-musl/release")
}

/// Whether `dir` holds both binaries.
pub fn has_both_binaries(dir: &Path) -> bool {
    ["ai-agents-api", "ai-agents-worker"]
        .iter()
        .all(|b| dir.join(b).is_file())
}

/// One line on stderr saying what the run does now, and since when it runs.
pub fn progress(started: Instant, text: &str) {
    eprintln!("[bench {:>6.1}s] {text}", started.elapsed().as_secs_f64());
}
