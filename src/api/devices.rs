//! `/v1/devices` and `/v1/capabilities`: what the tenant's backends know and can do; plus the
//! unauthenticated health endpoints.

use axum::extract::State;
use axum::http::StatusCode;
use edrgate_adapter::{Capabilities, Device, DeviceSupport, ErrorCode};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::ApiState;
use super::problem::{ApiError, Json, Problem, Query};
use crate::auth::{Caller, Permission};

/// Devices known to the tenant's backends.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct DeviceList {
    pub items: Vec<DeviceEntry>,
}

/// A device, with what it can run: `commands` (each with `via`: `native`, `script` or
/// `configured`) and `unsupported` (each with its `reason`) cover every command kind.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct DeviceEntry {
    #[serde(flatten)]
    pub device: Device,
    #[serde(flatten)]
    pub support: DeviceSupport,
}

/// What each of the tenant's backends supports; per device, see `GET /v1/devices`.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct CapabilityList {
    pub items: Vec<Capabilities>,
}

/// Liveness and readiness answers.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Health {
    /// `ok` (live) or `ready`.
    pub status: String,
}

/// Query of `GET /v1/devices`.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct DeviceParams {
    /// Only devices matching this hostname, as each backend's own device search matches it.
    pub hostname: Option<String>,
}

/// List devices
///
/// The devices the tenant's backends know, with what each can run. Asks every backend of the tenant; each device carries its backend and device id, which can
/// be used as an explicit target, and its per-device capabilities: the commands it runs and
/// how (`via`), and those it cannot run with the reason (its OS, agent version or the
/// backend's settings). An action's command the resolved device cannot run ends
/// `unsupported_command` with that reason before anything is sent to the vendor.
#[utoipa::path(
    get,
    path = "/v1/devices",
    tag = "devices",
    operation_id = "ListDevices",
    params(DeviceParams),
    responses(
        (status = 200, description = "Matching devices", body = DeviceList),
        (status = 401, description = "Missing or invalid bearer token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "The `read` permission is missing", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "The tenant's request rate limit is reached (see `Retry-After`)", body = Problem, content_type = "application/problem+json"),
        (status = 502, description = "A backend refused the lookup", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "A backend is unavailable or rate-limiting", body = Problem, content_type = "application/problem+json"),
    ),
    security(("BearerAuth" = []))
)]
pub(crate) async fn list_devices(
    State(state): State<ApiState>,
    caller: Caller,
    Query(params): Query<DeviceParams>,
) -> Result<Json<DeviceList>, ApiError> {
    caller.require(Permission::Read)?;
    let hostname = params.hostname.as_deref().map(str::trim).filter(|h| !h.is_empty());
    let items = state.engine.backends().devices(&caller.tenant, hostname).await.map_err(|e| {
        tracing::warn!(tenant = %caller.tenant, error = %e, "device lookup failed");
        ApiError::from(e.info)
    })?;
    let items = items.into_iter().map(|(device, support)| DeviceEntry { device, support });
    Ok(Json(DeviceList { items: items.collect() }))
}

/// List capabilities
///
/// What each of the tenant's backends supports (commands, how, limits). Per backend: a command listed here is accepted at submission. Whether one device of the
/// backend can run it (its OS, agent version) is on `GET /v1/devices`; a run refuses a
/// command its resolved device cannot run, with the reason.
#[utoipa::path(
    get,
    path = "/v1/capabilities",
    tag = "devices",
    operation_id = "ListCapabilities",
    responses(
        (status = 200, description = "One entry per backend", body = CapabilityList),
        (status = 401, description = "Missing or invalid bearer token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "The `read` permission is missing", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "The tenant's request rate limit is reached (see `Retry-After`)", body = Problem, content_type = "application/problem+json"),
    ),
    security(("BearerAuth" = []))
)]
pub(crate) async fn capabilities(
    State(state): State<ApiState>,
    caller: Caller,
) -> Result<Json<CapabilityList>, ApiError> {
    caller.require(Permission::Read)?;
    Ok(Json(CapabilityList { items: state.engine.backends().capabilities(&caller.tenant) }))
}

/// Check liveness
///
/// The process answers.
#[utoipa::path(
    get,
    path = "/healthz",
    tag = "health",
    operation_id = "GetHealth",
    responses((status = 200, description = "Alive", body = Health))
)]
pub(crate) async fn healthz() -> Json<Health> {
    Json(Health { status: "ok".into() })
}

/// Check readiness
///
/// The store answers and the process is not shutting down.
#[utoipa::path(
    get,
    path = "/readyz",
    tag = "health",
    operation_id = "GetReadiness",
    responses(
        (status = 200, description = "Ready", body = Health),
        (status = 503, description = "Not ready", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn readyz(State(state): State<ApiState>) -> Result<Json<Health>, ApiError> {
    let unready = |detail: &str| {
        ApiError::with_status(StatusCode::SERVICE_UNAVAILABLE, ErrorCode::Internal, detail)
    };
    if state.shutdown.is_cancelled() {
        return Err(unready("shutting down"));
    }
    state.engine.store().ping().await.map_err(|error| {
        tracing::error!(%error, "readiness check: the store does not answer");
        unready("the store does not answer")
    })?;
    Ok(Json(Health { status: "ready".into() }))
}
