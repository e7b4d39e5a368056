//! Tenant-scoped transactions: the only way to reach tenant data.
//!
//! Row-level security keys every policy on `app.current_tenant_id`. [`TenantTx::begin`] sets it
//! with `set_config(.., true)`, which is local to the transaction, so a pooled connection never
//! carries one tenant's context into another request. Repositories take a `&mut TenantTx` (or a
//! [`CrossTenantTx`] for the admin's read-only listings), never a bare pool or connection.

use sqlx::{AssertSqlSafe, PgConnection, PgPool, Postgres, SqlSafeStr, Transaction};

use super::{on_a_live_connection, slots::TenantSlot};
use crate::domain::TenantId;

/// A transaction in which row-level security admits exactly one tenant's rows.
pub struct TenantTx {
    tx: Transaction<'static, Postgres>,
    tenant: TenantId,
    /// The tenant's slot ([`super::slots`]), held for the life of the transaction.
    _slot: Option<TenantSlot>,
}

impl TenantTx {
    /// Begins a transaction scoped to `tenant`.
    ///
    /// `BEGIN` and `set_config` travel as one simple-protocol message: one round trip instead
    /// of two, on every tenant query of the API and every step of a job. A simple query takes
    /// no parameters, so the tenant id is written as a literal: [`TenantId`] admits only
    /// `[a-z0-9_-]`, and `sql_literal` escapes it all the same.
    pub async fn begin(pool: &PgPool, tenant: &TenantId) -> Result<Self, sqlx::Error> {
        Self::begin_as(pool, tenant).await
    }

    /// Begins a transaction scoped to `tenant` on a connection taken under `slot`, which the
    /// transaction keeps until it ends (the API's per-tenant bulkhead).
    pub async fn begin_in_slot(
        pool: &PgPool,
        tenant: &TenantId,
        slot: TenantSlot,
    ) -> Result<Self, sqlx::Error> {
        let mut tx = Self::begin_as(pool, tenant).await?;
        tx._slot = Some(slot);
        Ok(tx)
    }

    async fn begin_as(pool: &PgPool, tenant: &TenantId) -> Result<Self, sqlx::Error> {
        let statement = format!(
            "BEGIN; SELECT set_config('app.current_tenant_id', {}, true)",
            sql_literal(tenant.as_str())
        );
        // `Transaction::begin` on an owned pooled connection is what sqlx's own
        // `Pool::begin_with` calls; it is public but `#[doc(hidden)]`, so a sqlx upgrade may
        // rename or change it (Cargo.lock pins 0.9.0). It is used because the resend in
        // `on_a_live_connection` needs the connection first and the `BEGIN` second.
        let tx = on_a_live_connection(pool, |connection| {
            Transaction::begin(
                connection,
                Some(AssertSqlSafe(statement.clone()).into_sql_str()),
            )
        })
        .await?;
        Ok(Self {
            tx,
            tenant: tenant.clone(),
            _slot: None,
        })
    }

    /// Scopes the rest of this transaction to `tenant` instead, so one transaction (one commit)
    /// can carry a batch of work of several tenants: the worker's batches. Row-level security
    /// reads the setting at each statement, so every statement still sees one tenant's rows.
    pub async fn switch_to(&mut self, tenant: &TenantId) -> Result<(), sqlx::Error> {
        if *tenant != self.tenant {
            sqlx::query("SELECT set_config('app.current_tenant_id', $1, true)")
                .bind(tenant.as_str())
                .execute(&mut *self.tx)
                .await?;
            self.tenant = tenant.clone();
        }
        Ok(())
    }

    /// The tenant this transaction is scoped to.
    pub fn tenant(&self) -> &TenantId {
        &self.tenant
    }

    /// The connection, for repository queries.
    pub fn conn(&mut self) -> &mut PgConnection {
        &mut self.tx
    }

    /// Commits; dropping without commit rolls back.
    pub async fn commit(self) -> Result<(), sqlx::Error> {
        self.tx.commit().await
    }
}

/// A read-only transaction that may read every tenant's rows (admin listings).
pub struct CrossTenantTx {
    tx: Transaction<'static, Postgres>,
}

impl CrossTenantTx {
    /// Begins a read-only cross-tenant transaction.
    pub async fn begin(pool: &PgPool) -> Result<Self, sqlx::Error> {
        // The same hidden sqlx API as `TenantTx::begin_as`, for the same reason.
        let begin = |connection| async {
            let mut tx = Transaction::begin(connection, None).await?;
            sqlx::query!("SET TRANSACTION READ ONLY")
                .execute(&mut *tx)
                .await?;
            sqlx::query!("SELECT set_config('app.cross_tenant', 'on', true)")
                .fetch_one(&mut *tx)
                .await?;
            Ok(Self { tx })
        };
        on_a_live_connection(pool, begin).await
    }

    /// The connection, for repository queries.
    pub fn conn(&mut self) -> &mut PgConnection {
        &mut self.tx
    }

    /// Ends the transaction.
    pub async fn finish(self) -> Result<(), sqlx::Error> {
        self.tx.commit().await
    }
}

/// `text` as a PostgreSQL escape-string literal (`E'...'`), whose backslash rules do not depend
/// on `standard_conforming_strings`: backslashes and quotes doubled, NULs (which no text value
/// can hold) dropped.
fn sql_literal(text: &str) -> String {
    let escaped = text
        .replace('\0', "")
        .replace('\\', "\\\\")
        .replace('\'', "''");
    format!("E'{escaped}'")
}

#[cfg(test)]
mod tests {
    use super::sql_literal;

    #[test]
    fn literals_are_quoted_and_cannot_be_escaped() {
        assert_eq!(sql_literal("acme-1"), "E'acme-1'");
        assert_eq!(sql_literal("o'brien"), "E'o''brien'");
        assert_eq!(
            sql_literal("x'); DROP TABLE t; --"),
            "E'x''); DROP TABLE t; --'"
        );
        assert_eq!(sql_literal(r"a\'b"), r"E'a\\''b'");
        assert_eq!(sql_literal("a\0b"), "E'ab'");
    }
}
