//! Where a consumer runs: its host and process id, written into its name
//! (`HOST-PID-RANDOM`), and its process table (kernel boot and pid namespace), written into its
//! heartbeat, so that a worker starting up can tell at once that its predecessor has ended.
//!
//! A worker killed outright keeps its heartbeat for a few more seconds, and its jobs wait for
//! that beat to age (contract section 6: they come back "at once when that worker restarts").
//! A restarted worker usually runs where its predecessor ran: the same container keeps its
//! hostname and runs the worker as the same pid (1), and on a plain host the pid of the dead
//! process is simply gone from the process table both share. Either is taken as proof of death
//! only for a consumer whose reading connection is gone (a live worker may be reconnecting it),
//! and only at start-up, the moment of a restart: replicas that share a hostname (a fixed
//! `hostname`, host networking) and pid 1 would otherwise take each other's jobs whenever one
//! of them reconnects.

use std::path::Path;

/// This process's place, as its consumer name and heartbeat record it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    host: String,
    pid: u32,
    /// The process table this pid belongs to (`BOOT_ID/pid:[INODE]`); empty when unknown.
    table: String,
}

impl Origin {
    /// The place of this process: `HOSTNAME` (or `/etc/hostname`), its pid and its process
    /// table.
    pub fn of_this_process() -> Self {
        let host = std::env::var("HOSTNAME")
            .ok()
            .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
            .map(|h| h.trim().to_owned())
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| "worker".to_owned());
        let boot = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").ok();
        let namespace = std::fs::read_link("/proc/self/ns/pid").ok();
        let table = match (boot, namespace) {
            (Some(boot), Some(namespace)) => format!("{}/{}", boot.trim(), namespace.display()),
            _ => String::new(),
        };
        Self {
            host,
            pid: std::process::id(),
            table,
        }
    }

    /// What this process's heartbeat holds: its process table, or `1` when unknown.
    pub fn heartbeat_value(&self) -> &str {
        if self.table.is_empty() {
            "1"
        } else {
            &self.table
        }
    }

    /// A consumer name unique to this process: `HOST-PID-RANDOM`.
    pub fn consumer_name(&self) -> String {
        let suffix = uuid::Uuid::new_v4().simple().to_string();
        format!("{}-{}-{}", self.host, self.pid, &suffix[..8])
    }

    /// The host and pid recorded in consumer name `name`; `None` for names of another form.
    fn of_consumer(name: &str) -> Option<(&str, u32)> {
        let mut parts = name.rsplitn(3, '-');
        let _random = parts.next()?;
        let pid = parts.next()?.parse().ok()?;
        let host = parts.next()?;
        Some((host, pid))
    }

    /// Whether consumer `other` (not this process's), whose heartbeat holds `their_beat`, was a
    /// process of this host that has ended: it had this process's own pid (this process took
    /// its place: a restart in the same container), or it shared this process table and its pid
    /// is gone from it. Evidence only at start-up, for a consumer whose reading connection is
    /// gone (see the module doc).
    pub fn saw_end_of(&self, other: &str, their_beat: Option<&str>) -> bool {
        self.saw_end_of_in(other, their_beat, Path::new("/proc"))
    }

    fn saw_end_of_in(&self, other: &str, their_beat: Option<&str>, proc: &Path) -> bool {
        let Some((host, pid)) = Self::of_consumer(other) else {
            return false;
        };
        if host != self.host {
            return false;
        }
        let same_table = !self.table.is_empty() && their_beat == Some(self.table.as_str());
        pid == self.pid
            || (same_table && proc.join("self").exists() && !proc.join(pid.to_string()).exists())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn here() -> Origin {
        Origin {
            host: "worker-7f9c-x2".to_owned(),
            pid: 1,
            table: "boot/pid:[4026531836]".to_owned(),
        }
    }

    #[test]
    fn a_consumer_name_gives_back_its_host_and_pid() {
        let name = here().consumer_name();
        assert!(name.starts_with("worker-7f9c-x2-1-"), "{name}");
        assert_eq!(Origin::of_consumer(&name), Some(("worker-7f9c-x2", 1)));
        assert_eq!(Origin::of_consumer("no-pid-here"), None);
        assert_eq!(Origin::of_consumer("plain"), None);
    }

    #[test]
    fn a_predecessor_with_this_pid_on_this_host_has_ended() {
        let no_proc = Path::new("/nonexistent-proc");
        // A restart in the same container: a new process table, the same hostname and pid.
        assert!(here().saw_end_of_in("worker-7f9c-x2-1-0badc0de", Some("other"), no_proc));
        // Another host, or a name of another form: no evidence.
        assert!(!here().saw_end_of_in("elsewhere-1-0badc0de", Some("other"), no_proc));
        assert!(!here().saw_end_of_in("worker", None, no_proc));
    }

    #[test]
    fn a_pid_gone_from_the_shared_process_table_has_ended() {
        let proc = std::env::temp_dir().join(format!("origin-test-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(proc.join("self")).expect("self");
        std::fs::create_dir(proc.join("42")).expect("a running process");
        let table = Some("boot/pid:[4026531836]");
        let gone = "worker-7f9c-x2-43-0badc0de";
        assert!(!here().saw_end_of_in("worker-7f9c-x2-42-0badc0de", table, &proc));
        assert!(here().saw_end_of_in(gone, table, &proc));
        // Another process table (another container, another machine of the same name), or
        // one not known: its pids are not in this one.
        assert!(!here().saw_end_of_in(gone, Some("boot/pid:[4026532000]"), &proc));
        assert!(!here().saw_end_of_in(gone, Some("1"), &proc));
        // Without a process table to read, absence proves nothing.
        std::fs::remove_dir(proc.join("self")).expect("self removed");
        assert!(!here().saw_end_of_in(gone, table, &proc));
        std::fs::remove_dir_all(&proc).expect("cleaned up");
    }
}
