//! What the API asks of the operating system at start: enough file descriptors.
//!
//! Every open connection is a descriptor. The usual soft limit of 1,024 would let about a
//! thousand slow clients exhaust it, after which `accept` fails for everyone, the authorised
//! requests included (contract section 9). The hard limit is the ceiling an unprivileged
//! process may raise its soft limit to, so the API does that at start and logs both values.

use nix::sys::resource::{Resource, getrlimit, setrlimit};

/// Linux refuses a soft limit above `fs.nr_open` (1,048,576 by default), even when the hard
/// limit is "unlimited".
const NR_OPEN_DEFAULT: u64 = 1 << 20;

/// The open-files limit before and after [`raise_open_files_limit`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpenFiles {
    /// Soft limit found at start.
    pub before: u64,
    /// Soft limit now.
    pub soft: u64,
    /// Hard limit (never changed).
    pub hard: u64,
}

/// Raises the soft open-files limit to the hard limit (capped at `fs.nr_open`); never touches
/// the hard limit. Call it before the runtime starts its threads, so they all see it.
pub fn raise_open_files_limit() -> nix::Result<OpenFiles> {
    let (before, hard) = getrlimit(Resource::RLIMIT_NOFILE)?;
    let ceiling = std::fs::read_to_string("/proc/sys/fs/nr_open")
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
        .unwrap_or(NR_OPEN_DEFAULT);
    let target = hard.min(ceiling);
    if before < target {
        setrlimit(Resource::RLIMIT_NOFILE, target, hard)?;
    }
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE)?;
    Ok(OpenFiles { before, soft, hard })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn soft_limit_reaches_the_hard_limit_or_the_kernel_ceiling() {
        let limits = raise_open_files_limit().expect("getrlimit works");
        assert!(limits.soft >= limits.before);
        assert!(limits.soft <= limits.hard);
        // A second call finds nothing left to raise.
        let again = raise_open_files_limit().expect("getrlimit works");
        assert_eq!(again.before, again.soft);
    }
}
