//! The run's RTR session (§5) and its lines (§6): open (alone, or with the action's other runs
//! as one batch, see `batch.rs`), refresh when idle, send each line to its tier, poll it to
//! completion walking `sequence_id` (§6.5), read the outcome.

use edrgate_adapter::driver::{Drive, RunOps as _};
use edrgate_adapter::{AdapterError, CommandUpdate, ErrorCode, RunContext, Status};

use super::batch::{Joined, follow};
use super::plan::{self, Role, Rtr};
use super::{Checkpoint, CrowdStrikeAdapter, LineState, Phase, SessionRef, now_ms, timed_out};
use crate::mapping::{self, SESSION_GONE};

/// Whether an error says the session (or batch) is gone (§9.2: `50007`, or a "session"
/// error of a single-host route, whose exact form is unverified, §13.4).
pub(super) fn session_gone(e: &AdapterError) -> bool {
    e.info.vendor_code.as_deref().is_some_and(|c| c.ends_with(&SESSION_GONE.to_string()))
        || (matches!(e.code(), ErrorCode::NotFound | ErrorCode::VendorRejected)
            && e.info
                .vendor_message
                .as_deref()
                .is_some_and(|m| m.to_ascii_lowercase().contains("session")))
}

impl CrowdStrikeAdapter {
    /// One move of the current command's lines.
    pub(super) async fn advance_rtr(
        &self,
        ctx: &RunContext<'_>,
        cp: &mut Checkpoint,
        updates: &mut Vec<CommandUpdate>,
    ) -> Result<Drive, AdapterError> {
        let Phase::Rtr { plan, sub, state, .. } = cp.phase.clone() else {
            return Err(AdapterError::internal("advance_rtr outside an RTR phase"));
        };
        let Some(line) = plan.get(sub).cloned() else { return Ok(self.command_result(ctx, cp)) };
        match state {
            LineState::Ready => {}
            LineState::Intent { session, known } => {
                return self.reconcile_line(ctx, cp, updates, &line, &session, &known).await;
            }
            LineState::Sent { .. } => return self.poll_line(ctx, cp, &line).await,
            LineState::Fetch { session, cloud, since_ms } => {
                return self.poll_fetch(ctx, cp, updates, &session, &cloud, since_ms).await;
            }
        }
        let Some(session) = cp.session.clone() else { return self.open(ctx, cp).await };
        if now_ms() - session.used_ms
            >= i64::try_from(self.cfg.session_refresh_secs * 1000).unwrap_or(i64::MAX)
        {
            return self.refresh(ctx, cp, session).await;
        }
        if let Some(dir) = &line.cwd
            && session.cwd.as_ref() != Some(dir)
        {
            // A new session starts at the root (§5.4): `cd` first, as its own line.
            if let Phase::Rtr { plan, .. } = &mut cp.phase {
                plan.insert(sub, Rtr::cd(dir));
            }
            return Ok(Drive::Continue);
        }
        if line.effect {
            self.intend(ctx, cp, updates, &line, &session.id).await?;
        }
        self.dispatch(ctx, cp, updates, &line, &session).await
    }

    /// Sends `line` (its intent, if it has a side effect, journaled) on the run's session:
    /// with the batch's other runs, or alone.
    pub(super) async fn dispatch(
        &self,
        ctx: &RunContext<'_>,
        cp: &mut Checkpoint,
        updates: &mut Vec<CommandUpdate>,
        line: &Rtr,
        session: &SessionRef,
    ) -> Result<Drive, AdapterError> {
        if session.batch.is_some() {
            return self.send_batch(ctx, cp, updates, line, session).await;
        }
        self.send_single(cp, updates, line, session).await
    }

    /// Opens the run's session: the action's runs that open within `batch_window_ms` share
    /// one batch init (§7.2); a run alone opens a single-host session (§5.2).
    async fn open(&self, ctx: &RunContext<'_>, cp: &mut Checkpoint) -> Result<Drive, AdapterError> {
        let key = format!("open:{}", ctx.action_id);
        let opened = match self.opens.join(&key, &cp.device, self.cfg.batch_host_limit) {
            Joined::Follower(rx) => match follow(ctx, rx, "batch init").await {
                Some(r) => r,
                None => return Ok(Drive::Continue),
            },
            Joined::Leader(lead) => {
                // The action's size is unknown here: a sliding window.
                lead.gather(self.batch_window(), usize::MAX, self.cfg.poll_max()).await;
                let members = lead.seal();
                if members.len() == 1 {
                    self.open_single(ctx, &cp.device).await
                } else {
                    let hosts: Vec<String> = members.iter().map(|(aid, _)| aid.clone()).collect();
                    let mut results = self.open_batch(&hosts).await;
                    let own = results.remove(&cp.device.to_ascii_lowercase());
                    for (aid, tx) in members.into_iter().filter_map(|(a, tx)| tx.map(|t| (a, t))) {
                        let r = results
                            .remove(&aid.to_ascii_lowercase())
                            .unwrap_or_else(|| Err(missing_host()));
                        let _ = tx.send(r);
                    }
                    own.unwrap_or_else(|| Err(missing_host()))
                }
            }
        };
        match opened {
            Ok(session) => {
                tracing::debug!(run = %ctx.run_id, batch = ?session.batch, queued = session.queued, "RTR session open");
                cp.session = Some(session);
                Ok(Drive::Continue)
            }
            Err(e) if e.is_retryable() => Err(e),
            Err(e) => Ok(Drive::Finished(CommandUpdate::failed(cp.cursor.index, e.info))),
        }
    }

    pub(super) fn batch_window(&self) -> std::time::Duration {
        std::time::Duration::from_millis(self.cfg.batch_window_ms)
    }

    async fn open_single(
        &self,
        ctx: &RunContext<'_>,
        aid: &str,
    ) -> Result<SessionRef, AdapterError> {
        let init =
            self.client.init_session(aid, self.cfg.queue_offline, &origin(ctx), false).await?;
        Ok(SessionRef {
            id: init.session_id,
            batch: None,
            peers: 1,
            queued: init.offline_queued,
            used_ms: now_ms(),
            cwd: None,
        })
    }

    /// Refreshes an idle session (§5.4, keyed by device); a gone one is opened again.
    async fn refresh(
        &self,
        ctx: &RunContext<'_>,
        cp: &mut Checkpoint,
        session: SessionRef,
    ) -> Result<Drive, AdapterError> {
        match self.client.init_session(&cp.device, self.cfg.queue_offline, &origin(ctx), true).await
        {
            Ok(init) => {
                let same = init.session_id == session.id;
                cp.session = Some(SessionRef {
                    id: init.session_id,
                    used_ms: now_ms(),
                    cwd: if same { session.cwd } else { None },
                    batch: if same { session.batch } else { None },
                    ..session
                });
                Ok(Drive::Continue)
            }
            Err(e) if session_gone(&e) || e.code() == ErrorCode::NotFound => {
                cp.session = None;
                Ok(Drive::Recovered)
            }
            Err(e) => Err(e),
        }
    }

    /// The cloud request ids of `line` the session's `logs[]` already hold (§5.4): after a
    /// lost answer, a new one is ours.
    pub(super) async fn known(
        &self,
        session: &str,
        line: &str,
    ) -> Result<Vec<String>, AdapterError> {
        let sessions = self.client.sessions(&[session.to_owned()]).await?;
        Ok(sessions
            .iter()
            .filter(|s| s.id == session)
            .flat_map(|s| s.logs.iter())
            .filter(|l| l.command_string == line)
            .map(|l| l.cloud_request_id.clone())
            .collect())
    }

    /// Journals the intent of a side-effecting `line` on `session` (with what its logs hold
    /// now), before the call.
    pub(super) async fn intend(
        &self,
        ctx: &RunContext<'_>,
        cp: &mut Checkpoint,
        updates: &mut Vec<CommandUpdate>,
        line: &Rtr,
        session: &str,
    ) -> Result<(), AdapterError> {
        let known = self.known(session, &line.line).await?;
        set_state(cp, LineState::Intent { session: session.to_owned(), known });
        if let Err(e) = self.record(ctx, cp, updates).await {
            set_state(cp, LineState::Ready);
            return Err(e);
        }
        Ok(())
    }

    /// A line on the run's own session (§6.2), its intent journaled.
    async fn send_single(
        &self,
        cp: &mut Checkpoint,
        updates: &mut Vec<CommandUpdate>,
        line: &Rtr,
        session: &SessionRef,
    ) -> Result<Drive, AdapterError> {
        match self.client.command(line.tier, &session.id, &line.line).await {
            Ok(accepted) => {
                self.accepted(
                    cp,
                    updates,
                    &session.id,
                    accepted.cloud_request_id,
                    accepted.queued_command_offline,
                );
                Ok(Drive::Continue)
            }
            Err(e) => Ok(self.refused(cp, e)?),
        }
    }

    /// A line accepted as `cloud`: polled from here on.
    pub(super) fn accepted(
        &self,
        cp: &mut Checkpoint,
        updates: &mut Vec<CommandUpdate>,
        session: &str,
        cloud: String,
        queued: bool,
    ) {
        if queued {
            updates.push(
                CommandUpdate::status(cp.cursor.index, Status::Queued)
                    .with_vendor(Some(cloud.clone()), Some("offline_queued".into())),
            );
        }
        set_state(
            cp,
            LineState::Sent {
                session: session.to_owned(),
                cloud,
                next_seq: 0,
                stdout: String::new(),
                stderr: String::new(),
                since_ms: now_ms(),
                queued,
            },
        );
        touch(cp);
    }

    /// A send that failed: a gone session is opened again and the line re-sent (the vendor
    /// refused it, so nothing ran); transient failures go to the driver (an intent is
    /// reconciled on the next move, a read re-sent); other refusals end the command.
    pub(super) fn refused(
        &self,
        cp: &mut Checkpoint,
        e: AdapterError,
    ) -> Result<Drive, AdapterError> {
        if session_gone(&e) {
            cp.session = None;
            cp.cursor.sent = false;
            set_state(cp, LineState::Ready);
            return Ok(Drive::Recovered);
        }
        if e.is_retryable() {
            return Err(e);
        }
        cp.cursor.sent = false;
        Ok(Drive::Finished(CommandUpdate::failed(cp.cursor.index, e.info)))
    }

    /// Polls a sent line (§6.4), walking chunks so that both readings of §6.5 work: output
    /// appended, `next = max(next + 1, sequence_id + 1)`; an empty incomplete answer waits.
    async fn poll_line(
        &self,
        ctx: &RunContext<'_>,
        cp: &mut Checkpoint,
        line: &Rtr,
    ) -> Result<Drive, AdapterError> {
        let Phase::Rtr {
            state:
                LineState::Sent {
                    session,
                    cloud,
                    mut next_seq,
                    mut stdout,
                    mut stderr,
                    since_ms,
                    queued,
                },
            ..
        } = cp.phase.clone()
        else {
            return Err(AdapterError::internal("poll_line outside a sent line"));
        };
        let status = match self.client.command_status(line.tier, &cloud, next_seq).await {
            Ok(s) => s,
            // A read whose request the vendor forgot is simply asked again.
            Err(e) if !line.effect && (session_gone(&e) || e.code() == ErrorCode::NotFound) => {
                set_state(cp, LineState::Ready);
                return Ok(Drive::Recovered);
            }
            Err(e) => return Err(e),
        };
        touch(cp);
        let cap = self.cfg.max_output_bytes;
        let got = !status.stdout.is_empty() || !status.stderr.is_empty();
        if got {
            let cut = !mapping::append_capped(&mut stdout, &status.stdout, cap)
                | !mapping::append_capped(&mut stderr, &status.stderr, cap);
            if cut && let Phase::Rtr { cut: c, .. } = &mut cp.phase {
                *c = true;
            }
            next_seq = (next_seq + 1).max(status.sequence_id.map_or(0, |s| s + 1));
        }
        set_state(
            cp,
            LineState::Sent {
                session,
                cloud: cloud.clone(),
                next_seq,
                stdout,
                stderr,
                since_ms,
                queued,
            },
        );
        if status.complete {
            return Ok(self.line_done(ctx, cp, line));
        }
        if got {
            return Ok(Drive::Continue);
        }
        if !queued && self.timed_out(since_ms) {
            return Ok(Drive::Finished(timed_out(
                cp.cursor.index,
                "the command",
                self.cfg.command_timeout_secs,
                Some(cloud),
            )));
        }
        Ok(Drive::Wait(self.poll_delay(since_ms)))
    }

    /// The sent line completed with its `stdout`/`stderr` (§6.4, §9.3): on to the next line, the file
    /// retrieval, or the command's end.
    pub(super) fn line_done(&self, ctx: &RunContext<'_>, cp: &mut Checkpoint, line: &Rtr) -> Drive {
        let index = cp.cursor.index;
        let Phase::Rtr { state: LineState::Sent { session, cloud, stdout, stderr, .. }, .. } =
            cp.phase.clone()
        else {
            return Drive::Continue;
        };
        let (session, cloud, stdout, stderr) =
            (session.as_str(), cloud.as_str(), stdout.as_str(), stderr.as_str());
        let failed = |error| {
            Drive::Finished(
                CommandUpdate::failed(index, error)
                    .with_vendor(Some(cloud.to_owned()), Some("complete_with_stderr".into())),
            )
        };
        match line.role {
            Role::MustNotExist if stderr.trim().is_empty() => {
                let what = line.path.as_deref().unwrap_or(&line.line);
                return failed(
                    edrgate_adapter::ErrorInfo::new(
                        ErrorCode::Conflict,
                        format!("{what} already exists"),
                    )
                    .with_vendor("exists", stdout.trim()),
                );
            }
            Role::MustNotExist => {
                let e = mapping::stderr_error(stderr);
                if !matches!(e.code, ErrorCode::NotFound | ErrorCode::FileNotFound) {
                    return failed(e);
                }
            }
            _ if !stderr.trim().is_empty() => return failed(mapping::stderr_error(stderr)),
            Role::Cd => {
                if let Some(s) = &mut cp.session {
                    s.cwd = line.path.clone();
                }
            }
            Role::Get => {
                set_state(
                    cp,
                    LineState::Fetch {
                        session: session.to_owned(),
                        cloud: cloud.to_owned(),
                        since_ms: now_ms(),
                    },
                );
                return Drive::Continue;
            }
            Role::Output => {
                if let Phase::Rtr { output, .. } = &mut cp.phase {
                    *output = Some(stdout.to_owned());
                }
            }
            Role::Plain => {}
        }
        self.next_line(ctx, cp, Some(cloud))
    }

    /// Moves past the current line; after the last, the command's result.
    pub(super) fn next_line(
        &self,
        ctx: &RunContext<'_>,
        cp: &mut Checkpoint,
        cloud: Option<&str>,
    ) -> Drive {
        if let Phase::Rtr { sub, state, .. } = &mut cp.phase {
            *sub += 1;
            *state = LineState::Ready;
        }
        // The line ended: a stop from here on is not about a request in flight.
        cp.cursor.sent = false;
        match &cp.phase {
            Phase::Rtr { plan, sub, .. } if *sub >= plan.len() => {
                let Drive::Finished(update) = self.command_result(ctx, cp) else {
                    return Drive::Continue;
                };
                Drive::Finished(
                    update.with_vendor(cloud.map(str::to_owned), Some("complete".into())),
                )
            }
            _ => Drive::Continue,
        }
    }

    fn command_result(&self, ctx: &RunContext<'_>, cp: &mut Checkpoint) -> Drive {
        let index = cp.cursor.index;
        let Phase::Rtr { output, file, cut, .. } = std::mem::take(&mut cp.phase) else {
            return Drive::Continue;
        };
        if cut {
            tracing::debug!(run = %ctx.run_id, index, "the command's output was cut at max_output_bytes");
        }
        Drive::Finished(match plan::result(ctx, &ctx.commands[index], output.as_deref(), file) {
            Ok(result) => CommandUpdate::succeeded(index, result),
            Err(error) => CommandUpdate::failed(index, error),
        })
    }
}

/// The session tag (`origin`, §12): the run id, so that sessions say whose they are.
pub(super) fn origin(ctx: &RunContext<'_>) -> String {
    format!("edrgate:{}", ctx.run_id)
}

pub(super) fn set_state(cp: &mut Checkpoint, new: LineState) {
    if let Phase::Rtr { state, .. } = &mut cp.phase {
        *state = new;
    }
}

fn touch(cp: &mut Checkpoint) {
    if let Some(s) = &mut cp.session {
        s.used_ms = now_ms();
    }
}

pub(super) fn missing_host() -> AdapterError {
    AdapterError::transient(
        ErrorCode::VendorUnavailable,
        "the batch answer did not mention this host",
    )
}
