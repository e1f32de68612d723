//! A stateful simulator of the Microsoft Defender for Endpoint API surface edrgate uses.
//!
//! Product code, not a mock: tests, the demo and benchmarks drive the adapter against it over
//! real HTTP(S). Section numbers (§) refer to `shared/vendor-apis/defender.md`, whose §14 lists
//! what a simulator must model; this one models all of it except `roles` claims (any valid
//! token may call every endpoint) and the hourly API budget. Tags after a choice say where it
//! comes from, as the reference does: \[D\] Microsoft's docs, \[E\] the service's EDMX, \[C\] client
//! code, \[I\] an issue, \[U\] the reference leaves it open and this is the simulator's choice.
//!
//! # An independent witness
//! This crate never uses the adapter crate (`edrgate-defender`): its request and response
//! types (`api.rs`), status words, ordering rule and limits are its own,
//! written from the reference and the recorded examples in `adapters/defender/tests/fixtures/`,
//! so a field-name mistake in the adapter fails a test instead of being mirrored. The one
//! format it shares, on purpose, is edrgate's own helper-script protocol
//! (`edrgate-defender-helpers`: the helpers' sources and names, the `EDRGATE-RESULT:` line and
//! its JSON), which is edrgate's, not Microsoft's: the simulated endpoint has to run edrgate's
//! helpers and print what they print.
//!
//! # What is simulated
//! * **Tokens** (§1): `POST /{tenant}/oauth2/v2.0/token` (with `scope`) and
//!   `/{tenant}/oauth2/token` (with `resource`), `client_credentials` only; wrong client id or
//!   secret → Entra-shaped 400 (`invalid_client`, `AADSTS7000215`, `error_codes`, `trace_id`,
//!   …). Tokens live [`SimConfig::token_lifetime`]; an expired or unknown bearer on `/api` is a
//!   401 `Unauthorized`. [`Simulator::expire_tokens`] ends every token at once.
//! * **Machines** (§10): `GET /api/machines` with OData `$filter` (`eq`, `in`, `and`, `or`,
//!   parentheses, on `computerDnsName`, `id`, `healthStatus`, `osPlatform`), `$top`, `$skip`,
//!   `$count`; `GET /api/machines/{id or name}`. Machines `1..=n` have 40-hex ids
//!   ([`machine_id`]) and hostnames `{hostname_prefix}{n:04}` (default `mde-0001`); offline ones
//!   are `Inactive`. An unknown `$` option is the service's 400 with an empty `code` (§4.4).
//! * **Live response** (§3): `POST /api/machines/{id}/runliveresponse` takes only the
//!   documented body (PascalCase `Commands`, `Comment`, plus `ExternalId`, `RequestSource`,
//!   `Title`; lowercase `type`/`params`/`key`/`value` inside): a missing `Commands` is
//!   `MissingRequiredParameter`, any other key (a wrong case included) `InvalidRequestBody`, an
//!   unknown command type or parameter key, a missing library file or a batch out of the
//!   documented PutFile → RunScript → GetFile order `InvalidInput` (400, the error envelope);
//!   404 `ResourceNotFound` for an unknown machine, 400 `ActiveRequestAlreadyExists` while the
//!   machine has a pending or running live-response action, 429 `TooManyRequests` +
//!   `Retry-After` above [`SimConfig::live_response_calls`] per
//!   [`SimConfig::live_response_window`] or at [`SimConfig::session_cap`] pending+running
//!   actions (pending ones count, §13); else 201 with a `Pending` action whose commands are
//!   `Created`.
//! * **Lifecycle** (§4.3): `Pending` until the machine is online and
//!   [`SimConfig::pickup_delay`] passed (offline machines queue until
//!   [`SimConfig::queue_timeout`], then `TimeOut`), `InProgress` while commands run one after
//!   another (`Executing` → `Completed`/`Failed`, each [`SimConfig::command_latency`] plus the
//!   script's `Start-Sleep`s), `Succeeded`, or `Failed` at the first failed command (later
//!   ones stay `Created`, §3 limitation 5); a RunScript longer than
//!   [`SimConfig::script_timeout`] fails and the action ends `TimeOut`. Isolate / unisolate
//!   (§11, `Comment` required) complete after the pickup delay and flip the machine's
//!   isolation.
//! * **Endpoint model** (`endpoint.rs`): per machine, processes, files
//!   (`C:\evidence\note.txt` = [`NOTE_TXT`], `C:\evidence\big.bin` of
//!   [`SimConfig::file_size`] bytes, `C:\Windows\System32\config\*` access-denied) and
//!   registry. PutFile drops the library file into [`PUTFILE_WORKING_DIR`]. GetFile of a
//!   missing file fails with "File … was not found on the device" and `errorHResult`
//!   0x80070002. A RunScript whose library content is one of edrgate's helpers (byte for byte)
//!   acts on the model and prints the helper's result line, reading the helper's `-p`
//!   parameters the way `scripts/*.ps1` do (a signed copy, the helper plus an appended
//!   `# SIG # Begin signature block … # SIG # End signature block`, counts as the helper);
//!   other library scripts run through a small PowerShell subset (`Write-Output`,
//!   `Write-Error`, `exit`, `throw`, `Start-Sleep`). Every Windows machine has what a
//!   responder looks at first (`C:\Windows\System32\cmd.exe`, `drivers\etc\hosts`, user
//!   profiles, System/smss/csrss/wininit/winlogon/services/lsass/svchost/explorer, the `Run`
//!   keys, …); Linux and macOS machines ([`SimConfig::os_platforms`]) have `/etc/passwd`,
//!   `/var/log/syslog`, `/bin/bash`, `/home/…` or `/Applications`, `/Users`, `/System/Library`
//!   and their system processes. With [`SimConfig::unsigned_scripts`] off, a RunScript of a
//!   script without a signature block fails the way PowerShell's `AllSigned` policy refuses it
//!   (the signature itself is not verified).
//! * **Results** (§5): `GetLiveResponseResultDownloadLink(index=N)` returns a SAS-like link
//!   (`se` expiry in ISO-8601, `sp=r`, `sv`, `sr=b`, `sig`; an opaque blob name) to the
//!   simulator's own blob route, valid [`SimConfig::link_lifetime`], usable without a bearer
//!   (403 `AuthenticationFailed` once expired or tampered with); 404 for PutFile, unfinished or
//!   unknown indices. GetFile blobs are gzip; RunScript blobs are
//!   `{script_name, exit_code, script_output, script_errors}` with the transcript banner and
//!   trailing NULs.
//! * **Machine actions** (§4.4, §6): `GET /api/machineactions` (`$filter` on `id` incl. `in`,
//!   `machineId`, `type`, `status`, `requestor`; `$top`, `$skip`, `$count`,
//!   `$orderby=creationDateTimeUtc desc`), `GET …/{id}`, `POST …/cancel` (`Comment` required;
//!   a final action is returned unchanged: the race with completion).
//!   [`SimConfig::visibility_delay`] hides new actions for a while (read-after-write 404,
//!   §4.5).
//! * **Library** (§8): list, multipart upload (`File`/`file`, `Description`,
//!   `ParametersDescription`, `HasParameters`, `OverrideIfExists`; 400 above
//!   [`SimConfig::library_max_bytes`] (default [`LIBRARY_MAX_BYTES`]), for a name outside
//!   `[A-Za-z0-9._-]`, or an existing name without override), delete (204/404).
//! * **Budgets**: every endpoint other than runliveresponse allows
//!   [`SimConfig::api_calls_per_minute`] calls per minute (429 + `Retry-After`).
//! * **Faults** ([`Faults`]): every Nth request a 500 `InternalServerError` or a dropped
//!   connection (before or after the simulator acted), added latency before and after
//!   processing. These are simkit's fault layer ([`edrgate_simkit::faults`]), in front of the
//!   routes, which also has 5xx bursts, 429 `TooManyRequests` with `Retry-After` and answers
//!   lost after a machine action was created (settable with [`Sim::faults`] or
//!   `POST /_sim/faults`; the side-effecting requests are `POST /api/machines/{id}/{verb}`).
//!   [`Simulator::refuse_next_downloads`] makes blob downloads answer as if expired,
//!   [`Simulator::cut_next_downloads`] closes their connection instead.
//!
//! # What it executed: `GET /_sim/log`, `GET /_sim/counters`
//! Serving comes from [`edrgate_simkit::Sim`] (re-exported as [`Sim`]), which adds the admin
//! routes outside Defender's URL space. `GET /_sim/log` lists every side effect in execution
//! order (`{"seq", "at_ms", "op", "target", "detail"}`, paged with `since`/`limit`/`op`);
//! `GET /_sim/counters` gives exact counts per `op` and [`Counters`]. The `op`s:
//!
//! | `op` | `target` | `detail` |
//! |---|---|---|
//! | `PutFile`, `RunScript`, `GetFile` (each live-response command executed) | machine id | `action`, `index`, `params`, `outcome` (`Completed`, `Failed`, `TimedOut`), `errors`, `errorHResult` |
//! | `helper:<name>` (an edrgate helper run, e.g. `helper:kill_process`) | machine id | `action`, `index`, `script`, `params` (decoded), `ok`, `error`, `message` |
//! | `Isolate`, `Unisolate` (when the device applied it) | machine id | `action`, `scope`, `changed` |
//! | `Cancel` (a non-final action cancelled) | machine id | `action`, `type`, `comment` |
//! | `LibraryUpload`, `LibraryDelete` | file name | `sha256`, `size`, `overwrote` |
//!
//! HTTPS uses the self-signed certificate of [`SelfSigned`] (`cert_pem`); result links are
//! `https` once the simulator serves HTTPS.

mod api;
pub mod cli;
mod endpoint;
mod routes;
mod state;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use axum::Router;
use axum::http::Method;
use axum::response::Response;
use edrgate_simkit::{Injected, SimFaults};
pub use edrgate_simkit::{SelfSigned, Sim, SimLog};
use serde_json::Value;

pub use endpoint::{NOTE_TXT, PUTFILE_WORKING_DIR};
pub use state::machine_id;

use state::Runtime;

/// Default app registration the simulator accepts.
pub const DEFAULT_CLIENT_ID: &str = "00000000-0000-0000-0000-00000000edf0";
/// Default client secret the simulator accepts.
pub const DEFAULT_CLIENT_SECRET: &str = "sim-mde-client-secret-0123456789";
/// Tenant id used in the token path by the demo and tests (any tenant is accepted).
pub const DEFAULT_TENANT: &str = "sim-tenant";

/// The API's library upload cap: "max file size 20 MB" (upload-library.md, defender.md §8.1 and
/// §9 \[D\]). The page does not say whether MB is 10^6 or 2^20 bytes; the simulator takes 2^20
/// \[U\]. (The portal's own library limit, 250 MB, does not apply to the API.)
pub const LIBRARY_MAX_BYTES: u64 = 20 * 1024 * 1024;

/// Simulator configuration. Build with struct update syntax from `SimConfig::default()`.
#[derive(Clone, Debug)]
pub struct SimConfig {
    pub client_id: String,
    pub client_secret: String,
    /// `expires_in` of issued tokens. Default 3599 s (§1.2).
    pub token_lifetime: Duration,
    /// Number of machines. Default 5.
    pub machines: usize,
    /// Hostname prefix: machine n is `{prefix}{n:04}`. Default `mde-`.
    pub hostname_prefix: String,
    /// Hostname overrides `(machine number, hostname)`, e.g. to make a name ambiguous.
    pub hostname_overrides: Vec<(usize, String)>,
    /// Machine numbers that are offline (their actions stay `Pending`).
    pub offline_machines: Vec<usize>,
    /// Time from creation to `InProgress` for an online machine. Default 200 ms.
    pub pickup_delay: Duration,
    /// Time each live-response command takes. Default 50 ms.
    pub command_latency: Duration,
    /// How long an action may wait for an offline machine before `TimeOut` (§9: 3 days).
    pub queue_timeout: Duration,
    /// RunScript limit (§3: 10 minutes).
    pub script_timeout: Duration,
    /// runliveresponse calls per window (§3: 10 per minute).
    pub live_response_calls: usize,
    pub live_response_window: Duration,
    /// Pending + running live-response actions per tenant (§9: 25).
    pub session_cap: usize,
    /// Calls per minute to each other endpoint (§9: 100).
    pub api_calls_per_minute: usize,
    /// Lifetime of result links (§5: 30 minutes).
    pub link_lifetime: Duration,
    /// How long a new action answers 404 (read-after-write lag, §4.5). Default 0.
    pub visibility_delay: Duration,
    /// Library upload cap. Default [`LIBRARY_MAX_BYTES`].
    pub library_max_bytes: u64,
    /// Size of `C:\evidence\big.bin`. Default 1 MiB.
    pub file_size: u64,
    /// Library scripts present from the start `(name, content)`.
    pub library_scripts: Vec<(String, String)>,
    pub faults: Faults,
    /// Entries per page of a collection read (machines, machine actions, library files)
    /// before `@odata.nextLink`. Default 10,000, the service's maximum page size.
    pub page_size: usize,
    /// Machine-action lists leave `commands` out (`null`; the property is nullable, §4.2), so a
    /// client must read the action by id for its command results. Default false.
    pub list_omits_commands: bool,
    /// The tenant's "Live Response unsigned script execution" setting (Settings > Endpoints >
    /// Advanced features). Microsoft ships it off \[D: live-response.md, "optional"; "not
    /// recommended"\]; the simulator's default is on, the setting of a tenant that runs
    /// edrgate's unsigned helpers. Off: a RunScript of a library script without a signature
    /// block fails the command with PowerShell's AllSigned refusal.
    pub unsigned_scripts: bool,
    /// `osPlatform` per machine number, e.g. `(3, "Linux")`, `(4, "macOS")`; the others are
    /// `Windows11`. A Linux or macOS machine has that system's file system and processes.
    pub os_platforms: Vec<(usize, String)>,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            client_id: DEFAULT_CLIENT_ID.into(),
            client_secret: DEFAULT_CLIENT_SECRET.into(),
            token_lifetime: Duration::from_secs(3599),
            machines: 5,
            hostname_prefix: "mde-".into(),
            hostname_overrides: Vec::new(),
            offline_machines: Vec::new(),
            pickup_delay: Duration::from_millis(200),
            command_latency: Duration::from_millis(50),
            queue_timeout: Duration::from_secs(3 * 24 * 3600),
            script_timeout: Duration::from_secs(600),
            live_response_calls: 10,
            live_response_window: Duration::from_secs(60),
            session_cap: 25,
            api_calls_per_minute: 100,
            link_lifetime: Duration::from_secs(30 * 60),
            visibility_delay: Duration::ZERO,
            library_max_bytes: LIBRARY_MAX_BYTES,
            file_size: 1024 * 1024,
            library_scripts: vec![(
                "collect.ps1".into(),
                "Write-Output \"collected on $env:COMPUTERNAME with $args\"\nexit 0\n".into(),
            )],
            faults: Faults::default(),
            page_size: 10_000,
            list_omits_commands: false,
            unsigned_scripts: true,
            os_platforms: Vec::new(),
        }
    }
}

/// Fault injection, applied by simkit's fault layer ([`edrgate_simkit::Faults`]; setting these
/// replaces its settings). Request counting is global and 1-based (the admin routes do not
/// count); a request hit by both `drop_every` and `error_5xx_every` is dropped.
#[derive(Clone, Debug, Default)]
pub struct Faults {
    /// Every Nth request answers 500 `InternalServerError` before any processing.
    pub error_5xx_every: Option<u32>,
    /// Every Nth request gets no response: the connection closes without a byte written.
    pub drop_every: Option<u32>,
    /// With `drop_every`: process the request first, then drop the response (the "did my
    /// POST happen?" case). Default false: dropped requests have no side effect.
    pub drop_after_processing: bool,
    /// Latency added to every request.
    pub slow: Option<Duration>,
    /// Latency added after a request was processed, before its response: the window in which
    /// a client cannot know whether its POST happened.
    pub slow_response: Option<Duration>,
}

impl Faults {
    fn generic(&self) -> edrgate_simkit::Faults {
        edrgate_simkit::Faults {
            error_5xx_every: self.error_5xx_every,
            drop_every: self.drop_every,
            drop_after_processing: self.drop_after_processing,
            slow: self.slow,
            slow_response: self.slow_response,
            ..edrgate_simkit::Faults::default()
        }
    }
}

/// Snapshot of what happened, for exactly-once assertions (also `GET /_sim/counters`).
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Counters {
    /// Every request to a vendor route (faulted and unauthorized ones included).
    pub requests: u64,
    pub tokens_issued: u64,
    pub tokens_refused: u64,
    pub unauthorized: u64,
    /// Live-response machine actions created.
    pub live_response_actions: u64,
    /// Machine actions created, by `type`.
    pub actions_by_type: BTreeMap<String, u64>,
    /// Live-response commands executed (completed or failed), by type.
    pub commands_by_type: BTreeMap<String, u64>,
    pub commands_failed: u64,
    /// edrgate helper script runs, by helper.
    pub helper_runs: BTreeMap<String, u64>,
    pub cancels: u64,
    pub library_uploads: u64,
    pub links_issued: u64,
    pub downloads: u64,
    /// Downloads refused as expired.
    pub expired_downloads: u64,
    /// Downloads cut off ([`Simulator::cut_next_downloads`]).
    pub cut_downloads: u64,
    /// Blob downloads that carried an `Authorization` header (must stay 0).
    pub downloads_with_bearer: u64,
    pub action_list_calls: u64,
    /// `GET /api/machines` calls without a `$filter` (every machine of the tenant).
    pub machine_lists_unfiltered: u64,
    /// Every 429 sent.
    pub responses_429: u64,
    pub live_response_rate_limited: u64,
    pub session_cap_rejections: u64,
    pub api_rate_limited: u64,
    pub active_request_conflicts: u64,
    pub isolation_changes: u64,
    pub faults_5xx: u64,
    pub faults_dropped: u64,
    /// High-water mark of pending + running live-response actions.
    pub max_concurrent_sessions: usize,
    /// Requests that reached a token route (`…/oauth2/…`), before any check of their form:
    /// a client that refused the token host's certificate sent none (so no secret either).
    pub token_requests: u64,
}

struct Shared {
    rt: Mutex<Runtime>,
    faults: SimFaults,
    tls: SelfSigned,
    log: SimLog,
    serving_tls: AtomicBool,
    token_requests: AtomicU64,
    /// Where result links point when the blob host has its own listener
    /// ([`Simulator::spawn_split_tls`]); `None`: the host the link was asked on.
    blob_base: Mutex<Option<String>>,
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
        "defender"
    }

    fn vendor_router(&self) -> Router {
        let sim = self.clone();
        routes::router(self.clone()).layer(axum::middleware::from_fn(
            move |req: axum::extract::Request, next: axum::middleware::Next| {
                if Role::of(req.uri().path()) == Role::Token {
                    sim.inner.token_requests.fetch_add(1, Ordering::Relaxed);
                }
                next.run(req)
            },
        ))
    }

    /// Reached only on the HTTPS serving path (`serve_tls_on`, `spawn_tls`): `cert_pem` and
    /// `cert_sha256` are overridden below to read the certificate directly. So it also marks
    /// the simulator as serving HTTPS, the scheme of the result links it hands out (an
    /// HTTP/1.1 request does not carry its scheme).
    fn tls(&self) -> &SelfSigned {
        self.inner.serving_tls.store(true, Ordering::Relaxed);
        &self.inner.tls
    }

    fn log(&self) -> &SimLog {
        &self.inner.log
    }

    fn counters_json(&self) -> Value {
        serde_json::to_value(self.counters()).unwrap_or(Value::Null)
    }

    fn cert_pem(&self) -> std::io::Result<String> {
        self.inner.tls.cert_pem()
    }

    fn faults(&self) -> Option<&SimFaults> {
        Some(&self.inner.faults)
    }

    /// Machine actions (live response, isolate, unisolate) change an endpoint.
    fn is_side_effect(&self, method: &Method, path: &str) -> bool {
        let segments: Vec<&str> = path.trim_end_matches('/').split('/').collect();
        method == Method::POST
            && matches!(segments.as_slice(), ["", api, machines, _, _]
                if api.eq_ignore_ascii_case("api") && machines.eq_ignore_ascii_case("machines"))
    }

    fn fault_response(&self, injected: Injected) -> Response {
        routes::fault_response(injected)
    }

    fn cert_sha256(&self) -> std::io::Result<String> {
        self.inner.tls.cert_sha256()
    }
}

impl Simulator {
    pub fn new(cfg: SimConfig) -> Self {
        let log = SimLog::new();
        let faults = SimFaults::new();
        faults.set(cfg.faults.generic());
        Simulator {
            inner: Arc::new(Shared {
                rt: Mutex::new(Runtime::new(cfg, log.clone())),
                faults,
                tls: SelfSigned::new(),
                log,
                serving_tls: AtomicBool::new(false),
                token_requests: AtomicU64::new(0),
                blob_base: Mutex::new(None),
            }),
        }
    }

    /// Runs `f` on the state after advancing every action to now. Never held across `.await`.
    pub(crate) fn with<R>(&self, f: impl FnOnce(&mut Runtime, Instant) -> R) -> R {
        let now = Instant::now();
        let mut rt = self.inner.rt.lock().unwrap_or_else(PoisonError::into_inner);
        rt.tick(now);
        f(&mut rt, now)
    }

    pub(crate) fn is_tls(&self) -> bool {
        self.inner.serving_tls.load(Ordering::Relaxed)
    }

    /// The origin result links point at when the blob host has its own listener.
    pub(crate) fn blob_base(&self) -> Option<String> {
        self.inner.blob_base.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// Serves the three hosts a Defender backend talks to on three HTTPS listeners, each with
    /// its own self-signed certificate, as the real service does (`login.microsoftonline.com`,
    /// `api.securitycenter.microsoft.com`, `*.blob.core.windows.net`, §0, §1, §5): the token
    /// routes only on `token`, `/api` only on `api` (whose certificate is [`Sim::cert_pem`]),
    /// the blob route only on `blob`, where result links now point. Each listener answers
    /// other paths with 404 `ResourceNotFound`; the `/_sim/` admin routes are on all three.
    pub async fn spawn_split_tls(&self) -> std::io::Result<SplitTls> {
        let mut listeners = Vec::new();
        for role in [Role::Token, Role::Api, Role::Blob] {
            let tls = (role != Role::Api).then(|| Arc::new(SelfSigned::new()));
            let served = RoleSim { sim: self.clone(), role, tls };
            let cert_pem = served.tls().cert_pem()?;
            let cert_sha256 = served.tls().cert_sha256()?;
            let addr = served.spawn_tls().await?;
            listeners.push(Listener { addr, cert_pem, cert_sha256 });
        }
        let blob = listeners.pop().unwrap_or_else(|| unreachable!("three listeners"));
        let api = listeners.pop().unwrap_or_else(|| unreachable!("three listeners"));
        let token = listeners.pop().unwrap_or_else(|| unreachable!("three listeners"));
        *self.inner.blob_base.lock().unwrap_or_else(PoisonError::into_inner) = Some(blob.url());
        Ok(SplitTls { token, api, blob })
    }

    /// The configuration in effect (including runtime changes).
    pub fn config(&self) -> SimConfig {
        self.with(|rt, _| rt.cfg.clone())
    }

    pub fn counters(&self) -> Counters {
        let mut c = self.with(|rt, _| rt.counters.clone());
        let stats = self.inner.faults.stats();
        c.requests = stats.requests;
        c.faults_5xx = stats.injected_5xx;
        c.faults_dropped = stats.dropped + stats.answers_lost;
        c.token_requests = self.inner.token_requests.load(Ordering::Relaxed);
        c
    }

    /// Replaces the fault settings (simkit's: bursts and 429s set through [`Sim::faults`] are
    /// reset too).
    pub fn set_faults(&self, faults: Faults) {
        self.inner.faults.set(faults.generic());
        self.with(|rt, _| rt.cfg.faults = faults);
    }

    /// Every issued token stops working now (a token expiring mid-run).
    pub fn expire_tokens(&self) {
        self.with(|rt, _| rt.tokens.clear());
    }

    /// The next `n` blob downloads are refused as expired links.
    pub fn refuse_next_downloads(&self, n: u32) {
        self.with(|rt, _| rt.refuse_downloads = n);
    }

    /// The next `n` blob downloads with a valid link are cut off: the connection closes
    /// instead of delivering the blob (a network failure while a result is fetched).
    pub fn cut_next_downloads(&self, n: u32) {
        self.with(|rt, _| rt.cut_downloads = n);
    }

    /// Takes machine `n` (1-based) on or offline.
    pub fn set_machine_online(&self, n: usize, online: bool) {
        let id = machine_id(n);
        self.with(|rt, _| {
            if let Some(m) = rt.machines.iter_mut().find(|m| m.id == id) {
                m.online = online;
            }
        });
    }

    /// Pending + running live-response actions now.
    pub fn active_sessions(&self) -> usize {
        self.with(|rt, _| rt.active_sessions())
    }

    /// `(type, status, requestorComment)` of every machine action, oldest first.
    pub fn actions(&self) -> Vec<(String, String, String)> {
        self.with(|rt, _| {
            rt.actions
                .iter()
                .map(|a| {
                    (
                        a.kind.as_str().to_owned(),
                        a.status.as_str().to_owned(),
                        a.request.comment.clone().unwrap_or_default(),
                    )
                })
                .collect()
        })
    }

    /// When each live-response action was created, since the simulator started.
    pub fn live_response_arrivals(&self) -> Vec<Duration> {
        self.with(|rt, _| rt.lr_arrivals.iter().map(|t| t.duration_since(rt.started)).collect())
    }

    /// Names of the library files.
    pub fn library(&self) -> Vec<String> {
        self.with(|rt, _| rt.library.keys().cloned().collect())
    }

    /// Content of the library file `name`, if there is one.
    pub fn library_content(&self, name: &str) -> Option<Vec<u8>> {
        self.with(|rt, _| rt.library.get(name).map(|f| f.content.clone()))
    }

    pub fn process_exists(&self, machine: &str, pid: u64) -> bool {
        self.with(|rt, _| {
            rt.machine(machine).is_some_and(|m| m.endpoint.processes.contains_key(&pid))
        })
    }

    /// Content of a file on machine `machine` (id), if it exists.
    pub fn file_content(&self, machine: &str, path: &str) -> Option<Vec<u8>> {
        self.with(|rt, _| {
            rt.machine(machine)?.endpoint.file(path).filter(|n| !n.dir).map(|n| n.content.clone())
        })
    }

    pub fn file_exists(&self, machine: &str, path: &str) -> bool {
        self.with(|rt, _| rt.machine(machine).is_some_and(|m| m.endpoint.file(path).is_some()))
    }

    /// Data of a registry value (`key` like `HKLM\SOFTWARE\…`, case-insensitive).
    pub fn registry_value(&self, machine: &str, key: &str, value: &str) -> Option<Value> {
        self.with(|rt, _| {
            let k = rt
                .machine(machine)?
                .endpoint
                .registry
                .get(&key.trim_end_matches('\\').to_ascii_lowercase())?;
            k.values.get(&value.to_ascii_lowercase()).map(|(_, _, d)| d.clone())
        })
    }

    pub fn is_isolated(&self, machine: &str) -> bool {
        self.with(|rt, _| rt.machine(machine).is_some_and(|m| m.isolated))
    }
}

/// Which of Defender's three hosts a request path belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// The Entra token endpoint (`/{tenant}/oauth2/…`).
    Token,
    /// The API (`/api/…`, and everything else).
    Api,
    /// Result blobs (`/blob/…`, the SAS links).
    Blob,
}

impl Role {
    fn of(path: &str) -> Role {
        let lower = path.to_ascii_lowercase();
        if lower.contains("/oauth2/") {
            Role::Token
        } else if lower.starts_with("/blob/") {
            Role::Blob
        } else {
            Role::Api
        }
    }
}

/// One listener of [`Simulator::spawn_split_tls`].
#[derive(Clone, Debug)]
pub struct Listener {
    pub addr: SocketAddr,
    /// PEM of this listener's own self-signed certificate (SANs `localhost`, `127.0.0.1`).
    pub cert_pem: String,
    /// SHA-256 of that certificate (DER, hex), for a `pinned_cert_sha256`.
    pub cert_sha256: String,
}

impl Listener {
    /// `https://localhost:{port}`.
    pub fn url(&self) -> String {
        format!("https://localhost:{}", self.addr.port())
    }
}

/// The three hosts of [`Simulator::spawn_split_tls`], each with its own certificate.
#[derive(Clone, Debug)]
pub struct SplitTls {
    pub token: Listener,
    pub api: Listener,
    pub blob: Listener,
}

impl SplitTls {
    /// The v2 token endpoint on the token listener, for [`DEFAULT_TENANT`].
    pub fn token_url(&self) -> String {
        format!("{}/{DEFAULT_TENANT}/oauth2/v2.0/token", self.token.url())
    }
}

/// The simulator as one of its hosts serves it: that host's routes, its own certificate.
#[derive(Clone)]
struct RoleSim {
    sim: Simulator,
    role: Role,
    /// `None`: the simulator's own certificate (the API's).
    tls: Option<Arc<SelfSigned>>,
}

impl Sim for RoleSim {
    fn name(&self) -> &'static str {
        "defender"
    }

    fn vendor_router(&self) -> Router {
        let role = self.role;
        self.sim.vendor_router().layer(axum::middleware::from_fn(
            move |req: axum::extract::Request, next: axum::middleware::Next| async move {
                if Role::of(req.uri().path()) == role {
                    next.run(req).await
                } else {
                    routes::error(
                        axum::http::StatusCode::NOT_FOUND,
                        "ResourceNotFound",
                        "Resource not found",
                    )
                }
            },
        ))
    }

    fn tls(&self) -> &SelfSigned {
        self.sim.inner.serving_tls.store(true, Ordering::Relaxed);
        self.tls.as_deref().unwrap_or(&self.sim.inner.tls)
    }

    fn log(&self) -> &SimLog {
        self.sim.log()
    }

    fn counters_json(&self) -> Value {
        self.sim.counters_json()
    }

    fn faults(&self) -> Option<&SimFaults> {
        self.sim.faults()
    }

    fn is_side_effect(&self, method: &Method, path: &str) -> bool {
        self.sim.is_side_effect(method, path)
    }

    fn fault_response(&self, injected: Injected) -> Response {
        routes::fault_response(injected)
    }
}
