//! Files (§6.4): the direct fetch and the batch flow; the fetched zip is spooled, opened and
//! streamed into the file store.

use edrgate_adapter::driver::Drive;
use edrgate_adapter::{
    AdapterError, Command, CommandResult, CommandUpdate, ErrorCode, ErrorInfo, RunContext,
};
use secrecy::ExposeSecret as _;

use super::remediate::one_element;
use super::{Checkpoint, CybereasonAdapter, Phase, SensorIds, element_query, now_ms, timed_out};
use crate::mapping::CrError;
use crate::wire;

/// Chunk size of a file streamed out of the fetched zip.
const ZIP_CHUNK: usize = 64 * 1024;

impl CybereasonAdapter {
    /// The direct fetch (§6.4): one request by path and pylum id.
    pub(super) async fn get_file(
        &self,
        ctx: &RunContext<'_>,
        index: usize,
        sensor: &SensorIds,
        path: &str,
    ) -> Result<CommandUpdate, CrError> {
        let Some(resp) = self.client.fetch_direct(path, &sensor.pylum_id).await? else {
            return Ok(CommandUpdate::failed(
                index,
                ErrorInfo::new(ErrorCode::FileNotFound, format!("the sensor has no file {path:?}")),
            ));
        };
        let update = self.store_zip(ctx, index, resp).await?;
        Ok(update
            .with_vendor(Some(format!("fetch-direct/{}", sensor.pylum_id)), Some("SUCCESS".into())))
    }

    /// The batch flow, first move: find the file's element, note the batches of its name
    /// that already exist, start the fetch. Reading a file changes no endpoint, so no intent
    /// is journaled; a repeated start only costs a second download.
    pub(super) async fn start_fetch(
        &self,
        cp: &mut Checkpoint,
        sensor: &SensorIds,
        path: &str,
    ) -> Result<Drive, CrError> {
        let query = element_query(
            &sensor.machine,
            "files",
            "File",
            "correctedPath",
            path.to_lowercase().into(),
        );
        let found = self.elements(&query, sensor).await?;
        let missing = || {
            ErrorInfo::new(
                ErrorCode::FileNotFound,
                format!("Cybereason knows no file {path:?} on the machine"),
            )
        };
        let guid = match one_element(found, missing, "files", &format!("path {path:?}")) {
            Ok(guid) => guid,
            Err(error) => {
                return Ok(Drive::Finished(CommandUpdate::failed(cp.cursor.index, error)));
            }
        };
        let name = file_name(path);
        let known = self
            .client
            .fetch_progress()
            .await?
            .into_iter()
            .filter(|p| p.file_name.eq_ignore_ascii_case(&name))
            .filter_map(|p| p.batch_id)
            .collect();
        let envelope = self.client.fetch_start(&guid).await?;
        if !matches!(envelope.status.as_str(), "SUCCESS" | "PARTIAL_SUCCESS") {
            return Ok(Drive::Finished(CommandUpdate::failed(
                cp.cursor.index,
                ErrorInfo::new(
                    ErrorCode::VendorRejected,
                    "Cybereason did not start the file fetch",
                )
                .with_vendor(envelope.status, envelope.message.unwrap_or_default()),
            )));
        }
        cp.phase = Phase::Fetch { name, at_ms: now_ms(), known };
        Ok(Drive::Continue)
    }

    /// The batch flow, later moves: wait for the batch of our file name to succeed, download
    /// its zip (a 500 means the batch expired, §6.4), then close it.
    pub(super) async fn poll_fetch(
        &self,
        ctx: &RunContext<'_>,
        cp: &mut Checkpoint,
        sensor: &SensorIds,
        name: &str,
        at_ms: i64,
        known: &[i64],
    ) -> Result<Drive, CrError> {
        let progress = self.client.fetch_progress().await?;
        let entry = progress.iter().find(|p| {
            p.file_name.eq_ignore_ascii_case(name)
                && p.batch_id.is_some_and(|b| !known.contains(&b))
        });
        if let Some(wire::FetchProgress { succeeded: true, batch_id: Some(batch), .. }) = entry {
            let vref = Some(format!("fetchfile/{batch}"));
            let update = match self.client.fetch_files(*batch).await {
                Ok(resp) => self.store_zip(ctx, cp.cursor.index, resp).await?,
                Err(CrError::Api(e)) if e.info.vendor_code.as_deref() == Some("500") => {
                    CommandUpdate::failed(
                        cp.cursor.index,
                        ErrorInfo::new(
                            ErrorCode::CommandFailed,
                            "the fetch batch expired on the console",
                        )
                        .with_vendor("500", ""),
                    )
                }
                Err(e) => return Err(e),
            };
            if let Err(e) = self.client.fetch_close(*batch).await {
                tracing::debug!(error = %e, batch, "closing the fetch batch failed");
            }
            return Ok(Drive::Finished(update.with_vendor(vref, Some("succeeded".into()))));
        }
        if now_ms() - at_ms > self.action_timeout_ms() {
            return Ok(Drive::Finished(timed_out(
                cp.cursor.index,
                self.cfg.action_timeout_secs,
                format!("fetchfile/{}", sensor.pylum_id),
            )));
        }
        Ok(Drive::Wait(self.poll_delay(at_ms)))
    }

    /// Stores the file inside a fetched zip: the zip is spooled to an anonymous temporary file
    /// (the format needs seeking), then the first file in it is decrypted and streamed into
    /// the store, never held whole in memory. The command's `offset`/`length` cut it.
    pub(super) async fn store_zip(
        &self,
        ctx: &RunContext<'_>,
        index: usize,
        resp: reqwest::Response,
    ) -> Result<CommandUpdate, CrError> {
        let (path, offset, length) = match &ctx.commands[index] {
            Command::GetFile { path, offset, length } => (path.as_str(), *offset, *length),
            _ => return Err(CrError::Api(AdapterError::internal("store_zip outside get_file"))),
        };
        let internal = |what: &str, e: &dyn std::fmt::Display| {
            CrError::Api(AdapterError::internal(format!("{what}: {e}")))
        };
        let spool = tokio::task::spawn_blocking(tempfile::tempfile)
            .await
            .map_err(|e| internal("temporary file", &e))?
            .map_err(|e| internal("temporary file", &e))?;
        let spool = edrgate_adapter::http::spool(resp, spool).await.map_err(CrError::Api)?;

        // The console's fixed password (the SDK's constant unless configured otherwise).
        let password = self.cfg.fetch_zip_password.expose_secret().as_bytes().to_vec();
        let (tx, mut rx) = tokio::sync::mpsc::channel::<Vec<u8>>(4);
        let reader = tokio::task::spawn_blocking(move || unzip_first(spool, &password, &tx));
        let name = file_name(path);
        let mut writer = ctx.files.create(index, &name).await.map_err(CrError::Api)?;
        let mut range = edrgate_adapter::ByteRange::new(offset, length);
        while let Some(chunk) = rx.recv().await {
            let part = range.keep(&chunk);
            if !part.is_empty() {
                writer.write(part).await.map_err(CrError::Api)?;
            }
        }
        match reader.await.map_err(|e| internal("unzip task", &e))? {
            Ok(()) => {}
            Err(message) => {
                return Ok(CommandUpdate::failed(
                    index,
                    ErrorInfo::new(ErrorCode::CommandFailed, message),
                ));
            }
        }
        let file = writer.commit().await.map_err(CrError::Api)?;
        Ok(CommandUpdate::succeeded(index, CommandResult::File { file }))
    }
}

/// Reads the first file of the zip (decrypting with `password` when it is encrypted) and
/// sends it in chunks. Runs on a blocking thread.
fn unzip_first(
    spool: std::fs::File,
    password: &[u8],
    tx: &tokio::sync::mpsc::Sender<Vec<u8>>,
) -> Result<(), String> {
    use std::io::Read as _;
    let mut zip = zip::ZipArchive::new(spool)
        .map_err(|e| format!("the fetched archive is not a zip: {e}"))?;
    let index = (0..zip.len())
        .find(|i| zip.by_index_data(*i).is_ok_and(|f| !f.is_dir()))
        .ok_or("the fetched archive holds no file")?;
    let encrypted = zip.by_index_raw(index).is_ok_and(|f| f.encrypted());
    let entry = if encrypted { zip.by_index_decrypt(index, password) } else { zip.by_index(index) };
    let mut entry = entry.map_err(|e| match e {
        zip::result::ZipError::InvalidPassword => {
            "the fetched archive did not open with fetch_zip_password (the console's fixed zip password; set it if this console uses another one)".to_owned()
        }
        other => format!("cannot open the fetched archive: {other}"),
    })?;
    let mut buf = vec![0u8; ZIP_CHUNK];
    loop {
        let n = entry.read(&mut buf).map_err(|e| format!("reading the fetched archive: {e}"))?;
        if n == 0 {
            return Ok(());
        }
        if tx.blocking_send(buf[..n].to_vec()).is_err() {
            return Err("the file store stopped accepting the file".into());
        }
    }
}

/// The last segment of an endpoint path (Windows or POSIX).
pub(super) fn file_name(path: &str) -> String {
    path.rsplit(['\\', '/']).next().filter(|n| !n.is_empty()).unwrap_or("file").to_owned()
}
