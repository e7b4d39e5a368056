//! Which database errors are worth another try: the one classifier the API (status codes) and
//! the worker (retry or give up) share, so the two cannot drift apart.

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
        "42P01" | "42703" => Failure::SchemaMissing,
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

/// Whether the same call may succeed later (see [`Failure::is_transient`]).
pub fn is_transient(e: &sqlx::Error) -> bool {
    classify(e).is_transient()
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
            ("22P02", Failure::BadData),
            ("23505", Failure::Other),
        ] {
            assert_eq!(sqlstate(code), failure, "{code}");
        }
        assert_eq!(classify(&sqlx::Error::PoolTimedOut), Failure::Unavailable);
        assert!(is_transient(&sqlx::Error::PoolTimedOut));
        assert!(!is_transient(&sqlx::Error::RowNotFound));
    }
}
