//! The pipeline checked against the world: `validate --connect`, and `run` before it takes a
//! batch. Each broken case is caught with `file:line:col` at the key it is about and exit 2,
//! before any item runs; what works passes; a server that is down is a warning, not an error;
//! nothing is created or written by the checks.
//!
//! The PostgreSQL cases need `STAGEWISE_TEST_PG` (they skip loudly without it, and fail under
//! `CI=true`); run them through `./scripts/test`.

mod util;

use std::time::{Duration, Instant};

use util::llm::{LlmConfig, LlmServer, Scenario};
use util::pg::{self, Db};
use util::{locate, Cmd, Output, Pipeline, TestDir};

/// A password that appears nowhere else, so finding it in any output is a leak.
const SECRET: &str = "Connect-Check-Not-Printed";

/// The place of `key`'s value in `p`'s file: `pipeline.toml:LINE:COL`, the column of the value
/// after `key = ` on the first line that has it.
fn value_place(p: &Pipeline, key: &str) -> String {
    let (line, col) = locate(p.toml(), &format!("{key} = "));
    format!("pipeline.toml:{line}:{}", col + key.len() + 3)
}

/// `out` exited 2 with an error line at `place` about `stage` holding every one of `needles`,
/// and said that nothing was run.
fn assert_error_at(out: &Output, place: &str, stage: &str, needles: &[&str]) {
    out.assert_code(2);
    let head = format!("error: {place}: stage `{stage}`: ");
    assert!(
        out.errors()
            .iter()
            .any(|l| l.starts_with(&head) && needles.iter().all(|n| l.contains(n))),
        "expected an error line starting {head:?} with {needles:?}\n{out}"
    );
    out.assert_stderr_contains("nothing was run");
}

/// A SQLite source and sink: `articles(id, url, title)` read, `results(id, title)` written.
fn sqlite_job(query: &str, statement: &str, extra_stage: &str) -> Pipeline {
    let p = Pipeline::new(&format!(
        r#"
        [pipeline]
        name = "checked"

        [[stage]]
        name = "fetch"
        kind = "db-fetch"
        url = "sqlite:data.db"
        init_script = "schema.sql"
        query = "{query}"
        key = "id"

        {extra_stage}

        [[stage]]
        name = "save"
        kind = "persist"
        url = "sqlite:data.db"
        statement = "{statement}"
        "#
    ));
    p.dir.write(
        "schema.sql",
        "CREATE TABLE articles (id integer PRIMARY KEY, url text, title text);\n\
         CREATE TABLE results (id integer PRIMARY KEY, title text);\n\
         INSERT INTO articles VALUES (1, 'a', 'A'), (2, 'b', 'B');\n",
    );
    p
}

const GOOD_QUERY: &str = "SELECT id, url, title FROM articles LIMIT $limit";
const GOOD_STATEMENT: &str = "INSERT INTO results (id, title) VALUES (:key, :title)";

#[test]
fn a_good_sqlite_job_passes_and_nothing_is_created() {
    let p = sqlite_job(GOOD_QUERY, GOOD_STATEMENT, "");
    let out = p.cmd("validate").arg("--connect").output();
    out.assert_code(0);
    out.assert_stderr_contains("checked: stage `fetch`: ");
    out.assert_stderr_contains("the query prepared (columns: id, url, title)");
    out.assert_stderr_contains("checked: stage `save`: `statement` prepared");
    out.assert_stderr_contains("checked: checkpoint store: ");
    assert!(out.errors().is_empty(), "{out}");
    assert!(
        !p.dir.exists("data.db"),
        "the checks must not create the database"
    );
    assert!(!p.dir.exists(".stagewise"), "nor the checkpoint store");
    // And the run it checked runs.
    p.run().assert_code(0);
    assert!(p.dir.exists("data.db"));
}

#[test]
fn the_shipped_pipeline_checks_out_on_a_clean_checkout_and_nothing_is_made() {
    let dir = TestDir::new();
    dir.copy_from_workspace("pipeline.toml");
    dir.copy_from_workspace("examples/digest");
    let out = Cmd::new(dir.path(), "validate", "pipeline.toml")
        .arg("--connect")
        .output();
    out.assert_code(0);
    for stage in ["articles", "save"] {
        out.assert_stderr_contains(&format!("checked: stage `{stage}`: "));
    }
    out.assert_stderr_contains("its `init_script` ./examples/digest/articles.sql makes it");
    out.assert_stderr_contains("`on_skip` prepared");
    assert!(
        out.warnings().is_empty() && out.errors().is_empty(),
        "{out}"
    );
    assert!(
        !dir.exists("data") && !dir.exists(".stagewise"),
        "the checks must create nothing"
    );
}

#[test]
fn each_broken_sqlite_case_is_found_at_its_key_before_any_item() {
    let cases: [(&str, &str, &str, &str, &[&str]); 5] = [
        (
            "SELEC id, url, title FROM articles LIMIT $limit",
            GOOD_STATEMENT,
            "query",
            "fetch",
            &["`query` does not prepare", "syntax error"],
        ),
        (
            "SELECT id, url, title FROM nowhere LIMIT $limit",
            GOOD_STATEMENT,
            "query",
            "fetch",
            &["no such table: nowhere"],
        ),
        (
            GOOD_QUERY,
            "INSERT INTO results (id, titel) VALUES (:key, :title)",
            "statement",
            "save",
            &["`statement` does not prepare", "titel"],
        ),
        (
            GOOD_QUERY,
            "INSERT INTO results (id, title) VALUES (:key, :headline)",
            "statement",
            "save",
            &[
                "the field `headline` is not among those a record has",
                "the source gives `id`, `url`, `title`",
            ],
        ),
        (
            "SELECT url, title FROM articles LIMIT $limit",
            GOOD_STATEMENT,
            "key",
            "fetch",
            &["the query has no column `id` for the key"],
        ),
    ];
    for (query, statement, key, stage, needles) in cases {
        let p = sqlite_job(query, statement, "");
        let place = value_place(&p, key);
        for command in ["validate --connect", "run"] {
            let mut cmd = p.cmd(command.split(' ').next().unwrap_or(command));
            if command.ends_with("--connect") {
                cmd = cmd.arg("--connect");
            }
            let out = cmd.output();
            assert_error_at(&out, &place, stage, needles);
        }
        // `run` made its database from the script (the build does), and ran no item.
        assert!(
            !p.dir.exists(".stagewise/checked.summary.json"),
            "no item may run"
        );
        // Without `--connect`, `validate` reads the file only: it passes.
        p.validate().assert_code(0);
    }
}

#[test]
fn a_missing_source_file_is_found_at_its_path() {
    let p = Pipeline::through("missing-file", 1, "", "");
    let p = Pipeline::new(&p.toml().replace(
        "kind = \"generate\"\ncount = 1",
        "kind = \"jsonl\"\npath = \"articles.jsonl\"",
    ));
    let out = p.cmd("validate").arg("--connect").output();
    assert_error_at(
        &out,
        &value_place(&p, "path"),
        "src",
        &["articles.jsonl", "No such file"],
    );
}

/// A jsonl source → an llm stage on the test server (`scenario`) whose prompt names `prompt` →
/// a jsonl sink.
fn llm_job(server: &LlmServer, scenario: Scenario, prompt: &str) -> Pipeline {
    let p = Pipeline::new(&format!(
        r#"
        [pipeline]
        name = "llm-checked"

        [[stage]]
        name = "src"
        kind = "jsonl"
        path = "in.jsonl"
        key = "id"

        [[stage]]
        name = "facts"
        kind = "llm"
        provider = "openai"
        model = "test-model"
        base_url = "{}"
        prompt = "{prompt}"

        [[stage]]
        name = "out"
        kind = "jsonl"
        path = "out.jsonl"
        "#,
        server.base_url(scenario)
    ));
    p.dir.write(
        "in.jsonl",
        "{\"id\": 1, \"text\": \"one\"}\n{\"id\": 2, \"text\": \"two\", \"title\": \"Two\"}\n",
    );
    p
}

#[test]
fn a_prompt_naming_a_field_no_record_has_stops_before_any_call() {
    let server = LlmServer::start(LlmConfig::default());
    let p = llm_job(&server, Scenario::Ok, "Facts of {{title}}: {{txet}}");
    let place = value_place(&p, "prompt");
    for command in ["validate", "run"] {
        let mut cmd = p.cmd(command).env("OPENAI_API_KEY", "sk-test");
        if command == "validate" {
            cmd = cmd.arg("--connect");
        }
        let out = cmd.output();
        // `title` is in one record of the file: only `txet` is wrong.
        assert_error_at(
            &out,
            &place,
            "facts",
            &["the field `txet`", "the source gives `id`, `text`, `title`"],
        );
        assert!(!out.stderr.contains("field `title`"), "{out}");
        // `validate --connect` asks once, for a few tokens, which structured-output mode the
        // endpoint takes; the run sends no prompt.
        assert_eq!(server.calls(), 1, "after {command}\n{out}");
    }
    assert!(server.model_lists() >= 2, "the endpoint was reached");
}

#[test]
fn an_endpoint_that_refuses_the_key_is_an_error_and_one_down_a_warning() {
    let server = LlmServer::start(LlmConfig::default());
    let p = llm_job(&server, Scenario::Unauthorized, "Facts: {{text}}");
    let out = p
        .cmd("validate")
        .arg("--connect")
        .env("OPENAI_API_KEY", SECRET)
        .output();
    out.assert_code(2);
    assert!(
        out.errors()
            .iter()
            .any(|l| l.starts_with("error: pipeline.toml:")
                && l.contains("stage `facts`")
                && l.contains("HTTP 401")
                && l.contains("refused the key in `OPENAI_API_KEY`")),
        "{out}"
    );
    assert!(!out.stderr.contains(SECRET), "the key was printed\n{out}");
    assert_eq!(server.calls(), 0, "no tokens spent");

    // The same job on a good endpoint passes.
    let p = llm_job(&server, Scenario::Ok, "Facts: {{text}}");
    let out = p
        .cmd("validate")
        .arg("--connect")
        .env("OPENAI_API_KEY", "sk-test")
        .output();
    out.assert_code(0);
    out.assert_stderr_contains("the endpoint answered and takes the key");

    // A port nobody listens on: an outage, said as a warning; the file is valid.
    let closed = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.local_addr().expect("addr").port()
    };
    let down = p.toml().replace(
        &server.base_url(Scenario::Ok),
        &format!("http://127.0.0.1:{closed}/v1"),
    );
    let p = Pipeline::new(&down);
    p.dir.write("in.jsonl", "{\"id\": 1, \"text\": \"one\"}\n");
    let out = p
        .cmd("validate")
        .arg("--connect")
        .env("OPENAI_API_KEY", "sk-test")
        .output();
    out.assert_code(0);
    assert!(
        out.warnings().iter().any(|l| l.contains("stage `facts`")
            && l.contains(&format!("127.0.0.1:{closed}"))
            && l.contains("not checked")),
        "{out}"
    );
}

/// `validate --connect` learns which structured-output mode an endpoint takes, from one request
/// of a few tokens per mode tried; a mode set that the endpoint refuses is an error at its key.
#[test]
fn validate_connect_says_which_structured_output_mode_the_endpoint_takes() {
    let server = LlmServer::start(LlmConfig::default());
    let job = |scenario: Scenario, mode: &str| {
        let p = llm_job(&server, scenario, "Facts: {{text}}");
        let p = Pipeline::new(&p.toml().replace(
            "prompt = \"Facts",
            &format!("structured_output = \"{mode}\"\nprompt = \"Facts"),
        ));
        p.dir.write("in.jsonl", "{\"id\": 1, \"text\": \"one\"}\n");
        p
    };
    let validate = |p: &Pipeline| {
        p.cmd("validate")
            .arg("--connect")
            .env("OPENAI_API_KEY", "sk-test")
            .output()
    };

    // A server that takes `json_schema`: one request, of at most 16 tokens.
    let out = validate(&job(Scenario::Ok, "auto"));
    out.assert_code(0);
    out.assert_stderr_contains("takes the answer's schema as `response_format` `json_schema`");
    assert_eq!(server.calls(), 1, "{out}");
    let body = server.last_body().expect("the request's body");
    assert_eq!(body["max_tokens"], 16, "{body}");
    assert_eq!(body["response_format"]["type"], "json_schema", "{body}");

    // llama-cpp-python's way: `json_schema` refused with a 500, `json_object` taken; `auto`
    // will do with it.
    let out = validate(&job(Scenario::JsonObjectOnly, "auto"));
    out.assert_code(0);
    out.assert_stderr_contains(
        "refuses `response_format` `json_schema` and takes `json_object` with the schema",
    );
    assert_eq!(server.calls(), 3, "{out}");
    let out = validate(&job(Scenario::JsonObjectOnly, "json_object"));
    out.assert_code(0);
    out.assert_stderr_contains("takes the answer's schema as `response_format` `json_object`");
    assert_eq!(server.calls(), 4, "{out}");

    // `json_schema` set against it: the configuration's error, at the key, with the reason.
    let p = job(Scenario::JsonObjectOnly, "json_schema");
    let out = validate(&p);
    assert_error_at(
        &out,
        &value_place(&p, "structured_output"),
        "facts",
        &[
            "HTTP 500",
            "Input should be 'text' or 'json_object'",
            "set `structured_output`",
        ],
    );
    assert_eq!(server.calls(), 5, "{out}");

    // No schema sent, nothing to learn: no request.
    let out = validate(&job(Scenario::JsonObjectOnly, "off"));
    out.assert_code(0);
    assert_eq!(server.calls(), 5, "{out}");

    // A run's checks cost nothing: no request before the items'.
    let p = job(Scenario::Ok, "auto");
    let out = p.cmd("run").env("OPENAI_API_KEY", "sk-test").output();
    out.assert_code(0);
    assert_eq!(server.calls(), 6, "one item, one call\n{out}");
}

/// A PostgreSQL source and sink on `url`: `articles` read, `results` written.
fn pg_job(url: &str, query: &str, statement: &str, store: &str) -> Pipeline {
    Pipeline::new(&format!(
        r#"
        [pipeline]
        name = "pg-checked"
        {store}

        [[stage]]
        name = "fetch"
        kind = "db-fetch"
        url = "{url}"
        query = "{query}"
        key = "id"

        [[stage]]
        name = "save"
        kind = "persist"
        url = "{url}"
        statement = "{statement}"
        on_failure = "UPDATE articles SET error = :error WHERE id = :key"
        "#
    ))
}

#[test]
fn each_broken_postgres_case_is_found_at_its_key_before_any_item() {
    let Some(mut db) = Db::new() else { return };
    db.execute(
        "CREATE TABLE articles (id int PRIMARY KEY, url text, title text, error text);
         CREATE TABLE results (id int PRIMARY KEY, title text);
         INSERT INTO articles (id, url, title) VALUES (1, 'a', 'A'), (2, 'b', 'B')",
    );
    let url = db.url().to_owned();
    let good_query = "SELECT id, url, title FROM articles LIMIT $limit";
    let good = pg_job(&url, good_query, GOOD_STATEMENT, "");
    let out = good.cmd("validate").arg("--connect").output();
    out.assert_code(0);
    out.assert_stderr_contains("checked: stage `fetch`: connected to");
    out.assert_stderr_contains("the query prepared (columns: id, url, title)");
    out.assert_stderr_contains("checked: stage `save`: `on_failure` prepared");

    let cases: [(&str, &str, &str, &str, &[&str]); 6] = [
        (
            "SELEC id FROM articles LIMIT $limit",
            GOOD_STATEMENT,
            "query",
            "fetch",
            &["`query` does not prepare", "syntax error"],
        ),
        (
            "SELECT id, url, title FROM nowhere LIMIT $limit",
            GOOD_STATEMENT,
            "query",
            "fetch",
            &[r#"relation "nowhere" does not exist"#],
        ),
        (
            "SELECT id, url, titel FROM articles LIMIT $limit",
            GOOD_STATEMENT,
            "query",
            "fetch",
            &[r#"column "titel" does not exist"#],
        ),
        (
            good_query,
            "INSERT INTO results (id, titel) VALUES (:key, :title)",
            "statement",
            "save",
            &["`statement` does not prepare", r#"column "titel""#],
        ),
        (
            good_query,
            "INSERT INTO results (id, title) VALUES (:key, :headline)",
            "statement",
            "save",
            &["the field `headline` is not among those a record has"],
        ),
        (
            "SELECT id, (id * 1.5)::numeric AS price FROM articles LIMIT $limit",
            "INSERT INTO results (id) VALUES (:key)",
            "query",
            "fetch",
            &["column `price` has type `numeric`"],
        ),
    ];
    for (query, statement, key, stage, needles) in cases {
        let p = pg_job(&url, query, statement, "");
        let place = value_place(&p, key);
        let out = p.cmd("validate").arg("--connect").output();
        assert_error_at(&out, &place, stage, needles);
        let started = Instant::now();
        let out = p.run();
        assert_error_at(&out, &place, stage, needles);
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "a configuration fault stops the run in seconds"
        );
    }
    assert_eq!(
        db.query_i64("SELECT count(*) FROM results"),
        0,
        "nothing was written"
    );

    // A refused password, at the source's URL and at the store's: never printed.
    let wrong = pg::with_password(&url, SECRET);
    let p = pg_job(&wrong, good_query, GOOD_STATEMENT, "");
    let out = p.cmd("validate").arg("--connect").output();
    assert_error_at(
        &out,
        &value_place(&p, "url"),
        "fetch",
        &["cannot connect to", "authentication failed"],
    );
    assert!(!out.stderr.contains(SECRET), "{out}");
    let p = pg_job(
        &url,
        good_query,
        GOOD_STATEMENT,
        &format!("\n[checkpoint]\nstore = \"{wrong}\""),
    );
    let out = p.cmd("validate").arg("--connect").output();
    out.assert_code(2);
    let (line, col) = locate(p.toml(), "store = ");
    let place = format!("error: pipeline.toml:{line}:{}: ", col + 8);
    assert!(
        out.errors()
            .iter()
            .any(|l| l.starts_with(&place) && l.contains("authentication failed")),
        "expected {place:?}\n{out}"
    );
    assert!(!out.stderr.contains(SECRET), "{out}");
}

#[test]
fn a_database_that_is_down_is_a_warning_and_the_run_goes_on() {
    let Some(cluster) = pg::PrivateCluster::new() else {
        return;
    };
    let mut db = cluster.db();
    db.execute("CREATE TABLE results (id int PRIMARY KEY)");
    let url = db.url().to_owned();
    let p = Pipeline::new(&format!(
        r#"
        [pipeline]
        name = "down-at-start"

        [[stage]]
        name = "src"
        kind = "generate"
        count = 3

        [[stage]]
        name = "save"
        kind = "persist"
        url = "{url}"
        statement = "INSERT INTO results (id) VALUES (:n)"
        connect_timeout = "2s"
        retry = {{ attempts = 3, initial = "100ms", max = "200ms" }}
        "#
    ));
    cluster.stop();
    let out = p.cmd("validate").arg("--connect").output();
    out.assert_code(0);
    assert!(
        out.warnings().iter().any(|l| l.contains("stage `save`")
            && l.contains("cannot connect to")
            && l.contains("not checked")),
        "{out}"
    );
    // The run says so too, and leaves it to the stage's retries: its items fail as an outage's.
    let out = p.run();
    out.assert_code(1);
    assert!(
        out.warnings()
            .iter()
            .any(|l| l.contains("stage `save`") && l.contains("not checked")),
        "{out}"
    );
    assert!(!out.stderr.contains("nothing was run"), "{out}");
}

#[test]
fn an_init_script_for_a_postgres_url_is_refused_without_connecting() {
    // No server at that port: the key itself is the fault, found by `validate` alone.
    let p = Pipeline::new(
        r#"
        [pipeline]
        name = "pg-init-script"

        [[stage]]
        name = "fetch"
        kind = "db-fetch"
        url = "postgres://app@127.0.0.1:9/articles"
        init_script = "schema.sql"
        query = "SELECT id FROM articles LIMIT $limit"
        key = "id"

        [[stage]]
        name = "out"
        kind = "blackhole"
        "#,
    );
    for connect in [false, true] {
        let mut cmd = p.cmd("validate");
        if connect {
            cmd = cmd.arg("--connect");
        }
        let out = cmd.output();
        assert_error_at(
            &out,
            &value_place(&p, "init_script"),
            "fetch",
            &["`init_script` is for `sqlite:` databases only"],
        );
    }
}

#[test]
fn an_init_script_reaches_no_other_file_and_its_sink_is_not_blamed() {
    for (name, script) in [
        (
            "attach",
            "CREATE TABLE articles (id integer PRIMARY KEY, url text, title text);\n\
             CREATE TABLE results (id integer PRIMARY KEY, title text);\n\
             ATTACH DATABASE 'outside.db' AS o;\n\
             CREATE TABLE o.written (x);\n",
        ),
        (
            "vacuum-into",
            "CREATE TABLE articles (id integer PRIMARY KEY, url text, title text);\n\
             CREATE TABLE results (id integer PRIMARY KEY, title text);\n\
             COMMIT;\nVACUUM INTO 'outside.db';\nBEGIN;\n",
        ),
    ] {
        let p = sqlite_job(GOOD_QUERY, GOOD_STATEMENT, "");
        p.dir.write("schema.sql", script);
        let out = p.cmd("validate").arg("--connect").output();
        assert!(
            !p.dir.exists("outside.db"),
            "{name}: the check wrote a file\n{out}"
        );
        assert!(!p.dir.exists("data.db"), "{name}\n{out}");
        // The script could not be tried: said, and the sink on its file is not blamed for it.
        assert!(
            out.errors().iter().all(|l| !l.contains("stage `save`")),
            "{name}\n{out}"
        );
        assert!(
            out.stderr.contains("`init_script`"),
            "{name}: the script is named\n{out}"
        );
    }
}

#[test]
fn an_empty_source_file_is_nothing_new_not_a_fault() {
    let p = Pipeline::through(
        "empty-source",
        1,
        r#"
        [[stage]]
        name = "facts"
        kind = "llm"
        provider = "extractive"
        input = "text"
        "#,
        "",
    );
    let p = Pipeline::new(&p.toml().replace(
        "kind = \"generate\"\ncount = 1",
        "kind = \"jsonl\"\npath = \"in.jsonl\"",
    ));
    for content in ["", "\n\n"] {
        p.dir.write("in.jsonl", content);
        p.cmd("validate").arg("--connect").output().assert_code(0);
        let out = p.run();
        out.assert_code(0);
        out.assert_stderr_contains("nothing new");
    }
}

#[test]
fn a_model_list_that_echoes_the_key_does_not_print_it() {
    let key = "sk-echoed-in-the-list-1234567890";
    let server = LlmServer::start(LlmConfig {
        models: vec![format!("other-{key}")],
        ..LlmConfig::default()
    });
    let p = llm_job(&server, Scenario::Ok, "Facts: {{text}}");
    let out = p
        .cmd("validate")
        .arg("--connect")
        .env("OPENAI_API_KEY", key)
        .output();
    out.assert_code(0);
    assert!(
        out.warnings()
            .iter()
            .any(|l| l.contains("does not list the model `test-model`")),
        "{out}"
    );
    assert!(!out.stderr.contains(key), "the key was printed\n{out}");
}

#[test]
fn a_locked_database_holds_the_checks_no_longer_than_the_stage_timeout() {
    let p = sqlite_job(GOOD_QUERY, GOOD_STATEMENT, "");
    let p = Pipeline::new(
        &p.toml()
            .replace(
                "kind = \"persist\"",
                "kind = \"persist\"\ntimeout = \"1s\"\n\
                 on_failure = \"UPDATE articles SET title = :error WHERE id = :key\"\n\
                 on_skip = \"UPDATE articles SET title = :error WHERE id = :key\"",
            )
            .replace(
                "kind = \"db-fetch\"",
                "kind = \"db-fetch\"\ntimeout = \"1s\"",
            ),
    );
    p.dir.write(
        "schema.sql",
        "CREATE TABLE articles (id integer PRIMARY KEY, url text, title text);\n\
         CREATE TABLE results (id integer PRIMARY KEY, title text);\n",
    );
    let holder = rusqlite::Connection::open(p.dir.join("data.db")).expect("open");
    holder
        .execute_batch(
            "CREATE TABLE articles (id integer PRIMARY KEY, url text, title text);
             CREATE TABLE results (id integer PRIMARY KEY, title text);
             BEGIN EXCLUSIVE;",
        )
        .expect("lock");
    let started = Instant::now();
    let out = p.cmd("validate").arg("--connect").output();
    let took = started.elapsed();
    out.assert_code(0);
    assert!(
        out.warnings().iter().any(|l| l.contains("not checked")),
        "{out}"
    );
    // Each stage's checks end by its timeout (1 s): the source's, then the sink's.
    assert!(
        took < Duration::from_secs(6),
        "the checks took {took:?}\n{out}"
    );
    drop(holder);
}

#[test]
fn a_stop_during_the_checks_ends_the_run_before_anything_is_built() {
    // An `init_script` that never ends: the check is cut off at the stage's timeout, and the
    // build would run the script for real, unbounded.
    let p = sqlite_job(GOOD_QUERY, GOOD_STATEMENT, "");
    let p = Pipeline::new(&p.toml().replace(
        "kind = \"db-fetch\"",
        "kind = \"db-fetch\"\ntimeout = \"3s\"",
    ));
    p.dir.write(
        "schema.sql",
        "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT count(*) FROM c;\n",
    );
    let running = p.cmd("run").spawn();
    std::thread::sleep(Duration::from_millis(800));
    running.signal(libc::SIGTERM);
    let out = running.wait();
    out.assert_code(75);
    out.assert_stderr_contains("stopped before the batch was taken, as asked: nothing was run");
    assert!(
        out.elapsed < Duration::from_secs(30),
        "the stop ended it\n{out}"
    );
    assert!(
        !p.dir.exists("data.db") && !p.dir.exists("data.db.init"),
        "nothing was built\n{out}"
    );
}
