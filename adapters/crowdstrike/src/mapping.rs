//! Vendor → model: the one error table, the one status table, `classify` (HTTP failure →
//! `AdapterError`), the host-side `stderr` table, and the parsers of RTR's text outputs
//! (`ps`, `ls`, `reg query`) and of device entities. Section numbers (§) refer to
//! `shared/vendor-apis/crowdstrike.md`.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use edrgate_adapter::{
    AdapterError, CommandResult, Device, DirectoryEntry, ErrorCode, ErrorInfo, ProcessInfo,
    RegistryValue, Status,
};
use reqwest::StatusCode;
use reqwest::header::HeaderMap;
use serde_json::Value;

use crate::wire;

/// The `errors[].code` of an expired or unknown session or batch (§9.2).
pub(crate) const SESSION_GONE: i64 = 50007;

/// A device's operating system family, from `platform_name` (§4.2).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Platform {
    Windows,
    Linux,
    Mac,
}

impl Platform {
    pub(crate) fn parse(name: &str) -> Option<Platform> {
        let name = name.trim().to_ascii_lowercase();
        if name.starts_with("windows") {
            Some(Platform::Windows)
        } else if name.starts_with("linux") {
            Some(Platform::Linux)
        } else if name.starts_with("mac") {
            Some(Platform::Mac)
        } else {
            None
        }
    }

    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Platform::Windows => "Windows",
            Platform::Linux => "Linux",
            Platform::Mac => "Mac",
        }
    }
}

// ----- errors ---------------------------------------------------------------------------------

/// The RTR error table (§9.2, §12.2): every `errors[].code` → one [`ErrorCode`], the raw code
/// and text kept as `vendor_code` / `vendor_message`.
pub(crate) fn api_error(code: i64, message: &str) -> ErrorInfo {
    let (normalized, text) = match code {
        40401 => (ErrorCode::DeviceOffline, "the host is offline (RTR could not reach its sensor)"),
        50401 => (ErrorCode::Timeout, "the host did not finish within the RTR timeout"),
        SESSION_GONE => (ErrorCode::VendorUnavailable, "the RTR session expired"),
        40007 => (ErrorCode::UnsupportedCommand, "RTR does not know this command here"),
        40006 | 40012 => (ErrorCode::InvalidRequest, "RTR refused the command line"),
        40412 => {
            (ErrorCode::NotFound, "the library file or script does not exist or is not visible")
        }
        404 if message.contains("no successful hosts") => {
            (ErrorCode::DeviceOffline, "no host could be reached by RTR")
        }
        404 => (ErrorCode::NotFound, "the vendor does not know this object"),
        // A malformed aid (`uuid: incorrect UUID length …`, KBN-EMU).
        500 if message.contains("uuid") => {
            (ErrorCode::DeviceNotFound, "the vendor does not know this device id")
        }
        500..=599 => (ErrorCode::VendorUnavailable, "the vendor failed the request"),
        401 => (ErrorCode::VendorAuthFailed, "the vendor refused edrgate's token"),
        403 => (ErrorCode::Forbidden, "the API client lacks the scope for this request"),
        409 => (ErrorCode::Conflict, "the object already exists"),
        429 => (ErrorCode::VendorRateLimited, "the vendor is rate limiting"),
        _ => (ErrorCode::VendorRejected, "the vendor refused the request"),
    };
    ErrorInfo::new(normalized, text).with_vendor(code.to_string(), message)
}

/// The first of `errors` as an [`ErrorInfo`] (`None` when there is none).
pub(crate) fn first_error<'a>(
    mut errors: impl Iterator<Item = (i64, &'a str)>,
) -> Option<ErrorInfo> {
    errors.next().map(|(code, message)| api_error(code, message))
}

/// An `ErrorInfo` as the `AdapterError` a step returns: 5xx, 429 and expired sessions are
/// transient.
pub(crate) fn into_adapter(info: ErrorInfo) -> AdapterError {
    let retryable =
        matches!(info.code, ErrorCode::VendorUnavailable | ErrorCode::VendorRateLimited);
    let mut e = AdapterError::new(info.code, info.message.clone());
    e.info = info;
    e.retryable = retryable;
    e
}

/// A non-2xx answer (§9.1): the envelope's first error when it has one, the HTTP status
/// otherwise. 429 carries `X-Ratelimit-Retryafter` (epoch seconds, §3).
pub(crate) fn classify(
    status: StatusCode,
    headers: &HeaderMap,
    body: &str,
    token: bool,
) -> AdapterError {
    let parsed: Option<wire::Envelope<Value>> = serde_json::from_str(body).ok();
    let (code, message) = parsed
        .and_then(|e| e.errors.into_iter().next())
        .map(|e| (if e.code == 0 { i64::from(status.as_u16()) } else { e.code }, e.message))
        .unwrap_or_else(|| (i64::from(status.as_u16()), body.chars().take(300).collect()));
    let mut info = api_error(code, &message);
    info.vendor_code = Some(status.as_u16().to_string());
    if code != i64::from(status.as_u16()) {
        info.vendor_code = Some(format!("{}/{code}", status.as_u16()));
    }
    info.code = match status.as_u16() {
        // Token route: bad credentials; data routes: 401 after one re-authentication.
        401 => ErrorCode::VendorAuthFailed,
        400 | 403 if token => ErrorCode::VendorAuthFailed,
        403 => ErrorCode::Forbidden,
        429 => ErrorCode::VendorRateLimited,
        500..=599 => ErrorCode::VendorUnavailable,
        _ => info.code,
    };
    if token {
        info.message = "the vendor refused edrgate's API client credentials".into();
    }
    let mut e = into_adapter(info);
    if status == StatusCode::TOO_MANY_REQUESTS || status.is_server_error() {
        e = e.with_retry_after(retry_after(headers, SystemTime::now()));
    }
    e
}

/// `X-Ratelimit-Retryafter`: the epoch second from which calls are allowed again (§3), as a
/// wait from `now` (at least one second, rounded up so no call lands early); a plain
/// `Retry-After` in seconds is read too.
pub(crate) fn retry_after(headers: &HeaderMap, now: SystemTime) -> Option<Duration> {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).map(str::trim);
    if let Some(epoch) = header("x-ratelimit-retryafter").and_then(|v| v.parse::<u64>().ok()) {
        let now_ms = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
        let wait = (epoch.saturating_mul(1000)).saturating_sub(now_ms);
        return Some(Duration::from_millis(wait.max(1000) + 100));
    }
    header("retry-after").and_then(|v| v.parse::<u64>().ok()).map(Duration::from_secs)
}

/// The host-side failure table (§9.3): RTR reports them as `stderr` text with
/// `complete: true`. First match wins; anything else is `command_failed`.
const STDERR: &[(&str, ErrorCode)] = &[
    ("cannot find a process", ErrorCode::NotFound),
    ("no such process", ErrorCode::NotFound),
    ("destination already exists", ErrorCode::Conflict),
    ("already exists", ErrorCode::Conflict),
    ("registry key or value", ErrorCode::NotFound),
    ("cannot find the file", ErrorCode::FileNotFound),
    ("cannot find the path", ErrorCode::FileNotFound),
    ("no such file or directory", ErrorCode::FileNotFound),
    ("does not exist", ErrorCode::FileNotFound),
    ("access is denied", ErrorCode::AccessDenied),
    ("access denied", ErrorCode::AccessDenied),
    ("permission denied", ErrorCode::AccessDenied),
    ("operation not permitted", ErrorCode::AccessDenied),
];

pub(crate) fn stderr_error(stderr: &str) -> ErrorInfo {
    let lower = stderr.to_ascii_lowercase();
    let code = STDERR
        .iter()
        .find(|(needle, _)| lower.contains(needle))
        .map_or(ErrorCode::CommandFailed, |(_, code)| *code);
    let first: String =
        stderr.trim().lines().next().unwrap_or_default().chars().take(300).collect();
    ErrorInfo::new(code, format!("the host reported: {first}")).with_vendor("stderr", stderr.trim())
}

// ----- statuses -------------------------------------------------------------------------------

/// The vendor status words edrgate reports as `vendor_status`, each → one [`Status`] (§12.2).
pub(crate) const STATUS_WORDS: &[(&str, Status)] = &[
    // RTR commands (`complete`, `offline_queued`/`queued_command_offline`, §6.4, §6.7).
    ("running", Status::Running),
    ("offline_queued", Status::Queued),
    ("complete", Status::Succeeded),
    ("complete_with_stderr", Status::Failed),
    ("error", Status::Failed),
    ("timed_out", Status::TimedOut),
    ("cancelled_in_queue", Status::Cancelled),
    // `file/v2` uploads to the cloud (§8.1).
    ("uploading", Status::Running),
    // Device containment states (§4.3); which is terminal depends on the direction, see
    // [`containment_status`].
    ("containment_pending", Status::Running),
    ("lift_containment_pending", Status::Running),
    ("contained", Status::Succeeded),
    ("normal", Status::Succeeded),
];

pub(crate) fn status_of(word: &str) -> Status {
    STATUS_WORDS.iter().find(|(w, _)| *w == word).map_or(Status::Running, |(_, s)| *s)
}

/// A containment state (§4.3) for an isolate (`isolate`) or a release: the target state is
/// `succeeded`, anything else still `running` (the vendor moves through the pending states).
pub(crate) fn containment_status(word: &str, isolate: bool) -> Status {
    match (word, isolate) {
        ("contained", true) | ("normal", false) => status_of(word),
        _ => Status::Running,
    }
}

/// Whether a containment state shows an isolate (or release) was received by the vendor.
pub(crate) fn containment_started(word: &str, isolate: bool) -> bool {
    if isolate {
        matches!(word, "containment_pending" | "contained")
    } else {
        matches!(word, "lift_containment_pending" | "normal")
    }
}

// ----- devices --------------------------------------------------------------------------------

pub(crate) fn device(backend: &str, d: wire::DeviceEntity, online: bool) -> Device {
    let os = match (d.platform_name.trim(), d.os_version.trim()) {
        ("", "") => None,
        (p, "") => Some(p.to_owned()),
        ("", v) => Some(v.to_owned()),
        (p, v) => Some(format!("{p} ({v})")),
    };
    Device {
        backend: backend.to_owned(),
        isolated: (!d.status.is_empty()).then(|| d.status == "contained"),
        hostname: d.hostname,
        device_id: d.device_id,
        online,
        os,
        last_seen: d.last_seen,
        group: d.groups.into_iter().next(),
        tags: d.tags,
    }
}

// ----- outputs --------------------------------------------------------------------------------

/// Appends `more` to `out` within `cap` bytes (on a char boundary); `false` once cut.
pub(crate) fn append_capped(out: &mut String, more: &str, cap: usize) -> bool {
    let room = cap.saturating_sub(out.len());
    if more.len() <= room {
        out.push_str(more);
        return true;
    }
    let mut end = room;
    while !more.is_char_boundary(end) {
        end -= 1;
    }
    out.push_str(&more[..end]);
    false
}

/// A table output that did not parse: kept as raw text, never an error (§ contract).
fn raw(stdout: &str) -> CommandResult {
    CommandResult::Execution {
        pid: None,
        exit_code: None,
        output: Some(stdout.to_owned()),
        output_file: None,
    }
}

/// Column starts of a whitespace-aligned header: a column begins after two or more spaces
/// (names like `Start Time (UTC-0)` hold single spaces).
fn columns(header: &str) -> Vec<(usize, String)> {
    let mut cols = Vec::new();
    let bytes = header.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b' ' {
            i += 1;
            continue;
        }
        let start = i;
        while i < bytes.len() && !(bytes[i] == b' ' && bytes.get(i + 1).is_none_or(|b| *b == b' '))
        {
            i += 1;
        }
        cols.push((start, header[start..i].trim().to_owned()));
    }
    cols
}

/// The cells of `row` under `cols` (the last cell runs to the end of the line). A cell is
/// cut at its column start, moved back to the start of a word that straddles it.
fn cells(row: &str, cols: &[(usize, String)]) -> Vec<String> {
    let starts: Vec<usize> = cols
        .iter()
        .map(|(s, _)| {
            let mut s = (*s).min(row.len());
            while s > 0 && !row.is_char_boundary(s) {
                s -= 1;
            }
            // A word straddling the column start belongs to this cell: back to its start.
            // (Past the end of a short row, the cell is empty.)
            let bytes = row.as_bytes();
            if s < bytes.len() && bytes[s] != b' ' {
                while s > 0 && bytes[s - 1] != b' ' {
                    s -= 1;
                }
            }
            s
        })
        .collect();
    (0..cols.len())
        .map(|i| {
            let end = starts.get(i + 1).copied().unwrap_or(row.len()).max(starts[i]);
            row[starts[i]..end].trim().to_owned()
        })
        .collect()
}

fn find_col(cols: &[(usize, String)], name: &str) -> Option<usize> {
    cols.iter().position(|(_, n)| n.to_ascii_lowercase().starts_with(&name.to_ascii_lowercase()))
}

/// `ps` (contract: Windows table with `Name Id … Path`; Linux/macOS `PID PPID USER COMMAND`).
pub(crate) fn processes(stdout: &str) -> CommandResult {
    let lines: Vec<&str> = stdout.lines().collect();
    let Some(h) = lines.iter().position(|l| {
        let t: Vec<&str> = l.split_whitespace().collect();
        t.iter().any(|w| w.eq_ignore_ascii_case("id") || w.eq_ignore_ascii_case("pid"))
    }) else {
        return raw(stdout);
    };
    let cols = columns(lines[h]);
    let pid_col = find_col(&cols, "pid")
        .or_else(|| cols.iter().position(|(_, n)| n.eq_ignore_ascii_case("id")));
    let Some(pid_col) = pid_col else { return raw(stdout) };
    let name_col = find_col(&cols, "name");
    let ppid_col = find_col(&cols, "ppid");
    let user_col = find_col(&cols, "user");
    let cmd_col = find_col(&cols, "command");
    let path_col = find_col(&cols, "path");
    let start_col = find_col(&cols, "start time");
    let start_offset = start_col.and_then(|i| utc_offset(&cols[i].1)).unwrap_or(0);
    let unix = name_col.is_none();
    let mut out = Vec::new();
    for row in
        lines[h + 1..].iter().filter(|l| !l.trim().is_empty() && !l.trim_start().starts_with("--"))
    {
        let c = if unix {
            // Single-word columns, the last one (COMMAND) holding the rest of the line.
            let mut parts = row.split_whitespace();
            let mut v: Vec<String> =
                (0..cols.len() - 1).filter_map(|_| parts.next().map(str::to_owned)).collect();
            v.push(parts.collect::<Vec<_>>().join(" "));
            v
        } else {
            cells(row, &cols)
        };
        let Some(pid) = c.get(pid_col).and_then(|p| p.parse::<u64>().ok()) else { continue };
        let command = cmd_col.and_then(|i| c.get(i)).filter(|s| !s.is_empty()).cloned();
        let name = match name_col.and_then(|i| c.get(i)) {
            Some(n) => n.clone(),
            None => command
                .as_deref()
                .and_then(|cmd| cmd.split_whitespace().next())
                .map(|exe| exe.rsplit('/').next().unwrap_or(exe).to_owned())
                .unwrap_or_default(),
        };
        out.push(ProcessInfo {
            pid,
            parent_pid: ppid_col.and_then(|i| c.get(i)).and_then(|p| p.parse().ok()),
            name,
            path: path_col.and_then(|i| c.get(i)).filter(|s| !s.is_empty()).cloned(),
            command_line: command,
            username: user_col.and_then(|i| c.get(i)).filter(|s| !s.is_empty()).cloned(),
            sid: None,
            started_at: start_col.and_then(|i| c.get(i)).and_then(|t| timestamp(t, start_offset)),
            vendor_id: None,
        });
    }
    CommandResult::Processes { processes: out }
}

/// `ls`: the Windows `Directory listing for …` table (§11.11), `ls -l`-like lines, or plain
/// names (Linux without `-l`, KBN-EMU).
pub(crate) fn directory(stdout: &str) -> CommandResult {
    let lines: Vec<&str> = stdout.lines().collect();
    if let Some(h) = lines.iter().position(|l| {
        let l = l.trim_start();
        l.starts_with("Name") && l.contains("Type")
    }) {
        let cols = columns(lines[h]);
        let (Some(name), Some(kind)) = (find_col(&cols, "name"), find_col(&cols, "type")) else {
            return raw(stdout);
        };
        let size = find_col(&cols, "size (bytes)");
        let modified = find_col(&cols, "last modified");
        let created = find_col(&cols, "created");
        let offset = |i: Option<usize>| i.and_then(|i| utc_offset(&cols[i].1)).unwrap_or(0);
        let mut entries = Vec::new();
        for row in lines[h + 1..]
            .iter()
            .filter(|l| !l.trim().is_empty() && !l.trim_start().starts_with("----"))
        {
            let c = cells(row, &cols);
            let Some(n) = c.get(name).filter(|n| !n.is_empty()) else { continue };
            let is_directory = c.get(kind).is_some_and(|t| t.eq_ignore_ascii_case("<directory>"));
            entries.push(DirectoryEntry {
                name: n.clone(),
                is_directory,
                size: size
                    .and_then(|i| c.get(i))
                    .and_then(|s| s.replace(',', "").parse().ok())
                    .unwrap_or(0),
                attributes: Vec::new(),
                created_at: created
                    .and_then(|i| c.get(i))
                    .and_then(|t| timestamp(t, offset(created))),
                modified_at: modified
                    .and_then(|i| c.get(i))
                    .and_then(|t| timestamp(t, offset(modified))),
                accessed_at: None,
            });
        }
        return CommandResult::Directory { entries };
    }
    let mut entries = Vec::new();
    for line in lines.iter().map(|l| l.trim_end()).filter(|l| !l.is_empty()) {
        if line.starts_with("total ") {
            continue;
        }
        let parts: Vec<&str> = line.split_whitespace().collect();
        let long = parts.len() >= 9 && parts[0].len() >= 10 && "-dlcbps".contains(&parts[0][..1]);
        if long {
            // perms links user group size month day time|year name…
            let name = nth_field_rest(line, 8);
            entries.push(DirectoryEntry {
                name: name.split(" -> ").next().unwrap_or(name).to_owned(),
                is_directory: parts[0].starts_with('d'),
                size: parts[4].parse().unwrap_or(0),
                attributes: Vec::new(),
                created_at: None,
                modified_at: None,
                accessed_at: None,
            });
        } else if parts.len() == 1 || !line.contains("  ") {
            // Plain names, one per line.
            entries.push(DirectoryEntry {
                name: line.trim().trim_end_matches('/').to_owned(),
                is_directory: line.ends_with('/'),
                size: 0,
                attributes: Vec::new(),
                created_at: None,
                modified_at: None,
                accessed_at: None,
            });
        } else {
            return raw(stdout);
        }
    }
    CommandResult::Directory { entries }
}

/// The rest of `line` from its `n`-th whitespace-separated field (0-based) on.
fn nth_field_rest(line: &str, n: usize) -> &str {
    let mut rest = line.trim_start();
    for _ in 0..n {
        rest = rest.split_once(char::is_whitespace).map_or("", |(_, r)| r).trim_start();
    }
    rest
}

/// `(UTC+2)` / `(UTC-0)` in a header → seconds east of UTC.
fn utc_offset(header: &str) -> Option<i64> {
    let at = header.find("UTC")? + 3;
    let rest: String = header[at..].chars().take_while(|c| *c != ')').collect();
    let rest = rest.trim();
    if rest.is_empty() {
        return Some(0);
    }
    let sign = rest.chars().next()?;
    let digits = &rest[sign.len_utf8()..];
    let (h, m) = digits.split_once(':').unwrap_or((digits, "0"));
    let secs = h.parse::<i64>().ok()? * 3600 + m.parse::<i64>().ok()? * 60;
    Some(if sign == '+' { secs } else { -secs })
}

/// `6/19/2023 4:11:43 PM` (Windows `ls`) or `2023-06-19 16:11:43` / RFC 3339 → Unix seconds,
/// given the column's UTC offset.
pub(crate) fn timestamp(text: &str, offset: i64) -> Option<i64> {
    let text = text.trim();
    let (date, rest) = text.split_once([' ', 'T'])?;
    let (y, mo, d) = if date.contains('/') {
        let mut p = date.split('/');
        let (mo, d, y) =
            (p.next()?.parse().ok()?, p.next()?.parse().ok()?, p.next()?.parse().ok()?);
        (y, mo, d)
    } else {
        let mut p = date.split('-');
        (p.next()?.parse().ok()?, p.next()?.parse().ok()?, p.next()?.parse().ok()?)
    };
    let mut words = rest.split_whitespace();
    let time = words.next()?.trim_end_matches('Z');
    let time = time.split(['+', '.']).next()?;
    let mut t = time.split(':');
    let (mut h, mi): (i64, i64) = (t.next()?.parse().ok()?, t.next()?.parse().ok()?);
    let s: i64 = t.next().map_or(Some(0), |s| s.parse().ok())?;
    match words.next().map(str::to_ascii_uppercase).as_deref() {
        Some("PM") if h < 12 => h += 12,
        Some("AM") if h == 12 => h = 0,
        _ => {}
    }
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || s > 60 {
        return None;
    }
    Some(days_from_civil(y, mo, d) * 86_400 + h * 3600 + mi * 60 + s - offset)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (m + if m > 2 { -3 } else { 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// `reg query <key>` (contract: the key as header, `<subkey>` lines, `<name>  <REG_TYPE>
/// <data>` value lines, like reg.exe).
pub(crate) fn registry_key(key: &str, stdout: &str) -> (Vec<String>, Vec<RegistryValue>) {
    let mut sub_keys = Vec::new();
    let mut values = Vec::new();
    let prefix = format!("{}\\", key.trim_end_matches('\\').to_ascii_lowercase());
    for line in stdout.lines().map(str::trim_end).filter(|l| !l.trim().is_empty()) {
        if let Some(v) = registry_value_line(line) {
            values.push(v);
            continue;
        }
        let name = line.trim();
        if name.eq_ignore_ascii_case(key.trim_end_matches('\\')) || name.starts_with('-') {
            continue;
        }
        let lower = name.to_ascii_lowercase();
        let child = if lower.starts_with(&prefix) { &name[prefix.len()..] } else { name };
        sub_keys.push(child.rsplit('\\').next().unwrap_or(child).to_owned());
    }
    (sub_keys, values)
}

/// One `<name>  <REG_TYPE>  <data>` line (name may be `(Default)` or hold spaces).
pub(crate) fn registry_value_line(line: &str) -> Option<RegistryValue> {
    let words: Vec<(usize, &str)> = line
        .split_whitespace()
        .map(|w| (w.as_ptr() as usize - line.as_ptr() as usize, w))
        .collect();
    let (i, (at, kind)) = words.iter().enumerate().find(|(_, (_, w))| w.starts_with("REG_"))?;
    if i == 0 {
        return None;
    }
    let name = line[..*at].trim().to_owned();
    let data = line[at + kind.len()..].trim();
    let data = match *kind {
        "REG_DWORD" | "REG_QWORD" => {
            let n = data
                .strip_prefix("0x")
                .map_or_else(|| data.parse().ok(), |h| u64::from_str_radix(h, 16).ok());
            n.map_or_else(|| Value::String(data.to_owned()), Value::from)
        }
        "REG_MULTI_SZ" => Value::Array(
            data.split("\\0")
                .filter(|s| !s.is_empty())
                .map(|s| Value::String(s.to_owned()))
                .collect(),
        ),
        _ => Value::String(data.to_owned()),
    };
    Some(RegistryValue { name, value_type: (*kind).to_owned(), data })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn fixture(name: &str) -> String {
        let path = format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"));
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
    }

    fn batch(name: &str) -> BTreeMap<String, wire::HostResult> {
        serde_json::from_str::<wire::BatchCommand>(&fixture(name)).unwrap().combined.resources
    }

    /// A host result as the adapter reads it: per-host errors first, then stderr (§9.3).
    fn outcome(r: &wire::HostResult) -> Result<(), ErrorInfo> {
        if let Some(e) = first_error(r.errors.iter().map(|e| (e.code, e.message.as_str()))) {
            return Err(e);
        }
        if !r.stderr.is_empty() {
            return Err(stderr_error(&r.stderr));
        }
        Ok(())
    }

    #[test]
    fn recorded_batch_results_map_to_one_error_code_each() {
        let table = [
            ("xsoar_rtr_general_response.json", None),
            ("xsoar_rtr_outputs_with_stderr.json", Some((ErrorCode::NotFound, "stderr"))),
            ("xsoar_rtr_outputs_with_error.json", Some((ErrorCode::VendorRejected, "0"))),
            (
                "kibana_batch_command__cat-missing-file.json",
                Some((ErrorCode::FileNotFound, "stderr")),
            ),
            (
                "kibana_batch_command__command-not-found.json",
                Some((ErrorCode::UnsupportedCommand, "40007")),
            ),
            (
                "kibana_batch_command__command-not-valid.json",
                Some((ErrorCode::InvalidRequest, "40006")),
            ),
            (
                "kibana_batch_command__invalid-session.json",
                Some((ErrorCode::VendorUnavailable, "50007")),
            ),
        ];
        for (name, expected) in table {
            let results = batch(name);
            assert_eq!(results.len(), 1, "{name}");
            let got = outcome(results.values().next().unwrap())
                .err()
                .map(|e| (e.code, e.vendor_code.unwrap_or_default()));
            assert_eq!(got, expected.map(|(c, v)| (c, v.to_owned())), "{name}");
        }
        let stderr = stderr_error("Cannot find a process with the process identifier 5260.");
        assert_eq!(
            stderr.vendor_message.as_deref(),
            Some("Cannot find a process with the process identifier 5260.")
        );
    }

    #[test]
    fn recorded_batch_inits_give_sessions_or_per_host_errors() {
        let ok: wire::BatchInit =
            serde_json::from_str(&fixture("kibana_batch_init__success.json")).unwrap();
        assert_eq!(ok.batch_id, "TEST_BATCH_ID");
        let host = &ok.resources["TEST_AGENT_ID"];
        assert_eq!((host.session_id.as_str(), host.stdout.as_str()), ("TEST_SESSION_ID", "/"));
        let bad: wire::BatchInit =
            serde_json::from_str(&fixture("kibana_batch_init__wrong-host-id.json")).unwrap();
        assert_eq!(bad.batch_id, "");
        let host = &bad.resources["TEST_AGENT_ID"];
        assert_eq!(outcome(host).unwrap_err().code, ErrorCode::DeviceNotFound);
        let top = first_error(bad.errors.iter().map(|e| (e.code, e.message.as_str()))).unwrap();
        assert_eq!(top.code, ErrorCode::DeviceOffline);
        let none: wire::BatchInit =
            serde_json::from_str(&fixture("kibana_batch_init__missing-ids.json")).unwrap();
        assert_eq!(none.errors[0].code, 400);
    }

    #[test]
    fn recorded_single_host_answers_parse() {
        let init: wire::Envelope<Vec<wire::InitResponse>> =
            serde_json::from_str(&fixture("kibana_init_session__success.TRUNCATED.json")).unwrap();
        assert_eq!(init.resources[0].session_id, "TEST_SESSION_ID");
        assert!(!init.resources[0].offline_queued);
        let accepted: wire::Envelope<Vec<wire::CommandAccepted>> =
            serde_json::from_str(&fixture("kibana_command_execute__success.json")).unwrap();
        assert_eq!(accepted.resources[0].cloud_request_id, "TEST_CLOUD_REQUEST_ID");
        let status: wire::Envelope<Vec<wire::CommandStatus>> =
            serde_json::from_str(&fixture("kibana_command_status__ls.json")).unwrap();
        assert!(status.resources[0].complete);
        let CommandResult::Directory { entries } = directory(&status.resources[0].stdout) else {
            panic!()
        };
        assert_eq!(entries.len(), 26);
        assert!(entries.iter().any(|e| e.name == "stuff.exe"));
        let e = classify(
            StatusCode::BAD_REQUEST,
            &HeaderMap::new(),
            &fixture("kibana_command_status__missing-cloud-id.json"),
            false,
        );
        assert_eq!(
            (e.code(), e.info.vendor_code.as_deref()),
            (ErrorCode::VendorRejected, Some("400"))
        );
        let token: wire::Token = serde_json::from_str(&fixture("kibana_get_token.json")).unwrap();
        assert_eq!((token.access_token.as_str(), token.expires_in), ("testtoken", 123));
        let online: wire::Envelope<Vec<wire::OnlineState>> =
            serde_json::from_str(&fixture("xsoar_online_states_response.json")).unwrap();
        assert_eq!(online.resources.len(), 5);
        assert!(online.resources.iter().all(|s| s.state == "online"));
    }

    #[test]
    fn the_recorded_windows_listing_parses_with_its_utc_offset() {
        let results = batch("xsoar_run_command_with_batch.json");
        let CommandResult::Directory { entries } = directory(&results["host_id"].stdout) else {
            panic!()
        };
        assert_eq!(entries.len(), 2);
        assert_eq!((entries[0].name.as_str(), entries[0].is_directory), ("$Recycle.Bin", true));
        // 6/19/2023 4:11:43 PM at UTC+2 is 14:11:43 UTC.
        assert_eq!(entries[0].modified_at, Some(1_687_183_903));
        let linux = batch("kibana_batch_command__success-ls.json");
        let CommandResult::Directory { entries } = directory(&linux["TEST_AGENT_ID"].stdout) else {
            panic!()
        };
        assert_eq!(entries.len(), 23);
    }

    #[test]
    fn contract_outputs_parse() {
        let ps = "Name                Id    Start Time (UTC-0)    WorkingMemory(kb)  CPU(s)  HandleCount  Path\n----                --    ------------------    -----------------  ------  -----------  ----\nSystem              4     2024-01-01 00:00:00   100                1.00    10\nmy app.exe          4242  2024-01-01 00:00:01   2000               0.50    20           C:\\Program Files\\my app.exe\n";
        let CommandResult::Processes { processes: windows } = super::processes(ps) else {
            panic!()
        };
        assert_eq!(windows.len(), 2);
        assert_eq!(windows[0].path, None, "an empty last cell is empty");
        assert_eq!((windows[1].pid, windows[1].name.as_str()), (4242, "my app.exe"));
        assert_eq!(windows[1].path.as_deref(), Some("C:\\Program Files\\my app.exe"));
        assert_eq!(windows[1].started_at, Some(1_704_067_201));
        let unix = "PID  PPID  USER  COMMAND\n1    0     root  /sbin/init splash\n77   1     www   nginx: worker\n";
        let CommandResult::Processes { processes } = super::processes(unix) else { panic!() };
        assert_eq!(processes[1].pid, 77);
        assert_eq!(processes[0].command_line.as_deref(), Some("/sbin/init splash"));
        assert_eq!(
            (processes[1].parent_pid, processes[1].username.as_deref()),
            (Some(1), Some("www"))
        );
        assert!(matches!(processes_raw(), CommandResult::Execution { .. }));
        let ls = "total 8\ndrwxr-xr-x 2 root root 4096 Jan 01 12:00 evidence\n-rw-r--r-- 1 root root 1234 Jan 01 12:00 note file.txt\n";
        let CommandResult::Directory { entries } = directory(ls) else { panic!() };
        assert_eq!(entries.len(), 2);
        assert!(entries[0].is_directory);
        assert_eq!((entries[1].name.as_str(), entries[1].size), ("note file.txt", 1234));
        let reg = "HKLM\\SOFTWARE\\Acme\nHKLM\\SOFTWARE\\Acme\\Sub\n    Version    REG_SZ    1.2 beta\n    Count    REG_DWORD    0x10\n";
        let (subs, values) = registry_key("HKLM\\SOFTWARE\\Acme", reg);
        assert_eq!(subs, ["Sub"]);
        assert_eq!(values[0].data, Value::from("1.2 beta"));
        assert_eq!(values[1].data, Value::from(16));
    }

    fn processes_raw() -> CommandResult {
        processes("something else entirely")
    }

    #[test]
    fn retry_after_is_an_epoch_second() {
        let mut headers = HeaderMap::new();
        let now = UNIX_EPOCH + Duration::from_millis(100_700);
        headers.insert("X-Ratelimit-Retryafter", "102".parse().unwrap());
        assert_eq!(retry_after(&headers, now), Some(Duration::from_millis(1400)));
        headers.insert("X-Ratelimit-Retryafter", "50".parse().unwrap());
        assert_eq!(retry_after(&headers, now), Some(Duration::from_millis(1100)));
        let e = classify(
            StatusCode::TOO_MANY_REQUESTS,
            &headers,
            r#"{"errors":[{"code":429,"message":"API rate limit exceeded."}]}"#,
            false,
        );
        assert!(e.is_retryable());
        assert_eq!(e.code(), ErrorCode::VendorRateLimited);
    }

    #[test]
    fn statuses_and_containment_words_map_once() {
        for (word, _) in STATUS_WORDS {
            assert_eq!(STATUS_WORDS.iter().filter(|(w, _)| w == word).count(), 1, "{word}");
        }
        assert_eq!(containment_status("contained", true), Status::Succeeded);
        assert_eq!(containment_status("containment_pending", true), Status::Running);
        assert_eq!(containment_status("normal", true), Status::Running);
        assert_eq!(containment_status("normal", false), Status::Succeeded);
        assert!(containment_started("containment_pending", true));
        assert!(!containment_started("normal", true));
        let e = classify(
            StatusCode::FORBIDDEN,
            &HeaderMap::new(),
            r#"{"errors":[{"code":403,"message":"access denied, authorization failed"}]}"#,
            false,
        );
        assert_eq!(e.code(), ErrorCode::Forbidden);
        let e = classify(
            StatusCode::FORBIDDEN,
            &HeaderMap::new(),
            r#"{"errors":[{"code":403,"message":"Failed to issue access token - Not Authorized"}]}"#,
            true,
        );
        assert_eq!(e.code(), ErrorCode::VendorAuthFailed);
    }
}
