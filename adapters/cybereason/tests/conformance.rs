//! The adapter conformance suite (`edrgate_adapter::conformance`) for Cybereason, against its
//! simulator.

use std::sync::Arc;
use std::time::Duration;

use edrgate_adapter::Adapter;
use edrgate_adapter::conformance::{Conformance, Fixtures};
use edrgate_cybereason::{CybereasonAdapter, CybereasonConfig};
use edrgate_cybereason_sim::{
    DEFAULT_PASSWORD, DEFAULT_TFA_USERNAME, DEFAULT_TOTP_SECRET, DEFAULT_ZIP_PASSWORD, NOTE_TXT,
    Sim as _, SimConfig, Simulator,
};
use secrecy::SecretString;

struct Cybereason {
    url: String,
    sim: Simulator,
}

impl Cybereason {
    fn config(&self, password: &str) -> CybereasonConfig {
        let mut cfg =
            CybereasonConfig::new(&self.url, DEFAULT_TFA_USERNAME, SecretString::from(password));
        cfg.totp_secret = Some(SecretString::from(DEFAULT_TOTP_SECRET));
        cfg.fetch_zip_password = SecretString::from(DEFAULT_ZIP_PASSWORD);
        cfg.poll_interval_ms = 20;
        cfg.max_poll_interval_ms = 100;
        cfg
    }
}

#[async_trait::async_trait]
impl Conformance for Cybereason {
    async fn start(endpoints: usize) -> Self {
        let sim = Simulator::new(SimConfig {
            machines: endpoints,
            remediation_delay: Duration::from_millis(60),
            ir_step: Duration::from_millis(40),
            fetch_delay: Duration::from_millis(40),
            ..SimConfig::default()
        });
        let addr = sim.spawn().await.unwrap();
        Cybereason { url: format!("http://{addr}"), sim }
    }

    fn adapter(&self) -> Arc<dyn Adapter> {
        Arc::new(CybereasonAdapter::new("cr-conformance", self.config(DEFAULT_PASSWORD)).unwrap())
    }

    fn device(&self, n: usize) -> String {
        self.sim.pylum_id(&format!("CR-WS-{n:04}")).unwrap()
    }

    fn sim_url(&self) -> String {
        self.url.clone()
    }

    /// Remediations, isolation changes and IR tool runs (not file fetches or package uploads).
    fn is_effect(op: &str) -> bool {
        matches!(
            op,
            "KILL_PROCESS"
                | "QUARANTINE_FILE"
                | "UNQUARANTINE_FILE"
                | "DELETE_REGISTRY_KEY"
                | "isolate"
                | "unisolate"
                | "IRToolsRunIRTool"
        )
    }

    fn secrets(&self) -> Vec<String> {
        vec![DEFAULT_PASSWORD.to_owned(), DEFAULT_TOTP_SECRET.to_owned()]
    }

    fn adapter_with_wrong_secret(&self) -> Option<(Arc<dyn Adapter>, String)> {
        let wrong = "wrong-cybereason-password-0123";
        let adapter = CybereasonAdapter::new("cr-conformance", self.config(wrong)).unwrap();
        Some((Arc::new(adapter), wrong.to_owned()))
    }

    fn fixtures(&self) -> Fixtures {
        Fixtures {
            pid: 4242,
            file: "C:\\evidence\\note.txt".into(),
            file_content: NOTE_TXT.to_vec(),
            missing_file: "C:\\nope.txt".into(),
            dir: "C:\\evidence".into(),
            registry_key: "HKLM\\SOFTWARE\\Microsoft".into(),
            registry_value: "edrgate".into(),
            writable_key: "HKLM\\SOFTWARE\\Microsoft".into(),
            execute: "cmd.exe /c echo hello".into(),
            script: "collector.exe".into(),
            script_content: None,
        }
    }
}

edrgate_adapter::conformance_tests!(Cybereason);
