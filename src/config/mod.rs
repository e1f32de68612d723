//! Configuration: one TOML file, `${ENV}` references in any string, parsed into [`Config`] and
//! then checked as a whole by [`Config::validate`], which reports every problem with its path.
//!
//! - this file: the types, which are also the JSON Schema (field docs become descriptions);
//! - [`load`]: reading a file, `${ENV}` and `<secret>_file` indirection, each section checked
//!   on its own so that every malformed one is reported with its path;
//! - [`backend`]: a tenant's backend, whose `kind` picks the vendor's factory in
//!   `crate::registry`, which parses, checks and builds it;
//! - [`validate`]: the checks types cannot express, over the whole file;
//! - [`schema`]: the JSON Schema (`schemas/config.schema.json`).
//!
//! **Architecture Invariant:** `config` imports no gateway module but leaves (`registry`,
//! `net`); the modules that use the settings import `config`, not the other way round.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;

use secrecy::SecretString;
use serde::Deserialize;

pub mod backend;
pub mod load;
pub mod schema;
#[cfg(test)]
mod tests;
pub mod validate;
pub mod webhooks;

pub use backend::BackendConfig;
pub use webhooks::{
    CallbackConfig, StaticHeader, SubscriptionConfig, TenantWebhooksConfig, WebhooksConfig,
};

/// The webhook id of deliveries to a submission's own `callback_url` (no subscription may take
/// it).
pub const RESERVED_WEBHOOK_ID: &str = "callback";
pub use load::secret_settings;
pub use schema::{CONFIG_SCHEMA_FILE, json_schema};
pub use validate::{
    MAX_LEEWAY_SECS, asymmetric_algorithm, check_jwks_url, check_postgres_url, is_identifier,
};

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
    #[serde(default)]
    pub webhooks: WebhooksConfig,
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
    /// Where `/metrics` (Prometheus) is served: its own address, never the API's, because the
    /// metrics name every tenant and backend and are not authenticated. Unset: not served.
    /// Keep it on loopback or a network only the scraper reaches (`0.0.0.0:9090` in a pod).
    #[serde(default)]
    pub metrics_listen: Option<SocketAddr>,
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
    /// proxy that forwards a sub-path as is. `/healthz` and `/readyz` are also served at the
    /// root, for probes that reach the process directly.
    #[serde(default)]
    pub path_prefix: String,
    /// Path the Carbon Black EDR live-response front door is served under (default `/cb`):
    /// cbapi and CB SOAR apps are given `https://HOST/cb` and build `/api/...` under it.
    /// Independent of `path_prefix`; empty turns the door off.
    #[serde(default = "default_carbonblack_prefix")]
    pub carbonblack_prefix: String,
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
    /// Operating the gateway (the configuration reload, which acts on every tenant): grant
    /// it only to the gateway's operators, never with a tenant's other scopes.
    pub operator: String,
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
            operator: "edrgate:operator".into(),
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
    /// How long finished actions are kept, in days, for tenants that do not set
    /// `tenants.<id>.retention_days` (which takes precedence); unset: kept forever. It also
    /// applies to actions of tenants no longer in the configuration. See
    /// `tenants.<id>.retention_days` for what is deleted.
    #[serde(default)]
    pub action_retention_days: Option<u32>,
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
    /// Webhook subscriptions and callback signing.
    #[serde(default)]
    pub webhooks: TenantWebhooksConfig,
    /// How long the tenant's finished actions are kept, in days after they last changed:
    /// older ones are deleted (hourly, with their runs, events and webhook deliveries; the
    /// audit trail and stored files stay). Unfinished actions are never deleted. Unset:
    /// `engine.action_retention_days`, else kept forever. Read at start (a reload does not
    /// change it).
    #[serde(default)]
    pub retention_days: Option<u32>,
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

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: default_listen(),
            metrics_listen: None,
            max_body_bytes: default_max_body(),
            max_wait_seconds: default_max_wait(),
            trusted_proxies: Vec::new(),
            path_prefix: String::new(),
            carbonblack_prefix: default_carbonblack_prefix(),
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
            action_retention_days: None,
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
fn default_carbonblack_prefix() -> String {
    "/cb".to_owned()
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
