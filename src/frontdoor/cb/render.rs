//! Carbon Black EDR live-response commands ⇄ edrgate commands: pure translation, no I/O.
//!
//! (Owned by the commands helper; the foundation's `cb/mod.rs` only declares the module.)
//!
//! Requests: a CB command body (`name`, `object`, per-command fields; CBREF §4.3) becomes one
//! edrgate [`Command`], or a refusal the door reports as a command in `error` (never a 4xx,
//! front-doors.md §1.5). Answers: an edrgate command state becomes the CB command JSON that
//! cbapi, XSOAR and Splunk read (front-doors.md §1.3–§1.5): only `pending`, `complete` and
//! `error`, `result_type: "WinHresult"` with an unsigned HRESULT.

use edrgate_adapter::{
    Command, CommandResult, DirectoryEntry, ErrorCode, ErrorInfo, ProcessInfo, RegistryValue,
    RegistryValueType, Status,
};
use serde_json::{Map, Value, json};

/// The CB command names, spelled as a 6.2 Windows sensor reports them (CBREF §3.1).
pub const PROCESS_LIST: &str = "process list";
pub const KILL: &str = "kill";
pub const GET_FILE: &str = "get file";
pub const PUT_FILE: &str = "put file";
pub const DELETE_FILE: &str = "delete file";
pub const DIRECTORY_LIST: &str = "directory list";
pub const CREATE_DIRECTORY: &str = "create directory";
pub const CREATE_PROCESS: &str = "create process";
pub const REG_ENUM_KEY: &str = "reg enum key";
pub const REG_QUERY_VALUE: &str = "reg query value";
pub const REG_SET_VALUE: &str = "reg set value";
pub const REG_CREATE_KEY: &str = "reg create key";
pub const REG_DELETE_KEY: &str = "reg delete key";
pub const REG_DELETE_VALUE: &str = "reg delete value";
pub const MEMDUMP: &str = "memdump";

/// Every CB command name with the edrgate command kind it runs as, in a real sensor's order
/// (CBREF §3.1), for `supported_commands`.
pub const COMMANDS: [(&str, edrgate_adapter::CommandKind); 15] = {
    use edrgate_adapter::CommandKind as K;
    [
        (DELETE_FILE, K::DeleteFile),
        (PUT_FILE, K::PutFile),
        (REG_DELETE_KEY, K::RegistryDeleteKey),
        (DIRECTORY_LIST, K::ListDirectory),
        (REG_CREATE_KEY, K::RegistryCreateKey),
        (GET_FILE, K::GetFile),
        (REG_ENUM_KEY, K::RegistryList),
        (REG_QUERY_VALUE, K::RegistryGet),
        (KILL, K::KillProcess),
        (CREATE_PROCESS, K::Execute),
        (PROCESS_LIST, K::ProcessList),
        (REG_DELETE_VALUE, K::RegistryDeleteValue),
        (REG_SET_VALUE, K::RegistrySet),
        (CREATE_DIRECTORY, K::CreateDirectory),
        (MEMDUMP, K::MemoryDump),
    ]
};

/// The edrgate kind a CB command name runs as.
pub fn kind_of(name: &str) -> Option<edrgate_adapter::CommandKind> {
    COMMANDS.iter().find(|(n, _)| *n == name).map(|(_, k)| *k)
}

/// Longest `name` kept from a request (the longest real name is 16 bytes).
const MAX_NAME: usize = 64;

/// A CB command request, understood.
#[derive(Clone, Debug, PartialEq)]
pub struct Parsed {
    /// The CB name (one of [`COMMANDS`]).
    pub name: &'static str,
    pub command: ToRun,
}

/// What the request runs: an edrgate command, or a `put file` whose content is a file the
/// caller uploaded to the session (`POST …/file`), known by its integer id until the door
/// looks up the edrgate file behind it.
#[derive(Clone, Debug, PartialEq)]
pub enum ToRun {
    Ready(Command),
    PutFile { session_file_id: i64, path: String },
}

impl ToRun {
    /// The edrgate command, with the edrgate file id of the session file for `put file`.
    pub fn into_command(self, edrgate_file_id: Option<String>) -> Option<Command> {
        match self {
            ToRun::Ready(command) => Some(command),
            ToRun::PutFile { path, .. } => {
                edrgate_file_id.map(|file_id| Command::PutFile { file_id, path })
            }
        }
    }
}

/// Why a request is not run; the door stores it as a command in `error` with `hresult`.
#[derive(Clone, Debug, PartialEq)]
pub struct Refusal {
    /// The request's name as given (capped), echoed in the command's `name`.
    pub name: String,
    pub code: ErrorCode,
    pub message: String,
}

impl Refusal {
    fn new(name: &str, code: ErrorCode, message: impl Into<String>) -> Self {
        let mut name = name.to_owned();
        truncate(&mut name, MAX_NAME);
        Refusal { name, code, message: message.into() }
    }
}

fn truncate(s: &mut String, max: usize) {
    if s.len() > max {
        let mut end = max;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
    }
}

/// The request's `object` as the command echoes it: strings and numbers as sent, else null.
pub fn object_of(body: &Value) -> Value {
    match body.get("object") {
        Some(v @ (Value::String(_) | Value::Number(_))) => v.clone(),
        _ => Value::Null,
    }
}

/// Translates a CB command body. Extra fields (`session_id` from cbapi, `wait`/`timeout` from
/// XSOAR, `command_timeout`) are ignored (front-doors.md §1.2).
pub fn parse(body: &Value) -> Result<Parsed, Refusal> {
    let raw_name = body.get("name").and_then(Value::as_str).unwrap_or("");
    let Some((name, _)) = COMMANDS.iter().find(|(n, _)| *n == raw_name) else {
        let message = if raw_name.is_empty() {
            "the command has no name".to_owned()
        } else {
            format!("unknown command {raw_name:?}")
        };
        let code = if raw_name.is_empty() {
            ErrorCode::InvalidRequest
        } else {
            ErrorCode::UnsupportedCommand
        };
        return Err(Refusal::new(raw_name, code, message));
    };
    let invalid = |message: String| Refusal::new(name, ErrorCode::InvalidRequest, message);
    let object = || -> Result<String, Refusal> {
        match body.get("object") {
            Some(Value::String(s)) if !s.trim().is_empty() => Ok(s.clone()),
            Some(Value::Number(n)) => Ok(n.to_string()),
            _ => Err(invalid(format!("{name} needs an object"))),
        }
    };
    let flag = |field: &str| -> Result<bool, Refusal> {
        match body.get(field) {
            None | Some(Value::Null) => Ok(false),
            Some(Value::Bool(b)) => Ok(*b),
            // XSOAR's JS sends some flags as strings (XLR `createCommandRequest`).
            Some(Value::String(s)) if s.eq_ignore_ascii_case("true") => Ok(true),
            Some(Value::String(s)) if s.eq_ignore_ascii_case("false") => Ok(false),
            Some(_) => Err(invalid(format!("{field} must be a boolean"))),
        }
    };
    let text = |field: &str| -> Result<Option<String>, Refusal> {
        match body.get(field) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) if s.is_empty() => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(_) => Err(invalid(format!("{field} must be a string"))),
        }
    };
    let command = match *name {
        PROCESS_LIST => Command::ProcessList,
        KILL => {
            // cbapi sends an int, XSOAR a string.
            let pid = match body.get("object") {
                Some(Value::Number(n)) => n.as_u64(),
                Some(Value::String(s)) => s.trim().parse::<u64>().ok(),
                _ => None,
            };
            let pid = pid.ok_or_else(|| invalid("kill needs a process id as object".into()))?;
            Command::KillProcess { pid, vendor_id: None }
        }
        GET_FILE => {
            let offset = unsigned(body, "offset").map_err(invalid)?;
            let length = unsigned(body, "get_count").map_err(invalid)?;
            // CLI0 sends `offset: 0, get_count: 0` for a whole file; 0 bytes means "all".
            let length = length.filter(|n| *n > 0);
            let offset =
                if length.is_some() { offset.or(Some(0)) } else { offset.filter(|n| *n > 0) };
            if offset.is_some() && length.is_none() {
                return Err(invalid("offset needs get_count".into()));
            }
            Command::GetFile { path: object()?, offset, length }
        }
        PUT_FILE => {
            let session_file_id = match body.get("file_id") {
                Some(Value::Number(n)) => n.as_i64(),
                Some(Value::String(s)) => s.trim().parse::<i64>().ok(),
                _ => None,
            };
            let session_file_id = session_file_id
                .filter(|id| *id > 0)
                .ok_or_else(|| invalid("put file needs the file_id of an uploaded file".into()))?;
            let parsed = ToRun::PutFile { session_file_id, path: object()? };
            return Ok(Parsed { name, command: parsed });
        }
        DELETE_FILE => Command::DeleteFile { path: object()? },
        DIRECTORY_LIST => Command::ListDirectory { path: directory_of(&object()?) },
        CREATE_DIRECTORY => Command::CreateDirectory { path: object()? },
        CREATE_PROCESS => Command::Execute {
            command_line: object()?,
            // CB's server default is not to wait (CBREF §4.3); cbapi always sends it.
            wait: flag("wait")?,
            working_directory: text("working_directory")?,
            output_file: text("output_file")?,
        },
        REG_ENUM_KEY => Command::RegistryList { key: object()? },
        REG_QUERY_VALUE => {
            let (key, value) = split_value(&object()?).map_err(invalid)?;
            Command::RegistryGet { key, value }
        }
        REG_SET_VALUE => {
            let (key, value) = split_value(&object()?).map_err(invalid)?;
            let value_type = match text("value_type")? {
                None => RegistryValueType::Sz,
                Some(t) => {
                    registry_type(&t).ok_or_else(|| invalid(format!("unknown value_type {t:?}")))?
                }
            };
            let data = registry_data(value_type, body.get("value_data")).map_err(invalid)?;
            Command::RegistrySet { key, value, value_type, data, overwrite: flag("overwrite")? }
        }
        REG_CREATE_KEY => Command::RegistryCreateKey { key: object()? },
        REG_DELETE_KEY => Command::RegistryDeleteKey { key: object()? },
        REG_DELETE_VALUE => {
            let (key, value) = split_value(&object()?).map_err(invalid)?;
            Command::RegistryDeleteValue { key, value }
        }
        MEMDUMP => {
            // The CB sensor zips the dump itself with `compress` (cbapi then fetches
            // `<name>.zip`); no backend behind edrgate does, so that variant is refused rather
            // than answered with a file cbapi would not find.
            if flag("compress")? {
                return Err(Refusal::new(
                    name,
                    ErrorCode::UnsupportedCommand,
                    "memdump with compress is not supported; send compress: false",
                ));
            }
            Command::MemoryDump { path: Some(object()?), fetch: false }
        }
        _ => unreachable!("every name of COMMANDS is handled"),
    };
    if let Err(message) = command.validate().and_then(|()| command.check_combination()) {
        return Err(invalid(message));
    }
    Ok(Parsed { name, command: ToRun::Ready(command) })
}

fn unsigned(body: &Value, field: &str) -> Result<Option<u64>, String> {
    match body.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => n.as_u64().map(Some).ok_or(format!("{field} must be ≥ 0")),
        Some(Value::String(s)) => {
            s.trim().parse().map(Some).map_err(|_| format!("{field} must be an integer"))
        }
        Some(_) => Err(format!("{field} must be an integer")),
    }
}

/// `directory list` takes a directory or a filter: cbapi's `walk` sends `path\*`, CLI0 a
/// trailing `\` plus `*` (CBREF §4.3). edrgate lists a directory, so the `*` is dropped, and
/// the separator too unless it is the root's (`C:\`, `/`).
fn directory_of(object: &str) -> String {
    let mut path = object.strip_suffix('*').unwrap_or(object).to_owned();
    let is_root = |p: &str| p == "/" || p == "\\" || (p.len() == 3 && p.ends_with(":\\"));
    if (path.ends_with('\\') || path.ends_with('/')) && !is_root(&path) {
        path.pop();
    }
    path
}

/// `HKLM\Software\Key\ValueName` → (`HKLM\Software\Key`, `ValueName`).
fn split_value(object: &str) -> Result<(String, String), String> {
    match object.rsplit_once('\\') {
        Some((key, value)) if !key.is_empty() && !value.is_empty() => {
            Ok((key.to_owned(), value.to_owned()))
        }
        _ => Err(format!("{object:?} is not a key path followed by a value name")),
    }
}

fn registry_type(name: &str) -> Option<RegistryValueType> {
    use RegistryValueType as T;
    [T::Sz, T::ExpandSz, T::MultiSz, T::Dword, T::Qword, T::Binary]
        .into_iter()
        .find(|t| t.as_str().eq_ignore_ascii_case(name.trim()))
}

/// `value_data` as edrgate wants it for `value_type`: cbapi sends an int for `REG_DWORD`, a
/// list for `REG_MULTI_SZ`, else a string (LRAPI `set_registry_value`); XSOAR sends strings
/// throughout, so numbers are also accepted as decimal strings.
fn registry_data(value_type: RegistryValueType, data: Option<&Value>) -> Result<Value, String> {
    use RegistryValueType as T;
    let Some(data) = data.filter(|d| !d.is_null()) else {
        return Err("reg set value needs value_data".into());
    };
    Ok(match (value_type, data) {
        (T::Dword | T::Qword, Value::String(s)) => s
            .trim()
            .parse::<u64>()
            .map(Value::from)
            .map_err(|_| format!("value_data for {} must be an integer", value_type.as_str()))?,
        (T::Sz | T::ExpandSz, Value::Number(n)) => Value::String(n.to_string()),
        (T::MultiSz, Value::String(s)) => json!([s]),
        _ => data.clone(),
    })
}

/// The facade's view of one stored CB command, independent of the edrgate action behind it.
#[derive(Clone, Debug, PartialEq)]
pub struct CommandRow {
    pub id: i64,
    pub session_id: i64,
    pub sensor_id: i64,
    pub name: String,
    pub object: Value,
    /// Unix seconds, fractional.
    pub create_time: f64,
    /// The facade file id of a `get file`, known at POST (front-doors.md §1.9).
    pub file_id: Option<i64>,
    /// The API user who issued it (CB `username`).
    pub username: String,
}

/// Where the edrgate command behind a CB command is.
#[derive(Clone, Debug, PartialEq)]
pub enum State<'a> {
    /// The door refused the request before any action existed.
    Refused { code: ErrorCode, message: &'a str },
    /// The action's command (or the run's error when the command has none of its own).
    Action {
        status: Status,
        result: Option<&'a CommandResult>,
        error: Option<&'a ErrorInfo>,
        /// Unix seconds when it became terminal.
        completion: Option<f64>,
    },
}

/// HRESULT = FACILITY_WIN32 (0x8007xxxx) of a Win32 code.
const fn win32(code: u32) -> u32 {
    0x8007_0000 | code
}
pub const ERROR_FILE_NOT_FOUND: u32 = win32(2);
pub const ERROR_ACCESS_DENIED: u32 = win32(5);
pub const ERROR_GEN_FAILURE: u32 = win32(31);
pub const ERROR_NOT_SUPPORTED: u32 = win32(50);
pub const ERROR_INVALID_PARAMETER: u32 = win32(87);
pub const ERROR_BUSY: u32 = win32(170);
pub const ERROR_DEVICE_NOT_CONNECTED: u32 = win32(1167);
pub const ERROR_NOT_FOUND: u32 = win32(1168);
pub const ERROR_CANCELLED: u32 = win32(1223);
pub const ERROR_TIMEOUT: u32 = win32(1460);
pub const ERROR_REQUEST_REFUSED: u32 = win32(4320);

/// The HRESULT of an edrgate error (front-doors.md §1.5): the vendor's own HRESULT when it
/// gave one (MDE `errorHResult`), else by code. Codes the table does not name map to the
/// Win32 code closest in meaning, all FACILITY_WIN32 so cbapi decodes a name.
pub fn hresult(error: &ErrorInfo) -> u32 {
    if let Some(h) = error.vendor_code.as_deref().and_then(vendor_hresult) {
        return h;
    }
    match error.code {
        ErrorCode::FileNotFound => ERROR_FILE_NOT_FOUND,
        ErrorCode::AccessDenied | ErrorCode::Forbidden | ErrorCode::Unauthenticated => {
            ERROR_ACCESS_DENIED
        }
        ErrorCode::InvalidRequest | ErrorCode::PayloadTooLarge | ErrorCode::DeviceAmbiguous => {
            ERROR_INVALID_PARAMETER
        }
        ErrorCode::UnsupportedCommand => ERROR_NOT_SUPPORTED,
        ErrorCode::DeviceOffline => ERROR_DEVICE_NOT_CONNECTED,
        ErrorCode::Timeout | ErrorCode::OutcomeUnknown => ERROR_TIMEOUT,
        ErrorCode::Cancelled => ERROR_CANCELLED,
        ErrorCode::VendorRejected | ErrorCode::VendorAuthFailed => ERROR_REQUEST_REFUSED,
        ErrorCode::VendorRateLimited
        | ErrorCode::VendorUnavailable
        | ErrorCode::RateLimited
        | ErrorCode::Conflict => ERROR_BUSY,
        ErrorCode::NotFound | ErrorCode::DeviceNotFound => ERROR_NOT_FOUND,
        ErrorCode::CommandFailed | ErrorCode::Internal => ERROR_GEN_FAILURE,
    }
}

/// A vendor code that is a failure HRESULT: `0x80070002`, unsigned `2147942402` or signed
/// `-2147024894` (both seen, CBREF §4.4). Anything else (Cybereason's words) is not one.
fn vendor_hresult(code: &str) -> Option<u32> {
    let code = code.trim();
    let value = if let Some(hex) = code.strip_prefix("0x").or_else(|| code.strip_prefix("0X")) {
        u32::from_str_radix(hex, 16).ok()?
    } else if let Ok(signed) = code.parse::<i32>() {
        signed as u32
    } else {
        code.parse::<u32>().ok()?
    };
    // Severity bit: only failures are passed through.
    (value & 0x8000_0000 != 0).then_some(value)
}

/// `result_desc` of a failed command: edrgate's code and message, and the vendor's text, so
/// an operator reading cbapi's `LiveResponseError.details` sees what happened.
fn describe(error: &ErrorInfo) -> String {
    let mut desc =
        if error.code == ErrorCode::OutcomeUnknown && !error.message.contains("outcome unknown") {
            format!("{}: outcome unknown: {}", error.code.as_str(), error.message)
        } else {
            format!("{}: {}", error.code.as_str(), error.message)
        };
    if let Some(vendor) = &error.vendor_message {
        desc.push_str(&format!(" (vendor: {vendor})"));
    }
    truncate(&mut desc, 2048);
    desc
}

/// The error a terminal, unsucceeded command reports when it carries none of its own.
fn error_of_status(status: Status) -> ErrorInfo {
    match status {
        Status::Cancelled => ErrorInfo::new(ErrorCode::Cancelled, "the command was cancelled"),
        Status::TimedOut => ErrorInfo::new(ErrorCode::Timeout, "the command timed out"),
        Status::Skipped => {
            ErrorInfo::new(ErrorCode::Cancelled, "the command was not run (an earlier one failed)")
        }
        _ => ErrorInfo::new(ErrorCode::CommandFailed, "the command failed"),
    }
}

/// The CB command JSON (CBREF §4.1, front-doors.md §1.3–§1.4).
pub fn command_json(row: &CommandRow, state: &State<'_>) -> Value {
    let mut out = Map::new();
    out.insert("id".into(), json!(row.id));
    out.insert("session_id".into(), json!(row.session_id));
    out.insert("sensor_id".into(), json!(row.sensor_id));
    out.insert("name".into(), json!(row.name));
    out.insert("object".into(), row.object.clone());
    out.insert("username".into(), json!(row.username));
    out.insert("create_time".into(), json!(row.create_time));
    if let Some(file_id) = row.file_id {
        out.insert("file_id".into(), json!(file_id));
    }
    let (status, completion) = match state {
        State::Refused { code, message } => {
            let error = ErrorInfo::new(*code, *message);
            fail(&mut out, &error);
            ("error", Some(row.create_time))
        }
        State::Action { status, completion, .. } if !status.is_terminal() => {
            let _ = completion;
            ("pending", None)
        }
        State::Action { status: Status::Succeeded, result, completion, .. } => {
            out.insert("result_code".into(), json!(0));
            out.insert("result_type".into(), json!("WinHresult"));
            out.insert("result_desc".into(), json!(""));
            if let Some(result) = result {
                results(&mut out, row, result);
            }
            ("complete", *completion)
        }
        State::Action { status, error, completion, .. } => {
            let error = match error {
                Some(e) => (*e).clone(),
                None => error_of_status(*status),
            };
            fail(&mut out, &error);
            ("error", *completion)
        }
    };
    out.insert("status".into(), json!(status));
    // `0` while in progress (DOC5 `completion_time`), the epoch once finished.
    out.insert("completion".into(), json!(completion.unwrap_or(0.0)));
    Value::Object(out)
}

fn fail(out: &mut Map<String, Value>, error: &ErrorInfo) {
    out.insert("result_code".into(), json!(hresult(error)));
    out.insert("result_type".into(), json!("WinHresult"));
    out.insert("result_desc".into(), json!(describe(error)));
}

fn results(out: &mut Map<String, Value>, row: &CommandRow, result: &CommandResult) {
    match result {
        CommandResult::Processes { processes } => {
            out.insert("processes".into(), json!(processes_json(row.sensor_id, processes)));
        }
        CommandResult::Directory { entries } => {
            out.insert("files".into(), entries.iter().map(file_entry).collect());
        }
        CommandResult::RegistryKey { sub_keys, values } => {
            out.insert("values".into(), values.iter().map(registry_value).collect());
            out.insert("sub_keys".into(), json!(sub_keys));
        }
        CommandResult::RegistryValue { value } => {
            out.insert("value".into(), registry_value(value));
        }
        CommandResult::Execution { pid, exit_code, .. } => {
            out.insert("pid".into(), json!(pid.unwrap_or(0)));
            out.insert("return_code".into(), json!(exit_code.unwrap_or(0)));
        }
        CommandResult::MemoryDump { .. } => {
            // The dump is written when the command completes: CB's progress fields then read
            // as finished (LRAPI `LiveResponseMemdump`).
            out.insert("return_code".into(), json!(0));
            out.insert("complete".into(), json!(true));
            out.insert("percentdone".into(), json!(100));
            out.insert("dumping".into(), json!(false));
            out.insert("compressing".into(), json!(false));
        }
        CommandResult::File { .. } | CommandResult::Containment { .. } | CommandResult::Done => {}
    }
}

/// Seconds between 1601-01-01 (FILETIME's epoch) and 1970-01-01.
const FILETIME_EPOCH_OFFSET: i64 = 11_644_473_600;

/// A process GUID in CB's layout (CBREF §4.3): sensor id (8 hex), pid (4+4 hex), the start
/// time as a FILETIME (4+12 hex) — e.g. sensor 1, pid 4 → `00000001-0000-0004-01d3-8bc5…`.
/// Only the shape is CB's: the value joins nothing off CB.
pub fn proc_guid(sensor_id: i64, pid: u64, started_at: Option<i64>) -> String {
    let filetime = started_at
        .and_then(|t| t.checked_add(FILETIME_EPOCH_OFFSET))
        .filter(|t| *t >= 0)
        .and_then(|t| (t as u64).checked_mul(10_000_000))
        .unwrap_or(0);
    format!(
        "{:08x}-{:04x}-{:04x}-{:04x}-{:012x}",
        sensor_id as u32,
        (pid >> 16) & 0xffff,
        pid & 0xffff,
        (filetime >> 48) & 0xffff,
        filetime & 0xffff_ffff_ffff
    )
}

/// A CB backend's `vendor_id` is already a real `proc_guid`; other vendors' ids are not.
fn is_cb_guid(id: &str) -> bool {
    let groups: Vec<&str> = id.split('-').collect();
    groups.len() == 5
        && groups
            .iter()
            .zip([8, 4, 4, 4, 12])
            .all(|(g, n)| g.len() == n && g.bytes().all(|b| b.is_ascii_hexdigit()))
}

fn processes_json(sensor_id: i64, processes: &[ProcessInfo]) -> Vec<Value> {
    let guid_of = |p: &ProcessInfo| match &p.vendor_id {
        Some(id) if is_cb_guid(id) => id.to_ascii_lowercase(),
        _ => proc_guid(sensor_id, p.pid, p.started_at),
    };
    processes
        .iter()
        .map(|p| {
            let parent = p.parent_pid.unwrap_or(0);
            // The parent's GUID is its own entry's when listed; else CB's unknown-parent form
            // (the System process's parent: pid and time zero).
            let parent_guid = processes
                .iter()
                .find(|q| q.pid == parent && p.parent_pid.is_some() && q.pid != p.pid)
                .map(guid_of)
                .unwrap_or_else(|| proc_guid(sensor_id, parent, None));
            json!({
                "pid": p.pid,
                "parent": parent,
                "path": p.path.as_deref().unwrap_or(""),
                "command_line": p.command_line.as_deref().unwrap_or(""),
                "sid": p.sid.as_deref().map(str::to_ascii_lowercase).unwrap_or_default(),
                "username": p.username.as_deref().unwrap_or(""),
                "create_time": p.started_at.unwrap_or(0),
                "proc_guid": guid_of(p),
                "parent_guid": parent_guid,
            })
        })
        .collect()
}

/// A directory entry with CB's attribute names (Windows names minus `FILE_ATTRIBUTE_`,
/// upper-case), `DIRECTORY` always present for directories: cbapi's `walk` keys on it.
fn file_entry(entry: &DirectoryEntry) -> Value {
    let mut attributes: Vec<String> = entry
        .attributes
        .iter()
        .map(|a| {
            let a = a.trim().to_ascii_uppercase();
            a.strip_prefix("FILE_ATTRIBUTE_").map(str::to_owned).unwrap_or(a)
        })
        .filter(|a| !a.is_empty())
        .collect();
    attributes.dedup();
    if entry.is_directory && !attributes.iter().any(|a| a == "DIRECTORY") {
        attributes.insert(0, "DIRECTORY".into());
    }
    if !entry.is_directory {
        attributes.retain(|a| a != "DIRECTORY");
    }
    json!({
        "filename": entry.name,
        "alt_name": "",
        "attributes": attributes,
        "size": entry.size,
        "create_time": entry.created_at.unwrap_or(0),
        "last_access_time": entry.accessed_at.unwrap_or(0),
        "last_write_time": entry.modified_at.unwrap_or(0),
    })
}

fn registry_value(value: &RegistryValue) -> Value {
    json!({
        "value_type": value.value_type,
        "value_name": value.name,
        "value_data": value.data,
    })
}

#[cfg(test)]
mod tests;
