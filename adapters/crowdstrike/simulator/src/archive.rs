//! The archives `extracted-file-contents` answers (§8.2): a real 7-Zip archive, AES-256 with
//! the password `infected`, holding exactly one entry (Caracara and PSFalcon extract them so
//! and Caracara fails on any other entry count).

use std::io::Cursor;

use sevenz_rust2::encoder_options::{AesEncoderOptions, Lzma2Options};
use sevenz_rust2::{ArchiveEntry, ArchiveWriter, Password};

/// `content` as entry `name` in a 7z encrypted with `password`; with `encrypt_headers` the
/// entry names are encrypted too (whether CrowdStrike does is \[U\], §8.2, so it is a switch).
pub(crate) fn seven_zip(
    name: &str,
    content: &[u8],
    password: &str,
    encrypt_headers: bool,
) -> Result<Vec<u8>, sevenz_rust2::Error> {
    let mut w = ArchiveWriter::new(Cursor::new(Vec::new()))?;
    w.set_content_methods(vec![
        AesEncoderOptions::new(Password::from(password)).into(),
        // A low level: these are evidence copies, and speed matters more than size here.
        Lzma2Options::from_level(1).into(),
    ]);
    w.set_encrypt_header(encrypt_headers);
    w.push_archive_entry(ArchiveEntry::new_file(name), Some(content))?;
    Ok(w.finish()?.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_archive_opens_with_the_password_and_holds_one_entry() {
        for headers in [false, true] {
            let bytes = seven_zip("note.txt", b"hello", "infected", headers).unwrap();
            assert_eq!(&bytes[..6], b"7z\xbc\xaf\x27\x1c");
            let mut r =
                sevenz_rust2::ArchiveReader::new(Cursor::new(&bytes), Password::from("infected"))
                    .unwrap();
            assert_eq!(r.archive().files.len(), 1);
            assert_eq!(r.read_file("note.txt").unwrap(), b"hello");
            let wrong = sevenz_rust2::ArchiveReader::new(Cursor::new(&bytes), Password::from("x"))
                .and_then(|mut r| r.read_file("note.txt"));
            assert!(wrong.is_err());
        }
    }
}
