//! File contents on the simulated endpoints and in session storage.
//!
//! Large files never live in memory: a [`Content`] is either a cheap handle on real bytes or a
//! *synthetic* byte sequence that is a pure function of `(seed, position)`, so a multi-GiB
//! evidence file costs a few bytes of state and can be streamed (or sliced for partial
//! `get file` reads) on demand.

use std::convert::Infallible;

use bytes::Bytes;
use futures::Stream;

/// Chunk size used when streaming content to a client.
const STREAM_CHUNK: u64 = 64 * 1024;

#[derive(Clone, Debug)]
enum Source {
    Bytes(Bytes),
    Synthetic(u64),
}

/// A window `[offset, offset + len)` over a byte source.
#[derive(Clone, Debug)]
pub(crate) struct Content {
    source: Source,
    offset: u64,
    len: u64,
}

impl Content {
    pub(crate) fn bytes(b: impl Into<Bytes>) -> Self {
        let b: Bytes = b.into();
        let len = b.len() as u64;
        Self { source: Source::Bytes(b), offset: 0, len }
    }

    pub(crate) fn empty() -> Self {
        Self::bytes(Bytes::new())
    }

    pub(crate) fn synthetic(seed: u64, len: u64) -> Self {
        Self { source: Source::Synthetic(seed), offset: 0, len }
    }

    pub(crate) fn len(&self) -> u64 {
        self.len
    }

    /// §4.3 `get file` `offset`/`get_count`: a partial read. Reading past the end yields an
    /// empty window (like `ReadFile` at EOF); `count` of `None` or 0 means "to the end".
    pub(crate) fn slice(&self, offset: u64, count: Option<u64>) -> Self {
        let start = offset.min(self.len);
        let avail = self.len - start;
        let len = match count {
            Some(c) if c > 0 => c.min(avail),
            _ => avail,
        };
        Self { source: self.source.clone(), offset: self.offset + start, len }
    }

    /// Materialise `[start, start + n)` of this window (clamped to its end).
    pub(crate) fn read(&self, start: u64, n: u64) -> Vec<u8> {
        let start = start.min(self.len);
        let n = n.min(self.len - start);
        let abs = self.offset + start;
        match &self.source {
            Source::Bytes(b) => {
                // Both bounds are within `b` because windows are only ever narrowed.
                let (a, z) = (abs as usize, (abs + n) as usize);
                b.get(a..z).map(<[u8]>::to_vec).unwrap_or_default()
            }
            Source::Synthetic(seed) => synthetic_bytes(*seed, abs, n),
        }
    }

    /// The whole window as bytes; callers use this only for small files.
    pub(crate) fn to_vec(&self) -> Vec<u8> {
        self.read(0, self.len)
    }

    /// Stream the window in [`STREAM_CHUNK`]-sized pieces without materialising it.
    pub(crate) fn stream(self) -> impl Stream<Item = Result<Bytes, Infallible>> + Send + 'static {
        futures::stream::unfold((self, 0u64), |(content, pos)| async move {
            if pos >= content.len {
                return None;
            }
            let n = STREAM_CHUNK.min(content.len - pos);
            let chunk = match &content.source {
                Source::Bytes(b) => {
                    let a = (content.offset + pos) as usize;
                    b.slice(a..a + n as usize)
                }
                Source::Synthetic(_) => Bytes::from(content.read(pos, n)),
            };
            Some((Ok(chunk), (content, pos + n)))
        })
    }
}

/// Deterministic seed for a synthetic file, so the same `(sensor, path)` always has the same
/// bytes (tests can recompute expected content with `Simulator::read_file`).
pub(crate) fn seed_for(sensor_id: u64, lower_path: &str) -> u64 {
    // FNV-1a over the path, mixed with the sensor id.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in lower_path.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    splitmix64(h ^ sensor_id.wrapping_mul(0x9e37_79b9_7f4a_7c15))
}

fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Byte `i` of a synthetic file is byte `i % 8` of `splitmix64(seed ^ i / 8)`: position
/// dependent, so an off-by-N in a partial read is always visible.
fn synthetic_bytes(seed: u64, start: u64, n: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(n as usize);
    let end = start + n;
    let mut pos = start;
    while pos < end {
        let word = splitmix64(seed ^ (pos / 8)).to_le_bytes();
        let from = (pos % 8) as usize;
        let take = (8 - from).min((end - pos) as usize);
        out.extend_from_slice(&word[from..from + take]);
        pos += take as u64;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::StreamExt;

    #[test]
    fn synthetic_slices_agree_with_whole() {
        let c = Content::synthetic(42, 1000);
        let whole = c.to_vec();
        assert_eq!(whole.len(), 1000);
        let part = c.slice(13, Some(101));
        assert_eq!(part.to_vec(), whole[13..114].to_vec());
        assert_eq!(c.slice(2000, None).len(), 0);
        assert_eq!(c.slice(990, Some(50)).len(), 10);
    }

    #[tokio::test]
    async fn stream_matches_read() {
        let c = Content::synthetic(7, 200_000).slice(5, None);
        let expect = c.to_vec();
        let got: Vec<u8> = c
            .stream()
            .map(|r| match r {
                Ok(b) => b.to_vec(),
                Err(e) => match e {},
            })
            .concat()
            .await;
        assert_eq!(got, expect);
        let b = Content::bytes(&b"hello world"[..]).slice(6, Some(3));
        assert_eq!(b.to_vec(), b"wor");
    }
}
