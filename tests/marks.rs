//! Marking failed and skipped rows where the source reads (`persist`'s `on_failure` and
//! `on_skip`, `jsonl`'s `rejects`), on SQLite and on a real PostgreSQL: with marks and a source
//! query that leaves marked rows out, rows that fail or are skipped never hold back the rest;
//! without them, the second run that takes the same rows exits 1 saying how to fix it.

mod util;

use rusqlite::Connection;
use serde_json::Value;
use util::pg::Db;
use util::Pipeline;

/// Rows in `articles`; rows 1–5 fail (or are skipped), 5 rows per run.
const ROWS: i64 = 20;
const BATCH: i64 = 5;
/// A paragraph long enough for `extract` to take it for an article.
const ARTICLE: &str = "The council met on Tuesday to discuss the new budget for the coming year, \
    and after a long debate the members agreed to fund the library, the two parks by the river and \
    the repair of the old bridge, while the question of the bus lines was left for the next session \
    in the spring.";

/// Where the test's `articles` table lives.
enum Backend {
    Sqlite,
    Postgres(Box<Db>),
}

impl Backend {
    /// Every backend the test runs on (PostgreSQL skips loudly without a server, but not in CI).
    fn all() -> Vec<Backend> {
        let mut all = vec![Backend::Sqlite];
        all.extend(Db::new().map(|db| Backend::Postgres(Box::new(db))));
        all
    }

    fn url(&self) -> String {
        match self {
            Backend::Sqlite => "sqlite:articles.db".to_owned(),
            Backend::Postgres(db) => db.url().to_owned(),
        }
    }

    fn name(&self) -> &'static str {
        match self {
            Backend::Sqlite => "sqlite",
            Backend::Postgres(_) => "postgres",
        }
    }

    /// `articles`: rows 1–5 carry a negative score that the CHECK constraint refuses, and a
    /// page without markup (`extract` skips it); the others are good.
    fn seed(&mut self, p: &Pipeline) {
        let sql = format!(
            "CREATE TABLE articles (
                 id INTEGER PRIMARY KEY,
                 score INTEGER CHECK (score >= 0),
                 raw INTEGER NOT NULL,
                 html TEXT NOT NULL,
                 processed_at TEXT,
                 failed_at TEXT,
                 skipped_at TEXT,
                 failed_stage TEXT,
                 error TEXT,
                 attempts INTEGER,
                 seen_html TEXT
             );
             INSERT INTO articles (id, raw, html)
                 SELECT n, CASE WHEN n <= {BATCH} THEN -1 ELSE n END,
                        CASE WHEN n <= {BATCH} THEN 'plain text ' || n
                             ELSE '<html><body><article><h1>Article ' || n || '</h1><p>{ARTICLE}</p></article></body></html>' END
                 FROM ({}) AS numbers",
            numbers(self)
        );
        match self {
            Backend::Sqlite => Connection::open(p.dir.join("articles.db"))
                .expect("open")
                .execute_batch(&sql)
                .expect("seed"),
            Backend::Postgres(db) => {
                db.execute(&sql);
            }
        }
    }

    /// The ids `sql` returns, in order.
    fn ids(&mut self, p: &Pipeline, sql: &str) -> Vec<i64> {
        match self {
            Backend::Sqlite => {
                let conn = Connection::open(p.dir.join("articles.db")).expect("open");
                let mut stmt = conn.prepare(sql).expect(sql);
                stmt.query_map([], |row| row.get(0))
                    .and_then(Iterator::collect)
                    .expect(sql)
            }
            Backend::Postgres(db) => db
                .query_strings(sql)
                .iter()
                .map(|s| s.parse().expect("an id"))
                .collect(),
        }
    }

    /// The text of one column of row `id`.
    fn text(&mut self, p: &Pipeline, column: &str, id: i64) -> Option<String> {
        let sql = format!("SELECT CAST({column} AS TEXT) FROM articles WHERE id = {id}");
        match self {
            Backend::Sqlite => Connection::open(p.dir.join("articles.db"))
                .expect("open")
                .query_row(&sql, [], |row| row.get(0))
                .expect(&sql),
            Backend::Postgres(db) => db.query_rows(&sql).remove(0).remove(0),
        }
    }
}

/// 1..=ROWS as a query.
fn numbers(backend: &Backend) -> String {
    match backend {
        Backend::Sqlite => {
            format!("WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < {ROWS}) SELECT i AS n FROM n")
        }
        Backend::Postgres(_) => format!("SELECT generate_series(1, {ROWS}) AS n"),
    }
}

/// What makes rows 1–5 end without reaching the end of the pipeline.
#[derive(Clone, Copy)]
enum Ending {
    /// The CHECK constraint refuses their score at `persist`.
    Failed,
    /// `extract` finds no article text in their page.
    Skipped,
}

/// The source reads rows neither processed nor marked; `persist` writes the score and marks
/// the row processed. With `marks`, failed and skipped rows are marked where the source reads.
fn job(backend: &Backend, name: &str, ending: Ending, marks: bool) -> Pipeline {
    let url = backend.url();
    let middle = match ending {
        Ending::Failed => String::new(),
        Ending::Skipped => "[[stage]]\nname = \"extract\"\nkind = \"extract\"\n".to_owned(),
    };
    let mark_keys = if marks {
        "on_failure = \"UPDATE articles SET failed_at = CURRENT_TIMESTAMP, failed_stage = :stage, error = :error, attempts = :attempts, seen_html = :html WHERE id = :key\"\n\
         on_skip = \"UPDATE articles SET skipped_at = CURRENT_TIMESTAMP, failed_stage = :stage, error = :error, attempts = :attempts, seen_html = :html WHERE id = :key\""
    } else {
        ""
    };
    Pipeline::new(&format!(
        r#"
[pipeline]
name = "{name}"
batch_size = {BATCH}

[[stage]]
name = "fetch"
kind = "db-fetch"
url = "{url}"
query = "SELECT id, raw AS score, html FROM articles WHERE processed_at IS NULL AND failed_at IS NULL AND skipped_at IS NULL ORDER BY id LIMIT $limit"
key = "id"

{middle}

[[stage]]
name = "save"
kind = "persist"
url = "{url}"
statement = "UPDATE articles SET score = :score, processed_at = CURRENT_TIMESTAMP WHERE id = :key"
{mark_keys}
"#
    ))
}

fn marked_rows_never_hold_back_the_rest(ending: Ending) {
    for mut backend in Backend::all() {
        let which = backend.name();
        let p = job(&backend, "marked", ending, true);
        backend.seed(&p);
        let runs = (ROWS / BATCH + 1) as usize;
        for _ in 0..runs {
            let out = p.run();
            assert!(matches!(out.code, Some(0 | 1)), "{which}: {out}");
            assert!(!out.stderr.contains("no_progress"), "{which}: {out}");
        }
        let processed = backend.ids(
            &p,
            "SELECT id FROM articles WHERE processed_at IS NOT NULL ORDER BY id",
        );
        assert_eq!(processed, (BATCH + 1..=ROWS).collect::<Vec<_>>(), "{which}");
        let (column, stage, attempts, message) = match ending {
            Ending::Failed => ("failed_at", "save", "1", "check constraint"),
            Ending::Skipped => ("skipped_at", "extract", "1", "no article text"),
        };
        let marked = backend.ids(
            &p,
            &format!("SELECT id FROM articles WHERE {column} IS NOT NULL ORDER BY id"),
        );
        assert_eq!(marked, (1..=BATCH).collect::<Vec<_>>(), "{which}");
        for id in 1..=BATCH {
            let text = |b: &mut Backend, c: &str| b.text(&p, c, id).unwrap_or_default();
            assert_eq!(
                text(&mut backend, "failed_stage"),
                stage,
                "{which} row {id}"
            );
            assert_eq!(text(&mut backend, "attempts"), attempts, "{which} row {id}");
            let error = text(&mut backend, "error").to_lowercase();
            assert!(error.contains(message), "{which} row {id}: {error}");
            // A field of the record as it was when it ended.
            assert_eq!(
                text(&mut backend, "seen_html"),
                format!("plain text {id}"),
                "{which}"
            );
        }
        // The store agrees: the items failed or were skipped with their reason.
        let status = p.status();
        let state = match ending {
            Ending::Failed => "failed",
            Ending::Skipped => "skipped",
        };
        assert_eq!(
            status.count(state),
            0,
            "{which}: the latest run had no such item"
        );
        // And a run now has nothing left to do.
        let out = p.run();
        out.assert_code(0);
        assert!(
            out.stderr.contains("the source has nothing new"),
            "{which}: {out}"
        );
    }
}

#[test]
fn failed_rows_marked_by_on_failure_never_hold_back_the_rest() {
    marked_rows_never_hold_back_the_rest(Ending::Failed);
}

#[test]
fn skipped_rows_marked_by_on_skip_never_hold_back_the_rest() {
    marked_rows_never_hold_back_the_rest(Ending::Skipped);
}

fn unmarked_rows_are_no_progress(ending: Ending) {
    for mut backend in Backend::all() {
        let which = backend.name();
        let p = job(&backend, "unmarked", ending, false);
        backend.seed(&p);
        let first = p.run();
        first.assert_code(match ending {
            Ending::Failed => 1,
            Ending::Skipped => 0,
        });
        let second = p.run();
        second.assert_code(1);
        assert!(
            second.stderr.contains("outcome=\"no_progress\"")
                && second.stderr.contains("`on_failure`")
                && second.stderr.contains("`on_skip`")
                && second.stderr.contains("retry-failed"),
            "{which}: {second}"
        );
        let processed = backend.ids(&p, "SELECT id FROM articles WHERE processed_at IS NOT NULL");
        assert!(processed.is_empty(), "{which}: {processed:?}");
    }
}

#[test]
fn failed_rows_without_marks_make_the_second_run_exit_1() {
    unmarked_rows_are_no_progress(Ending::Failed);
}

#[test]
fn skipped_rows_without_marks_make_the_second_run_exit_1() {
    unmarked_rows_are_no_progress(Ending::Skipped);
}

/// A `jsonl` sink's `rejects` file gets one line per item that failed or was skipped, at any
/// stage, with its error or reason and its fields; the sink's own file only the good ones.
#[test]
fn a_jsonl_sink_writes_rejects_with_their_reasons() {
    let p = Pipeline::new(
        r#"
[pipeline]
name = "rejects"

[[stage]]
name = "src"
kind = "jsonl"
path = "in.jsonl"
key = "id"

[[stage]]
name = "extract"
kind = "extract"

[[stage]]
name = "breaker"
kind = "fault"
permanent_rate = 0.5
seed = 11

[[stage]]
name = "out"
kind = "jsonl"
path = "out.jsonl"
rejects = "rejects/rejects.jsonl"
"#,
    );
    let rows: String = (1..=20)
        .map(|i| {
            let html = if i % 4 == 0 {
                format!("plain text {i}")
            } else {
                format!("<html><body><article><p>{ARTICLE}</p></article></body></html>")
            };
            format!("{{\"id\": {i}, \"html\": \"{html}\"}}\n")
        })
        .collect();
    p.dir.write("in.jsonl", rows);
    p.run().assert_code(1);
    let status = p.status();
    let (done, failed, skipped) = (
        status.count("done"),
        status.count("failed"),
        status.count("skipped"),
    );
    assert_eq!(skipped, 5, "{:?}", status.counts);
    assert!(failed > 0 && done > 0, "{:?}", status.counts);

    let text = String::from_utf8(p.dir.read("rejects/rejects.jsonl")).expect("UTF-8");
    let lines: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect();
    assert_eq!(lines.len() as u64, failed + skipped, "{text}");
    for line in &lines {
        let key: i64 = line["key"].as_str().expect("key").parse().expect("an id");
        match line["ending"].as_str() {
            Some("skipped") => {
                assert_eq!(key % 4, 0, "{line}");
                assert_eq!(line["stage"], "extract", "{line}");
                assert_eq!(line["reason"], "no article text", "{line}");
                assert_eq!(
                    line["fields"]["html"],
                    format!("plain text {key}"),
                    "{line}"
                );
            }
            Some("failed") => {
                assert_eq!(line["stage"], "breaker", "{line}");
                assert_eq!(line["error"], "injected permanent fault", "{line}");
                assert_eq!(line["attempts"], 1, "{line}");
                assert!(
                    line["fields"]["text"].is_string(),
                    "extracted before it failed: {line}"
                );
            }
            other => panic!("ending {other:?}: {line}"),
        }
    }
    let out = p.sink("out.jsonl");
    assert_eq!(out.keys().len() as u64, done);
}

/// A mark that cannot be written (here: a column the table does not have) does not lose the
/// item: it ends failed all the same, its error saying that the mark failed too.
#[test]
fn an_item_whose_mark_fails_still_ends_and_says_so() {
    let mut backend = Backend::Sqlite;
    let p = job(&backend, "bad-mark", Ending::Failed, false);
    backend.seed(&p);
    p.dir.write(
        "pipeline.toml",
        format!(
            // Prepares, and fails when it runs.
            "{}on_failure = \"UPDATE articles SET attempts = abs(-9223372036854775808) WHERE id = :key\"\n",
            p.toml()
        ),
    );
    let out = p.run();
    out.assert_code(1);
    assert!(out.stderr.contains("could not mark the item"), "{out}");
    let status = p.status();
    assert_eq!(status.count("failed"), BATCH as u64, "{:?}", status.counts);
    let failed = status.raw["failed"].as_array().expect("failed items");
    for item in failed {
        let error = item["error"].as_str().expect("an error");
        assert!(
            error.contains("CHECK constraint failed")
                && error.contains("(and marking it at `save` failed:")
                && error.contains("integer overflow"),
            "{error}"
        );
    }
}

/// An orderly stop while a failed item is being marked puts it back to pending, unmarked, its
/// attempts at the stage used up: the next run fails it at once and marks it.
#[test]
fn a_stop_during_a_mark_puts_the_item_back_to_pending() {
    let Some(db) = Db::new() else {
        return;
    };
    let mut backend = Backend::Postgres(Box::new(db));
    let p = job(&backend, "slow-mark", Ending::Failed, false);
    backend.seed(&p);
    let slow = "on_failure = \"SELECT pg_sleep(30); UPDATE articles SET failed_at = now() WHERE id = :key\"\n";
    p.dir.write(
        "pipeline.toml",
        format!("{}{slow}", p.toml())
            .replace("batch_size = 5", "batch_size = 5\nshutdown_grace = \"1s\""),
    );
    let mut running = p.cmd("run").spawn();
    assert!(
        running.wait_for_stderr("item failed", std::time::Duration::from_secs(20)),
        "{}",
        running.stderr_so_far()
    );
    std::thread::sleep(std::time::Duration::from_millis(300));
    running.signal(libc::SIGTERM);
    let out = running.wait();
    out.assert_code(75);
    let status = p.status();
    assert_eq!(status.count("failed"), 0, "{:?}", status.counts);
    assert_eq!(status.count("pending"), BATCH as u64, "{:?}", status.counts);
    let marked = backend.ids(&p, "SELECT id FROM articles WHERE failed_at IS NOT NULL");
    assert!(marked.is_empty(), "{marked:?}");

    p.dir.write("pipeline.toml", p.toml().to_owned() + "on_failure = \"UPDATE articles SET failed_at = now(), attempts = :attempts, error = :error WHERE id = :key\"\n");
    let out = p.run();
    out.assert_code(1);
    let marked = backend.ids(
        &p,
        "SELECT id FROM articles WHERE failed_at IS NOT NULL ORDER BY id",
    );
    assert_eq!(marked, (1..=BATCH).collect::<Vec<_>>(), "{out}");
    // The item whose mark was cut short failed at once, without writing again; items that had
    // not reached their mark were written (and failed) again.
    let at_once = backend.ids(
        &p,
        "SELECT id FROM articles WHERE attempts = 3 AND error LIKE '%used across processes; the last: %check constraint%'",
    );
    assert!(!at_once.is_empty(), "{out}");
}

/// A process killed while it marks a failed item leaves the item's attempts used up: the next
/// run does not call the stage again, it fails the item at once (with its error) and marks it.
#[test]
fn a_kill_during_a_mark_does_not_run_the_stage_again() {
    let p = Pipeline::new(
        r#"
[pipeline]
name = "killed-mark"

[[stage]]
name = "src"
kind = "jsonl"
path = "in.jsonl"
key = "id"

[[stage]]
name = "breaker"
kind = "fault"
permanent_rate = 1.0

[[stage]]
name = "save"
kind = "persist"
url = "sqlite:marks.db"
statement = "INSERT INTO done (id) VALUES (:key)"
on_failure = "INSERT INTO marks (id, error, slow) VALUES (:key, :error, (WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < SLOW) SELECT count(*) * 0 FROM c)) ON CONFLICT (id) DO UPDATE SET error = excluded.error"
timeout = "60s"
"#,
    );
    Connection::open(p.dir.join("marks.db"))
        .expect("open")
        .execute_batch(
            "CREATE TABLE done (id INTEGER PRIMARY KEY);
             CREATE TABLE marks (id INTEGER PRIMARY KEY, error TEXT, slow INTEGER)",
        )
        .expect("create");
    p.dir.write("in.jsonl", "{\"id\": 1}\n");
    // A mark that takes seconds, to be killed in.
    p.dir
        .write("pipeline.toml", p.toml().replace("SLOW", "50000000"));
    // Killed during the mark twice: the second time the item fails at once, and is killed
    // while it is marked again.
    for _ in 0..2 {
        let mut running = p.cmd("run").spawn();
        assert!(
            running.wait_for_stderr("item failed", std::time::Duration::from_secs(20)),
            "{}",
            running.stderr_so_far()
        );
        std::thread::sleep(std::time::Duration::from_millis(300));
        running.signal(libc::SIGKILL);
        assert_eq!(running.wait().code, None, "killed during the mark");
    }

    p.dir.write("pipeline.toml", p.toml().replace("SLOW", "1"));
    let out = p.run();
    out.assert_code(1);
    let status = p.status();
    status.assert_failed(
        &["1"],
        "breaker",
        3,
        "all 3 attempts (`retry.attempts` = 3) used across processes; the last: injected permanent fault",
    );
    let marked: String = Connection::open(p.dir.join("marks.db"))
        .expect("open")
        .query_row("SELECT error FROM marks WHERE id = 1", [], |r| r.get(0))
        .expect("marked");
    assert_eq!(
        marked,
        "all 3 attempts (`retry.attempts` = 3) used across processes; the last: injected permanent fault",
        "the error is not wrapped once per death"
    );
    // The stage was not called in the second run: no attempt, no latency.
    let breaker = p.stage_summary("killed-mark", "breaker");
    assert_eq!(breaker["failed"], 1, "{breaker}");
    assert!(
        breaker["latency"].is_null() || breaker["latency"]["p50_ms"].is_null(),
        "{breaker}"
    );
}

/// A marking statement of comments only is refused by `validate`, not at the first mark.
#[test]
fn a_mark_of_comments_only_is_refused_by_validate() {
    let p = job(&Backend::Sqlite, "comment-mark", Ending::Failed, false);
    p.dir.write(
        "pipeline.toml",
        format!("{}on_failure = \"-- nothing to do /* here */\"\n", p.toml()),
    );
    let out = p.validate();
    out.assert_code(2);
    assert!(
        out.stderr
            .contains("`on_failure` must hold an SQL statement (it is empty, or comments only)"),
        "{out}"
    );
}

/// The no-progress advice fits the pipeline: where its stages mark the endings the batch had,
/// it says the source still takes the marked rows; where they do not mark one of them, it says
/// to mark it.
#[test]
fn the_no_progress_advice_knows_what_the_pipeline_marks() {
    let through = |middle: &str, sink: &str| {
        let p = Pipeline::new(&format!(
            "[pipeline]\nname = \"advice\"\n\n\
             [[stage]]\nname = \"src\"\nkind = \"jsonl\"\npath = \"in.jsonl\"\nkey = \"id\"\n\n\
             [[stage]]\n{middle}\n\n[[stage]]\n{sink}\n"
        ));
        let rows: String = (1..=3)
            .map(|i| format!("{{\"id\": {i}, \"html\": \"plain text {i}\"}}\n"))
            .collect();
        p.dir.write("in.jsonl", rows);
        rusqlite::Connection::open(p.dir.join("out.db"))
            .and_then(|c| {
                c.execute_batch("CREATE TABLE t (id INTEGER PRIMARY KEY, failed INTEGER)")
            })
            .expect("the sink's database");
        p.run();
        let out = p.run();
        out.assert_code(1);
        assert!(out.stderr.contains("outcome=\"no_progress\""), "{out}");
        out
    };
    // Failures, marked by `rejects`: the marks are there, the source ignores them.
    let out = through(
        "name = \"breaker\"\nkind = \"fault\"\npermanent_rate = 1.0",
        "name = \"out\"\nkind = \"jsonl\"\npath = \"out.jsonl\"\nrejects = \"rejects.jsonl\"",
    );
    assert!(
        out.stderr
            .contains("Stage(s) `out` mark them, but the source still takes them"),
        "{out}"
    );
    // Skips, where only failures are marked: mark the skips.
    let out = through(
        "name = \"extract\"\nkind = \"extract\"",
        "name = \"save\"\nkind = \"persist\"\nurl = \"sqlite:out.db\"\n\
         statement = \"INSERT INTO t (id) VALUES (:key)\"\n\
         on_failure = \"UPDATE t SET failed = 1 WHERE id = :key\"",
    );
    assert!(
        out.stderr.contains("`on_skip`") && !out.stderr.contains("mark them, but"),
        "{out}"
    );
    // Failures whose marks do not land: fix the marks.
    let out = through(
        "name = \"breaker\"\nkind = \"fault\"\npermanent_rate = 1.0",
        "name = \"save\"\nkind = \"persist\"\nurl = \"sqlite:out.db\"\n\
         statement = \"INSERT INTO t (id) VALUES (:key)\"\n\
         on_failure = \"INSERT INTO t (id, failed) VALUES (:key, abs(-9223372036854775808))\"",
    );
    assert!(
        out.stderr.contains("3 of its items could not be marked")
            && !out.stderr.contains("mark them, but"),
        "{out}"
    );
}
