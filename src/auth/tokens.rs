//! Token validation: the keys a token is checked with (by its `kid`, each key with its own
//! algorithm), the claims that make its [`Caller`], and the cache of validated tokens.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{DecodingKey, Validation};
use secrecy::ExposeSecret;
use serde_json::{Map, Value};

use super::jwks::JwksSource;
use super::keys::{VerifyKey, pem_key};
use super::{
    Auth, AuthError, Caller, DEV_ALGORITHM, Permission, Reason, Refusal, TokenSpec, mint_with,
};
use crate::config::{AuthConfig, ScopeNames, is_identifier};

/// Longest time a validated token stays cached.
const CACHE_TTL: Duration = Duration::from_secs(300);
/// Tokens longer than this are refused before any parsing (and never hashed).
pub(super) const MAX_TOKEN_LEN: usize = 8 * 1024;

/// The key of a validated token in the cache: its SHA-256, so that tokens are not held in
/// memory as keys (a heap dump shows hashes, not bearer tokens).
pub(super) type TokenKey = [u8; 32];

pub(super) fn token_key(token: &str) -> TokenKey {
    use sha2::{Digest, Sha256};
    Sha256::digest(token.as_bytes()).into()
}

pub(super) struct Validated {
    caller: Caller,
    until: Instant,
}

struct UntilExpiry;

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
    /// `503` when no key could be fetched to check it): [`Refusal::BadToken`] or
    /// [`Refusal::KeysUnavailable`].
    pub async fn authenticate(&self, token: &str) -> Result<Caller, Refusal> {
        if token.len() > MAX_TOKEN_LEN {
            return Err(Refusal::BadToken("the bearer token is too long"));
        }
        let key = token_key(token);
        if let Some(hit) = self.cache.get(&key).await
            && hit.until > Instant::now()
        {
            return Ok(hit.caller.clone());
        }
        let (caller, exp) = match self.validate(token).await {
            Ok(valid) => valid,
            Err(Refused::Token(reason)) => {
                tracing::debug!(reason, "bearer token refused");
                return Err(Refusal::BadToken(reason));
            }
            Err(Refused::KeysUnavailable) => return Err(Refusal::KeysUnavailable),
        };
        let now_unix = jsonwebtoken::get_current_timestamp();
        let ttl = Duration::from_secs(exp.saturating_sub(now_unix)).min(CACHE_TTL);
        if !ttl.is_zero() {
            let entry = Validated { caller: caller.clone(), until: Instant::now() + ttl };
            self.cache.insert(key, Arc::new(entry)).await;
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
        let permissions = Permission::EVERY
            .into_iter()
            .filter(|p| granted.contains(&p.scope(&self.scopes)))
            .collect();
        // `exp` is required and was checked as a number by `decode`.
        let exp = claims.get("exp").and_then(Value::as_u64).unwrap_or(0);
        let caller =
            Caller { tenant, subject, client_id, permissions, scopes: Arc::clone(&self.scopes) };
        Ok((caller, exp))
    }
}

/// Why validation failed.
enum Refused {
    Token(Reason),
    /// No key could be fetched to check the token: not the caller's fault.
    KeysUnavailable,
}

impl moka::Expiry<TokenKey, Arc<Validated>> for UntilExpiry {
    fn expire_after_create(
        &self,
        _key: &TokenKey,
        value: &Arc<Validated>,
        created_at: Instant,
    ) -> Option<Duration> {
        Some(value.until.saturating_duration_since(created_at))
    }
}

/// Signs and verifies a throwaway HS256 token: a missing or doubled crypto backend makes
/// jsonwebtoken panic at first use, which should happen at startup.
pub(super) fn self_test() -> Result<(), AuthError> {
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
