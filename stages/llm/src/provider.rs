//! The two HTTP APIs: OpenAI's chat completions (which most servers speak) and Anthropic's
//! Messages. Each call is one blocking request, bounded by `connect_timeout` and the attempt's
//! deadline; failures are classified for the runner's retry policy.

use std::io::Read;
use std::time::{Duration, SystemTime};

use serde_json::{json, Value};
use stagewise_core::{parse_retry_after, StageError};
use stagewise_stages_http::{classify_read_error, classify_ureq_error};

use crate::config::Provider;

/// Longest error body kept for a message.
const ERROR_BODY_CHARS: usize = 300;
/// Largest response body read.
const MAX_BODY: u64 = 16 * 1024 * 1024;
/// The Messages API version sent to Anthropic.
const ANTHROPIC_VERSION: &str = "2023-06-01";
/// The name of the tool that carries a structured answer on Anthropic.
const ANSWER_TOOL: &str = "answer";

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

/// What a request needs besides the prompt.
#[derive(Debug)]
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
    pub agent: ureq::Agent,
}

impl Client {
    pub fn new(
        provider: Provider,
        base_url: &str,
        model: String,
        key: Option<String>,
        key_env: String,
        connect_timeout: Duration,
        concurrency: usize,
    ) -> Client {
        let path = match provider {
            Provider::Anthropic => "messages",
            _ => "chat/completions",
        };
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .max_redirects(0)
            .user_agent(concat!("stagewise/", env!("CARGO_PKG_VERSION")))
            .timeout_connect(Some(connect_timeout))
            // Keep a connection per thread of the pool: without it, most calls would open a
            // new connection (and TLS session) at full concurrency.
            .max_idle_connections_per_host(concurrency.max(1))
            .max_idle_connections(concurrency.max(1) * 2)
            .build()
            .into();
        Client {
            provider,
            endpoint: format!("{}/{path}", base_url.trim_end_matches('/')),
            model,
            key,
            key_env,
            max_tokens: 1024,
            temperature: None,
            schema: None,
            agent,
        }
    }

    /// The request body.
    pub fn body(&self, system: Option<&str>, prompt: &str) -> Value {
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
                if let Some(schema) = &self.schema {
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
                    "max_tokens": self.max_tokens,
                    "messages": messages,
                });
                if let Some(schema) = &self.schema {
                    body["response_format"] = json!({
                        "type": "json_schema",
                        "json_schema": { "name": "answer", "schema": schema },
                    });
                }
                body
            }
        };
        if let Some(t) = self.temperature {
            body["temperature"] = json!(t);
        }
        body
    }

    /// Send one request; `remaining` bounds it as a whole.
    pub fn call(&self, body: &Value, remaining: Duration) -> Result<Reply, StageError> {
        let mut request = self
            .agent
            .post(self.endpoint.as_str())
            .header("content-type", "application/json");
        match (self.provider, &self.key) {
            (Provider::Anthropic, Some(key)) => {
                request = request
                    .header("x-api-key", key.as_str())
                    .header("anthropic-version", ANTHROPIC_VERSION);
            }
            (Provider::Anthropic, None) => {
                request = request.header("anthropic-version", ANTHROPIC_VERSION);
            }
            (_, Some(key)) => request = request.header("authorization", format!("Bearer {key}")),
            (_, None) => {}
        }
        let response = request
            .config()
            .timeout_global(Some(remaining))
            .build()
            .send(body.to_string().as_bytes())
            .map_err(|e| classify_ureq_error(&e))?;
        let status = response.status().as_u16();
        let hint = retry_hint(response.headers());
        let mut text = String::new();
        response
            .into_body()
            .into_reader()
            .take(MAX_BODY)
            .read_to_string(&mut text)
            .map_err(|e| classify_read_error(&e))?;
        if status != 200 {
            return Err(self.status_error(status, &text, hint));
        }
        let value: Value = serde_json::from_str(&text).map_err(|e| {
            StageError::transient(format!(
                "the API's response is not JSON ({e}): {}",
                excerpt(&text, ERROR_BODY_CHARS)
            ))
        })?;
        match self.provider {
            Provider::Anthropic => anthropic_reply(&value),
            _ => openai_reply(&value),
        }
        .ok_or_else(|| {
            StageError::transient(format!(
                "the API's response has no answer where the {} API puts it: {}",
                self.provider.as_str(),
                excerpt(&text, ERROR_BODY_CHARS)
            ))
        })
    }

    fn status_error(&self, status: u16, body: &str, hint: Option<Duration>) -> StageError {
        let detail = api_message(body);
        let message = format!("HTTP {status} from {}: {detail}", self.endpoint);
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
    if let Some(ms) = get("retry-after-ms").and_then(|v| v.trim().parse::<f64>().ok()) {
        if ms.is_finite() && ms >= 0.0 {
            return Some(Duration::from_secs_f64(ms / 1000.0));
        }
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
    total.is_finite().then(|| Duration::from_secs_f64(total))
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
