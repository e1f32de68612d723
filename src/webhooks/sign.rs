//! Standard Webhooks signatures (<https://www.standardwebhooks.com>): what lets a receiver
//! check, with its own off-the-shelf library, that a delivery comes from us and is fresh.
//!
//! The signed content is `{webhook-id}.{webhook-timestamp}.{body}`, the signature
//! `v1,` + base64(HMAC-SHA256(key, content)), sent in the `webhook-signature` header next to
//! `webhook-id` and `webhook-timestamp`. During a secret rotation both the current and the
//! previous secret sign, space-separated, so receivers can switch keys without losing messages.

use aws_lc_rs::{constant_time, hmac};
use base64::Engine as _;
use base64::engine::DecodePaddingMode;
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig, STANDARD};
use secrecy::{ExposeSecret as _, SecretSlice};

/// The prefix Standard Webhooks libraries expect (and strip) on a secret.
const PREFIX: &str = "whsec_";
/// The key sizes the specification allows (bytes).
const MIN_KEY: usize = 24;
const MAX_KEY: usize = 64;
/// The size of the keys [`Secret::generate`] makes.
const GENERATED_KEY: usize = 32;

/// Secrets are written with padding, but the reference libraries also accept them without
/// (Python appends `==` before decoding), so parsing does too.
const LENIENT: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// A signing secret: never Debug-printed (Debug shows "Secret(***)"), never serialized, and
/// zeroed when dropped, so it cannot leak through logs or a serialized API response by accident.
#[derive(Clone)]
pub struct Secret {
    key: SecretSlice<u8>,
}

/// A secret that is not `whsec_` + base64 of a 24-64 byte key; the message says which part is
/// wrong, for the operator or API caller who supplied it.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct SecretError(pub String);

impl Secret {
    /// A new random secret of 32 bytes (the size the reference libraries generate).
    pub fn generate() -> Secret {
        use rand::RngCore as _;
        let mut key = vec![0u8; GENERATED_KEY];
        // ThreadRng is a CSPRNG seeded from the OS, and cannot fail.
        rand::rng().fill_bytes(&mut key);
        Secret { key: key.into() }
    }

    /// Parses `whsec_<base64>`, the form receivers configure and the reference libraries read.
    pub fn parse(text: &str) -> Result<Secret, SecretError> {
        let encoded = text
            .strip_prefix(PREFIX)
            .ok_or_else(|| SecretError(format!("a webhook secret starts with {PREFIX:?}")))?;
        let key = LENIENT.decode(encoded).map_err(|_| {
            SecretError(format!(
                "a webhook secret is {PREFIX:?} followed by base64 (standard alphabet)"
            ))
        })?;
        if !(MIN_KEY..=MAX_KEY).contains(&key.len()) {
            return Err(SecretError(format!(
                "a webhook secret's key is {MIN_KEY} to {MAX_KEY} bytes, not {}",
                key.len()
            )));
        }
        Ok(Secret { key: key.into() })
    }

    /// The `whsec_…` text (shown once to the caller who created or rotated it; stored in the DB).
    pub fn expose(&self) -> String {
        format!("{PREFIX}{}", STANDARD.encode(self.key.expose_secret()))
    }

    /// `v1,<base64 signature>` of (id, timestamp, body): one entry of `webhook-signature`.
    pub fn sign(&self, id: &str, timestamp: i64, body: &[u8]) -> String {
        format!("v1,{}", STANDARD.encode(self.tag(id, timestamp, body)))
    }

    /// HMAC-SHA256 over `{id}.{timestamp}.{body}`, fed in parts so the body is not copied.
    fn tag(&self, id: &str, timestamp: i64, body: &[u8]) -> hmac::Tag {
        let key = hmac::Key::new(hmac::HMAC_SHA256, self.key.expose_secret());
        let mut context = hmac::Context::with_key(&key);
        context.update(id.as_bytes());
        context.update(b".");
        context.update(timestamp.to_string().as_bytes());
        context.update(b".");
        context.update(body);
        context.sign()
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// The `webhook-signature` header value for all `secrets` (current first, then a previous one
/// during rotation), space-separated: a receiver accepts the message if any one verifies.
pub fn signature_header(secrets: &[Secret], id: &str, timestamp: i64, body: &[u8]) -> String {
    secrets.iter().map(|secret| secret.sign(id, timestamp, body)).collect::<Vec<_>>().join(" ")
}

/// Why [`verify`] refused a message.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    #[error("no signature matches")]
    NoMatch,
    #[error("the timestamp is outside the tolerance")]
    Timestamp,
}

/// Verifies a message the way a receiver does (our own tests use it, and it documents what a
/// receiver must check): the timestamp is within `tolerance_secs` of `now` in either direction
/// (so a captured message cannot be replayed later), and some `v1,` signature in `header`
/// matches one of `secrets`, compared in constant time. Entries of other versions, or that are
/// not base64, are skipped, as the reference libraries do.
pub fn verify(
    secrets: &[Secret],
    id: &str,
    timestamp: i64,
    body: &[u8],
    header: &str,
    now: i64,
    tolerance_secs: i64,
) -> Result<(), VerifyError> {
    let tolerance = u64::try_from(tolerance_secs).unwrap_or(0);
    if now.abs_diff(timestamp) > tolerance {
        return Err(VerifyError::Timestamp);
    }
    let offered: Vec<Vec<u8>> = header
        .split_ascii_whitespace()
        .filter_map(|entry| entry.strip_prefix("v1,"))
        .filter_map(|signature| STANDARD.decode(signature).ok())
        .collect();
    for secret in secrets {
        let expected = secret.tag(id, timestamp, body);
        if offered.iter().any(|signature| {
            constant_time::verify_slices_are_equal(expected.as_ref(), signature).is_ok()
        }) {
            return Ok(());
        }
    }
    Err(VerifyError::NoMatch)
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "msg_p5jXN8AQM9LWM0D4loKWxJek";
    const TIMESTAMP: i64 = 1614265330;
    const BODY: &[u8] = br#"{"test": 2432232314}"#;

    /// The test vector of the Standard Webhooks reference libraries
    /// (standard-webhooks/standard-webhooks, libraries/python/tests/test_webhooks.py,
    /// `test_sign_function`; the same vector is in the other languages' tests): if this
    /// reproduces, a receiver's stock library accepts what we send.
    #[test]
    fn known_answer_from_the_reference_libraries() {
        let secret = Secret::parse("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        let expected = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=";
        assert_eq!(secret.sign(ID, TIMESTAMP, BODY), expected);
        assert_eq!(verify(&[secret], ID, TIMESTAMP, BODY, expected, TIMESTAMP, 300), Ok(()));
    }

    #[test]
    fn generated_secrets_round_trip_and_differ() {
        let a = Secret::generate();
        let b = Secret::generate();
        let text = a.expose();
        assert!(text.starts_with("whsec_"));
        let parsed = Secret::parse(&text).unwrap();
        assert_eq!(parsed.key.expose_secret().len(), 32);
        assert_eq!(parsed.key.expose_secret(), a.key.expose_secret());
        assert_ne!(a.key.expose_secret(), b.key.expose_secret());
        let signature = a.sign(ID, TIMESTAMP, BODY);
        assert_eq!(verify(&[parsed], ID, TIMESTAMP, BODY, &signature, TIMESTAMP, 300), Ok(()));
    }

    #[test]
    fn rotation_signs_with_both_and_either_verifies() {
        let current = Secret::generate();
        let previous = Secret::generate();
        let header = signature_header(&[current.clone(), previous.clone()], ID, TIMESTAMP, BODY);
        let parts: Vec<&str> = header.split(' ').collect();
        assert_eq!(parts.len(), 2);
        assert_eq!(parts[0], current.sign(ID, TIMESTAMP, BODY));
        assert_eq!(parts[1], previous.sign(ID, TIMESTAMP, BODY));
        for secret in [current, previous] {
            assert_eq!(verify(&[secret], ID, TIMESTAMP, BODY, &header, TIMESTAMP, 300), Ok(()));
        }
        let stranger = Secret::generate();
        assert_eq!(
            verify(&[stranger], ID, TIMESTAMP, BODY, &header, TIMESTAMP, 300),
            Err(VerifyError::NoMatch)
        );
    }

    #[test]
    fn tampering_is_detected() {
        let secret = Secret::generate();
        let header = secret.sign(ID, TIMESTAMP, BODY);
        let secrets = [secret];
        let tampered = br#"{"test": 2432232315}"#;
        assert_eq!(
            verify(&secrets, ID, TIMESTAMP, tampered, &header, TIMESTAMP, 300),
            Err(VerifyError::NoMatch)
        );
        assert_eq!(
            verify(&secrets, "msg_other", TIMESTAMP, BODY, &header, TIMESTAMP, 300),
            Err(VerifyError::NoMatch)
        );
        // The timestamp is signed too: moving it (within the tolerance) breaks the signature.
        assert_eq!(
            verify(&secrets, ID, TIMESTAMP + 1, BODY, &header, TIMESTAMP, 300),
            Err(VerifyError::NoMatch)
        );
        // Other versions, garbage and an empty header match nothing.
        let v2 = header.replacen("v1,", "v2,", 1);
        for header in [v2.as_str(), "v1,not-base64!", "garbage", ""] {
            assert_eq!(
                verify(&secrets, ID, TIMESTAMP, BODY, header, TIMESTAMP, 300),
                Err(VerifyError::NoMatch)
            );
        }
    }

    #[test]
    fn timestamps_outside_the_tolerance_are_refused() {
        let secret = Secret::generate();
        let header = secret.sign(ID, TIMESTAMP, BODY);
        let secrets = [secret];
        for now in [TIMESTAMP - 300, TIMESTAMP + 300] {
            assert_eq!(verify(&secrets, ID, TIMESTAMP, BODY, &header, now, 300), Ok(()));
        }
        for now in [TIMESTAMP - 301, TIMESTAMP + 301, i64::MIN, i64::MAX] {
            assert_eq!(
                verify(&secrets, ID, TIMESTAMP, BODY, &header, now, 300),
                Err(VerifyError::Timestamp)
            );
        }
    }

    #[test]
    fn parse_errors() {
        let no_prefix = Secret::parse("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap_err();
        assert!(no_prefix.to_string().contains("whsec_"), "{no_prefix}");
        let bad_base64 = Secret::parse("whsec_not*base64").unwrap_err();
        assert!(bad_base64.to_string().contains("base64"), "{bad_base64}");
        let short = format!("whsec_{}", STANDARD.encode([7u8; 23]));
        let short = Secret::parse(&short).unwrap_err();
        assert!(short.to_string().contains("not 23"), "{short}");
        let long = format!("whsec_{}", STANDARD.encode([7u8; 65]));
        let long = Secret::parse(&long).unwrap_err();
        assert!(long.to_string().contains("not 65"), "{long}");
        assert!(Secret::parse("whsec_").is_err());
        // The bounds themselves are fine, padded or not.
        for len in [24, 64, 32] {
            let padded = STANDARD.encode(vec![7u8; len]);
            assert!(Secret::parse(&format!("whsec_{padded}")).is_ok());
            let unpadded = padded.trim_end_matches('=');
            assert!(Secret::parse(&format!("whsec_{unpadded}")).is_ok());
        }
    }

    #[test]
    fn debug_does_not_show_the_key() {
        let secret = Secret::parse("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        let shown = format!("{secret:?} {:?}", std::slice::from_ref(&secret));
        assert_eq!(shown, "Secret(***) [Secret(***)]");
        assert!(!shown.contains("MfKQ"));
    }
}
