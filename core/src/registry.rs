//! The registry that maps a `kind = "…"` in `pipeline.toml` to the [`StageKind`] that validates
//! and builds it. Builtin stage crates and custom runner binaries register kinds here.

use std::any::Any;
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use crate::config::{KeyProblem, KeyProblemKind};
use crate::stage::{
    BuildContext, KindDefaults, Probe, ProbeContext, Role, StageError, StageImpl, StageKind,
};

/// A stage's own keys as its kind read and checked them at validation, kept for the build: a
/// stage table is deserialized once.
#[derive(Clone)]
pub(crate) struct Checked(Arc<dyn Any + Send + Sync>);

impl std::fmt::Debug for Checked {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Checked(…)")
    }
}

impl Checked {
    pub(crate) fn new<T: Any + Send + Sync>(config: T) -> Self {
        Checked(Arc::new(config))
    }

    /// The checked configuration, if it is a `T`.
    pub(crate) fn get<T: Any>(&self) -> Result<&T, StageError> {
        self.0.downcast_ref::<T>().ok_or_else(|| {
            StageError::fatal("the stage's configuration was checked as another kind's")
        })
    }
}

/// Whether checking a pipeline may load the plugin libraries it names, which runs their code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Plugins {
    /// Load them, and check their stages' keys against the schemas they declare (`validate`,
    /// `run`).
    Load,
    /// Leave them alone: their stages' own keys are kept as written, unchecked, and cannot be
    /// built (`plan`).
    Skip,
    /// As [`Plugins::Skip`], and take a stage of a kind this binary does not know (a custom
    /// runner's) as one too: for reading a pipeline's state (`status`, `runs`), which needs
    /// its stages' names, not their kinds.
    State,
}

impl Plugins {
    /// Whether plugin libraries are left alone.
    pub(crate) fn skipped(self) -> bool {
        self != Plugins::Load
    }
}

/// A stage of a kind this binary does not know, read for its state only (see
/// [`Plugins::State`]): any keys, any role, never built.
pub(crate) struct UnknownKind;

/// What an [`UnknownKind`] stage's keys are checked into: nothing.
struct Unread;

impl DynKind for UnknownKind {
    fn roles(&self) -> &'static [Role] {
        &[Role::Source, Role::Transform, Role::Sink]
    }

    fn keys(&self) -> &'static [&'static str] {
        &[]
    }

    fn schema(&self) -> serde_json::Value {
        serde_json::json!({})
    }

    fn defaults(&self) -> KindDefaults {
        KindDefaults::default()
    }

    fn loads_library(&self) -> bool {
        true
    }

    fn check(
        &self,
        _options: &toml::Table,
        _role: Role,
        _base_dir: &Path,
        _plugins: Plugins,
    ) -> Result<Checked, Vec<KeyProblem>> {
        Ok(Checked::new(Unread))
    }

    fn build(&self, _config: &Checked, _cx: &BuildContext) -> Result<StageImpl, StageError> {
        Err(StageError::fatal(
            "a stage of a kind this binary does not know cannot run: run it with the runner that has its kind",
        ))
    }
}

/// Object-safe face of a [`StageKind`], so kinds with different config types share a registry.
pub(crate) trait DynKind: Send + Sync {
    fn roles(&self) -> &'static [Role];
    /// The kind's own keys. A plugin stage has more: those its library's schema declares.
    fn keys(&self) -> &'static [&'static str];
    /// The JSON Schema of the kind's own keys (for `stagewise schema` and the reference).
    fn schema(&self) -> serde_json::Value;
    fn defaults(&self) -> KindDefaults;
    /// Whether checking this kind's stages loads a library (the plugin host's): with
    /// [`Plugins::Skip`] their own keys go unchecked.
    fn loads_library(&self) -> bool {
        false
    }
    /// Deserialize and check, collecting every problem. `base_dir` is the pipeline file's
    /// folder, for kinds whose keys depend on a file (a plugin's schema); `plugins` says whether
    /// that file may be loaded.
    fn check(
        &self,
        options: &toml::Table,
        role: Role,
        base_dir: &Path,
        plugins: Plugins,
    ) -> Result<Checked, Vec<KeyProblem>>;
    /// Build from what [`check`](Self::check) returned.
    fn build(&self, config: &Checked, cx: &BuildContext) -> Result<StageImpl, StageError>;
    /// Check against the world (see [`StageKind::probe`]); by default, nothing, and the fields
    /// after the stage are unknown.
    fn probe(&self, _config: &Checked, _cx: &ProbeContext<'_>) -> Probe {
        Probe::default()
    }
}

impl<K: StageKind> DynKind for K {
    fn roles(&self) -> &'static [Role] {
        StageKind::roles(self)
    }

    fn keys(&self) -> &'static [&'static str] {
        crate::config::struct_fields::<K::Config>()
    }

    fn schema(&self) -> serde_json::Value {
        crate::config::schema_of::<K::Config>()
    }

    fn defaults(&self) -> KindDefaults {
        StageKind::defaults(self)
    }

    fn check(
        &self,
        options: &toml::Table,
        role: Role,
        _base_dir: &Path,
        _plugins: Plugins,
    ) -> Result<Checked, Vec<KeyProblem>> {
        let config = crate::config::deserialize_all::<K::Config>(options)?;
        let problems: Vec<KeyProblem> = StageKind::check(self, &config, role)
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
            .collect();
        if problems.is_empty() {
            Ok(Checked::new(config))
        } else {
            Err(problems)
        }
    }

    fn build(&self, config: &Checked, cx: &BuildContext) -> Result<StageImpl, StageError> {
        let config = config.get::<K::Config>()?.clone();
        StageKind::build(self, config, cx)
    }

    fn probe(&self, config: &Checked, cx: &ProbeContext<'_>) -> Probe {
        match config.get::<K::Config>() {
            Ok(config) => StageKind::probe(self, config, cx),
            Err(e) => {
                let mut probe = Probe::default();
                probe.config("", e.message);
                probe
            }
        }
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
