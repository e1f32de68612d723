//! Push, not poll: the tenant's action and run events, from the store's outbox
//! (`store::events`), delivered to webhook subscriptions and per-action callbacks with the
//! Standard Webhooks conventions, and streamed as Server-Sent Events (`api::events`).
//!
//! - [`sign`]: secrets and signatures (`webhook-id`, `webhook-timestamp`, `webhook-signature`);
//! - [`destination`]: where deliveries may go (https, no loopback, link-local or metadata
//!   addresses unless allowed), checked again at connect time;
//! - [`settings`]: the configuration, checked, as the senders use it;
//! - [`deliver`]: dispatching events into deliveries and sending them, at least once.
//!
//! **Architecture Invariant:** this module knows no HTTP server: it depends on `store`,
//! `config` and `net`; `api` uses it, never the other way round.

pub mod deliver;
pub mod destination;
pub mod settings;
pub mod sign;

pub use deliver::Webhooks;
pub use settings::Settings;
