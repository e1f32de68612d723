//! Files (§8): a `get`'s upload awaited in `file/v2`, its 7z (AES-256, password `infected`,
//! one entry) streamed to a temporary file, opened, and its entry streamed into the file
//! store (offset/length applied here: RTR has no partial read); the put-files library for
//! `put_file`, named by content hash so that staging is idempotent.

use edrgate_adapter::driver::{Drive, RunOps as _};
use edrgate_adapter::{
    AdapterError, Command, CommandUpdate, ErrorCode, ErrorInfo, RunContext, http,
};

use super::plan::{Role, Rtr, quote, split_path};
use super::session::set_state;
use super::{Checkpoint, CrowdStrikeAdapter, LineState, Phase, timed_out};
use crate::client::Tier;

/// The password of every archive `extracted-file-contents` returns (§8.2).
pub const ARCHIVE_PASSWORD: &str = "infected";
/// Chunk size of a file streamed out of the archive.
const CHUNK: usize = 64 * 1024;

impl CrowdStrikeAdapter {
    /// Waits for the `get`'s file in `file/v2` (matched by cloud request id), then stores it.
    pub(super) async fn poll_fetch(
        &self,
        ctx: &RunContext<'_>,
        cp: &mut Checkpoint,
        updates: &mut Vec<CommandUpdate>,
        session: &str,
        cloud: &str,
        since_ms: i64,
    ) -> Result<Drive, AdapterError> {
        let index = cp.cursor.index;
        let files = self.client.session_files(session).await?;
        let Some(entry) = files.into_iter().find(|f| f.cloud_request_id == cloud) else {
            return self.wait_upload(index, cloud, since_ms);
        };
        if !entry.error_message.is_empty() {
            return Ok(Drive::Finished(CommandUpdate::failed(
                index,
                ErrorInfo::new(ErrorCode::CommandFailed, "the host could not upload the file")
                    .with_vendor("file/v2", entry.error_message),
            )));
        }
        if !entry.complete || entry.sha256.is_empty() {
            return self.wait_upload(index, cloud, since_ms);
        }
        let (offset, length) = match &ctx.commands[index] {
            Command::GetFile { offset, length, .. } => (*offset, *length),
            _ => (None, None),
        };
        let name = split_path(&entry.name).1;
        let name = if name.is_empty() { entry.sha256.clone() } else { name };
        let resp = self.client.file_contents(session, &entry.sha256, &name).await?;
        let file = match store_archive(ctx, index, &name, resp, offset, length).await? {
            Ok(file) => file,
            Err(error) => return Ok(Drive::Finished(CommandUpdate::failed(index, error))),
        };
        if let Phase::Rtr { file: slot, .. } = &mut cp.phase {
            *slot = Some(file);
        }
        // Kept before the cloud copy is deleted, so a crash here does not need it again.
        self.persist(ctx, cp, updates).await?;
        if let Err(e) = self.client.delete_session_file(session, &entry.id).await {
            tracing::debug!(run = %ctx.run_id, error = %e, "deleting the retrieved file from the cloud failed");
        }
        Ok(self.next_line(ctx, cp, Some(cloud)))
    }

    /// Whether the library holds `name`: `Some(Ok)` with our content, `Some(Err)` with
    /// another, `None` not at all.
    async fn staged(
        &self,
        name: &str,
        sha256: &str,
    ) -> Result<Option<Result<(), ErrorInfo>>, AdapterError> {
        let present = self.client.put_files_named(name).await?;
        Ok(present.first().map(|_| {
            match present
                .iter()
                .find(|f| !f.sha256.is_empty() && !f.sha256.eq_ignore_ascii_case(sha256))
            {
                Some(other) => Err(library_conflict(name, &other.sha256)),
                None => Ok(()),
            }
        }))
    }

    fn wait_upload(&self, index: usize, cloud: &str, since_ms: i64) -> Result<Drive, AdapterError> {
        if self.timed_out(since_ms) {
            return Ok(Drive::Finished(timed_out(
                index,
                "the file upload",
                self.cfg.command_timeout_secs,
                Some(cloud.to_owned()),
            )));
        }
        Ok(Drive::Wait(self.poll_delay(since_ms)))
    }

    /// The put-files library name of a stored file: `edrgate-<sha256[:16]>` (§8.3).
    pub(super) async fn library_name(
        &self,
        ctx: &RunContext<'_>,
        file_id: &str,
    ) -> Result<String, AdapterError> {
        let (file, _) = ctx.files.open(file_id).await?;
        let prefix: String = file.sha256.chars().take(16).collect();
        Ok(format!("edrgate-{prefix}"))
    }

    /// `put_file`, first part: the content in the put-files library (§8.3). The upload is
    /// journaled, then sent; a 409 (the name is taken: an earlier run staged the same
    /// content) and a lost answer are settled by looking the name up and comparing sha256.
    /// Then the RTR lines: `cd`, `put`, `mv`.
    pub(super) async fn stage(
        &self,
        ctx: &RunContext<'_>,
        cp: &mut Checkpoint,
        updates: &mut Vec<CommandUpdate>,
        name: String,
        intent: bool,
    ) -> Result<Drive, AdapterError> {
        let index = cp.cursor.index;
        let Command::PutFile { file_id, path } = &ctx.commands[index] else {
            return Err(AdapterError::internal("stage outside put_file"));
        };
        let (file, reader) = ctx.files.open(file_id).await?;
        let staged = if intent {
            self.staged(&name, &file.sha256).await?
        } else {
            cp.phase = Phase::Stage { name: name.clone(), intent: true };
            self.record(ctx, cp, updates)
                .await
                .inspect_err(|_| cp.phase = Phase::Stage { name: name.clone(), intent })?;
            None
        };
        let staged = match staged {
            Some(found) => found,
            None => {
                let comment = format!("edrgate run {}", ctx.run_id);
                match self.client.upload_put_file(&name, reader, file.size, &comment).await {
                    Ok(()) => Ok(()),
                    Err(e) if e.code() == ErrorCode::Conflict => self
                        .staged(&name, &file.sha256)
                        .await?
                        .unwrap_or_else(|| Err(library_conflict(&name, ""))),
                    Err(e) if e.is_retryable() => return Err(e),
                    Err(e) => Err(e.info),
                }
            }
        };
        if let Err(error) = staged {
            return Ok(Drive::Finished(CommandUpdate::failed(index, error)));
        }
        let (dir, target) = split_path(path);
        let level = self.cfg.permission_level;
        let mut put = Rtr {
            line: format!("put {}", quote(&name)),
            tier: super::tier_for(level, Tier::Admin),
            effect: true,
            role: Role::Plain,
            cwd: Some(dir.clone()),
            path: None,
        };
        if dir.is_empty() {
            put.cwd = None;
        }
        // `mv` would replace an existing target: refused first, as `put` refuses its own
        // (`put: Destination already exists.`, §8.3).
        let mut plan = vec![Rtr {
            line: format!("ls {}", quote(path)),
            tier: Tier::ReadOnly,
            effect: false,
            role: Role::MustNotExist,
            cwd: None,
            path: Some(path.clone()),
        }];
        plan.push(put);
        if target != name {
            let sep = if dir.contains('\\') || !dir.contains('/') { "\\" } else { "/" };
            let staged = format!("{}{sep}{name}", dir.trim_end_matches(['\\', '/']));
            plan.push(Rtr {
                line: format!("mv {} {}", quote(&staged), quote(path)),
                tier: super::tier_for(level, Tier::ActiveResponder),
                effect: true,
                role: Role::Plain,
                cwd: None,
                path: None,
            });
        }
        cp.phase = Phase::rtr(plan);
        set_state(cp, LineState::Ready);
        Ok(Drive::Continue)
    }
}

/// Another file under our content-hash name (a truncated-hash collision, or a hand-made
/// upload).
fn library_conflict(name: &str, sha256: &str) -> ErrorInfo {
    ErrorInfo::new(
        ErrorCode::Conflict,
        format!("the put-files library holds another file named {name}"),
    )
    .with_vendor("409", sha256)
}

/// Spools the archive to an anonymous temporary file (7z needs seeking), opens it with the
/// fixed password and streams its one entry into the store, cut to `offset`/`length`.
/// `Ok(Err(_))`: the archive itself is unusable (reported on the command).
async fn store_archive(
    ctx: &RunContext<'_>,
    index: usize,
    name: &str,
    resp: reqwest::Response,
    offset: Option<u64>,
    length: Option<u64>,
) -> Result<Result<edrgate_adapter::FileRef, ErrorInfo>, AdapterError> {
    let internal =
        |what: &str, e: &dyn std::fmt::Display| AdapterError::internal(format!("{what}: {e}"));
    let spool = tokio::task::spawn_blocking(tempfile::tempfile)
        .await
        .map_err(|e| internal("temporary file", &e))?
        .map_err(|e| internal("temporary file", &e))?;
    let spool = http::spool(resp, spool).await?;

    let (tx, mut rx) = tokio::sync::mpsc::channel::<Vec<u8>>(4);
    let reader = tokio::task::spawn_blocking(move || extract_single(spool, &tx));
    let mut writer = ctx.files.create(index, name).await?;
    let mut range = edrgate_adapter::ByteRange::new(offset, length);
    while let Some(chunk) = rx.recv().await {
        let part = range.keep(&chunk);
        if !part.is_empty() {
            writer.write(part).await?;
        }
    }
    if let Err(message) = reader.await.map_err(|e| internal("archive task", &e))? {
        return Ok(Err(ErrorInfo::new(ErrorCode::CommandFailed, message)));
    }
    Ok(Ok(writer.commit().await?))
}

/// Streams the single file of the 7z to `tx` (§8.2: exactly one entry, as Caracara checks).
/// Runs on a blocking thread.
fn extract_single(
    spool: std::fs::File,
    tx: &tokio::sync::mpsc::Sender<Vec<u8>>,
) -> Result<(), String> {
    let password = sevenz_rust2::Password::from(ARCHIVE_PASSWORD);
    let mut archive = sevenz_rust2::ArchiveReader::new(spool, password)
        .map_err(|e| format!("the retrieved archive does not open as a 7z with the password {ARCHIVE_PASSWORD:?}: {e}"))?;
    let files = archive.archive().files.iter().filter(|f| !f.is_directory).count();
    if files != 1 {
        return Err(format!("the retrieved archive holds {files} files, not one"));
    }
    let mut failure = None;
    archive
        .for_each_entries(|entry, data| {
            if entry.is_directory {
                return Ok(true);
            }
            let mut buf = vec![0u8; CHUNK];
            loop {
                let n = data.read(&mut buf)?;
                if n == 0 {
                    return Ok(true);
                }
                if tx.blocking_send(buf[..n].to_vec()).is_err() {
                    failure = Some("the file store stopped accepting the file".to_owned());
                    return Ok(false);
                }
            }
        })
        .map_err(|e| format!("reading the retrieved archive: {e}"))?;
    failure.map_or(Ok(()), Err)
}
