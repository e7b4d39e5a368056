//! `/api/v1/enhancements`: enhancement requests, and `/api/v1/queue/stats`.
//!
//! Creating an enhancement stores its `pending` row and queues its job as one logical step:
//! the row is committed first (so a worker that takes the job at once finds it), then the job
//! is queued; if queueing fails the row is deleted again and the client gets a 503. There is
//! never a job without a row, and a row without a job only if the process dies between the
//! two writes (see docs/architecture.md).

use std::collections::BTreeMap;

use poem_openapi::{
    ApiResponse, Object, OpenApi, Tags,
    param::{Path, Query},
    payload::Json,
};
use serde_json::Value;
use uuid::Uuid;

use super::{AppState, auth::AdminAuth, paging, problem::ApiError};
use crate::{
    db::{
        ResultExt,
        enhancements::{self, EnhancementRow},
        scope::{CrossTenantTx, TenantTx},
    },
    domain::{EnhancementStatus, TenantId, TicketId, storable_json},
    queue::{Job, JobKind},
};

#[derive(Tags)]
enum EnhancementTags {
    /// Enhancement requests.
    Enhancements,
    /// The job queue.
    Queue,
}

/// A request to enhance one ticket.
#[derive(Object)]
#[oai(deny_unknown_fields)]
pub struct EnhancementCreate {
    /// The tenant the ticket belongs to.
    pub tenant_id: TenantId,
    /// The ticket in the tenant's service desk: not blank, no control characters.
    pub ticket_id: TicketId,
    /// Extra context for the enhancement logic.
    pub context: Option<BTreeMap<String, Value>>,
}

/// An enhancement and its outcome.
#[derive(Object)]
pub struct Enhancement {
    /// Id.
    pub id: Uuid,
    /// Tenant.
    pub tenant_id: String,
    /// Ticket.
    pub ticket_id: String,
    /// Lifecycle state.
    pub status: EnhancementStatus,
    /// The context sent with the request.
    pub context: Value,
    /// Context the job gathered.
    pub context_gathered: Option<Value>,
    /// The model's output.
    pub llm_output: Option<String>,
    /// Why it failed.
    pub error_message: Option<String>,
    /// Processing time.
    pub processing_time_ms: Option<i32>,
    /// When it was requested.
    pub created_at: chrono::DateTime<chrono::Utc>,
    /// When it finished.
    pub completed_at: Option<chrono::DateTime<chrono::Utc>>,
}

impl From<EnhancementRow> for Enhancement {
    fn from(row: EnhancementRow) -> Self {
        Self {
            id: row.id,
            tenant_id: row.tenant_id,
            ticket_id: row.ticket_id,
            status: row.status,
            context: row.context,
            context_gathered: row.context_gathered,
            llm_output: row.llm_output,
            error_message: row.error_message,
            processing_time_ms: row.processing_time_ms,
            created_at: row.created_at,
            completed_at: row.completed_at,
        }
    }
}

/// One page of enhancements.
#[derive(Object)]
pub struct EnhancementPage {
    /// Newest first.
    pub items: Vec<Enhancement>,
    /// Pass as `cursor` for the next page; `null` on the last page.
    pub next_cursor: Option<String>,
}

/// Queue counts.
#[derive(Object)]
pub struct QueueStatsBody {
    /// Queued and not yet taken.
    pub pending: u64,
    /// Taken and not yet acknowledged.
    pub in_flight: u64,
    /// Waiting for a retry.
    pub retrying: u64,
    /// In the dead-letter queue.
    pub dead: u64,
}

#[derive(ApiResponse)]
enum Accepted {
    /// Stored and queued.
    #[oai(status = 202)]
    Accepted(Json<Enhancement>),
}

/// Enhancement and queue endpoints.
pub struct EnhancementsApi {
    /// Shared state.
    pub state: AppState,
}

fn tenant_not_found(tenant: &str) -> ApiError {
    ApiError::not_found(format!("tenant `{tenant}` does not exist"))
}

/// Stores the `pending` row, then queues its job; if queueing fails, deletes the row again.
async fn store_and_enqueue(
    state: AppState,
    tenant: TenantId,
    ticket: TicketId,
    context: Value,
) -> Result<EnhancementRow, ApiError> {
    let id = Uuid::now_v7();
    let mut tx = state.tenant_tx(&tenant).await?;
    let row = enhancements::insert(&mut tx, id, &ticket, &context)
        .await
        .on_constraint(enhancements::TENANT_FK, || {
            tenant_not_found(tenant.as_str())
        })?;
    tx.commit().await?;

    let job = Job::new(JobKind::Enhancement {
        enhancement_id: id,
        tenant_id: tenant.clone(),
    });
    if let Err(e) = state.queue.enqueue(&job).await {
        // No row without a job: take the row back before answering.
        let undo = async {
            let mut tx = TenantTx::begin(&state.pool, &tenant).await?;
            enhancements::delete(&mut tx, id).await?;
            tx.commit().await
        };
        if let Err(undo_error) = undo.await {
            tracing::error!(
                enhancement_id = %id,
                error = &undo_error as &dyn std::error::Error,
                "could not remove the enhancement whose job was not queued"
            );
        }
        return Err(e.into());
    }
    Ok(row)
}

#[OpenApi(prefix_path = "/api/v1")]
impl EnhancementsApi {
    /// Request an enhancement: stores it as `pending` and queues its job.
    #[oai(
        path = "/enhancements",
        method = "post",
        operation_id = "create_enhancement",
        tag = "EnhancementTags::Enhancements"
    )]
    async fn create(
        &self,
        _auth: AdminAuth,
        body: Json<EnhancementCreate>,
    ) -> Result<Accepted, ApiError> {
        let body = body.0;
        let context = Value::Object(body.context.unwrap_or_default().into_iter().collect());
        storable_json("context", &context)?;
        // Its own task: once the row is committed, the job is queued (or the row taken back)
        // even if the client hangs up or the request deadline fires in between.
        let row = tokio::spawn(store_and_enqueue(
            self.state.clone(),
            body.tenant_id,
            body.ticket_id,
            context,
        ))
        .await
        .map_err(|_| ApiError::internal())??;
        Ok(Accepted::Accepted(Json(row.into())))
    }

    /// Get one enhancement.
    #[oai(
        path = "/enhancements/:id",
        method = "get",
        operation_id = "get_enhancement",
        tag = "EnhancementTags::Enhancements"
    )]
    async fn get(&self, _auth: AdminAuth, id: Path<Uuid>) -> Result<Json<Enhancement>, ApiError> {
        let mut tx = CrossTenantTx::begin(&self.state.pool).await?;
        let row = enhancements::get_any(&mut tx, id.0).await?;
        tx.finish().await?;
        row.map(|r| Json(r.into()))
            .ok_or_else(|| ApiError::not_found(format!("enhancement `{}` does not exist", id.0)))
    }

    /// List enhancements, newest first, optionally by tenant and status.
    #[oai(
        path = "/enhancements",
        method = "get",
        operation_id = "list_enhancements",
        tag = "EnhancementTags::Enhancements"
    )]
    async fn list(
        &self,
        _auth: AdminAuth,
        /// Only this tenant's enhancements.
        tenant_id: Query<Option<String>>,
        /// Only enhancements in this state.
        status: Query<Option<EnhancementStatus>>,
        /// Page size, 1–100.
        #[oai(validator(minimum(value = "1"), maximum(value = "100")))]
        limit: Query<Option<i64>>,
        /// `next_cursor` of the previous page.
        cursor: Query<Option<String>>,
    ) -> Result<Json<EnhancementPage>, ApiError> {
        let limit = limit.0.unwrap_or(paging::DEFAULT_LIMIT);
        let after = paging::non_empty(cursor.0.as_deref())
            .map(paging::parse_enhancement_cursor)
            .transpose()?;
        let status = status.0;
        // An empty `tenant_id=` means no filter, like an absent one.
        let mut rows = match tenant_id.0.as_deref().filter(|t| !t.is_empty()) {
            Some(raw) => match TenantId::parse(raw) {
                Ok(tenant) => {
                    let mut tx = self.state.tenant_tx(&tenant).await?;
                    let rows =
                        enhancements::list_for_tenant(&mut tx, status, after, limit + 1).await?;
                    tx.commit().await?;
                    rows
                }
                // A tenant id that cannot exist has no enhancements.
                Err(_) => Vec::new(),
            },
            None => {
                let mut tx = CrossTenantTx::begin(&self.state.pool).await?;
                let rows = enhancements::list_all(&mut tx, status, after, limit + 1).await?;
                tx.finish().await?;
                rows
            }
        };
        let page = usize::try_from(limit).unwrap_or(usize::MAX);
        let more = rows.len() > page;
        rows.truncate(page);
        let next_cursor = if more {
            rows.last()
                .map(|r| paging::enhancement_cursor(r.created_at, r.id))
        } else {
            None
        };
        Ok(Json(EnhancementPage {
            items: rows.into_iter().map(Into::into).collect(),
            next_cursor,
        }))
    }

    /// Queue counts: pending, in flight, waiting for a retry, dead.
    #[oai(
        path = "/queue/stats",
        method = "get",
        operation_id = "queue_stats",
        tag = "EnhancementTags::Queue"
    )]
    async fn queue_stats(&self, _auth: AdminAuth) -> Result<Json<QueueStatsBody>, ApiError> {
        let stats = self.state.queue.stats().await?;
        Ok(Json(QueueStatsBody {
            pending: stats.pending,
            in_flight: stats.in_flight,
            retrying: stats.retrying,
            dead: stats.dead,
        }))
    }
}
