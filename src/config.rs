//! Configuration: one TOML file, `${ENV}` references in any string, parsed into [`Config`] and
//! then checked as a whole by [`Config::validate`], which reports every problem with its path.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use secrecy::SecretString;
use serde::Deserialize;

#[derive(Debug, Deserialize, schemars::JsonSchema)]
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
    /// (tenant, backend) → SHA-256 of the backend's resolved settings: a reload rebuilds only
    /// the backends whose settings changed.
    #[serde(skip)]
    pub backend_fingerprints: BTreeMap<(String, String), [u8; 32]>,
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
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
    /// Reverse proxies (addresses or CIDR blocks) whose `Forwarded` / `X-Forwarded-For`
    /// headers are believed; from any other peer they are ignored.
    #[serde(default)]
    pub trusted_proxies: Vec<String>,
    /// Path the API is served under (`/edrgate` serves `/edrgate/v1/actions`), for a reverse
    /// proxy that forwards a sub-path as is. `/healthz`, `/readyz` and `/metrics` are also
    /// served at the root, for probes and scrapers that reach the process directly.
    #[serde(default)]
    pub path_prefix: String,
    /// On SIGTERM: how long in-flight requests, then run drivers, get to finish before the
    /// process exits (runs not handed back by then are taken over after their lease).
    #[serde(default = "default_grace")]
    pub shutdown_grace_seconds: u64,
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct StoreConfig {
    /// SQLite database file (created if missing; WAL mode). One replica only; ignored when
    /// `url` is set.
    #[serde(default = "default_db")]
    pub path: PathBuf,
    /// A PostgreSQL database (`postgres://user:password@host:5432/db?sslmode=verify-full`)
    /// instead of the SQLite file: needed to run several replicas. Secret (it may carry the
    /// password): give it as `${ENV}`.
    #[serde(default)]
    #[schemars(with = "Option<String>")]
    pub url: Option<SecretString>,
    /// Connections each replica keeps to PostgreSQL.
    #[serde(default = "default_db_connections")]
    pub max_connections: u32,
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FilesConfig {
    /// Directory of stored files (results fetched from endpoints, uploads), unless `s3` is set.
    #[serde(default = "default_files")]
    pub dir: PathBuf,
    /// An S3-compatible object store instead of `dir` (for several replicas).
    #[serde(default)]
    pub s3: Option<S3Config>,
    /// Largest upload (`POST /v1/files`) a tenant may send, in bytes.
    #[serde(default = "default_max_upload")]
    pub max_upload_bytes: u64,
    /// How long stored files are kept, in days; unset: until deleted.
    #[serde(default)]
    pub retention_days: Option<u32>,
    /// How often expired and deleted files are purged, in seconds.
    #[serde(default = "default_sweep_interval")]
    pub sweep_interval_seconds: u64,
    /// Per-tenant overrides of `max_upload_bytes` and `retention_days`.
    #[serde(default)]
    pub tenants: BTreeMap<String, TenantFilesConfig>,
}

#[derive(Debug, Default, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TenantFilesConfig {
    #[serde(default)]
    pub max_upload_bytes: Option<u64>,
    #[serde(default)]
    pub retention_days: Option<u32>,
}

/// An S3-compatible bucket. Without credentials, the usual AWS environment (variables,
/// instance metadata) is used.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct S3Config {
    pub bucket: String,
    /// `http(s)://host:port` of an S3-compatible server; unset: AWS S3 of `region`.
    #[serde(default)]
    pub endpoint: Option<String>,
    #[serde(default = "default_region")]
    pub region: String,
    #[serde(default)]
    pub access_key_id: Option<String>,
    #[serde(default)]
    #[schemars(with = "Option<String>")]
    pub secret_access_key: Option<SecretString>,
    /// Prepended to every object key (e.g. `edrgate/`).
    #[serde(default)]
    pub prefix: String,
}

impl FilesConfig {
    /// Checks of `[files]`; `tenants` are the configured tenant ids.
    fn validate(&self, tenants: &BTreeMap<String, TenantConfig>, errors: &mut Vec<String>) {
        if self.max_upload_bytes == 0 {
            errors.push("files.max_upload_bytes: must be at least 1".into());
        }
        if self.retention_days == Some(0) {
            errors.push("files.retention_days: must be at least 1 (or unset to keep files)".into());
        }
        if self.sweep_interval_seconds == 0 {
            errors.push("files.sweep_interval_seconds: must be at least 1".into());
        }
        for (tenant, t) in &self.tenants {
            if !tenants.contains_key(tenant) {
                errors.push(format!("files.tenants.{tenant}: no such tenant"));
            }
            if t.max_upload_bytes == Some(0) {
                errors.push(format!("files.tenants.{tenant}.max_upload_bytes: must be at least 1"));
            }
            if t.retention_days == Some(0) {
                errors.push(format!("files.tenants.{tenant}.retention_days: must be at least 1"));
            }
        }
        if let Some(s3) = &self.s3 {
            // S3 bucket naming rules: 3-63 of a-z, 0-9, '.', '-'.
            let bucket_ok = (3..=63).contains(&s3.bucket.len())
                && s3.bucket.bytes().all(|b| {
                    b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'.' || b == b'-'
                });
            if !bucket_ok {
                errors.push("files.s3.bucket: 3-63 characters of a-z, 0-9, '.' and '-'".into());
            }
            if let Some(endpoint) = &s3.endpoint
                && !(endpoint.starts_with("http://") || endpoint.starts_with("https://"))
            {
                errors.push("files.s3.endpoint: must be an http:// or https:// URL".into());
            }
            if s3.access_key_id.is_some() != s3.secret_access_key.is_some() {
                errors.push("files.s3: access_key_id and secret_access_key go together".into());
            }
            if s3.prefix.starts_with('/')
                || s3.prefix.split('/').any(|s| s == "..")
                || !(s3.prefix.is_empty() || s3.prefix.ends_with('/'))
            {
                errors
                    .push("files.s3.prefix: a relative path ending with '/', without '..'".into());
            }
        }
    }
}

/// Bearer-token settings (see `crate::auth`). Production: public keys from PEM files and/or
/// JWKS endpoints, with `issuer` and `audience`. Development: HS256 with a shared secret, only
/// when `allow_hs256` says so.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    /// Public keys read from PEM files.
    #[serde(default)]
    pub keys: Vec<AuthKeyConfig>,
    /// JWKS endpoints of identity providers.
    #[serde(default)]
    pub jwks: Vec<JwksConfig>,
    /// Accept HS256 tokens signed with `hs256_secret`. For development and demos: anyone who
    /// holds the secret can mint tokens for any tenant.
    #[serde(default)]
    pub allow_hs256: bool,
    /// Shared secret of HS256 bearer tokens (at least 32 bytes); needs `allow_hs256`.
    #[serde(default)]
    #[schemars(with = "Option<String>")]
    pub hs256_secret: Option<SecretString>,
    /// Expected `iss`; required with `keys` or `jwks`.
    #[serde(default)]
    pub issuer: Option<String>,
    /// Expected `aud`; required with `keys` or `jwks`.
    #[serde(default)]
    pub audience: Option<String>,
    /// Claim that names the caller's tenant.
    #[serde(default = "default_tenant_claim")]
    pub tenant_claim: String,
    /// Claim holding the caller's scopes, as a space-separated string or an array of strings.
    /// Unset: `scope` (string, RFC 8693) and `scp` (array or string, Entra ID/Okta) are both read.
    #[serde(default)]
    pub scope_claim: Option<String>,
    /// Clock skew tolerated on `exp` and `nbf`, in seconds (at most 300).
    #[serde(default = "default_leeway")]
    pub leeway_seconds: u64,
    /// The scope that grants each permission.
    #[serde(default)]
    pub scopes: ScopeNames,
}

/// A public key in a PEM file (`PUBLIC KEY`, `RSA PUBLIC KEY`).
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AuthKeyConfig {
    pub pem_file: PathBuf,
    /// Tokens whose header names this `kid` are checked with this key only.
    #[serde(default)]
    pub kid: Option<String>,
    /// `RS256`, `RS384`, `RS512`, `PS256`, `PS384`, `PS512`, `ES256`, `ES384` or `EdDSA`.
    /// Default by key type: RSA → RS256, EC → ES256, Ed25519 → EdDSA.
    #[serde(default)]
    pub algorithm: Option<String>,
}

/// A JWKS endpoint (`https://…/.well-known/jwks.json`).
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct JwksConfig {
    /// `https://` (plain `http://` only to a loopback address).
    pub url: String,
    /// How long a fetched key set is used before it is fetched again.
    #[serde(default = "default_jwks_cache")]
    pub cache_seconds: u64,
    /// A token with an unknown `kid` fetches the set again, at most once per this interval.
    #[serde(default = "default_jwks_refresh")]
    pub min_refresh_seconds: u64,
    /// PEM of a private CA that signs the endpoint's certificate.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
}

/// The scope names that grant each permission (`crate::auth::Permission`).
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct ScopeNames {
    pub read: String,
    pub write: String,
    pub execute: String,
    pub contain: String,
    pub files: String,
    pub admin: String,
}

impl Default for ScopeNames {
    fn default() -> Self {
        ScopeNames {
            read: "edrgate:read".into(),
            write: "edrgate:write".into(),
            execute: "edrgate:execute".into(),
            contain: "edrgate:contain".into(),
            files: "edrgate:files".into(),
            admin: "edrgate:admin".into(),
        }
    }
}

/// Largest accepted `auth.leeway_seconds`.
pub const MAX_LEEWAY_SECS: u64 = 300;

impl AuthConfig {
    /// Checks what types cannot (no IO: key files are read by `Auth::new`).
    pub fn validate(&self, errors: &mut Vec<String>) {
        use secrecy::ExposeSecret;
        match (&self.hs256_secret, self.allow_hs256) {
            (Some(secret), true) if secret.expose_secret().len() < 32 => {
                errors.push("auth.hs256_secret: must be at least 32 bytes".to_owned());
            }
            (Some(_), false) => errors.push(
                "auth.hs256_secret: HS256 is for development; set auth.allow_hs256 = true to use it"
                    .to_owned(),
            ),
            (None, true) => {
                errors.push("auth.hs256_secret: missing (auth.allow_hs256 is true)".to_owned());
            }
            _ => {}
        }
        let asymmetric = !self.keys.is_empty() || !self.jwks.is_empty();
        if !asymmetric && !self.allow_hs256 {
            errors.push(
                "auth: no token key: set auth.keys or auth.jwks (or, for development, auth.allow_hs256 and auth.hs256_secret)"
                    .to_owned(),
            );
        }
        if asymmetric {
            // A key of a shared identity provider also signs tokens for other applications
            // and other issuers' tenants: both claims must pin them to this gateway.
            if self.issuer.as_deref().is_none_or(str::is_empty) {
                errors.push("auth.issuer: required with auth.keys or auth.jwks".to_owned());
            }
            if self.audience.as_deref().is_none_or(str::is_empty) {
                errors.push("auth.audience: required with auth.keys or auth.jwks".to_owned());
            }
        }
        for (i, key) in self.keys.iter().enumerate() {
            if let Some(alg) = &key.algorithm
                && crate::auth::asymmetric_algorithm(alg).is_none()
            {
                errors.push(format!(
                    "auth.keys[{i}].algorithm: {alg:?} is not one of RS256, RS384, RS512, PS256, PS384, PS512, ES256, ES384, EdDSA"
                ));
            }
            if key.kid.as_deref().is_some_and(str::is_empty) {
                errors.push(format!("auth.keys[{i}].kid: must not be empty"));
            }
        }
        for (i, jwks) in self.jwks.iter().enumerate() {
            if let Err(problem) = crate::auth::check_jwks_url(&jwks.url) {
                errors.push(format!("auth.jwks[{i}].url: {problem}"));
            }
            if jwks.cache_seconds == 0 {
                errors.push(format!("auth.jwks[{i}].cache_seconds: must be at least 1"));
            }
        }
        if self.tenant_claim.is_empty() {
            errors.push("auth.tenant_claim: must not be empty".to_owned());
        }
        if self.scope_claim.as_deref().is_some_and(str::is_empty) {
            errors.push("auth.scope_claim: must not be empty".to_owned());
        }
        if self.leeway_seconds > MAX_LEEWAY_SECS {
            errors.push(format!("auth.leeway_seconds: at most {MAX_LEEWAY_SECS}"));
        }
        let s = &self.scopes;
        let names = [
            ("read", &s.read),
            ("write", &s.write),
            ("execute", &s.execute),
            ("contain", &s.contain),
            ("files", &s.files),
            ("admin", &s.admin),
        ];
        for (i, (field, name)) in names.iter().enumerate() {
            if name.is_empty() || name.contains(char::is_whitespace) {
                errors.push(format!("auth.scopes.{field}: one scope name, without spaces"));
            } else if names[..i].iter().any(|(_, other)| other == name) {
                errors.push(format!(
                    "auth.scopes.{field}: {name:?} already grants another permission"
                ));
            }
        }
    }
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
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

#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TenantConfig {
    /// Backend name → backend.
    #[serde(default)]
    pub backends: BTreeMap<String, BackendConfig>,
    /// Which backend serves a hostname target (see [`RoutingConfig`]).
    #[serde(default)]
    pub routing: RoutingConfig,
    /// Inbound limits of the tenant's callers (none by default).
    #[serde(default)]
    pub limits: TenantLimitsConfig,
}

/// Per-tenant inbound limits, answered with `429 rate_limited` and `Retry-After`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TenantLimitsConfig {
    /// Authenticated `/v1` requests per minute, all callers of the tenant together.
    #[serde(default)]
    pub requests_per_minute: Option<u32>,
    /// Requests allowed at once above the steady rate (default: a tenth of a minute's worth).
    #[serde(default)]
    pub burst: Option<u32>,
    /// Actions of the tenant not yet finished; a submission over it is refused.
    #[serde(default)]
    pub max_actions_in_flight: Option<u32>,
}

/// How a hostname target finds its backend, in this order:
/// 1. the first `rules` entry with a `hostname` pattern that matches routes it, unasked;
/// 2. otherwise the backends are asked: `order` one after the other, the first that knows the
///    hostname winning; else only `default` when set; else every backend of the tenant;
/// 3. a hostname several backends know is settled by `tag`/`group` rules (the device that
///    carries the rule's tag or group on the rule's backend wins); when they don't settle it,
///    the target is refused as ambiguous, naming every backend: edrgate never guesses.
///
/// Explicit targets (`{"backend": …, "device_id": …}`) bypass routing.
#[derive(Debug, Default, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RoutingConfig {
    #[serde(default)]
    pub rules: Vec<RouteRule>,
    /// Backends asked for hostnames no `hostname` rule matched, in precedence order.
    #[serde(default)]
    pub order: Vec<String>,
    /// The one backend asked for hostnames no `hostname` rule matched (exclusive with `order`).
    #[serde(default)]
    pub default: Option<String>,
    /// How long a resolution is remembered, in seconds (0: not cached).
    #[serde(default = "default_resolution_ttl")]
    pub cache_ttl_seconds: u64,
    /// How long "no backend knows this hostname" is remembered, in seconds (0: not cached).
    #[serde(default = "default_negative_ttl")]
    pub negative_cache_ttl_seconds: u64,
}

/// One routing rule: exactly one matcher, and the backend it routes to.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RouteRule {
    /// Case-insensitive glob on the hostname (`*` any run, `?` one character).
    #[serde(default)]
    pub hostname: Option<String>,
    /// A tag the device carries at its backend (Defender machine tags…).
    #[serde(default)]
    pub tag: Option<String>,
    /// The device's group at its backend (CB sensor group id, machine group…).
    #[serde(default)]
    pub group: Option<String>,
    pub backend: String,
}

/// A vendor backend, tagged by `kind`.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum BackendConfig {
    Carbonblack(edrgate_carbonblack::CarbonBlackConfig),
    Cybereason(edrgate_cybereason::CybereasonConfig),
    Defender(edrgate_defender::DefenderConfig),
}

impl BackendConfig {
    pub fn kind(&self) -> &'static str {
        match self {
            BackendConfig::Carbonblack(_) => "carbonblack",
            BackendConfig::Cybereason(_) => "cybereason",
            BackendConfig::Defender(_) => "defender",
        }
    }

    /// The vendor's own checks of its settings (no IO).
    pub fn validate(&self) -> Result<(), Vec<String>> {
        match self {
            BackendConfig::Carbonblack(cb) => cb.validate(),
            BackendConfig::Cybereason(cr) => cr.validate(),
            BackendConfig::Defender(mde) => mde.validate(),
        }
    }
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: default_listen(),
            max_body_bytes: default_max_body(),
            max_wait_seconds: default_max_wait(),
            trusted_proxies: Vec::new(),
            path_prefix: String::new(),
            shutdown_grace_seconds: default_grace(),
        }
    }
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig { path: default_db(), url: None, max_connections: default_db_connections() }
    }
}

impl Default for FilesConfig {
    fn default() -> Self {
        FilesConfig {
            dir: default_files(),
            s3: None,
            max_upload_bytes: default_max_upload(),
            retention_days: None,
            sweep_interval_seconds: default_sweep_interval(),
            tenants: BTreeMap::new(),
        }
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
fn default_db_connections() -> u32 {
    16
}
fn default_files() -> PathBuf {
    PathBuf::from("data/files")
}
fn default_max_upload() -> u64 {
    2 * 1024 * 1024 * 1024
}
fn default_sweep_interval() -> u64 {
    3600
}
fn default_region() -> String {
    "us-east-1".into()
}
fn default_tenant_claim() -> String {
    "tenant".into()
}
fn default_leeway() -> u64 {
    30
}
fn default_jwks_cache() -> u64 {
    3600
}
fn default_jwks_refresh() -> u64 {
    60
}
fn default_grace() -> u64 {
    10
}
fn default_resolution_ttl() -> u64 {
    60
}
fn default_negative_ttl() -> u64 {
    10
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
        read_secret_files(&mut value, "", &mut errors);
        if !errors.is_empty() {
            return Err(errors);
        }
        shape_errors(&value, &mut errors);
        if !errors.is_empty() {
            return Err(errors);
        }
        let fingerprints = backend_fingerprints(&value);
        let mut config: Config =
            value.try_into().map_err(|e: toml::de::Error| vec![e.to_string()])?;
        config.backend_fingerprints = fingerprints;
        config.validate()?;
        Ok(config)
    }

    /// Checks what types cannot: identifiers, lengths, ranges. No IO.
    pub fn validate(&self) -> Result<(), Vec<String>> {
        let mut errors = Vec::new();
        self.auth.validate(&mut errors);
        let prefix = &self.server.path_prefix;
        let prefix_ok = prefix.is_empty()
            || (prefix.starts_with('/')
                && !prefix.ends_with('/')
                && prefix.len() <= 128
                && prefix.split('/').skip(1).all(|seg| {
                    !seg.is_empty()
                        && seg != "."
                        && seg != ".."
                        && seg.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.~".contains(&b))
                }));
        if !prefix_ok {
            errors.push(format!(
                "server.path_prefix: {prefix:?} must look like /edrgate or /a/b (no trailing slash)"
            ));
        }
        if self.server.shutdown_grace_seconds == 0 {
            errors.push("server.shutdown_grace_seconds: must be at least 1".to_owned());
        }
        for (i, proxy) in self.server.trusted_proxies.iter().enumerate() {
            if let Err(problem) = crate::api::request::Cidr::parse(proxy) {
                errors.push(format!("server.trusted_proxies[{i}]: {problem}"));
            }
        }
        if self.engine.lease_seconds == 0 {
            errors.push("engine.lease_seconds: must be at least 1".to_owned());
        }
        if self.engine.default_timeout_seconds > self.engine.max_timeout_seconds {
            errors.push(
                "engine.default_timeout_seconds: must not exceed engine.max_timeout_seconds".into(),
            );
        }
        if let Some(url) = &self.store.url {
            use secrecy::ExposeSecret as _;
            if let Err(problem) = crate::store::postgres::check_url(url.expose_secret()) {
                errors.push(format!("store.url: {problem}"));
            }
        }
        if self.store.max_connections == 0 {
            errors.push("store.max_connections: must be at least 1".to_owned());
        }
        self.files.validate(&self.tenants, &mut errors);
        for (tenant, t) in &self.tenants {
            if !is_identifier(tenant) {
                errors.push(format!(
                    "tenants.{tenant}: tenant ids are 1-64 characters of a-z, A-Z, 0-9, '-' and '_'"
                ));
            }
            if t.backends.is_empty() {
                errors.push(format!("tenants.{tenant}.backends: at least one backend is needed"));
            }
            let limits = &t.limits;
            for (field, value) in [
                ("requests_per_minute", limits.requests_per_minute),
                ("burst", limits.burst),
                ("max_actions_in_flight", limits.max_actions_in_flight),
            ] {
                if value == Some(0) {
                    errors.push(format!("tenants.{tenant}.limits.{field}: must be at least 1"));
                }
            }
            if limits.burst.is_some() && limits.requests_per_minute.is_none() {
                errors.push(format!(
                    "tenants.{tenant}.limits.burst: needs tenants.{tenant}.limits.requests_per_minute"
                ));
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
            t.routing.validate(&format!("tenants.{tenant}.routing"), &t.backends, &mut errors);
        }
        if errors.is_empty() { Ok(()) } else { Err(errors) }
    }
}

impl RoutingConfig {
    fn validate(
        &self,
        path: &str,
        backends: &BTreeMap<String, BackendConfig>,
        errors: &mut Vec<String>,
    ) {
        let mut known = |field: String, name: &str| {
            if !backends.contains_key(name) {
                errors.push(format!("{field}: no backend named {name:?} in this tenant"));
            }
        };
        for (i, rule) in self.rules.iter().enumerate() {
            known(format!("{path}.rules[{i}].backend"), &rule.backend);
        }
        for (i, name) in self.order.iter().enumerate() {
            known(format!("{path}.order[{i}]"), name);
        }
        if let Some(name) = &self.default {
            known(format!("{path}.default"), name);
        }
        for (i, rule) in self.rules.iter().enumerate() {
            let matchers = [&rule.hostname, &rule.tag, &rule.group];
            let set = matchers.iter().filter(|m| m.is_some()).count();
            if set != 1 {
                errors.push(format!(
                    "{path}.rules[{i}]: exactly one of hostname, tag or group is needed (found {set})"
                ));
            }
            if matchers.iter().any(|m| m.as_deref().is_some_and(str::is_empty)) {
                errors.push(format!("{path}.rules[{i}]: an empty matcher matches nothing"));
            }
        }
        if !self.order.is_empty() && self.default.is_some() {
            errors.push(format!("{path}: order and default exclude each other"));
        }
    }
}

/// Where the configuration's JSON Schema is committed (regenerated with the OpenAPI document).
pub const CONFIG_SCHEMA_FILE: &str = "schemas/config.schema.json";

/// The JSON Schema of the configuration file (for editors and CI checks of config repos). It
/// describes the file as written: every secret may be given as `<name>_file` instead.
pub fn json_schema() -> String {
    let schema = schemars::schema_for!(Config);
    let mut value = serde_json::to_value(&schema).unwrap_or_default();
    add_secret_files(&mut value);
    let mut text = serde_json::to_string_pretty(&value).unwrap_or_default();
    text.push('\n');
    text
}

fn add_secret_files(value: &mut serde_json::Value) {
    use serde_json::{Value, json};
    let Value::Object(object) = value else {
        if let Value::Array(items) = value {
            items.iter_mut().for_each(add_secret_files);
        }
        return;
    };
    if let Some(Value::Object(properties)) = object.get_mut("properties") {
        let mut either = Vec::new();
        for secret in SECRET_SETTINGS {
            if properties.contains_key(*secret) {
                let file = format!("{secret}_file");
                properties.insert(
                    file.clone(),
                    json!({"type": "string", "description": format!("A file holding `{secret}` (one trailing newline ignored).")}),
                );
                either.push(((*secret).to_owned(), file));
            }
        }
        let mut alternatives = Vec::new();
        if let Some(Value::Array(required)) = object.get_mut("required") {
            for (secret, file) in &either {
                if let Some(at) = required.iter().position(|r| r == secret.as_str()) {
                    required.remove(at);
                    alternatives
                        .push(json!({"oneOf": [{"required": [secret]}, {"required": [file]}]}));
                }
            }
        }
        if !alternatives.is_empty() {
            object.insert("allOf".to_owned(), Value::Array(alternatives));
        }
    }
    for (_, v) in object.iter_mut() {
        add_secret_files(v);
    }
}

/// Tenant ids and backend names: they appear in paths, metrics and logs.
pub fn is_identifier(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// Deserializes each section, tenant and backend on its own, so that every malformed one is
/// reported with its path (serde stops at the first error of a document).
fn shape_errors(value: &toml::Value, errors: &mut Vec<String>) {
    fn check<T: serde::de::DeserializeOwned>(
        value: &toml::Value,
        path: &str,
        errors: &mut Vec<String>,
    ) {
        if let Err(e) = value.clone().try_into::<T>() {
            errors.push(shape_error(path, e.message()));
        }
    }
    let Some(root) = value.as_table() else { return };
    let mut top = root.clone();
    // Sections are checked on their own below; what is left are unknown top-level keys.
    for (key, section) in root {
        let path = key.as_str();
        match path {
            "server" => check::<ServerConfig>(section, path, errors),
            "store" => check::<StoreConfig>(section, path, errors),
            "files" => check::<FilesConfig>(section, path, errors),
            "auth" => check::<AuthConfig>(section, path, errors),
            "engine" => check::<EngineConfig>(section, path, errors),
            "tenants" => {
                for (tenant, t) in section.as_table().into_iter().flatten() {
                    let path = format!("tenants.{tenant}");
                    let Some(table) = t.as_table() else {
                        errors.push(format!("{path}: a table is expected"));
                        continue;
                    };
                    let mut rest = table.clone();
                    if let Some(backends) = rest.remove("backends") {
                        for (name, b) in backends.as_table().into_iter().flatten() {
                            check::<BackendConfig>(b, &format!("{path}.backends.{name}"), errors);
                        }
                    }
                    if let Some(toml::Value::Table(mut routing)) = rest.remove("routing") {
                        let rules = routing.remove("rules");
                        for (i, rule) in
                            rules.iter().flat_map(|r| r.as_array()).flatten().enumerate()
                        {
                            check::<RouteRule>(rule, &format!("{path}.routing.rules[{i}]"), errors);
                        }
                        check::<RoutingConfig>(
                            &toml::Value::Table(routing),
                            &format!("{path}.routing"),
                            errors,
                        );
                    }
                    check::<TenantConfig>(&toml::Value::Table(rest), &path, errors);
                }
            }
            _ => continue,
        }
        top.remove(key);
    }
    if !root.contains_key("auth") {
        errors.push("auth: missing".to_owned());
    }
    for key in top.keys() {
        errors.push(format!(
            "{key}: unknown section (expected server, store, files, auth, engine or tenants)"
        ));
    }
}

/// `missing field `x`` at `a.b` reads `a.b.x: missing`; other messages keep their words.
fn shape_error(path: &str, message: &str) -> String {
    let field = |prefix: &str| {
        message.strip_prefix(prefix).and_then(|rest| rest.split('`').next()).map(str::to_owned)
    };
    if let Some(name) = field("missing field `") {
        return format!("{path}.{name}: missing");
    }
    if let Some(name) = field("unknown field `") {
        let expected = message.split_once(", expected ").map(|(_, e)| e).unwrap_or("");
        return format!("{path}.{name}: unknown setting (expected {expected})");
    }
    format!("{path}: {}", message.trim())
}

fn backend_fingerprints(value: &toml::Value) -> BTreeMap<(String, String), [u8; 32]> {
    use sha2::Digest as _;
    let mut out = BTreeMap::new();
    let tenants = value.get("tenants").and_then(toml::Value::as_table);
    for (tenant, t) in tenants.into_iter().flatten() {
        let backends = t.get("backends").and_then(toml::Value::as_table);
        for (name, backend) in backends.into_iter().flatten() {
            // `toml::Value`'s tables are ordered maps: equal settings print equally.
            let digest = sha2::Sha256::digest(backend.to_string().as_bytes());
            out.insert((tenant.clone(), name.clone()), digest.into());
        }
    }
    out
}

/// Settings that hold secrets. Each can instead be given as `<name>_file`: the path of a file
/// holding it (container secrets, Kubernetes secret volumes), read at load time with one
/// trailing newline removed.
pub const SECRET_SETTINGS: &[&str] = &[
    "token",
    "client_secret",
    "password",
    "totp_secret",
    "fetch_zip_password",
    "hs256_secret",
    "secret_access_key",
    "url",
];

/// Replaces every `<secret>_file` setting by the `<secret>` read from that file.
fn read_secret_files(value: &mut toml::Value, path: &str, errors: &mut Vec<String>) {
    let toml::Value::Table(table) = value else {
        if let toml::Value::Array(items) = value {
            for (i, item) in items.iter_mut().enumerate() {
                read_secret_files(item, &format!("{path}[{i}]"), errors);
            }
        }
        return;
    };
    let join = |k: &str| if path.is_empty() { k.to_owned() } else { format!("{path}.{k}") };
    for secret in SECRET_SETTINGS {
        let file_key = format!("{secret}_file");
        let Some(file) = table.remove(&file_key) else { continue };
        let field = join(&file_key);
        let Some(file) = file.as_str() else {
            errors.push(format!("{field}: must be a path"));
            continue;
        };
        if table.contains_key(*secret) {
            errors.push(format!("{field}: set either {secret} or {file_key}, not both"));
            continue;
        }
        match std::fs::read_to_string(file) {
            Ok(text) => {
                let text = text.strip_suffix('\n').unwrap_or(&text);
                let text = text.strip_suffix('\r').unwrap_or(text);
                table.insert((*secret).to_owned(), toml::Value::String(text.to_owned()));
            }
            // The path is configuration, not a secret: it may be shown.
            Err(e) => errors.push(format!("{field}: cannot read {file}: {e}")),
        }
    }
    for (k, v) in table.iter_mut() {
        read_secret_files(v, &join(k), errors);
    }
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
        allow_hs256 = true
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
        let errors = Config::parse(
            "[auth]\nallow_hs256 = true\nhs256_secret = \"short\"\n[tenants.\"a/b\"]\n",
            |_| None,
        )
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

    #[test]
    fn every_malformed_section_is_reported_with_its_path() {
        let text = r#"
            [auth]
            allow_hs256 = true
            hs256_secret = "0123456789abcdef0123456789abcdef"
            [engine]
            lease_seconds = "soon"
            [tenants.acme.backends.cb]
            kind = "carbonblack"
            token = "t"
            [tenants.acme.backends.cb2]
            kind = "carbonblack"
            url = "https://cb"
            token = "t"
            colour = "blue"
            [[tenants.acme.routing.rules]]
            hostname = "a*"
            [tenants.acme.routing]
            default = "cb"
            [tenants.globex.backends.x]
            kind = "nonesuch"
            [metrics]
        "#;
        let errors = Config::parse(text, |_| None).unwrap_err();
        let expected = [
            "engine: ",
            "tenants.acme.backends.cb.url: missing",
            "tenants.acme.backends.cb2.colour: unknown setting",
            "tenants.acme.routing.rules",
            "tenants.globex.backends.x: ",
            "metrics: unknown section",
        ];
        assert_eq!(errors.len(), expected.len(), "{errors:#?}");
        for prefix in expected {
            assert!(errors.iter().any(|e| e.starts_with(prefix)), "{prefix} not in {errors:#?}");
        }
    }

    #[test]
    fn secrets_come_from_files_and_routing_names_known_backends() {
        let dir = tempfile::tempdir().unwrap();
        let token = dir.path().join("cb-token");
        std::fs::write(&token, "from-a-file\n").unwrap();
        let text = format!(
            r#"
            [auth]
            allow_hs256 = true
            hs256_secret = "0123456789abcdef0123456789abcdef"
            [tenants.acme.backends.cb]
            kind = "carbonblack"
            url = "https://cb"
            token_file = "{}"
            [tenants.acme.routing]
            order = ["cb", "nope"]
            "#,
            token.display()
        );
        let errors = Config::parse(&text, |_| None).unwrap_err();
        assert_eq!(
            errors,
            ["tenants.acme.routing.order[1]: no backend named \"nope\" in this tenant"]
        );
        let config = Config::parse(&text.replace(", \"nope\"", ""), |_| None).unwrap();
        #[allow(irrefutable_let_patterns, reason = "irrefutable only while one kind exists")]
        let BackendConfig::Carbonblack(cb) = &config.tenants["acme"].backends["cb"] else {
            panic!("not carbonblack");
        };
        // One trailing newline (what `echo` writes) is not part of the secret.
        assert_eq!(secrecy::ExposeSecret::expose_secret(&cb.token), "from-a-file");
        let missing = text.replace(&token.display().to_string(), "/nonexistent/token");
        let errors = Config::parse(&missing, |_| None).unwrap_err();
        assert!(
            errors[0].starts_with("tenants.acme.backends.cb.token_file: cannot read"),
            "{errors:?}"
        );
    }
}

/// The configurations shipped in `deploy/` stay valid.
#[cfg(test)]
mod shipped {
    use super::Config;

    #[test]
    fn every_shipped_configuration_is_valid() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        let secrets = tempfile::tempdir().unwrap();
        for name in ["acme-cb-token", "hs256", "edrgate/acme-cb-token", "edrgate/acme-cb-ca.pem"] {
            let path = secrets.path().join(name);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, "0123456789abcdef0123456789abcdef\n").unwrap();
        }
        let env = |name: &str| {
            Some(match name {
                n if n.contains("PROXIES") => "10.0.0.0/8".to_owned(),
                n if n.contains("DATABASE_URL") => "postgres://u:p@db:5432/edrgate".to_owned(),
                n if n.contains("URL") || n.contains("ISSUER") => "https://idp.example".to_owned(),
                _ => "0123456789abcdef0123456789abcdef".to_owned(),
            })
        };
        let configmap = std::fs::read_to_string(root.join("deploy/k8s/configmap.yaml")).unwrap();
        let embedded: String = configmap
            .split_once("edrgate.toml: |\n")
            .unwrap()
            .1
            .lines()
            .map(|l| format!("{}\n", l.strip_prefix("    ").unwrap_or(l)))
            .collect();
        let files =
            ["deploy/edrgate.example.toml", "deploy/compose/edrgate.toml", "deploy/container.toml"];
        let mut texts: Vec<(String, String)> = files
            .iter()
            .map(|f| ((*f).to_owned(), std::fs::read_to_string(root.join(f)).unwrap()))
            .collect();
        texts.push(("deploy/k8s/configmap.yaml".to_owned(), embedded));
        for (file, text) in texts {
            let text = text.replace("/run/secrets/", &format!("{}/", secrets.path().display()));
            if let Err(errors) = Config::parse(&text, env) {
                panic!("{file}: {errors:#?}");
            }
        }
    }
}
