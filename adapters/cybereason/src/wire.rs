//! Cybereason's JSON, as serde types. No other file of the adapter parses vendor JSON; the
//! simulator (`edrgate-cybereason-sim`) has its own types, written from the same reference, so
//! neither side mirrors the other's mistakes. Section numbers (§) refer to
//! `shared/vendor-apis/cybereason.md`.
//!
//! Recorded responses carry booleans both as JSON booleans and as strings (`"false"`, §6.1),
//! so every boolean is read leniently.

use std::collections::BTreeMap;

use serde::{Deserialize, Deserializer, Serialize};
use serde_json::Value;

/// A boolean sent as `true` or `"true"` (any case); anything else is `false`.
pub(crate) fn lenient_bool<'de, D: Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
    Ok(match Value::deserialize(d)? {
        Value::Bool(b) => b,
        Value::String(s) => s.eq_ignore_ascii_case("true"),
        _ => false,
    })
}

fn lenient_opt_bool<'de, D: Deserializer<'de>>(d: D) -> Result<Option<bool>, D::Error> {
    Ok(match Value::deserialize(d)? {
        Value::Bool(b) => Some(b),
        Value::String(s) if s.eq_ignore_ascii_case("true") => Some(true),
        Value::String(s) if s.eq_ignore_ascii_case("false") => Some(false),
        _ => None,
    })
}

/// One filter of a sensor query or batch action (§6.1, D22).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Filter {
    pub(crate) field_name: String,
    pub(crate) operator: String,
    pub(crate) values: Vec<Value>,
}

/// `POST /rest/sensors/query` (§6.1).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct SensorsQuery {
    #[serde(default)]
    pub(crate) limit: Option<u64>,
    #[serde(default)]
    pub(crate) offset: Option<u64>,
    #[serde(default)]
    pub(crate) filters: Vec<Filter>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct SensorsPage {
    #[serde(default)]
    pub(crate) total_results: u64,
    #[serde(default)]
    pub(crate) sensors: Vec<Sensor>,
    #[serde(default, deserialize_with = "lenient_bool")]
    pub(crate) has_more_results: bool,
}

/// The fields of a sensor object edrgate uses (§6.1; many more exist).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Sensor {
    /// `<serverId>:<pylumId>`, what `sensorsIds` of batch actions take (§5).
    pub(crate) sensor_id: String,
    /// What isolation and `fetch-direct` take (§5).
    pub(crate) pylum_id: String,
    /// Machine GUID, the key of remediation's `actionsByMachine` (§5).
    pub(crate) guid: String,
    pub(crate) machine_name: String,
    #[serde(default)]
    pub(crate) fqdn: Option<String>,
    /// `Online`, `Offline`, `Stale`, `Archived`.
    #[serde(default)]
    pub(crate) status: String,
    #[serde(default, deserialize_with = "lenient_opt_bool")]
    pub(crate) isolated: Option<bool>,
    #[serde(default)]
    pub(crate) os_type: Option<String>,
    #[serde(default)]
    pub(crate) os_version_type: Option<String>,
    #[serde(default)]
    pub(crate) last_pylum_update_timestamp_ms: Option<i64>,
    #[serde(default)]
    pub(crate) group_name: Option<String>,
}

/// `POST /rest/monitor/global/commands/isolate|un-isolate` (§6.2). The answer is a map
/// pylumId → result word.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct IsolateRequest {
    pub(crate) pylum_ids: Vec<String>,
    #[serde(default)]
    pub(crate) malop_id: Option<String>,
}

/// `POST /rest/remediate` (§6.3).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct RemediateRequest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) malop_id: Option<String>,
    pub(crate) initiator_user_name: String,
    pub(crate) actions_by_machine: BTreeMap<String, Vec<RemediationAction>>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct RemediationAction {
    #[serde(default)]
    pub(crate) target_id: Option<String>,
    pub(crate) action_type: String,
}

/// A remediation, as `/rest/remediate`, `…/progress/…` and `…/status/…` return it (§6.3).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Remediation {
    #[serde(default)]
    pub(crate) malop_id: Option<String>,
    pub(crate) remediation_id: String,
    #[serde(default)]
    pub(crate) start: Option<i64>,
    #[serde(default)]
    pub(crate) end: Option<i64>,
    #[serde(default)]
    pub(crate) initiating_user: Option<String>,
    /// Empty right after submission: "not reported yet", never success (§7).
    #[serde(default)]
    pub(crate) status_log: Vec<StatusLogEntry>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct StatusLogEntry {
    #[serde(default)]
    pub(crate) machine_id: Option<String>,
    #[serde(default)]
    pub(crate) target_id: Option<String>,
    pub(crate) status: String,
    #[serde(default)]
    pub(crate) action_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) error: Option<RemediationError>,
    #[serde(default)]
    pub(crate) timestamp: Option<i64>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct RemediationError {
    #[serde(default)]
    pub(crate) message: Option<String>,
    #[serde(default)]
    pub(crate) error_type: Option<String>,
}

/// The "status" envelope (§2.1).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Envelope {
    pub(crate) status: String,
    #[serde(default)]
    pub(crate) data: Value,
    #[serde(default)]
    pub(crate) message: Option<String>,
}

/// A sensor batch object (§6.5): action responses and items of `GET /rest/sensors/allActions`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Batch {
    pub(crate) batch_id: i64,
    #[serde(default)]
    pub(crate) action_type: Option<String>,
    #[serde(default)]
    pub(crate) action_arguments: Value,
    #[serde(default)]
    pub(crate) global_stats: Option<GlobalStats>,
    #[serde(default, deserialize_with = "lenient_bool")]
    pub(crate) final_state: bool,
    #[serde(default)]
    pub(crate) total_number_of_probes: Option<u64>,
    #[serde(default)]
    pub(crate) initiator_user: Option<String>,
    #[serde(default)]
    pub(crate) start_time: Option<i64>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub(crate) struct GlobalStats {
    /// State → count; key casing varies by server version (§6.5).
    #[serde(default)]
    pub(crate) stats: BTreeMap<String, Value>,
}

/// `POST /rest/fetchfile/start` (§6.4).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct FetchStart {
    pub(crate) element_guids: Vec<String>,
    pub(crate) initiator_user_name: String,
}

/// One entry of `GET /rest/fetchfile/downloads/progress` (§6.4; other fields unknown).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct FetchProgress {
    pub(crate) file_name: String,
    #[serde(default, deserialize_with = "lenient_bool")]
    pub(crate) succeeded: bool,
    #[serde(default)]
    pub(crate) batch_id: Option<i64>,
}

/// `POST /rest/file-search/fetch-direct` (§6.4).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct FetchDirect {
    pub(crate) path: String,
    pub(crate) pylum_id: String,
}

/// `POST /rest/visualsearch/query/simple` (§6.1): a path of element types, the last one the
/// result, each hop through a connection feature.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct VisualQuery {
    pub(crate) query_path: Vec<QueryHop>,
    #[serde(default)]
    pub(crate) custom_fields: Vec<String>,
    #[serde(default)]
    pub(crate) total_result_limit: Option<u64>,
    #[serde(default)]
    pub(crate) per_group_limit: Option<u64>,
    #[serde(default)]
    pub(crate) per_feature_limit: Option<u64>,
    #[serde(default)]
    pub(crate) template_context: Option<String>,
    #[serde(default)]
    pub(crate) query_timeout: Option<u64>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct QueryHop {
    pub(crate) requested_type: String,
    #[serde(default)]
    pub(crate) filters: Vec<Facet>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) connection_feature: Option<ConnectionFeature>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub(crate) is_result: bool,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Facet {
    pub(crate) facet_name: String,
    pub(crate) values: Vec<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) filter_type: Option<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct ConnectionFeature {
    pub(crate) element_instance_type: String,
    pub(crate) feature_name: String,
}

/// The `data` of a visual-search answer: result GUID → element.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct VisualData {
    #[serde(default)]
    pub(crate) result_id_to_element_data_map: BTreeMap<String, Element>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Element {
    #[serde(default)]
    pub(crate) simple_values: BTreeMap<String, SimpleValue>,
    /// Links to other elements by feature (`ownerMachine`, `parentProcess`, `calculatedUser`,
    /// …): `{totalValues, elementValues: [{elementType, guid, name, …}]}` (XSOAR's
    /// `query_processes_raw_response.json`). Kept loose: the shapes vary by feature.
    #[serde(default)]
    pub(crate) element_values: BTreeMap<String, Value>,
    #[serde(default)]
    pub(crate) guid_string: Option<String>,
}

impl Element {
    /// The first value of a simple feature, if it has one (an empty `values` is no value).
    pub(crate) fn simple(&self, feature: &str) -> Option<&str> {
        self.simple_values.get(feature)?.values.first().map(String::as_str)
    }

    /// A field (`guid`, `name`, …) of the first element linked through `feature`.
    pub(crate) fn linked(&self, feature: &str, field: &str) -> Option<&str> {
        self.element_values.get(feature)?.get("elementValues")?.get(0)?.get(field)?.as_str()
    }
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct SimpleValue {
    #[serde(default)]
    pub(crate) total_values: u64,
    /// Values as text: recorded answers carry numbers as strings (`applicablePid: ["624"]`,
    /// stix-shifter's process capture), but a number is read too.
    #[serde(default, deserialize_with = "lenient_strings")]
    pub(crate) values: Vec<String>,
}

fn lenient_strings<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    Ok(match Value::deserialize(d)? {
        Value::Array(items) => items
            .into_iter()
            .filter_map(|v| match v {
                Value::Null => None,
                Value::String(s) => Some(s),
                other => Some(other.to_string()),
            })
            .collect(),
        _ => Vec::new(),
    })
}

/// Markers of the HTML login page (§3.1, §8.1): a body with these is the login form, never
/// a JSON answer.
pub(crate) const LOGIN_PAGE_MARKERS: [&str; 2] = ["<app-login", "Cybereason | Login"];
/// The text of the two-factor page (§3.2, C1's detector).
pub(crate) const TFA_MARKER: &str = "Two factor authentication";
/// The session cookie (§3.1).
pub(crate) const SESSION_COOKIE: &str = "JSESSIONID";
/// The element type of a file in a sensor's quarantine: "the target GUID [of
/// UNQUARANTINE_FILE] is the *quarantined-file* element (found with a \"Quarantine File\"
/// element query)" (§6.3 [DOC D12 via C6 help text]). The type's spelling, and that it keeps
/// the file's original place in `correctedPath` as File elements do, are read from that
/// sentence (element types are written without spaces: `MalopProcess`, `RegistryEvent`);
/// no capture shows one.
pub(crate) const QUARANTINE_FILE_ELEMENT: &str = "QuarantineFile";
/// Remediation action types edrgate sends (§6.3).
pub(crate) mod actions {
    pub(crate) const KILL_PROCESS: &str = "KILL_PROCESS";
    pub(crate) const QUARANTINE_FILE: &str = "QUARANTINE_FILE";
    /// Puts a quarantined file back (20.1.120+, §6.3, §9); its `targetId` is the
    /// quarantined-file element, not the original File element.
    pub(crate) const UNQUARANTINE_FILE: &str = "UNQUARANTINE_FILE";
    /// The batch action type of IR tool runs (§6.5).
    pub(crate) const IR_RUN: &str = "IRToolsRunIRTool";
}
