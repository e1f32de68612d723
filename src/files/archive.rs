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
//! Constant memory: the `zip` writer is synchronous, so it runs on a blocking thread that
//! pulls the source stream chunk by chunk and pushes the archive through a bounded channel of
//! [`CHUNK`]-byte pieces (`zip::ZipWriter::new_stream` needs no `Seek`: sizes and CRCs go in
//! data descriptors).

use std::io::{self, Read, Write};

use bytes::Bytes;
use futures::StreamExt;
use secrecy::{ExposeSecret, SecretString};
use tokio::sync::mpsc;
use zip::write::SimpleFileOptions;
use zip::{AesMode, CompressionMethod, ZipWriter};

use super::ByteStream;

/// Size of the pieces sent to the client, and of the channel's slots.
const CHUNK: usize = 64 * 1024;
/// Pieces buffered between the zip thread and the HTTP body.
const SLOTS: usize = 4;

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
    let (tx, rx) = mpsc::channel::<io::Result<Bytes>>(SLOTS);
    let runtime = tokio::runtime::Handle::current();
    tokio::task::spawn_blocking(move || {
        let reader = BlockingReader { runtime, stream: source, current: Bytes::new() };
        let writer = ChannelWriter { tx: tx.clone(), buffer: Vec::with_capacity(CHUNK) };
        if let Err(e) = pack(reader, writer, &name, size, &password) {
            // The receiver may be gone (client left): nothing to tell then.
            let _ = tx.blocking_send(Err(e));
        }
    });
    futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|item| (item, rx)) })
        .boxed()
}

fn pack(
    mut reader: BlockingReader,
    writer: ChannelWriter,
    name: &str,
    size: u64,
    password: &SecretString,
) -> io::Result<()> {
    let mut zip = ZipWriter::new_stream(writer);
    let options = SimpleFileOptions::default()
        // Samples are mostly compressed executables; dumps and logs shrink a lot. Level 1
        // keeps the CPU cost near a copy's.
        .compression_method(CompressionMethod::Deflated)
        .compression_level(Some(1))
        .large_file(size >= u64::from(u32::MAX))
        .with_aes_encryption(AesMode::Aes256, password.expose_secret());
    zip.start_file(name, options).map_err(io::Error::other)?;
    io::copy(&mut reader, &mut zip)?;
    let mut writer = zip.finish().map_err(io::Error::other)?.into_inner();
    writer.flush()
}

/// Reads an async byte stream from a blocking thread.
struct BlockingReader {
    runtime: tokio::runtime::Handle,
    stream: ByteStream,
    current: Bytes,
}

impl Read for BlockingReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.current.is_empty() {
            match self.runtime.block_on(self.stream.next()) {
                Some(chunk) => self.current = chunk?,
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.current.len());
        buf[..n].copy_from_slice(&self.current.split_to(n));
        Ok(n)
    }
}

/// Sends what the zip writer produces, in [`CHUNK`]-byte pieces, waiting while the channel is
/// full (back-pressure from the client's connection).
struct ChannelWriter {
    tx: mpsc::Sender<io::Result<Bytes>>,
    buffer: Vec<u8>,
}

impl ChannelWriter {
    fn send(&mut self) -> io::Result<()> {
        if self.buffer.is_empty() {
            return Ok(());
        }
        let piece = Bytes::from(std::mem::replace(&mut self.buffer, Vec::with_capacity(CHUNK)));
        self.tx
            .blocking_send(Ok(piece))
            .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "the client went away"))
    }
}

impl Write for ChannelWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = buf.len().min(CHUNK - self.buffer.len());
        self.buffer.extend_from_slice(&buf[..n]);
        if self.buffer.len() == CHUNK {
            self.send()?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.send()
    }
}

#[cfg(test)]
mod tests {
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
