//! Isolate and release through the sensor record (no session needed).

use edrgate_adapter::driver::{Drive, RunOps as _};
use edrgate_adapter::{CommandResult, CommandUpdate, ErrorCode, ErrorInfo, RunContext, Status};

use super::{CarbonBlackAdapter, Checkpoint, Phase, now, phase_mismatch};
use crate::mapping::CbError;

impl CarbonBlackAdapter {
    /// Isolate/release through the sensor record (no session needed).
    pub(super) async fn drive_containment(
        &self,
        ctx: &RunContext<'_>,
        cp: &mut Checkpoint,
        updates: &mut Vec<CommandUpdate>,
        isolate: bool,
    ) -> Result<Drive, CbError> {
        let index = cp.cursor.index;
        let (at, applied) = match cp.phase {
            Phase::Contain { at, applied } => (at, applied),
            _ => {
                let previous =
                    std::mem::replace(&mut cp.phase, Phase::Contain { at: now(), applied: false });
                if let Err(e) = self.record(ctx, cp, updates).await {
                    cp.phase = previous;
                    return Err(CbError::Api(e));
                }
                match cp.phase {
                    Phase::Contain { at, .. } => (at, false),
                    _ => return Err(phase_mismatch()),
                }
            }
        };
        if !applied {
            // Reading the record first makes this a reconciliation too: after a crash the
            // PUT is only sent when the sensor does not already carry the wanted state.
            self.client.set_isolation(cp.sensor_id, isolate).await?;
            cp.phase = Phase::Contain { at, applied: true };
            updates.push(CommandUpdate::status(index, Status::Running).with_vendor(
                Some(format!("sensor/{}", cp.sensor_id)),
                Some(if isolate { "isolating" } else { "releasing" }.to_owned()),
            ));
        }
        let sensor = self.client.sensor(cp.sensor_id).await?;
        // `is_isolating` is the effective state (cbapi `isolate()` waits for it).
        if sensor.is_isolating.or(sensor.network_isolation_enabled) == Some(isolate) {
            return Ok(Drive::Finished(
                CommandUpdate::succeeded(index, CommandResult::Containment { isolated: isolate })
                    .with_vendor(Some(format!("sensor/{}", cp.sensor_id)), Some(sensor.status)),
            ));
        }
        if now() - at > self.cfg.command_timeout_secs as f64 {
            return Ok(Drive::Finished(
                CommandUpdate::status(index, Status::TimedOut).with_error(ErrorInfo::new(
                    ErrorCode::Timeout,
                    format!(
                        "the sensor did not apply the change within {} s; it stays requested on the server",
                        self.cfg.command_timeout_secs
                    ),
                )),
            ));
        }
        Ok(Drive::Wait(self.poll_delay(at)))
    }
}
