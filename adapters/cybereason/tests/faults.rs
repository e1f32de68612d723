//! Cybereason under faults, beyond the conformance suite: a cancel once the console acted,
//! and an answer lost while the console's clock is minutes off ours.

use std::time::Duration;

use edrgate_adapter::adapter::StopReason;
use edrgate_adapter::testsuite::RunHarness;
use edrgate_adapter::{Command, ErrorCode, Status};
use edrgate_cybereason::{CybereasonAdapter, CybereasonConfig};
use edrgate_cybereason_sim::{DEFAULT_PASSWORD, DEFAULT_USERNAME, SimConfig, Simulator};
use edrgate_simkit::Sim as _;
use secrecy::SecretString;

const HOST: &str = "CR-WS-0001";

async fn setup() -> (Simulator, CybereasonAdapter, String) {
    let sim = Simulator::new(SimConfig {
        remediation_delay: Duration::from_millis(600),
        ..SimConfig::default()
    });
    let addr = sim.spawn().await.unwrap();
    let url = format!("http://{addr}");
    let mut cfg =
        CybereasonConfig::new(url.clone(), DEFAULT_USERNAME, SecretString::from(DEFAULT_PASSWORD));
    cfg.poll_interval_ms = 20;
    cfg.max_poll_interval_ms = 100;
    (sim, CybereasonAdapter::new("cr", cfg).unwrap(), url)
}

/// The fault layer every simulator shares (`POST /_sim/faults`, edrgate-simkit).
async fn faults(url: &str, settings: serde_json::Value) {
    edrgate_adapter::http::client(&Default::default(), Duration::from_secs(10))
        .unwrap()
        .post(format!("{url}/_sim/faults"))
        .json(&settings)
        .send()
        .await
        .and_then(|r| r.error_for_status())
        .unwrap();
}

fn kill(sim: &Simulator) -> RunHarness {
    RunHarness::new(
        &sim.pylum_id(HOST).unwrap(),
        vec![Command::KillProcess { pid: 4242, vendor_id: None }],
    )
}

/// A remediation cannot be aborted: once the console took it, a cancelled run reports the
/// kill `outcome_unknown` (it happens anyway), never `cancelled`.
#[tokio::test]
async fn a_cancel_after_the_remediation_was_sent_is_never_reported_cancelled() {
    let (sim, adapter, _) = setup().await;
    let mut r = kill(&sim);
    while sim.counters().remediations_received == 0 {
        r.step(&adapter).await.unwrap();
    }
    r.stop.stop(StopReason::Cancelled);
    r.drive(&adapter).await;
    assert_eq!(r.status(0), Status::Failed, "{:?}", r.views[0]);
    assert_eq!(r.error(0).code, ErrorCode::OutcomeUnknown);
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(sim.counters().remediations_executed, 1, "the kill ran all the same");
}

/// The answer to the remediation is lost after the console acted, and the console's clock is
/// five minutes behind ours: the intent is matched on what the console lists (ids), so the
/// kill is adopted, not sent again. (Matching on start times within 2 s of our clock re-sent it.)
#[tokio::test]
async fn a_lost_answer_under_clock_skew_is_adopted_not_resent() {
    for skew in [-300, 300] {
        let (sim, adapter, url) = setup().await;
        faults(&url, serde_json::json!({"lose_answer_after_effect": 1, "clock_skew_secs": skew}))
            .await;
        let mut r = kill(&sim);
        r.drive(&adapter).await;
        r.assert_all_succeeded();
        let c = sim.counters();
        assert_eq!((c.remediations_received, c.remediations_executed), (1, 1), "skew {skew} s");
    }
}
