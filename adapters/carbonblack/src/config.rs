//! Configuration of one Carbon Black EDR backend.
//!
//! Parsed from the gateway's config file (`deny_unknown_fields`, so a typo is an error rather
//! than a silently ignored knob). Defaults follow what cbapi does against real servers
//! (carbonblack.md §5.2–§5.5) except where cbapi's own defaults are the weakness the reference
//! lists (§8: 120 s polls too short for files, no keepalive, whole-file buffering).

use std::path::PathBuf;
use std::time::Duration;

use secrecy::SecretString;
use serde::Deserialize;

/// One Carbon Black EDR (CB Response) server and the API token edrgate uses on it.
///
/// `Debug` prints the token as `[REDACTED]` (secrecy); the type is deliberately not
/// `Serialize`, so the token cannot end up in an API response or a dumped config.
#[derive(Clone, Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CarbonBlackConfig {
    /// Base URL of the server, e.g. `https://cb.example.com` (cbapi refuses anything but
    /// `https://`; plain `http://` is accepted for local simulators and logged as a warning).
    pub url: String,
    /// API token sent as `X-Auth-Token` (carbonblack.md §1).
    #[schemars(with = "String")]
    pub token: SecretString,
    /// PEM file of the CA that signed the server's certificate (on-prem servers usually have
    /// their own; cbapi `ssl_cert_file`, §7.3).
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// Accept any server certificate. For labs only (cbapi `ssl_verify=False`).
    #[serde(default)]
    pub insecure_skip_verify: bool,
    /// SHA-256 fingerprint of the server's own certificate (hex; colons allowed, as
    /// `openssl x509 -noout -fingerprint -sha256` prints it): only that certificate is accepted,
    /// whoever signed it. Overrides `ca_file`.
    #[serde(default)]
    pub pinned_cert_sha256: Option<String>,
    /// Concurrent live-response sessions edrgate opens on this server. CB allows 10 by default
    /// and every `pending`/`active` session holds one (§3.3); lower it when other tools share
    /// the server.
    #[serde(default = "default_slot_limit")]
    pub slot_limit: usize,
    /// First delay between two polls of a session or command, in milliseconds.
    #[serde(default = "default_poll_interval_ms")]
    pub poll_interval_ms: u64,
    /// Longest delay between two polls; the delay grows with the time already waited.
    #[serde(default = "default_max_poll_interval_ms")]
    pub max_poll_interval_ms: u64,
    /// Longest single blocking `GET …/command/{id}?wait=true` (§2.8), in milliseconds; 0 turns
    /// long-polling off and only plain polls are used. Kept short: a step must not block long.
    #[serde(default = "default_long_poll_ms")]
    pub long_poll_ms: u64,
    /// How long a run waits for a new session to turn `active` (the sensor's check-in) before
    /// its commands fail with `device_offline`. cbapi waits 360 s (§5.2).
    #[serde(default = "default_checkin_timeout")]
    pub session_checkin_timeout_secs: u64,
    /// How long one command may stay unfinished before it is cancelled and reported
    /// `timed_out` (cbapi's 120 s, §5.4). Applies to each `get file` range separately.
    #[serde(default = "default_command_timeout")]
    pub command_timeout_secs: u64,
    /// The same for `memdump`, which takes much longer (cbapi 3600 s, §5.4).
    #[serde(default = "default_memdump_timeout")]
    pub memdump_timeout_secs: u64,
    /// Keepalive period of an active session while a long command runs; must stay below the
    /// server's `sensor_wait_timeout` (120 s, §2.5). cbapi uses 30 s.
    #[serde(default = "default_keepalive")]
    pub keepalive_interval_secs: u64,
    /// Bytes fetched per `get file` range (`offset`/`get_count`, §4.3). Matches the server's
    /// default transfer chunk of 4 MB (§2.13).
    #[serde(default = "default_chunk_size")]
    pub chunk_size: u64,
    /// Longest wait for the next byte of a response before the call counts as failed.
    #[serde(default = "default_read_timeout")]
    pub read_timeout_secs: u64,
    /// How many times a run re-opens a session that died under it (`Session N not found`)
    /// before giving up, like cbapi's `MAX_RETRY_COUNT` (§5.3).
    #[serde(default = "default_session_retries")]
    pub max_session_retries: u32,
}

impl CarbonBlackConfig {
    /// A config with every default, for a server at `url` with `token`.
    pub fn new(url: impl Into<String>, token: SecretString) -> Self {
        CarbonBlackConfig {
            url: url.into(),
            token,
            ca_file: None,
            insecure_skip_verify: false,
            pinned_cert_sha256: None,
            slot_limit: default_slot_limit(),
            poll_interval_ms: default_poll_interval_ms(),
            max_poll_interval_ms: default_max_poll_interval_ms(),
            long_poll_ms: default_long_poll_ms(),
            session_checkin_timeout_secs: default_checkin_timeout(),
            command_timeout_secs: default_command_timeout(),
            memdump_timeout_secs: default_memdump_timeout(),
            keepalive_interval_secs: default_keepalive(),
            chunk_size: default_chunk_size(),
            read_timeout_secs: default_read_timeout(),
            max_session_retries: default_session_retries(),
        }
    }

    /// Every problem with the values, at once (no I/O).
    pub fn validate(&self) -> Result<(), Vec<String>> {
        let mut errors = Vec::new();
        if let Some(pin) = &self.pinned_cert_sha256
            && let Err(e) = edrgate_adapter::http::parse_pin(pin)
        {
            errors.push(format!("pinned_cert_sha256: {e}"));
        }
        match reqwest::Url::parse(&self.url) {
            Ok(url) if matches!(url.scheme(), "https" | "http") && url.has_host() => {}
            Ok(_) => errors.push(format!("url {:?} must be an http(s) URL with a host", self.url)),
            Err(e) => errors.push(format!("url {:?} is invalid: {e}", self.url)),
        }
        if self.slot_limit == 0 {
            errors.push("slot_limit must be at least 1".into());
        }
        if self.poll_interval_ms == 0 || self.max_poll_interval_ms < self.poll_interval_ms {
            errors.push("poll_interval_ms must be > 0 and <= max_poll_interval_ms".into());
        }
        if self.chunk_size < 1024 {
            errors.push("chunk_size must be at least 1024 bytes".into());
        }
        for (name, value) in [
            ("session_checkin_timeout_secs", self.session_checkin_timeout_secs),
            ("command_timeout_secs", self.command_timeout_secs),
            ("memdump_timeout_secs", self.memdump_timeout_secs),
            ("keepalive_interval_secs", self.keepalive_interval_secs),
            ("read_timeout_secs", self.read_timeout_secs),
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

fn default_slot_limit() -> usize {
    10
}
fn default_poll_interval_ms() -> u64 {
    100
}
fn default_max_poll_interval_ms() -> u64 {
    2000
}
fn default_long_poll_ms() -> u64 {
    2000
}
fn default_checkin_timeout() -> u64 {
    360
}
fn default_command_timeout() -> u64 {
    120
}
fn default_memdump_timeout() -> u64 {
    3600
}
fn default_keepalive() -> u64 {
    30
}
fn default_chunk_size() -> u64 {
    4 * 1024 * 1024
}
fn default_read_timeout() -> u64 {
    120
}
fn default_session_retries() -> u32 {
    5
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_apply_and_unknown_fields_are_refused() {
        let cfg: CarbonBlackConfig = serde_json::from_value(serde_json::json!({
            "url": "https://cb.example.com",
            "token": "0123456789abcdef0123456789abcdef01234567",
        }))
        .unwrap();
        assert_eq!(cfg.slot_limit, 10);
        assert_eq!(cfg.chunk_size, 4 * 1024 * 1024);
        assert_eq!(cfg.session_checkin_timeout_secs, 360);
        assert!(cfg.validate().is_ok());
        assert!(!format!("{cfg:?}").contains("0123456789abcdef"));

        let typo = serde_json::from_value::<CarbonBlackConfig>(serde_json::json!({
            "url": "https://cb.example.com",
            "token": "t",
            "slot_limt": 3,
        }));
        assert!(typo.is_err());
    }

    #[test]
    fn validation_collects_every_error() {
        let mut cfg = CarbonBlackConfig::new("ftp://x", SecretString::from("t"));
        cfg.slot_limit = 0;
        cfg.chunk_size = 10;
        let errors = cfg.validate().unwrap_err();
        assert_eq!(errors.len(), 3, "{errors:?}");
    }
}
