//! The integration tests: one binary (`cargo test --test it`), one module per area, and the
//! harness they share in [`helpers`]. One binary rather than one per file: the package and the
//! harness are compiled and linked once, and no helper is dead code in some binary that does
//! not use it.
//!
//! They talk to real PostgreSQL and Redis (README, "Tests") and run the real binaries where it
//! matters. Run one area with a filter on its module, e.g. `cargo test --test it -- health::`;
//! the soak test is `#[ignore]`d and run on its own (see [`soak`]).

// A test that unwraps fails with the error it met: that is its report.
#![allow(clippy::unwrap_used)]

mod helpers;

mod api_enhancements;
mod api_tenants;
mod cli;
mod database;
mod faults;
mod health;
mod hostile;
mod scale;
mod secrets;
mod soak;
mod worker;
