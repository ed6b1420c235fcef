//! Orderly stops: SIGTERM drains within `shutdown_grace` and exits 75, a second signal stops at
//! once, `max_run_time` stops the run by itself; in every case progress is saved, interrupted
//! items go back to pending without using an attempt, and the next `run` resumes to the end.

mod util;

use std::thread;
use std::time::{Duration, Instant};

use util::{keys, Pipeline, Status};

/// Interrupted items are neither failed nor left in flight.
fn assert_interrupted_cleanly(status: &Status, total: u64) {
    assert_eq!(status.count("failed"), 0, "{:?}", status.counts);
    assert_eq!(status.count("in_flight"), 0, "{:?}", status.counts);
    assert_eq!(
        status.count("pending") + status.count("done"),
        total,
        "{:?}",
        status.counts
    );
}

#[test]
fn sigterm_drains_within_grace_and_the_next_run_resumes() {
    // `attempts = 1`: if an interrupted item used up an attempt, the resumed run would fail it.
    let p = Pipeline::new(
        r#"
        [pipeline]
        name = "sigterm"
        shutdown_grace = "1s"
        heartbeat = "200ms"

        [[stage]]
        name = "src"
        kind = "generate"
        count = 40

        [[stage]]
        name = "nap"
        kind = "sleep"
        duration = "2s"
        timeout = "10s"
        concurrency = 20
        retry = { attempts = 1 }

        [[stage]]
        name = "out"
        kind = "jsonl"
        path = "out.jsonl"
        "#,
    );
    let mut running = p.cmd("run").spawn();
    // Started = the first heartbeat; on a slow machine give up waiting and signal anyway.
    running.wait_for_stderr("heartbeat", Duration::from_millis(1500));
    assert!(!running.has_exited(), "{}", running.stderr_so_far());
    let signalled = Instant::now();
    running.signal(libc::SIGTERM);
    let out = running.wait();
    let after_signal = signalled.elapsed();

    out.assert_code(75);
    // Grace is 1 s; the rest is slack for a loaded 2-CPU machine, not a latency target.
    assert!(
        after_signal < Duration::from_secs(10),
        "exit took {after_signal:?} after SIGTERM with a 1s grace\n{out}"
    );
    out.assert_summary_last();
    assert_interrupted_cleanly(&p.status(), 40);

    let out = p.run();
    out.assert_code(0);
    assert_eq!(p.sink("out.jsonl").unique_keys(), keys(40), "{out}");
    assert_eq!(p.status().count("done"), 40);
}

/// 16 items through 8 places of a 30 s sleep, with a 60 s grace: a drain that would take long,
/// so that a stop at once shows.
fn long_naps(name: &str) -> Pipeline {
    Pipeline::new(&format!(
        r#"
        [pipeline]
        name = "{name}"
        shutdown_grace = "60s"
        heartbeat = "200ms"

        [[stage]]
        name = "src"
        kind = "generate"
        count = 16

        [[stage]]
        name = "nap"
        kind = "sleep"
        duration = "30s"
        timeout = "60s"
        concurrency = 8

        [[stage]]
        name = "out"
        kind = "jsonl"
        path = "out.jsonl"
        "#
    ))
}

#[test]
fn a_second_signal_stops_at_once() {
    let p = long_naps("double-sigint");
    let mut running = p.cmd("run").spawn();
    running.wait_for_stderr("heartbeat", Duration::from_millis(1500));
    running.signal(libc::SIGINT);
    second_signal_stops_at_once(&p, running, libc::SIGINT);
}

/// `running` drains after a first stop signal: still running 300 ms later; `second` then stops
/// it at once (exit 75, the 16 items interrupted cleanly), not after the 60 s grace.
fn second_signal_stops_at_once(p: &Pipeline, mut running: util::Running, second: i32) {
    thread::sleep(Duration::from_millis(300));
    assert!(
        !running.has_exited(),
        "after one signal in-flight items get their grace\n{}",
        running.stderr_so_far()
    );
    let signalled = Instant::now();
    running.signal(second);
    let out = running.wait();
    let after_signal = signalled.elapsed();

    out.assert_code(75);
    assert!(
        after_signal < Duration::from_secs(10),
        "exit took {after_signal:?} after the second stop signal\n{out}"
    );
    out.assert_summary_last();
    assert_interrupted_cleanly(&p.status(), 16);
}

/// `max_run_time` stops the run by itself with exit 75; run again (as a scheduler would) until
/// it finishes. Uses `--log-format json`: every stderr line is one JSON event and the last one
/// is the summary.
#[test]
fn max_run_time_stops_and_runs_resume_to_the_end() {
    let p = Pipeline::new(
        r#"
        [pipeline]
        name = "deadline"
        max_run_time = "1s"
        heartbeat = "200ms"

        # Every stage's worst case fits in `max_run_time`, so `run` has no config warnings to
        # print and stderr holds log events only.
        [defaults]
        timeout = "900ms"
        retry = { attempts = 1 }

        [[stage]]
        name = "src"
        kind = "generate"
        count = 24

        [[stage]]
        name = "nap"
        kind = "sleep"
        duration = "400ms"
        concurrency = 4

        [[stage]]
        name = "out"
        kind = "jsonl"
        path = "out.jsonl"
        "#,
    );
    let mut codes = Vec::new();
    let mut done_before = 0;
    for _ in 0..10 {
        let out = p.cmd("run").arg("--log-format").arg("json").output();
        for (i, line) in out.stderr_lines().enumerate() {
            if !line.trim().is_empty() {
                assert!(
                    serde_json::from_str::<serde_json::Value>(line).is_ok(),
                    "stderr line {} is not a JSON event: {line:?}\n{out}",
                    i + 1
                );
            }
        }
        let last = out
            .stderr_lines()
            .rfind(|l| !l.trim().is_empty())
            .unwrap_or_default();
        assert!(
            last.contains("summary"),
            "the last event must be the summary, got {last:?}\n{out}"
        );
        let code = out.code;
        assert!(
            code == Some(75) || code == Some(0),
            "each run ends 75 (deadline) or 0 (finished)\n{out}"
        );
        assert!(
            out.elapsed < Duration::from_secs(15),
            "max_run_time = 1s should stop the run in seconds\n{out}"
        );
        let status = p.status();
        let done = status.count("done");
        assert!(done > done_before, "every run makes progress\n{out}");
        done_before = done;
        codes.push(code);
        if code == Some(0) {
            break;
        }
        assert_interrupted_cleanly(&status, 24);
    }
    assert_eq!(
        codes.first(),
        Some(&Some(75)),
        "the first run hits max_run_time"
    );
    assert_eq!(
        codes.last(),
        Some(&Some(0)),
        "runs {codes:?} never finished"
    );
    assert_eq!(p.sink("out.jsonl").unique_keys(), keys(24));
    assert_eq!(p.status().count("done"), 24);
}

/// `interrupted_exit_code = 0`: a run stopped by `max_run_time` exits 0 with its progress
/// saved, and still says it was interrupted (log, summary file); a SIGTERM too. The next run
/// resumes. Codes that mean other outcomes are refused.
#[test]
fn interrupted_exit_code_lets_an_interrupted_run_exit_0_and_still_say_so() {
    let toml = |code: &str, max_run_time: &str| {
        format!(
            r#"
            [pipeline]
            name = "cron"
            {max_run_time}
            interrupted_exit_code = {code}

            [[stage]]
            name = "src"
            kind = "generate"
            count = 40

            [[stage]]
            name = "nap"
            kind = "sleep"
            duration = "200ms"
            concurrency = 2

            [[stage]]
            name = "out"
            kind = "jsonl"
            path = "out.jsonl"
            "#
        )
    };
    let p = Pipeline::new(&toml("0", r#"max_run_time = "1s""#));
    let out = p.run();
    out.assert_code(0);
    out.assert_stderr_contains(r#"outcome="interrupted" exit_code=0"#);
    let summary = p.summary("cron");
    assert_eq!(summary["outcome"], "interrupted", "{summary}");
    assert_eq!(summary["exit_code"], 0, "{summary}");
    let done = p.status().count("done");
    assert!(done > 0 && done < 40, "{done} done after the first run");
    let plan = p.cmd("plan").output();
    assert!(plan.stdout.contains("interrupted_exit_code"), "{plan}");

    let p = Pipeline::new(&toml("0", ""));
    let running = p.cmd("run").spawn();
    std::thread::sleep(Duration::from_millis(1500));
    running.signal(libc::SIGTERM);
    let out = running.wait();
    out.assert_code(0);
    out.assert_stderr_contains(r#"outcome="interrupted""#);
    p.run().assert_code(0);
    assert_eq!(
        p.status().count("done"),
        40,
        "the next run resumed to the end"
    );

    for bad in ["1", "3", "126", "-1", "\"0\""] {
        let out = Pipeline::new(&toml(bad, "")).validate();
        out.assert_code(2);
        out.assert_stderr_contains("interrupted_exit_code");
    }
}

/// Blocking calls still running at the end of the grace period are cut off, not counted as
/// stuck: the run is interrupted (75), not wedged (3).
#[test]
fn sigterm_with_stuck_blocking_calls_is_an_interruption_not_a_wedge() {
    let p = Pipeline::new(
        r#"
        [pipeline]
        name = "stuck-at-shutdown"
        shutdown_grace = "1s"
        heartbeat = "200ms"

        [[stage]]
        name = "src"
        kind = "generate"
        count = 10

        [[stage]]
        name = "hang"
        kind = "fault"
        hang_rate = 1.0
        blocking = true
        concurrency = 2
        timeout = "60s"
        "#,
    );
    let mut running = p.cmd("run").spawn();
    running.wait_for_stderr("heartbeat", Duration::from_secs(10));
    running.signal(libc::SIGTERM);
    let out = running.wait();
    out.assert_code(75);
    assert!(!out.stderr.contains("wedged"), "{out}");
    let status = p.status();
    assert_eq!(status.count("pending"), 10, "{:?}", status.counts);
}

#[test]
fn a_second_runner_on_the_same_store_is_refused() {
    let p = Pipeline::new(
        r#"
        [pipeline]
        name = "overlap"
        heartbeat = "200ms"
        shutdown_grace = "1s"

        [[stage]]
        name = "src"
        kind = "generate"
        count = 10

        [[stage]]
        name = "nap"
        kind = "sleep"
        duration = "3s"
        timeout = "10s"
        concurrency = 10
        "#,
    );
    let mut first = p.cmd("run").spawn();
    assert!(
        first.wait_for_stderr("heartbeat", Duration::from_secs(10)),
        "{}",
        first.stderr_so_far()
    );
    let second = p.run();
    second
        .assert_code(2)
        .assert_stderr_contains("in use by another `stagewise run`");
    assert!(!first.has_exited(), "the first runner is not disturbed");
    first.signal(libc::SIGTERM);
    first.wait().assert_code(75);
    // Once the first has stopped, the store is free again.
    p.run().assert_code(0);
}

/// SIGHUP (a closing terminal or ssh session) drains like SIGTERM, and a second stop signal of
/// another kind cancels at once.
#[test]
fn sighup_drains_and_a_second_signal_of_any_kind_stops_at_once() {
    let p = long_naps("sighup");
    let mut running = p.cmd("run").spawn();
    running.wait_for_stderr("heartbeat", Duration::from_millis(1500));
    running.signal(libc::SIGHUP);
    assert!(
        running.wait_for_stderr("received SIGHUP", Duration::from_secs(10)),
        "{}",
        running.stderr_so_far()
    );
    second_signal_stops_at_once(&p, running, libc::SIGTERM);
}

/// SIGUSR1 and SIGUSR2 ask for a status dump — a heartbeat and every attempt in flight — and
/// the run goes on to finish normally.
#[test]
fn sigusr1_and_sigusr2_dump_the_status_and_the_run_goes_on() {
    let p = Pipeline::new(
        r#"
        [pipeline]
        name = "sigusr"
        heartbeat = "60s"

        [[stage]]
        name = "src"
        kind = "generate"
        count = 6

        [[stage]]
        name = "nap"
        kind = "sleep"
        duration = "2s"
        concurrency = 3

        [[stage]]
        name = "out"
        kind = "jsonl"
        path = "out.jsonl"
        "#,
    );
    let mut running = p.cmd("run").spawn();
    assert!(
        running.wait_for_stderr("taking a new batch", Duration::from_secs(10)),
        "{}",
        running.stderr_so_far()
    );
    thread::sleep(Duration::from_millis(500));
    running.signal(libc::SIGUSR1);
    assert!(
        running.wait_for_stderr("in flight", Duration::from_secs(10)),
        "no status dump after SIGUSR1\n{}",
        running.stderr_so_far()
    );
    running.signal(libc::SIGUSR2);
    let out = running.wait();
    out.assert_code(0);
    let dumps = out
        .stderr_lines()
        .filter(|l| l.contains("status requested by signal"))
        .count();
    assert_eq!(dumps, 2, "one dump per signal\n{out}");
    let in_flight = out
        .stderr_lines()
        .find(|l| l.contains("in flight") && l.contains("stage=nap"))
        .unwrap_or_else(|| panic!("no in-flight line for `nap`\n{out}"));
    assert!(in_flight.contains("in_flight=3"), "{in_flight}");
    assert_eq!(p.status().count("done"), 6);
}

/// A checkpoint store that does not answer (its SQLite file locked by another process) cannot
/// hold a stopped run past `shutdown_grace` and a second: the commit it does not take fails, the
/// run exits 3 naming the store, and what was committed before stays.
#[test]
fn a_locked_store_cannot_hold_the_shutdown_past_the_grace() {
    let p = Pipeline::new(
        r#"
        [pipeline]
        name = "locked-store"
        shutdown_grace = "1s"
        heartbeat = "200ms"

        [checkpoint]
        store = "sqlite:state.db"

        [[stage]]
        name = "src"
        kind = "generate"
        count = 400

        [[stage]]
        name = "nap"
        kind = "sleep"
        duration = "50ms"
        concurrency = 8

        [[stage]]
        name = "out"
        kind = "jsonl"
        path = "out.jsonl"
        "#,
    );
    let mut running = p.cmd("run").spawn();
    assert!(
        running.wait_for_stderr("heartbeat", Duration::from_secs(10)),
        "{}",
        running.stderr_so_far()
    );
    // Another process takes the store's write lock and keeps it.
    let db = rusqlite::Connection::open(p.dir.join("state.db")).expect("open the store");
    db.busy_timeout(Duration::from_secs(10))
        .expect("busy timeout");
    db.execute_batch("BEGIN IMMEDIATE").expect("lock the store");
    let signalled = Instant::now();
    running.signal(libc::SIGTERM);
    let out = running.wait();
    let after_signal = signalled.elapsed();
    db.execute_batch("ROLLBACK").expect("unlock");
    out.assert_code(3);
    out.assert_stderr_contains("state.db did not answer before the shutdown deadline");
    // The deadline is 1 s of grace and 1 s more, so about 2 s; the bound leaves a second for a
    // loaded machine. The SQLite busy timeout alone, which bounded this before, is 10 s.
    assert!(
        after_signal < Duration::from_secs(3),
        "exit took {after_signal:?} after SIGTERM with a 1s grace\n{out}"
    );
    // What was committed is kept, and the next run finishes the batch.
    let out = p.run();
    out.assert_code(0);
    assert_eq!(p.status().count("done"), 400, "{out}");
}

/// `run --fresh` on an unfinished run says how many items it leaves behind; at a terminal it
/// asks for `--yes` first (exit 2, nothing taken).
#[test]
fn fresh_on_an_unfinished_run_says_what_it_leaves_and_asks_at_a_terminal() {
    let p = Pipeline::new(
        r#"
        [pipeline]
        name = "fresh"
        max_run_time = "1s"

        [[stage]]
        name = "src"
        kind = "generate"
        count = 40

        [[stage]]
        name = "nap"
        kind = "sleep"
        duration = "200ms"
        concurrency = 2
        "#,
    );
    p.run().assert_code(75);
    let left = 40 - p.status().count("done");
    assert!(left > 0);
    // At a terminal (`script`, of util-linux), without `--yes`: refused, the run kept.
    let at_a_terminal = |args: &str| {
        std::process::Command::new("script")
            .current_dir(p.dir.path())
            .args([
                "--quiet",
                "--return",
                "--command",
                &format!("'{}' run --fresh {args} pipeline.toml", util::bin()),
                "/dev/null",
            ])
            .env("NO_COLOR", "1")
            .output()
            .expect("script runs")
    };
    let asked = at_a_terminal("");
    let text = String::from_utf8_lossy(&asked.stdout);
    assert_eq!(asked.status.code(), Some(2), "{text}");
    assert!(
        text.contains(&format!("{left} of its items are not done yet")) && text.contains("--yes"),
        "{text}"
    );
    assert_eq!(p.status().count("done"), 40 - left, "nothing changed");
    // With `--yes`: a new batch, and said.
    let agreed = at_a_terminal("--yes");
    let text = String::from_utf8_lossy(&agreed.stdout);
    assert_eq!(agreed.status.code(), Some(75), "{text}");
    assert!(text.contains("are left behind"), "{text}");
    let left = 40 - p.status().count("done");
    // Not at a terminal (a scheduler): done, and said.
    let out = p.cmd("run").arg("--fresh").output();
    out.assert_code(75);
    out.assert_stderr_contains(&format!("left={left}"));
    out.assert_stderr_contains("items not done yet are left behind");
}

/// `status` says whether the latest run's process is alive, died, or exited (with its code,
/// outcome and reason).
#[test]
fn status_says_whether_the_process_is_alive_died_or_exited() {
    let p = Pipeline::new(
        r#"
        [pipeline]
        name = "alive"

        [[stage]]
        name = "src"
        kind = "generate"
        count = 30

        [[stage]]
        name = "nap"
        kind = "sleep"
        duration = "200ms"
        concurrency = 2

        [[stage]]
        name = "some-fail"
        kind = "fault"
        permanent_rate = 0.3
        "#,
    );
    let running = p.cmd("run").spawn();
    assert!(
        util::wait_until(Duration::from_secs(30), || running
            .stderr_so_far()
            .contains("run started")),
        "{}",
        running.stderr_so_far()
    );
    let status = p.status();
    assert_eq!(status.raw["run"]["process"], "alive", "{}", status.raw);
    running.signal(libc::SIGKILL);
    let _ = running.wait();
    let status = p.status();
    assert_eq!(status.raw["run"]["process"], "died", "{}", status.raw);
    assert!(status.raw["run"]["exit_code"].is_null(), "{}", status.raw);
    let text = p.cmd("status").output();
    assert!(
        text.stdout.contains("process: died without a summary"),
        "{text}"
    );
    p.run().assert_code(1);
    let status = p.status();
    assert_eq!(status.raw["run"]["process"], "exited", "{}", status.raw);
    assert_eq!(status.raw["run"]["exit_code"], 1, "{}", status.raw);
    assert_eq!(
        status.raw["run"]["outcome"], "finished_with_failures",
        "{}",
        status.raw
    );
    let text = p.cmd("status").output();
    assert!(
        text.stdout
            .contains("process: exited 1 (finished_with_failures)"),
        "{text}"
    );
}

/// `status --limit N` lists at most N failed items and says how many more there are (the list
/// used to stop at 1,000 without a word).
#[test]
fn status_lists_failures_up_to_its_limit_and_says_how_many_more() {
    let p = Pipeline::new(
        r#"
        [pipeline]
        name = "limit"

        [[stage]]
        name = "src"
        kind = "generate"
        count = 12

        [[stage]]
        name = "broken"
        kind = "fault"
        permanent_rate = 1.0
        "#,
    );
    p.run().assert_code(1);
    let out = p.cmd("status").arg("--limit").arg("5").output();
    out.assert_code(0);
    let listed = out
        .stdout
        .lines()
        .filter(|l| l.contains(" at broken after "))
        .count();
    assert_eq!(listed, 5, "{out}");
    assert!(out.stdout.contains("and 7 more failed item(s)"), "{out}");
    let json = p
        .cmd("status")
        .arg("--json")
        .arg("--limit")
        .arg("3")
        .output();
    let json: serde_json::Value = serde_json::from_str(&json.stdout).expect("JSON");
    assert_eq!(json["failed"].as_array().map(Vec::len), Some(3), "{json}");
    assert_eq!(json["failed_more"], 9, "{json}");
    let all = p.status();
    assert_eq!(all.raw["failed_more"], 0, "{}", all.raw);
}

/// `status` reports an exit only from the last process's own summary: not an older process's,
/// and not from a FIFO put at the summary's path (which it does not wait on); names it prints
/// are escaped.
#[test]
fn status_takes_an_exit_only_from_the_last_process_s_own_summary() {
    let p = Pipeline::new(
        "[pipeline]\nname = \"x\\u001b[31m\"\n\n[[stage]]\nname = \"src\"\nkind = \"generate\"\ncount = 3\n\n[[stage]]\nname = \"n\\u001b]0;T\\u0007ap\"\nkind = \"sleep\"\nduration = \"1ms\"\n",
    );
    p.run().assert_code(0);
    let text = p.cmd("status").output();
    assert!(
        text.stdout.contains("process: exited 0 (finished)"),
        "{text}"
    );
    assert!(
        !text.stdout.contains('\u{1b}') && !text.stdout.contains('\u{7}'),
        "{text}"
    );
    // Another process of the same name ran since (as a process that stopped before its run
    // would): its flight record is the last one; the summary is not its own.
    let summary = p.dir.join(".stagewise/x\u{1b}[31m.summary.json");
    let mut value: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&summary).expect("summary")).expect("JSON");
    value["pid"] = serde_json::json!(1);
    std::fs::write(&summary, value.to_string()).expect("write");
    let status = p.status();
    assert_eq!(status.raw["run"]["process"], "exited", "{}", status.raw);
    assert!(status.raw["run"]["exit_code"].is_null(), "{}", status.raw);
    // A FIFO at the summary's path: `status` does not wait on it.
    std::fs::remove_file(&summary).expect("rm");
    let made = std::process::Command::new("mkfifo")
        .arg(&summary)
        .status()
        .expect("mkfifo");
    assert!(made.success());
    let out = p.cmd("status").timeout(Duration::from_secs(20)).output();
    out.assert_code(0);
}

/// `status --run N` shows that run, not the latest; a run that is not there is an error.
#[test]
fn status_shows_the_run_asked_for() {
    let p = Pipeline::new(
        r#"
        [pipeline]
        name = "runs"

        [[stage]]
        name = "src"
        kind = "generate"
        count = 4

        [[stage]]
        name = "broken"
        kind = "fault"
        permanent_rate = 1.0
        "#,
    );
    p.run().assert_code(1);
    p.cmd("run").arg("--fresh").output().assert_code(1);
    let latest = p.status();
    assert_eq!(latest.raw["run"]["id"], 2, "{}", latest.raw);
    let first = p.cmd("status").arg("--json").arg("--run").arg("1").output();
    first.assert_code(0);
    let first: serde_json::Value = serde_json::from_str(&first.stdout).expect("JSON");
    assert_eq!(first["run"]["id"], 1, "{first}");
    assert_eq!(first["counts"]["failed"], 4, "{first}");
    assert!(first["run"].get("process").is_none(), "{first}");
    let missing = p.cmd("status").arg("--run").arg("9").output();
    missing.assert_code(2);
    missing.assert_stderr_contains("has no run 9 with items");
}
