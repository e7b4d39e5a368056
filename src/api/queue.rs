//! `/api/v1/queue/stats`: what the job queue holds, for operators and dashboards.

use poem_openapi::{Object, OpenApi, Tags, payload::Json};

use super::{AppState, auth::AdminAuth, problem::ApiError};

#[derive(Tags)]
enum QueueTags {
    /// The job queue.
    Queue,
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

/// Queue endpoints.
pub struct QueueApi {
    /// Shared state.
    pub state: AppState,
}

#[OpenApi(prefix_path = "/api/v1", tag = "QueueTags::Queue")]
impl QueueApi {
    /// Queue counts: pending, in flight, waiting for a retry, dead.
    #[oai(path = "/queue/stats", method = "get", operation_id = "queue_stats")]
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
