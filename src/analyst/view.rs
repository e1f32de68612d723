//! What the CLI prints: tables of devices, actions and results, and the live view of a
//! running action.
//!
//! Everything from the gateway goes through [`clean`] before it reaches a terminal: process
//! names, paths and outputs come from endpoints an attacker may control, and an escape
//! sequence in them must not drive the analyst's terminal.

use std::collections::HashSet;
use std::io::{self, Write};

use edrgate_adapter::{Action, CommandResult, CommandState, ErrorInfo, Run, Status, Target};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use uuid::Uuid;

use crate::api::actions::ActionList;
use crate::api::devices::DeviceList;

/// `text` with every control character but `\n` and `\t`, and the bidirectional overrides
/// that reorder what is shown, escaped (`\u{1b}`).
pub(crate) fn clean(text: &str) -> String {
    let hostile = |c: char| {
        (c.is_control() && c != '\n' && c != '\t')
            || matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
    };
    let mut clean = String::with_capacity(text.len());
    for c in text.chars() {
        if hostile(c) {
            clean.extend(c.escape_unicode());
        } else {
            clean.push(c);
        }
    }
    clean
}

/// One line of a table cell: [`clean`], with line breaks and tabs shown as spaces.
fn cell(text: &str) -> String {
    clean(text).replace(['\n', '\t'], " ")
}

/// Left-aligned columns, two spaces apart; the last column is not padded.
pub(crate) fn table(out: &mut dyn Write, headers: &[&str], rows: &[Vec<String>]) -> io::Result<()> {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (width, value) in widths.iter_mut().zip(row) {
            *width = (*width).max(value.chars().count());
        }
    }
    let line = |out: &mut dyn Write, values: &mut dyn Iterator<Item = &str>| -> io::Result<()> {
        let mut text = String::new();
        for (i, value) in values.enumerate() {
            if i + 1 < widths.len() {
                text += &format!("{value:<width$}  ", width = widths[i]);
            } else {
                text += value;
            }
        }
        writeln!(out, "{}", text.trim_end())
    };
    line(out, &mut headers.iter().copied())?;
    for row in rows {
        line(out, &mut row.iter().map(String::as_str))?;
    }
    Ok(())
}

pub(crate) fn devices(out: &mut dyn Write, list: &DeviceList) -> io::Result<()> {
    let rows: Vec<Vec<String>> = list
        .items
        .iter()
        .map(|entry| {
            let d = &entry.device;
            vec![
                cell(&d.hostname),
                cell(&d.backend),
                cell(&d.device_id),
                yes_no(Some(d.online)),
                cell(d.os.as_deref().unwrap_or("-")),
                yes_no(d.isolated),
                cell(d.last_seen.as_deref().unwrap_or("-")),
            ]
        })
        .collect();
    table(out, &["HOSTNAME", "BACKEND", "DEVICE", "ONLINE", "OS", "ISOLATED", "LAST SEEN"], &rows)
}

fn yes_no(value: Option<bool>) -> String {
    match value {
        Some(true) => "yes",
        Some(false) => "no",
        None => "-",
    }
    .to_owned()
}

pub(crate) fn actions(out: &mut dyn Write, list: &ActionList) -> io::Result<()> {
    let rows: Vec<Vec<String>> = list
        .items
        .iter()
        .map(|a| {
            let created = a.created_at.format(&time::format_description::well_known::Rfc3339);
            let kinds: Vec<&str> = a.commands.iter().map(|c| c.kind().as_str()).collect();
            vec![
                a.id.to_string(),
                a.status.as_str().to_owned(),
                created.unwrap_or_default(),
                a.runs.len().to_string(),
                kinds.join(","),
            ]
        })
        .collect();
    table(out, &["ID", "STATUS", "CREATED", "RUNS", "COMMANDS"], &rows)
}

/// The device a run is for, as an analyst named it.
pub(crate) fn host(run: &Run) -> String {
    let named = match (&run.hostname, &run.target) {
        (Some(hostname), _) => hostname.clone(),
        (None, Target::Hostname { hostname }) => hostname.clone(),
        (None, Target::Device { backend, device_id }) => format!("{backend}:{device_id}"),
    };
    cell(&named)
}

fn error(e: &ErrorInfo) -> String {
    let vendor = match (&e.vendor_code, &e.vendor_message) {
        (Some(code), Some(message)) => format!(" (vendor {code}: {message})"),
        (Some(code), None) => format!(" (vendor {code})"),
        _ => String::new(),
    };
    cell(&format!("{}: {}{vendor}", e.code.as_str(), e.message))
}

/// One command's outcome in a few words.
fn outcome(command: &CommandState) -> String {
    let what = command.kind.as_str();
    if let Some(e) = &command.error {
        return format!("{what}: {}", error(e));
    }
    let summary = match &command.result {
        None => command.status.as_str().to_owned(),
        Some(CommandResult::Processes { processes }) => format!("{} processes", processes.len()),
        Some(CommandResult::Directory { entries }) => format!("{} entries", entries.len()),
        Some(CommandResult::File { file }) => {
            format!("file {} ({} bytes)", file.file_id, file.size)
        }
        Some(CommandResult::Execution { exit_code, .. }) => match exit_code {
            Some(code) => format!("exit code {code}"),
            None => "started".to_owned(),
        },
        Some(CommandResult::RegistryKey { sub_keys, values }) => {
            format!("{} sub-keys, {} values", sub_keys.len(), values.len())
        }
        Some(CommandResult::RegistryValue { value }) => cell(&value.data.to_string()),
        Some(CommandResult::MemoryDump { path, .. }) => format!("dump at {}", cell(path)),
        Some(CommandResult::Containment { isolated: true }) => "isolated".to_owned(),
        Some(CommandResult::Containment { isolated: false }) => "not isolated".to_owned(),
        Some(CommandResult::Done) => "done".to_owned(),
    };
    format!("{what}: {summary}")
}

/// A run in a few words: its failure, or what each command gave.
fn run_detail(run: &Run) -> String {
    if let Some(e) = &run.error {
        return error(e);
    }
    let failed: Vec<&CommandState> = run.commands.iter().filter(|c| c.error.is_some()).collect();
    let shown = if failed.is_empty() { run.commands.iter().collect() } else { failed };
    shown.into_iter().map(outcome).collect::<Vec<_>>().join("; ")
}

/// The line the live view prints when a run finishes.
pub(crate) fn run_line(run: &Run) -> String {
    format!("{}  {}  {}", host(run), run.status.as_str(), run_detail(run))
}

/// Runs by what they wait for.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Counts {
    pub succeeded: usize,
    pub failed: usize,
    pub running: usize,
    /// Queued: waiting for the engine or for a vendor budget (session slots, rate limits).
    pub waiting: usize,
}

impl Counts {
    pub(crate) fn of(action: &Action) -> Counts {
        let mut counts = Counts::default();
        for run in &action.runs {
            match run.status {
                Status::Succeeded => counts.succeeded += 1,
                Status::Queued => counts.waiting += 1,
                Status::Dispatched | Status::Running => counts.running += 1,
                _ => counts.failed += 1,
            }
        }
        counts
    }

    fn done(&self) -> usize {
        self.succeeded + self.failed
    }

    /// `2 succeeded · 1 failed · 3 waiting on vendor limits`, without the zeros.
    pub(crate) fn summary(&self) -> String {
        let parts = [
            (self.succeeded, "succeeded"),
            (self.failed, "failed"),
            (self.running, "running"),
            (self.waiting, "waiting on vendor limits"),
        ];
        let parts: Vec<String> =
            parts.iter().filter(|(n, _)| *n > 0).map(|(n, what)| format!("{n} {what}")).collect();
        parts.join(" · ")
    }
}

/// The progress of an action being followed, on stderr. On a terminal: a bar of finished
/// runs with the counts, each finished run printed above it. Elsewhere (pipes, scripts, CI
/// logs): only the finished runs' lines, plain.
pub(crate) struct LiveView {
    bar: Option<ProgressBar>,
    plain: Box<dyn Write + Send>,
    reported: HashSet<Uuid>,
}

impl LiveView {
    /// On stderr: the bar if stderr is a terminal.
    pub(crate) fn stderr() -> LiveView {
        if io::IsTerminal::is_terminal(&io::stderr()) {
            LiveView::on(ProgressDrawTarget::stderr())
        } else {
            LiveView::plain(Box::new(io::stderr()))
        }
    }

    /// The bar, drawn on `target` (a terminal).
    pub(crate) fn on(target: ProgressDrawTarget) -> LiveView {
        // No elapsed time or spinner: the view is a function of the action alone, which
        // keeps it testable; no colours: nothing depends on the terminal's palette.
        let style = ProgressStyle::with_template("{bar:30} {pos}/{len} runs  {msg}")
            .expect("a valid template")
            .progress_chars("#>-");
        let bar = ProgressBar::with_draw_target(Some(0), target).with_style(style);
        LiveView { bar: Some(bar), plain: Box::new(io::sink()), reported: HashSet::new() }
    }

    pub(crate) fn plain(out: Box<dyn Write + Send>) -> LiveView {
        LiveView { bar: None, plain: out, reported: HashSet::new() }
    }

    /// Shows `action`'s state: the runs that finished since the last update, and the counts.
    pub(crate) fn update(&mut self, action: &Action) {
        for run in action.runs.iter().filter(|r| r.status.is_terminal()) {
            if self.reported.insert(run.id) {
                let line = run_line(run);
                match &self.bar {
                    Some(bar) => bar.println(line),
                    None => {
                        let _ = writeln!(self.plain, "{line}");
                    }
                }
            }
        }
        if let Some(bar) = &self.bar {
            // The message first, then the position and length in one draw: the bar never
            // shows a count of one state beside the position of another.
            let counts = Counts::of(action);
            bar.set_message(counts.summary());
            bar.update(|state| {
                state.set_len(action.runs.len() as u64);
                state.set_pos(counts.done() as u64);
            });
        }
    }

    /// Leaves the bar's last state on the screen.
    pub(crate) fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.abandon();
        }
    }
}

/// An action and its results: a line on the action, a table of its runs, then each command's
/// results across the runs.
pub(crate) fn action(out: &mut dyn Write, action: &Action) -> io::Result<()> {
    let counts = Counts::of(action);
    writeln!(
        out,
        "action {}  {}  {} runs: {}",
        action.id,
        action.status.as_str(),
        action.runs.len(),
        counts.summary()
    )?;
    writeln!(out)?;
    let rows: Vec<Vec<String>> = action
        .runs
        .iter()
        .map(|run| {
            vec![
                host(run),
                cell(run.backend.as_deref().unwrap_or("-")),
                cell(run.device_id.as_deref().unwrap_or("-")),
                run.status.as_str().to_owned(),
                run_detail(run),
            ]
        })
        .collect();
    table(out, &["HOST", "BACKEND", "DEVICE", "STATUS", "DETAIL"], &rows)?;
    for (index, command) in action.commands.iter().enumerate() {
        let results: Vec<(String, &CommandResult)> = action
            .runs
            .iter()
            .filter_map(|run| {
                let state = run.commands.iter().find(|c| c.index == index)?;
                Some((host(run), state.result.as_ref()?))
            })
            .collect();
        results_of(out, &format!("{}. {}", index + 1, command.kind().as_str()), &results)?;
    }
    Ok(())
}

/// One command's results on every host that has one, as a table with a HOST column.
fn results_of(
    out: &mut dyn Write,
    title: &str,
    results: &[(String, &CommandResult)],
) -> io::Result<()> {
    let mut rows = Vec::new();
    let headers: &[&str] = match results.first().map(|(_, r)| *r) {
        None | Some(CommandResult::Done) => return Ok(()),
        Some(CommandResult::Processes { .. }) => {
            &["HOST", "PID", "PPID", "NAME", "USER", "COMMAND LINE"]
        }
        Some(CommandResult::Directory { .. }) => &["HOST", "NAME", "TYPE", "SIZE", "MODIFIED"],
        Some(CommandResult::File { .. } | CommandResult::MemoryDump { .. }) => {
            &["HOST", "FILE", "NAME", "SIZE", "SHA-256"]
        }
        Some(CommandResult::Execution { .. }) => &["HOST", "PID", "EXIT CODE", "OUTPUT FILE"],
        Some(CommandResult::RegistryKey { .. } | CommandResult::RegistryValue { .. }) => {
            &["HOST", "NAME", "TYPE", "DATA"]
        }
        Some(CommandResult::Containment { .. }) => &["HOST", "ISOLATED"],
    };
    let opt = |n: Option<u64>| n.map_or("-".to_owned(), |n| n.to_string());
    let mut outputs = Vec::new();
    for (host, result) in results {
        let host = host.clone();
        match result {
            CommandResult::Processes { processes } => rows.extend(processes.iter().map(|p| {
                let command = p.command_line.as_deref().or(p.path.as_deref()).unwrap_or("");
                vec![
                    host.clone(),
                    p.pid.to_string(),
                    opt(p.parent_pid),
                    cell(&p.name),
                    cell(p.username.as_deref().unwrap_or("-")),
                    cell(command),
                ]
            })),
            CommandResult::Directory { entries } => rows.extend(entries.iter().map(|e| {
                vec![
                    host.clone(),
                    cell(&e.name),
                    if e.is_directory { "dir" } else { "file" }.to_owned(),
                    e.size.to_string(),
                    e.modified_at.map_or("-".to_owned(), unix_time),
                ]
            })),
            CommandResult::File { file } | CommandResult::MemoryDump { file: Some(file), .. } => {
                rows.push(vec![
                    host,
                    file.file_id.clone(),
                    cell(&file.name),
                    file.size.to_string(),
                    file.sha256.clone(),
                ]);
            }
            CommandResult::Execution { pid, exit_code, output, output_file } => {
                let code = exit_code.map_or("-".to_owned(), |c| c.to_string());
                let file = output_file.as_ref().map_or("-".to_owned(), |f| f.file_id.clone());
                rows.push(vec![host.clone(), opt(*pid), code, file]);
                if let Some(output) = output.as_deref().filter(|o| !o.is_empty()) {
                    outputs.push((host, output));
                }
            }
            CommandResult::RegistryKey { sub_keys, values } => {
                rows.extend(
                    sub_keys
                        .iter()
                        .map(|k| vec![host.clone(), cell(k), "key".into(), String::new()]),
                );
                rows.extend(values.iter().map(|v| {
                    vec![
                        host.clone(),
                        cell(&v.name),
                        cell(&v.value_type),
                        cell(&v.data.to_string()),
                    ]
                }));
            }
            CommandResult::RegistryValue { value: v } => {
                rows.push(vec![host, cell(&v.name), cell(&v.value_type), cell(&v.data.to_string())])
            }
            CommandResult::Containment { isolated } => {
                rows.push(vec![host, yes_no(Some(*isolated))])
            }
            CommandResult::MemoryDump { file: None, .. } | CommandResult::Done => {}
        }
    }
    writeln!(out)?;
    writeln!(out, "{title}")?;
    table(out, headers, &rows)?;
    for (host, output) in outputs {
        writeln!(out)?;
        writeln!(out, "--- {host} output")?;
        writeln!(out, "{}", clean(output).trim_end())?;
    }
    Ok(())
}

fn unix_time(seconds: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(seconds)
        .ok()
        .and_then(|t| t.format(&time::format_description::well_known::Rfc3339).ok())
        .unwrap_or_else(|| seconds.to_string())
}

#[cfg(test)]
mod tests;
