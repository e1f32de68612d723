//! R12–R15: live-response commands (front-doors.md §1.2). One CB command is one edrgate
//! action on the session's device, submitted through [`crate::api::actions::submit`] with the
//! door in the audit entry and an Idempotency-Key derived from the command's durable id.
//!
//! (Owned by the commands helper; the foundation's `mod.rs` merges [`routes`].)
//!
//! Order on a POST (front-doors.md §1.5): the session is checked first, since cbapi re-POSTs
//! on a `404 Session…` (LRAPI `_lr_post_command`) and that answer must never follow a stored
//! action; then the request is understood and checked against what the device supports, and
//! a refusal is a command in `error` (HRESULT, not a 4xx); then the command row is stored,
//! then the action submitted. A crash between the last two leaves a row without an action,
//! which the next read submits with the same key: the action exists once, whatever happened.
//!
//! Timers (§1.6): `?wait=true` blocks until the command is final, up to
//! `server.max_wait_seconds`. cbapi polls with a budget measured only after each GET returns
//! (10 s for `kill`), so for its `User-Agent` (`cbapi/…`) a plain GET, and the POST, are held
//! while the command is pending, up to [`CBAPI_HOLD`] (below cbapi's 120 s read timeout) and
//! never beyond `server.max_wait_seconds`; other clients (XSOAR's 30 s client) get the state at
//! once. The waits wake on the engine's change notifications.

use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::http::header::USER_AGENT;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use edrgate_adapter::{Action, ActionRequest, Command, CommandResult, ErrorCode, OnError, Target};
use serde::Deserialize;
use serde_json::{Value, json};
use uuid::Uuid;

use super::render::{self, CommandRow, Refusal, ToRun};
use super::sessions::Session;
use super::{CbCaller, CbError, CbState, door_detail};
use crate::api::audit;
use crate::api::problem::ApiError;
use crate::api::request::RequestMeta;
use crate::audit::{AuditEvent, AuditRecord};
use crate::auth::Caller;
use crate::engine::{SubmitMeta, Submitted};
use crate::store::cb_commands::{CbCommandRow, NewCbCommand};

/// Longest hold of a cbapi request while its command is pending: below cbapi's 120 s HTTP
/// read timeout (RAPI `CbResponseAPI`), with room for a slow network.
pub const CBAPI_HOLD: Duration = Duration::from_secs(100);
/// Largest command body read (a command is a name, a path and a few flags).
const MAX_COMMAND_BODY: usize = 64 * 1024;
/// Default and largest page of R14.
const DEFAULT_COUNT: i64 = 100;
const MAX_COUNT: i64 = 500;

pub fn routes() -> Router<CbState> {
    Router::new()
        .route("/api/v1/cblr/session/{sid}/command", get(list_commands).post(post_command))
        .route("/api/v1/cblr/session/{sid}/command/{cid}", get(get_command).put(cancel_command))
}

/// The caller's open session `sid`, or `404 Session {sid} not found`
/// ([`super::sessions::open_session`]).
pub(crate) async fn session(
    state: &CbState,
    caller: &Caller,
    sid: &str,
) -> Result<Session, CbError> {
    super::sessions::open_session(state, caller, sid).await
}

/// A path id: an integer, else no such object (JSON 404, never `Session…`).
fn command_id(raw: &str) -> Result<i64, CbError> {
    raw.trim()
        .parse::<i64>()
        .ok()
        .filter(|id| *id > 0)
        .ok_or_else(|| CbError::not_found("no such command"))
}

fn is_cbapi(headers: &HeaderMap) -> bool {
    headers
        .get(USER_AGENT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ua| ua.trim_start().to_ascii_lowercase().starts_with("cbapi/"))
}

/// `username` of the commands a caller issues.
fn username(caller: &Caller) -> String {
    caller.subject.clone().or_else(|| caller.client_id.clone()).unwrap_or_default()
}

/// The Idempotency-Key of a command's action: the command id is durable and never reused.
pub fn idempotency_key(command_id: i64) -> String {
    format!("carbonblack-command-{command_id}")
}

/// R12 `POST /api/v1/cblr/session/{sid}/command`.
async fn post_command(
    State(state): State<CbState>,
    CbCaller(caller): CbCaller,
    meta: RequestMeta,
    Path(sid): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, CbError> {
    // The session first: a lost session must be reported before anything is stored.
    let session = session(&state, &caller, &sid).await?;
    if body.len() > MAX_COMMAND_BODY {
        return Err(CbError::bad_request(format!(
            "a command body is at most {MAX_COMMAND_BODY} bytes"
        )));
    }
    let body: Value = serde_json::from_slice(&body)
        .ok()
        .filter(Value::is_object)
        .ok_or_else(|| CbError::bad_request("the body must be a JSON object"))?;
    let object = render::object_of(&body);
    let parsed = render::parse(&body).and_then(|parsed| {
        if session.supported_commands.iter().any(|c| c == parsed.name) {
            Ok(parsed)
        } else {
            // Clients that do not check `supported_commands` get CB's answer for a command
            // the sensor cannot run (front-doors.md §1.8, §1.9).
            Err(Refusal {
                name: parsed.name.to_owned(),
                code: ErrorCode::UnsupportedCommand,
                message: format!(
                    "{} is not supported on this sensor (backend {})",
                    parsed.name, session.backend
                ),
            })
        }
    });
    let parsed = match parsed {
        Ok(parsed) => resolve_upload(&state, &caller, &session, parsed).await?,
        Err(refusal) => Err(refusal),
    };
    let user = username(&caller);
    let object_json = object.to_string();
    let row = match parsed {
        Err(refusal) => {
            let new = NewCbCommand {
                tenant: &caller.tenant,
                session_id: session.id,
                sensor_id: session.sensor_id,
                name: &refusal.name,
                object_json: &object_json,
                username: &user,
                request_json: None,
                refusal: Some((refusal.code.as_str(), &refusal.message)),
                get_file_name: None,
            };
            state.store().insert_cb_command(&new).await?
        }
        Ok((name, command)) => {
            let request = ActionRequest {
                targets: vec![Target::Device {
                    backend: session.backend.clone(),
                    device_id: session.device_id.clone(),
                }],
                commands: vec![command.clone()],
                comment: Some(format!("Carbon Black live response, session {}", session.id)),
                on_error: OnError::Stop,
                timeout_seconds: None,
                callback_url: None,
            };
            let request_json = serde_json::to_string(&request).map_err(|_| CbError::internal())?;
            let get_file_name = match &command {
                Command::GetFile { path, .. } => Some(path.as_str()),
                _ => None,
            };
            let new = NewCbCommand {
                tenant: &caller.tenant,
                session_id: session.id,
                sensor_id: session.sensor_id,
                name,
                object_json: &object_json,
                username: &user,
                request_json: Some(&request_json),
                refusal: None,
                get_file_name,
            };
            let row = state.store().insert_cb_command(&new).await?;
            ensure_submitted(&state, &caller, &meta, row).await?
        }
    };
    let hold = if is_cbapi(&headers) { CBAPI_HOLD } else { Duration::ZERO };
    let json = current(&state, &caller, &meta, row, hold).await?;
    Ok(axum::Json(json).into_response())
}

/// `put file`: the session's uploaded file must exist (and be filled); else a refusal.
async fn resolve_upload(
    state: &CbState,
    caller: &Caller,
    session: &Session,
    parsed: render::Parsed,
) -> Result<Result<(&'static str, Command), Refusal>, CbError> {
    let name = parsed.name;
    let ToRun::PutFile { session_file_id, .. } = &parsed.command else {
        let command = parsed.command.into_command(None).ok_or_else(CbError::internal)?;
        return Ok(Ok((name, command)));
    };
    let file = state.store().cb_session_file(&caller.tenant, session.id, *session_file_id).await?;
    let Some(file_id) = file.and_then(|f| f.file_id) else {
        return Ok(Err(Refusal {
            name: name.to_owned(),
            code: ErrorCode::InvalidRequest,
            message: format!("no uploaded file {session_file_id} in session {}", session.id),
        }));
    };
    let command = parsed.command.into_command(Some(file_id)).ok_or_else(CbError::internal)?;
    Ok(Ok((name, command)))
}

/// Submits the row's action unless it has one (idempotent: the key derives from the row's
/// id, so a submission interrupted by a crash, then repeated, makes one action).
async fn ensure_submitted(
    state: &CbState,
    caller: &Caller,
    meta: &RequestMeta,
    mut row: CbCommandRow,
) -> Result<CbCommandRow, CbError> {
    if row.action_id.is_some() || row.refusal_code.is_some() {
        return Ok(row);
    }
    let Some(request_json) = &row.request_json else { return Ok(row) };
    let request: ActionRequest =
        serde_json::from_str(request_json).map_err(|_| CbError::internal())?;
    let submit_meta = SubmitMeta {
        idempotency_key: Some(idempotency_key(row.id)),
        request_id: meta.request_id.clone(),
        subject: caller.subject.clone(),
    };
    let detail = door_detail(json!({"session_id": row.session_id, "command_id": row.id}));
    let submitted =
        crate::api::actions::submit(&state.api, caller, meta, request, submit_meta, Some(detail))
            .await;
    match submitted {
        Ok(Submitted::Created(action) | Submitted::Replayed(action)) => {
            let id = action.id.to_string();
            state.store().set_cb_command_action(&caller.tenant, row.id, &id).await?;
            row.action_id = Some(id);
            Ok(row)
        }
        // A failure of edrgate itself: nothing was stored, the next read submits again.
        Err(e) if e.status().is_server_error() => Err(CbError::from(e)),
        // A refusal (permission, admission, a backend's limits): the command fails with it,
        // in CB's terms; the client sees `error` and no action runs.
        Err(e) => {
            let code = e.code();
            let message = e.problem().detail;
            state
                .store()
                .refuse_cb_command(&caller.tenant, row.id, code.as_str(), &message)
                .await?;
            row.refusal_code = Some(code.as_str().to_owned());
            row.refusal_message = Some(message);
            Ok(row)
        }
    }
}

/// The command's JSON now, or once final if that comes within `hold`.
async fn current(
    state: &CbState,
    caller: &Caller,
    meta: &RequestMeta,
    row: CbCommandRow,
    hold: Duration,
) -> Result<Value, CbError> {
    let row = ensure_submitted(state, caller, meta, row).await?;
    let Some(action_id) = row.action_id.as_deref() else {
        return render_row(state, caller, &row, None).await;
    };
    let id = Uuid::parse_str(action_id).map_err(|_| CbError::internal())?;
    let hold = hold.min(state.api.max_wait);
    let action = wait_final(state, &caller.tenant, id, hold).await?;
    render_row(state, caller, &row, Some(&action)).await
}

/// The action once its (only) command is final, or after `hold`: woken by the engine's change
/// notifications ([`crate::engine::Engine::wait_action`]), never by polling.
async fn wait_final(
    state: &CbState,
    tenant: &str,
    id: Uuid,
    hold: Duration,
) -> Result<Action, CbError> {
    let engine = &state.api.engine;
    let deadline = tokio::time::Instant::now() + hold;
    let mut action = engine.action(tenant, id).await.map_err(engine_error)?;
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        if action.status.is_terminal() || left.is_zero() {
            return Ok(action);
        }
        action = tokio::select! {
            changed = engine.wait_action(tenant, id, left) => changed.map_err(engine_error)?,
            // Shutting down: answer with what there is rather than hold the drain up.
            () = state.api.shutdown.cancelled() => return Ok(action),
        };
    }
}

fn engine_error(e: edrgate_adapter::ErrorInfo) -> CbError {
    CbError::from(ApiError::from(e))
}

/// Renders a row with its action; a `get file` whose action stored the file fills the
/// session file it announced.
async fn render_row(
    state: &CbState,
    caller: &Caller,
    row: &CbCommandRow,
    action: Option<&Action>,
) -> Result<Value, CbError> {
    let view = CommandRow {
        id: row.id,
        session_id: row.session_id,
        sensor_id: row.sensor_id,
        name: row.name.clone(),
        object: serde_json::from_str(&row.object_json).unwrap_or(Value::Null),
        create_time: row.created_at as f64 / 1000.0,
        file_id: row.file_id,
        username: row.username.clone(),
    };
    let Some(action) = action else {
        let code = row
            .refusal_code
            .as_deref()
            .and_then(|c| serde_json::from_value::<ErrorCode>(json!(c)).ok())
            .unwrap_or(ErrorCode::Internal);
        let message = row.refusal_message.as_deref().unwrap_or("");
        return Ok(render::command_json(&view, &render::State::Refused { code, message }));
    };
    let run = action.runs.first();
    let command = run.and_then(|r| r.commands.first());
    let status = command.map_or(action.status, |c| c.status);
    // A run that failed before its command started (device offline, vendor down) carries
    // the error on the run.
    let error =
        command.and_then(|c| c.error.as_ref()).or_else(|| run.and_then(|r| r.error.as_ref()));
    let result = command.and_then(|c| c.result.as_ref());
    if let (Some(file_id), Some(CommandResult::File { file })) = (row.file_id, result) {
        let size = i64::try_from(file.size).unwrap_or(i64::MAX);
        state.store().fill_cb_session_file(&caller.tenant, file_id, &file.file_id, size).await?;
    }
    let completion =
        status.is_terminal().then(|| action.updated_at.unix_timestamp_nanos() as f64 / 1e9);
    let state = render::State::Action { status, result, error, completion };
    Ok(render::command_json(&view, &state))
}

#[derive(Debug, Deserialize)]
struct GetQuery {
    wait: Option<String>,
}

/// R13 `GET /api/v1/cblr/session/{sid}/command/{cid}` (`?wait=true`).
async fn get_command(
    State(state): State<CbState>,
    CbCaller(caller): CbCaller,
    meta: RequestMeta,
    Path((sid, cid)): Path<(String, String)>,
    Query(query): Query<GetQuery>,
    headers: HeaderMap,
) -> Result<Response, CbError> {
    let session = session(&state, &caller, &sid).await?;
    let cid = command_id(&cid)?;
    let row = state
        .store()
        .cb_command(&caller.tenant, session.id, cid)
        .await?
        .ok_or_else(|| CbError::not_found("no such command"))?;
    let wait = query.wait.as_deref().is_some_and(|w| w.eq_ignore_ascii_case("true") || w == "1");
    let hold = if wait {
        // Splunk's one `?wait=true` GET (SPL `_execute_live_session_command`).
        state.api.max_wait
    } else if is_cbapi(&headers) {
        CBAPI_HOLD
    } else {
        Duration::ZERO
    };
    let json = current(&state, &caller, &meta, row, hold).await?;
    Ok(axum::Json(json).into_response())
}

#[derive(Debug, Deserialize)]
struct ListQuery {
    count: Option<i64>,
}

/// R14 `GET /api/v1/cblr/session/{sid}/command`: the session's commands, oldest first.
async fn list_commands(
    State(state): State<CbState>,
    CbCaller(caller): CbCaller,
    meta: RequestMeta,
    Path(sid): Path<String>,
    Query(query): Query<ListQuery>,
) -> Result<Response, CbError> {
    let session = session(&state, &caller, &sid).await?;
    let count = query.count.unwrap_or(DEFAULT_COUNT).clamp(1, MAX_COUNT);
    let rows = state.store().cb_commands(&caller.tenant, session.id, count).await?;
    let mut out = Vec::with_capacity(rows.len());
    for row in rows {
        out.push(current(&state, &caller, &meta, row, Duration::ZERO).await?);
    }
    Ok(axum::Json(out).into_response())
}

/// R15 `PUT /api/v1/cblr/session/{sid}/command/{cid}`: cancel if still pending (CLI0 sends
/// `{"id", "status": "cancel"}`, XSOAR `{"cmdid"}`; the body is not needed). A cancelled
/// command then reads `error` / ERROR_CANCELLED (front-doors.md §1.4).
async fn cancel_command(
    State(state): State<CbState>,
    CbCaller(caller): CbCaller,
    meta: RequestMeta,
    Path((sid, cid)): Path<(String, String)>,
) -> Result<Response, CbError> {
    let session = session(&state, &caller, &sid).await?;
    let cid = command_id(&cid)?;
    let row = state
        .store()
        .cb_command(&caller.tenant, session.id, cid)
        .await?
        .ok_or_else(|| CbError::not_found("no such command"))?;
    let row = ensure_submitted(&state, &caller, &meta, row).await?;
    if let Some(action_id) = row.action_id.as_deref().and_then(|a| Uuid::parse_str(a).ok()) {
        let cancelled: Result<Action, ApiError> = async {
            let action = state.api.engine.action(&caller.tenant, action_id).await?;
            caller.require_commands(action.commands.iter().map(Command::kind))?;
            Ok(state.api.engine.cancel(&caller.tenant, action_id).await?)
        }
        .await;
        let mut entry = match &cancelled {
            Ok(_) => AuditRecord::new(AuditEvent::ActionCancel, "accepted", 200),
            Err(error) => audit::refused(AuditEvent::ActionCancel, error),
        };
        entry.detail =
            Some(door_detail(json!({"session_id": row.session_id, "command_id": row.id})));
        audit::record(&state.api, &caller, &meta, entry.for_action(action_id)).await;
        match cancelled {
            // Already final: the answer is the command as it ended.
            Err(e) if e.code() == ErrorCode::Conflict => {}
            Err(e) => return Err(CbError::from(e)),
            Ok(_) => {}
        }
    }
    let json = current(&state, &caller, &meta, row, Duration::ZERO).await?;
    Ok(axum::Json(json).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_cbapi_is_held() {
        let mut headers = HeaderMap::new();
        assert!(!is_cbapi(&headers));
        headers.insert(USER_AGENT, "cbapi/2.0.0 Python/3.12.3".parse().unwrap());
        assert!(is_cbapi(&headers));
        headers.insert(USER_AGENT, "python-requests/2.31".parse().unwrap());
        assert!(!is_cbapi(&headers));
    }

    #[test]
    fn ids_and_keys() {
        assert_eq!(command_id("12").unwrap(), 12);
        assert_eq!(command_id("0").unwrap_err().status(), axum::http::StatusCode::NOT_FOUND);
        assert!(command_id("x").is_err());
        assert_eq!(idempotency_key(7), "carbonblack-command-7");
    }
}
