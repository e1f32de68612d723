//! The OpenC2 consumer (`POST /.well-known/openc2`, front-doors.md §2) through HTTP against
//! the simulators: `query features` per tenant, the ER pairs reaching the vendors, the
//! `response_requested` semantics, the refusals with their OpenC2 codes, the audit entry with
//! the door, an idempotent retry, and the OASIS lycan types (`openc2` 1.0.5 on PyPI) as an
//! independent producer that builds the commands and validates every response.

use std::process::Command as Process;
use std::time::Duration;

use edrgate_simkit::Sim as _;
use reqwest::StatusCode;
use serde_json::{Value, json};

use edrgate_carbonblack_sim as cb;
use edrgate_cybereason_sim as cr;

mod common;
use common::{Backend, Gateway, token};

const OPENC2: &str = "application/openc2+json;version=1.0";

async fn cb_sim(latency: Duration) -> (cb::Simulator, std::net::SocketAddr) {
    let sim = cb::Simulator::new(cb::SimConfig {
        sensors: 2,
        checkin_delay: Duration::from_millis(20),
        command_latency: latency,
        ..cb::SimConfig::default()
    });
    let addr = sim.spawn().await.unwrap();
    (sim, addr)
}

async fn cr_sim() -> (cr::Simulator, std::net::SocketAddr) {
    let sim = cr::Simulator::new(cr::SimConfig {
        remediation_delay: Duration::from_millis(50),
        ..cr::SimConfig::default()
    });
    let addr = sim.spawn().await.unwrap();
    (sim, addr)
}

/// acme: a Carbon Black and a Cybereason backend; globex: the Carbon Black one only.
async fn gateway(cb: std::net::SocketAddr, cr: std::net::SocketAddr, extra: &str) -> Gateway {
    Gateway::builder()
        .backend("acme", "cb", &Backend::carbonblack(cb).with("poll_interval_ms = 20"))
        .backend("acme", "cr", &Backend::cybereason(cr))
        .backend("globex", "cb", &Backend::carbonblack(cb).with("poll_interval_ms = 20"))
        .config(&format!("[tenants.acme.limits]\nrequests_per_minute = 6000\n{extra}"))
        .start()
        .await
}

/// POSTs `body` (raw) to the door: (HTTP status, headers, the JSON body or `Null` if empty).
async fn post_raw(
    gw: &Gateway,
    bearer: Option<&str>,
    content_type: &str,
    body: Vec<u8>,
    request_id: &str,
) -> (StatusCode, reqwest::header::HeaderMap, Value) {
    let mut request = gw
        .http
        .post(gw.url("/.well-known/openc2"))
        .header("content-type", content_type)
        .header("accept", OPENC2)
        .header("x-request-id", request_id)
        .body(body);
    if let Some(bearer) = bearer {
        request = request.bearer_auth(bearer);
    }
    let response = request.send().await.unwrap();
    let (status, headers) = (response.status(), response.headers().clone());
    let bytes = response.bytes().await.unwrap();
    let value =
        if bytes.is_empty() { Value::Null } else { serde_json::from_slice(&bytes).unwrap() };
    (status, headers, value)
}

/// Sends `command` in the HTTPS v1.1 envelope; returns the HTTP status and the response.
async fn send(gw: &Gateway, bearer: &str, command: Value) -> (StatusCode, Value) {
    // A fresh request id per message: without a command_id it is the idempotency key.
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    let request_id = format!("req-{}", NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed));
    let message = json!({
        "headers": {"request_id": request_id, "created": 1_764_669_990_000u64, "from": "soar-1"},
        "body": {"openc2": {"request": command}}
    });
    let (status, headers, body) =
        post_raw(gw, Some(bearer), OPENC2, serde_json::to_vec(&message).unwrap(), &request_id)
            .await;
    assert_eq!(headers["content-type"], OPENC2, "{body}");
    if body.is_null() {
        return (status, Value::Null);
    }
    assert_eq!(body["headers"]["request_id"], request_id.as_str());
    if status != StatusCode::BAD_REQUEST {
        // A message that did not parse has no producer to name.
        assert_eq!(body["headers"]["to"], json!(["soar-1"]));
    }
    let response = body["body"]["openc2"]["response"].clone();
    // HTTP 200 for 102/200, the body's code otherwise (front-doors.md §2.7).
    let code = response["status"].as_u64().unwrap();
    assert_eq!(u64::from(status.as_u16()), if code < 400 { 200 } else { code }, "{response}");
    (status, response)
}

fn on(hostname: &str) -> Value {
    json!({"downstream_device": {"devices": [{"hostname": hostname}]}})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn query_features_answers_each_tenants_pairs() {
    let (_cb, cb_addr) = cb_sim(Duration::from_millis(5)).await;
    let (_cr, cr_addr) = cr_sim().await;
    let gw = gateway(cb_addr, cr_addr, "").await;
    let features = json!({"action": "query", "target": {"features": ["versions", "profiles", "pairs", "rate_limit"]}});
    let (_, acme) = send(&gw, &token("acme"), features.clone()).await;
    assert_eq!(acme["status"], 200, "{acme}");
    let results = &acme["results"];
    assert_eq!(results["versions"], json!(["1.0"]));
    assert_eq!(results["profiles"], json!(["er", "x-edrgate"]));
    assert_eq!(results["rate_limit"], 6000);
    // The pairs follow the capabilities: contain/allow file only where a backend quarantines.
    let supports = |caps: &Value, kind: &str| {
        caps["items"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["commands"].as_array().unwrap().iter().any(|k| k["command"] == kind))
    };
    for (tenant, answer) in
        [("acme", acme.clone()), ("globex", send(&gw, &token("globex"), features.clone()).await.1)]
    {
        let (_, caps) = gw.get(&token(tenant), "/v1/capabilities").await;
        let pairs = &answer["results"]["pairs"];
        let has = |action: &str, target: &str| {
            pairs[action].as_array().is_some_and(|t| t.iter().any(|x| x == target))
        };
        assert!(has("query", "features") && has("query", "command") && has("cancel", "command"));
        for (action, target, kind) in [
            ("contain", "device", "isolate"),
            ("allow", "device", "release"),
            ("stop", "process", "kill_process"),
            ("delete", "file", "delete_file"),
            ("contain", "file", "quarantine_file"),
            ("set", "er:registry_entry", "registry_set"),
            ("query", "x-edrgate:processes", "process_list"),
        ] {
            assert_eq!(
                has(action, target),
                supports(&caps, kind),
                "{tenant}: {action} {target}: {pairs}"
            );
        }
    }
    assert!(acme["results"]["pairs"]["contain"].as_array().unwrap().contains(&json!("file")));
    // A heartbeat (LS10 §4.2.1) and an argument other than response_requested (LS10 §4.1).
    let (_, heartbeat) =
        send(&gw, &token("acme"), json!({"action": "query", "target": {"features": []}})).await;
    assert_eq!(heartbeat, json!({"status": 200}));
    let (status, refused) = send(
        &gw,
        &token("acme"),
        json!({"action": "query", "target": {"features": []}, "args": {"response_requested": "ack"}}),
    )
    .await;
    assert_eq!((status, refused["status"].clone()), (StatusCode::BAD_REQUEST, json!(400)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn er_commands_reach_the_vendors() {
    let (cb, cb_addr) = cb_sim(Duration::from_millis(5)).await;
    let (cr, cr_addr) = cr_sim().await;
    let gw = gateway(cb_addr, cr_addr, "").await;
    let acme = token("acme");
    let isolate = json!({"action": "contain", "target": {"device": {"hostname": "WIN-0001"}},
                         "args": {"er": {"device_containment": "network_isolation"}}});
    let (_, answer) = send(&gw, &acme, isolate).await;
    assert_eq!(answer["status"], 200, "{answer}");
    assert_eq!(answer["results"]["x-edrgate"]["status"], "succeeded");
    assert!(answer["results"]["x-edrgate"]["action_id"].is_string());
    assert!(cb.is_isolated(1));
    let (_, answer) = send(
        &gw,
        &acme,
        json!({"action": "allow", "target": {"device": {"hostname": "WIN-0001"}}}),
    )
    .await;
    assert_eq!(answer["status"], 200, "{answer}");
    assert!(!cb.is_isolated(1));

    assert!(cb.process_exists(1, 3012));
    let stop = json!({"action": "stop", "target": {"process": {"pid": 3012}}, "args": {"er": on("WIN-0001")}});
    let (_, answer) = send(&gw, &acme, stop).await;
    assert_eq!(answer["status"], 200, "{answer}");
    assert!(!cb.process_exists(1, 3012), "the simulator saw the kill");

    assert!(cb.file_exists(1, "C:\\evidence\\note.txt"));
    // The nested spelling of the actuator specifier names the device here.
    let delete = json!({"action": "delete", "target": {"file": {"path": "C:\\evidence", "name": "note.txt"}},
                        "actuator": {"er": {"hostname": "WIN-0001"}}});
    let (_, answer) = send(&gw, &acme, delete).await;
    assert_eq!(answer["status"], 200, "{answer}");
    assert!(!cb.file_exists(1, "C:\\evidence\\note.txt"));

    let set = json!({"action": "set",
                     "target": {"er:registry_entry": {"key": "HKLM\\SOFTWARE\\Microsoft\\Windows\\CurrentVersion\\RunOnce\\Acme", "type": "REG_SZ", "value": "C:\\acme.exe"}},
                     "args": {"er": on("WIN-0001")}});
    let (_, answer) = send(&gw, &acme, set).await;
    assert_eq!(answer["status"], 200, "{answer}");
    assert_eq!(
        cb.registry_value(1, "HKLM\\SOFTWARE\\Microsoft\\Windows\\CurrentVersion\\RunOnce", "Acme"),
        Some(json!("C:\\acme.exe"))
    );

    // contain file: a Cybereason quarantine.
    let path = "C:\\Users\\jdoe\\AppData\\Local\\Temp\\updater.exe";
    let contain = json!({"action": "contain", "target": {"file": {"path": path}}, "args": {"er": on("CR-WS-0001")}});
    let (_, answer) = send(&gw, &acme, contain).await;
    assert_eq!(answer["status"], 200, "{answer}");
    assert!(cr.is_quarantined("CR-WS-0001", path));

    // x-edrgate: the process list, results in the runs.
    let list = json!({"action": "query", "target": {"x-edrgate": {"processes": {}}}, "args": {"er": on("WIN-0001")}});
    let (_, answer) = send(&gw, &acme, list).await;
    assert_eq!(answer["status"], 200, "{answer}");
    let result = &answer["results"]["x-edrgate"]["runs"][0]["commands"][0]["result"];
    assert_eq!(result["type"], "processes", "{answer}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn response_requested_none_ack_status_complete() {
    // Commands take 3 s on the vendor; `complete` is held at most max_wait_seconds = 1.
    let (cb, cb_addr) = cb_sim(Duration::from_millis(3000)).await;
    let (_cr, cr_addr) = cr_sim().await;
    let gw = gateway(cb_addr, cr_addr, "[server]\nmax_wait_seconds = 1\n").await;
    let acme = token("acme");
    let kill = |pid: u64, rr: &str| {
        json!({"action": "stop", "target": {"process": {"pid": pid}},
               "args": {"response_requested": rr, "er": on("WIN-0002")}})
    };
    let (status, answer) = send(&gw, &acme, kill(2468, "ack")).await;
    assert_eq!((status, answer["status"].clone()), (StatusCode::OK, json!(102)), "{answer}");
    assert!(answer["results"]["x-edrgate"]["action_id"].is_string());
    let (status, answer) = send(&gw, &acme, kill(2044, "status")).await;
    assert_eq!((status, answer["status"].clone()), (StatusCode::OK, json!(102)), "{answer}");
    assert!(answer["results"]["x-edrgate"]["runs"].is_array());
    // none: processed, no response message.
    let (status, answer) = send(&gw, &acme, kill(3012, "none")).await;
    assert_eq!((status, answer), (StatusCode::OK, Value::Null));
    // ...but errors are still reported.
    let (status, answer) = send(&gw, &acme, json!({"action": "deny", "target": {"ipv4_net": "10.0.0.0/8"}, "args": {"response_requested": "none"}})).await;
    assert_eq!((status, answer["status"].clone()), (StatusCode::NOT_IMPLEMENTED, json!(501)));
    // complete past the bound: 102 with the action id, then `query command` to the end.
    let started = std::time::Instant::now();
    let (_, answer) = send(&gw, &acme, kill(1100, "complete")).await;
    assert_eq!(answer["status"], 102, "{answer}");
    assert!(started.elapsed() >= Duration::from_millis(900), "complete waited for the bound");
    let id = answer["results"]["x-edrgate"]["action_id"].as_str().unwrap().to_owned();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let (_, answer) =
            send(&gw, &acme, json!({"action": "query", "target": {"command": id}})).await;
        if answer["status"] == 200 {
            assert_eq!(answer["results"]["x-edrgate"]["status"], "succeeded");
            break;
        }
        assert_eq!(answer["status"], 102, "{answer}");
        assert!(std::time::Instant::now() < deadline, "never finished: {answer}");
    }
    // The `none` command ran too.
    let wait = std::time::Instant::now() + Duration::from_secs(30);
    while cb.process_exists(2, 3012) {
        assert!(std::time::Instant::now() < wait, "the none command never ran");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_are_openc2_responses() {
    let (_cb, cb_addr) = cb_sim(Duration::from_millis(5)).await;
    let (_cr, cr_addr) = cr_sim().await;
    let gw = gateway(cb_addr, cr_addr, "").await;
    let acme = token("acme");
    // Malformed JSON, a wrong content type, no token: OpenC2 bodies, the request id echoed.
    for (bearer, content_type, body, code) in [
        (Some(acme.as_str()), OPENC2, b"{not json".to_vec(), 400),
        (
            Some(acme.as_str()),
            "text/plain",
            br#"{"action":"query","target":{"features":[]}}"#.to_vec(),
            400,
        ),
        (None, OPENC2, br#"{"action":"query","target":{"features":[]}}"#.to_vec(), 401),
        (Some(acme.as_str()), OPENC2, vec![b' '; 70_000], 400),
    ] {
        let (status, headers, body) = post_raw(&gw, bearer, content_type, body, "req-oc2-1").await;
        assert_eq!(status.as_u16(), code, "{body}");
        assert_eq!(headers["content-type"], OPENC2);
        assert_eq!(headers["x-request-id"], "req-oc2-1");
        // A bare command is answered bare; otherwise the envelope carries the request id.
        let response = if body.get("body").is_some() {
            assert_eq!(body["headers"]["request_id"], "req-oc2-1", "{body}");
            &body["body"]["openc2"]["response"]
        } else {
            &body
        };
        assert_eq!(response["status"], code);
        assert!(response["status_text"].as_str().is_some_and(|t| !t.is_empty()));
    }
    // Only POST.
    let get = gw.http.get(gw.url("/.well-known/openc2")).send().await.unwrap();
    assert_eq!(get.status(), StatusCode::BAD_REQUEST);
    assert_eq!(get.headers()["allow"], "POST");
    assert_eq!(get.headers()["content-type"], OPENC2);

    let stop =
        |args: Value| json!({"action": "stop", "target": {"process": {"pid": 1}}, "args": args});
    let other_tenant = json!({"er": {"downstream_device": {"devices": [{"hostname": "WIN-0001"}], "tenant_id": "globex"}}});
    let cases = [
        (stop(other_tenant), 403),
        (stop(json!({"er": on("NO-SUCH-HOST")})), 404),
        (json!({"action": "deny", "target": {"ipv4_net": "10.0.0.0/8"}}), 501),
        (json!({"action": "scan", "target": {"device": {"hostname": "WIN-0001"}}}), 501),
        (json!({"action": "contain", "target": {"device": {"hostname": "WIN-0001"}}}), 400),
        (json!({"action": "explode", "target": {"device": {}}}), 400),
    ];
    for (command, code) in cases {
        let (status, answer) = send(&gw, &acme, command.clone()).await;
        assert_eq!(status.as_u16(), code, "{command}: {answer}");
        assert_eq!(answer["status"], code);
    }
    let (_, answer) =
        send(&gw, &acme, json!({"action": "deny", "target": {"ipv4_net": "10.0.0.0/8"}})).await;
    assert_eq!(answer["status_text"], "Command not supported");

    // Tenant isolation: globex cannot follow acme's command up.
    let (_, answer) = send(&gw, &acme, json!({"action": "query", "target": {"x-edrgate:processes": {}}, "args": {"er": on("WIN-0001")}})).await;
    let id = answer["results"]["x-edrgate"]["action_id"].as_str().unwrap().to_owned();
    let (status, answer) =
        send(&gw, &token("globex"), json!({"action": "query", "target": {"command": id}})).await;
    assert_eq!((status, answer["status"].clone()), (StatusCode::NOT_FOUND, json!(404)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_command_runs_once_and_is_audited_with_the_door() {
    let (_cb, cb_addr) = cb_sim(Duration::from_millis(5)).await;
    let (_cr, cr_addr) = cr_sim().await;
    let gw = gateway(cb_addr, cr_addr, "").await;
    let acme = token("acme");
    let command = json!({"action": "stop", "target": {"process": {"pid": 3012}},
                         "args": {"er": on("WIN-0001")}, "command_id": "soar-cmd-42"});
    let (_, first) = send(&gw, &acme, command.clone()).await;
    let (_, second) = send(&gw, &acme, command).await;
    assert_eq!(first["status"], 200, "{first}");
    let id = first["results"]["x-edrgate"]["action_id"].clone();
    assert_eq!(second["results"]["x-edrgate"]["action_id"], id, "a retry is the same action");
    let (_, actions) = gw.get(&acme, "/v1/actions").await;
    assert_eq!(actions["items"].as_array().unwrap().len(), 1, "{actions:#}");
    let (_, audit) = gw.get(&acme, "/v1/audit?event=action.submit").await;
    let entries = audit["items"].as_array().unwrap();
    assert_eq!(entries.len(), 2, "{audit:#}");
    for entry in entries {
        assert_eq!(entry["detail"]["door"], "openc2", "{entry:#}");
        assert_eq!(entry["detail"]["command_id"], "soar-cmd-42", "{entry:#}");
        assert_eq!(entry["action_id"], id, "{entry:#}");
    }
}

/// The lycan producer: builds each command with `openc2.v10`, sends it bare (as lycan
/// serialises), parses each answer with `openc2.parse` and checks the status.
const LYCAN_PRODUCER: &str = r#"
import json, sys
import requests
import openc2
from openc2 import v10

url, bearer = sys.argv[1], sys.argv[2]
er = {"downstream_device": {"devices": [{"hostname": "WIN-0001"}]}}
commands = [
    ("features", v10.Command(action="query", target=v10.Features(["versions", "profiles", "pairs", "rate_limit"])), 200),
    ("heartbeat", v10.Command(action="query", target=v10.Features([])), 200),
    ("contain", v10.Command(action="contain", target=v10.Device(hostname="WIN-0001"),
        args=v10.Args(allow_custom=True, er={"device_containment": "network_isolation"})), 200),
    ("allow", v10.Command(action="allow", target=v10.Device(hostname="WIN-0001")), 200),
    ("stop", v10.Command(action="stop", target=v10.Process(pid=3012),
        args=v10.Args(response_requested="complete", allow_custom=True, er=er)), 200),
    ("ack", v10.Command(action="stop", target=v10.Process(pid=2468),
        args=v10.Args(response_requested="ack", allow_custom=True, er=er)), 102),
    ("delete", v10.Command(action="delete", target=v10.File(path="C:\\evidence\\note.txt"),
        args=v10.Args(allow_custom=True, er=er)), 200),
    ("unsupported", v10.Command(action="deny", target=v10.IPv4Address(ipv4_net="10.0.0.0/8")), 501),
]
out = {}
for name, command, expected in commands:
    r = requests.post(url, data=command.serialize(), headers={
        "Authorization": "Bearer " + bearer,
        "Content-type": "application/openc2+json;version=1.0",
        "Accept": "application/openc2+json;version=1.0"}, timeout=60)
    assert r.headers["Content-type"] == "application/openc2+json;version=1.0", r.headers
    response = openc2.parse(r.text)
    assert isinstance(response, v10.Response), (name, r.text)
    assert response.status == expected, (name, r.status_code, r.text)
    out[name] = json.loads(response.serialize())
print(json.dumps(out))
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_lycan_producer_drives_the_consumer() {
    let Some(python) = std::env::var("EDRGATE_TEST_SDK_PYTHON").ok().filter(|p| !p.is_empty())
    else {
        eprintln!("skipped: EDRGATE_TEST_SDK_PYTHON is not set (.ci/sdk-venv makes the venv)");
        return;
    };
    let (cb, cb_addr) = cb_sim(Duration::from_millis(5)).await;
    let (_cr, cr_addr) = cr_sim().await;
    let gw = gateway(cb_addr, cr_addr, "").await;
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("producer.py");
    std::fs::write(&script, LYCAN_PRODUCER).unwrap();
    let mut cmd = Process::new(python);
    cmd.arg(&script).arg(gw.url("/.well-known/openc2")).arg(token("acme"));
    let out = tokio::task::spawn_blocking(move || cmd.output()).await.unwrap().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    let answers: Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    assert_eq!(answers["features"]["results"]["versions"], json!(["1.0"]));
    assert_eq!(answers["heartbeat"], json!({"status": 200}));
    assert_eq!(answers["unsupported"]["status_text"], "Command not supported");
    assert!(!cb.process_exists(1, 3012));
    assert!(!cb.file_exists(1, "C:\\evidence\\note.txt"));
}

/// Behind a proxy that forwards under `server.path_prefix`, the door is there too (and only
/// there), with the doors' request id echoed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_door_sits_under_the_path_prefix() {
    let (_cb, cb_addr) = cb_sim(Duration::from_millis(5)).await;
    let (_cr, cr_addr) = cr_sim().await;
    let gw = gateway(cb_addr, cr_addr, "[server]\npath_prefix = \"/edrgate\"").await;
    let features = json!({
        "headers": {"request_id": "prefixed-1", "created": 1_764_669_990_000u64},
        "body": {"openc2": {"request": {"action": "query", "target": {"features": ["versions"]}}}}
    });
    let post = |path: &str| {
        gw.http
            .post(gw.url(path))
            .bearer_auth(token("acme"))
            .header("content-type", OPENC2)
            .header("x-request-id", "prefixed-1")
            .json(&features)
            .send()
    };
    let answer = post("/edrgate/.well-known/openc2").await.unwrap();
    assert_eq!(answer.status(), StatusCode::OK);
    assert_eq!(answer.headers()["x-request-id"], "prefixed-1");
    let body: Value = answer.json().await.unwrap();
    assert_eq!(body["body"]["openc2"]["response"]["results"]["versions"], json!(["1.0"]));
    assert_eq!(post("/.well-known/openc2").await.unwrap().status(), StatusCode::NOT_FOUND);
}
