//! Cybereason adapter for edrgate (remediation, isolation, file fetch and IR tools behind the
//! normalized `/v1/actions` model). Its simulator is the separate crate `edrgate-cybereason-sim`
//! (`simulator/`), which never depends on this one.
//!
//! Section numbers (§) refer to `shared/vendor-apis/cybereason.md`; vendor pages are under
//! <https://api-doc.cybereason.com/en/latest/> (Log in with the API, Log in with TFA, Remediate
//! Items, Check Remediation Progress, Isolate MalOp Machine, Start a File Download Operation,
//! Abort an Operation, Monitor Incident Response Tool Execution — copy in
//! `shared/vendor-docs/cybereason-monitor-ir-tool-execution.txt`); the behaviour of real clients
//! comes from the `cybereason` PyPI client, the XSOAR, Splunk SOAR, Rapid7 and SEKOIA
//! integrations (§1). Recorded responses are in `tests/fixtures` with their provenance.
//!
//! # Vendor model and limits
//! - **Session** (§3): a browser-style form login (`POST /login.html`) yields a `JSESSIONID`
//!   valid 8 h; a user with two-factor authentication then posts a TOTP code to `/` (Responder
//!   L2 users, needed for IR tools, must have it, §3.2). The login answers 200 HTML whether it
//!   worked or not, so the adapter reads the redirect target (`error`, `reset`) and the page
//!   (the login form's `<app-login>`, the two-factor text where the console still serves it;
//!   the current console's login is an Angular shell whose text is drawn in the browser) and
//!   proves the session with a `/rest/` call, reporting `vendor_auth_failed` rather than ever
//!   treating a page as success. One session per backend, one login at a
//!   time, renewed `relogin_margin_secs` before `session_lifetime_secs`.
//! - **Session loss** (§3.4, §7): a 302, a 401 or an HTML page on a `/rest/` call. The client logs in
//!   again once; an idempotent read is replayed, a request that starts an action is not (see
//!   crash safety below).
//! - **Identifiers** (§5): a device is a sensor, identified by its `pylumId` (what isolation
//!   and the direct fetch take); the run looks the sensor up once (`POST /rest/sensors/query`)
//!   and keeps its `sensorId` (batch actions) and machine `guid` (remediation).
//! - **Limits**: no published rate limit; 429 is honoured with `Retry-After` (C1 waits 60 s).
//!   edrgate caps itself with `calls_per_minute` (a rate gate) and `max_concurrent_requests`
//!   (a [`edrgate_adapter::FairSlots`] budget per backend, one holder per device, reported by
//!   `budgets()`); with several gateway replicas the call quota is also taken from the
//!   engine's shared budget, per console URL. IR tool packages are at most 100 MB (§6.6.3).
//!
//! # Commands (everything else is absent from the capabilities, so refused at submission)
//! - `get_file{path}` (`fetch_mode = "direct"`, default): `POST /rest/file-search/fetch-direct`
//!   by path and `pylumId` returns an AES-encrypted zip (§6.4; its fixed password is
//!   `fetch_zip_password`, by default the constant of the vendor's public Python SDK,
//!   [`DEFAULT_FETCH_ZIP_PASSWORD`]). The zip is spooled to an anonymous temporary file (the format needs
//!   seeking), the file in it is decrypted and streamed into the file store with its size and
//!   SHA-256; `offset`/`length` cut the stream. With `fetch_mode = "batch"` the documented
//!   fetch-file flow is used on the file's element GUID (found by visual search):
//!   `fetchfile/start` → `downloads/progress` (by file name; batches of that name that existed
//!   before are ignored) → `getfiles/{batchId}` (500 = expired) → `close`.
//! - `process_list` → the query API's live Process elements of the machine (no `endTime`),
//!   each with its element GUID as `vendor_id`.
//! - `kill_process{pid}` → remediation `KILL_PROCESS` of the live process element of the pid
//!   (`applicablePid`, numeric, as public clients filter it; Process elements include ended
//!   runs of a reused pid, which carry `endTime`); several live matches are refused
//!   (`conflict`, naming them), never guessed; a `vendor_id` is used as is. Before any
//!   remediation the sensor must be connected (`isActiveProbeConnected`, as XSOAR checks):
//!   else `device_offline`.
//! - `quarantine_file{path}` → remediation `QUARANTINE_FILE` of the File element the console
//!   indexes at that path (`correctedPath`, lower case): the sensor moves the file into its
//!   quarantine folder (`C:\ProgramData\apv2\Quarantine`, `/opt/cybereason/sensor/Quarantine`,
//!   `/usr/local/cybereason/Quarantine`; purged after 30 days, §6.3). A file the console has not
//!   indexed (no File element) is `file_not_found` before anything is sent.
//!   `unquarantine_file{path}` → `UNQUARANTINE_FILE` (20.1.120+) of the quarantined-file
//!   element that was at that path (a `QuarantineFile` query, §6.3), which puts it back.
//! - `delete_file` is **not** offered: Cybereason has no remediation that deletes a file, only
//!   the reversible quarantine; it is refused `unsupported_command` pointing to
//!   `quarantine_file`. Every remediation goes `POST /rest/remediate` without a malop
//!   (`NOMALOP`), then `GET /rest/remediate/progress/{username}/{malopId}/{remediationId}`:
//!   an empty `statusLog` is "not reported yet", never success; the last entry's status and
//!   `error.errorType` decide. Offline machines queue remediations except kills (§6.3).
//! - `registry_delete_key` is not offered: a remediation without a malop is documented for
//!   processes and files only (§6.3, "`targetId` without malop is supported only for processes
//!   (KILL_PROCESS) and files (QUARANTINE_FILE/UNQUARANTINE_FILE)"), and the normalized command
//!   carries no malop.
//! - `run_script{script, args, file_id}` (offered **only** when the operator configures the
//!   run request, `ir_run_path`/`ir_run_body`; the capability note says "operator-configured")
//!   → an IR tool run (§6.6): with `file_id` the stored file
//!   is first uploaded as package `script` (`POST /rest/irtools/upload`, part `packageInfo`;
//!   upload replaces a package of the same name), then run and polled on
//!   `GET /rest/sensors/action/getRunIRToolStatus/{batchID}` (per-sensor `Sensor`/`Status`/
//!   `Error`, read whatever the casing or container; a batch object with `globalStats` is read
//!   too) and aborted with `GET /rest/sensors/abort/{batchID}` on cancel or timeout. **The run
//!   request itself is not published** (§6.6.2, §11): its path and body are per-backend config
//!   (`ir_run_path`, `ir_run_body` with placeholders); nothing is guessed by default. A body
//!   left unset follows the sensor batch framework (§6.5), whose action type for IR runs is
//!   `IRToolsRunIRTool` (e.g. at `POST /rest/sensors/action/runIRTool`):
//!   `{"sensorsIds": [<sensorId>], "filters": null, "argument": <package>, "arguments": [<args>]}`
//!   answering a batch object with `batchId` (204: the sensor cannot take the action).
//!   **Tool output is not returned through the API**: the sensor uploads it to the customer's
//!   storage bucket configured for IR tools (`GET /rest/irtools/credentials`); the result says
//!   so in `output`.
//! - `isolate`/`release` → `POST /rest/monitor/global/commands/isolate` / `un-isolate` with
//!   `pylumIds`; the per-id value must be `Succeeded`, whatever the HTTP code (§6.2).
//!
//! # Statuses and failures
//! One table in `mapping.rs` maps remediation words (`PENDING`, `IN_PROGRESS`, `SUCCESS`,
//! `FAILURE`), batch states (`globalStats.stats` keys, compared case-insensitively, with
//! `finalState`; IR per-sensor statuses) and isolation results to the normalized lifecycle
//! (§7), keeping the raw word as `vendor_status` and `errorType`/`Error` as `vendor_code` and
//! `vendor_message`. Transient failures (transport, 5xx, 429) are retried with back-off and
//! `Retry-After`; 403 (missing role) and failed logins are `vendor_auth_failed`; 404 (an
//! endpoint newer than the console) is `vendor_rejected`.
//!
//! # Asynchrony and crash safety
//! [`CybereasonAdapter`] is a resumable state machine: its checkpoint holds the sensor's ids,
//! the current command and its phase. Before a remediation, IR run or isolation request it
//! journals an intent. After a restart or a lost session an intent is reconciled against the
//! console, never re-sent blindly: remediations against `GET /rest/remediate/status/NOMALOP`
//! (ours: same user, started after the intent, same target and action; one that has not
//! reported yet is waited for up to a minute), IR runs against `GET /rest/sensors/allActions`
//! (type `IRToolsRunIRTool`, same user, after the intent, same package, confirmed by its
//! per-sensor rows), isolation against the sensor's `isolated` flag. Found → adopted; none →
//! sent; undecidable → `outcome_unknown`. Remediations have no confirmed abort route, so a
//! cancel leaves a started remediation to finish on the console.

mod adapter;
mod client;
mod config;
mod mapping;
mod wire;

pub use adapter::{CybereasonAdapter, MAX_PACKAGE_BYTES};
pub use config::{CybereasonConfig, DEFAULT_FETCH_ZIP_PASSWORD, FetchMode, default_ir_run_body};

/// Cybereason as the gateway configures and builds it (`kind = "cybereason"`).
#[derive(Debug)]
pub struct Cybereason;

impl edrgate_adapter::factory::BackendFactory for Cybereason {
    const KIND: &'static str = "cybereason";
    type Config = CybereasonConfig;
    const SECRETS: &'static [&'static str] = &["password", "totp_secret", "fetch_zip_password"];

    fn validate(config: &CybereasonConfig) -> Result<(), Vec<String>> {
        config.validate()
    }

    fn build(
        name: &str,
        config: CybereasonConfig,
    ) -> Result<std::sync::Arc<dyn edrgate_adapter::Adapter>, edrgate_adapter::AdapterError> {
        Ok(std::sync::Arc::new(CybereasonAdapter::new(name, config)?))
    }
}
