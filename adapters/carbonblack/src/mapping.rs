//! Every translation between Carbon Black and the normalized model, in one place:
//!
//! - [`classify`]: HTTP failures → [`CbError`] (the only place HTTP statuses are read);
//! - [`SESSION_STATUSES`], [`COMMAND_STATUSES`]: vendor status words → [`Status`];
//! - [`HRESULTS`]: command failure codes → [`ErrorCode`], raw code kept as `vendor_code`;
//! - vendor rows (processes, directory entries, registry values, sensors) → model types;
//! - normalized commands → vendor command requests.

use std::time::Duration;

use edrgate_adapter::http;
use edrgate_adapter::{
    AdapterError, Command, CommandResult, Device, DirectoryEntry, ErrorCode, ErrorInfo,
    ProcessInfo, RegistryValue, Status,
};
use reqwest::StatusCode;
use reqwest::header::HeaderMap;
use serde_json::Value;

use crate::wire::{self, CbCommand, CommandRequest, names};

/// A failed vendor call, split by what the caller must do about it.
#[derive(Clone, Debug, thiserror::Error)]
pub(crate) enum CbError {
    /// The session is gone (`404 Session N not found` / `Sensor …`, carbonblack.md §2.3, §5.3):
    /// the run forgets it and opens another one. The request did not take effect.
    #[error("live-response session lost: {0}")]
    SessionLost(String),
    /// Anything else, already in the normalized vocabulary.
    #[error(transparent)]
    Api(#[from] AdapterError),
}

impl CbError {
    pub(crate) fn is_retryable(&self) -> bool {
        matches!(self, CbError::Api(e) if e.is_retryable())
    }

    pub(crate) fn retry_after(&self) -> Option<Duration> {
        match self {
            CbError::Api(e) => e.retry_after,
            CbError::SessionLost(_) => None,
        }
    }

    /// The normalized error, once nothing more can be done about a lost session.
    pub(crate) fn into_adapter(self) -> AdapterError {
        match self {
            CbError::Api(e) => e,
            CbError::SessionLost(text) => AdapterError::new(
                ErrorCode::DeviceOffline,
                "the live-response session with the sensor ended",
            )
            .with_vendor("404", text),
        }
    }
}

/// HTTP status codes with a Carbon Black meaning (§3.4).
mod status_codes {
    use reqwest::StatusCode;
    /// Live Response disabled in `cb.conf` (`CbLREnabled=False`), on every `/api/v1/cblr` route.
    pub(super) const LR_DISABLED: StatusCode = StatusCode::PRECONDITION_FAILED;
}

/// The one function that turns a non-2xx answer into an error (style guideline 6).
pub(crate) fn classify(status: StatusCode, headers: &HeaderMap, body: &str) -> CbError {
    let text = body.trim().trim_start_matches('"');
    let snippet: String = text.chars().take(300).collect();
    match status {
        // cbapi keys its reconnect off these prefixes (§5.3); PHANTOM checks the same text.
        StatusCode::NOT_FOUND if text.starts_with("Session") || text.starts_with("Sensor") => {
            CbError::SessionLost(snippet)
        }
        status_codes::LR_DISABLED => CbError::Api(
            AdapterError::new(
                ErrorCode::VendorRejected,
                "live response is disabled on the Carbon Black server (CbLREnabled)",
            )
            .with_vendor("412", snippet),
        ),
        _ => CbError::Api(http::status_error(status, headers, &snippet)),
    }
}

/// Session status words (§3.1, §3.2). `pending` waits for the sensor's check-in, `active` is
/// usable; the others mean the session is gone and the run opens a new one (cbapi also sees
/// `error` while polling, §5.2). A word not listed is treated as `pending`.
pub(crate) const SESSION_STATUSES: &[(&str, Status)] = &[
    ("pending", Status::Dispatched),
    ("active", Status::Running),
    ("timeout", Status::TimedOut),
    ("inactive", Status::Failed),
    ("close", Status::Cancelled),
    ("error", Status::Failed),
];

/// Command status words (§4.2). A word not listed keeps the command waiting, as cbapi does,
/// until the command timeout.
pub(crate) const COMMAND_STATUSES: &[(&str, Status)] = &[
    ("pending", Status::Dispatched),
    ("in progress", Status::Running),
    ("complete", Status::Succeeded),
    ("error", Status::Failed),
    ("cancel", Status::Cancelled),
];

pub(crate) fn session_status(word: &str) -> Status {
    lookup(SESSION_STATUSES, word).unwrap_or(Status::Dispatched)
}

pub(crate) fn command_status(word: &str) -> Status {
    lookup(COMMAND_STATUSES, word).unwrap_or(Status::Running)
}

fn lookup(table: &[(&str, Status)], word: &str) -> Option<Status> {
    let word = word.trim();
    table.iter().find(|(w, _)| w.eq_ignore_ascii_case(word)).map(|(_, s)| *s)
}

/// HRESULTs a command can fail with (§4.4, names from cbapi's `winerror.py`), with the closest
/// normalized code. Codes not listed are `command_failed`, still with their raw value.
pub(crate) const HRESULTS: &[(u32, &str, ErrorCode)] = &[
    (0x8007_0002, "ERROR_FILE_NOT_FOUND", ErrorCode::FileNotFound),
    (0x8007_0003, "ERROR_PATH_NOT_FOUND", ErrorCode::FileNotFound),
    (0x8007_0005, "ERROR_ACCESS_DENIED", ErrorCode::AccessDenied),
    (0x8007_0011, "ERROR_NOT_SAME_DEVICE", ErrorCode::CommandFailed),
    (0x8007_0020, "ERROR_SHARING_VIOLATION", ErrorCode::CommandFailed),
    (0x8007_0021, "ERROR_LOCK_VIOLATION", ErrorCode::CommandFailed),
    (0x8007_0050, "ERROR_FILE_EXISTS", ErrorCode::CommandFailed),
    (0x8007_0057, "ERROR_INVALID_PARAMETER", ErrorCode::CommandFailed),
    (0x8007_0070, "ERROR_DISK_FULL", ErrorCode::CommandFailed),
    (0x8007_007B, "ERROR_INVALID_NAME", ErrorCode::CommandFailed),
    (0x8007_0091, "ERROR_DIR_NOT_EMPTY", ErrorCode::CommandFailed),
    (0x8007_00B7, "ERROR_ALREADY_EXISTS", ErrorCode::CommandFailed),
    (0x8007_0490, "ERROR_NOT_FOUND", ErrorCode::CommandFailed),
    (0x8007_05B4, "ERROR_TIMEOUT", ErrorCode::Timeout),
    (0x8007_000E, "ERROR_OUTOFMEMORY", ErrorCode::CommandFailed),
    (0x8000_4005, "E_FAIL", ErrorCode::CommandFailed),
    (0x8000_4001, "E_NOTIMPL", ErrorCode::CommandFailed),
];

/// An HRESULT delivered signed (`-2147024894`) or unsigned (`2147942402`), as 32 bits.
pub(crate) fn hresult(code: i64) -> Option<u32> {
    if code < 0 { i32::try_from(code).ok().map(|c| c as u32) } else { u32::try_from(code).ok() }
}

/// The name of an HRESULT: from [`HRESULTS`], else `WIN32_ERROR_<n>` for a FACILITY_WIN32
/// code (low 16 bits, as cbapi decodes them, §4.4).
fn hresult_name(code: u32) -> Option<String> {
    if let Some((_, name, _)) = HRESULTS.iter().find(|(c, _, _)| *c == code) {
        return Some((*name).to_owned());
    }
    const FACILITY_WIN32: u32 = 7;
    ((code >> 16) & 0x1fff == FACILITY_WIN32 && code & 0x8000_0000 != 0)
        .then(|| format!("WIN32_ERROR_{}", code & 0xffff))
}

/// The error of a command that ended in `error` (§4.4).
pub(crate) fn command_error(cmd: &CbCommand) -> ErrorInfo {
    let result_type = cmd.result_type.as_deref().unwrap_or("WinHresult");
    let desc = cmd.result_desc.as_deref().unwrap_or("").trim();
    let Some(raw) = cmd.result_code else {
        let message = format!("{} failed on the endpoint", cmd.name);
        return ErrorInfo::new(ErrorCode::CommandFailed, message)
            .with_vendor(result_type.to_owned(), desc.to_owned());
    };
    match hresult(raw).filter(|_| result_type.eq_ignore_ascii_case("WinHresult")) {
        Some(code) => {
            let known = HRESULTS.iter().find(|(c, _, _)| *c == code);
            let error_code = known.map_or(ErrorCode::CommandFailed, |(_, _, e)| *e);
            let name = hresult_name(code);
            let vendor_message = match (&name, desc.is_empty()) {
                (Some(n), true) => n.clone(),
                (Some(n), false) => format!("{n}: {desc}"),
                (None, _) => desc.to_owned(),
            };
            let message = format!(
                "{} failed on the endpoint: {}",
                cmd.name,
                name.as_deref().unwrap_or("unknown HRESULT")
            );
            ErrorInfo::new(error_code, message).with_vendor(format!("0x{code:08X}"), vendor_message)
        }
        None => ErrorInfo::new(
            ErrorCode::CommandFailed,
            format!("{} failed on the endpoint ({result_type})", cmd.name),
        )
        .with_vendor(raw.to_string(), format!("{result_type}: {desc}")),
    }
}

/// A `process list` row. The name is the file name of `path` (empty for System), else of the
/// command line's first token.
pub(crate) fn process(p: wire::Process) -> ProcessInfo {
    let non_empty =
        |s: &Option<String>| s.as_deref().filter(|s| !s.trim().is_empty()).map(str::to_owned);
    let path = non_empty(&p.path);
    let command_line = non_empty(&p.command_line);
    let name = path
        .as_deref()
        .map(base_name)
        .or_else(|| {
            command_line
                .as_deref()
                .and_then(|c| c.split_whitespace().next())
                .map(|t| base_name(t.trim_matches('"')))
        })
        .map(str::to_owned)
        .unwrap_or_else(|| match p.pid {
            0 => "System Idle Process".to_owned(),
            4 => "System".to_owned(),
            pid => format!("pid {pid}"),
        });
    ProcessInfo {
        pid: p.pid,
        parent_pid: p.parent,
        name,
        path,
        command_line,
        username: non_empty(&p.username),
        sid: non_empty(&p.sid),
        started_at: p.create_time,
        vendor_id: non_empty(&p.proc_guid),
    }
}

/// `directory list` entries, without the `.` and `..` pseudo-entries (cbapi `walk` skips them).
pub(crate) fn directory(files: Vec<wire::DirEntry>) -> Vec<DirectoryEntry> {
    files
        .into_iter()
        .filter_map(|f| {
            let name = f.filename?;
            if name == "." || name == ".." {
                return None;
            }
            Some(DirectoryEntry {
                is_directory: f.attributes.iter().any(|a| a.eq_ignore_ascii_case("DIRECTORY")),
                name,
                size: f.size.unwrap_or(0),
                attributes: f.attributes,
                created_at: f.create_time,
                modified_at: f.last_write_time,
                accessed_at: f.last_access_time,
            })
        })
        .collect()
}

pub(crate) fn registry_value(v: wire::RegValue) -> RegistryValue {
    RegistryValue { name: v.value_name, value_type: v.value_type, data: v.value_data }
}

/// A sensor as a device. `online` is the sensor's own status (cbapi's scheduler keeps only
/// `Online` sensors, §6); `isolated` prefers the effective state over the requested one.
pub(crate) fn device(backend: &str, s: wire::Sensor) -> Device {
    Device {
        backend: backend.to_owned(),
        device_id: s.id.to_string(),
        hostname: s.computer_name,
        online: s.status.eq_ignore_ascii_case("Online"),
        os: s.os_environment_display_string.filter(|o| !o.is_empty()),
        isolated: s.is_isolating.or(s.network_isolation_enabled),
        last_seen: s.last_checkin_time,
        // CB sensor groups are known by id on this API (§7.4); tags do not exist.
        group: s.group_id.map(|g| g.to_string()),
        tags: Vec::new(),
    }
}

/// The request of a command that takes one round trip and needs nothing but its arguments.
/// `None` for the commands with several steps or extra inputs (files, processes, dumps,
/// containment), which the adapter builds with the helpers below.
pub(crate) fn simple_request(cmd: &Command, session_id: u64) -> Option<CommandRequest> {
    let req = |name: &'static str, object: Value| CommandRequest {
        name,
        object,
        session_id,
        ..Default::default()
    };
    Some(match cmd {
        Command::ProcessList => req(names::PROCESS_LIST, Value::Null),
        // cbapi sends the pid as a number (§4.3).
        Command::KillProcess { pid, .. } => req(names::KILL, Value::from(*pid)),
        Command::DeleteFile { path } => req(names::DELETE_FILE, path.as_str().into()),
        Command::ListDirectory { path } => {
            req(names::DIRECTORY_LIST, directory_filter(path).into())
        }
        Command::CreateDirectory { path } => req(names::CREATE_DIRECTORY, path.as_str().into()),
        Command::RegistryList { key } => req(names::REG_ENUM_KEY, key.as_str().into()),
        Command::RegistryGet { key, value } => {
            req(names::REG_QUERY_VALUE, registry_path(key, value).into())
        }
        Command::RegistrySet { key, value, value_type, data, overwrite } => CommandRequest {
            value_type: Some(value_type.as_str()),
            value_data: Some(data.clone()),
            overwrite: Some(*overwrite),
            ..req(names::REG_SET_VALUE, registry_path(key, value).into())
        },
        Command::RegistryCreateKey { key } => req(names::REG_CREATE_KEY, key.as_str().into()),
        Command::RegistryDeleteKey { key } => req(names::REG_DELETE_KEY, key.as_str().into()),
        Command::RegistryDeleteValue { key, value } => {
            req(names::REG_DELETE_VALUE, registry_path(key, value).into())
        }
        Command::GetFile { .. }
        | Command::PutFile { .. }
        | Command::Execute { .. }
        | Command::RunScript { .. }
        | Command::MemoryDump { .. }
        | Command::QuarantineFile { .. }
        | Command::UnquarantineFile { .. }
        | Command::Isolate
        | Command::Release => return None,
    })
}

/// The result of a completed one-round-trip command.
pub(crate) fn simple_result(cmd: &Command, done: CbCommand) -> CommandResult {
    match cmd {
        Command::ProcessList => CommandResult::Processes {
            processes: done.processes.unwrap_or_default().into_iter().map(process).collect(),
        },
        Command::ListDirectory { .. } => {
            CommandResult::Directory { entries: directory(done.files.unwrap_or_default()) }
        }
        Command::RegistryList { .. } => CommandResult::RegistryKey {
            sub_keys: done.sub_keys.unwrap_or_default(),
            values: done.values.unwrap_or_default().into_iter().map(registry_value).collect(),
        },
        Command::RegistryGet { value, .. } => CommandResult::RegistryValue {
            value: done.value.map(registry_value).unwrap_or_else(|| RegistryValue {
                name: value.clone(),
                value_type: String::new(),
                data: Value::Null,
            }),
        },
        _ => CommandResult::Done,
    }
}

/// Every CB command a normalized command may send (§4.3), in order: the ones its result
/// needs (`get file` of an output or dump) and edrgate's cleanup (`delete file` of a
/// temporary file) included. Empty for what needs no live-response session.
pub(crate) fn cb_commands(cmd: &Command) -> Vec<&'static str> {
    match cmd {
        Command::ProcessList => vec![names::PROCESS_LIST],
        Command::KillProcess { .. } => vec![names::KILL],
        Command::DeleteFile { .. } => vec![names::DELETE_FILE],
        Command::ListDirectory { .. } => vec![names::DIRECTORY_LIST],
        Command::CreateDirectory { .. } => vec![names::CREATE_DIRECTORY],
        Command::RegistryList { .. } => vec![names::REG_ENUM_KEY],
        Command::RegistryGet { .. } => vec![names::REG_QUERY_VALUE],
        Command::RegistrySet { .. } => vec![names::REG_SET_VALUE],
        Command::RegistryCreateKey { .. } => vec![names::REG_CREATE_KEY],
        Command::RegistryDeleteKey { .. } => vec![names::REG_DELETE_KEY],
        Command::RegistryDeleteValue { .. } => vec![names::REG_DELETE_VALUE],
        Command::GetFile { .. } => vec![names::GET_FILE],
        Command::PutFile { .. } => vec![names::PUT_FILE],
        Command::Execute { wait, output_file, .. } => {
            let mut v = vec![names::CREATE_PROCESS];
            if *wait {
                v.push(names::GET_FILE);
                if output_file.is_none() {
                    v.push(names::DELETE_FILE);
                }
            }
            v
        }
        Command::MemoryDump { path, fetch } => {
            let mut v = vec![names::MEMDUMP];
            if *fetch {
                v.push(names::GET_FILE);
                if path.is_none() {
                    v.push(names::DELETE_FILE);
                }
            }
            v
        }
        Command::RunScript { .. }
        | Command::QuarantineFile { .. }
        | Command::UnquarantineFile { .. }
        | Command::Isolate
        | Command::Release => Vec::new(),
    }
}

/// `directory list` of a file's own path: with `FindFirstFile` semantics (a path without a
/// wildcard names the entry itself, §4.3) its single entry carries the file's `size`.
pub(crate) fn stat_request(session_id: u64, path: &str) -> CommandRequest {
    CommandRequest {
        name: names::DIRECTORY_LIST,
        object: path.trim_end_matches(['\\', '/']).into(),
        session_id,
        ..Default::default()
    }
}

pub(crate) fn get_file_request(
    session_id: u64,
    path: &str,
    offset: u64,
    count: u64,
) -> CommandRequest {
    CommandRequest {
        name: names::GET_FILE,
        object: path.into(),
        session_id,
        offset: Some(offset),
        get_count: Some(count),
        ..Default::default()
    }
}

pub(crate) fn put_file_request(session_id: u64, path: &str, file_id: u64) -> CommandRequest {
    CommandRequest {
        name: names::PUT_FILE,
        object: path.into(),
        session_id,
        file_id: Some(file_id),
        ..Default::default()
    }
}

pub(crate) fn delete_file_request(session_id: u64, path: &str) -> CommandRequest {
    CommandRequest {
        name: names::DELETE_FILE,
        object: path.into(),
        session_id,
        ..Default::default()
    }
}

pub(crate) fn create_process_request(
    session_id: u64,
    command_line: &str,
    wait: bool,
    working_directory: Option<&str>,
    output_file: Option<&str>,
) -> CommandRequest {
    CommandRequest {
        name: names::CREATE_PROCESS,
        object: command_line.into(),
        session_id,
        wait: Some(wait),
        working_directory: working_directory.map(str::to_owned),
        output_file: output_file.map(str::to_owned),
        ..Default::default()
    }
}

pub(crate) fn memdump_request(session_id: u64, path: &str) -> CommandRequest {
    CommandRequest {
        name: names::MEMDUMP,
        object: path.into(),
        session_id,
        compress: Some(false),
        ..Default::default()
    }
}

/// `object` as text, to match a listed command against a recorded intent (the server echoes
/// the request's `object`; a pid may come back as a number or a string).
pub(crate) fn object_text(object: &Value) -> String {
    match object {
        Value::Null => String::new(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// The `directory list` object for a directory: its entries, `dir\*`, as cbapi `walk` and
/// CLI0 do (§4.3). A path that already holds a wildcard is a filter and is sent as is.
pub(crate) fn directory_filter(path: &str) -> String {
    if path.contains(['*', '?']) {
        path.to_owned()
    } else if path.ends_with(['\\', '/']) {
        format!("{path}*")
    } else {
        let sep = if path.starts_with('/') { '/' } else { '\\' };
        format!("{path}{sep}*")
    }
}

/// `key\value`, the `object` of value-level registry commands (§4.3).
pub(crate) fn registry_path(key: &str, value: &str) -> String {
    format!("{}\\{value}", key.trim_end_matches('\\'))
}

/// The last component of a Windows or POSIX path.
pub(crate) fn base_name(path: &str) -> &str {
    path.rsplit(['\\', '/']).find(|s| !s.is_empty()).unwrap_or(path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::{HeaderValue, RETRY_AFTER};
    use serde_json::json;

    /// The `body` of a recorded fixture (see `tests/fixtures/README.md`).
    fn fixture(name: &str) -> Value {
        let path = format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"));
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
        let mut v: Value = serde_json::from_str(&text).unwrap();
        v["body"].take()
    }

    #[test]
    fn http_statuses_classify() {
        let mut headers = HeaderMap::new();
        headers.insert(RETRY_AFTER, HeaderValue::from_static("3"));
        let table: &[(u16, &str, Option<ErrorCode>, bool)] = &[
            (404, "Session 12 not found", None, false),
            (404, "Sensor 3 not found", None, false),
            (404, "command 3 not found", Some(ErrorCode::NotFound), false),
            (412, "", Some(ErrorCode::VendorRejected), false),
            (401, "", Some(ErrorCode::VendorAuthFailed), false),
            (403, "", Some(ErrorCode::VendorAuthFailed), false),
            (400, "bad", Some(ErrorCode::VendorRejected), false),
            (429, "", Some(ErrorCode::VendorRateLimited), true),
            (500, "", Some(ErrorCode::VendorUnavailable), true),
            (502, "", Some(ErrorCode::VendorUnavailable), true),
            (503, "", Some(ErrorCode::VendorUnavailable), true),
        ];
        for (status, body, code, retryable) in table {
            let e = classify(StatusCode::from_u16(*status).unwrap(), &headers, body);
            match (code, &e) {
                (None, CbError::SessionLost(text)) => assert_eq!(text, body),
                (Some(code), CbError::Api(a)) => {
                    assert_eq!((a.code(), a.is_retryable()), (*code, *retryable), "{status}");
                    assert_eq!(a.info.vendor_code.as_deref(), Some(status.to_string().as_str()));
                }
                _ => panic!("{status} {body}: {e:?}"),
            }
        }
        let limited = classify(StatusCode::TOO_MANY_REQUESTS, &headers, "");
        assert_eq!(limited.retry_after(), Some(Duration::from_secs(3)));
        assert!(limited.is_retryable());
    }

    #[test]
    fn every_status_word_maps_once() {
        let sessions = [
            ("pending", Status::Dispatched),
            ("active", Status::Running),
            ("timeout", Status::TimedOut),
            ("inactive", Status::Failed),
            ("close", Status::Cancelled),
            ("something new", Status::Dispatched),
        ];
        for (word, status) in sessions {
            assert_eq!(session_status(word), status, "{word}");
        }
        let commands = [
            ("pending", Status::Dispatched),
            ("in progress", Status::Running),
            ("complete", Status::Succeeded),
            ("error", Status::Failed),
            ("cancel", Status::Cancelled),
            ("Complete", Status::Succeeded),
            ("queued?", Status::Running),
        ];
        for (word, status) in commands {
            assert_eq!(command_status(word), status, "{word}");
        }
        for table in [SESSION_STATUSES, COMMAND_STATUSES] {
            for (i, (w, _)) in table.iter().enumerate() {
                assert!(table[i + 1..].iter().all(|(o, _)| o != w), "{w} twice");
            }
        }
    }

    fn failed(code: Value, result_type: &str, desc: &str) -> CbCommand {
        serde_json::from_value(json!({
            "id": 9, "name": "get file", "object": "C:\\x", "status": "error",
            "result_code": code, "result_type": result_type, "result_desc": desc,
        }))
        .unwrap()
    }

    #[test]
    fn hresults_decode_signed_and_unsigned() {
        let table: &[(Value, ErrorCode, &str, &str)] = &[
            (
                json!(2147942402u64),
                ErrorCode::FileNotFound,
                "0x80070002",
                "ERROR_FILE_NOT_FOUND: File not found",
            ),
            (
                json!(-2147024894i64),
                ErrorCode::FileNotFound,
                "0x80070002",
                "ERROR_FILE_NOT_FOUND: File not found",
            ),
            (
                json!(2147942403u64),
                ErrorCode::FileNotFound,
                "0x80070003",
                "ERROR_PATH_NOT_FOUND: File not found",
            ),
            (
                json!(2147942405u64),
                ErrorCode::AccessDenied,
                "0x80070005",
                "ERROR_ACCESS_DENIED: File not found",
            ),
            (
                json!(-2147024891i64),
                ErrorCode::AccessDenied,
                "0x80070005",
                "ERROR_ACCESS_DENIED: File not found",
            ),
            (
                json!(2147942487u64),
                ErrorCode::CommandFailed,
                "0x80070057",
                "ERROR_INVALID_PARAMETER: File not found",
            ),
            (
                json!(2147942480u64),
                ErrorCode::CommandFailed,
                "0x80070050",
                "ERROR_FILE_EXISTS: File not found",
            ),
            (
                json!(2147942432u64),
                ErrorCode::CommandFailed,
                "0x80070020",
                "ERROR_SHARING_VIOLATION: File not found",
            ),
            (
                json!(2147943568u64),
                ErrorCode::CommandFailed,
                "0x80070490",
                "ERROR_NOT_FOUND: File not found",
            ),
            (
                json!("2147942402"),
                ErrorCode::FileNotFound,
                "0x80070002",
                "ERROR_FILE_NOT_FOUND: File not found",
            ),
            // Not in the table but FACILITY_WIN32: decoded like cbapi, low 16 bits.
            (
                json!(0x8007_0015u64),
                ErrorCode::CommandFailed,
                "0x80070015",
                "WIN32_ERROR_21: File not found",
            ),
        ];
        for (raw, code, vendor_code, vendor_message) in table {
            let e = command_error(&failed(raw.clone(), "WinHresult", "File not found"));
            assert_eq!(e.code, *code, "{raw}");
            assert_eq!(e.vendor_code.as_deref(), Some(*vendor_code), "{raw}");
            assert_eq!(e.vendor_message.as_deref(), Some(*vendor_message), "{raw}");
        }
        let no_desc = command_error(&failed(json!(2147942402u64), "WinHresult", ""));
        assert_eq!(no_desc.vendor_message.as_deref(), Some("ERROR_FILE_NOT_FOUND"));
        let other = command_error(&failed(json!(17), "CbError", "sensor said no"));
        assert_eq!(other.code, ErrorCode::CommandFailed);
        assert_eq!(other.vendor_code.as_deref(), Some("17"));
        assert_eq!(other.vendor_message.as_deref(), Some("CbError: sensor said no"));
        // Every table entry round-trips through the decoder.
        for (code, name, error_code) in HRESULTS {
            let e = command_error(&failed(json!(*code), "WinHresult", ""));
            assert_eq!((e.code, e.vendor_message.as_deref()), (*error_code, Some(*name)));
        }
    }

    #[test]
    fn recorded_process_lists_convert() {
        for (fixture_name, count) in [
            ("GET_api_v1_cblr_session_1_command_4.json", 34),
            ("cbr-5.1.1_2016/GET_api_v1_cblr_session_10_command_2.json", 37),
        ] {
            let cmd: CbCommand = serde_json::from_value(fixture(fixture_name)).unwrap();
            assert_eq!(command_status(&cmd.status), Status::Succeeded);
            let CommandResult::Processes { processes } = simple_result(&Command::ProcessList, cmd)
            else {
                panic!("not processes");
            };
            assert_eq!(processes.len(), count, "{fixture_name}");
            let system = &processes[0];
            assert_eq!(
                (system.pid, system.name.as_str(), system.path.as_deref()),
                (4, "System", None)
            );
            assert_eq!(system.parent_pid, Some(0));
            assert!(system.vendor_id.as_deref().unwrap().starts_with("00000001-0000-0004-"));
            let smss = &processes[1];
            assert_eq!(smss.name, "smss.exe");
            assert_eq!(smss.username.as_deref(), Some("NT AUTHORITY\\SYSTEM"));
            assert_eq!(smss.sid.as_deref(), Some("s-1-5-18"));
            assert!(processes.iter().all(|p| !p.name.is_empty()));
        }
    }

    #[test]
    fn recorded_sessions_commands_and_sensor_parse() {
        let list: Vec<wire::Session> =
            serde_json::from_value(fixture("GET_api_v1_cblr_session.json")).unwrap();
        assert_eq!((list[0].id, list[0].sensor_id), (1, 1));
        assert_eq!(session_status(&list[0].status), Status::Running);

        let pending: wire::Session = serde_json::from_value(fixture(
            "cbr-5.1.1_2016/POST_api_v1_cblr_session__sensor_id-1.json",
        ))
        .unwrap();
        assert_eq!((pending.id, session_status(&pending.status)), (10, Status::Dispatched));
        let closed: Vec<wire::Session> =
            serde_json::from_value(fixture("cbr-5.1.1_2016/GET_api_v1_cblr_session.json")).unwrap();
        assert!(closed.iter().all(|s| session_status(&s.status) == Status::Cancelled));

        let posted: CbCommand =
            serde_json::from_value(fixture("POST_api_v1_cblr_session_1_command__get-file.json"))
                .unwrap();
        assert_eq!((posted.id, posted.file_id), (3, Some(2)));
        assert_eq!(command_status(&posted.status), Status::Dispatched);
        assert_eq!(object_text(&posted.object), "C:\\test.txt");
        let done: CbCommand =
            serde_json::from_value(fixture("GET_api_v1_cblr_session_1_command_3.json")).unwrap();
        assert_eq!((command_status(&done.status), done.result_code), (Status::Succeeded, Some(0)));
        let listed: CbCommand = serde_json::from_value(fixture(
            "POST_api_v1_cblr_session_1_command__process-list.json",
        ))
        .unwrap();
        assert_eq!(object_text(&listed.object), "");

        let sensor: wire::Sensor =
            serde_json::from_value(fixture("GET_api_v1_sensor_1.json")).unwrap();
        let device = device("cb", sensor);
        assert_eq!(device.device_id, "1");
        assert_eq!(device.hostname, "WIN7-HYPERV-2");
        assert!(device.online);
        assert_eq!(device.isolated, Some(false));
        assert_eq!(device.os.as_deref(), Some("Windows 7 Professional Service Pack 1, 32-bit"));
    }

    #[test]
    fn directory_entries_and_registry_values_convert() {
        let cmd: CbCommand = serde_json::from_value(json!({
            "id": 2, "name": "directory list", "object": "C:\\Temp\\*", "status": "complete",
            "files": [
                {"attributes": ["DIRECTORY"], "filename": ".", "size": 0},
                {"attributes": ["DIRECTORY"], "filename": "..", "size": 0},
                {"attributes": ["DIRECTORY"], "filename": "sub", "size": 0, "create_time": 1, "last_write_time": 2, "last_access_time": 3, "alt_name": ""},
                {"attributes": ["ARCHIVE", "HIDDEN"], "filename": "a.txt", "size": "12"},
                {"attributes": [], "name": "docs.txt", "size": 5}
            ]
        }))
        .unwrap();
        let CommandResult::Directory { entries } =
            simple_result(&Command::ListDirectory { path: "C:\\Temp".into() }, cmd)
        else {
            panic!()
        };
        let summary: Vec<(&str, bool, u64)> =
            entries.iter().map(|e| (e.name.as_str(), e.is_directory, e.size)).collect();
        assert_eq!(summary, [("sub", true, 0), ("a.txt", false, 12), ("docs.txt", false, 5)]);
        assert_eq!(
            (entries[0].created_at, entries[0].modified_at, entries[0].accessed_at),
            (Some(1), Some(2), Some(3))
        );
        assert_eq!(entries[1].attributes, ["ARCHIVE", "HIDDEN"]);

        let cmd: CbCommand = serde_json::from_value(json!({
            "id": 3, "name": "reg enum key", "status": "complete", "sub_keys": ["A", "B"],
            "values": [
                {"value_type": "REG_SZ", "value_name": "s", "value_data": "x"},
                {"value_type": "REG_DWORD", "value_name": "d", "value_data": 7},
                {"value_type": "REG_MULTI_SZ", "value_name": "m", "value_data": ["a", "b"]}
            ]
        }))
        .unwrap();
        let CommandResult::RegistryKey { sub_keys, values } =
            simple_result(&Command::RegistryList { key: "HKLM\\X".into() }, cmd)
        else {
            panic!()
        };
        assert_eq!(sub_keys, ["A", "B"]);
        assert_eq!(values[1].data, json!(7));
        assert_eq!(values[2].value_type, "REG_MULTI_SZ");
    }

    #[test]
    fn commands_become_cb_requests() {
        use edrgate_adapter::RegistryValueType;
        let table: Vec<(Command, Value)> = vec![
            (Command::ProcessList, json!({"name": "process list", "session_id": 5})),
            (
                Command::KillProcess { pid: 1660, vendor_id: None },
                json!({"name": "kill", "object": 1660, "session_id": 5}),
            ),
            (
                Command::DeleteFile { path: "C:\\x.txt".into() },
                json!({"name": "delete file", "object": "C:\\x.txt", "session_id": 5}),
            ),
            (
                Command::ListDirectory { path: "C:\\Temp".into() },
                json!({"name": "directory list", "object": "C:\\Temp\\*", "session_id": 5}),
            ),
            (
                Command::ListDirectory { path: "C:\\Temp\\".into() },
                json!({"name": "directory list", "object": "C:\\Temp\\*", "session_id": 5}),
            ),
            (
                Command::ListDirectory { path: "C:\\Temp\\*.log".into() },
                json!({"name": "directory list", "object": "C:\\Temp\\*.log", "session_id": 5}),
            ),
            (
                Command::CreateDirectory { path: "C:\\new".into() },
                json!({"name": "create directory", "object": "C:\\new", "session_id": 5}),
            ),
            (
                Command::RegistryList { key: "HKLM\\Soft".into() },
                json!({"name": "reg enum key", "object": "HKLM\\Soft", "session_id": 5}),
            ),
            (
                Command::RegistryGet { key: "HKLM\\Soft\\".into(), value: "v".into() },
                json!({"name": "reg query value", "object": "HKLM\\Soft\\v", "session_id": 5}),
            ),
            (
                Command::RegistrySet {
                    key: "HKLM\\Soft".into(),
                    value: "v".into(),
                    value_type: RegistryValueType::MultiSz,
                    data: json!(["a", "b"]),
                    overwrite: true,
                },
                json!({"name": "reg set value", "object": "HKLM\\Soft\\v", "session_id": 5, "value_type": "REG_MULTI_SZ", "value_data": ["a", "b"], "overwrite": true}),
            ),
            (
                Command::RegistryCreateKey { key: "HKLM\\K".into() },
                json!({"name": "reg create key", "object": "HKLM\\K", "session_id": 5}),
            ),
            (
                Command::RegistryDeleteKey { key: "HKLM\\K".into() },
                json!({"name": "reg delete key", "object": "HKLM\\K", "session_id": 5}),
            ),
            (
                Command::RegistryDeleteValue { key: "HKLM\\K".into(), value: "v".into() },
                json!({"name": "reg delete value", "object": "HKLM\\K\\v", "session_id": 5}),
            ),
        ];
        for (command, expected) in table {
            let req = simple_request(&command, 5).unwrap();
            assert_eq!(serde_json::to_value(&req).unwrap(), expected, "{command:?}");
        }
        assert!(simple_request(&Command::Isolate, 5).is_none());
        assert_eq!(
            serde_json::to_value(get_file_request(5, "C:\\a", 8, 4)).unwrap(),
            json!({"name": "get file", "object": "C:\\a", "session_id": 5, "offset": 8, "get_count": 4})
        );
        assert_eq!(
            serde_json::to_value(create_process_request(
                5,
                "cmd /c dir",
                true,
                Some("C:\\"),
                Some("C:\\o.txt")
            ))
            .unwrap(),
            json!({"name": "create process", "object": "cmd /c dir", "session_id": 5, "wait": true, "working_directory": "C:\\", "output_file": "C:\\o.txt"})
        );
    }

    #[test]
    fn names_of_paths() {
        assert_eq!(base_name("c:\\windows\\system32\\smss.exe"), "smss.exe");
        assert_eq!(base_name("/usr/bin/ls"), "ls");
        assert_eq!(base_name("C:\\dir\\"), "dir");
        assert_eq!(base_name("plain"), "plain");
    }
}
