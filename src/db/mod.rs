//! PostgreSQL: the pool, the embedded migrations and the tenant-scoped transactions.
//!
//! The pool is created lazily, so the API can start (and answer `/health/ready` with 503) while
//! the database is still down. All tenant data is reached through [`scope`], whose transactions
//! set the row-level-security context before any query runs; the repositories in [`tenants`]
//! and [`enhancements`] only accept those transactions.

pub mod enhancements;
pub mod scope;
pub mod tenants;

use std::{str::FromStr, time::Duration};

use secrecy::ExposeSecret;
use sqlx::{
    ConnectOptions, PgPool,
    migrate::{MigrateError, Migrator},
    postgres::{PgConnectOptions, PgPoolOptions},
};

use crate::config::DatabaseConfig;

/// The migrations in `migrations/`, compiled into the binary.
pub static MIGRATOR: Migrator = sqlx::migrate!("./migrations");

/// Errors of setting up the database; never contain the URL.
#[derive(Debug, thiserror::Error)]
pub enum DbSetupError {
    /// `AI_AGENTS_DATABASE_URL` could not be parsed.
    #[error("AI_AGENTS_DATABASE_URL is not a valid PostgreSQL URL")]
    BadUrl,
    /// Applying or reverting migrations failed.
    #[error("migration failed")]
    Migrate(#[from] MigrateError),
}

/// Builds the pool without connecting; connections open on first use.
pub fn connect_lazy(config: &DatabaseConfig) -> Result<PgPool, DbSetupError> {
    let options = PgConnectOptions::from_str(config.url.expose_secret())
        .map_err(|_| DbSetupError::BadUrl)?
        .application_name("ai-agents")
        // Statement logging at INFO would flood the logs and can echo tenant data.
        .log_statements(tracing::log::LevelFilter::Debug)
        .log_slow_statements(tracing::log::LevelFilter::Warn, Duration::from_secs(1));
    Ok(PgPoolOptions::new()
        .max_connections(config.pool_size)
        .min_connections(config.min_connections)
        .acquire_timeout(config.connect_timeout)
        .idle_timeout(Some(Duration::from_secs(600)))
        .connect_lazy_with(options))
}

/// Applies every pending migration.
pub async fn migrate(pool: &PgPool) -> Result<(), DbSetupError> {
    MIGRATOR.run(pool).await?;
    Ok(())
}

/// Reverts the most recently applied migration; returns its version, if there was one.
pub async fn revert_last(pool: &PgPool) -> Result<Option<i64>, DbSetupError> {
    let applied: Vec<i64> =
        sqlx::query_scalar("SELECT version FROM _sqlx_migrations WHERE success ORDER BY version")
            .fetch_all(pool)
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
    MIGRATOR.undo(pool, target).await?;
    Ok(Some(last))
}

/// Whether the database answers, bounded by `limit`.
pub async fn ping(pool: &PgPool, limit: Duration) -> bool {
    matches!(
        tokio::time::timeout(limit, sqlx::query("SELECT 1").execute(pool)).await,
        Ok(Ok(_))
    )
}
