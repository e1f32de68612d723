//! CrowdStrike Falcon Real Time Response adapter for edrgate: the normalized `/v1/actions`
//! commands through RTR sessions (single-host and batch), the Hosts API (lookup,
//! containment) and RTR's file routes. Its simulator is the separate crate
//! `edrgate-crowdstrike-sim` (`simulator/`), which never depends on this one.
//!
//! Section numbers (§) refer to `shared/vendor-apis/crowdstrike.md`, reconstructed from
//! CrowdStrike's SDKs (FalconPy, gofalcon, PSFalcon, Caracara, Falcon-Toolkit:
//! <https://github.com/CrowdStrike>), the Cortex XSOAR integration
//! (<https://github.com/demisto/content>, `Packs/CrowdStrikeFalcon`) and Elastic's Kibana
//! connector and API emulator (<https://github.com/elastic/kibana>); the vendor's own
//! documentation portal is login-gated. Recorded (mocked) answers of XSOAR and Kibana are in
//! `tests/fixtures` with their provenance.
//!
//! # Vendor model and limits
//! - **Clouds** (§1.1): `base_url` is per backend, no default (us-1
//!   `https://api.crowdstrike.com`, us-2, eu-1, us-gov-1, us-gov-2, us-3; see
//!   [`CrowdStrikeConfig::base_url`]).
//! - **Auth** (§2): OAuth2 client credentials (`POST /oauth2/token`, form), a 30-minute
//!   bearer token cached and renewed 120 s early (FalconPy) and once after a 401. The API
//!   client's scopes fix what it may do: `permission_level` (`read_only`, `active_responder`,
//!   `admin`, the RTR tiers of §6.1) decides the commands offered.
//! - **Rate** (§3): 6,000 requests per minute per CID, for all API clients; edrgate keeps
//!   below `requests_per_minute` (default 4,000), counted across gateway replicas through
//!   the shared budget, and honours 429's `X-Ratelimit-Retryafter` (an epoch second) for all
//!   calls of the backend.
//! - **Sessions** (§5): one per run (`origin` = the run id), expiring after 5 or 10 minutes
//!   idle, so refreshed when idle for `session_refresh_secs` (240 s); a gone session
//!   (`50007`) is opened again. Each command line is polled to completion before the next
//!   (§6.4), walking `sequence_id` so that both readings of chunked output work (§6.5);
//!   output is capped at `max_output_bytes`.
//! - **Batches** (§7): up to 10,000 hosts per batch session (`batch_host_limit`); batch
//!   calls block up to the RTR `timeout` and answer per host, partially. The runs of one
//!   action that reach the same point meet (a sliding `batch_window_ms`, ended early once
//!   every run of the batch is there) and share one batch init and one batch command per
//!   identical line (see `adapter/batch.rs`); slow hosts are finished through the
//!   single-host status route by their `task_id`. Lines that differ per host (`kill <pid>`
//!   with different pids) go out as one-host batch calls.
//! - **Offline hosts** (§6.7): `40401` → `device_offline`; with `queue_offline` the commands
//!   wait in RTR's offline queue (reported `queued`) until the host returns or the action's
//!   deadline passes.
//! - **Files** (§8): no size caps are published (§8.5); a `get` travels as a 7z encrypted
//!   with the password `infected`.
//!
//! # Commands (anything else is absent from the capabilities, so refused at submission)
//! Tier per line as §6.1's adapter rule (the lowest tier that runs it; `runscript` on admin
//! unless only `-CloudFile` and the client is an active responder). R = read-only,
//! AR = active responder, A = admin, H = Hosts API.
//! - `process_list` → `ps` (R), parsed header-driven (raw text when it does not parse).
//! - `list_directory{path}` → `ls <path>` (R): the Windows table, `ls -l` lines or names.
//! - `kill_process{pid}` → `kill <pid>` (AR).
//! - `get_file{path,offset?,length?}` → `get <path>` (AR) → command status → `file/v2` entry
//!   of the same cloud request id until complete → `extracted-file-contents` streamed to a
//!   temporary file → the 7z's one entry streamed into the store (offset/length cut here) →
//!   `DELETE file/v2`. In a batch: `batch-get-command`, then the same per host.
//! - `put_file{file_id,path}` → the put-files library as `edrgate-<sha256[:16]>` (journaled,
//!   uploaded, a 409 or a lost answer settled by looking the name up and comparing sha256)
//!   → `ls <target>` (an existing target is `conflict`: `mv` would replace it) → `cd <dir>`,
//!   `put <name>` (A) → `mv` to the target name (AR). `put: Destination already exists.` →
//!   `conflict`.
//! - `delete_file` → `rm` (AR); `create_directory` → `mkdir` (AR).
//! - `execute{command_line,wait,working_directory?,output_file?}` → Windows `cd <wd>`,
//!   `run <exe> -CommandLine="<args>" [-Wait]` (A); Linux/macOS and `output_file` →
//!   `runscript -Raw=```…```` with the redirection (A).
//! - `run_script{script,args,file_id?}` → `runscript -CloudFile="<script>"
//!   [-CommandLine="<args>"] -Timeout=<script_timeout_secs>` (scripts library; AR for public
//!   scripts, else A); with `file_id` the stored script (≤ 64 KiB) as `runscript -Raw` (A).
//! - `registry_list`/`registry_get` → `reg query <key> [<value>]` (R);
//!   `registry_set` → (`reg query` first unless `overwrite`) `reg set <key> <value>
//!   -ValueType=<T> -Value=<data>`; `registry_create_key` → `reg set <key>`;
//!   `registry_delete_key`/`_value` → `reg delete <key> [<value>]` (AR). **Windows only.**
//! - `memory_dump{path?,fetch}` → `xmemdump complete <path>` (AR), then with `fetch` `get`
//!   and `rm` of the dump. **Windows only** (no native form on Linux/macOS, §12).
//! - `isolate`/`release` → `POST devices/entities/devices-actions/v2?action_name=contain` /
//!   `lift_containment` (H; the action's runs share one request of up to 100 ids), polled
//!   until `contained` / `normal`.
//! - Not offered: `quarantine_file`, `unquarantine_file` (RTR has no quarantine primitive).
//!
//! # Statuses and failures
//! One table in `mapping.rs` maps RTR's states (`complete`, `offline_queued`, containment
//! states) and error codes (`40401`, `50401`, `50007`, `40007`, `40006`, `40012`, `40412`,
//! HTTP 401/403/404/409/429/5xx) to the model, keeping the raw code and text; host-side
//! failures arrive as `stderr` with `complete: true` and go through a text table
//! (`not_found`, `file_not_found`, `access_denied`, `conflict`, else `command_failed`).
//!
//! # Asynchrony and crash safety
//! [`CrowdStrikeAdapter`] is a resumable state machine: its checkpoint holds the session
//! (id, batch id), the command's RTR lines and the current line's cloud request id and next
//! chunk. Before every side-effecting line it notes which of the session's `logs[]` show
//! that line already and journals its intent; after a lost answer, a restart or a vanished
//! batch leader, a new log entry of that line is adopted (polled, never re-sent), none means
//! it never arrived (sent), no session to ask means `outcome_unknown`. Containment intents
//! are reconciled against the device's state. RTR commands cannot be aborted once running,
//! so a stop leaves a sent command to finish (reported `outcome_unknown` by the driver); a
//! command still waiting in the offline queue is cancelled there and reported `cancelled`.

mod adapter;
mod client;
mod config;
mod mapping;
mod wire;

pub use adapter::{ARCHIVE_PASSWORD, CrowdStrikeAdapter};
pub use config::{
    CrowdStrikeConfig, MAX_RTR_TIMEOUT_SECS, PermissionLevel, VENDOR_BATCH_HOST_LIMIT,
    VENDOR_REQUESTS_PER_MINUTE,
};

/// CrowdStrike Falcon as the gateway configures and builds it (`kind = "crowdstrike"`).
#[derive(Debug)]
pub struct CrowdStrike;

impl edrgate_adapter::factory::BackendFactory for CrowdStrike {
    const KIND: &'static str = "crowdstrike";
    type Config = CrowdStrikeConfig;
    const SECRETS: &'static [&'static str] = &["client_secret"];

    fn validate(config: &CrowdStrikeConfig) -> Result<(), Vec<String>> {
        config.validate()
    }

    fn build(
        name: &str,
        config: CrowdStrikeConfig,
    ) -> Result<std::sync::Arc<dyn edrgate_adapter::Adapter>, edrgate_adapter::AdapterError> {
        Ok(std::sync::Arc::new(CrowdStrikeAdapter::new(name, config)?))
    }
}
