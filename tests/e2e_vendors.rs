//! One request body, four vendors: a Carbon Black sensor, a Defender machine, a Cybereason
//! sensor and a CrowdStrike host behind one tenant, every command the four support in common
//! sent unchanged to all four in one action, with the same statuses and result shapes back.

use edrgate_simkit::Sim as _;
use std::time::Duration;

use edrgate_defender_sim as mde;
use serde_json::{Value, json};

mod common;
use common::{Settings, Vendors, token};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_bodies_work_on_all_four_vendors() {
    let sims = Vendors::start(Settings {
        mde_pickup_delay: Duration::from_millis(100),
        cr_remediation_delay: Duration::from_millis(100),
        crowdstrike: true,
        ..Settings::default()
    })
    .await;
    let (cb_sim, mde_sim, cr_sim, cs_sim) = (&sims.cb, &sims.mde, &sims.cr, sims.cs());
    let gw = sims.builder().start().await;
    let acme = token("acme");

    // What the four have in common, according to their capabilities.
    let (_, caps) = gw.get(&acme, "/v1/capabilities").await;
    let supported = |backend: &str| -> Vec<String> {
        let caps =
            caps["items"].as_array().unwrap().iter().find(|c| c["backend"] == backend).unwrap();
        caps["commands"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["command"].as_str().unwrap().to_owned())
            .collect()
    };
    let others = [supported("mde"), supported("cr"), supported("cs")];
    let mut common: Vec<String> =
        supported("cb").into_iter().filter(|c| others.iter().all(|o| o.contains(c))).collect();
    common.sort();

    let bodies = [
        ("get_file", json!({"type": "get_file", "path": "C:\\evidence\\note.txt"})),
        ("process_list", json!({"type": "process_list"})),
        ("kill_process", json!({"type": "kill_process", "pid": 3012})),
        ("isolate", json!({"type": "isolate"})),
        ("release", json!({"type": "release"})),
    ];
    let mut covered: Vec<String> = bodies.iter().map(|(k, _)| (*k).to_owned()).collect();
    covered.sort();
    assert_eq!(covered, common, "the test must send every command the four have in common");

    let targets = json!([
        {"hostname": "WIN-0001"},
        {"hostname": "mde-0001"},
        {"hostname": "CR-WS-0001"},
        {"hostname": "CS-WIN-0001"}
    ]);
    for (kind, command) in bodies {
        let body = json!({"targets": targets, "commands": [command]});
        let done = gw.run(&acme, &body).await;
        assert_eq!(done["status"], "succeeded", "{kind}: {done:#}");
        let runs = done["runs"].as_array().unwrap();
        let backends: Vec<&str> = runs.iter().map(|r| r["backend"].as_str().unwrap()).collect();
        assert_eq!(backends, ["cb", "mde", "cr", "cs"], "{kind}");
        // The same result shape from every vendor.
        let shapes: Vec<&Value> =
            runs.iter().map(|r| &r["commands"][0]["result"]["type"]).collect();
        assert!(shapes.iter().all(|s| *s == shapes[0]), "{kind}: {shapes:?}");
        if kind == "get_file" {
            for run in runs {
                let file = &run["commands"][0]["result"]["file"];
                assert_eq!(file["name"], "note.txt", "{run:#}");
                assert_eq!(file["sha256"].as_str().unwrap().len(), 64);
            }
        }
    }
    assert!(!cb_sim.process_exists(1, 3012));
    assert!(!mde_sim.process_exists(&mde::machine_id(1), 3012));
    assert!(!cr_sim.process_exists("CR-WS-0001", 3012));
    assert!(!cs_sim.process_running("CS-WIN-0001", 3012));
    assert!(!mde_sim.is_isolated(&mde::machine_id(1)) && !cr_sim.is_isolated("CR-WS-0001"));
    assert_eq!(cs_sim.containment_status("CS-WIN-0001"), "normal");
    // CrowdStrike's side effects ran once each: one kill, one containment and its lift.
    for op in ["kill", "contain", "lift_containment"] {
        assert_eq!(cs_sim.log().count(op), 1, "{op}: {:?}", cs_sim.log().entries());
    }
    assert!(!cb_sim.is_isolated(1));
}
