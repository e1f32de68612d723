//! R16–R19: a session's files (front-doors.md §1.2, carbonblack.md §2.9–§2.13), each an
//! integer id over a file in edrgate's file store, so caps, streaming, custody and retention
//! are the store's ([`crate::api::files::upload_audited`], [`crate::api::files::file_content_for`]).
//!
//! (Owned by the commands helper; the foundation's `mod.rs` merges [`routes`].)
//!
//! Two kinds: uploads (`POST …/file`, multipart field `file`, for `put file`), and the files
//! of `get file` commands, whose id the command's POST answer already carries
//! (front-doors.md §1.9) and which point at the edrgate file once the action stored it;
//! their content is a `404` before.

use axum::Router;
use axum::extract::{Path, Request, State};
use axum::http::HeaderMap;
use axum::http::HeaderValue;
use axum::http::header::CONNECTION;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use edrgate_adapter::CommandResult;
use serde_json::{Value, json};
use uuid::Uuid;

use super::{CbCaller, CbError, CbState};
use crate::api::request::RequestMeta;
use crate::auth::Caller;
use crate::store::cb_commands::CbSessionFileRow;

pub fn routes() -> Router<CbState> {
    Router::new()
        .route("/api/v1/cblr/session/{sid}/file", get(list_files).post(upload))
        .route("/api/v1/cblr/session/{sid}/file/{fid}", get(file).delete(delete))
        .route("/api/v1/cblr/session/{sid}/file/{fid}/content", get(content))
}

fn file_id(raw: &str) -> Result<i64, CbError> {
    raw.trim()
        .parse::<i64>()
        .ok()
        .filter(|id| *id > 0)
        .ok_or_else(|| CbError::not_found("no such file"))
}

/// The CB file object (carbonblack.md §2.9–§2.12): `status` 0 is ok; `size_uploaded` what
/// the server holds so far (all of it, or nothing while a `get file` runs).
fn file_json(row: &CbSessionFileRow) -> Value {
    json!({
        "id": row.id,
        "session_id": row.session_id,
        "file_name": row.name,
        "size": row.size,
        "size_uploaded": if row.file_id.is_some() { row.size } else { 0 },
        "status": 0,
        "delete": false,
    })
}

/// A `get file`'s session file with its edrgate file once the command's action stored it.
async fn filled(
    state: &CbState,
    caller: &Caller,
    mut row: CbSessionFileRow,
) -> Result<CbSessionFileRow, CbError> {
    let (None, Some(command_id)) = (&row.file_id, row.command_id) else { return Ok(row) };
    let command = state.store().cb_command(&caller.tenant, row.session_id, command_id).await?;
    let Some(action_id) = command.and_then(|c| c.action_id).and_then(|a| Uuid::parse_str(&a).ok())
    else {
        return Ok(row);
    };
    let action = state.api.engine.action(&caller.tenant, action_id).await;
    let Ok(action) = action else { return Ok(row) };
    let result =
        action.runs.first().and_then(|r| r.commands.first()).and_then(|c| c.result.as_ref());
    if let Some(CommandResult::File { file }) = result {
        let size = i64::try_from(file.size).unwrap_or(i64::MAX);
        state.store().fill_cb_session_file(&caller.tenant, row.id, &file.file_id, size).await?;
        row.file_id = Some(file.file_id.clone());
        row.size = size;
    }
    Ok(row)
}

async fn one(
    state: &CbState,
    caller: &Caller,
    session_id: i64,
    fid: &str,
) -> Result<CbSessionFileRow, CbError> {
    let row = state
        .store()
        .cb_session_file(&caller.tenant, session_id, file_id(fid)?)
        .await?
        .ok_or_else(|| CbError::not_found("no such file"))?;
    filled(state, caller, row).await
}

/// R16 `POST /api/v1/cblr/session/{sid}/file`: the multipart part `file` (cbapi `files=`,
/// curl `-F file=@…`) streamed into edrgate's file store under the tenant's upload cap.
async fn upload(
    State(state): State<CbState>,
    CbCaller(caller): CbCaller,
    meta: RequestMeta,
    Path(sid): Path<String>,
    request: Request,
) -> Result<Response, CbError> {
    let session = super::commands::session(&state, &caller, &sid).await?;
    let stored = crate::api::files::upload_audited(&state.api, &caller, &meta, None, request).await;
    let file = match stored {
        Ok(file) => file,
        Err(error) => {
            // The body may be partly unread: this connection must not carry another request.
            let mut response = CbError::from(error).into_response();
            response.headers_mut().insert(CONNECTION, HeaderValue::from_static("close"));
            return Ok(response);
        }
    };
    let size = i64::try_from(file.size).unwrap_or(i64::MAX);
    let row = state
        .store()
        .insert_cb_session_file(&caller.tenant, session.id, &file.id, &file.name, size)
        .await?;
    Ok(axum::Json(file_json(&row)).into_response())
}

/// R17 `GET /api/v1/cblr/session/{sid}/file`.
async fn list_files(
    State(state): State<CbState>,
    CbCaller(caller): CbCaller,
    Path(sid): Path<String>,
) -> Result<Response, CbError> {
    let session = super::commands::session(&state, &caller, &sid).await?;
    let rows = state.store().cb_session_files(&caller.tenant, session.id).await?;
    let mut out = Vec::with_capacity(rows.len());
    for row in rows {
        out.push(file_json(&filled(&state, &caller, row).await?));
    }
    Ok(axum::Json(out).into_response())
}

/// R17 `GET /api/v1/cblr/session/{sid}/file/{fid}`.
async fn file(
    State(state): State<CbState>,
    CbCaller(caller): CbCaller,
    Path((sid, fid)): Path<(String, String)>,
) -> Result<Response, CbError> {
    let session = super::commands::session(&state, &caller, &sid).await?;
    let row = one(&state, &caller, session.id, &fid).await?;
    Ok(axum::Json(file_json(&row)).into_response())
}

/// R18 `DELETE /api/v1/cblr/session/{sid}/file/{fid}`: the session forgets the file. The
/// edrgate file stays under the store's retention: it is evidence with a custody record, and
/// a `put file` may still be sending it.
async fn delete(
    State(state): State<CbState>,
    CbCaller(caller): CbCaller,
    Path((sid, fid)): Path<(String, String)>,
) -> Result<Response, CbError> {
    let session = super::commands::session(&state, &caller, &sid).await?;
    let fid = file_id(&fid)?;
    if !state.store().delete_cb_session_file(&caller.tenant, session.id, fid).await? {
        return Err(CbError::not_found("no such file"));
    }
    Ok(axum::Json(json!({})).into_response())
}

/// R19 `GET /api/v1/cblr/session/{sid}/file/{fid}/content`: raw bytes, streamed.
async fn content(
    State(state): State<CbState>,
    CbCaller(caller): CbCaller,
    meta: RequestMeta,
    Path((sid, fid)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Response, CbError> {
    let session = super::commands::session(&state, &caller, &sid).await?;
    let row = one(&state, &caller, session.id, &fid).await?;
    let Some(edrgate_file) = row.file_id else {
        return Err(CbError::not_found(
            "the file is not there yet: its get file command has not completed",
        ));
    };
    crate::api::files::file_content_for(&state.api, &caller, &meta, edrgate_file, &headers)
        .await
        .map_err(CbError::from)
}
