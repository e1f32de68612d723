//! What `POST /v1/admin/reload` needs of the process: something that reloads the
//! configuration ([`Reload`]) and what a reload answers. `app` implements it with its
//! `Reloader` and hands it over in [`super::ApiState`]: `app` depends on `api`, never the
//! other way.

use async_trait::async_trait;

/// Re-reads the configuration (SIGHUP, `POST /v1/admin/reload`).
#[async_trait]
pub trait Reload: Send + Sync {
    /// Reloads once; a refused reload changes nothing.
    async fn reload(&self) -> Result<ReloadReport, ReloadError>;
}

/// What a reload changed.
#[derive(Clone, Debug, serde::Serialize, utoipa::ToSchema)]
pub struct ReloadReport {
    pub tenants: usize,
    pub backends: usize,
    /// `tenant.backend` of the backends built anew (added or changed).
    pub rebuilt: Vec<String>,
    /// `tenant.backend` of the backends that are gone.
    pub removed: Vec<String>,
}

/// Why a reload was refused.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error("the configuration was not loaded from a file, so it cannot be reloaded")]
    NoFile,
    #[error("the new configuration is invalid: {}", .0.join("; "))]
    Invalid(Vec<String>),
}
