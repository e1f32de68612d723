//! The Falcon cloud's state: API clients and tokens, hosts, RTR sessions and commands, session
//! files, the put-files and scripts libraries, batches, the offline queue and the rate window.
//!
//! Everything is advanced lazily: each request first calls [`State::tick`], which moves
//! containment along, expires idle sessions and runs queued commands on hosts that came back.
//! Commands act on the host when they are accepted (that is when the side effect is logged) and
//! report `complete: true` once their run time (`command_delay`) has passed.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use edrgate_simkit::{SimFaults, SimLog};
use serde_json::{Value, json};
use sha2::Digest as _;

use crate::endpoint::{CommandLine, Endpoint, Library, Os};
use crate::{
    DEFAULT_CLIENT_ID, DEFAULT_CLIENT_SECRET, READONLY_CLIENT_ID, RESPONDER_CLIENT_ID, SimConfig,
};

pub(crate) const SCOPE_RTR_READ: &str = "real-time-response:read";
pub(crate) const SCOPE_RTR_WRITE: &str = "real-time-response:write";
pub(crate) const SCOPE_RTR_ADMIN: &str = "real-time-response-admin:write";
pub(crate) const SCOPE_RTR_AUDIT: &str = "real-time-response-audit:read";
pub(crate) const SCOPE_DEVICES_READ: &str = "devices:read";
pub(crate) const SCOPE_DEVICES_WRITE: &str = "devices:write";

/// Bounds on what the simulator keeps, so a long demo or benchmark cannot grow it without
/// limit (the oldest finished records go first).
const MAX_TOKENS: usize = 10_000;
const MAX_SESSIONS: usize = 30_000;
const MAX_COMMANDS: usize = 100_000;
const MAX_FILES: usize = 5_000;
const MAX_BATCHES: usize = 1_000;
const MAX_LOGS_PER_SESSION: usize = 1_000;
const MAX_LIBRARY: usize = 1_000;
/// Queued sessions live 7 days (§6.7).
const QUEUE_LIFETIME: Duration = Duration::from_secs(7 * 86_400);
const WINDOW: Duration = Duration::from_secs(60);
/// §3: 15 requests per minute with a bad token, 300 on the token route (one window each: the
/// simulator does not tell source addresses apart).
pub(crate) const BAD_TOKEN_LIMIT: u32 = 15;
pub(crate) const TOKEN_ROUTE_LIMIT: u32 = 300;

/// An error answered in the envelope's `errors[]`.
#[derive(Clone, Debug)]
pub(crate) struct ApiError {
    pub(crate) status: u16,
    pub(crate) code: i64,
    pub(crate) message: String,
}

impl ApiError {
    pub(crate) fn new(status: u16, code: i64, message: impl Into<String>) -> Self {
        ApiError { status, code, message: message.into() }
    }
    pub(crate) fn bad_request(message: impl Into<String>) -> Self {
        Self::new(400, 400, message)
    }
    /// `50007 could not get session` (§9.2): a batch or session that is gone. For a
    /// single-host session the HTTP status is \[U\] (§13.4); the simulator answers 404.
    pub(crate) fn no_session() -> Self {
        Self::new(404, 50007, "could not get session")
    }
    pub(crate) fn offline() -> Self {
        Self::new(404, 40401, "Could not establish sensor comms")
    }
    pub(crate) fn command_not_found() -> Self {
        Self::new(400, 40007, "Command not found")
    }
    pub(crate) fn invalid_command() -> Self {
        Self::new(400, 40006, "Command is not valid")
    }
    pub(crate) fn file_not_found(name: &str) -> Self {
        Self::new(404, 40412, format!("The file {name} could not be found"))
    }
    pub(crate) fn to_json(&self) -> Value {
        json!({ "code": self.code, "message": self.message })
    }
}

/// The three RTR tiers (§6.1), ordered.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Tier {
    ReadOnly,
    Responder,
    Admin,
}

/// An API client (§2.4).
#[derive(Clone, Debug)]
pub(crate) struct Client {
    pub(crate) id: &'static str,
    pub(crate) scopes: &'static [&'static str],
}

pub(crate) const CLIENTS: [Client; 3] = [
    Client {
        id: DEFAULT_CLIENT_ID,
        scopes: &[
            SCOPE_RTR_READ,
            SCOPE_RTR_WRITE,
            SCOPE_RTR_ADMIN,
            SCOPE_RTR_AUDIT,
            SCOPE_DEVICES_READ,
            SCOPE_DEVICES_WRITE,
        ],
    },
    Client {
        id: RESPONDER_CLIENT_ID,
        scopes: &[SCOPE_RTR_READ, SCOPE_RTR_WRITE, SCOPE_DEVICES_READ, SCOPE_DEVICES_WRITE],
    },
    Client { id: READONLY_CLIENT_ID, scopes: &[SCOPE_RTR_READ, SCOPE_DEVICES_READ] },
];

pub(crate) fn client_by_credentials(id: &str, secret: &str) -> Option<&'static Client> {
    CLIENTS.iter().find(|c| c.id == id && secret == DEFAULT_CLIENT_SECRET)
}

pub(crate) struct Host {
    pub(crate) hostname: String,
    pub(crate) aid: String,
    pub(crate) endpoint: Endpoint,
    pub(crate) online: bool,
    /// `normal`, `containment_pending`, `contained`, `lift_containment_pending` (§4.2).
    pub(crate) status: &'static str,
    /// When a pending containment change completes (counted from when the host is online).
    pub(crate) pending_until: Option<Instant>,
    /// A run time of its own for this host's commands (a slow host), else `command_delay`.
    pub(crate) command_delay: Option<Duration>,
    pub(crate) local_ip: String,
    pub(crate) mac: String,
    pub(crate) first_seen: String,
    pub(crate) last_seen: String,
    pub(crate) modified: String,
}

pub(crate) struct SessionLog {
    id: u64,
    cloud_request_id: String,
    base_command: String,
    command_string: String,
    current_directory: String,
    created_at: String,
}

pub(crate) struct Session {
    pub(crate) id: String,
    pub(crate) client: &'static str,
    pub(crate) host: usize,
    pub(crate) origin: String,
    pub(crate) cwd: String,
    pub(crate) created_at: String,
    pub(crate) updated_at: String,
    pub(crate) deleted_at: Option<String>,
    pub(crate) created: Instant,
    pub(crate) last_used: Instant,
    /// Until when a queued session lives (7 days, extended by each command, §6.7).
    pub(crate) queue_until: Instant,
    pub(crate) offline_queued: bool,
    pub(crate) logs: Vec<SessionLog>,
    pub(crate) cloud_request_ids: Vec<String>,
}

pub(crate) struct Command {
    pub(crate) session_id: String,
    pub(crate) client: &'static str,
    pub(crate) host: usize,
    pub(crate) line: CommandLine,
    pub(crate) base_command: String,
    pub(crate) command_string: String,
    pub(crate) created_at: String,
    pub(crate) updated_at: String,
    /// `None` while it waits in the offline queue.
    pub(crate) ready_at: Option<Instant>,
    pub(crate) stdout: String,
    pub(crate) stderr: String,
    /// What the status reports as `base_command` (`DOWNLOAD_RENAME` for `put`, §7.3).
    pub(crate) reported_base: String,
    /// Offline queue status: `PENDING`, `FINISHED`, `CANCELED` (beyond the first two \[U\]).
    pub(crate) queue_status: Option<&'static str>,
    pub(crate) deleted_at: Option<String>,
}

pub(crate) struct SessionFile {
    pub(crate) id: u64,
    pub(crate) cloud_request_id: String,
    pub(crate) session_id: String,
    pub(crate) client: &'static str,
    pub(crate) host: usize,
    /// The host-native full path; an NT device path on Windows (§7.5).
    pub(crate) name: String,
    pub(crate) sha256: String,
    pub(crate) content: Bytes,
    pub(crate) created_at: String,
    /// The upload to the cloud starts when the `get` completes and ends `upload_delay` later.
    pub(crate) upload_from: Instant,
    pub(crate) upload_done: Instant,
    pub(crate) deleted: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum LibKind {
    PutFile,
    Script,
}

pub(crate) struct LibFile {
    pub(crate) id: String,
    pub(crate) kind: LibKind,
    pub(crate) name: String,
    pub(crate) description: String,
    pub(crate) comments: String,
    pub(crate) permission_type: String,
    pub(crate) platform: Vec<String>,
    pub(crate) content: Bytes,
    pub(crate) created_by: String,
    pub(crate) created_at: String,
}

pub(crate) struct Batch {
    pub(crate) client: &'static str,
    /// Host index → its session in the batch.
    pub(crate) hosts: BTreeMap<usize, String>,
}

pub(crate) struct BatchGet {
    pub(crate) client: &'static str,
    /// Host index → the `get`'s cloud request id.
    pub(crate) hosts: Vec<(usize, String)>,
}

/// What happened to one host of a batch call.
pub(crate) enum PerHost {
    Failed { error: ApiError },
    Ran { session_id: String, cloud_request_id: String },
    Queued { session_id: String, cloud_request_id: String },
}

#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct Counters {
    pub tokens_issued: u64,
    pub token_failures: u64,
    pub unauthorized: u64,
    pub forbidden: u64,
    pub rate_limited: u64,
    pub sessions_created: u64,
    pub sessions_reused: u64,
    pub commands: u64,
    pub commands_queued: u64,
    pub batch_inits: u64,
    pub batch_commands: u64,
    pub files_downloaded: u64,
}

pub(crate) struct State {
    pub(crate) cfg: SimConfig,
    pub(crate) log: SimLog,
    pub(crate) faults: SimFaults,
    pub(crate) cid: String,
    pub(crate) hosts: Vec<Host>,
    pub(crate) tokens: HashMap<String, (&'static Client, Instant)>,
    token_order: VecDeque<String>,
    pub(crate) sessions: HashMap<String, Session>,
    session_order: VecDeque<String>,
    /// (client, host) → the client's live session on that host.
    live: HashMap<(&'static str, usize), String>,
    pub(crate) commands: HashMap<String, Command>,
    command_order: VecDeque<String>,
    queue: VecDeque<String>,
    pub(crate) files: VecDeque<SessionFile>,
    next_file_id: u64,
    next_log_id: u64,
    pub(crate) library: Vec<LibFile>,
    pub(crate) batches: HashMap<String, Batch>,
    batch_order: VecDeque<String>,
    pub(crate) batch_gets: HashMap<String, BatchGet>,
    batch_get_order: VecDeque<String>,
    window: VecDeque<Instant>,
    bad_token_window: VecDeque<Instant>,
    token_window: VecDeque<Instant>,
    /// Answer 409 to a containment request for a host already in (or heading to) that state
    /// (\[U\] §4.3; default: accept it again with 202, changing nothing).
    pub(crate) containment_conflict: bool,
    pub(crate) counters: Counters,
}

/// `t + d`, saturating far in the future (delays come from the command line).
pub(crate) fn later(t: Instant, d: Duration) -> Instant {
    t.checked_add(d).or_else(|| t.checked_add(Duration::from_secs(1 << 32))).unwrap_or(t)
}

/// The device id (aid) of a hostname: 32 lower-case hex, deterministic.
pub(crate) fn aid_of(hostname: &str) -> String {
    hex::encode(&sha2::Sha256::digest(format!("crowdstrike-sim/{hostname}").as_bytes())[..16])
}

pub(crate) fn uuid() -> String {
    uuid::Uuid::new_v4().to_string()
}

pub(crate) fn is_uuid(s: &str) -> bool {
    uuid::Uuid::try_parse(s).is_ok_and(|_| s.len() == 36)
}

pub(crate) fn is_aid(s: &str) -> bool {
    s.len() == 32 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// RFC 3339 UTC to the second (`2020-05-01T16:09:00Z`).
pub(crate) use edrgate_simkit::faults::rfc3339_secs;

/// RFC 3339 UTC with nanoseconds, as session `created_at`s are (§1.4).
pub(crate) fn rfc3339_nanos(t: SystemTime) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let s = rfc3339_secs(d.as_secs());
    format!("{}.{:09}Z", s.trim_end_matches('Z'), d.subsec_nanos())
}

/// `C:\Windows\x` → `\Device\HarddiskVolume2\Windows\x` (batch-get names, §7.5).
pub(crate) fn nt_path(path: &str) -> String {
    match path.get(..2) {
        Some(d) if d.ends_with(':') => format!(r"\Device\HarddiskVolume2{}", &path[2..]),
        _ => path.to_owned(),
    }
}

/// The tier a command needs (§6.1, Caracara's tier map), or `None` for an unknown command.
pub(crate) fn min_tier(cmd: &CommandLine) -> Option<Tier> {
    Some(match cmd.base.as_str() {
        "cat" | "cd" | "clear" | "env" | "eventlog" | "filehash" | "getsid" | "help"
        | "history" | "ipconfig" | "ls" | "mount" | "netstat" | "ps" | "pwd" | "users"
        | "ifconfig" | "csrutil" => Tier::ReadOnly,
        "reg" => match cmd.sub().as_deref() {
            Some("query") => Tier::ReadOnly,
            Some("set" | "delete" | "load" | "unload") => Tier::Responder,
            _ => return None,
        },
        "cp" | "encrypt" | "get" | "kill" | "map" | "memdump" | "mkdir" | "mv" | "restart"
        | "rm" | "shutdown" | "unmap" | "update" | "xmemdump" | "zip" | "tar" | "umount" => {
            Tier::Responder
        }
        // `-CloudFile` is active responder, `-Raw`/`-HostPath` admin (Caracara, §6.1).
        "runscript"
            if cmd.has_flag("cloudfile") && !cmd.has_flag("raw") && !cmd.has_flag("hostpath") =>
        {
            Tier::Responder
        }
        "runscript" | "put" | "run" | "put-and-run" | "falconscript" | "cswindiag" => Tier::Admin,
        _ => return None,
    })
}

/// Whether `base` exists on `os`: Windows-only commands on Linux/macOS (and the reverse) are
/// rejected like unknown ones, `40007` (the exact rejection is \[U\], §9.2, §11.11; the init's
/// per-platform `scripts` lists, §5.3, show the catalogs differ).
fn on_platform(base: &str, os: Os) -> bool {
    match base {
        "reg" | "memdump" | "xmemdump" | "eventlog" | "getsid" | "ipconfig" | "cswindiag"
        | "map" | "unmap" | "encrypt" => os == Os::Windows,
        "ifconfig" | "users" | "tar" | "umount" => os != Os::Windows,
        "csrutil" => os == Os::Mac,
        _ => true,
    }
}

impl State {
    pub(crate) fn new(cfg: SimConfig, log: SimLog, faults: SimFaults) -> Self {
        let now_secs = faults.now_epoch_secs() as u64;
        let mut hosts = Vec::new();
        let groups = [
            (Os::Windows, cfg.windows, "CS-WIN"),
            (Os::Linux, cfg.linux, "CS-LNX"),
            (Os::Mac, cfg.mac, "CS-MAC"),
        ];
        for (os, count, prefix) in groups {
            for i in 1..=count {
                let hostname = format!("{prefix}-{i:04}");
                let n = hosts.len() + 1;
                let seen = rfc3339_secs(now_secs.saturating_sub(90 * 86_400 + n as u64 * 3_600));
                hosts.push(Host {
                    aid: aid_of(&hostname),
                    endpoint: Endpoint::new(os, &hostname, n, now_secs),
                    online: true,
                    status: "normal",
                    pending_until: None,
                    command_delay: None,
                    local_ip: format!("10.{}.{}.{}", 20 + n / 65_536 % 200, n / 256 % 256, n % 256),
                    mac: format!(
                        "00-50-56-{:02x}-{:02x}-{:02x}",
                        n / 65_536 % 256,
                        n / 256 % 256,
                        n % 256
                    ),
                    first_seen: seen,
                    last_seen: rfc3339_secs(now_secs),
                    modified: rfc3339_secs(now_secs),
                    hostname,
                });
            }
        }
        let mut st = State {
            cid: hex::encode(&sha2::Sha256::digest(b"crowdstrike-sim/cid")[..16]),
            cfg,
            log,
            faults,
            hosts,
            tokens: HashMap::new(),
            token_order: VecDeque::new(),
            sessions: HashMap::new(),
            session_order: VecDeque::new(),
            live: HashMap::new(),
            commands: HashMap::new(),
            command_order: VecDeque::new(),
            queue: VecDeque::new(),
            files: VecDeque::new(),
            next_file_id: 1,
            next_log_id: 1,
            library: Vec::new(),
            batches: HashMap::new(),
            batch_order: VecDeque::new(),
            batch_gets: HashMap::new(),
            batch_get_order: VecDeque::new(),
            window: VecDeque::new(),
            bad_token_window: VecDeque::new(),
            token_window: VecDeque::new(),
            containment_conflict: false,
            counters: Counters::default(),
        };
        // A public and a private library script, so `runscript -CloudFile` works out of the
        // box and the 40412 of a private script (§8.4) can be shown.
        st.add_script(
            "edrgate-hello",
            &["windows", "linux", "mac"],
            "echo hello from $1",
            "public",
            "falcon-console-user",
        );
        st
    }

    pub(crate) fn now_str(&self) -> String {
        rfc3339_nanos(self.faults.now())
    }

    pub(crate) fn host_by_name(&self, hostname: &str) -> Option<usize> {
        self.hosts.iter().position(|h| h.hostname.eq_ignore_ascii_case(hostname))
    }

    pub(crate) fn host_by_aid(&self, aid: &str) -> Option<usize> {
        self.hosts.iter().position(|h| h.aid.eq_ignore_ascii_case(aid))
    }

    /// Moves everything time-driven forward to `now`: containment changes, queued commands
    /// of hosts that came back. (Cheap per host: it runs on every request.)
    pub(crate) fn tick(&mut self, now: Instant) {
        let mut stamp = None;
        for h in &mut self.hosts {
            if let Some(until) = h.pending_until
                && h.online
                && now >= until
            {
                h.pending_until = None;
                h.status = match h.status {
                    "containment_pending" => "contained",
                    "lift_containment_pending" => "normal",
                    s => s,
                };
                let secs = self.faults.now_epoch_secs() as u64;
                h.modified = stamp.get_or_insert_with(|| rfc3339_secs(secs)).clone();
            }
        }
        self.run_queue(now);
    }

    /// `last_seen`: now for an online host, else when it went away.
    pub(crate) fn last_seen(&self, i: usize) -> String {
        let h = &self.hosts[i];
        if h.online {
            rfc3339_secs(self.faults.now_epoch_secs() as u64)
        } else {
            h.last_seen.clone()
        }
    }

    // ---- rate limits (§3) ----

    /// Counts a request in a sliding window; `Err(retry_at_epoch_secs)` when it is full.
    fn take(
        window: &mut VecDeque<Instant>,
        limit: u32,
        now: Instant,
        epoch: f64,
    ) -> Result<u32, u64> {
        while window.front().is_some_and(|t| now.duration_since(*t) >= WINDOW) {
            window.pop_front();
        }
        if window.len() >= limit as usize {
            let oldest = window.front().copied().unwrap_or(now);
            let wait = WINDOW.saturating_sub(now.duration_since(oldest));
            return Err((epoch + wait.as_secs_f64()).ceil() as u64);
        }
        window.push_back(now);
        Ok(limit - window.len() as u32)
    }

    pub(crate) fn take_cid(&mut self, now: Instant) -> Result<u32, u64> {
        let epoch = self.faults.now_epoch_secs();
        let limit = self.cfg.rate_limit_per_minute.max(1);
        Self::take(&mut self.window, limit, now, epoch)
    }

    pub(crate) fn take_bad_token(&mut self, now: Instant) -> Result<u32, u64> {
        let epoch = self.faults.now_epoch_secs();
        Self::take(&mut self.bad_token_window, BAD_TOKEN_LIMIT, now, epoch)
    }

    pub(crate) fn take_token_route(&mut self, now: Instant) -> Result<u32, u64> {
        let epoch = self.faults.now_epoch_secs();
        Self::take(&mut self.token_window, TOKEN_ROUTE_LIMIT, now, epoch)
    }

    // ---- tokens (§2) ----

    pub(crate) fn issue_token(&mut self, client: &'static Client, now: Instant) -> String {
        self.tokens.retain(|_, (_, exp)| *exp > now);
        self.token_order.retain(|t| self.tokens.contains_key(t));
        while self.tokens.len() >= MAX_TOKENS {
            let Some(old) = self.token_order.pop_front() else { break };
            self.tokens.remove(&old);
        }
        // Opaque, long, URL-safe: real tokens are JWT-like strings clients never parse.
        let token =
            format!("cs-sim.{}.{}", uuid::Uuid::new_v4().simple(), uuid::Uuid::new_v4().simple());
        self.tokens.insert(token.clone(), (client, later(now, self.cfg.token_lifetime)));
        self.token_order.push_back(token.clone());
        self.counters.tokens_issued += 1;
        token
    }

    pub(crate) fn caller(&self, token: &str, now: Instant) -> Option<&'static Client> {
        self.tokens.get(token).filter(|(_, exp)| *exp > now).map(|(c, _)| *c)
    }

    pub(crate) fn revoke(&mut self, token: &str) {
        self.tokens.remove(token);
    }

    pub(crate) fn expire_tokens(&mut self) {
        self.tokens.clear();
        self.token_order.clear();
    }

    // ---- hosts (§4) ----

    pub(crate) fn device_json(&self, i: usize) -> Value {
        let h = &self.hosts[i];
        let os = h.endpoint.os;
        let (platform_id, os_version, product) = match os {
            Os::Windows => ("0", "Windows 10", "Workstation"),
            Os::Mac => ("1", "Sonoma (14)", "Workstation"),
            Os::Linux => ("3", "Ubuntu 22.04", "Server"),
        };
        json!({
            "device_id": h.aid,
            "cid": self.cid,
            "hostname": h.hostname,
            "platform_name": os.platform_name(),
            "platform_id": platform_id,
            "os_version": os_version,
            "agent_version": "7.16.18605.0",
            "status": h.status,
            "first_seen": h.first_seen,
            "last_seen": self.last_seen(i),
            "local_ip": h.local_ip,
            "external_ip": "203.0.113.10",
            "mac_address": h.mac,
            "product_type_desc": product,
            "system_manufacturer": "VMware, Inc.",
            "tags": [],
            "modified_timestamp": h.modified,
            "reduced_functionality_mode": "no",
            "device_policies": {
                "remote_response": {
                    "policy_type": "remote-response",
                    "policy_id": "2b3c9f1e6a4d4f0b9c1e7d2a5b8c0f11",
                    "applied": true
                }
            }
        })
    }

    /// `contain` / `lift_containment` (§4.3): the accepted ids.
    pub(crate) fn contain(
        &mut self,
        action: &str,
        ids: &[String],
        now: Instant,
    ) -> Result<Vec<Value>, ApiError> {
        let (pending, done) = match action {
            "contain" => ("containment_pending", "contained"),
            "lift_containment" => ("lift_containment_pending", "normal"),
            _ => {
                return Err(ApiError::bad_request(format!(
                    "action_name {action} is not supported"
                )));
            }
        };
        if ids.is_empty() {
            return Err(ApiError::bad_request("ids: at least one id is required"));
        }
        let mut hosts = Vec::new();
        for id in ids {
            let Some(i) = self.host_by_aid(id) else {
                return Err(ApiError::new(
                    404,
                    404,
                    format!("No matching device found for ID {id}"),
                ));
            };
            hosts.push(i);
        }
        let mut out = Vec::new();
        for i in hosts {
            let delay = self.cfg.containment_delay;
            let h = &mut self.hosts[i];
            if h.status == pending || h.status == done {
                if self.containment_conflict {
                    let what = if action == "contain" { "contained" } else { "lifted" };
                    return Err(ApiError::new(
                        409,
                        409,
                        format!("Host {} is already {what}", h.aid),
                    ));
                }
            } else {
                // From the opposite state (or its pending form): the change starts over.
                h.status = pending;
                h.pending_until = Some(later(now, delay));
                h.modified = rfc3339_secs(self.faults.now_epoch_secs() as u64);
                self.log.record(action, &h.aid, Value::String(h.hostname.clone()));
            }
            out.push(json!({ "id": h.aid, "path": "" }));
        }
        Ok(out)
    }

    pub(crate) fn set_online(&mut self, i: usize, online: bool, now: Instant) {
        let delay = self.cfg.containment_delay;
        let stamp = rfc3339_secs(self.faults.now_epoch_secs() as u64);
        let h = &mut self.hosts[i];
        if !online && h.online {
            h.last_seen = stamp;
        }
        if online && !h.online && h.pending_until.is_some() {
            // A pending containment change completes once the sensor hears it.
            h.pending_until = Some(later(now, delay));
        }
        h.online = online;
        self.run_queue(now);
    }

    // ---- sessions (§5) ----

    fn session_live(&self, s: &Session, now: Instant) -> bool {
        s.deleted_at.is_none()
            && if s.offline_queued {
                now < s.queue_until
            } else {
                now.duration_since(s.last_used) < self.cfg.session_idle
            }
    }

    /// The caller's live session `id`, its idle timer reset.
    pub(crate) fn session_mut(
        &mut self,
        client: &'static str,
        id: &str,
        now: Instant,
    ) -> Result<&mut Session, ApiError> {
        let live =
            self.sessions.get(id).is_some_and(|s| s.client == client && self.session_live(s, now));
        if !live {
            return Err(ApiError::no_session());
        }
        let s = self.sessions.get_mut(id).ok_or_else(ApiError::no_session)?;
        s.last_used = now;
        Ok(s)
    }

    pub(crate) fn live_session(
        &self,
        client: &'static str,
        host: usize,
        now: Instant,
    ) -> Option<&str> {
        let id = self.live.get(&(client, host))?;
        self.sessions.get(id).filter(|s| self.session_live(s, now)).map(|s| s.id.as_str())
    }

    fn existing_aid_sessions(&self, host: usize, now: Instant) -> usize {
        CLIENTS.iter().filter(|c| self.live_session(c.id, host, now).is_some()).count()
    }

    /// Init (or, for the caller's existing session on the host, refresh and return it, §5.2).
    /// `Err` for an unknown or offline host without `queue_offline`.
    pub(crate) fn init_session(
        &mut self,
        client: &'static str,
        host: usize,
        queue_offline: bool,
        origin: &str,
        now: Instant,
    ) -> Result<String, ApiError> {
        if let Some(id) = self.live_session(client, host, now).map(str::to_owned) {
            let stamp = self.now_str();
            if let Some(s) = self.sessions.get_mut(&id) {
                s.last_used = now;
                s.updated_at = stamp;
            }
            self.counters.sessions_reused += 1;
            return Ok(id);
        }
        let online = self.hosts[host].online;
        if !online && !queue_offline {
            return Err(ApiError::offline());
        }
        while self.sessions.len() >= MAX_SESSIONS {
            let Some(old) = self.session_order.pop_front() else { break };
            if let Some(s) = self.sessions.remove(&old) {
                self.live.remove(&(s.client, s.host));
            }
        }
        let id = uuid();
        let stamp = self.now_str();
        self.sessions.insert(
            id.clone(),
            Session {
                id: id.clone(),
                client,
                host,
                origin: origin.to_owned(),
                cwd: self.hosts[host].endpoint.os.root().to_owned(),
                created_at: stamp.clone(),
                updated_at: stamp,
                deleted_at: None,
                created: now,
                last_used: now,
                queue_until: now + QUEUE_LIFETIME,
                offline_queued: !online,
                logs: Vec::new(),
                cloud_request_ids: Vec::new(),
            },
        );
        self.session_order.push_back(id.clone());
        self.live.insert((client, host), id.clone());
        self.counters.sessions_created += 1;
        Ok(id)
    }

    /// `domain.InitResponse` (§5.3).
    pub(crate) fn init_json(&self, id: &str, now: Instant) -> Value {
        let Some(s) = self.sessions.get(id) else { return Value::Null };
        let h = &self.hosts[s.host];
        let os = h.endpoint.os;
        json!({
            "session_id": s.id,
            "created_at": s.created_at,
            "existing_aid_sessions": self.existing_aid_sessions(s.host, now),
            "offline_queued": s.offline_queued,
            "device_id": h.aid,
            "platform": os.platform_name().to_ascii_lowercase(),
            "pwd": os.root(),
            "scripts": scripts_help(os),
            "previous_commands": s.logs.iter().rev().take(10).map(|l| l.command_string.clone()).collect::<Vec<_>>(),
        })
    }

    /// Refresh by device (§5.4).
    pub(crate) fn refresh_session(
        &mut self,
        client: &'static str,
        host: usize,
        now: Instant,
    ) -> Result<String, ApiError> {
        let id = self
            .live_session(client, host, now)
            .map(str::to_owned)
            .ok_or_else(ApiError::no_session)?;
        let stamp = self.now_str();
        if let Some(s) = self.sessions.get_mut(&id) {
            s.last_used = now;
            s.updated_at = stamp;
        }
        Ok(id)
    }

    /// Delete a session, or every session of a batch id (Caracara sends one; \[U\] §13.10).
    pub(crate) fn delete_session(
        &mut self,
        client: &'static str,
        id: &str,
        now: Instant,
    ) -> Result<(), ApiError> {
        let ids: Vec<String> = match self.batches.get(id) {
            Some(b) if b.client == client => b.hosts.values().cloned().collect(),
            _ => {
                self.session_mut(client, id, now)?;
                vec![id.to_owned()]
            }
        };
        let stamp = self.now_str();
        for sid in ids {
            if let Some(s) = self.sessions.get_mut(&sid)
                && s.deleted_at.is_none()
            {
                s.deleted_at = Some(stamp.clone());
                // Pending queued commands go with their session (§6.7).
                for crid in &s.cloud_request_ids {
                    if let Some(c) = self.commands.get_mut(crid)
                        && c.queue_status == Some("PENDING")
                    {
                        c.queue_status = Some("CANCELED");
                        c.deleted_at = Some(stamp.clone());
                    }
                }
                if self.live.get(&(s.client, s.host)) == Some(&sid) {
                    self.live.remove(&(s.client, s.host));
                }
            }
        }
        Ok(())
    }

    pub(crate) fn session_json(&self, s: &Session, now: Instant) -> Value {
        let h = &self.hosts[s.host];
        let logs: Vec<Value> = s
            .logs
            .iter()
            .map(|l| {
                json!({
                    "id": l.id,
                    "session_id": s.id,
                    "cloud_request_id": l.cloud_request_id,
                    "base_command": l.base_command,
                    "command_string": l.command_string,
                    "current_directory": l.current_directory,
                    "created_at": l.created_at,
                    "updated_at": l.created_at,
                })
            })
            .collect();
        let queued = s
            .cloud_request_ids
            .iter()
            .any(|c| self.commands.get(c).is_some_and(|c| c.queue_status == Some("PENDING")));
        let deleted_at = match &s.deleted_at {
            Some(d) => Value::String(d.clone()),
            None if !self.session_live(s, now) => Value::String(s.updated_at.clone()),
            None => Value::Null,
        };
        json!({
            "id": s.id,
            "cid": self.cid,
            "device_id": h.aid,
            "hostname": h.hostname,
            "user_id": s.client,
            "user_uuid": s.client,
            "origin": s.origin,
            "platform_id": if h.endpoint.os == Os::Windows { 0 } else if h.endpoint.os == Os::Mac { 1 } else { 3 },
            "platform_name": h.endpoint.os.platform_name(),
            "pwd": s.cwd,
            "offline_queued": s.offline_queued,
            "commands_queued": queued,
            "created_at": s.created_at,
            "updated_at": s.updated_at,
            "deleted_at": deleted_at,
            "duration": now.duration_since(s.created).as_secs_f64(),
            "cloud_request_ids": s.cloud_request_ids,
            "logs": logs,
            "device_details": self.device_json(s.host),
        })
    }

    /// A session's value of a `queries/sessions/v1` FQL field, as a string (`None`: absent).
    pub(crate) fn session_field(&self, s: &Session, field: &str, now: Instant) -> Option<String> {
        let h = &self.hosts[s.host];
        Some(match field {
            "id" => s.id.clone(),
            "device_id" | "aid" => h.aid.clone(),
            "hostname" => h.hostname.clone(),
            "origin" => s.origin.clone(),
            "user_id" => s.client.to_owned(),
            "offline_queued" => s.offline_queued.to_string(),
            "commands_queued" => s
                .cloud_request_ids
                .iter()
                .any(|c| self.commands.get(c).is_some_and(|c| c.queue_status == Some("PENDING")))
                .to_string(),
            "deleted_at" => {
                if s.deleted_at.is_none() && self.session_live(s, now) {
                    return None;
                }
                s.deleted_at.clone().unwrap_or_else(|| s.updated_at.clone())
            }
            "created_at" | "date_created" => s.created_at.clone(),
            "platform_name" => h.endpoint.os.platform_name().to_owned(),
            _ => return None,
        })
    }

    pub(crate) fn all_sessions(&self) -> impl Iterator<Item = &Session> {
        self.session_order.iter().filter_map(|id| self.sessions.get(id))
    }

    pub(crate) fn sessions_of(&self, client: &'static str) -> impl Iterator<Item = &Session> {
        self.session_order
            .iter()
            .filter_map(|id| self.sessions.get(id))
            .filter(move |s| s.client == client)
    }

    // ---- commands (§6) ----

    /// The console's checks before a command reaches the host: syntax, tier, platform, library
    /// objects (§6.1, §9.2).
    pub(crate) fn check(
        &self,
        client: &'static str,
        tier: Tier,
        host: usize,
        base_command: &str,
        command_string: &str,
    ) -> Result<(CommandLine, Library), ApiError> {
        let cmd = CommandLine::parse(command_string).ok_or_else(ApiError::invalid_command)?;
        if !base_command.trim().eq_ignore_ascii_case(&cmd.base) {
            return Err(ApiError::invalid_command());
        }
        let os = self.hosts[host].endpoint.os;
        // A command above the endpoint's tier gets the unknown command's error, 40007: the
        // tier endpoints' swagger descriptions list what each accepts (§6.1); the exact code
        // for this case is [U] (§11.8).
        match min_tier(&cmd) {
            Some(t) if t <= tier && on_platform(&cmd.base, os) => {}
            _ => return Err(ApiError::command_not_found()),
        }
        let lib = match cmd.base.as_str() {
            "put" => {
                let name = cmd.args.first().ok_or_else(ApiError::invalid_command)?;
                let f = self
                    .library
                    .iter()
                    .find(|f| f.kind == LibKind::PutFile && f.name == *name)
                    .ok_or_else(|| ApiError::file_not_found(name))?;
                Library::PutFile(f.name.clone(), f.content.clone())
            }
            "runscript" if cmd.has_flag("cloudfile") => {
                let name = cmd.flag("cloudfile").unwrap_or_default();
                // `private`: the uploader only; `group`: RTR admins; `public`: active
                // responders and admins (§8.4). Anything else is "could not be found".
                let f = self
                    .library
                    .iter()
                    .find(|f| f.kind == LibKind::Script && f.name == name)
                    .filter(|f| match f.permission_type.as_str() {
                        "private" => f.created_by == client,
                        "group" => tier == Tier::Admin,
                        _ => true,
                    })
                    .filter(|f| f.platform.iter().any(|p| p == os.script_platform()))
                    .ok_or_else(|| ApiError::file_not_found(name))?;
                Library::Script(String::from_utf8_lossy(&f.content).into_owned())
            }
            _ => Library::None,
        };
        Ok((cmd, lib))
    }

    fn delay_of(&self, host: usize) -> Duration {
        self.hosts[host].command_delay.unwrap_or(self.cfg.command_delay)
    }

    /// Accepts a checked command on a session: runs it now on an online host, or parks it in
    /// the offline queue of a queued session. Returns the cloud request id and whether it was
    /// queued.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn submit(
        &mut self,
        session_id: &str,
        cmd: CommandLine,
        lib: Library,
        base_command: &str,
        command_string: &str,
        queue_allowed: bool,
        now: Instant,
    ) -> Result<(String, bool), ApiError> {
        let Some(s) = self.sessions.get(session_id) else { return Err(ApiError::no_session()) };
        let (host, client, cwd) = (s.host, s.client, s.cwd.clone());
        let online = self.hosts[host].online;
        let queued = !online;
        if queued && !(queue_allowed || s.offline_queued) {
            return Err(ApiError::offline());
        }
        while self.commands.len() >= MAX_COMMANDS {
            let Some(old) = self.command_order.pop_front() else { break };
            self.commands.remove(&old);
        }
        let crid = uuid();
        let stamp = self.now_str();
        let log_id = self.next_log_id;
        self.next_log_id += 1;
        if let Some(s) = self.sessions.get_mut(session_id) {
            s.last_used = now;
            s.updated_at.clone_from(&stamp);
            s.queue_until = s.queue_until.max(now + QUEUE_LIFETIME);
            if s.logs.len() >= MAX_LOGS_PER_SESSION {
                s.logs.remove(0);
            }
            s.logs.push(SessionLog {
                id: log_id,
                cloud_request_id: crid.clone(),
                base_command: base_command.to_owned(),
                command_string: command_string.to_owned(),
                current_directory: cwd,
                created_at: stamp.clone(),
            });
            if s.cloud_request_ids.len() >= MAX_LOGS_PER_SESSION {
                s.cloud_request_ids.remove(0);
            }
            s.cloud_request_ids.push(crid.clone());
        }
        self.commands.insert(
            crid.clone(),
            Command {
                session_id: session_id.to_owned(),
                client,
                host,
                line: cmd,
                base_command: base_command.to_owned(),
                command_string: command_string.to_owned(),
                created_at: stamp.clone(),
                updated_at: stamp,
                ready_at: None,
                stdout: String::new(),
                stderr: String::new(),
                reported_base: base_command.to_owned(),
                queue_status: queued.then_some("PENDING"),
                deleted_at: None,
            },
        );
        self.command_order.push_back(crid.clone());
        self.counters.commands += 1;
        if queued {
            self.counters.commands_queued += 1;
            self.queue.push_back(crid.clone());
        } else {
            self.execute(&crid, lib, now);
        }
        Ok((crid, queued))
    }

    /// Runs an accepted command on its host (the side effect happens and is logged here).
    fn execute(&mut self, crid: &str, lib: Library, now: Instant) {
        let Some(c) = self.commands.get(crid) else { return };
        let (host, sid, line) = (c.host, c.session_id.clone(), c.line.clone());
        let mut cwd = self
            .sessions
            .get(&sid)
            .map_or_else(|| self.hosts[host].endpoint.os.root().to_owned(), |s| s.cwd.clone());
        let delay = self.delay_of(host);
        let secs = self.faults.now_epoch_secs() as u64;
        self.hosts[host].endpoint.set_now(secs);
        let out = self.hosts[host].endpoint.run(&line, &mut cwd, lib);
        if let Some(s) = self.sessions.get_mut(&sid) {
            s.cwd = cwd;
        }
        let aid = self.hosts[host].aid.clone();
        let command_string =
            self.commands.get(crid).map(|c| c.command_string.clone()).unwrap_or_default();
        if let Some(op) = out.effect {
            self.log.record(op, &aid, Value::String(command_string));
        }
        let ready_at = later(now, delay);
        if let Some((path, content)) = out.fetched {
            let windows = self.hosts[host].endpoint.os == Os::Windows;
            while self.files.len() >= MAX_FILES {
                self.files.pop_front();
            }
            let id = self.next_file_id;
            self.next_file_id += 1;
            let client = self.commands.get(crid).map_or(DEFAULT_CLIENT_ID, |c| c.client);
            self.files.push_back(SessionFile {
                id,
                cloud_request_id: crid.to_owned(),
                session_id: sid,
                client,
                host,
                name: if windows { nt_path(&path) } else { path },
                sha256: hex::encode(sha2::Sha256::digest(&content)),
                content,
                created_at: self.now_str(),
                upload_from: ready_at,
                upload_done: later(ready_at, self.cfg.upload_delay),
                deleted: false,
            });
        }
        let stamp = self.now_str();
        if let Some(c) = self.commands.get_mut(crid) {
            c.ready_at = Some(ready_at);
            c.stdout = out.stdout;
            c.stderr = out.stderr;
            c.updated_at = stamp;
            if c.line.base == "put" {
                c.reported_base = "DOWNLOAD_RENAME".into();
            }
            if c.queue_status.is_some() {
                c.queue_status = Some("FINISHED");
            }
        }
    }

    /// Runs queued commands of hosts that are online, in the order they were sent.
    fn run_queue(&mut self, now: Instant) {
        if self.queue.is_empty() {
            return;
        }
        let pending: Vec<String> = self.queue.drain(..).collect();
        for crid in pending {
            let Some(c) = self.commands.get(&crid) else { continue };
            if c.queue_status != Some("PENDING") {
                continue;
            }
            if !self.hosts[c.host].online {
                self.queue.push_back(crid);
                continue;
            }
            // The library object is looked up again when the command runs.
            let (client, host, base, line) =
                (c.client, c.host, c.base_command.clone(), c.command_string.clone());
            match self.check(client, Tier::Admin, host, &base, &line) {
                Ok((_, lib)) => self.execute(&crid, lib, now),
                Err(e) => {
                    let delay = self.delay_of(host);
                    if let Some(c) = self.commands.get_mut(&crid) {
                        c.stderr = e.message;
                        c.ready_at = Some(later(now, delay));
                        c.queue_status = Some("FINISHED");
                    }
                }
            }
        }
    }

    /// `domain.StatusResponse` of a command (§6.4, §6.5).
    pub(crate) fn status_json(
        &self,
        client: &'static str,
        crid: &str,
        seq: usize,
        now: Instant,
    ) -> Result<Value, ApiError> {
        let c = self
            .commands
            .get(crid)
            .filter(|c| c.client == client && c.deleted_at.is_none())
            .ok_or_else(|| {
                ApiError::new(
                    404,
                    404,
                    format!("Could not find command with cloud_request_id {crid}"),
                )
            })?;
        let done = c.ready_at.is_some_and(|t| now >= t);
        let mut v = json!({
            "session_id": c.session_id,
            "task_id": crid,
            "complete": false,
            "stdout": "",
            "stderr": "",
            "base_command": c.reported_base,
        });
        if !done {
            return Ok(v);
        }
        match self.cfg.chunk_output_bytes {
            // [U] chunking mode (§6.5): chunk `n` holds bytes `n*size..`; `complete` only on
            // the last chunk, stderr with it.
            Some(size) if size > 0 => {
                let chunks = c.stdout.len().div_ceil(size).max(1);
                let start = seq.saturating_mul(size).min(c.stdout.len());
                let mut end = (start + size).min(c.stdout.len());
                while !c.stdout.is_char_boundary(end) {
                    end += 1;
                }
                let mut start = start;
                while !c.stdout.is_char_boundary(start) {
                    start += 1;
                }
                let last = seq + 1 >= chunks;
                v["stdout"] = Value::String(c.stdout[start.min(end)..end].to_owned());
                v["sequence_id"] = json!(seq);
                v["complete"] = Value::Bool(last);
                if last {
                    v["stderr"] = Value::String(c.stderr.clone());
                }
            }
            _ => {
                v["complete"] = Value::Bool(true);
                if seq == 0 {
                    v["stdout"] = Value::String(c.stdout.clone());
                    v["stderr"] = Value::String(c.stderr.clone());
                }
            }
        }
        Ok(v)
    }

    // ---- queued sessions (§6.7) ----

    pub(crate) fn queued_json(&self, s: &Session) -> Value {
        let commands: Vec<Value> = s
            .cloud_request_ids
            .iter()
            .filter_map(|id| self.commands.get(id).map(|c| (id, c)))
            .filter(|(_, c)| c.queue_status.is_some())
            .map(|(id, c)| {
                json!({
                    "cloud_request_id": id,
                    "base_command": c.base_command,
                    "command_string": c.command_string,
                    "status": c.queue_status,
                    "status_text": "",
                    "created_at": c.created_at,
                    "updated_at": c.updated_at,
                    "deleted_at": c.deleted_at,
                })
            })
            .collect();
        let pending = commands.iter().any(|c| c["status"] == "PENDING");
        json!({
            "id": s.id,
            "aid": self.hosts[s.host].aid,
            "status": if pending { "PENDING" } else { "FINISHED" },
            "user_id": s.client,
            "user_uuid": s.client,
            "created_at": s.created_at,
            "updated_at": s.updated_at,
            "deleted_at": s.deleted_at,
            "Commands": commands,
        })
    }

    pub(crate) fn delete_queued(
        &mut self,
        client: &'static str,
        sid: &str,
        crid: &str,
    ) -> Result<(), ApiError> {
        let stamp = self.now_str();
        let ok = self.sessions.get(sid).is_some_and(|s| s.client == client);
        match self.commands.get_mut(crid) {
            Some(c) if ok && c.session_id == sid && c.queue_status == Some("PENDING") => {
                c.queue_status = Some("CANCELED");
                c.deleted_at = Some(stamp);
                Ok(())
            }
            _ => Err(ApiError::new(404, 404, "Could not find queued command")),
        }
    }

    // ---- session files (§8.1) ----

    pub(crate) fn file_v2_json(&self, f: &SessionFile, now: Instant) -> Value {
        let total = f.upload_done.saturating_duration_since(f.upload_from).as_secs_f64();
        let done = now >= f.upload_done;
        let progress = if done || total == 0.0 {
            100.0
        } else {
            (now.saturating_duration_since(f.upload_from).as_secs_f64() / total * 100.0)
                .clamp(0.0, 99.9)
        };
        // `stage`/`status` words are [U] (§13.6).
        json!({
            "id": f.id.to_string(),
            "cloud_request_id": f.cloud_request_id,
            "session_id": f.session_id,
            "name": f.name,
            "sha256": f.sha256,
            "size": f.content.len(),
            "complete": done,
            "progress": (progress * 10.0).round() / 10.0,
            "stage": if done { "completed" } else { "uploading" },
            "status": if done { "complete" } else { "in_progress" },
            "error_message": "",
            "created_at": f.created_at,
            "updated_at": f.created_at,
            "deleted_at": null,
        })
    }

    pub(crate) fn file_v1_json(f: &SessionFile) -> Value {
        json!({
            "id": f.id,
            "cloud_request_id": f.cloud_request_id,
            "session_id": f.session_id,
            "name": f.name,
            "sha256": f.sha256,
            "size": f.content.len(),
            "created_at": f.created_at,
            "updated_at": f.created_at,
            "deleted_at": null,
        })
    }

    /// Files of a session visible to `client`: their `get` has completed on the host.
    pub(crate) fn session_files(
        &self,
        client: &'static str,
        sid: &str,
        now: Instant,
    ) -> impl Iterator<Item = &SessionFile> {
        self.files.iter().filter(move |f| {
            f.client == client && f.session_id == sid && !f.deleted && now >= f.upload_from
        })
    }

    // ---- libraries (§8.3, §8.4) ----

    #[allow(clippy::too_many_arguments)]
    pub(crate) fn add_library(
        &mut self,
        kind: LibKind,
        name: &str,
        description: &str,
        comments: &str,
        permission_type: &str,
        platform: Vec<String>,
        content: Bytes,
        created_by: &str,
    ) -> Result<String, ApiError> {
        if self.library.iter().any(|f| f.kind == kind && f.name == name) {
            return Err(ApiError::new(409, 409, "file with given name already exists"));
        }
        if self.library.len() >= MAX_LIBRARY {
            return Err(ApiError::bad_request("the library is full"));
        }
        let id = format!("{}_{}", uuid::Uuid::new_v4().simple(), uuid::Uuid::new_v4().simple());
        self.library.push(LibFile {
            id: id.clone(),
            kind,
            name: name.to_owned(),
            description: description.to_owned(),
            comments: comments.to_owned(),
            permission_type: permission_type.to_owned(),
            platform,
            content,
            created_by: created_by.to_owned(),
            created_at: self.now_str(),
        });
        Ok(id)
    }

    pub(crate) fn add_script(
        &mut self,
        name: &str,
        platform: &[&str],
        content: &str,
        permission: &str,
        by: &str,
    ) {
        self.library.retain(|f| !(f.kind == LibKind::Script && f.name == name));
        let _ = self.add_library(
            LibKind::Script,
            name,
            "seeded by the simulator",
            "",
            permission,
            platform.iter().map(|p| p.to_ascii_lowercase()).collect(),
            Bytes::copy_from_slice(content.as_bytes()),
            by,
        );
    }

    pub(crate) fn library_json(f: &LibFile) -> Value {
        let script = f.kind == LibKind::Script;
        let mut v = json!({
            "id": f.id,
            "name": f.name,
            "description": f.description,
            "file_type": if script { "script" } else { "binary" },
            "platform": f.platform,
            "permission_type": f.permission_type,
            "sha256": hex::encode(sha2::Sha256::digest(&f.content)),
            "size": f.content.len(),
            "comments_for_audit_log": f.comments,
            "created_by": f.created_by,
            "created_by_uuid": f.created_by,
            "created_timestamp": f.created_at,
            "modified_by": f.created_by,
            "modified_by_uuid": f.created_by,
            "modified_timestamp": f.created_at,
            "run_attempt_count": 0,
            "run_success_count": 0,
            "write_access": true,
        });
        if script {
            v["content"] = Value::String(String::from_utf8_lossy(&f.content).into_owned());
        }
        v
    }

    // ---- batches (§7) ----

    pub(crate) fn new_batch(&mut self, client: &'static str) -> String {
        while self.batches.len() >= MAX_BATCHES {
            let Some(old) = self.batch_order.pop_front() else { break };
            self.batches.remove(&old);
        }
        let id = uuid();
        self.batches.insert(id.clone(), Batch { client, hosts: BTreeMap::new() });
        self.batch_order.push_back(id.clone());
        id
    }

    /// Forgets a batch no host joined (its id in the eviction order too, which would otherwise
    /// grow with every such init).
    pub(crate) fn discard_batch(&mut self, id: &str) {
        self.batches.remove(id);
        self.batch_order.retain(|b| b != id);
    }

    pub(crate) fn new_batch_get(
        &mut self,
        client: &'static str,
        hosts: Vec<(usize, String)>,
    ) -> String {
        while self.batch_gets.len() >= MAX_BATCHES {
            let Some(old) = self.batch_get_order.pop_front() else { break };
            self.batch_gets.remove(&old);
        }
        let id = uuid();
        self.batch_gets.insert(id.clone(), BatchGet { client, hosts });
        self.batch_get_order.push_back(id.clone());
        id
    }

    /// The hosts of a batch a command goes to (`optional_hosts` ∩ batch, §7.3), with their
    /// sessions, or `None` for an unknown batch.
    pub(crate) fn batch_targets(
        &self,
        client: &'static str,
        batch_id: &str,
        optional: &[String],
    ) -> Option<Vec<(usize, String)>> {
        let b = self.batches.get(batch_id).filter(|b| b.client == client)?;
        Some(
            b.hosts
                .iter()
                .filter(|(h, _)| {
                    optional.is_empty()
                        || optional.iter().any(|o| o.eq_ignore_ascii_case(&self.hosts[**h].aid))
                })
                .map(|(h, s)| (*h, s.clone()))
                .collect(),
        )
    }

    /// Sends one command to each of `targets` (a batch command or batch get).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn batch_submit(
        &mut self,
        client: &'static str,
        tier: Tier,
        targets: &[(usize, String)],
        base_command: &str,
        command_string: &str,
        persist: bool,
        now: Instant,
    ) -> Vec<(usize, PerHost)> {
        let mut out = Vec::new();
        for (host, sid) in targets {
            let live = self.sessions.get(sid).is_some_and(|s| self.session_live(s, now));
            if !live {
                out.push((*host, PerHost::Failed { error: ApiError::no_session() }));
                continue;
            }
            let result = self.check(client, tier, *host, base_command, command_string).and_then(
                |(cmd, lib)| self.submit(sid, cmd, lib, base_command, command_string, persist, now),
            );
            out.push((
                *host,
                match result {
                    Ok((crid, false)) => {
                        PerHost::Ran { session_id: sid.clone(), cloud_request_id: crid }
                    }
                    Ok((crid, true)) => {
                        PerHost::Queued { session_id: sid.clone(), cloud_request_id: crid }
                    }
                    Err(error) => PerHost::Failed { error },
                },
            ));
        }
        self.counters.batch_commands += 1;
        out
    }

    /// When the last command of a batch call will be done.
    pub(crate) fn ready_by(&self, results: &[(usize, PerHost)]) -> Option<Instant> {
        results
            .iter()
            .filter_map(|(_, r)| match r {
                PerHost::Ran { cloud_request_id, .. } => {
                    self.commands.get(cloud_request_id)?.ready_at
                }
                _ => None,
            })
            .max()
    }

    /// `domain.MultiStatusSensorResponse` of each host, as it stands at `now` (§7.2, §7.3).
    pub(crate) fn multi_status(
        &self,
        results: &[(usize, PerHost)],
        now: Instant,
    ) -> serde_json::Map<String, Value> {
        let mut map = serde_json::Map::new();
        for (host, r) in results {
            let aid = self.hosts[*host].aid.clone();
            // A failed host has no session, task or base command (KBN-EMU's error samples).
            let mut v = json!({
                "aid": aid,
                "session_id": "",
                "complete": false,
                "stdout": "",
                "stderr": "",
                "errors": [],
                "offline_queued": false,
                "query_time": 0.0,
            });
            match r {
                PerHost::Failed { error } => v["errors"] = json!([error.to_json()]),
                PerHost::Queued { session_id, cloud_request_id } => {
                    v["session_id"] = json!(session_id);
                    v["task_id"] = json!(cloud_request_id);
                    v["offline_queued"] = json!(true);
                    if let Some(c) = self.commands.get(cloud_request_id) {
                        v["base_command"] = json!(c.reported_base);
                    }
                }
                PerHost::Ran { session_id, cloud_request_id } => {
                    v["session_id"] = json!(session_id);
                    v["task_id"] = json!(cloud_request_id);
                    if let Some(c) = self.commands.get(cloud_request_id) {
                        v["base_command"] = json!(c.reported_base);
                        v["offline_queued"] =
                            json!(self.sessions.get(session_id).is_some_and(|s| s.offline_queued));
                        if c.ready_at.is_some_and(|t| now >= t) {
                            v["complete"] = json!(true);
                            v["stdout"] = json!(c.stdout);
                            v["stderr"] = json!(c.stderr);
                        }
                        let ran = now.saturating_duration_since(
                            self.sessions.get(session_id).map_or(now, |s| s.last_used),
                        );
                        v["query_time"] = json!(ran.as_secs_f64());
                    }
                }
            }
            map.insert(aid, v);
        }
        map
    }
}

/// The init's `scripts` list (§5.3): the read-only catalog of the platform, as observed.
fn scripts_help(os: Os) -> Value {
    let commands: &[&str] = if os == Os::Windows {
        &[
            "cat", "cd", "env", "eventlog", "filehash", "getsid", "ipconfig", "ls", "mount",
            "netstat", "ps", "pwd", "reg",
        ]
    } else {
        &[
            "cat", "cd", "env", "filehash", "ifconfig", "ls", "mount", "netstat", "ps", "pwd",
            "users",
        ]
    };
    let list: Vec<Value> = commands
        .iter()
        .map(|c| {
            let help = |command: &str, description: String| {
                json!({
                    "command": command, "description": description, "examples": command,
                    "internal_only": false, "runnable": true, "sub_commands": [], "args": [],
                })
            };
            let sub: Vec<Value> = match *c {
                "reg" => vec![help("query", "Query a registry subkey or value".into())],
                "eventlog" => ["view", "export", "list", "backup"]
                    .iter()
                    .map(|s| help(s, format!("eventlog {s}")))
                    .collect(),
                _ => Vec::new(),
            };
            json!({
                "command": c,
                "description": format!("{c} (Real Time Response)"),
                "examples": c,
                "internal_only": *c == "pwd" && os == Os::Windows,
                "runnable": true,
                "sub_commands": sub,
                "args": [],
            })
        })
        .collect();
    Value::Array(list)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn discarded_batches_leave_nothing_behind() {
        let mut st = State::new(SimConfig::default(), SimLog::new(), SimFaults::new());
        for _ in 0..3 * MAX_BATCHES {
            let id = st.new_batch(CLIENTS[0].id);
            st.discard_batch(&id);
        }
        assert!(st.batches.is_empty());
        assert!(st.batch_order.is_empty());
    }
}
