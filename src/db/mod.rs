//! PostgreSQL: the pool, the embedded migrations and the tenant-scoped transactions.
//!
//! The pool is created lazily, so the API can start (and answer `/health/ready` with 503) while
//! the database is still down. All tenant data is reached through [`scope`], whose transactions
//! set the row-level-security context before any query runs; the repositories in [`tenants`]
//! and [`enhancements`] only accept those transactions.

pub mod enhancements;
pub mod errors;
pub mod probe;
pub mod scope;
pub mod slots;
pub mod tenants;

pub use errors::{Failure, ResultExt, classify, is_transient};

use std::{str::FromStr, time::Duration};

use secrecy::ExposeSecret;
use sqlx::{
    Acquire, ConnectOptions, Connection, PgConnection, PgPool, Postgres, Row,
    migrate::{Migrate, MigrateError, Migrator},
    pool::PoolConnection,
    postgres::{PgConnectOptions, PgPoolOptions},
};

use crate::config::DatabaseConfig;

/// The migrations in `migrations/`, compiled into the binary.
pub static MIGRATOR: Migrator = sqlx::migrate!("./migrations");

/// Errors of setting up the database; never contain the URL or its password.
#[derive(Debug, thiserror::Error)]
pub enum DbSetupError {
    /// `AI_AGENTS_DATABASE_URL` could not be parsed.
    #[error("AI_AGENTS_DATABASE_URL is not a valid PostgreSQL URL")]
    BadUrl,
    /// The server refused connections, or was still starting, for the whole connect timeout;
    /// the source is its last answer, which says why (the pool would only say it timed out).
    #[error(
        "cannot connect to PostgreSQL at {address} within {} s (AI_AGENTS_DATABASE_CONNECT_TIMEOUT_SECS)",
        .waited.as_secs()
    )]
    Unreachable {
        /// `host:port`, never the credentials.
        address: String,
        /// The connect timeout that passed.
        waited: Duration,
        /// The last attempt's error.
        #[source]
        last: sqlx::Error,
    },
    /// The server answered and said no (wrong password, unknown database, TLS refused ...):
    /// waiting would not change that.
    #[error("cannot connect to PostgreSQL at {address}")]
    Connect {
        /// `host:port`, never the credentials.
        address: String,
        /// What the server or the client library said.
        #[source]
        cause: sqlx::Error,
    },
    /// Applying or reverting migrations failed.
    #[error("migration failed")]
    Migrate(#[from] MigrateError),
}

/// Connection options of every session: from the URL, named, statements logged only at debug.
fn base_options(config: &DatabaseConfig) -> Result<PgConnectOptions, DbSetupError> {
    Ok(PgConnectOptions::from_str(config.url.expose_secret())
        .map_err(|_| DbSetupError::BadUrl)?
        .application_name("ai-agents")
        // Statement logging at INFO would flood the logs and can echo tenant data.
        .log_statements(tracing::log::LevelFilter::Debug)
        .log_slow_statements(tracing::log::LevelFilter::Warn, Duration::from_secs(1)))
}

/// Options of an application session: [`base_options`] with the session limits as startup
/// parameters (they survive `RESET ALL`, unlike a `SET` after connecting).
fn app_options(config: &DatabaseConfig) -> Result<PgConnectOptions, DbSetupError> {
    let limits = config.session_limits;
    let ms = |d: Duration| format!("{}ms", d.as_millis());
    Ok(base_options(config)?.options([
        ("statement_timeout", ms(limits.statement_timeout)),
        ("lock_timeout", ms(limits.lock_timeout)),
        (
            "idle_in_transaction_session_timeout",
            ms(limits.idle_in_transaction_timeout),
        ),
    ]))
}

/// How long a connection may have been back in the pool (and pinged by sqlx on its return)
/// before it is pinged again when handed out.
const RECENTLY_CHECKED: Duration = Duration::from_millis(100);

/// The settings of a pool that shares `AI_AGENTS_DATABASE_POOL_SIZE` ("maximum connections per
/// process") with the readiness probe's own connection ([`probe`]): one connection fewer, but
/// never none (a pool size of 1 then means two connections).
pub fn beside_the_probe(config: &DatabaseConfig) -> DatabaseConfig {
    let pool_size = config.pool_size.saturating_sub(1).max(1);
    DatabaseConfig {
        pool_size,
        min_connections: config.min_connections.min(pool_size),
        ..config.clone()
    }
}

/// Builds the application pool without connecting; connections open on first use, each with
/// the session limits of `config`.
pub fn connect_lazy(config: &DatabaseConfig) -> Result<PgPool, DbSetupError> {
    let answer_within = config.session_limits.answer_within();
    let options = PgPoolOptions::new()
        .max_connections(config.pool_size)
        .min_connections(config.min_connections)
        .acquire_timeout(config.connect_timeout)
        .idle_timeout(Some(Duration::from_secs(600)))
        // A pooled connection idle for a while is pinged before it is handed out, so after a
        // PostgreSQL restart the dead ones are replaced instead of failing the first requests
        // (contract section 9; hostile::the_first_requests_after_a_postgres_…). One back in the
        // pool for less than `RECENTLY_CHECKED` is not: sqlx pings every connection as it comes
        // back, and no restart fits in that gap (sessions ended by the server in it are met by
        // `on_a_live_connection`). Under load this saves a round trip per use (the worker's
        // claim of a batch is one call: without this, two round trips). The ping is bounded: a
        // connection stranded by a failover never answers, and sqlx would wait for it until
        // the caller's wait for a connection ran out; past the bound it is closed and another
        // one handed out.
        .test_before_acquire(false)
        .before_acquire(move |conn, meta| {
            Box::pin(async move {
                if meta.idle_for >= RECENTLY_CHECKED {
                    within(answer_within, conn.ping()).await?;
                }
                Ok(true)
            })
        });
    Ok(closing_silent_connections(options, answer_within).connect_lazy_with(app_options(config)?))
}

/// `options` with a bounded check of every connection that comes back to the pool: it must
/// answer within `limit`, outside any transaction.
///
/// - sqlx pings each returning connection and waits for that ping without a bound. A
///   connection whose caller gave up mid-statement on a frozen server, or after a failover,
///   never answers it: it would stay out of the pool, counted against its size, for as long as
///   the kernel keeps the socket (about 15 minutes), and once every connection is stuck so,
///   nobody gets one. Checked here first, within `limit`, such a connection is closed and
///   replaced.
/// - A caller that gave up while its `BEGIN` was on its way leaves the server inside a
///   transaction that sqlx does not know of (it queues a rollback only for a `BEGIN` it saw
///   answered). A statement sent bare on the pool (the worker's batch calls) would then run in
///   that transaction and never commit. The check's one query tells: outside a transaction,
///   each statement starts its own, at the same instant. Such a connection is closed (the server
///   rolls the transaction back).
fn closing_silent_connections(options: PgPoolOptions, limit: Duration) -> PgPoolOptions {
    options.after_release(move |conn, _| {
        Box::pin(async move {
            // The simple protocol: one message, so that the statement and the transaction it
            // starts outside a transaction block begin at one instant.
            let check = sqlx::raw_sql("SELECT transaction_timestamp() = statement_timestamp()")
                .fetch_one(&mut *conn);
            within(limit, check).await?.try_get::<bool, _>(0)
        })
    })
}

/// The client-side bound of one call on `pool`: the pool's own wait for a connection (while it
/// keeps retrying a server that refuses connections or is starting up, an outage its callers
/// ride out) plus `answer_within`, the wait for the call's answer
/// ([`SessionLimits::answer_within`](crate::config::SessionLimits::answer_within)).
pub fn call_within(pool: &PgPool, answer_within: Duration) -> Duration {
    pool.options().get_acquire_timeout() + answer_within
}

/// `work` (statements on the application pool) bounded on the client's side by `limit`,
/// normally [`call_within`] or [`SessionLimits::answer_within`](crate::config::SessionLimits::answer_within). A
/// frozen server cannot enforce its own `statement_timeout`, and the connections of a server
/// that failed over may neither answer nor reset: without this bound, a caller that nothing
/// else bounds (the worker) would wait for them for good. Past it, `work` is dropped (its
/// connection, if it had one, is checked on its return to the pool and closed unless it
/// answers in time outside a transaction, see [`connect_lazy`]) and the error is an I/O
/// time-out, which callers treat as the outage it is.
pub async fn within<T, E: From<sqlx::Error>>(
    limit: Duration,
    work: impl Future<Output = Result<T, E>>,
) -> Result<T, E> {
    tokio::time::timeout(limit, work).await.unwrap_or_else(|_| {
        Err(E::from(sqlx::Error::Io(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            format!(
                "the database did not answer within {} ms",
                limit.as_millis()
            ),
        ))))
    })
}

/// `call` on a connection of `pool`, and on another one while the connection it got turns out
/// to be gone ([`errors::connection_lost`]). Only for a call that is safe to send twice: a
/// transaction's start, or a fenced statement of the worker's.
///
/// The pool hands out a connection back for under [`RECENTLY_CHECKED`] without a ping, so when
/// the server has ended its sessions (`pg_terminate_backend`, a pooler or failover manager),
/// the next call on one is the first to learn it. Only the call is tried again: the pool's own
/// errors (its wait ran out, a new connection could not be opened) are returned as they are,
/// since another try would wait again for the same outage. Every pooled connection may be
/// gone: at most one try per connection, and one more on a new one. A gone connection fails at
/// once, and is closed when it comes back to the pool.
pub async fn on_a_live_connection<T, F, Fut>(pool: &PgPool, mut call: F) -> Result<T, sqlx::Error>
where
    F: FnMut(PoolConnection<Postgres>) -> Fut,
    Fut: Future<Output = Result<T, sqlx::Error>>,
{
    let tries = pool.options().get_max_connections().saturating_add(1);
    let mut tried = 0;
    loop {
        let connection = pool.acquire().await?;
        tried += 1;
        match call(connection).await {
            Err(e) if tried < tries && errors::connection_lost(&e) => {
                tracing::debug!(error = %e, "pooled connection was gone; another one");
            }
            answered => return answered,
        }
    }
}

/// A pool for applying or reverting migrations: without the statement and lock bounds, which
/// a long schema change may rightly exceed.
pub fn connect_for_migrations(config: &DatabaseConfig) -> Result<PgPool, DbSetupError> {
    Ok(PgPoolOptions::new()
        .max_connections(2)
        .min_connections(0)
        .acquire_timeout(config.connect_timeout)
        .connect_lazy_with(base_options(config)?))
}

/// Opens one connection, for the maintenance subcommands (`migrate`, `migrate revert`).
///
/// Like the pool it waits, up to the connect timeout, for a server that refuses connections
/// or is still starting up, and gives up at once on any other answer (a wrong password, an
/// unknown database). Unlike the pool, whose error only says that it timed out, the error
/// carries the server's last answer, so an operator reads why.
pub async fn connect_direct(config: &DatabaseConfig) -> Result<PgConnection, DbSetupError> {
    let options = base_options(config)?;
    let address = format!("{}:{}", options.get_host(), options.get_port());
    let deadline = tokio::time::Instant::now() + config.connect_timeout;
    let mut pause = Duration::from_millis(100);
    loop {
        let last =
            match tokio::time::timeout_at(deadline, PgConnection::connect_with(&options)).await {
                Ok(Ok(connection)) => return Ok(connection),
                Ok(Err(e)) if not_accepting_yet(&e) => e,
                Ok(Err(cause)) => return Err(DbSetupError::Connect { address, cause }),
                Err(_) => sqlx::Error::Io(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "the connection attempt got no answer",
                )),
            };
        if tokio::time::Instant::now() + pause >= deadline {
            return Err(DbSetupError::Unreachable {
                address,
                waited: config.connect_timeout,
                last,
            });
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_secs(1));
    }
}

/// Whether a failed connection attempt is worth repeating: sqlx's pool repeats the same ones
/// (sqlx-core `pool/inner.rs`, `connect`): nothing listens yet (connection refused),
/// `too_many_connections` (53300) and `cannot_connect_now` (57P03, the server is starting).
fn not_accepting_yet(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Io(io) => io.kind() == std::io::ErrorKind::ConnectionRefused,
        sqlx::Error::Database(db) => matches!(db.code().as_deref(), Some("53300" | "57P03")),
        _ => false,
    }
}

/// Applies every pending migration, on a pool (the API at start) or on one connection (the
/// `migrate` subcommand).
pub async fn migrate<'a, A>(db: A) -> Result<(), DbSetupError>
where
    A: Acquire<'a>,
    <A::Connection as std::ops::Deref>::Target: Migrate,
{
    MIGRATOR.run(db).await?;
    Ok(())
}

/// Reverts the most recently applied migration; returns its version, if there was one.
pub async fn revert_last<'a, A>(db: A) -> Result<Option<i64>, DbSetupError>
where
    A: Acquire<'a, Database = Postgres>,
{
    let mut connection = db.acquire().await.map_err(MigrateError::Execute)?;
    let applied: Vec<i64> =
        sqlx::query_scalar("SELECT version FROM _sqlx_migrations WHERE success ORDER BY version")
            .fetch_all(&mut *connection)
            .await
            .or_else(|e| match &e {
                // No migrations table: nothing was ever applied.
                sqlx::Error::Database(db) if db.code().as_deref() == Some("42P01") => Ok(vec![]),
                _ => Err(MigrateError::Execute(e)),
            })?;
    let Some(&last) = applied.last() else {
        return Ok(None);
    };
    let target = applied.iter().rev().nth(1).copied().unwrap_or(0);
    MIGRATOR.undo(&mut *connection, target).await?;
    Ok(Some(last))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn an_unanswered_call_ends_at_its_bound_as_a_transient_io_error() {
        let started = tokio::time::Instant::now();
        let never = std::future::pending::<Result<(), sqlx::Error>>();
        let error = within(Duration::from_millis(25), never)
            .await
            .expect_err("no answer");
        assert!(started.elapsed() >= Duration::from_millis(25));
        assert!(
            matches!(&error, sqlx::Error::Io(io) if io.kind() == std::io::ErrorKind::TimedOut),
            "{error:?}"
        );
        assert!(is_transient(&error), "an unanswered call is retried");
        assert!(error.to_string().contains("did not answer within 25 ms"));
    }

    #[tokio::test]
    async fn an_answered_call_passes_through() {
        let answered = within(Duration::from_secs(1), async { Ok::<_, sqlx::Error>(7) }).await;
        assert_eq!(answered.expect("answer"), 7);
    }
}
