//! The Carbon Black adapter driven end to end against the in-process simulator, stepped by
//! `edrgate_adapter::testsuite`'s stand-in for the engine.

use edrgate_simkit::Sim as _;
use std::sync::Arc;
use std::time::Duration;

use edrgate_adapter::adapter::StopReason;
use edrgate_adapter::testsuite::{JournalMode, RunHarness as Run, sha256_hex as sha256};
use edrgate_adapter::{
    Adapter, Command, CommandKind, CommandResult, ErrorCode, FileRef, Next, RegistryValueType,
    Status,
};
use edrgate_carbonblack::{CarbonBlackAdapter, CarbonBlackConfig};
use edrgate_carbonblack_sim::{DEFAULT_TOKEN, Faults, NOTE_TXT, SensorSpec, SimConfig, Simulator};
use serde_json::json;

async fn simulator(cfg: SimConfig) -> (Simulator, String) {
    let sim = Simulator::new(cfg);
    let addr = sim.spawn().await.unwrap();
    (sim, format!("http://{addr}"))
}

fn config(url: &str) -> CarbonBlackConfig {
    let mut cfg = CarbonBlackConfig::new(url, DEFAULT_TOKEN.to_owned().into());
    cfg.poll_interval_ms = 20;
    cfg.max_poll_interval_ms = 200;
    cfg.long_poll_ms = 1000;
    cfg
}

fn adapter(cfg: CarbonBlackConfig) -> CarbonBlackAdapter {
    CarbonBlackAdapter::new("cb-test", cfg).unwrap()
}

fn file_of(result: &CommandResult) -> &FileRef {
    match result {
        CommandResult::File { file } => file,
        other => panic!("not a file result: {other:?}"),
    }
}

// ---- tests ----

#[tokio::test]
async fn every_command_kind_succeeds_with_its_typed_result() {
    let (sim, url) = simulator(SimConfig {
        memdump_duration: Duration::from_millis(300),
        memdump_size: 100_000,
        ..SimConfig::default()
    })
    .await;
    let adapter = adapter(config(&url));
    assert!(!adapter.capabilities().supports(CommandKind::RunScript));
    assert!(adapter.capabilities().supports(CommandKind::MemoryDump));
    assert_eq!(adapter.capabilities().limits.concurrent_sessions, Some(10));

    let key = "HKLM\\SOFTWARE\\edrgate".to_owned();
    let commands = vec![
        Command::ProcessList,
        Command::ListDirectory { path: "C:\\evidence".into() },
        Command::GetFile { path: "C:\\evidence\\note.txt".into(), offset: None, length: None },
        Command::PutFile { file_id: String::new(), path: "C:\\evidence\\up.txt".into() },
        Command::CreateDirectory { path: "C:\\evidence\\newdir".into() },
        Command::DeleteFile { path: "C:\\evidence\\up.txt".into() },
        Command::RegistryCreateKey { key: key.clone() },
        Command::RegistrySet {
            key: key.clone(),
            value: "v".into(),
            value_type: RegistryValueType::Sz,
            data: json!("data"),
            overwrite: false,
        },
        Command::RegistryGet { key: key.clone(), value: "v".into() },
        Command::RegistryList { key: key.clone() },
        Command::RegistryDeleteValue { key: key.clone(), value: "v".into() },
        Command::RegistryDeleteKey { key: key.clone() },
        Command::Execute {
            command_line: "cmd.exe /c echo hello edrgate".into(),
            wait: true,
            working_directory: None,
            output_file: None,
        },
        Command::Execute {
            command_line: "C:\\Users\\jdoe\\AppData\\Local\\Temp\\updater.exe".into(),
            wait: false,
            working_directory: None,
            output_file: None,
        },
        Command::KillProcess { pid: 3012, vendor_id: None },
        Command::MemoryDump { path: None, fetch: true },
        Command::Isolate,
        Command::Release,
    ];
    let mut run = Run::new("1", commands);
    let upload = run.files.add("up.txt", b"hello from edrgate");
    if let Command::PutFile { file_id, .. } = &mut run.commands[3] {
        *file_id = upload;
    }
    run.drive(&adapter).await;
    run.assert_all_succeeded();

    let CommandResult::Processes { processes } = run.result(0) else { panic!() };
    let updater = processes.iter().find(|p| p.pid == 3012).unwrap();
    assert_eq!(updater.name, "updater.exe");
    assert!(updater.vendor_id.as_deref().unwrap().starts_with("00000001-"));

    let CommandResult::Directory { entries } = run.result(1) else { panic!() };
    let note = entries.iter().find(|e| e.name == "note.txt").unwrap();
    assert!(!note.is_directory);
    assert_eq!(note.size, NOTE_TXT.len() as u64);
    assert!(entries.iter().all(|e| e.name != "." && e.name != ".."));

    let note_file = file_of(run.result(2));
    assert_eq!(note_file.name, "note.txt");
    assert_eq!(note_file.sha256, sha256(NOTE_TXT.as_bytes()));
    assert_eq!(run.files.bytes(note_file), NOTE_TXT.as_bytes());

    assert!(!sim.file_exists(1, "C:\\evidence\\up.txt"), "deleted after the put");
    assert!(sim.file_exists(1, "C:\\evidence\\newdir"));
    assert!(!sim.registry_key_exists(1, &key));
    let CommandResult::RegistryValue { value } = run.result(8) else { panic!() };
    assert_eq!(
        (value.name.as_str(), value.value_type.as_str(), &value.data),
        ("v", "REG_SZ", &json!("data"))
    );
    let CommandResult::RegistryKey { values, .. } = run.result(9) else { panic!() };
    assert!(values.iter().any(|v| v.name == "v"));

    let CommandResult::Execution { exit_code, output, output_file, .. } = run.result(12) else {
        panic!()
    };
    assert_eq!(*exit_code, Some(0));
    assert!(output.as_deref().unwrap().contains("hello edrgate"), "{output:?}");
    let output_file = output_file.as_ref().unwrap();
    assert_eq!(run.files.bytes(output_file), output.as_deref().unwrap().as_bytes());
    let temp = format!("C:\\Windows\\Temp\\edrgate-{}-12.out", run.run_id.simple());
    assert!(!sim.file_exists(1, &temp), "temporary output deleted");
    let CommandResult::Execution { pid, exit_code, .. } = run.result(13) else { panic!() };
    assert!(pid.is_some());
    assert_eq!(*exit_code, None);

    assert!(!sim.process_exists(1, 3012));

    let CommandResult::MemoryDump { path, file } = run.result(15) else { panic!() };
    assert_eq!(file.as_ref().unwrap().size, 100_000);
    assert!(!sim.file_exists(1, path), "temporary dump deleted");

    assert_eq!(run.result(16), &CommandResult::Containment { isolated: true });
    assert_eq!(run.result(17), &CommandResult::Containment { isolated: false });
    assert!(!sim.is_isolated(1));

    let counters = sim.counters();
    assert_eq!(counters.sessions_created, 1);
    assert_eq!(counters.sessions_closed, 1);
    assert_eq!(counters.executed("kill"), 1);
    assert_eq!(counters.isolation_changes, 2);
    // Commands pass through dispatched before they end.
    assert!(run.history.contains(&(0, Status::Dispatched)));
}

#[tokio::test]
async fn hresult_failures_map_to_stable_codes_with_the_raw_code() {
    let (_sim, url) = simulator(SimConfig::default()).await;
    let adapter = adapter(config(&url));
    let mut run = Run::new(
        "1",
        vec![
            Command::GetFile { path: "C:\\nope.txt".into(), offset: None, length: None },
            Command::GetFile {
                path: "C:\\Windows\\System32\\config\\SAM".into(),
                offset: None,
                length: None,
            },
            Command::KillProcess { pid: 99_999, vendor_id: None },
            Command::ProcessList,
        ],
    )
    .continue_on_error();
    run.drive(&adapter).await;
    let table = [
        (0, ErrorCode::FileNotFound, "0x80070002", "ERROR_FILE_NOT_FOUND"),
        (1, ErrorCode::AccessDenied, "0x80070005", "ERROR_ACCESS_DENIED"),
        (2, ErrorCode::CommandFailed, "0x80070057", "ERROR_INVALID_PARAMETER"),
    ];
    for (i, code, vendor_code, name) in table {
        assert_eq!(run.status(i), Status::Failed);
        let e = run.error(i);
        assert_eq!(e.code, code, "{e:?}");
        assert_eq!(e.vendor_code.as_deref(), Some(vendor_code));
        assert!(e.vendor_message.as_deref().unwrap().starts_with(name), "{e:?}");
    }
    assert_eq!(run.status(3), Status::Succeeded);

    // With on_error: stop, what follows a failure is skipped.
    let mut run = Run::new(
        "2",
        vec![
            Command::GetFile { path: "C:\\nope.txt".into(), offset: None, length: None },
            Command::ProcessList,
        ],
    );
    run.drive(&adapter).await;
    assert_eq!((run.status(0), run.status(1)), (Status::Failed, Status::Skipped));
}

#[tokio::test]
async fn get_file_downloads_in_ranges() {
    let size = 300_000u64;
    let (sim, url) = simulator(SimConfig { file_size: size, ..SimConfig::default() }).await;
    let mut cfg = config(&url);
    cfg.chunk_size = 64 * 1024;
    let adapter = adapter(cfg);
    let big = "C:\\evidence\\big.bin";
    let mut run = Run::new(
        "1",
        vec![
            Command::GetFile { path: big.into(), offset: None, length: None },
            Command::GetFile { path: big.into(), offset: Some(1000), length: Some(150_000) },
        ],
    );
    run.drive(&adapter).await;
    run.assert_all_succeeded();
    let whole = file_of(run.result(0));
    assert_eq!(whole.size, size);
    assert_eq!(whole.sha256, sha256(&sim.read_file(1, big, 0, size).unwrap()));
    let part = file_of(run.result(1));
    assert_eq!(part.size, 150_000);
    assert_eq!(part.sha256, sha256(&sim.read_file(1, big, 1000, 150_000).unwrap()));
    // 300 000 bytes in 64 KiB ranges: 5; 150 000 bytes: 3.
    assert_eq!(sim.counters().downloads, 8);
    assert_eq!(sim.counters().executed("get file"), 8);
}

#[tokio::test]
async fn slot_limit_holds_across_many_runs() {
    let (sim, url) = simulator(SimConfig { sensors: 12, ..SimConfig::default() }).await;
    let mut cfg = config(&url);
    cfg.slot_limit = 3;
    let adapter = Arc::new(adapter(cfg));
    let mut tasks = Vec::new();
    for sensor in 1..=12 {
        let adapter = Arc::clone(&adapter);
        tasks.push(tokio::spawn(async move {
            let mut run = Run::new(
                &sensor.to_string(),
                vec![
                    Command::ProcessList,
                    Command::GetFile {
                        path: "C:\\evidence\\note.txt".into(),
                        offset: None,
                        length: None,
                    },
                ],
            );
            run.drive(&*adapter).await;
            run.assert_all_succeeded();
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let counters = sim.counters();
    assert!(sim.max_concurrent_sessions() <= 3, "{counters:?}");
    assert_eq!(counters.sessions_created, 12);
    assert_eq!(counters.sessions_closed, 12);
    assert_eq!(counters.slots_in_use, 0);
}

#[tokio::test]
async fn a_waiting_run_on_the_same_sensor_reuses_the_session() {
    let (sim, url) = simulator(SimConfig::default()).await;
    let adapter = Arc::new(adapter(config(&url)));
    let mut tasks = Vec::new();
    for _ in 0..3 {
        let adapter = Arc::clone(&adapter);
        tasks.push(tokio::spawn(async move {
            let mut run = Run::new("1", vec![Command::ProcessList, Command::ProcessList]);
            run.drive(&*adapter).await;
            run.assert_all_succeeded();
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let counters = sim.counters();
    assert_eq!(counters.sessions_created, 1, "{counters:?}");
    assert_eq!(counters.sessions_closed, 1);
    assert_eq!(counters.executed("process list"), 6);
}

#[tokio::test]
async fn a_lost_session_is_replaced_and_read_commands_re_sent() {
    let (sim, url) = simulator(SimConfig {
        faults: Faults { expire_sessions_after_commands: Some(2), ..Faults::default() },
        ..SimConfig::default()
    })
    .await;
    let adapter = adapter(config(&url));
    let mut run = Run::new(
        "1",
        vec![
            Command::ProcessList,
            Command::ListDirectory { path: "C:\\evidence".into() },
            Command::GetFile { path: "C:\\evidence\\note.txt".into(), offset: None, length: None },
            Command::RegistryList {
                key: "HKLM\\SOFTWARE\\Microsoft\\Windows\\CurrentVersion\\Run".into(),
            },
            Command::ProcessList,
        ],
    );
    run.drive(&adapter).await;
    run.assert_all_succeeded();
    assert_eq!(file_of(run.result(2)).sha256, sha256(NOTE_TXT.as_bytes()));
    assert!(sim.counters().sessions_created >= 3, "{:?}", sim.counters());
}

#[tokio::test]
async fn a_crash_after_the_kill_was_sent_adopts_it_without_killing_twice() {
    let (sim, url) = simulator(SimConfig {
        command_latency: Duration::from_millis(800),
        ..SimConfig::default()
    })
    .await;
    let first = adapter(config(&url));
    let mut run = Run::new("1", vec![Command::KillProcess { pid: 3012, vendor_id: None }]);
    // Crash once the simulator has accepted the kill, before it ran.
    run.crash_after_intent(&first, || {
        let sim = sim.clone();
        async move {
            while sim.counters().commands_posted == 0 {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    })
    .await;
    assert_eq!(sim.counters().commands_by_name.get("kill"), None, "not executed yet");
    drop(first);

    let second = adapter(config(&url));
    run.drive(&second).await;
    assert_eq!(run.status(0), Status::Succeeded, "{:?}", run.views[0]);
    let counters = sim.counters();
    assert_eq!(counters.executed("kill"), 1);
    assert_eq!(counters.commands_posted, 1, "{counters:?}");
    assert!(!sim.process_exists(1, 3012));
}

#[tokio::test]
async fn a_crash_before_the_kill_was_sent_sends_it_once_into_its_live_session() {
    let (sim, url) = simulator(SimConfig::default()).await;
    let first = adapter(config(&url));
    let mut run = Run::new(
        "1",
        vec![Command::KillProcess { pid: 3012, vendor_id: None }, Command::ProcessList],
    );
    run.journal.set_mode(JournalMode::StoreThenHang);
    run.crash_after_intent(&first, || tokio::time::sleep(Duration::from_millis(100))).await;
    drop(first);
    assert_eq!(sim.counters().commands_posted, 0);

    // The session is alive and does not list the kill: the POST never arrived.
    let second = adapter(config(&url));
    run.drive(&second).await;
    run.assert_all_succeeded();
    let counters = sim.counters();
    assert_eq!((counters.executed("kill"), counters.sessions_created), (1, 1));
    assert!(!sim.process_exists(1, 3012));
}

#[tokio::test]
async fn a_crash_before_the_kill_was_sent_is_unknown_once_its_session_is_gone() {
    let (sim, url) = simulator(SimConfig {
        session_timeout: Duration::from_millis(300),
        ..SimConfig::default()
    })
    .await;
    let first = adapter(config(&url));
    let mut run = Run::new(
        "1",
        vec![Command::KillProcess { pid: 3012, vendor_id: None }, Command::ProcessList],
    );
    run.journal.set_mode(JournalMode::StoreThenHang);
    run.crash_after_intent(&first, || tokio::time::sleep(Duration::from_millis(100))).await;
    drop(first);
    // The idle session expires before the run is resumed: nobody can tell any more.
    tokio::time::sleep(Duration::from_millis(800)).await;

    let second = adapter(config(&url));
    run.drive(&second).await;
    assert_eq!(run.status(0), Status::Failed);
    assert_eq!(run.error(0).code, ErrorCode::OutcomeUnknown);
    assert_eq!(run.status(1), Status::Skipped);
    assert_eq!(sim.counters().executed("kill"), 0);
    assert!(sim.process_exists(1, 3012));
}

#[tokio::test]
async fn cancel_while_queued_for_a_slot() {
    let (sim, url) = simulator(SimConfig {
        memdump_duration: Duration::from_secs(2),
        memdump_size: 1000,
        ..SimConfig::default()
    })
    .await;
    let mut cfg = config(&url);
    cfg.slot_limit = 1;
    let adapter = Arc::new(adapter(cfg));
    let holder = {
        let adapter = Arc::clone(&adapter);
        tokio::spawn(async move {
            let mut run = Run::new("1", vec![Command::MemoryDump { path: None, fetch: false }]);
            run.drive(&*adapter).await;
            run.assert_all_succeeded();
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut waiting =
        Run::new("2", vec![Command::ProcessList, Command::ListDirectory { path: "C:\\".into() }]);
    let stop = waiting.stop.clone();
    let canceller = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(300)).await;
        stop.stop(StopReason::Cancelled);
    });
    waiting.drive(&*adapter).await;
    canceller.await.unwrap();
    for i in 0..2 {
        assert_eq!(waiting.status(i), Status::Cancelled);
        assert_eq!(waiting.error(i).code, ErrorCode::Cancelled);
    }
    assert!(!waiting.history.iter().any(|(_, s)| *s == Status::Dispatched), "never left the queue");
    holder.await.unwrap();
    assert_eq!(sim.counters().sessions_created, 1);
}

async fn stop_a_running_memdump(reason: StopReason) -> (Run, Simulator) {
    let (sim, url) = simulator(SimConfig {
        memdump_duration: Duration::from_secs(5),
        memdump_size: 1000,
        ..SimConfig::default()
    })
    .await;
    let adapter = adapter(config(&url));
    let mut run =
        Run::new("1", vec![Command::MemoryDump { path: None, fetch: true }, Command::ProcessList]);
    let stop = run.stop.clone();
    let stopper = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(1200)).await;
        stop.stop(reason);
    });
    run.drive(&adapter).await;
    stopper.await.unwrap();
    (run, sim)
}

#[tokio::test]
async fn cancel_while_running() {
    let (run, sim) = stop_a_running_memdump(StopReason::Cancelled).await;
    assert!(
        run.history.contains(&(0, Status::Running))
            || run.history.contains(&(0, Status::Dispatched))
    );
    // CB cancels only pending commands (§2.8b): the memdump already runs on the sensor, so
    // it is not reported cancelled; the command that never started is.
    assert_eq!(run.status(0), Status::Failed);
    assert_eq!(run.error(0).code, ErrorCode::OutcomeUnknown);
    assert_eq!(run.status(1), Status::Cancelled);
    assert_eq!(run.error(1).code, ErrorCode::Cancelled);
    let counters = sim.counters();
    assert_eq!(counters.sessions_closed, 1);
    assert_eq!(counters.executed("process list"), 0);
}

#[tokio::test]
async fn deadline_times_out_what_is_left() {
    let (run, sim) = stop_a_running_memdump(StopReason::DeadlineExceeded).await;
    assert_eq!(run.error(0).code, ErrorCode::OutcomeUnknown);
    assert_eq!(run.status(1), Status::TimedOut);
    assert_eq!(run.error(1).code, ErrorCode::Timeout);
    assert_eq!(sim.counters().sessions_closed, 1);
}

#[tokio::test]
async fn isolate_and_release_without_a_session() {
    let (sim, url) = simulator(SimConfig::default()).await;
    let adapter = adapter(config(&url));
    let mut run = Run::new("2", vec![Command::Isolate]);
    run.drive(&adapter).await;
    run.assert_all_succeeded();
    assert!(sim.is_isolated(2));
    let devices = adapter.find_devices(Some("WIN-0002")).await.unwrap();
    assert_eq!(devices[0].isolated, Some(true));

    let mut run = Run::new("2", vec![Command::Release]);
    run.drive(&adapter).await;
    run.assert_all_succeeded();
    assert!(!sim.is_isolated(2));
    assert_eq!(sim.counters().sessions_created, 0);
}

#[tokio::test]
async fn hostnames_resolve_to_sensors() {
    let (_sim, url) = simulator(SimConfig {
        sensors: 3,
        hostname_overrides: vec![(3, "WIN-0001".into())],
        ..SimConfig::default()
    })
    .await;
    let adapter = adapter(config(&url));
    let device = adapter.resolve_hostname("win-0002").await.unwrap();
    assert_eq!(
        (device.device_id.as_str(), device.backend.as_str(), device.online),
        ("2", "cb-test", true)
    );
    let ambiguous = adapter.resolve_hostname("WIN-0001").await.unwrap_err();
    assert_eq!(ambiguous.code(), ErrorCode::DeviceAmbiguous);
    assert!(ambiguous.info.message.contains('1') && ambiguous.info.message.contains('3'));
    let missing = adapter.resolve_hostname("NOPE").await.unwrap_err();
    assert_eq!(missing.code(), ErrorCode::DeviceNotFound);
    assert_eq!(adapter.find_devices(None).await.unwrap().len(), 3);
}

#[tokio::test]
async fn an_offline_sensor_fails_with_device_offline_after_the_checkin_timeout() {
    let (sim, url) =
        simulator(SimConfig { offline_sensors: vec![2], ..SimConfig::default() }).await;
    let mut cfg = config(&url);
    cfg.session_checkin_timeout_secs = 1;
    let adapter = adapter(cfg);
    let mut run =
        Run::new("2", vec![Command::ProcessList, Command::ListDirectory { path: "C:\\".into() }])
            .continue_on_error();
    run.drive(&adapter).await;
    for i in 0..2 {
        assert_eq!(run.status(i), Status::Failed);
        assert_eq!(run.error(i).code, ErrorCode::DeviceOffline);
    }
    let counters = sim.counters();
    assert_eq!((counters.sessions_created, counters.sessions_closed), (1, 1));
}

#[tokio::test]
async fn live_response_disabled_is_vendor_rejected() {
    let (_sim, url) =
        simulator(SimConfig { live_response_enabled: false, ..SimConfig::default() }).await;
    let adapter = adapter(config(&url));
    let mut run = Run::new("1", vec![Command::ProcessList]);
    run.drive(&adapter).await;
    assert_eq!(run.status(0), Status::Failed);
    let e = run.error(0);
    assert_eq!((e.code, e.vendor_code.as_deref()), (ErrorCode::VendorRejected, Some("412")));
}

#[tokio::test]
async fn a_wrong_token_is_vendor_auth_failed_and_never_shown() {
    let (_sim, url) = simulator(SimConfig::default()).await;
    let mut cfg = config(&url);
    cfg.token = "wrong-token-value-123".to_owned().into();
    let adapter = adapter(cfg);
    let e = adapter.find_devices(None).await.unwrap_err();
    assert_eq!(e.code(), ErrorCode::VendorAuthFailed);
    assert!(!format!("{e} {e:?}").contains("wrong-token-value-123"));
}

/// Makespan of 200 sensors × (process list + 1 MiB get file) through 10 slots against the
/// slot-bound optimum (waves × (check-in + two command latencies)). Run with `--ignored`.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "timing measurement, not a correctness test"]
async fn makespan_of_200_sensors_through_10_slots() {
    // The benchmark's 1 MiB by default; smaller sizes isolate the per-command overhead.
    let file_size = std::env::var("CB_MAKESPAN_FILE_SIZE")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1024 * 1024);
    let sim_cfg = SimConfig { sensors: 200, file_size, ..SimConfig::default() };
    let optimum =
        (200 / 10) as f64 * (sim_cfg.checkin_delay + sim_cfg.command_latency * 2).as_secs_f64();
    let (sim, url) = simulator(sim_cfg).await;
    let mut cfg = CarbonBlackConfig::new(&url, DEFAULT_TOKEN.to_owned().into());
    cfg.slot_limit = 10;
    let adapter = Arc::new(adapter(cfg));
    let started = std::time::Instant::now();
    let mut tasks = Vec::new();
    for sensor in 1..=200 {
        let adapter = Arc::clone(&adapter);
        tasks.push(tokio::spawn(async move {
            let mut run = Run::new(
                &sensor.to_string(),
                vec![
                    Command::ProcessList,
                    Command::GetFile {
                        path: "C:\\evidence\\big.bin".into(),
                        offset: None,
                        length: None,
                    },
                ],
            );
            run.drive(&*adapter).await;
            run.assert_all_succeeded();
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let makespan = started.elapsed().as_secs_f64();
    println!(
        "makespan {makespan:.2} s, optimum {optimum:.2} s, ratio {:.3}, max sessions {}",
        makespan / optimum,
        sim.max_concurrent_sessions()
    );
    assert!(sim.max_concurrent_sessions() <= 10);
}

#[tokio::test]
async fn transient_failures_are_ridden_out() {
    let (sim, url) = simulator(SimConfig {
        file_size: 200_000,
        faults: Faults { error_5xx_every: Some(3), drop_every: Some(7), ..Faults::default() },
        ..SimConfig::default()
    })
    .await;
    let mut cfg = config(&url);
    cfg.chunk_size = 64 * 1024;
    let adapter = adapter(cfg);
    let mut run = Run::new(
        "1",
        vec![
            Command::ProcessList,
            Command::GetFile { path: "C:\\evidence\\big.bin".into(), offset: None, length: None },
            Command::ListDirectory { path: "C:\\evidence".into() },
            Command::RegistryGet {
                key: "HKLM\\SYSTEM\\CurrentControlSet\\Services\\CarbonBlack".into(),
                value: "ImagePath".into(),
            },
        ],
    );
    run.drive(&adapter).await;
    run.assert_all_succeeded();
    let file = file_of(run.result(1));
    assert_eq!(
        file.sha256,
        sha256(&sim.read_file(1, "C:\\evidence\\big.bin", 0, 200_000).unwrap())
    );
    let counters = sim.counters();
    assert!(counters.faults_5xx > 0 && counters.faults_dropped > 0, "{counters:?}");
}

#[tokio::test]
async fn a_kill_whose_answer_was_lost_is_adopted_not_resent() {
    // Requests: list sessions, create, wait for check-in, then the kill POST, whose
    // response is dropped after the simulator processed it.
    let (sim, url) = simulator(SimConfig {
        faults: Faults { drop_every: Some(4), drop_after_processing: true, ..Faults::default() },
        ..SimConfig::default()
    })
    .await;
    let adapter = adapter(config(&url));
    let mut run = Run::new("1", vec![Command::KillProcess { pid: 3012, vendor_id: None }]);
    run.drive(&adapter).await;
    assert_eq!(run.status(0), Status::Succeeded, "{:?}", run.views[0]);
    let counters = sim.counters();
    assert!(counters.faults_dropped >= 1, "{counters:?}");
    assert_eq!((counters.commands_posted, counters.executed("kill")), (1, 1));
    assert!(!sim.process_exists(1, 3012));
}

#[tokio::test]
async fn keepalives_flow_while_a_long_command_runs_and_slow_commands_time_out() {
    let (sim, url) = simulator(SimConfig {
        memdump_duration: Duration::from_millis(2500),
        memdump_size: 1000,
        ..SimConfig::default()
    })
    .await;
    let mut cfg = config(&url);
    cfg.keepalive_interval_secs = 1;
    let patient = adapter(cfg.clone());
    let mut run =
        Run::new("1", vec![Command::MemoryDump { path: Some("C:\\m.dmp".into()), fetch: false }]);
    run.drive(&patient).await;
    run.assert_all_succeeded();
    assert!(sim.counters().keepalives >= 1, "{:?}", sim.counters());
    assert!(sim.file_exists(1, "C:\\m.dmp"), "a dump at a caller's path is kept");
    // Progress is reported while it runs.
    assert!(run.history.contains(&(0, Status::Running)), "{:?}", run.history);
    assert!(
        run.vendor_history.iter().any(|(_, w)| w.starts_with("dumping ") && w.ends_with('%')),
        "{:?}",
        run.vendor_history
    );
    assert_eq!(run.views[0].vendor_status.as_deref(), Some("complete"));

    cfg.memdump_timeout_secs = 1;
    let impatient = adapter(cfg);
    let mut run =
        Run::new("2", vec![Command::MemoryDump { path: None, fetch: false }, Command::ProcessList])
            .continue_on_error();
    run.drive(&impatient).await;
    assert_eq!(run.status(0), Status::TimedOut);
    assert_eq!(run.error(0).code, ErrorCode::Timeout);
    assert_eq!(run.status(1), Status::Succeeded);
}

#[tokio::test]
async fn a_restart_mid_download_starts_the_file_over_and_stays_correct() {
    let size = 400_000u64;
    let (sim, url) = simulator(SimConfig { file_size: size, ..SimConfig::default() }).await;
    let mut cfg = config(&url);
    cfg.chunk_size = 64 * 1024;
    // Plain polls, so each range takes a step of its own.
    cfg.long_poll_ms = 0;
    let big = "C:\\evidence\\big.bin";
    let mut run =
        Run::new("1", vec![Command::GetFile { path: big.into(), offset: None, length: None }]);
    let first = adapter(cfg.clone());
    // Step until at least one range has been written.
    loop {
        let next = run.step(&first).await.unwrap();
        assert_ne!(next, Next::Done, "finished before the restart");
        let cp = run.checkpoint.as_ref().unwrap();
        if cp["phase"]["phase"] == "fetch" && cp["phase"]["next"].as_u64().unwrap() > 0 {
            break;
        }
        if let Next::After(d) = next {
            tokio::time::sleep(d).await;
        }
    }
    drop(first);
    let second = adapter(cfg);
    run.drive(&second).await;
    run.assert_all_succeeded();
    let file = file_of(run.result(0));
    assert_eq!(file.size, size);
    assert_eq!(file.sha256, sha256(&sim.read_file(1, big, 0, size).unwrap()));
    assert_eq!(sim.counters().sessions_created, 1, "the open session was reused");
}

#[tokio::test]
async fn an_unknown_sensor_is_device_not_found() {
    let (_sim, url) = simulator(SimConfig { sensors: 2, ..SimConfig::default() }).await;
    let adapter = adapter(config(&url));
    let mut run = Run::new("77", vec![Command::ProcessList, Command::Isolate]).continue_on_error();
    run.drive(&adapter).await;
    for i in 0..2 {
        assert_eq!(run.status(i), Status::Failed);
        assert_eq!(run.error(i).code, ErrorCode::DeviceNotFound, "{:?}", run.error(i));
    }
}

#[tokio::test]
async fn downloads_cut_short_resume_and_never_complete_truncated() {
    // Aborted bodies (a transport error) and bodies that end cleanly but short (only the file
    // object's `size` reveals them) both resume from the bytes already written.
    for cleanly in [false, true] {
        let size = 300_000u64;
        let (sim, url) = simulator(SimConfig {
            file_size: size,
            faults: Faults {
                cut_downloads_every: Some(2),
                cut_downloads_cleanly: cleanly,
                ..Faults::default()
            },
            ..SimConfig::default()
        })
        .await;
        let mut cfg = config(&url);
        cfg.chunk_size = 64 * 1024;
        let adapter = adapter(cfg);
        let big = "C:\\evidence\\big.bin";
        let mut run = Run::new(
            "1",
            vec![
                Command::GetFile { path: big.into(), offset: None, length: None },
                Command::GetFile { path: big.into(), offset: Some(1000), length: Some(150_000) },
            ],
        );
        run.drive(&adapter).await;
        run.assert_all_succeeded();
        let whole = file_of(run.result(0));
        assert_eq!(whole.size, size, "cleanly: {cleanly}");
        assert_eq!(whole.sha256, sha256(&sim.read_file(1, big, 0, size).unwrap()));
        let part = file_of(run.result(1));
        assert_eq!(part.size, 150_000);
        assert_eq!(part.sha256, sha256(&sim.read_file(1, big, 1000, 150_000).unwrap()));
        assert!(sim.counters().faults_cut >= 4, "{:?}", sim.counters());
    }

    // Every download cut: the command fails after a bounded number of tries, with no file.
    let (_sim, url) = simulator(SimConfig {
        faults: Faults {
            cut_downloads_every: Some(1),
            cut_downloads_cleanly: true,
            ..Faults::default()
        },
        ..SimConfig::default()
    })
    .await;
    let adapter = adapter(config(&url));
    let mut run = Run::new(
        "1",
        vec![Command::GetFile { path: "C:\\evidence\\big.bin".into(), offset: None, length: None }],
    );
    run.drive(&adapter).await;
    assert_eq!(run.status(0), Status::Failed, "{:?}", run.views[0]);
    assert_eq!(run.error(0).code, ErrorCode::VendorUnavailable, "{:?}", run.error(0));
    assert!(run.views[0].result.is_none());
}

#[tokio::test]
async fn a_pinned_certificate_is_the_only_one_accepted() {
    let sim = Simulator::new(SimConfig::default());
    let addr = sim.spawn_tls().await.unwrap();
    let url = format!("https://127.0.0.1:{}", addr.port());
    let pin = sim.cert_sha256().unwrap();
    // No CA configured: the pin alone makes the self-signed certificate acceptable. Colons,
    // as `openssl x509 -fingerprint` prints them, are accepted.
    let colons: Vec<String> =
        pin.as_bytes().chunks(2).map(|c| String::from_utf8_lossy(c).to_uppercase()).collect();
    let mut cfg = config(&url);
    cfg.pinned_cert_sha256 = Some(colons.join(":"));
    let devices = adapter(cfg).find_devices(Some("WIN-0001")).await.unwrap();
    assert_eq!(devices.len(), 1);

    // Another certificate's pin: refused, as any transport failure is.
    let mut wrong = pin.into_bytes();
    wrong[0] = if wrong[0] == b'0' { b'1' } else { b'0' };
    let mut cfg = config(&url);
    cfg.pinned_cert_sha256 = Some(String::from_utf8(wrong).unwrap());
    let error = adapter(cfg).find_devices(Some("WIN-0001")).await.unwrap_err();
    assert_eq!(error.code(), ErrorCode::VendorUnavailable, "{error}");
    // Without a pin or a CA, the self-signed certificate is refused too.
    assert!(adapter(config(&url)).find_devices(Some("WIN-0001")).await.is_err());
    // A malformed pin is a configuration error.
    let mut cfg = config(&url);
    cfg.pinned_cert_sha256 = Some("abc".into());
    assert!(cfg.validate().unwrap_err()[0].starts_with("pinned_cert_sha256"));
}

// ---- issue 12: vendor truth ---------------------------------------------------------------

/// cbapi refuses, before sending, what a session's `supported_commands` does not list; Linux
/// and macOS sensors have no registry or memdump, and memdump needs sensor 5.1+. What the
/// sensor record rules out is refused without opening a session; the session's list decides
/// the rest. Everything else runs on those sensors with their own paths.
#[tokio::test]
async fn commands_a_sensor_cannot_run_are_refused_before_they_are_sent() {
    let (sim, url) = simulator(SimConfig {
        sensors: 5,
        sensor_specs: vec![
            (2, SensorSpec::linux()),
            (3, SensorSpec::macos()),
            (4, SensorSpec::windows_5_0()),
            // A version nothing can be read from: only the session's list tells.
            (5, SensorSpec::windows("unknown")),
        ],
        ..SimConfig::default()
    })
    .await;
    let adapter = adapter(config(&url));
    let reg = Command::RegistryList { key: "HKLM\\SOFTWARE".into() };
    let dump = Command::MemoryDump { path: None, fetch: true };

    // Only refusals: no session is opened for them.
    let mut run = Run::new("2", vec![reg.clone(), dump.clone()]).continue_on_error();
    run.drive(&adapter).await;
    for i in 0..2 {
        assert_eq!(run.status(i), Status::Failed);
        let e = run.error(i);
        assert_eq!(e.code, ErrorCode::UnsupportedCommand, "{e:?}");
        assert!(e.message.contains("sensor 2") && e.message.contains("Ubuntu"), "{}", e.message);
    }
    assert!(run.error(0).message.contains("registry"), "{}", run.error(0).message);
    assert_eq!(sim.counters().sessions_created, 0);

    // On macOS the rest works, with Unix paths and temporary files under /tmp.
    let mut run = Run::new(
        "3",
        vec![
            Command::ProcessList,
            reg.clone(),
            Command::GetFile {
                path: "/Users/jdoe/evidence/note.txt".into(),
                offset: None,
                length: None,
            },
            Command::Execute {
                command_line: "/bin/sh -c 'echo from mac'".into(),
                wait: true,
                working_directory: None,
                output_file: None,
            },
            Command::KillProcess { pid: 3012, vendor_id: None },
        ],
    )
    .continue_on_error();
    run.drive(&adapter).await;
    assert_eq!(run.status(0), Status::Succeeded);
    assert_eq!(run.error(1).code, ErrorCode::UnsupportedCommand);
    assert_eq!(run.files.bytes(file_of(run.result(2))), NOTE_TXT.as_bytes());
    let CommandResult::Execution { output, exit_code, .. } = run.result(3) else { panic!() };
    assert_eq!((output.as_deref(), *exit_code), (Some("from mac\n"), Some(0)));
    assert!(!sim.process_exists(3, 3012));
    assert_eq!(sim.counters().executed("reg enum key"), 0, "never sent");

    // Windows 5.0: the registry works, memdump is refused by version, before any session.
    let mut run = Run::new("4", vec![dump.clone(), reg.clone()]).continue_on_error();
    run.drive(&adapter).await;
    assert_eq!(run.error(0).code, ErrorCode::UnsupportedCommand);
    assert!(run.error(0).message.contains("5.1"), "{}", run.error(0).message);
    assert_eq!(run.status(1), Status::Succeeded);

    // The session's own list: refused after the session is up, still without sending it.
    let posted = sim.counters().commands_posted;
    let mut run = Run::new("5", vec![dump, Command::ProcessList]).continue_on_error();
    run.drive(&adapter).await;
    assert_eq!(run.error(0).code, ErrorCode::UnsupportedCommand);
    assert!(run.error(0).message.contains("supported_commands"), "{}", run.error(0).message);
    assert_eq!(run.status(1), Status::Succeeded);
    assert_eq!(sim.counters().commands_posted, posted + 1, "only the process list was sent");
    assert_eq!(sim.counters().executed("memdump"), 0);
}

/// A file whose size is a whole number of ranges takes exactly that many `get file`s, not
/// one more at `offset == size`.
#[tokio::test]
async fn a_file_of_whole_ranges_takes_no_empty_extra_range() {
    let chunk = 64 * 1024u64;
    let size = 4 * chunk;
    let (sim, url) = simulator(SimConfig { file_size: size, ..SimConfig::default() }).await;
    let mut cfg = config(&url);
    cfg.chunk_size = chunk;
    let adapter = adapter(cfg);
    let big = "C:\\evidence\\big.bin";
    let mut run = Run::new(
        "1",
        vec![
            Command::GetFile { path: big.into(), offset: None, length: None },
            Command::GetFile { path: "C:\\evidence\\empty.txt".into(), offset: None, length: None },
        ],
    );
    run.drive(&adapter).await;
    run.assert_all_succeeded();
    let whole = file_of(run.result(0));
    assert_eq!(
        (whole.size, whole.sha256.clone()),
        (size, sha256(&sim.read_file(1, big, 0, size).unwrap()))
    );
    assert_eq!(file_of(run.result(1)).size, 0);
    // 4 ranges, and one for the empty file (which is still read, so its errors would show).
    assert_eq!(sim.counters().executed("get file"), 5);
}

/// A sensor that ignores `get_count` sends the whole rest of the file: it is streamed as it
/// arrives and the download finishes at the file's size, instead of failing.
#[tokio::test]
async fn a_sensor_ignoring_get_count_is_read_as_it_sends() {
    let size = 300_000u64;
    let (sim, url) = simulator(SimConfig {
        file_size: size,
        sensor_specs: vec![(1, SensorSpec::default().ignoring_get_count())],
        ..SimConfig::default()
    })
    .await;
    let mut cfg = config(&url);
    cfg.chunk_size = 64 * 1024;
    let adapter = adapter(cfg);
    let big = "C:\\evidence\\big.bin";
    let mut run = Run::new(
        "1",
        vec![
            Command::GetFile { path: big.into(), offset: None, length: None },
            Command::GetFile { path: big.into(), offset: Some(1000), length: Some(150_000) },
        ],
    );
    run.drive(&adapter).await;
    run.assert_all_succeeded();
    let whole = file_of(run.result(0));
    assert_eq!(
        (whole.size, whole.sha256.clone()),
        (size, sha256(&sim.read_file(1, big, 0, size).unwrap()))
    );
    let part = file_of(run.result(1));
    assert_eq!(part.size, 150_000);
    assert_eq!(part.sha256, sha256(&sim.read_file(1, big, 1000, 150_000).unwrap()));
    assert_eq!(sim.counters().executed("get file"), 2, "each arrived whole in one range");
}

/// Hostname lookups page through the v2 sensor search (§7.4) with a hostname filter, never
/// an unpaged listing of every sensor.
#[tokio::test]
async fn hostname_lookups_page_through_the_sensor_search() {
    let (sim, url) = simulator(SimConfig { sensors: 230, ..SimConfig::default() }).await;
    let adapter = adapter(config(&url));
    let device = adapter.resolve_hostname("win-0201").await.unwrap();
    assert_eq!(device.device_id, "201");
    assert!(adapter.resolve_hostname("nope").await.is_err());
    // Every sensor matches `WIN-0`: 230 of them, in pages of 100.
    let before = sim.counters().sensor_pages;
    assert_eq!(adapter.find_devices(Some("WIN-0")).await.unwrap().len(), 230);
    assert!(sim.counters().sensor_pages - before >= 3, "{:?}", sim.counters());
    assert_eq!(adapter.find_devices(None).await.unwrap().len(), 230);
    assert_eq!(sim.counters().sensor_unpaged_listings, 0);
}
