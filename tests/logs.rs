//! The log as an operator sets it up: `--log-format` and `--color` on every command (and
//! `STAGEWISE_LOG_FORMAT`), the filter from `STAGEWISE_LOG` or else `RUST_LOG` (one that is not
//! a filter is an error, exit 2), `NO_COLOR` on a terminal, and JSON events whose figures are
//! numbers and whose stages are objects.

mod util;

use util::Pipeline;

/// 12 items through a 100 ms sleep, two at a time, heartbeat every 200 ms.
fn pipeline() -> Pipeline {
    Pipeline::new(
        r#"
        [pipeline]
        name = "logs"
        heartbeat = "200ms"

        [[stage]]
        name = "src"
        kind = "generate"
        count = 12

        [[stage]]
        name = "nap"
        kind = "sleep"
        duration = "100ms"
        concurrency = 2

        [[stage]]
        name = "out"
        kind = "jsonl"
        path = "out.jsonl"
        "#,
    )
}

/// Every stderr line of `out` as JSON (each must be one).
fn json_lines(out: &util::Output) -> Vec<serde_json::Value> {
    out.stderr_lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            serde_json::from_str(l)
                .unwrap_or_else(|e| panic!("not a JSON line ({e}): {l:?}\n{out}"))
        })
        .collect()
}

#[test]
fn json_events_have_numbers_as_numbers_and_stages_as_objects() {
    let p = pipeline();
    // The flag before the command, as a global flag.
    let out = util::Cmd::bare(p.dir.path(), "--log-format")
        .arg("json")
        .arg("run")
        .arg("pipeline.toml")
        .output();
    out.assert_code(0);
    let events = json_lines(&out);
    let summary = events.last().expect("a summary");
    assert_eq!(summary["message"], "summary", "{summary}");
    assert_eq!(summary["outcome"], "finished");
    assert_eq!(summary["exit_code"], 0);
    assert_eq!(summary["done"], 12);
    assert!(
        summary["elapsed_secs"].as_f64().is_some_and(|s| s > 0.0),
        "{summary}"
    );
    let stages = summary["stages"].as_array().expect("stages as a list");
    let nap = stages.iter().find(|s| s["name"] == "nap").expect("nap");
    assert_eq!(nap["done"], 12, "{summary}");
    assert!(nap["latency"]["p50_ms"].as_f64().is_some(), "{summary}");
    let beat = events
        .iter()
        .find(|e| e["message"] == "heartbeat")
        .unwrap_or_else(|| panic!("no heartbeat\n{out}"));
    assert!(beat["items_per_sec"].is_f64(), "{beat}");
    assert!(beat["remaining"].is_u64(), "{beat}");
    let beat_nap = &beat["stages"][0];
    assert_eq!(beat_nap["name"], "nap", "{beat}");
    assert!(beat_nap["in_flight"].is_u64(), "{beat}");
    assert!(beat_nap["concurrency_max"].is_u64(), "{beat}");
}

#[test]
fn the_log_format_comes_from_the_environment_too() {
    let p = pipeline();
    let out = p.cmd("run").env("STAGEWISE_LOG_FORMAT", "json").output();
    out.assert_code(0);
    let events = json_lines(&out);
    assert_eq!(events.last().expect("events")["message"], "summary");
    // A format it does not know is a usage error.
    let out = p.cmd("run").env("STAGEWISE_LOG_FORMAT", "xml").output();
    out.assert_code(2);
    out.assert_stderr_contains("xml");
    // `validate` takes it too, and its problems become events.
    let bad = Pipeline::new("[pipeline]\nname = \"x\"\nbogus = 1\n");
    let out = bad.cmd("validate").arg("--log-format").arg("json").output();
    out.assert_code(2);
    let events = json_lines(&out);
    assert!(
        events
            .iter()
            .any(|e| e["problem"].as_str().is_some_and(|p| p.contains("bogus"))),
        "{out}"
    );
}

#[test]
fn the_filter_comes_from_stagewise_log_then_rust_log_and_a_bad_one_is_an_error() {
    let p = pipeline();
    // The summary shows whatever the filter: the other info lines.
    let info = |out: &util::Output| {
        out.stderr_lines()
            .any(|l| l.contains(" INFO ") && !l.contains(" INFO summary"))
    };
    let out = p.cmd("run").env("RUST_LOG", "warn").output();
    out.assert_code(0);
    assert!(!info(&out), "RUST_LOG=warn let info lines through\n{out}");
    let out = p
        .cmd("run")
        .arg("--fresh")
        .env("RUST_LOG", "warn")
        .env("STAGEWISE_LOG", "info")
        .output();
    out.assert_code(0);
    assert!(
        info(&out),
        "STAGEWISE_LOG=info did not win over RUST_LOG\n{out}"
    );
    for (var, value) in [("STAGEWISE_LOG", "info,=debugg"), ("RUST_LOG", "[{")] {
        let out = p.cmd("run").env(var, value).output();
        out.assert_code(2);
        out.assert_stderr_contains(&format!("`{var}` is not a log filter"));
        assert!(!out.stderr.contains("summary"), "it ran\n{out}");
    }
}

/// `stagewise <args>` in `p`'s folder on a pseudo-terminal (`script`, of util-linux, which
/// Debian ships in every system), with `env`; what it wrote there.
fn run_on_a_terminal(p: &Pipeline, args: &[&str], env: &[(&str, &str)]) -> String {
    let line = std::iter::once(util::bin())
        .chain(args.iter().copied())
        .map(|a| format!("'{a}'"))
        .collect::<Vec<_>>()
        .join(" ");
    let mut command = std::process::Command::new("script");
    command
        .current_dir(p.dir.path())
        .args(["--quiet", "--return", "--command", &line, "/dev/null"])
        .env_remove("RUST_LOG")
        .env_remove("NO_COLOR")
        .env_remove("STAGEWISE_LOG")
        .env_remove("STAGEWISE_LOG_FORMAT")
        .env("TERM", "xterm")
        .stdin(std::process::Stdio::null());
    for (k, v) in env {
        command.env(k, v);
    }
    let out = command.output().expect("script (util-linux) runs");
    assert!(
        out.status.success(),
        "{:?}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn colour_on_a_terminal_unless_no_color_or_never() {
    let p = pipeline();
    let esc = '\u{1b}';
    let auto = run_on_a_terminal(&p, &["run", "pipeline.toml"], &[]);
    assert!(
        auto.contains(&format!("{esc}[32m INFO{esc}[0m")),
        "no coloured level on a terminal: {auto:?}"
    );
    let p = pipeline();
    let no_color = run_on_a_terminal(&p, &["run", "pipeline.toml"], &[("NO_COLOR", "1")]);
    assert!(no_color.contains("summary"), "{no_color:?}");
    assert!(!no_color.contains(esc), "NO_COLOR=1: {no_color:?}");
    let p = pipeline();
    let never = run_on_a_terminal(&p, &["run", "--color", "never", "pipeline.toml"], &[]);
    assert!(
        never.contains("summary") && !never.contains(esc),
        "{never:?}"
    );
    // Not a terminal: no colour unless asked for (read raw: the tests' `Output` strips it).
    let raw = |args: &[&str], env: &[(&str, &[u8])]| {
        let (code, stderr) = raw_run(&pipeline(), args, env);
        assert_eq!(code, Some(0), "{stderr}");
        stderr
    };
    let piped = raw(&["run", "pipeline.toml"], &[]);
    assert!(
        piped.contains("summary") && !piped.contains(esc),
        "{piped:?}"
    );
    let always = raw(
        &["run", "pipeline.toml", "--color", "always"],
        &[("NO_COLOR", b"1")],
    );
    assert!(
        always.contains(&format!("{esc}[32m INFO{esc}[0m")),
        "{always:?}"
    );
}

/// Run the binary with `args` in `p`'s folder and these variables (as bytes: some are not
/// UTF-8), the tests' own overrides removed; `(exit code, raw stderr)`.
fn raw_run(p: &Pipeline, args: &[&str], env: &[(&str, &[u8])]) -> (Option<i32>, String) {
    use std::os::unix::ffi::OsStrExt;
    let mut command = std::process::Command::new(util::bin());
    command
        .current_dir(p.dir.path())
        .args(args)
        .env_remove("NO_COLOR")
        .env_remove("STAGEWISE_LOG")
        .env_remove("STAGEWISE_LOG_FORMAT")
        .env_remove("RUST_LOG");
    for (k, v) in env {
        command.env(k, std::ffi::OsStr::from_bytes(v));
    }
    let out = command.output().expect("runs");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn a_variable_that_is_not_utf8_is_no_crash() {
    let p = pipeline();
    for command in [
        &["validate", "pipeline.toml"][..],
        &["plan", "pipeline.toml"],
        &["run", "pipeline.toml"],
    ] {
        let (code, stderr) = raw_run(&p, command, &[("LC_SOMETHING", b"caf\xe9")]);
        assert_eq!(code, Some(0), "{command:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
}

#[test]
fn a_filter_that_would_silence_the_run_is_refused_and_the_summary_always_shows() {
    let p = pipeline();
    for filter in ["warning", "debgu", "info,notice"] {
        for command in ["run", "validate"] {
            let (code, stderr) = raw_run(
                &p,
                &[command, "pipeline.toml"],
                &[("STAGEWISE_LOG", filter.as_bytes())],
            );
            assert_eq!(code, Some(2), "{command} with {filter}: {stderr}");
            assert!(stderr.contains("is not a level"), "{stderr}");
        }
    }
    // Spaces around a level are no target name.
    let (code, stderr) = raw_run(
        &p,
        &["run", "pipeline.toml"],
        &[("STAGEWISE_LOG", b" info ")],
    );
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stderr.contains(" INFO "), "{stderr}");
    // Everything off but the summary.
    let (code, stderr) = raw_run(
        &p,
        &["run", "--fresh", "pipeline.toml"],
        &[("STAGEWISE_LOG", b"off")],
    );
    assert_eq!(code, Some(0), "{stderr}");
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "{stderr}");
    assert!(lines[0].contains("INFO summary"), "{stderr}");
}

#[test]
fn in_json_every_line_is_json_even_the_messages() {
    let p = pipeline();
    let parses = |stderr: &str| {
        for line in stderr.lines() {
            let event: serde_json::Value =
                serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line:?}"));
            assert!(event["message"].is_string(), "{line}");
        }
    };
    let (code, stderr) = raw_run(
        &p,
        &[
            "validate",
            "pipeline.toml",
            "--log-format",
            "json",
            "--color",
            "always",
        ],
        &[],
    );
    assert_eq!(code, Some(0), "{stderr}");
    parses(&stderr);
    assert!(stderr.contains("is valid"), "{stderr}");
    let (code, stderr) = raw_run(
        &p,
        &["run", "pipeline.toml", "--color", "always"],
        &[
            ("STAGEWISE_LOG_FORMAT", b"JSON"),
            ("STAGEWISE_LOG", b"info,[{"),
        ],
    );
    assert_eq!(code, Some(2), "{stderr}");
    parses(&stderr);
    assert!(stderr.contains("\"level\":\"ERROR\""), "{stderr}");
    assert!(!stderr.contains('\u{1b}'), "{stderr:?}");
    // Empty is unset; a word that is no format is an error.
    let (code, stderr) = raw_run(
        &p,
        &["run", "pipeline.toml"],
        &[("STAGEWISE_LOG_FORMAT", b"")],
    );
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stderr.contains(" INFO summary"), "{stderr}");
    let (code, stderr) = raw_run(&p, &["schema"], &[("STAGEWISE_LOG_FORMAT", b"xml")]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains("`STAGEWISE_LOG_FORMAT` is `xml`"),
        "{stderr}"
    );
}

#[test]
fn a_panic_event_keeps_its_name_and_says_the_panic_apart() {
    let p = Pipeline::new(
        r#"
        [pipeline]
        name = "panics"

        [[stage]]
        name = "src"
        kind = "generate"
        count = 1

        [[stage]]
        name = "boom"
        kind = "fault"
        panic_rate = 1.0
        "#,
    );
    let (code, stderr) = raw_run(&p, &["run", "pipeline.toml", "--log-format", "json"], &[]);
    assert_eq!(code, Some(1), "{stderr}");
    let line = stderr
        .lines()
        .find(|l| l.contains("injected panic") && l.contains("\"level\":\"ERROR\""))
        .unwrap_or_else(|| panic!("no panic event: {stderr}"));
    assert_eq!(line.matches("\"message\"").count(), 1, "{line}");
    let event: serde_json::Value = serde_json::from_str(line).expect("JSON");
    assert_eq!(event["message"], "panic", "{line}");
    assert_eq!(event["error"], "injected panic", "{line}");
}

#[test]
fn a_message_is_coloured_by_its_word_not_by_what_a_file_name_holds() {
    let p = pipeline();
    std::fs::copy(p.dir.join("pipeline.toml"), p.dir.join("2024 ERROR.toml")).expect("copy");
    let (code, stderr) = raw_run(
        &p,
        &["validate", "2024 ERROR.toml", "--color", "always"],
        &[],
    );
    assert_eq!(code, Some(0), "{stderr}");
    assert!(!stderr.contains('\u{1b}'), "{stderr:?}");
    let (code, stderr) = raw_run(&p, &["validate", "missing.toml", "--color", "always"], &[]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.starts_with("\u{1b}[1;31merror:\u{1b}[0m"),
        "{stderr:?}"
    );
}

/// In JSON, every event of an item carries the item's `run`, `key`, `stage` and `attempt` as
/// top-level fields (typed), whichever part of the code emitted it; durations are seconds.
#[test]
fn every_json_event_of_an_item_names_its_run_key_stage_and_attempt() {
    let p = Pipeline::new(
        r#"
        [pipeline]
        name = "items"
        heartbeat = "100ms"

        [[stage]]
        name = "src"
        kind = "generate"
        count = 4

        [[stage]]
        name = "nap"
        kind = "sleep"
        duration = "400ms"
        timeout = "600ms"

        [[stage]]
        name = "boom"
        kind = "fault"
        error_rate = 1.0
        retry = { attempts = 2, initial = "10ms" }
        "#,
    );
    let out = util::Cmd::bare(p.dir.path(), "--log-format")
        .arg("json")
        .arg("run")
        .arg("pipeline.toml")
        .env("STAGEWISE_LOG", "debug")
        .output();
    out.assert_code(1);
    let events = json_lines(&out);
    let of_items: Vec<&serde_json::Value> =
        events.iter().filter(|e| e.get("key").is_some()).collect();
    for e in &of_items {
        assert!(e["run"].is_i64(), "`run` as a number: {e}");
        assert!(e["key"].is_string(), "{e}");
        assert!(e["stage"].is_string(), "{e}");
        assert!(e["attempt"].is_u64(), "`attempt` as a number: {e}");
    }
    let retried: Vec<_> = of_items
        .iter()
        .filter(|e| e["message"] == "retrying")
        .collect();
    assert_eq!(retried.len(), 4, "one retry per item\n{out}");
    for e in retried {
        assert_eq!(
            (&e["stage"], &e["attempt"]),
            (&"boom".into(), &1.into()),
            "{e}"
        );
        assert!(e["delay_secs"].as_f64().is_some_and(|s| s < 1.0), "{e}");
    }
    let failed: Vec<_> = of_items
        .iter()
        .filter(|e| e["message"] == "item failed")
        .collect();
    assert_eq!(failed.len(), 4, "{out}");
    assert!(failed.iter().all(|e| e["attempt"] == 2), "{out}");
    let slow: Vec<_> = of_items
        .iter()
        .filter(|e| e["message"] == "slow attempt")
        .collect();
    assert!(!slow.is_empty(), "the naps pass half their timeout\n{out}");
    for e in slow {
        assert_eq!(
            (&e["stage"], &e["attempt"]),
            (&"nap".into(), &1.into()),
            "{e}"
        );
        assert!(e["timeout_secs"].as_f64() == Some(0.6), "{e}");
    }
}

/// On a terminal, a run shows its live progress (a line per stage, and the run's) redrawn in
/// place instead of heartbeat lines, and ends with the summary as a table; `--quiet` shows
/// neither the progress nor the info lines, and still the table.
#[test]
fn a_terminal_shows_live_progress_and_a_summary_table() {
    let p = pipeline();
    let shown = run_on_a_terminal(&p, &["run", "pipeline.toml"], &[]);
    let esc = '\u{1b}';
    assert!(
        shown.contains("  nap  done") && shown.contains("items ended") && shown.contains("ETA"),
        "progress lines: {shown:?}"
    );
    assert!(
        shown.contains(&format!("{esc}[2K")),
        "redrawn in place (lines cleared): {shown:?}"
    );
    assert!(
        !shown.contains("heartbeat"),
        "no heartbeat lines: {shown:?}"
    );
    let table: Vec<&str> = shown
        .lines()
        .map(|l| {
            let l = l.rsplit('\r').next().unwrap_or(l);
            l.trim_start_matches("\u{1b}[2K")
        })
        .skip_while(|l| !l.starts_with("run 1 finished (exit 0)"))
        .collect();
    assert!(table.len() >= 4, "the summary table: {shown:?}");
    assert!(
        table[1].split_whitespace().eq([
            "stage", "kind", "done", "failed", "skipped", "retries", "timeouts", "p50", "p95"
        ]),
        "{table:?}"
    );
    assert!(
        table[2]
            .split_whitespace()
            .take(3)
            .eq(["nap", "sleep", "12"]),
        "{table:?}"
    );
    assert!(
        table[3]
            .split_whitespace()
            .take(3)
            .eq(["out", "jsonl", "12"]),
        "{table:?}"
    );

    let p = pipeline();
    let quiet = run_on_a_terminal(&p, &["run", "--quiet", "pipeline.toml"], &[]);
    assert!(
        !quiet.contains("items ended"),
        "no progress with --quiet: {quiet:?}"
    );
    assert!(
        !quiet.contains("INFO"),
        "no info lines with --quiet: {quiet:?}"
    );
    assert!(quiet.contains("run 1 finished (exit 0)"), "{quiet:?}");

    // No escape codes with NO_COLOR: heartbeat lines instead of the progress, and the table.
    let p = pipeline();
    let plain = run_on_a_terminal(&p, &["run", "pipeline.toml"], &[("NO_COLOR", "1")]);
    assert!(!plain.contains(esc), "{plain:?}");
    assert!(
        plain.contains("heartbeat") && plain.contains("run 1 finished (exit 0)"),
        "{plain:?}"
    );
}
