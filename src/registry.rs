//! The vendors edrgate knows: the only gateway file that names vendor crates.
//!
//! Each vendor crate says once what the gateway needs to know about it: its adapter factory
//! ([`edrgate_adapter::factory::BackendFactory`]: kind, typed config and its JSON Schema, secret
//! settings, checks, build) and, in its simulator crate, the `edrgate sim` / `edrgate demo`
//! hook (`edrgate_simkit::VendorSim`). Config parsing, the config schema, `<secret>_file`
//! indirection, backend building, `sim` and `demo` all follow from these two lists.
//!
//! Adding a vendor: one line in each list (and its crates as workspace members and
//! dependencies).

use edrgate_adapter::factory::{AdapterFactory, factory};

/// Every vendor's adapter factory, in the order the config schema lists them.
pub fn adapters() -> &'static [&'static dyn AdapterFactory] {
    static ADAPTERS: &[&dyn AdapterFactory] = &[
        &factory::<edrgate_carbonblack::CarbonBlack>(),
        &factory::<edrgate_crowdstrike::CrowdStrike>(),
        &factory::<edrgate_cybereason::Cybereason>(),
        &factory::<edrgate_defender::Defender>(),
    ];
    ADAPTERS
}

/// The factory of backend kind `kind`.
pub fn adapter(kind: &str) -> Option<&'static dyn AdapterFactory> {
    adapters().iter().copied().find(|f| f.kind() == kind)
}

/// Every vendor's simulator, in the order `edrgate sim --help` and the demo list them. Not in
/// production builds (cargo feature `simulators`, on by default).
#[cfg(feature = "simulators")]
pub fn simulators() -> &'static [&'static dyn edrgate_simkit::SimulatorPlugin] {
    use edrgate_simkit::{SimulatorPlugin, plugin};
    static SIMULATORS: &[&dyn SimulatorPlugin] = &[
        &plugin::<edrgate_carbonblack_sim::cli::CarbonBlackSim>(),
        &plugin::<edrgate_crowdstrike_sim::cli::CrowdStrikeSim>(),
        &plugin::<edrgate_cybereason_sim::cli::CybereasonSim>(),
        &plugin::<edrgate_defender_sim::cli::DefenderSim>(),
    ];
    SIMULATORS
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_factory_declares_itself_consistently() {
        // Kinds are unique: a backend's `kind` picks exactly one factory.
        let mut kinds: Vec<&str> = super::adapters().iter().map(|f| f.kind()).collect();
        kinds.sort_unstable();
        kinds.dedup();
        assert_eq!(kinds.len(), super::adapters().len(), "{kinds:?}");
        for factory in super::adapters() {
            let problems = edrgate_adapter::factory::check(*factory);
            assert!(problems.is_empty(), "{problems:?}");
        }
    }

    /// `edrgate sim <kind>` simulates backend kind `<kind>`.
    #[cfg(feature = "simulators")]
    #[test]
    fn every_simulator_is_of_a_known_kind() {
        let kinds: Vec<&str> = super::simulators().iter().map(|s| s.kind()).collect();
        let adapters: Vec<&str> = super::adapters().iter().map(|f| f.kind()).collect();
        assert_eq!(kinds, adapters);
    }
}
