//! Per-device capabilities, through `/v1` with the Carbon Black simulator: `GET /v1/devices`
//! says per sensor what runs and why the rest does not, and a run refuses what its resolved
//! sensor cannot do before anything is sent to the vendor.

use edrgate_simkit::Sim as _;
use std::time::Duration;

use edrgate_carbonblack_sim::{SensorSpec, SimConfig, Simulator};
use reqwest::StatusCode;
use serde_json::{Value, json};

mod common;
use common::{Backend, Gateway, token};

const REG_KEY: &str = "HKLM\\SOFTWARE\\Microsoft\\Windows\\CurrentVersion\\Run";

/// Sensor 1 is Windows 6.2, 2 Linux (`lnx-0002`), 3 Windows 5.0, 4 macOS.
async fn start() -> (Gateway, Simulator) {
    let sim = Simulator::new(SimConfig {
        sensors: 4,
        checkin_delay: Duration::from_millis(20),
        command_latency: Duration::from_millis(5),
        sensor_specs: vec![
            (2, SensorSpec::linux()),
            (3, SensorSpec::windows_5_0()),
            (4, SensorSpec::macos()),
        ],
        ..SimConfig::default()
    });
    let cb = Backend::carbonblack(sim.spawn().await.unwrap());
    let gw = Gateway::builder().backend("acme", "cb", &cb).start().await;
    (gw, sim)
}

fn device<'a>(devices: &'a Value, id: &str) -> &'a Value {
    devices["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["device_id"] == id)
        .unwrap_or_else(|| panic!("no device {id}: {devices:#}"))
}

fn runs<'a>(device: &'a Value, command: &str) -> Option<&'a Value> {
    device["commands"].as_array().unwrap().iter().find(|c| c["command"] == command)
}

fn reason<'a>(device: &'a Value, command: &str) -> Option<&'a str> {
    let unsupported = device["unsupported"].as_array().unwrap();
    unsupported.iter().find(|u| u["command"] == command).map(|u| u["reason"].as_str().unwrap())
}

fn statuses(action: &Value) -> Vec<&str> {
    let commands = action["runs"][0]["commands"].as_array().unwrap();
    commands.iter().map(|c| c["status"].as_str().unwrap()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn devices_say_per_sensor_what_runs_and_why_not() {
    let (gw, _sim) = start().await;
    let acme = token("acme");
    let (status, devices) = gw.get(&acme, "/v1/devices").await;
    assert_eq!(status, StatusCode::OK, "{devices}");

    // Every command kind is either run (with how) or refused (with why).
    for d in devices["items"].as_array().unwrap() {
        let listed =
            d["commands"].as_array().unwrap().len() + d["unsupported"].as_array().unwrap().len();
        assert_eq!(listed, 20, "{d:#}");
        assert!(reason(d, "run_script").unwrap().contains("not supported by backend"), "{d:#}");
    }

    let windows = device(&devices, "1");
    assert_eq!(runs(windows, "registry_list").unwrap()["via"], "native", "{windows:#}");
    assert!(runs(windows, "memory_dump").is_some(), "{windows:#}");

    let linux = device(&devices, "2");
    assert_eq!(linux["hostname"], "lnx-0002");
    assert!(runs(linux, "process_list").is_some(), "{linux:#}");
    for command in [
        "registry_list",
        "registry_get",
        "registry_set",
        "registry_create_key",
        "registry_delete_key",
        "registry_delete_value",
        "memory_dump",
    ] {
        assert!(runs(linux, command).is_none(), "{command}: {linux:#}");
        let why = reason(linux, command).unwrap_or_else(|| panic!("{command}: {linux:#}"));
        assert!(why.contains("Ubuntu"), "names the OS: {why}");
    }
    assert!(reason(linux, "registry_list").unwrap().contains("no registry commands"));
    assert!(reason(linux, "memory_dump").unwrap().contains("only Windows sensors"));

    let old = device(&devices, "3");
    assert!(runs(old, "registry_list").is_some(), "{old:#}");
    assert!(runs(old, "memory_dump").is_none(), "{old:#}");
    let why = reason(old, "memory_dump").unwrap();
    assert!(why.contains("5.1") && why.contains("5.0"), "{why}");

    let mac = device(&devices, "4");
    assert!(reason(mac, "registry_get").unwrap().contains("Mac OSX"), "{mac:#}");

    // Per backend, unchanged: what submission accepts.
    let (status, caps) = gw.get(&acme, "/v1/capabilities").await;
    assert_eq!(status, StatusCode::OK, "{caps}");
    let commands = caps["items"][0]["commands"].as_array().unwrap();
    assert!(commands.iter().any(|c| c["command"] == "memory_dump"), "{caps:#}");
    assert!(commands.iter().any(|c| c["command"] == "registry_list"), "{caps:#}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_the_sensor_cannot_run_ends_before_anything_is_sent() {
    let (gw, sim) = start().await;
    let acme = token("acme");
    let registry = json!([{"type": "registry_list", "key": REG_KEY}]);

    for target in [json!({"backend": "cb", "device_id": "2"}), json!({"hostname": "lnx-0002"})] {
        let before = sim.counters();
        let done = gw.run(&acme, &json!({"targets": [target], "commands": registry})).await;
        // The device's lookup (the sensor record, or the hostname search) and nothing else:
        // the engine refused the command, no adapter step ran.
        let after = sim.counters();
        let searches = after.sensor_pages - before.sensor_pages;
        let lookups = u64::from(target.get("device_id").is_some());
        assert_eq!(after.requests - before.requests, searches + lookups, "{target} {after:?}");
        assert_eq!(done["status"], "failed", "{done:#}");
        let run = &done["runs"][0];
        assert_eq!(run["hostname"], "lnx-0002", "{done:#}");
        let error = &run["commands"][0]["error"];
        assert_eq!(error["code"], "unsupported_command", "{done:#}");
        let message = error["message"].as_str().unwrap();
        assert!(message.contains("Ubuntu") && message.contains("registry"), "{message}");
    }
    let c = sim.counters();
    assert_eq!((c.sessions_created, c.commands_posted), (0, 0), "{c:?}");

    // The same action on a Windows sensor runs.
    let done = gw
        .run(
            &acme,
            &json!({"targets": [{"backend": "cb", "device_id": "1"}], "commands": registry}),
        )
        .await;
    assert_eq!(done["status"], "succeeded", "{done:#}");
    assert_eq!(done["runs"][0]["commands"][0]["result"]["type"], "registry_key", "{done:#}");
    assert_eq!(sim.counters().executed("reg enum key"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_commands_around_a_refused_one_follow_on_error() {
    let (gw, sim) = start().await;
    let acme = token("acme");
    let commands = json!([
        {"type": "process_list"},
        {"type": "registry_get", "key": REG_KEY, "value": "x"},
        {"type": "list_directory", "path": "/tmp"},
    ]);
    let target = json!({"backend": "cb", "device_id": "2"});

    let done = gw
        .run(&acme, &json!({"targets": [target], "commands": commands, "on_error": "continue"}))
        .await;
    assert_eq!(statuses(&done), ["succeeded", "failed", "succeeded"], "{done:#}");
    assert_eq!(done["runs"][0]["commands"][1]["error"]["code"], "unsupported_command");

    let done = gw.run(&acme, &json!({"targets": [target], "commands": commands})).await;
    assert_eq!(statuses(&done), ["succeeded", "failed", "skipped"], "{done:#}");

    let c = sim.counters();
    assert_eq!(c.executed("reg query value"), 0, "{c:?}");
    assert_eq!((c.executed("process list"), c.executed("directory list")), (2, 1), "{c:?}");
}

/// Defender: a Linux machine runs no helper-backed command; `/v1/devices` says so from the
/// machine's `osPlatform`, and a run refuses it before any live-response call.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn defender_devices_say_which_commands_need_windows() {
    use edrgate_defender_sim as mde;
    let sim = mde::Simulator::new(mde::SimConfig {
        machines: 2,
        os_platforms: vec![(2, "Linux".into())],
        pickup_delay: Duration::from_millis(20),
        command_latency: Duration::from_millis(5),
        ..mde::SimConfig::default()
    });
    let backend = Backend::defender(sim.spawn().await.unwrap());
    let gw = Gateway::builder().backend("acme", "mde", &backend).start().await;
    let acme = token("acme");
    let (status, devices) = gw.get(&acme, "/v1/devices").await;
    assert_eq!(status, StatusCode::OK, "{devices}");
    let windows = device(&devices, &mde::machine_id(1));
    assert_eq!(runs(windows, "process_list").unwrap()["via"], "script", "{windows:#}");
    let linux = device(&devices, &mde::machine_id(2));
    for command in ["process_list", "kill_process", "registry_list", "put_file"] {
        assert!(reason(linux, command).unwrap().contains("Linux"), "{command}: {linux:#}");
    }
    assert!(runs(linux, "get_file").is_some() && runs(linux, "isolate").is_some(), "{linux:#}");

    let done = gw
        .run(
            &acme,
            &json!({"targets": [{"backend": "mde", "device_id": mde::machine_id(2)}],
                    "commands": [{"type": "process_list"}]}),
        )
        .await;
    let command = &done["runs"][0]["commands"][0];
    assert_eq!(command["error"]["code"], "unsupported_command", "{done:#}");
    assert!(command["error"]["message"].as_str().unwrap().contains("Linux"), "{done:#}");
    assert_eq!(sim.counters().live_response_actions, 0);
}
