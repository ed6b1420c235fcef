//! stagewise: the command line and the builtin stage kinds, for the `stagewise` binary and for
//! runners of your own.
//!
//! A runner with a stage kind of its own registers it next to the builtins and hands the
//! registry to the command line, which then offers every command (`run`, `validate`, `plan`,
//! `schema`, `status`, `retry-failed`, `plugin inspect`) with the documented exit codes:
//!
//! ```no_run
//! fn main() -> std::process::ExitCode {
//!     let registry = stagewise::builtin_registry();
//!     // registry.register(MyKind);
//!     stagewise::cli::main(registry)
//! }
//! ```
//!
//! `examples/custom-runner` is a complete one.

#![deny(missing_docs)]

pub mod cli;

use stagewise_core::Registry;

/// Every kind `stagewise` ships: the utility kinds (`generate`, `jsonl`, `sleep`, `fault`, …),
/// `db-fetch` and `persist`, `http-download`, `extract`, `llm`, and `plugin` (dynamic plugins).
pub fn builtin_registry() -> Registry {
    let mut registry = Registry::new();
    stagewise_stages_util::register(&mut registry);
    stagewise_stages_db::register(&mut registry);
    stagewise_stages_http::register(&mut registry);
    stagewise_stages_extract::register(&mut registry);
    stagewise_stages_llm::register(&mut registry);
    stagewise_core::plugin::register(&mut registry);
    registry
}
