//! End to end: the gateway and the Defender simulator in one process, over real HTTP on
//! loopback, driven only through `/v1`.

use edrgate_simkit::Sim as _;
use std::time::Duration;

use edrgate_defender_sim::{Faults, SimConfig, Simulator, machine_id};
use reqwest::StatusCode;
use serde_json::{Value, json};

mod common;
use common::{Backend, Gateway, token};

/// A running gateway in front of a new simulator: tenant `acme`, backend `mde` with the
/// adapter `settings` of the test.
async fn start(sim: SimConfig, settings: &str) -> (Gateway, Simulator) {
    let sim = Simulator::new(sim);
    let mde = Backend::defender(sim.spawn().await.unwrap())
        .with("visibility_grace_secs = 3")
        .with(settings);
    let gw = Gateway::builder()
        .config("server.max_body_bytes = 65536\nengine.lease_seconds = 1")
        .backend("acme", "mde", &mde)
        .start()
        .await;
    (gw, sim)
}

/// Uploads `bytes` as tenant `acme`; the file's id.
async fn upload(gw: &Gateway, name: &str, bytes: Vec<u8>) -> String {
    let r = gw.upload(&token("acme"), name, bytes).await;
    assert_eq!(r.status(), StatusCode::CREATED);
    let meta: Value = r.json().await.unwrap();
    meta["id"].as_str().unwrap().to_owned()
}

fn commands(action: &Value) -> Vec<Value> {
    action["runs"][0]["commands"].as_array().unwrap().clone()
}

fn statuses(action: &Value) -> Vec<String> {
    commands(action).iter().map(|c| c["status"].as_str().unwrap().to_owned()).collect()
}

fn device(n: usize) -> Value {
    json!({"backend": "mde", "device_id": machine_id(n)})
}

#[tokio::test]
async fn every_command_kind_returns_the_typed_result_shapes() {
    let (gw, sim) = start(SimConfig::default(), "").await;
    let acme = token("acme");
    let payload = upload(&gw, "tool.exe", b"MZ payload".to_vec()).await;
    let reads = gw
        .run(&acme, &json!({
            "targets": [{"hostname": "mde-0001"}],
            "commands": [
                {"type": "run_script", "script": "collect.ps1", "args": ["--all"]},
                {"type": "process_list"},
                {"type": "list_directory", "path": "C:\\evidence"},
                {"type": "registry_list", "key": "HKLM\\SOFTWARE\\Microsoft\\Windows\\CurrentVersion\\Run"},
                {"type": "registry_get", "key": "HKLM\\SYSTEM\\CurrentControlSet\\Services\\Sense", "value": "Start"},
                {"type": "get_file", "path": "C:\\evidence\\note.txt"},
            ],
        }))
        .await;
    assert_eq!(reads["status"], "succeeded", "{reads}");
    let writes = gw
        .run(&acme, &json!({
            "targets": [{"hostname": "mde-0001"}],
            "commands": [
                {"type": "put_file", "file_id": payload, "path": "C:\\Users\\Public\\tool.exe"},
                {"type": "execute", "command_line": "whoami"},
                {"type": "kill_process", "pid": 4242},
                {"type": "registry_set", "key": "HKLM\\SOFTWARE\\Microsoft", "value": "x", "value_type": "REG_SZ", "data": "y"},
                {"type": "registry_create_key", "key": "HKLM\\SOFTWARE\\edrgate"},
                {"type": "registry_delete_value", "key": "HKLM\\SOFTWARE\\Microsoft", "value": "x"},
                {"type": "registry_delete_key", "key": "HKLM\\SOFTWARE\\edrgate"},
                {"type": "create_directory", "path": "C:\\evidence\\out"},
                {"type": "delete_file", "path": "C:\\evidence\\note.txt"},
                {"type": "isolate"},
                {"type": "release"},
            ],
        }))
        .await;
    assert_eq!(writes["status"], "succeeded", "{writes}");
    let expected = [
        (&reads, 0, "execution"),
        (&reads, 1, "processes"),
        (&reads, 2, "directory"),
        (&reads, 3, "registry_key"),
        (&reads, 4, "registry_value"),
        (&reads, 5, "file"),
        (&writes, 0, "done"),
        (&writes, 1, "execution"),
        (&writes, 2, "done"),
        (&writes, 3, "done"),
        (&writes, 4, "done"),
        (&writes, 5, "done"),
        (&writes, 6, "done"),
        (&writes, 7, "done"),
        (&writes, 8, "done"),
        (&writes, 9, "containment"),
        (&writes, 10, "containment"),
    ];
    for (action, i, kind) in expected {
        let c = &commands(action)[i];
        assert_eq!(c["result"]["type"], kind, "{c}");
    }
    // The same fields the Carbon Black adapter fills.
    let r = commands(&reads);
    assert_eq!(r[0]["result"]["exit_code"], 0);
    assert!(r[0]["result"]["output_file"]["sha256"].is_string());
    assert!(
        r[1]["result"]["processes"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["pid"] == 4242 && p["name"] == "notepad.exe")
    );
    assert!(
        r[2]["result"]["entries"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["name"] == "note.txt" && e["is_directory"] == false)
    );
    assert_eq!(
        r[4]["result"]["value"],
        json!({"name": "Start", "value_type": "REG_DWORD", "data": 2})
    );
    let file = &r[5]["result"]["file"];
    assert_eq!(
        gw.download(&acme, file["file_id"].as_str().unwrap()).await,
        edrgate_defender_sim::NOTE_TXT
    );
    let w = commands(&writes);
    assert_eq!(w[1]["result"]["output"], "nt authority\\system\r\n");
    assert_eq!(w[9]["result"]["isolated"], true);
    assert_eq!(w[10]["result"]["isolated"], false);
    let m1 = machine_id(1);
    assert_eq!(
        sim.file_content(&m1, "C:\\Users\\Public\\tool.exe").as_deref(),
        Some(&b"MZ payload"[..])
    );
    assert!(!sim.process_exists(&m1, 4242));
    // memory_dump is the one command Defender backends do not offer.
    let (status, problem) = gw
        .post(
            &acme,
            "/v1/actions",
            &json!({"targets": [device(1)], "commands": [{"type": "memory_dump"}]}),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{problem}");
    assert_eq!(problem["code"], "unsupported_command");
    let c = sim.counters();
    assert_eq!((c.responses_429, c.downloads_with_bearer), (0, 0));
}

#[tokio::test]
async fn a_four_command_run_is_one_machine_action() {
    let (gw, sim) = start(SimConfig::default(), "").await;
    let acme = token("acme");
    let action = gw
        .run(
            &acme,
            &json!({
                "targets": [device(2)],
                "commands": [
                    {"type": "run_script", "script": "collect.ps1"},
                    {"type": "process_list"},
                    {"type": "list_directory", "path": "C:\\evidence"},
                    {"type": "get_file", "path": "C:\\evidence\\big.bin"},
                ],
                "comment": "ticket 42",
            }),
        )
        .await;
    assert_eq!(statuses(&action), ["succeeded"; 4]);
    assert_eq!(sim.counters().live_response_actions, 1);
    let (_, _, comment) = sim.actions().remove(0);
    assert!(comment.starts_with("edrgate:") && comment.ends_with(" ticket 42"), "{comment}");
    let vendor_ref = commands(&action)[3]["vendor_ref"].as_str().unwrap().to_owned();
    assert!(vendor_ref.ends_with("/3"), "{vendor_ref}");
}

#[tokio::test]
async fn on_error_both_ways_and_file_not_found_keeps_the_vendor_text() {
    let (gw, sim) = start(SimConfig::default(), "").await;
    let acme = token("acme");
    let stop = gw
        .run(&acme, &json!({
            "targets": [device(1)],
            "commands": [{"type": "get_file", "path": "C:\\nope.txt"}, {"type": "process_list"}],
        }))
        .await;
    assert_eq!(statuses(&stop), ["failed", "skipped"]);
    let error = &commands(&stop)[0]["error"];
    assert_eq!(error["code"], "file_not_found");
    assert_eq!(error["vendor_code"], "0x80070002");
    assert_eq!(error["vendor_message"], "File C:\\nope.txt was not found on the device");
    let cont = gw
        .run(&acme, &json!({
            "targets": [device(1)],
            "commands": [{"type": "get_file", "path": "C:\\nope.txt"}, {"type": "process_list"}],
            "on_error": "continue",
        }))
        .await;
    assert_eq!(statuses(&cont), ["failed", "succeeded"]);
    // 1 (stop) + 2 (continue: the batch was split after Defender stopped it).
    assert_eq!(sim.counters().live_response_actions, 3);
}

#[tokio::test]
async fn sixty_actions_stay_within_the_vendor_budgets() {
    // The 10-per-minute budget scaled to 10 per 2 s, and the other endpoints' 100 per minute
    // with it (each run reads its machine once); the session cap as in production.
    let sim = SimConfig {
        machines: 60,
        live_response_calls: 10,
        live_response_window: Duration::from_secs(2),
        api_calls_per_minute: 3000,
        pickup_delay: Duration::from_millis(300),
        ..SimConfig::default()
    };
    let settings =
        "live_response_calls = 10\nlive_response_window_ms = 2000\napi_calls_per_minute = 3000";
    let (gw, sim) = start(sim, settings).await;
    let acme = token("acme");
    let mut actions = Vec::new();
    for n in 1..=60 {
        actions.push(
            gw.submit(
                &acme,
                &json!({"targets": [device(n)], "commands": [{"type": "process_list"}]}),
            )
            .await,
        );
    }
    for a in &actions {
        let done = gw.wait_terminal(&acme, a).await;
        assert_eq!(done["status"], "succeeded", "{done}");
    }
    let c = sim.counters();
    assert_eq!(c.responses_429, 0, "{c:?}");
    assert!(c.max_concurrent_sessions <= 25, "{c:?}");
    assert_eq!(c.live_response_actions, 60);
    // Rate while work was queued: after the first full window, calls should come at the
    // budget's pace (10 per 2 s).
    let t = sim.live_response_arrivals();
    let span = (t[59] - t[0]).as_secs_f64();
    let rate = 50.0 / span;
    let budget = 10.0 / 2.0;
    eprintln!(
        "60 actions: runliveresponse calls over {span:.2} s, {rate:.2}/s steady against a budget of {budget}/s ({:.0}%); max live sessions {}",
        100.0 * rate / budget,
        c.max_concurrent_sessions
    );
    // 80%: the gate spaces calls evenly (one per 200 ms, a burst of one) and never makes up a
    // call that left late, so on a loaded machine each scheduling delay is lost for good (86%
    // seen with a release build beside the suite); a gateway that paced at the wrong window or
    // waited a window too many would be at 50% or less.
    assert!(rate >= 0.8 * budget, "rate {rate:.2}/s below 80% of {budget}/s (span {span:.2} s)");
}

#[tokio::test]
async fn expired_download_links_never_lose_a_result() {
    let (gw, sim) = start(SimConfig::default(), "").await;
    let acme = token("acme");
    sim.refuse_next_downloads(2);
    let action = gw
        .run(&acme, &json!({"targets": [device(3)], "commands": [{"type": "get_file", "path": "C:\\evidence\\big.bin"}]}))
        .await;
    assert_eq!(statuses(&action), ["succeeded"]);
    let file = &commands(&action)[0]["result"]["file"];
    assert_eq!(file["size"], 1024 * 1024);
    let bytes = gw.download(&acme, file["file_id"].as_str().unwrap()).await;
    assert_eq!(bytes, sim.file_content(&machine_id(3), "C:\\evidence\\big.bin").unwrap());
    let c = sim.counters();
    assert_eq!((c.expired_downloads, c.downloads, c.links_issued), (2, 1, 3));
}

#[tokio::test]
async fn a_token_expiring_mid_run_is_refreshed() {
    // Tokens live 1 s; the action takes longer than that.
    let sim = SimConfig {
        token_lifetime: Duration::from_secs(1),
        pickup_delay: Duration::from_millis(2500),
        ..SimConfig::default()
    };
    let (gw, sim) = start(sim, "").await;
    let acme = token("acme");
    let action = gw
        .submit(&acme, &json!({"targets": [device(1)], "commands": [{"type": "process_list"}]}))
        .await;
    tokio::time::sleep(Duration::from_millis(1200)).await;
    sim.expire_tokens();
    let done = gw.wait_terminal(&acme, &action).await;
    assert_eq!(statuses(&done), ["succeeded"]);
    let c = sim.counters();
    assert!(c.tokens_issued >= 2, "{c:?}");
}

#[tokio::test]
async fn restart_mid_run_reconciles_through_the_comment_tag() {
    let (mut gw, sim) = start(SimConfig::default(), "").await;
    let acme = token("acme");
    // Answers come late, so the gateway dies after Defender created the action but before it
    // learned the action's id.
    sim.set_faults(Faults { slow_response: Some(Duration::from_millis(700)), ..Faults::default() });
    let action = gw
        .submit(
            &acme,
            &json!({"targets": [device(2)], "commands": [{"type": "kill_process", "pid": 4242}]}),
        )
        .await;
    // (Every answer is 700 ms late: the token, the machine and the library come first.)
    for _ in 0..2000 {
        if sim.counters().live_response_actions > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(sim.counters().live_response_actions, 1);
    gw.crash_and_restart().await;
    sim.set_faults(Faults::default());
    let done = gw.wait_terminal(&acme, &action).await;
    assert_eq!(statuses(&done), ["succeeded"], "{done}");
    let c = sim.counters();
    assert_eq!(c.live_response_actions, 1, "{c:?}");
    assert_eq!(c.helper_runs.get("kill_process"), Some(&1));
}

#[tokio::test]
async fn a_put_file_above_the_library_cap_is_refused_before_any_vendor_call() {
    let (gw, sim) = start(SimConfig::default(), "").await;
    let acme = token("acme");
    let big = upload(&gw, "big.bin", vec![7u8; 20 * 1024 * 1024 + 1]).await;
    let (status, problem) = gw
        .post(
            &acme,
            "/v1/actions",
            &json!({"targets": [device(1)], "commands": [{"type": "put_file", "file_id": big, "path": "C:\\big.bin"}]}),
        )
        .await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{problem}");
    assert_eq!(problem["code"], "payload_too_large");
    assert!(problem["detail"].as_str().unwrap_or_default().contains("20971520"), "{problem}");
    assert_eq!(sim.counters().requests, 0);
}
