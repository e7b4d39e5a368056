//! What a worker does with each kind of job, once its delivery holds the job's claim.
//!
//! The enhancement job of this foundation is a placeholder: its row was moved to `processing`
//! when the delivery claimed it (in a batch, see [`super::batch`]); the job itself produces the
//! result that the batch then records as `completed`. The real enhancement logic will replace
//! [`enhance`]. A ping answers on its reply list, which must be one of this deployment's ping
//! keys.

use std::time::Instant;

use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use super::retry::JobError;
use crate::queue::{Job, JobKind, Queue};

/// Everything a job may use.
pub struct JobContext {
    /// The queue (for ping answers and its key namespace).
    pub queue: Queue,
    /// This worker's consumer name, for ping answers.
    pub consumer: String,
}

/// What a job produced, for the batch that records it.
#[derive(Debug, Clone, PartialEq)]
pub enum Output {
    /// An enhancement's result.
    Enhanced {
        /// What the job gathered.
        context_gathered: Value,
        /// The model's output.
        llm_output: Option<String>,
        /// How long the job ran.
        processing_time_ms: i32,
    },
    /// A ping was answered; nothing to record.
    Answered,
}

/// Runs `job`. `cancel` is triggered at the soft time limit.
pub async fn execute(
    ctx: &JobContext,
    job: &Job,
    cancel: CancellationToken,
) -> Result<Output, JobError> {
    match &job.kind {
        JobKind::Enhancement { .. } => enhance(cancel).await,
        JobKind::Ping { reply_to } => pong(ctx, reply_to).await,
    }
}

/// The job kind's name, for logs and metrics.
pub fn kind_name(job: &Job) -> &'static str {
    match job.kind {
        JobKind::Enhancement { .. } => "enhancement",
        JobKind::Ping { .. } => "ping",
    }
}

/// The kind's name of a raw payload, `unknown` when it does not decode.
pub fn kind_of(payload: &str) -> &'static str {
    Job::decode(payload).map_or("unknown", |job| kind_name(&job))
}

/// The placeholder for the enhancement logic, which must watch `cancel` (the soft limit).
async fn enhance(cancel: CancellationToken) -> Result<Output, JobError> {
    let started = Instant::now();
    if cancel.is_cancelled() {
        return Err(JobError::transient("soft time limit reached"));
    }
    Ok(Output::Enhanced {
        context_gathered: json!({}),
        llm_output: None,
        processing_time_ms: i32::try_from(started.elapsed().as_millis()).unwrap_or(i32::MAX),
    })
}

async fn pong(ctx: &JobContext, reply_to: &str) -> Result<Output, JobError> {
    if !ctx.queue.keys().is_ping_reply(reply_to) {
        return Err(JobError::permanent(
            "bad payload: a ping may only answer on a ping key of this deployment",
        ));
    }
    let answer = format!(
        "pong from {} (ai-agents-worker {})",
        ctx.consumer,
        env!("CARGO_PKG_VERSION")
    );
    let mut reply = redis::pipe();
    reply
        .atomic()
        .cmd("LPUSH")
        .arg(reply_to)
        .arg(&answer)
        .ignore()
        .cmd("EXPIRE")
        .arg(reply_to)
        .arg(60)
        .ignore();
    ctx.queue.redis().query_pipe::<()>(&reply).await?;
    Ok(Output::Answered)
}
