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
//! Everything a later step needs is in the [`Checkpoint`]. Only the session slot lives in
//! memory (re-acquired after a restart while an action is live).

use std::collections::{HashMap, HashSet};
use std::io::Write as _;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use edrgate_adapter::adapter::{FileWriter, StopReason, decode_checkpoint, encode_checkpoint};
use edrgate_adapter::{
    Adapter, AdapterError, BudgetUse, Capabilities, Command, CommandKind, CommandResult,
    CommandSupport, CommandUpdate, Device, ErrorCode, ErrorInfo, Limits, Next, OnError, RunContext,
    SharedBudget, SharedSlot, SlotGuard, Status, Step, Via,
};
use futures::StreamExt as _;
use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;
use uuid::Uuid;

use crate::client::DfClient;
use crate::config::DefenderConfig;
use crate::mapping::{self, Helper};
use crate::wire::{self, LrCommand, MachineAction, keys, kinds};

/// Bytes of script or execute output returned inline (the whole output is a result file).
const OUTPUT_INLINE_LIMIT: usize = 64 * 1024;
/// Largest RunScript result blob read (it is JSON holding the script's output).
const SCRIPT_BLOB_LIMIT: usize = 32 * 1024 * 1024;
/// Slots of runs whose steps stopped coming are dropped after this long.
const STALE_RUN: Duration = Duration::from_secs(15 * 60);
/// How long the shared poller collects requests before one batched call.
const POLL_GATHER: Duration = Duration::from_millis(20);
/// Prefix of the comment tag that ties a machine action to its run and batch.
const TAG_PREFIX: &str = "edrgate:";

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
}

/// A run's session slot, held from before its submission until its action ends.
struct Held {
    _guard: SlotGuard,
    _shared: Option<SharedSlot>,
    touched: Instant,
}

/// The run's state between steps, stored as JSON by the engine.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct Checkpoint {
    machine_id: String,
    /// First command not finished.
    #[serde(default)]
    index: usize,
    #[serde(default)]
    phase: Phase,
    /// Consecutive transient failures, for the back-off.
    #[serde(default)]
    transient: u32,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(tag = "phase", rename_all = "snake_case")]
enum Phase {
    #[default]
    Ready,
    /// Intent recorded for the batch `[index, end)`: its `runliveresponse` may have reached
    /// Defender; the comment tag finds it.
    Intent { end: usize, tag: String, at: f64 },
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
    /// Intent recorded for isolate/release.
    ContainIntent { tag: String, at: f64 },
    /// Isolate/release runs as machine action `id`.
    Contain {
        id: String,
        at: f64,
        #[serde(default)]
        seen: bool,
    },
}

/// What driving the run produced.
enum Drive {
    Continue,
    Wait(Duration),
    Stopped(StopReason),
}

/// One live-response command of a batch and the normalized command it serves.
struct Slot {
    command: usize,
    lr: LrCommand,
    role: Role,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Role {
    /// Carries the command's result.
    Main,
    /// `put_file`'s PutFile: no result of its own.
    Upload,
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
        Ok(DefenderAdapter {
            capabilities: capabilities(backend_name, sessions, &cfg),
            poller: Arc::new(Poller {
                client: Arc::clone(&client),
                pending: Mutex::new(None),
                flushing: tokio::sync::Mutex::new(()),
            }),
            client,
            cfg,
            runs: Mutex::new(HashMap::new()),
            shared: OnceLock::new(),
            scope,
            library: Mutex::new(HashSet::new()),
        })
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

    /// Machines whose `computerDnsName` contains `hostname`, case-insensitively. Defender's
    /// filter is an exact `eq` (§10): it is asked first, the full list only when it finds none.
    async fn find_devices(&self, hostname: Option<&str>) -> Result<Vec<Device>, AdapterError> {
        let matching = |machines: Vec<wire::Machine>| -> Vec<Device> {
            machines
                .into_iter()
                .map(|m| mapping::device(&self.capabilities.backend, m))
                .filter(|d| {
                    hostname.is_none_or(|h| edrgate_adapter::hostname_matches(&d.hostname, h))
                })
                .collect()
        };
        let mut found = matching(self.client.machines(hostname).await?);
        if found.is_empty() && hostname.is_some() {
            found = matching(self.client.machines(None).await?);
        }
        Ok(found)
    }

    fn run_closed(&self, run_id: Uuid) {
        self.release_slot(run_id);
    }

    fn use_shared_budget(&self, budget: Arc<dyn SharedBudget>) {
        self.client.budget.use_shared(Arc::clone(&budget), &self.scope);
        let _ = self.shared.set(budget);
    }

    fn budgets(&self) -> Vec<BudgetUse> {
        let b = &self.client.budget;
        vec![
            BudgetUse {
                name: "sessions",
                in_use: b.sessions.in_use(),
                capacity: b.sessions.capacity(),
                waiting: b.sessions.waiting(),
            },
            BudgetUse {
                name: "runliveresponse_per_window",
                in_use: b.live_response.recent(),
                capacity: self.cfg.live_response_calls as usize,
                waiting: b.live_response.waiting(),
            },
        ]
    }

    async fn step(
        &self,
        ctx: &RunContext<'_>,
        checkpoint: Option<serde_json::Value>,
    ) -> Result<Step, AdapterError> {
        let mut cp = match checkpoint {
            None => Checkpoint {
                machine_id: machine_id(ctx.device_id)?,
                index: 0,
                phase: Phase::Ready,
                transient: 0,
            },
            Some(value) => decode_checkpoint("defender", value)?,
        };
        self.touch(ctx.run_id);
        let mut updates = Vec::new();
        let next = match self.advance(ctx, &mut cp, &mut updates).await {
            Ok(next) => next,
            Err(e) => {
                self.release_slot(ctx.run_id);
                return Err(e);
            }
        };
        if next == Next::Done {
            self.release_slot(ctx.run_id);
        }
        Ok(Step { checkpoint: encode_checkpoint(&cp)?, updates, next })
    }
}

impl DefenderAdapter {
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
                Ok(Drive::Continue) => cp.transient = 0,
                Ok(Drive::Wait(delay)) => {
                    cp.transient = 0;
                    return Ok(Next::After(delay));
                }
                Ok(Drive::Stopped(reason)) => {
                    self.stop(ctx, cp, updates, reason).await;
                    return Ok(Next::Done);
                }
                // The journal refused: the run belongs to another worker now.
                Err(e) if e.code() == ErrorCode::Conflict && e.info.vendor_code.is_none() => {
                    return Err(e);
                }
                // Transient failures are ridden out here with back-off and Retry-After; the
                // state reached so far is kept, so an intent is reconciled, never re-sent.
                Err(e) if e.is_retryable() => {
                    cp.transient = cp.transient.saturating_add(1);
                    let delay = edrgate_adapter::http::Backoff::STANDARD
                        .delay(cp.transient.min(8), e.retry_after);
                    tracing::warn!(run = %ctx.run_id, error = %e, retry_in = ?delay, "defender call failed");
                    return Ok(Next::After(delay));
                }
                Err(e) => {
                    // A permanent failure of the current unit of work.
                    let end = match &cp.phase {
                        Phase::Intent { end, .. } | Phase::Running { end, .. } => *end,
                        _ => cp.index + 1,
                    };
                    let unknown =
                        matches!(cp.phase, Phase::Intent { .. } | Phase::ContainIntent { .. });
                    self.release_slot(ctx.run_id);
                    for _ in cp.index..end {
                        let update = if unknown && ctx.commands[cp.index].kind().has_side_effect() {
                            outcome_unknown(cp.index)
                        } else {
                            CommandUpdate::failed(cp.index, e.info.clone())
                        };
                        self.command_done(ctx, cp, updates, update);
                        if cp.index >= end {
                            break;
                        }
                    }
                    cp.phase = Phase::Ready;
                }
            }
        }
    }

    async fn drive(
        &self,
        ctx: &RunContext<'_>,
        cp: &mut Checkpoint,
        updates: &mut Vec<CommandUpdate>,
    ) -> Result<Drive, AdapterError> {
        match cp.phase.clone() {
            Phase::Ready => match &ctx.commands[cp.index] {
                Command::Isolate => self.start_contain(ctx, cp, updates, true).await,
                Command::Release => self.start_contain(ctx, cp, updates, false).await,
                command if mapping::lr_commands(command).is_some() => {
                    self.start_batch(ctx, cp, updates).await
                }
                command => {
                    let update = CommandUpdate::failed(
                        cp.index,
                        ErrorInfo::new(
                            ErrorCode::UnsupportedCommand,
                            format!("Defender backends do not support {}", command.kind().as_str()),
                        ),
                    );
                    self.command_done(ctx, cp, updates, update);
                    Ok(Drive::Continue)
                }
            },
            Phase::Intent { end, tag, at } => self.reconcile(ctx, cp, end, &tag, at).await,
            Phase::Running { id, end, at, seen, reported } => {
                self.poll(ctx, cp, updates, &id, end, at, seen, reported).await
            }
            Phase::ContainIntent { tag, at } => self.reconcile_contain(ctx, cp, &tag, at).await,
            Phase::Contain { id, at, seen } => {
                self.poll_contain(ctx, cp, updates, &id, at, seen).await
            }
        }
    }

    // ---- batches ----

    /// Prepares, budgets, records and submits the batch starting at `cp.index`.
    async fn start_batch(
        &self,
        ctx: &RunContext<'_>,
        cp: &mut Checkpoint,
        updates: &mut Vec<CommandUpdate>,
    ) -> Result<Drive, AdapterError> {
        let mut end = plan_end(ctx.commands, cp.index, ctx.on_error);
        // put_file payloads: the size cap is checked before any vendor call (§8.1).
        let mut payloads = HashMap::new();
        for i in cp.index..end {
            if let Some(file_id) = ctx.commands[i].file_id() {
                let (file, _) = ctx.files.open(file_id).await?;
                if file.size > self.cfg.max_upload_bytes {
                    if i == cp.index {
                        let update = CommandUpdate::failed(
                            i,
                            too_large(file.size, self.cfg.max_upload_bytes),
                        );
                        self.command_done(ctx, cp, updates, update);
                        return Ok(Drive::Continue);
                    }
                    end = i;
                    break;
                }
                payloads.insert(
                    i,
                    (file.file_id.clone(), file.size, staged_name(&ctx.commands[i], &file.sha256)),
                );
            }
        }
        let slots = build_batch(ctx.commands, cp.index, end, &payloads);
        // The library first: uploads are idempotent and need no session.
        for helper in
            slots.iter().filter_map(|s| Helper::from_library_name(s.lr.param(keys::SCRIPT_NAME)?))
        {
            self.ensure_library(
                &helper.library_name(),
                || async {
                    let src = helper.source().as_bytes();
                    let reader: edrgate_adapter::adapter::FileReader =
                        Box::new(std::io::Cursor::new(src));
                    Ok((reader, src.len() as u64))
                },
                "edrgate helper script",
            )
            .await?;
        }
        for (file_id, size, name) in payloads.values() {
            self.ensure_library(
                name,
                || async {
                    let (_, reader) = ctx.files.open(file_id).await?;
                    Ok((reader, *size))
                },
                "staged by edrgate",
            )
            .await?;
        }
        // Budgets: one live action per machine and at most `concurrent_sessions` per
        // credential (FairSlots), then a place in the runliveresponse window. Runs waiting
        // here are `queued`.
        if let Some(drive) = self.ensure_slot(ctx, &cp.machine_id).await? {
            return Ok(drive);
        }
        let permit = tokio::select! {
            p = self.client.budget.live_response.acquire() => p,
            _ = ctx.stop.stopped() => return Ok(Drive::Stopped(ctx.stop.reason().unwrap_or(StopReason::Cancelled))),
        };
        // With other replicas, the credential's call quota must also allow it among them all.
        // The shared quota counts a call when it is taken, not when Defender receives it, so
        // two replicas' calls could arrive closer than they were taken: its window is widened
        // by a margin (5%, at least 250 ms) that absorbs such delays.
        if let Some(budget) = self.shared.get().filter(|b| b.is_shared()) {
            let scope = format!("{}:runliveresponse", self.scope);
            let window = self.cfg.lr_window();
            let window = window + (window / 20).max(Duration::from_millis(250));
            if let Some(wait) =
                budget.take_call(&scope, self.cfg.live_response_calls, window).await?
            {
                permit.unused();
                return Ok(Drive::Wait(wait));
            }
        }
        let tag = format!("{TAG_PREFIX}{}:{}", ctx.run_id, cp.index);
        cp.phase = Phase::Intent { end, tag: tag.clone(), at: now() };
        self.record(ctx, cp, updates).await?;
        let body = wire::LiveResponseRequest {
            commands: slots.iter().map(|s| s.lr.clone()).collect(),
            comment: comment(&tag, ctx.comment),
        };
        let sent = self.client.run_live_response(&cp.machine_id, &body).await;
        drop(permit);
        match sent {
            Ok(action) if action.requestor_comment.as_deref().is_some_and(|c| has_tag(c, &tag)) => {
                self.submitted(ctx, cp, updates, &action, end);
                Ok(Drive::Wait(self.cfg.poll_min()))
            }
            Ok(other) => {
                // Defender may answer with an action already pending on the machine instead
                // of creating one (§3.3, Kibana). Whether ours exists too, the tag tells: the
                // intent is reconciled like an unanswered submission.
                tracing::info!(run = %ctx.run_id, action = %other.id, "defender returned an action without the run's tag; reconciling");
                Ok(Drive::Wait(self.cfg.poll_min()))
            }
            Err(e) if refused(&e) => {
                // Nothing happened at the vendor: back to queued and try again later.
                cp.phase = Phase::Ready;
                if e.info.vendor_code.as_deref() == Some(mapping::ACTIVE_REQUEST) {
                    tracing::info!(run = %ctx.run_id, "another live-response action runs on the machine; waiting");
                    self.release_slot(ctx.run_id);
                    return Ok(Drive::Wait(self.cfg.poll_max()));
                }
                Ok(Drive::Wait(e.retry_after.unwrap_or(self.cfg.poll_max())))
            }
            Err(e) if !e.is_retryable() => {
                // Refused on purpose (4xx): nothing ran.
                cp.phase = Phase::Ready;
                self.release_slot(ctx.run_id);
                let info = if e.code() == ErrorCode::NotFound {
                    ErrorInfo { code: ErrorCode::DeviceNotFound, ..e.info.clone() }
                } else {
                    e.info.clone()
                };
                let index = cp.index;
                for i in index..end {
                    if cp.index != i {
                        break;
                    }
                    self.command_done(ctx, cp, updates, CommandUpdate::failed(i, info.clone()));
                }
                Ok(Drive::Continue)
            }
            // Ambiguous (transport, 5xx): the action may exist; the tag tells (reconcile).
            Err(e) => Err(e),
        }
    }

    fn submitted(
        &self,
        ctx: &RunContext<'_>,
        cp: &mut Checkpoint,
        updates: &mut Vec<CommandUpdate>,
        action: &MachineAction,
        end: usize,
    ) {
        for i in cp.index..end {
            updates.push(
                CommandUpdate::status(i, Status::Dispatched)
                    .with_vendor(Some(action.id.clone()), Some(action.status.clone())),
            );
        }
        tracing::debug!(run = %ctx.run_id, action = %action.id, "live-response action submitted");
        cp.phase = Phase::Running {
            id: action.id.clone(),
            end,
            at: now(),
            // Seen in a read only once a poll finds it (§4.5: reads may lag the create).
            seen: false,
            reported: vec![action.status.clone(); end - cp.index],
        };
    }

    /// After a crash between intent and answer: the comment tag finds the action if it was
    /// created. Not found once the read-after-write window has passed, it never was (§4.5).
    async fn reconcile(
        &self,
        ctx: &RunContext<'_>,
        cp: &mut Checkpoint,
        end: usize,
        tag: &str,
        at: f64,
    ) -> Result<Drive, AdapterError> {
        if let Some(drive) = self.ensure_slot(ctx, &cp.machine_id).await? {
            return Ok(drive);
        }
        let actions = self.client.actions_of_machine(&cp.machine_id, "LiveResponse").await?;
        if let Some(a) =
            actions.iter().find(|a| a.requestor_comment.as_deref().is_some_and(|c| has_tag(c, tag)))
        {
            tracing::info!(run = %ctx.run_id, action = %a.id, "adopted the machine action found by its comment tag");
            cp.phase =
                Phase::Running { id: a.id.clone(), end, at, seen: true, reported: Vec::new() };
            return Ok(Drive::Continue);
        }
        if now() - at < self.cfg.visibility_grace_secs as f64 {
            return Ok(Drive::Wait(self.cfg.poll_min()));
        }
        tracing::info!(run = %ctx.run_id, "no machine action carries the run's tag: the submission never arrived");
        cp.phase = Phase::Ready;
        self.release_slot(ctx.run_id);
        Ok(Drive::Continue)
    }

    #[allow(clippy::too_many_arguments)]
    async fn poll(
        &self,
        ctx: &RunContext<'_>,
        cp: &mut Checkpoint,
        updates: &mut Vec<CommandUpdate>,
        id: &str,
        end: usize,
        at: f64,
        seen: bool,
        mut reported: Vec<String>,
    ) -> Result<Drive, AdapterError> {
        let poll = tokio::select! {
            got = self.poller.get(id) => got?,
            _ = ctx.stop.stopped() => return Ok(Drive::Continue),
        };
        let Some(action) = poll else {
            if !seen && now() - at < self.cfg.visibility_grace_secs as f64 {
                return Ok(Drive::Wait(self.cfg.poll_min()));
            }
            return Err(AdapterError::new(
                ErrorCode::VendorUnavailable,
                format!("Defender no longer shows machine action {id}"),
            ));
        };
        let status = mapping::action_status(&action.status);
        if !status.is_terminal() {
            // A live action holds its machine's slot, also after a restart.
            if let Some(drive) = self.ensure_slot(ctx, &cp.machine_id).await? {
                return Ok(drive);
            }
            let results = action.commands.clone().unwrap_or_default();
            let slots = self.slots_of(ctx, cp.index, end).await?;
            reported.resize(end - cp.index, String::new());
            for i in cp.index..end {
                let word =
                    main_status(&slots, &results, i).unwrap_or_else(|| action.status.clone());
                if reported[i - cp.index] != word {
                    // A finished command's verdict waits for its result, collected once the
                    // action ends (links exist only then).
                    let s = match status {
                        Status::Running => match mapping::command_status(&word) {
                            s if s.is_terminal() => Status::Running,
                            s => s,
                        },
                        s => s,
                    };
                    updates.push(
                        CommandUpdate::status(i, s)
                            .with_vendor(Some(action.id.clone()), Some(word.clone())),
                    );
                    reported[i - cp.index] = word;
                }
            }
            cp.phase = Phase::Running { id: id.to_owned(), end, at, seen: true, reported };
            return Ok(Drive::Wait(self.poll_delay(at)));
        }
        // The action ended: its session is free, and results are fetched now (links expire).
        self.release_slot(ctx.run_id);
        self.collect(ctx, cp, updates, &action, end).await
    }

    /// Turns a finished action into the batch's command outcomes, downloading results.
    async fn collect(
        &self,
        ctx: &RunContext<'_>,
        cp: &mut Checkpoint,
        updates: &mut Vec<CommandUpdate>,
        action: &MachineAction,
        end: usize,
    ) -> Result<Drive, AdapterError> {
        let results = action.commands.clone().unwrap_or_default();
        let slots = self.slots_of(ctx, cp.index, end).await?;
        let action_status = mapping::action_status(&action.status);
        let mut saw_failure = false;
        while cp.index < end {
            let i = cp.index;
            let mine: Vec<(usize, &Slot)> =
                slots.iter().enumerate().filter(|(_, s)| s.command == i).collect();
            let rows: Vec<Option<&wire::CommandResult>> =
                mine.iter().map(|(lr, _)| results.iter().find(|r| r.index == *lr)).collect();
            let word = |r: &Option<&wire::CommandResult>| {
                r.map_or("Created", |r| r.command_status.as_str()).to_owned()
            };
            let vendor_ref =
                Some(format!("{}/{}", action.id, mine.last().map_or(0, |(lr, _)| *lr)));
            if let Some(failed) = rows
                .iter()
                .flatten()
                .find(|r| mapping::command_status(&r.command_status) == Status::Failed)
            {
                let mut info = mapping::command_error(&failed.errors, action.error_h_result);
                if action_status == Status::TimedOut && info.code == ErrorCode::CommandFailed {
                    info.code = ErrorCode::Timeout;
                }
                let update = CommandUpdate::failed(i, info)
                    .with_vendor(vendor_ref, Some(failed.command_status.clone()));
                saw_failure = true;
                self.command_done(ctx, cp, updates, update);
                continue;
            }
            if rows.iter().all(|r| {
                r.is_some_and(|r| mapping::command_status(&r.command_status) == Status::Succeeded)
            }) {
                let (main_lr, _) =
                    mine.iter().find(|(_, s)| s.role == Role::Main).copied().unwrap_or(mine[0]);
                let update = match self.result_of(ctx, &action.id, main_lr, i).await? {
                    Ok(result) => CommandUpdate::succeeded(i, result),
                    Err(info) => CommandUpdate::failed(i, info),
                }
                .with_vendor(vendor_ref, Some("Completed".to_owned()));
                self.command_done(ctx, cp, updates, update);
                continue;
            }
            // Not (fully) executed.
            let last_word = rows.last().map(word).unwrap_or_default();
            match action_status {
                Status::Cancelled => {
                    let update = CommandUpdate::status(i, Status::Cancelled)
                        .with_error(ErrorInfo::new(
                            ErrorCode::Cancelled,
                            "the machine action was cancelled",
                        ))
                        .with_vendor(vendor_ref, Some(action.status.clone()));
                    self.command_done(ctx, cp, updates, update);
                }
                Status::TimedOut => {
                    let update = CommandUpdate::status(i, Status::TimedOut)
                        .with_error(
                            ErrorInfo::new(
                                ErrorCode::Timeout,
                                "Defender timed the machine action out",
                            )
                            .with_vendor("TimeOut", last_word),
                        )
                        .with_vendor(vendor_ref, Some(action.status.clone()));
                    self.command_done(ctx, cp, updates, update);
                }
                _ if !saw_failure => {
                    // Failed without a failed command (e.g. the device could not run it).
                    let update = CommandUpdate::failed(
                        i,
                        mapping::command_error(&[], action.error_h_result),
                    )
                    .with_vendor(vendor_ref, Some(action.status.clone()));
                    saw_failure = true;
                    self.command_done(ctx, cp, updates, update);
                }
                _ => {
                    // Defender stopped the batch at an earlier failure (§3.1). With
                    // `on_error: continue` the rest goes into a new batch; with `stop` the
                    // earlier failure already skipped it.
                    cp.phase = Phase::Ready;
                    return Ok(Drive::Continue);
                }
            }
        }
        cp.phase = Phase::Ready;
        Ok(Drive::Continue)
    }

    /// The result of a completed command whose main live-response command is `lr`.
    async fn result_of(
        &self,
        ctx: &RunContext<'_>,
        action_id: &str,
        lr: usize,
        index: usize,
    ) -> Result<Result<CommandResult, ErrorInfo>, AdapterError> {
        let command = &ctx.commands[index];
        match command {
            Command::GetFile { path, offset, length } => {
                let name = file_name(path);
                let mut writer = ctx.files.create(index, &name).await?;
                let start = offset.unwrap_or(0);
                let stop = length.map(|l| start + l);
                self.fetch(
                    action_id,
                    lr,
                    |chunk, pos| {
                        // `pos` is the offset of `chunk` in the un-gzipped file.
                        let from = start.saturating_sub(pos).min(chunk.len() as u64) as usize;
                        let to = stop.map_or(chunk.len(), |s| {
                            s.saturating_sub(pos).min(chunk.len() as u64) as usize
                        });
                        chunk.get(from..to.max(from)).map(<[u8]>::to_vec).unwrap_or_default()
                    },
                    &mut FileSink(&mut *writer),
                    true,
                )
                .await?;
                let file = writer.commit().await?;
                Ok(Ok(CommandResult::File { file }))
            }
            _ => {
                let blob = self.script_blob(action_id, lr).await?;
                let script = match serde_json::from_slice::<wire::ScriptResult>(&blob) {
                    Ok(s) => s,
                    Err(e) => {
                        return Ok(Err(ErrorInfo::new(
                            ErrorCode::VendorUnavailable,
                            format!("unreadable RunScript result: {e}"),
                        )));
                    }
                };
                if let Command::RunScript { script: name, .. } = command {
                    let output = mapping::clean_output(&script.script_output);
                    let mut text = output.clone();
                    if !script.script_errors.is_empty() {
                        text.push_str(&script.script_errors);
                    }
                    let file = self
                        .store_text(ctx, index, &format!("{}-output.txt", file_name(name)), &text)
                        .await?;
                    return Ok(Ok(CommandResult::Execution {
                        pid: None,
                        exit_code: Some(script.exit_code),
                        output: Some(inline(&text)),
                        output_file: Some(file),
                    }));
                }
                let out = match mapping::helper_output(&script) {
                    Ok(out) => out,
                    Err(info) => return Ok(Err(info)),
                };
                let result = match mapping::helper_result(command, out) {
                    Ok(r) => r,
                    Err(info) => return Ok(Err(info)),
                };
                Ok(Ok(match result {
                    CommandResult::Execution { pid, exit_code, output, .. } => {
                        let text = output.unwrap_or_default();
                        let file = self.store_text(ctx, index, "execute-output.txt", &text).await?;
                        CommandResult::Execution {
                            pid,
                            exit_code,
                            output: Some(inline(&text)),
                            output_file: Some(file),
                        }
                    }
                    other => other,
                }))
            }
        }
    }

    async fn store_text(
        &self,
        ctx: &RunContext<'_>,
        index: usize,
        name: &str,
        text: &str,
    ) -> Result<edrgate_adapter::FileRef, AdapterError> {
        let mut w = ctx.files.create(index, name).await?;
        w.write(text.as_bytes()).await?;
        w.commit().await
    }

    /// A RunScript result blob, read whole (bounded): it is a small JSON document.
    async fn script_blob(&self, action_id: &str, lr: usize) -> Result<Vec<u8>, AdapterError> {
        let mut sink = VecWriter(Vec::new());
        self.fetch(action_id, lr, |chunk, _| chunk.to_vec(), &mut sink, false).await?;
        Ok(sink.0)
    }

    /// Requests a link and streams its blob through `keep` into `out`, gunzipping when `gzip`.
    /// A refused download (an expired link answers 403) gets a fresh link, up to
    /// `download_link_retries` times (§5); a partial write is started over.
    async fn fetch(
        &self,
        action_id: &str,
        lr: usize,
        keep: impl Fn(&[u8], u64) -> Vec<u8>,
        out: &mut dyn Sink,
        gzip: bool,
    ) -> Result<(), AdapterError> {
        let mut attempt = 0;
        loop {
            let link = self.client.download_link(action_id, lr).await?;
            match self.download_once(&link, &keep, out, gzip).await {
                Ok(()) => return Ok(()),
                Err(e) if attempt < self.cfg.download_link_retries && out.written() == 0 => {
                    attempt += 1;
                    tracing::debug!(action = action_id, index = lr, error = %e, "result download failed; requesting a new link");
                }
                Err(e) => return Err(e),
            }
        }
    }

    async fn download_once(
        &self,
        link: &str,
        keep: &impl Fn(&[u8], u64) -> Vec<u8>,
        out: &mut dyn Sink,
        gzip: bool,
    ) -> Result<(), AdapterError> {
        let stream = self.client.download(link).await?;
        futures::pin_mut!(stream);
        let mut decoder = gzip.then(|| flate2::write::GzDecoder::new(Vec::new()));
        let mut pos = 0u64;
        let mut raw = 0usize;
        while let Some(chunk) = stream.next().await {
            let chunk = chunk?;
            raw += chunk.len();
            let plain = match &mut decoder {
                Some(d) => {
                    d.write_all(&chunk).map_err(gunzip_error)?;
                    std::mem::take(d.get_mut())
                }
                None => {
                    if raw > SCRIPT_BLOB_LIMIT {
                        return Err(AdapterError::new(
                            ErrorCode::VendorRejected,
                            "RunScript result too large",
                        ));
                    }
                    chunk.to_vec()
                }
            };
            let kept = keep(&plain, pos);
            pos += plain.len() as u64;
            if !kept.is_empty() {
                out.put(&kept).await?;
            }
        }
        if let Some(mut d) = decoder {
            d.try_finish().map_err(gunzip_error)?;
            let rest = std::mem::take(d.get_mut());
            let kept = keep(&rest, pos);
            if !kept.is_empty() {
                out.put(&kept).await?;
            }
        }
        Ok(())
    }

    /// The batch `[start, end)` as submitted (rebuilt from the commands: deterministic).
    async fn slots_of(
        &self,
        ctx: &RunContext<'_>,
        start: usize,
        end: usize,
    ) -> Result<Vec<Slot>, AdapterError> {
        let mut payloads = HashMap::new();
        for i in start..end {
            if let Some(file_id) = ctx.commands[i].file_id() {
                let (file, _) = ctx.files.open(file_id).await?;
                payloads.insert(
                    i,
                    (file.file_id.clone(), file.size, staged_name(&ctx.commands[i], &file.sha256)),
                );
            }
        }
        Ok(build_batch(ctx.commands, start, end, &payloads))
    }

    async fn ensure_library<F, Fut>(
        &self,
        name: &str,
        open: F,
        description: &str,
    ) -> Result<(), AdapterError>
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<
                Output = Result<(edrgate_adapter::adapter::FileReader, u64), AdapterError>,
            >,
    {
        if self.known().contains(name) {
            return Ok(());
        }
        let listed: HashSet<String> =
            self.client.library().await?.into_iter().map(|f| f.file_name).collect();
        let present = listed.contains(name);
        self.known().extend(listed);
        if present {
            return Ok(());
        }
        let (reader, size) = open().await?;
        let uploaded = self.client.upload(name, reader, size, description).await?;
        self.known().insert(uploaded.file_name);
        Ok(())
    }

    fn known(&self) -> MutexGuard<'_, HashSet<String>> {
        self.library.lock().unwrap_or_else(|p| p.into_inner())
    }

    // ---- containment ----

    async fn start_contain(
        &self,
        ctx: &RunContext<'_>,
        cp: &mut Checkpoint,
        updates: &mut Vec<CommandUpdate>,
        isolate: bool,
    ) -> Result<Drive, AdapterError> {
        let tag = format!("{TAG_PREFIX}{}:{}", ctx.run_id, cp.index);
        cp.phase = Phase::ContainIntent { tag: tag.clone(), at: now() };
        self.record(ctx, cp, updates).await?;
        match self.client.contain(&cp.machine_id, isolate, &comment(&tag, ctx.comment)).await {
            Ok(action) => {
                updates.push(
                    CommandUpdate::status(cp.index, Status::Dispatched)
                        .with_vendor(Some(action.id.clone()), Some(action.status.clone())),
                );
                cp.phase = Phase::Contain { id: action.id, at: now(), seen: false };
                Ok(Drive::Wait(self.cfg.poll_min()))
            }
            Err(e) if refused(&e) => {
                cp.phase = Phase::Ready;
                Ok(Drive::Wait(e.retry_after.unwrap_or(self.cfg.poll_max())))
            }
            Err(e) if !e.is_retryable() => {
                cp.phase = Phase::Ready;
                let info = if e.code() == ErrorCode::NotFound {
                    ErrorInfo { code: ErrorCode::DeviceNotFound, ..e.info }
                } else {
                    e.info
                };
                self.command_done(ctx, cp, updates, CommandUpdate::failed(cp.index, info));
                Ok(Drive::Continue)
            }
            Err(e) => Err(e),
        }
    }

    async fn reconcile_contain(
        &self,
        ctx: &RunContext<'_>,
        cp: &mut Checkpoint,
        tag: &str,
        at: f64,
    ) -> Result<Drive, AdapterError> {
        let kind = if matches!(ctx.commands[cp.index], Command::Isolate) {
            "Isolate"
        } else {
            "Unisolate"
        };
        let actions = self.client.actions_of_machine(&cp.machine_id, kind).await?;
        if let Some(a) =
            actions.iter().find(|a| a.requestor_comment.as_deref().is_some_and(|c| has_tag(c, tag)))
        {
            cp.phase = Phase::Contain { id: a.id.clone(), at, seen: true };
            return Ok(Drive::Continue);
        }
        if now() - at < self.cfg.visibility_grace_secs as f64 {
            return Ok(Drive::Wait(self.cfg.poll_min()));
        }
        cp.phase = Phase::Ready;
        Ok(Drive::Continue)
    }

    async fn poll_contain(
        &self,
        ctx: &RunContext<'_>,
        cp: &mut Checkpoint,
        updates: &mut Vec<CommandUpdate>,
        id: &str,
        at: f64,
        seen: bool,
    ) -> Result<Drive, AdapterError> {
        let poll = tokio::select! {
            got = self.poller.get(id) => got?,
            _ = ctx.stop.stopped() => return Ok(Drive::Continue),
        };
        let Some(action) = poll else {
            if !seen && now() - at < self.cfg.visibility_grace_secs as f64 {
                return Ok(Drive::Wait(self.cfg.poll_min()));
            }
            return Err(AdapterError::new(
                ErrorCode::VendorUnavailable,
                format!("Defender no longer shows machine action {id}"),
            ));
        };
        let status = mapping::action_status(&action.status);
        let vendor = (Some(action.id.clone()), Some(action.status.clone()));
        let update = match status {
            Status::Succeeded => CommandUpdate::succeeded(
                cp.index,
                CommandResult::Containment {
                    isolated: matches!(ctx.commands[cp.index], Command::Isolate),
                },
            ),
            s if !s.is_terminal() => {
                updates.push(CommandUpdate::status(cp.index, s).with_vendor(vendor.0, vendor.1));
                cp.phase = Phase::Contain { id: id.to_owned(), at, seen: true };
                return Ok(Drive::Wait(self.poll_delay(at)));
            }
            Status::TimedOut => CommandUpdate::status(cp.index, Status::TimedOut).with_error(
                ErrorInfo::new(ErrorCode::Timeout, "Defender timed the machine action out")
                    .with_vendor("TimeOut", ""),
            ),
            Status::Cancelled => CommandUpdate::status(cp.index, Status::Cancelled).with_error(
                ErrorInfo::new(ErrorCode::Cancelled, "the machine action was cancelled"),
            ),
            _ => {
                CommandUpdate::failed(cp.index, mapping::command_error(&[], action.error_h_result))
            }
        };
        self.command_done(ctx, cp, updates, update.with_vendor(vendor.0, vendor.1));
        Ok(Drive::Continue)
    }

    // ---- stop, bookkeeping ----

    /// Cancels vendor work in flight (racing its completion: an action that finished first
    /// keeps its real results) and closes the rest with the stop's status.
    async fn stop(
        &self,
        ctx: &RunContext<'_>,
        cp: &mut Checkpoint,
        updates: &mut Vec<CommandUpdate>,
        reason: StopReason,
    ) {
        let live = match &cp.phase {
            Phase::Running { id, end, .. } => Some((id.clone(), *end)),
            Phase::Contain { id, .. } => Some((id.clone(), cp.index + 1)),
            Phase::Intent { tag, end, .. } => self
                .client
                .actions_of_machine(&cp.machine_id, "LiveResponse")
                .await
                .ok()
                .and_then(|list| {
                    list.into_iter()
                        .find(|a| a.requestor_comment.as_deref().is_some_and(|c| has_tag(c, tag)))
                })
                .map(|a| (a.id, *end)),
            _ => None,
        };
        if let Some((id, end)) = live {
            let note = match reason {
                StopReason::Cancelled => "cancelled by the edrgate caller",
                StopReason::DeadlineExceeded => "edrgate action deadline passed",
            };
            match self.client.cancel(&id, note).await {
                Ok(action)
                    if matches!(
                        mapping::action_status(&action.status),
                        Status::Succeeded | Status::Failed
                    ) =>
                {
                    // Completion won the race: report what really happened.
                    if matches!(cp.phase, Phase::Running { .. } | Phase::Intent { .. })
                        && let Err(e) = self.collect(ctx, cp, updates, &action, end).await
                    {
                        tracing::debug!(run = %ctx.run_id, error = %e, "collecting a finished action after a stop failed");
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::debug!(run = %ctx.run_id, error = %e, "cancelling the machine action failed")
                }
            }
        }
        cp.index = ctx.close_rest(cp.index, Some(reason), updates);
        cp.phase = Phase::Ready;
        self.release_slot(ctx.run_id);
    }

    fn command_done(
        &self,
        ctx: &RunContext<'_>,
        cp: &mut Checkpoint,
        updates: &mut Vec<CommandUpdate>,
        update: CommandUpdate,
    ) {
        let failed = update.status != Status::Succeeded;
        updates.push(update);
        cp.index += 1;
        if failed && ctx.on_error == OnError::Stop {
            cp.index = ctx.close_rest(cp.index, None, updates);
            cp.phase = Phase::Ready;
        }
    }

    /// Persists the intent now, with the step's earlier updates (drained once stored).
    async fn record(
        &self,
        ctx: &RunContext<'_>,
        cp: &Checkpoint,
        updates: &mut Vec<CommandUpdate>,
    ) -> Result<(), AdapterError> {
        ctx.journal.record(&encode_checkpoint(cp)?, updates).await?;
        updates.clear();
        Ok(())
    }

    fn poll_delay(&self, since: f64) -> Duration {
        let waited = Duration::from_secs_f64((now() - since).max(0.0));
        (waited / 4).clamp(self.cfg.poll_min(), self.cfg.poll_max())
    }

    /// Takes the machine's session slot unless the run holds it: this process's fair share
    /// (FairSlots), then, with other gateway replicas, the credential's slot among them all.
    /// `Some` when the run must wait or was stopped first.
    async fn ensure_slot(
        &self,
        ctx: &RunContext<'_>,
        machine: &str,
    ) -> Result<Option<Drive>, AdapterError> {
        if self.memory().contains_key(&ctx.run_id) {
            return Ok(None);
        }
        let tenant = ctx.tenant.to_owned();
        let action = ctx.action_id.to_string();
        let guard = tokio::select! {
            g = self.client.budget.sessions.acquire(machine, &tenant, &action) => g,
            _ = ctx.stop.stopped() => {
                return Ok(Some(Drive::Stopped(ctx.stop.reason().unwrap_or(StopReason::Cancelled))));
            }
        };
        let shared = match self.shared.get().filter(|b| b.is_shared()) {
            None => None,
            Some(budget) => {
                let holder = ctx.run_id.to_string();
                let scope = format!("{}:sessions", self.scope);
                let capacity = self.client.budget.sessions.capacity();
                match edrgate_adapter::shared::acquire_slot(
                    budget, &scope, capacity, machine, &holder,
                )
                .await?
                {
                    Some(slot) => Some(slot),
                    // Other replicas hold every slot (or this machine's): let local waiters
                    // have this one and ask again shortly.
                    None => {
                        drop(guard);
                        return Ok(Some(Drive::Wait(self.cfg.poll_max())));
                    }
                }
            }
        };
        self.memory()
            .insert(ctx.run_id, Held { _guard: guard, _shared: shared, touched: Instant::now() });
        Ok(None)
    }

    fn memory(&self) -> MutexGuard<'_, HashMap<Uuid, Held>> {
        self.runs.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn touch(&self, run: Uuid) {
        let mut runs = self.memory();
        let stale: Vec<Uuid> = runs
            .iter()
            .filter(|(id, held)| **id != run && held.touched.elapsed() > STALE_RUN)
            .map(|(id, _)| *id)
            .collect();
        let dropped: Vec<_> = stale.iter().filter_map(|id| runs.remove(id)).collect();
        if let Some(held) = runs.get_mut(&run) {
            held.touched = Instant::now();
        }
        drop(runs);
        drop(dropped);
    }

    fn release_slot(&self, run: Uuid) {
        let slot = self.memory().remove(&run);
        drop(slot);
    }
}

/// Shared poller of one backend: requests arriving close together become one
/// `$filter=id in (…)` call (§4.4), so many pending actions cost one call of the 100/min budget.
struct Poller {
    client: Arc<DfClient>,
    pending: Mutex<Option<HashMap<String, Vec<oneshot::Sender<PollResult>>>>>,
    /// One flush at a time: while a call waits for the endpoint's budget, new requests gather
    /// into the next batch instead of queueing calls of their own.
    flushing: tokio::sync::Mutex<()>,
}

type PollResult = Result<Option<MachineAction>, AdapterError>;

impl Poller {
    async fn get(self: &Arc<Self>, id: &str) -> PollResult {
        let (tx, rx) = oneshot::channel();
        let start_flush = {
            let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
            let fresh = pending.is_none();
            pending.get_or_insert_with(HashMap::new).entry(id.to_owned()).or_default().push(tx);
            fresh
        };
        if start_flush {
            let this = Arc::clone(self);
            tokio::spawn(async move { this.flush().await });
        }
        rx.await
            .unwrap_or_else(|_| Err(AdapterError::transient(ErrorCode::Internal, "poller stopped")))
    }

    async fn flush(&self) {
        let _one = self.flushing.lock().await;
        tokio::time::sleep(POLL_GATHER).await;
        let batch =
            self.pending.lock().unwrap_or_else(|p| p.into_inner()).take().unwrap_or_default();
        if batch.is_empty() {
            return;
        }
        let ids: Vec<String> = batch.keys().cloned().collect();
        match self.client.actions_by_id(&ids).await {
            Ok(actions) => {
                let mut by_id: HashMap<String, MachineAction> =
                    actions.into_iter().map(|a| (a.id.to_ascii_lowercase(), a)).collect();
                for (id, waiters) in batch {
                    let found = by_id.remove(&id.to_ascii_lowercase());
                    for w in waiters {
                        let _ = w.send(Ok(found.clone()));
                    }
                }
            }
            Err(e) => {
                for w in batch.into_values().flatten() {
                    let _ = w.send(Err(e.clone()));
                }
            }
        }
    }
}

/// Where a download goes: a file being written, or memory for a small script blob.
#[async_trait]
trait Sink: Send {
    async fn put(&mut self, bytes: &[u8]) -> Result<(), AdapterError>;
    fn written(&self) -> u64;
}

struct FileSink<'a>(&'a mut dyn FileWriter);

#[async_trait]
impl Sink for FileSink<'_> {
    async fn put(&mut self, bytes: &[u8]) -> Result<(), AdapterError> {
        self.0.write(bytes).await
    }
    fn written(&self) -> u64 {
        self.0.written()
    }
}

struct VecWriter(Vec<u8>);

#[async_trait]
impl Sink for VecWriter {
    async fn put(&mut self, bytes: &[u8]) -> Result<(), AdapterError> {
        self.0.extend_from_slice(bytes);
        Ok(())
    }
    fn written(&self) -> u64 {
        self.0.len() as u64
    }
}

/// Where the batch starting at `start` ends: consecutive live-response commands while the
/// PutFile → RunScript → GetFile order holds. With `on_error: stop`, a command whose failure
/// only shows in its script output ends the batch before the next command that changes the
/// endpoint, since Defender would run it anyway.
fn plan_end(commands: &[Command], start: usize, on_error: OnError) -> usize {
    let mut end = start;
    let mut rank = 0u8;
    let mut silent = false;
    for (i, command) in commands.iter().enumerate().skip(start) {
        let Some(lrs) = mapping::lr_commands(command) else { break };
        let first = mapping::rank(&lrs[0].0.kind);
        if i > start
            && (first < rank
                || (silent && on_error == OnError::Stop && command.kind().has_side_effect()))
        {
            break;
        }
        rank = lrs.iter().map(|(c, _)| mapping::rank(&c.kind)).max().unwrap_or(rank);
        silent |= mapping::fails_silently(command);
        end = i + 1;
    }
    end.max(start + 1)
}

/// The live-response commands of `[start, end)`, in order.
fn build_batch(
    commands: &[Command],
    start: usize,
    end: usize,
    payloads: &HashMap<usize, (String, u64, String)>,
) -> Vec<Slot> {
    let mut slots = Vec::new();
    for (i, command) in commands.iter().enumerate().take(end).skip(start) {
        if let Command::PutFile { path, .. } = command {
            let name = payloads.get(&i).map(|p| p.2.clone()).unwrap_or_default();
            slots.push(Slot {
                command: i,
                lr: LrCommand::new(kinds::PUT_FILE, &[(keys::FILE_NAME, &name)]),
                role: Role::Upload,
            });
            slots.push(Slot {
                command: i,
                lr: mapping::place_command(&name, path),
                role: Role::Main,
            });
            continue;
        }
        for (mut lr, _) in mapping::lr_commands(command).unwrap_or_default() {
            // A run_script whose content edrgate staged runs under the staged name.
            if let (Some(p), Some(name)) =
                (payloads.get(&i), lr.params.iter_mut().find(|p| p.key == keys::SCRIPT_NAME))
            {
                name.value = p.2.clone();
            }
            slots.push(Slot { command: i, lr, role: Role::Main });
        }
    }
    slots
}

/// The library name a command's stored file is staged under: content-addressed, so the same
/// content is uploaded once and nothing of the same name in the library is overwritten.
fn staged_name(command: &Command, sha256: &str) -> String {
    match command {
        Command::RunScript { script, .. } => mapping::script_name(script, sha256),
        _ => mapping::payload_name(sha256),
    }
}

/// The status word of command `i`'s main live-response command.
fn main_status(slots: &[Slot], results: &[wire::CommandResult], i: usize) -> Option<String> {
    let lr = slots.iter().position(|s| s.command == i && s.role == Role::Main)?;
    results.iter().find(|r| r.index == lr).map(|r| r.command_status.clone())
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

fn gunzip_error(e: std::io::Error) -> AdapterError {
    AdapterError::new(
        ErrorCode::VendorRejected,
        format!("the GetFile result is not valid gzip: {e}"),
    )
}

fn file_name(path: &str) -> String {
    let name = path.rsplit(['\\', '/']).next().unwrap_or(path);
    if name.is_empty() { "file".to_owned() } else { name.to_owned() }
}

fn inline(text: &str) -> String {
    if text.len() <= OUTPUT_INLINE_LIMIT {
        return text.to_owned();
    }
    let mut cut = OUTPUT_INLINE_LIMIT;
    while !text.is_char_boundary(cut) {
        cut -= 1;
    }
    text[..cut].to_owned()
}

/// Native: get_file, put_file (library + PutFile), run_script, isolate, release. Script-backed
/// (edrgate's helper scripts through RunScript): the rest but memory_dump.
fn capabilities(backend: &str, sessions: u32, cfg: &DefenderConfig) -> Capabilities {
    let commands = CommandKind::ALL
        .into_iter()
        .filter(|k| *k != CommandKind::MemoryDump)
        .map(|command| {
            let (via, note) = match command {
                CommandKind::GetFile => (Via::Native, "GetFile; the result is downloaded and un-gzipped"),
                CommandKind::PutFile => (Via::Native, "library upload (content-addressed), PutFile, then a helper script moves it to path"),
                CommandKind::RunScript => (Via::Native, "RunScript of a live-response library script; args joined by spaces"),
                CommandKind::Isolate => (Via::Native, "isolate machine action (Full)"),
                CommandKind::Release => (Via::Native, "unisolate machine action"),
                _ => (Via::Script, "edrgate helper PowerShell script run with RunScript"),
            };
            CommandSupport { command, via, notes: Some(note.to_owned()) }
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
    use edrgate_adapter::RegistryValueType;

    #[test]
    fn batches_keep_vendor_order_and_on_error() {
        let get = || Command::GetFile { path: "C:\\a".into(), offset: None, length: None };
        let script = || Command::RunScript { script: "s.ps1".into(), args: vec![], file_id: None };
        let kill = Command::KillProcess { pid: 4, vendor_id: None };
        let set = Command::RegistrySet {
            key: "HKLM\\x".into(),
            value: "v".into(),
            value_type: RegistryValueType::Sz,
            data: serde_json::json!("d"),
            overwrite: true,
        };
        let table: Vec<(Vec<Command>, OnError, Vec<usize>)> = vec![
            (vec![script(), Command::ProcessList, get(), get()], OnError::Stop, vec![4]),
            (vec![get(), script()], OnError::Stop, vec![1, 2]),
            (vec![Command::ProcessList, kill.clone()], OnError::Stop, vec![1, 2]),
            (vec![Command::ProcessList, kill.clone()], OnError::Continue, vec![2]),
            (vec![kill, get(), set], OnError::Stop, vec![2, 3]),
            (vec![Command::Isolate, get()], OnError::Stop, vec![1, 2]),
        ];
        for (commands, on_error, ends) in table {
            let mut got = Vec::new();
            let mut start = 0;
            while start < commands.len() {
                let end = plan_end(&commands, start, on_error);
                got.push(end);
                start = end;
            }
            assert_eq!(got, ends, "{commands:?} {on_error:?}");
        }
    }

    #[test]
    fn tags_identify_runs() {
        let tag = "edrgate:0190:2";
        assert!(has_tag(&comment(tag, Some("playbook 7")), tag));
        assert!(!has_tag("edrgate:0190:21 x", tag));
        assert!(machine_id("1e5bc9d7e413ddd7902c2932e418702b84d0cc07").is_ok());
        assert!(machine_id("../x").is_err());
    }
}
