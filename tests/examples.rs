//! Every pipeline we ship must validate: the root `pipeline.toml` (what `stagewise run` runs by
//! default) and every `*.toml` under `examples/` (Vector's `test_generate_config` habit).

mod util;

use std::fs;
use std::path::{Path, PathBuf};

use util::{workspace_root, Cmd, TestDir};

fn tomls_under(dir: &Path, found: &mut Vec<PathBuf>) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries {
        let path = entry.expect("read examples/ entry").path();
        if path.is_dir() {
            tomls_under(&path, found);
        } else if path.extension().is_some_and(|e| e == "toml") {
            found.push(path);
        }
    }
}

#[test]
fn shipped_pipelines_validate() {
    let root = workspace_root();
    let main = root.join("pipeline.toml");
    assert!(main.is_file(), "the root pipeline.toml must exist");
    let mut pipelines = vec![main];
    tomls_under(&root.join("examples"), &mut pipelines);
    pipelines.sort();

    // Run from an unrelated directory: relative paths inside a pipeline are relative to its file,
    // and validating must not depend on (or write to) the working directory.
    let cwd = TestDir::new();
    let mut failures = Vec::new();
    for pipeline in &pipelines {
        let out = Cmd::new(cwd.path(), "validate", &pipeline.to_string_lossy()).output();
        if out.code != Some(0) {
            failures.push(out.to_string());
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} shipped pipelines do not validate:\n\n{}",
        failures.len(),
        pipelines.len(),
        failures.join("\n\n")
    );
    assert!(
        fs::read_dir(cwd.path())
            .map(|mut d| d.next().is_none())
            .unwrap_or(true),
        "validate wrote into the working directory"
    );
}
