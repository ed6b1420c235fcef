//! The default pipeline — the article digest job the README's first command runs — from a clean
//! copy of the repository's files (no state folder, no database): every fixture article is
//! digested and marked processed, a second run finds nothing to do, and a `kill -9` in the
//! middle loses nothing.

mod util;

use std::fs;
use std::thread;
use std::time::{Duration, Instant};

use util::llm::{LlmConfig, LlmServer, Scenario};
use util::{workspace_root, Cmd, TestDir};

/// The fixture's articles (examples/digest/articles.sql).
const ARTICLES: i64 = 30;

/// `pipeline.toml` and `examples/digest/` as a clean checkout has them, without any database.
fn clean_copy() -> TestDir {
    let dir = TestDir::new();
    dir.copy_from_workspace("pipeline.toml");
    dir.copy_from_workspace("examples/digest");
    assert!(!dir.exists("data/digest.db") && !dir.exists(".stagewise"));
    dir
}

fn alphanumeric(text: &str) -> String {
    text.chars().filter(|c| c.is_alphanumeric()).collect()
}

/// The text of `html`: tags and character references (`&#x27;`, `&amp;`) removed; the facts
/// carry the characters the references stand for, which [`alphanumeric`] drops too when they
/// are punctuation.
fn text_of(html: &str) -> String {
    let mut out = String::with_capacity(html.len());
    let mut rest = html;
    while let Some(at) = rest.find(['&', '<']) {
        out.push_str(&rest[..at]);
        let after = &rest[at..];
        let close = if after.starts_with('<') { '>' } else { ';' };
        match after.find(close).filter(|&end| close == '>' || end <= 10) {
            Some(end) => rest = &after[end + 1..],
            None => {
                out.push_str(&after[..1]);
                rest = &after[1..];
            }
        }
    }
    out.push_str(rest);
    out
}

fn db(dir: &TestDir) -> rusqlite::Connection {
    rusqlite::Connection::open(dir.join("data/digest.db")).expect("open the job's database")
}

fn count(dir: &TestDir, sql: &str) -> i64 {
    db(dir).query_row(sql, [], |r| r.get(0)).expect(sql)
}

fn run(dir: &TestDir) -> Cmd {
    Cmd::new(dir.path(), "run", "pipeline.toml")
}

/// Every article processed once, with a digest whose facts are sentences of its page.
fn assert_all_digested(dir: &TestDir) {
    assert_eq!(
        count(
            dir,
            "SELECT count(*) FROM articles WHERE processed_at IS NULL"
        ),
        0,
        "articles left unprocessed"
    );
    assert_eq!(count(dir, "SELECT count(*) FROM digests"), ARTICLES);
    let conn = db(dir);
    let mut stmt = conn
        .prepare("SELECT d.article_id, a.url, d.title, d.text_chars, d.facts FROM digests d JOIN articles a ON a.id = d.article_id")
        .expect("prepare");
    let rows = stmt
        .query_map([], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, Option<String>>(2)?,
                r.get::<_, i64>(3)?,
                r.get::<_, String>(4)?,
            ))
        })
        .expect("query");
    for row in rows {
        let (id, url, title, chars, facts) = row.expect("a row");
        assert!(
            title.is_some_and(|t| !t.is_empty()),
            "article {id}: no title"
        );
        assert!(chars >= 200, "article {id}: {chars} characters of text");
        let facts: serde_json::Value = serde_json::from_str(&facts).expect("facts are JSON");
        let list = facts["facts"].as_array().expect("a list of facts");
        assert!(!list.is_empty(), "article {id}: no facts");
        assert!(facts["summary"].as_str().is_some_and(|s| !s.is_empty()));
        // Extractive facts are sentences of the page: each one's first words appear in its
        // text (compared on letters and digits only, as entities and typographic spaces differ).
        let html = fs::read_to_string(dir.join(&format!("examples/digest/pages/{url}")))
            .expect("the page");
        let html = alphanumeric(&text_of(&html));
        for fact in list {
            let fact = fact.as_str().expect("a fact is text");
            let head: Vec<&str> = fact.split_whitespace().take(4).collect();
            assert!(
                html.contains(&alphanumeric(&head.join(" "))),
                "article {id}: {fact:?} does not come from {url}"
            );
        }
    }
}

#[test]
fn the_default_pipeline_digests_every_article_once() {
    let dir = clean_copy();
    let out = run(&dir).output();
    out.assert_code(0);
    assert_all_digested(&dir);

    let again = run(&dir).output();
    again.assert_code(0).assert_stderr_contains("items=0");
    assert_eq!(count(&dir, "SELECT count(*) FROM digests"), ARTICLES);

    // An article whose page is gone fails, one with too little text is skipped: the job marks
    // both where its source reads, and the next run does not take them again.
    dir.write(
        "examples/digest/pages/too-short.html",
        "<html><body><p>Too short.</p></body></html>",
    );
    db(&dir)
        .execute_batch(
            "INSERT INTO articles (id, url, source, added_at) VALUES
                 (101, 'gone.html', 'Test', '2026-01-01T00:00:00Z'),
                 (102, 'too-short.html', 'Test', '2026-01-01T00:00:00Z')",
        )
        .expect("insert");
    // (Two items of which one fails: more than the job's `max_failures` of 10 %.)
    let out = run(&dir)
        .env("STAGEWISE_PIPELINE__MAX_FAILURES", "2")
        .output();
    out.assert_code(1);
    let marked = |column: &str, id: i64| {
        count(
            &dir,
            &format!("SELECT count(*) FROM articles WHERE id = {id} AND {column} IS NOT NULL AND error <> ''"),
        )
    };
    assert_eq!(marked("failed_at", 101), 1, "{out}");
    assert_eq!(marked("skipped_at", 102), 1, "{out}");
    let after = run(&dir).output();
    after
        .assert_code(0)
        .assert_stderr_contains("the source has nothing new");
}

#[test]
fn a_kill_9_in_the_middle_loses_nothing() {
    let dir = clean_copy();
    // One extract thread makes the run last long enough to be killed in the middle.
    let mut running = run(&dir)
        .env("STAGEWISE_STAGE__EXTRACT__CONCURRENCY", "1")
        .spawn();
    let began = Instant::now();
    let mut digested = 0;
    while began.elapsed() < Duration::from_secs(60) && !running.has_exited() {
        if dir.exists("data/digest.db") {
            digested = db(&dir)
                .query_row("SELECT count(*) FROM digests", [], |r| r.get(0))
                .unwrap_or(0);
            if digested >= 3 {
                break;
            }
        }
        thread::sleep(Duration::from_millis(5));
    }
    running.signal(libc::SIGKILL);
    let killed = running.wait();
    assert_eq!(
        killed.code, None,
        "the run ended before it was killed\n{killed}"
    );
    let at_kill = count(&dir, "SELECT count(*) FROM digests");
    assert!(
        (3..ARTICLES).contains(&at_kill),
        "killed with {at_kill} of {ARTICLES} digested (seen {digested})"
    );

    let out = run(&dir).output();
    out.assert_code(0).assert_stderr_contains("resumed=true");
    assert_all_digested(&dir);
    let again = run(&dir).output();
    again.assert_code(0).assert_stderr_contains("items=0");
}

/// `examples/digest-postgres/`: the same job on a real PostgreSQL server and an
/// OpenAI-compatible server on 127.0.0.1. The example rows' URLs are placeholders, so the test
/// points them at the fixture's pages (and the stages at the local servers) by environment.
#[test]
fn the_postgres_job_runs_against_a_real_server_and_model() {
    let Some(mut db) = util::pg::Db::new() else {
        return;
    };
    let root = workspace_root();
    let schema =
        fs::read_to_string(root.join("examples/digest-postgres/schema.sql")).expect("schema.sql");
    db.client()
        .batch_execute(&schema)
        .expect("apply schema.sql");
    // The fixture's page of each article id, from the SQLite fixture's INSERT lines
    // (`  (1, 'ridgeback-50k-race-report.html', …`).
    let fixture =
        fs::read_to_string(root.join("examples/digest/articles.sql")).expect("articles.sql");
    let mut pages = 0;
    for line in fixture.lines() {
        let Some(rest) = line.trim().strip_prefix('(') else {
            continue;
        };
        let Some((id, rest)) = rest.split_once(", '") else {
            continue;
        };
        let Some((page, _)) = rest.split_once('\'') else {
            continue;
        };
        let Ok(id) = id.parse::<i64>() else { continue };
        db.client()
            .execute("UPDATE articles SET url = $1 WHERE id = $2", &[&page, &id])
            .expect("point the article at its page");
        pages += 1;
    }
    assert_eq!(pages, ARTICLES, "pages found in articles.sql");

    let server = LlmServer::start(LlmConfig::default());
    let dir = TestDir::new();
    let pipeline = root.join("examples/digest-postgres/pipeline.toml");
    let pages_dir = root.join("examples/digest/pages");
    let url = db.url().to_owned();
    let run = |fresh: bool| {
        let mut cmd = Cmd::new(dir.path(), "run", &pipeline.to_string_lossy())
            .env("DATABASE_URL", &url)
            .env("OPENAI_API_KEY", "sk-test-digest")
            .env(
                "STAGEWISE_STAGE__DOWNLOAD__BASE_URL",
                &pages_dir.to_string_lossy(),
            )
            .env(
                "STAGEWISE_STAGE__FACTS__BASE_URL",
                &server.base_url(Scenario::Ok),
            )
            // The checkpoint beside the test, not in the repository's example folder.
            .env(
                "STAGEWISE_CHECKPOINT__STORE",
                &format!("sqlite:{}", dir.join("state.db").display()),
            );
        if fresh {
            cmd = cmd.arg("--fresh");
        }
        cmd.output()
    };
    run(false).assert_code(0);
    let check = db.client();
    let unprocessed: i64 = check
        .query_one(
            "SELECT count(*) FROM articles WHERE processed_at IS NULL",
            &[],
        )
        .expect("count")
        .get(0);
    assert_eq!(unprocessed, 0);
    let rows = check
        .query("SELECT facts, title, published FROM digests", &[])
        .expect("digests");
    assert_eq!(rows.len() as i64, ARTICLES);
    for row in &rows {
        let facts: serde_json::Value = row.get(0);
        assert_eq!(facts, util::llm::default_answer());
        assert!(row.get::<_, Option<String>>(1).is_some());
    }
    assert_eq!(server.calls() as i64, ARTICLES);
    // Nothing left to do; and a fresh batch of nothing makes no call either.
    run(false).assert_code(0).assert_stderr_contains("items=0");
    run(true).assert_code(0);
    assert_eq!(server.calls() as i64, ARTICLES);
}
