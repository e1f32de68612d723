//! The run state machine: batches, budgets, machine actions, results, reconciliation.
//!
//! A run's commands are cut into **batches**: consecutive commands whose live-response
//! commands keep Defender's PutFile → RunScript → GetFile order (defender.md §3.1) go into one
//! `runliveresponse` machine action. Isolate and release are machine actions of their own
//! (§11). One step advances a run as far as it can without waiting: upload what the batch
//! needs to the library, take a session slot and a place in the live-response rate window
//! (runs waiting for either stay `queued`), record the intent, submit, then poll until the
//! action ends, and collect every command's result at once (links expire after 30 minutes,
//! §5; they are fetched right away and re-requested when a download is refused).
//!
//! The step loop itself (stop checks, back-off, `on_error`, journaling) is the shared
//! [`driver`]; this module is the vendor's [`VendorRun::advance`], split along its seams:
//! `batch` (planning, library uploads, submission, polling, outcomes), `fetch` (result
//! downloads), `reconcile` (intents after a crash, found by the comment tag), `contain`
//! (isolate/release), `slots` (session slots) and `poller` (one batched status call for the
//! pending actions of all runs).
//!
//! Everything a later step needs is in the [`Checkpoint`]. Only the session slot lives in
//! memory (re-acquired after a restart while an action is live).

mod batch;
mod contain;
mod fetch;
mod poller;
mod reconcile;
mod slots;
mod stop;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use edrgate_adapter::adapter::StopReason;
use edrgate_adapter::driver::{self, Cursor, Drive, RunCheckpoint, RunOps as _, VendorRun};
use edrgate_adapter::{
    Adapter, AdapterError, BudgetUse, Capabilities, Command, CommandKind, CommandSupport,
    CommandUpdate, Device, DeviceSupport, ErrorCode, ErrorInfo, Limits, RunContext, SharedBudget,
    Step, Via,
};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::client::{DfClient, MachineQuery};
use crate::config::DefenderConfig;
use crate::mapping;
use crate::wire;

use self::poller::Poller;
use self::slots::Held;

/// Prefix of the comment tag that ties a machine action to its run and batch.
const TAG_PREFIX: &str = "edrgate:";

/// Stripes of [`DefenderAdapter::uploading`]: names that share one wait for each other, which
/// costs little since the `library` endpoint gate already lets one upload through at a time.
const UPLOAD_STRIPES: usize = 16;

/// A Microsoft Defender for Endpoint backend.
pub struct DefenderAdapter {
    cfg: DefenderConfig,
    client: Arc<DfClient>,
    poller: Arc<Poller>,
    capabilities: Capabilities,
    runs: Mutex<HashMap<Uuid, Held>>,
    /// The budget shared with other gateway replicas (given by the engine): Defender's limits
    /// are per app and tenant, not per process.
    shared: OnceLock<Arc<dyn SharedBudget>>,
    /// The shared budget's scope: the credential (no secret in it).
    scope: String,
    /// Library names known to exist (uploads are content-addressed, so a name never goes stale
    /// unless deleted by someone else, which the vendor then reports on the command).
    library: Mutex<HashSet<String>>,
    /// One upload of a library name at a time (striped by name): see
    /// [`DefenderAdapter::ensure_library`].
    uploading: [tokio::sync::Mutex<()>; UPLOAD_STRIPES],
    /// How helpers reach the library: edrgate's unsigned copies or the operator's signed ones.
    helpers: HelperMode,
    /// Signed mode: helpers whose signed copy the library was seen to hold.
    verified: Mutex<HashSet<mapping::Helper>>,
    /// `osPlatform` per machine id (a machine's platform does not change).
    platforms: Mutex<HashMap<String, String>>,
}

/// The `unsigned_scripts` setting in effect.
pub(crate) enum HelperMode {
    /// edrgate uploads and runs its own unsigned helpers (the tenant allows unsigned scripts).
    Unsigned,
    /// Only signed copies run: those read from `signed_scripts_dir` (checked at build,
    /// uploaded when missing), or with `None` the ones the operator uploaded.
    Signed(Option<HashMap<mapping::Helper, Vec<u8>>>),
}
/// The run's state between steps, stored as JSON by the engine. (`pub` only because it is
/// [`VendorRun::Checkpoint`]; this module is private, so nothing outside the crate names it.)
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Checkpoint {
    machine_id: String,
    /// The first command not finished and the transient-failure count (the driver's).
    #[serde(flatten)]
    cursor: Cursor,
    #[serde(default)]
    phase: Phase,
    /// The machine's `osPlatform`, once a helper-backed command needed it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    os: Option<String>,
}

impl RunCheckpoint for Checkpoint {
    fn cursor(&self) -> &Cursor {
        &self.cursor
    }
    fn cursor_mut(&mut self) -> &mut Cursor {
        &mut self.cursor
    }
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(tag = "phase", rename_all = "snake_case")]
enum Phase {
    #[default]
    Ready,
    /// Intent recorded for the batch `[index, end)`: its `runliveresponse` may have reached
    /// Defender; the comment tag finds it.
    Intent {
        end: usize,
        tag: String,
        at: f64,
        /// When the visibility grace started: the end of the ambiguous call, or (an intent a
        /// restart found) the first reconciliation. Never the intent's time (`at`): a slow
        /// call would use the grace up before Defender's reads could show the action.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        since: Option<f64>,
    },
    /// The batch runs as machine action `id`.
    Running {
        id: String,
        end: usize,
        at: f64,
        #[serde(default)]
        seen: bool,
        /// Last vendor status word reported per command of the batch.
        #[serde(default)]
        reported: Vec<String>,
    },
    /// Intent recorded for isolate/release (`since` as for [`Phase::Intent`]).
    ContainIntent {
        tag: String,
        at: f64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        since: Option<f64>,
    },
    /// Isolate/release runs as machine action `id`.
    Contain {
        id: String,
        at: f64,
        #[serde(default)]
        seen: bool,
    },
}
impl DefenderAdapter {
    /// Builds the adapter for backend `backend_name`. No network call is made.
    pub fn new(backend_name: &str, cfg: DefenderConfig) -> Result<Self, AdapterError> {
        cfg.validate().map_err(|errors| {
            AdapterError::new(
                ErrorCode::InvalidRequest,
                format!(
                    "invalid defender config for backend {backend_name}: {}",
                    errors.join("; ")
                ),
            )
        })?;
        if cfg.api_url.starts_with("http://") {
            tracing::warn!(
                backend = backend_name,
                "defender api_url uses plain http: tokens travel unencrypted"
            );
        }
        let client = Arc::new(DfClient::new(backend_name, &cfg)?);
        let scope =
            format!("defender:{}|{}|{}", cfg.token_endpoint(), cfg.tenant_id, cfg.client_id);
        let sessions = u32::try_from(client.budget.sessions.capacity()).unwrap_or(u32::MAX);
        let helpers = helper_mode(backend_name, &cfg)?;
        Ok(DefenderAdapter {
            capabilities: capabilities(backend_name, sessions, &cfg),
            poller: Poller::new(Arc::clone(&client)),
            client,
            cfg,
            runs: Mutex::new(HashMap::new()),
            shared: OnceLock::new(),
            scope,
            library: Mutex::new(HashSet::new()),
            uploading: std::array::from_fn(|_| tokio::sync::Mutex::new(())),
            helpers,
            verified: Mutex::new(HashSet::new()),
            platforms: Mutex::new(HashMap::new()),
        })
    }

    /// Whether the library is ready for edrgate's helpers, without changing anything: in
    /// signed mode (`unsigned_scripts = false`), every helper's signed copy is in the library
    /// (or, with `signed_scripts_dir`, can be uploaded) and none is edrgate's unsigned copy.
    /// In unsigned mode there is nothing to check: the tenant's "Live Response unsigned script
    /// execution" setting cannot be read through the API, and its refusal is reported on the
    /// command (`vendor_rejected`). Run by `check-config --connect` ([`Adapter::check`]).
    pub async fn check_helpers(&self) -> Result<(), AdapterError> {
        let HelperMode::Signed(copies) = &self.helpers else { return Ok(()) };
        let files = self.client.library().await?;
        for helper in mapping::Helper::ALL {
            let copy = copies.as_ref().and_then(|c| c.get(&helper));
            batch::signed_state(helper, copy, &files)?;
        }
        Ok(())
    }

    /// The machine's `osPlatform` (read once per machine; `""` when Defender does not say or
    /// does not know the machine, whose live-response call then reports it).
    async fn platform(&self, cp: &mut Checkpoint) -> Result<String, AdapterError> {
        if let Some(os) = &cp.os {
            return Ok(os.clone());
        }
        let cached =
            self.platforms.lock().unwrap_or_else(|p| p.into_inner()).get(&cp.machine_id).cloned();
        let os = match cached {
            Some(os) => os,
            None => {
                let os = match self.client.machine(&cp.machine_id).await {
                    Ok(m) => m.os_platform.unwrap_or_default(),
                    Err(e) if e.code() == ErrorCode::NotFound => String::new(),
                    Err(e) => return Err(e),
                };
                self.platforms
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(cp.machine_id.clone(), os.clone());
                os
            }
        };
        cp.os = Some(os.clone());
        Ok(os)
    }

    /// Live-response calls made in the current rate window (for tests and metrics).
    pub fn live_response_calls_in_window(&self) -> usize {
        self.client.budget.live_response.recent()
    }
}

#[async_trait]
impl Adapter for DefenderAdapter {
    fn capabilities(&self) -> &Capabilities {
        &self.capabilities
    }

    /// A non-Windows machine (`osPlatform`, §10) runs no helper-backed command (those the
    /// capabilities carry out by script, and `put_file`'s last step).
    fn device_support(&self, device: &Device) -> DeviceSupport {
        let os = device.os.as_deref().and_then(mapping::non_windows);
        self.capabilities.for_device(|kind| {
            let os = os?;
            let scripted = self
                .capabilities
                .commands
                .iter()
                .any(|c| c.command == kind && c.via == Via::Script);
            (scripted || kind == CommandKind::PutFile).then(|| mapping::not_on_os(kind, os).message)
        })
    }

    /// Reachable with the credentials, and in signed mode the library holds the signed
    /// helpers (`check-config --connect` reports a missing or unsigned copy by name).
    async fn check(&self) -> Result<(), AdapterError> {
        self.find_devices(Some("edrgate-connectivity-check")).await?;
        self.check_helpers().await
    }

    fn varies_by_device(&self, kind: CommandKind) -> bool {
        kind == CommandKind::PutFile
            || self.capabilities.commands.iter().any(|c| c.command == kind && c.via == Via::Script)
    }

    /// `GET /api/machines/{id}`: the engine checks the machine's platform before the first step.
    async fn device(&self, device_id: &str) -> Result<Option<Device>, AdapterError> {
        match self.client.machine(device_id).await {
            Ok(m) => {
                // The run's first step reads the platform from here instead of asking again.
                self.platforms
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(m.id.clone(), m.os_platform.clone().unwrap_or_default());
                Ok(Some(mapping::device(&self.capabilities.backend, m)))
            }
            Err(e) if e.code() == ErrorCode::NotFound => Err(AdapterError::new(
                ErrorCode::DeviceNotFound,
                format!("Defender knows no machine {device_id}"),
            )),
            Err(e) => Err(e),
        }
    }

    /// Machines whose `computerDnsName` is or starts with `hostname`, case-insensitively:
    /// Defender's `eq` first (§10), then `startswith` (a short name finds its FQDN). Never the
    /// full listing, which on a large tenant is thousands of machines for one lookup; the
    /// core's "contains" rule is applied to what Defender returns.
    async fn find_devices(&self, hostname: Option<&str>) -> Result<Vec<Device>, AdapterError> {
        let matching = |machines: Vec<wire::Machine>| -> Vec<Device> {
            let mut platforms = self.platforms.lock().unwrap_or_else(|p| p.into_inner());
            for m in &machines {
                platforms.insert(m.id.clone(), m.os_platform.clone().unwrap_or_default());
            }
            drop(platforms);
            machines
                .into_iter()
                .map(|m| mapping::device(&self.capabilities.backend, m))
                .filter(|d| {
                    hostname.is_none_or(|h| edrgate_adapter::hostname_matches(&d.hostname, h))
                })
                .collect()
        };
        let Some(name) = hostname else {
            return Ok(matching(self.client.machines(MachineQuery::All).await?));
        };
        let found = matching(self.client.machines(MachineQuery::Named(name)).await?);
        if !found.is_empty() {
            return Ok(found);
        }
        Ok(matching(self.client.machines(MachineQuery::NamePrefix(name)).await?))
    }

    fn run_closed(&self, run_id: Uuid) {
        self.release_slot(run_id);
    }

    fn use_shared_budget(&self, budget: Arc<dyn SharedBudget>) {
        self.client.budget.use_shared(Arc::clone(&budget), &self.scope);
        let _ = self.shared.set(budget);
    }

    /// A run holds its session slot (one live action per machine) until its last command
    /// ends; the `runliveresponse` window is a call budget, not held.
    fn runs_at_once(&self) -> Option<usize> {
        Some(self.client.budget.sessions.capacity())
    }

    fn budgets(&self) -> Vec<BudgetUse> {
        let b = &self.client.budget;
        vec![
            BudgetUse {
                name: "sessions",
                in_use: b.sessions.in_use(),
                capacity: b.sessions.capacity(),
                waiting: b.sessions.waiting(),
                held: true,
            },
            BudgetUse {
                name: "runliveresponse_per_window",
                in_use: b.live_response.recent(),
                capacity: self.cfg.live_response_calls as usize,
                waiting: b.live_response.waiting(),
                held: false,
            },
        ]
    }

    async fn step(
        &self,
        ctx: &RunContext<'_>,
        checkpoint: Option<serde_json::Value>,
    ) -> Result<Step, AdapterError> {
        self.touch(ctx.run_id);
        driver::drive(self, ctx, checkpoint).await
    }
}

#[async_trait]
impl VendorRun for DefenderAdapter {
    type Checkpoint = Checkpoint;
    const VENDOR: &'static str = "defender";

    fn begin(&self, ctx: &RunContext<'_>) -> Result<Checkpoint, AdapterError> {
        Ok(Checkpoint {
            machine_id: machine_id(ctx.device_id)?,
            cursor: Cursor::default(),
            phase: Phase::Ready,
            os: None,
        })
    }

    async fn advance(
        &self,
        ctx: &RunContext<'_>,
        cp: &mut Checkpoint,
        updates: &mut Vec<CommandUpdate>,
    ) -> Result<Drive, AdapterError> {
        match cp.phase.clone() {
            Phase::Ready => match &ctx.commands[cp.cursor.index] {
                Command::Isolate => self.start_contain(ctx, cp, updates, true).await,
                Command::Release => self.start_contain(ctx, cp, updates, false).await,
                command if mapping::lr_commands(command).is_some() => {
                    self.start_batch(ctx, cp, updates).await
                }
                command => Ok(Drive::Finished(CommandUpdate::failed(
                    cp.cursor.index,
                    ErrorInfo::new(
                        ErrorCode::UnsupportedCommand,
                        format!("Defender backends do not support {}", command.kind().as_str()),
                    ),
                ))),
            },
            Phase::Intent { end, tag, at, since } => {
                self.reconcile(ctx, cp, end, &tag, at, since).await
            }
            Phase::Running { id, end, at, seen, reported } => {
                self.poll(ctx, cp, updates, &id, end, at, seen, reported).await
            }
            Phase::ContainIntent { tag, at, since } => {
                self.reconcile_contain(ctx, cp, &tag, at, since).await
            }
            Phase::Contain { id, at, seen } => {
                self.poll_contain(ctx, cp, updates, &id, at, seen).await
            }
        }
    }

    fn command_ended(&self, _ctx: &RunContext<'_>, cp: &mut Checkpoint) {
        cp.phase = Phase::Ready;
    }

    /// A permanent failure of the current unit of work: every command of the batch (or the
    /// one command) ends with it; after an intent, a command changing the endpoint ends
    /// `outcome_unknown` instead, since Defender may have received the action.
    fn failed(
        &self,
        ctx: &RunContext<'_>,
        cp: &mut Checkpoint,
        updates: &mut Vec<CommandUpdate>,
        error: AdapterError,
    ) {
        let end = match &cp.phase {
            Phase::Intent { end, .. } | Phase::Running { end, .. } => *end,
            _ => cp.cursor.index + 1,
        };
        let unknown = matches!(cp.phase, Phase::Intent { .. } | Phase::ContainIntent { .. });
        self.release_slot(ctx.run_id);
        while cp.cursor.index < end {
            let index = cp.cursor.index;
            let update = if unknown && ctx.commands[index].kind().has_side_effect() {
                outcome_unknown(index)
            } else {
                CommandUpdate::failed(index, error.info.clone())
            };
            self.command_done(ctx, cp, updates, update);
        }
        cp.phase = Phase::Ready;
    }

    /// Cancels the machine action in flight and reports what Defender says happened to each
    /// command of it (`stop.rs`): real results where completion won the race,
    /// `outcome_unknown` for a side effect Defender does not account for, never `cancelled`
    /// for one that may have taken place. The driver closes the commands after it.
    async fn cancel(
        &self,
        ctx: &RunContext<'_>,
        cp: &mut Checkpoint,
        updates: &mut Vec<CommandUpdate>,
        reason: StopReason,
    ) {
        self.stop_work(ctx, cp, updates, reason).await;
    }
}

impl DefenderAdapter {
    fn poll_delay(&self, since: f64) -> Duration {
        let waited = Duration::from_secs_f64((now() - since).max(0.0));
        (waited / 4).clamp(self.cfg.poll_min(), self.cfg.poll_max())
    }
}

/// The comment: the run's tag first (reconciliation searches for it), then the caller's.
fn comment(tag: &str, caller: Option<&str>) -> String {
    match caller {
        Some(c) if !c.trim().is_empty() => format!("{tag} {c}"),
        _ => tag.to_owned(),
    }
}

fn has_tag(comment: &str, tag: &str) -> bool {
    comment.split_whitespace().next() == Some(tag)
}

/// Refusals that leave nothing behind and are worth another try later: 429 and
/// `ActiveRequestAlreadyExists`.
fn refused(e: &AdapterError) -> bool {
    e.code() == ErrorCode::VendorRateLimited
        || e.info.vendor_code.as_deref() == Some(mapping::ACTIVE_REQUEST)
}

fn machine_id(device_id: &str) -> Result<String, AdapterError> {
    let id = device_id.trim();
    if id.is_empty() || id.len() > 64 || !id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
    {
        return Err(AdapterError::new(
            ErrorCode::DeviceNotFound,
            format!("{device_id:?} is not a Defender machine id"),
        ));
    }
    Ok(id.to_ascii_lowercase())
}

fn too_large(size: u64, cap: u64) -> ErrorInfo {
    ErrorInfo::new(
        ErrorCode::PayloadTooLarge,
        format!(
            "the file is {size} bytes; Defender's live-response library takes at most {cap} bytes per file, so it was not uploaded"
        ),
    )
}

fn outcome_unknown(index: usize) -> CommandUpdate {
    CommandUpdate::failed(
        index,
        ErrorInfo::new(
            ErrorCode::OutcomeUnknown,
            "edrgate cannot tell whether Defender received the machine action before an interruption; it was not sent again",
        ),
    )
}
/// The helper mode of a config: in signed mode with `signed_scripts_dir`, every helper's signed
/// copy is read and checked now (start-up), so a wrong file fails the backend's build (and
/// `check-config`) instead of a command.
fn helper_mode(backend: &str, cfg: &DefenderConfig) -> Result<HelperMode, AdapterError> {
    if cfg.unsigned_scripts {
        return Ok(HelperMode::Unsigned);
    }
    let Some(dir) = &cfg.signed_scripts_dir else { return Ok(HelperMode::Signed(None)) };
    let mut copies = HashMap::new();
    let mut problems = Vec::new();
    for helper in mapping::Helper::ALL {
        let path = dir.join(helper.library_name());
        match std::fs::read(&path) {
            Ok(bytes) => match mapping::check_signed_copy(helper, &bytes) {
                Ok(()) => {
                    copies.insert(helper, bytes);
                }
                Err(why) => problems.push(format!("{}: {why}", path.display())),
            },
            Err(e) => problems.push(format!("{}: {e}", path.display())),
        }
    }
    if !problems.is_empty() {
        return Err(AdapterError::new(
            ErrorCode::InvalidRequest,
            format!(
                "defender backend {backend}: signed_scripts_dir must hold the signed copy of every edrgate helper of this version (adapters/defender/scripts/README.md): {}",
                problems.join("; ")
            ),
        ));
    }
    Ok(HelperMode::Signed(Some(copies)))
}

/// Native: get_file, put_file (library + PutFile), run_script, isolate, release. Script-backed
/// (edrgate's helper scripts through RunScript): the rest but memory_dump. The notes say which
/// commands depend on the helpers, on what the helpers need (Windows, the signing setting).
fn capabilities(backend: &str, sessions: u32, cfg: &DefenderConfig) -> Capabilities {
    let signing = if cfg.unsigned_scripts {
        format!("unsigned: needs the tenant's \"{}\" setting", mapping::UNSIGNED_SETTING)
    } else {
        "signed mode: runs the operator's signed copy".to_owned()
    };
    let commands = CommandKind::ALL
        .into_iter()
        // No quarantine: edrgate drives Defender through live response only.
        .filter(|k| {
            !matches!(
                k,
                CommandKind::MemoryDump
                    | CommandKind::QuarantineFile
                    | CommandKind::UnquarantineFile
            )
        })
        .map(|command| {
            let (via, note) = match command {
                CommandKind::GetFile => (Via::Native, "GetFile; the result is downloaded and un-gzipped".to_owned()),
                CommandKind::PutFile => (Via::Native, format!("library upload (content-addressed), PutFile, then edrgate's helper PowerShell script moves it to path (Windows devices only; {signing})")),
                CommandKind::RunScript => (Via::Native, "RunScript of a live-response library script; args joined by spaces".to_owned()),
                CommandKind::Isolate => (Via::Native, "isolate machine action (Full)".to_owned()),
                CommandKind::Release => (Via::Native, "unisolate machine action".to_owned()),
                _ => (Via::Script, format!("edrgate helper PowerShell script run with RunScript (Windows devices only; {signing})")),
            };
            CommandSupport { command, via, notes: Some(note) }
        })
        .collect();
    Capabilities {
        backend: backend.to_owned(),
        kind: "defender".to_owned(),
        commands,
        limits: Limits {
            concurrent_sessions: Some(sessions),
            max_upload_bytes: Some(cfg.max_upload_bytes),
            calls_per_minute: Some(
                u32::try_from(
                    u64::from(cfg.live_response_calls) * 60_000
                        / cfg.live_response_window_ms.max(1),
                )
                .unwrap_or(u32::MAX),
            ),
        },
    }
}

fn now() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_identify_runs() {
        let tag = "edrgate:0190:2";
        assert!(has_tag(&comment(tag, Some("playbook 7")), tag));
        assert!(!has_tag("edrgate:0190:21 x", tag));
        assert!(machine_id("1e5bc9d7e413ddd7902c2932e418702b84d0cc07").is_ok());
        assert!(machine_id("../x").is_err());
    }
}
