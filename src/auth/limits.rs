//! The tenants' inbound limits (`tenants.<id>.limits`): requests per minute, checked on every
//! authenticated request, and actions in flight, checked on submission.

use std::collections::HashMap;
use std::future::Future;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use governor::clock::Clock as _;

use super::{Auth, Refusal};
use crate::config::TenantLimitsConfig;

/// `Retry-After` of a submission refused for the tenant's actions in flight: actions end on
/// their own, there is no instant to announce.
const IN_FLIGHT_RETRY_AFTER: Duration = Duration::from_secs(5);

impl Auth {
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

    /// `tenant`'s requests-per-minute limit, if it has one (OpenC2 `query features`
    /// answers it as `rate_limit`).
    pub fn requests_per_minute(&self, tenant: &str) -> Option<u32> {
        self.limiter(tenant).and_then(|l| l.config.requests_per_minute)
    }

    /// Counts one request of `tenant` against its requests-per-minute limit.
    pub fn check_rate(&self, tenant: &str) -> Result<(), Refusal> {
        let Some(limiter) = self.limiter(tenant) else { return Ok(()) };
        let Some(rate) = &limiter.rate else { return Ok(()) };
        rate.check().map_err(|not_until| {
            let wait = not_until.wait_time_from(rate.clock().now());
            Refusal::RateLimited {
                detail: format!(
                    "the tenant's request rate limit ({} per minute) is reached",
                    limiter.config.requests_per_minute.unwrap_or(0)
                ),
                retry_after: wait,
            }
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
    ) -> Result<Admission, Refusal>
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
            Refusal::Internal
        })?;
        if count >= u64::from(max) {
            return Err(Refusal::RateLimited {
                detail: format!("the tenant already has {count} actions in flight (limit {max})"),
                retry_after: IN_FLIGHT_RETRY_AFTER,
            });
        }
        Ok(Admission(Some(guard)))
    }
}

/// A place under the tenant's limit of actions in flight, held until the action is stored.
#[must_use = "the admission must be held until the submission is stored"]
pub struct Admission(Option<tokio::sync::OwnedMutexGuard<()>>);

impl std::fmt::Debug for Admission {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Admission").field(&self.0.is_some()).finish()
    }
}

pub(super) struct TenantLimiter {
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
