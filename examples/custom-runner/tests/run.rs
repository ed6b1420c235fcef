//! The example runner runs its example pipeline: the custom kind is found, validated and run.

use std::path::Path;
use std::process::Command;

/// The example's files in a folder of this test's own (tests of one binary share a process),
/// deleted when the guard is dropped.
fn copy_example() -> tempfile::TempDir {
    let dir = tempfile::Builder::new()
        .prefix("custom-runner-")
        .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
        .expect("create a test folder");
    let example = Path::new(env!("CARGO_MANIFEST_DIR"));
    for file in ["pipeline.toml", "items.jsonl"] {
        std::fs::copy(example.join(file), dir.path().join(file)).expect("copy the example");
    }
    dir
}

fn custom_runner(dir: &Path, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_custom-runner"))
        .args(args)
        .current_dir(dir)
        .env_remove("STAGEWISE_LOG")
        .output()
        .expect("run custom-runner")
}

#[test]
fn the_example_pipeline_runs_with_the_compiled_in_kind() {
    let guard = copy_example();
    let dir = guard.path();
    let out = custom_runner(dir, &["run", "pipeline.toml"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    let written = std::fs::read_to_string(dir.join("out/counted.jsonl")).expect("the sink");
    let mut counts: Vec<(String, u64)> = written
        .lines()
        .map(|line| {
            let v: serde_json::Value = serde_json::from_str(line).expect("a JSON line");
            let key = v["key"].as_str().expect("key").to_owned();
            (key, v["words"].as_u64().expect("words"))
        })
        .collect();
    counts.sort();
    let want = [("1", 9), ("2", 10), ("3", 5)].map(|(k, n)| (k.to_owned(), n));
    assert_eq!(counts, want, "{stderr}");
}

#[test]
fn the_custom_kinds_keys_are_checked_like_a_builtins() {
    let guard = copy_example();
    let dir = guard.path();
    let pipeline = std::fs::read_to_string(dir.join("pipeline.toml")).expect("read");
    let broken = pipeline.replace("output = \"words\"", "outptu = \"words\"");
    std::fs::write(dir.join("pipeline.toml"), broken).expect("write");
    let out = custom_runner(dir, &["validate", "pipeline.toml"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("stage `count`: unknown key `outptu` (did you mean `output`?)"),
        "{stderr}"
    );
}
