//! A fair concurrency budget in front of a vendor: at most `capacity` holders at once, at most
//! one per key (a device: one live-response session per sensor), and slots handed out fairly.
//!
//! When a slot frees, it goes first to a waiter for the same key (the session can be reused
//! instead of closed and reopened), else to the waiter whose tenant holds the fewest slots, then
//! whose action holds the fewest, then the oldest. So one tenant's 1,000-device action cannot
//! starve another tenant's single kill.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::oneshot;

pub struct FairSlots {
    capacity: usize,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// key → (tenant, action) of the holder.
    held: HashMap<String, (String, String)>,
    by_tenant: HashMap<String, usize>,
    by_action: HashMap<String, usize>,
    waiters: Vec<Waiter>,
    next_id: u64,
}

struct Waiter {
    id: u64,
    key: String,
    tenant: String,
    action: String,
    grant: oneshot::Sender<()>,
}

/// A held slot; dropping it frees the slot.
pub struct SlotGuard {
    slots: Arc<FairSlots>,
    key: String,
}

impl FairSlots {
    pub fn new(capacity: usize) -> Arc<Self> {
        Arc::new(FairSlots { capacity: capacity.max(1), state: Mutex::new(State::default()) })
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    pub fn in_use(&self) -> usize {
        self.lock().held.len()
    }

    pub fn waiting(&self) -> usize {
        self.lock().waiters.len()
    }

    /// Whether someone waits for `key`: its holder can keep the vendor session open for them.
    pub fn has_waiter_for(&self, key: &str) -> bool {
        self.lock().waiters.iter().any(|w| w.key == key)
    }

    /// Waits for a slot for `key`. Cancel-safe: dropping the future gives up the place in line
    /// (or the slot, if it was granted in the meantime).
    pub async fn acquire(self: &Arc<Self>, key: &str, tenant: &str, action: &str) -> SlotGuard {
        let (tx, rx) = oneshot::channel();
        let id = {
            let mut state = self.lock();
            let id = state.next_id;
            state.next_id += 1;
            state.waiters.push(Waiter {
                id,
                key: key.to_owned(),
                tenant: tenant.to_owned(),
                action: action.to_owned(),
                grant: tx,
            });
            self.dispatch(&mut state, None);
            id
        };
        let mut pending = Pending { slots: self, id, key, granted: false };
        // The sender lives in `waiters` until granted; a grant always sends before removal, so
        // the channel cannot close without a grant while we wait.
        let _ = rx.await;
        pending.granted = true;
        SlotGuard { slots: Arc::clone(self), key: key.to_owned() }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding this lock leaves consistent state (no multi-step updates
        // outside `dispatch`), so poisoning is ignored.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn release(&self, key: &str) {
        let mut state = self.lock();
        if let Some((tenant, action)) = state.held.remove(key) {
            decrement(&mut state.by_tenant, &tenant);
            decrement(&mut state.by_action, &action);
        }
        self.dispatch(&mut state, Some(key));
    }

    fn dispatch(&self, state: &mut State, freed_key: Option<&str>) {
        while state.held.len() < self.capacity {
            let eligible =
                state.waiters.iter().enumerate().filter(|(_, w)| !state.held.contains_key(&w.key));
            let pick = eligible
                .min_by_key(|(_, w)| {
                    (
                        freed_key != Some(w.key.as_str()),
                        state.by_tenant.get(&w.tenant).copied().unwrap_or(0),
                        state.by_action.get(&w.action).copied().unwrap_or(0),
                        w.id,
                    )
                })
                .map(|(i, _)| i);
            let Some(i) = pick else { return };
            let waiter = state.waiters.remove(i);
            *state.by_tenant.entry(waiter.tenant.clone()).or_default() += 1;
            *state.by_action.entry(waiter.action.clone()).or_default() += 1;
            state.held.insert(waiter.key, (waiter.tenant, waiter.action));
            // A dropped receiver is handled by `Pending::drop`, which releases the slot.
            let _ = waiter.grant.send(());
        }
    }
}

fn decrement(counts: &mut HashMap<String, usize>, key: &str) {
    if let Some(n) = counts.get_mut(key) {
        *n -= 1;
        if *n == 0 {
            counts.remove(key);
        }
    }
}

struct Pending<'a> {
    slots: &'a Arc<FairSlots>,
    id: u64,
    key: &'a str,
    granted: bool,
}

impl Drop for Pending<'_> {
    fn drop(&mut self) {
        if self.granted {
            return;
        }
        let mut state = self.slots.lock();
        if let Some(i) = state.waiters.iter().position(|w| w.id == self.id) {
            state.waiters.remove(i);
        } else {
            // Granted between the send and our wake-up: give the slot back.
            drop(state);
            self.slots.release(self.key);
        }
    }
}

impl SlotGuard {
    pub fn key(&self) -> &str {
        &self.key
    }
}

impl Drop for SlotGuard {
    fn drop(&mut self) {
        self.slots.release(&self.key);
    }
}

impl std::fmt::Debug for SlotGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SlotGuard").field("key", &self.key).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn never_exceeds_capacity_and_one_holder_per_key() {
        let slots = FairSlots::new(2);
        let a = slots.acquire("s1", "t", "a").await;
        let _b = slots.acquire("s2", "t", "a").await;
        assert_eq!(slots.in_use(), 2);
        let s = Arc::clone(&slots);
        let third = tokio::spawn(async move { s.acquire("s3", "t", "a").await });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!third.is_finished());
        drop(a);
        let _c = tokio::time::timeout(Duration::from_secs(1), third).await.unwrap().unwrap();
        assert_eq!(slots.in_use(), 2);
    }

    #[tokio::test]
    async fn freed_slot_goes_to_the_tenant_holding_fewest() {
        let slots = FairSlots::new(2);
        let first = slots.acquire("big-0", "big", "a1").await;
        let _second = slots.acquire("big-1", "big", "a1").await;
        let mut big_waiters = Vec::new();
        for i in 2..5 {
            let s = Arc::clone(&slots);
            big_waiters.push(tokio::spawn(async move {
                s.acquire(&format!("big-{i}"), "big", "a1").await
            }));
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
        let s = Arc::clone(&slots);
        let small = tokio::spawn(async move { s.acquire("small-0", "small", "a2").await });
        tokio::time::sleep(Duration::from_millis(5)).await;
        // The small tenant arrived last, but holds nothing while the big one holds a slot.
        drop(first);
        let granted = tokio::time::timeout(Duration::from_secs(1), small).await.unwrap().unwrap();
        assert_eq!(granted.key(), "small-0");
        assert!(big_waiters.iter().all(|h| !h.is_finished()));
    }

    #[tokio::test]
    async fn abandoned_wait_leaves_no_trace() {
        let slots = FairSlots::new(1);
        let held = slots.acquire("k", "t", "a").await;
        let wait =
            tokio::time::timeout(Duration::from_millis(10), slots.acquire("k2", "t", "a")).await;
        assert!(wait.is_err());
        assert_eq!(slots.waiting(), 0);
        drop(held);
        assert_eq!(slots.in_use(), 0);
    }
}
