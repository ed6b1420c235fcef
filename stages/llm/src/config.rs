//! The keys of `llm`.

use std::num::NonZeroU32;
use std::path::PathBuf;
use std::time::Duration;

use schemars::JsonSchema;
use serde::Deserialize;

/// `structured_output`: how the answer's schema is sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum StructuredOutput {
    /// `json_schema`, falling back to `json_object` for a server that refuses it.
    #[default]
    Auto,
    /// `response_format` `{"type": "json_schema", "json_schema": {…}}`.
    JsonSchema,
    /// `response_format` `{"type": "json_object", "schema": …}`.
    JsonObject,
    /// No schema is sent.
    Off,
}

impl StructuredOutput {
    /// The name in `pipeline.toml`.
    pub fn as_str(self) -> &'static str {
        match self {
            StructuredOutput::Auto => "auto",
            StructuredOutput::JsonSchema => "json_schema",
            StructuredOutput::JsonObject => "json_object",
            StructuredOutput::Off => "off",
        }
    }
}

impl<'de> Deserialize<'de> for StructuredOutput {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Given {
            Flag(bool),
            Name(String),
        }
        match Given::deserialize(deserializer)? {
            Given::Flag(true) => Ok(StructuredOutput::Auto),
            Given::Flag(false) => Ok(StructuredOutput::Off),
            Given::Name(name) => match name.as_str() {
                "auto" => Ok(StructuredOutput::Auto),
                "json_schema" => Ok(StructuredOutput::JsonSchema),
                "json_object" => Ok(StructuredOutput::JsonObject),
                "off" => Ok(StructuredOutput::Off),
                other => Err(serde::de::Error::custom(format!(
                    "`{}` is not a structured-output mode: use \"auto\", \"json_schema\", \"json_object\" or \"off\" (or true / false)",
                    stagewise_core::text::printable(other)
                ))),
            },
        }
    }
}

impl JsonSchema for StructuredOutput {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "StructuredOutput".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "oneOf": [
                { "enum": ["auto", "json_schema", "json_object", "off"] },
                { "type": "boolean" }
            ]
        })
    }
}

/// Who answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Provider {
    /// The chat-completions API (OpenAI, Azure OpenAI, Ollama, vLLM, llama.cpp, OpenRouter, Groq…).
    Openai,
    /// Anthropic's Messages API.
    Anthropic,
    /// No model: the sentences of the text with the most factual signal, offline.
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
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LlmConfig {
    /// `openai`, `anthropic` or `extractive`.
    pub provider: Provider,
    /// E.g. `http://localhost:11434/v1` (Ollama), `http://localhost:8080/v1` (llama.cpp); default
    /// `https://api.openai.com/v1` or `https://api.anthropic.com/v1`.
    #[schemars(extend("x-default" = "the provider's"))]
    pub base_url: Option<String>,
    /// The model's name, e.g. `gpt-4o-mini`, `claude-haiku-4-5`, `llama3.1`.
    #[schemars(extend("x-default" = "required (not for `extractive`)"))]
    pub model: Option<String>,
    /// The environment variable holding the key. With `openai` an unset variable sends no key
    /// (local servers need none); with `anthropic` it is a configuration error.
    #[schemars(extend("x-default" = "`OPENAI_API_KEY` / `ANTHROPIC_API_KEY`"))]
    pub api_key_env: Option<String>,
    /// The system prompt, a template like `prompt`.
    #[schemars(extend("x-default" = "none"))]
    pub system: Option<String>,
    /// The user prompt: `{{field}}` is the record's field (text as is, other values as JSON,
    /// missing or null as nothing), `{{key}}` the record's key. A prompt that uses no field is
    /// refused (every item would get one answer).
    #[schemars(extend("x-default" = "facts and a summary of `{{title}}` and `{{text}}`"))]
    #[serde(default = "default_prompt")]
    pub prompt: String,
    /// The field the `extractive` provider reads.
    #[schemars(extend("x-default" = "`\"text\"`"))]
    #[serde(default = "default_input")]
    pub input: String,
    /// The longest a field may be inside a prompt; a longer one is cut at a sentence or word
    /// boundary, with a warning naming the item and field, counted as `truncated`.
    #[schemars(extend("x-default" = "`24000`"))]
    #[serde(default = "default_max_input_chars")]
    pub max_input_chars: usize,
    /// The answer's JSON Schema, inline as a TOML table.
    #[schemars(extend("x-default" = "`facts` (list of strings) and `summary` (string)"))]
    pub schema: Option<serde_json::Value>,
    /// The answer's JSON Schema in a JSON file (relative to the pipeline file); not with `schema`.
    #[schemars(extend("x-default" = "none"))]
    pub schema_file: Option<PathBuf>,
    /// The field the parsed answer goes to.
    #[schemars(extend("x-default" = "`\"facts\"`"))]
    #[serde(default = "default_output")]
    pub output: String,
    /// Invalid answers an item may get before it fails.
    #[schemars(extend("x-default" = "`2`"))]
    #[serde(default = "default_invalid_output_attempts")]
    pub invalid_output_attempts: NonZeroU32,
    /// The longest answer, in tokens; an answer cut there counts as invalid. Sent as
    /// `max_completion_tokens` to OpenAI's and Azure's own endpoints (their newer models refuse
    /// `max_tokens`), as `max_tokens` elsewhere.
    #[schemars(extend("x-default" = "`1024`"))]
    #[serde(default = "default_max_tokens")]
    pub max_tokens: u32,
    /// Sampling temperature.
    #[schemars(extend("x-default" = "the provider's"))]
    pub temperature: Option<f64>,
    /// How the answer's schema is sent to the server (the answer is parsed and checked against
    /// it whatever this says). `"json_schema"`: as `response_format` `json_schema` (OpenAI, vLLM,
    /// llama.cpp's `llama-server`, LM Studio, Ollama's `/v1`); `"json_object"`: as
    /// `response_format` `json_object` with a `schema` (llama-cpp-python's server); `"auto"`:
    /// `json_schema`, and once a server refuses it for the `response_format` (a 400, 422 or 500
    /// saying so), that request again at once as `json_object`, and every later one of the
    /// process, using no attempt; `"off"`: not sent. `true` and `false` mean `"auto"` and
    /// `"off"`. Anthropic takes the schema as a tool whatever the mode but `"off"`.
    #[schemars(extend("x-default" = "`\"auto\"`"))]
    #[serde(default)]
    pub structured_output: StructuredOutput,
    /// Keep answers in the checkpoint store and reuse them.
    #[schemars(extend("x-default" = "`true`"))]
    #[serde(default = "default_true")]
    pub cache: bool,
    /// Price of a million input tokens, for `cost` and `max_cost`.
    #[schemars(extend("x-default" = "none"))]
    pub price_per_mtok_in: Option<f64>,
    /// Price of a million output tokens.
    #[schemars(extend("x-default" = "none"))]
    pub price_per_mtok_out: Option<f64>,
    /// The most this process may spend. Before each call the stage sets aside what it could cost
    /// (the request's characters / 3 as input tokens, `max_tokens` as output); a call that could
    /// cross the limit is not made, and the run stops (exit 3) with its progress saved. Counted per
    /// `stagewise run` process.
    #[schemars(extend("x-default" = "none"))]
    pub max_cost: Option<f64>,
    /// Longest wait to connect.
    #[schemars(extend("x-default" = "`\"10s\"`"))]
    #[schemars(with = "stagewise_core::stage::DurationText")]
    #[serde(default = "default_connect_timeout", with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// Longest the server may send nothing while an answer is awaited; unset, the attempt's
    /// `timeout` alone bounds the call. The answer comes whole once the model has written it, so
    /// allow for the longest generation.
    #[schemars(extend("x-default" = "none"))]
    #[schemars(with = "Option<stagewise_core::stage::DurationText>")]
    #[serde(default, with = "humantime_serde")]
    pub read_timeout: Option<Duration>,
    /// Sentences the `extractive` provider picks.
    #[schemars(extend("x-default" = "`8`"))]
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

fn default_invalid_output_attempts() -> NonZeroU32 {
    NonZeroU32::MIN.saturating_add(1)
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
