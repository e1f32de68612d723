//! Microsoft Defender for Endpoint (MDE) live-response adapter for edrgate. Its simulator is
//! the independent crate `edrgate-defender-sim` (`simulator/`); edrgate's helper-script
//! protocol, shared on purpose by both, is the crate `edrgate-defender-helpers`
//! (`helper-protocol/`).
//!
//! Section numbers (§) refer to `shared/vendor-apis/defender.md`; vendor pages:
//! <https://learn.microsoft.com/en-us/defender-endpoint/api/run-live-response>,
//! <https://learn.microsoft.com/en-us/defender-endpoint/api/get-live-response-result>,
//! <https://learn.microsoft.com/en-us/defender-endpoint/api/upload-library>,
//! <https://learn.microsoft.com/en-us/defender-endpoint/api/common-errors>, and the client code
//! the reference cites (XSOAR's MicrosoftApiModule, Kibana's Defender connector, `mde-client`).
//!
//! # Vendor model and limits
//! - **Auth** (§1): OAuth2 client credentials against Entra, the v2 endpoint with
//!   `scope=…/.default` by default (a `token_url` ending in `/oauth2/token` speaks v1 with
//!   `resource`). The token is cached in moka for `expires_in` minus
//!   `token_refresh_margin_secs` (half the lifetime if the margin is larger); concurrent
//!   callers share one fetch, and a 401 forces one new token and one retry, as Kibana does.
//!   The client secret is a `SecretString`, sent only in the token request body.
//! - **Machine actions** (§3, §4): one `runliveresponse` call creates one machine action, an
//!   ordered batch of `PutFile` → `RunScript` → `GetFile` commands; Defender stops a batch at
//!   its first failed command. Actions go `Pending` (queued up to 3 days for an offline
//!   device) → `InProgress` → `Succeeded` / `Failed` / `TimeOut` / `Cancelled`; commands
//!   `Created` → `Executing` → `Completed` / `Failed` (`mapping.rs` has both tables).
//! - **Limits** (§9), all per app + tenant credential and shared by every backend configured
//!   with it (and, through the engine's shared budget, by every gateway replica):
//!   10 `runliveresponse` calls per minute (`live_response_calls` per
//!   `live_response_window_ms`), 25 concurrent sessions (`concurrent_sessions`; pending actions
//!   count, §13), one live-response action per machine (`ActiveRequestAlreadyExists`), and 100
//!   calls per minute and 1500 per hour to each other endpoint. RunScript times out after 10
//!   minutes; library files are at most 20 MB (§8.1); result links live 30 minutes (§5).
//!   A 429's `Retry-After` (seconds) is honoured.
//! - **Results** (§5): `GetLiveResponseResultDownloadLink(index=i)` returns a SAS link; it is
//!   downloaded without the bearer token. GetFile results are gzip; RunScript results are JSON
//!   (`script_name`, `exit_code`, `script_output` with a transcript banner and trailing NULs,
//!   `script_errors`).
//!
//! # Asynchrony and budgets
//! [`DefenderAdapter`] is a resumable state machine. A run's consecutive commands become one
//! machine action when their live-response commands keep the vendor's order; a command that
//! would break it starts the next batch. The run first uploads what the batch needs to the
//! library (helper scripts, `put_file` payloads, staged `run_script` content: content-addressed
//! names, so each content is uploaded once), then waits, visibly `queued`, for a session slot
//! (`FairSlots`: at most `concurrent_sessions` per credential, one per machine so edrgate never
//! causes `ActiveRequestAlreadyExists`, fair across tenants and actions) and for its turn in
//! the `runliveresponse` window (a FIFO sliding-window gate that logs a call when the vendor
//! answered, so the vendor never counts more than the budget). The slot is held until the
//! action ends. Pending actions of all runs of a backend are polled together, one
//! `$filter=id in (…)` call per flush under the endpoint's own budget, with a delay that grows
//! with the time waited; a brief 404 after creation is tolerated (§4.5). When an action ends,
//! every command's result is fetched at once and streamed into the file store (GetFile is
//! gunzipped on the fly, partial reads take their range); a refused download gets a fresh link.
//! Isolate and release are their own machine actions (`isolate` with `IsolationType: Full`,
//! `unisolate`), polled the same way.
//!
//! # Commands
//! Native: `get_file` (GetFile), `put_file` (library upload, PutFile, then edrgate's `file`
//! helper moves it from the sensor's Downloads folder to `path`), `run_script` (RunScript of a
//! library script, or of content staged from edrgate's file store; `args` joined by spaces),
//! `isolate`, `release`. Script-backed: Defender has no primitive for the others, so edrgate
//! ships PowerShell helpers (`scripts/*.ps1`, uploaded on first use as
//! `edrgate-<name>-<sha256[..12]>.ps1`) that take their parameters as one base64 JSON argument
//! and print one `EDRGATE-RESULT:<json>` line, parsed into the same typed results the Carbon
//! Black adapter produces: `process_list`, `list_directory`, `kill_process`, `execute`,
//! `delete_file`, `create_directory` and the registry commands. `memory_dump` is not offered:
//! a full-memory dump needs a driver-based tool Defender does not ship; `capabilities()` says
//! `native` or `script` per command.
//!
//! # Helper scripts: signing, platforms, versions
//! - **The tenant's signing setting.** Ten commands (`process_list`, `list_directory`,
//!   `kill_process`, `execute`, `delete_file`, `create_directory`, the four registry
//!   commands) and `put_file`'s last step run edrgate's helpers through RunScript. Defender
//!   runs unsigned scripts only with "Live Response unsigned script execution" on (Settings >
//!   Endpoints > Advanced features; off by default, "not recommended": live-response.md,
//!   advanced-features.md); otherwise its sensor starts scripts with PowerShell's `AllSigned`
//!   policy, which refuses them ("… is not digitally signed. You cannot run this script on the
//!   current system."). edrgate reports that refusal as `vendor_rejected` naming the setting.
//!   `unsigned_scripts = true` (default) uploads edrgate's own unsigned helpers and needs the
//!   setting on: edrgate's copies cannot be signed for a tenant (the signer must be a
//!   code-signing certificate the tenant's endpoints trust, which only the operator has), so
//!   the default is the mode that works once the documented setting is turned on, and the
//!   tenant's default shows as a clear refusal. `unsigned_scripts = false` (signed mode) runs
//!   only signed copies the operator made (`scripts/README.md`: `Set-AuthenticodeSignature`
//!   with a certificate trusted on the endpoints), under the content-versioned names: with
//!   `signed_scripts_dir`, edrgate reads them at build (each must be this version's helper
//!   followed by one `# SIG # Begin signature block … # SIG # End signature block`) and
//!   uploads them when the library lacks them; without it, the operator uploads them and
//!   edrgate checks the library holds each name with a hash other than its unsigned copy's
//!   (the API lists hashes, not contents). A missing signed copy, or edrgate's unsigned copy
//!   under the name, fails the command `vendor_rejected` before any live-response call;
//!   edrgate never uploads its unsigned copy in signed mode. [`DefenderAdapter::check_helpers`]
//!   makes the same check without changing anything.
//! - **Platforms.** On Linux and macOS live response runs shell scripts, not PowerShell, and
//!   the helpers use Windows paths: helper-backed commands (and `put_file`) on a machine whose
//!   `osPlatform` is not Windows end `unsupported_command` naming the OS, before any
//!   live-response call (the platform is read once per machine, `GET /api/machines/{id}`).
//!   `get_file`, `run_script`, `isolate` and `release` run there as everywhere.
//! - **Versions.** When edrgate uploads a helper, it deletes the library's other versions of
//!   it (`edrgate-<name>-<12 hex>.ps1` only; `DELETE /api/libraryfiles/{name}`), best effort.
//!
//! # Failures
//! `errors[]` texts and `errorHResult` of failed commands map to `file_not_found`,
//! `access_denied`, `timeout`, … (the text kept as `vendor_message`, the HRESULT as
//! `0x8007…`); helper scripts report their own error words. With `on_error: continue`, the
//! commands Defender skipped after a failure are submitted again as a new batch; with `stop`, a
//! helper-script command (whose failure Defender cannot see) ends its batch before the next
//! command that changes the endpoint. API errors are classified by the envelope's
//! `error.code` (§7). `put_file` above `max_upload_bytes` (20 MB) fails with
//! `payload_too_large` before any vendor call (the gateway refuses it at submission already).
//! Transient failures (transport, 5xx, 429) are retried by the run with back-off.
//!
//! # Crash safety
//! The intent is recorded before every `runliveresponse`, isolate and unisolate call, and the
//! call's comment starts with a tag naming the run and batch (`edrgate:<run>:<index>`). After a
//! crash between intent and answer, the adapter lists the machine's actions and adopts the one
//! with its tag; when none shows up within `visibility_grace_secs`, the submission never
//! arrived and is sent. Nothing is submitted twice.

mod adapter;
mod client;
mod config;
mod mapping;
mod wire;

pub use adapter::DefenderAdapter;
pub use config::{DefenderConfig, HostTls, LIBRARY_MAX_BYTES};

/// Microsoft Defender for Endpoint as the gateway configures and builds it
/// (`kind = "defender"`).
#[derive(Debug)]
pub struct Defender;

impl edrgate_adapter::factory::BackendFactory for Defender {
    const KIND: &'static str = "defender";
    type Config = DefenderConfig;
    const SECRETS: &'static [&'static str] = &["client_secret"];

    fn validate(config: &DefenderConfig) -> Result<(), Vec<String>> {
        config.validate()
    }

    fn build(
        name: &str,
        config: DefenderConfig,
    ) -> Result<std::sync::Arc<dyn edrgate_adapter::Adapter>, edrgate_adapter::AdapterError> {
        Ok(std::sync::Arc::new(DefenderAdapter::new(name, config)?))
    }
}
pub use edrgate_defender_helpers::PUTFILE_DIR;
