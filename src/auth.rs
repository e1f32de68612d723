//! Bearer-token authentication: JWTs signed with HS256 and the configured secret.
//!
//! The algorithm comes from the configuration, never from the token's header, so a token cannot
//! pick a weaker (or no) algorithm. `exp` is required, `nbf` is checked, `iss` and `aud` are
//! required and checked when configured, with a 30 s leeway for clock skew. The caller's tenant
//! is the configured claim (`tenant` by default); `sub` is kept as the subject for the record.
//!
//! Validated tokens are cached (moka) by their full text until they expire, at most 5 minutes:
//! the checks that could change with time are only `exp` (the entry dies with it) and `nbf`
//! (never cached before it passes), and the key does not change while the process runs.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{FromRef, FromRequestParts};
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use secrecy::ExposeSecret;
use serde_json::{Map, Value};

use crate::api::problem::ApiError;
use crate::config::{AuthConfig, is_identifier};

/// The only algorithm accepted (and used to mint development tokens).
pub const ALGORITHM: Algorithm = Algorithm::HS256;
/// Clock skew tolerated on `exp` and `nbf`, in seconds.
pub const LEEWAY_SECS: u64 = 30;
/// Longest time a validated token stays cached.
const CACHE_TTL: Duration = Duration::from_secs(300);
/// Tokens longer than this are refused before any parsing (and never become cache keys).
const MAX_TOKEN_LEN: usize = 8 * 1024;

/// Who is calling: the authenticated tenant and subject. Extracting it enforces
/// authentication, so every `/v1` handler takes one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Caller {
    pub tenant: String,
    pub subject: Option<String>,
}

/// The token validator.
pub struct Auth {
    key: DecodingKey,
    validation: Validation,
    tenant_claim: String,
    cache: moka::future::Cache<String, Arc<Validated>>,
}

/// What minting a token needs besides the tenant and subject.
#[derive(Clone, Debug)]
pub struct TokenSpec<'a> {
    pub secret: &'a [u8],
    pub tenant_claim: &'a str,
    pub issuer: Option<&'a str>,
    pub audience: Option<&'a str>,
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
}

struct Validated {
    caller: Caller,
    until: Instant,
}

struct UntilExpiry;

impl Auth {
    /// A validator for `config`. Signs and verifies a throwaway token first, so a misconfigured
    /// crypto backend fails here, at startup, rather than on the first request.
    pub fn new(config: &AuthConfig) -> Result<Auth, AuthError> {
        let secret = config.hs256_secret.expose_secret().as_bytes();
        let mut validation = Validation::new(ALGORITHM);
        validation.leeway = LEEWAY_SECS;
        validation.validate_nbf = true;
        let mut required = vec!["exp"];
        if let Some(issuer) = &config.issuer {
            validation.set_issuer(&[issuer]);
            // jsonwebtoken checks `iss` only when the token has one: make it mandatory.
            required.push("iss");
        }
        match &config.audience {
            Some(audience) => {
                validation.set_audience(&[audience]);
                required.push("aud");
            }
            // Without a configured audience a token's `aud` (if any) is not ours to judge;
            // jsonwebtoken would otherwise refuse every token that has one.
            None => validation.validate_aud = false,
        }
        validation.set_required_spec_claims(&required);
        let auth = Auth {
            key: DecodingKey::from_secret(secret),
            validation,
            tenant_claim: config.tenant_claim.clone(),
            cache: moka::future::Cache::builder()
                .max_capacity(10_000)
                .expire_after(UntilExpiry)
                .build(),
        };
        let spec = TokenSpec {
            secret,
            tenant_claim: &config.tenant_claim,
            issuer: config.issuer.as_deref(),
            audience: config.audience.as_deref(),
        };
        auth.self_test(&spec)?;
        Ok(auth)
    }

    /// Validates a bearer token and returns its caller. The error is the `401` to answer.
    pub async fn authenticate(&self, token: &str) -> Result<Caller, ApiError> {
        if token.len() > MAX_TOKEN_LEN {
            return Err(ApiError::unauthenticated("the bearer token is too long", true));
        }
        if let Some(hit) = self.cache.get(token).await
            && hit.until > Instant::now()
        {
            return Ok(hit.caller.clone());
        }
        let (caller, exp) = self.validate(token).map_err(|reason| {
            tracing::debug!(reason, "bearer token refused");
            ApiError::unauthenticated(format!("invalid bearer token: {reason}"), true)
        })?;
        let now_unix = jsonwebtoken::get_current_timestamp();
        let ttl = Duration::from_secs(exp.saturating_sub(now_unix)).min(CACHE_TTL);
        if !ttl.is_zero() {
            let entry = Validated { caller: caller.clone(), until: Instant::now() + ttl };
            self.cache.insert(token.to_owned(), Arc::new(entry)).await;
        }
        Ok(caller)
    }

    /// Full validation, no cache. Returns the caller and the token's `exp`, or why the token
    /// was refused (safe to show: it says nothing about the key).
    fn validate(&self, token: &str) -> Result<(Caller, u64), &'static str> {
        let data = jsonwebtoken::decode::<Map<String, Value>>(token, &self.key, &self.validation)
            .map_err(|e| match e.kind() {
            ErrorKind::ExpiredSignature => "the token has expired",
            ErrorKind::ImmatureSignature => "the token is not valid yet",
            ErrorKind::InvalidIssuer => "wrong issuer",
            ErrorKind::InvalidAudience => "wrong audience",
            ErrorKind::InvalidAlgorithm | ErrorKind::InvalidAlgorithmName => {
                "the token's algorithm is not accepted"
            }
            ErrorKind::InvalidSignature => "bad signature",
            ErrorKind::MissingRequiredClaim(_) => "a required claim is missing",
            _ => "malformed token",
        })?;
        let claims = data.claims;
        let tenant = match claims.get(&self.tenant_claim) {
            Some(Value::String(t)) if is_identifier(t) => t.clone(),
            Some(_) => return Err("the tenant claim is not a valid tenant id"),
            None => return Err("the token has no tenant claim"),
        };
        let subject = claims.get("sub").and_then(Value::as_str).map(str::to_owned);
        // `exp` is required and was checked as a number by `decode`.
        let exp = claims.get("exp").and_then(Value::as_u64).unwrap_or(0);
        Ok((Caller { tenant, subject }, exp))
    }

    fn self_test(&self, spec: &TokenSpec<'_>) -> Result<(), AuthError> {
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let token = mint_with(spec, "self-test", "edrgate-self-test", Duration::from_secs(60))?;
            self.validate(&token).map_err(|reason| AuthError::SelfTest(reason.to_owned()))
        }));
        match outcome {
            Ok(Ok((caller, _))) if caller.tenant == "self-test" => Ok(()),
            Ok(Ok(_)) => Err(AuthError::SelfTest("the tenant claim did not round-trip".into())),
            Ok(Err(e)) => Err(e),
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
        auth.authenticate(token).await
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

/// Mints a development token for `tenant` (claim `tenant`, no issuer or audience), valid for
/// `ttl`.
pub fn mint(
    secret: &[u8],
    tenant: &str,
    subject: &str,
    ttl: Duration,
) -> Result<String, AuthError> {
    let spec = TokenSpec { secret, tenant_claim: "tenant", issuer: None, audience: None };
    mint_with(&spec, tenant, subject, ttl)
}

/// Mints a token that a gateway configured with `config` accepts.
pub fn mint_for(
    config: &AuthConfig,
    tenant: &str,
    subject: &str,
    ttl: Duration,
) -> Result<String, AuthError> {
    let spec = TokenSpec {
        secret: config.hs256_secret.expose_secret().as_bytes(),
        tenant_claim: &config.tenant_claim,
        issuer: config.issuer.as_deref(),
        audience: config.audience.as_deref(),
    };
    mint_with(&spec, tenant, subject, ttl)
}

/// Mints a token from an explicit [`TokenSpec`].
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
    if let Some(issuer) = spec.issuer {
        claims.insert("iss".into(), issuer.into());
    }
    if let Some(audience) = spec.audience {
        claims.insert("aud".into(), audience.into());
    }
    let token = jsonwebtoken::encode(
        &Header::new(ALGORITHM),
        &claims,
        &EncodingKey::from_secret(spec.secret),
    )?;
    Ok(token)
}

#[cfg(test)]
mod tests {
    use base64::Engine as _;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use secrecy::SecretString;
    use serde_json::json;

    use super::*;
    use crate::api::problem::ApiError;

    const SECRET: &str = "unit-test-secret-0123456789abcdef0123456789";

    fn config(issuer: Option<&str>, audience: Option<&str>) -> AuthConfig {
        AuthConfig {
            hs256_secret: SecretString::from(SECRET),
            issuer: issuer.map(str::to_owned),
            audience: audience.map(str::to_owned),
            tenant_claim: "tenant".into(),
        }
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
        auth.authenticate(token).await.expect_err("the token was accepted")
    }

    #[tokio::test]
    async fn a_minted_token_is_accepted_with_its_tenant_and_subject() {
        let auth = Auth::new(&config(None, None)).unwrap();
        let token = mint(SECRET.as_bytes(), "acme", "alice", Duration::from_secs(60)).unwrap();
        let caller = auth.authenticate(&token).await.unwrap();
        assert_eq!(caller, Caller { tenant: "acme".into(), subject: Some("alice".into()) });
        // A second time from the cache, same answer.
        assert_eq!(auth.authenticate(&token).await.unwrap(), caller);
    }

    #[tokio::test]
    async fn expired_wrong_secret_wrong_alg_and_unsigned_tokens_are_refused() {
        let auth = Auth::new(&config(None, None)).unwrap();
        let claims = |exp: u64| json!({"sub": "s", "tenant": "acme", "exp": exp});
        let expired = sign(&claims(now() - LEEWAY_SECS - 60), Algorithm::HS256, SECRET);
        let wrong_secret =
            sign(&claims(now() + 60), Algorithm::HS256, "another-secret-of-enough-length!!");
        let wrong_alg = sign(&claims(now() + 60), Algorithm::HS512, SECRET);
        // `alg: none`, hand-made: no library signs one.
        let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"none","typ":"JWT"}"#);
        let payload = URL_SAFE_NO_PAD.encode(claims(now() + 60).to_string());
        let unsigned = format!("{header}.{payload}.");
        for token in [expired, wrong_secret, wrong_alg, unsigned, "not.a.jwt".into(), String::new()]
        {
            let error = refused(&auth, &token).await;
            assert_eq!(error.status(), axum::http::StatusCode::UNAUTHORIZED, "{token}");
            assert_eq!(error.code(), edrgate_adapter::ErrorCode::Unauthenticated);
        }
    }

    #[tokio::test]
    async fn tenant_exp_and_nbf_are_enforced() {
        let auth = Auth::new(&config(None, None)).unwrap();
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
            let error = refused(&auth, &token).await;
            assert_eq!(error.code(), edrgate_adapter::ErrorCode::Unauthenticated, "{token}");
        }
        // Within the leeway an expired token still passes (clock skew), and is not cached.
        let skewed = sign(&json!({"tenant": "acme", "exp": now() - 5}), Algorithm::HS256, SECRET);
        assert!(auth.authenticate(&skewed).await.is_ok());
        assert!(auth.cache.get(&skewed).await.is_none());
    }

    #[tokio::test]
    async fn issuer_and_audience_are_required_when_configured() {
        let auth = Auth::new(&config(Some("https://idp"), Some("edrgate"))).unwrap();
        let base = json!({"tenant": "acme", "exp": now() + 60});
        let with = |extra: Value| {
            let mut claims = base.clone();
            claims.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
            sign(&claims, Algorithm::HS256, SECRET)
        };
        assert!(
            auth.authenticate(&with(json!({"iss": "https://idp", "aud": "edrgate"}))).await.is_ok()
        );
        for token in [
            with(json!({})),
            with(json!({"iss": "https://idp"})),
            with(json!({"aud": "edrgate"})),
            with(json!({"iss": "https://evil", "aud": "edrgate"})),
            with(json!({"iss": "https://idp", "aud": "other"})),
        ] {
            refused(&auth, &token).await;
        }
        let minted = mint_for(
            &config(Some("https://idp"), Some("edrgate")),
            "acme",
            "ops",
            Duration::from_secs(60),
        )
        .unwrap();
        assert_eq!(auth.authenticate(&minted).await.unwrap().tenant, "acme");
    }

    #[tokio::test]
    async fn a_custom_tenant_claim_is_read() {
        let mut cfg = config(None, None);
        cfg.tenant_claim = "https://edrgate/tenant".into();
        let auth = Auth::new(&cfg).unwrap();
        let token = sign(
            &json!({"https://edrgate/tenant": "globex", "exp": now() + 60}),
            Algorithm::HS256,
            SECRET,
        );
        assert_eq!(auth.authenticate(&token).await.unwrap().tenant, "globex");
        let plain = mint(SECRET.as_bytes(), "globex", "x", Duration::from_secs(60)).unwrap();
        refused(&auth, &plain).await;
    }

    #[test]
    fn the_crypto_backend_works() {
        // The self-test in `Auth::new` is what catches a missing or doubled crypto feature.
        assert!(Auth::new(&config(None, None)).is_ok());
        assert!(mint(SECRET.as_bytes(), "not a tenant", "x", Duration::from_secs(1)).is_err());
    }
}
