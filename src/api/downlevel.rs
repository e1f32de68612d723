//! The OpenAPI 3.1 document rendered for clients that read older versions: OpenAPI 3.0.3
//! (Shuffle parses 3.0 only; n8n's generators) and Swagger 2.0 (Logic Apps custom connectors,
//! XSOAR's `openapi-codegen`). See shared/vendor-apis/front-doors.md §3.2 and §3.5.
//!
//! Both are pure functions of the 3.1 document: what an older version cannot say is said the
//! closest way it can (3.1 `type: [X, "null"]` → 3.0 `nullable: true` → 2.0 `x-nullable`),
//! or dropped when it only narrows (`dependentRequired`, `contentMediaType`).

use serde_json::{Map, Value, json};

/// OpenAPI 3.1 → 3.0.3.
pub fn to_openapi_30(doc: &Value) -> Value {
    let mut out = doc.clone();
    out["openapi"] = json!("3.0.3");
    if let Some(info) = out.get_mut("info").and_then(Value::as_object_mut) {
        info.remove("summary");
        if let Some(license) = info.get_mut("license").and_then(Value::as_object_mut) {
            // 3.0 licenses have a `url`, not an SPDX `identifier`.
            if let Some(Value::String(id)) = license.remove("identifier") {
                license.insert("url".into(), json!(format!("https://spdx.org/licenses/{id}.html")));
            }
        }
    }
    if let Some(map) = out.as_object_mut() {
        map.remove("webhooks");
        map.remove("jsonSchemaDialect");
    }
    if let Some(schemas) = out.pointer_mut("/components/schemas") {
        for_each_schema_map(schemas, schema_30);
    }
    if let Some(paths) = out.get_mut("paths").and_then(Value::as_object_mut) {
        for item in paths.values_mut() {
            for op in operations_mut(item) {
                for param in
                    op.get_mut("parameters").and_then(Value::as_array_mut).into_iter().flatten()
                {
                    if let Some(schema) = param.get_mut("schema") {
                        schema_30(schema);
                    }
                }
                for content in contents_mut(op) {
                    if let Some(schema) = content.get_mut("schema") {
                        schema_30(schema);
                    }
                }
                for header in headers_mut(op) {
                    if let Some(schema) = header.get_mut("schema") {
                        schema_30(schema);
                    }
                }
            }
        }
    }
    out
}

fn for_each_schema_map(schemas: &mut Value, f: fn(&mut Value)) {
    if let Some(map) = schemas.as_object_mut() {
        map.values_mut().for_each(f);
    }
}

/// One JSON Schema 2020-12 (OpenAPI 3.1) schema as an OpenAPI 3.0 schema object, recursively.
fn schema_30(schema: &mut Value) {
    let Some(map) = schema.as_object_mut() else { return };
    // `type: [X, "null"]` → `type: X, nullable: true`.
    if let Some(Value::Array(types)) = map.get("type").cloned() {
        let (nulls, others): (Vec<Value>, Vec<Value>) =
            types.into_iter().partition(|t| t == "null");
        if !nulls.is_empty() {
            map.insert("nullable".into(), json!(true));
        }
        match others.len() {
            0 => {
                map.remove("type");
            }
            1 => {
                map.insert("type".into(), others[0].clone());
            }
            _ => {
                map.remove("type");
                let any: Vec<Value> = others.into_iter().map(|t| json!({"type": t})).collect();
                map.insert("anyOf".into(), Value::Array(any));
            }
        }
    }
    if map.get("type") == Some(&json!("null")) {
        map.remove("type");
        map.insert("nullable".into(), json!(true));
    }
    // `oneOf`/`anyOf` with a `{"type": "null"}` branch → the other branches, nullable.
    for key in ["oneOf", "anyOf"] {
        if let Some(Value::Array(branches)) = map.get_mut(key) {
            let before = branches.len();
            branches.retain(|b| b != &json!({"type": "null"}));
            if branches.len() != before {
                map.insert("nullable".into(), json!(true));
                if let Some(Value::Array(branches)) = map.get(key)
                    && branches.len() == 1
                {
                    // 3.0 ignores `nullable` beside a `$ref`; under `allOf` it counts.
                    let only = branches[0].clone();
                    map.remove(key);
                    map.insert("allOf".into(), json!([only]));
                }
            }
        }
    }
    // A `$ref` with siblings: 3.0 ignores the siblings, so keep the ref under `allOf`.
    if map.len() > 1
        && let Some(reference) = map.remove("$ref")
    {
        map.insert("allOf".into(), json!([{ "$ref": reference }]));
    }
    if let Some(value) = map.remove("const") {
        map.insert("enum".into(), json!([value]));
    }
    for (exclusive, bound) in [("exclusiveMinimum", "minimum"), ("exclusiveMaximum", "maximum")] {
        if let Some(value) = map.get(exclusive).filter(|v| v.is_number()).cloned() {
            map.insert(bound.into(), value);
            map.insert(exclusive.into(), json!(true));
        }
    }
    if let Some(Value::Array(examples)) = map.remove("examples")
        && let Some(first) = examples.into_iter().next()
    {
        map.insert("example".into(), first);
    }
    for key in [
        "$schema",
        "$id",
        "$defs",
        "contentMediaType",
        "contentEncoding",
        "dependentRequired",
        "dependentSchemas",
        "unevaluatedProperties",
        "propertyNames",
        "prefixItems",
    ] {
        map.remove(key);
    }
    recurse(map, schema_30);
}

/// Applies `f` to every subschema of `map`.
fn recurse(map: &mut Map<String, Value>, f: fn(&mut Value)) {
    for key in ["items", "additionalProperties", "not"] {
        if let Some(sub) = map.get_mut(key).filter(|s| s.is_object()) {
            f(sub);
        }
    }
    for key in ["allOf", "oneOf", "anyOf"] {
        if let Some(Value::Array(subs)) = map.get_mut(key) {
            subs.iter_mut().for_each(f);
        }
    }
    if let Some(Value::Object(properties)) = map.get_mut("properties") {
        properties.values_mut().for_each(f);
    }
}

const METHODS: [&str; 8] = ["get", "put", "post", "delete", "options", "head", "patch", "trace"];

fn operations_mut(item: &mut Value) -> impl Iterator<Item = &mut Value> {
    item.as_object_mut()
        .into_iter()
        .flat_map(|m| m.iter_mut())
        .filter(|(k, _)| METHODS.contains(&k.as_str()))
        .map(|(_, v)| v)
}

/// The media type objects of an operation's request body and responses.
fn contents_mut(op: &mut Value) -> Vec<&mut Value> {
    let mut out = Vec::new();
    let Some(op) = op.as_object_mut() else { return out };
    for (key, value) in op.iter_mut() {
        match key.as_str() {
            "requestBody" => {
                if let Some(content) = value.get_mut("content").and_then(Value::as_object_mut) {
                    out.extend(content.values_mut());
                }
            }
            "responses" => {
                for response in value.as_object_mut().into_iter().flat_map(|r| r.values_mut()) {
                    if let Some(content) =
                        response.get_mut("content").and_then(Value::as_object_mut)
                    {
                        out.extend(content.values_mut());
                    }
                }
            }
            _ => {}
        }
    }
    out
}

fn headers_mut(op: &mut Value) -> Vec<&mut Value> {
    let mut out = Vec::new();
    if let Some(responses) = op.get_mut("responses").and_then(Value::as_object_mut) {
        for response in responses.values_mut() {
            if let Some(headers) = response.get_mut("headers").and_then(Value::as_object_mut) {
                out.extend(headers.values_mut());
            }
        }
    }
    out
}

/// OpenAPI 3.0 (as [`to_openapi_30`] makes it) → Swagger 2.0.
///
/// What 2.0 cannot say: `oneOf`/`anyOf` become one object with every branch's properties (Logic
/// Apps refuses `oneOf`; the `type` discriminator of `Command` stays an enum); bearer auth is an
/// `apiKey` in `Authorization` (the value is `Bearer <token>`); of several request media
/// types the JSON one is kept, else `multipart/form-data` as `formData` fields.
pub fn to_swagger_20(doc30: &Value) -> Value {
    let server =
        doc30.pointer("/servers/0/url").and_then(Value::as_str).unwrap_or("http://localhost");
    let (scheme, rest) = server.split_once("://").unwrap_or(("https", server));
    let (host, base_path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let schemas = doc30.pointer("/components/schemas").cloned().unwrap_or_else(|| json!({}));
    let mut definitions = schemas.clone();
    if let Some(map) = definitions.as_object_mut() {
        for schema in map.values_mut() {
            schema_20(schema, &schemas);
        }
    }
    let mut paths = Map::new();
    for (path, item) in doc30.get("paths").and_then(Value::as_object).into_iter().flatten() {
        let mut out_item = Map::new();
        for (method, op) in item.as_object().into_iter().flatten() {
            if METHODS.contains(&method.as_str()) {
                out_item.insert(method.clone(), operation_20(op, &schemas));
            }
        }
        paths.insert(path.clone(), Value::Object(out_item));
    }
    let mut security_definitions = Map::new();
    for (name, scheme_def) in doc30
        .pointer("/components/securitySchemes")
        .and_then(Value::as_object)
        .into_iter()
        .flatten()
    {
        let description = scheme_def.get("description").and_then(Value::as_str).unwrap_or("");
        security_definitions.insert(
            name.clone(),
            json!({
                "type": "apiKey",
                "name": "Authorization",
                "in": "header",
                "description": format!("`Bearer <token>`. {description}"),
            }),
        );
    }
    let mut out = json!({
        "swagger": "2.0",
        "info": doc30.get("info").cloned().unwrap_or_else(|| json!({})),
        "host": host,
        "basePath": base_path,
        "schemes": [scheme],
        "consumes": ["application/json"],
        "produces": ["application/json"],
        "paths": paths,
        "definitions": definitions,
        "securityDefinitions": security_definitions,
    });
    for key in ["security", "tags", "externalDocs"] {
        if let Some(value) = doc30.get(key) {
            out[key] = value.clone();
        }
    }
    rewrite_refs(&mut out);
    out
}

fn rewrite_refs(value: &mut Value) {
    match value {
        Value::Object(map) => {
            for (key, v) in map.iter_mut() {
                if key == "$ref"
                    && let Value::String(target) = v
                    && let Some(name) = target.strip_prefix("#/components/schemas/")
                {
                    *target = format!("#/definitions/{name}");
                } else {
                    rewrite_refs(v);
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(rewrite_refs),
        _ => {}
    }
}

/// A 3.0 schema as a 2.0 one: `nullable` → `x-nullable`, `oneOf`/`anyOf` merged.
fn schema_20(schema: &mut Value, schemas: &Value) {
    let Some(map) = schema.as_object_mut() else { return };
    if let Some(nullable) = map.remove("nullable") {
        map.insert("x-nullable".into(), nullable);
    }
    for key in ["oneOf", "anyOf"] {
        if let Some(Value::Array(branches)) = map.remove(key) {
            merge_branches(map, branches, schemas);
        }
    }
    for key in ["writeOnly", "deprecated"] {
        map.remove(key);
    }
    // 2.0 `additionalProperties` may be a schema or a boolean; `items` must be one schema.
    if let Some(Value::Object(properties)) = map.get_mut("properties") {
        for sub in properties.values_mut() {
            schema_20(sub, schemas);
        }
    }
    for key in ["items", "additionalProperties"] {
        if let Some(sub) = map.get_mut(key).filter(|s| s.is_object()) {
            schema_20(sub, schemas);
        }
    }
    if let Some(Value::Array(subs)) = map.get_mut("allOf") {
        for sub in subs {
            schema_20(sub, schemas);
        }
    }
}

/// Merges `oneOf` branches into `map`: one object with every branch's properties (an enum
/// property keeps every branch's values), required only where every branch requires it.
/// Branches that are not objects (a `$ref` to an enum, a scalar) yield the first of them.
fn merge_branches(map: &mut Map<String, Value>, branches: Vec<Value>, schemas: &Value) {
    let resolved: Vec<Value> = branches.iter().map(|b| resolve(b, schemas)).collect();
    let objects = resolved.iter().all(|b| b.get("properties").is_some());
    if !objects {
        if let Some(first) = branches.into_iter().next() {
            if first.get("$ref").is_some() {
                map.insert("allOf".into(), json!([first]));
            } else if let Value::Object(first) = first {
                for (k, v) in first {
                    map.entry(k).or_insert(v);
                }
            }
        }
        return;
    }
    let mut properties = Map::new();
    let mut required: Option<Vec<Value>> = None;
    for branch in &resolved {
        for (name, property) in branch["properties"].as_object().into_iter().flatten() {
            match properties.get_mut(name) {
                None => {
                    properties.insert(name.clone(), property.clone());
                }
                Some(existing) => {
                    if let (Some(Value::Array(have)), Some(Value::Array(more))) =
                        (existing.get_mut("enum"), property.get("enum"))
                    {
                        for value in more {
                            if !have.contains(value) {
                                have.push(value.clone());
                            }
                        }
                    }
                }
            }
        }
        let here: Vec<Value> =
            branch.get("required").and_then(Value::as_array).cloned().unwrap_or_default();
        required = Some(match required {
            None => here,
            Some(before) => before.into_iter().filter(|r| here.contains(r)).collect(),
        });
    }
    map.insert("type".into(), json!("object"));
    let mut properties = Value::Object(properties);
    if let Some(props) = properties.as_object_mut() {
        for sub in props.values_mut() {
            schema_20(sub, schemas);
        }
    }
    map.insert("properties".into(), properties);
    if let Some(required) = required.filter(|r| !r.is_empty()) {
        map.insert("required".into(), Value::Array(required));
    }
}

/// `schema`, or the component it references.
fn resolve(schema: &Value, schemas: &Value) -> Value {
    match schema.get("$ref").and_then(Value::as_str) {
        Some(target) => target
            .strip_prefix("#/components/schemas/")
            .and_then(|name| schemas.get(name))
            .cloned()
            .unwrap_or_else(|| schema.clone()),
        None => schema.clone(),
    }
}

/// The keywords a 2.0 non-body parameter or header takes from its schema.
const SIMPLE_KEYWORDS: [&str; 14] = [
    "type",
    "format",
    "items",
    "default",
    "maximum",
    "exclusiveMaximum",
    "minimum",
    "exclusiveMinimum",
    "maxLength",
    "minLength",
    "pattern",
    "enum",
    "maxItems",
    "minItems",
];

/// A 3.0 parameter or header schema flattened into a 2.0 parameter/header (no `$ref` there).
fn simple(schema: &Value, schemas: &Value, into: &mut Map<String, Value>) {
    let mut schema = resolve(schema, schemas);
    if let Some(Value::Array(all)) = schema.get("allOf").cloned()
        && let Some(first) = all.first()
    {
        schema = resolve(first, schemas);
    }
    for key in SIMPLE_KEYWORDS {
        if let Some(value) = schema.get(key) {
            into.insert(key.into(), value.clone());
        }
    }
    if let Some(example) = schema.get("example") {
        into.insert("x-example".into(), example.clone());
    }
    into.entry("type").or_insert_with(|| json!("string"));
    if into.get("type") == Some(&json!("array")) {
        into.entry("items").or_insert_with(|| json!({"type": "string"}));
    }
}

fn operation_20(op: &Value, schemas: &Value) -> Value {
    let mut out = Map::new();
    for key in ["tags", "summary", "description", "operationId", "deprecated", "security"] {
        if let Some(value) = op.get(key) {
            out.insert(key.into(), value.clone());
        }
    }
    let mut parameters = Vec::new();
    for param in op.get("parameters").and_then(Value::as_array).into_iter().flatten() {
        let mut p = Map::new();
        for key in ["name", "in", "description", "required"] {
            if let Some(value) = param.get(key) {
                p.insert(key.into(), value.clone());
            }
        }
        if let Some(schema) = param.get("schema") {
            simple(schema, schemas, &mut p);
        }
        if let Some(example) = param.get("example") {
            p.insert("x-example".into(), example.clone());
        }
        parameters.push(Value::Object(p));
    }
    if let Some(content) = op.pointer("/requestBody/content").and_then(Value::as_object) {
        let required = op.pointer("/requestBody/required").cloned().unwrap_or(json!(false));
        let description = op.pointer("/requestBody/description").cloned();
        if let Some(json_body) = content.get("application/json") {
            let mut schema = json_body.get("schema").cloned().unwrap_or_else(|| json!({}));
            schema_20(&mut schema, schemas);
            if let (Some(example), Some(map)) = (json_body.get("example"), schema.as_object_mut()) {
                map.insert("example".into(), example.clone());
            }
            let mut body =
                json!({"name": "body", "in": "body", "required": required, "schema": schema});
            if let Some(description) = description {
                body["description"] = description;
            }
            parameters.push(body);
            out.insert("consumes".into(), json!(["application/json"]));
        } else if let Some(form) = content.get("multipart/form-data") {
            let form = resolve(form.get("schema").unwrap_or(&Value::Null), schemas);
            for (name, property) in
                form.get("properties").and_then(Value::as_object).into_iter().flatten()
            {
                let binary = property.get("format") == Some(&json!("binary"));
                let mut p = json!({"name": name, "in": "formData", "required": true});
                if binary {
                    p["type"] = json!("file");
                } else if let Some(map) = p.as_object_mut() {
                    simple(property, schemas, map);
                }
                parameters.push(p);
            }
            out.insert("consumes".into(), json!(["multipart/form-data"]));
        } else if let Some((media_type, _)) = content.iter().next() {
            parameters.push(json!({
                "name": "body", "in": "body", "required": required,
                "schema": {"type": "string", "format": "binary"},
            }));
            out.insert("consumes".into(), json!([media_type]));
        }
    }
    if !parameters.is_empty() {
        out.insert("parameters".into(), Value::Array(parameters));
    }
    let mut produces: Vec<Value> = Vec::new();
    let mut responses = Map::new();
    for (status, response) in op.get("responses").and_then(Value::as_object).into_iter().flatten() {
        let mut r = Map::new();
        r.insert(
            "description".into(),
            response.get("description").cloned().unwrap_or_else(|| json!("")),
        );
        if let Some(content) = response.get("content").and_then(Value::as_object) {
            for media_type in content.keys() {
                if !produces.contains(&json!(media_type)) {
                    produces.push(json!(media_type));
                }
            }
            // One schema per response in 2.0: the JSON one where there is one.
            let chosen = content
                .iter()
                .find(|(mt, _)| mt.contains("json") && !mt.contains("ndjson"))
                .or_else(|| content.iter().next());
            if let Some((media_type, media)) = chosen {
                let binary = !media_type.contains("json");
                let mut schema = if binary {
                    // `type: file` is what 2.0 names it, but validators refuse it beside
                    // JSON media types; a binary string says the same.
                    json!({"type": "string", "format": "binary"})
                } else {
                    media.get("schema").cloned().unwrap_or_else(|| json!({}))
                };
                schema_20(&mut schema, schemas);
                r.insert("schema".into(), schema);
                if let Some(example) = media.get("example") {
                    r.insert("examples".into(), json!({ media_type: example }));
                }
            }
        }
        if let Some(headers) = response.get("headers").and_then(Value::as_object) {
            let mut h = Map::new();
            for (name, header) in headers {
                let mut out_header = Map::new();
                if let Some(description) = header.get("description") {
                    out_header.insert("description".into(), description.clone());
                }
                if let Some(schema) = header.get("schema") {
                    simple(schema, schemas, &mut out_header);
                }
                out_header.remove("x-example");
                h.insert(name.clone(), Value::Object(out_header));
            }
            r.insert("headers".into(), Value::Object(h));
        }
        responses.insert(status.clone(), Value::Object(r));
    }
    if !produces.is_empty() {
        out.insert("produces".into(), Value::Array(produces));
    }
    out.insert("responses".into(), Value::Object(responses));
    Value::Object(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nullable_types_refs_and_bounds_go_down_to_30() {
        let mut schema = json!({
            "type": "object",
            "properties": {
                "a": {"type": ["string", "null"], "examples": ["x"]},
                "b": {"oneOf": [{"type": "null"}, {"$ref": "#/components/schemas/B"}]},
                "c": {"type": "integer", "exclusiveMinimum": 0},
                "d": {"const": "k"},
            }
        });
        schema_30(&mut schema);
        let p = &schema["properties"];
        assert_eq!(p["a"], json!({"type": "string", "nullable": true, "example": "x"}));
        assert_eq!(
            p["b"],
            json!({"allOf": [{"$ref": "#/components/schemas/B"}], "nullable": true})
        );
        assert_eq!(p["c"], json!({"type": "integer", "minimum": 0, "exclusiveMinimum": true}));
        assert_eq!(p["d"], json!({"enum": ["k"]}));
    }

    #[test]
    fn one_of_objects_merge_for_20() {
        let mut schema = json!({"oneOf": [
            {"type": "object", "required": ["type"], "properties": {"type": {"type": "string", "enum": ["a"]}}},
            {"type": "object", "required": ["type", "path"], "properties": {
                "type": {"type": "string", "enum": ["b"]}, "path": {"type": "string"}}},
        ]});
        schema_20(&mut schema, &json!({}));
        assert_eq!(schema["type"], "object");
        assert_eq!(schema["required"], json!(["type"]));
        assert_eq!(schema["properties"]["type"]["enum"], json!(["a", "b"]));
        assert!(schema["properties"]["path"].is_object());
        assert!(schema.get("oneOf").is_none());
    }
}
