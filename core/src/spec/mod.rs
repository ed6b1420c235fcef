//! The pipeline spec in three phases: raw (serde types 1:1 with `pipeline.toml`), validated
//! (pure: every problem of the file collected, each with its place and stage), and built (in the
//! runner: files, pools and connections opened).

mod keys;
mod located;
mod plan;
mod probe;
mod reference;
mod schema;
pub(crate) mod types;

use std::collections::HashSet;
use std::fmt;
use std::num::{NonZeroU64, NonZeroUsize};
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use keys::section_keys;
pub use located::Place;
use located::{KeyPath, Origins, Substitutions};
pub use plan::{Origin, Plan, Setting, StagePlan};
pub use probe::{probe, Probed, Scope};
pub use reference::{key_tables, KeyTable};
pub use schema::json_schema;
pub use types::MaxFailures;
use types::{CheckpointSpec, PipelineSpec, PolicySpec, TelemetrySpec, POLICY_KEYS};

use crate::config::{deserialize_all, KeyProblem, KeyProblemKind};
use crate::policy::{Layers, Policy};
use crate::registry::{Plugins, Registry};
use crate::stage::Role;

const TOP_KEYS: &[&str] = &["pipeline", "checkpoint", "telemetry", "defaults", "stage"];
const DEFAULT_GRACE: Duration = Duration::from_secs(30);
const DEFAULT_HEARTBEAT: Duration = Duration::from_secs(10);
const DEFAULT_WATCHDOG: Duration = Duration::from_secs(60);
const DEFAULT_COMMIT_INTERVAL: Duration = Duration::from_millis(200);
/// An interrupted run's exit code: `EX_TEMPFAIL`, "try again later".
const DEFAULT_INTERRUPTED_EXIT_CODE: u8 = 75;
const DEFAULT_COMMIT_MAX_ITEMS: usize = 1000;
const DEFAULT_LEASE_TTL: Duration = Duration::from_secs(60);
/// The shortest `lease_ttl`: below it, on a loaded machine, a runner was fenced at its start
/// (its first renewal late by a few hundred milliseconds).
const MIN_LEASE_TTL: Duration = Duration::from_secs(1);
const DEFAULT_PUSH_TIMEOUT: Duration = Duration::from_secs(5);
/// The longest `[telemetry] push_timeout`: a push must not hold a job's end for long.
const MAX_PUSH_TIMEOUT: Duration = Duration::from_secs(300);
/// Most items in one commit: a bound the writer's queue can hold.
const MAX_COMMIT_ITEMS: usize = 1_000_000;

/// How serious a [`Diagnostic`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    /// The file cannot be run.
    Error,
    /// The file runs, but probably not as meant.
    Warning,
}

/// One problem of a pipeline file, with where it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    /// Error or warning.
    pub severity: Severity,
    /// The pipeline file as the user named it.
    pub file: String,
    /// Where in the file (or which environment variable), when known.
    pub place: Option<Place>,
    /// The stage the problem belongs to.
    pub stage: Option<String>,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.place {
            Some(Place::File { line, col }) => write!(f, "{}:{line}:{col}: ", self.file)?,
            Some(Place::Env(var)) => write!(f, "environment variable `{var}`: ")?,
            None => write!(f, "{}: ", self.file)?,
        }
        if let Some(stage) = &self.stage {
            write!(f, "stage `{stage}`: ")?;
        }
        f.write_str(&self.message)
    }
}

/// A pipeline file that cannot be run: every error found in it.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{} error(s) in the pipeline file", .diagnostics.len())]
pub struct ConfigError {
    /// The errors (and any warnings found before them).
    pub diagnostics: Vec<Diagnostic>,
}

/// Where progress is saved.
#[derive(Debug, Clone, PartialEq)]
pub enum StoreLocation {
    /// A SQLite file.
    Sqlite(PathBuf),
    /// A PostgreSQL database (`postgres://`, `postgresql://` or a `key=value` connection
    /// string), as given: it may hold a password, so show it only through
    /// [`crate::text::redact_url`].
    Postgres(String),
}

impl StoreLocation {
    /// The store as messages show it: `sqlite:PATH`, or the URL with its password hidden.
    pub fn shown(&self) -> String {
        match self {
            StoreLocation::Sqlite(path) => {
                crate::text::redact_url(&format!("sqlite:{}", path.display()))
            }
            StoreLocation::Postgres(url) => crate::text::redact_url(url),
        }
    }
}

/// The resolved `[checkpoint]`.
#[derive(Debug, Clone)]
pub struct CheckpointConfig {
    /// Where.
    pub store: StoreLocation,
    /// Longest wait of an update before commit.
    pub commit_interval: Duration,
    /// Most updates per commit.
    pub commit_max_items: usize,
    /// How long a runner of a PostgreSQL store holds its items unrenewed.
    pub lease_ttl: Duration,
}

impl CheckpointConfig {
    /// The lease of a runner of this store, renewed every `heartbeat`.
    pub fn lease(&self, heartbeat: Duration) -> crate::checkpoint::LeaseTerms {
        crate::checkpoint::LeaseTerms::new(self.lease_ttl, heartbeat)
    }
}

/// The resolved `[telemetry]`.
#[derive(Debug, Clone, Default)]
pub struct TelemetryConfig {
    /// Where `/metrics`, `/healthz` and `/progress` are served, if anywhere.
    pub listen: Option<std::net::SocketAddr>,
    /// The Pushgateway the final metrics are pushed to, without a trailing `/`. It may hold a
    /// password: show it only through [`crate::text::redact_url`].
    pub push: Option<String>,
    /// The longest the push may take.
    pub push_timeout: Duration,
}

/// One resolved stage.
#[derive(Debug, Clone)]
pub struct StageConfig {
    /// Unique name.
    pub name: String,
    /// Registered kind.
    pub kind: String,
    /// Its place in the pipeline.
    pub role: Role,
    /// Its resolved policies.
    pub policy: Policy,
    /// The kind's own keys as the file gives them (for `plan`).
    pub(crate) options: toml::Table,
    /// The kind's own keys as the kind read and checked them, for the build.
    pub(crate) config: crate::registry::Checked,
    /// A plugin stage read without loading its library (`plan`, `status`): its own keys are as
    /// written, unchecked, and it cannot be built.
    pub(crate) unchecked: bool,
}

/// A validated pipeline, ready to build and run.
#[derive(Debug, Clone)]
pub struct Pipeline {
    /// `[pipeline] name`.
    pub name: String,
    /// The file it came from.
    pub file: PathBuf,
    /// The file's folder: relative paths are relative to it.
    pub base_dir: PathBuf,
    /// Items per run.
    pub batch_size: Option<u64>,
    /// Stop taking work after this long.
    pub max_run_time: Option<Duration>,
    /// Drain time after a stop request.
    pub shutdown_grace: Duration,
    /// Failure limit.
    pub max_failures: Option<MaxFailures>,
    /// Heartbeat interval.
    pub heartbeat: Duration,
    /// Longest time the runtime may go without answering before the watchdog ends the run.
    pub watchdog: Duration,
    /// The exit code of an interrupted run (75 unless set).
    pub interrupted_exit_code: u8,
    /// Stage timeouts longer than `shutdown_grace` are intended: not warned about.
    pub timeouts_outlast_grace: bool,
    /// Checkpointing.
    pub checkpoint: CheckpointConfig,
    /// Metrics served and pushed.
    pub telemetry: TelemetryConfig,
    /// The stages in order; the first is the source.
    pub stages: Vec<StageConfig>,
    /// Where each value of the file is, for what is found after validation (`probe`).
    pub(crate) origins: std::sync::Arc<Origins>,
}

impl Pipeline {
    /// Its stages' names and kinds, in order, as JSON (`[["src","generate"],["nap","sleep"]]`):
    /// what runners sharing a run must agree on. (JSON, so that no two lists read the same,
    /// whatever the names hold.)
    pub fn stage_list(&self) -> String {
        let pairs: Vec<[&str; 2]> = self
            .stages
            .iter()
            .map(|s| [s.name.as_str(), s.kind.as_str()])
            .collect();
        serde_json::to_string(&pairs).expect("strings always serialize")
    }
}

/// A [`Pipeline::stage_list`] for a person: `"src" (generate) > "nap" (sleep)`, each name
/// quoted (so that no two lists read the same); text that is not such a list is shown as it
/// is, escaped.
pub fn show_stage_list(list: &str) -> String {
    match serde_json::from_str::<Vec<[String; 2]>>(list) {
        Ok(pairs) => pairs
            .iter()
            .map(|[name, kind]| format!("{name:?} ({})", crate::text::printable(kind)))
            .collect::<Vec<_>>()
            .join(" > "),
        Err(_) => crate::text::printable(list).into_owned(),
    }
}

/// A pipeline and the warnings found while validating it.
#[derive(Debug)]
pub struct Loaded {
    /// The pipeline.
    pub pipeline: Pipeline,
    /// Warnings (the timing-budget check among them).
    pub warnings: Vec<Diagnostic>,
}

/// A pipeline's resolved settings with their origins, and the warnings found while validating it.
#[derive(Debug)]
pub struct Planned {
    /// Every setting and where it came from.
    pub plan: Plan,
    /// Warnings (the timing-budget check among them).
    pub warnings: Vec<Diagnostic>,
}

/// The `STAGEWISE_…` variables of the process environment. Other variables are not read (one
/// that is not UTF-8 is none of stagewise's business); one of these that is not UTF-8 is taken
/// with `�` in place of what is not, and refused as any bad value is.
fn env_overrides() -> Vec<(String, String)> {
    std::env::vars_os()
        .filter_map(|(k, v)| {
            let k = k.to_str()?;
            k.starts_with("STAGEWISE_")
                .then(|| (k.to_owned(), v.to_string_lossy().into_owned()))
        })
        .collect()
}

/// Read, validate and resolve a pipeline file with the process environment. The plugin
/// libraries its plugin stages name are loaded (which runs their code) to check those stages'
/// keys against the schemas they declare.
pub fn load(path: &Path, registry: &Registry) -> Result<Loaded, ConfigError> {
    load_with(
        path,
        registry,
        &|name| std::env::var(name).ok(),
        &env_overrides(),
    )
}

/// [`load`] with an explicit environment, for tests.
pub fn load_with(
    path: &Path,
    registry: &Registry,
    lookup: &dyn Fn(&str) -> Option<String>,
    overrides: &[(String, String)],
) -> Result<Loaded, ConfigError> {
    validated(path, registry, lookup, overrides, Plugins::Load).map(|(loaded, _)| loaded)
}

/// [`load`] without loading any plugin library, for reading a pipeline's state (`stagewise
/// status`, `runs`): a plugin stage's own keys go unchecked, a stage of a kind this binary does
/// not know (a custom runner's) is taken as it is, and the pipeline cannot be run (those
/// stages do not build).
pub fn load_without_plugins(path: &Path, registry: &Registry) -> Result<Loaded, ConfigError> {
    validated(
        path,
        registry,
        &|name| std::env::var(name).ok(),
        &env_overrides(),
        Plugins::State,
    )
    .map(|(loaded, _)| loaded)
}

/// The plugin libraries a pipeline file's plugin stages name (their `path`, as written), read
/// without loading them: what [`load`] would load. Those of stages it cannot read are left out.
pub fn plugin_libraries(path: &Path, registry: &Registry) -> Vec<String> {
    let Ok(text) = std::fs::read_to_string(path) else {
        return Vec::new();
    };
    let Ok(mut v) = Validator::new(path.display().to_string(), &text) else {
        return Vec::new();
    };
    let _ = v.validate(
        registry,
        &|name| std::env::var(name).ok(),
        &env_overrides(),
        path,
        base_dir_of(path),
        Plugins::Skip,
    );
    v.libraries
}

/// Validate a pipeline file as [`load`] does (the same problems, the same resolution) and say
/// where each resolved setting came from, for `stagewise plan`. Nothing is built or opened, and
/// no plugin library is loaded: a plugin stage's own keys are shown as written, unchecked
/// ([`StagePlan::unchecked`]).
pub fn plan(path: &Path, registry: &Registry) -> Result<Planned, ConfigError> {
    plan_with(
        path,
        registry,
        &|name| std::env::var(name).ok(),
        &env_overrides(),
    )
}

/// [`plan`] with an explicit environment, for tests.
pub fn plan_with(
    path: &Path,
    registry: &Registry,
    lookup: &dyn Fn(&str) -> Option<String>,
    overrides: &[(String, String)],
) -> Result<Planned, ConfigError> {
    let (loaded, v) = validated(path, registry, lookup, overrides, Plugins::Skip)?;
    Ok(Planned {
        plan: plan::Plan::new(&loaded.pipeline, &v),
        warnings: loaded.warnings,
    })
}

/// The one validation behind [`load`] and [`plan`]: the pipeline, and the validator that still
/// holds the file's spans and what the environment changed.
fn validated(
    path: &Path,
    registry: &Registry,
    lookup: &dyn Fn(&str) -> Option<String>,
    overrides: &[(String, String)],
    plugins: Plugins,
) -> Result<(Loaded, Validator), ConfigError> {
    let (result, warnings, v) = checked(path, registry, (lookup, overrides), plugins, false)?;
    match result {
        Some(mut pipeline) => {
            pipeline.origins = std::sync::Arc::new(v.origins.clone());
            Ok((Loaded { pipeline, warnings }, v))
        }
        None => Err(ConfigError {
            diagnostics: warnings,
        }),
    }
}

/// What `validate` says of a pipeline file it found no error in.
#[derive(Debug)]
pub struct Linted {
    /// The pipeline's name, as written (or as an override set it).
    pub name: String,
    /// How many stages it has.
    pub stages: usize,
    /// Warnings: an unset `${VAR}` among them.
    pub warnings: Vec<Diagnostic>,
}

/// Check a pipeline file as [`load`] does, but with the secrets left out: an unset `${VAR}`
/// (without a default) is a warning, not an error, and the value it goes into is not checked
/// (it is not the value a run would see). For `stagewise validate`, so that CI can check a
/// pipeline without its secrets.
pub fn lint(path: &Path, registry: &Registry) -> Result<Linted, ConfigError> {
    let (_, warnings, v) = checked(
        path,
        registry,
        (&|name| std::env::var(name).ok(), &env_overrides()),
        Plugins::Load,
        true,
    )?;
    let name = v
        .doc
        .get("pipeline")
        .and_then(|p| p.get("name"))
        .and_then(toml::Value::as_str)
        .unwrap_or_default()
        .to_owned();
    let stages = v
        .doc
        .get("stage")
        .and_then(toml::Value::as_array)
        .map_or(0, Vec::len);
    Ok(Linted {
        name,
        stages,
        warnings,
    })
}

/// Where `${VAR}`s are read from, and the `STAGEWISE_…` overrides.
type Environment<'a> = (&'a dyn Fn(&str) -> Option<String>, &'a [(String, String)]);

/// The one check behind [`validated`] and [`lint`]: the pipeline if it could be built, the
/// warnings, and the validator; `Err` with every diagnostic if there is an error. With
/// `unset_allowed`, an unset `${VAR}` is a warning and the values it goes into go unchecked.
fn checked(
    path: &Path,
    registry: &Registry,
    (lookup, overrides): Environment<'_>,
    plugins: Plugins,
    unset_allowed: bool,
) -> Result<(Option<Pipeline>, Vec<Diagnostic>, Validator), ConfigError> {
    let file = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
        diagnostics: vec![Diagnostic {
            severity: Severity::Error,
            file: file.clone(),
            place: None,
            stage: None,
            message: format!("cannot read the pipeline file: {e}"),
        }],
    })?;
    let mut v = Validator::new(file, &text)?;
    if unset_allowed {
        v.unset = Some(Substitutions::new());
    }
    let result = v.validate(
        registry,
        lookup,
        overrides,
        path,
        base_dir_of(path),
        plugins,
    );
    v.warn_unset();
    // In file order; problems from the environment and without a place come last.
    v.diagnostics.sort_by_key(|d| match &d.place {
        Some(Place::File { line, col }) => (0, *line, *col),
        Some(Place::Env(_)) => (1, 0, 0),
        None => (2, 0, 0),
    });
    let (errors, warnings): (Vec<_>, Vec<_>) = std::mem::take(&mut v.diagnostics)
        .into_iter()
        .partition(|d| d.severity == Severity::Error);
    if !errors.is_empty() {
        return Err(ConfigError {
            diagnostics: errors.into_iter().chain(warnings).collect(),
        });
    }
    Ok((result, warnings, v))
}

/// The pipeline file's folder: relative paths in it are relative to this.
fn base_dir_of(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

struct Validator {
    file: String,
    origins: Origins,
    /// The document with the environment applied: overrides and `${VAR}`s.
    doc: toml::Table,
    /// The strings that took a `${VAR}`.
    substitutions: Substitutions,
    /// Where unset variables are allowed (see [`lint`]), the strings that named one: a value
    /// they went into is not checked.
    unset: Option<Substitutions>,
    /// The values no error is said of: an unset variable went into them.
    unchecked: Vec<KeyPath>,
    /// The layer of each policy value, per stage, in order (for `plan`).
    layers: Vec<Layers>,
    /// The `path` of each plugin stage, as written (see [`plugin_libraries`]).
    libraries: Vec<String>,
    diagnostics: Vec<Diagnostic>,
}

/// A key's path as a message names it: dotted, a stage's keys without the stage (the message
/// names the stage).
fn show_path(path: &[String]) -> String {
    match path {
        [stage, _, rest @ ..] if stage == "stage" && !rest.is_empty() => rest.join("."),
        _ => path.join("."),
    }
}

fn path_of(parts: &[&str]) -> KeyPath {
    parts.iter().map(|s| (*s).to_owned()).collect()
}

impl Validator {
    fn new(file: String, text: &str) -> Result<Self, ConfigError> {
        let syntax = |place: Option<Place>, message: String| ConfigError {
            diagnostics: vec![Diagnostic {
                severity: Severity::Error,
                file: file.clone(),
                place,
                stage: None,
                message,
            }],
        };
        let parsed = toml::de::DeTable::parse(text).map_err(|e| {
            let place = e.span().map(|s| located_line_col(text, s.start));
            syntax(place, format!("invalid TOML: {}", e.message().trim()))
        })?;
        let origins = Origins::new(text, parsed.get_ref());
        let doc: toml::Table = toml::from_str(text)
            .map_err(|e| syntax(None, format!("invalid TOML: {}", e.message().trim())))?;
        Ok(Validator {
            file,
            origins,
            doc,
            substitutions: Substitutions::new(),
            unset: None,
            unchecked: Vec::new(),
            layers: Vec::new(),
            libraries: Vec::new(),
            diagnostics: Vec::new(),
        })
    }

    fn push(
        &mut self,
        severity: Severity,
        path: Option<&[String]>,
        at_key: bool,
        stage: Option<&str>,
        message: String,
    ) {
        // A value that took an unset variable is not checked (see `unchecked`). Its key is: an
        // unknown key is said at the key.
        // But a string where another type is wanted is wrong whatever the variable holds.
        if let (Severity::Error, Some(p), false) = (severity, path, at_key) {
            let any_string_is_wrong = message.contains("invalid type: string");
            if !any_string_is_wrong && self.unchecked.iter().any(|u| p.starts_with(u)) {
                return;
            }
        }
        let place = path.and_then(|p| self.origins.place(p, at_key));
        self.diagnostics.push(Diagnostic {
            severity,
            file: self.file.clone(),
            place,
            stage: stage.map(str::to_owned),
            message,
        });
    }

    /// One warning per unset variable (see [`lint`]), where it is first named.
    fn warn_unset(&mut self) {
        let Some(unset) = self.unset.take() else {
            return;
        };
        let mut vars: Vec<(&str, Vec<&KeyPath>)> = Vec::new();
        for (path, names) in &unset {
            for name in names {
                match vars.iter_mut().find(|(n, _)| n == name) {
                    Some((_, paths)) => paths.push(path),
                    None => vars.push((name, vec![path])),
                }
            }
        }
        let warnings: Vec<(KeyPath, Option<String>, String)> = vars
            .into_iter()
            .map(|(name, paths)| {
                let keys: Vec<String> = paths.iter().map(|p| format!("`{}`", show_path(p))).collect();
                (
                    paths[0].clone(),
                    self.stage_name_of(paths[0]),
                    format!(
                        "environment variable `{name}` is not set: `run` needs it (or a default, `${{{name}:-default}}`); {} not checked",
                        match keys.as_slice() {
                            [one] => format!("{one} is"),
                            many => format!("{} are", many.join(", ")),
                        }
                    ),
                )
            })
            .collect();
        for (path, stage, message) in warnings {
            self.push(
                Severity::Warning,
                Some(&path),
                false,
                stage.as_deref(),
                message,
            );
        }
        self.unset = Some(unset);
    }

    fn error(&mut self, path: &[String], at_key: bool, stage: Option<&str>, message: String) {
        self.push(Severity::Error, Some(path), at_key, stage, message);
    }

    fn key_problems(
        &mut self,
        prefix: &[String],
        stage: Option<&str>,
        problems: Vec<KeyProblem>,
        extra_known: &[&str],
    ) {
        // "missing field `duration`" next to "unknown key `duraton` (did you mean `duration`?)"
        // says the same thing twice.
        let mut suggested = Vec::new();
        for problem in &problems {
            if let KeyProblemKind::Unknown { key, expected } = &problem.kind {
                let mut known = expected.clone();
                known.extend(extra_known.iter().map(|s| (*s).to_owned()));
                if let Some(best) = closest(key, &known) {
                    suggested.push(format!("missing field `{best}`"));
                }
            }
        }
        for problem in problems {
            if matches!(&problem.kind, KeyProblemKind::Invalid(m) if suggested.contains(m)) {
                continue;
            }
            let mut path = prefix.to_vec();
            path.extend(problem.path.iter().cloned());
            match problem.kind {
                KeyProblemKind::Unknown { key, mut expected } => {
                    if problem.path.len() == 1 {
                        expected.extend(extra_known.iter().map(|s| (*s).to_owned()));
                    }
                    let message = format!("unknown key `{key}`{}", did_you_mean(&key, &expected));
                    self.error(&path, true, stage, message);
                }
                KeyProblemKind::Invalid(message) => {
                    // The key as the table names it: `retry.attempts`, not just `attempts`.
                    let message = if problem.path.is_empty() || message.contains('`') {
                        message
                    } else {
                        format!("`{}`: {message}", problem.path.join("."))
                    };
                    self.error(&path, false, stage, message);
                }
            }
        }
    }

    fn section<T: serde::de::DeserializeOwned + Default>(
        &mut self,
        name: &str,
        required: bool,
    ) -> Option<T> {
        match self.doc.get(name).cloned() {
            None if required => {
                self.push(
                    Severity::Error,
                    None,
                    false,
                    None,
                    format!("missing `[{name}]` table"),
                );
                None
            }
            None => Some(T::default()),
            Some(toml::Value::Table(t)) => match deserialize_all::<T>(&t) {
                Ok(v) => Some(v),
                Err(problems) => {
                    self.key_problems(&path_of(&[name]), None, problems, &[]);
                    None
                }
            },
            Some(_) => {
                self.error(
                    &path_of(&[name]),
                    true,
                    None,
                    format!("`{name}` must be a table"),
                );
                None
            }
        }
    }

    fn validate(
        &mut self,
        registry: &Registry,
        lookup: &dyn Fn(&str) -> Option<String>,
        overrides: &[(String, String)],
        path: &Path,
        base_dir: PathBuf,
        plugins: Plugins,
    ) -> Option<Pipeline> {
        // The environment first, so that everything below sees the values that will run;
        // overrides before `${VAR}`, so that a variable in an override's value is expanded too.
        let mut override_problems = Vec::new();
        located::apply_overrides(
            &mut self.doc,
            overrides,
            &mut self.origins,
            &mut override_problems,
        );
        let mut doc_value = toml::Value::Table(std::mem::take(&mut self.doc));
        let mut found = located::Found {
            unset: self.unset.take(),
            ..located::Found::default()
        };
        located::substitute_env(&mut doc_value, &mut Vec::new(), lookup, &mut found);
        let toml::Value::Table(doc) = doc_value else {
            unreachable!("a table stays a table")
        };
        self.doc = doc;
        self.substitutions = found.used;
        self.unset = found.unset;
        for (p, message) in &found.problems {
            let stage = self.stage_name_of(p);
            self.error(p, false, stage.as_deref(), message.clone());
        }
        // A value whose variable could not be read is not checked further: what it holds is
        // not a value the user wrote (the problem is said above, or is a warning for `lint`).
        self.unchecked = found.problems.into_iter().map(|(p, _)| p).collect();
        if let Some(unset) = &self.unset {
            self.unchecked.extend(unset.iter().map(|(p, _)| p.clone()));
        }
        for (_, message) in override_problems {
            self.push(Severity::Error, None, false, None, message);
        }

        for key in self.doc.keys().cloned().collect::<Vec<_>>() {
            if !TOP_KEYS.contains(&key.as_str()) {
                let expected: Vec<String> = TOP_KEYS.iter().map(|s| (*s).to_owned()).collect();
                let message = format!("unknown key `{key}`{}", did_you_mean(&key, &expected));
                self.error(&[key], true, None, message);
            }
        }
        let pipeline = self
            .section::<PipelineSpecOpt>("pipeline", true)
            .and_then(|p| p.0);
        let checkpoint = self.section::<CheckpointSpec>("checkpoint", false);
        if let Some(c) = &checkpoint {
            self.check_checkpoint(c);
        }
        let telemetry = self
            .section::<TelemetrySpec>("telemetry", false)
            .and_then(|t| self.telemetry(&t));
        let defaults = self
            .section::<PolicySpec>("defaults", false)
            .unwrap_or_default();
        let stages = self.stages(registry, &defaults, &base_dir, plugins);

        let pipeline = pipeline?;
        let checkpoint = checkpoint?;
        let telemetry = telemetry?;
        let stages = stages?;
        self.check_pipeline(&pipeline);
        let store = match checkpoint.store.as_deref() {
            None => Some(StoreLocation::Sqlite(
                base_dir
                    .join(".stagewise")
                    .join(format!("{}.db", pipeline.name)),
            )),
            Some(url) => match url.strip_prefix("sqlite:") {
                Some(p) => {
                    let p = Path::new(p.strip_prefix("//").unwrap_or(p));
                    Some(StoreLocation::Sqlite(if p.is_absolute() {
                        p.to_path_buf()
                    } else {
                        base_dir.join(p)
                    }))
                }
                None if url.starts_with("postgres://")
                    || url.starts_with("postgresql://")
                    || crate::text::looks_like_conninfo(url) =>
                {
                    // Read as it will be connected to, `sslmode` and `sslrootcert` included
                    // (the file itself is read when the store is opened).
                    match crate::pg::ConnString::parse(url) {
                        Ok(_) => Some(StoreLocation::Postgres(url.to_owned())),
                        Err(e) => {
                            self.error(
                                &path_of(&["checkpoint", "store"]),
                                false,
                                None,
                                e.to_string(),
                            );
                            None
                        }
                    }
                }
                None => {
                    let shown = crate::text::redact_url(url);
                    self.error(
                        &path_of(&["checkpoint", "store"]),
                        false,
                        None,
                        format!("unsupported checkpoint store `{shown}`: use `sqlite:PATH`, `postgres://USER:PASSWORD@HOST:PORT/DATABASE` or `host=HOST user=USER password=PASSWORD dbname=DATABASE`"),
                    );
                    None
                }
            },
        };
        let pipeline = Pipeline {
            name: pipeline.name,
            file: path.to_path_buf(),
            base_dir,
            batch_size: pipeline.batch_size.map(NonZeroU64::get),
            max_run_time: pipeline.max_run_time,
            shutdown_grace: pipeline.shutdown_grace.unwrap_or(DEFAULT_GRACE),
            max_failures: pipeline.max_failures,
            heartbeat: pipeline.heartbeat.unwrap_or(DEFAULT_HEARTBEAT),
            watchdog: pipeline.watchdog.unwrap_or(DEFAULT_WATCHDOG),
            interrupted_exit_code: pipeline
                .interrupted_exit_code
                .map_or(DEFAULT_INTERRUPTED_EXIT_CODE, |c| c.0),
            timeouts_outlast_grace: pipeline.timeouts_outlast_grace.unwrap_or(false),
            checkpoint: CheckpointConfig {
                store: store?,
                commit_interval: checkpoint
                    .commit_interval
                    .unwrap_or(DEFAULT_COMMIT_INTERVAL),
                commit_max_items: checkpoint
                    .commit_max_items
                    .map_or(DEFAULT_COMMIT_MAX_ITEMS, NonZeroUsize::get),
                lease_ttl: checkpoint.lease_ttl.unwrap_or(DEFAULT_LEASE_TTL),
            },
            telemetry,
            stages,
            origins: std::sync::Arc::default(),
        };
        self.check_lease(&pipeline);
        self.timing_budget(&pipeline);
        Some(pipeline)
    }

    fn stage_name_of(&self, path: &[String]) -> Option<String> {
        if path.first().map(String::as_str) != Some("stage") {
            return None;
        }
        let i: usize = path.get(1)?.parse().ok()?;
        self.doc
            .get("stage")?
            .as_array()?
            .get(i)?
            .get("name")?
            .as_str()
            .map(str::to_owned)
    }

    /// `[telemetry]` resolved; `None` (said) when a key is wrong.
    fn telemetry(&mut self, t: &TelemetrySpec) -> Option<TelemetryConfig> {
        let mut ok = true;
        let listen = match t.listen.as_deref().map(str::trim) {
            None => None,
            Some(text) => match text.parse::<std::net::SocketAddr>() {
                Ok(addr) => Some(addr),
                Err(_) => {
                    self.error(
                        &path_of(&["telemetry", "listen"]),
                        false,
                        None,
                        format!("`listen` must be an IP address and a port, such as \"127.0.0.1:9464\" or \"0.0.0.0:9464\" (not {:?})", crate::text::printable(text)),
                    );
                    ok = false;
                    None
                }
            },
        };
        let push = match t.push.as_deref().map(str::trim) {
            None => None,
            Some(url) => {
                if push_url_is_usable(url) {
                    Some(url.trim_end_matches('/').to_owned())
                } else {
                    self.error(
                        &path_of(&["telemetry", "push"]),
                        false,
                        None,
                        format!(
                            "`push` must be the http:// or https:// URL of a Pushgateway, such as \"http://pushgateway:9091\" (not `{}`)",
                            crate::text::redact_url(url)
                        ),
                    );
                    ok = false;
                    None
                }
            }
        };
        let push_timeout = t.push_timeout.unwrap_or(DEFAULT_PUSH_TIMEOUT);
        if push_timeout.is_zero() || push_timeout > MAX_PUSH_TIMEOUT {
            self.error(
                &path_of(&["telemetry", "push_timeout"]),
                false,
                None,
                format!(
                    "`push_timeout` must be greater than 0 and at most {}",
                    crate::text::duration(MAX_PUSH_TIMEOUT)
                ),
            );
            ok = false;
        }
        ok.then_some(TelemetryConfig {
            listen,
            push,
            push_timeout,
        })
    }

    fn check_checkpoint(&mut self, c: &CheckpointSpec) {
        if c.commit_max_items
            .is_some_and(|n| n.get() > MAX_COMMIT_ITEMS)
        {
            self.error(
                &path_of(&["checkpoint", "commit_max_items"]),
                false,
                None,
                format!("`commit_max_items` must be at most {MAX_COMMIT_ITEMS}"),
            );
        }
        if c.commit_interval
            .is_some_and(|d| d > crate::policy::MAX_TIMEOUT)
        {
            self.error(
                &path_of(&["checkpoint", "commit_interval"]),
                false,
                None,
                format!(
                    "`commit_interval` must be at most {}",
                    crate::text::duration(crate::policy::MAX_TIMEOUT)
                ),
            );
        }
    }

    /// A runner renews its lease at every heartbeat: fewer than three per lease, and one late
    /// renewal would fence a live runner. (A SQLite store has no lease.)
    fn check_lease(&mut self, p: &Pipeline) {
        let ttl = p.checkpoint.lease_ttl;
        if !matches!(p.checkpoint.store, StoreLocation::Postgres(_)) {
            return;
        }
        if ttl < p.heartbeat.saturating_mul(3) {
            self.error(
                &path_of(&["checkpoint", "lease_ttl"]),
                false,
                None,
                format!(
                    "`lease_ttl` ({}) must be at least three heartbeats (`[pipeline] heartbeat` = {}, so at least {}): the lease is renewed at each heartbeat",
                    crate::text::duration(ttl),
                    crate::text::duration(p.heartbeat),
                    crate::text::duration(p.heartbeat.saturating_mul(3)),
                ),
            );
        } else if ttl < MIN_LEASE_TTL {
            self.error(
                &path_of(&["checkpoint", "lease_ttl"]),
                false,
                None,
                format!(
                    "`lease_ttl` ({}) must be at least {}: a renewal is a round trip to the server, and a shorter lease fences a live runner as soon as one is late",
                    crate::text::duration(ttl),
                    crate::text::duration(MIN_LEASE_TTL),
                ),
            );
        } else if ttl > crate::policy::MAX_TIMEOUT {
            self.error(
                &path_of(&["checkpoint", "lease_ttl"]),
                false,
                None,
                format!(
                    "`lease_ttl` must be at most {}",
                    crate::text::duration(crate::policy::MAX_TIMEOUT)
                ),
            );
        }
    }

    fn check_pipeline(&mut self, p: &PipelineSpec) {
        let checks: [(&str, bool, &str); 4] = [
            ("name", p.name.trim().is_empty(), "`name` must not be empty"),
            (
                "heartbeat",
                p.heartbeat.is_some_and(|h| h.is_zero()),
                "`heartbeat` must be greater than 0",
            ),
            (
                "max_run_time",
                p.max_run_time.is_some_and(|h| h.is_zero()),
                "`max_run_time` must be greater than 0",
            ),
            (
                "watchdog",
                p.watchdog.is_some_and(|w| w < Duration::from_secs(1)),
                "`watchdog` must be at least 1s (e.g. \"60s\")",
            ),
        ];
        for (key, bad, message) in checks {
            if bad {
                self.error(
                    &path_of(&["pipeline", key]),
                    false,
                    None,
                    message.to_owned(),
                );
            }
        }
        // A duration further off than any deadline is a typo, and past it the clocks overflow.
        let longest = crate::policy::MAX_TIMEOUT;
        for (key, value) in [
            ("max_run_time", p.max_run_time),
            ("shutdown_grace", p.shutdown_grace),
            ("heartbeat", p.heartbeat),
            ("watchdog", p.watchdog),
        ] {
            if value.is_some_and(|v| v > longest) {
                self.error(
                    &path_of(&["pipeline", key]),
                    false,
                    None,
                    format!("`{key}` must be at most {}", crate::text::duration(longest)),
                );
            }
        }
        if p.name.contains(['/', '\\']) {
            self.error(
                &path_of(&["pipeline", "name"]),
                false,
                None,
                "`name` must not contain `/`".into(),
            );
        }
    }

    fn stages(
        &mut self,
        registry: &Registry,
        defaults: &PolicySpec,
        base_dir: &Path,
        plugins: Plugins,
    ) -> Option<Vec<StageConfig>> {
        let tables = match self.doc.get("stage").cloned() {
            None => {
                self.push(
                    Severity::Error,
                    None,
                    false,
                    None,
                    "no `[[stage]]`: a pipeline needs at least a source".into(),
                );
                return None;
            }
            Some(toml::Value::Array(items)) => items,
            Some(_) => {
                self.error(
                    &path_of(&["stage"]),
                    true,
                    None,
                    "`stage` must be a list of tables (`[[stage]]`)".into(),
                );
                return None;
            }
        };
        let count = tables.len();
        let mut ok = true;
        let mut names = HashSet::new();
        let mut out = Vec::new();
        for (i, table) in tables.into_iter().enumerate() {
            let prefix = vec!["stage".to_owned(), i.to_string()];
            let toml::Value::Table(mut table) = table else {
                self.error(&prefix, true, None, "a stage must be a table".into());
                ok = false;
                continue;
            };
            let name = match table.remove("name") {
                Some(toml::Value::String(n)) if !n.trim().is_empty() => n,
                Some(_) => {
                    self.error(
                        &[prefix.clone(), vec!["name".into()]].concat(),
                        false,
                        None,
                        "`name` must be a non-empty string".into(),
                    );
                    ok = false;
                    continue;
                }
                None => {
                    self.error(
                        &prefix,
                        true,
                        None,
                        format!("stage {} has no `name`", i + 1),
                    );
                    ok = false;
                    continue;
                }
            };
            if !names.insert(name.clone()) {
                self.error(
                    &[prefix.clone(), vec!["name".into()]].concat(),
                    false,
                    Some(&name),
                    format!("duplicate stage name `{name}`: names must be unique"),
                );
                ok = false;
            }
            let kind_name = match table.remove("kind") {
                Some(toml::Value::String(k)) => k,
                _ => {
                    self.error(
                        &prefix,
                        true,
                        Some(&name),
                        "missing `kind` (a string)".into(),
                    );
                    ok = false;
                    continue;
                }
            };
            let unknown: std::sync::Arc<dyn crate::registry::DynKind> =
                std::sync::Arc::new(crate::registry::UnknownKind);
            let found = registry
                .get(&kind_name)
                .or_else(|| (plugins == Plugins::State).then_some(&unknown));
            let Some(kind) = found else {
                let known: Vec<String> = registry.kinds().map(str::to_owned).collect();
                self.error(
                    &[prefix.clone(), vec!["kind".into()]].concat(),
                    false,
                    Some(&name),
                    format!(
                        "unknown kind `{kind_name}`{}; known kinds: {}",
                        did_you_mean(&kind_name, &known),
                        known.join(", ")
                    ),
                );
                ok = false;
                continue;
            };
            let role = if i == 0 {
                Role::Source
            } else if i + 1 == count && kind.roles().contains(&Role::Sink) {
                Role::Sink
            } else {
                Role::Transform
            };
            if !kind.roles().contains(&role) {
                let message = match role {
                    Role::Source => {
                        format!("kind `{kind_name}` is not a source: the first stage must be one")
                    }
                    _ if kind.roles() == [Role::Source] => {
                        format!("kind `{kind_name}` is a source: only the first stage can be one")
                    }
                    _ if kind.roles().contains(&Role::Sink) => {
                        format!("kind `{kind_name}` is a sink: it must be the last stage")
                    }
                    _ => format!("kind `{kind_name}` cannot be used as a {}", role.as_str()),
                };
                self.error(
                    &[prefix.clone(), vec!["kind".into()]].concat(),
                    false,
                    Some(&name),
                    message,
                );
                ok = false;
            }
            let mut policy_table = toml::Table::new();
            for key in POLICY_KEYS {
                if let Some(v) = table.remove(*key) {
                    policy_table.insert((*key).to_owned(), v);
                }
            }
            let spec = match deserialize_all::<PolicySpec>(&policy_table) {
                Ok(spec) => spec,
                Err(problems) => {
                    self.key_problems(&prefix, Some(&name), problems, &[]);
                    ok = false;
                    PolicySpec::default()
                }
            };
            let known: Vec<&str> = POLICY_KEYS
                .iter()
                .copied()
                .chain(["name", "kind"])
                .collect();
            if kind.loads_library() {
                if let Some(toml::Value::String(library)) = table.get("path") {
                    self.libraries.push(library.clone());
                }
            }
            let checked = match kind.check(&table, role, base_dir, plugins) {
                Ok(checked) => Some(checked),
                Err(problems) => {
                    self.key_problems(&prefix, Some(&name), problems, &known);
                    ok = false;
                    None
                }
            };
            let (policy, layers) =
                Policy::resolve(&spec, defaults, &kind.defaults(), role == Role::Source);
            if role == Role::Source {
                // Accepted (a source may move in the pipeline), but said: it does nothing here.
                let unused = [
                    ("item_deadline", spec.item_deadline.is_some()),
                    ("breaker", spec.breaker.is_some()),
                ];
                for (key, _) in unused.into_iter().filter(|(_, set)| *set) {
                    let mut p = prefix.clone();
                    p.push(key.to_owned());
                    self.push(
                        Severity::Warning,
                        Some(&p),
                        true,
                        Some(&name),
                        format!("`{key}` does nothing on a source: it reads its batch once, under its `retry` only"),
                    );
                }
            }
            for (key, message) in policy.check() {
                let mut p = prefix.clone();
                p.extend(key.split('.').map(str::to_owned));
                self.error(&p, false, Some(&name), message);
                ok = false;
            }
            self.layers.push(layers);
            let Some(config) = checked else { continue };
            out.push(StageConfig {
                name,
                kind: kind_name,
                role,
                policy,
                options: table,
                config,
                unchecked: plugins.skipped() && kind.loads_library(),
            });
        }
        ok.then_some(out)
    }

    /// Warn where a stage's worst case cannot fit the run's time budget, and where its item
    /// deadline leaves no room for one whole attempt.
    fn timing_budget(&mut self, p: &Pipeline) {
        for (i, stage) in p.stages.iter().enumerate() {
            let prefix = vec!["stage".to_owned(), i.to_string()];
            if let Some(deadline) = stage.policy.item_deadline {
                if deadline < stage.policy.timeout {
                    let message = format!(
                        "`item_deadline` ({}) is shorter than one attempt's `timeout` ({}): an attempt that takes its whole time is cut off by the deadline, and the item fails without a second try",
                        crate::text::duration(deadline),
                        crate::text::duration(stage.policy.timeout),
                    );
                    let mut key = prefix.clone();
                    key.push("item_deadline".to_owned());
                    self.push(
                        Severity::Warning,
                        Some(&key),
                        true,
                        Some(&stage.name),
                        message,
                    );
                }
            }
            let worst = stage.policy.worst_case();
            if let Some(budget) = p.max_run_time {
                if worst > budget {
                    let message = format!(
                        "one item's worst case here ({} attempts × {} timeout + backoff = {}) exceeds `max_run_time` ({}): such an item can never finish within one run",
                        stage.policy.retry.attempts,
                        crate::text::duration(stage.policy.timeout),
                        crate::text::duration(worst),
                        crate::text::duration(budget),
                    );
                    self.push(
                        Severity::Warning,
                        Some(&prefix),
                        true,
                        Some(&stage.name),
                        message,
                    );
                }
            }
        }
        // The source's read happens before any item is in flight; the grace does not apply.
        let outlast: Vec<String> = p
            .stages
            .iter()
            .filter(|s| s.role != Role::Source && p.shutdown_grace < s.policy.timeout)
            .map(|s| format!("`{}` ({})", s.name, crate::text::duration(s.policy.timeout)))
            .collect();
        if !outlast.is_empty() && !p.timeouts_outlast_grace {
            let message = format!(
                "`shutdown_grace` ({}) is shorter than the `timeout` of stage(s) {}: at a stop (SIGTERM, `max_run_time`), their attempts still running after the grace are cut off, given back without using an attempt, and redone by the next run. If that is intended (a platform's grace of 10s, a model that may take 30s), say so with `timeouts_outlast_grace = true` in `[pipeline]`",
                crate::text::duration(p.shutdown_grace),
                outlast.join(", "),
            );
            let grace = ["pipeline".to_owned(), "shutdown_grace".to_owned()];
            let section = ["pipeline".to_owned()];
            let path: &[String] = if self.origins.place(&grace, true).is_some() {
                &grace
            } else {
                &section
            };
            self.push(Severity::Warning, Some(path), true, None, message);
        }
    }
}

/// Whether `url` can name a Pushgateway: `http://` or `https://`, a host, and no query or
/// fragment (the push adds its own path after it).
fn push_url_is_usable(url: &str) -> bool {
    let Ok(uri) = url.parse::<ureq::http::Uri>() else {
        return false;
    };
    matches!(uri.scheme_str(), Some("http" | "https"))
        && uri.host().is_some_and(|h| !h.is_empty())
        && uri.query().is_none()
        && !url.contains('#')
}

/// `[pipeline]` is required, but `section` needs a `Default` type.
#[derive(Default)]
struct PipelineSpecOpt(Option<PipelineSpec>);

impl<'de> serde::Deserialize<'de> for PipelineSpecOpt {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        PipelineSpec::deserialize(d).map(|p| PipelineSpecOpt(Some(p)))
    }
}

fn located_line_col(text: &str, offset: usize) -> Place {
    let o = Origins::new(text, &toml::de::DeTable::default());
    o.line_col(offset)
}

/// The known name closest to `word`, if any is close.
fn closest<'a>(word: &str, known: &'a [String]) -> Option<&'a str> {
    known
        .iter()
        .map(|k| (strsim::jaro_winkler(word, k), k))
        .filter(|(score, _)| *score > 0.8)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, k)| k.as_str())
}

/// " (did you mean `x`?)" when a known name is close to `word`, else "".
fn did_you_mean(word: &str, known: &[String]) -> String {
    closest(word, known)
        .map(|k| format!(" (did you mean `{k}`?)"))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suggestions() {
        let known: Vec<String> = ["duration", "jitter", "blocking", "timeout"]
            .map(String::from)
            .to_vec();
        assert_eq!(
            did_you_mean("duraton", &known),
            " (did you mean `duration`?)"
        );
        assert_eq!(
            did_you_mean("timeuot", &known),
            " (did you mean `timeout`?)"
        );
        assert_eq!(did_you_mean("colour", &known), "");
    }
}
