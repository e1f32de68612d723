//! The adapter factory: everything the gateway needs to know about a vendor, said once, by the
//! vendor's crate.
//!
//! A vendor crate implements [`BackendFactory`] (typed: its `kind`, its config type with the
//! config type's JSON Schema, its secret settings, its checks and how to build its adapter).
//! The gateway's registry lists [`factory`]s of them as [`AdapterFactory`] trait objects, and
//! config parsing, the config schema, `<secret>_file` indirection and backend building all
//! follow from that list, so no other gateway file names a vendor. This is Quickwit's typed
//! source factory (`TypedSourceFactory` erased into `SourceFactory`) applied to adapters.
//!
//! ```text
//! [tenants.acme.backends.cb]      kind = "carbonblack"  →  the factory of that kind
//! url = "https://cb.example.com"  ──parse──▶ Box<dyn BackendSettings> (the typed config)
//! token_file = "/run/secrets/cb"  ──validate──▶ every problem, with its path
//!                                 ──build──▶ Arc<dyn Adapter>
//! ```

use std::any::Any;
use std::fmt::Debug;
use std::marker::PhantomData;
use std::sync::Arc;

use schemars::{JsonSchema, Schema, SchemaGenerator};
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::{Adapter, AdapterError};

/// A vendor backend as the gateway configures and builds it (implemented once per vendor
/// crate, on a unit struct).
pub trait BackendFactory: Send + Sync + 'static {
    /// The backend kind: `kind = "…"` in the config file, and the name the gateway reports.
    const KIND: &'static str;
    /// The settings of one backend (`deny_unknown_fields`; secrets as `secrecy::SecretString`,
    /// so `Debug` redacts them). Its doc comment and field docs become the config schema.
    type Config: DeserializeOwned + JsonSchema + Debug + Send + Sync + 'static;
    /// The settings of [`BackendFactory::Config`] that hold secrets. Each may then also be given
    /// as `<name>_file` (the path of a file holding it), and the config schema says so. A new
    /// secret that is not listed here cannot be read from a file: list every one.
    const SECRETS: &'static [&'static str];

    /// The vendor's own checks of the settings (no IO): every problem at once, each starting
    /// with the setting it is about (`url: …`), relative to the backend's table.
    fn validate(config: &Self::Config) -> Result<(), Vec<String>>;

    /// The backend's adapter, named `name` (the backend's name in its tenant).
    fn build(name: &str, config: Self::Config) -> Result<Arc<dyn Adapter>, AdapterError>;
}

/// [`BackendFactory`] without its types, for a list of every vendor.
pub trait AdapterFactory: Send + Sync + 'static {
    /// [`BackendFactory::KIND`].
    fn kind(&self) -> &'static str;
    /// [`BackendFactory::SECRETS`].
    fn secret_fields(&self) -> &'static [&'static str];
    /// The JSON Schema of one backend table of this kind, `kind` included (as a `const`, first
    /// in `properties` and `required`, as serde's internally tagged enums have it). Types it
    /// refers to are added to `generator`'s definitions.
    fn schema(&self, generator: &mut SchemaGenerator) -> Schema;
    /// Deserializes one backend table, given without its `kind`. The error is serde's message
    /// (`missing field `url``, `unknown field `x`, expected one of …`).
    fn parse(&self, table: Value) -> Result<Box<dyn BackendSettings>, String>;
}

/// One backend's parsed settings, of some kind.
pub trait BackendSettings: Debug + Send + Sync + 'static {
    fn kind(&self) -> &'static str;
    /// [`BackendFactory::validate`].
    fn validate(&self) -> Result<(), Vec<String>>;
    /// [`BackendFactory::build`].
    fn build(self: Box<Self>, name: &str) -> Result<Arc<dyn Adapter>, AdapterError>;
    /// The typed config (`F::Config`), for code that knows the vendor (its tests).
    fn as_any(&self) -> &dyn Any;
}

/// The erased form of factory `F`.
pub struct Factory<F>(PhantomData<fn() -> F>);

/// The factory of `F`, for the registry's list
/// (`static ADAPTERS: &[&dyn AdapterFactory] = &[&factory::<CarbonBlack>(), …]`).
pub const fn factory<F: BackendFactory>() -> Factory<F> {
    Factory(PhantomData)
}

impl<F: BackendFactory> AdapterFactory for Factory<F> {
    fn kind(&self) -> &'static str {
        F::KIND
    }

    fn secret_fields(&self) -> &'static [&'static str] {
        F::SECRETS
    }

    fn schema(&self, generator: &mut SchemaGenerator) -> Schema {
        let mut schema = F::Config::json_schema(generator);
        let object = schema.ensure_object();
        object.insert("type".to_owned(), "object".into());
        let properties =
            object.entry("properties").or_insert_with(|| Value::Object(Default::default()));
        if let Value::Object(properties) = properties {
            let fields = std::mem::take(properties);
            properties
                .insert("kind".to_owned(), serde_json::json!({"type": "string", "const": F::KIND}));
            properties.extend(fields.into_iter().filter(|(key, _)| key != "kind"));
        }
        let required = object.entry("required").or_insert_with(|| Value::Array(Vec::new()));
        if let Value::Array(required) = required {
            required.insert(0, "kind".into());
        }
        schema
    }

    fn parse(&self, table: Value) -> Result<Box<dyn BackendSettings>, String> {
        let config: F::Config = serde_json::from_value(table).map_err(|e| e.to_string())?;
        Ok(Box::new(Settings::<F>(config)))
    }
}

/// `F::Config` as [`BackendSettings`].
struct Settings<F: BackendFactory>(F::Config);

impl<F: BackendFactory> Debug for Settings<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl<F: BackendFactory> BackendSettings for Settings<F> {
    fn kind(&self) -> &'static str {
        F::KIND
    }

    fn validate(&self) -> Result<(), Vec<String>> {
        F::validate(&self.0)
    }

    fn build(self: Box<Self>, name: &str) -> Result<Arc<dyn Adapter>, AdapterError> {
        F::build(name, self.0)
    }

    fn as_any(&self) -> &dyn Any {
        &self.0
    }
}

/// The problems of a factory's declarations, for a test over the registry: every secret names
/// a setting of the config schema (a renamed secret would otherwise silently lose its
/// `<name>_file` form), and no secret is listed twice.
pub fn check(factory: &dyn AdapterFactory) -> Vec<String> {
    let kind = factory.kind();
    let mut problems = Vec::new();
    if kind.is_empty()
        || !kind.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
    {
        problems.push(format!("{kind:?}: a kind is lower-case letters, digits and '_'"));
    }
    let schema = factory.schema(&mut SchemaGenerator::default());
    let properties = schema.get("properties").and_then(Value::as_object);
    for (i, secret) in factory.secret_fields().iter().enumerate() {
        if !properties.is_some_and(|p| p.contains_key(*secret)) {
            problems.push(format!("{kind}: secret {secret:?} is not a setting of its config"));
        }
        if factory.secret_fields()[..i].contains(secret) {
            problems.push(format!("{kind}: secret {secret:?} is listed twice"));
        }
    }
    problems
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A vendor with no adapter (its `build` refuses), to test the erasure.
    struct Toy;

    /// A toy backend.
    #[derive(Debug, serde::Deserialize, JsonSchema)]
    #[serde(deny_unknown_fields)]
    struct ToyConfig {
        url: String,
        #[serde(default)]
        password: Option<String>,
    }

    impl BackendFactory for Toy {
        const KIND: &'static str = "toy";
        type Config = ToyConfig;
        const SECRETS: &'static [&'static str] = &["password"];

        fn validate(config: &ToyConfig) -> Result<(), Vec<String>> {
            if config.url.starts_with("https://") { Ok(()) } else { Err(vec!["url: https".into()]) }
        }

        fn build(name: &str, _: ToyConfig) -> Result<Arc<dyn Adapter>, AdapterError> {
            Err(AdapterError::new(crate::ErrorCode::Internal, format!("{name}: no toy adapter")))
        }
    }

    static TOY: &dyn AdapterFactory = &factory::<Toy>();

    #[test]
    fn the_erased_factory_parses_validates_and_describes_its_kind() {
        assert_eq!((TOY.kind(), TOY.secret_fields()), ("toy", &["password"][..]));
        let settings = TOY.parse(serde_json::json!({"url": "http://x"})).unwrap();
        assert_eq!(settings.kind(), "toy");
        assert_eq!(settings.validate(), Err(vec!["url: https".to_owned()]));
        let typed = settings.as_any().downcast_ref::<ToyConfig>().unwrap();
        assert_eq!((typed.url.as_str(), typed.password.as_deref()), ("http://x", None));
        let error = settings.build("lab").err().unwrap();
        assert_eq!(error.info.message, "lab: no toy adapter");

        let missing = TOY.parse(serde_json::json!({})).unwrap_err();
        assert_eq!(missing, "missing field `url`");
        let unknown = TOY.parse(serde_json::json!({"url": "u", "colour": 1})).unwrap_err();
        assert!(unknown.starts_with("unknown field `colour`, expected "), "{unknown}");

        let schema = serde_json::to_value(TOY.schema(&mut SchemaGenerator::default())).unwrap();
        assert_eq!(
            schema["properties"]["kind"],
            serde_json::json!({"type": "string", "const": "toy"})
        );
        assert_eq!(schema["required"], serde_json::json!(["kind", "url"]));
        assert_eq!(schema["additionalProperties"], false);
        assert!(check(TOY).is_empty(), "{:?}", check(TOY));
    }

    #[test]
    fn a_secret_that_is_not_a_setting_is_reported() {
        struct Typo;
        impl BackendFactory for Typo {
            const KIND: &'static str = "Typo";
            type Config = ToyConfig;
            const SECRETS: &'static [&'static str] = &["pasword", "password", "password"];
            fn validate(_: &ToyConfig) -> Result<(), Vec<String>> {
                Ok(())
            }
            fn build(name: &str, config: ToyConfig) -> Result<Arc<dyn Adapter>, AdapterError> {
                Toy::build(name, config)
            }
        }
        assert_eq!(
            check(&factory::<Typo>()),
            [
                "\"Typo\": a kind is lower-case letters, digits and '_'",
                "Typo: secret \"pasword\" is not a setting of its config",
                "Typo: secret \"password\" is listed twice",
            ]
        );
    }
}
