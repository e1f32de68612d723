//! At most once: what happens to a command whose intent was recorded but whose answer was
//! never seen.

use edrgate_adapter::driver::Drive;
use edrgate_adapter::{CommandUpdate, ErrorCode, ErrorInfo, RunContext};

use super::commands::unsuccessful;
use super::{CarbonBlackAdapter, Checkpoint, Phase};
use crate::mapping::{self, CbError};

impl CarbonBlackAdapter {
    /// After a crash between intent and answer: adopt the command if CB has it; if the session
    /// the POST was meant for is alive and does not list it, the POST never arrived and the
    /// command starts over; otherwise report `outcome_unknown` and never re-send.
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn reconcile(
        &self,
        ctx: &RunContext<'_>,
        cp: &mut Checkpoint,
        sid: u64,
        intent_sid: Option<u64>,
        at: f64,
        name: &str,
        object: &str,
        after: Option<u64>,
    ) -> Result<Drive, CbError> {
        let listed = match self.client.commands(sid).await {
            Ok(listed) => listed,
            Err(CbError::SessionLost(_)) => {
                return Ok(Drive::Finished(outcome_unknown(cp.cursor.index, name)));
            }
            Err(e) => return Err(e),
        };
        // Matched on what CB echoes and on its own ordering (ids count up per session, §2.7),
        // never on its clock against ours: a skewed server clock must not cause a re-send.
        let matching = listed
            .into_iter()
            .filter(|c| c.name == name && mapping::object_text(&c.object) == object);
        let adopted = match after {
            Some(after) => matching.filter(|c| c.id > after).max_by_key(|c| c.id),
            // A checkpoint from before ids were recorded: an identical earlier command cannot
            // be told apart from ours, so only "nothing like it" is conclusive.
            None => match matching.max_by_key(|c| c.id) {
                Some(_) => return Ok(Drive::Finished(outcome_unknown(cp.cursor.index, name))),
                None => None,
            },
        };
        match adopted {
            Some(found) => {
                tracing::info!(run = %ctx.run_id, command = found.id, "adopted the command sent before a restart");
                cp.phase = Phase::Sent { cid: found.id, at, vendor_status: String::new() };
                Ok(Drive::Continue)
            }
            // The process that recorded the intent is gone (its lease expired before this
            // run was resumed), so no POST of it can still be in flight.
            None if intent_sid == Some(sid) => {
                tracing::info!(run = %ctx.run_id, "the command sent before a restart never reached CB; sending it now");
                cp.phase = Phase::Ready;
                Ok(Drive::Continue)
            }
            None => Ok(Drive::Finished(outcome_unknown(cp.cursor.index, name))),
        }
    }

    /// After a cancel: how the current side-effecting command really ended, read back from
    /// CB. `None` while that is not known (it ran, or still runs): the driver then reports
    /// `outcome_unknown`, never `cancelled`, for a command that may have acted.
    pub(super) async fn stopped(
        &self,
        ctx: &RunContext<'_>,
        cp: &Checkpoint,
    ) -> Option<CommandUpdate> {
        let (Phase::Sent { cid, .. }, Some(session)) = (&cp.phase, &cp.session) else {
            return None;
        };
        if !cp.cursor.sent {
            return None;
        }
        match self.client.command(session.id, *cid, None).await {
            Ok(Some(cb)) if mapping::command_status(&cb.status).is_terminal() => {
                unsuccessful(cp.cursor.index, session.id, &cb)
            }
            Ok(_) => None,
            Err(e) => {
                tracing::debug!(run = %ctx.run_id, error = %e, "reading the cancelled command back failed");
                None
            }
        }
    }

    pub(super) fn failure(&self, cp: &Checkpoint, info: ErrorInfo) -> CommandUpdate {
        match &cp.phase {
            // The POST may have gone through before the error: never claim it did not.
            Phase::Intent { name, .. } => outcome_unknown(cp.cursor.index, name),
            _ => CommandUpdate::failed(cp.cursor.index, info),
        }
    }
}

pub(super) fn outcome_unknown(index: usize, name: &str) -> CommandUpdate {
    CommandUpdate::failed(
        index,
        ErrorInfo::new(
            ErrorCode::OutcomeUnknown,
            format!(
                "edrgate cannot tell whether Carbon Black received {name:?} before an interruption; it was not sent again"
            ),
        ),
    )
}
