//! Front doors: other products' APIs, served so that their existing clients reach edrgate
//! unchanged (front-doors.md). Each door authenticates its own way, answers in its own
//! conventions (never problem+json), and submits work through
//! [`crate::api::actions::submit`] with the door named in the audit trail.
//!
//! - [`cb`]: the Carbon Black EDR live-response REST subset, under
//!   `server.carbonblack_prefix` (front-doors.md §1).
//! - `openc2`: the OpenC2 Endpoint Response consumer (front-doors.md §2).

pub mod cb;
pub mod openc2;

use std::any::Any;

use axum::Router;
use axum::http::HeaderName;
use axum::response::Response;
use tower::ServiceBuilder;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::request_id::{PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::sensitive_headers::SetSensitiveRequestHeadersLayer;
use tower_http::trace::TraceLayer;

use crate::api::{ApiState, MakeRequestUuidV7, X_REQUEST_ID, drop_unusable_request_id};
use crate::config::ServerConfig;

/// `api` (the complete `/v1` router) with the front doors beside it. Each door is nested
/// under its own prefix with its own layers, outside the API's problem+json rendering.
pub fn mount(api: Router, state: &ApiState, server: &ServerConfig) -> Router {
    let mut router = api;
    if !server.carbonblack_prefix.is_empty() {
        let door = cb::router(state.clone(), server.max_body_bytes);
        router = router.nest(&server.carbonblack_prefix, door);
    }
    // Under `server.path_prefix`, where the proxy forwards the API (HTTPS transfer §3.2.1).
    let path = format!("{}{}", state.prefix, openc2::PATH);
    router.nest(&path, openc2::router(state.clone()))
}

/// The layers of a door, as the API's own but for the error rendering, which is the door's:
/// `sensitive` headers never logged, a request id (a client's usable one kept, else a UUIDv7)
/// echoed on the answer and kept in the audit of what the door submits, tracing, a panic
/// answered by `panic`, and bodies read through extractors capped at `max_body_bytes`.
pub(crate) fn with_door_layers(
    routes: Router,
    max_body_bytes: usize,
    sensitive: &[HeaderName],
    panic: fn(Box<dyn Any + Send + 'static>) -> Response,
) -> Router {
    let layers = ServiceBuilder::new()
        .layer(SetSensitiveRequestHeadersLayer::new(sensitive.iter().cloned()))
        .layer(axum::middleware::map_request(drop_unusable_request_id))
        .layer(SetRequestIdLayer::new(X_REQUEST_ID, MakeRequestUuidV7))
        .layer(PropagateRequestIdLayer::new(X_REQUEST_ID))
        .layer(TraceLayer::new_for_http())
        .layer(axum::middleware::from_fn(crate::api::metrics::track_requests))
        .layer(CatchPanicLayer::custom(panic));
    routes.layer(axum::extract::DefaultBodyLimit::max(max_body_bytes)).layer(layers)
}

/// A panic's message, for the log line of a door's panic answer.
pub(crate) fn panic_message(panic: &(dyn Any + Send)) -> &str {
    panic
        .downcast_ref::<String>()
        .map(String::as_str)
        .or_else(|| panic.downcast_ref::<&str>().copied())
        .unwrap_or("(no message)")
}
