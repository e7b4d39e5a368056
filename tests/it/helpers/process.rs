//! The binaries of this package as child processes: started with exactly the variables a test
//! gives them, signalled by name, and ended so that an instrumented build still writes its
//! coverage profile.

use std::{collections::HashMap, net::SocketAddr, process::Stdio, time::Duration};

use super::{TEST_TOKEN, closed_port, eventually, tenant_body};

/// The API binary cargo built for these tests.
pub const API: &str = env!("CARGO_BIN_EXE_ai-agents-api");
/// The worker binary cargo built for these tests.
pub const WORKER: &str = env!("CARGO_BIN_EXE_ai-agents-worker");

/// Variables a spawned binary inherits from the test process although its environment is
/// otherwise cleared: `PATH`, and `LLVM_PROFILE_FILE`, which `cargo llvm-cov` sets so that an
/// instrumented binary writes its coverage profile where the report merges it (without it, the
/// lines that run only inside the spawned binaries would count as never run).
const INHERITED_VARS: [&str; 2] = ["PATH", "LLVM_PROFILE_FILE"];

/// How long [`run`] waits for a subcommand: far beyond any of them, so that only a hang ends
/// there.
const RUN_LIMIT: Duration = Duration::from_secs(60);

/// Starts a binary of this package with `vars` only (plus [`INHERITED_VARS`]); stdout and
/// stderr captured.
pub fn command(binary: &str, vars: &HashMap<String, String>) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new(binary);
    cmd.env_clear();
    for name in INHERITED_VARS {
        if let Some(value) = std::env::var_os(name) {
            cmd.env(name, value);
        }
    }
    cmd.envs(vars)
        .current_dir(std::env::temp_dir())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    cmd
}

/// The outcome of one run of a binary to its end.
pub struct Run {
    /// Its exit code (-1 when a signal ended it).
    pub code: i32,
    /// What it printed on stdout.
    pub stdout: String,
    /// What it printed on stderr.
    pub stderr: String,
}

/// Runs `binary ARGS` with `vars` (see [`command`]) to its end.
pub async fn run(binary: &str, args: &[&str], vars: &HashMap<String, String>) -> Run {
    let output = tokio::time::timeout(RUN_LIMIT, command(binary, vars).args(args).output())
        .await
        .expect("finishes")
        .expect("runs");
    Run {
        code: output.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

/// Sends the signal `name` (`TERM`, `KILL`, `STOP`, …) to `pid`; whether `kill` succeeded.
pub fn signal(pid: u32, name: &str) -> bool {
    std::process::Command::new("kill")
        .arg(format!("-{name}"))
        .arg(pid.to_string())
        .status()
        .is_ok_and(|s| s.success())
}

/// Ends a spawned binary that is still running with SIGTERM and waits up to `limit` for it
/// (blocking: it runs in `Drop`). For helpers that own a child until their test ends: the
/// SIGKILL of `kill_on_drop` leaves no coverage profile, so the lines only that process ran
/// would count as never run. A child still alive after `limit` gets the SIGKILL when it drops.
pub fn terminate(child: &mut tokio::process::Child, limit: Duration) {
    let Ok(None) = child.try_wait() else {
        return;
    };
    let Some(pid) = child.id() else {
        return;
    };
    let signalled = signal(pid, "TERM");
    let deadline = std::time::Instant::now() + limit;
    while signalled && std::time::Instant::now() < deadline && matches!(child.try_wait(), Ok(None))
    {
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The real `ai-agents-api` binary, serving on a free port of 127.0.0.1.
pub struct ApiProcess {
    /// Base URL, e.g. `http://127.0.0.1:12345`.
    pub base: String,
    /// Its `host:port`.
    pub addr: SocketAddr,
    child: tokio::process::Child,
}

impl ApiProcess {
    /// Starts it with `vars` (a bind address on a free port is added) and waits until
    /// `/health` answers.
    pub async fn start(mut vars: HashMap<String, String>) -> Self {
        let port = closed_port();
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        vars.insert("AI_AGENTS_BIND_ADDR".into(), addr.to_string());
        let child = command(API, &vars)
            .stdout(Stdio::null())
            .spawn()
            .expect("ai-agents-api starts");
        let base = format!("http://{addr}");
        let health = format!("{base}/health");
        let client = reqwest::Client::new();
        let up = eventually(Duration::from_secs(20), || {
            let request = client.get(&health).send();
            async move { request.await.is_ok_and(|r| r.status() == 200) }
        })
        .await;
        assert!(up, "ai-agents-api did not answer /health");
        Self { base, addr, child }
    }

    /// `base` + `path`.
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// Creates a tenant through it and asserts 201.
    pub async fn create_tenant(&self, tenant_id: &str) {
        let response = reqwest::Client::new()
            .post(self.url("/api/v1/tenants"))
            .bearer_auth(TEST_TOKEN)
            .json(&tenant_body(tenant_id))
            .send()
            .await
            .expect("request");
        assert_eq!(response.status(), 201, "{:?}", response.text().await);
    }
}

impl Drop for ApiProcess {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}
