//! Repository of `enhancement_history`.
//!
//! The worker's state changes are guarded by the current status and claim in the `WHERE`
//! clause: a redelivered job can never move a finished enhancement again, and only the delivery
//! that holds a row's claim can record its outcome. That is what makes the effect exactly-once
//! although delivery is at-least-once. The worker's claim and record take a batch of rows of
//! any tenants each (arrays bound to the calls of migration `20261201000001_worker_batch_calls`),
//! so a batch costs one round trip, not one per job or per statement.

use std::{
    collections::{BTreeMap, HashMap},
    time::Duration,
};

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use super::{
    on_a_live_connection,
    scope::{CrossTenantTx, TenantTx},
};
use crate::domain::{EnhancementStatus, TenantId, TicketId};

/// An enhancement as stored.
///
/// `S` is the type of its status: [`EnhancementStatus`] everywhere outside this module; `String`
/// only for the moment between the query macros, which read the column as text, and
/// `EnhancementRow::typed`, which parses it.
#[derive(Debug, Clone)]
pub struct EnhancementRow<S = EnhancementStatus> {
    /// Id (UUIDv7, so ids sort by creation).
    pub id: Uuid,
    /// Owning tenant.
    pub tenant_id: String,
    /// Ticket in the tenant's service desk.
    pub ticket_id: String,
    /// Where it is in its lifecycle.
    pub status: S,
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

/// A row as the query macros read it, status still text.
type StoredRow = EnhancementRow<String>;

impl StoredRow {
    /// The row with its status parsed; an unknown stored status is a decoding error (a bug or a
    /// newer schema), never silently taken for another one.
    fn typed(self) -> Result<EnhancementRow, sqlx::Error> {
        Ok(EnhancementRow {
            status: decode_status(&self.status)?,
            id: self.id,
            tenant_id: self.tenant_id,
            ticket_id: self.ticket_id,
            context: self.context,
            context_gathered: self.context_gathered,
            llm_output: self.llm_output,
            error_message: self.error_message,
            processing_time_ms: self.processing_time_ms,
            created_at: self.created_at,
            completed_at: self.completed_at,
        })
    }
}

/// `query_as!` of a `SELECT` of whole rows: the column list, then `$rest` (`FROM …`), so the
/// columns of a row are written once. sqlx joins the literals before it looks up the statement's
/// offline data, so the joined text must stay exactly that of `.sqlx/`.
macro_rules! select_rows {
    ($rest:literal $(, $arg:expr)* $(,)?) => {
        sqlx::query_as!(
            StoredRow,
            "SELECT id, tenant_id, ticket_id, status, context, context_gathered, llm_output,\n"
                + "                  error_message, processing_time_ms, created_at, completed_at\n"
                + "           "
                + $rest
            $(, $arg)*
        )
    };
}

/// Parses a `status` value read from the database.
fn decode_status(raw: &str) -> Result<EnhancementStatus, sqlx::Error> {
    EnhancementStatus::parse(raw).map_err(|e| sqlx::Error::ColumnDecode {
        index: "status".to_owned(),
        source: Box::new(e),
    })
}

/// Where a keyset page starts (exclusive): the last row of the previous page.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageAfter {
    /// Creation time of the last row seen.
    pub created_at: DateTime<Utc>,
    /// Id of the last row seen.
    pub id: Uuid,
}

/// The foreign key whose violation means "unknown tenant" (an insert for a tenant that does not
/// exist).
pub const TENANT_FK: &str = "enhancement_history_tenant_id_fkey";

/// Stores a new `pending` enhancement for the transaction's tenant.
pub async fn insert(
    tx: &mut TenantTx,
    id: Uuid,
    ticket: &TicketId,
    context: &Value,
) -> Result<EnhancementRow, sqlx::Error> {
    let tenant_id = tx.tenant().as_str().to_owned();
    sqlx::query_as!(
        StoredRow,
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
    .await?
    .typed()
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
    select_rows!("FROM enhancement_history WHERE id = $1", id)
        .fetch_optional(conn)
        .await?
        .map(StoredRow::typed)
        .transpose()
}

/// A page of the transaction's tenant's enhancements, newest first.
pub async fn list_for_tenant(
    tx: &mut TenantTx,
    status: Option<EnhancementStatus>,
    after: Option<PageAfter>,
    limit: i64,
) -> Result<Vec<EnhancementRow>, sqlx::Error> {
    let tenant_id = tx.tenant().as_str().to_owned();
    select_page(tx.conn(), Some(&tenant_id), status, after, limit).await
}

/// A page of every tenant's enhancements, newest first.
pub async fn list_all(
    tx: &mut CrossTenantTx,
    status: Option<EnhancementStatus>,
    after: Option<PageAfter>,
    limit: i64,
) -> Result<Vec<EnhancementRow>, sqlx::Error> {
    select_page(tx.conn(), None, status, after, limit).await
}

async fn select_page(
    conn: &mut PgConnection,
    tenant_id: Option<&str>,
    status: Option<EnhancementStatus>,
    after: Option<PageAfter>,
    limit: i64,
) -> Result<Vec<EnhancementRow>, sqlx::Error> {
    select_rows!(
        r#"FROM enhancement_history
           WHERE ($1::text IS NULL OR tenant_id = $1)
             AND ($2::text IS NULL OR status = $2)
             AND ($3::timestamptz IS NULL OR (created_at, id) < ($3, $4::uuid))
           ORDER BY created_at DESC, id DESC
           LIMIT $5"#,
        tenant_id,
        status.map(EnhancementStatus::as_str),
        after.map(|a| a.created_at),
        after.map(|a| a.id),
        limit,
    )
    .fetch_all(conn)
    .await?
    .into_iter()
    .map(StoredRow::typed)
    .collect()
}

/// One delivery's request to claim its row (see [`claim`]).
#[derive(Debug, Clone, Copy)]
pub struct ClaimRequest<'a> {
    /// The row's tenant: the claim is made in its scope.
    pub tenant: &'a TenantId,
    /// The row.
    pub id: Uuid,
    /// The delivery's claim: its stream entry id.
    pub claim: &'a str,
    /// A claim known to be dead (its delivery is no longer in flight), which this one may
    /// replace on a `processing` row.
    pub takeover_from: Option<&'a str>,
}

/// What [`claim`] found for one delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClaimOutcome {
    /// The row is now `processing` under this delivery's claim: run the job.
    Claimed,
    /// The row is `completed` or `failed`: a redelivery, nothing to do.
    Finished,
    /// No such row in its tenant (deleted with the tenant, or its insert was undone): drop the
    /// job.
    Missing,
    /// Another delivery holds the row (its claim given): run nothing unless that delivery is
    /// dead, then claim again with it as `takeover_from`.
    HeldBy(String),
}

/// Claims the rows of a batch of deliveries, of any tenants, with one prepared call of
/// `claim_jobs` (migration `20261201000001_worker_batch_calls`): a `pending` row, a
/// `processing` row without a claim, or one whose claim is this delivery's or its
/// `takeover_from`, moves to `processing` under the delivery's claim, each in its tenant's
/// scope. The call is its own transaction, whose commit does not wait for the disk; its lock
/// waits, the only way a claim takes long, end after `lock_timeout` (error `55P03`), so
/// nothing keeps waiting for a lock once the worker gave up. Outcomes come back in request
/// order; only when some row did not move does a read, tenant by tenant, say why.
pub async fn claim(
    pool: &PgPool,
    requests: &[ClaimRequest<'_>],
    lock_timeout: Duration,
) -> Result<Vec<ClaimOutcome>, sqlx::Error> {
    let tenants: Vec<&str> = requests.iter().map(|r| r.tenant.as_str()).collect();
    let ids: Vec<Uuid> = requests.iter().map(|r| r.id).collect();
    let claims: Vec<&str> = requests.iter().map(|r| r.claim).collect();
    let takeovers: Vec<Option<&str>> = requests.iter().map(|r| r.takeover_from).collect();
    let lock_wait_ms = i32::try_from(lock_timeout.as_millis()).unwrap_or(i32::MAX);
    // Safe to send twice: a claim this delivery already made is made again.
    let moved: Vec<Uuid> = on_a_live_connection(pool, |mut connection| {
        let (tenants, ids, claims, takeovers) = (&tenants, &ids, &claims, &takeovers);
        async move {
            sqlx::query_scalar(
                "SELECT id FROM claim_jobs($1::text[], $2::uuid[], $3::text[], $4::text[], $5) \
                 AS id",
            )
            .bind(tenants)
            .bind(ids)
            .bind(claims)
            .bind(takeovers)
            .bind(lock_wait_ms)
            .fetch_all(&mut *connection)
            .await
        }
    })
    .await?;
    if moved.len() == requests.len() {
        return Ok(vec![ClaimOutcome::Claimed; requests.len()]);
    }
    // The rare rest: why each was not moved, read in its tenant's scope.
    let mut found: HashMap<Uuid, (EnhancementStatus, Option<String>)> = HashMap::new();
    let mut others: BTreeMap<&TenantId, Vec<Uuid>> = BTreeMap::new();
    for request in requests.iter().filter(|r| !moved.contains(&r.id)) {
        others.entry(request.tenant).or_default().push(request.id);
    }
    for (tenant, ids) in others {
        let mut tx = TenantTx::begin(pool, tenant).await?;
        let rows: Vec<(Uuid, String, Option<String>)> = sqlx::query_as(
            "SELECT id, status::text, claim FROM enhancement_history WHERE id = ANY($1::uuid[])",
        )
        .bind(&ids)
        .fetch_all(tx.conn())
        .await?;
        tx.commit().await?;
        for (id, status, claim) in rows {
            found.insert(id, (decode_status(&status)?, claim));
        }
    }
    Ok(requests
        .iter()
        .map(|request| {
            if moved.contains(&request.id) {
                return ClaimOutcome::Claimed;
            }
            match found.get(&request.id) {
                None => ClaimOutcome::Missing,
                Some((status, _)) if status.is_final() => ClaimOutcome::Finished,
                Some((_, holder)) => ClaimOutcome::HeldBy(holder.clone().unwrap_or_default()),
            }
        })
        .collect())
}

/// One job's result, to be recorded by [`complete`].
#[derive(Debug, Clone)]
pub struct Completion<'a> {
    /// The row's tenant: the result is recorded in its scope.
    pub tenant: &'a TenantId,
    /// The row.
    pub id: Uuid,
    /// The claim the job ran under.
    pub claim: &'a str,
    /// How long processing took.
    pub processing_time_ms: i32,
    /// What the job gathered.
    pub context_gathered: &'a Value,
    /// The model's output.
    pub llm_output: Option<&'a str>,
}

/// Marks `processing` rows of any tenants `completed`, each only under its completion's claim,
/// with one prepared call of `complete_jobs` (its own transaction, whose commit waits for the
/// disk: the deliveries are acknowledged after it); for each completion (in order) whether it
/// was recorded. False means the claim was lost (another delivery took the row over) or the
/// row is gone or final.
pub async fn complete(
    pool: &PgPool,
    completions: &[Completion<'_>],
) -> Result<Vec<bool>, sqlx::Error> {
    let tenants: Vec<&str> = completions.iter().map(|c| c.tenant.as_str()).collect();
    let ids: Vec<Uuid> = completions.iter().map(|c| c.id).collect();
    let claims: Vec<&str> = completions.iter().map(|c| c.claim).collect();
    let times: Vec<i32> = completions.iter().map(|c| c.processing_time_ms).collect();
    let gathered: Vec<String> = completions
        .iter()
        .map(|c| c.context_gathered.to_string())
        .collect();
    let outputs: Vec<Option<&str>> = completions.iter().map(|c| c.llm_output).collect();
    // Safe to send twice: a row the first call completed is no longer this claim's
    // `processing` row, so the second reports it not recorded (and the redelivery, finding it
    // final, acknowledges it).
    let done: Vec<Uuid> = on_a_live_connection(pool, |mut connection| {
        let (tenants, ids, claims, times) = (&tenants, &ids, &claims, &times);
        let (gathered, outputs) = (&gathered, &outputs);
        async move {
            sqlx::query_scalar(
                "SELECT id FROM complete_jobs($1::text[], $2::uuid[], $3::text[], $4::int4[], \
                 $5::text[], $6::text[]) AS id",
            )
            .bind(tenants)
            .bind(ids)
            .bind(claims)
            .bind(times)
            .bind(gathered)
            .bind(outputs)
            .fetch_all(&mut *connection)
            .await
        }
    })
    .await?;
    Ok(ids.iter().map(|id| done.contains(id)).collect())
}

/// What [`fail`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failing {
    /// The row is `failed` now.
    Failed,
    /// The row is `processing` under another delivery's claim, which it keeps.
    HeldBy(String),
    /// The row is final already, or gone.
    Closed,
}

/// Marks an unfinished row `failed` with `error_message`, under `claim` (a `pending` row, or a
/// `processing` one that `claim` holds, that nobody does, or that `takeover_from` — a delivery
/// known to be no longer in flight — holds).
pub async fn fail(
    tx: &mut TenantTx,
    id: Uuid,
    claim: &str,
    takeover_from: Option<&str>,
    error_message: &str,
) -> Result<Failing, sqlx::Error> {
    let failed: Option<Uuid> = sqlx::query_scalar(
        r"UPDATE enhancement_history
          SET status = 'failed', error_message = $3, completed_at = now(), claim = $2
          WHERE id = $1
            AND (status = 'pending'
                 OR (status = 'processing'
                     AND (claim IS NULL OR claim = $2 OR claim = $4)))
          RETURNING id",
    )
    .bind(id)
    .bind(claim)
    .bind(error_message)
    .bind(takeover_from)
    .fetch_optional(tx.conn())
    .await?;
    if failed.is_some() {
        return Ok(Failing::Failed);
    }
    let holder: Option<Option<String>> = sqlx::query_scalar(
        "SELECT claim FROM enhancement_history WHERE id = $1 AND status = 'processing'",
    )
    .bind(id)
    .fetch_optional(tx.conn())
    .await?;
    Ok(match holder.flatten() {
        Some(holder) => Failing::HeldBy(holder),
        None => Failing::Closed,
    })
}

/// Up to `limit` rows of any tenant still `pending` and untouched since `before`: candidates
/// for the orphan sweep (their job may be lost). Found through the status index; unordered, so
/// a large backlog costs no sort (the next sweep takes the next rows).
pub async fn stale_pending(
    tx: &mut CrossTenantTx,
    before: DateTime<Utc>,
    limit: i64,
) -> Result<Vec<(Uuid, String)>, sqlx::Error> {
    sqlx::query_as(
        r"SELECT id, tenant_id::text FROM enhancement_history
          WHERE status = 'pending' AND updated_at < $1
          LIMIT $2",
    )
    .bind(before)
    .bind(limit)
    .fetch_all(tx.conn())
    .await
}

/// Touches the rows of `ids` that are still `pending` and untouched since `before` (so that
/// the next sweep leaves them alone while their new job waits); returns those touched, whose
/// jobs the caller queues again.
pub async fn touch_stale_pending(
    tx: &mut TenantTx,
    ids: &[Uuid],
    before: DateTime<Utc>,
) -> Result<Vec<Uuid>, sqlx::Error> {
    sqlx::query_scalar(
        r"UPDATE enhancement_history SET updated_at = now()
          WHERE id = ANY($1) AND status = 'pending' AND updated_at < $2
          RETURNING id",
    )
    .bind(ids)
    .bind(before)
    .fetch_all(tx.conn())
    .await
}

/// Moves a `failed` row back to `pending` for `ai-agents-worker dead retry`; false when it is
/// not `failed` (gone, or already retried).
pub async fn reopen_failed(tx: &mut TenantTx, id: Uuid) -> Result<bool, sqlx::Error> {
    let result = sqlx::query(
        r"UPDATE enhancement_history
          SET status = 'pending', error_message = NULL, completed_at = NULL,
              processing_time_ms = NULL, claim = NULL
          WHERE id = $1 AND status = 'failed'",
    )
    .bind(id)
    .execute(tx.conn())
    .await?;
    Ok(result.rows_affected() > 0)
}
