//! Every translation between Defender and the normalized model, in one place:
//!
//! - [`classify`]: HTTP failures → [`AdapterError`] (the only place HTTP statuses and the
//!   error envelope's `error.code` are read; the raw code is kept as `vendor_code`);
//! - [`ACTION_STATUSES`], [`COMMAND_STATUSES`]: status words → [`Status`];
//! - [`API_ERRORS`] and [`COMMAND_ERRORS`]: error codes and `errors[]` texts → [`ErrorCode`];
//! - normalized commands → live-response commands, edrgate's helper scripts and their JSON
//!   output → typed results; machines → devices.

use edrgate_adapter::http;
use edrgate_adapter::{
    AdapterError, Command, CommandKind, CommandResult, Device, DirectoryEntry, ErrorCode,
    ErrorInfo, ProcessInfo, RegistryValue, Status,
};
use reqwest::StatusCode;
use reqwest::header::HeaderMap;
use serde::Serialize;

use crate::wire::{self, HELPER_MARKER, HelperOutput, LrCommand, keys, kinds};

/// Machine action status words (§4.2, §4.3). `TimeOut` is terminal (§14, unlike some clients).
/// An unknown word keeps the action pending.
pub(crate) const ACTION_STATUSES: &[(&str, Status)] = &[
    ("Pending", Status::Dispatched),
    ("InProgress", Status::Running),
    ("Succeeded", Status::Succeeded),
    ("Failed", Status::Failed),
    ("TimeOut", Status::TimedOut),
    ("Cancelled", Status::Cancelled),
];

/// `commandStatus` words: the full EDMX enum (§4.2). There is no command-level `InProgress`.
pub(crate) const COMMAND_STATUSES: &[(&str, Status)] = &[
    ("Created", Status::Dispatched),
    ("Submitted", Status::Dispatched),
    ("PendingResource", Status::Dispatched),
    ("Executing", Status::Running),
    ("Completed", Status::Succeeded),
    ("Failed", Status::Failed),
];

/// The API's `error.code` values (§3.3, §7) and what they mean for a caller.
pub(crate) const API_ERRORS: &[(&str, ErrorCode)] = &[
    ("ActiveRequestAlreadyExists", ErrorCode::Conflict),
    ("ResourceNotFound", ErrorCode::NotFound),
    ("NotFound", ErrorCode::NotFound),
    ("TooManyRequests", ErrorCode::VendorRateLimited),
    ("Unauthorized", ErrorCode::VendorAuthFailed),
    ("Forbidden", ErrorCode::VendorAuthFailed),
    ("DisabledFeature", ErrorCode::VendorRejected),
    ("DisallowedOperation", ErrorCode::VendorRejected),
    ("OsPlatformNotSupported", ErrorCode::VendorRejected),
    ("ClientVersionNotSupported", ErrorCode::VendorRejected),
    ("InvalidRequestBody", ErrorCode::VendorRejected),
    ("MissingRequiredParameter", ErrorCode::VendorRejected),
    ("InvalidInput", ErrorCode::VendorRejected),
    ("BadRequest", ErrorCode::VendorRejected),
    ("ODataError", ErrorCode::VendorRejected),
    ("InternalServerError", ErrorCode::VendorUnavailable),
];

/// The API code for "a live-response action already runs on this machine" (§3.3).
pub(crate) const ACTIVE_REQUEST: &str = "ActiveRequestAlreadyExists";

/// Texts of a failed command's `errors[]` (undocumented free text, §4.2, §16), matched
/// case-insensitively as substrings, first match wins; anything else is `command_failed`.
pub(crate) const COMMAND_ERRORS: &[(&str, ErrorCode)] = &[
    ("not found", ErrorCode::FileNotFound),
    ("does not exist", ErrorCode::FileNotFound),
    ("cannot find", ErrorCode::FileNotFound),
    ("access denied", ErrorCode::AccessDenied),
    ("access is denied", ErrorCode::AccessDenied),
    ("timed out", ErrorCode::Timeout),
    ("timeout", ErrorCode::Timeout),
    ("offline", ErrorCode::DeviceOffline),
];

/// How a tenant without "Live Response unsigned script execution" refuses an unsigned script.
/// Defender's sensor starts library scripts with `powershell.exe -ExecutionPolicy AllSigned`
/// (seen in the sensor's command line, gist johnjohnsp1/5850a4ed…), so the refusal is
/// PowerShell's own: "File … cannot be loaded. The file … is not digitally signed. You cannot
/// run this script on the current system." (`PSSecurityException`, `UnauthorizedAccess`).
/// Matched case-insensitively wherever the text shows: a failed command's `errors[]`, or the
/// error stream of a completed RunScript.
pub(crate) const UNSIGNED_REFUSALS: &[&str] = &["is not digitally signed", "script is not signed"];

/// The tenant setting that allows unsigned scripts, as the portal names it.
pub(crate) const UNSIGNED_SETTING: &str = "Live Response unsigned script execution";

fn unsigned_refusal(text: &str) -> Option<ErrorInfo> {
    let lower = text.to_ascii_lowercase();
    UNSIGNED_REFUSALS.iter().any(|n| lower.contains(n)).then(|| {
        ErrorInfo::new(
            ErrorCode::VendorRejected,
            format!(
                "Defender refused to run an unsigned script: the tenant's \"{UNSIGNED_SETTING}\" setting (Settings > Endpoints > Advanced features) is off. Turn it on, or set unsigned_scripts = false on this backend and provide signed copies of edrgate's helpers (see adapters/defender/scripts/README.md)"
            ),
        )
    })
}

/// The `error` words of edrgate's helper scripts (see `scripts/`).
pub(crate) const HELPER_ERRORS: &[(&str, ErrorCode)] = &[
    ("file_not_found", ErrorCode::FileNotFound),
    ("not_found", ErrorCode::NotFound),
    ("access_denied", ErrorCode::AccessDenied),
    ("conflict", ErrorCode::Conflict),
    ("invalid_request", ErrorCode::InvalidRequest),
];

pub(crate) fn action_status(word: &str) -> Status {
    lookup(ACTION_STATUSES, word).unwrap_or(Status::Dispatched)
}

pub(crate) fn command_status(word: &str) -> Status {
    lookup(COMMAND_STATUSES, word).unwrap_or(Status::Dispatched)
}

fn lookup<T: Copy>(table: &[(&str, T)], word: &str) -> Option<T> {
    let word = word.trim();
    table.iter().find(|(w, _)| w.eq_ignore_ascii_case(word)).map(|(_, s)| *s)
}

/// The one function that turns a non-2xx answer into an error. The envelope's `error.code`
/// decides where it is known, the HTTP status otherwise; the code and message are kept.
pub(crate) fn classify(status: StatusCode, headers: &HeaderMap, body: &str) -> AdapterError {
    let envelope: Option<wire::ErrorEnvelope> = serde_json::from_str(body).ok();
    let Some(wire::ErrorEnvelope { error }) = envelope else {
        return http::status_error(status, headers, body);
    };
    let code = match lookup(API_ERRORS, &error.code) {
        Some(code) => code,
        None => {
            return http::status_error(status, headers, &error.message).with_vendor(
                if error.code.is_empty() { status.as_u16().to_string() } else { error.code },
                error.message,
            );
        }
    };
    let message = match code {
        ErrorCode::Conflict => "a live-response action already runs on this machine",
        ErrorCode::NotFound => "Defender does not know this object",
        ErrorCode::VendorRateLimited => "Defender is rate limiting",
        ErrorCode::VendorAuthFailed => "Defender refused edrgate's credentials or permissions",
        ErrorCode::VendorUnavailable => "Defender failed internally",
        _ => "Defender rejected the request",
    };
    let transient = matches!(code, ErrorCode::VendorRateLimited | ErrorCode::VendorUnavailable)
        || status.is_server_error();
    let e = if transient {
        AdapterError::transient(code, message)
    } else {
        AdapterError::new(code, message)
    };
    e.with_vendor(error.code, error.message).with_retry_after(http::retry_after(headers))
}

/// A failed live-response command: its `errors[]` joined, and the action's `errorHResult`.
pub(crate) fn command_error(errors: &[String], hresult: i64) -> ErrorInfo {
    let text = errors.join("\n");
    let vendor_code = if hresult != 0 {
        // errorHResult is an Int32 (§4.2): shown the way Windows prints HRESULTs.
        format!("0x{:08X}", hresult as i32 as u32)
    } else {
        "Failed".to_owned()
    };
    if let Some(info) = unsigned_refusal(&text) {
        return info.with_vendor(vendor_code, text);
    }
    let lower = text.to_ascii_lowercase();
    let code = COMMAND_ERRORS
        .iter()
        .find(|(needle, _)| lower.contains(needle))
        .map_or(ErrorCode::CommandFailed, |(_, c)| *c);
    let message = if text.is_empty() {
        "the live-response command failed".to_owned()
    } else {
        format!("the live-response command failed: {text}")
    };
    ErrorInfo::new(code, message).with_vendor(vendor_code, text)
}

/// A machine as a device. `healthStatus` `Active` is the only online state (§10).
pub(crate) fn device(backend: &str, m: wire::Machine) -> Device {
    Device {
        backend: backend.to_owned(),
        online: m.health_status.as_deref() == Some("Active"),
        hostname: m.computer_dns_name.unwrap_or_default(),
        device_id: m.id,
        os: m.os_platform,
        isolated: None,
        last_seen: m.last_seen,
        group: m.rbac_group_name,
        tags: m.machine_tags,
    }
}

// ---- helper scripts ----

/// edrgate's helper scripts and where `PutFile` drops a file: edrgate's own protocol, shared
/// on purpose with the simulator through `edrgate-defender-helpers`.
pub(crate) use edrgate_defender_helpers::{Helper, PUTFILE_DIR};

/// The lines PowerShell's `Set-AuthenticodeSignature` puts around the signature it appends to
/// a script (about_Signing); everything before the first is the script itself.
pub(crate) const SIGNATURE_BEGIN: &str = "# SIG # Begin signature block";
pub(crate) const SIGNATURE_END: &str = "# SIG # End signature block";

/// Whether `content` is a signed copy of this version of `helper`: UTF-8 (a BOM allowed), one
/// signature block at the end, and before it exactly the helper's source (line endings and
/// trailing white space aside, which signing on a Windows checkout may change). The signature
/// itself is the endpoints' to verify (edrgate does not know which certificates they trust).
pub(crate) fn check_signed_copy(helper: Helper, content: &[u8]) -> Result<(), String> {
    let text = std::str::from_utf8(content).map_err(|_| "not UTF-8 text".to_owned())?;
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let Some(at) = text.find(SIGNATURE_BEGIN) else {
        return Err(format!("no signature block ({SIGNATURE_BEGIN:?}): not signed"));
    };
    if !text[at..].trim_end().ends_with(SIGNATURE_END) {
        return Err(format!("the signature block does not end the file with {SIGNATURE_END:?}"));
    }
    let normal = |s: &str| s.replace("\r\n", "\n").trim_end().to_owned();
    if normal(&text[..at]) != normal(helper.source()) {
        return Err(format!(
            "the script before the signature block is not edrgate's {} helper of this version ({})",
            helper.name(),
            helper.library_name()
        ));
    }
    Ok(())
}

/// The library name of a `put_file` payload: content-addressed, so one upload per content.
pub(crate) fn payload_name(sha256: &str) -> String {
    format!("edrgate-file-{}.bin", &sha256[..sha256.len().min(40)])
}

/// The library name of a run_script whose content edrgate stages: the caller's name made
/// library-safe (`[A-Za-z0-9._-]`, §8.1) with the content hash before the extension.
pub(crate) fn script_name(script: &str, sha256: &str) -> String {
    let safe: String = script
        .rsplit(['\\', '/'])
        .next()
        .unwrap_or(script)
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || "._-".contains(c) { c } else { '_' })
        .collect();
    let (stem, ext) = safe.rsplit_once('.').unwrap_or((safe.as_str(), "ps1"));
    format!("{stem}-{}.{ext}", &sha256[..sha256.len().min(12)])
}

/// A helper's parameters, passed as one base64 JSON argument so no quoting rule of
/// PowerShell or of the `Args` string can change them.
pub(crate) fn helper_args<T: Serialize>(params: &T) -> String {
    use base64::Engine as _;
    let json = serde_json::to_vec(params).unwrap_or_default();
    format!("-p {}", base64::engine::general_purpose::STANDARD.encode(json))
}

/// The live-response commands a normalized command becomes, and the helper it needs.
/// `None` for commands that are not live response (isolate, release) or unsupported.
pub(crate) fn lr_commands(command: &Command) -> Option<Vec<(LrCommand, Option<Helper>)>> {
    use serde_json::json;
    let script = |helper: Helper, params: serde_json::Value| {
        let name = helper.library_name();
        let args = helper_args(&params);
        (
            LrCommand::new(kinds::RUN_SCRIPT, &[(keys::SCRIPT_NAME, &name), (keys::ARGS, &args)]),
            Some(helper),
        )
    };
    Some(match command {
        Command::GetFile { path, .. } => {
            vec![(LrCommand::new(kinds::GET_FILE, &[(keys::PATH, path)]), None)]
        }
        Command::RunScript { script: name, args, .. } => {
            let mut params = vec![(keys::SCRIPT_NAME, name.as_str())];
            let joined = args.join(" ");
            if !args.is_empty() {
                params.push((keys::ARGS, joined.as_str()));
            }
            vec![(LrCommand::new(kinds::RUN_SCRIPT, &params), None)]
        }
        Command::PutFile { .. } => {
            // The PutFile's FileName is filled in once the payload's hash is known.
            vec![(LrCommand::new(kinds::PUT_FILE, &[]), None), script(Helper::File, json!({}))]
        }
        Command::ProcessList => vec![script(Helper::ProcessList, json!({}))],
        Command::ListDirectory { path } => {
            vec![script(Helper::ListDirectory, json!({"path": path}))]
        }
        Command::KillProcess { pid, .. } => vec![script(Helper::KillProcess, json!({"pid": pid}))],
        Command::Execute { command_line, wait, working_directory, .. } => vec![script(
            Helper::Execute,
            json!({"command_line": command_line, "wait": wait, "working_directory": working_directory}),
        )],
        Command::DeleteFile { path } => {
            vec![script(Helper::File, json!({"op": "delete", "path": path}))]
        }
        Command::CreateDirectory { path } => {
            vec![script(Helper::File, json!({"op": "mkdir", "path": path}))]
        }
        Command::RegistryList { key } => {
            vec![script(Helper::Registry, json!({"op": "list", "key": key}))]
        }
        Command::RegistryGet { key, value } => {
            vec![script(Helper::Registry, json!({"op": "get", "key": key, "value": value}))]
        }
        Command::RegistrySet { key, value, value_type, data, overwrite } => vec![script(
            Helper::Registry,
            json!({"op": "set", "key": key, "value": value, "type": value_type.as_str(), "data": data, "overwrite": overwrite}),
        )],
        Command::RegistryCreateKey { key } => {
            vec![script(Helper::Registry, json!({"op": "create_key", "key": key}))]
        }
        Command::RegistryDeleteKey { key } => {
            vec![script(Helper::Registry, json!({"op": "delete_key", "key": key}))]
        }
        Command::RegistryDeleteValue { key, value } => {
            vec![script(
                Helper::Registry,
                json!({"op": "delete_value", "key": key, "value": value}),
            )]
        }
        Command::MemoryDump { .. }
        | Command::QuarantineFile { .. }
        | Command::UnquarantineFile { .. }
        | Command::Isolate
        | Command::Release => return None,
    })
}

/// The helper-file command placing a put_file payload at its destination.
pub(crate) fn place_command(payload: &str, dest: &str) -> LrCommand {
    let args = helper_args(&serde_json::json!({
        "op": "place",
        "source": format!("{PUTFILE_DIR}\\{payload}"),
        "path": dest,
    }));
    let name = Helper::File.library_name();
    LrCommand::new(kinds::RUN_SCRIPT, &[(keys::SCRIPT_NAME, &name), (keys::ARGS, &args)])
}

/// Order rank of a live-response command type: a batch must not go down (§3.1).
pub(crate) fn rank(kind: &str) -> u8 {
    match kind {
        kinds::PUT_FILE => 0,
        kinds::RUN_SCRIPT => 1,
        _ => 2,
    }
}

/// Whether the command runs one of edrgate's PowerShell helpers (`put_file`'s last step
/// included): those need a Windows device and, in unsigned mode, the tenant's setting.
pub(crate) fn helper_backed(command: &Command) -> bool {
    lr_commands(command).is_some_and(|cmds| cmds.iter().any(|(_, h)| h.is_some()))
}

/// A machine's `osPlatform` (§10: `Windows10`, `Windows11`, `WindowsServer2022`, `Linux`,
/// `macOS`, …) when it is not Windows, i.e. when live response runs shell scripts there, not
/// PowerShell (live-response.md: "Live response runs PowerShell and Bash scripts"). Missing or
/// `Unknown` is not refused: Defender decides.
pub(crate) fn non_windows(os_platform: &str) -> Option<&str> {
    let os = os_platform.trim();
    let lower = os.to_ascii_lowercase();
    (!os.is_empty() && !lower.starts_with("windows") && lower != "unknown" && lower != "other")
        .then_some(os)
}

/// Why a helper-backed command is refused on a non-Windows machine.
pub(crate) fn not_on_os(command: CommandKind, os: &str) -> ErrorInfo {
    ErrorInfo::new(
        ErrorCode::UnsupportedCommand,
        format!(
            "{} is not available on {os} devices of Defender backends: edrgate runs it through its PowerShell helper scripts, and live response runs shell scripts on {os}, not PowerShell",
            command.as_str()
        ),
    )
}

/// Whether the normalized command's failure shows only in its script output (not as a
/// `Failed` command), so Defender would run the commands after it anyway.
pub(crate) fn fails_silently(command: &Command) -> bool {
    helper_backed(command)
}

/// The `script_output` of a RunScript result without the transcript banner and the trailing
/// NULs the service adds (§5; Akto strips both too).
pub(crate) fn clean_output(output: &str) -> String {
    let text = output.trim_end_matches(['\0', '\n', '\r']);
    match text.split_once('\n') {
        Some((first, rest)) if first.starts_with("Transcript started") => rest.to_owned(),
        _ if text.starts_with("Transcript started") => String::new(),
        _ => text.to_owned(),
    }
}

/// The JSON a helper printed after [`HELPER_MARKER`].
pub(crate) fn helper_output(result: &wire::ScriptResult) -> Result<HelperOutput, ErrorInfo> {
    let line = result
        .script_output
        .lines()
        .find_map(|l| l.trim_start_matches('\0').strip_prefix(HELPER_MARKER));
    let Some(line) = line else {
        let mut text = clean_output(&result.script_errors);
        if text.is_empty() {
            text = clean_output(&result.script_output);
        }
        if let Some(info) = unsigned_refusal(&text) {
            return Err(info.with_vendor(format!("exit {}", result.exit_code), text));
        }
        return Err(ErrorInfo::new(
            ErrorCode::CommandFailed,
            format!("edrgate's helper script {} printed no result", result.script_name),
        )
        .with_vendor(format!("exit {}", result.exit_code), text));
    };
    serde_json::from_str(line.trim().trim_end_matches('\0')).map_err(|e| {
        ErrorInfo::new(
            ErrorCode::CommandFailed,
            format!("unreadable result of helper script {}: {e}", result.script_name),
        )
    })
}

/// A helper's output as the command's result (the same shapes the Carbon Black adapter
/// produces), or its failure.
pub(crate) fn helper_result(
    command: &Command,
    out: HelperOutput,
) -> Result<CommandResult, ErrorInfo> {
    if !out.ok {
        let word = out.error.clone().unwrap_or_default();
        let code = lookup(HELPER_ERRORS, &word).unwrap_or(ErrorCode::CommandFailed);
        let message = out.message.clone().unwrap_or_else(|| "the helper script failed".into());
        return Err(ErrorInfo::new(code, message.clone())
            .with_vendor(out.hresult.clone().unwrap_or(word), message));
    }
    Ok(match command {
        Command::ProcessList => CommandResult::Processes {
            processes: out
                .processes
                .unwrap_or_default()
                .into_iter()
                .map(|p| ProcessInfo {
                    pid: p.pid,
                    parent_pid: p.ppid,
                    name: p.name,
                    path: p.path,
                    command_line: p.command_line,
                    username: p.user,
                    sid: p.sid,
                    started_at: p.started,
                    vendor_id: None,
                })
                .collect(),
        },
        Command::ListDirectory { .. } => CommandResult::Directory {
            entries: out
                .entries
                .unwrap_or_default()
                .into_iter()
                .map(|e| DirectoryEntry {
                    name: e.name,
                    is_directory: e.dir,
                    size: e.size,
                    attributes: e.attrs,
                    created_at: e.created,
                    modified_at: e.modified,
                    accessed_at: e.accessed,
                })
                .collect(),
        },
        Command::RegistryList { .. } => CommandResult::RegistryKey {
            sub_keys: out.sub_keys.unwrap_or_default(),
            values: out.values.unwrap_or_default().into_iter().map(registry_value).collect(),
        },
        Command::RegistryGet { value, .. } => CommandResult::RegistryValue {
            value: out.value.map(registry_value).ok_or_else(|| {
                ErrorInfo::new(ErrorCode::NotFound, format!("registry value {value:?} not found"))
            })?,
        },
        Command::Execute { .. } => CommandResult::Execution {
            pid: out.pid,
            exit_code: out.exit_code,
            output: out.output,
            output_file: None,
        },
        _ => CommandResult::Done,
    })
}

fn registry_value(v: wire::HelperRegValue) -> RegistryValue {
    RegistryValue { name: v.name, value_type: v.kind, data: v.data }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    fn fixture(name: &str) -> Value {
        let path = format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"));
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
        serde_json::from_str::<Value>(&text).unwrap()["body"].clone()
    }

    #[test]
    fn every_status_word_maps_once() {
        for (table, words) in [
            (
                ACTION_STATUSES,
                ["Pending", "InProgress", "Succeeded", "Failed", "TimeOut", "Cancelled"].as_slice(),
            ),
            (
                COMMAND_STATUSES,
                ["Created", "Submitted", "PendingResource", "Executing", "Completed", "Failed"]
                    .as_slice(),
            ),
        ] {
            assert_eq!(table.len(), words.len());
            for w in words {
                assert_eq!(table.iter().filter(|(x, _)| x == w).count(), 1, "{w}");
            }
        }
        assert_eq!(action_status("TimeOut"), Status::TimedOut);
        assert_eq!(command_status("Executing"), Status::Running);
        assert_eq!(action_status("SomethingNew"), Status::Dispatched);
    }

    #[test]
    fn fixtures_of_machine_actions_map_to_statuses() {
        let table = [
            (
                "POST_api_machines_id_runliveresponse.json",
                "LiveResponse",
                Status::Dispatched,
                Some(vec![Status::Dispatched, Status::Dispatched]),
            ),
            ("GET_api_machineactions_id.json", "Isolate", Status::Succeeded, None),
            (
                "GET_api_machineactions_id__Unisolate-Succeeded.json",
                "Unisolate",
                Status::Succeeded,
                None,
            ),
        ];
        for (file, kind, status, commands) in table {
            let action: wire::MachineAction = serde_json::from_value(fixture(file)).unwrap();
            assert_eq!(action.kind, kind, "{file}");
            assert_eq!(action_status(&action.status), status, "{file}");
            if let Some(expected) = commands {
                let got: Vec<Status> = action
                    .commands
                    .unwrap()
                    .iter()
                    .map(|c| command_status(&c.command_status))
                    .collect();
                assert_eq!(got, expected, "{file}");
            }
        }
        let list: wire::Collection<wire::MachineAction> =
            serde_json::from_value(fixture("GET_api_machineactions.json")).unwrap();
        assert!(!list.value.is_empty());
        for a in list.value {
            assert!(ACTION_STATUSES.iter().any(|(w, _)| *w == a.status), "{}", a.status);
        }
    }

    #[test]
    fn error_fixtures_classify_by_code() {
        let table = [
            ("error_400_InvalidRequestBody.json", 400, ErrorCode::VendorRejected, false),
            ("error_404_ResourceNotFound.json", 404, ErrorCode::NotFound, false),
        ];
        for (file, status, code, retryable) in table {
            let body = fixture(file).to_string();
            let e = classify(StatusCode::from_u16(status).unwrap(), &HeaderMap::new(), &body);
            assert_eq!((e.code(), e.is_retryable()), (code, retryable), "{file}");
            assert!(e.info.vendor_message.is_some(), "{file}");
        }
        let mut headers = HeaderMap::new();
        headers.insert("retry-after", "9".parse().unwrap());
        let cases = [
            (
                429,
                r#"{"error":{"code":"TooManyRequests","message":"quota","target":"x"}}"#,
                ErrorCode::VendorRateLimited,
                true,
            ),
            (
                400,
                r#"{"error":{"code":"ActiveRequestAlreadyExists","message":"busy","target":"x"}}"#,
                ErrorCode::Conflict,
                false,
            ),
            (
                400,
                r#"{"error":{"code":"","message":"Custom query option '$stop'","details":[]}}"#,
                ErrorCode::VendorRejected,
                false,
            ),
            (502, "<html>bad gateway</html>", ErrorCode::VendorUnavailable, true),
        ];
        for (status, body, code, retryable) in cases {
            let e = classify(StatusCode::from_u16(status).unwrap(), &headers, body);
            assert_eq!((e.code(), e.is_retryable()), (code, retryable), "{body}");
        }
        let limited = classify(StatusCode::TOO_MANY_REQUESTS, &headers, cases[0].1);
        assert_eq!(limited.retry_after, Some(std::time::Duration::from_secs(9)));
        assert_eq!(limited.info.vendor_code.as_deref(), Some("TooManyRequests"));
    }

    #[test]
    fn command_errors_keep_the_vendor_text() {
        let table = [
            (vec!["File C:\\x.txt was not found on the device"], ErrorCode::FileNotFound),
            (vec!["Access is denied."], ErrorCode::AccessDenied),
            (vec!["Script execution timed out after 10 minutes"], ErrorCode::Timeout),
            (vec!["Something odd"], ErrorCode::CommandFailed),
        ];
        for (errors, code) in table {
            let errors: Vec<String> = errors.into_iter().map(str::to_owned).collect();
            let info = command_error(&errors, -2147024894);
            assert_eq!(info.code, code, "{errors:?}");
            assert_eq!(info.vendor_code.as_deref(), Some("0x80070002"));
            assert_eq!(info.vendor_message.as_deref(), Some(errors[0].as_str()));
        }
    }

    /// PowerShell's AllSigned refusal, as a failed command or as a completed RunScript's error
    /// stream, is `vendor_rejected` naming the tenant setting.
    #[test]
    fn the_unsigned_script_refusal_names_the_setting() {
        let text = "File C:\\ProgramData\\Microsoft\\Windows Defender Advanced Threat Protection\\DataCollection\\x\\edrgate-file-0123456789ab.ps1 cannot be loaded. The file C:\\ProgramData\\x.ps1 is not digitally signed. You cannot run this script on the current system.";
        let info = command_error(&[text.to_owned()], 0x8013_1500_u32 as i32 as i64);
        assert_eq!(info.code, ErrorCode::VendorRejected);
        assert!(info.message.contains(UNSIGNED_SETTING), "{}", info.message);
        assert!(info.message.contains("unsigned_scripts = false"));
        assert_eq!(info.vendor_message.as_deref(), Some(text));
        let blob = wire::ScriptResult {
            script_name: Helper::File.library_name(),
            exit_code: 1,
            script_output: "Transcript started, output file is C:\\x.txt\n".into(),
            script_errors: text.into(),
        };
        let err = helper_output(&blob).unwrap_err();
        assert_eq!(err.code, ErrorCode::VendorRejected);
        assert!(err.message.contains(UNSIGNED_SETTING));
    }

    #[test]
    fn signed_copies_differ_only_by_the_signature_block() {
        let h = Helper::Registry;
        let block = format!("\r\n{SIGNATURE_BEGIN}\r\n# MIIxyz\r\n{SIGNATURE_END}\r\n");
        let signed = format!("{}{block}", h.source());
        assert_eq!(check_signed_copy(h, signed.as_bytes()), Ok(()));
        let crlf = format!("\u{feff}{}{block}", h.source().replace('\n', "\r\n"));
        assert_eq!(check_signed_copy(h, crlf.as_bytes()), Ok(()));
        assert!(check_signed_copy(h, h.source().as_bytes()).unwrap_err().contains("not signed"));
        let other = format!("{}{block}", Helper::File.source());
        assert!(check_signed_copy(h, other.as_bytes()).unwrap_err().contains("registry"));
        let edited = format!("{}\nRemove-Item C:\\x{block}", h.source());
        assert!(check_signed_copy(h, edited.as_bytes()).is_err());
        let trailing = format!("{}{block}Write-Output extra\n", h.source());
        assert!(check_signed_copy(h, trailing.as_bytes()).is_err());
    }

    #[test]
    fn helper_backed_commands_and_non_windows_platforms() {
        assert!(helper_backed(&Command::ProcessList));
        assert!(helper_backed(&Command::PutFile { file_id: "f".into(), path: "C:\\x".into() }));
        assert!(!helper_backed(&Command::GetFile {
            path: "/etc/passwd".into(),
            offset: None,
            length: None
        }));
        assert!(!helper_backed(&Command::Isolate));
        for os in ["Windows10", "Windows11", "WindowsServer2022", "windows7", "", "Unknown"] {
            assert_eq!(non_windows(os), None, "{os}");
        }
        for os in ["Linux", "macOS", "iOS", "Android"] {
            assert_eq!(non_windows(os), Some(os));
        }
        let info = not_on_os(CommandKind::ProcessList, "Linux");
        assert_eq!(info.code, ErrorCode::UnsupportedCommand);
        assert!(info.message.contains("process_list") && info.message.contains("Linux"));
    }

    #[test]
    fn other_fixtures_parse() {
        let link: wire::StringValue = serde_json::from_value(fixture(
            "GET_api_machineactions_id_GetLiveResponseResultDownloadLink.json",
        ))
        .unwrap();
        assert!(link.value.contains("sig="));
        let library: wire::Collection<wire::LibraryFile> =
            serde_json::from_value(fixture("GET_api_libraryfiles.json")).unwrap();
        assert!(library.value.iter().any(|f| f.file_name == "script1.ps1" && f.has_parameters));
        let machine: wire::Machine =
            serde_json::from_value(fixture("GET_api_machines_id.json")).unwrap();
        let d = device("mde", machine);
        assert_eq!((d.hostname.as_str(), d.online), ("test-node", false));
    }

    /// The documented RunScript blob, exactly as the page prints it (a raw line break inside
    /// `script_output`, so not strict JSON), and strict variants, all read the same.
    #[test]
    fn runscript_blobs_parse_leniently() {
        let name = "GET_live-response-result-blob__runscript-transcript.json";
        let path = format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"));
        let capture: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        let as_printed = capture["body_text"].as_str().unwrap().as_bytes().to_vec();
        assert!(serde_json::from_slice::<Value>(&as_printed).is_err(), "the sample is lenient");
        let strict = serde_json::to_vec(&capture["body"]).unwrap();
        let tab = b"{\"script_name\":\"a.ps1\",\"exit_code\":1,\"script_output\":\"a\tb\",\"script_errors\":\"x\\\\y\"}";
        for (blob, output, errors) in [
            (as_printed.as_slice(), "C:\\windows\\TEMP\\OfficeClickToRun.dmp.zip\n51 MB", ""),
            (strict.as_slice(), "C:\\windows\\TEMP\\OfficeClickToRun.dmp.zip\n51 MB", ""),
            (tab.as_slice(), "a\tb", "x\\y"),
        ] {
            let parsed = wire::ScriptResult::parse(blob).unwrap();
            assert_eq!(clean_output(&parsed.script_output), output);
            assert_eq!(parsed.script_errors, errors);
        }
        assert!(wire::ScriptResult::parse(b"{\"script_output\": \"open").is_err());
    }

    #[test]
    fn helper_output_is_found_after_the_banner_and_mapped() {
        let blob = wire::ScriptResult {
            script_name: Helper::ProcessList.library_name(),
            exit_code: 0,
            script_output: format!(
                "Transcript started, output file is C:\\x.txt\n{HELPER_MARKER}{}\n\0\0",
                r#"{"ok":true,"processes":[{"pid":4,"name":"System"}]}"#
            ),
            script_errors: String::new(),
        };
        let out = helper_output(&blob).unwrap();
        let CommandResult::Processes { processes } =
            helper_result(&Command::ProcessList, out).unwrap()
        else {
            panic!("not processes")
        };
        assert_eq!(processes[0].pid, 4);
        let failed = HelperOutput {
            ok: false,
            error: Some("file_not_found".into()),
            message: Some("no such directory".into()),
            hresult: Some("0x80070003".into()),
            ..HelperOutput::default()
        };
        let err =
            helper_result(&Command::ListDirectory { path: "C:\\nope".into() }, failed).unwrap_err();
        assert_eq!(err.code, ErrorCode::FileNotFound);
        assert_eq!(err.vendor_code.as_deref(), Some("0x80070003"));
    }
}
