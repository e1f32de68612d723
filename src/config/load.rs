//! From a file to a [`Config`]: `${ENV}` references, `<secret>_file` indirection, then every
//! section, tenant, backend and routing rule deserialized on its own so that each malformed one
//! is reported with its path, then [`Config::validate`].

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::LazyLock;

use super::{
    AuthConfig, BackendConfig, Config, EngineConfig, FilesConfig, RouteRule, RoutingConfig,
    ServerConfig, StoreConfig, TenantConfig,
};

/// The gateway's own settings that hold secrets (`auth.hs256_secret`, `files.s3.secret_access_key`,
/// `store.url`); each backend kind's are its factory's `SECRETS`.
const GATEWAY_SECRETS: &[&str] = &["hs256_secret", "secret_access_key", "url"];

impl Config {
    /// Reads, interpolates and parses `path`, then validates. Every problem is reported.
    pub fn load(path: &Path) -> Result<Config, Vec<String>> {
        let text =
            std::fs::read_to_string(path).map_err(|e| vec![format!("{}: {e}", path.display())])?;
        Self::parse_from(&text, &path.display().to_string(), |name| std::env::var(name).ok())
    }

    /// [`Config::parse_from`] for text that has no file name (syntax errors then start with
    /// `line:column`).
    pub fn parse(text: &str, env: impl Fn(&str) -> Option<String>) -> Result<Config, Vec<String>> {
        Self::parse_from(text, "", env)
    }

    /// Parses `text`, read from `origin` (a file name, for messages).
    pub fn parse_from(
        text: &str,
        origin: &str,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Config, Vec<String>> {
        let mut value: toml::Value =
            toml::from_str(text).map_err(|e| vec![syntax_error(text, origin, &e)])?;
        let mut errors = Vec::new();
        interpolate(&mut value, "", &env, &mut errors);
        read_secret_files(&mut value, "", &mut errors);
        if !errors.is_empty() {
            return Err(errors);
        }
        shape_errors(&value, &mut errors);
        if !errors.is_empty() {
            return Err(errors);
        }
        let fingerprints = backend_fingerprints(&value);
        let mut config: Config =
            value.try_into().map_err(|e: toml::de::Error| vec![without_values(e.message())])?;
        config.backend_fingerprints = fingerprints;
        config.validate()?;
        Ok(config)
    }
}

/// Deserializes each section, tenant and backend on its own, so that every malformed one is
/// reported with its path (serde stops at the first error of a document).
fn shape_errors(value: &toml::Value, errors: &mut Vec<String>) {
    fn check<T: serde::de::DeserializeOwned>(
        value: &toml::Value,
        path: &str,
        errors: &mut Vec<String>,
    ) {
        if let Err(e) = value.clone().try_into::<T>() {
            errors.push(shape_error(path, e.message()));
        }
    }
    let Some(root) = value.as_table() else { return };
    let mut top = root.clone();
    // Sections are checked on their own below; what is left are unknown top-level keys.
    for (key, section) in root {
        let path = key.as_str();
        match path {
            "server" => check::<ServerConfig>(section, path, errors),
            "store" => check::<StoreConfig>(section, path, errors),
            "files" => check::<FilesConfig>(section, path, errors),
            "auth" => check::<AuthConfig>(section, path, errors),
            "engine" => check::<EngineConfig>(section, path, errors),
            "webhooks" => check::<super::WebhooksConfig>(section, path, errors),
            "tenants" => {
                for (tenant, t) in section.as_table().into_iter().flatten() {
                    let path = format!("tenants.{tenant}");
                    let Some(table) = t.as_table() else {
                        errors.push(format!("{path}: a table is expected"));
                        continue;
                    };
                    let mut rest = table.clone();
                    if let Some(backends) = rest.remove("backends") {
                        for (name, b) in backends.as_table().into_iter().flatten() {
                            check::<BackendConfig>(b, &format!("{path}.backends.{name}"), errors);
                        }
                    }
                    if let Some(toml::Value::Table(mut routing)) = rest.remove("routing") {
                        let rules = routing.remove("rules");
                        for (i, rule) in
                            rules.iter().flat_map(|r| r.as_array()).flatten().enumerate()
                        {
                            check::<RouteRule>(rule, &format!("{path}.routing.rules[{i}]"), errors);
                        }
                        check::<RoutingConfig>(
                            &toml::Value::Table(routing),
                            &format!("{path}.routing"),
                            errors,
                        );
                    }
                    check::<TenantConfig>(&toml::Value::Table(rest), &path, errors);
                }
            }
            _ => continue,
        }
        top.remove(key);
    }
    if !root.contains_key("auth") {
        errors.push("auth: missing".to_owned());
    }
    for key in top.keys() {
        errors.push(format!(
            "{key}: unknown section (expected server, store, files, auth, engine, webhooks or tenants)"
        ));
    }
}

/// `missing field `x`` at `a.b` reads `a.b.x: missing`; other messages keep their words.
fn shape_error(path: &str, message: &str) -> String {
    let field = |prefix: &str| {
        message.strip_prefix(prefix).and_then(|rest| rest.split('`').next()).map(str::to_owned)
    };
    if let Some(name) = field("missing field `") {
        return format!("{path}.{name}: missing");
    }
    if let Some(name) = field("unknown field `") {
        let expected = message.split_once(", expected ").map(|(_, e)| e).unwrap_or("");
        return format!("{path}.{name}: unknown setting (expected {expected})");
    }
    format!("{path}: {}", without_values(message.trim()))
}

/// A TOML syntax error as `file:line:column: message (key k)`. Never the offending line: it
/// may hold a secret (`toml`'s own rendering quotes the line under a caret), so only the
/// position, the parser's message and the key the line sets (or the table it is in) are shown.
fn syntax_error(text: &str, origin: &str, error: &toml::de::Error) -> String {
    let mut at = error.span().map_or(0, |span| span.start).min(text.len());
    while !text.is_char_boundary(at) {
        at -= 1;
    }
    let before = &text[..at];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let column = text[line_start..at].chars().count() + 1;
    let message = error.message().trim().replace('\n', "; ");
    let place = if origin.is_empty() {
        format!("{line}:{column}")
    } else {
        format!("{origin}:{line}:{column}")
    };
    let table = before[..line_start].lines().rev().find_map(|l| {
        let l = l.trim();
        let name = l.strip_prefix("[[").and_then(|l| l.split_once("]]")).map(|(name, _)| name);
        let name =
            name.or_else(|| l.strip_prefix('[').and_then(|l| l.split_once(']')).map(|(n, _)| n));
        name.map(str::trim).filter(|n| is_key_path(n)).map(str::to_owned)
    });
    let line_text = text[line_start..].lines().next().unwrap_or("");
    // Inside a multi-line string, `x=` is text (base64 padding…), not a key.
    let in_string = |quotes: &str| before[..line_start].matches(quotes).count() % 2 == 1;
    let key = line_text
        .split_once('=')
        .map(|(k, _)| k.trim())
        .filter(|k| is_key_path(k) && !in_string("\"\"\"") && !in_string("'''"));
    match (table, key) {
        (Some(table), Some(key)) => format!("{place}: invalid TOML: {message} (key {table}.{key})"),
        (None, Some(key)) => format!("{place}: invalid TOML: {message} (key {key})"),
        (Some(table), None) => format!("{place}: invalid TOML: {message} (in table {table})"),
        (None, None) => format!("{place}: invalid TOML: {message}"),
    }
}

/// A dotted key of bare or quoted plain parts: what a key can be shown as without showing
/// a value that a broken line may have run into.
fn is_key_path(key: &str) -> bool {
    !key.is_empty()
        && key.len() <= 200
        && key.chars().all(|c| c.is_ascii_alphanumeric() || "_-.\"".contains(c))
}

/// serde's "invalid type: string \"…\", expected …" quotes the value it found, which may be a
/// secret set under the wrong name or with the wrong type: only its type is kept.
fn without_values(message: &str) -> String {
    let mut out = message.to_owned();
    for prefix in ["invalid type: ", "invalid value: "] {
        let Some(start) = out.find(prefix).map(|i| i + prefix.len()) else { continue };
        let Some(len) = out[start..].find(", expected") else { continue };
        let found = &out[start..start + len];
        let kind = found.split([' ', '`']).next().unwrap_or("").to_owned();
        if kind.len() != found.len() {
            out.replace_range(start..start + len, &kind);
        }
    }
    out
}

fn backend_fingerprints(value: &toml::Value) -> BTreeMap<(String, String), [u8; 32]> {
    use sha2::Digest as _;
    let mut out = BTreeMap::new();
    let tenants = value.get("tenants").and_then(toml::Value::as_table);
    for (tenant, t) in tenants.into_iter().flatten() {
        let backends = t.get("backends").and_then(toml::Value::as_table);
        for (name, backend) in backends.into_iter().flatten() {
            // `toml::Value`'s tables are ordered maps: equal settings print equally.
            let digest = sha2::Sha256::digest(backend.to_string().as_bytes());
            out.insert((tenant.clone(), name.clone()), digest.into());
        }
    }
    out
}

/// Settings that hold secrets: every backend kind's (its factory's `SECRETS`, in registry order),
/// then the gateway's own. Each can instead be given as `<name>_file`: the path of a file
/// holding it (container secrets, Kubernetes secret volumes), read at load time with one
/// trailing newline removed. A name is a secret wherever it appears in the file.
pub fn secret_settings() -> &'static [&'static str] {
    static SECRETS: LazyLock<Vec<&'static str>> = LazyLock::new(|| {
        let mut all: Vec<&'static str> = Vec::new();
        let vendors = crate::registry::adapters().iter().flat_map(|f| f.secret_fields());
        for secret in vendors.chain(GATEWAY_SECRETS) {
            if !all.contains(secret) {
                all.push(secret);
            }
        }
        all
    });
    &SECRETS
}

/// Replaces every `<secret>_file` setting by the `<secret>` read from that file.
fn read_secret_files(value: &mut toml::Value, path: &str, errors: &mut Vec<String>) {
    let toml::Value::Table(table) = value else {
        if let toml::Value::Array(items) = value {
            for (i, item) in items.iter_mut().enumerate() {
                read_secret_files(item, &format!("{path}[{i}]"), errors);
            }
        }
        return;
    };
    let join = |k: &str| if path.is_empty() { k.to_owned() } else { format!("{path}.{k}") };
    for secret in secret_settings() {
        let file_key = format!("{secret}_file");
        let Some(file) = table.remove(&file_key) else { continue };
        let field = join(&file_key);
        let Some(file) = file.as_str() else {
            errors.push(format!("{field}: must be a path"));
            continue;
        };
        if table.contains_key(*secret) {
            errors.push(format!("{field}: set either {secret} or {file_key}, not both"));
            continue;
        }
        match std::fs::read_to_string(file) {
            Ok(text) => {
                let text = text.strip_suffix('\n').unwrap_or(&text);
                let text = text.strip_suffix('\r').unwrap_or(text);
                table.insert((*secret).to_owned(), toml::Value::String(text.to_owned()));
            }
            // The path is configuration, not a secret: it may be shown.
            Err(e) => errors.push(format!("{field}: cannot read {file}: {e}")),
        }
    }
    for (k, v) in table.iter_mut() {
        read_secret_files(v, &join(k), errors);
    }
}

/// Replaces `${NAME}` in every string with the environment variable `NAME`.
fn interpolate(
    value: &mut toml::Value,
    path: &str,
    env: &impl Fn(&str) -> Option<String>,
    errors: &mut Vec<String>,
) {
    match value {
        toml::Value::String(s) => {
            let mut out = String::with_capacity(s.len());
            let mut rest = s.as_str();
            while let Some(start) = rest.find("${") {
                out.push_str(&rest[..start]);
                let Some(end) = rest[start..].find('}') else {
                    errors.push(format!("{path}: unterminated ${{"));
                    return;
                };
                let name = &rest[start + 2..start + end];
                match env(name) {
                    Some(v) => out.push_str(&v),
                    None => errors.push(format!("{path}: environment variable {name} is not set")),
                }
                rest = &rest[start + end + 1..];
            }
            out.push_str(rest);
            *s = out;
        }
        toml::Value::Table(t) => {
            for (k, v) in t.iter_mut() {
                let p = if path.is_empty() { k.clone() } else { format!("{path}.{k}") };
                interpolate(v, &p, env, errors);
            }
        }
        toml::Value::Array(a) => {
            for (i, v) in a.iter_mut().enumerate() {
                interpolate(v, &format!("{path}[{i}]"), env, errors);
            }
        }
        _ => {}
    }
}
