//! A stored file packed on the fly into a password-protected zip, the way SOC tools hand out
//! live malware (`?archive=zip&password=infected`): the archive keeps scanners and mail
//! filters from acting on the sample, and the caller chooses the password.
//!
//! Encryption is WinZip AES-256 (AE-2). The traditional "ZipCrypto" is broken by a
//! known-plaintext attack and the `zip` crate only reads it; AES zips open in 7-Zip, WinRAR,
//! Python's `pyzipper`, `unzip` builds with AES support and macOS' Archive Utility via
//! `ditto`/Keka, which is what analysts use for samples (Windows Explorer's built-in zip
//! support cannot open them).
//!
//! Constant memory, and no thread of its own: the `zip` writer is synchronous, but it writes
//! into a buffer the stream drains, and the stream feeds it at most [`CHUNK`] bytes of the
//! source per poll (deflate level 1 plus AES over 64 KiB is well under a millisecond, short
//! enough for an async worker). So the archive is made only as fast as the client takes it: a
//! slow or stalled reader holds its connection and a few buffers, never a thread (the first
//! version ran the writer on a blocking thread that a stalled reader kept parked in a
//! channel send, so a few slow readers exhausted the blocking pool that file IO needs).
//! `zip::ZipWriter::new_stream` needs no `Seek`: sizes and CRCs go in data descriptors.

use std::io::{self, Write};
use std::sync::{Arc, Mutex, PoisonError};

use bytes::Bytes;
use futures::StreamExt;
use secrecy::{ExposeSecret, SecretString};
use zip::write::{SimpleFileOptions, StreamWriter};
use zip::{AesMode, CompressionMethod, ZipWriter};

use super::ByteStream;

/// Most source bytes packed per poll, and the size of the pieces sent to the client.
const CHUNK: usize = 64 * 1024;

/// Packs `source` (the content of one file of `size` bytes) as entry `name` of an AES-256
/// zip protected by `password`. A failure of the source (including a failed integrity check)
/// ends the stream with an error before the archive's central directory, so a truncated
/// archive never looks complete.
pub fn zip_stream(
    source: ByteStream,
    name: String,
    size: u64,
    password: SecretString,
) -> ByteStream {
    let out = Shared::default();
    let mut zip = ZipWriter::new_stream(out.clone());
    let options = SimpleFileOptions::default()
        // Samples are mostly compressed executables; dumps and logs shrink a lot. Level 1
        // keeps the CPU cost near a copy's.
        .compression_method(CompressionMethod::Deflated)
        .compression_level(Some(1))
        .large_file(size >= u64::from(u32::MAX))
        .with_aes_encryption(AesMode::Aes256, password.expose_secret());
    let packer = match zip.start_file(name, options) {
        Ok(()) => Packer { zip: Some(zip), source, current: Bytes::new(), out },
        Err(e) => return futures::stream::once(async move { Err(io::Error::other(e)) }).boxed(),
    };
    futures::stream::unfold(packer, |mut packer| async move {
        packer.next().await.map(|item| (item, packer))
    })
    .boxed()
}

/// The archive being made: the writer (until finished), the source and what it has
/// produced so far.
struct Packer {
    zip: Option<ZipWriter<StreamWriter<Shared>>>,
    source: ByteStream,
    /// What is left of the source's current chunk.
    current: Bytes,
    out: Shared,
}

impl Packer {
    /// The next piece of the archive: once [`CHUNK`] bytes are ready, or whatever is left at
    /// the end. `None` after the end or after an error.
    async fn next(&mut self) -> Option<io::Result<Bytes>> {
        loop {
            if self.out.len() >= CHUNK || (self.zip.is_none() && self.out.len() > 0) {
                return Some(Ok(self.out.take(CHUNK)));
            }
            // Finished (or failed) and drained: the end.
            self.zip.as_ref()?;
            if self.current.is_empty() {
                match self.source.next().await {
                    Some(Ok(chunk)) => self.current = chunk,
                    Some(Err(e)) => return self.fail(e),
                    None => {
                        let finished = self.zip.take().map(ZipWriter::finish);
                        if let Some(Err(e)) = finished {
                            return self.fail(io::Error::other(e));
                        }
                    }
                }
                continue;
            }
            let piece = self.current.split_to(self.current.len().min(CHUNK));
            if let Some(Err(e)) = self.zip.as_mut().map(|zip| zip.write_all(&piece)) {
                return self.fail(e);
            }
        }
    }

    /// Ends the archive with `error`, without its central directory.
    fn fail(&mut self, error: io::Error) -> Option<io::Result<Bytes>> {
        self.zip = None;
        self.out.clear();
        Some(Err(error))
    }
}

/// The buffer the zip writer writes into and the stream drains (the writer owns its sink,
/// so both hold it; never contended: the writer runs inside the stream's poll).
#[derive(Clone, Default)]
struct Shared(Arc<Mutex<Vec<u8>>>);

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<u8>> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn len(&self) -> usize {
        self.lock().len()
    }

    /// Takes up to `max` bytes from the front.
    fn take(&self, max: usize) -> Bytes {
        let mut buffer = self.lock();
        let n = buffer.len().min(max);
        Bytes::from(buffer.drain(..n).collect::<Vec<u8>>())
    }

    fn clear(&self) {
        self.lock().clear();
    }
}

impl Write for Shared {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.lock().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::io::Read as _;

    use super::*;

    async fn collect(mut stream: ByteStream) -> io::Result<Vec<u8>> {
        let mut out = Vec::new();
        while let Some(chunk) = stream.next().await {
            out.extend_from_slice(&chunk?);
        }
        Ok(out)
    }

    fn source(data: Vec<u8>) -> ByteStream {
        let chunks: Vec<io::Result<Bytes>> =
            data.chunks(10_000).map(|c| Ok(Bytes::copy_from_slice(c))).collect();
        futures::stream::iter(chunks).boxed()
    }

    #[tokio::test]
    async fn the_archive_opens_with_the_password_only() {
        let data: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let size = data.len() as u64;
        let zipped =
            collect(zip_stream(source(data.clone()), "sample.exe".into(), size, "infected".into()))
                .await
                .unwrap();
        let mut archive = zip::ZipArchive::new(io::Cursor::new(zipped)).unwrap();
        assert_eq!(archive.len(), 1);
        assert!(archive.by_index_decrypt(0, b"wrong").is_err());
        let mut entry = archive.by_index_decrypt(0, b"infected").unwrap();
        assert_eq!(entry.name().unwrap(), "sample.exe");
        let mut back = Vec::new();
        entry.read_to_end(&mut back).unwrap();
        assert_eq!(back, data);
    }

    /// A reader that stops taking the archive must not hold a thread: with one blocking
    /// thread, a second archive still completes while the first is stalled.
    #[test]
    fn a_stalled_reader_holds_no_thread() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .max_blocking_threads(1)
            .build()
            .unwrap();
        runtime.block_on(async {
            let incompressible: Vec<u8> = (0..2_000_000u64)
                .map(|i| (i.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 56) as u8)
                .collect();
            let size = incompressible.len() as u64;
            let mut stalled =
                zip_stream(source(incompressible), "big.bin".into(), size, "pw".into());
            // One piece taken, then the reader stalls.
            assert!(stalled.next().await.unwrap().is_ok());
            let data = b"small sample".to_vec();
            let other = zip_stream(source(data.clone()), "small.bin".into(), 12, "pw".into());
            // The bound only turns a hang into a failure.
            let zipped = tokio::time::timeout(std::time::Duration::from_secs(60), collect(other))
                .await
                .expect("the second archive waited for the stalled one's thread")
                .unwrap();
            let mut archive = zip::ZipArchive::new(io::Cursor::new(zipped)).unwrap();
            let mut back = Vec::new();
            archive.by_index_decrypt(0, b"pw").unwrap().read_to_end(&mut back).unwrap();
            assert_eq!(back, data);
            drop(stalled);
        });
    }

    #[tokio::test]
    async fn a_failing_source_fails_the_archive() {
        let failing: ByteStream = futures::stream::iter(vec![
            Ok(Bytes::from_static(b"partial")),
            Err(io::Error::new(io::ErrorKind::InvalidData, "digest mismatch")),
        ])
        .boxed();
        let result = collect(zip_stream(failing, "x".into(), 100, "pw".into())).await;
        assert_eq!(result.unwrap_err().kind(), io::ErrorKind::InvalidData);
    }
}
