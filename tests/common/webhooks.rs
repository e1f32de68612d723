//! A webhook receiver on loopback that records what arrives (and can answer errors or hold
//! requests), and a reader of the event stream (`GET /v1/events`): what the webhook tests of
//! several crates share.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU16, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::http::HeaderMap;
use edrgate::webhooks::sign::{Secret, verify};
use serde_json::Value;

use super::client::Client;

/// One request as the receiver saw it, and what it answered.
#[derive(Clone, Debug)]
pub(crate) struct Received {
    pub(crate) path: String,
    pub(crate) id: String,
    pub(crate) timestamp: i64,
    pub(crate) signature: String,
    /// The `X-Api-Key` header, if sent (a subscription's static header).
    pub(crate) header: Option<String>,
    pub(crate) body: Vec<u8>,
    /// The status answered; 0 when the request was held past the sender's timeout.
    pub(crate) answered: u16,
    pub(crate) at: Instant,
}

impl Received {
    pub(crate) fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap()
    }
    pub(crate) fn kind(&self) -> String {
        self.json()["type"].as_str().unwrap().to_owned()
    }
    pub(crate) fn action_id(&self) -> String {
        self.json()["data"]["action_id"].as_str().unwrap().to_owned()
    }
    pub(crate) fn verifies_with(&self, secret: &str) -> bool {
        let secret = Secret::parse(secret).unwrap();
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        verify(&[secret], &self.id, self.timestamp, &self.body, &self.signature, now, 300).is_ok()
    }
}

/// A webhook receiver on loopback: records every request as it arrives, then (while `hold`
/// is set, up to a minute) does not answer, then answers `status`.
#[derive(Clone)]
pub(crate) struct Receiver {
    pub(crate) addr: SocketAddr,
    got: Arc<Mutex<Vec<Received>>>,
    status: Arc<AtomicU16>,
    /// While set, requests are recorded and not answered (up to a minute).
    pub(crate) hold: Arc<AtomicBool>,
}

impl Receiver {
    pub(crate) async fn start(status: u16) -> Receiver {
        let got: Arc<Mutex<Vec<Received>>> = Arc::default();
        let status = Arc::new(AtomicU16::new(status));
        let hold = Arc::new(AtomicBool::new(false));
        let (g, s, h) = (Arc::clone(&got), Arc::clone(&status), Arc::clone(&hold));
        let app = axum::Router::new().fallback(
            move |uri: axum::http::Uri, headers: HeaderMap, body: axum::body::Bytes| {
                let (g, s, hold) = (Arc::clone(&g), Arc::clone(&s), Arc::clone(&h));
                async move {
                    let h = |n: &str| {
                        headers.get(n).and_then(|v| v.to_str().ok()).unwrap_or("").to_owned()
                    };
                    let held = hold.load(Ordering::SeqCst);
                    let answered = if held { 0 } else { s.load(Ordering::SeqCst) };
                    g.lock().unwrap().push(Received {
                        path: uri.path().to_owned(),
                        id: h("webhook-id"),
                        timestamp: h("webhook-timestamp").parse().unwrap_or(0),
                        signature: h("webhook-signature"),
                        header: headers
                            .get("x-api-key")
                            .and_then(|v| v.to_str().ok())
                            .map(str::to_owned),
                        body: body.to_vec(),
                        answered,
                        at: Instant::now(),
                    });
                    if held {
                        let until = Instant::now() + Duration::from_secs(60);
                        while hold.load(Ordering::SeqCst) && Instant::now() < until {
                            tokio::time::sleep(Duration::from_millis(20)).await;
                        }
                        // Too late for the sender's timeout: recorded as no answer (0).
                    }
                    axum::http::StatusCode::from_u16(if held { 503 } else { answered }).unwrap()
                }
            },
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Receiver { addr, got, status, hold }
    }

    pub(crate) fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub(crate) fn answer(&self, status: u16) {
        self.status.store(status, Ordering::SeqCst);
    }

    pub(crate) fn received(&self) -> Vec<Received> {
        self.got.lock().unwrap().clone()
    }

    /// Waits until `done` holds of what was received (panics after `within`).
    pub(crate) async fn until(
        &self,
        within: Duration,
        done: impl Fn(&[Received]) -> bool,
    ) -> Vec<Received> {
        let deadline = Instant::now() + within;
        loop {
            let got = self.received();
            if done(&got) {
                return got;
            }
            assert!(Instant::now() < deadline, "receiver: condition not met; got {got:#?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// Reads `count` events from the stream at `path`, resuming after `last_event_id` if given
/// (then up to a second more, to see that no other comes), as (id, event, data).
pub(crate) async fn read_events(
    api: &Client,
    token: &str,
    path: &str,
    last_event_id: Option<i64>,
    count: usize,
) -> Vec<(i64, String, Value)> {
    use futures::StreamExt as _;
    let mut request = api.request(reqwest::Method::GET, token, path);
    if let Some(id) = last_event_id {
        request = request.header("last-event-id", id.to_string());
    }
    let response = request.send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    let mut body = response.bytes_stream();
    let mut text = String::new();
    let mut events = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let mut quiet_until = None;
    loop {
        let until = quiet_until.unwrap_or(deadline);
        match tokio::time::timeout_at(until, body.next()).await {
            Ok(Some(chunk)) => text.push_str(std::str::from_utf8(&chunk.unwrap()).unwrap()),
            Ok(None) => break,
            Err(_) if quiet_until.is_some() => break,
            Err(_) => panic!("only {} of {count} events came: {text}", events.len()),
        }
        while let Some(end) = text.find("\n\n") {
            let block: String = text.drain(..end + 2).collect();
            let field = |name: &str| {
                block.lines().find_map(|l| l.strip_prefix(name)).map(|v| v.trim().to_owned())
            };
            if let (Some(id), Some(event), Some(data)) =
                (field("id:"), field("event:"), field("data:"))
            {
                events.push((id.parse().unwrap(), event, serde_json::from_str(&data).unwrap()));
            }
        }
        if events.len() >= count && quiet_until.is_none() {
            quiet_until = Some(tokio::time::Instant::now() + Duration::from_secs(1));
        }
    }
    assert_eq!(events.len(), count, "{events:#?}");
    events
}
