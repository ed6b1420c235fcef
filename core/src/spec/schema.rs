//! `stagewise schema`: a JSON Schema (draft 2020-12) of `pipeline.toml`, so that editors
//! (Taplo, Even Better TOML) can complete keys and flag mistakes as they are typed.
//!
//! It is made from the same types the validator reads ([`crate::config`]) and from the kinds
//! registered in the runner, so it cannot drift from what `validate` accepts by key or type.
//! Each key's description (what an editor shows on hover) comes from the reference,
//! `docs/pipeline.md`, built into the binary: a test keeps that reference complete, so the
//! schema and the documentation say the same. Kinds the reference does not know (a custom
//! runner's) go without descriptions.
//! Checks beyond keys and types (a source first, `retry.initial` ≤ `retry.max`, a plugin's own
//! keys) remain `validate`'s.

use serde_json::{json, Value};

use super::types::{CheckpointSpec, PipelineSpec, PolicySpec};
use crate::config::schema_of;
use crate::registry::Registry;
use crate::stage::Role;

const DRAFT: &str = "https://json-schema.org/draft/2020-12/schema";

/// The reference, whose tables describe every builtin key.
const REFERENCE: &str = include_str!("../../../docs/pipeline.md");

/// The rows of the reference's key tables, by section: `"[pipeline]"`, `"[checkpoint]"`,
/// `"policy"` (the shared keys of `[defaults]` and stages) and each kind's name; each row is
/// `(key, default, meaning)` with the backquotes around the key removed.
fn reference_rows() -> Vec<(String, String, String, String)> {
    let mut rows = Vec::new();
    let mut section = String::new();
    for line in REFERENCE.lines() {
        if let Some(heading) = line
            .strip_prefix("## ")
            .or_else(|| line.strip_prefix("### "))
        {
            section = if heading.starts_with("`[defaults]`") {
                "policy".to_owned()
            } else {
                heading.split('`').nth(1).unwrap_or_default().to_owned()
            };
            continue;
        }
        let cells: Vec<&str> = line.split(" | ").collect();
        if section.is_empty() || cells.len() < 3 || !line.starts_with("| `") {
            continue;
        }
        let key = cells[0]
            .trim_start_matches("| ")
            .trim_matches('`')
            .to_owned();
        let meaning = cells[2..].join(" | ");
        let meaning = meaning.trim_end_matches(" |").trim().to_owned();
        rows.push((section.clone(), key, cells[1].trim().to_owned(), meaning));
    }
    rows
}

/// Give each property of `schema` the reference's description of `section`'s key (nested keys
/// such as `retry.attempts` go to the nested table's properties), unless it has one already.
fn describe(schema: &mut Value, section: &str, rows: &[(String, String, String, String)]) {
    for (row_section, key, default, meaning) in rows {
        if row_section != section {
            continue;
        }
        let mut target = &mut *schema;
        let mut parts = key.split('.').peekable();
        while let Some(part) = parts.next() {
            let Some(next) = target.get_mut("properties").and_then(|p| p.get_mut(part)) else {
                break;
            };
            if parts.peek().is_none() {
                if next.is_object() && next.get("description").is_none() {
                    let text = if default == "required" {
                        format!("{meaning} (required)")
                    } else {
                        format!("{meaning} (default: {})", default.replace('`', ""))
                    };
                    next["description"] = json!(text.replace('`', ""));
                }
                break;
            }
            target = next;
        }
    }
}

/// The JSON Schema of a pipeline file for the kinds in `registry`.
pub fn json_schema(registry: &Registry) -> Value {
    let rows = reference_rows();
    let mut policy = schema_of::<PolicySpec>();
    describe(&mut policy, "policy", &rows);
    let mut pipeline = schema_of::<PipelineSpec>();
    describe(&mut pipeline, "[pipeline]", &rows);
    let mut checkpoint = schema_of::<CheckpointSpec>();
    describe(&mut checkpoint, "[checkpoint]", &rows);
    // A custom `Deserialize` that takes either; the probe sees only "anything".
    pipeline["properties"]["max_failures"] = json!({
        "type": ["integer", "string"],
        "description": "a count (10) or a share of the batch (\"10%\")",
    });

    let kinds: Vec<&str> = registry.kinds().collect();
    let mut stage_properties = json!({
        "name": {
            "type": "string",
            "minLength": 1,
            "description": "unique; used in logs, `status`, the checkpoint and environment overrides",
        },
        "kind": {
            "enum": kinds,
            "description": "the stage's kind: its own keys follow it",
        },
    });
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
        describe(&mut schema, kind, &rows);
        // The branch checks the kind's own keys; the shared ones are typed on the stage itself
        // and only need to be known here, so that `additionalProperties` lets them through.
        let properties = schema["properties"]
            .as_object_mut()
            .expect("a kind's configuration is a table");
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
