//! The Carbon Black front door's commands and session files (R12–R19, front-doors.md §1),
//! over HTTP as CB clients send them (`X-Auth-Token`, CB bodies), against three simulators
//! behind one tenant: a Carbon Black sensor, a Defender machine and a Cybereason sensor.
//!
//! - every command the device supports runs as one action and reads `pending` then
//!   `complete`; `get file` carries its `file_id` in the POST answer and the content streams
//!   from edrgate's file store; `put file` sends an uploaded session file;
//! - a command the device does not support is a command in `error` with ERROR_NOT_SUPPORTED
//!   (never a 4xx), and no action is made;
//! - the audit trail has an `action.submit` entry naming the door, session and command for
//!   every command;
//! - a gateway crash while a `kill` is pending: after the restart the command completes and
//!   the sensor saw one kill.

use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

mod common;
use common::{Client, Gateway, GatewayProcess, Settings, Vendors, token};

/// The front door's prefix (`server.carbonblack_prefix` default).
const CB: &str = "/cb";
/// Longest wait for a command to finish.
const PATIENCE: Duration = Duration::from_secs(120);

/// A CB request with the edrgate credential in `X-Auth-Token`, as cbapi sends it.
async fn cb(
    gw: &Client,
    token: &str,
    method: Method,
    path: &str,
    body: Option<Value>,
) -> (StatusCode, Value) {
    let mut request =
        gw.http.request(method, gw.url(&format!("{CB}{path}"))).header("X-Auth-Token", token);
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.unwrap();
    let status = response.status();
    let text = response.text().await.unwrap();
    (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
}

/// The sensor id of `hostname` (cbapi's `select(Sensor).where("hostname:…")`).
async fn sensor_id(gw: &Client, token: &str, hostname: &str) -> i64 {
    let path = format!("/api/v2/sensor?hostname={hostname}&start=0&rows=100");
    let (status, found) = cb(gw, token, Method::GET, &path, None).await;
    assert_eq!(status, StatusCode::OK, "{found}");
    assert_eq!(found["total_results"], 1, "{found:#}");
    found["results"][0]["id"].as_i64().unwrap()
}

/// A new session on `sensor`: its id and `supported_commands`.
async fn session(gw: &Client, token: &str, sensor: i64) -> (i64, Vec<String>) {
    let (status, s) =
        cb(gw, token, Method::POST, "/api/v1/cblr/session", Some(json!({"sensor_id": sensor})))
            .await;
    assert_eq!(status, StatusCode::OK, "{s}");
    assert_eq!(s["status"], "active", "{s}");
    let supported = s["supported_commands"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap().to_owned())
        .collect();
    (s["id"].as_i64().unwrap(), supported)
}

/// Posts `body` on session `sid` (with cbapi's extra `session_id`) and waits for the end
/// (`?wait=true`, as Splunk does); the POST answer and the final command.
async fn run(gw: &Client, token: &str, sid: i64, mut body: Value) -> (Value, Value) {
    body["session_id"] = json!(sid);
    let (status, posted) =
        cb(gw, token, Method::POST, &format!("/api/v1/cblr/session/{sid}/command"), Some(body))
            .await;
    assert_eq!(status, StatusCode::OK, "{posted}");
    assert!(posted["id"].is_i64(), "{posted}");
    let done = wait(gw, token, sid, posted["id"].as_i64().unwrap()).await;
    (posted, done)
}

async fn wait(gw: &Client, token: &str, sid: i64, cid: i64) -> Value {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let path = format!("/api/v1/cblr/session/{sid}/command/{cid}?wait=true");
        let (status, command) = cb(gw, token, Method::GET, &path, None).await;
        assert_eq!(status, StatusCode::OK, "{command}");
        let word = command["status"].as_str().unwrap().to_owned();
        assert!(["pending", "complete", "error"].contains(&word.as_str()), "{command}");
        if word != "pending" {
            return command;
        }
        assert!(tokio::time::Instant::now() < deadline, "still pending: {command:#}");
    }
}

fn complete(command: &Value) {
    assert_eq!(command["status"], "complete", "{command:#}");
    assert_eq!(command["result_code"], 0, "{command:#}");
    assert_eq!(command["result_type"], "WinHresult");
    assert_eq!(command["result_desc"], "");
}

/// Uploads `bytes` as a session file (multipart field `file`, as cbapi's `put_file`); its id.
async fn upload(gw: &Client, token: &str, sid: i64, name: &str, bytes: &[u8]) -> i64 {
    let part = reqwest::multipart::Part::bytes(bytes.to_vec()).file_name(name.to_owned());
    let form = reqwest::multipart::Form::new().part("file", part);
    let response = gw
        .http
        .post(gw.url(&format!("{CB}/api/v1/cblr/session/{sid}/file")))
        .header("X-Auth-Token", token)
        .multipart(form)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let file: Value = response.json().await.unwrap();
    assert_eq!(file["size"], bytes.len(), "{file}");
    assert_eq!(file["status"], 0);
    file["id"].as_i64().unwrap()
}

async fn content(gw: &Client, token: &str, sid: i64, fid: i64) -> (StatusCode, Vec<u8>) {
    let response = gw
        .http
        .get(gw.url(&format!("{CB}/api/v1/cblr/session/{sid}/file/{fid}/content")))
        .header("X-Auth-Token", token)
        .send()
        .await
        .unwrap();
    (response.status(), response.bytes().await.unwrap().to_vec())
}

/// Puts `bytes` at `path` on the session's device, then gets it back through `get file`.
async fn round_trip(gw: &Client, token: &str, sid: i64, path: &str, bytes: &[u8]) {
    let fid = upload(gw, token, sid, "payload.txt", bytes).await;
    let (_, put) =
        run(gw, token, sid, json!({"name": "put file", "object": path, "file_id": fid})).await;
    complete(&put);
    let (posted, got) = run(gw, token, sid, json!({"name": "get file", "object": path})).await;
    // cbapi reads `file_id` from the POST answer (LRAPI `get_raw_file`).
    let file_id = posted["file_id"].as_i64().expect("file_id in the POST answer");
    complete(&got);
    assert_eq!(got["file_id"], file_id);
    let (status, body) = content(gw, token, sid, file_id).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, bytes);
}

async fn actions(gw: &Client, token: &str) -> usize {
    let (status, list) = gw.get(token, "/v1/actions?limit=500").await;
    assert_eq!(status, StatusCode::OK, "{list}");
    list["items"].as_array().unwrap().len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_on_three_backends_run_what_each_device_supports() {
    let sims = Vendors::start(Settings::default()).await;
    let cb_sim = &sims.cb;
    let gw = sims.builder().start().await;
    let acme = token("acme");

    // Carbon Black: everything a CB sensor has, the registry included.
    let (cb_sid, supported) = session(&gw, &acme, sensor_id(&gw, &acme, "WIN-0001").await).await;
    for name in ["process list", "kill", "get file", "put file", "reg enum key"] {
        assert!(supported.iter().any(|s| s == name), "{name}: {supported:?}");
    }
    let (posted, list) = run(&gw, &acme, cb_sid, json!({"name": "process list"})).await;
    assert_eq!(posted["status"], "pending", "{posted}");
    complete(&list);
    let processes = list["processes"].as_array().unwrap();
    assert!(!processes.is_empty());
    for p in processes {
        let guid = p["proc_guid"].as_str().unwrap();
        assert_eq!(guid.split('-').map(str::len).collect::<Vec<_>>(), [8, 4, 4, 4, 12], "{p}");
    }
    round_trip(&gw, &acme, cb_sid, "C:\\Windows\\Temp\\edrgate.txt", b"hello from edrgate").await;
    let victim = processes.iter().map(|p| p["pid"].as_u64().unwrap()).max().unwrap();
    assert!(cb_sim.process_exists(1, victim));
    let (_, kill) = run(&gw, &acme, cb_sid, json!({"name": "kill", "object": victim})).await;
    complete(&kill);
    assert!(!cb_sim.process_exists(1, victim));
    let key = "HKLM\\Software";
    let (_, reg) = run(&gw, &acme, cb_sid, json!({"name": "reg enum key", "object": key})).await;
    complete(&reg);
    assert!(reg["values"].is_array() && reg["sub_keys"].is_array(), "{reg:#}");

    // Defender: process list and files through the helpers and the library.
    let (mde_sid, supported) = session(&gw, &acme, sensor_id(&gw, &acme, "mde-0001").await).await;
    for name in ["process list", "get file", "put file"] {
        assert!(supported.iter().any(|s| s == name), "{name}: {supported:?}");
    }
    let (_, list) = run(&gw, &acme, mde_sid, json!({"name": "process list"})).await;
    complete(&list);
    assert!(!list["processes"].as_array().unwrap().is_empty(), "{list:#}");
    round_trip(&gw, &acme, mde_sid, "C:\\Windows\\Temp\\edrgate.txt", b"hello, defender").await;

    // Cybereason: process list and kill, but no registry. Not advertised, and refused as CB
    // refuses a command the sensor cannot run: a command in `error`, no action made.
    let (cr_sid, supported) = session(&gw, &acme, sensor_id(&gw, &acme, "CR-WS-0001").await).await;
    assert!(!supported.iter().any(|s| s == "reg enum key"), "{supported:?}");
    if supported.iter().any(|s| s == "process list") {
        let (_, list) = run(&gw, &acme, cr_sid, json!({"name": "process list"})).await;
        complete(&list);
        let pid =
            list["processes"].as_array().unwrap().iter().map(|p| p["pid"].as_u64().unwrap()).max();
        let (_, kill) = run(&gw, &acme, cr_sid, json!({"name": "kill", "object": pid})).await;
        complete(&kill);
    }
    let before = actions(&gw, &acme).await;
    let (posted, refused) =
        run(&gw, &acme, cr_sid, json!({"name": "reg enum key", "object": key})).await;
    assert_eq!(posted["status"], "error", "{posted}");
    assert_eq!(refused["result_code"], 2147942450u64, "{refused:#}");
    assert_eq!(refused["result_type"], "WinHresult");
    let (_, unknown) = run(&gw, &acme, cr_sid, json!({"name": "run script", "object": "x"})).await;
    assert_eq!(unknown["status"], "error");
    assert_eq!(unknown["result_code"], 2147942450u64, "{unknown:#}");
    assert_eq!(actions(&gw, &acme).await, before, "a refused command makes no action");

    // R14: the session's commands, oldest first.
    let (status, listed) =
        cb(&gw, &acme, Method::GET, &format!("/api/v1/cblr/session/{cr_sid}/command"), None).await;
    assert_eq!(status, StatusCode::OK);
    let listed = listed.as_array().unwrap();
    assert!(listed.len() >= 2, "{listed:#?}");
    assert_eq!(listed.last().unwrap()["id"], unknown["id"]);

    // A command of a lost session: `Session … not found` before anything is stored.
    let (status, lost) = cb(
        &gw,
        &acme,
        Method::POST,
        "/api/v1/cblr/session/999999/command",
        Some(json!({"name": "kill", "object": 1})),
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(lost.as_str().unwrap().starts_with("Session"), "{lost}");
    assert_eq!(actions(&gw, &acme).await, before);

    // Another tenant sees none of it.
    let other = token("globex");
    let path = format!("/api/v1/cblr/session/{cb_sid}/command/{}", kill["id"]);
    let (status, _) = cb(&gw, &other, Method::GET, &path, None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    // The audit trail: one `action.submit` per command that ran, naming door and command.
    let (status, audit) = gw.get(&acme, "/v1/audit?event=action.submit&limit=500").await;
    assert_eq!(status, StatusCode::OK, "{audit}");
    let doors: Vec<&Value> = audit["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["detail"]["door"] == "carbonblack")
        .collect();
    assert_eq!(doors.len(), actions(&gw, &acme).await, "{audit:#}");
    for entry in &doors {
        assert!(
            entry["detail"]["session_id"].is_i64() && entry["detail"]["command_id"].is_i64(),
            "{entry}"
        );
        assert!(entry["action_id"].is_string(), "{entry}");
    }
    assert!(doors.iter().any(|e| e["detail"]["command_id"] == kill["id"]));
}

/// A SIGKILL of the gateway process while a `kill` is pending: the restarted gateway finishes
/// the same action, and the sensor saw one kill.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_during_a_kill_repeats_nothing() {
    crash_during_kill("").await;
}

/// The same on PostgreSQL (`EDRGATE_TEST_POSTGRES_URL`; skipped without it): the door's
/// statements are written once for both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_during_a_kill_repeats_nothing_on_postgres() {
    let name = "cb_front_door_commands::crash_on_postgres";
    let Some(url) = common::fresh_postgres_database(name).await else { return };
    crash_during_kill(&format!("store.url = \"{url}\"")).await;
}

async fn crash_during_kill(store: &str) {
    // Commands slow enough that the gateway is killed while the kill is still pending.
    let (cb_sim, cb_backend) = common::carbonblack(Duration::from_millis(1500)).await;
    let dir = tempfile::tempdir().unwrap();
    let config = Gateway::builder()
        .backend("acme", "cb", &cb_backend)
        .config("[engine]\nlease_seconds = 1")
        .config(store);
    let mut gw = GatewayProcess::start("cb-kill", dir.path(), &config).await;
    let acme = token("acme");
    let (sid, _) = session(&gw, &acme, sensor_id(&gw, &acme, "WIN-0001").await).await;
    let (_, list) = run(&gw, &acme, sid, json!({"name": "process list"})).await;
    let victim = list["processes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["pid"].as_u64().unwrap())
        .max()
        .unwrap();
    let path = format!("/api/v1/cblr/session/{sid}/command");
    let body = json!({"name": "kill", "object": victim, "session_id": sid});
    let (status, posted) = cb(&gw, &acme, Method::POST, &path, Some(body)).await;
    assert_eq!(status, StatusCode::OK, "{posted}");
    assert_eq!(posted["status"], "pending");
    let cid = posted["id"].as_i64().unwrap();
    // Until the sensor has the command (the vendor's side of it is under way).
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while cb_sim.counters().commands_posted < 2 {
        assert!(tokio::time::Instant::now() < deadline, "the kill never reached the sensor");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // SIGKILL, and the same gateway started again on its data.
    gw.crash_and_restart().await;
    let done = wait(&gw, &acme, sid, cid).await;
    complete(&done);
    assert!(!cb_sim.process_exists(1, victim));
    assert_eq!(cb_sim.counters().commands_by_name.get("kill"), Some(&1), "one kill on the sensor");
    assert_eq!(actions(&gw, &acme).await, 2, "process list and kill, once each");
}

const PYTHON_ENV: &str = "EDRGATE_TEST_SDK_PYTHON";

/// cbapi 2.0 as a user writes it, unchanged but for the URL and the key: a live-response
/// session per host (process list where supported, put and get file, kill, registry on CB,
/// an unsupported call refused client-side), then `submit_job` over the three sensors. It
/// counts the commands it sent, so the test can tell a re-POST from a command.
const CBAPI_SCRIPT: &str = r#"
import io, json, sys
from cbapi.response import CbResponseAPI, Sensor
from cbapi.errors import ApiError

url, token, hosts = sys.argv[1:4]
hosts = json.loads(hosts)
cb = CbResponseAPI(url=url, token=token, ssl_verify=False)
out = {"hosts": {}, "sent": 0}
for host in hosts:
    sensor = cb.select(Sensor).where("hostname:%s" % host).first()
    entry = {}
    with sensor.lr_session() as s:
        supported = s.session_data["supported_commands"]
        if "process list" in supported:
            procs = s.list_processes()
            out["sent"] += 1
            entry["processes"] = len(procs)
            entry["guid_ok"] = all(len(p["proc_guid"].split("-")) == 5 for p in procs)
            victim = max(p["pid"] for p in procs)
        if "put file" in supported and "get file" in supported:
            payload = ("hello %s" % host).encode()
            s.put_file(io.BytesIO(payload), "C:\\Windows\\Temp\\cbapi.txt")
            back = s.get_file("C:\\Windows\\Temp\\cbapi.txt", timeout=240)
            out["sent"] += 2
            entry["round_trip"] = back == payload
        if "kill" in supported and "process list" in supported:
            entry["killed"] = s.kill_process(victim)
            out["sent"] += 1
        if "reg set value" in supported:
            s.create_registry_key("HKLM\\Software\\edrgate")
            s.set_registry_value("HKLM\\Software\\edrgate\\Answer", 42)
            entry["reg_value"] = s.get_registry_value("HKLM\\Software\\edrgate\\Answer")["value_data"]
            entry["reg_values"] = [v["value_name"] for v in
                                   s.list_registry_keys_and_values("HKLM\\Software\\edrgate")["values"]]
            out["sent"] += 4
        else:
            try:
                s.list_registry_keys_and_values("HKLM\\Software")
                entry["unsupported"] = "sent"
            except ApiError as e:
                entry["unsupported"] = str(e)
    out["hosts"][host] = entry

def job(session):
    return sorted(p["pid"] for p in session.list_processes())

sensors = [cb.select(Sensor).where("hostname:%s" % host).first() for host in hosts]
futures = [cb.live_response.submit_job(job, sensor) for sensor in sensors]
out["jobs"] = [len(f.result(timeout=300)) for f in futures]
out["sent"] += len(futures)
print(json.dumps(out))
"#;

/// cbapi itself through the TLS front: see [`CBAPI_SCRIPT`].
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cbapi_drives_three_backends_unchanged() {
    let Some(python) = std::env::var(PYTHON_ENV).ok().filter(|p| !p.is_empty()) else {
        eprintln!("skipped: {PYTHON_ENV} is not set (.ci/sdk-venv makes the SDK venv)");
        return;
    };
    let sims = Vendors::start(Settings { cr_machines: Some(1), ..Settings::default() }).await;
    let gw = sims.builder().start().await;
    let acme = token("acme");
    let front = common::TlsFront::start(gw.addr).await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("cbapi_commands.py");
    std::fs::write(&file, CBAPI_SCRIPT).unwrap();
    let hosts = json!(["WIN-0001", "mde-0001", "CR-WS-0001"]).to_string();
    let mut cmd = std::process::Command::new(&python);
    cmd.arg(&file).args([front.url(CB), acme.clone(), hosts]).current_dir(dir.path());
    let out = tokio::task::spawn_blocking(move || cmd.output()).await.unwrap().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{}\nstdout:\n{stdout}\nstderr:\n{stderr}", out.status);
    let line = stdout.lines().rev().find(|l| l.starts_with('{')).expect("a result");
    let result: Value = serde_json::from_str(line).unwrap();

    let cb_host = &result["hosts"]["WIN-0001"];
    assert_eq!(cb_host["guid_ok"], true, "{result:#}");
    assert_eq!(cb_host["round_trip"], true, "{result:#}");
    assert_eq!(cb_host["killed"], true, "{result:#}");
    assert_eq!(cb_host["reg_value"], 42, "{result:#}");
    assert_eq!(cb_host["reg_values"], json!(["Answer"]), "{result:#}");
    let mde_host = &result["hosts"]["mde-0001"];
    assert_eq!(mde_host["round_trip"], true, "{result:#}");
    let cr_host = &result["hosts"]["CR-WS-0001"];
    let refused = cr_host["unsupported"].as_str().unwrap();
    assert!(refused.contains("not supported"), "cbapi refuses it client-side: {result:#}");
    assert!(result["jobs"].as_array().unwrap().iter().all(|n| n.as_u64() > Some(0)), "{result:#}");
    // One action per command sent: nothing was re-POSTed.
    assert_eq!(actions(&gw, &acme).await as u64, result["sent"].as_u64().unwrap(), "{result:#}");
}
