//! The simulator's state: users and sessions, sensors with their endpoints, remediations,
//! sensor batches (IR tool runs), packages and fetch batches, advanced by `tick`.

use std::collections::BTreeMap;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use edrgate_simkit::SimLog;
use rand::Rng as _;
use serde_json::{Value, json};

use crate::api::{self, actions, batch_state, remediation_status};
use crate::endpoint::{Endpoint, hash64};
use crate::{Counters, SimConfig, StatsCasing};

pub(crate) struct Session {
    pub(crate) user: String,
    /// False while the TOTP step is outstanding.
    pub(crate) authenticated: bool,
    pub(crate) created: Instant,
    pub(crate) expired: bool,
}

pub(crate) struct Machine {
    pub(crate) hostname: String,
    /// Epoch ms of the last disconnection (the sensor's `disconnectionTime`), 0 when never.
    pub(crate) disconnected_at: i64,
    pub(crate) pylum_id: String,
    pub(crate) sensor_id: String,
    pub(crate) online: bool,
    pub(crate) archived: bool,
    pub(crate) isolated: bool,
    pub(crate) os_type: &'static str,
    pub(crate) endpoint: Endpoint,
}

impl Machine {
    pub(crate) fn guid(&self) -> String {
        self.endpoint.machine_guid(&self.hostname)
    }
}

pub(crate) struct RemediationItem {
    pub(crate) machine: usize,
    pub(crate) target: String,
    pub(crate) action: String,
    /// `None` until the sensor reported; then the statusLog entry.
    pub(crate) status: Option<&'static str>,
    pub(crate) error: Option<(String, String)>,
    pub(crate) timestamp: i64,
    /// A `targetId` the console cannot act on without a malop (§6.3: "`targetId` without malop
    /// is supported only for processes (KILL_PROCESS) and files (QUARANTINE_FILE/
    /// UNQUARANTINE_FILE)"): it ends `FAILURE`, the endpoint untouched.
    pub(crate) needs_malop: bool,
}

pub(crate) struct Remediation {
    pub(crate) id: String,
    pub(crate) malop: String,
    pub(crate) user: String,
    pub(crate) start_ms: i64,
    pub(crate) end_ms: Option<i64>,
    pub(crate) created: Instant,
    pub(crate) items: Vec<RemediationItem>,
}

pub(crate) struct IrSensor {
    pub(crate) machine: usize,
    pub(crate) status: &'static str,
    pub(crate) error: Option<String>,
}

pub(crate) struct Batch {
    pub(crate) id: i64,
    pub(crate) action_type: &'static str,
    /// The IR tool package the batch runs.
    pub(crate) package: String,
    pub(crate) arguments: Value,
    pub(crate) user: String,
    pub(crate) start_ms: i64,
    pub(crate) created: Instant,
    pub(crate) sensors: Vec<IrSensor>,
    pub(crate) aborted_by: Option<String>,
    /// Epoch ms of the abort, 0 when none (§6.5: `abortTime` ms|0).
    pub(crate) abort_ms: i64,
}

pub(crate) struct FetchBatch {
    pub(crate) id: i64,
    pub(crate) machine: usize,
    pub(crate) file_path: String,
    pub(crate) created: Instant,
}

pub(crate) struct Runtime {
    /// The fault settings, for the console's clock (`clock_skew_secs`).
    pub(crate) clock: edrgate_simkit::SimFaults,
    pub(crate) cfg: SimConfig,
    pub(crate) sessions: BTreeMap<String, Session>,
    pub(crate) machines: Vec<Machine>,
    pub(crate) remediations: Vec<Remediation>,
    pub(crate) batches: Vec<Batch>,
    pub(crate) packages: BTreeMap<String, (u64, i64)>,
    pub(crate) fetches: Vec<FetchBatch>,
    pub(crate) counters: Counters,
    /// A one-shot fault: the next request to this path finds its session expired.
    pub(crate) expire_before: Option<String>,
    /// A one-shot fault: the next request to this path runs, but its response is lost.
    pub(crate) drop_response_of: Option<String>,
    /// What the simulated sensors and console executed.
    pub(crate) log: SimLog,
}

/// A per-sensor batch state no later tick changes.
pub(crate) fn is_final(state: &str) -> bool {
    matches!(state, batch_state::SUCCEEDED | batch_state::FAILED | batch_state::ABORTED)
}

pub(crate) fn to_json(v: &impl serde::Serialize) -> Value {
    serde_json::to_value(v).unwrap_or(Value::Null)
}

/// The host's clock in epoch milliseconds, for what is not the console's own record (e.g.
/// endpoint process start times). The console's timestamps come from [`Runtime::epoch_ms`].
pub(crate) fn epoch_ms() -> i64 {
    millis(SystemTime::now())
}

fn millis(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(0))
}

impl Runtime {
    /// The console's clock in epoch milliseconds (moved by `clock_skew_secs`): every timestamp
    /// the console records or answers with comes from here.
    pub(crate) fn epoch_ms(&self) -> i64 {
        millis(self.clock.now())
    }

    pub(crate) fn new(cfg: SimConfig, log: SimLog, clock: edrgate_simkit::SimFaults) -> Self {
        let server = "5e77883de4b0575ddcf824ef";
        let machines = (1..=cfg.machines)
            .map(|i| {
                let hostname = format!("{}{i:04}", cfg.hostname_prefix);
                let pylum_id = format!("PYLUMCLIENT_SIMULATOR_{hostname}_0800273A{i:04X}");
                // Legacy machine GUID form: two signed ints joined by `.` (§5).
                let prefix = i64::from(i32::try_from(hash64(&hostname) >> 33).unwrap_or(0));
                let os = cfg.os_of(i);
                Machine {
                    sensor_id: format!("{server}:{pylum_id}"),
                    endpoint: Endpoint::new(&hostname, prefix, os),
                    hostname,
                    disconnected_at: 0,
                    pylum_id,
                    online: true,
                    archived: false,
                    isolated: false,
                    os_type: os.os_type(),
                }
            })
            .collect();
        let packages = cfg.packages.iter().map(|p| (p.clone(), (1024, epoch_ms()))).collect();
        Runtime {
            clock,
            cfg,
            sessions: BTreeMap::new(),
            machines,
            remediations: Vec::new(),
            batches: Vec::new(),
            packages,
            fetches: Vec::new(),
            counters: Counters::default(),
            expire_before: None,
            drop_response_of: None,
            log,
        }
    }

    /// A new session id: 32 upper-case hex characters (§3.1).
    pub(crate) fn new_session(&mut self, user: &str, authenticated: bool, now: Instant) -> String {
        let id: String = (0..16).map(|_| format!("{:02X}", rand::rng().random::<u8>())).collect();
        self.sessions.insert(
            id.clone(),
            Session { user: user.to_owned(), authenticated, created: now, expired: false },
        );
        id
    }

    /// The user of a valid, authenticated session.
    pub(crate) fn session_user(&self, id: &str, now: Instant) -> Option<String> {
        let s = self.sessions.get(id)?;
        (s.authenticated && !s.expired && now.duration_since(s.created) < self.cfg.session_lifetime)
            .then(|| s.user.clone())
    }

    pub(crate) fn machine_by_pylum(&self, pylum: &str) -> Option<usize> {
        self.machines.iter().position(|m| m.pylum_id.eq_ignore_ascii_case(pylum))
    }

    pub(crate) fn machine_by_sensor(&self, id: &str) -> Option<usize> {
        self.machines.iter().position(|m| m.sensor_id == id || m.pylum_id == id)
    }

    pub(crate) fn machine_by_guid(&self, guid: &str) -> Option<usize> {
        self.machines.iter().position(|m| m.guid() == guid)
    }

    pub(crate) fn machine_by_name(&self, name: &str) -> Option<usize> {
        self.machines.iter().position(|m| m.hostname.eq_ignore_ascii_case(name))
    }

    /// Advances remediations and batches to `now`, recording what the sensors executed.
    pub(crate) fn tick(&mut self, now: Instant) {
        let now_ms = self.epoch_ms();
        let delay = self.cfg.remediation_delay;
        for r in &mut self.remediations {
            let age = now.duration_since(r.created);
            for item in &mut r.items {
                if matches!(
                    item.status,
                    Some(remediation_status::SUCCESS | remediation_status::FAILURE)
                ) {
                    continue;
                }
                let machine = &mut self.machines[item.machine];
                if age < delay / 2 {
                    continue;
                }
                if item.needs_malop {
                    item.status = Some(remediation_status::FAILURE);
                    item.error = Some(crate::endpoint::invalid_argument());
                    item.timestamp = now_ms;
                    continue;
                }
                if !machine.online {
                    // Kill is not queued for an offline machine; everything else waits (§6.3,
                    // XSOAR's message for it).
                    if item.action == actions::KILL_PROCESS {
                        item.status = Some(remediation_status::FAILURE);
                        item.error = Some((
                            "MACHINE_NOT_CONNECTED".into(),
                            "Machine must be connected to Cybereason in order to perform this action.".into(),
                        ));
                    } else {
                        item.status = Some(remediation_status::PENDING);
                    }
                    item.timestamp = now_ms;
                    continue;
                }
                if age < delay {
                    item.status = Some(remediation_status::IN_PROGRESS);
                    item.timestamp = now_ms;
                    continue;
                }
                let outcome = machine.endpoint.remediate(&item.action, &item.target);
                let (status, error) = match outcome {
                    Ok(()) => {
                        self.counters.remediations_executed += 1;
                        (remediation_status::SUCCESS, None)
                    }
                    Err(error) => (remediation_status::FAILURE, Some(error)),
                };
                self.log.record(
                    &item.action,
                    &machine.pylum_id,
                    json!({
                        "remediationId": r.id,
                        "malopId": r.malop,
                        "machine": machine.hostname,
                        "machineId": machine.guid(),
                        "targetId": item.target,
                        "status": status,
                        "errorType": error.as_ref().map(|e| e.0.clone()),
                    }),
                );
                item.status = Some(status);
                item.error = error;
                item.timestamp = now_ms;
            }
            if r.end_ms.is_none()
                && r.items.iter().all(|i| {
                    matches!(
                        i.status,
                        Some(remediation_status::SUCCESS | remediation_status::FAILURE)
                    )
                })
            {
                r.end_ms = Some(now_ms);
            }
        }
        let step = self.cfg.ir_step;
        for b in &mut self.batches {
            let age = now.duration_since(b.created);
            for s in &mut b.sensors {
                if is_final(s.status) {
                    continue;
                }
                let machine = &self.machines[s.machine];
                if !machine.online {
                    continue;
                }
                s.status = if age < step {
                    batch_state::PENDING
                } else if age < step * 2 {
                    batch_state::IN_PROGRESS
                } else if self
                    .cfg
                    .ir_fail_hosts
                    .iter()
                    .any(|h| h.eq_ignore_ascii_case(&machine.hostname))
                {
                    s.error = Some("The tool exited with code 1".into());
                    batch_state::FAILED
                } else {
                    batch_state::SUCCEEDED
                };
                if is_final(s.status) {
                    // The tool ran on the sensor (whatever its exit code).
                    self.log.record(
                        b.action_type,
                        &machine.pylum_id,
                        json!({
                            "batchId": b.id,
                            "machine": machine.hostname,
                            "sensorId": machine.sensor_id,
                            "package": b.package,
                            "arguments": b.arguments["arguments"],
                            "status": s.status,
                            "error": s.error,
                        }),
                    );
                }
            }
        }
    }

    pub(crate) fn remediation_json(&self, r: &Remediation) -> Value {
        let status_log = r
            .items
            .iter()
            .filter_map(|i| {
                Some(api::StatusLogEntry {
                    machine_id: self.machines[i.machine].guid(),
                    target_id: i.target.clone(),
                    status: i.status?,
                    action_type: i.action.clone(),
                    error: i.error.as_ref().map(|(kind, message)| api::RemediationError {
                        message: message.clone(),
                        error_type: kind.clone(),
                    }),
                    timestamp: i.timestamp,
                })
            })
            .collect();
        to_json(&api::Remediation {
            malop_id: r.malop.clone(),
            remediation_id: r.id.clone(),
            start: r.start_ms,
            end: r.end_ms.unwrap_or(0),
            initiating_user: r.user.clone(),
            status_log,
        })
    }

    fn key(&self, word: &str) -> String {
        match self.cfg.stats_casing {
            StatsCasing::Pascal => word.to_owned(),
            StatsCasing::Camel => {
                let mut c = word.chars();
                c.next()
                    .map(|f| f.to_ascii_lowercase().to_string() + c.as_str())
                    .unwrap_or_default()
            }
        }
    }

    /// A batch object (§6.5) with its per-state counters in the configured key casing.
    pub(crate) fn batch_json(&self, b: &Batch) -> Value {
        let mut stats = serde_json::Map::new();
        for word in batch_state::ALL {
            let n = b.sensors.iter().filter(|s| s.status == word).count();
            stats.insert(self.key(word), n.into());
        }
        to_json(&api::Batch {
            batch_id: b.id,
            action_type: b.action_type,
            action_arguments: b.arguments.clone(),
            global_stats: api::GlobalStats { stats },
            final_state: b.sensors.iter().all(|s| is_final(s.status)),
            total_number_of_probes: b.sensors.len(),
            initiator_user: b.user.clone(),
            creator_user: b.user.clone(),
            start_time: b.start_ms,
            aborter_user: b.aborted_by.clone(),
            abort_time: b.abort_ms,
            abort_timeout: false,
            abort_http_status_code: None,
        })
    }

    /// Per-sensor rows of `getRunIRToolStatus` (D1: `Sensor`, `Status`, `Error`).
    pub(crate) fn ir_rows(&self, b: &Batch) -> Value {
        Value::Array(
            b.sensors
                .iter()
                .map(|s| {
                    let mut row = serde_json::Map::new();
                    row.insert(
                        self.key("Sensor"),
                        self.machines[s.machine].sensor_id.clone().into(),
                    );
                    row.insert(self.key("Status"), s.status.into());
                    row.insert(self.key("Error"), s.error.clone().map_or(Value::Null, Value::from));
                    Value::Object(row)
                })
                .collect(),
        )
    }

    /// A new signed 32-bit batch id (§5).
    pub(crate) fn batch_id(&self) -> i64 {
        loop {
            let id = i64::from(rand::rng().random::<i32>());
            if !self.batches.iter().any(|b| b.id == id) && !self.fetches.iter().any(|f| f.id == id)
            {
                return id;
            }
        }
    }

    pub(crate) fn is_expired(&self, f: &FetchBatch, now: Instant) -> bool {
        now.duration_since(f.created) > self.cfg.fetch_batch_ttl
    }

    pub(crate) fn fetch_ready(&self, f: &FetchBatch, now: Instant) -> bool {
        now.duration_since(f.created) >= self.cfg.fetch_delay
    }
}
