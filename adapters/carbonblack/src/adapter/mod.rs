//! The run state machine: sessions, slots, commands, files, reconciliation.
//!
//! One call to [`Adapter::step`] advances the run as far as it can without waiting: it may
//! take a session slot, open or adopt a session, send commands and collect results of several
//! commands in a row. Whenever the vendor has to work (a sensor check-in, a running command)
//! it returns [`Next::After`](edrgate_adapter::Next::After) with a delay that grows with the time already waited, so short
//! commands are noticed quickly and long ones cost few polls. Command waits first use a
//! bounded `?wait=true` long-poll (carbonblack.md §2.8), which returns as soon as the command
//! ends.
//!
//! The step loop itself (stop checks, back-off, `on_error`, journaling) is the shared
//! [`driver`]; this module is the vendor's [`VendorRun::advance`], split along its seams:
//! `session` (slots, sessions, per-run memory), `commands` (sending and polling CB commands),
//! `fetch` (ranged downloads, temporary-file cleanup), `reconcile` (intents after a crash) and
//! `contain` (isolate/release through the sensor record).
//!
//! Everything a later step needs is in the [`Checkpoint`]. Two things live only in memory,
//! per run: the session slot (a [`SlotGuard`](edrgate_adapter::SlotGuard), re-acquired after a restart before the session
//! is used again) and the writer of a file being downloaded (a restart starts that download
//! over).

mod commands;
mod contain;
mod fetch;
mod reconcile;
mod session;
mod support;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::{SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use edrgate_adapter::adapter::StopReason;
use edrgate_adapter::driver::{self, Cursor, Drive, RunCheckpoint, RunOps as _, VendorRun};
use edrgate_adapter::{
    Adapter, AdapterError, BudgetUse, Capabilities, Command, CommandKind, CommandResult,
    CommandSupport, CommandUpdate, Device, DeviceSupport, ErrorCode, ErrorInfo, FairSlots, Limits,
    RunContext, SharedBudget, Step, Via,
};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::client::CbClient;
use crate::config::CarbonBlackConfig;
use crate::mapping::{self, CbError};
use crate::wire::{self, CbCommand};

use self::session::{RunMemory, SessionReady};

/// A Carbon Black EDR backend.
pub struct CarbonBlackAdapter {
    cfg: CarbonBlackConfig,
    client: CbClient,
    slots: Arc<FairSlots>,
    /// The session budget across gateway replicas (given by the engine): the server's slot limit
    /// holds for all of them together, not per process.
    shared: OnceLock<Arc<dyn SharedBudget>>,
    /// The shared budget's scope: the server, as `slots` is shared per server.
    scope: String,
    capabilities: Capabilities,
    runs: Mutex<HashMap<Uuid, RunMemory>>,
    /// What the sensor records seen last say about each sensor (by device id), for
    /// per-device support ([`Adapter::device_support`], no vendor call).
    known: Mutex<HashMap<String, SensorFacts>>,
}

/// The run's state between steps, stored as JSON by the engine. (`pub` only because it is
/// [`VendorRun::Checkpoint`]; this module is private, so nothing outside the crate names it.)
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Checkpoint {
    sensor_id: u64,
    /// The current command and the transient-failure count (the driver's).
    #[serde(flatten)]
    cursor: Cursor,
    /// The session in use, if any.
    #[serde(default)]
    session: Option<SessionState>,
    /// How far the current command got.
    #[serde(default)]
    phase: Phase,
    /// Sessions lost under the current command (bounded by `max_session_retries`).
    #[serde(default)]
    session_losses: u32,
    /// The sensor never checked in: later commands needing a session fail at once.
    #[serde(default)]
    offline: bool,
    /// The sensor's OS family (for temporary paths), once looked up.
    #[serde(default)]
    windows: Option<bool>,
    /// What the sensor record says about the sensor, once looked up (OS, version).
    #[serde(default)]
    facts: Option<SensorFacts>,
}

/// The sensor's facts that decide what it can do (§3.1, §4.3, §7.4).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct SensorFacts {
    /// `os_type`: 1 Windows (cbapi's test, §5.1), 2 OS X, 3 Linux.
    os_type: Option<u64>,
    /// `os_environment_display_string`, for messages.
    os: Option<String>,
    /// `(major, minor)` of `build_version_string`.
    version: Option<(u32, u32)>,
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
struct SessionState {
    id: u64,
    active: bool,
    /// When the run started waiting for it (epoch seconds).
    since: f64,
    /// Last command or keepalive sent on it (epoch seconds).
    last_contact: f64,
    /// The session's `supported_commands` once it is active (§3.1); `None` when the server
    /// did not say (nothing is refused then).
    #[serde(default)]
    supported: Option<Vec<String>>,
    /// The highest command id known on the session: a command posted later has a higher one
    /// (ids count up per session, §2.7 REC: the third command is `"id": 3`). `None` for a
    /// session that was already open when the run took it, until its list is read.
    #[serde(default)]
    last_cid: Option<u64>,
}

/// The current command's progress.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(tag = "phase", rename_all = "snake_case")]
enum Phase {
    /// Nothing sent yet.
    #[default]
    Ready,
    /// `put_file`: the content is in session storage as `file_id`.
    Uploaded { file_id: u64 },
    /// Intent recorded for a side-effect command; its POST may or may not have reached CB.
    Intent {
        at: f64,
        name: String,
        object: String,
        /// The session the POST was meant for: while it lives, its command list tells
        /// whether the POST arrived.
        #[serde(default)]
        sid: Option<u64>,
        /// The session's highest command id before the POST: only a later command can be it.
        /// (Matched on the server's own ordering, never on its clock against ours.)
        #[serde(default)]
        after: Option<u64>,
    },
    /// CB command `cid` is pending or running.
    Sent {
        cid: u64,
        at: f64,
        #[serde(default)]
        vendor_status: String,
    },
    /// Downloading an endpoint file in ranges.
    Fetch(Box<Fetch>),
    /// Deleting a temporary file edrgate created on the endpoint; `result` is reported after.
    Cleanup { path: String, cid: Option<u64>, at: f64, result: Box<CommandResult> },
    /// Isolate/release: intent recorded at `at`; `applied` once the sensor record says so.
    Contain { at: f64, applied: bool },
}

#[derive(Clone, Debug, Serialize, Deserialize)]
struct Fetch {
    path: String,
    /// First byte wanted.
    start: u64,
    /// One past the last byte wanted (`None`: to the end of the file).
    end: Option<u64>,
    /// Next byte to request.
    next: u64,
    /// The `get file` command of the range in flight, its file object and size.
    cid: Option<u64>,
    file_id: Option<u64>,
    asked: u64,
    at: f64,
    #[serde(default)]
    failures: u32,
    then: AfterFetch,
    /// The size lookup (`directory list` of the path, `cid` then being its command) is done.
    #[serde(default)]
    sized: bool,
    /// The file's size on the endpoint, when the lookup found it.
    #[serde(default)]
    total: Option<u64>,
    /// Ranges downloaded so far (at least one is always asked for, so that even an empty
    /// file is read through `get file` and its errors surface).
    #[serde(default)]
    ranges: u32,
}

/// What the downloaded file is for.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "for", rename_all = "snake_case")]
enum AfterFetch {
    GetFile,
    Execute { pid: Option<u64>, exit_code: Option<i64>, delete: bool },
    MemoryDump { path: String, delete: bool },
}
impl CarbonBlackAdapter {
    /// Builds the adapter for backend `backend_name`. No network call is made.
    pub fn new(backend_name: &str, cfg: CarbonBlackConfig) -> Result<Self, AdapterError> {
        cfg.validate().map_err(|errors| {
            AdapterError::new(
                ErrorCode::InvalidRequest,
                format!(
                    "invalid carbonblack config for backend {backend_name}: {}",
                    errors.join("; ")
                ),
            )
        })?;
        let url = reqwest::Url::parse(&cfg.url)
            .map_err(|e| AdapterError::internal(format!("invalid url: {e}")))?;
        if url.scheme() == "http" {
            tracing::warn!(
                backend = backend_name,
                "carbon black url uses plain http: the api token travels unencrypted"
            );
        }
        let client = CbClient::new(backend_name, &cfg)?;
        let slots = shared_slots(&url, cfg.slot_limit);
        let concurrent = u32::try_from(slots.capacity()).unwrap_or(u32::MAX);
        Ok(CarbonBlackAdapter {
            capabilities: capabilities(backend_name, concurrent),
            client,
            slots,
            shared: OnceLock::new(),
            scope: format!("carbonblack:{}", url.as_str().trim_end_matches('/')),
            cfg,
            runs: Mutex::new(HashMap::new()),
            known: Mutex::new(HashMap::new()),
        })
    }
}

#[async_trait]
impl Adapter for CarbonBlackAdapter {
    fn capabilities(&self) -> &Capabilities {
        &self.capabilities
    }

    /// Live-response session slots on the server (shared by every backend on it).
    fn budgets(&self) -> Vec<BudgetUse> {
        vec![BudgetUse {
            name: "sessions",
            in_use: self.slots.in_use(),
            capacity: self.slots.capacity(),
            waiting: self.slots.waiting(),
            held: true,
        }]
    }

    /// A run holds its session slot from the session's start to its close.
    fn runs_at_once(&self) -> Option<usize> {
        Some(self.slots.capacity())
    }

    /// Sensors whose name contains `hostname`, case-insensitively (the contract's rule), minus
    /// uninstalled ones, which a re-install leaves behind under the same name. CB's search is
    /// a case-sensitive substring match (§7.4), asked through the paged v2 query (never an
    /// unpaged listing of every sensor): with the name as given, upper-cased (Windows NetBIOS
    /// names) and lower-cased (Unix host names), the matches of all three together, so that
    /// two sensors differing only in case are both found (and a lookup reports them
    /// ambiguous). A name in mixed case is found only when asked in its own case.
    async fn find_devices(&self, hostname: Option<&str>) -> Result<Vec<Device>, AdapterError> {
        let mut variants: Vec<Option<String>> = Vec::new();
        match hostname {
            None => variants.push(None),
            Some(h) => {
                for v in [h.to_owned(), h.to_uppercase(), h.to_lowercase()] {
                    if !variants.contains(&Some(v.clone())) {
                        variants.push(Some(v));
                    }
                }
            }
        }
        let mut sensors: Vec<wire::Sensor> = Vec::new();
        for v in &variants {
            let page =
                self.client.search_sensors(v.as_deref()).await.map_err(CbError::into_adapter)?;
            for s in page {
                if !sensors.iter().any(|known| known.id == s.id) {
                    sensors.push(s);
                }
            }
        }
        Ok(sensors
            .into_iter()
            .filter(|s| s.uninstalled != Some(true))
            .inspect(|s| self.remember(s))
            .map(|s| mapping::device(&self.capabilities.backend, s))
            .filter(|d| hostname.is_none_or(|h| edrgate_adapter::hostname_matches(&d.hostname, h)))
            .collect())
    }

    /// Registry commands and `memdump` only on Windows sensors, `memdump` from sensor 5.1 on
    /// (see `support`).
    fn device_support(&self, device: &Device) -> DeviceSupport {
        self.support_of(device)
    }

    fn varies_by_device(&self, kind: CommandKind) -> bool {
        !support::os_dependent_names(kind).is_empty()
    }

    /// The sensor record (`GET /api/v1/sensor/{id}`).
    async fn device(&self, device_id: &str) -> Result<Option<Device>, AdapterError> {
        let Ok(sensor_id) = device_id.trim().parse::<u64>() else {
            return Err(AdapterError::new(
                ErrorCode::DeviceNotFound,
                format!("{device_id:?} is not a Carbon Black sensor id"),
            ));
        };
        let sensor = self.client.sensor(sensor_id).await.map_err(CbError::into_adapter)?;
        self.remember(&sensor);
        Ok(Some(mapping::device(&self.capabilities.backend, sensor)))
    }

    fn run_closed(&self, run_id: Uuid) {
        self.forget(run_id);
    }

    fn use_shared_budget(&self, budget: Arc<dyn SharedBudget>) {
        let _ = self.shared.set(budget);
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
impl VendorRun for CarbonBlackAdapter {
    type Checkpoint = Checkpoint;
    const VENDOR: &'static str = "carbonblack";

    fn begin(&self, ctx: &RunContext<'_>) -> Result<Checkpoint, AdapterError> {
        let device_id = ctx.device_id;
        let sensor_id = device_id.trim().parse().map_err(|_| {
            AdapterError::new(
                ErrorCode::DeviceNotFound,
                format!("{device_id:?} is not a Carbon Black sensor id"),
            )
        })?;
        Ok(Checkpoint {
            sensor_id,
            cursor: Cursor::default(),
            session: None,
            phase: Phase::Ready,
            session_losses: 0,
            offline: false,
            windows: None,
            facts: None,
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
            // Not a failure of the command: the session is re-opened (within bounds).
            Err(CbError::SessionLost(text)) => Ok(self.session_lost(ctx, cp, text)),
            Err(CbError::Api(e)) => Err(e),
        }
    }

    fn command_ended(&self, ctx: &RunContext<'_>, cp: &mut Checkpoint) {
        // A download abandoned by a failure: dropping its writer discards the partial file.
        drop(self.take_writer(ctx.run_id, cp.cursor.index));
        cp.phase = Phase::Ready;
        cp.session_losses = 0;
    }

    fn failed(
        &self,
        ctx: &RunContext<'_>,
        cp: &mut Checkpoint,
        updates: &mut Vec<CommandUpdate>,
        error: AdapterError,
    ) {
        let update = self.failure(cp, error.info);
        self.command_done(ctx, cp, updates, update);
    }

    /// Cancels what runs on the server and reports how the current command really ended
    /// (`stopped`); the driver closes the rest, then [`Self::finish`].
    async fn cancel(
        &self,
        ctx: &RunContext<'_>,
        cp: &mut Checkpoint,
        updates: &mut Vec<CommandUpdate>,
        _reason: StopReason,
    ) {
        let in_flight = match &cp.phase {
            Phase::Sent { cid, .. } => Some(*cid),
            Phase::Fetch(f) => f.cid,
            Phase::Cleanup { cid, .. } => *cid,
            _ => None,
        };
        if let (Some(session), Some(cid)) = (&cp.session, in_flight)
            && let Err(e) = self.client.cancel_command(session.id, cid).await
        {
            tracing::debug!(run = %ctx.run_id, error = %e, "cancelling the running command failed");
        }
        if let Some(update) = self.stopped(ctx, cp).await {
            self.command_done(ctx, cp, updates, update);
        }
    }

    /// The run is over: hand the session to a run waiting for the same sensor, else close it.
    /// (The driver then drops the run's memory, and with it the slot.)
    async fn finish(&self, ctx: &RunContext<'_>, cp: &mut Checkpoint) {
        if let Some(session) = cp.session.take() {
            let key = cp.sensor_id.to_string();
            if self.holds_slot(ctx.run_id) && self.slots.has_waiter_for(&key) {
                tracing::debug!(run = %ctx.run_id, session = session.id, "leaving the session open for the next run");
            } else if let Err(e) = self.client.close_session(session.id).await {
                // cbapi swallows close errors too (§2.4); an unclosed session times out.
                tracing::debug!(run = %ctx.run_id, error = %e, "closing the session failed");
            }
        }
    }
}

impl CarbonBlackAdapter {
    /// One move of the current command.
    async fn drive(
        &self,
        ctx: &RunContext<'_>,
        cp: &mut Checkpoint,
        updates: &mut Vec<CommandUpdate>,
    ) -> Result<Drive, CbError> {
        let index = cp.cursor.index;
        let command = &ctx.commands[index];
        match command {
            Command::Isolate => return self.drive_containment(ctx, cp, updates, true).await,
            Command::Release => return self.drive_containment(ctx, cp, updates, false).await,
            Command::RunScript { .. } => {
                return Ok(Drive::Finished(CommandUpdate::failed(
                    index,
                    ErrorInfo::new(
                        ErrorCode::UnsupportedCommand,
                        "Carbon Black EDR has no script primitive",
                    ),
                )));
            }
            Command::QuarantineFile { .. } | Command::UnquarantineFile { .. } => {
                return Ok(Drive::Finished(CommandUpdate::failed(
                    index,
                    ErrorInfo::new(
                        ErrorCode::UnsupportedCommand,
                        "Carbon Black EDR live response has no quarantine primitive",
                    ),
                )));
            }
            _ => {}
        }
        // What the sensor's OS or version rules out is refused before a session is opened.
        if let Some(refusal) = self.refused_by_sensor(cp, command).await? {
            return Ok(Drive::Finished(CommandUpdate::failed(index, refusal)));
        }
        if cp.offline {
            return Ok(Drive::Finished(CommandUpdate::failed(index, offline_error())));
        }
        let sid = match self.ensure_session(ctx, cp, updates).await? {
            SessionReady::Active(sid) => sid,
            SessionReady::Wait(delay) => return Ok(Drive::Wait(delay)),
            // The stop check before the next move closes the run.
            SessionReady::Stopped => return Ok(Drive::Continue),
            SessionReady::Offline => {
                cp.offline = true;
                return Ok(Drive::Finished(CommandUpdate::failed(index, offline_error())));
            }
        };
        match cp.phase.clone() {
            Phase::Ready => self.start(ctx, cp, updates, sid).await,
            Phase::Uploaded { file_id } => {
                let Command::PutFile { path, .. } = command else {
                    return Err(phase_mismatch());
                };
                let request = mapping::put_file_request(sid, path, file_id);
                self.send_side_effect(ctx, cp, updates, sid, request).await
            }
            Phase::Intent { at, name, object, sid: intent_sid, after } => {
                self.reconcile(ctx, cp, sid, intent_sid, at, &name, &object, after).await
            }
            Phase::Sent { cid, at, vendor_status } => {
                self.poll(ctx, cp, updates, sid, cid, at, vendor_status).await
            }
            Phase::Fetch(fetch) => self.drive_fetch(ctx, cp, updates, sid, *fetch).await,
            Phase::Cleanup { path, cid, at, result } => {
                self.drive_cleanup(ctx, cp, updates, sid, path, cid, at, *result).await
            }
            Phase::Contain { .. } => Err(phase_mismatch()),
        }
    }
}

trait InfoExt {
    fn with_message(self, message: String) -> Self;
}

impl InfoExt for ErrorInfo {
    fn with_message(mut self, message: String) -> Self {
        self.message = message;
        self
    }
}

/// Every command but `run_script` and the quarantine ones, natively (see the crate doc).
fn capabilities(backend: &str, concurrent_sessions: u32) -> Capabilities {
    Capabilities {
        backend: backend.to_owned(),
        kind: crate::KIND.to_owned(),
        commands: CommandKind::ALL
            .into_iter()
            .filter(|k| {
                !matches!(
                    k,
                    CommandKind::RunScript
                        | CommandKind::QuarantineFile
                        | CommandKind::UnquarantineFile
                )
            })
            .map(|command| CommandSupport { command, via: Via::Native, notes: note(command) })
            .collect(),
        limits: Limits {
            concurrent_sessions: Some(concurrent_sessions),
            max_upload_bytes: None,
            calls_per_minute: None,
        },
    }
}

/// What a caller should know about how CB carries out a command.
fn note(kind: CommandKind) -> Option<String> {
    let text = match kind {
        CommandKind::GetFile => "get file, fetched in ranges of chunk_size bytes",
        CommandKind::Execute => {
            "create process; with wait, output is captured in output_file (a temporary file when omitted)"
        }
        CommandKind::MemoryDump => "memdump; can take minutes (memdump_timeout_secs)",
        CommandKind::Isolate | CommandKind::Release => {
            "network_isolation_enabled on the sensor; applied at the sensor's next check-in"
        }
        _ => return None,
    };
    Some(text.to_owned())
}

/// One slot budget per CB server, shared by every backend configured against it: the
/// server's session limit does not care which credential opened a session.
fn shared_slots(url: &reqwest::Url, capacity: usize) -> Arc<FairSlots> {
    static SERVERS: OnceLock<Mutex<HashMap<String, Weak<FairSlots>>>> = OnceLock::new();
    let key = format!(
        "{}://{}:{}{}",
        url.scheme(),
        url.host_str().unwrap_or("").to_ascii_lowercase(),
        url.port_or_known_default().unwrap_or(0),
        url.path().trim_end_matches('/')
    );
    let mut servers =
        SERVERS.get_or_init(Default::default).lock().unwrap_or_else(|p| p.into_inner());
    servers.retain(|_, w| w.strong_count() > 0);
    if let Some(existing) = servers.get(&key).and_then(Weak::upgrade) {
        if existing.capacity() != capacity {
            tracing::warn!(server = %key, capacity = existing.capacity(), "backends on one carbon black server disagree on slot_limit; the first one applies");
        }
        return existing;
    }
    let slots = FairSlots::new(capacity);
    servers.insert(key, Arc::downgrade(&slots));
    slots
}
fn is_rate_limited(e: &CbError) -> bool {
    matches!(e, CbError::Api(a) if a.code() == ErrorCode::VendorRateLimited)
}

fn offline_error() -> ErrorInfo {
    ErrorInfo::new(
        ErrorCode::DeviceOffline,
        "the sensor did not check in for a live-response session in time",
    )
}

fn phase_mismatch() -> CbError {
    CbError::Api(AdapterError::internal("checkpoint phase does not fit the command"))
}

fn vendor_ref(sid: u64, cid: u64) -> String {
    format!("session/{sid}/command/{cid}")
}

/// The vendor status shown while a command runs: memdump progress (§4.3) or the status word.
fn progress(cb: &CbCommand) -> String {
    if cb.name == wire::names::MEMDUMP {
        if cb.compressing == Some(true) {
            return "compressing".to_owned();
        }
        if let Some(pct) = cb.percentdone {
            return format!("dumping {pct:.0}%");
        }
    }
    cb.status.clone()
}

fn now() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64())
}
