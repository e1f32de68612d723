//! The OpenAPI document, generated from the route declarations, and the JSON Schemas of the
//! public model derived from it.
//!
//! The canonical document is OpenAPI 3.1; [`downlevel`](super::downlevel) renders it as
//! OpenAPI 3.0.3 (Shuffle, n8n generators) and Swagger 2.0 (Logic Apps custom connectors,
//! XSOAR's codegen). All of them and the model's JSON Schemas are committed under `schemas/`
//! (`openapi.json`, `openapi-3.0.json`, `swagger-2.0.json`, `model.schema.json`); a test fails
//! when the committed files differ from what the code generates. Regenerate with
//! `cargo run -- openapi --write`.
//!
//! The limits the server enforces are declared from the constants that enforce them
//! ([`declare_limits`]), so the document and the checks cannot drift apart.

use std::path::Path;

use serde_json::{Map, Value};
use utoipa::openapi::OpenApi as OpenApiDoc;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::ApiState;
use super::downlevel;
use super::{actions, apikeys, audit, devices, events, files, runs, webhooks};

/// Where the committed documents live, relative to the repository root.
pub const OPENAPI_FILE: &str = "schemas/openapi.json";
pub const OPENAPI_30_FILE: &str = "schemas/openapi-3.0.json";
pub const SWAGGER_20_FILE: &str = "schemas/swagger-2.0.json";
/// Where the gateway serves each rendering (under `server.path_prefix`).
pub const OPENAPI_ROUTE: &str = "/openapi.json";
pub const OPENAPI_30_ROUTE: &str = "/openapi-3.0.json";
pub const SWAGGER_20_ROUTE: &str = "/swagger-2.0.json";
/// The key of the bearer security scheme: Shuffle recognises bearer auth by this name
/// (front-doors.md §3.2).
pub const SECURITY_SCHEME: &str = "BearerAuth";
/// `servers[0]` of the committed documents; the served ones name the gateway they come from.
const DEFAULT_SERVER: &str = "http://127.0.0.1:8080";
pub const MODEL_SCHEMA_FILE: &str = "schemas/model.schema.json";
/// The command that rewrites both files.
pub const REGENERATE: &str = "cargo run -- openapi --write";

#[derive(OpenApi)]
#[openapi(
    info(
        title = "edrgate",
        description = "One normalized response-action API in front of EDR live-response backends. \
            Every error is `application/problem+json` (RFC 9457) with a stable `code`. \
            Two compatibility surfaces are served beside this API and not described here (see \
            the README): the Carbon Black EDR live-response REST subset under \
            `server.carbonblack_prefix` (default `/cb`; `X-Auth-Token` = an API key of \
            `/v1/api-keys` or a JWT), and an OpenC2 Endpoint Response consumer at \
            `/.well-known/openc2` (HTTPS transfer v1.1, bearer JWT).",
        license(name = "Apache-2.0", identifier = "Apache-2.0"),
    ),
    components(schemas(
        edrgate_adapter::CommandClass,
        edrgate_adapter::CommandKind,
        edrgate_adapter::CommandResult,
        edrgate_adapter::ErrorCode,
        edrgate_adapter::ErrorInfo,
        edrgate_adapter::FileRef,
        files::ArchiveKind,
        audit::AuditFormat,
    )),
    modifiers(&BearerAuth),
    tags(
        (name = "actions", description = "Submit, follow, list and cancel response actions"),
        (name = "files", description = "Uploads and files fetched from endpoints, with their custody"),
        (name = "devices", description = "Devices and backend capabilities of the caller's tenant"),
        (name = "events", description = "The tenant's action and run events, streamed (Server-Sent Events)"),
        (name = "webhooks", description = "Webhook subscriptions (Standard Webhooks) and their deliveries (admin permission)"),
        (name = "api-keys", description = "Tenant API keys for the static-token doors (`X-Auth-Token`; admin permission)"),
        (name = "audit", description = "The tenant's audit trail of response actions and file transfers"),
        (name = "admin", description = "Operating the gateway (operator permission)"),
        (name = "health", description = "Liveness and readiness (no authentication)"),
    )
)]
struct ApiDoc;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut OpenApiDoc) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            SECURITY_SCHEME,
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .description(Some(
                        "A JWT with `exp`, the tenant in the configured claim (`auth.tenant_claim`, \
                         default `tenant`; `tid` for Entra ID) and the permissions in the scope \
                         claim (`scope`/`scp`, or `auth.scope_claim`, e.g. `roles`)",
                    ))
                    .build(),
            ),
        );
    }
}

/// Every documented route, with its handler: the one declaration both the router and the
/// document come from.
pub fn api_routes() -> OpenApiRouter<ApiState> {
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(actions::submit_action, actions::list_actions))
        .routes(routes!(actions::get_action))
        .routes(routes!(actions::action_status))
        .routes(routes!(runs::list_runs))
        .routes(routes!(runs::get_run))
        .routes(routes!(actions::cancel_action))
        .routes(routes!(events::stream_events))
        .routes(routes!(webhooks::create_webhook, webhooks::list_webhooks))
        .routes(routes!(webhooks::get_webhook, webhooks::delete_webhook))
        .routes(routes!(webhooks::rotate_secret))
        .routes(routes!(webhooks::list_deliveries))
        .routes(routes!(webhooks::redeliver))
        .routes(routes!(apikeys::create_api_key, apikeys::list_api_keys))
        .routes(routes!(apikeys::get_api_key, apikeys::revoke_api_key))
        .routes(routes!(audit::list_audit))
        .routes(routes!(audit::reload))
        .routes(routes!(files::upload_file))
        .routes(routes!(files::file_meta, files::delete_file))
        .routes(routes!(files::file_content))
        .routes(routes!(devices::list_devices))
        .routes(routes!(devices::capabilities))
        .routes(routes!(devices::healthz))
        .routes(routes!(devices::readyz))
}

/// The OpenAPI 3.1 document, as committed (with the default `servers`).
pub fn document() -> Value {
    finish(api_routes().split_for_parts().1)
}

/// What utoipa generates, completed: the limits, the global security, `servers`, the
/// operations that need no token.
pub fn finish(doc: OpenApiDoc) -> Value {
    let mut doc = serde_json::to_value(doc).unwrap_or(Value::Null);
    declare_limits(&mut doc);
    doc["security"] = serde_json::json!([{ SECURITY_SCHEME: [] }]);
    if let Some(paths) = doc.get_mut("paths").and_then(Value::as_object_mut) {
        for item in paths.values_mut().filter_map(Value::as_object_mut) {
            for op in item.values_mut().filter_map(Value::as_object_mut) {
                // Health and readiness: explicitly without a token.
                op.entry("security").or_insert_with(|| Value::Array(Vec::new()));
            }
        }
    }
    set_server(&mut doc, DEFAULT_SERVER);
    doc
}

/// Points `servers` at `base` (`scheme://host[/prefix]`).
pub fn set_server(doc: &mut Value, base: &str) {
    doc["servers"] = serde_json::json!([{ "url": base, "description": "edrgate" }]);
}

/// The three renderings, in the order of [`RENDERINGS`].
pub fn renderings(doc: &Value) -> [Value; 3] {
    let v30 = downlevel::to_openapi_30(doc);
    let v20 = downlevel::to_swagger_20(&v30);
    [doc.clone(), v30, v20]
}

/// Each rendering's committed file and route.
pub const RENDERINGS: [(&str, &str); 3] = [
    (OPENAPI_FILE, OPENAPI_ROUTE),
    (OPENAPI_30_FILE, OPENAPI_30_ROUTE),
    (SWAGGER_20_FILE, SWAGGER_20_ROUTE),
];

/// A document as committed: pretty JSON with a final newline.
pub fn render(doc: &Value) -> String {
    let mut text = serde_json::to_string_pretty(doc).unwrap_or_else(|_| "{}".to_owned());
    text.push('\n');
    text
}

/// `schemas/openapi.json` as the code generates it.
pub fn openapi_json() -> String {
    render(&document())
}

/// A path pattern: not blank, no NUL byte, no `..` segment (`Command::validate`).
const PATH_PATTERN: &str =
    r"^(?![\s\S]*(?:^|[\\/])\.\.(?:[\\/]|$))[^\u0000]*[^\s\u0000][^\u0000]*$";
/// Not blank, no NUL byte.
const TEXT_PATTERN: &str = r"^[^\u0000]*[^\s\u0000][^\u0000]*$";
/// No NUL byte.
const NO_NUL_PATTERN: &str = r"^[^\u0000]*$";
/// Not blank.
const NOT_BLANK_PATTERN: &str = r"[^\s]";

/// Declares on the model's schemas the limits the engine and `Command::validate` enforce,
/// from the same constants.
fn declare_limits(doc: &mut Value) {
    use super::request::MAX_FILE_POSITION;
    use crate::engine::{
        MAX_COMMANDS, MAX_COMMENT, MAX_TARGET_NAME, MAX_TARGETS, MAX_TIMEOUT_SECONDS,
    };
    use edrgate_adapter::MAX_PATH;
    use serde_json::json;
    // An upload without a body stores an empty file (utoipa marks every body required).
    if let Some(required) = doc.pointer_mut("/paths/~1v1~1files/post/requestBody/required") {
        *required = Value::Bool(false);
    }
    let Some(schemas) = doc.pointer_mut("/components/schemas").and_then(Value::as_object_mut)
    else {
        return;
    };
    let merge = |schema: Option<&mut Value>, field: &str, limits: Value| {
        if let (Some(Value::Object(target)), Value::Object(limits)) =
            (schema.and_then(|s| s.pointer_mut(&format!("/properties/{field}"))), limits)
        {
            target.extend(limits);
        }
    };
    let request = schemas.get_mut("ActionRequest");
    if let Some(request) = request {
        merge(
            Some(request),
            "targets",
            json!({"minItems": 1, "maxItems": MAX_TARGETS, "uniqueItems": true}),
        );
        merge(Some(request), "commands", json!({"minItems": 1, "maxItems": MAX_COMMANDS}));
        merge(Some(request), "comment", json!({"maxLength": MAX_COMMENT}));
        merge(
            Some(request),
            "timeout_seconds",
            json!({"minimum": 1, "maximum": MAX_TIMEOUT_SECONDS}),
        );
    }
    // Parts other than the file are ignored, but their names must be usable in a part's
    // `Content-Disposition` (no quote, backslash or control character).
    if let Some(Value::Object(form)) = schemas.get_mut("UploadForm") {
        form.insert("additionalProperties".into(), Value::Bool(true));
        form.insert("propertyNames".into(), json!({"pattern": r#"^[^"\\\u0000-\u001f\u007f]*$"#}));
    }
    let name = json!({"maxLength": MAX_TARGET_NAME, "pattern": NOT_BLANK_PATTERN});
    let path = json!({"maxLength": MAX_PATH, "pattern": PATH_PATTERN});
    for (schema, fields) in [
        (
            "Target",
            vec![
                ("hostname", name.clone()),
                ("device_id", name),
                ("backend", json!({"minLength": 1})),
            ],
        ),
        (
            "Command",
            vec![
                ("path", path.clone()),
                ("key", path.clone()),
                ("working_directory", path.clone()),
                ("output_file", path),
                ("command_line", json!({"pattern": TEXT_PATTERN})),
                ("script", json!({"pattern": NOT_BLANK_PATTERN})),
                ("file_id", json!({"pattern": NOT_BLANK_PATTERN})),
                ("value", json!({"pattern": NO_NUL_PATTERN})),
                ("vendor_id", json!({"minLength": 1, "maxLength": 255})),
                ("pid", json!({"minimum": 1, "maximum": u32::MAX})),
                ("offset", json!({"maximum": MAX_FILE_POSITION})),
                ("length", json!({"minimum": 1, "maximum": MAX_FILE_POSITION})),
            ],
        ),
    ] {
        let Some(variants) =
            schemas.get_mut(schema).and_then(|s| s.get_mut("oneOf")).and_then(Value::as_array_mut)
        else {
            continue;
        };
        for variant in variants {
            // Both enums have `deny_unknown_fields`, which utoipa does not carry over to the
            // variants.
            if let Some(variant) = variant.as_object_mut() {
                variant.insert("additionalProperties".into(), Value::Bool(false));
            }
            for (field, limits) in &fields {
                merge(Some(variant), field, limits.clone());
            }
        }
    }
}

/// `schemas/model.schema.json`: a JSON Schema 2020-12 document whose `$defs` are the component
/// schemas of the OpenAPI document (OpenAPI 3.1 schemas are JSON Schema 2020-12), with their
/// references rewritten to `#/$defs/…`.
pub fn model_schema_json() -> String {
    let doc = document();
    let mut defs =
        doc.pointer("/components/schemas").cloned().unwrap_or_else(|| Value::Object(Map::new()));
    rewrite_refs(&mut defs);
    let schema = serde_json::json!({
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": "urn:edrgate:schema:model",
        "title": "edrgate public model",
        "description": format!(
            "JSON Schemas of edrgate's wire types, generated from the code (regenerate with `{REGENERATE}`)"
        ),
        "$defs": defs,
    });
    let mut text = serde_json::to_string_pretty(&schema).unwrap_or_else(|_| "{}".to_owned());
    text.push('\n');
    text
}

/// Every generated file under `schemas/`, with its content.
pub fn generated_files() -> Vec<(&'static str, String)> {
    let mut files: Vec<(&str, String)> = RENDERINGS
        .iter()
        .zip(renderings(&document()))
        .map(|((file, _), doc)| (*file, render(&doc)))
        .collect();
    files.push((MODEL_SCHEMA_FILE, model_schema_json()));
    files.push((crate::config::CONFIG_SCHEMA_FILE, crate::config::json_schema()));
    files
}

/// Writes every generated document under `root` (the repository root). Returns the paths
/// written.
pub fn write_all(root: &Path) -> std::io::Result<Vec<std::path::PathBuf>> {
    let mut written = Vec::new();
    for (file, text) in generated_files() {
        let path = root.join(file);
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        std::fs::write(&path, text)?;
        written.push(path);
    }
    Ok(written)
}

fn rewrite_refs(value: &mut Value) {
    match value {
        Value::Object(map) => {
            for (key, v) in map.iter_mut() {
                if key == "$ref"
                    && let Value::String(target) = v
                    && let Some(name) = target.strip_prefix("#/components/schemas/")
                {
                    *target = format!("#/$defs/{name}");
                } else {
                    rewrite_refs(v);
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(rewrite_refs),
        _ => {}
    }
}

/// Every `$ref` in `value` that does not resolve inside `root` (local JSON pointers only).
pub fn dangling_refs(root: &Value) -> Vec<String> {
    fn walk(value: &Value, root: &Value, out: &mut Vec<String>) {
        match value {
            Value::Object(map) => {
                for (key, v) in map {
                    match (key.as_str(), v) {
                        ("$ref", Value::String(target)) => {
                            let resolves = target
                                .strip_prefix('#')
                                .is_some_and(|pointer| root.pointer(pointer).is_some());
                            if !resolves {
                                out.push(target.clone());
                            }
                        }
                        _ => walk(v, root, out),
                    }
                }
            }
            Value::Array(items) => items.iter().for_each(|v| walk(v, root, out)),
            _ => {}
        }
    }
    let mut out = Vec::new();
    walk(root, root, &mut out);
    out.sort();
    out.dedup();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn committed(file: &str) -> String {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(file);
        std::fs::read_to_string(&path).unwrap_or_else(|e| {
            panic!("{} cannot be read ({e}); regenerate with `{REGENERATE}`", path.display())
        })
    }

    #[test]
    fn committed_documents_are_up_to_date() {
        for (file, text) in generated_files() {
            assert!(
                committed(file) == text,
                "{file} differs from what the code generates; regenerate with `{REGENERATE}`"
            );
        }
    }

    #[test]
    fn every_reference_resolves() {
        let doc: Value = serde_json::from_str(&openapi_json()).unwrap();
        assert_eq!(dangling_refs(&doc), Vec::<String>::new(), "dangling $ref in the OpenAPI doc");
        let model: Value = serde_json::from_str(&model_schema_json()).unwrap();
        assert_eq!(
            dangling_refs(&model),
            Vec::<String>::new(),
            "dangling $ref in the model schema"
        );
        // The walker does find a broken one.
        let broken = serde_json::json!({"a": {"$ref": "#/components/schemas/Nope"}});
        assert_eq!(dangling_refs(&broken), ["#/components/schemas/Nope"]);
    }

    #[test]
    fn the_document_covers_the_api_and_the_model() {
        let doc: Value = serde_json::from_str(&openapi_json()).unwrap();
        assert!(doc["openapi"].as_str().unwrap().starts_with("3.1"));
        for path in [
            "/v1/actions",
            "/v1/actions/{id}",
            "/v1/actions/{id}/status",
            "/v1/actions/{id}/cancel",
            "/v1/files/{id}",
            "/v1/files/{id}/content",
            "/v1/devices",
            "/v1/capabilities",
            "/healthz",
            "/readyz",
        ] {
            assert!(doc["paths"][path].is_object(), "{path} is not documented");
        }
        for schema in [
            "Action",
            "ActionRequest",
            "Command",
            "Problem",
            "FileMeta",
            "Device",
            "Capabilities",
            "ErrorCode",
        ] {
            assert!(doc["components"]["schemas"][schema].is_object(), "{schema} is missing");
        }
        // Every /v1 operation requires the bearer token, the others none; each has a
        // PascalCase operationId and a short summary (Shuffle names its actions from it).
        assert_eq!(doc["security"], serde_json::json!([{"BearerAuth": []}]));
        assert!(doc["components"]["securitySchemes"]["BearerAuth"].is_object());
        let mut ids = std::collections::HashSet::new();
        for (path, item) in doc["paths"].as_object().unwrap() {
            for (method, op) in item.as_object().unwrap() {
                let expected = if path.starts_with("/v1/") {
                    serde_json::json!([{"BearerAuth": []}])
                } else {
                    serde_json::json!([])
                };
                assert_eq!(op["security"], expected, "{method} {path}");
                let id = op["operationId"].as_str().unwrap();
                assert!(id.starts_with(|c: char| c.is_ascii_uppercase()), "{id}");
                assert!(ids.insert(id.to_owned()), "{id} twice");
                let summary = op["summary"].as_str().unwrap();
                assert!(
                    summary.len() <= 30 && !summary.ends_with('.'),
                    "{method} {path}: {summary}"
                );
            }
        }
        assert!(doc["servers"][0]["url"].is_string());
        // The 3.0 rendering has no 3.1 type arrays; the 2.0 one no `oneOf`/`anyOf`, and
        // every reference resolves in each.
        let [_, v30, v20] = renderings(&doc);
        let text30 = v30.to_string();
        assert!(!text30.contains(r#""null""#) && v30["openapi"] == "3.0.3");
        assert!(!v20.to_string().contains(r#""oneOf""#) && !v20.to_string().contains(r#""anyOf""#));
        assert_eq!(v20["securityDefinitions"]["BearerAuth"]["in"], "header");
        assert_eq!(dangling_refs(&v30), Vec::<String>::new());
        assert_eq!(dangling_refs(&v20), Vec::<String>::new());
    }
}
