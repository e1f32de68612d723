//! A typed client over the Defender routes edrgate uses (defender.md §1, §3–§8, §10), with the
//! OAuth2 client-credentials token, the per-endpoint call budgets and error classification.
//!
//! Tokens are cached in moka with a per-entry lifetime of `expires_in` minus a margin (§1.3);
//! concurrent callers share one fetch, and a 401 forces one new token and one retry of the
//! call, as Kibana's connector does. Every call other than `runliveresponse` (whose budget the
//! adapter holds, since runs wait on it visibly) first passes its endpoint's rate gate: each
//! endpoint allows 100 calls per minute and 1500 per hour per app and tenant (§9, #10124).
//! Reads are retried briefly; POSTs that change an endpoint are sent once (design §3).

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::{Duration, Instant};

use bytes::Bytes;
use edrgate_adapter::http::{self, Backoff};
use edrgate_adapter::{AdapterError, ErrorCode, FairSlots, SharedBudget};
use futures::{Stream, StreamExt as _};
use reqwest::header::{AUTHORIZATION, HeaderValue};
use reqwest::{Method, RequestBuilder, Response, StatusCode};
use secrecy::{ExposeSecret as _, SecretString};
use serde::de::DeserializeOwned;
use tokio_util::io::ReaderStream;

use crate::config::{DefenderConfig, host_options};
use crate::mapping::classify;
use crate::wire;

/// Bytes of an error body kept for classification and messages.
const ERROR_BODY_LIMIT: usize = 8192;
/// Retries of idempotent calls inside a step: short, since the engine backs off between steps.
const READ_RETRY: Backoff =
    Backoff { base: Duration::from_millis(100), max: Duration::from_secs(2), max_attempts: 3 };
/// Machine action ids per `$filter=id in (…)` poll, keeping the URL short.
const POLL_CHUNK: usize = 40;

/// A sliding-window rate gate, fair (FIFO: tokio's mutex queues waiters in order). A call is
/// logged when its permit drops, i.e. after the vendor answered, so the vendor (which counts
/// arrivals) can never see more calls in a window than edrgate allowed itself.
pub(crate) struct RateGate {
    windows: Vec<(usize, Duration)>,
    log: Arc<tokio::sync::Mutex<VecDeque<Instant>>>,
    waiting: std::sync::atomic::AtomicUsize,
}

pub(crate) struct RatePermit {
    log: tokio::sync::OwnedMutexGuard<VecDeque<Instant>>,
    used: bool,
}

impl RatePermit {
    /// Gives the turn back without a call: nothing is logged.
    pub(crate) fn unused(mut self) {
        self.used = false;
    }
}

impl Drop for RatePermit {
    fn drop(&mut self) {
        if self.used {
            self.log.push_back(Instant::now());
        }
    }
}

impl RateGate {
    pub(crate) fn new(windows: Vec<(usize, Duration)>) -> Self {
        RateGate {
            windows,
            log: Arc::new(tokio::sync::Mutex::new(VecDeque::new())),
            waiting: std::sync::atomic::AtomicUsize::new(0),
        }
    }

    /// Waits for the caller's turn and a free place in every window. Cancel-safe: dropping
    /// the future gives up the place in line without using the budget.
    pub(crate) async fn acquire(&self) -> RatePermit {
        use std::sync::atomic::Ordering;
        self.waiting.fetch_add(1, Ordering::Relaxed);
        // Counted down however the wait ends (granted or abandoned).
        struct Waiting<'a>(&'a std::sync::atomic::AtomicUsize);
        impl Drop for Waiting<'_> {
            fn drop(&mut self) {
                self.0.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
            }
        }
        let _waiting = Waiting(&self.waiting);
        let mut log = Arc::clone(&self.log).lock_owned().await;
        let longest = self.windows.iter().map(|(_, w)| *w).max().unwrap_or_default();
        loop {
            let now = Instant::now();
            while log.front().is_some_and(|t| now.duration_since(*t) >= longest) {
                log.pop_front();
            }
            let ready_at = self
                .windows
                .iter()
                .filter_map(|(n, w)| {
                    let inside =
                        log.iter().rev().take_while(|t| now.duration_since(**t) < *w).count();
                    (inside >= *n).then(|| log[log.len() - n] + *w)
                })
                .max();
            match ready_at {
                None => return RatePermit { log, used: true },
                Some(at) => tokio::time::sleep_until(at.into()).await,
            }
        }
    }

    /// Callers waiting for their turn.
    pub(crate) fn waiting(&self) -> usize {
        self.waiting.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Calls logged within the first window, for metrics and tests.
    pub(crate) fn recent(&self) -> usize {
        let Ok(log) = self.log.try_lock() else { return 0 };
        let w = self.windows.first().map_or(Duration::ZERO, |(_, w)| *w);
        log.iter().filter(|t| t.elapsed() < w).count()
    }
}

/// The budgets of one credential (app + tenant): the vendor counts per credential, so every
/// backend configured with the same one shares them.
pub(crate) struct Budget {
    pub(crate) live_response: RateGate,
    pub(crate) sessions: Arc<FairSlots>,
    endpoints: Mutex<HashMap<&'static str, Arc<RateGate>>>,
    per_minute: usize,
    per_hour: usize,
    /// The replicas' shared budget and this credential's scope in it (from the engine, through
    /// the adapter): the per-minute API quota is the credential's, whichever replica calls.
    shared: OnceLock<(Arc<dyn SharedBudget>, String)>,
}

impl Budget {
    fn shared(cfg: &DefenderConfig) -> Arc<Budget> {
        static BUDGETS: OnceLock<Mutex<HashMap<String, Weak<Budget>>>> = OnceLock::new();
        let key = format!(
            "{}|{}|{}|{}",
            cfg.api_url.trim_end_matches('/').to_ascii_lowercase(),
            cfg.token_endpoint(),
            cfg.tenant_id,
            cfg.client_id
        );
        let mut all =
            BUDGETS.get_or_init(Default::default).lock().unwrap_or_else(|p| p.into_inner());
        all.retain(|_, w| w.strong_count() > 0);
        if let Some(b) = all.get(&key).and_then(Weak::upgrade) {
            return b;
        }
        let budget = Arc::new(Budget {
            live_response: RateGate::new(vec![(cfg.live_response_calls as usize, cfg.lr_window())]),
            sessions: FairSlots::new(cfg.concurrent_sessions),
            endpoints: Mutex::new(HashMap::new()),
            per_minute: cfg.api_calls_per_minute as usize,
            per_hour: cfg.api_calls_per_hour as usize,
            shared: OnceLock::new(),
        });
        all.insert(key, Arc::downgrade(&budget));
        budget
    }

    pub(crate) fn use_shared(&self, budget: Arc<dyn SharedBudget>, scope: &str) {
        let _ = self.shared.set((budget, scope.to_owned()));
    }

    /// With other replicas, waits for a place in `endpoint`'s per-minute quota among them all
    /// (the local gate counts this process only; §9: 100 calls per minute per API).
    async fn pace_shared(&self, endpoint: &'static str) -> Result<(), AdapterError> {
        let Some((budget, scope)) = self.shared.get().filter(|(b, _)| b.is_shared()) else {
            return Ok(());
        };
        let scope = format!("{scope}:api:{endpoint}");
        let limit = u32::try_from(self.per_minute).unwrap_or(u32::MAX);
        while let Some(wait) = budget.take_call(&scope, limit, Duration::from_secs(60)).await? {
            tokio::time::sleep(wait).await;
        }
        Ok(())
    }

    fn endpoint(&self, name: &'static str) -> Arc<RateGate> {
        let mut map = self.endpoints.lock().unwrap_or_else(|p| p.into_inner());
        Arc::clone(map.entry(name).or_insert_with(|| {
            Arc::new(RateGate::new(vec![
                (self.per_minute, Duration::from_secs(60)),
                (self.per_hour, Duration::from_secs(3600)),
            ]))
        }))
    }
}

struct Token {
    header: HeaderValue,
    ttl: Duration,
}

struct TokenExpiry;

impl moka::Expiry<(), Arc<Token>> for TokenExpiry {
    fn expire_after_create(&self, _: &(), token: &Arc<Token>, _: Instant) -> Option<Duration> {
        Some(token.ttl)
    }
}

pub(crate) struct DfClient {
    /// The API host's client (`api_url`; the top-level TLS keys).
    http: reqwest::Client,
    /// The token endpoint's client (`token_tls`): the only one that carries the secret.
    token_http: reqwest::Client,
    /// The result download host's client (`download_tls`): SAS links, no credentials.
    blob_http: reqwest::Client,
    /// Backend name, for the vendor-call metrics.
    backend: String,
    base: String,
    token_url: String,
    v1: bool,
    client_id: String,
    secret: SecretString,
    scope: String,
    resource: String,
    margin: Duration,
    tokens: moka::future::Cache<(), Arc<Token>>,
    pub(crate) budget: Arc<Budget>,
}

impl DfClient {
    pub(crate) fn new(backend: &str, cfg: &DefenderConfig) -> Result<Self, AdapterError> {
        // One client per host, each with that host's TLS settings (config.rs, "TLS: one policy
        // per host"): a pin or skip-verify meant for the API never reaches the other two.
        let read_timeout = Duration::from_secs(cfg.read_timeout_secs);
        let api_tls = host_options(
            "",
            cfg.ca_file.as_deref(),
            cfg.insecure_skip_verify,
            cfg.pinned_cert_sha256.as_deref(),
        )?;
        let http = http::client(&api_tls, read_timeout)?;
        let token_http = http::client(&cfg.token_tls.options("token_tls.")?, read_timeout)?;
        let blob_http = http::client(&cfg.download_tls.options("download_tls.")?, read_timeout)?;
        let token_url = cfg.token_endpoint();
        Ok(DfClient {
            http,
            token_http,
            blob_http,
            backend: backend.to_owned(),
            base: cfg.api_url.trim_end_matches('/').to_owned(),
            v1: token_url.trim_end_matches('/').ends_with("/oauth2/token"),
            token_url,
            client_id: cfg.client_id.clone(),
            secret: cfg.client_secret.clone(),
            scope: cfg.scope.clone(),
            resource: cfg.resource.clone(),
            margin: Duration::from_secs(cfg.token_refresh_margin_secs),
            tokens: moka::future::Cache::builder()
                .max_capacity(1)
                .expire_after(TokenExpiry)
                .build(),
            budget: Budget::shared(cfg),
        })
    }

    // ---- token (§1) ----

    async fn token(&self) -> Result<HeaderValue, AdapterError> {
        let token = self
            .tokens
            .try_get_with((), self.fetch_token())
            .await
            .map_err(|e: Arc<AdapterError>| (*e).clone())?;
        Ok(token.header.clone())
    }

    async fn fetch_token(&self) -> Result<Arc<Token>, AdapterError> {
        let mut form = vec![
            ("grant_type", "client_credentials"),
            ("client_id", self.client_id.as_str()),
            ("client_secret", self.secret.expose_secret()),
        ];
        if self.v1 {
            form.push(("resource", self.resource.as_str()));
        } else {
            form.push(("scope", self.scope.as_str()));
        }
        // application/x-www-form-urlencoded, encoded by the URL crate's form serializer.
        let mut encoder = reqwest::Url::parse("http://form.invalid/")
            .map_err(|e| AdapterError::internal(format!("form encoder: {e}")))?;
        encoder.query_pairs_mut().extend_pairs(&form);
        let body = encoder.query().unwrap_or_default().to_owned();
        let request = self
            .token_http
            .post(&self.token_url)
            .header(reqwest::header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .body(body);
        let resp = self.metered(request).await.map_err(|e| connect_error(e, Host::Token))?;
        let status = resp.status();
        let body = resp.bytes().await.map_err(http::transport_error)?;
        if !status.is_success() {
            if status.is_server_error() || status == StatusCode::TOO_MANY_REQUESTS {
                return Err(AdapterError::transient(
                    ErrorCode::VendorUnavailable,
                    format!("the token endpoint answered {status}"),
                ));
            }
            let err: wire::TokenError = serde_json::from_slice(&body).unwrap_or_default();
            return Err(AdapterError::new(
                ErrorCode::VendorAuthFailed,
                "Entra refused edrgate's client credentials",
            )
            .with_vendor(
                if err.error.is_empty() { status.as_u16().to_string() } else { err.error },
                err.error_description,
            ));
        }
        let t: wire::TokenResponse = serde_json::from_slice(&body).map_err(|e| {
            AdapterError::new(
                ErrorCode::VendorAuthFailed,
                format!("unreadable token response: {e}"),
            )
        })?;
        let lifetime = Duration::from_secs(t.expires_in);
        // A margin larger than the lifetime (short-lived test tokens) falls back to half of it.
        let ttl =
            lifetime.checked_sub(self.margin).filter(|d| !d.is_zero()).unwrap_or(lifetime / 2);
        let mut header = HeaderValue::from_str(&format!("Bearer {}", t.access_token))
            .map_err(|_| AdapterError::internal("the access token is not a valid header value"))?;
        header.set_sensitive(true);
        Ok(Arc::new(Token { header, ttl: ttl.max(Duration::from_millis(100)) }))
    }

    /// Has an access token at hand (fetching one if the cache has none), so that a call made
    /// right after waits for no token endpoint: see `start_batch` on the shared quota.
    pub(crate) async fn warm_token(&self) -> Result<(), AdapterError> {
        self.token().await.map(|_| ())
    }

    // ---- machines (§10) ----

    /// Machines, all of them or those whose `computerDnsName` equals or starts with a name
    /// (lower-cased; quotes doubled as OData requires). A 404 on an empty result (documented
    /// for the list) is an empty list.
    pub(crate) async fn machines(
        &self,
        query: MachineQuery<'_>,
    ) -> Result<Vec<wire::Machine>, AdapterError> {
        let quoted = |n: &str| n.to_ascii_lowercase().replace('\'', "''");
        let filter = match query {
            MachineQuery::All => None,
            MachineQuery::Named(n) => Some(format!("computerDnsName eq '{}'", quoted(n))),
            // The OData samples page documents `startswith(computerDnsName,'mymachine')`.
            MachineQuery::NamePrefix(n) => {
                Some(format!("startswith(computerDnsName,'{}')", quoted(n)))
            }
        };
        let result =
            self.get_all::<wire::Machine>("machines", "/api/machines", filter.as_deref()).await;
        match result {
            Ok(machines) => Ok(machines),
            Err(e) if e.code() == ErrorCode::NotFound => Ok(Vec::new()),
            Err(e) => Err(e),
        }
    }

    /// `GET /api/machines/{id}` (§10): one machine, e.g. for its `osPlatform`.
    pub(crate) async fn machine(&self, id: &str) -> Result<wire::Machine, AdapterError> {
        let path = format!("/api/machines/{id}");
        self.get_json("machines", &path, None).await
    }

    // ---- machine actions (§3, §4, §6, §11) ----

    /// `POST /api/machines/{id}/runliveresponse`. Sent once; the caller holds the
    /// live-response budget.
    pub(crate) async fn run_live_response(
        &self,
        machine_id: &str,
        body: &wire::LiveResponseRequest,
    ) -> Result<wire::MachineAction, AdapterError> {
        let path = format!("/api/machines/{machine_id}/runliveresponse");
        json(self.send(|| self.request(Method::POST, &path).json(body)).await?).await
    }

    /// Isolate or release (§11), sent once.
    pub(crate) async fn contain(
        &self,
        machine_id: &str,
        isolate: bool,
        comment: &str,
    ) -> Result<wire::MachineAction, AdapterError> {
        let gate = self.budget.endpoint("isolate");
        let _permit = gate.acquire().await;
        self.budget.pace_shared("isolate").await?;
        let (verb, kind) =
            if isolate { ("isolate", Some("Full".to_owned())) } else { ("unisolate", None) };
        let path = format!("/api/machines/{machine_id}/{verb}");
        let body = wire::CommentBody { comment: comment.to_owned(), isolation_type: kind };
        json(self.send(|| self.request(Method::POST, &path).json(&body)).await?).await
    }

    /// Several machine actions in one call (`$filter=id in (…)`, §4.4); ids not returned are
    /// not (yet) visible.
    pub(crate) async fn actions_by_id(
        &self,
        ids: &[String],
    ) -> Result<Vec<wire::MachineAction>, AdapterError> {
        let mut all = Vec::new();
        for chunk in ids.chunks(POLL_CHUNK) {
            let list: Vec<String> =
                chunk.iter().map(|id| format!("'{}'", id.replace('\'', "''"))).collect();
            let filter = format!("id in ({})", list.join(","));
            all.extend(self.get_all("machineactions", "/api/machineactions", Some(&filter)).await?);
        }
        Ok(all)
    }

    /// The machine's actions of `kind` (for reconciliation by comment tag).
    pub(crate) async fn actions_of_machine(
        &self,
        machine_id: &str,
        kind: &str,
    ) -> Result<Vec<wire::MachineAction>, AdapterError> {
        let filter =
            format!("machineId eq '{}' and type eq '{kind}'", machine_id.replace('\'', "''"));
        self.get_all("machineactions", "/api/machineactions", Some(&filter)).await
    }

    /// `GET /api/machineactions/{id}`: one action with its `commands`, for list answers that
    /// leave them out (§4.2: `commands` is nullable).
    pub(crate) async fn action(&self, id: &str) -> Result<wire::MachineAction, AdapterError> {
        let path = format!("/api/machineactions/{id}");
        self.get_json("machineactions", &path, None).await
    }

    /// `POST /api/machineactions/{id}/cancel` (§6). Cancelling twice is harmless, so retried.
    pub(crate) async fn cancel(
        &self,
        id: &str,
        comment: &str,
    ) -> Result<wire::MachineAction, AdapterError> {
        let gate = self.budget.endpoint("cancel");
        let path = format!("/api/machineactions/{id}/cancel");
        let body = wire::CommentBody { comment: comment.to_owned(), isolation_type: None };
        retry(|| async {
            let _permit = gate.acquire().await;
            self.budget.pace_shared("cancel").await?;
            json(self.send(|| self.request(Method::POST, &path).json(&body)).await?).await
        })
        .await
    }

    /// A fresh SAS link to command `index`'s result (§5).
    pub(crate) async fn download_link(
        &self,
        id: &str,
        index: usize,
    ) -> Result<String, AdapterError> {
        let path =
            format!("/api/machineactions/{id}/GetLiveResponseResultDownloadLink(index={index})");
        let v: wire::StringValue = self.get_json("link", &path, None).await?;
        Ok(v.value)
    }

    /// The blob behind a SAS link, as it arrives. No bearer token: the link carries its own
    /// signature, and the token must never reach blob storage (§5).
    ///
    /// The link is a credential too (`sig=`, valid 30 minutes): a `reqwest::Error` displays
    /// its URL, so every error of this call drops the URL before it becomes an
    /// [`AdapterError`], whose message reaches logs, the command's error and the API.
    pub(crate) async fn download(
        &self,
        url: &str,
    ) -> Result<impl Stream<Item = Result<Bytes, AdapterError>> + Send + use<>, AdapterError> {
        let resp = self
            .metered(self.blob_http.get(url))
            .await
            .map_err(|e| connect_error(e.without_url(), Host::Download))?;
        let resp = check(resp).await?;
        Ok(resp.bytes_stream().map(|r| r.map_err(|e| http::transport_error(e.without_url()))))
    }

    // ---- library (§8) ----

    pub(crate) async fn library(&self) -> Result<Vec<wire::LibraryFile>, AdapterError> {
        self.get_all("library", "/api/libraryfiles", None).await
    }

    /// Multipart upload (§8.1). Storing a library file changes no endpoint, and names are
    /// content-addressed, so a repeat after an ambiguous failure is harmless (`OverrideIfExists`).
    pub(crate) async fn upload(
        &self,
        name: &str,
        reader: edrgate_adapter::adapter::FileReader,
        size: u64,
        description: &str,
    ) -> Result<wire::LibraryFile, AdapterError> {
        let gate = self.budget.endpoint("library");
        let _permit = gate.acquire().await;
        self.budget.pace_shared("library").await?;
        let body = reqwest::Body::wrap_stream(ReaderStream::new(reader));
        let part = reqwest::multipart::Part::stream_with_length(body, size)
            .file_name(name.to_owned())
            .mime_str("application/octet-stream")
            .map_err(|e| AdapterError::internal(format!("multipart part: {e}")))?;
        let form = reqwest::multipart::Form::new()
            .part("file", part)
            .text("Description", description.to_owned())
            .text("HasParameters", "true")
            .text("OverrideIfExists", "true");
        let token = self.token().await?;
        let request = self
            .request(Method::POST, "/api/libraryfiles")
            .multipart(form)
            .header(AUTHORIZATION, token);
        let resp = self.metered(request).await.map_err(|e| connect_error(e, Host::Api))?;
        if resp.status() == StatusCode::UNAUTHORIZED {
            // The stream is consumed: drop the token and let the caller upload again.
            self.tokens.invalidate(&()).await;
            return Err(AdapterError::transient(
                ErrorCode::VendorAuthFailed,
                "the access token was refused; renewed",
            ));
        }
        json(check(resp).await?).await
    }

    /// `DELETE /api/libraryfiles/{fileName}` (§8.3): 204, or 404 (already gone: fine).
    pub(crate) async fn delete_library(&self, name: &str) -> Result<(), AdapterError> {
        let gate = self.budget.endpoint("library");
        let _permit = gate.acquire().await;
        self.budget.pace_shared("library").await?;
        let path = format!("/api/libraryfiles/{name}");
        match self.send(|| self.request(Method::DELETE, &path)).await {
            Ok(_) => Ok(()),
            Err(e) if e.code() == ErrorCode::NotFound => Ok(()),
            Err(e) => Err(e),
        }
    }

    // ---- plumbing ----

    fn request(&self, method: Method, path: &str) -> RequestBuilder {
        self.http.request(method, format!("{}{path}", self.base))
    }

    /// Every vendor call goes through the shared helper that records it in the metrics.
    async fn metered(&self, request: RequestBuilder) -> reqwest::Result<Response> {
        http::send("defender", &self.backend, request).await
    }

    /// Sends with the bearer token; on 401 renews the token once and sends again.
    async fn send(&self, build: impl Fn() -> RequestBuilder) -> Result<Response, AdapterError> {
        let token = self.token().await?;
        let resp = self
            .metered(build().header(AUTHORIZATION, token))
            .await
            .map_err(|e| connect_error(e, Host::Api))?;
        if resp.status() != StatusCode::UNAUTHORIZED {
            return check(resp).await;
        }
        tracing::debug!("defender answered 401; renewing the access token once");
        self.tokens.invalidate(&()).await;
        let token = self.token().await?;
        let resp = self
            .metered(build().header(AUTHORIZATION, token))
            .await
            .map_err(|e| connect_error(e, Host::Api))?;
        check(resp).await
    }

    async fn get_json<T: DeserializeOwned>(
        &self,
        endpoint: &'static str,
        path: &str,
        filter: Option<&str>,
    ) -> Result<T, AdapterError> {
        let url = format!("{}{path}", self.base);
        self.get_url(endpoint, &url, filter).await
    }

    async fn get_url<T: DeserializeOwned>(
        &self,
        endpoint: &'static str,
        url: &str,
        filter: Option<&str>,
    ) -> Result<T, AdapterError> {
        let gate = self.budget.endpoint(endpoint);
        retry(|| async {
            let _permit = gate.acquire().await;
            self.budget.pace_shared(endpoint).await?;
            let resp = self
                .send(|| {
                    let req = self.http.get(url);
                    match filter {
                        Some(f) => req.query(&[("$filter", f)]),
                        None => req,
                    }
                })
                .await?;
            json(resp).await
        })
        .await
    }

    /// Every page of a collection: follows `@odata.nextLink` (which carries the query itself)
    /// up to [`MAX_PAGES`] pages. A link to another origin is refused rather than followed,
    /// so the bearer token only ever goes to the configured API host.
    async fn get_all<T: DeserializeOwned>(
        &self,
        endpoint: &'static str,
        path: &str,
        filter: Option<&str>,
    ) -> Result<Vec<T>, AdapterError> {
        let mut page: wire::Collection<T> = self.get_json(endpoint, path, filter).await?;
        let mut all = std::mem::take(&mut page.value);
        for _ in 1..MAX_PAGES {
            let Some(next) = page.next_link.take() else { return Ok(all) };
            if !same_origin(&next, &self.base) {
                return Err(AdapterError::new(
                    ErrorCode::VendorUnavailable,
                    format!("Defender's next page of {path} is on another host; not followed"),
                ));
            }
            page = self.get_url(endpoint, &next, None).await?;
            all.append(&mut page.value);
        }
        Err(AdapterError::new(
            ErrorCode::VendorUnavailable,
            format!("Defender's {path} listing has more than {MAX_PAGES} pages"),
        ))
    }
}

/// Which machines [`DfClient::machines`] lists.
#[derive(Clone, Copy, Debug)]
pub(crate) enum MachineQuery<'a> {
    All,
    /// `computerDnsName eq` (the FQDN the service stores, §10).
    Named(&'a str),
    /// `startswith(computerDnsName, …)`: a short name finds its FQDN.
    NamePrefix(&'a str),
}

/// Pages of one listing followed at most (10,000 entries a page at most, §10).
const MAX_PAGES: usize = 100;

/// Whether `url` has the scheme, host and port of `base`.
fn same_origin(url: &str, base: &str) -> bool {
    match (reqwest::Url::parse(url), reqwest::Url::parse(base)) {
        (Ok(a), Ok(b)) => a.origin() == b.origin(),
        _ => false,
    }
}

/// The three hosts of a backend, each with its own TLS settings (config.rs).
#[derive(Clone, Copy, Debug)]
enum Host {
    Api,
    Token,
    Download,
}

/// A request that got no answer. A refused certificate is no passing fault but the host's
/// TLS settings: permanent, `vendor_auth_failed` (the server failed to authenticate), naming
/// the keys to fix; nothing (no secret, no token) was sent. Anything else is transient.
fn connect_error(error: reqwest::Error, host: Host) -> AdapterError {
    let Some(reason) = http::tls_rejection(&error) else { return http::transport_error(error) };
    let (what, keys) = match host {
        Host::Api => ("API host (api_url)", "ca_file / pinned_cert_sha256"),
        Host::Token => (
            "token endpoint (token_url); the client secret was not sent",
            "token_tls.ca_file / token_tls.pinned_cert_sha256",
        ),
        Host::Download => {
            ("result download host", "download_tls.ca_file / download_tls.pinned_cert_sha256")
        }
    };
    AdapterError::new(
        ErrorCode::VendorAuthFailed,
        format!("the TLS certificate of Defender's {what} was refused ({reason}); check {keys}"),
    )
}

/// Passes 2xx through; anything else is read (bounded) and classified.
async fn check(mut resp: Response) -> Result<Response, AdapterError> {
    let status = resp.status();
    if status.is_success() {
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
    Err(classify(status, &headers, &String::from_utf8_lossy(&body)))
}

async fn json<T: DeserializeOwned>(resp: Response) -> Result<T, AdapterError> {
    let bytes = resp.bytes().await.map_err(http::transport_error)?;
    serde_json::from_slice(&bytes).map_err(|e| {
        AdapterError::transient(
            ErrorCode::VendorUnavailable,
            format!("unexpected response from Defender: {e}"),
        )
    })
}

/// Retries an idempotent call on transient failures, briefly; a long `Retry-After` is the
/// engine's to honour between steps.
async fn retry<T, F, Fut>(mut call: F) -> Result<T, AdapterError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, AdapterError>>,
{
    let mut attempt = 0;
    loop {
        match call().await {
            Err(e) if e.is_retryable() && attempt + 1 < READ_RETRY.max_attempts => {
                let delay = READ_RETRY.delay(attempt + 1, e.retry_after);
                if delay > READ_RETRY.max {
                    return Err(e);
                }
                attempt += 1;
                tokio::time::sleep(delay).await;
            }
            other => return other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_failed_download_returns_no_signed_link() {
        // A port nothing listens on: the request fails before any answer.
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let cfg = DefenderConfig::new(
            "http://127.0.0.1:1",
            "tenant",
            "client",
            SecretString::from("secret"),
        );
        let client = DfClient::new("mde", &cfg).unwrap();
        let link = format!("http://127.0.0.1:{port}/blob/x/y?se=2030-01-01&sp=r&sr=b&sig=c2VjcmV0");
        let Err(e) = client.download(&link).await else { panic!("downloaded from nowhere") };
        let text = format!("{e} {:?}", e.info);
        assert!(!text.contains("sig=") && !text.contains("/blob/"), "{text}");
    }

    #[tokio::test]
    async fn rate_gate_spaces_calls_by_window() {
        let gate = RateGate::new(vec![(2, Duration::from_millis(200))]);
        let start = Instant::now();
        for _ in 0..5 {
            drop(gate.acquire().await);
        }
        // 5 calls, 2 per 200 ms: the 5th waits for two full windows.
        assert!(start.elapsed() >= Duration::from_millis(400), "{:?}", start.elapsed());
        assert!(start.elapsed() < Duration::from_millis(700), "{:?}", start.elapsed());
    }
}
