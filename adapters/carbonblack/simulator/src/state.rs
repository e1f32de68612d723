//! Server-side state: sensors, sessions, commands, session file storage, and the clock that
//! drives them.
//!
//! Time is evaluated lazily: every access first calls [`Runtime::tick`], which replays all
//! due events (check-ins, command completions, expiries) in chronological order. No
//! background task is needed and results are deterministic for a given request timing.

use std::collections::BTreeMap;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{Map, Value, json};

use super::content::Content;
use super::endpoint::{
    CommandInput, Endpoint, Hresult, SensorOs, SensorSpec, as_u64_lenient, sensor_ip,
};
use super::{Counters, SimConfig};

/// A request-level failure, rendered by the routes module.
#[derive(Debug)]
pub(crate) enum ApiError {
    /// §2.3: 404 whose text starts with `Session {sid} not found` (cbapi keys off the prefix).
    SessionNotFound(u64),
    NotFound(String),
    BadRequest(String),
    Internal(String),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum SessionStatus {
    Pending,
    Active,
    Close,
    Timeout,
}

impl SessionStatus {
    fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Active => "active",
            Self::Close => "close",
            Self::Timeout => "timeout",
        }
    }

    fn live(self) -> bool {
        matches!(self, Self::Pending | Self::Active)
    }
}

pub(crate) struct Sensor {
    pub(crate) id: u64,
    pub(crate) hostname: String,
    pub(crate) online: bool,
    online_since: Instant,
    /// `network_isolation_enabled`: what the console asked for.
    pub(crate) isolated: bool,
    /// Isolation state before the last change, and when it changed: the sensor applies a
    /// change only at its next check-in (`is_isolating`, §7.4).
    isolating_before: bool,
    isolation_changed: Option<Instant>,
    pub(crate) group_id: u64,
    /// OS, sensor version and quirks.
    pub(crate) spec: SensorSpec,
}

/// A file object in session storage (§2.10).
pub(crate) struct StoredFile {
    pub(crate) id: u64,
    pub(crate) file_name: String,
    pub(crate) content: Content,
    /// 0 = ok, otherwise the HRESULT of the failed transfer.
    pub(crate) status: u32,
    /// Bytes have arrived from the sensor (or from the upload).
    pub(crate) ready: bool,
    pub(crate) created_epoch: f64,
}

impl StoredFile {
    fn to_json(&self) -> Value {
        let size = if self.status != 0 {
            // CLI0: `size` may be null when the transfer errored.
            Value::Null
        } else {
            self.content.len().into()
        };
        let uploaded = if self.ready { self.content.len() } else { 0 };
        json!({
            "status": self.status,
            "file_name": self.file_name,
            "size_uploaded": uploaded,
            "size": size,
            "id": self.id,
            "delete": false,
        })
    }
}

enum Outcome {
    Queued,
    Cancelled,
    Done { completion: f64, result: Result<Map<String, Value>, Hresult> },
}

struct Command {
    id: u64,
    input: CommandInput,
    username: String,
    created: Instant,
    create_epoch: f64,
    start: Instant,
    finish: Instant,
    duration: Duration,
    file_id: Option<u64>,
    outcome: Outcome,
}

pub(crate) struct Session {
    id: u64,
    sensor_id: u64,
    hostname: String,
    status: SessionStatus,
    was_active: bool,
    created: Instant,
    create_epoch: f64,
    close_epoch: Option<f64>,
    slot_since: Option<Instant>,
    last_activity: Instant,
    idle_timeout: Duration,
    check_in_timeout: Duration,
    shown_session_timeout: u64,
    shown_sensor_wait_timeout: u64,
    shown_check_in_timeout: u64,
    commands: Vec<Command>,
    next_command_id: u64,
    pub(crate) files: BTreeMap<u64, StoredFile>,
    next_file_id: u64,
    busy_until: Instant,
    commands_accepted: u32,
}

impl Session {
    fn holds_slot(&self) -> bool {
        self.status == SessionStatus::Active
            || (self.status == SessionStatus::Pending && self.slot_since.is_some())
    }

    fn storage_size(&self) -> u64 {
        self.files.values().filter(|f| f.ready).map(|f| f.content.len()).sum()
    }

    pub(crate) fn has_content(&self) -> bool {
        !self.commands.is_empty() || !self.files.is_empty()
    }
}

#[derive(Clone, Copy, Debug)]
enum Event {
    Activate(u64),
    Expire(u64),
    Finish(u64, usize),
}

pub(crate) struct Runtime {
    pub(crate) cfg: SimConfig,
    pub(crate) sensors: BTreeMap<u64, Sensor>,
    pub(crate) endpoints: BTreeMap<u64, Endpoint>,
    sessions: BTreeMap<u64, Session>,
    next_session_id: u64,
    counters: Counters,
    /// What executed on the endpoints and the server (served on `/_sim/log`).
    log: edrgate_simkit::SimLog,
    origin: Instant,
    origin_epoch: f64,
    /// The fault settings, for the vendor clock's skew (`clock_skew_secs`).
    faults: edrgate_simkit::SimFaults,
}

fn secs_ceil(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

fn duration_field(body: &Map<String, Value>, keys: &[&str]) -> Option<Duration> {
    keys.iter()
        .find_map(|k| body.get(*k).and_then(as_u64_lenient))
        .filter(|s| *s > 0)
        .map(Duration::from_secs)
}

impl Runtime {
    pub(crate) fn new(
        cfg: SimConfig,
        now: Instant,
        log: edrgate_simkit::SimLog,
        faults: edrgate_simkit::SimFaults,
    ) -> Self {
        let origin_epoch =
            SystemTime::now().duration_since(UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64());
        let mut sensors = BTreeMap::new();
        let mut endpoints = BTreeMap::new();
        for id in 1..=cfg.sensors as u64 {
            let spec = cfg
                .sensor_specs
                .iter()
                .rev()
                .find(|(sid, _)| *sid == id)
                .map(|(_, s)| s.clone())
                .unwrap_or_default();
            // Windows NetBIOS names are upper-case; Unix host names usually lower-case.
            let default_name = match spec.os {
                SensorOs::Windows => format!("WIN-{id:04}"),
                SensorOs::Linux => format!("lnx-{id:04}"),
                SensorOs::MacOs => format!("mac-{id:04}"),
            };
            let hostname = cfg
                .hostname_overrides
                .iter()
                .rev()
                .find(|(sid, _)| *sid == id)
                .map_or(default_name, |(_, h)| h.clone());
            endpoints.insert(
                id,
                Endpoint::new(
                    id,
                    &hostname,
                    &spec,
                    cfg.file_size,
                    cfg.memdump_size,
                    origin_epoch as i64,
                ),
            );
            sensors.insert(
                id,
                Sensor {
                    id,
                    hostname,
                    online: !cfg.offline_sensors.contains(&id),
                    online_since: now,
                    isolated: false,
                    isolating_before: false,
                    isolation_changed: None,
                    group_id: 1,
                    spec,
                },
            );
        }
        Self {
            cfg,
            sensors,
            endpoints,
            sessions: BTreeMap::new(),
            next_session_id: 1,
            counters: Counters::default(),
            log,
            origin: now,
            origin_epoch,
            faults,
        }
    }

    /// The server's clock at `at`, in epoch seconds: every timestamp it emits comes from here,
    /// moved by the `clock_skew_secs` fault.
    pub(crate) fn epoch(&self, at: Instant) -> f64 {
        self.origin_epoch
            + at.saturating_duration_since(self.origin).as_secs_f64()
            + self.faults.clock_skew_secs() as f64
    }

    pub(crate) fn counters_snapshot(&self) -> Counters {
        let mut c = self.counters.clone();
        c.slots_in_use = self.slots_in_use();
        c
    }

    pub(crate) fn count(&mut self, f: impl FnOnce(&mut Counters)) {
        f(&mut self.counters);
    }

    fn slots_in_use(&self) -> usize {
        self.sessions.values().filter(|s| s.holds_slot()).count()
    }

    pub(crate) fn session_status(&self, sid: u64) -> Option<&'static str> {
        self.sessions.get(&sid).map(|s| s.status.as_str())
    }

    pub(crate) fn set_sensor_online(&mut self, sensor_id: u64, online: bool, now: Instant) {
        if let Some(s) = self.sensors.get_mut(&sensor_id) {
            if online && !s.online {
                s.online_since = now;
            }
            s.online = online;
        }
    }

    // ----- clock -------------------------------------------------------------------------

    /// Apply every event due at or before `now`, earliest first.
    pub(crate) fn tick(&mut self, now: Instant) {
        while let Some((at, ev)) = self.next_event() {
            if at > now {
                break;
            }
            self.apply(at, ev);
        }
    }

    fn next_event(&self) -> Option<(Instant, Event)> {
        let mut best: Option<(Instant, Event)> = None;
        let mut consider = |at: Instant, ev: Event| {
            if best.is_none_or(|(b, _)| at < b) {
                best = Some((at, ev));
            }
        };
        for s in self.sessions.values() {
            match s.status {
                SessionStatus::Pending => {
                    consider(s.created + s.check_in_timeout, Event::Expire(s.id));
                    let sensor = self.sensors.get(&s.sensor_id);
                    if let (Some(slot), Some(sensor)) = (s.slot_since, sensor)
                        && sensor.online
                    {
                        let from = slot.max(sensor.online_since);
                        consider(from + self.cfg.checkin_delay, Event::Activate(s.id));
                    }
                }
                SessionStatus::Active => {
                    let queued = s
                        .commands
                        .iter()
                        .enumerate()
                        .find(|(_, c)| matches!(c.outcome, Outcome::Queued));
                    match queued {
                        Some((idx, c)) => consider(c.finish, Event::Finish(s.id, idx)),
                        // §3.2: no command and no keepalive within the timeout ends the session.
                        None => consider(s.last_activity + s.idle_timeout, Event::Expire(s.id)),
                    }
                }
                SessionStatus::Close | SessionStatus::Timeout => {}
            }
        }
        best
    }

    fn apply(&mut self, at: Instant, ev: Event) {
        match ev {
            Event::Activate(sid) => {
                if let Some(s) = self.sessions.get_mut(&sid) {
                    s.status = SessionStatus::Active;
                    s.was_active = true;
                    s.last_activity = at;
                    s.busy_until = at;
                }
            }
            Event::Expire(sid) => self.end_session(sid, SessionStatus::Timeout, at),
            Event::Finish(sid, idx) => self.finish_command(sid, idx, at),
        }
    }

    fn end_session(&mut self, sid: u64, status: SessionStatus, at: Instant) {
        let epoch = self.epoch(at);
        let Some(s) = self.sessions.get_mut(&sid) else {
            return;
        };
        if !s.status.live() {
            return;
        }
        s.status = status;
        s.close_epoch = Some(epoch);
        match status {
            SessionStatus::Close => self.counters.sessions_closed += 1,
            _ => self.counters.sessions_timed_out += 1,
        }
        self.assign_slots(at);
    }

    /// Hand free slots to waiting pending sessions, oldest first (§3.3: over-limit sessions
    /// stay pending until a slot frees — inferred real behaviour).
    fn assign_slots(&mut self, at: Instant) {
        let mut free = self.cfg.slot_limit.saturating_sub(self.slots_in_use());
        for s in self.sessions.values_mut() {
            if free == 0 {
                break;
            }
            if s.status == SessionStatus::Pending && s.slot_since.is_none() {
                s.slot_since = Some(at);
                free -= 1;
            }
        }
        let used = self.slots_in_use();
        self.counters.max_concurrent_sessions = self.counters.max_concurrent_sessions.max(used);
    }

    fn finish_command(&mut self, sid: u64, idx: usize, at: Instant) {
        let epoch = self.epoch(at);
        let Some(s) = self.sessions.get_mut(&sid) else {
            return;
        };
        let Some(cmd) = s.commands.get_mut(idx) else {
            return;
        };
        let result = match self.endpoints.get_mut(&s.sensor_id) {
            Some(ep) => ep.execute(&cmd.input, epoch as i64),
            None => Err(Hresult::INVALID_PARAMETER),
        };
        let name = cmd.input.name.clone();
        self.log.record(
            &name,
            &s.sensor_id.to_string(),
            serde_json::json!({
                "session": sid,
                "command": idx + 1,
                "object": cmd.input.object,
                "status": if result.is_ok() { "complete" } else { "error" },
            }),
        );
        *self.counters.commands_by_name.entry(name.clone()).or_default() += 1;
        if result.is_err() {
            *self.counters.command_errors_by_name.entry(name).or_default() += 1;
        }
        let result = result.map(|mut executed| {
            if let (Some(fid), Some(fetched)) = (cmd.file_id, executed.fetched.take())
                && let Some(f) = s.files.get_mut(&fid)
            {
                f.content = fetched;
                f.ready = true;
            }
            executed.fields
        });
        if let (Err(h), Some(fid)) = (&result, cmd.file_id)
            && let Some(f) = s.files.get_mut(&fid)
        {
            f.status = h.0;
        }
        cmd.outcome = Outcome::Done { completion: epoch, result };
        s.last_activity = at;
    }

    // ----- sessions ----------------------------------------------------------------------

    fn live_session(&self, sid: u64) -> Result<&Session, ApiError> {
        self.sessions.get(&sid).filter(|s| s.status.live()).ok_or(ApiError::SessionNotFound(sid))
    }

    fn live_session_mut(&mut self, sid: u64) -> Result<&mut Session, ApiError> {
        self.sessions
            .get_mut(&sid)
            .filter(|s| s.status.live())
            .ok_or(ApiError::SessionNotFound(sid))
    }

    pub(crate) fn is_pending(&self, sid: u64) -> bool {
        self.sessions.get(&sid).is_some_and(|s| s.status == SessionStatus::Pending)
    }

    /// The session's `supported_commands` (§3.1): what the sensor it runs on supports.
    fn supported_commands(&self, sensor_id: u64) -> Vec<&'static str> {
        self.sensors.get(&sensor_id).map(|s| s.spec.supported_commands()).unwrap_or_default()
    }

    /// §3.1 session object; pending sessions carry no sensor context (DOC5 example).
    fn session_json(&self, s: &Session) -> Value {
        let with_context = s.was_active;
        let storage = s.storage_size();
        let windows = self.sensors.get(&s.sensor_id).is_none_or(|x| x.spec.os == SensorOs::Windows);
        let drives = if windows { vec!["A:\\", "C:\\", "D:\\"] } else { vec!["/"] };
        let cwd = self.endpoints.get(&s.sensor_id).map_or("", |e| e.default_cwd());
        let mut v = json!({
            "status": s.status.as_str(),
            "sensor_id": s.sensor_id,
            "supported_commands": if with_context { self.supported_commands(s.sensor_id) } else { Vec::new() },
            "drives": if with_context { drives } else { Vec::new() },
            // REC shows a numeric string on an active 6.2 session and int 0 when empty.
            "storage_size": if storage == 0 { Value::from(0) } else { Value::from(storage.to_string()) },
            "create_time": s.create_epoch,
            "sensor_wait_timeout": s.shown_sensor_wait_timeout,
            "address": if with_context { Value::from(format!("::ffff:{}", sensor_ip(s.sensor_id))) } else { Value::Null },
            "check_in_timeout": s.shown_check_in_timeout,
            "id": s.id,
            "hostname": s.hostname,
            "storage_ttl": 7,
            "os_version": "",
            "session_timeout": s.shown_session_timeout,
            "current_working_directory": if with_context { cwd } else { "" },
        });
        if let (Some(t), Some(obj)) = (s.close_epoch, v.as_object_mut()) {
            obj.insert("close_time".into(), t.into());
        }
        v
    }

    pub(crate) fn list_sessions(&self, active_only: bool) -> Value {
        Value::Array(
            self.sessions
                .values()
                .filter(|s| !active_only || s.status.live())
                .map(|s| self.session_json(s))
                .collect(),
        )
    }

    pub(crate) fn get_session(&self, sid: u64) -> Result<Value, ApiError> {
        self.live_session(sid).map(|s| self.session_json(s))
    }

    /// §2.2: body `sensor_id` plus optional timeouts; the new session is `pending`.
    pub(crate) fn create_session(
        &mut self,
        body: &Map<String, Value>,
        now: Instant,
    ) -> Result<(u64, Value), ApiError> {
        let sensor_id = body
            .get("sensor_id")
            .and_then(as_u64_lenient)
            .ok_or_else(|| ApiError::BadRequest("sensor_id is required".into()))?;
        let hostname = self
            .sensors
            .get(&sensor_id)
            .map(|s| s.hostname.clone())
            .ok_or_else(|| ApiError::NotFound(format!("Sensor {sensor_id} not found")))?;
        let idle = duration_field(body, &["session_timeout"]).unwrap_or(self.cfg.session_timeout);
        let check_in = duration_field(body, &["checkin_timeout", "check_in_timeout"])
            .unwrap_or(self.cfg.check_in_timeout);
        let sensor_wait = body.get("sensor_wait_timeout").and_then(as_u64_lenient).unwrap_or(120);
        let id = self.next_session_id;
        self.next_session_id += 1;
        let session = Session {
            id,
            sensor_id,
            hostname,
            status: SessionStatus::Pending,
            was_active: false,
            created: now,
            create_epoch: self.epoch(now),
            close_epoch: None,
            slot_since: None,
            last_activity: now,
            idle_timeout: idle,
            check_in_timeout: check_in,
            shown_session_timeout: secs_ceil(idle),
            shown_sensor_wait_timeout: sensor_wait,
            shown_check_in_timeout: secs_ceil(check_in),
            commands: Vec::new(),
            next_command_id: 1,
            files: BTreeMap::new(),
            next_file_id: 1,
            busy_until: now,
            commands_accepted: 0,
        };
        self.sessions.insert(id, session);
        self.counters.sessions_created += 1;
        self.assign_slots(now);
        let v = self.get_session(id)?;
        Ok((id, v))
    }

    /// §2.4: only `status` is honoured, whatever else the body carries.
    pub(crate) fn put_session(
        &mut self,
        sid: u64,
        body: &Map<String, Value>,
        now: Instant,
    ) -> Result<Value, ApiError> {
        self.live_session(sid)?;
        if body.get("status").and_then(Value::as_str) == Some("close") {
            self.end_session(sid, SessionStatus::Close, now);
        }
        let s = self.sessions.get(&sid).ok_or(ApiError::SessionNotFound(sid))?;
        Ok(self.session_json(s))
    }

    /// §2.5: resets the idle timer of an active session.
    pub(crate) fn keepalive(&mut self, sid: u64, now: Instant) -> Result<Value, ApiError> {
        let closes_pending = self.cfg.keepalive_closes_pending;
        let s = self.live_session_mut(sid)?;
        match s.status {
            SessionStatus::Active => s.last_activity = now,
            SessionStatus::Pending if closes_pending => {
                self.end_session(sid, SessionStatus::Close, now)
            }
            _ => {}
        }
        self.counters.keepalives += 1;
        let s = self.sessions.get(&sid).ok_or(ApiError::SessionNotFound(sid))?;
        Ok(self.session_json(s))
    }

    // ----- commands ----------------------------------------------------------------------

    /// §4.1 command object at time `now`.
    fn command_json(&self, s: &Session, c: &Command, now: Instant) -> Value {
        let mut o = Map::new();
        o.insert("username".into(), c.username.clone().into());
        o.insert("sensor_id".into(), s.sensor_id.into());
        o.insert("create_time".into(), c.create_epoch.into());
        o.insert("name".into(), c.input.name.clone().into());
        o.insert("object".into(), c.input.object.clone());
        o.insert("id".into(), c.id.into());
        o.insert("session_id".into(), s.id.into());
        for (k, v) in &c.input.extra {
            o.entry(k.clone()).or_insert_with(|| v.clone());
        }
        if let Some(fid) = c.file_id {
            o.insert("file_id".into(), fid.into());
        }
        let is_memdump = c.input.name == "memdump";
        let status = match &c.outcome {
            // REC: the POST response is always `pending`; the sensor picks it up later.
            Outcome::Queued if now <= c.start => {
                if is_memdump {
                    memdump_progress(&mut o, 0, false, false);
                }
                "pending"
            }
            Outcome::Queued => {
                if is_memdump {
                    let total = c.finish.saturating_duration_since(c.start).as_secs_f64();
                    let done = now.saturating_duration_since(c.start).as_secs_f64();
                    let pct = if total > 0.0 {
                        ((done / total) * 100.0).floor().min(99.0) as u64
                    } else {
                        99
                    };
                    let compressing = c.input.flag("compress") && pct >= 80;
                    memdump_progress(&mut o, pct, !compressing, compressing);
                }
                "in progress"
            }
            Outcome::Cancelled => "cancel",
            Outcome::Done { completion, result } => {
                o.insert("completion".into(), (*completion).into());
                match result {
                    Ok(fields) => {
                        o.insert("result_code".into(), 0.into());
                        o.insert("result_type".into(), "WinHresult".into());
                        o.insert("result_desc".into(), "".into());
                        for (k, v) in fields {
                            o.insert(k.clone(), v.clone());
                        }
                        "complete"
                    }
                    Err(h) => {
                        o.insert("result_code".into(), h.0.into());
                        o.insert("result_type".into(), "WinHresult".into());
                        o.insert("result_desc".into(), h.desc().into());
                        "error"
                    }
                }
            }
        };
        o.insert("status".into(), status.into());
        Value::Object(o)
    }

    /// How long the sensor needs for a command (transfer time for file moves).
    fn command_duration(&self, input: &CommandInput, sensor_id: u64) -> Duration {
        let base = self.cfg.command_latency;
        let transfer = |bytes: u64| match self.cfg.transfer_bytes_per_sec {
            Some(rate) if rate > 0 => Duration::from_secs_f64(bytes as f64 / rate as f64),
            _ => Duration::ZERO,
        };
        match input.name.as_str() {
            "memdump" => self.cfg.memdump_duration,
            "put file" => base + transfer(input.upload.as_ref().map_or(0, Content::len)),
            "get file" => {
                let size = input
                    .object
                    .as_str()
                    .and_then(|p| self.endpoints.get(&sensor_id).and_then(|e| e.file_size(p)))
                    .unwrap_or(0);
                let count =
                    input.extra.get("get_count").and_then(as_u64_lenient).filter(|c| *c > 0);
                base + transfer(count.map_or(size, |c| c.min(size)))
            }
            _ => base,
        }
    }

    /// §2.7b: queue a command. `get file` gets its `file_id` immediately (REC).
    pub(crate) fn post_command(
        &mut self,
        sid: u64,
        body: &Map<String, Value>,
        now: Instant,
    ) -> Result<Value, ApiError> {
        let expire_after = self.cfg.faults.expire_sessions_after_commands;
        let s = self.live_session(sid)?;
        if let Some(n) = expire_after
            && s.commands_accepted >= n
        {
            // Fault: the session silently died; this and every later call is a 404.
            self.end_session(sid, SessionStatus::Timeout, now);
            return Err(ApiError::SessionNotFound(sid));
        }
        if s.status != SessionStatus::Active {
            return Err(ApiError::BadRequest(format!("Session {sid} is not active")));
        }
        let name = body
            .get("name")
            .and_then(Value::as_str)
            .ok_or_else(|| ApiError::BadRequest("command name is required".into()))?
            .to_owned();
        // The server refuses what the sensor does not list in `supported_commands` (cbapi
        // refuses it before sending, `_lr_post_command`; the server's answer is our choice).
        if !self.supported_commands(s.sensor_id).contains(&name.as_str()) {
            return Err(ApiError::BadRequest(format!(
                "Command {name} not supported by this sensor"
            )));
        }
        let object = body.get("object").cloned().unwrap_or(Value::Null);
        let extra: Map<String, Value> = body
            .iter()
            .filter(|(k, _)| {
                !matches!(k.as_str(), "name" | "object" | "session_id" | "id" | "status")
            })
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let upload = (name == "put file")
            .then(|| extra.get("file_id").and_then(as_u64_lenient))
            .flatten()
            .and_then(|fid| s.files.get(&fid))
            .filter(|f| f.ready && f.status == 0)
            .map(|f| f.content.clone());
        let input = CommandInput { name, object, extra, upload };
        let duration = self.command_duration(&input, s.sensor_id);
        let username = self.cfg.username.clone();
        let create_epoch = self.epoch(now);
        let s = self.live_session_mut(sid)?;
        let file_id = if input.name == "get file" {
            let fid = s.next_file_id;
            s.next_file_id += 1;
            let file_name = input.object.as_str().unwrap_or_default().to_owned();
            s.files.insert(
                fid,
                StoredFile {
                    id: fid,
                    file_name,
                    content: Content::empty(),
                    status: 0,
                    ready: false,
                    created_epoch: create_epoch,
                },
            );
            Some(fid)
        } else {
            None
        };
        let start = now.max(s.busy_until);
        let cmd = Command {
            id: s.next_command_id,
            input,
            username,
            created: now,
            create_epoch,
            start,
            finish: start + duration,
            duration,
            file_id,
            outcome: Outcome::Queued,
        };
        s.next_command_id += 1;
        s.busy_until = cmd.finish;
        s.commands_accepted += 1;
        s.last_activity = now;
        s.commands.push(cmd);
        self.counters.commands_posted += 1;
        let s = self.live_session(sid)?;
        let c = s.commands.last().ok_or_else(|| ApiError::Internal("command vanished".into()))?;
        Ok(self.command_json(s, c, now))
    }

    /// Returns the command object and whether it reached a final status.
    pub(crate) fn get_command(
        &self,
        sid: u64,
        cid: u64,
        now: Instant,
    ) -> Result<(Value, bool), ApiError> {
        let s = self.live_session(sid)?;
        let c = s.commands.iter().find(|c| c.id == cid).ok_or_else(|| {
            ApiError::NotFound(format!("Command {cid} not found in session {sid}"))
        })?;
        let done = !matches!(c.outcome, Outcome::Queued);
        Ok((self.command_json(s, c, now), done))
    }

    /// §2.7 GET with DOC5's `status` (completed/in progress/canceled) and `count` filters.
    pub(crate) fn list_commands(
        &self,
        sid: u64,
        status: Option<&str>,
        count: Option<usize>,
        now: Instant,
    ) -> Result<Value, ApiError> {
        let s = self.live_session(sid)?;
        let wanted = status.map(|st| match st {
            "completed" => "complete",
            "canceled" | "cancelled" => "cancel",
            other => other,
        });
        let items = s
            .commands
            .iter()
            .map(|c| self.command_json(s, c, now))
            .filter(|v| wanted.is_none_or(|w| v.get("status").and_then(Value::as_str) == Some(w)))
            .take(count.unwrap_or(usize::MAX))
            .collect();
        Ok(Value::Array(items))
    }

    /// §2.8b: cancel a command that has not started yet; otherwise a no-op.
    pub(crate) fn cancel_command(
        &mut self,
        sid: u64,
        cid: u64,
        now: Instant,
    ) -> Result<Value, ApiError> {
        let s = self.live_session_mut(sid)?;
        let idx = s.commands.iter().position(|c| c.id == cid).ok_or_else(|| {
            ApiError::NotFound(format!("Command {cid} not found in session {sid}"))
        })?;
        let cancelled = {
            let c = &mut s.commands[idx];
            if matches!(c.outcome, Outcome::Queued) && now <= c.start {
                c.outcome = Outcome::Cancelled;
                true
            } else {
                false
            }
        };
        if cancelled {
            reschedule(s, now);
            self.counters.commands_cancelled += 1;
        }
        let s = self.live_session(sid)?;
        Ok(self.command_json(s, &s.commands[idx], now))
    }

    // ----- session file storage ----------------------------------------------------------

    /// §2.9 upload; the file object uses the DOC5 shape.
    pub(crate) fn upload(
        &mut self,
        sid: u64,
        file_name: String,
        bytes: bytes::Bytes,
        now: Instant,
    ) -> Result<Value, ApiError> {
        let epoch = self.epoch(now);
        let s = self.live_session_mut(sid)?;
        let id = s.next_file_id;
        s.next_file_id += 1;
        let f = StoredFile {
            id,
            file_name,
            content: Content::bytes(bytes),
            status: 0,
            ready: true,
            created_epoch: epoch,
        };
        let v = f.to_json();
        s.files.insert(id, f);
        self.counters.uploads += 1;
        Ok(v)
    }

    pub(crate) fn list_files(&self, sid: u64) -> Result<Value, ApiError> {
        let s = self.live_session(sid)?;
        Ok(Value::Array(s.files.values().map(StoredFile::to_json).collect()))
    }

    fn stored_file(&self, sid: u64, fid: u64) -> Result<&StoredFile, ApiError> {
        self.live_session(sid)?
            .files
            .get(&fid)
            .ok_or_else(|| ApiError::NotFound(format!("File {fid} not found in session {sid}")))
    }

    pub(crate) fn get_file(&self, sid: u64, fid: u64) -> Result<Value, ApiError> {
        self.stored_file(sid, fid).map(StoredFile::to_json)
    }

    /// §2.12: DELETE, or PUT with `delete: true`.
    pub(crate) fn delete_file(&mut self, sid: u64, fid: u64) -> Result<Value, ApiError> {
        let s = self.live_session_mut(sid)?;
        let f = s
            .files
            .remove(&fid)
            .ok_or_else(|| ApiError::NotFound(format!("File {fid} not found in session {sid}")))?;
        let mut v = f.to_json();
        if let Some(o) = v.as_object_mut() {
            o.insert("delete".into(), true.into());
        }
        Ok(v)
    }

    /// §2.13: the bytes received so far (nothing until the `get file` completed) and an ETag
    /// in the Flask style of REC.
    pub(crate) fn file_content(
        &mut self,
        sid: u64,
        fid: u64,
    ) -> Result<(Content, String), ApiError> {
        let f = self.stored_file(sid, fid)?;
        let content = if f.ready { f.content.clone() } else { Content::empty() };
        let name_hash = f.file_name.bytes().fold(5381u32, |h, b| h.wrapping_mul(33) ^ u32::from(b));
        let etag = format!("\"flask-{:.2}-{}-{}\"", f.created_epoch, content.len(), name_hash);
        self.counters.downloads += 1;
        Ok((content, etag))
    }

    /// Everything the archive needs, gathered under the lock (contents are cheap handles).
    pub(crate) fn archive_parts(&self, sid: u64, now: Instant) -> Result<ArchiveParts, ApiError> {
        // The archive stays available after the session ended: that is when it is useful.
        let s = self.sessions.get(&sid).ok_or(ApiError::SessionNotFound(sid))?;
        if !s.has_content() {
            // XSOAR: the real server answers 500 for a session without content (§2.6).
            return Err(ApiError::Internal(format!("Session {sid} has no content to archive")));
        }
        Ok(ArchiveParts {
            session: self.session_json(s),
            commands: s.commands.iter().map(|c| self.command_json(s, c, now)).collect(),
            files: s
                .files
                .values()
                .map(|f| (f.to_json(), f.id, f.file_name.clone(), f.content.clone()))
                .collect(),
            mtime: self.epoch(now) as u64,
        })
    }

    // ----- sensors -----------------------------------------------------------------------

    /// §7.4 sensor object with the fields of the REC recording.
    pub(crate) fn sensor_json(&self, s: &Sensor, now: Instant) -> Value {
        let now_epoch = self.epoch(now);
        let backlog = (s.id * 7919 % 100) * 1024;
        let os_name = match s.spec.os {
            SensorOs::Windows => "Windows 10 Enterprise, 64-bit",
            SensorOs::MacOs => "Mac OSX 14.2.1",
            SensorOs::Linux => "Ubuntu 22.04.3 LTS",
        };
        let dns_name = match s.spec.os {
            SensorOs::Windows => format!("{}.corp.example", s.hostname.to_lowercase()),
            _ => format!("{}.corp.example", s.hostname),
        };
        let mut first = json!({
            "systemvolume_total_size": "127326412800",
            "emet_telemetry_path": "",
            "os_environment_display_string": os_name,
            "emet_version": "",
            "emet_dump_flags": "",
            "clock_delta": "0",
            "supports_cblr": true,
            "sensor_uptime": "259200",
            "last_update": server_time(now_epoch - 60.0),
            "physical_memory_size": "8589934592",
            "build_id": 11,
            "uptime": "259200",
            "is_isolating": self.is_isolating(s, now),
            "event_log_flush_time": null,
            "computer_dns_name": dns_name,
            "emet_report_setting": " (Locally configured)",
        });
        // Two halves: one `json!` this size exceeds the macro recursion limit.
        let second = json!({
            "id": s.id,
            "emet_process_count": 0,
            "emet_is_gpo": false,
            "power_state": 0,
            "network_isolation_enabled": s.isolated,
            "uninstalled": null,
            "systemvolume_free_size": "48318382080",
            "status": if s.online { "Online" } else { "Offline" },
            "num_eventlog_bytes": backlog.to_string(),
            "sensor_health_message": "Healthy",
            "build_version_string": s.spec.version,
            "computer_sid": format!("S-1-5-21-850238481-2932160288-{}", 1_760_307_000 + s.id),
            "next_checkin_time": server_time(now_epoch + 30.0),
            "node_id": 0,
            "cookie": 1_137_216_752u64 + s.id,
            "emet_exploit_action": " (Locally configured)",
            "computer_name": s.hostname,
            "license_expiration": "1990-01-01 00:00:00-06:00",
            "supports_isolation": true,
            "parity_host_id": "0",
            "supports_2nd_gen_modloads": false,
            "network_adapters": format!("{},00155d01{:04x}|", sensor_ip(s.id), s.id & 0xffff),
            "sensor_health_status": 100,
            "registration_time": server_time(self.origin_epoch - 90.0 * 86_400.0),
            "restart_queued": false,
            "notes": null,
            "num_storefiles_bytes": "0",
            "os_environment_id": s.spec.os.os_type(),
            "shard_id": 0,
            "boot_id": "38",
            "last_checkin_time": server_time(now_epoch - 5.0),
            "os_type": s.spec.os.os_type(),
            "group_id": s.group_id,
            "display": true,
            "uninstall": false,
        });
        if let (Some(a), Value::Object(b)) = (first.as_object_mut(), second) {
            a.extend(b);
        }
        first
    }

    /// The sensor applies an isolation change `checkin_delay` after it was requested (or after
    /// it comes back online); until then it keeps doing what it did before.
    fn is_isolating(&self, s: &Sensor, now: Instant) -> bool {
        match s.isolation_changed {
            Some(t) if !s.online || now < t.max(s.online_since) + self.cfg.checkin_delay => {
                s.isolating_before
            }
            _ => s.isolated,
        }
    }

    /// cbapi `Sensor.isolate()`/`unisolate()`: returns whether the request changed anything.
    pub(crate) fn set_isolation(
        &mut self,
        id: u64,
        wanted: bool,
        now: Instant,
    ) -> Result<bool, ApiError> {
        let current = self
            .sensors
            .get(&id)
            .map(|s| self.is_isolating(s, now))
            .ok_or_else(|| ApiError::NotFound(format!("Sensor {id} not found")))?;
        let s = self
            .sensors
            .get_mut(&id)
            .ok_or_else(|| ApiError::NotFound(format!("Sensor {id} not found")))?;
        if s.isolated == wanted {
            return Ok(false);
        }
        s.isolating_before = current;
        s.isolated = wanted;
        s.isolation_changed = Some(now);
        self.counters.isolation_changes += 1;
        let op = if wanted { "isolate" } else { "unisolate" };
        self.log.record(op, &id.to_string(), serde_json::json!({}));
        Ok(true)
    }

    /// §7.4 search: `hostname`/`ip` are case-sensitive substring matches (ip wins when both).
    pub(crate) fn search_sensors(
        &self,
        hostname: Option<&str>,
        ip: Option<&str>,
        group: Option<u64>,
    ) -> Vec<&Sensor> {
        self.sensors
            .values()
            .filter(|s| match (ip, hostname) {
                (Some(ip), _) => sensor_ip(s.id).contains(ip),
                (None, Some(h)) => s.hostname.contains(h),
                (None, None) => true,
            })
            .filter(|s| group.is_none_or(|g| s.group_id == g))
            .collect()
    }
}

/// Recompute start/finish of not-yet-started commands after a cancellation.
fn reschedule(s: &mut Session, now: Instant) {
    let mut cursor: Option<Instant> = None;
    for c in &mut s.commands {
        match c.outcome {
            Outcome::Cancelled => {}
            Outcome::Done { .. } => cursor = Some(cursor.map_or(c.finish, |x| x.max(c.finish))),
            Outcome::Queued => {
                if c.start > now {
                    c.start = c.created.max(now).max(cursor.unwrap_or(now));
                    c.finish = c.start + c.duration;
                }
                cursor = Some(c.finish);
            }
        }
    }
    s.busy_until = cursor.unwrap_or(now).max(now);
}

fn memdump_progress(o: &mut Map<String, Value>, pct: u64, dumping: bool, compressing: bool) {
    o.insert("complete".into(), false.into());
    o.insert("percentdone".into(), pct.into());
    o.insert("dumping".into(), dumping.into());
    o.insert("compressing".into(), compressing.into());
}

/// Server-local time string as in REC (`2018-02-06 12:45:03.881351-06:00`); UTC here.
fn server_time(epoch: f64) -> String {
    let nanos = (epoch * 1e9) as i128;
    match time::OffsetDateTime::from_unix_timestamp_nanos(nanos) {
        Ok(t) => format!(
            "{:04}-{:02}-{:02} {:02}:{:02}:{:02}.{:06}+00:00",
            t.year(),
            u8::from(t.month()),
            t.day(),
            t.hour(),
            t.minute(),
            t.second(),
            t.microsecond()
        ),
        Err(_) => "1970-01-01 00:00:00.000000+00:00".into(),
    }
}

pub(crate) struct ArchiveParts {
    pub(crate) session: Value,
    pub(crate) commands: Vec<Value>,
    pub(crate) files: Vec<(Value, u64, String, Content)>,
    pub(crate) mtime: u64,
}
