//! The keys of `extract`.

use bytesize::ByteSize;
use schemars::JsonSchema;
use serde::Deserialize;

/// `extract`: the article's text and metadata from a page's HTML.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ExtractConfig {
    /// The field holding the page's HTML (what `http-download` writes).
    #[schemars(extend("x-default" = "`\"html\"`"))]
    #[serde(default = "default_input")]
    pub input: String,
    /// The field the article's text goes to, paragraphs separated by a blank line; the stage also
    /// sets `title`, `author`, `published` (`YYYY-MM-DD`), `language` and `site_name`, each null
    /// when the page does not say.
    #[schemars(extend("x-default" = "`\"text\"`"))]
    #[serde(default = "default_output")]
    pub output: String,
    /// Fewest characters of article text kept: a page with less is skipped with "no article text",
    /// not failed.
    #[schemars(extend("x-default" = "`200`"))]
    #[serde(default = "default_min_chars")]
    pub min_chars: usize,
    /// Largest page parsed: a larger one is a permanent error.
    #[schemars(extend("x-default" = "`\"20MB\"`"))]
    #[serde(default = "default_max_html_bytes")]
    #[schemars(with = "stagewise_core::stage::SizeText")]
    pub max_html_bytes: ByteSize,
}

impl Default for ExtractConfig {
    fn default() -> Self {
        Self {
            input: default_input(),
            output: default_output(),
            min_chars: default_min_chars(),
            max_html_bytes: default_max_html_bytes(),
        }
    }
}

fn default_input() -> String {
    "html".into()
}

fn default_output() -> String {
    "text".into()
}

fn default_min_chars() -> usize {
    200
}

fn default_max_html_bytes() -> ByteSize {
    ByteSize::mb(20)
}
