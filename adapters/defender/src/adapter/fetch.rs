//! Results of a finished action: links requested and downloaded right away (they expire),
//! GetFile output un-gzipped into the file store, RunScript blobs read and turned into results.

use std::io::Write as _;

use async_trait::async_trait;
use edrgate_adapter::adapter::FileWriter;
use edrgate_adapter::{AdapterError, Command, CommandResult, ErrorCode, ErrorInfo, RunContext};
use futures::StreamExt as _;

use super::DefenderAdapter;
use crate::mapping;
use crate::wire;

/// Bytes of script or execute output returned inline (the whole output is a result file).
const OUTPUT_INLINE_LIMIT: usize = 64 * 1024;
/// Largest RunScript result blob read (it is JSON holding the script's output).
const SCRIPT_BLOB_LIMIT: usize = 32 * 1024 * 1024;

impl DefenderAdapter {
    /// The result of a completed command whose main live-response command is `lr`.
    pub(super) async fn result_of(
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
                // Saturating: an `offset + length` past `u64::MAX` reads to the end, never wraps.
                let stop = length.map(|l| start.saturating_add(l));
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
                let script = match wire::ScriptResult::parse(&blob) {
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
