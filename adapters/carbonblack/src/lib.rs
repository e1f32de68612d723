//! Carbon Black EDR (CB Response) live-response adapter for edrgate (its simulator is the `edrgate-carbonblack-sim` crate).
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
//! - **Commands** (§4): one command per `POST …/command`, run one at a time per session,
//!   polled until `complete` / `error` / `cancel` (`GET …/command/{id}`). Right after sending,
//!   the adapter long-polls (`?wait=true`, §2.8, bounded by `long_poll_ms`) so short commands
//!   are noticed as they end; longer ones are polled plainly with a delay that grows with the
//!   time waited, which also surfaces memdump progress (`percentdone`). Failures carry a Win32
//!   HRESULT (§4.4), kept as `vendor_code` (`0x80070002`) beside the normalized code.
//! - **Files** (§2.9–§2.13, §5.6): `get file` stages the endpoint file on the server, whose
//!   content is then downloaded; edrgate reads it in ranges (`offset`/`get_count`, 4 MiB by
//!   default, the server's own transfer chunk) streamed into the file store and deletes each
//!   staged range. The file's size is looked up first (`directory list` of its path, whose
//!   single entry carries `size`), so the ranges stop at the end of the file (no empty range
//!   at `offset == size`) and a sensor that ignores `get_count` is read as it sends.
//!   `put file` needs a multipart upload into session storage first.
//! - **Per-sensor commands** (§3.1, §4.3): cbapi refuses what the session's
//!   `supported_commands` does not list; OS X and Linux sensors have no registry or memdump,
//!   and memdump needs sensor 5.1+. What the sensor record (`os_type`,
//!   `build_version_string`) rules out is refused before a session is opened, the rest by
//!   the session's list before the command is sent: `unsupported_command`, naming the sensor
//!   and the reason.
//! - **Containment**: isolation is a sensor property, not a live-response command:
//!   `network_isolation_enabled` set with a `PUT /api/v1/sensor/{id}` as cbapi's
//!   `Sensor.isolate()` does; it takes effect at the sensor's next check-in (`is_isolating`).
//! - **Sensor lookup** by hostname pages through the v2 search (`GET /api/v2/sensor`,
//!   `start`/`rows` of 100, §7.4; v1 only on servers without it); the live-response routes
//!   have no pagination. **No documented rate limit** (cbapi does not retry by default,
//!   §7.3); 5xx and 429 are treated as transient with `Retry-After` honoured.
//! - **HTTP codes** (§3.4): 401/403 bad token, 412 live response disabled on the server
//!   (`CbLREnabled`), 404 session lost (above) or unknown object, 204 on an empty sensor
//!   search.
//!
//! # Commands
//! Every normalized command maps to a native CB command (§4.3) except `run_script`: CB EDR has
//! no script primitive (only `create process` of a command line already on the endpoint), so
//! `run_script` is left out of the capabilities and refused at submission. `execute` uses
//! `create process`; with `wait` its output is fetched from `output_file` (a temporary file in
//! the endpoint's temp directory when none is given, deleted afterwards, as cbapi does, §5.4).
//! `memory_dump` uses `memdump`; with `fetch` the dump is downloaded, and deleted on the
//! endpoint when edrgate chose its path (a path the caller chose is left in place).
//!
//! # Failures
//! Transient failures (transport, 5xx, 429) are retried by the run itself with back-off and
//! `Retry-After`, until the action's deadline: the run keeps its slot and session meanwhile.
//! A POST with a side effect is never repeated after an ambiguous failure (transport, 5xx);
//! it is reconciled as below. Errors the vendor meant (4xx, HRESULTs) fail the command, and
//! `on_error` decides about the rest.
//!
//! # Asynchrony and crash safety
//! [`CarbonBlackAdapter`] is a resumable state machine (see `edrgate_adapter::adapter`): its
//! checkpoint records the sensor, the session, the current command and its phase. Commands
//! with side effects record their intent before the POST; after a crash the adapter looks
//! for the command in the session's command list (`GET …/command`) and adopts it. When the
//! session the POST was meant for is alive and does not list it, the POST never arrived and
//! the command is sent; when that session is gone, nobody can tell, and the command is
//! reported `outcome_unknown` without being sent again.

mod adapter;
mod client;
mod config;
mod mapping;
mod wire;

pub use adapter::CarbonBlackAdapter;

/// The backend kind, as configured (`kind = "carbonblack"`) and reported.
pub const KIND: &str = "carbonblack";
pub use config::CarbonBlackConfig;

/// Carbon Black EDR as the gateway configures and builds it (`kind = "carbonblack"`).
#[derive(Debug)]
pub struct CarbonBlack;

impl edrgate_adapter::factory::BackendFactory for CarbonBlack {
    const KIND: &'static str = KIND;
    type Config = CarbonBlackConfig;
    const SECRETS: &'static [&'static str] = &["token"];

    fn validate(config: &CarbonBlackConfig) -> Result<(), Vec<String>> {
        config.validate()
    }

    fn build(
        name: &str,
        config: CarbonBlackConfig,
    ) -> Result<std::sync::Arc<dyn edrgate_adapter::Adapter>, edrgate_adapter::AdapterError> {
        Ok(std::sync::Arc::new(CarbonBlackAdapter::new(name, config)?))
    }
}
