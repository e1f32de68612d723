//! The simulator's HTTP surface: the login pages and every `/rest/` route it serves.

use axum::Router;
use axum::extract::{DefaultBodyLimit, Multipart, Path, Request, State};
use axum::http::header::{
    CONTENT_DISPOSITION, CONTENT_TYPE, COOKIE, LOCATION, RETRY_AFTER, SET_COOKIE,
};
use axum::http::{HeaderMap, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Form, Json};
use serde_json::{Value, json};
use std::io::Write as _;

use crate::Simulator;
use crate::api::{self, SESSION_COOKIE, batch_state, upload::MAX_PACKAGE};
use crate::endpoint::element_ref;
use crate::state::{Batch, FetchBatch, IrSensor, Remediation, RemediationItem, Runtime, to_json};

const LOGIN_PAGE: &str = "<!doctype html>\n<html lang=\"en\">\n<head>\n    <meta charset=\"utf-8\">\n    <title>Cybereason | Login</title>\n    <base href=\"/\">\n</head>\n<body class=\"cbr-theme-dark\">\n    <app-login></app-login>\n</body>\n</html>\n";
const TFA_PAGE: &str = "<!doctype html>\n<html lang=\"en\">\n<head><title>Cybereason</title></head>\n<body>\n<h2>Two factor authentication</h2>\n<form method=\"post\" action=\"/\"><input name=\"totpCode\"><input type=\"submit\" name=\"submit\" value=\"Login\"></form>\n</body>\n</html>\n";
const APP_PAGE: &str = "<!doctype html>\n<html lang=\"en\">\n<head><title>Cybereason</title><base href=\"/\"></head>\n<body><app-root></app-root></body>\n</html>\n";

/// The authenticated user of a `/rest/` call.
#[derive(Clone)]
struct User(String);

pub(crate) fn router(sim: Simulator) -> Router {
    let rest = Router::new()
        .route("/monitor/global/server/version/all", get(version))
        .route("/sensors/query", post(sensors_query))
        .route("/monitor/global/commands/isolate", post(isolate))
        .route("/monitor/global/commands/un-isolate", post(unisolate))
        .route("/remediate", post(remediate))
        .route("/remediate/progress/{user}/{malop}/{id}", get(remediation_progress))
        .route("/remediate/status/{malop}", get(remediation_status))
        .route("/visualsearch/query/simple", post(visual_query))
        .route("/file-search/fetch-direct", post(fetch_direct))
        .route("/fetchfile/start", post(fetch_start))
        .route("/fetchfile/downloads/progress", get(fetch_progress))
        .route("/fetchfile/getfiles/{batch}", get(fetch_files))
        .route("/fetchfile/close/{batch}", get(fetch_close))
        .route("/irtools/packages", get(packages))
        .route(
            "/irtools/upload",
            post(upload).layer(DefaultBodyLimit::max(MAX_PACKAGE + 1024 * 1024)),
        )
        .route("/sensors/action/runIRTool", post(ir_run))
        .route("/sensors/action/getRunIRToolStatus/{batch}", get(ir_status))
        .route("/sensors/abort/{batch}", get(abort))
        .route("/sensors/allActions", get(all_actions))
        .layer(middleware::from_fn_with_state(sim.clone(), rest_guard));
    Router::new()
        .route("/login.html", get(login_page).post(login))
        .route("/", get(root).post(totp_step))
        .route("/logout", get(logout))
        .nest("/rest", rest)
        .with_state(sim)
}

// ---- login (§3) ----

/// Whether `code` is the current TOTP code of base32 `secret` (§3.2: 6 digits; RFC 6238
/// defaults, SHA-1 and 30 s steps, as authenticator apps and the PyPI client C1 use them).
fn totp_matches(secret: &str, code: &str) -> bool {
    let cleaned: String =
        secret.chars().filter(|c| !c.is_whitespace()).collect::<String>().to_ascii_uppercase();
    let Ok(secret) = totp_rs::Secret::try_from_base32(cleaned) else { return false };
    totp_rs::Builder::new()
        .with_secret(secret)
        .build()
        .is_ok_and(|t| t.check_current(code.trim()).is_some())
}

fn cookie_of(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|pair| {
            let (name, value) = pair.trim().split_once('=')?;
            (name == SESSION_COOKIE).then(|| value.to_owned())
        })
}

fn redirect(to: &str, cookie: Option<&str>) -> Response {
    let mut resp = (StatusCode::FOUND, [(LOCATION, to.to_owned())]).into_response();
    if let Some(c) = cookie
        && let Ok(v) = format!("{SESSION_COOKIE}={c}; Path=/; HttpOnly").parse()
    {
        resp.headers_mut().insert(SET_COOKIE, v);
    }
    resp
}

fn html(body: &'static str) -> Response {
    (StatusCode::OK, [(CONTENT_TYPE, "text/html;charset=UTF-8")], body).into_response()
}

async fn login_page() -> Response {
    html(LOGIN_PAGE)
}

async fn login(State(sim): State<Simulator>, Form(form): Form<api::LoginForm>) -> Response {
    sim.with(|rt, now| {
        let user = rt
            .cfg
            .users
            .iter()
            .find(|u| {
                u.username.eq_ignore_ascii_case(&form.username) && u.password == form.password
            })
            .cloned();
        let Some(user) = user else {
            rt.counters.login_failures += 1;
            // A cookie comes with the failure page too (SEKOIA's test, §3.1).
            let anonymous = rt.new_session("", false, now);
            return redirect("/login.html?error=true", Some(&anonymous));
        };
        if user.password_expired {
            rt.counters.login_failures += 1;
            let anonymous = rt.new_session("", false, now);
            return redirect("/login.html?reset=true", Some(&anonymous));
        }
        let tfa = user.totp_secret.is_some();
        let id = rt.new_session(&user.username, !tfa, now);
        if !tfa {
            rt.counters.logins += 1;
        }
        redirect("/", Some(&id))
    })
}

async fn root(State(sim): State<Simulator>, headers: HeaderMap) -> Response {
    let cookie = cookie_of(&headers);
    sim.with(|rt, now| {
        match cookie
            .as_deref()
            .and_then(|c| rt.sessions.get(c).map(|s| (c, s.authenticated, s.user.clone())))
        {
            Some((c, true, _)) if rt.session_user(c, now).is_some() => html(APP_PAGE),
            // The current console answers its Angular login shell here too: the two-factor
            // form is drawn in the browser, so the page has no text to read.
            Some((_, false, user)) if !user.is_empty() && rt.cfg.classic_tfa_page => html(TFA_PAGE),
            Some((_, false, user)) if !user.is_empty() => html(LOGIN_PAGE),
            _ => redirect("/login.html", None),
        }
    })
}

async fn totp_step(
    State(sim): State<Simulator>,
    headers: HeaderMap,
    Form(form): Form<api::TotpForm>,
) -> Response {
    let cookie = cookie_of(&headers);
    sim.with(|rt, _| {
        let Some(session) = cookie.as_deref().and_then(|c| rt.sessions.get(c)) else {
            return redirect("/login.html?error=true", None);
        };
        let secret = rt
            .cfg
            .users
            .iter()
            .find(|u| u.username == session.user)
            .and_then(|u| u.totp_secret.clone());
        let ok = secret.is_some_and(|s| totp_matches(&s, &form.totp_code));
        if !ok {
            rt.counters.login_failures += 1;
            return redirect("/login.html?error=true", None);
        }
        if let Some(s) = cookie.as_deref().and_then(|c| rt.sessions.get_mut(c)) {
            s.authenticated = true;
        }
        rt.counters.logins += 1;
        rt.counters.totp_logins += 1;
        redirect("/", None)
    })
}

async fn logout(State(sim): State<Simulator>, headers: HeaderMap) -> Response {
    if let Some(c) = cookie_of(&headers) {
        sim.with(|rt, _| rt.sessions.remove(&c));
    }
    redirect("/login.html", None)
}

/// Session check, fault injection and request counting for every `/rest/` call.
async fn rest_guard(State(sim): State<Simulator>, mut req: Request, next: Next) -> Response {
    let cookie = cookie_of(req.headers());
    // Nested routes see their path without `/rest`; the original URI has it.
    let path = req
        .extensions()
        .get::<axum::extract::OriginalUri>()
        .map_or_else(|| format!("/rest{}", req.uri().path()), |u| u.0.path().to_owned());
    let (user, fault, latency, drop_response, unauthorized_401) = sim.with(|rt, now| {
        rt.counters.requests += 1;
        let n = rt.counters.requests;
        let faults = rt.cfg.faults.clone();
        let drop_response = (faults.drop_response_every > 0 && n % faults.drop_response_every == 0)
            || rt.drop_response_of.as_deref() == Some(path.as_str());
        if rt.drop_response_of.as_deref() == Some(path.as_str()) {
            rt.drop_response_of = None;
        }
        if drop_response {
            rt.counters.dropped_responses += 1;
        }
        if rt.expire_before.as_deref() == Some(path.as_str()) {
            rt.expire_before = None;
            if let Some(s) = cookie.as_deref().and_then(|c| rt.sessions.get_mut(c)) {
                s.expired = true;
            }
        }
        let user = cookie.as_deref().and_then(|c| rt.session_user(c, now));
        if user.is_none() {
            rt.counters.session_redirects += 1;
        }
        let fault = if faults.rate_limit_every > 0 && n % faults.rate_limit_every == 0 {
            rt.counters.rate_limited += 1;
            Some(StatusCode::TOO_MANY_REQUESTS)
        } else if faults.unavailable_every > 0 && n % faults.unavailable_every == 0 {
            Some(StatusCode::SERVICE_UNAVAILABLE)
        } else {
            None
        };
        (user, fault, faults.latency, drop_response, rt.cfg.unauthorized_401)
    });
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
    let Some(user) = user else {
        if unauthorized_401 {
            return (StatusCode::UNAUTHORIZED, "Unauthorized").into_response();
        }
        return redirect("/login.html", None);
    };
    match fault {
        Some(StatusCode::TOO_MANY_REQUESTS) => {
            return (StatusCode::TOO_MANY_REQUESTS, [(RETRY_AFTER, "1")], "Too Many Requests")
                .into_response();
        }
        Some(status) => return (status, "Service Unavailable").into_response(),
        None => {}
    }
    req.extensions_mut().insert(User(user));
    let resp = next.run(req).await;
    if drop_response {
        // The request ran; its answer is lost: the headers go out, then the body fails and the
        // connection is cut, as when a proxy or the network drops it mid-response.
        let (parts, _) = resp.into_parts();
        let broken = futures::stream::once(async {
            Err::<bytes::Bytes, std::io::Error>(std::io::Error::other(
                "response dropped by fault injection",
            ))
        });
        return Response::from_parts(parts, axum::body::Body::from_stream(broken));
    }
    resp
}

/// A refusal of the role or version checks.
struct Denied(StatusCode, &'static str);

impl IntoResponse for Denied {
    fn into_response(self) -> Response {
        (self.0, self.1).into_response()
    }
}

/// 403 with a text body unless the user has one of `roles` (§3.5); `tfa` also demands
/// two-factor authentication (Responder L2, D5).
fn require(rt: &Runtime, user: &User, roles: &[&str], tfa: bool) -> Result<(), Denied> {
    let Some(u) = rt.cfg.users.iter().find(|u| u.username == user.0) else {
        return Err(Denied(StatusCode::FORBIDDEN, "Forbidden"));
    };
    if !roles.iter().any(|r| u.roles.iter().any(|have| have == r))
        || (tfa && u.totp_secret.is_none())
    {
        return Err(Denied(
            StatusCode::FORBIDDEN,
            "Access is denied: the user does not have the required role",
        ));
    }
    Ok(())
}

/// 404 for a request newer than the console (§4, §9).
fn since(rt: &Runtime, min: &str) -> Result<(), Denied> {
    let parse = |v: &str| v.split('.').map(|p| p.parse::<u64>().unwrap_or(0)).collect::<Vec<_>>();
    if parse(&rt.cfg.version) < parse(min) {
        return Err(Denied(StatusCode::NOT_FOUND, "Not Found"));
    }
    Ok(())
}

fn json_response(v: Value) -> Response {
    Json(v).into_response()
}

macro_rules! guard {
    ($e:expr) => {
        match $e {
            Ok(v) => v,
            Err(denied) => return denied.into_response(),
        }
    };
}

// ---- misc (§6.7) ----

async fn version(State(sim): State<Simulator>) -> Response {
    sim.with(|rt, _| {
        let version = api::VersionData { version: rt.cfg.version.clone() };
        Json(api::VersionAll { data: version }).into_response()
    })
}

// ---- sensors (§6.1) ----

fn matches_filter(sensor: &Value, f: &api::Filter) -> bool {
    let field = sensor.get(&f.field_name).map(|v| match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    });
    let Some(field) = field else { return false };
    let values: Vec<String> =
        f.values.iter().map(|v| v.as_str().map_or_else(|| v.to_string(), str::to_owned)).collect();
    match f.operator.as_str() {
        "Equals" => values.contains(&field),
        "NotEquals" => values.iter().all(|v| *v != field),
        "ContainsIgnoreCase" => {
            values.iter().any(|v| field.to_lowercase().contains(&v.to_lowercase()))
        }
        "NotContainsIgnoreCase" => {
            values.iter().all(|v| !field.to_lowercase().contains(&v.to_lowercase()))
        }
        _ => false,
    }
}

async fn sensors_query(
    State(sim): State<Simulator>,
    Extension(user): Extension<User>,
    Json(q): Json<Value>,
) -> Response {
    sim.with(|rt, _| {
        guard!(require(rt, &user, &["system_admin"], false));
        // `{}` lists everything (XSOAR, §6.1).
        let q: api::SensorsQuery = match serde_json::from_value(q) {
            Ok(q) => q,
            Err(e) => return (StatusCode::BAD_REQUEST, e.to_string()).into_response(),
        };
        // Filters match on the sensor's JSON, as the console filters on its field names.
        let all: Vec<(api::Sensor, Value)> = (0..rt.machines.len())
            .map(|i| crate::sensor::sensor(rt, i))
            .map(|s| {
                let v = to_json(&s);
                (s, v)
            })
            .filter(|(_, v)| q.filters.iter().all(|f| matches_filter(v, f)))
            .collect();
        let limit = usize::try_from(q.limit.unwrap_or(100).max(1)).unwrap_or(100);
        let offset = usize::try_from(q.offset.unwrap_or(0)).unwrap_or(0);
        let start = if rt.cfg.offset_is_page { offset.saturating_mul(limit) } else { offset };
        let count = |status: &str| all.iter().filter(|(s, _)| s.status == status).count();
        let sensors_status = api::SensorsStatus {
            class: ".SensorsStatusOverview",
            online_count: count("Online"),
            offline_count: count("Offline"),
            stale_count: count("Stale"),
            archived_count: count("Archived"),
            advanced_count: all.iter().filter(|(s, _)| s.collection_status == "ADVANCED").count(),
            outdated_count: all.iter().filter(|(s, _)| s.outdated).count(),
            ..api::SensorsStatus::default()
        };
        let page = api::SensorsPage {
            total_results: all.len(),
            sensors_status,
            has_more_results: start + limit < all.len(),
            sensors: all.into_iter().skip(start).take(limit).map(|(s, _)| s).collect(),
        };
        Json(page).into_response()
    })
}

// ---- isolation (§6.2) ----

async fn isolate(
    state: State<Simulator>,
    user: Extension<User>,
    body: Json<api::IsolateRequest>,
) -> Response {
    set_isolation(state, user, body, true)
}

async fn unisolate(
    state: State<Simulator>,
    user: Extension<User>,
    body: Json<api::IsolateRequest>,
) -> Response {
    set_isolation(state, user, body, false)
}

fn set_isolation(
    State(sim): State<Simulator>,
    Extension(user): Extension<User>,
    Json(body): Json<api::IsolateRequest>,
    on: bool,
) -> Response {
    sim.with(|rt, _| {
        guard!(require(rt, &user, &["analyst_l3"], false));
        let mut result = serde_json::Map::new();
        for id in &body.pylum_ids {
            let word = match rt.machine_by_pylum(id) {
                Some(i) => {
                    let m = &mut rt.machines[i];
                    let was = m.isolated;
                    m.isolated = on;
                    if on {
                        rt.counters.isolations += 1;
                    } else {
                        rt.counters.unisolations += 1;
                    }
                    let detail = json!({"machine": m.hostname, "wasIsolated": was});
                    rt.log.record(if on { "isolate" } else { "unisolate" }, &m.pylum_id, detail);
                    api::isolation::SUCCEEDED
                }
                None => api::isolation::UNKNOWN_PROBE,
            };
            result.insert(id.clone(), word.into());
        }
        json_response(Value::Object(result))
    })
}

// ---- remediation (§6.3) ----

async fn remediate(
    State(sim): State<Simulator>,
    Extension(user): Extension<User>,
    Json(body): Json<api::RemediateRequest>,
) -> Response {
    sim.with(|rt, now| {
        guard!(require(rt, &user, &["analyst_l3"], false));
        let at_ms = rt.epoch_ms();
        let mut items = Vec::new();
        for (machine_guid, actions) in &body.actions_by_machine {
            let Some(machine) = rt.machine_by_guid(machine_guid) else {
                return (StatusCode::BAD_REQUEST, format!("Unknown machine {machine_guid}"))
                    .into_response();
            };
            for a in actions {
                let needs_malop = body.malop_id.is_none()
                    && a.target_id.is_some()
                    && !api::actions::TARGET_WITHOUT_MALOP.contains(&a.action_type.as_str());
                // UNQUARANTINE_FILE came with 20.1.120 (§9): an older console cannot run it.
                let too_new = a.action_type == api::actions::UNQUARANTINE_FILE
                    && since(rt, "20.1.120").is_err();
                let refusal = too_new.then(|| {
                    let why = format!("action {} needs console 20.1.120", a.action_type);
                    ("UNSUPPORTED_ACTION".to_owned(), why)
                });
                items.push(RemediationItem {
                    machine,
                    target: a.target_id.clone().unwrap_or_default(),
                    action: a.action_type.clone(),
                    status: too_new.then_some(api::remediation_status::FAILURE),
                    error: refusal,
                    timestamp: at_ms,
                    needs_malop,
                });
            }
        }
        rt.counters.remediations_received += 1;
        let r = Remediation {
            id: uuid::Uuid::new_v4().to_string(),
            malop: body.malop_id.clone().unwrap_or_else(|| api::NOMALOP.into()),
            user: user.0.clone(),
            start_ms: at_ms,
            end_ms: None,
            created: now,
            items,
        };
        let v = rt.remediation_json(&r);
        rt.remediations.push(r);
        json_response(v)
    })
}

async fn remediation_progress(
    State(sim): State<Simulator>,
    Extension(user): Extension<User>,
    Path((username, malop, id)): Path<(String, String, String)>,
) -> Response {
    sim.with(|rt, _| {
        guard!(require(rt, &user, &["analyst_l3"], false));
        match rt
            .remediations
            .iter()
            .find(|r| r.id == id && r.malop == malop && r.user.eq_ignore_ascii_case(&username))
        {
            Some(r) => json_response(rt.remediation_json(r)),
            // Documented as 200 with an error message (§6.3, D14).
            None => {
                json_response(json!({"message": format!("No remediation {id} for malop {malop}")}))
            }
        }
    })
}

async fn remediation_status(
    State(sim): State<Simulator>,
    Extension(user): Extension<User>,
    Path(malop): Path<String>,
) -> Response {
    sim.with(|rt, _| {
        guard!(require(rt, &user, &["analyst_l3"], false));
        let all: Vec<Value> = rt
            .remediations
            .iter()
            .filter(|r| r.malop == malop)
            .map(|r| rt.remediation_json(r))
            .collect();
        json_response(Value::Array(all))
    })
}

// ---- visual search (§6.1): Machine → processes/files/registryEvents ----

/// A facet value as the features compare it: strings as they are, numbers and booleans as
/// text (msticpy filters `applicablePid` with a number, XSOAR `isActiveProbeConnected` with a
/// boolean).
fn facet_text(v: &Value) -> String {
    v.as_str().map_or_else(|| v.to_string(), str::to_owned)
}

/// Whether an element with `features` (name → values) passes every filter of the hop: each
/// facet must be a feature of the element and one of its values must equal one of the
/// filter's (case-insensitively). A facet the element type does not have matches nothing (the
/// Process element has `applicablePid`, not `pid`: msticpy's `find_process_by_pid`, XSOAR's
/// `PROCESS_INFO`).
fn passes(hop: &api::QueryHop, features: &[(&str, Vec<String>)]) -> bool {
    hop.filters.iter().all(|f| {
        features.iter().find(|(name, _)| *name == f.facet_name).is_some_and(|(_, have)| {
            f.values
                .iter()
                .map(facet_text)
                .any(|want| have.iter().any(|h| h.eq_ignore_ascii_case(&want)))
        })
    })
}

fn simple_values(features: &[(&str, Vec<String>)]) -> Value {
    Value::Object(
        features
            .iter()
            .filter(|(_, v)| !v.is_empty())
            .map(|(k, v)| ((*k).to_owned(), json!({"totalValues": v.len(), "values": v})))
            .collect(),
    )
}

async fn visual_query(
    State(sim): State<Simulator>,
    Extension(user): Extension<User>,
    Json(q): Json<api::VisualQuery>,
) -> Response {
    sim.with(|rt, _| {
        guard!(require(rt, &user, &["analyst_l3", "responder_l1", "responder_l2"], false));
        let machine_features = |i: usize| {
            let m = &rt.machines[i];
            vec![
                ("elementDisplayName", vec![m.hostname.to_lowercase()]),
                ("pylumId", vec![m.pylum_id.clone()]),
                // XSOAR's connectivity check (§6.1, I7).
                ("isActiveProbeConnected", vec![(m.online && !m.archived).to_string()]),
            ]
        };
        let mut results = serde_json::Map::new();
        let (machines, hop): (Vec<usize>, &api::QueryHop) = match q.query_path.as_slice() {
            [m, hop] if m.requested_type == "Machine" => {
                let machines = (0..rt.machines.len()).filter(|i| passes(m, &machine_features(*i))).collect();
                (machines, hop)
            }
            [hop] => ((0..rt.machines.len()).collect(), hop),
            _ => return (StatusCode::BAD_REQUEST, "Unsupported query path").into_response(),
        };
        for i in machines {
            let m = &rt.machines[i];
            if hop.requested_type == "Machine" {
                let features = machine_features(i);
                if passes(hop, &features) {
                    // The answer keys machines by their GUID, the remediation key (§6.1).
                    let shown: Vec<(&str, Vec<String>)> = features.into_iter().filter(|(k, _)| *k != "isActiveProbeConnected").collect();
                    results.insert(m.guid(), json!({"simpleValues": simple_values(&shown), "elementValues": {}, "guidString": m.guid()}));
                }
                continue;
            }
            let owner = element_ref("Machine", &m.guid(), &m.hostname.to_lowercase());
            for e in m.endpoint.elements(&hop.requested_type, &owner) {
                if passes(hop, &e.features) {
                    results.insert(e.guid.clone(), json!({
                        "simpleValues": simple_values(&e.features),
                        "elementValues": e.links, "guidString": e.guid,
                    }));
                }
            }
        }
        let n = results.len();
        json_response(json!({
            "data": {"resultIdToElementDataMap": results, "totalPossibleResults": n, "queryTerminated": false},
            "status": "SUCCESS", "hidePartialSuccess": false, "message": "", "expectedResults": 1, "failures": 0,
        }))
    })
}

// ---- files (§6.4) ----

/// An AES-256 zip holding one file, as the fetches return it.
fn zip_of(name: &str, content: &[u8], password: &str) -> Result<Vec<u8>, String> {
    let mut w = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let options = zip::write::SimpleFileOptions::default()
        .compression_method(zip::CompressionMethod::Deflated)
        .with_aes_encryption(zip::AesMode::Aes256, password);
    w.start_file(name, options).map_err(|e| e.to_string())?;
    w.write_all(content).map_err(|e| e.to_string())?;
    Ok(w.finish().map_err(|e| e.to_string())?.into_inner())
}

/// The zip answer, built on a blocking thread outside the state lock (AES key derivation and
/// deflate are slow enough to serialise every other request behind them).
async fn zip_response(name: String, content: Vec<u8>, password: String) -> Response {
    let built =
        tokio::task::spawn_blocking(move || zip_of(&name, &content, &password).map(|b| (name, b)))
            .await
            .map_err(|e| e.to_string())
            .and_then(|r| r);
    match built {
        Ok((name, bytes)) => (
            StatusCode::OK,
            [
                (CONTENT_TYPE, "application/octet-stream".to_owned()),
                (CONTENT_DISPOSITION, format!("attachment; filename=\"{name}.zip\"")),
            ],
            bytes,
        )
            .into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e).into_response(),
    }
}

/// What a fetch route found under the lock: a response, or a file to zip outside it.
enum Found {
    Answer(Response),
    File { name: String, content: Vec<u8>, password: String },
}

impl Found {
    async fn respond(self) -> Response {
        match self {
            Found::Answer(r) => r,
            Found::File { name, content, password } => zip_response(name, content, password).await,
        }
    }
}

async fn fetch_direct(
    State(sim): State<Simulator>,
    Extension(user): Extension<User>,
    Json(body): Json<api::FetchDirect>,
) -> Response {
    let found = sim.with(|rt, _| {
        if let Err(denied) = require(rt, &user, &["responder_l1", "responder_l2"], false) {
            return Found::Answer(denied.into_response());
        }
        let Some(i) = rt.machine_by_pylum(&body.pylum_id) else {
            return Found::Answer((StatusCode::BAD_REQUEST, "Unknown sensor").into_response());
        };
        let m = &rt.machines[i];
        let file = if m.online { m.endpoint.files.get(&body.path.to_lowercase()) } else { None };
        let Some(file) = file else {
            // No Content-Disposition: "file not found" to clients (C1).
            return Found::Answer(
                (StatusCode::OK, [(CONTENT_TYPE, "application/octet-stream")], Vec::new())
                    .into_response(),
            );
        };
        let name = file.name().to_owned();
        let content = file.content.clone();
        rt.counters.direct_fetches += 1;
        rt.log.record("fetch-direct", &m.pylum_id, json!({"path": body.path}));
        Found::File { name, content, password: rt.cfg.fetch_zip_password.clone() }
    });
    found.respond().await
}

async fn fetch_start(
    State(sim): State<Simulator>,
    Extension(user): Extension<User>,
    Json(body): Json<api::FetchStart>,
) -> Response {
    sim.with(|rt, now| {
        guard!(require(rt, &user, &["responder_l1", "responder_l2"], false));
        let mut failures = 0;
        for guid in &body.element_guids {
            // By File element: only an indexed file has one (§6.4).
            let found = rt
                .machines
                .iter()
                .enumerate()
                .find_map(|(i, m)| m.endpoint.indexed_file(guid).map(|f| (i, f.path.clone())));
            match found {
                Some((machine, file_path)) => {
                    let id = rt.batch_id();
                    rt.fetches.push(FetchBatch { id, machine, file_path, created: now });
                    rt.counters.fetch_batches += 1;
                }
                None => failures += 1,
            }
        }
        let status = if failures == 0 {
            "SUCCESS"
        } else if failures < body.element_guids.len() {
            "PARTIAL_SUCCESS"
        } else {
            "FAILURE"
        };
        Json(api::StatusEnvelope {
            // A string in the recording (`"true"`), a Boolean in the docs (§6.4).
            data: (failures == 0).to_string().into(),
            status,
            hide_partial_success: false,
            message: String::new(),
            expected_results: body.element_guids.len(),
            failures,
            failed_servers_info: api::FailedServersInfo::default(),
        })
        .into_response()
    })
}

async fn fetch_progress(
    State(sim): State<Simulator>,
    Extension(user): Extension<User>,
) -> Response {
    sim.with(|rt, now| {
        guard!(require(rt, &user, &["responder_l1", "responder_l2"], false));
        let data: Vec<api::FetchProgress> = rt
            .fetches
            .iter()
            .map(|f| api::FetchProgress {
                file_name: f.file_path.rsplit(['\\', '/']).next().unwrap_or_default().to_owned(),
                succeeded: rt.fetch_ready(f, now),
                batch_id: f.id,
                machine_name: rt.machines[f.machine].hostname.clone(),
            })
            .collect();
        json_response(json!({"data": data}))
    })
}

async fn fetch_files(
    State(sim): State<Simulator>,
    Extension(user): Extension<User>,
    Path(batch): Path<i64>,
) -> Response {
    let found = sim.with(|rt, now| {
        if let Err(denied) = require(rt, &user, &["responder_l1", "responder_l2"], false) {
            return Found::Answer(denied.into_response());
        }
        let error = || {
            Found::Answer(
                (StatusCode::INTERNAL_SERVER_ERROR, "Internal Server Error").into_response(),
            )
        };
        // Unknown or expired batch: 500 (XSOAR, §6.4).
        let Some(f) = rt.fetches.iter().find(|f| f.id == batch) else {
            return error();
        };
        if rt.is_expired(f, now) || !rt.fetch_ready(f, now) {
            return error();
        }
        let Some(file) = rt.machines[f.machine].endpoint.files.get(&f.file_path) else {
            return error();
        };
        let name = file.name().to_owned();
        let m = &rt.machines[f.machine];
        rt.log.record("fetchfile", &m.pylum_id, json!({"path": f.file_path, "batchId": f.id}));
        Found::File {
            name,
            content: file.content.clone(),
            password: rt.cfg.fetch_zip_password.clone(),
        }
    });
    found.respond().await
}

async fn fetch_close(
    State(sim): State<Simulator>,
    Extension(user): Extension<User>,
    Path(batch): Path<i64>,
) -> Response {
    sim.with(|rt, _| {
        guard!(require(rt, &user, &["responder_l1", "responder_l2"], false));
        let before = rt.fetches.len();
        rt.fetches.retain(|f| f.id != batch);
        if rt.fetches.len() == before {
            return (StatusCode::INTERNAL_SERVER_ERROR, "Internal Server Error").into_response();
        }
        json_response(json!({"status": "SUCCESS", "data": true, "message": ""}))
    })
}

// ---- IR tools and sensor batches (§6.5, §6.6) ----

async fn packages(State(sim): State<Simulator>, Extension(user): Extension<User>) -> Response {
    sim.with(|rt, _| {
        guard!(since(rt, "21.1.81"));
        guard!(require(rt, &user, &["responder_l2"], true));
        let list: Vec<api::Package> = rt
            .packages
            .iter()
            .map(|(n, (size, at))| api::Package {
                package_name: n.clone(),
                size: *size,
                upload_time: *at,
            })
            .collect();
        Json(list).into_response()
    })
}

async fn upload(
    State(sim): State<Simulator>,
    Extension(user): Extension<User>,
    mut form: Multipart,
) -> Response {
    let allowed = sim.with(|rt, _| {
        since(rt, "21.1.81").and_then(|()| require(rt, &user, &["responder_l2"], true))
    });
    guard!(allowed);
    let (mut name, mut size, mut file_name) = (None, 0usize, None);
    loop {
        match form.next_field().await {
            Ok(Some(mut field)) => match field.name() {
                Some(n) if api::upload::NAME_FIELDS.contains(&n) => name = field.text().await.ok(),
                Some(api::upload::FILE_PART) => {
                    file_name = field.file_name().map(str::to_owned);
                    // Counted while streaming, never held whole.
                    loop {
                        match field.chunk().await {
                            Ok(Some(chunk)) => size += chunk.len(),
                            Ok(None) => break,
                            Err(e) => {
                                return (StatusCode::BAD_REQUEST, e.to_string()).into_response();
                            }
                        }
                        if size > MAX_PACKAGE {
                            return (
                                StatusCode::BAD_REQUEST,
                                "Package size exceeds the 100MB limit",
                            )
                                .into_response();
                        }
                    }
                }
                _ => {}
            },
            Ok(None) => break,
            Err(e) => return (StatusCode::BAD_REQUEST, e.to_string()).into_response(),
        }
    }
    let Some(name) = name.or(file_name) else {
        return (StatusCode::BAD_REQUEST, "Missing package name").into_response();
    };
    sim.with(|rt, _| {
        // "upload a new package or upgrade an existing one" (§6.6.3).
        let at_ms = rt.epoch_ms();
        let replaced = rt.packages.insert(name.clone(), (size as u64, at_ms)).is_some();
        rt.counters.packages_uploaded += 1;
        rt.log.record("upload", &name, json!({"size": size, "replaced": replaced}));
        json_response(json!({"packageName": name, "size": size, "status": "SUCCESS"}))
    })
}

/// The IR run (shape unpublished, §6.6.2): the batch framework's body (§6.5) as XSOAR sends its
/// other batch verbs — `sensorsIds` (or `sensorIds`, both spellings seen, §5) and the package
/// name in `argument` (or the forensic run's `toolName`, §6.6.4).
async fn ir_run(
    State(sim): State<Simulator>,
    Extension(user): Extension<User>,
    Json(body): Json<Value>,
) -> Response {
    sim.with(|rt, now| {
        guard!(since(rt, "21.1.81"));
        guard!(require(rt, &user, &["responder_l2"], true));
        let run = api::IrRun::from_json(&body);
        if !rt.packages.contains_key(&run.package) {
            return (StatusCode::BAD_REQUEST, format!("Unknown IR tool package {:?}", run.package))
                .into_response();
        }
        let sensors: Vec<IrSensor> = run
            .sensor_ids
            .iter()
            .filter_map(|id| rt.machine_by_sensor(id))
            .filter(|i| !rt.machines[*i].archived)
            .map(|machine| IrSensor { machine, status: batch_state::PENDING, error: None })
            .collect();
        if sensors.is_empty() {
            // None of the selected sensors can take the action (§6.5).
            return StatusCode::NO_CONTENT.into_response();
        }
        let batch = Batch {
            id: rt.batch_id(),
            action_type: api::actions::IR_RUN,
            arguments: api::ir_run_arguments(&run.package, &run.arguments),
            package: run.package,
            user: user.0.clone(),
            start_ms: rt.epoch_ms(),
            created: now,
            sensors,
            aborted_by: None,
            abort_ms: 0,
        };
        rt.counters.ir_runs += 1;
        let v = rt.batch_json(&batch);
        rt.batches.push(batch);
        json_response(v)
    })
}

async fn ir_status(
    State(sim): State<Simulator>,
    Extension(user): Extension<User>,
    Path(batch): Path<i64>,
) -> Response {
    sim.with(|rt, _| {
        guard!(since(rt, "21.1.81"));
        guard!(require(rt, &user, &["responder_l2"], true));
        match rt.batches.iter().find(|b| b.id == batch) {
            Some(b) => json_response(rt.ir_rows(b)),
            None => (StatusCode::BAD_REQUEST, "UNKNOWN BATCH").into_response(),
        }
    })
}

async fn abort(
    State(sim): State<Simulator>,
    Extension(user): Extension<User>,
    Path(batch): Path<i64>,
) -> Response {
    sim.with(|rt, _| {
        guard!(require(rt, &user, &["system_admin"], false));
        let Some(i) = rt.batches.iter().position(|b| b.id == batch) else {
            return (StatusCode::BAD_REQUEST, "UNKNOWN BATCH").into_response();
        };
        // Only work not yet sent to sensors is aborted (§6.5, D8).
        let abort_ms = rt.epoch_ms();
        let b = &mut rt.batches[i];
        for s in b.sensors.iter_mut().filter(|s| s.status == batch_state::PENDING) {
            s.status = batch_state::ABORTED;
            let m = &rt.machines[s.machine];
            rt.log.record("Abort", &m.pylum_id, json!({"batchId": b.id, "machine": m.hostname}));
        }
        b.aborted_by = Some(user.0.clone());
        b.abort_ms = abort_ms;
        rt.counters.ir_aborts += 1;
        let v = rt.batch_json(&rt.batches[i]);
        json_response(v)
    })
}

async fn all_actions(State(sim): State<Simulator>, Extension(user): Extension<User>) -> Response {
    sim.with(|rt, _| {
        guard!(require(rt, &user, &["system_admin"], false));
        let all: Vec<Value> = rt.batches.iter().rev().map(|b| rt.batch_json(b)).collect();
        json_response(Value::Array(all))
    })
}
