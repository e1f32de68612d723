//! At most once: what happens to a command whose intent was recorded but whose answer was
//! never seen.

use edrgate_adapter::driver::Drive;
use edrgate_adapter::{CommandUpdate, ErrorCode, ErrorInfo, RunContext};

use super::{CarbonBlackAdapter, Checkpoint, Phase};
use crate::mapping::{self, CbError};

/// Clock skew tolerated between edrgate and the CB server when matching a command to an
/// intent by `create_time`. Erring late only turns an adoption into `outcome_unknown`.
const RECONCILE_SKEW_SECS: f64 = 2.0;

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
    ) -> Result<Drive, CbError> {
        let listed = match self.client.commands(sid).await {
            Ok(listed) => listed,
            Err(CbError::SessionLost(_)) => {
                return Ok(Drive::Finished(outcome_unknown(cp.cursor.index, name)));
            }
            Err(e) => return Err(e),
        };
        let adopted = listed
            .into_iter()
            .filter(|c| {
                c.name == name
                    && mapping::object_text(&c.object) == object
                    && c.create_time.is_some_and(|t| t + RECONCILE_SKEW_SECS >= at)
            })
            .max_by_key(|c| c.id);
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
