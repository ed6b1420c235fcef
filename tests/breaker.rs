//! The circuit breaker against a real (test) LLM server that goes down for 10 s: the breaker
//! opens, few requests reach the server while it is down, no item fails, and the run finishes
//! once the server is back; with `on_open = "abort"` the run ends at once (exit 3), its items
//! kept for the next run.

mod util;

use std::time::Duration;

use serde_json::json;
use util::llm::{LlmConfig, LlmServer, Scenario};
use util::Pipeline;

const KEY: &str = "sk-test-breaker";
/// The outage.
const DOWN: Duration = Duration::from_secs(10);
const ITEMS: usize = 40;

/// `ITEMS` articles → an `llm` stage at concurrency 4 with `breaker` → a jsonl sink.
fn job(name: &str, server: &LlmServer, breaker: &str) -> Pipeline {
    let p = Pipeline::new(&format!(
        r#"
        [pipeline]
        name = "{name}"
        heartbeat = "1s"

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
        concurrency = 4
        timeout = "5s"
        retry = {{ attempts = 10, initial = "200ms", max = "1s" }}
        {breaker}

        [[stage]]
        name = "out"
        kind = "jsonl"
        path = "out.jsonl"
        "#,
        server.base_url(Scenario::Ok)
    ));
    let lines: String = (0..ITEMS)
        .map(|i| format!("{}\n", json!({"id": format!("a{i}"), "title": format!("Article {i}"), "text": format!("Article {i} says {i}.")})))
        .collect();
    p.dir.write("articles.jsonl", lines);
    p
}

fn server() -> LlmServer {
    LlmServer::start(LlmConfig {
        down_for: DOWN,
        ..LlmConfig::default()
    })
}

#[test]
fn an_open_breaker_spares_a_service_that_is_down_and_loses_no_item() {
    let server = server();
    let p = job(
        "breaker-wait",
        &server,
        r#"breaker = { failures = 4, window = "30s", cool_down = "2s" }"#,
    );
    let run = p.cmd("run").env("OPENAI_API_KEY", KEY).spawn();
    // While it runs, `status` says which breaker holds its attempts back.
    let began = std::time::Instant::now();
    let mut said = None;
    while said.is_none() && began.elapsed() < DOWN {
        let status = p.cmd("status").output();
        if status.stdout.contains("circuit breakers open: `facts`") {
            let json = p.cmd("status").arg("--json").output();
            said = Some((status, json));
        } else {
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    let out = run.wait();
    let (status, json) =
        said.unwrap_or_else(|| panic!("`status` never named the open breaker\n{out}"));
    assert!(status.stdout.contains("process: alive"), "{status}");
    let json: serde_json::Value = serde_json::from_str(json.stdout.trim()).expect("status --json");
    assert_eq!(json["run"]["breakers_open"], "`facts`", "{json:#}");
    out.assert_code(0);
    let after = p.cmd("status").output();
    assert!(!after.stdout.contains("circuit breakers open"), "{after}");
    let during = server.calls_with_status(503);
    assert!(
        during <= 20,
        "{during} requests reached the server while it was down\n{out}"
    );
    assert!(during >= 4, "the outage was felt: {during}");
    assert_eq!(server.answered_ok(), ITEMS, "one answer per item");
    let status = p.status();
    assert_eq!(status.count("done"), ITEMS as u64, "{:?}", status.counts);
    assert_eq!(status.count("failed"), 0, "{:?}", status.failed);
    assert!(
        out.elapsed >= DOWN,
        "it finished after the service came back"
    );
    assert_eq!(
        out.stderr.matches("circuit breaker opened").count(),
        1,
        "said once\n{out}"
    );
    out.assert_stderr_contains("circuit breaker closed");
    out.assert_stderr_contains("breaker=open");

    // Without the breaker, the same outage gets many more requests (each item's own retries).
    let server = server_without_breaker_baseline();
    eprintln!("requests during the 10 s outage: {during} with the breaker, {server} without");
    assert!(
        server > during,
        "without a breaker: {server} requests during the outage, with: {during}"
    );
}

/// Requests that reach the server during the outage when the stage has no breaker.
fn server_without_breaker_baseline() -> usize {
    let server = server();
    let p = job("breaker-none", &server, "");
    p.cmd("run").env("OPENAI_API_KEY", KEY).output();
    server.calls_with_status(503)
}

#[test]
fn with_on_open_abort_the_run_ends_at_once_and_keeps_its_items() {
    let server = server();
    let p = job(
        "breaker-abort",
        &server,
        r#"breaker = { failures = 4, window = "30s", cool_down = "2s", on_open = "abort" }"#,
    );
    let out = p.cmd("run").env("OPENAI_API_KEY", KEY).output();
    out.assert_code(3);
    out.assert_stderr_contains(
        "the circuit breaker of stage `facts` opened after 4 transient failures",
    );
    assert!(out.elapsed < DOWN, "it did not wait for the service\n{out}");
    let status = p.status();
    assert_eq!(status.count("done"), 0, "{:?}", status.counts);
    assert_eq!(
        status.count("failed"),
        0,
        "no item is blamed: {:?}",
        status.failed
    );
    // `plan` shows the breaker as resolved.
    let plan = p.cmd("plan").output();
    plan.assert_code(0);
    assert!(
        plan.stdout
            .contains(r#"{ failures = 4, window = "30s", cool_down = "2s", on_open = "abort" }"#),
        "{plan}"
    );
}

/// One site that refuses connections among three that answer, `http-download` with a breaker
/// per host: the dead host's breaker opens and its items wait aside, and the live hosts' items
/// finish within 1.2× the time they take with no dead host. With one breaker for the whole
/// stage instead, the dead host's failures hold every host's items back.
#[test]
fn one_dead_host_holds_back_no_other_with_a_breaker_per_host() {
    use std::time::Instant;
    use util::http::{Server, SLOW_PAGE};

    const PER_LIVE_HOST: usize = 20;
    const DEAD_ITEMS: usize = 10;
    let live = [
        Server::start(),
        Server::start_at("127.0.0.3:0").expect("bind 127.0.0.3:0"),
        Server::start_at("127.0.0.4:0").expect("bind 127.0.0.4:0"),
    ];
    let dead = refused_address();
    // Each run: its pipeline, and the time from the first to the last live request it sent.
    let run = |name: &str, with_dead: bool, per_host: bool| -> (Pipeline, util::Output, Duration) {
        let mut lines = String::new();
        for i in 0..PER_LIVE_HOST {
            for (h, server) in live.iter().enumerate() {
                let url = server.url(&format!("/slow/{name}-{h}-{i}"));
                lines.push_str(&format!(
                    "{}\n",
                    json!({"id": format!("live{h}-{i:02}"), "url": url})
                ));
            }
            if with_dead && i < DEAD_ITEMS {
                let url = format!("http://{dead}/page");
                lines.push_str(&format!(
                    "{}\n",
                    json!({"id": format!("dead-{i:02}"), "url": url})
                ));
            }
        }
        let p = Pipeline::new(&format!(
            r#"
            [pipeline]
            name = "{name}"
            max_run_time = "3s"
            shutdown_grace = "1s"

            [[stage]]
            name = "urls"
            kind = "jsonl"
            path = "urls.jsonl"
            key = "id"

            [[stage]]
            name = "fetch"
            kind = "http-download"
            allow_private_networks = true
            concurrency = 8
            per_host_concurrency = 2
            timeout = "5s"
            retry = {{ attempts = 2, initial = "100ms", max = "100ms" }}
            breaker = {{ failures = 3, window = "10s", cool_down = "2s" }}
            per_host_breaker = {per_host}

            [[stage]]
            name = "out"
            kind = "blackhole"
            "#
        ));
        p.dir.write("urls.jsonl", lines);
        let started = Instant::now();
        let out = p.run();
        let at: Vec<Instant> = live
            .iter()
            .flat_map(|s| s.requests())
            .filter(|r| r.at >= started && r.path.contains(&format!("/slow/{name}-")))
            .map(|r| r.at)
            .collect();
        let first = at.iter().min().copied().unwrap_or(started);
        let last = at.iter().max().copied().unwrap_or(started);
        (p, out, last - first)
    };
    let live_done = |p: &Pipeline| -> usize {
        let status = p.status();
        let failed_live = status
            .failed
            .iter()
            .filter(|f| f.key.starts_with("live"))
            .count();
        assert_eq!(failed_live, 0, "no live item fails: {:?}", status.failed);
        status.count("done") as usize
    };
    let all_live = 3 * PER_LIVE_HOST;
    let mut alone = Vec::new();
    let mut beside_dead = Vec::new();
    // Twice each, interleaved; the quicker of each pair is compared (the machine is shared).
    for round in 0..2 {
        let (p, out, took) = run(&format!("hosts-alone-{round}"), false, true);
        out.assert_code(0);
        assert_eq!(live_done(&p), all_live, "{out}");
        alone.push(took);
        let (p, out, took) = run(&format!("hosts-dead-{round}"), true, true);
        assert_eq!(
            live_done(&p),
            all_live,
            "every live page, beside the dead host\n{out}"
        );
        assert_eq!(
            out.stderr
                .matches("circuit breaker opened for one lane")
                .count(),
            1,
            "the dead host's breaker, once\n{out}"
        );
        out.assert_stderr_contains("lane=127.0.0.2");
        beside_dead.push(took);
    }
    let alone = alone.into_iter().min().expect("two runs");
    let beside_dead = beside_dead.into_iter().min().expect("two runs");
    eprintln!("the live hosts' pages took {alone:?} alone, {beside_dead:?} beside a dead host");
    // Ten rounds of 100 ms per host at the least.
    assert!(alone >= SLOW_PAGE * 9, "{alone:?}");
    assert!(
        beside_dead.as_secs_f64() <= alone.as_secs_f64() * 1.2,
        "{beside_dead:?} beside a dead host, {alone:?} alone"
    );

    // One breaker for the stage: the dead host opens it for every host.
    let (p, out, took) = run("hosts-dead-one-breaker", true, false);
    let done = live_done(&p);
    assert!(
        done < all_live || took.as_secs_f64() >= alone.as_secs_f64() * 1.5,
        "one breaker for all: {done} live pages in {took:?}\n{out}"
    );
    out.assert_stderr_contains("circuit breaker opened: the stage starts no attempt");
}

/// A host that refuses connections, its breaker open for a minute, `item_deadline = "2s"`:
/// its items that never got to try (they wait at its breaker) fail at their deadline too,
/// so they do not fill the process while the other hosts' items wait behind them.
#[test]
fn items_waiting_at_an_open_host_breaker_fail_at_their_deadline() {
    use util::http::Server;

    // Two places for the dead host: without their clocks running while they wait, its items
    // would go through two at a time, one deadline after another (30 s here).
    const DEAD: usize = 30;
    let live = Server::start();
    let dead = refused_address();
    let mut lines = String::new();
    for i in 0..DEAD {
        let url = format!("http://{dead}/page");
        lines.push_str(&format!(
            "{}\n",
            json!({"id": format!("dead-{i:02}"), "url": url})
        ));
        if i % 3 == 0 {
            let url = live.url("/page");
            lines.push_str(&format!(
                "{}\n",
                json!({"id": format!("live-{i:02}"), "url": url})
            ));
        }
    }
    let p = Pipeline::new(
        r#"
        [pipeline]
        name = "host-breaker-deadline"

        [[stage]]
        name = "urls"
        kind = "jsonl"
        path = "urls.jsonl"
        key = "id"

        [[stage]]
        name = "fetch"
        kind = "http-download"
        allow_private_networks = true
        concurrency = 2
        per_host_concurrency = 2
        timeout = "2s"
        retry = { attempts = 5, initial = "100ms", max = "100ms" }
        breaker = { failures = 2, window = "30s", cool_down = "60s" }
        per_host_breaker = true
        item_deadline = "2s"

        [[stage]]
        name = "out"
        kind = "blackhole"
        "#,
    );
    p.dir.write("urls.jsonl", lines);
    let out = p.run();
    out.assert_code(1);
    // A minute's cool-down would hold every dead item for a minute each, one probe at a time;
    // waiting with no clock, two at a time for their host's places, 2 s each: 30 s.
    assert!(
        out.elapsed < Duration::from_secs(12),
        "{:?}\n{out}",
        out.elapsed
    );
    let status = p.status();
    assert_eq!(status.count("done"), 10, "every live page\n{out}");
    assert_eq!(status.count("failed"), 30, "{:?}", status.counts);
    let never_tried = status
        .failed
        .iter()
        .filter(|f| {
            f.error
                .starts_with("the item's deadline passed: `item_deadline` = 2s in this stage")
                && f.error.contains("0 attempts made")
        })
        .count();
    assert!(
        never_tried > 0,
        "some waited at the breaker from the start: {:?}",
        status.failed
    );
    // When each began waiting is kept, for a process that resumes them.
    let store = rusqlite::Connection::open(p.dir.join(".stagewise/host-breaker-deadline.db"))
        .expect("open the store");
    let unkept: i64 = store
        .query_row(
            "SELECT count(*) FROM items WHERE state = 'failed' AND since IS NULL",
            [],
            |r| r.get(0),
        )
        .expect("count");
    assert_eq!(unkept, 0, "every failed item's clock was kept");
}

/// A stop while items wait at an open breaker, nothing under way: they go back to pending at
/// once, using no attempt, rather than holding the process through its grace.
#[test]
fn a_stop_while_the_breaker_is_open_ends_the_run_at_once() {
    let server = server();
    let p = job(
        "breaker-stop",
        &server,
        r#"breaker = { failures = 4, window = "30s", cool_down = "60s" }"#,
    );
    let toml = p.toml().replace(
        "heartbeat = \"1s\"",
        "heartbeat = \"1s\"\nshutdown_grace = \"20s\"\ntimeouts_outlast_grace = true",
    );
    p.dir.write("pipeline.toml", &toml);
    let mut run = p.cmd("run").env("OPENAI_API_KEY", KEY).spawn();
    assert!(
        run.wait_for_stderr("circuit breaker opened", Duration::from_secs(20)),
        "{}",
        run.stderr_so_far()
    );
    let stopped = std::time::Instant::now();
    run.signal(libc::SIGTERM);
    let out = run.wait();
    out.assert_code(75);
    assert!(
        stopped.elapsed() < Duration::from_secs(5),
        "not through the 20 s grace: {:?}\n{out}",
        stopped.elapsed()
    );
    let status = p.status();
    assert_eq!(status.count("failed"), 0, "{:?}", status.failed);
    assert_eq!(status.count("done"), 0);
}

/// An address on 127.0.0.2 that nothing listens on (bound, then let go): every connection to
/// it is refused at once, as a dead site's.
fn refused_address() -> std::net::SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.2:0").expect("bind 127.0.0.2:0");
    listener.local_addr().expect("its address")
}
