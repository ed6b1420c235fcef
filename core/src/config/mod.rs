//! Typed configuration, read the way `pipeline.toml` needs it: deserialization that reports
//! every problem of a table with its key path (not just serde's first), and what a type says
//! about itself: its keys, in order (from its `Deserialize` impl), and its JSON Schema with each
//! key's documentation (from its `JsonSchema` derive and doc comments).

mod de;
mod keys;
mod schema;

pub(crate) use de::deserialize_all;
pub(crate) use keys::struct_fields;
pub(crate) use schema::{default_text, schema_of};

/// One problem found in a stage's own keys, with the key path inside the stage table.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct KeyProblem {
    /// Key path inside the stage table, e.g. `["headers", "x"]`; empty for the table itself.
    pub path: Vec<String>,
    /// The problem.
    pub kind: KeyProblemKind,
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) enum KeyProblemKind {
    Unknown { key: String, expected: Vec<String> },
    Invalid(String),
}
