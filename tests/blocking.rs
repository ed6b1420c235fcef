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
