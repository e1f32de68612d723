//! Serde types of the Falcon API's JSON (§1.3 envelope, §2 OAuth, §4 hosts, §5–§8 RTR). No
//! other file of the adapter parses vendor JSON. Fields are `default` wherever a recorded
//! answer omits them or sends `null` (`errors: null`, §1.3), so a sparse answer parses.

use std::collections::BTreeMap;

use serde::{Deserialize, Deserializer, Serialize};

/// `null` read as the type's default (the API sends `errors: null`, `options: null`).
fn nullable<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

/// The envelope of every JSON answer (§1.3): `resources` is an array on entity and query
/// routes, a map keyed by aid on batch routes, hence generic.
#[derive(Debug, Default, Deserialize)]
#[serde(bound(deserialize = "T: Deserialize<'de> + Default"))]
pub(crate) struct Envelope<T: Default> {
    #[serde(default, deserialize_with = "nullable")]
    pub meta: Meta,
    #[serde(default, deserialize_with = "nullable")]
    pub resources: T,
    #[serde(default, deserialize_with = "nullable")]
    pub errors: Vec<ApiError>,
}

#[derive(Debug, Default, Deserialize)]
pub(crate) struct Meta {
    #[serde(default)]
    pub pagination: Option<Pagination>,
}

#[derive(Debug, Default, Deserialize)]
pub(crate) struct Pagination {
    #[serde(default)]
    pub total: u64,
}

/// One `errors[]` item (§1.3); recorded mocks omit `code` (XSOAR-T), so it defaults to 0.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
pub(crate) struct ApiError {
    #[serde(default)]
    pub code: i64,
    #[serde(default)]
    pub message: String,
}

/// `POST /oauth2/token` → 201 (§2.1).
#[derive(Deserialize)]
pub(crate) struct Token {
    pub access_token: String,
    #[serde(default = "default_expires_in")]
    pub expires_in: u64,
}

fn default_expires_in() -> u64 {
    1799
}

/// `devices/entities/devices/v2` (§4.2).
#[derive(Clone, Debug, Default, Deserialize)]
pub(crate) struct DeviceEntity {
    pub device_id: String,
    #[serde(default, deserialize_with = "nullable")]
    pub hostname: String,
    #[serde(default, deserialize_with = "nullable")]
    pub platform_name: String,
    #[serde(default, deserialize_with = "nullable")]
    pub os_version: String,
    /// `normal` | `containment_pending` | `contained` | `lift_containment_pending`.
    #[serde(default, deserialize_with = "nullable")]
    pub status: String,
    #[serde(default)]
    pub last_seen: Option<String>,
    #[serde(default, deserialize_with = "nullable")]
    pub tags: Vec<String>,
    #[serde(default, deserialize_with = "nullable")]
    pub groups: Vec<String>,
}

/// `devices/entities/online-state/v1` (§4.2): `state` ∈ online | offline | unknown.
#[derive(Clone, Debug, Default, Deserialize)]
pub(crate) struct OnlineState {
    pub id: String,
    #[serde(default, deserialize_with = "nullable")]
    pub state: String,
}

/// `POST entities/sessions/v1` and `refresh-session/v1` bodies (§5.2).
#[derive(Serialize)]
pub(crate) struct InitRequest<'a> {
    pub device_id: &'a str,
    pub queue_offline: bool,
    pub origin: &'a str,
}

/// `domain.InitResponse` (§5.3).
#[derive(Clone, Debug, Default, Deserialize)]
pub(crate) struct InitResponse {
    #[serde(default, deserialize_with = "nullable")]
    pub session_id: String,
    #[serde(default)]
    pub offline_queued: bool,
}

/// `domain.Session` of `sessions/GET/v1` (§5.4): its `logs[]` tell what was sent on it.
#[derive(Clone, Debug, Default, Deserialize)]
pub(crate) struct Session {
    pub id: String,
    #[serde(default, deserialize_with = "nullable")]
    pub logs: Vec<SessionLog>,
}

#[derive(Clone, Debug, Default, Deserialize)]
pub(crate) struct SessionLog {
    #[serde(default, deserialize_with = "nullable")]
    pub cloud_request_id: String,
    #[serde(default, deserialize_with = "nullable")]
    pub command_string: String,
}

/// A command on one session (§6.2).
#[derive(Serialize)]
pub(crate) struct CommandRequest<'a> {
    pub base_command: &'a str,
    pub command_string: &'a str,
    pub session_id: &'a str,
    pub persist: bool,
}

/// `domain.CommandExecuteResponse` (§6.3).
#[derive(Clone, Debug, Default, Deserialize)]
pub(crate) struct CommandAccepted {
    #[serde(default, deserialize_with = "nullable")]
    pub cloud_request_id: String,
    #[serde(default)]
    pub queued_command_offline: bool,
}

/// `domain.StatusResponse` (§6.4).
#[derive(Clone, Debug, Default, Deserialize)]
pub(crate) struct CommandStatus {
    #[serde(default)]
    pub complete: bool,
    #[serde(default, deserialize_with = "nullable")]
    pub stdout: String,
    #[serde(default, deserialize_with = "nullable")]
    pub stderr: String,
    #[serde(default)]
    pub sequence_id: Option<u64>,
}

/// `POST combined/batch-init-session/v1` (§7.2).
#[derive(Serialize)]
pub(crate) struct BatchInitRequest<'a> {
    pub host_ids: &'a [String],
    pub queue_offline: bool,
}

/// Batch init answer: `batch_id` beside the envelope, per-host results keyed by aid (§7.2).
#[derive(Debug, Default, Deserialize)]
pub(crate) struct BatchInit {
    #[serde(default, deserialize_with = "nullable")]
    pub batch_id: String,
    #[serde(default, deserialize_with = "nullable")]
    pub resources: BTreeMap<String, HostResult>,
    #[serde(default, deserialize_with = "nullable")]
    pub errors: Vec<ApiError>,
}

/// `POST combined/batch-*-command/v1` (§7.3).
#[derive(Serialize)]
pub(crate) struct BatchCommandRequest<'a> {
    pub base_command: &'a str,
    pub command_string: &'a str,
    pub batch_id: &'a str,
    pub optional_hosts: &'a [String],
    pub persist_all: bool,
}

/// `POST combined/batch-get-command/v1` (§7.5).
#[derive(Serialize)]
pub(crate) struct BatchGetRequest<'a> {
    pub batch_id: &'a str,
    pub file_path: &'a str,
    pub optional_hosts: &'a [String],
}

/// Batch command answers: per-host results under `combined.resources` (§7.3).
#[derive(Debug, Default, Deserialize)]
pub(crate) struct BatchCommand {
    #[serde(default, deserialize_with = "nullable")]
    pub combined: Combined,
    #[serde(default, deserialize_with = "nullable")]
    pub errors: Vec<ApiError>,
}

#[derive(Debug, Default, Deserialize)]
pub(crate) struct Combined {
    #[serde(default, deserialize_with = "nullable")]
    pub resources: BTreeMap<String, HostResult>,
}

/// `domain.MultiStatusSensorResponse` (§7.2): one host of a batch call.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
pub(crate) struct HostResult {
    #[serde(default, deserialize_with = "nullable")]
    pub session_id: String,
    #[serde(default, deserialize_with = "nullable")]
    pub task_id: String,
    #[serde(default)]
    pub complete: bool,
    #[serde(default, deserialize_with = "nullable")]
    pub stdout: String,
    #[serde(default, deserialize_with = "nullable")]
    pub stderr: String,
    #[serde(default, deserialize_with = "nullable")]
    pub errors: Vec<ApiErrorOwned>,
    #[serde(default)]
    pub offline_queued: bool,
}

/// [`ApiError`] as kept in a checkpoint (serializable).
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
pub(crate) struct ApiErrorOwned {
    #[serde(default)]
    pub code: i64,
    #[serde(default)]
    pub message: String,
}

/// `domain.FileV2` of `entities/file/v2` (§8.1).
#[derive(Clone, Debug, Default, Deserialize)]
pub(crate) struct FileV2 {
    #[serde(default, deserialize_with = "id_string")]
    pub id: String,
    #[serde(default, deserialize_with = "nullable")]
    pub cloud_request_id: String,
    #[serde(default, deserialize_with = "nullable")]
    pub name: String,
    #[serde(default, deserialize_with = "nullable")]
    pub sha256: String,
    #[serde(default)]
    pub complete: bool,
    #[serde(default, deserialize_with = "nullable")]
    pub error_message: String,
}

/// A file id: a string in file v2, an integer in v1 and batch-get status (§1.4).
fn id_string<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    Ok(match serde_json::Value::deserialize(d)? {
        serde_json::Value::String(s) => s,
        serde_json::Value::Null => String::new(),
        other => other.to_string(),
    })
}

/// `empowerapi.RemoteCommandPutFile` (§8.3).
#[derive(Clone, Debug, Default, Deserialize)]
pub(crate) struct PutFile {
    #[serde(default, deserialize_with = "nullable")]
    pub name: String,
    #[serde(default, deserialize_with = "nullable")]
    pub sha256: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_null_and_missing_codes_parse() {
        let e: Envelope<Vec<CommandAccepted>> = serde_json::from_str(
            r#"{"meta":{"query_time":0.1},"resources":[{"session_id":"s","cloud_request_id":"c","queued_command_offline":false}],"errors":null}"#,
        )
        .unwrap();
        assert!(e.errors.is_empty());
        assert_eq!(e.resources[0].cloud_request_id, "c");
        let f: FileV2 =
            serde_json::from_str(r#"{"id": 7, "sha256": "ab", "complete": true}"#).unwrap();
        assert_eq!(f.id, "7");
    }
}
