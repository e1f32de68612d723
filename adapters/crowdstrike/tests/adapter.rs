//! The adapter against its simulator, over real HTTP on loopback, driven by the testsuite's
//! engine stand-in: what is specific to CrowdStrike (platforms, permission levels, batch
//! fan-out, offline queueing, tokens, rate limits, archives).

use std::time::Duration;

use edrgate_adapter::testsuite::{RunHarness, sha256_hex};
use edrgate_adapter::{
    Adapter, Command, CommandKind, CommandResult, ErrorCode, RegistryValueType, Status,
};
use edrgate_crowdstrike::{CrowdStrikeAdapter, CrowdStrikeConfig, PermissionLevel};
use edrgate_crowdstrike_sim::{
    DEFAULT_CLIENT_ID, DEFAULT_CLIENT_SECRET, Faults, NOTE_PATH_UNIX, NOTE_PATH_WINDOWS, NOTE_TXT,
    READONLY_CLIENT_ID, RESPONDER_CLIENT_ID, Sim as _, SimConfig, Simulator,
};
use secrecy::SecretString;
use serde_json::json;

const WIN: &str = "CS-WIN-0001";
const LNX: &str = "CS-LNX-0001";
const MAC: &str = "CS-MAC-0001";

fn quick() -> SimConfig {
    SimConfig {
        command_delay: Duration::from_millis(30),
        upload_delay: Duration::from_millis(30),
        containment_delay: Duration::from_millis(30),
        ..SimConfig::default()
    }
}

fn config(url: &str, client_id: &str) -> CrowdStrikeConfig {
    let mut cfg = CrowdStrikeConfig::new(url, client_id, SecretString::from(DEFAULT_CLIENT_SECRET));
    cfg.poll_interval_ms = 20;
    cfg.max_poll_interval_ms = 100;
    cfg.batch_window_ms = 150;
    cfg
}

async fn setup_with(
    sim: SimConfig,
    tweak: impl FnOnce(&mut CrowdStrikeConfig),
) -> (Simulator, CrowdStrikeAdapter) {
    let sim = Simulator::new(sim);
    let addr = sim.spawn().await.unwrap();
    let mut cfg = config(&format!("http://{addr}"), DEFAULT_CLIENT_ID);
    tweak(&mut cfg);
    (sim, CrowdStrikeAdapter::new("cs", cfg).unwrap())
}

async fn setup(sim: SimConfig) -> (Simulator, CrowdStrikeAdapter) {
    setup_with(sim, |_| {}).await
}

fn run(sim: &Simulator, host: &str, commands: Vec<Command>) -> RunHarness {
    RunHarness::new(&sim.device_id(host).unwrap(), commands)
}

/// `r` with its commands replaced (after files were added to its store).
fn with_commands(mut r: RunHarness, commands: Vec<Command>) -> RunHarness {
    r.views = RunHarness::new(&r.device_id, commands.clone()).views;
    r.commands = commands;
    r
}

fn get(path: &str) -> Command {
    Command::GetFile { path: path.into(), offset: None, length: None }
}

/// Runs of one action on `CS-WIN-0001` … `CS-WIN-000n`, each with `commands()`.
fn action_runs(sim: &Simulator, n: usize, commands: impl Fn() -> Vec<Command>) -> Vec<RunHarness> {
    let action = uuid::Uuid::now_v7();
    (1..=n)
        .map(|i| {
            let mut r = run(sim, &format!("CS-WIN-{i:04}"), commands());
            r.action_id = action;
            r
        })
        .collect()
}

/// Drives every run to its end at once (so runs of one action meet).
async fn drive_all(runs: &mut [RunHarness], adapter: &CrowdStrikeAdapter) {
    futures::future::join_all(runs.iter_mut().map(|r| r.drive(adapter))).await;
}

fn ops(sim: &Simulator, op: &str) -> Vec<String> {
    sim.log().entries().into_iter().filter(|e| e.op == op).map(|e| e.target).collect()
}

#[tokio::test]
async fn hosts_are_found_by_hostname_with_their_platform_and_state() {
    let (sim, adapter) = setup(quick()).await;
    let all = adapter.find_devices(None).await.unwrap();
    assert_eq!(all.len(), 5);
    let d = adapter.resolve_hostname("cs-win-0002").await.unwrap();
    assert_eq!(d.device_id, sim.device_id("CS-WIN-0002").unwrap());
    assert!(d.online);
    assert_eq!(d.isolated, Some(false));
    assert!(d.os.as_deref().unwrap().starts_with("Windows"), "{d:?}");
    assert_eq!(adapter.find_devices(Some("LNX")).await.unwrap().len(), 1);
    assert_eq!(
        adapter.resolve_hostname("nope").await.unwrap_err().code(),
        ErrorCode::DeviceNotFound
    );
    let linux = adapter.device(&sim.device_id(LNX).unwrap()).await.unwrap().unwrap();
    assert_eq!(linux.hostname, LNX);
    assert_eq!(
        adapter.device("0123456789abcdef0123456789abcdef").await.unwrap_err().code(),
        ErrorCode::DeviceNotFound
    );
    sim.set_online(MAC, false);
    let mac = adapter.resolve_hostname(MAC).await.unwrap();
    assert!(!mac.online);
}

#[tokio::test]
async fn registry_and_memory_dumps_are_windows_only() {
    let (sim, adapter) = setup(quick()).await;
    for kind in [CommandKind::RegistrySet, CommandKind::MemoryDump] {
        assert!(adapter.varies_by_device(kind));
    }
    assert!(!adapter.varies_by_device(CommandKind::GetFile));
    let linux = adapter.resolve_hostname(LNX).await.unwrap();
    let support = adapter.device_support(&linux);
    assert!(support.refusal(CommandKind::RegistryGet).unwrap().contains("Windows only"));
    assert!(support.refusal(CommandKind::MemoryDump).is_some());
    assert!(support.refusal(CommandKind::GetFile).is_none());
    let windows = adapter.resolve_hostname(WIN).await.unwrap();
    assert!(adapter.device_support(&windows).refusal(CommandKind::RegistryGet).is_none());
    // Should such a command reach the run anyway, it is refused before any RTR call.
    let mut r = run(&sim, LNX, vec![Command::RegistryList { key: "HKLM\\SOFTWARE".into() }]);
    r.drive(&adapter).await;
    assert_eq!(r.error(0).code, ErrorCode::UnsupportedCommand);
    assert_eq!(sim.counters().sessions_created, 0);
}

#[tokio::test]
async fn windows_commands_end_to_end() {
    let (sim, adapter) = setup(quick()).await;
    let pid = sim.any_pid(WIN);
    let key = r"HKLM\SOFTWARE\Microsoft\Windows\CurrentVersion\Run";
    let mut r = run(
        &sim,
        WIN,
        vec![
            Command::ProcessList,
            Command::ListDirectory { path: r"C:\evidence".into() },
            get(NOTE_PATH_WINDOWS),
            Command::GetFile { path: NOTE_PATH_WINDOWS.into(), offset: Some(2), length: Some(5) },
            Command::CreateDirectory { path: r"C:\evidence\out".into() },
            Command::RegistrySet {
                key: key.into(),
                value: "edrgate".into(),
                value_type: RegistryValueType::Sz,
                data: json!("C:\\tools\\agent.exe --quiet"),
                overwrite: false,
            },
            Command::RegistryGet { key: key.into(), value: "edrgate".into() },
            Command::RegistryList { key: key.into() },
            Command::RegistryDeleteValue { key: key.into(), value: "edrgate".into() },
            Command::KillProcess { pid: u64::from(pid), vendor_id: None },
            Command::MemoryDump { path: None, fetch: true },
            Command::Execute {
                command_line: r"C:\Windows\System32\cmd.exe /c echo hi".into(),
                wait: true,
                working_directory: Some(r"C:\Windows".into()),
                output_file: None,
            },
            Command::DeleteFile { path: NOTE_PATH_WINDOWS.into() },
        ],
    );
    r.drive(&adapter).await;
    r.assert_all_succeeded();
    let CommandResult::Processes { processes } = r.result(0) else { panic!("{:?}", r.result(0)) };
    assert!(processes.iter().any(|p| p.pid == u64::from(pid)), "{processes:?}");
    assert!(processes.iter().all(|p| !p.name.is_empty()));
    let CommandResult::Directory { entries } = r.result(1) else { panic!("{:?}", r.result(1)) };
    let note = entries.iter().find(|e| e.name == "note.txt").expect("note.txt listed");
    assert_eq!((note.size, note.is_directory), (NOTE_TXT.len() as u64, false));
    let CommandResult::File { file } = r.result(2) else { panic!() };
    assert_eq!(
        (file.sha256.as_str(), file.name.as_str()),
        (sha256_hex(NOTE_TXT).as_str(), "note.txt")
    );
    assert_eq!(r.files.bytes(file), NOTE_TXT);
    let CommandResult::File { file } = r.result(3) else { panic!() };
    assert_eq!(r.files.bytes(file), NOTE_TXT[2..7].to_vec());
    let CommandResult::RegistryValue { value } = r.result(6) else { panic!("{:?}", r.result(6)) };
    assert_eq!(
        (value.value_type.as_str(), value.data.clone()),
        ("REG_SZ", json!("C:\\tools\\agent.exe --quiet"))
    );
    let CommandResult::MemoryDump { path, file } = r.result(10) else {
        panic!("{:?}", r.result(10))
    };
    assert!(path.starts_with(r"C:\Windows\Temp\edrgate-"), "{path}");
    assert!(file.as_ref().unwrap().size > 0);
    assert!(sim.file_content(WIN, path).is_none(), "the dump is removed once fetched");
    assert!(!sim.process_running(WIN, pid));
    assert!(sim.file_content(WIN, NOTE_PATH_WINDOWS).is_none());
    assert_eq!(sim.registry_value(WIN, key, "edrgate"), None);
    assert_eq!(sim.counters().sessions_created, 1, "one session for the whole run");
    assert_eq!(sim.counters().batch_inits, 0, "a run alone uses a single-host session");

    // overwrite=false refuses an existing value; the stderr table names missing objects.
    let mut r = run(
        &sim,
        "CS-WIN-0002",
        vec![
            Command::RegistrySet {
                key: r"HKLM\SOFTWARE\Microsoft\Windows NT\CurrentVersion".into(),
                value: "ProductName".into(),
                value_type: RegistryValueType::Sz,
                data: json!("x"),
                overwrite: false,
            },
            get(r"C:\nope.txt"),
            Command::KillProcess { pid: 1, vendor_id: None },
        ],
    )
    .continue_on_error();
    r.drive(&adapter).await;
    assert_eq!(r.error(0).code, ErrorCode::Conflict);
    assert_eq!(r.error(1).code, ErrorCode::FileNotFound);
    assert_eq!(r.error(1).vendor_code.as_deref(), Some("stderr"));
    assert_eq!(r.error(2).code, ErrorCode::NotFound);
}

#[tokio::test]
async fn linux_and_mac_commands_end_to_end() {
    let (sim, adapter) = setup(quick()).await;
    for host in [LNX, MAC] {
        let r = run(&sim, host, Vec::new());
        let file_id = r.files.add("tool.sh", b"#!/bin/sh\necho tool\n");
        let commands = vec![
            Command::ProcessList,
            Command::ListDirectory { path: "/var/tmp/evidence".into() },
            get(NOTE_PATH_UNIX),
            Command::CreateDirectory { path: "/var/tmp/evidence/out".into() },
            Command::PutFile { file_id, path: "/var/tmp/evidence/out/tool.sh".into() },
            Command::Execute {
                command_line: "echo hello".into(),
                wait: true,
                working_directory: None,
                output_file: None,
            },
            Command::DeleteFile { path: NOTE_PATH_UNIX.into() },
        ];
        let mut r = with_commands(r, commands);
        r.drive(&adapter).await;
        r.assert_all_succeeded();
        let CommandResult::Processes { processes } = r.result(0) else { panic!() };
        assert!(processes.len() >= 3, "{host}: {processes:?}");
        let CommandResult::Directory { entries } = r.result(1) else { panic!() };
        assert!(entries.iter().any(|e| e.name == "note.txt"), "{host}: {entries:?}");
        let CommandResult::File { file } = r.result(2) else { panic!() };
        assert_eq!(r.files.bytes(file), NOTE_TXT);
        assert_eq!(
            sim.file_content(host, "/var/tmp/evidence/out/tool.sh").as_deref(),
            Some(&b"#!/bin/sh\necho tool\n"[..])
        );
        let CommandResult::Execution { output, .. } = r.result(5) else { panic!() };
        assert!(output.as_deref().unwrap().contains("hello"), "{host}: {output:?}");
    }
    assert_eq!(ops(&sim, "put_file_upload").len(), 1, "the same content is staged once");
}

#[tokio::test]
async fn put_file_conflicts_on_an_existing_destination_and_scripts_run_from_the_library() {
    let (sim, adapter) = setup(quick()).await;
    sim.add_cloud_script("collect.ps1", &["windows"], "Write-Output collected $args[0]", "public");
    let r = run(&sim, WIN, Vec::new());
    let file_id = r.files.add("a.txt", b"content");
    let raw = r.files.add("inline.ps1", b"Write-Output inline");
    let commands = vec![
        Command::PutFile { file_id: file_id.clone(), path: r"C:\evidence\a.txt".into() },
        Command::PutFile { file_id, path: r"C:\evidence\a.txt".into() },
        Command::RunScript {
            script: "collect.ps1".into(),
            args: vec!["now".into()],
            file_id: None,
        },
        Command::RunScript { script: "inline.ps1".into(), args: Vec::new(), file_id: Some(raw) },
        Command::RunScript { script: "missing.ps1".into(), args: Vec::new(), file_id: None },
    ];
    let mut r = with_commands(r, commands).continue_on_error();
    r.drive(&adapter).await;
    assert_eq!(r.status(0), Status::Succeeded, "{:?}", r.views[0]);
    assert_eq!(sim.file_content(WIN, r"C:\evidence\a.txt").as_deref(), Some(&b"content"[..]));
    assert_eq!(r.status(1), Status::Failed);
    assert_eq!(r.error(1).code, ErrorCode::Conflict, "{:?}", r.error(1));
    let CommandResult::Execution { output, .. } = r.result(2) else { panic!("{:?}", r.views[2]) };
    assert!(output.as_deref().unwrap().contains("collected now"), "{output:?}");
    let CommandResult::Execution { output, .. } = r.result(3) else { panic!("{:?}", r.views[3]) };
    assert!(output.as_deref().unwrap().contains("inline"), "{output:?}");
    assert_eq!(r.error(4).code, ErrorCode::NotFound, "{:?}", r.error(4));
}

/// Many runs of one action: one batch init and one batch call per line, not a session each.
#[tokio::test]
async fn runs_of_one_action_fan_out_through_one_batch() {
    let (sim, adapter) = setup(SimConfig { windows: 6, ..quick() }).await;
    let mut runs = action_runs(&sim, 6, || {
        vec![
            Command::ProcessList,
            get(NOTE_PATH_WINDOWS),
            Command::DeleteFile { path: NOTE_PATH_WINDOWS.into() },
        ]
    });
    drive_all(&mut runs, &adapter).await;
    for r in &runs {
        r.assert_all_succeeded();
        let CommandResult::File { file } = r.result(1) else { panic!() };
        assert_eq!(r.files.bytes(file), NOTE_TXT);
    }
    let c = sim.counters();
    assert_eq!(c.batch_inits, 1, "{c:?}");
    assert_eq!(c.batch_commands, 3, "one batch call per line: {c:?}");
    assert_eq!(c.sessions_created, 6, "the batch's per-host sessions, no other: {c:?}");
    assert_eq!(c.commands, 18, "the batch calls' per-host commands, no other: {c:?}");
    assert_eq!(ops(&sim, "rm").len(), 6);
}

/// Runs of a batch taken over by a fresh adapter (a restart) finish from their checkpoints:
/// the groups were only a meeting point in memory.
#[tokio::test]
async fn batch_runs_resume_from_their_checkpoints_in_a_fresh_adapter() {
    let (sim, first) = setup(SimConfig { windows: 3, ..quick() }).await;
    let url = format!("http://{}", sim.spawn().await.unwrap());
    let commands = || {
        vec![
            Command::ListDirectory { path: r"C:\evidence".into() },
            get(NOTE_PATH_WINDOWS),
            Command::DeleteFile { path: NOTE_PATH_WINDOWS.into() },
        ]
    };
    let mut runs = action_runs(&sim, 3, commands);
    // Each run takes one step (the batch opens, the listing goes out), then the process dies.
    let first = &first;
    futures::future::join_all(runs.iter_mut().map(|r| r.step(first))).await;
    assert!(
        runs.iter()
            .all(|r| r.checkpoint.as_ref().is_some_and(|c| c["session"]["batch"].is_string()))
    );
    let second = CrowdStrikeAdapter::new("cs", config(&url, DEFAULT_CLIENT_ID)).unwrap();
    drive_all(&mut runs, &second).await;
    for r in &runs {
        r.assert_all_succeeded();
    }
    assert_eq!(ops(&sim, "rm").len(), 3);
    assert_eq!(sim.counters().batch_inits, 1, "the batch sessions were kept");
}

/// An offline host in a batch fails `device_offline` alone; with `queue_offline` it waits.
#[tokio::test]
async fn an_offline_host_in_a_batch_does_not_hold_the_others() {
    let (sim, adapter) = setup(SimConfig { windows: 3, ..quick() }).await;
    sim.set_online("CS-WIN-0002", false);
    let mut runs = action_runs(&sim, 3, || vec![Command::ProcessList]);
    drive_all(&mut runs, &adapter).await;
    assert_eq!(runs[0].status(0), Status::Succeeded);
    assert_eq!(runs[1].error(0).code, ErrorCode::DeviceOffline, "{:?}", runs[1].views[0]);
    assert_eq!(runs[2].status(0), Status::Succeeded);
    assert_eq!(sim.counters().batch_inits, 1);
}

/// Isolating many hosts of one action: one containment request for all of them.
#[tokio::test]
async fn isolating_many_hosts_is_one_request() {
    let (sim, adapter) = setup(SimConfig { windows: 5, ..quick() }).await;
    let mut runs = action_runs(&sim, 5, || vec![Command::Isolate]);
    drive_all(&mut runs, &adapter).await;
    for r in &runs {
        r.assert_all_succeeded();
    }
    assert_eq!(ops(&sim, "contain").len(), 5);
    let stats = sim.faults().unwrap().stats();
    assert_eq!(stats.side_effects_processed, 1, "one devices-actions request: {stats:?}");
}

/// A slow host in a batch comes back `complete: false` and is finished alone through the
/// single-host status route with its task id.
#[tokio::test]
async fn batch_stragglers_finish_through_the_single_host_status_route() {
    let (sim, adapter) =
        setup_with(SimConfig { windows: 3, ..quick() }, |c| c.rtr_timeout_secs = 1).await;
    sim.set_command_delay("CS-WIN-0003", Duration::from_millis(2500));
    let mut runs =
        action_runs(&sim, 3, || vec![Command::ListDirectory { path: r"C:\evidence".into() }]);
    drive_all(&mut runs, &adapter).await;
    for r in &runs {
        r.assert_all_succeeded();
    }
    let c = sim.counters();
    // One batch call; its per-host commands are the only commands (the straggler's status
    // is read, not sent again).
    assert_eq!((c.batch_inits, c.batch_commands, c.commands), (1, 1, 3), "{c:?}");
}

#[tokio::test]
async fn offline_hosts_fail_or_wait_in_the_offline_queue() {
    let (sim, adapter) = setup(quick()).await;
    sim.set_online(WIN, false);
    let mut r = run(&sim, WIN, vec![Command::ProcessList]);
    r.drive(&adapter).await;
    assert_eq!(r.error(0).code, ErrorCode::DeviceOffline, "{:?}", r.error(0));

    let (sim, adapter) = setup_with(quick(), |c| c.queue_offline = true).await;
    sim.set_online(WIN, false);
    let pid = sim.any_pid(WIN);
    let mut r = run(&sim, WIN, vec![Command::KillProcess { pid: u64::from(pid), vendor_id: None }]);
    for _ in 0..20 {
        if let Ok(edrgate_adapter::Next::After(d)) = r.step(&adapter).await {
            tokio::time::sleep(d).await;
        }
        if r.history.iter().any(|(_, s)| *s == Status::Queued) {
            break;
        }
    }
    assert!(r.history.iter().any(|(_, s)| *s == Status::Queued), "{:?}", r.history);
    assert!(sim.process_running(WIN, pid), "nothing ran while offline");
    sim.set_online(WIN, true);
    r.drive(&adapter).await;
    r.assert_all_succeeded();
    assert!(!sim.process_running(WIN, pid));
}

#[tokio::test]
async fn a_cancel_takes_a_command_back_out_of_the_offline_queue() {
    let (sim, adapter) = setup_with(quick(), |c| c.queue_offline = true).await;
    sim.set_online(WIN, false);
    let pid = sim.any_pid(WIN);
    let mut r = run(&sim, WIN, vec![Command::KillProcess { pid: u64::from(pid), vendor_id: None }]);
    while !r.history.iter().any(|(_, s)| *s == Status::Queued) {
        if let Ok(edrgate_adapter::Next::After(d)) = r.step(&adapter).await {
            tokio::time::sleep(d).await;
        }
    }
    r.stop.stop(edrgate_adapter::adapter::StopReason::Cancelled);
    r.drive(&adapter).await;
    assert_eq!(r.status(0), Status::Cancelled, "{:?}", r.views[0]);
    sim.set_online(WIN, true);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(sim.process_running(WIN, pid), "the cancelled kill never ran");
}

/// A session idle for `session_refresh_secs` is refreshed; one the vendor expired is
/// opened again (reads re-sent).
#[tokio::test]
async fn idle_sessions_are_refreshed_and_expired_ones_reopened() {
    let (sim, adapter) = setup_with(quick(), |c| c.session_refresh_secs = 1).await;
    // A step goes on to the next command once one ends: the third is under way when the
    // session expires, the fourth meets the expiry.
    let mut r = run(&sim, WIN, vec![Command::ProcessList; 4]);
    let until =
        |r: &RunHarness, n: usize| r.views.iter().take(n).all(|v| v.status == Status::Succeeded);
    while !until(&r, 1) {
        if let Ok(edrgate_adapter::Next::After(d)) = r.step(&adapter).await {
            tokio::time::sleep(d).await;
        }
    }
    tokio::time::sleep(Duration::from_millis(1100)).await;
    while !until(&r, 2) {
        if let Ok(edrgate_adapter::Next::After(d)) = r.step(&adapter).await {
            tokio::time::sleep(d).await;
        }
    }
    assert_eq!(sim.counters().sessions_created, 1, "refreshed, not replaced: {:?}", sim.counters());
    sim.expire_sessions();
    r.drive(&adapter).await;
    r.assert_all_succeeded();
    assert_eq!(sim.counters().sessions_created, 2, "{:?}", sim.counters());
}

#[tokio::test]
async fn expired_tokens_are_renewed_and_429_is_honoured() {
    let (sim, adapter) = setup(quick()).await;
    let mut r = run(&sim, WIN, vec![Command::ProcessList]);
    r.drive(&adapter).await;
    sim.expire_tokens();
    sim.set_faults(Faults { status_429_next: 2, retry_after_secs: 1, ..Faults::default() });
    let started = std::time::Instant::now();
    let mut r =
        run(&sim, WIN, vec![Command::ProcessList, Command::ListDirectory { path: r"C:\".into() }]);
    r.drive(&adapter).await;
    r.assert_all_succeeded();
    let c = sim.counters();
    assert!(c.tokens_issued >= 2 && c.unauthorized >= 1, "{c:?}");
    let stats = sim.faults().unwrap().stats();
    assert_eq!((stats.injected_429, stats.retry_after_violations), (2, 0), "{stats:?}");
    assert!(started.elapsed() >= Duration::from_secs(1));

    // Short-lived tokens are renewed before they expire.
    let (sim, adapter) =
        setup(SimConfig { token_lifetime: Duration::from_secs(2), ..quick() }).await;
    for _ in 0..3 {
        let mut r = run(&sim, WIN, vec![Command::ProcessList]);
        r.drive(&adapter).await;
        r.assert_all_succeeded();
        tokio::time::sleep(Duration::from_millis(1100)).await;
    }
    assert_eq!(sim.counters().unauthorized, 0);
}

#[tokio::test]
async fn the_permission_level_limits_the_commands() {
    let (sim, _) = setup(quick()).await;
    let url = format!("http://{}", sim.spawn().await.unwrap());
    let mut ro = config(&url, READONLY_CLIENT_ID);
    ro.permission_level = PermissionLevel::ReadOnly;
    let ro = CrowdStrikeAdapter::new("cs-ro", ro).unwrap();
    let caps = ro.capabilities();
    assert!(caps.supports(CommandKind::ProcessList) && !caps.supports(CommandKind::KillProcess));
    let mut r = run(
        &sim,
        WIN,
        vec![Command::ProcessList, Command::KillProcess { pid: 4, vendor_id: None }],
    )
    .continue_on_error();
    r.drive(&ro).await;
    assert_eq!(r.status(0), Status::Succeeded, "{:?}", r.views[0]);
    assert_eq!(r.error(1).code, ErrorCode::UnsupportedCommand);

    let mut ar = config(&url, RESPONDER_CLIENT_ID);
    ar.permission_level = PermissionLevel::ActiveResponder;
    let ar = CrowdStrikeAdapter::new("cs-ar", ar).unwrap();
    assert!(!ar.capabilities().supports(CommandKind::PutFile));
    let pid = sim.any_pid(WIN);
    let mut r = run(
        &sim,
        WIN,
        vec![
            get(NOTE_PATH_WINDOWS),
            Command::KillProcess { pid: u64::from(pid), vendor_id: None },
            Command::Isolate,
        ],
    );
    r.drive(&ar).await;
    r.assert_all_succeeded();
    assert_eq!(sim.containment_status(WIN), "contained");

    // A level configured above the API client's scopes meets the vendor's 403.
    let wrong = CrowdStrikeAdapter::new("cs-wrong", config(&url, READONLY_CLIENT_ID)).unwrap();
    let mut r = run(
        &sim,
        "CS-WIN-0002",
        vec![Command::KillProcess { pid: u64::from(sim.any_pid("CS-WIN-0002")), vendor_id: None }],
    );
    r.drive(&wrong).await;
    assert_eq!(r.error(0).code, ErrorCode::Forbidden, "{:?}", r.error(0));
}

#[tokio::test]
async fn chunked_output_and_encrypted_archive_headers_are_read() {
    let (sim, adapter) =
        setup(SimConfig { chunk_output_bytes: Some(64), encrypt_archive_headers: true, ..quick() })
            .await;
    let mut r = run(&sim, WIN, vec![Command::ProcessList, get(NOTE_PATH_WINDOWS)]);
    r.drive(&adapter).await;
    r.assert_all_succeeded();
    let CommandResult::Processes { processes } = r.result(0) else { panic!() };
    assert!(processes.len() >= 8, "{processes:?}");
    assert!(processes.iter().any(|p| p.pid == u64::from(sim.any_pid(WIN))));
    let CommandResult::File { file } = r.result(1) else { panic!() };
    assert_eq!(r.files.bytes(file), NOTE_TXT);
}

#[tokio::test]
async fn isolate_and_release_follow_the_pending_states() {
    let (sim, adapter) =
        setup(SimConfig { containment_delay: Duration::from_millis(300), ..quick() }).await;
    let mut r = run(&sim, LNX, vec![Command::Isolate]);
    r.drive(&adapter).await;
    r.assert_all_succeeded();
    assert_eq!(r.result(0), &CommandResult::Containment { isolated: true });
    assert_eq!(sim.containment_status(LNX), "contained");
    let mut r = run(&sim, LNX, vec![Command::Release]);
    r.drive(&adapter).await;
    r.assert_all_succeeded();
    assert_eq!(sim.containment_status(LNX), "normal");
    assert_eq!((ops(&sim, "contain").len(), ops(&sim, "lift_containment").len()), (1, 1));
}
