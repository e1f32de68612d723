//! Tenants, routing, configuration reload and the audit trail, end to end: gateways built from
//! configuration files, served on loopback like `edrgate serve`, in front of Carbon Black
//! simulators, driven only through `/v1`.

use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use edrgate::config::ScopeNames;
use edrgate_carbonblack_sim::{SimConfig, Simulator};
use reqwest::StatusCode;
use serde_json::{Value, json};

mod common;
use common::{Backend, Gateway, SECRET, operator_token, scoped_token, spawn, token_as};

/// Alice's token of `tenant`, with every permission.
fn alice(tenant: &str) -> String {
    token_as(tenant, "alice")
}

/// A process list on `hostname`, run as alice of `tenant`.
async fn run(gw: &Gateway, tenant: &str, hostname: &str) -> Value {
    let body = json!({"targets": [{"hostname": hostname}], "commands": [{"type": "process_list"}]});
    gw.run(&alice(tenant), &body).await
}

fn fast() -> SimConfig {
    SimConfig {
        sensors: 5,
        checkin_delay: Duration::from_millis(20),
        command_latency: Duration::from_millis(5),
        ..SimConfig::default()
    }
}

fn backend_of(action: &Value) -> &str {
    action["runs"][0]["backend"].as_str().unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_tenant_routes_the_same_hostname_to_its_own_backend() {
    let (sim_a, a) = spawn(Simulator::new(fast())).await;
    let (sim_b, b) = spawn(Simulator::new(fast())).await;
    let gw = Gateway::builder()
        .backend("acme", "cb-acme", &Backend::carbonblack(a))
        .backend("globex", "cb-globex", &Backend::carbonblack(b))
        .start()
        .await;

    let acme = run(&gw, "acme", "WIN-0001").await;
    assert_eq!(acme["status"], "succeeded", "{acme:#}");
    assert_eq!(backend_of(&acme), "cb-acme");
    assert_eq!(sim_a.counters().executed("process list"), 1);
    assert_eq!(sim_b.counters().executed("process list"), 0);

    let globex = run(&gw, "globex", "WIN-0001").await;
    assert_eq!(globex["status"], "succeeded", "{globex:#}");
    assert_eq!(backend_of(&globex), "cb-globex");
    assert_eq!(sim_a.counters().executed("process list"), 1);
    assert_eq!(sim_b.counters().executed("process list"), 1);

    // Neither tenant sees the other's devices or actions.
    let (_, devices) = gw.get(&alice("acme"), "/v1/devices").await;
    let backends: Vec<&str> = devices["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["backend"].as_str().unwrap())
        .collect();
    assert!(backends.iter().all(|b| *b == "cb-acme"), "{backends:?}");
    let path = format!("/v1/actions/{}", globex["id"].as_str().unwrap());
    let (status, _) = gw.get(&alice("acme"), &path).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routing_rules_order_default_and_ambiguity() {
    // Two servers that both know WIN-0001 … WIN-0005.
    let (_sim_a, a) = spawn(Simulator::new(fast())).await;
    let (_sim_b, b) = spawn(Simulator::new(fast())).await;
    let mut gateway = Gateway::builder();
    for tenant in ["plain", "pattern", "ordered", "fallback", "grouped"] {
        gateway = gateway.backend(tenant, "cb-a", &Backend::carbonblack(a)).backend(
            tenant,
            "cb-b",
            &Backend::carbonblack(b),
        );
    }
    let gw = gateway
        .config(
            r#"
        [[tenants.pattern.routing.rules]]
        hostname = "win-000[*"
        backend = "cb-a"
        [[tenants.pattern.routing.rules]]
        hostname = "WIN-000?"
        backend = "cb-b"
        [tenants.ordered.routing]
        order = ["cb-b", "cb-a"]
        [tenants.fallback.routing]
        default = "cb-a"
        [[tenants.grouped.routing.rules]]
        group = "1"
        backend = "cb-b"
        "#,
        )
        .start()
        .await;

    // Known to both, no rule: refused, naming both, never a guess.
    let plain = run(&gw, "plain", "WIN-0001").await;
    assert_eq!(plain["status"], "failed", "{plain:#}");
    let error = &plain["runs"][0]["error"];
    assert_eq!(error["code"], "device_ambiguous", "{error}");
    let message = error["message"].as_str().unwrap();
    assert!(message.contains("cb-a") && message.contains("cb-b"), "{message}");

    // A hostname pattern routes without asking (the first rule does not match).
    let pattern = run(&gw, "pattern", "win-0002").await;
    assert_eq!(pattern["status"], "succeeded", "{pattern:#}");
    assert_eq!(backend_of(&pattern), "cb-b");
    assert_eq!(pattern["runs"][0]["hostname"], "WIN-0002");

    // Precedence: the first backend of `order` that knows the hostname.
    let ordered = run(&gw, "ordered", "WIN-0003").await;
    assert_eq!(backend_of(&ordered), "cb-b", "{ordered:#}");
    // A hostname nobody knows fails on every route.
    let unknown = run(&gw, "ordered", "NOPE-1").await;
    assert_eq!(unknown["runs"][0]["error"]["code"], "device_not_found", "{unknown:#}");

    // `default` asks one backend only.
    let fallback = run(&gw, "fallback", "WIN-0004").await;
    assert_eq!(backend_of(&fallback), "cb-a", "{fallback:#}");

    // Both know it; the group rule claims the device on cb-b (CB sensor group 1).
    let grouped = run(&gw, "grouped", "WIN-0005").await;
    assert_eq!(grouped["status"], "succeeded", "{grouped:#}");
    assert_eq!(backend_of(&grouped), "cb-b");

    // Explicit targets bypass routing.
    let explicit = gw
        .run(
            &alice("plain"),
            &json!({"targets": [{"backend": "cb-a", "device_id": "1"}], "commands": [{"type": "process_list"}]}),
        )
        .await;
    assert_eq!(explicit["status"], "succeeded", "{explicit:#}");
    assert_eq!(backend_of(&explicit), "cb-a");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_changes_routing_for_new_actions_only_and_refuses_bad_files() {
    // cb-a is slow, so an action is still running on it when the routing changes.
    let (sim_a, a) =
        spawn(Simulator::new(SimConfig { command_latency: Duration::from_millis(1500), ..fast() }))
            .await;
    let (sim_b, b) = spawn(Simulator::new(fast())).await;
    let (cb_a, cb_b) = (Backend::carbonblack(a), Backend::carbonblack(b));
    let routed_to = |default: &str| {
        Gateway::builder()
            .backend("acme", "cb-a", &cb_a)
            .backend("acme", "cb-b", &cb_b)
            .config(&format!("tenants.acme.routing.default = \"{default}\""))
    };
    let gw = routed_to("cb-a").start().await;
    let id = gw
        .submit(
            &alice("acme"),
            &json!({"targets": [{"hostname": "WIN-0001"}], "commands": [{"type": "process_list"}]}),
        )
        .await;
    // Wait until the run is on cb-a.
    for _ in 0..50 {
        let (_, now) = gw.get(&alice("acme"), &format!("/v1/actions/{id}")).await;
        if backend_of(&now) == "cb-a" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    gw.rewrite(&routed_to("cb-b"));
    let admin = operator_token("acme", "ops");
    let (status, report) = gw.post(&admin, "/v1/admin/reload", &json!({})).await;
    assert_eq!(status, StatusCode::OK, "{report}");
    // Only the routing changed: both adapters (and their sessions) are kept.
    assert_eq!(report["rebuilt"], json!([]), "{report}");
    assert_eq!(report["backends"], 2);

    let after = run(&gw, "acme", "WIN-0002").await;
    assert_eq!(backend_of(&after), "cb-b", "{after:#}");
    let before = gw.wait_terminal(&alice("acme"), &id).await;
    assert_eq!(before["status"], "succeeded", "{before:#}");
    assert_eq!(backend_of(&before), "cb-a");
    assert_eq!(sim_a.counters().executed("process list"), 1);
    assert_eq!(sim_b.counters().executed("process list"), 1);

    // An invalid file is refused with every problem, and the running configuration stays.
    gw.rewrite(&Gateway::builder().backend("acme", "cb-a", &cb_a).config(
        "tenants.acme.routing.default = \"cb-z\"\ntenants.acme.routing.order = [\"cb-q\"]",
    ));
    let (status, problem) = gw.post(&admin, "/v1/admin/reload", &json!({})).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{problem}");
    let detail = problem["detail"].as_str().unwrap();
    for expected in
        ["tenants.acme.routing.default", "tenants.acme.routing.order[0]", "exclude each other"]
    {
        assert!(detail.contains(expected), "{expected} not in {detail}");
    }
    let still = run(&gw, "acme", "WIN-0003").await;
    assert_eq!(backend_of(&still), "cb-b", "{still:#}");

    // Reloading needs the operator permission: a tenant's admin does not have it.
    let (status, problem) = gw.post(&token_as("acme", "bob"), "/v1/admin/reload", &json!({})).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{problem}");

    // Both reloads are in the audit trail.
    let (_, audit) = gw.get(&admin, "/v1/audit?event=config.reload").await;
    let outcomes: Vec<&str> =
        audit["items"].as_array().unwrap().iter().map(|e| e["outcome"].as_str().unwrap()).collect();
    assert_eq!(outcomes, ["refused", "refused", "ok"], "{audit:#}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_records_who_what_from_where_and_the_outcome() {
    let (_sim, addr) =
        spawn(Simulator::new(SimConfig { command_latency: Duration::from_millis(300), ..fast() }))
            .await;
    // 127.0.0.2 is the reverse proxy; requests from 127.0.0.1 come straight from a client.
    let gw = Gateway::builder()
        .config("server.trusted_proxies = [\"127.0.0.2/32\"]")
        .backend("acme", "cb", &Backend::carbonblack(addr))
        .start()
        .await;
    let via = |local: &str| {
        reqwest::Client::builder().local_address(local.parse::<IpAddr>().unwrap()).build().unwrap()
    };
    let body = json!({
        "targets": [{"hostname": "WIN-0001"}],
        "commands": [{"type": "kill_process", "pid": 3012}],
        "comment": "IR-1234"
    });

    // Through the proxy: the forwarded client address is believed.
    let response = via("127.0.0.2")
        .post(gw.url("/v1/actions"))
        .bearer_auth(alice("acme"))
        .header("x-forwarded-for", "198.51.100.7")
        .header("x-request-id", "req-proxy-1")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    let proxied: Value = response.json().await.unwrap();
    // Straight from a client: a spoofed header is ignored.
    let response = via("127.0.0.1")
        .post(gw.url("/v1/actions"))
        .bearer_auth(token_as("acme", "mallory"))
        .header("x-forwarded-for", "6.6.6.6")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    let direct: Value = response.json().await.unwrap();
    let cancel = format!("/v1/actions/{}/cancel", direct["id"].as_str().unwrap());
    let (status, _) = gw.post(&token_as("acme", "mallory"), &cancel, &json!({})).await;
    assert_eq!(status, StatusCode::OK);
    // A refused submission is recorded too.
    let (status, _) = gw
        .post(
            &alice("acme"),
            "/v1/actions",
            &json!({"targets": [], "commands": [{"type": "process_list"}]}),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    gw.wait_terminal(&alice("acme"), proxied["id"].as_str().unwrap()).await;

    let admin = token_as("acme", "ops");
    let (status, audit) = gw.get(&admin, "/v1/audit").await;
    assert_eq!(status, StatusCode::OK, "{audit}");
    let items = audit["items"].as_array().unwrap();
    assert_eq!(items.len(), 4, "{audit:#}");
    let [refused, cancelled, spoofed, proxied_entry] = items.as_slice() else { unreachable!() };
    assert_eq!(proxied_entry["event"], "action.submit");
    assert_eq!(proxied_entry["subject"], "alice");
    assert_eq!(proxied_entry["source"], "198.51.100.7");
    assert_eq!(proxied_entry["request_id"], "req-proxy-1");
    assert_eq!(proxied_entry["action_id"], proxied["id"]);
    assert_eq!(proxied_entry["outcome"], "accepted");
    assert_eq!(proxied_entry["action_status"], "succeeded");
    assert_eq!(proxied_entry["commands"][0], json!({"type": "kill_process", "pid": 3012}));
    assert_eq!(proxied_entry["targets"][0]["hostname"], "WIN-0001");
    assert_eq!(spoofed["source"], "127.0.0.1", "{spoofed}");
    assert_eq!(spoofed["subject"], "mallory");
    assert_eq!(cancelled["event"], "action.cancel");
    assert_eq!(cancelled["action_id"], direct["id"]);
    assert_eq!(refused["outcome"], "refused");
    assert_eq!(refused["error_code"], "invalid_request");
    assert_eq!(refused["http_status"], 400);

    // Paging with the cursor, and filters.
    let (_, page) = gw.get(&admin, "/v1/audit?limit=3").await;
    let cursor = page["next_cursor"].as_str().unwrap();
    let (_, rest) = gw.get(&admin, &format!("/v1/audit?limit=3&cursor={cursor}")).await;
    assert_eq!(rest["items"].as_array().unwrap().len(), 1);
    assert_eq!(rest["items"][0]["id"], proxied_entry["id"]);
    let (_, mine) = gw.get(&admin, "/v1/audit?subject=mallory&event=action.cancel").await;
    assert_eq!(mine["items"].as_array().unwrap().len(), 1);

    // Without the admin permission a caller reads only its own entries.
    let reader = scoped_token("acme", "alice", &[&ScopeNames::default().read]);
    let (_, own) = gw.get(&reader, "/v1/audit").await;
    let subjects: Vec<&str> =
        own["items"].as_array().unwrap().iter().map(|e| e["subject"].as_str().unwrap()).collect();
    assert_eq!(subjects, ["alice", "alice"], "{own:#}");
    let (status, _) = gw.get(&reader, "/v1/audit?subject=mallory").await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    // Another tenant sees nothing of this one.
    let (_, other) = gw.get(&token_as("globex", "ops"), "/v1/audit").await;
    assert_eq!(other["items"], json!([]), "{other}");

    // The export: every entry as JSON lines.
    let export =
        gw.request(reqwest::Method::GET, &admin, "/v1/audit?format=jsonl").send().await.unwrap();
    assert_eq!(export.headers()["content-type"], "application/x-ndjson");
    let text = export.text().await.unwrap();
    let lines: Vec<Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 4);
    assert_eq!(lines[3]["id"], proxied_entry["id"]);
}

/// Everything the gateway logs, for the secret scan.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_never_reach_logs_or_the_audit_trail() {
    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .json()
        .with_writer(move || writer.clone())
        .finish();
    // Only this test of the binary installs a subscriber.
    tracing::subscriber::set_global_default(subscriber).unwrap();

    let cb_secret = "cb-api-token-THIS-MUST-NEVER-BE-LOGGED-0042";
    let (_good, good) =
        spawn(Simulator::new(SimConfig { token: cb_secret.into(), ..fast() })).await;
    // A server that refuses the token: its failures are logged, its answers mapped.
    let (_bad, bad) =
        spawn(Simulator::new(SimConfig { token: "another-token".into(), ..fast() })).await;
    let secret_file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(secret_file.path(), format!("{cb_secret}\n")).unwrap();
    let from_file = format!(
        "kind = \"carbonblack\"\nurl = \"http://{good}\"\ntoken_file = \"{}\"",
        secret_file.path().display()
    );
    let gw = Gateway::builder()
        .backend("acme", "cb", &Backend::toml(&from_file))
        .backend(
            "acme",
            "cb-bad",
            &Backend::carbonblack(bad).with(&format!("token = \"{cb_secret}\"")),
        )
        .start()
        .await;
    let bearer = alice("acme");

    let ok = gw
        .run(&bearer, &json!({"targets": [{"backend": "cb", "device_id": "1"}], "commands": [{"type": "process_list"}]}))
        .await;
    assert_eq!(ok["status"], "succeeded");
    let refused = gw
        .run(&bearer, &json!({"targets": [{"backend": "cb-bad", "device_id": "1"}], "commands": [{"type": "process_list"}]}))
        .await;
    assert_eq!(
        refused["runs"][0]["commands"][0]["error"]["code"], "vendor_auth_failed",
        "{refused:#}"
    );
    // Bad tokens and a bad reload are logged without what they carried.
    let (status, _) = gw.get(&format!("{bearer}x"), "/v1/actions").await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let ftp = format!("kind = \"carbonblack\"\nurl = \"ftp:nope\"\ntoken = \"{cb_secret}\"");
    gw.rewrite(&Gateway::builder().backend("acme", "cb", &Backend::toml(&ftp)));
    let operator = operator_token("acme", "alice");
    let (status, problem) = gw.post(&operator, "/v1/admin/reload", &json!({})).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(!problem.to_string().contains(cb_secret), "{problem}");

    let export = gw
        .request(reqwest::Method::GET, &bearer, "/v1/audit?format=jsonl")
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(export.lines().count() >= 3, "{export}");
    let logs = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
    assert!(
        logs.contains("configuration reload") || logs.contains("action submitted"),
        "nothing was captured"
    );
    for secret in [cb_secret, SECRET, bearer.as_str(), operator.as_str()] {
        assert!(!logs.contains(secret), "a secret is in the logs");
        assert!(!export.contains(secret), "a secret is in the audit trail");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_uploads_and_downloads_are_audited() {
    let (_sim, addr) = spawn(Simulator::new(fast())).await;
    let gw = Gateway::builder().backend("acme", "cb", &Backend::carbonblack(addr)).start().await;
    let bearer = alice("acme");
    let upload = gw.upload(&bearer, "collector.ps1", "Get-Process | ConvertTo-Json").await;
    assert_eq!(upload.status(), StatusCode::CREATED);
    let location = upload.headers()["location"].to_str().unwrap().to_owned();
    let file: Value = upload.json().await.unwrap();
    assert_eq!(location, gw.url(&format!("/v1/files/{}", file["id"].as_str().unwrap())));
    let download = gw
        .http
        .get(format!("{location}/content"))
        .bearer_auth(&bearer)
        .header("range", "bytes=0-3")
        .send()
        .await
        .unwrap();
    assert_eq!(download.status(), StatusCode::PARTIAL_CONTENT);
    // Another tenant asking for it: a 404, recorded in that tenant's trail.
    let (status, _) = gw
        .get(
            &token_as("globex", "eve"),
            &format!("/v1/files/{}/content", file["id"].as_str().unwrap()),
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    let (_, audit) = gw.get(&token_as("acme", "ops"), "/v1/audit").await;
    let items = audit["items"].as_array().unwrap();
    let events: Vec<&str> = items.iter().map(|e| e["event"].as_str().unwrap()).collect();
    assert_eq!(events, ["file.download", "file.upload"], "{audit:#}");
    assert_eq!(items[0]["file_id"], file["id"]);
    assert_eq!(items[0]["http_status"], 206);
    assert_eq!(items[0]["detail"]["range"], "bytes=0-3");
    assert_eq!(items[1]["detail"]["sha256"], file["sha256"]);
    assert_eq!(items[1]["subject"], "alice");
    let (_, other) = gw.get(&token_as("globex", "ops"), "/v1/audit").await;
    assert_eq!(other["items"][0]["outcome"], "refused", "{other:#}");
    assert_eq!(other["items"][0]["error_code"], "not_found");
}
