//! Caps on the parts of a `multipart/form-data` upload that the parser has to buffer.
//!
//! `multer` (3.1) streams a part's content, but keeps in memory everything before the first
//! boundary (it searches for `--boundary`) and a part's whole header block (it searches for
//! `CRLF CRLF`), without any limit: a `files` token could send gigabytes of preamble or of one
//! header line. Its only size limits are for the whole stream and per field, which a file
//! part needs to be large. [`guard`] sits between the body and the parser, follows the same
//! delimiters (RFC 2046 §5.1.1) and fails the stream as soon as a preamble, a delimiter line
//! plus its headers, or the number of parts goes over its cap; the parser then never holds
//! more than the caps.

use bytes::Bytes;
use futures::{Stream, StreamExt};

/// Longest preamble (bytes before the first `--boundary`).
pub const MAX_PREAMBLE: usize = 16 * 1024;
/// Longest delimiter line and header block of one part (from the boundary to `CRLF CRLF`).
pub const MAX_PART_HEADERS: usize = 16 * 1024;
/// Most parts read before the file part (each is skipped in constant memory, but there is
/// no reason for a form to have many).
pub const MAX_PARTS: usize = 64;

/// Why [`guard`] stopped a body; `api::files` answers it with `400 invalid_request`.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Overlong {
    #[error("the multipart body has more than {MAX_PREAMBLE} bytes before its first boundary")]
    Preamble,
    #[error("a multipart part's headers are longer than {MAX_PART_HEADERS} bytes")]
    Headers,
    #[error("the multipart body has more than {MAX_PARTS} parts")]
    Parts,
}

/// Where the scan is, with the delimiter each stage waits for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stage {
    /// Before `--boundary`.
    Preamble,
    /// After a boundary, up to the `CRLF` that ends its line (padding, or `--` for the end).
    Line,
    /// The part's header block, up to `CRLF CRLF`.
    Headers,
    /// The part's content, up to `CRLF --boundary` (not capped: it streams).
    Content,
    /// After the closing delimiter: nothing more is parsed.
    Done,
}

/// The byte-level scanner behind [`guard`]. Patterns are searched across chunk edges with
/// the tail of what was already seen in the stage.
struct Scanner {
    /// `\r\n--boundary`; the preamble looks for it without the leading `\r\n`.
    delimiter: Vec<u8>,
    stage: Stage,
    /// Bytes seen in the current capped stretch (preamble, or line + headers).
    counted: usize,
    /// The last bytes of the current stage (fewer than its pattern), for matches that
    /// straddle two chunks.
    tail: Vec<u8>,
    parts: usize,
}

impl Scanner {
    fn new(boundary: &str) -> Scanner {
        let delimiter = [b"\r\n--".as_slice(), boundary.as_bytes()].concat();
        Scanner { delimiter, stage: Stage::Preamble, counted: 0, tail: Vec::new(), parts: 0 }
    }

    fn pattern(&self) -> &[u8] {
        match self.stage {
            Stage::Preamble => &self.delimiter[2..],
            Stage::Line => b"\r\n",
            Stage::Headers => b"\r\n\r\n",
            Stage::Content | Stage::Done => &self.delimiter,
        }
    }

    /// Follows `chunk`; an error once a cap is exceeded.
    fn feed(&mut self, mut chunk: &[u8]) -> Result<(), Overlong> {
        while !chunk.is_empty() && self.stage != Stage::Done {
            let pattern = self.pattern().to_vec();
            // The match may start in the tail: search the tail joined to the chunk's head.
            let head = &chunk[..chunk.len().min(pattern.len())];
            let joined = [self.tail.as_slice(), head].concat();
            let found = find(&joined, &pattern)
                .map(|at| at + pattern.len() - self.tail.len())
                .or_else(|| find(chunk, &pattern).map(|at| at + pattern.len()));
            let used = found.unwrap_or(chunk.len());
            if self.stage == Stage::Line && self.line_closes(&chunk[..used]) {
                self.stage = Stage::Done;
                return Ok(());
            }
            self.count(used)?;
            match found {
                Some(end) => {
                    self.advance()?;
                    chunk = &chunk[end..];
                }
                None => {
                    // Only the last `pattern - 1` bytes can start a match.
                    let keep = pattern.len() - 1;
                    if chunk.len() >= keep {
                        self.tail = chunk[chunk.len() - keep..].to_vec();
                    } else {
                        self.tail.extend_from_slice(chunk);
                        self.tail.drain(..self.tail.len().saturating_sub(keep));
                    }
                    chunk = &[];
                }
            }
        }
        Ok(())
    }

    /// Whether the boundary line begun with `bytes` (after what is in `tail`) is the closing
    /// one (`--boundary--`). `tail` holds the line's first byte when a chunk cut it there.
    fn line_closes(&self, bytes: &[u8]) -> bool {
        let start: Vec<u8> = self.tail.iter().chain(bytes).take(2).copied().collect();
        start == b"--"
    }

    fn count(&mut self, n: usize) -> Result<(), Overlong> {
        match self.stage {
            Stage::Preamble => {
                self.counted += n;
                // The boundary itself is not preamble.
                if self.counted > MAX_PREAMBLE + self.delimiter.len() {
                    return Err(Overlong::Preamble);
                }
            }
            Stage::Line | Stage::Headers => {
                self.counted += n;
                if self.counted > MAX_PART_HEADERS {
                    return Err(Overlong::Headers);
                }
            }
            Stage::Content | Stage::Done => {}
        }
        Ok(())
    }

    /// The current stage's pattern was found: on to the next.
    fn advance(&mut self) -> Result<(), Overlong> {
        self.tail.clear();
        self.stage = match self.stage {
            Stage::Preamble | Stage::Content => {
                self.counted = 0;
                self.parts += 1;
                if self.parts > MAX_PARTS {
                    return Err(Overlong::Parts);
                }
                Stage::Line
            }
            Stage::Line => {
                // The line's CRLF also ends the (empty) line before the first header: a part
                // without headers is `CRLF CRLF` counting it.
                self.tail = b"\r\n".to_vec();
                Stage::Headers
            }
            Stage::Headers => Stage::Content,
            Stage::Done => Stage::Done,
        };
        Ok(())
    }
}

/// The first position of `pattern` (not empty) in `haystack`. (`memchr` is no dependency of
/// the gateway; delimiters are short and mostly fail on their first byte.)
fn find(haystack: &[u8], pattern: &[u8]) -> Option<usize> {
    haystack.windows(pattern.len()).position(|window| window == pattern)
}

/// `body` as the multipart parser should see it: unchanged, but failed with
/// [`GuardError::Overlong`] before a preamble or a part's headers exceed their cap.
pub fn guard(
    body: impl Stream<Item = Result<Bytes, axum::Error>> + Send + 'static,
    boundary: &str,
) -> impl Stream<Item = Result<Bytes, GuardError>> + Send + 'static {
    let mut scanner = Scanner::new(boundary);
    body.map(move |chunk| {
        let chunk = chunk.map_err(GuardError::Body)?;
        scanner.feed(&chunk).map_err(GuardError::Overlong)?;
        Ok(chunk)
    })
}

/// A failure of the guarded body: the body's own (the client went away), or a cap.
#[derive(Debug, thiserror::Error)]
pub enum GuardError {
    #[error("the body could not be read: {0}")]
    Body(axum::Error),
    #[error(transparent)]
    Overlong(Overlong),
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scan(chunks: &[&[u8]]) -> Result<Stage, Overlong> {
        let mut scanner = Scanner::new("XyZ");
        for chunk in chunks {
            scanner.feed(chunk)?;
        }
        Ok(scanner.stage)
    }

    /// `body` cut into every chunk size from 1 byte up: the scan must not depend on where
    /// chunks end.
    fn every_cut(body: &[u8]) -> Vec<Result<Stage, Overlong>> {
        (1..=body.len()).map(|size| scan(&body.chunks(size).collect::<Vec<_>>())).collect()
    }

    #[test]
    fn a_form_is_followed_wherever_its_chunks_end() {
        let form = b"preamble\r\n--XyZ  \r\nContent-Disposition: form-data; name=\"a\"\r\n\r\n\
            text\r\n--XyZ\r\nContent-Disposition: form-data; name=\"file\"; filename=\"f\"\r\n\
            \r\ncontent with --XyZ inside\r\n--XyZ--\r\nepilogue";
        for stage in every_cut(form) {
            assert_eq!(stage, Ok(Stage::Done));
        }
        let open = &form[..form.len() - 20];
        for stage in every_cut(open) {
            assert_eq!(stage, Ok(Stage::Content));
        }
    }

    #[test]
    fn a_long_preamble_or_header_block_is_cut_off() {
        let preamble = vec![b'p'; MAX_PREAMBLE + 100];
        assert_eq!(scan(&[&preamble]), Err(Overlong::Preamble));
        let chunks: Vec<&[u8]> = preamble.chunks(1000).collect();
        assert_eq!(scan(&chunks), Err(Overlong::Preamble));
        let mut ok = vec![b'p'; MAX_PREAMBLE];
        ok.extend_from_slice(b"\r\n--XyZ\r\n");
        assert_eq!(scan(&[&ok]), Ok(Stage::Headers));

        let header = [b"--XyZ\r\nX-Long: ".as_slice(), &vec![b'h'; MAX_PART_HEADERS]].concat();
        assert_eq!(scan(&[&header]), Err(Overlong::Headers));
        let chunks: Vec<&[u8]> = header.chunks(999).collect();
        assert_eq!(scan(&chunks), Err(Overlong::Headers));
        // A boundary line that never ends is capped the same way.
        let line = [b"--XyZ".as_slice(), &vec![b' '; MAX_PART_HEADERS + 1]].concat();
        assert_eq!(scan(&[&line]), Err(Overlong::Headers));
        // Content is not capped.
        let content = [b"--XyZ\r\n\r\n".as_slice(), &vec![b'c'; 10 * MAX_PART_HEADERS]].concat();
        assert_eq!(scan(&[&content]), Ok(Stage::Content));
    }

    #[test]
    fn too_many_parts_are_refused() {
        let part = b"\r\n--XyZ\r\nContent-Disposition: form-data; name=\"a\"\r\n\r\nx";
        let body = part.repeat(MAX_PARTS + 1);
        assert_eq!(scan(&[&body]), Err(Overlong::Parts));
        assert_eq!(scan(&[&part.repeat(MAX_PARTS)]), Ok(Stage::Content));
    }
}
