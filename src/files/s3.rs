//! File content in an S3-compatible object store (AWS S3, MinIO, Ceph RGW, …) through the
//! `object_store` crate, for deployments with several replicas.
//!
//! Small files (under one part) are sent with a single `PUT`; larger ones stream as a multipart
//! upload of [`PART`]-byte parts with at most [`IN_FLIGHT`] parts in flight, so a transfer holds
//! about `PART × (IN_FLIGHT + 1)` bytes whatever the file's size. An object appears only when
//! the upload completes; an abandoned multipart upload is aborted (its parts were never
//! visible). A process that crashes mid-upload cannot abort: the bucket's lifecycle rule
//! `AbortIncompleteMultipartUpload` frees those parts (see `deploy/edrgate.example.toml`).

use std::io;
use std::ops::Range;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use futures::{StreamExt, TryStreamExt};
use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::path::Path as ObjectPath;
use object_store::{GetOptions, GetRange, ObjectStore, ObjectStoreExt, PutPayload, WriteMultipart};
use secrecy::ExposeSecret;

use super::{ByteStream, FileStorage, StorageWriter};
use crate::config::S3Config;

/// Multipart part size: S3 needs at least 5 MiB per part (but the last) and allows 10 000
/// parts, so 8 MiB parts carry objects up to about 78 GiB (memory dumps of large servers).
pub const PART: usize = 8 * 1024 * 1024;
/// Parts uploaded concurrently per transfer.
pub const IN_FLIGHT: usize = 2;

pub struct S3Storage {
    store: Arc<AmazonS3>,
    prefix: String,
}

impl S3Storage {
    pub fn new(config: &S3Config) -> io::Result<S3Storage> {
        let mut builder =
            AmazonS3Builder::new().with_bucket_name(&config.bucket).with_region(&config.region);
        if let Some(endpoint) = &config.endpoint {
            // S3-compatible servers are addressed by path (`<endpoint>/<bucket>/<key>`).
            builder = builder
                .with_endpoint(endpoint)
                .with_virtual_hosted_style_request(false)
                .with_allow_http(endpoint.starts_with("http://"));
        }
        if let (Some(id), Some(secret)) = (&config.access_key_id, &config.secret_access_key) {
            builder = builder.with_access_key_id(id).with_secret_access_key(secret.expose_secret());
        }
        let store = builder.build().map_err(|e| io::Error::other(e.to_string()))?;
        Ok(S3Storage { store: Arc::new(store), prefix: config.prefix.clone() })
    }

    fn path(&self, key: &str) -> ObjectPath {
        ObjectPath::from(format!("{}{key}", self.prefix))
    }
}

fn io_error(e: object_store::Error) -> io::Error {
    match e {
        object_store::Error::NotFound { .. } => io::Error::new(io::ErrorKind::NotFound, e),
        e => io::Error::other(e),
    }
}

#[async_trait]
impl FileStorage for S3Storage {
    async fn create(&self, key: &str) -> io::Result<Box<dyn StorageWriter>> {
        Ok(Box::new(S3Writer {
            store: Arc::clone(&self.store),
            path: self.path(key),
            head: BytesMut::new(),
            upload: None,
        }))
    }

    async fn read(&self, key: &str, range: Option<Range<u64>>) -> io::Result<ByteStream> {
        let options = GetOptions { range: range.map(GetRange::Bounded), ..GetOptions::default() };
        let result = self.store.get_opts(&self.path(key), options).await.map_err(io_error)?;
        Ok(result.into_stream().map_err(io_error).boxed())
    }

    async fn size(&self, key: &str) -> io::Result<Option<u64>> {
        match self.store.head(&self.path(key)).await {
            Ok(meta) => Ok(Some(meta.size)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(io_error(e)),
        }
    }

    async fn delete(&self, key: &str) -> io::Result<()> {
        match self.store.delete(&self.path(key)).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(io_error(e)),
        }
    }

    async fn keys(&self, prefix: &str) -> io::Result<Vec<String>> {
        let root = ObjectPath::from(self.prefix.trim_end_matches('/'));
        let all: Vec<_> = self.store.list(Some(&root)).try_collect().await.map_err(io_error)?;
        let strip = if self.prefix.is_empty() { String::new() } else { format!("{root}/") };
        let mut keys: Vec<String> = all
            .into_iter()
            .filter_map(|m| m.location.as_ref().strip_prefix(&strip).map(str::to_owned))
            .filter(|k| k.starts_with(prefix))
            .collect();
        keys.sort();
        Ok(keys)
    }
}

struct S3Writer {
    store: Arc<AmazonS3>,
    path: ObjectPath,
    /// Bytes before the first part: a file that fits is sent with one `PUT`.
    head: BytesMut,
    upload: Option<WriteMultipart>,
}

#[async_trait]
impl StorageWriter for S3Writer {
    async fn write(&mut self, chunk: Bytes) -> io::Result<()> {
        if let Some(upload) = &mut self.upload {
            upload.wait_for_capacity(IN_FLIGHT).await.map_err(io_error)?;
            upload.put(chunk);
            return Ok(());
        }
        self.head.extend_from_slice(&chunk);
        if self.head.len() >= PART {
            let upload = self.store.put_multipart(&self.path).await.map_err(io_error)?;
            let mut upload = WriteMultipart::new_with_chunk_size(upload, PART);
            upload.put(std::mem::take(&mut self.head).freeze());
            self.upload = Some(upload);
        }
        Ok(())
    }

    async fn commit(mut self: Box<Self>) -> io::Result<()> {
        match self.upload.take() {
            Some(upload) => upload.finish().await.map_err(io_error)?,
            None => {
                let payload = PutPayload::from(std::mem::take(&mut self.head).freeze());
                self.store.put(&self.path, payload).await.map_err(io_error)?
            }
        };
        Ok(())
    }
}

impl Drop for S3Writer {
    fn drop(&mut self) {
        if let Some(upload) = self.upload.take() {
            // Frees the parts already stored; they were never visible as an object.
            if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                runtime.spawn(async move {
                    if let Err(error) = upload.abort().await {
                        tracing::warn!(%error, "cannot abort an abandoned multipart upload");
                    }
                });
            }
        }
    }
}
