//! Records: the unit of work. A record is a JSON object plus a stable key chosen by the source.

use serde::{Deserialize, Serialize};

/// The fields of a record: a JSON object.
pub type Fields = serde_json::Map<String, serde_json::Value>;

/// One item of the batch as it moves through the stages.
///
/// ```
/// use stagewise_core::stage::Record;
/// let mut r = Record::new("42");
/// r.fields.insert("url".into(), "https://example.com".into());
/// assert_eq!(r.key, "42");
/// assert_eq!(r.get_str("url"), Some("https://example.com"));
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    /// The stable key (e.g. a row id). Unique within a batch.
    pub key: String,
    /// The record's fields.
    pub fields: Fields,
}

impl Record {
    /// An empty record with this key.
    pub fn new(key: impl Into<String>) -> Self {
        Self {
            key: key.into(),
            fields: Fields::new(),
        }
    }

    /// A record with this key and these fields.
    pub fn with_fields(key: impl Into<String>, fields: Fields) -> Self {
        Self {
            key: key.into(),
            fields,
        }
    }

    /// A field's value if it is a string.
    pub fn get_str(&self, field: &str) -> Option<&str> {
        self.fields.get(field).and_then(serde_json::Value::as_str)
    }
}
