//! Vendor-HTTP helpers shared by every adapter: building clients, classifying failures,
//! `Retry-After`, and back-off with jitter for idempotent calls.

use std::future::Future;
use std::time::Duration;

use rand::Rng;
use reqwest::StatusCode;
use reqwest::header::{HeaderMap, RETRY_AFTER};

use crate::error::AdapterError;
use crate::model::ErrorCode;

/// TLS and timeout settings of a vendor connection.
#[derive(Clone, Debug, Default)]
pub struct TlsOptions {
    /// PEM of a private CA (on-prem servers with their own certificate).
    pub ca_pem: Option<String>,
    /// Accept any certificate. For labs only; logged at start-up by the gateway.
    pub insecure_skip_verify: bool,
    /// SHA-256 of the server's own certificate (DER): that certificate, and only it, is
    /// accepted, whoever signed it (on-prem servers with self-signed certificates, or a
    /// defence against a rogue CA). Takes precedence over `ca_pem`.
    pub pinned_sha256: Option<[u8; 32]>,
}

impl TlsOptions {
    /// From a backend's TLS settings, as every adapter config spells them: `ca_file`,
    /// `insecure_skip_verify` and `pinned_cert_sha256` (hex, colons allowed, as
    /// `openssl x509 -noout -fingerprint -sha256` prints it).
    pub fn from_settings(
        ca_file: Option<&std::path::Path>,
        insecure_skip_verify: bool,
        pinned_cert_sha256: Option<&str>,
    ) -> Result<TlsOptions, AdapterError> {
        let ca_pem = match ca_file {
            Some(path) => Some(std::fs::read_to_string(path).map_err(|e| {
                AdapterError::internal(format!("cannot read ca_file {}: {e}", path.display()))
            })?),
            None => None,
        };
        let pinned_sha256 = pinned_cert_sha256
            .map(parse_pin)
            .transpose()
            .map_err(|e| AdapterError::internal(format!("pinned_cert_sha256: {e}")))?;
        Ok(TlsOptions { ca_pem, insecure_skip_verify, pinned_sha256 })
    }
}

/// A certificate fingerprint: 64 hex digits, optionally in colon-separated pairs.
pub fn parse_pin(text: &str) -> Result<[u8; 32], String> {
    let digits: String = text.trim().chars().filter(|c| *c != ':').collect();
    let mut pin = [0u8; 32];
    if digits.len() != 64 {
        return Err("64 hex digits (a SHA-256) are expected".into());
    }
    for (i, byte) in pin.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&digits[2 * i..2 * i + 2], 16)
            .map_err(|_| "64 hex digits (a SHA-256) are expected".to_owned())?;
    }
    Ok(pin)
}

/// A client for one backend: no redirects (a vendor redirect is an error to report, not to
/// follow with credentials attached), bounded connect and read times, and the TLS options.
///
/// `read_timeout` bounds each read rather than the whole request, so large streamed downloads
/// are not cut off while a stalled server still is.
pub fn client(tls: &TlsOptions, read_timeout: Duration) -> Result<reqwest::Client, AdapterError> {
    let mut builder = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(Duration::from_secs(10))
        .read_timeout(read_timeout)
        .pool_idle_timeout(Duration::from_secs(60))
        .user_agent(concat!("edrgate/", env!("CARGO_PKG_VERSION")));
    if let Some(pin) = tls.pinned_sha256 {
        return builder
            .tls_backend_preconfigured(pinned::client_config(pin))
            .build()
            .map_err(|e| AdapterError::internal(format!("cannot build HTTP client: {e}")));
    }
    if let Some(pem) = &tls.ca_pem {
        let cert = reqwest::Certificate::from_pem(pem.as_bytes())
            .map_err(|e| AdapterError::internal(format!("invalid CA certificate: {e}")))?;
        builder = builder.tls_certs_merge([cert]);
    }
    if tls.insecure_skip_verify {
        builder = builder.tls_danger_accept_invalid_certs(true);
    }
    builder.build().map_err(|e| AdapterError::internal(format!("cannot build HTTP client: {e}")))
}

/// Sends a vendor request, recording it in the gateway's metrics: the call count and latency
/// by vendor, backend and outcome (`2xx`, `3xx`, `4xx`, `429`, `5xx`, `timeout`, `transport`),
/// and the vendor's 429s on their own. Every adapter sends through this, so `/metrics` sees
/// every vendor call.
pub async fn send(
    vendor: &'static str,
    backend: &str,
    request: reqwest::RequestBuilder,
) -> reqwest::Result<reqwest::Response> {
    let started = std::time::Instant::now();
    let result = request.send().await;
    let outcome = match &result {
        Ok(r) if r.status() == StatusCode::TOO_MANY_REQUESTS => "429",
        Ok(r) => match r.status().as_u16() {
            200..=299 => "2xx",
            300..=399 => "3xx",
            400..=499 => "4xx",
            _ => "5xx",
        },
        Err(e) if e.is_timeout() => "timeout",
        Err(_) => "transport",
    };
    let labels = [
        ("vendor", vendor.to_owned()),
        ("backend", backend.to_owned()),
        ("outcome", outcome.to_owned()),
    ];
    metrics::counter!("edrgate_vendor_requests_total", &labels).increment(1);
    metrics::histogram!("edrgate_vendor_request_duration_seconds", &labels)
        .record(started.elapsed().as_secs_f64());
    if outcome == "429" {
        metrics::counter!("edrgate_vendor_rate_limited_total", &labels[..2]).increment(1);
    }
    result
}

/// Certificate pinning: a rustls verifier that accepts exactly one server certificate.
mod pinned {
    use std::sync::Arc;

    use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
    use rustls::crypto::WebPkiSupportedAlgorithms;
    use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
    use rustls::{DigitallySignedStruct, SignatureScheme};
    use sha2::Digest as _;

    pub(super) fn client_config(pin: [u8; 32]) -> rustls::ClientConfig {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let algorithms = provider.signature_verification_algorithms;
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap_or_else(|_| unreachable!("aws-lc-rs supports the default versions"))
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(Pinned { pin, algorithms }))
            .with_no_client_auth();
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        config
    }

    #[derive(Debug)]
    struct Pinned {
        pin: [u8; 32],
        algorithms: WebPkiSupportedAlgorithms,
    }

    impl ServerCertVerifier for Pinned {
        /// The certificate must be the pinned one; names and chains do not matter (the pin
        /// is stronger than both), the handshake signatures below still prove key possession.
        fn verify_server_cert(
            &self,
            end_entity: &CertificateDer<'_>,
            _intermediates: &[CertificateDer<'_>],
            _server_name: &ServerName<'_>,
            _ocsp: &[u8],
            _now: UnixTime,
        ) -> Result<ServerCertVerified, rustls::Error> {
            let digest: [u8; 32] = sha2::Sha256::digest(end_entity.as_ref()).into();
            if digest == self.pin {
                Ok(ServerCertVerified::assertion())
            } else {
                Err(rustls::Error::General("the server's certificate is not the pinned one".into()))
            }
        }

        fn verify_tls12_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
        }

        fn verify_tls13_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
        }

        fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
            self.algorithms.supported_schemes()
        }
    }
}

/// The delay a `Retry-After` header asks for (delta-seconds; HTTP dates are rare from these
/// vendors and are treated as absent).
pub fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let value = headers.get(RETRY_AFTER)?.to_str().ok()?.trim();
    value.parse::<u64>().ok().map(Duration::from_secs)
}

/// A transport failure (no HTTP status): always transient, the request may not have arrived.
/// Streams a vendor answer's body into `spool` (a temporary file the caller made, for readers
/// that must seek, such as an archive's), flushed, and gives the file back. The body is never
/// held in memory.
pub async fn spool(
    resp: reqwest::Response,
    spool: std::fs::File,
) -> Result<std::fs::File, AdapterError> {
    use futures::StreamExt as _;
    use tokio::io::AsyncWriteExt as _;
    let failed =
        |e: std::io::Error| AdapterError::internal(format!("spooling the vendor's answer: {e}"));
    let mut file = tokio::fs::File::from_std(spool);
    let mut body = resp.bytes_stream();
    while let Some(chunk) = body.next().await {
        file.write_all(&chunk.map_err(transport_error)?).await.map_err(failed)?;
    }
    file.flush().await.map_err(failed)?;
    Ok(file.into_std().await)
}

pub fn transport_error(error: reqwest::Error) -> AdapterError {
    let what = if error.is_timeout() {
        "timed out"
    } else if error.is_connect() {
        "connection failed"
    } else {
        "transport error"
    };
    // The error's Display would carry the URL, and a URL can be a credential (Defender's
    // signed result links): the message reaches logs, the command's error and the API.
    let error = error.without_url();
    AdapterError::transient(ErrorCode::VendorUnavailable, format!("vendor request {what}: {error}"))
}

/// Why the server's certificate was refused, when that is why `error` happened (the TLS
/// handshake failed verification: unknown issuer, wrong name, expired, not the pinned one), so
/// adapters can report a configuration problem rather than a passing network fault. No request
/// was sent on that connection.
pub fn tls_rejection(error: &reqwest::Error) -> Option<String> {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(e) = source {
        if let Some(tls) = e.downcast_ref::<rustls::Error>() {
            let refused = matches!(
                tls,
                rustls::Error::InvalidCertificate(_)
                    | rustls::Error::General(_)
                    | rustls::Error::NoCertificatesPresented
            );
            return refused.then(|| tls.to_string());
        }
        // An `io::Error`'s `source()` skips the error it wraps; step into it instead (the
        // handshake's rustls error arrives wrapped in one or more of them).
        source = match e.downcast_ref::<std::io::Error>() {
            Some(io) => io.get_ref().map(|inner| inner as &(dyn std::error::Error + 'static)),
            None => e.source(),
        };
    }
    None
}

/// The generic reading of an HTTP status; adapters refine it with the vendor's body first.
pub fn status_error(status: StatusCode, headers: &HeaderMap, body: &str) -> AdapterError {
    let snippet: String = body.chars().take(300).collect();
    let code = status.as_u16().to_string();
    match status {
        StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => AdapterError::new(
            ErrorCode::VendorAuthFailed,
            "the vendor refused edrgate's credentials",
        )
        .with_vendor(code, snippet),
        StatusCode::TOO_MANY_REQUESTS => {
            AdapterError::transient(ErrorCode::VendorRateLimited, "the vendor is rate limiting")
                .with_vendor(code, snippet)
                .with_retry_after(retry_after(headers))
        }
        s if s.is_server_error() => AdapterError::transient(
            ErrorCode::VendorUnavailable,
            format!("the vendor answered {s}"),
        )
        .with_vendor(code, snippet)
        .with_retry_after(retry_after(headers)),
        StatusCode::NOT_FOUND => {
            AdapterError::new(ErrorCode::NotFound, "the vendor does not know this object")
                .with_vendor(code, snippet)
        }
        s => AdapterError::new(ErrorCode::VendorRejected, format!("the vendor answered {s}"))
            .with_vendor(code, snippet),
    }
}

/// Exponential back-off with full jitter.
#[derive(Clone, Copy, Debug)]
pub struct Backoff {
    pub base: Duration,
    pub max: Duration,
    pub max_attempts: u32,
}

impl Backoff {
    pub const STANDARD: Backoff =
        Backoff { base: Duration::from_millis(250), max: Duration::from_secs(30), max_attempts: 5 };

    /// The delay before attempt `attempt` (1-based retry count), or the vendor's
    /// `Retry-After` when it gave one.
    pub fn delay(&self, attempt: u32, retry_after: Option<Duration>) -> Duration {
        if let Some(after) = retry_after {
            return after;
        }
        let exp = self.base.saturating_mul(1u32 << attempt.min(16)).min(self.max);
        let millis = u64::try_from(exp.as_millis()).unwrap_or(u64::MAX).max(1);
        Duration::from_millis(rand::rng().random_range(millis / 2..=millis))
    }

    /// Runs an **idempotent** call, retrying transient failures. Never use it for a request
    /// that changes an endpoint: those are reconciled, not retried.
    pub async fn retry<T, F, Fut>(&self, mut call: F) -> Result<T, AdapterError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, AdapterError>>,
    {
        let mut attempt = 0;
        loop {
            match call().await {
                Err(e) if e.is_retryable() && attempt + 1 < self.max_attempts => {
                    attempt += 1;
                    let delay = self.delay(attempt, e.retry_after);
                    tracing::debug!(error = %e, attempt, ?delay, "retrying vendor call");
                    tokio::time::sleep(delay).await;
                }
                other => return other,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::HeaderValue;

    #[tokio::test]
    async fn a_transport_error_names_no_url() {
        // A port nothing listens on: the request fails before any answer.
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let link = format!("http://127.0.0.1:{port}/blob/x?sv=2024&sig=c2VjcmV0");
        let client = client(&TlsOptions::default(), Duration::from_secs(5)).unwrap();
        let e = transport_error(client.get(&link).send().await.unwrap_err());
        let text = format!("{e} {:?}", e.info);
        assert!(!text.contains("sig=") && !text.contains("/blob/"), "{text}");
    }

    #[test]
    fn statuses_classify_into_the_error_vocabulary() {
        let mut headers = HeaderMap::new();
        headers.insert(RETRY_AFTER, HeaderValue::from_static("7"));
        let table = [
            (401, ErrorCode::VendorAuthFailed, false),
            (403, ErrorCode::VendorAuthFailed, false),
            (404, ErrorCode::NotFound, false),
            (412, ErrorCode::VendorRejected, false),
            (429, ErrorCode::VendorRateLimited, true),
            (503, ErrorCode::VendorUnavailable, true),
        ];
        for (status, code, retryable) in table {
            let e = status_error(StatusCode::from_u16(status).unwrap(), &headers, "body");
            assert_eq!((e.code(), e.is_retryable()), (code, retryable), "{status}");
            assert_eq!(e.info.vendor_code.as_deref(), Some(status.to_string().as_str()));
        }
        let limited = status_error(StatusCode::TOO_MANY_REQUESTS, &headers, "");
        assert_eq!(limited.retry_after, Some(Duration::from_secs(7)));
    }

    #[test]
    fn backoff_honours_retry_after_and_caps() {
        let b = Backoff {
            base: Duration::from_millis(100),
            max: Duration::from_secs(1),
            max_attempts: 3,
        };
        assert_eq!(b.delay(3, Some(Duration::from_secs(9))), Duration::from_secs(9));
        for attempt in 0..20 {
            assert!(b.delay(attempt, None) <= Duration::from_secs(1));
        }
    }

    #[tokio::test]
    async fn retry_stops_at_permanent_errors() {
        let b = Backoff {
            base: Duration::from_millis(1),
            max: Duration::from_millis(2),
            max_attempts: 5,
        };
        let mut calls = 0;
        let r: Result<(), _> = b
            .retry(|| {
                calls += 1;
                async { Err(AdapterError::new(ErrorCode::VendorRejected, "no")) }
            })
            .await;
        assert!(r.is_err());
        assert_eq!(calls, 1);
        let mut calls = 0;
        let r: Result<(), _> = b
            .retry(|| {
                calls += 1;
                async { Err(AdapterError::transient(ErrorCode::VendorUnavailable, "503")) }
            })
            .await;
        assert!(r.is_err());
        assert_eq!(calls, 5);
    }
}
