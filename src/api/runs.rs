//! `/v1/actions/{id}/runs`: an action's runs page by page (an action answer carries the first
//! `INLINE_RUNS` of them and its summary), filterable by status, and one run on its own, so
//! that no answer grows with the number of targets.

use axum::extract::State;
use edrgate_adapter::{Run, Status};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use super::ApiState;
use super::problem::{ApiError, Json, Path, Problem, Query};
use crate::auth::{Caller, Permission};

pub const DEFAULT_RUNS_PAGE: u32 = 100;
pub const MAX_RUNS_PAGE: u32 = 500;

/// A page of an action's runs, in target order.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct RunList {
    pub items: Vec<Run>,
    /// Pass as `cursor` to get the next page; `null` on the last page.
    #[schema(required = true)]
    pub next_cursor: Option<String>,
}

/// Query of `GET /v1/actions/{id}/runs`.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct RunParams {
    /// Only runs with this status.
    pub status: Option<Status>,
    /// `next_cursor` of the previous page, or the action's `runs_next_cursor`.
    #[param(pattern = "^[0-9]{0,9}$")]
    pub cursor: Option<String>,
    /// Page size, 1 to 500 (default 100).
    #[param(minimum = 1, maximum = 500)]
    pub limit: Option<u32>,
}

fn failure(error: crate::store::StoreError) -> ApiError {
    tracing::error!(%error, "reading runs failed");
    ApiError::internal()
}

/// List runs
///
/// The action's runs in target order, page by page, optionally of one status (e.g. the
/// `failed` runs of a 1,000-host fan-out). An action answer carries the first 100 runs and
/// `runs_next_cursor` when there are more.
#[utoipa::path(
    get,
    path = "/v1/actions/{id}/runs",
    tag = "actions",
    operation_id = "ListRuns",
    params(("id" = Uuid, Path, description = "Action id"), RunParams),
    responses(
        (status = 200, description = "A page of runs", body = RunList),
        (status = 400, description = "Bad filter or cursor", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing or bad token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "The token lacks the read permission", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such action in the caller's tenant", body = Problem, content_type = "application/problem+json"),
    ),
    security(("BearerAuth" = [])),
)]
pub(crate) async fn list_runs(
    State(state): State<ApiState>,
    caller: Caller,
    Path(id): Path<Uuid>,
    Query(params): Query<RunParams>,
) -> Result<Json<RunList>, ApiError> {
    caller.require(Permission::Read)?;
    let limit = params.limit.unwrap_or(DEFAULT_RUNS_PAGE);
    if !(1..=MAX_RUNS_PAGE).contains(&limit) {
        return Err(ApiError::invalid(format!("limit: between 1 and {MAX_RUNS_PAGE}")));
    }
    let after = match params.cursor.as_deref() {
        None | Some("") => None,
        Some(c) => Some(
            c.bytes()
                .all(|b| b.is_ascii_digit())
                .then(|| c.parse::<i64>().ok())
                .flatten()
                .filter(|_| c.len() <= 9)
                .ok_or_else(|| ApiError::invalid("cursor: not a cursor of this listing"))?,
        ),
    };
    let (items, next_cursor) = state
        .engine
        .store()
        .runs_page(&caller.tenant, id, params.status, after, limit)
        .await
        .map_err(failure)?
        .ok_or_else(|| ApiError::not_found("no such action"))?;
    Ok(Json(RunList { items, next_cursor }))
}

/// Get run
///
/// One run of the action, with its commands' results.
#[utoipa::path(
    get,
    path = "/v1/actions/{id}/runs/{run_id}",
    tag = "actions",
    operation_id = "GetRun",
    params(("id" = Uuid, Path, description = "Action id"), ("run_id" = Uuid, Path, description = "Run id")),
    responses(
        (status = 200, description = "The run", body = Run),
        (status = 401, description = "Missing or bad token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "The token lacks the read permission", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such run of an action of the caller's tenant", body = Problem, content_type = "application/problem+json"),
    ),
    security(("BearerAuth" = [])),
)]
pub(crate) async fn get_run(
    State(state): State<ApiState>,
    caller: Caller,
    Path((id, run_id)): Path<(Uuid, Uuid)>,
) -> Result<Json<Run>, ApiError> {
    caller.require(Permission::Read)?;
    state
        .engine
        .store()
        .run(&caller.tenant, id, run_id)
        .await
        .map_err(failure)?
        .map(Json)
        .ok_or_else(|| ApiError::not_found("no such run"))
}
