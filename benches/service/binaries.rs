//! The binaries under test: built by cargo, started with exactly the environment the bench
//! gives them, their output in `<state>/bench-logs/`, stopped with SIGTERM; and the HTTP calls
//! that set a run up or wait for a start-up (reqwest: they are not what is measured).

use std::{
    collections::BTreeMap,
    net::{SocketAddr, TcpListener as StdTcpListener},
    path::{Path, PathBuf},
    process::Stdio,
    time::{Duration, Instant},
};

use tokio::process::{Child, Command};

use crate::{
    KEY, Res, TENANT, TOKEN,
    report::Report,
    settings::{Settings, has_both_binaries, progress},
};

/// Runs `cargo ARGS` in the checkout (offline query data), for the binaries under test.
///
/// Without the variables `cargo bench` sets for this process: ring's build script watches
/// `CARGO_MANIFEST_DIR`, so a build that inherits it looks changed to the next plain
/// `cargo build --release` (and the next bench to it), and each rebuilt TLS and database crates.
pub fn cargo_build(s: &Settings, args: &[&str]) -> Res<()> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut command = std::process::Command::new(cargo);
    for (name, _) in std::env::vars_os() {
        if name.to_str().is_some_and(set_by_cargo_for_the_bench) {
            command.env_remove(&name);
        }
    }
    let status = command
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

/// Whether `name` is one of the variables Cargo sets for the crate it runs (its manifest and
/// package metadata), not a setting of the user's.
fn set_by_cargo_for_the_bench(name: &str) -> bool {
    name.starts_with("CARGO_PKG_")
        || name.starts_with("CARGO_MANIFEST_")
        || matches!(
            name,
            "CARGO_CRATE_NAME"
                | "CARGO_BIN_NAME"
                | "CARGO_PRIMARY_PACKAGE"
                | "CARGO_TARGET_TMPDIR"
                | "CARGO_RUSTC_CURRENT_DIR"
        )
}

/// The static binaries: a full run builds them (a no-op when they are up to date); a smoke run
/// takes existing ones (CI's static check has just built them) or skips their figures.
pub fn musl_binaries(s: &Settings, t: Instant, report: &mut Report) -> Option<PathBuf> {
    let dir = s.static_dir();
    let present = || has_both_binaries(&dir);
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

/// The environment of the binaries: the test environment, JSON logs at `warn`, migrations off,
/// on `database_url` with the queue prefix `prefix`.
pub fn base_vars(s: &Settings, database_url: &str, prefix: &str) -> BTreeMap<String, String> {
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
pub fn spawn(
    bin: &Path,
    args: &[&str],
    vars: &BTreeMap<String, String>,
    s: &Settings,
    log: &str,
) -> Res<Child> {
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(s.log_dir().join(format!("{log}.log")))?;
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
pub struct Proc {
    child: Child,
    /// Its process id (0 if it never had one).
    pub pid: u32,
}

impl Proc {
    /// Takes over `child`.
    pub fn new(child: Child) -> Self {
        let pid = child.id().unwrap_or(0);
        Self { child, pid }
    }

    /// SIGTERM, then SIGKILL after 10 s; reaped either way.
    pub async fn stop(&mut self) {
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

/// A free port on loopback (bound, then released).
fn free_port() -> Res<u16> {
    Ok(StdTcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Starts an API binary on a free loopback port and waits until it is ready.
pub async fn launch_api(
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

/// Exec of `ai-agents-api` (migrations off, a fresh port) until its first 200 from
/// `/health/ready`, in milliseconds.
pub async fn startup_once(s: &Settings, vars: &BTreeMap<String, String>) -> Res<f64> {
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

/// An HTTP client for set-up calls and readiness probes: a new connection for each request
/// (what a client of a process that is starting up sees), never through a proxy, 5 s each.
fn client() -> Res<reqwest::Client> {
    Ok(reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .no_proxy()
        .timeout(Duration::from_secs(5))
        .build()?)
}

/// Polls `/health/ready` of the API on `addr` every millisecond until it answers 200.
async fn wait_ready(addr: SocketAddr, limit: Duration) -> Res<()> {
    let client = client()?;
    let url = format!("http://{addr}/health/ready");
    let started = Instant::now();
    loop {
        if let Ok(response) = client.get(&url).send().await
            && response.status() == reqwest::StatusCode::OK
        {
            return Ok(());
        }
        if started.elapsed() > limit {
            return Err(format!("the API on {addr} was not ready within {limit:?}").into());
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// Creates the bench's tenant through the API on `addr`.
pub async fn create_tenant(addr: SocketAddr) -> Res<()> {
    let response = client()?
        .post(format!("http://{addr}/api/v1/tenants"))
        .bearer_auth(TOKEN)
        .json(&serde_json::json!({
            "tenant_id": TENANT,
            "name": "Bench",
            "servicedesk_url": "https://desk.example.com",
            "servicedesk_api_key": "bench-key",
            "webhook_signing_secret": "bench-secret",
        }))
        .send()
        .await?;
    let status = response.status();
    if status == reqwest::StatusCode::CREATED {
        Ok(())
    } else {
        let answer = response.text().await.unwrap_or_default();
        Err(format!("creating the tenant answered {status}: {answer}").into())
    }
}
