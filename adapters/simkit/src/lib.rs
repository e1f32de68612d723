//! What every edrgate vendor simulator needs and none should write again.
//!
//! A simulator is product code for tests, the demo and the benchmarks (shared/design.md §5): a
//! vendor's API served over real HTTP(S), with its own request and response types. This crate
//! holds the vendor-neutral part, once:
//!
//! - [`tls`]: a self-signed certificate for `localhost` and `127.0.0.1`, made on first use (real
//!   vendor clients refuse plain HTTP, and tests trust it as their only root or by its pin);
//! - [`serve`]: the [`Sim`] trait a simulator implements (its vendor router, certificate,
//!   record and counters) and, from it, `serve`/`serve_tls_on`/`spawn`/`spawn_tls`, with the
//!   "drop the connection" fault a real network has and a router cannot express;
//! - [`record`]: [`SimLog`], what the simulator executed (side effects), served with the
//!   counters on the admin routes `GET /_sim/log` and `GET /_sim/counters`, outside every
//!   vendor's URL space, so tests and benchmarks in other processes count side effects;
//! - [`faults`]: fault injection in front of every simulator's vendor routes ([`Faults`]: 5xx
//!   bursts, 429 with `Retry-After`, dropped connections, answers lost after the vendor acted,
//!   latency), settable in-process ([`SimFaults::set`]) and over `POST /_sim/faults`;
//! - [`golden`]: the simulators' golden tests, their answers compared by shape with the vendor
//!   captures in `adapters/<vendor>/tests/fixtures/` (fields, casing, types, status);
//! - [`every`]: the 1-based "every Nth request" rule of the fault settings;
//! - [`cli`]: the hook the gateway's `edrgate sim <kind>` and `edrgate demo` use
//!   ([`VendorSim`], erased as [`SimulatorPlugin`]).
//!
//! Nothing here knows a vendor, and no simulator crate depends on its adapter crate.

pub mod cli;
pub mod faults;
pub mod golden;
pub mod record;
pub mod serve;
pub mod tls;

pub use cli::{DemoBackend, ServeArgs, Shutdown, SimulatorPlugin, VendorSim, plugin};
pub use faults::{FaultStats, Faults, Injected, SimFaults};
pub use record::{Executed, SimLog};
pub use serve::{DropConnection, Sim, dropped};
pub use tls::SelfSigned;

/// The fault rule every simulator uses: request `n` (1-based) is hit by "every `k`th" when `k`
/// is set, non-zero and divides `n`.
pub fn every(k: Option<u32>, n: u64) -> bool {
    k.is_some_and(|k| k > 0 && n.is_multiple_of(u64::from(k)))
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_nth() {
        assert!(!super::every(None, 3));
        assert!(!super::every(Some(0), 3));
        assert!(super::every(Some(3), 3));
        assert!(super::every(Some(3), 6));
        assert!(!super::every(Some(3), 4));
    }
}
