//! Vendor budgets kept with the other gateway replicas.
//!
//! [`FairSlots`](crate::FairSlots) and an adapter's own rate limiter see one process. When
//! several replicas share a store, a vendor limit (Carbon Black's concurrent live-response
//! sessions, Defender's calls per minute, one live-response action per machine) must hold across
//! all of them: two replicas must never do what one would not. The engine hands every adapter a
//! [`SharedBudget`] ([`Adapter::use_shared_budget`](crate::Adapter::use_shared_budget)); the
//! adapter keeps its local budget for fairness and asks the shared one as well, right before the
//! vendor call the limit is about:
//!
//! - a capped budget: [`acquire_slot`] for a `key` (a device) of a `scope` (a vendor server or
//!   tenant app) holding at most `capacity` slots and one per key. The returned
//!   [`SharedSlot`] frees the slot when dropped. `holder` names the work (the run id): a replica
//!   that takes a dead replica's run over gets that run's slot back at once, while slots of work
//!   nobody drives any more expire once their replica stops renewing them.
//! - a rate budget: [`SharedBudget::take_call`] before each call counted by a per-window quota.
//!
//! The engine provides a PostgreSQL implementation with several replicas; with one (SQLite),
//! [`LocalBudget`] keeps the same rules in memory.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use async_trait::async_trait;

use crate::error::AdapterError;

/// A budget shared by every replica of the gateway. See the module documentation.
#[async_trait]
pub trait SharedBudget: Send + Sync + 'static {
    /// Whether other processes share this budget (a local one only repeats what the adapter's
    /// own [`FairSlots`](crate::FairSlots) already enforce).
    fn is_shared(&self) -> bool;

    /// Takes slot `key` of `scope` for `holder` if the scope holds fewer than `capacity` slots
    /// and nobody else holds `key`. A holder that already holds `key` keeps it (under a new
    /// token). `Ok(None)`: no slot now; try again later. Prefer [`acquire_slot`], which frees
    /// the slot on drop.
    async fn try_take_slot(
        &self,
        scope: &str,
        capacity: usize,
        key: &str,
        holder: &str,
    ) -> Result<Option<String>, AdapterError>;

    /// Frees a slot taken under `token` (a no-op if it was taken over since). May complete in the
    /// background: it is called from `Drop`.
    fn release_slot(&self, scope: &str, key: &str, token: &str);

    /// Frees every slot this process holds: the engine calls it at the end of a graceful
    /// shutdown, once its runs are handed back (a crash leaves them to expire instead).
    async fn release_all(&self) {}

    /// Counts one call against `scope`'s quota of `limit` calls per `window` (a sliding
    /// window). `Ok(None)`: make the call; `Ok(Some(wait))`: the quota is spent, nothing was
    /// counted, ask again after `wait`.
    async fn take_call(
        &self,
        scope: &str,
        limit: u32,
        window: Duration,
    ) -> Result<Option<Duration>, AdapterError>;
}

/// A slot of a [`SharedBudget`]; dropping it frees the slot.
pub struct SharedSlot {
    budget: Arc<dyn SharedBudget>,
    scope: String,
    key: String,
    token: String,
}

impl SharedSlot {
    pub fn key(&self) -> &str {
        &self.key
    }
}

impl Drop for SharedSlot {
    fn drop(&mut self) {
        self.budget.release_slot(&self.scope, &self.key, &self.token);
    }
}

impl std::fmt::Debug for SharedSlot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedSlot").field("scope", &self.scope).field("key", &self.key).finish()
    }
}

/// [`SharedBudget::try_take_slot`], as a guard that frees the slot when dropped.
pub async fn acquire_slot(
    budget: &Arc<dyn SharedBudget>,
    scope: &str,
    capacity: usize,
    key: &str,
    holder: &str,
) -> Result<Option<SharedSlot>, AdapterError> {
    let token = budget.try_take_slot(scope, capacity, key, holder).await?;
    Ok(token.map(|token| SharedSlot {
        budget: Arc::clone(budget),
        scope: scope.to_owned(),
        key: key.to_owned(),
        token,
    }))
}

/// The in-process [`SharedBudget`]: the same rules, for one replica (and adapter tests).
#[derive(Default)]
pub struct LocalBudget {
    state: Mutex<LocalState>,
}

#[derive(Default)]
struct LocalState {
    /// (scope, key) → (holder, token).
    slots: HashMap<(String, String), (String, String)>,
    calls: HashMap<String, VecDeque<Instant>>,
    next_token: u64,
}

impl LocalBudget {
    pub fn new() -> Arc<LocalBudget> {
        Arc::new(LocalBudget::default())
    }

    /// Slots held in `scope`.
    pub fn in_use(&self, scope: &str) -> usize {
        self.lock().slots.keys().filter(|(s, _)| s == scope).count()
    }

    fn lock(&self) -> MutexGuard<'_, LocalState> {
        // Every critical section is a few map operations: a poisoned lock is still consistent.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[async_trait]
impl SharedBudget for LocalBudget {
    fn is_shared(&self) -> bool {
        false
    }

    async fn try_take_slot(
        &self,
        scope: &str,
        capacity: usize,
        key: &str,
        holder: &str,
    ) -> Result<Option<String>, AdapterError> {
        let mut state = self.lock();
        state.next_token += 1;
        let token = state.next_token.to_string();
        let id = (scope.to_owned(), key.to_owned());
        match state.slots.get(&id) {
            Some((h, _)) if h != holder => return Ok(None),
            Some(_) => {}
            None => {
                let used = state.slots.keys().filter(|(s, _)| s == scope).count();
                if used >= capacity {
                    return Ok(None);
                }
            }
        }
        state.slots.insert(id, (holder.to_owned(), token.clone()));
        Ok(Some(token))
    }

    fn release_slot(&self, scope: &str, key: &str, token: &str) {
        let mut state = self.lock();
        let id = (scope.to_owned(), key.to_owned());
        if state.slots.get(&id).is_some_and(|(_, t)| t == token) {
            state.slots.remove(&id);
        }
    }

    async fn take_call(
        &self,
        scope: &str,
        limit: u32,
        window: Duration,
    ) -> Result<Option<Duration>, AdapterError> {
        let now = Instant::now();
        let mut state = self.lock();
        let calls = state.calls.entry(scope.to_owned()).or_default();
        while calls.front().is_some_and(|at| now.duration_since(*at) >= window) {
            calls.pop_front();
        }
        if calls.len() >= usize::try_from(limit).unwrap_or(usize::MAX) {
            let oldest = calls.front().copied().unwrap_or(now);
            return Ok(Some(window.saturating_sub(now.duration_since(oldest))));
        }
        calls.push_back(now);
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn slots_cap_the_scope_and_hold_one_per_key() {
        let budget: Arc<dyn SharedBudget> = LocalBudget::new();
        let a = acquire_slot(&budget, "cb", 2, "s1", "run-a").await.unwrap().unwrap();
        // Another holder cannot take a held key; the same holder keeps it.
        assert!(acquire_slot(&budget, "cb", 2, "s1", "run-b").await.unwrap().is_none());
        let a2 = acquire_slot(&budget, "cb", 2, "s1", "run-a").await.unwrap().unwrap();
        let _b = acquire_slot(&budget, "cb", 2, "s2", "run-b").await.unwrap().unwrap();
        assert!(acquire_slot(&budget, "cb", 2, "s3", "run-c").await.unwrap().is_none());
        // Other scopes are independent.
        assert!(acquire_slot(&budget, "other", 1, "s3", "run-c").await.unwrap().is_some());
        // The superseded guard frees nothing; the current one frees the slot.
        drop(a);
        assert!(acquire_slot(&budget, "cb", 2, "s3", "run-c").await.unwrap().is_none());
        drop(a2);
        assert!(acquire_slot(&budget, "cb", 2, "s3", "run-c").await.unwrap().is_some());
    }

    #[tokio::test]
    async fn calls_are_counted_in_a_sliding_window() {
        let budget = LocalBudget::new();
        let window = Duration::from_millis(200);
        assert_eq!(budget.take_call("md", 2, window).await.unwrap(), None);
        assert_eq!(budget.take_call("md", 2, window).await.unwrap(), None);
        let wait = budget.take_call("md", 2, window).await.unwrap().unwrap();
        assert!(wait <= window);
        tokio::time::sleep(wait + Duration::from_millis(5)).await;
        assert_eq!(budget.take_call("md", 2, window).await.unwrap(), None);
    }
}
