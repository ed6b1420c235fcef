//! One item through the `llm` stage: render the prompt, answer from the cache or the provider
//! (within the budget), parse and check the answer, keep it.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};

use serde_json::Value;
use sha2::{Digest, Sha256};
use stagewise_core::stage::{
    BlockingStage, Context, ErrorClass, Meter, Outcome, Record, SharedCache, StageError,
};

use crate::config::StructuredOutput;
use crate::extractive::{self, Shape};
use crate::provider::{excerpt, Client, Content, Failure, Format, Reply};
use crate::template::{cut, Template};

/// Characters of an invalid answer quoted in the item's error.
const QUOTED_ANSWER: usize = 500;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Who answers.
pub(crate) enum Answerer {
    Api(Client),
    Extractive { shape: Shape, max_sentences: usize },
}

pub(crate) struct Llm {
    pub stage: String,
    pub answerer: Answerer,
    pub system: Option<Template>,
    pub prompt: Template,
    pub input: String,
    pub output: String,
    pub max_input_chars: usize,
    pub validator: jsonschema::Validator,
    pub invalid_output_attempts: u32,
    /// `None` with `cache = false` (or outside a run).
    pub cache: Option<SharedCache>,
    /// A hash of the answer's schema, part of every cache key (the request carries the schema
    /// only with `structured_output`).
    pub schema_hash: String,
    /// Template fields found missing so far (each warned about once).
    pub missing: Mutex<std::collections::HashSet<String>>,
    pub prices: Option<Prices>,
    pub budget: Option<Budget>,
    pub meter: Meter,
    /// Invalid answers so far, per item still being retried.
    pub invalid: Mutex<HashMap<String, u32>>,
}

/// Prices of a million tokens.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Prices {
    pub input: f64,
    pub output: f64,
}

impl Prices {
    fn cost(self, tokens_in: u64, tokens_out: u64) -> f64 {
        (tokens_in as f64 * self.input + tokens_out as f64 * self.output) / 1e6
    }
}

/// `max_cost`: what this process has spent and what the calls in flight may still spend.
pub(crate) struct Budget {
    pub max: f64,
    pub state: Mutex<(f64, f64)>,
}

impl Budget {
    /// Set aside `worst` for a call, or refuse it if it could cross the limit.
    fn reserve(&self, worst: f64) -> Result<(), StageError> {
        let mut state = lock(&self.state);
        let (spent, reserved) = *state;
        if spent + reserved + worst > self.max {
            return Err(StageError::fatal(format!(
                "max_cost {} would be crossed: {spent:.4} spent, {reserved:.4} set aside for calls in flight, and the next call may cost up to {worst:.4}; the run stops here (raise `max_cost` to go on)",
                self.max
            )));
        }
        state.1 += worst;
        Ok(())
    }

    fn settle(&self, worst: f64, actual: f64) {
        let mut state = lock(&self.state);
        state.1 = (state.1 - worst).max(0.0);
        state.0 += actual;
    }
}

/// Why an answer is not usable; each carries the start of the answer.
enum Invalid {
    NotJson { parse: String, answer: String },
    Schema { problems: String, answer: String },
    Cut { answer: String },
}

/// Longest schema problem quoted (a problem's text embeds the offending value).
const PROBLEM_CHARS: usize = 200;

/// A SHA-256 of `parts`, each followed by a NUL, in hex.
pub(crate) fn hash(parts: &[&[u8]]) -> String {
    let mut hash = Sha256::new();
    for part in parts {
        hash.update(part);
        hash.update([0]);
    }
    hash.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

impl Llm {
    fn render(&self, record: &Record, cx: &Context) -> (Option<String>, String) {
        let system = self
            .system
            .as_ref()
            .map(|t| t.render(record, self.max_input_chars));
        let prompt = self.prompt.render(record, self.max_input_chars);
        for field in system
            .iter()
            .flat_map(|s| &s.missing)
            .chain(&prompt.missing)
        {
            if lock(&self.missing).insert(field.clone()) {
                tracing::warn!(
                    stage = %self.stage,
                    key = cx.key(),
                    field = %field,
                    "a prompt names a field this record does not have: it is left empty (warned once per field)"
                );
            }
        }
        let cuts = system
            .iter()
            .flat_map(|s| &s.truncated)
            .chain(&prompt.truncated);
        for (field, chars) in cuts {
            if cx.attempt() == 1 {
                self.meter.add("truncated", 1.0);
                tracing::warn!(
                    stage = %self.stage,
                    key = cx.key(),
                    field = %field,
                    chars,
                    max_input_chars = self.max_input_chars,
                    "field cut to max_input_chars in the prompt"
                );
            }
        }
        (system.map(|s| s.text), prompt.text)
    }

    /// The cache key: everything that determines the answer — the provider's API and endpoint,
    /// the request (model, prompts, limits, the schema when sent) and the schema itself.
    fn cache_key(&self, client: &Client, body: &Value) -> String {
        hash(&[
            client.provider.as_str().as_bytes(),
            client.endpoint.as_bytes(),
            body.to_string().as_bytes(),
            self.schema_hash.as_bytes(),
        ])
    }

    /// The schema's complaints about `value`, at most three, each cut short.
    fn check(&self, value: &Value) -> Result<(), String> {
        let problems: Vec<String> = self
            .validator
            .iter_errors(value)
            .take(3)
            .map(|e| {
                let at = e.instance_path().to_string();
                let text = e.to_string();
                format!(
                    "{}{} (at {})",
                    excerpt(&text, PROBLEM_CHARS),
                    if text.chars().count() > PROBLEM_CHARS {
                        "…"
                    } else {
                        ""
                    },
                    if at.is_empty() { "/" } else { &at }
                )
            })
            .collect();
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems.join("; "))
        }
    }

    fn parse(&self, reply: &Reply) -> Result<Value, Invalid> {
        let answer = || match &reply.content {
            Content::Json(v) => excerpt(&v.to_string(), QUOTED_ANSWER).to_owned(),
            Content::Text(t) => excerpt(t, QUOTED_ANSWER).to_owned(),
        };
        let cut = matches!(reply.stop.as_deref(), Some("length" | "max_tokens"));
        let value = match &reply.content {
            Content::Json(v) => v.clone(),
            Content::Text(text) => parse_json_text(text).map_err(|parse| {
                if cut {
                    Invalid::Cut { answer: answer() }
                } else {
                    Invalid::NotJson {
                        parse,
                        answer: answer(),
                    }
                }
            })?,
        };
        if let Err(problems) = self.check(&value) {
            if cut {
                return Err(Invalid::Cut { answer: answer() });
            }
            return Err(Invalid::Schema {
                problems,
                answer: answer(),
            });
        }
        Ok(value)
    }

    fn ask(&self, client: &Client, record: &Record, cx: &Context) -> Result<Value, StageError> {
        let (system, prompt) = self.render(record, cx);
        let format = client.format();
        let body = client.body_as(system.as_deref(), &prompt, format);
        // Keyed by the request as `json_schema` would send it, however it is sent: an answer
        // `auto` got as `json_object` is found again by the next process, which starts with
        // `json_schema`.
        let key = self.cache.as_ref().map(|_| {
            let keyed = match format {
                Format::JsonObject => {
                    client.body_as(system.as_deref(), &prompt, Format::JsonSchema)
                }
                _ => body.clone(),
            };
            self.cache_key(client, &keyed)
        });
        if let (Some(cache), Some(key)) = (&self.cache, &key) {
            match cache.get(key) {
                Ok(Some(stored)) => match serde_json::from_str::<Value>(&stored) {
                    Ok(value) if self.check(&value).is_ok() => {
                        self.meter.add("cache_hits", 1.0);
                        return Ok(value);
                    }
                    _ => {
                        tracing::warn!(stage = %self.stage, key = cx.key(), "a cached answer no longer fits the schema; asking again")
                    }
                },
                Ok(None) => {}
                Err(e) => {
                    tracing::warn!(stage = %self.stage, error = %e, "cannot read the response cache; asking the API")
                }
            }
        }
        let mut reply = self.send(client, &body, cx);
        let refused = matches!(&reply, Err(f) if f.format_refused);
        if refused
            && format == Format::JsonSchema
            && client.structured.setting == StructuredOutput::Auto
        {
            // The server takes another mode: this request again at once, as `json_object`
            // (within the same attempt), and every later one of the process.
            if client.structured.learn_json_object() {
                let reason = reply.as_ref().err().map(|f| f.error.message.clone());
                tracing::warn!(
                    stage = %self.stage,
                    reason = %client.scrub(StageError::permanent(reason.unwrap_or_default())).message,
                    "the server does not take `response_format` of type `json_schema`: sending the schema as `json_object` from now on (`structured_output = \"auto\"`)"
                );
            }
            let body = client.body_as(system.as_deref(), &prompt, Format::JsonObject);
            reply = self.send(client, &body, cx);
        }
        let reply = reply.map_err(|failure| failure.error)?;
        let value = self
            .parse(&reply)
            .map_err(|invalid| self.invalid(cx, invalid))?;
        if let (Some(cache), Some(key)) = (&self.cache, &key) {
            if let Err(e) = cache.put(key, &self.stage, &value.to_string()) {
                tracing::warn!(stage = %self.stage, key = cx.key(), error = %e, "cannot keep the answer in the response cache");
            }
        }
        Ok(value)
    }

    /// One call, within the budget, counted in the stage's figures.
    fn send(&self, client: &Client, body: &Value, cx: &Context) -> Result<Reply, Failure> {
        let worst = self.prices.map_or(0.0, |p| {
            // About 4 characters a token; 3 errs on the dear side.
            p.cost(
                body.to_string().chars().count() as u64 / 3 + 1,
                u64::from(client.max_tokens),
            )
        });
        if let Some(budget) = &self.budget {
            budget.reserve(worst).map_err(|error| Failure {
                error,
                maybe_billed: false,
                format_refused: false,
            })?;
        }
        let reply = client.call(body, cx.deadline());
        let actual = match &reply {
            Ok(r) => {
                self.meter.add("tokens_in", r.tokens_in as f64);
                self.meter.add("tokens_out", r.tokens_out as f64);
                if r.tokens_in + r.tokens_out == 0 {
                    // No usage reported: count the worst case rather than nothing.
                    worst
                } else {
                    self.prices
                        .map_or(0.0, |p| p.cost(r.tokens_in, r.tokens_out))
                }
            }
            // Sent, and the answer lost: it may be billed.
            Err(failure) if failure.maybe_billed => worst,
            Err(_) => 0.0,
        };
        self.meter.add("calls", 1.0);
        if self.prices.is_some() {
            self.meter.add("cost", actual);
        }
        if let Some(budget) = &self.budget {
            budget.settle(worst, actual);
        }
        reply
    }

    /// An invalid answer: transient until the item has had `invalid_output_attempts` of them.
    fn invalid(&self, cx: &Context, invalid: Invalid) -> StageError {
        self.meter.add("invalid_answers", 1.0);
        let message = match invalid {
            Invalid::NotJson { parse, answer } => {
                format!("the answer is not JSON ({parse}); it begins: {answer}")
            }
            Invalid::Schema { problems, answer } => {
                format!("the answer does not fit the schema: {problems}; it begins: {answer}")
            }
            Invalid::Cut { answer } => format!(
                "the answer was cut at `max_tokens` before it was complete; it begins: {answer}"
            ),
        };
        let mut invalid = lock(&self.invalid);
        let count = invalid.entry(cx.key().to_owned()).or_insert(0);
        *count += 1;
        if *count >= self.invalid_output_attempts {
            let count = *count;
            invalid.remove(cx.key());
            StageError::permanent(format!("{message} (invalid answer {count} of {count} allowed by `invalid_output_attempts`)"))
                .with_kind(stagewise_core::stage::ErrorKind::InvalidOutput)
        } else {
            StageError::transient(message)
                .with_kind(stagewise_core::stage::ErrorKind::InvalidOutput)
        }
    }
}

impl BlockingStage for Llm {
    fn process(&self, mut record: Record, cx: &Context) -> Result<Outcome, StageError> {
        if cx.attempt() == 1 {
            // A count left by an earlier run of this key (ended by another error) starts over.
            lock(&self.invalid).remove(cx.key());
        }
        let value = match &self.answerer {
            Answerer::Api(client) => self
                .ask(client, &record, cx)
                .inspect_err(|e| {
                    if e.class != ErrorClass::Transient {
                        lock(&self.invalid).remove(cx.key());
                    }
                })
                // Whatever the error quotes (a body, an answer), no piece of the key leaves.
                .map_err(|e| client.scrub(e))?,
            Answerer::Extractive {
                shape,
                max_sentences,
            } => {
                let text = record.get_str(&self.input).unwrap_or_default();
                let chars = text.chars().count();
                if chars > self.max_input_chars && cx.attempt() == 1 {
                    self.meter.add("truncated", 1.0);
                    tracing::warn!(
                        stage = %self.stage,
                        key = cx.key(),
                        field = %self.input,
                        chars,
                        max_input_chars = self.max_input_chars,
                        "field cut to max_input_chars"
                    );
                }
                let value =
                    extractive::answer(cut(text, self.max_input_chars), shape, *max_sentences);
                self.check(&value).map_err(|problems| {
                    StageError::permanent(format!(
                        "the extractive answer does not fit the schema: {problems}"
                    ))
                    .with_kind(stagewise_core::stage::ErrorKind::InvalidOutput)
                })?;
                self.meter.add("answers", 1.0);
                value
            }
        };
        lock(&self.invalid).remove(cx.key());
        record.fields.insert(self.output.clone(), value);
        Ok(Outcome::Continue(record))
    }
}

/// The JSON in an answer's text: the whole text, or inside a Markdown code fence, or from its
/// first `{` to its last `}` (models like to add a sentence around it).
fn parse_json_text(text: &str) -> Result<Value, String> {
    match find_json(text) {
        Ok(value) => Ok(value),
        // A local server's grammar (llama-cpp-python's) lets raw control characters, a
        // newline say, into a string, which JSON forbids: such an answer is read with them
        // escaped, rather than paid for again.
        Err(e) => match escape_controls_in_strings(text) {
            Some(escaped) => find_json(&escaped).map_err(|_| e),
            None => Err(e),
        },
    }
}

/// `text` with the control characters inside its JSON strings escaped, if it has any (one
/// pass, whatever the text).
fn escape_controls_in_strings(text: &str) -> Option<String> {
    let mut out = String::with_capacity(text.len() + 16);
    let (mut in_string, mut escaped, mut changed) = (false, false, false);
    for c in text.chars() {
        if !in_string {
            in_string = c == '"';
            out.push(c);
            continue;
        }
        match c {
            _ if escaped => {
                escaped = false;
                out.push(c);
            }
            '\\' => {
                escaped = true;
                out.push(c);
            }
            '"' => {
                in_string = false;
                out.push(c);
            }
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if u32::from(c) < 0x20 => out.push_str(&format!("\\u{:04x}", u32::from(c))),
            c => {
                out.push(c);
                continue;
            }
        }
        changed |= u32::from(c) < 0x20;
    }
    changed.then_some(out)
}

/// The JSON value in an answer: all of it, in a code fence, or between its first `{` and last
/// `}`.
fn find_json(text: &str) -> Result<Value, String> {
    let trimmed = text.trim();
    let first = match serde_json::from_str(trimmed) {
        Ok(v) => return Ok(v),
        Err(e) => e.to_string(),
    };
    let fenced = trimmed
        .strip_prefix("```")
        .and_then(|rest| rest.split_once('\n'))
        .and_then(|(_, rest)| rest.trim_end().strip_suffix("```"));
    if let Some(v) = fenced.and_then(|f| serde_json::from_str(f).ok()) {
        return Ok(v);
    }
    match (trimmed.find('{'), trimmed.rfind('}')) {
        (Some(start), Some(end)) if start < end => {
            serde_json::from_str(&trimmed[start..=end]).map_err(|_| first)
        }
        _ => Err(first),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn finds_json_in_chatty_answers() {
        assert_eq!(parse_json_text(" {\"a\": 1} "), Ok(json!({"a": 1})));
        assert_eq!(
            parse_json_text("```json\n{\"a\": 1}\n```"),
            Ok(json!({"a": 1}))
        );
        assert_eq!(
            parse_json_text("Here you go: {\"a\": [1]} Hope it helps."),
            Ok(json!({"a": [1]}))
        );
        let e = parse_json_text("Sure! Here are the facts.").expect_err("no JSON");
        assert!(e.contains("expected value"), "{e}");
    }

    #[test]
    fn raw_control_characters_in_strings_are_read_escaped() {
        // As llama-cpp-python's grammar lets a model write: a raw newline and tab in a string.
        let answer = "{\"facts\": [\"one\nline\", \"tab\there\"], \"summary\": \"s\u{1}\"}";
        assert_eq!(
            parse_json_text(answer),
            Ok(json!({"facts": ["one\nline", "tab\there"], "summary": "s\u{1}"}))
        );
        // Escapes already there are kept; between values, whitespace stays whitespace.
        assert_eq!(
            parse_json_text("{\n\"a\": \"x\\\"y\nz\"\n}"),
            Ok(json!({"a": "x\"y\nz"}))
        );
        assert_eq!(escape_controls_in_strings("{\"a\": \"clean\"}"), None);
        let e = parse_json_text("not json\n at all").expect_err("no JSON");
        assert!(e.contains("expected"), "{e}");
    }

    #[test]
    fn a_budget_refuses_a_call_that_could_cross_it() {
        let b = Budget {
            max: 1.0,
            state: Mutex::new((0.0, 0.0)),
        };
        b.reserve(0.6).expect("fits");
        let e = b.reserve(0.6).expect_err("0.6 set aside + 0.6 > 1.0");
        assert_eq!(e.class, stagewise_core::stage::ErrorClass::Fatal);
        assert!(e.message.contains("max_cost 1"), "{}", e.message);
        b.settle(0.6, 0.1);
        b.reserve(0.6).expect("0.1 spent + 0.6 fits");
        assert_eq!(
            Prices {
                input: 2.0,
                output: 10.0
            }
            .cost(1_000_000, 100_000),
            3.0
        );
    }
}
