//! Backends of a test gateway, by kind: any vendor's table as TOML, with shorthands for the
//! simulators' defaults.

use std::net::SocketAddr;

use edrgate_carbonblack_sim as cb;
use edrgate_crowdstrike_sim as cs;
use edrgate_cybereason_sim as cr;
use edrgate_defender_sim as mde;
use edrgate_simkit::Sim;

/// The body of a `[tenants.<tenant>.backends.<name>]` table: `kind` and its settings.
#[derive(Clone, Debug)]
pub(crate) struct Backend(pub(crate) toml::Table);

impl Backend {
    /// Any backend, from its table's body (`kind = "…"` included).
    pub(crate) fn toml(body: &str) -> Backend {
        Backend(toml::from_str(body).unwrap_or_else(|e| panic!("{e}\n{body}")))
    }

    /// `settings` (TOML) over this backend's.
    pub(crate) fn with(mut self, settings: &str) -> Backend {
        super::gateway::merge(&mut self.0, Backend::toml(settings).0);
        self
    }

    /// The Carbon Black simulator at `addr`.
    pub(crate) fn carbonblack(addr: SocketAddr) -> Backend {
        Backend::toml(&format!(
            "kind = \"carbonblack\"\nurl = \"http://{addr}\"\ntoken = \"{}\"",
            cb::DEFAULT_TOKEN
        ))
    }

    /// A Carbon Black backend where nothing listens: its runs retry quietly (no state change)
    /// until stopped.
    pub(crate) fn unreachable() -> Backend {
        Backend::carbonblack(SocketAddr::from(([127, 0, 0, 1], 1)))
    }

    /// The Defender simulator at `addr`, polled at a test's pace.
    pub(crate) fn defender(addr: SocketAddr) -> Backend {
        Backend::toml(&format!(
            r#"
            kind = "defender"
            api_url = "http://{addr}"
            token_url = "http://{addr}/{tenant}/oauth2/v2.0/token"
            tenant_id = "{tenant}"
            client_id = "{client}"
            client_secret = "{secret}"
            poll_interval_ms = 100
            max_poll_interval_ms = 500
            "#,
            tenant = mde::DEFAULT_TENANT,
            client = mde::DEFAULT_CLIENT_ID,
            secret = mde::DEFAULT_CLIENT_SECRET,
        ))
    }

    /// The Cybereason simulator at `addr`, as its two-factor user, polled at a test's pace.
    pub(crate) fn cybereason(addr: SocketAddr) -> Backend {
        Backend::toml(&format!(
            r#"
            kind = "cybereason"
            url = "http://{addr}"
            username = "{user}"
            password = "{password}"
            totp_secret = "{totp}"
            fetch_zip_password = "{zip}"
            # The IR tool run request is the operator's to configure (it is undocumented); the
            # simulator takes the sensor batch framework's.
            ir_run_path = "/rest/sensors/action/runIRTool"
            poll_interval_ms = 20
            max_poll_interval_ms = 200
            "#,
            user = cr::DEFAULT_TFA_USERNAME,
            password = cr::DEFAULT_PASSWORD,
            totp = cr::DEFAULT_TOTP_SECRET,
            zip = cr::DEFAULT_ZIP_PASSWORD,
        ))
    }

    /// The CrowdStrike simulator at `addr`, as its all-scopes API client, polled at a test's
    /// pace.
    pub(crate) fn crowdstrike(addr: SocketAddr) -> Backend {
        Backend::toml(&format!(
            r#"
            kind = "crowdstrike"
            base_url = "http://{addr}"
            client_id = "{client}"
            client_secret = "{secret}"
            poll_interval_ms = 20
            max_poll_interval_ms = 200
            "#,
            client = cs::DEFAULT_CLIENT_ID,
            secret = cs::DEFAULT_CLIENT_SECRET,
        ))
    }
}

/// Serves `sim` (any vendor's simulator) on a loopback port: it and its address.
pub(crate) async fn spawn<S: Sim>(sim: S) -> (S, SocketAddr) {
    let addr = sim.spawn().await.unwrap();
    (sim, addr)
}
