//! `execute` with `wait: false` (issue 12, point 6): a process a live-response script starts as
//! its own child is in the session's job object and is terminated when the session ends
//! (MicrosoftDocs/PowerShell-Docs#8020, PowerShell/PowerShell#16001); the execute helper starts
//! it through WMI (`Win32_Process.Create`) instead, so it outlives the machine action. The
//! simulator models both (endpoint.rs, `starts_detached`).

use edrgate_adapter::testsuite::RunHarness;
use edrgate_adapter::{Command, CommandResult};
use edrgate_defender::{DefenderAdapter, DefenderConfig};
use edrgate_defender_sim::{
    DEFAULT_CLIENT_ID, DEFAULT_CLIENT_SECRET, DEFAULT_TENANT, SimConfig, Simulator, machine_id,
};
use secrecy::SecretString;

#[tokio::test]
async fn a_process_started_without_wait_survives_the_session() {
    let sim = Simulator::new(SimConfig::default());
    let base = format!("http://{}", edrgate_simkit::Sim::spawn(&sim).await.unwrap());
    let mut cfg = DefenderConfig::new(
        &base,
        DEFAULT_TENANT,
        DEFAULT_CLIENT_ID,
        SecretString::from(DEFAULT_CLIENT_SECRET),
    );
    cfg.token_url = Some(format!("{base}/{DEFAULT_TENANT}/oauth2/v2.0/token"));
    cfg.poll_interval_ms = 50;
    cfg.max_poll_interval_ms = 200;
    let adapter = DefenderAdapter::new("mde", cfg).unwrap();
    let m = machine_id(3);
    let mut run = RunHarness::new(
        &m,
        vec![Command::Execute {
            command_line: "ping -t 127.0.0.1".into(),
            wait: false,
            working_directory: None,
            output_file: None,
        }],
    );
    run.drive(&adapter).await;
    run.assert_all_succeeded();
    let CommandResult::Execution { pid: Some(pid), exit_code, .. } = run.result(0) else {
        panic!("{:?}", run.result(0))
    };
    assert_eq!(*exit_code, None, "not waited for");
    // The action is over (its session closed): the process still runs.
    assert!(
        sim.actions().iter().all(|(_, status, _)| status == "Succeeded"),
        "{:?}",
        sim.actions()
    );
    assert!(sim.process_exists(&m, *pid), "the process died with the live-response session");
}
