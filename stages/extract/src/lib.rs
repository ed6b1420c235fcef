//! The `extract` stage of stagewise: turns a downloaded page into its article's text and
//! metadata (`title`, `author`, `published`, `language`, `site_name`).
//!
//! Extraction is CPU-bound, so this is a blocking stage: it runs on the stage's pool, never on
//! the runner's async threads. Any input gets a clear outcome: a page over `max_html_bytes` is a
//! permanent error (never parsed), a page with less than `min_chars` of article text is skipped
//! with the reason "no article text", and a page whose shape would cost the engines more than
//! about a second (nested too deep, too many nodes, tags misnested so that parsing grows
//! faster than the page) is a permanent error "page too complex: …" found by one bounded parse
//! before the engines run (`complexity.rs`).

mod complexity;
mod config;
mod engine;
mod stage;

use std::sync::Arc;

use stagewise_core::stage::{
    BuildContext, FieldsOut, Probe, ProbeContext, Role, StageError, StageImpl, StageKind,
};
use stagewise_core::Registry;

pub use config::ExtractConfig;
pub use engine::{extract, markdown_to_text, Article, ExtractError};
use stage::Extract;

/// Register `extract`.
pub fn register(registry: &mut Registry) {
    registry.register(ExtractKind);
}

/// The `extract` kind.
#[derive(Debug, Clone, Copy, Default)]
pub struct ExtractKind;

impl StageKind for ExtractKind {
    type Config = ExtractConfig;

    fn kind(&self) -> &'static str {
        "extract"
    }

    fn roles(&self) -> &'static [Role] {
        &[Role::Transform]
    }

    fn check(&self, config: &ExtractConfig, _role: Role) -> Vec<(String, String)> {
        let mut problems = Vec::new();
        if config.max_html_bytes.as_u64() == 0 {
            problems.push((
                "max_html_bytes".into(),
                "`max_html_bytes` must be more than 0".into(),
            ));
        }
        if config.input == config.output {
            problems.push(("output".into(), "`output` must differ from `input`".into()));
        }
        problems
    }

    /// Reads `input`; adds `output` and the article's metadata fields.
    fn probe(&self, config: &ExtractConfig, _cx: &ProbeContext<'_>) -> Probe {
        let mut probe = Probe::giving(FieldsOut::adding(&config.output, &stage::METADATA));
        probe.reads("input", config.input.clone());
        probe
    }

    fn build(&self, config: ExtractConfig, _cx: &BuildContext) -> Result<StageImpl, StageError> {
        Ok(StageImpl::Blocking(Arc::new(Extract::new(config))))
    }
}
