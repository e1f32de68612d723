//! The Defender adapter against its simulator, driven by the engine stand-in of
//! `edrgate_adapter::testsuite`.

use edrgate_simkit::Sim as _;
use std::time::Duration;

use edrgate_adapter::testsuite::RunHarness;
use edrgate_adapter::{Adapter, Command, CommandResult, ErrorCode, RegistryValueType, Status};
use edrgate_defender::{DefenderAdapter, DefenderConfig, PUTFILE_DIR};
use edrgate_defender_sim::{
    DEFAULT_CLIENT_ID, DEFAULT_CLIENT_SECRET, DEFAULT_TENANT, Faults, NOTE_TXT, SimConfig,
    Simulator, machine_id,
};
use secrecy::SecretString;
use serde_json::json;

fn config(base: &str) -> DefenderConfig {
    let mut cfg = DefenderConfig::new(
        base,
        DEFAULT_TENANT,
        DEFAULT_CLIENT_ID,
        SecretString::from(DEFAULT_CLIENT_SECRET),
    );
    cfg.token_url = Some(format!("{base}/{DEFAULT_TENANT}/oauth2/v2.0/token"));
    cfg.poll_interval_ms = 50;
    cfg.max_poll_interval_ms = 200;
    cfg.visibility_grace_secs = 2;
    cfg
}

async fn setup(sim: SimConfig) -> (Simulator, DefenderAdapter) {
    let sim = Simulator::new(sim);
    let addr = sim.spawn().await.unwrap();
    let adapter = DefenderAdapter::new("mde", config(&format!("http://{addr}"))).unwrap();
    (sim, adapter)
}

fn get(path: &str) -> Command {
    Command::GetFile { path: path.into(), offset: None, length: None }
}

#[tokio::test]
async fn reads_return_typed_results_in_one_machine_action() {
    let (sim, adapter) = setup(SimConfig::default()).await;
    let m1 = machine_id(1);
    let mut run = RunHarness::new(
        &m1,
        vec![
            Command::RunScript {
                script: "collect.ps1".into(),
                args: vec!["-x".into()],
                file_id: None,
            },
            Command::ProcessList,
            Command::ListDirectory { path: "C:\\evidence".into() },
            Command::RegistryList {
                key: "HKLM\\SOFTWARE\\Microsoft\\Windows\\CurrentVersion\\Run".into(),
            },
            Command::RegistryGet {
                key: "HKLM\\SYSTEM\\CurrentControlSet\\Services\\Sense".into(),
                value: "Start".into(),
            },
            get("C:\\evidence\\note.txt"),
        ],
    );
    run.drive(&adapter).await;
    run.assert_all_succeeded();
    // Six commands, one runliveresponse (RunScripts before GetFile keep Defender's order).
    let c = sim.counters();
    assert_eq!(c.live_response_actions, 1, "{c:?}");
    assert_eq!(c.downloads_with_bearer, 0);
    let CommandResult::Execution { exit_code, output, output_file, .. } = run.result(0) else {
        panic!("{:?}", run.result(0))
    };
    assert_eq!(*exit_code, Some(0));
    assert!(output.as_deref().unwrap().starts_with("collected on mde-0001 with -x"), "{output:?}");
    assert!(output_file.is_some());
    let CommandResult::Processes { processes } = run.result(1) else { panic!() };
    assert!(
        processes
            .iter()
            .any(|p| p.pid == 4242 && p.name == "notepad.exe" && p.parent_pid == Some(3120))
    );
    let CommandResult::Directory { entries } = run.result(2) else { panic!() };
    assert!(
        entries
            .iter()
            .any(|e| e.name == "note.txt" && !e.is_directory && e.size == NOTE_TXT.len() as u64)
    );
    let CommandResult::RegistryKey { values, .. } = run.result(3) else { panic!() };
    assert_eq!(values[0].name, "SecurityHealth");
    let CommandResult::RegistryValue { value } = run.result(4) else { panic!() };
    assert_eq!((value.value_type.as_str(), &value.data), ("REG_DWORD", &json!(2)));
    let CommandResult::File { file } = run.result(5) else { panic!() };
    assert_eq!(run.files.bytes(file), NOTE_TXT);
    assert_eq!(file.size, NOTE_TXT.len() as u64);
    // Helpers were uploaded once, under content-versioned names.
    assert!(sim.library().iter().any(|n| n.starts_with("edrgate-process_list-")));
    let uploads = sim.counters().library_uploads;
    let mut again = RunHarness::new(&m1, vec![Command::ProcessList]);
    again.drive(&adapter).await;
    again.assert_all_succeeded();
    assert_eq!(sim.counters().library_uploads, uploads);
}

#[tokio::test]
async fn writes_change_the_endpoint_once() {
    let (sim, adapter) = setup(SimConfig::default()).await;
    let m2 = machine_id(2);
    let mut run = RunHarness::new(&m2, vec![Command::ProcessList; 7]);
    let payload = run.files.add("tool.exe", b"MZ edrgate payload");
    run.commands = vec![
        Command::PutFile { file_id: payload.clone(), path: "C:\\Users\\Public\\tool.exe".into() },
        Command::KillProcess { pid: 4242, vendor_id: None },
        Command::RegistrySet {
            key: "HKLM\\SOFTWARE\\Microsoft".into(),
            value: "edrgate".into(),
            value_type: RegistryValueType::Dword,
            data: json!(7),
            overwrite: false,
        },
        Command::RegistryCreateKey { key: "HKLM\\SOFTWARE\\edrgate\\test".into() },
        Command::DeleteFile { path: "C:\\evidence\\note.txt".into() },
        Command::CreateDirectory { path: "C:\\evidence\\out".into() },
        Command::Execute {
            command_line: "echo hello".into(),
            wait: true,
            working_directory: None,
            output_file: None,
        },
    ];
    run.drive(&adapter).await;
    run.assert_all_succeeded();
    assert_eq!(
        sim.file_content(&m2, "C:\\Users\\Public\\tool.exe").as_deref(),
        Some(&b"MZ edrgate payload"[..])
    );
    assert!(!sim.file_exists(&m2, &format!("{PUTFILE_DIR}\\edrgate-file-x")));
    assert!(!sim.process_exists(&m2, 4242));
    assert_eq!(sim.registry_value(&m2, "HKLM\\SOFTWARE\\Microsoft", "edrgate"), Some(json!(7)));
    assert!(!sim.file_exists(&m2, "C:\\evidence\\note.txt"));
    assert!(sim.file_exists(&m2, "C:\\evidence\\out"));
    let CommandResult::Execution { output, exit_code, pid, .. } = run.result(6) else { panic!() };
    assert_eq!((output.as_deref(), *exit_code), (Some("hello\r\n"), Some(0)));
    assert!(pid.is_some());
    let c = sim.counters();
    assert_eq!(c.helper_runs.get("kill_process"), Some(&1));
    assert_eq!(c.commands_by_type.get("PutFile"), Some(&1));
    // Same content again: no second upload of the payload.
    let uploads = c.library_uploads;
    let mut again = RunHarness::new(
        &m2,
        vec![Command::PutFile {
            file_id: String::new(),
            path: "C:\\Users\\Public\\tool2.exe".into(),
        }],
    );
    let id = again.files.add("tool.exe", b"MZ edrgate payload");
    again.commands[0] =
        Command::PutFile { file_id: id, path: "C:\\Users\\Public\\tool2.exe".into() };
    again.drive(&adapter).await;
    again.assert_all_succeeded();
    assert_eq!(sim.counters().library_uploads, uploads);
}

#[tokio::test]
async fn failed_get_file_stops_or_continues() {
    let (sim, adapter) = setup(SimConfig::default()).await;
    let m1 = machine_id(1);
    let mut stop = RunHarness::new(&m1, vec![get("C:\\nope.txt"), Command::ProcessList]);
    stop.drive(&adapter).await;
    assert_eq!((stop.status(0), stop.status(1)), (Status::Failed, Status::Skipped));
    let e = stop.error(0);
    assert_eq!(e.code, ErrorCode::FileNotFound);
    assert_eq!(e.vendor_code.as_deref(), Some("0x80070002"));
    assert_eq!(e.vendor_message.as_deref(), Some("File C:\\nope.txt was not found on the device"));

    let before = sim.counters().live_response_actions;
    let mut cont = RunHarness::new(&m1, vec![get("C:\\nope.txt"), get("C:\\evidence\\note.txt")])
        .continue_on_error();
    cont.drive(&adapter).await;
    assert_eq!((cont.status(0), cont.status(1)), (Status::Failed, Status::Succeeded));
    // Defender stopped the first batch at the failure; the rest went into a second one.
    assert_eq!(sim.counters().live_response_actions - before, 2);
}

#[tokio::test]
async fn helper_failures_map_to_error_codes() {
    let (_sim, adapter) = setup(SimConfig::default()).await;
    let mut run = RunHarness::new(
        &machine_id(1),
        vec![
            Command::ListDirectory { path: "C:\\missing".into() },
            Command::KillProcess { pid: 99999, vendor_id: None },
            get("C:\\Windows\\System32\\config\\SAM"),
        ],
    )
    .continue_on_error();
    run.drive(&adapter).await;
    assert_eq!(run.error(0).code, ErrorCode::FileNotFound);
    assert_eq!(run.error(0).vendor_code.as_deref(), Some("0x80070003"));
    assert_eq!(run.error(1).code, ErrorCode::NotFound);
    assert_eq!(run.error(2).code, ErrorCode::AccessDenied);
}

#[tokio::test]
async fn isolate_and_release() {
    let (sim, adapter) = setup(SimConfig::default()).await;
    let m3 = machine_id(3);
    let mut run = RunHarness::new(&m3, vec![Command::Isolate]);
    run.drive(&adapter).await;
    run.assert_all_succeeded();
    assert_eq!(run.result(0), &CommandResult::Containment { isolated: true });
    assert!(sim.is_isolated(&m3));
    let mut run = RunHarness::new(&m3, vec![Command::Release]);
    run.drive(&adapter).await;
    run.assert_all_succeeded();
    assert!(!sim.is_isolated(&m3));
    assert_eq!(sim.counters().isolation_changes, 2);
}

#[tokio::test]
async fn expired_tokens_and_links_are_renewed() {
    let (sim, adapter) = setup(SimConfig::default()).await;
    let m1 = machine_id(1);
    let mut run = RunHarness::new(&m1, vec![get("C:\\evidence\\big.bin")]);
    assert!(matches!(run.step(&adapter).await.unwrap(), edrgate_adapter::Next::After(_)));
    sim.expire_tokens();
    sim.refuse_next_downloads(1);
    run.drive(&adapter).await;
    run.assert_all_succeeded();
    let CommandResult::File { file } = run.result(0) else { panic!() };
    assert_eq!(file.size, 1024 * 1024);
    assert_eq!(run.files.bytes(file), sim.file_content(&m1, "C:\\evidence\\big.bin").unwrap());
    let c = sim.counters();
    assert_eq!(c.tokens_issued, 2, "{c:?}");
    assert_eq!((c.expired_downloads, c.downloads, c.downloads_with_bearer), (1, 1, 0));
}

#[tokio::test]
async fn partial_reads_take_the_range() {
    let (sim, adapter) = setup(SimConfig::default()).await;
    let m1 = machine_id(1);
    let mut run = RunHarness::new(
        &m1,
        vec![Command::GetFile {
            path: "C:\\evidence\\big.bin".into(),
            offset: Some(1000),
            length: Some(70_000),
        }],
    );
    run.drive(&adapter).await;
    let CommandResult::File { file } = run.result(0) else { panic!() };
    let whole = sim.file_content(&m1, "C:\\evidence\\big.bin").unwrap();
    assert_eq!(run.files.bytes(file), &whole[1000..71_000]);
}

#[tokio::test]
async fn oversized_put_file_fails_before_any_vendor_call() {
    let (sim, adapter) = setup(SimConfig::default()).await;
    let mut run = RunHarness::new(&machine_id(1), vec![Command::ProcessList]);
    let id = run.files.add("big.bin", &vec![0u8; 20 * 1024 * 1024 + 1]);
    run.commands = vec![Command::PutFile { file_id: id, path: "C:\\x.bin".into() }];
    run.drive(&adapter).await;
    assert_eq!(run.status(0), Status::Failed);
    assert_eq!(run.error(0).code, ErrorCode::PayloadTooLarge);
    assert!(run.error(0).message.contains("20971520"), "{}", run.error(0).message);
    let c = sim.counters();
    assert_eq!((c.requests, c.library_uploads, c.live_response_actions), (0, 0, 0));
}

#[tokio::test]
async fn restart_after_intent_adopts_the_action_by_its_comment() {
    let (sim, adapter) = setup(SimConfig::default()).await;
    let mut run =
        RunHarness::new(&machine_id(4), vec![Command::KillProcess { pid: 4242, vendor_id: None }]);
    // Answers arrive late: the crash lands after Defender created the action, before the
    // adapter heard of it.
    sim.set_faults(Faults { slow_response: Some(Duration::from_millis(300)), ..Faults::default() });
    let s = sim.clone();
    run.crash_after_intent(&adapter, || {
        let s = s.clone();
        async move {
            while s.counters().live_response_actions == 0 {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    })
    .await;
    adapter.run_closed(run.run_id);
    sim.set_faults(Faults::default());
    run.drive(&adapter).await;
    run.assert_all_succeeded();
    let c = sim.counters();
    assert_eq!(c.live_response_actions, 1, "{c:?}");
    assert_eq!(c.helper_runs.get("kill_process"), Some(&1));
}

#[tokio::test]
async fn restart_before_the_submission_sends_it_after_the_grace() {
    let (sim, adapter) = setup(SimConfig::default()).await;
    let mut run = RunHarness::new(&machine_id(4), vec![Command::ProcessList]);
    // Crash right after the intent, before the POST.
    run.crash_after_intent(&adapter, || async {}).await;
    adapter.run_closed(run.run_id);
    run.drive(&adapter).await;
    run.assert_all_succeeded();
    assert_eq!(sim.counters().live_response_actions, 1);
}

#[tokio::test]
async fn budgets_hold_sessions_and_rate_without_429s() {
    let sim_cfg = SimConfig {
        machines: 12,
        session_cap: 3,
        live_response_calls: 4,
        live_response_window: Duration::from_millis(800),
        pickup_delay: Duration::from_millis(300),
        ..SimConfig::default()
    };
    let sim = Simulator::new(sim_cfg);
    let addr = sim.spawn().await.unwrap();
    let mut cfg = config(&format!("http://{addr}"));
    cfg.concurrent_sessions = 3;
    cfg.live_response_calls = 4;
    cfg.live_response_window_ms = 800;
    let adapter = std::sync::Arc::new(DefenderAdapter::new("mde", cfg).unwrap());
    let mut tasks = Vec::new();
    for n in 1..=12 {
        let adapter = std::sync::Arc::clone(&adapter);
        tasks.push(tokio::spawn(async move {
            let mut run = RunHarness::new(&machine_id(n), vec![get("C:\\evidence\\note.txt")]);
            run.drive(&*adapter).await;
            run.assert_all_succeeded();
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let c = sim.counters();
    assert_eq!(c.responses_429, 0, "{c:?}");
    assert!(c.max_concurrent_sessions <= 3, "{c:?}");
    assert_eq!(c.live_response_actions, 12);
}

#[tokio::test]
async fn another_tools_action_on_the_machine_is_waited_for() {
    let sim = Simulator::new(SimConfig {
        pickup_delay: Duration::from_millis(400),
        ..SimConfig::default()
    });
    let addr = sim.spawn().await.unwrap();
    // Two adapters with separate budgets (as two gateways would be) on one machine.
    let a = DefenderAdapter::new("a", config(&format!("http://{addr}"))).unwrap();
    let b =
        DefenderAdapter::new("b", config(&format!("http://localhost:{}", addr.port()))).unwrap();
    let m = machine_id(1);
    let mut ra = RunHarness::new(&m, vec![Command::ProcessList]);
    let mut rb = RunHarness::new(&m, vec![Command::ProcessList]);
    tokio::join!(ra.drive(&a), rb.drive(&b));
    ra.assert_all_succeeded();
    rb.assert_all_succeeded();
    let c = sim.counters();
    assert!(c.active_request_conflicts >= 1, "{c:?}");
    assert_eq!(c.live_response_actions, 2);
}

#[tokio::test]
async fn cancel_of_a_queued_action_on_an_offline_machine() {
    let (sim, adapter) =
        setup(SimConfig { offline_machines: vec![5], ..SimConfig::default() }).await;
    let mut run =
        RunHarness::new(&machine_id(5), vec![Command::ProcessList, get("C:\\evidence\\note.txt")]);
    let stop = run.stop.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(500)).await;
        stop.stop(edrgate_adapter::adapter::StopReason::Cancelled);
    });
    run.drive(&adapter).await;
    assert_eq!((run.status(0), run.status(1)), (Status::Cancelled, Status::Cancelled));
    assert_eq!(sim.counters().cancels, 1);
    assert_eq!(sim.actions()[0].1, "Cancelled");
    assert_eq!(sim.active_sessions(), 0);
}

#[tokio::test]
async fn staged_run_script_and_script_timeout() {
    let (sim, adapter) =
        setup(SimConfig { script_timeout: Duration::from_millis(500), ..SimConfig::default() })
            .await;
    let mut run = RunHarness::new(&machine_id(1), vec![Command::ProcessList; 2]);
    let script = run.files.add("hello.ps1", b"Write-Output \"hi $args\"\nexit 3\n");
    let slow = run.files.add("slow.ps1", b"Start-Sleep -Seconds 2\nWrite-Output done\n");
    run.commands = vec![
        Command::RunScript {
            script: "hello.ps1".into(),
            args: vec!["there".into()],
            file_id: Some(script),
        },
        Command::RunScript { script: "slow.ps1".into(), args: vec![], file_id: Some(slow) },
    ];
    run.drive(&adapter).await;
    let CommandResult::Execution { exit_code, output, .. } = run.result(0) else { panic!() };
    assert_eq!((*exit_code, output.as_deref()), (Some(3), Some("hi there")));
    assert_eq!(run.status(1), Status::Failed);
    assert_eq!(run.error(1).code, ErrorCode::Timeout);
    assert!(sim.library().iter().any(|n| n.starts_with("hello-") && n.ends_with(".ps1")));
}

#[tokio::test]
async fn hostnames_resolve_exactly_and_ambiguity_names_the_machines() {
    let (_sim, adapter) = setup(SimConfig {
        hostname_overrides: vec![(3, "mde-0002".into())],
        ..SimConfig::default()
    })
    .await;
    let d = adapter.resolve_hostname("MDE-0001").await.unwrap();
    assert_eq!(d.device_id, machine_id(1));
    assert!(d.online);
    let e = adapter.resolve_hostname("mde-0002").await.unwrap_err();
    assert_eq!(e.code(), ErrorCode::DeviceAmbiguous);
    assert!(e.info.message.contains(&machine_id(2)) && e.info.message.contains(&machine_id(3)));
    assert_eq!(
        adapter.resolve_hostname("nope").await.unwrap_err().code(),
        ErrorCode::DeviceNotFound
    );
    assert_eq!(adapter.find_devices(Some("MDE-")).await.unwrap().len(), 5);
}

/// A short name finds the machine's FQDN through `startswith` (§10: names are FQDNs), never
/// through a listing of every machine of the tenant.
#[tokio::test]
async fn short_hostnames_find_the_fqdn_without_listing_every_machine() {
    let (sim, adapter) = setup(SimConfig {
        hostname_overrides: vec![(2, "ws-042.corp.example".into())],
        page_size: 2,
        ..SimConfig::default()
    })
    .await;
    let d = adapter.resolve_hostname("WS-042").await.unwrap();
    assert_eq!(
        (d.device_id.as_str(), d.hostname.as_str()),
        (machine_id(2).as_str(), "ws-042.corp.example")
    );
    let e = adapter.resolve_hostname("ws-04").await.unwrap_err();
    assert_eq!(e.code(), ErrorCode::DeviceNotFound, "a prefix finds, but does not name, it");
    assert_eq!(adapter.find_devices(Some("ws-04")).await.unwrap().len(), 1);
    assert_eq!(
        adapter.resolve_hostname("corp").await.unwrap_err().code(),
        ErrorCode::DeviceNotFound
    );
    assert_eq!(sim.counters().machine_lists_unfiltered, 0);
}

/// Collections are read to their end through `@odata.nextLink` (machines, machine actions,
/// library files), and results are read by id when the list answer leaves `commands` out.
#[tokio::test]
async fn pages_are_followed_and_missing_command_results_read_by_id() {
    let sim = Simulator::new(SimConfig {
        machines: 5,
        page_size: 2,
        list_omits_commands: true,
        // Sorted before edrgate's helpers: a helper uploaded once sits on the last page.
        library_scripts: (0..5).map(|i| (format!("a{i}.ps1"), "exit 0\n".to_owned())).collect(),
        ..SimConfig::default()
    });
    let base = format!("http://{}", sim.spawn().await.unwrap());
    let adapter = DefenderAdapter::new("mde", config(&base)).unwrap();
    assert_eq!(adapter.find_devices(None).await.unwrap().len(), 5);
    assert_eq!(sim.counters().machine_lists_unfiltered, 3, "three pages of two");
    // Three runs polled together: the `id in (…)` list pages too.
    let commands = vec![Command::ProcessList, get("C:\\evidence\\note.txt")];
    let mut runs: Vec<RunHarness> =
        (1..=3).map(|n| RunHarness::new(&machine_id(n), commands.clone())).collect();
    futures::future::join_all(runs.iter_mut().map(|r| r.drive(&adapter))).await;
    for run in &runs {
        run.assert_all_succeeded();
        let CommandResult::Processes { processes } = run.result(0) else {
            panic!("{:?}", run.result(0))
        };
        assert!(!processes.is_empty());
    }
    // A fresh adapter finds the helper on the library's last page instead of uploading it
    // again.
    let uploads = sim.counters().library_uploads;
    assert!(uploads >= 1);
    let fresh = DefenderAdapter::new("mde", config(&base)).unwrap();
    let mut run = RunHarness::new(&machine_id(4), vec![Command::ProcessList]);
    run.drive(&fresh).await;
    run.assert_all_succeeded();
    assert_eq!(sim.counters().library_uploads, uploads);
}

#[tokio::test]
async fn https_with_the_simulators_certificate() {
    let sim = Simulator::new(SimConfig::default());
    let addr = sim.spawn_tls().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, sim.cert_pem().unwrap()).unwrap();
    let mut cfg = config(&format!("https://localhost:{}", addr.port()));
    // One listener serves all three hosts here: its CA goes to each host's settings.
    cfg.token_tls.ca_file = Some(ca.clone());
    cfg.download_tls.ca_file = Some(ca.clone());
    cfg.ca_file = Some(ca);
    let adapter = DefenderAdapter::new("mde", cfg).unwrap();
    let mut run = RunHarness::new(&machine_id(1), vec![get("C:\\evidence\\note.txt")]);
    run.drive(&adapter).await;
    run.assert_all_succeeded();
}

#[tokio::test]
async fn wrong_secret_fails_with_the_entra_code() {
    let sim = Simulator::new(SimConfig::default());
    let addr = sim.spawn().await.unwrap();
    let mut cfg = config(&format!("http://{addr}"));
    cfg.client_secret = SecretString::from("wrong");
    let adapter = DefenderAdapter::new("mde", cfg).unwrap();
    let e = adapter.find_devices(None).await.unwrap_err();
    assert_eq!(e.code(), ErrorCode::VendorAuthFailed);
    assert_eq!(e.info.vendor_code.as_deref(), Some("invalid_client"));
    assert!(!format!("{e:?}").contains("wrong"));
}

/// A [`LocalBudget`] that says it is shared: two adapters with their own local budgets
/// stand for two gateway replicas.
struct Replicas(std::sync::Arc<edrgate_adapter::shared::LocalBudget>);

#[async_trait::async_trait]
impl edrgate_adapter::SharedBudget for Replicas {
    fn is_shared(&self) -> bool {
        true
    }
    async fn try_take_slot(
        &self,
        scope: &str,
        capacity: usize,
        key: &str,
        holder: &str,
    ) -> Result<Option<String>, edrgate_adapter::AdapterError> {
        self.0.try_take_slot(scope, capacity, key, holder).await
    }
    fn release_slot(&self, scope: &str, key: &str, token: &str) {
        self.0.release_slot(scope, key, token)
    }
    async fn take_call(
        &self,
        scope: &str,
        limit: u32,
        window: Duration,
    ) -> Result<Option<Duration>, edrgate_adapter::AdapterError> {
        self.0.take_call(scope, limit, window).await
    }
}

#[tokio::test]
async fn replicas_share_the_credentials_budgets() {
    let sim = Simulator::new(SimConfig {
        machines: 8,
        session_cap: 2,
        live_response_calls: 3,
        live_response_window: Duration::from_millis(600),
        pickup_delay: Duration::from_millis(300),
        ..SimConfig::default()
    });
    let addr = sim.spawn().await.unwrap();
    let shared: std::sync::Arc<dyn edrgate_adapter::SharedBudget> =
        std::sync::Arc::new(Replicas(edrgate_adapter::shared::LocalBudget::new()));
    assert!(shared.is_shared());
    let mut replicas = Vec::new();
    for base in [format!("http://{addr}"), format!("http://localhost:{}", addr.port())] {
        let mut cfg = config(&base);
        // The shared scope is the credential: both replicas use the same token endpoint.
        cfg.token_url = Some(format!("http://{addr}/{DEFAULT_TENANT}/oauth2/v2.0/token"));
        cfg.concurrent_sessions = 2;
        cfg.live_response_calls = 3;
        cfg.live_response_window_ms = 600;
        let adapter = std::sync::Arc::new(DefenderAdapter::new("mde", cfg).unwrap());
        adapter.use_shared_budget(std::sync::Arc::clone(&shared));
        replicas.push(adapter);
    }
    let mut tasks = Vec::new();
    for n in 1..=8 {
        let adapter = std::sync::Arc::clone(&replicas[n % 2]);
        tasks.push(tokio::spawn(async move {
            let mut run = RunHarness::new(&machine_id(n), vec![Command::ProcessList]);
            run.drive(&*adapter).await;
            run.assert_all_succeeded();
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let c = sim.counters();
    assert_eq!(c.responses_429, 0, "{c:?}");
    assert!(c.max_concurrent_sessions <= 2, "{c:?}");
    assert_eq!(c.live_response_actions, 8);
    let b = replicas[0].budgets();
    assert_eq!((b[0].name, b[0].capacity), ("sessions", 2));
}

#[tokio::test]
async fn a_fresh_action_invisible_to_reads_is_waited_for() {
    // §4.5: right after the create, reads answer 404 / an empty list for a while.
    let (sim, adapter) =
        setup(SimConfig { visibility_delay: Duration::from_millis(800), ..SimConfig::default() })
            .await;
    let mut run = RunHarness::new(&machine_id(1), vec![Command::ProcessList]);
    run.drive(&adapter).await;
    run.assert_all_succeeded();
    let mut iso = RunHarness::new(&machine_id(1), vec![Command::Isolate]);
    iso.drive(&adapter).await;
    iso.assert_all_succeeded();
    assert_eq!(sim.counters().live_response_actions, 1);
}

#[tokio::test]
async fn a_cancel_that_loses_the_race_keeps_the_real_results() {
    let sim = Simulator::new(SimConfig::default());
    let addr = sim.spawn().await.unwrap();
    let mut cfg = config(&format!("http://{addr}"));
    // Long polls: the action ends well before the adapter looks again.
    cfg.poll_interval_ms = 3000;
    cfg.max_poll_interval_ms = 3000;
    let adapter = DefenderAdapter::new("mde", cfg).unwrap();
    let mut run =
        RunHarness::new(&machine_id(1), vec![Command::KillProcess { pid: 4242, vendor_id: None }]);
    let stop = run.stop.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(800)).await;
        stop.stop(edrgate_adapter::adapter::StopReason::Cancelled);
    });
    run.drive(&adapter).await;
    // The kill happened: it is reported as done, not as cancelled.
    assert_eq!(run.status(0), Status::Succeeded);
    assert!(!sim.process_exists(&machine_id(1), 4242));
    assert_eq!(sim.actions()[0].1, "Succeeded");
}

// ---- helper scripts: the tenant's signing setting, platforms, superseded versions ----

use edrgate_defender_helpers::Helper;

/// What `Set-AuthenticodeSignature` appends (the simulator does not verify signatures).
const SIGNATURE: &str = "\r\n# SIG # Begin signature block\r\n# MIIFuQYJKoZIhvcNAQcCoIIFqjCCBaYCAQExCzAJBgUrDgMCGgUA\r\n# SIG # End signature block\r\n";

fn signed(helper: Helper) -> String {
    format!("{}{SIGNATURE}", helper.source())
}

/// A `signed_scripts_dir` with a signed copy of every helper.
fn signed_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for h in Helper::ALL {
        std::fs::write(dir.path().join(h.library_name()), signed(h)).unwrap();
    }
    dir
}

async fn setup_with(
    sim: SimConfig,
    tune: impl FnOnce(&mut DefenderConfig),
) -> (Simulator, DefenderAdapter) {
    let sim = Simulator::new(sim);
    let addr = sim.spawn().await.unwrap();
    let mut cfg = config(&format!("http://{addr}"));
    tune(&mut cfg);
    let adapter = DefenderAdapter::new("mde", cfg).unwrap();
    (sim, adapter)
}

fn refusing_tenant() -> SimConfig {
    SimConfig { unsigned_scripts: false, ..SimConfig::default() }
}

#[tokio::test]
async fn unsigned_helpers_refused_by_the_tenant_name_the_setting() {
    let (sim, adapter) = setup(refusing_tenant()).await;
    let mut run = RunHarness::new(&machine_id(1), vec![Command::ProcessList]);
    run.drive(&adapter).await;
    let e = run.error(0);
    assert_eq!(e.code, ErrorCode::VendorRejected, "{e:?}");
    assert!(e.message.contains("Live Response unsigned script execution"), "{}", e.message);
    assert!(e.message.contains("unsigned_scripts = false"), "{}", e.message);
    assert!(e.vendor_message.as_deref().unwrap().contains("is not digitally signed"));
    assert_eq!(sim.counters().live_response_actions, 1);
}

#[tokio::test]
async fn signed_mode_uploads_and_runs_only_the_signed_copies() {
    let dir = signed_dir();
    let (sim, adapter) = setup_with(refusing_tenant(), |cfg| {
        cfg.unsigned_scripts = false;
        cfg.signed_scripts_dir = Some(dir.path().to_owned());
    })
    .await;
    let mut run = RunHarness::new(&machine_id(1), vec![Command::ProcessList; 3]);
    let payload = run.files.add("tool.exe", b"MZ signed-mode payload");
    run.commands = vec![
        Command::ProcessList,
        Command::PutFile { file_id: payload, path: "C:\\Users\\Public\\tool.exe".into() },
        Command::ListDirectory { path: "C:\\Users\\Public".into() },
    ];
    run.drive(&adapter).await;
    run.assert_all_succeeded();
    let c = sim.counters();
    assert_eq!(c.helper_runs.get("process_list"), Some(&1));
    assert_eq!(c.helper_runs.get("file"), Some(&1));
    assert_eq!(
        sim.file_content(&machine_id(1), "C:\\Users\\Public\\tool.exe").as_deref(),
        Some(&b"MZ signed-mode payload"[..])
    );
    // Every helper in the library is the signed copy; edrgate's unsigned one never went up.
    for h in [Helper::ProcessList, Helper::File, Helper::ListDirectory] {
        let content = sim.library_content(&h.library_name()).unwrap();
        assert_eq!(content, signed(h).into_bytes(), "{}", h.name());
    }
    for name in sim.library() {
        let content = sim.library_content(&name).unwrap();
        assert!(Helper::ALL.iter().all(|h| h.source().as_bytes() != content), "{name}");
    }
    assert!(adapter.check_helpers().await.is_ok());
}

#[tokio::test]
async fn signed_mode_checks_the_library_before_any_live_response() {
    // No signed copy anywhere: refused, nothing uploaded, other commands unaffected.
    let (sim, adapter) = setup_with(refusing_tenant(), |cfg| cfg.unsigned_scripts = false).await;
    let mut run =
        RunHarness::new(&machine_id(1), vec![Command::ProcessList, get("C:\\evidence\\note.txt")])
            .continue_on_error();
    run.drive(&adapter).await;
    let e = run.error(0);
    assert_eq!(e.code, ErrorCode::VendorRejected);
    assert!(
        e.message.contains("no signed copy")
            && e.message.contains(&Helper::ProcessList.library_name()),
        "{}",
        e.message
    );
    assert_eq!(run.status(1), Status::Succeeded);
    let c = sim.counters();
    assert_eq!((c.library_uploads, c.live_response_actions), (0, 1), "{c:?}");
    let check = Adapter::check(&adapter).await.unwrap_err();
    assert_eq!(check.code(), ErrorCode::VendorRejected);

    // The library holds edrgate's unsigned copy (e.g. from unsigned mode): refused, and with
    // the signed copies at hand edrgate does not replace it behind the operator's back.
    let unsigned = SimConfig {
        library_scripts: vec![(
            Helper::ProcessList.library_name(),
            Helper::ProcessList.source().into(),
        )],
        ..refusing_tenant()
    };
    let dir = signed_dir();
    let (sim, adapter) = setup_with(unsigned, |cfg| {
        cfg.unsigned_scripts = false;
        cfg.signed_scripts_dir = Some(dir.path().to_owned());
    })
    .await;
    let mut run = RunHarness::new(&machine_id(1), vec![Command::ProcessList]);
    run.drive(&adapter).await;
    assert_eq!(run.error(0).code, ErrorCode::VendorRejected);
    assert!(run.error(0).message.contains("unsigned copy"), "{}", run.error(0).message);
    assert_eq!(sim.counters().live_response_actions, 0);
    assert!(adapter.check_helpers().await.is_err());

    // The operator uploaded the signed copies: they are used as they are.
    let uploaded = SimConfig {
        library_scripts: Helper::ALL.iter().map(|h| (h.library_name(), signed(*h))).collect(),
        ..refusing_tenant()
    };
    let (sim, adapter) = setup_with(uploaded, |cfg| cfg.unsigned_scripts = false).await;
    assert!(adapter.check_helpers().await.is_ok());
    let mut run = RunHarness::new(&machine_id(1), vec![Command::ProcessList]);
    run.drive(&adapter).await;
    run.assert_all_succeeded();
    assert_eq!(sim.counters().library_uploads, 0);
}

#[test]
fn signed_scripts_dir_is_checked_at_start_up() {
    let base = "http://127.0.0.1:1";
    let dir = signed_dir();
    let mut cfg = config(base);
    cfg.unsigned_scripts = false;
    cfg.signed_scripts_dir = Some(dir.path().to_owned());
    assert!(DefenderAdapter::new("mde", cfg.clone()).is_ok());
    // Our unsigned copy, a missing file, another version: each named.
    std::fs::write(dir.path().join(Helper::Registry.library_name()), Helper::Registry.source())
        .unwrap();
    std::fs::remove_file(dir.path().join(Helper::Execute.library_name())).unwrap();
    let edited = format!("{}\nWrite-Output extra{SIGNATURE}", Helper::File.source());
    std::fs::write(dir.path().join(Helper::File.library_name()), edited).unwrap();
    let Err(e) = DefenderAdapter::new("mde", cfg.clone()) else { panic!("built") };
    assert_eq!(e.code(), ErrorCode::InvalidRequest);
    for name in [Helper::Registry, Helper::Execute, Helper::File] {
        assert!(e.info.message.contains(&name.library_name()), "{}", e.info.message);
    }
    assert!(e.info.message.contains("not signed"));
    // The directory means signed mode.
    cfg.unsigned_scripts = true;
    assert!(cfg.validate().is_err());
    // The default is unsigned mode (edrgate's own helpers; the tenant setting must be on).
    let parsed: DefenderConfig = serde_json::from_value(json!({
        "tenant_id": "t", "client_id": "c", "client_secret": "s",
    }))
    .unwrap();
    assert!(parsed.unsigned_scripts && parsed.signed_scripts_dir.is_none());
}

#[tokio::test]
async fn helper_commands_are_refused_on_linux_and_macos_before_any_live_response() {
    let sim = SimConfig {
        os_platforms: vec![(3, "Linux".into()), (4, "macOS".into())],
        ..SimConfig::default()
    };
    let (sim, adapter) = setup(sim).await;
    let mut run = RunHarness::new(&machine_id(3), vec![Command::ProcessList]);
    run.drive(&adapter).await;
    let e = run.error(0);
    assert_eq!(e.code, ErrorCode::UnsupportedCommand);
    assert!(e.message.contains("process_list") && e.message.contains("Linux"), "{}", e.message);
    let c = sim.counters();
    assert_eq!((c.live_response_actions, c.library_uploads), (0, 0), "{c:?}");

    // Native commands still run; the helper-backed ones in between are refused, each.
    let mut run = RunHarness::new(&machine_id(4), vec![Command::ProcessList; 4]);
    let payload = run.files.add("tool", b"payload");
    run.commands = vec![
        Command::RunScript { script: "collect.ps1".into(), args: vec![], file_id: None },
        Command::RegistryList { key: "HKLM\\SOFTWARE".into() },
        Command::PutFile { file_id: payload, path: "/tmp/tool".into() },
        get("/etc/hosts"),
    ];
    let mut run = run.continue_on_error();
    run.drive(&adapter).await;
    assert_eq!(run.status(0), Status::Succeeded);
    for i in [1, 2] {
        assert_eq!(run.error(i).code, ErrorCode::UnsupportedCommand);
        assert!(run.error(i).message.contains("macOS"), "{}", run.error(i).message);
    }
    let CommandResult::File { file } = run.result(3) else { panic!("{:?}", run.result(3)) };
    assert!(String::from_utf8(run.files.bytes(file)).unwrap().contains("localhost"));
    let c = sim.counters();
    assert_eq!(c.live_response_actions, 2, "{c:?}");
    assert!(c.helper_runs.is_empty(), "{c:?}");
    assert!(sim.library().iter().all(|n| !n.starts_with("edrgate-")), "{:?}", sim.library());
}

#[tokio::test]
async fn uploading_a_helper_deletes_its_superseded_versions() {
    let old = "edrgate-process_list-0123456789ab.ps1";
    let keep = [
        "edrgate-process_list-custom.ps1",
        "edrgate-kill_process-0123456789ab.ps1",
        "process_list-0123456789ab.ps1",
        "collect.ps1",
    ];
    let sim = SimConfig {
        library_scripts: std::iter::once(old)
            .chain(keep)
            .map(|n| (n.to_owned(), "Write-Output old\n".to_owned()))
            .collect(),
        ..SimConfig::default()
    };
    let (sim, adapter) = setup(sim).await;
    let mut run = RunHarness::new(&machine_id(1), vec![Command::ProcessList]);
    run.drive(&adapter).await;
    run.assert_all_succeeded();
    let library = sim.library();
    assert!(!library.iter().any(|n| n == old), "{library:?}");
    assert!(library.contains(&Helper::ProcessList.library_name()));
    for name in keep {
        assert!(library.iter().any(|n| n == name), "{name} {library:?}");
    }
}

#[tokio::test]
async fn capabilities_say_which_commands_depend_on_the_helpers() {
    let note = |a: &DefenderAdapter, kind: edrgate_adapter::CommandKind| {
        a.capabilities().commands.iter().find(|c| c.command == kind).unwrap().notes.clone().unwrap()
    };
    use edrgate_adapter::CommandKind as K;
    let unsigned = DefenderAdapter::new("mde", config("http://127.0.0.1:1")).unwrap();
    for kind in [K::ProcessList, K::RegistrySet, K::PutFile, K::DeleteFile, K::Execute] {
        let n = note(&unsigned, kind);
        assert!(n.contains("helper") && n.contains("Windows"), "{n}");
        assert!(n.contains("Live Response unsigned script execution"), "{n}");
    }
    for kind in [K::GetFile, K::RunScript, K::Isolate] {
        assert!(!note(&unsigned, kind).contains("helper"), "{kind:?}");
    }
    let dir = signed_dir();
    let mut cfg = config("http://127.0.0.1:1");
    cfg.unsigned_scripts = false;
    cfg.signed_scripts_dir = Some(dir.path().to_owned());
    let signed = DefenderAdapter::new("mde", cfg).unwrap();
    assert!(note(&signed, K::KillProcess).contains("signed mode"));
}

/// A fan-out's runs all need the process-list helper at once: it is listed and uploaded once,
/// not once per run (issue 12, point 7: the overwrites of one library name by concurrent runs).
#[tokio::test]
async fn concurrent_runs_upload_a_helper_once() {
    let sim_cfg = SimConfig {
        machines: 20,
        live_response_calls: 100,
        session_cap: 25,
        pickup_delay: Duration::from_millis(50),
        ..SimConfig::default()
    };
    let sim = Simulator::new(sim_cfg);
    let addr = sim.spawn().await.unwrap();
    let mut cfg = config(&format!("http://{addr}"));
    cfg.concurrent_sessions = 20;
    cfg.live_response_calls = 100;
    let adapter = std::sync::Arc::new(DefenderAdapter::new("mde", cfg).unwrap());
    let tasks: Vec<_> = (1..=20)
        .map(|n| {
            let adapter = std::sync::Arc::clone(&adapter);
            tokio::spawn(async move {
                let mut run = RunHarness::new(&machine_id(n), vec![Command::ProcessList]);
                run.drive(&*adapter).await;
                run.assert_all_succeeded();
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    let c = sim.counters();
    assert_eq!((c.library_uploads, c.live_response_actions), (1, 20), "{c:?}");
}
