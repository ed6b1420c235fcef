//! `stagewise plan`: every setting of a validated pipeline after resolution, and where it came
//! from — a place in the file, an environment override, `[defaults]`, the stage kind, or the
//! built-in default.
//!
//! The values are those the run would use ([`Pipeline`], each stage's [`Policy`] as
//! `Policy::resolve` resolved it); the origins are read from the same document the
//! validator checked, with its spans, overrides and `${VAR}`s. Secrets never reach the plan:
//! URLs lose their passwords, and keys named like secrets show `***`. A PostgreSQL connection
//! string (the store's, a stage's `url`) is followed by the `sslmode` it connects with
//! (`store.sslmode`, `url.sslmode`).

use std::fmt::Write;

use serde_json::{json, Value};

use super::located::Place;
use super::{Pipeline, Validator};
use crate::policy::{Layer, Policy};

/// Where a resolved value came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// Written in the pipeline file (1-based line and column of its key).
    File {
        /// Line, from 1.
        line: usize,
        /// Column in characters, from 1.
        col: usize,
    },
    /// Set by this `STAGEWISE_…` environment variable.
    Env(String),
    /// Inherited from `[defaults]`, which got it from the inner origin.
    Defaults(Box<Origin>),
    /// A default of the stage's kind.
    Kind,
    /// The built-in default.
    BuiltIn,
    /// Decided by the stage's position: its role, and a source's concurrency of 1.
    Position,
}

impl Origin {
    fn from_place(place: Option<Place>) -> Origin {
        match place {
            Some(Place::File { line, col }) => Origin::File { line, col },
            Some(Place::Env(var)) => Origin::Env(var),
            // Every key present in the document has a span or an override.
            None => Origin::BuiltIn,
        }
    }

    /// As shown: `pipeline.toml:3:1`, `env STAGEWISE_…`, `[defaults] …`, `kind default`, ….
    fn describe(&self, file: &str) -> String {
        match self {
            Origin::File { line, col } => format!("{file}:{line}:{col}"),
            Origin::Env(var) => format!("env {var}"),
            Origin::Defaults(inner) => format!("[defaults] {}", inner.describe(file)),
            Origin::Kind => "kind default".to_owned(),
            Origin::BuiltIn => "built-in default".to_owned(),
            Origin::Position => "position in the pipeline".to_owned(),
        }
    }

    /// Where to sort a stage's own keys: the file's order, overrides after.
    fn order(&self) -> (usize, usize, usize) {
        match self {
            Origin::File { line, col } => (0, *line, *col),
            _ => (1, 0, 0),
        }
    }
}

/// One resolved setting.
#[derive(Debug, Clone, PartialEq)]
pub struct Setting {
    /// The key, dotted below the table (`retry.attempts`).
    pub key: String,
    /// The value as JSON, secrets redacted; `null` where unset means "none" or "all".
    pub value: Value,
    /// Where it came from.
    pub origin: Origin,
    /// The environment variables its `${VAR}`s took, if any.
    pub variables: Vec<String>,
    /// The value as the text form shows it.
    text: String,
}

impl Setting {
    /// The origin as shown, with the variables the value took.
    pub fn describe_origin(&self, file: &str) -> String {
        let mut out = self.origin.describe(file);
        if !self.variables.is_empty() {
            let vars: Vec<String> = self.variables.iter().map(|v| format!("${{{v}}}")).collect();
            let _ = write!(out, ", from {}", vars.join(", "));
        }
        out
    }

    fn to_json(&self, file: &str) -> Value {
        let mut v = json!({ "value": self.value, "origin": self.describe_origin(file) });
        if !self.variables.is_empty() {
            v["variables"] = json!(self.variables);
        }
        v
    }
}

/// One stage's settings: name, kind, role, policy, then its kind's own keys in file order.
#[derive(Debug, Clone, PartialEq)]
pub struct StagePlan {
    /// The stage's name.
    pub name: String,
    /// Its kind.
    pub kind: String,
    /// Its settings.
    pub settings: Vec<Setting>,
    /// A plugin stage: its own keys are shown as written, unchecked, since `plan` loads no
    /// plugin library (the plan says so under the stage).
    pub unchecked: bool,
}

/// What the plan says under a plugin stage.
const UNCHECKED_NOTE: &str = "a plugin stage: its own keys are shown as written, unchecked; `plan` loads no plugin library, `validate` and `run` load it and check them";

/// A pipeline's resolved settings, each with its origin.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    /// The pipeline file as the user named it.
    pub file: String,
    /// `[pipeline]`.
    pub pipeline: Vec<Setting>,
    /// `[checkpoint]`.
    pub checkpoint: Vec<Setting>,
    /// `[telemetry]`.
    pub telemetry: Vec<Setting>,
    /// The stages in order.
    pub stages: Vec<StagePlan>,
}

/// Builds settings from what the validator kept.
struct Reader<'a> {
    v: &'a Validator,
}

impl Reader<'_> {
    /// Whether the document (the environment applied) holds a value at `path`.
    fn present(&self, path: &[String]) -> bool {
        let Some((first, rest)) = path.split_first() else {
            return false;
        };
        let mut value = self.v.doc.get(first);
        for seg in rest {
            value = match value {
                Some(toml::Value::Table(t)) => t.get(seg),
                Some(toml::Value::Array(items)) => {
                    seg.parse::<usize>().ok().and_then(|i| items.get(i))
                }
                _ => None,
            };
        }
        value.is_some()
    }

    /// The origin of the value at `path`, which the document holds.
    fn written(&self, path: &[String]) -> Origin {
        Origin::from_place(self.v.origins.place(path, true))
    }

    /// The variables the value at `path` (or any value inside it) took.
    fn variables(&self, path: &[String]) -> Vec<String> {
        let mut vars: Vec<String> = Vec::new();
        for (p, names) in &self.v.substitutions {
            if p.starts_with(path) {
                for name in names {
                    if !vars.contains(name) {
                        vars.push(name.clone());
                    }
                }
            }
        }
        vars
    }

    /// A setting of a table outside `[[stage]]`: written there, or the built-in default.
    fn section(&self, table: &str, key: &str, value: Shown) -> Setting {
        let path = vec![table.to_owned(), key.to_owned()];
        let (origin, variables) = if self.present(&path) {
            (self.written(&path), self.variables(&path))
        } else {
            (Origin::BuiltIn, Vec::new())
        };
        value.setting(key, origin, variables)
    }
}

/// A value in both forms: JSON, and text as in a TOML file.
struct Shown {
    json: Value,
    text: String,
}

impl Shown {
    /// As people write it ("1m30s", "1.5s", "350µs"), exactly, so it can be pasted back into
    /// the file; a value finer than that is shown to the nanosecond ("1ms500us").
    fn duration(d: std::time::Duration) -> Shown {
        let s = crate::text::duration(d);
        let s = if humantime::parse_duration(&s).ok() == Some(d) {
            s
        } else {
            humantime::format_duration(d).to_string().replace(' ', "")
        };
        Shown {
            text: quote(&s),
            json: Value::String(s),
        }
    }

    fn string(s: &str) -> Shown {
        Shown {
            text: quote(s),
            json: Value::String(s.to_owned()),
        }
    }

    fn plain(json: Value) -> Shown {
        Shown {
            text: json.to_string(),
            json,
        }
    }

    /// An unset optional value, shown as what it means (`all`, `none`, `no limit`).
    fn unset(meaning: &str) -> Shown {
        Shown {
            json: Value::Null,
            text: meaning.to_owned(),
        }
    }

    fn toml(key: &str, value: &toml::Value) -> Shown {
        let value = redact_in(value, is_secret(key), key == "headers");
        Shown {
            json: toml_to_json(&value),
            text: toml_inline(&value),
        }
    }

    fn setting(self, key: &str, origin: Origin, variables: Vec<String>) -> Setting {
        Setting {
            key: key.to_owned(),
            value: self.json,
            origin,
            variables,
            text: self.text,
        }
    }
}

/// A list of error kinds, as `["timeout", "http_5xx"]`.
fn kinds_shown(kinds: &[crate::stage::ErrorKind]) -> Shown {
    let names: Vec<&str> = kinds.iter().map(|k| k.as_str()).collect();
    Shown {
        json: json!(names),
        text: format!("{names:?}"),
    }
}

fn policy_value(policy: &Policy, key: &str) -> Shown {
    match key {
        "timeout" => Shown::duration(policy.timeout),
        "item_deadline" => match policy.item_deadline {
            Some(deadline) => Shown::duration(deadline),
            None => Shown::unset("none"),
        },
        "retry.attempts" => Shown::plain(json!(policy.retry.attempts)),
        "retry.initial" => Shown::duration(policy.retry.initial),
        "retry.max" => Shown::duration(policy.retry.max),
        "retry.multiplier" => Shown {
            json: json!(policy.retry.multiplier),
            text: format!("{:?}", policy.retry.multiplier),
        },
        "retry.jitter" => Shown::plain(json!(policy.retry.jitter)),
        "retry.max_retry_after" => Shown::duration(policy.retry.max_retry_after),
        "retry.on" => match &policy.retry.on {
            Some(kinds) => kinds_shown(kinds),
            None => Shown::unset("the stage's transient errors"),
        },
        "retry.never" => kinds_shown(&policy.retry.never),
        "concurrency" => Shown::plain(json!(policy.concurrency)),
        "rate_limit" => match policy.rate_limit {
            Some(rate) => Shown::string(&rate.to_string()),
            None => Shown::unset("none"),
        },
        "max_abandoned" => Shown::plain(json!(policy.max_abandoned)),
        "breaker" => match &policy.breaker {
            Some(b) => {
                let on_open = match b.on_open {
                    crate::policy::OnOpen::Wait => "wait",
                    crate::policy::OnOpen::Abort => "abort",
                };
                let (window, cool_down) = (
                    crate::text::duration(b.window),
                    crate::text::duration(b.cool_down),
                );
                Shown {
                    json: json!({
                        "failures": b.failures,
                        "window": window,
                        "cool_down": cool_down,
                        "on_open": on_open,
                    }),
                    text: format!(
                        "{{ failures = {}, window = \"{window}\", cool_down = \"{cool_down}\", on_open = \"{on_open}\" }}",
                        b.failures
                    ),
                }
            }
            None => Shown::unset("none: off"),
        },
        other => unreachable!("`Policy::resolve` names no key `{other}`"),
    }
}

impl Plan {
    pub(super) fn new(p: &Pipeline, v: &Validator) -> Plan {
        let r = Reader { v };
        let pipeline = vec![
            r.section("pipeline", "name", Shown::string(&p.name)),
            r.section(
                "pipeline",
                "batch_size",
                p.batch_size
                    .map_or_else(|| Shown::unset("all"), |n| Shown::plain(json!(n))),
            ),
            r.section(
                "pipeline",
                "max_run_time",
                p.max_run_time
                    .map_or_else(|| Shown::unset("none"), Shown::duration),
            ),
            r.section(
                "pipeline",
                "shutdown_grace",
                Shown::duration(p.shutdown_grace),
            ),
            r.section(
                "pipeline",
                "max_failures",
                match p.max_failures {
                    None => Shown::unset("no limit"),
                    Some(m @ super::MaxFailures::Ratio(_)) => Shown::string(&m.to_string()),
                    Some(super::MaxFailures::Count(n)) => Shown::plain(json!(n)),
                },
            ),
            r.section("pipeline", "heartbeat", Shown::duration(p.heartbeat)),
            r.section("pipeline", "watchdog", Shown::duration(p.watchdog)),
            r.section(
                "pipeline",
                "interrupted_exit_code",
                Shown::plain(json!(p.interrupted_exit_code)),
            ),
            r.section(
                "pipeline",
                "timeouts_outlast_grace",
                Shown::plain(json!(p.timeouts_outlast_grace)),
            ),
        ];
        let store = p.checkpoint.store.shown();
        let store_setting = r.section("checkpoint", "store", Shown::string(&store));
        let store_sslmode = match &p.checkpoint.store {
            super::StoreLocation::Postgres(url) => sslmode_of("store", url, &store_setting),
            super::StoreLocation::Sqlite(_) => None,
        };
        // Only a PostgreSQL store's runners hold leases.
        let lease = matches!(p.checkpoint.store, super::StoreLocation::Postgres(_)).then(|| {
            r.section(
                "checkpoint",
                "lease_ttl",
                Shown::duration(p.checkpoint.lease_ttl),
            )
        });
        let checkpoint = vec![
            Some(store_setting),
            store_sslmode,
            Some(r.section(
                "checkpoint",
                "commit_interval",
                Shown::duration(p.checkpoint.commit_interval),
            )),
            Some(r.section(
                "checkpoint",
                "commit_max_items",
                Shown::plain(json!(p.checkpoint.commit_max_items)),
            )),
            lease,
        ]
        .into_iter()
        .flatten()
        .collect();
        let t = &p.telemetry;
        let telemetry = vec![
            r.section(
                "telemetry",
                "listen",
                t.listen
                    .map_or_else(|| Shown::unset("none"), |a| Shown::string(&a.to_string())),
            ),
            r.section(
                "telemetry",
                "push",
                t.push.as_deref().map_or_else(
                    || Shown::unset("none"),
                    |url| Shown::string(&crate::text::redact_url(url)),
                ),
            ),
            r.section("telemetry", "push_timeout", Shown::duration(t.push_timeout)),
        ];
        let stages = p
            .stages
            .iter()
            .zip(&v.layers)
            .enumerate()
            .map(|(i, (stage, layers))| {
                let at = |key: &str| -> Vec<String> {
                    let mut path = vec!["stage".to_owned(), i.to_string()];
                    path.extend(key.split('.').map(str::to_owned));
                    path
                };
                let mut settings = vec![
                    Shown::string(&stage.name).setting(
                        "name",
                        r.written(&at("name")),
                        r.variables(&at("name")),
                    ),
                    Shown::string(&stage.kind).setting(
                        "kind",
                        r.written(&at("kind")),
                        r.variables(&at("kind")),
                    ),
                    Shown::string(stage.role.as_str()).setting(
                        "role",
                        Origin::Position,
                        Vec::new(),
                    ),
                ];
                for (key, layer) in layers {
                    let (origin, variables) = match layer {
                        Layer::Stage => (r.written(&at(key)), r.variables(&at(key))),
                        Layer::Defaults => {
                            let mut path = vec!["defaults".to_owned()];
                            path.extend(key.split('.').map(str::to_owned));
                            (
                                Origin::Defaults(Box::new(r.written(&path))),
                                r.variables(&path),
                            )
                        }
                        Layer::Kind => (Origin::Kind, Vec::new()),
                        Layer::BuiltIn => (Origin::BuiltIn, Vec::new()),
                        Layer::Source => (Origin::Position, Vec::new()),
                    };
                    settings.push(policy_value(&stage.policy, key).setting(key, origin, variables));
                }
                // Each key with the `sslmode` of the PostgreSQL connection string it holds, if
                // it does (a plugin's keys are its own business).
                let mut own: Vec<(Setting, Option<Setting>)> = stage
                    .options
                    .iter()
                    .map(|(key, value)| {
                        let setting = Shown::toml(key, value).setting(
                            key,
                            r.written(&at(key)),
                            r.variables(&at(key)),
                        );
                        let sslmode = match value {
                            toml::Value::String(url) if !stage.unchecked => {
                                sslmode_of(key, url, &setting)
                            }
                            _ => None,
                        };
                        (setting, sslmode)
                    })
                    .collect();
                own.sort_by_key(|(s, _)| s.origin.order());
                for (setting, sslmode) in own {
                    settings.push(setting);
                    settings.extend(sslmode);
                }
                StagePlan {
                    name: stage.name.clone(),
                    kind: stage.kind.clone(),
                    settings,
                    unchecked: stage.unchecked,
                }
            })
            .collect();
        Plan {
            file: v.file.clone(),
            pipeline,
            checkpoint,
            telemetry,
            stages,
        }
    }

    /// The plan as aligned text: one table after another, each line `key  value  origin`.
    pub fn render(&self) -> String {
        let all = || {
            self.pipeline
                .iter()
                .chain(&self.checkpoint)
                .chain(&self.telemetry)
                .chain(self.stages.iter().flat_map(|s| &s.settings))
        };
        let key_width = all().map(|s| s.key.chars().count()).max().unwrap_or(0);
        // A long value (a query, a prompt) pushes its own origin right instead of every line's.
        let value_width = all()
            .map(|s| s.text.chars().count())
            .filter(|n| *n <= 40)
            .max()
            .unwrap_or(0);
        let mut out = String::new();
        let block = |out: &mut String, title: &str, settings: &[Setting]| {
            if !out.is_empty() {
                out.push('\n');
            }
            let _ = writeln!(out, "{title}");
            for s in settings {
                let _ = writeln!(
                    out,
                    "  {:key_width$}  {:value_width$}  {}",
                    s.key,
                    s.text,
                    s.describe_origin(&self.file)
                );
            }
        };
        block(&mut out, "[pipeline]", &self.pipeline);
        block(&mut out, "[checkpoint]", &self.checkpoint);
        block(&mut out, "[telemetry]", &self.telemetry);
        for (i, stage) in self.stages.iter().enumerate() {
            let title = format!(
                "[[stage]] {} of {}: {}",
                i + 1,
                self.stages.len(),
                stage.name
            );
            block(&mut out, &title, &stage.settings);
            if stage.unchecked {
                let _ = writeln!(out, "  note: {UNCHECKED_NOTE}");
            }
        }
        out
    }

    /// The plan as JSON: `{"file", "pipeline": {key: {"value", "origin"}}, "checkpoint", "telemetry",
    /// "stages": [{"name", "kind", "settings": {key: …}}]}`; a plugin stage has a `"note"` saying
    /// that its own keys are unchecked.
    pub fn to_json(&self) -> Value {
        let table = |settings: &[Setting]| -> Value {
            Value::Object(
                settings
                    .iter()
                    .map(|s| (s.key.clone(), s.to_json(&self.file)))
                    .collect(),
            )
        };
        json!({
            "file": self.file,
            "pipeline": table(&self.pipeline),
            "checkpoint": table(&self.checkpoint),
            "telemetry": table(&self.telemetry),
            "stages": self.stages.iter().map(|s| {
                let mut stage = json!({
                    "name": s.name,
                    "kind": s.kind,
                    "settings": table(&s.settings),
                });
                if s.unchecked {
                    stage["note"] = json!(UNCHECKED_NOTE);
                }
                stage
            }).collect::<Vec<_>>(),
        })
    }
}

/// `KEY.sslmode`, shown after `url_setting` when `url` is a PostgreSQL connection string: the
/// TLS its connections use, written in the string (its origin) or the default (`prefer`, as
/// libpq's).
fn sslmode_of(key: &str, url: &str, url_setting: &Setting) -> Option<Setting> {
    let is_postgres = url.starts_with("postgres://")
        || url.starts_with("postgresql://")
        || crate::text::looks_like_conninfo(url);
    if !is_postgres {
        return None;
    }
    let parsed = crate::pg::ConnString::parse(url).ok()?;
    let (origin, variables) = if parsed.sslmode_is_default() {
        (Origin::BuiltIn, Vec::new())
    } else {
        (url_setting.origin.clone(), url_setting.variables.clone())
    };
    Some(Shown::string(parsed.sslmode().as_str()).setting(
        &format!("{key}.sslmode"),
        origin,
        variables,
    ))
}

/// Whether a key's value is a secret: its name has `password`, `secret`, `token`, `api_key`
/// or `authorization` in it, and it does not end in `_env` (which names a variable instead).
fn is_secret(key: &str) -> bool {
    let key = key.to_ascii_lowercase().replace('-', "_");
    !key.ends_with("_env")
        && ["password", "secret", "token", "api_key", "authorization"]
            .iter()
            .any(|word| key.contains(word))
}

/// Whether an HTTP header's value is a secret: `Authorization`, `Proxy-Authorization`,
/// `Cookie`, or a name with `key`, `token`, `secret`, `password` or `auth` in it (`X-Api-Key`,
/// `apikey`, `X-Auth-Token`).
fn is_secret_header(name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    name == "cookie"
        || ["key", "token", "secret", "password", "auth"]
            .iter()
            .any(|word| name.contains(word))
}

/// `value` with secrets hidden: under a secret key every string is `***` (numbers and booleans,
/// such as `max_tokens`, are no secrets); elsewhere a URL loses its password. In a `headers`
/// table (`headers`: `value` is one), the values of secret headers ([`is_secret_header`]) are
/// hidden too.
fn redact_in(value: &toml::Value, secret: bool, headers: bool) -> toml::Value {
    match value {
        toml::Value::String(_) if secret => toml::Value::String("***".to_owned()),
        toml::Value::String(s) if looks_like_url(s) || crate::text::looks_like_conninfo(s) => {
            toml::Value::String(crate::text::redact_url(s))
        }
        toml::Value::Array(items) => {
            toml::Value::Array(items.iter().map(|v| redact_in(v, secret, false)).collect())
        }
        toml::Value::Table(t) => toml::Value::Table(
            t.iter()
                .map(|(k, v)| {
                    let hidden = secret || is_secret(k) || (headers && is_secret_header(k));
                    (k.clone(), redact_in(v, hidden, k == "headers"))
                })
                .collect(),
        ),
        other => other.clone(),
    }
}

/// `scheme://…` at the start: a URL (a password in it may hold spaces), not a query or a prompt
/// that mentions one.
fn looks_like_url(s: &str) -> bool {
    let Some((scheme, _)) = s.split_once("://") else {
        return false;
    };
    scheme.starts_with(|c: char| c.is_ascii_alphabetic())
        && scheme
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c))
}

/// A string as TOML writes it, on one line.
fn quote(s: &str) -> String {
    // JSON's escapes are TOML's (basic strings), and never span lines.
    Value::String(s.to_owned()).to_string()
}

/// A value as a TOML inline value, on one line.
fn toml_inline(value: &toml::Value) -> String {
    match value {
        toml::Value::String(s) => quote(s),
        toml::Value::Integer(i) => i.to_string(),
        toml::Value::Float(f) => format!("{f:?}"),
        toml::Value::Boolean(b) => b.to_string(),
        toml::Value::Datetime(d) => d.to_string(),
        toml::Value::Array(items) => {
            let items: Vec<String> = items.iter().map(toml_inline).collect();
            format!("[{}]", items.join(", "))
        }
        toml::Value::Table(t) if t.is_empty() => "{}".to_owned(),
        toml::Value::Table(t) => {
            let entries: Vec<String> = t
                .iter()
                .map(|(k, v)| {
                    let bare = !k.is_empty()
                        && k.chars()
                            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
                    let k = if bare { k.clone() } else { quote(k) };
                    format!("{k} = {}", toml_inline(v))
                })
                .collect();
            format!("{{ {} }}", entries.join(", "))
        }
    }
}

fn toml_to_json(value: &toml::Value) -> Value {
    match value {
        toml::Value::String(s) => Value::String(s.clone()),
        toml::Value::Integer(i) => json!(i),
        toml::Value::Float(f) => json!(f),
        toml::Value::Boolean(b) => json!(b),
        toml::Value::Datetime(d) => Value::String(d.to_string()),
        toml::Value::Array(items) => Value::Array(items.iter().map(toml_to_json).collect()),
        toml::Value::Table(t) => Value::Object(
            t.iter()
                .map(|(k, v)| (k.clone(), toml_to_json(v)))
                .collect(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_hidden_and_variable_names_are_not() {
        let cases = [
            ("password", true),
            ("db_password", true),
            ("client_secret", true),
            ("X-Api-Token", true),
            ("api_key", true),
            ("Authorization", true),
            ("api_key_env", false),
            ("token_env", false),
            ("url", false),
            ("max_tokens", true),
        ];
        for (key, want) in cases {
            assert_eq!(is_secret(key), want, "{key}");
        }
        let value: toml::Table = toml::from_str(
            r#"
            max_tokens = 5
            token = "t"
            url = "postgres://u:p@h/db"
            query = "SELECT 'http://u:p@h' ?"
            headers = { Accept = "json", Cookie-Token = "c", Cookie = "session=1", apikey = "k", X-Api-Key = "k2", Proxy-Authorization = "Basic x", key = "not a header" }
            key = "id"
            tokens = ["a", "b"]
            "#,
        )
        .expect("toml");
        let shown =
            |key: &str| toml_inline(&redact_in(&value[key], is_secret(key), key == "headers"));
        assert_eq!(shown("max_tokens"), "5", "numbers are no secrets");
        assert_eq!(shown("token"), r#""***""#);
        assert_eq!(shown("url"), r#""postgres://u:***@h/db""#);
        assert_eq!(shown("query"), r#""SELECT 'http://u:p@h' ?""#, "not a URL");
        assert_eq!(
            shown("headers"),
            r#"{ Accept = "json", Cookie = "***", Cookie-Token = "***", Proxy-Authorization = "***", X-Api-Key = "***", apikey = "***", key = "***" }"#
        );
        assert_eq!(
            shown("key"),
            r#""id""#,
            "a stage's `key` names a column, no secret"
        );
        assert_eq!(shown("tokens"), r#"["***", "***"]"#);
    }

    #[test]
    fn values_show_as_toml_on_one_line() {
        let value: toml::Table = toml::from_str(
            "s = \"a\\nb \\\"q\\\"\"\nf = 2.0\nt = { \"a b\" = [1, true] }\ne = {}\n",
        )
        .expect("toml");
        let cases = [
            ("s", r#""a\nb \"q\"""#),
            ("f", "2.0"),
            ("t", r#"{ "a b" = [1, true] }"#),
            ("e", "{}"),
        ];
        for (key, want) in cases {
            assert_eq!(toml_inline(&value[key]), want, "{key}");
        }
    }
}
