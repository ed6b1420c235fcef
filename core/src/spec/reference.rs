//! The key tables of the reference, `docs/pipeline.md`, made from the configuration types: each
//! key's row is its doc comment and its default (`x-default`, or "required"), in the order the
//! type declares its keys. A test keeps the committed page equal to what this makes, so a key
//! is documented once, on its type.

use serde_json::Value;

use super::types::{
    BreakerSpec, CheckpointSpec, PipelineSpec, PolicySpec, RetrySpec, StageKeys, TelemetrySpec,
};
use crate::config::{default_text, schema_of, struct_fields};
use crate::registry::Registry;

/// One key table: the section it documents (`[pipeline]`, `[checkpoint]`, `policy` for the
/// keys of `[defaults]` and every stage, or a kind's name) and the table in Markdown.
#[derive(Debug, Clone, PartialEq)]
pub struct KeyTable {
    /// What the table documents.
    pub section: String,
    /// `| key | default | meaning |` and a row per key.
    pub markdown: String,
}

/// The reference's key tables for the core sections and every kind in `registry`.
pub fn key_tables(registry: &Registry) -> Vec<KeyTable> {
    let mut policy = rows(
        &schema_of::<PolicySpec>(),
        struct_fields::<PolicySpec>(),
        "",
    );
    // `retry` is a table: its keys are documented one by one, as `retry.attempts` and so on.
    let retry_at = policy.iter().position(|r| r.starts_with("| `retry` |"));
    if let Some(at) = retry_at {
        let retry = rows(
            &schema_of::<RetrySpec>(),
            struct_fields::<RetrySpec>(),
            "retry.",
        );
        policy.splice(at..=at, retry);
    }
    // And so is `breaker`.
    let breaker_at = policy.iter().position(|r| r.starts_with("| `breaker` |"));
    if let Some(at) = breaker_at {
        let mut breaker = vec![policy[at].clone()];
        breaker.extend(rows(
            &schema_of::<BreakerSpec>(),
            struct_fields::<BreakerSpec>(),
            "breaker.",
        ));
        policy.splice(at..=at, breaker);
    }
    let mut tables = vec![
        table(
            "[pipeline]",
            rows(
                &schema_of::<PipelineSpec>(),
                struct_fields::<PipelineSpec>(),
                "",
            ),
        ),
        table(
            "[checkpoint]",
            rows(
                &schema_of::<CheckpointSpec>(),
                struct_fields::<CheckpointSpec>(),
                "",
            ),
        ),
        table(
            "[telemetry]",
            rows(
                &schema_of::<TelemetrySpec>(),
                struct_fields::<TelemetrySpec>(),
                "",
            ),
        ),
        table("policy", policy),
        table(
            "[[stage]]",
            rows(&schema_of::<StageKeys>(), struct_fields::<StageKeys>(), ""),
        ),
    ];
    for kind in registry.kinds() {
        let dyn_kind = registry.get(kind).expect("listed by the registry");
        let keys = dyn_kind.keys();
        if keys.is_empty() {
            continue;
        }
        tables.push(table(kind, rows(&dyn_kind.schema(), keys, "")));
    }
    tables
}

fn table(section: &str, rows: Vec<String>) -> KeyTable {
    let mut markdown = String::from("| key | default | meaning |\n|---|---|---|\n");
    for row in rows {
        markdown.push_str(&row);
        markdown.push('\n');
    }
    KeyTable {
        section: section.to_owned(),
        markdown,
    }
}

/// A row per key of `schema`, in `order`.
fn rows(schema: &Value, order: &[&str], prefix: &str) -> Vec<String> {
    order
        .iter()
        .map(|key| {
            let doc = schema["properties"][key]["description"]
                .as_str()
                .unwrap_or_default()
                .split_whitespace()
                .collect::<Vec<_>>()
                .join(" ");
            let default = default_text(schema, key);
            format!("| `{prefix}{key}` | {default} | {doc} |")
        })
        .collect()
}
