//! The Carbon Black EDR ("CB Response") live-response front door: the ~19 routes cbapi 2.0,
//! the XSOAR CB apps and the Splunk SOAR connector use (front-doors.md §1.2), served under
//! `server.carbonblack_prefix` (default `/cb`; clients are given `https://HOST/cb` and build
//! `/api/...` under it), so that those clients run unchanged, with an edrgate credential in
//! `X-Auth-Token`, against devices on any backend of the caller's tenant.
//!
//! # Layout
//!
//! - `mod.rs` (this file): the router ([`router`]), its state ([`CbState`]), the caller
//!   extractor ([`CbCaller`], `X-Auth-Token` through [`crate::api::apikeys::authenticate`]) and
//!   the door's error conventions ([`CbError`]: CB's HTTP codes and bodies, never
//!   problem+json, never a JSON `errorMessage`, which cbapi turns into `ServerError`).
//! - `ids.rs`: CB ids are integers clients compare (front-doors.md §1.10): parsing them from
//!   paths, and the durable sensor alias of a device.
//! - `sensors.rs`: R1 `/api/info`, R2 storage partitions, R3–R5 sensor lookups, R6 isolation
//!   (an `isolate`/`release` action), the XSOAR test-module's `/api/v1/process`; the sensor
//!   JSON (§1.3) and the short-lived device cache that keeps cbapi's 1 s refresh loops off the
//!   vendors.
//! - `sessions.rs`: R7–R11 virtual sessions (active at once, §1.9) and
//!   [`sessions::open_session`], which the command routes call first.
//! - `commands.rs`, `files.rs`, `render.rs` (the commands helper's): R12–R19, a CB command as
//!   one edrgate action, command rendering and HRESULTs (§1.4, §1.5), session files.
//!
//! Every action goes through [`crate::api::actions::submit`] with the door named in the audit
//! entry (`{"door": "carbonblack", ...}`) and an idempotency key derived from the door's own
//! durable ids, so a repeated request never repeats a side effect.

pub mod commands;
pub mod files;
pub mod ids;
pub mod render;
pub mod sensors;
pub mod sessions;

use std::any::Any;
use std::sync::Arc;

use axum::Router;
use axum::extract::{FromRef, FromRequestParts};
use axum::http::request::Parts;
use axum::http::{HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use edrgate_adapter::{AdapterError, ErrorCode};
use serde_json::{Value, json};

use crate::api::ApiState;
use crate::api::problem::ApiError;
use crate::auth::{Auth, Caller};

/// The header CB clients send their API token in (cbapi CONN `token_header`).
pub const AUTH_TOKEN: HeaderName = HeaderName::from_static("x-auth-token");

/// Value of the `door` detail of every audit entry this door makes.
pub const DOOR: &str = "carbonblack";

/// What every handler of the door gets: the API's state and the door's device cache.
#[derive(Clone)]
pub struct CbState {
    pub(crate) api: ApiState,
    pub(crate) devices: Arc<sensors::DeviceCache>,
}

impl CbState {
    pub(crate) fn new(api: ApiState) -> CbState {
        CbState { api, devices: Arc::new(sensors::DeviceCache::new()) }
    }

    pub(crate) fn store(&self) -> &crate::store::Store {
        self.api.engine.store()
    }
}

impl FromRef<CbState> for ApiState {
    fn from_ref(state: &CbState) -> ApiState {
        state.api.clone()
    }
}

impl FromRef<CbState> for Arc<Auth> {
    fn from_ref(state: &CbState) -> Arc<Auth> {
        Arc::clone(&state.api.auth)
    }
}

/// The door's routes, with its state and layers, to nest under `server.carbonblack_prefix`.
pub fn router(api: ApiState, max_body_bytes: usize) -> Router {
    let state = CbState::new(api);
    let routes = Router::new()
        .merge(sensors::routes())
        .merge(sessions::routes())
        .merge(commands::routes())
        .merge(files::routes())
        .fallback(|| async { CbError::not_found("no such route") })
        .with_state(state);
    // The token is a long-lived credential: never in a log line.
    super::with_door_layers(
        routes,
        max_body_bytes,
        &[AUTH_TOKEN, header::AUTHORIZATION],
        panic_response,
    )
}

fn panic_response(panic: Box<dyn Any + Send + 'static>) -> Response {
    tracing::error!(panic = super::panic_message(&*panic), door = DOOR, "handler panicked");
    CbError::internal().into_response()
}

/// The authenticated caller of a CB request: `X-Auth-Token` holds an edrgate API key or a
/// JWT ([`crate::api::apikeys::authenticate`]).
#[derive(Clone, Debug)]
pub struct CbCaller(pub Caller);

impl FromRequestParts<CbState> for CbCaller {
    type Rejection = CbError;

    async fn from_request_parts(parts: &mut Parts, state: &CbState) -> Result<Self, CbError> {
        let token = parts
            .headers
            .get(AUTH_TOKEN)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
            .filter(|t| !t.is_empty());
        let Some(token) = token else {
            return Err(CbError::unauthorized("an X-Auth-Token header is required"));
        };
        match crate::api::apikeys::authenticate(&state.api, token).await {
            Ok(caller) => Ok(CbCaller(caller)),
            Err(e) => Err(CbError::from(e)),
        }
    }
}

/// An error answer in CB's conventions (front-doors.md §1.5, carbonblack.md §3.4): the status
/// code clients branch on, and a body they can show. JSON bodies carry `reason` (cbapi maps
/// a 400 with `reason: "query_malformed_syntax"` to `QuerySyntaxError`) and `message`; a
/// lost session is the plain text `Session {sid} not found` that cbapi and Splunk match.
#[derive(Debug)]
pub struct CbError {
    status: StatusCode,
    body: Body,
    retry_after: Option<u64>,
}

#[derive(Debug)]
enum Body {
    Text(String),
    Json(Value),
}

impl CbError {
    fn json(status: StatusCode, reason: &str, message: impl Into<String>) -> CbError {
        let message: String = message.into();
        CbError {
            status,
            body: Body::Json(json!({"reason": reason, "message": message})),
            retry_after: None,
        }
    }

    /// `404 Session {sid} not found` (text): an unknown, closed or expired session. cbapi
    /// re-acquires a session and re-POSTs a command on it (LRAPI `_lr_post_command`), so a
    /// command route must decide this before it stores anything.
    pub fn session_not_found(sid: impl std::fmt::Display) -> CbError {
        CbError {
            status: StatusCode::NOT_FOUND,
            body: Body::Text(format!("Session {sid} not found")),
            retry_after: None,
        }
    }

    /// `404` for anything else that does not exist (a sensor, a command, a file). JSON, so the
    /// text never starts with `Sensor`/`Session`, which would make cbapi re-POST a command.
    pub fn not_found(message: impl Into<String>) -> CbError {
        CbError::json(StatusCode::NOT_FOUND, "not_found", message)
    }

    pub fn bad_request(message: impl Into<String>) -> CbError {
        CbError::json(StatusCode::BAD_REQUEST, "invalid_request", message)
    }

    /// `400` that cbapi raises as `QuerySyntaxError`.
    pub fn query_syntax(message: impl Into<String>) -> CbError {
        CbError::json(StatusCode::BAD_REQUEST, "query_malformed_syntax", message)
    }

    pub fn unauthorized(message: impl Into<String>) -> CbError {
        CbError::json(StatusCode::UNAUTHORIZED, "unauthorized", message)
    }

    pub fn forbidden(message: impl Into<String>) -> CbError {
        CbError::json(StatusCode::FORBIDDEN, "forbidden", message)
    }

    pub fn internal() -> CbError {
        CbError::json(StatusCode::INTERNAL_SERVER_ERROR, "internal", "internal error")
    }

    pub fn status(&self) -> StatusCode {
        self.status
    }
}

impl From<ApiError> for CbError {
    /// The API's refusal with its status, in the door's body; `401`, `403`, `404`, `429` and
    /// the rest keep their code and detail.
    fn from(e: ApiError) -> CbError {
        let problem = e.problem();
        let status = e.status();
        let reason = serde_json::to_value(e.code())
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_else(|| "error".to_owned());
        // The API's own answer carries the wait in its `Retry-After`.
        let retry_after = e
            .into_response()
            .headers()
            .get(header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok());
        let detail =
            if status.is_server_error() { "internal error".into() } else { problem.detail };
        CbError { retry_after, ..CbError::json(status, &reason, detail) }
    }
}

impl From<AdapterError> for CbError {
    /// A backend's refusal of a lookup: `404` for a device it does not know, `502`/`503` for
    /// the rest (cbapi raises `ServerError`, and nothing was started).
    fn from(e: AdapterError) -> CbError {
        let code = e.code();
        tracing::warn!(door = DOOR, error = %e, "backend lookup failed");
        match code {
            ErrorCode::DeviceNotFound => CbError::not_found("no such sensor"),
            ErrorCode::VendorUnavailable | ErrorCode::VendorRateLimited => CbError::json(
                StatusCode::SERVICE_UNAVAILABLE,
                "backend_unavailable",
                "a backend is unavailable; try again",
            ),
            _ => CbError::json(
                StatusCode::BAD_GATEWAY,
                "backend_error",
                "a backend refused the lookup",
            ),
        }
    }
}

impl From<crate::store::StoreError> for CbError {
    fn from(e: crate::store::StoreError) -> CbError {
        tracing::error!(door = DOOR, error = %e, "store error");
        CbError::internal()
    }
}

impl IntoResponse for CbError {
    fn into_response(self) -> Response {
        let mut response = match self.body {
            Body::Text(text) => {
                (self.status, [(header::CONTENT_TYPE, "text/plain; charset=utf-8")], text)
                    .into_response()
            }
            Body::Json(value) => (self.status, axum::Json(value)).into_response(),
        };
        if let Some(seconds) = self.retry_after {
            response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        response
    }
}

/// The audit detail of an action this door submits: the door, and the CB objects it came
/// through (`{"sensor_id": 3}`, `{"session_id": 7, "command_id": 12}`…).
pub fn door_detail(objects: Value) -> Value {
    let mut detail = json!({"door": DOOR});
    if let (Some(d), Value::Object(o)) = (detail.as_object_mut(), objects) {
        d.extend(o);
    }
    detail
}
