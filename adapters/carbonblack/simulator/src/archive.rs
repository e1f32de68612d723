//! Session archive (§2.6): "a gzip tarball" per the vendor CLI. Written by hand (ustar
//! headers, gzip with *stored* deflate blocks and a CRC-32) so no compression crate is
//! needed; any gzip/tar reader accepts it.

use serde_json::Value;

use super::state::ArchiveParts;

/// Stored files larger than this are listed in `files.json` but left out of the archive.
const MAX_ARCHIVED_FILE: u64 = 64 * 1024 * 1024;

pub(crate) fn build(parts: &ArchiveParts) -> Vec<u8> {
    let mut tar = Vec::new();
    let json = |v: &Value| serde_json::to_vec_pretty(v).unwrap_or_default();
    append(&mut tar, "session.json", &json(&parts.session), parts.mtime);
    append(&mut tar, "commands.json", &json(&Value::Array(parts.commands.clone())), parts.mtime);
    let mut listing = Vec::new();
    for (meta, id, name, content) in &parts.files {
        let mut meta = meta.clone();
        let included = content.len() <= MAX_ARCHIVED_FILE;
        if let Some(o) = meta.as_object_mut() {
            o.insert("archived".into(), included.into());
        }
        listing.push(meta);
        if included {
            let base = name.rsplit(['\\', '/']).next().unwrap_or(name);
            let safe: String = base
                .chars()
                .map(|c| if c.is_ascii_alphanumeric() || "._-".contains(c) { c } else { '_' })
                .collect();
            append(&mut tar, &format!("files/{id}_{safe}"), &content.to_vec(), parts.mtime);
        }
    }
    append(&mut tar, "files.json", &json(&Value::Array(listing)), parts.mtime);
    // End of archive: two zero blocks.
    tar.extend_from_slice(&[0u8; 1024]);
    gzip_stored(&tar, parts.mtime)
}

fn append(tar: &mut Vec<u8>, name: &str, data: &[u8], mtime: u64) {
    let mut h = [0u8; 512];
    let name = name.as_bytes();
    let n = name.len().min(99);
    h[..n].copy_from_slice(&name[..n]);
    octal(&mut h[100..108], 0o644);
    octal(&mut h[108..116], 0);
    octal(&mut h[116..124], 0);
    octal(&mut h[124..136], data.len() as u64);
    octal(&mut h[136..148], mtime);
    h[148..156].copy_from_slice(b"        ");
    h[156] = b'0';
    h[257..263].copy_from_slice(b"ustar\0");
    h[263..265].copy_from_slice(b"00");
    let sum: u32 = h.iter().map(|b| u32::from(*b)).sum();
    octal(&mut h[148..155], u64::from(sum));
    tar.extend_from_slice(&h);
    tar.extend_from_slice(data);
    let pad = (512 - data.len() % 512) % 512;
    tar.extend(std::iter::repeat_n(0u8, pad));
}

/// Zero-padded octal, NUL-terminated, filling `field`.
fn octal(field: &mut [u8], value: u64) {
    let width = field.len() - 1;
    let s = format!("{value:0width$o}");
    let bytes = s.as_bytes();
    let start = bytes.len().saturating_sub(width);
    field[..width].copy_from_slice(&bytes[start..]);
    field[width] = 0;
}

fn gzip_stored(data: &[u8], mtime: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len() + data.len() / 65_535 * 5 + 32);
    out.extend_from_slice(&[0x1f, 0x8b, 8, 0]);
    out.extend_from_slice(&(mtime as u32).to_le_bytes());
    out.extend_from_slice(&[0, 255]);
    let mut chunks = data.chunks(65_535).peekable();
    if chunks.peek().is_none() {
        out.extend_from_slice(&[1, 0, 0, 0xff, 0xff]);
    }
    while let Some(chunk) = chunks.next() {
        out.push(u8::from(chunks.peek().is_none()));
        let len = chunk.len() as u16;
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(&(!len).to_le_bytes());
        out.extend_from_slice(chunk);
    }
    out.extend_from_slice(&crc32(data).to_le_bytes());
    out.extend_from_slice(&(data.len() as u32).to_le_bytes());
    out
}

const CRC_TABLE: [u32; 256] = {
    let mut table = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        let mut c = i as u32;
        let mut k = 0;
        while k < 8 {
            c = if c & 1 != 0 { 0xedb8_8320 ^ (c >> 1) } else { c >> 1 };
            k += 1;
        }
        table[i] = c;
        i += 1;
    }
    table
};

pub(crate) fn crc32(data: &[u8]) -> u32 {
    !data.iter().fold(!0u32, |c, b| CRC_TABLE[((c ^ u32::from(*b)) & 0xff) as usize] ^ (c >> 8))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc_known_value() {
        assert_eq!(crc32(b"123456789"), 0xcbf4_3926);
    }

    #[test]
    fn gzip_roundtrip_stored_blocks() {
        let data: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        let gz = gzip_stored(&data, 0);
        // Decode stored blocks.
        let mut pos = 10;
        let mut out = Vec::new();
        loop {
            let fin = gz[pos] & 1 == 1;
            let len = u16::from_le_bytes([gz[pos + 1], gz[pos + 2]]) as usize;
            out.extend_from_slice(&gz[pos + 5..pos + 5 + len]);
            pos += 5 + len;
            if fin {
                break;
            }
        }
        assert_eq!(out, data);
        let crc = u32::from_le_bytes([gz[pos], gz[pos + 1], gz[pos + 2], gz[pos + 3]]);
        assert_eq!(crc, crc32(&data));
    }
}
