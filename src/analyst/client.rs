//! The gateway's `/v1` API over reqwest, answers deserialized into the API's own types.
//!
//! Every read from the server is capped: JSON answers at [`MAX_JSON`], error bodies at
//! [`MAX_ERROR`]; file content is bounded by the size its metadata reports (see `fetch`).

use std::time::Duration;

use edrgate_adapter::http::TlsOptions;
use edrgate_adapter::{Action, ActionRequest};
use futures::StreamExt as _;
use reqwest::{Method, RequestBuilder, Response, StatusCode};
use secrecy::{ExposeSecret as _, SecretString};
use serde::de::DeserializeOwned;
use uuid::Uuid;

use super::Failure;
use super::config::Resolved;
use crate::api::actions::ActionList;
use crate::api::devices::DeviceList;
use crate::api::problem::Problem;
use crate::api::runs::RunList;
use crate::store::FileMeta;

/// Largest JSON answer read (an action of 1,000 runs with their process lists fits).
const MAX_JSON: usize = 256 << 20;
/// Largest error body read.
const MAX_ERROR: usize = 64 << 10;
/// Seconds a long-poll asks the gateway to wait (it caps them at its `max_wait_seconds`).
pub(crate) const WAIT_SECONDS: u64 = 30;
/// Rate-limited requests sent again at most, each after the `Retry-After` asked for if it
/// is at most [`LONGEST_RETRY_AFTER`].
const RATE_LIMIT_RETRIES: u32 = 3;
const LONGEST_RETRY_AFTER: Duration = Duration::from_secs(30);
/// Longest silence on a connection: past the longest long-poll.
const READ_TIMEOUT: Duration = Duration::from_secs(WAIT_SECONDS + 60);

/// A gateway, as one caller.
pub(crate) struct Gateway {
    http: reqwest::Client,
    base: String,
    token: SecretString,
}

/// Filters of `GET /v1/actions`.
#[derive(Debug, Default, serde::Serialize)]
pub(crate) struct ActionFilter {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub device: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub limit: Option<u32>,
}

impl Gateway {
    pub(crate) fn new(conn: Resolved) -> Result<Gateway, Failure> {
        // The adapters' client: no redirects (the token is never sent on to another place),
        // bounded connect and read times, and the private CA.
        let tls = TlsOptions { ca_pem: conn.ca_pem, ..TlsOptions::default() };
        let http = edrgate_adapter::http::client(&tls, READ_TIMEOUT)
            .map_err(|e| Failure::Usage(e.info.message))?;
        Ok(Gateway { http, base: conn.base, token: conn.token })
    }

    fn request(&self, method: Method, path: &str) -> RequestBuilder {
        self.http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(self.token.expose_secret())
    }

    pub(crate) async fn devices(&self, hostname: Option<&str>) -> Result<DeviceList, Failure> {
        let query: Vec<_> = hostname.map(|h| ("hostname", h)).into_iter().collect();
        json(self.request(Method::GET, "/v1/devices").query(&query)).await
    }

    pub(crate) async fn submit(&self, request: &ActionRequest) -> Result<Action, Failure> {
        json(self.request(Method::POST, "/v1/actions").json(request)).await
    }

    /// The action with all its runs; with `wait`, once it changed or after that many seconds.
    pub(crate) async fn action(&self, id: Uuid, wait: Option<u64>) -> Result<Action, Failure> {
        let query: Vec<_> = wait.map(|w| ("wait", w)).into_iter().collect();
        let action =
            json(self.request(Method::GET, &format!("/v1/actions/{id}")).query(&query)).await?;
        self.all_runs(action).await
    }

    /// `action` with the runs its answer did not carry (a fan-out over `INLINE_RUNS` targets),
    /// read page by page: the CLI shows every host.
    async fn all_runs(&self, mut action: Action) -> Result<Action, Failure> {
        let mut cursor = action.runs_next_cursor.take();
        while let Some(after) = cursor {
            let page: RunList = json(
                self.request(Method::GET, &format!("/v1/actions/{}/runs", action.id))
                    .query(&[("cursor", after.as_str()), ("limit", "500")]),
            )
            .await?;
            action.runs.extend(page.items);
            cursor = page.next_cursor;
        }
        Ok(action)
    }

    pub(crate) async fn actions(&self, filter: &ActionFilter) -> Result<ActionList, Failure> {
        json(self.request(Method::GET, "/v1/actions").query(filter)).await
    }

    pub(crate) async fn cancel(&self, id: Uuid) -> Result<Action, Failure> {
        json(self.request(Method::POST, &format!("/v1/actions/{id}/cancel"))).await
    }

    pub(crate) async fn file_meta(&self, id: &str) -> Result<FileMeta, Failure> {
        json(self.request(Method::GET, &format!("/v1/files/{}", file_id(id)?))).await
    }

    /// The content's answer, its body not read yet.
    pub(crate) async fn file_content(&self, id: &str) -> Result<Response, Failure> {
        send(self.request(Method::GET, &format!("/v1/files/{}/content", file_id(id)?))).await
    }
}

/// A file id as the API issues them (hex digits), so it cannot reach another path.
fn file_id(id: &str) -> Result<&str, Failure> {
    if !id.is_empty() && id.len() <= 64 && id.bytes().all(|b| b.is_ascii_hexdigit()) {
        Ok(id)
    } else {
        Err(Failure::Usage(format!("{id:?} is not a file id (hex digits)")))
    }
}

/// Sends the request; an answer other than 2xx is the gateway's refusal. The tenant's rate
/// limit (429) is waited out, a few times, when its `Retry-After` is short: the gateway
/// refuses so before acting on the request, so sending it again is safe.
async fn send(request: RequestBuilder) -> Result<Response, Failure> {
    let mut retries = 0;
    let response = loop {
        // The bodies sent are JSON in memory: the request can be sent again.
        let attempt = request.try_clone().expect("an in-memory body");
        let response = attempt.send().await.map_err(unreachable)?;
        let wait = (response.status() == StatusCode::TOO_MANY_REQUESTS)
            .then(|| edrgate_adapter::http::retry_after(response.headers()))
            .flatten()
            .filter(|wait| *wait <= LONGEST_RETRY_AFTER);
        match wait {
            Some(wait) if retries < RATE_LIMIT_RETRIES => {
                retries += 1;
                eprintln!("rate limited by the gateway; retrying in {} s", wait.as_secs());
                tokio::time::sleep(wait).await;
            }
            _ => break response,
        }
    };
    if response.status().is_success() {
        return Ok(response);
    }
    let status = response.status();
    let body = read_capped(response, MAX_ERROR).await.unwrap_or_default();
    Err(match serde_json::from_slice::<Problem>(&body) {
        Ok(problem) => Failure::Refused(Box::new(problem)),
        // Not one of ours (a proxy's page, say): its status and the start of its text.
        Err(_) => Failure::Answer {
            status: status.as_u16(),
            text: super::view::clean(
                &String::from_utf8_lossy(&body).chars().take(200).collect::<String>(),
            ),
        },
    })
}

async fn json<T: DeserializeOwned>(request: RequestBuilder) -> Result<T, Failure> {
    let body = read_capped(send(request).await?, MAX_JSON).await?;
    serde_json::from_slice(&body)
        .map_err(|e| Failure::Unreachable(format!("unreadable answer from the gateway: {e}")))
}

async fn read_capped(response: Response, cap: usize) -> Result<Vec<u8>, Failure> {
    let mut body = Vec::new();
    let mut chunks = response.bytes_stream();
    while let Some(chunk) = chunks.next().await {
        let chunk = chunk.map_err(unreachable)?;
        if body.len() + chunk.len() > cap {
            return Err(Failure::Unreachable(format!(
                "the gateway's answer is larger than {} MiB",
                cap >> 20
            )));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// A transport failure with its causes (reqwest's top-level message alone is vague).
pub(crate) fn unreachable(error: reqwest::Error) -> Failure {
    let mut text = error.to_string();
    let mut source = std::error::Error::source(&error);
    while let Some(cause) = source {
        text = format!("{text}: {cause}");
        source = cause.source();
    }
    Failure::Unreachable(text)
}
