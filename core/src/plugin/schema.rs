//! The host's check of a plugin stage's keys against the JSON Schema its kind declares, so that
//! `stagewise validate` reports an unknown key or a wrong type of a plugin stage like a
//! builtin's: with its key path (and so its line and column) and a "did you mean".
//!
//! It checks a subset of JSON Schema, the one a configuration table needs: `type` (a name or a
//! list), `enum`, `const`, `properties`, `required`, `additionalProperties` (a boolean or a
//! schema), `items`, `minimum`, `maximum`, `exclusiveMinimum`, `exclusiveMaximum`,
//! `minLength`, `maxLength`, `minItems`, `maxItems`. Other keywords (`pattern`, `$ref`,
//! `oneOf`, …) are not checked here; the plugin's own parsing of its configuration still
//! rejects a bad value when the stage is built, before any item runs.
//!
//! Why not the `jsonschema` crate, which the `llm` stage uses for model answers: core is what
//! every runner links, custom ones included, and that crate would add a regex engine and
//! reference resolution to it for keywords a stage table does not need; its errors would still
//! have to be turned into key paths, house-style messages and "did you mean" suggestions, which
//! this walk produces directly.
//!
//! One deliberate difference from JSON Schema: at the top level a schema without
//! `additionalProperties` is closed, because an unknown key in `pipeline.toml` is always an
//! error in stagewise.

use serde_json::Value;

use crate::config::{KeyProblem, KeyProblemKind};

/// Every problem of `config` (a stage's own keys as JSON) against `schema`.
pub(crate) fn check(config: &Value, schema: &Value) -> Vec<KeyProblem> {
    let mut out = Vec::new();
    walk(config, schema, &mut Vec::new(), true, &mut out);
    out
}

fn walk(
    value: &Value,
    schema: &Value,
    path: &mut Vec<String>,
    root: bool,
    out: &mut Vec<KeyProblem>,
) {
    let Some(schema) = schema.as_object() else {
        // `true` (or anything that is not an object) accepts every value; `false` none.
        if schema == &Value::Bool(false) {
            invalid(out, path, format!("{} is not allowed", name(path)));
        }
        return;
    };
    if let Some(types) = schema.get("type") {
        let wanted: Vec<&str> = match types {
            Value::String(t) => vec![t.as_str()],
            Value::Array(ts) => ts.iter().filter_map(Value::as_str).collect(),
            _ => Vec::new(),
        };
        if !wanted.is_empty() && !wanted.iter().any(|t| has_type(value, t)) {
            let expected: Vec<&str> = wanted.iter().map(|t| type_phrase(t)).collect();
            invalid(
                out,
                path,
                format!(
                    "{} must be {}, not {}",
                    name(path),
                    expected.join(" or "),
                    found(value)
                ),
            );
            return;
        }
    }
    if let Some(Value::Array(allowed)) = schema.get("enum") {
        if !allowed.contains(value) {
            let shown: Vec<String> = allowed.iter().map(|v| format!("`{}`", plain(v))).collect();
            invalid(
                out,
                path,
                format!("{} must be one of {}", name(path), shown.join(", ")),
            );
        }
    }
    if let Some(wanted) = schema.get("const") {
        if wanted != value {
            invalid(
                out,
                path,
                format!("{} must be `{}`", name(path), plain(wanted)),
            );
        }
    }
    match value {
        Value::Number(n) => {
            if let Some(x) = n.as_f64() {
                number_bounds(x, schema, path, out);
            }
        }
        Value::String(s) => {
            let len = s.chars().count() as u64;
            if let Some(min) = schema.get("minLength").and_then(Value::as_u64) {
                if len < min {
                    invalid(
                        out,
                        path,
                        format!("{} must be at least {min} characters long", name(path)),
                    );
                }
            }
            if let Some(max) = schema.get("maxLength").and_then(Value::as_u64) {
                if len > max {
                    invalid(
                        out,
                        path,
                        format!("{} must be at most {max} characters long", name(path)),
                    );
                }
            }
        }
        Value::Array(items) => {
            let len = items.len() as u64;
            if let Some(min) = schema.get("minItems").and_then(Value::as_u64) {
                if len < min {
                    invalid(
                        out,
                        path,
                        format!("{} must have at least {min} item(s)", name(path)),
                    );
                }
            }
            if let Some(max) = schema.get("maxItems").and_then(Value::as_u64) {
                if len > max {
                    invalid(
                        out,
                        path,
                        format!("{} must have at most {max} item(s)", name(path)),
                    );
                }
            }
            if let Some(item_schema) = schema.get("items") {
                for (i, item) in items.iter().enumerate() {
                    path.push(i.to_string());
                    walk(item, item_schema, path, false, out);
                    path.pop();
                }
            }
        }
        Value::Object(fields) => object(fields, schema, path, root, out),
        Value::Bool(_) | Value::Null => {}
    }
}

fn object(
    fields: &serde_json::Map<String, Value>,
    schema: &serde_json::Map<String, Value>,
    path: &mut Vec<String>,
    root: bool,
    out: &mut Vec<KeyProblem>,
) {
    let properties = schema.get("properties").and_then(Value::as_object);
    if let Some(Value::Array(required)) = schema.get("required") {
        for field in required.iter().filter_map(Value::as_str) {
            if !fields.contains_key(field) {
                // The message serde gives, so that the validator pairs it with a misspelt key.
                invalid(out, path, format!("missing field `{field}`"));
            }
        }
    }
    let additional = match schema.get("additionalProperties") {
        None if root => &Value::Bool(false),
        None => &Value::Bool(true),
        Some(a) => a,
    };
    for (key, value) in fields {
        path.push(key.clone());
        match properties.and_then(|p| p.get(key)) {
            Some(sub) => walk(value, sub, path, false, out),
            None if additional == &Value::Bool(false) => {
                let mut expected: Vec<String> = properties
                    .map(|p| p.keys().cloned().collect())
                    .unwrap_or_default();
                expected.sort();
                out.push(KeyProblem {
                    path: path.clone(),
                    kind: KeyProblemKind::Unknown {
                        key: key.clone(),
                        expected,
                    },
                });
            }
            None => walk(value, additional, path, false, out),
        }
        path.pop();
    }
}

fn number_bounds(
    x: f64,
    schema: &serde_json::Map<String, Value>,
    path: &[String],
    out: &mut Vec<KeyProblem>,
) {
    let bound = |key: &str| schema.get(key).and_then(Value::as_f64);
    let checks = [
        ("minimum", bound("minimum").filter(|&m| x < m), "at least"),
        ("maximum", bound("maximum").filter(|&m| x > m), "at most"),
        (
            "exclusiveMinimum",
            bound("exclusiveMinimum").filter(|&m| x <= m),
            "greater than",
        ),
        (
            "exclusiveMaximum",
            bound("exclusiveMaximum").filter(|&m| x >= m),
            "less than",
        ),
    ];
    for (key, broken, phrase) in checks {
        if let Some(limit) = broken {
            let limit = schema.get(key).map_or_else(|| limit.to_string(), plain);
            invalid(
                out,
                path,
                format!("{} must be {phrase} {limit}", name(path)),
            );
        }
    }
}

fn invalid(out: &mut Vec<KeyProblem>, path: &[String], message: String) {
    out.push(KeyProblem {
        path: path.to_vec(),
        kind: KeyProblemKind::Invalid(message),
    });
}

/// "`a.b`", or "the stage" for the table itself.
fn name(path: &[String]) -> String {
    if path.is_empty() {
        "the stage".to_owned()
    } else {
        format!("`{}`", path.join("."))
    }
}

fn has_type(value: &Value, wanted: &str) -> bool {
    match wanted {
        "object" => value.is_object(),
        "array" => value.is_array(),
        "string" => value.is_string(),
        "boolean" => value.is_boolean(),
        "null" => value.is_null(),
        "number" => value.is_number(),
        "integer" => match value {
            Value::Number(n) => {
                n.is_i64() || n.is_u64() || n.as_f64().is_some_and(|f| f.fract() == 0.0)
            }
            _ => false,
        },
        // An unknown type name constrains nothing rather than rejecting everything.
        _ => true,
    }
}

fn type_phrase(t: &str) -> &str {
    match t {
        "object" => "a table",
        "array" => "an array",
        "string" => "a string",
        "boolean" => "a boolean",
        "null" => "null",
        "number" => "a number",
        "integer" => "an integer",
        other => other,
    }
}

/// The kind of a value, as a TOML user calls it.
fn found(value: &Value) -> String {
    match value {
        Value::Object(_) => "a table".to_owned(),
        Value::Array(_) => "an array".to_owned(),
        Value::String(s) => format!("the string {s:?}"),
        Value::Bool(b) => format!("the boolean {b}"),
        Value::Null => "null".to_owned(),
        Value::Number(n) if n.is_i64() || n.is_u64() => format!("the integer {n}"),
        Value::Number(n) => format!("the number {n}"),
    }
}

/// A value shown inside backticks: strings without their quotes.
fn plain(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn schema() -> Value {
        json!({
            "type": "object",
            "properties": {
                "field": { "type": "string", "minLength": 1 },
                "shingle": { "type": "integer", "minimum": 1, "maximum": 10 },
                "mode": { "enum": ["strict", "loose"] },
                "ratio": { "type": "number", "exclusiveMaximum": 1 },
                "stopwords": { "type": "array", "items": { "type": "string" }, "maxItems": 3 },
                "extra": { "type": "object", "properties": { "a": { "type": "boolean" } } }
            },
            "required": ["field"]
        })
    }

    fn messages(config: Value) -> Vec<String> {
        check(&config, &schema())
            .into_iter()
            .map(|p| match p.kind {
                KeyProblemKind::Unknown { key, expected } => {
                    format!(
                        "{}: unknown `{key}` of {}",
                        p.path.join("."),
                        expected.join(",")
                    )
                }
                KeyProblemKind::Invalid(m) => format!("{}: {m}", p.path.join(".")),
            })
            .collect()
    }

    #[test]
    fn a_valid_table_has_no_problems() {
        let config = json!({"field": "text", "shingle": 3, "mode": "loose", "ratio": 0.5,
            "stopwords": ["a"], "extra": {"a": true, "b": 1}});
        assert_eq!(messages(config), Vec::<String>::new());
    }

    #[test]
    fn each_problem_names_its_key() {
        let cases = [
            (
                json!({"field": "x", "feild": "y"}),
                "feild: unknown `feild` of extra,field,mode,ratio,shingle,stopwords",
            ),
            (
                json!({"field": 3}),
                "field: `field` must be a string, not the integer 3",
            ),
            (json!({}), ": missing field `field`"),
            (
                json!({"field": ""}),
                "field: `field` must be at least 1 characters long",
            ),
            (
                json!({"field": "x", "shingle": 0}),
                "shingle: `shingle` must be at least 1",
            ),
            (
                json!({"field": "x", "shingle": 2.5}),
                "shingle: `shingle` must be an integer, not the number 2.5",
            ),
            (
                json!({"field": "x", "mode": "lax"}),
                "mode: `mode` must be one of `strict`, `loose`",
            ),
            (
                json!({"field": "x", "ratio": 1}),
                "ratio: `ratio` must be less than 1",
            ),
            (
                json!({"field": "x", "stopwords": ["a", 2]}),
                "stopwords.1: `stopwords.1` must be a string, not the integer 2",
            ),
            (
                json!({"field": "x", "stopwords": ["a", "b", "c", "d"]}),
                "stopwords: `stopwords` must have at most 3 item(s)",
            ),
            (
                json!({"field": "x", "extra": {"a": "yes"}}),
                "extra.a: `extra.a` must be a boolean, not the string \"yes\"",
            ),
        ];
        for (config, want) in cases {
            assert_eq!(messages(config.clone()), vec![want.to_owned()], "{config}");
        }
    }

    #[test]
    fn additional_properties_is_honoured_below_the_top_and_when_given() {
        let open = json!({"type": "object", "additionalProperties": {"type": "integer"}});
        assert!(check(&json!({"a": 1}), &open).is_empty());
        assert_eq!(check(&json!({"a": "x"}), &open).len(), 1);
        let closed_by_default = json!({"type": "object"});
        assert_eq!(check(&json!({"a": 1}), &closed_by_default).len(), 1);
    }
}
