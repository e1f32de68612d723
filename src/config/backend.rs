//! A tenant's backend (`[tenants.<tenant>.backends.<name>]`): its `kind` picks the vendor's
//! factory in [`crate::registry`], which parses the rest of the table into the vendor's typed
//! config, checks it and builds its adapter. Nothing here knows a vendor.

use std::borrow::Cow;
use std::sync::Arc;

use edrgate_adapter::factory::BackendSettings;
use edrgate_adapter::{Adapter, AdapterError};
use schemars::{JsonSchema, Schema, SchemaGenerator};
use serde::de::Error as _;
use serde::{Deserialize, Deserializer};
use serde_json::{Map, Value};

/// A vendor backend, tagged by `kind`.
#[derive(Debug)]
pub struct BackendConfig {
    settings: Box<dyn BackendSettings>,
}

impl BackendConfig {
    /// The backend kind (`carbonblack`, …).
    pub fn kind(&self) -> &'static str {
        self.settings.kind()
    }

    /// The vendor's own checks of its settings (no IO); each problem starts with the setting.
    pub fn validate(&self) -> Result<(), Vec<String>> {
        self.settings.validate()
    }

    /// The backend's adapter, named `name`.
    pub fn build(self, name: &str) -> Result<Arc<dyn Adapter>, AdapterError> {
        self.settings.build(name)
    }

    /// The vendor's typed config, for code that knows the vendor (its tests).
    pub fn settings<T: 'static>(&self) -> Option<&T> {
        self.settings.as_any().downcast_ref()
    }
}

impl<'de> Deserialize<'de> for BackendConfig {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let mut table = Map::<String, Value>::deserialize(deserializer)?;
        let kind = match table.remove("kind") {
            Some(Value::String(kind)) => kind,
            Some(other) => {
                return Err(D::Error::custom(format!("kind: {other} is not a string")));
            }
            None => return Err(D::Error::missing_field("kind")),
        };
        let Some(factory) = crate::registry::adapter(&kind) else {
            let known: Vec<&str> = crate::registry::adapters().iter().map(|f| f.kind()).collect();
            return Err(D::Error::custom(format!(
                "unknown kind {kind:?} (expected one of {})",
                known.join(", ")
            )));
        };
        let settings = factory.parse(Value::Object(table)).map_err(D::Error::custom)?;
        Ok(BackendConfig { settings })
    }
}

impl JsonSchema for BackendConfig {
    fn schema_name() -> Cow<'static, str> {
        "BackendConfig".into()
    }

    fn json_schema(generator: &mut SchemaGenerator) -> Schema {
        let kinds: Vec<Value> =
            crate::registry::adapters().iter().map(|f| f.schema(generator).to_value()).collect();
        schemars::json_schema!({
            "description": "A vendor backend, tagged by `kind`.",
            "oneOf": kinds,
        })
    }
}
