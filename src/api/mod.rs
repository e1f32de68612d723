//! The HTTP surface: `/v1` (authenticated), `/healthz`, `/readyz` and `/openapi.json`; and
//! `/metrics` on a listener of its own ([`metrics_router`]).
//!
//! Routes are declared once, with their OpenAPI description, through utoipa-axum (see
//! [`openapi::api_routes`]); [`router`] adds the state, the fallbacks and the layers.
//! Every error answer is `application/problem+json` ([`problem`]).
//!
//! **Architecture Invariant:** this module never imports a vendor crate; it sees the engine,
//! the store's public types and the normalized model only.

pub mod actions;
pub mod apikeys;
pub mod audit;
pub mod caller;
pub mod devices;
pub mod downlevel;
pub mod events;
pub mod files;
pub mod metrics;
pub mod multipart;
pub mod openapi;
pub mod problem;
pub mod reload;
pub mod request;
pub mod runs;
pub mod webhooks;

use std::any::Any;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{FromRef, MatchedPath, Request};
use axum::http::header::AUTHORIZATION;
use axum::http::{HeaderName, HeaderValue};
use axum::response::{IntoResponse, Response};
use tokio_util::sync::CancellationToken;
use tower::ServiceBuilder;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::limit::RequestBodyLimitLayer;
use tower_http::request_id::{
    MakeRequestId, PropagateRequestIdLayer, RequestId, SetRequestIdLayer,
};
use tower_http::sensitive_headers::SetSensitiveRequestHeadersLayer;
use tower_http::trace::{DefaultOnResponse, TraceLayer};
use tracing::Level;
use uuid::Uuid;

use crate::auth::Auth;
use crate::engine::Engine;
use problem::ApiError;
pub use reload::{Reload, ReloadError, ReloadReport};

/// The request id header, echoed on every answer and set on every request that lacks one.
pub const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
/// Client-supplied request ids longer than this are replaced by a generated one: they end up
/// in logs and in the store.
const MAX_REQUEST_ID_LEN: usize = 128;

/// What every handler gets.
#[derive(Clone)]
pub struct ApiState {
    pub engine: Arc<Engine>,
    pub auth: Arc<Auth>,
    /// Cap of `?wait=` long-polls (`server.max_wait_seconds`).
    pub max_wait: Duration,
    /// Cancelled when the process starts shutting down: long-polls answer at once and
    /// `/readyz` turns unready, so the graceful drain is not held up.
    pub shutdown: CancellationToken,
    /// Peers whose forwarded headers are believed (`server.trusted_proxies`).
    pub trusted_proxies: Arc<[request::Cidr]>,
    /// Re-reads the configuration (SIGHUP, `POST /v1/admin/reload`).
    pub reloader: Arc<dyn Reload>,
    /// `server.path_prefix` (empty for none).
    pub prefix: Arc<str>,
    /// Webhook settings and senders (`/v1/webhooks`, callback checks).
    pub webhooks: Arc<crate::webhooks::Webhooks>,
}

impl FromRef<ApiState> for Arc<Auth> {
    fn from_ref(state: &ApiState) -> Arc<Auth> {
        Arc::clone(&state.auth)
    }
}

/// The complete application router: routes, fallbacks, `/openapi.json` and the layers.
pub fn router(state: ApiState, max_body_bytes: usize) -> Router {
    let prefix = Arc::clone(&state.prefix);
    let (mut routes, doc) = openapi::api_routes().split_for_parts();
    // Made once: the documents are a function of the code only, but for `servers` (3.x) and
    // `host`/`basePath`/`schemes` (2.0), which name the gateway as the client reached it.
    let doc = openapi::finish(doc);
    let doc = Arc::new(doc);
    for (index, ((_, route), rendered)) in
        openapi::RENDERINGS.iter().zip(openapi::renderings(&doc)).enumerate()
    {
        let (doc, rendered) = (Arc::clone(&doc), Arc::new(openapi::render(&rendered)));
        let serve = move |meta: request::RequestMeta| {
            let (doc, rendered) = (Arc::clone(&doc), Arc::clone(&rendered));
            async move { serve_document(&doc, index, &rendered, &meta) }
        };
        routes = routes.route(route, axum::routing::get(serve));
    }
    let routes = routes.with_state(state.clone());
    let routes = if prefix.is_empty() {
        routes
    } else {
        // Probes reach the process directly, without the proxy's prefix.
        let ops = Router::new()
            .route("/healthz", axum::routing::get(devices::healthz))
            .route("/readyz", axum::routing::get(devices::readyz))
            .with_state(state);
        Router::new().nest(&prefix, routes).merge(ops)
    };
    let upload_path: Arc<str> = format!("{prefix}/v1/files").into();
    with_layers(routes.fallback(not_found), max_body_bytes, upload_path)
}

/// Rendering `index` of the document, pointed at the gateway the client reached; as committed
/// (`rendered`) when the client's address is not known.
fn serve_document(
    doc: &serde_json::Value,
    index: usize,
    rendered: &str,
    meta: &request::RequestMeta,
) -> Response {
    let json = [(axum::http::header::CONTENT_TYPE, "application/json")];
    if meta.origin.is_none() {
        return (json, rendered.to_owned()).into_response();
    }
    let mut doc = doc.clone();
    openapi::set_server(&mut doc, &meta.link(""));
    let text = openapi::renderings(&doc).get(index).map(openapi::render).unwrap_or_default();
    (json, text).into_response()
}

/// `/metrics` alone, for its own listener (`server.metrics_listen`): the metrics name every
/// tenant and backend and are not authenticated, so the API's listener does not serve them.
pub fn metrics_router(state: ApiState) -> Router {
    Router::new()
        .route("/metrics", axum::routing::get(metrics::render))
        .fallback(not_found)
        .with_state(state)
        .layer(axum::middleware::from_fn(problem::render_problems))
}

/// The middleware stack around every route (and the fallbacks).
fn with_layers(routes: Router, max_body_bytes: usize, upload_path: Arc<str>) -> Router {
    // `ServiceBuilder` lists layers outermost first (the reverse of chained `.layer` calls).
    let layers = ServiceBuilder::new()
        // Outermost: `Authorization` is marked sensitive before anything could log it.
        .layer(SetSensitiveRequestHeadersLayer::new([AUTHORIZATION]))
        // An unusable client request id is dropped here so the next layer generates one.
        .layer(axum::middleware::map_request(drop_unusable_request_id))
        // Before tracing, so the span can carry the id; propagation copies it to the answer
        // (problems included, which are made further in).
        .layer(SetRequestIdLayer::new(X_REQUEST_ID, MakeRequestUuidV7))
        .layer(PropagateRequestIdLayer::new(X_REQUEST_ID))
        .layer(
            TraceLayer::new_for_http()
                .make_span_with(request_span)
                .on_response(DefaultOnResponse::new().level(Level::INFO)),
        )
        .layer(axum::middleware::from_fn(metrics::track_requests))
        // Outside everything that can make an error answer (including a panic), so each one
        // leaves as problem+json with the request id.
        .layer(axum::middleware::from_fn(problem::render_problems))
        .layer(CatchPanicLayer::custom(panic_response))
        // Backstop for bodies that are not read through `Json` (which has `DefaultBodyLimit`
        // below); uploads stream under their tenant's own cap instead.
        .layer(axum::middleware::from_fn_with_state((max_body_bytes, upload_path), limit_body));
    routes.layer(axum::extract::DefaultBodyLimit::max(max_body_bytes)).layer(layers)
}

/// `RequestBodyLimitLayer` for every request but `POST /v1/files`, whose body streams to
/// storage and is capped by `files.max_upload_bytes` ([`files::upload_file`]).
async fn limit_body(
    axum::extract::State((max, upload_path)): axum::extract::State<(usize, Arc<str>)>,
    req: Request,
    next: axum::middleware::Next,
) -> Response {
    use tower::{Layer as _, ServiceExt as _};
    if req.method() == axum::http::Method::POST && req.uri().path() == &*upload_path {
        return next.run(req).await;
    }
    let next = next.map_request(|r: axum::http::Request<_>| r.map(Body::new));
    match RequestBodyLimitLayer::new(max).layer(next).oneshot(req).await {
        Ok(response) => response.map(Body::new),
        Err(never) => match never {},
    }
}

/// Generates request ids: UUIDv7, so they sort by time in logs.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct MakeRequestUuidV7;

impl MakeRequestId for MakeRequestUuidV7 {
    fn make_request_id<B>(&mut self, _: &axum::http::Request<B>) -> Option<RequestId> {
        HeaderValue::from_str(&Uuid::now_v7().to_string()).ok().map(RequestId::new)
    }
}

pub(crate) async fn drop_unusable_request_id(mut req: Request) -> Request {
    let unusable = req
        .headers()
        .get(&X_REQUEST_ID)
        .is_some_and(|v| v.is_empty() || v.len() > MAX_REQUEST_ID_LEN || v.to_str().is_err());
    if unusable {
        req.headers_mut().remove(&X_REQUEST_ID);
    }
    req
}

fn request_span(req: &axum::http::Request<Body>) -> tracing::Span {
    let request_id = req.headers().get(&X_REQUEST_ID).and_then(|v| v.to_str().ok()).unwrap_or("");
    // The route template, not the concrete path: ids stay out of span names and metrics.
    let route = req.extensions().get::<MatchedPath>().map_or("(unmatched)", MatchedPath::as_str);
    tracing::info_span!("request", method = %req.method(), route, request_id)
}

fn panic_response(panic: Box<dyn Any + Send + 'static>) -> Response {
    let message = panic
        .downcast_ref::<String>()
        .map(String::as_str)
        .or_else(|| panic.downcast_ref::<&str>().copied())
        .unwrap_or("(no message)");
    tracing::error!(panic = message, "handler panicked");
    ApiError::internal().into_response()
}

async fn not_found() -> ApiError {
    ApiError::not_found("no such route")
}

#[cfg(test)]
mod tests {
    use axum::http::StatusCode;
    use tower::ServiceExt as _;

    use super::*;

    #[tokio::test]
    async fn a_panic_is_a_problem_with_the_request_id() {
        let routes = Router::new().route(
            "/boom",
            axum::routing::get(|| async {
                // A stand-in for a bug in a handler.
                let v: Vec<u8> = Vec::new();
                v[1].to_string()
            }),
        );
        let request = axum::http::Request::get("/boom")
            .header(&X_REQUEST_ID, "req-panic")
            .body(Body::empty())
            .unwrap();
        let response =
            with_layers(routes, 1024, "/v1/files".into()).oneshot(request).await.unwrap();
        assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(response.headers()["content-type"], problem::PROBLEM_JSON);
        assert_eq!(response.headers()[&X_REQUEST_ID], "req-panic");
        let body = axum::body::to_bytes(response.into_body(), 4096).await.unwrap();
        let problem: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(problem["code"], "internal");
        assert_eq!(problem["detail"], "internal error");
        assert_eq!(problem["request_id"], "req-panic");
    }

    #[tokio::test]
    async fn unusable_request_ids_are_replaced() {
        let routes = Router::new().route("/", axum::routing::get(|| async { "ok" }));
        for sent in ["", &"x".repeat(MAX_REQUEST_ID_LEN + 1)] {
            let request = axum::http::Request::get("/")
                .header(&X_REQUEST_ID, sent)
                .body(Body::empty())
                .unwrap();
            let response = with_layers(routes.clone(), 1024, "/v1/files".into())
                .oneshot(request)
                .await
                .unwrap();
            let echoed = response.headers()[&X_REQUEST_ID].to_str().unwrap();
            assert!(Uuid::parse_str(echoed).is_ok(), "{echoed}");
        }
    }
}
