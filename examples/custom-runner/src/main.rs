//! A stagewise runner with a stage kind of its own compiled in: `word-count`, which writes the
//! number of words of a text field. It registers the kind next to every builtin (and the plugin
//! host) and hands the registry to stagewise's command line: `run`, `validate`, `plan`,
//! `schema`, `status`, `retry-failed` and `plugin inspect` all work as with `stagewise`.
//!
//! ```sh
//! cargo run -p stagewise-example-custom-runner -- run examples/custom-runner/pipeline.toml
//! ```
//!
//! Prefer this over a dynamic plugin when the stage is yours and ships with the runner: it is
//! an ordinary Rust type on core's `StageKind` trait (async or blocking, typed records, no JSON
//! round trip), checked by the compiler against the core it runs in. See `docs/plugins.md`.

use std::process::ExitCode;
use std::sync::Arc;

use schemars::JsonSchema;
use serde::Deserialize;
use stagewise_core::stage::{
    BlockingStage, BuildContext, Context, Outcome, Record, Role, StageError, StageImpl, StageKind,
};

/// Configuration of a `word-count` stage. Its doc comments are what `schema` and `plan` show.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct WordCountConfig {
    /// The field holding the text.
    #[schemars(extend("x-default" = "`\"text\"`"))]
    #[serde(default = "default_field")]
    field: String,
    /// The field the count is written to.
    #[schemars(extend("x-default" = "`\"words\"`"))]
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

fn main() -> ExitCode {
    let mut registry = stagewise::builtin_registry();
    registry.register(WordCountKind);
    // Every command of `stagewise`, with the same exit codes, knowing `word-count` too.
    stagewise::cli::main(registry)
}
