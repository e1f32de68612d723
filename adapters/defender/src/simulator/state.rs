//! The simulator's state and the machine-action lifecycle (defender.md §4.3).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use time::OffsetDateTime;

use super::endpoint::{self, Endpoint, Outcome};
use super::{Counters, SimConfig};
use crate::mapping;
use crate::wire::{self, LrCommand, keys, kinds};

pub(crate) struct SimMachine {
    pub(crate) id: String,
    pub(crate) name: String,
    pub(crate) online: bool,
    pub(crate) isolated: bool,
    pub(crate) endpoint: Endpoint,
}

pub(crate) struct LibFile {
    pub(crate) entity: wire::LibraryFile,
    pub(crate) content: Vec<u8>,
}

pub(crate) struct SimCommand {
    pub(crate) lr: LrCommand,
    pub(crate) status: &'static str,
    pub(crate) errors: Vec<String>,
    pub(crate) start: Option<String>,
    pub(crate) end: Option<String>,
    /// Completion time once started.
    pub(crate) due: Option<Instant>,
    pub(crate) blob: Option<Vec<u8>>,
}

pub(crate) struct SimAction {
    pub(crate) id: String,
    pub(crate) kind: &'static str,
    pub(crate) machine: String,
    pub(crate) comment: String,
    pub(crate) status: &'static str,
    pub(crate) created: Instant,
    pub(crate) created_utc: String,
    pub(crate) updated_utc: String,
    pub(crate) error_hresult: i64,
    pub(crate) scope: Option<&'static str>,
    pub(crate) commands: Vec<SimCommand>,
    pub(crate) started: Option<Instant>,
    pub(crate) cancellation: Option<(String, String)>,
}

impl SimAction {
    pub(crate) fn terminal(&self) -> bool {
        matches!(self.status, "Succeeded" | "Failed" | "TimeOut" | "Cancelled")
    }

    pub(crate) fn live_response_active(&self) -> bool {
        self.kind == "LiveResponse" && !self.terminal()
    }

    pub(crate) fn to_json(&self, dns: &str, base: &str) -> Value {
        let commands: Option<Vec<Value>> = (self.kind == "LiveResponse").then(|| {
            self.commands
                .iter()
                .enumerate()
                .map(|(i, c)| {
                    json!({
                        "index": i, "startTime": c.start, "endTime": c.end,
                        "commandStatus": c.status, "errors": c.errors, "command": c.lr,
                    })
                })
                .collect()
        });
        json!({
            "@odata.context": format!("{base}/api/$metadata#MachineActions/$entity"),
            "id": self.id, "type": self.kind, "title": null, "requestor": "edrgate-sim-app",
            "requestorComment": self.comment, "status": self.status, "machineId": self.machine,
            "computerDnsName": dns, "creationDateTimeUtc": self.created_utc,
            "lastUpdateDateTimeUtc": self.updated_utc,
            "cancellationRequestor": self.cancellation.as_ref().map(|_| "edrgate-sim-app"),
            "cancellationComment": self.cancellation.as_ref().map(|c| c.0.clone()),
            "cancellationDateTimeUtc": self.cancellation.as_ref().map(|c| c.1.clone()),
            "errorHResult": self.error_hresult, "scope": self.scope, "relatedFileInfo": null,
            "commands": commands, "troubleshootInfo": null, "externalId": null,
            "requestSource": "PublicApi",
        })
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
            return Err(window.saturating_sub(now.duration_since(self.0[self.0.len() - limit])));
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
    pub(crate) link_secret: String,
    pub(crate) started: Instant,
    /// Arrival times of accepted `runliveresponse` calls.
    pub(crate) lr_arrivals: Vec<Instant>,
}

pub(crate) fn utc_now() -> String {
    let t = OffsetDateTime::now_utc();
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

/// A 40-hex machine id like the real ones (§0), stable per index.
pub fn machine_id(n: usize) -> String {
    hex::encode(Sha256::digest(format!("edrgate-sim-machine-{n}").as_bytes()))[..40].to_owned()
}

impl Runtime {
    pub(crate) fn new(cfg: SimConfig) -> Self {
        let machines = (1..=cfg.machines)
            .map(|n| {
                let name = cfg
                    .hostname_overrides
                    .iter()
                    .find(|(i, _)| *i == n)
                    .map_or_else(|| format!("{}{n:04}", cfg.hostname_prefix), |(_, h)| h.clone());
                SimMachine {
                    id: machine_id(n),
                    endpoint: Endpoint::new(&name, cfg.file_size),
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
                lib_file(name, content.clone().into_bytes(), "preloaded", true),
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
            link_secret: uuid::Uuid::now_v7().to_string(),
            started: Instant::now(),
            lr_arrivals: Vec::new(),
        }
    }

    pub(crate) fn machine(&self, id: &str) -> Option<&SimMachine> {
        self.machines.iter().find(|m| m.id.eq_ignore_ascii_case(id))
    }

    fn machine_mut(&mut self, id: &str) -> Option<&mut SimMachine> {
        self.machines.iter_mut().find(|m| m.id.eq_ignore_ascii_case(id))
    }

    pub(crate) fn machine_json(&self, m: &SimMachine) -> Value {
        json!({
            "id": m.id, "computerDnsName": m.name, "firstSeen": "2026-01-05T08:00:00Z",
            "lastSeen": utc_now(), "osPlatform": "Windows11", "osVersion": null, "version": "23H2",
            "lastIpAddress": "10.0.0.10", "lastExternalIpAddress": "198.51.100.10",
            "agentVersion": "10.8760.22621.1000",
            "healthStatus": if m.online { "Active" } else { "Inactive" },
            "onboardingStatus": "Onboarded", "deviceValue": "Normal", "rbacGroupId": 1,
            "rbacGroupName": "edrgate-sim", "riskScore": "None", "exposureLevel": "Low",
            "isAadJoined": false, "aadDeviceId": null, "machineTags": ["edrgate-sim"],
        })
    }

    pub(crate) fn action_json(&self, a: &SimAction, base: &str) -> Value {
        let dns = self.machine(&a.machine).map(|m| m.name.clone()).unwrap_or_default();
        a.to_json(&dns, base)
    }

    pub(crate) fn active_sessions(&self) -> usize {
        self.actions.iter().filter(|a| a.live_response_active()).count()
    }

    /// Validates a `runliveresponse` body (§3.1, §14.2): `Err((code, message))` for a 400.
    pub(crate) fn validate(
        &self,
        body: &Value,
    ) -> Result<wire::LiveResponseRequest, (&'static str, String)> {
        let obj = body
            .as_object()
            .ok_or(("InvalidRequestBody", "Request body is incorrect".to_owned()))?;
        if !obj.contains_key("Commands") {
            return Err((
                "MissingRequiredParameter",
                "Commands is required (body parameters are case-sensitive)".into(),
            ));
        }
        let req: wire::LiveResponseRequest = serde_json::from_value(body.clone())
            .map_err(|_| ("InvalidRequestBody", "Request body is incorrect".to_owned()))?;
        if req.commands.is_empty() {
            return Err(("InvalidInput", "Commands must not be empty".into()));
        }
        let mut rank = 0;
        for c in &req.commands {
            let (needed, allowed): (&str, &[&str]) = match c.kind.as_str() {
                kinds::PUT_FILE => (keys::FILE_NAME, &[keys::FILE_NAME]),
                kinds::RUN_SCRIPT => (keys::SCRIPT_NAME, &[keys::SCRIPT_NAME, keys::ARGS]),
                kinds::GET_FILE => (keys::PATH, &[keys::PATH]),
                other => {
                    return Err(("InvalidInput", format!("Unsupported command type '{other}'")));
                }
            };
            if let Some(p) = c.params.iter().find(|p| !allowed.contains(&p.key.as_str())) {
                return Err((
                    "InvalidInput",
                    format!("Unsupported parameter '{}' for {}", p.key, c.kind),
                ));
            }
            let Some(value) = c.param(needed).filter(|v| !v.is_empty()) else {
                return Err(("MissingRequiredParameter", format!("{} requires {needed}", c.kind)));
            };
            if needed != keys::PATH && !self.library.contains_key(value) {
                return Err((
                    "InvalidInput",
                    format!("File '{value}' was not found in the live response library"),
                ));
            }
            let r = mapping::rank(&c.kind);
            if r < rank {
                return Err((
                    "InvalidInput",
                    "Commands must be ordered PutFile, RunScript, GetFile".into(),
                ));
            }
            rank = r;
        }
        Ok(req)
    }

    pub(crate) fn create_action(
        &mut self,
        kind: &'static str,
        machine: &str,
        comment: String,
        commands: Vec<LrCommand>,
        scope: Option<&'static str>,
        now: Instant,
    ) -> usize {
        let created_utc = utc_now();
        self.actions.push(SimAction {
            id: uuid::Uuid::now_v7().to_string(),
            kind,
            machine: machine.to_owned(),
            comment,
            status: "Pending",
            created: now,
            updated_utc: created_utc.clone(),
            created_utc,
            error_hresult: 0,
            scope,
            commands: commands
                .into_iter()
                .map(|lr| SimCommand {
                    lr,
                    status: "Created",
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
        *self.counters.actions_by_type.entry(kind.to_owned()).or_default() += 1;
        if kind == "LiveResponse" {
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
            }
        }
    }

    fn advance(&mut self, i: usize, now: Instant) {
        let machine_id = self.actions[i].machine.clone();
        let online = self.machine(&machine_id).is_some_and(|m| m.online);
        let cfg_pickup = self.cfg.pickup_delay;
        let a = &mut self.actions[i];
        if a.status == "Pending" {
            if !online || now.duration_since(a.created) < cfg_pickup {
                if now.duration_since(a.created) >= self.cfg.queue_timeout {
                    a.status = "TimeOut";
                    a.updated_utc = utc_now();
                }
                return;
            }
            a.status = "InProgress";
            a.started = Some(a.created + cfg_pickup);
            a.updated_utc = utc_now();
        }
        if a.kind != "LiveResponse" {
            let isolate = a.kind == "Isolate";
            a.status = "Succeeded";
            a.updated_utc = utc_now();
            if let Some(m) = self.machine_mut(&machine_id)
                && m.isolated != isolate
            {
                m.isolated = isolate;
                self.counters.isolation_changes += 1;
            }
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
            if status == "Completed" {
                clock = due.unwrap_or(clock);
                continue;
            }
            let due = match due {
                Some(d) => d,
                None => {
                    let d = clock + self.duration_of(&self.actions[i].commands[k].lr);
                    let c = &mut self.actions[i].commands[k];
                    c.status = "Executing";
                    c.start = Some(utc_now());
                    c.due = Some(d);
                    d
                }
            };
            let is_script = self.actions[i].commands[k].lr.kind == kinds::RUN_SCRIPT;
            let timeout_at = clock + self.cfg.script_timeout;
            if is_script && due > timeout_at && now >= timeout_at {
                let a = &mut self.actions[i];
                a.commands[k].status = "Failed";
                a.commands[k].errors = vec!["Script execution timed out after 10 minutes".into()];
                a.commands[k].end = Some(utc_now());
                a.status = "TimeOut";
                a.error_hresult = endpoint::HR_TIMEOUT;
                a.updated_utc = utc_now();
                return;
            }
            if now < due {
                return;
            }
            let lr = self.actions[i].commands[k].lr.clone();
            let outcome = self.execute(&machine_id, &lr);
            let a = &mut self.actions[i];
            let c = &mut a.commands[k];
            c.end = Some(utc_now());
            *self.counters.commands_by_type.entry(c.lr.kind.clone()).or_default() += 1;
            match outcome {
                Outcome::Completed(blob) => {
                    c.status = "Completed";
                    c.blob = blob;
                    clock = due;
                }
                Outcome::Failed { errors, hresult } => {
                    // A failed command stops the chain (§3, limitation 5).
                    c.status = "Failed";
                    c.errors = errors;
                    a.status = "Failed";
                    a.error_hresult = hresult;
                    a.updated_utc = utc_now();
                    self.counters.commands_failed += 1;
                    return;
                }
            }
        }
        let a = &mut self.actions[i];
        a.status = "Succeeded";
        a.updated_utc = utc_now();
    }

    fn duration_of(&self, lr: &LrCommand) -> Duration {
        let mut d = self.cfg.command_latency;
        if lr.kind == kinds::RUN_SCRIPT
            && let Some(f) = lr.param(keys::SCRIPT_NAME).and_then(|n| self.library.get(n))
        {
            d += Duration::from_secs_f64(endpoint::script_sleep_secs(&f.content));
        }
        d
    }

    fn execute(&mut self, machine: &str, lr: &LrCommand) -> Outcome {
        let param = |k: &str| lr.param(k).unwrap_or_default().to_owned();
        let library_content =
            |rt: &Runtime, name: &str| rt.library.get(name).map(|f| f.content.clone());
        match lr.kind.as_str() {
            kinds::GET_FILE => match self.machine(machine) {
                Some(m) => m.endpoint.get_file(&param(keys::PATH)),
                None => Outcome::Failed {
                    errors: vec!["Machine was not found".into()],
                    hresult: endpoint::HR_FILE_NOT_FOUND,
                },
            },
            kinds::PUT_FILE => {
                let name = param(keys::FILE_NAME);
                let Some(content) = library_content(self, &name) else {
                    return Outcome::Failed {
                        errors: vec![format!("File {name} was not found in the library")],
                        hresult: endpoint::HR_FILE_NOT_FOUND,
                    };
                };
                match self.machine_mut(machine) {
                    Some(m) => m.endpoint.put_file(&name, content),
                    None => Outcome::Completed(None),
                }
            }
            _ => {
                let name = param(keys::SCRIPT_NAME);
                let content = library_content(self, &name).unwrap_or_default();
                if let Some(h) = mapping::Helper::from_library_name(&name) {
                    *self.counters.helper_runs.entry(h.name().to_owned()).or_default() += 1;
                }
                match self.machine_mut(machine) {
                    Some(m) => m.endpoint.run_script(&name, &param(keys::ARGS), &content),
                    None => Outcome::Completed(None),
                }
            }
        }
    }

    /// `POST …/cancel` (§6): a non-final action becomes `Cancelled`; a final one is returned
    /// as it is (the race with completion).
    pub(crate) fn cancel(&mut self, i: usize, comment: String) {
        let a = &mut self.actions[i];
        if a.terminal() {
            return;
        }
        a.status = "Cancelled";
        a.cancellation = Some((comment, utc_now()));
        a.updated_utc = utc_now();
        self.counters.cancels += 1;
    }

    /// A signed, expiring link to a command's result blob (§5).
    pub(crate) fn link(&self, base: &str, action: &str, index: usize) -> String {
        let expiry = OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000
            + self.cfg.link_lifetime.as_millis() as i128;
        format!(
            "{base}/blob/investigation-actions-data/{action}/CustomPlaybookCommandOutput/{index}?se={expiry}&sp=r&sv=2019-07-07&sr=b&sig={}",
            self.sign(action, index, expiry)
        )
    }

    pub(crate) fn sign(&self, action: &str, index: usize, expiry: i128) -> String {
        hex::encode(Sha256::digest(
            format!("{}|{action}|{index}|{expiry}", self.link_secret).as_bytes(),
        ))
    }
}

pub(crate) fn lib_file(
    name: &str,
    content: Vec<u8>,
    description: &str,
    has_parameters: bool,
) -> LibFile {
    let now = utc_now();
    LibFile {
        entity: wire::LibraryFile {
            file_name: name.to_owned(),
            sha256: Some(hex::encode(Sha256::digest(&content))),
            description: Some(description.to_owned()),
            creation_time: Some(now.clone()),
            last_updated_time: Some(now),
            created_by: Some("edrgate-sim-app".into()),
            has_parameters,
            parameters_description: None,
        },
        content,
    }
}
