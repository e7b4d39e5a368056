//! A bulkhead per tenant: how many pooled connections one tenant's requests may hold at once.
//!
//! Requests of one tenant can get stuck together — behind a row another transaction locked, or
//! on a slow query of that tenant's data. Without a bound they would take every connection of
//! the pool, and every other tenant's requests would time out waiting for one (contract
//! section 9: "other tenants are served meanwhile"). [`TenantSlots`] keeps a share of the pool
//! out of any single tenant's reach; a tenant's request past its share waits for one of its own
//! tenant's slots, not for the pool.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, PoisonError},
    time::Duration,
};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::domain::TenantId;

/// The per-tenant limit of one process.
pub struct TenantSlots {
    per_tenant: usize,
    wait: Duration,
    open: Arc<Mutex<HashMap<String, Arc<Semaphore>>>>,
}

/// The tenant already holds all its slots and none came free in time.
#[derive(Debug, thiserror::Error)]
#[error("too many requests of tenant `{0}` are waiting for the database at once")]
pub struct SlotsBusy(pub TenantId);

impl TenantSlots {
    /// Slots for a pool of `pool_size` connections: each tenant may hold all but a fifth of
    /// them (at least one is kept back when the pool has two or more). A request waits at most
    /// `wait` for a slot of its tenant.
    pub fn for_pool(pool_size: u32, wait: Duration) -> Self {
        let size = usize::try_from(pool_size).unwrap_or(usize::MAX).max(1);
        let reserve = (size / 5).max(usize::from(size > 1));
        Self {
            per_tenant: size - reserve,
            wait,
            open: Arc::default(),
        }
    }

    /// Connections one tenant may hold at once.
    pub fn per_tenant(&self) -> usize {
        self.per_tenant
    }

    /// Waits for a slot of `tenant`; it is given back when the returned guard drops.
    pub async fn acquire(&self, tenant: &TenantId) -> Result<TenantSlot, SlotsBusy> {
        let semaphore = Arc::clone(
            self.open
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .entry(tenant.as_str().to_owned())
                .or_insert_with(|| Arc::new(Semaphore::new(self.per_tenant))),
        );
        let permit = tokio::time::timeout(self.wait, semaphore.acquire_owned()).await;
        match permit {
            Ok(Ok(permit)) => Ok(TenantSlot {
                permit: Some(permit),
                tenant: tenant.as_str().to_owned(),
                open: Arc::clone(&self.open),
            }),
            _ => Err(SlotsBusy(tenant.clone())),
        }
    }

    /// Tenants with a slot taken or awaited right now (entries are dropped when unused).
    pub fn tenants_in_use(&self) -> usize {
        self.open
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }
}

/// One tenant's slot; dropping it frees the slot and forgets tenants nobody waits for, so the
/// map holds only tenants with work in progress.
pub struct TenantSlot {
    permit: Option<OwnedSemaphorePermit>,
    tenant: String,
    open: Arc<Mutex<HashMap<String, Arc<Semaphore>>>>,
}

impl Drop for TenantSlot {
    fn drop(&mut self) {
        let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        // The map's reference and this permit's are the only ones: no one else holds or
        // awaits a slot of this tenant (they clone the semaphore under this same lock).
        if open
            .get(&self.tenant)
            .is_some_and(|semaphore| Arc::strong_count(semaphore) == 2)
        {
            open.remove(&self.tenant);
        }
        drop(self.permit.take());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_leave_room_for_other_tenants() {
        let share = |size| TenantSlots::for_pool(size, Duration::ZERO).per_tenant();
        assert_eq!(share(1), 1);
        assert_eq!(share(2), 1);
        assert_eq!(share(5), 4);
        assert_eq!(share(20), 16);
    }

    #[tokio::test]
    async fn one_tenant_cannot_take_every_slot() {
        let slots = TenantSlots::for_pool(5, Duration::from_millis(20));
        let a = TenantId::parse("a").expect("valid");
        let b = TenantId::parse("b").expect("valid");
        let mut held = Vec::new();
        for _ in 0..4 {
            held.push(slots.acquire(&a).await.expect("within the share"));
        }
        assert!(slots.acquire(&a).await.is_err(), "past the share");
        let other = slots.acquire(&b).await.expect("another tenant is served");
        drop(other);
        assert_eq!(slots.tenants_in_use(), 1);
        held.clear();
        assert_eq!(slots.tenants_in_use(), 0, "unused tenants are forgotten");
    }
}
