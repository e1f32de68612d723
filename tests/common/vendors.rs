//! A Carbon Black sensor, a Defender machine and a Cybereason sensor (and, when asked, a
//! CrowdStrike host) behind one tenant: the simulators, serving until dropped, and a gateway
//! configuration with one backend each (`cb`, `mde`, `cr`, `cs`).

use std::time::Duration;

use edrgate_carbonblack_sim as cb;
use edrgate_crowdstrike_sim as cs;
use edrgate_cybereason_sim as cr;
use edrgate_defender_sim as mde;
use edrgate_simkit::Sim as _;

use super::backend::Backend;
use super::gateway::{Gateway, GatewayBuilder};

/// What differs between the tests that use [`Vendors`]; [`Default`] is the quick pace.
#[derive(Clone, Debug)]
pub(crate) struct Settings {
    /// How long the CB sensor takes per command.
    pub(crate) cb_command_latency: Duration,
    /// How long Defender takes to pick up a live-response action.
    pub(crate) mde_pickup_delay: Duration,
    /// How long Cybereason takes per remediation.
    pub(crate) cr_remediation_delay: Duration,
    /// Cybereason's machines; `None` keeps the simulator's default.
    pub(crate) cr_machines: Option<usize>,
    /// A CrowdStrike host too, as backend `cs`.
    pub(crate) crowdstrike: bool,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            cb_command_latency: Duration::from_millis(5),
            mde_pickup_delay: Duration::from_millis(50),
            cr_remediation_delay: Duration::from_millis(50),
            cr_machines: None,
            crowdstrike: false,
        }
    }
}

/// The running simulators, for the tests to read their state, and their backends.
pub(crate) struct Vendors {
    pub(crate) cb: cb::Simulator,
    pub(crate) mde: mde::Simulator,
    pub(crate) cr: cr::Simulator,
    cs: Option<cs::Simulator>,
    /// The Carbon Black backend, for a test that puts the same server behind another tenant.
    pub(crate) cb_backend: Backend,
    mde_backend: Backend,
    cr_backend: Backend,
    cs_backend: Option<Backend>,
}

/// A one-sensor Carbon Black simulator taking `command_latency` per command, serving, and its
/// backend, polled every 20 ms so a test is not paced by the gateway's default interval.
pub(crate) async fn carbonblack(command_latency: Duration) -> (cb::Simulator, Backend) {
    let sim = cb::Simulator::new(cb::SimConfig {
        sensors: 1,
        checkin_delay: Duration::from_millis(20),
        command_latency,
        ..cb::SimConfig::default()
    });
    let addr = sim.spawn().await.unwrap();
    (sim, Backend::carbonblack(addr).with("poll_interval_ms = 20"))
}

impl Vendors {
    /// The simulators of `settings`, serving.
    pub(crate) async fn start(settings: Settings) -> Vendors {
        let (cb, cb_backend) = carbonblack(settings.cb_command_latency).await;
        let mde = mde::Simulator::new(mde::SimConfig {
            machines: 1,
            pickup_delay: settings.mde_pickup_delay,
            ..mde::SimConfig::default()
        });
        let mde_backend = Backend::defender(mde.spawn().await.unwrap());
        let cr_default = cr::SimConfig::default();
        let cr = cr::Simulator::new(cr::SimConfig {
            machines: settings.cr_machines.unwrap_or(cr_default.machines),
            remediation_delay: settings.cr_remediation_delay,
            ..cr_default
        });
        let cr_backend = Backend::cybereason(cr.spawn().await.unwrap());
        let (cs, cs_backend) = if settings.crowdstrike {
            let cs = cs::Simulator::new(cs::SimConfig {
                command_delay: Duration::from_millis(20),
                upload_delay: Duration::from_millis(50),
                containment_delay: Duration::from_millis(50),
                ..cs::SimConfig::default()
            });
            let backend = Backend::crowdstrike(cs.spawn().await.unwrap());
            (Some(cs), Some(backend))
        } else {
            (None, None)
        };
        Vendors { cb, mde, cr, cs, cb_backend, mde_backend, cr_backend, cs_backend }
    }

    /// The CrowdStrike simulator (only with [`Settings::crowdstrike`]).
    pub(crate) fn cs(&self) -> &cs::Simulator {
        self.cs.as_ref().expect("Vendors started without Settings::crowdstrike")
    }

    /// A gateway configuration with tenant `acme`'s backends `cb`, `mde`, `cr` (and `cs`).
    pub(crate) fn builder(&self) -> GatewayBuilder {
        let builder = Gateway::builder()
            .backend("acme", "cb", &self.cb_backend)
            .backend("acme", "mde", &self.mde_backend)
            .backend("acme", "cr", &self.cr_backend);
        match &self.cs_backend {
            Some(cs) => builder.backend("acme", "cs", cs),
            None => builder,
        }
    }
}
