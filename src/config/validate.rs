//! The checks of a whole configuration that types cannot express (identifiers, ranges, names
//! that must refer to something), and the validators of single values that the modules using
//! them share (`auth` parses key algorithms and JWKS URLs with the same functions). No IO.

use std::collections::BTreeMap;

use jsonwebtoken::{Algorithm, AlgorithmFamily};

use super::{AuthConfig, BackendConfig, Config, FilesConfig, RoutingConfig, TenantConfig};

/// Largest accepted `auth.leeway_seconds`.
pub const MAX_LEEWAY_SECS: u64 = 300;

impl FilesConfig {
    /// Checks of `[files]`; `tenants` are the configured tenant ids.
    pub(super) fn validate(
        &self,
        tenants: &BTreeMap<String, TenantConfig>,
        errors: &mut Vec<String>,
    ) {
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
                && asymmetric_algorithm(alg).is_none()
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
            if let Err(problem) = check_jwks_url(&jwks.url) {
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
            ("operator", &s.operator),
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

/// Empty, or `/a/b`: segments of URL-safe characters, no trailing slash.
fn path_prefix_ok(prefix: &str) -> bool {
    prefix.is_empty()
        || (prefix.starts_with('/')
            && !prefix.ends_with('/')
            && prefix.len() <= 128
            && prefix.split('/').skip(1).all(|seg| {
                !seg.is_empty()
                    && seg != "."
                    && seg != ".."
                    && seg.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.~".contains(&b))
            }))
}

impl Config {
    /// Checks what types cannot: identifiers, lengths, ranges. No IO.
    pub fn validate(&self) -> Result<(), Vec<String>> {
        let mut errors = Vec::new();
        self.auth.validate(&mut errors);
        self.webhooks.validate(&self.tenants, &mut errors);
        let prefix = &self.server.path_prefix;
        if !path_prefix_ok(prefix) {
            errors.push(format!(
                "server.path_prefix: {prefix:?} must look like /edrgate or /a/b (no trailing slash)"
            ));
        }
        let cb = &self.server.carbonblack_prefix;
        // The door is nested under its prefix beside the API: the two must not overlap.
        let api_roots = [
            "/v1",
            "/healthz",
            "/readyz",
            "/openapi.json",
            "/openapi-3.0.json",
            "/swagger-2.0.json",
        ];
        let under = |path: &str, root: &str| {
            path == root || path.strip_prefix(root).is_some_and(|rest| rest.starts_with('/'))
        };
        let overlaps = !cb.is_empty()
            && if prefix.is_empty() {
                api_roots.iter().any(|root| under(cb, root) || under(root, cb))
            } else {
                under(cb, prefix) || under(prefix, cb)
            };
        if !path_prefix_ok(cb) || overlaps {
            errors.push(format!(
                "server.carbonblack_prefix: {cb:?} must look like /cb or /a/b (no trailing slash), \
                 outside the API's paths (server.path_prefix, /v1, /healthz, /readyz)"
            ));
        }
        if let Some(metrics) = self.server.metrics_listen
            && metrics.port() != 0
            && metrics.port() == self.server.listen.port()
            && (metrics.ip() == self.server.listen.ip()
                || metrics.ip().is_unspecified()
                || self.server.listen.ip().is_unspecified())
        {
            errors.push("server.metrics_listen: must not be the API's address".to_owned());
        }
        if self.server.shutdown_grace_seconds == 0 {
            errors.push("server.shutdown_grace_seconds: must be at least 1".to_owned());
        }
        for (i, proxy) in self.server.trusted_proxies.iter().enumerate() {
            if let Err(problem) = crate::net::Cidr::parse(proxy) {
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
            if let Err(problem) = check_postgres_url(url.expose_secret()) {
                errors.push(format!("store.url: {problem}"));
            }
        }
        if self.engine.action_retention_days == Some(0) {
            errors.push(
                "engine.action_retention_days: must be at least 1 (or unset to keep actions)"
                    .to_owned(),
            );
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
            if t.retention_days == Some(0) {
                errors.push(format!("tenants.{tenant}.retention_days: must be at least 1"));
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

/// Tenant ids and backend names: they appear in paths, metrics and logs.
pub fn is_identifier(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// The asymmetric algorithm named `name` (the names of RFC 7518), if it is one edrgate
/// accepts from a configured key.
pub fn asymmetric_algorithm(name: &str) -> Option<Algorithm> {
    let alg: Algorithm = name.parse().ok()?;
    (alg.family() != AlgorithmFamily::Hmac).then_some(alg)
}

/// `https://`, or `http://` to a loopback address (tests, a sidecar).
pub fn check_jwks_url(url: &str) -> Result<reqwest::Url, String> {
    let parsed = reqwest::Url::parse(url).map_err(|e| format!("not a URL ({e})"))?;
    let host = parsed.host_str().unwrap_or("");
    let loopback = host.eq_ignore_ascii_case("localhost")
        || host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback());
    match parsed.scheme() {
        "https" => Ok(parsed),
        "http" if loopback => Ok(parsed),
        _ => Err("must be https:// (http:// only to a loopback address)".to_owned()),
    }
}

/// A PostgreSQL URL (`store.url`) that sqlx can connect with.
pub fn check_postgres_url(url: &str) -> Result<(), String> {
    use std::str::FromStr as _;
    if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
        return Err("must start with postgres:// or postgresql://".to_owned());
    }
    // The error text may quote the URL, password included: report the kind only.
    sqlx::postgres::PgConnectOptions::from_str(url)
        .map(|_| ())
        .map_err(|_| "is not a valid PostgreSQL URL".into())
}
