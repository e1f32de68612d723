//! Isolate and release (§6.2): journaled, reconciled against the sensor's state, decided by the
//! per-machine result rather than the HTTP status.

use edrgate_adapter::driver::{Drive, RunOps as _};
use edrgate_adapter::{CommandResult, CommandUpdate, ErrorCode, ErrorInfo, RunContext, Status};

use super::{Checkpoint, CybereasonAdapter, Phase, SensorIds, now_ms};
use crate::mapping::{self, CrError, Vocabulary};
use crate::wire::Filter;

impl CybereasonAdapter {
    pub(super) async fn contain(
        &self,
        ctx: &RunContext<'_>,
        cp: &mut Checkpoint,
        updates: &mut Vec<CommandUpdate>,
        sensor: &SensorIds,
        isolate: bool,
    ) -> Result<Drive, CrError> {
        let index = cp.cursor.index;
        let vref = Some(format!("pylum/{}", sensor.pylum_id));
        if let Phase::ContainIntent { .. } = cp.phase {
            // Reconcile: a sensor already in the wanted state needs no second request.
            let filters = vec![Filter {
                field_name: "pylumId".into(),
                operator: "Equals".into(),
                values: vec![sensor.pylum_id.clone().into()],
            }];
            let now = self.client.sensors(filters).await?;
            if now.first().and_then(|s| s.isolated) == Some(isolate) {
                return Ok(Drive::Finished(
                    CommandUpdate::succeeded(
                        index,
                        CommandResult::Containment { isolated: isolate },
                    )
                    .with_vendor(vref, Some("Succeeded".into())),
                ));
            }
        } else {
            cp.phase = Phase::ContainIntent { at_ms: now_ms() };
            if let Err(e) = self.record(ctx, cp, updates).await {
                cp.phase = Phase::Ready;
                return Err(CrError::Api(e));
            }
        }
        let results = self.client.isolate(&sensor.pylum_id, isolate).await?;
        // HTTP 200 proves nothing: the per-id value decides (§6.2, D15).
        let word = results
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(&sensor.pylum_id))
            .map(|(_, v)| v.clone())
            .unwrap_or_default();
        let (status, code) = mapping::status_of(Vocabulary::Isolation, &word);
        Ok(Drive::Finished(if status == Status::Succeeded {
            CommandUpdate::succeeded(index, CommandResult::Containment { isolated: isolate })
                .with_vendor(vref, Some(word))
        } else {
            CommandUpdate::failed(
                index,
                ErrorInfo::new(
                    code.unwrap_or(ErrorCode::CommandFailed),
                    format!(
                        "Cybereason did not {} the machine",
                        if isolate { "isolate" } else { "release" }
                    ),
                )
                .with_vendor(
                    if word.is_empty() { "missing".to_owned() } else { word.clone() },
                    String::new(),
                ),
            )
            .with_vendor(vref, Some(word))
        }))
    }
}
