//! At most once: after a restart or a lost session, an intent is matched against the
//! console's remediation and action lists (initiator, start time, target) before anything is
//! sent again; what cannot be told apart ends `outcome_unknown`.

use edrgate_adapter::RunContext;
use edrgate_adapter::driver::Drive;
use serde::{Deserialize, Serialize};

use super::ir::is_our_sensor;
use super::remediate::NO_MALOP;
use super::{Checkpoint, CybereasonAdapter, Phase, SensorIds, now_ms, outcome_unknown};
use crate::mapping::{self, CrError};
use crate::wire::{self, actions};

/// How long reconciliation waits for remediations that have not reported yet (empty
/// `statusLog`) before it gives up with `outcome_unknown`. (Measured on edrgate's clock only:
/// from the intent it recorded to now.)
const RECONCILE_WAIT_MS: i64 = 60_000;

/// What the console listed just before a side effect was sent: the ids of what could be taken
/// for ours afterwards. Only objects not among them can be ours. Nothing is compared with a
/// clock (the console's may be off from ours by minutes): ids only.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub(super) struct Before {
    #[serde(default)]
    ids: Vec<String>,
}

impl Before {
    /// Whether `id` was not listed before. Without a record (an older checkpoint) nothing can
    /// be told apart: `false`.
    fn is_new(before: Option<&Self>, id: &str) -> bool {
        before.is_some_and(|b| !b.ids.iter().any(|known| known == id))
    }
}

impl CybereasonAdapter {
    /// After a restart or a lost session: adopt the remediation if the console has it, send
    /// it if the console shows none since the intent, else report `outcome_unknown`.
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn reconcile_remediation(
        &self,
        cp: &mut Checkpoint,
        sensor: &SensorIds,
        at_ms: i64,
        action: String,
        target: String,
        before: Option<Before>,
    ) -> Result<Drive, CrError> {
        let all = self.client.remediations(NO_MALOP).await?;
        let ours: Vec<&wire::Remediation> = all
            .iter()
            .filter(|r| self.initiated(r.initiating_user.as_deref()))
            .filter(|r| before.is_none() || Before::is_new(before.as_ref(), &r.remediation_id))
            .collect();
        let matching: Vec<&&wire::Remediation> = ours
            .iter()
            .filter(|r| {
                r.status_log.iter().any(|e| {
                    e.target_id.as_deref() == Some(target.as_str())
                        && e.action_type.as_deref().is_none_or(|a| a == action)
                })
            })
            .collect();
        if before.is_none() && !matching.is_empty() {
            // No record of what was there before: ours cannot be told apart from an older one.
            return Ok(Drive::Finished(outcome_unknown(cp.cursor.index, &action)));
        }
        if let [one] = matching.as_slice() {
            tracing::info!(remediation = %one.remediation_id, "adopting a remediation sent before an interruption");
            return self.adopt_remediation(cp, one, at_ms);
        }
        let unreported = ours.iter().any(|r| r.status_log.is_empty());
        if matching.is_empty() && !unreported {
            return self.send_remediation(cp, sensor, &action, target).await;
        }
        // A remediation that has not reported yet cannot be told apart from ours: wait for it
        // to report (bounded), then decide.
        if matching.is_empty() && now_ms() - at_ms < RECONCILE_WAIT_MS {
            return Ok(Drive::Wait(self.poll_delay(at_ms)));
        }
        Ok(Drive::Finished(outcome_unknown(cp.cursor.index, &action)))
    }

    /// After a restart or a lost session: find our batch among the console's actions by type,
    /// initiator, start time and tool, confirmed by its per-sensor rows; none means the run
    /// request never arrived.
    pub(super) async fn reconcile_ir(
        &self,
        ctx: &RunContext<'_>,
        cp: &mut Checkpoint,
        sensor: &SensorIds,
        at_ms: i64,
        tool: String,
        before: Option<Before>,
    ) -> Result<Drive, CrError> {
        let batches = self.client.all_actions().await?;
        let mut ours = Vec::new();
        for b in batches.iter().filter(|b| {
            self.is_ir_run_of(b, &tool)
                && (before.is_none() || Before::is_new(before.as_ref(), &b.batch_id.to_string()))
        }) {
            let rows = mapping::ir_rows(&self.client.ir_status(b.batch_id).await?);
            if rows.is_empty() || rows.iter().any(|r| is_our_sensor(&r.sensor, sensor)) {
                ours.push(b.batch_id);
            }
        }
        match ours.as_slice() {
            // No record of what was there before: ours cannot be told apart from an older one.
            [_, ..] if before.is_none() => {
                Ok(Drive::Finished(outcome_unknown(cp.cursor.index, actions::IR_RUN)))
            }
            [] => self.send_ir(ctx, cp, sensor, tool).await,
            [batch] => {
                tracing::info!(batch, "adopting an IR tool run sent before an interruption");
                cp.phase = Phase::Ir { batch: *batch, tool, at_ms };
                Ok(Drive::Continue)
            }
            _ => Ok(Drive::Finished(outcome_unknown(cp.cursor.index, actions::IR_RUN))),
        }
    }

    /// What the console lists before a remediation of `target` is sent (see [`Before`]): ours
    /// remediations of that target, and those that have not reported yet (their target is
    /// not known). Bounded by one target's history and what is in flight.
    pub(super) async fn remediations_before(&self, target: &str) -> Result<Before, CrError> {
        let all = self.client.remediations(NO_MALOP).await?;
        let ids = all
            .into_iter()
            .filter(|r| self.initiated(r.initiating_user.as_deref()))
            .filter(|r| {
                r.status_log.is_empty()
                    || r.status_log.iter().any(|e| e.target_id.as_deref() == Some(target))
            })
            .map(|r| r.remediation_id)
            .collect();
        Ok(Before { ids })
    }

    /// What the console lists before an IR run of `tool` is requested (see [`Before`]): the
    /// runs of that tool by edrgate's user in the console's action list.
    pub(super) async fn ir_runs_before(&self, tool: &str) -> Result<Before, CrError> {
        let all = self.client.all_actions().await?;
        let ids = all
            .iter()
            .filter(|b| self.is_ir_run_of(b, tool))
            .map(|b| b.batch_id.to_string())
            .collect();
        Ok(Before { ids })
    }

    /// Started by edrgate's console user (a console that does not say is given the benefit).
    fn initiated(&self, user: Option<&str>) -> bool {
        user.is_none_or(|u| u.eq_ignore_ascii_case(&self.client.username))
    }

    fn is_ir_run_of(&self, b: &wire::Batch, tool: &str) -> bool {
        b.action_type.as_deref().is_some_and(|t| t.eq_ignore_ascii_case(actions::IR_RUN))
            && self.initiated(b.initiator_user.as_deref())
            && b.action_arguments.to_string().contains(tool)
    }
}
