//! One simulated machine behind a sensor: processes, files and registry keys, each with the
//! element GUID Cybereason gives it (§5: `<machine prefix>.<signed 64-bit>`), so remediation
//! targets and visual-search results look like the real thing.

use std::collections::BTreeMap;

use crate::api::actions;

/// Content of `C:\evidence\note.txt` on every machine.
pub const NOTE_TXT: &[u8] = b"Cybereason simulator evidence file.\r\nCollected by edrgate.\r\n";

/// A process instance as the console keeps it: an element per run, so a pid the OS reused is
/// several elements, the ended ones with an `endTime` (stix-shifter's process capture carries
/// `endTime` beside `applicablePid`, `shared/fixtures/cybereason/
/// stixshifter_POST_rest_visualsearch_query_simple__process.json`).
#[derive(Clone, Debug)]
pub(crate) struct Process {
    pub(crate) pid: u64,
    pub(crate) parent_pid: Option<u64>,
    pub(crate) name: String,
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
}

#[derive(Clone, Debug)]
pub(crate) struct Endpoint {
    /// The machine GUID's first half, shared by every element GUID of the machine.
    pub(crate) prefix: i64,
    /// Live processes.
    pub(crate) processes: Vec<Process>,
    /// Ended process instances (the console keeps them, with `endTime`): earlier runs whose
    /// pids live processes reuse, and killed processes.
    pub(crate) ended: Vec<Process>,
    /// Processes started since boot, for fresh element GUIDs.
    pub(crate) started: u64,
    /// By lower-case path.
    pub(crate) files: BTreeMap<String, File>,
    /// Lower-case key path → element GUID.
    pub(crate) registry: BTreeMap<String, String>,
    /// Files moved to the quarantine folder by `QUARANTINE_FILE`.
    pub(crate) quarantine: Vec<File>,
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

impl Endpoint {
    pub(crate) fn new(hostname: &str, prefix: i64) -> Self {
        let guid = |what: &str| format!("{prefix}.{}", hash64(&format!("{hostname}/{what}")));
        // Booted an hour ago; the user session 50 minutes ago.
        let boot = crate::state::epoch_ms() - 3_600_000;
        let processes = [
            (4, None, "System", "System", "NT AUTHORITY\\SYSTEM"),
            (368, Some(4), "smss.exe", "\\SystemRoot\\System32\\smss.exe", "NT AUTHORITY\\SYSTEM"),
            (612, Some(368), "winlogon.exe", "winlogon.exe", "NT AUTHORITY\\SYSTEM"),
            (
                1024,
                Some(612),
                "svchost.exe",
                "C:\\WINDOWS\\system32\\svchost.exe -k LocalService -s W32Time",
                "NT AUTHORITY\\LOCAL SERVICE",
            ),
            (2480, Some(612), "explorer.exe", "C:\\WINDOWS\\Explorer.EXE", "CORP\\jdoe"),
            (
                4242,
                Some(2480),
                "notepad.exe",
                "\"C:\\WINDOWS\\system32\\notepad.exe\" C:\\evidence\\note.txt",
                "CORP\\jdoe",
            ),
            (
                3012,
                Some(2480),
                "updater.exe",
                "\"C:\\Users\\jdoe\\AppData\\Local\\Temp\\updater.exe\" --silent --beacon 300",
                "CORP\\jdoe",
            ),
        ]
        .into_iter()
        .enumerate()
        .map(|(i, (pid, parent_pid, name, cl, user))| Process {
            pid,
            parent_pid,
            name: name.into(),
            command_line: cl.into(),
            guid: guid(&format!("process/{pid}")),
            user: user.into(),
            created_ms: boot + i64::try_from(i).unwrap_or(0) * 60_000,
            ended_ms: None,
        })
        .collect();
        // Earlier runs whose pids the live notepad and updater reuse: the console still lists
        // them, ended (pids are reused on Windows; Process elements are per run).
        let ended = [
            (4242, "cmd.exe", "C:\\WINDOWS\\system32\\cmd.exe /c whoami"),
            (3012, "powershell.exe", "powershell.exe -NoProfile -Command Get-Date"),
        ]
        .into_iter()
        .map(|(pid, name, cl)| Process {
            pid,
            parent_pid: Some(2480),
            name: name.into(),
            command_line: cl.into(),
            guid: guid(&format!("process/{pid}/ended")),
            user: "CORP\\jdoe".into(),
            created_ms: boot + 600_000,
            ended_ms: Some(boot + 660_000),
        })
        .collect();
        let mut files = BTreeMap::new();
        let dropper: Vec<u8> = b"MZ\x90\x00simulated dropper "
            .iter()
            .copied()
            .chain(hostname.bytes())
            .chain((0..=255u8).cycle().take(64 * 1024))
            .collect();
        for (path, content) in [
            ("C:\\evidence\\note.txt", NOTE_TXT.to_vec()),
            ("C:\\Users\\jdoe\\AppData\\Local\\Temp\\updater.exe", dropper),
            ("C:\\Windows\\System32\\drivers\\etc\\hosts", b"127.0.0.1 localhost\r\n".to_vec()),
        ] {
            let lower = path.to_lowercase();
            files.insert(
                lower.clone(),
                File { guid: guid(&format!("file/{lower}")), path: lower, content },
            );
        }
        let registry = [
            "HKLM\\SOFTWARE\\Microsoft\\Windows\\CurrentVersion\\Run\\Updater",
            "HKCU\\Software\\Updater",
            "HKLM\\SOFTWARE\\Microsoft\\Windows\\CurrentVersion\\RunOnce",
            "HKLM\\SOFTWARE\\Microsoft\\Windows NT\\CurrentVersion",
        ]
        .into_iter()
        .map(|k| {
            let lower = k.to_lowercase();
            let g = guid(&format!("registry/{lower}"));
            (lower, g)
        })
        .collect();
        Endpoint { prefix, processes, ended, started: 0, files, registry, quarantine: Vec::new() }
    }

    /// Starts a process (parent: explorer) and returns its element GUID.
    pub(crate) fn start_process(&mut self, hostname: &str, pid: u64, name: &str) -> String {
        self.started += 1;
        let guid = format!(
            "{}.{}",
            self.prefix,
            hash64(&format!("{hostname}/process/{pid}/started/{}", self.started))
        );
        self.processes.push(Process {
            pid,
            parent_pid: Some(2480),
            name: name.into(),
            command_line: name.into(),
            guid: guid.clone(),
            user: "CORP\\jdoe".into(),
            created_ms: crate::state::epoch_ms(),
            ended_ms: None,
        });
        guid
    }

    pub(crate) fn machine_guid(&self, hostname: &str) -> String {
        format!("{}.{}", self.prefix, hash64(&format!("machine/{hostname}")))
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
                let key = self
                    .files
                    .iter()
                    .find(|(_, f)| f.guid == target)
                    .map(|(k, _)| k.clone())
                    .ok_or_else(invalid)?;
                if let Some(f) = self.files.remove(&key) {
                    self.quarantine.push(f);
                }
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
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remediations_change_the_endpoint_once() {
        let mut e = Endpoint::new("CR-WS-0001", -1845090846);
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
}
