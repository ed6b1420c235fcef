//! The utility stages of stagewise: kinds that need no outside service, for trying a pipeline
//! out, for tests and benchmarks, and for plain JSON Lines input and output.
//!
//! | kind | roles | what it does |
//! |---|---|---|
//! | `generate` | source | emits `count` records keyed `"0"`, `"1"`, … with the field `n` |
//! | `jsonl` | source, sink | reads records from a JSON Lines file, or appends them to one |
//! | `sleep` | transform | waits a fixed (optionally jittered) time, then passes the record on |
//! | `fault` | transform | injects transient and permanent errors, hangs and panics, reproducibly |
//! | `blackhole` | sink | accepts every record and keeps nothing |
//!
//! A runner binary adds them all with [`register`]; a custom runner may register single kinds.
//! Each kind lives in its own file with its configuration, its stage and its tests: these kinds
//! are a few dozen lines each and talk to no outside service, so the `config.rs` / `stage.rs` /
//! client split of the other stage crates would only scatter them.

mod blackhole;
mod fault;
mod generate;
mod jsonl;
mod sleep;

use stagewise_core::Registry;

pub use blackhole::{BlackholeConfig, BlackholeKind};
pub use fault::{FaultConfig, FaultKind};
pub use generate::{GenerateConfig, GenerateKind};
pub use jsonl::{JsonlConfig, JsonlKind};
pub use sleep::{SleepConfig, SleepKind};

/// Register every utility kind: `generate`, `jsonl`, `sleep`, `fault` and `blackhole`.
pub fn register(registry: &mut Registry) {
    registry
        .register(GenerateKind)
        .register(JsonlKind)
        .register(SleepKind)
        .register(FaultKind)
        .register(BlackholeKind);
}

/// Helpers shared by the kinds' unit tests.
#[cfg(test)]
pub(crate) mod testing {
    use std::path::Path;
    use std::time::{Duration, Instant};

    use serde::de::DeserializeOwned;
    use stagewise_core::stage::{BuildContext, CancelFlag, Context, Role};

    /// A config parsed from a stage table's own keys, as `pipeline.toml` would hold them.
    pub(crate) fn config<T: DeserializeOwned>(toml_text: &str) -> Result<T, toml::de::Error> {
        toml::from_str(toml_text)
    }

    /// A build context for a stage in `role`, relative paths resolved against `base_dir`.
    pub(crate) fn build_cx(role: Role, base_dir: &Path) -> BuildContext {
        BuildContext::new("test", role, base_dir, 1, Duration::from_secs(30))
    }

    /// A context for one attempt with a far deadline and its own (lowered) cancel flag.
    pub(crate) fn cx(key: &str, attempt: u32) -> Context {
        cx_with(key, attempt, CancelFlag::new())
    }

    /// A context for one attempt with a far deadline and the given cancel flag.
    pub(crate) fn cx_with(key: &str, attempt: u32, cancel: CancelFlag) -> Context {
        let deadline = Instant::now() + Duration::from_secs(3600);
        Context::new(key, "test", attempt, deadline, cancel)
    }

    /// A fresh, empty folder under the system temp dir, removed when dropped.
    pub(crate) fn temp_dir(name: &str) -> tempfile::TempDir {
        tempfile::Builder::new()
            .prefix(&format!("stagewise-util-{name}-"))
            .tempdir()
            .expect("create temp dir")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::temp_dir;
    use stagewise_core::spec::{load_with, ConfigError};

    /// Loads `text` as a pipeline file through core's validator, with every utility kind.
    fn load(name: &str, text: &str) -> Result<Vec<String>, ConfigError> {
        let dir = temp_dir(name);
        let path = dir.path().join("pipeline.toml");
        std::fs::write(&path, text).expect("write pipeline");
        let mut registry = Registry::new();
        register(&mut registry);
        let loaded = load_with(&path, &registry, &|_| None, &[])?;
        Ok(loaded.pipeline.stages.into_iter().map(|s| s.kind).collect())
    }

    #[test]
    fn register_adds_every_kind() {
        let mut registry = Registry::new();
        register(&mut registry);
        assert_eq!(
            registry.kinds().collect::<Vec<_>>(),
            ["blackhole", "fault", "generate", "jsonl", "sleep"]
        );
    }

    #[test]
    fn every_kind_loads_from_a_pipeline_file() {
        let generated = r#"
            [pipeline]
            name = "util"
            [[stage]]
            name = "numbers"
            kind = "generate"
            count = 10
            [[stage]]
            name = "wait"
            kind = "sleep"
            duration = "250ms"
            jitter = "50ms"
            blocking = true
            [[stage]]
            name = "chaos"
            kind = "fault"
            error_rate = 0.1
            hang_rate = 0.05
            seed = 7
            [[stage]]
            name = "out"
            kind = "blackhole"
        "#;
        let kinds = load("load-generate", generated).expect("valid pipeline");
        assert_eq!(kinds, ["generate", "sleep", "fault", "blackhole"]);

        let files = r#"
            [pipeline]
            name = "util"
            [[stage]]
            name = "in"
            kind = "jsonl"
            path = "in.jsonl"
            key = "id"
            [[stage]]
            name = "out"
            kind = "jsonl"
            path = "out/out.jsonl"
        "#;
        let kinds = load("load-jsonl", files).expect("valid pipeline");
        assert_eq!(kinds, ["jsonl", "jsonl"]);
    }

    #[test]
    fn a_pipeline_file_reports_the_kinds_own_problems() {
        let text = r#"
            [pipeline]
            name = "util"
            [[stage]]
            name = "numbers"
            kind = "generate"
            count = 10
            [[stage]]
            name = "chaos"
            kind = "fault"
            error_rate = 0.7
            permanent_rate = 0.7
            [[stage]]
            name = "wait"
            kind = "sleep"
            duration = "soon"
            [[stage]]
            name = "out"
            kind = "blackhole"
            path = "x"
        "#;
        let err = load("load-bad", text).expect_err("invalid pipeline");
        let messages: Vec<String> = err.diagnostics.iter().map(ToString::to_string).collect();
        let expected = [
            ("chaos", "add up to 1.4, more than 1"),
            ("wait", "duration"),
            ("out", "unknown key `path`"),
        ];
        for (stage, part) in expected {
            assert!(
                messages
                    .iter()
                    .any(|m| m.contains(&format!("stage `{stage}`")) && m.contains(part)),
                "no problem of `{stage}` mentions {part:?} in {messages:#?}"
            );
        }
    }
}
