//! Requesting an enhancement: store its `pending` row and queue its job as one logical step.
//!
//! The row is committed first (so a worker that takes the job at once finds it), then the job
//! is queued; if queueing fails the row is deleted again and the caller learns that the queue
//! is unavailable. There is never a job without a row, and a row without a job only if the
//! process dies between the two writes, which the worker's orphan sweep repairs (see
//! docs/architecture.md). The step runs in a task of its own: once the row is committed, the
//! job is queued (or the row taken back) even if the caller goes away meanwhile — a client that
//! hangs up, a request deadline that fires. Each of its steps is bounded all the same (taking
//! a connection by the pool's wait, each statement by
//! [`SessionLimits::answer_within`](crate::config::SessionLimits::answer_within)): after a
//! failover, a statement on one of the old server's connections is never answered, and the
//! task would hold that connection and the tenant's slot for good. A commit whose answer is
//! lost so may still have happened: the row then has no job, which the orphan sweep repairs.

use std::{sync::Arc, time::Duration};

use serde_json::Value;
use sqlx::PgPool;
use uuid::Uuid;

use crate::{
    db::{
        self, ResultExt,
        enhancements::{self, EnhancementRow},
        scope::TenantTx,
        slots::{SlotsBusy, TenantSlots},
    },
    domain::{InvalidValue, TenantId, TicketId, storable_json},
    queue::{Job, JobKind, Queue, QueueError},
};

/// A request to enhance one ticket, checked: nothing about it can fail to be stored.
#[derive(Debug, Clone)]
pub struct NewEnhancement {
    tenant: TenantId,
    ticket: TicketId,
    context: Value,
}

impl NewEnhancement {
    /// A request for `ticket` of `tenant` with the caller's `context`, which must be storable
    /// (PostgreSQL's `jsonb` refuses NUL characters).
    pub fn new(tenant: TenantId, ticket: TicketId, context: Value) -> Result<Self, InvalidValue> {
        storable_json("context", &context)?;
        Ok(Self {
            tenant,
            ticket,
            context,
        })
    }
}

/// Why an enhancement could not be requested.
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    /// No tenant has this id.
    #[error("tenant `{0}` does not exist")]
    UnknownTenant(TenantId),
    /// The tenant already holds its share of the database connections.
    #[error(transparent)]
    TenantBusy(#[from] SlotsBusy),
    /// The database failed; nothing was stored.
    #[error("the database failed")]
    Database(#[from] sqlx::Error),
    /// The job could not be queued; the row was taken back.
    #[error(transparent)]
    Queue(#[from] QueueError),
    /// The task doing the work ended without an answer (it panicked).
    #[error("the request was interrupted")]
    Interrupted(#[source] tokio::task::JoinError),
}

/// Where requests are stored and queued. Cheap to clone: every field is a shared handle.
#[derive(Clone)]
pub struct Enhancements {
    /// The request pool.
    pub pool: PgPool,
    /// Each tenant's share of `pool`.
    pub slots: Arc<TenantSlots>,
    /// The job queue.
    pub queue: Queue,
    /// How long a statement's answer may take (see the module doc).
    pub answer_within: Duration,
}

impl Enhancements {
    /// Stores the `pending` row of `new` and queues its job (see the module doc); the stored
    /// row.
    pub async fn request(&self, new: NewEnhancement) -> Result<EnhancementRow, RequestError> {
        tokio::spawn(self.clone().store_and_enqueue(new))
            .await
            .map_err(RequestError::Interrupted)?
    }

    async fn store_and_enqueue(self, new: NewEnhancement) -> Result<EnhancementRow, RequestError> {
        let NewEnhancement {
            tenant,
            ticket,
            context,
        } = new;
        let id = Uuid::now_v7();
        let slot = self.slots.acquire(&tenant).await?;
        let (connect, answer) = self.bounds();
        let mut tx =
            db::within(connect, TenantTx::begin_in_slot(&self.pool, &tenant, slot)).await?;
        let row = db::within(answer, enhancements::insert(&mut tx, id, &ticket, &context))
            .await
            .on_constraint(enhancements::TENANT_FK, || {
                RequestError::UnknownTenant(tenant.clone())
            })?;
        db::within(answer, tx.commit()).await?;

        let job = Job::new(JobKind::Enhancement {
            enhancement_id: id,
            tenant_id: tenant.clone(),
        });
        if let Err(e) = self.queue.enqueue(&job).await {
            self.take_back(&tenant, id).await;
            return Err(e.into());
        }
        Ok(row)
    }

    /// The bounds of a transaction's steps: its start (a connection, then `BEGIN`) and each
    /// statement after it.
    fn bounds(&self) -> (Duration, Duration) {
        let answer = self.answer_within;
        (db::call_within(&self.pool, answer), answer)
    }

    /// No row without a job: deletes the row whose job was not queued. It takes no slot of the
    /// tenant's share: an undo must not be refused because the tenant is busy.
    async fn take_back(&self, tenant: &TenantId, id: Uuid) {
        let (connect, answer) = self.bounds();
        let undo = async {
            let mut tx = db::within(connect, TenantTx::begin(&self.pool, tenant)).await?;
            db::within(answer, enhancements::delete(&mut tx, id)).await?;
            db::within(answer, tx.commit()).await
        };
        if let Err(undo_error) = undo.await {
            tracing::error!(
                enhancement_id = %id,
                error = &undo_error as &dyn std::error::Error,
                "could not remove the enhancement whose job was not queued"
            );
        }
    }
}
