//! The OpenAPI document, generated from the route declarations, and the JSON Schemas of the
//! public model derived from it.
//!
//! Both are committed under `schemas/` (`openapi.json`, `model.schema.json`); a test fails when
//! the committed files differ from what the code generates. Regenerate with
//! `cargo run -- openapi --write`.

use std::path::Path;

use serde_json::{Map, Value};
use utoipa::openapi::OpenApi as OpenApiDoc;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::ApiState;
use super::{actions, audit, devices, files};

/// Where the committed documents live, relative to the repository root.
pub const OPENAPI_FILE: &str = "schemas/openapi.json";
pub const MODEL_SCHEMA_FILE: &str = "schemas/model.schema.json";
/// The command that rewrites both files.
pub const REGENERATE: &str = "cargo run -- openapi --write";

#[derive(OpenApi)]
#[openapi(
    info(
        title = "edrgate",
        description = "One normalized response-action API in front of EDR live-response backends. \
            Every error is `application/problem+json` (RFC 9457) with a stable `code`.",
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
    )),
    modifiers(&BearerAuth),
    tags(
        (name = "actions", description = "Submit, follow, list and cancel response actions"),
        (name = "files", description = "Uploads and files fetched from endpoints, with their custody"),
        (name = "devices", description = "Devices and backend capabilities of the caller's tenant"),
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
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .description(Some(
                        "HS256 JWT with `exp`, the tenant in the configured claim (default \
                         `tenant`) and the caller in `sub`",
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
        .routes(routes!(actions::cancel_action))
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

/// The OpenAPI document.
pub fn document() -> OpenApiDoc {
    api_routes().split_for_parts().1
}

/// The document as committed: pretty JSON with a final newline.
pub fn render(doc: &OpenApiDoc) -> String {
    let mut text = doc.to_pretty_json().unwrap_or_else(|_| "{}".to_owned());
    text.push('\n');
    text
}

/// `schemas/openapi.json` as the code generates it.
pub fn openapi_json() -> String {
    render(&document())
}

/// `schemas/model.schema.json`: a JSON Schema 2020-12 document whose `$defs` are the component
/// schemas of the OpenAPI document (OpenAPI 3.1 schemas are JSON Schema 2020-12), with their
/// references rewritten to `#/$defs/…`.
pub fn model_schema_json() -> String {
    let doc = serde_json::to_value(document()).unwrap_or(Value::Null);
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

/// Writes both documents under `root` (the repository root). Returns the paths written.
pub fn write_all(root: &Path) -> std::io::Result<Vec<std::path::PathBuf>> {
    let mut written = Vec::new();
    let config = (crate::config::CONFIG_SCHEMA_FILE, crate::config::json_schema());
    for (file, text) in
        [(OPENAPI_FILE, openapi_json()), (MODEL_SCHEMA_FILE, model_schema_json()), config]
    {
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
    fn committed_openapi_document_is_up_to_date() {
        assert!(
            committed(OPENAPI_FILE) == openapi_json(),
            "{OPENAPI_FILE} differs from what the code generates; regenerate with `{REGENERATE}`"
        );
    }

    #[test]
    fn committed_model_schema_is_up_to_date() {
        assert!(
            committed(MODEL_SCHEMA_FILE) == model_schema_json(),
            "{MODEL_SCHEMA_FILE} differs from what the code generates; regenerate with `{REGENERATE}`"
        );
    }

    #[test]
    fn committed_config_schema_is_up_to_date() {
        let file = crate::config::CONFIG_SCHEMA_FILE;
        assert!(
            committed(file) == crate::config::json_schema(),
            "{file} differs from what the code generates; regenerate with `{REGENERATE}`"
        );
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
        // Every /v1 operation requires the bearer token.
        for (path, item) in doc["paths"].as_object().unwrap() {
            if !path.starts_with("/v1/") {
                continue;
            }
            for (method, op) in item.as_object().unwrap() {
                assert_eq!(op["security"], serde_json::json!([{"bearer": []}]), "{method} {path}");
            }
        }
    }
}
