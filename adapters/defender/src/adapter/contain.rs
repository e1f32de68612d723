//! Isolate and release: machine actions of their own, journaled, tagged and polled.

use edrgate_adapter::driver::{Drive, RunOps as _};
use edrgate_adapter::{
    AdapterError, Command, CommandResult, CommandUpdate, ErrorCode, ErrorInfo, RunContext, Status,
};

use super::{Checkpoint, DefenderAdapter, Phase, TAG_PREFIX, comment, now, refused};
use crate::mapping;

impl DefenderAdapter {
    pub(super) async fn start_contain(
        &self,
        ctx: &RunContext<'_>,
        cp: &mut Checkpoint,
        updates: &mut Vec<CommandUpdate>,
        isolate: bool,
    ) -> Result<Drive, AdapterError> {
        let tag = format!("{TAG_PREFIX}{}:{}", ctx.run_id, cp.cursor.index);
        let at = now();
        cp.phase = Phase::ContainIntent { tag: tag.clone(), at, since: None };
        if let Err(e) = self.record(ctx, cp, updates).await {
            // Not journaled, so not sent.
            cp.phase = Phase::Ready;
            return Err(e);
        }
        match self.client.contain(&cp.machine_id, isolate, &comment(&tag, ctx.comment)).await {
            Ok(action) => {
                updates.push(
                    CommandUpdate::status(cp.cursor.index, Status::Dispatched)
                        .with_vendor(Some(action.id.clone()), Some(action.status.clone())),
                );
                cp.phase = Phase::Contain { id: action.id, at: now(), seen: false };
                Ok(Drive::Wait(self.cfg.poll_min()))
            }
            Err(e) if refused(&e) => {
                cp.phase = Phase::Ready;
                Ok(Drive::Wait(e.retry_after.unwrap_or(self.cfg.poll_max())))
            }
            Err(e) if !e.is_retryable() => {
                cp.phase = Phase::Ready;
                let info = if e.code() == ErrorCode::NotFound {
                    ErrorInfo { code: ErrorCode::DeviceNotFound, ..e.info }
                } else {
                    e.info
                };
                self.command_done(ctx, cp, updates, CommandUpdate::failed(cp.cursor.index, info));
                Ok(Drive::Continue)
            }
            // Ambiguous: reconciled by the tag, with the grace counted from the call's end.
            Err(e) => {
                cp.phase = Phase::ContainIntent { tag, at, since: Some(now()) };
                Err(e)
            }
        }
    }

    pub(super) async fn poll_contain(
        &self,
        ctx: &RunContext<'_>,
        cp: &mut Checkpoint,
        updates: &mut Vec<CommandUpdate>,
        id: &str,
        at: f64,
        seen: bool,
    ) -> Result<Drive, AdapterError> {
        let action = match self.poll_action(ctx, id, at, seen).await? {
            Ok(action) => action,
            Err(drive) => return Ok(drive),
        };
        let status = mapping::action_status(&action.status);
        let vendor = (Some(action.id.clone()), Some(action.status.clone()));
        let update = match status {
            Status::Succeeded => CommandUpdate::succeeded(
                cp.cursor.index,
                CommandResult::Containment {
                    isolated: matches!(ctx.commands[cp.cursor.index], Command::Isolate),
                },
            ),
            s if !s.is_terminal() => {
                updates.push(
                    CommandUpdate::status(cp.cursor.index, s).with_vendor(vendor.0, vendor.1),
                );
                cp.phase = Phase::Contain { id: id.to_owned(), at, seen: true };
                return Ok(Drive::Wait(self.poll_delay(at)));
            }
            Status::TimedOut => CommandUpdate::status(cp.cursor.index, Status::TimedOut)
                .with_error(
                    ErrorInfo::new(ErrorCode::Timeout, "Defender timed the machine action out")
                        .with_vendor("TimeOut", ""),
                ),
            Status::Cancelled => {
                CommandUpdate::status(cp.cursor.index, Status::Cancelled).with_error(
                    ErrorInfo::new(ErrorCode::Cancelled, "the machine action was cancelled"),
                )
            }
            _ => CommandUpdate::failed(
                cp.cursor.index,
                mapping::command_error(&[], action.error_h_result),
            ),
        };
        self.command_done(ctx, cp, updates, update.with_vendor(vendor.0, vendor.1));
        Ok(Drive::Continue)
    }
}
