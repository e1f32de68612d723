//! Isolate and release (§4.3): `devices-actions/v2` `contain` / `lift_containment` (the
//! action's runs asking the same within the batch window share one request of up to 100
//! ids), then each device's `status` polled until `contained` / `normal`. The request is journaled first;
//! after a lost answer the device's status tells whether it arrived (a pending or target
//! state means it did), so it is never sent twice.

use edrgate_adapter::driver::{Drive, RunOps as _};
use edrgate_adapter::{AdapterError, CommandResult, CommandUpdate, ErrorCode, RunContext, Status};

use super::batch::{Joined, follow};
use super::{Checkpoint, CrowdStrikeAdapter, Phase, now_ms, timed_out};
use crate::client::IDS_PER_CONTAIN;
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
        match self.contain_together(ctx, index, &cp.device, isolate).await {
            None => return Ok(Drive::Continue),
            Some(Ok(())) => {}
            // 409: already in (or moving to) that state.
            Some(Err(e)) if e.code() == ErrorCode::Conflict => {}
            Some(Err(e)) if e.is_retryable() => return Err(e),
            Some(Err(e)) => {
                cp.cursor.sent = false;
                return Ok(Drive::Finished(CommandUpdate::failed(index, e.info)));
            }
        }
        cp.phase = Phase::Contain { isolate, sent: true, since_ms: now_ms() };
        Ok(Drive::Wait(self.cfg.poll_min()))
    }

    /// The containment request for this host, sent with the action's other runs asking the
    /// same (one request for up to 100 hosts). `None`: stopped while waiting for the group's
    /// request (the intent is journaled: reconciled against the device's state, or reported
    /// by the driver).
    async fn contain_together(
        &self,
        ctx: &RunContext<'_>,
        index: usize,
        aid: &str,
        isolate: bool,
    ) -> Option<Result<(), AdapterError>> {
        let key = format!("contain:{}:{index}:{isolate}", ctx.action_id);
        match self.contains.join(&key, aid, IDS_PER_CONTAIN) {
            Joined::Follower(rx) => follow(ctx, rx, "containment request").await,
            Joined::Leader(lead) => {
                lead.gather(self.batch_window(), usize::MAX, self.cfg.poll_max()).await;
                let members = lead.seal();
                let ids: Vec<String> = members.iter().map(|(aid, _)| aid.clone()).collect();
                let result = self.client.contain(&ids, isolate).await;
                tracing::debug!(run = %ctx.run_id, hosts = ids.len(), isolate, ok = result.is_ok(), "containment request sent");
                for tx in members.into_iter().filter_map(|(_, tx)| tx) {
                    let _ = tx.send(result.clone());
                }
                Some(result)
            }
        }
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
