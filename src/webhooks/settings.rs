//! The webhook settings as the senders use them, built from `[webhooks]` and each tenant's
//! `[tenants.<id>.webhooks]` at start and at every reload: destinations checked against the
//! policy, secrets parsed, event names known. A problem is reported with its path, like every
//! other configuration problem.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use reqwest::header::{HeaderName, HeaderValue};
use secrecy::ExposeSecret as _;

use super::destination::{self, Policy};
use super::sign::Secret;
use crate::config::{Config, StaticHeader};
use crate::store::events::EventType;

/// Where and how one subscription's events go.
#[derive(Clone, Debug)]
pub struct Destination {
    pub url: String,
    /// Empty: every type.
    pub events: Vec<EventType>,
    /// Current first; two while rotating.
    pub secrets: Vec<Secret>,
    pub header: Option<Header>,
    pub description: Option<String>,
}

impl Destination {
    pub fn takes(&self, kind: EventType) -> bool {
        self.events.is_empty() || self.events.contains(&kind)
    }
}

/// A static header; `Debug` does not show its value.
#[derive(Clone)]
pub struct Header {
    pub name: HeaderName,
    pub value: HeaderValue,
}

impl std::fmt::Debug for Header {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Header({}: ***)", self.name)
    }
}

/// How a tenant's per-action callbacks are signed.
#[derive(Clone, Debug)]
pub struct Callback {
    pub secrets: Vec<Secret>,
    pub header: Option<Header>,
}

#[derive(Clone, Debug, Default)]
pub struct TenantHooks {
    /// The configuration's subscriptions, by name.
    pub subscriptions: BTreeMap<String, Destination>,
    pub callback: Option<Callback>,
}

/// Everything the senders need; swapped whole by a reload.
#[derive(Clone, Debug)]
pub struct Settings {
    pub policy: Policy,
    pub client: reqwest::Client,
    pub timeout: Duration,
    pub retry_delays: Vec<Duration>,
    pub max_in_flight: u32,
    pub max_in_flight_per_destination: u32,
    pub retention: Duration,
    pub rotation_overlap: Duration,
    pub tenants: HashMap<String, TenantHooks>,
}

impl Settings {
    pub fn from_config(config: &Config) -> Result<Settings, Vec<String>> {
        let w = &config.webhooks;
        let mut errors = Vec::new();
        let policy = Policy {
            allow_http: w.allow_http,
            allowed_networks: w
                .allowed_networks
                .iter()
                .filter_map(|n| crate::net::Cidr::parse(n).ok())
                .collect(),
        };
        let mut tenants = HashMap::new();
        for (tenant, t) in &config.tenants {
            let at = format!("tenants.{tenant}.webhooks");
            let mut hooks = TenantHooks::default();
            for (name, s) in &t.webhooks.subscriptions {
                let at = format!("{at}.subscriptions.{name}");
                if let Err(refused) = policy.check_url(&s.url) {
                    errors.push(format!("{at}.url: {refused}"));
                }
                let mut events = Vec::new();
                for (i, e) in s.events.iter().enumerate() {
                    match EventType::parse(e) {
                        Some(e) => events.push(e),
                        None => errors.push(format!(
                            "{at}.events[{i}]: {e:?} is not one of {}",
                            EventType::ALL.map(EventType::as_str).join(", ")
                        )),
                    }
                }
                let secrets = secrets(&s.secrets, &format!("{at}.secrets"), &mut errors);
                let header = s.header.as_ref().and_then(|h| header(h, &at, &mut errors));
                hooks.subscriptions.insert(
                    name.clone(),
                    Destination {
                        url: s.url.clone(),
                        events,
                        secrets,
                        header,
                        description: s.description.clone(),
                    },
                );
            }
            if let Some(c) = &t.webhooks.callback {
                let secrets = secrets(&c.secrets, &format!("{at}.callback.secrets"), &mut errors);
                let header = c.header.as_ref().and_then(|h| header(h, &at, &mut errors));
                hooks.callback = Some(Callback { secrets, header });
            }
            tenants.insert(tenant.clone(), hooks);
        }
        let timeout = Duration::from_secs(w.timeout_seconds.max(1));
        let client = destination::client(policy.clone(), timeout)
            .map_err(|e| vec![format!("webhooks: cannot build the HTTP client: {e}")]);
        let client = match client {
            Ok(c) => c,
            Err(mut e) => {
                errors.append(&mut e);
                return Err(errors);
            }
        };
        if !errors.is_empty() {
            return Err(errors);
        }
        Ok(Settings {
            policy,
            client,
            timeout,
            retry_delays: w.retry_delays_seconds.iter().map(|s| Duration::from_secs(*s)).collect(),
            max_in_flight: w.max_in_flight.max(1),
            max_in_flight_per_destination: w.max_in_flight_per_destination.max(1),
            retention: Duration::from_secs(u64::from(w.retention_hours.max(1)) * 3600),
            rotation_overlap: Duration::from_secs(w.rotation_overlap_seconds),
            tenants,
        })
    }

    /// The configuration's subscriptions of `tenant` that take `kind`.
    pub fn configured(&self, tenant: &str, kind: EventType) -> Vec<String> {
        self.tenants.get(tenant).map_or_else(Vec::new, |t| {
            t.subscriptions.iter().filter(|(_, d)| d.takes(kind)).map(|(n, _)| n.clone()).collect()
        })
    }
}

fn secrets(
    configured: &[secrecy::SecretString],
    at: &str,
    errors: &mut Vec<String>,
) -> Vec<Secret> {
    configured
        .iter()
        .enumerate()
        .filter_map(|(i, s)| match Secret::parse(s.expose_secret()) {
            Ok(secret) => Some(secret),
            Err(problem) => {
                errors.push(format!("{at}[{i}]: {problem}"));
                None
            }
        })
        .collect()
}

/// A static header, checked: a valid name that is not one the signature or the transport
/// owns, and a valid value.
pub fn header(h: &StaticHeader, at: &str, errors: &mut Vec<String>) -> Option<Header> {
    match check_header(&h.name, h.value.expose_secret()) {
        Ok(header) => Some(header),
        Err(problem) => {
            errors.push(format!("{at}.header: {problem}"));
            None
        }
    }
}

/// Headers a static header may not replace: the signature's and the transport's.
const OWNED_HEADERS: [&str; 7] = [
    "webhook-id",
    "webhook-timestamp",
    "webhook-signature",
    "content-type",
    "content-length",
    "host",
    "transfer-encoding",
];

pub fn check_header(name: &str, value: &str) -> Result<Header, String> {
    let name = HeaderName::from_bytes(name.as_bytes())
        .map_err(|_| format!("{name:?} is not a header name"))?;
    if OWNED_HEADERS.contains(&name.as_str()) {
        return Err(format!("{name} is set by the delivery itself"));
    }
    if value.len() > 4096 {
        return Err("the value is longer than 4096 bytes".to_owned());
    }
    let mut value =
        HeaderValue::from_str(value).map_err(|_| "the value is not a valid header value")?;
    value.set_sensitive(true);
    Ok(Header { name, value })
}
