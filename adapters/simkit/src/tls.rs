//! The simulators' self-signed server certificate.

use std::io;
use std::sync::OnceLock;

use sha2::Digest as _;

struct Material {
    cert_pem: String,
    cert_der: Vec<u8>,
    key_pem: String,
}

/// A certificate for `localhost` and `127.0.0.1`, generated on first use and then fixed for
/// the simulator's lifetime (clients pin or trust it once).
#[derive(Default)]
pub struct SelfSigned {
    made: OnceLock<Result<Material, String>>,
}

impl std::fmt::Debug for SelfSigned {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SelfSigned").finish_non_exhaustive()
    }
}

impl SelfSigned {
    pub fn new() -> Self {
        Self::default()
    }

    fn material(&self) -> io::Result<&Material> {
        let made = self.made.get_or_init(|| {
            let names = vec!["localhost".to_owned(), "127.0.0.1".to_owned()];
            rcgen::generate_simple_self_signed(names)
                .map(|ck| Material {
                    cert_pem: ck.cert.pem(),
                    cert_der: ck.cert.der().to_vec(),
                    key_pem: ck.signing_key.serialize_pem(),
                })
                .map_err(|e| e.to_string())
        });
        made.as_ref().map_err(|e| io::Error::other(e.clone()))
    }

    /// PEM of the certificate: add it as the only trusted root in clients.
    pub fn cert_pem(&self) -> io::Result<String> {
        Ok(self.material()?.cert_pem.clone())
    }

    /// SHA-256 of the certificate (DER, hex): what a backend's `pinned_cert_sha256` takes.
    pub fn cert_sha256(&self) -> io::Result<String> {
        Ok(hex::encode(sha2::Sha256::digest(&self.material()?.cert_der)))
    }

    /// The server configuration of the certificate (the simulators' HTTPS; tests put it in
    /// front of a plain-HTTP gateway for clients that refuse `http://`, such as cbapi).
    pub async fn rustls_config(&self) -> io::Result<axum_server::tls_rustls::RustlsConfig> {
        let m = self.material()?;
        axum_server::tls_rustls::RustlsConfig::from_pem(
            m.cert_pem.clone().into_bytes(),
            m.key_pem.clone().into_bytes(),
        )
        .await
    }
}
