//! Prometheus metrics: `/metrics`, through the `metrics` facade (adapters record their vendor
//! calls with `edrgate_adapter::http::send`, and know nothing of the exporter).
//!
//! | metric | labels | what |
//! |---|---|---|
//! | `edrgate_http_requests_total`, `edrgate_http_request_duration_seconds` | route, method, status | the API's requests (route templates, never ids) |
//! | `edrgate_runs_finished_total` | tenant, backend, status | runs reaching a terminal status |
//! | `edrgate_runs` | status | unfinished runs in the store, all replicas (queue depth: `queued`) |
//! | `edrgate_lease_takeovers_total` | tenant, backend | runs resumed from another process's checkpoint |
//! | `edrgate_vendor_requests_total`, `edrgate_vendor_request_duration_seconds` | vendor, backend, outcome | vendor calls |
//! | `edrgate_vendor_rate_limited_total` | vendor, backend | vendor 429s |
//! | `edrgate_budget_in_use`, `edrgate_budget_capacity`, `edrgate_budget_waiting` | tenant, backend, budget | vendor budgets (sessions, call quotas) |

use std::sync::OnceLock;
use std::time::Instant;

use crate::api::ApiState;
use crate::store::{Store, StoreError, args};
use axum::extract::{MatchedPath, Request, State};
use axum::http::header::CONTENT_TYPE;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use edrgate_adapter::Status;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

/// Latency buckets, in seconds: API answers are milliseconds, vendor calls up to long-polls.
const BUCKETS: &[f64] =
    &[0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0];

/// The process-wide recorder (one per process: every app built in it shares it).
pub fn handle() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        let recorder = PrometheusBuilder::new()
            .set_buckets(BUCKETS)
            .map(PrometheusBuilder::build_recorder)
            .unwrap_or_else(|_| PrometheusBuilder::new().build_recorder());
        let handle = recorder.handle();
        // Fails only when another recorder is installed (a test harness): then `/metrics`
        // renders an empty registry rather than failing.
        if metrics::set_global_recorder(recorder).is_err() {
            tracing::warn!("a metrics recorder was installed already; /metrics stays empty");
        }
        handle
    })
}

/// Counts and times every request by route template, method and status.
pub async fn track_requests(req: Request, next: Next) -> Response {
    let started = Instant::now();
    let route =
        req.extensions().get::<MatchedPath>().map_or("(unmatched)", MatchedPath::as_str).to_owned();
    let method = req.method().as_str().to_owned();
    let response = next.run(req).await;
    let labels =
        [("route", route), ("method", method), ("status", response.status().as_u16().to_string())];
    metrics::counter!("edrgate_http_requests_total", &labels).increment(1);
    metrics::histogram!("edrgate_http_request_duration_seconds", &labels)
        .record(started.elapsed().as_secs_f64());
    response
}

/// `GET /metrics`: the Prometheus text format. Store-wide and budget gauges are read at scrape
/// time, so they are current and cost nothing between scrapes.
pub async fn render(State(state): State<ApiState>) -> Response {
    let handle = handle();
    let backends = state.engine.backends();
    for (tenant, backend, adapter) in backends.all() {
        for budget in adapter.budgets() {
            let labels = [
                ("tenant", tenant.clone()),
                ("backend", backend.clone()),
                ("budget", budget.name.to_owned()),
            ];
            metrics::gauge!("edrgate_budget_in_use", &labels).set(budget.in_use as f64);
            metrics::gauge!("edrgate_budget_capacity", &labels).set(budget.capacity as f64);
            metrics::gauge!("edrgate_budget_waiting", &labels).set(budget.waiting as f64);
        }
    }
    match state.engine.store().unfinished_run_counts().await {
        Ok(counts) => {
            for status in [Status::Queued, Status::Dispatched, Status::Running] {
                let n = counts.iter().find(|(s, _)| s == status.as_str()).map_or(0, |(_, n)| *n);
                metrics::gauge!("edrgate_runs", "status" => status.as_str()).set(n as f64);
            }
        }
        Err(error) => tracing::warn!(%error, "metrics: cannot count runs"),
    }
    handle.run_upkeep();
    ([(CONTENT_TYPE, "text/plain; version=0.0.4")], handle.render()).into_response()
}

impl Store {
    /// Unfinished runs by status, across every replica.
    async fn unfinished_run_counts(&self) -> Result<Vec<(String, i64)>, StoreError> {
        let rows: Vec<StatusCount> = self
            .db()
            .fetch_all(
                "SELECT status, COUNT(*) AS n FROM runs
                 WHERE status IN ('queued', 'dispatched', 'running') GROUP BY status",
                args![],
            )
            .await?;
        Ok(rows.into_iter().map(|r| (r.status, r.n)).collect())
    }
}

#[derive(sqlx::FromRow)]
struct StatusCount {
    status: String,
    n: i64,
}

pub fn run_finished(tenant: &str, backend: Option<&str>, status: Status) {
    metrics::counter!(
        "edrgate_runs_finished_total",
        "tenant" => tenant.to_owned(),
        "backend" => backend.unwrap_or("").to_owned(),
        "status" => status.as_str()
    )
    .increment(1);
}

pub fn run_taken_over(tenant: &str, backend: Option<&str>) {
    metrics::counter!(
        "edrgate_lease_takeovers_total",
        "tenant" => tenant.to_owned(),
        "backend" => backend.unwrap_or("").to_owned()
    )
    .increment(1);
}
