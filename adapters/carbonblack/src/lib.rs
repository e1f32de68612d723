//! Carbon Black EDR (CB Response) live-response adapter for edrgate, and its simulator.
//!
//! Section numbers (§) refer to `shared/vendor-apis/carbonblack.md`; vendor pages:
//! <https://developer.carbonblack.com/reference/enterprise-response/deprecated/5.1/live-response-api/>
//! and the vendor client cbapi (`carbonblack/cbapi-python`, `src/cbapi/live_response_api.py`,
//! `src/cbapi/response/cblr.py`, `src/cbapi/response/models.py`).
//!
//! # Vendor model and limits
//! - **Sessions** (§3): one interactive session per sensor (`POST /api/v1/cblr/session`), born
//!   `pending` and `active` only after the sensor's next check-in (seconds to minutes). The
//!   server allows **10 concurrent sessions** by default and every `pending` or `active`
//!   session holds one (§3.3); edrgate keeps at most `slot_limit` open per server with a fair
//!   budget shared by every backend that points at the same URL. An active session dies
//!   after `session_timeout` (300 s) without commands or keepalives (`GET …/keepalive`, sent
//!   only to active sessions, §2.5); a dead session answers `404 Session N not found`, and
//!   the adapter opens another one, at most `max_session_retries` times, like cbapi (§5.3).
//! - **Commands** (§4): one command per `POST …/command`, polled until `complete` / `error`
//!   (`GET …/command/{id}`, with a bounded `?wait=true` long-poll, §2.8). Failures carry a
//!   Win32 HRESULT (§4.4), kept as `vendor_code` (`0x80070002`) beside the normalized code.
//! - **Files** (§2.9–§2.13, §5.6): `get file` stages the endpoint file on the server, whose
//!   content is then downloaded; edrgate reads it in ranges (`offset`/`get_count`, 4 MiB by
//!   default, the server's own transfer chunk) streamed into the file store and deletes each
//!   staged range. `put file` needs a multipart upload into session storage first.
//! - **Containment**: isolation is a sensor property, not a live-response command:
//!   `network_isolation_enabled` set with a `PUT /api/v1/sensor/{id}` as cbapi's
//!   `Sensor.isolate()` does; it takes effect at the sensor's next check-in (`is_isolating`).
//! - **No pagination** on these routes; **no documented rate limit** (cbapi does not retry
//!   by default, §7.3); 5xx and 429 are treated as transient with `Retry-After` honoured.
//! - **HTTP codes** (§3.4): 401/403 bad token, 412 live response disabled on the server
//!   (`CbLREnabled`), 404 session lost (above) or unknown object, 204 on an empty sensor
//!   search.
//!
//! # Commands
//! Every normalized command maps to a native CB command (§4.3) except `run_script`: CB EDR has
//! no script primitive (only `create process` of a command line already on the endpoint), so
//! `run_script` is left out of the capabilities and refused at submission. `execute` uses
//! `create process`, collecting its output through a temporary `output_file` that is fetched
//! and deleted; `memory_dump` uses `memdump` and can fetch the dump.
//!
//! # Asynchrony and crash safety
//! [`CarbonBlackAdapter`] is a resumable state machine (see `edrgate_adapter::adapter`): its
//! checkpoint records the sensor, the session, the current command and its phase. Commands
//! with side effects record their intent before the POST; after a crash the adapter looks
//! for the command in the session's command list (`GET …/command`) and adopts it, or reports
//! `outcome_unknown` without re-sending.

mod adapter;
mod client;
mod config;
mod mapping;
pub mod simulator;
mod wire;

pub use adapter::CarbonBlackAdapter;
pub use config::CarbonBlackConfig;
