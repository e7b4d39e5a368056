//! The queue's Lua scripts, kept as files in `src/queue/lua/` and compiled in.
//!
//! Every state change of a stream entry that must not be half done is one script, so it runs
//! atomically in Redis and checks before it acts (is the entry still this consumer's?), which
//! also makes sending it twice harmless. Each [`Script`] is hashed once; invoking it sends
//! `EVALSHA` and loads the script when Redis has lost it (after a restart).

use std::sync::LazyLock;

use redis::Script;

/// Acknowledges deliveries and moves each to its next place, if still the consumer's.
pub(crate) static SETTLE: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("lua/settle.lua")));

/// Puts deliveries of dead or silent consumers back, one attempt further.
pub(crate) static REQUEUE: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("lua/requeue.lua")));

/// Moves due retries back into the stream.
pub(crate) static PROMOTE: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("lua/promote.lua")));

/// Moves one dead letter back into the stream.
pub(crate) static DEAD_RETRY: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("lua/dead_retry.lua")));

/// Converts a dead-letter list of earlier builds into the dead-letter stream.
pub(crate) static DEAD_FROM_LIST: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("lua/dead_from_list.lua")));
