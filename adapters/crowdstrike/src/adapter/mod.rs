//! The run state machine: one RTR session per run (single-host, or this host's part of a
//! batch session shared with the action's other runs), every command translated into RTR
//! command lines ([`plan`]) that are sent, polled to completion and read back in turn, intents
//! journaled before every line that changes the endpoint, reconciled against the session's
//! `logs[]` after a lost answer or a restart.
//!
//! The step loop itself (stop checks, back-off, `on_error`, journaling) is the shared
//! [`driver`]; this module is the vendor's [`VendorRun::advance`], split along its seams:
//! `plan` (command → RTR lines, per platform and tier), `session` (open, refresh, send, poll),
//! `batch` (the coalescer that turns an action's runs into one batch session and one batch
//! command per line), `fetch` (file retrieval and the put-files library), `reconcile`
//! (intents after a lost answer) and `contain` (isolate/release through the Hosts API).

mod batch;
mod contain;
mod fetch;
mod plan;
mod reconcile;
mod session;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use edrgate_adapter::adapter::StopReason;
use edrgate_adapter::driver::{self, Cursor, Drive, RunCheckpoint, RunOps as _, VendorRun};
use edrgate_adapter::{
    Adapter, AdapterError, Capabilities, Command, CommandKind, CommandSupport, CommandUpdate,
    Device, DeviceSupport, ErrorCode, ErrorInfo, FileRef, Limits, RunContext, SharedBudget, Status,
    Step, Via,
};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::client::{CsClient, Tier};
use crate::config::{CrowdStrikeConfig, PermissionLevel};
use crate::mapping::{self, Platform};

use self::batch::Coalescer;
pub use self::fetch::ARCHIVE_PASSWORD;
pub(crate) use self::plan::Rtr;

/// A CrowdStrike Falcon backend: one API client of one CID.
pub struct CrowdStrikeAdapter {
    cfg: CrowdStrikeConfig,
    client: CsClient,
    capabilities: Capabilities,
    /// Platforms of devices seen by `find_devices`/`device` (a cache: a run looks its device
    /// up itself when it is missing).
    platforms: Mutex<HashMap<String, Platform>>,
    /// Runs of one action opening their sessions together (one batch init).
    opens: Coalescer<Result<SessionRef, AdapterError>>,
    /// Runs of one action sending the same line on the same batch (one batch command).
    commands: Coalescer<batch::HostOutcome>,
    /// Runs of one action isolating (or releasing) their hosts (one containment request).
    contains: Coalescer<Result<(), AdapterError>>,
}

/// Devices whose platform is cached (a fleet's worth; beyond, the cache starts over).
const MAX_PLATFORMS: usize = 100_000;

/// The run's state between steps, stored as JSON by the engine. (`pub` only because it is
/// [`VendorRun::Checkpoint`]; this module is private.)
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Checkpoint {
    /// The device id (aid).
    device: String,
    #[serde(flatten)]
    cursor: Cursor,
    #[serde(default)]
    platform: Option<Platform>,
    /// The run's RTR session, once open.
    #[serde(default)]
    session: Option<SessionRef>,
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

/// An open RTR session (§5.3, §7.2).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub(crate) struct SessionRef {
    id: String,
    /// The batch it belongs to (opened by a batch init with the action's other runs).
    #[serde(default)]
    batch: Option<String>,
    /// Runs that opened the batch together: a line's group is complete with that many.
    #[serde(default = "unknown_peers")]
    peers: usize,
    /// The host was offline and the session is in the offline queue (§6.7).
    #[serde(default)]
    queued: bool,
    /// Our clock, ms: last call on the session (refreshed when idle, §5.4).
    used_ms: i64,
    /// The working directory after our last `cd` (a new session starts at the root).
    #[serde(default)]
    cwd: Option<String>,
}

/// The current command's progress.
// One per run, serialized into the checkpoint at every step: boxing would gain nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(tag = "phase", rename_all = "snake_case")]
enum Phase {
    #[default]
    Ready,
    /// `put_file`: the content staged in the put-files library as `name` (§8.3); `intent`
    /// once the upload was journaled.
    Stage { name: String, intent: bool },
    /// The command's RTR lines, `sub` the current one.
    Rtr {
        plan: Vec<Rtr>,
        sub: usize,
        state: LineState,
        /// Output of the line whose output is the command's result.
        #[serde(default)]
        output: Option<String>,
        /// Output cut at `max_output_bytes`.
        #[serde(default)]
        cut: bool,
        /// A file retrieved by a `get` line.
        #[serde(default)]
        file: Option<FileRef>,
    },
    /// Isolate/release (§4.3); `sent` once the request was journaled.
    Contain { isolate: bool, sent: bool, since_ms: i64 },
}

impl Phase {
    /// The start of a command's RTR lines.
    fn rtr(plan: Vec<Rtr>) -> Phase {
        Phase::Rtr { plan, sub: 0, state: LineState::Ready, output: None, cut: false, file: None }
    }
}

/// Where one RTR line is.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
enum LineState {
    #[default]
    Ready,
    /// Intent journaled for a side-effecting line on `session`, whose `logs[]` held `known`
    /// (cloud request ids of the same line) just before: a new one is ours.
    Intent { session: String, known: Vec<String> },
    /// Accepted as `cloud` (a batch's per-host `task_id` is the same id, §7.3); polled from
    /// chunk `next_seq` (§6.5).
    Sent {
        session: String,
        cloud: String,
        #[serde(default)]
        next_seq: u64,
        #[serde(default)]
        stdout: String,
        #[serde(default)]
        stderr: String,
        since_ms: i64,
        #[serde(default)]
        queued: bool,
    },
    /// A `get` completed on the host; its upload to the cloud is awaited in `file/v2` (§8.1).
    Fetch { session: String, cloud: String, since_ms: i64 },
}

impl CrowdStrikeAdapter {
    /// Builds the adapter for backend `backend_name`. No network call is made.
    pub fn new(backend_name: &str, cfg: CrowdStrikeConfig) -> Result<Self, AdapterError> {
        cfg.validate().map_err(|errors| {
            AdapterError::new(
                ErrorCode::InvalidRequest,
                format!(
                    "invalid crowdstrike config for backend {backend_name}: {}",
                    errors.join("; ")
                ),
            )
        })?;
        if cfg.base_url.starts_with("http://") {
            tracing::warn!(
                backend = backend_name,
                "crowdstrike base_url uses plain http: the client secret and tokens travel unencrypted"
            );
        }
        Ok(CrowdStrikeAdapter {
            capabilities: capabilities(backend_name, cfg.permission_level, cfg.requests_per_minute),
            client: CsClient::new(&cfg)?,
            platforms: Mutex::new(HashMap::new()),
            opens: Coalescer::default(),
            commands: Coalescer::default(),
            contains: Coalescer::default(),
            cfg,
        })
    }

    /// Caches the platforms of listed devices (at most `MAX_PLATFORMS`: a full cache starts
    /// over; a miss costs one lookup).
    fn remember(&self, entities: &[crate::wire::DeviceEntity]) {
        let mut platforms = self.platforms.lock().unwrap_or_else(|p| p.into_inner());
        for d in entities {
            if let Some(p) = Platform::parse(&d.platform_name) {
                let aid = d.device_id.to_ascii_lowercase();
                if platforms.len() >= MAX_PLATFORMS && !platforms.contains_key(&aid) {
                    platforms.clear();
                }
                platforms.insert(aid, p);
            }
        }
    }

    /// Device entities as [`Device`]s, with their online state (one call per 100).
    async fn to_devices(
        &self,
        entities: Vec<crate::wire::DeviceEntity>,
    ) -> Result<Vec<Device>, AdapterError> {
        self.remember(&entities);
        let ids: Vec<String> = entities.iter().map(|d| d.device_id.clone()).collect();
        let online = self.client.online(&ids).await?;
        Ok(entities
            .into_iter()
            .map(|d| {
                let up = online.iter().any(|o| o.eq_ignore_ascii_case(&d.device_id));
                mapping::device(&self.capabilities.backend, d, up)
            })
            .collect())
    }

    /// The run's platform, looked up once (a cache hit costs nothing).
    async fn platform(&self, cp: &mut Checkpoint) -> Result<Platform, AdapterError> {
        if let Some(p) = cp.platform {
            return Ok(p);
        }
        let cached = self
            .platforms
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&cp.device.to_ascii_lowercase())
            .copied();
        let platform = match cached {
            Some(p) => p,
            None => match self.client.platform(&cp.device).await? {
                Some((p, entity)) => {
                    self.remember(std::slice::from_ref(&entity));
                    p
                }
                None => {
                    return Err(AdapterError::new(
                        ErrorCode::DeviceNotFound,
                        format!(
                            "CrowdStrike knows no device {:?} (or not its platform)",
                            cp.device
                        ),
                    ));
                }
            },
        };
        cp.platform = Some(platform);
        Ok(platform)
    }

    /// Delay before the next poll: a tenth of the time already waited, within the bounds.
    fn poll_delay(&self, since_ms: i64) -> Duration {
        let waited = Duration::from_millis(u64::try_from(now_ms() - since_ms).unwrap_or(0));
        (waited / 10).clamp(self.cfg.poll_min(), self.cfg.poll_max())
    }

    fn timed_out(&self, since_ms: i64) -> bool {
        now_ms() - since_ms
            > i64::try_from(self.cfg.command_timeout_secs * 1000).unwrap_or(i64::MAX)
    }
}

#[async_trait]
impl Adapter for CrowdStrikeAdapter {
    fn capabilities(&self) -> &Capabilities {
        &self.capabilities
    }

    /// Hosts whose hostname contains `hostname` (FQL `hostname:*'*X*'`, §4.1), re-filtered
    /// case-insensitively as XSOAR does.
    async fn find_devices(&self, hostname: Option<&str>) -> Result<Vec<Device>, AdapterError> {
        let filter = hostname.map(|h| format!("hostname:*'*{}*'", fql_escape(h)));
        let ids = self.client.device_ids(filter.as_deref()).await?;
        let entities = self.client.devices(&ids).await?;
        let devices = self.to_devices(entities).await?;
        Ok(devices
            .into_iter()
            .filter(|d| hostname.is_none_or(|h| edrgate_adapter::hostname_matches(&d.hostname, h)))
            .collect())
    }

    async fn device(&self, device_id: &str) -> Result<Option<Device>, AdapterError> {
        let entities = self.client.devices(&[device_id.trim().to_owned()]).await?;
        let found: Vec<_> = entities
            .into_iter()
            .filter(|d| d.device_id.eq_ignore_ascii_case(device_id.trim()))
            .collect();
        if found.is_empty() {
            return Err(AdapterError::new(
                ErrorCode::DeviceNotFound,
                format!("CrowdStrike knows no device {device_id:?}"),
            ));
        }
        Ok(self.to_devices(found).await?.into_iter().next())
    }

    /// The permission level's commands, minus the Windows-only ones (registry, memory dump,
    /// §12) on Linux and macOS.
    fn device_support(&self, device: &Device) -> DeviceSupport {
        let platform = device.os.as_deref().and_then(Platform::parse);
        self.capabilities.for_device(|kind| {
            let p = platform?;
            (p != Platform::Windows && plan::windows_only(kind))
                .then(|| plan::not_on_platform(kind, p).message)
        })
    }

    fn varies_by_device(&self, kind: CommandKind) -> bool {
        plan::windows_only(kind)
    }

    /// Signs in and reaches the Hosts API.
    async fn check(&self) -> Result<(), AdapterError> {
        self.client.sign_in().await?;
        self.find_devices(Some("edrgate-connectivity-check")).await.map(drop)
    }

    fn use_shared_budget(&self, budget: Arc<dyn SharedBudget>) {
        self.client.use_shared_budget(budget);
    }

    async fn step(
        &self,
        ctx: &RunContext<'_>,
        checkpoint: Option<Value>,
    ) -> Result<Step, AdapterError> {
        driver::drive(self, ctx, checkpoint).await
    }
}

#[async_trait]
impl VendorRun for CrowdStrikeAdapter {
    type Checkpoint = Checkpoint;
    const VENDOR: &'static str = "crowdstrike";

    fn begin(&self, ctx: &RunContext<'_>) -> Result<Checkpoint, AdapterError> {
        Ok(Checkpoint {
            device: ctx.device_id.trim().to_owned(),
            cursor: Cursor::default(),
            platform: None,
            session: None,
            phase: Phase::Ready,
        })
    }

    async fn advance(
        &self,
        ctx: &RunContext<'_>,
        cp: &mut Checkpoint,
        updates: &mut Vec<CommandUpdate>,
    ) -> Result<Drive, AdapterError> {
        let index = cp.cursor.index;
        match cp.phase.clone() {
            Phase::Ready => {}
            Phase::Stage { name, intent } => {
                return self.stage(ctx, cp, updates, name, intent).await;
            }
            Phase::Contain { isolate, sent, since_ms } => {
                return self.contain(ctx, cp, updates, isolate, sent, since_ms).await;
            }
            Phase::Rtr { .. } => return self.advance_rtr(ctx, cp, updates).await,
        }
        let command = &ctx.commands[index];
        if !self.capabilities.supports(command.kind()) {
            return Ok(Drive::Finished(CommandUpdate::failed(
                index,
                ErrorInfo::new(
                    ErrorCode::UnsupportedCommand,
                    format!(
                        "{} is not available to a {:?} CrowdStrike API client",
                        command.kind().as_str(),
                        self.cfg.permission_level
                    ),
                ),
            )));
        }
        match command {
            Command::Isolate => self.contain(ctx, cp, updates, true, false, now_ms()).await,
            Command::Release => self.contain(ctx, cp, updates, false, false, now_ms()).await,
            Command::PutFile { file_id, .. } => {
                let name = self.library_name(ctx, file_id).await?;
                cp.phase = Phase::Stage { name, intent: false };
                Ok(Drive::Continue)
            }
            command => {
                let platform = self.platform(cp).await?;
                match self.plan(ctx, command, platform).await? {
                    Ok(plan) => {
                        cp.phase = Phase::rtr(plan);
                        Ok(Drive::Continue)
                    }
                    Err(error) => Ok(Drive::Finished(CommandUpdate::failed(index, error))),
                }
            }
        }
    }

    fn command_ended(&self, _ctx: &RunContext<'_>, cp: &mut Checkpoint) {
        cp.phase = Phase::Ready;
    }

    /// A permanent failure after a side-effecting request went out (a status that cannot be
    /// read any more, say) is `outcome_unknown`: the vendor may have acted.
    fn failed(
        &self,
        ctx: &RunContext<'_>,
        cp: &mut Checkpoint,
        updates: &mut Vec<CommandUpdate>,
        error: AdapterError,
    ) {
        let index = cp.cursor.index;
        let mut info = error.info;
        if cp.cursor.sent && !matches!(info.code, ErrorCode::OutcomeUnknown) {
            info = ErrorInfo {
                code: ErrorCode::OutcomeUnknown,
                message: format!(
                    "the request was sent to CrowdStrike, then: {}; it may have taken effect",
                    info.message
                ),
                ..info
            };
        }
        self.command_done(ctx, cp, updates, CommandUpdate::failed(index, info));
    }

    /// A command parked in the offline queue is cancelled there (§6.7): the vendor accepts
    /// that only while it is still pending, so a success means it never ran. A command
    /// running on a host cannot be stopped (RTR has no abort); the driver reports it.
    async fn cancel(
        &self,
        ctx: &RunContext<'_>,
        cp: &mut Checkpoint,
        updates: &mut Vec<CommandUpdate>,
        reason: StopReason,
    ) {
        let Phase::Rtr { state: LineState::Sent { session, cloud, queued: true, .. }, .. } =
            cp.phase.clone()
        else {
            return;
        };
        match self.client.cancel_queued(&session, &cloud).await {
            Ok(()) => {
                let update = CommandUpdate::status(cp.cursor.index, reason.status())
                    .with_error(reason.error())
                    .with_vendor(Some(cloud), Some("cancelled_in_queue".into()));
                self.command_done(ctx, cp, updates, update);
            }
            Err(e) => {
                tracing::debug!(run = %ctx.run_id, error = %e, "the queued command could not be cancelled");
            }
        }
    }

    /// Closes the run's session (§5.4: `DELETE entities/sessions/v1`, best effort).
    async fn finish(&self, ctx: &RunContext<'_>, cp: &mut Checkpoint) {
        if let Some(session) = cp.session.take()
            && let Err(e) = self.client.delete_session(&session.id).await
        {
            tracing::debug!(run = %ctx.run_id, error = %e, "closing the RTR session failed; it expires by itself");
        }
    }
}

fn unknown_peers() -> usize {
    usize::MAX
}

/// An FQL string literal's content (§4.1): quotes and backslashes escaped.
fn fql_escape(s: &str) -> String {
    s.replace('\\', "\\\\").replace('\'', "\\'")
}

fn outcome_unknown(index: usize, what: &str) -> CommandUpdate {
    CommandUpdate::failed(
        index,
        ErrorInfo::new(
            ErrorCode::OutcomeUnknown,
            format!(
                "edrgate cannot tell whether CrowdStrike received {what} before an interruption; it was not sent again"
            ),
        ),
    )
}

fn timed_out(index: usize, what: &str, secs: u64, vref: Option<String>) -> CommandUpdate {
    CommandUpdate::status(index, Status::TimedOut)
        .with_vendor(vref, Some("timed_out".into()))
        .with_error(ErrorInfo::new(
            ErrorCode::Timeout,
            format!("CrowdStrike did not finish {what} within {secs} s"),
        ))
}

/// The lowest permission level that offers `kind` (§6.1 tiers, §12), and how it is done.
fn offer(kind: CommandKind) -> Option<(PermissionLevel, &'static str)> {
    use CommandKind::*;
    use PermissionLevel::*;
    Some(match kind {
        ProcessList => (ReadOnly, "RTR ps, parsed (raw text when the table does not parse)"),
        ListDirectory => (ReadOnly, "RTR ls, parsed (raw text when the table does not parse)"),
        RegistryList => (ReadOnly, "RTR reg query <key> (Windows only)"),
        RegistryGet => (ReadOnly, "RTR reg query <key> <value> (Windows only)"),
        KillProcess => (ActiveResponder, "RTR kill <pid>"),
        GetFile => (
            ActiveResponder,
            "RTR get, then file/v2 and extracted-file-contents (7z, password infected), stored with its SHA-256; offset/length applied by edrgate",
        ),
        DeleteFile => (ActiveResponder, "RTR rm"),
        CreateDirectory => (ActiveResponder, "RTR mkdir"),
        RegistrySet => (
            ActiveResponder,
            "RTR reg set <key> <value> -ValueType -Value (Windows only); overwrite=false checks with reg query first",
        ),
        RegistryCreateKey => (ActiveResponder, "RTR reg set <key> (Windows only)"),
        RegistryDeleteKey => (ActiveResponder, "RTR reg delete <key> (Windows only)"),
        RegistryDeleteValue => (ActiveResponder, "RTR reg delete <key> <value> (Windows only)"),
        MemoryDump => (
            ActiveResponder,
            "RTR xmemdump complete <path> (Windows only); with fetch, get then rm",
        ),
        RunScript => (
            ActiveResponder,
            "RTR runscript -CloudFile=<script> (scripts library; an active responder runs public scripts only); with file_id the stored script runs as runscript -Raw (admin)",
        ),
        Isolate => (ActiveResponder, "Hosts API devices-actions contain, polled until contained"),
        Release => {
            (ActiveResponder, "Hosts API devices-actions lift_containment, polled until normal")
        }
        PutFile => {
            (Admin, "put-files library (named edrgate-<sha256 prefix>), then RTR cd, put and mv")
        }
        Execute => (
            Admin,
            "RTR run <exe> -CommandLine (Windows); runscript -Raw on Linux/macOS and with output_file",
        ),
        QuarantineFile | UnquarantineFile => return None,
    })
}

/// What this backend supports at its permission level (see the crate doc).
fn capabilities(backend: &str, level: PermissionLevel, per_minute: u32) -> Capabilities {
    let commands = CommandKind::ALL
        .into_iter()
        .filter_map(|kind| {
            let (min, notes) = offer(kind)?;
            (level >= min).then(|| CommandSupport {
                command: kind,
                via: Via::Native,
                notes: Some(notes.to_owned()),
            })
        })
        .collect();
    Capabilities {
        backend: backend.to_owned(),
        kind: <crate::CrowdStrike as edrgate_adapter::factory::BackendFactory>::KIND.to_owned(),
        commands,
        limits: Limits {
            concurrent_sessions: None,
            max_upload_bytes: None,
            calls_per_minute: Some(per_minute),
        },
    }
}

/// The tier of a line sent by an API client of `level`: the line's own tier (never one the
/// client lacks; the capabilities keep such commands out).
pub(crate) fn tier_for(level: PermissionLevel, wanted: Tier) -> Tier {
    match level {
        PermissionLevel::Admin => wanted,
        PermissionLevel::ActiveResponder => wanted.min(Tier::ActiveResponder),
        PermissionLevel::ReadOnly => Tier::ReadOnly,
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
    fn capabilities_follow_the_permission_level() {
        let ro = capabilities("cs", PermissionLevel::ReadOnly, 100);
        let ar = capabilities("cs", PermissionLevel::ActiveResponder, 100);
        let admin = capabilities("cs", PermissionLevel::Admin, 100);
        assert!(ro.supports(CommandKind::ProcessList) && !ro.supports(CommandKind::KillProcess));
        assert!(!ro.supports(CommandKind::Isolate), "devices:write is not a read-only scope");
        assert!(ar.supports(CommandKind::KillProcess) && !ar.supports(CommandKind::PutFile));
        assert!(!ar.supports(CommandKind::Execute));
        assert_eq!(admin.commands.len(), 18);
        assert!(!admin.supports(CommandKind::QuarantineFile));
        assert_eq!(tier_for(PermissionLevel::ActiveResponder, Tier::Admin), Tier::ActiveResponder);
    }

    #[test]
    fn the_platform_cache_stays_bounded() {
        let cfg = CrowdStrikeConfig::new("http://127.0.0.1:1", "id", "secret".into());
        let adapter = CrowdStrikeAdapter::new("cs", cfg).unwrap();
        let entities: Vec<crate::wire::DeviceEntity> = (0..MAX_PLATFORMS + 10)
            .map(|i| crate::wire::DeviceEntity {
                device_id: format!("{i:032x}"),
                platform_name: "Windows".into(),
                ..Default::default()
            })
            .collect();
        adapter.remember(&entities);
        let cached = adapter.platforms.lock().unwrap().len();
        assert!((1..=MAX_PLATFORMS).contains(&cached), "{cached}");
    }

    #[test]
    fn hostname_filters_are_escaped() {
        assert_eq!(fql_escape("o'brien\\pc"), "o\\'brien\\\\pc");
    }
}
