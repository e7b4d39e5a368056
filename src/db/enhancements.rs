//! Repository of `enhancement_history`.
//!
//! The worker's state changes are guarded by the current status in the `WHERE` clause, so a
//! redelivered job can never move a finished enhancement again: that is what makes the effect
//! exactly-once although delivery is at-least-once.

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::PgConnection;
use uuid::Uuid;

use super::scope::{CrossTenantTx, TenantTx};
use crate::domain::TicketId;

/// An enhancement as stored.
#[derive(Debug, Clone)]
pub struct EnhancementRow {
    /// Id (UUIDv7, so ids sort by creation).
    pub id: Uuid,
    /// Owning tenant.
    pub tenant_id: String,
    /// Ticket in the tenant's service desk.
    pub ticket_id: String,
    /// `pending`, `processing`, `completed` or `failed`.
    pub status: String,
    /// The client's context object.
    pub context: Value,
    /// What the job gathered.
    pub context_gathered: Option<Value>,
    /// The model's output.
    pub llm_output: Option<String>,
    /// Why it failed.
    pub error_message: Option<String>,
    /// How long processing took.
    pub processing_time_ms: Option<i32>,
    /// When the request was stored.
    pub created_at: DateTime<Utc>,
    /// When it reached a final status.
    pub completed_at: Option<DateTime<Utc>>,
}

/// Where a keyset page starts (exclusive): the last row of the previous page.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageAfter {
    /// Creation time of the last row seen.
    pub created_at: DateTime<Utc>,
    /// Id of the last row seen.
    pub id: Uuid,
}

/// Stores a new `pending` enhancement for the transaction's tenant.
pub async fn insert(
    tx: &mut TenantTx,
    id: Uuid,
    ticket: &TicketId,
    context: &Value,
) -> Result<EnhancementRow, sqlx::Error> {
    let tenant_id = tx.tenant().as_str().to_owned();
    sqlx::query_as!(
        EnhancementRow,
        r#"INSERT INTO enhancement_history (id, tenant_id, ticket_id, status, context)
           VALUES ($1, $2, $3, 'pending', $4)
           RETURNING id, tenant_id, ticket_id, status, context, context_gathered, llm_output,
                     error_message, processing_time_ms, created_at, completed_at"#,
        id,
        tenant_id,
        ticket.as_str(),
        context,
    )
    .fetch_one(tx.conn())
    .await
}

/// Deletes an enhancement (used to undo an insert whose job could not be queued).
pub async fn delete(tx: &mut TenantTx, id: Uuid) -> Result<bool, sqlx::Error> {
    let result = sqlx::query!("DELETE FROM enhancement_history WHERE id = $1", id)
        .execute(tx.conn())
        .await?;
    Ok(result.rows_affected() > 0)
}

/// One enhancement of any tenant (the admin API addresses them by id alone).
pub async fn get_any(
    tx: &mut CrossTenantTx,
    id: Uuid,
) -> Result<Option<EnhancementRow>, sqlx::Error> {
    select_one(tx.conn(), id).await
}

/// One enhancement of the transaction's tenant.
pub async fn get(tx: &mut TenantTx, id: Uuid) -> Result<Option<EnhancementRow>, sqlx::Error> {
    select_one(tx.conn(), id).await
}

async fn select_one(
    conn: &mut PgConnection,
    id: Uuid,
) -> Result<Option<EnhancementRow>, sqlx::Error> {
    sqlx::query_as!(
        EnhancementRow,
        r#"SELECT id, tenant_id, ticket_id, status, context, context_gathered, llm_output,
                  error_message, processing_time_ms, created_at, completed_at
           FROM enhancement_history WHERE id = $1"#,
        id,
    )
    .fetch_optional(conn)
    .await
}

/// A page of the transaction's tenant's enhancements, newest first.
pub async fn list_for_tenant(
    tx: &mut TenantTx,
    status: Option<&str>,
    after: Option<PageAfter>,
    limit: i64,
) -> Result<Vec<EnhancementRow>, sqlx::Error> {
    let tenant_id = tx.tenant().as_str().to_owned();
    select_page(tx.conn(), Some(&tenant_id), status, after, limit).await
}

/// A page of every tenant's enhancements, newest first.
pub async fn list_all(
    tx: &mut CrossTenantTx,
    status: Option<&str>,
    after: Option<PageAfter>,
    limit: i64,
) -> Result<Vec<EnhancementRow>, sqlx::Error> {
    select_page(tx.conn(), None, status, after, limit).await
}

async fn select_page(
    conn: &mut PgConnection,
    tenant_id: Option<&str>,
    status: Option<&str>,
    after: Option<PageAfter>,
    limit: i64,
) -> Result<Vec<EnhancementRow>, sqlx::Error> {
    sqlx::query_as!(
        EnhancementRow,
        r#"SELECT id, tenant_id, ticket_id, status, context, context_gathered, llm_output,
                  error_message, processing_time_ms, created_at, completed_at
           FROM enhancement_history
           WHERE ($1::text IS NULL OR tenant_id = $1)
             AND ($2::text IS NULL OR status = $2)
             AND ($3::timestamptz IS NULL OR (created_at, id) < ($3, $4::uuid))
           ORDER BY created_at DESC, id DESC
           LIMIT $5"#,
        tenant_id,
        status,
        after.map(|a| a.created_at),
        after.map(|a| a.id),
        limit,
    )
    .fetch_all(conn)
    .await
}

/// What [`start_processing`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartOutcome {
    /// The row is now `processing`; go ahead.
    Started,
    /// The row is already `completed` or `failed`: a redelivery, nothing to do.
    AlreadyFinished,
    /// No such row (deleted with its tenant, or never stored).
    Missing,
}

/// Moves a `pending` (or re-delivered `processing`) row to `processing`.
pub async fn start_processing(tx: &mut TenantTx, id: Uuid) -> Result<StartOutcome, sqlx::Error> {
    let status = sqlx::query_scalar!(
        r#"WITH current AS (SELECT status FROM enhancement_history WHERE id = $1 FOR UPDATE),
                moved AS (
                    UPDATE enhancement_history SET status = 'processing'
                    WHERE id = $1 AND status IN ('pending', 'processing')
                    RETURNING status)
           SELECT status AS "status!" FROM current"#,
        id,
    )
    .fetch_optional(tx.conn())
    .await?;
    Ok(match status.as_deref() {
        None => StartOutcome::Missing,
        Some("completed" | "failed") => StartOutcome::AlreadyFinished,
        Some(_) => StartOutcome::Started,
    })
}

/// Marks a `processing` row `completed`; false if it was not `processing` (already finished).
pub async fn complete(
    tx: &mut TenantTx,
    id: Uuid,
    processing_time_ms: i32,
    context_gathered: &Value,
    llm_output: Option<&str>,
) -> Result<bool, sqlx::Error> {
    let result = sqlx::query!(
        r#"UPDATE enhancement_history
           SET status = 'completed', processing_time_ms = $2, context_gathered = $3,
               llm_output = $4, completed_at = now()
           WHERE id = $1 AND status = 'processing'"#,
        id,
        processing_time_ms,
        context_gathered,
        llm_output,
    )
    .execute(tx.conn())
    .await?;
    Ok(result.rows_affected() > 0)
}

/// Marks an unfinished row `failed` with `error_message`; false if it was already final.
pub async fn fail(tx: &mut TenantTx, id: Uuid, error_message: &str) -> Result<bool, sqlx::Error> {
    let result = sqlx::query!(
        r#"UPDATE enhancement_history
           SET status = 'failed', error_message = $2, completed_at = now()
           WHERE id = $1 AND status IN ('pending', 'processing')"#,
        id,
        error_message,
    )
    .execute(tx.conn())
    .await?;
    Ok(result.rows_affected() > 0)
}
