//! The Falcon API's URL space: OAuth2, hosts, RTR (single, batch, queue, files, libraries),
//! behind one gate that checks the token and its scopes, counts the rate window and puts the
//! headers every answer carries (§1.3, §2, §3).

use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, FromRequest as _, Multipart, Path, Request, State};
use axum::http::header::{AUTHORIZATION, CONTENT_DISPOSITION, CONTENT_TYPE};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodRouter, get, post};
use base64::Engine as _;
use edrgate_simkit::Injected;
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use crate::fql::Filter;
use crate::state::{
    self, ApiError, BAD_TOKEN_LIMIT, Client, LibKind, PerHost, SCOPE_DEVICES_READ,
    SCOPE_DEVICES_WRITE, SCOPE_RTR_ADMIN, SCOPE_RTR_AUDIT, SCOPE_RTR_READ, SCOPE_RTR_WRITE,
    TOKEN_ROUTE_LIMIT, Tier,
};
use crate::{ARCHIVE_PASSWORD, Simulator};

mod batch;
mod library;

use batch::*;
use library::*;

const RTR: &str = "empower-api";
const LIBRARY: &str = "empower";
const DEVICES: &str = "device-api";
const ONLINE: &str = "cs.agentonline";
const AUTH: &str = "csam";
const GATEWAY: &str = "crowdstrike-api-gateway";
/// JSON bodies are small; uploads have their own limit.
const MAX_JSON_BODY: usize = 4 << 20;
/// §5.2, §7.1: clients send up to 10 minutes.
const MAX_TIMEOUT: Duration = Duration::from_secs(600);

/// What the gate learnt about a request.
#[derive(Clone)]
struct Ctx {
    trace: String,
    started: Instant,
    client: Option<&'static Client>,
}

/// A handler's refusal, boxed (a `Response` is large).
struct Reject(Box<Response>);

impl From<Response> for Reject {
    fn from(r: Response) -> Self {
        Reject(Box::new(r))
    }
}

impl IntoResponse for Reject {
    fn into_response(self) -> Response {
        *self.0
    }
}

type Answer = Result<Response, Reject>;

pub(crate) fn router(sim: Simulator) -> Router {
    let upload_limit = usize::try_from(sim.config().max_put_file_bytes)
        .unwrap_or(usize::MAX)
        .saturating_add(1 << 20);
    let rtr = "/real-time-response";
    let vendor = Router::new()
        .route("/oauth2/token", post(token))
        .route("/oauth2/revoke", post(revoke))
        .route("/devices/queries/devices/v1", get(devices_query))
        .route("/devices/queries/devices-scroll/v1", get(devices_scroll))
        .route("/real-time-response-audit/combined/sessions/v1", get(audit_sessions))
        .route("/devices/entities/devices/v2", get(devices_get).post(devices_post))
        .route("/devices/entities/online-state/v1", get(online_state))
        .route("/devices/entities/devices-actions/v2", post(devices_action))
        .route(&format!("{rtr}/entities/sessions/v1"), post(session_init).delete(session_delete))
        .route(&format!("{rtr}/entities/refresh-session/v1"), post(session_refresh))
        .route(&format!("{rtr}/entities/sessions/GET/v1"), post(sessions_get))
        .route(&format!("{rtr}/queries/sessions/v1"), get(sessions_query))
        .route(&format!("{rtr}/entities/queued-sessions/GET/v1"), post(queued_get))
        .route(
            &format!("{rtr}/entities/queued-sessions/command/v1"),
            axum::routing::delete(queued_delete),
        )
        .route(&format!("{rtr}/entities/command/v1"), command_route(Tier::ReadOnly).get(status))
        .route(
            &format!("{rtr}/entities/active-responder-command/v1"),
            command_route(Tier::Responder).get(status),
        )
        .route(&format!("{rtr}/entities/admin-command/v1"), command_route(Tier::Admin).get(status))
        .route(&format!("{rtr}/combined/batch-init-session/v1"), post(batch_init))
        .route(&format!("{rtr}/combined/batch-refresh-session/v1"), post(batch_refresh))
        .route(&format!("{rtr}/combined/batch-command/v1"), batch_route(Tier::ReadOnly, false))
        .route(
            &format!("{rtr}/combined/batch-active-responder-command/v1"),
            batch_route(Tier::Responder, false),
        )
        .route(&format!("{rtr}/combined/batch-admin-command/v1"), batch_route(Tier::Admin, false))
        .route(
            &format!("{rtr}/combined/batch-get-command/v1"),
            batch_route(Tier::Responder, true).get(batch_get_status),
        )
        .route(&format!("{rtr}/entities/file/v2"), files_route(true).delete(files_delete))
        .route(&format!("{rtr}/entities/file/v1"), files_route(false).delete(files_delete))
        .route(&format!("{rtr}/entities/extracted-file-contents/v1"), get(extracted))
        .route(
            &format!("{rtr}/entities/put-files/v1"),
            library(LibKind::PutFile, false, upload_limit),
        )
        .route(
            &format!("{rtr}/entities/put-files/v2"),
            library(LibKind::PutFile, true, upload_limit),
        )
        .route(&format!("{rtr}/queries/put-files/v1"), get(library_query))
        .route(&format!("{rtr}/entities/put-file-contents/v1"), get(put_file_contents))
        .route(&format!("{rtr}/entities/scripts/v1"), library(LibKind::Script, false, upload_limit))
        .route(&format!("{rtr}/entities/scripts/v2"), library(LibKind::Script, true, upload_limit))
        .route(&format!("{rtr}/queries/scripts/v1"), get(library_query))
        .route(&format!("{rtr}/queries/falcon-scripts/v1"), get(falcon_scripts_query))
        .route(&format!("{rtr}/entities/falcon-scripts/v1"), get(falcon_scripts_get))
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(MAX_JSON_BODY))
        .layer(middleware::from_fn_with_state(sim.clone(), gate))
        .with_state(sim.clone());
    let admin =
        Router::new().route("/_sim/hosts/{hostname}/online", post(admin_online)).with_state(sim);
    vendor.merge(admin)
}

/// A library's entities route (§8.3, §8.4): upload (v2 answers the created object) up to
/// `upload_limit` bytes, list, and on v1 delete.
fn library(kind: LibKind, v2: bool, upload_limit: usize) -> MethodRouter<Simulator> {
    let route = upload_route(kind, v2).get(library_entities);
    let route = if v2 { route } else { route.delete(library_delete) };
    route.layer(DefaultBodyLimit::max(upload_limit))
}

// ---- the gate ----

/// The scope a route needs (§2.4); `None` for the token routes.
fn required_scope(path: &str) -> Option<&'static str> {
    let path = path.trim_end_matches('/');
    if path.starts_with("/oauth2/") {
        return None;
    }
    if path.starts_with("/devices/") {
        return Some(if path == "/devices/entities/devices-actions/v2" {
            SCOPE_DEVICES_WRITE
        } else {
            SCOPE_DEVICES_READ
        });
    }
    if path.starts_with("/real-time-response-audit/") {
        return Some(SCOPE_RTR_AUDIT);
    }
    let Some(rest) = path.strip_prefix("/real-time-response/") else { return Some(SCOPE_RTR_READ) };
    let admin = [
        "admin-command",
        "batch-admin-command",
        "put-files",
        "put-file-contents",
        "scripts",
        "falcon-scripts",
    ];
    let write = [
        "active-responder-command",
        "batch-active-responder-command",
        "batch-get-command",
        "file",
        "extracted-file-contents",
    ];
    let resource = rest.split('/').nth(1).unwrap_or_default();
    Some(if admin.contains(&resource) {
        SCOPE_RTR_ADMIN
    } else if write.contains(&resource) {
        SCOPE_RTR_WRITE
    } else {
        SCOPE_RTR_READ
    })
}

fn meta(ctx: &Ctx, powered_by: &str) -> Value {
    // A believable query time: the real cloud takes tens of milliseconds at least.
    let qt = 0.01 + ctx.started.elapsed().as_secs_f64();
    json!({ "query_time": (qt * 1e6).round() / 1e6, "powered_by": powered_by, "trace_id": ctx.trace })
}

fn reply(status: u16, body: &Value) -> Response {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (status, [(CONTENT_TYPE, "application/json")], body.to_string()).into_response()
}

/// A success envelope: `resources` and `errors` (`[]` or `null`), plus top-level extras.
fn ok(ctx: &Ctx, pb: &str, status: u16, resources: Value, errors: Value) -> Response {
    reply(status, &json!({ "meta": meta(ctx, pb), "resources": resources, "errors": errors }))
}

fn fail(ctx: &Ctx, pb: &str, e: &ApiError) -> Response {
    reply(e.status, &json!({ "meta": meta(ctx, pb), "resources": [], "errors": [e.to_json()] }))
}

/// `e` in `pb`'s error envelope, as a handler's refusal.
fn reject(ctx: &Ctx, pb: &str, e: ApiError) -> Reject {
    fail(ctx, pb, &e).into()
}

/// A handler's `ApiError` answered in `pb`'s error envelope.
trait OrFail<T> {
    fn or_fail(self, ctx: &Ctx, pb: &str) -> Result<T, Reject>;
}

impl<T> OrFail<T> for Result<T, ApiError> {
    fn or_fail(self, ctx: &Ctx, pb: &str) -> Result<T, Reject> {
        self.map_err(|e| reject(ctx, pb, e))
    }
}

/// A list of entities, no errors.
fn list(ctx: &Ctx, pb: &str, items: Vec<Value>) -> Response {
    ok(ctx, pb, 200, Value::Array(items), json!([]))
}

/// One page of a query: `resources` and `meta.pagination`.
fn page(ctx: &Ctx, pb: &str, resources: Value, pagination: Value) -> Response {
    let mut body = json!({ "meta": meta(ctx, pb), "resources": resources, "errors": [] });
    body["meta"]["pagination"] = pagination;
    reply(200, &body)
}

/// A library write (one resource affected, `meta.writes`).
fn written(ctx: &Ctx, pb: &str, resources: Value) -> Response {
    let mut body = json!({ "meta": meta(ctx, pb), "resources": resources, "errors": [] });
    body["meta"]["writes"] = json!({ "resources_affected": 1 });
    reply(200, &body)
}

/// The meta-only envelope of gateway answers (401, 403, 429; §2.3, §3).
fn meta_only(ctx: &Ctx, pb: &str, status: u16, code: i64, message: &str) -> Response {
    reply(
        status,
        &json!({ "meta": meta(ctx, pb), "errors": [{ "code": code, "message": message }] }),
    )
}

fn rate_limited(ctx: &Ctx, limit: u32, retry_at: u64) -> Response {
    // The 429 text is [U] (§3).
    let mut r = meta_only(ctx, GATEWAY, 429, 429, "API rate limit exceeded.");
    set_header(&mut r, "x-ratelimit-retryafter", &retry_at.to_string());
    set_rate(&mut r, limit, 0);
    r
}

/// The rate window's headers (§3).
fn set_rate(r: &mut Response, limit: u32, left: u32) {
    set_header(r, "x-ratelimit-limit", &limit.to_string());
    set_header(r, "x-ratelimit-remaining", &left.to_string());
}

fn set_header(r: &mut Response, name: &'static str, value: &str) {
    if let Ok(v) = HeaderValue::from_str(value) {
        r.headers_mut().insert(name, v);
    }
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    let v = headers.get(AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = v.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

async fn gate(State(sim): State<Simulator>, mut req: Request, next: Next) -> Response {
    let mut ctx = Ctx { trace: state::uuid(), started: Instant::now(), client: None };
    let path = req.uri().path().to_owned();
    let scope = required_scope(&path);
    let token = bearer(req.headers()).map(str::to_owned);
    enum Verdict {
        Pass(u32, u32),
        Reject(Response),
    }
    let verdict = sim.with(|st, now| {
        let Some(scope) = scope else {
            return match st.take_token_route(now) {
                Ok(left) => Verdict::Pass(TOKEN_ROUTE_LIMIT, left),
                Err(at) => {
                    st.counters.rate_limited += 1;
                    Verdict::Reject(rate_limited(&ctx, TOKEN_ROUTE_LIMIT, at))
                }
            };
        };
        let Some(client) = token.as_deref().and_then(|t| st.caller(t, now)) else {
            return match st.take_bad_token(now) {
                Ok(left) => {
                    st.counters.unauthorized += 1;
                    let mut r =
                        meta_only(&ctx, GATEWAY, 401, 401, "access denied, invalid bearer token");
                    set_rate(&mut r, BAD_TOKEN_LIMIT, left);
                    Verdict::Reject(r)
                }
                Err(at) => {
                    st.counters.rate_limited += 1;
                    Verdict::Reject(rate_limited(&ctx, BAD_TOKEN_LIMIT, at))
                }
            };
        };
        ctx.client = Some(client);
        let limit = st.cfg.rate_limit_per_minute.max(1);
        let left = match st.take_cid(now) {
            Ok(left) => left,
            Err(at) => {
                st.counters.rate_limited += 1;
                return Verdict::Reject(rate_limited(&ctx, limit, at));
            }
        };
        if !client.scopes.contains(&scope) {
            st.counters.forbidden += 1;
            let mut r = meta_only(&ctx, GATEWAY, 403, 403, "access denied, authorization failed");
            set_rate(&mut r, limit, left);
            return Verdict::Reject(r);
        }
        Verdict::Pass(limit, left)
    });
    let mut resp = match verdict {
        Verdict::Reject(r) => r,
        Verdict::Pass(limit, left) => {
            req.extensions_mut().insert(ctx.clone());
            let mut r = next.run(req).await;
            // Every error body is JSON (§1.3), also axum's own (413, 405, a bad multipart).
            let json_body = r
                .headers()
                .get(CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|v| v.starts_with("application/json"));
            let s = r.status();
            if (s.is_client_error() || s.is_server_error()) && !json_body {
                let pb = if path.starts_with("/devices/") { DEVICES } else { RTR };
                let reason = s.canonical_reason().unwrap_or("error");
                r = fail(&ctx, pb, &ApiError::new(s.as_u16(), i64::from(s.as_u16()), reason));
            }
            set_rate(&mut r, limit, left);
            r
        }
    };
    set_header(&mut resp, "x-cs-traceid", &ctx.trace);
    set_header(&mut resp, "x-cs-region", "us-1");
    set_header(&mut resp, "server", "nginx");
    set_header(&mut resp, "x-content-type-options", "nosniff");
    set_header(&mut resp, "strict-transport-security", "max-age=31536000; includeSubDomains");
    resp
}

/// An injected fault, as the vendor answers it (`Sim::fault_response`).
pub(crate) fn fault_answer(injected: Injected, epoch: f64, limit: u32) -> Response {
    let ctx = Ctx { trace: state::uuid(), started: Instant::now(), client: None };
    let mut r = match injected {
        Injected::Unavailable => meta_only(
            &ctx,
            GATEWAY,
            500,
            500,
            &format!("Internal Server Error: Please provide trace-id='{}' to support", ctx.trace),
        ),
        Injected::TooManyRequests { retry_after_secs } => {
            rate_limited(&ctx, limit, epoch.ceil() as u64 + retry_after_secs)
        }
    };
    set_header(&mut r, "x-cs-traceid", &ctx.trace);
    if !matches!(injected, Injected::TooManyRequests { .. }) {
        set_rate(&mut r, limit, limit.saturating_sub(1));
    }
    r
}

/// The authenticated client (the gate let only authenticated requests through).
fn caller(ctx: &Ctx) -> Result<&'static Client, Reject> {
    ctx.client.ok_or_else(|| {
        meta_only(ctx, GATEWAY, 401, 401, "access denied, invalid bearer token").into()
    })
}

/// The caller and the query of a request that takes a `timeout` (§5.2, §7.1), and that
/// timeout.
fn timed(ctx: &Ctx, req: &Request) -> Result<(&'static Client, Query, Duration), Reject> {
    let client = caller(ctx)?;
    let q = Query::of(req.uri());
    let timeout = q.timeout().or_fail(ctx, RTR)?;
    Ok((client, q, timeout))
}

async fn not_found(axum::Extension(ctx): axum::Extension<Ctx>) -> Response {
    fail(&ctx, GATEWAY, &ApiError::new(404, 404, "Not Found"))
}

// ---- request helpers ----

/// The query string's pairs in order (repeated keys kept: `ids=a&ids=b`). A literal `+`
/// stays a `+`: it is FQL's AND, and clients that mean a space encode it as `%20`.
struct Query(Vec<(String, String)>);

impl Query {
    fn of(uri: &axum::http::Uri) -> Query {
        Query::parse(uri.query().unwrap_or_default())
    }

    fn parse(query: &str) -> Query {
        let decode = |s: &str| {
            let b = s.as_bytes();
            let mut out = Vec::with_capacity(b.len());
            let mut i = 0;
            while i < b.len() {
                if b[i] == b'%'
                    && let Some(h) = s.get(i + 1..i + 3)
                    && let Ok(v) = u8::from_str_radix(h, 16)
                {
                    out.push(v);
                    i += 3;
                    continue;
                }
                out.push(b[i]);
                i += 1;
            }
            String::from_utf8_lossy(&out).into_owned()
        };
        Query(
            query
                .split('&')
                .filter(|p| !p.is_empty())
                .map(|p| {
                    let (k, v) = p.split_once('=').unwrap_or((p, ""));
                    (decode(k), decode(v))
                })
                .collect(),
        )
    }

    fn get(&self, key: &str) -> Option<&str> {
        self.0.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }

    /// Every value of `key` (also `ids[]`), commas splitting lists.
    fn all(&self, key: &str) -> Vec<String> {
        let alt = format!("{key}[]");
        self.0
            .iter()
            .filter(|(k, _)| *k == key || *k == alt)
            .flat_map(|(_, v)| {
                v.split(',').map(str::trim).filter(|s| !s.is_empty()).map(str::to_owned)
            })
            .collect()
    }

    fn usize(&self, key: &str, default: usize) -> Result<usize, ApiError> {
        match self.get(key).filter(|v| !v.is_empty()) {
            None => Ok(default),
            Some(v) => {
                v.parse().map_err(|_| ApiError::bad_request(format!("{key} must be an integer")))
            }
        }
    }

    /// `limit`, refused outside `1..=max`.
    fn limit(&self, default: usize, max: usize) -> Result<usize, ApiError> {
        let limit = self.usize("limit", default)?;
        if !(1..=max).contains(&limit) {
            return Err(ApiError::bad_request(format!("limit must be between 1 and {max}")));
        }
        Ok(limit)
    }

    /// `filter`, an FQL expression (empty: everything).
    fn filter(&self) -> Result<Filter, ApiError> {
        Filter::parse(self.get("filter").unwrap_or_default())
            .map_err(|e| ApiError::bad_request(format!("Invalid filter: {e}")))
    }

    /// A parameter that must be a UUID (`session_id`, `cloud_request_id`).
    fn uuid(&self, key: &str) -> Result<&str, ApiError> {
        let v = self.get(key).unwrap_or_default();
        if !state::is_uuid(v) {
            return Err(ApiError::bad_request(format!("{key} must be a uuid string")));
        }
        Ok(v)
    }

    /// `ids`, 1 to `max` of them.
    fn ids(&self, max: usize) -> Result<Vec<String>, ApiError> {
        let ids = self.all("ids");
        check_ids(&ids, max)?;
        Ok(ids)
    }

    /// `timeout` (seconds) or `timeout_duration` (a Go duration), default 30 s (§5.2, §7.1).
    fn timeout(&self) -> Result<Duration, ApiError> {
        let d = if let Some(d) = self.get("timeout_duration").filter(|v| !v.is_empty()) {
            go_duration(d)
                .ok_or_else(|| ApiError::bad_request(format!("invalid timeout_duration {d}")))?
        } else {
            Duration::from_secs(self.usize("timeout", 30)? as u64)
        };
        if d.is_zero() || d > MAX_TIMEOUT {
            return Err(ApiError::bad_request("timeout must be between 1 and 600 seconds"));
        }
        Ok(d)
    }
}

/// `1m30s`, `500ms`, `2h` (units ns, us, ms, s, m, h).
fn go_duration(s: &str) -> Option<Duration> {
    let mut total = 0f64;
    let mut rest = s.trim();
    if rest.is_empty() {
        return None;
    }
    while !rest.is_empty() {
        let n = rest.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(rest.len());
        let value: f64 = rest[..n].parse().ok()?;
        rest = &rest[n..];
        let u = rest.find(|c: char| c.is_ascii_digit() || c == '.').unwrap_or(rest.len());
        let unit = match &rest[..u] {
            "ns" => 1e-9,
            "us" | "µs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return None,
        };
        rest = &rest[u..];
        total += value * unit;
    }
    (total.is_finite() && total < 1e9).then(|| Duration::from_secs_f64(total))
}

fn check_ids(ids: &[String], max: usize) -> Result<(), ApiError> {
    if ids.is_empty() || ids.len() > max {
        return Err(ApiError::bad_request(format!("ids: between 1 and {max} ids are required")));
    }
    Ok(())
}

fn parse_json<T: DeserializeOwned>(body: &Bytes) -> Result<T, ApiError> {
    serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("invalid request body: {e}")))
}

/// The request's JSON body, at most `MAX_JSON_BODY` bytes.
async fn json_body<T: DeserializeOwned>(req: Request) -> Result<T, ApiError> {
    let body = axum::body::to_bytes(req.into_body(), MAX_JSON_BODY)
        .await
        .map_err(|_| ApiError::bad_request("request body too large"))?;
    parse_json(&body)
}

fn pagination(offset: usize, limit: usize, total: usize) -> Value {
    json!({ "offset": offset, "limit": limit, "total": total })
}

/// The `limit` items from `offset` of `all`, and how many there are.
fn window<T>(all: impl IntoIterator<Item = T>, offset: usize, limit: usize) -> (Vec<T>, usize) {
    let all: Vec<T> = all.into_iter().collect();
    let total = all.len();
    (all.into_iter().skip(offset).take(limit).collect(), total)
}

// ---- OAuth2 (§2) ----

#[derive(Deserialize, Default)]
struct TokenForm {
    client_id: Option<String>,
    client_secret: Option<String>,
    token: Option<String>,
}

fn basic(headers: &HeaderMap) -> Option<(String, String)> {
    let v = headers.get(AUTHORIZATION)?.to_str().ok()?;
    let (scheme, b64) = v.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let raw = base64::engine::general_purpose::STANDARD.decode(b64.trim()).ok()?;
    let raw = String::from_utf8(raw).ok()?;
    let (id, secret) = raw.split_once(':')?;
    Some((id.to_owned(), secret.to_owned()))
}

/// An `application/x-www-form-urlencoded` body (`+` is a space here).
fn form(body: &Bytes) -> TokenForm {
    let q = Query::parse(&String::from_utf8_lossy(body).replace('+', "%20"));
    TokenForm {
        client_id: q.get("client_id").map(str::to_owned),
        client_secret: q.get("client_secret").map(str::to_owned),
        token: q.get("token").map(str::to_owned),
    }
}

async fn token(
    State(sim): State<Simulator>,
    axum::Extension(ctx): axum::Extension<Ctx>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let f = form(&body);
    let (id, secret) = match (f.client_id, f.client_secret) {
        (Some(id), Some(secret)) => (id, secret),
        (id, _) => match basic(&headers) {
            Some(creds) => creds,
            None => {
                let id = id.unwrap_or_default();
                return fail(
                    &ctx,
                    AUTH,
                    &ApiError::bad_request(format!(
                        "Failed to generate access token for clientID={id}."
                    )),
                );
            }
        },
    };
    let issued = sim.with(|st, now| match state::client_by_credentials(&id, &secret) {
        Some(c) => Some((st.issue_token(c, now), st.cfg.token_lifetime.as_secs())),
        None => {
            st.counters.token_failures += 1;
            None
        }
    });
    match issued {
        Some((token, secs)) => reply(
            201,
            &json!({ "access_token": token, "token_type": "bearer", "expires_in": secs }),
        ),
        None => meta_only(&ctx, AUTH, 403, 403, "Failed to issue access token - Not Authorized"),
    }
}

async fn revoke(
    State(sim): State<Simulator>,
    axum::Extension(ctx): axum::Extension<Ctx>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let authorized = basic(&headers)
        .is_some_and(|(id, secret)| state::client_by_credentials(&id, &secret).is_some());
    if !authorized {
        return meta_only(&ctx, AUTH, 403, 403, "access denied, authorization failed");
    }
    let Some(token) = form(&body).token.filter(|t| !t.is_empty()) else {
        return fail(&ctx, AUTH, &ApiError::bad_request("token is required"));
    };
    sim.with(|st, _| st.revoke(&token));
    reply(200, &json!({ "meta": meta(&ctx, AUTH), "errors": [] }))
}

// ---- hosts (§4) ----

async fn devices_query(
    State(sim): State<Simulator>,
    axum::Extension(ctx): axum::Extension<Ctx>,
    req: Request,
) -> Answer {
    let q = Query::of(req.uri());
    let offset = q.usize("offset", 0).or_fail(&ctx, DEVICES)?;
    let limit = q.limit(100, 5000).or_fail(&ctx, DEVICES)?;
    let filter = q.filter().or_fail(&ctx, DEVICES)?;
    let (ids, total) = sim.with(|st, _| window(matching_aids(st, &filter), offset, limit));
    Ok(page(&ctx, DEVICES, json!(ids), pagination(offset, limit, total)))
}

/// The scroll variant (§4.1): `offset` is an opaque token (here `scroll-<position>`); the
/// answer's `pagination.offset` is the next one and `expires_at` (ns) two minutes ahead.
async fn devices_scroll(
    State(sim): State<Simulator>,
    axum::Extension(ctx): axum::Extension<Ctx>,
    req: Request,
) -> Answer {
    let q = Query::of(req.uri());
    let limit = q.limit(100, 10_000).or_fail(&ctx, DEVICES)?;
    let start = match q.get("offset").filter(|o| !o.is_empty()) {
        None => 0,
        Some(token) => token
            .strip_prefix("scroll-")
            .and_then(|n| n.parse().ok())
            .ok_or_else(|| reject(&ctx, DEVICES, ApiError::bad_request("invalid offset token")))?,
    };
    let filter = q.filter().or_fail(&ctx, DEVICES)?;
    let ((ids, total), expires) = sim.with(|st, _| {
        let expires = (st.faults.now_epoch_secs() + 120.0) * 1e9;
        (window(matching_aids(st, &filter), start, limit), expires)
    });
    let next = format!("scroll-{}", start + ids.len());
    let pagination =
        json!({ "offset": next, "limit": limit, "total": total, "expires_at": expires as i64 });
    Ok(page(&ctx, DEVICES, json!(ids), pagination))
}

/// The aids of the hosts `filter` matches, in host order.
fn matching_aids(st: &state::State, filter: &Filter) -> Vec<String> {
    (0..st.hosts.len())
        .filter(|i| filter.matches(|f| device_field(st, *i, f)))
        .map(|i| st.hosts[i].aid.clone())
        .collect()
}

fn device_field(st: &state::State, i: usize, field: &str) -> Option<String> {
    let d = st.device_json(i);
    match d.get(field)? {
        Value::String(s) => Some(s.clone()),
        Value::Null => None,
        v => Some(v.to_string()),
    }
}

fn devices_answer(sim: &Simulator, ctx: &Ctx, ids: &[String]) -> Response {
    let found = sim.with(|st, _| {
        ids.iter()
            .filter_map(|id| st.host_by_aid(id))
            .map(|i| st.device_json(i))
            .collect::<Vec<_>>()
    });
    list(ctx, DEVICES, found)
}

async fn devices_get(
    State(sim): State<Simulator>,
    axum::Extension(ctx): axum::Extension<Ctx>,
    req: Request,
) -> Answer {
    let ids = Query::of(req.uri()).ids(100).or_fail(&ctx, DEVICES)?;
    Ok(devices_answer(&sim, &ctx, &ids))
}

#[derive(Deserialize)]
struct Ids {
    #[serde(default)]
    ids: Vec<String>,
}

async fn devices_post(
    State(sim): State<Simulator>,
    axum::Extension(ctx): axum::Extension<Ctx>,
    body: Bytes,
) -> Answer {
    let ids: Ids = parse_json(&body).or_fail(&ctx, DEVICES)?;
    check_ids(&ids.ids, 5000).or_fail(&ctx, DEVICES)?;
    Ok(devices_answer(&sim, &ctx, &ids.ids))
}

async fn online_state(
    State(sim): State<Simulator>,
    axum::Extension(ctx): axum::Extension<Ctx>,
    req: Request,
) -> Answer {
    let ids = Query::of(req.uri()).ids(100).or_fail(&ctx, ONLINE)?;
    let out = sim.with(|st, _| {
        ids.iter()
            .filter_map(|id| st.host_by_aid(id))
            .map(|i| {
                let h = &st.hosts[i];
                let state = if h.online { "online" } else { "offline" };
                json!({ "id": h.aid, "cid": st.cid, "last_seen": st.last_seen(i), "state": state })
            })
            .collect::<Vec<_>>()
    });
    Ok(list(&ctx, ONLINE, out))
}

async fn devices_action(
    State(sim): State<Simulator>,
    axum::Extension(ctx): axum::Extension<Ctx>,
    req: Request,
) -> Answer {
    let q = Query::of(req.uri());
    let action = q.get("action_name").unwrap_or_default().to_owned();
    let ids: Ids = json_body(req).await.or_fail(&ctx, DEVICES)?;
    if ids.ids.len() > 100 {
        return Err(reject(&ctx, DEVICES, ApiError::bad_request("at most 100 ids per request")));
    }
    let done = sim.with(|st, now| st.contain(&action, &ids.ids, now)).or_fail(&ctx, DEVICES)?;
    Ok(ok(&ctx, DEVICES, 202, Value::Array(done), json!([])))
}

// ---- sessions (§5) ----

#[derive(Deserialize, Default)]
struct InitBody {
    #[serde(default)]
    device_id: String,
    #[serde(default)]
    queue_offline: bool,
    #[serde(default)]
    origin: String,
}

fn host_of(st: &state::State, aid: &str) -> Result<usize, ApiError> {
    if !state::is_aid(aid) {
        return Err(ApiError::bad_request(format!("device_id must be 32 hex characters: {aid}")));
    }
    st.host_by_aid(aid)
        .ok_or_else(|| ApiError::new(404, 404, format!("No matching device found for ID {aid}")))
}

async fn session_init(
    State(sim): State<Simulator>,
    axum::Extension(ctx): axum::Extension<Ctx>,
    req: Request,
) -> Answer {
    let (client, ..) = timed(&ctx, &req)?;
    let b: InitBody = json_body(req).await.or_fail(&ctx, RTR)?;
    let v = sim
        .with(|st, now| {
            let host = host_of(st, &b.device_id)?;
            let id = st.init_session(client.id, host, b.queue_offline, &b.origin, now)?;
            Ok::<_, ApiError>(st.init_json(&id, now))
        })
        .or_fail(&ctx, RTR)?;
    Ok(ok(&ctx, RTR, 201, json!([v]), Value::Null))
}

async fn session_refresh(
    State(sim): State<Simulator>,
    axum::Extension(ctx): axum::Extension<Ctx>,
    body: Bytes,
) -> Answer {
    let client = caller(&ctx)?;
    let b: InitBody = parse_json(&body).or_fail(&ctx, RTR)?;
    let v = sim
        .with(|st, now| {
            let host = host_of(st, &b.device_id)?;
            let id = st.refresh_session(client.id, host, now)?;
            Ok::<_, ApiError>(st.init_json(&id, now))
        })
        .or_fail(&ctx, RTR)?;
    Ok(ok(&ctx, RTR, 201, json!([v]), json!([])))
}

async fn session_delete(
    State(sim): State<Simulator>,
    axum::Extension(ctx): axum::Extension<Ctx>,
    req: Request,
) -> Answer {
    let client = caller(&ctx)?;
    let q = Query::of(req.uri());
    let id = q.uuid("session_id").or_fail(&ctx, RTR)?;
    sim.with(|st, now| st.delete_session(client.id, id, now)).or_fail(&ctx, RTR)?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn sessions_get(
    State(sim): State<Simulator>,
    axum::Extension(ctx): axum::Extension<Ctx>,
    body: Bytes,
) -> Answer {
    let client = caller(&ctx)?;
    let ids: Ids = parse_json(&body).or_fail(&ctx, RTR)?;
    let out = sim.with(|st, now| {
        own_sessions(st, client, &ids.ids).map(|s| st.session_json(s, now)).collect()
    });
    Ok(list(&ctx, RTR, out))
}

/// The caller's sessions among `ids`, in their order (others' are not found).
fn own_sessions<'a>(
    st: &'a state::State,
    client: &'static Client,
    ids: &'a [String],
) -> impl Iterator<Item = &'a state::Session> {
    ids.iter().filter_map(move |id| st.sessions.get(id).filter(|s| s.client == client.id))
}

async fn sessions_query(
    State(sim): State<Simulator>,
    axum::Extension(ctx): axum::Extension<Ctx>,
    req: Request,
) -> Answer {
    let client = caller(&ctx)?;
    let q = Query::of(req.uri());
    let offset = q.usize("offset", 0).or_fail(&ctx, RTR)?;
    let limit = q.usize("limit", 100).or_fail(&ctx, RTR)?.clamp(1, 1000);
    let filter = q.filter().or_fail(&ctx, RTR)?;
    let user_me = filter.fields().any(|f| f == "user_id");
    let (ids, total) = sim.with(|st, now| {
        let mut all: Vec<String> = st
            .sessions_of(client.id)
            .filter(|s| {
                filter.matches(|f| {
                    // `user_id: '@me'` (§5.4): the caller.
                    if f == "user_id" && user_me {
                        return Some("@me".into());
                    }
                    st.session_field(s, f, now)
                })
            })
            .map(|s| s.id.clone())
            .collect();
        if q.get("sort").is_some_and(|s| s.ends_with("desc")) {
            all.reverse();
        }
        window(all, offset, limit)
    });
    Ok(page(&ctx, RTR, json!(ids), pagination(offset, limit, total)))
}

/// The CID's sessions of every user (§5.1 `RTRAuditSessions`), `logs` only
/// `with_command_info`.
async fn audit_sessions(
    State(sim): State<Simulator>,
    axum::Extension(ctx): axum::Extension<Ctx>,
    req: Request,
) -> Answer {
    let q = Query::of(req.uri());
    let offset = q.usize("offset", 0).or_fail(&ctx, RTR)?;
    let limit = q.limit(100, 1000).or_fail(&ctx, RTR)?;
    let filter = q.filter().or_fail(&ctx, RTR)?;
    let with_logs = q.get("with_command_info").is_some_and(|v| v.eq_ignore_ascii_case("true"));
    let (items, total) = sim.with(|st, now| {
        let all = st.all_sessions().filter(|s| filter.matches(|f| st.session_field(s, f, now)));
        let all = all.map(|s| {
            let mut v = st.session_json(s, now);
            if !with_logs {
                v["logs"] = json!([]);
            }
            v
        });
        window(all, offset, limit)
    });
    Ok(page(&ctx, RTR, Value::Array(items), pagination(offset, limit, total)))
}

async fn queued_get(
    State(sim): State<Simulator>,
    axum::Extension(ctx): axum::Extension<Ctx>,
    body: Bytes,
) -> Answer {
    let client = caller(&ctx)?;
    let ids: Ids = parse_json(&body).or_fail(&ctx, RTR)?;
    let out = sim.with(|st, _| {
        let own = own_sessions(st, client, &ids.ids);
        own.filter(|s| s.offline_queued).map(|s| st.queued_json(s)).collect()
    });
    Ok(list(&ctx, RTR, out))
}

async fn queued_delete(
    State(sim): State<Simulator>,
    axum::Extension(ctx): axum::Extension<Ctx>,
    req: Request,
) -> Answer {
    let client = caller(&ctx)?;
    let q = Query::of(req.uri());
    let (sid, crid) =
        (q.get("session_id").unwrap_or_default(), q.get("cloud_request_id").unwrap_or_default());
    sim.with(|st, _| st.delete_queued(client.id, sid, crid)).or_fail(&ctx, RTR)?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

// ---- commands (§6) ----

#[derive(Deserialize, Default)]
struct CommandBody {
    #[serde(default)]
    base_command: String,
    #[serde(default)]
    command_string: String,
    #[serde(default)]
    session_id: String,
    #[serde(default)]
    persist: bool,
}

/// `POST` of a single-host command at `tier` (§6.2).
fn command_route(tier: Tier) -> MethodRouter<Simulator> {
    post(move |sim: State<Simulator>, ctx: axum::Extension<Ctx>, body: Bytes| async move {
        command(tier, sim, ctx, body)
    })
}

fn command(
    tier: Tier,
    State(sim): State<Simulator>,
    axum::Extension(ctx): axum::Extension<Ctx>,
    body: Bytes,
) -> Answer {
    let client = caller(&ctx)?;
    let b: CommandBody = parse_json(&body).or_fail(&ctx, RTR)?;
    let (sid, crid, queued) = sim
        .with(|st, now| {
            let host = st.session_mut(client.id, &b.session_id, now)?.host;
            let (cmd, lib) = st.check(client.id, tier, host, &b.base_command, &b.command_string)?;
            let (crid, queued) = st.submit(
                &b.session_id,
                cmd,
                lib,
                &b.base_command,
                &b.command_string,
                b.persist,
                now,
            )?;
            Ok::<_, ApiError>((b.session_id.clone(), crid, queued))
        })
        .or_fail(&ctx, RTR)?;
    let v =
        json!([{ "session_id": sid, "cloud_request_id": crid, "queued_command_offline": queued }]);
    Ok(ok(&ctx, RTR, 201, v, Value::Null))
}

async fn status(
    State(sim): State<Simulator>,
    axum::Extension(ctx): axum::Extension<Ctx>,
    req: Request,
) -> Answer {
    let client = caller(&ctx)?;
    let q = Query::of(req.uri());
    let crid = q.uuid("cloud_request_id").or_fail(&ctx, RTR)?;
    let seq = q.usize("sequence_id", 0).or_fail(&ctx, RTR)?;
    let v = sim.with(|st, now| st.status_json(client.id, crid, seq, now)).or_fail(&ctx, RTR)?;
    Ok(ok(&ctx, RTR, 200, json!([v]), json!([])))
}

// ---- session files (§8.1, §8.2) ----

/// `GET` of a session's files, v1 or v2 (§8.1).
fn files_route(v2: bool) -> MethodRouter<Simulator> {
    get(
        move |State(sim): State<Simulator>,
              axum::Extension(ctx): axum::Extension<Ctx>,
              req: Request| async move { files_list(&sim, &ctx, &req, v2) },
    )
}

fn files_list(sim: &Simulator, ctx: &Ctx, req: &Request, v2: bool) -> Answer {
    let client = caller(ctx)?;
    let q = Query::of(req.uri());
    let sid = q.uuid("session_id").or_fail(ctx, RTR)?;
    let out = sim.with(|st, now| {
        if st.sessions.get(sid).is_none_or(|s| s.client != client.id) {
            return Err(ApiError::no_session());
        }
        Ok(st
            .session_files(client.id, sid, now)
            .filter(|f| v2 || now >= f.upload_done)
            .map(|f| if v2 { st.file_v2_json(f, now) } else { state::State::file_v1_json(f) })
            .collect::<Vec<_>>())
    });
    Ok(list(ctx, RTR, out.or_fail(ctx, RTR)?))
}

async fn files_delete(
    State(sim): State<Simulator>,
    axum::Extension(ctx): axum::Extension<Ctx>,
    req: Request,
) -> Answer {
    let client = caller(&ctx)?;
    let q = Query::of(req.uri());
    let sid = q.get("session_id").unwrap_or_default().to_owned();
    let ids = q.all("ids");
    let found = sim.with(|st, _| {
        let mut found = false;
        for f in st.files.iter_mut() {
            if f.client == client.id
                && f.session_id == sid
                && ids.iter().any(|i| *i == f.id.to_string())
            {
                f.deleted = true;
                found = true;
            }
        }
        found
    });
    if !found {
        return Err(reject(&ctx, RTR, ApiError::new(404, 404, "Could not find file for deletion")));
    }
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn extracted(
    State(sim): State<Simulator>,
    axum::Extension(ctx): axum::Extension<Ctx>,
    req: Request,
) -> Answer {
    let client = caller(&ctx)?;
    let q = Query::of(req.uri());
    let sid = q.uuid("session_id").or_fail(&ctx, RTR)?;
    let sha = q.get("sha256").unwrap_or_default().to_ascii_lowercase();
    if sha.len() != 64 || !sha.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(reject(&ctx, RTR, ApiError::bad_request("sha256 must be 64 hex characters")));
    }
    let filename = q.get("filename").filter(|f| !f.is_empty()).map(str::to_owned);
    let (found, encrypt) = sim.with(|st, now| {
        let host = st.sessions.get(sid).filter(|s| s.client == client.id).map(|s| s.host);
        // A file is downloadable with any session of the same host and caller: XSOAR opens a
        // new session for the host after a batch get and downloads with it (§10.1); whether the
        // real cloud allows it is [U] (§13.9).
        let f = host.and_then(|h| {
            st.files.iter().rev().find(|f| {
                f.sha256 == sha
                    && f.host == h
                    && f.client == client.id
                    && !f.deleted
                    && now >= f.upload_done
            })
        });
        let found = f.map(|f| (f.name.clone(), f.content.clone()));
        if found.is_some() {
            st.counters.files_downloaded += 1;
        }
        (found, st.cfg.encrypt_archive_headers)
    });
    let Some((name, content)) = found else {
        let e = ApiError::new(404, 404, format!("Could not find file with sha256 {sha}"));
        return Err(reject(&ctx, RTR, e));
    };
    let entry = filename.unwrap_or_else(|| crate::endpoint::Endpoint::basename(&name).to_owned());
    let e2 = entry.clone();
    let archive = tokio::task::spawn_blocking(move || {
        crate::archive::seven_zip(&e2, &content, ARCHIVE_PASSWORD, encrypt)
    })
    .await
    .ok()
    .and_then(Result::ok)
    .ok_or_else(|| reject(&ctx, RTR, ApiError::new(500, 500, "could not build the archive")))?;
    let disposition =
        format!("attachment; filename=\"{}.7z\"", entry.replace(['"', '\\', '\r', '\n'], "_"));
    let mut r =
        (StatusCode::OK, [(CONTENT_TYPE, "application/x-7z-compressed")], archive).into_response();
    set_header(&mut r, CONTENT_DISPOSITION.as_str(), &disposition);
    Ok(r)
}

// ---- admin route ----

#[derive(Deserialize)]
struct Online {
    online: bool,
}

async fn admin_online(
    State(sim): State<Simulator>,
    Path(hostname): Path<String>,
    body: Bytes,
) -> Response {
    let Ok(Online { online }) = serde_json::from_slice(&body) else {
        return reply(400, &json!({ "error": "body must be {\"online\": bool}" }));
    };
    if sim.device_id(&hostname).is_none() {
        return reply(404, &json!({ "error": format!("no host {hostname}") }));
    }
    sim.set_online(&hostname, online);
    reply(200, &json!({ "hostname": hostname, "online": online }))
}
