//! The Defender adapter under faults that decide between "done once" and "done twice" or
//! "reported wrong": slow ambiguous submissions, stops racing the device, failed downloads
//! of signed result links.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use edrgate_adapter::adapter::StopReason;
use edrgate_adapter::testsuite::RunHarness;
use edrgate_adapter::{Command, CommandResult, ErrorCode, Status};
use edrgate_defender::{DefenderAdapter, DefenderConfig};
use edrgate_defender_sim::{
    DEFAULT_CLIENT_ID, DEFAULT_CLIENT_SECRET, DEFAULT_TENANT, SimConfig, Simulator, machine_id,
};
use edrgate_simkit::Sim as _;
use secrecy::SecretString;

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

async fn setup(
    sim: SimConfig,
    tune: impl FnOnce(&mut DefenderConfig),
) -> (Simulator, DefenderAdapter) {
    let sim = Simulator::new(sim);
    let addr = sim.spawn().await.unwrap();
    let mut cfg = config(&format!("http://{addr}"));
    tune(&mut cfg);
    (sim, DefenderAdapter::new("mde", cfg).unwrap())
}

/// A submission whose answer comes after longer than the visibility grace (2 s), and then
/// not at all, for an action reads show only 3.5 s after it was created: the grace must count
/// from the end of the call (the action shows at 3.5 s, within 2.5 + 2 s), not from before it
/// (it would be given up at 2.5 s and the batch sent again).
fn slow_lost_answer(sim: &Simulator) {
    sim.faults().unwrap().set(edrgate_simkit::Faults {
        slow_effect_response: Some(Duration::from_millis(2500)),
        lose_answer_after_effect: 1,
        ..edrgate_simkit::Faults::default()
    });
}

fn lagging_reads() -> SimConfig {
    SimConfig { visibility_delay: Duration::from_millis(3500), ..SimConfig::default() }
}

#[tokio::test]
async fn a_slow_ambiguous_submission_is_not_sent_again() {
    let (sim, adapter) = setup(lagging_reads(), |_| {}).await;
    slow_lost_answer(&sim);
    let mut run =
        RunHarness::new(&machine_id(1), vec![Command::KillProcess { pid: 4242, vendor_id: None }]);
    run.drive(&adapter).await;
    run.assert_all_succeeded();
    let c = sim.counters();
    assert_eq!(c.faults_dropped, 1, "the answer was lost: {c:?}");
    assert_eq!(c.live_response_actions, 1, "the batch was resubmitted: {c:?}");
    assert_eq!(c.helper_runs.get("kill_process"), Some(&1), "{c:?}");
}

#[tokio::test]
async fn a_slow_ambiguous_isolation_is_not_sent_again() {
    let (sim, adapter) = setup(lagging_reads(), |_| {}).await;
    slow_lost_answer(&sim);
    let mut run = RunHarness::new(&machine_id(1), vec![Command::Isolate]);
    run.drive(&adapter).await;
    run.assert_all_succeeded();
    let c = sim.counters();
    assert_eq!(c.faults_dropped, 1, "{c:?}");
    assert_eq!(c.actions_by_type.get("Isolate"), Some(&1), "isolated twice: {c:?}");
}

// ---- stops racing the device ----

/// Stops the run once `ready` holds for the simulator.
fn stop_when(
    run: &RunHarness,
    sim: &Simulator,
    ready: impl Fn(&Simulator) -> bool + Send + 'static,
) {
    let (stop, sim) = (run.stop.clone(), sim.clone());
    tokio::spawn(async move {
        while !ready(&sim) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        stop.stop(StopReason::Cancelled);
    });
}

#[tokio::test]
async fn a_stop_after_the_isolation_applied_reports_it() {
    // Long polls: the isolation completes well before the adapter looks again.
    let (sim, adapter) = setup(SimConfig::default(), |cfg| {
        cfg.poll_interval_ms = 3000;
        cfg.max_poll_interval_ms = 3000;
    })
    .await;
    let mut run = RunHarness::new(&machine_id(1), vec![Command::Isolate, Command::Release]);
    stop_when(&run, &sim, |s| s.actions().first().is_some_and(|a| a.1 == "Succeeded"));
    run.drive(&adapter).await;
    assert_eq!(run.status(0), Status::Succeeded, "{:?}", run.views[0]);
    assert!(matches!(run.result(0), CommandResult::Containment { isolated: true }));
    assert_eq!(run.status(1), Status::Cancelled);
    assert_eq!(sim.counters().actions_by_type.get("Unisolate"), None);
}

#[tokio::test]
async fn a_stop_mid_batch_reports_what_ran_and_what_may_have() {
    // process_list completes, then the kill runs for 1.5 s: the stop lands while it executes.
    let (sim, adapter) = setup(
        SimConfig { command_latency: Duration::from_millis(1500), ..SimConfig::default() },
        |_| {},
    )
    .await;
    let m = machine_id(1);
    let mut run = RunHarness::new(
        &m,
        vec![
            Command::ProcessList,
            Command::KillProcess { pid: 4242, vendor_id: None },
            Command::ListDirectory { path: "C:\\evidence".into() },
        ],
    )
    // One batch: under `stop` the kill would wait for process_list's verdict.
    .continue_on_error();
    stop_when(&run, &sim, |s| s.counters().helper_runs.get("process_list") == Some(&1));
    run.drive(&adapter).await;
    assert_eq!(sim.actions()[0].1, "Cancelled");
    // It ran: its real result.
    assert_eq!(run.status(0), Status::Succeeded, "{:?}", run.views[0]);
    assert!(matches!(run.result(0), CommandResult::Processes { .. }));
    // It was executing when Defender cancelled the action: never "cancelled".
    assert_eq!(run.status(1), Status::Failed, "{:?}", run.views[1]);
    assert_eq!(run.error(1).code, ErrorCode::OutcomeUnknown);
    // It never started.
    assert_eq!(run.status(2), Status::Cancelled, "{:?}", run.views[2]);
    assert_eq!(sim.counters().cancels, 1);
}

#[tokio::test]
async fn a_stop_during_an_ambiguous_submission_is_outcome_unknown() {
    // The answer is lost and reads do not show the action yet when the stop comes.
    let (sim, adapter) = setup(lagging_reads(), |_| {}).await;
    sim.faults().unwrap().set(edrgate_simkit::Faults {
        lose_answer_after_effect: 1,
        ..edrgate_simkit::Faults::default()
    });
    let mut run = RunHarness::new(
        &machine_id(1),
        vec![Command::ProcessList, Command::KillProcess { pid: 4242, vendor_id: None }],
    )
    .continue_on_error();
    stop_when(&run, &sim, |s| s.counters().faults_dropped == 1);
    run.drive(&adapter).await;
    assert_eq!(run.status(0), Status::Cancelled, "{:?}", run.views[0]);
    assert_eq!(run.status(1), Status::Failed, "{:?}", run.views[1]);
    assert_eq!(run.error(1).code, ErrorCode::OutcomeUnknown);
}

// ---- signed result links stay out of errors and logs ----

/// Every tracing event and span field, as text (no subscriber crate: the adapter's own
/// `tracing` is enough). Installed per thread: `#[tokio::test]` runs the adapter, its spawned
/// tasks and the simulator on the test's thread.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<String>>);

struct Fields<'a>(&'a mut String);

impl tracing::field::Visit for Fields<'_> {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        use std::fmt::Write as _;
        let _ = write!(self.0, " {}={value:?}", field.name());
    }
}

impl tracing::Subscriber for Captured {
    fn enabled(&self, _: &tracing::Metadata<'_>) -> bool {
        true
    }
    fn new_span(&self, span: &tracing::span::Attributes<'_>) -> tracing::span::Id {
        let mut text = self.0.lock().unwrap();
        span.record(&mut Fields(&mut text));
        text.push('\n');
        tracing::span::Id::from_u64(1)
    }
    fn record(&self, _: &tracing::span::Id, values: &tracing::span::Record<'_>) {
        values.record(&mut Fields(&mut self.0.lock().unwrap()));
    }
    fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}
    fn event(&self, event: &tracing::Event<'_>) {
        let mut text = self.0.lock().unwrap();
        text.push_str(event.metadata().target());
        event.record(&mut Fields(&mut text));
        text.push('\n');
    }
    fn enter(&self, _: &tracing::span::Id) {}
    fn exit(&self, _: &tracing::span::Id) {}
}

#[tokio::test]
async fn a_failed_download_names_no_signed_link() {
    let captured = Captured::default();
    let _guard = tracing::subscriber::set_default(captured.clone());
    let (sim, adapter) = setup(SimConfig::default(), |cfg| cfg.download_link_retries = 1).await;
    // The first fetch and its retry with a fresh link are cut off: the step fails (transient,
    // logged by the driver), and the next step fetches the result.
    sim.cut_next_downloads(2);
    let mut run = RunHarness::new(
        &machine_id(1),
        vec![Command::GetFile {
            path: "C:\\evidence\\note.txt".into(),
            offset: None,
            length: None,
        }],
    );
    run.drive(&adapter).await;
    run.assert_all_succeeded();
    assert_eq!(sim.counters().cut_downloads, 2);
    let logs = captured.0.lock().unwrap().clone();
    assert!(logs.contains("result download failed"), "the failure was not logged:\n{logs}");
    assert!(logs.contains("vendor call failed; retrying"), "{logs}");
    for secret in ["sig=", "se=", "CustomPlaybookCommandOutput"] {
        assert!(!logs.contains(secret), "a signed link reached the logs ({secret}):\n{logs}");
    }
}
