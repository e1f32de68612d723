//! `edrgate sim crowdstrike` and the demo's CrowdStrike backend.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use edrgate_simkit::cli::{demo_spawn, toml_string};
use edrgate_simkit::{DemoBackend, ServeArgs, Shutdown, VendorSim};

use crate::{
    ARCHIVE_PASSWORD, DEFAULT_CLIENT_ID, DEFAULT_CLIENT_SECRET, READONLY_CLIENT_ID,
    RESPONDER_CLIENT_ID, SimConfig, Simulator,
};

/// CrowdStrike Falcon (OAuth2, hosts, containment, Real Time Response sessions, batches, files).
#[derive(Debug, clap::Args)]
pub struct CrowdStrikeSimArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8446")]
    pub listen: SocketAddr,
    #[command(flatten)]
    pub serve: ServeArgs,
    /// Number of Windows hosts, hostnames `CS-WIN-0001`, ….
    #[arg(long, default_value_t = 3)]
    pub windows: usize,
    /// Number of Linux hosts, `CS-LNX-0001`, ….
    #[arg(long, default_value_t = 1)]
    pub linux: usize,
    /// Number of macOS hosts, `CS-MAC-0001`, ….
    #[arg(long, default_value_t = 1)]
    pub mac: usize,
    /// How long a command runs before its status is complete, in milliseconds.
    #[arg(long, default_value_t = 200)]
    pub command_delay_ms: u64,
    /// How long a `get`'s upload to the cloud takes, in milliseconds.
    #[arg(long, default_value_t = 300)]
    pub upload_delay_ms: u64,
    /// How long containment (and lifting it) stays pending, in milliseconds.
    #[arg(long, default_value_t = 300)]
    pub containment_delay_ms: u64,
    /// Idle session expiry, in seconds (the 5-minute profile: 300).
    #[arg(long, default_value_t = 600)]
    pub session_idle_secs: u64,
    /// Requests per minute per CID.
    #[arg(long, default_value_t = 6000)]
    pub rate_limit_per_minute: u32,
    /// Encrypt the headers of the get-file 7z archives too.
    #[arg(long)]
    pub encrypt_archive_headers: bool,
}

impl CrowdStrikeSimArgs {
    fn config(&self) -> SimConfig {
        SimConfig {
            windows: self.windows,
            linux: self.linux,
            mac: self.mac,
            command_delay: Duration::from_millis(self.command_delay_ms),
            upload_delay: Duration::from_millis(self.upload_delay_ms),
            containment_delay: Duration::from_millis(self.containment_delay_ms),
            session_idle: Duration::from_secs(self.session_idle_secs),
            rate_limit_per_minute: self.rate_limit_per_minute,
            encrypt_archive_headers: self.encrypt_archive_headers,
            ..SimConfig::default()
        }
    }
}

/// The CrowdStrike simulator as the gateway's command line runs it.
#[derive(Debug)]
pub struct CrowdStrikeSim;

impl VendorSim for CrowdStrikeSim {
    const KIND: &'static str = "crowdstrike";
    const ABOUT: &'static str = "CrowdStrike Falcon (OAuth2, hosts, containment, Real Time Response sessions, batches, files).";
    type Args = CrowdStrikeSimArgs;

    async fn serve(args: CrowdStrikeSimArgs, shutdown: Shutdown) -> anyhow::Result<()> {
        let sim = Simulator::new(args.config());
        let hosts = sim.hostnames();
        let banner = move |scheme: &str, addr: SocketAddr| {
            format!(
                "CrowdStrike Falcon simulator on {scheme}://{addr}\n  API clients: {DEFAULT_CLIENT_ID} (all scopes), {RESPONDER_CLIENT_ID} (no RTR admin), {READONLY_CLIENT_ID} (read only); secret {DEFAULT_CLIENT_SECRET}\n  get-file archives: 7z, password {ARCHIVE_PASSWORD}\n  {} hosts ({} …)\n  executed actions: {scheme}://{addr}/_sim/log",
                hosts.len(),
                hosts.first().map_or("", String::as_str),
            )
        };
        args.serve.run(sim, args.listen, banner, shutdown).await
    }

    async fn demo(dir: &Path, endpoints: usize) -> anyhow::Result<DemoBackend> {
        let (linux, mac) = (endpoints / 5, endpoints / 5);
        let windows = endpoints.saturating_sub(linux + mac).max(1);
        let sim = Simulator::new(SimConfig { windows, linux, mac, ..SimConfig::default() });
        let (url, ca) = demo_spawn(&sim, dir, "cs-sim-ca.pem").await?;
        let toml = format!(
            "kind = \"crowdstrike\"\nbase_url = {url}\nclient_id = {id}\nclient_secret = {secret}\nca_file = {ca}\n",
            url = toml_string(&url),
            id = toml_string(DEFAULT_CLIENT_ID),
            secret = toml_string(DEFAULT_CLIENT_SECRET),
            ca = toml_string(&ca.display().to_string()),
        );
        let hosts = sim.hostnames();
        Ok(DemoBackend {
            name: "cs-lab".into(),
            toml,
            summary: format!(
                "CrowdStrike simulator at {url} ({} hosts, {} … {})",
                hosts.len(),
                hosts.first().map_or("", String::as_str),
                hosts.last().map_or("", String::as_str),
            ),
            example: r#"{"targets": [{"hostname": "CS-WIN-0001"}], "commands": [{"type": "get_file", "path": "C:\\evidence\\note.txt"}]}"#
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
        args: CrowdStrikeSimArgs,
    }

    #[test]
    fn arguments_and_their_defaults() {
        let a = Cli::try_parse_from(["sim", "--windows", "2", "--command-delay-ms", "50"])
            .unwrap()
            .args;
        assert_eq!((a.windows, a.linux, a.mac, a.command_delay_ms), (2, 1, 1, 50));
        assert_eq!(a.listen.port(), 8446);
        let c = a.config();
        assert_eq!(c.command_delay, Duration::from_millis(50));
        assert_eq!(c.session_idle, Duration::from_secs(600));
        assert!(Cli::try_parse_from(["sim", "--cert-out", "x.pem"]).is_err(), "needs --tls");
    }

    #[tokio::test]
    async fn the_demo_backend_is_a_crowdstrike_table() {
        let dir = tempfile::tempdir().unwrap();
        let b = CrowdStrikeSim::demo(dir.path(), 5).await.unwrap();
        assert_eq!(b.name, "cs-lab");
        assert!(
            b.toml.starts_with("kind = \"crowdstrike\"\nbase_url = \"https://127.0.0.1:"),
            "{}",
            b.toml
        );
        assert!(b.toml.contains(&format!("client_secret = \"{DEFAULT_CLIENT_SECRET}\"")));
        assert!(dir.path().join("cs-sim-ca.pem").try_exists().unwrap());
        assert!(b.summary.contains("5 hosts, CS-WIN-0001 … CS-MAC-0001"), "{}", b.summary);
        serde_json::from_str::<serde_json::Value>(&b.example).unwrap();
    }
}
