//! The run state machine: device lookup, remediations, isolation, file fetches and IR tool
//! runs, with intents journaled before every action and reconciliation after a restart.
//!
//! One call to [`Adapter::step`] holds one of the backend's [`FairSlots`] (keyed by device) for
//! its vendor calls, advances the run as far as it can without waiting, and returns
//! [`Next::After`] while Cybereason works. Everything a later step needs is in the
//! [`Checkpoint`]; nothing is kept in memory between steps.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use edrgate_adapter::adapter::StopReason;
use edrgate_adapter::adapter::{decode_checkpoint, encode_checkpoint};
use edrgate_adapter::{
    Adapter, AdapterError, BudgetUse, Capabilities, Command, CommandKind, CommandResult,
    CommandSupport, CommandUpdate, Device, ErrorCode, ErrorInfo, FairSlots, Limits, Next, OnError,
    RunContext, SharedBudget, Status, Step, Via,
};
use futures::StreamExt as _;
use secrecy::ExposeSecret as _;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::io::AsyncWriteExt as _;

use crate::client::CrClient;
use crate::config::{CybereasonConfig, FetchMode};
use crate::mapping::{self, CrError, Vocabulary};
use crate::wire::{self, Filter, actions};

/// How long reconciliation waits for remediations that have not reported yet (empty
/// `statusLog`) before it gives up with `outcome_unknown`.
const RECONCILE_WAIT_MS: i64 = 60_000;
/// Largest IR tool package the console accepts (§6.6.3).
pub const MAX_PACKAGE_BYTES: u64 = 100 * 1024 * 1024;
/// Malop id of remediations started without a malop (§6.3, Rapid7 capture).
const NO_MALOP: &str = "NOMALOP";
/// Clock skew tolerated between edrgate and the console when matching vendor objects to an
/// intent by start time. Erring late only turns an adoption into `outcome_unknown`.
const RECONCILE_SKEW_MS: i64 = 2000;
/// Chunk size of a file streamed out of the fetched zip.
const ZIP_CHUNK: usize = 64 * 1024;

/// A Cybereason backend.
pub struct CybereasonAdapter {
    cfg: CybereasonConfig,
    client: CrClient,
    slots: Arc<FairSlots>,
    capabilities: Capabilities,
}

/// The run's state between steps, stored as JSON by the engine.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct Checkpoint {
    /// The device id: the sensor's pylum id.
    device: String,
    /// The sensor's other identifiers, once looked up (§5: each route keys on another one).
    #[serde(default)]
    sensor: Option<SensorIds>,
    #[serde(default)]
    index: usize,
    #[serde(default)]
    phase: Phase,
    #[serde(default)]
    failed: bool,
    /// Consecutive transient failures, for the back-off.
    #[serde(default)]
    transient: u32,
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
    RemediationIntent { at_ms: i64, action: String, target: String },
    /// Remediation started; polled on its progress route.
    Remediation { malop: String, id: String, at_ms: i64 },
    /// Intent recorded for isolate/release; repeated only if the sensor is not yet there.
    ContainIntent { at_ms: i64 },
    /// Intent recorded for an IR run of `tool`.
    IrIntent { at_ms: i64, tool: String },
    /// Fetch-file batch flow (§6.4): started for element `guid`; the progress list is keyed
    /// by file name, so batches of that name that existed before the start are ignored.
    Fetch { name: String, at_ms: i64, known: Vec<i64> },
    /// IR run started as batch `batch`.
    Ir { batch: i64, tool: String, at_ms: i64 },
}

/// What driving the current command produced.
enum Drive {
    Continue,
    Wait(Duration),
    Finished(CommandUpdate),
    /// The journal refused the intent: the run belongs to someone else now.
    Abort(AdapterError),
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
        let mut cp = match checkpoint {
            None => Checkpoint {
                device: ctx.device_id.trim().to_owned(),
                sensor: None,
                index: 0,
                phase: Phase::Ready,
                failed: false,
                transient: 0,
            },
            Some(value) => decode_checkpoint("cybereason", value)?,
        };
        let mut updates = Vec::new();
        // The budget: one slot per step's vendor calls, fairly shared; the wait races the stop.
        let action = ctx.action_id.to_string();
        let slot = tokio::select! {
            slot = self.slots.acquire(&cp.device, ctx.tenant, &action) => Some(slot),
            () = ctx.stop.stopped() => None,
        };
        let next = self.advance(ctx, &mut cp, &mut updates).await;
        drop(slot);
        let next = next?;
        Ok(Step { checkpoint: encode_checkpoint(&cp)?, updates, next })
    }
}

impl CybereasonAdapter {
    async fn advance(
        &self,
        ctx: &RunContext<'_>,
        cp: &mut Checkpoint,
        updates: &mut Vec<CommandUpdate>,
    ) -> Result<Next, AdapterError> {
        loop {
            if let Some(reason) = ctx.stop.reason() {
                self.stop(ctx, cp, updates, reason).await;
                return Ok(Next::Done);
            }
            if cp.index >= ctx.commands.len() {
                return Ok(Next::Done);
            }
            match self.drive(ctx, cp, updates).await {
                Ok(drive) => {
                    cp.transient = 0;
                    match drive {
                        Drive::Continue => {}
                        Drive::Wait(delay) => return Ok(Next::After(delay)),
                        Drive::Finished(update) => command_done(ctx, cp, updates, update),
                        Drive::Abort(e) => return Err(e),
                    }
                }
                // The session was lost under an action request and a new one is open: the
                // next drive reconciles the intent against the console before anything is
                // sent again.
                Err(CrError::SessionLost) if intent(&cp.phase) => {
                    cp.transient = cp.transient.saturating_add(1);
                    if cp.transient > 3 {
                        let update = CommandUpdate::failed(
                            cp.index,
                            CrError::SessionLost.into_adapter().info,
                        );
                        command_done(ctx, cp, updates, update);
                    }
                }
                // Transient failures (transport, 5xx, 429) are ridden out with back-off and
                // the vendor's Retry-After; an intent stays an intent, so it is reconciled
                // rather than re-sent.
                Err(e) if e.is_retryable() => {
                    cp.transient = cp.transient.saturating_add(1);
                    let delay = edrgate_adapter::http::Backoff::STANDARD
                        .delay(cp.transient.min(8), e.retry_after());
                    tracing::warn!(run = %ctx.run_id, error = %e, retry_in = ?delay, "cybereason call failed");
                    return Ok(Next::After(delay));
                }
                Err(e) => {
                    let update = CommandUpdate::failed(cp.index, e.into_adapter().info);
                    command_done(ctx, cp, updates, update);
                }
            }
        }
    }

    /// One move of the current command.
    async fn drive(
        &self,
        ctx: &RunContext<'_>,
        cp: &mut Checkpoint,
        updates: &mut Vec<CommandUpdate>,
    ) -> Result<Drive, CrError> {
        let sensor = self.sensor(cp).await?;
        let index = cp.index;
        match cp.phase.clone() {
            Phase::RemediationIntent { at_ms, action, target } => {
                return self
                    .reconcile_remediation(ctx, cp, updates, &sensor, at_ms, action, target)
                    .await;
            }
            Phase::Remediation { malop, id, at_ms } => {
                return self.poll_remediation(cp, &malop, &id, at_ms).await;
            }
            Phase::ContainIntent { .. } => {}
            Phase::IrIntent { at_ms, tool } => {
                return self.reconcile_ir(ctx, cp, updates, &sensor, at_ms, tool).await;
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
            command @ (Command::KillProcess { .. }
            | Command::DeleteFile { .. }
            | Command::RegistryDeleteKey { .. }) => {
                let (action, element, missing) = self.remediation_target(&sensor, command).await?;
                match element {
                    Some(guid) => {
                        self.start_remediation(ctx, cp, updates, &sensor, action, guid).await
                    }
                    None => Ok(Drive::Finished(CommandUpdate::failed(index, missing))),
                }
            }
            Command::Isolate => self.contain(ctx, cp, updates, &sensor, true).await,
            Command::Release => self.contain(ctx, cp, updates, &sensor, false).await,
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

    /// What a remediation command acts on: its remediation type, the element (looked up with
    /// the query API, since the console remediates elements, not pids or paths; a kill's
    /// caller-given element id is used as is), and the error when there is no such element.
    async fn remediation_target(
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
            Command::RegistryDeleteKey { key } => (
                actions::DELETE_REGISTRY_KEY,
                element_query(
                    machine,
                    "registryEvents",
                    "RegistryEvent",
                    "elementDisplayName",
                    &key.to_lowercase(),
                ),
                ErrorInfo::new(
                    ErrorCode::NotFound,
                    format!("Cybereason knows no registry key {key:?} on the machine"),
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

    /// The GUID of the single element a query finds.
    async fn element(&self, query: &wire::VisualQuery) -> Result<Option<String>, CrError> {
        let data = self.client.visual_query(query).await?;
        Ok(data.result_id_to_element_data_map.into_keys().next())
    }

    // ---- remediation (§6.3) ----

    async fn start_remediation(
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
        if let Err(e) = record(ctx, cp, updates).await {
            cp.phase = Phase::Ready;
            return Ok(Drive::Abort(e));
        }
        self.send_remediation(cp, sensor, action, target).await
    }

    async fn send_remediation(
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

    fn adopt_remediation(
        &self,
        cp: &mut Checkpoint,
        r: &wire::Remediation,
        at_ms: i64,
    ) -> Result<Drive, CrError> {
        let malop = r.malop_id.clone().unwrap_or_else(|| NO_MALOP.to_owned());
        cp.phase = Phase::Remediation { malop: malop.clone(), id: r.remediation_id.clone(), at_ms };
        Ok(self.remediation_verdict(cp, r, at_ms).unwrap_or(Drive::Continue))
    }

    /// After a restart or a lost session: adopt the remediation if the console has it, send
    /// it if the console shows none since the intent, else report `outcome_unknown`.
    #[allow(clippy::too_many_arguments)]
    async fn reconcile_remediation(
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
        Ok(Drive::Finished(outcome_unknown(cp.index, &action)))
    }

    async fn poll_remediation(
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
                cp.index,
                self.cfg.action_timeout_secs,
                vendor_remediation(malop, id),
            )));
        }
        Ok(Drive::Wait(self.poll_delay(at_ms)))
    }

    /// A terminal remediation's update, or `None` while it is pending or not reported yet.
    fn remediation_verdict(
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
                CommandUpdate::succeeded(cp.index, CommandResult::Done)
                    .with_vendor(vref, Some(word)),
            ),
            (s, Some(error)) if s.is_terminal() => Drive::Finished(
                CommandUpdate { error: Some(error), ..CommandUpdate::status(cp.index, s) }
                    .with_vendor(vref, Some(word)),
            ),
            _ => return None,
        })
    }

    // ---- isolation (§6.2) ----

    async fn contain(
        &self,
        ctx: &RunContext<'_>,
        cp: &mut Checkpoint,
        updates: &mut Vec<CommandUpdate>,
        sensor: &SensorIds,
        isolate: bool,
    ) -> Result<Drive, CrError> {
        let index = cp.index;
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
            if let Err(e) = record(ctx, cp, updates).await {
                cp.phase = Phase::Ready;
                return Ok(Drive::Abort(e));
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

    // ---- files (§6.4) ----

    /// The direct fetch (§6.4): one request by path and pylum id.
    async fn get_file(
        &self,
        ctx: &RunContext<'_>,
        index: usize,
        sensor: &SensorIds,
        path: &str,
    ) -> Result<CommandUpdate, CrError> {
        let Some(resp) = self.client.fetch_direct(path, &sensor.pylum_id).await? else {
            return Ok(CommandUpdate::failed(
                index,
                ErrorInfo::new(ErrorCode::FileNotFound, format!("the sensor has no file {path:?}")),
            ));
        };
        let update = self.store_zip(ctx, index, resp).await?;
        Ok(update
            .with_vendor(Some(format!("fetch-direct/{}", sensor.pylum_id)), Some("SUCCESS".into())))
    }

    /// The batch flow, first move: find the file's element, note the batches of its name
    /// that already exist, start the fetch. Reading a file changes no endpoint, so no intent
    /// is journaled; a repeated start only costs a second download.
    async fn start_fetch(
        &self,
        cp: &mut Checkpoint,
        sensor: &SensorIds,
        path: &str,
    ) -> Result<Drive, CrError> {
        let query =
            element_query(&sensor.machine, "files", "File", "correctedPath", &path.to_lowercase());
        let Some(guid) = self.element(&query).await? else {
            return Ok(Drive::Finished(CommandUpdate::failed(
                cp.index,
                ErrorInfo::new(
                    ErrorCode::FileNotFound,
                    format!("Cybereason knows no file {path:?} on the machine"),
                ),
            )));
        };
        let name = file_name(path);
        let known = self
            .client
            .fetch_progress()
            .await?
            .into_iter()
            .filter(|p| p.file_name.eq_ignore_ascii_case(&name))
            .filter_map(|p| p.batch_id)
            .collect();
        let envelope = self.client.fetch_start(&guid).await?;
        if !matches!(envelope.status.as_str(), "SUCCESS" | "PARTIAL_SUCCESS") {
            return Ok(Drive::Finished(CommandUpdate::failed(
                cp.index,
                ErrorInfo::new(
                    ErrorCode::VendorRejected,
                    "Cybereason did not start the file fetch",
                )
                .with_vendor(envelope.status, envelope.message.unwrap_or_default()),
            )));
        }
        cp.phase = Phase::Fetch { name, at_ms: now_ms(), known };
        Ok(Drive::Continue)
    }

    /// The batch flow, later moves: wait for the batch of our file name to succeed, download
    /// its zip (a 500 means the batch expired, §6.4), then close it.
    async fn poll_fetch(
        &self,
        ctx: &RunContext<'_>,
        cp: &mut Checkpoint,
        sensor: &SensorIds,
        name: &str,
        at_ms: i64,
        known: &[i64],
    ) -> Result<Drive, CrError> {
        let progress = self.client.fetch_progress().await?;
        let entry = progress.iter().find(|p| {
            p.file_name.eq_ignore_ascii_case(name)
                && p.batch_id.is_some_and(|b| !known.contains(&b))
        });
        if let Some(wire::FetchProgress { succeeded: true, batch_id: Some(batch), .. }) = entry {
            let vref = Some(format!("fetchfile/{batch}"));
            let update = match self.client.fetch_files(*batch).await {
                Ok(resp) => self.store_zip(ctx, cp.index, resp).await?,
                Err(CrError::Api(e)) if e.info.vendor_code.as_deref() == Some("500") => {
                    CommandUpdate::failed(
                        cp.index,
                        ErrorInfo::new(
                            ErrorCode::CommandFailed,
                            "the fetch batch expired on the console",
                        )
                        .with_vendor("500", ""),
                    )
                }
                Err(e) => return Err(e),
            };
            if let Err(e) = self.client.fetch_close(*batch).await {
                tracing::debug!(error = %e, batch, "closing the fetch batch failed");
            }
            return Ok(Drive::Finished(update.with_vendor(vref, Some("succeeded".into()))));
        }
        if now_ms() - at_ms > self.action_timeout_ms() {
            return Ok(Drive::Finished(timed_out(
                cp.index,
                self.cfg.action_timeout_secs,
                format!("fetchfile/{}", sensor.pylum_id),
            )));
        }
        Ok(Drive::Wait(self.poll_delay(at_ms)))
    }

    /// Stores the file inside a fetched zip: the zip is spooled to an anonymous temporary file
    /// (the format needs seeking), then the first file in it is decrypted and streamed into
    /// the store, never held whole in memory. The command's `offset`/`length` cut it.
    async fn store_zip(
        &self,
        ctx: &RunContext<'_>,
        index: usize,
        resp: reqwest::Response,
    ) -> Result<CommandUpdate, CrError> {
        let (path, offset, length) = match &ctx.commands[index] {
            Command::GetFile { path, offset, length } => (path.as_str(), *offset, *length),
            _ => return Err(CrError::Api(AdapterError::internal("store_zip outside get_file"))),
        };
        let internal = |what: &str, e: &dyn std::fmt::Display| {
            CrError::Api(AdapterError::internal(format!("{what}: {e}")))
        };
        let spool = tokio::task::spawn_blocking(tempfile::tempfile)
            .await
            .map_err(|e| internal("temporary file", &e))?
            .map_err(|e| internal("temporary file", &e))?;
        let mut spool = tokio::fs::File::from_std(spool);
        let mut body = resp.bytes_stream();
        while let Some(chunk) = body.next().await {
            let chunk =
                chunk.map_err(|e| CrError::Api(edrgate_adapter::http::transport_error(e)))?;
            spool.write_all(&chunk).await.map_err(|e| internal("spooling the zip", &e))?;
        }
        spool.flush().await.map_err(|e| internal("spooling the zip", &e))?;
        let spool = spool.into_std().await;

        let password =
            self.cfg.fetch_zip_password.as_ref().map(|p| p.expose_secret().as_bytes().to_vec());
        let (tx, mut rx) = tokio::sync::mpsc::channel::<Vec<u8>>(4);
        let reader =
            tokio::task::spawn_blocking(move || unzip_first(spool, password.as_deref(), &tx));
        let name = file_name(path);
        let mut writer = ctx.files.create(index, &name).await.map_err(CrError::Api)?;
        let (mut skip, mut take) = (offset.unwrap_or(0), length.unwrap_or(u64::MAX));
        while let Some(chunk) = rx.recv().await {
            let mut part: &[u8] = &chunk;
            let cut = usize::try_from(skip.min(part.len() as u64)).unwrap_or(part.len());
            part = &part[cut..];
            skip -= cut as u64;
            let keep = usize::try_from(take.min(part.len() as u64)).unwrap_or(part.len());
            part = &part[..keep];
            take -= keep as u64;
            if !part.is_empty() {
                writer.write(part).await.map_err(CrError::Api)?;
            }
        }
        match reader.await.map_err(|e| internal("unzip task", &e))? {
            Ok(()) => {}
            Err(message) => {
                return Ok(CommandUpdate::failed(
                    index,
                    ErrorInfo::new(ErrorCode::CommandFailed, message),
                ));
            }
        }
        let file = writer.commit().await.map_err(CrError::Api)?;
        Ok(CommandUpdate::succeeded(index, CommandResult::File { file }))
    }

    // ---- IR tools (§6.6) ----

    async fn start_ir(
        &self,
        ctx: &RunContext<'_>,
        cp: &mut Checkpoint,
        updates: &mut Vec<CommandUpdate>,
        sensor: &SensorIds,
        script: &str,
        file_id: Option<&str>,
    ) -> Result<Drive, CrError> {
        let tool = script.trim().to_owned();
        if let Some(file_id) = file_id {
            {
                let (file, reader) = ctx.files.open(file_id.trim()).await.map_err(CrError::Api)?;
                if file.size > MAX_PACKAGE_BYTES {
                    return Ok(Drive::Finished(CommandUpdate::failed(
                        cp.index,
                        ErrorInfo::new(
                            ErrorCode::PayloadTooLarge,
                            format!(
                                "IR tool packages are limited to {MAX_PACKAGE_BYTES} bytes; {} has {}",
                                file.name, file.size
                            ),
                        ),
                    )));
                }
                // The package takes the script's name. Upload replaces a package of the same
                // name, so repeating it is harmless.
                self.client.upload_package(&tool, reader, file.size).await?;
            }
        }
        cp.phase = Phase::IrIntent { at_ms: now_ms(), tool: tool.clone() };
        if let Err(e) = record(ctx, cp, updates).await {
            cp.phase = Phase::Ready;
            return Ok(Drive::Abort(e));
        }
        self.send_ir(ctx, cp, sensor, tool).await
    }

    async fn send_ir(
        &self,
        ctx: &RunContext<'_>,
        cp: &mut Checkpoint,
        sensor: &SensorIds,
        tool: String,
    ) -> Result<Drive, CrError> {
        let at_ms = match cp.phase {
            Phase::IrIntent { at_ms, .. } => at_ms,
            _ => now_ms(),
        };
        let args = match &ctx.commands[cp.index] {
            Command::RunScript { args, .. } => args.clone(),
            _ => Vec::new(),
        };
        let body = render(&self.cfg.ir_run_body, sensor, &tool, &args);
        match self.client.ir_run(&self.cfg.ir_run_path, &body).await? {
            None => Ok(Drive::Finished(CommandUpdate::failed(
                cp.index,
                ErrorInfo::new(
                    ErrorCode::VendorRejected,
                    "the sensor cannot take an IR tool run (HTTP 204)",
                )
                .with_vendor("204", ""),
            ))),
            Some(batch) => {
                cp.phase = Phase::Ir { batch: batch.batch_id, tool, at_ms };
                Ok(Drive::Continue)
            }
        }
    }

    /// After a restart or a lost session: find our batch among the console's actions by type,
    /// initiator, start time and tool, confirmed by its per-sensor rows; none means the run
    /// request never arrived.
    async fn reconcile_ir(
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
            _ => Ok(Drive::Finished(outcome_unknown(cp.index, actions::IR_RUN))),
        }
    }

    async fn poll_ir(
        &self,
        cp: &mut Checkpoint,
        sensor: &SensorIds,
        batch: i64,
        tool: &str,
        at_ms: i64,
    ) -> Result<Drive, CrError> {
        let body = self.client.ir_status(batch).await?;
        let rows = mapping::ir_rows(&body);
        let vref = Some(format!("batch/{batch}"));
        let row =
            rows.iter().find(|r| is_our_sensor(&r.sensor, sensor)).or(match rows.as_slice() {
                [only] => Some(only),
                _ => None,
            });
        if let Some(row) = row {
            let (status, error) = mapping::ir_status(row);
            if status == Status::Succeeded {
                let output =
                    bucket_note(tool, &format!("{} on sensor {}", row.status, sensor.sensor_id));
                return Ok(Drive::Finished(
                    CommandUpdate::succeeded(
                        cp.index,
                        CommandResult::Execution {
                            pid: None,
                            exit_code: None,
                            output: Some(output),
                            output_file: None,
                        },
                    )
                    .with_vendor(vref, Some(row.status.clone())),
                ));
            }
            if let Some(error) = error.filter(|_| status.is_terminal()) {
                return Ok(Drive::Finished(
                    CommandUpdate { error: Some(error), ..CommandUpdate::status(cp.index, status) }
                        .with_vendor(vref, Some(row.status.clone())),
                ));
            }
        }
        // The other plausible shape (§6.6.1): a batch object with counters and `finalState`.
        if rows.is_empty()
            && let Ok(b) = serde_json::from_value::<wire::Batch>(body)
        {
            let (status, words, error) = mapping::batch_status(&b);
            if status.is_terminal() {
                let update = match error {
                    None => CommandUpdate::succeeded(
                        cp.index,
                        CommandResult::Execution {
                            pid: None,
                            exit_code: None,
                            output: Some(bucket_note(tool, &row_less(sensor))),
                            output_file: None,
                        },
                    ),
                    Some(error) => CommandUpdate {
                        error: Some(error),
                        ..CommandUpdate::status(cp.index, status)
                    },
                };
                return Ok(Drive::Finished(update.with_vendor(vref, Some(words))));
            }
        }
        if now_ms() - at_ms > self.action_timeout_ms() {
            if let Err(e) = self.client.abort(batch).await {
                tracing::debug!(error = %e, batch, "aborting a timed-out IR run failed");
            }
            return Ok(Drive::Finished(timed_out(
                cp.index,
                self.cfg.action_timeout_secs,
                format!("batch/{batch}"),
            )));
        }
        Ok(Drive::Wait(self.poll_delay(at_ms)))
    }

    // ---- run end ----

    /// The run is stopped: abort an IR batch in flight (remediations have no confirmed abort
    /// route, §6.3) and close every unfinished command with the stop's status.
    async fn stop(
        &self,
        ctx: &RunContext<'_>,
        cp: &mut Checkpoint,
        updates: &mut Vec<CommandUpdate>,
        reason: StopReason,
    ) {
        if let Phase::Ir { batch, .. } = cp.phase
            && let Err(e) = self.client.abort(batch).await
        {
            tracing::debug!(run = %ctx.run_id, error = %e, "aborting the IR run failed");
        }
        cp.index = ctx.close_rest(cp.index, Some(reason), updates);
        cp.phase = Phase::Ready;
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

/// Reads the first file of the zip (decrypting with `password` when it is encrypted) and
/// sends it in chunks. Runs on a blocking thread.
fn unzip_first(
    spool: std::fs::File,
    password: Option<&[u8]>,
    tx: &tokio::sync::mpsc::Sender<Vec<u8>>,
) -> Result<(), String> {
    use std::io::Read as _;
    let mut zip = zip::ZipArchive::new(spool)
        .map_err(|e| format!("the fetched archive is not a zip: {e}"))?;
    let index = (0..zip.len())
        .find(|i| zip.by_index_data(*i).is_ok_and(|f| !f.is_dir()))
        .ok_or("the fetched archive holds no file")?;
    let entry = match password {
        Some(pw) => zip.by_index_decrypt(index, pw),
        None => zip.by_index(index),
    };
    let mut entry = entry.map_err(|e| match e {
        zip::result::ZipError::InvalidPassword => {
            "the fetched archive did not open with fetch_zip_password".to_owned()
        }
        zip::result::ZipError::UnsupportedArchive(m) if password.is_none() => {
            format!("the fetched archive is encrypted ({m}); configure fetch_zip_password")
        }
        other => format!("cannot open the fetched archive: {other}"),
    })?;
    let mut buf = vec![0u8; ZIP_CHUNK];
    loop {
        let n = entry.read(&mut buf).map_err(|e| format!("reading the fetched archive: {e}"))?;
        if n == 0 {
            return Ok(());
        }
        if tx.blocking_send(buf[..n].to_vec()).is_err() {
            return Err("the file store stopped accepting the file".into());
        }
    }
}

/// A visual-search query for the element of `result_type` with `facet` = `value` on the
/// machine named `machine` (§6.1's Machine query, one hop through `feature`).
fn element_query(
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

/// The IR run body: the configured template with its placeholders filled in.
fn render(template: &Value, sensor: &SensorIds, tool: &str, args: &[String]) -> Value {
    match template {
        Value::String(s) => match s.as_str() {
            "$sensorsIds" => Value::from(vec![sensor.sensor_id.clone()]),
            "$pylumIds" => Value::from(vec![sensor.pylum_id.clone()]),
            "$toolName" => Value::from(tool),
            "$arguments" => Value::from(args.to_vec()),
            "$commandLine" => Value::from(
                std::iter::once(tool.to_owned())
                    .chain(args.iter().cloned())
                    .collect::<Vec<_>>()
                    .join(" "),
            ),
            _ => template.clone(),
        },
        Value::Array(a) => Value::Array(a.iter().map(|v| render(v, sensor, tool, args)).collect()),
        Value::Object(o) => Value::Object(
            o.iter().map(|(k, v)| (k.clone(), render(v, sensor, tool, args))).collect(),
        ),
        other => other.clone(),
    }
}

/// The result text of an IR run: where its output went (§6.6.3: a storage bucket, not the API).
fn bucket_note(tool: &str, how: &str) -> String {
    format!(
        "IR tool {tool:?} finished ({how}). Cybereason does not return tool output through its API: the sensor uploads it to the customer's storage bucket configured for IR tools (see GET /rest/irtools/credentials)."
    )
}

fn row_less(sensor: &SensorIds) -> String {
    format!("on sensor {}", sensor.sensor_id)
}

/// The last segment of an endpoint path (Windows or POSIX).
fn file_name(path: &str) -> String {
    path.rsplit(['\\', '/']).next().filter(|n| !n.is_empty()).unwrap_or("file").to_owned()
}

fn is_our_sensor(row_sensor: &str, sensor: &SensorIds) -> bool {
    row_sensor.eq_ignore_ascii_case(&sensor.sensor_id)
        || row_sensor.eq_ignore_ascii_case(&sensor.pylum_id)
}

fn intent(phase: &Phase) -> bool {
    matches!(
        phase,
        Phase::RemediationIntent { .. } | Phase::IrIntent { .. } | Phase::ContainIntent { .. }
    )
}

/// Records the end of the current command and applies `on_error`.
fn command_done(
    ctx: &RunContext<'_>,
    cp: &mut Checkpoint,
    updates: &mut Vec<CommandUpdate>,
    update: CommandUpdate,
) {
    let failed = update.status != Status::Succeeded;
    updates.push(update);
    cp.index += 1;
    cp.phase = Phase::Ready;
    cp.transient = 0;
    if failed {
        cp.failed = true;
        if ctx.on_error == OnError::Stop {
            cp.index = ctx.close_rest(cp.index, None, updates);
        }
    }
}

/// Persists the intent now, with the step's earlier updates (drained once stored, so they are
/// not reported twice).
async fn record(
    ctx: &RunContext<'_>,
    cp: &Checkpoint,
    updates: &mut Vec<CommandUpdate>,
) -> Result<(), AdapterError> {
    let value = encode_checkpoint(cp)?;
    updates.push(CommandUpdate::status(cp.index, Status::Dispatched));
    match ctx.journal.record(&value, updates).await {
        Ok(()) => {
            updates.clear();
            Ok(())
        }
        Err(e) => {
            updates.pop();
            Err(e)
        }
    }
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

fn timed_out(index: usize, limit: u64, vref: String) -> CommandUpdate {
    let mut u = CommandUpdate::status(index, Status::TimedOut).with_vendor(Some(vref), None);
    u.error = Some(ErrorInfo::new(
        ErrorCode::Timeout,
        format!("Cybereason did not finish within {limit} s"),
    ));
    u
}

fn vendor_remediation(malop: &str, id: &str) -> String {
    format!("remediation/{malop}/{id}")
}

/// What this backend supports, and how (see the crate doc).
fn capabilities(backend: &str, concurrent: u32, per_minute: u32) -> Capabilities {
    let native = |command, notes: &str| CommandSupport {
        command,
        via: Via::Native,
        notes: Some(notes.to_owned()),
    };
    Capabilities {
        backend: backend.to_owned(),
        kind: "cybereason".to_owned(),
        commands: vec![
            native(
                CommandKind::GetFile,
                "direct fetch by path and pylumId; the encrypted zip is opened by edrgate and the file itself stored",
            ),
            native(
                CommandKind::KillProcess,
                "remediation KILL_PROCESS of the process element found for the pid; not queued for offline machines",
            ),
            native(
                CommandKind::DeleteFile,
                "remediation QUARANTINE_FILE: the file is moved to the sensor's quarantine folder",
            ),
            native(
                CommandKind::RegistryDeleteKey,
                "remediation DELETE_REGISTRY_KEY of the registry element found for the key",
            ),
            native(
                CommandKind::RunScript,
                "IR tool run: script names an uploaded package; with file_id the stored file is uploaded first as that package (at most 100 MB); tool output goes to the customer's storage bucket, not through the API",
            ),
            native(
                CommandKind::Isolate,
                "monitor/global/commands/isolate; the per-machine result decides",
            ),
            native(
                CommandKind::Release,
                "monitor/global/commands/un-isolate; the per-machine result decides",
            ),
        ],
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
    fn the_default_run_body_names_the_sensor_and_tool() {
        let cfg = CybereasonConfig::new("https://x", "u", secrecy::SecretString::from("p"));
        let sensor = SensorIds {
            sensor_id: "srv:P1".into(),
            pylum_id: "P1".into(),
            guid: "-1.2".into(),
            machine: "m".into(),
        };
        let body = render(&cfg.ir_run_body, &sensor, "collect.exe", &["-q".into()]);
        assert_eq!(
            body,
            serde_json::json!({"sensorsIds": ["srv:P1"], "filters": null, "argument": "collect.exe", "arguments": ["-q"]})
        );
    }

    #[test]
    fn capabilities_list_exactly_the_supported_commands() {
        let caps = capabilities("cr", 10, 600);
        for kind in CommandKind::ALL {
            let supported = matches!(
                kind,
                CommandKind::GetFile
                    | CommandKind::KillProcess
                    | CommandKind::DeleteFile
                    | CommandKind::RegistryDeleteKey
                    | CommandKind::RunScript
                    | CommandKind::Isolate
                    | CommandKind::Release
            );
            assert_eq!(caps.supports(kind), supported, "{kind:?}");
        }
    }
}
