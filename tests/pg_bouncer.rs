//! The PostgreSQL stages through PgBouncer in transaction mode, as users deploy them: a pooler in
//! front of the server with fewer server sessions (2 per database and user) than the stages have
//! threads, so the stages' connections take turns on them and each transaction may run on
//! another server session. What one transaction leaves on its server session is not there for
//! the next (a named prepared statement, a session-level `SET`), or is there for someone else:
//! a prepared statement left behind collides with another client's of the same name.
//!
//! Each test starts its own PgBouncer (`Bouncer`) in front of the shared cluster, gives it a
//! database of its own (`Db`), and checks the results on the server directly. The runs keep
//! their checkpoints in SQLite, so that only the stages under test talk through the pooler.
//! Without `STAGEWISE_TEST_PG` the tests skip loudly (fail under `CI=true`), and so when
//! PgBouncer cannot start; run them through `./scripts/test`.

mod util;

use std::time::Duration;

use postgres::{Client, SimpleQueryMessage};
use util::pg::{self, Bouncer, Db};
use util::Pipeline;

/// Rows of the end-to-end tests: enough for each of the stage's connections to run many
/// transactions, on both server sessions.
const ARTICLES: i64 = 600;

/// The threads of `persist` in these tests: four times PgBouncer's server sessions.
const CONCURRENCY: usize = 8;

/// A database of the test's own and a PgBouncer in front of the cluster; None when the tests
/// are skipped.
fn db_behind_a_bouncer() -> Option<(Db, Bouncer)> {
    let db = Db::new()?;
    let bouncer = Bouncer::new()?;
    Some((db, bouncer))
}

/// `[checkpoint]` of every pipeline here: SQLite beside the pipeline.
fn sqlite_store(name: &str) -> String {
    format!("[checkpoint]\nstore = \"sqlite:.stagewise/{name}.db\"")
}

/// `generate` `count` items (keys "0", "1", …) → `persist` (`stage`: the rest of its table).
fn generate_into(name: &str, count: usize, stage: &str) -> Pipeline {
    Pipeline::new(&format!(
        r#"
        [pipeline]
        name = "{name}"

        {store}

        [[stage]]
        name = "src"
        kind = "generate"
        count = {count}

        [[stage]]
        name = "save"
        kind = "persist"
        {stage}
        "#,
        store = sqlite_store(name),
        stage = util::dedent(stage),
    ))
}

/// The text of each row of a simple query's result, first column (None for NULL).
fn first_column(messages: &[SimpleQueryMessage]) -> Vec<Option<String>> {
    messages
        .iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::Row(row) => Some(row.get(0).map(str::to_owned)),
            _ => None,
        })
        .collect()
}

/// Runs `sql` on `client` with the simple query protocol, which prepares no statement of the
/// harness's own on the server sessions under test.
fn simple(client: &mut Client, sql: &str) -> Vec<Option<String>> {
    let messages = client
        .simple_query(sql)
        .unwrap_or_else(|e| panic!("{sql}: {}", pg::DbErr(&e)));
    first_column(&messages)
}

/// What each of PgBouncer's two server sessions for `db` answers to `sql`: two clients each
/// hold one in an open transaction (so they cannot share one), run `sql`, and roll back.
/// Returns the two backends' pids and answers.
fn on_both_server_sessions(
    bouncer: &Bouncer,
    db: &Db,
    sql: &str,
) -> Vec<(String, Vec<Option<String>>)> {
    let url = bouncer.db_url(db);
    let mut clients = [pg::connect(&url), pg::connect(&url)];
    let mut answers = Vec::new();
    for client in &mut clients {
        simple(client, "BEGIN");
        let pid = simple(client, "SELECT pg_backend_pid()")
            .remove(0)
            .expect("a pid");
        answers.push((pid, simple(client, sql)));
    }
    for client in &mut clients {
        simple(client, "ROLLBACK");
    }
    assert_ne!(
        answers[0].0, answers[1].0,
        "two clients in open transactions shared a server session"
    );
    answers
}

// --- db-fetch and persist -------------------------------------------------------------------

/// `articles` with `n` unprocessed rows, and an empty `results` whose `backend` is the server
/// session that wrote the row and `writes` how often the upsert touched it.
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
             backend int NOT NULL,
             writes int NOT NULL DEFAULT 1
         );
         INSERT INTO articles (id, url, title)
             SELECT g, 'https://example.com/articles/' || g, 'Article ' || g || repeat(' word', g % 7)
             FROM generate_series(1, {n}) AS g"
    ));
}

/// Unprocessed articles fetched through `url`, each upserted into `results` and marked
/// processed in one transaction (or one per batch), with `CONCURRENCY` threads.
fn article_job(url: &str, name: &str, persist_extra: &str) -> Pipeline {
    Pipeline::new(&format!(
        r#"
        [pipeline]
        name = "{name}"

        {store}

        [[stage]]
        name = "fetch"
        kind = "db-fetch"
        url = "{url}"
        query = "SELECT id, url, title, array_length(string_to_array(title, ' '), 1) AS words, jsonb_build_object('url', url, 'id', id) AS fetched FROM articles WHERE processed_at IS NULL ORDER BY id LIMIT $limit"
        key = "id"

        [[stage]]
        name = "save"
        kind = "persist"
        url = "{url}"
        concurrency = {CONCURRENCY}
        statement = """
        INSERT INTO results (article_id, title, words, fetched, backend)
            VALUES (:key, :title, :words, :fetched, pg_backend_pid())
            ON CONFLICT (article_id) DO UPDATE
            SET title = excluded.title, words = excluded.words, fetched = excluded.fetched,
                backend = excluded.backend, writes = results.writes + 1;
        UPDATE articles SET processed_at = now() WHERE id = :key
        """
        {persist_extra}
        "#,
        store = sqlite_store(name),
    ))
}

/// Every article fetched, written once with the right values and marked processed, through
/// PgBouncer; the writes ran on both of its server sessions (so the stage's connections moved
/// between them) and on no other (so they went through it).
fn every_row_through_the_bouncer(name: &str, persist_extra: &str) {
    let Some((mut db, bouncer)) = db_behind_a_bouncer() else {
        return;
    };
    seed(&mut db, ARTICLES);
    // Both server sessions open before the run: taken in turn, they alternate under even one
    // transaction at a time (as `batch_size` writes).
    on_both_server_sessions(&bouncer, &db, "SELECT 1");
    let p = article_job(&bouncer.db_url(&db), name, persist_extra);

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
        db.query_i64(
            "SELECT count(*) FROM results r JOIN articles a ON a.id = r.article_id
             WHERE r.title = a.title
               AND r.words = array_length(string_to_array(a.title, ' '), 1)
               AND r.fetched = jsonb_build_object('url', a.url, 'id', a.id)
               AND a.processed_at IS NOT NULL"
        ),
        ARTICLES,
        "values differ from the articles"
    );
    assert_eq!(
        db.query_i64("SELECT count(*) FROM articles WHERE processed_at IS NULL"),
        0,
        "every article must be marked processed"
    );
    assert_eq!(
        db.query_i64("SELECT sum(writes) FROM results"),
        ARTICLES,
        "every record is written exactly once"
    );
    let backends = db.query_i64("SELECT count(DISTINCT backend) FROM results");
    assert!(
        backends >= 2,
        "every write ran on one server session: the test proved nothing\n{out}"
    );
    assert!(
        backends <= 2,
        "writes ran on {backends} server sessions, more than PgBouncer's 2: not through it?"
    );
}

#[test]
fn fetch_and_persist_through_transaction_pooling_write_every_row_once() {
    every_row_through_the_bouncer("bouncer-rows", "");
}

#[test]
fn batched_persist_through_transaction_pooling_writes_every_row_once() {
    every_row_through_the_bouncer("bouncer-batched", "batch_size = 8");
}

/// A read that stops before the end of its query's rows (the batch is full and the query has
/// no `$limit`) takes its batch at once; the query goes on to its end and commits, as a query
/// that claims its rows needs.
#[test]
fn a_read_that_stops_early_leaves_its_query_to_finish_and_commit() {
    let Some((mut db, bouncer)) = db_behind_a_bouncer() else {
        return;
    };
    seed(&mut db, 200);
    let name = "bouncer-stops-early";
    let p = Pipeline::new(&format!(
        r#"
        [pipeline]
        name = "{name}"
        batch_size = 10

        {store}

        [[stage]]
        name = "claim"
        kind = "db-fetch"
        url = "{url}"
        query = "UPDATE articles SET processed_at = now() WHERE processed_at IS NULL RETURNING id, title"
        key = "id"

        [[stage]]
        name = "out"
        kind = "blackhole"
        "#,
        store = sqlite_store(name),
        url = bouncer.db_url(&db),
    ));
    let out = p.run();
    out.assert_code(0);
    assert_eq!(p.status().total(), 10, "{out}");
    let claimed = util::wait_until(Duration::from_secs(5), || {
        db.query_i64("SELECT count(*) FROM articles WHERE processed_at IS NULL") == 0
    });
    assert!(claimed, "the query's transaction was not committed\n{out}");
}

/// Items whose write sleeps 30 s, through PgBouncer, under `policy`, with more threads than
/// PgBouncer has server sessions (so some wait for one): every item must fail after its two
/// attempts, each with an error containing one of `expected`, the run must end within seconds,
/// nothing may have been written, and no query of stagewise may still run on the server
/// afterwards.
fn a_slow_write_is_cut_off(name: &str, policy: &str, expected: &[&str]) {
    const ITEMS: usize = 4;
    let Some((mut db, bouncer)) = db_behind_a_bouncer() else {
        return;
    };
    db.execute("CREATE TABLE slow (id int PRIMARY KEY)");
    let p = generate_into(
        name,
        ITEMS,
        &format!(
            r#"
            url = "{url}"
            statement = "INSERT INTO slow (id) SELECT :key::int FROM pg_sleep(30)"
            concurrency = {ITEMS}
            retry = {{ attempts = 2, initial = "50ms", max = "100ms" }}
            {policy}
            "#,
            url = bouncer.db_url(&db),
            policy = util::dedent(policy),
        ),
    );

    let mut running = p.cmd("run").spawn();
    // The statement must reach the server, or the rest proves nothing.
    let mut seen = false;
    util::wait_until(Duration::from_secs(10), || {
        seen = db
            .busy_sessions()
            .iter()
            .any(|s| s.starts_with("stagewise/save") && s.contains("pg_sleep"));
        seen || running.has_exited()
    });
    let out = running.wait();
    assert!(
        seen,
        "the statement never showed in pg_stat_activity\n{out}"
    );

    out.assert_code(1);
    assert!(
        out.elapsed < Duration::from_secs(20),
        "30 s statements must be cut off at their time limit\n{out}"
    );
    let status = p.status();
    assert_eq!(
        status.count("failed"),
        ITEMS as u64,
        "{:?}\n{out}",
        status.counts
    );
    for f in &status.failed {
        assert_eq!(f.stage, "save", "{f:?}");
        assert_eq!(f.attempts, 2, "a timeout is transient and retried: {f:?}");
        assert!(
            expected.iter().any(|e| f.error.contains(e)),
            "the error should say the statement timed out ({expected:?}): {f:?}"
        );
    }
    assert_eq!(db.query_i64("SELECT count(*) FROM slow"), 0);
    // A statement left behind would sleep on for most of 30 s; a cancelled one is gone at once
    // (the moment allowed is for the server to process the cancel request).
    let mut left = Vec::new();
    let gone = util::wait_until(Duration::from_secs(3), || {
        left = db.busy_sessions();
        left.is_empty()
    });
    assert!(gone, "statements outlived the run: {left:?}\n{out}");
}

/// The server's `statement_timeout` is left far away, so only stagewise's cancel request at
/// the attempt's deadline, through PgBouncer, can stop the statement. The items that wait for
/// a server session when their deadline passes have their statement cancelled as soon as it
/// starts.
#[test]
fn the_stage_timeout_cancels_the_statement_through_the_bouncer() {
    a_slow_write_is_cut_off(
        "bouncer-deadline",
        r#"
        timeout = "1s"
        statement_timeout = "60s"
        "#,
        &[
            "timed out after 1s",
            "cancelled on the server at the attempt's deadline",
        ],
    );
}

/// `statement_timeout` holds in every transaction, whichever server session it runs on: the
/// server ends each statement, long before the attempt's deadline.
#[test]
fn the_statement_timeout_holds_in_every_transaction() {
    a_slow_write_is_cut_off(
        "bouncer-statement-timeout",
        r#"
        timeout = "20s"
        statement_timeout = "500ms"
        "#,
        &["canceling statement due to statement timeout"],
    );
}

/// The `statement_timeout` is set for each transaction alone: after a run, neither of
/// PgBouncer's server sessions has it (the next client on them would get it).
#[test]
fn no_setting_is_left_on_the_server_sessions() {
    let Some((mut db, bouncer)) = db_behind_a_bouncer() else {
        return;
    };
    seed(&mut db, 40);
    let p = article_job(
        &bouncer.db_url(&db),
        "bouncer-settings",
        r#"statement_timeout = "7s""#,
    );
    p.run().assert_code(0);
    assert_eq!(db.query_i64("SELECT count(*) FROM results"), 40);
    for (pid, answer) in on_both_server_sessions(&bouncer, &db, "SHOW statement_timeout") {
        assert_eq!(
            answer,
            [Some("0".to_owned())],
            "server session {pid} kept a statement_timeout of stagewise's"
        );
    }
}

/// A prepared statement left on a server session collides with the next client's of the same
/// name (the client counts its own from `s0`). After runs that prepared statements of every
/// kind (a fetch, writes, a type that is not built in, which the client looks up with
/// statements of its own, and a query that fails) neither server session has one left.
#[test]
fn no_prepared_statement_is_left_on_the_server_sessions() {
    let Some((mut db, bouncer)) = db_behind_a_bouncer() else {
        return;
    };
    seed(&mut db, 200);
    db.execute(
        "CREATE TYPE mood AS ENUM ('calm', 'curious');
         CREATE TABLE moods (article_id int PRIMARY KEY, mood mood NOT NULL)",
    );
    let url = bouncer.db_url(&db);

    article_job(&url, "bouncer-statements", "")
        .run()
        .assert_code(0);

    // The enum comes back from the statement: looking up its type takes statements of the
    // client's own, and the rows are written all the same.
    let returning = generate_into(
        "bouncer-custom-type",
        100,
        &format!(
            r#"
            url = "{url}"
            statement = "INSERT INTO moods (article_id, mood) VALUES (:key::int, 'curious') ON CONFLICT (article_id) DO NOTHING RETURNING mood"
            concurrency = {CONCURRENCY}
            "#
        ),
    );
    let out = returning.run();
    out.assert_code(0);
    assert_eq!(db.query_i64("SELECT count(*) FROM moods"), 100, "{out}");

    // A column db-fetch cannot read, and a table that does not exist: both found when the run
    // prepares the query before it takes a batch (exit 2), through the bouncer too.
    for (name, query, error) in [
        (
            "bouncer-unreadable",
            "SELECT article_id AS id, mood FROM moods LIMIT $limit",
            "column `mood` has type `mood`, which db-fetch cannot read",
        ),
        (
            "bouncer-missing-table",
            "SELECT id FROM no_such_table LIMIT $limit",
            r#"relation "no_such_table" does not exist"#,
        ),
    ] {
        let p = Pipeline::new(&format!(
            r#"
            [pipeline]
            name = "{name}"

            {store}

            [[stage]]
            name = "fetch"
            kind = "db-fetch"
            url = "{url}"
            query = "{query}"
            key = "id"

            [[stage]]
            name = "out"
            kind = "blackhole"
            "#,
            store = sqlite_store(name),
        ));
        let out = p.run();
        out.assert_code(2);
        out.assert_stderr_contains(error);
        out.assert_stderr_contains("nothing was run");
    }

    for (pid, statements) in on_both_server_sessions(
        &bouncer,
        &db,
        "SELECT name || ': ' || statement FROM pg_prepared_statements",
    ) {
        assert!(
            statements.is_empty(),
            "server session {pid} has prepared statements left: {statements:?}"
        );
    }
}

// --- The checkpoint store through PgBouncer ------------------------------------------------
//
// The tests above keep their checkpoints in SQLite. Those of the PostgreSQL checkpoint store
// (`[checkpoint] store = "postgres://…"`) through PgBouncer in transaction mode go here, with
// the same `Bouncer` in front of the shared cluster.

/// `count` items → a short sleep → a sink that counts each key's writes, with the checkpoint
/// store and the sink both at `url` (through the bouncer).
fn shared_job(name: &str, url: &str, count: usize) -> Pipeline {
    Pipeline::new(&format!(
        r#"
        [pipeline]
        name = "{name}"
        heartbeat = "1s"
        shutdown_grace = "3s"

        [checkpoint]
        store = "{url}"
        lease_ttl = "5s"
        commit_interval = "50ms"

        [[stage]]
        name = "src"
        kind = "generate"
        count = {count}

        [[stage]]
        name = "nap"
        kind = "sleep"
        duration = "5ms"
        concurrency = {CONCURRENCY}

        [[stage]]
        name = "sink"
        kind = "persist"
        url = "{url}"
        concurrency = 2
        statement = "INSERT INTO sink (key, writes) VALUES (:key, 1) ON CONFLICT (key) DO UPDATE SET writes = sink.writes + 1"
        "#
    ))
}

/// The checkpoint store and two runners sharing its run, all through PgBouncer (two server
/// sessions for everything): every item done once, and neither server session is left with a
/// prepared statement or a setting of the store's.
#[test]
fn the_store_and_two_runners_work_through_the_bouncer() {
    let Some((mut db, bouncer)) = db_behind_a_bouncer() else {
        return;
    };
    db.execute("CREATE TABLE sink (key text PRIMARY KEY, writes bigint NOT NULL)");
    let url = bouncer.db_url(&db);
    let p = shared_job("bouncer-store", &url, 1500);
    let runners: Vec<_> = (0..2).map(|_| p.cmd("run").spawn()).collect();
    for out in runners.into_iter().map(util::Running::wait) {
        out.assert_code(0);
    }
    assert_eq!(db.query_i64("SELECT count(*) FROM sink"), 1500);
    assert_eq!(
        db.query_i64("SELECT COALESCE(sum(writes - 1), 0)::bigint FROM sink"),
        0,
        "no item done twice"
    );
    assert_eq!(
        db.query_i64("SELECT count(DISTINCT pid) FROM stagewise.runners WHERE run_id IS NOT NULL"),
        2,
        "both runners took part"
    );
    let status = p.cmd("status").arg("--json").output();
    status.assert_code(0);
    assert!(status.stdout.contains(r#""status":"finished""#), "{status}");
    for (pid, answer) in on_both_server_sessions(&bouncer, &db, "SHOW statement_timeout") {
        assert_eq!(
            answer,
            [Some("0".to_owned())],
            "server session {pid} kept a statement_timeout"
        );
    }
    for (pid, answer) in on_both_server_sessions(
        &bouncer,
        &db,
        "SELECT count(*)::text FROM pg_prepared_statements",
    ) {
        assert_eq!(
            answer,
            [Some("0".to_owned())],
            "server session {pid} kept prepared statements"
        );
    }
}

/// Through the bouncer, a runner killed mid-run leaves its items to the other, which finishes
/// the run once the killed one's process is seen gone.
#[test]
fn a_killed_runner_is_taken_over_through_the_bouncer() {
    let Some((mut db, bouncer)) = db_behind_a_bouncer() else {
        return;
    };
    db.execute("CREATE TABLE sink (key text PRIMARY KEY, writes bigint NOT NULL)");
    let url = bouncer.db_url(&db);
    let p = shared_job("bouncer-kill", &url, 2000);
    let victim = p.cmd("run").spawn();
    let other = p.cmd("run").spawn();
    assert!(
        util::wait_until(Duration::from_secs(60), || {
            db.query_i64("SELECT count(*) FROM sink") >= 300
        }),
        "no progress"
    );
    victim.signal(libc::SIGKILL);
    let _ = victim.wait();
    other.wait().assert_code(0);
    assert_eq!(db.query_i64("SELECT count(*) FROM sink"), 2000);
    assert_eq!(
        db.query_i64("SELECT count(*) FROM stagewise.items WHERE state <> 'done'"),
        0
    );
}
