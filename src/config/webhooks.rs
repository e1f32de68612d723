//! `[webhooks]` (how deliveries are made, for every tenant) and `[tenants.<id>.webhooks]` (a
//! tenant's subscriptions and its per-action callback signing). The checks that need the
//! webhook code (destinations, secrets, event names) are made where the settings are built
//! (`webhooks::Settings::from_config`), at start and at every reload.

use std::collections::BTreeMap;

use secrecy::SecretString;
use serde::Deserialize;

/// How webhooks are delivered.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WebhooksConfig {
    /// Allow `http://` destinations (default: https only, since deliveries carry results).
    #[serde(default)]
    pub allow_http: bool,
    /// Address blocks a destination may resolve to although they are refused by default
    /// (loopback, link-local and cloud metadata addresses, multicast): e.g. `127.0.0.0/8` for
    /// a receiver on the same host. Private networks are allowed without it.
    #[serde(default)]
    pub allowed_networks: Vec<String>,
    /// Seconds one delivery attempt may take (connect, send, answer).
    #[serde(default = "default_timeout")]
    pub timeout_seconds: u64,
    /// Seconds to wait before each retry of a failed attempt; after the last one the delivery
    /// is `failed` (kept, listed and retryable). The default follows Standard Webhooks'
    /// recommendation: 5 s, 5 min, 30 min, 2 h, 5 h, 10 h, 10 h (about 28 h in all).
    #[serde(default = "default_retry_delays")]
    pub retry_delays_seconds: Vec<u64>,
    /// Deliveries this replica sends at once.
    #[serde(default = "default_in_flight")]
    pub max_in_flight: u32,
    /// Deliveries to one destination this replica sends at once: a slow receiver holds this
    /// many senders, not all of them.
    #[serde(default = "default_per_destination")]
    pub max_in_flight_per_destination: u32,
    /// Hours events and finished deliveries are kept (for `GET /v1/events` resumption and
    /// `GET /v1/webhooks/{id}/deliveries`).
    #[serde(default = "default_retention")]
    pub retention_hours: u32,
    /// Seconds a rotated-out secret still signs (a second signature), so receivers can switch.
    #[serde(default = "default_overlap")]
    pub rotation_overlap_seconds: u64,
}

impl Default for WebhooksConfig {
    fn default() -> Self {
        WebhooksConfig {
            allow_http: false,
            allowed_networks: Vec::new(),
            timeout_seconds: default_timeout(),
            retry_delays_seconds: default_retry_delays(),
            max_in_flight: default_in_flight(),
            max_in_flight_per_destination: default_per_destination(),
            retention_hours: default_retention(),
            rotation_overlap_seconds: default_overlap(),
        }
    }
}

fn default_timeout() -> u64 {
    10
}
fn default_retry_delays() -> Vec<u64> {
    vec![5, 300, 1800, 7200, 18000, 36000, 36000]
}
fn default_in_flight() -> u32 {
    32
}
fn default_per_destination() -> u32 {
    4
}
fn default_retention() -> u32 {
    72
}
fn default_overlap() -> u64 {
    86_400
}

/// A tenant's webhooks. Subscriptions may also be made through the API
/// (`POST /v1/webhooks`); these are the ones the configuration manages.
#[derive(Debug, Default, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TenantWebhooksConfig {
    /// Name (its id in the API) → subscription.
    #[serde(default)]
    pub subscriptions: BTreeMap<String, SubscriptionConfig>,
    /// How callbacks to a submission's `callback_url` are signed; without it, submissions
    /// with a `callback_url` are refused.
    #[serde(default)]
    pub callback: Option<CallbackConfig>,
}

/// A subscription: events POSTed to `url`, signed (Standard Webhooks).
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SubscriptionConfig {
    pub url: String,
    /// Event types delivered (`action.created`, `run.finished`, `action.finished`); empty:
    /// all.
    #[serde(default)]
    pub events: Vec<String>,
    /// One signing secret (`whsec_…`), or two while rotating: each signs, receivers accept
    /// either. Give them as `${ENV}`.
    #[schemars(with = "Vec<String>")]
    pub secrets: Vec<SecretString>,
    /// A static header sent with every delivery, for receivers that can only check one.
    #[serde(default)]
    pub header: Option<StaticHeader>,
    #[serde(default)]
    pub description: Option<String>,
}

/// How per-action callbacks are signed.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CallbackConfig {
    /// One secret (`whsec_…`), or two while rotating. Give them as `${ENV}`.
    #[schemars(with = "Vec<String>")]
    pub secrets: Vec<SecretString>,
    #[serde(default)]
    pub header: Option<StaticHeader>,
}

/// A header added to deliveries; its value is a secret (never shown).
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct StaticHeader {
    pub name: String,
    #[schemars(with = "String")]
    pub value: SecretString,
}

impl WebhooksConfig {
    pub(super) fn validate(
        &self,
        tenants: &BTreeMap<String, super::TenantConfig>,
        errors: &mut Vec<String>,
    ) {
        for (i, net) in self.allowed_networks.iter().enumerate() {
            if let Err(problem) = crate::net::Cidr::parse(net) {
                errors.push(format!("webhooks.allowed_networks[{i}]: {problem}"));
            }
        }
        if !(1..=300).contains(&self.timeout_seconds) {
            errors.push("webhooks.timeout_seconds: between 1 and 300".to_owned());
        }
        if self.retry_delays_seconds.len() > 20 {
            errors.push("webhooks.retry_delays_seconds: at most 20 retries".to_owned());
        }
        if self.retry_delays_seconds.iter().any(|d| *d > 7 * 86_400) {
            errors.push("webhooks.retry_delays_seconds: each at most 7 days".to_owned());
        }
        if self.max_in_flight == 0 || self.max_in_flight_per_destination == 0 {
            errors.push("webhooks.max_in_flight(_per_destination): at least 1".to_owned());
        }
        if self.retention_hours == 0 {
            errors.push("webhooks.retention_hours: at least 1".to_owned());
        }
        for (tenant, t) in tenants {
            let at = format!("tenants.{tenant}.webhooks");
            for (name, s) in &t.webhooks.subscriptions {
                if !super::is_identifier(name) || name == crate::config::RESERVED_WEBHOOK_ID {
                    errors.push(format!(
                        "{at}.subscriptions.{name}: a name is 1-64 of A-Z a-z 0-9 - _ (and not \"{}\")",
                        crate::config::RESERVED_WEBHOOK_ID
                    ));
                }
                if !(1..=2).contains(&s.secrets.len()) {
                    errors.push(format!(
                        "{at}.subscriptions.{name}.secrets: one, or two while rotating"
                    ));
                }
            }
            if let Some(c) = &t.webhooks.callback
                && !(1..=2).contains(&c.secrets.len())
            {
                errors.push(format!("{at}.callback.secrets: one, or two while rotating"));
            }
        }
    }
}
