//! The normalized model: what a caller asks for and what edrgate reports back.
//!
//! Every type here is part of the public wire format (JSON, snake_case) and of the generated
//! JSON Schemas under `schemas/`, so changes are API changes. Vendor shapes never appear here;
//! each adapter converts its vendor's JSON into these types in its `mapping.rs`.

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use utoipa::ToSchema;
use uuid::Uuid;

/// Longest path (or registry key) a command may name, in characters.
pub const MAX_PATH: usize = 4096;

/// What a caller submits to `POST /v1/actions`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ActionRequest {
    /// Devices to act on; one run is created per target.
    pub targets: Vec<Target>,
    /// Commands executed in order on every target.
    pub commands: Vec<Command>,
    /// Free text kept with the action (and passed to vendors that keep a comment).
    #[serde(default)]
    pub comment: Option<String>,
    /// What a run does after a failed command.
    #[serde(default)]
    pub on_error: OnError,
    /// Seconds the action may take before unfinished work is stopped as `timed_out`.
    #[serde(default)]
    pub timeout_seconds: Option<u64>,
    /// Called back once, when the action finishes: an `action.finished` event POSTed to this
    /// URL, signed like webhooks (Standard Webhooks) with the tenant's callback secret. For
    /// receivers that wait on one URL (Logic Apps' HTTP Webhook action, n8n's Wait node). Never
    /// shown in answers or the audit trail, since such URLs often carry a signature.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(
        min_length = 1,
        max_length = 2048,
        example = "https://prod-00.westeurope.logic.azure.com/workflows/…"
    )]
    pub callback_url: Option<String>,
}

/// A device to act on: by hostname (resolved through the tenant's backends) or explicitly.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(untagged, deny_unknown_fields)]
pub enum Target {
    Device { backend: String, device_id: String },
    Hostname { hostname: String },
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum OnError {
    /// Skip the remaining commands of a run after the first failure.
    #[default]
    Stop,
    /// Run every command regardless of earlier failures.
    Continue,
}

/// The closed command vocabulary. Tagged by `type` on the wire.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum Command {
    ProcessList,
    KillProcess {
        pid: u64,
        /// The vendor's own id of the process, as `process_list` reports it (`vendor_id`):
        /// where the vendor kills by its id (Cybereason's process element), it is used as is
        /// instead of being looked up from the pid; other vendors ignore it.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        vendor_id: Option<String>,
    },
    GetFile {
        path: String,
        /// Byte offset of a partial read.
        #[serde(default)]
        offset: Option<u64>,
        /// Number of bytes of a partial read.
        #[serde(default)]
        length: Option<u64>,
    },
    PutFile {
        /// Id of a file in edrgate's file store (`/v1/files`).
        file_id: String,
        path: String,
    },
    DeleteFile {
        path: String,
    },
    /// Moves the file into the EDR's quarantine, from where `unquarantine_file` puts it back:
    /// reversible, unlike `delete_file` (Cybereason's `QUARANTINE_FILE` remediation).
    QuarantineFile {
        path: String,
    },
    /// Puts a file `quarantine_file` quarantined back at `path`, its original place.
    UnquarantineFile {
        path: String,
    },
    ListDirectory {
        path: String,
    },
    CreateDirectory {
        path: String,
    },
    Execute {
        command_line: String,
        /// Wait for the process to exit (and collect its exit code and output).
        #[serde(default = "default_true")]
        wait: bool,
        #[serde(default)]
        working_directory: Option<String>,
        /// Where the endpoint writes the output; edrgate picks a temporary path when omitted
        /// and `wait` is true.
        #[serde(default)]
        output_file: Option<String>,
    },
    RunScript {
        script: String,
        #[serde(default)]
        args: Vec<String>,
        /// The script's content: a file in edrgate's file store (`POST /v1/files`), which
        /// the adapter stages with the vendor under `script`'s name. Without it, `script`
        /// names a script the vendor already has (e.g. in Defender's library).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        file_id: Option<String>,
    },
    RegistryList {
        key: String,
    },
    RegistryGet {
        key: String,
        value: String,
    },
    RegistrySet {
        key: String,
        value: String,
        value_type: RegistryValueType,
        data: serde_json::Value,
        #[serde(default)]
        overwrite: bool,
    },
    RegistryCreateKey {
        key: String,
    },
    RegistryDeleteKey {
        key: String,
    },
    RegistryDeleteValue {
        key: String,
        value: String,
    },
    MemoryDump {
        /// Where the endpoint writes the dump; edrgate picks one when omitted.
        #[serde(default)]
        path: Option<String>,
        /// Fetch the dump into edrgate's file store once written.
        #[serde(default)]
        fetch: bool,
    },
    Isolate,
    Release,
}

fn default_true() -> bool {
    true
}

/// The kind of a command, without its arguments (capabilities, permissions, metrics).
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum CommandKind {
    ProcessList,
    KillProcess,
    GetFile,
    PutFile,
    DeleteFile,
    QuarantineFile,
    UnquarantineFile,
    ListDirectory,
    CreateDirectory,
    Execute,
    RunScript,
    RegistryList,
    RegistryGet,
    RegistrySet,
    RegistryCreateKey,
    RegistryDeleteKey,
    RegistryDeleteValue,
    MemoryDump,
    Isolate,
    Release,
}

/// Permission classes: what a caller must be allowed to do to submit a command.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum CommandClass {
    Read,
    Write,
    Execute,
    Contain,
}

impl CommandKind {
    pub const ALL: [CommandKind; 20] = [
        Self::ProcessList,
        Self::KillProcess,
        Self::GetFile,
        Self::PutFile,
        Self::DeleteFile,
        Self::QuarantineFile,
        Self::UnquarantineFile,
        Self::ListDirectory,
        Self::CreateDirectory,
        Self::Execute,
        Self::RunScript,
        Self::RegistryList,
        Self::RegistryGet,
        Self::RegistrySet,
        Self::RegistryCreateKey,
        Self::RegistryDeleteKey,
        Self::RegistryDeleteValue,
        Self::MemoryDump,
        Self::Isolate,
        Self::Release,
    ];

    pub fn class(self) -> CommandClass {
        use CommandKind::*;
        match self {
            ProcessList | GetFile | ListDirectory | RegistryList | RegistryGet => {
                CommandClass::Read
            }
            KillProcess | PutFile | DeleteFile | QuarantineFile | UnquarantineFile
            | CreateDirectory | RegistrySet | RegistryCreateKey | RegistryDeleteKey
            | RegistryDeleteValue => CommandClass::Write,
            Execute | RunScript | MemoryDump => CommandClass::Execute,
            Isolate | Release => CommandClass::Contain,
        }
    }

    /// Whether the command changes the endpoint. Such commands are never re-sent blindly: the
    /// adapter records its intent first and reconciles with the vendor after a crash.
    pub fn has_side_effect(self) -> bool {
        self.class() != CommandClass::Read
    }

    pub fn as_str(self) -> &'static str {
        use CommandKind::*;
        match self {
            ProcessList => "process_list",
            KillProcess => "kill_process",
            GetFile => "get_file",
            PutFile => "put_file",
            DeleteFile => "delete_file",
            QuarantineFile => "quarantine_file",
            UnquarantineFile => "unquarantine_file",
            ListDirectory => "list_directory",
            CreateDirectory => "create_directory",
            Execute => "execute",
            RunScript => "run_script",
            RegistryList => "registry_list",
            RegistryGet => "registry_get",
            RegistrySet => "registry_set",
            RegistryCreateKey => "registry_create_key",
            RegistryDeleteKey => "registry_delete_key",
            RegistryDeleteValue => "registry_delete_value",
            MemoryDump => "memory_dump",
            Isolate => "isolate",
            Release => "release",
        }
    }
}

impl Command {
    /// The stored file (`/v1/files`) the command sends to the endpoint, if any: it must
    /// exist in the caller's tenant when the action is submitted.
    pub fn file_id(&self) -> Option<&str> {
        match self {
            Command::PutFile { file_id, .. } => Some(file_id),
            Command::RunScript { file_id, .. } => file_id.as_deref(),
            _ => None,
        }
    }

    pub fn kind(&self) -> CommandKind {
        match self {
            Command::ProcessList => CommandKind::ProcessList,
            Command::KillProcess { .. } => CommandKind::KillProcess,
            Command::GetFile { .. } => CommandKind::GetFile,
            Command::PutFile { .. } => CommandKind::PutFile,
            Command::DeleteFile { .. } => CommandKind::DeleteFile,
            Command::QuarantineFile { .. } => CommandKind::QuarantineFile,
            Command::UnquarantineFile { .. } => CommandKind::UnquarantineFile,
            Command::ListDirectory { .. } => CommandKind::ListDirectory,
            Command::CreateDirectory { .. } => CommandKind::CreateDirectory,
            Command::Execute { .. } => CommandKind::Execute,
            Command::RunScript { .. } => CommandKind::RunScript,
            Command::RegistryList { .. } => CommandKind::RegistryList,
            Command::RegistryGet { .. } => CommandKind::RegistryGet,
            Command::RegistrySet { .. } => CommandKind::RegistrySet,
            Command::RegistryCreateKey { .. } => CommandKind::RegistryCreateKey,
            Command::RegistryDeleteKey { .. } => CommandKind::RegistryDeleteKey,
            Command::RegistryDeleteValue { .. } => CommandKind::RegistryDeleteValue,
            Command::MemoryDump { .. } => CommandKind::MemoryDump,
            Command::Isolate => CommandKind::Isolate,
            Command::Release => CommandKind::Release,
        }
    }

    /// The part of [`Command::validate`] about arguments that must go together (`offset`
    /// needs `length`; registry `data` must suit `value_type`): each argument can be valid on
    /// its own, so the API answers these `422`, not `400`.
    pub fn check_combination(&self) -> Result<(), String> {
        match self {
            Command::GetFile { offset: Some(_), length: None, .. } => {
                Err("length is required with offset".into())
            }
            Command::RegistrySet { value_type, data, .. } => value_type.check_data(data),
            _ => Ok(()),
        }
    }

    /// Checks the arguments that do not depend on a backend: non-empty paths, no NUL bytes,
    /// no parent-directory segments, sane partial reads. Returns a message for the caller.
    pub fn validate(&self) -> Result<(), String> {
        fn path(field: &str, p: &str) -> Result<(), String> {
            if p.trim().is_empty() {
                return Err(format!("{field} must not be empty"));
            }
            if p.chars().count() > MAX_PATH {
                return Err(format!("{field} is longer than {MAX_PATH} characters"));
            }
            if p.contains('\0') {
                return Err(format!("{field} must not contain NUL bytes"));
            }
            // A response action names one object; `..` segments are how a path escapes the
            // place an operator reviewed, so they are refused rather than normalized.
            if p.split(['\\', '/']).any(|segment| segment == "..") {
                return Err(format!("{field} must not contain '..' segments"));
            }
            Ok(())
        }
        match self {
            Command::ProcessList | Command::Isolate | Command::Release => Ok(()),
            Command::KillProcess { pid, vendor_id } => {
                if vendor_id.as_ref().is_some_and(|v| v.is_empty() || v.chars().count() > 255) {
                    Err("vendor_id must be 1 to 255 characters".into())
                } else if *pid == 0 || *pid > u64::from(u32::MAX) {
                    Err("pid must be between 1 and 4294967295".into())
                } else {
                    Ok(())
                }
            }
            Command::GetFile { path: p, offset, length } => {
                path("path", p)?;
                self.check_combination()?;
                if length == &Some(0) {
                    return Err("length must be greater than 0".into());
                }
                // A range past the end of any file a filesystem can hold: refused here, so no
                // adapter computes `offset + length` past `u64::MAX`.
                if offset.unwrap_or(0).checked_add(length.unwrap_or(0)).is_none() {
                    return Err("offset + length must not exceed 18446744073709551615".into());
                }
                Ok(())
            }
            Command::PutFile { file_id, path: p } => {
                if file_id.trim().is_empty() {
                    return Err("file_id must not be empty".into());
                }
                path("path", p)
            }
            Command::DeleteFile { path: p }
            | Command::QuarantineFile { path: p }
            | Command::UnquarantineFile { path: p }
            | Command::ListDirectory { path: p }
            | Command::CreateDirectory { path: p } => path("path", p),
            Command::Execute { command_line, working_directory, output_file, .. } => {
                if command_line.trim().is_empty() {
                    return Err("command_line must not be empty".into());
                }
                if command_line.contains('\0') {
                    return Err("command_line must not contain NUL bytes".into());
                }
                if let Some(dir) = working_directory {
                    path("working_directory", dir)?;
                }
                if let Some(out) = output_file {
                    path("output_file", out)?;
                }
                Ok(())
            }
            Command::RunScript { script, file_id, .. } => {
                if script.trim().is_empty() {
                    return Err("script must not be empty".into());
                }
                if file_id.as_ref().is_some_and(|id| id.trim().is_empty()) {
                    return Err("file_id must not be empty".into());
                }
                Ok(())
            }
            Command::RegistryList { key }
            | Command::RegistryCreateKey { key }
            | Command::RegistryDeleteKey { key } => path("key", key),
            Command::RegistryGet { key, value } | Command::RegistryDeleteValue { key, value } => {
                path("key", key)?;
                if value.contains('\0') {
                    return Err("value must not contain NUL bytes".into());
                }
                Ok(())
            }
            Command::RegistrySet { key, value, .. } => {
                path("key", key)?;
                if value.contains('\0') {
                    return Err("value must not contain NUL bytes".into());
                }
                self.check_combination()
            }
            Command::MemoryDump { path: p, .. } => match p {
                Some(p) => path("path", p),
                None => Ok(()),
            },
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub enum RegistryValueType {
    #[serde(rename = "REG_SZ")]
    Sz,
    #[serde(rename = "REG_EXPAND_SZ")]
    ExpandSz,
    #[serde(rename = "REG_MULTI_SZ")]
    MultiSz,
    #[serde(rename = "REG_DWORD")]
    Dword,
    #[serde(rename = "REG_QWORD")]
    Qword,
    #[serde(rename = "REG_BINARY")]
    Binary,
}

impl RegistryValueType {
    /// The Windows name, e.g. `REG_SZ`, used by every vendor.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Sz => "REG_SZ",
            Self::ExpandSz => "REG_EXPAND_SZ",
            Self::MultiSz => "REG_MULTI_SZ",
            Self::Dword => "REG_DWORD",
            Self::Qword => "REG_QWORD",
            Self::Binary => "REG_BINARY",
        }
    }

    fn check_data(self, data: &serde_json::Value) -> Result<(), String> {
        use serde_json::Value;
        let ok = match self {
            Self::Sz | Self::ExpandSz => data.is_string(),
            Self::MultiSz => data.as_array().is_some_and(|a| a.iter().all(Value::is_string)),
            Self::Dword => data.as_u64().is_some_and(|n| n <= u64::from(u32::MAX)),
            Self::Qword => data.is_u64(),
            // Hex string, the convention of `reg.exe` exports.
            Self::Binary => data
                .as_str()
                .is_some_and(|s| s.len() % 2 == 0 && s.bytes().all(|b| b.is_ascii_hexdigit())),
        };
        if ok {
            Ok(())
        } else {
            let expected = match self {
                Self::Sz | Self::ExpandSz => "a string",
                Self::MultiSz => "an array of strings",
                Self::Dword => "an integer between 0 and 4294967295",
                Self::Qword => "a non-negative integer",
                Self::Binary => "a hex string",
            };
            Err(format!("data for {} must be {expected}", self.as_str()))
        }
    }
}

/// The typed result of a succeeded command. Tagged by `type` on the wire.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum CommandResult {
    /// `process_list`.
    Processes { processes: Vec<ProcessInfo> },
    /// `list_directory`.
    Directory { entries: Vec<DirectoryEntry> },
    /// `get_file`, and `memory_dump` with `fetch`: the bytes now live in edrgate's file store.
    File { file: FileRef },
    /// `execute` and `run_script`.
    Execution {
        #[serde(default)]
        pid: Option<u64>,
        #[serde(default)]
        exit_code: Option<i64>,
        /// Captured output, decoded lossily as UTF-8 and capped; the whole output is in `output_file`.
        #[serde(default)]
        output: Option<String>,
        #[serde(default)]
        output_file: Option<FileRef>,
    },
    /// `registry_list`.
    RegistryKey { sub_keys: Vec<String>, values: Vec<RegistryValue> },
    /// `registry_get`.
    RegistryValue { value: RegistryValue },
    /// `memory_dump`: where the dump was written on the endpoint.
    MemoryDump {
        path: String,
        #[serde(default)]
        file: Option<FileRef>,
    },
    /// `isolate` / `release`: the containment state the vendor reports afterwards.
    Containment { isolated: bool },
    /// Commands whose success carries no data (kill, delete, quarantine, put, registry writes,
    /// mkdir).
    Done,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ProcessInfo {
    pub pid: u64,
    #[serde(default)]
    pub parent_pid: Option<u64>,
    pub name: String,
    #[serde(default)]
    pub path: Option<String>,
    #[serde(default)]
    pub command_line: Option<String>,
    #[serde(default)]
    pub username: Option<String>,
    #[serde(default)]
    pub sid: Option<String>,
    /// Unix seconds.
    #[serde(default)]
    pub started_at: Option<i64>,
    /// The vendor's own process id (e.g. Carbon Black `proc_guid`).
    #[serde(default)]
    pub vendor_id: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct DirectoryEntry {
    pub name: String,
    pub is_directory: bool,
    pub size: u64,
    #[serde(default)]
    pub attributes: Vec<String>,
    /// Unix seconds.
    #[serde(default)]
    pub created_at: Option<i64>,
    #[serde(default)]
    pub modified_at: Option<i64>,
    #[serde(default)]
    pub accessed_at: Option<i64>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct RegistryValue {
    pub name: String,
    /// Windows type name (`REG_SZ`, `REG_DWORD`, …) as the vendor reported it.
    pub value_type: String,
    pub data: serde_json::Value,
}

/// A file in edrgate's store.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct FileRef {
    pub file_id: String,
    pub name: String,
    pub size: u64,
    /// Lower-case hex SHA-256 of the content.
    pub sha256: String,
}

/// Lifecycle of commands, runs and actions.
///
/// `queued → dispatched → running →` a terminal state. `skipped` applies to commands (not run
/// because an earlier one failed with `on_error: stop`); `partially_succeeded` to actions (some
/// runs succeeded, some did not).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Accepted, waiting for the engine or for a vendor budget (session slot, rate limit).
    Queued,
    /// Handed to the vendor, which has not started it (e.g. a session waiting for check-in).
    Dispatched,
    Running,
    Succeeded,
    PartiallySucceeded,
    Failed,
    Cancelled,
    TimedOut,
    Skipped,
}

impl Status {
    pub const ALL: [Status; 9] = [
        Status::Queued,
        Status::Dispatched,
        Status::Running,
        Status::Succeeded,
        Status::PartiallySucceeded,
        Status::Failed,
        Status::Cancelled,
        Status::TimedOut,
        Status::Skipped,
    ];

    pub fn is_terminal(self) -> bool {
        !matches!(self, Status::Queued | Status::Dispatched | Status::Running)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Status::Queued => "queued",
            Status::Dispatched => "dispatched",
            Status::Running => "running",
            Status::Succeeded => "succeeded",
            Status::PartiallySucceeded => "partially_succeeded",
            Status::Failed => "failed",
            Status::Cancelled => "cancelled",
            Status::TimedOut => "timed_out",
            Status::Skipped => "skipped",
        }
    }

    pub fn parse(s: &str) -> Option<Status> {
        Some(match s {
            "queued" => Status::Queued,
            "dispatched" => Status::Dispatched,
            "running" => Status::Running,
            "succeeded" => Status::Succeeded,
            "partially_succeeded" => Status::PartiallySucceeded,
            "failed" => Status::Failed,
            "cancelled" => Status::Cancelled,
            "timed_out" => Status::TimedOut,
            "skipped" => Status::Skipped,
            _ => return None,
        })
    }

    /// The status of a run from the statuses of its commands (in order).
    pub fn of_run(commands: impl IntoIterator<Item = Status>) -> Status {
        let mut any_started = false;
        let mut all_terminal = true;
        let (mut failed, mut cancelled, mut timed_out) = (false, false, false);
        for s in commands {
            match s {
                Status::Queued => all_terminal = false,
                Status::Dispatched | Status::Running => {
                    all_terminal = false;
                    any_started = true;
                }
                Status::Failed | Status::PartiallySucceeded => failed = true,
                Status::Cancelled => cancelled = true,
                Status::TimedOut => timed_out = true,
                Status::Succeeded | Status::Skipped => any_started = true,
            }
        }
        if !all_terminal {
            return if any_started { Status::Running } else { Status::Queued };
        }
        if timed_out {
            Status::TimedOut
        } else if cancelled {
            Status::Cancelled
        } else if failed {
            Status::Failed
        } else {
            Status::Succeeded
        }
    }

    /// The status of an action from the statuses of its runs.
    pub fn of_action(runs: impl IntoIterator<Item = Status>) -> Status {
        let mut counts = StatusCounts::default();
        runs.into_iter().for_each(|s| counts.add(s));
        Status::of_counts(&counts)
    }

    /// [`Status::of_action`] from the number of runs in each status: what the store keeps
    /// per action, so a run's step does not read its siblings.
    pub fn of_counts(c: &StatusCounts) -> Status {
        let unfinished = c.queued + c.dispatched + c.running;
        if unfinished > 0 {
            return if unfinished == c.queued && c.total() == c.queued {
                Status::Queued
            } else if c.running > 0 {
                Status::Running
            } else {
                Status::Dispatched
            };
        }
        if c.succeeded == c.total() {
            Status::Succeeded
        } else if c.succeeded > 0 {
            Status::PartiallySucceeded
        } else if c.timed_out > 0 {
            Status::TimedOut
        } else if c.cancelled > 0 {
            Status::Cancelled
        } else {
            Status::Failed
        }
    }
}

/// The closed set of error codes. Stable: callers branch on them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    InvalidRequest,
    PayloadTooLarge,
    Unauthenticated,
    Forbidden,
    NotFound,
    Conflict,
    /// The gateway's own inbound limits (per tenant), not a vendor's: retry after
    /// `Retry-After`.
    RateLimited,
    UnsupportedCommand,
    DeviceNotFound,
    DeviceAmbiguous,
    DeviceOffline,
    FileNotFound,
    AccessDenied,
    CommandFailed,
    VendorRateLimited,
    VendorUnavailable,
    VendorAuthFailed,
    VendorRejected,
    OutcomeUnknown,
    Timeout,
    Cancelled,
    Internal,
}

impl ErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::InvalidRequest => "invalid_request",
            Self::PayloadTooLarge => "payload_too_large",
            Self::Unauthenticated => "unauthenticated",
            Self::Forbidden => "forbidden",
            Self::NotFound => "not_found",
            Self::Conflict => "conflict",
            Self::RateLimited => "rate_limited",
            Self::UnsupportedCommand => "unsupported_command",
            Self::DeviceNotFound => "device_not_found",
            Self::DeviceAmbiguous => "device_ambiguous",
            Self::DeviceOffline => "device_offline",
            Self::FileNotFound => "file_not_found",
            Self::AccessDenied => "access_denied",
            Self::CommandFailed => "command_failed",
            Self::VendorRateLimited => "vendor_rate_limited",
            Self::VendorUnavailable => "vendor_unavailable",
            Self::VendorAuthFailed => "vendor_auth_failed",
            Self::VendorRejected => "vendor_rejected",
            Self::OutcomeUnknown => "outcome_unknown",
            Self::Timeout => "timeout",
            Self::Cancelled => "cancelled",
            Self::Internal => "internal",
        }
    }
}

/// An error as reported on a command or run: the stable code, a message, and the vendor's raw
/// code and text when a vendor spoke.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ErrorInfo {
    pub code: ErrorCode,
    pub message: String,
    /// The vendor's raw code, e.g. an HRESULT as `0x80070002`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vendor_code: Option<String>,
    /// The vendor's raw text for it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vendor_message: Option<String>,
}

impl ErrorInfo {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        ErrorInfo { code, message: message.into(), vendor_code: None, vendor_message: None }
    }

    pub fn with_vendor(mut self, code: impl Into<String>, message: impl Into<String>) -> Self {
        self.vendor_code = Some(code.into());
        let message = message.into();
        self.vendor_message = (!message.is_empty()).then_some(message);
        self
    }
}

/// A device a backend knows.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Device {
    pub backend: String,
    pub device_id: String,
    pub hostname: String,
    pub online: bool,
    #[serde(default)]
    pub os: Option<String>,
    #[serde(default)]
    pub isolated: Option<bool>,
    #[serde(default)]
    pub last_seen: Option<String>,
    /// The vendor's device group (CB sensor group id, Defender machine group, Cybereason
    /// group), matched by `group` routing rules.
    #[serde(default)]
    pub group: Option<String>,
    /// The vendor's device tags (Defender machine tags…), matched by `tag` routing rules.
    #[serde(default)]
    pub tags: Vec<String>,
}

/// What a backend can do.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Capabilities {
    pub backend: String,
    /// Adapter kind, e.g. `carbonblack`.
    pub kind: String,
    pub commands: Vec<CommandSupport>,
    pub limits: Limits,
}

impl Capabilities {
    pub fn supports(&self, kind: CommandKind) -> bool {
        self.commands.iter().any(|c| c.command == kind)
    }

    /// What one device of this backend can run: the backend's commands minus those `refuse`
    /// rules out for it (answering why), and every other command with the reason. The usual
    /// body of an adapter's [`crate::Adapter::device_support`].
    pub fn for_device(&self, refuse: impl Fn(CommandKind) -> Option<String>) -> DeviceSupport {
        let mut support = DeviceSupport { commands: Vec::new(), unsupported: Vec::new() };
        for command in CommandKind::ALL {
            let reason = match self.commands.iter().find(|c| c.command == command) {
                None => Some(format!(
                    "{} is not supported by backend {:?} ({})",
                    command.as_str(),
                    self.backend,
                    self.kind
                )),
                Some(how) => match refuse(command) {
                    None => {
                        support.commands.push(how.clone());
                        None
                    }
                    reason => reason,
                },
            };
            if let Some(reason) = reason {
                support.unsupported.push(Unsupported { command, reason });
            }
        }
        support
    }
}

/// What one device can run, and how: its backend's capabilities narrowed by the device's OS,
/// agent version and the backend's settings. Every command kind is in exactly one of the
/// two lists.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct DeviceSupport {
    /// The commands the device runs, with how the backend carries each out.
    pub commands: Vec<CommandSupport>,
    /// The commands it cannot run, each with the reason; submitted anyway, such a command
    /// ends `unsupported_command` with that reason before anything is sent to the vendor.
    pub unsupported: Vec<Unsupported>,
}

impl DeviceSupport {
    /// Why the device cannot run `kind`, if it cannot.
    pub fn refusal(&self, kind: CommandKind) -> Option<&str> {
        self.unsupported.iter().find(|u| u.command == kind).map(|u| u.reason.as_str())
    }
}

/// A command a device cannot run.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Unsupported {
    pub command: CommandKind,
    /// Why, e.g. `Carbon Black sensor 2 (Ubuntu 22.04.3 LTS) cannot run this command: …`.
    pub reason: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct CommandSupport {
    pub command: CommandKind,
    pub via: Via,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub notes: Option<String>,
}

/// How a backend carries out a command.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Via {
    /// A vendor primitive.
    Native,
    /// A helper script edrgate ships and runs through the vendor.
    Script,
    /// A vendor request the operator configured for the backend (one no public source
    /// documents, such as Cybereason's IR tool run request): it works as configured.
    Configured,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Limits {
    /// Concurrent vendor sessions (or live-response actions) edrgate keeps open at most.
    #[serde(default)]
    pub concurrent_sessions: Option<u32>,
    /// Largest file `put_file` accepts, in bytes.
    #[serde(default)]
    pub max_upload_bytes: Option<u64>,
    /// Vendor calls per minute edrgate allows itself.
    #[serde(default)]
    pub calls_per_minute: Option<u32>,
}

/// An action as reported by the API.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Action {
    pub id: Uuid,
    pub status: Status,
    #[serde(default)]
    pub comment: Option<String>,
    pub on_error: OnError,
    pub commands: Vec<Command>,
    pub runs: Vec<Run>,
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub updated_at: OffsetDateTime,
    #[serde(default, with = "time::serde::rfc3339::option")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub deadline: Option<OffsetDateTime>,
    /// Set once a cancel was requested.
    pub cancel_requested: bool,
    #[serde(default)]
    pub request_id: Option<String>,
    /// Counts over every run of the action, including those not in `runs`.
    #[serde(default)]
    pub summary: ActionSummary,
    /// Set when the action has more runs than one answer carries ([`INLINE_RUNS`], in target
    /// order): the rest come page by page from `GET /v1/actions/{id}/runs?cursor=…`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runs_next_cursor: Option<String>,
}

/// Runs an action answer carries; an action with more has the first ones, its `summary` and
/// `runs_next_cursor`. Small actions stay one document.
pub const INLINE_RUNS: usize = 100;

/// How many runs and commands of an action are in each status.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ActionSummary {
    /// Runs in all (one per target).
    pub runs: u64,
    pub runs_by_status: StatusCounts,
    /// Per command of the request, in order: its status on every run.
    pub commands: Vec<CommandSummary>,
}

/// One command of the request, across the action's runs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct CommandSummary {
    pub index: usize,
    #[serde(rename = "type")]
    pub kind: CommandKind,
    pub by_status: StatusCounts,
}

/// A count per status.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct StatusCounts {
    pub queued: u64,
    pub dispatched: u64,
    pub running: u64,
    pub succeeded: u64,
    pub partially_succeeded: u64,
    pub failed: u64,
    pub cancelled: u64,
    pub timed_out: u64,
    pub skipped: u64,
}

impl StatusCounts {
    pub fn add(&mut self, status: Status) {
        *self.count_mut(status) += 1;
    }

    /// Takes one away (a run or command leaving `status`); never below zero.
    pub fn remove(&mut self, status: Status) {
        let n = self.count_mut(status);
        *n = n.saturating_sub(1);
    }

    pub fn total(&self) -> u64 {
        Status::ALL.iter().map(|s| self.get(*s)).sum()
    }

    pub fn get(&self, status: Status) -> u64 {
        match status {
            Status::Queued => self.queued,
            Status::Dispatched => self.dispatched,
            Status::Running => self.running,
            Status::Succeeded => self.succeeded,
            Status::PartiallySucceeded => self.partially_succeeded,
            Status::Failed => self.failed,
            Status::Cancelled => self.cancelled,
            Status::TimedOut => self.timed_out,
            Status::Skipped => self.skipped,
        }
    }

    fn count_mut(&mut self, status: Status) -> &mut u64 {
        match status {
            Status::Queued => &mut self.queued,
            Status::Dispatched => &mut self.dispatched,
            Status::Running => &mut self.running,
            Status::Succeeded => &mut self.succeeded,
            Status::PartiallySucceeded => &mut self.partially_succeeded,
            Status::Failed => &mut self.failed,
            Status::Cancelled => &mut self.cancelled,
            Status::TimedOut => &mut self.timed_out,
            Status::Skipped => &mut self.skipped,
        }
    }
}

impl ActionSummary {
    /// The summary of runs given by their status and their commands' statuses.
    pub fn of<'a>(
        commands: &[Command],
        runs: impl IntoIterator<Item = (Status, &'a [Status])>,
    ) -> ActionSummary {
        let mut summary = ActionSummary {
            runs: 0,
            runs_by_status: StatusCounts::default(),
            commands: commands
                .iter()
                .enumerate()
                .map(|(index, c)| CommandSummary {
                    index,
                    kind: c.kind(),
                    by_status: StatusCounts::default(),
                })
                .collect(),
        };
        for (status, commands) in runs {
            summary.add_run(status, commands);
        }
        summary
    }

    /// Counts a run in `status` whose commands are in `commands`.
    pub fn add_run(&mut self, status: Status, commands: &[Status]) {
        self.runs += 1;
        self.runs_by_status.add(status);
        for (c, s) in self.commands.iter_mut().zip(commands) {
            c.by_status.add(*s);
        }
    }

    /// Takes back what [`ActionSummary::add_run`] counted: with the two, a step moves its run
    /// from its old statuses to its new ones without reading the action's other runs.
    pub fn remove_run(&mut self, status: Status, commands: &[Status]) {
        self.runs = self.runs.saturating_sub(1);
        self.runs_by_status.remove(status);
        for (c, s) in self.commands.iter_mut().zip(commands) {
            c.by_status.remove(*s);
        }
    }
}

/// The commands of one action on one device.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Run {
    pub id: Uuid,
    pub target: Target,
    #[serde(default)]
    pub backend: Option<String>,
    #[serde(default)]
    pub device_id: Option<String>,
    #[serde(default)]
    pub hostname: Option<String>,
    pub status: Status,
    /// Set when the run failed as a whole (e.g. the device could not be resolved).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ErrorInfo>,
    pub commands: Vec<CommandState>,
}

/// One command of a run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct CommandState {
    pub index: usize,
    #[serde(rename = "type")]
    pub kind: CommandKind,
    pub status: Status,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<CommandResult>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ErrorInfo>,
    /// The vendor's reference for it (command id, machine action id, batch id).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vendor_ref: Option<String>,
    /// The vendor's own status word, as last seen.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vendor_status: Option<String>,
}

#[cfg(test)]
mod tests;
