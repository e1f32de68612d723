//! Every translation between Cybereason and the normalized model, in one place:
//!
//! - [`classify`]: HTTP failures → [`CrError`] (the only place HTTP statuses are read);
//! - [`STATUSES`]: the one status table — remediation `statusLog` words, sensor batch states
//!   (`globalStats.stats` keys and per-sensor IR tool statuses) and isolation results →
//!   [`Status`] and, for failures, [`ErrorCode`] (§7 of `shared/vendor-apis/cybereason.md`);
//! - [`REMEDIATION_ERRORS`]: remediation `error.errorType` → [`ErrorCode`];
//! - vendor objects (sensors, batches, IR status rows) → model types.

use std::time::Duration;

use edrgate_adapter::http;
use edrgate_adapter::{AdapterError, Device, ErrorCode, ErrorInfo, Status};
use reqwest::StatusCode;
use reqwest::header::HeaderMap;
use serde_json::Value;

use crate::wire::{self, Batch, Remediation, Sensor};

/// A failed vendor call, split by what the caller must do about it.
#[derive(Clone, Debug, thiserror::Error)]
pub(crate) enum CrError {
    /// The session is gone: a 302 to the login page or an HTML page on a `/rest/` call
    /// (§3.4, §8.2). The request did not run; the client logs in again.
    #[error("cybereason session lost")]
    SessionLost,
    /// Anything else, already in the normalized vocabulary.
    #[error(transparent)]
    Api(#[from] AdapterError),
}

impl CrError {
    pub(crate) fn is_retryable(&self) -> bool {
        matches!(self, CrError::Api(e) if e.is_retryable())
    }

    pub(crate) fn retry_after(&self) -> Option<Duration> {
        match self {
            CrError::Api(e) => e.retry_after,
            CrError::SessionLost => None,
        }
    }

    /// The normalized error, once logging in again did not help.
    pub(crate) fn into_adapter(self) -> AdapterError {
        match self {
            CrError::Api(e) => e,
            CrError::SessionLost => AdapterError::new(
                ErrorCode::VendorAuthFailed,
                "Cybereason ended the session again right after a fresh login",
            ),
        }
    }
}

/// The one function that turns a non-2xx answer into an error (§4).
pub(crate) fn classify(status: StatusCode, headers: &HeaderMap, body: &str) -> CrError {
    let text = body.trim();
    let snippet: String = text.chars().take(300).collect();
    let code = status.as_u16().to_string();
    match status {
        // An unauthenticated `/rest/` call is redirected to the login page (§8.2).
        s if s.is_redirection() => CrError::SessionLost,
        // A 401 also means the session is gone (consoles behind an SSO gateway or a newer API
        // front answer it instead of the redirect; Rapid7 reads it as an authentication
        // failure, C5, §4): the client logs in again once, and a 401 right after a fresh
        // login is reported as `vendor_auth_failed` (`CrError::into_adapter`).
        StatusCode::UNAUTHORIZED => CrError::SessionLost,
        // Missing role (C1, C5); the body is text.
        StatusCode::FORBIDDEN => CrError::Api(
            AdapterError::new(
                ErrorCode::VendorAuthFailed,
                "the Cybereason user lacks the role this request needs (see the backend's user roles)",
            )
            .with_vendor(code, snippet),
        ),
        // Old consoles answer 404 for endpoints newer than them (§4, §9).
        StatusCode::NOT_FOUND => CrError::Api(
            AdapterError::new(
                ErrorCode::VendorRejected,
                "the Cybereason console does not offer this request (older version?)",
            )
            .with_vendor(code, snippet),
        ),
        StatusCode::BAD_REQUEST if text.contains("UNKNOWN BATCH") => CrError::Api(
            AdapterError::new(ErrorCode::NotFound, "Cybereason does not know this batch")
                .with_vendor(code, snippet),
        ),
        _ => CrError::Api(http::status_error(status, headers, &snippet)),
    }
}

/// Whether a body is the HTML login page rather than an API answer (§3.1, §8.1).
pub(crate) fn is_login_page(body: &str) -> bool {
    wire::LOGIN_PAGE_MARKERS.iter().any(|m| body.contains(m))
}

/// Which vendor vocabulary a word belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Vocabulary {
    /// `statusLog[].status` of a remediation (§6.3).
    Remediation,
    /// Sensor batch states: `globalStats.stats` keys and per-sensor IR tool statuses (§6.5).
    Batch,
    /// Values of the isolation result map (§6.2).
    Isolation,
}

use ErrorCode as E;
use Status as S;
use Vocabulary::{Batch as B, Isolation as I, Remediation as R};

/// The one status table (§7). Failures carry the error code they report. Batch words are
/// compared case-insensitively: their casing changes with the server version (§6.5).
pub(crate) const STATUSES: &[(Vocabulary, &str, Status, Option<ErrorCode>)] = &[
    (R, "PENDING", S::Dispatched, None),
    (R, "IN_PROGRESS", S::Running, None),
    (R, "SUCCESS", S::Succeeded, None),
    (R, "FAILURE", S::Failed, Some(E::CommandFailed)),
    (I, "Succeeded", S::Succeeded, None),
    (B, "None", S::Dispatched, None),
    (B, "null", S::Dispatched, None),
    (B, "Pending", S::Dispatched, None),
    (B, "Primed", S::Dispatched, None),
    (B, "Started", S::Running, None),
    (B, "InProgress", S::Running, None),
    (B, "SendingPlatform", S::Running, None),
    (B, "SendingMsi", S::Running, None),
    (B, "ChunksRequired", S::Running, None),
    (B, "GettingChunks", S::Running, None),
    (B, "Aborting", S::Running, None),
    (B, "partialResponse", S::Running, None),
    (B, "Succeeded", S::Succeeded, None),
    (B, "AlreadyUpdated", S::Succeeded, None),
    (B, "NewerInstalled", S::Succeeded, None),
    (B, "Failed", S::Failed, Some(E::CommandFailed)),
    (B, "BadArgument", S::Failed, Some(E::VendorRejected)),
    (B, "InvalidState", S::Failed, Some(E::VendorRejected)),
    (B, "NotSupported", S::Failed, Some(E::VendorRejected)),
    (B, "UnknownProbe", S::Failed, Some(E::DeviceNotFound)),
    (B, "ProbeRemoved", S::Failed, Some(E::DeviceNotFound)),
    (B, "UnauthorizedUser", S::Failed, Some(E::VendorAuthFailed)),
    (B, "FailedSending", S::Failed, Some(E::CommandFailed)),
    (B, "FailedSendingToServer", S::Failed, Some(E::CommandFailed)),
    (B, "MsiSendFail", S::Failed, Some(E::CommandFailed)),
    (B, "MsiFileCorrupted", S::Failed, Some(E::CommandFailed)),
    (B, "Disconnected", S::Failed, Some(E::DeviceOffline)),
    (B, "EndedWithUnknownError", S::Failed, Some(E::CommandFailed)),
    (B, "EndedWithInvalidParam", S::Failed, Some(E::VendorRejected)),
    (B, "EndedWithUnsupportedFilter", S::Failed, Some(E::VendorRejected)),
    (B, "EndedWithNoValidFolder", S::Failed, Some(E::CommandFailed)),
    (B, "EndedWithYaraCompileError", S::Failed, Some(E::CommandFailed)),
    (B, "EndedWithTooManySearches", S::Failed, Some(E::CommandFailed)),
    (B, "EndedWithTooManyResults", S::Failed, Some(E::CommandFailed)),
    (B, "Timeout", S::TimedOut, Some(E::Timeout)),
    (B, "TimeoutSending", S::TimedOut, Some(E::Timeout)),
    (B, "EndedWithSensorTimeout", S::TimedOut, Some(E::Timeout)),
    (B, "AbortTimeout", S::TimedOut, Some(E::Timeout)),
    (B, "Aborted", S::Cancelled, Some(E::Cancelled)),
];

/// A word's status and failure code. Unknown words: remediation and batch words keep the work
/// running (until the action timeout) rather than guessing an outcome; an isolation word
/// other than `Succeeded` is a failure (§6.2: clients treat any other value as failure).
pub(crate) fn status_of(vocabulary: Vocabulary, word: &str) -> (Status, Option<ErrorCode>) {
    let word = word.trim();
    let found = STATUSES
        .iter()
        .find(|(v, w, _, _)| *v == vocabulary && w.eq_ignore_ascii_case(word))
        .map(|(_, _, s, e)| (*s, *e));
    match (found, vocabulary) {
        (Some(found), _) => found,
        (None, Vocabulary::Isolation) => (Status::Failed, Some(ErrorCode::CommandFailed)),
        (None, _) => (Status::Running, None),
    }
}

/// Remediation `error.errorType` values (§6.3). `INVALID_ARGUMENT` is what a target the
/// sensor cannot find produces; `MACHINE_NOT_CONNECTED` is the simulator's word for a kill on
/// an offline machine (the real one is not captured, §11).
pub(crate) const REMEDIATION_ERRORS: &[(&str, ErrorCode)] = &[
    ("INVALID_ARGUMENT", ErrorCode::NotFound),
    ("MACHINE_NOT_CONNECTED", ErrorCode::DeviceOffline),
    ("UNAUTHORIZED", ErrorCode::VendorAuthFailed),
];

/// The status of a remediation and, when it failed, its error. `None` while its `statusLog`
/// is empty: not reported yet, never success (§7).
pub(crate) fn remediation_status(r: &Remediation) -> Option<(Status, String, Option<ErrorInfo>)> {
    // Clients read the last entry (XSOAR, Splunk, §6.3).
    let last = r.status_log.last()?;
    let (status, code) = status_of(Vocabulary::Remediation, &last.status);
    let error = code.map(|code| {
        let (kind, message) = last
            .error
            .as_ref()
            .map(|e| {
                (e.error_type.clone().unwrap_or_default(), e.message.clone().unwrap_or_default())
            })
            .unwrap_or_default();
        let code = REMEDIATION_ERRORS
            .iter()
            .find(|(w, _)| w.eq_ignore_ascii_case(&kind))
            .map_or(code, |(_, c)| *c);
        ErrorInfo::new(code, format!("the remediation ended {}", last.status))
            .with_vendor(if kind.is_empty() { last.status.clone() } else { kind }, message)
    });
    Some((status, last.status.clone(), error))
}

/// The status of a batch from its counters and `finalState` (§6.5, §7), with the vendor
/// words of the non-zero counters (e.g. `Succeeded:1`).
pub(crate) fn batch_status(batch: &Batch) -> (Status, String, Option<ErrorInfo>) {
    let stats = batch.global_stats.clone().unwrap_or_default().stats;
    let live: Vec<(String, u64)> = stats
        .iter()
        .filter_map(|(k, v)| {
            let n = v.as_u64().or_else(|| v.as_str().and_then(|s| s.parse().ok()))?;
            (n > 0).then(|| (k.clone(), n))
        })
        .collect();
    let words = live.iter().map(|(k, n)| format!("{k}:{n}")).collect::<Vec<_>>().join(",");
    let mapped: Vec<(Status, Option<ErrorCode>, &str)> = live
        .iter()
        .map(|(k, _)| {
            let (s, e) = status_of(Vocabulary::Batch, k);
            (s, e, k.as_str())
        })
        .collect();
    if !batch.final_state {
        let running = mapped.iter().any(|(s, _, _)| *s == Status::Running || s.is_terminal());
        return (if running { Status::Running } else { Status::Dispatched }, words, None);
    }
    match mapped.iter().find(|(s, _, _)| *s != Status::Succeeded) {
        None if !mapped.is_empty() => (Status::Succeeded, words, None),
        None => (
            Status::Failed,
            words,
            Some(ErrorInfo::new(
                ErrorCode::CommandFailed,
                "the batch ended without a sensor result",
            )),
        ),
        Some((s, e, word)) => {
            let status = if s.is_terminal() { *s } else { Status::Failed };
            let code = e.unwrap_or(ErrorCode::CommandFailed);
            let info = ErrorInfo::new(code, format!("the sensor reported {word}"))
                .with_vendor(word.to_string(), String::new());
            (status, words, Some(info))
        }
    }
}

/// One per-sensor row of `getRunIRToolStatus` (D1: `Sensor`, `Status`, `Error`).
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct IrRow {
    pub(crate) sensor: String,
    pub(crate) status: String,
    pub(crate) error: Option<String>,
}

/// Reads the rows of a `getRunIRToolStatus` answer whatever its container and key casing
/// (undocumented, §6.6.1): a list of rows, or an object holding one (under any key).
pub(crate) fn ir_rows(body: &Value) -> Vec<IrRow> {
    fn field<'a>(row: &'a serde_json::Map<String, Value>, names: &[&str]) -> Option<&'a Value> {
        row.iter().find(|(k, _)| names.iter().any(|n| k.eq_ignore_ascii_case(n))).map(|(_, v)| v)
    }
    fn text(v: &Value) -> Option<String> {
        match v {
            Value::Null => None,
            Value::String(s) if s.is_empty() || s.eq_ignore_ascii_case("null") => None,
            Value::String(s) => Some(s.clone()),
            other => Some(other.to_string()),
        }
    }
    let rows: &[Value] = match body {
        Value::Array(rows) => rows,
        Value::Object(o) => o.values().find_map(Value::as_array).map_or(&[], Vec::as_slice),
        _ => &[],
    };
    rows.iter()
        .filter_map(Value::as_object)
        .filter_map(|row| {
            Some(IrRow {
                sensor: text(field(row, &["sensor", "sensorId", "sensorsId"])?)?,
                status: text(field(row, &["status"])?)?,
                error: field(row, &["error", "errorMessage"]).and_then(text),
            })
        })
        .collect()
}

/// The status of one IR row and, when it failed, its error.
pub(crate) fn ir_status(row: &IrRow) -> (Status, Option<ErrorInfo>) {
    let (status, code) = status_of(Vocabulary::Batch, &row.status);
    let error = code.map(|code| {
        ErrorInfo::new(code, format!("the IR tool ended {} on the sensor", row.status))
            .with_vendor(row.status.clone(), row.error.clone().unwrap_or_default())
    });
    (status, error)
}

/// A sensor as a device; its id is the `pylumId`, the identifier every action route keys on
/// directly or through the sensor query (§5).
pub(crate) fn device(backend: &str, s: Sensor) -> Device {
    Device {
        backend: backend.to_owned(),
        device_id: s.pylum_id,
        hostname: s.machine_name,
        online: s.status.eq_ignore_ascii_case("Online"),
        os: s.os_version_type.or(s.os_type),
        isolated: s.isolated,
        last_seen: s.last_pylum_update_timestamp_ms.and_then(rfc3339_ms),
        group: s.group_name,
        tags: Vec::new(),
    }
}

fn rfc3339_ms(ms: i64) -> Option<String> {
    let t = time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000).ok()?;
    t.format(&time::format_description::well_known::Rfc3339).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::SensorsPage;

    /// A recorded fixture's `body` (tests/fixtures, with provenance in each file).
    fn fixture(name: &str) -> Value {
        let path = format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"));
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
        let v: Value = serde_json::from_str(&text).unwrap();
        v["body"].clone()
    }

    #[test]
    fn every_vocabulary_word_maps_once() {
        for (i, (v, w, s, e)) in STATUSES.iter().enumerate() {
            assert_eq!(
                STATUSES
                    .iter()
                    .filter(|(v2, w2, _, _)| v2 == v && w2.eq_ignore_ascii_case(w))
                    .count(),
                1,
                "{w} listed twice"
            );
            assert_eq!(
                s == &Status::Failed || s == &Status::TimedOut || s == &Status::Cancelled,
                e.is_some(),
                "row {i}"
            );
        }
    }

    #[test]
    fn statuses_table() {
        let table = [
            (R, "PENDING", S::Dispatched),
            (R, "in_progress", S::Running),
            (R, "SUCCESS", S::Succeeded),
            (R, "FAILURE", S::Failed),
            (R, "SOMETHING_NEW", S::Running),
            (B, "succeeded", S::Succeeded),
            (B, "SUCCEEDED", S::Succeeded),
            (B, "inProgress", S::Running),
            (B, "disconnected", S::Failed),
            (B, "aborted", S::Cancelled),
            (B, "endedWithSensorTimeout", S::TimedOut),
            (I, "Succeeded", S::Succeeded),
            (I, "Failed", S::Failed),
            (I, "", S::Failed),
        ];
        for (v, word, expected) in table {
            assert_eq!(status_of(v, word).0, expected, "{v:?} {word}");
        }
    }

    #[test]
    fn remediation_fixture_failure_keeps_the_vendor_words() {
        let r: Remediation =
            serde_json::from_value(fixture("POST_rest_remediate__failure-INVALID_ARGUMENT.json"))
                .unwrap();
        let (status, word, error) = remediation_status(&r).unwrap();
        assert_eq!((status, word.as_str()), (Status::Failed, "FAILURE"));
        let error = error.unwrap();
        assert_eq!(error.code, ErrorCode::NotFound);
        assert_eq!(error.vendor_code.as_deref(), Some("INVALID_ARGUMENT"));
        assert!(error.vendor_message.unwrap().contains("ProbeRemediationRequest"));

        let mut empty = r.clone();
        empty.status_log.clear();
        assert!(remediation_status(&empty).is_none(), "an empty statusLog is not a verdict");
    }

    #[test]
    fn batch_fixtures_map_by_counters_and_final_state() {
        let batches: Vec<Batch> =
            serde_json::from_value(fixture("GET_rest_sensors_allActions.TRUNCATED.json")).unwrap();
        // (batchId, status): AlreadyUpdated counts as success, Succeeded too.
        let expected =
            [(1730128602, S::Succeeded), (-1452566856, S::Succeeded), (171716593, S::Succeeded)];
        for (id, status) in expected {
            let b = batches.iter().find(|b| b.batch_id == id).unwrap();
            assert!(b.final_state);
            assert_eq!(batch_status(b).0, status, "{id}");
        }
        let restart = batches.iter().find(|b| b.batch_id == -1452566856).unwrap();
        assert_eq!(batch_status(restart).1, "Succeeded:1");

        // camelCase keys (Rapid7's capture, §6.5), a failure and an unfinished batch.
        let mut camel = restart.clone();
        camel.global_stats = Some(wire::GlobalStats {
            stats: [("failed".to_owned(), Value::from(1)), ("succeeded".into(), 0.into())].into(),
        });
        let (status, words, error) = batch_status(&camel);
        assert_eq!((status, words.as_str()), (S::Failed, "failed:1"));
        assert_eq!(error.unwrap().vendor_code.as_deref(), Some("failed"));
        camel.final_state = false;
        camel.global_stats =
            Some(wire::GlobalStats { stats: [("pending".to_owned(), 1.into())].into() });
        assert_eq!(batch_status(&camel).0, S::Dispatched);
    }

    #[test]
    fn sensor_fixture_becomes_a_device() {
        let page: SensorsPage =
            serde_json::from_value(fixture("POST_rest_sensors_query__by-machineName.json"))
                .unwrap();
        assert!(!page.has_more_results, "\"false\" as a string");
        let s = page.sensors[0].clone();
        assert_eq!(s.guid, "-1845090846.1198775089551518743");
        assert!(s.sensor_id.ends_with(&s.pylum_id));
        let d = device("cr", s);
        assert_eq!(d.device_id, "PYLUMCLIENT_INTEGRATION_DESKTOP-VG9KE2U_0800273ADC2F");
        assert_eq!(
            (d.hostname.as_str(), d.online, d.isolated),
            ("desktop-vg9ke2u", false, Some(false))
        );
        assert_eq!(d.os.as_deref(), Some("Windows_10"));
        assert!(d.last_seen.unwrap().starts_with("2022-07-29"));
        assert_eq!(d.group.as_deref(), Some("Perimeter 1"));
    }

    #[test]
    fn isolation_fixture_reads_per_id() {
        let map: std::collections::BTreeMap<String, String> =
            serde_json::from_value(fixture("POST_rest_monitor_global_commands_isolate.json"))
                .unwrap();
        let (id, word) = map.iter().next().unwrap();
        assert!(id.starts_with("PYLUMCLIENT_"));
        assert_eq!(status_of(Vocabulary::Isolation, word).0, Status::Succeeded);
    }

    #[test]
    fn fetch_start_fixture_is_a_success_envelope() {
        let e: wire::Envelope =
            serde_json::from_value(fixture("POST_rest_fetchfile_start.json")).unwrap();
        assert_eq!((e.status.as_str(), e.data.as_str()), ("SUCCESS", Some("true")));
    }

    #[test]
    fn login_failure_fixture_is_recognised() {
        let page = fixture("sekoia_POST_login.html__login-failed.json");
        assert!(is_login_page(page.as_str().unwrap()));
        assert!(!is_login_page("{\"sensors\": []}"));
    }

    #[test]
    fn ir_rows_in_either_shape_and_casing() {
        let pascal = serde_json::json!([
            {"Sensor": "srv:P1", "Status": "Succeeded", "Error": null},
            {"Sensor": "srv:P2", "Status": "Failed", "Error": "exit code 3"},
        ]);
        let camel = serde_json::json!({"rows": [{"sensorId": "srv:P1", "status": "inProgress"}]});
        let rows = ir_rows(&pascal);
        assert_eq!(rows.len(), 2);
        assert_eq!(ir_status(&rows[0]), (Status::Succeeded, None));
        let (s, e) = ir_status(&rows[1]);
        assert_eq!(s, Status::Failed);
        assert_eq!(e.unwrap().vendor_message.as_deref(), Some("exit code 3"));
        let rows = ir_rows(&camel);
        assert_eq!((rows[0].sensor.as_str(), ir_status(&rows[0]).0), ("srv:P1", Status::Running));
    }

    #[test]
    fn classify_reads_redirects_roles_and_batches() {
        let h = HeaderMap::new();
        assert!(matches!(classify(StatusCode::FOUND, &h, ""), CrError::SessionLost));
        assert!(matches!(classify(StatusCode::UNAUTHORIZED, &h, ""), CrError::SessionLost));
        let e = classify(StatusCode::FORBIDDEN, &h, "Forbidden").into_adapter();
        assert_eq!(e.code(), ErrorCode::VendorAuthFailed);
        let e = classify(StatusCode::BAD_REQUEST, &h, "UNKNOWN BATCH").into_adapter();
        assert_eq!(e.code(), ErrorCode::NotFound);
        assert!(classify(StatusCode::TOO_MANY_REQUESTS, &h, "").is_retryable());
    }
}
