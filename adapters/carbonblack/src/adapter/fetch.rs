//! Endpoint files fetched in ranges into the file store, and the cleanup of temporary files
//! edrgate left on the endpoint.

use std::time::Duration;

use edrgate_adapter::adapter::FileWriter;
use edrgate_adapter::driver::{Drive, RunOps as _};
use edrgate_adapter::{
    AdapterError, CommandKind, CommandResult, CommandUpdate, ErrorCode, ErrorInfo, RunContext,
    Status,
};
use futures::StreamExt as _;

use super::commands::Waited;
use super::{AfterFetch, CarbonBlackAdapter, Checkpoint, Fetch, Phase, now, vendor_ref};
use crate::mapping::{self, CbError};

/// Bytes of an `execute` output returned inline (the whole output is a result file).
const OUTPUT_INLINE_LIMIT: usize = 64 * 1024;

/// Failed range downloads of one file before the command fails.
const MAX_FETCH_FAILURES: u32 = 5;

/// The result file a download writes, kept in the run's memory between steps.
pub(super) struct FetchWriter {
    pub(super) index: usize,
    writer: Box<dyn FileWriter>,
    /// The first bytes, for `execute`'s inline output (empty for other downloads).
    head: Vec<u8>,
    head_limit: usize,
}

impl CarbonBlackAdapter {
    /// One range of a file download per call: send `get file`, wait, stream the content into
    /// the result file, delete the staged copy, and either ask for the next range or commit.
    pub(super) async fn drive_fetch(
        &self,
        ctx: &RunContext<'_>,
        cp: &mut Checkpoint,
        updates: &mut Vec<CommandUpdate>,
        sid: u64,
        mut fetch: Fetch,
    ) -> Result<Drive, CbError> {
        let index = cp.cursor.index;
        let mut writer = match self.take_writer(ctx.run_id, index) {
            Some(w) => w,
            None => {
                // A restart lost the writer (and the bytes it held): start the file over.
                if fetch.next != fetch.start {
                    tracing::info!(run = %ctx.run_id, "restarting a download after a restart");
                    fetch.next = fetch.start;
                    fetch.cid = None;
                    fetch.ranges = 0;
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

    /// A first range ends a file that fits in it (a short answer). When it comes back full,
    /// or fuller than asked, the file's size is learnt (a `directory list` of its path, see
    /// [`Fetch::sized`]) so that the ranges stop at the end of the file: a file whose size is
    /// a multiple of the range never costs an empty `get file` at `offset == size`, and a
    /// sensor that sends more or fewer bytes than `get_count` asked for (some ignore it) is
    /// read as it comes, until the size is reached. Without a size (the lookup failed, or the
    /// sensor does not list `directory list`) a short range marks the end.
    pub(super) async fn fetch_range(
        &self,
        ctx: &RunContext<'_>,
        cp: &mut Checkpoint,
        updates: &mut Vec<CommandUpdate>,
        sid: u64,
        fetch: &mut Fetch,
        writer: &mut FetchWriter,
    ) -> Result<FetchStep, CbError> {
        let index = cp.cursor.index;
        if fetch.end.is_some_and(|end| fetch.next >= end) {
            return Ok(FetchStep::Complete);
        }
        // Only once a range came back full (or fuller than asked) is the size needed: most
        // files fit in the first range, whose short answer ends them without a lookup.
        if !fetch.sized
            && fetch.ranges > 0
            && let Some(wait) = self.look_up_size(ctx, cp, sid, fetch).await?
        {
            return Ok(FetchStep::More(wait));
        }
        // One past the last byte to download, as far as known.
        let bound = match (fetch.end, fetch.total) {
            (Some(end), Some(total)) => Some(end.min(total)),
            (end, total) => end.or(total),
        };
        if fetch.ranges > 0 && bound.is_some_and(|b| fetch.next >= b) {
            return Ok(FetchStep::Complete);
        }
        let cid = match fetch.cid {
            Some(cid) => cid,
            None => {
                let remaining = match bound {
                    Some(b) if b > fetch.next => b - fetch.next,
                    _ => u64::MAX,
                };
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
        // Bytes this range may add: up to the end when known (a sensor ignoring `get_count`
        // may send the whole rest of the file), else anything that arrives.
        let wanted = bound.map(|b| b.saturating_sub(fetch.next));
        let received = match self.download(sid, fid, wanted, writer).await {
            Ok(received) => received,
            Err(e) => {
                fetch.failures += 1;
                if fetch.failures > MAX_FETCH_FAILURES {
                    return Ok(FetchStep::Failed(CommandUpdate::failed(
                        index,
                        e.into_adapter().info,
                    )));
                }
                return Err(e);
            }
        };
        let got = received.written;
        // Fewer bytes than this range should have had: the end of the file (size unknown), or
        // a sensor sending less than asked (size known), but only if the server staged no
        // more than it sent: a body cut short without a transport error (a proxy, a restarted
        // worker) must not complete a truncated file. The file object's `size` (§2.10–§2.12)
        // tells.
        let expected = wanted.map_or(fetch.asked, |w| w.min(fetch.asked));
        if got < expected {
            let staged = self.client.file_object(sid, fid).await?.size;
            if staged != Some(received.read) {
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
        fetch.ranges += 1;
        let complete = match bound {
            Some(b) if fetch.next >= b => true,
            // The size is known: a short range is only a sensor sending less than asked, but
            // an empty one means the file ended early (it shrank since the lookup).
            _ if fetch.total.is_some() => {
                if got == 0 {
                    tracing::warn!(run = %ctx.run_id, path = %fetch.path, "the file ended before the size it had when the download started");
                }
                got == 0
            }
            // Size unknown: a short range is the end; a longer one the rest of the file from
            // a sensor that ignored `get_count`.
            _ => got != fetch.asked,
        };
        if complete { Ok(FetchStep::Complete) } else { Ok(FetchStep::More(Drive::Continue)) }
    }

    /// Sends and waits for the size lookup of [`Self::fetch_range`]; `Some` while it waits.
    /// A failed lookup leaves the size unknown: `get file` reports what is wrong with the
    /// path, with the vendor's own error.
    async fn look_up_size(
        &self,
        ctx: &RunContext<'_>,
        cp: &mut Checkpoint,
        sid: u64,
        fetch: &mut Fetch,
    ) -> Result<Option<Drive>, CbError> {
        if !self.session_supports(cp, crate::wire::names::DIRECTORY_LIST) {
            fetch.sized = true;
            return Ok(None);
        }
        let cid = match fetch.cid {
            Some(cid) => cid,
            None => {
                let sent =
                    self.client.post_command(sid, &mapping::stat_request(sid, &fetch.path)).await?;
                if let Some(session) = &mut cp.session {
                    session.last_contact = now();
                }
                fetch.cid = Some(sent.id);
                fetch.at = now();
                sent.id
            }
        };
        let cb = match self.wait_command(ctx, cp, sid, cid, fetch.at).await? {
            Waited::Done(cb) => cb,
            Waited::Pending(_, delay) => {
                if now() - fetch.at > self.timeout_of(CommandKind::ListDirectory).as_secs_f64() {
                    // Not worth failing the download over: go on without a size.
                    fetch.sized = true;
                    fetch.cid = None;
                    return Ok(None);
                }
                return Ok(Some(Drive::Wait(delay)));
            }
            Waited::Interrupted => return Ok(Some(Drive::Wait(Duration::ZERO))),
        };
        fetch.sized = true;
        fetch.cid = None;
        if mapping::command_status(&cb.status) == Status::Succeeded {
            let entries = mapping::directory(cb.files.unwrap_or_default());
            fetch.total = match entries.as_slice() {
                [entry] if !entry.is_directory => Some(entry.size),
                _ => None,
            };
        }
        Ok(None)
    }

    /// Streams one staged range into the writer: what arrives, up to `wanted` bytes (the
    /// rest of the range is not read).
    pub(super) async fn download(
        &self,
        sid: u64,
        fid: u64,
        wanted: Option<u64>,
        writer: &mut FetchWriter,
    ) -> Result<Received, CbError> {
        let stream = self.client.content(sid, fid).await?;
        futures::pin_mut!(stream);
        let mut received = Received::default();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk?;
            received.read += chunk.len() as u64;
            let room = wanted.map_or(u64::MAX, |w| w - received.written);
            let chunk = &chunk[..usize::try_from(room).unwrap_or(usize::MAX).min(chunk.len())];
            if writer.head.len() < writer.head_limit {
                let take = (writer.head_limit - writer.head.len()).min(chunk.len());
                writer.head.extend_from_slice(&chunk[..take]);
            }
            writer.writer.write(chunk).await?;
            received.written += chunk.len() as u64;
            if wanted.is_some_and(|w| received.written >= w) {
                break;
            }
        }
        Ok(received)
    }

    /// Deletes a temporary endpoint file edrgate created, then reports the kept result. A
    /// failed delete is logged, not reported: the command itself succeeded.
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn drive_cleanup(
        &self,
        ctx: &RunContext<'_>,
        cp: &mut Checkpoint,
        updates: &mut Vec<CommandUpdate>,
        sid: u64,
        path: String,
        cid: Option<u64>,
        at: f64,
        result: CommandResult,
    ) -> Result<Drive, CbError> {
        let index = cp.cursor.index;
        let cid = match cid {
            Some(cid) => cid,
            None => {
                // The delete destroys what fetching again would need: store the fetched
                // result first, or a crash now resumes into a fetch of a file that is gone.
                self.persist(ctx, cp, updates).await.map_err(CbError::Api)?;
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
}

/// Bytes of one range: read from the server, and written (at most what was wanted).
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct Received {
    read: u64,
    written: u64,
}

pub(super) enum FetchStep {
    More(Drive),
    Complete,
    Failed(CommandUpdate),
}

impl Fetch {
    pub(super) fn new(path: String, start: u64, end: Option<u64>, then: AfterFetch) -> Self {
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
            sized: false,
            total: None,
            ranges: 0,
        }
    }
}
