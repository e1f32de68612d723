//! Normalized commands → RTR command lines (§6.6 syntax, §12 mapping), per platform and tier,
//! and the command's result from what its lines returned.

use edrgate_adapter::{
    AdapterError, Command, CommandKind, CommandResult, ErrorCode, ErrorInfo, FileRef,
    RegistryValueType, RunContext,
};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::io::AsyncReadExt as _;

use super::{CrowdStrikeAdapter, tier_for};
use crate::client::Tier;
use crate::config::PermissionLevel;
use crate::mapping::{self, Platform};

/// Largest script sent inline as `runscript -Raw` (the command string carries it).
pub(crate) const MAX_RAW_SCRIPT_BYTES: u64 = 64 * 1024;

/// One RTR command line of a command's plan.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub(crate) struct Rtr {
    pub line: String,
    pub tier: Tier,
    /// Changes the endpoint: journaled before it is sent, never re-sent blindly.
    #[serde(default)]
    pub effect: bool,
    #[serde(default)]
    pub role: Role,
    /// The line needs this working directory (`put` lands in it, §6.6).
    #[serde(default)]
    pub cwd: Option<String>,
    /// The path a `get` or `cd` line is about.
    #[serde(default)]
    pub path: Option<String>,
}

/// What a line's completion means for its command.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Role {
    #[default]
    Plain,
    /// Its stdout is the command's result.
    Output,
    /// `cd`: the session's working directory changes.
    Cd,
    /// `get`: a file upload to the cloud follows (§8.1).
    Get,
    /// `reg query` before a `reg set` without overwrite: must find nothing.
    MustNotExist,
}

impl Rtr {
    fn new(line: String, tier: Tier, effect: bool, role: Role) -> Self {
        Rtr { line, tier, effect, role, cwd: None, path: None }
    }

    pub(crate) fn cd(dir: &str) -> Self {
        Rtr {
            path: Some(dir.to_owned()),
            ..Rtr::new(format!("cd {}", quote(dir)), Tier::ReadOnly, false, Role::Cd)
        }
    }

    fn get(path: &str) -> Self {
        Rtr {
            path: Some(path.to_owned()),
            ..Rtr::new(format!("get {}", quote(path)), Tier::ActiveResponder, false, Role::Get)
        }
    }
}

/// Commands RTR offers on Windows only (§12: ✗ on Linux and macOS).
pub(crate) fn windows_only(kind: CommandKind) -> bool {
    use CommandKind::*;
    matches!(
        kind,
        RegistryList
            | RegistryGet
            | RegistrySet
            | RegistryCreateKey
            | RegistryDeleteKey
            | RegistryDeleteValue
            | MemoryDump
    )
}

pub(crate) fn not_on_platform(kind: CommandKind, platform: Platform) -> ErrorInfo {
    ErrorInfo::new(
        ErrorCode::UnsupportedCommand,
        format!(
            "CrowdStrike RTR has no {} on {} hosts (Windows only)",
            kind.as_str(),
            platform.as_str()
        ),
    )
}

/// A path or argument as one RTR argument: quoted when it holds spaces (§6.2).
pub(crate) fn quote(s: &str) -> String {
    if s.contains(char::is_whitespace) { format!("\"{s}\"") } else { s.to_owned() }
}

/// `-Name=<value>` with the value quoted (single quotes when it holds double ones).
fn flag(name: &str, value: &str) -> String {
    if value.contains('"') { format!("-{name}='{value}'") } else { format!("-{name}=\"{value}\"") }
}

/// A script body for `-Raw=` (§6.6: between triple backticks).
fn raw(body: &str) -> String {
    format!("-Raw=```{body}```")
}

/// `(directory, file name)` of an endpoint path (Windows or POSIX separators).
pub(crate) fn split_path(path: &str) -> (String, String) {
    match path.rfind(['\\', '/']) {
        Some(0) => (path[..1].to_owned(), path[1..].to_owned()),
        Some(i) if path[..i].ends_with(':') => (path[..=i].to_owned(), path[i + 1..].to_owned()),
        Some(i) => (path[..i].to_owned(), path[i + 1..].to_owned()),
        None => (String::new(), path.to_owned()),
    }
}

/// The executable and the rest of a command line (a quoted first word keeps its spaces).
fn split_command_line(line: &str) -> (String, String) {
    let line = line.trim();
    if let Some(rest) = line.strip_prefix('"')
        && let Some(end) = rest.find('"')
    {
        return (rest[..end].to_owned(), rest[end + 1..].trim().to_owned());
    }
    match line.split_once(char::is_whitespace) {
        Some((exe, args)) => (exe.to_owned(), args.trim().to_owned()),
        None => (line.to_owned(), String::new()),
    }
}

/// `reg set`'s `-Value` of typed data (§6.6): numbers in decimal, multi-strings joined by
/// `\0` (the form reg.exe uses; RTR's own is unverified, §13.11), binary as hex.
fn registry_data(kind: RegistryValueType, data: &Value) -> String {
    match (kind, data) {
        (RegistryValueType::MultiSz, Value::Array(items)) => {
            items.iter().filter_map(Value::as_str).collect::<Vec<_>>().join("\\0")
        }
        (_, Value::String(s)) => s.clone(),
        (_, other) => other.to_string(),
    }
}

impl CrowdStrikeAdapter {
    /// The lines of `command` on `platform`, or why it cannot run there. `put_file` and
    /// containment are not RTR lines (see `fetch.rs`, `contain.rs`).
    pub(super) async fn plan(
        &self,
        ctx: &RunContext<'_>,
        command: &Command,
        platform: Platform,
    ) -> Result<Result<Vec<Rtr>, ErrorInfo>, AdapterError> {
        use Tier::*;
        if platform != Platform::Windows && windows_only(command.kind()) {
            return Ok(Err(not_on_platform(command.kind(), platform)));
        }
        let level = self.cfg.permission_level;
        let at = |tier| tier_for(level, tier);
        let script_timeout = self.cfg.script_timeout_secs;
        let lines = match command {
            Command::ProcessList => vec![Rtr::new("ps".into(), ReadOnly, false, Role::Output)],
            Command::ListDirectory { path } => {
                vec![Rtr::new(format!("ls {}", quote(path)), ReadOnly, false, Role::Output)]
            }
            Command::KillProcess { pid, .. } => {
                vec![Rtr::new(format!("kill {pid}"), ActiveResponder, true, Role::Plain)]
            }
            Command::GetFile { path, .. } => vec![Rtr::get(path)],
            Command::DeleteFile { path } => {
                vec![Rtr::new(format!("rm {}", quote(path)), ActiveResponder, true, Role::Plain)]
            }
            Command::CreateDirectory { path } => {
                vec![Rtr::new(format!("mkdir {}", quote(path)), ActiveResponder, true, Role::Plain)]
            }
            Command::RegistryList { key } => {
                vec![Rtr::new(format!("reg query {}", quote(key)), ReadOnly, false, Role::Output)]
            }
            Command::RegistryGet { key, value } => vec![Rtr::new(
                format!("reg query {} {}", quote(key), quote(value)),
                ReadOnly,
                false,
                Role::Output,
            )],
            Command::RegistrySet { key, value, value_type, data, overwrite } => {
                let mut lines = Vec::new();
                if !overwrite {
                    let query = format!("reg query {} {}", quote(key), quote(value));
                    let mut check = Rtr::new(query, ReadOnly, false, Role::MustNotExist);
                    check.path = Some(format!("value {value:?} of {key} (overwrite is false)"));
                    lines.push(check);
                }
                let set = format!(
                    "reg set {} {} -ValueType={} {}",
                    quote(key),
                    quote(value),
                    value_type.as_str(),
                    flag("Value", &registry_data(*value_type, data))
                );
                lines.push(Rtr::new(set, ActiveResponder, true, Role::Plain));
                lines
            }
            Command::RegistryCreateKey { key } => {
                vec![Rtr::new(
                    format!("reg set {}", quote(key)),
                    ActiveResponder,
                    true,
                    Role::Plain,
                )]
            }
            Command::RegistryDeleteKey { key } => {
                vec![Rtr::new(
                    format!("reg delete {}", quote(key)),
                    ActiveResponder,
                    true,
                    Role::Plain,
                )]
            }
            Command::RegistryDeleteValue { key, value } => vec![Rtr::new(
                format!("reg delete {} {}", quote(key), quote(value)),
                ActiveResponder,
                true,
                Role::Plain,
            )],
            Command::MemoryDump { path, fetch } => {
                let path = path.clone().unwrap_or_else(|| dump_path(ctx));
                let mut lines = vec![Rtr::new(
                    format!("xmemdump complete {}", quote(&path)),
                    ActiveResponder,
                    true,
                    Role::Plain,
                )];
                if *fetch {
                    lines.push(Rtr::get(&path));
                    lines.push(Rtr::new(
                        format!("rm {}", quote(&path)),
                        ActiveResponder,
                        true,
                        Role::Plain,
                    ));
                }
                lines
            }
            Command::Execute { command_line, wait, working_directory, output_file } => {
                let body = match (platform, output_file, wait) {
                    (Platform::Windows, None, _) => None,
                    (_, Some(out), _) => Some(format!("{command_line} > {} 2>&1", quote(out))),
                    (_, None, true) => Some(command_line.clone()),
                    (_, None, false) => Some(format!("nohup {command_line} >/dev/null 2>&1 &")),
                };
                let line = match body {
                    Some(body) => format!("runscript {} -Timeout={script_timeout}", raw(&body)),
                    None => {
                        let (exe, args) = split_command_line(command_line);
                        let mut line = format!("run {}", quote(&exe));
                        if !args.is_empty() {
                            line = format!("{line} {}", flag("CommandLine", &args));
                        }
                        if *wait {
                            line.push_str(" -Wait");
                        }
                        line
                    }
                };
                let mut run = Rtr::new(line, Admin, true, Role::Output);
                run.cwd = working_directory.clone();
                vec![run]
            }
            Command::RunScript { script, args, file_id } => {
                let mut line = match file_id {
                    None => format!("runscript {}", flag("CloudFile", script)),
                    Some(id) => match self.script_body(ctx, id).await? {
                        Ok(body) => format!("runscript {}", raw(&body)),
                        Err(e) => return Ok(Err(e)),
                    },
                };
                if !args.is_empty() {
                    line = format!("{line} {}", flag("CommandLine", &args.join(" ")));
                }
                line = format!("{line} -Timeout={script_timeout}");
                // §6.1: `-CloudFile` is an active-responder command, `-Raw` an admin one.
                let tier = if file_id.is_some() { Admin } else { at(Admin) };
                if file_id.is_some() && level < PermissionLevel::Admin {
                    return Ok(Err(ErrorInfo::new(
                        ErrorCode::Forbidden,
                        "run_script with file_id runs the script as runscript -Raw, which needs an admin API client",
                    )));
                }
                vec![Rtr::new(line, tier, true, Role::Output)]
            }
            other => {
                return Ok(Err(ErrorInfo::new(
                    ErrorCode::UnsupportedCommand,
                    format!("CrowdStrike RTR has no primitive for {}", other.kind().as_str()),
                )));
            }
        };
        Ok(Ok(lines
            .into_iter()
            .map(|mut l| {
                l.tier = at(l.tier);
                l
            })
            .collect()))
    }

    /// A stored script as text for `-Raw` (bounded; RTR carries it in the command string).
    async fn script_body(
        &self,
        ctx: &RunContext<'_>,
        file_id: &str,
    ) -> Result<Result<String, ErrorInfo>, AdapterError> {
        let (file, reader) = ctx.files.open(file_id).await?;
        if file.size > MAX_RAW_SCRIPT_BYTES {
            return Ok(Err(ErrorInfo::new(
                ErrorCode::PayloadTooLarge,
                format!(
                    "a script sent as runscript -Raw holds at most {MAX_RAW_SCRIPT_BYTES} bytes"
                ),
            )));
        }
        let mut body = String::new();
        reader
            .take(MAX_RAW_SCRIPT_BYTES)
            .read_to_string(&mut body)
            .await
            .map_err(|e| AdapterError::internal(format!("reading the script: {e}")))?;
        if body.contains("```") {
            return Ok(Err(ErrorInfo::new(
                ErrorCode::InvalidRequest,
                "a runscript -Raw body cannot contain ```",
            )));
        }
        Ok(Ok(body))
    }
}

/// Where a memory dump goes when the caller names no path.
fn dump_path(ctx: &RunContext<'_>) -> String {
    format!("C:\\Windows\\Temp\\edrgate-{}.dmp", ctx.run_id.simple())
}

/// The command's result once all its lines succeeded.
pub(crate) fn result(
    ctx: &RunContext<'_>,
    command: &Command,
    output: Option<&str>,
    file: Option<FileRef>,
) -> Result<CommandResult, ErrorInfo> {
    let output = output.unwrap_or_default();
    let missing_file =
        || ErrorInfo::new(ErrorCode::Internal, "the retrieved file was not recorded");
    Ok(match command {
        Command::ProcessList => mapping::processes(output),
        Command::ListDirectory { .. } => mapping::directory(output),
        Command::RegistryList { key } => {
            let (sub_keys, values) = mapping::registry_key(key, output);
            CommandResult::RegistryKey { sub_keys, values }
        }
        Command::RegistryGet { key, value } => {
            let (_, values) = mapping::registry_key(key, output);
            let found =
                values.into_iter().find(|v| v.name.eq_ignore_ascii_case(value)).ok_or_else(
                    || ErrorInfo::new(ErrorCode::NotFound, format!("{key} has no value {value:?}")),
                )?;
            CommandResult::RegistryValue { value: found }
        }
        Command::Execute { .. } | Command::RunScript { .. } => CommandResult::Execution {
            pid: None,
            exit_code: None,
            output: Some(output.to_owned()),
            output_file: None,
        },
        Command::GetFile { .. } => CommandResult::File { file: file.ok_or_else(missing_file)? },
        Command::MemoryDump { path, fetch } => CommandResult::MemoryDump {
            path: path.clone().unwrap_or_else(|| dump_path(ctx)),
            file: if *fetch { Some(file.ok_or_else(missing_file)?) } else { None },
        },
        _ => CommandResult::Done,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_and_command_lines_split() {
        assert_eq!(
            split_path("C:\\evidence\\note.txt"),
            ("C:\\evidence".into(), "note.txt".into())
        );
        assert_eq!(split_path("C:\\note.txt"), ("C:\\".into(), "note.txt".into()));
        assert_eq!(split_path("/tmp/x"), ("/tmp".into(), "x".into()));
        assert_eq!(split_path("/x"), ("/".into(), "x".into()));
        assert_eq!(
            split_command_line("\"C:\\Program Files\\a.exe\" -x 1"),
            ("C:\\Program Files\\a.exe".into(), "-x 1".into())
        );
        assert_eq!(
            split_command_line("cmd.exe /c echo hi"),
            ("cmd.exe".into(), "/c echo hi".into())
        );
        assert_eq!(quote("C:\\a b"), "\"C:\\a b\"");
        assert_eq!(flag("CommandLine", "say \"hi\""), "-CommandLine='say \"hi\"'");
        assert_eq!(
            registry_data(RegistryValueType::MultiSz, &serde_json::json!(["a", "b"])),
            "a\\0b"
        );
        assert_eq!(registry_data(RegistryValueType::Dword, &serde_json::json!(7)), "7");
    }
}
