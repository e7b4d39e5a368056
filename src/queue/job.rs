//! What travels through the queue.
//!
//! A job is one JSON document in the stream entry's `job` field. It carries its own attempt
//! counter, so a retry scheduled in Redis survives any worker restart, and enough to find its
//! data (the enhancement id and its tenant, for row-level security) without another lookup.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// A unit of work.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Job {
    /// Unique per enqueue (a retry keeps it).
    pub id: Uuid,
    /// Attempts already made (0 on first delivery).
    #[serde(default)]
    pub attempt: u32,
    /// When it was first enqueued.
    pub enqueued_at: DateTime<Utc>,
    /// What to do.
    #[serde(flatten)]
    pub kind: JobKind,
}

/// The kinds of work a worker knows.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum JobKind {
    /// Process one enhancement request.
    Enhancement {
        /// The `enhancement_history` row.
        enhancement_id: Uuid,
        /// Its tenant (sets the row-level-security context).
        tenant_id: String,
    },
    /// Answer on `reply_to` (a Redis list) to prove a worker is consuming.
    Ping {
        /// List key the answer is pushed to.
        reply_to: String,
    },
}

impl Job {
    /// A first-attempt job.
    pub fn new(kind: JobKind) -> Self {
        Self {
            id: Uuid::now_v7(),
            attempt: 0,
            enqueued_at: Utc::now(),
            kind,
        }
    }

    /// The same job, one attempt further.
    pub fn next_attempt(&self) -> Self {
        Self {
            attempt: self.attempt + 1,
            ..self.clone()
        }
    }

    /// The JSON form stored in Redis.
    pub fn encode(&self) -> String {
        // Serialising plain data with string keys cannot fail.
        serde_json::to_string(self).unwrap_or_default()
    }

    /// Parses the JSON form; the error text is safe to store in the dead-letter queue.
    pub fn decode(raw: &str) -> Result<Self, String> {
        serde_json::from_str(raw).map_err(|e| format!("undecodable job payload: {e}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        let job = Job::new(JobKind::Enhancement {
            enhancement_id: Uuid::new_v4(),
            tenant_id: "acme".into(),
        });
        let again = Job::decode(&job.encode()).expect("decodes");
        assert_eq!(again, job);
        assert_eq!(job.next_attempt().attempt, 1);
        assert!(job.encode().contains(r#""kind":"enhancement""#));
    }

    #[test]
    fn refuses_garbage() {
        assert!(Job::decode("{").is_err());
        assert!(Job::decode(r#"{"kind":"unknown"}"#).is_err());
    }
}
