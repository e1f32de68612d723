//! Push, not poll: webhook subscriptions (the configuration's and the API's), per-action
//! callbacks, deliveries (at least once, retried, failed and re-delivered), destination checks,
//! tenant isolation, and the event stream (`GET /v1/events`), against a Carbon Black
//! simulator, through HTTP. The receiver here verifies with the gateway's own verifier;
//! tests/sdk.rs verifies the same deliveries with the Standard Webhooks library from PyPI.

use std::net::SocketAddr;
use std::time::Duration;

use edrgate_carbonblack_sim as cb;
use edrgate_simkit::Sim as _;
use serde_json::{Value, json};

mod common;
use common::{Backend, Gateway, GatewayBuilder, Receiver, read_events, token};

/// The configuration subscription's secret (Standard Webhooks' test vector secret).
const CONFIG_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
const CALLBACK_SECRET: &str = "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD";

async fn cb_sim() -> SocketAddr {
    let sim = cb::Simulator::new(cb::SimConfig {
        sensors: 2,
        checkin_delay: Duration::from_millis(10),
        command_latency: Duration::from_millis(5),
        ..cb::SimConfig::default()
    });
    sim.spawn().await.unwrap()
}

/// A gateway with tenant `acme` on a CB simulator, http to loopback allowed, quick retries.
fn builder(sim: SocketAddr, receiver: &Receiver) -> GatewayBuilder {
    Gateway::builder()
        .backend("acme", "cb", &Backend::carbonblack(sim).with("poll_interval_ms = 20"))
        .backend("globex", "cb", &Backend::carbonblack(sim).with("poll_interval_ms = 20"))
        .config(&format!(
            r#"
            [webhooks]
            allow_http = true
            allowed_networks = ["127.0.0.0/8"]
            timeout_seconds = 2
            retry_delays_seconds = [1, 1, 1]

            [tenants.acme.webhooks.subscriptions.soar]
            url = "{}"
            events = ["action.finished"]
            secrets = ["{CONFIG_SECRET}"]
            header = {{ name = "X-Api-Key", value = "static-key-1" }}

            [tenants.acme.webhooks.callback]
            secrets = ["{CALLBACK_SECRET}"]
            "#,
            receiver.url("/config")
        ))
}

fn process_list(device: &str) -> Value {
    json!({
        "targets": [{"backend": "cb", "device_id": device}],
        "commands": [{"type": "process_list"}],
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscriptions_and_callbacks_are_delivered_signed() {
    let receiver = Receiver::start(200).await;
    let gw = builder(cb_sim().await, &receiver).start().await;
    let acme = token("acme");

    // A subscription through the API: the secret comes back once.
    let (status, created) = gw
        .post(&acme, "/v1/webhooks", &json!({"url": receiver.url("/api"), "description": "all"}))
        .await;
    assert_eq!(status, 201, "{created}");
    let api_secret = created["secret"].as_str().unwrap().to_owned();
    let api_id = created["id"].as_str().unwrap().to_owned();
    assert!(api_secret.starts_with("whsec_"));
    let (_, listed) = gw.get(&acme, "/v1/webhooks").await;
    let text = listed.to_string();
    assert!(!text.contains(&api_secret) && !text.contains("static-key-1"), "{text}");
    let sources: Vec<&str> =
        listed["items"].as_array().unwrap().iter().map(|w| w["source"].as_str().unwrap()).collect();
    assert_eq!(sources, ["config", "api"]);

    let mut body = process_list("1");
    body["callback_url"] = json!(receiver.url("/callback?sig=receiver-signature"));
    let action = gw.run(&acme, &body).await;
    let action_id = action["id"].as_str().unwrap().to_owned();
    assert_eq!(action["status"], "succeeded");
    assert!(!action.to_string().contains("receiver-signature"), "the callback URL is not shown");

    let got = receiver
        .until(Duration::from_secs(20), |got| {
            got.iter().filter(|r| r.path == "/api").count() == 3
                && got.iter().any(|r| r.path == "/config")
                && got.iter().any(|r| r.path == "/callback")
        })
        .await;
    let of = |path: &str| got.iter().filter(|r| r.path == path).collect::<Vec<_>>();
    // The API subscription takes every type. Deliveries are sent concurrently, so they may
    // arrive in any order; message ids (UUIDv7) sort as the events were made.
    let mut api = of("/api");
    api.sort_by(|a, b| a.id.cmp(&b.id));
    let kinds: Vec<String> = api.iter().map(|r| r.kind()).collect();
    assert_eq!(kinds, ["action.created", "run.finished", "action.finished"]);
    assert!(of("/api").iter().all(|r| r.verifies_with(&api_secret)));
    // The configuration's takes action.finished only, with its static header.
    let config = of("/config");
    assert_eq!(config.len(), 1);
    assert_eq!(config[0].kind(), "action.finished");
    assert!(config[0].verifies_with(CONFIG_SECRET));
    assert!(!config[0].verifies_with(&api_secret));
    assert_eq!(config[0].header.as_deref(), Some("static-key-1"));
    // The callback: action.finished of this action, signed with the tenant's callback secret.
    let callback = of("/callback");
    assert_eq!(callback.len(), 1);
    assert!(callback[0].verifies_with(CALLBACK_SECRET));
    let finished = callback[0].json();
    assert_eq!(finished["type"], "action.finished");
    assert_eq!(finished["data"]["action_id"], action_id.as_str());
    assert_eq!(finished["data"]["status"], "succeeded");
    assert_eq!(finished["data"]["summary"]["by_status"]["succeeded"], 1);
    // One event, one id: the same message id at every destination that took it.
    assert_eq!(config[0].id, callback[0].id);
    assert_eq!(finished["id"], callback[0].id.as_str());

    // The deliveries are listed, delivered.
    let (status, deliveries) = gw.get(&acme, &format!("/v1/webhooks/{api_id}/deliveries")).await;
    assert_eq!(status, 200, "{deliveries}");
    let items = deliveries["items"].as_array().unwrap();
    assert_eq!(items.len(), 3);
    assert!(items.iter().all(|d| d["status"] == "delivered" && d["attempts"] == 1), "{deliveries}");
    let (status, callbacks) = gw.get(&acme, "/v1/webhooks/callback/deliveries").await;
    assert_eq!(status, 200);
    assert_eq!(callbacks["items"].as_array().unwrap().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_event_stream_resumes_without_gaps() {
    let receiver = Receiver::start(200).await;
    let gw = builder(cb_sim().await, &receiver).start().await;
    let acme = token("acme");
    for _ in 0..2 {
        gw.run(&acme, &process_list("1")).await;
    }
    // From the oldest kept: 2 actions × 3 events.
    let first = read_events(&gw, &acme, "/v1/events?after=0", None, 6).await;
    let seqs: Vec<i64> = first.iter().map(|(id, _, _)| *id).collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{seqs:?}");
    // More happens while nobody listens; a reconnect with Last-Event-ID gets exactly that.
    let last = *seqs.last().unwrap();
    gw.run(&acme, &process_list("2")).await;
    let resumed = read_events(&gw, &acme, "/v1/events", Some(last), 3).await;
    let kinds: Vec<&str> = resumed.iter().map(|(_, k, _)| k.as_str()).collect();
    assert_eq!(kinds, ["action.created", "run.finished", "action.finished"]);
    assert_eq!(resumed[0].0, last + 1, "no gap after the resume point");
    // Another tenant's stream sees none of it.
    let globex = token("globex");
    let (status, _) = gw.get(&globex, "/v1/webhooks/soar").await;
    assert_eq!(status, 404, "another tenant's subscription is not found");
    let none = read_events(&gw, &globex, "/v1/events?after=0", None, 0).await;
    assert!(none.is_empty());
}
