//! The `llm` stage of stagewise: structured facts from a record's text, asked of any
//! OpenAI-compatible endpoint or Anthropic's Messages API — or, offline, picked from the text by
//! the `extractive` provider.
//!
//! A slow, rate-limited, down or wrong endpoint cannot stall or lose a run: each call runs on
//! the stage's blocking pool, bounded by `connect_timeout` and the attempt's `timeout`; 429 and
//! 5xx are transient, with the provider's `Retry-After` or rate-limit reset headers as the
//! retry-after hint; 400/404 fail the item; 401/403 stop the run (a wrong key fails every item).
//! No piece of the key leaves in an error, however a server echoes it (`secret.rs`).
//! An answer that is not JSON or does not fit `schema` is retried up to
//! `invalid_output_attempts`, then fails the item quoting the answer. Valid answers are kept in
//! the checkpoint store's response cache, keyed by a hash of the request, so a rerun, a resume,
//! `retry-failed` or `--fresh` never pays for the same answer twice; the summary shows calls,
//! cache hits, tokens and cost, and `max_cost` stops the run before a call could cross it.

mod config;
mod extractive;
mod provider;
mod secret;
mod stage;
mod template;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use stagewise_core::stage::{
    BuildContext, ErrorClass, FieldsOut, KindDefaults, Probe, ProbeContext, Role, StageError,
    StageImpl, StageKind,
};
use stagewise_core::Registry;

pub use config::{default_schema, LlmConfig, Provider, StructuredOutput};
pub use extractive::split_sentences;
use provider::{Client, Failure, Format, Listed};
use stage::{Answerer, Budget, Llm, Prices};
use template::Template;

/// Register `llm`.
pub fn register(registry: &mut Registry) {
    registry.register(LlmKind);
}

/// The answer's schema: `schema`, the JSON of `schema_file` (resolved with `resolve`), or the
/// default.
fn answer_schema(
    config: &LlmConfig,
    resolve: &dyn Fn(&std::path::Path) -> std::path::PathBuf,
) -> Result<serde_json::Value, StageError> {
    Ok(match (&config.schema, &config.schema_file) {
        (Some(schema), _) => schema.clone(),
        (None, Some(file)) => {
            let path = resolve(file);
            let text = std::fs::read_to_string(&path).map_err(|e| {
                StageError::fatal(format!(
                    "`schema_file`: cannot read {}: {e}",
                    path.display()
                ))
            })?;
            serde_json::from_str(&text).map_err(|e| {
                StageError::fatal(format!(
                    "`schema_file`: {} is not JSON: {e}",
                    path.display()
                ))
            })?
        }
        (None, None) => default_schema(),
    })
}

/// The client of an API provider, its key read from the environment.
fn client(
    config: &LlmConfig,
    provider: Provider,
    schema: &serde_json::Value,
    concurrency: usize,
) -> Result<Client, StageError> {
    let key_env = config
        .api_key_env
        .clone()
        .unwrap_or_else(|| provider.default_key_env().to_owned());
    let key = std::env::var(&key_env)
        .ok()
        .map(|k| k.trim().to_owned())
        .filter(|k| !k.is_empty());
    if key.is_none() && provider == Provider::Anthropic {
        return Err(StageError::fatal(format!(
            "the API key variable `{key_env}` is not set (set it, or `api_key_env` to the variable that holds the key)"
        )));
    }
    if provider == Provider::Anthropic
        && schema.get("type").and_then(|t| t.as_str()) != Some("object")
        && config.structured_output != StructuredOutput::Off
    {
        return Err(StageError::fatal(
            "with provider `anthropic` and `structured_output`, the schema's root must be of type object (it is sent as a tool's input schema)",
        ));
    }
    let mut client = Client::new(
        provider,
        config
            .base_url
            .as_deref()
            .unwrap_or(provider.default_base_url()),
        config.model.clone().unwrap_or_default(),
        key,
        key_env,
        provider::Connection {
            connect_timeout: config.connect_timeout,
            read_timeout: config.read_timeout,
            concurrency,
        },
    );
    client.max_tokens = config.max_tokens;
    client.temperature = config.temperature;
    client.schema = (config.structured_output != StructuredOutput::Off).then(|| schema.clone());
    client.structured = provider::Structured::new(config.structured_output);
    Ok(client)
}

/// The longest the probe waits for an endpoint's model list.
const PROBE_WAIT: Duration = Duration::from_secs(10);

/// The probe of `llm`: the fields the prompts name (or the extractive provider's `input`)
/// arrive; the answer's schema reads; the endpoint answers its model list (no tokens spent),
/// takes the key, and lists the model.
fn probe(config: &LlmConfig, cx: &ProbeContext<'_>) -> Probe {
    let mut probe = Probe::giving(FieldsOut::Adds(vec![config.output.clone()]));
    if config.provider == Provider::Extractive {
        probe.reads("input", config.input.clone());
    } else {
        for (key, source) in [
            ("prompt", Some(&config.prompt)),
            ("system", config.system.as_ref()),
        ] {
            if let Some(Ok(template)) = source.map(|s| Template::parse(s)) {
                for field in template.fields() {
                    probe.reads(key, field.to_owned());
                }
            }
        }
    }
    let schema = match answer_schema(config, &|p| cx.resolve(p)) {
        Ok(schema) => schema,
        Err(e) => {
            probe.failed("schema_file", &e);
            return probe;
        }
    };
    if let Err(e) = jsonschema::validator_for(&schema) {
        probe.config(
            "schema_file",
            format!("the answer's schema is not a valid JSON Schema: {e}"),
        );
    }
    let provider = config.provider;
    if provider == Provider::Extractive {
        return probe;
    }
    let client = match client(config, provider, &schema, 1) {
        Ok(client) => client,
        Err(e) => {
            probe.failed("api_key_env", &e);
            return probe;
        }
    };
    let shown = stagewise_core::text::redact_url(&client.endpoint);
    let answered = match client.models(cx.remaining().min(PROBE_WAIT)) {
        Ok(Listed::NoList) => {
            probe.passed(format!(
                "{shown}: the server has no model list, so the endpoint is checked by the first call"
            ));
            true
        }
        Ok(Listed::Unreadable(why)) => {
            probe.doubt(
                "base_url",
                format!("the endpoint's model list could not be read ({why}): the model and the key are checked by the first call"),
            );
            true
        }
        Ok(Listed::Models(models)) if models.is_empty() || models.contains(&client.model) => {
            probe.passed(format!("{shown}: the endpoint answered and takes the key"));
            true
        }
        Ok(Listed::Models(models)) => {
            let mut listed: Vec<&str> = models.iter().map(String::as_str).take(10).collect();
            if models.len() > 10 {
                listed.push("…");
            }
            probe.doubt(
                "model",
                format!(
                    "the endpoint does not list the model `{}` (it lists {}): the calls may be refused",
                    stagewise_core::text::printable(&client.model),
                    stagewise_core::text::printable(&listed.join(", "))
                ),
            );
            true
        }
        // A refused key is the configuration's; a server out of reach or failing, an outage;
        // anything else it answers (a 400 to a list it does not keep) only a doubt.
        Err(e) => match e.class {
            ErrorClass::Fatal => {
                probe.config("api_key_env", e.message);
                false
            }
            ErrorClass::Transient => {
                probe.outage("base_url", e.message);
                false
            }
            ErrorClass::Permanent => {
                probe.doubt(
                    "base_url",
                    format!("the endpoint's model list could not be read: {}", e.message),
                );
                true
            }
        },
    };
    if answered && cx.asked && !cx.out_of_time() {
        structured_probe(&client, cx, &mut probe, &shown);
    }
    probe
}

/// `validate --connect` on an OpenAI-compatible endpoint that gets the schema: which
/// `structured_output` mode it takes, learned from one request of a few tokens per mode tried.
/// A mode set that it refuses is the configuration's error; `auto` says what it will send.
fn structured_probe(client: &Client, cx: &ProbeContext<'_>, probe: &mut Probe, shown: &str) {
    if client.provider != Provider::Openai {
        return;
    }
    let first = client.format();
    if first == Format::Plain {
        return;
    }
    // All the time the stage's checks have left: a local model's first answer may be slow.
    let deadline = Instant::now() + cx.remaining();
    let outcome = |failure: Failure, probe: &mut Probe| {
        let error = client.scrub(failure.error);
        match error.class {
            ErrorClass::Fatal => probe.config("api_key_env", error.message),
            ErrorClass::Transient => probe.outage(
                "structured_output",
                format!(
                    "which structured-output mode the endpoint takes was not learned: {}",
                    error.message
                ),
            ),
            ErrorClass::Permanent => probe.doubt(
                "structured_output",
                format!(
                    "which structured-output mode the endpoint takes was not learned: {}",
                    error.message
                ),
            ),
        }
    };
    let name = |format: Format| match format {
        Format::JsonObject => "`json_object` with the schema",
        _ => "`json_schema`",
    };
    match client.takes(first, deadline) {
        Ok(()) => probe.passed(format!(
            "{shown}: takes the answer's schema as `response_format` {}",
            name(first)
        )),
        Err(f) if f.format_refused && client.structured.setting == StructuredOutput::Auto => {
            match client.takes(Format::JsonObject, deadline) {
                Ok(()) => probe.passed(format!(
                    "{shown}: refuses `response_format` `json_schema` and takes `json_object` with the schema, which `structured_output = \"auto\"` will send after its first request"
                )),
                Err(f) if f.format_refused => probe.config(
                    "structured_output",
                    format!(
                        "the endpoint refuses the schema both as `json_schema` and as `json_object`: {}; set `structured_output = \"off\"` (the answer is then checked against the schema only once it came)",
                        client.scrub(f.error).message
                    ),
                ),
                Err(f) => outcome(f, probe),
            }
        }
        Err(f) if f.format_refused => {
            probe.config("structured_output", client.scrub(f.error).message)
        }
        Err(f) => outcome(f, probe),
    }
}

/// The `llm` kind.
#[derive(Debug, Clone, Copy, Default)]
pub struct LlmKind;

impl StageKind for LlmKind {
    type Config = LlmConfig;

    fn kind(&self) -> &'static str {
        "llm"
    }

    fn roles(&self) -> &'static [Role] {
        &[Role::Transform]
    }

    /// LLM APIs are slow and rate-limited: long attempts, more of them, patient backoff.
    fn defaults(&self) -> KindDefaults {
        KindDefaults {
            timeout: Some(Duration::from_secs(120)),
            attempts: Some(5),
            backoff_max: Some(Duration::from_secs(60)),
            concurrency: None,
        }
    }

    fn check(&self, config: &LlmConfig, _role: Role) -> Vec<(String, String)> {
        let mut problems = Vec::new();
        let mut problem = |key: &str, message: String| problems.push((key.to_owned(), message));
        let api = config.provider != Provider::Extractive;
        if api && config.model.as_deref().is_none_or(str::is_empty) {
            problem(
                "model",
                format!(
                    "`model` is required with provider `{}`",
                    config.provider.as_str()
                ),
            );
        }
        if let Some(url) = &config.base_url {
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                problem(
                    "base_url",
                    format!("`base_url` must be an http:// or https:// URL, not `{url}`"),
                );
            }
        }
        for (key, source) in [
            ("prompt", Some(&config.prompt)),
            ("system", config.system.as_ref()),
        ] {
            if let Some(Err(e)) = source.map(|s| Template::parse(s)) {
                problem(key, format!("`{key}`: {e}"));
            }
        }
        if api && Template::parse(&config.prompt).is_ok_and(|t| t.fields().next().is_none()) {
            problem(
                "prompt",
                "`prompt` uses no record field (`{{text}}`, say): every item would get the same answer".into(),
            );
        }
        if config.schema.is_some() && config.schema_file.is_some() {
            problem(
                "schema_file",
                "give `schema` or `schema_file`, not both".into(),
            );
        }
        if let Some(schema) = &config.schema {
            if let Err(e) = jsonschema::validator_for(schema) {
                problem(
                    "schema",
                    format!("`schema` is not a valid JSON Schema: {e}"),
                );
            }
        }
        if config.max_input_chars == 0 {
            problem(
                "max_input_chars",
                "`max_input_chars` must be more than 0".into(),
            );
        }
        if config.max_tokens == 0 {
            problem("max_tokens", "`max_tokens` must be more than 0".into());
        }
        for (key, price) in [
            ("price_per_mtok_in", config.price_per_mtok_in),
            ("price_per_mtok_out", config.price_per_mtok_out),
            ("max_cost", config.max_cost),
        ] {
            if price.is_some_and(|p| !p.is_finite() || p < 0.0) {
                problem(key, format!("`{key}` must be a number of at least 0"));
            }
        }
        if config.max_cost.is_some()
            && (config.price_per_mtok_in.is_none() || config.price_per_mtok_out.is_none())
        {
            problem(
                "max_cost",
                "`max_cost` needs `price_per_mtok_in` and `price_per_mtok_out` to count the cost"
                    .into(),
            );
        }
        if config.price_per_mtok_in.is_some() != config.price_per_mtok_out.is_some() {
            problem(
                "price_per_mtok_out",
                "set both `price_per_mtok_in` and `price_per_mtok_out`, or neither".into(),
            );
        }
        if config.output.is_empty() {
            problem("output", "`output` must not be empty".into());
        }
        problems
    }

    fn probe(&self, config: &LlmConfig, cx: &ProbeContext<'_>) -> Probe {
        probe(config, cx)
    }

    fn build(&self, config: LlmConfig, cx: &BuildContext) -> Result<StageImpl, StageError> {
        let schema = answer_schema(&config, &|p| cx.resolve(p))?;
        let validator = jsonschema::validator_for(&schema).map_err(|e| {
            StageError::fatal(format!(
                "the answer's schema is not a valid JSON Schema: {e}"
            ))
        })?;
        let template = |source: &str| {
            Template::parse(source)
                .map_err(|e| StageError::fatal(format!("a prompt template: {e}")))
        };
        let answerer = match config.provider {
            Provider::Extractive => Answerer::Extractive {
                shape: extractive::Shape::of(&schema).map_err(StageError::fatal)?,
                max_sentences: config.max_sentences,
            },
            provider => Answerer::Api(client(&config, provider, &schema, cx.concurrency)?),
        };
        let prices = match (config.price_per_mtok_in, config.price_per_mtok_out) {
            (Some(input), Some(output)) => Some(Prices { input, output }),
            _ => None,
        };
        let meter = cx.meter.clone();
        match &answerer {
            Answerer::Api(_) => {
                for figure in ["calls", "cache_hits", "tokens_in", "tokens_out"] {
                    meter.declare(figure);
                }
                if prices.is_some() {
                    meter.declare("cost");
                }
            }
            Answerer::Extractive { .. } => meter.declare("answers"),
        }
        Ok(StageImpl::Blocking(Arc::new(Llm {
            stage: cx.stage.clone(),
            answerer,
            system: config.system.as_deref().map(template).transpose()?,
            prompt: template(&config.prompt)?,
            input: config.input,
            output: config.output,
            max_input_chars: config.max_input_chars,
            validator,
            invalid_output_attempts: config.invalid_output_attempts.get(),
            cache: if config.cache { cx.cache.clone() } else { None },
            schema_hash: stage::hash(&[schema.to_string().as_bytes()]),
            missing: Mutex::new(Default::default()),
            prices,
            budget: config.max_cost.map(|max| Budget {
                max,
                state: Mutex::new((0.0, 0.0)),
            }),
            meter,
            invalid: Mutex::new(Default::default()),
        })))
    }
}
