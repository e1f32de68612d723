//! Verification keys: a PEM public key or a JWKS entry, each with the one algorithm it
//! verifies (configured, the JWK's `alg`, or implied by its type; never HMAC from a file or
//! a key set).

use std::path::Path;

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, PublicKeyUse};
use jsonwebtoken::{Algorithm, AlgorithmFamily, DecodingKey, Validation};
use serde_json::{Map, Value};

use super::Reason;
use crate::config::asymmetric_algorithm;

/// A key and the one algorithm it verifies.
pub(super) struct VerifyKey {
    pub(super) kid: Option<String>,
    key: DecodingKey,
    /// The base validation with `algorithms = [this key's algorithm]`.
    validation: Validation,
}

impl VerifyKey {
    pub(super) fn new(
        kid: Option<String>,
        alg: Algorithm,
        key: DecodingKey,
        base: &Validation,
    ) -> VerifyKey {
        let mut validation = base.clone();
        validation.algorithms = vec![alg];
        VerifyKey { kid, key, validation }
    }

    pub(super) fn has_kid(&self, kid: &str) -> bool {
        self.kid.as_deref() == Some(kid)
    }

    /// The claims, or why not and whether the signature was good (then the reason is final).
    pub(super) fn verify(&self, token: &str) -> Result<Map<String, Value>, (Reason, bool)> {
        match jsonwebtoken::decode::<Map<String, Value>>(token, &self.key, &self.validation) {
            Ok(data) => Ok(data.claims),
            Err(e) => Err(match e.kind() {
                ErrorKind::ExpiredSignature => ("the token has expired", true),
                ErrorKind::ImmatureSignature => ("the token is not valid yet", true),
                ErrorKind::InvalidIssuer => ("wrong issuer", true),
                ErrorKind::InvalidAudience => ("wrong audience", true),
                ErrorKind::MissingRequiredClaim(_) => ("a required claim is missing", true),
                ErrorKind::InvalidAlgorithm | ErrorKind::InvalidAlgorithmName => {
                    ("the token's algorithm is not accepted", false)
                }
                ErrorKind::InvalidSignature => ("bad signature", false),
                // Not base64, not JSON, claims of the wrong type.
                _ => ("malformed token", false),
            }),
        }
    }
}

/// Reads a PEM public key and settles its algorithm.
pub(super) fn pem_key(
    path: &Path,
    algorithm: Option<&str>,
) -> Result<(Algorithm, DecodingKey), String> {
    let pem = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let not_a_key = |what: &str| format!("{}: not a {what} public key in PEM", path.display());
    match algorithm {
        Some(name) => {
            let alg = asymmetric_algorithm(name)
                .ok_or_else(|| format!("{name:?} is not an accepted algorithm"))?;
            let key = match alg.family() {
                AlgorithmFamily::Rsa => {
                    DecodingKey::from_rsa_pem(&pem).map_err(|_| not_a_key("RSA"))
                }
                AlgorithmFamily::Ec => DecodingKey::from_ec_pem(&pem).map_err(|_| not_a_key("EC")),
                AlgorithmFamily::Ed => {
                    DecodingKey::from_ed_pem(&pem).map_err(|_| not_a_key("Ed25519"))
                }
                AlgorithmFamily::Hmac => Err(not_a_key("public")),
            }?;
            Ok((alg, key))
        }
        None => {
            if let Ok(key) = DecodingKey::from_rsa_pem(&pem) {
                Ok((Algorithm::RS256, key))
            } else if let Ok(key) = DecodingKey::from_ec_pem(&pem) {
                // The uncompressed point: 65 bytes on P-256, 97 on P-384.
                match key.try_get_as_bytes().map(<[u8]>::len) {
                    Ok(65) => Ok((Algorithm::ES256, key)),
                    Ok(97) => Ok((Algorithm::ES384, key)),
                    _ => Err(format!(
                        "{}: only P-256 and P-384 EC keys are accepted",
                        path.display()
                    )),
                }
            } else if let Ok(key) = DecodingKey::from_ed_pem(&pem) {
                Ok((Algorithm::EdDSA, key))
            } else {
                Err(not_a_key("RSA, EC or Ed25519"))
            }
        }
    }
}

/// A JWKS entry as a verification key: signing keys only, the algorithm from the JWK's `alg`
/// or its key type, never HMAC.
pub(super) fn jwk_key(
    item: &Value,
) -> Result<(Option<String>, Algorithm, DecodingKey), &'static str> {
    let jwk: Jwk =
        serde_json::from_value(item.clone()).map_err(|_| "not a JWK this build reads")?;
    if matches!(jwk.common.public_key_use, Some(PublicKeyUse::Encryption | PublicKeyUse::Other(_)))
    {
        return Err("not a signing key");
    }
    let implied = match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => Algorithm::RS256,
        AlgorithmParameters::EllipticCurve(ec) => match ec.curve {
            EllipticCurve::P256 => Algorithm::ES256,
            EllipticCurve::P384 => Algorithm::ES384,
            _ => return Err("unsupported curve"),
        },
        AlgorithmParameters::OctetKeyPair(okp) if okp.curve == EllipticCurve::Ed25519 => {
            Algorithm::EdDSA
        }
        _ => return Err("not an RSA, EC or Ed25519 key"),
    };
    let alg = match &jwk.common.key_algorithm {
        None => implied,
        Some(named) => {
            let alg = asymmetric_algorithm(&named.to_string()).ok_or("unsupported alg")?;
            if alg.family() != implied.family()
                || (alg.family() == AlgorithmFamily::Ec && alg != implied)
            {
                return Err("alg does not match the key type");
            }
            alg
        }
    };
    let key = DecodingKey::from_jwk(&jwk).map_err(|_| "invalid key material")?;
    Ok((jwk.common.key_id.clone(), alg, key))
}
