//! What every handler shares: the pools, the queue, the keyring and the deployment's policies.

use std::{sync::Arc, time::Duration};

use sqlx::PgPool;

use super::problem::ApiError;
use crate::{
    crypto::Keyring,
    db::{self, scope::TenantTx},
    domain::{HostPolicy, TenantId},
    queue::Queue,
    service::enhancements::Enhancements,
};

/// What every handler needs, cheap to clone.
#[derive(Clone)]
pub struct AppState {
    /// PostgreSQL pool of the requests.
    pub pool: PgPool,
    /// One connection of its own for the readiness probe ([`db::probe`]).
    pub probe: Arc<db::probe::Probe>,
    /// The per-tenant share of `pool` ([`db::slots`]).
    pub slots: Arc<db::slots::TenantSlots>,
    /// How long a statement's answer may take on this side
    /// ([`SessionLimits::answer_within`](crate::config::SessionLimits::answer_within)), for
    /// work that no request deadline ends.
    pub answer_within: Duration,
    /// Whether service-desk URLs may name internal hosts (`AI_AGENTS_ALLOW_INTERNAL_URLS`).
    pub allow_internal_urls: bool,
    /// The job queue.
    pub queue: Queue,
    /// Seals tenant secrets (bound to their tenant and field).
    pub keyring: Arc<Keyring>,
}

impl AppState {
    /// A transaction scoped to `tenant`, within the tenant's share of the pool: one tenant's
    /// stuck requests cannot take every connection from the others.
    pub async fn tenant_tx(&self, tenant: &TenantId) -> Result<TenantTx, ApiError> {
        let slot = self.slots.acquire(tenant).await?;
        Ok(TenantTx::begin_in_slot(&self.pool, tenant, slot).await?)
    }

    /// The enhancement use case on this state's pool, slots and queue.
    pub fn enhancements(&self) -> Enhancements {
        Enhancements {
            pool: self.pool.clone(),
            slots: Arc::clone(&self.slots),
            queue: self.queue.clone(),
            answer_within: self.answer_within,
        }
    }

    /// Which hosts a service-desk URL may name in this deployment.
    pub fn host_policy(&self) -> HostPolicy {
        if self.allow_internal_urls {
            HostPolicy::AllowInternal
        } else {
            HostPolicy::PublicOnly
        }
    }
}
