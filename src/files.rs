//! edrgate's file store: results fetched from endpoints (and, later, uploads), kept on local
//! disk with their metadata and custody in the store.
//!
//! Writes are atomic: bytes go to `tmp/` while the SHA-256 is computed on the way, and the file
//! is renamed into `<tenant>/` and recorded only on commit, so a reader never sees a partial
//! file and an abandoned transfer leaves nothing behind.

use std::path::{Path, PathBuf};

use async_trait::async_trait;
use edrgate_adapter::{AdapterError, ErrorCode, FileRef, adapter::FileWriter};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncWriteExt, BufWriter};
use uuid::Uuid;

use crate::store::{FileMeta, FileOrigin, Store, StoreError};

#[derive(Clone)]
pub struct FileStore {
    dir: PathBuf,
    store: Store,
}

impl FileStore {
    pub async fn open(dir: &Path, store: Store) -> std::io::Result<FileStore> {
        tokio::fs::create_dir_all(dir.join("tmp")).await?;
        Ok(FileStore { dir: dir.to_path_buf(), store })
    }

    /// Starts a file for `tenant`. Nothing is visible until [`FileWriter::commit`].
    pub async fn create(
        &self,
        tenant: &str,
        name: &str,
        origin: FileOrigin,
    ) -> Result<LocalWriter, AdapterError> {
        let id = Uuid::now_v7().simple().to_string();
        let tmp = self.dir.join("tmp").join(&id);
        let file = tokio::fs::File::create(&tmp).await.map_err(io_error)?;
        Ok(LocalWriter {
            id,
            tmp: Some(tmp),
            file: BufWriter::with_capacity(256 * 1024, file),
            hasher: Sha256::new(),
            written: 0,
            tenant: tenant.to_owned(),
            name: safe_name(name),
            origin,
            files: self.clone(),
        })
    }

    pub async fn meta(&self, tenant: &str, id: &str) -> Result<Option<FileMeta>, StoreError> {
        if !is_file_id(id) {
            return Ok(None);
        }
        self.store.file(tenant, id).await
    }

    /// The file's metadata and an open handle on its content.
    pub async fn open_content(
        &self,
        tenant: &str,
        id: &str,
    ) -> Result<Option<(FileMeta, tokio::fs::File)>, AdapterError> {
        let Some(meta) =
            self.meta(tenant, id).await.map_err(|e| AdapterError::internal(e.to_string()))?
        else {
            return Ok(None);
        };
        let file = tokio::fs::File::open(self.path(tenant, id)).await.map_err(io_error)?;
        Ok(Some((meta, file)))
    }

    fn path(&self, tenant: &str, id: &str) -> PathBuf {
        // Tenants are validated identifiers (config) and ids are hex: neither can escape `dir`.
        self.dir.join(tenant).join(id)
    }
}

/// A file being written; see [`FileStore::create`].
pub struct LocalWriter {
    id: String,
    tmp: Option<PathBuf>,
    file: BufWriter<tokio::fs::File>,
    hasher: Sha256,
    written: u64,
    tenant: String,
    name: String,
    origin: FileOrigin,
    files: FileStore,
}

#[async_trait]
impl FileWriter for LocalWriter {
    async fn write(&mut self, chunk: &[u8]) -> Result<(), AdapterError> {
        self.file.write_all(chunk).await.map_err(io_error)?;
        self.hasher.update(chunk);
        self.written += chunk.len() as u64;
        Ok(())
    }

    fn written(&self) -> u64 {
        self.written
    }

    async fn commit(mut self: Box<Self>) -> Result<FileRef, AdapterError> {
        self.file.flush().await.map_err(io_error)?;
        self.file.get_ref().sync_all().await.map_err(io_error)?;
        let dest_dir = self.files.dir.join(&self.tenant);
        tokio::fs::create_dir_all(&dest_dir).await.map_err(io_error)?;
        let Some(tmp) = self.tmp.take() else {
            return Err(AdapterError::internal("file committed twice"));
        };
        tokio::fs::rename(&tmp, dest_dir.join(&self.id)).await.map_err(io_error)?;
        let sha256 = hex::encode(std::mem::take(&mut self.hasher).finalize());
        let meta = FileMeta {
            id: self.id.clone(),
            name: self.name.clone(),
            size: self.written,
            sha256: sha256.clone(),
            created_at: time::OffsetDateTime::now_utc(),
            origin: std::mem::take(&mut self.origin),
        };
        self.files
            .store
            .insert_file(&self.tenant, &meta)
            .await
            .map_err(|e| AdapterError::internal(format!("cannot record file: {e}")))?;
        Ok(FileRef { file_id: meta.id, name: meta.name, size: meta.size, sha256 })
    }
}

impl Drop for LocalWriter {
    fn drop(&mut self) {
        if let Some(tmp) = self.tmp.take() {
            // Abandoned transfer: leave nothing behind. Best effort; `tmp/` holds only
            // unfinished files, so a leftover is never mistaken for a result.
            let _ = std::fs::remove_file(tmp);
        }
    }
}

/// Whether `id` has the shape of a file id (32 lowercase hex digits).
pub fn is_file_id(id: &str) -> bool {
    id.len() == 32 && id.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// The last component of a Windows or POSIX path, reduced to characters safe in a
/// `Content-Disposition` header and on any file system.
pub fn safe_name(path: &str) -> String {
    let last = path.rsplit(['\\', '/']).next().unwrap_or_default();
    let cleaned: String = last
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || "._-".contains(c) { c } else { '_' })
        .take(200)
        .collect();
    let trimmed = cleaned.trim_start_matches('.');
    if trimmed.is_empty() { "file".to_owned() } else { trimmed.to_owned() }
}

fn io_error(e: std::io::Error) -> AdapterError {
    AdapterError::new(ErrorCode::Internal, format!("file store: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_reduced_to_a_safe_last_component() {
        let table = [
            ("C:\\evidence\\big.bin", "big.bin"),
            ("/etc/passwd", "passwd"),
            ("C:\\x\\..", "file"),
            ("C:\\a b\\r\u{e9}sum\u{e9}.docx", "r_sum_.docx"),
            ("..\\..\\.hidden", "hidden"),
            ("", "file"),
        ];
        for (path, name) in table {
            assert_eq!(safe_name(path), name, "{path}");
        }
    }

    #[test]
    fn file_ids_are_checked_before_touching_disk() {
        assert!(is_file_id(&Uuid::now_v7().simple().to_string()));
        assert!(!is_file_id("../../etc/passwd"));
        assert!(!is_file_id("0123456789ABCDEF0123456789ABCDEF"));
    }
}
