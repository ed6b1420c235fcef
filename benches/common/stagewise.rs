//! Running the `stagewise` binary as a user does: a pipeline written into a fresh
//! directory, `stagewise run` in it with JSON logs, and its summary read back.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

use super::process::Measured;

/// The file a run's stderr (its JSON log) is copied to, in the run's directory.
pub const LOG: &str = "stderr.log";

/// The stage every bench pipeline ends with.
pub const SINK: &str = r#"[[stage]]
name = "sink"
kind = "blackhole"
"#;

/// A bench pipeline: named `bench` (so its summary is `bench.summary.json`), a heartbeat of
/// 60s, checkpointing in `state.db` in the run's directory; a `[defaults]` table of `defaults`
/// unless it is empty; the source stage `src` of `source` (its kind and keys) with a timeout of
/// 5 minutes; then `stages` as written.
pub fn pipeline(defaults: &str, source: &str, stages: &str) -> String {
    let defaults = if defaults.is_empty() {
        String::new()
    } else {
        format!("\n[defaults]\n{defaults}\n")
    };
    format!(
        r#"[pipeline]
name = "bench"
heartbeat = "60s"

[checkpoint]
store = "sqlite:state.db"
{defaults}
[[stage]]
name = "src"
{source}
timeout = "5m"

{stages}"#
    )
}

/// The keys of a `generate` source of `count` items.
pub fn generate(count: u64) -> String {
    format!("kind = \"generate\"\ncount = {count}")
}

/// The keys of a `jsonl` source reading `path`, keyed by each line's `id`.
pub fn jsonl(path: &str) -> String {
    format!("kind = \"jsonl\"\npath = \"{path}\"\nkey = \"id\"")
}

/// Cargo's folder for the temporary files of benches and tests.
pub fn target_tmp() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
}

/// The working folder of bench `name` in this process, made afresh:
/// `stagewise-bench-NAME/PID` in [`target_tmp`].
pub fn work_dir(name: &str) -> Result<PathBuf, String> {
    fresh_dir(
        target_tmp()
            .join(format!("stagewise-bench-{name}"))
            .join(std::process::id().to_string()),
    )
}

/// Write `text` to the file at `path`, or say which file could not be written.
pub fn write(path: &Path, text: &str) -> Result<(), String> {
    std::fs::write(path, text).map_err(|e| format!("cannot write {}: {e}", path.display()))
}

/// Make `dir` afresh: whatever an earlier run left there is removed first.
pub fn fresh_dir(dir: PathBuf) -> Result<PathBuf, String> {
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    Ok(dir)
}

/// Make `dir` afresh with `pipeline` in it as `pipeline.toml`, and return the command that runs
/// it there: `stagewise run pipeline.toml --log-format json` at log level `info`, without the
/// caller's `STAGEWISE_…` variables.
pub fn prepare(dir: &Path, pipeline: &str) -> Result<Command, String> {
    let dir = fresh_dir(dir.to_owned())?;
    std::fs::write(dir.join("pipeline.toml"), pipeline)
        .map_err(|e| format!("cannot write the pipeline: {e}"))?;
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_stagewise"));
    cmd.args(["run", "pipeline.toml", "--log-format", "json"])
        .current_dir(&dir);
    // A developer's overrides (`STAGEWISE_STAGE__…`, a debug log level) would change what is
    // measured.
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("STAGEWISE_") {
            cmd.env_remove(key);
        }
    }
    cmd.env("STAGEWISE_LOG", "info");
    Ok(cmd)
}

/// The summary a run in `dir` wrote (`bench.summary.json`), if it wrote one.
pub fn summary(dir: &Path) -> Option<Value> {
    std::fs::read_to_string(dir.join("bench.summary.json"))
        .ok()
        .and_then(|s| serde_json::from_str::<Value>(&s).ok())
}

/// The summary of run `name` in `dir` if it exited with 0 and all of its `items` are done;
/// otherwise an error that counts them (as `noun`) and names the log, which stays in `dir`.
pub fn all_done(
    name: &str,
    dir: &Path,
    measured: &Measured,
    items: u64,
    noun: &str,
) -> Result<Option<Value>, String> {
    let summary = summary(dir);
    let done = summary.as_ref().and_then(|s| s["done"].as_u64());
    if measured.status.code() != Some(0) || done != Some(items) {
        return Err(format!(
            "{name}: stagewise exited with {} and {done:?} of {items} {noun} done; see {}",
            measured.status,
            dir.join(LOG).display()
        ));
    }
    Ok(summary)
}
