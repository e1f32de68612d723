//! The vendor's JSON: request and response shapes of `/api/v1/cblr` and `/api/v1/sensor`.
//!
//! Only this module knows Carbon Black field names. Shapes follow the recorded responses of a
//! real 6.2 / 5.1 server (`tests/fixtures/`, carbonblack.md §3.1, §4.1, §7.4) and are lenient
//! where real servers are: several numeric fields arrive as JSON strings (`storage_size`
//! `"48122"`, `num_storefiles_bytes`), `object` is a string, a number (`kill`) or `null`, and
//! `result_code` is an HRESULT in signed or unsigned form (§4.4). Unknown fields are ignored.

use serde::de::{self, Deserializer};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// A live-response session (`cblr_sensor`, §3.1).
#[derive(Clone, Debug, Deserialize)]
pub(crate) struct Session {
    #[serde(deserialize_with = "lenient_u64")]
    pub id: u64,
    #[serde(deserialize_with = "lenient_u64")]
    pub sensor_id: u64,
    pub status: String,
    /// What the sensor accepts (§3.1, REC); empty while `pending`. cbapi refuses any command
    /// not listed (`_lr_post_command`, §5.3).
    #[serde(default)]
    pub supported_commands: Option<Vec<String>>,
}

/// A command object as returned by POST, GET and the command list (§4.1, §4.3).
#[derive(Clone, Debug, Deserialize)]
pub(crate) struct CbCommand {
    #[serde(deserialize_with = "lenient_u64")]
    pub id: u64,
    pub name: String,
    #[serde(default)]
    pub object: Value,
    pub status: String,
    #[serde(default, deserialize_with = "lenient_opt_i64")]
    pub result_code: Option<i64>,
    #[serde(default)]
    pub result_type: Option<String>,
    #[serde(default)]
    pub result_desc: Option<String>,
    /// `get file`: set already on the POST response (§2.7).
    #[serde(default, deserialize_with = "lenient_opt_u64")]
    pub file_id: Option<u64>,
    #[serde(default)]
    pub processes: Option<Vec<Process>>,
    #[serde(default)]
    pub files: Option<Vec<DirEntry>>,
    #[serde(default)]
    pub values: Option<Vec<RegValue>>,
    #[serde(default)]
    pub sub_keys: Option<Vec<String>>,
    #[serde(default)]
    pub value: Option<RegValue>,
    /// `create process`.
    #[serde(default, deserialize_with = "lenient_opt_u64")]
    pub pid: Option<u64>,
    #[serde(default, deserialize_with = "lenient_opt_i64")]
    pub return_code: Option<i64>,
    /// `memdump` progress.
    #[serde(default, deserialize_with = "lenient_opt_f64")]
    pub percentdone: Option<f64>,
    #[serde(default)]
    pub compressing: Option<bool>,
}

/// A `process list` row (§4.3).
#[derive(Clone, Debug, Deserialize)]
pub(crate) struct Process {
    #[serde(deserialize_with = "lenient_u64")]
    pub pid: u64,
    #[serde(default, deserialize_with = "lenient_opt_u64")]
    pub parent: Option<u64>,
    #[serde(default, deserialize_with = "lenient_opt_i64")]
    pub create_time: Option<i64>,
    #[serde(default)]
    pub proc_guid: Option<String>,
    #[serde(default)]
    pub path: Option<String>,
    #[serde(default)]
    pub command_line: Option<String>,
    #[serde(default)]
    pub sid: Option<String>,
    #[serde(default)]
    pub username: Option<String>,
}

/// A `directory list` entry. Real servers say `filename`; DOC5 says `name` (§4.3).
#[derive(Clone, Debug, Deserialize)]
pub(crate) struct DirEntry {
    #[serde(default, alias = "name")]
    pub filename: Option<String>,
    #[serde(default)]
    pub attributes: Vec<String>,
    #[serde(default, deserialize_with = "lenient_opt_u64")]
    pub size: Option<u64>,
    #[serde(default, deserialize_with = "lenient_opt_i64")]
    pub create_time: Option<i64>,
    #[serde(default, deserialize_with = "lenient_opt_i64")]
    pub last_write_time: Option<i64>,
    #[serde(default, deserialize_with = "lenient_opt_i64")]
    pub last_access_time: Option<i64>,
}

/// A registry value (`reg enum key` `values[]`, `reg query value` `value`).
#[derive(Clone, Debug, Deserialize)]
pub(crate) struct RegValue {
    #[serde(default)]
    pub value_type: String,
    #[serde(default)]
    pub value_name: String,
    #[serde(default)]
    pub value_data: Value,
}

/// A file object in session storage (§2.9–§2.12).
#[derive(Clone, Debug, Deserialize)]
pub(crate) struct FileObject {
    #[serde(deserialize_with = "lenient_u64")]
    pub id: u64,
    /// Bytes of the stored file; null when the sensor's transfer errored (§2.10–§2.12).
    #[serde(default, deserialize_with = "lenient_opt_u64")]
    pub size: Option<u64>,
}

/// A sensor record (`GET /api/v1/sensor…`, §7.4).
#[derive(Clone, Debug, Deserialize)]
pub(crate) struct Sensor {
    #[serde(deserialize_with = "lenient_u64")]
    pub id: u64,
    #[serde(default)]
    pub computer_name: String,
    #[serde(default)]
    pub status: String,
    #[serde(default, deserialize_with = "lenient_opt_u64")]
    pub os_type: Option<u64>,
    #[serde(default)]
    pub os_environment_display_string: Option<String>,
    #[serde(default)]
    pub is_isolating: Option<bool>,
    #[serde(default)]
    pub network_isolation_enabled: Option<bool>,
    #[serde(default)]
    pub last_checkin_time: Option<String>,
    #[serde(default, deserialize_with = "lenient_opt_u64")]
    pub group_id: Option<u64>,
    /// `null` on live sensors (REC); `true` once uninstalled.
    #[serde(default)]
    pub uninstalled: Option<bool>,
    /// The sensor version, `006.000.002.70329` for 6.0.2 (REC).
    #[serde(default)]
    pub build_version_string: Option<String>,
}

impl Sensor {
    /// `(major, minor)` of `build_version_string` (`"005.001.…"` is 5.1), if it parses.
    pub(crate) fn version(&self) -> Option<(u32, u32)> {
        let mut parts = self.build_version_string.as_deref()?.split('.');
        let major = parts.next()?.trim().parse().ok()?;
        let minor = parts.next()?.trim().parse().ok()?;
        Some((major, minor))
    }
}

/// A page of the v2 sensor search (`GET /api/v2/sensor`, §7.4).
#[derive(Debug, Deserialize)]
pub(crate) struct SensorPage {
    #[serde(default)]
    pub results: Vec<Sensor>,
    #[serde(default, deserialize_with = "lenient_opt_u64")]
    pub total_results: Option<u64>,
}

/// A whole sensor object with cbapi's isolation field set, as `Sensor.isolate()` /
/// `unisolate()` do before `save()` PUTs the object back (`src/cbapi/response/models.py`).
/// `None` when the field already holds the wanted value.
pub(crate) fn sensor_with_isolation(
    mut sensor: serde_json::Map<String, Value>,
    isolate: bool,
) -> Option<serde_json::Map<String, Value>> {
    const FIELD: &str = "network_isolation_enabled";
    if sensor.get(FIELD).and_then(Value::as_bool) == Some(isolate) {
        return None;
    }
    sensor.insert(FIELD.to_owned(), Value::Bool(isolate));
    Some(sensor)
}

/// `POST /api/v1/cblr/session` (§2.2): cbapi sends only the sensor id.
#[derive(Debug, Serialize)]
pub(crate) struct CreateSession {
    pub sensor_id: u64,
}

/// `PUT /api/v1/cblr/session/{sid}` with the minimal body of CLI0 (§2.4), and
/// `PUT …/command/{cid}` to cancel (§2.8).
#[derive(Debug, Serialize)]
pub(crate) struct SetStatus {
    pub id: u64,
    pub status: &'static str,
}

pub(crate) const STATUS_CLOSE: &str = "close";
pub(crate) const STATUS_CANCEL: &str = "cancel";

/// `POST …/session/{sid}/command` (§4.1, §4.3). Optional fields are sent only when set.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub(crate) struct CommandRequest {
    pub name: &'static str,
    #[serde(skip_serializing_if = "Value::is_null")]
    pub object: Value,
    pub session_id: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub offset: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub get_count: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub file_id: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub wait: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub working_directory: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub output_file: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub value_type: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub value_data: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub overwrite: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub compress: Option<bool>,
}

/// Command names exactly as the server lists them in `supported_commands` (§3.1, §4.3).
pub(crate) mod names {
    pub(crate) const PROCESS_LIST: &str = "process list";
    pub(crate) const KILL: &str = "kill";
    pub(crate) const GET_FILE: &str = "get file";
    pub(crate) const PUT_FILE: &str = "put file";
    pub(crate) const DELETE_FILE: &str = "delete file";
    pub(crate) const DIRECTORY_LIST: &str = "directory list";
    pub(crate) const CREATE_DIRECTORY: &str = "create directory";
    pub(crate) const CREATE_PROCESS: &str = "create process";
    pub(crate) const REG_ENUM_KEY: &str = "reg enum key";
    pub(crate) const REG_QUERY_VALUE: &str = "reg query value";
    pub(crate) const REG_SET_VALUE: &str = "reg set value";
    pub(crate) const REG_CREATE_KEY: &str = "reg create key";
    pub(crate) const REG_DELETE_KEY: &str = "reg delete key";
    pub(crate) const REG_DELETE_VALUE: &str = "reg delete value";
    pub(crate) const MEMDUMP: &str = "memdump";
}

/// A number, or a string holding one (real servers send both, §7.4).
#[derive(Deserialize)]
#[serde(untagged)]
enum Lenient {
    Int(i64),
    Uint(u64),
    Float(f64),
    Text(String),
}

impl Lenient {
    fn as_i128(&self) -> Option<i128> {
        match self {
            Lenient::Int(n) => Some(i128::from(*n)),
            Lenient::Uint(n) => Some(i128::from(*n)),
            // Whole floats only (`1.0`), anything else is not an integer field's value.
            Lenient::Float(f) if f.fract() == 0.0 && f.abs() < 1e18 => Some(*f as i128),
            Lenient::Float(_) => None,
            Lenient::Text(s) => s.trim().parse().ok(),
        }
    }

    fn as_f64(&self) -> Option<f64> {
        match self {
            Lenient::Int(n) => Some(*n as f64),
            Lenient::Uint(n) => Some(*n as f64),
            Lenient::Float(f) => Some(*f),
            Lenient::Text(s) => s.trim().parse().ok(),
        }
    }
}

fn lenient_u64<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    let v = Lenient::deserialize(d)?;
    v.as_i128()
        .and_then(|n| u64::try_from(n).ok())
        .ok_or_else(|| de::Error::custom("expected a non-negative integer"))
}

fn lenient_opt_u64<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    // Empty strings and nulls are "absent"; garbage is absent too rather than failing the
    // whole object over an informational field.
    let v = Option::<Lenient>::deserialize(d)?;
    Ok(v.and_then(|v| v.as_i128()).and_then(|n| u64::try_from(n).ok()))
}

fn lenient_opt_i64<'de, D: Deserializer<'de>>(d: D) -> Result<Option<i64>, D::Error> {
    let v = Option::<Lenient>::deserialize(d)?;
    Ok(v.and_then(|v| v.as_i128()).and_then(|n| i64::try_from(n).ok()))
}

fn lenient_opt_f64<'de, D: Deserializer<'de>>(d: D) -> Result<Option<f64>, D::Error> {
    let v = Option::<Lenient>::deserialize(d)?;
    Ok(v.and_then(|v| v.as_f64()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn numbers_as_strings_and_signed_hresults_parse() {
        let s: Session = serde_json::from_value(json!({
            "id": "7", "sensor_id": "3", "status": "active", "storage_size": "48122"
        }))
        .unwrap();
        assert_eq!((s.id, s.sensor_id), (7, 3));

        let c: CbCommand = serde_json::from_value(json!({
            "id": 1, "name": "kill", "object": 1660, "status": "error",
            "result_code": -2147024894i64, "result_type": "WinHresult"
        }))
        .unwrap();
        assert_eq!(c.result_code, Some(-2147024894));
        assert_eq!(c.object, json!(1660));
    }

    #[test]
    fn requests_omit_unset_fields() {
        let r = CommandRequest { name: names::PROCESS_LIST, session_id: 1, ..Default::default() };
        assert_eq!(
            serde_json::to_value(&r).unwrap(),
            json!({"name": "process list", "session_id": 1})
        );
    }
}
