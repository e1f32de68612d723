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

use axum::Router;

use crate::api::ApiState;
use crate::config::ServerConfig;

/// `api` (the complete `/v1` router) with the front doors beside it. Each door is nested
/// under its own prefix with its own layers, outside the API's problem+json rendering.
pub fn mount(api: Router, state: &ApiState, server: &ServerConfig) -> Router {
    let mut router = api;
    if !server.carbonblack_prefix.is_empty() {
        let door = cb::router(state.clone(), server.max_body_bytes);
        router = router.nest(&server.carbonblack_prefix, door);
    }
    router
}
