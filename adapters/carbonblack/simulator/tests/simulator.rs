//! Integration tests of the Carbon Black Live Response simulator over real HTTP(S).
//!
//! Section numbers (§) refer to `shared/vendor-apis/carbonblack.md`; the fixtures in
//! `tests/fixtures/` are recordings of a real CB Response server and pin the wire shapes.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use edrgate_carbonblack_sim::{
    DEFAULT_TOKEN, Faults, NOTE_TXT, SUPPORTED_COMMANDS, SensorSpec, Sim as _, SimConfig, Simulator,
};
use futures::StreamExt;
use reqwest::StatusCode;
use serde_json::{Value, json};

const S_OK: u64 = 0;
const E_FILE_NOT_FOUND: u64 = 0x8007_0002;
const E_PATH_NOT_FOUND: u64 = 0x8007_0003;
const E_ACCESS_DENIED: u64 = 0x8007_0005;
const E_FILE_EXISTS: u64 = 0x8007_0050;
const E_INVALID_PARAMETER: u64 = 0x8007_0057;
const E_ALREADY_EXISTS: u64 = 0x8007_00B7;

/// Fast timings so the suite runs in seconds.
fn fast() -> SimConfig {
    SimConfig {
        checkin_delay: Duration::from_millis(20),
        command_latency: Duration::from_millis(5),
        memdump_duration: Duration::from_millis(400),
        ..SimConfig::default()
    }
}

struct Harness {
    sim: Simulator,
    base: String,
    http: reqwest::Client,
}

impl Harness {
    async fn start(cfg: SimConfig) -> Self {
        let sim = Simulator::new(cfg);
        let addr = sim.spawn().await.expect("bind simulator");
        Self {
            sim,
            base: format!("http://{addr}"),
            http: reqwest::Client::builder().build().expect("client"),
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    fn req(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        self.http.request(method, self.url(path)).header("X-Auth-Token", DEFAULT_TOKEN)
    }

    async fn get(&self, path: &str) -> reqwest::Response {
        self.req(reqwest::Method::GET, path).send().await.expect("GET")
    }

    async fn get_json(&self, path: &str) -> Value {
        let resp = self.get(path).await;
        assert_eq!(resp.status(), StatusCode::OK, "GET {path}");
        resp.json().await.expect("json body")
    }

    async fn send_json(
        &self,
        method: reqwest::Method,
        path: &str,
        body: &Value,
    ) -> (StatusCode, String) {
        let resp = self.req(method, path).json(body).send().await.expect("send");
        let status = resp.status();
        (status, resp.text().await.expect("body"))
    }

    async fn post_ok(&self, path: &str, body: &Value) -> Value {
        let (status, text) = self.send_json(reqwest::Method::POST, path, body).await;
        assert_eq!(status, StatusCode::OK, "POST {path}: {text}");
        serde_json::from_str(&text).expect("json")
    }

    async fn put_ok(&self, path: &str, body: &Value) -> Value {
        let (status, text) = self.send_json(reqwest::Method::PUT, path, body).await;
        assert_eq!(status, StatusCode::OK, "PUT {path}: {text}");
        serde_json::from_str(&text).expect("json")
    }

    async fn create_session(&self, sensor: u64) -> u64 {
        let v = self.post_ok("/api/v1/cblr/session", &json!({"sensor_id": sensor})).await;
        assert_eq!(v["status"], "pending");
        v["id"].as_u64().expect("session id")
    }

    /// Poll like cbapi (§5.2) until the session is active.
    async fn wait_active(&self, sid: u64) -> Value {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let v = self.get_json(&format!("/api/v1/cblr/session/{sid}")).await;
            if v["status"] == "active" {
                return v;
            }
            assert!(Instant::now() < deadline, "session {sid} never became active");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    async fn active_session(&self, sensor: u64) -> u64 {
        let sid = self.create_session(sensor).await;
        self.wait_active(sid).await;
        sid
    }

    async fn post_command(&self, sid: u64, body: Value) -> Value {
        let mut body = body;
        body["session_id"] = json!(sid);
        self.post_ok(&format!("/api/v1/cblr/session/{sid}/command"), &body).await
    }

    /// POST a command and long-poll it to a final status (§2.8 `?wait=true`).
    async fn run(&self, sid: u64, body: Value) -> Value {
        let posted = self.post_command(sid, body).await;
        let cid = posted["id"].as_u64().expect("command id");
        let v = self.get_json(&format!("/api/v1/cblr/session/{sid}/command/{cid}?wait=true")).await;
        assert!(v["status"] == "complete" || v["status"] == "error", "not final: {v}");
        v
    }

    async fn run_ok(&self, sid: u64, body: Value) -> Value {
        let v = self.run(sid, body).await;
        assert_eq!(v["status"], "complete", "{v}");
        assert_eq!(v["result_code"], S_OK);
        assert_eq!(v["result_type"], "WinHresult");
        assert_eq!(v["result_desc"], "");
        v
    }

    async fn run_err(&self, sid: u64, body: Value, code: u64) -> Value {
        let v = self.run(sid, body).await;
        assert_eq!(v["status"], "error", "{v}");
        assert_eq!(v["result_type"], "WinHresult");
        assert_eq!(v["result_code"], code, "{v}");
        assert!(v["result_desc"].as_str().is_some_and(|d| !d.is_empty()));
        v
    }

    async fn content(&self, sid: u64, fid: u64) -> Vec<u8> {
        let resp = self.get(&format!("/api/v1/cblr/session/{sid}/file/{fid}/content")).await;
        assert_eq!(resp.status(), StatusCode::OK);
        resp.bytes().await.expect("content").to_vec()
    }

    async fn get_file(&self, sid: u64, path: &str) -> Vec<u8> {
        let v = self.run_ok(sid, json!({"name": "get file", "object": path})).await;
        let fid = v["file_id"].as_u64().expect("file_id");
        self.content(sid, fid).await
    }

    async fn upload(&self, sid: u64, name: &str, data: Vec<u8>) -> Value {
        let part = reqwest::multipart::Part::bytes(data).file_name(name.to_owned());
        let form = reqwest::multipart::Form::new().part("file", part);
        let resp = self
            .req(reqwest::Method::POST, &format!("/api/v1/cblr/session/{sid}/file"))
            .multipart(form)
            .send()
            .await
            .expect("upload");
        assert_eq!(resp.status(), StatusCode::OK);
        resp.json().await.expect("json")
    }
}

fn keys(v: &Value) -> BTreeSet<String> {
    v.as_object().map(|o| o.keys().cloned().collect()).unwrap_or_default()
}

fn fixture(name: &str) -> Value {
    let path = format!("{}/../tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let v: Value = serde_json::from_str(&text).expect("fixture json");
    assert!(v.get("provenance").is_some(), "{name} lost its provenance");
    v["body"].clone()
}

// ----- server, auth, sensors -------------------------------------------------------------

#[tokio::test]
async fn auth_is_required_everywhere() {
    let h = Harness::start(fast()).await;
    let resp = h.http.get(h.url("/api/info")).send().await.expect("send");
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    let resp = h
        .http
        .get(h.url("/api/v1/cblr/session"))
        .header("X-Auth-Token", "wrong")
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    let info = h.get_json("/api/info").await;
    assert_eq!(info["cblrEnabled"], true);
    assert!(info["version"].as_str().is_some_and(|v| v.starts_with("6.")));
    let c = h.sim.counters();
    assert_eq!(c.unauthorized, 2);
    assert_eq!(c.requests, 3);
}

/// cbapi 2.x lists the event partitions when it connects to a 6.x server and fails on a 404.
#[tokio::test]
async fn event_partitions_answer_as_cbapi_expects() {
    let h = Harness::start(fast()).await;
    let partitions = h.get_json("/api/v1/storage/events/partition").await;
    let writer = &partitions["writer"];
    assert_eq!(writer["name"], "writer");
    assert_eq!(writer["info"]["isLegacy"], false);
}

#[tokio::test]
async fn live_response_disabled_is_412_on_every_cblr_route() {
    let h = Harness::start(SimConfig { live_response_enabled: false, ..fast() }).await;
    assert_eq!(h.get_json("/api/info").await["cblrEnabled"], false);
    for path in [
        "/api/v1/cblr/session",
        "/api/v1/cblr/session/1",
        "/api/v1/cblr/session/1/command/1",
        "/api/v1/cblr/session/1/file/1/content",
    ] {
        assert_eq!(h.get(path).await.status(), StatusCode::PRECONDITION_FAILED, "{path}");
    }
    let (status, _) =
        h.send_json(reqwest::Method::POST, "/api/v1/cblr/session", &json!({"sensor_id": 1})).await;
    assert_eq!(status, StatusCode::PRECONDITION_FAILED);
    // Sensor routes are not part of live response.
    assert_eq!(h.get("/api/v1/sensor/1").await.status(), StatusCode::OK);
    h.sim.set_live_response_enabled(true);
    assert_eq!(h.get("/api/v1/cblr/session").await.status(), StatusCode::OK);
    assert_eq!(h.sim.counters().sessions_created, 0);
}

#[tokio::test]
async fn sensor_lookup_v1_v2_and_ambiguous_hostnames() {
    let h = Harness::start(SimConfig {
        sensors: 4,
        hostname_overrides: vec![(3, "WIN-0001".into())],
        offline_sensors: vec![4],
        ..fast()
    })
    .await;
    let s1 = h.get_json("/api/v1/sensor/1").await;
    assert_eq!(s1["id"], 1);
    assert_eq!(s1["computer_name"], "WIN-0001");
    assert_eq!(s1["status"], "Online");
    assert_eq!(s1["supports_cblr"], true);
    assert_eq!(s1["os_type"], 1);
    assert!(s1["num_storefiles_bytes"].is_string());
    assert!(s1["num_eventlog_bytes"].is_string());
    assert!(s1["next_checkin_time"].is_string());
    assert_eq!(h.get_json("/api/v1/sensor/4").await["status"], "Offline");
    assert_eq!(h.get("/api/v1/sensor/99").await.status(), StatusCode::NOT_FOUND);

    // §7.4: case-sensitive substring; two records share WIN-0001.
    let found = h.get_json("/api/v1/sensor?hostname=WIN-0001").await;
    let ids: Vec<u64> =
        found.as_array().expect("array").iter().filter_map(|s| s["id"].as_u64()).collect();
    assert_eq!(ids, vec![1, 3]);
    assert_eq!(
        h.get_json("/api/v1/sensor?hostname=WIN-000").await.as_array().map(Vec::len),
        Some(4)
    );
    let none = h.get("/api/v1/sensor?hostname=win-0001").await;
    assert_eq!(none.status(), StatusCode::NO_CONTENT);
    assert!(none.bytes().await.expect("body").is_empty());

    let v2 = h
        .get_json("/api/v2/sensor?hostname=WIN&start=1&rows=2&sort.col=computer_name&sort.dir=asc")
        .await;
    assert_eq!(v2["total_results"], 4);
    let names: Vec<&str> = v2["results"]
        .as_array()
        .expect("results")
        .iter()
        .filter_map(|s| s["computer_name"].as_str())
        .collect();
    assert_eq!(names, vec!["WIN-0001", "WIN-0002"]);
}

#[tokio::test]
async fn isolation_via_sensor_put() {
    let h = Harness::start(fast()).await;
    let mut sensor = h.get_json("/api/v1/sensor/2").await;
    assert_eq!(sensor["network_isolation_enabled"], false);
    // cbapi Sensor.isolate(): change the field and PUT the whole object back.
    sensor["network_isolation_enabled"] = json!(true);
    let v = h.put_ok("/api/v1/sensor/2", &sensor).await;
    assert_eq!(v["network_isolation_enabled"], true);
    assert!(h.sim.is_isolated(2));
    assert!(!h.sim.is_isolated(1));
    // The sensor applies it at its next check-in.
    tokio::time::sleep(Duration::from_millis(60)).await;
    let v = h.get_json("/api/v1/sensor/2").await;
    assert_eq!(v["is_isolating"], true);
    // Repeating the same request is not a new change; a partial body is enough.
    h.put_ok("/api/v1/sensor/2", &json!({"network_isolation_enabled": true})).await;
    h.put_ok("/api/v1/sensor/2", &json!({"network_isolation_enabled": false})).await;
    assert!(!h.sim.is_isolated(2));
    assert_eq!(h.sim.counters().isolation_changes, 2);
}

// ----- session lifecycle -----------------------------------------------------------------

#[tokio::test]
async fn session_lifecycle_and_close_shapes() {
    let h = Harness::start(fast()).await;
    let created = h.post_ok("/api/v1/cblr/session", &json!({"sensor_id": 1})).await;
    assert_eq!(created["status"], "pending");
    assert_eq!(created["supported_commands"], json!([]));
    assert_eq!(created["drives"], json!([]));
    assert_eq!(created["address"], Value::Null);
    assert_eq!(created["hostname"], "WIN-0001");
    let sid = created["id"].as_u64().expect("id");

    let active = h.wait_active(sid).await;
    assert_eq!(active["supported_commands"], json!(SUPPORTED_COMMANDS));
    assert_eq!(active["drives"], json!(["A:\\", "C:\\", "D:\\"]));
    assert_eq!(active["current_working_directory"], "C:\\Windows\\CarbonBlack");
    assert_eq!(active["session_timeout"], 300);
    assert_eq!(active["sensor_wait_timeout"], 120);
    assert_eq!(active["check_in_timeout"], 1200);
    assert_eq!(active["storage_ttl"], 7);

    // Keepalive on an active session.
    assert_eq!(
        h.get_json(&format!("/api/v1/cblr/session/{sid}/keepalive")).await["status"],
        "active"
    );

    // §2.4: cbapi PUTs the whole object back with status close.
    let mut full = active.clone();
    full["status"] = json!("close");
    let closed = h.put_ok(&format!("/api/v1/cblr/session/{sid}"), &full).await;
    assert_eq!(closed["status"], "close");
    let resp = h.get(&format!("/api/v1/cblr/session/{sid}")).await;
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
    assert!(resp.text().await.expect("text").starts_with(&format!("Session {sid} not found")));
    let resp = h.get(&format!("/api/v1/cblr/session/{sid}/keepalive")).await;
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
    let (status, text) = h
        .send_json(
            reqwest::Method::POST,
            &format!("/api/v1/cblr/session/{sid}/command"),
            &json!({"name": "process list"}),
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(text.starts_with("Session"));

    // CLI0's minimal body and XSOAR's `session_id` body.
    let s2 = h.active_session(2).await;
    h.put_ok(&format!("/api/v1/cblr/session/{s2}"), &json!({"id": s2, "status": "close"})).await;
    let s3 = h.active_session(3).await;
    // A PUT without status close changes nothing.
    let same = h
        .put_ok(
            &format!("/api/v1/cblr/session/{s3}"),
            &json!({"session_id": s3, "status": "active"}),
        )
        .await;
    assert_eq!(same["status"], "active");
    h.put_ok(&format!("/api/v1/cblr/session/{s3}"), &json!({"session_id": s3, "status": "close"}))
        .await;

    let list = h.get_json("/api/v1/cblr/session").await;
    let statuses: Vec<&str> =
        list.as_array().expect("array").iter().filter_map(|s| s["status"].as_str()).collect();
    assert_eq!(statuses, vec!["close", "close", "close"]);
    assert!(list[0]["close_time"].is_f64());
    let live = h.get_json("/api/v1/cblr/session?active_only=true").await;
    assert_eq!(live, json!([]));
    let c = h.sim.counters();
    assert_eq!(c.sessions_created, 3);
    assert_eq!(c.sessions_closed, 3);
    assert_eq!(c.slots_in_use, 0);

    // Unknown sensor / malformed body.
    let (status, _) =
        h.send_json(reqwest::Method::POST, "/api/v1/cblr/session", &json!({"sensor_id": 77})).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = h.send_json(reqwest::Method::POST, "/api/v1/cblr/session", &json!({})).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn slot_limit_keeps_the_eleventh_session_pending() {
    let h = Harness::start(SimConfig { sensors: 11, ..fast() }).await;
    let mut sids = Vec::new();
    for sensor in 1..=11 {
        sids.push(h.create_session(sensor).await);
    }
    for sid in &sids[..10] {
        h.wait_active(*sid).await;
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let eleventh = sids[10];
    let v = h.get_json(&format!("/api/v1/cblr/session/{eleventh}")).await;
    assert_eq!(v["status"], "pending");
    assert_eq!(v["supported_commands"], json!([]));
    assert_eq!(h.sim.counters().slots_in_use, 10);
    // cbapi's reuse query sees pending sessions too.
    let live = h.get_json("/api/v1/cblr/session?active_only=true").await;
    assert_eq!(live.as_array().map(Vec::len), Some(11));

    h.put_ok(
        &format!("/api/v1/cblr/session/{}", sids[0]),
        &json!({"id": sids[0], "status": "close"}),
    )
    .await;
    h.wait_active(eleventh).await;
    assert_eq!(h.sim.max_concurrent_sessions(), 10);
    assert_eq!(h.sim.counters().slots_in_use, 10);
}

#[tokio::test]
async fn idle_sessions_expire_unless_kept_alive() {
    let h =
        Harness::start(SimConfig { session_timeout: Duration::from_millis(600), ..fast() }).await;
    let idle = h.active_session(1).await;
    let kept = h.active_session(2).await;
    for _ in 0..10 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        h.get_json(&format!("/api/v1/cblr/session/{kept}/keepalive")).await;
    }
    let resp = h.get(&format!("/api/v1/cblr/session/{idle}")).await;
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
    assert_eq!(resp.text().await.expect("text"), format!("Session {idle} not found"));
    let list = h.get_json("/api/v1/cblr/session").await;
    assert_eq!(list[0]["status"], "timeout");
    assert_eq!(list[1]["status"], "active");
    assert_eq!(h.sim.session_status(idle).as_deref(), Some("timeout"));
    let c = h.sim.counters();
    assert_eq!(c.sessions_timed_out, 1);
    assert_eq!(c.keepalives, 10);
}

#[tokio::test]
async fn offline_sensor_session_stays_pending_until_online() {
    let h = Harness::start(SimConfig { offline_sensors: vec![2], ..fast() }).await;
    let sid = h.create_session(2).await;
    tokio::time::sleep(Duration::from_millis(150)).await;
    assert_eq!(h.get_json(&format!("/api/v1/cblr/session/{sid}")).await["status"], "pending");
    // Posting to a pending session is refused.
    let (status, text) = h
        .send_json(
            reqwest::Method::POST,
            &format!("/api/v1/cblr/session/{sid}/command"),
            &json!({"name": "process list"}),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(text.starts_with("Session"));
    h.sim.set_sensor_online(2, true);
    h.wait_active(sid).await;
}

#[tokio::test]
async fn create_with_wait_blocks_until_active() {
    let h = Harness::start(SimConfig { checkin_delay: Duration::from_millis(150), ..fast() }).await;
    let started = Instant::now();
    let v = h.post_ok("/api/v1/cblr/session?wait=true", &json!({"sensor_id": 1})).await;
    assert_eq!(v["status"], "active");
    assert!(started.elapsed() >= Duration::from_millis(150));
}

// ----- commands --------------------------------------------------------------------------

#[tokio::test]
async fn process_list_and_kill() {
    let h = Harness::start(fast()).await;
    let sid = h.active_session(3).await;
    let v = h.run_ok(sid, json!({"name": "process list"})).await;
    let procs = v["processes"].as_array().expect("processes");
    assert!(procs.len() >= 15);
    let system = &procs[0];
    assert_eq!(system["pid"], 4);
    assert_eq!(system["path"], "");
    assert_eq!(system["sid"], "s-1-5-18");
    assert_eq!(system["username"], "NT AUTHORITY\\SYSTEM");
    assert_eq!(system["parent_guid"], "00000003-0000-0000-0000-000000000000");
    assert!(system["proc_guid"].as_str().is_some_and(|g| g.starts_with("00000003-0000-0004-")));
    let by_pid = |pid: u64| procs.iter().find(|p| p["pid"] == pid);
    let smss = by_pid(340).expect("smss");
    assert_eq!(smss["parent_guid"], system["proc_guid"]);
    let updater = procs
        .iter()
        .find(|p| p["path"].as_str().is_some_and(|path| path.ends_with("updater.exe")))
        .expect("updater");
    let pid = updater["pid"].as_u64().expect("pid");
    assert!(h.sim.process_exists(3, pid));
    assert!(
        procs
            .iter()
            .all(|p| p["path"].as_str() == p["path"].as_str().map(str::to_lowercase).as_deref())
    );

    // cbapi sends the pid as an int.
    h.run_ok(sid, json!({"name": "kill", "object": pid})).await;
    assert!(!h.sim.process_exists(3, pid));
    // Killing it again: ERROR_INVALID_PARAMETER, as in the cbapi docstring (§4.4).
    let err = h
        .run_err(sid, json!({"name": "kill", "object": pid.to_string()}), E_INVALID_PARAMETER)
        .await;
    assert_eq!(err["result_code"], 2_147_942_487u64);
    h.run_err(sid, json!({"name": "kill", "object": 4}), E_ACCESS_DENIED).await;
    let c = h.sim.counters();
    assert_eq!(c.executed("kill"), 3);
    assert_eq!(c.command_errors_by_name.get("kill"), Some(&2));
    assert_eq!(c.executed("process list"), 1);
}

#[tokio::test]
async fn get_file_small_missing_denied_and_partial() {
    let h = Harness::start(SimConfig { file_size: 3 * 1024 * 1024 + 17, ..fast() }).await;
    let sid = h.active_session(1).await;
    // REC: the POST response already carries file_id.
    let posted =
        h.post_command(sid, json!({"name": "get file", "object": "C:\\evidence\\note.txt"})).await;
    assert_eq!(posted["status"], "pending");
    let fid = posted["file_id"].as_u64().expect("file_id");
    let cid = posted["id"].as_u64().expect("id");
    let done = h.get_json(&format!("/api/v1/cblr/session/{sid}/command/{cid}?wait=true")).await;
    assert_eq!(done["status"], "complete");
    assert_eq!(done["file_id"], fid);
    let resp = h.get(&format!("/api/v1/cblr/session/{sid}/file/{fid}/content")).await;
    assert_eq!(
        resp.headers().get("content-type").and_then(|v| v.to_str().ok()),
        Some("application/octet-stream")
    );
    assert!(
        resp.headers()
            .get("etag")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|e| e.starts_with("\"flask-"))
    );
    assert_eq!(resp.bytes().await.expect("bytes"), NOTE_TXT.as_bytes());
    let meta = h.get_json(&format!("/api/v1/cblr/session/{sid}/file/{fid}")).await;
    assert_eq!(meta["file_name"], "C:\\evidence\\note.txt");
    assert_eq!(meta["size"], NOTE_TXT.len());
    assert_eq!(meta["size_uploaded"], NOTE_TXT.len());
    assert_eq!(meta["status"], 0);

    // Paths are case-insensitive; an empty file is fine (REC fetched an empty C:\test.txt).
    assert!(h.get_file(sid, "c:\\TEST.txt").await.is_empty());

    let err = h
        .run_err(
            sid,
            json!({"name": "get file", "object": "C:\\evidence\\nope.txt"}),
            E_FILE_NOT_FOUND,
        )
        .await;
    let failed = h.get_json(&format!("/api/v1/cblr/session/{sid}/file/{}", err["file_id"])).await;
    assert_eq!(failed["status"], E_FILE_NOT_FOUND);
    h.run_err(sid, json!({"name": "get file", "object": "C:\\nope\\x.txt"}), E_PATH_NOT_FOUND)
        .await;
    h.run_err(
        sid,
        json!({"name": "get file", "object": "C:\\Windows\\System32\\config\\SAM"}),
        E_ACCESS_DENIED,
    )
    .await;

    // Partial reads with offset/get_count (§4.3), including one running past EOF.
    let size = 3 * 1024 * 1024 + 17;
    for (offset, count) in [(0u64, 4096u64), (1_000_001, 65_537), (size - 10, 4096)] {
        let v = h
            .run_ok(
                sid,
                json!({"name": "get file", "object": "C:\\evidence\\big.bin", "offset": offset, "get_count": count}),
            )
            .await;
        assert_eq!(v["offset"], offset);
        let got = h.content(sid, v["file_id"].as_u64().expect("fid")).await;
        let want = h.sim.read_file(1, "C:\\evidence\\big.bin", offset, count).expect("file");
        assert_eq!(got.len(), want.len());
        assert!(got == want, "partial read at {offset} differs");
    }
}

#[tokio::test]
async fn big_file_content_is_streamed_with_exact_size() {
    let size: u64 = 96 * 1024 * 1024 + 3;
    let h = Harness::start(SimConfig { file_size: size, ..fast() }).await;
    let sid = h.active_session(2).await;
    let v = h.run_ok(sid, json!({"name": "get file", "object": "C:\\evidence\\big.bin"})).await;
    let fid = v["file_id"].as_u64().expect("fid");
    let resp = h.get(&format!("/api/v1/cblr/session/{sid}/file/{fid}/content")).await;
    assert_eq!(resp.status(), StatusCode::OK);
    let mut stream = resp.bytes_stream();
    let mut total = 0u64;
    let mut chunks = 0u32;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.expect("chunk");
        // Spot-check a few chunks against the deterministic content.
        if chunks.is_multiple_of(97) {
            let want = h
                .sim
                .read_file(2, "C:\\evidence\\big.bin", total, chunk.len() as u64)
                .expect("file");
            assert!(chunk[..] == want[..], "chunk at {total} differs");
        }
        total += chunk.len() as u64;
        chunks += 1;
    }
    assert_eq!(total, size);
    assert!(chunks > 1, "content was not streamed");
    let meta = h.get_json(&format!("/api/v1/cblr/session/{sid}/file/{fid}")).await;
    assert_eq!(meta["size"], size);
    assert_eq!(h.sim.counters().downloads, 1);
}

#[tokio::test]
async fn upload_put_delete_and_directories() {
    let h = Harness::start(fast()).await;
    let sid = h.active_session(1).await;
    let payload = b"#!/bin/true\r\nfix it\r\n".to_vec();
    let up = h.upload(sid, "fix.bat", payload.clone()).await;
    // DOC5 upload response shape.
    assert_eq!(up["status"], 0);
    assert_eq!(up["file_name"], "fix.bat");
    assert_eq!(up["size"], payload.len());
    assert_eq!(up["size_uploaded"], payload.len());
    assert_eq!(up["delete"], false);
    let fid = up["id"].as_u64().expect("id");

    let target = "C:\\Windows\\Temp\\fix.bat";
    h.run_ok(sid, json!({"name": "put file", "object": target, "file_id": fid})).await;
    assert_eq!(h.sim.file_content(1, target), Some(payload.clone()));
    assert_eq!(h.get_file(sid, target).await, payload);
    h.run_err(sid, json!({"name": "put file", "object": target, "file_id": fid}), E_FILE_EXISTS)
        .await;
    h.run_err(
        sid,
        json!({"name": "put file", "object": "C:\\missing\\fix.bat", "file_id": fid}),
        E_PATH_NOT_FOUND,
    )
    .await;

    h.run_ok(sid, json!({"name": "create directory", "object": "C:\\Windows\\Temp\\ir"})).await;
    assert!(h.sim.file_exists(1, "c:\\windows\\temp\\IR"));
    h.run_err(
        sid,
        json!({"name": "create directory", "object": "C:\\Windows\\Temp\\ir"}),
        E_ALREADY_EXISTS,
    )
    .await;

    h.run_ok(sid, json!({"name": "delete file", "object": target})).await;
    assert!(!h.sim.file_exists(1, target));
    h.run_err(sid, json!({"name": "delete file", "object": target}), E_FILE_NOT_FOUND).await;
    h.run_err(
        sid,
        json!({"name": "delete file", "object": "C:\\Windows\\System32\\config\\SYSTEM"}),
        E_ACCESS_DENIED,
    )
    .await;

    // Directory listings (§4.3 entry shape; cbapi's walk appends `*`).
    let v = h.run_ok(sid, json!({"name": "directory list", "object": "C:\\evidence\\*"})).await;
    let files = v["files"].as_array().expect("files");
    let names: Vec<&str> = files.iter().filter_map(|f| f["filename"].as_str()).collect();
    assert_eq!(names, vec![".", "..", "big.bin", "empty.txt", "host.txt", "note.txt"]);
    let note = &files[5];
    assert_eq!(note["size"], NOTE_TXT.len());
    assert_eq!(note["attributes"], json!(["ARCHIVE"]));
    assert_eq!(note["alt_name"], "NOTE~1.TXT");
    for k in ["create_time", "last_access_time", "last_write_time"] {
        assert!(note[k].is_i64(), "{k}");
    }
    assert_eq!(files[0]["attributes"], json!(["DIRECTORY"]));
    let trailing =
        h.run_ok(sid, json!({"name": "directory list", "object": "C:\\evidence\\"})).await;
    assert_eq!(trailing["files"], v["files"]);
    let pf = h.run_ok(sid, json!({"name": "directory list", "object": "C:\\Program Files"})).await;
    assert_eq!(pf["files"][0]["filename"], "Program Files");
    assert_eq!(pf["files"][0]["alt_name"], "PROGRA~1");
    h.run_err(sid, json!({"name": "directory list", "object": "C:\\nowhere\\*"}), E_PATH_NOT_FOUND)
        .await;

    let c = h.sim.counters();
    assert_eq!(c.uploads, 1);
    assert_eq!(c.executed("put file"), 3);
    assert_eq!(c.executed("delete file"), 3);
    assert_eq!(c.executed("create directory"), 2);
}

#[tokio::test]
async fn create_process_output_and_return_codes() {
    let h = Harness::start(fast()).await;
    let sid = h.active_session(1).await;
    let v = h
        .run_ok(
            sid,
            json!({"name": "create process", "object": "cmd.exe /c echo hello", "wait": true,
                   "output_file": "C:\\Windows\\Temp\\out.txt", "working_directory": "C:\\Windows\\Temp"}),
        )
        .await;
    assert_eq!(v["return_code"], 0);
    assert!(v["pid"].as_u64().is_some());
    assert_eq!(h.get_file(sid, "C:\\Windows\\Temp\\out.txt").await, b"hello\r\n");

    let v = h
        .run_ok(
            sid,
            json!({"name": "create process", "object": "C:\\Windows\\System32\\cmd.exe /c exit 3", "wait": true}),
        )
        .await;
    assert_eq!(v["return_code"], 3);

    h.run_ok(
        sid,
        json!({"name": "create process", "object": "cmd.exe /c hostname", "wait": true,
               "output_file": "C:\\Windows\\Temp\\host.txt"}),
    )
    .await;
    assert_eq!(
        h.sim.file_content(1, "C:\\Windows\\Temp\\host.txt"),
        Some(b"WIN-0001\r\n".to_vec())
    );

    // Without wait a long-running program stays in the process table.
    let v = h
        .run_ok(
            sid,
            json!({"name": "create process", "object": "notepad.exe C:\\evidence\\note.txt", "wait": false}),
        )
        .await;
    let pid = v["pid"].as_u64().expect("pid");
    assert!(v.get("return_code").is_none());
    assert!(h.sim.process_exists(1, pid));

    h.run_err(
        sid,
        json!({"name": "create process", "object": "C:\\nope\\evil.exe", "wait": true}),
        E_FILE_NOT_FOUND,
    )
    .await;
    assert_eq!(h.sim.counters().executed("create process"), 5);
}

#[tokio::test]
async fn registry_commands() {
    let h = Harness::start(fast()).await;
    let sid = h.active_session(1).await;
    let run_key = "HKLM\\SOFTWARE\\Microsoft\\Windows\\CurrentVersion\\Run";
    let v = h.run_ok(sid, json!({"name": "reg enum key", "object": run_key})).await;
    let values = v["values"].as_array().expect("values");
    assert!(values.iter().any(|x| x["value_name"] == "Updater"
        && x["value_type"] == "REG_SZ"
        && x["value_data"].is_string()));
    assert_eq!(v["sub_keys"], json!([]));
    let parent = h
        .run_ok(
            sid,
            json!({"name": "reg enum key", "object": "HKEY_LOCAL_MACHINE\\SOFTWARE\\Microsoft\\Windows\\CurrentVersion"}),
        )
        .await;
    assert_eq!(parent["sub_keys"], json!(["Policies", "Run", "RunOnce", "Uninstall"]));

    let q = h
        .run_ok(
            sid,
            json!({"name": "reg query value", "object": "HKLM\\SYSTEM\\CurrentControlSet\\Services\\ACPI\\Start"}),
        )
        .await;
    assert_eq!(
        q["value"],
        json!({"value_type": "REG_DWORD", "value_name": "Start", "value_data": 0})
    );
    h.run_err(
        sid,
        json!({"name": "reg query value", "object": format!("{run_key}\\Nope")}),
        E_FILE_NOT_FOUND,
    )
    .await;

    h.run_ok(
        sid,
        json!({"name": "reg set value", "object": format!("{run_key}\\Persist"),
               "value_type": "REG_SZ", "value_data": "c:\\x.exe"}),
    )
    .await;
    assert_eq!(h.sim.registry_value(1, run_key, "persist"), Some(json!("c:\\x.exe")));
    // Server default overwrite=false (§4.3).
    h.run_err(
        sid,
        json!({"name": "reg set value", "object": format!("{run_key}\\Persist"),
               "value_type": "REG_SZ", "value_data": "c:\\y.exe"}),
        E_ALREADY_EXISTS,
    )
    .await;
    h.run_ok(
        sid,
        json!({"name": "reg set value", "object": format!("{run_key}\\Persist"),
               "value_type": "REG_MULTI_SZ", "value_data": ["a", "b"], "overwrite": true}),
    )
    .await;
    assert_eq!(h.sim.registry_value(1, run_key, "Persist"), Some(json!(["a", "b"])));
    h.run_err(
        sid,
        json!({"name": "reg set value", "object": format!("{run_key}\\Bad"),
               "value_type": "REG_DWORD", "value_data": "not a number"}),
        E_INVALID_PARAMETER,
    )
    .await;
    h.run_ok(sid, json!({"name": "reg delete value", "object": format!("{run_key}\\Persist")}))
        .await;
    assert_eq!(h.sim.registry_value(1, run_key, "Persist"), None);

    let new_key = "HKLM\\SOFTWARE\\EdrGate\\Case42";
    h.run_ok(sid, json!({"name": "reg create key", "object": new_key})).await;
    assert!(h.sim.registry_key_exists(1, new_key));
    // RegDeleteKey refuses a key with subkeys.
    h.run_err(
        sid,
        json!({"name": "reg delete key", "object": "HKLM\\SOFTWARE\\EdrGate"}),
        E_ACCESS_DENIED,
    )
    .await;
    h.run_ok(sid, json!({"name": "reg delete key", "object": new_key})).await;
    assert!(!h.sim.registry_key_exists(1, new_key));
    h.run_err(sid, json!({"name": "reg delete key", "object": new_key}), E_FILE_NOT_FOUND).await;
    let c = h.sim.counters();
    assert_eq!(c.executed("reg set value"), 4);
    assert_eq!(c.executed("reg delete value"), 1);
    assert_eq!(c.executed("reg create key"), 1);
    assert_eq!(c.executed("reg delete key"), 3);
}

#[tokio::test]
async fn memdump_reports_progress_then_writes_the_dump() {
    let h = Harness::start(SimConfig { memdump_size: 8 * 1024 * 1024, ..fast() }).await;
    let sid = h.active_session(1).await;
    let posted = h
        .post_command(sid, json!({"name": "memdump", "object": "C:\\Windows\\Temp\\mem.dmp"}))
        .await;
    let cid = posted["id"].as_u64().expect("id");
    let mut seen_progress = Vec::new();
    let done = loop {
        let v = h.get_json(&format!("/api/v1/cblr/session/{sid}/command/{cid}")).await;
        if v["status"] == "complete" {
            break v;
        }
        assert_eq!(v["complete"], false);
        if v["status"] == "in progress" {
            assert_eq!(v["dumping"], true);
            seen_progress.push(v["percentdone"].as_u64().expect("percentdone"));
        }
        tokio::time::sleep(Duration::from_millis(40)).await;
    };
    assert!(seen_progress.len() >= 3, "{seen_progress:?}");
    assert!(seen_progress.windows(2).all(|w| w[0] <= w[1]));
    assert!(seen_progress.last() > seen_progress.first());
    assert_eq!(done["complete"], true);
    assert_eq!(done["percentdone"], 100);
    assert_eq!(done["dumping"], false);
    assert_eq!(done["return_code"], 0);
    assert_eq!(h.sim.file_size(1, "C:\\Windows\\Temp\\mem.dmp"), Some(8 * 1024 * 1024));
    // cbapi asks for compression and then expects `<name>.zip`.
    h.run_ok(
        sid,
        json!({"name": "memdump", "object": "C:\\Windows\\Temp\\m2.dmp", "compress": true}),
    )
    .await;
    assert!(h.sim.file_exists(1, "C:\\Windows\\Temp\\m2.dmp.zip"));
    h.run_err(
        sid,
        json!({"name": "memdump", "object": "C:\\Windows\\Temp\\mem.dmp"}),
        E_FILE_EXISTS,
    )
    .await;
}

#[tokio::test]
async fn command_list_filters_cancel_and_validation() {
    let h =
        Harness::start(SimConfig { memdump_duration: Duration::from_millis(500), ..fast() }).await;
    let sid = h.active_session(1).await;
    let dump =
        h.post_command(sid, json!({"name": "memdump", "object": "C:\\Windows\\Temp\\x.dmp"})).await;
    // Commands run one at a time: this one waits behind the memdump.
    let queued = h.post_command(sid, json!({"name": "kill", "object": 3012})).await;
    let qid = queued["id"].as_u64().expect("id");
    let cancelled = h
        .put_ok(
            &format!("/api/v1/cblr/session/{sid}/command/{qid}"),
            &json!({"id": qid, "status": "cancel"}),
        )
        .await;
    assert_eq!(cancelled["status"], "cancel");
    // A running command cannot be cancelled.
    let did = dump["id"].as_u64().expect("id");
    tokio::time::sleep(Duration::from_millis(50)).await;
    let still = h
        .put_ok(&format!("/api/v1/cblr/session/{sid}/command/{did}"), &json!({"cmdid": did}))
        .await;
    assert_eq!(still["status"], "in progress");
    h.get_json(&format!("/api/v1/cblr/session/{sid}/command/{did}?wait=true")).await;
    h.run_ok(sid, json!({"name": "process list"})).await;

    let all = h.get_json(&format!("/api/v1/cblr/session/{sid}/command")).await;
    assert_eq!(all.as_array().map(Vec::len), Some(3));
    let canceled = h.get_json(&format!("/api/v1/cblr/session/{sid}/command?status=canceled")).await;
    assert_eq!(canceled.as_array().map(Vec::len), Some(1));
    let completed =
        h.get_json(&format!("/api/v1/cblr/session/{sid}/command?status=completed&count=1")).await;
    assert_eq!(completed.as_array().map(Vec::len), Some(1));
    assert_eq!(completed[0]["name"], "memdump");
    assert!(h.sim.process_exists(1, 3012), "cancelled kill must not run");
    let c = h.sim.counters();
    assert_eq!(c.executed("kill"), 0);
    assert_eq!(c.commands_cancelled, 1);

    let (status, _) = h
        .send_json(
            reqwest::Method::POST,
            &format!("/api/v1/cblr/session/{sid}/command"),
            &json!({"name": "reboot"}),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(
        h.get(&format!("/api/v1/cblr/session/{sid}/command/99")).await.status(),
        StatusCode::NOT_FOUND
    );
}

#[tokio::test]
async fn session_file_objects_and_archive() {
    let h = Harness::start(fast()).await;
    let sid = h.active_session(1).await;
    // §2.6 / XSOAR: an empty session cannot be archived.
    assert_eq!(
        h.get(&format!("/api/v1/cblr/session/{sid}/archive")).await.status(),
        StatusCode::INTERNAL_SERVER_ERROR
    );
    let a = h.upload(sid, "a.txt", b"alpha".to_vec()).await;
    let b = h.upload(sid, "b.txt", b"bravo".to_vec()).await;
    let (fa, fb) = (a["id"].as_u64().expect("id"), b["id"].as_u64().expect("id"));
    h.run_ok(sid, json!({"name": "get file", "object": "C:\\evidence\\host.txt"})).await;
    let list = h.get_json(&format!("/api/v1/cblr/session/{sid}/file")).await;
    assert_eq!(list.as_array().map(Vec::len), Some(3));
    let session = h.get_json(&format!("/api/v1/cblr/session/{sid}")).await;
    assert_eq!(session["storage_size"], "30");

    let resp = h
        .req(reqwest::Method::DELETE, &format!("/api/v1/cblr/session/{sid}/file/{fa}"))
        .send()
        .await
        .expect("delete");
    assert_eq!(resp.status(), StatusCode::OK);
    let kept =
        h.put_ok(&format!("/api/v1/cblr/session/{sid}/file/{fb}"), &json!({"delete": false})).await;
    assert_eq!(kept["id"], fb);
    h.put_ok(&format!("/api/v1/cblr/session/{sid}/file/{fb}"), &json!({"id": fb, "delete": true}))
        .await;
    for fid in [fa, fb] {
        assert_eq!(
            h.get(&format!("/api/v1/cblr/session/{sid}/file/{fid}/content")).await.status(),
            StatusCode::NOT_FOUND
        );
    }

    let resp = h.get(&format!("/api/v1/cblr/session/{sid}/archive")).await;
    assert_eq!(resp.status(), StatusCode::OK);
    let gz = resp.bytes().await.expect("archive");
    let tar = gunzip_stored(&gz);
    let names = tar_names(&tar);
    assert!(names.contains(&"session.json".to_owned()), "{names:?}");
    assert!(names.contains(&"commands.json".to_owned()));
    assert!(names.iter().any(|n| n.ends_with("host.txt")), "{names:?}");
    // Still downloadable after the session closed.
    h.put_ok(&format!("/api/v1/cblr/session/{sid}"), &json!({"status": "close"})).await;
    assert_eq!(
        h.get(&format!("/api/v1/cblr/session/{sid}/archive")).await.status(),
        StatusCode::OK
    );
}

/// Minimal gunzip for the simulator's stored-block archives.
fn gunzip_stored(gz: &[u8]) -> Vec<u8> {
    assert_eq!(&gz[..3], &[0x1f, 0x8b, 8], "not gzip");
    let mut pos = 10;
    let mut out = Vec::new();
    loop {
        let header = gz[pos];
        assert_eq!(header & 0b110, 0, "only stored blocks expected");
        let len = usize::from(u16::from_le_bytes([gz[pos + 1], gz[pos + 2]]));
        out.extend_from_slice(&gz[pos + 5..pos + 5 + len]);
        pos += 5 + len;
        if header & 1 == 1 {
            break;
        }
    }
    let isize = u32::from_le_bytes([gz[pos + 4], gz[pos + 5], gz[pos + 6], gz[pos + 7]]);
    assert_eq!(isize as usize, out.len());
    out
}

fn tar_names(tar: &[u8]) -> Vec<String> {
    let mut names = Vec::new();
    let mut pos = 0;
    while pos + 512 <= tar.len() && tar[pos] != 0 {
        let h = &tar[pos..pos + 512];
        let name_end = h[..100].iter().position(|b| *b == 0).unwrap_or(100);
        names.push(String::from_utf8_lossy(&h[..name_end]).into_owned());
        let size_str = String::from_utf8_lossy(&h[124..135]).into_owned();
        let size = usize::from_str_radix(size_str.trim_matches(char::from(0)).trim(), 8)
            .expect("octal size");
        pos += 512 + size.div_ceil(512) * 512;
    }
    names
}

// ----- faults ------------------------------------------------------------------------------

#[tokio::test]
async fn fault_5xx_every_nth_request_has_no_side_effect() {
    let h = Harness::start(SimConfig {
        faults: Faults { error_5xx_every: Some(2), ..Faults::default() },
        ..fast()
    })
    .await;
    let first = h.get("/api/info").await;
    assert_eq!(first.status(), StatusCode::OK);
    let (status, _) =
        h.send_json(reqwest::Method::POST, "/api/v1/cblr/session", &json!({"sensor_id": 1})).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(h.sim.counters().sessions_created, 0);
    assert_eq!(h.sim.counters().faults_5xx, 1);
    h.sim.set_faults(Faults::default());
    h.create_session(1).await;
    assert_eq!(h.sim.counters().sessions_created, 1);
}

#[tokio::test]
async fn fault_drop_closes_the_connection_without_response() {
    let h = Harness::start(SimConfig {
        faults: Faults { drop_every: Some(1), ..Faults::default() },
        ..fast()
    })
    .await;
    let err = h
        .req(reqwest::Method::GET, "/api/info")
        .send()
        .await
        .expect_err("dropped request must fail");
    assert!(!err.is_status(), "{err}");
    // With drop_after_processing the side effect happens but the reply is lost.
    h.sim.set_faults(Faults {
        drop_every: Some(1),
        drop_after_processing: true,
        ..Faults::default()
    });
    let r = h
        .req(reqwest::Method::POST, "/api/v1/cblr/session")
        .json(&json!({"sensor_id": 1}))
        .send()
        .await;
    assert!(r.is_err());
    h.sim.set_faults(Faults::default());
    let c = h.sim.counters();
    assert_eq!(c.sessions_created, 1);
    assert_eq!(c.faults_dropped, 2);
}

#[tokio::test]
async fn fault_slow_adds_latency() {
    let h = Harness::start(SimConfig {
        faults: Faults { slow: Some(Duration::from_millis(150)), ..Faults::default() },
        ..fast()
    })
    .await;
    let t = Instant::now();
    h.get_json("/api/info").await;
    assert!(t.elapsed() >= Duration::from_millis(150));
}

#[tokio::test]
async fn fault_session_expires_after_n_commands() {
    let h = Harness::start(SimConfig {
        faults: Faults { expire_sessions_after_commands: Some(2), ..Faults::default() },
        ..fast()
    })
    .await;
    let sid = h.active_session(1).await;
    h.run_ok(sid, json!({"name": "process list"})).await;
    h.run_ok(sid, json!({"name": "process list"})).await;
    let (status, text) = h
        .send_json(
            reqwest::Method::POST,
            &format!("/api/v1/cblr/session/{sid}/command"),
            &json!({"name": "kill", "object": 3012}),
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(text, format!("Session {sid} not found"));
    assert_eq!(h.get(&format!("/api/v1/cblr/session/{sid}")).await.status(), StatusCode::NOT_FOUND);
    // cbapi's reconnect: a new session works and the slot was freed.
    let again = h.active_session(1).await;
    assert_ne!(again, sid);
    h.run_ok(again, json!({"name": "kill", "object": 3012})).await;
    let c = h.sim.counters();
    assert_eq!(c.executed("kill"), 1);
    assert_eq!(c.sessions_timed_out, 1);
    assert_eq!(c.slots_in_use, 1);
}

// ----- TLS ---------------------------------------------------------------------------------

#[tokio::test]
async fn tls_with_generated_certificate() {
    let sim = Simulator::new(fast());
    let addr = sim.spawn_tls().await.expect("tls");
    let pem = sim.cert_pem().expect("pem");
    assert!(pem.starts_with("-----BEGIN CERTIFICATE-----"));
    let cert = reqwest::Certificate::from_pem(pem.as_bytes()).expect("cert");
    let client = reqwest::Client::builder().tls_certs_only([cert]).build().expect("client");
    for host in ["localhost", "127.0.0.1"] {
        let resp = client
            .get(format!("https://{host}:{}/api/info", addr.port()))
            .header("X-Auth-Token", DEFAULT_TOKEN)
            .send()
            .await
            .unwrap_or_else(|e| panic!("https to {host}: {e}"));
        assert_eq!(resp.status(), StatusCode::OK);
        assert_eq!(resp.headers().get("server").and_then(|v| v.to_str().ok()), Some("openresty"));
    }
    // An untrusting client refuses the self-signed certificate.
    let strict = reqwest::Client::builder().tls_certs_only([]).build().expect("client");
    assert!(
        strict.get(format!("https://localhost:{}/api/info", addr.port())).send().await.is_err()
    );
}

// ----- fidelity against recorded responses ------------------------------------------------

#[tokio::test]
async fn shapes_match_recorded_fixtures() {
    let h = Harness::start(fast()).await;

    // Pending session (5.1.1 recording of POST /session) and active session (6.2).
    let pending = h.post_ok("/api/v1/cblr/session", &json!({"sensor_id": 1})).await;
    let rec_pending = fixture("cbr-5.1.1_2016/POST_api_v1_cblr_session__sensor_id-1.json");
    assert_eq!(keys(&pending), keys(&rec_pending));
    for k in
        ["supported_commands", "drives", "address", "current_working_directory", "storage_size"]
    {
        assert_eq!(pending[k], rec_pending[k], "pending {k}");
    }
    let sid = pending["id"].as_u64().expect("id");
    let active = h.wait_active(sid).await;
    let rec_active = fixture("GET_api_v1_cblr_session_1.json");
    assert_eq!(keys(&active), keys(&rec_active));
    for k in [
        "supported_commands",
        "drives",
        "sensor_wait_timeout",
        "check_in_timeout",
        "session_timeout",
        "storage_ttl",
        "os_version",
        "current_working_directory",
    ] {
        assert_eq!(active[k], rec_active[k], "active {k}");
    }
    let rec_list = fixture("GET_api_v1_cblr_session.json");
    let list = h.get_json("/api/v1/cblr/session").await;
    assert_eq!(keys(&list[0]), keys(&rec_list[0]));
    let rec_closed = fixture("cbr-5.1.1_2016/GET_api_v1_cblr_session.json");

    // Commands: POST responses and completed objects.
    let rec_post_get = fixture("POST_api_v1_cblr_session_1_command__get-file.json");
    let post_get = h.post_command(sid, json!({"name": "get file", "object": "C:\\test.txt"})).await;
    assert_eq!(keys(&post_get), keys(&rec_post_get));
    let cid = post_get["id"].as_u64().expect("id");
    let done_get = h.get_json(&format!("/api/v1/cblr/session/{sid}/command/{cid}?wait=true")).await;
    assert_eq!(keys(&done_get), keys(&fixture("GET_api_v1_cblr_session_1_command_3.json")));

    let rec_post_ps = fixture("POST_api_v1_cblr_session_1_command__process-list.json");
    let post_ps = h.post_command(sid, json!({"name": "process list"})).await;
    assert_eq!(keys(&post_ps), keys(&rec_post_ps));
    assert_eq!(post_ps["object"], Value::Null);
    let cid = post_ps["id"].as_u64().expect("id");
    let done_ps = h.get_json(&format!("/api/v1/cblr/session/{sid}/command/{cid}?wait=true")).await;
    let rec_ps = fixture("GET_api_v1_cblr_session_1_command_4.json");
    assert_eq!(keys(&done_ps), keys(&rec_ps));
    assert_eq!(keys(&done_ps["processes"][0]), keys(&rec_ps["processes"][0]));
    assert_eq!(done_ps["processes"][0]["parent"], rec_ps["processes"][0]["parent"]);
    for f in ["create_time", "completion"] {
        assert!(done_ps[f].is_f64(), "{f} must be a float epoch");
    }

    // Sensor object and server info.
    let sensor = h.get_json("/api/v1/sensor/1").await;
    assert_eq!(keys(&sensor), keys(&fixture("GET_api_v1_sensor_1.json")));
    let info = h.get_json("/api/info").await;
    let mut rec_info = keys(&fixture("GET_api_info.json"));
    rec_info.remove("user_preferences");
    assert!(rec_info.is_subset(&keys(&info)), "{rec_info:?}");

    // Closed sessions carry close_time, as in the 5.1.1 list.
    h.put_ok(&format!("/api/v1/cblr/session/{sid}"), &json!({"status": "close"})).await;
    let list = h.get_json("/api/v1/cblr/session").await;
    let mut closed_keys = keys(&list[0]);
    closed_keys.remove("storage_size");
    let mut rec_closed_keys = keys(&rec_closed[0]);
    rec_closed_keys.remove("storage_size");
    assert_eq!(closed_keys, rec_closed_keys);
}

// ---- issue 12: sensors of several OSes and versions, believable endpoints -------------------

fn mixed_fleet() -> SimConfig {
    SimConfig {
        sensors: 5,
        sensor_specs: vec![
            (2, SensorSpec::linux()),
            (3, SensorSpec::macos()),
            (4, SensorSpec::windows_5_0()),
            (5, SensorSpec::default().ignoring_get_count()),
        ],
        ..fast()
    }
}

fn names_of(v: &Value, list: &str, field: &str) -> BTreeSet<String> {
    v[list]
        .as_array()
        .expect(list)
        .iter()
        .filter_map(|x| x[field].as_str().map(str::to_owned))
        .collect()
}

/// §3.1: `supported_commands` depends on the sensor: Windows 5.1+ lists all 15 (REC), a 5.0
/// sensor no `memdump` (DOC5), OS X and Linux sensors no registry and no memdump; the sensor
/// object carries `os_type` and the version; the server refuses what the session does not list.
#[tokio::test]
async fn sensors_of_several_oses_and_versions() {
    let h = Harness::start(mixed_fleet()).await;
    let no_windows: Vec<&str> = SUPPORTED_COMMANDS
        .iter()
        .copied()
        .filter(|c| !c.starts_with("reg ") && *c != "memdump")
        .collect();
    let no_memdump: Vec<&str> =
        SUPPORTED_COMMANDS.iter().copied().filter(|c| *c != "memdump").collect();
    let cases: [(u64, Value, u64, &str, &str, &str); 4] = [
        (
            1,
            json!(SUPPORTED_COMMANDS),
            1,
            "006.002.002.70329",
            "WIN-0001",
            "C:\\Windows\\CarbonBlack",
        ),
        (2, json!(no_windows), 3, "006.002.002.70401", "lnx-0002", "/var/lib/cb"),
        (3, json!(no_windows), 2, "006.002.002.70512", "mac-0003", "/var/lib/cb"),
        (4, json!(no_memdump), 1, "005.000.000.50105", "WIN-0004", "C:\\Windows\\CarbonBlack"),
    ];
    for (sensor, commands, os_type, version, hostname, cwd) in cases {
        let sid = h.active_session(sensor).await;
        let session = h.get_json(&format!("/api/v1/cblr/session/{sid}")).await;
        assert_eq!(session["supported_commands"], commands, "sensor {sensor}");
        assert_eq!(session["current_working_directory"], cwd);
        assert_eq!(session["hostname"], hostname);
        let s = h.get_json(&format!("/api/v1/sensor/{sensor}")).await;
        assert_eq!(
            (s["os_type"].as_u64(), s["build_version_string"].as_str()),
            (Some(os_type), Some(version))
        );
    }
    let linux = h.active_session(2).await;
    let resp = h
        .send_json(
            reqwest::Method::POST,
            &format!("/api/v1/cblr/session/{linux}/command"),
            &json!({"name": "reg enum key", "object": "HKLM\\SOFTWARE", "session_id": linux}),
        )
        .await;
    assert_eq!(resp.0, StatusCode::BAD_REQUEST);
    assert!(resp.1.contains("not supported by this sensor"), "{}", resp.1);
    assert_eq!(h.sim.counters().commands_posted, 0);
}

/// The switch for a sensor that ignores `get_count`: it sends everything from `offset`.
#[tokio::test]
async fn a_sensor_can_ignore_get_count() {
    let size = 10_000u64;
    let h = Harness::start(SimConfig { file_size: size, ..mixed_fleet() }).await;
    for (sensor, expected) in [(1u64, 100u64), (5, size - 1000)] {
        let sid = h.active_session(sensor).await;
        let v = h
            .run_ok(
                sid,
                json!({"name": "get file", "object": "C:\\evidence\\big.bin", "offset": 1000, "get_count": 100}),
            )
            .await;
        let got = h.content(sid, v["file_id"].as_u64().unwrap()).await;
        assert_eq!(got.len() as u64, expected, "sensor {sensor}");
        assert_eq!(got, h.sim.read_file(sensor, "C:\\evidence\\big.bin", 1000, expected).unwrap());
    }
}

/// What a responder looks at first is there on every OS, beside the demo's evidence.
#[tokio::test]
async fn endpoints_look_like_real_hosts() {
    let h = Harness::start(mixed_fleet()).await;
    let sim = &h.sim;
    // Windows: system binaries, hosts, hives, user profile, start-up locations, logs.
    for path in [
        "C:\\Windows\\System32\\cmd.exe",
        "C:\\Windows\\System32\\notepad.exe",
        "C:\\Windows\\System32\\drivers\\etc\\hosts",
        "C:\\Windows\\System32\\config\\SAM",
        "C:\\Windows\\System32\\winevt\\Logs\\Security.evtx",
        "C:\\Windows\\Prefetch",
        "C:\\Users\\jdoe\\NTUSER.DAT",
        "C:\\Users\\jdoe\\AppData\\Roaming\\Microsoft\\Windows\\Start Menu\\Programs\\Startup",
        "C:\\evidence\\note.txt",
    ] {
        assert!(sim.file_exists(1, path), "{path}");
    }
    assert!(sim.registry_key_exists(1, "HKLM\\SOFTWARE\\Microsoft\\Windows\\CurrentVersion\\Run"));
    assert!(
        sim.registry_value(
            1,
            "HKLM\\SOFTWARE\\Microsoft\\Windows NT\\CurrentVersion\\Winlogon",
            "Shell"
        )
        .is_some()
    );
    let sid = h.active_session(1).await;
    let ps = h.run_ok(sid, json!({"name": "process list"})).await;
    let paths = names_of(&ps, "processes", "path");
    for exe in [
        "smss.exe",
        "csrss.exe",
        "wininit.exe",
        "services.exe",
        "lsass.exe",
        "svchost.exe",
        "explorer.exe",
    ] {
        assert!(paths.iter().any(|p| p.ends_with(&format!("\\{exe}"))), "{exe}: {paths:?}");
    }
    let pids: Vec<u64> =
        ps["processes"].as_array().unwrap().iter().filter_map(|p| p["pid"].as_u64()).collect();
    assert!(pids.contains(&4) && pids.contains(&3012), "{pids:?}");
    let system32 = h
        .run_ok(sid, json!({"name": "directory list", "object": "C:\\Windows\\System32\\*"}))
        .await;
    let listed = names_of(&system32, "files", "filename");
    assert!(listed.contains("cmd.exe") && listed.contains("drivers") && listed.contains("config"));

    // Linux: accounts, logs, shells, init, sshd.
    for path in [
        "/etc/passwd",
        "/etc/shadow",
        "/var/log/auth.log",
        "/bin/bash",
        "/home/jdoe/.bash_history",
        "/tmp",
    ] {
        assert!(sim.file_exists(2, path), "{path}");
    }
    assert!(!sim.file_exists(2, "/ETC/PASSWD"), "Linux paths are case-sensitive");
    let lnx = h.active_session(2).await;
    let ps = h.run_ok(lnx, json!({"name": "process list"})).await;
    let paths = names_of(&ps, "processes", "path");
    for exe in ["/usr/lib/systemd/systemd", "/usr/sbin/sshd", "/usr/sbin/cron"] {
        assert!(paths.contains(exe), "{exe}: {paths:?}");
    }
    let log = h.run_ok(lnx, json!({"name": "directory list", "object": "/var/log/"})).await;
    assert!(names_of(&log, "files", "filename").contains("auth.log"));
    let passwd = h.run_ok(lnx, json!({"name": "get file", "object": "/etc/passwd"})).await;
    let passwd = h.content(lnx, passwd["file_id"].as_u64().unwrap()).await;
    assert!(String::from_utf8_lossy(&passwd).starts_with("root:x:0:0:"));
    let echo = h
        .run_ok(lnx, json!({"name": "create process", "object": "/bin/sh -c 'echo hi there'", "wait": true, "output_file": "/tmp/o.txt"}))
        .await;
    assert_eq!(echo["return_code"], 0);
    assert_eq!(sim.file_content(2, "/tmp/o.txt").unwrap(), b"hi there\n");
    h.run_ok(lnx, json!({"name": "kill", "object": 3012})).await;
    assert!(!sim.process_exists(2, 3012));
    h.run_err(lnx, json!({"name": "kill", "object": 1}), E_ACCESS_DENIED).await;
    h.run_err(
        lnx,
        json!({"name": "get file", "object": "C:\\evidence\\note.txt"}),
        E_INVALID_PARAMETER,
    )
    .await;

    // macOS: applications, user homes, launchd, launch agents.
    for path in [
        "/Applications/Safari.app",
        "/Users/jdoe/Library/LaunchAgents",
        "/Library/LaunchDaemons",
        "/sbin/launchd",
        "/etc/hosts",
    ] {
        assert!(sim.file_exists(3, path), "{path}");
    }
    assert!(sim.file_exists(3, "/users/JDOE/evidence/note.txt"), "APFS is case-insensitive");
    let mac = h.active_session(3).await;
    let ps = h.run_ok(mac, json!({"name": "process list"})).await;
    let launchd = ps["processes"].as_array().unwrap().iter().find(|p| p["pid"] == 1).unwrap();
    assert_eq!(launchd["path"], "/sbin/launchd");
    let apps = h.run_ok(mac, json!({"name": "directory list", "object": "/Applications/*"})).await;
    assert!(names_of(&apps, "files", "filename").contains("Safari.app"));
}
