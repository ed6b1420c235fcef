//! How the values of a kind's keys look in `stagewise schema`, for field types whose text form
//! the JSON Schema cannot read off the Rust type: use them with
//! `#[schemars(with = "stagewise_core::stage::DurationText")]` (or `Option<…>`).

use std::borrow::Cow;

use schemars::{json_schema, JsonSchema, Schema, SchemaGenerator};

/// A duration as `pipeline.toml` writes it: numbers with units, `"30s"`, `"1m30s"`, `"1.5s"`,
/// `"500ms"`, `"2h"` (the units humantime reads: `ns`, `us`/`µs`, `ms`, `s`, `m`/`min`, `h`, `d`,
/// `w`, `M` for months, `y`, and their long names).
pub struct DurationText;

impl JsonSchema for DurationText {
    fn schema_name() -> Cow<'static, str> {
        "Duration".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "type": "string",
            "pattern": r"^\s*([0-9]+(\.[0-9]+)?\s*[a-zA-Zµ]+\s*)+$",
            "examples": ["30s", "1m30s", "500ms"],
        })
    }
}

/// A size: `"10MB"`, `"512KiB"`, or a number of bytes.
pub struct SizeText;

impl JsonSchema for SizeText {
    fn schema_name() -> Cow<'static, str> {
        "Size".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "type": ["string", "integer"],
            "minimum": 0,
            "examples": ["10MB", "512KiB"],
        })
    }
}
