//! A stateful simulator of the Carbon Black EDR (CB Response) Live Response REST API.
//!
//! It is product code, not a mock: a small, faithful CB Response 6.2 server with
//! believable Windows endpoints behind it, so the adapter (and anything talking to it the way
//! cbapi does) can be exercised end to end over real HTTP(S). Section numbers (§) refer to
//! `shared/vendor-apis/carbonblack.md`; response shapes follow the recorded fixtures of a real
//! 6.2 server (`tests/fixtures/`).
//!
//! # What is simulated
//! * **Server routes**: `GET /api/info`, sensors (`/api/v1/sensor/{id}` GET/PUT for network
//!   isolation, applied as `is_isolating` at the sensor's next check-in, `/api/v1/sensor?hostname=` with 204 on no match, `/api/v2/sensor`), and every
//!   Live Response route of §2 under `/api/v1/cblr` (sessions, keepalive, archive, commands with
//!   `?wait=true`, cancel, session file storage with multipart upload and streamed content).
//! * **Sessions** (§3): `pending` → `active` after [`SimConfig::checkin_delay`] once the session
//!   holds one of [`SimConfig::slot_limit`] slots (pending and active sessions hold slots; extra
//!   sessions stay `pending` until one frees, FIFO); idle expiry after
//!   [`SimConfig::session_timeout`] without commands/keepalives (`timeout` in lists, 404
//!   `Session {id} not found` on direct access); pending sessions give up after
//!   [`SimConfig::check_in_timeout`]; sessions of offline sensors never become active.
//! * **Commands** (§4): all 15 `supported_commands`, executed one at a time per session after
//!   [`SimConfig::command_latency`] (memdump: [`SimConfig::memdump_duration`], with progress),
//!   against a per-sensor process tree, file system (including `C:\evidence\big.bin` of
//!   [`SimConfig::file_size`] bytes, synthetic and streamed, and `C:\evidence\note.txt` =
//!   [`NOTE_TXT`]) and registry. Failures are `status: "error"` with unsigned Win32 HRESULTs
//!   (§4.4): missing file `0x80070002`, missing path `0x80070003`, anything under
//!   `C:\Windows\System32\config` `0x80070005`, unknown pid `0x80070057`, existing target
//!   `0x80070050`, …
//! * **Faults** ([`Faults`]): every Nth request answered 503 or dropped without a response,
//!   added latency (these through simkit's fault layer, [`edrgate_simkit::faults`], which also
//!   has 5xx bursts, 429 with `Retry-After` and answers lost after a command was accepted or
//!   an isolation changed, settable with [`Sim::faults`] or `POST /_sim/faults`), and the
//!   Carbon Black ones: sessions that die after N commands, downloads cut short.
//!
//! # Choices where the reference is silent (§11)
//! * `?active_only=true` lists `pending` and `active` sessions (cbapi filters both itself).
//! * Posting a command to a `pending` session is a 400 whose text starts with `Session`.
//! * Keepalive returns the session object; on a pending session it is a no-op unless
//!   [`SimConfig::keepalive_closes_pending`] (the CBI observation, §2.5) is set.
//! * The session archive is a real gzip'd tar (stored deflate blocks) holding `session.json`,
//!   `commands.json`, `files.json` and every stored file up to 64 MiB; an empty session
//!   answers 500 as XSOAR reports.
//! * Closed/timed-out sessions answer 404 on every session route except `archive`.
//! * `directory list` uses `FindFirstFile` semantics: `C:\dir\*` (or `C:\dir\`) lists the
//!   contents, a plain `C:\dir` returns the single entry for the directory itself.
//! * Reg set value on an existing value without `overwrite` fails with `0x800700B7`.
//! * File content is served chunked with an `ETag` like `"flask-<epoch>-<size>-<n>"` (REC).
//!
//! # Usage
//! ```no_run
//! # async fn demo() -> std::io::Result<()> {
//! use edrgate_carbonblack_sim::{Sim as _, SimConfig, Simulator};
//! let sim = Simulator::new(SimConfig { sensors: 3, ..SimConfig::default() });
//! let addr = sim.spawn().await?; // plain HTTP on 127.0.0.1:<random>
//! // ... drive http://{addr}/api/v1/cblr/... with header X-Auth-Token: sim.config().token
//! assert_eq!(sim.counters().sessions_created, 0);
//! # Ok(()) }
//! ```
//! Serving comes from [`edrgate_simkit::Sim`] (re-exported as [`Sim`]): `router()` gives the
//! [`axum::Router`] with the admin routes `GET /_sim/log` (every command the endpoints
//! executed, by its CB name, and every isolation change) and `GET /_sim/counters`;
//! `serve`/`serve_tls_on` run it on a listener, `spawn`/`spawn_tls` in a background task.
//! Test helpers (`process_exists`, `file_exists`, `read_file`, `registry_value`,
//! `is_isolated`, `counters`, …) look at endpoint and server state directly.
//! HTTPS uses a self-signed certificate for `localhost` and `127.0.0.1`, available as PEM
//! from `cert_pem` so clients can trust it.
//!
//! This crate is an independent witness of the Carbon Black API: it never uses the adapter
//! crate (`edrgate-carbonblack`); its shapes come from the vendor reference and the recorded
//! fixtures.

mod archive;
pub mod cli;
mod content;
mod endpoint;
mod routes;
mod state;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use axum::Router;
use axum::http::Method;
use axum::response::Response;
use edrgate_simkit::{Injected, SimFaults};
pub use edrgate_simkit::{SelfSigned, Sim, SimLog};
use serde_json::Value;

pub use endpoint::{NOTE_TXT, SensorOs, SensorSpec};

use state::Runtime;

/// Default API token accepted in `X-Auth-Token`.
pub const DEFAULT_TOKEN: &str = "sim-cb-token-0123456789abcdef01234567";

/// The 15 command names a 6.2 Windows sensor reports in `supported_commands`, in the order
/// the real server returns them (§3.1, REC).
pub const SUPPORTED_COMMANDS: [&str; 15] = [
    "delete file",
    "put file",
    "reg delete key",
    "directory list",
    "reg create key",
    "get file",
    "reg enum key",
    "reg query value",
    "kill",
    "create process",
    "process list",
    "reg delete value",
    "reg set value",
    "create directory",
    "memdump",
];

/// Simulator configuration. Build with struct update syntax from `SimConfig::default()`.
#[derive(Clone, Debug)]
pub struct SimConfig {
    /// Accepted `X-Auth-Token`; anything else is a 401.
    pub token: String,
    /// Number of sensors, ids `1..=n`, hostnames `WIN-{id:04}` (e.g. `WIN-0001`). Default 5.
    pub sensors: usize,
    /// Sensor hostname overrides `(sensor id, hostname)`, e.g. to make a name ambiguous:
    /// `vec![(3, "WIN-0001".into())]`. Default empty.
    pub hostname_overrides: Vec<(u64, String)>,
    /// Concurrent sessions (pending + active) that hold slots (§3.3). Default 10.
    pub slot_limit: usize,
    /// Time from holding a slot to `active`. Default 200 ms.
    pub checkin_delay: Duration,
    /// Time a command stays pending/in progress before it completes or errors. Default 50 ms.
    pub command_latency: Duration,
    /// Idle time (no command, no keepalive) after which an active session ends. Default 300 s.
    pub session_timeout: Duration,
    /// Time a session may stay `pending` before it is recycled (§3.2). Default 1200 s.
    pub check_in_timeout: Duration,
    /// `false` answers 412 on every `/api/v1/cblr` route (§2.2). Default true.
    pub live_response_enabled: bool,
    /// Size of `C:\evidence\big.bin` on every sensor (synthetic, never held in RAM). Default 1 MiB.
    pub file_size: u64,
    /// Duration of a `memdump` command. Default 1 s.
    pub memdump_duration: Duration,
    /// Size of the dump file a `memdump` writes (synthetic). Default 32 MiB.
    pub memdump_size: u64,
    /// Sensor↔server transfer rate for `get file`/`put file`; `None` = only `command_latency`.
    pub transfer_bytes_per_sec: Option<u64>,
    /// Maximum blocking time of `?wait=true`. Default 30 s.
    pub wait_cap: Duration,
    /// Largest accepted multipart upload; bigger ones get 413 (like nginx). Default 512 MiB.
    pub max_upload_bytes: usize,
    /// Close a pending session when it receives a keepalive (CBI observation, §2.5). Default false.
    pub keepalive_closes_pending: bool,
    /// API user shown as `username` on commands. Default `"admin"`.
    pub username: String,
    /// Fault injection.
    pub faults: Faults,
    /// Sensors reported `Offline`; their sessions never become active.
    pub offline_sensors: Vec<u64>,
    /// Sensors that are not the default Windows 6.2 sensor: `(sensor id, spec)`, e.g.
    /// `vec![(2, SensorSpec::linux()), (3, SensorSpec::macos())]`. The spec decides the
    /// session's `supported_commands`, the sensor object's `os_type` and version, the
    /// endpoint's file system and processes, and the default hostname (`lnx-0002`,
    /// `mac-0003`). Default empty.
    pub sensor_specs: Vec<(u64, SensorSpec)>,
}

impl Default for SimConfig {
    fn default() -> Self {
        Self {
            token: DEFAULT_TOKEN.to_owned(),
            sensors: 5,
            hostname_overrides: Vec::new(),
            slot_limit: 10,
            checkin_delay: Duration::from_millis(200),
            command_latency: Duration::from_millis(50),
            session_timeout: Duration::from_secs(300),
            check_in_timeout: Duration::from_secs(1200),
            live_response_enabled: true,
            file_size: 1024 * 1024,
            memdump_duration: Duration::from_secs(1),
            memdump_size: 32 * 1024 * 1024,
            transfer_bytes_per_sec: None,
            wait_cap: Duration::from_secs(30),
            max_upload_bytes: 512 * 1024 * 1024,
            keepalive_closes_pending: false,
            username: "admin".to_owned(),
            faults: Faults::default(),
            offline_sensors: Vec::new(),
            sensor_specs: Vec::new(),
        }
    }
}

/// Fault injection. The first four are simkit's generic faults ([`edrgate_simkit::Faults`],
/// applied by its layer in front of the routes: request counting is global and 1-based, and a
/// request hit by both `drop_every` and `error_5xx_every` is dropped); setting these replaces
/// simkit's settings. The rest are Carbon Black's own.
#[derive(Clone, Debug, Default)]
pub struct Faults {
    /// Every Nth request answers 503 (before any processing, so it has no side effect).
    pub error_5xx_every: Option<u32>,
    /// Latency added to every request.
    pub slow: Option<Duration>,
    /// Every Nth request gets no response: under [`Simulator::serve`]/[`Simulator::serve_tls`]
    /// the connection is closed without a byte written; a bare [`Simulator::router`] can only
    /// abort the response body.
    pub drop_every: Option<u32>,
    /// With `drop_every`: process the request first, then drop the response (the "did my
    /// POST happen?" case). Default false: dropped requests have no side effect.
    pub drop_after_processing: bool,
    /// A session silently dies after accepting N commands: the next command POST (and every
    /// later call) gets 404 `Session {id} not found`, which drives cbapi's reconnect (§5.3).
    pub expire_sessions_after_commands: Option<u32>,
    /// Every Nth file-content download (§2.13, counted separately) stops after half of its
    /// bytes: the body is aborted (the client sees a transport error) or, with
    /// `cut_downloads_cleanly`, ends as if complete, which only the file object's `size`
    /// reveals.
    pub cut_downloads_every: Option<u32>,
    pub cut_downloads_cleanly: bool,
}

impl Faults {
    /// The generic part, as simkit's layer applies it.
    fn generic(&self) -> edrgate_simkit::Faults {
        edrgate_simkit::Faults {
            error_5xx_every: self.error_5xx_every,
            slow: self.slow,
            drop_every: self.drop_every,
            drop_after_processing: self.drop_after_processing,
            ..edrgate_simkit::Faults::default()
        }
    }
}

/// Snapshot of what happened, for exactly-once assertions.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Counters {
    pub sessions_created: u64,
    /// Sessions closed by a client (`PUT` with `status: close`).
    pub sessions_closed: u64,
    /// Sessions that ended by idle/check-in timeout or the expiry fault.
    pub sessions_timed_out: u64,
    /// Commands accepted by `POST …/command`.
    pub commands_posted: u64,
    /// Commands that actually executed on an endpoint (completed or errored), by CB name.
    pub commands_by_name: BTreeMap<String, u64>,
    /// Subset of `commands_by_name` that ended in `error`.
    pub command_errors_by_name: BTreeMap<String, u64>,
    pub commands_cancelled: u64,
    /// Every HTTP request received (including faulted and unauthorized ones).
    pub requests: u64,
    pub keepalives: u64,
    pub uploads: u64,
    /// `GET …/file/{id}/content` responses started.
    pub downloads: u64,
    pub faults_5xx: u64,
    pub faults_dropped: u64,
    /// Downloads cut short by `cut_downloads_every`.
    pub faults_cut: u64,
    pub unauthorized: u64,
    pub isolation_changes: u64,
    /// Pages served by the paged sensor search (`GET /api/v2/sensor`, §7.4).
    pub sensor_pages: u64,
    /// Sensor listings without any filter and without paging (`GET /api/v1/sensor`).
    pub sensor_unpaged_listings: u64,
    /// Sessions holding a slot right now.
    pub slots_in_use: usize,
    /// High-water mark of sessions holding slots.
    pub max_concurrent_sessions: usize,
}

impl Counters {
    /// How many times command `name` executed (completed or errored).
    pub fn executed(&self, name: &str) -> u64 {
        self.commands_by_name.get(name).copied().unwrap_or(0)
    }
}

pub(crate) struct Shared {
    rt: Mutex<Runtime>,
    faults: SimFaults,
    tls: SelfSigned,
    log: SimLog,
}

/// The simulator; cheap to clone (shared state).
#[derive(Clone)]
pub struct Simulator {
    inner: Arc<Shared>,
}

impl std::fmt::Debug for Simulator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Simulator").field("counters", &self.counters()).finish_non_exhaustive()
    }
}

impl Sim for Simulator {
    fn name(&self) -> &'static str {
        "carbonblack"
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

    /// What changes an endpoint: a command accepted into a session (§2.7) and a sensor update
    /// (isolation, §7.3).
    fn is_side_effect(&self, method: &Method, path: &str) -> bool {
        let path = path.trim_end_matches('/');
        let segments: Vec<&str> = path.split('/').collect();
        match segments.as_slice() {
            ["", "api", "v1", "cblr", "session", _, "command"] => method == Method::POST,
            ["", "api", "v1", "sensor", _] => method == Method::PUT,
            _ => false,
        }
    }

    fn fault_response(&self, injected: Injected) -> Response {
        routes::fault_response(injected)
    }
}

impl Simulator {
    pub fn new(cfg: SimConfig) -> Self {
        let log = SimLog::new();
        let faults = SimFaults::new();
        faults.set(cfg.faults.generic());
        Self {
            inner: Arc::new(Shared {
                rt: Mutex::new(Runtime::new(cfg, Instant::now(), log.clone(), faults.clone())),
                faults,
                tls: SelfSigned::new(),
                log,
            }),
        }
    }

    /// Run `f` on the state after advancing simulated time to now. The std mutex is never
    /// held across an `.await`: every caller is synchronous.
    pub(crate) fn with<R>(&self, f: impl FnOnce(&mut Runtime, Instant) -> R) -> R {
        let now = Instant::now();
        let mut rt = self.inner.rt.lock().unwrap_or_else(PoisonError::into_inner);
        rt.tick(now);
        f(&mut rt, now)
    }

    /// The configuration currently in effect (including runtime changes).
    pub fn config(&self) -> SimConfig {
        self.with(|rt, _| rt.cfg.clone())
    }

    pub fn counters(&self) -> Counters {
        let mut c = self.with(|rt, _| rt.counters_snapshot());
        let stats = self.inner.faults.stats();
        c.requests = stats.requests;
        c.faults_5xx = stats.injected_5xx;
        c.faults_dropped = stats.dropped + stats.answers_lost;
        c
    }

    /// High-water mark of sessions holding slots.
    pub fn max_concurrent_sessions(&self) -> usize {
        self.with(|rt, _| rt.counters_snapshot().max_concurrent_sessions)
    }

    /// Sets the Carbon Black faults and replaces simkit's generic ones with `f`'s (bursts and
    /// 429s set through [`Sim::faults`] are reset).
    pub fn set_faults(&self, f: Faults) {
        self.inner.faults.set(f.generic());
        self.with(|rt, _| rt.cfg.faults = f);
    }

    pub fn set_live_response_enabled(&self, on: bool) {
        self.with(|rt, _| rt.cfg.live_response_enabled = on);
    }

    /// Take a sensor on/offline at runtime; pending sessions of a sensor coming online check in
    /// `checkin_delay` later.
    pub fn set_sensor_online(&self, sensor_id: u64, online: bool) {
        self.with(|rt, now| rt.set_sensor_online(sensor_id, online, now));
    }

    /// Status string of a session as the list route shows it (`pending`, `active`, `close`,
    /// `timeout`), `None` if it never existed.
    pub fn session_status(&self, session_id: u64) -> Option<String> {
        self.with(|rt, _| rt.session_status(session_id).map(str::to_owned))
    }

    pub fn process_exists(&self, sensor_id: u64, pid: u64) -> bool {
        self.with(|rt, _| rt.endpoints.get(&sensor_id).is_some_and(|e| e.process_exists(pid)))
    }

    /// A file or directory exists (case-insensitive Windows path).
    pub fn file_exists(&self, sensor_id: u64, path: &str) -> bool {
        self.with(|rt, _| rt.endpoints.get(&sensor_id).is_some_and(|e| e.path_exists(path)))
    }

    pub fn file_size(&self, sensor_id: u64, path: &str) -> Option<u64> {
        self.with(|rt, _| rt.endpoints.get(&sensor_id).and_then(|e| e.file_size(path)))
    }

    /// Bytes `[offset, offset + len)` of an endpoint file (clamped to its end), e.g. to check
    /// a partial `get file` of the synthetic `big.bin`.
    pub fn read_file(&self, sensor_id: u64, path: &str, offset: u64, len: u64) -> Option<Vec<u8>> {
        let content = self.with(|rt, _| rt.endpoints.get(&sensor_id).and_then(|e| e.file(path)))?;
        Some(content.read(offset, len))
    }

    /// Whole content of an endpoint file (meant for small files).
    pub fn file_content(&self, sensor_id: u64, path: &str) -> Option<Vec<u8>> {
        let content = self.with(|rt, _| rt.endpoints.get(&sensor_id).and_then(|e| e.file(path)))?;
        Some(content.to_vec())
    }

    /// `value_data` of a registry value (`key` like `HKLM\SOFTWARE\...`, case-insensitive).
    pub fn registry_value(&self, sensor_id: u64, key: &str, value: &str) -> Option<Value> {
        self.with(|rt, _| rt.endpoints.get(&sensor_id).and_then(|e| e.registry_value(key, value)))
    }

    pub fn registry_key_exists(&self, sensor_id: u64, key: &str) -> bool {
        self.with(|rt, _| rt.endpoints.get(&sensor_id).is_some_and(|e| e.registry_key_exists(key)))
    }

    /// `network_isolation_enabled` as last set through `PUT /api/v1/sensor/{id}`; the sensor
    /// object's `is_isolating` follows it one `checkin_delay` later (next check-in).
    pub fn is_isolated(&self, sensor_id: u64) -> bool {
        self.with(|rt, _| rt.sensors.get(&sensor_id).is_some_and(|s| s.isolated))
    }
}
