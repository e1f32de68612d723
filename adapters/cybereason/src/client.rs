//! The typed client: the browser-style session of §3 and the routes of §6 of
//! `shared/vendor-apis/cybereason.md`.
//!
//! **Session.** One `JSESSIONID` per backend, obtained by the form login (`POST /login.html`,
//! then the TOTP form on `/` when the page asks for it). Logins are serialised (one at a time,
//! §7) and repeated proactively before the cookie's lifetime ends. The login always answers 200
//! HTML in the end, so success is read from the redirect target and the page, never from the
//! status: a `…error…` target or the login page again is a failed login (`vendor_auth_failed`),
//! a `…reset…` target an expired password (§3.1, §3.3).
//!
//! **Lost sessions.** A 302 or an HTML page on a `/rest/` call means the session is gone
//! (§3.4, §8.2). The client logs in again once; an idempotent read is replayed, a request that
//! starts an action is not: it returns [`CrError::SessionLost`] and the adapter checks the
//! vendor's state before sending anything again (§7).
//!
//! **Budget.** Every call passes a per-backend rate gate (`calls_per_minute`); 429 is honoured
//! with its `Retry-After` (briefly here for reads, else by the engine between steps).

use std::future::Future;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use edrgate_adapter::http::{self, Backoff, TlsOptions};
use edrgate_adapter::{AdapterError, ErrorCode, SharedBudget};
use governor::{DefaultDirectRateLimiter, RateLimiter};
use reqwest::header::{
    CONTENT_DISPOSITION, CONTENT_TYPE, COOKIE, HeaderValue, LOCATION, SET_COOKIE,
};
use reqwest::{Method, RequestBuilder, Response};
use secrecy::{ExposeSecret as _, SecretString};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;
use tokio::sync::Mutex;
use tokio_util::io::ReaderStream;

use crate::config::CybereasonConfig;
use crate::mapping::{CrError, classify, is_login_page};
use crate::wire::{self, Filter};

/// Bytes of an error body kept for classification and messages.
const ERROR_BODY_LIMIT: usize = 4096;
/// What the `offset` of `POST /rest/sensors/query` counts on this console (§6.1).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Offsets {
    Rows,
    Pages,
}

/// Retries of idempotent calls inside a step: short, since the engine backs off between steps.
const READ_RETRY: Backoff =
    Backoff { base: Duration::from_millis(100), max: Duration::from_secs(2), max_attempts: 3 };
/// Sensors per page of `POST /rest/sensors/query`.
const PAGE_SIZE: u64 = 500;

/// Builds the TOTP generator of a base32 secret (RFC 6238 defaults: SHA-1, 6 digits, 30 s).
pub(crate) fn totp(base32: &str) -> Result<totp_rs::Totp, String> {
    let cleaned: String = base32.chars().filter(|c| !c.is_whitespace()).collect();
    let secret = totp_rs::Secret::try_from_base32(cleaned.to_ascii_uppercase())
        .map_err(|_| "not a base32 secret".to_owned())?;
    totp_rs::Builder::new().with_secret(secret).build().map_err(|e| e.to_string())
}

/// Whether the request may be sent again after a new login.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Replay {
    /// A read: replayed once after a lost session.
    Read,
    /// Starts an action: never replayed here (the adapter reconciles first).
    Never,
}

struct Session {
    cookie: HeaderValue,
    since: Instant,
    generation: u64,
}

pub(crate) struct CrClient {
    http: reqwest::Client,
    base: String,
    pub(crate) username: String,
    password: SecretString,
    totp: Option<SecretString>,
    session: Mutex<Option<Session>>,
    session_use: Duration,
    generations: AtomicU64,
    gate: DefaultDirectRateLimiter,
    calls_per_minute: u32,
    /// The call quota kept with the other gateway replicas, once the engine gave it.
    shared: OnceLock<Arc<dyn SharedBudget>>,
}

impl CrClient {
    pub(crate) fn new(cfg: &CybereasonConfig) -> Result<Self, AdapterError> {
        let tls = TlsOptions::from_settings(
            cfg.ca_file.as_deref(),
            cfg.insecure_skip_verify,
            cfg.pinned_cert_sha256.as_deref(),
        )?;
        let http = http::client(&tls, Duration::from_secs(cfg.read_timeout_secs))?;
        let per_minute = NonZeroU32::new(cfg.calls_per_minute.max(1)).unwrap_or(NonZeroU32::MIN);
        Ok(CrClient {
            http,
            base: cfg.url.trim_end_matches('/').to_owned(),
            username: cfg.username.clone(),
            password: cfg.password.clone(),
            totp: cfg.totp_secret.clone(),
            session: Mutex::new(None),
            session_use: cfg.session_use(),
            generations: AtomicU64::new(0),
            gate: RateLimiter::direct(edrgate_adapter::rate::window_quota(
                per_minute,
                Duration::from_secs(60),
            )),
            calls_per_minute: per_minute.get(),
            shared: OnceLock::new(),
        })
    }

    /// Keeps the first shared budget the engine hands over (see `Adapter::use_shared_budget`).
    pub(crate) fn use_shared_budget(&self, budget: Arc<dyn SharedBudget>) {
        let _ = self.shared.set(budget);
    }

    /// Waits for the call budget: this process's rate gate, then, with several replicas, the
    /// quota they share (per console URL), so together they stay within `calls_per_minute`.
    async fn pace(&self) -> Result<(), CrError> {
        self.gate.until_ready().await;
        let Some(shared) = self.shared.get().filter(|s| s.is_shared()) else {
            return Ok(());
        };
        let scope = format!("cybereason:{}:calls", self.base);
        while let Some(wait) =
            shared.take_call(&scope, self.calls_per_minute, Duration::from_secs(60)).await?
        {
            tokio::time::sleep(wait).await;
        }
        Ok(())
    }

    // ---- sensors (§6.1) ----

    /// Every sensor matching `filters`, page by page. What `offset` counts is not settled
    /// (§6.1, §11.8): XSOAR computes `offset = (page-1)*pageSize` and Rapid7 describes offset 0
    /// as the first batch of `limit` sensors (rows), while the `cybereason` PyPI client
    /// increments it by one per page (`aiter_pages`, page numbers). Rows are tried first; a
    /// follow-up page that brings no new sensor while the console reports more
    /// (`totalResults`, `hasMoreResults`) means the offset counts pages, and the listing goes
    /// on that way. When neither makes progress the listing is refused rather than returned
    /// short.
    pub(crate) async fn sensors(&self, filters: Vec<Filter>) -> Result<Vec<wire::Sensor>, CrError> {
        let mut all: Vec<wire::Sensor> = Vec::new();
        let mut offsets = Offsets::Rows;
        // Pages that brought new sensors so far.
        let mut page_index: u64 = 0;
        loop {
            let offset = match offsets {
                Offsets::Rows => all.len() as u64,
                Offsets::Pages => page_index,
            };
            let query = wire::SensorsQuery {
                limit: Some(PAGE_SIZE),
                offset: Some(offset),
                filters: filters.clone(),
            };
            let page: wire::SensorsPage = self.post_read("/rest/sensors/query", &query).await?;
            let before = all.len();
            for s in page.sensors {
                if !all.iter().any(|k| k.sensor_id == s.sensor_id) {
                    all.push(s);
                }
            }
            if all.len() > before {
                if !page.has_more_results {
                    return Ok(all);
                }
                page_index += 1;
                continue;
            }
            // No new sensor: the end of the listing, unless the page before promised more.
            if page_index == 0 {
                return Ok(all);
            }
            match offsets {
                Offsets::Rows if page_index == 1 => {
                    tracing::info!(
                        rows = all.len(),
                        total = page.total_results,
                        "cybereason sensors/query: the offset counts pages on this console"
                    );
                    offsets = Offsets::Pages;
                }
                _ => {
                    return Err(CrError::Api(
                        AdapterError::transient(
                            ErrorCode::VendorUnavailable,
                            format!(
                                "the Cybereason sensor listing made no progress after {} of {} sensors (offset {offset}); refusing a partial list",
                                all.len(),
                                page.total_results
                            ),
                        )
                        .with_vendor("sensors/query", String::new()),
                    ));
                }
            }
        }
    }

    // ---- isolation (§6.2) ----

    /// Isolates or releases one machine; the answer maps the pylum id to its result word.
    pub(crate) async fn isolate(
        &self,
        pylum_id: &str,
        isolate: bool,
    ) -> Result<std::collections::BTreeMap<String, String>, CrError> {
        let verb = if isolate { "isolate" } else { "un-isolate" };
        let body = wire::IsolateRequest { pylum_ids: vec![pylum_id.to_owned()], malop_id: None };
        let path = format!("/rest/monitor/global/commands/{verb}");
        // Not replayed: the adapter first checks the sensor's `isolated` flag.
        self.json(Method::POST, &path, Some(&body), Replay::Never).await
    }

    // ---- remediation (§6.3) ----

    pub(crate) async fn remediate(
        &self,
        request: &wire::RemediateRequest,
    ) -> Result<wire::Remediation, CrError> {
        self.json(Method::POST, "/rest/remediate", Some(request), Replay::Never).await
    }

    pub(crate) async fn remediation_progress(
        &self,
        malop_id: &str,
        remediation_id: &str,
    ) -> Result<wire::Remediation, CrError> {
        let path = format!(
            "/rest/remediate/progress/{}/{}/{}",
            segment(&self.username),
            segment(malop_id),
            segment(remediation_id)
        );
        self.get_json(&path).await
    }

    /// Every remediation of a malop (`NOMALOP` for those without one, §6.3), for
    /// reconciliation.
    pub(crate) async fn remediations(
        &self,
        malop_id: &str,
    ) -> Result<Vec<wire::Remediation>, CrError> {
        self.get_json(&format!("/rest/remediate/status/{}", segment(malop_id))).await
    }

    // ---- investigation (§6.1 visual search, §6.4 files) ----

    pub(crate) async fn visual_query(
        &self,
        query: &wire::VisualQuery,
    ) -> Result<wire::VisualData, CrError> {
        let envelope: wire::Envelope =
            self.post_read("/rest/visualsearch/query/simple", query).await?;
        if !envelope.status.eq_ignore_ascii_case("SUCCESS") {
            return Err(CrError::Api(
                AdapterError::transient(
                    ErrorCode::VendorUnavailable,
                    "the Cybereason query did not succeed",
                )
                .with_vendor(envelope.status, envelope.message.unwrap_or_default()),
            ));
        }
        serde_json::from_value(envelope.data).map_err(|e| unexpected(&e))
    }

    /// The direct fetch (§6.4): a zip streamed back, or `None` when the file does not exist
    /// (no `Content-Disposition`, C1).
    pub(crate) async fn fetch_direct(
        &self,
        path: &str,
        pylum_id: &str,
    ) -> Result<Option<Response>, CrError> {
        let body = wire::FetchDirect { path: path.to_owned(), pylum_id: pylum_id.to_owned() };
        let resp = retry(|| {
            self.send(Method::POST, "/rest/file-search/fetch-direct", Some(&body), Replay::Read)
        })
        .await?;
        Ok(resp.headers().contains_key(CONTENT_DISPOSITION).then_some(resp))
    }

    pub(crate) async fn fetch_start(&self, element_guid: &str) -> Result<wire::Envelope, CrError> {
        let body = wire::FetchStart {
            element_guids: vec![element_guid.to_owned()],
            initiator_user_name: self.username.clone(),
        };
        self.json(Method::POST, "/rest/fetchfile/start", Some(&body), Replay::Never).await
    }

    pub(crate) async fn fetch_progress(&self) -> Result<Vec<wire::FetchProgress>, CrError> {
        let v: Value = self.get_json("/rest/fetchfile/downloads/progress").await?;
        serde_json::from_value(v.get("data").cloned().unwrap_or(Value::Array(Vec::new())))
            .map_err(|e| unexpected(&e))
    }

    /// The zip of a finished fetch batch; a 500 means the batch expired (§6.4).
    pub(crate) async fn fetch_files(&self, batch_id: i64) -> Result<Response, CrError> {
        self.send(
            Method::GET,
            &format!("/rest/fetchfile/getfiles/{batch_id}"),
            None::<&()>,
            Replay::Read,
        )
        .await
    }

    /// Closes a fetch batch (`GET`, idempotent; 500 for an unknown batch, §6.4).
    pub(crate) async fn fetch_close(&self, batch_id: i64) -> Result<(), CrError> {
        let path = format!("/rest/fetchfile/close/{batch_id}");
        self.send(Method::GET, &path, None::<&()>, Replay::Read).await.map(drop)
    }

    // ---- IR tools and sensor batches (§6.5, §6.6) ----

    /// Uploads (or upgrades, same name) an IR tool package as multipart part `packageInfo`
    /// with the package name beside it (§6.6.3; layout unverified, hence mirrored by the
    /// simulator). Replacing by name makes it safe to repeat.
    pub(crate) async fn upload_package(
        &self,
        name: &str,
        reader: edrgate_adapter::adapter::FileReader,
        size: u64,
    ) -> Result<Value, CrError> {
        self.pace().await?;
        let (cookie, generation) = self.cookie().await?;
        let body = reqwest::Body::wrap_stream(ReaderStream::new(reader));
        let part = reqwest::multipart::Part::stream_with_length(body, size)
            .file_name(name.to_owned())
            .mime_str("application/octet-stream")
            .map_err(|e| CrError::Api(AdapterError::internal(format!("multipart part: {e}"))))?;
        let form = reqwest::multipart::Form::new()
            .text("packageName", name.to_owned())
            .text("description", "uploaded by edrgate".to_owned())
            .part("packageInfo", part);
        let req = self
            .request(Method::POST, "/rest/irtools/upload")
            .multipart(form)
            .header(COOKIE, cookie);
        let resp = req.send().await.map_err(|e| CrError::Api(http::transport_error(e)))?;
        match check(resp).await {
            Err(CrError::SessionLost) => {
                self.invalidate(generation).await;
                Err(CrError::SessionLost)
            }
            other => json(other?).await,
        }
    }

    /// The configured IR run request (§6.6.2). `None` is a 204: the sensor cannot take the
    /// action (§6.5).
    pub(crate) async fn ir_run(
        &self,
        path: &str,
        body: &Value,
    ) -> Result<Option<wire::Batch>, CrError> {
        let resp = self.send(Method::POST, path, Some(body), Replay::Never).await?;
        if resp.status() == reqwest::StatusCode::NO_CONTENT {
            return Ok(None);
        }
        json(resp).await.map(Some)
    }

    pub(crate) async fn ir_status(&self, batch_id: i64) -> Result<Value, CrError> {
        self.get_json(&format!("/rest/sensors/action/getRunIRToolStatus/{batch_id}")).await
    }

    /// `GET /rest/sensors/abort/{batchID}` (a GET, §6.5); idempotent.
    pub(crate) async fn abort(&self, batch_id: i64) -> Result<(), CrError> {
        retry(|| async {
            self.send(
                Method::GET,
                &format!("/rest/sensors/abort/{batch_id}"),
                None::<&()>,
                Replay::Read,
            )
            .await
            .map(drop)
        })
        .await
    }

    pub(crate) async fn all_actions(&self) -> Result<Vec<wire::Batch>, CrError> {
        self.get_json("/rest/sensors/allActions").await
    }

    // ---- session ----

    /// The current cookie, logging in first when there is none or it is due for renewal.
    /// Holding the lock while logging in serialises logins.
    async fn cookie(&self) -> Result<(HeaderValue, u64), CrError> {
        let mut session = self.session.lock().await;
        if let Some(s) = session.as_ref()
            && s.since.elapsed() < self.session_use
        {
            return Ok((s.cookie.clone(), s.generation));
        }
        let cookie = self.login().await?;
        let generation = self.generations.fetch_add(1, Ordering::Relaxed) + 1;
        *session = Some(Session { cookie: cookie.clone(), since: Instant::now(), generation });
        Ok((cookie, generation))
    }

    /// Forgets the session a call found lost, unless another call already replaced it.
    async fn invalidate(&self, generation: u64) {
        let mut session = self.session.lock().await;
        if session.as_ref().is_some_and(|s| s.generation == generation) {
            *session = None;
        }
    }

    /// The form login (§3.1) and, when the user has two-factor authentication, the TOTP
    /// step (§3.2). The page never decides success: the session is proved by a `/rest/` call
    /// ([`CrClient::authenticated`]). Two-factor is recognised by C1's page text (`Two factor
    /// authentication`) where the console serves it, and otherwise by the login page coming
    /// back after a password the console took (no `error` redirect), or by a session the
    /// password alone did not open: the current console's login is an Angular shell
    /// (`<app-login>`) whose text is drawn in the browser, so neither a failed login nor the
    /// two-factor step shows any text to read.
    async fn login(&self) -> Result<HeaderValue, CrError> {
        self.pace().await?;
        let form =
            [("username", self.username.as_str()), ("password", self.password.expose_secret())];
        let resp = self
            .request(Method::POST, "/login.html")
            .form(&form)
            .send()
            .await
            .map_err(|e| CrError::Api(http::transport_error(e)))?;
        let Some(cookie) = session_cookie(&resp) else {
            // Drain the redirect for its `error`/`reset` verdict first.
            self.landing(resp, None).await?;
            return Err(auth_failed("the login set no JSESSIONID cookie"));
        };
        let page = self.landing(resp, Some(&cookie)).await?;
        // The password was taken (no `error` redirect) and the console answers its login page
        // again: the two-factor form of the Angular shell, when the user has a secret.
        let asks_code = page.contains(wire::TFA_MARKER)
            || (self.totp.is_some() && crate::mapping::is_login_page(&page));
        if !asks_code && self.authenticated(&cookie).await? {
            return Ok(cookie);
        }
        let Some(secret) = &self.totp else {
            return Err(auth_failed(if asks_code {
                "the Cybereason user has two-factor authentication; configure totp_secret"
            } else {
                "Cybereason opened no session: the username or password is wrong, or the user has two-factor authentication (configure totp_secret)"
            }));
        };
        let code = totp(secret.expose_secret())
            .map_err(|e| CrError::Api(AdapterError::internal(format!("totp_secret: {e}"))))?
            .generate_current()
            .to_string();
        self.pace().await?;
        let resp = self
            .request(Method::POST, "/")
            .header(COOKIE, cookie.clone())
            .form(&[("totpCode", code.as_str()), ("submit", "Login")])
            .send()
            .await
            .map_err(|e| CrError::Api(http::transport_error(e)))?;
        let cookie = session_cookie(&resp).unwrap_or(cookie);
        let page = self.landing(resp, Some(&cookie)).await?;
        if page.contains(wire::TFA_MARKER) || !self.authenticated(&cookie).await? {
            return Err(auth_failed(if asks_code {
                "Cybereason refused the two-factor code"
            } else {
                "Cybereason opened no session: the username, password or two-factor code (totp_secret) is wrong"
            }));
        }
        Ok(cookie)
    }

    /// Whether `cookie` is a logged-in session: `GET /rest/monitor/global/server/version/all`
    /// (the request C1 makes for its version checks) answers anything but the signs of a lost
    /// session (a redirect, a 401 or an HTML page, §3.4). A 403 or 404 still proves the
    /// session; a transient failure is returned as such.
    async fn authenticated(&self, cookie: &HeaderValue) -> Result<bool, CrError> {
        self.pace().await?;
        let resp = self
            .request(Method::GET, "/rest/monitor/global/server/version/all")
            .header(COOKIE, cookie.clone())
            .header(CONTENT_TYPE, "application/json")
            .send()
            .await
            .map_err(|e| CrError::Api(http::transport_error(e)))?;
        match check(resp).await {
            Ok(resp) => match json::<Value>(resp).await {
                Err(CrError::SessionLost) => Ok(false),
                _ => Ok(true),
            },
            Err(CrError::SessionLost) => Ok(false),
            Err(e) if e.is_retryable() => Err(e),
            Err(_) => Ok(true),
        }
    }

    /// Follows the login form's redirect by hand (the client never follows redirects with
    /// credentials attached) and returns the page it lands on.
    async fn landing(
        &self,
        resp: Response,
        cookie: Option<&HeaderValue>,
    ) -> Result<String, CrError> {
        let status = resp.status();
        if status.is_redirection() {
            let location = resp
                .headers()
                .get(LOCATION)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("/")
                .to_owned();
            // C1 reads the final URL: `error` = bad credentials or code, `reset` = expired
            // password (§3.1, §3.3).
            let lower = location.to_ascii_lowercase();
            if lower.contains("reset") {
                return Err(auth_failed(
                    "the Cybereason password expired; change it in the console",
                ));
            }
            if lower.contains("error") {
                return Err(auth_failed(
                    "Cybereason refused the login (redirected to the error page)",
                ));
            }
            let target = if location.starts_with("http") {
                location
            } else {
                format!("{}/{}", self.base, location.trim_start_matches('/'))
            };
            let mut req = self.http.get(target);
            if let Some(c) = cookie {
                req = req.header(COOKIE, c.clone());
            }
            let resp = req.send().await.map_err(|e| CrError::Api(http::transport_error(e)))?;
            if !resp.status().is_success() {
                return Err(login_status(resp).await);
            }
            return resp.text().await.map_err(|e| CrError::Api(http::transport_error(e)));
        }
        if !status.is_success() {
            return Err(login_status(resp).await);
        }
        resp.text().await.map_err(|e| CrError::Api(http::transport_error(e)))
    }

    // ---- plumbing ----

    fn request(&self, method: Method, path: &str) -> RequestBuilder {
        self.http.request(method, format!("{}{path}", self.base))
    }

    /// Sends a `/rest/` request with the session cookie. A lost session is logged in again
    /// once; a read is then replayed, anything else reported as [`CrError::SessionLost`].
    async fn send<B: Serialize + ?Sized>(
        &self,
        method: Method,
        path: &str,
        body: Option<&B>,
        replay: Replay,
    ) -> Result<Response, CrError> {
        let mut relogged = false;
        loop {
            self.pace().await?;
            let (cookie, generation) = self.cookie().await?;
            let mut req = self
                .request(method.clone(), path)
                .header(COOKIE, cookie)
                .header(CONTENT_TYPE, "application/json");
            if let Some(body) = body {
                req = req.json(body);
            }
            let resp = req.send().await.map_err(|e| CrError::Api(http::transport_error(e)))?;
            match check(resp).await {
                Err(CrError::SessionLost) => {
                    self.invalidate(generation).await;
                    if relogged {
                        // Lost again straight after a fresh login: not a session problem.
                        return Err(CrError::SessionLost);
                    }
                    relogged = true;
                    tracing::info!(path, "cybereason session lost; logging in again");
                    if replay == Replay::Never {
                        // Log in now so the adapter's reconciliation finds a session.
                        self.cookie().await?;
                        return Err(CrError::SessionLost);
                    }
                }
                other => return other,
            }
        }
    }

    async fn json<T: DeserializeOwned, B: Serialize + ?Sized>(
        &self,
        method: Method,
        path: &str,
        body: Option<&B>,
        replay: Replay,
    ) -> Result<T, CrError> {
        let call = || async { json(self.send(method.clone(), path, body, replay).await?).await };
        if replay == Replay::Read { retry(call).await } else { call().await }
    }

    async fn get_json<T: DeserializeOwned>(&self, path: &str) -> Result<T, CrError> {
        self.json(Method::GET, path, None::<&()>, Replay::Read).await
    }

    /// A POST that only reads (queries).
    async fn post_read<T: DeserializeOwned, B: Serialize>(
        &self,
        path: &str,
        body: &B,
    ) -> Result<T, CrError> {
        self.json(Method::POST, path, Some(body), Replay::Read).await
    }
}

/// The `JSESSIONID` a response sets, as a ready `Cookie` header (marked sensitive).
fn session_cookie(resp: &Response) -> Option<HeaderValue> {
    resp.headers().get_all(SET_COOKIE).iter().find_map(|v| {
        let text = v.to_str().ok()?;
        let pair = text.split(';').next()?.trim();
        let (name, value) = pair.split_once('=')?;
        if name.trim() != wire::SESSION_COOKIE || value.is_empty() {
            return None;
        }
        let mut header =
            HeaderValue::from_str(&format!("{}={value}", wire::SESSION_COOKIE)).ok()?;
        header.set_sensitive(true);
        Some(header)
    })
}

fn auth_failed(message: &str) -> CrError {
    CrError::Api(AdapterError::new(ErrorCode::VendorAuthFailed, message))
}

/// A non-2xx answer during login: transient for 5xx/429, else an auth failure.
async fn login_status(resp: Response) -> CrError {
    let status = resp.status();
    let headers = resp.headers().clone();
    let body = resp.text().await.unwrap_or_default();
    let snippet: String = body.chars().take(300).collect();
    let e = http::status_error(status, &headers, &snippet);
    if e.is_retryable() {
        CrError::Api(e)
    } else {
        CrError::Api(
            AdapterError::new(
                ErrorCode::VendorAuthFailed,
                format!("the Cybereason login answered {status}"),
            )
            .with_vendor(status.as_u16().to_string(), snippet),
        )
    }
}

/// Passes API answers through; redirects, HTML pages and errors are classified.
async fn check(mut resp: Response) -> Result<Response, CrError> {
    let status = resp.status();
    let html = resp
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|t| t.to_ascii_lowercase().starts_with("text/html"));
    if status.is_success() && !html {
        return Ok(resp);
    }
    let headers = resp.headers().clone();
    let mut body = Vec::new();
    while body.len() < ERROR_BODY_LIMIT {
        match resp.chunk().await {
            Ok(Some(chunk)) => body.extend_from_slice(&chunk),
            _ => break,
        }
    }
    body.truncate(ERROR_BODY_LIMIT);
    let text = String::from_utf8_lossy(&body);
    if status.is_success() {
        // An HTML page on a `/rest/` call is the login page: the session is gone (§7).
        return Err(CrError::SessionLost);
    }
    Err(classify(status, &headers, &text))
}

async fn json<T: DeserializeOwned>(resp: Response) -> Result<T, CrError> {
    let bytes = resp.bytes().await.map_err(|e| CrError::Api(http::transport_error(e)))?;
    if bytes.first() == Some(&b'<') && is_login_page(&String::from_utf8_lossy(&bytes)) {
        return Err(CrError::SessionLost);
    }
    serde_json::from_slice(&bytes).map_err(|e| unexpected(&e))
}

/// A 2xx answer nobody can read. Transient: to a side-effecting request it says nothing about
/// whether the console acted, so the intent stays and the next step reconciles.
fn unexpected(e: &serde_json::Error) -> CrError {
    CrError::Api(AdapterError::transient(
        ErrorCode::VendorUnavailable,
        format!("unexpected response from Cybereason: {e}"),
    ))
}

/// A path segment, percent-encoded (usernames are e-mail addresses).
fn segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~@".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Retries an idempotent call on transient failures, briefly (see [`READ_RETRY`]).
async fn retry<T, F, Fut>(mut call: F) -> Result<T, CrError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, CrError>>,
{
    let mut attempt = 0;
    loop {
        match call().await {
            Err(e) if e.is_retryable() && attempt + 1 < READ_RETRY.max_attempts => {
                let delay = READ_RETRY.delay(attempt + 1, e.retry_after());
                if delay > READ_RETRY.max {
                    // A long Retry-After is the engine's to honour between steps.
                    return Err(e);
                }
                attempt += 1;
                tracing::debug!(error = %e, attempt, ?delay, "retrying cybereason read");
                tokio::time::sleep(delay).await;
            }
            other => return other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn totp_secrets_parse_and_generate_six_digits() {
        let t = totp("JBSWY3DPEHPK3PXP JBSWY3DPEHPK3PXP").unwrap();
        assert_eq!(t.generate(59).to_string().len(), 6);
        assert!(totp("not base32 !").is_err());
    }

    #[test]
    fn segments_are_encoded() {
        assert_eq!(segment("a b/c@x.io"), "a%20b%2Fc@x.io");
    }
}
