//! Live-response batches: planning (the vendor's command order), library uploads, budgets,
//! the journaled submission, polling, and the batch's outcomes.

use std::collections::{HashMap, HashSet};
use std::sync::MutexGuard;

use edrgate_adapter::driver::{Drive, RunOps as _};
use edrgate_adapter::{
    AdapterError, Command, CommandUpdate, ErrorCode, ErrorInfo, OnError, RunContext, Status,
};

use super::{
    Checkpoint, DefenderAdapter, HelperMode, Phase, TAG_PREFIX, comment, has_tag, now, refused,
    too_large,
};
use crate::mapping::{self, Helper};
use crate::wire::{self, LrCommand, MachineAction, keys, kinds};

/// One live-response command of a batch and the normalized command it serves.
pub(super) struct Slot {
    pub(super) command: usize,
    lr: LrCommand,
    pub(super) role: Role,
}

#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Role {
    /// Carries the command's result.
    Main,
    /// `put_file`'s PutFile: no result of its own.
    Upload,
}

impl DefenderAdapter {
    /// Prepares, budgets, records and submits the batch starting at the cursor.
    pub(super) async fn start_batch(
        &self,
        ctx: &RunContext<'_>,
        cp: &mut Checkpoint,
        updates: &mut Vec<CommandUpdate>,
    ) -> Result<Drive, AdapterError> {
        let mut end = plan_end(ctx.commands, cp.cursor.index, ctx.on_error);
        // put_file payloads: the size cap is checked before any vendor call (§8.1).
        let mut payloads = HashMap::new();
        for i in cp.cursor.index..end {
            if let Some(file_id) = ctx.commands[i].file_id() {
                let (file, _) = ctx.files.open(file_id).await?;
                if file.size > self.cfg.max_upload_bytes {
                    if i == cp.cursor.index {
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
        // edrgate's helpers are PowerShell with Windows paths: on a Linux or macOS machine
        // (its `osPlatform`, read once), helper-backed commands are refused before any
        // live-response call, and a batch stops before the first of them.
        let start = cp.cursor.index;
        if (start..end).any(|i| mapping::helper_backed(&ctx.commands[i]))
            && let Some(os) = mapping::non_windows(&self.platform(cp).await?).map(str::to_owned)
        {
            if mapping::helper_backed(&ctx.commands[start]) {
                let update = CommandUpdate::failed(
                    start,
                    mapping::not_on_os(ctx.commands[start].kind(), &os),
                );
                self.command_done(ctx, cp, updates, update);
                return Ok(Drive::Continue);
            }
            end = (start..end).find(|&i| mapping::helper_backed(&ctx.commands[i])).unwrap_or(end);
            payloads.retain(|i, _| *i < end);
        }
        let slots = build_batch(ctx.commands, cp.cursor.index, end, &payloads);
        // The library first: uploads are idempotent and need no session.
        let mut helpers: Vec<Helper> = Vec::new();
        for helper in
            slots.iter().filter_map(|s| Helper::from_library_name(s.lr.param(keys::SCRIPT_NAME)?))
        {
            if !helpers.contains(&helper) {
                helpers.push(helper);
            }
        }
        for helper in helpers {
            self.ensure_helper(helper).await?;
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
        // The token first, so no token request sits between the shared quota and the call.
        self.client.warm_token().await?;
        let permit = tokio::select! {
            p = self.client.budget.live_response.acquire() => p,
            // The stop check before the next move closes the run.
            _ = ctx.stop.stopped() => return Ok(Drive::Continue),
        };
        let tag = format!("{TAG_PREFIX}{}:{}", ctx.run_id, cp.cursor.index);
        let at = now();
        cp.phase = Phase::Intent { end, tag: tag.clone(), at, since: None };
        if let Err(e) = self.record(ctx, cp, updates).await {
            // Not journaled, so not sent.
            cp.phase = Phase::Ready;
            return Err(e);
        }
        // With other replicas, the credential's call quota must also allow it among them all.
        // The shared quota counts a call when it is taken, not when Defender receives it, so
        // it is taken last, right before the call (after the journal write, whose time under
        // load was seen to exceed the margin and let two replicas' calls arrive closer than
        // they were counted), and the store widens its window by a margin (a twentieth, at
        // least 250 ms) for the rest. A refusal leaves nothing sent: the step ends `Ready`
        // again, which the driver stores over the intent (and an intent a crash left is
        // reconciled by its tag).
        //
        // Across a replica's death: the quota row is committed by `take_call` itself, before
        // the request leaves, so a call a replica made (or was making) when it was killed is
        // counted; the replica taking the run over reconciles by the tag and calls nothing.
        // A dead replica's call can arrive after its row only by the time between the two
        // (it cannot send once dead), and within the margin that is covered. What remains
        // outside the margin: the connection (a TLS handshake of a new connection under load,
        // up to the connect timeout) and a 401 renewal (`send` fetches a token and posts
        // again). The token is therefore fetched before the quota (above); a handshake slower
        // than the margin can still let a call arrive later than it was counted, which only
        // a second row at the answer's time would cover (see the H5 report).
        if let Some(budget) = self.shared.get().filter(|b| b.is_shared()) {
            let scope = format!("{}:runliveresponse", self.scope);
            // The vendor's window: the store widens it by its margin (`PgBudget::call`).
            if let Some(wait) =
                budget.take_call(&scope, self.cfg.live_response_calls, self.cfg.lr_window()).await?
            {
                permit.unused();
                cp.phase = Phase::Ready;
                return Ok(Drive::Wait(wait));
            }
        }
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
                cp.phase = Phase::Intent { end, tag, at, since: Some(now()) };
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
                let index = cp.cursor.index;
                for i in index..end {
                    if cp.cursor.index != i {
                        break;
                    }
                    self.command_done(ctx, cp, updates, CommandUpdate::failed(i, info.clone()));
                }
                Ok(Drive::Continue)
            }
            // Ambiguous (transport, 5xx): the action may exist; the tag tells (reconcile). The
            // visibility grace starts now, when the call ended: a call that took longer than
            // the grace (a slow answer, then none) would otherwise leave no time for reads to
            // show the action, and the batch would be sent twice.
            Err(e) => {
                cp.phase = Phase::Intent { end, tag, at, since: Some(now()) };
                Err(e)
            }
        }
    }

    pub(super) fn submitted(
        &self,
        ctx: &RunContext<'_>,
        cp: &mut Checkpoint,
        updates: &mut Vec<CommandUpdate>,
        action: &MachineAction,
        end: usize,
    ) {
        for i in cp.cursor.index..end {
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
            reported: vec![action.status.clone(); end - cp.cursor.index],
        };
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) async fn poll(
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
        let action = match self.poll_action(ctx, id, at, seen).await? {
            Ok(action) => action,
            Err(drive) => return Ok(drive),
        };
        let status = mapping::action_status(&action.status);
        if !status.is_terminal() {
            // A live action holds its machine's slot, also after a restart.
            if let Some(drive) = self.ensure_slot(ctx, &cp.machine_id).await? {
                return Ok(drive);
            }
            let results = action.commands.clone().unwrap_or_default();
            let slots = self.slots_of(ctx, cp.cursor.index, end).await?;
            reported.resize(end - cp.cursor.index, String::new());
            for i in cp.cursor.index..end {
                let word =
                    main_status(&slots, &results, i).unwrap_or_else(|| action.status.clone());
                if reported[i - cp.cursor.index] != word {
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
                    reported[i - cp.cursor.index] = word;
                }
            }
            cp.phase = Phase::Running { id: id.to_owned(), end, at, seen: true, reported };
            return Ok(Drive::Wait(self.poll_delay(at)));
        }
        // The action ended: its session is free, and results are fetched now (links expire).
        self.release_slot(ctx.run_id);
        self.collect(ctx, cp, updates, &action, end).await
    }

    /// Machine action `id` from the shared poller, or what the step does instead: go on after
    /// a stop, wait while a fresh action is not yet visible to reads (§4.5), or fail once a
    /// seen action (or one past the grace) is gone.
    pub(super) async fn poll_action(
        &self,
        ctx: &RunContext<'_>,
        id: &str,
        at: f64,
        seen: bool,
    ) -> Result<Result<MachineAction, Drive>, AdapterError> {
        let poll = tokio::select! {
            got = self.poller.get(id) => got?,
            _ = ctx.stop.stopped() => return Ok(Err(Drive::Continue)),
        };
        match poll {
            Some(action) => Ok(Ok(action)),
            None if !seen && now() - at < self.cfg.visibility_grace_secs as f64 => {
                Ok(Err(Drive::Wait(self.cfg.poll_min())))
            }
            None => Err(AdapterError::new(
                ErrorCode::VendorUnavailable,
                format!("Defender no longer shows machine action {id}"),
            )),
        }
    }

    /// Turns a finished action into the batch's command outcomes, downloading results.
    pub(super) async fn collect(
        &self,
        ctx: &RunContext<'_>,
        cp: &mut Checkpoint,
        updates: &mut Vec<CommandUpdate>,
        action: &MachineAction,
        end: usize,
    ) -> Result<Drive, AdapterError> {
        // `commands` is nullable in the list answer (§4.2); the action itself always has them.
        let fetched;
        let action = match &action.commands {
            Some(_) => action,
            None => {
                fetched = self.client.action(&action.id).await?;
                &fetched
            }
        };
        let results = action.commands.clone().unwrap_or_default();
        let slots = self.slots_of(ctx, cp.cursor.index, end).await?;
        let action_status = mapping::action_status(&action.status);
        let mut saw_failure = false;
        while cp.cursor.index < end {
            let i = cp.cursor.index;
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

    /// The batch `[start, end)` as submitted (rebuilt from the commands: deterministic).
    pub(super) async fn slots_of(
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

    /// A helper in the library. Unsigned mode: edrgate's copy, uploaded when missing. Signed
    /// mode: the operator's signed copy must be there (or is uploaded from
    /// `signed_scripts_dir`); edrgate's unsigned copy is never uploaded. Whenever edrgate
    /// uploads a helper, the superseded versions of it are deleted from the library.
    pub(super) async fn ensure_helper(&self, helper: Helper) -> Result<(), AdapterError> {
        let name = helper.library_name();
        let content: &[u8] = match &self.helpers {
            HelperMode::Unsigned => helper.source().as_bytes(),
            HelperMode::Signed(copies) => {
                if self.verified_helpers().contains(&helper) {
                    return Ok(());
                }
                let copy = copies.as_ref().and_then(|c| c.get(&helper));
                let files = self.client.library().await?;
                self.known().extend(files.iter().map(|f| f.file_name.clone()));
                match signed_state(helper, copy, &files)? {
                    SignedState::Present => {
                        self.verified_helpers().insert(helper);
                        return Ok(());
                    }
                    SignedState::Upload(copy) => copy,
                }
            }
        };
        let description = match self.helpers {
            HelperMode::Unsigned => "edrgate helper script",
            HelperMode::Signed(_) => "edrgate helper script (signed)",
        };
        let uploaded = self
            .ensure_library(
                &name,
                || async {
                    let reader: edrgate_adapter::adapter::FileReader =
                        Box::new(std::io::Cursor::new(content.to_vec()));
                    Ok((reader, content.len() as u64))
                },
                description,
            )
            .await?;
        if matches!(self.helpers, HelperMode::Signed(_)) {
            self.verified_helpers().insert(helper);
        }
        if uploaded {
            self.clean_superseded(helper).await;
        }
        Ok(())
    }

    /// Deletes the library's other versions of `helper` (edrgate's naming pattern only), as
    /// the last listing showed them. Best effort: a failure is logged and tried again after
    /// the next upload.
    async fn clean_superseded(&self, helper: Helper) {
        let old: Vec<String> =
            self.known().iter().filter(|n| helper.is_superseded_name(n)).cloned().collect();
        for name in old {
            match self.client.delete_library(&name).await {
                Ok(()) => {
                    tracing::info!(file = %name, "deleted a superseded edrgate helper from the live-response library");
                    self.known().remove(&name);
                }
                Err(e) => {
                    tracing::warn!(file = %name, error = %e, "deleting a superseded edrgate helper failed")
                }
            }
        }
    }

    fn verified_helpers(&self) -> MutexGuard<'_, HashSet<Helper>> {
        self.verified.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Ensures `name` is in the library, uploading it when missing; `true` when it uploaded.
    pub(super) async fn ensure_library<F, Fut>(
        &self,
        name: &str,
        open: F,
        description: &str,
    ) -> Result<bool, AdapterError>
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<
                Output = Result<(edrgate_adapter::adapter::FileReader, u64), AdapterError>,
            >,
    {
        if self.known().contains(name) {
            return Ok(false);
        }
        // A fan-out's runs need the same helper at the same moment. Without this each listed
        // the library, found it missing and uploaded it again with `OverrideIfExists`: a
        // hundred overwrites of a file other runs' RunScripts were already naming, which the
        // service does not promise to serve consistently (and which, racing the upload of the
        // same multipart name, is the only request of the 100-machine benchmark that varied
        // between runs: issue 12, point 7). One run lists and uploads; the others wait here and
        // then find the name known.
        let stripe = {
            use std::hash::{Hash as _, Hasher as _};
            let mut hasher = std::collections::hash_map::DefaultHasher::new();
            name.hash(&mut hasher);
            usize::try_from(hasher.finish() % self.uploading.len() as u64).unwrap_or_default()
        };
        let _one = self.uploading[stripe].lock().await;
        if self.known().contains(name) {
            return Ok(false);
        }
        let listed: HashSet<String> =
            self.client.library().await?.into_iter().map(|f| f.file_name).collect();
        let present = listed.contains(name);
        self.known().extend(listed);
        if present {
            return Ok(false);
        }
        let (reader, size) = open().await?;
        let uploaded = self.client.upload(name, reader, size, description).await?;
        self.known().insert(uploaded.file_name);
        Ok(true)
    }

    pub(super) fn known(&self) -> MutexGuard<'_, HashSet<String>> {
        self.library.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// What signed mode finds in the library for a helper.
pub(super) enum SignedState<'a> {
    /// The library holds a copy that is not edrgate's unsigned one (and, with
    /// `signed_scripts_dir`, is the operator's signed copy).
    Present,
    /// Missing; this signed copy from `signed_scripts_dir` is to be uploaded.
    Upload(&'a [u8]),
}

/// Signed mode's check of one helper against a library listing. The API lists a file's
/// `sha256`, not its content (§8.2), so the content before the signature block is compared
/// where edrgate has the signed copy (`signed_scripts_dir`, at build); in the library, the
/// name carries the content version and the hash tells edrgate's unsigned copy (or another
/// file) from the signed one.
pub(super) fn signed_state<'a>(
    helper: Helper,
    copy: Option<&'a Vec<u8>>,
    files: &[wire::LibraryFile],
) -> Result<SignedState<'a>, AdapterError> {
    use sha2::{Digest as _, Sha256};
    let name = helper.library_name();
    let refuse = |why: String| {
        AdapterError::new(
            ErrorCode::VendorRejected,
            format!(
                "{why}. This backend runs only signed helpers (unsigned_scripts = false): Defender refuses unsigned scripts unless the tenant's \"{}\" setting is on (see adapters/defender/scripts/README.md)",
                mapping::UNSIGNED_SETTING
            ),
        )
    };
    let Some(file) = files.iter().find(|f| f.file_name.eq_ignore_ascii_case(&name)) else {
        return match copy {
            Some(copy) => Ok(SignedState::Upload(copy)),
            None => Err(refuse(format!(
                "the live-response library has no signed copy of edrgate's {} helper: sign scripts/{}.ps1 and upload it as {name}, or set signed_scripts_dir",
                helper.name(),
                helper.name()
            ))),
        };
    };
    let listed = file.sha256.as_deref().unwrap_or_default().to_ascii_lowercase();
    if listed == hex::encode(Sha256::digest(helper.source().as_bytes())) {
        return Err(refuse(format!(
            "the live-response library's {name} is edrgate's unsigned copy of the {} helper: delete it from the library and upload the signed copy under that name",
            helper.name()
        )));
    }
    if let Some(copy) = copy
        && !listed.is_empty()
        && listed != hex::encode(Sha256::digest(copy))
    {
        return Err(refuse(format!(
            "the live-response library's {name} is not the signed copy in signed_scripts_dir: delete it from the library and edrgate uploads the signed copy"
        )));
    }
    Ok(SignedState::Present)
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
}
