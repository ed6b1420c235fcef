//! Stage kinds: what a `kind = "…"` is — its name, the places it can take, its typed
//! configuration, its policy defaults — and what it is told when it is built.

use std::path::{Path, PathBuf};
use std::time::Duration;

use schemars::JsonSchema;
use serde::de::DeserializeOwned;

use super::probe::{Probe, ProbeContext};
use super::services::{Meter, SharedCache};
use super::{StageError, StageImpl};

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
/// be a struct with `#[serde(deny_unknown_fields)]` and `#[derive(JsonSchema)]`, every field
/// documented with `///`: the doc comment is the key's description in `stagewise schema` and
/// in the reference, and `#[schemars(extend("x-default" = "…"))]` its default there.
pub trait StageKind: Send + Sync + 'static {
    /// The typed configuration.
    type Config: DeserializeOwned + JsonSchema + Clone + Send + Sync + 'static;

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

    /// Check the stage against the world before any item runs (`validate --connect`, and `run`
    /// before it takes a batch): connect, prepare statements, reach endpoints, see that files
    /// are there, without changing anything or spending anything; and say which fields its
    /// records gain and which it reads (see [`Probe`]). Every wait is bounded (by
    /// [`ProbeContext::timeout`] or the stage's own connect timeout).
    ///
    /// The default checks nothing and leaves the fields after the stage unknown, so that
    /// nothing read after it is checked.
    fn probe(&self, _config: &Self::Config, _cx: &ProbeContext<'_>) -> Probe {
        Probe::default()
    }

    /// Open files, pools and connections, from the configuration `check` passed (read once,
    /// at validation). An error here is a configuration error (exit 2).
    fn build(&self, config: Self::Config, cx: &BuildContext) -> Result<StageImpl, StageError>;
}
