//! `edrgate sim defender` and the demo's Defender backend.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use edrgate_simkit::cli::{demo_spawn, toml_string};
use edrgate_simkit::{DemoBackend, ServeArgs, Shutdown, VendorSim};

use crate::{DEFAULT_CLIENT_ID, DEFAULT_CLIENT_SECRET, DEFAULT_TENANT, SimConfig, Simulator};

/// Microsoft Defender for Endpoint (token endpoint, machines, live response, library, result
/// links, isolation).
#[derive(Debug, clap::Args)]
pub struct DefenderSimArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8445")]
    pub listen: SocketAddr,
    #[command(flatten)]
    pub serve: ServeArgs,
    /// Number of machines, hostnames `mde-0001`, `mde-0002`, ….
    #[arg(long, default_value_t = 5)]
    pub machines: usize,
    /// Machine numbers that are offline (repeatable): their actions stay `Pending`.
    #[arg(long)]
    pub offline: Vec<usize>,
    /// Time from a machine action's creation to `InProgress`, in milliseconds.
    #[arg(long, default_value_t = 200)]
    pub pickup_delay_ms: u64,
    /// Time each live-response command takes, in milliseconds.
    #[arg(long, default_value_t = 50)]
    pub command_latency_ms: u64,
    /// `runliveresponse` calls allowed per window (Defender: 10 per minute).
    #[arg(long, default_value_t = 10)]
    pub live_response_calls: usize,
    /// The window of `--live-response-calls`, in seconds.
    #[arg(long, default_value_t = 60)]
    pub live_response_window_secs: u64,
    /// Pending + running live-response actions allowed (Defender: 25).
    #[arg(long, default_value_t = 25)]
    pub session_cap: usize,
    /// `expires_in` of issued access tokens, in seconds.
    #[arg(long, default_value_t = 3599)]
    pub token_lifetime_secs: u64,
    /// Lifetime of result download links, in seconds (Defender: 30 minutes).
    #[arg(long, default_value_t = 1800)]
    pub link_lifetime_secs: u64,
}

/// The Defender simulator as the gateway's command line runs it.
#[derive(Debug)]
pub struct DefenderSim;

impl VendorSim for DefenderSim {
    const KIND: &'static str = "defender";
    const ABOUT: &'static str = "Microsoft Defender for Endpoint (token endpoint, machines, live response, library, result links, isolation).";
    type Args = DefenderSimArgs;

    async fn serve(args: DefenderSimArgs, shutdown: Shutdown) -> anyhow::Result<()> {
        let sim = Simulator::new(SimConfig {
            machines: args.machines,
            offline_machines: args.offline.clone(),
            pickup_delay: Duration::from_millis(args.pickup_delay_ms),
            command_latency: Duration::from_millis(args.command_latency_ms),
            live_response_calls: args.live_response_calls,
            live_response_window: Duration::from_secs(args.live_response_window_secs),
            session_cap: args.session_cap,
            token_lifetime: Duration::from_secs(args.token_lifetime_secs),
            link_lifetime: Duration::from_secs(args.link_lifetime_secs),
            ..SimConfig::default()
        });
        let machines = args.machines;
        let banner = |scheme: &str, addr: SocketAddr| {
            format!(
                "Defender simulator on {scheme}://{addr}\n  token endpoint {scheme}://{addr}/{DEFAULT_TENANT}/oauth2/v2.0/token\n  client_id {DEFAULT_CLIENT_ID} client_secret {DEFAULT_CLIENT_SECRET}\n  {machines} machines (mde-0001 …), library script collect.ps1\n  executed commands: {scheme}://{addr}/_sim/log",
            )
        };
        args.serve.run(sim, args.listen, banner, shutdown).await
    }

    async fn demo(dir: &Path, endpoints: usize) -> anyhow::Result<DemoBackend> {
        let sim = Simulator::new(SimConfig { machines: endpoints, ..SimConfig::default() });
        let (url, ca) = demo_spawn(&sim, dir, "mde-sim-ca.pem").await?;
        let toml = format!(
            "kind = \"defender\"\napi_url = {url}\ntoken_url = {token_url}\ntenant_id = {tenant}\nclient_id = {client}\nclient_secret = {secret}\nca_file = {ca}\ntoken_tls = {{ ca_file = {ca} }}\ndownload_tls = {{ ca_file = {ca} }}\n",
            url = toml_string(&url),
            token_url = toml_string(&format!("{url}/{DEFAULT_TENANT}/oauth2/v2.0/token")),
            tenant = toml_string(DEFAULT_TENANT),
            client = toml_string(DEFAULT_CLIENT_ID),
            secret = toml_string(DEFAULT_CLIENT_SECRET),
            ca = toml_string(&ca.display().to_string()),
        );
        Ok(DemoBackend {
            name: "mde-lab".into(),
            toml,
            summary: format!(
                "Defender simulator at {url} ({endpoints} machines, mde-0001 … mde-{endpoints:04})"
            ),
            example: r#"{"targets": [{"hostname": "mde-0001"}], "commands": [{"type": "process_list"}, {"type": "get_file", "path": "C:\\evidence\\note.txt"}]}"#
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
        args: DefenderSimArgs,
    }

    #[test]
    fn arguments_default_to_defenders_limits() {
        let cli =
            Cli::try_parse_from(["sim", "--listen", "127.0.0.1:0", "--offline", "3"]).unwrap();
        let a = cli.args;
        assert_eq!((a.machines, a.live_response_calls, a.session_cap), (5, 10, 25));
        assert_eq!(a.offline, [3]);
        assert!(!a.serve.tls);
        assert!(Cli::try_parse_from(["sim", "--cert-out", "x.pem"]).is_err(), "needs --tls");
    }

    #[tokio::test]
    async fn the_demo_backend_is_a_defender_table() {
        let dir = tempfile::tempdir().unwrap();
        let b = DefenderSim::demo(dir.path(), 3).await.unwrap();
        assert_eq!(b.name, "mde-lab");
        assert!(b.toml.starts_with("kind = \"defender\"\napi_url = \"https://127.0.0.1:"));
        assert!(b.toml.contains("/sim-tenant/oauth2/v2.0/token\""), "{}", b.toml);
        // One listener plays the token, API and download hosts: its CA is each host's.
        assert_eq!(b.toml.matches("ca_file = ").count(), 3, "{}", b.toml);
        assert!(b.toml.contains("\ntoken_tls = { ca_file = "), "{}", b.toml);
        assert!(b.toml.contains("\ndownload_tls = { ca_file = "), "{}", b.toml);
        assert!(dir.path().join("mde-sim-ca.pem").try_exists().unwrap());
        assert!(b.summary.contains("mde-0003"));
        serde_json::from_str::<serde_json::Value>(&b.example).unwrap();
    }
}
