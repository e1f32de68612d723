//! The simulator's state: users and sessions, sensors with their endpoints, remediations,
//! sensor batches (IR tool runs), packages and fetch batches, advanced by `tick`.

use std::collections::BTreeMap;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use rand::Rng as _;
use serde_json::{Value, json};

use super::endpoint::{Endpoint, hash64};
use super::{Counters, SimConfig, StatsCasing};

pub(crate) struct Session {
    pub(crate) user: String,
    /// False while the TOTP step is outstanding.
    pub(crate) authenticated: bool,
    pub(crate) created: Instant,
    pub(crate) expired: bool,
}

pub(crate) struct Machine {
    pub(crate) hostname: String,
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
    pub(crate) arguments: Value,
    pub(crate) user: String,
    pub(crate) start_ms: i64,
    pub(crate) created: Instant,
    pub(crate) sensors: Vec<IrSensor>,
    pub(crate) aborted_by: Option<String>,
}

pub(crate) struct FetchBatch {
    pub(crate) id: i64,
    pub(crate) machine: usize,
    pub(crate) file_path: String,
    pub(crate) created: Instant,
}

pub(crate) struct Runtime {
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
}

pub(crate) fn epoch_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(0))
}

impl Runtime {
    pub(crate) fn new(cfg: SimConfig) -> Self {
        let server = "5e77883de4b0575ddcf824ef";
        let machines = (1..=cfg.machines)
            .map(|i| {
                let hostname = format!("{}{i:04}", cfg.hostname_prefix);
                let pylum_id = format!("PYLUMCLIENT_SIMULATOR_{hostname}_0800273A{i:04X}");
                // Legacy machine GUID form: two signed ints joined by `.` (§5).
                let prefix = i64::from(i32::try_from(hash64(&hostname) >> 33).unwrap_or(0));
                Machine {
                    sensor_id: format!("{server}:{pylum_id}"),
                    endpoint: Endpoint::new(&hostname, prefix),
                    hostname,
                    pylum_id,
                    online: true,
                    archived: false,
                    isolated: false,
                    os_type: "WINDOWS",
                }
            })
            .collect();
        let packages = cfg.packages.iter().map(|p| (p.clone(), (1024, epoch_ms()))).collect();
        Runtime {
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

    /// Advances remediations and batches to `now`.
    pub(crate) fn tick(&mut self, now: Instant) {
        let delay = self.cfg.remediation_delay;
        for r in &mut self.remediations {
            let age = now.duration_since(r.created);
            for item in &mut r.items {
                if matches!(item.status, Some("SUCCESS" | "FAILURE")) {
                    continue;
                }
                let machine = &mut self.machines[item.machine];
                if age < delay / 2 {
                    continue;
                }
                if !machine.online {
                    // Kill is not queued for an offline machine; everything else waits (§6.3).
                    if item.action == "KILL_PROCESS" {
                        item.status = Some("FAILURE");
                        item.error = Some((
                            "MACHINE_NOT_CONNECTED".into(),
                            "Machine must be connected to Cybereason in order to perform this action.".into(),
                        ));
                    } else {
                        item.status = Some("PENDING");
                    }
                    item.timestamp = epoch_ms();
                    continue;
                }
                if age < delay {
                    item.status = Some("IN_PROGRESS");
                    item.timestamp = epoch_ms();
                    continue;
                }
                match machine.endpoint.remediate(&item.action, &item.target) {
                    Ok(()) => {
                        item.status = Some("SUCCESS");
                        self.counters.remediations_executed += 1;
                    }
                    Err(error) => {
                        item.status = Some("FAILURE");
                        item.error = Some(error);
                    }
                }
                item.timestamp = epoch_ms();
            }
            if r.end_ms.is_none()
                && r.items.iter().all(|i| matches!(i.status, Some("SUCCESS" | "FAILURE")))
            {
                r.end_ms = Some(epoch_ms());
            }
        }
        let step = self.cfg.ir_step;
        for b in &mut self.batches {
            let age = now.duration_since(b.created);
            for s in &mut b.sensors {
                if matches!(s.status, "Succeeded" | "Failed" | "Aborted") {
                    continue;
                }
                let machine = &self.machines[s.machine];
                if !machine.online {
                    continue;
                }
                s.status = if age < step {
                    "Pending"
                } else if age < step * 2 {
                    "InProgress"
                } else if self
                    .cfg
                    .ir_fail_hosts
                    .iter()
                    .any(|h| h.eq_ignore_ascii_case(&machine.hostname))
                {
                    s.error = Some("The tool exited with code 1".into());
                    "Failed"
                } else {
                    "Succeeded"
                };
            }
        }
    }

    pub(crate) fn remediation_json(&self, r: &Remediation) -> Value {
        let log: Vec<Value> = r
            .items
            .iter()
            .filter_map(|i| {
                let status = i.status?;
                let mut entry = json!({
                    "machineId": self.machines[i.machine].guid(),
                    "targetId": i.target,
                    "status": status,
                    "actionType": i.action,
                    "timestamp": i.timestamp,
                });
                if let Some((kind, message)) = &i.error {
                    entry["error"] = json!({"message": message, "errorType": kind});
                }
                Some(entry)
            })
            .collect();
        let mut v = json!({
            "malopId": r.malop,
            "remediationId": r.id,
            "start": r.start_ms,
            "initiatingUser": r.user,
            "statusLog": log,
        });
        if let Some(end) = r.end_ms {
            v["end"] = end.into();
        }
        v
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
        for word in
            ["Pending", "InProgress", "Succeeded", "Failed", "Aborted", "Disconnected", "Timeout"]
        {
            let n = b.sensors.iter().filter(|s| s.status == word).count();
            stats.insert(self.key(word), n.into());
        }
        let final_state =
            b.sensors.iter().all(|s| matches!(s.status, "Succeeded" | "Failed" | "Aborted"));
        json!({
            "batchId": b.id,
            "actionType": b.action_type,
            "actionArguments": b.arguments,
            "globalStats": {"stats": stats},
            "finalState": final_state,
            "totalNumberOfProbes": b.sensors.len(),
            "initiatorUser": b.user,
            "creatorUser": b.user,
            "startTime": b.start_ms,
            "aborterUser": b.aborted_by,
            "abortTime": 0,
            "abortTimeout": false,
            "abortHttpStatusCode": null,
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
