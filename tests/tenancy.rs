//! Tenants, routing, configuration reload and the audit trail, end to end: gateways built from
//! configuration files, served on loopback like `edrgate serve`, in front of Carbon Black
//! simulators, driven only through `/v1`.

use edrgate_simkit::Sim as _;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use edrgate::app::{self, App};
use edrgate::auth::TokenSpec;
use edrgate::config::Config;
use edrgate::config::ScopeNames;
use edrgate_carbonblack_sim::{DEFAULT_TOKEN, SimConfig, Simulator};
use reqwest::StatusCode;
use serde_json::{Value, json};

const SECRET: &str = "tenancy-secret-0123456789abcdef0123456789abcdef";

/// A gateway served from a configuration file, as `edrgate serve --config FILE` runs it.
struct Gateway {
    base: String,
    http: reqwest::Client,
    config_file: PathBuf,
    _dir: tempfile::TempDir,
    stop: tokio_util::sync::CancellationToken,
}

impl Gateway {
    /// `tenants` is the TOML of the `[tenants…]` tables; `server` extra `[server]` settings.
    async fn start(server: &str, tenants: &str) -> Gateway {
        let dir = tempfile::tempdir().unwrap();
        let config_file = dir.path().join("edrgate.toml");
        std::fs::write(&config_file, config_text(dir.path(), server, tenants)).unwrap();
        let config = Config::load(&config_file).unwrap();
        let app = App::build(config).await.unwrap();
        app.reloader.watch_file(config_file.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let stop = tokio_util::sync::CancellationToken::new();
        let signal = stop.clone();
        tokio::spawn(async move {
            app::serve(listener, app, async move { signal.cancelled().await }).await.unwrap();
        });
        Gateway {
            base,
            http: reqwest::Client::builder().build().unwrap(),
            config_file,
            _dir: dir,
            stop,
        }
    }

    fn rewrite(&self, server: &str, tenants: &str) {
        let dir = self.config_file.parent().unwrap();
        std::fs::write(&self.config_file, config_text(dir, server, tenants)).unwrap();
    }

    async fn call(
        &self,
        method: reqwest::Method,
        token: &str,
        path: &str,
        body: Option<&Value>,
    ) -> (StatusCode, Value) {
        let mut request =
            self.http.request(method, format!("{}{path}", self.base)).bearer_auth(token);
        if let Some(body) = body {
            request = request.json(body);
        }
        let response = request.send().await.unwrap();
        let status = response.status();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    async fn submit(&self, tenant: &str, body: Value) -> Value {
        let (status, action) = self
            .call(reqwest::Method::POST, &token(tenant, "alice"), "/v1/actions", Some(&body))
            .await;
        assert_eq!(status, StatusCode::ACCEPTED, "{action}");
        action
    }

    async fn finished(&self, tenant: &str, action: &Value) -> Value {
        let id = action["id"].as_str().unwrap();
        for _ in 0..120 {
            let (status, a) = self
                .call(
                    reqwest::Method::GET,
                    &token(tenant, "alice"),
                    &format!("/v1/actions/{id}?wait=5"),
                    None,
                )
                .await;
            assert_eq!(status, StatusCode::OK, "{a}");
            if !["queued", "dispatched", "running"].contains(&a["status"].as_str().unwrap()) {
                return a;
            }
        }
        panic!("action {id} did not finish");
    }

    async fn run(&self, tenant: &str, hostname: &str) -> Value {
        let action = self
            .submit(
                tenant,
                json!({"targets": [{"hostname": hostname}], "commands": [{"type": "process_list"}]}),
            )
            .await;
        self.finished(tenant, &action).await
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

fn config_text(dir: &Path, server: &str, tenants: &str) -> String {
    let d = dir.display();
    format!(
        r#"
        [server]
        {server}
        [store]
        path = "{d}/edrgate.db"
        [files]
        dir = "{d}/files"
        [auth]
        allow_hs256 = true
        hs256_secret = "{SECRET}"
        {tenants}
        "#
    )
}

/// A token with every permission.
fn token(tenant: &str, subject: &str) -> String {
    edrgate::auth::mint(SECRET.as_bytes(), tenant, subject, Duration::from_secs(600)).unwrap()
}

/// A token with only the given scopes.
fn scoped_token(tenant: &str, subject: &str, scopes: &[&str]) -> String {
    let spec = TokenSpec {
        scopes: scopes.iter().map(|s| (*s).to_owned()).collect(),
        ..TokenSpec::dev(SECRET.as_bytes())
    };
    edrgate::auth::mint_with(&spec, tenant, subject, Duration::from_secs(600)).unwrap()
}

async fn sim(cfg: SimConfig) -> (Simulator, String) {
    let sim = Simulator::new(cfg);
    let addr = sim.spawn().await.unwrap();
    (sim, format!("http://{addr}"))
}

fn fast() -> SimConfig {
    SimConfig {
        sensors: 5,
        checkin_delay: Duration::from_millis(20),
        command_latency: Duration::from_millis(5),
        ..SimConfig::default()
    }
}

fn backend(tenant: &str, name: &str, url: &str) -> String {
    format!(
        "[tenants.{tenant}.backends.{name}]\nkind = \"carbonblack\"\nurl = \"{url}\"\ntoken = \"{DEFAULT_TOKEN}\"\n"
    )
}

fn backend_of(action: &Value) -> &str {
    action["runs"][0]["backend"].as_str().unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_tenant_routes_the_same_hostname_to_its_own_backend() {
    let (sim_a, url_a) = sim(fast()).await;
    let (sim_b, url_b) = sim(fast()).await;
    let tenants =
        format!("{}{}", backend("acme", "cb-acme", &url_a), backend("globex", "cb-globex", &url_b));
    let gw = Gateway::start("", &tenants).await;

    let acme = gw.run("acme", "WIN-0001").await;
    assert_eq!(acme["status"], "succeeded", "{acme:#}");
    assert_eq!(backend_of(&acme), "cb-acme");
    assert_eq!(sim_a.counters().executed("process list"), 1);
    assert_eq!(sim_b.counters().executed("process list"), 0);

    let globex = gw.run("globex", "WIN-0001").await;
    assert_eq!(globex["status"], "succeeded", "{globex:#}");
    assert_eq!(backend_of(&globex), "cb-globex");
    assert_eq!(sim_a.counters().executed("process list"), 1);
    assert_eq!(sim_b.counters().executed("process list"), 1);

    // Neither tenant sees the other's devices or actions.
    let (_, devices) =
        gw.call(reqwest::Method::GET, &token("acme", "alice"), "/v1/devices", None).await;
    let backends: Vec<&str> = devices["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["backend"].as_str().unwrap())
        .collect();
    assert!(backends.iter().all(|b| *b == "cb-acme"), "{backends:?}");
    let path = format!("/v1/actions/{}", globex["id"].as_str().unwrap());
    let (status, _) = gw.call(reqwest::Method::GET, &token("acme", "alice"), &path, None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routing_rules_order_default_and_ambiguity() {
    // Two servers that both know WIN-0001 … WIN-0005.
    let (_sim_a, a) = sim(fast()).await;
    let (_sim_b, b) = sim(fast()).await;
    let mut tenants = String::new();
    for tenant in ["plain", "pattern", "ordered", "fallback", "grouped"] {
        tenants.push_str(&backend(tenant, "cb-a", &a));
        tenants.push_str(&backend(tenant, "cb-b", &b));
    }
    tenants.push_str(
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
    );
    let gw = Gateway::start("", &tenants).await;

    // Known to both, no rule: refused, naming both, never a guess.
    let plain = gw.run("plain", "WIN-0001").await;
    assert_eq!(plain["status"], "failed", "{plain:#}");
    let error = &plain["runs"][0]["error"];
    assert_eq!(error["code"], "device_ambiguous", "{error}");
    let message = error["message"].as_str().unwrap();
    assert!(message.contains("cb-a") && message.contains("cb-b"), "{message}");

    // A hostname pattern routes without asking (the first rule does not match).
    let pattern = gw.run("pattern", "win-0002").await;
    assert_eq!(pattern["status"], "succeeded", "{pattern:#}");
    assert_eq!(backend_of(&pattern), "cb-b");
    assert_eq!(pattern["runs"][0]["hostname"], "WIN-0002");

    // Precedence: the first backend of `order` that knows the hostname.
    let ordered = gw.run("ordered", "WIN-0003").await;
    assert_eq!(backend_of(&ordered), "cb-b", "{ordered:#}");
    // A hostname nobody knows fails on every route.
    let unknown = gw.run("ordered", "NOPE-1").await;
    assert_eq!(unknown["runs"][0]["error"]["code"], "device_not_found", "{unknown:#}");

    // `default` asks one backend only.
    let fallback = gw.run("fallback", "WIN-0004").await;
    assert_eq!(backend_of(&fallback), "cb-a", "{fallback:#}");

    // Both know it; the group rule claims the device on cb-b (CB sensor group 1).
    let grouped = gw.run("grouped", "WIN-0005").await;
    assert_eq!(grouped["status"], "succeeded", "{grouped:#}");
    assert_eq!(backend_of(&grouped), "cb-b");

    // Explicit targets bypass routing.
    let action = gw
        .submit(
            "plain",
            json!({"targets": [{"backend": "cb-a", "device_id": "1"}], "commands": [{"type": "process_list"}]}),
        )
        .await;
    let explicit = gw.finished("plain", &action).await;
    assert_eq!(explicit["status"], "succeeded", "{explicit:#}");
    assert_eq!(backend_of(&explicit), "cb-a");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_changes_routing_for_new_actions_only_and_refuses_bad_files() {
    // cb-a is slow, so an action is still running on it when the routing changes.
    let (sim_a, a) =
        sim(SimConfig { command_latency: Duration::from_millis(1500), ..fast() }).await;
    let (sim_b, b) = sim(fast()).await;
    let tenants = |default: &str| {
        format!(
            "{}{}[tenants.acme.routing]\ndefault = \"{default}\"\n",
            backend("acme", "cb-a", &a),
            backend("acme", "cb-b", &b)
        )
    };
    let gw = Gateway::start("", &tenants("cb-a")).await;
    let in_flight = gw
        .submit(
            "acme",
            json!({"targets": [{"hostname": "WIN-0001"}], "commands": [{"type": "process_list"}]}),
        )
        .await;
    // Wait until the run is on cb-a.
    let id = in_flight["id"].as_str().unwrap().to_owned();
    for _ in 0..50 {
        let (_, now) = gw
            .call(reqwest::Method::GET, &token("acme", "alice"), &format!("/v1/actions/{id}"), None)
            .await;
        if backend_of(&now) == "cb-a" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    gw.rewrite("", &tenants("cb-b"));
    let admin = token("acme", "ops");
    let (status, report) = gw.call(reqwest::Method::POST, &admin, "/v1/admin/reload", None).await;
    assert_eq!(status, StatusCode::OK, "{report}");
    // Only the routing changed: both adapters (and their sessions) are kept.
    assert_eq!(report["rebuilt"], json!([]), "{report}");
    assert_eq!(report["backends"], 2);

    let after = gw.run("acme", "WIN-0002").await;
    assert_eq!(backend_of(&after), "cb-b", "{after:#}");
    let before = gw.finished("acme", &in_flight).await;
    assert_eq!(before["status"], "succeeded", "{before:#}");
    assert_eq!(backend_of(&before), "cb-a");
    assert_eq!(sim_a.counters().executed("process list"), 1);
    assert_eq!(sim_b.counters().executed("process list"), 1);

    // An invalid file is refused with every problem, and the running configuration stays.
    gw.rewrite(
        "",
        &format!(
            "{}[tenants.acme.routing]\ndefault = \"cb-z\"\norder = [\"cb-q\"]\n",
            backend("acme", "cb-a", &a)
        ),
    );
    let (status, problem) = gw.call(reqwest::Method::POST, &admin, "/v1/admin/reload", None).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{problem}");
    let detail = problem["detail"].as_str().unwrap();
    for expected in
        ["tenants.acme.routing.default", "tenants.acme.routing.order[0]", "exclude each other"]
    {
        assert!(detail.contains(expected), "{expected} not in {detail}");
    }
    let still = gw.run("acme", "WIN-0003").await;
    assert_eq!(backend_of(&still), "cb-b", "{still:#}");

    // Reloading needs the admin permission.
    let reader = scoped_token("acme", "bob", &[&ScopeNames::default().read]);
    let (status, problem) = gw.call(reqwest::Method::POST, &reader, "/v1/admin/reload", None).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{problem}");

    // Both reloads are in the audit trail.
    let (_, audit) =
        gw.call(reqwest::Method::GET, &admin, "/v1/audit?event=config.reload", None).await;
    let outcomes: Vec<&str> =
        audit["items"].as_array().unwrap().iter().map(|e| e["outcome"].as_str().unwrap()).collect();
    assert_eq!(outcomes, ["refused", "ok"], "{audit:#}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_records_who_what_from_where_and_the_outcome() {
    let (_sim, url) =
        sim(SimConfig { command_latency: Duration::from_millis(300), ..fast() }).await;
    // 127.0.0.2 is the reverse proxy; requests from 127.0.0.1 come straight from a client.
    let gw =
        Gateway::start("trusted_proxies = [\"127.0.0.2/32\"]", &backend("acme", "cb", &url)).await;
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
        .post(format!("{}/v1/actions", gw.base))
        .bearer_auth(token("acme", "alice"))
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
        .post(format!("{}/v1/actions", gw.base))
        .bearer_auth(token("acme", "mallory"))
        .header("x-forwarded-for", "6.6.6.6")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    let direct: Value = response.json().await.unwrap();
    let cancel = format!("/v1/actions/{}/cancel", direct["id"].as_str().unwrap());
    let (status, _) =
        gw.call(reqwest::Method::POST, &token("acme", "mallory"), &cancel, None).await;
    assert_eq!(status, StatusCode::OK);
    // A refused submission is recorded too.
    let (status, _) = gw
        .call(
            reqwest::Method::POST,
            &token("acme", "alice"),
            "/v1/actions",
            Some(&json!({"targets": [], "commands": [{"type": "process_list"}]})),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    gw.finished("acme", &proxied).await;

    let admin = token("acme", "ops");
    let (status, audit) = gw.call(reqwest::Method::GET, &admin, "/v1/audit", None).await;
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
    let (_, page) = gw.call(reqwest::Method::GET, &admin, "/v1/audit?limit=3", None).await;
    let cursor = page["next_cursor"].as_str().unwrap();
    let (_, rest) = gw
        .call(reqwest::Method::GET, &admin, &format!("/v1/audit?limit=3&cursor={cursor}"), None)
        .await;
    assert_eq!(rest["items"].as_array().unwrap().len(), 1);
    assert_eq!(rest["items"][0]["id"], proxied_entry["id"]);
    let (_, mine) = gw
        .call(reqwest::Method::GET, &admin, "/v1/audit?subject=mallory&event=action.cancel", None)
        .await;
    assert_eq!(mine["items"].as_array().unwrap().len(), 1);

    // Without the admin permission a caller reads only its own entries.
    let reader = scoped_token("acme", "alice", &[&ScopeNames::default().read]);
    let (_, own) = gw.call(reqwest::Method::GET, &reader, "/v1/audit", None).await;
    let subjects: Vec<&str> =
        own["items"].as_array().unwrap().iter().map(|e| e["subject"].as_str().unwrap()).collect();
    assert_eq!(subjects, ["alice", "alice"], "{own:#}");
    let (status, _) =
        gw.call(reqwest::Method::GET, &reader, "/v1/audit?subject=mallory", None).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    // Another tenant sees nothing of this one.
    let (_, other) =
        gw.call(reqwest::Method::GET, &token("globex", "ops"), "/v1/audit", None).await;
    assert_eq!(other["items"], json!([]), "{other}");

    // The export: every entry as JSON lines.
    let export = gw
        .http
        .get(format!("{}/v1/audit?format=jsonl", gw.base))
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap();
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
    let (_good, good_url) = sim(SimConfig { token: cb_secret.into(), ..fast() }).await;
    // A server that refuses the token: its failures are logged, its answers mapped.
    let (_bad, bad_url) = sim(SimConfig { token: "another-token".into(), ..fast() }).await;
    let secret_file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(secret_file.path(), format!("{cb_secret}\n")).unwrap();
    let tenants = format!(
        "[tenants.acme.backends.cb]\nkind = \"carbonblack\"\nurl = \"{good_url}\"\ntoken_file = \"{}\"\n\
         [tenants.acme.backends.cb-bad]\nkind = \"carbonblack\"\nurl = \"{bad_url}\"\ntoken = \"{cb_secret}\"\n",
        secret_file.path().display()
    );
    let gw = Gateway::start("", &tenants).await;
    let bearer = token("acme", "alice");

    let ok = gw
        .submit("acme", json!({"targets": [{"backend": "cb", "device_id": "1"}], "commands": [{"type": "process_list"}]}))
        .await;
    assert_eq!(gw.finished("acme", &ok).await["status"], "succeeded");
    let refused = gw
        .submit("acme", json!({"targets": [{"backend": "cb-bad", "device_id": "1"}], "commands": [{"type": "process_list"}]}))
        .await;
    let refused = gw.finished("acme", &refused).await;
    assert_eq!(
        refused["runs"][0]["commands"][0]["error"]["code"], "vendor_auth_failed",
        "{refused:#}"
    );
    // Bad tokens and a bad reload are logged without what they carried.
    let (status, _) =
        gw.call(reqwest::Method::GET, &format!("{bearer}x"), "/v1/actions", None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    gw.rewrite("", &format!("[tenants.acme.backends.cb]\nkind = \"carbonblack\"\nurl = \"ftp:nope\"\ntoken = \"{cb_secret}\"\n"));
    let (status, problem) = gw.call(reqwest::Method::POST, &bearer, "/v1/admin/reload", None).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(!problem.to_string().contains(cb_secret), "{problem}");

    let export = gw
        .http
        .get(format!("{}/v1/audit?format=jsonl", gw.base))
        .bearer_auth(&bearer)
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
    for secret in [cb_secret, SECRET, bearer.as_str()] {
        assert!(!logs.contains(secret), "a secret is in the logs");
        assert!(!export.contains(secret), "a secret is in the audit trail");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_uploads_and_downloads_are_audited() {
    let (_sim, url) = sim(fast()).await;
    let gw = Gateway::start("", &backend("acme", "cb", &url)).await;
    let bearer = token("acme", "alice");
    let upload = gw
        .http
        .post(format!("{}/v1/files?name=collector.ps1", gw.base))
        .bearer_auth(&bearer)
        .header("content-type", "application/octet-stream")
        .body("Get-Process | ConvertTo-Json")
        .send()
        .await
        .unwrap();
    assert_eq!(upload.status(), StatusCode::CREATED);
    let location = upload.headers()["location"].to_str().unwrap().to_owned();
    let file: Value = upload.json().await.unwrap();
    assert_eq!(location, format!("{}/v1/files/{}", gw.base, file["id"].as_str().unwrap()));
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
        .call(
            reqwest::Method::GET,
            &token("globex", "eve"),
            &format!("/v1/files/{}/content", file["id"].as_str().unwrap()),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    let (_, audit) = gw.call(reqwest::Method::GET, &token("acme", "ops"), "/v1/audit", None).await;
    let items = audit["items"].as_array().unwrap();
    let events: Vec<&str> = items.iter().map(|e| e["event"].as_str().unwrap()).collect();
    assert_eq!(events, ["file.download", "file.upload"], "{audit:#}");
    assert_eq!(items[0]["file_id"], file["id"]);
    assert_eq!(items[0]["http_status"], 206);
    assert_eq!(items[0]["detail"]["range"], "bytes=0-3");
    assert_eq!(items[1]["detail"]["sha256"], file["sha256"]);
    assert_eq!(items[1]["subject"], "alice");
    let (_, other) =
        gw.call(reqwest::Method::GET, &token("globex", "ops"), "/v1/audit", None).await;
    assert_eq!(other["items"][0]["outcome"], "refused", "{other:#}");
    assert_eq!(other["items"][0]["error_code"], "not_found");
}
