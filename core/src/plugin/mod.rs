//! The plugin host: `kind = "plugin"` stages, whose code lives in a shared library built
//! against the `stagewise-plugin` SDK and loaded at start.
//!
//! - [`ffi`]: loading a library, the ABI handshake (the version is checked before any other
//!   call), and calls across the boundary. The only `unsafe` code of core.
//! - [`schema`]: the check of a stage's keys against the JSON Schema its kind declares, so that
//!   `stagewise validate` treats a plugin's keys like a builtin's.
//! - this file: the `plugin` kind itself — which library and kind a stage names, its
//!   configuration, and the blocking stage that calls the plugin.
//!
//! A plugin that cannot be loaded (missing file, not a library, no entry point, another ABI
//! version) is a problem of its stage's `path` key, found while validating: a configuration
//! error (exit 2) before anything runs. Loading a library runs its code (its constructors, then
//! the entry point), so only `validate` and `run` load them; `plan` and `status` read a pipeline
//! with [`Plugins::Skip`]: a plugin stage's own keys are then kept as written, unchecked, and the
//! stage cannot be built. A plugin stage is a [`BlockingStage`]: it runs on the
//! stage's bounded pool with the stage's timeout and retries, and the plugin sees the attempt's
//! cancellation flag and the host's logger through callbacks.

mod ffi;
mod schema;

use std::path::Path;
use std::sync::Arc;

pub use ffi::{KindInfo, LoadError, PluginInfo};
pub use stagewise_plugin::abi::ABI_VERSION;

use crate::config::{KeyProblem, KeyProblemKind};
use crate::registry::{Checked, DynKind, Plugins, Registry};
use crate::stage::{
    BlockingStage, BuildContext, Context, KindDefaults, Outcome, Record, Role, StageError,
    StageImpl,
};
use ffi::{Instance, Plugin};

/// The kind name of plugin stages.
pub const KIND: &str = "plugin";

/// The keys of a plugin stage that are the host's, not the plugin's; every other key of the
/// stage table is the plugin's own, checked against the schema its library declares.
#[derive(serde::Deserialize, schemars::JsonSchema)]
#[allow(dead_code)] // read for its keys and schema; the values are read from the table
struct HostKeys {
    /// The plugin library, e.g. `"plugins/libmy_stage.so"` (relative to the pipeline file).
    path: std::path::PathBuf,
    /// Which kind of the library to use, when it offers several; `stagewise plugin inspect
    /// PATH` lists them.
    #[schemars(extend("x-default" = "the library's only kind"))]
    plugin_kind: Option<String>,
}

/// Add `kind = "plugin"` to a registry.
pub fn register(registry: &mut Registry) {
    registry.insert_dyn(KIND, Arc::new(PluginKind));
}

/// Load the plugin library at `path` (relative to the working directory) and describe it, as
/// `stagewise plugin inspect` does.
pub fn inspect(path: &Path) -> Result<PluginInfo, LoadError> {
    ffi::load(path, &path.display().to_string()).map(|p| p.info.clone())
}

struct PluginKind;

/// What a stage table names: the plugin, which of its kinds, and the plugin's own keys.
#[derive(Clone)]
struct Resolved {
    plugin: Arc<Plugin>,
    kind: usize,
    config: serde_json::Value,
}

impl Resolved {
    fn kind(&self) -> &KindInfo {
        &self.plugin.info.kinds[self.kind]
    }
}

fn problem(path: &[&str], message: String) -> KeyProblem {
    KeyProblem {
        path: path.iter().map(|s| (*s).to_owned()).collect(),
        kind: KeyProblemKind::Invalid(message),
    }
}

/// A plugin stage read without loading its library (see [`Plugins::Skip`]).
struct Unloaded;

/// The host's keys of a stage table, `path` and `plugin_kind`, checked without loading anything.
fn host_keys(options: &toml::Table) -> Result<(&str, Option<&str>), Vec<KeyProblem>> {
    let path = match options.get("path") {
        Some(toml::Value::String(p)) => p,
        Some(_) => return Err(vec![problem(&["path"], "`path` must be a string".into())]),
        None => return Err(vec![problem(&[], "missing field `path`".into())]),
    };
    let wanted = match options.get("plugin_kind") {
        Some(toml::Value::String(k)) => Some(k.as_str()),
        Some(_) => {
            return Err(vec![problem(
                &["plugin_kind"],
                "`plugin_kind` must be a string".into(),
            )])
        }
        None => None,
    };
    Ok((path, wanted))
}

/// Load the library a stage table names and pick its kind.
fn resolve(options: &toml::Table, base_dir: &Path) -> Result<Resolved, Vec<KeyProblem>> {
    let (path, wanted) = host_keys(options)?;
    let full = if Path::new(path).is_absolute() {
        Path::new(path).to_path_buf()
    } else {
        base_dir.join(path)
    };
    let plugin = ffi::load(&full, path).map_err(|e| vec![problem(&["path"], e.to_string())])?;
    let names: Vec<&str> = plugin.info.kinds.iter().map(|k| k.name.as_str()).collect();
    let kind = match wanted {
        Some(wanted) => names.iter().position(|n| *n == wanted).ok_or_else(|| {
            vec![problem(
                &["plugin_kind"],
                format!(
                    "plugin `{}` has no kind `{wanted}`; its kinds: {}",
                    plugin.info.name,
                    names.join(", ")
                ),
            )]
        })?,
        None if names.len() == 1 => 0,
        None => {
            return Err(vec![problem(
                &[],
                format!(
                    "plugin `{}` offers several kinds ({}): choose one with `plugin_kind`",
                    plugin.info.name,
                    names.join(", ")
                ),
            )])
        }
    };
    let config = serde_json::Value::Object(
        options
            .iter()
            .filter(|(k, _)| !crate::config::struct_fields::<HostKeys>().contains(&k.as_str()))
            .map(|(k, v)| (k.clone(), to_json(v)))
            .collect(),
    );
    Ok(Resolved {
        plugin,
        kind,
        config,
    })
}

/// A TOML value as the JSON the plugin reads. TOML has nothing JSON lacks except dates (sent
/// as their TOML text) and non-finite floats (sent as strings, which a schema then rejects).
fn to_json(value: &toml::Value) -> serde_json::Value {
    use serde_json::Value as J;
    match value {
        toml::Value::String(s) => J::String(s.clone()),
        toml::Value::Integer(i) => J::from(*i),
        toml::Value::Float(f) => {
            serde_json::Number::from_f64(*f).map_or_else(|| J::String(f.to_string()), J::Number)
        }
        toml::Value::Boolean(b) => J::Bool(*b),
        toml::Value::Datetime(d) => J::String(d.to_string()),
        toml::Value::Array(items) => J::Array(items.iter().map(to_json).collect()),
        toml::Value::Table(t) => {
            J::Object(t.iter().map(|(k, v)| (k.clone(), to_json(v))).collect())
        }
    }
}

impl DynKind for PluginKind {
    fn roles(&self) -> &'static [Role] {
        &[Role::Transform, Role::Sink]
    }

    fn keys(&self) -> &'static [&'static str] {
        // The plugin's own keys come from its schema once it is loaded.
        crate::config::struct_fields::<HostKeys>()
    }

    fn schema(&self) -> serde_json::Value {
        // Without the library, any other key may be the plugin's.
        crate::config::schema_of::<HostKeys>()
    }

    fn defaults(&self) -> KindDefaults {
        KindDefaults::default()
    }

    fn loads_library(&self) -> bool {
        true
    }

    fn check(
        &self,
        options: &toml::Table,
        _role: Role,
        base_dir: &Path,
        plugins: Plugins,
    ) -> Result<Checked, Vec<KeyProblem>> {
        if plugins.skipped() {
            host_keys(options)?;
            return Ok(Checked::new(Unloaded));
        }
        let resolved = resolve(options, base_dir)?;
        let schema = &resolved.kind().config_schema;
        let problems: Vec<KeyProblem> = schema::check(&resolved.config, schema)
            .into_iter()
            .map(|mut p| {
                // The host's own keys are known too, for "did you mean".
                if let KeyProblemKind::Unknown { expected, .. } = &mut p.kind {
                    if p.path.len() == 1 {
                        expected.extend(
                            crate::config::struct_fields::<HostKeys>()
                                .iter()
                                .map(|k| (*k).to_owned()),
                        );
                    }
                }
                p
            })
            .collect();
        if problems.is_empty() {
            Ok(Checked::new(resolved))
        } else {
            Err(problems)
        }
    }

    fn build(&self, config: &Checked, _cx: &BuildContext) -> Result<StageImpl, StageError> {
        if config.get::<Unloaded>().is_ok() {
            return Err(StageError::fatal(
                "the plugin library was not loaded: the pipeline was read for `plan` or `status`, not for a run",
            ));
        }
        let resolved = config.get::<Resolved>()?;
        let kind = resolved.kind().name.clone();
        let instance = resolved
            .plugin
            .create(&kind, &resolved.config)
            .map_err(|message| {
                StageError::fatal(format!(
                    "plugin `{}` could not make a `{kind}` stage: {message}",
                    resolved.plugin.info.name
                ))
            })?;
        Ok(StageImpl::Blocking(Arc::new(PluginStage(instance))))
    }
}

/// A plugin stage, as the runner sees it: a blocking stage.
struct PluginStage(Instance);

impl BlockingStage for PluginStage {
    fn process(&self, record: Record, cx: &Context) -> Result<Outcome, StageError> {
        self.0.process(&record, cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(text: &str) -> toml::Table {
        toml::from_str(text).expect("valid toml")
    }

    #[test]
    fn a_missing_or_foreign_file_is_a_problem_of_path() {
        let base = Path::new(env!("CARGO_MANIFEST_DIR"));
        let cases = [
            ("", "missing field `path`"),
            ("path = 3", "`path` must be a string"),
            (
                "path = \"no/such/libx.so\"",
                "cannot open plugin `no/such/libx.so`",
            ),
            (
                "path = \"Cargo.toml\"\nplugin_kind = 1",
                "`plugin_kind` must be a string",
            ),
        ];
        for (text, want) in cases {
            let problems = PluginKind.check(&table(text), Role::Transform, base, Plugins::Load);
            let text_of = format!("{problems:?}");
            assert!(text_of.contains(want), "{text}: {text_of}");
        }
        let problems = PluginKind.check(
            &table("path = \"Cargo.toml\""),
            Role::Transform,
            base,
            Plugins::Load,
        );
        assert!(
            format!("{problems:?}").contains("is not a loadable library"),
            "{problems:?}"
        );
    }

    #[test]
    fn without_loading_only_the_host_keys_are_checked_and_nothing_builds() {
        let base = Path::new(env!("CARGO_MANIFEST_DIR"));
        let skip =
            |text: &str| PluginKind.check(&table(text), Role::Transform, base, Plugins::Skip);
        let unloaded = skip("path = \"no/such/libx.so\"\nanything = 1").expect("not loaded");
        assert!(format!("{:?}", skip("path = 3")).contains("`path` must be a string"));
        assert!(format!("{:?}", skip("")).contains("missing field `path`"));
        let cx = BuildContext::new(
            "plug",
            Role::Transform,
            base.to_path_buf(),
            1,
            std::time::Duration::from_secs(1),
        );
        let err = PluginKind
            .build(&unloaded, &cx)
            .expect_err("an unloaded plugin stage");
        assert!(
            err.message.starts_with("the plugin library was not loaded"),
            "{}",
            err.message
        );
    }

    #[test]
    fn toml_values_become_json() {
        let t = table("a = 1\nb = 1.5\nc = [true, \"x\"]\nd = { e = 1979-05-27 }");
        let json = to_json(&toml::Value::Table(t));
        assert_eq!(
            json,
            serde_json::json!({"a": 1, "b": 1.5, "c": [true, "x"], "d": {"e": "1979-05-27"}})
        );
    }
}
