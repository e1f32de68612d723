//! Configuration of one Microsoft Defender for Endpoint backend (an Entra app registration in
//! one tenant).
//!
//! Parsed from the gateway's config file (`deny_unknown_fields`). Defaults are the vendor's
//! documented limits (defender.md §9) and the token practice of real clients (§1.3).
//!
//! # TLS: one policy per host
//! edrgate talks to three hosts for one backend, each with its own certificate: the **API**
//! (`api_url`, `api.securitycenter.microsoft.com`), the **token endpoint** (`token_url`,
//! `login.microsoftonline.com`) and the **result download** host (the `*.blob.core.windows.net`
//! SAS links Defender hands out, §5). Each has its own TLS settings and its own HTTP client:
//!
//! * the top-level `ca_file`, `pinned_cert_sha256` and `insecure_skip_verify` are the **API
//!   host's** (as for every other backend kind, whose one host is its API) and never apply to
//!   the token or download hosts;
//! * `token_tls` and `download_tls` (`{ ca_file, pinned_cert_sha256, insecure_skip_verify }`)
//!   are the token and download hosts'; left out, those hosts are verified against the
//!   system's roots, as Microsoft's public endpoints need.
//!
//! So pinning the API certificate does not break tokens or downloads, and skipping
//! verification on the API never sends the client secret to an unverified token host.
//! `token_tls.insecure_skip_verify` is refused: the client secret would go to whoever answers;
//! trust the token host's CA (`token_tls.ca_file`) or pin it instead. A lab simulator serving
//! all three roles on one listener needs its CA in all three places:
//!
//! ```toml
//! ca_file = "/etc/edrgate/mde-sim-ca.pem"
//! token_tls = { ca_file = "/etc/edrgate/mde-sim-ca.pem" }
//! download_tls = { ca_file = "/etc/edrgate/mde-sim-ca.pem" }
//! ```

use std::path::PathBuf;
use std::time::Duration;

use secrecy::SecretString;
use serde::Deserialize;

/// The documented library upload cap of `POST /api/libraryfiles` (defender.md §8.1).
pub const LIBRARY_MAX_BYTES: u64 = 20 * 1024 * 1024;

/// One Defender tenant and the app credential edrgate uses on it.
///
/// `Debug` prints the secret as `[REDACTED]`; the type is not `Serialize`.
#[derive(Clone, Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DefenderConfig {
    /// API base URL (§0): `https://api.securitycenter.microsoft.com` by default, or a geo /
    /// government host. Plain `http://` is accepted for local simulators (logged as a warning).
    #[serde(default = "default_api_url")]
    pub api_url: String,
    /// Entra tenant id (GUID or domain) the app is registered in.
    pub tenant_id: String,
    /// The app registration's client id.
    pub client_id: String,
    /// The app's client secret; give it as `${ENV}` in the config file.
    #[schemars(with = "String")]
    pub client_secret: SecretString,
    /// Token endpoint. Default: the v2 endpoint
    /// `https://login.microsoftonline.com/{tenant_id}/oauth2/v2.0/token` (§1.1). A URL ending
    /// in `/oauth2/token` is spoken to in the v1 form (`resource` instead of `scope`).
    #[serde(default)]
    pub token_url: Option<String>,
    /// v2 scope (§1.1). Default `https://api.securitycenter.microsoft.com/.default`.
    #[serde(default = "default_scope")]
    pub scope: String,
    /// v1 resource, used only with a v1 `token_url`.
    #[serde(default = "default_resource")]
    pub resource: String,
    /// Seconds before `expires_in` runs out at which a cached token counts as expired
    /// (real clients use 5–300 s, §1.3).
    #[serde(default = "default_token_margin")]
    pub token_refresh_margin_secs: u64,
    /// **API host only** (`api_url`): PEM file of a CA to trust there (a TLS-inspecting proxy,
    /// a simulator). The token and download hosts take theirs from `token_tls.ca_file` and
    /// `download_tls.ca_file`.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// **API host only**: accept any certificate from `api_url`. For labs only. The token host
    /// stays verified, so the client secret never goes to an unverified host.
    #[serde(default)]
    pub insecure_skip_verify: bool,
    /// **API host only**: SHA-256 fingerprint of `api_url`'s own certificate (hex; colons
    /// allowed, as `openssl x509 -noout -fingerprint -sha256` prints it): only that certificate
    /// is accepted, whoever signed it. Overrides `ca_file`. The token and download hosts have
    /// other certificates; pin those in `token_tls` / `download_tls`.
    #[serde(default)]
    pub pinned_cert_sha256: Option<String>,
    /// TLS settings of the token endpoint (`token_url`, `login.microsoftonline.com` by
    /// default). Default: verified against the system's roots. `insecure_skip_verify` is
    /// refused here (the client secret is sent to this host).
    #[serde(default)]
    pub token_tls: HostTls,
    /// TLS settings of the result download host (the SAS links of
    /// `GetLiveResponseResultDownloadLink`, `*.blob.core.windows.net`, §5). Default: verified
    /// against the system's roots.
    #[serde(default)]
    pub download_tls: HostTls,
    /// `runliveresponse` calls allowed per `live_response_window_ms` (10 per minute, §3, §9).
    #[serde(default = "default_lr_calls")]
    pub live_response_calls: u32,
    /// The window of `live_response_calls`, in milliseconds (60 000).
    #[serde(default = "default_lr_window_ms")]
    pub live_response_window_ms: u64,
    /// Live-response actions edrgate keeps pending or running at once per credential
    /// (25 concurrent sessions, §9; pending actions count, §13).
    #[serde(default = "default_sessions")]
    pub concurrent_sessions: usize,
    /// Calls per minute edrgate makes to each of the other endpoints (100/min, §9).
    #[serde(default = "default_api_calls")]
    pub api_calls_per_minute: u32,
    /// Calls per hour to each of the other endpoints (1500/h, §9).
    #[serde(default = "default_api_calls_hour")]
    pub api_calls_per_hour: u32,
    /// First delay between two polls of a machine action, in milliseconds.
    #[serde(default = "default_poll_ms")]
    pub poll_interval_ms: u64,
    /// Longest delay between two polls; the delay grows with the time waited (several minutes
    /// of `Pending` are normal, §4.3).
    #[serde(default = "default_max_poll_ms")]
    pub max_poll_interval_ms: u64,
    /// How long a freshly created action may answer 404 before it counts as missing
    /// (read-after-write lag, §4.5), in seconds.
    #[serde(default = "default_visibility")]
    pub visibility_grace_secs: u64,
    /// How many times an expired or failing result download link is requested again (§5).
    #[serde(default = "default_link_retries")]
    pub download_link_retries: u32,
    /// Largest `put_file` accepted: the library's 20 MB cap (§8.1) unless lower.
    #[serde(default = "default_max_upload")]
    pub max_upload_bytes: u64,
    /// Longest wait for the next byte of a response.
    #[serde(default = "default_read_timeout")]
    pub read_timeout_secs: u64,
    /// Whether the tenant runs unsigned live-response scripts ("Live Response unsigned script
    /// execution", Settings > Endpoints > Advanced features; off by default at Microsoft).
    /// `true` (default): edrgate uploads and runs its own unsigned helpers, so the tenant needs
    /// that setting on. `false`: signed mode, only operator-signed copies of the helpers are
    /// run (see the crate doc and `scripts/README.md`); edrgate never uploads its unsigned copy.
    #[serde(default = "default_unsigned_scripts")]
    pub unsigned_scripts: bool,
    /// Signed mode only: a directory holding the operator's signed helpers under their library
    /// names (`edrgate-<name>-<hash>.ps1`). Checked when the backend is built and uploaded by
    /// edrgate when missing; without it the operator uploads them and edrgate checks the
    /// library holds them.
    #[serde(default)]
    pub signed_scripts_dir: Option<PathBuf>,
}

/// The TLS settings of one host (`token_tls`, `download_tls`; the API host's are the
/// backend's top-level `ca_file`, `pinned_cert_sha256`, `insecure_skip_verify`).
#[derive(Clone, Debug, Default, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HostTls {
    /// PEM file of a CA to trust on this host (a TLS-inspecting proxy, a simulator), in
    /// addition to the system's roots.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// SHA-256 fingerprint of this host's own certificate (hex, colons allowed): only that
    /// certificate is accepted. Overrides `ca_file`.
    #[serde(default)]
    pub pinned_cert_sha256: Option<String>,
    /// Accept any certificate from this host. Labs only; refused in `token_tls`.
    #[serde(default)]
    pub insecure_skip_verify: bool,
}

impl HostTls {
    /// The client options, reading `ca_file`; errors name the table (`token_tls.ca_file`).
    pub(crate) fn options(
        &self,
        table: &str,
    ) -> Result<edrgate_adapter::http::TlsOptions, edrgate_adapter::AdapterError> {
        host_options(
            table,
            self.ca_file.as_deref(),
            self.insecure_skip_verify,
            self.pinned_cert_sha256.as_deref(),
        )
    }
}

/// [`edrgate_adapter::http::TlsOptions`] of one host; `prefix` names where the keys are
/// (`""` for the top-level API keys, `"token_tls."`, `"download_tls."`).
pub(crate) fn host_options(
    prefix: &str,
    ca_file: Option<&std::path::Path>,
    insecure_skip_verify: bool,
    pin: Option<&str>,
) -> Result<edrgate_adapter::http::TlsOptions, edrgate_adapter::AdapterError> {
    use edrgate_adapter::AdapterError;
    let ca_pem = match ca_file {
        Some(path) => Some(std::fs::read_to_string(path).map_err(|e| {
            AdapterError::internal(format!("cannot read {prefix}ca_file {}: {e}", path.display()))
        })?),
        None => None,
    };
    let pinned_sha256 = pin
        .map(edrgate_adapter::http::parse_pin)
        .transpose()
        .map_err(|e| AdapterError::internal(format!("{prefix}pinned_cert_sha256: {e}")))?;
    Ok(edrgate_adapter::http::TlsOptions { ca_pem, insecure_skip_verify, pinned_sha256 })
}

impl DefenderConfig {
    /// A config with every default for `tenant_id`/`client_id`/`client_secret`.
    pub fn new(
        api_url: impl Into<String>,
        tenant_id: impl Into<String>,
        client_id: impl Into<String>,
        client_secret: SecretString,
    ) -> Self {
        DefenderConfig {
            api_url: api_url.into(),
            tenant_id: tenant_id.into(),
            client_id: client_id.into(),
            client_secret,
            token_url: None,
            scope: default_scope(),
            resource: default_resource(),
            token_refresh_margin_secs: default_token_margin(),
            ca_file: None,
            insecure_skip_verify: false,
            pinned_cert_sha256: None,
            token_tls: HostTls::default(),
            download_tls: HostTls::default(),
            live_response_calls: default_lr_calls(),
            live_response_window_ms: default_lr_window_ms(),
            concurrent_sessions: default_sessions(),
            api_calls_per_minute: default_api_calls(),
            api_calls_per_hour: default_api_calls_hour(),
            poll_interval_ms: default_poll_ms(),
            max_poll_interval_ms: default_max_poll_ms(),
            visibility_grace_secs: default_visibility(),
            download_link_retries: default_link_retries(),
            max_upload_bytes: default_max_upload(),
            read_timeout_secs: default_read_timeout(),
            unsigned_scripts: default_unsigned_scripts(),
            signed_scripts_dir: None,
        }
    }

    /// The token endpoint in effect.
    pub fn token_endpoint(&self) -> String {
        self.token_url.clone().unwrap_or_else(|| {
            format!("https://login.microsoftonline.com/{}/oauth2/v2.0/token", self.tenant_id)
        })
    }

    /// Every problem with the values, at once (no I/O).
    pub fn validate(&self) -> Result<(), Vec<String>> {
        let mut errors = Vec::new();
        let pins = [
            ("pinned_cert_sha256", &self.pinned_cert_sha256),
            ("token_tls.pinned_cert_sha256", &self.token_tls.pinned_cert_sha256),
            ("download_tls.pinned_cert_sha256", &self.download_tls.pinned_cert_sha256),
        ];
        for (name, pin) in pins {
            if let Some(pin) = pin
                && let Err(e) = edrgate_adapter::http::parse_pin(pin)
            {
                errors.push(format!("{name}: {e}"));
            }
        }
        if self.token_tls.insecure_skip_verify {
            errors.push(
                "token_tls.insecure_skip_verify is refused: the client secret would be sent to an \
                 unverified host; trust the token host's CA with token_tls.ca_file or pin its \
                 certificate with token_tls.pinned_cert_sha256"
                    .into(),
            );
        }
        for (name, value) in
            [("api_url", self.api_url.clone()), ("token_url", self.token_endpoint())]
        {
            match reqwest::Url::parse(&value) {
                Ok(url) if matches!(url.scheme(), "https" | "http") && url.has_host() => {}
                Ok(_) => {
                    errors.push(format!("{name} {value:?} must be an http(s) URL with a host"))
                }
                Err(e) => errors.push(format!("{name} {value:?} is invalid: {e}")),
            }
        }
        for (name, value) in [("tenant_id", &self.tenant_id), ("client_id", &self.client_id)] {
            if value.trim().is_empty() {
                errors.push(format!("{name} must not be empty"));
            }
        }
        if self.live_response_calls == 0 || self.live_response_window_ms == 0 {
            errors
                .push("live_response_calls and live_response_window_ms must be at least 1".into());
        }
        if self.concurrent_sessions == 0 {
            errors.push("concurrent_sessions must be at least 1".into());
        }
        if self.api_calls_per_minute == 0 || self.api_calls_per_hour == 0 {
            errors.push("api_calls_per_minute and api_calls_per_hour must be at least 1".into());
        }
        if self.poll_interval_ms == 0 || self.max_poll_interval_ms < self.poll_interval_ms {
            errors.push("poll_interval_ms must be > 0 and <= max_poll_interval_ms".into());
        }
        if self.max_upload_bytes == 0 || self.max_upload_bytes > LIBRARY_MAX_BYTES {
            errors.push(format!(
                "max_upload_bytes must be between 1 and {LIBRARY_MAX_BYTES} (the library's cap)"
            ));
        }
        if self.read_timeout_secs == 0 {
            errors.push("read_timeout_secs must be at least 1".into());
        }
        if self.unsigned_scripts && self.signed_scripts_dir.is_some() {
            errors.push("signed_scripts_dir is used only with unsigned_scripts = false".into());
        }
        if errors.is_empty() { Ok(()) } else { Err(errors) }
    }

    pub(crate) fn poll_min(&self) -> Duration {
        Duration::from_millis(self.poll_interval_ms)
    }

    pub(crate) fn poll_max(&self) -> Duration {
        Duration::from_millis(self.max_poll_interval_ms)
    }

    pub(crate) fn lr_window(&self) -> Duration {
        Duration::from_millis(self.live_response_window_ms)
    }
}

fn default_api_url() -> String {
    "https://api.securitycenter.microsoft.com".into()
}
fn default_scope() -> String {
    "https://api.securitycenter.microsoft.com/.default".into()
}
fn default_resource() -> String {
    "https://api.securitycenter.microsoft.com".into()
}
fn default_token_margin() -> u64 {
    120
}
fn default_lr_calls() -> u32 {
    10
}
fn default_lr_window_ms() -> u64 {
    60_000
}
fn default_sessions() -> usize {
    25
}
fn default_api_calls() -> u32 {
    100
}
fn default_api_calls_hour() -> u32 {
    1500
}
fn default_poll_ms() -> u64 {
    1000
}
fn default_max_poll_ms() -> u64 {
    15_000
}
fn default_visibility() -> u64 {
    30
}
fn default_link_retries() -> u32 {
    3
}
fn default_max_upload() -> u64 {
    LIBRARY_MAX_BYTES
}
fn default_read_timeout() -> u64 {
    120
}
fn default_unsigned_scripts() -> bool {
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_apply_and_unknown_fields_are_refused() {
        let cfg: DefenderConfig = serde_json::from_value(serde_json::json!({
            "tenant_id": "contoso.onmicrosoft.com",
            "client_id": "app",
            "client_secret": "s3cr3t-value",
        }))
        .unwrap();
        assert_eq!(cfg.live_response_calls, 10);
        assert_eq!(cfg.concurrent_sessions, 25);
        assert_eq!(
            cfg.token_endpoint(),
            "https://login.microsoftonline.com/contoso.onmicrosoft.com/oauth2/v2.0/token"
        );
        assert!(cfg.validate().is_ok());
        assert!(!format!("{cfg:?}").contains("s3cr3t"));
        let typo = serde_json::from_value::<DefenderConfig>(serde_json::json!({
            "tenant_id": "t", "client_id": "c", "client_secret": "s", "concurent_sessions": 3,
        }));
        assert!(typo.is_err());
    }

    #[test]
    fn validation_collects_every_error() {
        let mut cfg = DefenderConfig::new("ftp://x", " ", "c", SecretString::from("s"));
        cfg.concurrent_sessions = 0;
        cfg.max_upload_bytes = LIBRARY_MAX_BYTES + 1;
        let errors = cfg.validate().unwrap_err();
        assert_eq!(errors.len(), 4, "{errors:?}");
    }
}
