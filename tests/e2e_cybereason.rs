//! End to end: the gateway and the Cybereason simulator in one process, over real HTTP on
//! loopback, driven only through `/v1`.

use edrgate_simkit::Sim as _;
use std::time::Duration;

use edrgate_cybereason_sim::{SimConfig, Simulator};
use reqwest::StatusCode;
use serde_json::{Value, json};
use sha2::{Digest as _, Sha256};

mod common;
use common::{Backend, Gateway, GatewayBuilder, token};

/// A new simulator, and a gateway's configuration with tenant `acme`'s backend `cr` on it
/// (`settings` over the backend's).
async fn cybereason(sim: SimConfig, settings: &str) -> (Simulator, GatewayBuilder) {
    let sim = Simulator::new(sim);
    let cr = Backend::cybereason(sim.spawn().await.unwrap()).with(settings);
    (sim, Gateway::builder().config("engine.lease_seconds = 1").backend("acme", "cr", &cr))
}

/// A running gateway with tenant `acme` and backend `cr` in front of a new simulator.
async fn start(sim: SimConfig) -> (Gateway, Simulator) {
    let (sim, gw) = cybereason(sim, "").await;
    (gw.start().await, sim)
}

fn sim() -> SimConfig {
    SimConfig { remediation_delay: Duration::from_millis(200), ..SimConfig::default() }
}

fn command(action: &Value, run: usize, index: usize) -> &Value {
    &action["runs"][run]["commands"][index]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_file_by_path_matches_the_endpoint_file() {
    let (gw, sim) = start(sim()).await;
    let acme = token("acme");
    let path = "C:\\Users\\jdoe\\AppData\\Local\\Temp\\updater.exe";
    let done = gw
        .run(
            &acme,
            &json!({"targets": [{"hostname": "CR-WS-0001"}],
                    "commands": [{"type": "get_file", "path": path}]}),
        )
        .await;
    assert_eq!(done["status"], "succeeded", "{done:#}");
    let file = &command(&done, 0, 0)["result"]["file"];
    let expected = sim.file_content("CR-WS-0001", path).unwrap();
    assert_eq!(file["size"], expected.len());
    assert_eq!(file["sha256"], hex::encode(Sha256::digest(&expected)));
    let content = gw.download(&acme, file["file_id"].as_str().unwrap()).await;
    assert_eq!(content, expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_quarantine_isolate_release() {
    let (gw, sim) = start(sim()).await;
    let acme = token("acme");
    let done = gw
        .run(&acme, &json!({"targets": [{"hostname": "CR-WS-0002"}],
        "commands": [
            {"type": "kill_process", "pid": 3012},
            {"type": "quarantine_file", "path": "C:\\Users\\jdoe\\AppData\\Local\\Temp\\updater.exe"},
            {"type": "isolate"},
        ]}))
        .await;
    assert_eq!(done["status"], "succeeded", "{done:#}");
    assert!(!sim.process_exists("CR-WS-0002", 3012));
    assert!(sim.is_quarantined("CR-WS-0002", "C:\\Users\\jdoe\\AppData\\Local\\Temp\\updater.exe"));
    assert!(sim.is_isolated("CR-WS-0002"));
    assert_eq!(command(&done, 0, 0)["vendor_status"], "SUCCESS");
    assert_eq!(command(&done, 0, 2)["result"], json!({"type": "containment", "isolated": true}));

    let done = gw
        .run(
            &acme,
            &json!({"targets": [{"hostname": "CR-WS-0002"}], "commands": [{"type": "release"}]}),
        )
        .await;
    assert_eq!(done["status"], "succeeded", "{done:#}");
    assert!(!sim.is_isolated("CR-WS-0002"));
    let c = sim.counters();
    assert_eq!(
        (c.remediations_received, c.remediations_executed, c.isolations, c.unisolations),
        (2, 2, 1, 1)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ir_tool_on_several_sensors_with_one_failing() {
    let (gw, sim) = start(SimConfig { ir_fail_hosts: vec!["CR-WS-0003".into()], ..sim() }).await;
    let acme = token("acme");
    // The package comes from edrgate's file store and is uploaded as the tool.
    let r = gw.upload(&acme, "triage.ps1", "Get-Process | Out-File C:\\ir\\p.txt").await;
    assert_eq!(r.status(), StatusCode::CREATED);
    let file_id = r.json::<Value>().await.unwrap()["id"].as_str().unwrap().to_owned();
    let done = gw
        .run(&acme, &json!({"targets": [{"hostname": "CR-WS-0001"}, {"hostname": "CR-WS-0002"}, {"hostname": "CR-WS-0003"}],
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
    assert_eq!(sim.counters().ir_runs, 3);
    assert_eq!(sim.counters().logins, 1, "three runs share one session");
    assert!(sim.packages().contains(&"triage.ps1".to_owned()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cookie_expiring_mid_run_logs_in_again_and_remediates_once() {
    let (gw, sim) =
        start(SimConfig { remediation_delay: Duration::from_millis(800), ..sim() }).await;
    let acme = token("acme");
    let action = gw
        .submit(
            &acme,
            &json!({"targets": [{"hostname": "CR-WS-0001"}],
                       "commands": [{"type": "kill_process", "pid": 4242}]}),
        )
        .await;
    while sim.counters().remediations_received == 0 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    sim.expire_sessions();
    let done = gw.wait_terminal(&acme, &action).await;
    assert_eq!(done["status"], "succeeded", "{done:#}");
    let c = sim.counters();
    assert_eq!((c.remediations_received, c.remediations_executed), (1, 1));
    assert_eq!(c.logins, 2, "one login, one re-login");
    assert!(c.session_redirects >= 1);

    // Lost exactly on the action request: reconciled against the console, sent once.
    sim.expire_session_before("/rest/remediate");
    let done = gw
        .run(
            &acme,
            &json!({"targets": [{"hostname": "CR-WS-0001"}],
                    "commands": [{"type": "kill_process", "pid": 2480}]}),
        )
        .await;
    assert_eq!(done["status"], "succeeded", "{done:#}");
    assert_eq!(sim.counters().remediations_received, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_login_is_vendor_auth_failed_on_the_action() {
    let (sim, gw) = cybereason(sim(), "password = \"wrong-password\"").await;
    let gw = gw.start().await;
    let acme = token("acme");
    let done = tokio::time::timeout(
        Duration::from_secs(30),
        gw.run(&acme, &json!({"targets": [{"backend": "cr", "device_id": sim.pylum_id("CR-WS-0001").unwrap()}],
                      "commands": [{"type": "isolate"}]})),
    )
    .await
    .expect("no hang");
    assert_eq!(done["status"], "failed", "{done:#}");
    let run = &done["runs"][0];
    let code = command(&done, 0, 0)["error"]["code"].as_str().or(run["error"]["code"].as_str());
    assert_eq!(code, Some("vendor_auth_failed"), "{done:#}");
    assert_eq!(sim.counters().isolations, 0);
    assert!(sim.counters().login_failures >= 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsupported_commands_are_refused_before_any_vendor_call() {
    let (gw, sim) = start(sim()).await;
    let acme = token("acme");
    for command in [
        json!({"type": "execute", "command_line": "cmd /c whoami"}),
        json!({"type": "list_directory", "path": "C:\\"}),
        json!({"type": "memory_dump"}),
        // Remediation without a malop is for processes and files only (§6.3).
        json!({"type": "registry_delete_key", "key": "HKLM\\SOFTWARE\\Acme"}),
    ] {
        let (status, problem) = gw
            .post(
                &acme,
                "/v1/actions",
                &json!({"targets": [{"backend": "cr", "device_id": "PYLUMCLIENT_X"}], "commands": [command]}),
            )
            .await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{problem}");
        assert_eq!(problem["code"], "unsupported_command");
    }
    let c = sim.counters();
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
    let (sim, gw) = cybereason(sim(), "").await;
    let gw = gw.backend("acme", "cb", &Backend::carbonblack(cb_addr)).start().await;
    let acme = token("acme");
    // Every command both backends support, with one body for both devices.
    for commands in [
        json!([{"type": "get_file", "path": "C:\\evidence\\note.txt"}]),
        json!([{"type": "kill_process", "pid": 3012}]),
        json!([{"type": "isolate"}]),
        json!([{"type": "release"}]),
    ] {
        let done = gw
            .run(&acme, &json!({"targets": [{"hostname": "WIN-0001"}, {"hostname": "CR-WS-0001"}], "commands": commands}))
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
    assert!(!sim.process_exists("CR-WS-0001", 3012) && !cb_sim.process_exists(1, 3012));
    let c = sim.counters();
    assert_eq!((c.remediations_executed, c.isolations, c.unisolations), (1, 1, 1));

    // delete_file: Carbon Black deletes; Cybereason has only the (reversible) quarantine, and
    // says to use it rather than calling a move a delete.
    let path = "C:\\Users\\jdoe\\AppData\\Local\\Temp\\updater.exe";
    let body = json!({"targets": [{"hostname": "WIN-0001"}, {"hostname": "CR-WS-0001"}],
                      "commands": [{"type": "delete_file", "path": path}]});
    let done = gw.run(&acme, &body).await;
    assert_eq!(done["status"], "partially_succeeded", "{done:#}");
    assert_eq!(command(&done, 0, 0)["status"], "succeeded", "{done:#}");
    let refused = command(&done, 1, 0);
    assert_eq!(refused["error"]["code"], "unsupported_command", "{done:#}");
    let why = refused["error"]["message"].as_str().unwrap();
    assert!(why.contains("use quarantine_file"), "{why}");
    assert!(sim.file_content("CR-WS-0001", path).is_some(), "nothing done on Cybereason");
    assert_eq!(sim.counters().remediations_received, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quarantine_file_then_unquarantine_file_through_the_api() {
    let (gw, sim) = start(sim()).await;
    let acme = token("acme");
    let path = "C:\\Windows\\System32\\drivers\\etc\\hosts";
    let content = sim.file_content("CR-WS-0003", path).unwrap();
    // What the backend says it does: a reversible move, of indexed files only.
    let (status, caps) = gw.get(&acme, "/v1/capabilities").await;
    assert_eq!(status, StatusCode::OK, "{caps:#}");
    let items = caps["items"].as_array().unwrap();
    let cr = items.iter().find(|b| b["backend"] == "cr").unwrap();
    let listed = |kind: &str| {
        cr["commands"].as_array().unwrap().iter().find(|c| c["command"] == kind).cloned()
    };
    let note = listed("quarantine_file").expect("quarantine_file offered");
    let note = note["notes"].as_str().unwrap();
    assert!(note.contains("reversible") && note.contains("indexed"), "{note}");
    assert!(listed("unquarantine_file").is_some(), "{cr:#}");
    assert!(listed("delete_file").is_none(), "{cr:#}");

    let quarantine = json!({"targets": [{"hostname": "CR-WS-0003"}],
                            "commands": [{"type": "quarantine_file", "path": path}]});
    let done = gw.run(&acme, &quarantine).await;
    assert_eq!(done["status"], "succeeded", "{done:#}");
    assert_eq!(command(&done, 0, 0)["result"], json!({"type": "done"}));
    assert_eq!(command(&done, 0, 0)["vendor_status"], "SUCCESS");
    assert!(sim.is_quarantined("CR-WS-0003", path));
    assert_eq!(sim.file_content("CR-WS-0003", path), None);

    let back = json!({"targets": [{"hostname": "CR-WS-0003"}],
                      "commands": [{"type": "unquarantine_file", "path": path}]});
    let done = gw.run(&acme, &back).await;
    assert_eq!(done["status"], "succeeded", "{done:#}");
    assert!(!sim.is_quarantined("CR-WS-0003", path));
    assert_eq!(sim.file_content("CR-WS-0003", path), Some(content));
    let c = sim.counters();
    assert_eq!((c.remediations_received, c.remediations_executed), (2, 2));
}
