//! The HS256 tokens a test gateway accepts (its default `[auth]`).

use std::time::Duration;

use edrgate::auth::TokenSpec;

/// The gateways' HS256 key.
pub(crate) const SECRET: &str = "test-secret-0123456789abcdef0123456789abcdef";
/// Who [`token`] speaks for.
pub(crate) const SUBJECT: &str = "analyst-7";

/// A token of `tenant` with every permission, for [`SUBJECT`].
pub(crate) fn token(tenant: &str) -> String {
    token_as(tenant, SUBJECT)
}

/// A token of `tenant` with every permission, for `subject`.
pub(crate) fn token_as(tenant: &str, subject: &str) -> String {
    edrgate::auth::mint(SECRET.as_bytes(), tenant, subject, Duration::from_secs(600)).unwrap()
}

/// A token of `tenant` for `subject` with only `scopes`.
pub(crate) fn scoped_token(tenant: &str, subject: &str, scopes: &[&str]) -> String {
    let spec = TokenSpec {
        scopes: scopes.iter().map(|s| (*s).to_owned()).collect(),
        ..TokenSpec::dev(SECRET.as_bytes())
    };
    edrgate::auth::mint_with(&spec, tenant, subject, Duration::from_secs(600)).unwrap()
}

/// A token of `tenant` for `subject` with every permission and the operator's (the
/// gateway-wide reload).
pub(crate) fn operator_token(tenant: &str, subject: &str) -> String {
    let names = edrgate::config::ScopeNames::default();
    let mut spec = TokenSpec::dev(SECRET.as_bytes());
    spec.scopes.push(names.operator.clone());
    edrgate::auth::mint_with(&spec, tenant, subject, Duration::from_secs(600)).unwrap()
}
