//! A run never goes silent: a log pipe that is closed, full or never read cannot block, kill or
//! change the run; a runtime frozen by a stage, or a drain that outlives its grace, is ended by
//! the watchdog with what was in flight; and after any death the next run and `status` say
//! what the dead process was doing.

mod util;

use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;
use util::Pipeline;

/// The message of the first event after a process that ended without a summary.
const PREVIOUS: &str = "the previous process ended without a summary";

/// A quick pipeline that logs a lot under `STAGEWISE_LOG=debug`: `count` items, half of them
/// retried once.
fn chatty(name: &str, count: usize) -> Pipeline {
    Pipeline::new(&format!(
        r#"
        [pipeline]
        name = "{name}"
        heartbeat = "50ms"
        shutdown_grace = "1s"

        [[stage]]
        name = "src"
        kind = "generate"
        count = {count}

        [[stage]]
        name = "flaky"
        kind = "fault"
        error_rate = 0.5
        seed = 7
        concurrency = 8
        retry = {{ attempts = 2, initial = "1ms" }}

        [[stage]]
        name = "nap"
        kind = "sleep"
        duration = "5ms"
        concurrency = 8

        [[stage]]
        name = "out"
        kind = "jsonl"
        path = "out.jsonl"
        "#
    ))
}

/// `generate` `count` items → `sleep` `duration` at `concurrency` → a `jsonl` sink, with
/// `settings` (more `[pipeline]` keys, or whole sections) after the pipeline's name.
fn naps(name: &str, settings: &str, count: u32, duration: &str, concurrency: u32) -> Pipeline {
    Pipeline::through(
        name,
        count as usize,
        &format!(
            "[[stage]]\nname = \"nap\"\nkind = \"sleep\"\nduration = \"{duration}\"\n\
             concurrency = {concurrency}"
        ),
        settings,
    )
}

/// Waits for `child` at most `within`; its exit code, or a panic naming `what`.
fn wait_at_most(child: &mut std::process::Child, within: Duration, what: &str) -> Option<i32> {
    let deadline = Instant::now() + within;
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return status.code();
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{what}: still running after {within:?}, killed");
        }
        thread::sleep(Duration::from_millis(10));
    }
}

/// `run … 2>&1 | head -1`: the reader exits after one line, every later write fails. The run
/// finishes; its exit code (from the shell's pipe status) is its outcome's; the summary says so
/// and counts the events that were lost.
#[test]
fn a_reader_that_exits_after_one_line_loses_lines_not_the_run() {
    let p = chatty("head-one", 200);
    let out = Command::new("bash")
        .args([
            "-c",
            r#""$0" run pipeline.toml 2>&1 | head -1 >/dev/null; echo "exit=${PIPESTATUS[0]}""#,
            util::bin(),
        ])
        .current_dir(p.dir.path())
        .env("STAGEWISE_LOG", "debug")
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .output()
        .expect("run bash");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let summary = p.summary("head-one");
    let code = summary["exit_code"].as_i64().expect("exit_code");
    assert!(
        summary["outcome"] == "finished" || summary["outcome"] == "finished_with_failures",
        "{summary}"
    );
    assert_eq!(stdout.trim(), format!("exit={code}"), "{summary}");
    let dropped = summary["log_events_dropped"]
        .as_u64()
        .expect("log_events_dropped is a number");
    assert!(dropped > 0, "nothing counted as dropped: {summary}");
    assert_eq!(p.status().count("pending"), 0);
}

/// `2>&-`: standard error closed before the process starts. The run finishes normally.
#[test]
fn a_closed_stderr_changes_nothing() {
    let p = chatty("closed", 100);
    let out = Command::new("bash")
        .args([
            "-c",
            r#""$0" run pipeline.toml 2>&-; echo "exit=$?""#,
            util::bin(),
        ])
        .current_dir(p.dir.path())
        .env("STAGEWISE_LOG", "debug")
        .stdin(Stdio::null())
        .output()
        .expect("run bash");
    let summary = p.summary("closed");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(stdout.trim(), format!("exit={}", summary["exit_code"]));
    assert_eq!(p.status().count("pending"), 0);
    assert_eq!(
        p.status().count("done") + p.status().count("failed"),
        100,
        "{summary}"
    );
}

/// A FIFO nobody reads, opened read-write by the test so that the process can open it and
/// fill it; the handle must live as long as the process.
fn unread_fifo(p: &Pipeline) -> std::fs::File {
    let path = p.dir.join("stderr.fifo");
    let made = Command::new("mkfifo")
        .arg(&path)
        .status()
        .expect("run mkfifo");
    assert!(made.success(), "mkfifo failed");
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
        .expect("open the fifo")
}

/// Standard error into a pipe that is never read (a stuck log collector): the run finishes
/// normally anyway.
#[test]
fn an_unread_stderr_pipe_cannot_hold_the_run() {
    // Enough debug lines to fill the pipe many times over.
    let p = chatty("fifo-finish", 3000);
    let fifo = unread_fifo(&p);
    let mut child = Command::new(util::bin())
        .args(["run", "pipeline.toml"])
        .current_dir(p.dir.path())
        .env("STAGEWISE_LOG", "debug")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(fifo.try_clone().expect("clone the fifo"))
        .spawn()
        .expect("spawn stagewise");
    let code = wait_at_most(
        &mut child,
        Duration::from_secs(60),
        "a run into an unread pipe",
    );
    let summary = p.summary("fifo-finish");
    assert_eq!(code, summary["exit_code"].as_i64().map(|c| c as i32));
    assert!(
        summary["log_events_dropped"].as_u64() > Some(0),
        "{summary}"
    );
    assert_eq!(p.status().count("pending"), 0);
    drop(fifo);
}

/// A long run under debug logging into a pipe that is never read, then SIGTERM: it stops and
/// exits 75 within `shutdown_grace` + 2 s.
#[test]
fn sigterm_is_heard_with_stderr_stuck() {
    let p = Pipeline::new(
        r#"
        [pipeline]
        name = "fifo-term"
        heartbeat = "50ms"
        shutdown_grace = "1s"

        [[stage]]
        name = "src"
        kind = "generate"
        count = 1000000

        [[stage]]
        name = "flaky"
        kind = "fault"
        error_rate = 0.5
        seed = 3
        concurrency = 16
        retry = { attempts = 5, initial = "1ms" }

        [[stage]]
        name = "out"
        kind = "jsonl"
        path = "out.jsonl"
        "#,
    );
    let fifo = unread_fifo(&p);
    let mut child = Command::new(util::bin())
        .args(["run", "pipeline.toml"])
        .current_dir(p.dir.path())
        .env("STAGEWISE_LOG", "debug")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(fifo.try_clone().expect("clone the fifo"))
        .spawn()
        .expect("spawn stagewise");
    thread::sleep(Duration::from_secs(4));
    assert!(child.try_wait().expect("try_wait").is_none(), "ended early");
    let signalled = Instant::now();
    util::send_signal(child.id(), libc::SIGTERM);
    let code = wait_at_most(&mut child, Duration::from_secs(60), "after SIGTERM");
    let took = signalled.elapsed();
    assert_eq!(code, Some(75));
    assert!(
        took < Duration::from_secs(3),
        "exit took {took:?} after SIGTERM with a 1s grace"
    );
    let summary = p.summary("fifo-term");
    assert_eq!(summary["outcome"], "interrupted", "{summary}");
    drop(fifo);
}

/// `fault` at `freeze_rate = 1.0`: every attempt blocks its runtime thread, and with more of
/// them than there are runtime threads the runtime is frozen solid.
fn frozen(name: &str, watchdog: &str) -> Pipeline {
    Pipeline::new(&format!(
        r#"
        [pipeline]
        name = "{name}"
        heartbeat = "200ms"
        shutdown_grace = "1s"
        watchdog = "{watchdog}"

        [[stage]]
        name = "src"
        kind = "generate"
        count = 20

        [[stage]]
        name = "frz"
        kind = "fault"
        freeze_rate = 1.0
        concurrency = 8

        [[stage]]
        name = "out"
        kind = "jsonl"
        path = "out.jsonl"
        "#
    ))
}

/// The same pipeline with the freeze gone, for the run after.
fn thawed(p: &Pipeline) {
    p.dir.write(
        "pipeline.toml",
        p.toml().replace("freeze_rate = 1.0", "freeze_rate = 0.0"),
    );
}

/// Frozen runtime, SIGTERM: the watchdog ends the process (exit 3) within the grace and its
/// margin, naming the stage; the next run says what was in flight and finishes the batch.
#[test]
fn sigterm_to_a_frozen_runtime_ends_it_through_the_watchdog() {
    let p = frozen("frozen-term", "60s");
    let mut running = p.cmd("run").spawn();
    assert!(
        running.wait_for_stderr("run started", Duration::from_secs(20)),
        "{}",
        running.stderr_so_far()
    );
    thread::sleep(Duration::from_millis(500));
    let signalled = Instant::now();
    running.signal(libc::SIGTERM);
    let out = running.wait();
    let took = signalled.elapsed();
    out.assert_code(3);
    assert!(
        took < Duration::from_secs(4),
        "exit took {took:?} after SIGTERM with a 1s grace\n{out}"
    );
    out.assert_stderr_contains("watchdog: the run did not stop within `shutdown_grace` (1s)");
    out.assert_stderr_contains("stage `frz`");

    thawed(&p);
    let out = p.run();
    out.assert_code(0);
    let previous = out
        .stderr_lines()
        .find(|l| l.contains(PREVIOUS))
        .unwrap_or_else(|| panic!("the next run did not report the dead process\n{out}"));
    assert!(previous.contains("stage `frz`"), "{previous}");
    assert!(previous.contains("watchdog"), "{previous}");
    assert_eq!(p.status().count("done"), 20);
}

/// Frozen runtime, no signal: `watchdog = "3s"` ends the run by itself, exit 3, naming the
/// stage and the items; `status` and the next run report them.
#[test]
fn the_watchdog_ends_a_frozen_run_by_itself() {
    let p = frozen("frozen-alone", "3s");
    let out = p.cmd("run").timeout(Duration::from_secs(60)).output();
    out.assert_code(3);
    out.assert_stderr_contains("watchdog: the runtime has not answered for");
    out.assert_stderr_contains("stage `frz`");
    assert!(out.elapsed < Duration::from_secs(30), "{out}");

    let status = p.status();
    let previous = &status.raw["previous_process"];
    assert!(previous["pid"].is_u64(), "{}", status.raw);
    let in_flight = previous["in_flight"].as_array().expect("in_flight list");
    assert!(!in_flight.is_empty(), "{previous}");
    assert!(in_flight.iter().all(|a| a["stage"] == "frz"), "{previous}");
    // Ages to the watchdog's end, not to the runtime's last tick.
    assert!(
        in_flight
            .iter()
            .all(|a| a["age_secs"].as_f64().is_some_and(|s| s >= 2.5)),
        "{previous}"
    );
    let keys: Vec<String> = in_flight
        .iter()
        .map(|a| a["key"].as_str().expect("key").to_owned())
        .collect();

    thawed(&p);
    let out = p.run();
    out.assert_code(0);
    let first_runner_line = out
        .stderr_lines()
        .position(|l| l.contains(PREVIOUS))
        .unwrap_or_else(|| panic!("no report of the dead process\n{out}"));
    let batch = out
        .stderr_lines()
        .position(|l| l.contains("run started"))
        .expect("run started");
    assert!(first_runner_line < batch, "{out}");
    let line = out.stderr_lines().nth(first_runner_line).expect("line");
    for key in &keys {
        assert!(line.contains(&format!("`{key}`")), "{key} not in {line}");
    }
    assert_eq!(p.status().count("done"), 20);
    // Reported once: the run that said it ended normally.
    assert!(p.status().raw.get("previous_process").is_none());
}

/// `kill -9` mid-run: `status --json` names the dead pid and what it had in flight; the next
/// run logs it first and finishes the batch.
#[test]
fn after_kill_9_status_and_the_next_run_say_what_was_in_flight() {
    let p = naps("killed", "heartbeat = \"100ms\"", 6, "2s", 3);
    let mut running = p.cmd("run").spawn();
    assert!(
        running.wait_for_stderr("run started", Duration::from_secs(20)),
        "{}",
        running.stderr_so_far()
    );
    thread::sleep(Duration::from_millis(700));
    let pid = running.pid();
    running.signal(libc::SIGKILL);
    let killed = running.wait();
    assert_eq!(killed.code, None, "{killed}");

    let status = p.status();
    let previous = &status.raw["previous_process"];
    assert_eq!(
        previous["pid"].as_u64(),
        Some(u64::from(pid)),
        "{}",
        status.raw
    );
    let in_flight = previous["in_flight"].as_array().expect("in_flight list");
    assert_eq!(in_flight.len(), 3, "{previous}");
    for a in in_flight {
        assert_eq!(a["stage"], "nap", "{a}");
        assert_eq!(a["attempt"], 1, "{a}");
        assert!(a["age_secs"].as_f64().is_some_and(|s| s > 0.3), "{a}");
    }
    assert!(
        previous["last_events"].as_array().is_some_and(|e| e
            .iter()
            .any(|l| l.as_str().is_some_and(|l| l.contains("run started")))),
        "{previous}"
    );
    let text = p.cmd("status").output();
    text.assert_code(0);
    assert!(
        text.stdout.contains(&format!("pid {pid}")) && text.stdout.contains("in stage `nap`"),
        "{text}"
    );

    let out = p.run();
    out.assert_code(0);
    let line = out
        .stderr_lines()
        .find(|l| l.contains(PREVIOUS))
        .unwrap_or_else(|| panic!("no report of the dead process\n{out}"));
    assert!(line.contains(&format!("pid={pid}")), "{line}");
    assert!(line.contains("in stage `nap`"), "{line}");
    assert_eq!(p.status().count("done"), 6);
}

/// A run that is still going is not a dead one: `status` shows no previous process while the
/// runner holds the pipeline.
#[test]
fn a_live_run_is_not_reported_as_dead() {
    let p = naps("alive", "heartbeat = \"100ms\"", 4, "2s", 4);
    let mut running = p.cmd("run").spawn();
    assert!(running.wait_for_stderr("heartbeat", Duration::from_secs(20)));
    let status = p.status();
    assert!(
        status.raw.get("previous_process").is_none(),
        "{}",
        status.raw
    );
    running.wait().assert_code(0);
}

/// Every blocking thread of a stage hung: the runtime is free, and heartbeats keep coming.
#[test]
fn heartbeats_keep_coming_while_every_blocking_thread_is_hung() {
    let p = Pipeline::new(
        r#"
        [pipeline]
        name = "hung-pool"
        heartbeat = "100ms"
        shutdown_grace = "1s"

        [[stage]]
        name = "src"
        kind = "generate"
        count = 10

        [[stage]]
        name = "stuck"
        kind = "fault"
        hang_rate = 1.0
        blocking = true
        concurrency = 2
        timeout = "1h"

        [[stage]]
        name = "out"
        kind = "jsonl"
        path = "out.jsonl"
        "#,
    );
    let mut running = p.cmd("run").spawn();
    assert!(running.wait_for_stderr("run started", Duration::from_secs(20)));
    let counted = |r: &util::Running| {
        r.stderr_so_far()
            .lines()
            .filter(|l| l.contains("heartbeat") && l.contains("stuck: in_flight=2"))
            .count()
    };
    thread::sleep(Duration::from_millis(500));
    let before = counted(&running);
    thread::sleep(Duration::from_secs(2));
    let after = counted(&running);
    assert!(
        // 20 expected; half of them is plenty on a loaded machine, and none if the runtime
        // were held.
        after >= before + 5,
        "{before} then {after} heartbeats in 2 s\n{}",
        running.stderr_so_far()
    );
    running.signal(libc::SIGTERM);
    running.wait().assert_code(75);
}

/// A storm of SIGHUP, SIGUSR1, SIGTERM and SIGINT under debug logging, with stderr read: the
/// run always ends within `shutdown_grace` + 2 s of the first stop signal, with 75 (or 0 if it
/// had finished), never needing SIGKILL.
#[test]
fn a_storm_of_signals_always_ends_in_time() {
    let signals = [libc::SIGHUP, libc::SIGUSR1, libc::SIGTERM, libc::SIGINT];
    // A small xorshift: a different but reproducible storm each round.
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    for round in 0..4 {
        let p = chatty(&format!("storm-{round}"), 1_000_000);
        let mut running = p
            .cmd("run")
            .env("STAGEWISE_LOG", "debug")
            .timeout(Duration::from_secs(120))
            .spawn();
        assert!(running.wait_for_stderr("run started", Duration::from_secs(60)));
        thread::sleep(Duration::from_millis(100 + next() % 400));
        let mut first_stop = None;
        for _ in 0..(5 + next() % 30) {
            let signal = signals[(next() % 4) as usize];
            if signal != libc::SIGUSR1 && first_stop.is_none() {
                first_stop = Some(Instant::now());
            }
            running.signal(signal);
            thread::sleep(Duration::from_millis(next() % 20));
        }
        let first_stop = first_stop.unwrap_or_else(|| {
            running.signal(libc::SIGTERM);
            Instant::now()
        });
        let out = running.wait();
        let took = first_stop.elapsed();
        assert!(
            out.code == Some(75) || out.code == Some(0),
            "round {round}: {out}"
        );
        assert!(
            took < Duration::from_secs(3),
            "round {round}: exit took {took:?} after the first stop signal\n{out}"
        );
        out.assert_summary_last();
    }
}

/// A process paused as a whole (SIGSTOP, a suspended machine) longer than `watchdog`, then
/// continued, is not a frozen runtime: the run goes on and finishes.
#[test]
fn a_paused_and_continued_process_is_not_taken_for_frozen() {
    let p = naps(
        "paused",
        "heartbeat = \"100ms\"\nwatchdog = \"1s\"",
        20,
        "200ms",
        2,
    );
    let mut running = p.cmd("run").spawn();
    assert!(running.wait_for_stderr("run started", Duration::from_secs(20)));
    running.signal(libc::SIGSTOP);
    thread::sleep(Duration::from_secs(3));
    running.signal(libc::SIGCONT);
    let out = running.wait();
    out.assert_code(0);
    assert!(!out.stderr.contains("watchdog"), "{out}");
    assert_eq!(p.status().count("done"), 20);
}

/// SIGHUP alone (a closing terminal): a drain like SIGTERM's, logged, exit 75 within
/// `shutdown_grace` + 1 s.
#[test]
fn sighup_alone_drains_and_exits_75_in_time() {
    let p = naps(
        "hup",
        "heartbeat = \"100ms\"\nshutdown_grace = \"1s\"",
        50,
        "10s",
        4,
    );
    let mut running = p.cmd("run").spawn();
    assert!(running.wait_for_stderr("heartbeat", Duration::from_secs(20)));
    let signalled = Instant::now();
    running.signal(libc::SIGHUP);
    let out = running.wait();
    let took = signalled.elapsed();
    out.assert_code(75);
    out.assert_stderr_contains("reason=received SIGHUP");
    out.assert_summary_last();
    // 1 s of grace and 1 s more, with room for a loaded machine.
    assert!(took < Duration::from_secs(3), "exit took {took:?}\n{out}");
    assert_eq!(p.status().count("pending"), 50);
}

/// A pipeline whose PostgreSQL checkpoint store is a server that takes the connection and
/// never says a word.
fn silent_store() -> (std::net::TcpListener, Pipeline) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("address").port();
    let p = Pipeline::new(&format!(
        r#"
        [pipeline]
        name = "early"

        [checkpoint]
        store = "postgres://u:secret@127.0.0.1:{port}/db"

        [[stage]]
        name = "src"
        kind = "generate"
        count = 3

        [[stage]]
        name = "out"
        kind = "jsonl"
        path = "out.jsonl"
        "#
    ));
    (listener, p)
}

/// Signals that arrive before the run is under way (here while the checkpoint store does not
/// answer) are not their default actions, an exit without a word: SIGUSR1 does not end the
/// process, the first SIGTERM is logged and kept for the run, and a second one ends the process
/// at once, logged, exit 75.
#[test]
fn signals_before_the_run_is_under_way_are_held() {
    let (_listener, p) = silent_store();
    let mut running = p.cmd("run").spawn();
    thread::sleep(Duration::from_millis(700));
    running.signal(libc::SIGUSR1);
    thread::sleep(Duration::from_millis(200));
    assert!(!running.has_exited(), "SIGUSR1 ended the process");
    running.signal(libc::SIGTERM);
    assert!(
        running.wait_for_stderr(
            "stop requested while the run starts",
            Duration::from_secs(5)
        ),
        "{}",
        running.stderr_so_far()
    );
    assert!(!running.has_exited(), "SIGTERM ended the process at once");
    let signalled = Instant::now();
    running.signal(libc::SIGINT);
    let out = running.wait();
    out.assert_code(75);
    out.assert_stderr_contains("second stop request before the run started: exiting now");
    assert!(signalled.elapsed() < Duration::from_secs(3), "{out}");
    assert!(!out.stderr.contains("secret"), "{out}");
}

/// A checkpoint store that takes the connection and never answers cannot hold `run` or
/// `status`: the connection gives up after 10 s, exit 2, naming the store without its password.
#[test]
fn a_store_that_never_answers_is_given_up_on() {
    let (_listener, p) = silent_store();
    for command in ["run", "status"] {
        let out = p.cmd(command).timeout(Duration::from_secs(60)).output();
        out.assert_code(2);
        out.assert_stderr_contains("the server did not answer within 10s");
        assert!(!out.stderr.contains("secret"), "{out}");
        assert!(out.elapsed < Duration::from_secs(30), "{out}");
    }
}

/// Keys are untrusted: whatever they hold, a log line is one line and nothing in it steers the
/// terminal it is shown on (escape sequences, carriage returns, C1 codes, bidi overrides), in
/// text and in JSON.
#[test]
fn untrusted_keys_cannot_forge_or_steer_log_lines() {
    let keys = [
        "esc\u{1b}[31mRED\u{1b}[0m",
        "nl\nINJECTED FAKE LINE",
        "cr\rOVER",
        "c1\u{9b}31mX",
        "bidi\u{202e}evil",
        "bel\u{7}",
        "ls\u{2028}alm\u{61c}",
    ];
    let steers =
        |c: char| c != '\t' && (c.is_control() || matches!(c, '\u{202e}' | '\u{2028}' | '\u{61c}'));
    let p = Pipeline::new(
        r#"
        [pipeline]
        name = "ctl"

        [[stage]]
        name = "src"
        kind = "jsonl"
        path = "in.jsonl"
        key = "id"

        [[stage]]
        name = "work"
        kind = "fault"
        permanent_rate = 1.0

        [[stage]]
        name = "out"
        kind = "jsonl"
        path = "out.jsonl"
        "#,
    );
    let lines: String = keys
        .iter()
        .map(|k| format!("{}\n", serde_json::json!({ "id": k })))
        .collect();
    p.dir.write("in.jsonl", lines);
    for format in ["pretty", "json"] {
        // Raw bytes, not the test helpers' output, which strips colour codes.
        let out = Command::new(util::bin())
            .args(["run", "--fresh", "--log-format", format, "pipeline.toml"])
            .current_dir(p.dir.path())
            .env_remove("STAGEWISE_LOG")
            .stdin(Stdio::null())
            .output()
            .expect("run stagewise");
        assert_eq!(out.status.code(), Some(1));
        let stderr = String::from_utf8(out.stderr).expect("UTF-8 log");
        for line in stderr.lines() {
            assert!(!line.chars().any(steers), "{format}: {line:?}");
            if format == "json" {
                serde_json::from_str::<Value>(line)
                    .unwrap_or_else(|e| panic!("not JSON ({e}): {line:?}"));
            }
        }
        let failed = stderr.lines().filter(|l| l.contains("item failed")).count();
        assert_eq!(failed, keys.len(), "{stderr}");
        assert!(
            !stderr.lines().any(|l| l.starts_with("INJECTED")),
            "{stderr}"
        );
    }
    // `status`, as text and as JSON (which must stay the same value).
    for json in [false, true] {
        let mut command = p.cmd("status");
        if json {
            command = command.arg("--json");
        }
        let out = command.output();
        out.assert_code(0);
        assert!(
            !out.stdout.chars().any(|c| c != '\n' && steers(c)),
            "{}",
            out.stdout
        );
        if json {
            let status: Value = serde_json::from_str(out.stdout.trim()).expect("JSON");
            let failed: Vec<&str> = status["failed"]
                .as_array()
                .expect("failed")
                .iter()
                .map(|f| f["key"].as_str().expect("key"))
                .collect();
            for key in keys {
                assert!(failed.contains(&key), "{key:?} not in {failed:?}");
            }
        }
    }
}

/// `max_run_time` is kept by the watchdog thread: a frozen runtime cannot hold the run past it
/// (then the drain cannot finish either, and the watchdog ends it at the grace and its margin).
#[test]
fn max_run_time_holds_with_a_frozen_runtime() {
    let p = frozen("frozen-max", "60s");
    p.dir.write(
        "pipeline.toml",
        p.toml().replace(
            "watchdog = \"60s\"",
            "watchdog = \"60s\"\nmax_run_time = \"2s\"",
        ),
    );
    let out = p.cmd("run").timeout(Duration::from_secs(60)).output();
    out.assert_code(3);
    out.assert_stderr_contains("reason=`max_run_time` reached");
    out.assert_stderr_contains("watchdog: the run did not stop within `shutdown_grace` (1s)");
    // 2 s, 1 s of grace and the watchdog's 2 s, with room for a loaded machine.
    assert!(out.elapsed < Duration::from_secs(9), "{out}");
}

/// Two pipeline files of one name on two stores in one folder keep their flight records apart:
/// one's death is not reported for the other.
#[test]
fn flight_records_of_same_named_pipelines_on_two_stores_stay_apart() {
    let p = naps(
        "twin",
        "heartbeat = \"100ms\"\n\n[checkpoint]\nstore = \"sqlite:.stagewise/a.db\"",
        4,
        "1s",
        2,
    );
    p.dir.write(
        "b.toml",
        p.toml().replace(".stagewise/a.db", ".stagewise/b.db"),
    );
    let b = |sub: &str| util::Cmd::new(p.dir.path(), sub, "b.toml");
    p.run().assert_code(0);
    let mut running = b("run").spawn();
    assert!(running.wait_for_stderr("run started", Duration::from_secs(20)));
    thread::sleep(Duration::from_millis(500));
    let pid = running.pid();
    running.signal(libc::SIGKILL);
    running.wait();
    // `a` ended normally: no report of `b`'s death.
    let a = p.cmd("status").arg("--json").output();
    a.assert_code(0);
    assert!(!a.stdout.contains("previous_process"), "{a}");
    let b_status = b("status").arg("--json").output();
    b_status.assert_code(0);
    let raw: Value = serde_json::from_str(b_status.stdout.trim()).expect("JSON");
    assert_eq!(
        raw["previous_process"]["pid"].as_u64(),
        Some(u64::from(pid))
    );
    // And `a` runs again without a word about `b`.
    let out = p.run();
    out.assert_code(0);
    assert!(!out.stderr.contains(PREVIOUS), "{out}");
    assert_eq!(p.status().count("done"), 4);
}

/// A process paused as a whole while it drains: the pause is not held against the drain, and
/// the run ends as it would have (exit 75, with its summary), not by the watchdog.
#[test]
fn a_pause_during_the_drain_is_not_held_against_it() {
    let p = naps(
        "paused-drain",
        "heartbeat = \"100ms\"\nshutdown_grace = \"2s\"\n\n[defaults]\ntimeout = \"20s\"",
        8,
        "6s",
        4,
    );
    let mut running = p.cmd("run").spawn();
    assert!(running.wait_for_stderr("run started", Duration::from_secs(20)));
    thread::sleep(Duration::from_millis(500));
    running.signal(libc::SIGTERM);
    thread::sleep(Duration::from_millis(300));
    running.signal(libc::SIGSTOP);
    thread::sleep(Duration::from_secs(5));
    running.signal(libc::SIGCONT);
    let out = running.wait();
    out.assert_code(75);
    assert!(!out.stderr.contains("watchdog"), "{out}");
    out.assert_summary_last();
}

/// One async attempt freezes one runtime thread while the others go on: the runtime still
/// answers, but the attempt's timeout cannot fire. Once it is `watchdog` past its timeout the
/// run is aborted, naming the stage and the attempt, and ends (exit 3) instead of waiting for it.
#[test]
fn an_attempt_that_freezes_one_runtime_thread_ends_the_run() {
    let p = Pipeline::new(
        r#"
        [pipeline]
        name = "one-frozen"
        heartbeat = "200ms"
        shutdown_grace = "1s"
        watchdog = "2s"

        [[stage]]
        name = "src"
        kind = "generate"
        count = 3

        [[stage]]
        name = "frz"
        kind = "fault"
        freeze_rate = 1.0
        concurrency = 1
        timeout = "1s"

        [[stage]]
        name = "out"
        kind = "jsonl"
        path = "out.jsonl"
        "#,
    );
    let out = p.cmd("run").timeout(Duration::from_secs(60)).output();
    out.assert_code(3);
    out.assert_stderr_contains(
        "stage `frz` blocks the runtime: 1 attempt(s) ran far past its timeout (1s)",
    );
    // 1 s of timeout, 2 s of watchdog, then the drain the frozen attempt cannot finish: 1 s of
    // grace and the watchdog's 2 s; room for a loaded machine.
    assert!(out.elapsed < Duration::from_secs(20), "{out}");
}

/// Processes killed one after another while they start, around the moment each replaces the
/// flight file: every death is still reported. After each kill, `status` names either the
/// process just killed — and then that one's recorded events hold its report on the death
/// before — or, if it was killed before its file took the old one's place, the death before.
#[test]
fn a_process_killed_while_it_starts_keeps_the_report_on_the_one_before() {
    // Each death counts as an attempt of what was in flight: enough attempts for every kill.
    let p = naps(
        "restarts",
        "heartbeat = \"100ms\"\n\n[defaults]\nretry = { attempts = 50 }",
        6,
        "2s",
        3,
    );
    let mut first = p.cmd("run").spawn();
    assert!(first.wait_for_stderr("run started", Duration::from_secs(20)));
    thread::sleep(Duration::from_millis(300));
    let mut dead = first.pid();
    first.signal(libc::SIGKILL);
    first.wait();

    let folder = p.dir.join(".stagewise");
    let temporaries = || {
        std::fs::read_dir(&folder)
            .expect("the store's folder")
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().contains(".flight.new-"))
            .count()
    };
    let mut placed_and_reported = 0;
    for delay_us in [0, 0, 100, 300, 600, 1000, 2000, 4000, 8000, 20_000] {
        let starting = p.cmd("run").env("STAGEWISE_LOG", "error").spawn();
        let pid = starting.pid();
        let temporary = format!(".flight.new-{pid}");
        // Until its file is prepared, or (the moment missed) a moment later than a debug
        // build takes to get there: the invariant holds whenever the kill lands.
        let deadline = Instant::now() + Duration::from_millis(150 + 30 * delay_us / 1000);
        while Instant::now() < deadline {
            let prepared = std::fs::read_dir(&folder).is_ok_and(|d| {
                d.filter_map(|e| e.ok())
                    .any(|e| e.file_name().to_string_lossy().ends_with(&temporary))
            });
            if prepared {
                break;
            }
            thread::sleep(Duration::from_micros(100));
        }
        thread::sleep(Duration::from_micros(delay_us));
        starting.signal(libc::SIGKILL);
        starting.wait();

        let status = p.status();
        let previous = &status.raw["previous_process"];
        let named = previous["pid"].as_u64().expect("a previous process") as u32;
        if named == pid {
            // Kept apart from the log events: no log filter (these runs log errors only) and
            // no later line loses it.
            let report = format!("pid={dead} ");
            assert!(
                previous["previous_report"]
                    .as_str()
                    .is_some_and(|r| r.starts_with(&report)),
                "pid {pid} replaced the record of pid {dead} without its report: {previous}"
            );
            dead = pid;
            placed_and_reported += 1;
        } else {
            assert_eq!(named, dead, "after killing pid {pid}: {previous}");
        }
    }
    eprintln!("{placed_and_reported} of 10 killed processes had placed their file");

    let out = p.run();
    out.assert_code(0);
    assert!(
        out.stderr_lines()
            .any(|l| l.contains(PREVIOUS) && l.contains(&format!("pid={dead}"))),
        "{out}"
    );
    assert_eq!(p.status().count("done"), 6);
    assert_eq!(
        temporaries(),
        0,
        "the killed processes' temporary files are removed"
    );
}

/// A flight file that cannot be made (here a folder planted at the temporary name; a full disk
/// does the same) leaves the old record in place, to be reported again, and the run goes on.
#[test]
fn a_record_that_cannot_be_made_leaves_the_old_one_to_report() {
    let p = naps("no-room", "heartbeat = \"100ms\"", 3, "2s", 3);
    let mut first = p.cmd("run").spawn();
    assert!(first.wait_for_stderr("run started", Duration::from_secs(20)));
    thread::sleep(Duration::from_millis(300));
    let dead = first.pid();
    first.signal(libc::SIGKILL);
    first.wait();

    // `exec` keeps the shell's pid: the folder sits at this very process's temporary name.
    let flight = p.dir.join(".stagewise/no-room.db.no-room.flight");
    assert!(flight.exists());
    let mut second = p
        .cmd("run")
        .after_shell(&format!("mkdir '{}.new-'$$ || exit 99", flight.display()))
        .spawn();
    assert!(
        second.wait_for_stderr("keeping it in memory only", Duration::from_secs(20)),
        "{}",
        second.stderr_so_far()
    );
    assert!(second.wait_for_stderr("run started", Duration::from_secs(20)));
    second.signal(libc::SIGKILL);
    let out = second.wait();
    assert!(out.stderr.contains(&format!("pid={dead}")), "{out}");
    let status = p.status();
    assert_eq!(
        status.raw["previous_process"]["pid"].as_u64(),
        Some(u64::from(dead)),
        "the old record stays: {}",
        status.raw
    );
}

/// A pipeline name so long that `<file>.new-<pid>` would pass the 255 bytes a file name may
/// have still gets its record, and its death is reported.
#[test]
fn a_long_pipeline_name_still_gets_its_record() {
    let name = "n".repeat(118);
    let p = naps(&name, "heartbeat = \"100ms\"", 3, "2s", 3);
    let mut running = p.cmd("run").spawn();
    assert!(running.wait_for_stderr("run started", Duration::from_secs(20)));
    assert!(
        !running
            .stderr_so_far()
            .contains("keeping it in memory only"),
        "{}",
        running.stderr_so_far()
    );
    thread::sleep(Duration::from_millis(300));
    let pid = running.pid();
    running.signal(libc::SIGKILL);
    running.wait();
    let status = p.status();
    assert_eq!(
        status.raw["previous_process"]["pid"].as_u64(),
        Some(u64::from(pid)),
        "{}",
        status.raw
    );
}

/// A flight record that cannot be read is not passed over in silence by `status`, which has no
/// log: it says so, in text and JSON.
#[test]
fn status_says_when_the_flight_record_cannot_be_read() {
    let p = naps("garbled", "", 2, "10ms", 2);
    p.run().assert_code(0);
    let flight = p.dir.join(".stagewise/garbled.db.garbled.flight");
    std::fs::write(&flight, b"garbage, not a record").expect("garble");
    let text = p.cmd("status").output();
    text.assert_code(0);
    assert!(
        text.stdout.contains("flight record cannot be read")
            && text.stdout.contains("garbled.flight"),
        "{text}"
    );
    let status = p.status();
    assert!(
        status.raw["unreadable_flight_record"]
            .as_str()
            .is_some_and(|e| e.contains("is not a flight recorder file")),
        "{}",
        status.raw
    );
}
