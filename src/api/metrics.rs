//! `GET /metrics` and the middleware that counts the API's requests: the HTTP side of
//! [`crate::metrics`], which stays a leaf the engine can record into.

use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::header::CONTENT_TYPE;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::ApiState;
use crate::metrics;

/// Counts and times every request by route template, method and status.
pub async fn track_requests(req: Request, next: Next) -> Response {
    let started = Instant::now();
    let route =
        req.extensions().get::<MatchedPath>().map_or("(unmatched)", MatchedPath::as_str).to_owned();
    let method = req.method().as_str().to_owned();
    let response = next.run(req).await;
    metrics::http_request(route, method, response.status().as_u16(), started.elapsed());
    response
}

/// `GET /metrics`: the Prometheus text format. Store-wide and budget gauges are read at scrape
/// time, so they are current and cost nothing between scrapes.
pub async fn render(State(state): State<ApiState>) -> Response {
    // The recorder first: gauges set before it is installed would be lost.
    metrics::handle();
    let backends = state.engine.backends();
    for (tenant, backend, adapter) in backends.all() {
        for budget in adapter.budgets() {
            metrics::budget(tenant, backend, &budget);
        }
    }
    match state.engine.store().unfinished_run_counts().await {
        Ok(counts) => metrics::unfinished_runs(&counts),
        Err(error) => tracing::warn!(%error, "metrics: cannot count runs"),
    }
    ([(CONTENT_TYPE, metrics::CONTENT_TYPE)], metrics::render()).into_response()
}
