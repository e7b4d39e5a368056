//! What travels through the queue.
//!
//! A job is one JSON document in the stream entry's `job` field. It carries its own attempt
//! counter, so a retry scheduled in Redis survives any worker restart, and enough to find its
//! data (the enhancement id and its tenant, for row-level security) without another lookup.
//!
//! The tenant id is a [`TenantId`], checked when the job is decoded. A well-formed job whose
//! tenant id cannot exist (written by hand, or by an older build) is a bad payload, told apart
//! from text that is no job at all, so that operators see which of the two they hold.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::domain::{InvalidValue, TenantId};

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
        tenant_id: TenantId,
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
    pub fn decode(raw: &str) -> Result<Self, DecodeError> {
        serde_json::from_str(raw).map_err(|e| match invalid_tenant(raw) {
            Some(invalid) => DecodeError::BadTenant(invalid),
            None => DecodeError::Undecodable(e),
        })
    }
}

/// Why a payload is not a job.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// Not the JSON form of any job.
    #[error("undecodable job payload: {0}")]
    Undecodable(#[source] serde_json::Error),
    /// An enhancement job whose tenant id cannot exist.
    #[error("bad payload: {0}")]
    BadTenant(#[source] InvalidValue),
}

/// Why the `tenant_id` of an enhancement job in `raw` is refused, if that is what failed.
fn invalid_tenant(raw: &str) -> Option<InvalidValue> {
    let value: serde_json::Value = serde_json::from_str(raw).ok()?;
    if value.get("kind")?.as_str()? != "enhancement" {
        return None;
    }
    TenantId::parse(value.get("tenant_id")?.as_str()?).err()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        let job = Job::new(JobKind::Enhancement {
            enhancement_id: Uuid::new_v4(),
            tenant_id: TenantId::parse("acme").expect("valid"),
        });
        let again = Job::decode(&job.encode()).expect("decodes");
        assert_eq!(again, job);
        assert_eq!(job.next_attempt().attempt, 1);
        assert!(job.encode().contains(r#""kind":"enhancement""#));
    }

    #[test]
    fn refuses_garbage() {
        assert!(matches!(Job::decode("{"), Err(DecodeError::Undecodable(_))));
        assert!(matches!(
            Job::decode(r#"{"kind":"unknown"}"#),
            Err(DecodeError::Undecodable(_))
        ));
    }

    #[test]
    fn a_tenant_id_that_cannot_exist_is_a_bad_payload() {
        let job = Job::new(JobKind::Enhancement {
            enhancement_id: Uuid::new_v4(),
            tenant_id: TenantId::parse("acme").expect("valid"),
        });
        let raw = job.encode().replace(r#""acme""#, r#""Not A Tenant!""#);
        let error = Job::decode(&raw).expect_err("refused");
        assert!(matches!(error, DecodeError::BadTenant(_)), "{error}");
        assert!(
            error.to_string().starts_with("bad payload: tenant_id: "),
            "{error}"
        );
        // A ping has no tenant: its other faults are not about one.
        let ping = r#"{"kind":"ping","tenant_id":"Not A Tenant!"}"#;
        assert!(matches!(
            Job::decode(ping),
            Err(DecodeError::Undecodable(_))
        ));
    }
}
