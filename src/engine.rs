//! The durable engine: accepts actions, drives their runs through the adapters, and survives
//! restarts.
//!
//! - `submit` writes the action and one run per target in one transaction before the caller
//!   hears `202`.
//! - A claim loop leases due runs from the store and spawns one driver task per run. A driver
//!   resolves the target, then loops `Adapter::step`, writing the checkpoint and command updates
//!   after every step with a write fenced by the lease. Leases are renewed while the driver
//!   lives; a crashed process's runs are claimed again once their leases expire and resume from
//!   their last checkpoint.
//! - Cancels and deadlines raise the run's `StopSignal`, which wakes a sleeping driver and is
//!   seen by the adapter at its next step (and by any wait it races against it).

use std::collections::HashMap;
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use async_trait::async_trait;
use edrgate_adapter::adapter::{FileReader, FileWriter, StopReason, StopSignal};
use edrgate_adapter::http::Backoff;
use edrgate_adapter::{
    Action, ActionRequest, Adapter, AdapterError, CommandState, CommandUpdate, ErrorCode,
    ErrorInfo, FileRef, Journal, Next, OnError, RunContext, RunFiles, Status, Target,
};
use futures::FutureExt;
use sha2::{Digest, Sha256};
use tokio::sync::{Notify, broadcast};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::backends::Backends;
use crate::files::FileStore;
use crate::store::{
    Cursor, Inserted, Lease, ListQuery, NewAction, NewRun, RunRecord, RunWrite, Store, StoreError,
    now_ms,
};

/// Limits of what one action may ask for.
pub const MAX_TARGETS: usize = 1000;
pub const MAX_COMMANDS: usize = 100;
const MAX_COMMENT: usize = 1024;
/// Steps an adapter gets to clean up after a stop when its vendor calls keep failing.
const MAX_STOP_ATTEMPTS: u32 = 3;

#[derive(Clone, Debug)]
pub struct EngineOptions {
    pub lease: Duration,
    pub default_timeout: Duration,
    pub max_timeout: Duration,
    pub max_in_flight: u32,
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
    /// Assembled actions by id, with the store version they were assembled at.
    snapshots: moka::future::Cache<Uuid, (i64, Arc<Action>)>,
    /// Runs this process drives.
    local: Mutex<HashMap<Uuid, LocalRun>>,
    /// Signalled when new work was submitted.
    work: Notify,
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
        Arc::new(Engine {
            budget,
            store,
            files,
            backends: ArcSwap::new(backends),
            opts,
            owner: format!("edrgate-{}", Uuid::now_v7().simple()),
            changes: broadcast::channel(4096).0,
            snapshots: moka::future::Cache::builder()
                // Weighed by commands across runs, the unit whose results take the space
                // (a process list is a few KiB): bounds the cache to roughly 100 MiB.
                .weigher(|_, (_, action): &(i64, Arc<Action>)| {
                    let commands = action.runs.len().max(1) * action.commands.len().max(1);
                    u32::try_from(commands).unwrap_or(u32::MAX)
                })
                .max_capacity(20_000)
                .time_to_idle(Duration::from_secs(600))
                .build(),
            local: Mutex::new(HashMap::new()),
            work: Notify::new(),
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

    pub async fn submit(
        &self,
        tenant: &str,
        request: ActionRequest,
        meta: SubmitMeta,
    ) -> Result<Submitted, ErrorInfo> {
        self.validate(tenant, &request).await?;
        let request_hash = hex::encode(Sha256::digest(
            serde_json::to_vec(&request).map_err(|e| internal("serialize request", e))?,
        ));
        let now = now_ms();
        let timeout =
            request.timeout_seconds.map_or(self.opts.default_timeout, Duration::from_secs);
        let runs = request
            .targets
            .iter()
            .map(|target| {
                let (backend, device_id) = match target {
                    Target::Device { backend, device_id } => {
                        (Some(backend.clone()), Some(device_id.clone()))
                    }
                    Target::Hostname { .. } => (None, None),
                };
                NewRun {
                    id: Uuid::now_v7(),
                    target: target.clone(),
                    backend,
                    device_id,
                    commands: request
                        .commands
                        .iter()
                        .enumerate()
                        .map(|(index, c)| CommandState {
                            index,
                            kind: c.kind(),
                            status: Status::Queued,
                            result: None,
                            error: None,
                            vendor_ref: None,
                            vendor_status: None,
                        })
                        .collect(),
                }
            })
            .collect();
        let action = NewAction {
            id: Uuid::now_v7(),
            tenant: tenant.to_owned(),
            request,
            created_at: now,
            deadline: now + i64::try_from(timeout.as_millis()).unwrap_or(i64::MAX / 2),
            idempotency_key: meta.idempotency_key,
            request_hash: request_hash.clone(),
            request_id: meta.request_id,
            subject: meta.subject,
            runs,
        };
        match self.store.insert_action(&action).await.map_err(store_error)? {
            Inserted::Created => {
                self.work.notify_one();
                let created = self.action(tenant, action.id).await?;
                Ok(Submitted::Created(created))
            }
            Inserted::Existing { id, request_hash: existing } => {
                if existing != request_hash {
                    return Err(ErrorInfo::new(
                        ErrorCode::Conflict,
                        "this Idempotency-Key was used for a different request",
                    ));
                }
                Ok(Submitted::Replayed(self.action(tenant, id).await?))
            }
        }
    }

    /// Checks a request against the limits, the model's rules and the tenant's capabilities,
    /// before anything is stored or sent.
    async fn validate(&self, tenant: &str, request: &ActionRequest) -> Result<(), ErrorInfo> {
        let invalid = |m: String| Err(ErrorInfo::new(ErrorCode::InvalidRequest, m));
        let backends = self.backends();
        if !backends.tenant_exists(tenant) {
            return Err(ErrorInfo::new(
                ErrorCode::Forbidden,
                "the caller's tenant has no backends configured",
            ));
        }
        if request.targets.is_empty() || request.targets.len() > MAX_TARGETS {
            return invalid(format!("targets: between 1 and {MAX_TARGETS} targets are needed"));
        }
        if request.commands.is_empty() || request.commands.len() > MAX_COMMANDS {
            return invalid(format!("commands: between 1 and {MAX_COMMANDS} commands are needed"));
        }
        if request.comment.as_ref().is_some_and(|c| c.len() > MAX_COMMENT) {
            return invalid(format!("comment: at most {MAX_COMMENT} bytes"));
        }
        if let Some(t) = request.timeout_seconds
            && (t == 0 || t > self.opts.max_timeout.as_secs())
        {
            return invalid(format!(
                "timeout_seconds: between 1 and {}",
                self.opts.max_timeout.as_secs()
            ));
        }
        let mut seen = std::collections::HashSet::new();
        for (i, target) in request.targets.iter().enumerate() {
            let ok = match target {
                Target::Hostname { hostname } => {
                    !hostname.trim().is_empty() && hostname.len() <= 255
                }
                Target::Device { backend, device_id } => {
                    !backend.is_empty() && !device_id.trim().is_empty() && device_id.len() <= 255
                }
            };
            if !ok {
                return invalid(format!(
                    "targets[{i}]: hostname or device_id is empty or too long"
                ));
            }
            if !seen.insert(target) {
                return invalid(format!("targets[{i}]: duplicate target"));
            }
            if let Target::Device { backend, .. } = target
                && backends.adapter(tenant, backend).is_none()
            {
                return invalid(format!("targets[{i}]: unknown backend {backend:?}"));
            }
        }
        for (i, command) in request.commands.iter().enumerate() {
            if let Err(m) = command.validate() {
                return invalid(format!("commands[{i}]: {m}"));
            }
            if let Some(file_id) = command.file_id() {
                let known = self.files.meta(tenant, file_id).await.map_err(store_error)?;
                let Some(known) = known else {
                    return invalid(format!("commands[{i}]: unknown file_id {file_id:?}"));
                };
                // A file larger than a backend accepts (Defender's 20 MB library cap) is
                // refused now, before any vendor call, rather than failing the run later.
                for target in &request.targets {
                    let cap = match target {
                        Target::Device { backend, .. } => backends
                            .adapter(tenant, backend)
                            .and_then(|a| a.capabilities().limits.max_upload_bytes),
                        // A hostname may resolve to any backend: refuse only when none takes it.
                        Target::Hostname { .. } => backends
                            .of_tenant(tenant)
                            .map(|(_, a)| a.capabilities().limits.max_upload_bytes)
                            .try_fold(0u64, |max, cap| cap.map(|c| max.max(c))),
                    };
                    if let Some(cap) = cap.filter(|cap| known.size > *cap) {
                        return Err(ErrorInfo::new(
                            ErrorCode::PayloadTooLarge,
                            format!(
                                "commands[{i}]: file {file_id:?} is {} bytes; the backend accepts at most {cap}",
                                known.size
                            ),
                        ));
                    }
                }
            }
        }
        // Every command must be supported where it can run: by the named backend for explicit
        // targets, by at least one of the tenant's backends for hostnames (the backend that
        // resolves it is checked again before the first vendor call).
        for (i, command) in request.commands.iter().enumerate() {
            let kind = command.kind();
            for target in &request.targets {
                let supported = match target {
                    Target::Device { backend, .. } => backends
                        .adapter(tenant, backend)
                        .is_some_and(|a| a.capabilities().supports(kind)),
                    Target::Hostname { .. } => {
                        backends.of_tenant(tenant).any(|(_, a)| a.capabilities().supports(kind))
                    }
                };
                if !supported {
                    let on = match target {
                        Target::Device { backend, .. } => format!("backend {backend:?}"),
                        Target::Hostname { .. } => "any backend of the tenant".to_owned(),
                    };
                    return Err(ErrorInfo::new(
                        ErrorCode::UnsupportedCommand,
                        format!("commands[{i}]: {} is not supported by {on}", kind.as_str()),
                    ));
                }
            }
        }
        Ok(())
    }

    /// The store's change counter and status of the tenant's action (`not_found` for another
    /// tenant's).
    async fn version(&self, tenant: &str, id: Uuid) -> Result<(i64, Status), ErrorInfo> {
        self.store.action_version(tenant, id).await.map_err(store_error)?.ok_or_else(not_found)
    }

    /// The action as the store holds it now.
    ///
    /// Status reads are the hot path (callers poll), and assembling an action costs two queries
    /// and the decoding of every command's result. The store's version of the action (one
    /// cheap query, tenant-checked) says whether the copy assembled last time is still exact,
    /// so the store stays the source of truth and the cache holds across replicas.
    pub async fn action(&self, tenant: &str, id: Uuid) -> Result<Action, ErrorInfo> {
        let (version, _) = self.version(tenant, id).await?;
        if let Some((cached, action)) = self.snapshots.get(&id).await
            && cached == version
        {
            return Ok(Action::clone(&action));
        }
        let (action, version) =
            self.store.action(tenant, id).await.map_err(store_error)?.ok_or_else(not_found)?;
        self.snapshots.insert(id, (version, Arc::new(action.clone()))).await;
        Ok(action)
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
            return self.action(tenant, id).await;
        }
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            match tokio::time::timeout_at(deadline, changes.recv()).await {
                Err(_) => break,
                Ok(Ok(changed)) if changed != id => continue,
                Ok(Err(broadcast::error::RecvError::Closed)) => break,
                // A matching change, or missed messages (lagged): look at the store.
                Ok(_) => {
                    let now = self.store.action_version(tenant, id).await.map_err(store_error)?;
                    if now.is_some_and(|(v, _)| v != version) {
                        break;
                    }
                }
            }
        }
        self.action(tenant, id).await
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

    async fn claim_loop(self: Arc<Self>) {
        loop {
            let in_flight = u32::try_from(lock(&self.local).len()).unwrap_or(u32::MAX);
            let room = self.opts.max_in_flight.saturating_sub(in_flight);
            if room > 0 && !self.shutdown.is_cancelled() {
                match self.store.claim(&self.owner, self.opts.lease, room).await {
                    Ok(leases) => {
                        for lease in leases {
                            self.spawn_driver(lease);
                        }
                    }
                    Err(error) => tracing::error!(%error, "claiming runs failed"),
                }
            }
            tokio::select! {
                () = self.shutdown.cancelled() => return,
                () = self.work.notified() => {}
                () = tokio::time::sleep(Duration::from_millis(500)) => {}
            }
        }
    }

    /// Feeds changes made by other replicas (PostgreSQL NOTIFY) to the long-polls waiting here.
    /// With SQLite there are none: the drivers' own announcements are every change.
    async fn listen_loop(self: Arc<Self>) {
        let retry = Duration::from_secs(1);
        let mut listener = loop {
            match self.store.change_listener().await {
                Ok(Some(listener)) => break listener,
                Ok(None) => return,
                Err(error) => tracing::warn!(%error, "cannot listen for changes; retrying"),
            }
            tokio::select! {
                () = self.shutdown.cancelled() => return,
                () = tokio::time::sleep(retry) => {}
            }
        };
        loop {
            tokio::select! {
                () = self.shutdown.cancelled() => return,
                next = listener.next() => match next {
                    Ok(Some(change)) => {
                        let _ = self.changes.send(change.action_id);
                        if change.cancel {
                            // Cancelled through another replica: stop the runs driven here.
                            self.stop_local_runs(change.action_id, StopReason::Cancelled);
                        }
                    }
                    // Reconnecting: notices sent meanwhile are lost, long-polls end on time.
                    Ok(None) => {}
                    Err(error) => {
                        tracing::warn!(%error, "listening for changes failed; retrying");
                        tokio::time::sleep(retry).await;
                    }
                },
            }
        }
    }

    /// Raises the stop signal of the runs of `action_id` this process drives.
    fn stop_local_runs(&self, action_id: Uuid, reason: StopReason) {
        for run in lock(&self.local).values().filter(|r| r.action_id == action_id) {
            run.stop.stop(reason);
            run.wake.notify_one();
        }
    }

    async fn renew_loop(self: Arc<Self>) {
        let every = self.opts.lease / 3;
        loop {
            tokio::select! {
                () = self.shutdown.cancelled() => return,
                () = tokio::time::sleep(every) => {}
            }
            if let Err(error) = self.store.renew_leases(&self.owner, self.opts.lease).await {
                tracing::error!(%error, "renewing leases failed");
            }
        }
    }

    fn spawn_driver(self: &Arc<Self>, lease: Lease) {
        let engine = Arc::clone(self);
        let run_id = lease.run_id;
        lock(&self.tasks).spawn(async move {
            let driven = AssertUnwindSafe(Arc::clone(&engine).drive(lease.clone())).catch_unwind().await;
            let failed = match driven {
                Ok(Ok(())) => false,
                Ok(Err(error)) => {
                    tracing::error!(run_id = %run_id, %error, "run driver failed; it will be retried");
                    true
                }
                Err(_) => {
                    tracing::error!(run_id = %run_id, "run driver panicked; it will be retried");
                    true
                }
            };
            lock(&engine.local).remove(&run_id);
            if failed {
                // Hand the run back after a pause rather than spinning on a persistent fault.
                let _ = engine.store.release(&lease, now_ms() + 5_000).await;
            }
        });
    }

    /// Drives one run until it finishes, the lease is lost or the process shuts down.
    async fn drive(self: Arc<Self>, lease: Lease) -> Result<(), StoreError> {
        let run = self.store.load_run(lease.run_id).await?;
        if run.status.is_terminal() {
            return self.store.release(&lease, now_ms()).await;
        }
        if run.checkpoint.is_some() {
            // Someone stepped this run before and let its lease lapse (a crash, a killed
            // replica) or handed it back (a shutdown): this process takes it over.
            crate::metrics::run_taken_over(&run.tenant, run.backend.as_deref());
        }
        let stop = StopSignal::new();
        let wake = Arc::new(Notify::new());
        lock(&self.local).insert(
            run.id,
            LocalRun { action_id: run.action_id, stop: stop.clone(), wake: Arc::clone(&wake) },
        );
        // The cancel may have been requested before this process held the run.
        if self.store.cancel_requested(run.action_id).await? {
            stop.stop(StopReason::Cancelled);
        }
        let until_deadline =
            Duration::from_millis(u64::try_from(run.deadline - now_ms()).unwrap_or(0));
        let timer = {
            let (stop, wake) = (stop.clone(), Arc::clone(&wake));
            tokio::spawn(async move {
                tokio::time::sleep(until_deadline).await;
                stop.stop(StopReason::DeadlineExceeded);
                wake.notify_one();
            })
        };
        let driver = Driver {
            engine: &self,
            lease: &lease,
            seen: Mutex::new(Some(visible_view(&run))),
            run: Mutex::new(run),
            adapter: Mutex::new(None),
            stop: &stop,
            wake: &wake,
        };
        let result = driver.run().await;
        timer.abort();
        // Whatever ended the drive, the adapter may drop what it kept in memory for the run.
        if let Some(adapter) = lock(&driver.adapter).take() {
            adapter.run_closed(lease.run_id);
        }
        result
    }
}

/// One run being driven.
struct Driver<'a> {
    engine: &'a Arc<Engine>,
    lease: &'a Lease,
    run: Mutex<RunRecord>,
    /// The adapter driving the run, fixed at its first step: a reload does not move it.
    adapter: Mutex<Option<Arc<dyn Adapter>>>,
    /// What callers last saw of the run, to tell visible writes from checkpoint-only ones.
    seen: Mutex<Option<serde_json::Value>>,
    stop: &'a StopSignal,
    wake: &'a Notify,
}

enum Outcome {
    Continue,
    Finished,
    LeaseLost,
}

impl Driver<'_> {
    async fn run(&self) -> Result<(), StoreError> {
        if !self.resolve().await? {
            return Ok(());
        }
        let (tenant, backend) = {
            let run = lock(&self.run);
            (run.tenant.clone(), run.backend.clone().unwrap_or_default())
        };
        let Some(adapter) = self.engine.backends().adapter(&tenant, &backend).cloned() else {
            let error = ErrorInfo::new(
                ErrorCode::Internal,
                format!("backend {backend:?} is no longer configured"),
            );
            return self.fail(error).await.map(|_| ());
        };
        *lock(&self.adapter) = Some(Arc::clone(&adapter));
        let mut attempt = 0u32;
        let mut stop_attempts = 0u32;
        loop {
            if self.engine.shutdown.is_cancelled() {
                let next = now_ms();
                return self.engine.store.release(self.lease, next).await;
            }
            let (snapshot, checkpoint) = {
                let run = lock(&self.run);
                (run.clone(), run.checkpoint.clone())
            };
            if checkpoint.is_none()
                && let Some(reason) = self.stop.reason()
            {
                // Nothing was sent to the vendor yet: close the run without asking the adapter.
                return self.finish(reason).await.map(|_| ());
            }
            let files = EngineRunFiles { engine: self.engine, run: &snapshot };
            let ctx = RunContext {
                run_id: snapshot.id,
                action_id: snapshot.action_id,
                tenant: &snapshot.tenant,
                device_id: snapshot.device_id.as_deref().unwrap_or_default(),
                commands: &snapshot.request.commands,
                on_error: snapshot.request.on_error,
                comment: snapshot.request.comment.as_deref(),
                stop: self.stop,
                journal: self,
                files: &files,
            };
            let stopped_before = self.stop.reason().is_some();
            let delay = match adapter.step(&ctx, checkpoint).await {
                Ok(step) => {
                    attempt = 0;
                    let done = step.next == Next::Done;
                    let custody = {
                        let mut run = lock(&self.run);
                        apply(&mut run.states, &step.updates);
                        run.checkpoint = Some(step.checkpoint);
                        vendor_refs_of_files(&run.states, &step.updates)
                    };
                    for (file_id, vendor_ref) in custody {
                        if let Err(error) =
                            self.engine.files.note_vendor_ref(&tenant, &file_id, &vendor_ref).await
                        {
                            tracing::warn!(%error, file_id, "cannot record a file's vendor reference");
                        }
                    }
                    match step.next {
                        Next::Done => {
                            let reason = self.stop.reason();
                            return self.close(reason).await.map(|_| ());
                        }
                        Next::After(delay) => {
                            debug_assert!(!done);
                            match self.save(delay).await? {
                                Outcome::LeaseLost => return Ok(()),
                                _ => delay,
                            }
                        }
                    }
                }
                Err(error) => {
                    if let Some(reason) = self.stop.reason() {
                        // Give the adapter a few more steps to cancel vendor work and close its
                        // session; a vendor that stays down must not hold the run open.
                        stop_attempts += 1;
                        tracing::warn!(run_id = %snapshot.id, %error, stop_attempts, "vendor call failed while stopping");
                        if stop_attempts >= MAX_STOP_ATTEMPTS {
                            return self.finish(reason).await.map(|_| ());
                        }
                        Duration::from_millis(250 * u64::from(stop_attempts))
                    } else {
                        if !error.is_retryable() {
                            return self.fail(error.info).await.map(|_| ());
                        }
                        attempt += 1;
                        let delay = Backoff::STANDARD.delay(attempt.min(8), error.retry_after);
                        tracing::warn!(run_id = %snapshot.id, %error, attempt, ?delay, "vendor call failed; retrying");
                        delay
                    }
                }
            };
            // A stop that arrived during the step must not wait for the delay.
            if !stopped_before && self.stop.reason().is_some() {
                continue;
            }
            tokio::select! {
                () = tokio::time::sleep(delay) => {}
                () = self.wake.notified() => {}
            }
        }
    }

    /// Resolves the run's target once. `false` when the run ended (resolution failed, the
    /// resolved backend cannot run the commands, or the run was stopped meanwhile).
    async fn resolve(&self) -> Result<bool, StoreError> {
        let (tenant, target, resolved) = {
            let run = lock(&self.run);
            (
                run.tenant.clone(),
                run.target.clone(),
                run.backend.is_some() && run.device_id.is_some(),
            )
        };
        if resolved {
            return Ok(true);
        }
        let mut attempt = 0;
        loop {
            if let Some(reason) = self.stop.reason() {
                self.finish(reason).await?;
                return Ok(false);
            }
            let backends = self.engine.backends();
            match backends.resolve(&tenant, &target).await {
                Ok((backend, device_id, hostname)) => {
                    let unsupported = {
                        let adapter = backends.adapter(&tenant, &backend);
                        let run = lock(&self.run);
                        run.request
                            .commands
                            .iter()
                            .map(|c| c.kind())
                            .find(|k| !adapter.is_some_and(|a| a.capabilities().supports(*k)))
                    };
                    {
                        let mut run = lock(&self.run);
                        run.backend = Some(backend.clone());
                        run.device_id = Some(device_id);
                        run.hostname = hostname;
                    }
                    if let Some(kind) = unsupported {
                        let error = ErrorInfo::new(
                            ErrorCode::UnsupportedCommand,
                            format!(
                                "{} is not supported by backend {backend:?}, where the target resolved",
                                kind.as_str()
                            ),
                        );
                        self.fail(error).await?;
                        return Ok(false);
                    }
                    return Ok(!matches!(self.save(Duration::ZERO).await?, Outcome::LeaseLost));
                }
                Err(e) if e.is_retryable() => {
                    attempt += 1;
                    let delay = Backoff::STANDARD.delay(attempt.min(8), e.retry_after);
                    tracing::warn!(error = %e, ?delay, "device resolution failed; retrying");
                    tokio::select! {
                        () = tokio::time::sleep(delay) => {}
                        () = self.wake.notified() => {}
                    }
                }
                Err(e) => {
                    {
                        let mut run = lock(&self.run);
                        run.error = Some(e.info.clone());
                    }
                    self.fail(e.info).await?;
                    return Ok(false);
                }
            }
        }
    }

    /// Fails the first unfinished command with `error` and skips the rest.
    async fn fail(&self, error: ErrorInfo) -> Result<Outcome, StoreError> {
        {
            let mut run = lock(&self.run);
            let mut first = true;
            for state in run.states.iter_mut().filter(|s| !s.status.is_terminal()) {
                if first {
                    state.status = Status::Failed;
                    state.error = Some(error.clone());
                    first = false;
                } else {
                    state.status = Status::Skipped;
                }
            }
        }
        self.close(None).await
    }

    /// Closes a stopped run: unfinished commands take the stop's status.
    async fn finish(&self, reason: StopReason) -> Result<Outcome, StoreError> {
        self.close(Some(reason)).await
    }

    /// Writes the final state and releases the lease.
    async fn close(&self, reason: Option<StopReason>) -> Result<Outcome, StoreError> {
        {
            let mut run = lock(&self.run);
            let on_error = run.request.on_error;
            let mut failed_before = false;
            for state in run.states.iter_mut() {
                if !state.status.is_terminal() {
                    if let Some(reason) = reason {
                        state.status = reason.status();
                        state.error = Some(reason.error());
                    } else if failed_before && on_error == OnError::Stop {
                        state.status = Status::Skipped;
                    } else {
                        state.status = Status::Failed;
                        state.error = Some(ErrorInfo::new(
                            ErrorCode::Internal,
                            "the adapter finished the run without reporting this command",
                        ));
                    }
                }
                failed_before |= state.status == Status::Failed;
            }
            run.status = Status::of_run(run.states.iter().map(|s| s.status));
        }
        let outcome = self.save(Duration::ZERO).await?;
        self.engine.store.release(self.lease, now_ms()).await?;
        if !matches!(outcome, Outcome::LeaseLost) {
            let run = lock(&self.run);
            crate::metrics::run_finished(&run.tenant, run.backend.as_deref(), run.status);
        }
        Ok(match outcome {
            Outcome::LeaseLost => Outcome::LeaseLost,
            _ => Outcome::Finished,
        })
    }

    /// Writes the run (fenced), extending the lease, and announces the change.
    async fn save(&self, next_in: Duration) -> Result<Outcome, StoreError> {
        let run = {
            let mut run = lock(&self.run);
            if !run.status.is_terminal() {
                run.status = Status::of_run(run.states.iter().map(|s| s.status));
                // A terminal status comes only from `close`: a run whose commands are all
                // done is still running until the adapter says so (it may need to clean up).
                if run.status.is_terminal() {
                    run.status = Status::Running;
                }
            }
            run.clone()
        };
        let view = visible_view(&run);
        let visible = {
            let mut seen = lock(&self.seen);
            let changed = seen.as_ref() != Some(&view);
            *seen = Some(view);
            changed
        };
        let now = now_ms();
        let write = RunWrite {
            backend: run.backend.as_deref(),
            device_id: run.device_id.as_deref(),
            hostname: run.hostname.as_deref(),
            status: run.status,
            error: run.error.as_ref(),
            states: &run.states,
            checkpoint: run.checkpoint.as_ref(),
            next_step_at: now + i64::try_from(next_in.as_millis()).unwrap_or(0),
            lease_until: now + i64::try_from(self.engine.opts.lease.as_millis()).unwrap_or(0),
            visible,
        };
        if !self.engine.store.save_run(self.lease, &write).await? {
            tracing::warn!(run_id = %run.id, "lease lost; another process drives this run now");
            return Ok(Outcome::LeaseLost);
        }
        if visible {
            let _ = self.engine.changes.send(run.action_id);
        }
        Ok(Outcome::Continue)
    }
}

#[async_trait]
impl Journal for Driver<'_> {
    async fn record(
        &self,
        checkpoint: &serde_json::Value,
        updates: &[CommandUpdate],
    ) -> Result<(), AdapterError> {
        {
            let mut run = lock(&self.run);
            apply(&mut run.states, updates);
            run.checkpoint = Some(checkpoint.clone());
        }
        match self.save(Duration::ZERO).await {
            Ok(Outcome::LeaseLost) => {
                Err(AdapterError::lease_lost())
            }
            Ok(_) => Ok(()),
            Err(e) => Err(AdapterError::internal(format!("cannot record intent: {e}"))),
        }
    }
}

/// The file store as a run sees it: its tenant's files, with custody filled in.
struct EngineRunFiles<'a> {
    engine: &'a Engine,
    run: &'a RunRecord,
}

#[async_trait]
impl RunFiles for EngineRunFiles<'_> {
    async fn create(&self, index: usize, name: &str) -> Result<Box<dyn FileWriter>, AdapterError> {
        let run = self.run;
        let origin = crate::store::FileOrigin {
            action_id: Some(run.action_id),
            run_id: Some(run.id),
            command_index: Some(index),
            backend: run.backend.clone(),
            device_id: run.device_id.clone(),
            hostname: run.hostname.clone(),
            vendor_ref: run.states.get(index).and_then(|s| s.vendor_ref.clone()),
            remote_path: run.request.commands.get(index).and_then(remote_path),
            ..Default::default()
        };
        // Fetched evidence has no size cap: a memory dump is as large as the endpoint's RAM.
        Ok(Box::new(self.engine.files.create(&run.tenant, name, origin, None).await?))
    }

    async fn open(&self, file_id: &str) -> Result<(FileRef, FileReader), AdapterError> {
        // Checked whole before a byte goes to the vendor: a corrupted tool fails the command
        // at once (not retryable) instead of failing every upload attempt on its last chunk.
        // The stream handed over is verified again as it is read.
        self.engine.files.verify(&self.run.tenant, file_id).await?;
        let (meta, content) = self.engine.files.open(&self.run.tenant, file_id, None).await?;
        Ok((
            FileRef { file_id: meta.id, name: meta.name, size: meta.size, sha256: meta.sha256 },
            Box::new(tokio_util::io::StreamReader::new(content)),
        ))
    }
}

/// The endpoint path a command reads a result from, when the caller named it.
fn remote_path(command: &edrgate_adapter::Command) -> Option<String> {
    use edrgate_adapter::Command;
    match command {
        Command::GetFile { path, .. } => Some(path.clone()),
        Command::MemoryDump { path, .. } => path.clone(),
        Command::Execute { output_file, .. } => output_file.clone(),
        _ => None,
    }
}

/// What a caller sees of a run: a write that leaves it unchanged is checkpoint-only.
fn visible_view(run: &RunRecord) -> serde_json::Value {
    serde_json::json!([run.status, run.states, run.error, run.backend, run.device_id, run.hostname])
}

/// `(file id, vendor reference)` of the files that `updates` report as results: a file is
/// written before the vendor names the command that produced it, so its custody learns the
/// reference from the command's state once the result is in.
fn vendor_refs_of_files(
    states: &[CommandState],
    updates: &[CommandUpdate],
) -> Vec<(String, String)> {
    use edrgate_adapter::CommandResult;
    let mut out = Vec::new();
    for u in updates {
        let Some(vendor_ref) = states.get(u.index).and_then(|s| s.vendor_ref.as_ref()) else {
            continue;
        };
        let file = match &u.result {
            Some(CommandResult::File { file }) => Some(file),
            Some(CommandResult::Execution { output_file, .. }) => output_file.as_ref(),
            Some(CommandResult::MemoryDump { file, .. }) => file.as_ref(),
            _ => None,
        };
        if let Some(file) = file {
            out.push((file.file_id.clone(), vendor_ref.clone()));
        }
    }
    out
}

fn apply(states: &mut [CommandState], updates: &[CommandUpdate]) {
    for u in updates {
        let Some(state) = states.get_mut(u.index) else {
            tracing::error!(
                index = u.index,
                "adapter reported an update for a command that does not exist"
            );
            continue;
        };
        // A terminal state is final: a late or replayed update must not reopen it.
        if state.status.is_terminal() {
            continue;
        }
        state.status = u.status;
        if u.result.is_some() {
            state.result.clone_from(&u.result);
        }
        if u.error.is_some() {
            state.error.clone_from(&u.error);
        }
        if u.vendor_ref.is_some() {
            state.vendor_ref.clone_from(&u.vendor_ref);
        }
        if u.vendor_status.is_some() {
            state.vendor_status.clone_from(&u.vendor_status);
        }
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
