//! CPU time of processes and of the machine from Linux's `/proc`, so a measurement can say
//! which process ran out of CPU (and whether the machine did) instead of guessing.
//!
//! Figures are clock ticks (`sysconf(_SC_CLK_TCK)`, usually 100 per second); [`percent`] turns a
//! difference of ticks over a wall-clock interval into % of one core (2 cores = 200 %). Every
//! reader returns 0 or nothing for a process that is gone or a `/proc` that is absent, so a
//! figure is missing rather than the measurement failing.

use std::time::Duration;

/// Clock ticks per second of `/proc/*/stat` and `/proc/stat`.
pub fn clock_ticks() -> f64 {
    static TICKS: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    *TICKS.get_or_init(|| {
        // Asked of the C library, not of `getconf`: a program the tests would need on PATH
        // (in the Nix check too) for one number.
        nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
            .ok()
            .flatten()
            .map_or(100.0, |ticks| ticks as f64)
    })
}

/// Cores this process may use.
pub fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// The fields of `/proc/PID/stat` after the command name (which may contain spaces): the
/// process state is field 0 of the result, the parent pid field 1, utime 11, stime 12.
fn stat_fields(pid: &str) -> Option<Vec<String>> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, rest) = stat.rsplit_once(')')?;
    Some(rest.split_whitespace().map(str::to_owned).collect())
}

/// User + system CPU ticks of a process (`self` or a pid); 0 if it is gone.
pub fn proc_ticks(pid: &str) -> u64 {
    let Some(fields) = stat_fields(pid) else {
        return 0;
    };
    let field = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<u64>().ok())
            .unwrap_or(0)
    };
    field(11) + field(12)
}

/// The parent of a process.
pub fn parent_of(pid: u32) -> Option<u32> {
    stat_fields(&pid.to_string())?.get(1)?.parse().ok()
}

/// The direct children of a process (a PostgreSQL postmaster's backends and helpers).
pub fn children_of(parent: u32) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| parent_of(*pid) == Some(parent))
        .collect()
}

/// CPU ticks of the whole machine (all cores), from the first line of `/proc/stat`.
#[derive(Debug, Default, Clone, Copy)]
pub struct MachineTicks {
    /// Busy: user, nice, system, irq, softirq and steal (all but idle and iowait).
    pub busy: u64,
    /// Taken by the hypervisor for other guests: on a shared virtual machine, the part of
    /// "busy" that no process here used, and the first suspect when a figure drops.
    pub steal: u64,
}

/// The machine's ticks so far.
pub fn machine_ticks() -> MachineTicks {
    let Ok(stat) = std::fs::read_to_string("/proc/stat") else {
        return MachineTicks::default();
    };
    let Some(cpu) = stat.lines().next() else {
        return MachineTicks::default();
    };
    let values: Vec<u64> = cpu
        .split_whitespace()
        .skip(1)
        .filter_map(|v| v.parse().ok())
        .collect();
    let field = |i: usize| values.get(i).copied().unwrap_or(0);
    // user nice system idle iowait irq softirq steal: busy = all but idle and iowait.
    MachineTicks {
        busy: values.iter().take(8).sum::<u64>() - field(3) - field(4),
        steal: field(7),
    }
}

/// The 1, 5 and 15 minute load averages, as `/proc/loadavg` gives them.
pub fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

/// `ticks` used over `elapsed`, in % of one core.
pub fn percent(ticks: u64, elapsed: Duration) -> f64 {
    ticks as f64 / clock_ticks() / elapsed.as_secs_f64().max(1e-3) * 100.0
}
