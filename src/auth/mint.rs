//! Development tokens (HS256): `edrgate token`, `edrgate demo` and the tests.

use std::time::Duration;

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use secrecy::ExposeSecret;
use serde_json::Map;

use super::{AuthError, Permission, Permissions};
use crate::config::{AuthConfig, ScopeNames, is_identifier};

/// The algorithm of development tokens (`edrgate token`, `edrgate demo`).
pub const DEV_ALGORITHM: Algorithm = Algorithm::HS256;

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
