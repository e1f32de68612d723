//! The adapter contract: a vendor backend as a resumable state machine.
//!
//! The engine owns every run's state; an adapter owns none of it between steps. The engine
//! calls [`Adapter::step`] with the run's last checkpoint, the adapter makes the next vendor
//! calls and answers with a new checkpoint, the command updates it observed, and when to be
//! called again:
//!
//! ```text
//! checkpoint = None
//! loop {
//!     step = adapter.step(&ctx, checkpoint)       // a few vendor calls, never a long sleep
//!     store(step.checkpoint, step.updates)        // fenced by the run's lease
//!     match step.next {
//!         Next::After(d) => sleep d (woken early by a cancel or the deadline),
//!         Next::Done     => break,
//!     }
//! }
//! ```
//!
//! A restart or another replica resumes the run from its stored checkpoint, so nothing a run
//! needs lives only in the adapter's memory. Before a vendor call that changes an endpoint, the
//! adapter records its intent with [`Journal::record`]; after a crash it finds that intent in the
//! checkpoint and reconciles with the vendor (or reports `outcome_unknown`) instead of re-sending.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use async_trait::async_trait;
use tokio::io::AsyncRead;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::error::AdapterError;
use crate::model::{
    Capabilities, Command, CommandKind, CommandResult, Device, DeviceSupport, ErrorCode, ErrorInfo,
    FileRef, OnError, Status,
};

/// A vendor backend. One instance per configured backend (per server and credential), shared by
/// every run on it.
#[async_trait]
pub trait Adapter: Send + Sync + 'static {
    /// What this backend supports; commands outside it are refused at submission.
    fn capabilities(&self) -> &Capabilities;

    /// Devices the backend knows; with `hostname`, those whose hostname contains it,
    /// compared case-insensitively ([`hostname_matches`]), whatever the vendor's own search
    /// rules are.
    async fn find_devices(&self, hostname: Option<&str>) -> Result<Vec<Device>, AdapterError>;

    /// The one device whose hostname is `hostname` (case-insensitive, exact). No match is
    /// `device_not_found`, several are `device_ambiguous` naming them: never a guess.
    async fn resolve_hostname(&self, hostname: &str) -> Result<Device, AdapterError> {
        let mut exact: Vec<Device> = self
            .find_devices(Some(hostname))
            .await?
            .into_iter()
            .filter(|d| names_device(&d.hostname, hostname))
            .collect();
        match exact.len() {
            0 => Err(AdapterError::new(
                ErrorCode::DeviceNotFound,
                format!("no device named {hostname:?} on backend {}", self.capabilities().backend),
            )),
            1 => Ok(exact.remove(0)),
            _ => {
                let ids: Vec<String> = exact.iter().map(|d| d.device_id.clone()).collect();
                Err(AdapterError::new(
                    ErrorCode::DeviceAmbiguous,
                    format!(
                        "{} devices named {hostname:?} on backend {} (device ids {}); target one by device_id",
                        ids.len(),
                        self.capabilities().backend,
                        ids.join(", ")
                    ),
                ))
            }
        }
    }

    /// What `device` (as [`Adapter::find_devices`], [`Adapter::resolve_hostname`] or
    /// [`Adapter::device`] returned it) can run, and how: per-device capabilities, from the
    /// device record alone (OS, agent version) and the backend's settings, never a vendor call.
    /// `GET /v1/devices` shows it; the engine ends a run's commands it rules out as
    /// `unsupported_command` with the reason before any step. The default is the backend's
    /// [`Adapter::capabilities`]; an adapter with per-device rules overrides it with
    /// [`Capabilities::for_device`]. The adapter's own run-time checks (a session's command
    /// list, say) still have the last word.
    fn device_support(&self, _device: &Device) -> DeviceSupport {
        self.capabilities().for_device(|_| None)
    }

    /// What `edrgate check-config --connect` asks of a backend: that it is reachable with its
    /// credentials and set up to run what it advertises, changing nothing. The default looks a
    /// device up (it signs in and reaches the API); an adapter whose commands depend on
    /// vendor-side set-up checks that too.
    async fn check(&self) -> Result<(), AdapterError> {
        self.find_devices(Some("edrgate-connectivity-check")).await.map(|_| ())
    }

    /// Whether [`Adapter::device_support`] may refuse `kind` on some device of this backend
    /// (an OS or version without it). The engine looks a run's device up by id
    /// ([`Adapter::device`], one vendor call) only when one of the run's commands does, so
    /// that a fan-out of commands every device runs costs no extra call per target.
    fn varies_by_device(&self, _kind: CommandKind) -> bool {
        false
    }

    /// The device with this id, for a run targeted by backend and device id, so that the
    /// engine checks [`Adapter::device_support`] before the run's first step (one vendor
    /// lookup per run). An unknown id is `device_not_found`. `None` (the default): the adapter
    /// has no lookup by id; only the backend's capabilities are checked before the run.
    async fn device(&self, _device_id: &str) -> Result<Option<Device>, AdapterError> {
        Ok(None)
    }

    /// The engine closed the run (finished, failed, or handed to another process): drop any
    /// in-memory state kept for it (budget slots, open transfers). Vendor-side cleanup belongs
    /// in `step`, which sees the stop signal first whenever the engine can give it one.
    fn run_closed(&self, _run_id: Uuid) {}

    /// The backend's vendor budgets as they stand (sessions in use, calls this minute…), for
    /// the gateway's `/metrics`. Cheap: called on every scrape.
    fn budgets(&self) -> Vec<BudgetUse> {
        Vec::new()
    }

    /// How many of the backend's runs can make progress at once when each holds a vendor
    /// resource for its whole life (a live-response session slot); `None` when runs hold
    /// nothing between steps (call budgets only). The engine claims no more of the backend's
    /// runs than this, so a run beyond it waits in the store, as a row, not in a driver.
    fn runs_at_once(&self) -> Option<usize> {
        None
    }

    /// The engine gives every adapter the budget it shares with the other replicas, before the
    /// adapter's first step and again after a reload (keep the first). Adapters with vendor
    /// limits ask it as well as their local budget; see [`crate::shared`].
    fn use_shared_budget(&self, _budget: Arc<dyn crate::shared::SharedBudget>) {}

    /// Advances a run. `checkpoint` is `None` on the first call, else what the previous step (or
    /// [`Journal::record`]) stored. An `Err` that `is_retryable` makes the engine call again with
    /// the same checkpoint after a back-off; any other `Err` fails the run's unfinished commands.
    async fn step(
        &self,
        ctx: &RunContext<'_>,
        checkpoint: Option<serde_json::Value>,
    ) -> Result<Step, AdapterError>;
}

/// One vendor budget of a backend at one instant.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BudgetUse {
    /// What is counted, e.g. `sessions`, `runliveresponse_per_minute`.
    pub name: &'static str,
    pub in_use: usize,
    pub capacity: usize,
    /// Runs waiting for it (queued, visible as such to callers).
    pub waiting: usize,
    /// Whether a run holds a place of it while it works (a session, a slot) rather than
    /// spending it (calls per window). A run waiting for a held budget waits for another run
    /// to finish, so the engine claims no more of the backend's runs meanwhile; one waiting
    /// for a call rate is next in line, and the runs behind it must be ready when it goes.
    pub held: bool,
}

/// The hostname rule of every adapter's device search: `name` contains `query`, ignoring ASCII
/// case (hostnames are ASCII: DNS labels and NetBIOS names).
pub fn hostname_matches(name: &str, query: &str) -> bool {
    name.to_ascii_lowercase().contains(&query.to_ascii_lowercase())
}

/// Whether `query` names the device called `name`: the same name ignoring ASCII case, or, for
/// a query without a dot, the first label of an FQDN (Defender and many consoles store
/// `ws-042.corp.example`; responders say `ws-042`).
pub fn names_device(name: &str, query: &str) -> bool {
    name.eq_ignore_ascii_case(query)
        || (!query.contains('.')
            && name.split_once('.').is_some_and(|(label, _)| label.eq_ignore_ascii_case(query)))
}

/// Everything an adapter knows about the run it is stepping.
pub struct RunContext<'a> {
    pub run_id: Uuid,
    pub action_id: Uuid,
    pub tenant: &'a str,
    pub device_id: &'a str,
    pub commands: &'a [Command],
    pub on_error: OnError,
    pub comment: Option<&'a str>,
    /// Fires when the caller cancels or the deadline passes.
    pub stop: &'a StopSignal,
    pub journal: &'a dyn Journal,
    pub files: &'a dyn RunFiles,
    /// Commands the engine ended itself (refused for the resolved device, by
    /// [`Adapter::device_support`], and what `on_error: stop` skipped after them): the step
    /// driver moves past each with its update and never asks the vendor about it.
    pub settled: &'a [CommandUpdate],
}

impl RunContext<'_> {
    /// The engine's own end of command `index`, if it ended it (see [`RunContext::settled`]).
    pub fn settled(&self, index: usize) -> Option<&CommandUpdate> {
        self.settled.iter().find(|u| u.index == index)
    }

    /// Ends the commands from `from` on: with `stop`'s status and error, or, without one,
    /// `skipped` (an earlier failure under `on_error: stop`). Returns the index past the last
    /// command, where the checkpoint's position goes.
    pub fn close_rest(
        &self,
        from: usize,
        stop: Option<StopReason>,
        updates: &mut Vec<CommandUpdate>,
    ) -> usize {
        for i in from..self.commands.len() {
            updates.push(match stop {
                Some(reason) => {
                    CommandUpdate::status(i, reason.status()).with_error(reason.error())
                }
                None => CommandUpdate::status(i, Status::Skipped),
            });
        }
        self.commands.len()
    }
}

/// A checkpoint as the engine stores it (every adapter's checkpoint is a serde type).
pub fn encode_checkpoint<T: serde::Serialize>(
    checkpoint: &T,
) -> Result<serde_json::Value, AdapterError> {
    serde_json::to_value(checkpoint).map_err(|e| AdapterError::internal(format!("checkpoint: {e}")))
}

/// A stored checkpoint read back; `vendor` names the adapter in the error.
pub fn decode_checkpoint<T: serde::de::DeserializeOwned>(
    vendor: &str,
    value: serde_json::Value,
) -> Result<T, AdapterError> {
    serde_json::from_value(value)
        .map_err(|e| AdapterError::internal(format!("unreadable {vendor} checkpoint: {e}")))
}

/// What one step produced.
#[derive(Debug)]
pub struct Step {
    pub checkpoint: serde_json::Value,
    pub updates: Vec<CommandUpdate>,
    pub next: Next,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Next {
    /// Call `step` again after this delay (or earlier, on a stop signal).
    After(Duration),
    /// The run is over. Commands left unfinished are closed by the engine (cancelled, timed out
    /// or skipped, from the stop signal).
    Done,
}

/// A change to one command of the run.
#[derive(Clone, Debug, PartialEq)]
pub struct CommandUpdate {
    pub index: usize,
    pub status: Status,
    pub result: Option<CommandResult>,
    pub error: Option<ErrorInfo>,
    pub vendor_ref: Option<String>,
    pub vendor_status: Option<String>,
}

impl CommandUpdate {
    pub fn status(index: usize, status: Status) -> Self {
        CommandUpdate {
            index,
            status,
            result: None,
            error: None,
            vendor_ref: None,
            vendor_status: None,
        }
    }

    pub fn succeeded(index: usize, result: CommandResult) -> Self {
        CommandUpdate { result: Some(result), ..Self::status(index, Status::Succeeded) }
    }

    pub fn failed(index: usize, error: ErrorInfo) -> Self {
        CommandUpdate { error: Some(error), ..Self::status(index, Status::Failed) }
    }

    pub fn with_vendor(
        mut self,
        vendor_ref: Option<String>,
        vendor_status: Option<String>,
    ) -> Self {
        self.vendor_ref = vendor_ref;
        self.vendor_status = vendor_status;
        self
    }

    pub fn with_error(mut self, error: ErrorInfo) -> Self {
        self.error = Some(error);
        self
    }
}

/// Persists a run's progress immediately, before a vendor call with a side effect.
#[async_trait]
pub trait Journal: Send + Sync {
    /// Stores `checkpoint` and `updates` now. On an error the adapter must not make the vendor
    /// call. [`AdapterError::lease_lost`] says the engine no longer owns the run (its lease was
    /// taken over): the step ends there, without further vendor calls (the step driver,
    /// [`crate::driver`], does that); any other error is an ordinary failure to store.
    async fn record(
        &self,
        checkpoint: &serde_json::Value,
        updates: &[CommandUpdate],
    ) -> Result<(), AdapterError>;
}

/// Streaming access to edrgate's file store, scoped to the run's tenant.
#[async_trait]
pub trait RunFiles: Send + Sync {
    /// Starts a result file for command `index`. Bytes are written in chunks; the file becomes
    /// visible only on [`FileWriter::commit`], and a dropped writer leaves nothing behind.
    async fn create(&self, index: usize, name: &str) -> Result<Box<dyn FileWriter>, AdapterError>;

    /// Opens a stored file of the tenant (for `put_file`).
    async fn open(&self, file_id: &str) -> Result<(FileRef, FileReader), AdapterError>;
}

pub type FileReader = Box<dyn AsyncRead + Send + Unpin>;

#[async_trait]
pub trait FileWriter: Send {
    async fn write(&mut self, chunk: &[u8]) -> Result<(), AdapterError>;
    /// Bytes written so far (to resume a ranged transfer).
    fn written(&self) -> u64;
    async fn commit(self: Box<Self>) -> Result<FileRef, AdapterError>;
}

/// A `get_file`'s `offset`/`length`, cut on the gateway's side from a whole file the vendor
/// sends (for vendors that cannot read a part): give it the file's chunks in order and write
/// what it keeps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ByteRange {
    skip: u64,
    take: u64,
}

impl ByteRange {
    /// From `offset` (none: the start) for `length` bytes (none: to the end).
    pub fn new(offset: Option<u64>, length: Option<u64>) -> Self {
        ByteRange { skip: offset.unwrap_or(0), take: length.unwrap_or(u64::MAX) }
    }

    /// The part of the file's next `chunk` inside the range (empty before and after it).
    pub fn keep<'a>(&mut self, chunk: &'a [u8]) -> &'a [u8] {
        let cut = usize::try_from(self.skip.min(chunk.len() as u64)).unwrap_or(chunk.len());
        let part = &chunk[cut..];
        self.skip -= cut as u64;
        let keep = usize::try_from(self.take.min(part.len() as u64)).unwrap_or(part.len());
        self.take -= keep as u64;
        &part[..keep]
    }
}

/// Why a run is being stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StopReason {
    Cancelled,
    DeadlineExceeded,
}

impl StopReason {
    /// The terminal status of commands a stop leaves unfinished.
    pub fn status(self) -> Status {
        match self {
            StopReason::Cancelled => Status::Cancelled,
            StopReason::DeadlineExceeded => Status::TimedOut,
        }
    }

    pub fn error(self) -> ErrorInfo {
        match self {
            StopReason::Cancelled => {
                ErrorInfo::new(ErrorCode::Cancelled, "cancelled by the caller")
            }
            StopReason::DeadlineExceeded => {
                ErrorInfo::new(ErrorCode::Timeout, "the action's deadline passed")
            }
        }
    }
}

/// A cancel or deadline, observable both as a flag and as a future.
#[derive(Clone, Debug, Default)]
pub struct StopSignal {
    token: CancellationToken,
    reason: Arc<OnceLock<StopReason>>,
}

impl StopSignal {
    pub fn new() -> Self {
        Self::default()
    }

    /// Requests a stop; the first reason wins.
    pub fn stop(&self, reason: StopReason) {
        let _ = self.reason.set(reason);
        self.token.cancel();
    }

    pub fn reason(&self) -> Option<StopReason> {
        self.reason.get().copied()
    }

    /// Resolves once a stop was requested. Only waits that are safe to abandon (budget queues,
    /// polling delays) should race against it; a vendor call in flight is finished instead.
    pub async fn stopped(&self) {
        self.token.cancelled().await
    }
}

#[cfg(test)]
mod tests {
    use super::ByteRange;

    fn cut(offset: Option<u64>, length: Option<u64>, chunks: &[&[u8]]) -> Vec<u8> {
        let mut range = ByteRange::new(offset, length);
        chunks.iter().flat_map(|c| range.keep(c).to_vec()).collect()
    }

    #[test]
    fn a_byte_range_keeps_its_part_across_chunks() {
        let chunks: &[&[u8]] = &[b"abc", b"", b"defg", b"hij"];
        assert_eq!(cut(None, None, chunks), b"abcdefghij");
        assert_eq!(cut(Some(2), Some(5), chunks), b"cdefg");
        assert_eq!(cut(Some(3), None, chunks), b"defghij");
        assert_eq!(cut(None, Some(1), chunks), b"a");
        assert_eq!(cut(Some(9), Some(100), chunks), b"j");
        assert_eq!(cut(Some(10), Some(1), chunks), b"");
        assert_eq!(cut(Some(u64::MAX), None, chunks), b"");
    }
}
