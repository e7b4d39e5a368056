//! Which database errors are worth another try: the one classifier the API (status codes) and
//! the worker (retry or give up) share, so the two cannot drift apart.
//!
//! A violated constraint that means something to the caller (a tenant that exists already, an
//! enhancement of an unknown tenant) is picked out by its name with [`ResultExt::on_constraint`],
//! as realworld-axum-sqlx does, instead of each caller matching error details by hand. The
//! names are constants of the repository that owns the table.

/// What a failed database call means for the caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// The database cannot be reached or is shutting down: try again later.
    Unavailable,
    /// A server-side bound fired (`statement_timeout`, `idle_in_transaction_session_timeout`):
    /// the database is slow or a transaction stalled; try again later.
    TimedOut,
    /// Another transaction holds what this one needs (`lock_timeout`, a deadlock, a
    /// serialization failure): try again shortly.
    Contended,
    /// The value cannot be stored (a data exception): the same call fails again.
    BadData,
    /// A table or column is missing: the schema is not migrated (yet).
    SchemaMissing,
    /// Anything else: a bug or a constraint; the same call fails again.
    Other,
}

impl Failure {
    /// Whether the same call may succeed later.
    pub fn is_transient(self) -> bool {
        matches!(
            self,
            Self::Unavailable | Self::TimedOut | Self::Contended | Self::SchemaMissing
        )
    }
}

/// Classifies `e` by its kind and SQLSTATE.
pub fn classify(e: &sqlx::Error) -> Failure {
    match e {
        sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::Protocol(_)
        | sqlx::Error::WorkerCrashed => Failure::Unavailable,
        sqlx::Error::Database(db) => db.code().map_or(Failure::Other, |code| sqlstate(&code)),
        _ => Failure::Other,
    }
}

/// Classifies a SQLSTATE (PostgreSQL, Appendix A).
fn sqlstate(code: &str) -> Failure {
    match code {
        // query_canceled (statement_timeout), idle_in_transaction_session_timeout,
        // transaction_timeout (PostgreSQL 17).
        "57014" | "25P03" | "25P04" => Failure::TimedOut,
        // lock_not_available (lock_timeout), serialization_failure, deadlock_detected.
        "55P03" | "40001" | "40P01" => Failure::Contended,
        // undefined_table, undefined_column, undefined_function (the worker's batch calls): the
        // code is newer than the schema; migrations are on their way.
        "42P01" | "42703" | "42883" => Failure::SchemaMissing,
        // Connection exceptions (08), insufficient resources (53), operator intervention such
        // as admin or crash shutdown and "cannot connect now" (57P0x).
        _ if code.starts_with("08") || code.starts_with("53") || code.starts_with("57P") => {
            Failure::Unavailable
        }
        // Other transaction rollbacks (class 40).
        _ if code.starts_with("40") => Failure::Contended,
        _ if code.starts_with("22") => Failure::BadData,
        _ => Failure::Other,
    }
}

/// Whether `e`, from a call on a connection the pool handed out, says that the connection is
/// gone (the server ended the session, or the socket broke) rather than that the server refused
/// the call: such a call may be sent again on another connection
/// ([`super::on_a_live_connection`]). Not for the pool's own errors, whose I/O errors come from
/// opening a connection.
pub fn connection_lost(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Io(_) | sqlx::Error::Protocol(_) => true,
        // admin_shutdown (`pg_terminate_backend`, a fast shutdown) and crash_shutdown, which
        // the server sends to the sessions it ends.
        sqlx::Error::Database(db) => db
            .code()
            .is_some_and(|code| matches!(&*code, "57P01" | "57P02")),
        _ => false,
    }
}

/// Whether the same call may succeed later (see [`Failure::is_transient`]).
pub fn is_transient(e: &sqlx::Error) -> bool {
    classify(e).is_transient()
}

/// The constraint name of a violation (unique, foreign key, check), if `e` is one.
fn violated_constraint(e: &sqlx::Error) -> Option<&str> {
    match e {
        sqlx::Error::Database(db) => db.constraint(),
        _ => None,
    }
}

/// Turning a named constraint's violation into the caller's own error.
pub trait ResultExt<T> {
    /// `Err(meaning())` when the statement violated constraint `name`; any other error becomes
    /// `E` the usual way (`From<sqlx::Error>`), so it is still classified.
    fn on_constraint<E: From<sqlx::Error>>(
        self,
        name: &str,
        meaning: impl FnOnce() -> E,
    ) -> Result<T, E>;
}

impl<T> ResultExt<T> for Result<T, sqlx::Error> {
    fn on_constraint<E: From<sqlx::Error>>(
        self,
        name: &str,
        meaning: impl FnOnce() -> E,
    ) -> Result<T, E> {
        self.map_err(|e| {
            if violated_constraint(&e) == Some(name) {
                meaning()
            } else {
                E::from(e)
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sqlstates() {
        for (code, failure) in [
            ("57014", Failure::TimedOut),
            ("25P03", Failure::TimedOut),
            ("55P03", Failure::Contended),
            ("40P01", Failure::Contended),
            ("40001", Failure::Contended),
            ("08006", Failure::Unavailable),
            ("57P01", Failure::Unavailable),
            ("53300", Failure::Unavailable),
            ("42P01", Failure::SchemaMissing),
            ("42883", Failure::SchemaMissing),
            ("22P02", Failure::BadData),
            ("23505", Failure::Other),
        ] {
            assert_eq!(sqlstate(code), failure, "{code}");
        }
        assert_eq!(classify(&sqlx::Error::PoolTimedOut), Failure::Unavailable);
        assert!(is_transient(&sqlx::Error::PoolTimedOut));
        assert!(!is_transient(&sqlx::Error::RowNotFound));
    }

    /// Only a connection that is gone is worth the same call again at once: not a pool that
    /// waited out its time, nor a statement the server refused.
    #[test]
    fn a_lost_connection_is_told_from_a_refused_call() {
        let broken = std::io::Error::from(std::io::ErrorKind::ConnectionReset);
        assert!(connection_lost(&sqlx::Error::Io(broken)));
        assert!(connection_lost(&sqlx::Error::Protocol(
            "connection closed".into()
        )));
        assert!(!connection_lost(&sqlx::Error::PoolTimedOut));
        assert!(!connection_lost(&sqlx::Error::RowNotFound));
    }

    /// Violations of a named constraint are the tests of the API (409 for a duplicate tenant,
    /// 404 for an unknown one); every other error keeps its usual conversion.
    #[test]
    fn other_errors_than_the_named_violation_convert_as_usual() {
        #[derive(Debug, PartialEq)]
        enum Seen {
            Meaning,
            Converted,
        }
        impl From<sqlx::Error> for Seen {
            fn from(_: sqlx::Error) -> Self {
                Self::Converted
            }
        }
        let result = Err::<(), _>(sqlx::Error::RowNotFound).on_constraint("c", || Seen::Meaning);
        assert_eq!(result, Err(Seen::Converted));
        assert_eq!(
            Ok::<_, sqlx::Error>(1).on_constraint("c", || Seen::Meaning),
            Ok(1)
        );
    }
}
