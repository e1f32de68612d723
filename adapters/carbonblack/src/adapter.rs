//! The run state machine: sessions, slots, commands, files, reconciliation.
//!
//! One call to [`Adapter::step`] advances the run as far as it can without waiting: it may
//! take a session slot, open or adopt a session, send commands and collect results of several
//! commands in a row. Whenever the vendor has to work (a sensor check-in, a running command)
//! it returns [`Next::After`] with a delay that grows with the time already waited, so short
//! commands are noticed quickly and long ones cost few polls. Command waits first use a
//! bounded `?wait=true` long-poll (carbonblack.md §2.8), which returns as soon as the command
//! ends.
//!
//! Everything a later step needs is in the [`Checkpoint`]. Two things live only in memory,
//! per run: the session slot (a [`SlotGuard`], re-acquired after a restart before the session
//! is used again) and the writer of a file being downloaded (a restart starts that download
//! over).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, Weak};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use edrgate_adapter::adapter::{FileWriter, StopReason, decode_checkpoint, encode_checkpoint};
use edrgate_adapter::{
    Adapter, AdapterError, BudgetUse, Capabilities, Command, CommandKind, CommandResult,
    CommandSupport, CommandUpdate, Device, ErrorCode, ErrorInfo, FairSlots, Limits, Next, OnError,
    RunContext, SharedBudget, SharedSlot, SlotGuard, Status, Step, Via,
};
use futures::StreamExt as _;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::client::CbClient;
use crate::config::CarbonBlackConfig;
use crate::mapping::{self, CbError};
use crate::wire::{self, CbCommand, CommandRequest};

/// Bytes of an `execute` output returned inline (the whole output is a result file).
const OUTPUT_INLINE_LIMIT: usize = 64 * 1024;
/// Clock skew tolerated between edrgate and the CB server when matching a command to an
/// intent by `create_time`. Erring late only turns an adoption into `outcome_unknown`.
const RECONCILE_SKEW_SECS: f64 = 2.0;
/// Failed range downloads of one file before the command fails.
const MAX_FETCH_FAILURES: u32 = 5;
/// Per-run memory (slot, file writer) of runs whose steps stopped coming (engine gave up,
/// lease moved) is dropped after this long, so a lost run cannot pin a slot forever.
const STALE_RUN: Duration = Duration::from_secs(15 * 60);

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
}

/// What a run keeps in memory between steps (see the module doc).
struct RunMemory {
    slot: Option<SlotGuard>,
    /// The run's slot in the replicas' shared budget, held with `slot`.
    shared_slot: Option<SharedSlot>,
    fetch: Option<FetchWriter>,
    touched: Instant,
}

struct FetchWriter {
    index: usize,
    writer: Box<dyn FileWriter>,
    /// The first bytes, for `execute`'s inline output (empty for other downloads).
    head: Vec<u8>,
    head_limit: usize,
}

/// The run's state between steps, stored as JSON by the engine.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct Checkpoint {
    sensor_id: u64,
    /// The session in use, if any.
    #[serde(default)]
    session: Option<SessionState>,
    /// Index of the current command.
    #[serde(default)]
    index: usize,
    /// How far the current command got.
    #[serde(default)]
    phase: Phase,
    /// Whether an earlier command failed.
    #[serde(default)]
    failed: bool,
    /// Sessions lost under the current command (bounded by `max_session_retries`).
    #[serde(default)]
    session_losses: u32,
    /// Consecutive transient failures, for the back-off.
    #[serde(default)]
    transient: u32,
    /// The sensor never checked in: later commands needing a session fail at once.
    #[serde(default)]
    offline: bool,
    /// The sensor's OS family (for temporary paths), once looked up.
    #[serde(default)]
    windows: Option<bool>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
struct SessionState {
    id: u64,
    active: bool,
    /// When the run started waiting for it (epoch seconds).
    since: f64,
    /// Last command or keepalive sent on it (epoch seconds).
    last_contact: f64,
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
}

/// What the downloaded file is for.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "for", rename_all = "snake_case")]
enum AfterFetch {
    GetFile,
    Execute { pid: Option<u64>, exit_code: Option<i64>, delete: bool },
    MemoryDump { path: String, delete: bool },
}

/// What driving the current command produced.
enum Drive {
    /// State changed; drive again right away.
    Continue,
    /// The vendor is working; call again after this delay.
    Wait(Duration),
    /// The command ended.
    Finished(CommandUpdate),
    /// The stop signal fired while waiting for a slot or a command.
    Stopped(StopReason),
    /// The journal refused the intent: the run belongs to someone else now.
    Abort(AdapterError),
}

enum SessionReady {
    Active(u64),
    Wait(Duration),
    Stopped(StopReason),
    Offline,
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
        }]
    }

    /// Sensors whose name contains `hostname`, case-insensitively (the contract's rule), minus
    /// uninstalled ones, which a re-install leaves behind under the same name. CB's own search
    /// is a case-sensitive substring match (§7.4): it is asked first, and the full sensor list
    /// is searched only when it finds nothing.
    async fn find_devices(&self, hostname: Option<&str>) -> Result<Vec<Device>, AdapterError> {
        let matching = |sensors: Vec<wire::Sensor>| -> Vec<Device> {
            sensors
                .into_iter()
                .filter(|s| s.uninstalled != Some(true))
                .map(|s| mapping::device(&self.capabilities.backend, s))
                .filter(|d| {
                    hostname.is_none_or(|h| edrgate_adapter::hostname_matches(&d.hostname, h))
                })
                .collect()
        };
        let mut found =
            matching(self.client.sensors(hostname).await.map_err(CbError::into_adapter)?);
        if found.is_empty() && hostname.is_some() {
            found = matching(self.client.sensors(None).await.map_err(CbError::into_adapter)?);
        }
        Ok(found)
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
        let mut cp = match checkpoint {
            None => Checkpoint::new(ctx.device_id)?,
            Some(value) => decode_checkpoint("carbonblack", value)?,
        };
        self.touch(ctx.run_id);
        let mut updates = Vec::new();
        let next = match self.advance(ctx, &mut cp, &mut updates).await {
            Ok(next) => next,
            Err(e) => {
                // Taken over: this process must not touch the run any more.
                self.forget(ctx.run_id);
                return Err(e);
            }
        };
        if next == Next::Done {
            self.forget(ctx.run_id);
        }
        Ok(Step { checkpoint: encode_checkpoint(&cp)?, updates, next })
    }
}

impl Checkpoint {
    fn new(device_id: &str) -> Result<Self, AdapterError> {
        let sensor_id = device_id.trim().parse().map_err(|_| {
            AdapterError::new(
                ErrorCode::DeviceNotFound,
                format!("{device_id:?} is not a Carbon Black sensor id"),
            )
        })?;
        Ok(Checkpoint {
            sensor_id,
            session: None,
            index: 0,
            phase: Phase::Ready,
            failed: false,
            session_losses: 0,
            transient: 0,
            offline: false,
            windows: None,
        })
    }
}

impl CarbonBlackAdapter {
    /// Drives commands until one has to wait or the run ends.
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
                self.finish(ctx, cp).await;
                return Ok(Next::Done);
            }
            match self.drive(ctx, cp, updates).await {
                Ok(drive) => {
                    cp.transient = 0;
                    match drive {
                        Drive::Continue => {}
                        Drive::Wait(delay) => return Ok(Next::After(delay)),
                        Drive::Finished(update) => self.command_done(ctx, cp, updates, update),
                        Drive::Stopped(reason) => {
                            self.stop(ctx, cp, updates, reason).await;
                            return Ok(Next::Done);
                        }
                        Drive::Abort(e) => return Err(e),
                    }
                }
                Err(CbError::SessionLost(text)) => self.session_lost(ctx, cp, updates, text),
                // Transient failures (transport, 5xx, 429) are ridden out here, with the
                // engine's back-off and the vendor's Retry-After, rather than returned as
                // `Err`: the run holds a slot and maybe a session, and only a later step
                // (which the engine skips for a run stopped during an error back-off) can
                // release them. The state reached so far is kept, so an intent is reconciled
                // rather than re-sent. A stop or the deadline ends the retrying.
                Err(e) if e.is_retryable() => {
                    cp.transient = cp.transient.saturating_add(1);
                    let delay = edrgate_adapter::http::Backoff::STANDARD
                        .delay(cp.transient.min(8), e.retry_after());
                    tracing::warn!(run = %ctx.run_id, error = %e, retry_in = ?delay, "carbon black call failed");
                    return Ok(Next::After(delay));
                }
                Err(CbError::Api(e)) => {
                    let update = self.failure(cp, e.info);
                    self.command_done(ctx, cp, updates, update);
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
    ) -> Result<Drive, CbError> {
        let index = cp.index;
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
            _ => {}
        }
        if cp.offline {
            return Ok(Drive::Finished(CommandUpdate::failed(index, offline_error())));
        }
        let sid = match self.ensure_session(ctx, cp, updates).await? {
            SessionReady::Active(sid) => sid,
            SessionReady::Wait(delay) => return Ok(Drive::Wait(delay)),
            SessionReady::Stopped(reason) => return Ok(Drive::Stopped(reason)),
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
            Phase::Intent { at, name, object, sid: intent_sid } => {
                self.reconcile(ctx, cp, sid, intent_sid, at, &name, &object).await
            }
            Phase::Sent { cid, at, vendor_status } => {
                self.poll(ctx, cp, updates, sid, cid, at, vendor_status).await
            }
            Phase::Fetch(fetch) => self.drive_fetch(ctx, cp, updates, sid, *fetch).await,
            Phase::Cleanup { path, cid, at, result } => {
                self.drive_cleanup(ctx, cp, sid, path, cid, at, *result).await
            }
            Phase::Contain { .. } => Err(phase_mismatch()),
        }
    }

    /// Sends the current command (or its first part).
    async fn start(
        &self,
        ctx: &RunContext<'_>,
        cp: &mut Checkpoint,
        updates: &mut Vec<CommandUpdate>,
        sid: u64,
    ) -> Result<Drive, CbError> {
        let index = cp.index;
        let command = &ctx.commands[index];
        if let Some(request) = mapping::simple_request(command, sid) {
            return if command.kind().has_side_effect() {
                self.send_side_effect(ctx, cp, updates, sid, request).await
            } else {
                self.send(cp, updates, sid, &request).await
            };
        }
        match command {
            Command::GetFile { path, offset, length } => {
                let start = offset.unwrap_or(0);
                cp.phase = Phase::Fetch(Box::new(Fetch::new(
                    path.clone(),
                    start,
                    length.map(|l| start.saturating_add(l)),
                    AfterFetch::GetFile,
                )));
                Ok(Drive::Continue)
            }
            Command::PutFile { file_id, path } => {
                let (file, reader) = ctx.files.open(file_id).await?;
                let name = mapping::base_name(path).to_owned();
                let stored = self.client.upload(sid, &name, reader, file.size).await?;
                cp.phase = Phase::Uploaded { file_id: stored.id };
                Ok(Drive::Continue)
            }
            Command::Execute { command_line, wait, working_directory, output_file } => {
                let output = match (wait, output_file) {
                    (_, Some(path)) => Some(path.clone()),
                    (true, None) => Some(self.temp_path(ctx, cp, "out").await?),
                    (false, None) => None,
                };
                let request = mapping::create_process_request(
                    sid,
                    command_line,
                    *wait,
                    working_directory.as_deref(),
                    output.as_deref(),
                );
                self.send_side_effect(ctx, cp, updates, sid, request).await
            }
            Command::MemoryDump { path, .. } => {
                let path = match path {
                    Some(p) => p.clone(),
                    None => self.temp_path(ctx, cp, "dmp").await?,
                };
                let request = mapping::memdump_request(sid, &path);
                self.send_side_effect(ctx, cp, updates, sid, request).await
            }
            _ => Err(phase_mismatch()),
        }
    }

    /// Sends a read-only command: safe to re-send, so no intent is recorded.
    async fn send(
        &self,
        cp: &mut Checkpoint,
        updates: &mut Vec<CommandUpdate>,
        sid: u64,
        request: &CommandRequest,
    ) -> Result<Drive, CbError> {
        let sent = self.client.post_command(sid, request).await?;
        self.sent(cp, updates, sid, &sent);
        Ok(Drive::Continue)
    }

    /// Records the intent, then sends once (design §3 "at most once").
    async fn send_side_effect(
        &self,
        ctx: &RunContext<'_>,
        cp: &mut Checkpoint,
        updates: &mut Vec<CommandUpdate>,
        sid: u64,
        request: CommandRequest,
    ) -> Result<Drive, CbError> {
        let previous = std::mem::replace(
            &mut cp.phase,
            Phase::Intent {
                at: now(),
                name: request.name.to_owned(),
                object: mapping::object_text(&request.object),
                sid: Some(sid),
            },
        );
        if let Err(e) = self.record(ctx, cp, updates).await {
            cp.phase = previous;
            return Ok(Drive::Abort(e));
        }
        match self.client.post_command(sid, &request).await {
            Ok(sent) => {
                self.sent(cp, updates, sid, &sent);
                Ok(Drive::Continue)
            }
            // An HTTP answer other than 5xx means the server refused it: nothing ran. A
            // lost session likewise (§5.3: cbapi re-sends after reconnecting), and a 429,
            // which a rate limiter answers before the request is processed.
            Err(e) if !e.is_retryable() || is_rate_limited(&e) => {
                cp.phase = previous;
                Err(e)
            }
            // Transport errors and 5xx leave the intent: the next step reconciles.
            Err(e) => Err(e),
        }
    }

    fn sent(
        &self,
        cp: &mut Checkpoint,
        updates: &mut Vec<CommandUpdate>,
        sid: u64,
        sent: &CbCommand,
    ) {
        let at = now();
        if let Some(session) = &mut cp.session {
            session.last_contact = at;
        }
        updates.push(
            CommandUpdate::status(cp.index, mapping::command_status(&sent.status).min_running())
                .with_vendor(Some(vendor_ref(sid, sent.id)), Some(sent.status.clone())),
        );
        cp.phase = Phase::Sent { cid: sent.id, at, vendor_status: sent.status.clone() };
    }

    /// After a crash between intent and answer: adopt the command if CB has it; if the session
    /// the POST was meant for is alive and does not list it, the POST never arrived and the
    /// command starts over; otherwise report `outcome_unknown` and never re-send.
    #[allow(clippy::too_many_arguments)]
    async fn reconcile(
        &self,
        ctx: &RunContext<'_>,
        cp: &mut Checkpoint,
        sid: u64,
        intent_sid: Option<u64>,
        at: f64,
        name: &str,
        object: &str,
    ) -> Result<Drive, CbError> {
        let listed = match self.client.commands(sid).await {
            Ok(listed) => listed,
            Err(CbError::SessionLost(_)) => {
                return Ok(Drive::Finished(outcome_unknown(cp.index, name)));
            }
            Err(e) => return Err(e),
        };
        let adopted = listed
            .into_iter()
            .filter(|c| {
                c.name == name
                    && mapping::object_text(&c.object) == object
                    && c.create_time.is_some_and(|t| t + RECONCILE_SKEW_SECS >= at)
            })
            .max_by_key(|c| c.id);
        match adopted {
            Some(found) => {
                tracing::info!(run = %ctx.run_id, command = found.id, "adopted the command sent before a restart");
                cp.phase = Phase::Sent { cid: found.id, at, vendor_status: String::new() };
                Ok(Drive::Continue)
            }
            // The process that recorded the intent is gone (its lease expired before this
            // run was resumed), so no POST of it can still be in flight.
            None if intent_sid == Some(sid) => {
                tracing::info!(run = %ctx.run_id, "the command sent before a restart never reached CB; sending it now");
                cp.phase = Phase::Ready;
                Ok(Drive::Continue)
            }
            None => Ok(Drive::Finished(outcome_unknown(cp.index, name))),
        }
    }

    /// Waits for CB command `cid` of the current command.
    #[allow(clippy::too_many_arguments)]
    async fn poll(
        &self,
        ctx: &RunContext<'_>,
        cp: &mut Checkpoint,
        updates: &mut Vec<CommandUpdate>,
        sid: u64,
        cid: u64,
        at: f64,
        vendor_status: String,
    ) -> Result<Drive, CbError> {
        let index = cp.index;
        let command = &ctx.commands[index];
        let cb = match self.wait_command(ctx, cp, sid, cid, at).await? {
            Waited::Done(cb) => cb,
            Waited::Pending(cb, delay) => {
                if now() - at > self.timeout_of(command.kind()).as_secs_f64() {
                    return Ok(Drive::Finished(
                        self.timed_out(sid, cid, index, command.kind()).await,
                    ));
                }
                let word = progress(&cb);
                if word != vendor_status {
                    updates.push(
                        CommandUpdate::status(
                            index,
                            mapping::command_status(&cb.status).min_running(),
                        )
                        .with_vendor(Some(vendor_ref(sid, cid)), Some(word.clone())),
                    );
                    cp.phase = Phase::Sent { cid, at, vendor_status: word };
                }
                return Ok(Drive::Wait(delay));
            }
            Waited::Interrupted => return Ok(Drive::Wait(Duration::ZERO)),
        };
        match mapping::command_status(&cb.status) {
            Status::Succeeded => self.completed(ctx, cp, sid, *cb).await,
            Status::Cancelled => Ok(Drive::Finished(
                CommandUpdate::status(index, Status::Cancelled)
                    .with_vendor(Some(vendor_ref(sid, cid)), Some(cb.status.clone()))
                    .with_error(ErrorInfo::new(
                        ErrorCode::Cancelled,
                        "the command was cancelled on the Carbon Black server",
                    )),
            )),
            _ => Ok(Drive::Finished(
                CommandUpdate::failed(index, mapping::command_error(&cb))
                    .with_vendor(Some(vendor_ref(sid, cid)), Some(cb.status.clone())),
            )),
        }
    }

    /// The result of a completed command, or the next part of a multi-part one.
    async fn completed(
        &self,
        ctx: &RunContext<'_>,
        cp: &mut Checkpoint,
        sid: u64,
        cb: CbCommand,
    ) -> Result<Drive, CbError> {
        let index = cp.index;
        let reference = Some(vendor_ref(sid, cb.id));
        let finished = |result| {
            Drive::Finished(
                CommandUpdate::succeeded(index, result)
                    .with_vendor(reference.clone(), Some(cb.status.clone())),
            )
        };
        match &ctx.commands[index] {
            Command::Execute { wait, output_file, .. } => {
                if !wait {
                    return Ok(finished(CommandResult::Execution {
                        pid: cb.pid,
                        exit_code: None,
                        output: None,
                        output_file: None,
                    }));
                }
                let (path, delete) = match output_file {
                    Some(p) => (p.clone(), false),
                    None => (self.temp_path(ctx, cp, "out").await?, true),
                };
                cp.phase = Phase::Fetch(Box::new(Fetch::new(
                    path,
                    0,
                    None,
                    AfterFetch::Execute { pid: cb.pid, exit_code: cb.return_code, delete },
                )));
                Ok(Drive::Continue)
            }
            Command::MemoryDump { path, fetch } => {
                let (dump, ours) = match path {
                    Some(p) => (p.clone(), false),
                    None => (self.temp_path(ctx, cp, "dmp").await?, true),
                };
                if !fetch {
                    return Ok(finished(CommandResult::MemoryDump { path: dump, file: None }));
                }
                cp.phase = Phase::Fetch(Box::new(Fetch::new(
                    dump.clone(),
                    0,
                    None,
                    AfterFetch::MemoryDump { path: dump, delete: ours },
                )));
                Ok(Drive::Continue)
            }
            command => {
                let result = mapping::simple_result(command, cb.clone());
                Ok(finished(result))
            }
        }
    }

    /// One range of a file download per call: send `get file`, wait, stream the content into
    /// the result file, delete the staged copy, and either ask for the next range or commit.
    async fn drive_fetch(
        &self,
        ctx: &RunContext<'_>,
        cp: &mut Checkpoint,
        updates: &mut Vec<CommandUpdate>,
        sid: u64,
        mut fetch: Fetch,
    ) -> Result<Drive, CbError> {
        let index = cp.index;
        let mut writer = match self.take_writer(ctx.run_id, index) {
            Some(w) => w,
            None => {
                // A restart lost the writer (and the bytes it held): start the file over.
                if fetch.next != fetch.start {
                    tracing::info!(run = %ctx.run_id, "restarting a download after a restart");
                    fetch.next = fetch.start;
                    fetch.cid = None;
                }
                let name = mapping::base_name(&fetch.path).to_owned();
                FetchWriter {
                    index,
                    writer: ctx.files.create(index, &name).await?,
                    head: Vec::new(),
                    head_limit: match fetch.then {
                        AfterFetch::Execute { .. } => OUTPUT_INLINE_LIMIT,
                        _ => 0,
                    },
                }
            }
        };
        let result = self.fetch_range(ctx, cp, updates, sid, &mut fetch, &mut writer).await;
        match result {
            Ok(FetchStep::More(drive)) => {
                self.put_writer(ctx.run_id, writer);
                cp.phase = Phase::Fetch(Box::new(fetch));
                Ok(drive)
            }
            Ok(FetchStep::Complete) => {
                let file = writer.writer.commit().await?;
                let reference = fetch.cid.map(|cid| vendor_ref(sid, cid));
                let (result, cleanup) = match fetch.then {
                    AfterFetch::GetFile => (CommandResult::File { file }, None),
                    AfterFetch::Execute { pid, exit_code, delete } => (
                        CommandResult::Execution {
                            pid,
                            exit_code,
                            output: Some(String::from_utf8_lossy(&writer.head).into_owned()),
                            output_file: Some(file),
                        },
                        delete.then_some(fetch.path),
                    ),
                    AfterFetch::MemoryDump { path, delete } => (
                        CommandResult::MemoryDump { path: path.clone(), file: Some(file) },
                        delete.then_some(path),
                    ),
                };
                match cleanup {
                    Some(path) => {
                        cp.phase =
                            Phase::Cleanup { path, cid: None, at: now(), result: Box::new(result) };
                        Ok(Drive::Continue)
                    }
                    None => Ok(Drive::Finished(
                        CommandUpdate::succeeded(index, result)
                            .with_vendor(reference, Some("complete".into())),
                    )),
                }
            }
            Ok(FetchStep::Failed(update)) => Ok(Drive::Finished(update)),
            Err(e) => {
                // Keep the bytes already written; a lost session or a retry resumes after them.
                let lost = matches!(e, CbError::SessionLost(_));
                if lost || e.is_retryable() {
                    let written = writer.writer.written();
                    // A range written in part cannot be downloaded again from its start.
                    if lost || fetch.start + written != fetch.next {
                        fetch.cid = None;
                        fetch.file_id = None;
                        fetch.next = fetch.start + written;
                    }
                    self.put_writer(ctx.run_id, writer);
                    cp.phase = Phase::Fetch(Box::new(fetch));
                }
                Err(e)
            }
        }
    }

    async fn fetch_range(
        &self,
        ctx: &RunContext<'_>,
        cp: &mut Checkpoint,
        updates: &mut Vec<CommandUpdate>,
        sid: u64,
        fetch: &mut Fetch,
        writer: &mut FetchWriter,
    ) -> Result<FetchStep, CbError> {
        let index = cp.index;
        if fetch.end.is_some_and(|end| fetch.next >= end) {
            return Ok(FetchStep::Complete);
        }
        let cid = match fetch.cid {
            Some(cid) => cid,
            None => {
                let remaining = fetch.end.map_or(u64::MAX, |end| end - fetch.next);
                let asked = self.cfg.chunk_size.min(remaining);
                let request = mapping::get_file_request(sid, &fetch.path, fetch.next, asked);
                let sent = self.client.post_command(sid, &request).await?;
                if let Some(session) = &mut cp.session {
                    session.last_contact = now();
                }
                if fetch.next == fetch.start {
                    updates.push(
                        CommandUpdate::status(index, Status::Running)
                            .with_vendor(Some(vendor_ref(sid, sent.id)), Some(sent.status.clone())),
                    );
                }
                fetch.cid = Some(sent.id);
                fetch.file_id = sent.file_id;
                fetch.asked = asked;
                fetch.at = now();
                sent.id
            }
        };
        let cb = match self.wait_command(ctx, cp, sid, cid, fetch.at).await? {
            Waited::Done(cb) => cb,
            Waited::Pending(_, delay) => {
                if now() - fetch.at > self.timeout_of(CommandKind::GetFile).as_secs_f64() {
                    let update = self.timed_out(sid, cid, index, CommandKind::GetFile).await;
                    return Ok(FetchStep::Failed(update));
                }
                return Ok(FetchStep::More(Drive::Wait(delay)));
            }
            Waited::Interrupted => return Ok(FetchStep::More(Drive::Wait(Duration::ZERO))),
        };
        match mapping::command_status(&cb.status) {
            Status::Succeeded => {}
            Status::Cancelled => {
                return Ok(FetchStep::Failed(
                    CommandUpdate::status(index, Status::Cancelled).with_error(ErrorInfo::new(
                        ErrorCode::Cancelled,
                        "the command was cancelled on the Carbon Black server",
                    )),
                ));
            }
            _ => {
                return Ok(FetchStep::Failed(
                    CommandUpdate::failed(index, mapping::command_error(&cb))
                        .with_vendor(Some(vendor_ref(sid, cid)), Some(cb.status.clone())),
                ));
            }
        }
        let Some(fid) = cb.file_id.or(fetch.file_id) else {
            return Ok(FetchStep::Failed(CommandUpdate::failed(
                index,
                ErrorInfo::new(ErrorCode::CommandFailed, "get file completed without a file id"),
            )));
        };
        let before = writer.writer.written();
        if let Err(e) = self.download(sid, fid, fetch.asked, writer).await {
            fetch.failures += 1;
            if fetch.failures > MAX_FETCH_FAILURES {
                return Ok(FetchStep::Failed(CommandUpdate::failed(index, e.into_adapter().info)));
            }
            return Err(e);
        }
        let got = writer.writer.written() - before;
        // A short range means the end of the file, but only if the server staged no more than
        // it sent: a body cut short without a transport error (a proxy, a restarted worker)
        // must not complete a truncated file. The file object's `size` (§2.10–§2.12) tells.
        if got < fetch.asked {
            let staged = self.client.file_object(sid, fid).await?.size;
            if staged != Some(got) {
                let e = CbError::Api(AdapterError::transient(
                    ErrorCode::VendorUnavailable,
                    format!(
                        "Carbon Black sent {got} bytes of a range it staged as {staged:?} bytes"
                    ),
                ));
                fetch.failures += 1;
                if fetch.failures > MAX_FETCH_FAILURES {
                    return Ok(FetchStep::Failed(CommandUpdate::failed(
                        index,
                        e.into_adapter().info,
                    )));
                }
                return Err(e);
            }
        }
        if let Err(e) = self.client.delete_file_object(sid, fid).await {
            tracing::debug!(run = %ctx.run_id, error = %e, "could not delete a staged file object");
        }
        fetch.next += got;
        fetch.cid = None;
        fetch.file_id = None;
        fetch.failures = 0;
        let at_end = fetch.end.is_some_and(|end| fetch.next >= end);
        if got < fetch.asked || at_end {
            Ok(FetchStep::Complete)
        } else {
            Ok(FetchStep::More(Drive::Continue))
        }
    }

    /// Streams one staged range into the writer, refusing more bytes than were asked for.
    async fn download(
        &self,
        sid: u64,
        fid: u64,
        asked: u64,
        writer: &mut FetchWriter,
    ) -> Result<(), CbError> {
        let stream = self.client.content(sid, fid).await?;
        futures::pin_mut!(stream);
        let mut received = 0u64;
        while let Some(chunk) = stream.next().await {
            let chunk = chunk?;
            received += chunk.len() as u64;
            if received > asked {
                return Err(CbError::Api(AdapterError::new(
                    ErrorCode::VendorRejected,
                    "Carbon Black returned more bytes than the requested range",
                )));
            }
            if writer.head.len() < writer.head_limit {
                let take = (writer.head_limit - writer.head.len()).min(chunk.len());
                writer.head.extend_from_slice(&chunk[..take]);
            }
            writer.writer.write(&chunk).await?;
        }
        Ok(())
    }

    /// Deletes a temporary endpoint file edrgate created, then reports the kept result. A
    /// failed delete is logged, not reported: the command itself succeeded.
    #[allow(clippy::too_many_arguments)]
    async fn drive_cleanup(
        &self,
        ctx: &RunContext<'_>,
        cp: &mut Checkpoint,
        sid: u64,
        path: String,
        cid: Option<u64>,
        at: f64,
        result: CommandResult,
    ) -> Result<Drive, CbError> {
        let index = cp.index;
        let cid = match cid {
            Some(cid) => cid,
            None => {
                let sent = self
                    .client
                    .post_command(sid, &mapping::delete_file_request(sid, &path))
                    .await?;
                cp.phase = Phase::Cleanup {
                    path: path.clone(),
                    cid: Some(sent.id),
                    at,
                    result: Box::new(result.clone()),
                };
                sent.id
            }
        };
        let finished = |result| Drive::Finished(CommandUpdate::succeeded(index, result));
        match self.wait_command(ctx, cp, sid, cid, at).await? {
            Waited::Done(cb) => {
                if mapping::command_status(&cb.status) != Status::Succeeded {
                    tracing::warn!(run = %ctx.run_id, path = %path, "could not delete a temporary file on the endpoint");
                }
                Ok(finished(result))
            }
            Waited::Pending(_, delay) => {
                if now() - at > self.timeout_of(CommandKind::DeleteFile).as_secs_f64() {
                    tracing::warn!(run = %ctx.run_id, path = %path, "deleting a temporary file timed out");
                    return Ok(finished(result));
                }
                Ok(Drive::Wait(delay))
            }
            Waited::Interrupted => Ok(Drive::Wait(Duration::ZERO)),
        }
    }

    /// Isolate/release through the sensor record (no session needed).
    async fn drive_containment(
        &self,
        ctx: &RunContext<'_>,
        cp: &mut Checkpoint,
        updates: &mut Vec<CommandUpdate>,
        isolate: bool,
    ) -> Result<Drive, CbError> {
        let index = cp.index;
        let (at, applied) = match cp.phase {
            Phase::Contain { at, applied } => (at, applied),
            _ => {
                let previous =
                    std::mem::replace(&mut cp.phase, Phase::Contain { at: now(), applied: false });
                if let Err(e) = self.record(ctx, cp, updates).await {
                    cp.phase = previous;
                    return Ok(Drive::Abort(e));
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

    /// Takes the slot, then finds, opens or waits for the sensor's session.
    async fn ensure_session(
        &self,
        ctx: &RunContext<'_>,
        cp: &mut Checkpoint,
        updates: &mut Vec<CommandUpdate>,
    ) -> Result<SessionReady, CbError> {
        if !self.holds_slot(ctx.run_id) {
            let key = cp.sensor_id.to_string();
            let action = ctx.action_id.to_string();
            let guard = tokio::select! {
                guard = self.slots.acquire(&key, ctx.tenant, &action) => guard,
                _ = ctx.stop.stopped() => {
                    return Ok(SessionReady::Stopped(ctx.stop.reason().unwrap_or(StopReason::Cancelled)));
                }
            };
            self.keep_slot(ctx.run_id, guard, None);
        }
        // This process's fair share is granted; with other replicas, the server's slots must
        // also be free among them all (§10: the limit is the server's). A held key stays with
        // its run, so a run taken over from a dead replica gets its slot back at once. While the
        // replicas' budget is full the run keeps its local slot and asks again: the runs waiting
        // behind it here could not use the slot either, and they wait without stepping.
        if let Some(budget) = self.shared.get().filter(|b| b.is_shared())
            && !self.holds_shared_slot(ctx.run_id)
        {
            let holder = ctx.run_id.to_string();
            let key = cp.sensor_id.to_string();
            let taken = edrgate_adapter::shared::acquire_slot(
                budget,
                &self.scope,
                self.cfg.slot_limit,
                &key,
                &holder,
            )
            .await?;
            match taken {
                Some(slot) => self.keep_shared_slot(ctx.run_id, slot),
                None => {
                    let wait = self.cfg.poll_min().max(Duration::from_millis(500));
                    return Ok(SessionReady::Wait(wait));
                }
            }
        }
        if cp.session.is_none() {
            let sensor = cp.sensor_id;
            // Reuse a pending/active session of the sensor (cbapi §5.2), e.g. one handed over
            // by the previous run or left by another tool: it already holds a server slot.
            let live: Vec<wire::Session> = self
                .client
                .sessions()
                .await?
                .into_iter()
                .filter(|s| {
                    matches!(
                        mapping::session_status(&s.status),
                        Status::Dispatched | Status::Running
                    )
                })
                .collect();
            let existing = live.iter().find(|s| s.sensor_id == sensor).cloned();
            let session = match existing {
                Some(s) => s,
                // §10: count the sessions already on the server, not only ours. After a restart
                // the sessions of resumed runs still hold server slots while those runs wait for
                // ours: a new session would sit pending behind them, holding the slot they need.
                // Give the slot back and try again shortly instead.
                None if live.len() >= self.cfg.slot_limit => {
                    self.release_slot(ctx.run_id);
                    return Ok(SessionReady::Wait(self.cfg.poll_max()));
                }
                None => self.client.create_session(sensor).await?,
            };
            let at = now();
            updates.push(CommandUpdate::status(cp.index, Status::Dispatched).with_vendor(
                Some(format!("session/{}", session.id)),
                Some(session.status.clone()),
            ));
            cp.session = Some(SessionState {
                id: session.id,
                active: mapping::session_status(&session.status) == Status::Running,
                since: at,
                last_contact: at,
            });
        }
        let Some(session) = &mut cp.session else {
            return Err(phase_mismatch());
        };
        if session.active {
            return Ok(SessionReady::Active(session.id));
        }
        let (sid, since) = (session.id, session.since);
        let long_poll = self.long_poll();
        let started = Instant::now();
        let polled = tokio::select! {
            polled = self.client.session(sid, long_poll) => polled?,
            _ = ctx.stop.stopped() => return Ok(SessionReady::Wait(Duration::ZERO)),
        };
        // The long-poll released the borrow of `cp`; take the session again.
        let Some(session) = &mut cp.session else {
            return Err(phase_mismatch());
        };
        // `None`: our side of the long-poll ran out while the session was still pending.
        let status =
            polled.as_ref().map_or(Status::Dispatched, |p| mapping::session_status(&p.status));
        match status {
            Status::Running => {
                session.active = true;
                session.last_contact = now();
                Ok(SessionReady::Active(sid))
            }
            Status::Dispatched => {
                if now() - since > self.cfg.session_checkin_timeout_secs as f64 {
                    // Close it: a pending session holds one of the server's slots (§8 #64).
                    cp.session = None;
                    if let Err(e) = self.client.close_session(sid).await {
                        tracing::debug!(run = %ctx.run_id, error = %e, "closing a session that never checked in failed");
                    }
                    return Ok(SessionReady::Offline);
                }
                Ok(SessionReady::Wait(match polled {
                    None => Duration::ZERO,
                    Some(_) => self.next_poll(long_poll, started, since),
                }))
            }
            other => Err(CbError::SessionLost(format!(
                "Session {sid} is {}",
                polled.map_or_else(|| other.as_str().to_owned(), |p| p.status)
            ))),
        }
    }

    /// A session died: forget it and decide what happens to the current command.
    fn session_lost(
        &self,
        ctx: &RunContext<'_>,
        cp: &mut Checkpoint,
        updates: &mut Vec<CommandUpdate>,
        text: String,
    ) {
        tracing::info!(run = %ctx.run_id, vendor_message = %text, "live-response session lost");
        cp.session = None;
        cp.session_losses += 1;
        let index = cp.index;
        let kind = ctx.commands[index].kind();
        let update = match &mut cp.phase {
            // The command may have run before the session died; only the vendor could say,
            // and the session's command list is gone with it.
            Phase::Intent { name, .. } => Some(outcome_unknown(index, name)),
            Phase::Sent { .. } if kind.has_side_effect() => {
                Some(outcome_unknown(index, kind.as_str()))
            }
            Phase::Sent { .. } | Phase::Uploaded { .. } => {
                // Read-only, or only staged on the server: safe to start over.
                cp.phase = Phase::Ready;
                None
            }
            Phase::Fetch(fetch) => {
                fetch.cid = None;
                fetch.file_id = None;
                None
            }
            Phase::Cleanup { cid, .. } => {
                *cid = None;
                None
            }
            Phase::Ready | Phase::Contain { .. } => None,
        };
        let update = update.or_else(|| {
            (cp.session_losses > self.cfg.max_session_retries).then(|| {
                CommandUpdate::failed(
                    index,
                    ErrorInfo::from(CbError::SessionLost(text).into_adapter()).with_message(
                        format!("the live-response session ended {} times", cp.session_losses),
                    ),
                )
            })
        });
        if let Some(update) = update {
            self.command_done(ctx, cp, updates, update);
        }
    }

    /// Records the end of the current command and applies `on_error`.
    fn command_done(
        &self,
        ctx: &RunContext<'_>,
        cp: &mut Checkpoint,
        updates: &mut Vec<CommandUpdate>,
        update: CommandUpdate,
    ) {
        let failed = update.status != Status::Succeeded;
        // A download abandoned by a failure: dropping its writer discards the partial file.
        drop(self.take_writer(ctx.run_id, cp.index));
        updates.push(update);
        cp.index += 1;
        cp.phase = Phase::Ready;
        cp.session_losses = 0;
        if failed {
            cp.failed = true;
            if ctx.on_error == OnError::Stop {
                cp.index = ctx.close_rest(cp.index, None, updates);
            }
        }
    }

    /// A command ran out of time: cancel it on the server (best effort) and report it.
    async fn timed_out(
        &self,
        sid: u64,
        cid: u64,
        index: usize,
        kind: CommandKind,
    ) -> CommandUpdate {
        if let Err(e) = self.client.cancel_command(sid, cid).await {
            tracing::debug!(error = %e, "cancelling a timed-out command failed");
        }
        let limit = self.timeout_of(kind).as_secs();
        CommandUpdate::status(index, Status::TimedOut)
            .with_vendor(Some(vendor_ref(sid, cid)), None)
            .with_error(ErrorInfo::new(
                ErrorCode::Timeout,
                format!("the command did not finish in time (limit {limit} s)"),
            ))
    }

    /// The run is stopped: cancel what runs on the server, close out every unfinished
    /// command with the stop's status, release the session.
    async fn stop(
        &self,
        ctx: &RunContext<'_>,
        cp: &mut Checkpoint,
        updates: &mut Vec<CommandUpdate>,
        reason: StopReason,
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
        cp.index = ctx.close_rest(cp.index, Some(reason), updates);
        cp.phase = Phase::Ready;
        self.finish(ctx, cp).await;
    }

    /// The run is over: hand the session to a run waiting for the same sensor, else close it.
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
        self.forget(ctx.run_id);
    }

    /// Waits for a command: a bounded long-poll raced with the stop signal, then a delay
    /// that grows with the time already waited. Sends keepalives while waiting.
    async fn wait_command(
        &self,
        ctx: &RunContext<'_>,
        cp: &mut Checkpoint,
        sid: u64,
        cid: u64,
        since: f64,
    ) -> Result<Waited, CbError> {
        if let Some(session) = &mut cp.session
            && session.active
            && now() - session.last_contact >= self.cfg.keepalive_interval_secs as f64
        {
            self.client.keepalive(sid).await?;
            session.last_contact = now();
        }
        // Long-poll only during the first window after sending: short commands are noticed
        // the moment they end, while longer ones are polled plainly so their progress
        // (memdump percentage, `in progress`) is seen.
        let long_poll = self.long_poll().filter(|lp| now() - since < lp.as_secs_f64());
        let started = Instant::now();
        let got = tokio::select! {
            got = self.client.command(sid, cid, long_poll) => got?,
            _ = ctx.stop.stopped() => return Ok(Waited::Interrupted),
        };
        let Some(cb) = got else {
            // Our side of the long-poll ran out: ask again at once.
            return Ok(Waited::Interrupted);
        };
        if mapping::command_status(&cb.status).is_terminal() {
            return Ok(Waited::Done(Box::new(cb)));
        }
        let delay = self.next_poll(long_poll, started, since);
        Ok(Waited::Pending(Box::new(cb), delay))
    }

    fn long_poll(&self) -> Option<Duration> {
        (self.cfg.long_poll_ms > 0).then(|| Duration::from_millis(self.cfg.long_poll_ms))
    }

    /// After a poll that found the vendor still working: a server that held the request was
    /// long-polling, so ask again at once; one that answered straight away does not, so back
    /// off.
    fn next_poll(&self, long_poll: Option<Duration>, started: Instant, since: f64) -> Duration {
        match long_poll {
            Some(lp) if started.elapsed() >= lp / 2 => Duration::ZERO,
            _ => self.poll_delay(since),
        }
    }

    /// Delay before the next poll: a tenth of the time already waited, within the bounds.
    fn poll_delay(&self, since: f64) -> Duration {
        let waited = (now() - since).max(0.0);
        Duration::from_secs_f64(waited / 10.0).clamp(self.cfg.poll_min(), self.cfg.poll_max())
    }

    fn timeout_of(&self, kind: CommandKind) -> Duration {
        Duration::from_secs(match kind {
            CommandKind::MemoryDump => self.cfg.memdump_timeout_secs,
            _ => self.cfg.command_timeout_secs,
        })
    }

    /// A temporary path on the endpoint for command `index` of this run, in the OS's temp
    /// directory (cbapi: `c:\windows\temp` on Windows, `/tmp` elsewhere, §5.1). Deterministic,
    /// so later steps and reconciliation find the same path.
    async fn temp_path(
        &self,
        ctx: &RunContext<'_>,
        cp: &mut Checkpoint,
        ext: &str,
    ) -> Result<String, CbError> {
        let windows = match cp.windows {
            Some(w) => w,
            None => {
                let sensor = self.client.sensor(cp.sensor_id).await?;
                // os_type 1 is Windows (§5.1); unknown is treated as Windows, CB's main platform.
                let w = sensor.os_type.is_none_or(|t| t == 1);
                cp.windows = Some(w);
                w
            }
        };
        let name = format!("edrgate-{}-{}.{ext}", ctx.run_id.simple(), cp.index);
        Ok(if windows { format!("C:\\Windows\\Temp\\{name}") } else { format!("/tmp/{name}") })
    }

    fn failure(&self, cp: &Checkpoint, info: ErrorInfo) -> CommandUpdate {
        match &cp.phase {
            // The POST may have gone through before the error: never claim it did not.
            Phase::Intent { name, .. } => outcome_unknown(cp.index, name),
            _ => CommandUpdate::failed(cp.index, info),
        }
    }

    /// Persists the intent now. The step's earlier updates (e.g. the previous command's
    /// result) go with it: the checkpoint has moved past them, so they would be lost if the
    /// process died before the step returned. Once stored they are drained, so the step does
    /// not report them a second time.
    async fn record(
        &self,
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

    // ---- per-run memory ----

    fn memory(&self) -> MutexGuard<'_, HashMap<Uuid, RunMemory>> {
        // Every critical section is a single map operation, so a poisoned map is consistent.
        self.runs.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn touch(&self, run: Uuid) {
        let mut runs = self.memory();
        // Drop what runs no longer stepped still hold (outside the lock, guards re-enter the
        // slot budget).
        let stale: Vec<Uuid> = runs
            .iter()
            .filter(|(id, m)| **id != run && m.touched.elapsed() > STALE_RUN)
            .map(|(id, _)| *id)
            .collect();
        let dropped: Vec<RunMemory> = stale.iter().filter_map(|id| runs.remove(id)).collect();
        if let Some(m) = runs.get_mut(&run) {
            m.touched = Instant::now();
        }
        drop(runs);
        if !dropped.is_empty() {
            tracing::warn!(
                runs = dropped.len(),
                "released the session slots of runs that stopped stepping"
            );
        }
    }

    fn holds_slot(&self, run: Uuid) -> bool {
        self.memory().get(&run).is_some_and(|m| m.slot.is_some())
    }

    fn release_slot(&self, run: Uuid) {
        let slots = self.memory().get_mut(&run).map(|m| (m.slot.take(), m.shared_slot.take()));
        drop(slots);
    }

    fn holds_shared_slot(&self, run: Uuid) -> bool {
        self.memory().get(&run).is_some_and(|m| m.shared_slot.is_some())
    }

    fn keep_shared_slot(&self, run: Uuid, slot: SharedSlot) {
        self.memory().entry(run).or_insert_with(RunMemory::new).shared_slot = Some(slot);
    }

    fn keep_slot(&self, run: Uuid, guard: SlotGuard, shared: Option<SharedSlot>) {
        let mut runs = self.memory();
        let m = runs.entry(run).or_insert_with(RunMemory::new);
        m.slot = Some(guard);
        m.shared_slot = shared;
    }

    fn take_writer(&self, run: Uuid, index: usize) -> Option<FetchWriter> {
        let mut runs = self.memory();
        let m = runs.get_mut(&run)?;
        match &m.fetch {
            Some(f) if f.index == index => m.fetch.take(),
            _ => None,
        }
    }

    fn put_writer(&self, run: Uuid, writer: FetchWriter) {
        self.memory().entry(run).or_insert_with(RunMemory::new).fetch = Some(writer);
    }

    fn forget(&self, run: Uuid) {
        let memory = self.memory().remove(&run);
        drop(memory);
    }
}

enum FetchStep {
    More(Drive),
    Complete,
    Failed(CommandUpdate),
}

/// What waiting on a command found.
enum Waited {
    /// It ended (complete, error or cancel).
    Done(Box<CbCommand>),
    /// Still pending or running; poll again after the delay.
    Pending(Box<CbCommand>, Duration),
    /// The wait was cut short (stop signal, our long-poll timeout): step again at once.
    Interrupted,
}

impl RunMemory {
    fn new() -> Self {
        RunMemory { slot: None, shared_slot: None, fetch: None, touched: Instant::now() }
    }
}

impl Fetch {
    fn new(path: String, start: u64, end: Option<u64>, then: AfterFetch) -> Self {
        Fetch {
            path,
            start,
            end,
            next: start,
            cid: None,
            file_id: None,
            asked: 0,
            at: now(),
            failures: 0,
            then,
        }
    }
}

/// Status helpers local to this adapter.
trait StatusExt {
    /// A freshly sent command is at least `dispatched`, whatever the server said.
    fn min_running(self) -> Status;
}

impl StatusExt for Status {
    fn min_running(self) -> Status {
        if self.is_terminal() || self == Status::Queued { Status::Dispatched } else { self }
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

/// Every command but `run_script`, natively (see the crate doc).
fn capabilities(backend: &str, concurrent_sessions: u32) -> Capabilities {
    Capabilities {
        backend: backend.to_owned(),
        kind: crate::KIND.to_owned(),
        commands: CommandKind::ALL
            .into_iter()
            .filter(|k| *k != CommandKind::RunScript)
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

fn outcome_unknown(index: usize, name: &str) -> CommandUpdate {
    CommandUpdate::failed(
        index,
        ErrorInfo::new(
            ErrorCode::OutcomeUnknown,
            format!(
                "edrgate cannot tell whether Carbon Black received {name:?} before an interruption; it was not sent again"
            ),
        ),
    )
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
