//! Where a consumer runs: its host and process id, written into its name
//! (`HOST-PID-RANDOM`), so that a worker can tell at once that another consumer was a process
//! of its own host that has ended.
//!
//! A worker killed outright keeps its heartbeat for a few more seconds, and its jobs wait for
//! that beat to age (contract section 6: they come back "at once when that worker restarts").
//! A restarted worker usually runs where its predecessor ran: the same container keeps its
//! hostname and runs the worker as the same pid (1), and on a plain host the pid of the dead
//! process is simply gone. Either proves the predecessor dead, where a missing reading
//! connection alone does not (a live worker may be reconnecting it).

use std::path::Path;

/// This process's place, as its consumer name records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    host: String,
    pid: u32,
}

impl Origin {
    /// The place of this process: `HOSTNAME` (or `/etc/hostname`) and its pid.
    pub fn of_this_process() -> Self {
        let host = std::env::var("HOSTNAME")
            .ok()
            .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
            .map(|h| h.trim().to_owned())
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| "worker".to_owned());
        Self {
            host,
            pid: std::process::id(),
        }
    }

    /// A consumer name unique to this process: `HOST-PID-RANDOM`.
    pub fn consumer_name(&self) -> String {
        let suffix = uuid::Uuid::new_v4().simple().to_string();
        format!("{}-{}-{}", self.host, self.pid, &suffix[..8])
    }

    /// The place recorded in consumer name `name`; `None` for names of another form.
    pub fn of_consumer(name: &str) -> Option<Self> {
        let mut parts = name.rsplitn(3, '-');
        let _random = parts.next()?;
        let pid = parts.next()?.parse().ok()?;
        let host = parts.next()?.to_owned();
        Some(Self { host, pid })
    }

    /// Whether consumer `other` (not this process's) was a process of this host that has
    /// ended: it had this process's own pid (this process took its place: a restart in the
    /// same container), or its pid is gone from this host's process table.
    ///
    /// Only evidence for a consumer whose reading connection is gone: workers of different
    /// containers may share a hostname and a pid, and a live one is then told apart by its
    /// connection. Without a readable `/proc`, no pid counts as gone.
    pub fn saw_end_of(&self, other: &str) -> bool {
        self.saw_end_of_in(other, Path::new("/proc"))
    }

    fn saw_end_of_in(&self, other: &str, proc: &Path) -> bool {
        let Some(theirs) = Self::of_consumer(other) else {
            return false;
        };
        if theirs.host != self.host {
            return false;
        }
        theirs.pid == self.pid
            || (proc.join("self").exists() && !proc.join(theirs.pid.to_string()).exists())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn here() -> Origin {
        Origin {
            host: "worker-7f9c-x2".to_owned(),
            pid: 1,
        }
    }

    #[test]
    fn a_consumer_name_gives_back_its_host_and_pid() {
        let origin = here();
        let name = origin.consumer_name();
        assert!(name.starts_with("worker-7f9c-x2-1-"), "{name}");
        assert_eq!(Origin::of_consumer(&name), Some(origin));
        assert_eq!(Origin::of_consumer("no-pid-here"), None);
        assert_eq!(Origin::of_consumer("plain"), None);
    }

    #[test]
    fn a_predecessor_with_this_pid_on_this_host_has_ended() {
        let no_proc = Path::new("/nonexistent-proc");
        assert!(here().saw_end_of_in("worker-7f9c-x2-1-0badc0de", no_proc));
        // Another host, or a name of another form: no evidence.
        assert!(!here().saw_end_of_in("elsewhere-1-0badc0de", no_proc));
        assert!(!here().saw_end_of_in("worker", no_proc));
    }

    #[test]
    fn a_pid_gone_from_this_host_has_ended_one_still_running_has_not() {
        let proc = std::env::temp_dir().join(format!("origin-test-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(proc.join("self")).expect("self");
        std::fs::create_dir(proc.join("42")).expect("a running process");
        assert!(!here().saw_end_of_in("worker-7f9c-x2-42-0badc0de", &proc));
        assert!(here().saw_end_of_in("worker-7f9c-x2-43-0badc0de", &proc));
        // Without a process table to read, absence proves nothing.
        std::fs::remove_dir(proc.join("self")).expect("self removed");
        assert!(!here().saw_end_of_in("worker-7f9c-x2-43-0badc0de", &proc));
        std::fs::remove_dir_all(&proc).expect("cleaned up");
    }
}
