//! Configuration of one CrowdStrike Falcon backend (one API client of one CID).
//!
//! Parsed from the gateway's config file (`deny_unknown_fields`: a typo is an error, not a
//! silently ignored knob). Section numbers (§) refer to `shared/vendor-apis/crowdstrike.md`.

use std::path::PathBuf;
use std::time::Duration;

use secrecy::SecretString;
use serde::Deserialize;

/// The per-CID API limit (§3): 6,000 requests per minute for all API clients of a customer.
pub const VENDOR_REQUESTS_PER_MINUTE: u32 = 6000;
/// Hosts per batch session (§7.2).
pub const VENDOR_BATCH_HOST_LIMIT: usize = 10_000;
/// Longest RTR `timeout` the clients accept (§5.2: 600 s; the swagger text says 5 min).
pub const MAX_RTR_TIMEOUT_SECS: u64 = 600;

/// One Falcon cloud and the API client edrgate signs in as.
///
/// `Debug` prints the secret as `[REDACTED]` (secrecy); the type is deliberately not
/// `Serialize`, so the secret cannot end up in an API response or a dumped config.
#[derive(Clone, Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CrowdStrikeConfig {
    /// API base URL of the tenant's cloud (§1.1), no default: `https://api.crowdstrike.com`
    /// (us-1), `https://api.us-2.crowdstrike.com` (us-2), `https://api.eu-1.crowdstrike.com`
    /// (eu-1), `https://api.laggar.gcw.crowdstrike.com` (us-gov-1),
    /// `https://api.us-gov-2.crowdstrike.mil` (us-gov-2), `https://api.us-3.crowdstrike.com`
    /// (us-3). Plain `http://` is accepted for local simulators and logged as a warning.
    pub base_url: String,
    /// OAuth2 client id of the API client (§2.1).
    pub client_id: String,
    /// Its secret (also `client_secret_file`).
    #[schemars(with = "String")]
    pub client_secret: SecretString,
    /// MSSP: the child CID the token is locked to (`member_cid` of the token request).
    #[serde(default)]
    pub member_cid: Option<String>,
    /// PEM file of a private CA (a TLS-inspecting proxy in front of the cloud).
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// Accept any server certificate. For labs only.
    #[serde(default)]
    pub insecure_skip_verify: bool,
    /// SHA-256 fingerprint of the server's own certificate (hex; colons allowed): only that
    /// certificate is accepted. Overrides `ca_file`.
    #[serde(default)]
    pub pinned_cert_sha256: Option<String>,
    /// The RTR tier the API client (and its user role) holds (§2.4, §6.1): `read_only`
    /// (`real-time-response:read`, `devices:read`), `active_responder` (plus
    /// `real-time-response:write`, `devices:write`) or `admin` (plus
    /// `real-time-response-admin:write`). It decides the commands offered (§12).
    #[serde(default)]
    pub permission_level: PermissionLevel,
    /// Park commands for offline hosts in the RTR offline queue (§6.7: up to 7 days; the
    /// action's deadline governs) instead of failing them `device_offline`.
    #[serde(default)]
    pub queue_offline: bool,
    /// API requests per minute edrgate allows itself on this CID, across all gateway replicas
    /// (the vendor allows 6,000 per CID for all its API clients together, §3).
    #[serde(default = "default_requests_per_minute")]
    pub requests_per_minute: u32,
    /// How long the first run of an action at a command waits for the action's other runs
    /// to arrive there, so that they share one batch session and one batch command (§7): a
    /// sliding window (each arrival extends it), ended early once every run of the batch
    /// is there, and at most `max_poll_interval_ms` (runs drift apart by a poll interval).
    #[serde(default = "default_batch_window_ms")]
    pub batch_window_ms: u64,
    /// Hosts per batch session (the vendor's cap is 10,000, §7.2).
    #[serde(default = "default_batch_host_limit")]
    pub batch_host_limit: usize,
    /// RTR `timeout` in seconds of session inits and batch commands (§5.2, §7.1), which block
    /// up to it; hosts slower than it are finished through the single-host status route.
    #[serde(default = "default_rtr_timeout_secs")]
    pub rtr_timeout_secs: u64,
    /// `-Timeout` of `runscript` (scripts, and `execute` on Linux/macOS), in seconds (§10.3;
    /// the RTR default is 30 s).
    #[serde(default = "default_script_timeout_secs")]
    pub script_timeout_secs: u64,
    /// How long a command may stay `complete: false` before it is reported `timed_out`
    /// (commands parked in the offline queue wait for the action's deadline instead).
    #[serde(default = "default_command_timeout_secs")]
    pub command_timeout_secs: u64,
    /// First delay between two polls (command status, file upload, containment), in ms.
    #[serde(default = "default_poll_interval_ms")]
    pub poll_interval_ms: u64,
    /// Longest delay between two polls, in ms (PSFalcon goes 5 s then 20 s, §10.4).
    #[serde(default = "default_max_poll_interval_ms")]
    pub max_poll_interval_ms: u64,
    /// Refresh a session idle this long, in seconds (idle expiry is 5 or 10 minutes, §5.4).
    #[serde(default = "default_session_refresh_secs")]
    pub session_refresh_secs: u64,
    /// Renew the bearer token this long before it expires, in seconds (FalconPy: 120, §2.1).
    #[serde(default = "default_token_renew_margin_secs")]
    pub token_renew_margin_secs: u64,
    /// Bytes of a command's output kept (the rest is cut, and the result says so).
    #[serde(default = "default_max_output_bytes")]
    pub max_output_bytes: usize,
    /// Longest wait for the next byte of a response, in seconds (must exceed
    /// `rtr_timeout_secs`: batch calls block that long, §8.5).
    #[serde(default = "default_read_timeout_secs")]
    pub read_timeout_secs: u64,
}

/// See [`CrowdStrikeConfig::permission_level`].
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum PermissionLevel {
    ReadOnly,
    ActiveResponder,
    #[default]
    Admin,
}

impl CrowdStrikeConfig {
    /// A config with every default.
    pub fn new(
        base_url: impl Into<String>,
        client_id: impl Into<String>,
        client_secret: SecretString,
    ) -> Self {
        CrowdStrikeConfig {
            base_url: base_url.into(),
            client_id: client_id.into(),
            client_secret,
            member_cid: None,
            ca_file: None,
            insecure_skip_verify: false,
            pinned_cert_sha256: None,
            permission_level: PermissionLevel::Admin,
            queue_offline: false,
            requests_per_minute: default_requests_per_minute(),
            batch_window_ms: default_batch_window_ms(),
            batch_host_limit: default_batch_host_limit(),
            rtr_timeout_secs: default_rtr_timeout_secs(),
            script_timeout_secs: default_script_timeout_secs(),
            command_timeout_secs: default_command_timeout_secs(),
            poll_interval_ms: default_poll_interval_ms(),
            max_poll_interval_ms: default_max_poll_interval_ms(),
            session_refresh_secs: default_session_refresh_secs(),
            token_renew_margin_secs: default_token_renew_margin_secs(),
            max_output_bytes: default_max_output_bytes(),
            read_timeout_secs: default_read_timeout_secs(),
        }
    }

    /// Every problem with the values, at once (no I/O).
    pub fn validate(&self) -> Result<(), Vec<String>> {
        let mut errors = Vec::new();
        match reqwest::Url::parse(&self.base_url) {
            Ok(url) if matches!(url.scheme(), "https" | "http") && url.has_host() => {}
            Ok(_) => errors.push(format!("base_url {:?} must be an http(s) URL", self.base_url)),
            Err(e) => errors.push(format!("base_url {:?} is invalid: {e}", self.base_url)),
        }
        if let Some(pin) = &self.pinned_cert_sha256
            && let Err(e) = edrgate_adapter::http::parse_pin(pin)
        {
            errors.push(format!("pinned_cert_sha256: {e}"));
        }
        if self.client_id.trim().is_empty() {
            errors.push("client_id must not be empty".into());
        }
        if self.requests_per_minute == 0 || self.requests_per_minute >= VENDOR_REQUESTS_PER_MINUTE {
            errors.push(format!(
                "requests_per_minute must be between 1 and {} (the CID's limit is {VENDOR_REQUESTS_PER_MINUTE})",
                VENDOR_REQUESTS_PER_MINUTE - 1
            ));
        }
        if self.batch_host_limit == 0 || self.batch_host_limit > VENDOR_BATCH_HOST_LIMIT {
            errors
                .push(format!("batch_host_limit must be between 1 and {VENDOR_BATCH_HOST_LIMIT}"));
        }
        if self.rtr_timeout_secs == 0 || self.rtr_timeout_secs > MAX_RTR_TIMEOUT_SECS {
            errors.push(format!("rtr_timeout_secs must be between 1 and {MAX_RTR_TIMEOUT_SECS}"));
        }
        if self.script_timeout_secs == 0 || self.script_timeout_secs + 10 > MAX_RTR_TIMEOUT_SECS {
            errors.push(format!(
                "script_timeout_secs must be between 1 and {}",
                MAX_RTR_TIMEOUT_SECS - 10
            ));
        }
        if self.read_timeout_secs <= self.rtr_timeout_secs {
            errors.push("read_timeout_secs must exceed rtr_timeout_secs".into());
        }
        if self.poll_interval_ms == 0 || self.max_poll_interval_ms < self.poll_interval_ms {
            errors.push("poll_interval_ms must be > 0 and <= max_poll_interval_ms".into());
        }
        for (name, value) in [
            ("command_timeout_secs", self.command_timeout_secs),
            ("session_refresh_secs", self.session_refresh_secs),
            ("max_output_bytes", self.max_output_bytes as u64),
        ] {
            if value == 0 {
                errors.push(format!("{name} must be at least 1"));
            }
        }
        if errors.is_empty() { Ok(()) } else { Err(errors) }
    }

    pub(crate) fn poll_min(&self) -> Duration {
        Duration::from_millis(self.poll_interval_ms)
    }

    pub(crate) fn poll_max(&self) -> Duration {
        Duration::from_millis(self.max_poll_interval_ms)
    }
}

fn default_requests_per_minute() -> u32 {
    // Headroom under the CID's 6,000 for the tenant's other API clients (§3).
    4000
}
fn default_batch_window_ms() -> u64 {
    500
}
fn default_batch_host_limit() -> usize {
    VENDOR_BATCH_HOST_LIMIT
}
fn default_rtr_timeout_secs() -> u64 {
    30
}
fn default_script_timeout_secs() -> u64 {
    60
}
fn default_command_timeout_secs() -> u64 {
    600
}
fn default_poll_interval_ms() -> u64 {
    1000
}
fn default_max_poll_interval_ms() -> u64 {
    20_000
}
fn default_session_refresh_secs() -> u64 {
    240
}
fn default_token_renew_margin_secs() -> u64 {
    120
}
fn default_max_output_bytes() -> usize {
    1024 * 1024
}
fn default_read_timeout_secs() -> u64 {
    MAX_RTR_TIMEOUT_SECS + 60
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn defaults_apply_and_unknown_fields_are_refused() {
        let cfg: CrowdStrikeConfig = serde_json::from_value(json!({
            "base_url": "https://api.eu-1.crowdstrike.com",
            "client_id": "0123456789abcdef",
            "client_secret": "hunter2-very-secret",
        }))
        .unwrap();
        assert_eq!(cfg.permission_level, PermissionLevel::Admin);
        assert!(!cfg.queue_offline);
        assert_eq!((cfg.requests_per_minute, cfg.batch_host_limit), (4000, 10_000));
        assert!(cfg.validate().is_ok(), "{:?}", cfg.validate());
        assert!(!format!("{cfg:?}").contains("hunter2"));
        let level: CrowdStrikeConfig = serde_json::from_value(json!({
            "base_url": "https://x", "client_id": "c", "client_secret": "s",
            "permission_level": "active_responder",
        }))
        .unwrap();
        assert_eq!(level.permission_level, PermissionLevel::ActiveResponder);
        let typo = serde_json::from_value::<CrowdStrikeConfig>(json!({
            "base_url": "https://x", "client_id": "c", "client_secret": "s", "client_secert": "s",
        }));
        assert!(typo.is_err());
        let missing = serde_json::from_value::<CrowdStrikeConfig>(json!({
            "client_id": "c", "client_secret": "s",
        }));
        assert!(missing.unwrap_err().to_string().contains("base_url"), "no default cloud");
    }

    #[test]
    fn validation_collects_every_error() {
        let mut cfg = CrowdStrikeConfig::new("ftp://x", " ", SecretString::from("s"));
        cfg.requests_per_minute = 6000;
        cfg.batch_host_limit = 10_001;
        cfg.rtr_timeout_secs = 601;
        cfg.poll_interval_ms = 0;
        let errors = cfg.validate().unwrap_err();
        assert_eq!(errors.len(), 6, "{errors:?}");
    }
}
