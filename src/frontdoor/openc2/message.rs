//! OpenC2 messages as they travel over the HTTPS transfer (v1.1): the command a producer
//! sends, parsed into a [`Request`], and the [`Reply`] the consumer answers with.
//!
//! Sources: LS v1.0 CS02 §3.3 (command, response), HTTPS v1.1 CS01 §3.3.2 (the message with
//! `headers` and `body.openc2`), the ER profile CSD01 §2.1 (targets and args under `er`);
//! summarised in front-doors.md §2.2–§2.4.

use serde_json::{Map, Value, json};

/// The content type of every request and answer (HTTPS §3.3.1, §3.4).
pub const CONTENT_TYPE: &str = "application/openc2+json;version=1.0";
/// Longest `command_id` / `request_id` kept: it becomes the idempotency key.
const MAX_ID_LEN: usize = 200;

/// The LS actions (LS10 Table 3.3.1.1-1): the list "SHALL NOT be extended" (§3.1.4), so an
/// unknown word is a malformed command (400), a known one without a pair here is a 501.
const LS_ACTIONS: [&str; 20] = [
    "scan",
    "locate",
    "query",
    "deny",
    "contain",
    "allow",
    "start",
    "stop",
    "restart",
    "cancel",
    "set",
    "update",
    "redirect",
    "create",
    "delete",
    "detonate",
    "restore",
    "copy",
    "investigate",
    "remediate",
];

/// Status codes of an OpenC2 response (LS10 §3.3.2.1), the only ones that may be HTTP codes
/// (HTTPS §4.2.1 item 8).
pub mod status {
    pub const PROCESSING: u16 = 102;
    pub const OK: u16 = 200;
    pub const BAD_REQUEST: u16 = 400;
    pub const UNAUTHORIZED: u16 = 401;
    pub const FORBIDDEN: u16 = 403;
    pub const NOT_FOUND: u16 = 404;
    pub const INTERNAL_ERROR: u16 = 500;
    pub const NOT_IMPLEMENTED: u16 = 501;
    pub const SERVICE_UNAVAILABLE: u16 = 503;
}

/// `args.response_requested` (LS10 §3.3.1.4); absent means `complete` (ER §3.2.1.7).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ResponseRequested {
    None,
    Ack,
    Status,
    Complete,
}

/// A parsed command with what came around it.
#[derive(Debug)]
pub struct Request {
    /// The message was the HTTPS v1.1 envelope (`headers` + `body.openc2.request`); a bare
    /// command (HTTPS v1.0, lycan's serialisation) is answered with a bare response.
    pub enveloped: bool,
    pub request_id: Option<String>,
    pub from: Option<String>,
    pub command: Command,
}

/// An OpenC2 command with its target's extension spelling normalised to `nsid:name`.
#[derive(Debug)]
pub struct Command {
    pub action: String,
    /// `device`, `process`, `er:registry_entry`, `x-edrgate:processes`, …
    pub target: String,
    /// The target's properties (an object, an array for `features`, a string for `command`).
    pub specifiers: Value,
    pub response_requested: ResponseRequested,
    /// `args` other than the LS ones, by namespace (`er`, `x-edrgate`).
    pub args: Map<String, Value>,
    /// The actuator's specifiers by profile (`{"er": {"hostname": …}}`).
    pub actuator: Map<String, Value>,
    pub command_id: Option<String>,
}

impl Command {
    /// `args.<nsid>.<name>`, also spelt `args["<nsid>:<name>"]` / `args["<nsid>/<name>"]`.
    pub fn arg(&self, nsid: &str, name: &str) -> Option<&Value> {
        self.args
            .get(nsid)
            .and_then(|ns| ns.get(name))
            .or_else(|| self.args.get(&format!("{nsid}:{name}")))
            .or_else(|| self.args.get(&format!("{nsid}/{name}")))
    }

    /// The pair, as `query features` lists it.
    pub fn pair(&self) -> String {
        format!("{} {}", self.action, self.target)
    }
}

/// A malformed message: answered 400 with this text.
#[derive(Debug, PartialEq, Eq)]
pub struct Malformed(pub String);

fn malformed(text: impl Into<String>) -> Malformed {
    Malformed(text.into())
}

/// Parses a message body: the v1.1 envelope or a bare command.
pub fn parse(body: &[u8]) -> Result<Request, Malformed> {
    let value: Value =
        serde_json::from_slice(body).map_err(|e| malformed(format!("not JSON: {e}")))?;
    let Value::Object(mut message) = value else {
        return Err(malformed("the message must be a JSON object"));
    };
    if !message.contains_key("body") && !message.contains_key("headers") {
        let command = command(message)?;
        return Ok(Request { enveloped: false, request_id: None, from: None, command });
    }
    let headers = match message.remove("headers") {
        None => Map::new(),
        Some(Value::Object(h)) => h,
        Some(_) => return Err(malformed("headers must be an object")),
    };
    let request_id = optional_id(headers.get("request_id"), "headers.request_id")?;
    let from = match headers.get("from") {
        None => None,
        Some(Value::String(s)) if s.len() <= MAX_ID_LEN => Some(s.clone()),
        Some(_) => return Err(malformed("headers.from must be a short string")),
    };
    let body = message.remove("body").ok_or_else(|| malformed("the message has no body"))?;
    let request = body.get("openc2").and_then(|o| o.get("request")).ok_or_else(|| {
        malformed("body.openc2.request is missing (this consumer takes commands)")
    })?;
    let Value::Object(command_object) = request.clone() else {
        return Err(malformed("body.openc2.request must be an object"));
    };
    let command = command(command_object)?;
    Ok(Request { enveloped: true, request_id, from, command })
}

fn optional_id(value: Option<&Value>, field: &str) -> Result<Option<String>, Malformed> {
    match value {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if !s.is_empty() && s.len() <= MAX_ID_LEN => Ok(Some(s.clone())),
        Some(_) => {
            Err(malformed(format!("{field} must be a string of 1 to {MAX_ID_LEN} characters")))
        }
    }
}

fn command(mut object: Map<String, Value>) -> Result<Command, Malformed> {
    for key in object.keys() {
        if !["action", "target", "args", "actuator", "command_id"].contains(&key.as_str()) {
            return Err(malformed(format!("unknown command field {key:?}")));
        }
    }
    let action = match object.remove("action") {
        Some(Value::String(a)) if LS_ACTIONS.contains(&a.as_str()) => a,
        Some(Value::String(a)) => return Err(malformed(format!("unknown action {a:?}"))),
        _ => return Err(malformed("action is required (a string)")),
    };
    let (target, specifiers) = target(object.remove("target"))?;
    let (response_requested, args) = args(object.remove("args"))?;
    let actuator = match object.remove("actuator") {
        None => Map::new(),
        Some(Value::Object(a)) if a.len() == 1 => normalise_keys(a),
        Some(_) => return Err(malformed("actuator must be an object with exactly one profile")),
    };
    let command_id = optional_id(object.get("command_id"), "command_id")?;
    Ok(Command { action, target, specifiers, response_requested, args, actuator, command_id })
}

/// The one target, its name in the `nsid:name` spelling: LS10 writes `"er:registry_entry"`,
/// LS20 `"er/registry_entry"`, the ER draft nests `{"er": {"registry_entry": …}}`
/// (front-doors.md §2.3).
fn target(value: Option<Value>) -> Result<(String, Value), Malformed> {
    let Some(Value::Object(target)) = value else {
        return Err(malformed("target is required (an object with exactly one target)"));
    };
    if target.len() != 1 {
        return Err(malformed("target must hold exactly one target"));
    }
    let Some((name, specifiers)) = target.into_iter().next() else {
        return Err(malformed("target must hold exactly one target"));
    };
    if let Some((nsid, inner)) = name.split_once(['/', ':']) {
        return Ok((format!("{nsid}:{inner}"), specifiers));
    }
    if name == "er" || name.starts_with("x-") {
        // Nested: the profile's object holds the one target.
        let Value::Object(inner) = specifiers else {
            return Err(malformed(format!("target {name:?} must hold one {name} target")));
        };
        let mut inner = inner.into_iter();
        return match (inner.next(), inner.next()) {
            (Some((target, specifiers)), None) => Ok((format!("{name}:{target}"), specifiers)),
            _ => Err(malformed(format!("target {name:?} must hold exactly one target"))),
        };
    }
    Ok((name, specifiers))
}

/// `{"er:downstream_device": …}` and `{"er/downstream_device": …}` become
/// `{"er": {"downstream_device": …}}`.
fn normalise_keys(object: Map<String, Value>) -> Map<String, Value> {
    let mut out = Map::new();
    for (key, value) in object {
        match key.split_once(['/', ':']) {
            Some((nsid, name)) => {
                let ns = out.entry(nsid.to_owned()).or_insert_with(|| json!({}));
                if let Value::Object(ns) = ns {
                    ns.insert(name.to_owned(), value);
                }
            }
            None => match (out.get_mut(&key), value) {
                (Some(Value::Object(have)), Value::Object(more)) => have.extend(more),
                (_, value) => {
                    out.insert(key, value);
                }
            },
        }
    }
    out
}

fn args(value: Option<Value>) -> Result<(ResponseRequested, Map<String, Value>), Malformed> {
    let args = match value {
        None => Map::new(),
        Some(Value::Object(a)) if !a.is_empty() => a,
        // LS10 §3.3.1.4: "if present, at least one element".
        Some(_) => return Err(malformed("args must be an object with at least one argument")),
    };
    let mut response_requested = ResponseRequested::Complete;
    let mut rest = Map::new();
    for (key, value) in args {
        match key.as_str() {
            "response_requested" => {
                response_requested = match value.as_str() {
                    Some("none") => ResponseRequested::None,
                    Some("ack") => ResponseRequested::Ack,
                    Some("status") => ResponseRequested::Status,
                    Some("complete") => ResponseRequested::Complete,
                    _ => {
                        return Err(malformed(
                            "response_requested must be none, ack, status or complete",
                        ));
                    }
                }
            }
            // Scheduling (LS10 §3.3.1.4): edrgate runs commands now; a producer that asks
            // for a later start is refused rather than surprised (see `pairs`).
            "start_time" | "stop_time" | "duration" => {
                if !value.is_u64() {
                    return Err(malformed(format!("{key} must be milliseconds (an integer)")));
                }
                rest.insert(key, value);
            }
            // A profile's arguments, under its NSID (LS10 §3.1.4): `er`, `slpf`, `x-edrgate`.
            k if k.contains(['/', ':']) || (value.is_object() && k.len() <= 16) => {
                rest.insert(key, value);
            }
            other => return Err(malformed(format!("unknown argument {other:?}"))),
        }
    }
    Ok((response_requested, normalise_keys(rest)))
}

/// An OpenC2 response (LS10 §3.3.2).
#[derive(Debug, Clone, PartialEq)]
pub struct Reply {
    pub status: u16,
    pub status_text: Option<String>,
    pub results: Option<Value>,
}

impl Reply {
    pub fn new(status: u16) -> Reply {
        Reply { status, status_text: None, results: None }
    }

    pub fn error(status: u16, text: impl Into<String>) -> Reply {
        Reply { status, status_text: Some(text.into()), results: None }
    }

    pub fn text(mut self, text: impl Into<String>) -> Reply {
        self.status_text = Some(text.into());
        self
    }

    pub fn results(mut self, results: Value) -> Reply {
        self.results = Some(results);
        self
    }

    /// The response object: `{status, status_text?, results?}`.
    pub fn to_value(&self) -> Value {
        let mut response = Map::new();
        response.insert("status".into(), json!(self.status));
        if let Some(text) = &self.status_text {
            response.insert("status_text".into(), json!(text));
        }
        if let Some(results) = &self.results {
            response.insert("results".into(), results.clone());
        }
        Value::Object(response)
    }

    /// The HTTPS v1.1 message around the response (HTTPS §3.3.2): `request_id` echoed,
    /// `created` in milliseconds since the epoch (LS10 §3.4.2.2), `to` the producer.
    pub fn envelope(&self, request_id: Option<&str>, to: Option<&str>, created: i64) -> Value {
        let mut headers = Map::new();
        if let Some(id) = request_id {
            headers.insert("request_id".into(), json!(id));
        }
        headers.insert("created".into(), json!(created));
        headers.insert("from".into(), json!("edrgate"));
        if let Some(to) = to {
            headers.insert("to".into(), json!([to]));
        }
        json!({"headers": headers, "body": {"openc2": {"response": self.to_value()}}})
    }
}

#[cfg(test)]
mod tests;
