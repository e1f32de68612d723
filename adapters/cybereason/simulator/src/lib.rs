//! A stateful simulator of the Cybereason console's REST API, for tests, the demo and
//! benchmarks.
//!
//! Product code, not a mock: the adapter, the gateway's end-to-end tests and the benchmarks
//! drive it over real HTTP(S). It serves the real paths, field names, status words and HTTP
//! codes of `shared/vendor-apis/cybereason.md` (§), with believable Windows, Linux and macOS
//! machines behind the sensors (the system's process tree with parents, images, users and
//! start times, the sensor's own processes, indexed files and files only on the disk,
//! registry keys; each element with its GUID; `endpoint.rs`).
//!
//! # An independent witness
//! This crate never uses the adapter crate (`edrgate-cybereason`): its request and response
//! types (`api.rs`), status words and its TOTP check (the `totp-rs` crate, RFC 6238 defaults as
//! the two-factor login of §3.2 takes 6-digit codes) are its own, written from the reference and
//! the recorded responses in `adapters/cybereason/tests/fixtures/`, so a field-name mistake in
//! the adapter fails a test instead of being mirrored. Where the reference is silent, the choice
//! follows a public client and says so: the IR run (§6.6.2, unpublished) follows the sensor
//! batch framework of §6.5 as the XSOAR integration (`demisto/content`
//! `Packs/Cybereason/Integrations/Cybereason/Cybereason.py`) calls its other batch verbs
//! (`sensorsIds` + `argument`); the package upload's field names follow the `cybereason` PyPI
//! client (`cybereason/incident_response.py`, C1).
//!
//! # What is simulated (after §8)
//! * **Login** (§3): `POST /login.html` (form `username`/`password`) answers 302 and sets
//!   `JSESSIONID` (32 upper-case hex), also on failure as SEKOIA's test models; bad credentials
//!   redirect to `/login.html?error=true`, an expired password to `/login.html?reset=true`,
//!   both 200 HTML login pages (`<title>Cybereason | Login</title>`, `<app-login>`). A user with
//!   a TOTP secret must then `POST /` with `totpCode` and `submit=Login` on the same cookie; the
//!   page it lands on is, as on the current console, the Angular login shell whose text is drawn
//!   in the browser (no "Two factor authentication" text to read), or with
//!   [`SimConfig::classic_tfa_page`] the text page C1's detector reads.
//! * **Sessions**: any `/rest/` call without a valid cookie is a 302 to `/login.html` (a 401
//!   with [`SimConfig::unauthorized_401`]); sessions
//!   expire after [`SimConfig::session_lifetime`] (8 h), or at once with
//!   [`Simulator::expire_sessions`] or the one-shot [`Simulator::expire_session_before`].
//! * **Roles → 403** (text body): sensors and batches need `system_admin`, remediation and
//!   isolation `analyst_l3`, file fetches `responder_l1` or `responder_l2`, IR tools
//!   `responder_l2` *and* two-factor authentication (D5). **Version gating → 404**: IR tools
//!   need 21.1.81 ([`SimConfig::version`]).
//! * **Sensors** (§6.1): `POST /rest/sensors/query` with `fieldName`/`operator`/`values`
//!   filters (`Equals`, `NotEquals`, `ContainsIgnoreCase`, `NotContainsIgnoreCase`) on
//!   `machineName`, `pylumId`, `guid`, `sensorId`, `status`, and paging by `limit`/`offset`
//!   (rows, or pages with [`SimConfig::offset_is_page`], the ambiguity of §6.1).
//! * **Isolation** (§6.2): per-id result map, `Succeeded` or, for an unknown pylum id,
//!   `UnknownProbe` (the real failure words are not captured).
//! * **Remediation** (§6.3): `statusLog` empty for the first half of
//!   [`SimConfig::remediation_delay`], then `IN_PROGRESS`, then `SUCCESS` (the endpoint
//!   changes) or `FAILURE` with `INVALID_ARGUMENT` for a target the machine does not have; on an
//!   offline machine a kill fails (`MACHINE_NOT_CONNECTED`), the rest stays `PENDING` until it
//!   is back. `QUARANTINE_FILE` takes an indexed File element (a file only on the disk has
//!   none) and moves the file into the quarantine, where it is a `QuarantineFile` element
//!   (by its original `correctedPath`); `UNQUARANTINE_FILE` takes that element (not the
//!   original File, §6.3) and puts the file back; before console 20.1.120 it fails
//!   `UNSUPPORTED_ACTION`. A `targetId` without a malop is taken only for `KILL_PROCESS`, `QUARANTINE_FILE`
//!   and `UNQUARANTINE_FILE` (§6.3); any other action so sent (`DELETE_REGISTRY_KEY`) ends
//!   `FAILURE`/`INVALID_ARGUMENT` with the key untouched. Progress at `/rest/remediate/progress/{user}/{malop}/{id}`, listings at
//!   `/rest/remediate/status/{malop}` (`NOMALOP` without a malop).
//! * **Files** (§6.4): the batch flow (`fetchfile/start` → `downloads/progress` by file name →
//!   `getfiles/{batchId}`, 500 once expired; `close`) and the direct fetch
//!   (`file-search/fetch-direct`), both an AES-256 zip with [`SimConfig::fetch_zip_password`];
//!   a missing file has no `Content-Disposition`.
//! * **Sensor batches and IR tools** (§6.5, §6.6): package upload (multipart part
//!   `packageInfo`, ≤100 MB) and list, the run at [`DEFAULT_IR_RUN_PATH`] (the real path is
//!   unpublished), per-sensor statuses `Pending` → `InProgress` → `Succeeded`/`Failed` (hosts in
//!   [`SimConfig::ir_fail_hosts`]) over [`SimConfig::ir_step`], `getRunIRToolStatus` rows and
//!   `allActions` objects with `globalStats.stats` in the configured key casing
//!   ([`StatsCasing`]), abort by GET (only sensors not yet started), 400 `UNKNOWN BATCH`, and
//!   204 when no selected sensor can take the run (archived).
//! * **Faults** ([`Faults`]): 429 with `Retry-After` and 503 every Nth request, added latency,
//!   responses lost after the request ran (every Nth, or once for a path with
//!   [`Simulator::drop_response_of`]); in front of them simkit's generic faults
//!   ([`edrgate_simkit::faults`], `POST /_sim/faults`; the side-effecting requests are the
//!   remediation, isolation and IR run POSTs).
//!
//! # What it executed: `GET /_sim/log`, `GET /_sim/counters`
//! Serving comes from [`edrgate_simkit::Sim`] (re-exported as [`Sim`]), which adds the admin
//! routes outside Cybereason's URL space; [`Counters`] are served on `GET /_sim/counters`.
//! `GET /_sim/log` lists every side effect in execution order; the `op`s (Cybereason's words):
//!
//! | `op` | `target` | `detail` |
//! |---|---|---|
//! | `KILL_PROCESS`, `QUARANTINE_FILE`, `UNQUARANTINE_FILE`, `DELETE_REGISTRY_KEY` (a remediation action the sensor carried out, successfully or not) | pylum id | `remediationId`, `malopId`, `machine`, `machineId`, `targetId`, `status` (`SUCCESS`, `FAILURE`), `errorType` |
//! | `isolate`, `unisolate` (applied to a known sensor) | pylum id | `machine`, `wasIsolated` |
//! | `IRToolsRunIRTool` (an IR tool ran on a sensor, reported `Succeeded` or `Failed`) | pylum id | `batchId`, `machine`, `sensorId`, `package`, `arguments`, `status`, `error` |
//! | `Abort` (a batch's not-yet-started sensor work aborted) | pylum id | `batchId`, `machine` |
//! | `fetch-direct`, `fetchfile` (a file read off a sensor, directly or by a fetch batch) | pylum id | `path`, `batchId` (batches) |
//! | `upload` (an IR tool package stored or replaced) | package name | `size`, `replaced` |
//!
//! HTTPS uses the self-signed certificate of [`SelfSigned`] ([`Sim::cert_pem`]).

mod api;
pub mod cli;
mod endpoint;
mod routes;
mod sensor;
mod state;

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use axum::Router;
pub use edrgate_simkit::{SelfSigned, Sim, SimLog};
use serde_json::Value;

pub use endpoint::{NOTE_TXT, SimOs};

use state::Runtime;

/// The simulator's default user.
pub const DEFAULT_USERNAME: &str = "edrgate@sim.cybereason.example";
pub const DEFAULT_PASSWORD: &str = "sim-cybereason-password";
/// Base32 TOTP secret of [`DEFAULT_TFA_USERNAME`].
pub const DEFAULT_TOTP_SECRET: &str = "JBSWY3DPEHPK3PXPJBSWY3DPEHPK3PXP";
/// A Responder L2 user with two-factor authentication (what IR tools need, D5).
pub const DEFAULT_TFA_USERNAME: &str = "responder@sim.cybereason.example";
/// Password of the zips the file fetches return: the platform's fixed one, as the vendor's public
/// Python SDK extracts them (`cybereason` on PyPI, `src/cybereason/sensors.py`,
/// `download_file`: `AESZipFile(...).extractall(..., pwd=b'cautionhandlewithcare')`).
pub const DEFAULT_ZIP_PASSWORD: &str = "cautionhandlewithcare";
/// Where the simulator takes IR tool runs: the sensor batch framework's
/// `POST /rest/sensors/action/<verb>` (§6.5) with verb `runIRTool` (the real path is
/// unpublished, §6.6.2).
pub const DEFAULT_IR_RUN_PATH: &str = "/rest/sensors/action/runIRTool";

/// Every role the simulator checks.
pub const ALL_ROLES: [&str; 4] = ["system_admin", "analyst_l3", "responder_l1", "responder_l2"];

/// A console user.
#[derive(Clone, Debug)]
pub struct SimUser {
    pub username: String,
    pub password: String,
    pub roles: Vec<String>,
    /// Base32 TOTP secret: the user has two-factor authentication.
    pub totp_secret: Option<String>,
    /// Logging in lands on the password-reset page (§3.3).
    pub password_expired: bool,
}

impl SimUser {
    pub fn new(username: &str, password: &str) -> Self {
        SimUser {
            username: username.into(),
            password: password.into(),
            roles: ALL_ROLES.iter().map(|r| (*r).to_owned()).collect(),
            totp_secret: None,
            password_expired: false,
        }
    }
}

/// Key casing of `globalStats.stats` and IR status rows (it varies by server version, §6.5).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StatsCasing {
    /// `Succeeded`, `Sensor` (XSOAR fixtures, 2022).
    Pascal,
    /// `succeeded`, `sensor` (Rapid7's capture).
    Camel,
}

/// Fault injection, applied to `/rest/` calls.
#[derive(Clone, Debug, Default)]
pub struct Faults {
    /// Every Nth request answers 429 with `Retry-After: 1`; 0 = never.
    pub rate_limit_every: u64,
    /// Every Nth request answers 503; 0 = never.
    pub unavailable_every: u64,
    /// Added to every request.
    pub latency: Duration,
    /// Every Nth request runs but its response is lost (connection cut mid-body); 0 = never.
    pub drop_response_every: u64,
}

/// Simulator configuration. Build with struct update syntax from `SimConfig::default()`.
#[derive(Clone, Debug)]
pub struct SimConfig {
    /// Default: [`DEFAULT_USERNAME`] with every role and no 2FA, and [`DEFAULT_TFA_USERNAME`]
    /// (same password) with every role and [`DEFAULT_TOTP_SECRET`].
    pub users: Vec<SimUser>,
    /// Number of machines; hostnames `{hostname_prefix}{i:04}`. Default 5.
    pub machines: usize,
    /// Default `CR-WS-` (`CR-WS-0001`, …).
    pub hostname_prefix: String,
    /// Machines that are not Windows, by number: e.g. `vec![(4, SimOs::Linux), (5,
    /// SimOs::MacOs)]`. The OS decides the sensor's `osType`, the processes, files and
    /// registry. Default empty (every machine Windows).
    pub os_types: Vec<(usize, SimOs)>,
    /// Console version (`/rest/monitor/global/server/version/all`). Default `21.2.221`.
    pub version: String,
    /// Cookie lifetime. Default 8 h (§3.4).
    pub session_lifetime: Duration,
    /// Time a remediation takes to end. Default 300 ms.
    pub remediation_delay: Duration,
    /// Time between IR per-sensor status changes. Default 200 ms.
    pub ir_step: Duration,
    /// Hostnames where IR tools fail.
    pub ir_fail_hosts: Vec<String>,
    /// Packages present from the start. Default `["collector.exe"]`.
    pub packages: Vec<String>,
    pub stats_casing: StatsCasing,
    /// `offset` of the sensor query counts pages instead of rows.
    pub offset_is_page: bool,
    /// `/rest/` calls without a live session answer 401 instead of the 302 to the login page.
    pub unauthorized_401: bool,
    /// The two-factor step lands on the text page C1 reads ("Two factor authentication")
    /// instead of the current console's Angular login shell.
    pub classic_tfa_page: bool,
    pub fetch_zip_password: String,
    /// Time until a fetch batch is downloadable. Default 200 ms.
    pub fetch_delay: Duration,
    /// Time after which a fetch batch expires (`getfiles` → 500). Default 10 min.
    pub fetch_batch_ttl: Duration,
    pub faults: Faults,
}

impl Default for SimConfig {
    fn default() -> Self {
        let mut tfa = SimUser::new(DEFAULT_TFA_USERNAME, DEFAULT_PASSWORD);
        tfa.totp_secret = Some(DEFAULT_TOTP_SECRET.into());
        SimConfig {
            users: vec![SimUser::new(DEFAULT_USERNAME, DEFAULT_PASSWORD), tfa],
            machines: 5,
            hostname_prefix: "CR-WS-".into(),
            os_types: Vec::new(),
            version: "21.2.221".into(),
            session_lifetime: Duration::from_secs(8 * 3600),
            remediation_delay: Duration::from_millis(300),
            ir_step: Duration::from_millis(200),
            ir_fail_hosts: Vec::new(),
            packages: vec!["collector.exe".into()],
            stats_casing: StatsCasing::Pascal,
            offset_is_page: false,
            unauthorized_401: false,
            classic_tfa_page: false,
            fetch_zip_password: DEFAULT_ZIP_PASSWORD.into(),
            fetch_delay: Duration::from_millis(200),
            fetch_batch_ttl: Duration::from_secs(600),
            faults: Faults::default(),
        }
    }
}

impl SimConfig {
    /// The OS of machine number `n` (1-based).
    pub(crate) fn os_of(&self, n: usize) -> SimOs {
        self.os_types.iter().find(|(m, _)| *m == n).map(|(_, os)| *os).unwrap_or_default()
    }
}

/// What the simulator has done, for exactly-once assertions (also `GET /_sim/counters`).
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Counters {
    pub requests: u64,
    /// Completed logins (after the TOTP step when there is one).
    pub logins: u64,
    pub login_failures: u64,
    pub totp_logins: u64,
    /// `/rest/` calls redirected to the login page.
    pub session_redirects: u64,
    /// `POST /rest/remediate` calls accepted.
    pub remediations_received: u64,
    /// Remediation actions that changed an endpoint.
    pub remediations_executed: u64,
    pub isolations: u64,
    pub unisolations: u64,
    pub ir_runs: u64,
    pub ir_aborts: u64,
    pub packages_uploaded: u64,
    pub direct_fetches: u64,
    pub fetch_batches: u64,
    pub rate_limited: u64,
    pub dropped_responses: u64,
}

/// The simulator; cheap to clone (shared state).
#[derive(Clone)]
pub struct Simulator {
    inner: Arc<Shared>,
}

struct Shared {
    rt: Mutex<Runtime>,
    tls: SelfSigned,
    log: SimLog,
    /// simkit's generic faults (`/_sim/faults`), in front of the routes and of [`Faults`].
    faults: edrgate_simkit::SimFaults,
}

impl std::fmt::Debug for Simulator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Simulator").field("counters", &self.counters()).finish_non_exhaustive()
    }
}

impl Sim for Simulator {
    fn name(&self) -> &'static str {
        "cybereason"
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

    fn faults(&self) -> Option<&edrgate_simkit::SimFaults> {
        Some(&self.inner.faults)
    }

    /// What changes an endpoint: remediation, isolation and IR tool runs (§6.2, §6.3, §6.6).
    fn is_side_effect(&self, method: &axum::http::Method, path: &str) -> bool {
        let path = path.trim_end_matches('/');
        method == axum::http::Method::POST
            && (path == DEFAULT_IR_RUN_PATH
                || matches!(
                    path,
                    "/rest/remediate"
                        | "/rest/monitor/global/commands/isolate"
                        | "/rest/monitor/global/commands/un-isolate"
                ))
    }
}

impl Simulator {
    pub fn new(cfg: SimConfig) -> Self {
        let log = SimLog::new();
        let faults = edrgate_simkit::SimFaults::new();
        Simulator {
            inner: Arc::new(Shared {
                rt: Mutex::new(Runtime::new(cfg, log.clone(), faults.clone())),
                tls: SelfSigned::new(),
                log,
                faults,
            }),
        }
    }

    /// Runs `f` on the state advanced to now. Never held across an `.await`.
    pub(crate) fn with<R>(&self, f: impl FnOnce(&mut Runtime, Instant) -> R) -> R {
        let now = Instant::now();
        let mut rt = self.inner.rt.lock().unwrap_or_else(PoisonError::into_inner);
        rt.tick(now);
        f(&mut rt, now)
    }

    pub fn config(&self) -> SimConfig {
        self.with(|rt, _| rt.cfg.clone())
    }

    pub fn counters(&self) -> Counters {
        self.with(|rt, _| rt.counters.clone())
    }

    pub fn set_faults(&self, faults: Faults) {
        self.with(|rt, _| rt.cfg.faults = faults);
    }

    /// Ends every session now: the next `/rest/` call of each client is redirected.
    pub fn expire_sessions(&self) {
        self.with(|rt, _| rt.sessions.values_mut().for_each(|s| s.expired = true));
    }

    /// The next request to `path` (exact, e.g. `/rest/remediate`) finds its session expired.
    pub fn expire_session_before(&self, path: &str) {
        self.with(|rt, _| rt.expire_before = Some(path.to_owned()));
    }

    /// The next request to `path` runs, but its response is lost (the connection is cut).
    pub fn drop_response_of(&self, path: &str) {
        self.with(|rt, _| rt.drop_response_of = Some(path.to_owned()));
    }

    pub fn set_users(&self, users: Vec<SimUser>) {
        self.with(|rt, _| rt.cfg.users = users);
    }

    pub fn set_online(&self, hostname: &str, online: bool) {
        self.with(|rt, _| {
            if let Some(i) = rt.machine_by_name(hostname) {
                let now_ms = rt.epoch_ms();
                let m = &mut rt.machines[i];
                if m.online && !online {
                    m.disconnected_at = now_ms;
                }
                m.online = online;
            }
        });
    }

    pub fn set_archived(&self, hostname: &str, archived: bool) {
        self.with(|rt, _| {
            if let Some(i) = rt.machine_by_name(hostname) {
                rt.machines[i].archived = archived;
            }
        });
    }

    /// Hostnames of the machines, in order.
    pub fn hostnames(&self) -> Vec<String> {
        self.with(|rt, _| rt.machines.iter().map(|m| m.hostname.clone()).collect())
    }

    /// The pylum id (edrgate's device id) of a machine.
    pub fn pylum_id(&self, hostname: &str) -> Option<String> {
        self.with(|rt, _| rt.machine_by_name(hostname).map(|i| rt.machines[i].pylum_id.clone()))
    }

    pub fn process_exists(&self, hostname: &str, pid: u64) -> bool {
        self.with(|rt, _| {
            rt.machine_by_name(hostname)
                .is_some_and(|i| rt.machines[i].endpoint.processes.iter().any(|p| p.pid == pid))
        })
    }

    /// Starts a process on a machine and returns its element id. A pid already live gives two
    /// live instances of it, as when the sensor never reported the old one's end.
    pub fn start_process(&self, hostname: &str, pid: u64, name: &str) -> Option<String> {
        self.with(|rt, _| {
            let i = rt.machine_by_name(hostname)?;
            let host = rt.machines[i].hostname.clone();
            Some(rt.machines[i].endpoint.start_process(&host, pid, name))
        })
    }

    /// The element id (guid) of a machine's process, as the console's queries report it.
    pub fn process_element_id(&self, hostname: &str, pid: u64) -> Option<String> {
        self.with(|rt, _| {
            let i = rt.machine_by_name(hostname)?;
            rt.machines[i].endpoint.processes.iter().find(|p| p.pid == pid).map(|p| p.guid.clone())
        })
    }

    /// Content of a file on a machine (case-insensitive path).
    pub fn file_content(&self, hostname: &str, path: &str) -> Option<Vec<u8>> {
        self.with(|rt, _| {
            let i = rt.machine_by_name(hostname)?;
            rt.machines[i].endpoint.files.get(&path.to_lowercase()).map(|f| f.content.clone())
        })
    }

    /// Whether a file sits in the machine's quarantine folder.
    pub fn is_quarantined(&self, hostname: &str, path: &str) -> bool {
        self.with(|rt, _| {
            rt.machine_by_name(hostname).is_some_and(|i| {
                rt.machines[i]
                    .endpoint
                    .quarantine
                    .iter()
                    .any(|q| q.file.path == path.to_lowercase())
            })
        })
    }

    pub fn registry_key_exists(&self, hostname: &str, key: &str) -> bool {
        self.with(|rt, _| {
            rt.machine_by_name(hostname)
                .is_some_and(|i| rt.machines[i].endpoint.registry.contains_key(&key.to_lowercase()))
        })
    }

    pub fn is_isolated(&self, hostname: &str) -> bool {
        self.with(|rt, _| rt.machine_by_name(hostname).is_some_and(|i| rt.machines[i].isolated))
    }

    /// Names of the uploaded IR tool packages.
    pub fn packages(&self) -> Vec<String> {
        self.with(|rt, _| rt.packages.keys().cloned().collect())
    }
}
