//! stagewise-plugin: write a stagewise stage as a dynamic plugin.
//!
//! A plugin is a `cdylib` crate that depends on this crate (and, for a typed configuration, on
//! `serde`), implements [`Stage`] for each kind of stage it offers, and exports them with
//! [`export!`]. A pipeline then loads it with `kind = "plugin"` and `path = "…/libmy_stage.so"`.
//! The plugin runs on the stage's bounded blocking pool, with the stage's timeout and retries,
//! like any builtin blocking stage.
//!
//! ```
//! use stagewise_plugin::serde_json::{json, Value};
//! use stagewise_plugin::{export, Context, Error, Outcome, Record, Stage};
//!
//! #[derive(serde::Deserialize)]
//! struct Config {
//!     field: String,
//! }
//!
//! /// Upper-cases one text field.
//! struct Upper(String);
//!
//! impl Stage for Upper {
//!     const KIND: &'static str = "upper";
//!     type Config = Config;
//!
//!     fn config_schema() -> Value {
//!         json!({
//!             "type": "object",
//!             "properties": { "field": { "type": "string", "description": "the field to upper-case" } },
//!             "required": ["field"],
//!             "additionalProperties": false
//!         })
//!     }
//!
//!     fn new(config: Config) -> Result<Self, Error> {
//!         Ok(Upper(config.field))
//!     }
//!
//!     fn process(&self, mut record: Record, _cx: &Context) -> Result<Outcome, Error> {
//!         let Some(text) = record.get_str(&self.0) else {
//!             return Ok(Outcome::skip(format!("no `{}` field", self.0)));
//!         };
//!         let upper = text.to_uppercase();
//!         record.fields.insert(self.0.clone(), upper.into());
//!         Ok(Outcome::Continue(record))
//!     }
//! }
//!
//! export!(Upper);
//!
//! // Unit tests call the stage the way the host does, without loading the library.
//! let record = Record::new("1").with("title", "hello");
//! let out = stagewise_plugin::testing::process::<Upper>(json!({"field": "title"}), record);
//! assert_eq!(out, Ok(Outcome::Continue(Record::new("1").with("title", "HELLO"))));
//! ```
//!
//! # What the host guarantees, and what a stage must do
//!
//! - `new` runs once per pipeline stage, when the run starts; an error there is a
//!   configuration error (exit 2, nothing runs). The host has already checked the stage's keys
//!   against [`Stage::config_schema`], so `stagewise validate` reports an unknown key or a wrong
//!   type with its line and column, like a builtin's.
//! - `process` runs on a pool thread, possibly on several threads at once (`concurrency`):
//!   `&self` is shared, so state behind it needs a lock or atomics.
//! - Each attempt has a deadline. Give blocking work a timeout no later than
//!   [`Context::deadline`] and poll [`Context::is_cancelled`] between steps: a call that ignores
//!   both is abandoned at its timeout and keeps its pool thread until it returns.
//! - A panic in `new` or `process` is caught inside the plugin and fails only its item, with
//!   the panic message. Build plugins with `panic = "unwind"` (the default): with `abort`, a
//!   panic would end the whole process, so [`export!`] refuses to compile.
//! - Log through [`Context::log`] (and its shorthands): the plugin has its own copy of every
//!   global, so a `tracing` subscriber or `log` logger of its own would never reach the host.
//! - The library is never unloaded; statics live as long as the process.

#![deny(missing_docs)]

pub mod abi;
#[doc(hidden)]
pub mod export;
pub mod testing;

use std::fmt;
use std::time::{Duration, Instant};

pub use serde;
pub use serde_json;

/// The fields of a record: a JSON object.
pub type Fields = serde_json::Map<String, serde_json::Value>;

/// One item as it moves through the stages: a stable key (chosen by the source) and fields.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Record {
    /// The item's key, e.g. a row id. Unique within a batch.
    pub key: String,
    /// The record's fields.
    pub fields: Fields,
}

impl Record {
    /// An empty record with this key.
    pub fn new(key: impl Into<String>) -> Record {
        Record {
            key: key.into(),
            fields: Fields::new(),
        }
    }

    /// This record with one more field (handy in tests).
    #[must_use]
    pub fn with(mut self, field: &str, value: impl Into<serde_json::Value>) -> Record {
        self.fields.insert(field.to_owned(), value.into());
        self
    }

    /// A field's value if it is a string.
    pub fn get_str(&self, field: &str) -> Option<&str> {
        self.fields.get(field).and_then(serde_json::Value::as_str)
    }
}

/// What a stage answers for one item.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// The item goes on to the next stage with this record.
    Continue(Record),
    /// The item ends as `skipped` with this reason.
    Skip(String),
}

impl Outcome {
    /// Skip the item with `reason`.
    pub fn skip(reason: impl Into<String>) -> Outcome {
        Outcome::Skip(reason.into())
    }
}

/// How the runner treats an [`Error`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorClass {
    /// Worth retrying (a timeout, a dropped connection): retried with backoff while attempts
    /// remain.
    Transient,
    /// Retrying cannot help (bad input): the item fails at once.
    Permanent,
    /// Nothing further can succeed (a wrong credential): the run stops, the item goes back to
    /// pending.
    Fatal,
}

/// A classified error. The stage says what kind of failure it is; backoff, jitter and attempt
/// counting are the runner's.
#[derive(Debug, Clone, PartialEq)]
pub struct Error {
    /// How the runner treats it.
    pub class: ErrorClass,
    /// What went wrong, lowercase, without a trailing period.
    pub message: String,
    /// Wait at least this long before the next attempt (replaces the runner's backoff).
    pub retry_after: Option<Duration>,
}

impl Error {
    /// An error worth retrying.
    pub fn transient(message: impl Into<String>) -> Error {
        Error::new(ErrorClass::Transient, message)
    }

    /// An error that fails the item without retrying.
    pub fn permanent(message: impl Into<String>) -> Error {
        Error::new(ErrorClass::Permanent, message)
    }

    /// An error that stops the run.
    pub fn fatal(message: impl Into<String>) -> Error {
        Error::new(ErrorClass::Fatal, message)
    }

    fn new(class: ErrorClass, message: impl Into<String>) -> Error {
        Error {
            class,
            message: message.into(),
            retry_after: None,
        }
    }

    /// Ask the runner to wait `delay` before the next attempt.
    #[must_use]
    pub fn with_retry_after(mut self, delay: Duration) -> Error {
        self.retry_after = Some(delay);
        self
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let class = match self.class {
            ErrorClass::Transient => "transient",
            ErrorClass::Permanent => "permanent",
            ErrorClass::Fatal => "fatal",
        };
        write!(f, "{class} error: {}", self.message)
    }
}

impl std::error::Error for Error {}

/// Log levels for [`Context::log`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    /// Lost work, or an operator must act.
    Error,
    /// Recovered trouble.
    Warn,
    /// Lifecycle.
    Info,
    /// Detail for debugging.
    Debug,
    /// Finer detail.
    Trace,
}

impl Level {
    fn code(self) -> u32 {
        match self {
            Level::Error => abi::LOG_ERROR,
            Level::Warn => abi::LOG_WARN,
            Level::Info => abi::LOG_INFO,
            Level::Debug => abi::LOG_DEBUG,
            Level::Trace => abi::LOG_TRACE,
        }
    }
}

/// What one attempt on one item is handed: the key, the attempt, the deadline, and the host's
/// cancellation flag and logger. Valid during the call only.
pub struct Context<'a> {
    key: &'a str,
    stage: &'a str,
    attempt: u32,
    deadline: Instant,
    host: Option<&'a abi::CallContext>,
}

impl<'a> Context<'a> {
    /// A context with no host behind it: never cancelled before `deadline`, logs to stderr.
    /// For tests; [`testing`] makes one for you.
    pub fn detached(key: &'a str, attempt: u32, deadline: Instant) -> Context<'a> {
        Context {
            key,
            stage: "test",
            attempt,
            deadline,
            host: None,
        }
    }

    /// The item's key.
    pub fn key(&self) -> &str {
        self.key
    }

    /// The stage's name in the pipeline.
    pub fn stage(&self) -> &str {
        self.stage
    }

    /// The attempt, from 1.
    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    /// When this attempt times out. Blocking work must not outlive it.
    pub fn deadline(&self) -> Instant {
        self.deadline
    }

    /// Time left before the deadline (zero once it passed).
    pub fn remaining(&self) -> Duration {
        self.deadline.saturating_duration_since(Instant::now())
    }

    /// Whether the attempt should stop now: the host cancelled it (timeout, shutdown), or its
    /// deadline passed. Cheap; poll it between steps of long work.
    pub fn is_cancelled(&self) -> bool {
        if Instant::now() >= self.deadline {
            return true;
        }
        match self.host {
            Some(host) => export::host_is_cancelled(host),
            None => false,
        }
    }

    /// Log `message` at `level` through the host's logger, with the stage and key attached.
    pub fn log(&self, level: Level, message: &str) {
        match self.host {
            Some(host) => export::host_log(host, level.code(), message),
            None => eprintln!("{level:?} key={}: {message}", self.key),
        }
    }

    /// [`log`](Self::log) at [`Level::Warn`].
    pub fn warn(&self, message: &str) {
        self.log(Level::Warn, message);
    }

    /// [`log`](Self::log) at [`Level::Info`].
    pub fn info(&self, message: &str) {
        self.log(Level::Info, message);
    }

    /// [`log`](Self::log) at [`Level::Debug`].
    pub fn debug(&self, message: &str) {
        self.log(Level::Debug, message);
    }
}

/// A kind of stage. Implement it, then list the type in [`export!`].
pub trait Stage: Sized + Send + Sync + 'static {
    /// The kind's name: what `plugin_kind = "…"` selects when a library offers several kinds,
    /// and what `stagewise plugin inspect` lists.
    const KIND: &'static str;

    /// One line saying what the kind does, for `stagewise plugin inspect`.
    const DESCRIPTION: &'static str = "";

    /// The stage's own keys in `pipeline.toml` (every key but `name`, `kind`, `path`,
    /// `plugin_kind` and the policy keys), deserialized from JSON.
    type Config: serde::de::DeserializeOwned;

    /// A JSON Schema of [`Self::Config`]: an object schema whose `properties` name every key.
    /// The host checks a stage's keys against it before anything runs (see `docs/plugins.md`
    /// for the keywords it checks), so `stagewise validate` reports problems with their line
    /// and column.
    fn config_schema() -> serde_json::Value;

    /// Make the stage from its configuration. An error here stops the run before it starts
    /// (exit 2).
    fn new(config: Self::Config) -> Result<Self, Error>;

    /// Process one item: answer a record, a skip, or a classified error.
    fn process(&self, record: Record, cx: &Context<'_>) -> Result<Outcome, Error>;
}

/// Export the listed [`Stage`] types as this library's plugin. Use it once, at the crate root
/// of a `cdylib`; the plugin is named and versioned after the crate's package.
///
/// ```
/// # use stagewise_plugin::serde_json::{json, Value};
/// # use stagewise_plugin::{Context, Error, Outcome, Record, Stage};
/// # macro_rules! pass {
/// #     ($name:ident, $kind:literal) => {
/// #         struct $name;
/// #         impl Stage for $name {
/// #             const KIND: &'static str = $kind;
/// #             type Config = Value;
/// #             fn config_schema() -> Value { json!({ "type": "object" }) }
/// #             fn new(_: Value) -> Result<Self, Error> { Ok($name) }
/// #             fn process(&self, r: Record, _: &Context) -> Result<Outcome, Error> {
/// #                 Ok(Outcome::Continue(r))
/// #             }
/// #         }
/// #     };
/// # }
/// # pass!(Upper, "upper");
/// # pass!(Lower, "lower");
/// // A library with several kinds lists them all, in one `export!`:
/// stagewise_plugin::export!(Upper, Lower);
/// ```
#[macro_export]
macro_rules! export {
    ($($stage:ty),+ $(,)?) => {
        #[cfg(panic = "abort")]
        compile_error!("a stagewise plugin must be built with `panic = \"unwind\"`: with `abort`, a panic in the plugin would end the host process");

        /// The plugin's entry point: the host calls it first and checks the ABI version it
        /// reports before anything else.
        #[allow(unsafe_code)]
        #[unsafe(no_mangle)]
        pub extern "C" fn stagewise_plugin_entry() -> *const $crate::abi::PluginTable {
            $crate::export::entry(
                env!("CARGO_PKG_NAME"),
                env!("CARGO_PKG_VERSION"),
                || ::std::vec![$($crate::export::kind::<$stage>()),+],
            )
        }
    };
}
