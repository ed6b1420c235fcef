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
    let info = |out: &util::Output| out.stderr_lines().any(|l| l.contains(" INFO "));
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
    let raw = |args: &[&str], env: &[(&str, &str)]| {
        let p = pipeline();
        let mut command = std::process::Command::new(util::bin());
        command
            .current_dir(p.dir.path())
            .args(args)
            .env_remove("NO_COLOR")
            .env_remove("STAGEWISE_LOG")
            .env_remove("RUST_LOG");
        for (k, v) in env {
            command.env(k, v);
        }
        let out = command.output().expect("runs");
        assert!(out.status.success(), "{out:?}");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let piped = raw(&["run", "pipeline.toml"], &[]);
    assert!(
        piped.contains("summary") && !piped.contains(esc),
        "{piped:?}"
    );
    let always = raw(
        &["run", "pipeline.toml", "--color", "always"],
        &[("NO_COLOR", "1")],
    );
    assert!(
        always.contains(&format!("{esc}[32m INFO{esc}[0m")),
        "{always:?}"
    );
}
