//! One simulated host behind a Falcon sensor: its filesystem, processes and (Windows) registry,
//! and what each RTR command prints on it.
//!
//! Output formats: no source in the reference shows RTR's exact `ps`, `ls -l` or `reg query`
//! text, so these follow the formats agreed in the adapter contract (a design assumption, \[U\]):
//! Windows `ps` is a whitespace-aligned table (`Name  Id  Start Time (UTC-0)  WorkingMemory(kb)
//! CPU(s)  HandleCount  Path`, then dashes), Linux/macOS `ps` is `PID  PPID  USER  COMMAND`;
//! Windows `ls` is the `Directory listing for C:\ -` table of §11.11 (as XSOAR's recorded
//! listing has it: `--` in a directory's size columns, times like `6/19/2023 4:11:43 PM`),
//! Linux/macOS `ls` prints `ls -l`-like lines (the contract's choice; §11.11 and Elastic's
//! sample show plain names, which the adapter also reads); `reg query` prints the key, then subkeys, then `name  TYPE  data` lines.
//! Host-side failures are stderr text (§6.4, §9.3) with the contract's exact texts for a
//! missing pid (`Cannot find a process with the process identifier N.`) and a missing path
//! (`The system cannot find the file specified.` on Windows, `No such file or directory` on
//! Linux/macOS).

use std::collections::BTreeMap;

use bytes::Bytes;
use sha2::Digest as _;

/// Content of the evidence note every host has (at [`crate::NOTE_PATH_WINDOWS`] or
/// [`crate::NOTE_PATH_UNIX`]).
pub const NOTE_TXT: &[u8] =
    b"edrgate evidence note: collected from a CrowdStrike Falcon simulator host.\r\nline two\r\n";

/// Most files (and directories) one host holds: `put`, `cp` and dumps cannot grow it without
/// bound.
const MAX_NODES: usize = 20_000;
/// Most bytes `cat` prints (the Windows help's `Count` maximum, §5.3).
const CAT_MAX: usize = 32_768;
/// Size of a simulated memory dump.
const DUMP_BYTES: usize = 64 * 1024;

/// A host's platform, as `platform_name` spells it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Os {
    Windows,
    Linux,
    Mac,
}

impl Os {
    pub(crate) fn platform_name(self) -> &'static str {
        match self {
            Os::Windows => "Windows",
            Os::Linux => "Linux",
            Os::Mac => "Mac",
        }
    }

    /// The library scripts' `platform[]` word (§8.4).
    pub(crate) fn script_platform(self) -> &'static str {
        match self {
            Os::Windows => "windows",
            Os::Linux => "linux",
            Os::Mac => "mac",
        }
    }

    pub(crate) fn root(self) -> &'static str {
        if self == Os::Windows { "C:\\" } else { "/" }
    }
}

#[derive(Clone, Debug)]
pub(crate) struct Node {
    /// The path as created (display case).
    pub(crate) path: String,
    pub(crate) dir: bool,
    pub(crate) content: Bytes,
    /// Seconds since the Unix epoch.
    pub(crate) modified: u64,
}

/// Where the Windows hosts' suspicious `updater.exe` ([`crate::UPDATER_PID`]) runs from.
const UPDATER_EXE: &str = r"C:\Users\analyst\AppData\Local\Temp\updater.exe";

#[derive(Clone, Debug)]
pub(crate) struct Process {
    pub(crate) pid: u32,
    pub(crate) ppid: u32,
    pub(crate) name: String,
    pub(crate) user: String,
    pub(crate) path: String,
    pub(crate) started: u64,
    /// The sensor's own and the OS's vital processes: `kill` is refused.
    pub(crate) critical: bool,
}

#[derive(Clone, Debug, Default)]
pub(crate) struct RegKey {
    /// Display form, hive abbreviated (`HKLM\SOFTWARE\…`).
    pub(crate) name: String,
    /// Lower-cased value name → (name, type, data).
    pub(crate) values: BTreeMap<String, (String, String, String)>,
}

/// What a command did on the host.
#[derive(Debug, Default)]
pub(crate) struct Outcome {
    pub(crate) stdout: String,
    pub(crate) stderr: String,
    /// The side effect, by its `/_sim/log` op name, when the host changed.
    pub(crate) effect: Option<&'static str>,
    /// A `get`: the host path (native form) and the bytes read.
    pub(crate) fetched: Option<(String, Bytes)>,
}

impl Outcome {
    fn out(stdout: impl Into<String>) -> Self {
        Outcome { stdout: stdout.into(), ..Outcome::default() }
    }
    fn err(stderr: impl Into<String>) -> Self {
        Outcome { stderr: stderr.into(), ..Outcome::default() }
    }
    fn effect(op: &'static str, stdout: impl Into<String>) -> Self {
        Outcome { stdout: stdout.into(), effect: Some(op), ..Outcome::default() }
    }
}

/// A parsed command line: `base`, positional arguments and `-Name[=value]` flags.
#[derive(Clone, Debug, Default)]
pub(crate) struct CommandLine {
    pub(crate) base: String,
    pub(crate) args: Vec<String>,
    /// Lower-cased flag name (without the dash) → value (`None` for a bare flag).
    pub(crate) flags: Vec<(String, Option<String>)>,
}

impl CommandLine {
    /// Splits on whitespace outside quotes (RTR splits arguments on spaces, §6.2), strips the
    /// quotes, and takes a `-Raw=` script between triple backticks as one value (§6.6).
    pub(crate) fn parse(line: &str) -> Option<CommandLine> {
        let mut tokens = Vec::new();
        let mut cur = String::new();
        let mut quote: Option<char> = None;
        let mut rest = line.trim();
        let mut started = false;
        while let Some(c) = rest.chars().next() {
            if quote.is_none() && cur.eq_ignore_ascii_case("-raw=") && rest.starts_with("```") {
                let body = &rest[3..];
                let end = body.find("```")?;
                cur.push_str(&body[..end]);
                rest = &body[end + 3..];
                started = true;
                continue;
            }
            rest = &rest[c.len_utf8()..];
            match (quote, c) {
                (Some(q), c) if c == q => quote = None,
                (Some(_), c) => cur.push(c),
                (None, '"' | '\'') => {
                    quote = Some(c);
                    started = true;
                }
                (None, c) if c.is_whitespace() => {
                    if started || !cur.is_empty() {
                        tokens.push(std::mem::take(&mut cur));
                    }
                    started = false;
                }
                (None, c) => {
                    cur.push(c);
                    started = true;
                }
            }
        }
        if quote.is_some() {
            return None;
        }
        if started || !cur.is_empty() {
            tokens.push(cur);
        }
        let mut tokens = tokens.into_iter();
        let base = tokens.next()?.to_ascii_lowercase();
        let mut cmd = CommandLine { base, ..CommandLine::default() };
        for t in tokens {
            let is_flag = t.len() > 1
                && t.starts_with('-')
                && t[1..].chars().next().is_some_and(|c| c.is_ascii_alphabetic() || c == '-');
            if is_flag {
                let body = t.trim_start_matches('-');
                match body.split_once('=') {
                    Some((k, v)) => cmd.flags.push((k.to_ascii_lowercase(), Some(v.to_owned()))),
                    None => cmd.flags.push((body.to_ascii_lowercase(), None)),
                }
            } else {
                cmd.args.push(t);
            }
        }
        Some(cmd)
    }

    pub(crate) fn flag(&self, name: &str) -> Option<&str> {
        self.flags.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_deref().unwrap_or(""))
    }

    pub(crate) fn has_flag(&self, name: &str) -> bool {
        self.flags.iter().any(|(k, _)| k == name)
    }

    /// `reg`'s sub-command (`query`, `set`, …), lower-cased.
    pub(crate) fn sub(&self) -> Option<String> {
        self.args.first().map(|s| s.to_ascii_lowercase())
    }
}

/// A library object a command uses, resolved by the console before the host runs it.
pub(crate) enum Library {
    None,
    /// `put`: the put-file's name and content.
    PutFile(String, Bytes),
    /// `runscript -CloudFile`: the script's content.
    Script(String),
}

/// One simulated host.
#[derive(Clone, Debug)]
pub(crate) struct Endpoint {
    pub(crate) os: Os,
    /// Normalised path (lower-cased on Windows) → node.
    pub(crate) files: BTreeMap<String, Node>,
    pub(crate) processes: Vec<Process>,
    /// Lower-cased canonical key → key (Windows only).
    pub(crate) registry: BTreeMap<String, RegKey>,
    next_pid: u32,
    now: u64,
}

impl Endpoint {
    /// A believable host of `os`, number `n` (1-based; varies pids a little), at `now` (epoch
    /// seconds).
    pub(crate) fn new(os: Os, hostname: &str, n: usize, now: u64) -> Self {
        let mut e = Endpoint {
            os,
            files: BTreeMap::new(),
            processes: Vec::new(),
            registry: BTreeMap::new(),
            next_pid: 9000 + (n as u32 % 50) * 8,
            now,
        };
        let boot = now.saturating_sub(86_400 * 3);
        let base = 400 + (n as u32 % 50) * 4;
        match os {
            Os::Windows => {
                for d in [
                    r"C:\",
                    r"C:\Windows",
                    r"C:\Windows\System32",
                    r"C:\Windows\System32\drivers\etc",
                    r"C:\Windows\System32\WindowsPowerShell\v1.0",
                    r"C:\Windows\Temp",
                    r"C:\Program Files\CrowdStrike",
                    r"C:\ProgramData",
                    r"C:\Users\Public\Documents",
                    r"C:\Users\analyst\Desktop",
                    r"C:\evidence",
                ] {
                    e.mkdir_all(d);
                }
                e.seed(r"C:\Windows\notepad.exe", &pe_bytes("notepad.exe"));
                e.seed(r"C:\Windows\System32\cmd.exe", &pe_bytes("cmd.exe"));
                e.seed(
                    r"C:\Windows\System32\WindowsPowerShell\v1.0\powershell.exe",
                    &pe_bytes("powershell.exe"),
                );
                e.seed(r"C:\Program Files\CrowdStrike\CSFalconService.exe", &pe_bytes("csfalcon"));
                e.seed(
                    r"C:\Windows\System32\drivers\etc\hosts",
                    b"# Copyright (c) 1993-2009 Microsoft Corp.\r\n127.0.0.1       localhost\r\n",
                );
                e.seed(
                    r"C:\Users\Public\Documents\report.txt",
                    format!("Quarterly report drafted on {hostname}.\r\n").as_bytes(),
                );
                e.seed(crate::NOTE_PATH_WINDOWS, NOTE_TXT);
                e.seed(UPDATER_EXE, &pe_bytes("updater.exe"));
                let sys = r"C:\Windows\System32";
                for (pid, ppid, name, path, critical) in [
                    (4, 0, "System", String::new(), true),
                    (base, 4, "smss.exe", format!(r"{sys}\smss.exe"), true),
                    (base + 88, base, "csrss.exe", format!(r"{sys}\csrss.exe"), true),
                    (base + 160, base, "wininit.exe", format!(r"{sys}\wininit.exe"), true),
                    (base + 232, base + 160, "services.exe", format!(r"{sys}\services.exe"), true),
                    (base + 248, base + 160, "lsass.exe", format!(r"{sys}\lsass.exe"), true),
                    (base + 612, base + 232, "svchost.exe", format!(r"{sys}\svchost.exe"), false),
                    (base + 880, base + 232, "svchost.exe", format!(r"{sys}\svchost.exe"), false),
                    (
                        2840 + base,
                        base + 232,
                        "CSFalconService.exe",
                        r"C:\Program Files\CrowdStrike\CSFalconService.exe".into(),
                        true,
                    ),
                    (4120 + base, 3988, "explorer.exe", r"C:\Windows\explorer.exe".into(), false),
                    (
                        5260 + base,
                        4120 + base,
                        "powershell.exe",
                        format!(r"{sys}\WindowsPowerShell\v1.0\powershell.exe"),
                        false,
                    ),
                    (
                        6144 + base,
                        4120 + base,
                        "notepad.exe",
                        r"C:\Windows\notepad.exe".into(),
                        false,
                    ),
                    (crate::UPDATER_PID, 4120 + base, "updater.exe", UPDATER_EXE.into(), false),
                ] {
                    let user = if critical || name == "svchost.exe" {
                        "NT AUTHORITY\\SYSTEM"
                    } else {
                        "CORP\\analyst"
                    };
                    e.processes.push(Process {
                        pid,
                        ppid,
                        name: name.into(),
                        user: user.into(),
                        path,
                        started: boot + u64::from(pid % 600),
                        critical,
                    });
                }
                e.reg_seed(
                    r"HKLM\SOFTWARE\Microsoft\Windows NT\CurrentVersion",
                    &[
                        ("ProductName", "REG_SZ", "Windows 10 Enterprise"),
                        ("CurrentBuild", "REG_SZ", "19045"),
                        ("InstallationType", "REG_SZ", "Client"),
                    ],
                );
                e.reg_seed(
                    r"HKLM\SOFTWARE\Microsoft\Windows\CurrentVersion\Run",
                    &[(
                        "SecurityHealth",
                        "REG_EXPAND_SZ",
                        r"%windir%\system32\SecurityHealthSystray.exe",
                    )],
                );
                e.reg_seed(
                    r"HKLM\SYSTEM\CurrentControlSet\Services\CSAgent",
                    &[("Start", "REG_DWORD", "0x1"), ("Type", "REG_DWORD", "0x2")],
                );
                e.reg_seed(r"HKCU\Software\Microsoft\Windows\CurrentVersion\Run", &[]);
            }
            Os::Linux | Os::Mac => {
                let mac = os == Os::Mac;
                let dirs: &[&str] = if mac {
                    &[
                        "/",
                        "/Applications",
                        "/Library",
                        "/System",
                        "/Users/analyst",
                        "/bin",
                        "/usr/bin",
                        "/private/tmp",
                        "/etc",
                    ]
                } else {
                    &[
                        "/",
                        "/bin",
                        "/usr/bin",
                        "/etc",
                        "/home/analyst",
                        "/root",
                        "/tmp",
                        "/var/log",
                        "/opt/CrowdStrike",
                    ]
                };
                for d in dirs {
                    e.mkdir_all(d);
                }
                e.mkdir_all("/var/tmp/evidence");
                e.seed(crate::NOTE_PATH_UNIX, NOTE_TXT);
                e.seed("/etc/hosts", b"127.0.0.1\tlocalhost\n::1\tlocalhost\n");
                e.seed(
                    "/etc/passwd",
                    b"root:x:0:0:root:/root:/bin/bash\nanalyst:x:1000:1000::/home/analyst:/bin/bash\n",
                );
                if mac {
                    e.seed("/bin/zsh", b"\xcf\xfa\xed\xfezsh");
                } else {
                    e.seed("/bin/bash", b"\x7fELFbash");
                    e.seed("/usr/bin/python3", b"\x7fELFpython3");
                    e.seed(
                        "/var/log/syslog",
                        format!("{hostname} systemd[1]: Started.\n").as_bytes(),
                    );
                }
                let procs: Vec<(u32, u32, &str, &str, &str, bool)> = if mac {
                    vec![
                        (1, 0, "root", "launchd", "/sbin/launchd", true),
                        (base, 1, "root", "falcond", "/Library/CS/falcond", true),
                        (
                            base + 96,
                            1,
                            "analyst",
                            "Finder",
                            "/System/Library/CoreServices/Finder.app/Contents/MacOS/Finder",
                            false,
                        ),
                        (base + 310, 1, "analyst", "zsh", "/bin/zsh -l", false),
                        (
                            base + 512,
                            1,
                            "analyst",
                            "Safari",
                            "/Applications/Safari.app/Contents/MacOS/Safari",
                            false,
                        ),
                    ]
                } else {
                    vec![
                        (1, 0, "root", "systemd", "/sbin/init splash", true),
                        (2, 0, "root", "kthreadd", "[kthreadd]", true),
                        (base, 1, "root", "falcon-sensor", "/opt/CrowdStrike/falcon-sensor", true),
                        (base + 40, 1, "root", "sshd", "/usr/sbin/sshd -D", false),
                        (base + 72, 1, "root", "cron", "/usr/sbin/cron -f", false),
                        (base + 300, base + 40, "analyst", "bash", "-bash", false),
                        (
                            base + 412,
                            base + 300,
                            "analyst",
                            "python3",
                            "/usr/bin/python3 /home/analyst/job.py",
                            false,
                        ),
                    ]
                };
                for (pid, ppid, user, name, path, critical) in procs {
                    e.processes.push(Process {
                        pid,
                        ppid,
                        name: name.into(),
                        user: user.into(),
                        path: path.into(),
                        started: boot + u64::from(pid % 600),
                        critical,
                    });
                }
            }
        }
        e
    }

    pub(crate) fn set_now(&mut self, now: u64) {
        self.now = now;
    }

    // ---- paths ----

    fn windows(&self) -> bool {
        self.os == Os::Windows
    }

    /// The absolute, normalised display path of `p` relative to `cwd` (`.`/`..` resolved).
    pub(crate) fn resolve(&self, cwd: &str, p: &str) -> String {
        if self.windows() {
            let p = p.replace('/', "\\");
            let abs = if p.len() >= 2 && p.as_bytes()[1] == b':' {
                p
            } else if let Some(rest) = p.strip_prefix('\\') {
                format!("{}{rest}", &cwd[..cwd.len().min(3)])
            } else {
                format!("{}\\{p}", cwd.trim_end_matches('\\'))
            };
            let (drive, rest) = abs.split_at(2.min(abs.len()));
            let mut parts: Vec<&str> = Vec::new();
            for seg in rest.split('\\') {
                match seg {
                    "" | "." => {}
                    ".." => {
                        parts.pop();
                    }
                    s => parts.push(s),
                }
            }
            format!("{}\\{}", drive.to_ascii_uppercase(), parts.join("\\"))
        } else {
            let abs = if p.starts_with('/') { p.to_owned() } else { format!("{cwd}/{p}") };
            let mut parts: Vec<&str> = Vec::new();
            for seg in abs.split('/') {
                match seg {
                    "" | "." => {}
                    ".." => {
                        parts.pop();
                    }
                    s => parts.push(s),
                }
            }
            format!("/{}", parts.join("/"))
        }
    }

    fn key(&self, path: &str) -> String {
        if self.windows() { path.to_lowercase() } else { path.to_owned() }
    }

    fn parent(&self, path: &str) -> Option<String> {
        let sep = if self.windows() { '\\' } else { '/' };
        let root = self.os.root();
        if path == root || (self.windows() && path.len() <= 3) {
            return None;
        }
        let i = path.rfind(sep)?;
        Some(if i < root.len() { path[..root.len()].to_owned() } else { path[..i].to_owned() })
    }

    pub(crate) fn basename(path: &str) -> &str {
        path.rsplit(['\\', '/']).find(|s| !s.is_empty()).unwrap_or(path)
    }

    fn join(&self, dir: &str, name: &str) -> String {
        let sep = if self.windows() { "\\" } else { "/" };
        format!("{}{sep}{name}", dir.trim_end_matches(['\\', '/']))
    }

    pub(crate) fn node(&self, path: &str) -> Option<&Node> {
        self.files.get(&self.key(path))
    }

    fn is_dir(&self, path: &str) -> bool {
        self.node(path).is_some_and(|n| n.dir)
    }

    fn mkdir_all(&mut self, path: &str) {
        let path = self.resolve(self.os.root(), path);
        let mut chain = vec![path.clone()];
        let mut cur = path;
        while let Some(p) = self.parent(&cur) {
            chain.push(p.clone());
            cur = p;
        }
        for p in chain.into_iter().rev() {
            let key = self.key(&p);
            let now = self.now;
            self.files.entry(key).or_insert(Node {
                path: p,
                dir: true,
                content: Bytes::new(),
                modified: now,
            });
        }
    }

    /// Writes a file (creating its parents); false when the host is full.
    pub(crate) fn write_file(&mut self, path: &str, content: Bytes) -> bool {
        let path = self.resolve(self.os.root(), path);
        let key = self.key(&path);
        if !self.files.contains_key(&key) && self.files.len() >= MAX_NODES {
            return false;
        }
        if let Some(parent) = self.parent(&path) {
            self.mkdir_all(&parent);
        }
        let now = self.now;
        self.files.insert(key, Node { path, dir: false, content, modified: now });
        true
    }

    fn seed(&mut self, path: &str, content: &[u8]) {
        self.write_file(path, Bytes::copy_from_slice(content));
    }

    fn not_found(&self, cmd: &str, path: &str) -> Outcome {
        if self.windows() {
            Outcome::err("The system cannot find the file specified.")
        } else {
            Outcome::err(format!("{cmd}: {path}: No such file or directory"))
        }
    }

    /// Children of a directory, sorted by name.
    fn children(&self, dir: &str) -> Vec<&Node> {
        let prefix = self.key(&self.join(dir, ""));
        self.files
            .range(prefix.clone()..)
            .take_while(|(k, _)| k.starts_with(&prefix))
            .filter(|(k, _)| k.len() > prefix.len() && !k[prefix.len()..].contains(['\\', '/']))
            .map(|(_, n)| n)
            .collect()
    }

    fn remove_tree(&mut self, path: &str) {
        let key = self.key(path);
        let prefix = self.key(&self.join(path, ""));
        self.files.retain(|k, _| *k != key && !k.starts_with(&prefix));
    }

    // ---- registry ----

    /// `HKEY_LOCAL_MACHINE\x` and `hklm\x` → `HKLM\x` (trailing backslashes dropped).
    pub(crate) fn canonical_key(key: &str) -> String {
        let key = key.trim().trim_end_matches('\\');
        let (hive, rest) = key.split_once('\\').unwrap_or((key, ""));
        let hive = match hive.to_ascii_uppercase().as_str() {
            "HKEY_LOCAL_MACHINE" | "HKLM" => "HKLM",
            "HKEY_CURRENT_USER" | "HKCU" => "HKCU",
            "HKEY_USERS" | "HKU" => "HKU",
            "HKEY_CLASSES_ROOT" | "HKCR" => "HKCR",
            "HKEY_CURRENT_CONFIG" | "HKCC" => "HKCC",
            _ => return key.to_owned(),
        };
        if rest.is_empty() { hive.to_owned() } else { format!("{hive}\\{rest}") }
    }

    fn reg_create(&mut self, key: &str) {
        let key = Self::canonical_key(key);
        let mut cur = String::new();
        for seg in key.split('\\') {
            if !cur.is_empty() {
                cur.push('\\');
            }
            cur.push_str(seg);
            self.registry
                .entry(cur.to_lowercase())
                .or_insert_with(|| RegKey { name: cur.clone(), values: BTreeMap::new() });
        }
    }

    fn reg_seed(&mut self, key: &str, values: &[(&str, &str, &str)]) {
        self.reg_create(key);
        if let Some(k) = self.registry.get_mut(&Self::canonical_key(key).to_lowercase()) {
            for (n, t, d) in values {
                k.values.insert(n.to_lowercase(), ((*n).into(), (*t).into(), (*d).into()));
            }
        }
    }

    pub(crate) fn reg_value(&self, key: &str, value: &str) -> Option<String> {
        let k = self.registry.get(&Self::canonical_key(key).to_lowercase())?;
        k.values.get(&value.to_lowercase()).map(|(_, _, d)| d.clone())
    }

    // ---- processes ----

    pub(crate) fn running(&self, pid: u32) -> bool {
        self.processes.iter().any(|p| p.pid == pid)
    }

    /// A killable process: the newest non-critical one.
    pub(crate) fn killable_pid(&self) -> u32 {
        self.processes.iter().rev().find(|p| !p.critical).map_or(0, |p| p.pid)
    }

    fn start_process(&mut self, path: &str, args: &str) -> u32 {
        self.next_pid += 4;
        let pid = self.next_pid;
        let name = Self::basename(path).to_owned();
        let user = if self.windows() { "NT AUTHORITY\\SYSTEM" } else { "root" };
        let shown = if args.is_empty() || self.windows() {
            path.to_owned()
        } else {
            format!("{path} {args}")
        };
        self.processes.push(Process {
            pid,
            ppid: self.processes.first().map_or(0, |p| p.pid),
            name,
            user: user.into(),
            path: shown,
            started: self.now,
            critical: false,
        });
        // A host cannot fill up with started processes.
        if self.processes.len() > 512
            && let Some(i) = self.processes.iter().position(|p| !p.critical)
        {
            self.processes.remove(i);
        }
        pid
    }

    // ---- commands ----

    /// Runs `cmd` in the session's working directory `cwd` (updated by `cd`). The tier and
    /// platform checks happened before (the console's, §6.1); `lib` is the library object the
    /// console resolved for `put` and `runscript -CloudFile`.
    pub(crate) fn run(&mut self, cmd: &CommandLine, cwd: &mut String, lib: Library) -> Outcome {
        let arg = |i: usize| cmd.args.get(i).map(String::as_str);
        match cmd.base.as_str() {
            "pwd" => Outcome::out(cwd.clone()),
            "cd" => {
                let Some(p) = arg(0) else { return Outcome::out(cwd.clone()) };
                let target = self.resolve(cwd, p);
                if self.is_dir(&target) {
                    let shown = self.node(&target).map_or(target.clone(), |n| n.path.clone());
                    *cwd = shown.clone();
                    Outcome::out(shown)
                } else {
                    self.not_found("cd", p)
                }
            }
            "ls" => self.ls(cwd, arg(0)),
            "cat" => match arg(0) {
                None => Outcome::err("cat: missing file operand"),
                Some(p) => match self.node(&self.resolve(cwd, p)) {
                    Some(n) if !n.dir => {
                        let end = n.content.len().min(CAT_MAX);
                        Outcome::out(String::from_utf8_lossy(&n.content[..end]).into_owned())
                    }
                    Some(_) if self.windows() => Outcome::err(format!(
                        "Access to the path '{}' is denied.",
                        self.resolve(cwd, p)
                    )),
                    Some(_) => Outcome::err(format!("cat: {p}: Is a directory")),
                    None => self.not_found("cat", p),
                },
            },
            "filehash" => match arg(0).map(|p| self.resolve(cwd, p)) {
                Some(path) => match self.node(&path) {
                    Some(n) if !n.dir => Outcome::out(format!(
                        "Path: {}\nSHA256: {}\n",
                        n.path,
                        hex::encode(sha2::Sha256::digest(&n.content))
                    )),
                    _ => self.not_found("filehash", arg(0).unwrap_or_default()),
                },
                None => Outcome::err("filehash: missing file operand"),
            },
            "ps" => Outcome::out(self.ps()),
            "kill" => {
                let Some(pid) = arg(0).and_then(|p| p.parse::<u32>().ok()) else {
                    return Outcome::err(format!(
                        "Cannot find a process with the process identifier {}.",
                        arg(0).unwrap_or_default()
                    ));
                };
                match self.processes.iter().position(|p| p.pid == pid) {
                    None => Outcome::err(format!(
                        "Cannot find a process with the process identifier {pid}."
                    )),
                    Some(i) if self.processes[i].critical => {
                        Outcome::err(format!("Cannot stop process {pid}: Access is denied."))
                    }
                    Some(i) => {
                        self.processes.remove(i);
                        Outcome::effect("kill", format!("Process {pid} killed"))
                    }
                }
            }
            "rm" => self.rm(cwd, cmd),
            "mkdir" => match arg(0) {
                None => Outcome::err("mkdir: missing operand"),
                Some(p) => {
                    let path = self.resolve(cwd, p);
                    if self.node(&path).is_some() {
                        if self.windows() {
                            Outcome::err(format!(
                                "An item with the specified name {path} already exists."
                            ))
                        } else {
                            Outcome::err(format!(
                                "mkdir: cannot create directory '{p}': File exists"
                            ))
                        }
                    } else if self.files.len() >= MAX_NODES {
                        Outcome::err("There is not enough space on the disk.")
                    } else {
                        self.mkdir_all(&path);
                        Outcome::effect("mkdir", path)
                    }
                }
            },
            "mv" | "cp" => self.mv_cp(cwd, cmd),
            "get" => match arg(0) {
                None => Outcome::err("get: missing file operand"),
                Some(p) => {
                    let path = self.resolve(cwd, p);
                    match self.node(&path) {
                        Some(n) if !n.dir => Outcome {
                            stdout: n.path.clone(),
                            fetched: Some((n.path.clone(), n.content.clone())),
                            ..Outcome::default()
                        },
                        Some(_) => Outcome::err(format!("get: {path} is a directory")),
                        None => self.not_found("get", p),
                    }
                }
            },
            "put" => {
                let Library::PutFile(name, content) = lib else {
                    return Outcome::err("put: missing file operand");
                };
                let dest = self.join(cwd, &name);
                if self.node(&dest).is_some() {
                    Outcome::err("put: Destination already exists.")
                } else if !self.write_file(&dest, content) {
                    Outcome::err("There is not enough space on the disk.")
                } else {
                    // A successful `put` prints nothing (KBN-EMU's sample).
                    Outcome::effect("put", "")
                }
            }
            "run" => {
                let Some(exe) = arg(0) else { return Outcome::err("run: missing executable") };
                let path = self.resolve(cwd, exe);
                if self.node(&path).is_none_or(|n| n.dir) {
                    return self.not_found("run", exe);
                }
                let args = cmd.flag("commandline").unwrap_or_default().to_owned();
                let pid = self.start_process(&path, &args);
                if cmd.has_flag("wait") {
                    self.processes.retain(|p| p.pid != pid);
                    Outcome::effect("run", format!("Process {pid} exited with code 0"))
                } else {
                    Outcome::effect("run", format!("Process started with PID {pid}"))
                }
            }
            "runscript" => self.runscript(cwd, cmd, lib),
            "reg" => self.reg(cmd),
            "memdump" => {
                let (Some(pid), Some(file)) = (arg(0).and_then(|p| p.parse::<u32>().ok()), arg(1))
                else {
                    return Outcome::err("memdump: usage: memdump <pid> <output file>");
                };
                if !self.running(pid) {
                    return Outcome::err(format!(
                        "Cannot find a process with the process identifier {pid}."
                    ));
                }
                let path = self.resolve(cwd, file);
                if self.write_file(&path, dump_bytes(&format!("memdump {pid}"))) {
                    Outcome::effect(
                        "memdump",
                        format!("Memory dump of process {pid} written to {path}"),
                    )
                } else {
                    Outcome::err("There is not enough space on the disk.")
                }
            }
            "xmemdump" => {
                let (Some(kind), Some(file)) = (arg(0), arg(1)) else {
                    return Outcome::err(
                        "xmemdump: usage: xmemdump complete|kerneldbg <output file>",
                    );
                };
                let kind = kind.to_ascii_lowercase();
                if kind != "complete" && kind != "kerneldbg" {
                    return Outcome::err(format!("xmemdump: unknown dump type {kind}"));
                }
                let path = self.resolve(cwd, file);
                if self.write_file(&path, dump_bytes(&format!("xmemdump {kind}"))) {
                    Outcome::effect("xmemdump", format!("Memory dump ({kind}) written to {path}"))
                } else {
                    Outcome::err("There is not enough space on the disk.")
                }
            }
            "zip" => {
                let (Some(src), Some(dst)) = (arg(0), arg(1)) else {
                    return Outcome::err("zip: usage: zip <source> <destination.zip>");
                };
                let src_path = self.resolve(cwd, src);
                let Some(n) = self.node(&src_path).cloned() else {
                    return self.not_found("zip", src);
                };
                let dst_path = self.resolve(cwd, dst);
                // A stand-in archive: the name and bytes of the source (not a real zip; nothing
                // in edrgate opens it).
                let mut body = format!("ZIPSIM {}\n", n.path).into_bytes();
                body.extend_from_slice(&n.content);
                if self.write_file(&dst_path, Bytes::from(body)) {
                    Outcome::effect("zip", dst_path)
                } else {
                    Outcome::err("There is not enough space on the disk.")
                }
            }
            "env" => Outcome::out(if self.windows() {
                "COMPUTERNAME=HOST\r\nOS=Windows_NT\r\nSystemRoot=C:\\Windows\r\nTEMP=C:\\Windows\\TEMP\r\n"
            } else {
                "HOME=/root\nPATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin\nSHELL=/bin/bash\n"
            }),
            "netstat" => Outcome::out(if self.windows() {
                concat!(
                    "Proto  Local Address          Foreign Address        State           PID\r\n",
                    "TCP    0.0.0.0:135            0.0.0.0:0              LISTENING       888\r\n",
                    "TCP    10.0.0.15:49712        52.1.1.1:443           ESTABLISHED     3240\r\n",
                )
            } else {
                concat!(
                    "Proto Recv-Q Send-Q Local Address           Foreign Address         State\n",
                    "tcp        0      0 0.0.0.0:22              0.0.0.0:*               LISTEN\n",
                )
            }),
            "ipconfig" => Outcome::out(
                "Windows IP Configuration\r\n\r\nEthernet adapter Ethernet0:\r\n   IPv4 Address. . . . . . . . . . . : 10.0.0.15\r\n",
            ),
            "ifconfig" => Outcome::out(
                "eth0: flags=4163<UP,BROADCAST,RUNNING,MULTICAST>  mtu 1500\n        inet 10.0.0.25  netmask 255.255.255.0\n",
            ),
            "getsid" => Outcome::out(
                "UserName  SID\r\nanalyst   S-1-5-21-1004336348-1177238915-682003330-1001\r\n",
            ),
            "users" => Outcome::out("analyst\n"),
            "mount" => Outcome::out(if self.windows() {
                "C:\\  NTFS\r\n"
            } else {
                "/dev/sda1 on / type ext4 (rw,relatime)\n"
            }),
            "eventlog" => match cmd.sub().as_deref() {
                Some("list") | None => Outcome::out("Application\r\nSecurity\r\nSystem\r\n"),
                Some("view") => {
                    Outcome::out("Index  TimeGenerated  EntryType  Source  Message\r\n")
                }
                Some(other) => Outcome::err(format!("eventlog {other}: not simulated")),
            },
            "history" => Outcome::out(""),
            "help" => {
                Outcome::out("Real Time Response: use 'help <command>' for a command's syntax.")
            }
            "clear" => Outcome::out(""),
            other => Outcome::err(format!("{other}: not simulated on this host")),
        }
    }

    fn ls(&self, cwd: &str, p: Option<&str>) -> Outcome {
        let target = p.map_or_else(|| cwd.to_owned(), |p| self.resolve(cwd, p));
        let Some(node) = self.node(&target) else {
            return self.not_found("ls", p.unwrap_or(cwd));
        };
        let entries: Vec<&Node> = if node.dir { self.children(&target) } else { vec![node] };
        if self.windows() {
            let mut rows = vec![[
                "Name".to_owned(),
                "Type".to_owned(),
                "Size (bytes)".to_owned(),
                "Size (MB)".to_owned(),
                "Last Modified (UTC-0)".to_owned(),
                "Created (UTC-0)".to_owned(),
            ]];
            for n in &entries {
                let name = Self::basename(&n.path).to_owned();
                let ty = if n.dir {
                    "<Directory>".to_owned()
                } else {
                    name.rfind('.')
                        .map_or_else(|| ".".to_owned(), |i| name[i..].to_ascii_lowercase())
                };
                // Directories show `--` in the size columns, times are PowerShell's US format
                // (XSOAR's recorded listing, `run_command_with_batch.json`).
                let size = if n.dir { "--".to_owned() } else { n.content.len().to_string() };
                let mb = if n.dir {
                    "--".to_owned()
                } else {
                    format!("{:.3}", n.content.len() as f64 / 1_048_576.0)
                };
                let t = us_time(n.modified);
                rows.push([name, ty, size, mb, t.clone(), t]);
            }
            let shown = node.path.clone();
            let mut out = format!("Directory listing for {shown} -\n\n");
            out.push_str(&table(&rows, true));
            Outcome::out(out)
        } else {
            let mut out = String::new();
            for n in entries {
                let (mode, size) =
                    if n.dir { ("drwxr-xr-x", 4096) } else { ("-rw-r--r--", n.content.len()) };
                out.push_str(&format!(
                    "{mode} 1 root root {size} {} {}\n",
                    ls_time(n.modified),
                    Self::basename(&n.path)
                ));
            }
            Outcome::out(out)
        }
    }

    fn ps(&self) -> String {
        if self.windows() {
            let mut rows = vec![[
                "Name".to_owned(),
                "Id".to_owned(),
                "Start Time (UTC-0)".to_owned(),
                "WorkingMemory(kb)".to_owned(),
                "CPU(s)".to_owned(),
                "HandleCount".to_owned(),
                "Path".to_owned(),
            ]];
            for p in &self.processes {
                rows.push([
                    p.name.trim_end_matches(".exe").to_owned(),
                    p.pid.to_string(),
                    us_time(p.started),
                    (2048 + (p.pid % 97) * 256).to_string(),
                    format!("{}.{:02}", p.pid % 40, p.pid % 100),
                    (100 + p.pid % 900).to_string(),
                    p.path.clone(),
                ]);
            }
            table(&rows, true)
        } else {
            let mut rows = vec![[
                "PID".to_owned(),
                "PPID".to_owned(),
                "USER".to_owned(),
                "COMMAND".to_owned(),
            ]];
            for p in &self.processes {
                rows.push([p.pid.to_string(), p.ppid.to_string(), p.user.clone(), p.path.clone()]);
            }
            table(&rows, false)
        }
    }

    fn rm(&mut self, cwd: &str, cmd: &CommandLine) -> Outcome {
        let Some(p) = cmd.args.first() else { return Outcome::err("rm: missing operand") };
        let path = self.resolve(cwd, p);
        let Some(n) = self.node(&path) else { return self.not_found("rm", p) };
        // `-Force` (FTK, XSOAR's `--force`) or Linux `-r`/`-rf` allow deleting a directory.
        let recursive = ["force", "r", "rf", "fr", "recurse"].iter().any(|f| cmd.has_flag(f));
        if n.dir && !recursive {
            return if self.windows() {
                Outcome::err(format!(
                    "rm: {path} is a directory; use -Force to remove a directory and its contents."
                ))
            } else {
                Outcome::err(format!("rm: cannot remove '{p}': Is a directory"))
            };
        }
        if path == self.os.root() {
            return Outcome::err("rm: refusing to remove the root directory");
        }
        self.remove_tree(&path);
        Outcome::effect("rm", path)
    }

    fn mv_cp(&mut self, cwd: &str, cmd: &CommandLine) -> Outcome {
        let op: &'static str = if cmd.base == "mv" { "mv" } else { "cp" };
        let (Some(src), Some(dst)) = (cmd.args.first(), cmd.args.get(1)) else {
            return Outcome::err(format!("{op}: missing destination file operand"));
        };
        let src_path = self.resolve(cwd, src);
        let Some(n) = self.node(&src_path).cloned() else { return self.not_found(op, src) };
        let mut dst_path = self.resolve(cwd, dst);
        if self.is_dir(&dst_path) {
            dst_path = self.join(&dst_path, Self::basename(&n.path));
        }
        if self.key(&dst_path) == self.key(&src_path) {
            return Outcome::err(format!("{op}: '{src}' and '{dst}' are the same file"));
        }
        // Copy the node and everything under it.
        let prefix = self.key(&self.join(&src_path, ""));
        let subtree: Vec<Node> = self
            .files
            .iter()
            .filter(|(k, _)| **k == self.key(&src_path) || k.starts_with(&prefix))
            .map(|(_, n)| n.clone())
            .collect();
        if self.files.len() + subtree.len() > MAX_NODES {
            return Outcome::err("There is not enough space on the disk.");
        }
        if let Some(parent) = self.parent(&dst_path) {
            self.mkdir_all(&parent);
        }
        if op == "mv" {
            self.remove_tree(&src_path);
        }
        for mut node in subtree {
            let tail = node.path[src_path.len()..].to_owned();
            node.path = format!("{dst_path}{tail}");
            let key = self.key(&node.path);
            self.files.insert(key, node);
        }
        Outcome::effect(op, dst_path)
    }

    /// `runscript`: the simulator is no shell, so scripts run through a tiny deterministic
    /// interpreter, enough for tests to see that a script ran and with which arguments:
    /// - `echo …`, `Write-Output …`, `Write-Host …` and `print …` print the rest of the line;
    /// - `Write-Error …` and `echo … >&2` print it to stderr;
    /// - `exit N` stops; a non-zero N adds `exit code N` to stderr;
    /// - in printed text, `$args` and `$@` become the whole `-CommandLine`, `$1`…`$9` and
    ///   `$args[0]`…`$args[8]` its space-separated words;
    /// - every other line is ignored (it "ran" without output).
    fn runscript(&mut self, cwd: &str, cmd: &CommandLine, lib: Library) -> Outcome {
        let script = if let Library::Script(s) = lib {
            s
        } else if let Some(raw) = cmd.flag("raw") {
            raw.to_owned()
        } else if let Some(p) = cmd.flag("hostpath") {
            let path = self.resolve(cwd, p);
            match self.node(&path) {
                Some(n) if !n.dir => String::from_utf8_lossy(&n.content).into_owned(),
                _ => return self.not_found("runscript", p),
            }
        } else {
            return Outcome::err("runscript: one of -CloudFile, -Raw or -HostPath is required");
        };
        let line = cmd.flag("commandline").unwrap_or_default().to_owned();
        let words: Vec<&str> = line.split_whitespace().collect();
        let expand = |text: &str| {
            let mut t = text.to_owned();
            for i in (0..9).rev() {
                let w = words.get(i).copied().unwrap_or_default();
                t = t.replace(&format!("$args[{i}]"), w).replace(&format!("${}", i + 1), w);
            }
            t.replace("$args", &line).replace("$@", &line)
        };
        let (mut out, mut err) = (String::new(), String::new());
        for l in script.lines().flat_map(|l| l.split(';')) {
            let l = l.trim();
            let (word, rest) = l.split_once(char::is_whitespace).unwrap_or((l, ""));
            let rest = rest.trim();
            let text = || expand(rest.trim_matches(|c| c == '"' || c == '\''));
            match word.to_ascii_lowercase().as_str() {
                "echo" if rest.ends_with(">&2") => {
                    let r = rest.trim_end_matches(">&2").trim();
                    err.push_str(&expand(r.trim_matches(|c| c == '"' || c == '\'')));
                    err.push('\n');
                }
                "echo" | "write-output" | "write-host" | "print" => {
                    out.push_str(&text());
                    out.push('\n');
                }
                "write-error" => {
                    err.push_str(&text());
                    err.push('\n');
                }
                "exit" => {
                    let code: i32 = rest.parse().unwrap_or(0);
                    if code != 0 {
                        err.push_str(&format!("exit code {code}\n"));
                    }
                    break;
                }
                _ => {}
            }
        }
        Outcome { stdout: out, stderr: err, effect: Some("runscript"), fetched: None }
    }

    fn reg(&mut self, cmd: &CommandLine) -> Outcome {
        const MISSING: &str = "The system was unable to find the specified registry key or value.";
        let sub = cmd.sub().unwrap_or_default();
        let key = cmd.args.get(1).map(|k| Self::canonical_key(k));
        let value = cmd.args.get(2).cloned();
        match sub.as_str() {
            "query" => {
                let Some(key) = key else {
                    return Outcome::out("HKCC\nHKCR\nHKCU\nHKLM\nHKU\n");
                };
                let Some(k) = self.registry.get(&key.to_lowercase()) else {
                    return Outcome::err(MISSING);
                };
                if let Some(v) = value {
                    return match k.values.get(&v.to_lowercase()) {
                        Some((n, t, d)) => Outcome::out(format!("{n}  {t}  {d}\n")),
                        None => Outcome::err(MISSING),
                    };
                }
                let mut out = format!("{}\n", k.name);
                let prefix = format!("{}\\", key.to_lowercase());
                for (lk, sk) in self.registry.range(prefix.clone()..) {
                    if !lk.starts_with(&prefix) {
                        break;
                    }
                    if !lk[prefix.len()..].contains('\\') {
                        out.push_str(Self::basename(&sk.name));
                        out.push('\n');
                    }
                }
                for (n, t, d) in k.values.values() {
                    out.push_str(&format!("{n}  {t}  {d}\n"));
                }
                Outcome::out(out)
            }
            "set" => {
                let Some(key) = key else { return Outcome::err("reg set: missing key") };
                if !key.contains('\\') {
                    return Outcome::err(MISSING);
                }
                self.reg_create(&key);
                if let Some(v) = value {
                    // [U] §13.11: `reg set` overwrites an existing value (the adapter reads first
                    // when it must not).
                    let ty = cmd.flag("valuetype").unwrap_or("REG_SZ").to_ascii_uppercase();
                    if ![
                        "REG_SZ",
                        "REG_EXPAND_SZ",
                        "REG_DWORD",
                        "REG_QWORD",
                        "REG_MULTI_SZ",
                        "REG_BINARY",
                    ]
                    .contains(&ty.as_str())
                    {
                        return Outcome::err(format!("reg set: invalid value type {ty}"));
                    }
                    let data = cmd.flag("value").unwrap_or_default().to_owned();
                    if let Some(k) = self.registry.get_mut(&key.to_lowercase()) {
                        k.values.insert(v.to_lowercase(), (v, ty, data));
                    }
                }
                Outcome::effect("reg set", "The operation completed successfully.")
            }
            "delete" => {
                let Some(key) = key else { return Outcome::err("reg delete: missing key") };
                let lk = key.to_lowercase();
                if !self.registry.contains_key(&lk) {
                    return Outcome::err(MISSING);
                }
                match value {
                    Some(v) => {
                        let removed = self
                            .registry
                            .get_mut(&lk)
                            .and_then(|k| k.values.remove(&v.to_lowercase()));
                        if removed.is_none() {
                            return Outcome::err(MISSING);
                        }
                    }
                    None => {
                        let prefix = format!("{lk}\\");
                        self.registry.retain(|k, _| *k != lk && !k.starts_with(&prefix));
                    }
                }
                Outcome::effect("reg delete", "The operation completed successfully.")
            }
            other => Outcome::err(format!("reg {other}: not simulated")),
        }
    }
}

/// Whitespace-aligned columns; the last one is not padded (it may contain spaces). With
/// `dashes`, a line of dashes under the header (PowerShell's table style).
fn table<const N: usize>(rows: &[[String; N]], dashes: bool) -> String {
    let mut widths = [0usize; N];
    for r in rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let line = |r: &[String; N]| {
        let mut s = String::new();
        for (i, c) in r.iter().enumerate() {
            if i + 1 == N {
                s.push_str(c);
            } else {
                s.push_str(&format!("{c:<w$}  ", w = widths[i]));
            }
        }
        s.trim_end().to_owned() + "\n"
    };
    let mut out = String::new();
    for (i, r) in rows.iter().enumerate() {
        out.push_str(&line(r));
        if i == 0 && dashes {
            let d: [String; N] = std::array::from_fn(|j| "-".repeat(r[j].chars().count()));
            out.push_str(&line(&d));
        }
    }
    out
}

/// `6/19/2023 4:11:43 PM`, as PowerShell prints a UTC time.
fn us_time(secs: u64) -> String {
    let t = crate::state::rfc3339_secs(secs);
    let num = |r: std::ops::Range<usize>| t.get(r).and_then(|v| v.parse::<u32>().ok()).unwrap_or(0);
    let (year, month, day) = (num(0..4), num(5..7), num(8..10));
    let (hour, minute, second) = (num(11..13), num(14..16), num(17..19));
    let (h12, half) = match hour {
        0 => (12, "AM"),
        1..=11 => (hour, "AM"),
        12 => (12, "PM"),
        h => (h - 12, "PM"),
    };
    format!("{month}/{day}/{year} {h12}:{minute:02}:{second:02} {half}")
}

fn ls_time(secs: u64) -> String {
    // `Jan 01 12:00`, from the RFC 3339 form.
    let t = crate::state::rfc3339_secs(secs);
    const MONTHS: [&str; 12] =
        ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"];
    let month: usize = t.get(5..7).and_then(|m| m.parse().ok()).unwrap_or(1);
    format!(
        "{} {} {}",
        MONTHS[month.clamp(1, 12) - 1],
        t.get(8..10).unwrap_or("01"),
        t.get(11..16).unwrap_or("00:00")
    )
}

/// A stand-in Windows executable: the `MZ` header and a name.
fn pe_bytes(name: &str) -> Vec<u8> {
    let mut b = b"MZ\x90\x00\x03\x00\x00\x00This program cannot be run in DOS mode.\r\n".to_vec();
    b.extend_from_slice(name.as_bytes());
    b
}

/// A stand-in minidump: the `MDMP` signature, then deterministic bytes.
fn dump_bytes(seed: &str) -> Bytes {
    let mut b = b"MDMP\x93\xa7\x00\x00".to_vec();
    let digest = sha2::Sha256::digest(seed.as_bytes());
    while b.len() < DUMP_BYTES {
        b.extend_from_slice(&digest);
    }
    Bytes::from(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_lines_split_on_spaces_outside_quotes_and_keep_raw_scripts_whole() {
        let c = CommandLine::parse(r#"rm 'C:\a b\c.txt' -Force"#).unwrap();
        assert_eq!(
            (c.base.as_str(), c.args.as_slice()),
            ("rm", [r"C:\a b\c.txt".to_owned()].as_slice())
        );
        assert!(c.has_flag("force"));
        let c = CommandLine::parse(
            "runscript -Raw=```echo a b\necho $1``` -CommandLine=\"x y\" -Timeout=30",
        )
        .unwrap();
        assert_eq!(c.flag("raw"), Some("echo a b\necho $1"));
        assert_eq!(c.flag("commandline"), Some("x y"));
        assert_eq!(c.flag("timeout"), Some("30"));
        assert!(CommandLine::parse("cat \"unterminated").is_none());
        assert!(CommandLine::parse("   ").is_none());
    }

    #[test]
    fn windows_paths_resolve_case_insensitively() {
        let mut e = Endpoint::new(Os::Windows, "W", 1, 1_700_000_000);
        let mut cwd = "C:\\".to_owned();
        let out = e.run(&CommandLine::parse("cd windows").unwrap(), &mut cwd, Library::None);
        assert_eq!((out.stdout.as_str(), cwd.as_str()), (r"C:\Windows", r"C:\Windows"));
        assert_eq!(e.resolve(&cwd, r"..\evidence\NOTE.txt"), r"C:\evidence\NOTE.txt");
        assert!(e.node(r"c:\EVIDENCE\note.txt").is_some());
        let out = e.run(&CommandLine::parse("ls C:\\evidence").unwrap(), &mut cwd, Library::None);
        assert!(
            out.stdout.starts_with("Directory listing for C:\\evidence -\n\nName"),
            "{}",
            out.stdout
        );
        assert!(out.stdout.contains("note.txt"));
    }

    #[test]
    fn times_print_as_powershell_does() {
        assert_eq!(us_time(1_687_190_703), "6/19/2023 4:05:03 PM");
        assert_eq!(us_time(1_700_000_000), "11/14/2023 10:13:20 PM");
        assert_eq!(us_time(1_699_920_000), "11/14/2023 12:00:00 AM");
    }

    #[test]
    fn reg_set_query_delete() {
        let mut e = Endpoint::new(Os::Windows, "W", 1, 1_700_000_000);
        let mut cwd = "C:\\".to_owned();
        let run = |e: &mut Endpoint, cwd: &mut String, l: &str| {
            e.run(&CommandLine::parse(l).unwrap(), cwd, Library::None)
        };
        let o = run(
            &mut e,
            &mut cwd,
            r"reg set HKEY_LOCAL_MACHINE\SOFTWARE\Edr Val -ValueType=REG_DWORD -Value=7",
        );
        assert_eq!(o.effect, Some("reg set"));
        assert_eq!(e.reg_value(r"HKLM\software\edr", "val").as_deref(), Some("7"));
        let o = run(&mut e, &mut cwd, r"reg query HKLM\SOFTWARE");
        assert!(o.stdout.lines().any(|l| l == "Edr"), "{}", o.stdout);
        let o = run(&mut e, &mut cwd, r"reg delete HKLM\SOFTWARE\Edr");
        assert_eq!(o.effect, Some("reg delete"));
        assert!(
            run(&mut e, &mut cwd, r"reg query HKLM\SOFTWARE\Edr").stderr.contains("unable to find")
        );
    }

    #[test]
    fn side_effects_change_the_host_and_name_their_op() {
        let mut e = Endpoint::new(Os::Linux, "L", 1, 1_700_000_000);
        let mut cwd = "/".to_owned();
        let mut run = |l: &str| e.run(&CommandLine::parse(l).unwrap(), &mut cwd, Library::None);
        assert_eq!(run("mkdir /tmp/a/b").effect, Some("mkdir"));
        assert_eq!(run("cp /var/tmp/evidence/note.txt /tmp/a").effect, Some("cp"));
        assert_eq!(run("mv /tmp/a/note.txt /tmp/a/b/n.txt").effect, Some("mv"));
        assert!(run("cat /tmp/a/note.txt").stderr.contains("No such file or directory"));
        assert_eq!(run("cat /tmp/a/b/n.txt").stdout.as_bytes(), NOTE_TXT);
        assert_eq!(run("zip /tmp/a /tmp/a.zip").effect, Some("zip"));
        let started = run("run /usr/bin/python3 -CommandLine=\"-V\"");
        assert_eq!(started.effect, Some("run"), "{}", started.stderr);
        assert!(started.stdout.starts_with("Process started with PID "));
        assert!(run("run /nope").stderr.contains("No such file or directory"));
        assert!(run("rm /tmp/a").stderr.contains("Is a directory"));
        assert_eq!(run("rm -r /tmp/a").effect, Some("rm"));
        let script =
            run("runscript -Raw=```echo one $1; Write-Error bad; exit 3``` -CommandLine=\"x\"");
        assert_eq!(
            (script.stdout.as_str(), script.stderr.as_str()),
            ("one x\n", "bad\nexit code 3\n")
        );
        let hosted = run("runscript -HostPath=/var/tmp/evidence/note.txt");
        assert_eq!((hosted.effect, hosted.stdout.as_str()), (Some("runscript"), ""));
        assert!(run("runscript -HostPath=/nope.sh").stderr.contains("No such file or directory"));
        let mut w = Endpoint::new(Os::Windows, "W", 1, 1_700_000_000);
        let mut cwd = "C:\\".to_owned();
        let dump = w.run(
            &CommandLine::parse(r"xmemdump complete C:\Windows\Temp\full.dmp").unwrap(),
            &mut cwd,
            Library::None,
        );
        assert_eq!(dump.effect, Some("xmemdump"));
        let got = w.run(
            &CommandLine::parse(r"get C:\Windows\Temp\full.dmp").unwrap(),
            &mut cwd,
            Library::None,
        );
        assert!(got.fetched.is_some_and(|(_, b)| b.starts_with(b"MDMP")));
        let ps = w.ps();
        assert!(ps.lines().nth(1).is_some_and(|l| l.starts_with("----")), "{ps}");
        assert!(ps.contains(r"C:\Program Files\CrowdStrike\CSFalconService.exe"));
    }
}
