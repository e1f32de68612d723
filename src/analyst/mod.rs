//! The analyst CLI: `edrgate devices`, `act`, `action show|follow|cancel|list` and `fetch`, a
//! client of a running gateway's `/v1` API (over HTTPS; see [`config`] for where the URL and
//! the token come from).
//!
//! Results go to stdout (tables, or the API's JSON with `--json`); progress and errors go to
//! stderr, with bars only when stderr is a terminal. Exit codes ([`Exit`]):
//!
//! | code | meaning |
//! |---|---|
//! | 0 | success: every run of the action succeeded; the file was saved and verified; the request was accepted |
//! | 1 | the action ended without succeeding everywhere (`partially_succeeded`, `failed`, `cancelled`, `timed_out`) |
//! | 2 | usage or configuration error (arguments, no URL or token, plain http refused, output exists) |
//! | 3 | the gateway refused the request (its problem is printed with its code) |
//! | 4 | the gateway could not be reached, or its answer could not be read |
//! | 5 | the downloaded file did not match its size or SHA-256 (nothing is left at the output) |
//! | 6 | `action show`: the action has not finished yet |
//! | 130 | interrupted while following; the action goes on |

mod client;
mod config;
mod view;

use std::io::{IsTerminal as _, Write as _};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Args, Subcommand};
use edrgate_adapter::{Action, ActionRequest, Command, OnError, RegistryValueType, Status, Target};
use futures::StreamExt as _;
use serde::Serialize;
use sha2::{Digest as _, Sha256};
use uuid::Uuid;

use crate::api::problem::Problem;
use client::{ActionFilter, Gateway, WAIT_SECONDS};
pub use config::Connection;

/// The analyst's commands, flattened into `edrgate`'s.
#[derive(Debug, Subcommand)]
pub enum AnalystCommand {
    /// List the devices the tenant's backends know, asking a running gateway.
    Devices(DevicesArgs),
    /// Run a response action on one or many hosts and follow it to its end.
    Act(ActArgs),
    /// Show, follow, cancel or list actions.
    Action(ActionArgs),
    /// Download a stored file (a `get_file` result) and verify its SHA-256.
    Fetch(FetchArgs),
}

#[derive(Debug, Args)]
pub struct DevicesArgs {
    /// Only devices matching this hostname (case-insensitive substring).
    #[arg(long)]
    pub hostname: Option<String>,
    /// Print the API's JSON instead of a table.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub connection: Connection,
}

/// `edrgate act [HOST...] [--hosts-file FILE] [--device BACKEND:ID] <COMMAND> [ARGS]`.
#[derive(Debug, Args)]
#[command(subcommand_precedence_over_arg = true)]
pub struct ActArgs {
    /// Hostnames to act on (resolved by the gateway's routing).
    #[arg(value_name = "HOST")]
    pub hosts: Vec<String>,
    /// A file of hostnames, one a line (blank lines and `#` comments skipped; `-`: stdin).
    #[arg(long, value_name = "FILE", global = true)]
    pub hosts_file: Option<PathBuf>,
    /// A device by backend and device id, as `edrgate devices` lists them (repeatable).
    #[arg(long = "device", value_name = "BACKEND:ID", value_parser = parse_device, global = true)]
    pub devices: Vec<Target>,
    /// Free text kept with the action.
    #[arg(long, global = true)]
    pub comment: Option<String>,
    /// Seconds the action may take before unfinished work stops as `timed_out`.
    #[arg(long, value_name = "SECONDS", global = true)]
    pub timeout: Option<u64>,
    /// Submit, print the action and exit without following it.
    #[arg(long, global = true)]
    pub no_follow: bool,
    /// Print the API's JSON of the action instead of tables.
    #[arg(long, global = true)]
    pub json: bool,
    #[command(flatten)]
    pub connection: Connection,
    /// The command to run on every host.
    #[command(subcommand)]
    pub verb: Verb,
}

/// The commands of the API (`Command` of the model), one subcommand each.
#[derive(Debug, Subcommand)]
pub enum Verb {
    /// List the processes.
    ProcessList,
    /// Kill a process.
    KillProcess {
        pid: u64,
        /// The vendor's id of the process, as `process-list` reports it.
        #[arg(long)]
        vendor_id: Option<String>,
    },
    /// Copy a file from the endpoint into the gateway's file store (then `edrgate fetch`).
    GetFile {
        path: String,
        /// Byte offset of a partial read (with `--length`).
        #[arg(long, requires = "length")]
        offset: Option<u64>,
        /// Bytes of a partial read.
        #[arg(long)]
        length: Option<u64>,
    },
    /// Put a stored file (`POST /v1/files`) on the endpoint.
    PutFile { file_id: String, path: String },
    /// Delete a file.
    DeleteFile { path: String },
    /// Move a file into the EDR's quarantine.
    QuarantineFile { path: String },
    /// Put a quarantined file back.
    UnquarantineFile { path: String },
    /// List a directory.
    ListDirectory { path: String },
    /// Create a directory.
    CreateDirectory { path: String },
    /// Run a command line (quote it as one argument).
    Execute {
        command_line: String,
        /// Do not wait for the process to exit.
        #[arg(long)]
        no_wait: bool,
        #[arg(long)]
        working_directory: Option<String>,
        /// Where the endpoint writes the output.
        #[arg(long)]
        output_file: Option<String>,
    },
    /// Run a script the vendor has (or a stored file, with `--file-id`).
    RunScript {
        script: String,
        /// The script's arguments.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
        /// A stored file with the script's content.
        #[arg(long)]
        file_id: Option<String>,
    },
    /// List a registry key's sub-keys and values.
    RegistryList { key: String },
    /// Read a registry value.
    RegistryGet { key: String, value: String },
    /// Write a registry value: one DATA (a number for REG_DWORD and REG_QWORD, hex for
    /// REG_BINARY), or several for REG_MULTI_SZ.
    RegistrySet {
        key: String,
        value: String,
        /// REG_SZ, REG_EXPAND_SZ, REG_MULTI_SZ, REG_DWORD, REG_QWORD or REG_BINARY.
        #[arg(long = "type", value_parser = parse_value_type)]
        value_type: RegistryValueType,
        #[arg(required = true)]
        data: Vec<String>,
        /// Replace an existing value.
        #[arg(long)]
        overwrite: bool,
    },
    /// Create a registry key.
    RegistryCreateKey { key: String },
    /// Delete a registry key.
    RegistryDeleteKey { key: String },
    /// Delete a registry value.
    RegistryDeleteValue { key: String, value: String },
    /// Dump the endpoint's memory.
    MemoryDump {
        /// Where the endpoint writes the dump.
        #[arg(long)]
        path: Option<String>,
        /// Also copy the dump into the file store.
        #[arg(long)]
        fetch: bool,
    },
    /// Isolate the host from the network.
    Isolate,
    /// Release the host from isolation.
    Release,
}

#[derive(Debug, Args)]
pub struct ActionArgs {
    /// Print the API's JSON instead of tables.
    #[arg(long, global = true)]
    pub json: bool,
    #[command(flatten)]
    pub connection: Connection,
    #[command(subcommand)]
    pub command: ActionCommand,
}

#[derive(Debug, Subcommand)]
pub enum ActionCommand {
    /// Print an action and its results.
    Show { id: Uuid },
    /// Follow an action to its end with the live view, then print its results.
    Follow { id: Uuid },
    /// Request the cancellation of an action (queued work is dropped, running commands are
    /// cancelled at the vendor where it allows).
    Cancel {
        id: Uuid,
        /// Then follow it to its end.
        #[arg(long)]
        follow: bool,
    },
    /// List the tenant's actions, newest first.
    List {
        /// Only actions with this status (`running`, `failed`, …).
        #[arg(long)]
        status: Option<String>,
        /// Only actions with a run on this device (hostname or device id).
        #[arg(long)]
        device: Option<String>,
        /// At most this many (1 to 500).
        #[arg(long, default_value_t = 20)]
        limit: u32,
    },
}

#[derive(Debug, Args)]
pub struct FetchArgs {
    /// The file's id (`file_id` of a `get_file` result).
    pub file_id: String,
    /// Where to write it (default: the file's name in the current directory; `-`: stdout).
    #[arg(long, short)]
    pub output: Option<PathBuf>,
    /// Replace an existing file.
    #[arg(long)]
    pub force: bool,
    #[command(flatten)]
    pub connection: Connection,
}

/// The CLI's exit codes (the table of the module's documentation).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Exit {
    Success = 0,
    NotSucceeded = 1,
    Usage = 2,
    Refused = 3,
    Unreachable = 4,
    Unverified = 5,
    Unfinished = 6,
    Interrupted = 130,
}

impl From<Exit> for ExitCode {
    fn from(exit: Exit) -> ExitCode {
        ExitCode::from(exit as u8)
    }
}

/// Why a command failed; each maps to its [`Exit`].
#[derive(Debug, thiserror::Error)]
pub(crate) enum Failure {
    #[error("{0}")]
    Usage(String),
    #[error("{}", describe(.0))]
    Refused(Box<Problem>),
    #[error("the gateway answered {status}: {text}")]
    Answer { status: u16, text: String },
    #[error("{0}")]
    Unreachable(String),
    #[error("{0}")]
    Unverified(String),
}

impl Failure {
    fn exit(&self) -> Exit {
        match self {
            Failure::Usage(_) => Exit::Usage,
            Failure::Refused(_) | Failure::Answer { .. } => Exit::Refused,
            Failure::Unreachable(_) => Exit::Unreachable,
            Failure::Unverified(_) => Exit::Unverified,
        }
    }
}

/// `forbidden (403): missing permission contain … [request 01a2…]`.
fn describe(problem: &Problem) -> String {
    let mut text = format!("{} ({}): {}", problem.code.as_str(), problem.status, problem.detail);
    match (&problem.vendor_code, &problem.vendor_message) {
        (Some(code), Some(message)) => text += &format!(" (vendor {code}: {message})"),
        (Some(code), None) => text += &format!(" (vendor {code})"),
        _ => {}
    }
    if let Some(id) = &problem.request_id {
        text += &format!(" [request {id}]");
    }
    view::clean(&text)
}

/// Runs an analyst command; errors are printed on stderr.
pub async fn run(command: AnalystCommand) -> ExitCode {
    let done = match command {
        AnalystCommand::Devices(args) => devices(args).await,
        AnalystCommand::Act(args) => act(args).await,
        AnalystCommand::Action(args) => action(args).await,
        AnalystCommand::Fetch(args) => fetch(args).await,
    };
    match done {
        Ok(exit) => exit.into(),
        Err(failure) => {
            eprintln!("error: {failure}");
            failure.exit().into()
        }
    }
}

fn connect(connection: &Connection) -> Result<Gateway, Failure> {
    Gateway::new(connection.resolve()?)
}

/// `--json` output, or a table; stdout closed early (`| head`) is not an error.
fn print(
    json: bool,
    value: &impl Serialize,
    table: impl FnOnce(&mut dyn std::io::Write) -> std::io::Result<()>,
) {
    let mut out = std::io::stdout().lock();
    let written = if json {
        serde_json::to_writer_pretty(&mut out, value)
            .map_err(std::io::Error::from)
            .and_then(|()| writeln!(out))
    } else {
        table(&mut out)
    };
    if let Err(error) = written
        && error.kind() != std::io::ErrorKind::BrokenPipe
    {
        eprintln!("error: writing the output: {error}");
    }
}

async fn devices(args: DevicesArgs) -> Result<Exit, Failure> {
    let gateway = connect(&args.connection)?;
    let list = gateway.devices(args.hostname.as_deref()).await?;
    print(args.json, &list, |out| view::devices(out, &list));
    Ok(Exit::Success)
}

async fn act(args: ActArgs) -> Result<Exit, Failure> {
    let mut targets: Vec<Target> =
        args.hosts.into_iter().map(|hostname| Target::Hostname { hostname }).collect();
    if let Some(file) = &args.hosts_file {
        targets.extend(read_hosts(file)?.into_iter().map(|hostname| Target::Hostname { hostname }));
    }
    targets.extend(args.devices);
    if targets.is_empty() {
        return Err(Failure::Usage("no target: name hosts, --hosts-file or --device".into()));
    }
    let command = args.verb.into_command().map_err(Failure::Usage)?;
    // The model's own checks, before anything is sent.
    command.validate().map_err(|e| Failure::Usage(format!("{}: {e}", command.kind().as_str())))?;
    let request = ActionRequest {
        targets,
        commands: vec![command],
        comment: args.comment,
        on_error: OnError::Stop,
        timeout_seconds: args.timeout,
        callback_url: None,
    };
    let gateway = connect(&args.connection)?;
    let submitted = gateway.submit(&request).await?;
    if args.no_follow {
        print(args.json, &submitted, |out| {
            writeln!(out, "action {} {}", submitted.id, submitted.status.as_str())
        });
        return Ok(Exit::Success);
    }
    eprintln!("action {}: {} runs", submitted.id, submitted.summary.runs);
    follow_and_print(&gateway, submitted, args.json).await
}

async fn action(args: ActionArgs) -> Result<Exit, Failure> {
    let gateway = connect(&args.connection)?;
    match args.command {
        ActionCommand::Show { id } => {
            let action = gateway.action(id, None).await?;
            print(args.json, &action, |out| view::action(out, &action));
            Ok(if action.status.is_terminal() { outcome(&action) } else { Exit::Unfinished })
        }
        ActionCommand::Follow { id } => {
            let action = gateway.action(id, None).await?;
            follow_and_print(&gateway, action, args.json).await
        }
        ActionCommand::Cancel { id, follow } => {
            let action = gateway.cancel(id).await?;
            if follow {
                return follow_and_print(&gateway, action, args.json).await;
            }
            print(args.json, &action, |out| {
                writeln!(out, "action {} {}: cancel requested", action.id, action.status.as_str())
            });
            Ok(Exit::Success)
        }
        ActionCommand::List { status, device, limit } => {
            let filter = ActionFilter { status, device, limit: Some(limit) };
            let list = gateway.actions(&filter).await?;
            print(args.json, &list, |out| view::actions(out, &list));
            Ok(Exit::Success)
        }
    }
}

/// Follows `action` with the live view until it is terminal (or ctrl-c), then prints it.
async fn follow_and_print(gateway: &Gateway, action: Action, json: bool) -> Result<Exit, Failure> {
    let id = action.id;
    let mut live = view::LiveView::stderr();
    let followed = tokio::select! {
        done = follow(gateway, action, &mut live) => done,
        _ = tokio::signal::ctrl_c() => {
            live.finish();
            eprintln!(
                "stopped following; the action goes on: `edrgate action follow {id}` or \
                 `edrgate action cancel {id}`"
            );
            return Ok(Exit::Interrupted);
        }
    };
    live.finish();
    let action = followed?;
    print(json, &action, |out| view::action(out, &action));
    Ok(outcome(&action))
}

async fn follow(
    gateway: &Gateway,
    mut action: Action,
    live: &mut view::LiveView,
) -> Result<Action, Failure> {
    loop {
        live.update(&action);
        if action.status.is_terminal() {
            return Ok(action);
        }
        // The long-poll answers as soon as the action changes: no polling interval to tune.
        action = gateway.action(action.id, Some(WAIT_SECONDS)).await?;
    }
}

fn outcome(action: &Action) -> Exit {
    if action.status == Status::Succeeded { Exit::Success } else { Exit::NotSucceeded }
}

/// Hostnames of a hosts file: one a line, blank lines and `#` comments skipped.
fn read_hosts(path: &Path) -> Result<Vec<String>, Failure> {
    let text = if path == Path::new("-") {
        std::io::read_to_string(std::io::stdin())
    } else {
        std::fs::read_to_string(path)
    }
    .map_err(|e| Failure::Usage(format!("cannot read {}: {e}", path.display())))?;
    Ok(text
        .lines()
        .map(|line| line.split('#').next().unwrap_or_default().trim())
        .filter(|line| !line.is_empty())
        .map(str::to_owned)
        .collect())
}

fn parse_device(text: &str) -> Result<Target, String> {
    match text.split_once(':') {
        Some((backend, id)) if !backend.is_empty() && !id.is_empty() => {
            Ok(Target::Device { backend: backend.to_owned(), device_id: id.to_owned() })
        }
        _ => Err("BACKEND:DEVICE_ID expected, e.g. cb-prod:10".into()),
    }
}

fn parse_value_type(text: &str) -> Result<RegistryValueType, String> {
    serde_json::from_value(serde_json::Value::String(text.to_ascii_uppercase())).map_err(|_| {
        "one of REG_SZ, REG_EXPAND_SZ, REG_MULTI_SZ, REG_DWORD, REG_QWORD, REG_BINARY".into()
    })
}

impl Verb {
    /// The API's command.
    fn into_command(self) -> Result<Command, String> {
        Ok(match self {
            Verb::ProcessList => Command::ProcessList,
            Verb::KillProcess { pid, vendor_id } => Command::KillProcess { pid, vendor_id },
            Verb::GetFile { path, offset, length } => Command::GetFile { path, offset, length },
            Verb::PutFile { file_id, path } => Command::PutFile { file_id, path },
            Verb::DeleteFile { path } => Command::DeleteFile { path },
            Verb::QuarantineFile { path } => Command::QuarantineFile { path },
            Verb::UnquarantineFile { path } => Command::UnquarantineFile { path },
            Verb::ListDirectory { path } => Command::ListDirectory { path },
            Verb::CreateDirectory { path } => Command::CreateDirectory { path },
            Verb::Execute { command_line, no_wait, working_directory, output_file } => {
                Command::Execute { command_line, wait: !no_wait, working_directory, output_file }
            }
            Verb::RunScript { script, args, file_id } => {
                Command::RunScript { script, args, file_id }
            }
            Verb::RegistryList { key } => Command::RegistryList { key },
            Verb::RegistryGet { key, value } => Command::RegistryGet { key, value },
            Verb::RegistrySet { key, value, value_type, data, overwrite } => Command::RegistrySet {
                data: registry_data(value_type, &data)?,
                key,
                value,
                value_type,
                overwrite,
            },
            Verb::RegistryCreateKey { key } => Command::RegistryCreateKey { key },
            Verb::RegistryDeleteKey { key } => Command::RegistryDeleteKey { key },
            Verb::RegistryDeleteValue { key, value } => Command::RegistryDeleteValue { key, value },
            Verb::MemoryDump { path, fetch } => Command::MemoryDump { path, fetch },
            Verb::Isolate => Command::Isolate,
            Verb::Release => Command::Release,
        })
    }
}

/// A registry value's data as the API types it (the model checks the rest).
fn registry_data(kind: RegistryValueType, data: &[String]) -> Result<serde_json::Value, String> {
    use RegistryValueType::*;
    let one = match data {
        [one] => one,
        _ if kind == MultiSz => return Ok(serde_json::json!(data)),
        _ => return Err(format!("{} takes one DATA", kind.as_str())),
    };
    Ok(match kind {
        Dword | Qword => {
            let n: u64 =
                one.parse().map_err(|_| format!("{}: a number is expected", kind.as_str()))?;
            serde_json::json!(n)
        }
        MultiSz => serde_json::json!([one]),
        Sz | ExpandSz | Binary => serde_json::json!(one),
    })
}

/// `edrgate fetch`: streams the content to a temporary file beside the output, hashing it on
/// the way, and moves it into place only once its size and SHA-256 match the metadata's.
async fn fetch(args: FetchArgs) -> Result<Exit, Failure> {
    let gateway = connect(&args.connection)?;
    let meta = gateway.file_meta(&args.file_id).await?;
    let to_stdout = args.output.as_deref() == Some(Path::new("-"));
    let output = match &args.output {
        Some(path) => path.clone(),
        // The store's names are one safe path component; checked again all the same.
        None if is_plain_name(&meta.name) => PathBuf::from(&meta.name),
        None => {
            return Err(Failure::Usage(format!(
                "give --output: {:?} is not a plain file name",
                meta.name
            )));
        }
    };
    // Checked again when the file is moved into place; this spares a download for nothing.
    if !to_stdout && !args.force && output.try_exists().unwrap_or(true) {
        return Err(Failure::Usage(format!("{} exists (--force replaces it)", output.display())));
    }
    let response = gateway.file_content(&args.file_id).await?;

    let bar = if std::io::stderr().is_terminal() {
        let style = indicatif::ProgressStyle::with_template(
            "{bar:30} {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
        )
        .expect("a valid template")
        .progress_chars("#>-");
        indicatif::ProgressBar::new(meta.size).with_style(style)
    } else {
        indicatif::ProgressBar::hidden()
    };
    // `None`: stdout, where an unverified download cannot be taken back (exit 5 says so).
    let mut file = if to_stdout {
        None
    } else {
        let dir = output.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
        let file = tempfile::NamedTempFile::new_in(dir)
            .map_err(|e| Failure::Usage(format!("cannot write in {}: {e}", dir.display())))?;
        Some(file)
    };
    let write_error = |e: std::io::Error| Failure::Usage(format!("writing: {e}"));
    let mut hasher = Sha256::new();
    let mut size: u64 = 0;
    let mut chunks = response.bytes_stream();
    while let Some(chunk) = chunks.next().await {
        let chunk = chunk.map_err(client::unreachable)?;
        size += chunk.len() as u64;
        // The metadata bounds what is read: a longer body is not the file.
        if size > meta.size {
            return Err(Failure::Unverified(format!(
                "the gateway sent more than the file's {} bytes",
                meta.size
            )));
        }
        hasher.update(&chunk);
        match &mut file {
            Some(file) => file.write_all(&chunk),
            None => std::io::stdout().write_all(&chunk),
        }
        .map_err(write_error)?;
        bar.inc(chunk.len() as u64);
    }
    bar.finish_and_clear();
    let sha256 = hex::encode(hasher.finalize());
    if size != meta.size || sha256 != meta.sha256 {
        // Dropping the temporary file removes it: nothing unverified is left behind.
        return Err(Failure::Unverified(format!(
            "file {} did not verify: got {size} bytes with SHA-256 {sha256}, expected {} bytes \
             with {}",
            meta.id, meta.size, meta.sha256
        )));
    }
    let saved = match file {
        None => {
            std::io::stdout().flush().map_err(write_error)?;
            "stdout".to_owned()
        }
        Some(mut file) => {
            file.flush().map_err(write_error)?;
            let placed =
                if args.force { file.persist(&output) } else { file.persist_noclobber(&output) };
            placed.map_err(|e| {
                Failure::Usage(format!("cannot write {}: {}", output.display(), e.error))
            })?;
            output.display().to_string()
        }
    };
    eprintln!("{saved}: {size} bytes, SHA-256 {sha256} verified");
    Ok(Exit::Success)
}

fn is_plain_name(name: &str) -> bool {
    !name.is_empty()
        && name != "."
        && name != ".."
        && name.chars().all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
}

#[cfg(test)]
mod tests {
    use clap::Parser as _;

    use super::*;

    /// The analyst's commands alone (`edrgate`'s command line flattens them in; its own test
    /// checks the whole).
    #[derive(Debug, clap::Parser)]
    struct Analyst {
        #[command(subcommand)]
        command: AnalystCommand,
    }

    fn parse(args: &[&str]) -> Result<AnalystCommand, clap::Error> {
        let analyst =
            Analyst::try_parse_from(std::iter::once("edrgate").chain(args.iter().copied()))?;
        Ok(analyst.command)
    }

    fn act(args: &[&str]) -> ActArgs {
        match parse(args).unwrap() {
            AnalystCommand::Act(act) => act,
            other => panic!("not act: {other:?}"),
        }
    }

    #[test]
    fn hosts_come_before_the_verb_and_flags_go_anywhere() {
        let a = act(&["act", "WIN-0001", "WIN-0002", "kill-process", "3012", "--json"]);
        assert_eq!(a.hosts, ["WIN-0001", "WIN-0002"]);
        assert!(a.json);
        assert_eq!(
            a.verb.into_command().unwrap(),
            Command::KillProcess { pid: 3012, vendor_id: None }
        );
        let a = act(&["act", "--hosts-file", "h.txt", "get-file", r"C:\evidence\note.txt"]);
        assert!(a.hosts.is_empty());
        assert_eq!(a.hosts_file.as_deref(), Some(Path::new("h.txt")));
        let a = act(&["act", "--device", "cb:10", "isolate", "--comment", "IR-42"]);
        assert_eq!(a.devices, [Target::Device { backend: "cb".into(), device_id: "10".into() }]);
        assert_eq!(a.comment.as_deref(), Some("IR-42"));
        let a = act(&["act", "H", "run-script", "collect.ps1", "-Deep", "x"]);
        let Command::RunScript { args, .. } = a.verb.into_command().unwrap() else { panic!() };
        assert_eq!(args, ["-Deep", "x"]);
        assert!(parse(&["act", "H"]).is_err(), "a verb is required");
        assert!(parse(&["act", "H", "kill-process", "nope"]).is_err());
        assert!(parse(&["act", "--device", "cb", "isolate"]).is_err());
    }

    #[test]
    fn registry_data_is_typed_for_the_api() {
        let set = |args: &[&str]| {
            act(&[&["act", "H", "registry-set", r"HKLM\SOFTWARE\x", "v"], args].concat())
                .verb
                .into_command()
        };
        let data = |c: Command| match c {
            Command::RegistrySet { data, .. } => data,
            other => panic!("{other:?}"),
        };
        assert_eq!(data(set(&["--type", "REG_DWORD", "7"]).unwrap()), json!(7));
        assert_eq!(data(set(&["--type", "reg_sz", "hello"]).unwrap()), json!("hello"));
        assert_eq!(data(set(&["--type", "REG_MULTI_SZ", "a", "b"]).unwrap()), json!(["a", "b"]));
        assert!(set(&["--type", "REG_DWORD", "seven"]).is_err());
        assert!(set(&["--type", "REG_SZ", "a", "b"]).is_err());
        assert!(parse(&["act", "H", "registry-set", "k", "v", "--type", "REG_X", "1"]).is_err());
    }

    #[test]
    fn hosts_files_skip_blanks_and_comments() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("hosts.txt");
        std::fs::write(&file, "# lab\nWIN-0001\n\n  WIN-0002  # the DC\r\nWIN-0003").unwrap();
        assert_eq!(read_hosts(&file).unwrap(), ["WIN-0001", "WIN-0002", "WIN-0003"]);
    }

    #[test]
    fn problems_read_with_their_code_and_request_id() {
        let problem: Problem = serde_json::from_value(json!({
            "type": "urn:edrgate:problem:forbidden", "title": "Forbidden", "status": 403,
            "detail": "missing permission contain", "code": "forbidden", "request_id": "r-1",
        }))
        .unwrap();
        let failure = Failure::Refused(Box::new(problem));
        assert_eq!(
            failure.to_string(),
            "forbidden (403): missing permission contain [request r-1]"
        );
        assert_eq!(failure.exit(), Exit::Refused);
    }

    use serde_json::json;
}
