//! HTTP routes of the simulator: the token endpoints, the `/api` surface and the blob host.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::extract::{DefaultBodyLimit, Multipart, Path, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use serde::Serialize;
use serde_json::Value;

use crate::Simulator;
use crate::api::{self, ActionType, ErrorBody, ErrorEnvelope, ISOLATION_TYPES};
use crate::state::{self, Runtime};
use edrgate_simkit::Injected;

type Resp = Response;

pub(crate) fn router(sim: Simulator) -> Router {
    let limit = usize::try_from(sim.config().library_max_bytes).unwrap_or(usize::MAX) + 1024 * 1024;
    // Everything under `/api`, behind the bearer check. The docs write `/API/` in one place
    // (§0), so the same routes answer there too.
    let api = Router::new()
        .route("/machines", get(machines))
        .route("/machines/{id}", get(machine))
        .route("/machines/{id}/{verb}", post(machine_action))
        .route("/machineactions", get(actions))
        .route("/machineactions/{id}", get(action))
        .route("/machineactions/{id}/{func}", get(action_function).post(action_post))
        .route("/libraryfiles", get(library).post(upload))
        .route("/libraryfiles/{name}", delete(delete_library))
        .layer(middleware::from_fn_with_state(sim.clone(), bearer));
    Router::new()
        .route("/{tenant}/oauth2/v2.0/token", post(token_v2))
        .route("/{tenant}/oauth2/token", post(token_v1))
        .nest("/api", api.clone())
        .nest("/API", api)
        .route(
            "/blob/investigation-actions-data/{action}/CustomPlaybookCommandOutput/{blob}",
            get(blob),
        )
        .fallback(|| async {
            error(StatusCode::NOT_FOUND, "ResourceNotFound", "Resource not found")
        })
        .layer(DefaultBodyLimit::max(limit))
        .layer(middleware::from_fn(gate))
        .with_state(sim)
}

fn body<T: Serialize>(status: StatusCode, content_type: &'static str, v: &T) -> Resp {
    let text = serde_json::to_string(v).unwrap_or_default();
    (status, [(header::CONTENT_TYPE, content_type)], text).into_response()
}

/// The envelope of every API error (§7).
pub(crate) fn error(status: StatusCode, code: &str, message: &str) -> Resp {
    let envelope = ErrorEnvelope {
        error: ErrorBody {
            code: code.to_owned(),
            message: message.to_owned(),
            target: uuid::Uuid::now_v7().to_string(),
            details: None,
        },
    };
    body(status, "application/json; charset=utf-8", &envelope)
}

/// An OData query error: `code` empty, a `details` array (§4.4 [I] #12682).
fn odata_error(message: String) -> Resp {
    let envelope = ErrorEnvelope {
        error: ErrorBody {
            code: String::new(),
            message,
            target: uuid::Uuid::now_v7().to_string(),
            details: Some(Vec::new()),
        },
    };
    body(StatusCode::BAD_REQUEST, "application/json; charset=utf-8", &envelope)
}

/// 429 with `Retry-After` in seconds (§7 [D]).
fn too_many(wait: Duration, message: &str) -> Resp {
    sim_too_many(wait.as_secs_f64().ceil().max(1.0) as u64, message)
}

fn ok_json<T: Serialize>(status: StatusCode, v: &T) -> Resp {
    body(status, "application/json; odata.metadata=minimal; charset=utf-8", v)
}

fn not_found(what: &str) -> Resp {
    error(StatusCode::NOT_FOUND, "ResourceNotFound", what)
}

fn bad_request(code: &str, message: &str) -> Resp {
    error(StatusCode::BAD_REQUEST, code, message)
}

/// The service's answer to a fault simkit injects: 500 `InternalServerError`, or 429
/// `TooManyRequests` with `Retry-After` (§7).
pub(crate) fn fault_response(injected: Injected) -> Resp {
    match injected {
        Injected::Unavailable => {
            error(StatusCode::INTERNAL_SERVER_ERROR, "InternalServerError", "injected fault")
        }
        Injected::TooManyRequests { retry_after_secs } => {
            sim_too_many(retry_after_secs, "Rate limit is exceeded (injected fault)")
        }
    }
}

fn sim_too_many(secs: u64, message: &str) -> Resp {
    let mut r = error(StatusCode::TOO_MANY_REQUESTS, "TooManyRequests", message);
    r.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(secs));
    r
}

/// Every vendor route (faults are simkit's layer, in front): HTTP/2's `:authority` as `Host`.
async fn gate(mut req: Request, next: Next) -> Resp {
    // HTTP/2 carries the host as `:authority`, not `Host`; links are built from `Host`.
    if !req.headers().contains_key(header::HOST)
        && let Some(authority) =
            req.uri().authority().and_then(|a| HeaderValue::from_str(a.as_str()).ok())
    {
        req.headers_mut().insert(header::HOST, authority);
    }
    next.run(req).await
}

/// A valid, unexpired bearer the simulator issued (§1; 401 `Unauthorized` otherwise, §3.3).
async fn bearer(State(sim): State<Simulator>, req: Request, next: Next) -> Resp {
    let token = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::to_owned);
    let valid = sim.with(|rt, now| {
        let ok = token.as_ref().and_then(|t| rt.tokens.get(t)).is_some_and(|exp| *exp > now);
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
    next.run(req).await
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

async fn token_v2(sim: State<Simulator>, _tenant: Path<String>, form: String) -> Resp {
    token(sim, "scope", form)
}

async fn token_v1(sim: State<Simulator>, _tenant: Path<String>, form: String) -> Resp {
    token(sim, "resource", form)
}

/// `client_credentials` on the v2 endpoint (with `scope`) or the v1 endpoint (with
/// `resource`), §1.1 [D]. The body is read as a form whatever its `Content-Type` [U].
fn token(State(sim): State<Simulator>, audience: &'static str, form: String) -> Resp {
    let form: HashMap<String, String> =
        form_urlencoded::parse(form.as_bytes()).into_owned().collect();
    let cfg = sim.config();
    // Entra's error shape (§1.2 [D]); the AADSTS numbers are Entra's for these cases.
    let entra = |error: &'static str, code: u32, description: &str| {
        let now = state::utc_now();
        let trace = uuid::Uuid::now_v7().to_string();
        let e = api::TokenError {
            error,
            error_description: format!(
                "AADSTS{code}: {description}\r\nTrace ID: {trace}\r\nCorrelation ID: {}\r\nTimestamp: {now}",
                uuid::Uuid::now_v7()
            ),
            error_codes: vec![code],
            timestamp: now,
            trace_id: trace,
            correlation_id: uuid::Uuid::now_v7().to_string(),
        };
        body(StatusCode::BAD_REQUEST, "application/json; charset=utf-8", &e)
    };
    let field = |name: &str| form.get(name).map(String::as_str);
    if field("grant_type") != Some("client_credentials") {
        return entra(
            "unsupported_grant_type",
            70003,
            "The app requested an unsupported grant type.",
        );
    }
    if field(audience).is_none_or(str::is_empty) {
        return entra(
            "invalid_request",
            900144,
            &format!("The request body must contain the following parameter: '{audience}'."),
        );
    }
    if field("client_id") != Some(cfg.client_id.as_str()) {
        sim.with(|rt, _| rt.counters.tokens_refused += 1);
        return entra("unauthorized_client", 700016, "Application was not found in the directory.");
    }
    if field("client_secret") != Some(cfg.client_secret.as_str()) {
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
        &api::TokenResponse {
            token_type: "Bearer",
            expires_in: lifetime.as_secs(),
            ext_expires_in: lifetime.as_secs(),
            access_token: access,
        },
    )
}

// ---- OData query subset (§4.4, §10, §14.6) ----

/// A `$filter` expression: comparisons (`eq`, `in`) joined by `and` / `or`, with parentheses.
#[derive(Clone, Debug, PartialEq)]
enum Filter {
    /// Property (lower-case) and the values it may equal.
    Is(String, Vec<String>),
    /// `startswith(property, 'prefix')`, case-insensitive like `eq` here. The OData samples
    /// page of the API documents it on machines ("startswith(computerDnsName,'mymachine')",
    /// also the PSMDE module's `Get-MdeMachineByFilter` example).
    StartsWith(String, String),
    And(Vec<Filter>),
    Or(Vec<Filter>),
}

impl Filter {
    fn matches(&self, get: &impl Fn(&str) -> Option<String>) -> bool {
        match self {
            Filter::Is(prop, values) => get(prop)
                .is_some_and(|actual| values.iter().any(|v| v.eq_ignore_ascii_case(&actual))),
            Filter::StartsWith(prop, prefix) => get(prop).is_some_and(|actual| {
                actual.to_ascii_lowercase().starts_with(&prefix.to_ascii_lowercase())
            }),
            Filter::And(all) => all.iter().all(|f| f.matches(get)),
            Filter::Or(any) => any.iter().any(|f| f.matches(get)),
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
enum Token {
    Word(String),
    Text(String),
    Open,
    Close,
    Comma,
}

fn tokens(s: &str) -> Result<Vec<Token>, String> {
    let mut out = Vec::new();
    let mut chars = s.chars().peekable();
    while let Some(&c) = chars.peek() {
        match c {
            c if c.is_whitespace() => {
                chars.next();
            }
            '(' | ')' | ',' => {
                chars.next();
                out.push(match c {
                    '(' => Token::Open,
                    ')' => Token::Close,
                    _ => Token::Comma,
                });
            }
            '\'' => {
                chars.next();
                let mut text = String::new();
                loop {
                    match chars.next() {
                        Some('\'') if chars.peek() == Some(&'\'') => {
                            chars.next();
                            text.push('\'');
                        }
                        Some('\'') => break,
                        Some(c) => text.push(c),
                        None => return Err("unterminated string literal".into()),
                    }
                }
                out.push(Token::Text(text));
            }
            _ => {
                let mut word = String::new();
                while let Some(&c) = chars.peek() {
                    if c.is_whitespace() || "(),'".contains(c) {
                        break;
                    }
                    word.push(c);
                    chars.next();
                }
                out.push(Token::Word(word));
            }
        }
    }
    Ok(out)
}

struct Parser {
    tokens: Vec<Token>,
    at: usize,
}

impl Parser {
    fn peek_word(&self, w: &str) -> bool {
        matches!(self.tokens.get(self.at), Some(Token::Word(x)) if x.eq_ignore_ascii_case(w))
    }

    fn next(&mut self) -> Option<Token> {
        let t = self.tokens.get(self.at).cloned();
        self.at += 1;
        t
    }

    fn or(&mut self) -> Result<Filter, String> {
        let mut any = vec![self.and()?];
        while self.peek_word("or") {
            self.at += 1;
            any.push(self.and()?);
        }
        Ok(if any.len() == 1 { any.remove(0) } else { Filter::Or(any) })
    }

    fn and(&mut self) -> Result<Filter, String> {
        let mut all = vec![self.atom()?];
        while self.peek_word("and") {
            self.at += 1;
            all.push(self.atom()?);
        }
        Ok(if all.len() == 1 { all.remove(0) } else { Filter::And(all) })
    }

    fn value(&mut self) -> Result<String, String> {
        match self.next() {
            Some(Token::Text(t) | Token::Word(t)) => Ok(t),
            other => Err(format!("expected a value, found {other:?}")),
        }
    }

    fn atom(&mut self) -> Result<Filter, String> {
        match self.next() {
            Some(Token::Open) => {
                let inner = self.or()?;
                match self.next() {
                    Some(Token::Close) => Ok(inner),
                    _ => Err("')' expected".into()),
                }
            }
            Some(Token::Word(prop)) => {
                if matches!(self.tokens.get(self.at), Some(Token::Open)) {
                    if !prop.eq_ignore_ascii_case("startswith") {
                        return Err(format!("The query function '{prop}' is not supported."));
                    }
                    self.at += 1;
                    let Some(Token::Word(property)) = self.next() else {
                        return Err("a property expected in startswith(…)".into());
                    };
                    if self.next() != Some(Token::Comma) {
                        return Err("',' expected in startswith(…)".into());
                    }
                    let prefix = self.value()?;
                    if self.next() != Some(Token::Close) {
                        return Err("')' expected after startswith(…)".into());
                    }
                    return Ok(Filter::StartsWith(property.to_ascii_lowercase(), prefix));
                }
                match self.next() {
                    Some(Token::Word(op)) if op.eq_ignore_ascii_case("eq") => {
                        Ok(Filter::Is(prop.to_ascii_lowercase(), vec![self.value()?]))
                    }
                    Some(Token::Word(op)) if op.eq_ignore_ascii_case("in") => {
                        if self.next() != Some(Token::Open) {
                            return Err("'(' expected after 'in'".into());
                        }
                        let mut values = vec![self.value()?];
                        loop {
                            match self.next() {
                                Some(Token::Comma) => values.push(self.value()?),
                                Some(Token::Close) => break,
                                _ => return Err("',' or ')' expected".into()),
                            }
                        }
                        Ok(Filter::Is(prop.to_ascii_lowercase(), values))
                    }
                    other => Err(format!("unsupported operator {other:?} after '{prop}'")),
                }
            }
            other => Err(format!("unexpected {other:?}")),
        }
    }
}

fn parse_filter(filter: &str) -> Result<Filter, String> {
    let mut p = Parser { tokens: tokens(filter)?, at: 0 };
    let f = p.or()?;
    if p.at < p.tokens.len() {
        return Err(format!("unexpected {:?}", p.tokens[p.at]));
    }
    Ok(f)
}

/// The system query options of a collection read, checked like the service does.
struct OData {
    filter: Option<Filter>,
    top: usize,
    skip: usize,
    count: bool,
    newest_first: bool,
}

fn odata(q: &HashMap<String, String>) -> Result<OData, String> {
    const KNOWN: [&str; 6] = ["$filter", "$top", "$skip", "$count", "$orderby", "$select"];
    if let Some(k) = q.keys().find(|k| k.starts_with('$') && !KNOWN.contains(&k.as_str())) {
        // The message the service gives for `$stop` (§4.4 [I] #12682).
        return Err(format!("Custom query option '{k}' that starts with '$' is not supported."));
    }
    let filter = q.get("$filter").map(|f| parse_filter(f)).transpose()?;
    let number = |k: &str| -> Result<Option<usize>, String> {
        q.get(k).map(|v| v.parse().map_err(|_| format!("Invalid value '{v}' for {k}"))).transpose()
    };
    Ok(OData {
        filter,
        // `$top` max 10,000 (§9 [D]).
        top: number("$top")?.unwrap_or(10_000).min(10_000),
        skip: number("$skip")?.unwrap_or(0),
        count: q.get("$count").is_some_and(|c| c.eq_ignore_ascii_case("true")),
        newest_first: q.get("$orderby").is_some_and(|o| {
            let o = o.to_ascii_lowercase();
            o.starts_with("creationdatetimeutc") && o.ends_with(" desc")
        }),
    })
}

impl OData {
    fn keeps(&self, get: impl Fn(&str) -> Option<String>) -> bool {
        self.filter.as_ref().is_none_or(|f| f.matches(&get))
    }

    /// Server-driven paging (OData v4): at most `page_size` entries of what `$skip`/`$top`
    /// select, and, when the page cut them, `@odata.nextLink`: the same query with `$skip`
    /// moved on ("Maximum page size is 10,000", List machines API; the service pages with
    /// `@odata.nextLink` like other Microsoft Graph-style APIs, which clients such as XSOAR's
    /// and msticpy's follow).
    fn page<T>(
        &self,
        all: Vec<T>,
        page_size: usize,
        url: &str,
        q: &HashMap<String, String>,
    ) -> (Vec<T>, Option<String>) {
        let wanted = all.len().saturating_sub(self.skip).min(self.top);
        let page: Vec<T> = all.into_iter().skip(self.skip).take(wanted.min(page_size)).collect();
        if page.len() == wanted {
            return (page, None);
        }
        let mut next: Vec<(String, String)> = q
            .iter()
            .filter(|(k, _)| *k != "$skip" && *k != "$top")
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        next.push(("$skip".into(), (self.skip + page.len()).to_string()));
        if q.contains_key("$top") {
            next.push(("$top".into(), (wanted - page.len()).to_string()));
        }
        next.sort();
        let query = next
            .iter()
            .map(|(k, v)| format!("{}={}", encode(k), encode(v)))
            .collect::<Vec<_>>()
            .join("&");
        (page, Some(format!("{url}?{query}")))
    }
}

/// Percent-encodes a query component (RFC 3986 unreserved characters kept).
fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' | b'$' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

// ---- machines (§10) ----

async fn machines(
    State(sim): State<Simulator>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Resp {
    let query = match odata(&q) {
        Ok(o) => o,
        Err(message) => return odata_error(message),
    };
    let base = base(&sim, &headers);
    sim.with(|rt, now| {
        if let Some(r) = admit(rt, "machines", now) {
            return r;
        }
        if query.filter.is_none() {
            rt.counters.machine_lists_unfiltered += 1;
        }
        let matching: Vec<api::Machine> = rt
            .machines
            .iter()
            .filter(|m| {
                query.keeps(|p| match p {
                    "computerdnsname" => Some(m.name.clone()),
                    "id" => Some(m.id.clone()),
                    "healthstatus" => Some(if m.online { "Active" } else { "Inactive" }.into()),
                    "osplatform" => Some(m.os_platform.clone()),
                    _ => None,
                })
            })
            .map(|m| rt.machine_entity(m))
            .collect();
        let count = query.count.then_some(matching.len());
        let (value, next_link) =
            query.page(matching, rt.cfg.page_size, &format!("{base}/api/machines"), &q);
        // An empty result is 200 with an empty `value`, as clients expect (§10 [C]).
        ok_json(
            StatusCode::OK,
            &api::Collection {
                context: format!("{base}/api/$metadata#Machines"),
                count,
                value,
                next_link,
            },
        )
    })
}

async fn machine(State(sim): State<Simulator>, headers: HeaderMap, Path(id): Path<String>) -> Resp {
    let base = base(&sim, &headers);
    sim.with(|rt, now| {
        if let Some(r) = admit(rt, "machines", now) {
            return r;
        }
        // `{id}` may be the id or the computer name (§10 [D]).
        match rt
            .machines
            .iter()
            .find(|m| m.id.eq_ignore_ascii_case(&id) || m.name.eq_ignore_ascii_case(&id))
        {
            Some(m) => {
                let mut entity = rt.machine_entity(m);
                entity.context = Some(format!("{base}/api/$metadata#Machines/$entity"));
                ok_json(StatusCode::OK, &entity)
            }
            None => not_found(&format!("Machine {id} was not found")),
        }
    })
}

/// A body of the documented shape, or `None` (answered [`invalid_body`]).
fn parse_body<T: serde::de::DeserializeOwned>(v: &Value) -> Option<T> {
    serde_json::from_value(v.clone()).ok()
}

/// The documented 400 for a malformed body (`error_400_InvalidRequestBody.json`).
fn invalid_body() -> Resp {
    bad_request("InvalidRequestBody", "Request body is incorrect")
}

fn entity_context(base: &str) -> Option<String> {
    Some(format!("{base}/api/$metadata#MachineActions/$entity"))
}

/// `runliveresponse`, `isolate`, `unisolate` (§3, §11).
async fn machine_action(
    State(sim): State<Simulator>,
    headers: HeaderMap,
    Path((id, verb)): Path<(String, String)>,
    text: String,
) -> Resp {
    let base = base(&sim, &headers);
    let Ok(body) = serde_json::from_str::<Value>(&text) else {
        return invalid_body();
    };
    sim.with(|rt, now| match verb.to_ascii_lowercase().as_str() {
        "runliveresponse" => run_live_response(rt, now, &id, &body, &base),
        "isolate" => isolation(rt, now, &id, ActionType::Isolate, &body, &base),
        "unisolate" => isolation(rt, now, &id, ActionType::Unisolate, &body, &base),
        _ => not_found("Resource not found"),
    })
}

fn run_live_response(rt: &mut Runtime, now: Instant, id: &str, body: &Value, base: &str) -> Resp {
    // 10 calls per minute; refused calls count too (§3 limitation 1 [D]).
    let (limit, window) = (rt.cfg.live_response_calls, rt.cfg.live_response_window);
    if let Err(wait) = rt.lr_window.admit(now, limit, window) {
        rt.counters.responses_429 += 1;
        rt.counters.live_response_rate_limited += 1;
        return too_many(wait, "Live response API calls quota exceeded");
    }
    if body.as_object().is_some_and(|o| !o.contains_key("Commands")) {
        return bad_request(
            "MissingRequiredParameter",
            "Commands is required (body parameters are case-sensitive)",
        );
    }
    let Some(req) = parse_body::<api::RunLiveResponse>(body) else {
        return invalid_body();
    };
    let commands = match rt.validate(&req.commands) {
        Ok(c) => c,
        Err((code, message)) => return bad_request(code, &message),
    };
    let Some(machine) = rt.machine(id).map(|m| m.id.clone()) else {
        return not_found(&format!("Machine {id} was not found"));
    };
    if rt.actions.iter().any(|a| a.live_response_active() && a.machine == machine) {
        rt.counters.active_request_conflicts += 1;
        return bad_request(
            "ActiveRequestAlreadyExists",
            "Multiple live response sessions can't be executed on the same machine",
        );
    }
    // 25 concurrently running sessions (§3 limitation 2 [D]); pending ones count (§13 [I]).
    if rt.active_sessions() >= rt.cfg.session_cap {
        rt.counters.responses_429 += 1;
        rt.counters.session_cap_rejections += 1;
        return too_many(
            Duration::from_secs(5),
            "Too many requests: concurrent live response sessions limit reached",
        );
    }
    let request = state::Request {
        comment: req.comment,
        external_id: req.external_id,
        title: req.title,
        request_source: req.request_source,
    };
    let i = rt.create_action(ActionType::LiveResponse, &machine, request, commands, None, now);
    // 201 Created (§3.2: the text says 201).
    ok_json(StatusCode::CREATED, &rt.action_entity(&rt.actions[i], entity_context(base)))
}

fn isolation(
    rt: &mut Runtime,
    now: Instant,
    id: &str,
    kind: ActionType,
    body: &Value,
    base: &str,
) -> Resp {
    if let Some(r) = admit(rt, "isolate", now) {
        return r;
    }
    let (request, scope) = if kind == ActionType::Isolate {
        let Some(b) = parse_body::<api::IsolateBody>(body) else {
            return invalid_body();
        };
        // The isolate page lists the type without "required"; `Full` when absent [U].
        let scope = b.isolation_type.unwrap_or_else(|| "Full".into());
        if !ISOLATION_TYPES.contains(&scope.as_str()) {
            return bad_request("InvalidInput", &format!("Invalid IsolationType '{scope}'"));
        }
        let request = state::Request {
            comment: b.comment,
            external_id: b.external_id,
            title: b.title,
            request_source: b.request_source,
        };
        (request, Some(scope))
    } else {
        let Some(b) = parse_body::<api::CommentBody>(body) else {
            return invalid_body();
        };
        let request = state::Request {
            comment: b.comment,
            external_id: b.external_id,
            title: b.title,
            request_source: b.request_source,
        };
        (request, None)
    };
    // `Comment` is required on these actions (§11 [D]).
    if request.comment.as_deref().is_none_or(str::is_empty) {
        return bad_request("MissingRequiredParameter", "Comment is required");
    }
    let Some(machine) = rt.machine(id).map(|m| m.id.clone()) else {
        return not_found(&format!("Machine {id} was not found"));
    };
    if rt.actions.iter().any(|a| {
        !a.terminal()
            && a.machine == machine
            && matches!(a.kind, ActionType::Isolate | ActionType::Unisolate)
    }) {
        // "Action is already in progress" (§11 [D]); TheHive checks this code (§11 [C]).
        return bad_request("ActiveRequestAlreadyExists", "Action is already in progress");
    }
    let i = rt.create_action(kind, &machine, request, Vec::new(), scope, now);
    ok_json(StatusCode::CREATED, &rt.action_entity(&rt.actions[i], entity_context(base)))
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
    let query = match odata(&q) {
        Ok(o) => o,
        Err(message) => return odata_error(message),
    };
    let base = base(&sim, &headers);
    sim.with(|rt, now| {
        if let Some(r) = admit(rt, "machineactions", now) {
            return r;
        }
        rt.counters.action_list_calls += 1;
        let mut matching: Vec<&state::SimAction> = rt
            .actions
            .iter()
            .filter(|a| visible(rt, a, now))
            .filter(|a| {
                query.keeps(|p| match p {
                    "id" => Some(a.id.clone()),
                    "machineid" => Some(a.machine.clone()),
                    "type" => Some(a.kind.as_str().to_owned()),
                    "status" => Some(a.status.as_str().to_owned()),
                    "requestor" => Some(state::REQUESTOR.into()),
                    _ => None,
                })
            })
            .collect();
        if query.newest_first {
            matching.reverse();
        }
        let count = query.count.then_some(matching.len());
        let (page, next_link) =
            query.page(matching, rt.cfg.page_size, &format!("{base}/api/machineactions"), &q);
        let value: Vec<api::MachineAction> = page
            .into_iter()
            .map(|a| {
                let mut entity = rt.action_entity(a, None);
                if rt.cfg.list_omits_commands {
                    entity.commands = None;
                }
                entity
            })
            .collect();
        ok_json(
            StatusCode::OK,
            &api::Collection {
                context: format!("{base}/api/$metadata#MachineActions"),
                count,
                value,
                next_link,
            },
        )
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
            Some(i) => {
                ok_json(StatusCode::OK, &rt.action_entity(&rt.actions[i], entity_context(&base)))
            }
            None => not_found(&format!("Machine action {id} was not found")),
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
    // The blob host's own listener, when it has one (`Simulator::spawn_split_tls`).
    let blob_base = sim.blob_base().unwrap_or_else(|| base.clone());
    let index = func
        .strip_prefix("GetLiveResponseResultDownloadLink(index=")
        .and_then(|r| r.strip_suffix(')'))
        .and_then(|n| n.parse::<usize>().ok());
    let Some(index) = index else {
        return not_found("Resource not found");
    };
    sim.with(|rt, now| {
        if let Some(r) = admit(rt, "link", now) {
            return r;
        }
        let Some(i) = find(rt, &id, now) else {
            return not_found(&format!("Machine action {id} was not found"));
        };
        let a = &rt.actions[i];
        // Results exist for completed RunScript and GetFile commands only; PutFile "doesn't
        // have a response result" (§5 [D]); 404 for the other cases [U].
        let has_result = a
            .commands
            .get(index)
            .is_some_and(|c| c.blob.is_some() && c.lr.kind != api::CommandType::PutFile);
        if !has_result {
            return not_found("Live response command result was not found or is not complete");
        }
        rt.counters.links_issued += 1;
        let link = rt.link(&blob_base, &a.id, index);
        ok_json(
            StatusCode::OK,
            &api::StringValue { context: format!("{base}/api/$metadata#Edm.String"), value: link },
        )
    })
}

/// `POST /api/machineactions/{id}/cancel` (§6).
async fn action_post(
    State(sim): State<Simulator>,
    headers: HeaderMap,
    Path((id, func)): Path<(String, String)>,
    text: String,
) -> Resp {
    if func != "cancel" {
        return not_found("Resource not found");
    }
    let base = base(&sim, &headers);
    let parsed =
        serde_json::from_str::<Value>(&text).ok().and_then(|v| parse_body::<api::CommentBody>(&v));
    sim.with(|rt, now| {
        if let Some(r) = admit(rt, "cancel", now) {
            return r;
        }
        let Some(body) = parsed else {
            return invalid_body();
        };
        if body.comment.as_deref().is_none_or(str::is_empty) {
            return bad_request("MissingRequiredParameter", "Comment is required");
        }
        let Some(i) = find(rt, &id, now) else {
            return not_found(&format!("Machine action {id} was not found"));
        };
        rt.cancel(i, body.comment);
        // 200 with the entity, the same action id (§6 [D][I]).
        ok_json(StatusCode::OK, &rt.action_entity(&rt.actions[i], entity_context(&base)))
    })
}

/// The blob host: no bearer, a signature and an expiry instead (§5). Refusals are Azure
/// Storage's XML `AuthenticationFailed` with 403 [U: standard SAS behaviour].
async fn blob(
    State(sim): State<Simulator>,
    Path((action, blob)): Path<(String, String)>,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Resp {
    let denied = |why: &str| {
        let body = format!(
            "<?xml version=\"1.0\" encoding=\"utf-8\"?><Error><Code>AuthenticationFailed</Code><Message>Server failed to authenticate the request. Make sure the value of Authorization header is formed correctly including the signature.\n{why}</Message></Error>"
        );
        (StatusCode::FORBIDDEN, [(header::CONTENT_TYPE, "application/xml")], body).into_response()
    };
    let se = q.get("se").cloned().unwrap_or_default();
    let sig = q.get("sig").cloned().unwrap_or_default();
    let result = sim.with(|rt, _| {
        if headers.contains_key(header::AUTHORIZATION) {
            rt.counters.downloads_with_bearer += 1;
        }
        if rt.sign(&action, &blob, &se) != sig {
            return Err("Signature did not match.");
        }
        let expiry =
            time::OffsetDateTime::parse(&se, &time::format_description::well_known::Rfc3339)
                .map_err(|_| "Signature fields not well formed.")?;
        if time::OffsetDateTime::now_utc() >= expiry || rt.refuse_downloads > 0 {
            rt.refuse_downloads = rt.refuse_downloads.saturating_sub(1);
            rt.counters.expired_downloads += 1;
            return Err("Signed expiry time has passed.");
        }
        if rt.cut_downloads > 0 {
            rt.cut_downloads -= 1;
            rt.counters.cut_downloads += 1;
            return Ok(None);
        }
        let content = rt.actions.iter().find(|a| a.id == action).and_then(|a| {
            (0..a.commands.len())
                .find(|&i| rt.blob_name(&a.id, i) == blob)
                .and_then(|i| a.commands[i].blob.clone())
        });
        rt.counters.downloads += 1;
        content.map(Some).ok_or("The specified blob does not exist.")
    });
    match result {
        Ok(None) => edrgate_simkit::dropped(),
        Ok(Some(bytes)) => (
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

async fn library(
    State(sim): State<Simulator>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Resp {
    let query = match odata(&q) {
        Ok(o) => o,
        Err(message) => return odata_error(message),
    };
    let base = base(&sim, &headers);
    sim.with(|rt, now| {
        if let Some(r) = admit(rt, "library", now) {
            return r;
        }
        let all: Vec<api::LibraryFile> = rt.library.values().map(|f| f.entity.clone()).collect();
        let (value, next_link) =
            query.page(all, rt.cfg.page_size, &format!("{base}/api/libraryfiles"), &q);
        ok_json(
            StatusCode::OK,
            &api::Collection {
                context: format!("{base}/api/$metadata#LibraryFiles"),
                count: None,
                value,
                next_link,
            },
        )
    })
}

/// `POST /api/libraryfiles` (§8.1): multipart `File`/`file`, `Description`,
/// `ParametersDescription`, `HasParameters`, `OverrideIfExists`.
async fn upload(State(sim): State<Simulator>, mut form: Multipart) -> Resp {
    if let Some(r) = sim.with(|rt, now| admit(rt, "library", now)) {
        return r;
    }
    let max = sim.config().library_max_bytes;
    let (mut name, mut content) = (None, None);
    let (mut description, mut parameters_description) = (None, None);
    let (mut has_parameters, mut override_existing) = (false, false);
    loop {
        let field = match form.next_field().await {
            Ok(Some(f)) => f,
            Ok(None) => break,
            Err(_) => return bad_request("InvalidRequestBody", "Request body is incorrect"),
        };
        let part = field.name().unwrap_or_default().to_owned();
        match part.as_str() {
            // The docs' table says `File`, their curl example and most clients `file` (§8.1).
            "File" | "file" => {
                name = field.file_name().map(str::to_owned);
                match field.bytes().await {
                    Ok(b) if b.len() as u64 <= max => content = Some(b.to_vec()),
                    _ => {
                        return bad_request(
                            "BadRequest",
                            &format!("File size exceeds the maximum of {max} bytes"),
                        );
                    }
                }
            }
            other => {
                let text = field.text().await.unwrap_or_default();
                match other {
                    "Description" => description = Some(text),
                    "ParametersDescription" => parameters_description = Some(text),
                    "HasParameters" => has_parameters = text.eq_ignore_ascii_case("true"),
                    "OverrideIfExists" => override_existing = text.eq_ignore_ascii_case("true"),
                    _ => {}
                }
            }
        }
    }
    let (Some(name), Some(content)) = (name, content) else {
        return bad_request("MissingRequiredParameter", "File is required");
    };
    // Only alphanumerics, `-`, `_` and `.` (§8.1, portal guidance [D]).
    if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b)) {
        return bad_request(
            "InvalidInput",
            "File name may contain only letters, digits, '-', '_' and '.'",
        );
    }
    sim.with(|rt, _| {
        let exists = rt.library.contains_key(&name);
        if exists && !override_existing {
            // Undocumented (§8.1): 400 [U] (409 is claimed without evidence).
            return bad_request(
                "BadRequest",
                &format!("File '{name}' already exists in the library"),
            );
        }
        rt.counters.library_uploads += 1;
        let mut file = state::lib_file(&name, content, description.as_deref(), has_parameters);
        file.entity.parameters_description = parameters_description;
        rt.log.record("LibraryUpload", &name, state::library_detail(&file, exists));
        let entity = file.entity.clone();
        rt.library.insert(name, file);
        ok_json(StatusCode::OK, &entity)
    })
}

/// `DELETE /api/libraryfiles/{fileName}` (§8.3): 204, or 404 for an unknown name.
async fn delete_library(State(sim): State<Simulator>, Path(name): Path<String>) -> Resp {
    sim.with(|rt, now| {
        if let Some(r) = admit(rt, "library", now) {
            return r;
        }
        match rt.library.remove(&name) {
            Some(file) => {
                rt.log.record("LibraryDelete", &name, state::library_detail(&file, false));
                StatusCode::NO_CONTENT.into_response()
            }
            None => not_found(&format!("File '{name}' was not found")),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn is(p: &str, v: &[&str]) -> Filter {
        Filter::Is(p.into(), v.iter().map(|s| (*s).to_owned()).collect())
    }

    #[test]
    fn filters_parse() {
        assert_eq!(
            parse_filter("id in ('a','b') and type eq 'LiveResponse'").unwrap(),
            Filter::And(vec![is("id", &["a", "b"]), is("type", &["LiveResponse"])])
        );
        assert_eq!(
            parse_filter("computerDnsName eq 'o''hara'").unwrap(),
            is("computerdnsname", &["o'hara"])
        );
        // Akto's "is something running" query (§4.4 [C]).
        assert_eq!(
            parse_filter("machineId eq 'm' and (status eq 'Pending' or status eq 'InProgress')")
                .unwrap(),
            Filter::And(vec![
                is("machineid", &["m"]),
                Filter::Or(vec![is("status", &["Pending"]), is("status", &["InProgress"])]),
            ])
        );
        assert_eq!(
            parse_filter("startswith(computerDnsName,'ws-042') and healthStatus eq 'Active'")
                .unwrap(),
            Filter::And(vec![
                Filter::StartsWith("computerdnsname".into(), "ws-042".into()),
                is("healthstatus", &["Active"]),
            ])
        );
        assert!(parse_filter("contains(computerDnsName,'x')").is_err());
        assert!(parse_filter("startswith(computerDnsName 'x')").is_err());
        assert!(parse_filter("id eq 'a' extra").is_err());
        assert!(parse_filter("id gt 'a'").is_err());
    }
}
