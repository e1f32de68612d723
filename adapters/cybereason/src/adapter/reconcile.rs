//! At most once: after a restart or a lost session, an intent is matched against the
//! console's remediation and action lists (initiator, start time, target) before anything is
//! sent again; what cannot be told apart ends `outcome_unknown`.

use edrgate_adapter::driver::Drive;
use edrgate_adapter::{CommandUpdate, RunContext};

use super::ir::is_our_sensor;
use super::remediate::NO_MALOP;
use super::{Checkpoint, CybereasonAdapter, Phase, SensorIds, now_ms, outcome_unknown};
use crate::mapping::{self, CrError};
use crate::wire::{self, actions};

/// How long reconciliation waits for remediations that have not reported yet (empty
/// `statusLog`) before it gives up with `outcome_unknown`.
const RECONCILE_WAIT_MS: i64 = 60_000;

/// Clock skew tolerated between edrgate and the console when matching vendor objects to an
/// intent by start time. Erring late only turns an adoption into `outcome_unknown`.
const RECONCILE_SKEW_MS: i64 = 2000;

impl CybereasonAdapter {
    /// After a restart or a lost session: adopt the remediation if the console has it, send
    /// it if the console shows none since the intent, else report `outcome_unknown`.
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn reconcile_remediation(
        &self,
        _ctx: &RunContext<'_>,
        cp: &mut Checkpoint,
        _updates: &mut [CommandUpdate],
        sensor: &SensorIds,
        at_ms: i64,
        action: String,
        target: String,
    ) -> Result<Drive, CrError> {
        let all = self.client.remediations(NO_MALOP).await?;
        let ours: Vec<&wire::Remediation> = all
            .iter()
            .filter(|r| {
                r.initiating_user
                    .as_deref()
                    .is_none_or(|u| u.eq_ignore_ascii_case(&self.client.username))
                    && r.start.is_none_or(|s| s >= at_ms - RECONCILE_SKEW_MS)
            })
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
        _updates: &mut [CommandUpdate],
        sensor: &SensorIds,
        at_ms: i64,
        tool: String,
    ) -> Result<Drive, CrError> {
        let batches = self.client.all_actions().await?;
        let mut ours = Vec::new();
        for b in batches.iter().filter(|b| {
            b.action_type.as_deref().is_some_and(|t| t.eq_ignore_ascii_case(actions::IR_RUN))
                && b.initiator_user
                    .as_deref()
                    .is_none_or(|u| u.eq_ignore_ascii_case(&self.client.username))
                && b.start_time.is_none_or(|s| s >= at_ms - RECONCILE_SKEW_MS)
                && b.action_arguments.to_string().contains(&tool)
        }) {
            let rows = mapping::ir_rows(&self.client.ir_status(b.batch_id).await?);
            if rows.is_empty() || rows.iter().any(|r| is_our_sensor(&r.sensor, sensor)) {
                ours.push(b.batch_id);
            }
        }
        match ours.as_slice() {
            [] => self.send_ir(ctx, cp, sensor, tool).await,
            [batch] => {
                tracing::info!(batch, "adopting an IR tool run sent before an interruption");
                cp.phase = Phase::Ir { batch: *batch, tool, at_ms };
                Ok(Drive::Continue)
            }
            _ => Ok(Drive::Finished(outcome_unknown(cp.cursor.index, actions::IR_RUN))),
        }
    }
}
