//! The `/v1` API of a running gateway, as a test calls it: every request with a bearer token
//! (see [`super::token`]).

use std::time::Duration;

use reqwest::{Method, RequestBuilder, StatusCode};
use serde_json::Value;

/// How long [`Client::wait_terminal`] waits for an action at the most.
const PATIENCE: Duration = Duration::from_secs(300);

/// A gateway's API at `base` (its origin, with the path prefix if it has one).
#[derive(Clone, Debug)]
pub(crate) struct Client {
    pub(crate) base: String,
    pub(crate) http: reqwest::Client,
}

impl Client {
    pub(crate) fn new(base: impl Into<String>, http: reqwest::Client) -> Client {
        Client { base: base.into(), http }
    }

    pub(crate) fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// A request to `path` with `token`, to finish and send.
    pub(crate) fn request(&self, method: Method, token: &str, path: &str) -> RequestBuilder {
        self.http.request(method, self.url(path)).bearer_auth(token)
    }

    /// `GET path`: the status and the JSON body (`null` if none).
    pub(crate) async fn get(&self, token: &str, path: &str) -> (StatusCode, Value) {
        answer(self.request(Method::GET, token, path)).await
    }

    /// `POST path` with a JSON `body`: the status and the JSON body (`null` if none).
    pub(crate) async fn post(&self, token: &str, path: &str, body: &Value) -> (StatusCode, Value) {
        answer(self.request(Method::POST, token, path).json(body)).await
    }

    /// Submits an action (asserting it is accepted); its id.
    pub(crate) async fn submit(&self, token: &str, body: &Value) -> String {
        let (status, action) = self.post(token, "/v1/actions", body).await;
        assert_eq!(status, StatusCode::ACCEPTED, "{action}");
        action["id"].as_str().unwrap().to_owned()
    }

    /// Long-polls action `id` until it is terminal; the action.
    pub(crate) async fn wait_terminal(&self, token: &str, id: &str) -> Value {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            let (status, action) = self.get(token, &format!("/v1/actions/{id}?wait=5")).await;
            assert_eq!(status, StatusCode::OK, "{action}");
            let open = ["queued", "dispatched", "running"];
            if !open.contains(&action["status"].as_str().unwrap_or_default()) {
                return action;
            }
            assert!(tokio::time::Instant::now() < deadline, "did not finish: {action:#}");
        }
    }

    /// Submits an action and waits until it is terminal.
    pub(crate) async fn run(&self, token: &str, body: &Value) -> Value {
        let id = self.submit(token, body).await;
        self.wait_terminal(token, &id).await
    }

    /// `POST /v1/files?name=…` with `data`.
    pub(crate) async fn upload(
        &self,
        token: &str,
        name: &str,
        data: impl Into<reqwest::Body>,
    ) -> reqwest::Response {
        self.request(Method::POST, token, &format!("/v1/files?name={name}"))
            .header("content-type", "application/octet-stream")
            .body(data)
            .send()
            .await
            .unwrap()
    }

    /// A stored file's content (asserting it is there).
    pub(crate) async fn download(&self, token: &str, file_id: &str) -> Vec<u8> {
        let path = format!("/v1/files/{file_id}/content");
        let response = self.request(Method::GET, token, &path).send().await.unwrap();
        assert_eq!(response.status(), StatusCode::OK, "{path}");
        response.bytes().await.unwrap().to_vec()
    }
}

async fn answer(request: RequestBuilder) -> (StatusCode, Value) {
    let response = request.send().await.unwrap();
    let status = response.status();
    (status, response.json().await.unwrap_or(Value::Null))
}
