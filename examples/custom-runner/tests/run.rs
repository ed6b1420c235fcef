//! The example runner runs its example pipeline: the custom kind is found, validated and run.

use std::path::Path;
use std::process::Command;

/// The example's files in a folder of this test's own (tests of one binary share a process),
/// deleted when the guard is dropped.
fn copy_example() -> tempfile::TempDir {
    let dir = tempfile::Builder::new()
        .prefix("custom-runner-")
        .tempdir()
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

fn stdout_json(out: &std::process::Output) -> serde_json::Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "stdout is not JSON ({e}): {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

/// The runner hands its registry to stagewise's command line, so `schema`, `plan` and
/// `status` know the custom kind as `stagewise` knows a builtin.
#[test]
fn schema_plan_and_status_know_the_custom_kind() {
    let guard = copy_example();
    let dir = guard.path();

    let out = custom_runner(dir, &["schema"]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let schema = stdout_json(&out);
    let text = schema.to_string();
    assert!(text.contains("\"word-count\""), "no word-count in {text}");
    assert!(text.contains("\"http-download\""), "builtins too: {text}");

    let out = custom_runner(dir, &["plan", "pipeline.toml", "--json"]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let plan = stdout_json(&out).to_string();
    assert!(plan.contains("word-count"), "{plan}");
    assert!(
        plan.contains("pipeline.toml:22"),
        "the origin of `output`: {plan}"
    );

    let out = custom_runner(dir, &["status", "pipeline.toml"]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("no run yet"),
        "{out:?}"
    );
    let out = custom_runner(dir, &["run", "pipeline.toml"]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let out = custom_runner(dir, &["status", "pipeline.toml", "--json"]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let status = stdout_json(&out);
    assert_eq!(status["counts"]["done"], 3, "{status}");
    assert_eq!(status["counts"]["skipped"], 1, "{status}");
    assert_eq!(
        status["skipped"][0]["reason"], "no text in `text`",
        "{status}"
    );
}

/// `retry-failed` puts the failed items back and runs them with the custom kind again.
#[test]
fn retry_failed_reruns_through_the_custom_kind() {
    let guard = copy_example();
    let dir = guard.path();
    let pipeline = std::fs::read_to_string(dir.join("pipeline.toml")).expect("read");
    let with_breaker = pipeline.replace(
        "[[stage]]\nname = \"out\"",
        "[[stage]]\nname = \"breaker\"\nkind = \"fault\"\npermanent_rate = 1.0\n\n[[stage]]\nname = \"out\"",
    );
    assert_ne!(
        with_breaker, pipeline,
        "the sink stage moved in the example"
    );
    std::fs::write(dir.join("pipeline.toml"), with_breaker).expect("write");

    let out = custom_runner(dir, &["run", "pipeline.toml"]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "3 items fail permanently: {out:?}"
    );
    let status = stdout_json(&custom_runner(dir, &["status", "pipeline.toml", "--json"]));
    assert_eq!(status["counts"]["failed"], 3, "{status}");

    let out = Command::new(env!("CARGO_BIN_EXE_custom-runner"))
        .args(["retry-failed", "pipeline.toml"])
        .current_dir(dir)
        .env_remove("STAGEWISE_LOG")
        .env("STAGEWISE_STAGE__BREAKER__PERMANENT_RATE", "0")
        .output()
        .expect("run custom-runner");
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let written = std::fs::read_to_string(dir.join("out/counted.jsonl")).expect("the sink");
    let mut keys: Vec<String> = written
        .lines()
        .map(|line| {
            let v: serde_json::Value = serde_json::from_str(line).expect("a JSON line");
            assert!(v["words"].as_u64().is_some(), "counted: {v}");
            v["key"].as_str().expect("key").to_owned()
        })
        .collect();
    keys.sort();
    assert_eq!(keys, ["1", "2", "3"]);
}
