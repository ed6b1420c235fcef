//! `item_deadline`: the most time an item may spend in a stage, across its attempts and the
//! waits between them, from its first attempt there, kept with the item across processes.
//! Against a real (test) LLM server that is down (503) or slow.

mod util;

use std::time::{Duration, Instant};

use serde_json::json;
use util::llm::{LlmConfig, LlmServer, Scenario};
use util::{locate, Pipeline};

const KEY: &str = "sk-test-deadline";

/// `items` articles → `pause` (a short sleep: the `llm` stage is not the item's first) →
/// `facts`, an `llm` stage with `policy` → a jsonl sink; a stop's grace of 300 ms.
fn job(name: &str, server: &LlmServer, items: usize, policy: &str) -> (Pipeline, String) {
    let toml = format!(
        r#"
        [pipeline]
        name = "{name}"
        # A stop ends the items' retries soon.
        shutdown_grace = "300ms"
        timeouts_outlast_grace = true

        [[stage]]
        name = "articles"
        kind = "jsonl"
        path = "articles.jsonl"
        key = "id"

        [[stage]]
        name = "pause"
        kind = "sleep"
        duration = "1ms"

        [[stage]]
        name = "facts"
        kind = "llm"
        provider = "openai"
        model = "test-model"
        base_url = "{}"
        concurrency = 4
        {policy}

        [[stage]]
        name = "out"
        kind = "jsonl"
        path = "out.jsonl"
        "#,
        server.base_url(Scenario::Ok)
    );
    let p = Pipeline::new(&toml);
    let lines: String = (0..items)
        .map(|i| format!("{}\n", json!({"id": format!("a{i}"), "title": format!("Article {i}"), "text": format!("Article {i} says {i}.")})))
        .collect();
    p.dir.write("articles.jsonl", lines);
    (p, toml)
}

/// A server that answers 503 to every call for the whole test.
fn down() -> LlmServer {
    LlmServer::start(LlmConfig {
        down_for: Duration::from_secs(3600),
        ..LlmConfig::default()
    })
}

const DEADLINE_PASSED: &str = "the item's deadline passed: `item_deadline` = ";

/// A deadline shorter than the retry schedule: each item fails with the deadline's error after
/// the attempts that fit in it, with most of its attempts left, without waiting out a backoff
/// that would end past it.
#[test]
fn a_deadline_shorter_than_the_retry_schedule_fails_the_item() {
    let server = down();
    let (p, _) = job(
        "deadline-short",
        &server,
        3,
        r#"item_deadline = "1s"
        retry = { attempts = 10, initial = "400ms", max = "400ms", jitter = false }"#,
    );
    let began = Instant::now();
    let out = p.cmd("run").env("OPENAI_API_KEY", KEY).output();
    let took = began.elapsed();
    out.assert_code(1);
    let status = p.status();
    assert_eq!(status.counts["failed"], 3, "{out}");
    let mut attempts = 0;
    for f in &status.failed {
        assert_eq!(f.stage, "facts", "{f:?}");
        assert!(
            f.error
                .starts_with(&format!("{DEADLINE_PASSED}1s in this stage")),
            "{f:?}"
        );
        assert!(
            f.error.contains("HTTP 503"),
            "the last error is kept: {f:?}"
        );
        // Attempts at 0, 0.4 and 0.8 s; the next would begin at 1.2 s.
        assert!((2..=3).contains(&f.attempts), "{f:?}");
        attempts += f.attempts;
    }
    assert_eq!(server.calls() as u64, attempts, "one call per attempt");
    // Ten attempts would take 3.6 s of backoff alone.
    assert!(took < Duration::from_secs(3), "took {took:?}\n{out}");
}

/// An attempt that runs into the deadline is cut short there, far before its own `timeout`;
/// `validate` warns that such a deadline leaves no room for a whole attempt, at the key.
#[test]
fn a_deadline_cuts_the_attempt_under_way_and_validate_warns_of_it() {
    let server = LlmServer::start(LlmConfig {
        latency: Duration::from_secs(60),
        ..LlmConfig::default()
    });
    let (p, toml) = job(
        "deadline-cut",
        &server,
        2,
        r#"timeout = "40s"
        item_deadline = "1s""#,
    );
    let out = p.validate();
    out.assert_code(0);
    let (line, col) = locate(&util::dedent(&toml), "item_deadline");
    let warnings = out.warnings();
    assert!(
        warnings
            .iter()
            .any(|w| w.contains(&format!("pipeline.toml:{line}:{col}"))
                && w.contains(
                    "`item_deadline` (1s) is shorter than one attempt's `timeout` (40s)"
                )),
        "{out}"
    );
    let began = Instant::now();
    let out = p.cmd("run").env("OPENAI_API_KEY", KEY).output();
    let took = began.elapsed();
    out.assert_code(1);
    let status = p.status();
    assert_eq!(status.counts["failed"], 2, "{out}");
    for f in &status.failed {
        assert_eq!(f.attempts, 1, "{f:?}");
        assert!(
            f.error.starts_with(&format!("{DEADLINE_PASSED}1s"))
                && f.error.contains("the last: timed out after"),
            "{f:?}"
        );
    }
    assert!(
        took < Duration::from_secs(20),
        "cut at the deadline, not at the 40 s timeout: {took:?}\n{out}"
    );
}

/// The deadline is kept with the item: a run stopped while its items retry, then run again
/// once their deadline has passed, fails them at once, without another attempt.
#[test]
fn the_deadline_counts_from_the_first_attempt_across_processes() {
    let server = down();
    let (p, _) = job(
        "deadline-kept",
        &server,
        4,
        r#"item_deadline = "3s"
        retry = { attempts = 100, initial = "200ms", max = "200ms", jitter = false }"#,
    );
    let first = p.cmd("run").env("OPENAI_API_KEY", KEY).spawn();
    let began = Instant::now();
    while server.calls() < 8 && began.elapsed() < Duration::from_secs(20) {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(server.calls() >= 8, "every item tried, and again");
    first.signal(libc::SIGTERM);
    let out = first.wait();
    out.assert_code(75);
    assert!(
        began.elapsed() < Duration::from_secs(3),
        "stopped before the deadline: {out}"
    );
    let status = p.status();
    assert_eq!(status.counts["failed"], 0, "{out}");
    let calls = server.calls();
    // Past every item's deadline, counted from its first attempt in the first process.
    std::thread::sleep(
        Duration::from_secs(3).saturating_sub(began.elapsed()) + Duration::from_millis(300),
    );
    let out = p.cmd("run").env("OPENAI_API_KEY", KEY).output();
    out.assert_code(1);
    assert_eq!(
        server.calls(),
        calls,
        "no attempt after the deadline\n{out}"
    );
    let status = p.status();
    assert_eq!(status.counts["failed"], 4, "{out}");
    for f in &status.failed {
        assert_eq!(f.stage, "facts", "{f:?}");
        assert!(
            f.error.starts_with(&format!("{DEADLINE_PASSED}3s")),
            "{f:?}"
        );
        assert!(f.attempts >= 2, "the first process's attempts kept: {f:?}");
    }
}

/// A source reads its batch once: `item_deadline` and `breaker` there do nothing, and
/// `validate` says so at the key.
#[test]
fn a_source_s_deadline_and_breaker_are_said_to_do_nothing() {
    let p = Pipeline::new(
        r#"
        [pipeline]
        name = "deadline-source"

        [[stage]]
        name = "numbers"
        kind = "generate"
        count = 3
        item_deadline = "5s"
        breaker = { failures = 2 }

        [[stage]]
        name = "out"
        kind = "blackhole"
        "#,
    );
    let out = p.validate();
    out.assert_code(0);
    for key in ["item_deadline", "breaker"] {
        assert!(
            out.warnings()
                .iter()
                .any(|w| w.contains(&format!("`{key}` does nothing on a source"))),
            "{key}\n{out}"
        );
    }
}
