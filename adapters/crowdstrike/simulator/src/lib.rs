//! A stateful simulator of the CrowdStrike Falcon API, for edrgate's tests, demo and benchmarks.
//!
//! Product code, not a mock: the adapter, the gateway's end-to-end tests and the benchmarks
//! drive it over real HTTP(S). It serves the paths, field names, envelopes, status codes and
//! error codes of `shared/vendor-apis/crowdstrike.md` (§ below), with believable Windows, Linux
//! and macOS hosts behind the sensors (filesystem, processes, Windows registry; `endpoint.rs`).
//!
//! # An independent witness
//! This crate never uses the adapter crate (`edrgate-crowdstrike`) nor `edrgate-adapter`: its
//! wire types are its own, written from the reference. Where the reference says \[U\], the choice
//! follows §11/§13 and is marked `[U]` where it is made.
//!
//! # What is simulated (§11)
//! * **OAuth2** (§2): `POST /oauth2/token` with the form's or HTTP Basic credentials → 201
//!   `{access_token, token_type: "bearer", expires_in}` and `X-Cs-Region: us-1`; bad
//!   credentials → 403 `Failed to issue access token - Not Authorized`; `POST /oauth2/revoke`
//!   (Basic) → 200; an unknown, revoked or expired token → 401 `access denied, invalid bearer
//!   token`; a missing scope → 403 `access denied, authorization failed`. Three API clients
//!   ([`DEFAULT_CLIENT_ID`], [`RESPONDER_CLIENT_ID`], [`READONLY_CLIENT_ID`]) share
//!   [`DEFAULT_CLIENT_SECRET`].
//! * **Rate limits** (§3): a 60 s sliding window per CID ([`SimConfig::rate_limit_per_minute`]),
//!   15/min for bad tokens, 300/min on the token route; `X-Ratelimit-Limit`/`-Remaining` on
//!   every answer, 429 with `X-Ratelimit-Retryafter` (epoch seconds) and the meta-only
//!   envelope (message `API rate limit exceeded.`, \[U\]).
//! * **Envelope** (§1.3): `meta.query_time`, `meta.trace_id` (= `X-Cs-Traceid`), `powered_by`
//!   per service; `errors` `null` on RTR init/command successes (as KBN-EMU records) and `[]`
//!   elsewhere; a JSON body with `application/json` on every error (axum's own rejections
//!   included); 204 with no body on deletes.
//! * **Hosts** (§4): FQL on `hostname` (exact, `*'*x*'` wildcards, lists, `!`), `platform_name`,
//!   `device_id`, `status` with `+` and `,`; offset/limit paging (and the scroll variant's
//!   opaque `offset` tokens); device entities v2 (GET with
//!   repeated `ids`, POST); online state; containment 202 and `containment_pending` →
//!   `contained` after [`SimConfig::containment_delay`] (and back).
//! * **Sessions** (§5): init returns the caller's live session on the host; idle expiry
//!   ([`SimConfig::session_idle`]) reset by refresh, init and commands (\[U\] §11.5); cwd per
//!   session starting at `C:\` or `/`; list/get with `logs[]`; delete 204; the audit listing
//!   of every user's sessions (`real-time-response-audit`).
//! * **Commands** (§6) on the three tier endpoints, tier and platform checks (`40007`), `40006`
//!   for a malformed line, POST 201 → status `complete: false` for [`SimConfig::command_delay`],
//!   then `complete: true` with `stdout`/`stderr`; optional chunking
//!   ([`SimConfig::chunk_output_bytes`], \[U\] §6.5).
//! * **Batches** (§7): init (also again with `{"batch_id"}`, PSFalcon's keep-alive), refresh
//!   with `hosts_to_remove`, commands synchronous up to `timeout`, batch get.
//! * **Offline queue** (§6.7), **files** (§8: `get` → `file/v2` →
//!   `extracted-file-contents` as a 7z, AES-256, password [`ARCHIVE_PASSWORD`]; the put-files
//!   and scripts libraries; CrowdStrike's `falcon-scripts` list).
//! * **Faults**: simkit's (`POST /_sim/faults`): injected 5xx and 429 answer the vendor's JSON
//!   envelope; side-effecting requests (`is_side_effect`) can lose their answer after acting.
//!
//! Checked by hand with CrowdStrike's own SDK, FalconPy 1.6.6 (`OAuth2`, `Hosts`,
//! `RealTimeResponse`, `RealTimeResponseAdmin` unchanged, `base_url` pointed here): token,
//! host query and details, containment, init, commands and their status, `get` → `file/v2` →
//! the 7z opened by py7zr 1.1.4 with `infected` (headers encrypted or not), batch init,
//! commands, get and refresh, put-files (with the 409), scripts, session listings.
//!
//! # Choices where the reference is silent (\[U\])
//! | case | answer |
//! |---|---|
//! | single-host init on an offline host without `queue_offline` | 404, `40401 Could not establish sensor comms` (the batch code, §7.2) |
//! | command, refresh or delete on an expired/unknown session (§13.4) | 404, `50007 could not get session` (the batch code) |
//! | unknown command, one above the endpoint's tier, or not on the host's platform (§11.8, §11.11) | 400, `40007 Command not found` (per host in batches, HTTP 201) |
//! | `base_command` not the first word of `command_string`, unbalanced quotes | 400, `40006 Command is not valid` |
//! | `put`/`runscript -CloudFile` of a missing, private (someone else's), `group` (below admin) or other-platform library object | 404, `40412 The file <name> could not be found` |
//! | status GET of an unknown `cloud_request_id` | 404, code 404 |
//! | batch hosts slower than `timeout`/`host_timeout_duration` | `complete: false`, empty stdout, `task_id` to poll (not `50401`) |
//! | batch init with no host connected | HTTP 404 with the `404 no successful hosts initialized on RTR` body |
//! | containment of a host already in (or heading to) the asked state (§13.5) | 202 again, nothing changes ([`Simulator::set_containment_conflict`]: 409) |
//! | `extracted-file-contents` with another session of the same host and caller (§13.9) | served (XSOAR's flow) |
//! | `file/v2` `progress` / `stage` / `status` (§13.6) | 0–100 / `uploading`→`completed` / `in_progress`→`complete` |
//! | queued command statuses beyond `PENDING`/`FINISHED` | `CANCELED` once deleted |
//! | `reg set` on an existing value (§13.11) | overwrites |
//! | 429 and injected 500 texts | `API rate limit exceeded.`; `Internal Server Error: Please provide trace-id='…' to support` |
//! | `ps`, `ls`, `reg query` text | the formats agreed with the adapter (`endpoint.rs`) |
//! | a `runscript` body | a tiny deterministic interpreter (`echo`/`Write-Output` with `$1`…, `$args`; `Write-Error`; `exit N`; see `endpoint.rs`) |
//!
//! # What it executed: `GET /_sim/log`
//! Each side effect the hosts or the cloud executed, `target` the host's aid (the library's
//! file name for uploads) and `detail` the command string: `contain`, `lift_containment`,
//! `kill`, `rm`, `put`, `mkdir`, `run`, `runscript`, `reg set`, `reg delete`, `memdump`,
//! `xmemdump`, `mv`, `cp`, `zip`, `put_file_upload`, `script_upload`. A command that failed on
//! the host (a missing pid) changed nothing and is not logged.
//!
//! Outside the vendor URL space also: `POST /_sim/hosts/{hostname}/online` with
//! `{"online": bool}` (it sits behind simkit's fault layer like the vendor routes).

mod archive;
pub mod cli;
mod endpoint;
mod fql;
mod routes;
mod state;

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use axum::Router;
use axum::http::Method;
use axum::response::Response;
pub use edrgate_simkit::{Faults, SelfSigned, Sim, SimLog};
use edrgate_simkit::{Injected, SimFaults};
use serde_json::Value;

pub use endpoint::NOTE_TXT;
pub use state::Counters;

use state::State;

/// All scopes (§2.4).
pub const DEFAULT_CLIENT_ID: &str = "edrgate-sim-admin";
/// RTR read and write, devices read and write; no RTR admin.
pub const RESPONDER_CLIENT_ID: &str = "edrgate-sim-responder";
/// RTR read, devices read.
pub const READONLY_CLIENT_ID: &str = "edrgate-sim-readonly";
/// The secret of all three clients.
pub const DEFAULT_CLIENT_SECRET: &str = "edrgate-sim-secret";
/// The password of the get-file archives (§8.2).
pub const ARCHIVE_PASSWORD: &str = "infected";
/// Exists on every Windows host, content [`NOTE_TXT`].
pub const NOTE_PATH_WINDOWS: &str = r"C:\evidence\note.txt";
/// Exists on every Linux and Mac host, content [`NOTE_TXT`].
pub const NOTE_PATH_UNIX: &str = "/var/tmp/evidence/note.txt";
/// The pid of `updater.exe`, the suspicious beacon every Windows host runs (the other
/// vendors' simulators run theirs at the same pid, so one request body kills it everywhere).
pub const UPDATER_PID: u32 = 3012;

/// Simulator configuration. Build with struct update syntax from `SimConfig::default()`.
#[derive(Clone, Debug)]
pub struct SimConfig {
    /// Windows hosts `CS-WIN-0001` … (`platform_name` `Windows`). Default 3.
    pub windows: usize,
    /// Linux hosts `CS-LNX-0001` …. Default 1.
    pub linux: usize,
    /// macOS hosts `CS-MAC-0001` … (`Mac`). Default 1.
    pub mac: usize,
    /// How long a command's status answers `complete: false`. Default 200 ms.
    pub command_delay: Duration,
    /// How long a `get`'s `file/v2` entry takes to reach `complete: true`. Default 300 ms.
    pub upload_delay: Duration,
    /// `containment_pending` → `contained` (and back). Default 300 ms.
    pub containment_delay: Duration,
    /// Idle session expiry. Default 600 s (the 5-minute profile of §5.4 is 300 s).
    pub session_idle: Duration,
    /// `expires_in` of tokens. Default 1799 s.
    pub token_lifetime: Duration,
    /// Requests per minute per CID (sliding window). Default 6000.
    pub rate_limit_per_minute: u32,
    /// Most hosts in a batch init. Default 10,000.
    pub batch_host_limit: usize,
    /// Largest put-file upload. Default 1 GiB (\[U\] §8.5).
    pub max_put_file_bytes: u64,
    /// Encrypt the 7z headers too (\[U\] §8.2). Default false.
    pub encrypt_archive_headers: bool,
    /// `None` (default): a command's whole output in chunk 0; `Some(n)`: \[U\] chunking mode,
    /// `n` bytes of stdout per `sequence_id` (§6.5).
    pub chunk_output_bytes: Option<usize>,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            windows: 3,
            linux: 1,
            mac: 1,
            command_delay: Duration::from_millis(200),
            upload_delay: Duration::from_millis(300),
            containment_delay: Duration::from_millis(300),
            session_idle: Duration::from_secs(600),
            token_lifetime: Duration::from_secs(1799),
            rate_limit_per_minute: 6000,
            batch_host_limit: 10_000,
            max_put_file_bytes: 1 << 30,
            encrypt_archive_headers: false,
            chunk_output_bytes: None,
        }
    }
}

/// The simulator; cheap to clone (shared state).
#[derive(Clone)]
pub struct Simulator {
    inner: Arc<Shared>,
}

struct Shared {
    state: Mutex<State>,
    tls: SelfSigned,
    log: SimLog,
    faults: SimFaults,
}

impl std::fmt::Debug for Simulator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Simulator").field("counters", &self.counters()).finish_non_exhaustive()
    }
}

impl Simulator {
    pub fn new(config: SimConfig) -> Self {
        let log = SimLog::new();
        let faults = SimFaults::new();
        Simulator {
            inner: Arc::new(Shared {
                state: Mutex::new(State::new(config, log.clone(), faults.clone())),
                tls: SelfSigned::new(),
                log,
                faults,
            }),
        }
    }

    /// Runs `f` on the state advanced to now. Never held across an `.await`.
    pub(crate) fn with<R>(&self, f: impl FnOnce(&mut State, Instant) -> R) -> R {
        let now = Instant::now();
        let mut st = self.inner.state.lock().unwrap_or_else(PoisonError::into_inner);
        st.tick(now);
        f(&mut st, now)
    }

    fn on_host<R>(
        &self,
        hostname: &str,
        f: impl FnOnce(&mut State, usize, Instant) -> R,
    ) -> Option<R> {
        self.with(|st, now| st.host_by_name(hostname).map(|i| f(st, i, now)))
    }

    pub fn config(&self) -> SimConfig {
        self.with(|st, _| st.cfg.clone())
    }

    pub fn counters(&self) -> Counters {
        self.with(|st, _| st.counters.clone())
    }

    /// The host's device id (aid): 32 lower-case hex, deterministic per hostname.
    pub fn device_id(&self, hostname: &str) -> Option<String> {
        self.on_host(hostname, |st, i, _| st.hosts[i].aid.clone())
    }

    /// Hostnames, Windows first, then Linux, then Mac.
    pub fn hostnames(&self) -> Vec<String> {
        self.with(|st, _| st.hosts.iter().map(|h| h.hostname.clone()).collect())
    }

    /// Takes a host off line (`40401`, or the offline queue, §6.7) or back on line (queued
    /// commands run).
    pub fn set_online(&self, hostname: &str, online: bool) {
        self.on_host(hostname, |st, i, now| st.set_online(i, online, now));
    }

    /// A file's content on a host (case-insensitive path on Windows).
    pub fn file_content(&self, hostname: &str, path: &str) -> Option<Vec<u8>> {
        self.on_host(hostname, |st, i, _| {
            let e = &st.hosts[i].endpoint;
            let p = e.resolve(e.os.root(), path);
            e.node(&p).filter(|n| !n.dir).map(|n| n.content.to_vec())
        })
        .flatten()
    }

    /// Seeds a file on a host (parents created).
    pub fn put_file_on_host(&self, hostname: &str, path: &str, content: &[u8]) {
        self.on_host(hostname, |st, i, _| {
            let secs = st.faults.now_epoch_secs() as u64;
            let e = &mut st.hosts[i].endpoint;
            e.set_now(secs);
            e.write_file(path, bytes::Bytes::copy_from_slice(content))
        });
    }

    pub fn process_running(&self, hostname: &str, pid: u32) -> bool {
        self.on_host(hostname, |st, i, _| st.hosts[i].endpoint.running(pid)).unwrap_or(false)
    }

    /// A killable, non-critical process of the host (0 when none is left).
    pub fn any_pid(&self, hostname: &str) -> u32 {
        self.on_host(hostname, |st, i, _| st.hosts[i].endpoint.killable_pid()).unwrap_or(0)
    }

    /// `normal`, `containment_pending`, `contained` or `lift_containment_pending`.
    pub fn containment_status(&self, hostname: &str) -> String {
        self.on_host(hostname, |st, i, _| st.hosts[i].status.to_owned()).unwrap_or_default()
    }

    /// A registry value's data on a Windows host (`HKLM\…` or `HKEY_LOCAL_MACHINE\…`).
    pub fn registry_value(&self, hostname: &str, key: &str, value: &str) -> Option<String> {
        self.on_host(hostname, |st, i, _| st.hosts[i].endpoint.reg_value(key, value)).flatten()
    }

    /// Adds (or replaces) a library script, as uploaded by a console user that is none of the
    /// API clients: a `private` one is therefore invisible to all of them (`40412`, §8.4).
    /// `platform`: `windows`, `linux`, `mac`.
    pub fn add_cloud_script(
        &self,
        name: &str,
        platform: &[&str],
        content: &str,
        permission_type: &str,
    ) {
        self.with(|st, _| {
            st.add_script(name, platform, content, permission_type, "falcon-console-user")
        });
    }

    // ---- beyond the contract: knobs for tests ----

    /// Gives one host's commands their own run time (a slow host in a batch, §7.3).
    pub fn set_command_delay(&self, hostname: &str, delay: Duration) {
        self.on_host(hostname, |st, i, _| st.hosts[i].command_delay = Some(delay));
    }

    /// Expires every token now: the next call of each client gets a 401.
    pub fn expire_tokens(&self) {
        self.with(|st, _| st.expire_tokens());
    }

    /// Ends every session now (idle expiry, as if `session_idle` had passed).
    pub fn expire_sessions(&self) {
        self.with(|st, now| {
            let old = now.checked_sub(st.cfg.session_idle).unwrap_or(now);
            for s in st.sessions.values_mut() {
                s.last_used = old;
                s.queue_until = now;
            }
        });
    }

    /// Containment of a host already in (or heading to) the asked state answers 409 instead
    /// of 202 (\[U\] §4.3, §13.5).
    pub fn set_containment_conflict(&self, conflict: bool) {
        self.with(|st, _| st.containment_conflict = conflict);
    }

    /// simkit's fault settings, in-process (`POST /_sim/faults` over HTTP).
    pub fn set_faults(&self, faults: Faults) {
        self.inner.faults.set(faults);
    }
}

impl Sim for Simulator {
    fn name(&self) -> &'static str {
        "crowdstrike"
    }

    fn vendor_router(&self) -> Router {
        routes::router(self.clone())
    }

    fn tls(&self) -> &SelfSigned {
        &self.inner.tls
    }

    fn log(&self) -> &SimLog {
        &self.inner.log
    }

    fn counters_json(&self) -> Value {
        serde_json::to_value(self.counters()).unwrap_or(Value::Null)
    }

    fn faults(&self) -> Option<&SimFaults> {
        Some(&self.inner.faults)
    }

    /// What can change a host or the cloud: containment, the active-responder and admin
    /// command endpoints (single and batch; read-only commands change nothing), and library
    /// uploads.
    fn is_side_effect(&self, method: &Method, path: &str) -> bool {
        let path = path.trim_end_matches('/');
        method == Method::POST
            && matches!(
                path,
                "/devices/entities/devices-actions/v2"
                    | "/real-time-response/entities/active-responder-command/v1"
                    | "/real-time-response/entities/admin-command/v1"
                    | "/real-time-response/combined/batch-active-responder-command/v1"
                    | "/real-time-response/combined/batch-admin-command/v1"
                    | "/real-time-response/entities/put-files/v1"
                    | "/real-time-response/entities/put-files/v2"
                    | "/real-time-response/entities/scripts/v1"
                    | "/real-time-response/entities/scripts/v2"
            )
    }

    /// The vendor's envelope: 500 with a message asking for the trace id (exact text \[U\],
    /// falconpy #971), or 429 with `X-Ratelimit-Retryafter` in epoch seconds (§3).
    fn fault_response(&self, injected: Injected) -> Response {
        let epoch = self.inner.faults.now_epoch_secs();
        let limit = self.with(|st, _| st.cfg.rate_limit_per_minute);
        routes::fault_answer(injected, epoch, limit)
    }
}
