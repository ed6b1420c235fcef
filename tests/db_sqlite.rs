//! `db-fetch` and `persist` on SQLite (`sqlite:PATH`), the embedded default that needs no
//! server: the seed's job end to end, and bad input (a missing field, a missing table) that must
//! fail clearly and write nothing partial. The database file lives in the test's directory,
//! beside the pipeline, and is created and inspected with rusqlite.

mod util;

use rusqlite::Connection;
use serde_json::Value;
use util::Pipeline;

const ARTICLES: i64 = 1000;

/// The database file, relative to the pipeline (`url = "sqlite:articles.db"`).
const DB_FILE: &str = "articles.db";

fn open(p: &Pipeline) -> Connection {
    Connection::open(p.dir.join(DB_FILE)).expect("open the test's SQLite database")
}

/// The single integer `sql` returns.
fn query_i64(conn: &Connection, sql: &str) -> i64 {
    conn.query_row(sql, [], |row| row.get(0))
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
}

/// The first column of every row, as integers.
fn ids(conn: &Connection, sql: &str) -> Vec<i64> {
    let mut stmt = conn.prepare(sql).unwrap_or_else(|e| panic!("{sql}: {e}"));
    stmt.query_map([], |row| row.get(0))
        .and_then(Iterator::collect)
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
}

/// `articles` with `n` unprocessed rows whose titles have 2 to 8 words, and an empty `results`
/// whose `writes` counts how often the upsert touched each row.
fn seed(p: &Pipeline, n: i64) {
    let mut conn = open(p);
    conn.execute_batch(
        "CREATE TABLE articles (
             id INTEGER PRIMARY KEY,
             url TEXT NOT NULL,
             title TEXT NOT NULL,
             processed_at TEXT
         );
         CREATE TABLE results (
             article_id INTEGER PRIMARY KEY,
             title TEXT NOT NULL,
             words INTEGER NOT NULL,
             fetched TEXT NOT NULL,
             writes INTEGER NOT NULL DEFAULT 1
         );
         CREATE TABLE facts (article_id INTEGER PRIMARY KEY, title TEXT NOT NULL);
         CREATE TABLE audit (article_id INTEGER PRIMARY KEY, note TEXT NOT NULL);",
    )
    .expect("create tables");
    let tx = conn.transaction().expect("begin");
    for id in 1..=n {
        let title = format!("Article {id}{}", " word".repeat((id % 7) as usize));
        tx.execute(
            "INSERT INTO articles (id, url, title) VALUES (?1, ?2, ?3)",
            rusqlite::params![id, format!("https://example.com/articles/{id}"), title],
        )
        .expect("insert an article");
    }
    tx.commit().expect("commit");
}

/// A snapshot of both tables, to show a later run changed nothing.
fn fingerprint(conn: &Connection) -> Vec<String> {
    let mut stmt = conn
        .prepare(
            "SELECT article_id || '|' || title || '|' || words || '|' || fetched || '|' || writes
             FROM results
             UNION ALL
             SELECT id || '|' || coalesce(processed_at, '-') FROM articles",
        )
        .expect("prepare");
    stmt.query_map([], |row| row.get(0))
        .and_then(Iterator::collect)
        .expect("fingerprint")
}

/// The whole batch done, every article processed exactly once with the right values; then a
/// second run takes a batch of nothing and changes nothing.
fn end_to_end(name: &str, persist_extra: &str) {
    let p = Pipeline::new(&format!(
        r#"
        [pipeline]
        name = "{name}"

        [[stage]]
        name = "fetch"
        kind = "db-fetch"
        url = "sqlite:{DB_FILE}"
        query = "SELECT id, url, title, length(title) - length(replace(title, ' ', '')) + 1 AS words, json_object('url', url, 'id', id) AS fetched FROM articles WHERE processed_at IS NULL ORDER BY id LIMIT $limit"
        key = "id"

        [[stage]]
        name = "nap"
        kind = "sleep"
        duration = "1ms"

        [[stage]]
        name = "save"
        kind = "persist"
        url = "sqlite:{DB_FILE}"
        statement = """
        INSERT INTO results (article_id, title, words, fetched) VALUES (:key, :title, :words, :fetched)
            ON CONFLICT (article_id) DO UPDATE
            SET title = excluded.title, words = excluded.words, fetched = excluded.fetched,
                writes = results.writes + 1;
        UPDATE articles SET processed_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now') WHERE id = :key
        """
        {persist_extra}
        "#
    ));
    seed(&p, ARTICLES);

    let out = p.run();
    out.assert_code(0);
    let status = p.status();
    assert_eq!(
        status.count("done"),
        ARTICLES as u64,
        "{:?}\n{out}",
        status.counts
    );
    assert_eq!(status.total(), ARTICLES as u64, "{:?}", status.counts);

    let conn = open(&p);
    assert_eq!(query_i64(&conn, "SELECT count(*) FROM results"), ARTICLES);
    assert_eq!(
        query_i64(
            &conn,
            "SELECT count(*) FROM articles WHERE processed_at IS NULL"
        ),
        0,
        "every article must be marked processed"
    );
    assert_eq!(
        query_i64(
            &conn,
            "SELECT count(*) FROM results r JOIN articles a ON a.id = r.article_id
             WHERE r.title = a.title
               AND r.words = length(a.title) - length(replace(a.title, ' ', '')) + 1
               AND r.fetched = json_object('url', a.url, 'id', a.id)
               AND typeof(r.article_id) = 'integer' AND typeof(r.words) = 'integer'"
        ),
        ARTICLES,
        "values differ from the articles"
    );
    assert_eq!(
        query_i64(&conn, "SELECT sum(writes) FROM results"),
        ARTICLES,
        "without a crash every record is written exactly once"
    );

    let before = fingerprint(&conn);
    drop(conn);
    let again = p.run();
    again.assert_code(0);
    let status = p.status();
    assert!(
        again.stderr.contains("the source has nothing new"),
        "the second run must find nothing to do\n{again}"
    );
    // A take that found nothing is no run: `status` still shows the first, and when the
    // source was last checked.
    assert_eq!(status.raw["run"]["id"], 1, "{again}");
    assert!(status.raw["last_checked"].is_string(), "{}", status.raw);
    assert_eq!(
        fingerprint(&open(&p)),
        before,
        "the second run changed the tables"
    );
}

/// One transaction per record from the stage's 4 threads: the writers take turns through
/// SQLite's busy timeout.
#[test]
fn end_to_end_every_article_processed_once_then_nothing_to_do() {
    end_to_end("articles", "");
}

/// Records arriving together share a transaction, written by one thread at a time.
#[test]
fn end_to_end_with_batched_transactions() {
    end_to_end("articles-batched", "batch_size = 16\nconcurrency = 8");
}

/// `in.jsonl` (keyed by `id`) → persist `statement` to the test's SQLite file.
fn persist_only(name: &str, statement: &str, persist_extra: &str) -> Pipeline {
    Pipeline::new(&format!(
        r#"
        [pipeline]
        name = "{name}"

        [[stage]]
        name = "src"
        kind = "jsonl"
        path = "in.jsonl"
        key = "id"

        [[stage]]
        name = "save"
        kind = "persist"
        url = "sqlite:{DB_FILE}"
        statement = """
        {statement}
        """
        {persist_extra}
        "#
    ))
}

/// `in.jsonl`: records 1..=20; those in `without_title` lack `title`, those in `null_note` have
/// a null `note`.
fn write_records(p: &Pipeline, without_title: &[i64], null_note: &[i64]) {
    let mut lines = String::new();
    for id in 1..=20 {
        let mut record = serde_json::json!({ "id": id, "note": format!("note {id}") });
        if !without_title.contains(&id) {
            record["title"] = Value::from(format!("title {id}"));
        }
        if null_note.contains(&id) {
            record["note"] = Value::Null;
        }
        lines.push_str(&format!("{record}\n"));
    }
    p.dir.write("in.jsonl", lines);
}

/// Ids 1..=20 without `bad`.
fn all_but(bad: &[i64]) -> Vec<i64> {
    (1..=20).filter(|id| !bad.contains(id)).collect()
}

#[test]
fn a_record_missing_a_field_fails_alone_and_writes_nothing() {
    let p = persist_only(
        "missing-field",
        "INSERT INTO facts (article_id, title) VALUES (:key, :title)
             ON CONFLICT (article_id) DO UPDATE SET title = excluded.title;
         UPDATE articles SET processed_at = 'now' WHERE id = :key",
        "",
    );
    seed(&p, 20);
    let bad = [5, 10, 15];
    write_records(&p, &bad, &[]);

    let out = p.run();
    out.assert_code(1);
    let status = p.status();
    assert_eq!(status.count("done"), 17, "{:?}\n{out}", status.counts);
    // A missing field is permanent: one attempt.
    status.assert_failed(
        &["5", "10", "15"],
        "save",
        1,
        "the statement names `:title`, but the record has no field `title`",
    );
    let conn = open(&p);
    assert_eq!(
        ids(&conn, "SELECT article_id FROM facts ORDER BY 1"),
        all_but(&bad)
    );
    assert_eq!(
        ids(
            &conn,
            "SELECT id FROM articles WHERE processed_at IS NOT NULL ORDER BY 1"
        ),
        all_but(&bad),
        "the second statement must not have run for the failed records"
    );
}

/// The first statement succeeds, the second violates NOT NULL: the transaction rolls back.
#[test]
fn a_failing_second_statement_rolls_back_the_first() {
    let p = persist_only(
        "no-partial-writes",
        "INSERT INTO facts (article_id, title) VALUES (:key, :title)
             ON CONFLICT (article_id) DO UPDATE SET title = excluded.title;
         INSERT INTO audit (article_id, note) VALUES (:key, :note)
             ON CONFLICT (article_id) DO UPDATE SET note = excluded.note",
        "batch_size = 8\nconcurrency = 4",
    );
    seed(&p, 20);
    let bad = [4, 8, 12, 16];
    write_records(&p, &[], &bad);

    let out = p.run();
    out.assert_code(1);
    let status = p.status();
    assert_eq!(status.count("done"), 16, "{:?}\n{out}", status.counts);
    assert_eq!(status.failed.len(), 4, "{:?}", status.failed);
    for f in &status.failed {
        assert!(
            f.error.contains("NOT NULL constraint failed: audit.note"),
            "SQLite's message: {f:?}"
        );
        assert_eq!(f.attempts, 1, "a constraint violation is permanent: {f:?}");
    }
    let conn = open(&p);
    assert_eq!(
        ids(&conn, "SELECT article_id FROM facts ORDER BY 1"),
        all_but(&bad),
        "the first statement's rows of failed records must be rolled back"
    );
    assert_eq!(
        ids(&conn, "SELECT article_id FROM audit ORDER BY 1"),
        all_but(&bad)
    );
}

#[test]
fn a_missing_table_in_the_query_aborts_the_run() {
    let p = Pipeline::new(&format!(
        r#"
        [pipeline]
        name = "missing-table"

        [[stage]]
        name = "fetch"
        kind = "db-fetch"
        url = "sqlite:{DB_FILE}"
        query = "SELECT id, title FROM no_such_articles LIMIT $limit"
        key = "id"

        [[stage]]
        name = "out"
        kind = "blackhole"
        "#
    ));
    seed(&p, 3);
    let out = p.run();
    // Prepared before the batch is taken: the file's fault, nothing run.
    out.assert_code(2);
    out.assert_stderr_contains("stage `fetch`: `query` does not prepare");
    out.assert_stderr_contains("no such table: no_such_articles");
    out.assert_stderr_contains("nothing was run");
}

#[test]
fn a_statement_into_a_missing_table_stops_the_run_and_one_gone_later_fails_the_items() {
    let p = persist_only(
        "missing-sink-table",
        "INSERT INTO no_such_results (id) VALUES (:key)",
        "",
    );
    seed(&p, 3);
    p.dir
        .write("in.jsonl", "{\"id\": 1}\n{\"id\": 2}\n{\"id\": 3}\n");
    let out = p.run();
    out.assert_code(2);
    out.assert_stderr_contains("stage `save`: `statement` does not prepare");
    out.assert_stderr_contains("nothing was run");
}

/// A table dropped after the run's checks passed still fails the items one by one, with
/// SQLite's message: the checks are a first line, not the only one.
#[test]
fn a_table_gone_after_the_checks_fails_the_items() {
    let p = Pipeline::new(&format!(
        r#"
        [pipeline]
        name = "gone-sink-table"

        [[stage]]
        name = "src"
        kind = "jsonl"
        path = "in.jsonl"
        key = "id"

        [[stage]]
        name = "nap"
        kind = "sleep"
        duration = "1500ms"

        [[stage]]
        name = "save"
        kind = "persist"
        url = "sqlite:{DB_FILE}"
        statement = "INSERT INTO results_gone (id) VALUES (:key)"
        "#
    ));
    seed(&p, 3);
    let conn = rusqlite::Connection::open(p.dir.join(DB_FILE)).expect("open");
    conn.execute_batch("CREATE TABLE results_gone (id INTEGER PRIMARY KEY)")
        .expect("create");
    p.dir
        .write("in.jsonl", "{\"id\": 1}\n{\"id\": 2}\n{\"id\": 3}\n");
    let mut run = p.cmd("run").spawn();
    assert!(
        run.wait_for_stderr("run started", std::time::Duration::from_secs(30)),
        "{}",
        run.stderr_so_far()
    );
    conn.execute_batch("DROP TABLE results_gone").expect("drop");
    let out = run.wait();
    out.assert_code(1);
    let status = p.status();
    assert_eq!(status.count("failed"), 3, "{:?}\n{out}", status.counts);
    for f in &status.failed {
        assert_eq!(f.stage, "save", "{f:?}");
        assert_eq!(f.attempts, 1, "a missing table is permanent: {f:?}");
        assert!(f.error.contains("no such table: results_gone"), "{f:?}");
    }
}

#[test]
fn a_row_whose_key_is_unusable_fails_alone_and_can_be_marked() {
    // `on_failure` marks a failed row by its other columns (here its `rowid`): an unusable key
    // keeps the row's fields, so the mark lands and the next run does not take the row again.
    let p = Pipeline::new(&format!(
        r#"
        [pipeline]
        name = "bad-keys"

        [[stage]]
        name = "fetch"
        kind = "db-fetch"
        url = "sqlite:{DB_FILE}"
        query = "SELECT rowid AS pk, id, note FROM notes WHERE failed IS NULL AND done IS NULL ORDER BY rowid LIMIT $limit"
        key = "id"

        [[stage]]
        name = "save"
        kind = "persist"
        url = "sqlite:{DB_FILE}"
        statement = "UPDATE notes SET done = 1 WHERE rowid = :pk"
        on_failure = "UPDATE notes SET failed = :error WHERE rowid = :pk"
        "#
    ));
    open(&p)
        .execute_batch(
            "CREATE TABLE notes (id, note TEXT, done INTEGER, failed TEXT);
             INSERT INTO notes (id, note) VALUES (1, 'a'), (NULL, 'b'), (2.5, 'c'), ('x', 'd'), (7, x'00ff');",
        )
        .expect("seed");
    let out = p.run();
    out.assert_code(1);
    let status = p.status();
    let mut failed: Vec<(String, String, String)> = status
        .failed
        .iter()
        .map(|f| (f.key.clone(), f.stage.clone(), f.error.clone()))
        .collect();
    failed.sort();
    assert_eq!(
        failed,
        [
            (
                "7".to_owned(),
                "fetch".to_owned(),
                "row 5: column `note` holds a blob, which db-fetch cannot read: select it as text or hex (e.g. `hex(note)`)".to_owned()
            ),
            (
                "row 2".to_owned(),
                "fetch".to_owned(),
                "row 2: the key column `id` is null".to_owned()
            ),
            (
                "row 3".to_owned(),
                "fetch".to_owned(),
                "row 3: the key column `id` holds 2.5, neither text nor an integer".to_owned()
            ),
        ],
        "{out}"
    );
    let conn = open(&p);
    assert_eq!(
        ids(
            &conn,
            "SELECT rowid FROM notes WHERE done = 1 ORDER BY rowid"
        ),
        [1, 4]
    );
    assert_eq!(
        ids(
            &conn,
            "SELECT rowid FROM notes WHERE failed LIKE 'row %' ORDER BY rowid"
        ),
        [2, 3, 5],
        "marked by their other columns"
    );
    // Marked, they are not taken again: the next run has nothing to do.
    let out = p.run();
    out.assert_code(0);
    assert!(!out.stderr.contains("could not read"), "{out}");
}
