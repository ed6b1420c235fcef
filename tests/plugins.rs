//! Dynamic stage plugins, end to end: the example `dedupe` plugin in a pipeline, a plugin that
//! panics, hangs or fails, libraries that are not plugins or speak another ABI version,
//! `plugin inspect`, and `validate` on a plugin's own keys.

mod util;

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use util::plugins::{library, ABI_MISMATCH, DEDUPE, MISBEHAVE};
use util::{locate, Cmd, Pipeline, TestDir};

/// A pipeline: the JSON Lines `input` → one plugin stage (`stage_toml`, the keys after
/// `kind = "plugin"`) → a JSON Lines sink at `out.jsonl`.
fn plugin_pipeline(input: &str, stage_toml: &str) -> Pipeline {
    let p = Pipeline::new(&format!(
        r#"
        [pipeline]
        name = "plugin"
        heartbeat = "1s"

        [defaults]
        retry = {{ attempts = 3, initial = "10ms", max = "20ms" }}

        [[stage]]
        name = "in"
        kind = "jsonl"
        path = "in.jsonl"
        key = "id"

        [[stage]]
        name = "plug"
        kind = "plugin"
        {stage_toml}

        [[stage]]
        name = "out"
        kind = "jsonl"
        path = "out.jsonl"
        "#
    ));
    p.dir.write("in.jsonl", util::dedent(input));
    p
}

/// `path = '…'` for a library (a literal string: no escapes).
fn path_key(library: &Path) -> String {
    format!("path = '{}'", library.display())
}

fn sorted(mut keys: Vec<String>) -> Vec<String> {
    keys.sort();
    keys
}

fn skipped_reasons(status: &util::Status) -> Vec<(String, String)> {
    status.raw["skipped"]
        .as_array()
        .expect("status lists skipped items")
        .iter()
        .map(|s| {
            (
                s["key"].as_str().expect("key").to_owned(),
                s["reason"].as_str().expect("reason").to_owned(),
            )
        })
        .collect()
}

#[test]
fn the_dedupe_plugin_skips_repeated_texts_with_a_path_relative_to_the_pipeline() {
    // The pipeline lives in a subfolder with its own copy of the library, and runs from the
    // folder above: `path` is relative to the pipeline file, not to the working directory.
    let dir = TestDir::new();
    dir.write(
        "job/plugins/libdedupe.so",
        fs::read(library(DEDUPE)).expect("read the built library"),
    );
    dir.write(
        "job/in.jsonl",
        util::dedent(
            r#"
            {"id": 1, "text": "Rain is expected across the north on Friday, clearing by the weekend."}
            {"id": 2, "text": "A new bridge opens downtown after three years of construction work."}
            {"id": 3, "text": "RAIN is expected across the north on Friday -- clearing by the weekend!"}
            {"id": 4, "text": "Rain is expected across the north on Friday, clearing by the weekend. Updated"}
            {"id": 5}
            "#,
        ),
    );
    let toml = util::dedent(
        r#"
        [pipeline]
        name = "dedupe"

        [[stage]]
        name = "in"
        kind = "jsonl"
        path = "in.jsonl"
        key = "id"

        [[stage]]
        name = "dedupe"
        kind = "plugin"
        path = "plugins/libdedupe.so"
        similarity = 0.8

        [[stage]]
        name = "out"
        kind = "jsonl"
        path = "out.jsonl"
        "#,
    );
    dir.write("job/pipeline.toml", &toml);
    Cmd::new(dir.path(), "validate", "job/pipeline.toml")
        .output()
        .assert_code(0);
    let out = Cmd::new(dir.path(), "run", "job/pipeline.toml").output();
    out.assert_code(0);

    let sink = util::Sink::read(&dir.join("job/out.jsonl"));
    let status = Cmd::new(dir.path(), "status", "job/pipeline.toml")
        .arg("--json")
        .output();
    let status = util::Status::parse(&status);
    // 1, 3 and 4 tell one story: whichever was processed first passes, the others name it.
    let kept = sorted(sink.keys());
    let survivor: Vec<&String> = kept
        .iter()
        .filter(|k| ["1", "3", "4"].contains(&k.as_str()))
        .collect();
    assert_eq!(survivor.len(), 1, "{kept:?}\n{out}");
    let survivor = survivor[0].clone();
    assert!(
        kept.contains(&"2".to_owned()) && kept.contains(&"5".to_owned()),
        "{kept:?}"
    );
    assert_eq!(kept.len(), 3, "{kept:?}");
    let skipped = skipped_reasons(&status);
    assert_eq!(skipped.len(), 2, "{skipped:?}");
    for (key, reason) in skipped {
        assert!(
            ["1", "3", "4"].contains(&key.as_str()) && key != survivor,
            "{key}"
        );
        assert_eq!(reason, format!("duplicate of {survivor}"));
    }
}

#[test]
fn a_plugin_that_panics_fails_only_those_items_and_its_logs_reach_the_host() {
    let p = plugin_pipeline(
        r#"
        {"id": 1}
        {"id": 2, "boom": true}
        {"id": 3}
        {"id": 4, "flaky": true}
        {"id": 5, "boom": true}
        "#,
        &format!(
            "{}\nplugin_kind = \"misbehave\"\npanic_field = \"boom\"\nfail_field = \"flaky\"\nlog = true",
            path_key(&library(MISBEHAVE))
        ),
    );
    let out = p.run();
    out.assert_code(1);
    let status = p.status();
    let failed: Vec<_> = status.failed.iter().map(|f| f.key.as_str()).collect();
    assert_eq!(failed, ["2", "4", "5"], "{out}");
    for f in &status.failed {
        match f.key.as_str() {
            // A panic fails the item at once, with the panic message and where it happened.
            "2" | "5" => {
                assert_eq!(f.attempts, 1, "{f:?}");
                assert!(
                    f.error
                        .contains(&format!("panicked: asked to panic on {}", f.key))
                        && f.error.contains("lib.rs"),
                    "{f:?}"
                );
            }
            // A transient error is retried until the attempts run out.
            _ => {
                assert_eq!(f.attempts, 3, "{f:?}");
                assert!(f.error.contains("asked to fail"), "{f:?}");
            }
        }
    }
    let sink = p.sink("out.jsonl");
    assert_eq!(sorted(sink.keys()), ["1", "3"]);
    assert!(sink.records.iter().all(|r| r["misbehave_seen"] == true));
    // The plugin's log lines come out through the host's logger, with the stage and key.
    let logged = out
        .stderr_lines()
        .find(|l| l.contains("misbehave saw 3 on attempt 1"))
        .unwrap_or_else(|| panic!("no log line from the plugin\n{out}"));
    assert!(
        logged.contains("plug") && logged.contains("INFO"),
        "{logged}"
    );
}

#[test]
fn a_hanging_plugin_times_out_like_any_blocking_stage() {
    // Item 2 hangs until cancelled; item 3 ignores cancellation and is abandoned each attempt.
    let p = plugin_pipeline(
        r#"
        {"id": 1}
        {"id": 2, "hang": true}
        {"id": 3, "stuck": true}
        {"id": 4}
        "#,
        &format!(
            "{}\nplugin_kind = \"misbehave\"\nhang_field = \"hang\"\nstuck_field = \"stuck\"\ntimeout = \"300ms\"\nconcurrency = 4\nretry = {{ attempts = 2 }}",
            path_key(&library(MISBEHAVE))
        ),
    );
    let out = p.cmd("run").timeout(Duration::from_secs(30)).output();
    out.assert_code(1);
    assert!(
        out.elapsed < Duration::from_secs(15),
        "the run must end soon after the timeouts\n{out}"
    );
    let status = p.status();
    let failed: Vec<_> = status.failed.iter().map(|f| f.key.as_str()).collect();
    assert_eq!(failed, ["2", "3"], "{out}");
    for f in &status.failed {
        assert_eq!((f.stage.as_str(), f.attempts), ("plug", 2), "{f:?}");
        // Item 3 ignores cancellation: only the host's timeout ends its attempts. Item 2 polls
        // it, and may notice the deadline itself a moment before the host's timer fires.
        let timed_out = f.error.contains("timed out after 300ms");
        assert!(
            timed_out || (f.key == "2" && f.error.contains("cancelled while hanging")),
            "{f:?}"
        );
    }
    assert_eq!(sorted(p.sink("out.jsonl").keys()), ["1", "4"]);
}

#[test]
fn a_plugin_of_another_abi_version_is_refused_naming_both_versions() {
    let p = plugin_pipeline("{\"id\": 1}\n", &path_key(&library(ABI_MISMATCH)));
    let (line, col) = locate(p.toml(), "path = '");
    for out in [p.validate(), p.run()] {
        out.assert_code(2);
        let host = stagewise_core::plugin::ABI_VERSION;
        let wanted = format!(
            "pipeline.toml:{line}:{}: stage `plug`: plugin `",
            col + "path = ".len()
        );
        assert!(
            out.errors().iter().any(|e| e.contains(&wanted)
                && e.contains("plugin ABI version 999")
                && e.contains(&format!("speaks plugin ABI version {host}"))),
            "{out}"
        );
    }
    assert!(!p.dir.exists("out.jsonl"), "nothing may run");
}

/// A shared library this very process has loaded (the C library, or another): a real library
/// that is certainly not a plugin.
fn some_system_library() -> PathBuf {
    let maps = fs::read_to_string("/proc/self/maps").expect("read /proc/self/maps");
    let libraries: Vec<&str> = maps
        .lines()
        .filter_map(|l| l.split_whitespace().nth(5))
        .filter(|p| p.starts_with('/') && p.contains(".so"))
        .collect();
    let chosen = libraries
        .iter()
        .find(|p| p.contains("libc.so"))
        .or(libraries.first())
        .expect("the test process has loaded some shared library");
    PathBuf::from(chosen)
}

#[test]
fn a_file_that_is_not_a_plugin_is_a_configuration_error() {
    let system = some_system_library();
    let cases = [
        (
            "path = 'libnotes.so'",
            "`libnotes.so` is not a loadable library",
        ),
        (
            &path_key(&system) as &str,
            "is not a stagewise plugin: it does not export `stagewise_plugin_entry`",
        ),
        (
            "path = 'missing/libx.so'",
            "cannot open plugin `missing/libx.so`",
        ),
    ];
    for (key, message) in cases {
        let p = plugin_pipeline("{\"id\": 1}\n", key);
        p.dir
            .write("libnotes.so", "these are notes, not a library\n");
        for out in [p.validate(), p.run()] {
            out.assert_code(2);
            assert!(
                out.errors()
                    .iter()
                    .any(|e| e.contains("stage `plug`") && e.contains(message)),
                "{key}: expected {message:?}\n{out}"
            );
        }
        assert!(!p.dir.exists("out.jsonl"), "nothing may run");
    }
}

#[test]
fn validate_checks_a_plugins_keys_against_its_schema() {
    let p = plugin_pipeline(
        "{\"id\": 1}\n",
        &format!(
            "{}\nsimilarty = 0.8\nshingle = \"three\"\non_missing = \"drop\"",
            path_key(&library(DEDUPE))
        ),
    );
    let out = p.validate();
    out.assert_code(2);
    let at = |needle: &str, offset: usize| {
        let (line, col) = locate(p.toml(), needle);
        format!("pipeline.toml:{line}:{}: stage `plug`: ", col + offset)
    };
    let expected = [
        format!(
            "{}unknown key `similarty` (did you mean `similarity`?)",
            at("similarty", 0)
        ),
        format!(
            "{}`shingle` must be an integer, not the string \"three\"",
            at("shingle = ", "shingle = ".len())
        ),
        format!(
            "{}`on_missing` must be one of `pass`, `skip`, `fail`",
            at("on_missing = ", "on_missing = ".len())
        ),
    ];
    let errors = out.errors();
    for want in &expected {
        assert!(
            errors.iter().any(|e| e.ends_with(want.as_str())),
            "missing {want:?}\n{out}"
        );
    }
}

#[test]
fn plan_and_status_load_no_plugin_and_validate_says_it_loads_them() {
    let library = library(MISBEHAVE);
    let p = plugin_pipeline(
        "{\"id\": 1}\n{\"id\": 2}\n",
        &format!(
            "{}\nplugin_kind = \"misbehave\"\nlog = true",
            path_key(&library)
        ),
    );
    p.run().assert_code(0);
    let marker = p.dir.join("loaded");
    let marker_text = marker.to_str().expect("a UTF-8 path");
    // Loaded, the library would leave the marker, then abort the process.
    let unloaded = |subcommand: &str, json: bool| {
        let mut cmd = p.cmd(subcommand);
        if json {
            cmd = cmd.arg("--json");
        }
        let out = cmd
            .env("MISBEHAVE_LOAD_MARKER", marker_text)
            .env("MISBEHAVE_ABORT_ON_LOAD", "1")
            .output();
        out.assert_code(0);
        assert!(!marker.exists(), "{subcommand} loaded the plugin\n{out}");
        out
    };

    let plan = unloaded("plan", false);
    let stage = plan
        .stdout
        .split("[[stage]] 2 of 3: plug\n")
        .nth(1)
        .and_then(|rest| rest.split("\n\n").next())
        .unwrap_or_else(|| panic!("no block for the plugin stage\n{plan}"));
    assert!(stage.contains("  log "), "its keys as written\n{plan}");
    assert!(
        stage.ends_with(
            "  note: a plugin stage: its own keys are shown as written, unchecked; `plan` loads no plugin library, `validate` and `run` load it and check them"
        ),
        "{plan}"
    );
    let plan = unloaded("plan", true);
    let json: serde_json::Value = serde_json::from_str(&plan.stdout).expect("plan --json");
    assert!(
        json["stages"][1]["note"]
            .as_str()
            .is_some_and(|n| n.contains("unchecked")),
        "{plan}"
    );
    assert!(json["stages"][0].get("note").is_none(), "{plan}");

    unloaded("status", false);
    let status = util::Status::parse(&unloaded("status", true));
    assert_eq!(status.count("done"), 2);

    // A key the plugin's schema refuses: `plan` shows it, `validate` (which loads the library)
    // finds it.
    p.dir.write(
        "pipeline.toml",
        p.toml().replace("log = true", "log = true\nlgo = 1"),
    );
    assert!(unloaded("plan", false).stdout.contains("  lgo "));
    let out = p
        .cmd("validate")
        .env("MISBEHAVE_LOAD_MARKER", marker_text)
        .output();
    out.assert_code(2);
    assert!(marker.exists(), "validate loads the plugin\n{out}");
    out.assert_stderr_contains(&format!(
        "loading the plugin libraries this file names, to check their stages (loading a plugin runs its code): `{}`",
        library.display()
    ));
    out.assert_stderr_contains("stage `plug`: unknown key `lgo`");
    let out = p
        .cmd("validate")
        .env("MISBEHAVE_ABORT_ON_LOAD", "1")
        .output();
    assert_eq!(
        out.code, None,
        "the loaded library aborts the process\n{out}"
    );
}

#[test]
fn a_library_with_several_kinds_needs_plugin_kind() {
    let lib = path_key(&library(MISBEHAVE));
    let cases = [
        (
            lib.clone(),
            "plugin `stagewise-fixture-misbehave` offers several kinds (misbehave, noop): choose one with `plugin_kind`",
        ),
        (
            format!("{lib}\nplugin_kind = \"nope\""),
            "plugin `stagewise-fixture-misbehave` has no kind `nope`; its kinds: misbehave, noop",
        ),
    ];
    for (keys, message) in cases {
        let p = plugin_pipeline("{\"id\": 1}\n", &keys);
        let out = p.validate();
        out.assert_code(2);
        assert!(
            out.errors().iter().any(|e| e.contains(message)),
            "{message}\n{out}"
        );
    }
}

#[test]
fn a_plugin_that_panics_while_starting_stops_the_run_before_it_starts() {
    let p = plugin_pipeline(
        "{\"id\": 1}\n",
        &format!(
            "{}\nplugin_kind = \"misbehave\"\npanic_on_new = true",
            path_key(&library(MISBEHAVE))
        ),
    );
    let out = p.run();
    out.assert_code(2);
    out.assert_stderr_contains(
        "could not make a `misbehave` stage: panicked: asked to panic in new",
    );
    assert!(!p.dir.exists("out.jsonl"), "nothing may run");
}

#[test]
fn plugin_inspect_shows_name_version_abi_kinds_and_schemas() {
    let dir = TestDir::new();
    let lib = library(MISBEHAVE);
    let out = Cmd::new(dir.path(), "plugin", "inspect")
        .arg(&lib.to_string_lossy())
        .output();
    out.assert_code(0);
    let host = stagewise_core::plugin::ABI_VERSION;
    for needle in [
        "plugin stagewise-fixture-misbehave 0.1.0".to_owned(),
        format!("ABI version: {host}"),
        "kind `misbehave`: panics, hangs or fails on the records that ask for it".to_owned(),
        "kind `noop`: hands every record back unchanged".to_owned(),
        "\"panic_field\": {".to_owned(),
    ] {
        assert!(out.stdout.contains(&needle), "{needle:?}\n{out}");
    }

    dir.write("notes.txt", "not a library");
    let cases = [
        ("notes.txt", "error: `notes.txt` is not a loadable library"),
        ("missing.so", "error: cannot open plugin `missing.so`"),
    ];
    for (file, message) in cases {
        let out = Cmd::new(dir.path(), "plugin", "inspect").arg(file).output();
        out.assert_code(2);
        out.assert_stderr_contains(message);
    }
    let out = Cmd::new(dir.path(), "plugin", "inspect")
        .arg(&library(ABI_MISMATCH).to_string_lossy())
        .output();
    out.assert_code(2);
    out.assert_stderr_contains("plugin ABI version 999");
}

/// A plugin that aborts the whole process on one record (no unwinding, no summary): each death
/// counts against that item's attempts, so within `retry.attempts` + 1 runs a run fails it and
/// finishes, every other item done.
#[test]
fn a_plugin_that_aborts_the_process_on_one_item_cannot_loop_the_job() {
    let p = plugin_pipeline(
        r#"
        {"id": 1}
        {"id": 2}
        {"id": 3, "die": true}
        {"id": 4}
        {"id": 5}
        "#,
        &format!(
            "{}\nplugin_kind = \"misbehave\"\nabort_field = \"die\"\nconcurrency = 1",
            path_key(&library(MISBEHAVE))
        ),
    );
    p.run_until_finished_with_failures(4, None);
    let status = p.status();
    status.assert_failed(
        &["3"],
        "plug",
        3,
        "the process ended during attempt 3 in stage `plug`",
    );
    assert_eq!(status.count("done"), 4);
    let written: Vec<String> = p.sink("out.jsonl").unique_keys().into_iter().collect();
    assert_eq!(written, ["1", "2", "4", "5"]);
}

/// The same on a PostgreSQL store whose process loses its disk with each death (a container's
/// ephemeral disk: no flight record survives, only the store): each item's take-up was made
/// durable before its first attempt, so the deaths still count and the job cannot loop. The
/// plugin is the sink here, one item at a time, so that no other item is in flight when the
/// process dies (an item in flight then counts the death too).
#[test]
fn a_plugin_that_aborts_the_process_cannot_loop_the_job_when_the_disk_is_lost_too() {
    let Some(db) = util::pg::Db::new() else {
        return;
    };
    let p = Pipeline::new(&format!(
        r#"
        [pipeline]
        name = "plugin"

        [checkpoint]
        store = "{}"

        [defaults]
        retry = {{ attempts = 3, initial = "10ms", max = "20ms" }}

        [[stage]]
        name = "in"
        kind = "jsonl"
        path = "in.jsonl"
        key = "id"

        [[stage]]
        name = "plug"
        kind = "plugin"
        {}
        plugin_kind = "misbehave"
        abort_field = "die"
        concurrency = 1
        "#,
        db.url(),
        path_key(&library(MISBEHAVE))
    ));
    p.dir.write(
        "in.jsonl",
        "{\"id\": 1}\n{\"id\": 2}\n{\"id\": 3, \"die\": true}\n{\"id\": 4}\n{\"id\": 5}\n",
    );
    let mut codes = Vec::new();
    for _ in 0..4 {
        // The disk is gone: no flight record, no summary, nothing of the last process.
        let _ = fs::remove_dir_all(p.dir.join(".stagewise"));
        let out = p.run();
        codes.push(out.code);
        if out.code == Some(1) {
            break;
        }
        assert_eq!(out.code, None, "runs so far: {codes:?}\n{out}");
    }
    assert_eq!(codes.last(), Some(&Some(1)), "runs: {codes:?}");
    let status = p.status();
    status.assert_failed(
        &["3"],
        "plug",
        3,
        "the process ended during attempt 3 in stage `plug`",
    );
    assert_eq!(status.count("done"), 4);
}
