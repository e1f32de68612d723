//! CrowdStrike under faults, beyond the conformance suite: answers lost after the vendor
//! acted (single host and batch), garbled answers, a cancel once a command was sent, and
//! 5xx bursts on the batch routes.

use std::time::Duration;

use edrgate_adapter::adapter::StopReason;
use edrgate_adapter::testsuite::RunHarness;
use edrgate_adapter::{Command, ErrorCode, Status};
use edrgate_crowdstrike::{CrowdStrikeAdapter, CrowdStrikeConfig};
use edrgate_crowdstrike_sim::{
    DEFAULT_CLIENT_ID, DEFAULT_CLIENT_SECRET, Faults, NOTE_PATH_WINDOWS, Sim as _, SimConfig,
    Simulator,
};
use secrecy::SecretString;

const WIN: &str = "CS-WIN-0001";

async fn setup(windows: usize) -> (Simulator, CrowdStrikeAdapter) {
    let sim = Simulator::new(SimConfig {
        windows,
        command_delay: Duration::from_millis(300),
        upload_delay: Duration::from_millis(30),
        ..SimConfig::default()
    });
    let addr = sim.spawn().await.unwrap();
    let mut cfg = CrowdStrikeConfig::new(
        format!("http://{addr}"),
        DEFAULT_CLIENT_ID,
        SecretString::from(DEFAULT_CLIENT_SECRET),
    );
    cfg.poll_interval_ms = 20;
    cfg.max_poll_interval_ms = 100;
    cfg.batch_window_ms = 150;
    (sim, CrowdStrikeAdapter::new("cs", cfg).unwrap())
}

fn run(sim: &Simulator, host: &str, commands: Vec<Command>) -> RunHarness {
    RunHarness::new(&sim.device_id(host).unwrap(), commands)
}

fn ops(sim: &Simulator, op: &str) -> usize {
    sim.log().entries().into_iter().filter(|e| e.op == op).count()
}

/// The runs of one action on `n` Windows hosts.
fn fan_out(sim: &Simulator, n: usize, commands: Vec<Command>) -> Vec<RunHarness> {
    let action = uuid::Uuid::now_v7();
    (1..=n)
        .map(|i| {
            let mut r = run(sim, &format!("CS-WIN-{i:04}"), commands.clone());
            r.action_id = action;
            r
        })
        .collect()
}

#[tokio::test]
async fn a_kill_whose_answer_is_lost_runs_exactly_once() {
    let (sim, adapter) = setup(1).await;
    let pid = sim.any_pid(WIN);
    sim.set_faults(Faults { lose_answer_after_effect: 1, ..Faults::default() });
    let mut r = run(&sim, WIN, vec![Command::KillProcess { pid: u64::from(pid), vendor_id: None }]);
    r.drive(&adapter).await;
    r.assert_all_succeeded();
    assert_eq!(ops(&sim, "kill"), 1, "reconciled from the session's logs, not re-sent");
    assert_eq!(sim.faults().unwrap().stats().answers_lost, 1);
    assert!(!sim.process_running(WIN, pid));
}

/// The answer of a batch command is lost after every host acted: each run finds its
/// command in its session's logs and polls it; nothing is sent twice.
#[tokio::test]
async fn a_lost_batch_answer_is_reconciled_per_host() {
    let (sim, adapter) = setup(4).await;
    let action = uuid::Uuid::now_v7();
    let mut runs: Vec<RunHarness> = (1..=4)
        .map(|i| {
            let host = format!("CS-WIN-{i:04}");
            let mut r =
                run(&sim, &host, vec![Command::DeleteFile { path: NOTE_PATH_WINDOWS.into() }]);
            r.action_id = action;
            r
        })
        .collect();
    sim.set_faults(Faults { lose_answer_after_effect: 1, ..Faults::default() });
    let adapter = &adapter;
    futures::future::join_all(runs.iter_mut().map(|r| r.drive(adapter))).await;
    for r in &runs {
        r.assert_all_succeeded();
    }
    assert_eq!(sim.faults().unwrap().stats().answers_lost, 1);
    assert_eq!(ops(&sim, "rm"), 4, "one rm per host");
    assert_eq!(sim.counters().batch_commands, 1);
}

/// RTR cannot abort a running command: a run cancelled once its kill was sent reports it
/// `outcome_unknown`, never `cancelled`, and the kill happens all the same.
#[tokio::test]
async fn a_cancel_after_the_kill_was_sent_is_never_reported_cancelled() {
    let (sim, adapter) = setup(1).await;
    let pid = sim.any_pid(WIN);
    let mut r = run(&sim, WIN, vec![Command::KillProcess { pid: u64::from(pid), vendor_id: None }]);
    while sim.counters().commands == 0 {
        r.step(&adapter).await.unwrap();
    }
    r.stop.stop(StopReason::Cancelled);
    r.drive(&adapter).await;
    assert_eq!(r.status(0), Status::Failed, "{:?}", r.views[0]);
    assert_eq!(r.error(0).code, ErrorCode::OutcomeUnknown);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!sim.process_running(WIN, pid), "the kill ran all the same");
}

/// A garbled 201 to a batch command (the hosts acted): every run reconciles from its logs.
#[tokio::test]
async fn a_garbled_batch_answer_is_reconciled_per_host() {
    let (sim, adapter) = setup(3).await;
    let mut runs = fan_out(&sim, 3, vec![Command::DeleteFile { path: NOTE_PATH_WINDOWS.into() }]);
    sim.set_faults(Faults { garbage_after_effect: 1, ..Faults::default() });
    let adapter = &adapter;
    futures::future::join_all(runs.iter_mut().map(|r| r.drive(adapter))).await;
    for r in &runs {
        r.assert_all_succeeded();
    }
    assert_eq!(ops(&sim, "rm"), 3);
}

/// 5xx on every third request, batch routes included, is ridden out; nothing acts twice.
/// (A reconciliation that re-read the logs before re-sending met the fault on every resend:
/// three requests a cycle.)
#[tokio::test]
async fn batch_routes_ride_out_5xx_bursts() {
    let (sim, adapter) = setup(3).await;
    let mut runs = fan_out(
        &sim,
        3,
        vec![Command::ProcessList, Command::DeleteFile { path: NOTE_PATH_WINDOWS.into() }],
    );
    sim.set_faults(Faults { error_5xx_every: Some(3), ..Faults::default() });
    let adapter = &adapter;
    futures::future::join_all(
        runs.iter_mut().map(|r| r.drive_within(adapter, Duration::from_secs(60))),
    )
    .await;
    sim.set_faults(Faults::default());
    for r in &runs {
        assert_eq!(r.status(0), Status::Succeeded, "{:?}", r.views);
        let rm = &r.views[1];
        assert!(
            rm.status == Status::Succeeded
                || rm.error.as_ref().is_some_and(|e| e.code == ErrorCode::OutcomeUnknown),
            "{rm:?}"
        );
    }
    assert!(ops(&sim, "rm") <= 3);
}
