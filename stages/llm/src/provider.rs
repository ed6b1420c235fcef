//! The two HTTP APIs: OpenAI's chat completions (which most servers speak) and Anthropic's
//! Messages. Each call is one blocking request, bounded by `connect_timeout` and the attempt's
//! deadline (ureq's whole-call timeout, set from the time left: resolution, connection, sending
//! and the answer); failures are classified for the runner's retry policy.

use std::io::Read;
use std::time::{Duration, Instant, SystemTime};

use serde_json::{json, Value};
use stagewise_core::stage::{ErrorKind, StageError};
use stagewise_stages_net::{classify, parse_retry_after, read_error};

use crate::config::{Provider, StructuredOutput};
use crate::secret::Scrubber;

/// Longest error body kept for a message.
const ERROR_BODY_CHARS: usize = 300;
/// Largest response body read: an answer of `max_tokens` is far smaller, and the key's scrub
/// of what is read takes time in proportion.
const MAX_BODY: u64 = 4 * 1024 * 1024;
/// Largest model list read (`GET …/models`).
const MAX_MODEL_LIST: u64 = 4 * 1024 * 1024;

/// What an endpoint's model list said.
#[derive(Debug)]
pub enum Listed {
    /// The models it lists.
    Models(Vec<String>),
    /// It has no list (404, 405: a server that copies only the chat API).
    NoList,
    /// It answered 200 with something that is not a list, cut short or too long.
    Unreadable(String),
}

/// The prompt of [`Client::takes`], and the most tokens its answer may have.
const PROBE_PROMPT: &str = "Reply with the JSON object the schema describes, kept short.";
const PROBE_TOKENS: u32 = 16;

/// Largest error body read (for its message).
const MAX_ERROR_BODY: u64 = 64 * 1024;
/// The Messages API version sent to Anthropic.
const ANTHROPIC_VERSION: &str = "2023-06-01";
/// The name of the tool that carries a structured answer on Anthropic.
const ANSWER_TOOL: &str = "answer";

/// A call that produced no answer.
#[derive(Debug)]
pub struct Failure {
    pub error: StageError,
    /// Whether the provider may have billed it: the request went out and the answer was lost
    /// (a timeout or a broken connection while waiting), as opposed to refused (a status).
    pub maybe_billed: bool,
    /// The server refused the request for its `response_format` (a 400, 422 or 500 whose body
    /// names it): it takes another structured-output mode, or none.
    pub format_refused: bool,
}

impl Failure {
    fn refused(error: StageError) -> Failure {
        Failure {
            error,
            maybe_billed: false,
            format_refused: false,
        }
    }
}

/// How a request carries the answer's schema (OpenAI-compatible servers; Anthropic takes it
/// as a tool unless it is [`Format::Plain`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// Not at all.
    Plain,
    /// `response_format` `json_schema`.
    JsonSchema,
    /// `response_format` `json_object` with a `schema`.
    JsonObject,
}

/// `structured_output`, and what this process learned the server takes (`auto`).
#[derive(Debug, Default)]
pub struct Structured {
    pub setting: StructuredOutput,
    /// `auto` found the server refusing `json_schema`: `json_object` from then on.
    json_object: std::sync::atomic::AtomicBool,
}

impl Structured {
    pub fn new(setting: StructuredOutput) -> Structured {
        Structured {
            setting,
            json_object: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// `auto` learned that the server refuses `json_schema`: `true` the first time (to say so
    /// once).
    pub fn learn_json_object(&self) -> bool {
        !self
            .json_object
            .swap(true, std::sync::atomic::Ordering::Relaxed)
    }
}

/// One answer, as the provider sent it.
#[derive(Debug)]
pub struct Reply {
    /// The answer: a JSON value when the provider handed one over (a tool call), else its text.
    pub content: Content,
    pub tokens_in: u64,
    pub tokens_out: u64,
    /// Why generation stopped, as the provider says it (`length`/`max_tokens` cut answers).
    pub stop: Option<String>,
}

#[derive(Debug)]
pub enum Content {
    Json(Value),
    Text(String),
}

/// How the client connects: its time limits, and how many connections it keeps.
#[derive(Debug, Clone, Copy)]
pub struct Connection {
    pub connect_timeout: Duration,
    pub read_timeout: Option<Duration>,
    /// Calls at once (idle connections kept).
    pub concurrency: usize,
}

/// What a request needs besides the prompt. Its `Debug` leaves the key out.
pub struct Client {
    pub provider: Provider,
    pub endpoint: String,
    pub model: String,
    /// The key (never shown) and the variable it came from (shown in errors).
    pub key: Option<String>,
    pub key_env: String,
    pub max_tokens: u32,
    pub temperature: Option<f64>,
    /// The schema to send as the structured-output option, if any.
    pub schema: Option<Value>,
    /// How it is sent.
    pub structured: Structured,
    pub agent: ureq::Agent,
    /// Hides the key in what the stage says; `None` without a key (or with one too short).
    scrubber: Option<Box<Scrubber>>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("provider", &self.provider)
            .field("endpoint", &self.endpoint)
            .field("model", &self.model)
            .field("key_env", &self.key_env)
            .field("key", &self.key.as_ref().map(|_| "***"))
            .finish_non_exhaustive()
    }
}

impl Client {
    pub fn new(
        provider: Provider,
        base_url: &str,
        model: String,
        key: Option<String>,
        key_env: String,
        connection: Connection,
    ) -> Client {
        let path = match provider {
            Provider::Anthropic => "messages",
            _ => "chat/completions",
        };
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .max_redirects(0)
            .user_agent(concat!("stagewise/", env!("CARGO_PKG_VERSION")))
            .timeout_connect(Some(connection.connect_timeout))
            .timeout_per_read(connection.read_timeout)
            // Keep a connection per thread of the pool: without it, most calls would open a
            // new connection (and TLS session) at full concurrency.
            .max_idle_connections_per_host(connection.concurrency.max(1))
            .max_idle_connections(connection.concurrency.max(1) * 2)
            .build()
            .into();
        Client {
            provider,
            endpoint: format!("{}/{path}", base_url.trim_end_matches('/')),
            model,
            scrubber: key.as_deref().and_then(Scrubber::new).map(Box::new),
            key,
            key_env,
            max_tokens: 1024,
            temperature: None,
            schema: None,
            structured: Structured::default(),
            agent,
        }
    }

    /// How the next request carries the schema: as `structured_output` says, and for `auto` as
    /// the server was found to take it.
    pub fn format(&self) -> Format {
        if self.schema.is_none() {
            return Format::Plain;
        }
        match self.structured.setting {
            StructuredOutput::Off => Format::Plain,
            StructuredOutput::JsonSchema => Format::JsonSchema,
            StructuredOutput::JsonObject => Format::JsonObject,
            StructuredOutput::Auto
                if self
                    .structured
                    .json_object
                    .load(std::sync::atomic::Ordering::Relaxed) =>
            {
                Format::JsonObject
            }
            StructuredOutput::Auto => Format::JsonSchema,
        }
    }

    /// The request body, the schema carried as `format`.
    pub fn body_as(&self, system: Option<&str>, prompt: &str, format: Format) -> Value {
        let schema = self.schema.as_ref().filter(|_| format != Format::Plain);
        let mut body = match self.provider {
            Provider::Anthropic => {
                let mut body = json!({
                    "model": self.model,
                    "max_tokens": self.max_tokens,
                    "messages": [{ "role": "user", "content": prompt }],
                });
                if let Some(system) = system {
                    body["system"] = json!(system);
                }
                if let Some(schema) = schema {
                    body["tools"] = json!([{
                        "name": ANSWER_TOOL,
                        "description": "Record the answer in the required structure.",
                        "input_schema": schema,
                    }]);
                    body["tool_choice"] = json!({ "type": "tool", "name": ANSWER_TOOL });
                }
                body
            }
            _ => {
                let mut messages = Vec::new();
                if let Some(system) = system {
                    messages.push(json!({ "role": "system", "content": system }));
                }
                messages.push(json!({ "role": "user", "content": prompt }));
                let mut body = json!({
                    "model": self.model,
                    "messages": messages,
                });
                // OpenAI's own API (and Azure's) took `max_tokens` over to
                // `max_completion_tokens`, and its reasoning models refuse the old name; the
                // servers that copy the API (Ollama, vLLM, llama.cpp…) know the old one.
                let field = if self.endpoint.contains("openai.com")
                    || self.endpoint.contains("openai.azure.com")
                {
                    "max_completion_tokens"
                } else {
                    "max_tokens"
                };
                body[field] = json!(self.max_tokens);
                match (schema, format) {
                    (Some(schema), Format::JsonSchema) => {
                        body["response_format"] = json!({
                            "type": "json_schema",
                            "json_schema": { "name": "answer", "schema": schema },
                        });
                    }
                    (Some(schema), Format::JsonObject) => {
                        body["response_format"] = json!({
                            "type": "json_object",
                            "schema": schema,
                        });
                    }
                    _ => {}
                }
                body
            }
        };
        if let Some(t) = self.temperature {
            body["temperature"] = json!(t);
        }
        body
    }

    /// Send one request; it ends by `deadline` (the attempt's), whatever the server does:
    /// the time left is measured just before the request goes out and bounds all of it, the
    /// name's resolution and the connection included.
    pub fn call(&self, body: &Value, deadline: Instant) -> Result<Reply, Failure> {
        let had_format = body.get("response_format").is_some();
        let body = body.to_string();
        let request = self.authorized(
            self.agent
                .post(self.endpoint.as_str())
                .header("content-type", "application/json"),
        );
        let remaining = deadline.saturating_duration_since(Instant::now());
        if remaining.is_zero() {
            return Err(Failure::refused(
                StageError::transient("no time left before the attempt's deadline")
                    .with_kind(ErrorKind::Timeout),
            ));
        }
        let response = request
            .config()
            .timeout_global(Some(remaining))
            .build()
            .send(body.as_bytes())
            .map_err(|e| {
                // Said with where it went: an endpoint that cannot be reached is often a
                // `base_url` mistyped.
                let mut error = classify(&e);
                error.message = format!(
                    "{}: {}",
                    stagewise_core::text::redact_url(&self.endpoint),
                    error.message
                );
                Failure {
                    maybe_billed: sent(&e),
                    error,
                    format_refused: false,
                }
            })?;
        let status = response.status().as_u16();
        let hint = retry_hint(response.headers());
        let mut reader = response.into_body().into_reader();
        let mut bytes = Vec::new();
        if status != 200 {
            // An error's body is only read for its message: a bounded, best-effort read.
            let _ = (&mut reader).take(MAX_ERROR_BODY).read_to_end(&mut bytes);
            let text = String::from_utf8_lossy(&bytes);
            if format_refused(status, &text, had_format) {
                // Not the server's trouble, nor the item's: the mode. Trying again changes
                // nothing; `auto` sends it another way at once (see `Llm::ask`).
                let error = self.status_error(status, &text, None);
                let message = format!(
                    "{} — the server does not take `response_format` as sent; set `structured_output` to \"json_object\" (llama-cpp-python's server), \"auto\" or \"off\"",
                    error.message
                );
                return Err(Failure {
                    error: StageError::permanent(message).with_kind(error.kind),
                    maybe_billed: false,
                    format_refused: true,
                });
            }
            return Err(Failure::refused(self.status_error(status, &text, hint)));
        }
        reader
            .take(MAX_BODY)
            .read_to_end(&mut bytes)
            .map_err(|e| Failure {
                error: read_error(&e),
                maybe_billed: true,
                format_refused: false,
            })?;
        // An answer that echoes the key (asked to by a prompt from data, say) must not carry it
        // into the records, the store or the response cache.
        let text = match &self.scrubber {
            Some(scrubber) => {
                std::borrow::Cow::Owned(scrubber.scrub(&String::from_utf8_lossy(&bytes)))
            }
            None => String::from_utf8_lossy(&bytes),
        };
        let garbled = |what: String| Failure {
            error: StageError::transient(what).with_kind(ErrorKind::InvalidOutput),
            maybe_billed: true,
            format_refused: false,
        };
        let value: Value = serde_json::from_str(&text).map_err(|e| {
            garbled(format!(
                "the API's response is not JSON ({e}): {}",
                excerpt(&text, ERROR_BODY_CHARS)
            ))
        })?;
        match self.provider {
            Provider::Anthropic => anthropic_reply(&value),
            _ => openai_reply(&value),
        }
        .ok_or_else(|| {
            garbled(format!(
                "the API's response has no answer where the {} API puts it: {}",
                self.provider.as_str(),
                excerpt(&text, ERROR_BODY_CHARS)
            ))
        })
    }

    /// Whether the server takes the schema as `format`: one request whose answer may be a few
    /// tokens long (`validate --connect`), ending by `deadline`. What it answers is not read.
    pub fn takes(&self, format: Format, deadline: Instant) -> Result<(), Failure> {
        let mut body = self.body_as(None, PROBE_PROMPT, format);
        for field in ["max_tokens", "max_completion_tokens"] {
            if body.get(field).is_some() {
                body[field] = json!(PROBE_TOKENS);
            }
        }
        match self.call(&body, deadline) {
            Ok(_) => Ok(()),
            // A 200 whose body is not the API's shape: still, the server took the request.
            Err(f) if f.error.kind == ErrorKind::InvalidOutput => Ok(()),
            Err(f) => Err(f),
        }
    }

    /// `request` with the key and the headers the provider wants.
    fn authorized<B>(&self, request: ureq::RequestBuilder<B>) -> ureq::RequestBuilder<B> {
        match (self.provider, &self.key) {
            (Provider::Anthropic, Some(key)) => request
                .header("x-api-key", key.as_str())
                .header("anthropic-version", ANTHROPIC_VERSION),
            (Provider::Anthropic, None) => request.header("anthropic-version", ANTHROPIC_VERSION),
            (_, Some(key)) => request.header("authorization", format!("Bearer {key}")),
            (_, None) => request,
        }
    }

    /// The endpoint's list of models (`GET …/models`, which both APIs have and which costs no
    /// tokens), within `budget` (see [`Listed`]). A refused key is a fatal error; the server
    /// out of reach or failing, a transient one.
    pub fn models(&self, budget: Duration) -> Result<Listed, StageError> {
        let base = self
            .endpoint
            .strip_suffix("chat/completions")
            .or_else(|| self.endpoint.strip_suffix("messages"))
            .unwrap_or(&self.endpoint);
        let url = format!("{base}models");
        let response = self
            .authorized(self.agent.get(url.as_str()))
            .config()
            .timeout_global(Some(budget))
            .build()
            .call()
            .map_err(|e| {
                let error = classify(&e);
                self.scrub(StageError {
                    message: format!(
                        "{}: {}",
                        stagewise_core::text::redact_url(&url),
                        error.message
                    ),
                    ..error
                })
            })?;
        let status = response.status().as_u16();
        let mut bytes = Vec::new();
        let cap = if status == 200 {
            MAX_MODEL_LIST
        } else {
            MAX_ERROR_BODY
        };
        let read = response
            .into_body()
            .into_reader()
            .take(cap + 1)
            .read_to_end(&mut bytes);
        // What the server sends back must not carry the key into a message (a list that
        // echoes it, say).
        let text = match &self.scrubber {
            Some(scrubber) => scrubber.scrub(&String::from_utf8_lossy(&bytes)),
            None => String::from_utf8_lossy(&bytes).into_owned(),
        };
        match status {
            200 => {}
            404 | 405 => return Ok(Listed::NoList),
            _ => {
                let mut error = self.status_error(status, &text, None);
                error.message = error.message.replace(
                    &stagewise_core::text::redact_url(&self.endpoint),
                    &stagewise_core::text::redact_url(&url),
                );
                return Err(self.scrub(error));
            }
        }
        if let Err(e) = read {
            return Ok(Listed::Unreadable(format!("the list broke off: {e}")));
        }
        if bytes.len() as u64 > MAX_MODEL_LIST {
            return Ok(Listed::Unreadable(format!(
                "the list is longer than {} MiB",
                MAX_MODEL_LIST >> 20
            )));
        }
        // Scrubbed again once decoded: a key spelled with JSON escapes is the key.
        let scrub = |name: &str| match &self.scrubber {
            Some(scrubber) => scrubber.scrub(name),
            None => name.to_owned(),
        };
        let listed: Option<Vec<String>> = serde_json::from_str::<Value>(&text).ok().and_then(|v| {
            v.get("data")?.as_array().map(|models| {
                models
                    .iter()
                    .filter_map(|m| m.get("id")?.as_str().map(scrub))
                    .collect()
            })
        });
        Ok(match listed {
            Some(models) => Listed::Models(models),
            None => Listed::Unreadable(format!(
                "the answer is not a model list: {}",
                excerpt(&text, ERROR_BODY_CHARS)
            )),
        })
    }

    /// An error with every piece of the key taken out of its message, should a server or proxy
    /// echo it back (see `secret.rs`): every error the stage's call makes goes through it once,
    /// in `Llm::process`. (An answer's body is scrubbed as it is read, in [`Client::call`].)
    pub(crate) fn scrub(&self, mut error: StageError) -> StageError {
        if let Some(scrubber) = &self.scrubber {
            error.message = scrubber.scrub(&error.message);
        }
        error
    }

    fn status_error(&self, status: u16, body: &str, hint: Option<Duration>) -> StageError {
        let kind = ErrorKind::of_status(status).unwrap_or(ErrorKind::Network);
        self.status_error_unkinded(status, body, hint)
            .with_kind(kind)
    }

    fn status_error_unkinded(&self, status: u16, body: &str, hint: Option<Duration>) -> StageError {
        let detail = api_message(body);
        let message = format!(
            "HTTP {status} from {}: {detail}",
            stagewise_core::text::redact_url(&self.endpoint)
        );
        match status {
            401 | 403 => StageError::fatal(format!(
                "{message} — the API refused the key in `{}`{}; fix it and run again",
                self.key_env,
                if self.key.is_none() {
                    " (the variable is not set)"
                } else {
                    ""
                }
            )),
            408 | 409 | 429 | 500..=599 => {
                let error = StageError::transient(message);
                match hint {
                    Some(wait) => error.with_retry_after(wait),
                    None => error,
                }
            }
            _ => StageError::permanent(message),
        }
    }
}

/// Whether a request that carried a `response_format` was refused for it: a 400, 422 or 500
/// whose body names `response_format` or one of its types (llama-cpp-python answers a 500:
/// "Input should be 'text' or 'json_object'" at `('body', 'response_format', 'type')`).
fn format_refused(status: u16, body: &str, had_format: bool) -> bool {
    if !had_format || !matches!(status, 400 | 422 | 500) {
        return false;
    }
    // The field's name, not only a mode's: a server's own trouble may mention `json_schema`
    // (compiling its grammar, say) and is then not a refusal of the request's form.
    body.to_ascii_lowercase().contains("response_format")
}

/// Whether a failed request may have reached the provider and been answered (and billed)
/// without the answer reaching us: anything but a failure to connect.
fn sent(e: &ureq::Error) -> bool {
    !matches!(
        e,
        ureq::Error::Timeout(ureq::Timeout::Connect | ureq::Timeout::Resolve)
            | ureq::Error::HostNotFound
            | ureq::Error::ConnectionFailed
            | ureq::Error::BadUri(_)
    )
}

/// A number of seconds as a wait, if it is one (a number, not negative), at most a day.
fn seconds(secs: f64) -> Option<Duration> {
    const DAY: f64 = 24.0 * 3600.0;
    if secs.is_nan() {
        return None;
    }
    Duration::try_from_secs_f64(secs.min(DAY)).ok()
}

/// The error message of an API error body, or an excerpt of the body.
fn api_message(body: &str) -> String {
    serde_json::from_str::<Value>(body)
        .ok()
        .and_then(|v| {
            v.pointer("/error/message")
                .or_else(|| v.get("message"))
                .or_else(|| v.get("error"))
                .map(|m| m.as_str().map_or_else(|| m.to_string(), str::to_owned))
        })
        .map_or_else(
            || excerpt(body, ERROR_BODY_CHARS).to_owned(),
            |m| excerpt(&m, ERROR_BODY_CHARS).to_owned(),
        )
}

/// At most `chars` characters of `text`.
pub fn excerpt(text: &str, chars: usize) -> &str {
    text.char_indices()
        .nth(chars)
        .map_or(text, |(i, _)| &text[..i])
}

fn openai_reply(v: &Value) -> Option<Reply> {
    let choice = v.pointer("/choices/0")?;
    let message = choice.get("message")?;
    let content = match message.get("content").and_then(Value::as_str) {
        Some(text) => text.to_owned(),
        // A refusal comes instead of content; keep it as the (invalid) answer.
        None => message.get("refusal").and_then(Value::as_str)?.to_owned(),
    };
    Some(Reply {
        content: Content::Text(content),
        tokens_in: v
            .pointer("/usage/prompt_tokens")
            .and_then(Value::as_u64)
            .unwrap_or(0),
        tokens_out: v
            .pointer("/usage/completion_tokens")
            .and_then(Value::as_u64)
            .unwrap_or(0),
        stop: choice
            .get("finish_reason")
            .and_then(Value::as_str)
            .map(str::to_owned),
    })
}

fn anthropic_reply(v: &Value) -> Option<Reply> {
    let blocks = v.get("content")?.as_array()?;
    let tool = blocks
        .iter()
        .find(|b| b.get("type").and_then(Value::as_str) == Some("tool_use"))
        .and_then(|b| b.get("input"));
    let content = match tool {
        Some(input) => Content::Json(input.clone()),
        None => Content::Text(
            blocks
                .iter()
                .filter_map(|b| b.get("text").and_then(Value::as_str))
                .collect::<Vec<_>>()
                .join(""),
        ),
    };
    Some(Reply {
        content,
        tokens_in: v
            .pointer("/usage/input_tokens")
            .and_then(Value::as_u64)
            .unwrap_or(0),
        tokens_out: v
            .pointer("/usage/output_tokens")
            .and_then(Value::as_u64)
            .unwrap_or(0),
        stop: v
            .get("stop_reason")
            .and_then(Value::as_str)
            .map(str::to_owned),
    })
}

/// The wait a rate-limited or overloaded API asks for: `retry-after-ms`, `Retry-After`, then
/// the providers' reset headers (OpenAI's durations such as `6m0s`, Anthropic's RFC 3339 times).
/// The longest of the reset times wins: every limit must have reset before the retry.
fn retry_hint(headers: &ureq::http::HeaderMap) -> Option<Duration> {
    let get = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    if let Some(wait) = get("retry-after-ms")
        .and_then(|v| v.trim().parse::<f64>().ok())
        .and_then(|ms| seconds(ms / 1000.0))
    {
        return Some(wait);
    }
    if let Some(wait) = get("retry-after").and_then(parse_retry_after) {
        return Some(wait);
    }
    let mut longest: Option<Duration> = None;
    for (name, value) in headers {
        let Ok(value) = value.to_str() else { continue };
        let name = name.as_str();
        let wait = if name.starts_with("x-ratelimit-reset") {
            go_duration(value)
        } else if name.starts_with("anthropic-ratelimit-") && name.ends_with("-reset") {
            humantime::parse_rfc3339_weak(value).ok().map(|at| {
                at.duration_since(SystemTime::now())
                    .unwrap_or(Duration::ZERO)
            })
        } else {
            None
        };
        if let Some(wait) = wait {
            longest = Some(longest.map_or(wait, |l| l.max(wait)));
        }
    }
    longest
}

/// A duration as OpenAI writes it: `1s`, `6m0s`, `20ms`, `1h2m3.5s`.
fn go_duration(text: &str) -> Option<Duration> {
    let mut total = 0.0f64;
    let mut rest = text.trim();
    if rest.is_empty() {
        return None;
    }
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let number: f64 = rest[..digits].parse().ok()?;
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(rest.len());
        let scale = match &rest[..unit_len] {
            "h" => 3600.0,
            "m" => 60.0,
            "s" => 1.0,
            "ms" => 0.001,
            "us" | "µs" => 0.000_001,
            "ns" => 0.000_000_001,
            _ => return None,
        };
        total += number * scale;
        rest = &rest[unit_len..];
    }
    seconds(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn openai_durations() {
        assert_eq!(go_duration("1s"), Some(Duration::from_secs(1)));
        assert_eq!(go_duration("6m0s"), Some(Duration::from_secs(360)));
        assert_eq!(go_duration("20ms"), Some(Duration::from_millis(20)));
        assert_eq!(
            go_duration("1h2m3.5s"),
            Some(Duration::from_millis(3_723_500))
        );
        assert_eq!(go_duration("soon"), None);
        assert_eq!(go_duration(""), None);
    }

    #[test]
    fn hints_prefer_explicit_waits_then_the_longest_reset() {
        let mut h = ureq::http::HeaderMap::new();
        h.insert("x-ratelimit-reset-requests", "2s".parse().expect("value"));
        h.insert("x-ratelimit-reset-tokens", "7s".parse().expect("value"));
        assert_eq!(retry_hint(&h), Some(Duration::from_secs(7)));
        h.insert("retry-after", "3".parse().expect("value"));
        assert_eq!(retry_hint(&h), Some(Duration::from_secs(3)));
        h.insert("retry-after-ms", "1500".parse().expect("value"));
        assert_eq!(retry_hint(&h), Some(Duration::from_millis(1500)));
        let mut a = ureq::http::HeaderMap::new();
        let at = humantime::format_rfc3339_seconds(SystemTime::now() + Duration::from_secs(30));
        a.insert(
            "anthropic-ratelimit-requests-reset",
            at.to_string().parse().expect("value"),
        );
        let wait = retry_hint(&a).expect("a reset time");
        assert!(
            wait > Duration::from_secs(27) && wait <= Duration::from_secs(30),
            "{wait:?}"
        );
    }

    #[test]
    fn absurd_waits_are_capped_not_a_panic() {
        let mut h = ureq::http::HeaderMap::new();
        h.insert("retry-after-ms", "1e300".parse().expect("value"));
        assert_eq!(retry_hint(&h), Some(Duration::from_secs(24 * 3600)));
        let mut h = ureq::http::HeaderMap::new();
        h.insert(
            "x-ratelimit-reset-tokens",
            "99999999999999999999h".parse().expect("value"),
        );
        assert_eq!(retry_hint(&h), Some(Duration::from_secs(24 * 3600)));
        let mut h = ureq::http::HeaderMap::new();
        h.insert("retry-after-ms", "-5".parse().expect("value"));
        assert_eq!(retry_hint(&h), None);
    }

    #[test]
    fn the_key_stays_out_of_debug_and_errors() {
        let mut client = Client::new(
            Provider::Openai,
            "http://127.0.0.1:9/v1",
            "m".into(),
            Some("sk-secret-123".into()),
            "OPENAI_API_KEY".into(),
            Connection {
                connect_timeout: Duration::from_secs(1),
                read_timeout: None,
                concurrency: 1,
            },
        );
        assert!(!format!("{client:?}").contains("sk-secret-123"));
        let echoed = client.scrub(StageError::transient("proxy said: bad key sk-secret-123"));
        assert_eq!(echoed.message, "proxy said: bad key ***");
        // A 401 whose message is cut at 300 characters in the middle of the key, and one that
        // echoes it upper-cased.
        let cut = format!("{}sk-secret-123", "x".repeat(ERROR_BODY_CHARS - 10));
        for message in [cut, "Incorrect API key provided: SK-SECRET-123".to_owned()] {
            let body = json!({"error": {"message": message}}).to_string();
            let e = client.scrub(client.status_error(401, &body, None));
            assert!(
                !e.message.to_ascii_lowercase().contains("sk-secre") && e.message.contains("***"),
                "{}",
                e.message
            );
        }
        client.endpoint = "https://api.openai.com/v1/chat/completions".into();
        let body = client.body_as(None, "hi", client.format());
        assert_eq!(body["max_completion_tokens"], 1024);
        assert!(body.get("max_tokens").is_none());
    }

    #[test]
    fn the_schema_goes_as_each_mode_says_and_auto_learns_once() {
        let mut client = Client::new(
            Provider::Openai,
            "http://127.0.0.1:9/v1",
            "m".into(),
            None,
            "OPENAI_API_KEY".into(),
            Connection {
                connect_timeout: Duration::from_secs(1),
                read_timeout: None,
                concurrency: 1,
            },
        );
        assert_eq!(client.format(), Format::Plain, "no schema, nothing to send");
        let schema = json!({"type": "object"});
        client.schema = Some(schema.clone());
        let sent = |client: &Client| {
            client.body_as(None, "hi", client.format())["response_format"].clone()
        };
        for (setting, want) in [
            (
                StructuredOutput::JsonSchema,
                json!({"type": "json_schema", "json_schema": {"name": "answer", "schema": schema}}),
            ),
            (
                StructuredOutput::JsonObject,
                json!({"type": "json_object", "schema": schema}),
            ),
            (StructuredOutput::Off, Value::Null),
            (
                StructuredOutput::Auto,
                json!({"type": "json_schema", "json_schema": {"name": "answer", "schema": schema}}),
            ),
        ] {
            client.structured = Structured::new(setting);
            assert_eq!(sent(&client), want, "{setting:?}");
        }
        assert!(client.structured.learn_json_object(), "the first time");
        assert!(!client.structured.learn_json_object(), "said once");
        assert_eq!(sent(&client)["type"], "json_object");
        // What counts as a refusal of the mode.
        let llama = r#"{"error": {"message": "[{'type': 'literal_error', 'loc': ('body', 'response_format', 'type'), 'msg': \"Input should be 'text' or 'json_object'\"}]"}}"#;
        assert!(format_refused(500, llama, true));
        assert!(format_refused(
            400,
            "response_format is not supported",
            true
        ));
        assert!(!format_refused(500, llama, false), "no format was sent");
        assert!(
            !format_refused(503, llama, true),
            "a 503 is the server's trouble"
        );
        assert!(!format_refused(500, "internal error", true));
        assert!(
            !format_refused(
                500,
                "CUDA out of memory while compiling the json_schema grammar; try again",
                true
            ),
            "the server's trouble, though it names a mode"
        );
    }

    #[test]
    fn replies_of_both_apis() {
        let openai = json!({"choices": [{"message": {"content": "{\"a\":1}"}, "finish_reason": "stop"}],
                            "usage": {"prompt_tokens": 12, "completion_tokens": 3}});
        let r = openai_reply(&openai).expect("a reply");
        assert!(matches!(r.content, Content::Text(ref t) if t == "{\"a\":1}"));
        assert_eq!((r.tokens_in, r.tokens_out), (12, 3));
        let anthropic = json!({"content": [{"type": "tool_use", "name": "answer", "input": {"a": 1}}],
                               "usage": {"input_tokens": 5, "output_tokens": 2}, "stop_reason": "tool_use"});
        let r = anthropic_reply(&anthropic).expect("a reply");
        assert!(matches!(r.content, Content::Json(ref v) if v == &json!({"a": 1})));
        assert_eq!(r.stop.as_deref(), Some("tool_use"));
        assert!(openai_reply(&json!({"error": "x"})).is_none());
    }

    #[test]
    fn error_messages_come_from_the_body() {
        assert_eq!(
            api_message(r#"{"error":{"message":"Incorrect API key"}}"#),
            "Incorrect API key"
        );
        assert_eq!(api_message("plain failure"), "plain failure");
    }
}
