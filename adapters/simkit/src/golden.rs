//! Golden conformance: a simulator's answers against the vendor captures, by shape.
//!
//! Each vendor folder `adapters/<vendor>/tests/fixtures/` holds captures in the format of
//! `shared/fixtures/README.md`: `request` (`method`, `path`, maybe `body`/`query`), `status`,
//! `headers`, `body`. A simulator's `tests/golden.rs` replays the requests (with the setup a
//! capture needs: a session or action created first and its id substituted) and compares the
//! answer with the capture here:
//!
//! - **status**: equal when the capture recorded one;
//! - **media type** of `Content-Type` (parameters aside): equal when the capture recorded it;
//! - **body shape**, recursively: an object has the same keys (a key that differs only in case
//!   is reported as a casing difference), every value the same JSON type (null, boolean,
//!   integer, float, string, array, object), arrays compared by their first element's shape.
//!
//! The rules where a shape cannot be read off the capture are explicit, never silent:
//! - a `null` in the capture says "nullable", not which type: any value matches it (a `null`
//!   from the simulator where the capture has a value is a difference);
//! - an array empty on either side cannot be compared: a difference unless the test declares
//!   the path with [`Rules::empty_ok`] and a reason;
//! - objects keyed by ids (`{pylumId: "Succeeded"}`) are declared with [`Rules::map`]: their
//!   values are compared by the first value's shape;
//! - captures whose authors stored booleans and nulls as strings (`"false"`, `"None"`, the XSOAR
//!   samples; their `notes` say so) are compared with [`Rules::stringly`];
//! - fields a newer server has and an older recording lacks are declared with
//!   [`Rules::extra_ok`];
//! - known gaps of a simulator (fields it does not model) with [`Rules::missing_ok`];
//! - anything else is declared per path with [`Rules::any`] and a reason.
//!
//! [`Golden`] holds a folder's captures and fails when one is neither compared nor explicitly
//! skipped with a reason.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

/// One capture file.
#[derive(Clone, Debug)]
pub struct Capture {
    /// Path relative to the fixtures folder, `/`-separated (`cbr-5.1.1_2016/GET_api_info.json`).
    pub name: String,
    pub method: Option<String>,
    pub path: Option<String>,
    /// `request.body`, where the capture knows it.
    pub request_body: Option<Value>,
    /// `request.query`, where the capture knows it.
    pub query: Option<Value>,
    pub status: Option<u16>,
    pub headers: Option<Map<String, Value>>,
    pub body: Value,
    /// The whole file.
    pub raw: Value,
}

impl Capture {
    /// Reads one capture file; `name` is what [`Capture::name`] reports.
    pub fn load(file: &Path, name: &str) -> Result<Self, String> {
        let text = std::fs::read_to_string(file).map_err(|e| format!("{}: {e}", file.display()))?;
        let raw: Value =
            serde_json::from_str(&text).map_err(|e| format!("{}: {e}", file.display()))?;
        if raw.get("provenance").is_none() && raw.get("source").is_none() {
            return Err(format!("{name}: no provenance"));
        }
        let request = raw.get("request").filter(|r| r.is_object());
        let text_of = |k: &str| request.and_then(|r| r.get(k)).and_then(Value::as_str);
        Ok(Capture {
            name: name.to_owned(),
            method: text_of("method").map(str::to_owned),
            path: text_of("path").map(str::to_owned),
            request_body: request.and_then(|r| r.get("body")).filter(|b| !b.is_null()).cloned(),
            query: request.and_then(|r| r.get("query")).filter(|b| !b.is_null()).cloned(),
            status: raw.get("status").and_then(Value::as_u64).and_then(|s| u16::try_from(s).ok()),
            headers: raw.get("headers").and_then(Value::as_object).cloned(),
            body: raw.get("body").cloned().unwrap_or(Value::Null),
            raw,
        })
    }

    /// A response header of the capture, by case-insensitive name.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .as_ref()?
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .and_then(|(_, v)| v.as_str())
    }

    /// The media type of the capture's `Content-Type` (`application/json`), lower-cased.
    pub fn media_type(&self) -> Option<String> {
        self.header("content-type").map(media_type)
    }
}

/// `application/json; charset=utf-8` → `application/json`.
pub fn media_type(content_type: &str) -> String {
    content_type.split(';').next().unwrap_or_default().trim().to_ascii_lowercase()
}

/// The JSON type of a value, integers and floats apart.
pub fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_f64() => "float",
        Value::Number(_) => "integer",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// The declared exceptions of one comparison (see the module documentation). Paths are written
/// `$` (the body), `.key`, `[]` (an array's element), `{}` (a map's value):
/// `$.processes[].pid`, `$.data.resultIdToElementDataMap{}.simpleValues`.
#[derive(Clone, Debug, Default)]
pub struct Rules {
    maps: BTreeSet<String>,
    empty_ok: BTreeMap<String, String>,
    any: BTreeMap<String, String>,
    extra_ok: BTreeMap<String, String>,
    missing_ok: BTreeMap<String, String>,
    stringly: bool,
    status: Option<(u16, String)>,
}

impl Rules {
    pub fn new() -> Self {
        Self::default()
    }

    /// The object at `path` is keyed by ids: compare its values by the first one's shape.
    pub fn map(mut self, path: &str) -> Self {
        self.maps.insert(path.to_owned());
        self
    }

    /// The array at `path` may be empty on one side (then its elements are not compared).
    pub fn empty_ok(mut self, path: &str, reason: &str) -> Self {
        self.empty_ok.insert(path.to_owned(), reason.to_owned());
        self
    }

    /// The value at `path` is not compared (its type may differ, or the field may be absent).
    pub fn any(mut self, path: &str, reason: &str) -> Self {
        self.any.insert(path.to_owned(), reason.to_owned());
        self
    }

    /// The object at `path` may have fields the capture lacks (a newer server version than the
    /// recorded one).
    pub fn extra_ok(mut self, path: &str, reason: &str) -> Self {
        self.extra_ok.insert(path.to_owned(), reason.to_owned());
        self
    }

    /// The object at `path` may lack fields the capture has: a known gap of the simulator,
    /// declared with its reason so that it stays visible.
    pub fn missing_ok(mut self, path: &str, reason: &str) -> Self {
        self.missing_ok.insert(path.to_owned(), reason.to_owned());
        self
    }

    /// The capture's status is not the vendor's (a doc example that contradicts its own text):
    /// expect `status` instead.
    pub fn status(mut self, status: u16, reason: &str) -> Self {
        self.status = Some((status, reason.to_owned()));
        self
    }

    /// The capture stores booleans and nulls as strings (`"true"`, `"false"`, `"None"`,
    /// `"null"`): those strings also match a boolean or a null.
    pub fn stringly(mut self) -> Self {
        self.stringly = true;
        self
    }
}

/// The shape differences of `actual` (the simulator) against `capture`, one line each, with the
/// path where they are; empty when the shapes agree.
pub fn shape_diff(capture: &Value, actual: &Value, rules: &Rules) -> Vec<String> {
    let mut out = Vec::new();
    diff(capture, actual, "$", rules, &mut out);
    out
}

fn stringly_matches(capture: &str, actual: &Value) -> bool {
    match actual {
        Value::Bool(_) => matches!(capture, "true" | "false" | "True" | "False"),
        Value::Null => matches!(capture, "None" | "null" | ""),
        _ => false,
    }
}

fn diff(capture: &Value, actual: &Value, path: &str, rules: &Rules, out: &mut Vec<String>) {
    if rules.any.contains_key(path) || capture.is_null() {
        return;
    }
    match (capture, actual) {
        (Value::Object(c), Value::Object(a)) if rules.maps.contains(path) => {
            let inner = format!("{path}{{}}");
            match (c.values().next(), a.values().next()) {
                (Some(cv), Some(av)) => diff(cv, av, &inner, rules, out),
                (Some(_), None) if !rules.empty_ok.contains_key(path) => {
                    out.push(format!("{path}: empty map, the capture has entries"));
                }
                _ => {}
            }
        }
        (Value::Object(c), Value::Object(a)) => {
            let missing: Vec<&String> = c
                .keys()
                .filter(|k| !a.contains_key(*k) && !rules.any.contains_key(&format!("{path}.{k}")))
                .collect();
            let missing_ok = rules.missing_ok.contains_key(path);
            let extra: Vec<&String> = a.keys().filter(|k| !c.contains_key(*k)).collect();
            for k in &missing {
                match extra.iter().find(|e| e.eq_ignore_ascii_case(k)) {
                    Some(e) => out.push(format!("{path}: casing: capture `{k}`, simulator `{e}`")),
                    None if missing_ok => {}
                    None => out.push(format!("{path}: missing field `{k}`")),
                }
            }
            for e in &extra {
                if !missing.iter().any(|k| k.eq_ignore_ascii_case(e))
                    && !rules.extra_ok.contains_key(path)
                {
                    out.push(format!("{path}: extra field `{e}`"));
                }
            }
            for (k, cv) in c {
                if let Some(av) = a.get(k) {
                    diff(cv, av, &format!("{path}.{k}"), rules, out);
                }
            }
        }
        (Value::Array(c), Value::Array(a)) => match (c.first(), a.first()) {
            (Some(cv), Some(av)) => diff(cv, av, &format!("{path}[]"), rules, out),
            (None, None) => {}
            _ if rules.empty_ok.contains_key(path) => {}
            (Some(_), None) => out.push(format!("{path}: empty array, the capture has elements")),
            (None, Some(_)) => out.push(format!(
                "{path}: the capture's array is empty, its elements cannot be compared"
            )),
        },
        (Value::String(c), a) if rules.stringly && stringly_matches(c, a) => {}
        (c, a) if kind(c) != kind(a) => out.push(format!(
            "{path}: type: capture {} ({}), simulator {} ({})",
            kind(c),
            short(c),
            kind(a),
            short(a)
        )),
        _ => {}
    }
}

fn short(v: &Value) -> String {
    let s = v.to_string();
    if s.chars().count() > 40 {
        format!("{}…", s.chars().take(40).collect::<String>())
    } else {
        s
    }
}

/// What a simulator answered to a replayed request.
#[derive(Clone, Debug)]
pub struct Answer {
    pub status: u16,
    /// The `Content-Type` header, if any.
    pub content_type: Option<String>,
    pub body: Vec<u8>,
}

impl Answer {
    /// The body as JSON (`Null` for an empty body).
    pub fn json(&self) -> Result<Value, String> {
        if self.body.is_empty() {
            return Ok(Value::Null);
        }
        serde_json::from_slice(&self.body).map_err(|e| {
            format!(
                "not JSON ({e}): {}",
                String::from_utf8_lossy(&self.body[..self.body.len().min(200)])
            )
        })
    }
}

/// The status and media-type differences of an answer against its capture.
pub fn envelope_diff(capture: &Capture, answer: &Answer) -> Vec<String> {
    let mut out = Vec::new();
    if let Some(s) = capture.status
        && s != answer.status
    {
        out.push(format!("status: capture {s}, simulator {}", answer.status));
    }
    if let Some(want) = capture.media_type() {
        let got = answer.content_type.as_deref().map(media_type);
        if got.as_deref() != Some(want.as_str()) {
            out.push(format!("content type: capture {want}, simulator {got:?}"));
        }
    }
    out
}

/// A fixtures folder's captures and the record of which were compared or skipped.
#[derive(Debug)]
pub struct Golden {
    dir: PathBuf,
    captures: BTreeMap<String, Capture>,
    covered: BTreeSet<String>,
    skipped: BTreeMap<String, String>,
    failures: Vec<String>,
}

impl Golden {
    /// Every `*.json` capture under `dir` (recursively), `README.md` and `index.json` aside.
    pub fn load(dir: impl AsRef<Path>) -> Self {
        let dir = dir.as_ref().to_path_buf();
        let mut files = Vec::new();
        collect(&dir, &mut files);
        let mut captures = BTreeMap::new();
        for file in files {
            let name = file
                .strip_prefix(&dir)
                .unwrap_or(&file)
                .components()
                .map(|c| c.as_os_str().to_string_lossy().into_owned())
                .collect::<Vec<_>>()
                .join("/");
            if name == "index.json" {
                continue;
            }
            let capture = Capture::load(&file, &name).unwrap_or_else(|e| panic!("{e}"));
            captures.insert(name, capture);
        }
        assert!(!captures.is_empty(), "no captures under {}", dir.display());
        Golden {
            dir,
            captures,
            covered: BTreeSet::new(),
            skipped: BTreeMap::new(),
            failures: Vec::new(),
        }
    }

    /// The capture `name` (panics when the folder has none such).
    pub fn capture(&self, name: &str) -> &Capture {
        self.captures
            .get(name)
            .unwrap_or_else(|| panic!("no capture {name} in {}", self.dir.display()))
    }

    /// Every capture name.
    pub fn names(&self) -> Vec<String> {
        self.captures.keys().cloned().collect()
    }

    /// Records that `name` is not replayed, and why.
    pub fn skip(&mut self, name: &str, reason: &str) {
        self.capture(name);
        self.skipped.insert(name.to_owned(), reason.to_owned());
    }

    /// Compares an answer with capture `name`: status, media type and body shape. A JSON
    /// capture's body is compared by [`shape_diff`]; a text or binary one by media type only.
    pub fn check(&mut self, name: &str, answer: &Answer, rules: &Rules) {
        let mut capture = self.capture(name).clone();
        if let Some((status, _)) = &rules.status {
            capture.status = Some(*status);
        }
        let mut diffs = envelope_diff(&capture, answer);
        let binary_or_text = capture.body.is_string()
            || matches!(
                capture.raw.get("body_kind").and_then(Value::as_str),
                Some("binary-summary" | "text")
            );
        if !binary_or_text {
            match answer.json() {
                Ok(body) => diffs.extend(shape_diff(&capture.body, &body, rules)),
                Err(e) => diffs.push(e),
            }
        }
        self.record(name, diffs);
    }

    /// Compares a JSON body with capture `name` by shape only (no status, no headers): for
    /// parts of a response, or bodies not fetched through [`Answer`].
    pub fn check_body(&mut self, name: &str, body: &Value, rules: &Rules) {
        let diffs = shape_diff(&self.capture(name).body.clone(), body, rules);
        self.record(name, diffs);
    }

    /// Records extra differences found by a test for capture `name`.
    pub fn record(&mut self, name: &str, diffs: Vec<String>) {
        self.capture(name);
        self.covered.insert(name.to_owned());
        for d in diffs {
            self.failures.push(format!("{name}: {d}"));
        }
    }

    /// The summary, and a panic listing every difference and every capture neither compared
    /// nor skipped.
    pub fn finish(self) {
        let mut report = String::new();
        let _ = writeln!(
            report,
            "golden {}: {} captures, {} compared, {} skipped",
            self.dir.display(),
            self.captures.len(),
            self.covered.len(),
            self.skipped.len()
        );
        for (name, why) in &self.skipped {
            let _ = writeln!(report, "  skipped {name}: {why}");
        }
        println!("{report}");
        let unaccounted: Vec<&String> = self
            .captures
            .keys()
            .filter(|n| !self.covered.contains(*n) && !self.skipped.contains_key(*n))
            .collect();
        let both: Vec<&String> =
            self.covered.iter().filter(|n| self.skipped.contains_key(*n)).collect();
        assert!(both.is_empty(), "both compared and skipped: {both:?}");
        assert!(
            unaccounted.is_empty() && self.failures.is_empty(),
            "{report}captures neither compared nor skipped: {unaccounted:?}\ndifferences:\n  {}",
            self.failures.join("\n  ")
        );
    }
}

fn collect(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        panic!("cannot read {}", dir.display());
    };
    let mut entries: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
    entries.sort();
    for p in entries {
        if p.is_dir() {
            collect(&p, out);
        } else if p.extension().is_some_and(|e| e == "json") {
            out.push(p);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn shapes() {
        let c = json!({"a": 1, "b": [{"x": "s"}], "n": null, "f": 1.5, "camelCase": true});
        let same = json!({"a": 2, "b": [{"x": "t"}, {}], "n": "any", "f": 2.5, "camelCase": false});
        assert!(shape_diff(&c, &same, &Rules::new()).is_empty());
        let off =
            json!({"a": 2.0, "b": [{"x": 1}], "n": null, "f": 1.5, "camelcase": true, "z": 0});
        let d = shape_diff(&c, &off, &Rules::new());
        assert_eq!(d.len(), 4, "{d:#?}");
        assert!(d.iter().any(|l| l.contains("casing: capture `camelCase`")));
        assert!(d.iter().any(|l| l.contains("extra field `z`")));
        assert!(d.iter().any(|l| l.starts_with("$.b[].x: type")));
        assert!(d.iter().any(|l| l.starts_with("$.a: type: capture integer")));
    }

    #[test]
    fn rules() {
        let c = json!({"m": {"id1": {"k": 1}}, "e": [1], "s": "false", "o": "x"});
        let a = json!({"m": {"id2": {"k": 2}}, "e": [], "s": true, "o": 3});
        assert_eq!(shape_diff(&c, &a, &Rules::new()).len(), 5);
        let r = Rules::new().map("$.m").empty_ok("$.e", "state").stringly().any("$.o", "why");
        assert!(shape_diff(&c, &a, &r).is_empty());
    }
}
