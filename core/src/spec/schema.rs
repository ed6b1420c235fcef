//! `stagewise schema`: a JSON Schema (draft 2020-12) of `pipeline.toml`, so that editors
//! (Taplo, Even Better TOML) can complete keys and flag mistakes as they are typed.
//!
//! It is made from the same types the validator reads ([`crate::config`]) and from the kinds
//! registered in the runner, so it cannot drift from what `validate` accepts by key or type.
//! Each key's description (what an editor shows on hover) is its doc comment with its default:
//! the same text as its row in the reference, `docs/pipeline.md`, which is made from the same
//! types ([`super::reference`]). A custom runner's kinds are described the same way.
//! Checks beyond keys and types (a source first, `retry.initial` ≤ `retry.max`, a plugin's own
//! keys) remain `validate`'s.

use serde_json::{json, Value};

use super::types::{CheckpointSpec, PipelineSpec, PolicySpec, StageKeys, TelemetrySpec};
use crate::config::{default_text, schema_of};
use crate::registry::Registry;
use crate::stage::Role;

const DRAFT: &str = "https://json-schema.org/draft/2020-12/schema";

/// Make each key's description what an editor shows on hover: its doc comment as plain text,
/// with its default. Nested tables (`retry`) too.
fn describe(schema: &mut Value) {
    let whole = schema.clone();
    if let Some(properties) = schema.get_mut("properties").and_then(Value::as_object_mut) {
        for (key, property) in properties.iter_mut() {
            if let Some(doc) = property.get("description").and_then(Value::as_str) {
                let plain = doc.replace('\n', " ").replace('`', "");
                let text = match default_text(&whole, key).as_str() {
                    "required" => format!("{plain} (required)"),
                    default => format!("{plain} (default: {})", default.replace('`', "")),
                };
                property["description"] = json!(text);
            }
            describe(property);
        }
    }
    for alternatives in ["anyOf", "oneOf"] {
        if let Some(list) = schema.get_mut(alternatives).and_then(Value::as_array_mut) {
            list.iter_mut().for_each(describe);
        }
    }
}

/// The JSON Schema of a pipeline file for the kinds in `registry`.
pub fn json_schema(registry: &Registry) -> Value {
    let mut policy = schema_of::<PolicySpec>();
    describe(&mut policy);
    let mut pipeline = schema_of::<PipelineSpec>();
    describe(&mut pipeline);
    let mut checkpoint = schema_of::<CheckpointSpec>();
    describe(&mut checkpoint);
    let mut telemetry = schema_of::<TelemetrySpec>();
    describe(&mut telemetry);

    let kinds: Vec<&str> = registry.kinds().collect();
    let mut header = schema_of::<StageKeys>();
    describe(&mut header);
    header["properties"]["kind"]["enum"] = json!(kinds);
    let mut stage_properties = header["properties"].take();
    let shared = policy["properties"]
        .as_object()
        .cloned()
        .unwrap_or_default();
    stage_properties
        .as_object_mut()
        .expect("built as an object")
        .extend(shared.clone());

    let mut defs = serde_json::Map::new();
    let mut branches = Vec::new();
    for kind in &kinds {
        let dyn_kind = registry.get(kind).expect("listed by the registry");
        let mut schema = dyn_kind.schema();
        describe(&mut schema);
        // The branch checks the kind's own keys; the shared ones are typed on the stage itself
        // and only need to be known here, so that `additionalProperties` lets them through.
        if !schema["properties"].is_object() {
            // A kind with no keys of its own (`blackhole`).
            schema["properties"] = json!({});
        }
        let properties = schema["properties"]
            .as_object_mut()
            .expect("made an object above");
        for key in shared.keys().map(String::as_str).chain(["name", "kind"]) {
            properties.insert(key.to_owned(), json!(true));
        }
        let roles: Vec<&str> = dyn_kind.roles().iter().map(|r| Role::as_str(*r)).collect();
        schema["description"] = json!(format!(
            "the keys of `{kind}` stages ({})",
            roles.join(" or ")
        ));
        let name = format!("kind-{kind}");
        branches.push(json!({
            "if": { "properties": { "kind": { "const": kind } }, "required": ["kind"] },
            "then": { "$ref": format!("#/$defs/{name}") },
        }));
        defs.insert(name, schema);
    }
    defs.insert("policy".to_owned(), policy);
    defs.insert(
        "stage".to_owned(),
        json!({
            "type": "object",
            "description": "one stage: a `name`, a `kind`, the policy keys of `[defaults]`, and its kind's own keys",
            "properties": stage_properties,
            "required": ["name", "kind"],
            "allOf": branches,
        }),
    );

    json!({
        "$schema": DRAFT,
        "title": "stagewise pipeline.toml",
        "description": "A stagewise pipeline. `stagewise validate` checks what a schema cannot; docs/pipeline.md documents every key.",
        "type": "object",
        "properties": {
            "pipeline": with_description(pipeline, "the run as a whole"),
            "checkpoint": with_description(checkpoint, "where progress is saved"),
            "telemetry": with_description(telemetry, "metrics for Prometheus, served and pushed"),
            "defaults": {
                "$ref": "#/$defs/policy",
                "description": "policy keys every stage inherits unless it sets its own",
            },
            "stage": {
                "type": "array",
                "minItems": 1,
                "items": { "$ref": "#/$defs/stage" },
                "description": "the stages in order: a source first, a sink (if any) last",
            },
        },
        "required": ["pipeline", "stage"],
        "additionalProperties": false,
        "$defs": defs,
    })
}

fn with_description(mut schema: Value, description: &str) -> Value {
    schema["description"] = json!(description);
    schema
}
