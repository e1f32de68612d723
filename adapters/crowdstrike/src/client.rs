//! The typed client of the Falcon API: OAuth2 (§2), hosts (§4), single and batch RTR (§5–§7)
//! and files (§8) of `shared/vendor-apis/crowdstrike.md`.
//!
//! **Token.** One bearer token per backend from `POST /oauth2/token` (client credentials,
//! form body), cached and renewed `token_renew_margin_secs` before it expires (at most half
//! its lifetime early) and once more after a 401 (§2.3: a 401 means the gateway refused the
//! request unprocessed, so any request is sent again once with the new token).
//!
//! **Budget.** Every call passes the backend's rate gate (`requests_per_minute`), then, with
//! several gateway replicas, the quota they share per CID (`SharedBudget::take_call`). A 429
//! starts a cooldown until `X-Ratelimit-Retryafter` for every call of the backend (gofalcon
//! does the same, §3).
//!
//! **Retries.** Reads are retried here briefly on transient failures; a request with a side
//! effect never is: its failure goes back to the adapter, which reconciles first.

use std::num::NonZeroU32;
use std::sync::{Arc, Mutex as StdMutex, OnceLock};
use std::time::{Duration, Instant};

use edrgate_adapter::http::{self, Backoff, TlsOptions};
use edrgate_adapter::{AdapterError, ErrorCode, SharedBudget};
use futures::StreamExt as _;
use governor::{DefaultDirectRateLimiter, RateLimiter};
use reqwest::header::{ACCEPT, CONTENT_TYPE};
use reqwest::{Method, RequestBuilder, Response, StatusCode};
use secrecy::{ExposeSecret as _, SecretString};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;
use tokio::sync::Mutex;

use crate::config::CrowdStrikeConfig;
use crate::mapping::{self, Platform};
use crate::wire;

const VENDOR: &str = "crowdstrike";
/// Retries of idempotent calls inside a step: short, the engine backs off between steps.
const READ_RETRY: Backoff =
    Backoff { base: Duration::from_millis(100), max: Duration::from_secs(2), max_attempts: 3 };
/// Largest JSON answer read (command outputs are capped further by the adapter).
const MAX_JSON_BYTES: usize = 32 * 1024 * 1024;
/// A 429 cooldown longer than this is not slept inside a step: the step ends retryable.
const MAX_INLINE_COOLDOWN: Duration = Duration::from_secs(3);
/// Device ids per `devices/entities/*` GET (§4.2: up to 100 `ids`).
pub(crate) const IDS_PER_GET: usize = 100;
/// Hosts per containment request (§4.3: the maximum is unverified; send at most 100).
pub(crate) const IDS_PER_CONTAIN: usize = 100;

/// The three RTR tiers (§6.1): each has its own command and batch routes and scope.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Tier {
    ReadOnly,
    ActiveResponder,
    Admin,
}

impl Tier {
    fn command_path(self) -> &'static str {
        match self {
            Tier::ReadOnly => "/real-time-response/entities/command/v1",
            Tier::ActiveResponder => "/real-time-response/entities/active-responder-command/v1",
            Tier::Admin => "/real-time-response/entities/admin-command/v1",
        }
    }

    fn batch_path(self) -> &'static str {
        match self {
            Tier::ReadOnly => "/real-time-response/combined/batch-command/v1",
            Tier::ActiveResponder => {
                "/real-time-response/combined/batch-active-responder-command/v1"
            }
            Tier::Admin => "/real-time-response/combined/batch-admin-command/v1",
        }
    }
}

struct Token {
    value: SecretString,
    renew_at: Instant,
    generation: u64,
}

pub(crate) struct CsClient {
    http: reqwest::Client,
    base: String,
    client_id: String,
    client_secret: SecretString,
    member_cid: Option<String>,
    renew_margin: Duration,
    rtr_timeout_secs: u64,
    token: Mutex<Option<Token>>,
    generations: std::sync::atomic::AtomicU64,
    gate: DefaultDirectRateLimiter,
    requests_per_minute: u32,
    shared: OnceLock<Arc<dyn SharedBudget>>,
    cooldown: StdMutex<Option<Instant>>,
}

/// What a request sends.
enum Body<'a> {
    None,
    Json(&'a Value),
}

impl CsClient {
    pub(crate) fn new(cfg: &CrowdStrikeConfig) -> Result<Self, AdapterError> {
        let tls = TlsOptions::from_settings(
            cfg.ca_file.as_deref(),
            cfg.insecure_skip_verify,
            cfg.pinned_cert_sha256.as_deref(),
        )?;
        let per_minute = NonZeroU32::new(cfg.requests_per_minute.max(1)).unwrap_or(NonZeroU32::MIN);
        Ok(CsClient {
            http: http::client(&tls, Duration::from_secs(cfg.read_timeout_secs))?,
            base: cfg.base_url.trim_end_matches('/').to_owned(),
            client_id: cfg.client_id.clone(),
            client_secret: cfg.client_secret.clone(),
            member_cid: cfg.member_cid.clone(),
            renew_margin: Duration::from_secs(cfg.token_renew_margin_secs),
            rtr_timeout_secs: cfg.rtr_timeout_secs,
            token: Mutex::new(None),
            generations: std::sync::atomic::AtomicU64::new(0),
            gate: RateLimiter::direct(edrgate_adapter::rate::window_quota(
                per_minute,
                Duration::from_secs(60),
            )),
            requests_per_minute: per_minute.get(),
            shared: OnceLock::new(),
            cooldown: StdMutex::new(None),
        })
    }

    pub(crate) fn use_shared_budget(&self, budget: Arc<dyn SharedBudget>) {
        let _ = self.shared.set(budget);
    }

    /// The rate budget: a 429 cooldown, this process's gate, then the replicas' shared
    /// quota per CID (the API client's CID, or the MSSP child's).
    async fn pace(&self) -> Result<(), AdapterError> {
        let until = *self.cooldown.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(wait) = until.map(|u| u.saturating_duration_since(Instant::now()))
            && !wait.is_zero()
        {
            if wait > MAX_INLINE_COOLDOWN {
                return Err(rate_limited(wait));
            }
            tokio::time::sleep(wait).await;
        }
        self.gate.until_ready().await;
        let Some(shared) = self.shared.get().filter(|s| s.is_shared()) else { return Ok(()) };
        let cid = self.member_cid.as_deref().unwrap_or(&self.client_id);
        let scope = format!("crowdstrike:{}:{cid}:requests", self.base);
        match shared.take_call(&scope, self.requests_per_minute, Duration::from_secs(60)).await? {
            None => Ok(()),
            Some(wait) => Err(rate_limited(wait)),
        }
    }

    // ---- OAuth2 (§2.1) ----

    /// The cached token, fetched when missing or due for renewal. The lock serialises fetches.
    async fn bearer(&self) -> Result<(SecretString, u64), AdapterError> {
        let mut token = self.token.lock().await;
        if let Some(t) = token.as_ref()
            && Instant::now() < t.renew_at
        {
            return Ok((t.value.clone(), t.generation));
        }
        self.pace().await?;
        let mut form = vec![
            ("client_id", self.client_id.clone()),
            ("client_secret", self.client_secret.expose_secret().to_owned()),
        ];
        if let Some(cid) = &self.member_cid {
            form.push(("member_cid", cid.clone()));
        }
        let request = self.http.post(format!("{}/oauth2/token", self.base)).form(&form);
        let resp = http::send(VENDOR, &self.base, request).await.map_err(http::transport_error)?;
        let resp = self.check(resp, true).await?;
        let issued = token_answer(&read_capped(resp, MAX_JSON_BYTES).await?)?;
        let lifetime = Duration::from_secs(issued.expires_in);
        // Renew early, but never sooner than half the lifetime (short-lived test tokens).
        let early = self.renew_margin.min(lifetime / 2);
        let generation = self.generations.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
        let value = SecretString::from(issued.access_token);
        *token = Some(Token {
            value: value.clone(),
            renew_at: Instant::now() + lifetime.saturating_sub(early),
            generation,
        });
        Ok((value, generation))
    }

    async fn invalidate(&self, generation: u64) {
        let mut token = self.token.lock().await;
        if token.as_ref().is_some_and(|t| t.generation == generation) {
            *token = None;
        }
    }

    /// Signs in (a token), changing nothing: `check-config --connect`.
    pub(crate) async fn sign_in(&self) -> Result<(), AdapterError> {
        self.bearer().await.map(drop)
    }

    // ---- transport ----

    fn request(
        &self,
        method: Method,
        path: &str,
        query: &[(&str, String)],
        body: &Body<'_>,
    ) -> RequestBuilder {
        let mut r = self
            .http
            .request(method, format!("{}{path}", self.base))
            .query(query)
            // gofalcon sends it on every request, body or not (§1.2).
            .header(CONTENT_TYPE, "application/json");
        if let Body::Json(v) = body {
            r = r.json(v);
        }
        r
    }

    /// Sends once (plus once more after a 401 with a new token); non-2xx are classified.
    async fn send(
        &self,
        method: Method,
        path: &str,
        query: &[(&str, String)],
        body: Body<'_>,
    ) -> Result<Response, AdapterError> {
        let mut renewed = false;
        loop {
            let (token, generation) = self.bearer().await?;
            self.pace().await?;
            let request =
                self.request(method.clone(), path, query, &body).bearer_auth(token.expose_secret());
            let resp =
                http::send(VENDOR, &self.base, request).await.map_err(http::transport_error)?;
            if resp.status() == StatusCode::UNAUTHORIZED && !renewed {
                tracing::debug!(path, "crowdstrike answered 401; renewing the token once");
                self.invalidate(generation).await;
                renewed = true;
                continue;
            }
            return self.check(resp, false).await;
        }
    }

    async fn check(&self, resp: Response, token: bool) -> Result<Response, AdapterError> {
        let status = resp.status();
        if status.is_success() {
            return Ok(resp);
        }
        let headers = resp.headers().clone();
        let body = read_capped(resp, 16 * 1024).await.unwrap_or_default();
        let e = mapping::classify(status, &headers, &String::from_utf8_lossy(&body), token);
        if status == StatusCode::TOO_MANY_REQUESTS {
            let wait = e.retry_after.unwrap_or(Duration::from_secs(1));
            *self.cooldown.lock().unwrap_or_else(|p| p.into_inner()) = Some(Instant::now() + wait);
        }
        Err(e)
    }

    /// A read: retried briefly on transient failures.
    async fn read<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        query: &[(&str, String)],
        body: Option<&Value>,
    ) -> Result<T, AdapterError> {
        READ_RETRY
            .retry(|| async {
                let body = body.map_or(Body::None, Body::Json);
                read_json(self.send(method.clone(), path, query, body).await?).await
            })
            .await
    }

    /// A request with a side effect: sent once; an unreadable answer is transient (the
    /// adapter reconciles).
    async fn write<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        query: &[(&str, String)],
        body: &Value,
    ) -> Result<T, AdapterError> {
        read_json(self.send(method, path, query, Body::Json(body)).await?).await
    }

    fn timeout_query(&self) -> Vec<(&'static str, String)> {
        vec![("timeout", self.rtr_timeout_secs.to_string())]
    }

    // ---- hosts (§4) ----

    /// Device ids matching an FQL filter, paged until `total`.
    pub(crate) async fn device_ids(
        &self,
        filter: Option<&str>,
    ) -> Result<Vec<String>, AdapterError> {
        const LIMIT: usize = 500;
        let mut ids = Vec::new();
        loop {
            let mut query = vec![("limit", LIMIT.to_string()), ("offset", ids.len().to_string())];
            if let Some(f) = filter {
                query.push(("filter", f.to_owned()));
            }
            let page: wire::Envelope<Vec<String>> =
                self.read(Method::GET, "/devices/queries/devices/v1", &query, None).await?;
            let total = page.meta.pagination.as_ref().map_or(0, |p| p.total) as usize;
            let got = page.resources.len();
            ids.extend(page.resources);
            if got == 0 || ids.len() >= total {
                return Ok(ids);
            }
        }
    }

    /// Device entities of `ids` (≤ 100 per call).
    pub(crate) async fn devices(
        &self,
        ids: &[String],
    ) -> Result<Vec<wire::DeviceEntity>, AdapterError> {
        let mut out = Vec::new();
        for chunk in ids.chunks(IDS_PER_GET) {
            let query: Vec<(&str, String)> = chunk.iter().map(|id| ("ids", id.clone())).collect();
            let page: wire::Envelope<Vec<wire::DeviceEntity>> =
                self.read(Method::GET, "/devices/entities/devices/v2", &query, None).await?;
            out.extend(page.resources);
        }
        Ok(out)
    }

    /// Ids among `ids` whose sensor is online (`online-state/v1`, §4.2).
    pub(crate) async fn online(&self, ids: &[String]) -> Result<Vec<String>, AdapterError> {
        let mut out = Vec::new();
        for chunk in ids.chunks(IDS_PER_GET) {
            let query: Vec<(&str, String)> = chunk.iter().map(|id| ("ids", id.clone())).collect();
            let page: wire::Envelope<Vec<wire::OnlineState>> =
                self.read(Method::GET, "/devices/entities/online-state/v1", &query, None).await?;
            out.extend(page.resources.into_iter().filter(|s| s.state == "online").map(|s| s.id));
        }
        Ok(out)
    }

    /// `contain` or `lift_containment` of hosts (§4.3, ≤ [`IDS_PER_CONTAIN`]), sent once.
    pub(crate) async fn contain(&self, aids: &[String], isolate: bool) -> Result<(), AdapterError> {
        let action = if isolate { "contain" } else { "lift_containment" };
        let body = serde_json::json!({"ids": aids});
        let query = [("action_name", action.to_owned())];
        let _: wire::Envelope<Value> =
            self.write(Method::POST, "/devices/entities/devices-actions/v2", &query, &body).await?;
        Ok(())
    }

    // ---- single-host sessions (§5) ----

    pub(crate) async fn init_session(
        &self,
        aid: &str,
        queue_offline: bool,
        origin: &str,
        refresh: bool,
    ) -> Result<wire::InitResponse, AdapterError> {
        let body = to_value(&wire::InitRequest { device_id: aid, queue_offline, origin })?;
        let path = if refresh {
            "/real-time-response/entities/refresh-session/v1"
        } else {
            "/real-time-response/entities/sessions/v1"
        };
        // Opening (or refreshing) a session changes no endpoint, and the vendor returns the
        // existing session of the same user on the host: safe to repeat.
        let page: wire::Envelope<Vec<wire::InitResponse>> =
            self.read(Method::POST, path, &self.timeout_query(), Some(&body)).await?;
        if let Some(e) =
            mapping::first_error(page.errors.iter().map(|e| (e.code, e.message.as_str())))
        {
            return Err(mapping::into_adapter(e));
        }
        page.resources.into_iter().next().filter(|r| !r.session_id.is_empty()).ok_or_else(|| {
            AdapterError::transient(
                ErrorCode::VendorUnavailable,
                "the session init answer holds no session",
            )
        })
    }

    /// `domain.Session`s with their `logs[]` (§5.4).
    pub(crate) async fn sessions(
        &self,
        ids: &[String],
    ) -> Result<Vec<wire::Session>, AdapterError> {
        let body = serde_json::json!({"ids": ids});
        let page: wire::Envelope<Vec<wire::Session>> = self
            .read(Method::POST, "/real-time-response/entities/sessions/GET/v1", &[], Some(&body))
            .await?;
        Ok(page.resources)
    }

    pub(crate) async fn delete_session(&self, session_id: &str) -> Result<(), AdapterError> {
        let query = [("session_id", session_id.to_owned())];
        self.send(Method::DELETE, "/real-time-response/entities/sessions/v1", &query, Body::None)
            .await
            .map(drop)
    }

    /// Cancels a command waiting in the offline queue (§6.7); a 404 means it is no longer
    /// pending (it ran, or was cancelled).
    pub(crate) async fn cancel_queued(
        &self,
        session_id: &str,
        cloud_request_id: &str,
    ) -> Result<(), AdapterError> {
        let query = [
            ("session_id", session_id.to_owned()),
            ("cloud_request_id", cloud_request_id.to_owned()),
        ];
        let path = "/real-time-response/entities/queued-sessions/command/v1";
        self.send(Method::DELETE, path, &query, Body::None).await.map(drop)
    }

    /// A command on one session, sent once (§6.2).
    pub(crate) async fn command(
        &self,
        tier: Tier,
        session_id: &str,
        line: &str,
    ) -> Result<wire::CommandAccepted, AdapterError> {
        let body = to_value(&wire::CommandRequest {
            base_command: base_command(line),
            command_string: line,
            session_id,
            persist: false,
        })?;
        let page: wire::Envelope<Vec<wire::CommandAccepted>> =
            self.write(Method::POST, tier.command_path(), &[], &body).await?;
        if let Some(e) =
            mapping::first_error(page.errors.iter().map(|e| (e.code, e.message.as_str())))
        {
            return Err(mapping::into_adapter(e));
        }
        page.resources.into_iter().next().filter(|r| !r.cloud_request_id.is_empty()).ok_or_else(
            || {
                AdapterError::transient(
                    ErrorCode::VendorUnavailable,
                    "the command answer holds no cloud_request_id",
                )
            },
        )
    }

    /// One chunk of a command's status (§6.4, §6.5).
    pub(crate) async fn command_status(
        &self,
        tier: Tier,
        cloud_request_id: &str,
        sequence_id: u64,
    ) -> Result<wire::CommandStatus, AdapterError> {
        let query = [
            ("cloud_request_id", cloud_request_id.to_owned()),
            ("sequence_id", sequence_id.to_string()),
        ];
        let page: wire::Envelope<Vec<wire::CommandStatus>> =
            self.read(Method::GET, tier.command_path(), &query, None).await?;
        if let Some(e) =
            mapping::first_error(page.errors.iter().map(|e| (e.code, e.message.as_str())))
        {
            return Err(mapping::into_adapter(e));
        }
        page.resources.into_iter().next().ok_or_else(|| {
            AdapterError::transient(
                ErrorCode::VendorUnavailable,
                "the status answer holds no result",
            )
        })
    }

    // ---- batch sessions (§7) ----

    pub(crate) async fn batch_init(
        &self,
        hosts: &[String],
        queue_offline: bool,
    ) -> Result<wire::BatchInit, AdapterError> {
        let body = to_value(&wire::BatchInitRequest { host_ids: hosts, queue_offline })?;
        let path = "/real-time-response/combined/batch-init-session/v1";
        let mut query = self.timeout_query();
        query.push(("host_timeout_duration", self.host_timeout()));
        match self.read::<wire::BatchInit>(Method::POST, path, &query, Some(&body)).await {
            Ok(init) => Ok(init),
            // `404 no successful hosts initialized on RTR` still names each host's error.
            Err(e) if e.code() == ErrorCode::DeviceOffline => Ok(wire::BatchInit {
                batch_id: String::new(),
                resources: Default::default(),
                errors: vec![wire::ApiError {
                    code: 404,
                    message: e.info.vendor_message.unwrap_or_default(),
                }],
            }),
            Err(e) => Err(e),
        }
    }

    /// A batch command (sent once): per-host results, synchronous up to the RTR timeout.
    pub(crate) async fn batch_command(
        &self,
        tier: Tier,
        batch_id: &str,
        hosts: &[String],
        line: &str,
        persist: bool,
    ) -> Result<wire::BatchCommand, AdapterError> {
        let body = to_value(&wire::BatchCommandRequest {
            base_command: base_command(line),
            command_string: line,
            batch_id,
            optional_hosts: hosts,
            persist_all: persist,
        })?;
        let mut query = self.timeout_query();
        query.push(("host_timeout_duration", self.host_timeout()));
        self.write(Method::POST, tier.batch_path(), &query, &body).await
    }

    /// `batch-get-command` (§7.5): `get` of one path on several hosts.
    pub(crate) async fn batch_get(
        &self,
        batch_id: &str,
        hosts: &[String],
        path: &str,
    ) -> Result<wire::BatchCommand, AdapterError> {
        let body =
            to_value(&wire::BatchGetRequest { batch_id, file_path: path, optional_hosts: hosts })?;
        let mut query = self.timeout_query();
        query.push(("host_timeout_duration", self.host_timeout()));
        self.write(Method::POST, "/real-time-response/combined/batch-get-command/v1", &query, &body)
            .await
    }

    /// 90 % of the RTR timeout, as PSFalcon sets it (§7.1).
    fn host_timeout(&self) -> String {
        format!("{}ms", self.rtr_timeout_secs * 900)
    }

    // ---- files (§8) ----

    pub(crate) async fn session_files(
        &self,
        session_id: &str,
    ) -> Result<Vec<wire::FileV2>, AdapterError> {
        let query = [("session_id", session_id.to_owned())];
        let page: wire::Envelope<Vec<wire::FileV2>> =
            self.read(Method::GET, "/real-time-response/entities/file/v2", &query, None).await?;
        Ok(page.resources)
    }

    /// The 7z of a retrieved file, streamed (§8.2).
    pub(crate) async fn file_contents(
        &self,
        session_id: &str,
        sha256: &str,
        filename: &str,
    ) -> Result<Response, AdapterError> {
        let query = [
            ("session_id", session_id.to_owned()),
            ("sha256", sha256.to_owned()),
            ("filename", filename.to_owned()),
        ];
        READ_RETRY
            .retry(|| async {
                let (token, generation) = self.bearer().await?;
                self.pace().await?;
                let request = self
                    .http
                    .get(format!(
                        "{}/real-time-response/entities/extracted-file-contents/v1",
                        self.base
                    ))
                    .query(&query)
                    .header(ACCEPT, "application/x-7z-compressed")
                    .bearer_auth(token.expose_secret());
                let resp =
                    http::send(VENDOR, &self.base, request).await.map_err(http::transport_error)?;
                if resp.status() == StatusCode::UNAUTHORIZED {
                    self.invalidate(generation).await;
                    return Err(AdapterError::transient(
                        ErrorCode::VendorAuthFailed,
                        "token expired",
                    ));
                }
                self.check(resp, false).await
            })
            .await
    }

    /// Deletes a retrieved file from the cloud (§8.1); idempotent.
    pub(crate) async fn delete_session_file(
        &self,
        session_id: &str,
        id: &str,
    ) -> Result<(), AdapterError> {
        let query = [("session_id", session_id.to_owned()), ("ids", id.to_owned())];
        READ_RETRY
            .retry(|| async {
                self.send(
                    Method::DELETE,
                    "/real-time-response/entities/file/v2",
                    &query,
                    Body::None,
                )
                .await
                .map(drop)
            })
            .await
    }

    /// Put-files library entries named `name` (§8.3).
    pub(crate) async fn put_files_named(
        &self,
        name: &str,
    ) -> Result<Vec<wire::PutFile>, AdapterError> {
        let query = [("filter", format!("name:'{name}'"))];
        let ids: wire::Envelope<Vec<String>> = self
            .read(Method::GET, "/real-time-response/queries/put-files/v1", &query, None)
            .await?;
        if ids.resources.is_empty() {
            return Ok(Vec::new());
        }
        let query: Vec<(&str, String)> =
            ids.resources.iter().map(|id| ("ids", id.clone())).collect();
        let files: wire::Envelope<Vec<wire::PutFile>> = self
            .read(Method::GET, "/real-time-response/entities/put-files/v2", &query, None)
            .await?;
        Ok(files.resources.into_iter().filter(|f| f.name == name).collect())
    }

    /// Uploads a put-file (multipart, §8.3); a 409 means the name is taken.
    pub(crate) async fn upload_put_file(
        &self,
        name: &str,
        reader: edrgate_adapter::adapter::FileReader,
        size: u64,
        comment: &str,
    ) -> Result<(), AdapterError> {
        let (token, generation) = self.bearer().await?;
        self.pace().await?;
        let body = reqwest::Body::wrap_stream(tokio_util::io::ReaderStream::new(reader));
        let part = reqwest::multipart::Part::stream_with_length(body, size)
            .file_name(name.to_owned())
            .mime_str("application/octet-stream")
            .map_err(|e| AdapterError::internal(format!("multipart part: {e}")))?;
        let form = reqwest::multipart::Form::new()
            .text("name", name.to_owned())
            .text("description", "staged by edrgate for put_file".to_owned())
            .text("comments_for_audit_log", comment.to_owned())
            .part("file", part);
        let request = self
            .http
            .post(format!("{}/real-time-response/entities/put-files/v1", self.base))
            .multipart(form)
            .bearer_auth(token.expose_secret());
        let resp = http::send(VENDOR, &self.base, request).await.map_err(http::transport_error)?;
        if resp.status() == StatusCode::UNAUTHORIZED {
            // Refused unprocessed: the next step sends it again with a new token (the
            // stream cannot be replayed here).
            self.invalidate(generation).await;
            return Err(AdapterError::transient(ErrorCode::VendorAuthFailed, "the token expired"));
        }
        self.check(resp, false).await.map(drop)
    }

    /// The platform of one device (`platform_name`).
    pub(crate) async fn platform(
        &self,
        aid: &str,
    ) -> Result<Option<(Platform, wire::DeviceEntity)>, AdapterError> {
        let found = self.devices(&[aid.to_owned()]).await?;
        Ok(found
            .into_iter()
            .find(|d| d.device_id.eq_ignore_ascii_case(aid))
            .and_then(|d| Platform::parse(&d.platform_name).map(|p| (p, d))))
    }
}

/// The first word of a command line (§6.2: `reg` for `reg query …`).
pub(crate) fn base_command(line: &str) -> &str {
    line.split_whitespace().next().unwrap_or(line)
}

fn to_value<T: Serialize>(v: &T) -> Result<Value, AdapterError> {
    serde_json::to_value(v).map_err(|e| AdapterError::internal(format!("request body: {e}")))
}

fn rate_limited(wait: Duration) -> AdapterError {
    AdapterError::transient(
        ErrorCode::VendorRateLimited,
        "edrgate's CrowdStrike request budget is spent for now",
    )
    .with_retry_after(Some(wait))
}

/// The body of `resp`, at most `cap` bytes.
async fn read_capped(resp: Response, cap: usize) -> Result<Vec<u8>, AdapterError> {
    let mut out = Vec::new();
    let mut stream = resp.bytes_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(http::transport_error)?;
        if out.len() + chunk.len() > cap {
            return Err(AdapterError::transient(
                ErrorCode::VendorUnavailable,
                format!("the vendor's answer is larger than {cap} bytes"),
            ));
        }
        out.extend_from_slice(&chunk);
    }
    Ok(out)
}

/// The token answer (§2.1). Its parse error names only where the answer broke: serde's own
/// text quotes the offending value, which may be the token.
fn token_answer(body: &[u8]) -> Result<wire::Token, AdapterError> {
    serde_json::from_slice(body).map_err(|e| {
        AdapterError::transient(
            ErrorCode::VendorUnavailable,
            format!(
                "unreadable CrowdStrike token answer ({:?} error at line {}, column {})",
                e.classify(),
                e.line(),
                e.column()
            ),
        )
    })
}

/// A JSON answer; an unreadable one is transient, so that a write whose answer was garbled
/// is reconciled rather than taken as refused.
async fn read_json<T: DeserializeOwned>(resp: Response) -> Result<T, AdapterError> {
    let body = read_capped(resp, MAX_JSON_BYTES).await?;
    serde_json::from_slice(&body).map_err(|e| {
        AdapterError::transient(
            ErrorCode::VendorUnavailable,
            format!("unreadable CrowdStrike answer: {e}"),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::token_answer;

    #[test]
    fn an_unreadable_token_answer_does_not_quote_the_token() {
        let token = "cs-sim.0123456789abcdef";
        for body in
            [format!("\"{token}\""), format!(r#"{{"access_token": "x", "expires_in": "{token}"}}"#)]
        {
            let Err(e) = token_answer(body.as_bytes()) else { panic!("{body} was read") };
            let shown = format!("{e} {e:?}");
            assert!(!shown.contains(token), "{shown}");
            assert!(shown.contains("token answer"), "{shown}");
        }
        assert_eq!(token_answer(br#"{"access_token": "t"}"#).unwrap().expires_in, 1799);
    }
}
