//! One run driven: its target resolved once, then `Adapter::step` in a loop, the checkpoint
//! and command updates written after every step (fenced by the lease), retries with back-off,
//! a few cleanup steps after a stop, and the final state. The driver is also the run's
//! [`Journal`]: intents are written before the adapter's side effects.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use edrgate_adapter::adapter::{StopReason, StopSignal};
use edrgate_adapter::http::Backoff;
use edrgate_adapter::{
    Adapter, AdapterError, Command, CommandKind, CommandState, CommandUpdate, DeviceSupport,
    ErrorCode, ErrorInfo, Journal, Next, OnError, RunContext, Status, Target,
};
use tokio::sync::Notify;

use super::run_files::EngineRunFiles;
use super::{Engine, lock};
use crate::store::{Lease, RunRecord, RunWrite, StoreError, now_ms};

/// Steps an adapter gets to clean up after a stop when its vendor calls keep failing.
const MAX_STOP_ATTEMPTS: u32 = 3;

impl Engine {
    /// Drives one run until it finishes, the lease is lost or the process shuts down. `stop`
    /// and `wake` are the run's entry in `local` (made when it was claimed).
    pub(super) async fn drive(
        self: Arc<Self>,
        lease: Lease,
        stop: StopSignal,
        wake: Arc<Notify>,
    ) -> Result<(), StoreError> {
        let run = self.store.load_run(lease.run_id).await?;
        if run.status.is_terminal() {
            return self.store.release(&lease, now_ms()).await;
        }
        if run.checkpoint.is_some() {
            // Someone stepped this run before and let its lease lapse (a crash, a killed
            // replica) or handed it back (a shutdown): this process takes it over.
            crate::metrics::run_taken_over(&run.tenant, run.backend.as_deref());
        }
        // The cancel may have been requested before this process held the run.
        if run.cancel_requested || self.store.cancel_requested(run.action_id).await? {
            stop.stop(StopReason::Cancelled);
        }
        // A run claimed past its deadline (after a restart, say) is stopped before its first
        // step here, not after a timer that might lose the race with it.
        if run.deadline <= now_ms() {
            stop.stop(StopReason::DeadlineExceeded);
        }
        // One timer watches every run's deadline (`deadlines`), not a task per driver.
        let deadline = run.deadline;
        self.deadlines.watch(lease.run_id, deadline);
        let driver = Driver {
            engine: &self,
            lease: &lease,
            seen: Mutex::new(Some(visible_view(&run))),
            // None stored yet: the first write stores every result it has (results a row stored
            // before migration 0023 kept inline move to their own rows then).
            stored_results: Mutex::new(vec![false; run.states.len()]),
            run: Mutex::new(run),
            adapter: Mutex::new(None),
            stop: &stop,
            wake: &wake,
        };
        let result = driver.run().await;
        self.deadlines.unwatch(lease.run_id, deadline);
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
    /// Per command, whether its final result is stored: a write sends only the others, so
    /// a long run's steps do not rewrite the results before them.
    stored_results: Mutex<Vec<bool>>,
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
            let settled = settled(&snapshot.states);
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
                settled: &settled,
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

    /// Resolves the run's target and checks its commands against what the device can run,
    /// once, before the first step. `false` when the run ended (resolution failed, the
    /// resolved device can run none of the commands left, or the run was stopped meanwhile).
    async fn resolve(&self) -> Result<bool, StoreError> {
        let (tenant, target, kinds) = {
            let run = lock(&self.run);
            let kinds: Vec<CommandKind> = run.request.commands.iter().map(Command::kind).collect();
            if run.checkpoint.is_some() {
                return Ok(true);
            }
            // An explicit target, or a hostname resolved before a restart: its device is
            // looked up by id.
            let target = match (&run.backend, &run.device_id) {
                (Some(backend), Some(device_id)) => {
                    Target::Device { backend: backend.clone(), device_id: device_id.clone() }
                }
                _ => run.target.clone(),
            };
            (run.tenant.clone(), target, kinds)
        };
        let mut attempt = 0;
        loop {
            if let Some(reason) = self.stop.reason() {
                self.finish(reason).await?;
                return Ok(false);
            }
            let backends = self.engine.backends();
            match backends.resolve(&tenant, &target, &kinds).await {
                Ok((backend, device_id, device)) => {
                    {
                        let mut run = lock(&self.run);
                        run.backend = Some(backend.clone());
                        run.device_id = Some(device_id);
                        if let Some(device) = &device {
                            run.hostname = Some(device.hostname.clone());
                        }
                    }
                    let Some(adapter) = backends.adapter(&tenant, &backend) else {
                        let error = ErrorInfo::new(
                            ErrorCode::Internal,
                            format!("backend {backend:?} is no longer configured"),
                        );
                        self.fail(error).await?;
                        return Ok(false);
                    };
                    // What the resolved device cannot do ends here, before any vendor step:
                    // submission only refused what the backend never supports.
                    let support = match &device {
                        Some(device) => adapter.device_support(device),
                        None => adapter.capabilities().for_device(|_| None),
                    };
                    let all_settled = {
                        let mut run = lock(&self.run);
                        settle_unsupported(&mut run, &support);
                        run.states.iter().all(|s| s.status.is_terminal())
                    };
                    if all_settled {
                        // Nothing left for the vendor: the run ends without a step.
                        self.close(None).await?;
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
            let kinds: Vec<CommandKind> = run.request.commands.iter().map(Command::kind).collect();
            for state in run.states.iter_mut() {
                if !state.status.is_terminal() {
                    let sent = state.status != Status::Queued
                        && kinds.get(state.index).is_some_and(|k| k.has_side_effect());
                    if let Some(reason) = reason
                        && sent
                    {
                        // Handed to the vendor and not reported back by the adapter: the side
                        // effect may have taken place, so it is not reported `cancelled`.
                        state.status = Status::Failed;
                        state.error = Some(edrgate_adapter::driver::sent_when_stopped(reason));
                    } else if let Some(reason) = reason {
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
        let visible = lock(&self.seen).as_ref() != Some(&view);
        let new_results: Vec<usize> = {
            let stored = lock(&self.stored_results);
            run.states
                .iter()
                .filter(|s| s.result.is_some() && !stored.get(s.index).copied().unwrap_or(false))
                .map(|s| s.index)
                .collect()
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
            // Never due after the deadline, however far the adapter (a vendor's Retry-After)
            // pushes it: whoever holds the run then, after a restart too, ends it on time.
            next_step_at: now
                .saturating_add(i64::try_from(next_in.as_millis()).unwrap_or(i64::MAX))
                .min(run.deadline),
            lease_until: now + i64::try_from(self.engine.opts.lease.as_millis()).unwrap_or(0),
            new_results: Some(&new_results),
            visible,
        };
        let Some(saved) = self.engine.store.save_run(self.lease, &write).await? else {
            tracing::warn!(run_id = %run.id, "lease lost; another process drives this run now");
            return Ok(Outcome::LeaseLost);
        };
        // A result is final once its command is: one still running may report more. A final
        // result, once stored, leaves memory: a run waiting for its next step (behind a
        // backend's slots, say) then holds its small states, not process lists (~50 KB each,
        // copied into every step's snapshot). Nothing reads it here again: the store has it.
        let view = {
            let mut stored = lock(&self.stored_results);
            let mut mine = lock(&self.run);
            let mut dropped = false;
            for state in mine.states.iter_mut().filter(|s| s.status.is_terminal()) {
                if let Some(done) = stored.get_mut(state.index)
                    && state.result.is_some()
                {
                    *done = true;
                    state.result = None;
                    dropped = true;
                }
            }
            // What was seen, as this record now shows it (without the results it dropped).
            if dropped { visible_view(&mine) } else { view }
        };
        // Only once it is stored: a write that failed leaves the next one visible, so the
        // action's status and summary (kept by visible writes) never miss a change.
        *lock(&self.seen) = Some(view);
        if saved.cancel_requested && self.stop.reason().is_none() {
            // Read with every write, not only from the cancel's announcement, which a
            // reconnecting listener misses: the next move of the adapter sees the stop.
            self.stop.stop(StopReason::Cancelled);
            self.wake.notify_one();
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
            Ok(Outcome::LeaseLost) => Err(AdapterError::lease_lost()),
            Ok(_) => Ok(()),
            // Nothing was sent (the adapter sends only after this returns), so the step is
            // retried: a store that is busy or restarting for a while fails no command.
            Err(e) => Err(AdapterError::transient(
                ErrorCode::Internal,
                format!("cannot record intent: {e}"),
            )),
        }
    }
}

/// Ends the run's commands `support` rules out, as `unsupported_command` with the reason;
/// under `on_error: stop` the commands after the first of them are skipped, as after any
/// failed command. The commands before it run as usual.
fn settle_unsupported(run: &mut RunRecord, support: &DeviceSupport) {
    let on_error = run.request.on_error;
    let mut stopped = false;
    for (command, state) in run.request.commands.iter().zip(run.states.iter_mut()) {
        if state.status.is_terminal() {
            continue;
        }
        if stopped {
            state.status = Status::Skipped;
        } else if let Some(reason) = support.refusal(command.kind()) {
            state.status = Status::Failed;
            state.error = Some(ErrorInfo::new(ErrorCode::UnsupportedCommand, reason));
            stopped = on_error == OnError::Stop;
        }
    }
}

/// The commands the engine already ended (see [`settle_unsupported`]), for the adapter's
/// [`RunContext::settled`]: a command that has ended is never given to the vendor again.
fn settled(states: &[CommandState]) -> Vec<CommandUpdate> {
    states
        .iter()
        .filter(|s| s.status.is_terminal())
        .map(|s| CommandUpdate {
            error: s.error.clone(),
            ..CommandUpdate::status(s.index, s.status)
        })
        .collect()
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
