//! Cybereason adapter (documentation below is completed with the crate).

mod adapter;
mod client;
mod config;
mod mapping;
pub mod simulator;
mod wire;

pub use adapter::{CybereasonAdapter, MAX_PACKAGE_BYTES};
pub use config::{CybereasonConfig, FetchMode};
