//! File content in a local directory: `<dir>/<tenant>/<id>`, written under `<dir>/.tmp/` and
//! renamed into place on commit (atomic on one file system), then made durable with `fsync` of
//! the file and its directory. `.tmp` cannot collide with a tenant: tenant ids have no dots.

use std::io;
use std::ops::Range;
use std::path::{Path, PathBuf};

use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;
use tokio::io::{AsyncReadExt, AsyncSeekExt, AsyncWriteExt, BufWriter};
use tokio_util::io::ReaderStream;
use uuid::Uuid;

use super::{ByteStream, FileStorage, StorageWriter};

const TMP: &str = ".tmp";
/// Read and write buffer: large enough for few syscalls, small enough for constant memory.
const BUFFER: usize = 256 * 1024;
/// A temporary file untouched this long belongs to no live transfer (a transfer writes as
/// bytes arrive).
const STALE: std::time::Duration = std::time::Duration::from_secs(24 * 3600);

pub struct LocalStorage {
    dir: PathBuf,
}

impl LocalStorage {
    /// Opens `dir` (created if missing). Leftovers of transfers a crash interrupted are removed
    /// once untouched for [`STALE`]: another process may share the directory and be writing.
    pub async fn open(dir: &Path) -> io::Result<LocalStorage> {
        let tmp = dir.join(TMP);
        tokio::fs::create_dir_all(&tmp).await?;
        let mut entries = tokio::fs::read_dir(&tmp).await?;
        while let Some(entry) = entries.next_entry().await? {
            let modified = entry.metadata().await?.modified()?;
            if modified.elapsed().is_ok_and(|age| age > STALE) {
                tokio::fs::remove_file(entry.path()).await?;
            }
        }
        Ok(LocalStorage { dir: dir.to_path_buf() })
    }

    fn path(&self, key: &str) -> io::Result<PathBuf> {
        check_key(key)?;
        Ok(self.dir.join(key))
    }
}

/// Keys are `<segment>/<segment>` of `[A-Za-z0-9_-]`: nothing in them can leave `dir`.
fn check_key(key: &str) -> io::Result<()> {
    let ok = key.split('/').count() == 2
        && key.split('/').all(|s| {
            !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        });
    if ok { Ok(()) } else { Err(io::Error::new(io::ErrorKind::InvalidInput, "bad storage key")) }
}

#[async_trait]
impl FileStorage for LocalStorage {
    async fn create(&self, key: &str) -> io::Result<Box<dyn StorageWriter>> {
        let dest = self.path(key)?;
        let tmp = self.dir.join(TMP).join(Uuid::now_v7().simple().to_string());
        let file = tokio::fs::File::create(&tmp).await?;
        Ok(Box::new(LocalWriter {
            tmp: Some(tmp),
            dest,
            file: BufWriter::with_capacity(BUFFER, file),
        }))
    }

    async fn read(&self, key: &str, range: Option<Range<u64>>) -> io::Result<ByteStream> {
        let mut file = tokio::fs::File::open(self.path(key)?).await?;
        Ok(match range {
            None => ReaderStream::with_capacity(file, BUFFER).boxed(),
            Some(r) => {
                file.seek(io::SeekFrom::Start(r.start)).await?;
                ReaderStream::with_capacity(file.take(r.end - r.start), BUFFER).boxed()
            }
        })
    }

    async fn size(&self, key: &str) -> io::Result<Option<u64>> {
        match tokio::fs::metadata(self.path(key)?).await {
            Ok(m) => Ok(Some(m.len())),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    async fn delete(&self, key: &str) -> io::Result<()> {
        match tokio::fs::remove_file(self.path(key)?).await {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }

    async fn keys(&self, prefix: &str) -> io::Result<Vec<String>> {
        let mut keys = Vec::new();
        let mut tenants = tokio::fs::read_dir(&self.dir).await?;
        while let Some(tenant) = tenants.next_entry().await? {
            let name = tenant.file_name().to_string_lossy().into_owned();
            if name == TMP || !tenant.file_type().await?.is_dir() {
                continue;
            }
            let mut files = tokio::fs::read_dir(tenant.path()).await?;
            while let Some(file) = files.next_entry().await? {
                let key = format!("{name}/{}", file.file_name().to_string_lossy());
                if key.starts_with(prefix) {
                    keys.push(key);
                }
            }
        }
        keys.sort();
        Ok(keys)
    }
}

struct LocalWriter {
    tmp: Option<PathBuf>,
    dest: PathBuf,
    file: BufWriter<tokio::fs::File>,
}

#[async_trait]
impl StorageWriter for LocalWriter {
    async fn write(&mut self, chunk: Bytes) -> io::Result<()> {
        self.file.write_all(&chunk).await
    }

    async fn commit(mut self: Box<Self>) -> io::Result<()> {
        self.file.flush().await?;
        self.file.get_ref().sync_all().await?;
        let parent = self.dest.parent().unwrap_or(Path::new("."));
        tokio::fs::create_dir_all(parent).await?;
        let Some(tmp) = self.tmp.take() else {
            return Err(io::Error::other("committed twice"));
        };
        if let Err(e) = tokio::fs::rename(&tmp, &self.dest).await {
            self.tmp = Some(tmp);
            return Err(e);
        }
        // The rename is durable once the directory entry is.
        tokio::fs::File::open(parent).await?.sync_all().await
    }
}

impl Drop for LocalWriter {
    fn drop(&mut self) {
        if let Some(tmp) = self.tmp.take() {
            // Abandoned transfer: leave nothing behind. Best effort; `.tmp/` holds only
            // unfinished files, and stale ones are removed when the storage opens.
            let _ = std::fs::remove_file(tmp);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_cannot_escape_the_directory() {
        for bad in ["../x/y", "a/../b", "a", "a/b/c", "/a/b", "a/b.c", "a/", ".tmp/x", ""] {
            assert!(check_key(bad).is_err(), "{bad:?}");
        }
        assert!(check_key("acme/0190abcd").is_ok());
    }
}
