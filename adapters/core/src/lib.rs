//! edrgate's adapter contract.
//!
//! This crate is what the gateway and every vendor adapter share, and the only thing they share:
//!
//! - [`model`]: the normalized model (commands, results, statuses, errors, capabilities) that
//!   is also the public wire format;
//! - [`adapter`]: the [`Adapter`] trait, a resumable state machine the engine drives step by
//!   step, and the seams it gets from the engine ([`Journal`], [`RunFiles`]);
//! - [`error`]: [`AdapterError`], the normalized error with its retry hints;
//! - [`driver`]: the step loop every adapter's `step` delegates to ([`driver::drive`]): stop
//!   checks, back-off, `on_error`, intent journaling; a vendor implements [`driver::VendorRun`];
//! - [`factory`]: [`factory::BackendFactory`], a vendor's kind, config, secrets and build, said once;
//! - [`budget`]: [`FairSlots`], the fair concurrency budget in front of a vendor;
//! - [`shared`]: [`SharedBudget`], vendor budgets kept with the other gateway replicas;
//! - [`http`]: vendor-HTTP helpers shared by adapters (`Retry-After`, back-off, classification
//!   of transport failures);
//! - `testsuite` (feature `testsuite`): an in-memory engine stand-in for adapter tests;
//! - `conformance` (feature `testsuite`): the adapter conformance suite, every MUST of
//!   `adapters/README.md` as a test each adapter runs against its simulator
//!   (`conformance_tests!`).
//!
//! The rules every adapter follows are in `adapters/README.md`.

pub mod adapter;
pub mod budget;
#[cfg(feature = "testsuite")]
pub mod conformance;
pub mod driver;
pub mod error;
pub mod factory;
pub mod http;
pub mod model;
pub mod rate;
pub mod shared;
#[cfg(feature = "testsuite")]
pub mod testsuite;

pub use adapter::{
    Adapter, BudgetUse, ByteRange, CommandUpdate, Journal, Next, RunContext, RunFiles, Step,
    hostname_matches, names_device,
};
pub use budget::{FairSlots, SlotGuard};
pub use error::AdapterError;
pub use model::*;
pub use shared::{LocalBudget, SharedBudget, SharedSlot};
