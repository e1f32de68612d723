//! Bearer-token authentication, permissions and the per-tenant inbound limits.
//!
//! **Tokens.** JWTs verified with the configured keys: public keys from PEM files, keys of
//! JWKS endpoints, and (development only, when `auth.allow_hs256` says so) an HS256 secret.
//! Each key carries its own algorithm — the configured one, the JWK's `alg`, or the one its
//! type implies — and a token is only ever checked with that algorithm: the token's header
//! cannot pick a weaker one, `none`, or HS256 keyed with a public key's bytes. A token naming
//! a `kid` is checked with the keys of that `kid`; an unknown `kid` fetches the JWKS again, at
//! most once per `min_refresh_seconds` (single-flight: concurrent requests share one fetch).
//! `exp` is required, `nbf` checked, `iss` and `aud` required when configured (always, with
//! public keys), all with `auth.leeway_seconds` of clock skew.
//!
//! **Caller.** The tenant is the configured claim (`tenant` by default); the scopes are the
//! configured claim, or `scope` (space-separated string) and `scp` (array) when unset. Scopes
//! map to [`Permission`]s by `auth.scopes` (defaults `edrgate:read`, `edrgate:write`,
//! `edrgate:execute`, `edrgate:contain`, `edrgate:files`, `edrgate:admin`). What each route
//! needs is in README's "Authentication" section; a missing permission is a `403 forbidden`
//! naming it ([`Caller::require`]).
//!
//! **Limits.** Optional, per tenant (`tenants.<id>.limits`): requests per minute (checked on
//! every authenticated request) and actions in flight (checked on submission), both answered
//! with `429 rate_limited` and `Retry-After`.
//!
//! Validated tokens are cached (moka) by their full text until they expire, at most 5 minutes:
//! the checks that could change with time are only `exp` (the entry dies with it) and `nbf`
//! (never cached before it passes). A key withdrawn from a JWKS is refused once the set is
//! fetched again (after `cache_seconds`, or on the next unknown `kid`), and for tokens already
//! validated within those 5 minutes.

use std::collections::HashMap;
use std::future::Future;
use std::num::NonZeroU32;
use std::path::Path;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use axum::extract::{FromRef, FromRequestParts};
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use edrgate_adapter::{CommandClass, CommandKind};
use governor::clock::Clock as _;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, PublicKeyUse};
use jsonwebtoken::{Algorithm, AlgorithmFamily, DecodingKey, EncodingKey, Header, Validation};
use secrecy::ExposeSecret;
use serde_json::{Map, Value};

use crate::api::problem::ApiError;
use crate::config::{
    AuthConfig, JwksConfig, ScopeNames, TenantLimitsConfig, asymmetric_algorithm, check_jwks_url,
    is_identifier,
};

/// The algorithm of development tokens (`edrgate token`, `edrgate demo`).
pub const DEV_ALGORITHM: Algorithm = Algorithm::HS256;
/// Longest time a validated token stays cached.
const CACHE_TTL: Duration = Duration::from_secs(300);
/// Tokens longer than this are refused before any parsing (and never become cache keys).
const MAX_TOKEN_LEN: usize = 8 * 1024;
/// A JWKS document larger than this is refused (real ones are a few kilobytes).
const MAX_JWKS_BYTES: usize = 256 * 1024;
/// Whole-request bound of a JWKS fetch.
const JWKS_TIMEOUT: Duration = Duration::from_secs(10);
/// `Retry-After` of a submission refused for the tenant's actions in flight: actions end on
/// their own, there is no instant to announce.
const IN_FLIGHT_RETRY_AFTER: Duration = Duration::from_secs(5);

/// What a caller may do. Each is granted by one scope (`auth.scopes`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Permission {
    /// Read commands (process list, directory list, registry reads, get file) and reading the
    /// tenant's actions, devices and capabilities.
    Read,
    /// Commands that change the endpoint (kill, delete, put file, registry writes).
    Write,
    /// Execute, run script, memory dump.
    Execute,
    /// Isolate and release.
    Contain,
    /// Stored files: upload, metadata, download.
    Files,
    /// Tenant administration: configuration reload, the whole tenant's audit trail.
    Admin,
}

impl Permission {
    pub const ALL: [Permission; 6] = [
        Permission::Read,
        Permission::Write,
        Permission::Execute,
        Permission::Contain,
        Permission::Files,
        Permission::Admin,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Permission::Read => "read",
            Permission::Write => "write",
            Permission::Execute => "execute",
            Permission::Contain => "contain",
            Permission::Files => "files",
            Permission::Admin => "admin",
        }
    }

    /// The scope that grants this permission.
    pub fn scope(self, names: &ScopeNames) -> &str {
        match self {
            Permission::Read => &names.read,
            Permission::Write => &names.write,
            Permission::Execute => &names.execute,
            Permission::Contain => &names.contain,
            Permission::Files => &names.files,
            Permission::Admin => &names.admin,
        }
    }

    fn bit(self) -> u8 {
        1 << (self as u8)
    }
}

impl From<CommandClass> for Permission {
    fn from(class: CommandClass) -> Permission {
        match class {
            CommandClass::Read => Permission::Read,
            CommandClass::Write => Permission::Write,
            CommandClass::Execute => Permission::Execute,
            CommandClass::Contain => Permission::Contain,
        }
    }
}

/// A set of [`Permission`]s.
#[derive(Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct Permissions(u8);

impl Permissions {
    pub fn all() -> Permissions {
        Permission::ALL.into_iter().collect()
    }

    pub fn contains(self, permission: Permission) -> bool {
        self.0 & permission.bit() != 0
    }

    pub fn iter(self) -> impl Iterator<Item = Permission> {
        Permission::ALL.into_iter().filter(move |p| self.contains(*p))
    }
}

impl FromIterator<Permission> for Permissions {
    fn from_iter<I: IntoIterator<Item = Permission>>(iter: I) -> Permissions {
        Permissions(iter.into_iter().fold(0, |bits, p| bits | p.bit()))
    }
}

impl std::fmt::Debug for Permissions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_set().entries(self.iter().map(Permission::as_str)).finish()
    }
}

/// Who is calling: the authenticated tenant, subject, client and permissions. Extracting it
/// enforces authentication and the tenant's request rate, so every `/v1` handler takes one;
/// the handler then asks for what it needs with [`Caller::require`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Caller {
    pub tenant: String,
    /// `sub`: the user or service the token was issued to.
    pub subject: Option<String>,
    /// The OAuth client the token was issued through: `client_id` (RFC 9068), else `azp`,
    /// else `appid` (Entra ID v1 tokens).
    pub client_id: Option<String>,
    pub permissions: Permissions,
    scopes: Arc<ScopeNames>,
}

impl Caller {
    /// A caller built by other means than a token (tests, internal jobs).
    pub fn new(tenant: &str, subject: Option<&str>, permissions: Permissions) -> Caller {
        Caller {
            tenant: tenant.to_owned(),
            subject: subject.map(str::to_owned),
            client_id: None,
            permissions,
            scopes: Arc::new(ScopeNames::default()),
        }
    }

    pub fn has(&self, permission: Permission) -> bool {
        self.permissions.contains(permission)
    }

    /// `Ok` when the caller holds `permission`, else the `403 forbidden` to answer, naming the
    /// permission and the scope that grants it.
    pub fn require(&self, permission: Permission) -> Result<(), ApiError> {
        self.require_all([permission])
    }

    /// `Ok` when the caller holds every one of `permissions`; the `403` names each missing one.
    pub fn require_all(
        &self,
        permissions: impl IntoIterator<Item = Permission>,
    ) -> Result<(), ApiError> {
        let missing: Permissions =
            permissions.into_iter().filter(|p| !self.permissions.contains(*p)).collect();
        if missing == Permissions::default() {
            return Ok(());
        }
        let names: Vec<&str> = missing.iter().map(Permission::as_str).collect();
        let scopes: Vec<&str> = missing.iter().map(|p| p.scope(&self.scopes)).collect();
        let (noun, scope_noun) =
            if names.len() == 1 { ("permission", "scope") } else { ("permissions", "scopes") };
        Err(ApiError::insufficient_scope(
            format!(
                "missing {noun} {} (token {scope_noun} {})",
                names.join(", "),
                scopes.join(", ")
            ),
            &scopes,
        ))
    }

    /// `Ok` when the caller may run every one of `commands` (the permission of each class).
    pub fn require_commands(
        &self,
        commands: impl IntoIterator<Item = CommandKind>,
    ) -> Result<(), ApiError> {
        self.require_all(commands.into_iter().map(|kind| Permission::from(kind.class())))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("jwt: {0}")]
    Jwt(#[from] jsonwebtoken::errors::Error),
    /// The crypto backend is missing or ambiguous (jsonwebtoken panics at first use then).
    #[error("jwt self-test failed: {0}")]
    SelfTest(String),
    #[error("tenant {0:?} is not a valid tenant id")]
    InvalidTenant(String),
    #[error("{path}: {reason}")]
    Key { path: String, reason: String },
    #[error("auth.allow_hs256 is not set: this configuration cannot mint development tokens")]
    Hs256Disabled,
}

/// The token validator, the permission mapping and the tenants' inbound limits.
pub struct Auth {
    /// PEM keys and the HS256 secret.
    static_keys: Vec<Arc<VerifyKey>>,
    jwks: Vec<JwksSource>,
    tenant_claim: String,
    scope_claim: Option<String>,
    scopes: Arc<ScopeNames>,
    cache: moka::future::Cache<String, Arc<Validated>>,
    limits: RwLock<HashMap<String, Arc<TenantLimiter>>>,
}

/// A key and the one algorithm it verifies.
struct VerifyKey {
    kid: Option<String>,
    key: DecodingKey,
    /// The base validation with `algorithms = [this key's algorithm]`.
    validation: Validation,
}

struct Validated {
    caller: Caller,
    until: Instant,
}

struct UntilExpiry;

/// Why a token was refused: shown to the caller (and as `error_description`), so it says
/// nothing about the keys.
type Reason = &'static str;

impl Auth {
    /// A validator for `config`: reads the PEM keys and builds the JWKS clients (the sets are
    /// fetched on first use, or by [`Auth::prefetch`]). Signs and verifies a throwaway token
    /// first, so a misconfigured crypto backend fails here rather than on the first request.
    pub fn new(config: &AuthConfig) -> Result<Auth, AuthError> {
        self_test()?;
        let mut base = Validation::new(DEV_ALGORITHM);
        base.leeway = config.leeway_seconds;
        base.validate_nbf = true;
        let mut required = vec!["exp"];
        if let Some(issuer) = &config.issuer {
            base.set_issuer(&[issuer]);
            // jsonwebtoken checks `iss` only when the token has one: make it mandatory.
            required.push("iss");
        }
        match &config.audience {
            Some(audience) => {
                base.set_audience(&[audience]);
                required.push("aud");
            }
            // Without a configured audience (development only) a token's `aud` is not ours to
            // judge; jsonwebtoken would otherwise refuse every token that has one.
            None => base.validate_aud = false,
        }
        base.set_required_spec_claims(&required);

        let mut static_keys = Vec::new();
        for (i, key) in config.keys.iter().enumerate() {
            let path = format!("auth.keys[{i}]");
            let (alg, decoding) = pem_key(&key.pem_file, key.algorithm.as_deref())
                .map_err(|reason| AuthError::Key { path: path.clone(), reason })?;
            static_keys.push(Arc::new(VerifyKey::new(key.kid.clone(), alg, decoding, &base)));
        }
        if config.allow_hs256
            && let Some(secret) = &config.hs256_secret
        {
            let key = DecodingKey::from_secret(secret.expose_secret().as_bytes());
            static_keys.push(Arc::new(VerifyKey::new(None, DEV_ALGORITHM, key, &base)));
        }
        let jwks = config
            .jwks
            .iter()
            .enumerate()
            .map(|(i, c)| JwksSource::new(c, &base, &format!("auth.jwks[{i}]")))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Auth {
            static_keys,
            jwks,
            tenant_claim: config.tenant_claim.clone(),
            scope_claim: config.scope_claim.clone(),
            scopes: Arc::new(config.scopes.clone()),
            cache: moka::future::Cache::builder()
                .max_capacity(10_000)
                .expire_after(UntilExpiry)
                .build(),
            limits: RwLock::new(HashMap::new()),
        })
    }

    /// Fetches every JWKS now; the errors are what could not be fetched (the gateway still
    /// starts: the sets are fetched again on demand).
    pub async fn prefetch(&self) -> Vec<String> {
        let mut errors = Vec::new();
        for source in &self.jwks {
            if let Some(error) = &source.keys().await.error {
                errors.push(format!("{}: {error}", source.path));
            }
        }
        errors
    }

    /// The scope names of the permissions.
    pub fn scope_names(&self) -> &ScopeNames {
        &self.scopes
    }

    /// Validates a bearer token and returns its caller. The error is the `401` to answer (or a
    /// `503` when no key could be fetched to check it).
    pub async fn authenticate(&self, token: &str) -> Result<Caller, ApiError> {
        if token.len() > MAX_TOKEN_LEN {
            return Err(ApiError::unauthenticated("the bearer token is too long", true));
        }
        if let Some(hit) = self.cache.get(token).await
            && hit.until > Instant::now()
        {
            return Ok(hit.caller.clone());
        }
        let (caller, exp) = match self.validate(token).await {
            Ok(valid) => valid,
            Err(Refused::Token(reason)) => {
                tracing::debug!(reason, "bearer token refused");
                return Err(ApiError::unauthenticated(reason, true));
            }
            Err(Refused::KeysUnavailable) => {
                return Err(ApiError::with_status(
                    axum::http::StatusCode::SERVICE_UNAVAILABLE,
                    edrgate_adapter::ErrorCode::Internal,
                    "the token signing keys could not be fetched",
                ));
            }
        };
        let now_unix = jsonwebtoken::get_current_timestamp();
        let ttl = Duration::from_secs(exp.saturating_sub(now_unix)).min(CACHE_TTL);
        if !ttl.is_zero() {
            let entry = Validated { caller: caller.clone(), until: Instant::now() + ttl };
            self.cache.insert(token.to_owned(), Arc::new(entry)).await;
        }
        Ok(caller)
    }

    /// Full validation, no cache. Returns the caller and the token's `exp`.
    async fn validate(&self, token: &str) -> Result<(Caller, u64), Refused> {
        // Only the `kid` is taken from the header, to pick keys; the algorithm never is.
        let header = jsonwebtoken::decode_header(token).map_err(|e| match e.kind() {
            ErrorKind::InvalidAlgorithmName => {
                Refused::Token("the token's algorithm is not accepted")
            }
            _ => Refused::Token("malformed token"),
        })?;
        let mut unavailable = false;
        let mut outcome: Option<Result<Map<String, Value>, Reason>> = None;
        let try_keys = |keys: &[Arc<VerifyKey>], outcome: &mut Option<Result<_, Reason>>| {
            for key in keys {
                match key.verify(token) {
                    Ok(claims) => {
                        *outcome = Some(Ok(claims));
                        return true;
                    }
                    // The signature matched this key but a claim is wrong: final.
                    Err((reason, true)) => {
                        *outcome = Some(Err(reason));
                        return true;
                    }
                    Err((reason, false)) => {
                        outcome.get_or_insert(Err(reason));
                    }
                }
            }
            false
        };
        match header.kid.as_deref() {
            Some(kid) => {
                let mut done = try_keys(&self.static_with_kid(Some(kid)), &mut outcome);
                let mut known = done || self.static_keys.iter().any(|k| k.has_kid(kid));
                for source in &self.jwks {
                    if done {
                        break;
                    }
                    let mut set = source.keys().await;
                    if !set.has_kid(kid) {
                        set = source.refresh_for_unknown_kid().await;
                    }
                    unavailable |= set.error.is_some() && set.keys.is_empty();
                    let keys: Vec<_> = set.with_kid(kid).collect();
                    known |= !keys.is_empty();
                    done = try_keys(&keys, &mut outcome);
                }
                // A `kid` is a hint some issuers set on every token: keys configured without
                // one still get their say, each with its own algorithm.
                if !done {
                    done = try_keys(&self.static_with_kid(None), &mut outcome);
                    known |= done;
                }
                if !known && !done {
                    if unavailable {
                        return Err(Refused::KeysUnavailable);
                    }
                    return Err(Refused::Token("the token's signing key is unknown"));
                }
            }
            None => {
                let mut done = try_keys(&self.static_keys, &mut outcome);
                for source in &self.jwks {
                    if done {
                        break;
                    }
                    let set = source.keys().await;
                    unavailable |= set.error.is_some() && set.keys.is_empty();
                    done = try_keys(&set.keys, &mut outcome);
                }
                if !done && unavailable {
                    return Err(Refused::KeysUnavailable);
                }
            }
        }
        let claims = match outcome {
            Some(Ok(claims)) => claims,
            Some(Err(reason)) => return Err(Refused::Token(reason)),
            None => return Err(Refused::Token("the token's signing key is unknown")),
        };
        self.caller_of(&claims).map_err(Refused::Token)
    }

    fn static_with_kid(&self, kid: Option<&str>) -> Vec<Arc<VerifyKey>> {
        self.static_keys.iter().filter(|k| k.kid.as_deref() == kid).cloned().collect()
    }

    fn caller_of(&self, claims: &Map<String, Value>) -> Result<(Caller, u64), Reason> {
        let tenant = match claims.get(&self.tenant_claim) {
            Some(Value::String(t)) if is_identifier(t) => t.clone(),
            Some(_) => return Err("the tenant claim is not a valid tenant id"),
            None => return Err("the token has no tenant claim"),
        };
        let text = |name: &str| claims.get(name).and_then(Value::as_str).map(str::to_owned);
        let subject = text("sub");
        let client_id = text("client_id").or_else(|| text("azp")).or_else(|| text("appid"));
        let claim_names: &[&str] = match &self.scope_claim {
            Some(name) => &[name.as_str()],
            None => &["scope", "scp"],
        };
        let mut granted = Vec::new();
        for name in claim_names {
            match claims.get(*name) {
                Some(Value::String(list)) => granted.extend(list.split_whitespace()),
                Some(Value::Array(items)) => granted.extend(items.iter().filter_map(Value::as_str)),
                _ => {}
            }
        }
        let permissions = Permission::ALL
            .into_iter()
            .filter(|p| granted.contains(&p.scope(&self.scopes)))
            .collect();
        // `exp` is required and was checked as a number by `decode`.
        let exp = claims.get("exp").and_then(Value::as_u64).unwrap_or(0);
        let caller =
            Caller { tenant, subject, client_id, permissions, scopes: Arc::clone(&self.scopes) };
        Ok((caller, exp))
    }

    /// Installs the tenants' inbound limits, keeping the counters of tenants whose limits did
    /// not change (a reload does not reset them).
    pub fn set_tenant_limits<'a>(
        &self,
        tenants: impl IntoIterator<Item = (&'a str, &'a TenantLimitsConfig)>,
    ) {
        let mut map = self.limits.write().unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut next = HashMap::new();
        for (tenant, config) in tenants {
            if *config == TenantLimitsConfig::default() {
                continue;
            }
            let limiter = match map.remove(tenant) {
                Some(existing) if existing.config == *config => existing,
                _ => Arc::new(TenantLimiter::new(config.clone())),
            };
            next.insert(tenant.to_owned(), limiter);
        }
        *map = next;
    }

    fn limiter(&self, tenant: &str) -> Option<Arc<TenantLimiter>> {
        let map = self.limits.read().unwrap_or_else(std::sync::PoisonError::into_inner);
        map.get(tenant).cloned()
    }

    /// Counts one request of `tenant` against its requests-per-minute limit.
    pub fn check_rate(&self, tenant: &str) -> Result<(), ApiError> {
        let Some(limiter) = self.limiter(tenant) else { return Ok(()) };
        let Some(rate) = &limiter.rate else { return Ok(()) };
        rate.check().map_err(|not_until| {
            let wait = not_until.wait_time_from(rate.clock().now());
            ApiError::rate_limited(
                format!(
                    "the tenant's request rate limit ({} per minute) is reached",
                    limiter.config.requests_per_minute.unwrap_or(0)
                ),
                wait,
            )
        })
    }

    /// Admits a submission under `tenant`'s limit of actions in flight. `unfinished` counts
    /// the tenant's unfinished actions; the returned [`Admission`] must be held until the
    /// submission is stored, so two submissions cannot both take the last place (within this
    /// process; replicas may overshoot by their number).
    pub async fn admit_action<F, Fut, E>(
        &self,
        tenant: &str,
        unfinished: F,
    ) -> Result<Admission, ApiError>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<u64, E>>,
        E: std::fmt::Display,
    {
        let Some(limiter) = self.limiter(tenant) else { return Ok(Admission(None)) };
        let Some(max) = limiter.config.max_actions_in_flight else { return Ok(Admission(None)) };
        let guard = Arc::clone(&limiter.submissions).lock_owned().await;
        let count = unfinished().await.map_err(|error| {
            tracing::error!(%error, "counting the tenant's unfinished actions failed");
            ApiError::internal()
        })?;
        if count >= u64::from(max) {
            return Err(ApiError::rate_limited(
                format!("the tenant already has {count} actions in flight (limit {max})"),
                IN_FLIGHT_RETRY_AFTER,
            ));
        }
        Ok(Admission(Some(guard)))
    }
}

/// Why validation failed.
enum Refused {
    Token(Reason),
    /// No key could be fetched to check the token: not the caller's fault.
    KeysUnavailable,
}

/// A place under the tenant's limit of actions in flight, held until the action is stored.
#[must_use = "the admission must be held until the submission is stored"]
pub struct Admission(Option<tokio::sync::OwnedMutexGuard<()>>);

impl std::fmt::Debug for Admission {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Admission").field(&self.0.is_some()).finish()
    }
}

struct TenantLimiter {
    config: TenantLimitsConfig,
    /// One limiter per tenant rather than one keyed limiter: tenants have their own quotas.
    rate: Option<governor::DefaultDirectRateLimiter>,
    /// Serializes the count-then-insert of submissions.
    submissions: Arc<tokio::sync::Mutex<()>>,
}

impl TenantLimiter {
    fn new(config: TenantLimitsConfig) -> TenantLimiter {
        let rate = config.requests_per_minute.and_then(NonZeroU32::new).map(|per_minute| {
            let burst = config
                .burst
                .and_then(NonZeroU32::new)
                .or_else(|| NonZeroU32::new(per_minute.get() / 10))
                .unwrap_or(NonZeroU32::MIN);
            governor::RateLimiter::direct(
                governor::Quota::per_minute(per_minute).allow_burst(burst),
            )
        });
        TenantLimiter { config, rate, submissions: Arc::new(tokio::sync::Mutex::new(())) }
    }
}

impl VerifyKey {
    fn new(kid: Option<String>, alg: Algorithm, key: DecodingKey, base: &Validation) -> VerifyKey {
        let mut validation = base.clone();
        validation.algorithms = vec![alg];
        VerifyKey { kid, key, validation }
    }

    fn has_kid(&self, kid: &str) -> bool {
        self.kid.as_deref() == Some(kid)
    }

    /// The claims, or why not and whether the signature was good (then the reason is final).
    fn verify(&self, token: &str) -> Result<Map<String, Value>, (Reason, bool)> {
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
fn pem_key(path: &Path, algorithm: Option<&str>) -> Result<(Algorithm, DecodingKey), String> {
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

/// One JWKS endpoint: its key set, cached, fetched single-flight.
struct JwksSource {
    path: String,
    url: reqwest::Url,
    client: reqwest::Client,
    base: Validation,
    ttl: Duration,
    min_refresh: Duration,
    cache: moka::future::Cache<(), Arc<KeySet>>,
    /// When the set was last fetched (or a refresh was claimed), for the refresh interval.
    last_fetch: Mutex<Option<Instant>>,
    /// The last set fetched successfully: kept in service while the endpoint fails.
    last_good: Mutex<Option<Arc<KeySet>>>,
}

/// A fetched key set, and for how long to use it.
struct KeySet {
    keys: Vec<Arc<VerifyKey>>,
    ttl: Duration,
    /// Why the last fetch failed (the keys are then the last good ones, or none).
    error: Option<String>,
}

impl KeySet {
    fn has_kid(&self, kid: &str) -> bool {
        self.keys.iter().any(|k| k.has_kid(kid))
    }

    fn with_kid<'a>(&'a self, kid: &'a str) -> impl Iterator<Item = Arc<VerifyKey>> + 'a {
        self.keys.iter().filter(move |k| k.has_kid(kid)).cloned()
    }
}

struct KeySetExpiry;

impl moka::Expiry<(), Arc<KeySet>> for KeySetExpiry {
    fn expire_after_create(&self, _: &(), value: &Arc<KeySet>, _: Instant) -> Option<Duration> {
        Some(value.ttl)
    }
}

impl JwksSource {
    fn new(config: &JwksConfig, base: &Validation, path: &str) -> Result<JwksSource, AuthError> {
        let key_error = |reason: String| AuthError::Key { path: path.to_owned(), reason };
        let url = check_jwks_url(&config.url).map_err(key_error)?;
        let ca_pem = match &config.ca_file {
            Some(file) => Some(
                std::fs::read_to_string(file)
                    .map_err(|e| key_error(format!("cannot read {}: {e}", file.display())))?,
            ),
            None => None,
        };
        let tls = edrgate_adapter::http::TlsOptions { ca_pem, ..Default::default() };
        let client = edrgate_adapter::http::client(&tls, JWKS_TIMEOUT)
            .map_err(|e| key_error(e.info.message))?;
        Ok(JwksSource {
            path: path.to_owned(),
            url,
            client,
            base: base.clone(),
            ttl: Duration::from_secs(config.cache_seconds),
            min_refresh: Duration::from_secs(config.min_refresh_seconds),
            cache: moka::future::Cache::builder()
                .max_capacity(1)
                .expire_after(KeySetExpiry)
                .build(),
            last_fetch: Mutex::new(None),
            last_good: Mutex::new(None),
        })
    }

    /// The current set; fetched when there is none (concurrent callers share the fetch).
    async fn keys(&self) -> Arc<KeySet> {
        self.cache.get_with((), self.fetch()).await
    }

    /// The set again for a token whose `kid` it lacks: fetched anew unless the last fetch is
    /// more recent than `min_refresh_seconds` (then the current set, or the fetch under way).
    async fn refresh_for_unknown_kid(&self) -> Arc<KeySet> {
        let allowed = {
            let mut last = lock(&self.last_fetch);
            let allowed = last.is_none_or(|at| at.elapsed() >= self.min_refresh);
            if allowed {
                // Claimed now, so concurrent requests with the same unknown kid do not all
                // invalidate: they wait for this fetch through `keys`.
                *last = Some(Instant::now());
            }
            allowed
        };
        if allowed {
            self.cache.invalidate(&()).await;
        }
        self.keys().await
    }

    async fn fetch(&self) -> Arc<KeySet> {
        *lock(&self.last_fetch) = Some(Instant::now());
        match self.download().await {
            Ok(keys) => {
                tracing::info!(jwks = %self.url, keys = keys.len(), "fetched the JWKS");
                let set = Arc::new(KeySet { keys, ttl: self.ttl, error: None });
                *lock(&self.last_good) = Some(Arc::clone(&set));
                set
            }
            Err(error) => {
                tracing::warn!(jwks = %self.url, %error, "fetching the JWKS failed");
                // Try again after the refresh interval, not on every request.
                let keys =
                    lock(&self.last_good).as_ref().map(|s| s.keys.clone()).unwrap_or_default();
                Arc::new(KeySet {
                    keys,
                    ttl: self.min_refresh.max(Duration::from_secs(1)),
                    error: Some(error),
                })
            }
        }
    }

    async fn download(&self) -> Result<Vec<Arc<VerifyKey>>, String> {
        let request = self.client.get(self.url.clone()).header("accept", "application/json");
        let body = tokio::time::timeout(JWKS_TIMEOUT, async {
            let mut response = request.send().await.map_err(|e| format!("request failed: {e}"))?;
            if !response.status().is_success() {
                return Err(format!("HTTP {}", response.status().as_u16()));
            }
            let mut body = Vec::new();
            while let Some(chunk) =
                response.chunk().await.map_err(|e| format!("reading failed: {e}"))?
            {
                if body.len() + chunk.len() > MAX_JWKS_BYTES {
                    return Err(format!("larger than {MAX_JWKS_BYTES} bytes"));
                }
                body.extend_from_slice(&chunk);
            }
            Ok(body)
        })
        .await
        .map_err(|_| "timed out".to_owned())??;
        let document: Value =
            serde_json::from_slice(&body).map_err(|e| format!("not JSON: {e}"))?;
        let Some(items) = document.get("keys").and_then(Value::as_array) else {
            return Err("no `keys` array".to_owned());
        };
        let keys: Vec<_> = items
            .iter()
            .filter_map(|item| match jwk_key(item) {
                Ok((kid, alg, key)) => Some(Arc::new(VerifyKey::new(kid, alg, key, &self.base))),
                Err(reason) => {
                    tracing::debug!(jwks = %self.url, reason, "JWKS entry skipped");
                    None
                }
            })
            .collect();
        if keys.is_empty() {
            return Err("no usable signing key".to_owned());
        }
        Ok(keys)
    }
}

/// A JWKS entry as a verification key: signing keys only, the algorithm from the JWK's `alg`
/// or its key type, never HMAC.
fn jwk_key(item: &Value) -> Result<(Option<String>, Algorithm, DecodingKey), &'static str> {
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

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Signs and verifies a throwaway HS256 token: a missing or doubled crypto backend makes
/// jsonwebtoken panic at first use, which should happen at startup.
fn self_test() -> Result<(), AuthError> {
    let outcome = std::panic::catch_unwind(|| {
        let secret = b"edrgate-self-test-secret-0123456789abcdef";
        let spec = TokenSpec::dev(secret);
        let token = mint_with(&spec, "self-test", "edrgate-self-test", Duration::from_secs(60))?;
        let mut validation = Validation::new(DEV_ALGORITHM);
        validation.validate_aud = false;
        let data = jsonwebtoken::decode::<Map<String, Value>>(
            &token,
            &DecodingKey::from_secret(secret),
            &validation,
        )?;
        match data.claims.get("tenant") {
            Some(Value::String(t)) if t == "self-test" => Ok(()),
            _ => Err(AuthError::SelfTest("the tenant claim did not round-trip".into())),
        }
    });
    match outcome {
        Ok(result) => result,
        Err(panic) => {
            let message = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                .unwrap_or_else(|| "panic".to_owned());
            Err(AuthError::SelfTest(message))
        }
    }
}

impl<S> FromRequestParts<S> for Caller
where
    Arc<Auth>: FromRef<S>,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let auth = Arc::<Auth>::from_ref(state);
        let Some(header) = parts.headers.get(AUTHORIZATION) else {
            return Err(ApiError::unauthenticated("a bearer token is required", false));
        };
        let token = header
            .to_str()
            .ok()
            .and_then(|h| h.split_once(' '))
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map(|(_, token)| token.trim())
            .filter(|token| !token.is_empty());
        let Some(token) = token else {
            return Err(ApiError::unauthenticated(
                "the Authorization header must be `Bearer <token>`",
                true,
            ));
        };
        let caller = auth.authenticate(token).await?;
        auth.check_rate(&caller.tenant)?;
        Ok(caller)
    }
}

impl moka::Expiry<String, Arc<Validated>> for UntilExpiry {
    fn expire_after_create(
        &self,
        _key: &String,
        value: &Arc<Validated>,
        created_at: Instant,
    ) -> Option<Duration> {
        Some(value.until.saturating_duration_since(created_at))
    }
}

/// What minting a development (HS256) token needs besides the tenant and subject.
#[derive(Clone, Debug)]
pub struct TokenSpec<'a> {
    pub secret: &'a [u8],
    pub tenant_claim: &'a str,
    pub issuer: Option<&'a str>,
    pub audience: Option<&'a str>,
    /// Claim the scopes go in, as a space-separated string.
    pub scope_claim: &'a str,
    pub scopes: Vec<String>,
}

impl<'a> TokenSpec<'a> {
    /// Default claims (`tenant`, `scope`), no issuer or audience, every default scope.
    pub fn dev(secret: &'a [u8]) -> TokenSpec<'a> {
        let names = ScopeNames::default();
        TokenSpec {
            secret,
            tenant_claim: "tenant",
            issuer: None,
            audience: None,
            scope_claim: "scope",
            scopes: Permission::ALL.iter().map(|p| p.scope(&names).to_owned()).collect(),
        }
    }

    /// What a gateway configured with `config` accepts, with every permission's scope.
    pub fn for_config(config: &'a AuthConfig) -> Result<TokenSpec<'a>, AuthError> {
        let secret = match (&config.hs256_secret, config.allow_hs256) {
            (Some(secret), true) => secret.expose_secret().as_bytes(),
            _ => return Err(AuthError::Hs256Disabled),
        };
        Ok(TokenSpec {
            secret,
            tenant_claim: &config.tenant_claim,
            issuer: config.issuer.as_deref(),
            audience: config.audience.as_deref(),
            scope_claim: config.scope_claim.as_deref().unwrap_or("scope"),
            scopes: Permission::ALL.iter().map(|p| p.scope(&config.scopes).to_owned()).collect(),
        })
    }

    /// Keeps only the scopes of `permissions`.
    pub fn only(mut self, permissions: Permissions, names: &ScopeNames) -> TokenSpec<'a> {
        self.scopes = permissions.iter().map(|p| p.scope(names).to_owned()).collect();
        self
    }
}

/// Mints a development token for `tenant` with every default scope (claims `tenant` and
/// `scope`, no issuer or audience), valid for `ttl`.
pub fn mint(
    secret: &[u8],
    tenant: &str,
    subject: &str,
    ttl: Duration,
) -> Result<String, AuthError> {
    mint_with(&TokenSpec::dev(secret), tenant, subject, ttl)
}

/// Mints a token with every permission that a gateway configured with `config` accepts
/// (needs `auth.allow_hs256`).
pub fn mint_for(
    config: &AuthConfig,
    tenant: &str,
    subject: &str,
    ttl: Duration,
) -> Result<String, AuthError> {
    mint_with(&TokenSpec::for_config(config)?, tenant, subject, ttl)
}

/// Mints an HS256 token from an explicit [`TokenSpec`].
pub fn mint_with(
    spec: &TokenSpec<'_>,
    tenant: &str,
    subject: &str,
    ttl: Duration,
) -> Result<String, AuthError> {
    if !is_identifier(tenant) {
        return Err(AuthError::InvalidTenant(tenant.to_owned()));
    }
    let now = jsonwebtoken::get_current_timestamp();
    let mut claims = Map::new();
    claims.insert("sub".into(), subject.into());
    claims.insert(spec.tenant_claim.into(), tenant.into());
    claims.insert("iat".into(), now.into());
    claims.insert("nbf".into(), now.into());
    claims.insert("exp".into(), now.saturating_add(ttl.as_secs()).into());
    claims.insert(spec.scope_claim.into(), spec.scopes.join(" ").into());
    if let Some(issuer) = spec.issuer {
        claims.insert("iss".into(), issuer.into());
    }
    if let Some(audience) = spec.audience {
        claims.insert("aud".into(), audience.into());
    }
    let token = jsonwebtoken::encode(
        &Header::new(DEV_ALGORITHM),
        &claims,
        &EncodingKey::from_secret(spec.secret),
    )?;
    Ok(token)
}

#[cfg(test)]
mod tests {
    use base64::Engine as _;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use serde_json::json;

    use super::*;

    const SECRET: &str = "unit-test-secret-0123456789abcdef0123456789";

    /// An HS256 configuration plus `extra` TOML lines.
    fn config(extra: &str) -> AuthConfig {
        let text = format!("allow_hs256 = true\nhs256_secret = \"{SECRET}\"\n{extra}");
        let config: AuthConfig = toml::from_str(&text).unwrap();
        let mut errors = Vec::new();
        config.validate(&mut errors);
        assert_eq!(errors, Vec::<String>::new());
        config
    }

    fn sign(claims: &Value, alg: Algorithm, secret: &str) -> String {
        jsonwebtoken::encode(
            &Header::new(alg),
            claims,
            &EncodingKey::from_secret(secret.as_bytes()),
        )
        .unwrap()
    }

    fn now() -> u64 {
        jsonwebtoken::get_current_timestamp()
    }

    async fn refused(auth: &Auth, token: &str) -> ApiError {
        let error = auth.authenticate(token).await.expect_err("the token was accepted");
        assert_eq!(error.status(), axum::http::StatusCode::UNAUTHORIZED, "{token}");
        assert_eq!(error.code(), edrgate_adapter::ErrorCode::Unauthenticated);
        error
    }

    #[tokio::test]
    async fn a_dev_token_carries_its_tenant_subject_and_every_permission() {
        let auth = Auth::new(&config("")).unwrap();
        let token = mint(SECRET.as_bytes(), "acme", "alice", Duration::from_secs(60)).unwrap();
        let caller = auth.authenticate(&token).await.unwrap();
        assert_eq!((caller.tenant.as_str(), caller.subject.as_deref()), ("acme", Some("alice")));
        assert_eq!(caller.permissions, Permissions::all());
        // A second time from the cache, same answer.
        assert_eq!(auth.authenticate(&token).await.unwrap(), caller);
        let read_only = TokenSpec::dev(SECRET.as_bytes())
            .only([Permission::Read].into_iter().collect(), &ScopeNames::default());
        let token = mint_with(&read_only, "acme", "bob", Duration::from_secs(60)).unwrap();
        let caller = auth.authenticate(&token).await.unwrap();
        assert!(caller.has(Permission::Read) && !caller.has(Permission::Write));
    }

    #[tokio::test]
    async fn expired_wrong_secret_wrong_alg_and_unsigned_tokens_are_refused() {
        let auth = Auth::new(&config("")).unwrap();
        let claims = |exp: u64| json!({"sub": "s", "tenant": "acme", "exp": exp});
        let expired = sign(&claims(now() - 30 - 60), Algorithm::HS256, SECRET);
        let wrong_secret =
            sign(&claims(now() + 60), Algorithm::HS256, "another-secret-of-enough-length!!");
        let wrong_alg = sign(&claims(now() + 60), Algorithm::HS512, SECRET);
        // `alg: none`, hand-made: no library signs one.
        let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"none","typ":"JWT"}"#);
        let payload = URL_SAFE_NO_PAD.encode(claims(now() + 60).to_string());
        let unsigned = format!("{header}.{payload}.");
        for token in [expired, wrong_secret, wrong_alg, unsigned, "not.a.jwt".into(), String::new()]
        {
            refused(&auth, &token).await;
        }
        let long = "a".repeat(MAX_TOKEN_LEN + 1);
        refused(&auth, &long).await;
    }

    #[tokio::test]
    async fn tenant_exp_and_nbf_are_enforced_with_the_leeway() {
        let auth = Auth::new(&config("leeway_seconds = 30")).unwrap();
        let no_tenant = sign(&json!({"sub": "s", "exp": now() + 60}), Algorithm::HS256, SECRET);
        let bad_tenant =
            sign(&json!({"tenant": "../x", "exp": now() + 60}), Algorithm::HS256, SECRET);
        let no_exp = sign(&json!({"tenant": "acme"}), Algorithm::HS256, SECRET);
        let not_yet = sign(
            &json!({"tenant": "acme", "exp": now() + 600, "nbf": now() + 300}),
            Algorithm::HS256,
            SECRET,
        );
        for token in [no_tenant, bad_tenant, no_exp, not_yet] {
            refused(&auth, &token).await;
        }
        // Within the leeway an expired token still passes (clock skew), and is not cached.
        let skewed = sign(&json!({"tenant": "acme", "exp": now() - 5}), Algorithm::HS256, SECRET);
        assert!(auth.authenticate(&skewed).await.is_ok());
        assert!(auth.cache.get(&skewed).await.is_none());
        // And without a scope claim the caller has no permission at all.
        assert_eq!(auth.authenticate(&skewed).await.unwrap().permissions, Permissions::default());
    }

    #[tokio::test]
    async fn issuer_and_audience_are_required_when_configured() {
        let cfg = config("issuer = \"https://idp\"\naudience = \"edrgate\"");
        let auth = Auth::new(&cfg).unwrap();
        let base = json!({"tenant": "acme", "exp": now() + 60});
        let with = |extra: Value| {
            let mut claims = base.clone();
            claims.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
            sign(&claims, Algorithm::HS256, SECRET)
        };
        let good = with(json!({"iss": "https://idp", "aud": "edrgate"}));
        assert!(auth.authenticate(&good).await.is_ok());
        let audiences = with(json!({"iss": "https://idp", "aud": ["other", "edrgate"]}));
        assert!(auth.authenticate(&audiences).await.is_ok());
        for token in [
            with(json!({})),
            with(json!({"iss": "https://idp"})),
            with(json!({"aud": "edrgate"})),
            with(json!({"iss": "https://evil", "aud": "edrgate"})),
            with(json!({"iss": "https://idp", "aud": "other"})),
        ] {
            refused(&auth, &token).await;
        }
        let minted = mint_for(&cfg, "acme", "ops", Duration::from_secs(60)).unwrap();
        assert_eq!(auth.authenticate(&minted).await.unwrap().tenant, "acme");
    }

    #[tokio::test]
    async fn tenant_and_scope_claims_and_scope_names_are_configurable() {
        // Default: `scope` (string) and `scp` (array or string) both count.
        let auth = Auth::new(&config("")).unwrap();
        let token = |claims: Value| sign(&claims, Algorithm::HS256, SECRET);
        let exp = now() + 60;
        let caller = auth
            .authenticate(&token(json!({"tenant": "a", "exp": exp,
                "scope": "openid edrgate:read", "scp": ["edrgate:contain", "unrelated"]})))
            .await
            .unwrap();
        assert_eq!(
            caller.permissions.iter().collect::<Vec<_>>(),
            [Permission::Read, Permission::Contain]
        );

        let cfg = config(
            "tenant_claim = \"https://edrgate/tenant\"\nscope_claim = \"roles\"\n[scopes]\nwrite = \"Responder.Write\"",
        );
        let auth = Auth::new(&cfg).unwrap();
        let caller = auth
            .authenticate(&token(json!({"https://edrgate/tenant": "globex", "exp": exp,
                "roles": ["Responder.Write", "edrgate:read"], "scope": "edrgate:admin",
                "azp": "soar-client"})))
            .await
            .unwrap();
        assert_eq!(caller.tenant, "globex");
        assert_eq!(caller.client_id.as_deref(), Some("soar-client"));
        // Only the configured claim counts, with the configured names.
        assert_eq!(
            caller.permissions.iter().collect::<Vec<_>>(),
            [Permission::Read, Permission::Write]
        );
        let error = caller.require(Permission::Write).and(caller.require(Permission::Admin));
        let problem = error.unwrap_err().problem();
        assert_eq!(problem.detail, "missing permission admin (token scope edrgate:admin)");
        // A dev token for this configuration carries the renamed scopes in the right claim.
        let minted = mint_for(&cfg, "globex", "x", Duration::from_secs(60)).unwrap();
        assert_eq!(auth.authenticate(&minted).await.unwrap().permissions, Permissions::all());
        // The default tenant claim is not read any more.
        refused(&auth, &mint(SECRET.as_bytes(), "globex", "x", Duration::from_secs(60)).unwrap())
            .await;
    }

    #[test]
    fn commands_need_the_permission_of_their_class() {
        let reader = Caller::new("acme", None, [Permission::Read].into_iter().collect());
        for kind in CommandKind::ALL {
            let result = reader.require_commands([kind]);
            assert_eq!(result.is_ok(), kind.class() == CommandClass::Read, "{kind:?}");
            if let Err(error) = result {
                assert_eq!(error.status(), axum::http::StatusCode::FORBIDDEN);
                assert_eq!(error.code(), edrgate_adapter::ErrorCode::Forbidden);
                let expected = Permission::from(kind.class());
                assert!(error.problem().detail.contains(expected.as_str()), "{kind:?}");
            }
        }
        let error = reader
            .require_commands([CommandKind::Isolate, CommandKind::Execute, CommandKind::Release])
            .unwrap_err();
        assert_eq!(
            error.problem().detail,
            "missing permissions execute, contain (token scopes edrgate:execute, edrgate:contain)"
        );
        assert!(Caller::new("a", None, Permissions::all()).require_all(Permission::ALL).is_ok());
        assert_eq!(format!("{:?}", reader.permissions), r#"{"read"}"#);
    }

    #[test]
    fn only_asymmetric_algorithms_and_safe_jwks_urls_are_accepted() {
        for name in
            ["RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "EdDSA"]
        {
            assert!(asymmetric_algorithm(name).is_some(), "{name}");
        }
        for name in ["HS256", "HS512", "none", "rs256", ""] {
            assert!(asymmetric_algorithm(name).is_none(), "{name}");
        }
        for url in [
            "https://idp.example.com/jwks",
            "http://127.0.0.1:8080/j",
            "http://[::1]/j",
            "http://localhost/j",
        ] {
            assert!(check_jwks_url(url).is_ok(), "{url}");
        }
        for url in ["http://idp.example.com/jwks", "ftp://x/", "not a url", "http://10.0.0.1/j"] {
            assert!(check_jwks_url(url).is_err(), "{url}");
        }
    }

    #[test]
    fn jwks_entries_give_signing_keys_with_the_algorithm_of_their_type() {
        let ed = aws_lc_rs::signature::Ed25519KeyPair::generate().unwrap();
        let x = URL_SAFE_NO_PAD.encode(aws_lc_rs::signature::KeyPair::public_key(&ed).as_ref());
        let okp = json!({"kty": "OKP", "crv": "Ed25519", "x": x, "kid": "e"});
        let (kid, alg, _) = jwk_key(&okp).unwrap();
        assert_eq!((kid.as_deref(), alg), (Some("e"), Algorithm::EdDSA));
        let mut with_alg = okp.clone();
        with_alg["alg"] = json!("EdDSA");
        assert_eq!(jwk_key(&with_alg).unwrap().1, Algorithm::EdDSA);
        // Never HMAC from a JWKS, never an encryption key, never an alg of another key type.
        let oct = json!({"kty": "oct", "k": URL_SAFE_NO_PAD.encode(SECRET), "alg": "HS256"});
        assert!(jwk_key(&oct).is_err());
        let mut enc = okp.clone();
        enc["use"] = json!("enc");
        assert!(jwk_key(&enc).is_err());
        let mut mismatched = okp.clone();
        mismatched["alg"] = json!("RS256");
        assert!(jwk_key(&mismatched).is_err());
        assert!(jwk_key(&json!({"kty": "XYZ"})).is_err());
    }

    #[test]
    fn pem_keys_get_the_algorithm_of_their_type() {
        use aws_lc_rs::encoding::{AsDer as _, PublicKeyX509Der};
        use aws_lc_rs::signature::KeyPair as _;
        let dir = tempfile::tempdir().unwrap();
        let write = |name: &str, der: &[u8]| {
            let b64 = base64::engine::general_purpose::STANDARD.encode(der);
            let path = dir.path().join(name);
            std::fs::write(
                &path,
                format!("-----BEGIN PUBLIC KEY-----\n{b64}\n-----END PUBLIC KEY-----\n"),
            )
            .unwrap();
            path
        };
        let rsa = aws_lc_rs::rsa::KeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048).unwrap();
        let rsa_der: PublicKeyX509Der = rsa.public_key().as_der().unwrap();
        let ec = aws_lc_rs::signature::EcdsaKeyPair::generate(
            &aws_lc_rs::signature::ECDSA_P256_SHA256_FIXED_SIGNING,
        )
        .unwrap();
        let ec_der: PublicKeyX509Der = ec.public_key().as_der().unwrap();
        let ed = aws_lc_rs::signature::Ed25519KeyPair::generate().unwrap();
        let ed_der: PublicKeyX509Der = ed.public_key().as_der().unwrap();
        let (rsa, ec, ed) = (
            write("rsa.pem", rsa_der.as_ref()),
            write("ec.pem", ec_der.as_ref()),
            write("ed.pem", ed_der.as_ref()),
        );
        assert_eq!(pem_key(&rsa, None).unwrap().0, Algorithm::RS256);
        assert_eq!(pem_key(&rsa, Some("PS384")).unwrap().0, Algorithm::PS384);
        assert_eq!(pem_key(&ec, None).unwrap().0, Algorithm::ES256);
        assert_eq!(pem_key(&ed, None).unwrap().0, Algorithm::EdDSA);
        assert!(pem_key(&ec, Some("RS256")).is_err());
        assert!(pem_key(&rsa, Some("HS256")).is_err());
        assert!(pem_key(&dir.path().join("missing.pem"), None).is_err());
        let garbage = dir.path().join("garbage.pem");
        std::fs::write(&garbage, "not a key").unwrap();
        assert!(pem_key(&garbage, None).is_err());
    }

    #[test]
    fn hs256_is_only_minted_and_accepted_when_enabled() {
        let cfg: AuthConfig = toml::from_str(&format!("hs256_secret = \"{SECRET}\"")).unwrap();
        let mut errors = Vec::new();
        cfg.validate(&mut errors);
        assert!(errors.iter().any(|e| e.contains("allow_hs256")), "{errors:?}");
        assert!(matches!(
            mint_for(&cfg, "a", "b", Duration::from_secs(1)),
            Err(AuthError::Hs256Disabled)
        ));
        let auth = Auth::new(&cfg).unwrap();
        assert!(auth.static_keys.is_empty(), "an HS256 key without allow_hs256");
        assert!(mint(SECRET.as_bytes(), "not a tenant", "x", Duration::from_secs(1)).is_err());
    }

    #[tokio::test]
    async fn the_request_rate_is_limited_per_tenant_and_survives_unchanged_reloads() {
        let auth = Auth::new(&config("")).unwrap();
        let limited = TenantLimitsConfig {
            requests_per_minute: Some(60),
            burst: Some(2),
            ..Default::default()
        };
        let none = TenantLimitsConfig::default();
        auth.set_tenant_limits([("acme", &limited), ("globex", &none)]);
        assert!(auth.check_rate("acme").is_ok() && auth.check_rate("acme").is_ok());
        let error = auth.check_rate("acme").unwrap_err();
        assert_eq!(error.status(), axum::http::StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(error.code(), edrgate_adapter::ErrorCode::RateLimited);
        let response = axum::response::IntoResponse::into_response(error);
        // One request a second: the next one is about a second away.
        assert_eq!(response.headers()[axum::http::header::RETRY_AFTER], "1");
        for _ in 0..100 {
            assert!(auth.check_rate("globex").is_ok() && auth.check_rate("initech").is_ok());
        }
        // The same limits again (a reload): the spent burst stays spent.
        auth.set_tenant_limits([("acme", &limited)]);
        assert!(auth.check_rate("acme").is_err());
        // New limits: a new budget.
        let raised = TenantLimitsConfig { burst: Some(5), ..limited.clone() };
        auth.set_tenant_limits([("acme", &raised)]);
        assert!(auth.check_rate("acme").is_ok());
        // Removed: unlimited.
        auth.set_tenant_limits([]);
        for _ in 0..10 {
            assert!(auth.check_rate("acme").is_ok());
        }
    }

    #[tokio::test]
    async fn actions_in_flight_are_admitted_up_to_the_limit() {
        let auth = Auth::new(&config("")).unwrap();
        let limits = TenantLimitsConfig { max_actions_in_flight: Some(2), ..Default::default() };
        auth.set_tenant_limits([("acme", &limits)]);
        let count = |n: u64| move || async move { Ok::<u64, String>(n) };
        let admitted = auth.admit_action("acme", count(1)).await.unwrap();
        drop(admitted);
        let error = auth.admit_action("acme", count(2)).await.unwrap_err();
        assert_eq!(error.code(), edrgate_adapter::ErrorCode::RateLimited);
        assert!(error.problem().detail.contains("2 actions in flight (limit 2)"));
        // A tenant without the limit is not even counted.
        let uncounted = || async { Err::<u64, String>("must not be called".into()) };
        assert!(auth.admit_action("globex", uncounted).await.is_ok());
        // A failing count is an internal error, not an admission.
        let failing = || async { Err::<u64, String>("database is locked".into()) };
        let error = auth.admit_action("acme", failing).await.unwrap_err();
        assert_eq!(error.code(), edrgate_adapter::ErrorCode::Internal);
        // Admissions of one tenant are serialized: the second waits for the first.
        let held = auth.admit_action("acme", count(0)).await.unwrap();
        let waiting =
            tokio::time::timeout(Duration::from_millis(50), auth.admit_action("acme", count(0)));
        assert!(waiting.await.is_err(), "two admissions at once");
        drop(held);
        assert!(auth.admit_action("acme", count(0)).await.is_ok());
    }

    #[test]
    fn auth_settings_are_checked_with_their_paths() {
        let problems = |text: &str| {
            let config: AuthConfig = toml::from_str(text).unwrap();
            let mut errors = Vec::new();
            config.validate(&mut errors);
            errors
        };
        assert_eq!(
            problems("[[jwks]]\nurl = \"https://idp/jwks\""),
            [
                "auth.issuer: required with auth.keys or auth.jwks",
                "auth.audience: required with auth.keys or auth.jwks"
            ]
        );
        let errors = problems(
            r#"
            issuer = "i"
            audience = "a"
            tenant_claim = ""
            leeway_seconds = 301
            [[keys]]
            pem_file = "k.pem"
            algorithm = "HS256"
            kid = ""
            [[jwks]]
            url = "http://idp.example.com/jwks"
            cache_seconds = 0
            [scopes]
            write = "edrgate:read"
            admin = "two words"
            "#,
        );
        let fields: Vec<&str> = errors.iter().map(|e| e.split(':').next().unwrap()).collect();
        assert_eq!(
            fields,
            [
                "auth.keys[0].algorithm",
                "auth.keys[0].kid",
                "auth.jwks[0].url",
                "auth.jwks[0].cache_seconds",
                "auth.tenant_claim",
                "auth.leeway_seconds",
                "auth.scopes.write",
                "auth.scopes.admin"
            ],
            "{errors:?}"
        );
        assert!(problems("").iter().any(|e| e.starts_with("auth: no token key")));
        assert!(problems("allow_hs256 = true").iter().any(|e| e.contains("missing")));
    }

    #[test]
    fn the_crypto_backend_works() {
        // The self-test in `Auth::new` is what catches a missing or doubled crypto feature.
        assert!(self_test().is_ok());
    }
}
