//! What the machine says about its processes: CPU ticks and memory from /proc, the cores,
//! the load and who else is busy on a shared machine.
//!
//! The plain readers of /proc (ticks of a process and of the machine, children, load, cores)
//! are the integration tests' own (`tests/it/helpers/procfs.rs`, which the scale test uses):
//! one copy, included here.

use std::{
    collections::BTreeMap,
    time::{Duration, Instant},
};

use crate::{Res, services::Services};

#[path = "../../tests/it/helpers/procfs.rs"]
mod readers;

use readers::{MachineTicks, machine_ticks, percent};
pub use readers::{children_of, cores, load_average, proc_ticks};

/// The first line a program prints (stdout, else stderr), or nothing when it cannot run.
pub fn command_line(cmd: &str, args: &[&str]) -> String {
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

/// Whose CPU counts as the server's in a measurement.
#[derive(Clone, Copy)]
pub enum ProcessCpu {
    /// This process (the hyper ceiling, the in-process loops).
    SelfProcess,
    /// A binary under test.
    Pid(u32),
}

/// CPU used during a measurement, in % of one core (2 cores = 200 %).
#[derive(Debug, Default, Clone, Copy)]
pub struct CpuShare {
    /// The load generator (wrk).
    pub load: f64,
    /// The server under load (or this process).
    pub server: f64,
    /// The postmaster and its backends.
    pub postgres: f64,
    /// The redis-server.
    pub redis: f64,
    /// The whole machine (busy, all processes, and the time stolen by the host).
    pub machine: f64,
    /// Stolen by the host for other guests (part of `machine`).
    pub steal: f64,
}

impl CpuShare {
    /// One line for the notes, naming the server `server`.
    pub fn line(&self, server: &str) -> String {
        let ours = self.load + self.server + self.postgres + self.redis;
        format!(
            "CPU %: load generator {:.0}, {server} {:.0}, postgres {:.0}, redis {:.0}, other processes {:.0}, stolen by the host {:.0}, idle {:.0} (of {})",
            self.load,
            self.server,
            self.postgres,
            self.redis,
            (self.machine - ours - self.steal).max(0.0),
            self.steal,
            (cores() as f64 * 100.0 - self.machine).max(0.0),
            cores() * 100
        )
    }
}

/// CPU ticks of the processes involved and of the whole machine, at one instant.
pub struct CpuSnapshot {
    /// When it was taken.
    pub at: Instant,
    /// Ticks of the server (see [`ProcessCpu`]).
    pub server: u64,
    /// Ticks of PostgreSQL's processes.
    pub postgres: u64,
    /// Ticks of Redis.
    pub redis: u64,
    /// Ticks of the machine.
    pub machine: MachineTicks,
}

impl CpuSnapshot {
    /// The ticks so far.
    pub fn take(server: ProcessCpu, services: &Services) -> Self {
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
            machine: machine_ticks(),
        }
    }

    /// Shares since `self`, with `load` ticks used by the load generator.
    pub fn share_until(&self, end: &Self, load_ticks: u64) -> CpuShare {
        let elapsed = end.at.duration_since(self.at);
        let pct = |ticks: u64| percent(ticks, elapsed);
        CpuShare {
            load: pct(load_ticks),
            server: pct(end.server.saturating_sub(self.server)),
            postgres: pct(end.postgres.saturating_sub(self.postgres)),
            redis: pct(end.redis.saturating_sub(self.redis)),
            machine: pct(end.machine.busy.saturating_sub(self.machine.busy)),
            steal: pct(end.machine.steal.saturating_sub(self.machine.steal)),
        }
    }
}

/// Processes that used noticeable CPU over the last second (other work on a shared machine).
pub fn busy_processes() -> String {
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
            let pct = percent(ticks.saturating_sub(before), Duration::from_secs(1));
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

/// The memory of a process.
#[derive(Debug, Clone, Copy)]
pub struct Memory {
    /// Resident now.
    pub rss_mib: f64,
    /// Resident at most so far (VmHWM).
    pub hwm_mib: f64,
}

/// The memory of process `pid`; an error when it is gone.
pub fn memory(pid: u32) -> Res<Memory> {
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
