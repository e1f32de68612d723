//! What `POST /v1/admin/reload` needs of the process: something that reloads the
//! configuration ([`Reload`]) and what a reload answers, whole (to an operator) or as one
//! tenant may see it (in that tenant's audit trail: [`tenant_view`]). `app` implements it with its
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

/// What of a reload's outcome `tenant`'s audit trail may carry (its admins read it, and
/// they need not be operators): its own backends' changes and problems, and only how many
/// problems there were elsewhere. Problems are `path: message` lines; a tenant's start with
/// `tenants.<tenant>.`, anything else (syntax errors, other sections) counts as elsewhere.
pub fn tenant_view(tenant: &str, result: &Result<ReloadReport, ReloadError>) -> serde_json::Value {
    let own_backend = |name: &&String| name.split_once('.').is_some_and(|(t, _)| t == tenant);
    let own_problem = format!("tenants.{tenant}.");
    match result {
        Ok(report) => serde_json::json!({
            "rebuilt": report.rebuilt.iter().filter(own_backend).collect::<Vec<_>>(),
            "removed": report.removed.iter().filter(own_backend).collect::<Vec<_>>(),
        }),
        Err(ReloadError::NoFile) => serde_json::Value::Null,
        Err(ReloadError::Invalid(problems)) => {
            let (own, other): (Vec<&String>, Vec<&String>) =
                problems.iter().partition(|p| p.starts_with(&own_problem));
            serde_json::json!({ "problems": own, "other_problems": other.len() })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tenant_sees_only_its_own_part_of_a_reload() {
        let report = ReloadReport {
            tenants: 2,
            backends: 3,
            rebuilt: vec!["acme.cb".into(), "globex.cb".into(), "acmes.x".into()],
            removed: vec!["globex.old".into()],
        };
        assert_eq!(
            tenant_view("acme", &Ok(report)),
            serde_json::json!({"rebuilt": ["acme.cb"], "removed": []})
        );
        let invalid = ReloadError::Invalid(vec![
            "tenants.acme.backends.cb.url: missing".into(),
            "tenants.globex.backends.cb.token: environment variable X is not set".into(),
            "edrgate.toml:3:4: invalid TOML: invalid string (key tenants.globex.x)".into(),
        ]);
        assert_eq!(
            tenant_view("acme", &Err(invalid)),
            serde_json::json!({
                "problems": ["tenants.acme.backends.cb.url: missing"], "other_problems": 2,
            })
        );
    }
}
