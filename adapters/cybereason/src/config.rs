//! Configuration of one Cybereason backend.
//!
//! Parsed from the gateway's config file (`deny_unknown_fields`, so a typo is an error rather
//! than a silently ignored knob). Section numbers (§) refer to
//! `shared/vendor-apis/cybereason.md`.

use std::path::PathBuf;
use std::time::Duration;

use secrecy::SecretString;
use serde::Deserialize;
use serde_json::{Value, json};

/// One Cybereason console and the user edrgate logs in as.
///
/// `Debug` prints secrets as `[REDACTED]` (secrecy); the type is deliberately not
/// `Serialize`, so a password cannot end up in an API response or a dumped config.
#[derive(Clone, Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CybereasonConfig {
    /// Base URL of the console, e.g. `https://acme.cybereason.net:8443` (§2). Plain `http://`
    /// is accepted for local simulators and logged as a warning.
    pub url: String,
    /// Console user of the form login (§3.1). Remediation needs an L3 analyst, IR tools a
    /// Responder L2 user (§3.5).
    pub username: String,
    #[schemars(with = "String")]
    pub password: SecretString,
    /// Base32 TOTP secret of the user, for the two-factor step (§3.2). Responder L2 users must
    /// have two-factor authentication, so running IR tools needs it (§3.2, D5).
    #[serde(default)]
    #[schemars(with = "Option<String>")]
    pub totp_secret: Option<SecretString>,
    /// Password of the AES-encrypted zips the file fetches return (§6.4: a fixed value of the
    /// platform). Defaults to the constant the vendor's public Python SDK extracts them with
    /// ([`DEFAULT_FETCH_ZIP_PASSWORD`]), so `get_file` works without configuration; set it only
    /// for a console that uses another one.
    #[serde(default = "default_fetch_zip_password")]
    #[schemars(with = "Option<String>")]
    pub fetch_zip_password: SecretString,
    /// How `get_file` fetches: `direct` (default: `POST /rest/file-search/fetch-direct` by
    /// path and pylum id, one request) or `batch` (the documented fetch-file batch flow on the
    /// file's element GUID, §6.4, for consoles without the direct route).
    #[serde(default)]
    pub fetch_mode: FetchMode,
    /// PEM file of the CA that signed the console's certificate (on-prem consoles).
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// Accept any server certificate. For labs only.
    #[serde(default)]
    pub insecure_skip_verify: bool,
    /// SHA-256 fingerprint of the server's own certificate (hex; colons allowed, as
    /// `openssl x509 -noout -fingerprint -sha256` prints it): only that certificate is accepted,
    /// whoever signed it. Overrides `ca_file`.
    #[serde(default)]
    pub pinned_cert_sha256: Option<String>,
    /// Lifetime of a `JSESSIONID` (8 h per the docs, §3.4).
    #[serde(default = "default_session_lifetime")]
    pub session_lifetime_secs: u64,
    /// Log in again this long before the lifetime ends (SEKOIA uses 300 s, XSOAR ~12 min,
    /// §3.4), so no call races the expiry.
    #[serde(default = "default_relogin_margin")]
    pub relogin_margin_secs: u64,
    /// Path of the "Run an Incident Response Tool" request (§6.6.2), which no public source
    /// documents: the operator sets it for their console version (e.g.
    /// `/rest/sensors/action/runIRTool`, the sensor batch framework's `POST
    /// /rest/sensors/action/<verb>` of §6.5, whose action type for IR runs is
    /// `IRToolsRunIRTool`). **Unset (the default), `run_script` is not offered.**
    #[serde(default)]
    pub ir_run_path: Option<String>,
    /// Body of that request, as JSON (only with `ir_run_path`). String values are placeholders
    /// replaced per run: `"$sensorsIds"` → the array of the target's `sensorId`, `"$pylumIds"`
    /// → its pylum id array, `"$toolName"` → the package name (`run_script.script`),
    /// `"$arguments"` → the array of `run_script.args`, `"$commandLine"` → name and arguments
    /// joined by spaces. Unset, the batch framework's body is used (§6.5: `sensorsIds` or
    /// `filters`, plus `argument`) — [`default_ir_run_body`].
    #[serde(default)]
    pub ir_run_body: Option<Value>,
    /// Concurrent steps (each a few vendor calls) edrgate runs against this console.
    #[serde(default = "default_concurrency")]
    pub max_concurrent_requests: usize,
    /// Vendor calls per minute edrgate allows itself. The vendor publishes no limit; clients
    /// back off 60 s on 429 (§4).
    #[serde(default = "default_calls_per_minute")]
    pub calls_per_minute: u32,
    /// First delay between two polls of a remediation, batch or fetch, in milliseconds.
    #[serde(default = "default_poll_interval_ms")]
    pub poll_interval_ms: u64,
    /// Longest delay between two polls; the delay grows with the time already waited.
    #[serde(default = "default_max_poll_interval_ms")]
    pub max_poll_interval_ms: u64,
    /// How long a remediation, IR run or fetch may stay unfinished before it is reported
    /// `timed_out` (the console keeps it; offline machines queue remediations, §6.3).
    #[serde(default = "default_action_timeout")]
    pub action_timeout_secs: u64,
    /// Longest wait for the next byte of a response before the call counts as failed.
    #[serde(default = "default_read_timeout")]
    pub read_timeout_secs: u64,
}

/// See [`CybereasonConfig::fetch_mode`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum FetchMode {
    #[default]
    Direct,
    Batch,
}

impl CybereasonConfig {
    /// A config with every default.
    pub fn new(
        url: impl Into<String>,
        username: impl Into<String>,
        password: SecretString,
    ) -> Self {
        CybereasonConfig {
            url: url.into(),
            username: username.into(),
            password,
            totp_secret: None,
            fetch_zip_password: default_fetch_zip_password(),
            fetch_mode: FetchMode::Direct,
            ca_file: None,
            insecure_skip_verify: false,
            pinned_cert_sha256: None,
            session_lifetime_secs: default_session_lifetime(),
            relogin_margin_secs: default_relogin_margin(),
            ir_run_path: None,
            ir_run_body: None,
            max_concurrent_requests: default_concurrency(),
            calls_per_minute: default_calls_per_minute(),
            poll_interval_ms: default_poll_interval_ms(),
            max_poll_interval_ms: default_max_poll_interval_ms(),
            action_timeout_secs: default_action_timeout(),
            read_timeout_secs: default_read_timeout(),
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
        if self.username.trim().is_empty() {
            errors.push("username must not be empty".into());
        }
        if let Some(secret) = &self.totp_secret {
            use secrecy::ExposeSecret as _;
            if let Err(e) = crate::client::totp(secret.expose_secret()) {
                errors.push(format!("totp_secret: {e}"));
            }
        }
        if self.relogin_margin_secs >= self.session_lifetime_secs {
            errors.push("relogin_margin_secs must be smaller than session_lifetime_secs".into());
        }
        if let Some(path) = &self.ir_run_path
            && !path.starts_with("/rest/")
        {
            errors.push(format!("ir_run_path {path:?} must start with /rest/"));
        }
        match &self.ir_run_body {
            Some(_) if self.ir_run_path.is_none() => {
                errors.push(
                    "ir_run_body needs ir_run_path (the run request is configured as a pair)"
                        .into(),
                );
            }
            Some(body) if !body.is_object() => {
                errors.push("ir_run_body must be a JSON object".into());
            }
            Some(body) if !mentions_target(body) => errors.push(
                "ir_run_body must name the target with \"$sensorsIds\" or \"$pylumIds\"".into(),
            ),
            _ => {}
        }
        if self.max_concurrent_requests == 0 {
            errors.push("max_concurrent_requests must be at least 1".into());
        }
        if self.calls_per_minute == 0 {
            errors.push("calls_per_minute must be at least 1".into());
        }
        if self.poll_interval_ms == 0 || self.max_poll_interval_ms < self.poll_interval_ms {
            errors.push("poll_interval_ms must be > 0 and <= max_poll_interval_ms".into());
        }
        for (name, value) in [
            ("session_lifetime_secs", self.session_lifetime_secs),
            ("action_timeout_secs", self.action_timeout_secs),
            ("read_timeout_secs", self.read_timeout_secs),
        ] {
            if value == 0 {
                errors.push(format!("{name} must be at least 1"));
            }
        }
        if errors.is_empty() { Ok(()) } else { Err(errors) }
    }

    /// The operator-configured IR run request (§6.6.2): its path and body template, or
    /// `None` when `run_script` is not offered.
    pub(crate) fn ir_run(&self) -> Option<(&str, Value)> {
        let path = self.ir_run_path.as_deref()?;
        Some((path, self.ir_run_body.clone().unwrap_or_else(default_ir_run_body)))
    }

    pub(crate) fn poll_min(&self) -> Duration {
        Duration::from_millis(self.poll_interval_ms)
    }

    pub(crate) fn poll_max(&self) -> Duration {
        Duration::from_millis(self.max_poll_interval_ms)
    }

    /// How long a fresh session is used before a proactive re-login.
    pub(crate) fn session_use(&self) -> Duration {
        Duration::from_secs(self.session_lifetime_secs.saturating_sub(self.relogin_margin_secs))
    }
}

fn mentions_target(v: &Value) -> bool {
    match v {
        Value::String(s) => s == "$sensorsIds" || s == "$pylumIds",
        Value::Array(a) => a.iter().any(mentions_target),
        Value::Object(o) => o.values().any(mentions_target),
        _ => false,
    }
}

fn default_session_lifetime() -> u64 {
    8 * 3600
}
fn default_relogin_margin() -> u64 {
    1800
}
/// The password of the zips Cybereason's file fetches return: the constant the vendor's public
/// Python SDK (`cybereason` on PyPI, github.com/forensic-security/cybereason) opens them with,
/// `AESZipFile(...).extractall(..., pwd=b'cautionhandlewithcare')` in
/// `src/cybereason/sensors.py` (`download_file`, the `file-search/fetch-direct` client).
pub const DEFAULT_FETCH_ZIP_PASSWORD: &str = "cautionhandlewithcare";

fn default_fetch_zip_password() -> SecretString {
    SecretString::from(DEFAULT_FETCH_ZIP_PASSWORD)
}

/// The IR run body used when `ir_run_path` is set without `ir_run_body`: the sensor batch
/// framework's (§6.5, D22: `sensorsIds` or `filters`, plus `argument`), an inference.
pub fn default_ir_run_body() -> Value {
    json!({"sensorsIds": "$sensorsIds", "filters": null, "argument": "$toolName", "arguments": "$arguments"})
}
fn default_concurrency() -> usize {
    10
}
fn default_calls_per_minute() -> u32 {
    600
}
fn default_poll_interval_ms() -> u64 {
    200
}
fn default_max_poll_interval_ms() -> u64 {
    5000
}
fn default_action_timeout() -> u64 {
    3600
}
fn default_read_timeout() -> u64 {
    120
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_apply_and_unknown_fields_are_refused() {
        let cfg: CybereasonConfig = serde_json::from_value(json!({
            "url": "https://acme.cybereason.net:8443",
            "username": "edrgate@acme.example",
            "password": "hunter2-very-secret",
            "totp_secret": "JBSWY3DPEHPK3PXPJBSWY3DPEHPK3PXP",
        }))
        .unwrap();
        assert_eq!(cfg.session_lifetime_secs, 8 * 3600);
        assert_eq!(cfg.ir_run_path, None, "the IR run request is not guessed");
        assert!(cfg.ir_run().is_none());
        {
            use secrecy::ExposeSecret as _;
            assert_eq!(cfg.fetch_zip_password.expose_secret(), "cautionhandlewithcare");
        }
        assert!(cfg.validate().is_ok(), "{:?}", cfg.validate());
        let debug = format!("{cfg:?}");
        assert!(!debug.contains("hunter2") && !debug.contains("JBSWY3DP"), "{debug}");

        let typo = serde_json::from_value::<CybereasonConfig>(json!({
            "url": "https://x", "username": "u", "password": "p", "pasword": "p",
        }));
        assert!(typo.is_err());
    }

    #[test]
    fn validation_collects_every_error() {
        let mut cfg = CybereasonConfig::new("ftp://x", " ", SecretString::from("p"));
        cfg.totp_secret = Some(SecretString::from("not base32 !"));
        cfg.relogin_margin_secs = cfg.session_lifetime_secs;
        cfg.ir_run_path = Some("/sensors/run".into());
        cfg.ir_run_body = Some(json!({"toolName": "$toolName"}));
        cfg.max_concurrent_requests = 0;
        let errors = cfg.validate().unwrap_err();
        assert_eq!(errors.len(), 7, "{errors:?}");

        let mut body_only = CybereasonConfig::new("https://x", "u", SecretString::from("p"));
        body_only.ir_run_body = Some(default_ir_run_body());
        let errors = body_only.validate().unwrap_err();
        assert!(errors[0].contains("needs ir_run_path"), "{errors:?}");
    }

    #[test]
    fn the_ir_run_request_is_operator_configured() {
        let mut cfg = CybereasonConfig::new("https://x", "u", SecretString::from("p"));
        cfg.ir_run_path = Some("/rest/sensors/action/runIRTool".into());
        let (path, body) = cfg.ir_run().unwrap();
        assert_eq!((path, body), ("/rest/sensors/action/runIRTool", default_ir_run_body()));
        cfg.ir_run_body = Some(json!({"pylumIds": "$pylumIds", "toolName": "$toolName"}));
        assert_eq!(cfg.ir_run().unwrap().1["pylumIds"], "$pylumIds");
        assert!(cfg.validate().is_ok());
    }
}
