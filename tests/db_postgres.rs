//! `db-fetch` and `persist` against a real PostgreSQL (issue 3, "Tests it must have"): the seed's
//! job end to end, statements that would run for 30 s cut off at their time limit and cancelled
//! on the server, a server restart and a `kill -9` in the middle of a run, and bad input that
//! must fail clearly, write nothing partial and never print a password.
//!
//! Each test gets a database of its own (`Db`), or a whole cluster (`PrivateCluster`) when it
//! stops the server. Without `STAGEWISE_TEST_PG` they skip loudly (fail under `CI=true`); run
//! them through `./scripts/test`. The binary gets no `STAGEWISE_*` variables from the harness,
//! so the URL goes into the pipeline text (or `DATABASE_URL` with `url = "${DATABASE_URL}"`).

mod util;

use std::net::TcpListener;
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;
use util::pg::{self, Db, PrivateCluster};
use util::{Output, Pipeline, Rng};

/// Rows in the `articles` table of the end-to-end, restart and kill tests.
const ARTICLES: i64 = 1000;

/// A password that appears nowhere else, so finding it in any output is a leak.
const SECRET: &str = "Hunter2-Not-Printed";

/// `articles` with `n` unprocessed rows whose titles have 2 to 8 words, and an empty `results`
/// whose `writes` counts how often the upsert touched each row.
fn seed(db: &mut Db, n: i64) {
    db.execute(&format!(
        "CREATE TABLE articles (
             id int PRIMARY KEY,
             url text NOT NULL,
             title text NOT NULL,
             processed_at timestamptz
         );
         CREATE TABLE results (
             article_id int PRIMARY KEY,
             title text NOT NULL,
             words int NOT NULL,
             fetched jsonb NOT NULL,
             writes int NOT NULL DEFAULT 1
         );
         INSERT INTO articles (id, url, title)
             SELECT g, 'https://example.com/articles/' || g, 'Article ' || g || repeat(' word', g % 7)
             FROM generate_series(1, {n}) AS g"
    ));
}

/// The seed's job: unprocessed articles → `middle` (stage TOML) → an upsert into `results` plus
/// marking the article processed, in one transaction per record (or per batch).
fn article_job(url: &str, name: &str, middle: &str, persist_extra: &str, extra: &str) -> Pipeline {
    Pipeline::new(&format!(
        r#"
        [pipeline]
        name = "{name}"
        {extra}

        [[stage]]
        name = "fetch"
        kind = "db-fetch"
        url = "{url}"
        query = "SELECT id, url, title, array_length(string_to_array(title, ' '), 1) AS words, jsonb_build_object('url', url, 'id', id) AS fetched FROM articles WHERE processed_at IS NULL ORDER BY id LIMIT $limit"
        key = "id"

        {middle}

        [[stage]]
        name = "save"
        kind = "persist"
        url = "{url}"
        statement = """
        INSERT INTO results (article_id, title, words, fetched) VALUES (:key, :title, :words, :fetched)
            ON CONFLICT (article_id) DO UPDATE
            SET title = excluded.title, words = excluded.words, fetched = excluded.fetched,
                writes = results.writes + 1;
        UPDATE articles SET processed_at = now() WHERE id = :key
        """
        {persist_extra}
        "#
    ))
}

/// Result rows whose every value matches its article (title copied, words counted, the JSON
/// object built by the query stored as jsonb), for processed articles only.
fn correct_results(db: &mut Db) -> i64 {
    db.query_i64(
        "SELECT count(*) FROM results r JOIN articles a ON a.id = r.article_id
         WHERE r.title = a.title
           AND r.words = array_length(string_to_array(a.title, ' '), 1)
           AND r.fetched = jsonb_build_object('url', a.url, 'id', a.id)
           AND a.processed_at IS NOT NULL",
    )
}

/// A fingerprint of both tables, to show a later run changed nothing.
fn fingerprint(db: &mut Db) -> Vec<String> {
    db.query_strings(
        "SELECT coalesce(md5(string_agg(format('%s|%s|%s|%s|%s', article_id, title, words, fetched, writes), ',' ORDER BY article_id)), '-') FROM results
         UNION ALL
         SELECT coalesce(md5(string_agg(format('%s|%s', id, processed_at), ',' ORDER BY id)), '-') FROM articles",
    )
}

/// The whole batch done, every article processed exactly once with the right values; then a
/// second run takes a batch of nothing and changes nothing.
fn end_to_end(name: &str, persist_extra: &str) {
    let Some(mut db) = Db::new() else { return };
    seed(&mut db, ARTICLES);
    let p = article_job(
        db.url(),
        name,
        r#"
        [[stage]]
        name = "nap"
        kind = "sleep"
        duration = "1ms"
        "#,
        persist_extra,
        "",
    );

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
    assert_eq!(db.query_i64("SELECT count(*) FROM results"), ARTICLES);
    assert_eq!(
        db.query_i64("SELECT count(*) FROM articles WHERE processed_at IS NULL"),
        0,
        "every article must be marked processed"
    );
    assert_eq!(
        correct_results(&mut db),
        ARTICLES,
        "values differ from the articles"
    );
    assert_eq!(
        db.query_i64("SELECT sum(writes) FROM results"),
        ARTICLES,
        "without a crash every record is written exactly once"
    );

    let before = fingerprint(&mut db);
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
    assert_eq!(status.count("done"), ARTICLES as u64, "{:?}", status.counts);
    assert_eq!(
        fingerprint(&mut db),
        before,
        "the second run changed the tables"
    );
}

#[test]
fn end_to_end_every_article_processed_once_then_nothing_to_do() {
    end_to_end("articles", "");
}

#[test]
fn end_to_end_with_batched_transactions() {
    end_to_end("articles-batched", "batch_size = 16\nconcurrency = 8");
}

/// A fetch whose query sleeps 30 s per row, under `policy`: the read must fail within seconds
/// (exit 3, both attempts used) with a message containing one of `expected`, and no query of
/// stagewise may still be running on the server afterwards.
fn a_slow_query_is_cut_off(name: &str, policy: &str, expected: &[&str]) {
    let Some(mut db) = Db::new() else { return };
    seed(&mut db, 5);
    let p = Pipeline::new(&format!(
        r#"
        [pipeline]
        name = "{name}"

        [[stage]]
        name = "fetch"
        kind = "db-fetch"
        url = "{url}"
        query = "SELECT id, pg_sleep(30)::text AS s FROM articles LIMIT $limit"
        key = "id"
        retry = {{ attempts = 2, initial = "50ms", max = "100ms" }}
        {policy}

        [[stage]]
        name = "out"
        kind = "blackhole"
        "#,
        url = db.url()
    ));

    let mut running = p.cmd("run").spawn();
    // The query must reach the server, or the rest proves nothing.
    let mut seen = false;
    util::wait_until(Duration::from_secs(10), || {
        seen = db
            .busy_sessions()
            .iter()
            .any(|s| s.starts_with("stagewise/fetch") && s.contains("pg_sleep"));
        seen || running.has_exited()
    });
    let out = running.wait();
    assert!(seen, "the query never showed in pg_stat_activity\n{out}");

    out.assert_code(3);
    assert!(
        out.elapsed < Duration::from_secs(15),
        "a 30 s query must be cut off at its time limit\n{out}"
    );
    out.assert_stderr_contains("source `fetch` failed");
    out.assert_stderr_contains("after 2 attempt(s)");
    assert!(
        expected.iter().any(|e| out.stderr.contains(e)),
        "stderr should say the statement timed out ({expected:?})\n{out}"
    );
    // A query left behind would sleep on for most of 30 s; a cancelled one is gone at once
    // (the moment allowed is for the server to process the cancel request).
    let mut left = Vec::new();
    let gone = util::wait_until(Duration::from_secs(2), || {
        left = db.busy_sessions();
        left.is_empty()
    });
    assert!(gone, "queries outlived the run: {left:?}\n{out}");
}

#[test]
fn a_statement_timeout_cancels_the_query() {
    a_slow_query_is_cut_off(
        "statement-timeout",
        r#"statement_timeout = "500ms""#,
        &["canceling statement due to statement timeout"],
    );
}

/// The session's `statement_timeout` is left far away, so only stagewise's own cancel request
/// at the attempt's deadline can stop the query on the server. (2 s rather than less: connecting
/// and preparing must fit in the attempt on a loaded machine, so that the query really runs.)
#[test]
fn the_attempt_deadline_cancels_the_query_on_the_server() {
    a_slow_query_is_cut_off(
        "deadline-cancels",
        r#"
        timeout = "2s"
        statement_timeout = "60s"
        "#,
        &["timed out after 2s"],
    );
}

/// No `statement_timeout`: it defaults to the stage's `timeout`, so the server or the deadline
/// stops the query, whichever comes first.
#[test]
fn the_stage_timeout_bounds_the_query_by_default() {
    a_slow_query_is_cut_off(
        "timeout-default",
        r#"timeout = "2s""#,
        &["timed out after 2s", "statement timeout"],
    );
}

/// The restart and kill tests: a sleep stage slows the run enough to interrupt it.
const SLOW_NAP: &str = r#"
        [[stage]]
        name = "nap"
        kind = "sleep"
        duration = "10ms"
        concurrency = 8
        "#;

#[test]
fn a_server_restart_mid_run_is_retried_and_nothing_is_lost() {
    let Some(cluster) = PrivateCluster::new() else {
        return;
    };
    let mut db = cluster.db();
    seed(&mut db, ARTICLES);
    let p = article_job(
        db.url(),
        "restart",
        SLOW_NAP,
        r#"
        connect_timeout = "1s"
        retry = { attempts = 20, initial = "100ms", max = "1s" }
        "#,
        "",
    );

    let mut running = p.cmd("run").spawn();
    assert!(
        running.wait_for_stderr("run started", Duration::from_secs(10)),
        "the run did not start\n{}",
        running.stderr_so_far()
    );
    // Stop the server once writing is under way, so the stop lands mid-run.
    let writing = util::wait_until(Duration::from_secs(10), || {
        db.query_i64("SELECT count(*) FROM results") >= 50
    });
    assert!(writing, "no rows written\n{}", running.stderr_so_far());
    cluster.stop();
    let stopped_at = Instant::now();
    assert!(
        !running.has_exited(),
        "the run ended before the server stopped: the test proved nothing\n{}",
        running.stderr_so_far()
    );
    thread::sleep(Duration::from_secs(1));
    cluster.start();
    let down = stopped_at.elapsed();
    let out = running.wait();
    eprintln!("server down for {down:?}; the run took {:?}", out.elapsed);

    out.assert_code(0);
    let save = p.stage_summary("restart", "save");
    assert!(
        save["retries"].as_u64().is_some_and(|r| r > 0),
        "writes must have failed and been retried while the server was down: {save}\n{out}"
    );
    assert_eq!(save["failed"], 0, "{save}");
    assert_eq!(p.status().count("done"), ARTICLES as u64);
    assert_eq!(db.query_i64("SELECT count(*) FROM results"), ARTICLES);
    assert_eq!(
        db.query_i64("SELECT count(*) FROM articles WHERE processed_at IS NULL"),
        0
    );
    assert_eq!(correct_results(&mut db), ARTICLES);
}

/// `concurrency` of the stages after the source in the kill test: nap 8 + save 4 (its default).
const IN_FLIGHT: i64 = 8 + 4;
const COMMIT_MAX_ITEMS: i64 = 50;
/// docs/running.md: after `kill -9` the work redone is at most the items in flight plus three
/// times `commit_max_items`.
const REDONE_PER_KILL: i64 = IN_FLIGHT + 3 * COMMIT_MAX_ITEMS;

#[test]
fn kill_9_mid_run_then_rerun_persists_every_row_once_with_bounded_rewrites() {
    let Some(mut db) = Db::new() else { return };
    seed(&mut db, ARTICLES);
    let p = article_job(
        db.url(),
        "kill",
        SLOW_NAP,
        "",
        &format!("[checkpoint]\ncommit_max_items = {COMMIT_MAX_ITEMS}"),
    );

    let mut rng = Rng::new(0xDB_0009);
    let mut kills = 0;
    let mut partial_kills = 0;
    let mut delays = Vec::new();
    let mut finished = false;
    for _ in 0..3 {
        let mut running = p.cmd("run").spawn();
        // Once this process writes rows (a loaded machine may take seconds to start), then at a
        // random moment.
        let before = db.query_i64("SELECT count(*) FROM results");
        let began = std::time::Instant::now();
        while db.query_i64("SELECT count(*) FROM results") == before
            && !running.has_exited()
            && began.elapsed() < Duration::from_secs(30)
        {
            thread::sleep(Duration::from_millis(20));
        }
        let delay = rng.range(0, 400);
        delays.push(delay);
        thread::sleep(Duration::from_millis(delay));
        if !running.has_exited() {
            running.signal(libc::SIGKILL);
        }
        let out = running.wait();
        match out.code {
            None => kills += 1,
            Some(0) => {
                finished = true;
                break;
            }
            Some(_) => panic!("a run between kills failed\n{out}"),
        }
        let written = db.query_i64("SELECT count(*) FROM results");
        if written > 0 && written < ARTICLES {
            partial_kills += 1;
        }
    }
    assert!(
        partial_kills >= 1,
        "no kill landed while rows were being written (delays {delays:?} ms after the first row): the test proved nothing"
    );
    if !finished {
        p.run().assert_code(0);
    }

    assert_eq!(db.query_i64("SELECT count(*) FROM results"), ARTICLES);
    assert_eq!(
        db.query_i64("SELECT count(DISTINCT article_id) FROM results"),
        ARTICLES
    );
    assert_eq!(
        db.query_i64("SELECT count(*) FROM articles WHERE processed_at IS NULL"),
        0,
        "every article must end processed"
    );
    assert_eq!(correct_results(&mut db), ARTICLES);
    let redone = db.query_i64("SELECT sum(writes) FROM results") - ARTICLES;
    let most = db.query_i64("SELECT max(writes) FROM results");
    let bound = kills * REDONE_PER_KILL;
    eprintln!("{kills} kills at {delays:?} ms; {redone} writes redone (bound {bound}); at most {most} writes of one row");
    assert!(
        redone <= bound,
        "{redone} redone writes after {kills} kills (delays {delays:?} ms); the bound is \
         {kills} x ({IN_FLIGHT} in flight + 3 x {COMMIT_MAX_ITEMS}) = {bound}"
    );
    assert!(
        most <= kills + 1,
        "a row was written {most} times after {kills} kills"
    );
    // The last run is the resumed batch or, if a kill came after the batch was done, a batch of
    // nothing; either way nothing is left pending, in flight or failed.
    let status = p.status();
    assert_eq!(
        status.count("done") + status.count("skipped"),
        status.total(),
        "{:?}",
        status.counts
    );
}

// --- Bad input --------------------------------------------------------------------------------

/// Neither stdout nor stderr may contain `secret`.
fn assert_not_printed(out: &Output, secret: &str) {
    assert!(
        !out.stdout.contains(secret) && !out.stderr.contains(secret),
        "the password {secret:?} was printed\n{out}"
    );
}

/// A fetch of `query` from `url`, into a blackhole.
fn fetch_only(name: &str, url: &str, query: &str, fetch_extra: &str) -> Pipeline {
    Pipeline::new(&format!(
        r#"
        [pipeline]
        name = "{name}"

        [[stage]]
        name = "fetch"
        kind = "db-fetch"
        url = "{url}"
        query = "{query}"
        key = "id"
        {fetch_extra}

        [[stage]]
        name = "out"
        kind = "blackhole"
        "#
    ))
}

/// `in.jsonl` (keyed by `id`) → persist `statement` to `url`.
fn persist_only(name: &str, url: &str, statement: &str, persist_extra: &str) -> Pipeline {
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
        url = "{url}"
        statement = """
        {statement}
        """
        {persist_extra}
        "#
    ))
}

/// `run` (plain, JSON logs and debug logs), `validate` and `status` (plain and JSON): none may
/// print `secret`. Returns the plain run's output.
fn run_everything_without_printing(p: &Pipeline, env: &[(&str, &str)], secret: &str) -> Output {
    let with_env = |mut cmd: util::Cmd| {
        for (k, v) in env {
            cmd = cmd.env(k, v);
        }
        cmd
    };
    let run = with_env(p.cmd("run")).output();
    assert_not_printed(&run, secret);
    for out in [
        with_env(p.cmd("run").arg("--log-format").arg("json")).output(),
        with_env(p.cmd("run"))
            .env("STAGEWISE_LOG", "debug")
            .output(),
        with_env(p.cmd("validate")).output(),
        with_env(p.cmd("validate").arg("--connect")).output(),
        with_env(p.cmd("status")).output(),
        with_env(p.cmd("status").arg("--json")).output(),
    ] {
        assert_not_printed(&out, secret);
    }
    // Nor may the files a run leaves for later reading (the summary, the checkpoint store).
    if let Ok(entries) = std::fs::read_dir(p.dir.join(".stagewise")) {
        for entry in entries.flatten() {
            let bytes = std::fs::read(entry.path()).unwrap_or_default();
            assert!(
                !bytes.windows(secret.len()).any(|w| w == secret.as_bytes()),
                "the password is stored in {}",
                entry.path().display()
            );
        }
    }
    run
}

#[test]
fn a_wrong_password_for_the_source_is_fatal_and_never_printed() {
    let Some(db) = Db::new() else { return };
    let wrong = pg::with_password(db.url(), SECRET);
    let p = fetch_only(
        "wrong-password",
        &wrong,
        "SELECT id FROM pg_class LIMIT $limit",
        "",
    );
    let out = run_everything_without_printing(&p, &[], SECRET);
    // Found before the batch is taken: the configuration's fault, nothing run.
    out.assert_code(2);
    out.assert_stderr_contains("stage `fetch`: cannot connect to");
    out.assert_stderr_contains("authentication failed");
    out.assert_stderr_contains("nothing was run");
    assert_nothing_ran(&p, &[]);
}

/// `status` of a pipeline whose run stopped before it took a batch: no run.
fn assert_nothing_ran(p: &Pipeline, env: &[(&str, &str)]) {
    let mut cmd = p.cmd("status");
    for (k, v) in env {
        cmd = cmd.env(k, v);
    }
    let out = cmd.output();
    out.assert_code(0);
    assert!(out.stdout.contains("no run yet"), "{out}");
}

#[test]
fn a_wrong_password_for_the_sink_aborts_the_run_and_is_never_printed() {
    let Some(db) = Db::new() else { return };
    let wrong = pg::with_password(db.url(), SECRET);
    let p = persist_only(
        "wrong-password-sink",
        "${DATABASE_URL}",
        "INSERT INTO nowhere (id) VALUES (:key)",
        "",
    );
    p.dir
        .write("in.jsonl", "{\"id\": 1}\n{\"id\": 2}\n{\"id\": 3}\n");
    let out = run_everything_without_printing(&p, &[("DATABASE_URL", &wrong)], SECRET);
    // Found before the batch is taken: no item is failed, nothing was run.
    out.assert_code(2);
    out.assert_stderr_contains("stage `save`: cannot connect to");
    out.assert_stderr_contains("authentication failed");
    assert_nothing_ran(&p, &[("DATABASE_URL", &wrong)]);
}

#[test]
fn an_unknown_host_fails_within_the_connect_timeout() {
    let p = fetch_only(
        "unknown-host",
        "${DATABASE_URL}",
        "SELECT id FROM articles LIMIT $limit",
        r#"
        connect_timeout = "2s"
        retry = { attempts = 2, initial = "50ms", max = "100ms" }
        "#,
    );
    let url = format!("postgres://stagewise:{SECRET}@no-such-host.invalid:5432/articles");
    let out = run_everything_without_printing(&p, &[("DATABASE_URL", &url)], SECRET);
    out.assert_code(3);
    assert!(
        out.elapsed < Duration::from_secs(20),
        "two attempts of a 2 s connect timeout\n{out}"
    );
    out.assert_stderr_contains("source `fetch` failed");
    out.assert_stderr_contains("could not connect");
}

/// Runs a fetch from a host that takes the TCP connection but never answers (a hung server, a
/// black-holing proxy) under `policy`, with two attempts. The run must end by itself within
/// 10 s (slack for a loaded machine; past that, dropping `running` kills it rather than sit
/// out a long timeout), exit 3 as a failed read and never print the password. Needs no
/// PostgreSQL.
fn fetch_from_a_silent_server(name: &str, policy: &str, why: &str) -> Output {
    // Bound but never accepted: the kernel completes the handshake, nobody replies.
    let silent = TcpListener::bind("127.0.0.1:0").expect("bind a local port");
    let port = silent.local_addr().expect("local addr").port();
    let p = fetch_only(
        name,
        &format!("postgres://stagewise:{SECRET}@127.0.0.1:{port}/articles"),
        "SELECT 1 AS id LIMIT $limit",
        &format!("retry = {{ attempts = 2, initial = \"50ms\", max = \"100ms\" }}\n{policy}"),
    );
    let mut running = p.cmd("run").spawn();
    let ended = util::wait_until(Duration::from_secs(10), || running.has_exited());
    assert!(
        ended,
        "still running after 10 s: {why}\n{}",
        running.stderr_so_far()
    );
    let out = running.wait();
    drop(silent);
    assert_not_printed(&out, SECRET);
    out.assert_code(3);
    out.assert_stderr_contains("source `fetch` failed");
    out.assert_stderr_contains("after 2 attempt(s)");
    out
}

/// `connect_timeout` is "the longest wait for a connection": each attempt gives up after 1 s,
/// not at the stage's 20 s `timeout`.
#[test]
fn a_server_that_never_answers_fails_within_the_connect_timeout() {
    let out = fetch_from_a_silent_server(
        "silent-server",
        r#"
        connect_timeout = "1s"
        timeout = "20s"
        "#,
        "`connect_timeout = \"1s\"` does not bound a server that accepts the connection but \
         never answers",
    );
    out.assert_stderr_contains("did not answer within 1s (`connect_timeout`)");
}

/// Whatever `connect_timeout` does, the attempt's `timeout` bounds a connection stuck in its
/// handshake: each attempt ends after 1 s and the read fails as timed out.
#[test]
fn a_connection_stuck_in_its_handshake_is_bounded_by_the_attempt_timeout() {
    let out = fetch_from_a_silent_server(
        "silent-server-deadline",
        r#"timeout = "1s""#,
        "two attempts of a 1 s timeout did not end the read",
    );
    // The runner's timeout or the source's own check of its deadline, whichever comes first:
    // either way a timeout, on the second attempt.
    out.assert_stderr_contains("(after 2 attempt(s))");
    assert!(
        out.stderr.contains("timed out after 1s (after 2")
            || out
                .stderr
                .contains("the read stopped at its deadline (`timeout`) (after 2"),
        "{out}"
    );
}

#[test]
fn a_missing_table_in_the_query_aborts_with_the_servers_message() {
    let Some(db) = Db::new() else { return };
    let p = fetch_only(
        "missing-table",
        db.url(),
        "SELECT id, title FROM no_such_articles LIMIT $limit",
        "",
    );
    let out = p.run();
    // The query is prepared before the batch is taken: exit 2 at the query, nothing run.
    out.assert_code(2);
    out.assert_stderr_contains("stage `fetch`: `query` does not prepare");
    out.assert_stderr_contains(r#"relation "no_such_articles" does not exist"#);
    assert_nothing_ran(&p, &[]);
}

#[test]
fn an_unsupported_column_type_is_named_with_its_column() {
    let Some(mut db) = Db::new() else { return };
    seed(&mut db, 3);
    let p = fetch_only(
        "numeric-column",
        db.url(),
        "SELECT id, (id * 1.5)::numeric AS price FROM articles LIMIT $limit",
        "",
    );
    let out = p.run();
    out.assert_code(2);
    assert!(
        out.stderr_lines()
            .any(|l| l.contains("stage `fetch`") && l.contains("`price`") && l.contains("numeric")),
        "the error should name the column `price` and its type numeric\n{out}"
    );
    assert_nothing_ran(&p, &[]);
}

/// Articles 1..=20 and a `facts` table the bad-input sink tests write to.
fn seed_facts(db: &mut Db) {
    seed(db, 20);
    db.execute(
        "CREATE TABLE facts (article_id int PRIMARY KEY, title text NOT NULL);
         CREATE TABLE audit (article_id int PRIMARY KEY, note text NOT NULL)",
    );
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

fn ids(db: &mut Db, sql: &str) -> Vec<i64> {
    db.query_strings(sql)
        .iter()
        .map(|s| s.parse().expect("an integer id"))
        .collect()
}

/// Ids 1..=20 without `bad`.
fn all_but(bad: &[i64]) -> Vec<i64> {
    (1..=20).filter(|id| !bad.contains(id)).collect()
}

#[test]
fn a_record_missing_a_field_fails_alone_and_writes_nothing() {
    let Some(mut db) = Db::new() else { return };
    seed_facts(&mut db);
    let p = persist_only(
        "missing-field",
        db.url(),
        "INSERT INTO facts (article_id, title) VALUES (:key, :title)
             ON CONFLICT (article_id) DO UPDATE SET title = excluded.title;
         UPDATE articles SET processed_at = now() WHERE id = :key",
        "",
    );
    let bad = [5, 10, 15];
    write_records(&p, &bad, &[]);

    let out = p.run();
    out.assert_code(1);
    let status = p.status();
    assert_eq!(status.count("done"), 17, "{:?}", status.counts);
    // A missing field is permanent: one attempt.
    status.assert_failed(
        &["5", "10", "15"],
        "save",
        1,
        "the statement names `:title`, but the record has no field `title`",
    );
    assert_eq!(
        ids(&mut db, "SELECT article_id FROM facts ORDER BY 1"),
        all_but(&bad)
    );
    assert_eq!(
        ids(
            &mut db,
            "SELECT id FROM articles WHERE processed_at IS NOT NULL ORDER BY 1"
        ),
        all_but(&bad),
        "the second statement must not have run for the failed records"
    );
}

/// The first statement succeeds, the second violates a constraint: the transaction rolls back,
/// so the failed record leaves no row behind, and records sharing its batch are written anyway.
#[test]
fn a_failing_second_statement_rolls_back_the_first() {
    let Some(mut db) = Db::new() else { return };
    seed_facts(&mut db);
    let p = persist_only(
        "no-partial-writes",
        db.url(),
        "INSERT INTO facts (article_id, title) VALUES (:key, :title)
             ON CONFLICT (article_id) DO UPDATE SET title = excluded.title;
         INSERT INTO audit (article_id, note) VALUES (:key, :note)
             ON CONFLICT (article_id) DO UPDATE SET note = excluded.note",
        "batch_size = 8\nconcurrency = 4",
    );
    let bad = [4, 8, 12, 16];
    write_records(&p, &[], &bad);

    let out = p.run();
    out.assert_code(1);
    let status = p.status();
    assert_eq!(status.count("done"), 16, "{:?}\n{out}", status.counts);
    assert_eq!(status.failed.len(), 4, "{:?}", status.failed);
    for f in &status.failed {
        assert!(
            f.error.contains(r#"null value in column "note""#),
            "the server's message: {f:?}"
        );
        assert_eq!(f.attempts, 1, "a constraint violation is permanent: {f:?}");
    }
    assert_eq!(
        ids(&mut db, "SELECT article_id FROM facts ORDER BY 1"),
        all_but(&bad),
        "the first statement's rows of failed records must be rolled back"
    );
    assert_eq!(
        ids(&mut db, "SELECT article_id FROM audit ORDER BY 1"),
        all_but(&bad)
    );
}

#[test]
fn a_statement_into_a_missing_table_stops_the_run_before_any_item() {
    let Some(db) = Db::new() else { return };
    let p = persist_only(
        "missing-sink-table",
        db.url(),
        "INSERT INTO no_such_results (id) VALUES (:key)",
        "",
    );
    p.dir
        .write("in.jsonl", "{\"id\": 1}\n{\"id\": 2}\n{\"id\": 3}\n");
    let out = p.run();
    // Prepared before the batch is taken: every item would have failed alike.
    out.assert_code(2);
    out.assert_stderr_contains("stage `save`: `statement` does not prepare");
    out.assert_stderr_contains(r#"relation "no_such_results" does not exist"#);
    assert_nothing_ran(&p, &[]);
}

/// A table dropped after the run's checks passed still fails the items one by one, with the
/// server's message: the checks are a first line, not the only one.
#[test]
fn a_table_gone_during_the_run_fails_the_items_with_the_servers_message() {
    let Some(mut db) = Db::new() else { return };
    db.execute("CREATE TABLE results (id int PRIMARY KEY)");
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
        url = "{}"
        statement = "INSERT INTO results (id) VALUES (:key)"
        "#,
        db.url()
    ));
    p.dir
        .write("in.jsonl", "{\"id\": 1}\n{\"id\": 2}\n{\"id\": 3}\n");
    let mut run = p.cmd("run").spawn();
    assert!(
        run.wait_for_stderr("run started", Duration::from_secs(30)),
        "{}",
        run.stderr_so_far()
    );
    db.execute("DROP TABLE results");
    let out = run.wait();
    out.assert_code(1);
    let status = p.status();
    assert_eq!(status.count("failed"), 3, "{:?}\n{out}", status.counts);
    for f in &status.failed {
        assert_eq!(f.stage, "save", "{f:?}");
        assert_eq!(f.attempts, 1, "a missing table is permanent: {f:?}");
        assert!(
            f.error.contains(r#"relation "results" does not exist"#),
            "{f:?}"
        );
    }
}

/// Config errors print the URL they are about, without its password, in either place a URL can
/// carry one (`user:password@` or `?password=`).
#[test]
fn a_url_in_a_config_error_is_printed_without_its_password() {
    for url in [
        format!("postgress://stagewise:{SECRET}@127.0.0.1:5432/db"),
        format!("postgres://stagewise:{SECRET}@127.0.0.1:not-a-port/db"),
        format!("postgres://stagewise@127.0.0.1:not-a-port/db?password={SECRET}"),
        format!("postgress://stagewise@127.0.0.1:5432/db?password={SECRET}"),
    ] {
        let p = fetch_only("bad-url", &url, "SELECT 1 AS id LIMIT $limit", "");
        // `validate` does no I/O and may pass a URL only building can reject; it must not
        // print the password either way.
        assert_not_printed(&p.validate(), SECRET);
        let out = p.run();
        assert_not_printed(&out, SECRET);
        out.assert_code(2);
        assert!(out.stderr.contains("`url`"), "{url}: say which key\n{out}");
    }
}

/// A TCP proxy on 127.0.0.1 to `upstream` that holds each new connection `delay` before it
/// connects it through: a server slow to accept. Returns its port.
fn slow_to_connect_proxy(upstream: std::net::SocketAddr, delay: Duration) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind the proxy");
    let port = listener.local_addr().expect("address").port();
    thread::spawn(move || {
        for client in listener.incoming().flatten() {
            thread::spawn(move || {
                thread::sleep(delay);
                let Ok(server) = std::net::TcpStream::connect(upstream) else {
                    return;
                };
                let pipe = |mut from: std::net::TcpStream, mut to: std::net::TcpStream| {
                    thread::spawn(move || {
                        let _ = std::io::copy(&mut from, &mut to);
                        let _ = to.shutdown(std::net::Shutdown::Both);
                    })
                };
                let (c2, s2) = (
                    client.try_clone().expect("clone"),
                    server.try_clone().expect("clone"),
                );
                pipe(client, server);
                pipe(s2, c2);
            });
        }
    });
    port
}

/// When connecting takes an attempt's whole time, its query does not start after the
/// deadline: an item that failed as timed out has not been written behind the runner's back.
#[test]
fn a_query_does_not_start_after_its_attempts_deadline() {
    let Some(mut db) = Db::new() else { return };
    db.execute("CREATE TABLE writes (id int PRIMARY KEY)");
    // postgres://user:password@127.0.0.1:PORT/name
    let (_, after_host) = db.url().rsplit_once('@').expect("a URL with a user");
    let port = after_host
        .split_once(':')
        .and_then(|(_, rest)| rest.split_once('/'))
        .map(|(port, _)| port.to_owned())
        .expect("a port");
    let upstream = format!("127.0.0.1:{port}").parse().expect("address");
    // Each connection (the probe, then the session) waits 0.7 s: 1.4 s in all, past the 1 s
    // timeout.
    let proxy = slow_to_connect_proxy(upstream, Duration::from_millis(700));
    let through = db
        .url()
        .replace(&format!(":{port}/"), &format!(":{proxy}/"));
    let p = persist_only(
        "late-query",
        &through,
        "INSERT INTO writes (id) VALUES (:key)",
        "timeout = \"1s\"\nretry = { attempts = 1 }\nconcurrency = 4\nmax_abandoned = 4",
    );
    p.dir
        .write("in.jsonl", "{\"id\": 1}\n{\"id\": 2}\n{\"id\": 3}\n");
    let out = p.run();
    out.assert_code(1);
    let status = p.status();
    assert_eq!(status.count("failed"), 3, "{out}");
    // Long enough for a late connection to have finished and written.
    thread::sleep(Duration::from_secs(2));
    assert_eq!(db.query_i64("SELECT count(*) FROM writes"), 0, "{out}");
}
