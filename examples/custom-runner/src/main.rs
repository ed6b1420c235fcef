//! A stagewise runner with a stage kind of its own compiled in: `word-count`, which writes the
//! number of words of a text field. It registers the kind next to every builtin (and the plugin
//! host), then loads, validates and runs a pipeline exactly as `stagewise` does.
//!
//! ```sh
//! cargo run -p stagewise-example-custom-runner -- run examples/custom-runner/pipeline.toml
//! ```
//!
//! Prefer this over a dynamic plugin when the stage is yours and ships with the runner: it is
//! an ordinary Rust type on core's `StageKind` trait (async or blocking, typed records, no JSON
//! round trip), checked by the compiler against the core it runs in. See `docs/plugins.md`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use serde::Deserialize;
use stagewise_core::spec::{self, Severity};
use stagewise_core::telemetry::{self, LogFormat};
use stagewise_core::{
    BlockingStage, BuildContext, Context, Outcome, Record, Registry, Role, RunOptions, StageError,
    StageImpl, StageKind,
};

/// Configuration of a `word-count` stage.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct WordCountConfig {
    /// The field holding the text (default `text`).
    #[serde(default = "default_field")]
    field: String,
    /// The field the count is written to (default `words`).
    #[serde(default = "default_output")]
    output: String,
}

fn default_field() -> String {
    "text".to_owned()
}

fn default_output() -> String {
    "words".to_owned()
}

/// The `word-count` kind: what the registry knows about it.
struct WordCountKind;

impl StageKind for WordCountKind {
    type Config = WordCountConfig;

    fn kind(&self) -> &'static str {
        "word-count"
    }

    fn roles(&self) -> &'static [Role] {
        &[Role::Transform]
    }

    fn check(&self, config: &WordCountConfig, _role: Role) -> Vec<(String, String)> {
        if config.field == config.output {
            return vec![("output".into(), "`output` must differ from `field`".into())];
        }
        Vec::new()
    }

    fn build(&self, config: WordCountConfig, _cx: &BuildContext) -> Result<StageImpl, StageError> {
        Ok(StageImpl::Blocking(Arc::new(WordCount(config))))
    }
}

/// The stage itself.
struct WordCount(WordCountConfig);

impl BlockingStage for WordCount {
    fn process(&self, mut record: Record, _cx: &Context) -> Result<Outcome, StageError> {
        let Some(text) = record.get_str(&self.0.field) else {
            return Ok(Outcome::Skip {
                reason: format!("no text in `{}`", self.0.field),
            });
        };
        let words = text.split_whitespace().count();
        record.fields.insert(self.0.output.clone(), words.into());
        Ok(Outcome::Continue(record))
    }
}

fn registry() -> Registry {
    let mut registry = Registry::new();
    stagewise_stages_util::register(&mut registry);
    stagewise_stages_db::register(&mut registry);
    stagewise_stages_http::register(&mut registry);
    stagewise_stages_extract::register(&mut registry);
    stagewise_stages_llm::register(&mut registry);
    stagewise_core::plugin::register(&mut registry);
    registry.register(WordCountKind);
    registry
}

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let command = args.next().unwrap_or_default();
    let path = PathBuf::from(args.next().unwrap_or_else(|| "pipeline.toml".to_owned()));
    if !matches!(command.as_str(), "run" | "validate") {
        eprintln!("usage: custom-runner run|validate [PIPELINE]");
        return ExitCode::from(2);
    }
    telemetry::init(LogFormat::Pretty);
    let registry = registry();
    let loaded = match spec::load(&path, &registry) {
        Ok(loaded) => loaded,
        Err(e) => {
            for d in &e.diagnostics {
                let level = if d.severity == Severity::Error {
                    "error"
                } else {
                    "warning"
                };
                eprintln!("{level}: {d}");
            }
            return ExitCode::from(2);
        }
    };
    for warning in &loaded.warnings {
        eprintln!("warning: {warning}");
    }
    if command == "validate" {
        eprintln!("{} is valid", path.display());
        return ExitCode::SUCCESS;
    }
    match stagewise_core::run(&loaded.pipeline, &registry, RunOptions::default()) {
        // The exit codes of `stagewise run`: 0, 1, 3 or 75.
        Ok(summary) => ExitCode::from(u8::try_from(summary.exit().code()).unwrap_or(3)),
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(2)
        }
    }
}
