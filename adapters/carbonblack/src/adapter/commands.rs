//! Carbon Black commands on a session: sending (side effects after their intent), polling
//! with a bounded long-poll, results, timeouts.

use std::time::{Duration, Instant};

use edrgate_adapter::driver::{Drive, RunOps as _};
use edrgate_adapter::{
    Command, CommandKind, CommandResult, CommandUpdate, ErrorCode, ErrorInfo, RunContext, Status,
};

use super::{
    AfterFetch, CarbonBlackAdapter, Checkpoint, Fetch, Phase, is_rate_limited, now, phase_mismatch,
    progress, vendor_ref,
};
use crate::mapping::{self, CbError};
use crate::wire::{CbCommand, CommandRequest};

impl CarbonBlackAdapter {
    /// Sends the current command (or its first part).
    pub(super) async fn start(
        &self,
        ctx: &RunContext<'_>,
        cp: &mut Checkpoint,
        updates: &mut Vec<CommandUpdate>,
        sid: u64,
    ) -> Result<Drive, CbError> {
        let index = cp.cursor.index;
        let command = &ctx.commands[index];
        // Refused before anything is sent, as cbapi does (§5.3).
        self.check_supported(cp, command)?;
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
    pub(super) async fn send(
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
    pub(super) async fn send_side_effect(
        &self,
        ctx: &RunContext<'_>,
        cp: &mut Checkpoint,
        updates: &mut Vec<CommandUpdate>,
        sid: u64,
        request: CommandRequest,
    ) -> Result<Drive, CbError> {
        let after = self.last_cid(cp, sid).await?;
        let previous = std::mem::replace(
            &mut cp.phase,
            Phase::Intent {
                at: now(),
                name: request.name.to_owned(),
                object: mapping::object_text(&request.object),
                sid: Some(sid),
                after: Some(after),
            },
        );
        if let Err(e) = self.record(ctx, cp, updates).await {
            cp.phase = previous;
            return Err(CbError::Api(e));
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
                cp.cursor.sent = false;
                Err(e)
            }
            // Transport errors and 5xx leave the intent: the next step reconciles.
            Err(e) => Err(e),
        }
    }

    /// The session's highest command id, read from CB the first time for a session this run
    /// did not open (a taken-over one): the reconciliation matches only later ids.
    async fn last_cid(&self, cp: &mut Checkpoint, sid: u64) -> Result<u64, CbError> {
        if let Some(last) = cp.session.as_ref().and_then(|s| s.last_cid) {
            return Ok(last);
        }
        let last = self.client.commands(sid).await?.iter().map(|c| c.id).max().unwrap_or(0);
        if let Some(session) = &mut cp.session {
            session.last_cid = Some(last);
        }
        Ok(last)
    }

    pub(super) fn sent(
        &self,
        cp: &mut Checkpoint,
        updates: &mut Vec<CommandUpdate>,
        sid: u64,
        sent: &CbCommand,
    ) {
        let at = now();
        if let Some(session) = &mut cp.session {
            session.last_contact = at;
            session.last_cid = Some(session.last_cid.unwrap_or(0).max(sent.id));
        }
        updates.push(
            CommandUpdate::status(
                cp.cursor.index,
                mapping::command_status(&sent.status).min_running(),
            )
            .with_vendor(Some(vendor_ref(sid, sent.id)), Some(sent.status.clone())),
        );
        cp.phase = Phase::Sent { cid: sent.id, at, vendor_status: sent.status.clone() };
    }

    /// Waits for CB command `cid` of the current command.
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn poll(
        &self,
        ctx: &RunContext<'_>,
        cp: &mut Checkpoint,
        updates: &mut Vec<CommandUpdate>,
        sid: u64,
        cid: u64,
        at: f64,
        vendor_status: String,
    ) -> Result<Drive, CbError> {
        let index = cp.cursor.index;
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
        match unsuccessful(index, sid, &cb) {
            Some(update) => Ok(Drive::Finished(update)),
            None => self.completed(ctx, cp, sid, *cb).await,
        }
    }

    /// The result of a completed command, or the next part of a multi-part one.
    pub(super) async fn completed(
        &self,
        ctx: &RunContext<'_>,
        cp: &mut Checkpoint,
        sid: u64,
        cb: CbCommand,
    ) -> Result<Drive, CbError> {
        let index = cp.cursor.index;
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

    /// A command ran out of time: cancel it on the server (best effort) and report it.
    pub(super) async fn timed_out(
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

    /// Waits for a command: a bounded long-poll raced with the stop signal, then a delay
    /// that grows with the time already waited. Sends keepalives while waiting.
    pub(super) async fn wait_command(
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

    pub(super) fn long_poll(&self) -> Option<Duration> {
        (self.cfg.long_poll_ms > 0).then(|| Duration::from_millis(self.cfg.long_poll_ms))
    }

    /// After a poll that found the vendor still working: a server that held the request was
    /// long-polling, so ask again at once; one that answered straight away does not, so back
    /// off.
    pub(super) fn next_poll(
        &self,
        long_poll: Option<Duration>,
        started: Instant,
        since: f64,
    ) -> Duration {
        match long_poll {
            Some(lp) if started.elapsed() >= lp / 2 => Duration::ZERO,
            _ => self.poll_delay(since),
        }
    }

    /// Delay before the next poll: a tenth of the time already waited, within the bounds.
    pub(super) fn poll_delay(&self, since: f64) -> Duration {
        let waited = (now() - since).max(0.0);
        Duration::from_secs_f64(waited / 10.0).clamp(self.cfg.poll_min(), self.cfg.poll_max())
    }

    pub(super) fn timeout_of(&self, kind: CommandKind) -> Duration {
        Duration::from_secs(match kind {
            CommandKind::MemoryDump => self.cfg.memdump_timeout_secs,
            _ => self.cfg.command_timeout_secs,
        })
    }

    /// A temporary path on the endpoint for command `index` of this run, in the OS's temp
    /// directory (cbapi: `c:\windows\temp` on Windows, `/tmp` elsewhere, §5.1). Deterministic,
    /// so later steps and reconciliation find the same path.
    pub(super) async fn temp_path(
        &self,
        ctx: &RunContext<'_>,
        cp: &mut Checkpoint,
        ext: &str,
    ) -> Result<String, CbError> {
        let windows = match cp.windows {
            Some(w) => w,
            None => {
                self.sensor_facts(cp).await?;
                cp.windows.unwrap_or(true)
            }
        };
        let name = format!("edrgate-{}-{}.{ext}", ctx.run_id.simple(), cp.cursor.index);
        Ok(if windows { format!("C:\\Windows\\Temp\\{name}") } else { format!("/tmp/{name}") })
    }
}

/// What waiting on a command found.
pub(super) enum Waited {
    /// It ended (complete, error or cancel).
    Done(Box<CbCommand>),
    /// Still pending or running; poll again after the delay.
    Pending(Box<CbCommand>, Duration),
    /// The wait was cut short (stop signal, our long-poll timeout): step again at once.
    Interrupted,
}

/// Status helpers local to this adapter.
pub(super) trait StatusExt {
    /// A freshly sent command is at least `dispatched`, whatever the server said.
    fn min_running(self) -> Status;
}

impl StatusExt for Status {
    fn min_running(self) -> Status {
        if self.is_terminal() || self == Status::Queued { Status::Dispatched } else { self }
    }
}

/// How a terminal CB command that did not succeed ends: cancelled on the server, or failed
/// with its mapped error. `None` for a success (its result still has to be read).
pub(super) fn unsuccessful(index: usize, sid: u64, cb: &CbCommand) -> Option<CommandUpdate> {
    let vendor = (Some(vendor_ref(sid, cb.id)), Some(cb.status.clone()));
    match mapping::command_status(&cb.status) {
        Status::Succeeded => None,
        Status::Cancelled => Some(
            CommandUpdate::status(index, Status::Cancelled)
                .with_vendor(vendor.0, vendor.1)
                .with_error(ErrorInfo::new(
                    ErrorCode::Cancelled,
                    "the command was cancelled on the Carbon Black server",
                )),
        ),
        _ => Some(
            CommandUpdate::failed(index, mapping::command_error(cb))
                .with_vendor(vendor.0, vendor.1),
        ),
    }
}
