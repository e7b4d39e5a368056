//! Tenant-scoped transactions: the only way to reach tenant data.
//!
//! Row-level security keys every policy on `app.current_tenant_id`. [`TenantTx::begin`] sets it
//! with `set_config(.., true)`, which is local to the transaction, so a pooled connection never
//! carries one tenant's context into another request. Repositories take a `&mut TenantTx` (or a
//! [`CrossTenantTx`] for the admin's read-only listings), never a bare pool or connection.

use sqlx::{PgConnection, PgPool, Postgres, Transaction};

use crate::domain::TenantId;

/// A transaction in which row-level security admits exactly one tenant's rows.
pub struct TenantTx {
    tx: Transaction<'static, Postgres>,
    tenant: TenantId,
}

impl TenantTx {
    /// Begins a transaction scoped to `tenant`.
    pub async fn begin(pool: &PgPool, tenant: &TenantId) -> Result<Self, sqlx::Error> {
        let mut tx = pool.begin().await?;
        sqlx::query!(
            "SELECT set_config('app.current_tenant_id', $1, true)",
            tenant.as_str()
        )
        .fetch_one(&mut *tx)
        .await?;
        Ok(Self {
            tx,
            tenant: tenant.clone(),
        })
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
        let mut tx = pool.begin().await?;
        sqlx::query!("SET TRANSACTION READ ONLY")
            .execute(&mut *tx)
            .await?;
        sqlx::query!("SELECT set_config('app.cross_tenant', 'on', true)")
            .fetch_one(&mut *tx)
            .await?;
        Ok(Self { tx })
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
