//! End to end: the gateway and the Cybereason simulator in one process, over real HTTP on
//! loopback, driven only through `/v1`.

use edrgate_simkit::Sim as _;
use std::time::Duration;

use edrgate_cybereason::simulator::{
    DEFAULT_PASSWORD, DEFAULT_TFA_USERNAME, DEFAULT_TOTP_SECRET, DEFAULT_ZIP_PASSWORD, SimConfig,
    Simulator,
};
use reqwest::StatusCode;
use serde_json::{Value, json};
use sha2::{Digest as _, Sha256};

const SECRET: &str = "e2e-secret-0123456789abcdef0123456789abcdef";

/// A running gateway with tenant `acme` and backend `cr` in front of one simulator.
struct Gateway {
    base: String,
    http: reqwest::Client,
    sim: Simulator,
    _app: edrgate::app::App,
    _dir: tempfile::TempDir,
    _server: tokio::task::JoinHandle<()>,
}

impl Gateway {
    async fn start(sim: SimConfig) -> Gateway {
        Self::start_as(sim, DEFAULT_PASSWORD).await
    }

    /// With the backend configured to log in with `password`, and optionally a Carbon Black
    /// backend `cb` beside it.
    async fn start_as(sim: SimConfig, password: &str) -> Gateway {
        Self::start_with(sim, password, None).await
    }

    async fn start_with(
        sim: SimConfig,
        password: &str,
        cb: Option<std::net::SocketAddr>,
    ) -> Gateway {
        let cb = cb.map_or_else(String::new, |addr| {
            format!(
                "[tenants.acme.backends.cb]\nkind = \"carbonblack\"\nurl = \"http://{addr}\"\ntoken = \"{}\"\n",
                edrgate_carbonblack_sim::DEFAULT_TOKEN
            )
        });
        let sim = Simulator::new(sim);
        let addr = sim.spawn().await.unwrap();
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().display();
        let text = format!(
            r#"
            [store]
            path = "{d}/edrgate.db"
            [files]
            dir = "{d}/files"
            [auth]
            allow_hs256 = true
            hs256_secret = "{SECRET}"
            [engine]
            lease_seconds = 1
            [tenants.acme.backends.cr]
            kind = "cybereason"
            url = "http://{addr}"
            username = "{DEFAULT_TFA_USERNAME}"
            password = "{password}"
            totp_secret = "{DEFAULT_TOTP_SECRET}"
            fetch_zip_password = "{DEFAULT_ZIP_PASSWORD}"
            poll_interval_ms = 20
            max_poll_interval_ms = 200
            {cb}"#
        );
        let config = edrgate::config::Config::parse(&text, |_| None).unwrap();
        let app = edrgate::app::App::build(config).await.unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let router = app.router.clone();
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, router).await;
        });
        Gateway {
            base,
            http: reqwest::Client::builder().build().unwrap(),
            sim,
            _app: app,
            _dir: dir,
            _server: server,
        }
    }

    fn token(&self) -> String {
        edrgate::auth::mint(SECRET.as_bytes(), "acme", "e2e-test", Duration::from_secs(600))
            .unwrap()
    }

    async fn post(&self, path: &str, body: &Value) -> (StatusCode, Value) {
        let r = self
            .http
            .post(format!("{}{path}", self.base))
            .bearer_auth(self.token())
            .json(body)
            .send()
            .await
            .unwrap();
        let status = r.status();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    async fn get_bytes(&self, path: &str) -> Vec<u8> {
        let r =
            self.http.get(format!("{}{path}", self.base)).bearer_auth(self.token()).send().await;
        r.unwrap().bytes().await.unwrap().to_vec()
    }

    async fn submit(&self, body: Value) -> Value {
        let (status, action) = self.post("/v1/actions", &body).await;
        assert_eq!(status, StatusCode::ACCEPTED, "{action}");
        action
    }

    async fn finished(&self, action: &Value) -> Value {
        let id = action["id"].as_str().unwrap();
        for _ in 0..60 {
            let path = format!("/v1/actions/{id}?wait=5");
            let a: Value = serde_json::from_slice(&self.get_bytes(&path).await).unwrap();
            if !["queued", "dispatched", "running"].contains(&a["status"].as_str().unwrap()) {
                return a;
            }
        }
        panic!("action {id} did not finish");
    }

    async fn run(&self, body: Value) -> Value {
        let action = self.submit(body).await;
        self.finished(&action).await
    }
}

fn sim() -> SimConfig {
    SimConfig { remediation_delay: Duration::from_millis(200), ..SimConfig::default() }
}

fn command(action: &Value, run: usize, index: usize) -> &Value {
    &action["runs"][run]["commands"][index]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_file_by_path_matches_the_endpoint_file() {
    let gw = Gateway::start(sim()).await;
    let path = "C:\\Users\\jdoe\\AppData\\Local\\Temp\\updater.exe";
    let done = gw
        .run(json!({"targets": [{"hostname": "CR-WS-0001"}],
                    "commands": [{"type": "get_file", "path": path}]}))
        .await;
    assert_eq!(done["status"], "succeeded", "{done:#}");
    let file = &command(&done, 0, 0)["result"]["file"];
    let expected = gw.sim.file_content("CR-WS-0001", path).unwrap();
    assert_eq!(file["size"], expected.len());
    assert_eq!(file["sha256"], hex::encode(Sha256::digest(&expected)));
    let content =
        gw.get_bytes(&format!("/v1/files/{}/content", file["file_id"].as_str().unwrap())).await;
    assert_eq!(content, expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_quarantine_isolate_release() {
    let gw = Gateway::start(sim()).await;
    let done = gw
        .run(json!({"targets": [{"hostname": "CR-WS-0002"}],
        "commands": [
            {"type": "kill_process", "pid": 3012},
            {"type": "delete_file", "path": "C:\\Users\\jdoe\\AppData\\Local\\Temp\\updater.exe"},
            {"type": "isolate"},
        ]}))
        .await;
    assert_eq!(done["status"], "succeeded", "{done:#}");
    assert!(!gw.sim.process_exists("CR-WS-0002", 3012));
    assert!(
        gw.sim.is_quarantined("CR-WS-0002", "C:\\Users\\jdoe\\AppData\\Local\\Temp\\updater.exe")
    );
    assert!(gw.sim.is_isolated("CR-WS-0002"));
    assert_eq!(command(&done, 0, 0)["vendor_status"], "SUCCESS");
    assert_eq!(command(&done, 0, 2)["result"], json!({"type": "containment", "isolated": true}));

    let done = gw
        .run(json!({"targets": [{"hostname": "CR-WS-0002"}], "commands": [{"type": "release"}]}))
        .await;
    assert_eq!(done["status"], "succeeded", "{done:#}");
    assert!(!gw.sim.is_isolated("CR-WS-0002"));
    let c = gw.sim.counters();
    assert_eq!(
        (c.remediations_received, c.remediations_executed, c.isolations, c.unisolations),
        (2, 2, 1, 1)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ir_tool_on_several_sensors_with_one_failing() {
    let gw = Gateway::start(SimConfig { ir_fail_hosts: vec!["CR-WS-0003".into()], ..sim() }).await;
    // The package comes from edrgate's file store and is uploaded as the tool.
    let r = gw
        .http
        .post(format!("{}/v1/files?name=triage.ps1", gw.base))
        .bearer_auth(gw.token())
        .body("Get-Process | Out-File C:\\ir\\p.txt")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    let file_id = r.json::<Value>().await.unwrap()["id"].as_str().unwrap().to_owned();
    let done = gw
        .run(json!({"targets": [{"hostname": "CR-WS-0001"}, {"hostname": "CR-WS-0002"}, {"hostname": "CR-WS-0003"}],
                    "commands": [{"type": "run_script", "script": "triage.ps1", "args": ["-Quick"], "file_id": file_id}]}))
        .await;
    assert_eq!(done["status"], "partially_succeeded", "{done:#}");
    for run in done["runs"].as_array().unwrap() {
        let c = &run["commands"][0];
        if run["hostname"] == "CR-WS-0003" {
            assert_eq!(run["status"], "failed");
            assert_eq!(c["error"]["code"], "command_failed");
            assert_eq!(c["error"]["vendor_code"], "Failed");
            assert_eq!(c["error"]["vendor_message"], "The tool exited with code 1");
        } else {
            assert_eq!(run["status"], "succeeded", "{run:#}");
            assert!(c["result"]["output"].as_str().unwrap().contains("storage bucket"));
            assert_eq!(c["vendor_status"], "Succeeded");
        }
    }
    assert_eq!(gw.sim.counters().ir_runs, 3);
    assert_eq!(gw.sim.counters().logins, 1, "three runs share one session");
    assert!(gw.sim.packages().contains(&"triage.ps1".to_owned()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cookie_expiring_mid_run_logs_in_again_and_remediates_once() {
    let gw =
        Gateway::start(SimConfig { remediation_delay: Duration::from_millis(800), ..sim() }).await;
    let action = gw
        .submit(json!({"targets": [{"hostname": "CR-WS-0001"}],
                       "commands": [{"type": "kill_process", "pid": 4242}]}))
        .await;
    while gw.sim.counters().remediations_received == 0 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    gw.sim.expire_sessions();
    let done = gw.finished(&action).await;
    assert_eq!(done["status"], "succeeded", "{done:#}");
    let c = gw.sim.counters();
    assert_eq!((c.remediations_received, c.remediations_executed), (1, 1));
    assert_eq!(c.logins, 2, "one login, one re-login");
    assert!(c.session_redirects >= 1);

    // Lost exactly on the action request: reconciled against the console, sent once.
    gw.sim.expire_session_before("/rest/remediate");
    let done = gw
        .run(json!({"targets": [{"hostname": "CR-WS-0001"}],
                    "commands": [{"type": "kill_process", "pid": 2480}]}))
        .await;
    assert_eq!(done["status"], "succeeded", "{done:#}");
    assert_eq!(gw.sim.counters().remediations_received, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_login_is_vendor_auth_failed_on_the_action() {
    let gw = Gateway::start_as(sim(), "wrong-password").await;
    let done = tokio::time::timeout(
        Duration::from_secs(30),
        gw.run(json!({"targets": [{"backend": "cr", "device_id": gw.sim.pylum_id("CR-WS-0001").unwrap()}],
                      "commands": [{"type": "isolate"}]})),
    )
    .await
    .expect("no hang");
    assert_eq!(done["status"], "failed", "{done:#}");
    let run = &done["runs"][0];
    let code = command(&done, 0, 0)["error"]["code"].as_str().or(run["error"]["code"].as_str());
    assert_eq!(code, Some("vendor_auth_failed"), "{done:#}");
    assert_eq!(gw.sim.counters().isolations, 0);
    assert!(gw.sim.counters().login_failures >= 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsupported_commands_are_refused_before_any_vendor_call() {
    let gw = Gateway::start(sim()).await;
    for command in [
        json!({"type": "process_list"}),
        json!({"type": "execute", "command_line": "cmd /c whoami"}),
        json!({"type": "list_directory", "path": "C:\\"}),
        json!({"type": "memory_dump"}),
    ] {
        let (status, problem) = gw
            .post(
                "/v1/actions",
                &json!({"targets": [{"backend": "cr", "device_id": "PYLUMCLIENT_X"}], "commands": [command]}),
            )
            .await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{problem}");
        assert_eq!(problem["code"], "unsupported_command");
    }
    let c = gw.sim.counters();
    assert_eq!((c.requests, c.logins, c.login_failures), (0, 0, 0), "{c:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_bodies_work_on_carbon_black_and_cybereason_devices() {
    use edrgate_carbonblack_sim as cb;
    let cb_sim = cb::Simulator::new(cb::SimConfig {
        sensors: 1,
        checkin_delay: Duration::from_millis(20),
        command_latency: Duration::from_millis(5),
        ..cb::SimConfig::default()
    });
    let cb_addr = cb_sim.spawn().await.unwrap();
    let gw = Gateway::start_with(sim(), DEFAULT_PASSWORD, Some(cb_addr)).await;
    // Every command both backends support, with one body for both devices.
    for commands in [
        json!([{"type": "get_file", "path": "C:\\evidence\\note.txt"}]),
        json!([{"type": "kill_process", "pid": 3012}]),
        json!([{"type": "delete_file", "path": "C:\\Users\\jdoe\\AppData\\Local\\Temp\\updater.exe"}]),
        json!([{"type": "registry_delete_key", "key": "HKLM\\SOFTWARE\\Microsoft\\Windows\\CurrentVersion\\RunOnce"}]),
        json!([{"type": "isolate"}]),
        json!([{"type": "release"}]),
    ] {
        let done = gw
            .run(json!({"targets": [{"hostname": "WIN-0001"}, {"hostname": "CR-WS-0001"}], "commands": commands}))
            .await;
        assert_eq!(done["status"], "succeeded", "{commands}: {done:#}");
        let backends: Vec<&str> = done["runs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["backend"].as_str().unwrap())
            .collect();
        assert_eq!(backends, ["cb", "cr"]);
    }
    assert!(!gw.sim.process_exists("CR-WS-0001", 3012) && !cb_sim.process_exists(1, 3012));
    let c = gw.sim.counters();
    assert_eq!((c.remediations_executed, c.isolations, c.unisolations), (3, 1, 1));
}
