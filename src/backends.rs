//! The tenant → backend registry and the routing of targets to devices.
//!
//! Each configured backend's adapter is built by its kind's factory (`crate::registry`);
//! everything else sees `Arc<dyn Adapter>`.
//!
//! A [`Backends`] is immutable; a configuration reload builds a new one (reusing the adapters
//! whose settings did not change, so their sessions, tokens and budgets carry over) and the
//! engine swaps it in. Runs already being driven keep the adapter they started with.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use edrgate_adapter::{
    Adapter, AdapterError, Capabilities, CommandKind, Device, DeviceSupport, ErrorCode, Target,
};

use crate::config::{Config, RouteRule, RoutingConfig};

/// Every tenant's backends and routing, built from one configuration.
pub struct Backends {
    tenants: HashMap<String, Tenant>,
}

struct Tenant {
    adapters: BTreeMap<String, Built>,
    routing: Routing,
    /// Lower-case hostname → where it resolved. Advisory: a stale entry only sends a run to a
    /// device that then reports itself missing.
    resolved: Option<moka::future::Cache<String, (String, Device)>>,
    /// Lower-case hostnames no backend knew, so a typo in a fan-out does not ask every vendor
    /// again for each target.
    unknown: Option<moka::future::Cache<String, ()>>,
}

struct Built {
    adapter: Arc<dyn Adapter>,
    /// Digest of the backend's settings (secrets included, never kept in clear here): a
    /// reload keeps the adapter when it is unchanged.
    fingerprint: [u8; 32],
}

struct Routing {
    rules: Vec<Rule>,
    order: Vec<String>,
    default: Option<String>,
}

struct Rule {
    matcher: Matcher,
    backend: String,
}

enum Matcher {
    /// Case-insensitive glob: `*` any run of characters, `?` one, nothing else special.
    ///
    /// `wildmatch` rather than `globset` or `glob`: those are path globs (`[…]` classes,
    /// `{a,b}`, `\` escapes, separators), while a hostname rule (and a Windows file name in
    /// the Carbon Black simulator, the other user) means exactly `*` and `?`. It matches
    /// iteratively with one backtrack point, so a hostile pattern cannot make it exponential,
    /// and it has no dependencies.
    Hostname(wildmatch::WildMatch),
    Tag(String),
    Group(String),
}

impl Backends {
    /// Builds the adapters and routing of every tenant, reusing the adapters of `previous`
    /// whose settings are unchanged. Reports every backend that cannot be built.
    pub fn from_config(
        config: &mut Config,
        previous: Option<&Backends>,
    ) -> Result<Backends, Vec<String>> {
        let mut errors = Vec::new();
        let mut tenants = HashMap::new();
        let tenant_configs = std::mem::take(&mut config.tenants);
        for (tenant, tenant_config) in tenant_configs {
            let mut adapters = BTreeMap::new();
            for (name, backend) in tenant_config.backends {
                let fingerprint =
                    config.backend_fingerprints.get(&(tenant.clone(), name.clone())).copied();
                let reused = previous
                    .and_then(|p| p.tenants.get(&tenant))
                    .and_then(|t| t.adapters.get(&name))
                    .filter(|b| fingerprint.is_some_and(|f| f == b.fingerprint));
                if let Some(built) = reused {
                    adapters.insert(
                        name,
                        Built {
                            adapter: Arc::clone(&built.adapter),
                            fingerprint: built.fingerprint,
                        },
                    );
                    continue;
                }
                match backend.build(&name) {
                    Ok(adapter) => {
                        adapters.insert(
                            name,
                            Built { adapter, fingerprint: fingerprint.unwrap_or_default() },
                        );
                    }
                    Err(e) => {
                        errors.push(format!("tenants.{tenant}.backends.{name}: {}", e.info.message))
                    }
                }
            }
            tenants.insert(tenant, Tenant::new(adapters, &tenant_config.routing));
        }
        if errors.is_empty() { Ok(Backends { tenants }) } else { Err(errors) }
    }

    /// Backends from ready-made adapters (tests), every hostname asked of every backend.
    pub fn new(tenants: HashMap<String, BTreeMap<String, Arc<dyn Adapter>>>) -> Backends {
        let tenants = tenants
            .into_iter()
            .map(|(tenant, adapters)| {
                let adapters = adapters
                    .into_iter()
                    .map(|(name, adapter)| (name, Built { adapter, fingerprint: [0; 32] }))
                    .collect();
                (tenant, Tenant::new(adapters, &RoutingConfig::default()))
            })
            .collect();
        Backends { tenants }
    }

    pub fn tenant_exists(&self, tenant: &str) -> bool {
        self.tenants.contains_key(tenant)
    }

    pub fn adapter(&self, tenant: &str, backend: &str) -> Option<&Arc<dyn Adapter>> {
        Some(&self.tenants.get(tenant)?.adapters.get(backend)?.adapter)
    }

    /// The tenant's backends, in name order.
    pub fn of_tenant(&self, tenant: &str) -> impl Iterator<Item = (&String, &Arc<dyn Adapter>)> {
        self.tenants
            .get(tenant)
            .into_iter()
            .flat_map(|t| t.adapters.iter().map(|(n, b)| (n, &b.adapter)))
    }

    /// Every (tenant, backend name, adapter), for `check-config --connect`.
    pub fn all(&self) -> impl Iterator<Item = (&String, &String, &Arc<dyn Adapter>)> {
        self.tenants
            .iter()
            .flat_map(|(t, tenant)| tenant.adapters.iter().map(move |(n, b)| (t, n, &b.adapter)))
    }

    pub fn tenant_count(&self) -> usize {
        self.tenants.len()
    }

    /// `tenant.backend` of the backends built anew since `old`, and of those gone.
    pub fn changes_since(&self, old: &Backends) -> (Vec<String>, Vec<String>) {
        let mut rebuilt: Vec<String> = self
            .all()
            .filter(|(t, n, a)| old.adapter(t, n).is_none_or(|o| !Arc::ptr_eq(o, a)))
            .map(|(t, n, _)| format!("{t}.{n}"))
            .collect();
        let mut removed: Vec<String> = old
            .all()
            .filter(|(t, n, _)| self.adapter(t, n).is_none())
            .map(|(t, n, _)| format!("{t}.{n}"))
            .collect();
        rebuilt.sort();
        removed.sort();
        (rebuilt, removed)
    }

    pub fn capabilities(&self, tenant: &str) -> Vec<Capabilities> {
        self.of_tenant(tenant).map(|(_, a)| a.capabilities().clone()).collect()
    }

    /// Resolves a target to (backend, device id, the device record when known). A hostname
    /// comes with its record; a device id is looked up with [`Adapter::device`] (`None` when
    /// the adapter has no such lookup).
    /// A target given by device id is looked up ([`Adapter::device`]) only when one of
    /// `commands` may be refused on some device of its backend.
    pub async fn resolve(
        &self,
        tenant: &str,
        target: &Target,
        commands: &[CommandKind],
    ) -> Result<(String, String, Option<Device>), AdapterError> {
        match target {
            Target::Device { backend, device_id } => {
                let Some(adapter) = self.adapter(tenant, backend) else {
                    return Err(AdapterError::new(
                        ErrorCode::InvalidRequest,
                        format!("unknown backend {backend:?}"),
                    ));
                };
                let device = if commands.iter().any(|k| adapter.varies_by_device(*k)) {
                    adapter.device(device_id).await?
                } else {
                    None
                };
                Ok((backend.clone(), device_id.clone(), device))
            }
            Target::Hostname { hostname } => {
                let Some(t) = self.tenants.get(tenant) else {
                    return Err(not_found(hostname));
                };
                let (backend, device) = t.resolve_hostname(hostname).await?;
                Ok((backend, device.device_id.clone(), Some(device)))
            }
        }
    }

    /// Devices the tenant's backends know, optionally filtered by hostname, each with what it
    /// can run ([`Adapter::device_support`]).
    pub async fn devices(
        &self,
        tenant: &str,
        hostname: Option<&str>,
    ) -> Result<Vec<(Device, DeviceSupport)>, AdapterError> {
        let mut all = Vec::new();
        for (_, adapter) in self.of_tenant(tenant) {
            for device in adapter.find_devices(hostname).await? {
                let support = adapter.device_support(&device);
                all.push((device, support));
            }
        }
        Ok(all)
    }
}

impl Tenant {
    fn new(adapters: BTreeMap<String, Built>, config: &RoutingConfig) -> Tenant {
        fn cache<V: Clone + Send + Sync + 'static>(
            ttl: u64,
        ) -> Option<moka::future::Cache<String, V>> {
            (ttl > 0).then(|| {
                moka::future::Cache::builder()
                    .max_capacity(100_000)
                    .time_to_live(Duration::from_secs(ttl))
                    .build()
            })
        }
        Tenant {
            adapters,
            routing: Routing::new(config),
            resolved: cache(config.cache_ttl_seconds),
            unknown: cache(config.negative_cache_ttl_seconds),
        }
    }

    async fn resolve_hostname(&self, hostname: &str) -> Result<(String, Device), AdapterError> {
        let key = hostname.to_ascii_lowercase();
        if let Some(cache) = &self.resolved
            && let Some(hit) = cache.get(&key).await
        {
            return Ok(hit);
        }
        if let Some(cache) = &self.unknown
            && cache.contains_key(&key)
        {
            return Err(not_found(hostname));
        }
        let result = self.route(hostname).await;
        match &result {
            Ok(hit) => {
                if let Some(cache) = &self.resolved {
                    cache.insert(key, hit.clone()).await;
                }
            }
            Err(e) if e.code() == ErrorCode::DeviceNotFound => {
                if let Some(cache) = &self.unknown {
                    cache.insert(key, ()).await;
                }
            }
            Err(_) => {}
        }
        result
    }

    /// The routing procedure documented on [`RoutingConfig`].
    async fn route(&self, hostname: &str) -> Result<(String, Device), AdapterError> {
        if let Some(rule) = self.routing.rules.iter().find(|r| match &r.matcher {
            Matcher::Hostname(pattern) => pattern.matches(hostname),
            _ => false,
        }) {
            let device = self.ask(&rule.backend, hostname).await?;
            return Ok((rule.backend.clone(), device));
        }
        let mut found = Vec::new();
        if !self.routing.order.is_empty() {
            // Precedence is configured: the first backend that knows the hostname wins. A
            // failing backend stops the walk: a later one winning would be a guess.
            for name in &self.routing.order {
                match self.ask(name, hostname).await {
                    Ok(device) => return Ok((name.clone(), device)),
                    Err(e) if e.code() == ErrorCode::DeviceNotFound => {}
                    Err(e) => return Err(e),
                }
            }
        } else {
            let names: Vec<&String> = match &self.routing.default {
                Some(name) => vec![name],
                None => self.adapters.keys().collect(),
            };
            let answers =
                futures::future::join_all(names.iter().map(|name| self.ask(name, hostname))).await;
            for (name, answer) in names.into_iter().zip(answers) {
                match answer {
                    Ok(device) => found.push((name.clone(), device)),
                    Err(e) if e.code() == ErrorCode::DeviceNotFound => {}
                    // A backend that cannot answer might know the hostname too: deciding
                    // without it could route to the wrong device. The engine retries.
                    Err(e) => return Err(e),
                }
            }
        }
        if found.len() > 1 {
            let settled: Vec<&(String, Device)> = found
                .iter()
                .filter(|(backend, device)| self.routing.claims(backend, device))
                .collect();
            if let [one] = settled.as_slice() {
                return Ok((*one).clone());
            }
            let names: Vec<String> =
                found.iter().map(|(b, d)| format!("{b} (device {})", d.device_id)).collect();
            return Err(AdapterError::new(
                ErrorCode::DeviceAmbiguous,
                format!(
                    "{hostname:?} is known to several backends: {}; target one by backend and device_id, or add a routing rule",
                    names.join(", ")
                ),
            ));
        }
        found.pop().ok_or_else(|| not_found(hostname))
    }

    async fn ask(&self, backend: &str, hostname: &str) -> Result<Device, AdapterError> {
        let Some(built) = self.adapters.get(backend) else {
            // Validation makes every rule name a backend of the tenant.
            return Err(AdapterError::new(
                ErrorCode::Internal,
                format!("routing names backend {backend:?}, which is not configured"),
            ));
        };
        built.adapter.resolve_hostname(hostname).await
    }
}

impl Routing {
    fn new(config: &RoutingConfig) -> Routing {
        let rules = config.rules.iter().filter_map(Rule::new).collect();
        Routing { rules, order: config.order.clone(), default: config.default.clone() }
    }

    /// Whether a `tag` or `group` rule routes this device of `backend` to `backend`.
    fn claims(&self, backend: &str, device: &Device) -> bool {
        self.rules.iter().any(|rule| {
            rule.backend == backend
                && match &rule.matcher {
                    Matcher::Hostname(_) => false,
                    Matcher::Tag(tag) => device.tags.iter().any(|t| t.eq_ignore_ascii_case(tag)),
                    Matcher::Group(group) => {
                        device.group.as_deref().is_some_and(|g| g.eq_ignore_ascii_case(group))
                    }
                }
        })
    }
}

impl Rule {
    fn new(rule: &RouteRule) -> Option<Rule> {
        let matcher = match (&rule.hostname, &rule.tag, &rule.group) {
            (Some(h), None, None) => {
                Matcher::Hostname(wildmatch::WildMatch::new_case_insensitive(h))
            }
            (None, Some(t), None) => Matcher::Tag(t.clone()),
            (None, None, Some(g)) => Matcher::Group(g.clone()),
            // Refused by validation.
            _ => return None,
        };
        Some(Rule { matcher, backend: rule.backend.clone() })
    }
}

fn not_found(hostname: &str) -> AdapterError {
    AdapterError::new(
        ErrorCode::DeviceNotFound,
        format!("no backend of the tenant knows a device named {hostname:?}"),
    )
}

#[cfg(test)]
mod tests {
    use super::{Matcher, Rule};
    use crate::config::RouteRule;

    #[test]
    fn hostname_rules_match_like_a_shell_ignoring_case() {
        for (pattern, name, expected) in [
            ("win-*", "win-0001", true),
            ("WIN-*", "win-0001", true),
            ("win-*", "WIN-0001", true),
            ("win-*", "srv-0001", false),
            ("*.corp.example", "db1.corp.example", true),
            ("*.corp.example", "db1.corp.example.evil", false),
            ("db?", "db1", true),
            ("db?", "db12", false),
            ("*", "", true),
            ("a*b*c", "axxbyyc", true),
            ("a*b*c", "axxbyy", false),
            ("exact", "exact", true),
            ("[ab]", "a", false),
            ("[ab]", "[AB]", true),
        ] {
            let rule = RouteRule {
                hostname: Some(pattern.into()),
                tag: None,
                group: None,
                backend: "b".into(),
            };
            let Some(Rule { matcher: Matcher::Hostname(glob), .. }) = Rule::new(&rule) else {
                panic!("not a hostname rule");
            };
            assert_eq!(glob.matches(name), expected, "{pattern} {name}");
        }
    }
}
