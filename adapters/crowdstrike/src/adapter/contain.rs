//! Isolate and release (§4.3): `devices-actions/v2` `contain` / `lift_containment`, then the
//! device's `status` polled until `contained` / `normal`. The request is journaled first;
//! after a lost answer the device's status tells whether it arrived (a pending or target
//! state means it did), so it is never sent twice.

use edrgate_adapter::driver::{Drive, RunOps as _};
use edrgate_adapter::{AdapterError, CommandResult, CommandUpdate, ErrorCode, RunContext, Status};

use super::{Checkpoint, CrowdStrikeAdapter, Phase, now_ms, timed_out};
use crate::mapping;

impl CrowdStrikeAdapter {
    pub(super) async fn contain(
        &self,
        ctx: &RunContext<'_>,
        cp: &mut Checkpoint,
        updates: &mut Vec<CommandUpdate>,
        isolate: bool,
        sent: bool,
        since_ms: i64,
    ) -> Result<Drive, AdapterError> {
        let index = cp.cursor.index;
        let status = self.containment(&cp.device).await?;
        let word = status.as_str();
        let vref = Some(format!("devices-actions/{}", cp.device));
        if mapping::containment_status(word, isolate) == Status::Succeeded {
            return Ok(Drive::Finished(
                CommandUpdate::succeeded(index, CommandResult::Containment { isolated: isolate })
                    .with_vendor(vref, Some(word.to_owned())),
            ));
        }
        if sent && mapping::containment_started(word, isolate) {
            if self.timed_out(since_ms) {
                return Ok(Drive::Finished(timed_out(
                    index,
                    "the containment change",
                    self.cfg.command_timeout_secs,
                    vref,
                )));
            }
            return Ok(Drive::Wait(self.poll_delay(since_ms)));
        }
        // Not (yet) received: journal, then ask. A journaled request the device does not show
        // was lost before the vendor took it (the state changes as the request is accepted).
        cp.phase = Phase::Contain { isolate, sent: true, since_ms };
        self.record(ctx, cp, updates)
            .await
            .inspect_err(|_| cp.phase = Phase::Contain { isolate, sent, since_ms })?;
        match self.client.contain(&cp.device, isolate).await {
            Ok(()) => {}
            // 409: already in (or moving to) that state.
            Err(e) if e.code() == ErrorCode::Conflict => {}
            Err(e) if e.is_retryable() => return Err(e),
            Err(e) => {
                cp.cursor.sent = false;
                return Ok(Drive::Finished(CommandUpdate::failed(index, e.info)));
            }
        }
        cp.phase = Phase::Contain { isolate, sent: true, since_ms: now_ms() };
        Ok(Drive::Wait(self.cfg.poll_min()))
    }

    /// The device's containment state word (§4.2 `status`).
    async fn containment(&self, aid: &str) -> Result<String, AdapterError> {
        let found = self.client.devices(&[aid.to_owned()]).await?;
        found
            .into_iter()
            .find(|d| d.device_id.eq_ignore_ascii_case(aid))
            .map(|d| d.status)
            .ok_or_else(|| {
                AdapterError::new(
                    ErrorCode::DeviceNotFound,
                    format!("CrowdStrike knows no device {aid:?}"),
                )
            })
    }
}
