//! The adapter conformance suite (`edrgate_adapter::conformance`) for CrowdStrike, against
//! its simulator.

use std::sync::Arc;
use std::time::Duration;

use edrgate_adapter::Adapter;
use edrgate_adapter::conformance::{Conformance, Fixtures};
use edrgate_crowdstrike::{CrowdStrikeAdapter, CrowdStrikeConfig};
use edrgate_crowdstrike_sim::{
    DEFAULT_CLIENT_ID, DEFAULT_CLIENT_SECRET, NOTE_PATH_WINDOWS, NOTE_TXT, Sim as _, SimConfig,
    Simulator,
};
use secrecy::SecretString;

/// The simulator varies a host's pids with its number modulo 50, and the suite kills one
/// fixed pid on every endpoint it uses: endpoint `n` is host `50 (n - 1) + 1`, so they all
/// share the pids of host 1.
const STRIDE: usize = 50;
/// A public script of the scripts library, for `run_script`.
const SCRIPT: &str = "edrgate-conformance.ps1";

struct CrowdStrike {
    url: String,
    sim: Simulator,
    /// A killable process of every endpoint, as the simulator starts them.
    pid: u64,
}

impl CrowdStrike {
    fn config(&self, secret: &str) -> CrowdStrikeConfig {
        let mut cfg =
            CrowdStrikeConfig::new(&self.url, DEFAULT_CLIENT_ID, SecretString::from(secret));
        cfg.poll_interval_ms = 20;
        cfg.max_poll_interval_ms = 100;
        cfg.batch_window_ms = 10;
        cfg
    }

    fn hostname(n: usize) -> String {
        format!("CS-WIN-{:04}", STRIDE * (n - 1) + 1)
    }
}

#[async_trait::async_trait]
impl Conformance for CrowdStrike {
    async fn start(endpoints: usize) -> Self {
        let sim = Simulator::new(SimConfig {
            windows: STRIDE * (endpoints - 1) + 1,
            linux: 0,
            mac: 0,
            command_delay: Duration::from_millis(40),
            upload_delay: Duration::from_millis(40),
            containment_delay: Duration::from_millis(40),
            ..SimConfig::default()
        });
        let addr = sim.spawn().await.unwrap();
        sim.add_cloud_script(SCRIPT, &["windows"], "Write-Output conformance", "public");
        let pid = u64::from(sim.any_pid(&Self::hostname(1)));
        CrowdStrike { url: format!("http://{addr}"), sim, pid }
    }

    fn adapter(&self) -> Arc<dyn Adapter> {
        Arc::new(
            CrowdStrikeAdapter::new("cs-conformance", self.config(DEFAULT_CLIENT_SECRET)).unwrap(),
        )
    }

    fn device(&self, n: usize) -> String {
        self.sim.device_id(&Self::hostname(n)).unwrap()
    }

    fn sim_url(&self) -> String {
        self.url.clone()
    }

    /// What changes a host: containment and the side-effecting RTR commands (library uploads
    /// change the cloud, not an endpoint).
    fn is_effect(op: &str) -> bool {
        matches!(
            op,
            "contain"
                | "lift_containment"
                | "kill"
                | "rm"
                | "put"
                | "mkdir"
                | "run"
                | "runscript"
                | "reg set"
                | "reg delete"
                | "memdump"
                | "xmemdump"
                | "mv"
                | "cp"
                | "zip"
        )
    }

    fn secrets(&self) -> Vec<String> {
        vec![DEFAULT_CLIENT_SECRET.to_owned()]
    }

    fn adapter_with_wrong_secret(&self) -> Option<(Arc<dyn Adapter>, String)> {
        let wrong = "wrong-crowdstrike-secret-0123";
        let adapter = CrowdStrikeAdapter::new("cs-conformance", self.config(wrong)).unwrap();
        Some((Arc::new(adapter), wrong.to_owned()))
    }

    fn fixtures(&self) -> Fixtures {
        Fixtures {
            pid: self.pid,
            file: NOTE_PATH_WINDOWS.into(),
            file_content: NOTE_TXT.to_vec(),
            missing_file: "C:\\nope.txt".into(),
            dir: "C:\\evidence".into(),
            registry_key: "HKLM\\SOFTWARE\\Microsoft\\Windows NT\\CurrentVersion".into(),
            registry_value: "ProductName".into(),
            writable_key: "HKLM\\SOFTWARE\\Microsoft\\Windows\\CurrentVersion\\Run".into(),
            execute: "C:\\Windows\\System32\\cmd.exe /c echo hello".into(),
            script: SCRIPT.into(),
            script_content: None,
        }
    }
}

edrgate_adapter::conformance_tests!(CrowdStrike);
