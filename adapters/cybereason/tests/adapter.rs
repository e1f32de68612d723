//! The adapter against its simulator, over real HTTP on loopback, driven by the testsuite's
//! engine stand-in.

use std::time::Duration;

use edrgate_adapter::testsuite::{JournalMode, RunHarness, sha256_hex};
use edrgate_adapter::{Adapter, Command, CommandResult, ErrorCode, Status};
use edrgate_cybereason::{CybereasonAdapter, CybereasonConfig};
use edrgate_cybereason_sim::{
    DEFAULT_IR_RUN_PATH, DEFAULT_PASSWORD, DEFAULT_TFA_USERNAME, DEFAULT_TOTP_SECRET,
    DEFAULT_USERNAME, DEFAULT_ZIP_PASSWORD, Faults, NOTE_TXT, SimConfig, SimUser, Simulator,
};
use edrgate_simkit::Sim as _;
use secrecy::SecretString;

const HOST: &str = "CR-WS-0001";

/// The backend as tests configure it: the fetched zips' password left at its default (the
/// platform's fixed one), the IR run request set to the simulator's (it is unpublished).
fn config(url: &str, username: &str) -> CybereasonConfig {
    let mut cfg = CybereasonConfig::new(url, username, SecretString::from(DEFAULT_PASSWORD));
    cfg.totp_secret = Some(SecretString::from(DEFAULT_TOTP_SECRET));
    cfg.ir_run_path = Some(DEFAULT_IR_RUN_PATH.into());
    cfg.poll_interval_ms = 20;
    cfg.max_poll_interval_ms = 100;
    cfg
}

async fn setup(sim: SimConfig) -> (Simulator, CybereasonAdapter) {
    let sim = Simulator::new(sim);
    let addr = sim.spawn().await.unwrap();
    let adapter =
        CybereasonAdapter::new("cr", config(&format!("http://{addr}"), DEFAULT_TFA_USERNAME))
            .unwrap();
    (sim, adapter)
}

fn run(sim: &Simulator, host: &str, commands: Vec<Command>) -> RunHarness {
    RunHarness::new(&sim.pylum_id(host).unwrap(), commands)
}

#[tokio::test]
async fn devices_are_found_by_hostname_with_pylum_ids() {
    let (sim, adapter) = setup(SimConfig { machines: 3, ..SimConfig::default() }).await;
    let all = adapter.find_devices(None).await.unwrap();
    assert_eq!(all.len(), 3);
    let d = adapter.resolve_hostname("cr-ws-0002").await.unwrap();
    assert_eq!(d.device_id, sim.pylum_id("CR-WS-0002").unwrap());
    assert!(d.online);
    assert_eq!(d.group.as_deref(), Some("Simulated"));
    sim.set_archived("CR-WS-0003", true);
    assert_eq!(
        adapter.find_devices(Some("CR-WS")).await.unwrap().len(),
        2,
        "archived sensors are left out"
    );
    let e = adapter.resolve_hostname("nope").await.unwrap_err();
    assert_eq!(e.code(), ErrorCode::DeviceNotFound);
}

#[tokio::test]
async fn get_file_streams_the_file_out_of_the_encrypted_zip() {
    let (sim, adapter) = setup(SimConfig::default()).await;
    let path = "C:\\Users\\jdoe\\AppData\\Local\\Temp\\updater.exe";
    let mut r = run(
        &sim,
        HOST,
        vec![
            Command::GetFile { path: path.into(), offset: None, length: None },
            Command::GetFile { path: path.into(), offset: Some(2), length: Some(10) },
            Command::GetFile { path: "C:\\evidence\\note.txt".into(), offset: None, length: None },
        ],
    );
    r.drive(&adapter).await;
    r.assert_all_succeeded();
    let expected = sim.file_content(HOST, path).unwrap();
    let CommandResult::File { file } = r.result(0) else { panic!("{:?}", r.result(0)) };
    assert_eq!(
        (file.size, file.sha256.as_str(), file.name.as_str()),
        (expected.len() as u64, sha256_hex(&expected).as_str(), "updater.exe")
    );
    assert_eq!(r.files.bytes(file), expected);
    let CommandResult::File { file } = r.result(1) else { panic!() };
    assert_eq!(r.files.bytes(file), expected[2..12].to_vec());
    let CommandResult::File { file } = r.result(2) else { panic!() };
    assert_eq!(r.files.bytes(file), NOTE_TXT);
    assert_eq!(sim.counters().direct_fetches, 3);
}

#[tokio::test]
async fn missing_file_and_wrong_zip_password_fail_cleanly() {
    let (sim, adapter) = setup(SimConfig::default()).await;
    let mut r = run(
        &sim,
        HOST,
        vec![Command::GetFile { path: "C:\\nope.txt".into(), offset: None, length: None }],
    );
    r.drive(&adapter).await;
    assert_eq!(r.error(0).code, ErrorCode::FileNotFound);

    let mut cfg = config(&adapter_url(&sim).await, DEFAULT_TFA_USERNAME);
    cfg.fetch_zip_password = SecretString::from("wrong");
    let wrong = CybereasonAdapter::new("cr", cfg).unwrap();
    let mut r = run(
        &sim,
        HOST,
        vec![Command::GetFile {
            path: "C:\\evidence\\note.txt".into(),
            offset: None,
            length: None,
        }],
    );
    r.drive(&wrong).await;
    assert_eq!(r.status(0), Status::Failed);
    assert!(r.error(0).message.contains("fetch_zip_password"), "{:?}", r.error(0));
}

async fn adapter_url(sim: &Simulator) -> String {
    format!("http://{}", sim.spawn().await.unwrap())
}

#[tokio::test]
async fn remediations_kill_and_quarantine_once() {
    let (sim, adapter) = setup(SimConfig::default()).await;
    let mut r = run(
        &sim,
        HOST,
        vec![
            Command::KillProcess { pid: 3012, vendor_id: None },
            Command::QuarantineFile {
                path: "C:\\Users\\jdoe\\AppData\\Local\\Temp\\updater.exe".into(),
            },
        ],
    );
    assert!(sim.process_exists(HOST, 3012));
    r.drive(&adapter).await;
    r.assert_all_succeeded();
    assert!(!sim.process_exists(HOST, 3012));
    assert!(sim.is_quarantined(HOST, "C:\\Users\\jdoe\\AppData\\Local\\Temp\\updater.exe"));
    let c = sim.counters();
    assert_eq!((c.remediations_received, c.remediations_executed), (2, 2));
    // The raw vendor words were reported on the way: not reported yet, then running, then done.
    let words: Vec<&str> =
        r.vendor_history.iter().filter(|(i, _)| *i == 0).map(|(_, w)| w.as_str()).collect();
    assert_eq!(words.last(), Some(&"SUCCESS"), "{words:?}");
}

#[tokio::test]
async fn unknown_pid_and_offline_kill_fail_with_their_codes() {
    let (sim, adapter) = setup(SimConfig::default()).await;
    let mut r = run(&sim, HOST, vec![Command::KillProcess { pid: 31337, vendor_id: None }]);
    r.drive(&adapter).await;
    assert_eq!(r.error(0).code, ErrorCode::NotFound);
    assert_eq!(sim.counters().remediations_received, 0, "nothing to remediate");

    sim.set_online("CR-WS-0002", false);
    let mut r = run(&sim, "CR-WS-0002", vec![Command::KillProcess { pid: 4242, vendor_id: None }]);
    r.drive(&adapter).await;
    let e = r.error(0);
    assert_eq!(
        (e.code, e.vendor_code.as_deref()),
        (ErrorCode::DeviceOffline, Some("isActiveProbeConnected"))
    );
    assert!(sim.process_exists("CR-WS-0002", 4242));
}

#[tokio::test]
async fn remediations_check_that_the_sensor_is_connected_first() {
    let (sim, adapter) = setup(SimConfig::default()).await;
    sim.set_online("CR-WS-0002", false);
    let element = sim.process_element_id("CR-WS-0002", 4242).unwrap();
    let mut r = run(
        &sim,
        "CR-WS-0002",
        vec![
            Command::KillProcess { pid: 4242, vendor_id: Some(element) },
            Command::QuarantineFile { path: "C:\\evidence\\note.txt".into() },
            Command::UnquarantineFile { path: "C:\\evidence\\note.txt".into() },
        ],
    )
    .continue_on_error();
    r.drive(&adapter).await;
    for i in 0..3 {
        let e = r.error(i);
        assert_eq!(e.code, ErrorCode::DeviceOffline, "{e:?}");
        assert!(e.message.contains("not connected"), "{e:?}");
    }
    assert_eq!(sim.counters().remediations_received, 0, "nothing sent to an offline sensor");
}

#[tokio::test]
async fn kill_process_kills_the_live_instance_of_a_reused_pid() {
    let (sim, adapter) = setup(SimConfig::default()).await;
    // pid 4242 is the live notepad and, earlier, an ended cmd.exe: both are Process elements.
    let live = sim.process_element_id(HOST, 4242).unwrap();
    let mut r = run(&sim, HOST, vec![Command::KillProcess { pid: 4242, vendor_id: None }]);
    r.drive(&adapter).await;
    r.assert_all_succeeded();
    assert!(!sim.process_exists(HOST, 4242));
    let killed: Vec<_> =
        sim.log().entries().into_iter().filter(|e| e.op == "KILL_PROCESS").collect();
    assert_eq!(killed.len(), 1);
    assert_eq!(killed[0].detail["targetId"], live.as_str());
    assert_eq!(killed[0].detail["status"], "SUCCESS");

    // Now only ended instances are left: not found, nothing sent.
    let mut r = run(&sim, HOST, vec![Command::KillProcess { pid: 4242, vendor_id: None }]);
    r.drive(&adapter).await;
    let e = r.error(0);
    assert_eq!(e.code, ErrorCode::NotFound);
    assert!(e.message.contains("no live process with pid 4242"), "{e:?}");
    assert_eq!(sim.counters().remediations_received, 1);
}

#[tokio::test]
async fn an_ambiguous_pid_is_refused_never_guessed() {
    let (sim, adapter) = setup(SimConfig::default()).await;
    // A second live instance of pid 3012 (the old one's end never reported).
    let second = sim.start_process(HOST, 3012, "updater.exe").unwrap();
    let mut r = run(&sim, HOST, vec![Command::KillProcess { pid: 3012, vendor_id: None }]);
    r.drive(&adapter).await;
    let e = r.error(0);
    assert_eq!(e.code, ErrorCode::Conflict, "{e:?}");
    assert!(e.message.contains("2 live processes match pid 3012"), "{e:?}");
    assert!(e.message.contains(&second) && e.message.contains("vendor_id"), "{e:?}");
    assert_eq!(sim.counters().remediations_received, 0);
    // The caller picks one by its element id.
    let mut r = run(&sim, HOST, vec![Command::KillProcess { pid: 3012, vendor_id: Some(second) }]);
    r.drive(&adapter).await;
    r.assert_all_succeeded();
    assert!(sim.process_exists(HOST, 3012), "the other instance lives on");
}

#[tokio::test]
async fn run_script_is_offered_only_with_the_operator_configured_run_request() {
    let sim = Simulator::new(SimConfig::default());
    let url = adapter_url(&sim).await;
    let mut cfg = config(&url, DEFAULT_TFA_USERNAME);
    cfg.ir_run_path = None;
    let plain = CybereasonAdapter::new("cr", cfg).unwrap();
    assert!(!plain.capabilities().supports(edrgate_adapter::CommandKind::RunScript));
    // Should a run reach the adapter anyway, it is refused, not guessed.
    let mut r = run(
        &sim,
        HOST,
        vec![Command::RunScript { script: "collector.exe".into(), args: vec![], file_id: None }],
    );
    r.drive(&plain).await;
    assert_eq!(r.error(0).code, ErrorCode::UnsupportedCommand);
    assert_eq!(sim.counters().ir_runs, 0);

    let configured = CybereasonAdapter::new("cr", config(&url, DEFAULT_TFA_USERNAME)).unwrap();
    let support = configured
        .capabilities()
        .commands
        .iter()
        .find(|c| c.command == edrgate_adapter::CommandKind::RunScript)
        .cloned()
        .unwrap();
    assert!(support.notes.unwrap().starts_with("operator-configured"));
}

#[tokio::test]
async fn get_file_opens_the_console_zip_without_configuration() {
    let sim = Simulator::new(SimConfig::default());
    let url = adapter_url(&sim).await;
    // Only the login: the zip password is the platform's fixed one by default.
    let mut cfg =
        CybereasonConfig::new(&url, DEFAULT_USERNAME, SecretString::from(DEFAULT_PASSWORD));
    cfg.poll_interval_ms = 20;
    let adapter = CybereasonAdapter::new("cr", cfg).unwrap();
    assert_eq!(DEFAULT_ZIP_PASSWORD, edrgate_cybereason::DEFAULT_FETCH_ZIP_PASSWORD);
    let mut r = run(
        &sim,
        HOST,
        vec![Command::GetFile {
            path: "C:\\evidence\\note.txt".into(),
            offset: None,
            length: None,
        }],
    );
    r.drive(&adapter).await;
    r.assert_all_succeeded();
    let CommandResult::File { file } = r.result(0) else { panic!("{:?}", r.result(0)) };
    assert_eq!(r.files.bytes(file), NOTE_TXT);
}

#[tokio::test]
async fn a_401_is_a_lost_session_and_logs_in_again() {
    let (sim, adapter) = setup(SimConfig {
        unauthorized_401: true,
        remediation_delay: Duration::from_millis(600),
        ..SimConfig::default()
    })
    .await;
    let mut r = run(&sim, HOST, vec![Command::KillProcess { pid: 4242, vendor_id: None }]);
    while sim.counters().remediations_received == 0 {
        r.step(&adapter).await.unwrap();
    }
    sim.expire_sessions();
    r.drive(&adapter).await;
    r.assert_all_succeeded();
    let c = sim.counters();
    assert_eq!((c.remediations_received, c.remediations_executed, c.logins), (1, 1, 2));
    assert!(c.session_redirects >= 1, "answered 401");

    // Lost on the action request itself: reconciled, not replayed.
    sim.expire_session_before("/rest/remediate");
    let mut r = run(&sim, HOST, vec![Command::KillProcess { pid: 2480, vendor_id: None }]);
    r.drive(&adapter).await;
    r.assert_all_succeeded();
    assert_eq!(sim.counters().remediations_received, 2);
}

#[tokio::test]
async fn two_factor_works_on_the_angular_login_shell_and_the_classic_page() {
    for classic_tfa_page in [false, true] {
        let (sim, adapter) = setup(SimConfig { classic_tfa_page, ..SimConfig::default() }).await;
        assert_eq!(
            adapter.find_devices(None).await.unwrap().len(),
            5,
            "classic {classic_tfa_page}"
        );
        let c = sim.counters();
        assert_eq!((c.logins, c.totp_logins, c.login_failures), (1, 1, 0));

        // Without the secret, the failure names it, whichever page the console serves.
        let mut cfg = config(&adapter_url(&sim).await, DEFAULT_TFA_USERNAME);
        cfg.totp_secret = None;
        let e = CybereasonAdapter::new("cr", cfg).unwrap().find_devices(None).await.unwrap_err();
        assert_eq!(e.code(), ErrorCode::VendorAuthFailed);
        assert!(e.info.message.contains("totp_secret"), "{e}");
    }
}

#[tokio::test]
async fn sensor_listings_page_by_rows_or_by_page_numbers() {
    // More sensors than one page (500), on a console counting offsets in rows, then one
    // counting them in pages (the two readings of §6.1).
    for offset_is_page in [false, true] {
        let (_sim, adapter) =
            setup(SimConfig { machines: 1100, offset_is_page, ..SimConfig::default() }).await;
        let all = adapter.find_devices(None).await.unwrap();
        assert_eq!(all.len(), 1100, "offset_is_page {offset_is_page}");
        let mut ids: Vec<&str> = all.iter().map(|d| d.device_id.as_str()).collect();
        ids.sort_unstable();
        ids.dedup();
        assert_eq!(ids.len(), 1100);
    }
}

#[tokio::test]
async fn isolate_then_release_reads_the_per_id_result() {
    let (sim, adapter) = setup(SimConfig::default()).await;
    let mut r = run(&sim, HOST, vec![Command::Isolate]);
    r.drive(&adapter).await;
    r.assert_all_succeeded();
    assert_eq!(r.result(0), &CommandResult::Containment { isolated: true });
    assert!(sim.is_isolated(HOST));
    let mut r = run(&sim, HOST, vec![Command::Release]);
    r.drive(&adapter).await;
    r.assert_all_succeeded();
    assert!(!sim.is_isolated(HOST));
    assert_eq!((sim.counters().isolations, sim.counters().unisolations), (1, 1));
}

#[tokio::test]
async fn ir_tool_runs_upload_packages_and_report_failures() {
    let (sim, adapter) =
        setup(SimConfig { ir_fail_hosts: vec!["CR-WS-0002".into()], ..SimConfig::default() }).await;
    let mut r = run(
        &sim,
        HOST,
        vec![Command::RunScript {
            script: "triage.ps1".into(),
            args: vec!["-Quick".into()],
            file_id: None,
        }],
    );
    let file_id = r.files.add("triage.ps1", b"Get-Process | Out-File $env:TEMP\\p.txt");
    r.commands[0] = Command::RunScript {
        script: "triage.ps1".into(),
        args: vec!["-Quick".into()],
        file_id: Some(file_id),
    };
    r.drive(&adapter).await;
    r.assert_all_succeeded();
    let CommandResult::Execution { output: Some(output), .. } = r.result(0) else {
        panic!("{:?}", r.result(0))
    };
    assert!(output.contains("storage bucket"), "{output}");
    assert!(sim.packages().contains(&"triage.ps1".to_owned()));

    let mut failing = run(
        &sim,
        "CR-WS-0002",
        vec![Command::RunScript { script: "collector.exe".into(), args: vec![], file_id: None }],
    );
    failing.drive(&adapter).await;
    let e = failing.error(0);
    assert_eq!((e.code, e.vendor_code.as_deref()), (ErrorCode::CommandFailed, Some("Failed")));
    assert_eq!(e.vendor_message.as_deref(), Some("The tool exited with code 1"));
    assert_eq!(sim.counters().ir_runs, 2);
}

#[tokio::test]
async fn a_cancelled_ir_run_is_aborted_on_the_console() {
    let (sim, adapter) =
        setup(SimConfig { ir_step: Duration::from_secs(30), ..SimConfig::default() }).await;
    let mut r = run(
        &sim,
        HOST,
        vec![Command::RunScript { script: "collector.exe".into(), args: vec![], file_id: None }],
    );
    while sim.counters().ir_runs == 0 {
        r.step(&adapter).await.unwrap();
    }
    r.stop.stop(edrgate_adapter::adapter::StopReason::Cancelled);
    r.drive(&adapter).await;
    assert_eq!(r.status(0), Status::Cancelled);
    assert_eq!(sim.counters().ir_aborts, 1);
}

#[tokio::test]
async fn a_session_lost_mid_run_logs_in_again_and_remediates_once() {
    let (sim, adapter) =
        setup(SimConfig { remediation_delay: Duration::from_millis(600), ..SimConfig::default() })
            .await;
    let mut r = run(&sim, HOST, vec![Command::KillProcess { pid: 4242, vendor_id: None }]);
    while sim.counters().remediations_received == 0 {
        r.step(&adapter).await.unwrap();
    }
    sim.expire_sessions();
    r.drive(&adapter).await;
    r.assert_all_succeeded();
    let c = sim.counters();
    assert_eq!((c.remediations_received, c.remediations_executed), (1, 1));
    assert_eq!(c.logins, 2);
    assert!(c.session_redirects >= 1);
}

#[tokio::test]
async fn a_session_lost_on_the_action_request_is_reconciled_not_replayed() {
    let (sim, adapter) = setup(SimConfig::default()).await;
    sim.expire_session_before("/rest/remediate");
    let mut r = run(&sim, HOST, vec![Command::KillProcess { pid: 4242, vendor_id: None }]);
    r.drive(&adapter).await;
    r.assert_all_succeeded();
    let c = sim.counters();
    assert_eq!((c.remediations_received, c.remediations_executed, c.logins), (1, 1, 2));
}

#[tokio::test]
async fn crash_after_the_remediation_arrived_adopts_it() {
    let (sim, adapter) = setup(SimConfig::default()).await;
    let mut r = run(&sim, HOST, vec![Command::KillProcess { pid: 4242, vendor_id: None }]);
    // Slow calls keep the step in flight after the POST arrived, where the crash hits.
    sim.set_faults(Faults { latency: Duration::from_millis(150), ..Faults::default() });
    let s = sim.clone();
    r.crash_after_intent(&adapter, || {
        let s = s.clone();
        async move {
            while s.counters().remediations_received == 0 {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    })
    .await;
    sim.set_faults(Faults::default());
    r.drive(&adapter).await;
    r.assert_all_succeeded();
    assert_eq!(sim.counters().remediations_received, 1);
}

#[tokio::test]
async fn crash_before_the_remediation_was_sent_sends_it_once() {
    let (sim, adapter) = setup(SimConfig::default()).await;
    let mut r =
        run(&sim, HOST, vec![Command::QuarantineFile { path: "C:\\evidence\\note.txt".into() }]);
    r.journal.set_mode(JournalMode::StoreThenHang);
    r.crash_after_intent(&adapter, || tokio::time::sleep(Duration::from_millis(50))).await;
    assert_eq!(sim.counters().remediations_received, 0);
    r.drive(&adapter).await;
    r.assert_all_succeeded();
    assert_eq!(sim.counters().remediations_received, 1);
}

#[tokio::test]
async fn crash_after_an_ir_run_started_adopts_the_batch() {
    let (sim, adapter) = setup(SimConfig::default()).await;
    let mut r = run(
        &sim,
        HOST,
        vec![Command::RunScript { script: "collector.exe".into(), args: vec![], file_id: None }],
    );
    sim.set_faults(Faults { latency: Duration::from_millis(150), ..Faults::default() });
    let s = sim.clone();
    r.crash_after_intent(&adapter, || {
        let s = s.clone();
        async move {
            while s.counters().ir_runs == 0 {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    })
    .await;
    sim.set_faults(Faults::default());
    r.drive(&adapter).await;
    r.assert_all_succeeded();
    assert_eq!(sim.counters().ir_runs, 1);
}

#[tokio::test]
async fn login_failures_are_vendor_auth_failed_not_hangs() {
    let sim = Simulator::new(SimConfig::default());
    let url = format!("http://{}", sim.spawn().await.unwrap());
    let kill = || vec![Command::KillProcess { pid: 4242, vendor_id: None }];
    let pylum = sim.pylum_id(HOST).unwrap();

    // Wrong password: the login page comes back.
    let mut cfg = config(&url, DEFAULT_USERNAME);
    cfg.password = SecretString::from("wrong");
    let bad = CybereasonAdapter::new("cr", cfg).unwrap();
    let e = bad.find_devices(None).await.unwrap_err();
    assert_eq!(e.code(), ErrorCode::VendorAuthFailed);
    let mut r = RunHarness::new(&pylum, kill());
    let err = r.step(&bad).await;
    assert!(err.is_ok(), "command failures are reported on the command");
    assert_eq!(r.error(0).code, ErrorCode::VendorAuthFailed);

    // A two-factor user without the TOTP secret.
    let mut cfg = config(&url, DEFAULT_TFA_USERNAME);
    cfg.totp_secret = None;
    let no_totp = CybereasonAdapter::new("cr", cfg).unwrap();
    let e = no_totp.find_devices(None).await.unwrap_err();
    assert!(e.info.message.contains("totp_secret"), "{e}");

    // An expired password.
    let mut expired = SimUser::new("old@sim.example", DEFAULT_PASSWORD);
    expired.password_expired = true;
    sim.set_users(vec![expired, SimUser::new(DEFAULT_USERNAME, DEFAULT_PASSWORD)]);
    let old = CybereasonAdapter::new("cr", config(&url, "old@sim.example")).unwrap();
    let e = old.find_devices(None).await.unwrap_err();
    assert!(e.info.message.contains("expired"), "{e}");
    assert!(sim.counters().login_failures >= 2);
}

#[tokio::test]
async fn missing_roles_and_rate_limits() {
    let (sim, adapter) = setup(SimConfig::default()).await;
    // A user without Responder L2 cannot run IR tools: 403.
    let mut analyst = SimUser::new("analyst@sim.example", DEFAULT_PASSWORD);
    analyst.roles = vec!["system_admin".into(), "analyst_l3".into()];
    sim.set_users(vec![analyst]);
    let url = adapter_url(&sim).await;
    let limited = CybereasonAdapter::new("cr", config(&url, "analyst@sim.example")).unwrap();
    let mut r = run(
        &sim,
        HOST,
        vec![Command::RunScript { script: "collector.exe".into(), args: vec![], file_id: None }],
    );
    r.drive(&limited).await;
    assert_eq!(r.error(0).code, ErrorCode::VendorAuthFailed);
    assert_eq!(r.error(0).vendor_code.as_deref(), Some("403"));
    drop(adapter);

    // Every third call is a 429: the runs still complete, honouring Retry-After (isolate and
    // release make at least three calls, so one of them is refused whatever the count so far).
    sim.set_faults(Faults { rate_limit_every: 3, ..Faults::default() });
    for command in [Command::Isolate, Command::Release] {
        let mut r = run(&sim, HOST, vec![command]);
        r.drive(&limited).await;
        r.assert_all_succeeded();
    }
    assert!(sim.counters().rate_limited >= 1);
    assert_eq!((sim.counters().isolations, sim.counters().unisolations), (1, 1));
}

#[tokio::test]
async fn the_batch_fetch_flow_downloads_by_element() {
    let sim = Simulator::new(SimConfig::default());
    let url = adapter_url(&sim).await;
    let mut cfg = config(&url, DEFAULT_TFA_USERNAME);
    cfg.fetch_mode = edrgate_cybereason::FetchMode::Batch;
    let adapter = CybereasonAdapter::new("cr", cfg).unwrap();
    let path = "C:\\Users\\jdoe\\AppData\\Local\\Temp\\updater.exe";
    let mut r = run(
        &sim,
        HOST,
        vec![
            Command::GetFile { path: path.into(), offset: None, length: None },
            // The same name again: the earlier batch is told apart from the new one.
            Command::GetFile { path: path.into(), offset: Some(0), length: Some(4) },
            Command::GetFile { path: "C:\\nope.bin".into(), offset: None, length: None },
        ],
    )
    .continue_on_error();
    r.drive(&adapter).await;
    let expected = sim.file_content(HOST, path).unwrap();
    let CommandResult::File { file } = r.result(0) else { panic!("{:?}", r.result(0)) };
    assert_eq!(r.files.bytes(file), expected);
    let CommandResult::File { file } = r.result(1) else { panic!("{:?}", r.result(1)) };
    assert_eq!(r.files.bytes(file), expected[..4].to_vec());
    assert_eq!(r.error(2).code, ErrorCode::FileNotFound);
    let c = sim.counters();
    assert_eq!((c.fetch_batches, c.direct_fetches), (2, 0));
}

#[tokio::test]
async fn concurrent_calls_share_one_login() {
    let (sim, adapter) = setup(SimConfig::default()).await;
    let adapter = std::sync::Arc::new(adapter);
    let calls: Vec<_> = (0..10)
        .map(|_| {
            let a = std::sync::Arc::clone(&adapter);
            tokio::spawn(async move { a.find_devices(Some("CR-WS")).await.unwrap().len() })
        })
        .collect();
    for call in calls {
        assert_eq!(call.await.unwrap(), 5);
    }
    let c = sim.counters();
    assert_eq!((c.logins, c.totp_logins), (1, 1), "logins are serialised and the session reused");
}

/// A replica-shared quota that lets two calls through, then asks to wait once per call.
struct SharedQuota {
    calls: std::sync::atomic::AtomicU32,
    waits: std::sync::atomic::AtomicU32,
}

#[async_trait::async_trait]
impl edrgate_adapter::SharedBudget for SharedQuota {
    fn is_shared(&self) -> bool {
        true
    }
    async fn try_take_slot(
        &self,
        _: &str,
        _: usize,
        _: &str,
        _: &str,
    ) -> Result<Option<String>, edrgate_adapter::AdapterError> {
        Ok(Some("t".into()))
    }
    fn release_slot(&self, _: &str, _: &str, _: &str) {}
    async fn take_call(
        &self,
        scope: &str,
        limit: u32,
        window: Duration,
    ) -> Result<Option<Duration>, edrgate_adapter::AdapterError> {
        use std::sync::atomic::Ordering::SeqCst;
        assert!(scope.starts_with("cybereason:http://") && limit == 600 && window.as_secs() == 60);
        if self.calls.fetch_add(1, SeqCst) >= 2 && self.waits.fetch_add(1, SeqCst).is_multiple_of(2)
        {
            return Ok(Some(Duration::from_millis(10)));
        }
        Ok(None)
    }
}

#[tokio::test]
async fn calls_wait_for_the_quota_shared_with_other_replicas() {
    let (sim, adapter) = setup(SimConfig::default()).await;
    let quota = std::sync::Arc::new(SharedQuota { calls: 0.into(), waits: 0.into() });
    adapter.use_shared_budget(quota.clone());
    assert_eq!(adapter.find_devices(None).await.unwrap().len(), 5);
    let mut r = run(&sim, HOST, vec![Command::Isolate]);
    r.drive(&adapter).await;
    r.assert_all_succeeded();
    let asked = quota.calls.load(std::sync::atomic::Ordering::SeqCst);
    // Every vendor request (login, form follow-ups aside, and each /rest/ call) asked the quota.
    assert!(asked >= 4, "{asked}");
    assert!(quota.waits.load(std::sync::atomic::Ordering::SeqCst) >= 1);
    assert_eq!(adapter.budgets()[0].capacity, 10);
}

#[tokio::test]
async fn lost_answers_to_action_requests_are_reconciled_not_repeated() {
    let (sim, adapter) =
        setup(SimConfig { remediation_delay: Duration::from_millis(200), ..SimConfig::default() })
            .await;
    // The remediation runs on the console, but edrgate never sees the answer.
    sim.drop_response_of("/rest/remediate");
    let mut r = run(&sim, HOST, vec![Command::KillProcess { pid: 4242, vendor_id: None }]);
    r.drive(&adapter).await;
    r.assert_all_succeeded();
    let c = sim.counters();
    assert_eq!((c.dropped_responses, c.remediations_received, c.remediations_executed), (1, 1, 1));

    sim.drop_response_of("/rest/sensors/action/runIRTool");
    let mut r = run(
        &sim,
        HOST,
        vec![Command::RunScript { script: "collector.exe".into(), args: vec![], file_id: None }],
    );
    r.drive(&adapter).await;
    r.assert_all_succeeded();
    assert_eq!(sim.counters().ir_runs, 1);

    sim.drop_response_of("/rest/monitor/global/commands/isolate");
    let mut r = run(&sim, HOST, vec![Command::Isolate]);
    r.drive(&adapter).await;
    r.assert_all_succeeded();
    assert_eq!(sim.counters().isolations, 1, "the sensor already isolated: not sent again");
}

#[tokio::test]
async fn sessions_are_renewed_before_they_expire() {
    let sim = Simulator::new(SimConfig::default());
    let url = adapter_url(&sim).await;
    let mut cfg = config(&url, DEFAULT_TFA_USERNAME);
    cfg.session_lifetime_secs = 2;
    cfg.relogin_margin_secs = 1;
    let adapter = CybereasonAdapter::new("cr", cfg).unwrap();
    adapter.find_devices(None).await.unwrap();
    adapter.find_devices(None).await.unwrap();
    assert_eq!(sim.counters().logins, 1);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    adapter.find_devices(None).await.unwrap();
    let c = sim.counters();
    assert_eq!((c.logins, c.session_redirects), (2, 0), "renewed proactively, never redirected");
}

#[tokio::test]
async fn kill_by_the_callers_element_id_skips_the_pid_lookup() {
    let (sim, adapter) = setup(SimConfig::default()).await;
    let element = sim.process_element_id(HOST, 4242).unwrap();
    // The pid names no process: only the element id can have found it.
    let kill = Command::KillProcess { pid: 31337, vendor_id: Some(element) };
    let mut r = run(&sim, HOST, vec![kill]);
    r.drive(&adapter).await;
    r.assert_all_succeeded();
    assert!(!sim.process_exists(HOST, 4242));
    assert_eq!(sim.counters().remediations_executed, 1);
}

#[tokio::test]
async fn process_list_reports_live_processes_with_their_element_ids() {
    let (sim, adapter) = setup(SimConfig::default()).await;
    let mut r = run(&sim, HOST, vec![Command::ProcessList]);
    r.drive(&adapter).await;
    r.assert_all_succeeded();
    let CommandResult::Processes { processes } = r.result(0).clone() else {
        panic!("{:?}", r.result(0))
    };
    let pids: Vec<u64> = processes.iter().map(|p| p.pid).collect();
    assert!(pids.is_sorted(), "by pid: {pids:?}");
    for pid in [4, 368, 548, 680, 700, 1024, 1740, 2480, 3012, 4242] {
        assert_eq!(pids.iter().filter(|p| **p == pid).count(), 1, "{pid} live once: {pids:?}");
    }
    assert!(!pids.contains(&460) && !pids.contains(&2440), "ended parents are not listed");
    let by_pid = |pid: u64| processes.iter().find(|p| p.pid == pid).unwrap();
    // Parents that exited are still named (the console keeps their elements).
    assert_eq!(by_pid(2480).parent_pid, Some(2440), "explorer.exe's userinit.exe");
    let lsass = by_pid(700);
    assert_eq!((lsass.name.as_str(), lsass.parent_pid), ("lsass.exe", Some(548)));
    assert_eq!(lsass.path.as_deref(), Some("c:\\windows\\system32\\lsass.exe"));
    assert_eq!(by_pid(548).name, "wininit.exe");
    let notepad = processes.iter().find(|p| p.pid == 4242).unwrap();
    assert_eq!(notepad.name, "notepad.exe", "not the ended cmd.exe of the same pid");
    assert_eq!(notepad.parent_pid, Some(2480));
    assert_eq!(notepad.username.as_deref(), Some("CORP\\jdoe"));
    assert!(notepad.command_line.as_deref().unwrap().contains("note.txt"));
    assert!(notepad.started_at.is_some_and(|t| t > 1_600_000_000));
    assert_eq!(notepad.vendor_id, sim.process_element_id(HOST, 4242));
    // The row's vendor_id kills exactly that instance.
    let kill = Command::KillProcess { pid: 4242, vendor_id: notepad.vendor_id.clone() };
    let mut r = run(&sim, HOST, vec![kill, Command::ProcessList]);
    r.drive(&adapter).await;
    r.assert_all_succeeded();
    let CommandResult::Processes { processes } = r.result(1) else { panic!() };
    assert!(processes.iter().all(|p| p.pid != 4242), "killed: ended, so not listed");
}

#[tokio::test]
async fn quarantine_then_unquarantine_puts_the_file_back() {
    let (sim, adapter) = setup(SimConfig::default()).await;
    let path = "C:\\Windows\\System32\\drivers\\etc\\hosts";
    let content = sim.file_content(HOST, path).unwrap();
    let mut r = run(&sim, HOST, vec![Command::QuarantineFile { path: path.into() }]);
    r.drive(&adapter).await;
    r.assert_all_succeeded();
    assert!(sim.is_quarantined(HOST, path));
    assert_eq!(sim.file_content(HOST, path), None, "moved out of its place");
    assert_eq!(r.views[0].vendor_status.as_deref(), Some("SUCCESS"));

    let mut r = run(&sim, HOST, vec![Command::UnquarantineFile { path: path.into() }]);
    r.drive(&adapter).await;
    r.assert_all_succeeded();
    assert!(!sim.is_quarantined(HOST, path));
    assert_eq!(sim.file_content(HOST, path), Some(content), "back, unchanged");
    let c = sim.counters();
    assert_eq!((c.remediations_received, c.remediations_executed), (2, 2));

    // Nothing of that path is in the quarantine any more: refused before anything is sent.
    let mut r = run(&sim, HOST, vec![Command::UnquarantineFile { path: path.into() }]);
    r.drive(&adapter).await;
    assert_eq!(r.error(0).code, ErrorCode::FileNotFound, "{:?}", r.error(0));
    assert_eq!(sim.counters().remediations_received, 2);
}

#[tokio::test]
async fn a_file_the_console_has_not_indexed_is_not_quarantined() {
    let (sim, adapter) = setup(SimConfig::default()).await;
    // On the disk (the direct fetch reads it), but no File element names it.
    let path = "C:\\Windows\\win.ini";
    let mut r = run(&sim, HOST, vec![Command::QuarantineFile { path: path.into() }]);
    r.drive(&adapter).await;
    let e = r.error(0);
    assert_eq!(e.code, ErrorCode::FileNotFound, "{e:?}");
    assert!(e.message.contains("not indexed"), "{e:?}");
    assert_eq!(sim.counters().remediations_received, 0);
    assert!(sim.file_content(HOST, path).is_some());
}

#[tokio::test]
async fn delete_file_is_not_offered_and_points_to_quarantine_file() {
    let (sim, adapter) = setup(SimConfig::default()).await;
    let caps = adapter.capabilities();
    assert!(!caps.supports(edrgate_adapter::CommandKind::DeleteFile));
    let quarantine = caps
        .commands
        .iter()
        .find(|c| c.command == edrgate_adapter::CommandKind::QuarantineFile)
        .unwrap();
    let notes = quarantine.notes.as_deref().unwrap();
    assert!(notes.contains("reversible") && notes.contains("indexed"), "{notes}");
    assert!(caps.supports(edrgate_adapter::CommandKind::UnquarantineFile));

    let device = adapter.resolve_hostname(HOST).await.unwrap();
    let support = adapter.device_support(&device);
    let reason = support.refusal(edrgate_adapter::CommandKind::DeleteFile).unwrap();
    assert!(reason.contains("use quarantine_file"), "{reason}");

    // Should it reach the adapter anyway: refused with the same reason, nothing sent.
    let path = "C:\\evidence\\note.txt";
    let mut r = run(&sim, HOST, vec![Command::DeleteFile { path: path.into() }]);
    r.drive(&adapter).await;
    let e = r.error(0);
    assert_eq!(e.code, ErrorCode::UnsupportedCommand);
    assert_eq!(e.message, reason);
    assert_eq!(sim.counters().remediations_received, 0);
    assert!(sim.file_content(HOST, path).is_some());
}

#[tokio::test]
async fn linux_files_are_quarantined_and_processes_listed_with_images() {
    let os_types = vec![(1, edrgate_cybereason_sim::SimOs::Linux)];
    let (sim, adapter) = setup(SimConfig { os_types, ..SimConfig::default() }).await;
    let mut r = run(
        &sim,
        HOST,
        vec![
            Command::ProcessList,
            Command::QuarantineFile { path: "/etc/hosts".into() },
            Command::UnquarantineFile { path: "/etc/hosts".into() },
        ],
    );
    r.drive(&adapter).await;
    r.assert_all_succeeded();
    let CommandResult::Processes { processes } = r.result(0).clone() else { panic!() };
    let sshd = processes.iter().find(|p| p.name == "sshd" && p.parent_pid == Some(1)).unwrap();
    assert_eq!(sshd.path.as_deref(), Some("/usr/sbin/sshd"));
    assert_eq!(sshd.username.as_deref(), Some("root"));
    assert!(sim.file_content(HOST, "/etc/hosts").is_some());
    assert_eq!(sim.counters().remediations_executed, 2);
}
