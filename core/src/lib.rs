//! stagewise-core: the model and the machinery of a stagewise pipeline.
//!
//! A pipeline (`pipeline.toml`) is a list of stages. The first, a [`stage::Source`], yields the
//! run's batch of [`stage::Record`]s; each later stage — a [`stage::AsyncStage`] or a
//! [`stage::BlockingStage`] — turns a record into a new record, a skip, or a classified
//! [`stage::StageError`]. The runner moves every
//! item through the stages under shared policies (timeout, retry with backoff, concurrency,
//! rate limit, failure budget), runs blocking work on bounded per-stage pools, checkpoints each
//! item after each stage so a restart resumes mid-batch, stops in order on signals and
//! `max_run_time`, and logs a heartbeat and a summary.
//!
//! - [`spec`]: reading and validating `pipeline.toml` (raw → validated → built); what a file
//!   resolves to and where each value came from ([`spec::plan`]); its JSON Schema
//!   ([`spec::json_schema`]).
//! - [`stage`]: everything a stage author uses — the stage contract, records, [`stage::StageKind`]
//!   and the services a stage is lent; [`Registry`]: how stage crates plug their kinds in.
//! - [`plugin`]: the host of dynamic plugins (`kind = "plugin"`), built with `stagewise-plugin`.
//! - [`run`]: running a pipeline; [`commands`]: the other CLI commands.
//! - [`flight`]: the flight recorder, a small mapped file saying what a process is doing, for
//!   the next one to read when it died without a word.
//! - [`pg`]: PostgreSQL connection strings as libpq reads them, and TLS for every connection.
//! - [`text`]: durations, URLs and panic messages as the logs and errors write them.
//!
//! A stage kind in a few lines:
//!
//! ```
//! use stagewise_core::stage::{
//!     BlockingStage, BuildContext, Context, Outcome, Record, Role, StageError, StageImpl, StageKind,
//! };
//! use std::sync::Arc;
//!
//! #[derive(Clone, serde::Deserialize, schemars::JsonSchema)]
//! #[serde(deny_unknown_fields)]
//! struct UpperConfig {
//!     /// The field to upper-case.
//!     field: String,
//! }
//!
//! struct Upper(String);
//!
//! impl BlockingStage for Upper {
//!     fn process(&self, mut record: Record, _cx: &Context) -> Result<Outcome, StageError> {
//!         let text = record.get_str(&self.0).ok_or_else(|| StageError::permanent("no such field"))?;
//!         let upper = text.to_uppercase();
//!         record.fields.insert(self.0.clone(), upper.into());
//!         Ok(Outcome::Continue(record))
//!     }
//! }
//!
//! struct UpperKind;
//!
//! impl StageKind for UpperKind {
//!     type Config = UpperConfig;
//!     fn kind(&self) -> &'static str { "upper" }
//!     fn roles(&self) -> &'static [Role] { &[Role::Transform] }
//!     fn build(&self, config: UpperConfig, _cx: &BuildContext) -> Result<StageImpl, StageError> {
//!         Ok(StageImpl::Blocking(Arc::new(Upper(config.field))))
//!     }
//! }
//!
//! let mut registry = stagewise_core::Registry::new();
//! registry.register(UpperKind);
//! assert!(registry.kinds().any(|k| k == "upper"));
//! ```

#![deny(missing_docs)]

mod checkpoint;
pub mod commands;
mod config;
pub mod flight;
pub mod pg;
pub mod plugin;
mod policy;
mod registry;
mod runner;
pub mod spec;
pub mod stage;
mod state_file;
pub mod telemetry;
pub mod text;
mod timings;

pub use checkpoint::{
    FailedItem, ItemState, RunInfo, RunStatus, SkippedItem, StatusReport, StoreError,
};
pub use policy::{Policy, RateLimit, Retry};
pub use registry::Registry;
pub use runner::{
    hold_signals, run, stop_requested_early, summary_path, Exit, Latency, RunError, RunOptions,
    StageSummary, Summary,
};
