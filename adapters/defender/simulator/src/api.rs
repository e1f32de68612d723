//! Defender's JSON as the simulator speaks it: the simulator's own request and response types.
//!
//! Written from `shared/vendor-apis/defender.md` (the § numbers below) and the documented
//! examples in `adapters/defender/tests/fixtures/` (`shared/fixtures/defender/`), never from the
//! adapter's `wire.rs`: field names, casing and enum words are Microsoft's, so a mistake in the
//! adapter fails a test instead of being mirrored. `tests/simulator.rs` checks these shapes
//! against the fixtures.
//!
//! Casing (§0 [D], `common-errors.md` "Body parameters are case-sensitive"): request bodies
//! have PascalCase top-level keys (`Commands`, `Comment`, `IsolationType`) and lowercase keys
//! inside a command (`type`, `params`, `key`, `value`); responses are OData v4 JSON in
//! camelCase.

use serde::{Deserialize, Serialize};
use serde_json::Value;

// ---- requests ----

/// `POST /api/machines/{id}/runliveresponse` (§3.1 [D]; `ExternalId`, `RequestSource` and
/// `Title` are the EDMX action parameters every machine-action POST takes [E]). Unknown keys
/// (a wrong case included) are refused: an OData action takes only its declared parameters.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RunLiveResponse {
    /// Required (§3.1); its absence is `MissingRequiredParameter` (checked before parsing).
    #[serde(rename = "Commands")]
    pub(crate) commands: Vec<RequestCommand>,
    /// Documented without "required" for live response (§3.1), unlike the other actions (§11).
    #[serde(rename = "Comment", default)]
    pub(crate) comment: Option<String>,
    #[serde(rename = "ExternalId", default)]
    pub(crate) external_id: Option<String>,
    #[serde(rename = "RequestSource", default)]
    pub(crate) request_source: Option<String>,
    #[serde(rename = "Title", default)]
    pub(crate) title: Option<String>,
}

/// One command of a `runliveresponse` body: `{"type", "params": [{"key", "value"}]}` (§3.1).
/// `type` stays a string here so that an unknown word is an `InvalidInput`, not a parse error.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RequestCommand {
    #[serde(rename = "type")]
    pub(crate) kind: String,
    #[serde(default)]
    pub(crate) params: Vec<Param>,
}

/// A command parameter (§3.1): `key` is one of [`keys`], `value` a string.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Param {
    pub(crate) key: String,
    pub(crate) value: String,
}

/// The documented parameter keys (§3.1 [D]; the EDMX `CustomPlaybookParams` enum also lists
/// `IsExternalSource`, `FileUri`, `ScriptHash`, `ScriptSource`, undocumented, so refused here).
pub(crate) mod keys {
    pub(crate) const FILE_NAME: &str = "FileName";
    pub(crate) const SCRIPT_NAME: &str = "ScriptName";
    pub(crate) const ARGS: &str = "Args";
    pub(crate) const PATH: &str = "Path";
}

/// The command types `runliveresponse` accepts (§3.1 [D]: "Allowed values are PutFile,
/// RunScript, GetFile"; the EDMX's `RunPowerShell` is undocumented for this endpoint).
///
/// Declared in the order a batch must keep: "They **must be ordered PutFile → RunScript →
/// GetFile**, with any number of each" (§3.1 [D], added by microsoft-365-docs#11695), so the
/// derived `Ord` is that rule: a batch's types never go down.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub(crate) enum CommandType {
    PutFile,
    RunScript,
    GetFile,
}

impl CommandType {
    pub(crate) fn parse(word: &str) -> Option<CommandType> {
        // Enum words are case-sensitive like every body value the reference shows.
        match word {
            "PutFile" => Some(CommandType::PutFile),
            "RunScript" => Some(CommandType::RunScript),
            "GetFile" => Some(CommandType::GetFile),
            _ => None,
        }
    }

    pub(crate) fn as_str(self) -> &'static str {
        match self {
            CommandType::PutFile => "PutFile",
            CommandType::RunScript => "RunScript",
            CommandType::GetFile => "GetFile",
        }
    }

    /// The parameter a command needs, and every key it takes (§3.1 [D]).
    pub(crate) fn keys(self) -> (&'static str, &'static [&'static str]) {
        match self {
            CommandType::PutFile => (keys::FILE_NAME, &[keys::FILE_NAME]),
            CommandType::RunScript => (keys::SCRIPT_NAME, &[keys::SCRIPT_NAME, keys::ARGS]),
            CommandType::GetFile => (keys::PATH, &[keys::PATH]),
        }
    }
}

/// `POST /api/machines/{id}/isolate` (§11 [D]): `Comment` (required), `IsolationType`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct IsolateBody {
    #[serde(rename = "Comment", default)]
    pub(crate) comment: Option<String>,
    #[serde(rename = "IsolationType", default)]
    pub(crate) isolation_type: Option<String>,
    #[serde(rename = "ExternalId", default)]
    pub(crate) external_id: Option<String>,
    #[serde(rename = "RequestSource", default)]
    pub(crate) request_source: Option<String>,
    #[serde(rename = "Title", default)]
    pub(crate) title: Option<String>,
}

/// `POST /api/machines/{id}/unisolate` (§11) and `POST /api/machineactions/{id}/cancel` (§6):
/// `{"Comment": "<string>"}` (+ the EDMX optionals).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct CommentBody {
    #[serde(rename = "Comment", default)]
    pub(crate) comment: Option<String>,
    #[serde(rename = "ExternalId", default)]
    pub(crate) external_id: Option<String>,
    #[serde(rename = "RequestSource", default)]
    pub(crate) request_source: Option<String>,
    #[serde(rename = "Title", default)]
    pub(crate) title: Option<String>,
}

/// `IsolationType` words (§11 [D]).
pub(crate) const ISOLATION_TYPES: [&str; 3] = ["Full", "Selective", "UnManagedDevice"];

// ---- responses ----

/// `type` of a machine action (§4.2 [D]): the three the simulator creates.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub(crate) enum ActionType {
    LiveResponse,
    Isolate,
    Unisolate,
}

impl ActionType {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            ActionType::LiveResponse => "LiveResponse",
            ActionType::Isolate => "Isolate",
            ActionType::Unisolate => "Unisolate",
        }
    }
}

/// `status` of a machine action (§4.2 [D][E]; `Cancelled` with two Ls, microsoft-365-docs#5896).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub(crate) enum ActionStatus {
    Pending,
    InProgress,
    Succeeded,
    Failed,
    TimeOut,
    Cancelled,
}

impl ActionStatus {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            ActionStatus::Pending => "Pending",
            ActionStatus::InProgress => "InProgress",
            ActionStatus::Succeeded => "Succeeded",
            ActionStatus::Failed => "Failed",
            ActionStatus::TimeOut => "TimeOut",
            ActionStatus::Cancelled => "Cancelled",
        }
    }

    /// Final, as every client treats them (§4.3 [C]).
    pub(crate) fn is_final(self) -> bool {
        matches!(
            self,
            ActionStatus::Succeeded
                | ActionStatus::Failed
                | ActionStatus::TimeOut
                | ActionStatus::Cancelled
        )
    }
}

/// `commandStatus` (§4.2): the EDMX enum is `Executing`, `Completed`, `Failed`,
/// `PendingResource`, `Submitted`, `Created` [E]; the simulator moves through `Created` →
/// `Executing` → `Completed` | `Failed`. There is no command-level `InProgress`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub(crate) enum CommandStatus {
    Created,
    Executing,
    Completed,
    Failed,
}

/// A machine action (§4.2 [D][E]), with the full modern field set of the
/// `POST_api_machines_id_offboard.json` capture (`commands` is `[]` for non-live-response
/// actions there, not `null`).
#[derive(Clone, Debug, Serialize)]
pub(crate) struct MachineAction {
    #[serde(rename = "@odata.context", skip_serializing_if = "Option::is_none")]
    pub(crate) context: Option<String>,
    pub(crate) id: String,
    #[serde(rename = "type")]
    pub(crate) kind: ActionType,
    pub(crate) title: Option<String>,
    pub(crate) requestor: String,
    #[serde(rename = "requestorComment")]
    pub(crate) requestor_comment: Option<String>,
    pub(crate) status: ActionStatus,
    #[serde(rename = "machineId")]
    pub(crate) machine_id: String,
    #[serde(rename = "computerDnsName")]
    pub(crate) computer_dns_name: String,
    #[serde(rename = "creationDateTimeUtc")]
    pub(crate) creation_date_time_utc: String,
    /// Not `lastUpdateTimeUtc`, which one doc page shows by mistake (§4.2, #5896).
    #[serde(rename = "lastUpdateDateTimeUtc")]
    pub(crate) last_update_date_time_utc: String,
    #[serde(rename = "cancellationRequestor")]
    pub(crate) cancellation_requestor: Option<String>,
    #[serde(rename = "cancellationComment")]
    pub(crate) cancellation_comment: Option<String>,
    #[serde(rename = "cancellationDateTimeUtc")]
    pub(crate) cancellation_date_time_utc: Option<String>,
    /// `Int32` (§4.2 [E]): an HRESULT like `0x80070002` is negative here.
    #[serde(rename = "errorHResult")]
    pub(crate) error_h_result: i32,
    /// `Full`/`Selective` for isolation, else `null` (§4.2).
    pub(crate) scope: Option<String>,
    #[serde(rename = "externalId")]
    pub(crate) external_id: Option<String>,
    /// `PublicApi` for API-created actions (§4.2 [C]).
    #[serde(rename = "requestSource")]
    pub(crate) request_source: String,
    #[serde(rename = "relatedFileInfo")]
    pub(crate) related_file_info: Option<Value>,
    /// Nullable (§4.2): present for live response, left out of list answers with
    /// [`crate::SimConfig::list_omits_commands`].
    pub(crate) commands: Option<Vec<CommandResult>>,
    /// `null` for live response (§4.2).
    #[serde(rename = "troubleshootInfo")]
    pub(crate) troubleshoot_info: Option<Value>,
}

/// `CustomPlaybookCommandResult` (§4.2 [D][E]).
#[derive(Clone, Debug, Serialize)]
pub(crate) struct CommandResult {
    /// 0-based, in submit order: the `index` of the download-link call (§5).
    pub(crate) index: usize,
    #[serde(rename = "startTime")]
    pub(crate) start_time: Option<String>,
    #[serde(rename = "endTime")]
    pub(crate) end_time: Option<String>,
    #[serde(rename = "commandStatus")]
    pub(crate) command_status: CommandStatus,
    pub(crate) errors: Vec<String>,
    /// The submitted command, echoed.
    pub(crate) command: CommandEcho,
}

/// `{type, params}` as submitted (§3.2).
#[derive(Clone, Debug, Serialize)]
pub(crate) struct CommandEcho {
    #[serde(rename = "type")]
    pub(crate) kind: CommandType,
    pub(crate) params: Vec<Param>,
}

/// A live-response library file (§8.2 [D][E]; `GET_api_libraryfiles.json`).
#[derive(Clone, Debug, Serialize)]
pub(crate) struct LibraryFile {
    #[serde(rename = "fileName")]
    pub(crate) file_name: String,
    pub(crate) sha256: String,
    pub(crate) description: Option<String>,
    #[serde(rename = "creationTime")]
    pub(crate) creation_time: String,
    #[serde(rename = "lastUpdatedTime")]
    pub(crate) last_updated_time: String,
    #[serde(rename = "createdBy")]
    pub(crate) created_by: String,
    #[serde(rename = "hasParameters")]
    pub(crate) has_parameters: bool,
    /// "omitted in some sample entries" (§8.2): omitted when none was given.
    #[serde(rename = "parametersDescription", skip_serializing_if = "Option::is_none")]
    pub(crate) parameters_description: Option<String>,
}

/// A machine (§10 [D]; the field set of `GET_api_machines_id.json`).
#[derive(Clone, Debug, Serialize)]
pub(crate) struct Machine {
    /// `…/$metadata#Machines/$entity` when fetched alone (§0).
    #[serde(rename = "@odata.context", skip_serializing_if = "Option::is_none")]
    pub(crate) context: Option<String>,
    pub(crate) id: String,
    #[serde(rename = "computerDnsName")]
    pub(crate) computer_dns_name: String,
    #[serde(rename = "firstSeen")]
    pub(crate) first_seen: String,
    #[serde(rename = "lastSeen")]
    pub(crate) last_seen: String,
    #[serde(rename = "osPlatform")]
    pub(crate) os_platform: String,
    #[serde(rename = "osVersion")]
    pub(crate) os_version: Option<String>,
    #[serde(rename = "osProcessor")]
    pub(crate) os_processor: String,
    #[serde(rename = "osArchitecture")]
    pub(crate) os_architecture: String,
    /// Nullable Int64 (§10 [E]); null on Linux and macOS machines [U].
    #[serde(rename = "osBuild")]
    pub(crate) os_build: Option<u32>,
    pub(crate) version: String,
    #[serde(rename = "lastIpAddress")]
    pub(crate) last_ip_address: String,
    #[serde(rename = "lastExternalIpAddress")]
    pub(crate) last_external_ip_address: String,
    #[serde(rename = "agentVersion")]
    pub(crate) agent_version: String,
    /// `Active`, `Inactive`, … (§10).
    #[serde(rename = "healthStatus")]
    pub(crate) health_status: String,
    #[serde(rename = "defenderAvStatus")]
    pub(crate) defender_av_status: String,
    #[serde(rename = "onboardingStatus")]
    pub(crate) onboarding_status: String,
    #[serde(rename = "managedBy")]
    pub(crate) managed_by: String,
    #[serde(rename = "deviceValue")]
    pub(crate) device_value: String,
    #[serde(rename = "rbacGroupId")]
    pub(crate) rbac_group_id: u32,
    #[serde(rename = "rbacGroupName")]
    pub(crate) rbac_group_name: Option<String>,
    #[serde(rename = "riskScore")]
    pub(crate) risk_score: String,
    #[serde(rename = "exposureLevel")]
    pub(crate) exposure_level: String,
    #[serde(rename = "isAadJoined")]
    pub(crate) is_aad_joined: bool,
    #[serde(rename = "aadDeviceId")]
    pub(crate) aad_device_id: Option<String>,
    #[serde(rename = "machineTags")]
    pub(crate) machine_tags: Vec<String>,
    #[serde(rename = "ipAddresses")]
    pub(crate) ip_addresses: Vec<IpAddress>,
    #[serde(rename = "vmMetadata")]
    pub(crate) vm_metadata: Option<Value>,
}

/// One of a machine's `ipAddresses` (§10).
#[derive(Clone, Debug, Serialize)]
pub(crate) struct IpAddress {
    #[serde(rename = "ipAddress")]
    pub(crate) ip_address: String,
    #[serde(rename = "macAddress")]
    pub(crate) mac_address: String,
    #[serde(rename = "operationalStatus")]
    pub(crate) operational_status: String,
    #[serde(rename = "type")]
    pub(crate) kind: String,
}

/// An OData collection (§0): `{"@odata.context", "value", "@odata.count"?}`.
#[derive(Clone, Debug, Serialize)]
pub(crate) struct Collection<T> {
    #[serde(rename = "@odata.context")]
    pub(crate) context: String,
    #[serde(rename = "@odata.count", skip_serializing_if = "Option::is_none")]
    pub(crate) count: Option<usize>,
    pub(crate) value: Vec<T>,
    #[serde(rename = "@odata.nextLink", skip_serializing_if = "Option::is_none")]
    pub(crate) next_link: Option<String>,
}

/// An OData function result of type string (§0, §5): the download link.
#[derive(Clone, Debug, Serialize)]
pub(crate) struct StringValue {
    #[serde(rename = "@odata.context")]
    pub(crate) context: String,
    pub(crate) value: String,
}

/// The API error envelope (§7 [D]): `target` is a per-request correlation GUID.
#[derive(Clone, Debug, Serialize)]
pub(crate) struct ErrorEnvelope {
    pub(crate) error: ErrorBody,
}

#[derive(Clone, Debug, Serialize)]
pub(crate) struct ErrorBody {
    pub(crate) code: String,
    pub(crate) message: String,
    pub(crate) target: String,
    /// Present on OData parse errors, whose `code` is empty (§4.4, §7 [I] #12682).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) details: Option<Vec<Value>>,
}

/// The token answer (§1.2 [D]).
#[derive(Clone, Debug, Serialize)]
pub(crate) struct TokenResponse {
    pub(crate) token_type: &'static str,
    pub(crate) expires_in: u64,
    pub(crate) ext_expires_in: u64,
    pub(crate) access_token: String,
}

/// An Entra token error (§1.2 [D]).
#[derive(Clone, Debug, Serialize)]
pub(crate) struct TokenError {
    pub(crate) error: &'static str,
    /// Starts with `AADSTSnnnnn: `.
    pub(crate) error_description: String,
    pub(crate) error_codes: Vec<u32>,
    pub(crate) timestamp: String,
    pub(crate) trace_id: String,
    pub(crate) correlation_id: String,
}

/// The RunScript result blob (§5 [D]; `GET_live-response-result-blob__runscript-transcript.json`).
#[derive(Clone, Debug, Serialize)]
pub(crate) struct ScriptResult {
    pub(crate) script_name: String,
    pub(crate) exit_code: i64,
    /// Starts with the transcript banner and ends with NULs, as in the doc sample.
    pub(crate) script_output: String,
    pub(crate) script_errors: String,
}
