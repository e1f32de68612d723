//! The adapter conformance suite (`edrgate_adapter::conformance`) for CrowdStrike, against
//! its simulator.

use std::sync::Arc;
use std::time::Duration;

use edrgate_adapter::Adapter;
use edrgate_adapter::conformance::{Conformance, Fixtures};
use edrgate_crowdstrike::{CrowdStrikeAdapter, CrowdStrikeConfig};
use edrgate_crowdstrike_sim::{
    DEFAULT_CLIENT_ID, DEFAULT_CLIENT_SECRET, NOTE_PATH_WINDOWS, NOTE_TXT, Sim as _, SimConfig,
    Simulator, UPDATER_PID,
};
use secrecy::SecretString;

/// A public script of the scripts library, for `run_script`.
const SCRIPT: &str = "edrgate-conformance.ps1";

struct CrowdStrike {
    url: String,
    sim: Simulator,
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
        format!("CS-WIN-{n:04}")
    }
}

#[async_trait::async_trait]
impl Conformance for CrowdStrike {
    async fn start(endpoints: usize) -> Self {
        let sim = Simulator::new(SimConfig {
            windows: endpoints,
            linux: 0,
            mac: 0,
            command_delay: Duration::from_millis(40),
            upload_delay: Duration::from_millis(40),
            containment_delay: Duration::from_millis(40),
            ..SimConfig::default()
        });
        let addr = sim.spawn().await.unwrap();
        sim.add_cloud_script(SCRIPT, &["windows"], "Write-Output conformance", "public");
        CrowdStrike { url: format!("http://{addr}"), sim }
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
            // The suite kills one pid on every endpoint: the beacon each Windows host runs.
            pid: u64::from(UPDATER_PID),
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
