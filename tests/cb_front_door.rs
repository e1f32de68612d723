//! The Carbon Black EDR front door's foundation (issue 16): server info, sensors (durable
//! integer ids, lookups by id and by hostname, isolation) and virtual live-response sessions,
//! over a Carbon Black, a Defender and a Cybereason simulator behind one tenant. Through HTTP
//! in CB's conventions (front-doors.md §1.2–§1.5), and through cbapi 2.0 itself, unchanged but
//! for the URL and the key (`EDRGATE_TEST_SDK_PYTHON`, as in tests/sdk.rs; skipped without it).
//! cbapi refuses `http://`, so it reaches the gateway through [`TlsFront`].

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

mod common;
use common::{Gateway, GatewayBuilder, Settings, TlsFront, Vendors, token};

const CB_HOST: &str = "WIN-0001";
const MDE_HOST: &str = "mde-0001";
const CR_HOST: &str = "CR-WS-0001";
/// The 15 command names of a real Windows sensor (CBREF §3.1), with the edrgate command
/// each runs as (front-doors.md §1.8).
const CB_NAMES: [(&str, &str); 15] = [
    ("delete file", "delete_file"),
    ("put file", "put_file"),
    ("reg delete key", "registry_delete_key"),
    ("directory list", "list_directory"),
    ("reg create key", "registry_create_key"),
    ("get file", "get_file"),
    ("reg enum key", "registry_list"),
    ("reg query value", "registry_get"),
    ("kill", "kill_process"),
    ("create process", "execute"),
    ("process list", "process_list"),
    ("reg delete value", "registry_delete_value"),
    ("reg set value", "registry_set"),
    ("create directory", "create_directory"),
    ("memdump", "memory_dump"),
];

/// The CB names of what `GET /v1/devices` says the device `host` runs, in a sensor's order.
async fn expected_commands(gw: &Gateway, token: &str, host: &str) -> Vec<String> {
    let (_, devices) = gw.get(token, &format!("/v1/devices?hostname={host}")).await;
    let device = devices["items"].as_array().unwrap().iter().find(|d| d["hostname"] == host);
    let kinds: Vec<&str> = device.unwrap()["commands"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["command"].as_str().unwrap())
        .collect();
    CB_NAMES.iter().filter(|(_, k)| kinds.contains(k)).map(|(n, _)| (*n).to_owned()).collect()
}

/// Fields of a sensor that cbapi indexes or parses (front-doors.md §1.3).
const SENSOR_FIELDS: [&str; 16] = [
    "id",
    "supports_cblr",
    "os_type",
    "status",
    "num_storefiles_bytes",
    "num_eventlog_bytes",
    "next_checkin_time",
    "network_isolation_enabled",
    "is_isolating",
    "restart_queued",
    "uninstall",
    "group_id",
    "notes",
    "event_log_flush_time",
    "computer_name",
    "network_adapters",
];

/// Tenant `acme` with a Carbon Black, a Defender and a Cybereason backend (one machine each);
/// tenant `other` with the same Carbon Black server (so the same device is another tenant's
/// sensor too). The simulators serve until the returned [`Vendors`] is dropped.
async fn sims() -> (Vendors, GatewayBuilder) {
    let sims = Vendors::start(Settings { cr_machines: Some(1), ..Settings::default() }).await;
    let builder = sims.builder().backend("other", "cb", &sims.cb_backend);
    (sims, builder)
}

/// A CB request to the door of `gw` (plain HTTP: reqwest does not mind), with `token` in
/// `X-Auth-Token` when given: the status, the content type and the body (JSON, else text).
async fn cb_call(
    gw: &Gateway,
    method: Method,
    token: Option<&str>,
    path: &str,
    body: Option<&Value>,
) -> (StatusCode, String, Value) {
    let mut req = gw.http.request(method, gw.url(&format!("/cb{path}")));
    if let Some(t) = token {
        req = req.header("x-auth-token", t);
    }
    if let Some(b) = body {
        req = req.json(b);
    }
    let res = req.send().await.unwrap();
    let status = res.status();
    let ctype = res
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let text = res.text().await.unwrap();
    let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
    (status, ctype, body)
}

async fn cb_get(gw: &Gateway, token: &str, path: &str) -> (StatusCode, Value) {
    let (status, _, body) = cb_call(gw, Method::GET, Some(token), path, None).await;
    (status, body)
}

/// The one sensor named `host` (R4, as cbapi asks for it).
async fn sensor_by_hostname(gw: &Gateway, token: &str, host: &str) -> Value {
    let path = format!(
        "/api/v2/sensor?hostname={host}&sort.col=computer_name&sort.dir=asc&start=0&rows=100"
    );
    let (status, page) = cb_get(gw, token, &path).await;
    assert_eq!(status, StatusCode::OK, "{page}");
    assert_eq!(page["total_results"], 1, "{host}: {page:#}");
    page["results"][0].clone()
}

fn assert_sensor_shape(sensor: &Value) {
    for field in SENSOR_FIELDS {
        assert!(sensor.get(field).is_some(), "sensor without {field}: {sensor:#}");
    }
    assert!(sensor["id"].is_i64(), "{sensor}");
    assert_eq!(sensor["supports_cblr"], true);
    assert!(sensor["os_type"].is_i64());
    for counter in ["num_storefiles_bytes", "num_eventlog_bytes"] {
        let text = sensor[counter].as_str().unwrap();
        assert!(text.parse::<u64>().is_ok(), "{counter}: {text}");
    }
    let checkin = sensor["next_checkin_time"].as_str().unwrap();
    assert!(
        time::OffsetDateTime::parse(checkin, &time::format_description::well_known::Rfc3339)
            .is_ok(),
        "next_checkin_time must be timezone-aware RFC 3339: {checkin}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sensors_and_sessions_follow_cb_conventions() {
    let (_sims, builder) = sims().await;
    conventions(builder).await;
}

/// The same on PostgreSQL (`EDRGATE_TEST_POSTGRES_URL`; skipped without it): the store's
/// statements are written once for both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_postgres() {
    let Some(url) = common::fresh_postgres_database("cb_front_door::on_postgres").await else {
        return;
    };
    let (_sims, builder) = sims().await;
    let builder = builder.config(&format!("store.url = \"{url}\""));
    conventions(builder.clone()).await;
    isolation(builder).await;
}

async fn conventions(builder: GatewayBuilder) {
    let mut gw = builder.start().await;
    let acme = token("acme");
    let other = token("other");

    // 401 without and with a bad token, in the door's JSON (never problem+json).
    for t in [None, Some("not-a-token")] {
        let (status, ctype, body) = cb_call(&gw, Method::GET, t, "/api/info", None).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
        assert!(ctype.starts_with("application/json"), "{ctype}");
        assert!(body.get("errorMessage").is_none(), "{body}");
    }
    // R1, R2, the XSOAR test-module search.
    let answer =
        gw.http.get(gw.url("/cb/api/info")).header("x-auth-token", &acme).send().await.unwrap();
    assert!(answer.headers().contains_key("x-request-id"), "a request id, as on /v1");
    let (status, info) = cb_get(&gw, &acme, "/api/info").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(info["cblrEnabled"], true);
    let major: u32 = info["version"].as_str().unwrap().split('.').next().unwrap().parse().unwrap();
    assert!(major >= 5, "{info}");
    let (status, partitions) = cb_get(&gw, &acme, "/api/v1/storage/events/partition").await;
    assert_eq!((status, partitions), (StatusCode::OK, json!({})));
    let (status, processes) = cb_get(&gw, &acme, "/api/v1/process?q=process_name:x&rows=5").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(processes["total_results"], 0);

    // R4 by hostname on each backend; R3 by id; R5's array.
    let mut ids = Vec::new();
    for (host, backend) in [(CB_HOST, "cb"), (MDE_HOST, "mde"), (CR_HOST, "cr")] {
        let sensor = sensor_by_hostname(&gw, &acme, host).await;
        assert_sensor_shape(&sensor);
        assert_eq!(sensor["computer_name"], host);
        assert_eq!(sensor["edrgate"]["backend"], backend);
        let id = sensor["id"].as_i64().unwrap();
        let (status, by_id) = cb_get(&gw, &acme, &format!("/api/v1/sensor/{id}")).await;
        assert_eq!(status, StatusCode::OK, "{by_id}");
        assert_eq!(by_id["computer_name"], host);
        let (status, listed) = cb_get(&gw, &acme, &format!("/api/v1/sensor?hostname={host}")).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(listed.as_array().map(Vec::len), Some(1), "{listed}");
        assert_eq!(listed[0]["id"], id);
        ids.push(id);
    }
    let mut distinct = ids.clone();
    distinct.dedup();
    assert_eq!(distinct.len(), 3, "{ids:?}");
    // A count (`rows=0`), and a whole-tenant page sorted by name.
    let (_, count) = cb_get(&gw, &acme, "/api/v2/sensor?start=0&rows=0").await;
    assert_eq!(count["total_results"], 3, "{count}");
    assert_eq!(count["results"], json!([]));
    let (_, page) = cb_get(&gw, &acme, "/api/v2/sensor?sort.col=computer_name&sort.dir=asc").await;
    let names: Vec<&str> = page["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["computer_name"].as_str().unwrap())
        .collect();
    assert_eq!(names, [CR_HOST, MDE_HOST, CB_HOST], "case-insensitive by name");
    // Nothing matches: an empty page and an empty array.
    let (_, none) = cb_get(&gw, &acme, "/api/v2/sensor?hostname=NOPE-9").await;
    assert_eq!(none["total_results"], 0);
    let (_, none) = cb_get(&gw, &acme, "/api/v1/sensor?hostname=NOPE-9").await;
    assert_eq!(none, json!([]));
    // Unknown, malformed and another tenant's ids: 404, JSON that does not start `Sensor`.
    let other_cb = sensor_by_hostname(&gw, &other, CB_HOST).await;
    assert_ne!(
        other_cb["id"], ids[0],
        "the same device is another tenant's sensor under another id"
    );
    for path in [
        format!("/api/v1/sensor/{}", ids[1]),
        "/api/v1/sensor/abc".into(),
        "/api/v1/sensor/999999".into(),
    ] {
        let (status, _, body) = cb_call(&gw, Method::GET, Some(&other), &path, None).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{path}: {body}");
        assert!(body.is_object(), "{body}");
    }

    // Sessions: active at once, what the device runs, integer ids.
    let mut sessions = Vec::new();
    for (id, host) in ids.iter().zip([CB_HOST, MDE_HOST, CR_HOST]) {
        let (status, _, session) = cb_call(
            &gw,
            Method::POST,
            Some(&acme),
            "/api/v1/cblr/session",
            Some(&json!({"sensor_id": id})),
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{session}");
        assert_eq!(session["status"], "active");
        assert_eq!(session["sensor_id"], *id);
        assert_eq!(session["hostname"], host);
        assert!(session["id"].is_i64());
        for field in [
            "drives",
            "current_working_directory",
            "session_timeout",
            "sensor_wait_timeout",
            "check_in_timeout",
            "create_time",
        ] {
            assert!(session.get(field).is_some(), "session without {field}: {session:#}");
        }
        // Exactly what the device runs (its per-device capabilities), CB-spelled.
        let supported: Vec<String> =
            serde_json::from_value(session["supported_commands"].clone()).unwrap();
        assert_eq!(supported, expected_commands(&gw, &acme, host).await, "{host}");
        assert!(!supported.is_empty(), "{host}");
        sessions.push((session["id"].as_i64().unwrap(), supported));
    }
    let cb_supported = &sessions[0].1;
    for name in ["process list", "get file", "put file", "kill", "reg enum key", "reg set value"] {
        assert!(
            cb_supported.iter().any(|c| c == name),
            "CB sensor without {name}: {cb_supported:?}"
        );
    }
    let (cb_sid, _) = sessions[0].clone();

    // R9, R11; another tenant's session is `404 Session … not found` text.
    let (status, one) = cb_get(&gw, &acme, &format!("/api/v1/cblr/session/{cb_sid}")).await;
    assert_eq!((status, one["status"].clone()), (StatusCode::OK, json!("active")));
    let (status, alive) =
        cb_get(&gw, &acme, &format!("/api/v1/cblr/session/{cb_sid}/keepalive")).await;
    assert_eq!((status, alive["status"].clone()), (StatusCode::OK, json!("active")));
    for path in [
        format!("/api/v1/cblr/session/{cb_sid}"),
        format!("/api/v1/cblr/session/{cb_sid}/keepalive"),
    ] {
        let (status, ctype, body) = cb_call(&gw, Method::GET, Some(&other), &path, None).await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert!(ctype.starts_with("text/plain"), "{ctype}");
        assert_eq!(body, json!(format!("Session {cb_sid} not found")));
    }
    let (_, theirs) = cb_get(&gw, &other, "/api/v1/cblr/session").await;
    assert_eq!(theirs, json!([]), "another tenant's sessions are not listed");
    let (_, listed) = cb_get(&gw, &acme, "/api/v1/cblr/session?active_only=true").await;
    assert_eq!(listed.as_array().unwrap().len(), 3, "{listed}");

    // R10 as cbapi sends it (the whole object back); then the session is over.
    let mut closing = one.clone();
    closing["status"] = json!("close");
    let path = format!("/api/v1/cblr/session/{cb_sid}");
    let (status, _, closed) = cb_call(&gw, Method::PUT, Some(&acme), &path, Some(&closing)).await;
    assert_eq!((status, closed["status"].clone()), (StatusCode::OK, json!("close")));
    let (status, _, again) = cb_call(
        &gw,
        Method::PUT,
        Some(&acme),
        &path,
        Some(&json!({"session_id": cb_sid, "status": "close"})),
    )
    .await;
    assert_eq!(
        (status, again["status"].clone()),
        (StatusCode::OK, json!("close")),
        "closing twice is no error"
    );
    let (status, _, body) =
        cb_call(&gw, Method::GET, Some(&acme), &format!("{path}/keepalive"), None).await;
    assert_eq!(
        (status, body),
        (StatusCode::NOT_FOUND, json!(format!("Session {cb_sid} not found")))
    );
    let (_, listed) = cb_get(&gw, &acme, "/api/v1/cblr/session?active_only=true").await;
    assert!(listed.as_array().unwrap().iter().all(|s| s["id"] != cb_sid), "{listed}");
    let (_, all) = cb_get(&gw, &acme, "/api/v1/cblr/session").await;
    let shown = all.as_array().unwrap().iter().find(|s| s["id"] == cb_sid).unwrap();
    assert_eq!(shown["status"], "close");
    // Bad requests: JSON 400s; an unknown sensor: 404.
    let (status, _, _) = cb_call(
        &gw,
        Method::POST,
        Some(&acme),
        "/api/v1/cblr/session",
        Some(&json!({"sensor_id": [1]})),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, _, _) = cb_call(
        &gw,
        Method::POST,
        Some(&acme),
        "/api/v1/cblr/session",
        Some(&json!({"sensor_id": other_cb["id"]})),
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "another tenant's sensor");
    let (status, _, body) =
        cb_call(&gw, Method::GET, Some(&acme), "/api/v1/nothing-here", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(body.is_object(), "{body}");

    // Durable: the same ids after a crash and restart, and the sessions survive.
    gw.crash_and_restart().await;
    for (host, id) in [CB_HOST, MDE_HOST, CR_HOST].into_iter().zip(&ids) {
        assert_eq!(sensor_by_hostname(&gw, &acme, host).await["id"], *id, "{host}");
    }
    let (status, one) =
        cb_get(&gw, &acme, &format!("/api/v1/cblr/session/{}", sessions[1].0)).await;
    assert_eq!((status, one["status"].clone()), (StatusCode::OK, json!("active")));
    // A new session never takes an old id.
    let (_, _, fresh) = cb_call(
        &gw,
        Method::POST,
        Some(&acme),
        "/api/v1/cblr/session",
        Some(&json!({"sensor_id": ids[0].to_string()})),
    )
    .await;
    assert!(fresh["id"].as_i64().unwrap() > sessions.iter().map(|s| s.0).max().unwrap(), "{fresh}");
}

/// R6: one isolation request is one action, named in the audit trail with the door, and
/// `is_isolating` follows the vendor's confirmation, not the request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn isolation_is_one_audited_action_per_request() {
    let (_sims, builder) = sims().await;
    isolation(builder).await;
}

async fn isolation(builder: GatewayBuilder) {
    let gw = builder.start().await;
    let acme = token("acme");
    let sensor = sensor_by_hostname(&gw, &acme, CB_HOST).await;
    let id = sensor["id"].as_i64().unwrap();
    assert_eq!(sensor["is_isolating"], false);
    let path = format!("/api/v1/sensor/{id}");
    // cbapi and XSOAR PUT the whole sensor back: its current state asks for nothing.
    let (status, _, _) = cb_call(&gw, Method::PUT, Some(&acme), &path, Some(&sensor)).await;
    assert_eq!(status, StatusCode::OK);
    let (_, actions) = gw.get(&acme, "/v1/actions").await;
    assert_eq!(actions["items"], json!([]), "{actions:#}");
    let mut body = sensor.clone();
    body["network_isolation_enabled"] = json!(true);
    for _ in 0..2 {
        let (status, _, answer) = cb_call(&gw, Method::PUT, Some(&acme), &path, Some(&body)).await;
        assert_eq!(status, StatusCode::OK, "{answer}");
        assert_eq!(answer["network_isolation_enabled"], true);
    }
    wait_isolating(&gw, &acme, &path, true).await;
    let (_, actions) = gw.get(&acme, "/v1/actions").await;
    let isolations: Vec<&Value> = actions["items"].as_array().unwrap().iter().collect();
    assert_eq!(isolations.len(), 1, "a repeated request is the same action: {actions:#}");
    assert_eq!(isolations[0]["commands"], json!([{"type": "isolate"}]));
    let (_, audit) = gw.get(&acme, "/v1/audit?event=action.submit").await;
    let entries = audit["items"].as_array().unwrap();
    assert!(!entries.is_empty());
    for entry in entries {
        assert_eq!(entry["detail"]["door"], "carbonblack", "{entry:#}");
        assert_eq!(entry["detail"]["sensor_id"], id, "{entry:#}");
        assert_eq!(entry["action_id"], isolations[0]["id"], "{entry:#}");
    }

    // Release, then isolate again: each change of request is a new action.
    body["network_isolation_enabled"] = json!(false);
    let (status, _, answer) = cb_call(&gw, Method::PUT, Some(&acme), &path, Some(&body)).await;
    assert_eq!(
        (status, answer["network_isolation_enabled"].clone()),
        (StatusCode::OK, json!(false))
    );
    wait_isolating(&gw, &acme, &path, false).await;
    let (_, actions) = gw.get(&acme, "/v1/actions").await;
    assert_eq!(actions["items"].as_array().unwrap().len(), 2, "{actions:#}");

    // Without `contain`, refused (403) before anything is requested.
    let reader = common::scoped_token("acme", "reader", &["edrgate:read"]);
    body["network_isolation_enabled"] = json!(true);
    let (status, _, _) = cb_call(&gw, Method::PUT, Some(&reader), &path, Some(&body)).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (_, after) = cb_get(&gw, &acme, &path).await;
    assert_eq!(after["network_isolation_enabled"], false, "{after}");
}

async fn wait_isolating(gw: &Gateway, token: &str, path: &str, isolated: bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let (_, sensor) = cb_get(gw, token, path).await;
        if sensor["is_isolating"] == isolated {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "is_isolating never became {isolated}: {sensor:#}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

const PYTHON_ENV: &str = "EDRGATE_TEST_SDK_PYTHON";

fn python() -> Option<String> {
    let p = std::env::var(PYTHON_ENV).ok().filter(|p| !p.is_empty());
    if p.is_none() {
        eprintln!("skipped: {PYTHON_ENV} is not set (.ci/sdk-venv makes the SDK venv)");
    }
    p
}

/// Runs `script` with the SDK python (in a blocking thread: the gateway and the simulators run
/// on runtimes of their own); the last stdout line that is a JSON object.
async fn run_script(python: &str, dir: &Path, script: &str, args: Vec<String>) -> Value {
    let file = dir.join("cb_front_door.py");
    std::fs::write(&file, script).expect("write script");
    let mut cmd = Command::new(python);
    cmd.arg(&file).args(&args).current_dir(dir);
    let out =
        tokio::task::spawn_blocking(move || cmd.output()).await.expect("join").expect("python");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{}\nstdout:\n{stdout}\nstderr:\n{stderr}", out.status);
    let line = stdout.lines().rev().find(|l| l.starts_with('{'));
    let line = line.unwrap_or_else(|| panic!("no result:\n{stdout}\n{stderr}"));
    serde_json::from_str(line).expect("result json")
}

/// cbapi 2.0 as a user writes it: the URL and the key are all that differ from a CB server.
const CBAPI_SCRIPT: &str = r#"
import json, sys
from cbapi.response import CbResponseAPI, Sensor
from cbapi.errors import UnauthorizedError, ObjectNotFoundError

url, token, other_token, hosts, isolate_host = sys.argv[1:6]
hosts = json.loads(hosts)
cb = CbResponseAPI(url=url, token=token, ssl_verify=False)
out = {"sensors": {}}
for host in hosts:
    sensor = cb.select(Sensor).where("hostname:%s" % host).first()
    entry = {"id": sensor.id, "is_int": isinstance(sensor.id, int), "hostname": sensor.hostname,
             "os_type": sensor.os_type, "status": sensor.status}
    with sensor.lr_session() as session:
        entry["session_id"] = session.session_id
        entry["session_is_int"] = isinstance(session.session_id, int)
        entry["supported"] = session.session_data["supported_commands"]
    out["sensors"][host] = entry

sensor = cb.select(Sensor).where("hostname:%s" % isolate_host).first()
out["isolated"] = sensor.isolate(timeout=60)
out["unisolated"] = sensor.unisolate(timeout=60)

try:
    CbResponseAPI(url=url, token="not-a-key", ssl_verify=False)
    out["bad_token"] = "accepted"
except UnauthorizedError:
    out["bad_token"] = "UnauthorizedError"

other = CbResponseAPI(url=url, token=other_token, ssl_verify=False)
try:
    other.select(Sensor, out["sensors"][hosts[1]]["id"]).hostname
    out["other_tenant"] = "visible"
except ObjectNotFoundError:
    out["other_tenant"] = "ObjectNotFoundError"
print(json.dumps(out))
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cbapi_runs_unchanged_against_three_backends() {
    let Some(python) = python() else { return };
    let (_sims, builder) = sims().await;
    let mut gw = builder.start().await;
    let dir = tempfile::tempdir().unwrap();
    let hosts = json!([CB_HOST, MDE_HOST, CR_HOST]).to_string();
    let args = |front: &TlsFront| {
        vec![front.url("/cb"), token("acme"), token("other"), hosts.clone(), CB_HOST.to_owned()]
    };
    let front = TlsFront::start(gw.addr).await;
    let first = run_script(&python, dir.path(), CBAPI_SCRIPT, args(&front)).await;
    for host in [CB_HOST, MDE_HOST, CR_HOST] {
        let s = &first["sensors"][host];
        assert_eq!(s["is_int"], true, "{first:#}");
        assert_eq!(s["session_is_int"], true, "{first:#}");
        assert_eq!(s["hostname"], host);
        assert_eq!(s["os_type"], 1, "the simulators' devices run Windows: {s}");
        assert_eq!(s["status"], "Online");
    }
    let acme = token("acme");
    for host in [CB_HOST, MDE_HOST, CR_HOST] {
        let supported: Vec<String> =
            serde_json::from_value(first["sensors"][host]["supported"].clone()).unwrap();
        assert_eq!(supported, expected_commands(&gw, &acme, host).await, "{host}");
    }
    assert_eq!(first["isolated"], true);
    assert_eq!(first["unisolated"], true);
    assert_eq!(first["bad_token"], "UnauthorizedError");
    assert_eq!(first["other_tenant"], "ObjectNotFoundError");

    // The sessions cbapi opened, it closed (`with sensor.lr_session()`).
    let (_, open) = cb_get(&gw, &acme, "/api/v1/cblr/session?active_only=true").await;
    assert_eq!(open, json!([]), "cbapi closes its sessions");

    // Sensor ids are durable: the same after a crash and restart.
    gw.crash_and_restart().await;
    let front = TlsFront::start(gw.addr).await;
    let second = run_script(&python, dir.path(), CBAPI_SCRIPT, args(&front)).await;
    for host in [CB_HOST, MDE_HOST, CR_HOST] {
        assert_eq!(second["sensors"][host]["id"], first["sensors"][host]["id"], "{host}");
        assert_ne!(second["sensors"][host]["session_id"], first["sensors"][host]["session_id"]);
    }
}
