//! `edrgate sim carbonblack` and the demo's Carbon Black backend.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use edrgate_simkit::cli::{demo_spawn, toml_string};
use edrgate_simkit::{DemoBackend, ServeArgs, Shutdown, VendorSim};

use crate::{DEFAULT_TOKEN, SimConfig, Simulator};

/// Carbon Black EDR (Live Response API).
#[derive(Debug, clap::Args)]
pub struct CarbonBlackSimArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8443")]
    pub listen: SocketAddr,
    #[command(flatten)]
    pub serve: ServeArgs,
    /// API token clients send in `X-Auth-Token`.
    #[arg(long, default_value = DEFAULT_TOKEN)]
    pub token: String,
    /// Number of sensors, ids 1..=N, hostnames `WIN-0001`, `WIN-0002`, ….
    #[arg(long, default_value_t = 5)]
    pub sensors: usize,
    /// Concurrent live-response sessions the server allows.
    #[arg(long, default_value_t = 10)]
    pub slots: usize,
    /// Time from a session holding a slot to `active`, in milliseconds.
    #[arg(long, default_value_t = 200)]
    pub checkin_delay_ms: u64,
    /// Time a command takes, in milliseconds.
    #[arg(long, default_value_t = 50)]
    pub command_latency_ms: u64,
    /// Size of each endpoint's `C:\evidence\big.bin`, in bytes (generated, not stored).
    #[arg(long, default_value_t = 1024 * 1024)]
    pub file_size_bytes: u64,
}

/// The Carbon Black simulator as the gateway's command line runs it.
#[derive(Debug)]
pub struct CarbonBlackSim;

impl VendorSim for CarbonBlackSim {
    const KIND: &'static str = "carbonblack";
    const ABOUT: &'static str = "Carbon Black EDR (Live Response API).";
    type Args = CarbonBlackSimArgs;

    async fn serve(args: CarbonBlackSimArgs, shutdown: Shutdown) -> anyhow::Result<()> {
        let sim = Simulator::new(SimConfig {
            token: args.token.clone(),
            sensors: args.sensors,
            slot_limit: args.slots,
            checkin_delay: Duration::from_millis(args.checkin_delay_ms),
            command_latency: Duration::from_millis(args.command_latency_ms),
            file_size: args.file_size_bytes,
            ..SimConfig::default()
        });
        let banner = |scheme: &str, addr: SocketAddr| {
            format!(
                "Carbon Black simulator on {scheme}://{addr}\n  X-Auth-Token: {}\n  {} sensors (ids 1..={}, WIN-0001 …), {} session slots\n  executed commands: {scheme}://{addr}/_sim/log",
                args.token, args.sensors, args.sensors, args.slots,
            )
        };
        args.serve.run(sim, args.listen, banner, shutdown).await
    }

    async fn demo(dir: &Path, endpoints: usize) -> anyhow::Result<DemoBackend> {
        let sim = Simulator::new(SimConfig { sensors: endpoints, ..SimConfig::default() });
        let (url, ca) = demo_spawn(&sim, dir, "cb-sim-ca.pem").await?;
        let toml = format!(
            "kind = \"carbonblack\"\nurl = {}\ntoken = {}\nca_file = {}\n",
            toml_string(&url),
            toml_string(DEFAULT_TOKEN),
            toml_string(&ca.display().to_string()),
        );
        Ok(DemoBackend {
            name: "cb-lab".into(),
            toml,
            summary: format!(
                "Carbon Black simulator at {url} ({endpoints} endpoints, WIN-0001 … WIN-{endpoints:04})"
            ),
            example:
                r#"{"targets": [{"hostname": "WIN-0001"}], "commands": [{"type": "process_list"}]}"#
                    .into(),
        })
    }
}
