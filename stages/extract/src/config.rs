//! The keys of `extract`.

use bytesize::ByteSize;
use serde::Deserialize;

/// `extract`: the article's text and metadata from a page's HTML.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExtractConfig {
    /// The field holding the page's HTML as text (default `html`, what `http-download` writes).
    #[serde(default = "default_input")]
    pub input: String,
    /// The field the article's text goes to (default `text`): paragraphs separated by a blank
    /// line. The stage also sets `title`, `author`, `published` (a `YYYY-MM-DD` date),
    /// `language` and `site_name` when the page has them.
    #[serde(default = "default_output")]
    pub output: String,
    /// Fewest characters of article text kept (default 200): a page with less is skipped with
    /// the reason "no article text", not failed.
    #[serde(default = "default_min_chars")]
    pub min_chars: usize,
    /// Largest page parsed (default "20MB"): a larger one is a permanent error, so that one
    /// page cannot take unbounded memory or time.
    #[serde(default = "default_max_html_bytes")]
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
