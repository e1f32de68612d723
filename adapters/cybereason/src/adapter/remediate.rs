//! Kill and quarantine: remediations of the element the query API finds for the command's pid
//! or path (§6.3).

use edrgate_adapter::driver::{Drive, RunOps as _};
use edrgate_adapter::{
    AdapterError, Command, CommandResult, CommandUpdate, ErrorCode, ErrorInfo, RunContext, Status,
};

use super::{Checkpoint, CybereasonAdapter, Phase, SensorIds, now_ms, timed_out};
use crate::mapping::{self, CrError};
use crate::wire::{self, actions};

/// Malop id of remediations started without a malop (§6.3, Rapid7 capture).
pub(super) const NO_MALOP: &str = "NOMALOP";

impl CybereasonAdapter {
    /// What a remediation command acts on: its remediation type, the element (looked up with
    /// the query API, since the console remediates elements, not pids or paths; a kill's
    /// caller-given element id is used as is), and the error when there is no such element.
    pub(super) async fn remediation_target(
        &self,
        sensor: &SensorIds,
        command: &Command,
    ) -> Result<(&'static str, Option<String>, ErrorInfo), CrError> {
        let machine = &sensor.machine;
        let (action, query, missing) = match command {
            Command::KillProcess { vendor_id: Some(id), .. } => {
                let missing = ErrorInfo::new(ErrorCode::NotFound, "no such process element");
                return Ok((actions::KILL_PROCESS, Some(id.clone()), missing));
            }
            Command::KillProcess { pid, .. } => (
                actions::KILL_PROCESS,
                element_query(machine, "processes", "Process", "pid", &pid.to_string()),
                ErrorInfo::new(
                    ErrorCode::NotFound,
                    format!("no process with pid {pid} on the machine"),
                ),
            ),
            Command::DeleteFile { path } => (
                actions::QUARANTINE_FILE,
                element_query(machine, "files", "File", "correctedPath", &path.to_lowercase()),
                ErrorInfo::new(
                    ErrorCode::FileNotFound,
                    format!("Cybereason knows no file {path:?} on the machine"),
                ),
            ),

            other => {
                return Err(CrError::Api(AdapterError::internal(format!(
                    "{} is not a remediation",
                    other.kind().as_str()
                ))));
            }
        };
        Ok((action, self.element(&query).await?, missing))
    }

    pub(super) async fn start_remediation(
        &self,
        ctx: &RunContext<'_>,
        cp: &mut Checkpoint,
        updates: &mut Vec<CommandUpdate>,
        sensor: &SensorIds,
        action: &str,
        target: String,
    ) -> Result<Drive, CrError> {
        cp.phase = Phase::RemediationIntent {
            at_ms: now_ms(),
            action: action.to_owned(),
            target: target.clone(),
        };
        if let Err(e) = self.record(ctx, cp, updates).await {
            cp.phase = Phase::Ready;
            return Err(CrError::Api(e));
        }
        self.send_remediation(cp, sensor, action, target).await
    }

    pub(super) async fn send_remediation(
        &self,
        cp: &mut Checkpoint,
        sensor: &SensorIds,
        action: &str,
        target: String,
    ) -> Result<Drive, CrError> {
        let at_ms = match cp.phase {
            Phase::RemediationIntent { at_ms, .. } => at_ms,
            _ => now_ms(),
        };
        let request = wire::RemediateRequest {
            malop_id: None,
            initiator_user_name: self.client.username.clone(),
            actions_by_machine: [(
                sensor.guid.clone(),
                vec![wire::RemediationAction {
                    target_id: Some(target),
                    action_type: action.to_owned(),
                }],
            )]
            .into(),
        };
        let remediation = self.client.remediate(&request).await?;
        self.adopt_remediation(cp, &remediation, at_ms)
    }

    pub(super) fn adopt_remediation(
        &self,
        cp: &mut Checkpoint,
        r: &wire::Remediation,
        at_ms: i64,
    ) -> Result<Drive, CrError> {
        let malop = r.malop_id.clone().unwrap_or_else(|| NO_MALOP.to_owned());
        cp.phase = Phase::Remediation { malop: malop.clone(), id: r.remediation_id.clone(), at_ms };
        Ok(self.remediation_verdict(cp, r, at_ms).unwrap_or(Drive::Continue))
    }

    pub(super) async fn poll_remediation(
        &self,
        cp: &mut Checkpoint,
        malop: &str,
        id: &str,
        at_ms: i64,
    ) -> Result<Drive, CrError> {
        let r = self.client.remediation_progress(malop, id).await?;
        if let Some(drive) = self.remediation_verdict(cp, &r, at_ms) {
            return Ok(drive);
        }
        if now_ms() - at_ms > self.action_timeout_ms() {
            return Ok(Drive::Finished(timed_out(
                cp.cursor.index,
                self.cfg.action_timeout_secs,
                vendor_remediation(malop, id),
            )));
        }
        Ok(Drive::Wait(self.poll_delay(at_ms)))
    }

    /// A terminal remediation's update, or `None` while it is pending or not reported yet.
    pub(super) fn remediation_verdict(
        &self,
        cp: &Checkpoint,
        r: &wire::Remediation,
        _at_ms: i64,
    ) -> Option<Drive> {
        let malop = r.malop_id.clone().unwrap_or_else(|| NO_MALOP.to_owned());
        let vref = Some(vendor_remediation(&malop, &r.remediation_id));
        let (status, word, error) = mapping::remediation_status(r)?;
        Some(match (status, error) {
            (Status::Succeeded, _) => Drive::Finished(
                CommandUpdate::succeeded(cp.cursor.index, CommandResult::Done)
                    .with_vendor(vref, Some(word)),
            ),
            (s, Some(error)) if s.is_terminal() => Drive::Finished(
                CommandUpdate { error: Some(error), ..CommandUpdate::status(cp.cursor.index, s) }
                    .with_vendor(vref, Some(word)),
            ),
            _ => return None,
        })
    }
}

/// A visual-search query for the element of `result_type` with `facet` = `value` on the
/// machine named `machine` (§6.1's Machine query, one hop through `feature`).
pub(super) fn element_query(
    machine: &str,
    feature: &str,
    result_type: &str,
    facet: &str,
    value: &str,
) -> wire::VisualQuery {
    wire::VisualQuery {
        query_path: vec![
            wire::QueryHop {
                requested_type: "Machine".into(),
                filters: vec![wire::Facet {
                    facet_name: "elementDisplayName".into(),
                    values: vec![machine.into()],
                    filter_type: Some("Equals".into()),
                }],
                connection_feature: Some(wire::ConnectionFeature {
                    element_instance_type: "Machine".into(),
                    feature_name: feature.into(),
                }),
                is_result: false,
            },
            wire::QueryHop {
                requested_type: result_type.into(),
                filters: vec![wire::Facet {
                    facet_name: facet.into(),
                    values: vec![value.into()],
                    filter_type: Some("Equals".into()),
                }],
                connection_feature: None,
                is_result: true,
            },
        ],
        custom_fields: vec!["elementDisplayName".into()],
        total_result_limit: Some(10),
        per_group_limit: Some(10),
        per_feature_limit: Some(10),
        template_context: Some("SPECIFIC".into()),
        query_timeout: Some(120_000),
    }
}

fn vendor_remediation(malop: &str, id: &str) -> String {
    format!("remediation/{malop}/{id}")
}
