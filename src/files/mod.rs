//! edrgate's file store: results fetched from endpoints and files callers upload, kept in a
//! [`FileStorage`] (a local directory or an S3-compatible object store) with their metadata,
//! digest and custody in the [`Store`].
//!
//! Every byte path is streamed and bounded:
//! - writes go through a [`StoredWriter`], which computes the SHA-256 and size on the way,
//!   enforces a size cap before a byte past it is stored, and makes the file visible only on
//!   commit (a dropped writer leaves nothing behind);
//! - whole reads are checked against the recorded size and digest while they stream, and the
//!   last chunk is held back until the check passes, so a corrupted file never reaches a
//!   reader complete ([`Verified`]); ranged reads cannot hash the whole file, so they check
//!   that the stored object still has its recorded size and leave the digest to the reader
//!   (the `Repr-Digest` of the whole representation is sent with every range);
//! - retention: each file gets its tenant's expiry when stored; [`FileStore::sweep`] deletes
//!   expired and deleted files (object first, then the record, so a crash in between is
//!   retried rather than leaving a record without content).

pub mod archive;
pub mod local;
pub mod s3;

use std::collections::BTreeMap;
use std::io;
use std::ops::Range;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use edrgate_adapter::{AdapterError, ErrorCode, FileRef, adapter::FileWriter};
use futures::stream::{BoxStream, Stream, StreamExt};
use sha2::{Digest, Sha256};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::config::FilesConfig;
use crate::store::{FileMeta, FileOrigin, Store, StoreError};

/// A stream of file content.
pub type ByteStream = BoxStream<'static, io::Result<Bytes>>;

/// Where file content lives. Keys are `<tenant>/<id>`: validated identifiers and hex ids
/// joined by one `/`, so no key can name anything outside the storage.
///
/// Both implementations pass one test suite (`tests/files.rs`, `storage_suite`).
#[async_trait]
pub trait FileStorage: Send + Sync + 'static {
    /// Starts object `key`. Nothing is visible under `key` until [`StorageWriter::commit`]; a
    /// writer dropped before it leaves nothing behind.
    async fn create(&self, key: &str) -> io::Result<Box<dyn StorageWriter>>;
    /// Streams `range` of object `key` (all of it with `None`). A missing object is
    /// `io::ErrorKind::NotFound`.
    async fn read(&self, key: &str, range: Option<Range<u64>>) -> io::Result<ByteStream>;
    /// The stored size of `key`, `None` when it does not exist.
    async fn size(&self, key: &str) -> io::Result<Option<u64>>;
    /// Deletes `key`; deleting a missing object succeeds.
    async fn delete(&self, key: &str) -> io::Result<()>;
    /// The committed keys that start with `prefix`, sorted.
    async fn keys(&self, prefix: &str) -> io::Result<Vec<String>>;
}

/// An object being written; see [`FileStorage::create`].
#[async_trait]
pub trait StorageWriter: Send {
    async fn write(&mut self, chunk: Bytes) -> io::Result<()>;
    /// Makes the object visible, complete and durable.
    async fn commit(self: Box<Self>) -> io::Result<()>;
}

/// What can go wrong with a stored file.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    #[error("the file is larger than the limit of {limit} bytes")]
    TooLarge { limit: u64 },
    #[error("no such file")]
    NotFound,
    #[error("storage: {0}")]
    Io(#[from] io::Error),
    #[error("store: {0}")]
    Store(#[from] StoreError),
    /// The stored content no longer matches its record.
    #[error("integrity: {0}")]
    Integrity(String),
}

impl From<FileError> for AdapterError {
    fn from(e: FileError) -> AdapterError {
        match e {
            FileError::NotFound => AdapterError::new(ErrorCode::NotFound, "no such stored file"),
            FileError::Integrity(_) => AdapterError::new(
                ErrorCode::Internal,
                format!("the stored file failed its integrity check ({e})"),
            ),
            FileError::TooLarge { .. } => {
                AdapterError::new(ErrorCode::PayloadTooLarge, e.to_string())
            }
            // A busy or restarting database, a storage hiccup (S3, a full disk): the step is
            // retried, since the command may have run on the endpoint and its result must not
            // be reported failed for a fault of edrgate's own store (issue 13).
            e @ (FileError::Store(_) | FileError::Io(_)) => {
                AdapterError::transient(ErrorCode::Internal, format!("file store: {e}"))
            }
        }
    }
}

/// A tenant's file rules.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TenantPolicy {
    /// Largest upload accepted.
    pub max_upload_bytes: u64,
    /// How long a stored file is kept; `None`: until deleted.
    pub retention: Option<Duration>,
}

/// The file rules of every tenant, from `[files]` and `[files.tenants.<id>]`.
#[derive(Clone, Debug)]
pub struct FilePolicy {
    pub default: TenantPolicy,
    pub tenants: BTreeMap<String, TenantPolicy>,
}

impl FilePolicy {
    pub fn from_config(config: &FilesConfig) -> FilePolicy {
        let days = |d: u32| Duration::from_secs(u64::from(d) * 86_400);
        let default = TenantPolicy {
            max_upload_bytes: config.max_upload_bytes,
            retention: config.retention_days.map(days),
        };
        let tenants = config
            .tenants
            .iter()
            .map(|(tenant, t)| {
                let policy = TenantPolicy {
                    max_upload_bytes: t.max_upload_bytes.unwrap_or(default.max_upload_bytes),
                    retention: t.retention_days.map(days).or(default.retention),
                };
                (tenant.clone(), policy)
            })
            .collect();
        FilePolicy { default, tenants }
    }

    pub fn of(&self, tenant: &str) -> TenantPolicy {
        self.tenants.get(tenant).copied().unwrap_or(self.default)
    }
}

impl Default for FilePolicy {
    fn default() -> Self {
        FilePolicy::from_config(&FilesConfig::default())
    }
}

#[derive(Clone)]
pub struct FileStore {
    storage: Arc<dyn FileStorage>,
    store: Store,
    policy: Arc<FilePolicy>,
}

impl FileStore {
    pub fn new(storage: Arc<dyn FileStorage>, store: Store, policy: FilePolicy) -> FileStore {
        FileStore { storage, store, policy: Arc::new(policy) }
    }

    /// Local storage in `dir` with the default policy (tests, tools).
    pub async fn local(dir: &std::path::Path, store: Store) -> io::Result<FileStore> {
        let storage = Arc::new(local::LocalStorage::open(dir).await?);
        Ok(FileStore::new(storage, store, FilePolicy::default()))
    }

    /// The storage `config` names (S3 when `[files.s3]` is set, else the local directory).
    pub async fn from_config(config: &FilesConfig, store: Store) -> io::Result<FileStore> {
        let storage: Arc<dyn FileStorage> = match &config.s3 {
            Some(s3) => Arc::new(s3::S3Storage::new(s3)?),
            None => Arc::new(local::LocalStorage::open(&config.dir).await?),
        };
        Ok(FileStore::new(storage, store, FilePolicy::from_config(config)))
    }

    pub fn storage(&self) -> &Arc<dyn FileStorage> {
        &self.storage
    }

    pub fn policy(&self, tenant: &str) -> TenantPolicy {
        self.policy.of(tenant)
    }

    /// Starts a file for `tenant`, refused past `limit` bytes. Nothing is visible until
    /// [`StoredWriter::finish`].
    pub async fn create(
        &self,
        tenant: &str,
        name: &str,
        origin: FileOrigin,
        limit: Option<u64>,
    ) -> Result<StoredWriter, FileError> {
        let id = Uuid::now_v7().simple().to_string();
        let inner = self.storage.create(&key(tenant, &id)).await?;
        Ok(StoredWriter {
            inner: Some(inner),
            id,
            tenant: tenant.to_owned(),
            name: safe_name(name),
            origin,
            hasher: Sha256::new(),
            written: 0,
            limit,
            files: self.clone(),
        })
    }

    pub async fn meta(&self, tenant: &str, id: &str) -> Result<Option<FileMeta>, StoreError> {
        if !is_file_id(id) {
            return Ok(None);
        }
        self.store.file(tenant, id, crate::store::now_ms()).await
    }

    /// The file's metadata and its content: all of it, verified against the recorded size and
    /// digest as it streams (see [`Verified`]), or `range` of it after checking the stored
    /// size. `range` must lie within the file.
    pub async fn open(
        &self,
        tenant: &str,
        id: &str,
        range: Option<Range<u64>>,
    ) -> Result<(FileMeta, ByteStream), FileError> {
        let meta = self.meta(tenant, id).await?.ok_or(FileError::NotFound)?;
        let key = key(tenant, id);
        let missing = |e: io::Error| match e.kind() {
            io::ErrorKind::NotFound => {
                FileError::Integrity(format!("file {id} has a record but no content"))
            }
            _ => FileError::Io(e),
        };
        let stream = match range {
            None => {
                let raw = self.storage.read(&key, None).await.map_err(missing)?;
                read_ahead(Verified::new(raw, meta.size, &meta.sha256).boxed())
            }
            Some(range) => {
                let stored = self.storage.size(&key).await?;
                if stored != Some(meta.size) {
                    return Err(FileError::Integrity(format!(
                        "file {id}: stored size {stored:?} differs from the recorded {}",
                        meta.size
                    )));
                }
                let len = range.end - range.start;
                let raw = self.storage.read(&key, Some(range)).await.map_err(missing)?;
                read_ahead(Exact::new(raw, len).boxed())
            }
        };
        Ok((meta, stream))
    }

    /// Reads the whole file and checks it against its record (size and SHA-256).
    pub async fn verify(&self, tenant: &str, id: &str) -> Result<(), FileError> {
        let (_, mut content) = self.open(tenant, id, None).await?;
        while let Some(chunk) = content.next().await {
            if let Err(e) = chunk {
                return Err(match e.kind() {
                    io::ErrorKind::InvalidData => FileError::Integrity(format!("file {id}: {e}")),
                    _ => FileError::Io(e),
                });
            }
        }
        Ok(())
    }

    /// Completes the custody of an endpoint result with the vendor's command reference.
    pub async fn note_vendor_ref(
        &self,
        tenant: &str,
        id: &str,
        vendor_ref: &str,
    ) -> Result<(), StoreError> {
        self.store.set_file_vendor_ref(tenant, id, vendor_ref).await
    }

    /// Deletes a file now: its record disappears at once, its content right after (or on the
    /// next sweep if the storage fails). `false` when the tenant has no such file.
    pub async fn delete(&self, tenant: &str, id: &str) -> Result<bool, FileError> {
        if !is_file_id(id) || !self.store.mark_file_deleted(tenant, id).await? {
            return Ok(false);
        }
        self.storage.delete(&key(tenant, id)).await?;
        self.store.purge_file(id).await?;
        Ok(true)
    }

    /// Deletes the content and records of up to `limit` expired or deleted files. Returns
    /// how many were purged.
    pub async fn sweep(&self, limit: u32) -> Result<usize, FileError> {
        let due = self.store.files_to_purge(crate::store::now_ms(), limit).await?;
        let mut purged = 0;
        for (tenant, id) in due {
            match self.storage.delete(&key(&tenant, &id)).await {
                Ok(()) => {
                    self.store.purge_file(&id).await?;
                    purged += 1;
                }
                // Kept for the next sweep: a record must not outlive content it vouches for
                // silently, nor content its record.
                Err(error) => tracing::warn!(%error, file = %id, "cannot delete an expired file"),
            }
        }
        Ok(purged)
    }

    /// Sweeps every `interval` until `stop` fires.
    pub fn spawn_sweeper(
        &self,
        interval: Duration,
        stop: tokio_util::sync::CancellationToken,
    ) -> tokio::task::JoinHandle<()> {
        let files = self.clone();
        tokio::spawn(async move {
            loop {
                loop {
                    match files.sweep(500).await {
                        Ok(500) => continue,
                        Ok(n) => {
                            if n > 0 {
                                tracing::info!(purged = n, "expired files deleted");
                            }
                            break;
                        }
                        Err(error) => {
                            tracing::error!(%error, "file sweep failed");
                            break;
                        }
                    }
                }
                tokio::select! {
                    () = stop.cancelled() => return,
                    () = tokio::time::sleep(interval) => {}
                }
            }
        })
    }
}

/// Chunks a reader may be ahead of its consumer (with 256 KiB reads: 1 MiB per transfer).
const READ_AHEAD: usize = 4;

/// Drives `stream` in a task of its own, a few chunks ahead of the consumer, so reading and
/// hashing overlap with the consumer's work (an HTTP body's socket writes) instead of taking
/// turns with it. Dropping the returned stream stops the task at its next chunk.
fn read_ahead(mut stream: ByteStream) -> ByteStream {
    let (tx, rx) = tokio::sync::mpsc::channel(READ_AHEAD);
    tokio::spawn(async move {
        while let Some(item) = stream.next().await {
            if tx.send(item).await.is_err() {
                break;
            }
        }
    });
    futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|item| (item, rx)) })
        .boxed()
}

fn key(tenant: &str, id: &str) -> String {
    format!("{tenant}/{id}")
}

/// A file being written; see [`FileStore::create`].
pub struct StoredWriter {
    inner: Option<Box<dyn StorageWriter>>,
    id: String,
    tenant: String,
    name: String,
    origin: FileOrigin,
    hasher: Sha256,
    written: u64,
    limit: Option<u64>,
    files: FileStore,
}

impl StoredWriter {
    /// Appends `chunk`. Past the limit nothing more is written and the file is dropped.
    pub async fn write_bytes(&mut self, chunk: Bytes) -> Result<(), FileError> {
        let inner = self.inner.as_mut().ok_or(FileError::NotFound)?;
        if let Some(limit) = self.limit
            && self.written + chunk.len() as u64 > limit
        {
            // Dropping the storage writer discards what was written.
            self.inner = None;
            return Err(FileError::TooLarge { limit });
        }
        self.hasher.update(&chunk);
        self.written += chunk.len() as u64;
        inner.write(chunk).await?;
        Ok(())
    }

    pub fn written(&self) -> u64 {
        self.written
    }

    /// Commits the content, then records the file. If the record cannot be written, the
    /// content is deleted again.
    pub async fn finish(mut self) -> Result<FileMeta, FileError> {
        let inner = self.inner.take().ok_or(FileError::NotFound)?;
        inner.commit().await?;
        let created_at = OffsetDateTime::now_utc();
        let retention = self.files.policy(&self.tenant).retention;
        let meta = FileMeta {
            id: self.id.clone(),
            tenant: self.tenant.clone(),
            name: self.name.clone(),
            size: self.written,
            sha256: hex::encode(std::mem::take(&mut self.hasher).finalize()),
            created_at,
            expires_at: retention.map(|r| created_at + r),
            origin: std::mem::take(&mut self.origin),
        };
        if let Err(e) = self.files.store.insert_file(&meta).await {
            if let Err(error) = self.files.storage.delete(&key(&self.tenant, &self.id)).await {
                tracing::error!(%error, file = %self.id, "cannot delete unrecorded content");
            }
            return Err(e.into());
        }
        Ok(meta)
    }
}

#[async_trait]
impl FileWriter for StoredWriter {
    async fn write(&mut self, chunk: &[u8]) -> Result<(), AdapterError> {
        Ok(self.write_bytes(Bytes::copy_from_slice(chunk)).await?)
    }

    fn written(&self) -> u64 {
        self.written
    }

    async fn commit(self: Box<Self>) -> Result<FileRef, AdapterError> {
        let meta = (*self).finish().await?;
        Ok(FileRef { file_id: meta.id, name: meta.name, size: meta.size, sha256: meta.sha256 })
    }
}

/// A whole-file read checked against its record: bytes are hashed and counted as they pass,
/// and the latest chunk is held back until the next one arrives, so the end of the file is
/// released only once size and SHA-256 matched. On a mismatch the stream ends with an error
/// instead, and an HTTP body (whose length was announced) is aborted short of complete.
pub struct Verified {
    inner: ByteStream,
    hasher: Sha256,
    seen: u64,
    size: u64,
    sha256: String,
    held: Option<Bytes>,
    done: bool,
}

impl Verified {
    pub fn new(inner: ByteStream, size: u64, sha256: &str) -> Verified {
        Verified {
            inner,
            hasher: Sha256::new(),
            seen: 0,
            size,
            sha256: sha256.to_owned(),
            held: None,
            done: false,
        }
    }

    fn fail(&mut self, message: String) -> Poll<Option<io::Result<Bytes>>> {
        self.done = true;
        self.held = None;
        tracing::error!(%message, "a stored file failed its integrity check");
        Poll::Ready(Some(Err(io::Error::new(io::ErrorKind::InvalidData, message))))
    }
}

impl Stream for Verified {
    type Item = io::Result<Bytes>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        loop {
            if self.done {
                return Poll::Ready(None);
            }
            match ready!(self.inner.poll_next_unpin(cx)) {
                Some(Ok(chunk)) => {
                    if chunk.is_empty() {
                        continue;
                    }
                    self.seen += chunk.len() as u64;
                    if self.seen > self.size {
                        let m = format!("content is longer than the recorded {} bytes", self.size);
                        return self.fail(m);
                    }
                    self.hasher.update(&chunk);
                    if let Some(previous) = self.held.replace(chunk) {
                        return Poll::Ready(Some(Ok(previous)));
                    }
                }
                Some(Err(e)) => {
                    self.done = true;
                    return Poll::Ready(Some(Err(e)));
                }
                None => {
                    if self.seen != self.size {
                        let m = format!("content has {} of {} bytes", self.seen, self.size);
                        return self.fail(m);
                    }
                    let digest = hex::encode(std::mem::take(&mut self.hasher).finalize());
                    if digest != self.sha256 {
                        let m = format!("SHA-256 {digest} differs from the recorded one");
                        return self.fail(m);
                    }
                    self.done = true;
                    return Poll::Ready(self.held.take().map(Ok));
                }
            }
        }
    }
}

/// A ranged read that must yield exactly `len` bytes: a short or long object is an error, not
/// a quietly truncated range.
struct Exact {
    inner: ByteStream,
    left: u64,
    done: bool,
}

impl Exact {
    fn new(inner: ByteStream, len: u64) -> Exact {
        Exact { inner, left: len, done: false }
    }
}

impl Stream for Exact {
    type Item = io::Result<Bytes>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.done {
            return Poll::Ready(None);
        }
        let message = match ready!(self.inner.poll_next_unpin(cx)) {
            Some(Ok(chunk)) if chunk.len() as u64 <= self.left => {
                self.left -= chunk.len() as u64;
                return Poll::Ready(Some(Ok(chunk)));
            }
            Some(Ok(_)) => "the stored range is longer than asked".to_owned(),
            Some(Err(e)) => {
                self.done = true;
                return Poll::Ready(Some(Err(e)));
            }
            None if self.left == 0 => {
                self.done = true;
                return Poll::Ready(None);
            }
            None => format!("the stored range ended {} bytes short", self.left),
        };
        self.done = true;
        tracing::error!(%message, "a ranged read of a stored file failed");
        Poll::Ready(Some(Err(io::Error::new(io::ErrorKind::InvalidData, message))))
    }
}

/// Whether `id` has the shape of a file id (32 lowercase hex digits).
pub fn is_file_id(id: &str) -> bool {
    id.len() == 32 && id.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// Checks a caller-given file name (an upload's name): one path component, no traversal, no
/// control characters. Refused rather than repaired, so a caller learns that a path was not
/// what the gateway keeps.
pub fn check_upload_name(name: &str) -> Result<(), String> {
    // Characters, as the API document's `maxLength` counts them.
    if name.is_empty() || name.chars().count() > 255 {
        return Err("the file name must be 1 to 255 characters".into());
    }
    if name.contains(['/', '\\']) {
        return Err("the file name must not contain path separators".into());
    }
    if name == "." || name == ".." {
        return Err("the file name must not be '.' or '..'".into());
    }
    if name.chars().any(char::is_control) {
        return Err("the file name must not contain control characters".into());
    }
    Ok(())
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
    fn upload_names_with_paths_are_refused() {
        for bad in ["", "..", ".", "../x", "a/b", "a\\b", "C:\\x.exe", "x\u{0}y", "a\nb"] {
            assert!(check_upload_name(bad).is_err(), "{bad:?}");
        }
        for good in ["tool.exe", "r\u{e9}sum\u{e9}.docx", "..hidden", "a b.txt"] {
            assert!(check_upload_name(good).is_ok(), "{good:?}");
        }
    }

    #[test]
    fn file_ids_are_checked_before_touching_storage() {
        assert!(is_file_id(&Uuid::now_v7().simple().to_string()));
        assert!(!is_file_id("../../etc/passwd"));
        assert!(!is_file_id("0123456789ABCDEF0123456789ABCDEF"));
    }

    fn chunks(parts: &[&'static [u8]]) -> ByteStream {
        let items: Vec<io::Result<Bytes>> =
            parts.iter().map(|p| Ok(Bytes::from_static(p))).collect();
        futures::stream::iter(items).boxed()
    }

    async fn collect(stream: impl Stream<Item = io::Result<Bytes>>) -> (Vec<u8>, bool) {
        futures::pin_mut!(stream);
        let mut out = Vec::new();
        while let Some(item) = stream.next().await {
            match item {
                Ok(b) => out.extend_from_slice(&b),
                Err(_) => return (out, false),
            }
        }
        (out, true)
    }

    #[tokio::test]
    async fn a_verified_read_never_releases_the_end_of_a_bad_file() {
        let good = hex::encode(Sha256::digest(b"hello world"));
        let (bytes, ok) =
            collect(Verified::new(chunks(&[b"hello", b" ", b"world"]), 11, &good)).await;
        assert_eq!((bytes.as_slice(), ok), (&b"hello world"[..], true));
        // Same size, other content: everything but the last chunk, then an error.
        let (bytes, ok) =
            collect(Verified::new(chunks(&[b"hello", b" ", b"WORLD"]), 11, &good)).await;
        assert_eq!((bytes.as_slice(), ok), (&b"hello "[..], false));
        // Truncated and overlong content.
        let (_, ok) = collect(Verified::new(chunks(&[b"hello"]), 11, &good)).await;
        assert!(!ok);
        let (_, ok) = collect(Verified::new(chunks(&[b"hello world!"]), 11, &good)).await;
        assert!(!ok);
        let empty = hex::encode(Sha256::digest(b""));
        assert_eq!(collect(Verified::new(chunks(&[]), 0, &empty)).await, (Vec::new(), true));
    }

    #[tokio::test]
    async fn an_exact_read_refuses_short_ranges() {
        assert_eq!(collect(Exact::new(chunks(&[b"ab", b"c"]), 3)).await, (b"abc".to_vec(), true));
        assert!(!collect(Exact::new(chunks(&[b"ab"]), 3)).await.1);
        assert!(!collect(Exact::new(chunks(&[b"abcd"]), 3)).await.1);
    }
}
