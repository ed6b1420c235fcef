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
    let out = p.cmd("run").env("OPENAI_API_KEY", KEY).output();
    out.assert_code(0);
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
