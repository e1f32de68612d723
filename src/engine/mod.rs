//! The durable engine: accepts actions, drives their runs through the adapters, and survives
//! restarts.
//!
//! - `submit` writes the action and one run per target in one transaction before the caller
//!   hears `202`.
//! - A claim loop leases due runs from the store and spawns one driver task per run, no more
//!   per backend than the vendor lets run at once (`Adapter::runs_at_once`). A driver
//!   resolves the target, then loops `Adapter::step`, writing the checkpoint and command updates
//!   after every step with a write fenced by the lease. Leases are renewed while the driver
//!   lives; a crashed process's runs are claimed again once their leases expire and resume from
//!   their last checkpoint.
//! - Cancels and deadlines raise the run's `StopSignal`, which wakes a sleeping driver and is
//!   seen by the adapter at its next step (and by any wait it races against it).
//!
//! One file per concern: `submit` (validation and the one-transaction write), `actions`
//! (reads through the cache of answers, long-polls, cancels), `leases` (the claim, renew and
//! change-listener loops, and spawning drivers), `driver` (one run driven step by step, its
//! fenced writes and its journal), `deadlines` (one timer for every driven run's deadline)
//! and `run_files` (the file store as an adapter sees it).
//!
//! **Architecture Invariant:** the engine knows no HTTP: it depends on `store`, `files`,
//! `backends` and the `metrics` leaf, never on `api` (`tests/layout.rs` checks the module
//! graph for cycles).

mod actions;
mod deadlines;
mod driver;
mod leases;
mod run_files;
mod submit;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use edrgate_adapter::adapter::StopSignal;
use edrgate_adapter::{Action, ErrorCode, ErrorInfo};
use tokio::sync::{Notify, broadcast};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::backends::Backends;
use crate::files::FileStore;
use crate::store::{Store, StoreError};

/// Limits of what one action may ask for.
pub const MAX_TARGETS: usize = 1000;
pub const MAX_COMMANDS: usize = 100;
/// Longest `comment`, in characters.
pub const MAX_COMMENT: usize = 1024;
/// Longest hostname or device id of a target, in characters.
pub const MAX_TARGET_NAME: usize = 255;
/// Largest `timeout_seconds` a request may carry; it is then capped at the configured
/// maximum (`EngineOptions::max_timeout`).
pub const MAX_TIMEOUT_SECONDS: u64 = u32::MAX as u64;

#[derive(Clone, Debug)]
pub struct EngineOptions {
    pub lease: Duration,
    pub default_timeout: Duration,
    pub max_timeout: Duration,
    pub max_in_flight: u32,
}

impl EngineOptions {
    /// Runs of one (tenant, backend) this process drives at once: a quarter of
    /// `max_in_flight`, so that one tenant's fan-out on one backend leaves room for the work
    /// of every other. The runs beyond it wait in the store, not in memory.
    pub fn max_in_flight_per_backend(&self) -> u32 {
        self.max_in_flight.div_ceil(4).max(1)
    }
}

impl Default for EngineOptions {
    fn default() -> Self {
        EngineOptions {
            lease: Duration::from_secs(30),
            default_timeout: Duration::from_secs(3600),
            max_timeout: Duration::from_secs(7 * 24 * 3600),
            max_in_flight: 5000,
        }
    }
}

/// Who submitted, for the record.
#[derive(Clone, Debug, Default)]
pub struct SubmitMeta {
    pub idempotency_key: Option<String>,
    pub request_id: Option<String>,
    pub subject: Option<String>,
}

pub enum Submitted {
    Created(Action),
    /// A retry of an earlier submission with the same `Idempotency-Key`.
    Replayed(Action),
}

pub struct Engine {
    store: Store,
    files: FileStore,
    /// Swapped whole by a configuration reload; runs being driven keep their adapter.
    backends: ArcSwap<Backends>,
    opts: EngineOptions,
    /// This process's lease owner id.
    owner: String,
    /// Ids of actions that changed, for long-polls.
    changes: broadcast::Sender<Uuid>,
    /// The last answer for each action, kept exact by `changes` (`actions::Snapshots`).
    snapshots: actions::Snapshots,
    /// Runs this process drives.
    local: Mutex<HashMap<Uuid, LocalRun>>,
    /// Signalled when new work was submitted.
    work: Notify,
    /// Actions submitted here whose runs the claim loop has not tried yet: claimed first.
    fresh: Mutex<Vec<Uuid>>,
    /// When a claim last looked at every due run (`leases::SWEEP_EVERY`).
    last_sweep: Mutex<Option<std::time::Instant>>,
    /// The deadlines of the runs driven here, watched by one timer.
    deadlines: deadlines::Deadlines,
    /// The vendor budget shared with the other replicas, handed to every adapter.
    budget: Arc<dyn edrgate_adapter::SharedBudget>,
    shutdown: CancellationToken,
    tasks: Mutex<JoinSet<()>>,
}

#[derive(Clone)]
struct LocalRun {
    action_id: Uuid,
    stop: StopSignal,
    wake: Arc<Notify>,
}

impl Engine {
    pub fn new(
        store: Store,
        files: FileStore,
        backends: Arc<Backends>,
        opts: EngineOptions,
    ) -> Arc<Engine> {
        let shutdown = CancellationToken::new();
        let budget = store.shared_budget(shutdown.clone());
        for (_, _, adapter) in backends.all() {
            adapter.use_shared_budget(Arc::clone(&budget));
        }
        let changes = broadcast::channel(4096).0;
        Arc::new(Engine {
            budget,
            store,
            files,
            backends: ArcSwap::new(backends),
            opts,
            owner: format!("edrgate-{}", Uuid::now_v7().simple()),
            snapshots: actions::Snapshots::new(&changes),
            changes,
            local: Mutex::new(HashMap::new()),
            work: Notify::new(),
            fresh: Mutex::new(Vec::new()),
            last_sweep: Mutex::new(None),
            deadlines: deadlines::Deadlines::default(),
            shutdown,
            tasks: Mutex::new(JoinSet::new()),
        })
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    pub fn files(&self) -> &FileStore {
        &self.files
    }

    /// The current backends and routing.
    pub fn backends(&self) -> Arc<Backends> {
        self.backends.load_full()
    }

    /// Installs reloaded backends: new actions resolve and run with them, runs being driven
    /// finish on the adapter they started with.
    pub fn replace_backends(&self, backends: Arc<Backends>) {
        for (_, _, adapter) in backends.all() {
            adapter.use_shared_budget(Arc::clone(&self.budget));
        }
        self.backends.store(backends);
    }

    /// Starts claiming and driving runs.
    pub fn start(self: &Arc<Self>) {
        let mut tasks = lock(&self.tasks);
        tasks.spawn(Arc::clone(self).claim_loop());
        tasks.spawn(Arc::clone(self).renew_loop());
        tasks.spawn(Arc::clone(self).listen_loop());
        tasks.spawn(Arc::clone(self).invalidate_loop());
        tasks.spawn(Arc::clone(self).deadline_loop());
    }

    /// Graceful stop: no new claims, drivers finish their current step and hand their runs
    /// back (leases released) so the next process resumes them at once.
    pub async fn shutdown(&self, grace: Duration) {
        self.shutdown.cancel();
        for run in lock(&self.local).values() {
            run.wake.notify_one();
        }
        let mut tasks = std::mem::take(&mut *lock(&self.tasks));
        let drained =
            tokio::time::timeout(grace, async { while tasks.join_next().await.is_some() {} }).await;
        if drained.is_err() {
            tasks.abort_all();
        }
        if let Err(error) = self.store.release_leases(&self.owner).await {
            tracing::warn!(%error, "could not release leases at shutdown");
        }
        // The runs are handed back: their vendor budget goes with them, at once.
        self.budget.release_all().await;
    }

    /// Stops every task at once without releasing anything, as a crash would. For tests of
    /// crash recovery.
    pub fn kill(&self) {
        self.shutdown.cancel();
        lock(&self.tasks).abort_all();
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Every critical section here is a few assignments; a poisoned lock still holds
    // consistent data.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn not_found() -> ErrorInfo {
    ErrorInfo::new(ErrorCode::NotFound, "no such action")
}

fn store_error(error: StoreError) -> ErrorInfo {
    tracing::error!(%error, "store failure");
    ErrorInfo::new(ErrorCode::Internal, "internal error")
}

fn internal(what: &str, error: impl std::fmt::Display) -> ErrorInfo {
    tracing::error!(%error, what, "internal failure");
    ErrorInfo::new(ErrorCode::Internal, "internal error")
}
