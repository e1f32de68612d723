//! JWKS endpoints: each key set cached for `cache_seconds`, fetched single-flight, fetched
//! again for an unknown `kid` at most once per `min_refresh_seconds`, and kept in service
//! while the endpoint fails.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use jsonwebtoken::Validation;
use serde_json::Value;

use super::AuthError;
use super::keys::{VerifyKey, jwk_key};
use crate::config::{JwksConfig, check_jwks_url};

/// A JWKS document larger than this is refused (real ones are a few kilobytes).
const MAX_JWKS_BYTES: usize = 256 * 1024;
/// Whole-request bound of a JWKS fetch.
const JWKS_TIMEOUT: Duration = Duration::from_secs(10);

/// One JWKS endpoint: its key set, cached, fetched single-flight.
pub(super) struct JwksSource {
    pub(super) path: String,
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
pub(super) struct KeySet {
    pub(super) keys: Vec<Arc<VerifyKey>>,
    ttl: Duration,
    /// Why the last fetch failed (the keys are then the last good ones, or none).
    pub(super) error: Option<String>,
}

impl KeySet {
    pub(super) fn has_kid(&self, kid: &str) -> bool {
        self.keys.iter().any(|k| k.has_kid(kid))
    }

    pub(super) fn with_kid<'a>(
        &'a self,
        kid: &'a str,
    ) -> impl Iterator<Item = Arc<VerifyKey>> + 'a {
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
    pub(super) fn new(
        config: &JwksConfig,
        base: &Validation,
        path: &str,
    ) -> Result<JwksSource, AuthError> {
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
    pub(super) async fn keys(&self) -> Arc<KeySet> {
        self.cache.get_with((), self.fetch()).await
    }

    /// The set again for a token whose `kid` it lacks: fetched anew unless the last fetch is
    /// more recent than `min_refresh_seconds` (then the current set, or the fetch under way).
    pub(super) async fn refresh_for_unknown_kid(&self) -> Arc<KeySet> {
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

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}
