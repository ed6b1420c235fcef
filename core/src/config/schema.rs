//! The JSON Schema of a configuration type, from its `JsonSchema` derive: its keys and their
//! types, the required ones, unknown keys refused (`deny_unknown_fields`), and each key's
//! description from its doc comment, with its default as `x-default` where it has one.

use schemars::generate::SchemaSettings;
use schemars::JsonSchema;
use serde_json::Value;

/// `T`'s schema as one self-contained object: nested types inlined, no `$schema`, `title` or
/// `$defs`, so it can be placed inside another schema.
pub(crate) fn schema_of<T: JsonSchema>() -> Value {
    let generator = SchemaSettings::draft2020_12()
        .with(|s| s.inline_subschemas = true)
        .into_generator();
    let mut value = generator.into_root_schema_for::<T>().to_value();
    if let Some(object) = value.as_object_mut() {
        for key in ["$schema", "title", "$defs"] {
            object.remove(key);
        }
    }
    drop_serde_defaults(&mut value);
    value
}

/// Remove the `default` values schemars takes from `#[serde(default)]`: `null` for an unset
/// option, a size serialized as "9.5 MiB" for 10 MB. An editor would offer them as the
/// defaults; the real ones are described in words (`x-default`), where the code resolves them.
fn drop_serde_defaults(value: &mut Value) {
    match value {
        Value::Object(object) => {
            object.remove("default");
            object.values_mut().for_each(drop_serde_defaults);
        }
        Value::Array(items) => items.iter_mut().for_each(drop_serde_defaults),
        _ => {}
    }
}

/// The text of a key's default as the reference shows it: its `x-default`, or "required" when
/// the key must be given, or "none".
pub(crate) fn default_text(object: &Value, key: &str) -> String {
    let required = object["required"]
        .as_array()
        .is_some_and(|r| r.iter().any(|k| k == key));
    match object["properties"][key]["x-default"].as_str() {
        Some(text) => text.to_owned(),
        None if required => "required".to_owned(),
        None => "none".to_owned(),
    }
}
