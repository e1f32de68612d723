//! A stop (cancel or deadline) while a machine action is in flight: Defender's cancel
//! endpoint (§6), then what really happened, read back, for every command of the unit of work.
//!
//! A stop never reports `cancelled` for a side effect that took place, or may have: the cancel
//! answer alone is not believed, since it can say `Cancelled` for an action that completed and
//! races completion (§6, elastic/kibana#236963), and a final action may refuse the cancel. So
//! the action is read before (already final: nothing to cancel) and after the cancel, and each
//! command ends with Defender's word for it: its result when it ran, its failure, the stop's
//! status when it never started in an action that is over, `outcome_unknown` for a command
//! that changes the endpoint when Defender does not say (it was executing, the action still
//! runs, the reads failed, or an ambiguous submission cannot be found yet).

use edrgate_adapter::adapter::StopReason;
use edrgate_adapter::driver::RunOps as _;
use edrgate_adapter::{
    Command, CommandResult, CommandUpdate, ErrorCode, ErrorInfo, OnError, RunContext, Status,
};

use super::{Checkpoint, DefenderAdapter, Phase, has_tag, now};
use crate::mapping;
use crate::wire::MachineAction;

/// How one command of a stopped batch ended, as the action's rows tell.
enum Seen {
    /// No row of it started.
    NotStarted,
    /// Every row completed.
    Completed,
    /// A row failed, with Defender's error.
    Failed(ErrorInfo),
    /// Started and not finished.
    Started,
}

impl DefenderAdapter {
    pub(super) async fn stop_work(
        &self,
        ctx: &RunContext<'_>,
        cp: &mut Checkpoint,
        updates: &mut Vec<CommandUpdate>,
        reason: StopReason,
    ) {
        // Every command of the unit is ended here, so `on_error` must not skip the rest of it.
        let ctx = &RunContext { on_error: OnError::Continue, ..*ctx };
        let index = cp.cursor.index;
        let (id, end, contain) = match cp.phase.clone() {
            Phase::Ready => return,
            Phase::Running { id, end, .. } => (id, end, false),
            Phase::Contain { id, .. } => (id, index + 1, true),
            Phase::Intent { tag, end, since, .. } => {
                match self.find_tagged(cp, "LiveResponse", &tag).await {
                    Some(Ok(id)) => (id, end, false),
                    found => return self.stop_unsent(ctx, cp, updates, end, since, found, reason),
                }
            }
            Phase::ContainIntent { tag, since, .. } => {
                let kind = if matches!(ctx.commands[index], Command::Isolate) {
                    "Isolate"
                } else {
                    "Unisolate"
                };
                match self.find_tagged(cp, kind, &tag).await {
                    Some(Ok(id)) => (id, index + 1, true),
                    found => {
                        return self.stop_unsent(ctx, cp, updates, index + 1, since, found, reason);
                    }
                }
            }
        };
        let before = self.client.action(&id).await.ok();
        let running_before =
            before.as_ref().is_some_and(|a| mapping::action_status(&a.status) == Status::Running);
        let action = match before {
            Some(a) if mapping::action_status(&a.status).is_terminal() => Some(a),
            _ => {
                let note = match reason {
                    StopReason::Cancelled => "cancelled by the edrgate caller",
                    StopReason::DeadlineExceeded => "edrgate action deadline passed",
                };
                let answer = self.client.cancel(&id, note).await;
                if let Err(e) = &answer {
                    tracing::debug!(run = %ctx.run_id, action = %id, error = %e, "cancelling the machine action failed; reading what happened");
                }
                match self.client.action(&id).await {
                    Ok(a) => Some(a),
                    Err(_) => answer.ok(),
                }
            }
        };
        self.release_slot(ctx.run_id);
        match action {
            Some(action) if contain => {
                self.stopped_contain(ctx, cp, updates, &action, running_before, reason)
            }
            Some(action) => self.stopped_batch(ctx, cp, updates, &action, end, reason).await,
            None => {
                let why = "edrgate could not read how the machine action ended after the stop";
                self.stop_rest(ctx, cp, updates, end, reason, Some(why));
            }
        }
    }

    /// The action carrying the tag: `None` when the listing failed, `Some(Err(()))` when it
    /// shows no such action.
    async fn find_tagged(
        &self,
        cp: &Checkpoint,
        kind: &str,
        tag: &str,
    ) -> Option<Result<String, ()>> {
        let list = self.client.actions_of_machine(&cp.machine_id, kind).await.ok()?;
        Some(
            list.into_iter()
                .find(|a| a.requestor_comment.as_deref().is_some_and(|c| has_tag(c, tag)))
                .map(|a| a.id)
                .ok_or(()),
        )
    }

    /// An ambiguous submission whose action no read shows: it never arrived only once the
    /// visibility grace has passed since the call ended; until then it may exist.
    #[allow(clippy::too_many_arguments)]
    fn stop_unsent(
        &self,
        ctx: &RunContext<'_>,
        cp: &mut Checkpoint,
        updates: &mut Vec<CommandUpdate>,
        end: usize,
        since: Option<f64>,
        found: Option<Result<String, ()>>,
        reason: StopReason,
    ) {
        let grace = self.cfg.visibility_grace_secs as f64;
        let never = found.is_some() && since.is_some_and(|s| now() - s >= grace);
        let why = (!never).then_some(
            "the run was stopped while edrgate could not yet tell whether Defender received the machine action; it may have taken effect",
        );
        self.release_slot(ctx.run_id);
        self.stop_rest(ctx, cp, updates, end, reason, why);
    }

    /// Ends `[cursor, end)` with the stop's status; with `unknown`, a command that changes the
    /// endpoint ends `outcome_unknown` with that message instead.
    fn stop_rest(
        &self,
        ctx: &RunContext<'_>,
        cp: &mut Checkpoint,
        updates: &mut Vec<CommandUpdate>,
        end: usize,
        reason: StopReason,
        unknown: Option<&str>,
    ) {
        while cp.cursor.index < end {
            let i = cp.cursor.index;
            let update = match unknown {
                Some(why) if ctx.commands[i].kind().has_side_effect() => {
                    CommandUpdate::failed(i, ErrorInfo::new(ErrorCode::OutcomeUnknown, why))
                }
                _ => stopped(i, reason),
            };
            self.command_done(ctx, cp, updates, update);
        }
    }

    fn stopped_contain(
        &self,
        ctx: &RunContext<'_>,
        cp: &mut Checkpoint,
        updates: &mut Vec<CommandUpdate>,
        action: &MachineAction,
        running_before: bool,
        reason: StopReason,
    ) {
        let i = cp.cursor.index;
        let vendor = (Some(action.id.clone()), Some(action.status.clone()));
        let update = match mapping::action_status(&action.status) {
            // Completion won the race: the machine is (or is no longer) isolated.
            Status::Succeeded => CommandUpdate::succeeded(
                i,
                CommandResult::Containment {
                    isolated: matches!(ctx.commands[i], Command::Isolate),
                },
            ),
            Status::Failed => {
                CommandUpdate::failed(i, mapping::command_error(&[], action.error_h_result))
            }
            Status::TimedOut => CommandUpdate::status(i, Status::TimedOut).with_error(
                ErrorInfo::new(ErrorCode::Timeout, "Defender timed the machine action out")
                    .with_vendor("TimeOut", ""),
            ),
            // Cancelled before the device took it up: nothing was applied.
            Status::Cancelled if !running_before => stopped(i, reason),
            // Cancelled while the device was applying it (§6: `Cancelled` can follow a
            // completion), or the cancel did not take: Defender does not say.
            _ => CommandUpdate::failed(
                i,
                ErrorInfo::new(
                    ErrorCode::OutcomeUnknown,
                    "the run was stopped while Defender was applying the containment; it may have taken effect",
                ),
            ),
        };
        self.command_done(ctx, cp, updates, update.with_vendor(vendor.0, vendor.1));
    }

    async fn stopped_batch(
        &self,
        ctx: &RunContext<'_>,
        cp: &mut Checkpoint,
        updates: &mut Vec<CommandUpdate>,
        action: &MachineAction,
        end: usize,
        reason: StopReason,
    ) {
        let status = mapping::action_status(&action.status);
        if matches!(status, Status::Succeeded | Status::Failed) {
            // Completion won the race: report what really happened.
            if let Err(e) = self.collect(ctx, cp, updates, action, end).await {
                tracing::debug!(run = %ctx.run_id, error = %e, "collecting a finished action after a stop failed");
                let why = "the machine action ended before the stop, but edrgate could not read its results";
                self.stop_rest(ctx, cp, updates, end, reason, Some(why));
            }
            // A batch Defender stopped at a failure: the rest never ran.
            self.stop_rest(ctx, cp, updates, end, reason, None);
            return;
        }
        // Cancelled or timed out (or the cancel did not take): each command's rows tell.
        let over = status.is_terminal();
        let results = action.commands.clone().unwrap_or_default();
        let slots = match self.slots_of(ctx, cp.cursor.index, end).await {
            Ok(slots) => slots,
            Err(_) => {
                let why = "edrgate could not match the stopped machine action's commands";
                return self.stop_rest(ctx, cp, updates, end, reason, Some(why));
            }
        };
        while cp.cursor.index < end {
            let i = cp.cursor.index;
            let rows: Vec<_> = slots
                .iter()
                .enumerate()
                .filter(|(_, s)| s.command == i)
                .map(|(lr, _)| results.iter().find(|r| r.index == lr))
                .collect();
            let words: Vec<Status> = rows
                .iter()
                .map(|r| {
                    r.map_or(Status::Dispatched, |r| mapping::command_status(&r.command_status))
                })
                .collect();
            let seen = if let Some(r) = rows
                .iter()
                .flatten()
                .find(|r| mapping::command_status(&r.command_status) == Status::Failed)
            {
                Seen::Failed(mapping::command_error(&r.errors, action.error_h_result))
            } else if words.iter().all(|s| *s == Status::Succeeded) {
                Seen::Completed
            } else if words.iter().all(|s| *s == Status::Dispatched) {
                Seen::NotStarted
            } else {
                Seen::Started
            };
            let vendor_ref = Some(format!("{}/{}", action.id, rows.len().saturating_sub(1)));
            let side_effect = ctx.commands[i].kind().has_side_effect();
            let update = match seen {
                Seen::Failed(info) => CommandUpdate::failed(i, info),
                Seen::Completed => {
                    let main = slots
                        .iter()
                        .enumerate()
                        .filter(|(_, s)| s.command == i)
                        .find(|(_, s)| s.role == super::batch::Role::Main)
                        .map(|(lr, _)| lr);
                    let got = match main {
                        Some(lr) => self.result_of(ctx, &action.id, lr, i).await.ok(),
                        None => None,
                    };
                    match got {
                        Some(Ok(result)) => CommandUpdate::succeeded(i, result),
                        Some(Err(info)) => CommandUpdate::failed(i, info),
                        // It ran; its result is out of reach.
                        None if side_effect => unknown_ran(i),
                        None => stopped(i, reason),
                    }
                }
                Seen::NotStarted if over => stopped(i, reason),
                _ if side_effect => CommandUpdate::failed(
                    i,
                    ErrorInfo::new(
                        ErrorCode::OutcomeUnknown,
                        "the run was stopped while Defender was running the command (or before it could stop it); it may have taken effect",
                    ),
                ),
                _ => stopped(i, reason),
            };
            let update = update.with_vendor(vendor_ref, Some(action.status.clone()));
            self.command_done(ctx, cp, updates, update);
        }
    }
}

/// The stop's own status and error, as the driver gives commands that never ran.
fn stopped(index: usize, reason: StopReason) -> CommandUpdate {
    CommandUpdate::status(index, reason.status()).with_error(reason.error())
}

fn unknown_ran(index: usize) -> CommandUpdate {
    CommandUpdate::failed(
        index,
        ErrorInfo::new(
            ErrorCode::OutcomeUnknown,
            "Defender ran the command before the stop, but edrgate could not read its result",
        ),
    )
}
