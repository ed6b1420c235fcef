//! One table of store scenarios, run against every backend (STYLE.md, "State on disk"): each
//! scenario is a function of a [`Backend`], a fresh and empty place for one store, and
//! [`scenarios!`] makes it a test per backend, `checkpoint::tests::sqlite::<scenario>` and
//! `checkpoint::tests::postgres::<scenario>`.
//!
//! [`backends`] makes the places: SQLite scenarios get a store file in a temp folder of their
//! own; PostgreSQL scenarios get a database of their own on the server `STAGEWISE_TEST_PG` names
//! (created before, dropped after), so they never see each other; without that variable they
//! say loudly that they skipped, and under `CI=true` they fail instead.

mod backends;
mod leases;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::spec::StoreLocation;
use crate::stage::Record;

use self::backends::{on_postgres, on_sqlite};

use super::{
    open_existing, open_for_run, Change, CheckpointStore, ItemState, PgStore, RunInfo, RunStatus,
    SqliteStore, StoreError, StoredItem, Update,
};

/// A fresh, empty place for a store of one backend, removed when dropped.
trait Backend {
    /// Where the store is.
    fn location(&self) -> StoreLocation;
    /// Overwrite the stored schema version, as another build of stagewise would have left it.
    fn set_schema_version(&self, version: i64);
    /// Overwrite when every item's first attempt began (ms since the epoch), behind the
    /// store's back: as a process whose clock was ahead left it.
    fn set_since(&self, ms: i64);
    /// Turn a current store into what an older schema version wrote: 1 had no response cache,
    /// 2 no process records.
    fn downgrade_to(&self, version: i64);
    /// Put another application's table where the store's tables would be.
    fn plant_foreign_table(&self);
    /// What a `Busy` error says of a holder in this process.
    fn holder(&self) -> String;
    /// The store as its messages name it.
    fn shown(&self) -> String;
    /// Another session holding the lock a write to the store's `table` needs, until dropped.
    fn hold_lock(&self, table: &str) -> Box<dyn std::any::Any>;
    /// Whether one runner takes the whole store (SQLite), not only its pipeline (PostgreSQL).
    fn one_runner_per_store(&self) -> bool;
}

/// Every scenario, as a test per backend.
macro_rules! scenarios {
    ($($scenario:ident),* $(,)?) => {
        /// The scenarios on a SQLite store.
        mod sqlite {
            $(
                #[test]
                fn $scenario() {
                    super::on_sqlite(super::$scenario);
                }
            )*
        }

        /// The scenarios on a PostgreSQL store.
        mod postgres {
            $(
                #[test]
                fn $scenario() {
                    super::on_postgres(super::$scenario);
                }
            )*
        }
    };
}

scenarios![
    manifest_is_invisible_until_committed,
    repeated_keys_are_kept_once_across_chunks,
    a_stuck_read_does_not_lock_out_the_next_attempt,
    updates_fold_into_each_items_row,
    status_counts_items_per_state_and_stage,
    failed_and_skipped_lists_are_in_manifest_order_and_capped,
    latest_run_is_the_newest_committed_run_of_its_pipeline,
    a_take_that_found_nothing_hides_no_run,
    attempts_used_stay_with_the_item,
    the_first_attempts_time_stays_with_the_item_at_its_stage,
    a_durable_update_commits_what_was_queued_before_it,
    retry_failed_puts_failed_items_back_to_pending,
    pending_pages_through_unfinished_items_in_order,
    response_cache_keeps_answers_across_opens,
    a_newer_schema_is_refused,
    a_foreign_database_is_refused,
    an_older_schema_is_upgraded_in_place,
    the_history_keeps_each_end_and_counts_the_checks,
    one_runner_at_a_time,
    open_existing_finds_no_store_where_none_was_made,
    a_deadline_bounds_a_commit_behind_a_lock,
    a_deadline_cuts_short_the_commit_waiting_now,
    process_records_are_kept_per_pipeline,
    saving_a_process_record_does_not_wait_long_for_a_lock,
    runner_active_follows_the_runner_lock,
];

// ---------------------------------------------------------------------------------------------
// Helpers

/// Open (creating it) the store at `b`'s place.
fn try_open(b: &dyn Backend) -> Result<Box<dyn CheckpointStore>, StoreError> {
    Ok(match b.location() {
        StoreLocation::Sqlite(path) => Box::new(SqliteStore::open(&path)?),
        StoreLocation::Postgres(url) => Box::new(PgStore::open(&url)?),
    })
}

/// Open (creating it) the store at `b`'s place, which must work.
fn open(b: &dyn Backend) -> Box<dyn CheckpointStore> {
    try_open(b).expect("open the store")
}

/// The latest run of `pipeline`, as a runner about to take a batch saw it.
fn seen(store: &dyn CheckpointStore, pipeline: &str) -> Option<i64> {
    store
        .latest_run(pipeline)
        .expect("latest run")
        .map(|r| r.id)
}

/// A lease as a runner takes one by default.
fn terms() -> super::LeaseTerms {
    super::LeaseTerms::new(Duration::from_secs(60), Duration::from_secs(10))
}

/// An owned string, shorter.
fn s<T: for<'a> From<&'a str>>(x: &str) -> T {
    T::from(x)
}

/// A committed run of `pipeline` whose items are `keys` (seq 1, 2, … in that order), with
/// records `{"n": seq}`, at stage `one`.
fn take(store: &dyn CheckpointStore, pipeline: &str, keys: &[&str]) -> RunInfo {
    let mut m = store
        .begin_run(pipeline, "one", seen(store, pipeline))
        .expect("begin a run");
    for (i, key) in keys.iter().enumerate() {
        m.add(key, &format!(r#"{{"n":{}}}"#, i + 1)).expect("add");
    }
    let (run, duplicates) = m.commit().expect("commit");
    assert_eq!(duplicates.count, 0);
    run
}

/// Apply `changes` to `run` as one batch, setting its status if given.
fn apply(
    store: &dyn CheckpointStore,
    run: i64,
    changes: Vec<(i64, Change)>,
    status: Option<RunStatus>,
) {
    let updates: Vec<Update> = changes
        .into_iter()
        .map(|(seq, change)| Update { seq, change })
        .collect();
    store
        .update_writer(run)
        .expect("writer")
        .apply(&updates, status)
        .expect("apply");
}

/// A stage finished: the item is next at `stage`, with these fields.
fn advanced(stage: &str, fields: serde_json::Value) -> Change {
    Change::Advanced {
        stage: s(stage),
        record: Arc::new(Record::with_fields(
            "any",
            fields.as_object().cloned().expect("an object"),
        )),
    }
}

/// The item failed at `stage`.
fn failed(stage: &str, error: &str, attempts: u32) -> Change {
    Change::Failed {
        stage: s(stage),
        error: s(error),
        attempts,
    }
}

/// `stage` skipped the item.
fn skipped(stage: &str, reason: &str) -> Change {
    Change::Skipped {
        stage: s(stage),
        reason: s(reason),
    }
}

/// The keys of `items`, in order.
fn keys(items: &[StoredItem]) -> Vec<&str> {
    items.iter().map(|i| i.key.as_str()).collect()
}

/// The seqs of `items`, in order.
fn seqs(items: &[StoredItem]) -> Vec<i64> {
    items.iter().map(|i| i.seq).collect()
}

/// The latest run of `pipeline`, which must exist.
fn latest(store: &dyn CheckpointStore, pipeline: &str) -> RunInfo {
    store
        .latest_run(pipeline)
        .expect("latest run")
        .expect("a run")
}

/// `(key, line)` of a source that repeats keys within a manifest chunk and across chunks: 2,500
/// lines, keys 0..1500; line 3 repeats key 0 (same chunk), lines 1501 on repeat the first
/// 1,000 keys (later chunks). Kept once each, that is 1,500 items and 1,000 repeats, the first
/// five `0, 0, 1, 2, 3`.
pub(super) fn repeating_source() -> impl Iterator<Item = (String, usize)> {
    (0..2500usize).map(|line| {
        let id = match line {
            3 => 0,
            l if l < 3 => l,
            l if l < 1501 => l - 1,
            l => l - 1501,
        };
        (id.to_string(), line)
    })
}

// ---------------------------------------------------------------------------------------------
// Scenarios

/// A manifest, chunks written or not, is hidden until it commits; dropped, it is gone.
fn manifest_is_invisible_until_committed(b: &dyn Backend) {
    let store = open(b);
    {
        let mut m = store
            .begin_run("p", "one", seen(&*store, "p"))
            .expect("begin");
        for i in 0..2500 {
            m.add(&i.to_string(), "{}").expect("add");
        }
        assert!(
            store.latest_run("p").expect("latest").is_none(),
            "two chunks are written, and still hidden"
        );
        // dropped without commit
    }
    assert!(store.latest_run("p").expect("latest").is_none());
    let mut m = store
        .begin_run("p", "one", seen(&*store, "p"))
        .expect("begin");
    m.add("a", "{}").expect("add");
    m.add("a", "{}").expect("add");
    m.add("b", r#"{"n":1}"#).expect("add");
    let (run, duplicates) = m.commit().expect("commit");
    assert_eq!(run.items, 2);
    assert_eq!(run.status, RunStatus::Running);
    assert_eq!(
        (duplicates.count, duplicates.first),
        (1, vec!["a".to_owned()])
    );
    assert_eq!(latest(&*store, "p").id, run.id);
    let pending = store.pending(run.id, 0, 10).expect("pending");
    assert_eq!(keys(&pending), ["a", "b"]);
    assert_eq!(seqs(&pending), [1, 2]);
    assert_eq!(pending[0].stage.as_deref(), Some("one"));
    assert_eq!(pending[1].record, r#"{"n":1}"#);
}

/// A key is kept once, with its first record, within a chunk and across chunks; items are
/// numbered without gaps and the repeats are counted in the source's order.
fn repeated_keys_are_kept_once_across_chunks(b: &dyn Backend) {
    let store = open(b);
    let mut m = store
        .begin_run("p", "one", seen(&*store, "p"))
        .expect("begin");
    for (key, line) in repeating_source() {
        m.add(&key, &format!(r#"{{"line":{line}}}"#)).expect("add");
    }
    let (run, duplicates) = m.commit().expect("commit");
    assert_eq!(run.items, 1500);
    assert_eq!(duplicates.count, 1000);
    assert_eq!(duplicates.first, ["0", "0", "1", "2", "3"]);
    let pending = store.pending(run.id, 0, 5000).expect("pending");
    assert_eq!(seqs(&pending), (1..=1500).collect::<Vec<i64>>(), "no gaps");
    assert_eq!(pending[0].key, "0");
    assert_eq!(
        pending[0].record, r#"{"line":0}"#,
        "the first record of a key is kept"
    );
    assert_eq!(pending[1499].key, "1499");
}

/// A manifest left open mid-chunk does not hold up the next attempt at the batch, and its rows
/// are not part of it.
fn a_stuck_read_does_not_lock_out_the_next_attempt(b: &dyn Backend) {
    let store = open(b);
    // The first attempt's source is stuck mid-chunk (one chunk written, rows buffered) and its
    // manifest is never dropped while the second attempt takes the batch.
    let mut stuck = store
        .begin_run("p", "one", seen(&*store, "p"))
        .expect("begin");
    for i in 0..1500 {
        stuck.add(&format!("old-{i}"), "{}").expect("add");
    }
    let started = Instant::now();
    let mut m = store
        .begin_run("p", "one", seen(&*store, "p"))
        .expect("a second attempt can begin");
    m.add("x", "{}").expect("add");
    let (run, _) = m.commit().expect("and commit");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "it did not wait for a lock"
    );
    assert_eq!(run.items, 1, "the stuck attempt's rows are not part of it");
    drop(stuck);
    assert_eq!(latest(&*store, "p").id, run.id);
    assert_eq!(keys(&store.pending(run.id, 0, 10).expect("pending")), ["x"]);
}

/// Updates within a batch and across batches land as if applied one by one: a record survives
/// updates that carry none, a failure keeps the error, the stage and the attempts.
fn updates_fold_into_each_items_row(b: &dyn Backend) {
    let store = open(b);
    let run = take(&*store, "p", &["a", "b", "c", "d"]);
    apply(
        &*store,
        run.id,
        vec![
            (1, advanced("two", serde_json::json!({"x": 1}))),
            (1, Change::Interrupted { stage: s("two") }),
            (2, Change::Done),
            (3, failed("one", "boom", 3)),
            (4, skipped("one", "empty")),
        ],
        Some(RunStatus::Interrupted),
    );
    let pending = store.pending(run.id, 0, 10).expect("pending");
    assert_eq!(keys(&pending), ["a"]);
    assert_eq!(pending[0].stage.as_deref(), Some("two"));
    assert_eq!(
        pending[0].record, r#"{"x":1}"#,
        "the record survives a later update without one"
    );
    let report = store.status(&latest(&*store, "p"), 1000).expect("status");
    assert_eq!(report.run.status, RunStatus::Interrupted);
    assert_eq!(report.counts["done"], 1);
    assert_eq!(report.failed.len(), 1);
    assert_eq!(
        (report.failed[0].error.as_str(), report.failed[0].attempts),
        ("boom", 3)
    );
    assert_eq!(report.skipped[0].reason, "empty");

    // A later batch: the record survives a start, and a failure after a new record keeps it
    // (the item is failed at the stage it reached).
    apply(
        &*store,
        run.id,
        vec![(1, Change::Started { stage: s("two") })],
        None,
    );
    let pending = store.pending(run.id, 0, 10).expect("pending");
    assert_eq!(pending[0].record, r#"{"x":1}"#);
    assert_eq!(store.counts(run.id).expect("counts")["in_flight"], 1);
    apply(
        &*store,
        run.id,
        vec![
            (1, advanced("three", serde_json::json!({"x": 2}))),
            (1, failed("three", "late", 2)),
        ],
        None,
    );
    let report = store.status(&run, 1000).expect("status");
    assert_eq!(
        report
            .failed
            .iter()
            .map(|f| (
                f.key.as_str(),
                f.stage.as_str(),
                f.error.as_str(),
                f.attempts
            ))
            .collect::<Vec<_>>(),
        [("a", "three", "late", 2), ("c", "one", "boom", 3)]
    );
    assert_eq!(store.reset_failed(run.id).expect("reset"), 2);
    let pending = store.pending(run.id, 0, 10).expect("pending");
    assert_eq!(keys(&pending), ["a", "c"]);
    assert_eq!(pending[0].stage.as_deref(), Some("three"));
    assert_eq!(pending[0].record, r#"{"x":2}"#);
}

/// Counts per state (every state present) and per stage (a done item is at none).
fn status_counts_items_per_state_and_stage(b: &dyn Backend) {
    let store = open(b);
    let run = take(&*store, "p", &["k1", "k2", "k3", "k4", "k5", "k6"]);
    apply(
        &*store,
        run.id,
        vec![
            (1, Change::Done),
            (2, Change::Started { stage: s("one") }),
            (3, advanced("two", serde_json::json!({}))),
            (4, failed("two", "e", 1)),
            (5, skipped("one", "r")),
        ],
        None,
    );
    let want: BTreeMap<&'static str, u64> = [
        ("pending", 1),
        ("in_flight", 2),
        ("done", 1),
        ("skipped", 1),
        ("failed", 1),
    ]
    .into_iter()
    .collect();
    assert_eq!(store.counts(run.id).expect("counts"), want);
    let report = store.status(&run, 1000).expect("status");
    assert_eq!(report.counts, want);
    let stage = |pairs: &[(&'static str, u64)]| pairs.iter().copied().collect::<BTreeMap<_, _>>();
    let want_stages: BTreeMap<String, BTreeMap<&'static str, u64>> = [
        (
            s("one"),
            stage(&[("pending", 1), ("in_flight", 1), ("skipped", 1)]),
        ),
        (s("two"), stage(&[("in_flight", 1), ("failed", 1)])),
    ]
    .into_iter()
    .collect();
    assert_eq!(report.stages, want_stages, "a done item is at no stage");

    // A run without items still counts every state.
    let empty = take(&*store, "q", &[]);
    let report = store.status(&empty, 1000).expect("status");
    assert_eq!(report.counts.len(), ItemState::ALL.len());
    assert!(report.counts.values().all(|n| *n == 0));
    assert!(report.stages.is_empty());
}

/// The failed and skipped lists follow the manifest, not the order of writes, and list the
/// first 1,000 only.
fn failed_and_skipped_lists_are_in_manifest_order_and_capped(b: &dyn Backend) {
    let store = open(b);
    let names: Vec<String> = (0..1005).map(|i| format!("k{i:04}")).collect();
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let run = take(&*store, "p", &refs);
    let is_skipped = |i: usize| i % 335 == 7;
    let changes = (0..names.len())
        .map(|i| {
            let seq = i64::try_from(i + 1).expect("small");
            let attempts = u32::try_from(i % 5 + 1).expect("small");
            let change = if is_skipped(i) {
                skipped("two", &format!("reason {i}"))
            } else {
                failed("one", &format!("error {i}"), attempts)
            };
            (seq, change)
        })
        // Written in reverse: the lists follow the manifest, not the order of writes.
        .rev()
        .collect();
    apply(&*store, run.id, changes, None);
    let report = store.status(&run, 1000).expect("status");
    assert_eq!(report.counts["failed"], 1002, "counts are not capped");
    assert_eq!(report.failed.len(), 1000, "the first 1,000 are listed");
    let want: Vec<&str> = (0..names.len())
        .filter(|i| !is_skipped(*i))
        .take(1000)
        .map(|i| names[i].as_str())
        .collect();
    assert_eq!(
        report
            .failed
            .iter()
            .map(|f| f.key.as_str())
            .collect::<Vec<_>>(),
        want
    );
    assert_eq!(
        (
            report.failed[1].stage.as_str(),
            report.failed[1].error.as_str(),
            report.failed[1].attempts
        ),
        ("one", "error 1", 2)
    );
    assert_eq!(
        report
            .skipped
            .iter()
            .map(|k| (k.key.as_str(), k.stage.as_str(), k.reason.as_str()))
            .collect::<Vec<_>>(),
        [
            ("k0007", "two", "reason 7"),
            ("k0342", "two", "reason 342"),
            ("k0677", "two", "reason 677"),
        ]
    );
}

/// The latest run is the newest of its pipeline, with its status; a run being taken is not.
fn latest_run_is_the_newest_committed_run_of_its_pipeline(b: &dyn Backend) {
    let store = open(b);
    assert!(store.latest_run("p").expect("latest").is_none());
    let first = take(&*store, "p", &["a"]);
    let run = latest(&*store, "p");
    assert_eq!(
        (run.id, run.status, run.items),
        (first.id, RunStatus::Running, 1)
    );
    assert_eq!(run.started_at, first.started_at);
    assert!(
        humantime::parse_rfc3339(&run.started_at).is_ok(),
        "{}",
        run.started_at
    );
    apply(&*store, first.id, vec![], Some(RunStatus::Finished));
    assert_eq!(latest(&*store, "p").status, RunStatus::Finished);

    let other = take(&*store, "q", &["x"]);
    let second = take(&*store, "p", &["a", "b"]);
    assert!(second.id > first.id);
    let mut taking = store
        .begin_run("p", "one", seen(&*store, "p"))
        .expect("begin");
    taking.add("c", "{}").expect("add");
    let run = latest(&*store, "p");
    assert_eq!(
        (run.id, run.items),
        (second.id, 2),
        "a run being taken is not the latest"
    );
    assert_eq!(latest(&*store, "q").id, other.id);
    drop(taking);
    assert_eq!(latest(&*store, "p").id, second.id);
}

/// A take that found nothing is kept only as "last checked": the latest run stays the last
/// one with items, and the next take clears it.
fn a_take_that_found_nothing_hides_no_run(b: &dyn Backend) {
    let store = open(b);
    let empty = take(&*store, "p", &[]);
    assert!(store.latest_run("p").expect("latest").is_none());
    assert_eq!(
        store.last_checked("p").expect("last checked"),
        Some(empty.started_at.clone())
    );

    let full = take(&*store, "p", &["a", "b"]);
    assert_eq!(store.last_checked("p").expect("last checked"), None);
    apply(&*store, full.id, vec![], Some(RunStatus::Finished));
    let mut checked = None;
    for _ in 0..3 {
        let nothing = take(&*store, "p", &[]);
        apply(&*store, nothing.id, vec![], Some(RunStatus::Finished));
        checked = Some(nothing.started_at);
    }
    let run = latest(&*store, "p");
    assert_eq!((run.id, run.items), (full.id, 2));
    assert_eq!(store.last_checked("p").expect("last checked"), checked);
    assert_eq!(store.status(&run, 1000).expect("status").run.id, full.id);
    // Another pipeline's empty take is its own.
    take(&*store, "q", &[]);
    assert_eq!(store.last_checked("p").expect("last checked"), checked);

    // A take with items clears the empty ones: nothing was checked since it began.
    let next = take(&*store, "p", &["c"]);
    assert_eq!(latest(&*store, "p").id, next.id);
    assert_eq!(store.last_checked("p").expect("last checked"), None);
}

/// Attempts an item used — failed ones, and those its process died in — stay with it in the
/// store until it leaves the stage; a death only ever raises them to its attempt's number.
/// When an item's first attempt at its stage began (`since`) is kept across batches and
/// opens, not moved by later attempts, cleared when the item moves on (and set again by its
/// first attempt there), and by `retry-failed`.
fn the_first_attempts_time_stays_with_the_item_at_its_stage(b: &dyn Backend) {
    let store = open(b);
    let run = take(&*store, "p", &["a", "b", "c"]);
    let before = std::time::SystemTime::now() - std::time::Duration::from_secs(1);
    apply(
        &*store,
        run.id,
        vec![
            (1, Change::TakenUp { stage: s("one") }),
            (2, Change::Started { stage: s("one") }),
            (
                2,
                Change::Failed {
                    stage: s("one"),
                    error: s("gone"),
                    attempts: 1,
                },
            ),
        ],
        None,
    );
    let since = |store: &dyn CheckpointStore| -> Vec<(String, Option<std::time::SystemTime>)> {
        store
            .pending(run.id, 0, 10)
            .expect("pending")
            .into_iter()
            .map(|i| (i.key, i.since))
            .collect()
    };
    let first = since(&*store);
    let a = first[0].1.expect("`a` began");
    assert!(
        a >= before && a <= std::time::SystemTime::now(),
        "{first:?}"
    );
    assert_eq!(first[1], (s("c"), None), "`c` never began");
    // A time ahead of the clock (written by a process whose clock was set back since) is
    // corrected at the next start, so that the deadline does not start over in every process.
    drop(store);
    let ahead = super::model::epoch_ms(std::time::SystemTime::now()) + 3_600_000;
    b.set_since(ahead);
    let store = open(b);
    assert!(
        since(&*store)[0].1 > Some(std::time::SystemTime::now()),
        "ahead"
    );
    apply(
        &*store,
        run.id,
        vec![(1, Change::Started { stage: s("one") })],
        None,
    );
    let corrected = since(&*store)[0].1.expect("set");
    assert!(
        corrected <= std::time::SystemTime::now(),
        "corrected to now"
    );
    let a = corrected;
    std::thread::sleep(std::time::Duration::from_millis(20));
    apply(
        &*store,
        run.id,
        vec![
            (1, Change::Started { stage: s("one") }),
            (
                1,
                Change::Attempted {
                    stage: s("one"),
                    attempts: 2,
                    error: s("busy"),
                },
            ),
            (1, Change::Interrupted { stage: s("one") }),
        ],
        Some(RunStatus::Interrupted),
    );
    drop(store);
    let store = open(b);
    assert_eq!(
        since(&*store)[0],
        (s("a"), Some(a)),
        "a later attempt keeps it"
    );
    let record = std::sync::Arc::new(crate::stage::Record::with_fields("a", Default::default()));
    apply(
        &*store,
        run.id,
        vec![(
            1,
            Change::Advanced {
                stage: s("two"),
                record,
            },
        )],
        None,
    );
    assert_eq!(
        since(&*store)[0],
        (s("a"), None),
        "moved on: not begun there"
    );
    apply(
        &*store,
        run.id,
        vec![(1, Change::Started { stage: s("two") })],
        None,
    );
    assert!(since(&*store)[0].1.is_some_and(|t| t > a), "begun at `two`");
    // `retry-failed`: `b` starts over.
    assert_eq!(store.reset_failed(run.id).expect("reset"), 1);
    let b_row = since(&*store)
        .into_iter()
        .find(|(k, _)| k == "b")
        .expect("`b` pending again");
    assert_eq!(b_row.1, None);
}

fn attempts_used_stay_with_the_item(b: &dyn Backend) {
    let store = open(b);
    let run = take(&*store, "p", &["a", "b", "c"]);
    apply(
        &*store,
        run.id,
        vec![
            (1, Change::Started { stage: s("one") }),
            (
                1,
                Change::Attempted {
                    stage: s("one"),
                    attempts: 2,
                    error: s("busy"),
                },
            ),
            (1, Change::Interrupted { stage: s("one") }),
            (2, Change::Started { stage: s("one") }),
        ],
        Some(RunStatus::Interrupted),
    );
    let used = |store: &dyn CheckpointStore| -> Vec<(String, u32, Option<String>)> {
        store
            .pending(run.id, 0, 10)
            .expect("pending")
            .into_iter()
            .map(|i| {
                (
                    i.key,
                    i.attempts,
                    store.last_error(run.id, i.seq).expect("last error"),
                )
            })
            .collect()
    };
    assert_eq!(
        used(&*store),
        [
            (s("a"), 2, Some(s("busy"))),
            (s("b"), 0, None),
            (s("c"), 0, None)
        ]
    );

    // The process died in `a`'s attempt 1 (already counted), `b`'s attempt 1, and `c`'s
    // attempt 4 at a stage it is not at.
    let died = [
        (s("a"), s("one"), 1),
        (s("b"), s("one"), 1),
        (s("c"), s("two"), 4),
    ];
    assert_eq!(store.count_died_attempts(run.id, &died).expect("count"), 3);
    assert_eq!(
        store
            .count_died_attempts(run.id, &died)
            .expect("count again"),
        0,
        "counting the same deaths again changes nothing"
    );
    // Every death is kept per item and stage, also where the row is at another stage (`c`
    // died at `two` before its move there was committed).
    let mut deaths: Vec<(String, String, u32)> = store
        .deaths(run.id)
        .expect("deaths")
        .into_iter()
        .map(|d| (d.key, d.stage, d.attempt))
        .collect();
    deaths.sort();
    assert_eq!(
        deaths,
        [
            (s("a"), s("one"), 1),
            (s("b"), s("one"), 1),
            (s("c"), s("two"), 4)
        ]
    );
    assert_eq!(
        store
            .count_died_attempts(run.id, &[(s("c"), s("two"), 5)])
            .expect("a later death"),
        1
    );
    let after = used(&*store);
    assert_eq!(after[0], (s("a"), 2, Some(s("busy"))));
    assert_eq!((after[1].0.as_str(), after[1].1), ("b", 1));
    assert!(
        after[1]
            .2
            .as_deref()
            .is_some_and(|e| e.contains("the process ended during attempt 1 in stage `one`")),
        "{after:?}"
    );
    assert_eq!(after[2], (s("c"), 0, None));

    // Leaving the stage starts the next one's count afresh.
    apply(
        &*store,
        run.id,
        vec![(
            1,
            Change::Advanced {
                stage: s("two"),
                record: std::sync::Arc::new(crate::stage::Record::new("a")),
            },
        )],
        None,
    );
    assert_eq!(used(&*store)[0], (s("a"), 0, None));

    // `retry-failed` forgets a failed item's deaths with its attempts; unfinished items keep
    // theirs (a run resumed by `retry-failed` again and again must still end an item that
    // kills it).
    apply(&*store, run.id, vec![(2, failed("one", "died", 1))], None);
    assert_eq!(store.reset_failed(run.id).expect("reset"), 1);
    let mut kept: Vec<String> = store
        .deaths(run.id)
        .expect("deaths")
        .into_iter()
        .map(|d| d.key)
        .collect();
    kept.sort();
    assert_eq!(kept, ["a", "c"]);
    assert_eq!(used(&*store)[1], (s("b"), 0, None));
}

/// `send_durable` returns once its update is committed, with every update queued before it,
/// however long the writer would otherwise wait to fill a batch.
fn a_durable_update_commits_what_was_queued_before_it(b: &dyn Backend) {
    let store = open(b);
    let run = take(&*store, "p", &["a", "b", "c"]);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        // A batch would wait an hour or 100 items.
        let (checkpoint, _task) =
            super::writer::Checkpointer::start(&*store, run.id, Duration::from_secs(3600), 100)
                .expect("writer");
        checkpoint
            .send(1, Change::Started { stage: s("one") })
            .await
            .expect("queued");
        tokio::time::sleep(Duration::from_millis(100)).await;
        let in_flight =
            |store: &dyn CheckpointStore| store.counts(run.id).expect("counts")["in_flight"];
        assert_eq!(in_flight(&*store), 0, "a plain update waits for its batch");
        checkpoint
            .send_durable(2, Change::TakenUp { stage: s("one") })
            .await
            .expect("committed");
        assert_eq!(
            in_flight(&*store),
            2,
            "the durable update and the one before it"
        );
    });
}

/// `retry-failed`: failed items go back to pending at their stage and the run becomes
/// interrupted; with nothing failed, nothing changes.
fn retry_failed_puts_failed_items_back_to_pending(b: &dyn Backend) {
    let store = open(b);
    let run = take(&*store, "p", &["a", "b", "c"]);
    apply(
        &*store,
        run.id,
        vec![
            (1, failed("one", "boom", 3)),
            (2, failed("two", "bang", 1)),
            (3, Change::Done),
        ],
        Some(RunStatus::Aborted),
    );
    assert_eq!(store.reset_failed(run.id).expect("reset"), 2);
    let report = store.status(&latest(&*store, "p"), 1000).expect("status");
    assert_eq!(report.run.status, RunStatus::Interrupted);
    assert!(report.failed.is_empty());
    assert_eq!(report.counts["pending"], 2);
    let pending = store.pending(run.id, 0, 10).expect("pending");
    assert_eq!(keys(&pending), ["a", "b"]);
    assert_eq!(
        pending
            .iter()
            .map(|i| i.stage.as_deref())
            .collect::<Vec<_>>(),
        [Some("one"), Some("two")],
        "each at the stage it failed in"
    );

    // Nothing failed: nothing changes, the run's status included.
    apply(
        &*store,
        run.id,
        vec![(1, Change::Done), (2, Change::Done)],
        Some(RunStatus::Finished),
    );
    assert_eq!(store.reset_failed(run.id).expect("reset"), 0);
    assert_eq!(latest(&*store, "p").status, RunStatus::Finished);
}

/// Pending and in-flight items come in seq order, a page at a time.
fn pending_pages_through_unfinished_items_in_order(b: &dyn Backend) {
    let store = open(b);
    let names: Vec<String> = (1..=10).map(|i| format!("k{i}")).collect();
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let run = take(&*store, "p", &refs);
    apply(
        &*store,
        run.id,
        vec![
            (2, Change::Done),
            (3, failed("one", "e", 1)),
            (4, skipped("one", "r")),
            (5, Change::Started { stage: s("one") }),
        ],
        None,
    );
    let page = store.pending(run.id, 0, 3).expect("pending");
    assert_eq!(seqs(&page), [1, 5, 6], "in flight counts as unfinished");
    assert_eq!(page[0].record, r#"{"n":1}"#);
    assert_eq!(
        seqs(&store.pending(run.id, 6, 3).expect("pending")),
        [7, 8, 9]
    );
    assert_eq!(seqs(&store.pending(run.id, 9, 3).expect("pending")), [10]);
    assert!(store.pending(run.id, 10, 3).expect("pending").is_empty());
    assert!(store.pending(run.id + 1, 0, 3).expect("pending").is_empty());
}

/// The response cache: a miss, a put, a replacing put, and the answers there after reopening.
fn response_cache_keeps_answers_across_opens(b: &dyn Backend) {
    let store = open(b);
    let cache = store.response_cache().expect("cache");
    assert_eq!(cache.get("k").expect("get"), None);
    cache.put("k", "llm", "v1").expect("put");
    assert_eq!(cache.get("k").expect("get").as_deref(), Some("v1"));
    cache.put("k", "llm", "v2").expect("put again");
    assert_eq!(cache.get("k").expect("get").as_deref(), Some("v2"));
    cache.put("other", "http", "x").expect("put");
    drop(cache);
    drop(store);
    let store = open(b);
    let cache = store.response_cache().expect("cache");
    assert_eq!(cache.get("k").expect("get").as_deref(), Some("v2"));
    assert_eq!(cache.get("other").expect("get").as_deref(), Some("x"));
}

/// A store of a newer schema is refused, for a run and for `status`.
fn a_newer_schema_is_refused(b: &dyn Backend) {
    drop(open(b));
    b.set_schema_version(99);
    let err = try_open(b).err().expect("a newer schema is refused");
    assert!(
        matches!(
            err,
            StoreError::TooNew {
                found: 99,
                supported: 9,
                ..
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("schema version 99"), "{err}");
    let err = open_existing(&b.location()).err().expect("by status too");
    assert!(matches!(err, StoreError::TooNew { found: 99, .. }), "{err}");
}

/// Another application's tables where the store's would be: refused, and left as they are.
fn a_foreign_database_is_refused(b: &dyn Backend) {
    b.plant_foreign_table();
    let err = try_open(b).err().expect("a foreign database is refused");
    assert!(matches!(err, StoreError::Corrupt { .. }), "{err}");
    assert!(
        err.to_string().contains("not a stagewise checkpoint store"),
        "{err}"
    );
    assert!(err.to_string().contains("not modified"), "{err}");
}

/// A store of an older schema version is upgraded when opened, its runs and items kept, and
/// the tables of each later version there.
fn an_older_schema_is_upgraded_in_place(b: &dyn Backend) {
    for version in [1, 2, 3, 4, 5] {
        let store = open(b);
        let pipeline = format!("v{version}");
        let run = take(&*store, &pipeline, &["a", "b", "c"]);
        apply(
            &*store,
            run.id,
            vec![(1, Change::Done)],
            Some(RunStatus::Interrupted),
        );
        drop(store);
        b.downgrade_to(version);
        let store = open(b);
        let upgraded = latest(&*store, &pipeline);
        assert_eq!(
            (upgraded.id, upgraded.status, upgraded.items),
            (run.id, RunStatus::Interrupted, 3),
            "from version {version}"
        );
        assert_eq!(
            keys(&store.pending(run.id, 0, 10).expect("pending")),
            ["b", "c"]
        );
        let cache = store.response_cache().expect("cache");
        cache
            .put("k", "llm", "v")
            .expect("the cache's table is there");
        assert_eq!(cache.get("k").expect("get").as_deref(), Some("v"));
        drop(cache);
        if b.one_runner_per_store() {
            store
                .save_process(&pipeline, "{}")
                .expect("the process records' table is there");
            assert_eq!(
                store.load_process(&pipeline).expect("load").as_deref(),
                Some("{}")
            );
        } else {
            drop(
                open_for_run(&b.location(), (&pipeline, "a:x"), terms())
                    .expect("the runners' table is there"),
            );
        }
        store
            .count_died_attempts(run.id, &[("b".into(), "one".into(), 1)])
            .expect("the deaths' table is there");
        assert_eq!(store.deaths(run.id).expect("deaths").len(), 1);
        drop(store);
        drop(open(b));
    }
}

/// A second runner of the pipeline is refused as `Busy`, naming the holder, until the first
/// lets go.
fn one_runner_at_a_time(b: &dyn Backend) {
    let location = b.location();
    let held = open_for_run(&location, ("p", "a:x"), terms()).expect("first runner");
    if !b.one_runner_per_store() {
        // A PostgreSQL store's runners share the run under leases: a second one joins.
        let second = open_for_run(&location, ("p", "a:x"), terms()).expect("a second runner joins");
        // One with other stages does not, while they live; it names what differs.
        let Err(err) = open_for_run(&location, ("p", "a:x > b:y"), terms()) else {
            panic!("a runner with other stages joined");
        };
        let text = err.to_string();
        assert!(matches!(err, StoreError::OtherStages { .. }), "{text}");
        assert!(
            text.contains("its stages are a:x; this file's are a:x > b:y"),
            "{text}"
        );
        open_for_run(&location, ("q", "a:x > b:y"), terms()).expect("another pipeline's runner");
        drop((held, second));
        open_for_run(&location, ("p", "a:x > b:y"), terms()).expect("once they are gone");
        return;
    }
    let Err(err) = open_for_run(&location, ("p", "a:x"), terms()) else {
        panic!("a second runner got the store");
    };
    match &err {
        StoreError::Busy { holder, .. } => assert!(holder.contains(&b.holder()), "{err}"),
        _ => panic!("not busy: {err}"),
    }
    assert!(
        err.to_string()
            .contains("in use by another `stagewise run`"),
        "{err}"
    );
    drop(held);
    open_for_run(&location, ("p", "a:x"), terms()).expect("free again");
}

/// `status` finds no store where none was made, and the store once there.
fn open_existing_finds_no_store_where_none_was_made(b: &dyn Backend) {
    assert!(open_existing(&b.location()).expect("look").is_none());
    let run = take(&*open(b), "p", &["a"]);
    let store = open_existing(&b.location())
        .expect("open")
        .expect("there now");
    assert_eq!(latest(&*store, "p").id, run.id);
}

/// `err` says that the store at `b` did not answer before the shutdown deadline, naming it.
fn assert_unanswered(b: &dyn Backend, err: &StoreError) {
    assert!(matches!(err, StoreError::Unanswered { .. }), "{err}");
    let message = err.to_string();
    assert!(
        message.contains("did not answer before the shutdown deadline"),
        "{message}"
    );
    assert!(message.contains(&b.shown()), "{message}");
}

/// A writer whose deadline is near gives up on a store another session keeps locked, within
/// the deadline and naming the store; what it committed before stays, the cut batch does not.
fn a_deadline_bounds_a_commit_behind_a_lock(b: &dyn Backend) {
    let store = open(b);
    let run = take(&*store, "p", &["a", "b"]);
    let mut writer = store.update_writer(run.id).expect("writer");
    let done = |seq| Update {
        seq,
        change: Change::Done,
    };
    writer.apply(&[done(1)], None).expect("a commit before");
    let lock = b.hold_lock("items");
    writer
        .deadline()
        .set(Instant::now() + Duration::from_millis(300));
    let started = Instant::now();
    let err = writer
        .apply(&[done(2)], None)
        .expect_err("the store is locked");
    let took = started.elapsed();
    assert_unanswered(b, &err);
    // About 300 ms; the bound leaves room for a loaded machine, far below the store's own
    // timeouts (10 s, 60 s).
    assert!(
        took >= Duration::from_millis(200),
        "gave up early: {took:?}"
    );
    assert!(took < Duration::from_secs(5), "took {took:?}");
    drop(lock);
    let counts = store.counts(run.id).expect("counts");
    assert_eq!((counts["done"], counts["pending"]), (1, 1));
    // Past the deadline, a store that answers at once still takes a commit.
    let mut writer = store.update_writer(run.id).expect("writer");
    writer.deadline().set(Instant::now());
    writer
        .apply(&[done(2)], None)
        .expect("a store that answers");
    assert_eq!(store.counts(run.id).expect("counts")["done"], 2);
}

/// A deadline set while a commit already waits for a lock (on its own it would wait 10 s, or
/// 60 s) cuts that wait short too.
fn a_deadline_cuts_short_the_commit_waiting_now(b: &dyn Backend) {
    let store = open(b);
    let run = take(&*store, "p", &["a"]);
    let mut writer = store.update_writer(run.id).expect("writer");
    let deadline = writer.deadline();
    let lock = b.hold_lock("items");
    let started = Instant::now();
    let waiting = std::thread::spawn(move || {
        writer.apply(
            &[Update {
                seq: 1,
                change: Change::Done,
            }],
            None,
        )
    });
    std::thread::sleep(Duration::from_millis(300));
    assert!(!waiting.is_finished(), "the commit waits for the lock");
    deadline.set(Instant::now() + Duration::from_millis(200));
    let err = waiting
        .join()
        .expect("the writer does not panic")
        .expect_err("the store is locked");
    let took = started.elapsed();
    assert_unanswered(b, &err);
    assert!(took < Duration::from_secs(5), "took {took:?}");
    drop(lock);
    assert_eq!(store.counts(run.id).expect("counts")["pending"], 1);
}

/// A pipeline's process record: none at first, then the last saved, apart from another
/// pipeline's, and there after reopening.
fn process_records_are_kept_per_pipeline(b: &dyn Backend) {
    if !b.one_runner_per_store() {
        // Each runner of a PostgreSQL store keeps its own: see `pg_runners_keep_their_own_records`.
        return;
    }
    let store = open(b);
    assert_eq!(store.load_process("p").expect("load"), None);
    store.save_process("p", r#"{"pid":1}"#).expect("save");
    assert_eq!(
        store.load_process("p").expect("load").as_deref(),
        Some(r#"{"pid":1}"#)
    );
    store.save_process("p", r#"{"pid":2}"#).expect("save again");
    store.save_process("q", r#"{"pid":3}"#).expect("save");
    assert_eq!(
        store.load_process("p").expect("load").as_deref(),
        Some(r#"{"pid":2}"#),
        "replaced, and apart from q's"
    );
    drop(store);
    let store = open(b);
    assert_eq!(
        store.load_process("q").expect("load").as_deref(),
        Some(r#"{"pid":3}"#)
    );
    assert_eq!(store.load_process("r").expect("load"), None);
}

/// Saving a process record behind another session's lock fails after about 2 s instead of
/// waiting for the store's usual timeouts; once the lock goes, it saves again.
fn saving_a_process_record_does_not_wait_long_for_a_lock(b: &dyn Backend) {
    if !b.one_runner_per_store() {
        // A runner's record lives in its row: see `pg_runners_keep_their_own_records`.
        return;
    }
    let store = open(b);
    store.save_process("p", "1").expect("save");
    let lock = b.hold_lock("processes");
    let started = Instant::now();
    store
        .save_process("p", "2")
        .expect_err("the store is locked");
    let took = started.elapsed();
    assert!(took < Duration::from_secs(5), "took {took:?}");
    assert_eq!(
        store.load_process("p").expect("reads go on").as_deref(),
        Some("1")
    );
    drop(lock);
    store.save_process("p", "3").expect("save after");
    assert_eq!(store.load_process("p").expect("load").as_deref(), Some("3"));
}

/// `runner_active` is true exactly while a runner holds the pipeline's lock.
fn runner_active_follows_the_runner_lock(b: &dyn Backend) {
    let store = open(b);
    assert!(!store.runner_active("p").expect("ask"), "no runner yet");
    let held = open_for_run(&b.location(), ("p", "a:x"), terms()).expect("a runner");
    assert!(store.runner_active("p").expect("ask"), "while it runs");
    assert!(
        store.runner_active("p").expect("ask"),
        "asking lets go of nothing"
    );
    assert_eq!(
        store.runner_active("q").expect("ask"),
        b.one_runner_per_store(),
        "another pipeline"
    );
    drop(held);
    // A PostgreSQL server lets go of a session's locks when its backend has seen the session
    // end, a moment after the client closed it.
    let gone = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while store.runner_active("p").expect("ask") && std::time::Instant::now() < gone {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert!(!store.runner_active("p").expect("ask"), "once it is gone");
    let again =
        open_for_run(&b.location(), ("p", "a:x"), terms()).expect("asking left the lock free");
    drop(again);
}

/// Each process's end is kept, newest first, per pipeline; checks are counted, not listed.
fn the_history_keeps_each_end_and_counts_the_checks(b: &dyn Backend) {
    let store = open(b);
    let end = |id: i64, exit_code: i64| crate::checkpoint::ProcessEnd {
        id,
        started: "2026-01-01T00:00:00Z".into(),
        ended: String::new(),
        outcome: if exit_code == 0 {
            "finished"
        } else {
            "aborted"
        }
        .into(),
        exit_code,
        items: 10,
        done: 10 - exit_code,
        failed: exit_code,
        skipped: 0,
        reason: (exit_code != 0).then(|| "max_failures crossed".to_owned()),
        pid: 42,
        host: "h".into(),
    };
    assert_eq!(store.history("p", 10).expect("empty").ends, []);
    store.record_end("p", Some(&end(1, 3))).expect("first");
    store.record_end("p", None).expect("a check");
    store.record_end("p", Some(&end(2, 0))).expect("second");
    store.record_end("p", None).expect("another check");
    store
        .record_end("q", Some(&end(9, 0)))
        .expect("another pipeline's");
    let history = store.history("p", 10).expect("history");
    let got: Vec<(i64, i64, Option<&str>)> = history
        .ends
        .iter()
        .map(|e| (e.id, e.exit_code, e.reason.as_deref()))
        .collect();
    assert_eq!(got, [(2, 0, None), (1, 3, Some("max_failures crossed"))]);
    assert!(history
        .ends
        .iter()
        .all(|e| !e.ended.is_empty() && e.host == "h" && e.pid == 42));
    assert_eq!(history.checks, 2);
    assert!(history.last_checked.is_some());
    assert_eq!(store.history("p", 1).expect("limited").ends.len(), 1);
    assert_eq!(store.history("q", 10).expect("q").checks, 0);
}
