//! Delivery after `kill -9`: nothing finished is lost, and redone work per kill is bounded by the
//! items in flight plus three checkpoint batches (ARCHITECTURE.md "Run semantics").

mod util;

use std::collections::BTreeMap;
use std::thread;
use std::time::Duration;

use util::{keys, Pipeline, Rng};

const ITEMS: usize = 2000;
/// `concurrency` of the non-source stages below: sleep 8 + sink 1.
const IN_FLIGHT: usize = 8 + 1;
const COMMIT_MAX_ITEMS: usize = 50;
/// Redone sink writes one kill may cause: in flight, plus one batch being committed, one being
/// collected and one channel's worth queued.
const REDONE_PER_KILL: usize = IN_FLIGHT + 3 * COMMIT_MAX_ITEMS;

/// Runs `p` and `kill -9`s it `after` its run started; the killed run's output. Fails if the
/// run ended by itself first.
fn kill_after_start(p: &Pipeline, after: Duration) -> util::Output {
    let mut running = p.cmd("run").spawn();
    assert!(
        running.wait_for_stderr("run started", Duration::from_secs(20)),
        "{}",
        running.stderr_so_far()
    );
    thread::sleep(after);
    running.signal(libc::SIGKILL);
    let killed = running.wait();
    assert_eq!(killed.code, None, "it ended before the kill\n{killed}");
    killed
}

#[test]
fn kill_9_at_random_moments_loses_nothing_and_redoes_little() {
    let p = Pipeline::new(&format!(
        r#"
        [pipeline]
        name = "crash"

        [checkpoint]
        commit_max_items = {COMMIT_MAX_ITEMS}

        [[stage]]
        name = "src"
        kind = "generate"
        count = {ITEMS}

        [[stage]]
        name = "nap"
        kind = "sleep"
        duration = "2ms"
        concurrency = 8

        [[stage]]
        name = "out"
        kind = "jsonl"
        path = "out.jsonl"
        concurrency = 1
        "#
    ));

    let mut rng = Rng::new(0x5EED_0002);
    let mut kills = 0;
    let mut finished_early = false;
    let mut delays = Vec::new();
    for _ in 0..4 {
        let mut running = p.cmd("run").spawn();
        let delay = rng.range(100, 800);
        delays.push(delay);
        thread::sleep(Duration::from_millis(delay));
        if !running.has_exited() {
            running.signal(libc::SIGKILL);
        }
        let out = running.wait();
        match out.code {
            // A run can finish its batch and be killed on its way out (while its last lines
            // are written): the batch is done, and a next run would take a new one.
            None if p.status().raw["run"]["status"] == "finished" => {
                finished_early = true;
                break;
            }
            None => kills += 1,
            Some(0) => {
                finished_early = true;
                break;
            }
            Some(_) => panic!("a run between kills failed\n{out}"),
        }
        // Whatever a kill left behind must already be well-formed (checked by `sink`).
        let _ = p.sink("out.jsonl");
    }
    assert!(
        kills >= 1,
        "no kill landed mid-run (delays {delays:?} ms): the test proved nothing"
    );
    if !finished_early {
        let out = p.run();
        out.assert_code(0);
    }

    let sink = p.sink("out.jsonl");
    for record in &sink.records {
        let key = record["key"].as_str().expect("checked by Sink::read");
        assert_eq!(
            record
                .get("n")
                .and_then(|n| n.as_u64())
                .map(|n| n.to_string()),
            Some(key.to_owned()),
            "the record for key {key} must carry its generated `n`: {record:?}"
        );
    }
    let unique = sink.unique_keys();
    assert_eq!(unique, keys(ITEMS), "every key must reach the sink");

    let redone = sink.len() - unique.len();
    let bound = kills * REDONE_PER_KILL;
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for record in &sink.records {
        *counts
            .entry(record["key"].as_str().expect("checked"))
            .or_default() += 1;
    }
    let most = counts.values().max().copied().unwrap_or(0);
    eprintln!(
        "{kills} kills at {delays:?} ms; {} sink lines, {redone} redone (bound {bound}), \
         at most {most} writes of one key",
        sink.len()
    );
    assert!(
        redone <= bound,
        "{redone} duplicate sink lines after {kills} kills (delays {delays:?} ms); the bound is \
         {kills} x ({IN_FLIGHT} in flight + 2 x {COMMIT_MAX_ITEMS}) = {bound}"
    );
    assert!(
        most <= kills + 1,
        "a key was written {most} times after {kills} kills"
    );
    assert_eq!(p.status().count("done"), ITEMS as u64);
}

/// A store as version 1 of the schema left it (before the response cache): an interrupted run
/// with two items done and three still to do. Opening it upgrades it in place, and the run
/// resumes where it stopped.
#[test]
fn a_store_written_by_schema_version_1_is_upgraded_and_resumed() {
    let p = Pipeline::new(
        r#"
        [pipeline]
        name = "old-store"

        [checkpoint]
        store = "sqlite:state.db"

        [[stage]]
        name = "src"
        kind = "generate"
        count = 5

        [[stage]]
        name = "out"
        kind = "jsonl"
        path = "out.jsonl"
        "#,
    );
    let conn = rusqlite::Connection::open(p.dir.join("state.db")).expect("create the store");
    conn.execute_batch(
        "CREATE TABLE runs (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            pipeline TEXT NOT NULL,
            status TEXT NOT NULL,
            items INTEGER NOT NULL,
            started_at TEXT NOT NULL,
            updated_at TEXT NOT NULL
        );
        CREATE INDEX runs_by_pipeline ON runs (pipeline, id);
        CREATE TABLE items (
            run_id INTEGER NOT NULL,
            seq INTEGER NOT NULL,
            key TEXT NOT NULL,
            state TEXT NOT NULL,
            stage TEXT,
            record TEXT,
            attempts INTEGER NOT NULL DEFAULT 0,
            error TEXT,
            PRIMARY KEY (run_id, seq),
            UNIQUE (run_id, key)
        ) WITHOUT ROWID;
        INSERT INTO runs VALUES (1, 'old-store', 'interrupted', 5, '2026-11-01T00:00:00Z', '2026-11-01T00:01:00Z');
        INSERT INTO items VALUES (1, 1, '0', 'done', NULL, NULL, 1, NULL);
        INSERT INTO items VALUES (1, 2, '1', 'done', NULL, NULL, 1, NULL);
        INSERT INTO items VALUES (1, 3, '2', 'pending', 'out', '{\"n\":2}', 0, NULL);
        INSERT INTO items VALUES (1, 4, '3', 'in_flight', 'out', '{\"n\":3}', 1, NULL);
        INSERT INTO items VALUES (1, 5, '4', 'pending', 'out', '{\"n\":4}', 0, NULL);
        PRAGMA user_version = 1;",
    )
    .expect("write a version 1 store");
    drop(conn);

    p.run().assert_code(0);
    let keys = p.sink("out.jsonl").unique_keys();
    assert_eq!(
        keys.into_iter().collect::<Vec<_>>(),
        ["2", "3", "4"],
        "only the unfinished items ran"
    );
    let status = p.status();
    assert_eq!(status.raw["run"]["id"], 1, "the old run was resumed");
    assert_eq!(status.counts["done"], 5);
    let conn = rusqlite::Connection::open(p.dir.join("state.db")).expect("open the store");
    let version: i64 = conn
        .pragma_query_value(None, "user_version", |r| r.get(0))
        .expect("read the version");
    assert_eq!(version, 9);
    let ended: i64 = conn
        .query_row("SELECT count(*) FROM history", [], |r| r.get(0))
        .expect("the history exists");
    assert_eq!(ended, 1, "the resuming process's end");
    let cached: i64 = conn
        .query_row("SELECT count(*) FROM responses", [], |r| r.get(0))
        .expect("the response cache exists");
    assert_eq!(cached, 0);
    let processes: i64 = conn
        .query_row("SELECT count(*) FROM processes", [], |r| r.get(0))
        .expect("the process records' table exists");
    // A SQLite store's flight record is the file beside it, not a copy in the store.
    assert_eq!(processes, 0);
}

/// An item whose every attempt wedges its stage (the run exits 3 each time) no longer loops:
/// the attempts it used stay with it, and within `retry.attempts` + 1 runs a run fails it,
/// naming the cause, and finishes.
#[test]
fn an_item_that_wedges_its_stage_every_time_ends_failed() {
    let p = Pipeline::through(
        "wedging",
        1,
        r#"
        [[stage]]
        name = "stuck"
        kind = "fault"
        hang_rate = 1.0
        blocking = true
        concurrency = 2
        timeout = "300ms"
        retry = { attempts = 3, initial = "10ms" }
        "#,
        "",
    );
    p.run_until_finished_with_failures(4, Some(3));
    let status = p.status();
    status.assert_failed(&["0"], "stuck", 3, "timed out after 300ms");
}

/// `kill -9` during an item's attempts, again and again (its stage always runs past the
/// kill): each death counts as an attempt used, and after `retry.attempts` of them the next
/// run fails the item, saying the process died, and finishes.
#[test]
fn an_item_its_process_dies_in_every_time_ends_failed() {
    let p = Pipeline::through(
        "dying",
        1,
        r#"
        [[stage]]
        name = "nap"
        kind = "sleep"
        duration = "30s"
        timeout = "60s"
        retry = { attempts = 3 }
        "#,
        "",
    );
    for kill in 1..=3 {
        let killed = kill_after_start(&p, Duration::from_millis(400));
        if kill > 1 {
            assert!(
                killed.stderr.contains("count against their items"),
                "kill {kill}\n{killed}"
            );
        }
    }
    let out = p.run();
    out.assert_code(1);
    let status = p.status();
    status.assert_failed(
        &["0"],
        "nap",
        3,
        "the process ended during attempt 3 in stage `nap`",
    );
}

/// A process killed while an item backs off after a failed attempt, before that attempt's
/// update is committed: the attempt still counts (it stays in the flight recorder's table
/// during the backoff), so the item fails after `retry.attempts` runs.
#[test]
fn an_attempt_that_failed_counts_when_the_process_dies_in_its_backoff() {
    let p = Pipeline::through(
        "backoff-deaths",
        1,
        r#"
        [[stage]]
        name = "flaky"
        kind = "fault"
        error_rate = 1.0
        retry = { attempts = 3, initial = "10s", jitter = false }
        "#,
        "",
    );
    for _ in 0..2 {
        kill_after_start(&p, Duration::from_millis(60));
    }
    // Attempts 1 and 2 failed, each followed by a kill in its backoff: the third is the last,
    // so this run retries nothing.
    let out = p.run();
    out.assert_code(1);
    let flaky = p.stage_summary("backoff-deaths", "flaky");
    assert_eq!(
        flaky["retries"], 0,
        "the attempts before the kills were not counted\n{out}"
    );
    p.status()
        .assert_failed(&["0"], "flaky", 3, "injected transient fault");
}

/// `retry-failed` resumes a run without forgiving the deaths of its unfinished items (so that
/// resuming it that way again and again still ends an item that kills the process): those
/// whose attempts deaths used up fail, and the next `retry-failed` gives them fresh attempts.
#[test]
fn retry_failed_gives_fresh_attempts_once_deaths_failed_the_items() {
    let p = Pipeline::through(
        "dead-then-retried",
        2,
        r#"
        [[stage]]
        name = "nap"
        kind = "sleep"
        duration = "800ms"
        concurrency = 2
        retry = { attempts = 2 }
        "#,
        "",
    );
    for _ in 0..2 {
        kill_after_start(&p, Duration::from_millis(300));
    }
    let out = p.cmd("retry-failed").output();
    out.assert_code(1);
    p.status().assert_failed(
        &["0", "1"],
        "nap",
        2,
        "all 2 attempts (`retry.attempts` = 2) used across processes",
    );
    let out = p.cmd("retry-failed").output();
    out.assert_code(0);
    assert_eq!(p.status().count("done"), 2, "{out}");
}

/// An item that kills the process right after it moves to a stage — before that move is
/// committed, so the store still has it at the stage before — is still held to its attempts
/// at that stage: each death is kept per item and stage.
#[test]
fn a_death_right_after_a_stage_move_counts() {
    let p = Pipeline::through(
        "quick-death",
        1,
        r#"
        [[stage]]
        name = "prep"
        kind = "sleep"
        duration = "20ms"

        [[stage]]
        name = "crash"
        kind = "sleep"
        duration = "30s"
        retry = { attempts = 2 }
        "#,
        "[checkpoint]\ncommit_interval = \"5s\"",
    );
    for _ in 0..2 {
        kill_after_start(&p, Duration::from_millis(300));
    }
    // The moves to `crash` were never committed (`commit_interval` = 5s): the item is back at
    // `prep` each time, and both deaths at `crash` count.
    let out = p.run();
    out.assert_code(1);
    p.status().assert_failed(
        &["0"],
        "crash",
        2,
        "the process ended during attempt 2 in stage `crash`",
    );
}
