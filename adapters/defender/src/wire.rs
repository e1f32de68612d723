//! Serde types of Defender's JSON (defender.md §1.2, §3, §4, §5, §7, §8, §10), for the
//! client. No other file of the adapter parses vendor JSON (the simulator has its own types).

use serde::{Deserialize, Deserializer, Serialize};
use serde_json::Value;

/// Live-response command types (§3.1), in the order a batch must keep.
pub(crate) mod kinds {
    pub(crate) const PUT_FILE: &str = "PutFile";
    pub(crate) const RUN_SCRIPT: &str = "RunScript";
    pub(crate) const GET_FILE: &str = "GetFile";
}

/// Param keys of live-response commands (§3.1).
pub(crate) mod keys {
    pub(crate) const FILE_NAME: &str = "FileName";
    pub(crate) const SCRIPT_NAME: &str = "ScriptName";
    pub(crate) const ARGS: &str = "Args";
    pub(crate) const PATH: &str = "Path";
}

/// Token endpoint answer (§1.2). `expires_in` is read leniently: a number or a numeric string.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct TokenResponse {
    pub(crate) token_type: String,
    #[serde(deserialize_with = "lenient_u64", default = "default_expires")]
    pub(crate) expires_in: u64,
    #[serde(default)]
    pub(crate) ext_expires_in: Option<Value>,
    pub(crate) access_token: String,
}

fn default_expires() -> u64 {
    3599
}

fn lenient_u64<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    match Value::deserialize(d)? {
        Value::Number(n) => n.as_u64().ok_or_else(|| serde::de::Error::custom("negative")),
        Value::String(s) => s.trim().parse().map_err(serde::de::Error::custom),
        _ => Err(serde::de::Error::custom("expires_in must be a number")),
    }
}

/// Entra token error (§1.2).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub(crate) struct TokenError {
    pub(crate) error: String,
    #[serde(default)]
    pub(crate) error_description: String,
    #[serde(default)]
    pub(crate) error_codes: Vec<i64>,
    #[serde(default)]
    pub(crate) timestamp: Option<String>,
    #[serde(default)]
    pub(crate) trace_id: Option<String>,
    #[serde(default)]
    pub(crate) correlation_id: Option<String>,
}

/// The API error envelope (§7): `{"error":{"code","message","target"}}`; `code` may be empty.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub(crate) struct ErrorEnvelope {
    pub(crate) error: ErrorBody,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub(crate) struct ErrorBody {
    #[serde(default)]
    pub(crate) code: String,
    #[serde(default)]
    pub(crate) message: String,
    #[serde(default)]
    pub(crate) target: Option<String>,
}

/// An OData collection.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct Collection<T> {
    #[serde(rename = "@odata.context", default, skip_serializing_if = "Option::is_none")]
    pub(crate) context: Option<String>,
    pub(crate) value: Vec<T>,
    /// The next page (OData v4 server-driven paging): the list APIs return at most one page
    /// (up to 10,000 entries, "Maximum page size is 10,000", List machines API) and a link to
    /// the rest.
    #[serde(rename = "@odata.nextLink", default, skip_serializing_if = "Option::is_none")]
    pub(crate) next_link: Option<String>,
}

/// An OData string result (the download link, §5).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct StringValue {
    #[serde(rename = "@odata.context", default, skip_serializing_if = "Option::is_none")]
    pub(crate) context: Option<String>,
    pub(crate) value: String,
}

/// A machine (§10).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Machine {
    pub(crate) id: String,
    #[serde(default)]
    pub(crate) computer_dns_name: Option<String>,
    #[serde(default)]
    pub(crate) os_platform: Option<String>,
    #[serde(default)]
    pub(crate) health_status: Option<String>,
    #[serde(default)]
    pub(crate) last_seen: Option<String>,
    #[serde(default)]
    pub(crate) last_ip_address: Option<String>,
    #[serde(default)]
    pub(crate) onboarding_status: Option<String>,
    #[serde(default)]
    pub(crate) machine_tags: Vec<String>,
    #[serde(default)]
    pub(crate) rbac_group_name: Option<String>,
}

/// `runliveresponse` body (§3.1): PascalCase top level.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct LiveResponseRequest {
    #[serde(rename = "Commands")]
    pub(crate) commands: Vec<LrCommand>,
    #[serde(rename = "Comment")]
    pub(crate) comment: String,
}

/// One live-response command: lowercase keys inside (§0).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct LrCommand {
    #[serde(rename = "type")]
    pub(crate) kind: String,
    #[serde(default)]
    pub(crate) params: Vec<Param>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Param {
    pub(crate) key: String,
    pub(crate) value: String,
}

impl LrCommand {
    pub(crate) fn new(kind: &str, params: &[(&str, &str)]) -> Self {
        LrCommand {
            kind: kind.to_owned(),
            params: params
                .iter()
                .map(|(k, v)| Param { key: (*k).to_owned(), value: (*v).to_owned() })
                .collect(),
        }
    }

    pub(crate) fn param(&self, key: &str) -> Option<&str> {
        self.params.iter().find(|p| p.key == key).map(|p| p.value.as_str())
    }
}

/// Body of isolate / unisolate / cancel (§6, §11).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct CommentBody {
    #[serde(rename = "Comment")]
    pub(crate) comment: String,
    #[serde(rename = "IsolationType", default, skip_serializing_if = "Option::is_none")]
    pub(crate) isolation_type: Option<String>,
}

/// A machine action (§4.2).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct MachineAction {
    #[serde(rename = "@odata.context", default, skip_serializing_if = "Option::is_none")]
    pub(crate) context: Option<String>,
    pub(crate) id: String,
    #[serde(rename = "type")]
    pub(crate) kind: String,
    #[serde(default)]
    pub(crate) title: Option<String>,
    #[serde(default)]
    pub(crate) requestor: Option<String>,
    #[serde(default)]
    pub(crate) requestor_comment: Option<String>,
    pub(crate) status: String,
    #[serde(default)]
    pub(crate) machine_id: Option<String>,
    #[serde(default)]
    pub(crate) computer_dns_name: Option<String>,
    #[serde(default)]
    pub(crate) creation_date_time_utc: Option<String>,
    #[serde(default)]
    pub(crate) last_update_date_time_utc: Option<String>,
    #[serde(default)]
    pub(crate) cancellation_requestor: Option<String>,
    #[serde(default)]
    pub(crate) cancellation_comment: Option<String>,
    #[serde(default)]
    pub(crate) cancellation_date_time_utc: Option<String>,
    #[serde(default)]
    pub(crate) error_h_result: i64,
    #[serde(default)]
    pub(crate) scope: Option<String>,
    #[serde(default)]
    pub(crate) commands: Option<Vec<CommandResult>>,
    #[serde(default)]
    pub(crate) external_id: Option<String>,
    #[serde(default)]
    pub(crate) request_source: Option<String>,
}

/// `CustomPlaybookCommandResult` (§4.2).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct CommandResult {
    pub(crate) index: usize,
    #[serde(default)]
    pub(crate) start_time: Option<String>,
    #[serde(default)]
    pub(crate) end_time: Option<String>,
    pub(crate) command_status: String,
    #[serde(default)]
    pub(crate) errors: Vec<String>,
    pub(crate) command: LrCommand,
}

/// A library file (§8.2).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct LibraryFile {
    pub(crate) file_name: String,
    #[serde(default)]
    pub sha256: Option<String>,
    #[serde(default)]
    pub(crate) description: Option<String>,
    #[serde(default)]
    pub(crate) creation_time: Option<String>,
    #[serde(default)]
    pub(crate) last_updated_time: Option<String>,
    #[serde(default)]
    pub(crate) created_by: Option<String>,
    #[serde(default)]
    pub(crate) has_parameters: bool,
    #[serde(default)]
    pub(crate) parameters_description: Option<String>,
}

/// The RunScript result blob (§5): `script_output` may start with a transcript banner and end
/// with NULs.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct ScriptResult {
    #[serde(default)]
    pub(crate) script_name: String,
    #[serde(default)]
    pub(crate) exit_code: i64,
    #[serde(default)]
    pub(crate) script_output: String,
    #[serde(default)]
    pub(crate) script_errors: String,
}

impl ScriptResult {
    /// Reads a result blob, leniently: the documented sample (shared/fixtures/defender,
    /// `GET_live-response-result-blob__runscript-transcript.json`, from Microsoft's "Get live
    /// response result" page) has a raw line break inside `script_output`, which strict JSON
    /// forbids. A blob strict JSON refuses is read again with the control characters inside
    /// its strings escaped; nothing else is repaired.
    pub(crate) fn parse(blob: &[u8]) -> serde_json::Result<Self> {
        serde_json::from_slice(blob).or_else(|strict| {
            let escaped = escape_raw_controls(blob);
            if escaped.len() == blob.len() {
                return Err(strict);
            }
            serde_json::from_slice(&escaped)
        })
    }
}

/// `blob` with every control character inside a JSON string written as its escape.
fn escape_raw_controls(blob: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(blob.len() + 16);
    let (mut in_string, mut escaped) = (false, false);
    for &b in blob {
        match b {
            _ if escaped => escaped = false,
            b'\\' if in_string => escaped = true,
            b'"' => in_string = !in_string,
            b'\n' if in_string => {
                out.extend_from_slice(b"\\n");
                continue;
            }
            b'\r' if in_string => {
                out.extend_from_slice(b"\\r");
                continue;
            }
            b'\t' if in_string => {
                out.extend_from_slice(b"\\t");
                continue;
            }
            0..0x20 if in_string => {
                out.extend_from_slice(format!("\\u{b:04x}").as_bytes());
                continue;
            }
            _ => {}
        }
        out.push(b);
    }
    out
}

/// edrgate's helper-script output (its own format, not Defender's JSON): defined once in
/// `edrgate-defender-helpers`, shared on purpose with the simulator.
pub(crate) use edrgate_defender_helpers::{HELPER_MARKER, HelperOutput, HelperRegValue};
