//! `/v1/audit` (the tenant's audit trail, as pages or as JSON lines) and
//! `/v1/admin/reload`; plus [`record`], which the audited handlers call.

use axum::body::Body;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use time::format_description::well_known::Rfc3339;
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use super::ApiState;
use super::problem::{ApiError, Json, Problem, Query};
use super::reload::{ReloadError, ReloadReport, tenant_view};
use super::request::RequestMeta;
use crate::audit::{Actor, AuditEntry, AuditEvent, AuditQuery, AuditRecord, MAX_PAGE};
use crate::auth::{Caller, Permission};

/// A page of audit entries, newest first.
#[derive(Debug, Serialize, ToSchema)]
pub struct AuditList {
    pub items: Vec<AuditEntry>,
    /// Pass as `cursor` to get the next page; `null` on the last page.
    #[schema(required = true)]
    pub next_cursor: Option<String>,
}

/// Query of `GET /v1/audit`.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct AuditParams {
    /// Only this kind of event.
    #[param(value_type = Option<AuditEvent>)]
    pub event: Option<String>,
    /// Only this caller (`sub`). Callers without the admin permission see only their own.
    pub subject: Option<String>,
    /// Only entries about this action.
    pub action_id: Option<Uuid>,
    /// Entries at or after this instant (RFC 3339).
    #[param(format = DateTime)]
    pub since: Option<String>,
    /// Entries before this instant (RFC 3339).
    #[param(format = DateTime)]
    pub until: Option<String>,
    /// `next_cursor` of the previous page.
    #[param(pattern = "^[0-9]{0,18}$")]
    pub cursor: Option<String>,
    /// Page size, 1 to 1000 (default 100).
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<u32>,
    /// `jsonl`: every matching entry as JSON lines (`application/x-ndjson`), streamed, for
    /// export; `cursor` and `limit` then do not apply.
    pub format: Option<AuditFormat>,
}

/// The export format of `GET /v1/audit`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum AuditFormat {
    /// JSON lines (`application/x-ndjson`).
    Jsonl,
}

/// List audit entries
///
/// The tenant's audit trail: every submission, cancel, file upload and download and configuration reload, with who
/// asked (`sub`, client id), from where (through trusted proxies only), the request id, the
/// targets and commands, and the outcome; `action_status` is the action's status now.
#[utoipa::path(
    get,
    path = "/v1/audit",
    tag = "audit",
    operation_id = "ListAudit",
    params(AuditParams),
    responses(
        (status = 200, description = "A page of entries, newest first (or JSON lines with `format=jsonl`)", content(
            (AuditList = "application/json"),
            (AuditEntry = "application/x-ndjson"),
        )),
        (status = 400, description = "Bad filter", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing or bad token", body = Problem, content_type = "application/problem+json"),
    ),
    security(("BearerAuth" = [])),
)]
pub(crate) async fn list_audit(
    State(state): State<ApiState>,
    caller: Caller,
    Query(params): Query<AuditParams>,
) -> Result<Response, ApiError> {
    let mut query = audit_query(&params)?;
    // Across the tenant for admins; everyone else reads their own entries.
    if !caller.has(Permission::Admin) {
        match (&query.subject, &caller.subject) {
            (Some(asked), Some(own)) if asked != own => {
                return Err(caller.require(Permission::Admin).unwrap_err().into());
            }
            (_, own) => query.subject = Some(own.clone().unwrap_or_default()),
        }
    }
    if params.format == Some(AuditFormat::Jsonl) {
        return Ok(export(state, caller.tenant, query));
    }
    let store = state.engine.store();
    let (items, next) = store.audit(&caller.tenant, &query).await.map_err(|error| {
        tracing::error!(%error, "audit query failed");
        ApiError::internal()
    })?;
    Ok(Json(AuditList { items, next_cursor: next.map(|seq| seq.to_string()) }).into_response())
}

/// Streams every matching entry as JSON lines, page by page, so an export of any size holds
/// one page in memory.
fn export(state: ApiState, tenant: String, mut query: AuditQuery) -> Response {
    query.limit = MAX_PAGE;
    let pages = futures::stream::unfold(Some(query), move |query| {
        let (state, tenant) = (state.clone(), tenant.clone());
        async move {
            let mut query = query?;
            match state.engine.store().audit(&tenant, &query).await {
                Ok((items, next)) => {
                    let mut chunk = Vec::new();
                    for item in &items {
                        if serde_json::to_writer(&mut chunk, item).is_ok() {
                            chunk.push(b'\n');
                        }
                    }
                    query.before = next;
                    Some((Ok::<_, std::io::Error>(chunk), next.map(|_| query)))
                }
                Err(error) => {
                    // The status line is gone already: cutting the body short is the only way
                    // to tell the client the export is incomplete.
                    tracing::error!(%error, "audit export failed");
                    Some((Err(std::io::Error::other("audit export failed")), None))
                }
            }
        }
    });
    ([(header::CONTENT_TYPE, "application/x-ndjson")], Body::from_stream(pages)).into_response()
}

fn audit_query(params: &AuditParams) -> Result<AuditQuery, ApiError> {
    let limit = params.limit.unwrap_or(100);
    if !(1..=MAX_PAGE).contains(&limit) {
        return Err(ApiError::invalid(format!("limit: between 1 and {MAX_PAGE}")));
    }
    let event = match params.event.as_deref() {
        None => None,
        Some(e) => Some(AuditEvent::parse(e).ok_or_else(|| {
            let known: Vec<&str> = AuditEvent::ALL.iter().map(|e| e.as_str()).collect();
            ApiError::invalid(format!("event: one of {}", known.join(", ")))
        })?),
    };
    let instant = |name: &str, text: Option<&str>| -> Result<Option<i64>, ApiError> {
        text.map(|t| {
            time::OffsetDateTime::parse(t, &Rfc3339)
                .map(|at| i64::try_from(at.unix_timestamp_nanos() / 1_000_000).unwrap_or(i64::MAX))
                .map_err(|_| {
                    ApiError::invalid(format!("{name}: an RFC 3339 date-time is expected"))
                })
        })
        .transpose()
    };
    let before = match params.cursor.as_deref() {
        None | Some("") => None,
        // Digits only, as declared: `parse` alone would take a sign.
        Some(c) => Some(
            c.bytes()
                .all(|b| b.is_ascii_digit())
                .then(|| c.parse::<i64>().ok())
                .flatten()
                .ok_or_else(|| ApiError::invalid("cursor: not a cursor of this listing"))?,
        ),
    };
    Ok(AuditQuery {
        event,
        subject: params.subject.clone(),
        action_id: params.action_id,
        since: instant("since", params.since.as_deref())?,
        until: instant("until", params.until.as_deref())?,
        before,
        limit,
    })
}

/// Reload configuration
///
/// Re-reads the configuration file and applies its `tenants` (backends, credentials,
/// routing) to new actions; runs in flight finish undisturbed. A configuration that does not
/// validate is refused with every problem listed, and the running one keeps serving. This
/// acts on the whole gateway, so it needs the operator permission (its own scope,
/// `edrgate:operator` by default, never implied by a tenant's `admin`); equivalent to sending
/// the process SIGHUP. The answer is for the operator and names every tenant's backends; the
/// audit entry, which the caller's tenant's admins read, keeps only that tenant's part.
#[utoipa::path(
    post,
    path = "/v1/admin/reload",
    tag = "admin",
    operation_id = "ReloadConfig",
    responses(
        (status = 200, description = "Reloaded", body = ReloadReport),
        (status = 401, description = "Missing or bad token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "The token lacks the operator permission", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "Not started from a configuration file", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "The new configuration is invalid; nothing changed", body = Problem, content_type = "application/problem+json"),
    ),
    security(("BearerAuth" = [])),
)]
pub(crate) async fn reload(
    State(state): State<ApiState>,
    caller: Caller,
    meta: RequestMeta,
) -> Result<Json<ReloadReport>, ApiError> {
    if let Err(refusal) = caller.require(Permission::Operator) {
        let error = ApiError::from(refusal);
        record(&state, &caller, &meta, refused(AuditEvent::ConfigReload, &error)).await;
        return Err(error);
    }
    let result = state.reloader.reload().await;
    let (outcome, http_status, error_code) = match &result {
        Ok(_) => ("ok", 200, None),
        Err(ReloadError::NoFile) => ("refused", 409, Some("conflict")),
        Err(ReloadError::Invalid(_)) => ("refused", 422, Some("invalid_request")),
    };
    let mut entry = AuditRecord::new(AuditEvent::ConfigReload, outcome, http_status);
    entry.error_code = error_code.map(str::to_owned);
    entry.detail = Some(tenant_view(&caller.tenant, &result)).filter(|d| !d.is_null());
    record(&state, &caller, &meta, entry).await;
    match result {
        Ok(report) => Ok(Json(report)),
        Err(e @ ReloadError::NoFile) => {
            Err(ApiError::new(edrgate_adapter::ErrorCode::Conflict, e.to_string()))
        }
        Err(e @ ReloadError::Invalid(_)) => Err(ApiError::with_status(
            StatusCode::UNPROCESSABLE_ENTITY,
            edrgate_adapter::ErrorCode::InvalidRequest,
            e.to_string(),
        )),
    }
}

/// Appends an audit entry for `caller`'s request. A failure to write it is logged loudly but
/// does not undo what the request did (the action is stored already).
pub async fn record(state: &ApiState, caller: &Caller, meta: &RequestMeta, record: AuditRecord) {
    let actor = Actor {
        tenant: caller.tenant.clone(),
        subject: caller.subject.clone(),
        client_id: caller.client_id.clone(),
        request_id: meta.request_id.clone(),
        source: meta.client.map(|ip| ip.to_string()),
    };
    if let Err(error) = state.engine.store().append_audit(&actor, &record).await {
        tracing::error!(%error, event = record.event.as_str(), tenant = %caller.tenant, "could not write the audit trail");
    }
}

/// The outcome columns of a request that failed with `error`.
/// Checks the admin permission (the tenant's administration routes), recording a refusal of
/// `event` in the audit trail.
pub(crate) async fn require_admin(
    state: &ApiState,
    caller: &Caller,
    meta: &RequestMeta,
    event: Option<AuditEvent>,
) -> Result<(), ApiError> {
    if let Err(refusal) = caller.require(crate::auth::Permission::Admin) {
        let error = ApiError::from(refusal);
        if let Some(event) = event {
            record(state, caller, meta, refused(event, &error)).await;
        }
        return Err(error);
    }
    Ok(())
}

pub fn refused(event: AuditEvent, error: &ApiError) -> AuditRecord {
    let mut entry = AuditRecord::new(event, "refused", error.status().as_u16());
    entry.error_code = Some(error.code().as_str().to_owned());
    entry
}
