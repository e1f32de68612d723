//! `edrgate sim cybereason` and the demo's Cybereason backend.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use edrgate_simkit::cli::{demo_spawn, toml_string};
use edrgate_simkit::{DemoBackend, ServeArgs, Shutdown, VendorSim};

use crate::{
    DEFAULT_IR_RUN_PATH, DEFAULT_PASSWORD, DEFAULT_TFA_USERNAME, DEFAULT_TOTP_SECRET,
    DEFAULT_USERNAME, DEFAULT_ZIP_PASSWORD, SimConfig, Simulator,
};

/// Cybereason (console REST API: login, remediation, isolation, file fetch, IR tools).
#[derive(Debug, clap::Args)]
pub struct CybereasonSimArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8444")]
    pub listen: SocketAddr,
    #[command(flatten)]
    pub serve: ServeArgs,
    /// Number of machines, hostnames `CR-WS-0001`, `CR-WS-0002`, ….
    #[arg(long, default_value_t = 5)]
    pub machines: usize,
    /// Time a remediation takes to end, in milliseconds.
    #[arg(long, default_value_t = 300)]
    pub remediation_delay_ms: u64,
    /// Time between IR tool status changes on a sensor, in milliseconds.
    #[arg(long, default_value_t = 200)]
    pub ir_step_ms: u64,
    /// Hostname where IR tools fail (repeatable).
    #[arg(long)]
    pub ir_fail_host: Vec<String>,
}

/// The Cybereason simulator as the gateway's command line runs it.
#[derive(Debug)]
pub struct CybereasonSim;

impl VendorSim for CybereasonSim {
    const KIND: &'static str = "cybereason";
    const ABOUT: &'static str =
        "Cybereason (console REST API: login, remediation, isolation, file fetch, IR tools).";
    type Args = CybereasonSimArgs;

    async fn serve(args: CybereasonSimArgs, shutdown: Shutdown) -> anyhow::Result<()> {
        let sim = Simulator::new(SimConfig {
            machines: args.machines,
            remediation_delay: Duration::from_millis(args.remediation_delay_ms),
            ir_step: Duration::from_millis(args.ir_step_ms),
            ir_fail_hosts: args.ir_fail_host.clone(),
            ..SimConfig::default()
        });
        let machines = args.machines;
        let banner = |scheme: &str, addr: SocketAddr| {
            format!(
                "Cybereason simulator on {scheme}://{addr}\n  users: {DEFAULT_USERNAME} (no 2FA) and {DEFAULT_TFA_USERNAME} (TOTP secret {DEFAULT_TOTP_SECRET}), password {DEFAULT_PASSWORD}\n  fetch zip password: {DEFAULT_ZIP_PASSWORD}\n  {machines} machines (CR-WS-0001 …)\n  executed actions: {scheme}://{addr}/_sim/log",
            )
        };
        args.serve.run(sim, args.listen, banner, shutdown).await
    }

    async fn demo(dir: &Path, endpoints: usize) -> anyhow::Result<DemoBackend> {
        let sim = Simulator::new(SimConfig { machines: endpoints, ..SimConfig::default() });
        let (url, ca) = demo_spawn(&sim, dir, "cr-sim-ca.pem").await?;
        let toml = format!(
            // The zip password is the platform's fixed one, the adapter's default; the IR run
            // request is unpublished, so it is configured: the simulator's (`DEFAULT_IR_RUN_PATH`).
            "kind = \"cybereason\"\nurl = {url}\nusername = {user}\npassword = {password}\ntotp_secret = {totp}\nir_run_path = {ir}\nca_file = {ca}\n",
            url = toml_string(&url),
            user = toml_string(DEFAULT_TFA_USERNAME),
            password = toml_string(DEFAULT_PASSWORD),
            totp = toml_string(DEFAULT_TOTP_SECRET),
            ir = toml_string(DEFAULT_IR_RUN_PATH),
            ca = toml_string(&ca.display().to_string()),
        );
        let hosts = sim.hostnames();
        Ok(DemoBackend {
            name: "cr-lab".into(),
            toml,
            summary: format!(
                "Cybereason simulator at {url} ({} machines, {} … {})",
                hosts.len(),
                hosts.first().map_or("", String::as_str),
                hosts.last().map_or("", String::as_str),
            ),
            example: r#"{"targets": [{"hostname": "CR-WS-0001"}], "commands": [{"type": "get_file", "path": "C:\\evidence\\note.txt"}]}"#
                .into(),
        })
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        args: CybereasonSimArgs,
    }

    #[test]
    fn arguments_default_to_the_old_sim_command() {
        let cli =
            Cli::try_parse_from(["sim", "--listen", "127.0.0.1:0", "--ir-fail-host", "CR-WS-0002"])
                .unwrap();
        let a = cli.args;
        assert_eq!((a.machines, a.remediation_delay_ms, a.ir_step_ms), (5, 300, 200));
        assert_eq!(a.ir_fail_host, ["CR-WS-0002"]);
        assert!(!a.serve.tls);
        assert_eq!(Cli::try_parse_from(["sim"]).unwrap().args.listen.port(), 8444);
        assert!(Cli::try_parse_from(["sim", "--cert-out", "x.pem"]).is_err(), "needs --tls");
    }

    #[tokio::test]
    async fn the_demo_backend_is_a_cybereason_table() {
        let dir = tempfile::tempdir().unwrap();
        let b = CybereasonSim::demo(dir.path(), 3).await.unwrap();
        assert_eq!(b.name, "cr-lab");
        assert!(
            b.toml.starts_with("kind = \"cybereason\"\nurl = \"https://127.0.0.1:"),
            "{}",
            b.toml
        );
        assert!(b.toml.contains(&format!("totp_secret = \"{DEFAULT_TOTP_SECRET}\"")));
        assert!(b.toml.contains(&format!("ir_run_path = \"{DEFAULT_IR_RUN_PATH}\"")));
        assert!(!b.toml.contains("fetch_zip_password"), "the platform's fixed one is the default");
        assert!(dir.path().join("cr-sim-ca.pem").try_exists().unwrap());
        assert!(b.summary.contains("3 machines, CR-WS-0001 … CR-WS-0003"), "{}", b.summary);
        serde_json::from_str::<serde_json::Value>(&b.example).unwrap();
    }
}
