//! The keys of `llm`.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

/// Who answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Provider {
    /// The chat-completions API (OpenAI, Azure OpenAI, Ollama, vLLM, llama.cpp, OpenRouter, Groq…).
    Openai,
    /// Anthropic's Messages API.
    Anthropic,
    /// No model: the sentences with the most factual signal, offline (see `extractive.rs`).
    Extractive,
}

impl Provider {
    /// The name in `pipeline.toml`.
    pub fn as_str(self) -> &'static str {
        match self {
            Provider::Openai => "openai",
            Provider::Anthropic => "anthropic",
            Provider::Extractive => "extractive",
        }
    }

    pub(crate) fn default_base_url(self) -> &'static str {
        match self {
            Provider::Openai => "https://api.openai.com/v1",
            Provider::Anthropic => "https://api.anthropic.com/v1",
            Provider::Extractive => "",
        }
    }

    pub(crate) fn default_key_env(self) -> &'static str {
        match self {
            Provider::Openai => "OPENAI_API_KEY",
            Provider::Anthropic => "ANTHROPIC_API_KEY",
            Provider::Extractive => "",
        }
    }
}

/// `llm`: structured facts from a record's text.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LlmConfig {
    /// `openai` (any chat-completions endpoint), `anthropic`, or `extractive` (offline, no model).
    pub provider: Provider,
    /// The API's base URL (default `https://api.openai.com/v1` or `https://api.anthropic.com/v1`);
    /// e.g. `http://localhost:11434/v1` for Ollama.
    pub base_url: Option<String>,
    /// The model name; required for `openai` and `anthropic`.
    pub model: Option<String>,
    /// The environment variable holding the API key (default `OPENAI_API_KEY` or
    /// `ANTHROPIC_API_KEY`). The key itself is never logged. Unset or empty: `openai` sends no
    /// key (local servers need none); `anthropic` refuses to start.
    pub api_key_env: Option<String>,
    /// The system prompt, a template like `prompt`.
    pub system: Option<String>,
    /// The user prompt: `{{field}}` is replaced by the record's field (text as is, other values
    /// as JSON, missing or null as nothing), `{{key}}` by the record's key.
    #[serde(default = "default_prompt")]
    pub prompt: String,
    /// The field the `extractive` provider reads (default `text`).
    #[serde(default = "default_input")]
    pub input: String,
    /// The longest a field may be inside a prompt (default 24000 characters); a longer one is
    /// cut at a sentence or word boundary, and the cut is logged and counted (`truncated`).
    #[serde(default = "default_max_input_chars")]
    pub max_input_chars: usize,
    /// The JSON Schema of the answer, inline (a TOML table). Default: `facts` (a list of strings)
    /// and `summary` (a string).
    pub schema: Option<serde_json::Value>,
    /// The JSON Schema of the answer in a JSON file (relative to the pipeline file).
    pub schema_file: Option<PathBuf>,
    /// The field the parsed answer goes to (default `facts`).
    #[serde(default = "default_output")]
    pub output: String,
    /// Answers that are not JSON or fail the schema are retried (a transient error) this many
    /// times in all before the item fails (default 2).
    #[serde(default = "default_invalid_output_attempts")]
    pub invalid_output_attempts: u32,
    /// Longest answer, in tokens (default 1024).
    #[serde(default = "default_max_tokens")]
    pub max_tokens: u32,
    /// Sampling temperature (default: the provider's).
    pub temperature: Option<f64>,
    /// Send the schema as the provider's structured-output option (default true): OpenAI's
    /// `response_format` json_schema, Anthropic's forced tool. Turn it off for servers that
    /// reject the option; the answer is still parsed and checked against the schema.
    #[serde(default = "default_true")]
    pub structured_output: bool,
    /// Keep answers in the checkpoint store and reuse them (default true).
    #[serde(default = "default_true")]
    pub cache: bool,
    /// Price of a million input tokens, for the cost in the summary and `max_cost`.
    pub price_per_mtok_in: Option<f64>,
    /// Price of a million output tokens.
    pub price_per_mtok_out: Option<f64>,
    /// Most this process may spend (in the prices' unit). A call that could cross it is not
    /// made: the run stops with exit 3 and its progress saved. Needs both prices.
    pub max_cost: Option<f64>,
    /// Longest wait to connect (default 10s).
    #[serde(default = "default_connect_timeout", with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// Longest the server may send nothing while an answer is awaited (default: the attempt's
    /// `timeout` alone bounds the call). The whole answer comes at once after the model has
    /// written it, so this must allow for the longest generation.
    #[serde(default, with = "humantime_serde")]
    pub read_timeout: Option<Duration>,
    /// Sentences the `extractive` provider picks (default 8).
    #[serde(default = "default_max_sentences")]
    pub max_sentences: usize,
}

fn default_prompt() -> String {
    "List the verifiable facts in this article (figures, dates, names, places, quantities), each as one short sentence, and summarise it in one sentence.\n\nTitle: {{title}}\n\n{{text}}".into()
}

fn default_input() -> String {
    "text".into()
}

fn default_max_input_chars() -> usize {
    24_000
}

fn default_output() -> String {
    "facts".into()
}

fn default_invalid_output_attempts() -> u32 {
    2
}

fn default_max_tokens() -> u32 {
    1024
}

fn default_true() -> bool {
    true
}

fn default_connect_timeout() -> Duration {
    Duration::from_secs(10)
}

fn default_max_sentences() -> usize {
    8
}

/// The answer's schema when none is given.
pub fn default_schema() -> serde_json::Value {
    serde_json::json!({
        "type": "object",
        "properties": {
            "facts": {
                "type": "array",
                "items": { "type": "string" },
                "description": "Verifiable facts from the text, one short sentence each"
            },
            "summary": {
                "type": "string",
                "description": "The text in one sentence"
            }
        },
        "required": ["facts", "summary"],
        "additionalProperties": false
    })
}
