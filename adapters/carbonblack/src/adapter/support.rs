//! What a sensor can run: refusals decided by the sensor record (OS, version) before a session
//! is opened, and by the session's `supported_commands` before anything is sent.
//!
//! cbapi refuses, without an HTTP call, any command the session's `supported_commands` does
//! not list (`_lr_post_command`: `ApiError("Command X not supported by this sensor")`,
//! `src/cbapi/live_response_api.py`, §5.3). The list depends on the sensor: DOC5 describes it
//! as the sensor's commands "for when we support multiple commands across different
//! architectures"; `memdump` needs sensor 5.1+ (DOC5 §memdump; DOCPY: a pre-5.1 sensor refuses
//! a memory dump with `ApiError`); the registry commands and `memdump` are Windows facilities
//! that OS X and Linux sensors do not list. Part of this is known from the sensor record
//! alone (`os_type`, `build_version_string`, §7.4), so those commands are refused before a
//! session slot is spent on them; the session's own list has the last word.

use edrgate_adapter::{
    AdapterError, Command, CommandKind, Device, DeviceSupport, ErrorCode, ErrorInfo,
};

use super::{CarbonBlackAdapter, Checkpoint, SensorFacts};
use crate::mapping::{self, CbError};
use crate::wire::{self, names};

/// Sensors whose facts [`CarbonBlackAdapter::remember`] keeps at most (more than any one
/// server holds); past it the memory starts over.
const MAX_KNOWN_SENSORS: usize = 200_000;

impl SensorFacts {
    pub(super) fn of(sensor: &wire::Sensor) -> SensorFacts {
        SensorFacts {
            os_type: sensor.os_type,
            os: sensor.os_environment_display_string.clone().filter(|o| !o.trim().is_empty()),
            version: sensor.version(),
        }
    }
}

impl CarbonBlackAdapter {
    /// Keeps what a sensor record says about the sensor, for [`Self::support_of`]: a device
    /// as `find_devices` or `device` returns it has no field for the sensor's `os_type` and
    /// version, and per-device support is decided without a vendor call.
    pub(super) fn remember(&self, sensor: &wire::Sensor) {
        let mut known = self.known.lock().unwrap_or_else(|p| p.into_inner());
        if known.len() >= MAX_KNOWN_SENSORS && !known.contains_key(&sensor.id.to_string()) {
            known.clear();
        }
        known.insert(sensor.id.to_string(), SensorFacts::of(sensor));
    }

    /// What `device` can run: registry commands and `memdump` need a Windows sensor,
    /// `memdump` sensor 5.1+ (from the sensor record last seen by `find_devices`/`device`;
    /// a device never seen is given the backend's commands, and the run's own checks decide).
    pub(super) fn support_of(&self, device: &Device) -> DeviceSupport {
        let facts = {
            let known = self.known.lock().unwrap_or_else(|p| p.into_inner());
            known.get(&device.device_id).cloned()
        };
        let sensor_id = device.device_id.trim().parse().unwrap_or_default();
        self.capabilities.for_device(|kind| {
            let facts = facts.as_ref()?;
            os_dependent_names(kind)
                .iter()
                .find_map(|name| facts_rule_out(facts, name))
                .map(|reason| refusal(sensor_id, facts, reason).message)
        })
    }

    /// The sensor's facts, looked up once per run (`GET /api/v1/sensor/{id}`, as cbapi's
    /// session constructor does, §5.1).
    pub(super) async fn sensor_facts(&self, cp: &mut Checkpoint) -> Result<SensorFacts, CbError> {
        if let Some(facts) = &cp.facts {
            return Ok(facts.clone());
        }
        let sensor = self.client.sensor(cp.sensor_id).await?;
        self.remember(&sensor);
        let facts = SensorFacts::of(&sensor);
        // os_type 1 is Windows (§5.1); unknown is treated as Windows, CB's main platform.
        cp.windows = Some(facts.os_type.is_none_or(|t| t == 1));
        cp.facts = Some(facts.clone());
        Ok(facts)
    }

    /// A refusal the sensor record alone decides (registry or memdump on a sensor that cannot
    /// have them); looked up only for commands that need it.
    pub(super) async fn refused_by_sensor(
        &self,
        cp: &mut Checkpoint,
        command: &Command,
    ) -> Result<Option<ErrorInfo>, CbError> {
        let needed = mapping::cb_commands(command);
        if !needed.iter().any(|n| os_dependent(n)) {
            return Ok(None);
        }
        let facts = self.sensor_facts(cp).await?;
        Ok(needed
            .iter()
            .find_map(|name| facts_rule_out(&facts, name))
            .map(|reason| refusal(cp.sensor_id, &facts, reason)))
    }

    /// Every CB command the current command needs must be in the session's
    /// `supported_commands` (when the server gave the list).
    pub(super) fn check_supported(
        &self,
        cp: &Checkpoint,
        command: &Command,
    ) -> Result<(), CbError> {
        let Some(supported) = cp.session.as_ref().and_then(|s| s.supported.as_ref()) else {
            return Ok(());
        };
        let facts = cp.facts.clone().unwrap_or_default();
        for name in mapping::cb_commands(command) {
            if supported.iter().any(|s| s.trim().eq_ignore_ascii_case(name)) {
                continue;
            }
            let reason = facts_rule_out(&facts, name).unwrap_or_else(|| {
                format!("`{name}` is not in its live-response session's supported_commands")
            });
            let info = refusal(cp.sensor_id, &facts, reason);
            return Err(CbError::Api(AdapterError::new(info.code, info.message)));
        }
        Ok(())
    }

    /// Whether the session lists `name` (true when it gave no list).
    pub(super) fn session_supports(&self, cp: &Checkpoint, name: &str) -> bool {
        cp.session
            .as_ref()
            .and_then(|s| s.supported.as_ref())
            .is_none_or(|list| list.iter().any(|s| s.trim().eq_ignore_ascii_case(name)))
    }
}

/// The CB commands of `kind` whose availability the sensor's OS or version decides.
pub(super) fn os_dependent_names(kind: CommandKind) -> &'static [&'static str] {
    match kind {
        CommandKind::RegistryList => &[names::REG_ENUM_KEY],
        CommandKind::RegistryGet => &[names::REG_QUERY_VALUE],
        CommandKind::RegistrySet => &[names::REG_SET_VALUE],
        CommandKind::RegistryCreateKey => &[names::REG_CREATE_KEY],
        CommandKind::RegistryDeleteKey => &[names::REG_DELETE_KEY],
        CommandKind::RegistryDeleteValue => &[names::REG_DELETE_VALUE],
        CommandKind::MemoryDump => &[names::MEMDUMP],
        _ => &[],
    }
}

/// The commands whose availability the sensor's OS or version decides.
fn os_dependent(name: &str) -> bool {
    name == names::MEMDUMP || name.starts_with("reg ")
}

/// Why the sensor's OS or version rules `name` out, if it does.
fn facts_rule_out(facts: &SensorFacts, name: &str) -> Option<String> {
    let not_windows = facts.os_type.is_some_and(|t| t != 1);
    if name.starts_with("reg ") && not_windows {
        return Some(format!("`{name}`: OS X and Linux sensors have no registry commands"));
    }
    if name == names::MEMDUMP {
        if not_windows {
            return Some("memdump: only Windows sensors take memory dumps".to_owned());
        }
        if let Some((major, minor)) = facts.version.filter(|v| *v < (5, 1)) {
            return Some(format!(
                "memdump needs sensor version 5.1 or later, this sensor runs {major}.{minor}"
            ));
        }
    }
    None
}

fn refusal(sensor_id: u64, facts: &SensorFacts, reason: String) -> ErrorInfo {
    let what = match &facts.os {
        Some(os) => format!("Carbon Black sensor {sensor_id} ({os})"),
        None => format!("Carbon Black sensor {sensor_id}"),
    };
    ErrorInfo::new(
        ErrorCode::UnsupportedCommand,
        format!("{what} cannot run this command: {reason}"),
    )
}
