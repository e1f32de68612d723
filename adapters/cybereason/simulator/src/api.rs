//! Cybereason's JSON and forms as the simulator speaks them: its own request and response types.
//!
//! Written from `shared/vendor-apis/cybereason.md` (the § numbers below) and the recorded
//! responses in `adapters/cybereason/tests/fixtures/` (`shared/fixtures/cybereason/`), never
//! from the adapter's `wire.rs`: field names, casing and status words are Cybereason's, so a
//! mistake in the adapter fails a test instead of being mirrored. `tests/simulator.rs` checks the
//! response shapes against the fixtures.
//!
//! Requests are read leniently where real clients differ (§5: `sensorsIds` and `sensorIds`;
//! §6.2: `malopId` absent or `null`; §6.3: `targetId` absent when a malop is given), and unknown
//! fields are ignored: the console's clients send extra keys (`sortDirection`, `queryTimeout`…).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The session cookie (§3.1: "server sets cookie **`JSESSIONID`**").
pub(crate) const SESSION_COOKIE: &str = "JSESSIONID";

// ---- login (§3) ----

/// `POST /login.html`, `application/x-www-form-urlencoded` with `username` and `password`
/// (§3.1 [DOC D2], identical in every client C1–C9).
#[derive(Debug, Deserialize)]
pub(crate) struct LoginForm {
    pub(crate) username: String,
    pub(crate) password: String,
}

/// The two-factor step: `POST /` with `totpCode=<6 digits>` and `submit=Login`, on the cookie
/// of the login (§3.2 [CODE C1, C6, C8]). `submit` is sent by every client but not checked.
#[derive(Debug, Deserialize)]
pub(crate) struct TotpForm {
    #[serde(rename = "totpCode")]
    pub(crate) totp_code: String,
    #[serde(default)]
    #[allow(dead_code)]
    pub(crate) submit: Option<String>,
}

// ---- sensors (§6.1) ----

/// One filter: "documented exactly as `fieldName`/`operator`/`values`" (§6.1 [DOC D22]).
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Filter {
    pub(crate) field_name: String,
    /// `Equals`, `NotEquals`, `ContainsIgnoreCase`, `NotContainsIgnoreCase` (others seen on
    /// other filters, §6.1, are refused by matching nothing).
    pub(crate) operator: String,
    pub(crate) values: Vec<Value>,
}

/// `POST /rest/sensors/query` body `{limit, offset, filters, sortDirection?, sortingFieldName?}`
/// (§6.1 [DOC D22][CODE C1, C3–C5]); `{}` lists everything (XSOAR, §6.1).
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct SensorsQuery {
    #[serde(default)]
    pub(crate) limit: Option<u64>,
    #[serde(default)]
    pub(crate) offset: Option<u64>,
    #[serde(default)]
    pub(crate) filters: Vec<Filter>,
}

/// The answer of `POST /rest/sensors/query` (§6.1, fixture
/// `POST_rest_sensors_query__by-machineName.json`).
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct SensorsPage {
    pub(crate) total_results: usize,
    pub(crate) sensors_status: SensorsStatus,
    pub(crate) sensors: Vec<Sensor>,
    pub(crate) has_more_results: bool,
}

/// `sensorsStatus` with the counters the fixture carries (§6.1).
#[derive(Debug, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct SensorsStatus {
    #[serde(rename = "@class")]
    pub(crate) class: &'static str,
    pub(crate) online_count: usize,
    pub(crate) offline_count: usize,
    pub(crate) stale_count: usize,
    pub(crate) archived_count: usize,
    pub(crate) turned_on_count: usize,
    pub(crate) turned_off_count: usize,
    pub(crate) suspended_count: usize,
    pub(crate) advanced_count: usize,
    pub(crate) outdated_count: usize,
    pub(crate) service_error_count: usize,
}

/// A sensor, with every field of the recorded console's sensor objects (fixtures
/// `POST_rest_sensors_query__by-machineName.json` and `…__list.TRUNCATED.json`, 88 fields), in
/// their order, names, casing and JSON types. Booleans are real JSON booleans, as in Rapid7's
/// capture (§6.1: the fixture's strings are likely anonymisation). Fields the captures only show
/// as `null` (tags, mode origins, console version) are nullable and `null` here: the sensor is
/// untagged. Status words are the captured ones; values are derived from the simulated machine
/// (`routes::sensor`).
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Sensor {
    /// `<serverId>:<pylumId>` (§5).
    pub(crate) sensor_id: String,
    pub(crate) pylum_id: String,
    /// Machine GUID, legacy form `<int>.<int>` (§5).
    pub(crate) guid: String,
    pub(crate) fqdn: String,
    pub(crate) machine_name: String,
    pub(crate) internal_ip_address: String,
    pub(crate) external_ip_address: String,
    pub(crate) site_name: &'static str,
    pub(crate) site_id: i64,
    /// `DISABLED`, … (fixture).
    pub(crate) ransomware_status: &'static str,
    /// `ENABLED`, `DISABLED`, `NOT_INSTALLED` (fixture).
    pub(crate) prevention_status: &'static str,
    pub(crate) isolated: bool,
    /// Epoch ms of the last disconnection, 0 when never (fixture).
    pub(crate) disconnection_time: i64,
    /// Epoch ms of the sensor's last info message.
    pub(crate) last_pylum_info_msg_update_time: i64,
    pub(crate) last_pylum_update_timestamp_ms: i64,
    /// `Online`, `Offline`, `Stale`, `Archived` (§6.1).
    pub(crate) status: &'static str,
    /// `Up` / `Down` (fixture).
    pub(crate) service_status: &'static str,
    #[serde(rename = "onlineTimeMS")]
    pub(crate) online_time_ms: i64,
    #[serde(rename = "offlineTimeMS")]
    pub(crate) offline_time_ms: i64,
    #[serde(rename = "staleTimeMS")]
    pub(crate) stale_time_ms: i64,
    /// Epoch ms of the archiving, 0 when not archived, `null` when unknown (fixture: all three).
    pub(crate) archive_time_ms: Option<i64>,
    #[serde(rename = "statusTimeMS")]
    pub(crate) status_time_ms: i64,
    /// `Archive` once archived, `None` otherwise (fixture spellings).
    pub(crate) last_status_action: &'static str,
    pub(crate) archived_or_unarchive_comment: String,
    pub(crate) sensor_archived_by_user: String,
    pub(crate) server_name: &'static str,
    pub(crate) server_id: String,
    pub(crate) server_ip: &'static str,
    pub(crate) private_server_ip: &'static str,
    pub(crate) collective_uuid: &'static str,
    pub(crate) os_type: &'static str,
    pub(crate) os_version_type: &'static str,
    /// `ADVANCED`, `ENABLED` (fixture).
    pub(crate) collection_status: &'static str,
    pub(crate) version: &'static str,
    pub(crate) console_version: Option<String>,
    /// Epoch ms the console first saw the sensor.
    pub(crate) first_seen_time: i64,
    /// Milliseconds since the machine booted.
    pub(crate) up_time: i64,
    /// Fraction of a CPU (fixture: `0.004162435`).
    pub(crate) cpu_usage: f64,
    /// Bytes.
    pub(crate) memory_usage: i64,
    pub(crate) outdated: bool,
    pub(crate) am_status: &'static str,
    pub(crate) am_mode_origin: Option<&'static str>,
    /// Anti-virus signature database version, a number as a string (fixture).
    pub(crate) av_db_version: String,
    pub(crate) av_db_last_update_time: i64,
    pub(crate) power_shell_status: &'static str,
    /// `AC_ENABLED` / `AC_DISABLED` (§6.1).
    pub(crate) remote_shell_status: &'static str,
    pub(crate) usb_status: &'static str,
    pub(crate) fw_status: &'static str,
    pub(crate) anti_exploit_status: &'static str,
    pub(crate) document_protection_status: &'static str,
    pub(crate) document_protection_mode: &'static str,
    pub(crate) serial_number: String,
    pub(crate) device_model: &'static str,
    pub(crate) organizational_unit: String,
    pub(crate) anti_malware_status: &'static str,
    pub(crate) anti_malware_mode_origin: Option<&'static str>,
    pub(crate) organization: &'static str,
    pub(crate) proxy_address: String,
    pub(crate) prevention_error: String,
    pub(crate) exit_reason: &'static str,
    pub(crate) actions_in_progress: u32,
    pub(crate) pending_actions: Vec<Value>,
    pub(crate) last_upgrade_result: Option<&'static str>,
    pub(crate) department: Option<String>,
    pub(crate) location: Option<String>,
    pub(crate) critical_asset: Option<String>,
    pub(crate) device_type: Option<String>,
    pub(crate) custom_tags: Option<Value>,
    pub(crate) last_upgrade_steps: Vec<Value>,
    pub(crate) disconnected: bool,
    pub(crate) static_analysis_detect_mode: &'static str,
    pub(crate) static_analysis_detect_mode_origin: Option<&'static str>,
    pub(crate) static_analysis_prevent_mode: &'static str,
    pub(crate) static_analysis_prevent_mode_origin: Option<&'static str>,
    /// `["Metadata"]` on the captured Windows sensors, empty on the Linux one.
    pub(crate) collection_components: Vec<&'static str>,
    pub(crate) sensor_last_update: i64,
    /// `UNKNOWN` (fixture).
    pub(crate) full_scan_status: &'static str,
    pub(crate) quick_scan_status: &'static str,
    /// Epoch ms, whole seconds (fixture), 0 when never.
    pub(crate) last_full_schedule_scan_success_time: i64,
    pub(crate) last_quick_schedule_scan_success_time: i64,
    pub(crate) policy_name: &'static str,
    /// Epoch ms the policy reached the sensor.
    pub(crate) delivery_time: i64,
    pub(crate) policy_id: &'static str,
    pub(crate) compliance: bool,
    pub(crate) group_id: &'static str,
    pub(crate) group_name: &'static str,
    pub(crate) group_stickiness: bool,
    /// `Manual` / `Dynamic` (fixture).
    pub(crate) group_stickiness_label: &'static str,
}

// ---- isolation (§6.2) ----

/// `POST /rest/monitor/global/commands/isolate|un-isolate` body `{pylumIds, malopId}`: the docs
/// mark both required [DOC D15], clients send only `pylumIds` or `"malopId": null`
/// [CODE C3–C5], so `malopId` is optional. The answer is a bare map pylumId → result word.
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct IsolateRequest {
    pub(crate) pylum_ids: Vec<String>,
    #[serde(default)]
    #[allow(dead_code)]
    pub(crate) malop_id: Option<String>,
}

/// Isolation result words (§6.2). Only `Succeeded` is captured; the failure word for an unknown
/// pylum id is the batch vocabulary's `UnknownProbe` (§6.5) — the simulator's choice, the real
/// strings are not captured (§11.5).
pub(crate) mod isolation {
    pub(crate) const SUCCEEDED: &str = "Succeeded";
    pub(crate) const UNKNOWN_PROBE: &str = "UnknownProbe";
}

// ---- remediation (§6.3) ----

/// `POST /rest/remediate` `{malopId?, initiatorUserName, actionsByMachine: {<machine GUID>:
/// [{targetId, actionType}]}}` (§6.3 [DOC D12][CODE C3–C6, C9]).
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct RemediateRequest {
    #[serde(default)]
    pub(crate) malop_id: Option<String>,
    #[allow(dead_code)]
    pub(crate) initiator_user_name: String,
    /// Keyed by the machine GUID, which "is not the pylumId" (§6.3 [DOC D12]).
    pub(crate) actions_by_machine: BTreeMap<String, Vec<RemediationAction>>,
}

/// One action; `targetId` is left out when a malop is given (§6.3 [DOC D12 via C6]).
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct RemediationAction {
    #[serde(default)]
    pub(crate) target_id: Option<String>,
    pub(crate) action_type: String,
}

/// `malopId` of a remediation started without a malop (§6.3, Rapid7 capture I4).
pub(crate) const NOMALOP: &str = "NOMALOP";

/// Remediation `actionType`s the simulated sensor carries out (§6.3).
pub(crate) mod actions {
    pub(crate) const KILL_PROCESS: &str = "KILL_PROCESS";
    pub(crate) const QUARANTINE_FILE: &str = "QUARANTINE_FILE";
    /// Puts a quarantined file back; console 20.1.120 or later (§6.3, §9).
    pub(crate) const UNQUARANTINE_FILE: &str = "UNQUARANTINE_FILE";
    pub(crate) const DELETE_REGISTRY_KEY: &str = "DELETE_REGISTRY_KEY";
    /// Action types that take a `targetId` without a malop: "supported only for processes
    /// (KILL_PROCESS) and files (QUARANTINE_FILE/UNQUARANTINE_FILE)" (§6.3 [DOC D12 via C6]).
    /// Any other action so addressed ends `FAILURE`/`INVALID_ARGUMENT`: the console's reaction
    /// is not captured, and that is its recorded answer to a target it cannot use.
    pub(crate) const TARGET_WITHOUT_MALOP: [&str; 3] =
        [KILL_PROCESS, QUARANTINE_FILE, UNQUARANTINE_FILE];
    /// The sensor batch `actionType` of IR tool runs (§6.5 [DOC D8]).
    pub(crate) const IR_RUN: &str = "IRToolsRunIRTool";
}

/// Remediation `statusLog[].status` words: `SUCCESS`, `PENDING`, `IN_PROGRESS` [DOC D13] and
/// `FAILURE` [CODE C3 fixture] (§6.3).
pub(crate) mod remediation_status {
    pub(crate) const PENDING: &str = "PENDING";
    pub(crate) const IN_PROGRESS: &str = "IN_PROGRESS";
    pub(crate) const SUCCESS: &str = "SUCCESS";
    pub(crate) const FAILURE: &str = "FAILURE";
}

/// A remediation, as `POST /rest/remediate`, `…/progress/…` and `…/status/…` return it (§6.3,
/// fixture `POST_rest_remediate__failure-INVALID_ARGUMENT.json`).
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Remediation {
    pub(crate) malop_id: String,
    pub(crate) remediation_id: String,
    pub(crate) start: i64,
    /// Epoch ms of the end. Always present, a number as in the capture (whose first answer
    /// carries it); 0 while the remediation runs: the capture does not show a running one, and
    /// 0 is how the console writes a time that has not happened (`disconnectionTime`,
    /// `abortTime`, §6.5). §6.3 notes `end` "may be absent".
    pub(crate) end: i64,
    pub(crate) initiating_user: String,
    /// Empty right after submission (§6.3, I4).
    pub(crate) status_log: Vec<StatusLogEntry>,
}

#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct StatusLogEntry {
    pub(crate) machine_id: String,
    pub(crate) target_id: String,
    pub(crate) status: &'static str,
    pub(crate) action_type: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) error: Option<RemediationError>,
    pub(crate) timestamp: i64,
}

/// `error{message, errorType}`, e.g. `INVALID_ARGUMENT` for a bad target (§6.3).
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct RemediationError {
    pub(crate) message: String,
    pub(crate) error_type: String,
}

// ---- visual search (§6.1, alternative lookup) ----

/// `POST /rest/visualsearch/query/simple` `{queryPath, customFields, perFeatureLimit,
/// perGroupLimit, totalResultLimit, queryTimeout, templateContext}` (§6.1 [CODE C1, C3, C4]);
/// only `queryPath` matters to the simulator.
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct VisualQuery {
    pub(crate) query_path: Vec<QueryHop>,
}

/// A hop: `{requestedType, filters: [{facetName, values}], connectionFeature?, isResult?}`.
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct QueryHop {
    pub(crate) requested_type: String,
    #[serde(default)]
    pub(crate) filters: Vec<Facet>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Facet {
    pub(crate) facet_name: String,
    pub(crate) values: Vec<Value>,
}

// ---- files (§6.4) ----

/// `POST /rest/fetchfile/start` `{elementGuids, initiatorUserName}` (§6.4 [DOC D11][CODE C3]).
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct FetchStart {
    pub(crate) element_guids: Vec<String>,
    #[allow(dead_code)]
    pub(crate) initiator_user_name: String,
}

/// `POST /rest/file-search/fetch-direct` `{path, pylumId}` (§6.4 [CODE C1]).
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct FetchDirect {
    pub(crate) path: String,
    pub(crate) pylum_id: String,
}

/// The "status" envelope (§2.1), as `fetchfile/start` answers it (fixture
/// `POST_rest_fetchfile_start.json`: `data` is the string `"true"` there; docs: Boolean).
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct StatusEnvelope {
    pub(crate) data: Value,
    /// `SUCCESS`, `PARTIAL_SUCCESS`, `FAILURE`, … (§2.1).
    pub(crate) status: &'static str,
    pub(crate) hide_partial_success: bool,
    pub(crate) message: String,
    pub(crate) expected_results: usize,
    pub(crate) failures: usize,
    pub(crate) failed_servers_info: FailedServersInfo,
}

#[derive(Debug, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct FailedServersInfo {
    pub(crate) online_failed_servers: Vec<Value>,
    pub(crate) offline_servers: Vec<Value>,
    pub(crate) online_failed_servers_percentage: f64,
    pub(crate) total_failed_servers_percentage: f64,
}

/// One entry of `GET /rest/fetchfile/downloads/progress` `{"data": [...]}`: `fileName`,
/// `succeeded`, `batchId` (§6.4 [CODE C3]; other fields unknown, `machineName` is the
/// simulator's addition).
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct FetchProgress {
    pub(crate) file_name: String,
    pub(crate) succeeded: bool,
    pub(crate) batch_id: i64,
    pub(crate) machine_name: String,
}

// ---- sensor batches and IR tools (§6.5, §6.6) ----

/// The batch object of `POST /rest/sensors/action/<verb>`, `GET /rest/sensors/abort/{id}` and
/// `GET /rest/sensors/allActions` (§6.5 [DOC D8–D10][CODE C3, C5], fixture
/// `GET_rest_sensors_allActions.TRUNCATED.json`).
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Batch {
    pub(crate) batch_id: i64,
    pub(crate) action_type: &'static str,
    pub(crate) action_arguments: Value,
    pub(crate) global_stats: GlobalStats,
    pub(crate) final_state: bool,
    pub(crate) total_number_of_probes: usize,
    pub(crate) initiator_user: String,
    pub(crate) creator_user: String,
    pub(crate) start_time: i64,
    pub(crate) aborter_user: Option<String>,
    pub(crate) abort_time: i64,
    pub(crate) abort_timeout: bool,
    pub(crate) abort_http_status_code: Option<u16>,
}

/// `globalStats.stats`: state → count, key casing by server version (§6.5).
#[derive(Debug, Serialize)]
pub(crate) struct GlobalStats {
    pub(crate) stats: serde_json::Map<String, Value>,
}

/// Per-sensor states of a batch the simulator uses, from the §6.5 vocabulary (§6.6.1: IR
/// statuses are "most likely drawn from the §6.5 state vocabulary").
pub(crate) mod batch_state {
    pub(crate) const PENDING: &str = "Pending";
    pub(crate) const IN_PROGRESS: &str = "InProgress";
    pub(crate) const SUCCEEDED: &str = "Succeeded";
    pub(crate) const FAILED: &str = "Failed";
    pub(crate) const ABORTED: &str = "Aborted";
    pub(crate) const DISCONNECTED: &str = "Disconnected";
    pub(crate) const TIMEOUT: &str = "Timeout";
    /// The counters every batch object carries here (a subset of §6.5's list).
    pub(crate) const ALL: [&str; 7] =
        [PENDING, IN_PROGRESS, SUCCEEDED, FAILED, ABORTED, DISCONNECTED, TIMEOUT];
}

/// The IR run body (§6.6.2, unpublished): the batch framework's `{sensorsIds | filters,
/// argument}` (§6.5 [DOC D22]) with the package name in `argument`, or the forensic run's
/// `toolName` (§6.6.4 [DOC D6]); `sensorsIds` or `sensorIds` (§5, both spellings seen). Read
/// from a `Value` because the key spellings vary.
pub(crate) struct IrRun {
    pub(crate) sensor_ids: Vec<String>,
    pub(crate) package: String,
    pub(crate) arguments: Value,
}

impl IrRun {
    pub(crate) fn from_json(body: &Value) -> IrRun {
        let sensor_ids = ["sensorsIds", "sensorIds"]
            .iter()
            .find_map(|k| body.get(*k).and_then(Value::as_array))
            .map(|a| a.iter().filter_map(Value::as_str).map(str::to_owned).collect())
            .unwrap_or_default();
        let package = ["argument", "toolName"]
            .iter()
            .find_map(|k| body.get(*k).and_then(Value::as_str))
            .unwrap_or_default()
            .to_owned();
        IrRun {
            sensor_ids,
            package,
            arguments: body.get("arguments").cloned().unwrap_or(Value::Null),
        }
    }
}

/// `actionArguments` of an IR run: the `@class` form of §6.5's examples; the class name is the
/// simulator's invention, following `…configuration.models.<area>.<Name>Parameters`.
pub(crate) fn ir_run_arguments(package: &str, arguments: &Value) -> Value {
    serde_json::json!({
        "@class": "com.cybereason.configuration.models.irtools.RunIRToolParameters",
        "packageName": package,
        "arguments": arguments,
    })
}

/// One package of `GET /rest/irtools/packages` (§6.6.3: response shape not captured; the
/// simulator's choice, after C1's upload metadata).
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Package {
    pub(crate) package_name: String,
    pub(crate) size: u64,
    pub(crate) upload_time: i64,
}

/// Multipart field names of `POST /rest/irtools/upload` (§6.6.3 [CODE C1], unverified): the
/// file part and the package name, in C1's spelling (`pacakgeName`, sic) and the plain one.
pub(crate) mod upload {
    pub(crate) const FILE_PART: &str = "packageInfo";
    pub(crate) const NAME_FIELDS: [&str; 2] = ["packageName", "pacakgeName"];
    /// "max 100 MB" (§6.6.3).
    pub(crate) const MAX_PACKAGE: usize = 100 * 1024 * 1024;
}

/// `GET /rest/monitor/global/server/version/all` → `{"data": {"version": "21.2.221"}}` (§6.7
/// [CODE C1]).
#[derive(Debug, Serialize)]
pub(crate) struct VersionAll {
    pub(crate) data: VersionData,
}

#[derive(Debug, Serialize)]
pub(crate) struct VersionData {
    pub(crate) version: String,
}
