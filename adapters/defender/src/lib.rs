//! Microsoft Defender for Endpoint (MDE) live-response adapter for edrgate (in progress).

mod adapter;
mod client;
mod config;
mod mapping;
pub mod simulator;
mod wire;

pub use adapter::DefenderAdapter;
pub use config::{DefenderConfig, LIBRARY_MAX_BYTES};
pub use mapping::PUTFILE_DIR;
