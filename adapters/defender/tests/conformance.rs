//! The adapter conformance suite (`edrgate_adapter::conformance`) for Defender, against its
//! simulator.

use std::sync::Arc;
use std::time::Duration;

use edrgate_adapter::Adapter;
use edrgate_adapter::conformance::{Conformance, Fixtures};
use edrgate_defender::{DefenderAdapter, DefenderConfig};
use edrgate_defender_sim::{
    DEFAULT_CLIENT_ID, DEFAULT_CLIENT_SECRET, DEFAULT_TENANT, NOTE_TXT, Sim as _, SimConfig,
    Simulator, machine_id,
};
use secrecy::SecretString;

struct Defender {
    url: String,
    _sim: Simulator,
}

impl Defender {
    fn config(&self, secret: &str) -> DefenderConfig {
        let base = &self.url;
        let mut cfg = DefenderConfig::new(
            base,
            DEFAULT_TENANT,
            DEFAULT_CLIENT_ID,
            SecretString::from(secret),
        );
        cfg.token_url = Some(format!("{base}/{DEFAULT_TENANT}/oauth2/v2.0/token"));
        cfg.poll_interval_ms = 50;
        cfg.max_poll_interval_ms = 200;
        cfg.visibility_grace_secs = 1;
        cfg.live_response_calls = 10_000;
        cfg.concurrent_sessions = 64;
        cfg.api_calls_per_minute = 100_000;
        cfg.api_calls_per_hour = 1_000_000;
        cfg
    }
}

#[async_trait::async_trait]
impl Conformance for Defender {
    async fn start(endpoints: usize) -> Self {
        let sim = Simulator::new(SimConfig {
            machines: endpoints,
            pickup_delay: Duration::from_millis(20),
            command_latency: Duration::from_millis(20),
            live_response_calls: 10_000,
            session_cap: 64,
            api_calls_per_minute: 100_000,
            ..SimConfig::default()
        });
        let addr = sim.spawn().await.unwrap();
        Defender { url: format!("http://{addr}"), _sim: sim }
    }

    fn adapter(&self) -> Arc<dyn Adapter> {
        Arc::new(
            DefenderAdapter::new("mde-conformance", self.config(DEFAULT_CLIENT_SECRET)).unwrap(),
        )
    }

    fn device(&self, n: usize) -> String {
        machine_id(n)
    }

    fn sim_url(&self) -> String {
        self.url.clone()
    }

    /// Helper runs that may write, files put, isolation (read helpers, GetFile and the
    /// RunScript record of every helper run are not).
    fn is_effect(op: &str) -> bool {
        matches!(
            op,
            "helper:kill_process"
                | "helper:execute"
                | "helper:registry"
                | "helper:file"
                | "PutFile"
                | "Isolate"
                | "Unisolate"
        )
    }

    fn secrets(&self) -> Vec<String> {
        vec![DEFAULT_CLIENT_SECRET.to_owned()]
    }

    fn adapter_with_wrong_secret(&self) -> Option<(Arc<dyn Adapter>, String)> {
        let wrong = "wrong-mde-secret-0123456789";
        let adapter = DefenderAdapter::new("mde-conformance", self.config(wrong)).unwrap();
        Some((Arc::new(adapter), wrong.to_owned()))
    }

    fn fixtures(&self) -> Fixtures {
        Fixtures {
            pid: 4242,
            file: "C:\\evidence\\note.txt".into(),
            file_content: NOTE_TXT.to_vec(),
            missing_file: "C:\\nope.txt".into(),
            dir: "C:\\evidence".into(),
            registry_key: "HKLM\\SYSTEM\\CurrentControlSet\\Services\\Sense".into(),
            registry_value: "Start".into(),
            writable_key: "HKLM\\SOFTWARE\\Microsoft".into(),
            execute: "echo hello".into(),
            script: "collect.ps1".into(),
            script_content: None,
        }
    }
}

edrgate_adapter::conformance_tests!(Defender);
