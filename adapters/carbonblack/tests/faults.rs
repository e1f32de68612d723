//! Carbon Black under faults the conformance suite does not reach: a crash in the middle of
//! a step, after a vendor call that destroys what redoing the step would need.

use std::time::Duration;

use edrgate_adapter::testsuite::RunHarness as Run;
use edrgate_adapter::{Command, CommandResult, Status};
use edrgate_carbonblack::{CarbonBlackAdapter, CarbonBlackConfig};
use edrgate_carbonblack_sim::{DEFAULT_TOKEN, SimConfig, Simulator};
use edrgate_simkit::Sim as _;

async fn simulator() -> (Simulator, String) {
    let sim = Simulator::new(SimConfig {
        command_latency: Duration::from_millis(300),
        ..SimConfig::default()
    });
    let addr = sim.spawn().await.unwrap();
    (sim, format!("http://{addr}"))
}

fn adapter(url: &str) -> CarbonBlackAdapter {
    let mut cfg = CarbonBlackConfig::new(url, DEFAULT_TOKEN.to_owned().into());
    cfg.poll_interval_ms = 20;
    cfg.max_poll_interval_ms = 200;
    cfg.long_poll_ms = 1000;
    CarbonBlackAdapter::new("cb-test", cfg).unwrap()
}

/// `execute` with `wait: true` captures its output in a temporary file on the endpoint, fetches
/// it, then deletes it. A crash once the sensor was asked to delete it must not make the
/// resumed run fetch a file that is gone (it was reported `file_not_found` although the
/// process ran); memdump has the same shape.
#[tokio::test]
async fn a_crash_while_the_temporary_file_is_deleted_keeps_the_fetched_result() {
    let (sim, url) = simulator().await;
    let commands = [
        Command::Execute {
            command_line: "cmd.exe /c echo hello edrgate".into(),
            wait: true,
            working_directory: None,
            output_file: None,
        },
        Command::MemoryDump { path: None, fetch: true },
    ];
    for command in commands {
        let mut run = Run::new("1", vec![command.clone()]);
        let first = adapter(&url);
        let deletes = sim.counters().commands_by_name.get("delete file").copied().unwrap_or(0);
        let posted = {
            let sim = sim.clone();
            async move {
                // Checked at every turn of the runtime (the simulator runs on it too), not
                // every few ms: a loaded machine let the step post the delete and finish the
                // run between two checks.
                while sim.counters().commands_by_name.get("delete file").copied().unwrap_or(0)
                    == deletes
                {
                    tokio::task::yield_now().await;
                }
            }
        };
        run.crash_when(&first, posted).await;
        drop(first);

        let second = adapter(&url);
        run.drive(&second).await;
        assert_eq!(run.status(0), Status::Succeeded, "{command:?}: {:?}", run.views[0]);
        match run.result(0) {
            CommandResult::Execution { output: Some(output), .. } => {
                assert!(output.contains("hello edrgate"), "{output}")
            }
            CommandResult::MemoryDump { file: Some(_), .. } => {}
            other => panic!("{command:?}: {other:?}"),
        }
    }
}
