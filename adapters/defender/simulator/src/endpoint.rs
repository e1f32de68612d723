//! One simulated Windows device: processes, files and registry, and how live-response
//! commands, edrgate's helper scripts and arbitrary library scripts act on them.

use std::collections::BTreeMap;

use base64::Engine as _;
use edrgate_defender_helpers::{
    HELPER_MARKER, Helper, HelperEntry, HelperOutput, HelperProcess, HelperRegValue,
};
use serde_json::{Value, json};

use crate::api::ScriptResult;

/// Content of `C:\evidence\note.txt` on every device.
pub const NOTE_TXT: &[u8] = b"edrgate defender simulator evidence note\r\n";

/// The sensor's working folder `PutFile` drops library files into. The reference says only
/// "Files are saved in a working folder and are deleted when the device restarts by default"
/// (defender.md §3.1, run-live-response.md); the path is the sensor's `Downloads` folder under
/// its ProgramData directory, next to the `Temp\PSScriptOutputs` folder the RunScript
/// transcript names (§5 \[D\]) \[U: the folder name itself is not documented\].
pub const PUTFILE_WORKING_DIR: &str =
    r"C:\ProgramData\Microsoft\Windows Defender Advanced Threat Protection\Downloads";

/// `errorHResult` values the simulator reports (Win32 HRESULTs as signed Int32, §4.2 [E]).
/// The reference has no real failing sample (§16); these are the Win32 codes of the failures.
pub(crate) const HR_FILE_NOT_FOUND: i32 = 0x8007_0002_u32 as i32;
pub(crate) const HR_ACCESS_DENIED: i32 = 0x8007_0005_u32 as i32;
pub(crate) const HR_TIMEOUT: i32 = 0x8007_05B4_u32 as i32;
/// A PowerShell terminating error (`throw`): the HResult of a .NET exception (`0x80131500`).
const HR_SCRIPT_THREW: i32 = 0x8013_1500_u32 as i32;

#[derive(Clone, Debug)]
pub(crate) struct Process {
    pub(crate) pid: u64,
    pub(crate) ppid: u64,
    pub(crate) name: String,
    pub(crate) path: String,
    pub(crate) user: String,
}

#[derive(Clone, Debug)]
pub(crate) struct Node {
    pub(crate) path: String,
    pub(crate) dir: bool,
    pub(crate) content: Vec<u8>,
}

#[derive(Clone, Debug, Default)]
pub(crate) struct RegKey {
    pub(crate) name: String,
    /// lower-case value name → (name, type, data)
    pub(crate) values: BTreeMap<String, (String, String, Value)>,
}

#[derive(Clone, Debug)]
pub(crate) struct Endpoint {
    pub(crate) hostname: String,
    pub(crate) processes: BTreeMap<u64, Process>,
    /// lower-case path → node
    pub(crate) files: BTreeMap<String, Node>,
    /// lower-case key → key
    pub(crate) registry: BTreeMap<String, RegKey>,
    next_pid: u64,
}

/// What a live-response command did.
pub(crate) enum Outcome {
    /// Completed; the result blob (GetFile: gzip'ed file, RunScript: result JSON).
    Completed(Option<Vec<u8>>),
    Failed {
        errors: Vec<String>,
        hresult: i32,
    },
}

/// One run of an edrgate helper script, as the simulator's log records it.
#[derive(Clone, Debug)]
pub(crate) struct HelperRun {
    pub(crate) helper: Helper,
    /// The decoded `-p` parameters.
    pub(crate) params: Value,
    pub(crate) output: HelperOutput,
}

fn key(path: &str) -> String {
    path.trim_end_matches('\\').to_ascii_lowercase()
}

impl Endpoint {
    pub(crate) fn new(hostname: &str, big_file_size: u64) -> Self {
        let mut e = Endpoint {
            hostname: hostname.to_owned(),
            processes: BTreeMap::new(),
            files: BTreeMap::new(),
            registry: BTreeMap::new(),
            next_pid: 5000,
        };
        let system = "NT AUTHORITY\\SYSTEM";
        for (pid, ppid, name, path, user) in [
            (4, 0, "System", "", system),
            (388, 4, "smss.exe", "C:\\Windows\\System32\\smss.exe", system),
            (520, 512, "csrss.exe", "C:\\Windows\\System32\\csrss.exe", system),
            (612, 512, "wininit.exe", "C:\\Windows\\System32\\wininit.exe", system),
            (700, 612, "lsass.exe", "C:\\Windows\\System32\\lsass.exe", system),
            (812, 612, "services.exe", "C:\\Windows\\System32\\services.exe", system),
            (904, 812, "svchost.exe", "C:\\Windows\\System32\\svchost.exe", system),
            (
                2960,
                812,
                "MsSense.exe",
                "C:\\Program Files\\Windows Defender Advanced Threat Protection\\MsSense.exe",
                system,
            ),
            (3120, 3100, "explorer.exe", "C:\\Windows\\explorer.exe", "CONTOSO\\alice"),
            (4242, 3120, "notepad.exe", "C:\\Windows\\System32\\notepad.exe", "CONTOSO\\alice"),
            // The demo's suspicious process, the same on every simulator (pid, path), so one
            // request body acts alike on a Carbon Black, a Defender and a Cybereason device.
            (
                3012,
                3120,
                "updater.exe",
                "C:\\Users\\jdoe\\AppData\\Local\\Temp\\updater.exe",
                "CONTOSO\\jdoe",
            ),
        ] {
            e.processes.insert(
                pid,
                Process { pid, ppid, name: name.into(), path: path.into(), user: user.into() },
            );
        }
        for dir in [
            "C:\\",
            "C:\\Windows",
            "C:\\Windows\\System32",
            "C:\\Windows\\System32\\config",
            "C:\\Windows\\Temp",
            "C:\\Users",
            "C:\\Users\\Public",
            "C:\\evidence",
            "C:\\Users\\jdoe",
            "C:\\Users\\jdoe\\AppData",
            "C:\\Users\\jdoe\\AppData\\Local",
            "C:\\Users\\jdoe\\AppData\\Local\\Temp",
            "C:\\ProgramData",
            "C:\\ProgramData\\Microsoft",
            "C:\\ProgramData\\Microsoft\\Windows Defender Advanced Threat Protection",
            PUTFILE_WORKING_DIR,
        ] {
            e.files.insert(
                key(dir),
                Node {
                    path: dir.trim_end_matches('\\').to_owned(),
                    dir: true,
                    content: Vec::new(),
                },
            );
        }
        let big: Vec<u8> = (0..big_file_size).map(|i| (i % 251) as u8).collect();
        for (path, content) in [
            ("C:\\evidence\\note.txt", NOTE_TXT.to_vec()),
            ("C:\\evidence\\big.bin", big),
            ("C:\\Windows\\System32\\notepad.exe", b"MZ\x90\x00notepad".to_vec()),
            ("C:\\Users\\jdoe\\AppData\\Local\\Temp\\updater.exe", b"MZ\x90\x00updater".to_vec()),
            ("C:\\Windows\\System32\\config\\SAM", b"regf".to_vec()),
        ] {
            e.files.insert(key(path), Node { path: path.into(), dir: false, content });
        }
        for (k, values) in [
            ("HKLM\\SOFTWARE", vec![]),
            ("HKLM\\SOFTWARE\\Microsoft", vec![]),
            (
                "HKLM\\SOFTWARE\\Microsoft\\Windows\\CurrentVersion\\Run",
                vec![(
                    "SecurityHealth",
                    "REG_EXPAND_SZ",
                    json!("%windir%\\system32\\SecurityHealthSystray.exe"),
                )],
            ),
            (
                "HKLM\\SOFTWARE\\Microsoft\\Windows\\CurrentVersion\\RunOnce",
                vec![(
                    "Updater",
                    "REG_SZ",
                    json!("C:\\Users\\jdoe\\AppData\\Local\\Temp\\updater.exe"),
                )],
            ),
            (
                "HKLM\\SYSTEM\\CurrentControlSet\\Services\\Sense",
                vec![
                    ("Start", "REG_DWORD", json!(2)),
                    (
                        "ImagePath",
                        "REG_EXPAND_SZ",
                        json!(
                            "\"%ProgramFiles%\\Windows Defender Advanced Threat Protection\\MsSense.exe\""
                        ),
                    ),
                ],
            ),
        ] {
            let mut rk = RegKey { name: k.into(), values: BTreeMap::new() };
            for (n, t, d) in values {
                rk.values.insert(n.to_ascii_lowercase(), (n.into(), t.into(), d));
            }
            e.registry.insert(key(k), rk);
        }
        e
    }

    pub(crate) fn file(&self, path: &str) -> Option<&Node> {
        self.files.get(&key(path))
    }

    fn denied(path: &str) -> bool {
        key(path).starts_with("c:\\windows\\system32\\config\\")
    }

    /// `GetFile`: the content, gzip'ed (§5).
    pub(crate) fn get_file(&self, path: &str) -> Outcome {
        if Self::denied(path) {
            return Outcome::Failed {
                errors: vec![format!("Access is denied. ({path})")],
                hresult: HR_ACCESS_DENIED,
            };
        }
        match self.file(path) {
            Some(n) if !n.dir => Outcome::Completed(Some(gzip(&n.content))),
            Some(_) => Outcome::Failed {
                errors: vec![format!("{path} is a directory")],
                hresult: HR_FILE_NOT_FOUND,
            },
            None => Outcome::Failed {
                errors: vec![format!("File {path} was not found on the device")],
                hresult: HR_FILE_NOT_FOUND,
            },
        }
    }

    /// `PutFile`: drops the library file into the sensor's working folder (§3.1).
    pub(crate) fn put_file(&mut self, name: &str, content: Vec<u8>) -> Outcome {
        let path = format!("{PUTFILE_WORKING_DIR}\\{name}");
        self.files.insert(key(&path), Node { path, dir: false, content });
        Outcome::Completed(None)
    }

    /// `RunScript`: a script whose content is one of edrgate's helpers (byte for byte, whatever
    /// its library name) acts on the model and prints its result line; other scripts run
    /// through [`interpret`]. The blob is the §5 JSON with the transcript banner and trailing
    /// NULs of the doc sample.
    pub(crate) fn run_script(
        &mut self,
        name: &str,
        args: &str,
        source: &[u8],
    ) -> (Outcome, Option<HelperRun>) {
        let mut run = None;
        let (exit_code, output, errors) = match Helper::from_source(source) {
            Some(helper) => {
                let params = decode_params(args);
                let out = self.helper(helper, &params);
                // The scripts `exit 1` after a failure; Defender reports the exit code in the
                // result and the command still completes (only a terminating error fails it).
                let code = if out.ok { 0 } else { 1 };
                let line = serde_json::to_string(&out).unwrap_or_default();
                run = Some(HelperRun { helper, params, output: out });
                (code, format!("{HELPER_MARKER}{line}\n"), String::new())
            }
            None => match interpret(source, args, &self.hostname) {
                Script::Done { exit_code, output, errors } => (exit_code, output, errors),
                Script::Threw(message) => {
                    return (
                        Outcome::Failed { errors: vec![message], hresult: HR_SCRIPT_THREW },
                        None,
                    );
                }
            },
        };
        let blob = ScriptResult {
            script_name: name.to_owned(),
            exit_code,
            script_output: format!(
                "Transcript started, output file is C:\\ProgramData\\Microsoft\\Windows Defender Advanced Threat Protection\\Temp\\PSScriptOutputs\\PSScript_Transcript_{{{}}}.txt\n{output}\u{0}\u{0}\u{0}",
                uuid::Uuid::now_v7()
            ),
            script_errors: errors,
        };
        (Outcome::Completed(Some(serde_json::to_vec(&blob).unwrap_or_default())), run)
    }

    fn helper(&mut self, helper: Helper, p: &Value) -> HelperOutput {
        let s = |k: &str| p.get(k).and_then(Value::as_str).unwrap_or_default().to_owned();
        let result = match helper {
            Helper::ProcessList => Ok(HelperOutput {
                ok: true,
                processes: Some(
                    self.processes
                        .values()
                        .map(|pr| HelperProcess {
                            pid: pr.pid,
                            ppid: Some(pr.ppid),
                            name: pr.name.clone(),
                            path: (!pr.path.is_empty()).then(|| pr.path.clone()),
                            command_line: (!pr.path.is_empty()).then(|| format!("\"{}\"", pr.path)),
                            user: Some(pr.user.clone()),
                            sid: Some(if pr.user.starts_with("NT AUTHORITY") {
                                "S-1-5-18".into()
                            } else {
                                "S-1-5-21-1004-1001".into()
                            }),
                            started: Some(1_700_000_000 + pr.pid as i64),
                        })
                        .collect(),
                ),
                ..HelperOutput::default()
            }),
            Helper::ListDirectory => self.list(&s("path")),
            Helper::KillProcess => {
                let pid = p.get("pid").and_then(Value::as_u64).unwrap_or(0);
                if pid == 4 || pid == 700 {
                    Err((
                        "access_denied",
                        format!("Access is denied to process {pid}"),
                        "0x80070005",
                    ))
                } else if self.processes.remove(&pid).is_some() {
                    Ok(HelperOutput { ok: true, ..HelperOutput::default() })
                } else {
                    Err(("not_found", format!("No process with pid {pid}"), "0x80070057"))
                }
            }
            Helper::Execute => {
                let line = s("command_line");
                let pid = self.next_pid;
                self.next_pid += 4;
                let wait = p.get("wait").and_then(Value::as_bool).unwrap_or(true);
                let (exit_code, output) = simulate_command(&line, &self.hostname);
                if !wait {
                    let name = line.split_whitespace().next().unwrap_or("cmd.exe").to_owned();
                    self.processes.insert(
                        pid,
                        Process {
                            pid,
                            ppid: 2960,
                            name,
                            path: String::new(),
                            user: "NT AUTHORITY\\SYSTEM".into(),
                        },
                    );
                }
                Ok(HelperOutput {
                    ok: true,
                    pid: Some(pid),
                    exit_code: wait.then_some(exit_code),
                    output: wait.then_some(output),
                    ..HelperOutput::default()
                })
            }
            Helper::Registry => self.registry_op(p),
            Helper::File => self.file_op(p),
        };
        result.unwrap_or_else(|(word, message, hr)| HelperOutput {
            ok: false,
            error: Some(word.into()),
            message: Some(message),
            hresult: (!hr.is_empty()).then(|| hr.to_owned()),
            ..HelperOutput::default()
        })
    }

    fn list(&self, path: &str) -> Result<HelperOutput, (&'static str, String, &'static str)> {
        let dir = key(path.trim_end_matches('*'));
        match self.files.get(&dir) {
            Some(n) if n.dir => {}
            _ => {
                return Err((
                    "file_not_found",
                    format!("The system cannot find the path specified: {path}"),
                    "0x80070003",
                ));
            }
        }
        let prefix = format!("{dir}\\");
        let entries = self
            .files
            .iter()
            .filter(|(k, _)| {
                k.starts_with(&prefix)
                    && !k[prefix.len()..].contains('\\')
                    && k.len() > prefix.len()
            })
            .map(|(_, n)| HelperEntry {
                name: n.path.rsplit('\\').next().unwrap_or_default().to_owned(),
                dir: n.dir,
                size: n.content.len() as u64,
                attrs: vec![if n.dir { "DIRECTORY".into() } else { "ARCHIVE".into() }],
                created: Some(1_700_000_000),
                modified: Some(1_700_000_100),
                accessed: Some(1_700_000_200),
            })
            .collect();
        Ok(HelperOutput { ok: true, entries: Some(entries), ..HelperOutput::default() })
    }

    fn registry_op(
        &mut self,
        p: &Value,
    ) -> Result<HelperOutput, (&'static str, String, &'static str)> {
        let s = |k: &str| p.get(k).and_then(Value::as_str).unwrap_or_default().to_owned();
        let k = s("key");
        let lk = key(&k);
        let missing = || {
            ("file_not_found", format!("The system cannot find the registry key {k}"), "0x80070002")
        };
        let done = || Ok(HelperOutput { ok: true, ..HelperOutput::default() });
        match s("op").as_str() {
            "list" => {
                let rk = self.registry.get(&lk).ok_or_else(missing)?;
                let prefix = format!("{lk}\\");
                let sub_keys = self
                    .registry
                    .iter()
                    .filter(|(x, _)| x.starts_with(&prefix) && !x[prefix.len()..].contains('\\'))
                    .map(|(_, v)| v.name.rsplit('\\').next().unwrap_or_default().to_owned())
                    .collect();
                let values = rk
                    .values
                    .values()
                    .map(|(n, t, d)| HelperRegValue {
                        name: n.clone(),
                        kind: t.clone(),
                        data: d.clone(),
                    })
                    .collect();
                Ok(HelperOutput {
                    ok: true,
                    sub_keys: Some(sub_keys),
                    values: Some(values),
                    ..HelperOutput::default()
                })
            }
            "get" => {
                let rk = self.registry.get(&lk).ok_or_else(missing)?;
                let v = s("value");
                let (n, t, d) = rk.values.get(&v.to_ascii_lowercase()).ok_or_else(|| {
                    (
                        "file_not_found",
                        format!("The system cannot find the registry value {v}"),
                        "0x80070002",
                    )
                })?;
                Ok(HelperOutput {
                    ok: true,
                    value: Some(HelperRegValue {
                        name: n.clone(),
                        kind: t.clone(),
                        data: d.clone(),
                    }),
                    ..HelperOutput::default()
                })
            }
            "set" => {
                let overwrite = p.get("overwrite").and_then(Value::as_bool).unwrap_or(false);
                let rk = self.registry.get_mut(&lk).ok_or_else(missing)?;
                let v = s("value");
                if !overwrite && rk.values.contains_key(&v.to_ascii_lowercase()) {
                    return Err((
                        "conflict",
                        format!("The registry value {v} already exists"),
                        "0x800700B7",
                    ));
                }
                rk.values.insert(
                    v.to_ascii_lowercase(),
                    (v, s("type"), p.get("data").cloned().unwrap_or(Value::Null)),
                );
                done()
            }
            "create_key" => {
                // Creates missing parents too, as New-Item -Force does.
                let mut acc = String::new();
                for part in k.trim_end_matches('\\').split('\\') {
                    if !acc.is_empty() {
                        acc.push('\\');
                    }
                    acc.push_str(part);
                    self.registry
                        .entry(key(&acc))
                        .or_insert_with(|| RegKey { name: acc.clone(), values: BTreeMap::new() });
                }
                done()
            }
            "delete_key" => {
                if self.registry.remove(&lk).is_none() {
                    return Err(missing());
                }
                let prefix = format!("{lk}\\");
                self.registry.retain(|x, _| !x.starts_with(&prefix));
                done()
            }
            "delete_value" => {
                let rk = self.registry.get_mut(&lk).ok_or_else(missing)?;
                let v = s("value");
                if rk.values.remove(&v.to_ascii_lowercase()).is_none() {
                    return Err((
                        "file_not_found",
                        format!("The system cannot find the registry value {v}"),
                        "0x80070002",
                    ));
                }
                done()
            }
            op => Err(("invalid_request", format!("unknown op {op}"), "")),
        }
    }

    fn file_op(&mut self, p: &Value) -> Result<HelperOutput, (&'static str, String, &'static str)> {
        let s = |k: &str| p.get(k).and_then(Value::as_str).unwrap_or_default().to_owned();
        let path = s("path");
        let done = || Ok(HelperOutput { ok: true, ..HelperOutput::default() });
        let parent_exists = |files: &BTreeMap<String, Node>, path: &str| {
            path.rsplit_once('\\').is_some_and(|(parent, _)| {
                let parent =
                    if parent.ends_with(':') { format!("{parent}\\") } else { parent.to_owned() };
                files.get(&key(&parent)).is_some_and(|n| n.dir)
            })
        };
        match s("op").as_str() {
            "delete" => {
                if Self::denied(&path) {
                    return Err((
                        "access_denied",
                        format!("Access to the path '{path}' is denied."),
                        "0x80070005",
                    ));
                }
                match self.files.get(&key(&path)) {
                    Some(n) if !n.dir => {
                        self.files.remove(&key(&path));
                        done()
                    }
                    _ => Err((
                        "file_not_found",
                        format!("The system cannot find the file specified: {path}"),
                        "0x80070002",
                    )),
                }
            }
            "mkdir" => {
                if self.files.contains_key(&key(&path)) {
                    return Err((
                        "conflict",
                        format!("Cannot create a file when that file already exists: {path}"),
                        "0x800700B7",
                    ));
                }
                if !parent_exists(&self.files, &path) {
                    return Err((
                        "file_not_found",
                        format!("The system cannot find the path specified: {path}"),
                        "0x80070003",
                    ));
                }
                self.files.insert(key(&path), Node { path, dir: true, content: Vec::new() });
                done()
            }
            "place" => {
                let source = s("source");
                let Some(node) = self.files.get(&key(&source)).filter(|n| !n.dir).cloned() else {
                    return Err((
                        "file_not_found",
                        format!("The uploaded file is missing: {source}"),
                        "0x80070002",
                    ));
                };
                if !parent_exists(&self.files, &path) {
                    return Err((
                        "file_not_found",
                        format!("The system cannot find the path specified: {path}"),
                        "0x80070003",
                    ));
                }
                if self.files.contains_key(&key(&path)) {
                    return Err((
                        "conflict",
                        format!("Cannot create a file when that file already exists: {path}"),
                        "0x800700B7",
                    ));
                }
                self.files.remove(&key(&source));
                self.files.insert(key(&path), Node { path, dir: false, content: node.content });
                done()
            }
            op => Err(("invalid_request", format!("unknown op {op}"), "")),
        }
    }
}

/// `-p <base64 JSON>` as edrgate's helpers take it.
fn decode_params(args: &str) -> Value {
    let b64 = args.trim().strip_prefix("-p").unwrap_or(args).trim();
    base64::engine::general_purpose::STANDARD
        .decode(b64)
        .ok()
        .and_then(|bytes| serde_json::from_slice(&bytes).ok())
        .unwrap_or(Value::Null)
}

/// What `cmd /c <line>` prints on the simulated device.
fn simulate_command(line: &str, hostname: &str) -> (i64, String) {
    let l = line.trim();
    let lower = l.to_ascii_lowercase();
    if let Some(rest) = lower.strip_prefix("exit ") {
        return (rest.trim().parse().unwrap_or(1), String::new());
    }
    if lower.starts_with("echo ") {
        return (0, format!("{}\r\n", &l[5..]));
    }
    match lower.as_str() {
        "whoami" => (0, "nt authority\\system\r\n".into()),
        "hostname" => (0, format!("{hostname}\r\n")),
        _ => (0, format!("'{l}' ran\r\n")),
    }
}

pub(crate) enum Script {
    Done { exit_code: i64, output: String, errors: String },
    Threw(String),
}

/// Seconds of `Start-Sleep -Seconds N` lines: how long the script runs.
pub(crate) fn script_sleep_secs(source: &[u8]) -> f64 {
    String::from_utf8_lossy(source)
        .lines()
        .filter_map(|l| {
            let l = l.trim().to_ascii_lowercase();
            let rest = l.strip_prefix("start-sleep")?;
            let n =
                rest.trim().trim_start_matches("-seconds").trim().trim_start_matches("-s").trim();
            n.parse::<f64>().ok()
        })
        .sum()
}

/// A small PowerShell subset for arbitrary library scripts: `Write-Output`/`echo` print
/// (`$args` expands to the arguments, `$env:COMPUTERNAME` to the host), `Write-Error` writes
/// to the error stream, `exit N` ends with code N, `throw` fails the command, `Start-Sleep`
/// only takes time; any other line is ignored.
pub(crate) fn interpret(source: &[u8], args: &str, hostname: &str) -> Script {
    let text = String::from_utf8_lossy(source);
    let (mut output, mut errors) = (String::new(), String::new());
    let expand = |s: &str| {
        let s = s.trim().trim_matches(|c| c == '"' || c == '\'');
        s.replace("$args", args).replace("$env:COMPUTERNAME", hostname)
    };
    for line in text.lines() {
        let l = line.trim();
        let lower = l.to_ascii_lowercase();
        if let Some(rest) =
            lower.strip_prefix("write-output").or_else(|| lower.strip_prefix("echo"))
        {
            output.push_str(&expand(&l[l.len() - rest.len()..]));
            output.push('\n');
        } else if let Some(rest) = lower.strip_prefix("write-error") {
            errors.push_str(&expand(&l[l.len() - rest.len()..]));
            errors.push('\n');
        } else if let Some(rest) = lower.strip_prefix("throw") {
            return Script::Threw(expand(&l[l.len() - rest.len()..]));
        } else if let Some(rest) = lower.strip_prefix("exit") {
            return Script::Done { exit_code: rest.trim().parse().unwrap_or(0), output, errors };
        }
    }
    Script::Done { exit_code: 0, output, errors }
}

pub(crate) fn gzip(bytes: &[u8]) -> Vec<u8> {
    use std::io::Write as _;
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    let _ = enc.write_all(bytes);
    enc.finish().unwrap_or_default()
}
