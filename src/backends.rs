//! The tenant → backend registry and the routing of targets to devices.
//!
//! This is the only module of the gateway that names vendor crates: it builds each configured
//! backend's adapter, then everything else sees `Arc<dyn Adapter>`.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use edrgate_adapter::{Adapter, AdapterError, Capabilities, Device, ErrorCode, Target};

use crate::config::{BackendConfig, TenantConfig};

/// Every tenant's backends, built once from the configuration.
pub struct Backends {
    tenants: HashMap<String, BTreeMap<String, Arc<dyn Adapter>>>,
    /// (tenant, lower-case hostname) → where it resolved. Advisory: a stale entry only sends a
    /// run to a device that then reports itself missing.
    resolutions: moka::future::Cache<(String, String), (String, Device)>,
}

impl Backends {
    /// Builds the adapters of every tenant. Reports every backend that cannot be built.
    pub fn from_config(tenants: BTreeMap<String, TenantConfig>) -> Result<Backends, Vec<String>> {
        let mut errors = Vec::new();
        let mut built = HashMap::new();
        for (tenant, config) in tenants {
            let mut adapters: BTreeMap<String, Arc<dyn Adapter>> = BTreeMap::new();
            for (name, backend) in config.backends {
                let adapter: Result<Arc<dyn Adapter>, AdapterError> = match backend {
                    BackendConfig::Carbonblack(cb) => {
                        edrgate_carbonblack::CarbonBlackAdapter::new(&name, cb)
                            .map(|a| Arc::new(a) as Arc<dyn Adapter>)
                    }
                };
                match adapter {
                    Ok(a) => {
                        adapters.insert(name, a);
                    }
                    Err(e) => {
                        errors.push(format!("tenants.{tenant}.backends.{name}: {}", e.info.message))
                    }
                }
            }
            built.insert(tenant, adapters);
        }
        if errors.is_empty() { Ok(Self::new(built)) } else { Err(errors) }
    }

    pub fn new(tenants: HashMap<String, BTreeMap<String, Arc<dyn Adapter>>>) -> Backends {
        Backends {
            tenants,
            resolutions: moka::future::Cache::builder()
                .max_capacity(100_000)
                .time_to_live(Duration::from_secs(60))
                .build(),
        }
    }

    pub fn tenant_exists(&self, tenant: &str) -> bool {
        self.tenants.contains_key(tenant)
    }

    pub fn adapter(&self, tenant: &str, backend: &str) -> Option<&Arc<dyn Adapter>> {
        self.tenants.get(tenant)?.get(backend)
    }

    /// The tenant's backends, in name order.
    pub fn of_tenant(&self, tenant: &str) -> impl Iterator<Item = (&String, &Arc<dyn Adapter>)> {
        self.tenants.get(tenant).into_iter().flat_map(|m| m.iter())
    }

    pub fn capabilities(&self, tenant: &str) -> Vec<Capabilities> {
        self.of_tenant(tenant).map(|(_, a)| a.capabilities().clone()).collect()
    }

    /// Resolves a target to (backend, device id, hostname if known).
    pub async fn resolve(
        &self,
        tenant: &str,
        target: &Target,
    ) -> Result<(String, String, Option<String>), AdapterError> {
        match target {
            Target::Device { backend, device_id } => {
                if self.adapter(tenant, backend).is_none() {
                    return Err(AdapterError::new(
                        ErrorCode::InvalidRequest,
                        format!("unknown backend {backend:?}"),
                    ));
                }
                Ok((backend.clone(), device_id.clone(), None))
            }
            Target::Hostname { hostname } => {
                let (backend, device) = self.resolve_hostname(tenant, hostname).await?;
                Ok((backend, device.device_id, Some(device.hostname)))
            }
        }
    }

    /// Asks every backend of the tenant; exactly one must know the hostname.
    async fn resolve_hostname(
        &self,
        tenant: &str,
        hostname: &str,
    ) -> Result<(String, Device), AdapterError> {
        let key = (tenant.to_owned(), hostname.to_ascii_lowercase());
        if let Some(hit) = self.resolutions.get(&key).await {
            return Ok(hit);
        }
        let mut found = Vec::new();
        let mut failure = None;
        for (name, adapter) in self.of_tenant(tenant) {
            match adapter.resolve_hostname(hostname).await {
                Ok(device) => found.push((name.clone(), device)),
                Err(e) if e.code() == ErrorCode::DeviceNotFound => {}
                Err(e) => failure = Some(e),
            }
        }
        match found.len() {
            1 => {
                let hit = found.remove(0);
                self.resolutions.insert(key, hit.clone()).await;
                Ok(hit)
            }
            0 => Err(failure.unwrap_or_else(|| {
                AdapterError::new(
                    ErrorCode::DeviceNotFound,
                    format!("no backend knows a device named {hostname:?}"),
                )
            })),
            _ => {
                let names: Vec<String> =
                    found.iter().map(|(b, d)| format!("{b} (device {})", d.device_id)).collect();
                Err(AdapterError::new(
                    ErrorCode::DeviceAmbiguous,
                    format!(
                        "{hostname:?} is known to several backends: {}; target one by backend and device_id",
                        names.join(", ")
                    ),
                ))
            }
        }
    }

    /// Devices the tenant's backends know, optionally filtered by hostname.
    pub async fn devices(
        &self,
        tenant: &str,
        hostname: Option<&str>,
    ) -> Result<Vec<Device>, AdapterError> {
        let mut all = Vec::new();
        for (_, adapter) in self.of_tenant(tenant) {
            all.extend(adapter.find_devices(hostname).await?);
        }
        Ok(all)
    }
}
