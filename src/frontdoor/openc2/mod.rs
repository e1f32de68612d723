//! The OpenC2 consumer: Endpoint Response commands over the HTTPS transfer (v1.1), `POST
//! {path_prefix}/.well-known/openc2`, authenticated like `/v1` (bearer JWT).
//!
//! ER pairs become edrgate commands ([`pairs`]) submitted through
//! [`crate::api::actions::submit`] (checks, admission, engine, the audit entry with
//! `{"door": "openc2", "command_id": …}`), the OpenC2 `command_id` (else `request_id`) as
//! the idempotency key so a producer's retry repeats nothing. Every answer is an OpenC2
//! response with content type [`message::CONTENT_TYPE`]; results carry
//! `x-edrgate: {action_id, status, runs}` so producers follow up with `query command`.
//! Source: front-doors.md §2 (LS10, HTTPS v1.1, ER CSD01).

pub mod message;
pub mod pairs;

use std::time::Duration;

use axum::Router;
use axum::extract::{Request, State};
use axum::http::header::{ALLOW, AUTHORIZATION, CACHE_CONTROL, CONTENT_TYPE};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use edrgate_adapter::{Action, ActionRequest, ErrorCode, OnError, Status, Target};
use serde_json::{Value, json};
use uuid::Uuid;

use crate::api::ApiState;
use crate::api::problem::ApiError;
use crate::api::request::RequestMeta;
use crate::audit::{AuditEvent, AuditRecord};
use crate::auth::{Caller, Permission};
use crate::engine::{SubmitMeta, Submitted};
use message::{Command, Reply, Request as Oc2Request, ResponseRequested, status};

/// Largest OpenC2 message read: a command is a few hundred bytes.
const MAX_MESSAGE_BYTES: usize = 64 * 1024;
/// The OpenC2 versions this consumer speaks (LS v1.0 CS02 is the published one).
const VERSIONS: [&str; 1] = ["1.0"];
/// Most `downstream_device.devices` one command may name.
const MAX_DEVICES: usize = 100;

/// Route path under `server.path_prefix` (HTTPS §3.2.1).
pub const PATH: &str = "/.well-known/openc2";

/// The door: `POST` to [`handle`], any other method to [`other_method`], with the doors'
/// layers (the request id echoed as HTTPS §3.3.3 asks; errors in OpenC2, never problem+json).
pub fn router(state: ApiState) -> Router {
    let routes = Router::new()
        .route("/", axum::routing::post(handle).fallback(other_method))
        .with_state(state);
    super::with_door_layers(routes, MAX_MESSAGE_BYTES, &[AUTHORIZATION], panic_response)
}

fn panic_response(panic: Box<dyn std::any::Any + Send + 'static>) -> Response {
    tracing::error!(panic = super::panic_message(&*panic), door = "openc2", "handler panicked");
    respond(Reply::error(status::INTERNAL_ERROR, "internal error"), None, None)
}

/// `POST /.well-known/openc2`.
pub async fn handle(
    State(state): State<ApiState>,
    meta: RequestMeta,
    request: Request,
) -> Response {
    let (parts, body) = request.into_parts();
    let x_request_id = header(&parts.headers, &crate::api::X_REQUEST_ID);
    // Read before authenticating would cost nothing more: the body is capped either way.
    let bytes = axum::body::to_bytes(body, MAX_MESSAGE_BYTES).await;
    let parsed = match bytes {
        Err(_) => Err(Reply::error(
            status::BAD_REQUEST,
            format!("the message is over {MAX_MESSAGE_BYTES} bytes"),
        )),
        Ok(bytes) => content_type_ok(&parts.headers).and_then(|()| {
            message::parse(&bytes).map_err(|m| Reply::error(status::BAD_REQUEST, m.0))
        }),
    };
    let caller = authenticate(&state, &parts.headers).await;
    let (reply, request) = match (caller, parsed) {
        (Err(reply), parsed) => (reply, parsed.ok()),
        (Ok(_), Err(reply)) => (reply, None),
        (Ok(caller), Ok(request)) => {
            let reply = execute(&state, &caller, &meta, &request, x_request_id.as_deref()).await;
            (reply, Some(request))
        }
    };
    respond(reply, request.as_ref(), x_request_id.as_deref())
}

/// Any other method: the HTTPS transfer allows only POST (HTTPS §3.2.1); 405 is not an
/// OpenC2 status (item 8), so the refusal is a 400 with `Allow`.
pub async fn other_method(request: Request) -> Response {
    let id = header(request.headers(), &crate::api::X_REQUEST_ID);
    let reply = Reply::error(status::BAD_REQUEST, "only POST is accepted at /.well-known/openc2");
    let mut response = respond(reply, None, id.as_deref());
    response.headers_mut().insert(ALLOW, HeaderValue::from_static("POST"));
    response
}

fn header(headers: &HeaderMap, name: &axum::http::HeaderName) -> Option<String> {
    headers.get(name).and_then(|v| v.to_str().ok()).map(str::to_owned)
}

/// HTTPS §3.3.1 requires `application/openc2+json;version=1.0`; plain `application/json`
/// is also taken. A wrong one is a 400 (415 is not an OpenC2 status, HTTPS §4.2.1 item 8).
fn content_type_ok(headers: &HeaderMap) -> Result<(), Reply> {
    let ct = headers.get(CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
    let essence = ct.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
    if essence == "application/openc2+json" || essence == "application/json" {
        Ok(())
    } else {
        Err(Reply::error(
            status::BAD_REQUEST,
            format!("Content-type must be {}", message::CONTENT_TYPE),
        ))
    }
}

async fn authenticate(state: &ApiState, headers: &HeaderMap) -> Result<Caller, Reply> {
    let token = headers
        .get(AUTHORIZATION)
        .and_then(|h| h.to_str().ok())
        .and_then(|h| h.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, token)| token.trim())
        .filter(|token| !token.is_empty());
    let Some(token) = token else {
        return Err(Reply::error(status::UNAUTHORIZED, "a bearer token is required"));
    };
    crate::api::apikeys::authenticate(state, token).await.map_err(|e| from_api_error(&e))
}

/// The OpenC2 status of a refusal of the native API: the LS codes only (LS10 §3.3.2.1).
fn from_api_error(error: &ApiError) -> Reply {
    Reply::error(status_of(error.code()), error.problem().detail)
}

/// The OpenC2 status of an edrgate error code.
fn status_of(code: ErrorCode) -> u16 {
    match code {
        // The same command_id with another command is a Conflict.
        ErrorCode::InvalidRequest | ErrorCode::PayloadTooLarge | ErrorCode::Conflict => {
            status::BAD_REQUEST
        }
        ErrorCode::Unauthenticated => status::UNAUTHORIZED,
        ErrorCode::Forbidden | ErrorCode::AccessDenied => status::FORBIDDEN,
        ErrorCode::NotFound | ErrorCode::DeviceNotFound | ErrorCode::FileNotFound => {
            status::NOT_FOUND
        }
        ErrorCode::UnsupportedCommand => status::NOT_IMPLEMENTED,
        ErrorCode::RateLimited
        | ErrorCode::VendorRateLimited
        | ErrorCode::VendorUnavailable
        | ErrorCode::DeviceOffline => status::SERVICE_UNAVAILABLE,
        _ => status::INTERNAL_ERROR,
    }
}

fn respond(reply: Reply, request: Option<&Oc2Request>, x_request_id: Option<&str>) -> Response {
    // HTTP 102 is interim in HTTP/1.1, never a final answer: 102 and 200 travel as HTTP 200,
    // errors as their own code (front-doors.md §2.7 hazard; HTTPS §4.2.1 item 8).
    let http = if reply.status < 400 {
        StatusCode::OK
    } else {
        StatusCode::from_u16(reply.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
    };
    let silent = request.is_some_and(|r| r.command.response_requested == ResponseRequested::None);
    let body = if silent && reply.status < 400 {
        // `none`: processed, no response message (ER §3.2.1.7); errors are still reported (LS20).
        Vec::new()
    } else {
        let request_id = request.and_then(|r| r.request_id.as_deref()).or(x_request_id);
        let value = match request {
            Some(r) if !r.enveloped => reply.to_value(),
            _ => reply.envelope(request_id, request.and_then(|r| r.from.as_deref()), now_ms()),
        };
        serde_json::to_vec(&value).unwrap_or_default()
    };
    let mut response = (http, body).into_response();
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static(message::CONTENT_TYPE));
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    // `Date` (HTTPS §3.4 SHOULD) is added by the HTTP server.
    response
}

fn now_ms() -> i64 {
    i64::try_from(time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000).unwrap_or(0)
}

async fn execute(
    state: &ApiState,
    caller: &Caller,
    meta: &RequestMeta,
    request: &Oc2Request,
    x_request_id: Option<&str>,
) -> Reply {
    let command = &request.command;
    // ER §2.1.4: tenant_id is processed before devices and groups.
    if let Some(tenant) = command.arg("er", "downstream_device").and_then(|d| d.get("tenant_id"))
        && tenant.as_str() != Some(caller.tenant.as_str())
    {
        return Reply::error(
            status::FORBIDDEN,
            "downstream_device.tenant_id is not the caller's tenant",
        );
    }
    match (command.action.as_str(), command.target.as_str()) {
        ("query", "features") => return features(state, caller, command),
        ("query", "command") | ("cancel", "command") => {
            return follow_up(state, caller, meta, command).await;
        }
        _ => {}
    }
    let edr = match pairs::edrgate_command(command) {
        None => return Reply::error(status::NOT_IMPLEMENTED, "Command not supported"),
        Some(Err((code, text))) => return Reply::error(code, text),
        Some(Ok(edr)) => edr,
    };
    // edrgate runs commands when they arrive; a producer asking for a later start or a
    // bounded duration is refused rather than surprised.
    if ["start_time", "stop_time", "duration"].iter().any(|k| command.args.contains_key(*k)) {
        return Reply::error(
            status::NOT_IMPLEMENTED,
            "Option not supported: scheduling (start_time, stop_time, duration)",
        );
    }
    let targets = match targets(command) {
        Ok(targets) => targets,
        Err(reply) => return reply,
    };
    let command_id = command
        .command_id
        .clone()
        .or_else(|| request.request_id.clone())
        .or_else(|| x_request_id.map(str::to_owned));
    let action_request = ActionRequest {
        targets,
        commands: vec![edr],
        comment: Some(format!("OpenC2 {}", command.pair())),
        on_error: OnError::Stop,
        timeout_seconds: None,
        callback_url: None,
    };
    let submit_meta = SubmitMeta {
        // Namespaced: an OpenC2 id never collides with a /v1 client's key.
        idempotency_key: command_id.as_ref().map(|id| format!("openc2:{id}")),
        request_id: x_request_id.map(str::to_owned),
        subject: caller.subject.clone(),
    };
    let door = json!({"door": "openc2", "command_id": command_id, "pair": command.pair()});
    let submitted =
        crate::api::actions::submit(state, caller, meta, action_request, submit_meta, Some(door))
            .await;
    let action = match submitted {
        Ok(Submitted::Created(action) | Submitted::Replayed(action)) => action,
        Err(error) => return from_api_error(&error),
    };
    tracing::info!(tenant = %caller.tenant, action_id = %action.id, pair = %command.pair(), "openc2 command submitted");
    match command.response_requested {
        ResponseRequested::None | ResponseRequested::Ack => Reply::new(status::PROCESSING)
            .results(json!({"x-edrgate": {"action_id": action.id, "status": action.status}})),
        ResponseRequested::Status => action_reply(&action),
        ResponseRequested::Complete => match wait_terminal(state, &caller.tenant, action).await {
            Ok(action) => action_reply(&action),
            Err(error) => from_api_error(&error),
        },
    }
}

/// `complete`: hold the exchange until the action finishes, up to `server.max_wait_seconds`
/// (the long-poll bound); past it the answer is 102 with the action id, to follow up with
/// `query command` (front-doors.md §2.7, inferred: LS has no rule for this).
async fn wait_terminal(
    state: &ApiState,
    tenant: &str,
    mut action: Action,
) -> Result<Action, ApiError> {
    let deadline = tokio::time::Instant::now() + state.max_wait;
    while !action.status.is_terminal() {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        if left.is_zero() {
            break;
        }
        action = tokio::select! {
            changed = state.engine.wait_action(tenant, action.id, left.min(Duration::from_secs(30))) => changed?,
            () = state.shutdown.cancelled() => break,
        };
    }
    Ok(action)
}

/// The response for an action: 102 while it runs, 200 once it succeeded, 500 with the first
/// error's text otherwise (ER §2.3's "Cannot access …" are the vendors' errors here).
fn action_reply(action: &Action) -> Reply {
    let results = json!({"x-edrgate": {"action_id": action.id, "status": action.status, "runs": action.runs}});
    let reply = match action.status {
        Status::Succeeded => Reply::new(status::OK),
        status if !status.is_terminal() => Reply::new(status::PROCESSING),
        other => {
            // The first error says why: an unknown device is a 404, an unsupported command a
            // 501, a vendor that is down a 503, a failure on the endpoint a 500.
            let error = action.runs.iter().find_map(|r| {
                r.error.as_ref().or_else(|| r.commands.iter().find_map(|c| c.error.as_ref()))
            });
            match error {
                Some(error) => Reply::error(status_of(error.code), error.message.clone()),
                None => Reply::error(
                    status::INTERNAL_ERROR,
                    format!("the action is {}", other.as_str()),
                ),
            }
        }
    };
    reply.results(results)
}

/// The devices a command acts on: `args.er.downstream_device.devices[]` (hostname, or
/// device_id with `args.x-edrgate.backend`), else the `device` target itself, else the
/// actuator specifier `er.hostname` (ER §2.1.4–§2.1.5).
fn targets(command: &Command) -> Result<Vec<Target>, Reply> {
    let backend = command.arg("x-edrgate", "backend").and_then(Value::as_str);
    let device = |d: &Value| -> Result<Target, Reply> {
        let hostname = d.get("hostname").or_else(|| d.get("idn_hostname")).and_then(Value::as_str);
        match (d.get("device_id").and_then(Value::as_str), backend, hostname) {
            (Some(id), Some(backend), _) => {
                Ok(Target::Device { backend: backend.to_owned(), device_id: id.to_owned() })
            }
            (_, _, Some(hostname)) if !hostname.is_empty() => {
                Ok(Target::Hostname { hostname: hostname.to_owned() })
            }
            (Some(_), None, _) => Err(Reply::error(
                status::BAD_REQUEST,
                "a device_id needs args.x-edrgate.backend (or give the hostname)",
            )),
            _ => Err(Reply::error(status::BAD_REQUEST, "a device needs a hostname or a device_id")),
        }
    };
    if let Some(downstream) = command.arg("er", "downstream_device") {
        if downstream.get("device_groups").is_some() {
            return Err(Reply::error(
                status::NOT_IMPLEMENTED,
                "Option not supported: device_groups",
            ));
        }
        let devices = downstream.get("devices").and_then(Value::as_array).filter(|d| !d.is_empty());
        let Some(devices) = devices else {
            return Err(Reply::error(
                status::BAD_REQUEST,
                "downstream_device.devices must list at least one device",
            ));
        };
        if devices.len() > MAX_DEVICES {
            return Err(Reply::error(
                status::BAD_REQUEST,
                format!("at most {MAX_DEVICES} devices per command"),
            ));
        }
        return devices.iter().map(device).collect();
    }
    if command.target == "device" {
        return Ok(vec![device(&command.specifiers)?]);
    }
    if let Some(hostname) =
        command.actuator.get("er").and_then(|a| a.get("hostname")).and_then(Value::as_str)
    {
        return Ok(vec![Target::Hostname { hostname: hostname.to_owned() }]);
    }
    // ER §2.1.4: downstream_device is required whenever the target is not the device itself.
    Err(Reply::error(
        status::BAD_REQUEST,
        "args.er.downstream_device (or actuator er.hostname) must name the device",
    ))
}

/// `query features` (LS10 §4.1): only `response_requested: complete` may come with it.
fn features(state: &ApiState, caller: &Caller, command: &Command) -> Reply {
    if !command.args.is_empty() || command.response_requested != ResponseRequested::Complete {
        return Reply::error(
            status::BAD_REQUEST,
            "query features takes no arguments but response_requested complete",
        );
    }
    if let Err(error) = caller.require(Permission::Read) {
        return from_api_error(&ApiError::from(error));
    }
    let requested = match &command.specifiers {
        Value::Array(items) if items.len() <= 10 => items,
        Value::Null => return Reply::new(status::OK),
        _ => {
            return Reply::error(
                status::BAD_REQUEST,
                "features must be an array of at most 10 features",
            );
        }
    };
    let mut results = serde_json::Map::new();
    for feature in requested {
        let value = match feature.as_str() {
            Some("versions") => json!(VERSIONS),
            Some("profiles") => json!(["er", "x-edrgate"]),
            Some("pairs") => pairs::pairs(&state.engine.backends().capabilities(&caller.tenant)),
            Some("rate_limit") => match state.auth.requests_per_minute(&caller.tenant) {
                Some(rate) => json!(rate),
                None => continue,
            },
            _ => return Reply::error(status::BAD_REQUEST, format!("unknown feature {feature}")),
        };
        results.insert(feature.as_str().unwrap_or_default().to_owned(), value);
    }
    let reply = Reply::new(status::OK);
    if results.is_empty() { reply } else { reply.results(Value::Object(results)) }
}

/// `query command` / `cancel command`: the LS `command` target names an earlier command by
/// the action id this consumer answered with (`x-edrgate.action_id`).
async fn follow_up(
    state: &ApiState,
    caller: &Caller,
    meta: &RequestMeta,
    command: &Command,
) -> Reply {
    let id = command
        .specifiers
        .as_str()
        .or_else(|| command.specifiers.get("action_id").and_then(Value::as_str));
    let Some(id) = id.and_then(|id| Uuid::parse_str(id).ok()) else {
        return Reply::error(
            status::BAD_REQUEST,
            "the command target must be the action_id of an earlier command",
        );
    };
    if let Err(error) = caller.require(Permission::Read) {
        return from_api_error(&ApiError::from(error));
    }
    if command.action == "query" {
        let action = match command.response_requested {
            ResponseRequested::Complete => match state.engine.action(&caller.tenant, id).await {
                Ok(action) => wait_terminal(state, &caller.tenant, action).await,
                Err(error) => Err(ApiError::from(error)),
            },
            _ => state.engine.action(&caller.tenant, id).await.map_err(ApiError::from),
        };
        return match action {
            Ok(action) => action_reply(&action),
            Err(error) => from_api_error(&error),
        };
    }
    // As `POST /v1/actions/{id}/cancel`: the permissions submitting needed, an audit entry.
    let cancelled: Result<Action, ApiError> = async {
        let action = state.engine.action(&caller.tenant, id).await?;
        caller.require_commands(action.commands.iter().map(edrgate_adapter::Command::kind))?;
        Ok(state.engine.cancel(&caller.tenant, id).await?)
    }
    .await;
    let mut entry = match &cancelled {
        Ok(_) => AuditRecord::new(AuditEvent::ActionCancel, "accepted", 200),
        Err(error) => crate::api::audit::refused(AuditEvent::ActionCancel, error),
    };
    entry.detail = Some(json!({"door": "openc2", "command_id": command.command_id}));
    crate::api::audit::record(state, caller, meta, entry.for_action(id)).await;
    match cancelled {
        Ok(action) => action_reply(&action).text("cancel requested"),
        Err(error) => from_api_error(&error),
    }
}
