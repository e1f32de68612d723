//! edrgate's own helper-script protocol for Defender for Endpoint: **edrgate's format, not
//! Microsoft's, shared on purpose by the adapter (`edrgate-defender`) and the simulator
//! (`edrgate-defender-sim`)**.
//!
//! Defender's live response has no primitive for most of edrgate's commands, so edrgate ships
//! PowerShell helpers (`adapters/defender/scripts/*.ps1`), uploads them to the tenant's
//! live-response library under content-versioned names and runs them with `RunScript`. What a
//! helper prints is defined here, once:
//!
//! - [`Helper`]: the helpers, their sources and library names
//!   (`edrgate-<name>-<sha256[..12]>.ps1`);
//! - [`HELPER_MARKER`]: the line prefix after which a helper prints its result, as one line of
//!   JSON ([`HelperOutput`], with [`HelperProcess`], [`HelperEntry`], [`HelperRegValue`]);
//! - [`PUTFILE_DIR`]: where edrgate expects `PutFile` to drop a library file (the `file`
//!   helper's `place` moves it from there).
//!
//! The helpers' *parameters* (`-p <base64 JSON>`) are not typed here: the scripts define them,
//! the adapter builds them and the simulator reads them the way the scripts do, so a mismatch
//! between adapter and scripts still fails a test. Nothing here knows Defender's own JSON.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};

/// The line prefix after which a helper script prints its JSON result, so transcript banners
/// and other output around it do not matter.
pub const HELPER_MARKER: &str = "EDRGATE-RESULT:";

/// Where edrgate expects `PutFile` to drop a library file on a Windows device: the sensor's
/// "Downloads" working folder. Defender's reference only says "a working folder"
/// (shared/vendor-apis/defender.md §3.1; run-live-response.md), so this is edrgate's
/// assumption, used by the adapter for the `file` helper's `place` source.
pub const PUTFILE_DIR: &str =
    r"C:\ProgramData\Microsoft\Windows Defender Advanced Threat Protection\Downloads";

/// edrgate's helper scripts, shipped with the adapter and uploaded to the tenant's library on
/// first use under a content-versioned name (`edrgate-<name>-<sha256[..12]>.ps1`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Helper {
    ProcessList,
    ListDirectory,
    KillProcess,
    Execute,
    Registry,
    File,
}

impl Helper {
    pub const ALL: [Helper; 6] = [
        Helper::ProcessList,
        Helper::ListDirectory,
        Helper::KillProcess,
        Helper::Execute,
        Helper::Registry,
        Helper::File,
    ];

    /// The helper's short name (`process_list`).
    pub fn name(self) -> &'static str {
        match self {
            Helper::ProcessList => "process_list",
            Helper::ListDirectory => "list_directory",
            Helper::KillProcess => "kill_process",
            Helper::Execute => "execute",
            Helper::Registry => "registry",
            Helper::File => "file",
        }
    }

    /// The PowerShell source edrgate uploads.
    pub fn source(self) -> &'static str {
        match self {
            Helper::ProcessList => include_str!("../../scripts/process_list.ps1"),
            Helper::ListDirectory => include_str!("../../scripts/list_directory.ps1"),
            Helper::KillProcess => include_str!("../../scripts/kill_process.ps1"),
            Helper::Execute => include_str!("../../scripts/execute.ps1"),
            Helper::Registry => include_str!("../../scripts/registry.ps1"),
            Helper::File => include_str!("../../scripts/file.ps1"),
        }
    }

    /// The library name: a new script version gets a new name, so an old upload is never
    /// mistaken for it and nothing is overwritten.
    pub fn library_name(self) -> String {
        let hash = hex::encode(Sha256::digest(self.source().as_bytes()));
        format!("edrgate-{}-{}.ps1", self.name(), &hash[..12])
    }

    /// Which helper a library name belongs to.
    pub fn from_library_name(name: &str) -> Option<Helper> {
        Helper::ALL.into_iter().find(|h| h.library_name().eq_ignore_ascii_case(name))
    }

    /// Whether `name` is another content version of this helper in edrgate's own naming
    /// pattern (`edrgate-<name>-<12 hex>.ps1`, case-insensitive): a superseded upload edrgate
    /// may delete. Never true for the current name or for any other file.
    pub fn is_superseded_name(self, name: &str) -> bool {
        let lower = name.to_ascii_lowercase();
        let Some(rest) = lower.strip_prefix(&format!("edrgate-{}-", self.name())) else {
            return false;
        };
        let Some(hash) = rest.strip_suffix(".ps1") else { return false };
        hash.len() == 12
            && hash.bytes().all(|b| b.is_ascii_hexdigit())
            && !self.library_name().eq_ignore_ascii_case(name)
    }

    /// Which helper a script's content is (byte for byte), whatever name it was stored under.
    pub fn from_source(content: &[u8]) -> Option<Helper> {
        Helper::ALL.into_iter().find(|h| h.source().as_bytes() == content)
    }
}

/// What a helper prints after [`HELPER_MARKER`]: one line of JSON. `ok: false` carries an
/// `error` word (`file_not_found`, `not_found`, `access_denied`, `conflict`,
/// `invalid_request`, `command_failed`), a `message` and, where Windows gave one, an
/// `hresult` (`0x80070002`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct HelperOutput {
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hresult: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub processes: Option<Vec<HelperProcess>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entries: Option<Vec<HelperEntry>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sub_keys: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub values: Option<Vec<HelperRegValue>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<HelperRegValue>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<String>,
}

/// One process of `process_list`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct HelperProcess {
    pub pid: u64,
    #[serde(default)]
    pub ppid: Option<u64>,
    pub name: String,
    #[serde(default)]
    pub path: Option<String>,
    #[serde(default)]
    pub command_line: Option<String>,
    #[serde(default)]
    pub user: Option<String>,
    #[serde(default)]
    pub sid: Option<String>,
    /// Unix seconds.
    #[serde(default)]
    pub started: Option<i64>,
}

/// One entry of `list_directory`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct HelperEntry {
    pub name: String,
    pub dir: bool,
    #[serde(default)]
    pub size: u64,
    #[serde(default)]
    pub attrs: Vec<String>,
    /// Unix seconds.
    #[serde(default)]
    pub created: Option<i64>,
    #[serde(default)]
    pub modified: Option<i64>,
    #[serde(default)]
    pub accessed: Option<i64>,
}

/// A registry value of `registry` (`list`, `get`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HelperRegValue {
    pub name: String,
    /// `REG_SZ`, `REG_DWORD`, …
    #[serde(rename = "type")]
    pub kind: String,
    pub data: Value,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn helper_names_are_versioned_and_recognised() {
        for h in Helper::ALL {
            let name = h.library_name();
            // The library's name charset (defender.md §8.1).
            assert!(
                name.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b)),
                "{name}"
            );
            assert_eq!(Helper::from_library_name(&name), Some(h));
            assert_eq!(Helper::from_source(h.source().as_bytes()), Some(h));
        }
        assert_eq!(Helper::from_library_name("edrgate-process_list-000000000000.ps1"), None);
        assert_eq!(Helper::from_source(b"Write-Output hi"), None);
    }

    #[test]
    fn only_other_versions_of_the_same_helper_are_superseded() {
        let h = Helper::File;
        assert!(h.is_superseded_name("edrgate-file-0123456789ab.ps1"));
        assert!(h.is_superseded_name("EDRGATE-file-0123456789AB.ps1"));
        for name in [
            h.library_name(),
            "edrgate-file-0123456789abcdef0123456789abcdef01234567.bin".into(),
            "edrgate-file-0123456789a.ps1".into(),
            "edrgate-file-0123456789xy.ps1".into(),
            "edrgate-process_list-0123456789ab.ps1".into(),
            "my-edrgate-file-0123456789ab.ps1".into(),
            "collect.ps1".into(),
        ] {
            assert!(!h.is_superseded_name(&name), "{name}");
        }
    }

    #[test]
    fn every_script_prints_the_marker() {
        for h in Helper::ALL {
            assert!(h.source().contains(HELPER_MARKER), "{}", h.name());
        }
    }

    #[test]
    fn output_lines_round_trip_without_empty_fields() {
        let out = HelperOutput { ok: true, pid: Some(7), ..HelperOutput::default() };
        let line = serde_json::to_string(&out).unwrap();
        assert_eq!(line, r#"{"ok":true,"pid":7}"#);
        assert_eq!(serde_json::from_str::<HelperOutput>(&line).unwrap(), out);
    }
}
