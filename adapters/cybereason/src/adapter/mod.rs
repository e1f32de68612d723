//! The run state machine: device lookup, remediations, isolation, file fetches and IR tool
//! runs, with intents journaled before every action and reconciliation after a restart.
//!
//! One call to [`Adapter::step`] holds one of the backend's [`FairSlots`] (keyed by device) for
//! its vendor calls, advances the run as far as it can without waiting, and returns
//! [`Next::After`](edrgate_adapter::Next::After) while Cybereason works. Everything a later step
//! needs is in the [`Checkpoint`]; nothing is kept in memory between steps.
//!
//! The step loop itself (stop checks, back-off, `on_error`, journaling) is the shared
//! [`driver`]; this module is the vendor's [`VendorRun::advance`], split along its seams:
//! `remediate` (kill, quarantine and unquarantine as remediations of elements), `ir` (IR tool
//! runs), `fetch` (direct and batch file fetches), `reconcile` (intents after a restart or a
//! lost session) and `contain` (isolate/release).

mod contain;
mod fetch;
mod ir;
mod reconcile;
mod remediate;

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use edrgate_adapter::adapter::StopReason;
use edrgate_adapter::driver::{self, Cursor, Drive, RunCheckpoint, RunOps as _, VendorRun};
use edrgate_adapter::{
    Adapter, AdapterError, BudgetUse, Capabilities, Command, CommandKind, CommandSupport,
    CommandUpdate, Device, DeviceSupport, ErrorCode, ErrorInfo, FairSlots, Limits, RunContext,
    SharedBudget, Status, Step, Via,
};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::client::CrClient;
use crate::config::{CybereasonConfig, FetchMode};
use crate::mapping::{self, CrError};
use crate::wire::{self, Filter};

use self::remediate::element_query;

/// Largest IR tool package the console accepts (§6.6.3).
pub const MAX_PACKAGE_BYTES: u64 = 100 * 1024 * 1024;

/// A Cybereason backend.
pub struct CybereasonAdapter {
    cfg: CybereasonConfig,
    client: CrClient,
    slots: Arc<FairSlots>,
    capabilities: Capabilities,
}
/// The run's state between steps, stored as JSON by the engine. (`pub` only because it is
/// [`VendorRun::Checkpoint`]; this module is private, so nothing outside the crate names it.)
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Checkpoint {
    /// The device id: the sensor's pylum id.
    device: String,
    /// The current command and the transient-failure count (the driver's).
    #[serde(flatten)]
    cursor: Cursor,
    /// The sensor's other identifiers, once looked up (§5: each route keys on another one).
    #[serde(default)]
    sensor: Option<SensorIds>,
    #[serde(default)]
    phase: Phase,
}

impl RunCheckpoint for Checkpoint {
    fn cursor(&self) -> &Cursor {
        &self.cursor
    }
    fn cursor_mut(&mut self) -> &mut Cursor {
        &mut self.cursor
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
struct SensorIds {
    sensor_id: String,
    pylum_id: String,
    guid: String,
    machine: String,
}

/// The current command's progress.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(tag = "phase", rename_all = "snake_case")]
enum Phase {
    #[default]
    Ready,
    /// Intent recorded for a remediation of `target`; its POST may or may not have arrived.
    RemediationIntent {
        at_ms: i64,
        action: String,
        target: String,
        /// What the console listed just before (`None` in checkpoints older than it).
        #[serde(default)]
        before: Option<reconcile::Before>,
    },
    /// Remediation started; polled on its progress route.
    Remediation { malop: String, id: String, at_ms: i64 },
    /// Intent recorded for isolate/release; repeated only if the sensor is not yet there.
    ContainIntent { at_ms: i64 },
    /// Intent recorded for an IR run of `tool`.
    IrIntent {
        at_ms: i64,
        tool: String,
        /// What the console listed just before (`None` in checkpoints older than it).
        #[serde(default)]
        before: Option<reconcile::Before>,
    },
    /// Fetch-file batch flow (§6.4): started for element `guid`; the progress list is keyed
    /// by file name, so batches of that name that existed before the start are ignored.
    Fetch { name: String, at_ms: i64, known: Vec<i64> },
    /// IR run started as batch `batch`.
    Ir { batch: i64, tool: String, at_ms: i64 },
}
impl CybereasonAdapter {
    /// Builds the adapter for backend `backend_name`. No network call is made.
    pub fn new(backend_name: &str, cfg: CybereasonConfig) -> Result<Self, AdapterError> {
        cfg.validate().map_err(|errors| {
            AdapterError::new(
                ErrorCode::InvalidRequest,
                format!(
                    "invalid cybereason config for backend {backend_name}: {}",
                    errors.join("; ")
                ),
            )
        })?;
        if cfg.url.starts_with("http://") {
            tracing::warn!(
                backend = backend_name,
                "cybereason url uses plain http: the password and session cookie travel unencrypted"
            );
        }
        let client = CrClient::new(&cfg)?;
        let slots = FairSlots::new(cfg.max_concurrent_requests);
        Ok(CybereasonAdapter {
            capabilities: capabilities(
                backend_name,
                u32::try_from(cfg.max_concurrent_requests).unwrap_or(u32::MAX),
                cfg.calls_per_minute,
                cfg.ir_run_path.is_some(),
            ),
            client,
            slots,
            cfg,
        })
    }
}

#[async_trait]
impl Adapter for CybereasonAdapter {
    fn capabilities(&self) -> &Capabilities {
        &self.capabilities
    }

    /// The backend's commands on every device; `delete_file` is refused with where to go
    /// instead of the generic "not supported".
    fn device_support(&self, _device: &Device) -> DeviceSupport {
        let mut support = self.capabilities.for_device(|_| None);
        for u in &mut support.unsupported {
            if u.command == CommandKind::DeleteFile {
                u.reason = delete_file_refusal();
            }
        }
        support
    }

    /// Sensors whose machine name contains `hostname` (`ContainsIgnoreCase`, §6.1), archived
    /// ones left out (C1, Splunk).
    async fn find_devices(&self, hostname: Option<&str>) -> Result<Vec<Device>, AdapterError> {
        let mut filters = vec![Filter {
            field_name: "status".into(),
            operator: "NotEquals".into(),
            values: vec!["Archived".into()],
        }];
        if let Some(h) = hostname {
            filters.push(Filter {
                field_name: "machineName".into(),
                operator: "ContainsIgnoreCase".into(),
                values: vec![h.into()],
            });
        }
        let sensors = self.client.sensors(filters).await.map_err(CrError::into_adapter)?;
        Ok(sensors
            .into_iter()
            .map(|s| mapping::device(&self.capabilities.backend, s))
            .filter(|d| hostname.is_none_or(|h| edrgate_adapter::hostname_matches(&d.hostname, h)))
            .collect())
    }

    /// The busy slots of `max_concurrent_requests`, for `/metrics`.
    fn budgets(&self) -> Vec<BudgetUse> {
        vec![BudgetUse {
            name: "requests",
            in_use: self.slots.in_use(),
            capacity: self.slots.capacity(),
            waiting: self.slots.waiting(),
            held: true,
        }]
    }

    fn use_shared_budget(&self, budget: Arc<dyn SharedBudget>) {
        self.client.use_shared_budget(budget);
    }

    async fn step(
        &self,
        ctx: &RunContext<'_>,
        checkpoint: Option<Value>,
    ) -> Result<Step, AdapterError> {
        // The budget: one slot per step's vendor calls, fairly shared; the wait races the stop
        // (a stopped run steps without one, to close).
        let action = ctx.action_id.to_string();
        let _slot = tokio::select! {
            slot = self.slots.acquire(ctx.device_id.trim(), ctx.tenant, &action) => Some(slot),
            () = ctx.stop.stopped() => None,
        };
        driver::drive(self, ctx, checkpoint).await
    }
}

#[async_trait]
impl VendorRun for CybereasonAdapter {
    type Checkpoint = Checkpoint;
    const VENDOR: &'static str = "cybereason";

    fn begin(&self, ctx: &RunContext<'_>) -> Result<Checkpoint, AdapterError> {
        Ok(Checkpoint {
            device: ctx.device_id.trim().to_owned(),
            cursor: Cursor::default(),
            sensor: None,
            phase: Phase::Ready,
        })
    }

    async fn advance(
        &self,
        ctx: &RunContext<'_>,
        cp: &mut Checkpoint,
        updates: &mut Vec<CommandUpdate>,
    ) -> Result<Drive, AdapterError> {
        match self.drive(ctx, cp, updates).await {
            Ok(drive) => Ok(drive),
            // The session was lost under an action request and a new one is open: the next
            // move reconciles the intent against the console before anything is sent again.
            // Counted with the transient failures, so a console that keeps ending sessions
            // fails the command.
            Err(CrError::SessionLost) if intent(&cp.phase) => {
                let cursor = &mut cp.cursor;
                cursor.transient = cursor.transient.saturating_add(1);
                if cursor.transient > 3 {
                    let info = CrError::SessionLost.into_adapter().info;
                    return Ok(Drive::Finished(CommandUpdate::failed(cursor.index, info)));
                }
                Ok(Drive::Recovered)
            }
            Err(e) => Err(e.into_adapter()),
        }
    }

    fn command_ended(&self, _ctx: &RunContext<'_>, cp: &mut Checkpoint) {
        cp.phase = Phase::Ready;
    }

    /// Aborts an IR batch in flight (remediations have no confirmed abort route, §6.3).
    async fn cancel(
        &self,
        ctx: &RunContext<'_>,
        cp: &mut Checkpoint,
        updates: &mut Vec<CommandUpdate>,
        _reason: StopReason,
    ) {
        // A remediation cannot be aborted: the driver reports a started one `outcome_unknown`.
        // An IR run is aborted, then read back once so the console's own word (aborted, or
        // finished meanwhile) is what the command ends with.
        let Phase::Ir { batch, tool, at_ms } = cp.phase.clone() else { return };
        if let Err(e) = self.client.abort(batch).await {
            tracing::debug!(run = %ctx.run_id, error = %e, "aborting the IR run failed");
        }
        let read_back = match self.sensor(cp).await {
            Ok(sensor) => self.poll_ir(cp, &sensor, batch, &tool, at_ms).await,
            Err(e) => Err(e),
        };
        match read_back {
            Ok(Drive::Finished(update)) => self.command_done(ctx, cp, updates, update),
            Ok(_) => {}
            Err(e) => {
                tracing::debug!(run = %ctx.run_id, error = %e, "reading the aborted IR run back failed")
            }
        }
    }
}

impl CybereasonAdapter {
    /// One move of the current command.
    async fn drive(
        &self,
        ctx: &RunContext<'_>,
        cp: &mut Checkpoint,
        updates: &mut Vec<CommandUpdate>,
    ) -> Result<Drive, CrError> {
        let sensor = self.sensor(cp).await?;
        let index = cp.cursor.index;
        match cp.phase.clone() {
            Phase::RemediationIntent { at_ms, action, target, before } => {
                return self
                    .reconcile_remediation(cp, &sensor, at_ms, action, target, before)
                    .await;
            }
            Phase::Remediation { malop, id, at_ms } => {
                return self.poll_remediation(cp, &malop, &id, at_ms).await;
            }
            Phase::ContainIntent { .. } => {}
            Phase::IrIntent { at_ms, tool, before } => {
                return self.reconcile_ir(ctx, cp, &sensor, at_ms, tool, before).await;
            }
            Phase::Ir { batch, tool, at_ms } => {
                return self.poll_ir(cp, &sensor, batch, &tool, at_ms).await;
            }
            Phase::Fetch { name, at_ms, known } => {
                return self.poll_fetch(ctx, cp, &sensor, &name, at_ms, &known).await;
            }
            Phase::Ready => {}
        }
        match &ctx.commands[index] {
            Command::GetFile { path, .. } if self.cfg.fetch_mode == FetchMode::Batch => {
                self.start_fetch(cp, &sensor, path).await
            }
            Command::GetFile { path, .. } => {
                self.get_file(ctx, index, &sensor, path).await.map(Drive::Finished)
            }
            Command::DeleteFile { .. } => Ok(Drive::Finished(CommandUpdate::failed(
                index,
                ErrorInfo::new(ErrorCode::UnsupportedCommand, delete_file_refusal()),
            ))),
            command @ (Command::KillProcess { .. }
            | Command::QuarantineFile { .. }
            | Command::UnquarantineFile { .. }) => {
                match self.remediation_target(&sensor, command).await? {
                    (action, Ok(guid)) => {
                        self.start_remediation(ctx, cp, updates, &sensor, action, guid).await
                    }
                    (_, Err(error)) => Ok(Drive::Finished(CommandUpdate::failed(index, error))),
                }
            }
            Command::ProcessList => self.process_list(index, &sensor).await.map(Drive::Finished),
            Command::Isolate => self.contain(ctx, cp, updates, &sensor, true).await,
            Command::Release => self.contain(ctx, cp, updates, &sensor, false).await,
            Command::RunScript { .. } if self.cfg.ir_run().is_none() => {
                Ok(Drive::Finished(CommandUpdate::failed(index, ir::ir_unconfigured())))
            }
            Command::RunScript { script, file_id, .. } => {
                self.start_ir(ctx, cp, updates, &sensor, script, file_id.as_deref()).await
            }
            other => Ok(Drive::Finished(CommandUpdate::failed(
                index,
                ErrorInfo::new(
                    ErrorCode::UnsupportedCommand,
                    format!("Cybereason has no primitive for {}", other.kind().as_str()),
                ),
            ))),
        }
    }

    /// The sensor's identifiers, looked up once by pylum id (§6.1).
    async fn sensor(&self, cp: &mut Checkpoint) -> Result<SensorIds, CrError> {
        if let Some(s) = &cp.sensor {
            return Ok(s.clone());
        }
        let filters = vec![Filter {
            field_name: "pylumId".into(),
            operator: "Equals".into(),
            values: vec![cp.device.clone().into()],
        }];
        let found = self.client.sensors(filters).await?;
        let Some(s) = found.into_iter().find(|s| s.pylum_id.eq_ignore_ascii_case(&cp.device))
        else {
            return Err(CrError::Api(AdapterError::new(
                ErrorCode::DeviceNotFound,
                format!("Cybereason has no sensor with pylum id {:?}", cp.device),
            )));
        };
        let ids = SensorIds {
            sensor_id: s.sensor_id,
            pylum_id: s.pylum_id,
            guid: s.guid,
            machine: s.machine_name,
        };
        cp.sensor = Some(ids.clone());
        Ok(ids)
    }

    /// The elements a query finds (GUID and element) on the sensor's own machine: an element
    /// whose `ownerMachine` is another machine (a namesake, e.g. a re-imaged host) is left out.
    async fn elements(
        &self,
        query: &wire::VisualQuery,
        sensor: &SensorIds,
    ) -> Result<Vec<(String, wire::Element)>, CrError> {
        let data = self.client.visual_query(query).await?;
        Ok(data
            .result_id_to_element_data_map
            .into_iter()
            .filter(|(_, e)| {
                e.linked("ownerMachine", "guid")
                    .is_none_or(|g| g.eq_ignore_ascii_case(&sensor.guid))
            })
            .collect())
    }

    fn action_timeout_ms(&self) -> i64 {
        i64::try_from(self.cfg.action_timeout_secs.saturating_mul(1000)).unwrap_or(i64::MAX)
    }

    /// Delay before the next poll: a tenth of the time already waited, within the bounds.
    fn poll_delay(&self, since_ms: i64) -> Duration {
        let waited = Duration::from_millis(u64::try_from(now_ms() - since_ms).unwrap_or(0));
        (waited / 10).clamp(self.cfg.poll_min(), self.cfg.poll_max())
    }
}

fn intent(phase: &Phase) -> bool {
    matches!(
        phase,
        Phase::RemediationIntent { .. } | Phase::IrIntent { .. } | Phase::ContainIntent { .. }
    )
}
fn outcome_unknown(index: usize, what: &str) -> CommandUpdate {
    CommandUpdate::failed(
        index,
        ErrorInfo::new(
            ErrorCode::OutcomeUnknown,
            format!(
                "edrgate cannot tell whether Cybereason received the {what} request before an interruption; it was not sent again"
            ),
        ),
    )
}

/// Why `delete_file` is refused: Cybereason's only file remediation is the quarantine, which
/// moves the file (reversibly) and needs it indexed; calling that a delete would misreport it.
fn delete_file_refusal() -> String {
    "Cybereason has no remediation that deletes a file: its QUARANTINE_FILE moves the file into the sensor's quarantine, reversibly (unquarantine_file puts it back); use quarantine_file".to_owned()
}

fn timed_out(index: usize, limit: u64, vref: String) -> CommandUpdate {
    let mut u = CommandUpdate::status(index, Status::TimedOut).with_vendor(Some(vref), None);
    u.error = Some(ErrorInfo::new(
        ErrorCode::Timeout,
        format!("Cybereason did not finish within {limit} s"),
    ));
    u
}
/// What this backend supports, and how (see the crate doc). `run_script` only with the
/// operator-configured IR run request (`ir_run_path`): no public source documents it (§6.6.2).
fn capabilities(backend: &str, concurrent: u32, per_minute: u32, ir_run: bool) -> Capabilities {
    let native = |command, notes: &str| CommandSupport {
        command,
        via: Via::Native,
        notes: Some(notes.to_owned()),
    };
    let mut commands = vec![
        native(
            CommandKind::ProcessList,
            "query API (Machine → processes → Process): live processes only (no endTime); vendor_id is the process element a kill takes",
        ),
        native(
            CommandKind::GetFile,
            "direct fetch by path and pylumId; the encrypted zip is opened by edrgate and the file itself stored",
        ),
        native(
            CommandKind::KillProcess,
            "remediation KILL_PROCESS of the live process element of the pid (applicablePid, no endTime), refused when several match; the sensor must be connected (isActiveProbeConnected)",
        ),
        native(
            CommandKind::QuarantineFile,
            "remediation QUARANTINE_FILE: a reversible move of the file into the sensor's quarantine folder (purged after 30 days), not a delete; only a file the console has indexed (a File element at that path) can be quarantined, else file_not_found; the sensor must be connected (isActiveProbeConnected)",
        ),
        native(
            CommandKind::UnquarantineFile,
            "remediation UNQUARANTINE_FILE (console 20.1.120 or later) of the quarantined-file element that was at the path: the file goes back to its place; the sensor must be connected (isActiveProbeConnected)",
        ),
        native(
            CommandKind::Isolate,
            "monitor/global/commands/isolate; the per-machine result decides",
        ),
        native(
            CommandKind::Release,
            "monitor/global/commands/un-isolate; the per-machine result decides",
        ),
    ];
    if ir_run {
        commands.push(CommandSupport {
            via: Via::Configured,
            ..native(
                CommandKind::RunScript,
                "operator-configured: IR tool run through the run request set in ir_run_path/ir_run_body (undocumented by the vendor); script names an uploaded package; with file_id the stored file is uploaded first as that package (at most 100 MB); tool output goes to the customer's storage bucket, not through the API",
            )
        });
    }
    Capabilities {
        backend: backend.to_owned(),
        kind: "cybereason".to_owned(),
        commands,
        limits: Limits {
            concurrent_sessions: Some(concurrent),
            max_upload_bytes: Some(MAX_PACKAGE_BYTES),
            calls_per_minute: Some(per_minute),
        },
    }
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capabilities_list_exactly_the_supported_commands() {
        for ir_run in [false, true] {
            let caps = capabilities("cr", 10, 600, ir_run);
            for kind in CommandKind::ALL {
                let supported = matches!(
                    kind,
                    CommandKind::ProcessList
                        | CommandKind::GetFile
                        | CommandKind::KillProcess
                        | CommandKind::QuarantineFile
                        | CommandKind::UnquarantineFile
                        | CommandKind::Isolate
                        | CommandKind::Release
                ) || (ir_run && kind == CommandKind::RunScript);
                assert_eq!(caps.supports(kind), supported, "{kind:?} (ir_run {ir_run})");
            }
        }
    }

    #[test]
    fn run_script_is_offered_only_with_the_operator_configured_run_request() {
        let plain = capabilities("cr", 10, 600, false);
        assert!(!plain.supports(CommandKind::RunScript), "the run request is undocumented");
        let configured = capabilities("cr", 10, 600, true);
        let run = configured.commands.iter().find(|c| c.command == CommandKind::RunScript).unwrap();
        assert_eq!(run.via, Via::Configured, "{run:?}");
        assert!(run.notes.as_deref().unwrap().starts_with("operator-configured"), "{run:?}");
    }
}
