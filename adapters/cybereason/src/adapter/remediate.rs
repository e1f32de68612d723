//! Kill, quarantine and unquarantine: remediations of the element the query API finds for the
//! command's pid or path (§6.3).

use edrgate_adapter::driver::{Drive, RunOps as _};
use edrgate_adapter::{
    AdapterError, Command, CommandResult, CommandUpdate, ErrorCode, ErrorInfo, ProcessInfo,
    RunContext, Status,
};
use serde_json::Value;

use super::{Checkpoint, CybereasonAdapter, Phase, SensorIds, now_ms, timed_out};
use crate::mapping::{self, CrError};
use crate::wire::{self, actions};

/// Malop id of remediations started without a malop (§6.3, Rapid7 capture).
pub(super) const NO_MALOP: &str = "NOMALOP";

impl CybereasonAdapter {
    /// What a remediation command acts on: its remediation type, the element (looked up with
    /// the query API, since the console remediates elements, not pids or paths; a kill's
    /// caller-given element id is used as is), or the error that ends the command: the sensor
    /// is not connected, there is no such element, or several match.
    ///
    /// The sensor must be connected first, as XSOAR checks (`is_probe_connected`: a Machine
    /// query with facet `isActiveProbeConnected` = `true`, before every remediation command,
    /// demisto/content#19493, I7): kills are not queued for offline machines (§6.3), and a
    /// remediation that waits for days helps nobody.
    pub(super) async fn remediation_target(
        &self,
        sensor: &SensorIds,
        command: &Command,
    ) -> Result<(&'static str, Result<String, ErrorInfo>), CrError> {
        let action = match command {
            Command::KillProcess { .. } => actions::KILL_PROCESS,
            Command::QuarantineFile { .. } => actions::QUARANTINE_FILE,
            Command::UnquarantineFile { .. } => actions::UNQUARANTINE_FILE,
            other => {
                return Err(CrError::Api(AdapterError::internal(format!(
                    "{} is not a remediation",
                    other.kind().as_str()
                ))));
            }
        };
        if !self.connected(sensor).await? {
            return Ok((
                action,
                Err(ErrorInfo::new(
                    ErrorCode::DeviceOffline,
                    format!(
                        "the Cybereason sensor of {} is not connected (isActiveProbeConnected is false); the console does not queue kills for offline machines",
                        sensor.machine
                    ),
                )
                .with_vendor("isActiveProbeConnected", "false")),
            ));
        }
        let target = match command {
            Command::KillProcess { vendor_id: Some(id), .. } => Ok(id.clone()),
            Command::KillProcess { pid, .. } => self.live_process(sensor, *pid).await?,
            // The console remediates the File element it indexes at the path (`correctedPath`
            // is lower case, fixture `…file-details.json`); a file it never indexed has none.
            Command::QuarantineFile { path } => {
                let query = element_query(
                    &sensor.machine,
                    "files",
                    "File",
                    "correctedPath",
                    path.to_lowercase().into(),
                );
                let found = self.elements(&query, sensor).await?;
                one_element(
                    found,
                    || {
                        ErrorInfo::new(
                            ErrorCode::FileNotFound,
                            format!(
                                "Cybereason has not indexed a file {path:?} on the machine (no File element): only indexed files can be quarantined"
                            ),
                        )
                    },
                    "files",
                    &format!("path {path:?}"),
                )
            }
            // UNQUARANTINE_FILE takes the quarantined-file element, not the File (§6.3).
            Command::UnquarantineFile { path } => {
                let found = self.elements(&quarantined_query(path), sensor).await?;
                one_element(
                    found,
                    || {
                        ErrorInfo::new(
                            ErrorCode::FileNotFound,
                            format!(
                                "the Cybereason sensor's quarantine holds no file that was at {path:?}"
                            ),
                        )
                    },
                    "quarantined files",
                    &format!("path {path:?}"),
                )
            }
            _ => unreachable_remediation(),
        };
        Ok((action, target))
    }

    /// The element of the live process `pid` on the sensor's machine. Public clients filter
    /// Process elements on `applicablePid` with a number (msticpy's Cybereason provider,
    /// `find_process_by_pid`: `{"facetName": "applicablePid", "values": [42]}`), and Process
    /// elements include processes that ended — with a reused pid, several match: an ended one
    /// carries `endTime` (stix-shifter's process capture has `endTime` beside `applicablePid`;
    /// XSOAR reads `endTime` as "End Time"), a live one has none. Only live elements owned by
    /// this machine (`ownerMachine` guid = the sensor's machine guid) are kept, and more than
    /// one is refused: killing a guess could end the wrong process.
    async fn live_process(
        &self,
        sensor: &SensorIds,
        pid: u64,
    ) -> Result<Result<String, ErrorInfo>, CrError> {
        let query =
            element_query(&sensor.machine, "processes", "Process", "applicablePid", pid.into());
        let found: Vec<(String, wire::Element)> = self
            .elements(&query, sensor)
            .await?
            .into_iter()
            .filter(|(_, e)| e.simple("applicablePid").is_none_or(|p| p.trim() == pid.to_string()))
            .collect();
        let ended = found.iter().filter(|(_, e)| e.simple("endTime").is_some()).count();
        let live: Vec<(String, wire::Element)> =
            found.into_iter().filter(|(_, e)| e.simple("endTime").is_none()).collect();
        Ok(one_element(
            live,
            || {
                ErrorInfo::new(
                    ErrorCode::NotFound,
                    if ended > 0 {
                        format!("no live process with pid {pid} on the machine ({ended} ended)")
                    } else {
                        format!("no process with pid {pid} on the machine")
                    },
                )
            },
            "live processes",
            &format!("pid {pid}"),
        ))
    }

    /// `process_list`: the machine's live processes through the query API (Machine →
    /// `processes` → Process, XSOAR's `query_processes`), ended instances (with `endTime`) and
    /// other machines' elements left out. Each row carries the element GUID as `vendor_id`, what
    /// a kill of that very instance takes.
    pub(super) async fn process_list(
        &self,
        index: usize,
        sensor: &SensorIds,
    ) -> Result<CommandUpdate, CrError> {
        let mut query = element_query(&sensor.machine, "processes", "Process", "", Value::Null);
        if let Some(hop) = query.query_path.last_mut() {
            hop.filters.clear();
        }
        // XSOAR's limits for listings (`build_query`); C1 caps `perGroupLimit` at 1000 (§6.1).
        query.total_result_limit = Some(10_000);
        query.per_group_limit = Some(1000);
        let found = self.elements(&query, sensor).await?;
        let pid_of = |e: &wire::Element| {
            e.simple("applicablePid").and_then(|p| p.trim().parse::<u64>().ok())
        };
        let mut processes: Vec<ProcessInfo> = found
            .iter()
            .filter(|(_, e)| e.simple("endTime").is_none())
            .filter_map(|(guid, e)| {
                let parent_pid = e
                    .linked("parentProcess", "guid")
                    .and_then(|g| found.iter().find(|(k, _)| k == g))
                    .and_then(|(_, parent)| pid_of(parent));
                Some(ProcessInfo {
                    pid: pid_of(e)?,
                    parent_pid,
                    name: e.simple("elementDisplayName").unwrap_or_default().to_owned(),
                    path: e.simple("imageFile.correctedPath").map(str::to_owned),
                    command_line: e.simple("commandLine").map(str::to_owned),
                    username: e.linked("calculatedUser", "name").map(str::to_owned),
                    sid: None,
                    started_at: e
                        .simple("creationTime")
                        .and_then(|t| t.trim().parse::<i64>().ok())
                        .map(|ms| ms / 1000),
                    vendor_id: Some(guid.clone()),
                })
            })
            .collect();
        processes.sort_by_key(|p| p.pid);
        Ok(CommandUpdate::succeeded(index, CommandResult::Processes { processes })
            .with_vendor(Some(format!("machine/{}", sensor.guid)), Some("SUCCESS".into())))
    }

    /// Whether the sensor is connected now: XSOAR's `is_probe_connected` query (Machine by
    /// `elementDisplayName` with `isActiveProbeConnected` = `true`; the answer lists the machine
    /// only when it is connected, fixture `…machine-isActiveProbeConnected.json`).
    pub(super) async fn connected(&self, sensor: &SensorIds) -> Result<bool, CrError> {
        let query = wire::VisualQuery {
            query_path: vec![wire::QueryHop {
                requested_type: "Machine".into(),
                filters: vec![
                    wire::Facet {
                        facet_name: "elementDisplayName".into(),
                        values: vec![sensor.machine.clone().into()],
                        filter_type: None,
                    },
                    wire::Facet {
                        facet_name: "isActiveProbeConnected".into(),
                        values: vec![true.into()],
                        filter_type: None,
                    },
                ],
                connection_feature: None,
                is_result: true,
            }],
            custom_fields: vec!["elementDisplayName".into()],
            total_result_limit: Some(100),
            per_group_limit: Some(100),
            per_feature_limit: Some(100),
            template_context: Some("SPECIFIC".into()),
            query_timeout: Some(120_000),
        };
        let data = self.client.visual_query(&query).await?;
        Ok(data.result_id_to_element_data_map.iter().any(|(guid, e)| {
            guid.eq_ignore_ascii_case(&sensor.guid)
                || e.simple("elementDisplayName")
                    .is_some_and(|n| n.eq_ignore_ascii_case(&sensor.machine))
        }))
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
        let before = self.remediations_before(&target).await?;
        cp.phase = Phase::RemediationIntent {
            at_ms: now_ms(),
            action: action.to_owned(),
            target: target.clone(),
            before: Some(before),
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

/// The one element of a lookup, or the error: `missing` when none, `conflict` (naming the
/// candidates, so a caller can pick one by `vendor_id`) when several.
pub(super) fn one_element(
    mut found: Vec<(String, wire::Element)>,
    missing: impl FnOnce() -> ErrorInfo,
    what: &str,
    key: &str,
) -> Result<String, ErrorInfo> {
    match found.len() {
        0 => Err(missing()),
        1 => Ok(found.remove(0).0),
        n => {
            let ids: Vec<&str> = found.iter().map(|(g, _)| g.as_str()).take(5).collect();
            Err(ErrorInfo::new(
                ErrorCode::Conflict,
                format!(
                    "{n} {what} match {key} on the machine ({}); edrgate does not pick one: pass the element id as vendor_id",
                    ids.join(", ")
                ),
            ))
        }
    }
}

fn unreachable_remediation() -> Result<String, ErrorInfo> {
    Err(ErrorInfo::new(ErrorCode::Internal, "not a remediation"))
}

/// A visual-search query for the elements of `result_type` with `facet` = `value` on the
/// machine named `machine` (§6.1's Machine query, one hop through `feature`, as XSOAR's
/// `query_processes`), with the features edrgate reads: `ownerMachine` (to keep the sensor's
/// own machine), `applicablePid`, `endTime` and `creationTime` (live or ended), names and
/// command lines.
pub(super) fn element_query(
    machine: &str,
    feature: &str,
    result_type: &str,
    facet: &str,
    value: serde_json::Value,
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
                    values: vec![value],
                    filter_type: Some("Equals".into()),
                }],
                connection_feature: None,
                is_result: true,
            },
        ],
        custom_fields: ELEMENT_FIELDS.iter().map(|f| (*f).to_owned()).collect(),
        // Enough to see every instance of a reused pid (ended ones included).
        total_result_limit: Some(100),
        per_group_limit: Some(100),
        per_feature_limit: Some(100),
        template_context: Some("SPECIFIC".into()),
        query_timeout: Some(120_000),
    }
}

/// The quarantined-file elements that were at `path`, on any machine (the caller keeps the
/// sensor's own by `ownerMachine`): one hop, as no public query names the Machine feature
/// that leads to them (§6.3 says only "a \"Quarantine File\" element query").
fn quarantined_query(path: &str) -> wire::VisualQuery {
    let lower = path.to_lowercase().into();
    let mut query = element_query("", "", wire::QUARANTINE_FILE_ELEMENT, "correctedPath", lower);
    query.query_path.remove(0);
    query
}

/// The custom fields of element lookups (names as in XSOAR's `PROCESS_INFO` and the
/// recorded process answers; the image's path in the dotted form of the image's features
/// those answers carry, `imageFile.md5String`…).
pub(super) const ELEMENT_FIELDS: [&str; 9] = [
    "elementDisplayName",
    "ownerMachine",
    "applicablePid",
    "creationTime",
    "endTime",
    "commandLine",
    "parentProcess",
    "calculatedUser",
    "imageFile.correctedPath",
];

fn vendor_remediation(malop: &str, id: &str) -> String {
    format!("remediation/{malop}/{id}")
}
