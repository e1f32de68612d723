//! HTTP routes of the simulator: the token endpoints, the `/api` surface and the blob host.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::extract::{DefaultBodyLimit, Multipart, Path, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Value, json};

use super::Simulator;
use super::state::{self, Runtime};
use crate::wire::{self, kinds};

type Resp = Response;

pub(crate) fn router(sim: Simulator) -> Router {
    let limit = sim.config().library_max_bytes as usize + 1024 * 1024;
    Router::new()
        .route("/{tenant}/oauth2/v2.0/token", post(token))
        .route("/{tenant}/oauth2/token", post(token))
        .route("/api/machines", get(machines))
        .route("/api/machines/{id}", get(machine))
        .route("/api/machines/{id}/{verb}", post(machine_action))
        .route("/api/machineactions", get(actions))
        .route("/api/machineactions/{id}", get(action))
        .route("/api/machineactions/{id}/{func}", get(action_function).post(action_post))
        .route("/api/libraryfiles", get(library).post(upload))
        .route("/api/libraryfiles/{name}", axum::routing::delete(delete_library))
        .route(
            "/blob/investigation-actions-data/{action}/CustomPlaybookCommandOutput/{index}",
            get(blob),
        )
        .fallback(|| async {
            error(StatusCode::NOT_FOUND, "ResourceNotFound", "Resource not found")
        })
        .layer(DefaultBodyLimit::max(limit))
        .layer(middleware::from_fn_with_state(sim.clone(), gate))
        .with_state(sim)
}

/// The envelope of every API error (§7).
pub(crate) fn error(status: StatusCode, code: &str, message: &str) -> Resp {
    let body = json!({"error": {"code": code, "message": message, "target": uuid::Uuid::now_v7().to_string()}});
    (status, [(header::CONTENT_TYPE, "application/json; charset=utf-8")], body.to_string())
        .into_response()
}

fn too_many(wait: Duration, message: &str) -> Resp {
    let mut r = error(StatusCode::TOO_MANY_REQUESTS, "TooManyRequests", message);
    let secs = wait.as_secs_f64().ceil().max(1.0) as u64;
    r.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(secs));
    r
}

fn ok_json(status: StatusCode, v: Value) -> Resp {
    (
        status,
        [(header::CONTENT_TYPE, "application/json; odata.metadata=minimal; charset=utf-8")],
        v.to_string(),
    )
        .into_response()
}

/// Counting, fault injection, the `/API` prefix, and bearer auth on `/api`.
async fn gate(State(sim): State<Simulator>, mut req: Request, next: Next) -> Resp {
    let n = sim.next_request_number();
    let faults = sim.config().faults;
    if let Some(d) = faults.slow {
        tokio::time::sleep(d).await;
    }
    if faults.error_5xx_every.is_some_and(|every| every > 0 && n % u64::from(every) == 0) {
        sim.with(|rt, _| rt.counters.faults_5xx += 1);
        return error(StatusCode::INTERNAL_SERVER_ERROR, "InternalServerError", "injected fault");
    }
    // HTTP/2 carries the host as `:authority`, not `Host`; links are built from `Host`.
    if !req.headers().contains_key(header::HOST)
        && let Some(authority) =
            req.uri().authority().and_then(|a| HeaderValue::from_str(a.as_str()).ok())
    {
        req.headers_mut().insert(header::HOST, authority);
    }
    let path = req.uri().path().to_owned();
    if let Some(rest) = path.strip_prefix("/API/") {
        // The docs write `/API/` in one place (§0).
        let pq = req.uri().path_and_query().map_or(String::new(), |pq| pq.as_str().to_owned());
        let fixed = format!("/api/{rest}{}", pq.strip_prefix(&path).unwrap_or(""));
        if let Ok(uri) = fixed.parse() {
            *req.uri_mut() = uri;
        }
    }
    if req.uri().path().starts_with("/api/") {
        let bearer = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::to_owned);
        let valid = sim.with(|rt, now| {
            let ok = bearer.as_ref().and_then(|t| rt.tokens.get(t)).is_some_and(|exp| *exp > now);
            if !ok {
                rt.counters.unauthorized += 1;
            }
            ok
        });
        if !valid {
            return error(
                StatusCode::UNAUTHORIZED,
                "Unauthorized",
                "Authorization token is missing, invalid or expired",
            );
        }
    }
    let resp = next.run(req).await;
    if let Some(d) = faults.slow_response {
        tokio::time::sleep(d).await;
    }
    resp
}

/// The per-endpoint API budget (100/min per app+tenant, §9).
/// `Some` rejection once the endpoint's budget is used up.
fn admit(rt: &mut Runtime, class: &'static str, now: Instant) -> Option<Resp> {
    let limit = rt.cfg.api_calls_per_minute;
    let wait = rt
        .api_windows
        .entry(class)
        .or_default()
        .admit(now, limit, Duration::from_secs(60))
        .err()?;
    rt.counters.responses_429 += 1;
    rt.counters.api_rate_limited += 1;
    Some(too_many(wait, "API calls quota exceeded"))
}

fn base(sim: &Simulator, headers: &HeaderMap) -> String {
    let host = headers.get(header::HOST).and_then(|h| h.to_str().ok()).unwrap_or("localhost");
    format!("{}://{host}", if sim.is_tls() { "https" } else { "http" })
}

// ---- token (§1) ----

async fn token(State(sim): State<Simulator>, Path(_tenant): Path<String>, body: String) -> Resp {
    let form: HashMap<String, String> = reqwest::Url::parse(&format!("http://x/?{body}"))
        .map(|u| u.query_pairs().into_owned().collect())
        .unwrap_or_default();
    let cfg = sim.config();
    let entra = |code: &str, codes: i64, description: &str| {
        let body = json!({
            "error": code,
            "error_description": format!("AADSTS{codes}: {description}\r\nTrace ID: {}\r\nTimestamp: {}", uuid::Uuid::now_v7(), state::utc_now()),
            "error_codes": [codes], "timestamp": state::utc_now(),
            "trace_id": uuid::Uuid::now_v7().to_string(), "correlation_id": uuid::Uuid::now_v7().to_string(),
        });
        (StatusCode::BAD_REQUEST, [(header::CONTENT_TYPE, "application/json")], body.to_string())
            .into_response()
    };
    if form.get("grant_type").map(String::as_str) != Some("client_credentials") {
        return entra(
            "unsupported_grant_type",
            70003,
            "The app requested an unsupported grant type.",
        );
    }
    if !form.contains_key("scope") && !form.contains_key("resource") {
        return entra(
            "invalid_request",
            90014,
            "The request body must contain the 'scope' or 'resource' parameter.",
        );
    }
    if form.get("client_id") != Some(&cfg.client_id) {
        sim.with(|rt, _| rt.counters.tokens_refused += 1);
        return entra("unauthorized_client", 700016, "Application was not found in the directory.");
    }
    if form.get("client_secret") != Some(&cfg.client_secret) {
        sim.with(|rt, _| rt.counters.tokens_refused += 1);
        return entra("invalid_client", 7000215, "Invalid client secret provided.");
    }
    let access = format!("sim-mde-{}", uuid::Uuid::now_v7().simple());
    let lifetime = cfg.token_lifetime;
    sim.with(|rt, now| {
        rt.tokens.insert(access.clone(), now + lifetime);
        rt.counters.tokens_issued += 1;
    });
    ok_json(
        StatusCode::OK,
        json!({"token_type": "Bearer", "expires_in": lifetime.as_secs(), "ext_expires_in": lifetime.as_secs(), "access_token": access}),
    )
}

// ---- OData $filter subset (§4.4, §10) ----

/// `a eq 'x'`, `a in ('x','y')`, joined by `and`: property (lower-case) → accepted values.
fn parse_filter(filter: &str) -> Result<Vec<(String, Vec<String>)>, String> {
    let mut out = Vec::new();
    for clause in filter.split(" and ") {
        let clause = clause.trim().trim_start_matches('(').trim_end_matches(')');
        let (prop, rest) =
            clause.split_once(' ').ok_or_else(|| format!("cannot parse '{clause}'"))?;
        let rest = rest.trim();
        let values: Vec<String> = if let Some(v) = rest.strip_prefix("eq ") {
            vec![unquote(v)]
        } else if let Some(v) = rest.strip_prefix("in ") {
            v.trim().trim_start_matches('(').trim_end_matches(')').split(',').map(unquote).collect()
        } else {
            return Err(format!("unsupported operator in '{clause}'"));
        };
        out.push((prop.to_ascii_lowercase(), values));
    }
    Ok(out)
}

fn unquote(v: &str) -> String {
    let v = v.trim();
    v.strip_prefix('\'').and_then(|v| v.strip_suffix('\'')).unwrap_or(v).replace("''", "'")
}

fn odata_error(message: String) -> Resp {
    let body = json!({"error": {"code": "", "message": message, "target": uuid::Uuid::now_v7().to_string(), "details": []}});
    (StatusCode::BAD_REQUEST, [(header::CONTENT_TYPE, "application/json")], body.to_string())
        .into_response()
}

fn matches(filters: &[(String, Vec<String>)], get: impl Fn(&str) -> Option<String>) -> bool {
    filters.iter().all(|(prop, values)| {
        get(prop).is_some_and(|actual| values.iter().any(|v| v.eq_ignore_ascii_case(&actual)))
    })
}

fn top(q: &HashMap<String, String>) -> usize {
    q.get("$top").and_then(|t| t.parse().ok()).unwrap_or(10_000).min(10_000)
}

// ---- machines (§10) ----

async fn machines(
    State(sim): State<Simulator>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Resp {
    let filters = match q.get("$filter").map(|f| parse_filter(f)).transpose() {
        Ok(f) => f.unwrap_or_default(),
        Err(e) => return odata_error(e),
    };
    let base = base(&sim, &headers);
    sim.with(|rt, now| {
        if let Some(r) = admit(rt, "machines", now) {
            return r;
        }
        let value: Vec<Value> = rt
            .machines
            .iter()
            .filter(|m| {
                matches(&filters, |p| match p {
                    "computerdnsname" => Some(m.name.clone()),
                    "id" => Some(m.id.clone()),
                    "healthstatus" => Some(if m.online { "Active" } else { "Inactive" }.into()),
                    _ => None,
                })
            })
            .take(top(&q))
            .map(|m| rt.machine_json(m))
            .collect();
        ok_json(
            StatusCode::OK,
            json!({"@odata.context": format!("{base}/api/$metadata#Machines"), "value": value}),
        )
    })
}

async fn machine(State(sim): State<Simulator>, Path(id): Path<String>) -> Resp {
    sim.with(|rt, now| {
        if let Some(r) = admit(rt, "machines", now) {
            return r;
        }
        // `{id}` may be the id or the computer name (§10).
        match rt
            .machines
            .iter()
            .find(|m| m.id.eq_ignore_ascii_case(&id) || m.name.eq_ignore_ascii_case(&id))
        {
            Some(m) => ok_json(StatusCode::OK, rt.machine_json(m)),
            None => error(
                StatusCode::NOT_FOUND,
                "ResourceNotFound",
                &format!("Machine {id} was not found"),
            ),
        }
    })
}

/// `runliveresponse`, `isolate`, `unisolate` (§3, §11).
async fn machine_action(
    State(sim): State<Simulator>,
    headers: HeaderMap,
    Path((id, verb)): Path<(String, String)>,
    body: String,
) -> Resp {
    let base = base(&sim, &headers);
    let body: Value = match serde_json::from_str(&body) {
        Ok(v) => v,
        Err(_) => {
            return error(
                StatusCode::BAD_REQUEST,
                "InvalidRequestBody",
                "Request body is incorrect",
            );
        }
    };
    sim.with(|rt, now| match verb.to_ascii_lowercase().as_str() {
        "runliveresponse" => {
            let (limit, window) = (rt.cfg.live_response_calls, rt.cfg.live_response_window);
            if let Err(wait) = rt.lr_window.admit(now, limit, window) {
                rt.counters.responses_429 += 1;
                rt.counters.live_response_rate_limited += 1;
                return too_many(wait, "Live response API calls quota exceeded");
            }
            let req = match rt.validate(&body) {
                Ok(r) => r,
                Err((code, message)) => return error(StatusCode::BAD_REQUEST, code, &message),
            };
            let Some(machine) = rt.machine(&id).map(|m| m.id.clone()) else {
                return error(
                    StatusCode::NOT_FOUND,
                    "ResourceNotFound",
                    &format!("Machine {id} was not found"),
                );
            };
            if rt.actions.iter().any(|a| a.live_response_active() && a.machine == machine) {
                rt.counters.active_request_conflicts += 1;
                return error(
                    StatusCode::BAD_REQUEST,
                    "ActiveRequestAlreadyExists",
                    "Multiple live response sessions can't be executed on the same machine",
                );
            }
            if rt.active_sessions() >= rt.cfg.session_cap {
                rt.counters.responses_429 += 1;
                rt.counters.session_cap_rejections += 1;
                return too_many(
                    Duration::from_secs(5),
                    "Too many requests: concurrent live response sessions limit reached",
                );
            }
            let i =
                rt.create_action("LiveResponse", &machine, req.comment, req.commands, None, now);
            let mut v = rt.action_json(&rt.actions[i], &base);
            v["@odata.context"] = json!(format!("{base}/api/$metadata#MachineActions/$entity"));
            ok_json(StatusCode::CREATED, v)
        }
        verb @ ("isolate" | "unisolate") => {
            if let Some(r) = admit(rt, "isolate", now) {
                return r;
            }
            let comment =
                body.get("Comment").and_then(Value::as_str).unwrap_or_default().to_owned();
            if comment.is_empty() {
                return error(
                    StatusCode::BAD_REQUEST,
                    "MissingRequiredParameter",
                    "Comment is required",
                );
            }
            let scope = if verb == "isolate" {
                match body.get("IsolationType").and_then(Value::as_str).unwrap_or("Full") {
                    "Full" => Some("Full"),
                    "Selective" => Some("Selective"),
                    "UnManagedDevice" => Some("UnManagedDevice"),
                    other => {
                        return error(
                            StatusCode::BAD_REQUEST,
                            "InvalidInput",
                            &format!("Invalid IsolationType '{other}'"),
                        );
                    }
                }
            } else {
                None
            };
            let Some(machine) = rt.machine(&id).map(|m| m.id.clone()) else {
                return error(
                    StatusCode::NOT_FOUND,
                    "ResourceNotFound",
                    &format!("Machine {id} was not found"),
                );
            };
            let kind = if verb == "isolate" { "Isolate" } else { "Unisolate" };
            if rt.actions.iter().any(|a| {
                !a.terminal()
                    && a.machine == machine
                    && (a.kind == "Isolate" || a.kind == "Unisolate")
            }) {
                return error(
                    StatusCode::BAD_REQUEST,
                    "ActiveRequestAlreadyExists",
                    "Action is already in progress",
                );
            }
            let i = rt.create_action(kind, &machine, comment, Vec::new(), scope, now);
            ok_json(StatusCode::CREATED, rt.action_json(&rt.actions[i], &base))
        }
        _ => error(StatusCode::NOT_FOUND, "ResourceNotFound", "Resource not found"),
    })
}

// ---- machine actions (§4–§6) ----

fn visible(rt: &Runtime, a: &state::SimAction, now: Instant) -> bool {
    now.duration_since(a.created) >= rt.cfg.visibility_delay
}

async fn actions(
    State(sim): State<Simulator>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Resp {
    let filters = match q.get("$filter").map(|f| parse_filter(f)).transpose() {
        Ok(f) => f.unwrap_or_default(),
        Err(e) => return odata_error(e),
    };
    let base = base(&sim, &headers);
    sim.with(|rt, now| {
        if let Some(r) = admit(rt, "machineactions", now) {
            return r;
        }
        rt.counters.action_list_calls += 1;
        let skip: usize = q.get("$skip").and_then(|s| s.parse().ok()).unwrap_or(0);
        let value: Vec<Value> = rt
            .actions
            .iter()
            .filter(|a| visible(rt, a, now))
            .filter(|a| {
                matches(&filters, |p| match p {
                    "id" => Some(a.id.clone()),
                    "machineid" => Some(a.machine.clone()),
                    "type" => Some(a.kind.to_owned()),
                    "status" => Some(a.status.to_owned()),
                    "requestor" => Some("edrgate-sim-app".into()),
                    _ => None,
                })
            })
            .skip(skip)
            .take(top(&q))
            .map(|a| {
                let mut v = rt.action_json(a, &base);
                if let Some(o) = v.as_object_mut() {
                    o.remove("@odata.context");
                }
                v
            })
            .collect();
        let mut body = json!({"@odata.context": format!("{base}/api/$metadata#MachineActions"), "value": value});
        if q.get("$count").map(String::as_str) == Some("true") {
            body["@odata.count"] = json!(body["value"].as_array().map_or(0, Vec::len));
        }
        ok_json(StatusCode::OK, body)
    })
}

fn find(rt: &Runtime, id: &str, now: Instant) -> Option<usize> {
    rt.actions.iter().position(|a| a.id.eq_ignore_ascii_case(id) && visible(rt, a, now))
}

async fn action(State(sim): State<Simulator>, headers: HeaderMap, Path(id): Path<String>) -> Resp {
    let base = base(&sim, &headers);
    sim.with(|rt, now| {
        if let Some(r) = admit(rt, "machineactions", now) {
            return r;
        }
        match find(rt, &id, now) {
            Some(i) => ok_json(StatusCode::OK, rt.action_json(&rt.actions[i], &base)),
            None => error(
                StatusCode::NOT_FOUND,
                "ResourceNotFound",
                &format!("Machine action {id} was not found"),
            ),
        }
    })
}

/// `GetLiveResponseResultDownloadLink(index=N)` (§5).
async fn action_function(
    State(sim): State<Simulator>,
    headers: HeaderMap,
    Path((id, func)): Path<(String, String)>,
) -> Resp {
    let base = base(&sim, &headers);
    let index = func
        .strip_prefix("GetLiveResponseResultDownloadLink(index=")
        .and_then(|r| r.strip_suffix(')'))
        .and_then(|n| n.parse::<usize>().ok());
    let Some(index) = index else {
        return error(StatusCode::NOT_FOUND, "ResourceNotFound", "Resource not found");
    };
    sim.with(|rt, now| {
        if let Some(r) = admit(rt, "link", now) {
            return r;
        }
        let Some(i) = find(rt, &id, now) else {
            return error(
                StatusCode::NOT_FOUND,
                "ResourceNotFound",
                &format!("Machine action {id} was not found"),
            );
        };
        let a = &rt.actions[i];
        let has_result =
            a.commands.get(index).is_some_and(|c| c.blob.is_some() && c.lr.kind != kinds::PUT_FILE);
        if !has_result {
            return error(
                StatusCode::NOT_FOUND,
                "ResourceNotFound",
                "Live response command result was not found or is not complete",
            );
        }
        rt.counters.links_issued += 1;
        let link = rt.link(&base, &a.id, index);
        ok_json(
            StatusCode::OK,
            json!({"@odata.context": format!("{base}/api/$metadata#Edm.String"), "value": link}),
        )
    })
}

/// `POST /api/machineactions/{id}/cancel` (§6).
async fn action_post(
    State(sim): State<Simulator>,
    headers: HeaderMap,
    Path((id, func)): Path<(String, String)>,
    body: String,
) -> Resp {
    if func != "cancel" {
        return error(StatusCode::NOT_FOUND, "ResourceNotFound", "Resource not found");
    }
    let base = base(&sim, &headers);
    let comment = serde_json::from_str::<wire::CommentBody>(&body).map(|b| b.comment);
    sim.with(|rt, now| {
        if let Some(r) = admit(rt, "cancel", now) {
            return r;
        }
        let Ok(comment) = comment else {
            return error(
                StatusCode::BAD_REQUEST,
                "MissingRequiredParameter",
                "Comment is required",
            );
        };
        let Some(i) = find(rt, &id, now) else {
            return error(
                StatusCode::NOT_FOUND,
                "ResourceNotFound",
                &format!("Machine action {id} was not found"),
            );
        };
        rt.cancel(i, comment);
        ok_json(StatusCode::OK, rt.action_json(&rt.actions[i], &base))
    })
}

/// The blob host: no bearer, a signature and an expiry instead (§5).
async fn blob(
    State(sim): State<Simulator>,
    Path((action, index)): Path<(String, usize)>,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Resp {
    let denied = |why: &str| {
        let body = format!(
            "<?xml version=\"1.0\" encoding=\"utf-8\"?><Error><Code>AuthenticationFailed</Code><Message>{why}</Message></Error>"
        );
        (StatusCode::FORBIDDEN, [(header::CONTENT_TYPE, "application/xml")], body).into_response()
    };
    let expiry: i128 = q.get("se").and_then(|s| s.parse().ok()).unwrap_or(0);
    let sig = q.get("sig").cloned().unwrap_or_default();
    let result = sim.with(|rt, _| {
        if headers.contains_key(header::AUTHORIZATION) {
            rt.counters.downloads_with_bearer += 1;
        }
        if rt.sign(&action, index, expiry) != sig {
            return Err("Signature did not match");
        }
        let now_ms = time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000;
        if now_ms >= expiry || rt.refuse_downloads > 0 {
            rt.refuse_downloads = rt.refuse_downloads.saturating_sub(1);
            rt.counters.expired_downloads += 1;
            return Err("Signed expiry time has passed");
        }
        rt.counters.downloads += 1;
        rt.actions
            .iter()
            .find(|a| a.id == action)
            .and_then(|a| a.commands.get(index))
            .and_then(|c| c.blob.clone())
            .ok_or("The specified blob does not exist")
    });
    match result {
        Ok(bytes) => (
            StatusCode::OK,
            [
                (header::CONTENT_TYPE, "application/octet-stream"),
                (header::HeaderName::from_static("x-ms-blob-type"), "BlockBlob"),
            ],
            Body::from(bytes),
        )
            .into_response(),
        Err(why) => denied(why),
    }
}

// ---- library (§8) ----

async fn library(State(sim): State<Simulator>, headers: HeaderMap) -> Resp {
    let base = base(&sim, &headers);
    sim.with(|rt, now| {
        if let Some(r) = admit(rt, "library", now) {
            return r;
        }
        let value: Vec<&wire::LibraryFile> = rt.library.values().map(|f| &f.entity).collect();
        ok_json(
            StatusCode::OK,
            json!({"@odata.context": format!("{base}/api/$metadata#LibraryFiles"), "value": value}),
        )
    })
}

async fn upload(State(sim): State<Simulator>, mut form: Multipart) -> Resp {
    if let Some(r) = sim.with(|rt, now| admit(rt, "library", now)) {
        return r;
    }
    let max = sim.config().library_max_bytes;
    let (mut name, mut content, mut description) = (None, None, String::new());
    let (mut has_parameters, mut override_existing) = (false, false);
    loop {
        let field = match form.next_field().await {
            Ok(Some(f)) => f,
            Ok(None) => break,
            Err(_) => {
                return error(
                    StatusCode::BAD_REQUEST,
                    "InvalidRequestBody",
                    "Request body is incorrect",
                );
            }
        };
        let part = field.name().unwrap_or_default().to_owned();
        match part.as_str() {
            "File" | "file" => {
                name = field.file_name().map(str::to_owned);
                match field.bytes().await {
                    Ok(b) if b.len() as u64 <= max => content = Some(b.to_vec()),
                    _ => {
                        return error(
                            StatusCode::BAD_REQUEST,
                            "BadRequest",
                            &format!("File size exceeds the maximum of {max} bytes"),
                        );
                    }
                }
            }
            other => {
                let text = field.text().await.unwrap_or_default();
                match other {
                    "Description" => description = text,
                    "HasParameters" => has_parameters = text.eq_ignore_ascii_case("true"),
                    "OverrideIfExists" => override_existing = text.eq_ignore_ascii_case("true"),
                    _ => {}
                }
            }
        }
    }
    let (Some(name), Some(content)) = (name, content) else {
        return error(StatusCode::BAD_REQUEST, "MissingRequiredParameter", "File is required");
    };
    if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b)) {
        return error(
            StatusCode::BAD_REQUEST,
            "InvalidInput",
            "File name may contain only letters, digits, '-', '_' and '.'",
        );
    }
    sim.with(|rt, _| {
        if rt.library.contains_key(&name) && !override_existing {
            return error(
                StatusCode::BAD_REQUEST,
                "BadRequest",
                &format!("File '{name}' already exists in the library"),
            );
        }
        rt.counters.library_uploads += 1;
        let file = state::lib_file(&name, content, &description, has_parameters);
        let entity = serde_json::to_value(&file.entity).unwrap_or_default();
        rt.library.insert(name, file);
        ok_json(StatusCode::OK, entity)
    })
}

async fn delete_library(State(sim): State<Simulator>, Path(name): Path<String>) -> Resp {
    sim.with(|rt, now| {
        if let Some(r) = admit(rt, "library", now) {
            return r;
        }
        match rt.library.remove(&name) {
            Some(_) => StatusCode::NO_CONTENT.into_response(),
            None => error(
                StatusCode::NOT_FOUND,
                "ResourceNotFound",
                &format!("File '{name}' was not found"),
            ),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_parse() {
        let f = parse_filter("id in ('a','b') and type eq 'LiveResponse'").unwrap();
        assert_eq!(f[0], ("id".into(), vec!["a".into(), "b".into()]));
        assert_eq!(f[1], ("type".into(), vec!["LiveResponse".into()]));
        assert_eq!(
            parse_filter("computerDnsName eq 'o''hara'").unwrap()[0].1,
            vec!["o'hara".to_owned()]
        );
        assert!(parse_filter("startswith(computerDnsName,'x')").is_err());
    }
}
