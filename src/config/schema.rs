//! The JSON Schema of the configuration file, generated from the types: the sections' derived
//! schemas and, for backends, a `oneOf` of every registered factory's schema, tagged by `kind`.

use super::Config;
use super::load::secret_settings;

/// Where the configuration's JSON Schema is committed (regenerated with the OpenAPI document).
pub const CONFIG_SCHEMA_FILE: &str = "schemas/config.schema.json";

/// The JSON Schema of the configuration file (for editors and CI checks of config repos). It
/// describes the file as written: every secret may be given as `<name>_file` instead.
pub fn json_schema() -> String {
    let schema = schemars::schema_for!(Config);
    let mut value = serde_json::to_value(&schema).unwrap_or_default();
    add_secret_files(&mut value);
    let mut text = serde_json::to_string_pretty(&value).unwrap_or_default();
    text.push('\n');
    text
}

fn add_secret_files(value: &mut serde_json::Value) {
    use serde_json::{Value, json};
    let Value::Object(object) = value else {
        if let Value::Array(items) = value {
            items.iter_mut().for_each(add_secret_files);
        }
        return;
    };
    if let Some(Value::Object(properties)) = object.get_mut("properties") {
        let mut either = Vec::new();
        for secret in secret_settings() {
            if properties.contains_key(*secret) {
                let file = format!("{secret}_file");
                properties.insert(
                    file.clone(),
                    json!({"type": "string", "description": format!("A file holding `{secret}` (one trailing newline ignored).")}),
                );
                either.push(((*secret).to_owned(), file));
            }
        }
        let mut alternatives = Vec::new();
        if let Some(Value::Array(required)) = object.get_mut("required") {
            for (secret, file) in &either {
                if let Some(at) = required.iter().position(|r| r == secret.as_str()) {
                    required.remove(at);
                    alternatives
                        .push(json!({"oneOf": [{"required": [secret]}, {"required": [file]}]}));
                }
            }
        }
        if !alternatives.is_empty() {
            object.insert("allOf".to_owned(), Value::Array(alternatives));
        }
    }
    for (_, v) in object.iter_mut() {
        add_secret_files(v);
    }
}
