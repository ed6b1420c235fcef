//! Blocking stages run on bounded per-stage pools: calls that hang are abandoned, never
//! multiplied (the thread count stays bounded), a stage whose pool is all hung is declared
//! wedged and the run exits 3 by itself, and the runtime stays responsive (heartbeats) meanwhile.

mod util;

use std::time::Duration;

use util::{keys, thread_bound, Pipeline};

#[test]
fn a_hung_blocking_stage_wedges_the_run_with_bounded_threads() {
    let p = Pipeline::new(
        r#"
        [pipeline]
        name = "wedge"
        heartbeat = "200ms"

        [[stage]]
        name = "src"
        kind = "generate"
        count = 100

        [[stage]]
        name = "hanger"
        kind = "fault"
        hang_rate = 1.0
        blocking = true
        concurrency = 2
        timeout = "1s"
        retry = { attempts = 3, initial = "10ms", max = "50ms" }

        [[stage]]
        name = "out"
        kind = "blackhole"
        "#,
    );
    let running = p.cmd("run").timeout(Duration::from_secs(60)).spawn();
    let (out, max_threads) = running.wait_sampling_threads(Duration::from_millis(50));

    out.assert_code(3);
    assert!(
        out.elapsed < Duration::from_secs(30),
        "the run must end by itself within seconds\n{out}"
    );
    assert!(
        out.stderr_lines()
            .any(|l| l.contains("wedged") && l.contains("hanger")),
        "a log line should say stage `hanger` is wedged\n{out}"
    );
    let bound = thread_bound(2);
    eprintln!(
        "peak threads {max_threads} (bound {bound}), {} heartbeats",
        out.heartbeats()
    );
    assert!(
        max_threads <= bound,
        "thread count peaked at {max_threads} (bound {bound}): hung calls must not multiply threads\n{out}"
    );
    assert!(
        out.heartbeats() >= 2,
        "the heartbeat must keep printing while calls hang\n{out}"
    );
    out.assert_summary_last();

    // The checkpoint was saved: every item of the manifest is accounted for, none in flight.
    let status = p.status();
    assert_eq!(status.total(), 100, "{:?}", status.counts);
    assert_eq!(status.count("in_flight"), 0, "{:?}", status.counts);
}

/// The runtime is sized from the pools: a blocking stage of concurrency 3 over 30 items uses
/// about 3 pool threads, not one per item, and finishes normally.
#[test]
fn a_blocking_pool_uses_its_concurrency_not_one_thread_per_item() {
    let p = Pipeline::new(
        r#"
        [pipeline]
        name = "sizing"

        [[stage]]
        name = "src"
        kind = "generate"
        count = 30

        [[stage]]
        name = "nap"
        kind = "sleep"
        duration = "300ms"
        blocking = true
        concurrency = 3

        [[stage]]
        name = "out"
        kind = "jsonl"
        path = "out.jsonl"
        "#,
    );
    let running = p.cmd("run").spawn();
    let (out, max_threads) = running.wait_sampling_threads(Duration::from_millis(50));
    out.assert_code(0);
    let bound = thread_bound(3);
    eprintln!("peak threads {max_threads} (bound {bound})");
    assert!(
        max_threads <= bound,
        "thread count peaked at {max_threads} (bound {bound})\n{out}"
    );
    assert_eq!(p.sink("out.jsonl").unique_keys(), keys(30));
}

/// A blocking call that answers after its deadline but before its item is settled is taken:
/// within the grace after the timeout, or while the item waits for its next attempt. An answer
/// after the item failed (no attempt left) is not.
#[test]
fn a_late_answer_before_the_item_is_settled_is_taken() {
    let pipeline = |hang_for: &str, retry: &str| {
        Pipeline::through(
            "late",
            2,
            &format!(
                "[[stage]]\nname = \"slow\"\nkind = \"fault\"\nhang_rate = 1.0\n\
                 hang_for = \"{hang_for}\"\nblocking = true\nconcurrency = 4\n\
                 timeout = \"300ms\"\nretry = {retry}"
            ),
            "",
        )
    };

    // Returns 100 ms after the timeout (inside the 2 s grace); then 2.7 s after it, while the
    // item backs off for 5 s. Each time: done, after one attempt, no retry made.
    for hang_for in ["400ms", "3s"] {
        let p = pipeline(
            hang_for,
            r#"{ attempts = 3, initial = "5s", max = "5s", jitter = false }"#,
        );
        let out = p.run();
        out.assert_code(0);
        assert_eq!(
            out.stderr.matches("the answer is taken").count(),
            2,
            "{hang_for}\n{out}"
        );
        assert_eq!(p.status().count("done"), 2);
        // Each record written once: no second attempt ran after the late answer.
        assert_eq!(p.sink("out.jsonl").len(), 2);
        // Both attempts timed out; the retries their backoffs began were never made.
        let slow = p.stage_summary("late", "slow");
        assert_eq!(
            (slow["timeouts"].as_u64(), slow["retries"].as_u64()),
            (Some(2), Some(0)),
            "{slow}"
        );
    }

    // No attempt left: the item failed when its only attempt was abandoned; the answer after
    // that is not taken.
    let p = pipeline("3s", "{ attempts = 1 }");
    let out = p.run();
    out.assert_code(1);
    assert!(!out.stderr.contains("the answer is taken"), "{out}");
    assert_eq!(p.status().count("failed"), 2);
}

/// A call that keeps to its deadline by its own timer wakes a little late on a loaded machine;
/// a second late is not a stuck thread. With one thread, taking it for one would wedge the
/// stage and end the run (exit 3).
#[test]
fn a_call_back_a_second_after_its_deadline_does_not_wedge_a_stage_of_one_thread() {
    let p = Pipeline::through(
        "late-by-a-second",
        3,
        "[[stage]]\nname = \"slow\"\nkind = \"fault\"\nhang_rate = 1.0\n\
         hang_for = \"1300ms\"\nblocking = true\nconcurrency = 1\n\
         timeout = \"300ms\"\nretry = { attempts = 1 }",
        "",
    );
    let out = p.run();
    out.assert_code(0);
    assert!(!out.stderr.contains("ignored its timeout"), "{out}");
    assert_eq!(
        out.stderr.matches("the answer is taken").count(),
        3,
        "{out}"
    );
    assert_eq!(p.status().count("done"), 3);
    let slow = p.stage_summary("late-by-a-second", "slow");
    assert_eq!(
        (slow["timeouts"].as_u64(), slow["abandoned"].as_u64()),
        (Some(3), Some(0)),
        "{slow}"
    );
}

#[test]
fn items_that_wedge_their_stage_every_run_end_failed_once_their_attempts_are_used() {
    // Every call hangs past its timeout, holding its thread: each run wedges (exit 3), on an
    // item's first attempt or on its last. The attempts the wedge ended still count, so every
    // item ends failed, marked, within `retry.attempts` runs of its own, and the run after that
    // finishes.
    for concurrency in [1, 2] {
        let p = Pipeline::new(&format!(
            r#"
            [pipeline]
            name = "wedged-again"

            [[stage]]
            name = "src"
            kind = "generate"
            count = 2

            [[stage]]
            name = "stuck"
            kind = "fault"
            hang_rate = 1.0
            blocking = true
            hang_for = "20s"
            concurrency = {concurrency}
            timeout = "300ms"
            retry = {{ attempts = 2, initial = "10ms" }}

            [[stage]]
            name = "out"
            kind = "jsonl"
            path = "out.jsonl"
            rejects = "rejects.jsonl"
            "#
        ));
        // Two items of two attempts: at most four wedged runs, then one that ends.
        let mut wedged = 0;
        let out = loop {
            let out = p.run();
            if out.code != Some(3) {
                break out;
            }
            assert!(out.stderr.contains("is wedged"), "{out}");
            wedged += 1;
            assert!(
                wedged <= 4,
                "concurrency {concurrency}: wedged {wedged} times\n{out}"
            );
        };
        out.assert_code(1);
        let status = p.status();
        assert_eq!(status.count("failed"), 2, "{:#}", status.raw);
        assert!(
            status.failed.iter().all(|f| f.attempts == 2),
            "{:#}",
            status.raw
        );
        assert_eq!(
            p.sink("rejects.jsonl").unique_keys(),
            ["0", "1"].map(String::from).into(),
            "each marked"
        );
    }
}
