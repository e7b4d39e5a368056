//! `/api/v1/enhancements`: enhancement requests.
//!
//! Creating one is the use case in [`crate::service::enhancements`] (store the `pending` row and
//! queue its job as one logical step); this module maps its outcome to HTTP.

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
        enhancements::{self, EnhancementRow},
        scope::CrossTenantTx,
    },
    domain::{EnhancementStatus, TenantId, TicketId},
    service::enhancements::{NewEnhancement, RequestError},
};

#[derive(Tags)]
enum EnhancementTags {
    /// Enhancement requests.
    Enhancements,
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

#[derive(ApiResponse)]
enum Accepted {
    /// Stored and queued.
    #[oai(status = 202)]
    Accepted(Json<Enhancement>),
}

/// Enhancement endpoints.
pub struct EnhancementsApi {
    /// Shared state.
    pub state: AppState,
}

impl From<RequestError> for ApiError {
    fn from(e: RequestError) -> Self {
        match e {
            RequestError::UnknownTenant(tenant) => Self::tenant_not_found(tenant),
            RequestError::TenantBusy(busy) => busy.into(),
            RequestError::Database(e) => e.into(),
            RequestError::Queue(e) => e.into(),
            RequestError::Interrupted(e) => {
                tracing::error!(error = &e as &dyn std::error::Error, "request task failed");
                Self::internal()
            }
        }
    }
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
        let new = NewEnhancement::new(body.tenant_id, body.ticket_id, context)?;
        let row = self.state.enhancements().request(new).await?;
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
}
