//! Prometheus metrics through the `metrics` facade (adapters record their vendor calls with
//! `edrgate_adapter::http::send`, and know nothing of the exporter).
//!
//! A leaf: the recorder, the metric names and the functions that record them. The HTTP side
//! (`GET /metrics`, the request counter middleware) is `api::metrics`, so the engine can record
//! runs here without depending on the HTTP layer.
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
use std::time::Duration;

use edrgate_adapter::Status;
use edrgate_adapter::adapter::BudgetUse;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

/// Latency buckets, in seconds: API answers are milliseconds, vendor calls up to long-polls.
const BUCKETS: &[f64] =
    &[0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0];

/// The media type of [`render`]'s text.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4";

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

/// Everything recorded so far, in the Prometheus text format ([`CONTENT_TYPE`]).
pub fn render() -> String {
    let handle = handle();
    handle.run_upkeep();
    handle.render()
}

/// One answered API request, by route template, method and status.
pub fn http_request(route: String, method: String, status: u16, took: Duration) {
    let labels = [("route", route), ("method", method), ("status", status.to_string())];
    metrics::counter!("edrgate_http_requests_total", &labels).increment(1);
    metrics::histogram!("edrgate_http_request_duration_seconds", &labels)
        .record(took.as_secs_f64());
}

/// A vendor budget of one backend, as it is now (read at scrape time).
pub fn budget(tenant: &str, backend: &str, budget: &BudgetUse) {
    let labels = [
        ("tenant", tenant.to_owned()),
        ("backend", backend.to_owned()),
        ("budget", budget.name.to_owned()),
    ];
    metrics::gauge!("edrgate_budget_in_use", &labels).set(budget.in_use as f64);
    metrics::gauge!("edrgate_budget_capacity", &labels).set(budget.capacity as f64);
    metrics::gauge!("edrgate_budget_waiting", &labels).set(budget.waiting as f64);
}

/// The unfinished runs in the store by status (`(status, count)`, read at scrape time); a
/// status missing from `counts` has none.
pub fn unfinished_runs(counts: &[(String, i64)]) {
    for status in [Status::Queued, Status::Dispatched, Status::Running] {
        let n = counts.iter().find(|(s, _)| s == status.as_str()).map_or(0, |(_, n)| *n);
        metrics::gauge!("edrgate_runs", "status" => status.as_str()).set(n as f64);
    }
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
