//! Helpers for a plugin's own unit tests: run a stage the way the host does (configuration and
//! record through JSON), without building or loading the library.
//!
//! ```
//! # use stagewise_plugin::{Context, Error, Outcome, Record, Stage};
//! # use stagewise_plugin::serde_json::{json, Value};
//! # struct Keep;
//! # impl Stage for Keep {
//! #     const KIND: &'static str = "keep";
//! #     type Config = Value;
//! #     fn config_schema() -> Value { json!({"type": "object"}) }
//! #     fn new(_: Value) -> Result<Self, Error> { Ok(Keep) }
//! #     fn process(&self, r: Record, _: &Context) -> Result<Outcome, Error> { Ok(Outcome::Continue(r)) }
//! # }
//! use stagewise_plugin::testing;
//! let stage: Keep = testing::new(json!({})).expect("valid configuration");
//! let out = testing::call(&stage, Record::new("1"));
//! assert_eq!(out, Ok(Outcome::Continue(Record::new("1"))));
//! ```

use std::time::{Duration, Instant};

use crate::{Context, Error, Outcome, Record, Stage};

/// How long a test call may take before its context reports it cancelled.
const TEST_DEADLINE: Duration = Duration::from_secs(30);

/// Make a stage from a configuration as the host would: serialized to JSON, then
/// deserialized into [`Stage::Config`]. (The host also checks it against the schema first;
/// that check is not repeated here.)
pub fn new<S: Stage>(config: serde_json::Value) -> Result<S, Error> {
    let bytes = serde_json::to_vec(&config).expect("a JSON value always serializes");
    let config: S::Config = serde_json::from_slice(&bytes)
        .map_err(|e| Error::permanent(format!("invalid configuration: {e}")))?;
    S::new(config)
}

/// One attempt on `record`, through JSON as with the host, with a detached context (attempt 1,
/// a 30 s deadline, logs to stderr).
pub fn call<S: Stage>(stage: &S, record: Record) -> Result<Outcome, Error> {
    let bytes = serde_json::to_vec(&record).expect("a record always serializes");
    let record: Record = serde_json::from_slice(&bytes).expect("a record reads back");
    let key = record.key.clone();
    let cx = Context::detached(&key, 1, Instant::now() + TEST_DEADLINE);
    stage.process(record, &cx)
}

/// [`new`], then [`call`] once.
pub fn process<S: Stage>(config: serde_json::Value, record: Record) -> Result<Outcome, Error> {
    call(&new::<S>(config)?, record)
}
