//! The adapter conformance suite (`edrgate_adapter::conformance`) for Carbon Black, against
//! its simulator.

use std::sync::Arc;
use std::time::Duration;

use edrgate_adapter::Adapter;
use edrgate_adapter::conformance::{Conformance, Fixtures};
use edrgate_carbonblack::{CarbonBlackAdapter, CarbonBlackConfig};
use edrgate_carbonblack_sim::{DEFAULT_TOKEN, NOTE_TXT, Sim as _, SimConfig, Simulator};

struct CarbonBlack {
    url: String,
    _sim: Simulator,
}

impl CarbonBlack {
    fn config(&self, token: &str) -> CarbonBlackConfig {
        let mut cfg = CarbonBlackConfig::new(&self.url, token.to_owned().into());
        cfg.poll_interval_ms = 20;
        cfg.max_poll_interval_ms = 200;
        cfg.long_poll_ms = 1000;
        cfg
    }
}

#[async_trait::async_trait]
impl Conformance for CarbonBlack {
    async fn start(endpoints: usize) -> Self {
        let sim = Simulator::new(SimConfig {
            sensors: endpoints,
            slot_limit: endpoints,
            checkin_delay: Duration::from_millis(20),
            command_latency: Duration::from_millis(20),
            memdump_duration: Duration::from_millis(200),
            memdump_size: 10_000,
            ..SimConfig::default()
        });
        let addr = sim.spawn().await.unwrap();
        CarbonBlack { url: format!("http://{addr}"), _sim: sim }
    }

    fn adapter(&self) -> Arc<dyn Adapter> {
        Arc::new(CarbonBlackAdapter::new("cb-conformance", self.config(DEFAULT_TOKEN)).unwrap())
    }

    fn device(&self, n: usize) -> String {
        n.to_string()
    }

    fn sim_url(&self) -> String {
        self.url.clone()
    }

    /// CB command names (reads excepted) and isolation changes.
    fn is_effect(op: &str) -> bool {
        !matches!(
            op,
            "process list" | "directory list" | "get file" | "reg enum key" | "reg query value"
        )
    }

    fn secrets(&self) -> Vec<String> {
        vec![DEFAULT_TOKEN.to_owned()]
    }

    fn adapter_with_wrong_secret(&self) -> Option<(Arc<dyn Adapter>, String)> {
        let wrong = "wrong-cb-token-0123456789";
        let adapter = CarbonBlackAdapter::new("cb-conformance", self.config(wrong)).unwrap();
        Some((Arc::new(adapter), wrong.to_owned()))
    }

    fn fixtures(&self) -> Fixtures {
        Fixtures {
            pid: 3012,
            file: "C:\\evidence\\note.txt".into(),
            file_content: NOTE_TXT.as_bytes().to_vec(),
            missing_file: "C:\\nope.txt".into(),
            dir: "C:\\evidence".into(),
            registry_key: "HKLM\\SYSTEM\\CurrentControlSet\\Services\\CarbonBlack".into(),
            registry_value: "ImagePath".into(),
            writable_key: "HKLM\\SOFTWARE".into(),
            execute: "cmd.exe /c echo hello edrgate".into(),
            script: "collect.ps1".into(),
            script_content: None,
        }
    }
}

edrgate_adapter::conformance_tests!(CarbonBlack);
