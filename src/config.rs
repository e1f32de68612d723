//! Configuration: one TOML file, `${ENV}` references in any string, parsed into [`Config`] and
//! then checked as a whole by [`Config::validate`], which reports every problem with its path.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use secrecy::SecretString;
use serde::Deserialize;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub server: ServerConfig,
    #[serde(default)]
    pub store: StoreConfig,
    #[serde(default)]
    pub files: FilesConfig,
    pub auth: AuthConfig,
    #[serde(default)]
    pub engine: EngineConfig,
    /// Tenant id → its backends.
    #[serde(default)]
    pub tenants: BTreeMap<String, TenantConfig>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// Largest JSON request body accepted, in bytes.
    #[serde(default = "default_max_body")]
    pub max_body_bytes: usize,
    /// Longest `?wait=` a long-poll may ask for, in seconds.
    #[serde(default = "default_max_wait")]
    pub max_wait_seconds: u64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreConfig {
    /// SQLite database file (created if missing; WAL mode).
    #[serde(default = "default_db")]
    pub path: PathBuf,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FilesConfig {
    /// Directory of stored files (results fetched from endpoints).
    #[serde(default = "default_files")]
    pub dir: PathBuf,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    /// Shared secret of HS256 bearer tokens (at least 32 bytes).
    pub hs256_secret: SecretString,
    /// Expected `iss`, when set.
    #[serde(default)]
    pub issuer: Option<String>,
    /// Expected `aud`, when set.
    #[serde(default)]
    pub audience: Option<String>,
    /// Claim that names the caller's tenant.
    #[serde(default = "default_tenant_claim")]
    pub tenant_claim: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EngineConfig {
    /// How long a claimed run stays owned without renewal; a crashed process's runs are
    /// resumed by the next one after this.
    #[serde(default = "default_lease")]
    pub lease_seconds: u64,
    /// Deadline of actions that do not set `timeout_seconds`.
    #[serde(default = "default_timeout")]
    pub default_timeout_seconds: u64,
    /// Longest `timeout_seconds` a caller may ask for.
    #[serde(default = "default_max_timeout")]
    pub max_timeout_seconds: u64,
    /// Runs this process drives at once.
    #[serde(default = "default_in_flight")]
    pub max_runs_in_flight: u32,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TenantConfig {
    /// Backend name → backend. Hostname targets are looked up on every backend of the tenant;
    /// a hostname two backends know is refused as ambiguous.
    #[serde(default)]
    pub backends: BTreeMap<String, BackendConfig>,
}

/// A vendor backend, tagged by `kind`.
#[derive(Debug, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum BackendConfig {
    Carbonblack(edrgate_carbonblack::CarbonBlackConfig),
}

impl BackendConfig {
    pub fn kind(&self) -> &'static str {
        match self {
            BackendConfig::Carbonblack(_) => "carbonblack",
        }
    }

    /// The vendor's own checks of its settings (no IO).
    pub fn validate(&self) -> Result<(), Vec<String>> {
        match self {
            BackendConfig::Carbonblack(cb) => cb.validate(),
        }
    }
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: default_listen(),
            max_body_bytes: default_max_body(),
            max_wait_seconds: default_max_wait(),
        }
    }
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig { path: default_db() }
    }
}

impl Default for FilesConfig {
    fn default() -> Self {
        FilesConfig { dir: default_files() }
    }
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            lease_seconds: default_lease(),
            default_timeout_seconds: default_timeout(),
            max_timeout_seconds: default_max_timeout(),
            max_runs_in_flight: default_in_flight(),
        }
    }
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 8080))
}
fn default_max_body() -> usize {
    1024 * 1024
}
fn default_max_wait() -> u64 {
    60
}
fn default_db() -> PathBuf {
    PathBuf::from("data/edrgate.db")
}
fn default_files() -> PathBuf {
    PathBuf::from("data/files")
}
fn default_tenant_claim() -> String {
    "tenant".into()
}
fn default_lease() -> u64 {
    30
}
fn default_timeout() -> u64 {
    3600
}
fn default_max_timeout() -> u64 {
    7 * 24 * 3600
}
fn default_in_flight() -> u32 {
    5000
}

impl Config {
    /// Reads, interpolates and parses `path`, then validates. Every problem is reported.
    pub fn load(path: &Path) -> Result<Config, Vec<String>> {
        let text =
            std::fs::read_to_string(path).map_err(|e| vec![format!("{}: {e}", path.display())])?;
        Self::parse(&text, |name| std::env::var(name).ok())
    }

    pub fn parse(text: &str, env: impl Fn(&str) -> Option<String>) -> Result<Config, Vec<String>> {
        let mut value: toml::Value = toml::from_str(text).map_err(|e| vec![e.to_string()])?;
        let mut errors = Vec::new();
        interpolate(&mut value, "", &env, &mut errors);
        if !errors.is_empty() {
            return Err(errors);
        }
        let config: Config = value.try_into().map_err(|e: toml::de::Error| vec![e.to_string()])?;
        config.validate()?;
        Ok(config)
    }

    /// Checks what types cannot: identifiers, lengths, ranges. No IO.
    pub fn validate(&self) -> Result<(), Vec<String>> {
        use secrecy::ExposeSecret;
        let mut errors = Vec::new();
        if self.auth.hs256_secret.expose_secret().len() < 32 {
            errors.push("auth.hs256_secret: must be at least 32 bytes".to_owned());
        }
        if self.engine.lease_seconds == 0 {
            errors.push("engine.lease_seconds: must be at least 1".to_owned());
        }
        if self.engine.default_timeout_seconds > self.engine.max_timeout_seconds {
            errors.push(
                "engine.default_timeout_seconds: must not exceed engine.max_timeout_seconds".into(),
            );
        }
        for (tenant, t) in &self.tenants {
            if !is_identifier(tenant) {
                errors.push(format!(
                    "tenants.{tenant}: tenant ids are 1-64 characters of a-z, A-Z, 0-9, '-' and '_'"
                ));
            }
            if t.backends.is_empty() {
                errors.push(format!("tenants.{tenant}.backends: at least one backend is needed"));
            }
            for (name, backend) in &t.backends {
                if !is_identifier(name) {
                    errors.push(format!(
                        "tenants.{tenant}.backends.{name}: backend names are 1-64 characters of a-z, A-Z, 0-9, '-' and '_'"
                    ));
                }
                if let Err(problems) = backend.validate() {
                    errors.extend(
                        problems
                            .into_iter()
                            .map(|p| format!("tenants.{tenant}.backends.{name}.{p}")),
                    );
                }
            }
        }
        if errors.is_empty() { Ok(()) } else { Err(errors) }
    }
}

/// Tenant ids and backend names: they appear in paths, metrics and logs.
pub fn is_identifier(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// Replaces `${NAME}` in every string with the environment variable `NAME`.
fn interpolate(
    value: &mut toml::Value,
    path: &str,
    env: &impl Fn(&str) -> Option<String>,
    errors: &mut Vec<String>,
) {
    match value {
        toml::Value::String(s) => {
            let mut out = String::with_capacity(s.len());
            let mut rest = s.as_str();
            while let Some(start) = rest.find("${") {
                out.push_str(&rest[..start]);
                let Some(end) = rest[start..].find('}') else {
                    errors.push(format!("{path}: unterminated ${{"));
                    return;
                };
                let name = &rest[start + 2..start + end];
                match env(name) {
                    Some(v) => out.push_str(&v),
                    None => errors.push(format!("{path}: environment variable {name} is not set")),
                }
                rest = &rest[start + end + 1..];
            }
            out.push_str(rest);
            *s = out;
        }
        toml::Value::Table(t) => {
            for (k, v) in t.iter_mut() {
                let p = if path.is_empty() { k.clone() } else { format!("{path}.{k}") };
                interpolate(v, &p, env, errors);
            }
        }
        toml::Value::Array(a) => {
            for (i, v) in a.iter_mut().enumerate() {
                interpolate(v, &format!("{path}[{i}]"), env, errors);
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = r#"
        [auth]
        hs256_secret = "${SECRET}"
        [tenants.acme.backends.cb]
        kind = "carbonblack"
        url = "https://cb.example.com"
        token = "${CB_TOKEN}"
    "#;

    #[test]
    fn parses_with_environment_references() {
        let env = |name: &str| match name {
            "SECRET" => Some("x".repeat(32)),
            "CB_TOKEN" => Some("t".into()),
            _ => None,
        };
        let config = Config::parse(EXAMPLE, env).unwrap();
        assert_eq!(config.tenants["acme"].backends["cb"].kind(), "carbonblack");
        assert_eq!(config.engine.lease_seconds, 30);
    }

    #[test]
    fn reports_every_problem_with_its_path() {
        let errors = Config::parse(EXAMPLE, |_| None).unwrap_err();
        assert_eq!(
            errors,
            [
                "auth.hs256_secret: environment variable SECRET is not set",
                "tenants.acme.backends.cb.token: environment variable CB_TOKEN is not set"
            ]
        );
        let errors =
            Config::parse("[auth]\nhs256_secret = \"short\"\n[tenants.\"a/b\"]\n", |_| None)
                .unwrap_err();
        assert_eq!(errors.len(), 3, "{errors:?}");
        let errors =
            Config::parse(&EXAMPLE.replace("https://cb.example.com", "ftp:nowhere"), |_| {
                Some("x".repeat(32))
            })
            .unwrap_err();
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(errors[0].starts_with("tenants.acme.backends.cb.url"), "{errors:?}");
    }
}
