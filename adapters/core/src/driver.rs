//! The step driver: the part of [`Adapter::step`] every vendor shares, written once.
//!
//! A vendor implements [`VendorRun`]: its checkpoint type and [`VendorRun::advance`], one move
//! of the current command. Its [`Adapter::step`] delegates to [`drive`], which owns the loop
//! around it:
//!
//! ```text
//! cp = checkpoint ? decode : vendor.begin()
//! loop {
//!     stop signal?          vendor.cancel(); a command whose intent was journaled ends
//!                           `outcome_unknown` (unless the vendor reported its real outcome),
//!                           the rest get the stop's status; finish; Done
//!     all commands ended?   vendor.finish(); Done
//!     match vendor.advance() {
//!         Continue          go on                       (progress: the failure count restarts)
//!         Recovered         go on                       (a failure dealt with: the count stays)
//!         Wait(d)           After(d)
//!         Finished(update)  end the command, apply `on_error`, go on
//!         Err(lease lost)   return the error            (no further vendor call)
//!         Err(transient)    After(back-off, Retry-After) (the state reached so far is kept)
//!         Err(permanent)    vendor.failed(); go on
//!     }
//! }
//! encode cp
//! ```
//!
//! The rules it keeps for every vendor are the ones in `adapters/README.md`: the stop check at
//! the start of every move, intent journaled before a side effect ([`RunOps::record`]), the
//! same back-off for transient failures, `on_error` applied in one place.

use std::time::Duration;

use async_trait::async_trait;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::adapter::{
    Adapter, CommandUpdate, Next, RunContext, Step, StopReason, decode_checkpoint,
    encode_checkpoint,
};
use crate::error::AdapterError;
use crate::http::Backoff;
use crate::model::{OnError, Status};

/// The driver's part of a checkpoint. Vendors embed it with `#[serde(flatten)]`, so its fields
/// sit at the top level of the stored JSON, as they did when each adapter declared them.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct Cursor {
    /// Index of the current command (`commands.len()` once all ended).
    #[serde(default)]
    pub index: usize,
    /// Consecutive transient failures, for the back-off. Kept in the checkpoint because a
    /// transient failure ends the step: the count must survive to the next one.
    #[serde(default)]
    pub transient: u32,
    /// The current command's intent was journaled ([`RunOps::record`]): the vendor may have
    /// acted on it, so a stop must not call it `cancelled`. A vendor that learns its request
    /// was refused (nothing happened) clears it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub sent: bool,
}

/// A vendor checkpoint: serde, and holding a [`Cursor`].
pub trait RunCheckpoint: Serialize + DeserializeOwned + Send + Sync {
    fn cursor(&self) -> &Cursor;
    fn cursor_mut(&mut self) -> &mut Cursor;
}

/// What one move of the current command produced.
// Returned once per move and consumed at once, never stored: boxing the update would only
// cost an allocation per finished command.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub enum Drive {
    /// State changed; advance again right away. Also the answer to a stop that fired during
    /// a wait: the stop check before the next move closes the run.
    Continue,
    /// A vendor failure was dealt with in place (a lost session forgotten, say): advance
    /// again right away, without counting it as progress, so repeated failures still add up.
    Recovered,
    /// The vendor is working: step again after this delay.
    Wait(Duration),
    /// The current command ended.
    Finished(CommandUpdate),
}

/// A vendor's run state machine, driven by [`drive`].
///
/// Every method gets the run (`ctx`), its checkpoint and the step's updates so far. Anything a
/// later step needs goes into the checkpoint; `updates` reach the engine with the step (or
/// earlier, with an intent).
#[async_trait]
pub trait VendorRun: Adapter {
    type Checkpoint: RunCheckpoint;

    /// The vendor's name in checkpoint errors and logs.
    const VENDOR: &'static str;

    /// The checkpoint of a run's first step (e.g. with the device id parsed).
    fn begin(&self, ctx: &RunContext<'_>) -> Result<Self::Checkpoint, AdapterError>;

    /// One move of the current command (the cursor is on an unfinished one). Must not sleep;
    /// waits that are safe to abandon race `ctx.stop.stopped()` and answer
    /// [`Drive::Continue`] when it fires. A command changing an endpoint is journaled with
    /// [`RunOps::record`] before its vendor call. Several commands may be ended here with
    /// [`RunOps::command_done`] (a vendor batch).
    async fn advance(
        &self,
        ctx: &RunContext<'_>,
        cp: &mut Self::Checkpoint,
        updates: &mut Vec<CommandUpdate>,
    ) -> Result<Drive, AdapterError>;

    /// The command under the cursor ended (the cursor has not moved past it yet): forget its
    /// vendor-specific progress (its phase, anything kept in memory for it).
    fn command_ended(&self, ctx: &RunContext<'_>, cp: &mut Self::Checkpoint);

    /// A permanent failure of the current work. The default fails the current command with
    /// it; a vendor overrides this when the work spans several commands, or when the failure
    /// came after an intent (the vendor may have acted: `outcome_unknown`, never a retry).
    fn failed(
        &self,
        ctx: &RunContext<'_>,
        cp: &mut Self::Checkpoint,
        updates: &mut Vec<CommandUpdate>,
        error: AdapterError,
    ) {
        let index = cp.cursor().index;
        self.command_done(ctx, cp, updates, CommandUpdate::failed(index, error.info));
    }

    /// The run is being stopped: cancel vendor work in flight (best effort, errors logged).
    /// Commands that end for real meanwhile may be reported with [`RunOps::command_done`]
    /// (the vendor's real outcome: a side effect that took place is never `cancelled`). The
    /// driver then ends the current command `outcome_unknown` if its intent was journaled
    /// ([`Cursor::sent`]), and closes the rest with the stop's status.
    async fn cancel(
        &self,
        _ctx: &RunContext<'_>,
        _cp: &mut Self::Checkpoint,
        _updates: &mut Vec<CommandUpdate>,
        _reason: StopReason,
    ) {
    }

    /// The run is over in this step (all commands ended, or stopped): release vendor-side
    /// resources (sessions). The driver then calls [`Adapter::run_closed`], which drops what
    /// the adapter keeps in memory for the run.
    async fn finish(&self, _ctx: &RunContext<'_>, _cp: &mut Self::Checkpoint) {}
}

/// The driver's helpers for a vendor's [`VendorRun::advance`]. Implemented for every
/// [`VendorRun`] and for nothing else, so no vendor can replace them.
#[async_trait]
pub trait RunOps: VendorRun {
    /// Ends the command under the cursor with `update` and moves past it; after a failure
    /// under `on_error: stop` the remaining commands are skipped.
    fn command_done(
        &self,
        ctx: &RunContext<'_>,
        cp: &mut Self::Checkpoint,
        updates: &mut Vec<CommandUpdate>,
        update: CommandUpdate,
    ) {
        let failed = update.status != Status::Succeeded;
        self.command_ended(ctx, cp);
        updates.push(update);
        let cursor = cp.cursor_mut();
        cursor.index += 1;
        cursor.transient = 0;
        cursor.sent = false;
        if failed && ctx.on_error == OnError::Stop {
            cursor.index = ctx.close_rest(cursor.index, None, updates);
        }
    }

    /// Journals the intent of the current command before its vendor call: `cp` as it stands,
    /// the command `dispatched`, and the step's earlier updates (e.g. the previous command's
    /// result: the checkpoint has moved past them, so a crash before the step returns would
    /// lose them). Once stored they are drained, so the step does not report them twice.
    ///
    /// On an error the vendor call must not be made: put the phase back and return the error.
    /// The driver stops stepping on [`AdapterError::is_lease_lost`] and treats anything else
    /// like any other failure.
    ///
    /// From here on the command counts as sent ([`Cursor::sent`]) until it ends.
    async fn record(
        &self,
        ctx: &RunContext<'_>,
        cp: &mut Self::Checkpoint,
        updates: &mut Vec<CommandUpdate>,
    ) -> Result<(), AdapterError> {
        let was = std::mem::replace(&mut cp.cursor_mut().sent, true);
        let value = match encode_checkpoint(cp) {
            Ok(value) => value,
            Err(e) => {
                cp.cursor_mut().sent = was;
                return Err(e);
            }
        };
        updates.push(CommandUpdate::status(cp.cursor().index, Status::Dispatched));
        match ctx.journal.record(&value, updates).await {
            Ok(()) => {
                updates.clear();
                Ok(())
            }
            Err(e) => {
                updates.pop();
                cp.cursor_mut().sent = was;
                Err(e)
            }
        }
    }

    /// Stores `cp` and the step's updates now, without marking anything dispatched: progress
    /// that a crash must not undo because the next vendor call destroys what would be needed
    /// to redo it (e.g. a result fetched before the endpoint's temporary file is deleted).
    /// Same error rules as [`Self::record`].
    async fn persist(
        &self,
        ctx: &RunContext<'_>,
        cp: &Self::Checkpoint,
        updates: &mut Vec<CommandUpdate>,
    ) -> Result<(), AdapterError> {
        let value = encode_checkpoint(cp)?;
        ctx.journal.record(&value, updates).await?;
        updates.clear();
        Ok(())
    }
}

impl<V: VendorRun + ?Sized> RunOps for V {}

/// One [`Adapter::step`] of `vendor`: what every adapter's `step` delegates to.
pub async fn drive<V: VendorRun>(
    vendor: &V,
    ctx: &RunContext<'_>,
    checkpoint: Option<serde_json::Value>,
) -> Result<Step, AdapterError> {
    let mut cp = match checkpoint {
        None => vendor.begin(ctx)?,
        Some(value) => decode_checkpoint(V::VENDOR, value)?,
    };
    let mut updates = Vec::new();
    let next = advance_run(vendor, ctx, &mut cp, &mut updates).await;
    // A run that ended, or that another worker drives now, needs nothing kept in memory (the
    // engine's `run_closed` comes later, and not at all under the test harness).
    if !matches!(next, Ok(Next::After(_))) {
        vendor.run_closed(ctx.run_id);
    }
    let next = next?;
    Ok(Step { checkpoint: encode_checkpoint(&cp)?, updates, next })
}

/// Advances commands until one has to wait or the run ends.
async fn advance_run<V: VendorRun>(
    vendor: &V,
    ctx: &RunContext<'_>,
    cp: &mut V::Checkpoint,
    updates: &mut Vec<CommandUpdate>,
) -> Result<Next, AdapterError> {
    loop {
        if let Some(reason) = ctx.stop.reason() {
            tracing::debug!(run = %ctx.run_id, vendor = V::VENDOR, ?reason, "run stopped; closing its unfinished commands");
            vendor.cancel(ctx, cp, updates, reason).await;
            let mut from = cp.cursor().index;
            if cp.cursor().sent && from < ctx.commands.len() {
                // The vendor may have acted and did not say how it ended: never `cancelled`.
                updates.push(CommandUpdate::failed(from, sent_when_stopped(reason)));
                from += 1;
            }
            cp.cursor_mut().sent = false;
            cp.cursor_mut().index = ctx.close_rest(from, Some(reason), updates);
            vendor.command_ended(ctx, cp);
            vendor.finish(ctx, cp).await;
            return Ok(Next::Done);
        }
        if cp.cursor().index >= ctx.commands.len() {
            vendor.finish(ctx, cp).await;
            return Ok(Next::Done);
        }
        if let Some(update) = ctx.settled(cp.cursor().index) {
            // Ended by the engine (refused for the device): never sent, `on_error` applies.
            vendor.command_done(ctx, cp, updates, update.clone());
            continue;
        }
        match vendor.advance(ctx, cp, updates).await {
            Ok(Drive::Recovered) => {}
            Ok(drive) => {
                cp.cursor_mut().transient = 0;
                match drive {
                    Drive::Continue | Drive::Recovered => {}
                    Drive::Wait(delay) => return Ok(Next::After(delay)),
                    Drive::Finished(update) => vendor.command_done(ctx, cp, updates, update),
                }
            }
            // Another worker drives the run now: not one more vendor call from here, not even
            // a cleanup (the new owner has the session). The engine lets the run go.
            Err(e) if e.is_lease_lost() => {
                tracing::info!(run = %ctx.run_id, vendor = V::VENDOR, "the run's lease was taken over; not stepping it further");
                return Err(e);
            }
            // Transient failures (transport, 5xx, 429) are ridden out here, with the back-off
            // and the vendor's Retry-After, rather than returned as `Err`: the run may hold a
            // slot or a session that only a later step (which sees a stop first) releases, and
            // the state reached so far is kept, so an intent is reconciled, never re-sent.
            Err(e) if e.is_retryable() => {
                let cursor = cp.cursor_mut();
                cursor.transient = cursor.transient.saturating_add(1);
                let delay = Backoff::STANDARD.delay(cursor.transient.min(8), e.retry_after);
                tracing::warn!(run = %ctx.run_id, vendor = V::VENDOR, error = %e, attempt = cursor.transient, retry_in = ?delay, "vendor call failed; retrying");
                return Ok(Next::After(delay));
            }
            Err(e) => {
                tracing::debug!(run = %ctx.run_id, vendor = V::VENDOR, index = cp.cursor().index, error = %e, "command failed");
                vendor.failed(ctx, cp, updates, e);
            }
        }
    }
}

/// What a command whose request may have reached the vendor ends with when its run stops
/// (here, and in the engine for a sent command the adapter left unreported).
pub fn sent_when_stopped(reason: StopReason) -> crate::model::ErrorInfo {
    let why = match reason {
        StopReason::Cancelled => "the run was cancelled",
        StopReason::DeadlineExceeded => "the run's deadline passed",
    };
    crate::model::ErrorInfo::new(
        crate::model::ErrorCode::OutcomeUnknown,
        format!(
            "{why} after the command was sent to the vendor, before its outcome was known; it may have taken effect"
        ),
    )
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use uuid::Uuid;

    use super::*;
    use crate::adapter::{FileReader, FileWriter, Journal, RunFiles, StopSignal};
    use crate::model::{Capabilities, Command, Device, ErrorCode, ErrorInfo, FileRef, Limits};

    /// What the fake vendor does on its next move.
    enum Move {
        Drive(Drive),
        Fail(AdapterError),
        /// Journal an intent, then go on.
        Record,
    }

    #[derive(Default, Serialize, serde::Deserialize)]
    struct Cp {
        #[serde(flatten)]
        cursor: Cursor,
        #[serde(default)]
        phase: u32,
    }

    impl RunCheckpoint for Cp {
        fn cursor(&self) -> &Cursor {
            &self.cursor
        }
        fn cursor_mut(&mut self) -> &mut Cursor {
            &mut self.cursor
        }
    }

    struct Fake {
        caps: Capabilities,
        script: Mutex<VecDeque<Move>>,
        moves: AtomicUsize,
        cancelled: AtomicUsize,
        finished: AtomicUsize,
        closed: AtomicUsize,
    }

    impl Fake {
        fn new(script: Vec<Move>) -> Self {
            Fake {
                caps: Capabilities {
                    backend: "fake".into(),
                    kind: "fake".into(),
                    commands: Vec::new(),
                    limits: Limits {
                        concurrent_sessions: None,
                        max_upload_bytes: None,
                        calls_per_minute: None,
                    },
                },
                script: Mutex::new(script.into()),
                moves: AtomicUsize::new(0),
                cancelled: AtomicUsize::new(0),
                finished: AtomicUsize::new(0),
                closed: AtomicUsize::new(0),
            }
        }
    }

    #[async_trait]
    impl Adapter for Fake {
        fn capabilities(&self) -> &Capabilities {
            &self.caps
        }
        async fn find_devices(&self, _: Option<&str>) -> Result<Vec<Device>, AdapterError> {
            Ok(Vec::new())
        }
        fn run_closed(&self, _: Uuid) {
            self.closed.fetch_add(1, Ordering::SeqCst);
        }
        async fn step(
            &self,
            ctx: &RunContext<'_>,
            checkpoint: Option<serde_json::Value>,
        ) -> Result<Step, AdapterError> {
            drive(self, ctx, checkpoint).await
        }
    }

    #[async_trait]
    impl VendorRun for Fake {
        type Checkpoint = Cp;
        const VENDOR: &'static str = "fake";

        fn begin(&self, _: &RunContext<'_>) -> Result<Cp, AdapterError> {
            Ok(Cp::default())
        }

        async fn advance(
            &self,
            ctx: &RunContext<'_>,
            cp: &mut Cp,
            updates: &mut Vec<CommandUpdate>,
        ) -> Result<Drive, AdapterError> {
            self.moves.fetch_add(1, Ordering::SeqCst);
            cp.phase += 1;
            let next = self.script.lock().unwrap().pop_front().expect("script ran out");
            match next {
                Move::Drive(d) => Ok(d),
                Move::Fail(e) => Err(e),
                Move::Record => self.record(ctx, cp, updates).await.map(|()| Drive::Continue),
            }
        }

        fn command_ended(&self, _: &RunContext<'_>, cp: &mut Cp) {
            cp.phase = 0;
        }

        async fn cancel(
            &self,
            _: &RunContext<'_>,
            _: &mut Cp,
            _: &mut Vec<CommandUpdate>,
            _: StopReason,
        ) {
            self.cancelled.fetch_add(1, Ordering::SeqCst);
        }

        async fn finish(&self, _: &RunContext<'_>, _: &mut Cp) {
            self.finished.fetch_add(1, Ordering::SeqCst);
        }
    }

    struct Journaled {
        refuse: bool,
        records: Mutex<Vec<Vec<CommandUpdate>>>,
    }

    #[async_trait]
    impl Journal for Journaled {
        async fn record(
            &self,
            _: &serde_json::Value,
            updates: &[CommandUpdate],
        ) -> Result<(), AdapterError> {
            if self.refuse {
                return Err(AdapterError::lease_lost());
            }
            self.records.lock().unwrap().push(updates.to_vec());
            Ok(())
        }
    }

    struct NoFiles;

    #[async_trait]
    impl RunFiles for NoFiles {
        async fn create(&self, _: usize, _: &str) -> Result<Box<dyn FileWriter>, AdapterError> {
            Err(AdapterError::internal("no files"))
        }
        async fn open(&self, _: &str) -> Result<(FileRef, FileReader), AdapterError> {
            Err(AdapterError::internal("no files"))
        }
    }

    struct Run {
        commands: Vec<Command>,
        on_error: OnError,
        stop: StopSignal,
        journal: Journaled,
        settled: Vec<CommandUpdate>,
    }

    impl Run {
        fn new(n: usize) -> Self {
            Run {
                commands: vec![Command::ProcessList; n],
                on_error: OnError::Stop,
                stop: StopSignal::new(),
                journal: Journaled { refuse: false, records: Mutex::new(Vec::new()) },
                settled: Vec::new(),
            }
        }

        async fn step(
            &self,
            fake: &Fake,
            cp: Option<serde_json::Value>,
        ) -> Result<Step, AdapterError> {
            let ctx = RunContext {
                run_id: Uuid::nil(),
                action_id: Uuid::nil(),
                tenant: "t",
                device_id: "d",
                commands: &self.commands,
                on_error: self.on_error,
                comment: None,
                stop: &self.stop,
                journal: &self.journal,
                files: &NoFiles,
                settled: &self.settled,
            };
            fake.step(&ctx, cp).await
        }
    }

    fn statuses(step: &Step) -> Vec<(usize, Status)> {
        step.updates.iter().map(|u| (u.index, u.status)).collect()
    }

    fn done(i: usize) -> Move {
        Move::Drive(Drive::Finished(CommandUpdate::status(i, Status::Succeeded)))
    }

    #[tokio::test]
    async fn commands_end_in_order_and_a_failure_skips_the_rest_under_stop() {
        let fake = Fake::new(vec![
            Move::Drive(Drive::Continue),
            done(0),
            Move::Fail(AdapterError::new(ErrorCode::NotFound, "gone")),
        ]);
        let step = Run::new(4).step(&fake, None).await.unwrap();
        assert_eq!(step.next, Next::Done);
        assert_eq!(
            statuses(&step),
            [
                (0, Status::Succeeded),
                (1, Status::Failed),
                (2, Status::Skipped),
                (3, Status::Skipped)
            ]
        );
        assert_eq!(step.updates[1].error.as_ref().unwrap().code, ErrorCode::NotFound);
        // The cursor sits at the top level of the stored JSON.
        assert_eq!(step.checkpoint["index"], 4);
        assert_eq!(fake.finished.load(Ordering::SeqCst), 1);
        assert_eq!(fake.closed.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_failure_under_continue_moves_on() {
        let fake =
            Fake::new(vec![Move::Fail(AdapterError::new(ErrorCode::NotFound, "gone")), done(1)]);
        let mut run = Run::new(2);
        run.on_error = OnError::Continue;
        let step = run.step(&fake, None).await.unwrap();
        assert_eq!(statuses(&step), [(0, Status::Failed), (1, Status::Succeeded)]);
    }

    #[tokio::test]
    async fn commands_the_engine_settled_are_never_given_to_the_vendor() {
        let refused = || {
            CommandUpdate::failed(1, ErrorInfo::new(ErrorCode::UnsupportedCommand, "no registry"))
        };
        let fake = Fake::new(vec![done(0), done(2)]);
        let mut run = Run::new(3);
        run.on_error = OnError::Continue;
        run.settled = vec![refused()];
        let step = run.step(&fake, None).await.unwrap();
        assert_eq!(
            statuses(&step),
            [(0, Status::Succeeded), (1, Status::Failed), (2, Status::Succeeded)]
        );
        assert_eq!(fake.moves.load(Ordering::SeqCst), 2);

        // Under `stop`, a settled failure skips the rest like any other.
        let fake = Fake::new(vec![done(0)]);
        let mut run = Run::new(3);
        run.settled = vec![refused()];
        let step = run.step(&fake, None).await.unwrap();
        assert_eq!(
            statuses(&step),
            [(0, Status::Succeeded), (1, Status::Failed), (2, Status::Skipped)]
        );
        assert_eq!(fake.moves.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn transient_failures_back_off_and_count_until_progress() {
        let fake = Fake::new(vec![
            Move::Fail(AdapterError::transient(ErrorCode::VendorUnavailable, "503")),
            Move::Drive(Drive::Recovered),
            Move::Fail(AdapterError::transient(ErrorCode::VendorUnavailable, "503")),
            Move::Drive(Drive::Wait(Duration::from_secs(3))),
        ]);
        let run = Run::new(1);
        let step = run.step(&fake, None).await.unwrap();
        assert!(matches!(step.next, Next::After(_)));
        assert_eq!(step.checkpoint["transient"], 1);
        // Recovered is not progress: the second failure counts as the second in a row.
        let step = run.step(&fake, Some(step.checkpoint)).await.unwrap();
        assert_eq!(step.checkpoint["transient"], 2);
        let step = run.step(&fake, Some(step.checkpoint)).await.unwrap();
        assert_eq!(step.next, Next::After(Duration::from_secs(3)));
        assert_eq!(step.checkpoint["transient"], 0);
        assert_eq!(fake.closed.load(Ordering::SeqCst), 0, "the run goes on");
    }

    #[tokio::test]
    async fn a_stop_cancels_vendor_work_and_closes_the_rest_with_its_status() {
        let fake = Fake::new(vec![]);
        let run = Run::new(3);
        run.stop.stop(StopReason::DeadlineExceeded);
        let cp = serde_json::json!({"index": 1, "phase": 5});
        let step = run.step(&fake, Some(cp)).await.unwrap();
        assert_eq!(step.next, Next::Done);
        assert_eq!(statuses(&step), [(1, Status::TimedOut), (2, Status::TimedOut)]);
        assert_eq!(step.updates[0].error.as_ref().unwrap().code, ErrorCode::Timeout);
        assert_eq!(step.checkpoint["phase"], 0, "the vendor forgot the command's progress");
        assert_eq!(fake.moves.load(Ordering::SeqCst), 0);
        assert_eq!(fake.cancelled.load(Ordering::SeqCst), 1);
        assert_eq!(fake.finished.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_stop_after_an_intent_is_never_reported_cancelled() {
        // The intent is journaled, then the vendor is waited on; the run is cancelled.
        let fake = Fake::new(vec![Move::Record, Move::Drive(Drive::Wait(Duration::from_secs(1)))]);
        let run = Run::new(2);
        let step = run.step(&fake, None).await.unwrap();
        assert_eq!(step.checkpoint["sent"], true);
        run.stop.stop(StopReason::Cancelled);
        let step = run.step(&fake, Some(step.checkpoint)).await.unwrap();
        assert_eq!(statuses(&step), [(0, Status::Failed), (1, Status::Cancelled)]);
        assert_eq!(step.updates[0].error.as_ref().unwrap().code, ErrorCode::OutcomeUnknown);
        assert!(step.checkpoint.get("sent").is_none(), "{}", step.checkpoint);

        // A command that ended clears the mark: the next one is cancelled as usual.
        let fake = Fake::new(vec![Move::Record, done(0), Move::Drive(Drive::Wait(Duration::ZERO))]);
        let run = Run::new(2);
        let step = run.step(&fake, None).await.unwrap();
        run.stop.stop(StopReason::Cancelled);
        let step = run.step(&fake, Some(step.checkpoint)).await.unwrap();
        assert_eq!(statuses(&step), [(1, Status::Cancelled)]);
    }

    #[tokio::test]
    async fn an_intent_carries_the_step_so_far_and_is_reported_once() {
        let fake = Fake::new(vec![done(0), Move::Record, done(1)]);
        let run = Run::new(2);
        let step = run.step(&fake, None).await.unwrap();
        let journaled = run.journal.records.lock().unwrap().clone();
        let journaled: Vec<_> = journaled[0].iter().map(|u| (u.index, u.status)).collect();
        assert_eq!(journaled, [(0, Status::Succeeded), (1, Status::Dispatched)]);
        assert_eq!(statuses(&step), [(1, Status::Succeeded)]);
    }

    #[tokio::test]
    async fn a_lost_lease_ends_the_step_without_another_vendor_call() {
        let fake = Fake::new(vec![Move::Record]);
        let mut run = Run::new(2);
        run.journal.refuse = true;
        let error = run.step(&fake, None).await.unwrap_err();
        assert!(error.is_lease_lost());
        assert!(!AdapterError::new(ErrorCode::Conflict, "a vendor's 409").is_lease_lost());
        assert_eq!(fake.moves.load(Ordering::SeqCst), 1);
        assert_eq!(fake.finished.load(Ordering::SeqCst), 0, "no cleanup call either");
        assert_eq!(fake.closed.load(Ordering::SeqCst), 1, "memory of the run dropped");
    }
}
