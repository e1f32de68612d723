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
//! Validated tokens are cached (moka, bounded) by their SHA-256 until they expire, at most 5 minutes:
//! the checks that could change with time are only `exp` (the entry dies with it) and `nbf`
//! (never cached before it passes). A key withdrawn from a JWKS is refused once the set is
//! fetched again (after `cache_seconds`, or on the next unknown `kid`), and for tokens already
//! validated within those 5 minutes.
//!
//! **Layout.** This module knows no HTTP: every refusal is a [`Refusal`], which `api` answers
//! with its problem, and the `Caller` extractor is `api::caller` (so `auth` depends on `config`
//! only, and `api` on `auth`, never back). One file per concern: `caller` (permissions and the
//! caller), `tokens` (validation and its cache), `keys` (PEM and JWK keys and the algorithm
//! each verifies), `jwks` (fetching key sets), `limits` (the tenants' inbound limits) and
//! `mint` (development tokens).

mod caller;
mod jwks;
mod keys;
mod limits;
mod mint;
mod tokens;

#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

pub use caller::{Caller, Permission, Permissions};
pub use limits::Admission;
pub use mint::{DEV_ALGORITHM, TokenSpec, mint, mint_for, mint_with};

use crate::config::ScopeNames;

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

/// Why a request was refused: by token validation ([`Auth::authenticate`]), a permission
/// check ([`Caller::require`]) or a tenant's limit ([`Auth::check_rate`],
/// [`Auth::admit_action`]). `api` answers each with its problem.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// `401`: the bearer token is refused. The reason is shown to the caller (and as the
    /// challenge's `error_description`), so it says nothing about the keys.
    #[error("{0}")]
    BadToken(&'static str),
    /// `503`: no key could be fetched to check the token: not the caller's fault.
    #[error("the token signing keys could not be fetched")]
    KeysUnavailable,
    /// `403`: permissions are missing; `scopes` would grant them.
    #[error("{detail}")]
    Forbidden { detail: String, scopes: Vec<String> },
    /// `429`: a limit of the tenant is reached; `retry_after` is when to try again.
    #[error("{detail}")]
    RateLimited { detail: String, retry_after: Duration },
    /// `500`: the check itself failed (logged where it did).
    #[error("internal error")]
    Internal,
}

/// The token validator, the permission mapping and the tenants' inbound limits.
pub struct Auth {
    /// PEM keys and the HS256 secret.
    static_keys: Vec<Arc<keys::VerifyKey>>,
    jwks: Vec<jwks::JwksSource>,
    tenant_claim: String,
    scope_claim: Option<String>,
    scopes: Arc<ScopeNames>,
    cache: moka::future::Cache<tokens::TokenKey, Arc<tokens::Validated>>,
    limits: RwLock<HashMap<String, Arc<limits::TenantLimiter>>>,
}

/// Why a token was refused: shown to the caller (and as `error_description`), so it says
/// nothing about the keys.
type Reason = &'static str;
