//! Session slots: one live action per machine and at most `concurrent_sessions` per
//! credential, locally (fair) and, with other replicas, in the shared budget.

use std::collections::HashMap;
use std::sync::MutexGuard;
use std::time::{Duration, Instant};

use edrgate_adapter::driver::Drive;
use edrgate_adapter::{AdapterError, RunContext, SharedSlot, SlotGuard};
use uuid::Uuid;

use super::DefenderAdapter;

/// Slots of runs whose steps stopped coming are dropped after this long.
const STALE_RUN: Duration = Duration::from_secs(15 * 60);

/// A run's session slot, held from before its submission until its action ends.
pub(super) struct Held {
    _guard: SlotGuard,
    _shared: Option<SharedSlot>,
    touched: Instant,
}

impl DefenderAdapter {
    /// Takes the machine's session slot unless the run holds it: this process's fair share
    /// (FairSlots), then, with other gateway replicas, the credential's slot among them all.
    /// `Some` when the run must wait or was stopped first.
    pub(super) async fn ensure_slot(
        &self,
        ctx: &RunContext<'_>,
        machine: &str,
    ) -> Result<Option<Drive>, AdapterError> {
        if self.memory().contains_key(&ctx.run_id) {
            return Ok(None);
        }
        let tenant = ctx.tenant.to_owned();
        let action = ctx.action_id.to_string();
        let guard = tokio::select! {
            g = self.client.budget.sessions.acquire(machine, &tenant, &action) => g,
            _ = ctx.stop.stopped() => {
                return Ok(Some(Drive::Continue));
            }
        };
        let shared = match self.shared.get().filter(|b| b.is_shared()) {
            None => None,
            Some(budget) => {
                let holder = ctx.run_id.to_string();
                let scope = format!("{}:sessions", self.scope);
                let capacity = self.client.budget.sessions.capacity();
                match edrgate_adapter::shared::acquire_slot(
                    budget, &scope, capacity, machine, &holder,
                )
                .await?
                {
                    Some(slot) => Some(slot),
                    // Other replicas hold every slot (or this machine's): let local waiters
                    // have this one and ask again shortly.
                    None => {
                        drop(guard);
                        return Ok(Some(Drive::Wait(self.cfg.poll_max())));
                    }
                }
            }
        };
        self.memory()
            .insert(ctx.run_id, Held { _guard: guard, _shared: shared, touched: Instant::now() });
        Ok(None)
    }

    pub(super) fn memory(&self) -> MutexGuard<'_, HashMap<Uuid, Held>> {
        self.runs.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(super) fn touch(&self, run: Uuid) {
        let mut runs = self.memory();
        let stale: Vec<Uuid> = runs
            .iter()
            .filter(|(id, held)| **id != run && held.touched.elapsed() > STALE_RUN)
            .map(|(id, _)| *id)
            .collect();
        let dropped: Vec<_> = stale.iter().filter_map(|id| runs.remove(id)).collect();
        if let Some(held) = runs.get_mut(&run) {
            held.touched = Instant::now();
        }
        drop(runs);
        drop(dropped);
    }

    pub(super) fn release_slot(&self, run: Uuid) {
        let slot = self.memory().remove(&run);
        drop(slot);
    }
}
