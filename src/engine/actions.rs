//! Reading actions (from the cache of answers, kept exact by the engine's announcements of
//! changes, or checked against the store's version), long-polls on their changes, listing, and
//! cancels.
//!
//! **The cache of answers.** Status reads are the hot path (callers poll), and assembling an
//! action costs two queries, the decoding of every command's result and a serialization. Per
//! action id, [`Snapshots`] keeps the last answer: the tenant, the store version, the status,
//! the action and its JSON. An entry is served without any query only while this process is
//! certain it missed no change of the action:
//!
//! - every visible change of an action is announced on the engine's `changes` (local writes,
//!   and on PostgreSQL other replicas' through NOTIFY, fed in by the listener). Each announced id
//!   bumps a counter of its stripe (`STRIPES` counters, by the id's random bits); an entry
//!   carries the counter of its stripe as read *before* the store was read for it, and is valid
//!   only while the counter is unchanged. Announcements are taken from the receiver by every
//!   read before it looks at an entry (and by a task between reads), so a change announced
//!   before a read began is never missed by it;
//! - missed announcements (the receiver lagged) and the PostgreSQL listener being disconnected
//!   or reconnecting (notices meanwhile are lost) end the current *epoch*; an entry carries the
//!   epoch it was made in, and epoch 0 (no listener yet, or reconnecting) makes none valid.
//!
//! And at most for `RECHECK_AFTER` (1 s) since the store was last asked: a change nobody
//! announces (the retention sweep deleting a finished action) is visible within that bound.
//!
//! An entry that is not valid is checked against the store's version (one cheap query) and
//! stamped again when still exact, or replaced. The tenant is checked from memory too: another
//! tenant's id is `not_found`. The cache is bounded by the JSON's bytes (64 MiB; the parsed
//! action next to it takes about as much again).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use edrgate_adapter::adapter::StopReason;
use edrgate_adapter::{Action, ErrorCode, ErrorInfo, Status};
use tokio::sync::broadcast;
use tokio::sync::broadcast::error::{RecvError, TryRecvError};
use uuid::Uuid;

use super::{Engine, internal, lock, not_found, store_error};
use crate::store::{Cursor, ListQuery};

/// Counters of announced changes, by stripe of action ids.
const STRIPES: usize = 4096;
/// How long an entry is served from memory before the store is asked again (one version
/// query): a bound on what a change nobody announced (the retention sweep deleting a finished
/// action) can leave visible.
const RECHECK_AFTER: Duration = Duration::from_secs(1);
/// Bytes of JSON the cache of answers holds at most.
const MAX_CACHED_JSON: u64 = 64 * 1024 * 1024;

/// The last answer for an action, and when it was known exact.
#[derive(Clone)]
pub(super) struct Snapshot {
    tenant: Arc<str>,
    version: i64,
    status: Status,
    action: Arc<Action>,
    json: Bytes,
    /// The epoch it was made (or last checked) in; 0 is never valid.
    epoch: u64,
    /// Its stripe's counter of announced changes as read before the store was.
    seq: u64,
    /// When the store was read (or asked for the version) for it, at the latest.
    checked: Instant,
}

/// The cache of answers and what keeps it exact (see the module's documentation).
pub(super) struct Snapshots {
    entries: moka::future::Cache<Uuid, Arc<Snapshot>>,
    /// The announcements of changes not yet counted.
    pending: Mutex<broadcast::Receiver<Uuid>>,
    stripes: Box<[AtomicU64]>,
    /// The current epoch; 0 while changes could be missed (no listener).
    epoch: AtomicU64,
    last_epoch: AtomicU64,
}

impl Snapshots {
    /// Counts the announcements of `changes` from now on. Uncertain (epoch 0) until the
    /// listener says otherwise ([`Snapshots::certain`]).
    pub(super) fn new(changes: &broadcast::Sender<Uuid>) -> Snapshots {
        Snapshots {
            entries: moka::future::Cache::builder()
                .weigher(|_, s: &Arc<Snapshot>| u32::try_from(s.json.len()).unwrap_or(u32::MAX))
                .max_capacity(MAX_CACHED_JSON)
                .time_to_idle(Duration::from_secs(600))
                .build(),
            pending: Mutex::new(changes.subscribe()),
            stripes: (0..STRIPES).map(|_| AtomicU64::new(0)).collect(),
            epoch: AtomicU64::new(0),
            last_epoch: AtomicU64::new(0),
        }
    }

    fn stripe(&self, id: Uuid) -> &AtomicU64 {
        // The low bits of a UUIDv7 are random.
        &self.stripes[(id.as_u128() as usize) % STRIPES]
    }

    /// Counts the announcements received so far; returns their ids (to free their entries).
    /// Missed announcements end the epoch.
    fn drain(&self) -> Vec<Uuid> {
        let mut ids = Vec::new();
        let mut pending = lock(&self.pending);
        loop {
            match pending.try_recv() {
                Ok(id) => {
                    self.stripe(id).fetch_add(1, Ordering::SeqCst);
                    ids.push(id);
                }
                Err(TryRecvError::Lagged(_)) => self.next_epoch(),
                Err(TryRecvError::Empty | TryRecvError::Closed) => return ids,
            }
        }
    }

    /// Ends the current epoch (unless uncertain anyway): no entry made so far is valid.
    fn next_epoch(&self) {
        let current = self.epoch.load(Ordering::SeqCst);
        if current != 0 {
            let next = self.last_epoch.fetch_add(1, Ordering::SeqCst) + 1;
            // Lost to a concurrent change of epoch: that one ended this epoch too.
            let _ = self.epoch.compare_exchange(current, next, Ordering::SeqCst, Ordering::SeqCst);
        }
    }

    /// Changes may go unnoticed from now on (the listener is not connected): entries are
    /// checked against the store until [`Snapshots::certain`].
    pub(super) fn uncertain(&self) {
        self.epoch.store(0, Ordering::SeqCst);
    }

    /// Every change is announced from now on (listening, or no other replica to listen to):
    /// a new epoch begins, entries made before it are checked against the store once.
    pub(super) fn certain(&self) {
        let next = self.last_epoch.fetch_add(1, Ordering::SeqCst) + 1;
        self.epoch.store(next, Ordering::SeqCst);
    }

    /// (epoch, stripe counter) now, after counting the announcements received: what an entry
    /// made from a store read that starts after this call is stamped with.
    fn stamp(&self, id: Uuid) -> (u64, u64) {
        self.drain();
        (self.epoch.load(Ordering::SeqCst), self.stripe(id).load(Ordering::SeqCst))
    }

    /// Keeps `snapshot` unless the entry there is of a newer version.
    async fn keep(&self, id: Uuid, snapshot: Arc<Snapshot>) {
        if let Some(there) = self.entries.get(&id).await
            && there.version > snapshot.version
        {
            return;
        }
        self.entries.insert(id, snapshot).await;
    }
}

impl Engine {
    /// The store's change counter and status of the tenant's action (`not_found` for another
    /// tenant's).
    async fn version(&self, tenant: &str, id: Uuid) -> Result<(i64, Status), ErrorInfo> {
        self.store.action_version(tenant, id).await.map_err(store_error)?.ok_or_else(not_found)
    }

    /// The last answer for the tenant's action, exact as of this call (of at least version
    /// `at_least` when given): from memory when no change could have been missed, else
    /// checked against the store's version, else assembled from the store.
    async fn snapshot(
        &self,
        tenant: &str,
        id: Uuid,
        at_least: Option<i64>,
    ) -> Result<Arc<Snapshot>, ErrorInfo> {
        let cache = &self.snapshots;
        let (epoch, seq) = cache.stamp(id);
        let checked = Instant::now();
        let cached = cache.entries.get(&id).await;
        if let Some(cached) = cached {
            if *cached.tenant != *tenant {
                return Err(not_found());
            }
            if epoch != 0
                && cached.epoch == epoch
                && cached.seq == seq
                && checked.saturating_duration_since(cached.checked) < RECHECK_AFTER
                && at_least.is_none_or(|v| cached.version >= v)
            {
                return Ok(cached);
            }
            let (version, _) = self.version(tenant, id).await?;
            if cached.version == version {
                let again = Arc::new(Snapshot { epoch, seq, checked, ..Snapshot::clone(&cached) });
                cache.keep(id, Arc::clone(&again)).await;
                return Ok(again);
            }
        }
        let (action, version) =
            self.store.action(tenant, id).await.map_err(store_error)?.ok_or_else(not_found)?;
        let json = serde_json::to_vec(&action).map_err(|e| internal("serializing an action", e))?;
        let snapshot = Arc::new(Snapshot {
            tenant: Arc::from(tenant),
            version,
            status: action.status,
            action: Arc::new(action),
            json: Bytes::from(json),
            epoch,
            seq,
            checked,
        });
        cache.keep(id, Arc::clone(&snapshot)).await;
        Ok(snapshot)
    }

    /// The action as the store holds it now (see the module's documentation for the cache).
    pub async fn action(&self, tenant: &str, id: Uuid) -> Result<Action, ErrorInfo> {
        Ok(Action::clone(&self.snapshot(tenant, id, None).await?.action))
    }

    /// The action's JSON (`GET /v1/actions/{id}`'s body), as [`Engine::action`] would
    /// serialize it; for an unchanged action, without a query.
    pub async fn action_json(&self, tenant: &str, id: Uuid) -> Result<Bytes, ErrorInfo> {
        Ok(self.snapshot(tenant, id, None).await?.json.clone())
    }

    /// The action's status and JSON, as [`Engine::action_json`].
    pub async fn action_status_json(
        &self,
        tenant: &str,
        id: Uuid,
    ) -> Result<(Status, Bytes), ErrorInfo> {
        let snapshot = self.snapshot(tenant, id, None).await?;
        Ok((snapshot.status, snapshot.json.clone()))
    }

    /// Counts the announcements of changes between reads, so that the receiver of the cache
    /// of answers does not lag (which would end the epoch) and the entries of changed actions
    /// are freed.
    pub(super) async fn invalidate_loop(self: Arc<Self>) {
        let mut wake = self.changes.subscribe();
        loop {
            tokio::select! {
                () = self.shutdown.cancelled() => return,
                received = wake.recv() => if let Err(RecvError::Closed) = received { return },
            }
            while wake.try_recv().is_ok() {}
            for id in self.snapshots.drain() {
                self.snapshots.entries.invalidate(&id).await;
            }
        }
    }

    /// The action once it changed, or after `wait` (long-poll). A finished action is returned
    /// at once.
    pub async fn wait_action(
        &self,
        tenant: &str,
        id: Uuid,
        wait: Duration,
    ) -> Result<Action, ErrorInfo> {
        let mut changes = self.changes.subscribe();
        let (version, status) = self.version(tenant, id).await?;
        if status.is_terminal() {
            return Ok(Action::clone(&self.snapshot(tenant, id, Some(version)).await?.action));
        }
        let deadline = tokio::time::Instant::now() + wait;
        let mut seen = version;
        loop {
            match tokio::time::timeout_at(deadline, changes.recv()).await {
                Err(_) => break,
                Ok(Ok(changed)) if changed != id => continue,
                Ok(Err(RecvError::Closed)) => break,
                // A matching change, or missed messages (lagged): look at the store.
                Ok(_) => {
                    let now = self.store.action_version(tenant, id).await.map_err(store_error)?;
                    if let Some((now, _)) = now
                        && now != version
                    {
                        seen = now;
                        break;
                    }
                }
            }
        }
        // At least as new as the version seen in the store.
        Ok(Action::clone(&self.snapshot(tenant, id, Some(seen)).await?.action))
    }

    /// Ids of actions that change from now on, here or (PostgreSQL) on another replica; a
    /// lagging receiver missed some and should look at the store.
    pub fn subscribe_changes(&self) -> broadcast::Receiver<Uuid> {
        self.changes.subscribe()
    }

    pub async fn list(
        &self,
        tenant: &str,
        query: &ListQuery,
    ) -> Result<(Vec<Action>, Option<Cursor>), ErrorInfo> {
        self.store.list(tenant, query).await.map_err(store_error)
    }

    /// Requests a cancel. Queued work is dropped, running commands are cancelled at the vendor
    /// where it allows; a finished action is a conflict.
    pub async fn cancel(&self, tenant: &str, id: Uuid) -> Result<Action, ErrorInfo> {
        let (_, status) = self.version(tenant, id).await?;
        if status.is_terminal() {
            return Err(ErrorInfo::new(
                ErrorCode::Conflict,
                format!("the action already finished ({})", status.as_str()),
            ));
        }
        self.store.request_cancel(tenant, id).await.map_err(store_error)?.ok_or_else(not_found)?;
        self.stop_local_runs(id, StopReason::Cancelled);
        let _ = self.changes.send(id);
        self.work.notify_one();
        self.action(tenant, id).await
    }
}
