//! edrgate: one normalized response-action API in front of EDR live-response backends.
//!
//! See ARCHITECTURE.md for the map. Entry points: [`cli`] (the binary), [`api::router`] (HTTP),
//! [`engine::Engine`] (durable execution).

pub mod analyst;
pub mod api;
pub mod app;
pub mod audit;
pub mod auth;
pub mod backends;
pub mod cli;
pub mod config;
pub mod engine;
pub mod files;
pub mod frontdoor;
pub mod metrics;
pub mod net;
pub mod registry;
pub mod store;
pub mod webhooks;
