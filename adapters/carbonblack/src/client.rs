//! A thin typed client over the routes of carbonblack.md §2 and §7.4.
//!
//! Every non-2xx answer goes through [`mapping::classify`]. Reads (GET, and the idempotent
//! close/cancel PUTs) are retried a few times with a short back-off; a POST that may change
//! an endpoint is sent exactly once and its failure goes back to the adapter, which reconciles
//! (design §3). Retries stay short because they happen inside a step: a long `Retry-After` is
//! returned to the caller instead of slept on.

use std::future::Future;
use std::time::Duration;

use bytes::Bytes;
use edrgate_adapter::http::{self, Backoff, TlsOptions};
use edrgate_adapter::{AdapterError, ErrorCode};
use futures::{Stream, StreamExt as _};
use reqwest::header::HeaderValue;
use reqwest::{Method, RequestBuilder, Response, StatusCode};
use secrecy::ExposeSecret as _;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;
use tokio_util::io::ReaderStream;

use crate::config::CarbonBlackConfig;
use crate::mapping::{CbError, classify};
use crate::wire;

/// `X-Auth-Token`, the only auth scheme of the EDR API (§1).
const AUTH_HEADER: &str = "X-Auth-Token";
/// Bytes of an error body kept for classification and messages.
const ERROR_BODY_LIMIT: usize = 4096;
/// Retries of idempotent calls inside a step: short, since the engine backs off between steps.
const READ_RETRY: Backoff =
    Backoff { base: Duration::from_millis(100), max: Duration::from_secs(2), max_attempts: 3 };

pub(crate) struct CbClient {
    http: reqwest::Client,
    base: String,
    token: HeaderValue,
    /// The backend's name, for the vendor-call metrics.
    backend: String,
}

impl CbClient {
    pub(crate) fn new(backend: &str, cfg: &CarbonBlackConfig) -> Result<Self, AdapterError> {
        let tls = TlsOptions::from_settings(
            cfg.ca_file.as_deref(),
            cfg.insecure_skip_verify,
            cfg.pinned_cert_sha256.as_deref(),
        )?;
        let http = http::client(&tls, Duration::from_secs(cfg.read_timeout_secs))?;
        let mut token = HeaderValue::from_str(cfg.token.expose_secret()).map_err(|_| {
            AdapterError::internal("the Carbon Black token is not a valid header value")
        })?;
        // Keeps the token out of reqwest's Debug output and HTTP/2 header compression.
        token.set_sensitive(true);
        let base = cfg.url.trim_end_matches('/').to_owned();
        Ok(CbClient { http, base, token, backend: backend.to_owned() })
    }

    // ---- sensors (§7.4) ----

    /// `GET /api/v1/sensor[?hostname=]`: a case-sensitive substring match; 204 means none.
    pub(crate) async fn sensors(
        &self,
        hostname: Option<&str>,
    ) -> Result<Vec<wire::Sensor>, CbError> {
        retry(|| async {
            let mut req = self.request(Method::GET, "/api/v1/sensor");
            if let Some(h) = hostname {
                req = req.query(&[("hostname", h)]);
            }
            let resp = self.send(req).await?;
            if resp.status() == StatusCode::NO_CONTENT {
                return Ok(Vec::new());
            }
            json(resp).await
        })
        .await
    }

    /// Every sensor the paged search (§7.4 v2, `GET /api/v2/sensor`, as cbapi 2.0 queries
    /// it: `hostname`, `start`, `rows` in batches of 100, sorted by `computer_name`) returns for
    /// `hostname` (a case-sensitive substring), page by page. A server without the v2 route
    /// (404) is asked the v1 way (`GET /api/v1/sensor?hostname=`).
    pub(crate) async fn search_sensors(
        &self,
        hostname: Option<&str>,
    ) -> Result<Vec<wire::Sensor>, CbError> {
        const ROWS: usize = 100;
        /// 100 000 sensors: more than any one server holds; a bound against a server that
        /// keeps answering full pages.
        const MAX_PAGES: usize = 1000;
        let mut found = Vec::new();
        for _ in 0..MAX_PAGES {
            let start = found.len();
            let Some(page) = self.sensor_page(hostname, start, ROWS).await? else {
                return self.sensors(hostname).await;
            };
            let n = page.results.len();
            found.extend(page.results);
            let total = page.total_results.and_then(|t| usize::try_from(t).ok());
            if n < ROWS || total.is_some_and(|t| found.len() >= t) {
                break;
            }
        }
        Ok(found)
    }

    /// One page of the v2 search; `None` when the server has no v2 route.
    async fn sensor_page(
        &self,
        hostname: Option<&str>,
        start: usize,
        rows: usize,
    ) -> Result<Option<wire::SensorPage>, CbError> {
        retry(|| async {
            let mut query = vec![
                ("rows", rows.to_string()),
                ("sort.col", "computer_name".to_owned()),
                ("sort.dir", "asc".to_owned()),
                ("start", start.to_string()),
            ];
            if let Some(h) = hostname {
                query.push(("hostname", h.to_owned()));
            }
            let req = self
                .request(Method::GET, "/api/v2/sensor")
                .query(&query)
                .header(AUTH_HEADER, self.token.clone());
            let resp = http::send(crate::KIND, &self.backend, req)
                .await
                .map_err(|e| CbError::Api(http::transport_error(e)))?;
            if resp.status() == StatusCode::NOT_FOUND {
                return Ok(None);
            }
            let resp = check(resp).await?;
            if resp.status() == StatusCode::NO_CONTENT {
                return Ok(Some(wire::SensorPage { results: Vec::new(), total_results: Some(0) }));
            }
            json(resp).await.map(Some)
        })
        .await
    }

    pub(crate) async fn sensor(&self, id: u64) -> Result<wire::Sensor, CbError> {
        self.get_json(&format!("/api/v1/sensor/{id}")).await.map_err(|e| sensor_missing(e, id))
    }

    /// Sets `network_isolation_enabled` the way cbapi's `Sensor.isolate()`/`unisolate()` do:
    /// read the whole sensor object, change the field, `PUT` it back
    /// (`src/cbapi/response/models.py`). The PUT is skipped when the field already has the
    /// wanted value, which makes the call safe to repeat after a crash. Returns whether a PUT
    /// was sent.
    pub(crate) async fn set_isolation(&self, id: u64, isolate: bool) -> Result<bool, CbError> {
        let path = format!("/api/v1/sensor/{id}");
        let sensor: serde_json::Map<String, Value> =
            self.get_json(&path).await.map_err(|e| sensor_missing(e, id))?;
        let Some(sensor) = wire::sensor_with_isolation(sensor, isolate) else {
            return Ok(false);
        };
        self.send(self.request(Method::PUT, &path).json(&sensor))
            .await
            .map_err(|e| sensor_missing(e, id))?;
        Ok(true)
    }

    // ---- sessions (§2.1–§2.5) ----

    /// Open sessions (`?active_only=true`, which cbapi filters again for pending/active).
    pub(crate) async fn sessions(&self) -> Result<Vec<wire::Session>, CbError> {
        retry(|| async {
            let req =
                self.request(Method::GET, "/api/v1/cblr/session").query(&[("active_only", "true")]);
            json(self.send(req).await?).await
        })
        .await
    }

    /// Not retried: a lost answer may hide a created session, which the next listing finds.
    pub(crate) async fn create_session(&self, sensor_id: u64) -> Result<wire::Session, CbError> {
        let req = self
            .request(Method::POST, "/api/v1/cblr/session")
            .json(&wire::CreateSession { sensor_id });
        json(self.send(req).await.map_err(|e| sensor_missing(e, sensor_id))?).await
    }

    /// One session. With `wait`, a bounded long-poll (`?wait=true`, which blocks while the
    /// session is pending on servers that honour it, §2.3): `None` when our side ran out of
    /// time first.
    pub(crate) async fn session(
        &self,
        sid: u64,
        wait: Option<Duration>,
    ) -> Result<Option<wire::Session>, CbError> {
        self.long_poll(&format!("/api/v1/cblr/session/{sid}"), wait).await
    }

    pub(crate) async fn keepalive(&self, sid: u64) -> Result<(), CbError> {
        retry(|| async {
            self.send(self.request(Method::GET, &format!("/api/v1/cblr/session/{sid}/keepalive")))
                .await
                .map(drop)
        })
        .await
    }

    /// Closes with CLI0's minimal body (§2.4). Idempotent, so retried.
    pub(crate) async fn close_session(&self, sid: u64) -> Result<(), CbError> {
        let body = wire::SetStatus { id: sid, status: wire::STATUS_CLOSE };
        self.put_idempotent(&format!("/api/v1/cblr/session/{sid}"), &body).await
    }

    // ---- commands (§2.7, §2.8) ----

    /// Sent once, never retried here (design §3: side effects are reconciled, not re-sent).
    pub(crate) async fn post_command(
        &self,
        sid: u64,
        request: &wire::CommandRequest,
    ) -> Result<wire::CbCommand, CbError> {
        let req = self
            .request(Method::POST, &format!("/api/v1/cblr/session/{sid}/command"))
            .json(request);
        json(self.send(req).await?).await
    }

    /// One command. With `wait`, a bounded long-poll (`?wait=true`, §2.8): `None` when it
    /// ran out of time on our side before the server answered.
    pub(crate) async fn command(
        &self,
        sid: u64,
        cid: u64,
        wait: Option<Duration>,
    ) -> Result<Option<wire::CbCommand>, CbError> {
        self.long_poll(&format!("/api/v1/cblr/session/{sid}/command/{cid}"), wait).await
    }

    pub(crate) async fn commands(&self, sid: u64) -> Result<Vec<wire::CbCommand>, CbError> {
        self.get_json(&format!("/api/v1/cblr/session/{sid}/command")).await
    }

    /// Cancels a pending command with CLI0's body (§2.8).
    pub(crate) async fn cancel_command(&self, sid: u64, cid: u64) -> Result<(), CbError> {
        let body = wire::SetStatus { id: cid, status: wire::STATUS_CANCEL };
        self.put_idempotent(&format!("/api/v1/cblr/session/{sid}/command/{cid}"), &body).await
    }

    // ---- session file storage (§2.9–§2.13) ----

    /// Streams `reader` (`size` bytes) into the session's storage as multipart field `file`
    /// (§2.9). Storing on the server changes no endpoint, but the reader is consumed, so the
    /// caller re-opens it to try again.
    pub(crate) async fn upload(
        &self,
        sid: u64,
        name: &str,
        reader: edrgate_adapter::adapter::FileReader,
        size: u64,
    ) -> Result<wire::FileObject, CbError> {
        let body = reqwest::Body::wrap_stream(ReaderStream::new(reader));
        let part = reqwest::multipart::Part::stream_with_length(body, size)
            .file_name(name.to_owned())
            .mime_str("application/octet-stream")
            .map_err(|e| CbError::Api(AdapterError::internal(format!("multipart part: {e}"))))?;
        let form = reqwest::multipart::Form::new().part("file", part);
        let req =
            self.request(Method::POST, &format!("/api/v1/cblr/session/{sid}/file")).multipart(form);
        json(self.send(req).await?).await
    }

    /// A file object of the session's storage (§2.10–§2.12).
    pub(crate) async fn file_object(
        &self,
        sid: u64,
        fid: u64,
    ) -> Result<wire::FileObject, CbError> {
        self.get_json(&format!("/api/v1/cblr/session/{sid}/file/{fid}")).await
    }

    /// The bytes of a stored file, as they arrive (§2.13): never buffered whole.
    pub(crate) async fn content(
        &self,
        sid: u64,
        fid: u64,
    ) -> Result<impl Stream<Item = Result<Bytes, CbError>> + Send + use<>, CbError> {
        let resp =
            retry(|| async {
                self.send(self.request(
                    Method::GET,
                    &format!("/api/v1/cblr/session/{sid}/file/{fid}/content"),
                ))
                .await
            })
            .await?;
        Ok(resp.bytes_stream().map(|r| r.map_err(|e| CbError::Api(http::transport_error(e)))))
    }

    /// Removes a file object from the server's session storage (§2.12, `DELETE`).
    pub(crate) async fn delete_file_object(&self, sid: u64, fid: u64) -> Result<(), CbError> {
        retry(|| async {
            self.send(
                self.request(Method::DELETE, &format!("/api/v1/cblr/session/{sid}/file/{fid}")),
            )
            .await
            .map(drop)
        })
        .await
    }

    // ---- plumbing ----

    fn request(&self, method: Method, path: &str) -> RequestBuilder {
        self.http.request(method, format!("{}{path}", self.base))
    }

    async fn send(&self, req: RequestBuilder) -> Result<Response, CbError> {
        let req = req.header(AUTH_HEADER, self.token.clone());
        let resp = http::send(crate::KIND, &self.backend, req)
            .await
            .map_err(|e| CbError::Api(http::transport_error(e)))?;
        check(resp).await
    }

    async fn get_json<T: DeserializeOwned>(&self, path: &str) -> Result<T, CbError> {
        retry(|| async { json(self.send(self.request(Method::GET, path)).await?).await }).await
    }

    /// A GET, optionally as a `?wait=true` long-poll bounded by `wait`. A long-poll is not
    /// retried: the caller polls again anyway.
    async fn long_poll<T: DeserializeOwned>(
        &self,
        path: &str,
        wait: Option<Duration>,
    ) -> Result<Option<T>, CbError> {
        let Some(wait) = wait else {
            return self.get_json(path).await.map(Some);
        };
        let req = self.request(Method::GET, path).query(&[("wait", "true")]).timeout(wait);
        match http::send(crate::KIND, &self.backend, req.header(AUTH_HEADER, self.token.clone()))
            .await
        {
            Err(e) if e.is_timeout() => Ok(None),
            Err(e) => Err(CbError::Api(http::transport_error(e))),
            Ok(resp) => json(check(resp).await?).await.map(Some),
        }
    }

    async fn put_idempotent<B: Serialize>(&self, path: &str, body: &B) -> Result<(), CbError> {
        retry(|| async { self.send(self.request(Method::PUT, path).json(body)).await.map(drop) })
            .await
    }
}

/// On a sensor route (or when creating a session), `404 Sensor N not found` means the
/// sensor does not exist, not that a session was lost.
fn sensor_missing(e: CbError, sensor_id: u64) -> CbError {
    match e {
        CbError::SessionLost(text) => CbError::Api(
            AdapterError::new(
                ErrorCode::DeviceNotFound,
                format!("Carbon Black has no sensor {sensor_id}"),
            )
            .with_vendor("404", text),
        ),
        other => other,
    }
}

/// Passes 2xx through; anything else is read (bounded) and classified.
async fn check(mut resp: Response) -> Result<Response, CbError> {
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

/// A 2xx answer, decoded. One nobody can read is transient: to a side-effecting POST it says
/// nothing about whether CB acted, so the intent stays and the next step reconciles.
async fn json<T: DeserializeOwned>(resp: Response) -> Result<T, CbError> {
    let bytes = resp.bytes().await.map_err(|e| CbError::Api(http::transport_error(e)))?;
    serde_json::from_slice(&bytes).map_err(|e| {
        CbError::Api(AdapterError::transient(
            ErrorCode::VendorUnavailable,
            format!("unexpected response from Carbon Black: {e}"),
        ))
    })
}

/// Retries an idempotent call on transient failures, briefly (see [`READ_RETRY`]).
async fn retry<T, F, Fut>(mut call: F) -> Result<T, CbError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, CbError>>,
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
                tracing::debug!(error = %e, attempt, ?delay, "retrying carbon black read");
                tokio::time::sleep(delay).await;
            }
            other => return other,
        }
    }
}
