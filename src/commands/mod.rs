//! What each subcommand of the two binaries does, once [`crate::boot`] has loaded its
//! configuration and started the runtime.
//!
//! The binaries in `src/bin/` only read their arguments and boot one of these; each returns
//! what went wrong as an error, which `boot` prints as one line and turns into the exit code.

pub mod api;
pub mod worker;
