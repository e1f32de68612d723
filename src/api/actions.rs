//! `/v1/actions`: submit, get (with long-poll), list, cancel.

use std::time::Duration;

use axum::extract::State;
use axum::http::header::{CONTENT_LOCATION, CONTENT_TYPE, LOCATION, RETRY_AFTER};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use edrgate_adapter::{Action, ActionRequest, Command, Status};
use serde::{Deserialize, Serialize};
use time::format_description::well_known::Rfc3339;
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use super::ApiState;
use super::audit;
use super::problem::{ApiError, Json, Path, Problem, Query};
use super::request::RequestMeta;
use crate::audit::{AuditEvent, AuditRecord};
use crate::auth::{Caller, Permission};
use crate::engine::{SubmitMeta, Submitted};
use crate::store::{Cursor, ListQuery};

/// Header that makes a retried submission return the first one's action.
pub const IDEMPOTENCY_KEY: &str = "idempotency-key";
/// Set (to `true`) on the answer to a replayed submission.
pub const IDEMPOTENT_REPLAYED: &str = "idempotent-replayed";
/// Longest accepted `Idempotency-Key`.
const MAX_IDEMPOTENCY_KEY_LEN: usize = 255;
/// `Retry-After` of the submission's `202` and of the status URL while the action runs: how
/// often Logic Apps and other 202-pollers come back.
pub const POLL_AFTER_SECONDS: u64 = 5;
/// Largest `?wait=` accepted (as declared); it is then capped by `server.max_wait_seconds`.
const MAX_WAIT_PARAM: u64 = 86_400;
/// Page size of `GET /v1/actions` when `limit` is not given, and the largest allowed.
pub const DEFAULT_LIMIT: u32 = 50;
pub const MAX_LIMIT: u32 = 500;

/// A page of actions, newest first.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ActionList {
    pub items: Vec<Action>,
    /// Pass as `cursor` to get the next page; `null` on the last page.
    #[schema(required = true)]
    pub next_cursor: Option<String>,
}

/// Query of `GET /v1/actions/{id}`.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct GetParams {
    /// Long-poll: answer as soon as the action changes, or after this many seconds (capped by
    /// the server's `max_wait_seconds`). A finished action is returned at once.
    #[param(minimum = 0, maximum = 86400, example = 30)]
    pub wait: Option<u64>,
}

/// Query of `GET /v1/actions`.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListParams {
    /// Only actions with this status.
    pub status: Option<Status>,
    /// Only actions with a run on this device (device id or hostname).
    pub device: Option<String>,
    /// Only actions created at or after this instant (RFC 3339).
    #[param(format = DateTime)]
    pub since: Option<String>,
    /// `next_cursor` of the previous page.
    #[param(pattern = r"^([0-9]{1,18}\.[0-9a-f]{32})?$")]
    pub cursor: Option<String>,
    /// Page size, 1 to 500 (default 50).
    #[param(minimum = 1, maximum = 500)]
    pub limit: Option<u32>,
}

/// Submit action
///
/// Runs `commands`, in order, on every target. The action and its runs are stored before the answer. With an `Idempotency-Key`, a retried
/// submission (same key, same body) answers with the first action and
/// `Idempotent-Replayed: true`: `202` while it runs, `200` once it is finished; the same key
/// with another body is a `409`. A `callback_url` gets the action's `action.finished` event,
/// signed with the tenant's callback secret.
///
/// The `202`'s `Location` is the action's status URL (`GET /v1/actions/{id}/status`), which
/// answers `202` until the action is finished, then `200` with it: the asynchronous pattern of
/// Logic Apps and other 202-pollers. `Content-Location` is the action itself.
#[utoipa::path(
    post,
    path = "/v1/actions",
    tag = "actions",
    operation_id = "SubmitAction",
    request_body(content = ActionRequest, example = json!({
        "targets": [{"hostname": "WIN-0001"}],
        "commands": [{"type": "process_list"}, {"type": "get_file", "path": "C:\\evidence\\note.txt"}],
        "comment": "IR-1234 triage"
    })),
    params(
        ("Idempotency-Key" = Option<String>, Header, description = "Makes retries of this submission return the same action (1 to 255 visible ASCII characters)", max_length = 255, pattern = r"^[\x20-\x7e\t]*[\x21-\x7e][\x20-\x7e\t]*$", example = "ir-1234-triage-1"),
        ("X-Request-ID" = Option<String>, Header, description = "Echoed on the answer and stored with the action; generated when absent"),
    ),
    responses(
        (status = 202, description = "Accepted: the action is stored and will run", body = Action,
            headers(
                ("Location" = String, description = "Absolute URL of the action's status (`/v1/actions/{id}/status`)"),
                ("Content-Location" = String, description = "Absolute URL of the action (`/v1/actions/{id}`)"),
                ("Retry-After" = u64, description = "Seconds before polling the status URL"),
                ("Idempotent-Replayed" = Option<String>, description = "`true` on a replay of an earlier submission whose action still runs"),
            )),
        (status = 200, description = "A replay of an earlier submission with the same Idempotency-Key, whose action is finished (while it runs, a replay is a `202` with `Idempotent-Replayed`)", body = Action,
            headers(("Idempotent-Replayed" = String, description = "`true`"))),
        (status = 400, description = "Malformed JSON, unknown field or command, invalid arguments", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing or invalid bearer token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "A permission the commands need is missing (`read`, `write`, `execute`, `contain`), or the tenant has no backends", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "Idempotency-Key reused with a different request", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "Body over the size limit", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "Body is not `application/json`", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Valid by this document, but not for this tenant: a command the target's backend does not support, a backend or `file_id` the tenant does not have, a file over the backend's size cap, a `callback_url` the tenant cannot sign (no `webhooks.callback`) or the destination policy refuses, or arguments that do not go together (`offset` without `length`, registry `data` of another type than `value_type`)", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "The tenant's request rate or actions-in-flight limit is reached (see `Retry-After`)", body = Problem, content_type = "application/problem+json"),
    ),
    security(("BearerAuth" = []))
)]
pub(crate) async fn submit_action(
    State(state): State<ApiState>,
    caller: Caller,
    meta: RequestMeta,
    headers: HeaderMap,
    Json(request): Json<ActionRequest>,
) -> Result<Response, ApiError> {
    let idempotency_key = match headers.get(IDEMPOTENCY_KEY) {
        None => None,
        Some(value) => {
            let key = value
                .to_str()
                .ok()
                .map(str::trim)
                .filter(|k| !k.is_empty() && k.len() <= MAX_IDEMPOTENCY_KEY_LEN);
            let Some(key) = key else {
                return Err(ApiError::invalid(format!(
                    "Idempotency-Key must be 1 to {MAX_IDEMPOTENCY_KEY_LEN} visible ASCII characters"
                )));
            };
            Some(key.to_owned())
        }
    };
    let request_id =
        headers.get(&super::X_REQUEST_ID).and_then(|v| v.to_str().ok()).map(str::to_owned);
    let submit_meta = SubmitMeta { idempotency_key, request_id, subject: caller.subject.clone() };
    let submitted = submit(&state, &caller, &meta, request, submit_meta, None).await;
    let (status, action, replayed) = match submitted? {
        Submitted::Created(action) => (StatusCode::ACCEPTED, action, false),
        // A replay answers as the status URL would: `202` while the action runs, so a
        // 202-poller that retried its submission keeps waiting instead of moving on.
        Submitted::Replayed(action) if !action.status.is_terminal() => {
            (StatusCode::ACCEPTED, action, true)
        }
        Submitted::Replayed(action) => (StatusCode::OK, action, true),
    };
    tracing::info!(tenant = %caller.tenant, action_id = %action.id, replayed, "action submitted");
    let mut response = (status, Json(&action)).into_response();
    let headers = response.headers_mut();
    let links = [
        (CONTENT_LOCATION, format!("/v1/actions/{}", action.id)),
        (LOCATION, status_path(action.id)),
    ];
    for (name, path) in links {
        if let Ok(link) = HeaderValue::from_str(&meta.link(&path)) {
            headers.insert(name, link);
        }
    }
    if status == StatusCode::ACCEPTED {
        headers.insert(RETRY_AFTER, HeaderValue::from(POLL_AFTER_SECONDS));
    }
    if replayed {
        response.headers_mut().insert(IDEMPOTENT_REPLAYED, HeaderValue::from_static("true"));
    }
    Ok(response)
}

/// Submits `request` for `caller` as every door does (`POST /v1/actions`, the Carbon Black
/// front door, OpenC2): the caller's permissions and the request checked, the tenant's
/// admission, the engine's submission, and its audit entry (`door` names a front door in the
/// entry's detail, so the trail says how each action arrived).
pub(crate) async fn submit(
    state: &ApiState,
    caller: &Caller,
    meta: &RequestMeta,
    request: ActionRequest,
    submit_meta: SubmitMeta,
    door: Option<serde_json::Value>,
) -> Result<Submitted, ApiError> {
    let targets = serde_json::to_value(&request.targets).ok();
    let commands = serde_json::to_value(&request.commands).ok();
    let checked = caller
        .require_commands(request.commands.iter().map(Command::kind))
        .map_err(ApiError::from)
        .and_then(|()| super::request::check_commands(&request.commands))
        .and_then(|()| {
            super::webhooks::check_callback(state, &caller.tenant, request.callback_url.as_deref())
        });
    let submitted = match checked {
        Err(refused) => Err(refused),
        Ok(()) => {
            let store = state.engine.store();
            let admitted = state
                .auth
                .admit_action(&caller.tenant, || store.unfinished_actions(&caller.tenant));
            match admitted.await {
                Err(limited) => Err(ApiError::from(limited)),
                // Held until the action is stored, so the count it checked stays true.
                Ok(_admission) => state
                    .engine
                    .submit(&caller.tenant, request, submit_meta)
                    .await
                    .map_err(ApiError::from),
            }
        }
    };
    let mut entry = match &submitted {
        Ok(Submitted::Created(action)) => {
            AuditRecord::new(AuditEvent::ActionSubmit, "accepted", 202).for_action(action.id)
        }
        Ok(Submitted::Replayed(action)) => {
            AuditRecord::new(AuditEvent::ActionSubmit, "replayed", 200).for_action(action.id)
        }
        Err(error) => audit::refused(AuditEvent::ActionSubmit, error),
    };
    entry.targets = targets;
    entry.commands = commands;
    entry.detail = door;
    audit::record(state, caller, meta, entry).await;
    submitted
}

/// Get action
///
/// The action with its runs and results, optionally long-polling (`wait`) until it changes.
/// Answers `200` whatever the action's status; the asynchronous pattern (`202` until
/// finished) is `GET /v1/actions/{id}/status`.
#[utoipa::path(
    get,
    path = "/v1/actions/{id}",
    tag = "actions",
    operation_id = "GetAction",
    params(("id" = Uuid, Path, description = "Action id"), GetParams),
    responses(
        (status = 200, description = "The action", body = Action),
        (status = 400, description = "Invalid `wait`", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing or invalid bearer token", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "The tenant's request rate limit is reached (see `Retry-After`)", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "The `read` permission is missing", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such action for this tenant", body = Problem, content_type = "application/problem+json"),
    ),
    security(("BearerAuth" = []))
)]
pub(crate) async fn get_action(
    State(state): State<ApiState>,
    caller: Caller,
    Path(id): Path<Uuid>,
    Query(params): Query<GetParams>,
) -> Result<Response, ApiError> {
    caller.require(Permission::Read)?;
    let wait = params.wait.unwrap_or(0);
    if wait > MAX_WAIT_PARAM {
        return Err(ApiError::invalid(format!("wait: 0 to {MAX_WAIT_PARAM} seconds")));
    }
    let wait = Duration::from_secs(wait).min(state.max_wait);
    if wait.is_zero() {
        // The serialized answer, from memory for an unchanged action.
        let json = state.engine.action_json(&caller.tenant, id).await?;
        return Ok(json_response(json));
    }
    let action = tokio::select! {
        // The engine wakes only on changes a caller can see (statuses, results, errors), not
        // on checkpoint-only writes.
        changed = state.engine.wait_action(&caller.tenant, id, wait) => changed?,
        // Shutting down: answer with what there is rather than hold the drain up.
        () = state.shutdown.cancelled() => state.engine.action(&caller.tenant, id).await?,
    };
    Ok(Json(action).into_response())
}

/// `200` with an already serialized action (the content type `Json` gives).
fn json_response(json: bytes::Bytes) -> Response {
    ([(CONTENT_TYPE, HeaderValue::from_static("application/json"))], json).into_response()
}

/// The path of an action's status URL (the submission's `Location`).
fn status_path(id: Uuid) -> String {
    format!("/v1/actions/{id}/status")
}

/// What the status URL answers while the action is not finished.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ActionProgress {
    pub id: Uuid,
    /// `queued`, `dispatched` or `running`.
    pub status: Status,
    /// Seconds before asking again (also in `Retry-After`).
    pub retry_after_seconds: u64,
    /// Absolute URL of the action (`GET /v1/actions/{id}`), to read its runs meanwhile.
    pub action_url: String,
}

/// Get action status
///
/// The action's status URL, for clients of the asynchronous `202` pattern: `202` with
/// `Retry-After` and `Location` (this URL) while the action is queued or running, then `200`
/// with the finished action (the same body as `GET /v1/actions/{id}`).
#[utoipa::path(
    get,
    path = "/v1/actions/{id}/status",
    tag = "actions",
    operation_id = "GetActionStatus",
    params(("id" = Uuid, Path, description = "Action id", example = "0192f7a4-5c8e-7d3a-9b1e-2f4a6c8e0d1f")),
    responses(
        (status = 200, description = "The action is finished", body = Action,
            headers(("Content-Location" = String, description = "Absolute URL of the action"))),
        (status = 202, description = "The action is not finished yet; poll `Location` again after `Retry-After` seconds", body = ActionProgress,
            headers(
                ("Location" = String, description = "Absolute URL of this status"),
                ("Retry-After" = u64, description = "Seconds before polling again"),
            )),
        (status = 401, description = "Missing or invalid bearer token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "The `read` permission is missing", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such action for this tenant", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "The tenant's request rate limit is reached (see `Retry-After`)", body = Problem, content_type = "application/problem+json"),
    ),
    security(("BearerAuth" = []))
)]
pub(crate) async fn action_status(
    State(state): State<ApiState>,
    caller: Caller,
    meta: RequestMeta,
    Path(id): Path<Uuid>,
) -> Result<Response, ApiError> {
    caller.require(Permission::Read)?;
    let (status, json) = state.engine.action_status_json(&caller.tenant, id).await?;
    let action_url = meta.link(&format!("/v1/actions/{id}"));
    if status.is_terminal() {
        // Finished: `200` with the action itself, not a `303` to it. Logic Apps stops polling
        // at the first non-202 answer and takes that answer as the action's output, and
        // XSOAR's scheduled commands read the body they polled; neither is documented to
        // follow a redirect there (shared/vendor-apis/front-doors.md §3.3, option (a)).
        let mut response = json_response(json);
        if let Ok(link) = HeaderValue::from_str(&action_url) {
            response.headers_mut().insert(CONTENT_LOCATION, link);
        }
        return Ok(response);
    }
    let progress =
        ActionProgress { id, status, retry_after_seconds: POLL_AFTER_SECONDS, action_url };
    // Logic Apps wants every 202 "with the same headers": `Location` (absolute, this URL
    // again) and `Retry-After` (seconds; its default is 20 s).
    let mut response = (StatusCode::ACCEPTED, Json(&progress)).into_response();
    let headers = response.headers_mut();
    if let Ok(location) = HeaderValue::from_str(&meta.link(&status_path(id))) {
        headers.insert(LOCATION, location);
    }
    headers.insert(RETRY_AFTER, HeaderValue::from(POLL_AFTER_SECONDS));
    Ok(response)
}

/// List actions
///
/// The tenant's actions, newest first, a page at a time.
#[utoipa::path(
    get,
    path = "/v1/actions",
    tag = "actions",
    operation_id = "ListActions",
    params(ListParams),
    responses(
        (status = 200, description = "A page of actions", body = ActionList),
        (status = 400, description = "Invalid filter or cursor", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing or invalid bearer token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "The `read` permission is missing", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "The tenant's request rate limit is reached (see `Retry-After`)", body = Problem, content_type = "application/problem+json"),
    ),
    security(("BearerAuth" = []))
)]
pub(crate) async fn list_actions(
    State(state): State<ApiState>,
    caller: Caller,
    Query(params): Query<ListParams>,
) -> Result<Json<ActionList>, ApiError> {
    caller.require(Permission::Read)?;
    let query = list_query(params)?;
    let (items, next) = state.engine.list(&caller.tenant, &query).await?;
    Ok(Json(ActionList { items, next_cursor: next.map(|c| c.encode()) }))
}

/// Cancel action
///
/// Requests the cancellation of an action. Queued work is dropped; running commands are cancelled at the vendor where it allows. The
/// answer is the action with `cancel_requested: true`; it reaches `cancelled` shortly after.
#[utoipa::path(
    post,
    path = "/v1/actions/{id}/cancel",
    tag = "actions",
    operation_id = "CancelAction",
    params(("id" = Uuid, Path, description = "Action id")),
    responses(
        (status = 200, description = "Cancel requested", body = Action),
        (status = 401, description = "Missing or invalid bearer token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "A permission the action's commands need is missing", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "The tenant's request rate limit is reached (see `Retry-After`)", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such action for this tenant", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The action already finished", body = Problem, content_type = "application/problem+json"),
    ),
    security(("BearerAuth" = []))
)]
pub(crate) async fn cancel_action(
    State(state): State<ApiState>,
    caller: Caller,
    meta: RequestMeta,
    Path(id): Path<Uuid>,
) -> Result<Json<Action>, ApiError> {
    let cancelled: Result<Action, ApiError> = async {
        // Cancelling needs the permissions that submitting the action needed; another
        // tenant's action is a 404 before any permission is looked at.
        let action = state.engine.action(&caller.tenant, id).await?;
        caller.require_commands(action.commands.iter().map(Command::kind))?;
        Ok(state.engine.cancel(&caller.tenant, id).await?)
    }
    .await;
    let entry = match &cancelled {
        Ok(_) => AuditRecord::new(AuditEvent::ActionCancel, "accepted", 200),
        // Another tenant's id is a 404 like an unknown one; the attempt is still recorded in
        // the caller's own tenant.
        Err(error) => audit::refused(AuditEvent::ActionCancel, error),
    };
    audit::record(&state, &caller, &meta, entry.for_action(id)).await;
    let action = cancelled?;
    tracing::info!(tenant = %caller.tenant, action_id = %id, "cancel requested");
    Ok(Json(action))
}

/// Checks the list filters and turns them into the store's query.
fn list_query(params: ListParams) -> Result<ListQuery, ApiError> {
    let limit = params.limit.unwrap_or(DEFAULT_LIMIT);
    if !(1..=MAX_LIMIT).contains(&limit) {
        return Err(ApiError::invalid(format!("limit: between 1 and {MAX_LIMIT}")));
    }
    let since = match params.since.as_deref() {
        None => None,
        Some(text) => {
            let at = time::OffsetDateTime::parse(text, &Rfc3339).map_err(|_| {
                ApiError::invalid(
                    "since: an RFC 3339 date-time is expected, e.g. 2026-01-31T12:00:00Z",
                )
            })?;
            Some(i64::try_from(at.unix_timestamp_nanos() / 1_000_000).unwrap_or(i64::MAX))
        }
    };
    let cursor = match params.cursor.as_deref() {
        None | Some("") => None,
        Some(text) => Some(
            Cursor::decode(text)
                .ok_or_else(|| ApiError::invalid("cursor: not a cursor this server issued"))?,
        ),
    };
    let device = params.device.filter(|d| !d.is_empty());
    Ok(ListQuery { status: params.status, device, since, cursor, limit })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(query: &str) -> Result<ListParams, String> {
        serde_urlencoded_from(query)
    }

    /// What axum's `Query` does with a query string.
    fn serde_urlencoded_from(query: &str) -> Result<ListParams, String> {
        let uri: axum::http::Uri = format!("/v1/actions?{query}").parse().unwrap();
        axum::extract::Query::<ListParams>::try_from_uri(&uri)
            .map(|q| q.0)
            .map_err(|e| e.body_text())
    }

    #[test]
    fn list_filters_are_parsed_and_checked() {
        let cursor = Cursor { created_at: 1_700_000_000_000, id: Uuid::now_v7() };
        let query = list_query(
            params(&format!(
                "status=succeeded&device=WIN-0001&since=2026-01-31T12:00:00Z&cursor={}&limit=10",
                cursor.encode()
            ))
            .unwrap(),
        )
        .unwrap();
        assert_eq!(query.status, Some(Status::Succeeded));
        assert_eq!(query.device.as_deref(), Some("WIN-0001"));
        assert_eq!(query.since, Some(1_769_860_800_000));
        assert_eq!(query.cursor, Some(cursor));
        assert_eq!(query.limit, 10);
        assert_eq!(list_query(params("").unwrap()).unwrap().limit, DEFAULT_LIMIT);
    }

    #[test]
    fn bad_filters_are_invalid_requests() {
        assert!(params("status=done").is_err());
        assert!(params("limit=-1").is_err());
        for query in ["limit=0", "limit=501", "since=yesterday", "cursor=abc", "cursor=12.nope"] {
            let error = list_query(params(query).unwrap()).unwrap_err();
            assert_eq!(error.code(), edrgate_adapter::ErrorCode::InvalidRequest, "{query}");
        }
    }

    #[test]
    fn cursors_round_trip() {
        let cursor = Cursor { created_at: 42, id: Uuid::now_v7() };
        assert_eq!(Cursor::decode(&cursor.encode()), Some(cursor));
        assert_eq!(Cursor::decode("42"), None);
        assert_eq!(Cursor::decode("x.y"), None);
    }
}
