//! The simulator's state and the machine-action lifecycle (defender.md §4.3).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::time::{Duration, Instant};

use edrgate_simkit::SimLog;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use time::OffsetDateTime;

use crate::api::{
    self, ActionStatus, ActionType, CommandEcho, CommandResult, CommandStatus, CommandType,
    LibraryFile, MachineAction, Param, keys,
};
use crate::endpoint::{self, Endpoint, Family, Outcome};
use crate::{Counters, SimConfig};

/// Who the simulator says requested its actions: the app's display name for app tokens
/// (§4.2: "the app's display name for app tokens").
pub(crate) const REQUESTOR: &str = "edrgate-sim-app";

pub(crate) struct SimMachine {
    pub(crate) id: String,
    pub(crate) name: String,
    /// `osPlatform` (§10).
    pub(crate) os_platform: String,
    pub(crate) online: bool,
    pub(crate) isolated: bool,
    pub(crate) endpoint: Endpoint,
}

pub(crate) struct LibFile {
    pub(crate) entity: LibraryFile,
    pub(crate) content: Vec<u8>,
}

/// A validated live-response command.
#[derive(Clone, Debug)]
pub(crate) struct LrCommand {
    pub(crate) kind: CommandType,
    pub(crate) params: Vec<Param>,
}

impl LrCommand {
    pub(crate) fn param(&self, key: &str) -> Option<&str> {
        self.params.iter().find(|p| p.key == key).map(|p| p.value.as_str())
    }
}

pub(crate) struct SimCommand {
    pub(crate) lr: LrCommand,
    pub(crate) status: CommandStatus,
    pub(crate) errors: Vec<String>,
    pub(crate) start: Option<String>,
    pub(crate) end: Option<String>,
    /// Completion time once started.
    pub(crate) due: Option<Instant>,
    pub(crate) blob: Option<Vec<u8>>,
}

/// What the request of an action said beyond its commands.
#[derive(Clone, Debug, Default)]
pub(crate) struct Request {
    pub(crate) comment: Option<String>,
    pub(crate) external_id: Option<String>,
    pub(crate) title: Option<String>,
    /// `KnownRequestSource` (§4.2 [E]); `PublicApi` when not given.
    pub(crate) request_source: Option<String>,
}

pub(crate) struct SimAction {
    pub(crate) id: String,
    pub(crate) kind: ActionType,
    pub(crate) machine: String,
    pub(crate) request: Request,
    pub(crate) status: ActionStatus,
    pub(crate) created: Instant,
    pub(crate) created_utc: String,
    pub(crate) updated_utc: String,
    pub(crate) error_hresult: i32,
    pub(crate) scope: Option<String>,
    pub(crate) commands: Vec<SimCommand>,
    pub(crate) started: Option<Instant>,
    /// (comment, time)
    pub(crate) cancellation: Option<(Option<String>, String)>,
}

impl SimAction {
    pub(crate) fn terminal(&self) -> bool {
        self.status.is_final()
    }

    pub(crate) fn live_response_active(&self) -> bool {
        self.kind == ActionType::LiveResponse && !self.terminal()
    }

    pub(crate) fn entity(&self, dns: &str, context: Option<String>) -> MachineAction {
        MachineAction {
            context,
            id: self.id.clone(),
            kind: self.kind,
            title: self.request.title.clone(),
            requestor: REQUESTOR.to_owned(),
            requestor_comment: self.request.comment.clone(),
            status: self.status,
            machine_id: self.machine.clone(),
            computer_dns_name: dns.to_owned(),
            creation_date_time_utc: self.created_utc.clone(),
            last_update_date_time_utc: self.updated_utc.clone(),
            cancellation_requestor: self.cancellation.as_ref().map(|_| REQUESTOR.to_owned()),
            cancellation_comment: self.cancellation.as_ref().and_then(|c| c.0.clone()),
            cancellation_date_time_utc: self.cancellation.as_ref().map(|c| c.1.clone()),
            error_h_result: self.error_hresult,
            scope: self.scope.clone(),
            external_id: self.request.external_id.clone(),
            request_source: self
                .request
                .request_source
                .clone()
                .unwrap_or_else(|| "PublicApi".to_owned()),
            related_file_info: None,
            commands: Some(
                self.commands
                    .iter()
                    .enumerate()
                    .map(|(index, c)| CommandResult {
                        index,
                        start_time: c.start.clone(),
                        end_time: c.end.clone(),
                        command_status: c.status,
                        errors: c.errors.clone(),
                        command: CommandEcho { kind: c.lr.kind, params: c.lr.params.clone() },
                    })
                    .collect(),
            ),
            troubleshoot_info: None,
        }
    }
}

/// A sliding window of arrivals.
#[derive(Default)]
pub(crate) struct Window(VecDeque<Instant>);

impl Window {
    /// Admits an arrival, or answers how long until one would be admitted.
    pub(crate) fn admit(
        &mut self,
        now: Instant,
        limit: usize,
        window: Duration,
    ) -> Result<(), Duration> {
        while self.0.front().is_some_and(|t| now.duration_since(*t) >= window) {
            self.0.pop_front();
        }
        if self.0.len() >= limit {
            let oldest = self.0.len() - limit;
            return Err(window.saturating_sub(now.duration_since(self.0[oldest])));
        }
        self.0.push_back(now);
        Ok(())
    }
}

pub(crate) struct Runtime {
    pub(crate) cfg: SimConfig,
    pub(crate) machines: Vec<SimMachine>,
    pub(crate) actions: Vec<SimAction>,
    pub(crate) library: BTreeMap<String, LibFile>,
    /// access token → expiry
    pub(crate) tokens: HashMap<String, Instant>,
    pub(crate) lr_window: Window,
    pub(crate) api_windows: HashMap<&'static str, Window>,
    pub(crate) counters: Counters,
    /// Blob downloads still to refuse as expired (fault injection).
    pub(crate) refuse_downloads: u32,
    /// Blob downloads still to cut off: the connection closes instead of the blob.
    pub(crate) cut_downloads: u32,
    pub(crate) link_secret: String,
    pub(crate) started: Instant,
    /// Arrival times of accepted `runliveresponse` calls.
    pub(crate) lr_arrivals: Vec<Instant>,
    pub(crate) log: SimLog,
}

/// ISO-8601 UTC with 7 fractional digits, like the service's timestamps (§0).
pub(crate) fn utc(t: OffsetDateTime) -> String {
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:07}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second(),
        t.nanosecond() / 100
    )
}

pub(crate) fn utc_now() -> String {
    utc(OffsetDateTime::now_utc())
}

/// A 40-hex machine id like the real ones (§0), stable per index.
pub fn machine_id(n: usize) -> String {
    hex::encode(Sha256::digest(format!("edrgate-sim-machine-{n}").as_bytes()))[..40].to_owned()
}

/// Why a `runliveresponse` body is refused: `(error.code, message)` of a 400.
pub(crate) type Refusal = (&'static str, String);

impl Runtime {
    pub(crate) fn new(cfg: SimConfig, log: SimLog) -> Self {
        let machines = (1..=cfg.machines)
            .map(|n| {
                let name = cfg
                    .hostname_overrides
                    .iter()
                    .find(|(i, _)| *i == n)
                    .map_or_else(|| format!("{}{n:04}", cfg.hostname_prefix), |(_, h)| h.clone());
                let os_platform = cfg
                    .os_platforms
                    .iter()
                    .find(|(i, _)| *i == n)
                    .map_or_else(|| "Windows11".to_owned(), |(_, os)| os.clone());
                SimMachine {
                    id: machine_id(n),
                    endpoint: Endpoint::new(&name, cfg.file_size, Family::of(&os_platform)),
                    os_platform,
                    name,
                    online: !cfg.offline_machines.contains(&n),
                    isolated: false,
                }
            })
            .collect();
        let mut library = BTreeMap::new();
        for (name, content) in &cfg.library_scripts {
            library.insert(
                name.clone(),
                lib_file(name, content.clone().into_bytes(), Some("preloaded"), true),
            );
        }
        Runtime {
            cfg,
            machines,
            actions: Vec::new(),
            library,
            tokens: HashMap::new(),
            lr_window: Window::default(),
            api_windows: HashMap::new(),
            counters: Counters::default(),
            refuse_downloads: 0,
            cut_downloads: 0,
            link_secret: uuid::Uuid::now_v7().to_string(),
            started: Instant::now(),
            lr_arrivals: Vec::new(),
            log,
        }
    }

    pub(crate) fn machine(&self, id: &str) -> Option<&SimMachine> {
        self.machines.iter().find(|m| m.id.eq_ignore_ascii_case(id))
    }

    fn machine_mut(&mut self, id: &str) -> Option<&mut SimMachine> {
        self.machines.iter_mut().find(|m| m.id.eq_ignore_ascii_case(id))
    }

    pub(crate) fn machine_entity(&self, m: &SimMachine) -> api::Machine {
        let n = self.machines.iter().position(|x| x.id == m.id).unwrap_or(0) + 1;
        let ip = format!("10.0.{}.{}", n / 250, 10 + n % 250);
        // What the machine entity says per platform (get-machines samples [D]; the Linux and
        // macOS version strings are the simulator's [U]).
        let (os_version, os_build, version, agent_version) = match Family::of(&m.os_platform) {
            Family::Windows => (None, Some(22631), "23H2", "10.8760.22631.1000"),
            Family::Linux => (Some("22.04".to_owned()), None, "22.04", "101.24042.0002"),
            Family::MacOs => (Some("14.4".to_owned()), None, "14.4", "101.24042.0008"),
        };
        api::Machine {
            context: None,
            id: m.id.clone(),
            computer_dns_name: m.name.clone(),
            first_seen: "2026-01-05T08:00:00.0000000Z".into(),
            last_seen: utc_now(),
            os_platform: m.os_platform.clone(),
            os_version,
            os_processor: "x64".into(),
            os_architecture: "64-bit".into(),
            os_build,
            version: version.into(),
            last_ip_address: ip.clone(),
            last_external_ip_address: "198.51.100.10".into(),
            agent_version: agent_version.into(),
            // `Active` is the state of a reporting device (§10).
            health_status: if m.online { "Active" } else { "Inactive" }.into(),
            defender_av_status: "Updated".into(),
            onboarding_status: "Onboarded".into(),
            managed_by: "Unknown".into(),
            device_value: "Normal".into(),
            rbac_group_id: 1,
            rbac_group_name: Some("edrgate-sim".into()),
            risk_score: "None".into(),
            exposure_level: "Low".into(),
            is_aad_joined: false,
            aad_device_id: None,
            machine_tags: vec!["edrgate-sim".into()],
            ip_addresses: vec![api::IpAddress {
                ip_address: ip,
                mac_address: format!("00155D{n:06X}"),
                operational_status: "Up".into(),
                kind: "Ethernet".into(),
            }],
            vm_metadata: None,
        }
    }

    pub(crate) fn action_entity(&self, a: &SimAction, context: Option<String>) -> MachineAction {
        let dns = self.machine(&a.machine).map(|m| m.name.clone()).unwrap_or_default();
        a.entity(&dns, context)
    }

    pub(crate) fn active_sessions(&self) -> usize {
        self.actions.iter().filter(|a| a.live_response_active()).count()
    }

    /// Validates the commands of a `runliveresponse` body (§3.1, §14.2). The refusal codes are
    /// the documented 400 codes (§3.3, §7); which one the service uses for which mistake is
    /// not documented [U].
    pub(crate) fn validate(
        &self,
        commands: &[api::RequestCommand],
    ) -> Result<Vec<LrCommand>, Refusal> {
        if commands.is_empty() {
            return Err(("InvalidInput", "Commands must not be empty".into()));
        }
        let mut out: Vec<LrCommand> = Vec::with_capacity(commands.len());
        for c in commands {
            let Some(kind) = CommandType::parse(&c.kind) else {
                return Err((
                    "InvalidInput",
                    format!(
                        "Unsupported command type '{}'. Allowed values are PutFile, RunScript, GetFile",
                        c.kind
                    ),
                ));
            };
            let (needed, allowed) = kind.keys();
            if let Some(p) = c.params.iter().find(|p| !allowed.contains(&p.key.as_str())) {
                return Err((
                    "InvalidInput",
                    format!("Unsupported parameter '{}' for {}", p.key, kind.as_str()),
                ));
            }
            let lr = LrCommand { kind, params: c.params.clone() };
            let Some(value) = lr.param(needed).filter(|v| !v.is_empty()) else {
                return Err((
                    "MissingRequiredParameter",
                    format!("{} requires {needed}", kind.as_str()),
                ));
            };
            // PutFile and RunScript name a file already in the library (§3.1).
            if needed != keys::PATH && !self.library.contains_key(value) {
                return Err((
                    "InvalidInput",
                    format!("File '{value}' was not found in the live response library"),
                ));
            }
            // "They must be ordered PutFile → RunScript → GetFile, with any number of each"
            // (§3.1 [D]). What the service does with another order is not documented; the
            // simulator refuses the call [U].
            if out.last().is_some_and(|prev| prev.kind > kind) {
                return Err((
                    "InvalidInput",
                    "Commands must be ordered PutFile, RunScript, GetFile".into(),
                ));
            }
            out.push(lr);
        }
        Ok(out)
    }

    pub(crate) fn create_action(
        &mut self,
        kind: ActionType,
        machine: &str,
        request: Request,
        commands: Vec<LrCommand>,
        scope: Option<String>,
        now: Instant,
    ) -> usize {
        let created_utc = utc_now();
        self.actions.push(SimAction {
            id: uuid::Uuid::now_v7().to_string(),
            kind,
            machine: machine.to_owned(),
            request,
            status: ActionStatus::Pending,
            created: now,
            updated_utc: created_utc.clone(),
            created_utc,
            error_hresult: 0,
            scope,
            commands: commands
                .into_iter()
                .map(|lr| SimCommand {
                    lr,
                    status: CommandStatus::Created,
                    errors: Vec::new(),
                    start: None,
                    end: None,
                    due: None,
                    blob: None,
                })
                .collect(),
            started: None,
            cancellation: None,
        });
        *self.counters.actions_by_type.entry(kind.as_str().to_owned()).or_default() += 1;
        if kind == ActionType::LiveResponse {
            self.counters.live_response_actions += 1;
            self.lr_arrivals.push(now);
            let live = self.active_sessions();
            self.counters.max_concurrent_sessions = self.counters.max_concurrent_sessions.max(live);
        }
        self.actions.len() - 1
    }

    /// Advances every action to `now`.
    pub(crate) fn tick(&mut self, now: Instant) {
        for i in 0..self.actions.len() {
            if !self.actions[i].terminal() {
                self.advance(i, now);
                if self.actions[i].terminal() {
                    self.session_ended(i);
                }
            }
        }
    }

    /// A live-response action ended: the processes its scripts started as their own children
    /// die with its session (`Endpoint::end_session`).
    fn session_ended(&mut self, i: usize) {
        if self.actions[i].kind == ActionType::LiveResponse {
            let machine = self.actions[i].machine.clone();
            if let Some(m) = self.machine_mut(&machine) {
                m.endpoint.end_session();
            }
        }
    }

    fn advance(&mut self, i: usize, now: Instant) {
        let machine_id = self.actions[i].machine.clone();
        let online = self.machine(&machine_id).is_some_and(|m| m.online);
        let pickup = self.cfg.pickup_delay;
        let a = &mut self.actions[i];
        if a.status == ActionStatus::Pending {
            if !online || now.duration_since(a.created) < pickup {
                // "If the machine is not available, the session will be queued for up to 3
                // days" (§9 [D]); the final status `TimeOut` is [U].
                if now.duration_since(a.created) >= self.cfg.queue_timeout {
                    a.status = ActionStatus::TimeOut;
                    a.updated_utc = utc_now();
                }
                return;
            }
            a.status = ActionStatus::InProgress;
            a.started = Some(a.created + pickup);
            a.updated_utc = utc_now();
        }
        if a.kind != ActionType::LiveResponse {
            self.finish_isolation(i);
            return;
        }
        // Commands run one after the other; each completes `command_latency` (plus its
        // script's sleeps) after it started.
        let mut clock = self.actions[i].started.unwrap_or(now);
        for k in 0..self.actions[i].commands.len() {
            let (status, due) = {
                let c = &self.actions[i].commands[k];
                (c.status, c.due)
            };
            if status == CommandStatus::Completed {
                clock = due.unwrap_or(clock);
                continue;
            }
            let due = match due {
                Some(d) => d,
                None => {
                    let d = clock + self.duration_of(&self.actions[i].commands[k].lr);
                    let c = &mut self.actions[i].commands[k];
                    c.status = CommandStatus::Executing;
                    c.start = Some(utc_now());
                    c.due = Some(d);
                    d
                }
            };
            // "RunScript command timeouts after 10 minutes" (§3.1 [D]); whether the action then
            // ends `Failed` or `TimeOut` is not documented (§16) [U: TimeOut].
            let is_script = self.actions[i].commands[k].lr.kind == CommandType::RunScript;
            let timeout_at = clock + self.cfg.script_timeout;
            if is_script && due > timeout_at && now >= timeout_at {
                let limit = self.cfg.script_timeout;
                let a = &mut self.actions[i];
                let c = &mut a.commands[k];
                c.status = CommandStatus::Failed;
                c.errors = vec![format!("Script execution timed out after {}", human(limit))];
                c.end = Some(utc_now());
                a.status = ActionStatus::TimeOut;
                a.error_hresult = endpoint::HR_TIMEOUT;
                a.updated_utc = utc_now();
                let detail = json!({
                    "action": a.id, "index": k, "params": c.lr.params,
                    "outcome": "TimedOut", "errors": c.errors,
                });
                self.counters.commands_failed += 1;
                self.log.record(CommandType::RunScript.as_str(), &machine_id, detail);
                return;
            }
            if now < due {
                return;
            }
            let lr = self.actions[i].commands[k].lr.clone();
            let action_id = self.actions[i].id.clone();
            let outcome = self.execute(&machine_id, &action_id, k, &lr);
            *self.counters.commands_by_type.entry(lr.kind.as_str().to_owned()).or_default() += 1;
            let a = &mut self.actions[i];
            let c = &mut a.commands[k];
            c.end = Some(utc_now());
            match outcome {
                Outcome::Completed(blob) => {
                    c.status = CommandStatus::Completed;
                    c.blob = blob;
                    clock = due;
                    self.log.record(
                        lr.kind.as_str(),
                        &machine_id,
                        json!({"action": action_id, "index": k, "params": lr.params, "outcome": "Completed"}),
                    );
                }
                Outcome::Failed { errors, hresult } => {
                    // "When a live response command fails all followed actions will not be
                    // executed" (§3, limitation 5 [D]); later commands stay `Created` [U].
                    c.status = CommandStatus::Failed;
                    c.errors = errors.clone();
                    a.status = ActionStatus::Failed;
                    a.error_hresult = hresult;
                    a.updated_utc = utc_now();
                    self.counters.commands_failed += 1;
                    self.log.record(
                        lr.kind.as_str(),
                        &machine_id,
                        json!({
                            "action": action_id, "index": k, "params": lr.params,
                            "outcome": "Failed", "errors": errors,
                            "errorHResult": format!("0x{:08X}", hresult as u32),
                        }),
                    );
                    return;
                }
            }
        }
        let a = &mut self.actions[i];
        a.status = ActionStatus::Succeeded;
        a.updated_utc = utc_now();
    }

    /// Isolate / unisolate (§11): done once the device picked the action up.
    fn finish_isolation(&mut self, i: usize) {
        let (kind, machine, id, scope) = {
            let a = &mut self.actions[i];
            a.status = ActionStatus::Succeeded;
            a.updated_utc = utc_now();
            (a.kind, a.machine.clone(), a.id.clone(), a.scope.clone())
        };
        let isolate = kind == ActionType::Isolate;
        let mut changed = false;
        if let Some(m) = self.machine_mut(&machine)
            && m.isolated != isolate
        {
            m.isolated = isolate;
            changed = true;
        }
        if changed {
            self.counters.isolation_changes += 1;
        }
        self.log.record(
            kind.as_str(),
            &machine,
            json!({"action": id, "scope": scope, "changed": changed}),
        );
    }

    fn duration_of(&self, lr: &LrCommand) -> Duration {
        let mut d = self.cfg.command_latency;
        if lr.kind == CommandType::RunScript
            && let Some(f) = lr.param(keys::SCRIPT_NAME).and_then(|n| self.library.get(n))
        {
            d += Duration::from_secs_f64(endpoint::script_sleep_secs(&f.content));
        }
        d
    }

    fn execute(&mut self, machine: &str, action: &str, index: usize, lr: &LrCommand) -> Outcome {
        let param = |k: &str| lr.param(k).unwrap_or_default().to_owned();
        let library_content =
            |rt: &Runtime, name: &str| rt.library.get(name).map(|f| f.content.clone());
        let gone = || Outcome::Failed {
            errors: vec!["Machine was not found".into()],
            hresult: endpoint::HR_FILE_NOT_FOUND,
        };
        match lr.kind {
            CommandType::GetFile => match self.machine(machine) {
                Some(m) => m.endpoint.get_file(&param(keys::PATH)),
                None => gone(),
            },
            CommandType::PutFile => {
                let name = param(keys::FILE_NAME);
                // The library may have changed since the call was accepted.
                let Some(content) = library_content(self, &name) else {
                    return Outcome::Failed {
                        errors: vec![format!("File {name} was not found in the library")],
                        hresult: endpoint::HR_FILE_NOT_FOUND,
                    };
                };
                match self.machine_mut(machine) {
                    Some(m) => m.endpoint.put_file(&name, content),
                    None => gone(),
                }
            }
            CommandType::RunScript => {
                let name = param(keys::SCRIPT_NAME);
                let Some(content) = library_content(self, &name) else {
                    return Outcome::Failed {
                        errors: vec![format!("Script {name} was not found in the library")],
                        hresult: endpoint::HR_FILE_NOT_FOUND,
                    };
                };
                // A tenant without "Live Response unsigned script execution" runs only signed
                // scripts (live-response.md [D]); the refusal is PowerShell's AllSigned one.
                if !self.cfg.unsigned_scripts && !endpoint::is_signed(&content) {
                    return Outcome::Failed {
                        errors: vec![endpoint::unsigned_refusal(&name)],
                        hresult: endpoint::HR_SCRIPT_THREW,
                    };
                }
                let Some(m) = self.machine_mut(machine) else { return gone() };
                let (outcome, helper) = m.endpoint.run_script(&name, &param(keys::ARGS), &content);
                if let Some(run) = helper {
                    let helper_name = run.helper.name();
                    *self.counters.helper_runs.entry(helper_name.to_owned()).or_default() += 1;
                    self.log.record(
                        &format!("helper:{helper_name}"),
                        machine,
                        json!({
                            "action": action, "index": index, "script": name,
                            "params": run.params, "ok": run.output.ok,
                            "error": run.output.error, "message": run.output.message,
                        }),
                    );
                }
                outcome
            }
        }
    }

    /// `POST …/cancel` (§6): a non-final action becomes `Cancelled`; a final one is returned
    /// as it is (the race with completion, §6 [I] kibana#236963). `true` when it cancelled.
    pub(crate) fn cancel(&mut self, i: usize, comment: Option<String>) -> bool {
        let a = &mut self.actions[i];
        if a.terminal() {
            return false;
        }
        a.status = ActionStatus::Cancelled;
        a.cancellation = Some((comment.clone(), utc_now()));
        a.updated_utc = utc_now();
        self.counters.cancels += 1;
        let detail = json!({"action": a.id, "type": a.kind.as_str(), "comment": comment});
        let machine = a.machine.clone();
        self.log.record("Cancel", &machine, detail);
        self.session_ended(i);
        true
    }

    /// The blob name of a command's result: opaque like the service's 32-hex names (§5).
    pub(crate) fn blob_name(&self, action: &str, index: usize) -> String {
        let digest = Sha256::digest(format!("{}|blob|{action}|{index}", self.link_secret));
        hex::encode(digest)[..32].to_owned()
    }

    /// A signed, expiring SAS-like link to a command's result blob (§5): `se` (expiry,
    /// ISO-8601 UTC), `sp=r`, `sv`, `sr=b`, `sig`.
    pub(crate) fn link(&self, base: &str, action: &str, index: usize) -> String {
        let expiry = OffsetDateTime::now_utc() + self.cfg.link_lifetime;
        let se = utc(expiry);
        let blob = self.blob_name(action, index);
        format!(
            "{base}/blob/investigation-actions-data/{action}/CustomPlaybookCommandOutput/{blob}?se={}&sp=r&sv=2019-07-07&sr=b&sig={}",
            se.replace(':', "%3A"),
            self.sign(action, &blob, &se)
        )
    }

    pub(crate) fn sign(&self, action: &str, blob: &str, se: &str) -> String {
        hex::encode(Sha256::digest(format!("{}|{action}|{blob}|{se}", self.link_secret).as_bytes()))
    }
}

fn human(d: Duration) -> String {
    let secs = d.as_secs();
    if secs >= 60 && secs.is_multiple_of(60) {
        format!("{} minutes", secs / 60)
    } else {
        format!("{} ms", d.as_millis())
    }
}

pub(crate) fn lib_file(
    name: &str,
    content: Vec<u8>,
    description: Option<&str>,
    has_parameters: bool,
) -> LibFile {
    let now = utc_now();
    LibFile {
        entity: LibraryFile {
            file_name: name.to_owned(),
            sha256: hex::encode(Sha256::digest(&content)),
            description: description.map(str::to_owned),
            creation_time: now.clone(),
            last_updated_time: now,
            created_by: REQUESTOR.into(),
            has_parameters,
            parameters_description: None,
        },
        content,
    }
}

/// What a log entry's detail says about a library file.
pub(crate) fn library_detail(file: &LibFile, overwrote: bool) -> Value {
    json!({"sha256": file.entity.sha256, "size": file.content.len(), "overwrote": overwrote})
}
