//! The application's use cases, apart from the ways they are reached.
//!
//! A use case takes domain values (valid by construction) and answers with its own error, which
//! says what happened in the application's terms (an unknown tenant, an unavailable queue);
//! each entry point maps that to its own protocol. The HTTP API is the entry point today; the
//! service desk's webhooks will call the same functions.

pub mod enhancements;
