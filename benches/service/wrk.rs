//! Load over HTTP with wrk (the same for the hyper ceiling and the API), read from its output.

use std::{
    path::Path,
    process::Stdio,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use tokio::process::Command;

use crate::{
    CONNECTIONS, Res,
    procfs::{CpuShare, CpuSnapshot, ProcessCpu, proc_ticks},
    services::Services,
    settings::Settings,
};

/// Fails, saying how to install it, when wrk is not on the PATH.
pub fn ensure_installed() -> Res<()> {
    let on_path = std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|p| p.join("wrk").is_file()));
    if on_path {
        Ok(())
    } else {
        Err("wrk is not installed (Debian: apt-get install wrk)".into())
    }
}

/// What one load run measured: wrk's figures, or the same of an in-process loop.
#[derive(Debug, Default, Clone)]
pub struct Load {
    /// Requests per second.
    pub rps: f64,
    /// Median latency.
    pub p50_ms: f64,
    /// 99th percentile latency.
    pub p99_ms: f64,
    /// Requests completed.
    pub requests: u64,
    /// Answers other than 2xx/3xx.
    pub non_2xx: u64,
    /// Connect, read, write and timeout errors.
    pub socket_errors: u64,
    /// Who used the CPU meanwhile.
    pub cpu: CpuShare,
}

impl Load {
    /// The CPU shares, the server named `server`.
    pub fn cpu_line(&self) -> String {
        self.cpu.line("server")
    }
}

/// `wrk -t1 -c32` on `url` (with a Lua `script` and its arguments): a warm-up run, discarded,
/// then the measured one, with the CPU used meanwhile by `server`, the services and wrk itself.
pub async fn wrk(
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

/// wrk's output (with `--latency`) as a [`Load`]; `None` when it measured nothing.
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

/// One of wrk's durations (`812.00us`, `1.20ms`, `2.00s`) in milliseconds.
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
