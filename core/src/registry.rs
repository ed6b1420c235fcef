//! Stage kinds and the registry that maps a `kind = "…"` in `pipeline.toml` to the code that
//! validates and builds it. Builtin stage crates and custom runner binaries register kinds here.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::de::DeserializeOwned;

use crate::services::{Meter, SharedCache};
use crate::stage::{StageError, StageImpl};

/// Where a stage stands in the pipeline; a kind says which places it can take.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The first stage: yields the batch.
    Source,
    /// Any stage between the first and the last.
    Transform,
    /// The last stage: writes results out.
    Sink,
}

impl Role {
    /// The lowercase name used in messages.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Source => "source",
            Role::Transform => "transform",
            Role::Sink => "sink",
        }
    }
}

/// Policy defaults a kind may change. Fields left `None` fall back to `[defaults]` and then
/// the built-in defaults; a value in the stage's own table always wins.
#[derive(Debug, Clone, Default)]
pub struct KindDefaults {
    /// Per-attempt timeout.
    pub timeout: Option<Duration>,
    /// Attempts, including the first.
    pub attempts: Option<u32>,
    /// Largest backoff between attempts.
    pub backoff_max: Option<Duration>,
    /// Items in the stage at once.
    pub concurrency: Option<usize>,
}

/// What a kind is told when it is built.
#[derive(Debug, Clone)]
pub struct BuildContext {
    /// The stage's name.
    pub stage: String,
    /// The place the stage takes in this pipeline.
    pub role: Role,
    /// The folder of the pipeline file: relative paths are relative to it.
    pub base_dir: PathBuf,
    /// The stage's resolved concurrency (pool size for blocking stages).
    pub concurrency: usize,
    /// The stage's resolved per-attempt timeout (a default for the kind's own time limits).
    pub timeout: Duration,
    /// Where the stage reports its own figures for the summary.
    pub meter: Meter,
    /// The run's response cache (in the checkpoint store); `None` outside a run.
    pub cache: Option<SharedCache>,
}

impl BuildContext {
    /// A context for a stage built outside a run (tests, tools): a fresh meter and no cache.
    pub fn new(
        stage: impl Into<String>,
        role: Role,
        base_dir: impl Into<PathBuf>,
        concurrency: usize,
        timeout: Duration,
    ) -> Self {
        BuildContext {
            stage: stage.into(),
            role,
            base_dir: base_dir.into(),
            concurrency,
            timeout,
            meter: Meter::default(),
            cache: None,
        }
    }

    /// Resolve a path from the pipeline file against the file's folder.
    pub fn resolve(&self, path: &Path) -> PathBuf {
        if path.is_absolute() {
            path.to_path_buf()
        } else {
            self.base_dir.join(path)
        }
    }
}

/// A kind of stage: its name, the places it can take, its typed configuration and how to
/// build it.
///
/// The configuration is the stage's table in `pipeline.toml` minus the keys every stage shares
/// (`name`, `kind`, `timeout`, `retry`, `concurrency`, `rate_limit`, `max_abandoned`). It should
/// be a struct with `#[serde(deny_unknown_fields)]`, every field documented with `///`.
pub trait StageKind: Send + Sync + 'static {
    /// The typed configuration.
    type Config: DeserializeOwned + Send + 'static;

    /// The `kind = "…"` name.
    fn kind(&self) -> &'static str;

    /// The places a stage of this kind can take.
    fn roles(&self) -> &'static [Role];

    /// Policy defaults of this kind.
    fn defaults(&self) -> KindDefaults {
        KindDefaults::default()
    }

    /// Checks beyond types, without I/O. Each problem is `(key, message)`; the key is a dotted
    /// path inside the stage table (`"headers.accept"`), or `""` for the table as a whole.
    fn check(&self, _config: &Self::Config, _role: Role) -> Vec<(String, String)> {
        Vec::new()
    }

    /// Open files, pools and connections. An error here is a configuration error (exit 2).
    fn build(&self, config: Self::Config, cx: &BuildContext) -> Result<StageImpl, StageError>;
}

/// One problem found in a stage's own keys, with the key path inside the stage table.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct KeyProblem {
    /// Key path inside the stage table, e.g. `["headers", "x"]`; empty for the table itself.
    pub path: Vec<String>,
    /// The problem.
    pub kind: KeyProblemKind,
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) enum KeyProblemKind {
    Unknown { key: String, expected: Vec<String> },
    Invalid(String),
}

/// Object-safe face of a [`StageKind`], so kinds with different config types share a registry.
pub(crate) trait DynKind: Send + Sync {
    fn roles(&self) -> &'static [Role];
    /// The kind's own keys. A plugin stage has more: those its library's schema declares.
    fn keys(&self) -> &'static [&'static str];
    /// The JSON Schema of the kind's own keys (for `stagewise schema`).
    fn schema(&self) -> serde_json::Value;
    fn defaults(&self) -> KindDefaults;
    /// Deserialize and check, collecting every problem. `base_dir` is the pipeline file's
    /// folder, for kinds whose keys depend on a file (a plugin's schema).
    fn check(&self, options: &toml::Table, role: Role, base_dir: &Path) -> Vec<KeyProblem>;
    fn build(&self, options: &toml::Table, cx: &BuildContext) -> Result<StageImpl, StageError>;
}

impl<K: StageKind> DynKind for K {
    fn roles(&self) -> &'static [Role] {
        StageKind::roles(self)
    }

    fn keys(&self) -> &'static [&'static str] {
        crate::spec::struct_fields::<K::Config>()
    }

    fn schema(&self) -> serde_json::Value {
        crate::spec::schema_of::<K::Config>()
    }

    fn defaults(&self) -> KindDefaults {
        StageKind::defaults(self)
    }

    fn check(&self, options: &toml::Table, role: Role, _base_dir: &Path) -> Vec<KeyProblem> {
        match crate::spec::deserialize_all::<K::Config>(options) {
            Ok(config) => StageKind::check(self, &config, role)
                .into_iter()
                .map(|(key, message)| KeyProblem {
                    // An empty key is a problem of the stage table as a whole.
                    path: key
                        .split('.')
                        .filter(|k| !k.is_empty())
                        .map(str::to_owned)
                        .collect(),
                    kind: KeyProblemKind::Invalid(message),
                })
                .collect(),
            Err(problems) => problems,
        }
    }

    fn build(&self, options: &toml::Table, cx: &BuildContext) -> Result<StageImpl, StageError> {
        let config = crate::spec::deserialize_all::<K::Config>(options).map_err(|problems| {
            StageError::fatal(format!(
                "invalid configuration: {}",
                problems
                    .iter()
                    .map(|p| format!("{p:?}"))
                    .collect::<Vec<_>>()
                    .join("; ")
            ))
        })?;
        StageKind::build(self, config, cx)
    }
}

/// The stage kinds a runner binary knows.
#[derive(Clone, Default)]
pub struct Registry {
    kinds: BTreeMap<&'static str, Arc<dyn DynKind>>,
}

impl Registry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// Add a kind. A later registration of the same name replaces the earlier one.
    pub fn register<K: StageKind>(&mut self, kind: K) -> &mut Self {
        self.kinds.insert(kind.kind(), Arc::new(kind));
        self
    }

    /// Add a kind that is not a [`StageKind`] (the plugin host's).
    pub(crate) fn insert_dyn(&mut self, name: &'static str, kind: Arc<dyn DynKind>) -> &mut Self {
        self.kinds.insert(name, kind);
        self
    }

    pub(crate) fn get(&self, kind: &str) -> Option<&Arc<dyn DynKind>> {
        self.kinds.get(kind)
    }

    /// A kind's own keys (besides the policy keys every stage has) and the places it can take.
    /// For `plugin`, the host's keys (`path`, `plugin_kind`); the plugin's own come from its
    /// library.
    pub fn describe(&self, kind: &str) -> Option<(&'static [&'static str], &'static [Role])> {
        self.kinds.get(kind).map(|k| (k.keys(), k.roles()))
    }

    /// The names of all registered kinds, sorted.
    pub fn kinds(&self) -> impl Iterator<Item = &'static str> + '_ {
        self.kinds.keys().copied()
    }
}
