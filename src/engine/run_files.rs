//! The file store as a run's adapter sees it: the run's tenant's files, results created with
//! their custody (action, run, command, backend, device, vendor reference, remote path), and
//! files to send verified before the first byte goes to the vendor.

use async_trait::async_trait;
use edrgate_adapter::adapter::{FileReader, FileWriter};
use edrgate_adapter::{AdapterError, FileRef, RunFiles};

use super::Engine;
use crate::store::{FileOrigin, RunRecord};

/// The file store as a run sees it: its tenant's files, with custody filled in.
pub(super) struct EngineRunFiles<'a> {
    pub(super) engine: &'a Engine,
    pub(super) run: &'a RunRecord,
}

#[async_trait]
impl RunFiles for EngineRunFiles<'_> {
    async fn create(&self, index: usize, name: &str) -> Result<Box<dyn FileWriter>, AdapterError> {
        let run = self.run;
        let origin = FileOrigin {
            action_id: Some(run.action_id),
            run_id: Some(run.id),
            command_index: Some(index),
            backend: run.backend.clone(),
            device_id: run.device_id.clone(),
            hostname: run.hostname.clone(),
            vendor_ref: run.states.get(index).and_then(|s| s.vendor_ref.clone()),
            remote_path: run.request.commands.get(index).and_then(remote_path),
            ..Default::default()
        };
        // Fetched evidence has no size cap: a memory dump is as large as the endpoint's RAM.
        Ok(Box::new(self.engine.files.create(&run.tenant, name, origin, None).await?))
    }

    async fn open(&self, file_id: &str) -> Result<(FileRef, FileReader), AdapterError> {
        // Checked whole before a byte goes to the vendor: a corrupted tool fails the command
        // at once (not retryable) instead of failing every upload attempt on its last chunk.
        // The stream handed over is verified again as it is read.
        self.engine.files.verify(&self.run.tenant, file_id).await?;
        let (meta, content) = self.engine.files.open(&self.run.tenant, file_id, None).await?;
        Ok((
            FileRef { file_id: meta.id, name: meta.name, size: meta.size, sha256: meta.sha256 },
            Box::new(tokio_util::io::StreamReader::new(content)),
        ))
    }
}

/// The endpoint path a command reads a result from, when the caller named it.
fn remote_path(command: &edrgate_adapter::Command) -> Option<String> {
    use edrgate_adapter::Command;
    match command {
        Command::GetFile { path, .. } => Some(path.clone()),
        Command::MemoryDump { path, .. } => path.clone(),
        Command::Execute { output_file, .. } => output_file.clone(),
        _ => None,
    }
}
