//! Webhooks that survive what happens to receivers and gateways: a receiver that was down gets
//! everything once it is back, a delivery that failed for good is kept and can be re-delivered,
//! a gateway SIGKILLed between a change and its delivery (or mid-delivery) loses nothing and
//! re-sends with the same `webhook-id`, two replicas on one PostgreSQL database deliver each
//! event once, a slow receiver holds no more senders than its cap, the administration API is
//! tenant-isolated and checked, and no secret reaches the logs. Against a Carbon Black
//! simulator, through HTTP. The PostgreSQL test needs `EDRGATE_TEST_POSTGRES_URL` (skipped
//! without it).

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use edrgate_carbonblack_sim as cb;
use edrgate_simkit::Sim as _;
use serde_json::{Value, json};

mod common;
use common::{
    Backend, Client, Gateway, GatewayBuilder, GatewayProcess, Received, Receiver, read_events,
    scoped_token, token,
};

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

/// Tenants `acme` (with callbacks) and `globex` (without) on a CB simulator, http to loopback
/// allowed, retried after `delays`.
fn builder(sim: SocketAddr, delays: &[u64]) -> GatewayBuilder {
    Gateway::builder()
        .backend("acme", "cb", &Backend::carbonblack(sim).with("poll_interval_ms = 20"))
        .backend("globex", "cb", &Backend::carbonblack(sim).with("poll_interval_ms = 20"))
        .config(&format!(
            r#"
            [webhooks]
            allow_http = true
            allowed_networks = ["127.0.0.0/8"]
            timeout_seconds = 2
            retry_delays_seconds = {delays:?}

            [tenants.acme.webhooks.callback]
            secrets = ["{CALLBACK_SECRET}"]
            "#
        ))
}

fn process_list(device: &str) -> Value {
    json!({
        "targets": [{"backend": "cb", "device_id": device}],
        "commands": [{"type": "process_list"}],
    })
}

/// Makes an API subscription of `tenant` to `url` for `events` (empty: all): (id, secret).
async fn subscribe(api: &Client, tenant: &str, url: &str, events: &[&str]) -> (String, String) {
    let (status, created) =
        api.post(&token(tenant), "/v1/webhooks", &json!({"url": url, "events": events})).await;
    assert_eq!(status, 201, "{created}");
    (created["id"].as_str().unwrap().to_owned(), created["secret"].as_str().unwrap().to_owned())
}

/// The deliveries of destination `webhook` (`?status=` if given), newest first.
async fn deliveries(api: &Client, tenant: &str, webhook: &str, status: Option<&str>) -> Vec<Value> {
    let filter = status.map(|s| format!("&status={s}")).unwrap_or_default();
    let path = format!("/v1/webhooks/{webhook}/deliveries?limit=500{filter}");
    let (code, list) = api.get(&token(tenant), &path).await;
    assert_eq!(code, 200, "{list}");
    list["items"].as_array().unwrap().clone()
}

/// Polls the deliveries of `webhook` until `done` holds of them (panics after `within`).
async fn deliveries_until(
    api: &Client,
    tenant: &str,
    webhook: &str,
    within: Duration,
    done: impl Fn(&[Value]) -> bool,
) -> Vec<Value> {
    let deadline = Instant::now() + within;
    loop {
        let items = deliveries(api, tenant, webhook, None).await;
        if done(&items) {
            return items;
        }
        assert!(Instant::now() < deadline, "deliveries: condition not met; got {items:#?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn all_delivered(items: &[Value]) -> bool {
    items.iter().all(|d| d["status"] == "delivered")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_that_was_down_gets_everything_after_it_recovers() {
    let receiver = Receiver::start(503).await;
    // Twenty quick retries: time enough to look before any fails for good.
    let gw = builder(cb_sim().await, &[1; 20]).start().await;
    let (hook, secret) = subscribe(&gw, "acme", &receiver.url("/all"), &[]).await;
    let acme = token("acme");
    let mut actions = Vec::new();
    for device in ["1", "2", "1"] {
        let action = gw.run(&acme, &process_list(device)).await;
        assert_eq!(action["status"], "succeeded", "{action}");
        actions.push(action["id"].as_str().unwrap().to_owned());
    }

    // Down: every delivery stays pending, retried, with the receiver's answer recorded.
    let items = deliveries_until(&gw, "acme", &hook, Duration::from_secs(60), |items| {
        items.len() == 9
            && items
                .iter()
                .all(|d| d["attempts"].as_i64().unwrap() >= 2 && d["last_status_code"] == 503)
    })
    .await;
    assert!(items.iter().all(|d| d["status"] == "pending"), "{items:#?}");
    assert!(items.iter().all(|d| d["last_error"].as_str().unwrap().contains("503")), "{items:#?}");
    assert!(deliveries(&gw, "acme", &hook, Some("failed")).await.is_empty());
    let ids: HashSet<String> =
        items.iter().map(|d| d["event_id"].as_str().unwrap().to_owned()).collect();
    assert_eq!(ids.len(), 9, "one delivery per event");

    // Back: every event arrives, with the id it had while the receiver was down.
    receiver.answer(200);
    let got = receiver
        .until(Duration::from_secs(60), |got| {
            ids.iter().all(|id| got.iter().any(|r| &r.id == id && r.answered == 200))
        })
        .await;
    let items = deliveries_until(&gw, "acme", &hook, Duration::from_secs(30), all_delivered).await;
    assert_eq!(items.len(), 9);
    assert!(items.iter().all(|d| d["last_status_code"] == 200 && d["last_error"].is_null()));
    // Each event was tried while down (503) and delivered once back (200), same id throughout.
    for id in &ids {
        let of: Vec<&Received> = got.iter().filter(|r| &r.id == id).collect();
        assert!(of.iter().any(|r| r.answered == 503), "{of:#?}");
        assert_eq!(of.iter().filter(|r| r.answered == 200).count(), 1, "{of:#?}");
        assert!(of.windows(2).all(|w| w[0].body == w[1].body), "the same message every time");
    }
    assert!(got.iter().all(|r| r.verifies_with(&secret)), "every attempt is signed");
    // 3 actions × 3 types.
    let mut per_action: HashMap<String, Vec<String>> = HashMap::new();
    for r in got.iter().filter(|r| r.answered == 200) {
        per_action.entry(r.action_id()).or_default().push(r.kind());
    }
    for action in &actions {
        let mut kinds = per_action.remove(action).unwrap_or_default();
        kinds.sort();
        assert_eq!(kinds, ["action.created", "action.finished", "run.finished"], "{action}");
    }
    assert!(per_action.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_delivery_is_kept_and_can_be_redelivered() {
    let receiver = Receiver::start(500).await;
    let gw = builder(cb_sim().await, &[1, 1]).start().await;
    let (hook, secret) = subscribe(&gw, "acme", &receiver.url("/done"), &["action.finished"]).await;
    let action = gw.run(&token("acme"), &process_list("1")).await;

    // Three attempts (the first and two retries), then failed for good: kept, listed.
    let items = deliveries_until(&gw, "acme", &hook, Duration::from_secs(60), |items| {
        items.len() == 1 && items[0]["status"] == "failed"
    })
    .await;
    let failed = &items[0];
    assert_eq!(failed["attempts"], 3, "{failed}");
    assert_eq!(failed["last_status_code"], 500, "{failed}");
    assert_eq!(failed["action_id"], action["id"]);
    assert_eq!(failed["event_type"], "action.finished");
    assert!(failed["delivered_at"].is_null());
    let listed = deliveries(&gw, "acme", &hook, Some("failed")).await;
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0]["id"], failed["id"]);
    assert!(deliveries(&gw, "acme", &hook, Some("pending")).await.is_empty());
    assert!(deliveries(&gw, "acme", &hook, Some("delivered")).await.is_empty());
    let first = receiver.received();
    assert_eq!(first.len(), 3, "{first:#?}");
    assert!(first.iter().all(|r| r.id == first[0].id && r.answered == 500));
    assert_eq!(failed["event_id"], first[0].id.as_str());
    // Nothing more is tried on its own.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(receiver.received().len(), 3);

    // Re-delivered once the receiver is fixed: pending again, attempts afresh, same id.
    receiver.answer(200);
    let delivery = failed["id"].as_str().unwrap();
    let (status, again) = gw
        .post(
            &token("acme"),
            &format!("/v1/webhooks/{hook}/deliveries/{delivery}/redeliver"),
            &json!({}),
        )
        .await;
    assert_eq!(status, 202, "{again}");
    assert_eq!(again["id"], delivery);
    assert_eq!(again["status"], "pending");
    assert_eq!(again["attempts"], 0);
    let items = deliveries_until(&gw, "acme", &hook, Duration::from_secs(30), all_delivered).await;
    assert_eq!(items.len(), 1);
    assert_eq!(items[0]["attempts"], 1, "{items:#?}");
    assert_eq!(items[0]["last_status_code"], 200);
    assert!(items[0]["delivered_at"].is_string());
    let got = receiver.received();
    assert_eq!(got.len(), 4, "{got:#?}");
    let last = got.last().unwrap();
    assert_eq!(last.answered, 200);
    assert_eq!(last.id, first[0].id, "the same webhook-id as the first attempt");
    assert_eq!(last.body, first[0].body);
    assert!(last.verifies_with(&secret));
}

/// A gateway process on `sim` with its SQLite store in `dir`, an 8 s attempt timeout: room
/// for the test to kill it mid-attempt even on a loaded machine.
async fn process(dir: &std::path::Path, sim: SocketAddr, delays: &[u64]) -> GatewayProcess {
    let config =
        builder(sim, delays).config("engine.lease_seconds = 2\nwebhooks.timeout_seconds = 8");
    GatewayProcess::start("gateway", dir, &config).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sigkill_between_the_change_and_the_delivery_loses_nothing() {
    let receiver = Receiver::start(200).await;
    let dir = tempfile::tempdir().unwrap();
    let mut gw = process(dir.path(), cb_sim().await, &[1; 5]).await;
    let acme = token("acme");
    let (hook, secret) = subscribe(&gw, "acme", &receiver.url("/all"), &[]).await;

    // Killed mid-delivery: sent, not answered, so not recorded.
    receiver.hold.store(true, Ordering::SeqCst);
    let action = gw.run(&acme, &process_list("1")).await;
    let action = action["id"].as_str().unwrap().to_owned();
    let seen = receiver.until(Duration::from_secs(30), |got| !got.is_empty()).await;
    let x = seen[0].id.clone();
    gw.kill();
    let killed = Instant::now();
    assert!(
        killed.duration_since(seen[0].at) < Duration::from_secs(8),
        "killed before the attempt's timeout ran out"
    );
    receiver.answer(200);
    receiver.hold.store(false, Ordering::SeqCst);
    gw.crash_and_restart().await; // already dead: starts it again on the same data
    // Sent again once the dead sender's lease (timeout 8 s + 10 s) ran out, with the same id.
    let got = receiver
        .until(Duration::from_secs(60), |got| got.iter().any(|r| r.id == x && r.answered == 200))
        .await;
    let again = got.iter().find(|r| r.id == x && r.answered == 200).unwrap();
    let first = got.iter().find(|r| r.id == x).unwrap();
    assert_eq!(first.answered, 0, "the first attempt was held, not answered");
    assert!(
        again.at.duration_since(first.at) >= Duration::from_secs(10),
        "re-sent when the lease ran out, not before: {:?}",
        again.at.duration_since(first.at)
    );
    assert_eq!(again.body, first.body);
    assert!(again.verifies_with(&secret));
    let items = deliveries_until(&gw, "acme", &hook, Duration::from_secs(30), |items| {
        items.len() == 3 && all_delivered(items)
    })
    .await;
    let mine = items.iter().find(|d| d["event_id"] == x.as_str()).unwrap();
    assert_eq!(mine["action_id"], action.as_str());
    assert_eq!(mine["last_status_code"], 200);
    assert!(mine["attempts"].as_i64().unwrap() >= 2, "{mine}");
    // The action's other events, held too, arrive as well.
    receiver
        .until(Duration::from_secs(30), |got| {
            let ok: HashSet<String> =
                got.iter().filter(|r| r.answered == 200).map(|r| r.kind()).collect();
            ok.len() == 3
        })
        .await;

    // Killed right after a submission: its events (committed with it) are all delivered.
    let before = receiver.received().len();
    let submitted = gw.submit(&acme, &process_list("2")).await;
    gw.crash_and_restart().await;
    let finished = gw.wait_terminal(&acme, &submitted).await;
    assert!(
        ["succeeded", "failed", "outcome_unknown"].contains(&finished["status"].as_str().unwrap())
    );
    let got = receiver
        .until(Duration::from_secs(60), |got| {
            let kinds: HashSet<String> = got[before..]
                .iter()
                .filter(|r| r.answered == 200 && r.action_id() == submitted)
                .map(|r| r.kind())
                .collect();
            kinds.len() == 3
        })
        .await;
    assert!(got[before..].iter().all(|r| r.verifies_with(&secret)));
    let items = deliveries_until(&gw, "acme", &hook, Duration::from_secs(30), |items| {
        items.len() == 6 && all_delivered(items)
    })
    .await;
    let of: Vec<&Value> = items.iter().filter(|d| d["action_id"] == submitted.as_str()).collect();
    assert_eq!(of.len(), 3, "one delivery per event, none lost or doubled: {items:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_deliver_each_event_once() {
    let test = "two_replicas_deliver_each_event_once";
    let Some(db_url) = common::fresh_postgres_database(test).await else { return };
    let receiver = Receiver::start(200).await;
    let dir = tempfile::tempdir().unwrap();
    let config = builder(cb_sim().await, &[1; 5]).config(&format!(
        r#"
        store.url = "{db_url}"
        store.max_connections = 8
        engine.lease_seconds = 2

        [tenants.acme.webhooks.subscriptions.soar]
        url = "{}"
        secrets = ["{CONFIG_SECRET}"]
        "#,
        receiver.url("/soar")
    ));
    let a = GatewayProcess::start("a", dir.path(), &config).await;
    let b = GatewayProcess::start("b", dir.path(), &config).await;
    let acme = token("acme");
    let mut on_a = Vec::new();
    let mut all = Vec::new();
    for i in 0..10 {
        let replica = if i % 2 == 0 { &a } else { &b };
        let id = replica.submit(&acme, &process_list(if i % 3 == 0 { "1" } else { "2" })).await;
        if i % 2 == 0 {
            on_a.push(id.clone());
        }
        all.push(id);
    }
    for id in &all {
        a.wait_terminal(&acme, id).await;
    }
    receiver.until(Duration::from_secs(60), |got| got.len() >= 30).await;
    // Room for any duplicate to show.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let got = receiver.received();
    assert_eq!(got.len(), 30, "{got:#?}");
    let ids: HashSet<&str> = got.iter().map(|r| r.id.as_str()).collect();
    assert_eq!(ids.len(), 30, "each webhook-id exactly once");
    assert!(got.iter().all(|r| r.verifies_with(CONFIG_SECRET)));
    let actions: HashSet<String> = got.iter().map(Received::action_id).collect();
    assert_eq!(actions, all.iter().cloned().collect());
    let items = deliveries(&b, "acme", "soar", None).await;
    assert_eq!(items.len(), 30);
    assert!(all_delivered(&items) && items.iter().all(|d| d["attempts"] == 1), "{items:#?}");

    // Replica B's event stream has what was submitted on A.
    let events = read_events(&b, &acme, "/v1/events?after=0", None, 30).await;
    let streamed: HashSet<&str> =
        events.iter().map(|(_, _, data)| data["data"]["action_id"].as_str().unwrap()).collect();
    for id in &on_a {
        assert!(streamed.contains(id.as_str()), "{id} (submitted on A) is in B's stream");
    }
    let seqs: Vec<i64> = events.iter().map(|(seq, _, _)| *seq).collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{seqs:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_admin_is_tenant_isolated_and_checked() {
    let receiver = Receiver::start(200).await;
    let sim = cb_sim().await;
    let gw = builder(sim, &[1, 1]).start().await;
    let (acme, globex) = (token("acme"), token("globex"));
    let (hook, secret) = subscribe(&gw, "acme", &receiver.url("/hook"), &["action.finished"]).await;
    gw.run(&acme, &process_list("1")).await;
    let items = deliveries_until(&gw, "acme", &hook, Duration::from_secs(30), |items| {
        items.len() == 1 && all_delivered(items)
    })
    .await;
    let delivery = items[0]["id"].as_str().unwrap().to_owned();

    // Another tenant finds none of it.
    let (status, _) = gw.get(&globex, &format!("/v1/webhooks/{hook}")).await;
    assert_eq!(status, 404);
    let (status, _) = gw.get(&globex, &format!("/v1/webhooks/{hook}/deliveries")).await;
    assert_eq!(status, 404);
    let (status, _) =
        gw.post(&globex, &format!("/v1/webhooks/{hook}/rotate-secret"), &json!({})).await;
    assert_eq!(status, 404);
    let redeliver = format!("/v1/webhooks/{hook}/deliveries/{delivery}/redeliver");
    let (status, _) = gw.post(&globex, &redeliver, &json!({})).await;
    assert_eq!(status, 404);
    let callback_redeliver = format!("/v1/webhooks/callback/deliveries/{delivery}/redeliver");
    let (status, _) = gw.post(&globex, &callback_redeliver, &json!({})).await;
    assert_eq!(status, 404);
    let response = gw
        .request(reqwest::Method::DELETE, &globex, &format!("/v1/webhooks/{hook}"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 404);
    let (_, listed) = gw.get(&globex, "/v1/webhooks").await;
    assert_eq!(listed["items"], json!([]));
    // …and acme's is untouched by all that.
    let (status, got) = gw.get(&acme, &format!("/v1/webhooks/{hook}")).await;
    assert_eq!(status, 200, "{got}");
    assert!(got.get("previous_secret_expires_at").is_none(), "not rotated: {got}");
    assert_eq!(deliveries(&gw, "acme", &hook, None).await[0]["status"], "delivered");

    // Without the admin permission: refused.
    let analyst =
        scoped_token("acme", "analyst-8", &["edrgate:read", "edrgate:write", "edrgate:execute"]);
    let (status, _) = gw.get(&analyst, "/v1/webhooks").await;
    assert_eq!(status, 403);
    let (status, _) = gw.post(&analyst, "/v1/webhooks", &json!({"url": receiver.url("/x")})).await;
    assert_eq!(status, 403);
    let (status, _) = gw.get(&analyst, &format!("/v1/webhooks/{hook}/deliveries")).await;
    assert_eq!(status, 403);
    let (status, _) = gw.post(&analyst, &redeliver, &json!({})).await;
    assert_eq!(status, 403);

    // Refused destinations and headers.
    let create = |body: Value| {
        let gw = &gw;
        let acme = &acme;
        async move { gw.post(acme, "/v1/webhooks", &body).await }
    };
    let (status, problem) =
        create(json!({"url": "https://169.254.169.254/latest/meta-data"})).await;
    assert_eq!(status, 422, "{problem}");
    let (status, problem) = create(json!({
        "url": receiver.url("/h"),
        "header": {"name": "webhook-signature", "value": "v1,forged"},
    }))
    .await;
    assert_eq!(status, 422, "{problem}");
    let https_only = Gateway::builder()
        .backend("acme", "cb", &Backend::carbonblack(sim))
        .config("[tenants.acme.webhooks.callback]\nsecrets = [\"whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD\"]")
        .start()
        .await;
    let (status, problem) =
        https_only.post(&acme, "/v1/webhooks", &json!({"url": "http://10.1.2.3/hook"})).await;
    assert_eq!(status, 422, "http is refused unless allowed: {problem}");
    let mut body = process_list("1");
    body["callback_url"] = json!("http://10.1.2.3/cb");
    let (status, problem) = https_only.post(&acme, "/v1/actions", &body).await;
    assert_eq!(status, 422, "{problem}");
    // A callback: refused for a tenant without callback signing, or to a refused address.
    let mut body = process_list("1");
    body["callback_url"] = json!(receiver.url("/cb"));
    let (status, problem) = gw.post(&globex, "/v1/actions", &body).await;
    assert_eq!(status, 422, "{problem}");
    body["callback_url"] = json!("https://169.254.169.254/latest/meta-data");
    let (status, problem) = gw.post(&acme, "/v1/actions", &body).await;
    assert_eq!(status, 422, "{problem}");
    let (_, page) = gw.get(&globex, "/v1/actions").await;
    assert_eq!(page["items"], json!([]), "nothing was accepted for globex: {page}");

    // Rotation: the next delivery is signed with both, each verifying on its own.
    let (status, rotated) =
        gw.post(&acme, &format!("/v1/webhooks/{hook}/rotate-secret"), &json!({})).await;
    assert_eq!(status, 200, "{rotated}");
    let new_secret = rotated["secret"].as_str().unwrap().to_owned();
    assert_ne!(new_secret, secret);
    assert!(rotated["previous_secret_expires_at"].is_string(), "{rotated}");
    let before = receiver.received().len();
    gw.run(&acme, &process_list("2")).await;
    let got = receiver.until(Duration::from_secs(30), |got| got.len() > before).await;
    let next = &got[before];
    let signatures: Vec<&str> = next.signature.split(' ').collect();
    assert_eq!(signatures.len(), 2, "{}", next.signature);
    assert!(signatures.iter().all(|s| s.starts_with("v1,")), "{}", next.signature);
    assert!(next.verifies_with(&new_secret));
    assert!(next.verifies_with(&secret));
    assert!(
        got[..before].iter().all(|r| r.verifies_with(&secret) && !r.verifies_with(&new_secret))
    );

    // The audit trail has the creation and rotation; no secret shows anywhere.
    let (status, audit) = gw.get(&acme, "/v1/audit?event=webhook.create").await;
    assert_eq!(status, 200, "{audit}");
    let created: Vec<&Value> = audit["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e.to_string().contains(&hook))
        .collect();
    assert_eq!(created.len(), 1, "{audit:#}");
    let (_, rotations) = gw.get(&acme, "/v1/audit?event=webhook.rotate").await;
    assert!(rotations.to_string().contains(&hook), "{rotations:#}");
    let (_, everything) = gw.get(&acme, "/v1/audit?limit=1000").await;
    let (_, list) = gw.get(&acme, "/v1/webhooks").await;
    let (_, one) = gw.get(&acme, &format!("/v1/webhooks/{hook}")).await;
    let (_, listed) = gw.get(&acme, &format!("/v1/webhooks/{hook}/deliveries")).await;
    for text in [everything.to_string(), list.to_string(), one.to_string(), listed.to_string()] {
        assert!(text.contains(&hook));
        for s in [&secret, &new_secret] {
            let key = s.strip_prefix("whsec_").unwrap();
            assert!(!text.contains(key), "a secret shows: {text}");
        }
    }

    // Deleting: the configuration's cannot be, the API's can (then it is gone).
    let delete = |path: String| {
        let gw = &gw;
        let acme = &acme;
        async move { gw.request(reqwest::Method::DELETE, acme, &path).send().await.unwrap().status() }
    };
    assert_eq!(delete(format!("/v1/webhooks/{hook}")).await, 204);
    assert_eq!(delete(format!("/v1/webhooks/{hook}")).await, 404);
    let (status, _) = gw.get(&acme, &format!("/v1/webhooks/{hook}")).await;
    assert_eq!(status, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_and_callback_urls_never_reach_the_logs() {
    let receiver = Receiver::start(500).await;
    let dir = tempfile::tempdir().unwrap();
    let mut gw = process(dir.path(), cb_sim().await, &[1, 1]).await;
    let acme = token("acme");
    let (hook, secret) = subscribe(&gw, "acme", &receiver.url("/all"), &["action.finished"]).await;
    // Nothing listens on this port: the attempts fail with a connection error.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let mut body = process_list("1");
    body["callback_url"] = json!(receiver.url("/callback?sig=SECRETSIG"));
    let answered = gw.run(&acme, &body).await;
    body["callback_url"] = json!(format!("http://{closed}/callback?sig=SECRETSIG2"));
    let refused = gw.run(&acme, &body).await;
    // Both fail for good (500s, connection refused), and are logged as such.
    let items = deliveries_until(&gw, "acme", "callback", Duration::from_secs(60), |items| {
        items.len() == 2 && items.iter().all(|d| d["status"] == "failed")
    })
    .await;
    let of =
        |action: &Value| items.iter().find(|d| d["action_id"] == action["id"]).unwrap().clone();
    assert_eq!(of(&answered)["last_status_code"], 500);
    assert!(of(&refused)["last_status_code"].is_null());
    for item in &items {
        assert!(!item.to_string().contains("SECRETSIG"), "{item}");
    }
    // Then the receiver is fixed and the answered one is re-delivered.
    receiver.answer(200);
    let id = of(&answered)["id"].as_str().unwrap().to_owned();
    let (status, _) = gw
        .post(&acme, &format!("/v1/webhooks/callback/deliveries/{id}/redeliver"), &json!({}))
        .await;
    assert_eq!(status, 202);
    receiver
        .until(Duration::from_secs(30), |got| {
            got.iter().any(|r| r.path == "/callback" && r.answered == 200)
        })
        .await;
    deliveries_until(&gw, "acme", &hook, Duration::from_secs(30), |items| {
        items.len() == 2 && items.iter().all(|d| d["status"] == "failed")
    })
    .await;
    let callbacks: Vec<Received> =
        receiver.received().into_iter().filter(|r| r.path == "/callback").collect();
    assert!(callbacks.iter().all(|r| r.verifies_with(CALLBACK_SECRET)));
    // The failures were logged (before the crash: a SIGKILL loses the lines not yet written).
    gw.logs_containing("webhook not delivered", Duration::from_secs(10)).await;
    // A restart logs its start-up too.
    gw.crash_and_restart().await;
    let logs = gw.logs();
    for s in [
        "SECRETSIG",
        "sig=",
        secret.as_str(),
        &secret["whsec_".len()..],
        CALLBACK_SECRET,
        &CALLBACK_SECRET["whsec_".len()..],
    ] {
        assert!(!logs.contains(s), "{s:?} is in the logs:\n{logs}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_receiver_holds_no_more_senders_than_its_cap() {
    let receiver = Receiver::start(200).await;
    let gw = builder(cb_sim().await, &[1; 20])
        .config("webhooks.max_in_flight_per_destination = 1")
        .start()
        .await;
    let (hook, secret) = subscribe(&gw, "acme", &receiver.url("/slow"), &[]).await;
    // The receiver takes every request and answers none (the gateway gives up after 2 s):
    // meanwhile the other deliveries become due, all to this one subscription.
    receiver.hold.store(true, Ordering::SeqCst);
    for device in ["1", "2", "1"] {
        gw.run(&token("acme"), &process_list(device)).await;
    }
    let got = receiver.until(Duration::from_secs(60), |got| got.len() >= 4).await;
    // One at a time: each sent after the one before timed out, never a burst.
    let gaps: Vec<Duration> = got.windows(2).map(|w| w[1].at.duration_since(w[0].at)).collect();
    assert!(gaps.iter().all(|g| *g >= Duration::from_secs(1)), "{gaps:?}");
    // Once it answers, everything is delivered.
    receiver.answer(200);
    receiver.hold.store(false, Ordering::SeqCst);
    let items = deliveries_until(&gw, "acme", &hook, Duration::from_secs(60), |items| {
        items.len() == 9 && all_delivered(items)
    })
    .await;
    let ids: HashSet<&str> = items.iter().map(|d| d["event_id"].as_str().unwrap()).collect();
    let got = receiver.received();
    assert!(ids.iter().all(|id| got.iter().any(|r| r.id == *id && r.answered == 200)));
    assert!(got.iter().all(|r| r.verifies_with(&secret)));
}
