//! Errors as RFC 9457 problem details (`application/problem+json`).
//!
//! Handlers return [`ApiError`]; its variants are the documented error statuses of every
//! operation. Internal causes (SQL errors, Redis errors) are logged with their whole chain and
//! never reach the client: the body only says what the client can act on.

use poem_openapi::{ApiResponse, Object, payload::Json};

use crate::{
    db::{Failure, slots::SlotsBusy},
    domain::InvalidValue,
    queue::QueueError,
};

/// Seconds a client should wait before retrying after a 503.
pub const RETRY_AFTER_SECS: u32 = 2;

/// A problem detail body.
#[derive(Debug, Clone, Object)]
pub struct Problem {
    /// A URI naming the kind of problem.
    #[oai(rename = "type")]
    pub kind: String,
    /// A short summary of the kind of problem.
    pub title: String,
    /// The HTTP status code.
    pub status: u16,
    /// What went wrong with this request.
    pub detail: String,
}

impl Problem {
    /// A problem for `status` with the standard title and a specific detail.
    pub fn new(status: u16, detail: impl Into<String>) -> Self {
        let title = http::StatusCode::from_u16(status)
            .ok()
            .and_then(|s| s.canonical_reason())
            .unwrap_or("Error");
        Self {
            kind: format!("https://httpstatuses.io/{status}"),
            title: title.to_owned(),
            status,
            detail: detail.into(),
        }
    }
}

/// Every error an operation can answer with.
#[derive(Debug, ApiResponse)]
pub enum ApiError {
    /// The request is malformed or a value is out of range.
    #[oai(status = 400, content_type = "application/problem+json")]
    BadRequest(Json<Problem>),
    /// The bearer token is missing or wrong.
    #[oai(status = 401, content_type = "application/problem+json")]
    Unauthorized(Json<Problem>),
    /// The addressed resource does not exist.
    #[oai(status = 404, content_type = "application/problem+json")]
    NotFound(Json<Problem>),
    /// The resource already exists.
    #[oai(status = 409, content_type = "application/problem+json")]
    Conflict(Json<Problem>),
    /// The body is larger than 1 MiB.
    #[oai(status = 413, content_type = "application/problem+json")]
    PayloadTooLarge(Json<Problem>),
    /// The body is not `application/json`.
    #[oai(status = 415, content_type = "application/problem+json")]
    UnsupportedMediaType(Json<Problem>),
    /// An unexpected failure; details are in the server's log.
    #[oai(status = 500, content_type = "application/problem+json")]
    Internal(Json<Problem>),
    /// A dependency (database or Redis) is unavailable; retry later.
    #[oai(status = 503, content_type = "application/problem+json")]
    Unavailable(Json<Problem>, #[oai(header = "Retry-After")] u32),
}

impl ApiError {
    /// 400 with `detail`.
    pub fn bad_request(detail: impl Into<String>) -> Self {
        Self::BadRequest(Json(Problem::new(400, detail)))
    }

    /// 404 with `detail`.
    pub fn not_found(detail: impl Into<String>) -> Self {
        Self::NotFound(Json(Problem::new(404, detail)))
    }

    /// 404 for a tenant id that names no tenant (in a path or a body).
    pub fn tenant_not_found(tenant: impl std::fmt::Display) -> Self {
        Self::not_found(format!("tenant `{tenant}` does not exist"))
    }

    /// 409 with `detail`.
    pub fn conflict(detail: impl Into<String>) -> Self {
        Self::Conflict(Json(Problem::new(409, detail)))
    }

    /// 503 naming the dependency that failed.
    pub fn unavailable(dependency: &str) -> Self {
        Self::Unavailable(
            Json(Problem::new(
                503,
                format!("{dependency} is unavailable, retry later"),
            )),
            RETRY_AFTER_SECS,
        )
    }

    /// 500 without details.
    pub fn internal() -> Self {
        Self::Internal(Json(Problem::new(500, "an unexpected error occurred")))
    }
}

impl From<InvalidValue> for ApiError {
    fn from(e: InvalidValue) -> Self {
        Self::bad_request(e.to_string())
    }
}

impl From<sqlx::Error> for ApiError {
    fn from(e: sqlx::Error) -> Self {
        let error = &e as &dyn std::error::Error;
        match crate::db::classify(&e) {
            // The client's value cannot be stored (a safety net: the edge validation should
            // have refused it already).
            Failure::BadData => {
                tracing::warn!(error, "value refused by the database");
                Self::bad_request("a value cannot be stored")
            }
            // Transient from the client's side: the migration job is usually about to run.
            Failure::SchemaMissing => {
                tracing::error!(error, "database schema is not migrated");
                Self::unavailable("the database schema")
            }
            Failure::Contended => {
                tracing::warn!(
                    error,
                    "gave up waiting for a lock held by another transaction"
                );
                Self::conflict(
                    "the resource is being changed by another request; retry in a moment",
                )
            }
            Failure::TimedOut => {
                tracing::warn!(error, "database statement timed out");
                Self::unavailable("the database (it did not answer in time)")
            }
            Failure::Unavailable => {
                tracing::warn!(error, "database unavailable");
                Self::unavailable("the database")
            }
            Failure::Other => {
                tracing::error!(error, "database error");
                Self::internal()
            }
        }
    }
}

impl From<SlotsBusy> for ApiError {
    fn from(busy: SlotsBusy) -> Self {
        tracing::warn!(tenant_id = %busy.0, "tenant at its share of database connections");
        Self::unavailable("the database (too many requests of this tenant at once)")
    }
}

impl From<QueueError> for ApiError {
    fn from(e: QueueError) -> Self {
        tracing::warn!(error = &e as &dyn std::error::Error, "queue unavailable");
        Self::unavailable("the job queue")
    }
}
