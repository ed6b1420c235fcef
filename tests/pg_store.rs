//! The PostgreSQL checkpoint store (`[checkpoint] store = "postgres://…"`) seen from outside,
//! against a real server: runs finish and report, a killed run resumes without losing or
//! repeating an item, its runners under leases (many runners: tests/pg_runners.rs), `retry-failed`, the response cache, and refused
//! connections that never show the password.
//!
//! Every pipeline takes the store's URL from `${DATABASE_URL}`, as a deployment would.

mod util;

use std::fs;
use std::time::Duration;

use util::llm::{LlmConfig, LlmServer, Scenario};
use util::pg::{self, Db};
use util::{keys, Cmd, Pipeline};

/// generate `count` (`batch_size` per run) → `middle` → jsonl sink `out.jsonl`, on the store at
/// `${DATABASE_URL}`.
fn pipeline(name: &str, count: usize, batch: usize, middle: &str) -> Pipeline {
    Pipeline::new(&format!(
        r#"
        [pipeline]
        name = "{name}"
        batch_size = {batch}

        [checkpoint]
        store = "${{DATABASE_URL}}"
        commit_max_items = 20

        [[stage]]
        name = "src"
        kind = "generate"
        count = {count}

        {middle}

        [[stage]]
        name = "out"
        kind = "jsonl"
        path = "out.jsonl"
        concurrency = 1
        "#
    ))
}

/// A slow middle stage, so that a run is still going when the test acts on it.
const SLOW: &str = r#"
        [[stage]]
        name = "nap"
        kind = "sleep"
        duration = "20ms"
        concurrency = 4
"#;

fn cmd(p: &Pipeline, db: &Db, subcommand: &str) -> Cmd {
    p.cmd(subcommand).env("DATABASE_URL", db.url())
}

fn status(p: &Pipeline, db: &Db) -> util::Status {
    let out = cmd(p, db, "status").arg("--json").output();
    out.assert_code(0);
    util::Status::parse(&out)
}

/// The URL of `db` as messages must show it: the password hidden.
fn redacted(db: &Db) -> String {
    pg::with_password(db.url(), "***")
}

#[test]
fn runs_finish_report_and_take_new_batches() {
    let Some(mut db) = Db::new() else { return };
    let p = pipeline("pg-batches", 120, 50, "");

    let before = cmd(&p, &db, "status").arg("--json").output();
    before.assert_code(0);
    let before: serde_json::Value = serde_json::from_str(&before.stdout).expect("JSON");
    assert!(before["run"].is_null(), "{before}");
    assert_eq!(
        db.query_i64("SELECT count(*) FROM pg_namespace WHERE nspname = 'stagewise'"),
        0,
        "`status` created the store"
    );

    cmd(&p, &db, "run").output().assert_code(0);
    let first = status(&p, &db);
    assert_eq!(first.raw["run"]["id"], 1);
    assert_eq!(first.raw["run"]["status"], "finished");
    assert_eq!(first.count("done"), 50);
    assert_eq!(db.query_i64("SELECT max(version) FROM stagewise.meta"), 9);
    assert!(
        !p.dir.exists(".stagewise/pg-batches.db"),
        "no SQLite store beside a PostgreSQL one"
    );
    assert!(
        p.dir.exists(".stagewise/pg-batches.summary.json"),
        "the summary is written under .stagewise/ beside the pipeline file"
    );

    // A finished run: the next one takes a new batch.
    cmd(&p, &db, "run").output().assert_code(0);
    let second = status(&p, &db);
    assert_eq!(second.raw["run"]["id"], 2);
    assert_eq!(second.count("done"), 50);
    assert_eq!(
        db.query_i64("SELECT count(*) FROM stagewise.items WHERE state = 'done'"),
        100
    );
    assert_eq!(p.sink("out.jsonl").len(), 100);
}

#[test]
fn a_killed_run_resumes_and_does_every_item_once() {
    let Some(db) = Db::new() else { return };
    const N: usize = 300;
    let p = pipeline("pg-kill", N, N, SLOW);
    let mut running = cmd(&p, &db, "run").spawn();
    assert!(
        running.wait_for_stderr("run started", Duration::from_secs(30)),
        "the run did not start\n{}",
        running.stderr_so_far()
    );
    std::thread::sleep(Duration::from_millis(600));
    assert!(!running.has_exited(), "the run ended before the kill");
    running.signal(libc::SIGKILL);
    let killed = running.wait();
    assert_eq!(killed.code, None, "{killed}");

    let mid = status(&p, &db);
    assert_eq!(mid.raw["run"]["status"], "running", "{:?}", mid.raw);
    assert!(mid.count("done") < N as u64, "{:?}", mid.counts);

    // The server released the dead process's lock: the next run is not refused.
    let out = cmd(&p, &db, "run").output();
    out.assert_code(0);
    out.assert_stderr_contains("resumed=true");
    let after = status(&p, &db);
    assert_eq!(after.raw["run"]["id"], 1, "the killed run was resumed");
    assert_eq!(after.count("done"), N as u64);
    assert_eq!(p.sink("out.jsonl").unique_keys(), keys(N));
}

#[test]
fn retry_failed_reruns_the_failed_items() {
    let Some(db) = Db::new() else { return };
    let p = pipeline(
        "pg-retry",
        30,
        30,
        r#"
        [[stage]]
        name = "breaker"
        kind = "fault"
        permanent_rate = 0.3
        seed = 9
        "#,
    );
    cmd(&p, &db, "run").output().assert_code(1);
    let before = status(&p, &db);
    let failed = before.count("failed");
    assert!(failed > 0, "{:?}", before.counts);
    assert_eq!(before.failed.len() as u64, failed);
    assert!(before.failed.iter().all(|f| f.stage == "breaker"));
    let sink_before = p.sink("out.jsonl").len();

    cmd(&p, &db, "retry-failed")
        .env("STAGEWISE_STAGE__BREAKER__PERMANENT_RATE", "0.0")
        .output()
        .assert_code(0);
    let after = status(&p, &db);
    assert_eq!(after.raw["run"]["id"], 1);
    assert_eq!(after.count("done"), 30, "{:?}", after.counts);
    assert!(after.failed.is_empty());
    let sink = p.sink("out.jsonl");
    assert_eq!(sink.unique_keys(), keys(30));
    assert_eq!(sink.len() - sink_before, failed as usize);
}

#[test]
fn answers_are_cached_in_the_store() {
    let Some(mut db) = Db::new() else { return };
    let server = LlmServer::start(LlmConfig::default());
    let p = Pipeline::new(&format!(
        r#"
        [pipeline]
        name = "pg-llm"

        [checkpoint]
        store = "${{DATABASE_URL}}"

        [[stage]]
        name = "articles"
        kind = "jsonl"
        path = "articles.jsonl"
        key = "id"

        [[stage]]
        name = "facts"
        kind = "llm"
        provider = "openai"
        model = "test-model"
        base_url = "{}"

        [[stage]]
        name = "out"
        kind = "jsonl"
        path = "out.jsonl"
        "#,
        server.base_url(Scenario::Ok)
    ));
    let lines: String = (0..5)
        .map(|i| {
            format!(
                "{}\n",
                serde_json::json!({
                    "id": format!("a{i}"),
                    "title": format!("Council vote {i}"),
                    "text": format!("The council approved budget number {i} by 7 votes to 2."),
                })
            )
        })
        .collect();
    p.dir.write("articles.jsonl", lines);
    cmd(&p, &db, "run")
        .env("OPENAI_API_KEY", "sk-test")
        .output()
        .assert_code(0);
    assert_eq!(server.calls(), 5);
    assert_eq!(db.query_i64("SELECT count(*) FROM stagewise.responses"), 5);
    let out = cmd(&p, &db, "run")
        .arg("--fresh")
        .env("OPENAI_API_KEY", "sk-test")
        .output();
    out.assert_code(0);
    assert_eq!(
        server.calls(),
        5,
        "a --fresh run called the API again\n{out}"
    );
    assert_eq!(status(&p, &db).raw["run"]["id"], 2);
}

#[test]
fn refused_connections_exit_2_without_the_password() {
    let Some(db) = Db::new() else { return };
    let p = pipeline("pg-refused", 5, 5, "");
    let secret = "Wr0ng-S3cret";

    let wrong = pg::with_password(db.url(), secret);
    let out = p.cmd("run").env("DATABASE_URL", &wrong).output();
    out.assert_code(2);
    out.assert_stderr_contains("password authentication failed");
    out.assert_stderr_contains(&redacted(&db));
    assert!(
        !out.stderr.contains(secret),
        "the password was shown\n{out}"
    );

    // Nothing listens on a port just released.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port");
    let unreachable = format!("postgres://stagewise:{secret}@127.0.0.1:{port}/nowhere");
    let out = p.cmd("run").env("DATABASE_URL", &unreachable).output();
    out.assert_code(2);
    out.assert_stderr_contains(&format!(
        "cannot connect to postgres://stagewise:***@127.0.0.1:{port}/nowhere"
    ));
    assert!(
        !out.stderr.contains(secret),
        "the password was shown\n{out}"
    );
    let out = p.cmd("status").env("DATABASE_URL", &unreachable).output();
    out.assert_code(2);
    assert!(
        !out.stderr.contains(secret),
        "the password was shown\n{out}"
    );
}

#[test]
fn a_newer_schema_is_refused() {
    let Some(mut db) = Db::new() else { return };
    let p = pipeline("pg-newer", 5, 5, "");
    cmd(&p, &db, "run").output().assert_code(0);
    db.execute("UPDATE stagewise.meta SET version = 99");
    let out = cmd(&p, &db, "run").output();
    out.assert_code(2);
    out.assert_stderr_contains("schema version 99");
    assert_eq!(p.sink("out.jsonl").len(), 5, "nothing ran");
}

#[test]
fn postgresql_urls_are_accepted_and_shown_redacted() {
    let Some(db) = Db::new() else { return };
    let p = pipeline("pg-scheme", 3, 3, "");
    let url = db.url().replacen("postgres://", "postgresql://", 1);
    p.cmd("run")
        .env("DATABASE_URL", &url)
        .output()
        .assert_code(0);
    let plan = p.cmd("plan").env("DATABASE_URL", &url).output();
    plan.assert_code(0);
    let shown = redacted(&db).replacen("postgres://", "postgresql://", 1);
    assert!(plan.stdout.contains(&shown), "{plan}");
    assert!(!plan.stdout.contains(&url), "{plan}");
}

/// A store as schema version 1 left it (before the response cache), with an interrupted run:
/// opening it upgrades it in place, and the run resumes where it stopped.
#[test]
fn a_version_1_store_is_upgraded_and_resumed() {
    let Some(mut db) = Db::new() else { return };
    let p = pipeline("pg-upgrade", 10, 10, "");
    cmd(&p, &db, "run").output().assert_code(0);
    db.execute(
        "DROP TABLE stagewise.history;
         DROP TABLE stagewise.checks;
         DROP TABLE stagewise.runners;
         DROP INDEX stagewise.items_unfinished;
         DROP INDEX stagewise.items_failed;
         ALTER TABLE stagewise.items DROP COLUMN owner, DROP COLUMN claim;
         ALTER TABLE stagewise.runs DROP COLUMN taker;
         ALTER TABLE stagewise.items DROP COLUMN taken, DROP COLUMN since;
         DROP TABLE stagewise.deaths;
         DROP TABLE stagewise.processes;
         DROP TABLE stagewise.responses;
         UPDATE stagewise.meta SET version = 1;
         UPDATE stagewise.runs SET status = 'interrupted';
         UPDATE stagewise.items SET state = 'pending', stage = 'out' WHERE seq > 6",
    );
    let out = cmd(&p, &db, "run").output();
    out.assert_code(0);
    out.assert_stderr_contains("resumed=true");
    assert_eq!(db.query_i64("SELECT max(version) FROM stagewise.meta"), 9);
    assert_eq!(db.query_i64("SELECT count(*) FROM stagewise.responses"), 0);
    assert_eq!(
        db.query_i64("SELECT count(*) FROM stagewise.history"),
        1,
        "the resuming process's end"
    );
    // The resumed run's own record, marked ended.
    assert_eq!(
        db.query_i64(
            "SELECT count(*) FROM stagewise.runners WHERE record::jsonb->>'ended' = 'true'"
        ),
        1
    );
    let after = status(&p, &db);
    assert_eq!(after.raw["run"]["id"], 1);
    assert_eq!(after.count("done"), 10);
    assert_eq!(
        p.sink("out.jsonl").len(),
        10 + 4,
        "only the 4 pending items ran again"
    );
}

/// A source that repeats keys, within a manifest chunk and across chunks: each key is kept once
/// (the first record), items are numbered without gaps, and the repeats are reported in order.
#[test]
fn repeated_keys_are_kept_once_across_manifest_chunks() {
    let Some(mut db) = Db::new() else { return };
    let p = Pipeline::new(
        r#"
        [pipeline]
        name = "pg-repeats"

        [checkpoint]
        store = "${DATABASE_URL}"

        [[stage]]
        name = "src"
        kind = "jsonl"
        path = "in.jsonl"
        key = "id"

        [[stage]]
        name = "out"
        kind = "jsonl"
        path = "out.jsonl"
        "#,
    );
    // 2,500 lines, keys 0..1500: line 3 repeats key 0 (same chunk), line 1500 on repeat the
    // first 1,000 (later chunks).
    let mut lines = String::new();
    for line in 0..2500usize {
        let id = match line {
            3 => 0,
            l if l < 3 => l,
            l if l < 1501 => l - 1,
            l => l - 1501,
        };
        lines.push_str(&format!("{{\"id\": \"{id}\", \"line\": {line}}}\n"));
    }
    p.dir.write("in.jsonl", lines);
    let out = cmd(&p, &db, "run").output();
    out.assert_code(0);
    out.assert_stderr_contains("duplicates=1000");
    out.assert_stderr_contains("first=0, 0, 1, 2, 3");
    let status = status(&p, &db);
    assert_eq!(status.raw["run"]["items"], 1500);
    assert_eq!(status.count("done"), 1500);
    assert_eq!(
        db.query_i64("SELECT max(seq) - min(seq) + 1 FROM stagewise.items"),
        1500
    );
    let sink = p.sink("out.jsonl");
    assert_eq!(sink.unique_keys(), keys(1500));
    let first = sink
        .records
        .iter()
        .find(|r| r["key"] == "0")
        .expect("key 0");
    assert_eq!(first["line"], 0, "the first record of a key is kept");
}

/// The server goes away in the middle of a run: the run stops with its progress saved up to
/// the last commit (exit 3), and once the server is back the next run resumes and finishes.
#[test]
fn a_lost_server_aborts_the_run_and_the_next_one_resumes() {
    let Some(cluster) = pg::PrivateCluster::new() else {
        return;
    };
    let db = cluster.db();
    const N: usize = 300;
    let p = pipeline("pg-lost", N, N, SLOW);
    let mut running = cmd(&p, &db, "run").spawn();
    assert!(
        running.wait_for_stderr("run started", Duration::from_secs(30)),
        "{}",
        running.stderr_so_far()
    );
    std::thread::sleep(Duration::from_millis(400));
    cluster.crash();
    let out = running.wait();
    assert_eq!(out.code, Some(3), "{out}");
    out.assert_stderr_contains("checkpoint");
    assert!(
        !out.stderr.contains(db.url()),
        "the password was shown\n{out}"
    );

    cluster.start();
    let out = cmd(&p, &db, "run").output();
    out.assert_code(0);
    out.assert_stderr_contains("resumed=true");
    assert_eq!(status(&p, &db).count("done"), N as u64);
    assert_eq!(p.sink("out.jsonl").unique_keys(), keys(N));
}

/// With a PostgreSQL store, the flight record reaches the store at every heartbeat: after
/// `kill -9` on a machine whose disk is gone (the local `.flight` file deleted), `status` on
/// another still names the dead process and what it had in flight, and the next run logs it.
#[test]
fn a_dead_process_is_reported_from_the_store_when_its_disk_is_gone() {
    let Some(db) = Db::new() else { return };
    let p = Pipeline::new(
        r#"
        [pipeline]
        name = "pg-flight"
        heartbeat = "100ms"

        [checkpoint]
        store = "${DATABASE_URL}"
        lease_ttl = "1s"

        [[stage]]
        name = "src"
        kind = "generate"
        count = 4

        [[stage]]
        name = "nap"
        kind = "sleep"
        duration = "2s"
        concurrency = 2

        [[stage]]
        name = "out"
        kind = "jsonl"
        path = "out.jsonl"
        "#,
    );
    let mut running = cmd(&p, &db, "run").spawn();
    assert!(
        running.wait_for_stderr("run started", Duration::from_secs(30)),
        "{}",
        running.stderr_so_far()
    );
    // A few heartbeats, each copying the record to the store.
    std::thread::sleep(Duration::from_millis(800));
    let pid = running.pid();
    running.signal(libc::SIGKILL);
    assert_eq!(running.wait().code, None);
    // The local record: `<name>.<hash of the database>.flight`.
    let local: Vec<std::path::PathBuf> = std::fs::read_dir(p.dir.join(".stagewise"))
        .expect("the folder")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|path| {
            let name = path.file_name().map(|n| n.to_string_lossy().into_owned());
            name.is_some_and(|n| n.starts_with("pg-flight.") && n.ends_with(".flight"))
        })
        .collect();
    assert_eq!(local.len(), 1, "{local:?}");
    std::fs::remove_file(&local[0]).expect("the local record");

    // A runner is known dead once its lease has expired.
    let mut report = status(&p, &db);
    let gone = std::time::Instant::now() + Duration::from_secs(10);
    while report.raw.get("previous_process").is_none() && std::time::Instant::now() < gone {
        std::thread::sleep(Duration::from_millis(50));
        report = status(&p, &db);
    }
    let previous = &report.raw["previous_process"];
    assert_eq!(
        previous["pid"].as_u64(),
        Some(u64::from(pid)),
        "{}",
        report.raw
    );
    let in_flight = previous["in_flight"].as_array().expect("in_flight");
    assert_eq!(in_flight.len(), 2, "{previous}");
    assert!(in_flight.iter().all(|a| a["stage"] == "nap"), "{previous}");

    let out = cmd(&p, &db, "run").output();
    out.assert_code(0);
    out.assert_stderr_contains("the previous process ended without a summary");
    out.assert_stderr_contains(&format!("pid={pid}"));
    let after = status(&p, &db);
    assert!(after.raw.get("previous_process").is_none(), "{}", after.raw);
    assert_eq!(after.count("done"), 4);
}

/// A PostgreSQL server that hangs (its processes stopped: sockets open, no answers) while a run
/// drains: the store's own timeouts need the server, so the watchdog ends the process within
/// `shutdown_grace` + 2 s, exit 3, naming the store without its password; nothing committed is
/// lost, and once the server is back the next run finishes the batch.
#[test]
fn a_hung_server_cannot_hold_the_shutdown() {
    let Some(cluster) = pg::PrivateCluster::new() else {
        return;
    };
    let db = cluster.db();
    const N: usize = 300;
    let p = Pipeline::new(&format!(
        r#"
        [pipeline]
        name = "pg-hung"
        heartbeat = "100ms"
        shutdown_grace = "1s"

        [checkpoint]
        store = "${{DATABASE_URL}}"
        commit_max_items = 20

        [[stage]]
        name = "src"
        kind = "generate"
        count = {N}

        {SLOW}

        [[stage]]
        name = "out"
        kind = "jsonl"
        path = "out.jsonl"
        "#
    ));
    let mut running = cmd(&p, &db, "run").spawn();
    assert!(
        running.wait_for_stderr("run started", Duration::from_secs(30)),
        "{}",
        running.stderr_so_far()
    );
    std::thread::sleep(Duration::from_millis(400));
    cluster.freeze();
    let signalled = std::time::Instant::now();
    running.signal(libc::SIGTERM);
    let out = running.wait();
    let took = signalled.elapsed();
    cluster.thaw();
    out.assert_code(3);
    // 1 s of grace and the watchdog's 2 s, with room for a loaded machine.
    assert!(took < Duration::from_secs(5), "exit took {took:?}\n{out}");
    out.assert_stderr_contains("watchdog: the run did not stop within `shutdown_grace` (1s)");
    out.assert_stderr_contains(&format!(
        "waiting for the checkpoint store {}",
        redacted(&db)
    ));
    assert!(
        !out.stderr.contains(db.url()),
        "the password was shown\n{out}"
    );

    // The thawed server ends the dead process's session (and lets go of its lock) a moment
    // after it runs again.
    let mut out = cmd(&p, &db, "run").output();
    let gone = std::time::Instant::now() + Duration::from_secs(10);
    while out.code == Some(2) && out.stderr.contains("in use") && std::time::Instant::now() < gone {
        std::thread::sleep(Duration::from_millis(100));
        out = cmd(&p, &db, "run").output();
    }
    out.assert_code(0);
    out.assert_stderr_contains("the previous process ended without a summary");
    assert_eq!(status(&p, &db).count("done"), N as u64);
    assert_eq!(p.sink("out.jsonl").unique_keys(), keys(N));
}

/// Same-named pipelines in one folder on two databases hold two locks: each keeps its own
/// flight record, so neither reports the other, live, as dead, and each death is reported
/// for the pipeline it happened in.
#[test]
fn same_named_pipelines_on_two_databases_keep_their_own_records() {
    let (Some(a), Some(b)) = (Db::new(), Db::new()) else {
        return;
    };
    let nap = |name: &str| {
        format!(
            "[[stage]]\nname = \"{name}\"\nkind = \"sleep\"\nduration = \"30s\"\nconcurrency = 2\n"
        )
    };
    let p = pipeline("twins", 4, 4, &nap("nap_a"));
    p.dir.write(
        "pipeline.toml",
        p.toml()
            .replace("batch_size = 4", "batch_size = 4\nheartbeat = \"100ms\"")
            .replace(
                "commit_max_items = 20",
                "commit_max_items = 20\nlease_ttl = \"1s\"",
            ),
    );
    // The second pipeline file, beside the first: same name, its own stage name.
    p.dir.write("b.toml", p.toml().replace("nap_a", "nap_b"));
    let run_b = || {
        Cmd::new(p.dir.path(), "run", "b.toml")
            .env("DATABASE_URL", b.url())
            .spawn()
    };

    let mut running_a = cmd(&p, &a, "run").spawn();
    assert!(running_a.wait_for_stderr("run started", Duration::from_secs(30)));
    let mut running_b = run_b();
    assert!(running_b.wait_for_stderr("run started", Duration::from_secs(30)));
    assert!(
        !running_b
            .stderr_so_far()
            .contains("ended without a summary"),
        "b reported a as dead: {}",
        running_b.stderr_so_far()
    );
    std::thread::sleep(Duration::from_millis(300));
    let dead = running_a.pid();
    running_a.signal(libc::SIGKILL);
    running_a.wait();

    // A runner is known dead once its lease has expired.
    let mut report = status(&p, &a);
    let gone = std::time::Instant::now() + Duration::from_secs(10);
    while report.raw.get("previous_process").is_none() && std::time::Instant::now() < gone {
        std::thread::sleep(Duration::from_millis(50));
        report = status(&p, &a);
    }
    let previous = &report.raw["previous_process"];
    assert_eq!(
        previous["pid"].as_u64(),
        Some(u64::from(dead)),
        "{previous}"
    );
    assert!(
        previous["in_flight"]
            .as_array()
            .is_some_and(|a| !a.is_empty() && a.iter().all(|x| x["stage"] == "nap_a")),
        "{previous}"
    );
    let b_status = Cmd::new(p.dir.path(), "status", "b.toml")
        .env("DATABASE_URL", b.url())
        .arg("--json")
        .output();
    assert!(!b_status.stdout.contains("previous_process"), "{b_status}");
    running_b.signal(libc::SIGKILL);
    running_b.wait();
}

/// A process killed with its disk (no flight record left, only the store's copy, taken at each
/// heartbeat, and the take-ups): each death counts one attempt against each item it had in
/// hand, not one from the copy and one more from the take-up; an orderly stop counts none.
#[test]
fn a_death_with_the_disk_lost_counts_one_attempt_per_item() {
    let Some(mut db) = Db::new() else { return };
    let p = pipeline(
        "pg-lost-disk",
        2,
        2,
        "[[stage]]\nname = \"nap\"\nkind = \"sleep\"\nduration = \"30s\"\ntimeout = \"60s\"\nconcurrency = 2\n",
    );
    p.dir.write(
        "pipeline.toml",
        p.toml()
            .replace(
                "batch_size = 2",
                "batch_size = 2\nheartbeat = \"100ms\"\nshutdown_grace = \"1s\"",
            )
            .replace(
                "commit_max_items = 20",
                "commit_max_items = 20\nlease_ttl = \"1s\"",
            ),
    );
    let attempts =
        |db: &mut Db| db.query_strings("SELECT attempts::text FROM stagewise.items ORDER BY seq");
    for (death, signal) in [(1, libc::SIGKILL), (2, libc::SIGKILL), (2, libc::SIGTERM)] {
        let mut running = cmd(&p, &db, "run").spawn();
        assert!(
            running.wait_for_stderr("heartbeat", Duration::from_secs(30)),
            "{}",
            running.stderr_so_far()
        );
        // Past a few heartbeats: the store's copy names both attempts.
        std::thread::sleep(Duration::from_millis(600));
        running.signal(signal);
        running.wait();
        // The disk is gone with the process.
        fs::remove_dir_all(p.dir.join(".stagewise")).expect("remove the state folder");
        // The next runner takes its items over (at once: the dead process is seen gone) and
        // counts the attempts its death cut short, in the claim; `status` does not. That run is
        // stopped once it holds them, its own attempts interrupted (not counted).
        let dead = db.query_i64("SELECT COALESCE(max(id), 0) FROM stagewise.runners");
        let next = cmd(&p, &db, "run").spawn();
        let until = std::time::Instant::now() + Duration::from_secs(30);
        while db.query_i64(&format!(
            "SELECT count(*) FROM stagewise.items WHERE owner > {dead}"
        )) < 2
        {
            assert!(
                std::time::Instant::now() < until,
                "{}",
                next.stderr_so_far()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        next.signal(libc::SIGTERM);
        let out = next.wait();
        assert!(matches!(out.code, Some(75 | 0)), "{out}");
        assert_eq!(
            attempts(&mut db),
            [death.to_string(), death.to_string()],
            "after {signal:?} {out}"
        );
    }
}

/// The store's sessions ended while the server is full (`max_connections` reached): it
/// connects again once a slot is free, within its 10 s, and the run goes on.
#[test]
fn a_store_cut_off_from_a_full_server_connects_again_when_a_slot_frees() {
    let Some(cluster) = pg::PrivateCluster::new() else {
        return;
    };
    cluster.psql("postgres", "ALTER SYSTEM SET max_connections = 12");
    cluster.stop();
    cluster.start();
    let db = cluster.db();
    const N: usize = 600;
    let p = pipeline("pg-full", N, N, SLOW);
    let mut running = cmd(&p, &db, "run").spawn();
    assert!(
        running.wait_for_stderr("run started", Duration::from_secs(30)),
        "{}",
        running.stderr_so_far()
    );
    // Every slot taken, then the store's sessions ended and their slots taken too: the store
    // must connect again into a full server.
    let mut held = Vec::new();
    let fill = |held: &mut Vec<postgres::Client>| loop {
        match pg::try_connect(cluster.url()) {
            Ok(client) => held.push(client),
            Err(e) => {
                assert_eq!(
                    e.code(),
                    Some(&postgres::error::SqlState::TOO_MANY_CONNECTIONS),
                    "{}",
                    pg::DbErr(&e)
                );
                return;
            }
        }
        assert!(held.len() <= 12, "the server takes more than it may");
    };
    fill(&mut held);
    let ended: i64 = held[0]
        .query_one(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
             WHERE application_name = 'stagewise/checkpoint'",
            &[],
        )
        .expect("end the store's sessions")
        .get(0);
    assert!(ended > 0, "the store had no session to end");
    fill(&mut held);
    std::thread::sleep(Duration::from_secs(3));
    drop(held);
    let out = running.wait();
    out.assert_code(0);
    assert_eq!(status(&p, &db).count("done"), N as u64);
    assert_eq!(p.sink("out.jsonl").unique_keys(), keys(N));
}
