//! Live-response sessions (front-doors.md §1.2 R7–R11). A session is virtual: edrgate does
//! the vendor work per command, so a session is a record, `active` as soon as it is made
//! (§1.4, §1.9). What it advertises comes from the device's real per-device capabilities
//! (the same [`edrgate_adapter::DeviceSupport`] as `GET /v1/devices`) at creation:
//! `supported_commands` (CB names, CBREF §3.1; cbapi refuses anything else client-side) and
//! `os_type`. A session idle longer than its `session_timeout` is over, as on a CB server
//! (carbonblack.md §3.2): every route then answers `404 Session {sid} not found`.

use axum::Router;
use axum::extract::{Path, Query, State};
use axum::routing::get;
use serde::Deserialize;
use serde_json::{Value, json};

use super::sensors::{self, Found};
use super::{CbCaller, CbError, CbState, ids, render};
use crate::api::problem::ApiError;
use crate::auth::{Caller, Permission};
use crate::store::cb_front_door::{CbSessionRow, NewCbSession, SESSION_ACTIVE, SESSION_CLOSED};
use crate::store::now_ms;

/// CB's defaults (carbonblack.md §3.1): seconds between commands before the session ends,
/// the sensor wait, and the check-in wait.
pub const DEFAULT_SESSION_TIMEOUT: i64 = 300;
pub const DEFAULT_SENSOR_WAIT_TIMEOUT: i64 = 120;
pub const DEFAULT_CHECK_IN_TIMEOUT: i64 = 1200;
/// Longest timeout a client may ask for (a day): a session is a record, but a forgotten one
/// should still end.
const MAX_TIMEOUT: i64 = 86_400;
/// Activity is written at most this often per session (cbapi polls a command every 0.5 s).
const TOUCH_EVERY_MS: i64 = 10_000;
/// Sessions `GET /api/v1/cblr/session` lists at most, newest first.
const MAX_LISTED: i64 = 1000;

pub(super) fn routes() -> Router<CbState> {
    Router::new()
        .route("/api/v1/cblr/session", get(list).post(create))
        .route("/api/v1/cblr/session/{sid}", get(get_one).put(update))
        .route("/api/v1/cblr/session/{sid}/keepalive", get(keepalive))
}

/// An open session, resolved for a caller: what a command route needs to act on its device.
#[derive(Clone, Debug)]
pub struct Session {
    pub id: i64,
    pub sensor_id: i64,
    pub tenant: String,
    pub backend: String,
    pub device_id: String,
    /// CB `os_type` (1: Windows).
    pub os_type: i64,
    pub hostname: String,
    /// The CB command names the session advertised (`supported_commands`).
    pub supported_commands: Vec<String>,
}

impl Session {
    /// Whether the session advertised the CB command `name`.
    pub fn supports(&self, name: &str) -> bool {
        self.supported_commands.iter().any(|s| s == name)
    }
}

/// The caller's session `sid` (a path segment), if it is open; counts as activity. Unknown,
/// another tenant's, closed or expired: `404 Session {sid} not found`, the answer on which
/// cbapi re-acquires a session and re-POSTs a command (LRAPI `_lr_post_command`). Command
/// routes call this **before** storing anything, so that answer never follows a stored
/// action (front-doors.md §1.5).
pub async fn open_session(state: &CbState, caller: &Caller, sid: &str) -> Result<Session, CbError> {
    let lost = || CbError::session_not_found(sid);
    let Some(id) = ids::parse(sid) else { return Err(lost()) };
    let store = state.store();
    let Some(row) = store.cb_session(&caller.tenant, id).await? else { return Err(lost()) };
    let now = now_ms();
    if !row.is_open(now) {
        expire(state, &row, now).await?;
        return Err(lost());
    }
    if now.saturating_sub(row.last_active_at) >= TOUCH_EVERY_MS
        && !store.cb_touch_session(&caller.tenant, id, now).await?
    {
        // Closed meanwhile.
        return Err(lost());
    }
    let Some(sensor) = store.cb_sensor(&caller.tenant, row.sensor_id).await? else {
        return Err(lost());
    };
    Ok(Session {
        id: row.id,
        sensor_id: row.sensor_id,
        tenant: row.tenant.clone(),
        backend: sensor.backend,
        device_id: sensor.device_id,
        os_type: row.os_type,
        hostname: row.hostname.clone(),
        supported_commands: row.supported(),
    })
}

/// Records that an active session past its timeout is over.
async fn expire(state: &CbState, row: &CbSessionRow, now: i64) -> Result<(), CbError> {
    if row.status == SESSION_ACTIVE {
        state.store().cb_close_session(&row.tenant, row.id, now).await?;
    }
    Ok(())
}

/// The CB command names `found`'s device runs and `caller` may submit, in a real sensor's
/// order (CBREF §3.1): cbapi refuses every other name before sending it (CBLR
/// `_lr_post_command`), so advertising only these is what keeps clients from sending
/// commands that cannot run.
pub fn supported_commands(found: &Found, caller: &Caller) -> Vec<String> {
    render::COMMANDS
        .iter()
        .filter(|(_, kind)| found.support.commands.iter().any(|c| c.command == *kind))
        .filter(|(_, kind)| caller.require_commands([*kind]).is_ok())
        .map(|(name, _)| (*name).to_owned())
        .collect()
}

/// The session object (§1.3, CBREF §3.1). `drives` and `current_working_directory` are the
/// empty values of a session that has not reported them (CBREF §2.2): no backend behind the
/// door reports a device's drives.
fn render_session(row: &CbSessionRow, now: i64) -> Value {
    let status = if row.is_open(now) { SESSION_ACTIVE } else { SESSION_CLOSED };
    #[allow(clippy::cast_precision_loss)] // epoch milliseconds fit an f64 exactly until 2255
    let create_time = row.created_at as f64 / 1000.0;
    json!({
        "id": row.id,
        "sensor_id": row.sensor_id,
        "status": status,
        "hostname": row.hostname,
        "address": null,
        "os_version": "",
        "os_type": row.os_type,
        "current_working_directory": "",
        "drives": [],
        "supported_commands": row.supported(),
        "storage_size": "0",
        "storage_ttl": 7.0,
        "create_time": create_time,
        "session_timeout": row.session_timeout,
        "sensor_wait_timeout": row.sensor_wait_timeout,
        "check_in_timeout": row.check_in_timeout,
    })
}

fn require_read(caller: &Caller) -> Result<(), CbError> {
    caller.require(Permission::Read).map_err(|r| CbError::from(ApiError::from(r)))
}

#[derive(Debug, Deserialize)]
struct ListParams {
    active_only: Option<String>,
}

/// R7: the tenant's sessions, newest first; `active_only=true` keeps the open ones (cbapi
/// then keeps those of its sensor in `pending`/`active`, CBLR `_get_or_create_session`).
async fn list(
    State(state): State<CbState>,
    CbCaller(caller): CbCaller,
    Query(params): Query<ListParams>,
) -> Result<axum::Json<Value>, CbError> {
    require_read(&caller)?;
    let active_only = params.active_only.as_deref().is_some_and(|v| v.eq_ignore_ascii_case("true"));
    let rows = state.store().cb_sessions(&caller.tenant, active_only, MAX_LISTED).await?;
    let now = now_ms();
    let mut out = Vec::with_capacity(rows.len());
    for row in &rows {
        if !row.is_open(now) {
            expire(&state, row, now).await?;
            if active_only {
                continue;
            }
        }
        out.push(render_session(row, now));
    }
    Ok(axum::Json(Value::Array(out)))
}

/// R8's body: `sensor_id` (an integer, or its decimal text), and XSOAR's timeouts; other
/// fields are tolerated.
#[derive(Debug, Deserialize)]
struct CreateBody {
    sensor_id: Value,
    session_timeout: Option<Value>,
    sensor_wait_timeout: Option<Value>,
}

/// A timeout field as seconds in 1..=[`MAX_TIMEOUT`]; absent: `default`.
fn timeout(name: &str, value: Option<&Value>, default: i64) -> Result<i64, CbError> {
    let seconds = match value {
        None | Some(Value::Null) => return Ok(default),
        Some(Value::Number(n)) => n.as_i64(),
        Some(Value::String(s)) => s.trim().parse().ok(),
        Some(_) => None,
    };
    seconds
        .filter(|s| (1..=MAX_TIMEOUT).contains(s))
        .ok_or_else(|| CbError::bad_request(format!("{name}: 1 to {MAX_TIMEOUT} seconds")))
}

/// R8: a session on the sensor's device, active at once.
async fn create(
    State(state): State<CbState>,
    CbCaller(caller): CbCaller,
    body: axum::body::Bytes,
) -> Result<axum::Json<Value>, CbError> {
    require_read(&caller)?;
    let body: CreateBody = serde_json::from_slice(&body)
        .map_err(|e| CbError::bad_request(format!("the body is not a session request: {e}")))?;
    let sensor_id = match &body.sensor_id {
        Value::Number(n) => n.to_string(),
        Value::String(s) => s.clone(),
        _ => return Err(CbError::bad_request("sensor_id: an integer")),
    };
    let session_timeout =
        timeout("session_timeout", body.session_timeout.as_ref(), DEFAULT_SESSION_TIMEOUT)?;
    let sensor_wait_timeout = timeout(
        "sensor_wait_timeout",
        body.sensor_wait_timeout.as_ref(),
        DEFAULT_SENSOR_WAIT_TIMEOUT,
    )?;
    let sensor = ids::sensor(&state, &caller.tenant, &sensor_id).await?;
    let found = sensors::device(&state, &sensor).await?;
    let new = NewCbSession {
        tenant: caller.tenant.clone(),
        sensor_id: sensor.id,
        hostname: found.device.hostname.clone(),
        os_type: sensors::os_type(found.device.os.as_deref()),
        supported: supported_commands(&found, &caller),
        session_timeout,
        sensor_wait_timeout,
        check_in_timeout: DEFAULT_CHECK_IN_TIMEOUT,
    };
    let row = state.store().cb_create_session(&new).await?;
    tracing::info!(
        tenant = %caller.tenant, session_id = row.id, sensor_id = sensor.id,
        backend = %sensor.backend, "carbonblack door: session opened"
    );
    Ok(axum::Json(render_session(&row, now_ms())))
}

/// The caller's session `sid` in any state but expired (a closed session still shows as
/// `close`, as on CB); else `404 Session {sid} not found`.
async fn visible(state: &CbState, caller: &Caller, sid: &str) -> Result<CbSessionRow, CbError> {
    let lost = || CbError::session_not_found(sid);
    let Some(id) = ids::parse(sid) else { return Err(lost()) };
    let Some(row) = state.store().cb_session(&caller.tenant, id).await? else {
        return Err(lost());
    };
    let now = now_ms();
    if row.status == SESSION_ACTIVE && !row.is_open(now) {
        expire(state, &row, now).await?;
        return Err(lost());
    }
    Ok(row)
}

/// R9.
async fn get_one(
    State(state): State<CbState>,
    CbCaller(caller): CbCaller,
    Path(sid): Path<String>,
) -> Result<axum::Json<Value>, CbError> {
    require_read(&caller)?;
    let row = visible(&state, &caller, &sid).await?;
    Ok(axum::Json(render_session(&row, now_ms())))
}

#[derive(Debug, Deserialize)]
struct UpdateBody {
    status: Option<String>,
}

/// R10: `status: "close"` closes (cbapi sends the whole object back, XSOAR
/// `{session_id, status}`); any other body changes nothing. Closing twice is not an error.
async fn update(
    State(state): State<CbState>,
    CbCaller(caller): CbCaller,
    Path(sid): Path<String>,
    body: axum::body::Bytes,
) -> Result<axum::Json<Value>, CbError> {
    require_read(&caller)?;
    let body: UpdateBody = serde_json::from_slice(&body)
        .map_err(|e| CbError::bad_request(format!("the body is not a session update: {e}")))?;
    let mut row = visible(&state, &caller, &sid).await?;
    if body.status.as_deref().is_some_and(|s| s.eq_ignore_ascii_case(SESSION_CLOSED)) {
        let now = now_ms();
        state.store().cb_close_session(&caller.tenant, row.id, now).await?;
        if let Some(closed) = state.store().cb_session(&caller.tenant, row.id).await? {
            row = closed;
        }
        tracing::info!(tenant = %caller.tenant, session_id = row.id, "carbonblack door: session closed");
    }
    Ok(axum::Json(render_session(&row, now_ms())))
}

/// R11: counts as activity (cbapi sends it every 30 s with `keepalive_sessions`; Splunk's
/// "reset session"); `404` once the session is over.
async fn keepalive(
    State(state): State<CbState>,
    CbCaller(caller): CbCaller,
    Path(sid): Path<String>,
) -> Result<axum::Json<Value>, CbError> {
    require_read(&caller)?;
    let session = open_session(&state, &caller, &sid).await?;
    let row = state
        .store()
        .cb_session(&caller.tenant, session.id)
        .await?
        .ok_or_else(|| CbError::session_not_found(&sid))?;
    Ok(axum::Json(render_session(&row, now_ms())))
}
