//! HTTP surface: routes of §2 and §7.4, the auth/LR/fault gate, and CB-like headers.

use std::collections::HashMap;
use std::io;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, Multipart, Path, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::{Next, from_fn_with_state};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use futures::StreamExt;
use serde_json::{Map, Value, json};

use super::state::ApiError;
use super::{Simulator, archive};
use edrgate_simkit::Injected;

type Params = Query<HashMap<String, String>>;

pub(crate) fn router(sim: Simulator) -> Router {
    let max_upload = sim.with(|rt, _| rt.cfg.max_upload_bytes);
    let cblr = Router::new()
        .route("/session", get(list_sessions).post(create_session))
        .route("/session/{sid}", get(get_session).put(put_session))
        .route("/session/{sid}/keepalive", get(keepalive))
        .route("/session/{sid}/archive", get(session_archive))
        .route("/session/{sid}/command", get(list_commands).post(create_command))
        .route("/session/{sid}/command/{cid}", get(get_command).put(cancel_command))
        .route(
            "/session/{sid}/file",
            get(list_files).post(upload_file).layer(DefaultBodyLimit::max(max_upload)),
        )
        .route("/session/{sid}/file/{fid}", get(get_file).put(put_file).delete(delete_file))
        .route("/session/{sid}/file/{fid}/content", get(file_content));
    Router::new()
        .route("/api/info", get(info))
        .route("/api/v1/storage/events/partition", get(event_partitions))
        .route("/api/v1/sensor", get(sensors_v1))
        .route("/api/v1/sensor/{id}", get(sensor).put(update_sensor))
        .route("/api/v2/sensor", get(sensors_v2))
        .nest("/api/v1/cblr", cblr)
        .layer(from_fn_with_state(sim.clone(), gate))
        .with_state(sim)
}

// ----- responses -----------------------------------------------------------------------------

/// JSON with the content type the real server sends (REC).
fn json_response(status: StatusCode, v: &Value) -> Response {
    (status, [(header::CONTENT_TYPE, "application/json; charset=utf-8")], v.to_string())
        .into_response()
}

fn ok(v: &Value) -> Response {
    json_response(StatusCode::OK, v)
}

fn text(status: StatusCode, msg: impl Into<String>) -> Response {
    (status, [(header::CONTENT_TYPE, "text/plain; charset=utf-8")], msg.into()).into_response()
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        match self {
            // §5.3: cbapi reconnects only when the 404 text starts with `Session`.
            Self::SessionNotFound(sid) => {
                text(StatusCode::NOT_FOUND, format!("Session {sid} not found"))
            }
            Self::NotFound(m) => text(StatusCode::NOT_FOUND, m),
            Self::BadRequest(m) => text(StatusCode::BAD_REQUEST, m),
            Self::Internal(m) => text(StatusCode::INTERNAL_SERVER_ERROR, m),
        }
    }
}

type ApiResult = Result<Response, ApiError>;

fn parse_object(body: &Bytes) -> Result<Map<String, Value>, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(Map::new());
    }
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(_) => Err(ApiError::BadRequest("expected a JSON object".into())),
        Err(e) => Err(ApiError::BadRequest(format!("invalid JSON: {e}"))),
    }
}

fn flag(params: &HashMap<String, String>, key: &str) -> bool {
    params.get(key).is_some_and(|v| v.eq_ignore_ascii_case("true") || v == "1")
}

// ----- gate: auth, LR switch, headers (faults are simkit's layer, in front) ------------------

/// What nginx in front of the Flask app answers when the backend is unavailable, or (for the
/// 429 simkit injects) rate limiting.
pub(crate) fn fault_response(injected: Injected) -> Response {
    let mut resp = match injected {
        Injected::Unavailable => (
            StatusCode::SERVICE_UNAVAILABLE,
            [(header::CONTENT_TYPE, "text/html")],
            "<html><head><title>503 Service Temporarily Unavailable</title></head><body><center><h1>503 Service Temporarily Unavailable</h1></center><hr><center>openresty</center></body></html>",
        )
            .into_response(),
        Injected::TooManyRequests { retry_after_secs } => (
            StatusCode::TOO_MANY_REQUESTS,
            [
                (header::CONTENT_TYPE, "text/html".to_owned()),
                (header::RETRY_AFTER, retry_after_secs.to_string()),
            ],
            "<html><head><title>429 Too Many Requests</title></head><body><center><h1>429 Too Many Requests</h1></center><hr><center>openresty</center></body></html>",
        )
            .into_response(),
    };
    add_server_headers(resp.headers_mut());
    resp
}

async fn gate(State(sim): State<Simulator>, req: Request, next: Next) -> Response {
    let (token, lr_enabled) =
        sim.with(|rt, _| (rt.cfg.token.clone(), rt.cfg.live_response_enabled));
    // §1: `X-Auth-Token` is the only auth scheme.
    let authorized =
        req.headers().get("x-auth-token").is_some_and(|v| v.as_bytes() == token.as_bytes());
    let mut resp = if !authorized {
        sim.with(|rt, _| rt.count(|c| c.unauthorized += 1));
        text(StatusCode::UNAUTHORIZED, "Unauthorized")
    } else if !lr_enabled && req.uri().path().starts_with("/api/v1/cblr") {
        // §2.2 / DOC5: every LR route answers 412 while CbLREnabled is off.
        text(
            StatusCode::PRECONDITION_FAILED,
            "Live Response is not enabled on this server (CbLREnabled=False)",
        )
    } else {
        next.run(req).await
    };
    add_server_headers(resp.headers_mut());
    resp
}

/// Headers a real 6.2 server (openresty in front of Flask) sends (REC, §1).
fn add_server_headers(h: &mut HeaderMap) {
    for (k, v) in [
        (header::SERVER, "openresty"),
        (header::CACHE_CONTROL, "max-age=0"),
        (header::STRICT_TRANSPORT_SECURITY, "max-age=31536000"),
        (header::X_FRAME_OPTIONS, "DENY"),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
    ] {
        h.insert(k, HeaderValue::from_static(v));
    }
}

// ----- server info & sensors -----------------------------------------------------------------

/// Event-store partitions. cbapi 2.x lists them when it connects to a server ≥ 6.0 (reading
/// each one's `info.isLegacy`, `cbapi/response/rest_api.py`) and tolerates only a 403
/// otherwise; one current (`writer`) partition is what a small server has.
async fn event_partitions() -> Response {
    ok(&json!({
        "writer": {
            "name": "writer",
            "status": "hot",
            "info": {
                "isLegacy": false,
                "sizeInBytes": 1_073_741_824u64,
                "startDate": "2026-01-01T00:00:00.000000Z",
                "endDate": null,
                "deleteRequested": false
            }
        }
    }))
}

async fn info(State(sim): State<Simulator>) -> Response {
    let enabled = sim.with(|rt, _| rt.cfg.live_response_enabled);
    // §1: cbapi checks `cblrEnabled` and `version` >= 5.0 before building its LR manager.
    ok(&json!({
        "binaryPageSize": 10,
        "maxSearchResultRows": 1000,
        "binaryOrder": "",
        "liveResponseAutoAttach": true,
        "timestampDeltaThreshold": 5,
        "linuxInstallerExists": true,
        "maxRowsSolrReportQuery": 10000,
        "osxInstallerExists": true,
        "version_release": "6.2.0-1",
        "version": "6.2.0.171114.1158",
        "banningEnabled": true,
        "cblrEnabled": enabled,
        "processOrder": "",
        "processPageSize": 10,
        "vdiGloballyEnabled": false,
        "searchExportCount": 1000,
        "cloud_install": false,
        "features": {
            "immutable_documents": true,
            "event_exclusions": false,
            "thirdparty_sharing": false,
            "ipv6_support": true
        },
        // The API user's console preferences, as the 6.2 recording answers them
        // (`tests/fixtures/GET_api_info.json`, verbatim).
        "user_preferences": serde_json::from_str::<Value>(USER_PREFERENCES).unwrap_or_default()
    }))
}

/// `user_preferences` of `GET /api/info`: the recorded 6.2 server's (cbapi-python@550679c0
/// `tests/caches/cber.sqlite`, MIT).
const USER_PREFERENCES: &str = include_str!("user_preferences.json");

async fn sensor(State(sim): State<Simulator>, Path(id): Path<u64>) -> ApiResult {
    sim.with(|rt, now| {
        let s = rt
            .sensors
            .get(&id)
            .ok_or_else(|| ApiError::NotFound(format!("Sensor {id} not found")))?;
        Ok(ok(&rt.sensor_json(s, now)))
    })
}

/// cbapi `Sensor.isolate()`/`unisolate()`: set `network_isolation_enabled` and PUT the object.
async fn update_sensor(
    State(sim): State<Simulator>,
    Path(id): Path<u64>,
    body: Bytes,
) -> ApiResult {
    let body = parse_object(&body)?;
    let wanted = body.get("network_isolation_enabled").and_then(Value::as_bool);
    sim.with(|rt, now| {
        if let Some(w) = wanted {
            rt.set_isolation(id, w, now)?;
        }
        let s = rt
            .sensors
            .get(&id)
            .ok_or_else(|| ApiError::NotFound(format!("Sensor {id} not found")))?;
        Ok(ok(&rt.sensor_json(s, now)))
    })
}

fn search_params(p: &HashMap<String, String>) -> (Option<&str>, Option<&str>, Option<u64>) {
    (
        p.get("hostname").map(String::as_str),
        p.get("ip").map(String::as_str),
        p.get("groupid").and_then(|g| g.parse().ok()),
    )
}

/// §7.4 v1 search: a JSON array, or 204 with an empty body when nothing matches.
async fn sensors_v1(State(sim): State<Simulator>, Query(p): Params) -> Response {
    let (hostname, ip, group) = search_params(&p);
    let found = sim.with(|rt, now| {
        if hostname.is_none() && ip.is_none() && group.is_none() {
            rt.count(|c| c.sensor_unpaged_listings += 1);
        }
        rt.search_sensors(hostname, ip, group)
            .into_iter()
            .map(|s| rt.sensor_json(s, now))
            .collect::<Vec<_>>()
    });
    if found.is_empty() {
        return StatusCode::NO_CONTENT.into_response();
    }
    ok(&Value::Array(found))
}

/// §7.4 v2 search: `{results, total_results}` with `start`/`rows` paging and sorting.
async fn sensors_v2(State(sim): State<Simulator>, Query(p): Params) -> Response {
    let (hostname, ip, group) = search_params(&p);
    let start: usize = p.get("start").and_then(|v| v.parse().ok()).unwrap_or(0);
    let rows: usize = p.get("rows").and_then(|v| v.parse().ok()).unwrap_or(10);
    let by_id = p.get("sort.col").is_some_and(|c| c == "id");
    let descending = p.get("sort.dir").is_some_and(|d| d.eq_ignore_ascii_case("desc"));
    let (total, results) = sim.with(|rt, now| {
        rt.count(|c| c.sensor_pages += 1);
        let mut found = rt.search_sensors(hostname, ip, group);
        if by_id {
            found.sort_by_key(|s| s.id);
        } else {
            found.sort_by(|a, b| a.hostname.cmp(&b.hostname).then(a.id.cmp(&b.id)));
        }
        if descending {
            found.reverse();
        }
        let total = found.len();
        let page: Vec<Value> =
            found.into_iter().skip(start).take(rows).map(|s| rt.sensor_json(s, now)).collect();
        (total, page)
    });
    ok(&json!({"results": results, "total_results": total}))
}

// ----- sessions ------------------------------------------------------------------------------

async fn list_sessions(State(sim): State<Simulator>, Query(p): Params) -> Response {
    let active_only = flag(&p, "active_only");
    ok(&sim.with(|rt, _| rt.list_sessions(active_only)))
}

async fn create_session(State(sim): State<Simulator>, Query(p): Params, body: Bytes) -> ApiResult {
    let body = parse_object(&body)?;
    let (sid, v) = sim.with(|rt, now| rt.create_session(&body, now))?;
    // DOC5: `wait` "blocks the response until a session is available".
    if flag(&p, "wait") {
        return wait_session(&sim, sid).await;
    }
    Ok(ok(&v))
}

/// Block (up to the wait cap) while the session is still pending.
async fn wait_session(sim: &Simulator, sid: u64) -> ApiResult {
    let deadline = Instant::now() + sim.with(|rt, _| rt.cfg.wait_cap);
    loop {
        let (pending, v) = sim.with(|rt, _| (rt.is_pending(sid), rt.get_session(sid)));
        if !pending || Instant::now() >= deadline {
            return v.map(|v| ok(&v));
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn get_session(
    State(sim): State<Simulator>,
    Path(sid): Path<u64>,
    Query(p): Params,
) -> ApiResult {
    if flag(&p, "wait") {
        return wait_session(&sim, sid).await;
    }
    sim.with(|rt, _| rt.get_session(sid)).map(|v| ok(&v))
}

async fn put_session(State(sim): State<Simulator>, Path(sid): Path<u64>, body: Bytes) -> ApiResult {
    let body = parse_object(&body)?;
    sim.with(|rt, now| rt.put_session(sid, &body, now)).map(|v| ok(&v))
}

async fn keepalive(State(sim): State<Simulator>, Path(sid): Path<u64>) -> ApiResult {
    sim.with(|rt, now| rt.keepalive(sid, now)).map(|v| ok(&v))
}

async fn session_archive(State(sim): State<Simulator>, Path(sid): Path<u64>) -> ApiResult {
    let parts = sim.with(|rt, now| rt.archive_parts(sid, now))?;
    // Materialising file contents happens outside the lock.
    let data = tokio::task::spawn_blocking(move || archive::build(&parts))
        .await
        .map_err(|e| ApiError::Internal(format!("archive task failed: {e}")))?;
    Ok((
        [
            (header::CONTENT_TYPE, "application/x-gzip".to_owned()),
            (
                header::CONTENT_DISPOSITION,
                format!("attachment; filename=session-{sid}-archive.tar.gz"),
            ),
        ],
        data,
    )
        .into_response())
}

// ----- commands ------------------------------------------------------------------------------

async fn list_commands(
    State(sim): State<Simulator>,
    Path(sid): Path<u64>,
    Query(p): Params,
) -> ApiResult {
    let status = p.get("status").map(String::as_str);
    let count = p.get("count").and_then(|c| c.parse().ok());
    sim.with(|rt, now| rt.list_commands(sid, status, count, now)).map(|v| ok(&v))
}

async fn create_command(
    State(sim): State<Simulator>,
    Path(sid): Path<u64>,
    body: Bytes,
) -> ApiResult {
    let body = parse_object(&body)?;
    sim.with(|rt, now| rt.post_command(sid, &body, now)).map(|v| ok(&v))
}

/// §2.8 GET; `?wait=true` long-polls until the command is final or the cap passes.
async fn get_command(
    State(sim): State<Simulator>,
    Path((sid, cid)): Path<(u64, u64)>,
    Query(p): Params,
) -> ApiResult {
    let wait = flag(&p, "wait");
    let deadline = Instant::now() + sim.with(|rt, _| rt.cfg.wait_cap);
    loop {
        let (v, done) = sim.with(|rt, now| rt.get_command(sid, cid, now))?;
        if !wait || done || Instant::now() >= deadline {
            return Ok(ok(&v));
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// §2.8b: any body (`{"id", "status": "cancel"}` from CLI0, `{"cmdid"}` from XSOAR) cancels.
async fn cancel_command(
    State(sim): State<Simulator>,
    Path((sid, cid)): Path<(u64, u64)>,
) -> ApiResult {
    sim.with(|rt, now| rt.cancel_command(sid, cid, now)).map(|v| ok(&v))
}

// ----- session file storage ------------------------------------------------------------------

/// §2.9: multipart upload, bytes in the `file` field.
async fn upload_file(
    State(sim): State<Simulator>,
    Path(sid): Path<u64>,
    multipart: Result<Multipart, axum::extract::multipart::MultipartRejection>,
) -> ApiResult {
    // Fail fast on a dead session before reading a possibly large body.
    sim.with(|rt, _| rt.get_session(sid))?;
    let mut multipart = multipart.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    loop {
        let field = match multipart.next_field().await {
            Ok(Some(f)) => f,
            Ok(None) => {
                return Err(ApiError::BadRequest("multipart field `file` is required".into()));
            }
            Err(e) => return Ok((e.status(), e.body_text()).into_response()),
        };
        if field.name() != Some("file") {
            continue;
        }
        let file_name = field.file_name().unwrap_or("file").to_owned();
        let bytes = match field.bytes().await {
            Ok(b) => b,
            Err(e) => return Ok((e.status(), e.body_text()).into_response()),
        };
        return sim.with(|rt, now| rt.upload(sid, file_name, bytes, now)).map(|v| ok(&v));
    }
}

async fn list_files(State(sim): State<Simulator>, Path(sid): Path<u64>) -> ApiResult {
    sim.with(|rt, _| rt.list_files(sid)).map(|v| ok(&v))
}

async fn get_file(State(sim): State<Simulator>, Path((sid, fid)): Path<(u64, u64)>) -> ApiResult {
    sim.with(|rt, _| rt.get_file(sid, fid)).map(|v| ok(&v))
}

/// §2.12: PUT with `delete: true` deletes; any other PUT returns the object unchanged.
async fn put_file(
    State(sim): State<Simulator>,
    Path((sid, fid)): Path<(u64, u64)>,
    body: Bytes,
) -> ApiResult {
    let body = parse_object(&body)?;
    let delete = body.get("delete").is_some_and(|d| d == &Value::Bool(true) || d == "true");
    sim.with(|rt, _| if delete { rt.delete_file(sid, fid) } else { rt.get_file(sid, fid) })
        .map(|v| ok(&v))
}

async fn delete_file(
    State(sim): State<Simulator>,
    Path((sid, fid)): Path<(u64, u64)>,
) -> ApiResult {
    sim.with(|rt, _| rt.delete_file(sid, fid)).map(|v| ok(&v))
}

/// §2.13: raw bytes, streamed in chunks without materialising the file.
async fn file_content(
    State(sim): State<Simulator>,
    Path((sid, fid)): Path<(u64, u64)>,
) -> ApiResult {
    let (content, etag, cut) = sim.with(|rt, _| {
        let (content, etag) = rt.file_content(sid, fid)?;
        let faults = &rt.cfg.faults;
        let n = rt.counters_snapshot().downloads;
        let hit =
            faults.cut_downloads_every.is_some_and(|k| k > 0 && n.is_multiple_of(u64::from(k)));
        let cut = (hit && content.len() > 1).then_some(faults.cut_downloads_cleanly);
        if cut.is_some() {
            rt.count(|c| c.faults_cut += 1);
        }
        Ok::<_, ApiError>((content, etag, cut))
    })?;
    let body = match cut {
        None => Body::from_stream(content.stream()),
        Some(cleanly) => {
            let half = content.len() / 2;
            let head = content.slice(0, Some(half)).stream().map(|r| r.map_err(io::Error::other));
            let tail = (!cleanly).then(|| Err(io::Error::other("simulated cut")));
            Body::from_stream(head.chain(futures::stream::iter(tail)))
        }
    };
    let mut resp = Response::new(body);
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/octet-stream"));
    if let Ok(v) = HeaderValue::from_str(&etag) {
        h.insert(header::ETAG, v);
    }
    Ok(resp)
}
