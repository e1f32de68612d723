//! Which OpenC2 action–target pairs edrgate answers, and the edrgate command each one is:
//! the ER profile's pairs that have a command (ER Table 2.3-1; front-doors.md §2.5) and the
//! `x-edrgate` profile for the rest (§2.6). `query features`, `query command` and
//! `cancel command` are answered by the consumer itself.

use edrgate_adapter::{Capabilities, Command as EdrCommand, CommandKind, RegistryValueType};
use serde_json::{Value, json};

use super::message::{Command, status};

/// Pairs that submit one edrgate command, with the kind a backend must support for the pair
/// to be listed in `query features` (per tenant).
pub const SUBMITTED: [(&str, &str, CommandKind); 17] = [
    ("contain", "device", CommandKind::Isolate),
    ("allow", "device", CommandKind::Release),
    ("stop", "process", CommandKind::KillProcess),
    ("delete", "file", CommandKind::DeleteFile),
    // A quarantine (Cybereason's QUARANTINE_FILE, CB/CrowdStrike where wired) is what the ER
    // draft calls `contain file`; `allow file` lifts it (ER §2.3.2, §2.3.4).
    ("contain", "file", CommandKind::QuarantineFile),
    ("allow", "file", CommandKind::UnquarantineFile),
    ("set", "er:registry_entry", CommandKind::RegistrySet),
    ("create", "er:registry_entry", CommandKind::RegistryCreateKey),
    ("delete", "er:registry_entry", CommandKind::RegistryDeleteKey),
    ("start", "file", CommandKind::Execute),
    ("query", "x-edrgate:processes", CommandKind::ProcessList),
    ("query", "x-edrgate:directory", CommandKind::ListDirectory),
    ("query", "x-edrgate:registry_key", CommandKind::RegistryList),
    ("copy", "file", CommandKind::GetFile),
    ("create", "x-edrgate:directory", CommandKind::CreateDirectory),
    ("start", "x-edrgate:script", CommandKind::RunScript),
    ("copy", "x-edrgate:memory", CommandKind::MemoryDump),
];

/// Pairs the consumer answers itself, always listed.
pub const LOCAL: [(&str, &str); 3] =
    [("query", "features"), ("query", "command"), ("cancel", "command")];

/// `pairs` of `query features`: action → targets, for what the tenant's backends can do.
pub fn pairs(capabilities: &[Capabilities]) -> Value {
    let mut pairs = serde_json::Map::new();
    let supported = SUBMITTED
        .iter()
        .filter(|(_, _, kind)| capabilities.iter().any(|c| c.supports(*kind)))
        .map(|(action, target, _)| (*action, *target));
    for (action, target) in LOCAL.into_iter().chain(supported) {
        let targets = pairs.entry(action).or_insert_with(|| json!([]));
        if let Value::Array(targets) = targets
            && !targets.iter().any(|t| t == target)
        {
            targets.push(json!(target));
        }
    }
    Value::Object(pairs)
}

/// A refusal of the command: its OpenC2 status and text.
pub type Refused = (u16, String);

fn bad(text: &str) -> Refused {
    (status::BAD_REQUEST, text.to_owned())
}

fn unsupported_option(text: &str) -> Refused {
    (status::NOT_IMPLEMENTED, format!("Option not supported: {text}"))
}

fn string<'a>(specifiers: &'a Value, name: &str) -> Option<&'a str> {
    specifiers.get(name).and_then(Value::as_str).filter(|s| !s.is_empty())
}

/// The edrgate command of `command`; `None` when the pair is not one edrgate submits.
pub fn edrgate_command(command: &Command) -> Option<Result<EdrCommand, Refused>> {
    let s = &command.specifiers;
    let x_arg = |name: &str| command.arg("x-edrgate", name);
    Some(match (command.action.as_str(), command.target.as_str()) {
        ("contain", "device") => match command.arg("er", "device_containment").map(Value::as_str) {
            // ER §2.3.3.1's wording for a missing containment type.
            None => Err(bad("Containment type argument not populated")),
            Some(Some("network_isolation"))
                if command.arg("er", "permitted_addresses").is_none() =>
            {
                Ok(EdrCommand::Isolate)
            }
            Some(Some("network_isolation")) => Err(unsupported_option("permitted_addresses")),
            Some(Some(other @ ("app_restriction" | "disable_nic"))) => {
                Err(unsupported_option(&format!("device_containment {other}")))
            }
            Some(_) => Err(bad(
                "device_containment must be network_isolation, app_restriction or disable_nic",
            )),
        },
        ("allow", "device") => match command.arg("er", "device_containment").map(Value::as_str) {
            None | Some(Some("network_isolation")) => Ok(EdrCommand::Release),
            Some(Some(other)) => Err(unsupported_option(&format!("device_containment {other}"))),
            Some(None) => Err(bad("device_containment must be a string")),
        },
        ("stop", "process") => match s.get("pid").map(Value::as_u64) {
            Some(Some(pid)) => Ok(EdrCommand::KillProcess { pid, vendor_id: None }),
            Some(None) => Err(bad("process pid must be a non-negative integer")),
            // ER §2.3.6.2's wording; edrgate kills by pid, not by name or command line.
            None if s.as_object().is_none_or(serde_json::Map::is_empty) => {
                Err(bad("Process Target does not have any properties populated"))
            }
            None => Err(unsupported_option("stopping a process by other properties than pid")),
        },
        ("delete", "file") => file_path(s).map(|path| EdrCommand::DeleteFile { path }),
        ("contain", "file") => file_path(s).map(|path| EdrCommand::QuarantineFile { path }),
        ("allow", "file") => file_path(s).map(|path| EdrCommand::UnquarantineFile { path }),
        ("copy", "file") => {
            file_path(s).map(|path| EdrCommand::GetFile { path, offset: None, length: None })
        }
        // ER's `start file` has no arguments or output model: the file is run as a command line.
        ("start", "file") => file_path(s).map(|command_line| EdrCommand::Execute {
            command_line,
            wait: true,
            working_directory: None,
            output_file: None,
        }),
        ("set", "er:registry_entry") => registry_set(command),
        ("create", "er:registry_entry") => {
            registry_key(s).map(|key| EdrCommand::RegistryCreateKey { key })
        }
        ("delete", "er:registry_entry") => registry_key(s).map(|key| {
            // ER has no value name (front-doors.md §2.5): with `x-edrgate.value_name` a value
            // is deleted, else the key.
            match x_arg("value_name").and_then(Value::as_str) {
                Some(value) => EdrCommand::RegistryDeleteValue { key, value: value.to_owned() },
                None => EdrCommand::RegistryDeleteKey { key },
            }
        }),
        ("query", "x-edrgate:processes") => Ok(EdrCommand::ProcessList),
        ("query", "x-edrgate:directory") => {
            required(s, "path").map(|path| EdrCommand::ListDirectory { path })
        }
        ("create", "x-edrgate:directory") => {
            required(s, "path").map(|path| EdrCommand::CreateDirectory { path })
        }
        ("query", "x-edrgate:registry_key") => {
            registry_key(s).map(|key| EdrCommand::RegistryList { key })
        }
        ("start", "x-edrgate:script") => required(s, "name").and_then(|script| {
            let args = match s.get("args") {
                None => Vec::new(),
                Some(Value::Array(args)) => args
                    .iter()
                    .map(|a| a.as_str().map(str::to_owned))
                    .collect::<Option<Vec<_>>>()
                    .ok_or_else(|| bad("x-edrgate:script args must be strings"))?,
                Some(_) => return Err(bad("x-edrgate:script args must be an array of strings")),
            };
            let file_id = string(s, "file_id").map(str::to_owned);
            Ok(EdrCommand::RunScript { script, args, file_id })
        }),
        ("copy", "x-edrgate:memory") => {
            Ok(EdrCommand::MemoryDump { path: string(s, "path").map(str::to_owned), fetch: true })
        }
        _ => return None,
    })
}

fn required(specifiers: &Value, name: &str) -> Result<String, Refused> {
    string(specifiers, name).map(str::to_owned).ok_or_else(|| bad(&format!("{name} is required")))
}

/// LS `file {name, path, hashes}`: `path` is the file's path; a `name` not already its last
/// segment is appended (LS10 §3.4.1.6). Hash-only targets cannot be acted on by path.
fn file_path(file: &Value) -> Result<String, Refused> {
    let path = string(file, "path");
    let name = string(file, "name");
    match (path, name) {
        (Some(path), None) => Ok(path.to_owned()),
        (Some(path), Some(name)) if path.ends_with(name) => Ok(path.to_owned()),
        (Some(path), Some(name)) => {
            let separator = if path.contains('\\') { '\\' } else { '/' };
            Ok(format!("{}{separator}{name}", path.trim_end_matches(['\\', '/'])))
        }
        (None, _) if file.get("hashes").is_some() => {
            Err(unsupported_option("file targets by hash (a path is needed)"))
        }
        (None, _) => Err(bad("File Target does not have a path")),
    }
}

fn registry_key(entry: &Value) -> Result<String, Refused> {
    string(entry, "key").map(str::to_owned).ok_or_else(|| bad("Registry entry key not specified"))
}

/// `set er:registry_entry {key, type, value}`: ER names no value, so the value is the last
/// segment of `key` (`HKLM\Software\Acme\Level` sets `Level` under `HKLM\Software\Acme`),
/// unless `args.x-edrgate.value_name` names it (then `key` is the key itself).
fn registry_set(command: &Command) -> Result<EdrCommand, Refused> {
    let entry = &command.specifiers;
    let full = registry_key(entry)?;
    let Some(kind) = string(entry, "type") else {
        // ER §2.3's wording.
        return Err(bad("Registry entry type not specified"));
    };
    let value_type: RegistryValueType = serde_json::from_value(json!(kind))
        .map_err(|_| unsupported_option(&format!("registry type {kind}")))?;
    let (key, value) = match command.arg("x-edrgate", "value_name").and_then(Value::as_str) {
        Some(name) => (full, name.to_owned()),
        None => match full.rsplit_once('\\') {
            Some((key, value)) if !key.is_empty() && !value.is_empty() => {
                (key.to_owned(), value.to_owned())
            }
            _ => return Err(bad("Registry entry key must end with the value's name (KEY\\NAME)")),
        },
    };
    let text = entry.get("value").cloned().unwrap_or(Value::Null);
    // ER's `value` is a string; numbers are accepted for the integer types.
    let data = match (value_type, &text) {
        (RegistryValueType::Dword | RegistryValueType::Qword, Value::String(s)) => {
            let parsed = s
                .trim()
                .parse::<u64>()
                .map_err(|_| bad("Registry entry value must be an integer for this type"))?;
            json!(parsed)
        }
        (_, Value::Null) => return Err(bad("Registry entry value not specified")),
        (_, other) => other.clone(),
    };
    Ok(EdrCommand::RegistrySet { key, value, value_type, data, overwrite: true })
}
