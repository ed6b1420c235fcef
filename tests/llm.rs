//! The `llm` stage end to end, against a real OpenAI- and Anthropic-compatible server on
//! 127.0.0.1 that misbehaves on purpose (tests/util/llm.rs): answers must be parsed and checked,
//! every failure bounded and classified, a wrong key must stop the run, and a paid answer must
//! never be paid for twice.
//!
//! Each pipeline is `jsonl` (one `{"id", "title", "text"}` per line) → `llm` → `jsonl` sink.
//! The server counts and logs every request, so tests assert what the client did.

mod util;

use std::time::Duration;

use serde_json::{json, Value};
use util::llm::{default_answer, LlmConfig, LlmServer, Scenario, PROSE};
use util::{Pipeline, Status};

const KEY: &str = "sk-test-7f3a9c";

fn article(i: usize) -> Value {
    json!({
        "id": format!("a{i}"),
        "title": format!("Council vote {i}"),
        "text": format!("The council approved budget number {i} on 3 March 2026 by 7 votes to 2. It totals {i}.2 million euros."),
    })
}

/// `n` articles → `llm` with `keys` → `out.jsonl`.
fn pipeline(name: &str, n: usize, keys: &str) -> Pipeline {
    pipeline_at(name, n, 4, keys)
}

/// As [`pipeline`], the `llm` stage at `concurrency`.
fn pipeline_at(name: &str, n: usize, concurrency: usize, keys: &str) -> Pipeline {
    let p = Pipeline::new(&format!(
        r#"
[pipeline]
name = "{name}"

[[stage]]
name = "articles"
kind = "jsonl"
path = "articles.jsonl"
key = "id"

[[stage]]
name = "facts"
kind = "llm"
concurrency = {concurrency}
{keys}

[[stage]]
name = "out"
kind = "jsonl"
path = "out.jsonl"
"#
    ));
    let lines: String = (0..n).map(|i| format!("{}\n", article(i))).collect();
    p.dir.write("articles.jsonl", lines);
    p
}

fn openai(server: &LlmServer, scenario: Scenario, extra: &str) -> String {
    format!(
        "provider = \"openai\"\nmodel = \"test-model\"\nbase_url = \"{}\"\n{extra}",
        server.base_url(scenario)
    )
}

/// The stage's figures in the summary file (calls, cache hits, tokens, cost).
fn figures(p: &Pipeline, name: &str) -> Value {
    p.stage_summary(name, "facts")["figures"].clone()
}

#[test]
fn openai_answers_are_parsed_checked_and_kept() {
    let server = LlmServer::start(LlmConfig::default());
    let p = pipeline(
        "llm-openai",
        3,
        &openai(
            &server,
            Scenario::Ok,
            "system = \"You are careful. Article {{key}}.\"",
        ),
    );
    p.cmd("run")
        .env("OPENAI_API_KEY", KEY)
        .output()
        .assert_code(0);
    let out = p.sink("out.jsonl");
    assert_eq!(out.len(), 3);
    for record in &out.records {
        assert_eq!(record["facts"], default_answer(), "{record:?}");
    }
    let requests = server.requests();
    assert_eq!(requests.len(), 3);
    let a1 = requests
        .iter()
        .find(|r| {
            r.body
                .as_ref()
                .is_some_and(|b| b.to_string().contains("Council vote 1"))
        })
        .expect("the request for a1");
    assert_eq!(
        a1.header("authorization"),
        Some(format!("Bearer {KEY}").as_str())
    );
    let body = a1.body.as_ref().expect("a JSON body");
    assert_eq!(body["model"], "test-model");
    assert_eq!(body["messages"][0]["role"], "system");
    assert_eq!(
        body["messages"][0]["content"],
        "You are careful. Article a1."
    );
    let prompt = body["messages"][1]["content"].as_str().expect("the prompt");
    assert!(prompt.contains("Title: Council vote 1"), "{prompt}");
    assert!(
        prompt.contains("budget number 1 on 3 March 2026"),
        "{prompt}"
    );
    assert_eq!(body["response_format"]["type"], "json_schema");
    assert_eq!(
        body["response_format"]["json_schema"]["schema"]["required"],
        json!(["facts", "summary"])
    );
    let f = figures(&p, "llm-openai");
    assert_eq!(
        (f["calls"].as_f64(), f["cache_hits"].as_f64()),
        (Some(3.0), Some(0.0)),
        "{f}"
    );
    assert_eq!(f["tokens_in"], 3000.0, "{f}");
    assert_eq!(f["tokens_out"], 600.0, "{f}");
}

#[test]
fn anthropic_answers_come_from_a_forced_tool() {
    let server = LlmServer::start(LlmConfig::default());
    let keys = format!(
        "provider = \"anthropic\"\nmodel = \"claude-test\"\nbase_url = \"{}\"\noutput = \"digest\"\n",
        server.base_url(Scenario::Ok)
    );
    let p = pipeline("llm-anthropic", 2, &keys);
    p.cmd("run")
        .env("ANTHROPIC_API_KEY", KEY)
        .output()
        .assert_code(0);
    for record in p.sink("out.jsonl").records {
        assert_eq!(record["digest"], default_answer());
    }
    let r = &server.requests()[0];
    assert_eq!(r.header("x-api-key"), Some(KEY));
    assert!(r.header("anthropic-version").is_some());
    let body = r.body.as_ref().expect("a JSON body");
    assert_eq!(body["tool_choice"]["type"], "tool");
    assert_eq!(body["tools"][0]["input_schema"]["type"], "object");
    assert!(body["max_tokens"].as_u64().is_some_and(|n| n > 0));

    // Without the key variable, nothing starts: exit 2 naming the variable.
    let out = p
        .cmd("run")
        .arg("--fresh")
        .env_remove("ANTHROPIC_API_KEY")
        .output();
    out.assert_code(2)
        .assert_stderr_contains("ANTHROPIC_API_KEY");
}

#[test]
fn invalid_answers_are_retried_then_fail_quoting_the_answer() {
    let server = LlmServer::start(LlmConfig::default());
    let retry = "retry = { attempts = 5, initial = \"10ms\", max = \"50ms\" }";
    let prose = pipeline("llm-prose", 2, &openai(&server, Scenario::NotJson, retry));
    prose
        .cmd("run")
        .env("OPENAI_API_KEY", KEY)
        .output()
        .assert_code(1);
    let status = prose.status();
    status.assert_failed(&["a0", "a1"], "facts", 2, "the answer is not JSON");
    assert!(
        status.failed[0].error.contains(&PROSE[..40]),
        "{:?}",
        status.failed
    );

    let shape = pipeline(
        "llm-shape",
        1,
        &openai(
            &server,
            Scenario::BadSchema,
            &format!("{retry}\ninvalid_output_attempts = 3"),
        ),
    );
    shape
        .cmd("run")
        .env("OPENAI_API_KEY", KEY)
        .output()
        .assert_code(1);
    let status = shape.status();
    status.assert_failed(&["a0"], "facts", 3, "does not fit the schema");
    assert!(
        status.failed[0]
            .error
            .contains("\"not a list\" is not of type \"array\""),
        "{:?}",
        status.failed
    );
    // Two invalid answers per item for the first pipeline, three for the second.
    assert_eq!(server.calls(), 2 * 2 + 3);

    // An answer `max_tokens` cut before its JSON ended is said to be cut, not "not JSON".
    let cut = pipeline(
        "llm-cut",
        1,
        &openai(
            &server,
            Scenario::Cut,
            &format!("{retry}\ninvalid_output_attempts = 2"),
        ),
    );
    cut.cmd("run")
        .env("OPENAI_API_KEY", KEY)
        .output()
        .assert_code(1);
    let status = cut.status();
    status.assert_failed(&["a0"], "facts", 2, "the answer was cut at `max_tokens`");
    assert!(
        status.failed[0].error.contains("Work starts in"),
        "{:?}",
        status.failed
    );
    assert_eq!(server.calls(), 2 * 2 + 3 + 2);

    let second = pipeline(
        "llm-second",
        2,
        &openai(&server, Scenario::InvalidThenOk, retry),
    );
    second
        .cmd("run")
        .env("OPENAI_API_KEY", KEY)
        .output()
        .assert_code(0);
    for record in second.sink("out.jsonl").records {
        assert_eq!(record["facts"], default_answer());
    }
}

#[test]
fn a_429_waits_as_long_as_the_server_asks() {
    let server = LlmServer::start(LlmConfig::default());
    // Without the hint the backoff would retry within 20 ms.
    let p = pipeline(
        "llm-429",
        2,
        &openai(
            &server,
            Scenario::RateLimitedOnce,
            "retry = { attempts = 3, initial = \"10ms\", max = \"20ms\" }",
        ),
    );
    let out = p.cmd("run").env("OPENAI_API_KEY", KEY).output();
    out.assert_code(0);
    assert_eq!(server.count_429(), 2);
    assert_eq!(server.answered_ok(), 2);
    for key in ["Council vote 0", "Council vote 1"] {
        let times: Vec<_> = server
            .requests()
            .into_iter()
            .filter(|r| r.body.as_ref().is_some_and(|b| b.to_string().contains(key)))
            .map(|r| r.at)
            .collect();
        assert_eq!(times.len(), 2, "{key}");
        let waited = times[1] - times[0];
        assert!(
            waited >= Duration::from_millis(1900) && waited < Duration::from_secs(10),
            "{key}: retried after {waited:?}, asked 2 s"
        );
    }
}

#[test]
fn server_errors_are_retried_and_client_errors_are_not() {
    let server = LlmServer::start(LlmConfig::default());
    let retry = "retry = { attempts = 3, initial = \"10ms\", max = \"50ms\" }";
    let flaky = pipeline("llm-500", 2, &openai(&server, Scenario::ErrorOnce, retry));
    flaky
        .cmd("run")
        .env("OPENAI_API_KEY", KEY)
        .output()
        .assert_code(0);
    assert_eq!(server.calls_with_status(500), 2);
    assert_eq!(flaky.sink("out.jsonl").len(), 2);

    let bad = pipeline("llm-400", 2, &openai(&server, Scenario::BadRequest, retry));
    bad.cmd("run")
        .env("OPENAI_API_KEY", KEY)
        .output()
        .assert_code(1);
    bad.status()
        .assert_failed(&["a0", "a1"], "facts", 1, "HTTP 400");
    assert_eq!(server.calls_with_status(400), 2);
}

#[test]
fn a_server_that_never_answers_ends_at_the_timeout() {
    let server = LlmServer::start(LlmConfig::default());
    let p = pipeline(
        "llm-silent",
        4,
        &openai(
            &server,
            Scenario::Silent,
            "timeout = \"1s\"\nretry = { attempts = 2, initial = \"10ms\", max = \"10ms\" }",
        ),
    );
    let out = p.cmd("run").env("OPENAI_API_KEY", KEY).output();
    out.assert_code(1);
    assert!(
        out.elapsed < Duration::from_secs(20),
        "took {:?}",
        out.elapsed
    );
    // Each call ends at its attempt's deadline by itself: the runner never has to leave one
    // behind.
    assert!(
        !out.stderr.contains("ignored its timeout"),
        "a call outlived its deadline\n{out}"
    );
    let status = p.status();
    status.assert_failed(&["a0", "a1", "a2", "a3"], "facts", 2, "timed out");
    assert_eq!(server.calls(), 8);
}

#[test]
fn an_answer_that_echoes_the_key_is_stored_without_it() {
    let server = LlmServer::start(LlmConfig::default());
    let p = pipeline(
        "llm-answer-echo",
        2,
        &openai(
            &server,
            Scenario::AnswerEcho,
            "api_key_env = \"MY_LLM_KEY\"",
        ),
    );
    let out = p.cmd("run").env("MY_LLM_KEY", LONG_KEY).output();
    out.assert_code(0);
    let mut texts = vec![out.stderr.clone(), out.stdout.clone()];
    for dir in [p.dir.join(".stagewise"), p.dir.path().to_path_buf()] {
        for file in std::fs::read_dir(&dir).expect("a folder") {
            let path = file.expect("an entry").path();
            if path.is_file() {
                let bytes = std::fs::read(&path).expect("a file");
                texts.push(String::from_utf8_lossy(&bytes).into_owned());
            }
        }
    }
    let key = LONG_KEY.to_ascii_lowercase();
    for text in &texts {
        let text = text.to_ascii_lowercase();
        for piece in key.as_bytes().windows(8) {
            let piece = std::str::from_utf8(piece).expect("an ASCII key");
            assert!(
                !text.contains(piece),
                "{piece:?}, a piece of the key, was kept"
            );
        }
    }
    assert!(
        texts.iter().any(|t| t.contains("the key is ***")),
        "the answer was kept, without the key"
    );
}

const LONG_KEY: &str = "sk-proj-Q7f3a9cZ1x8LmN2pR5tV0wY4bD6eH9jK";

/// At the most verbose log level, the HTTP client's protocol layer would dump the request's
/// bytes, the key's header among them: it is never let through.
#[test]
fn the_key_is_not_in_a_trace_level_log_nor_the_flight_record() {
    let server = LlmServer::start(LlmConfig::default());
    let p = pipeline("llm-trace", 2, &openai(&server, Scenario::Ok, ""));
    let out = p
        .cmd("run")
        .env("OPENAI_API_KEY", LONG_KEY)
        .env("STAGEWISE_LOG", "trace,ureq_proto=trace")
        .arg("--log-format")
        .arg("json")
        .output();
    out.assert_code(0);
    assert!(out.stderr.contains("\"TRACE\""), "a trace-level log\n{out}");
    assert!(!out.stderr.contains("ureq_proto"), "{out}");
    // The dump cut the key across its lines: no 8 characters of it may be anywhere.
    for at in 8..LONG_KEY.len() - 8 {
        let piece = &LONG_KEY[at..at + 8];
        assert!(!out.stderr.contains(piece), "{piece} in the log\n{out}");
    }
    for entry in std::fs::read_dir(p.dir.path().join(".stagewise")).expect("the state folder") {
        let path = entry.expect("an entry").path();
        let bytes = std::fs::read(&path).expect("read a state file");
        let text = String::from_utf8_lossy(&bytes);
        assert!(
            !text.contains(&LONG_KEY[8..20]),
            "the key in {}",
            path.display()
        );
    }
}

#[test]
fn no_piece_of_the_key_reaches_the_log_the_status_or_the_store() {
    // The checks before the run: the model list's refusal quotes the key.
    let server = LlmServer::start(LlmConfig::default());
    let p = pipeline(
        "llm-echo-checked",
        4,
        &openai(
            &server,
            Scenario::UnauthorizedEcho,
            "api_key_env = \"MY_LLM_KEY\"",
        ),
    );
    for command in ["run", "validate"] {
        let mut cmd = p.cmd(command).env("MY_LLM_KEY", LONG_KEY);
        if command == "validate" {
            cmd = cmd.arg("--connect");
        }
        let out = cmd.output();
        out.assert_code(2)
            .assert_stderr_contains("Incorrect API key provided: ***");
        let text = out.stderr.to_ascii_lowercase();
        for piece in LONG_KEY.to_ascii_lowercase().as_bytes().windows(8) {
            let piece = std::str::from_utf8(piece).expect("an ASCII key");
            assert!(
                !text.contains(piece),
                "{piece:?} of the key in `{command}`\n{out}"
            );
        }
    }

    // The calls: a key refused only by them (revoked after the checks).
    let server = LlmServer::start(LlmConfig {
        lists_models_for_any_key: true,
        ..LlmConfig::default()
    });
    let p = pipeline(
        "llm-echo",
        4,
        &openai(
            &server,
            Scenario::UnauthorizedEcho,
            "api_key_env = \"MY_LLM_KEY\"",
        ),
    );
    let out = p.cmd("run").env("MY_LLM_KEY", LONG_KEY).output();
    out.assert_code(3).assert_stderr_contains("MY_LLM_KEY");
    assert!(server.calls() >= 1);
    // The server echoed it upper-cased and, cut at the 300th character, its first 10.
    out.assert_stderr_contains("Incorrect API key provided: ***.");
    let status = p.status();
    let mut outputs = vec![
        ("stderr".to_owned(), out.stderr.clone()),
        ("stdout".to_owned(), out.stdout.clone()),
        ("status --json".to_owned(), status.raw.to_string()),
    ];
    let state = p.dir.join(".stagewise");
    let files = std::fs::read_dir(&state).expect("the state folder");
    for file in files.map(|f| f.expect("a folder entry").path()) {
        let bytes = std::fs::read(&file).expect("a state file");
        outputs.push((
            file.display().to_string(),
            String::from_utf8_lossy(&bytes).into_owned(),
        ));
    }
    assert!(
        outputs.iter().any(|(name, _)| name.ends_with(".db")),
        "the store is among the files read: {:?}",
        outputs.iter().map(|(n, _)| n).collect::<Vec<_>>()
    );
    let key = LONG_KEY.to_ascii_lowercase();
    for (name, text) in &outputs {
        let text = text.to_ascii_lowercase();
        for piece in key.as_bytes().windows(8) {
            let piece = std::str::from_utf8(piece).expect("an ASCII key");
            assert!(
                !text.contains(piece),
                "{piece:?}, a piece of the key, is in {name}"
            );
        }
    }
}

#[test]
fn a_refused_key_stops_the_run_and_names_the_variable_not_the_key() {
    // Refused when the run checks the endpoint: nothing runs, no call is made.
    let server = LlmServer::start(LlmConfig::default());
    let p = pipeline(
        "llm-401-checked",
        40,
        &openai(
            &server,
            Scenario::Unauthorized,
            "api_key_env = \"MY_LLM_KEY\"",
        ),
    );
    let out = p.cmd("run").env("MY_LLM_KEY", KEY).output();
    out.assert_code(2)
        .assert_stderr_contains("refused the key in `MY_LLM_KEY`")
        .assert_stderr_contains("nothing was run");
    assert!(!out.stderr.contains(KEY), "the key leaked\n{out}");
    assert_eq!(server.calls(), 0);

    // Refused only by the calls (a key revoked after the checks): the run stops at once.
    let server = LlmServer::start(LlmConfig {
        lists_models_for_any_key: true,
        ..LlmConfig::default()
    });
    let p = pipeline(
        "llm-401",
        40,
        &openai(
            &server,
            Scenario::Unauthorized,
            "api_key_env = \"MY_LLM_KEY\"",
        ),
    );
    let out = p.cmd("run").env("MY_LLM_KEY", KEY).output();
    out.assert_code(3).assert_stderr_contains("MY_LLM_KEY");
    assert!(
        !out.stderr.contains(KEY),
        "the key leaked into the log\n{out}"
    );
    // The run stops at once: the calls in flight (concurrency 4) and those that had begun
    // meanwhile, not one per item.
    assert!(server.calls() <= 8, "{} calls", server.calls());
    let status = p.status();
    assert_eq!(
        status.counts["failed"], 0,
        "no item is blamed for the key: {:?}",
        status.failed
    );
    assert_eq!(status.counts["pending"] + status.counts["in_flight"], 40);
    assert!(!status.raw.to_string().contains(KEY));
}

#[test]
fn answers_are_never_paid_for_twice() {
    let server = LlmServer::start(LlmConfig::default());
    let p = pipeline("llm-cache", 5, &openai(&server, Scenario::Ok, ""));
    p.cmd("run")
        .env("OPENAI_API_KEY", KEY)
        .output()
        .assert_code(0);
    assert_eq!(server.calls(), 5);
    // A new batch of the same items: every answer from the cache.
    let out = p
        .cmd("run")
        .arg("--fresh")
        .env("OPENAI_API_KEY", KEY)
        .output();
    out.assert_code(0);
    assert_eq!(
        server.calls(),
        5,
        "a --fresh run called the API again\n{out}"
    );
    let f = figures(&p, "llm-cache");
    assert_eq!(
        (f["calls"].as_f64(), f["cache_hits"].as_f64()),
        (Some(0.0), Some(5.0)),
        "{f}"
    );
    // The jsonl sink appends: the second run wrote the same five records again.
    assert_eq!(p.sink("out.jsonl").len(), 10);
    assert_eq!(p.sink("out.jsonl").unique_keys().len(), 5);
    for record in p.sink("out.jsonl").records {
        assert_eq!(record["facts"], default_answer());
    }
    // A changed prompt is another question.
    let changed = p.toml().replace(
        "model = \"test-model\"",
        "model = \"test-model\"\nprompt = \"Facts of: {{text}}\"",
    );
    p.dir.write("pipeline.toml", &changed);
    p.cmd("run")
        .arg("--fresh")
        .env("OPENAI_API_KEY", KEY)
        .output()
        .assert_code(0);
    assert_eq!(server.calls(), 10);
    // `cache = false` asks every time.
    p.dir.write(
        "pipeline.toml",
        changed.replace("prompt =", "cache = false\nprompt ="),
    );
    p.cmd("run")
        .arg("--fresh")
        .env("OPENAI_API_KEY", KEY)
        .output()
        .assert_code(0);
    assert_eq!(server.calls(), 15);
}

#[test]
fn max_cost_stops_the_run_before_it_is_crossed() {
    // Each answer reports 1,000 input and 200 output tokens: 0.001 + 0.001 = 0.002 at these
    // prices; the stage sets aside up to 0.00512 + the prompt's share before each call.
    let server = LlmServer::start(LlmConfig::default());
    let p = pipeline(
        "llm-cost",
        30,
        &openai(
            &server,
            Scenario::Ok,
            "price_per_mtok_in = 1.0\nprice_per_mtok_out = 5.0\nmax_cost = 0.03",
        ),
    );
    let out = p.cmd("run").env("OPENAI_API_KEY", KEY).output();
    out.assert_code(3).assert_stderr_contains("max_cost");
    let calls = server.calls();
    assert!(calls > 0 && calls < 30, "{calls} calls");
    let f = figures(&p, "llm-cost");
    let cost = f["cost"].as_f64().expect("a cost");
    assert!(cost <= 0.03, "spent {cost}");
    assert!(
        (cost - 0.002 * calls as f64).abs() < 1e-9,
        "cost {cost} for {calls} calls"
    );
    let status: Status = p.status();
    assert_eq!(
        status.counts["failed"], 0,
        "no item is blamed for the budget"
    );
    assert!(status.counts["done"] <= calls as u64);
    // With a larger budget the run resumes; an answer paid for before the stop (even one whose
    // item was not yet saved) comes from the cache.
    p.dir.write(
        "pipeline.toml",
        p.toml().replace("max_cost = 0.03", "max_cost = 1.0"),
    );
    p.cmd("run")
        .env("OPENAI_API_KEY", KEY)
        .output()
        .assert_code(0);
    assert_eq!(p.status().counts["done"], 30);
    assert_eq!(server.calls(), 30, "an answer was paid for twice");
}

#[test]
fn llm_keys_are_checked_before_anything_runs() {
    let p = pipeline(
        "llm-validate",
        1,
        "provider = \"openai\"\nprompt = \"Facts: {{text\"\nmax_cost = 2.0\nschema = { type = \"nonsense\" }",
    );
    let out = p.validate();
    out.assert_code(2);
    for needle in [
        "`model` is required",
        "never closed",
        "`max_cost` needs",
        "not a valid JSON Schema",
    ] {
        out.assert_stderr_contains(needle);
    }
}

#[test]
fn over_the_services_limit_the_stage_adapts_and_loses_nothing() {
    // The server admits 4 requests at once and turns the rest away with 429 and
    // `Retry-After: 1`; the stage is set to 12. Fixed at 12, the 8 turned away would meet a full
    // server on every retry and fail after their attempts; adapted, they get in.
    let server = LlmServer::start(LlmConfig {
        latency: Duration::from_millis(50),
        max_in_flight: Some(4),
        ..LlmConfig::default()
    });
    let p = pipeline_at(
        "llm-adapt",
        60,
        12,
        &openai(
            &server,
            Scenario::Ok,
            "retry = { attempts = 4, initial = \"10ms\", max = \"50ms\" }",
        ),
    );
    let out = p
        .cmd("run")
        .env("OPENAI_API_KEY", KEY)
        .env("STAGEWISE_PIPELINE__HEARTBEAT", "200ms")
        .output();
    out.assert_code(0)
        .assert_stderr_contains("the service asks to slow down");
    // While lowered, the heartbeat shows the stage's current limit against its setting.
    assert!(
        out.stderr_lines()
            .any(|l| l.contains("heartbeat") && l.contains("/12")),
        "no heartbeat with the lowered limit\n{out}"
    );
    assert_eq!(p.status().counts["done"], 60);
    assert!(server.count_429() > 0, "the limit was never reached");
    assert_eq!(server.answered_ok(), 60);
    let raw = p.dir.read(".stagewise/llm-adapt.summary.json");
    let summary: Value = serde_json::from_slice(&raw).expect("the summary is JSON");
    let facts = summary["stages"]
        .as_array()
        .and_then(|s| s.iter().find(|s| s["name"] == "facts"))
        .expect("the stage's summary")
        .clone();
    let lowest = facts["lowest_concurrency"].as_u64().expect("lowered");
    assert!((1..=4).contains(&lowest), "lowest concurrency {lowest}");
}

#[test]
fn a_schema_file_without_structured_output_still_checks_and_keys_the_cache() {
    let server = LlmServer::start(LlmConfig::default());
    let p = pipeline(
        "llm-schema-file",
        2,
        &openai(
            &server,
            Scenario::Ok,
            "schema_file = \"facts.schema.json\"\nstructured_output = false",
        ),
    );
    let schema = json!({
        "type": "object",
        "properties": { "facts": { "type": "array", "items": { "type": "string" } } },
        "required": ["facts"]
    });
    p.dir.write("facts.schema.json", schema.to_string());
    p.cmd("run")
        .env("OPENAI_API_KEY", KEY)
        .output()
        .assert_code(0);
    assert_eq!(server.calls(), 2);
    let body = server.last_body().expect("a request");
    assert!(body.get("response_format").is_none(), "{body}");
    // The same request under another schema is another question, even though the schema is
    // not sent: the cache must not answer it.
    let mut stricter = schema.clone();
    stricter["properties"]["summary"] = json!({ "type": "string" });
    p.dir.write("facts.schema.json", stricter.to_string());
    p.cmd("run")
        .arg("--fresh")
        .env("OPENAI_API_KEY", KEY)
        .output()
        .assert_code(0);
    assert_eq!(server.calls(), 4);
    // A schema the answer does not fit fails the items, quoting the answer.
    stricter["required"] = json!(["facts", "sources"]);
    p.dir.write("facts.schema.json", stricter.to_string());
    p.cmd("run")
        .arg("--fresh")
        .env("OPENAI_API_KEY", KEY)
        .output()
        .assert_code(1);
    let status = p.status();
    assert!(
        status
            .failed
            .iter()
            .all(|f| f.error.contains("\"sources\" is a required property")
                && f.error.contains("it begins: {")),
        "{:?}",
        status.failed
    );
}

/// `kill -9` at moments spread over the calls: only what was in flight at a kill is asked
/// again — at each kill at most the stage's concurrency was asked and not yet cached, and
/// every question asked again was one of those (an answer is committed to the cache before the
/// stage returns it, so a stored answer is never paid for twice).
#[test]
fn after_kill_9_only_the_calls_in_flight_are_asked_again() {
    const CONCURRENCY: usize = 4;
    let server = LlmServer::start(LlmConfig {
        latency: Duration::from_millis(150),
        ..LlmConfig::default()
    });
    let p = pipeline_at(
        "llm-kills",
        40,
        CONCURRENCY,
        // Each kill counts as an attempt of what was in flight: enough for every kill.
        &openai(&server, Scenario::Ok, "retry = { attempts = 20 }"),
    );
    let question = |r: &util::llm::Request| {
        r.body
            .as_ref()
            .map(|b| b["messages"].to_string())
            .expect("a JSON body")
    };
    let cached = || -> usize {
        let conn = rusqlite::Connection::open(p.dir.join(".stagewise/llm-kills.db"))
            .expect("open the store");
        conn.query_row("SELECT count(*) FROM responses", [], |r| r.get(0))
            .expect("count the cached answers")
    };

    let mut seen = 0;
    let mut cached_before = 0;
    // Questions asked and not cached by the kill that ended their process, over all kills.
    let mut open_at_kills = 0;
    for round in 0..7 {
        let running = p.cmd("run").env("OPENAI_API_KEY", KEY).spawn();
        let wanted = seen + 3 + round % 3;
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while server.calls() < wanted && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        std::thread::sleep(Duration::from_millis(37 * (round as u64 % 4)));
        running.signal(libc::SIGKILL);
        let killed = running.wait();
        assert_eq!(
            killed.code, None,
            "round {round}: ended before the kill\n{killed}"
        );

        let requests = server.requests();
        let asked: std::collections::HashSet<String> =
            requests[seen..].iter().map(&question).collect();
        let cached_now = cached();
        // Every answer cached in this process is for a question it asked; the rest of its
        // questions were in flight at the kill.
        let open = asked.len() - (cached_now - cached_before);
        assert!(
            open <= CONCURRENCY,
            "round {round}: {open} questions asked and not cached at the kill (concurrency {CONCURRENCY})"
        );
        open_at_kills += open;
        cached_before = cached_now;
        seen = requests.len();
    }

    p.cmd("run")
        .env("OPENAI_API_KEY", KEY)
        .output()
        .assert_code(0);
    assert_eq!(p.status().count("done"), 40);
    assert_eq!(cached(), 40);
    let requests = server.requests();
    let questions: std::collections::HashSet<String> = requests.iter().map(&question).collect();
    assert_eq!(questions.len(), 40);
    let asked_again = requests.len() - questions.len();
    assert!(
        asked_again <= open_at_kills,
        "{asked_again} questions asked again; only {open_at_kills} were in flight at the kills"
    );
}

/// An endpoint nothing listens on: the item's error names the URL and says the connection was
/// refused (it used to read "reading the body failed").
#[test]
fn an_unreachable_endpoint_is_named_in_the_error() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let p = pipeline(
        "unreachable",
        1,
        &format!(
            "provider = \"openai\"\nmodel = \"test-model\"\nbase_url = \"http://127.0.0.1:{port}/v1\"\nretry = {{ attempts = 1 }}"
        ),
    );
    let out = p.run();
    out.assert_code(1);
    out.assert_stderr_contains(&format!(
        "http://127.0.0.1:{port}/v1/chat/completions: connection refused"
    ));
    assert!(!out.stderr.contains("reading the body"), "{out}");
}

/// `retry.never` and `retry.on` decide by the error's kind: a 500 is `http_5xx`.
#[test]
fn retry_never_and_on_decide_by_the_errors_kind() {
    let run = |name: &str, retry: &str| {
        // `error-once`: 500 the first time each body is seen, then an answer.
        let server = LlmServer::start(LlmConfig::default());
        let p = pipeline(name, 3, &openai(&server, Scenario::ErrorOnce, retry));
        let out = p.cmd("run").env("OPENAI_API_KEY", KEY).output();
        (p, out, server.calls())
    };
    // The stage's own classification: a 500 is transient, retried; every item done.
    let (_, out, calls) = run("llm-kind-default", "");
    out.assert_code(0);
    assert_eq!(calls, 6, "two calls per item");
    // `never` wins over the class: each item fails after its one attempt.
    for (name, retry) in [
        ("llm-kind-never", r#"retry = { never = ["http_5xx"] }"#),
        ("llm-kind-on", r#"retry = { on = ["timeout", "connect"] }"#),
        (
            "llm-kind-both",
            r#"retry = { on = ["http_5xx"], never = ["http_5xx"] }"#,
        ),
    ] {
        let (p, out, calls) = run(name, retry);
        out.assert_code(1);
        assert_eq!(calls, 3, "{name}: one call per item\n{out}");
        let status = p.status();
        let mut failed: Vec<&str> = status.failed.iter().map(|f| f.key.as_str()).collect();
        failed.sort_unstable();
        assert_eq!(failed, ["a0", "a1", "a2"], "{name}");
        for f in &status.failed {
            assert_eq!(
                (f.stage.as_str(), f.attempts),
                ("facts", 1),
                "{name}: {f:?}"
            );
            assert!(f.error.contains("HTTP 500"), "{name}: {f:?}");
        }
    }
    // `on` naming the kind retries it.
    let (_, out, calls) = run("llm-kind-on-5xx", r#"retry = { on = ["http_5xx"] }"#);
    out.assert_code(0);
    assert_eq!(calls, 6);
    // A name that is not a kind is refused, with the kinds listed.
    let server = LlmServer::start(LlmConfig::default());
    let p = pipeline(
        "llm-kind-typo",
        1,
        &openai(&server, Scenario::Ok, r#"retry = { never = ["http_500"] }"#),
    );
    let out = p.validate();
    out.assert_code(2);
    assert!(
        out.errors()
            .iter()
            .any(|l| l.contains("`http_500` is not an error kind") && l.contains("http_5xx")),
        "{out}"
    );
}

/// The `response_format` type of each request the server got, in order.
fn formats(server: &LlmServer) -> Vec<String> {
    server
        .requests()
        .iter()
        .map(|r| {
            let body = r.body.as_ref().expect("a JSON body");
            body["response_format"]["type"]
                .as_str()
                .unwrap_or("none")
                .to_owned()
        })
        .collect()
}

/// `structured_output = "auto"` (the default) against a server that refuses `json_schema`, as
/// llama-cpp-python's does: the refused request goes again at once as `json_object` with the
/// schema, using no attempt, and every later request of the process goes so; said once. The
/// answers are cached under the request as `json_schema` would send it: the next process, which
/// starts with `json_schema` again, finds them.
#[test]
fn structured_output_auto_falls_back_to_json_object_once_and_remembers_it() {
    let server = LlmServer::start(LlmConfig::default());
    let p = pipeline_at(
        "llm-so-auto",
        6,
        1,
        &openai(&server, Scenario::JsonObjectOnly, ""),
    );
    let out = p.cmd("run").env("OPENAI_API_KEY", KEY).output();
    out.assert_code(0);
    assert_eq!(
        formats(&server),
        [
            "json_schema",
            "json_object",
            "json_object",
            "json_object",
            "json_object",
            "json_object",
            "json_object"
        ],
        "one refusal, then json_object for every request\n{out}"
    );
    let json_object = &server.requests()[1];
    let sent = &json_object.body.as_ref().expect("a body")["response_format"];
    assert_eq!(
        sent["schema"]["required"],
        serde_json::json!(["facts", "summary"]),
        "{sent}"
    );
    assert_eq!(
        out.stderr
            .matches("does not take `response_format` of type `json_schema`")
            .count(),
        1,
        "said once\n{out}"
    );
    let summary = p.stage_summary("llm-so-auto", "facts");
    assert_eq!(
        summary["retries"].as_u64(),
        Some(0),
        "no attempt used: {summary}"
    );
    let status = p.status();
    assert_eq!(status.count("done"), 6);
    for record in p.sink("out.jsonl").records {
        assert_eq!(record["facts"], default_answer(), "{record:?}");
    }
    // A new process, a new batch of the same items: every answer from the cache.
    let out = p
        .cmd("run")
        .arg("--fresh")
        .env("OPENAI_API_KEY", KEY)
        .output();
    out.assert_code(0);
    assert_eq!(server.calls(), 7, "answers asked for again\n{out}");
    // `true` is `"auto"`.
    let server = LlmServer::start(LlmConfig::default());
    let p = pipeline_at(
        "llm-so-true",
        2,
        1,
        &openai(
            &server,
            Scenario::JsonObjectOnly,
            "structured_output = true",
        ),
    );
    p.cmd("run")
        .env("OPENAI_API_KEY", KEY)
        .output()
        .assert_code(0);
    assert_eq!(
        formats(&server),
        ["json_schema", "json_object", "json_object"]
    );
}

/// `"json_object"` sends the schema that way from the first request; `"json_schema"` against a
/// server that refuses it fails each item at once, permanent, the server's reason in the error;
/// `"off"` sends none; a mode that is not one is refused by `validate`.
#[test]
fn structured_output_modes_send_what_they_say() {
    let server = LlmServer::start(LlmConfig::default());
    let p = pipeline(
        "llm-so-object",
        3,
        &openai(
            &server,
            Scenario::JsonObjectOnly,
            r#"structured_output = "json_object""#,
        ),
    );
    p.cmd("run")
        .env("OPENAI_API_KEY", KEY)
        .output()
        .assert_code(0);
    assert_eq!(formats(&server), ["json_object"; 3]);

    let server = LlmServer::start(LlmConfig::default());
    let p = pipeline(
        "llm-so-schema",
        3,
        &openai(
            &server,
            Scenario::JsonObjectOnly,
            r#"structured_output = "json_schema""#,
        ),
    );
    let out = p.cmd("run").env("OPENAI_API_KEY", KEY).output();
    out.assert_code(1);
    assert_eq!(formats(&server), ["json_schema"; 3], "not retried\n{out}");
    let status = p.status();
    assert_eq!(status.failed.len(), 3);
    for f in &status.failed {
        assert_eq!(f.attempts, 1, "{f:?}");
        assert!(
            f.error.contains("HTTP 500")
                && f.error.contains("Input should be 'text' or 'json_object'")
                && f.error
                    .contains("set `structured_output` to \"json_object\""),
            "{f:?}"
        );
    }

    let server = LlmServer::start(LlmConfig::default());
    let p = pipeline(
        "llm-so-off",
        2,
        &openai(
            &server,
            Scenario::JsonObjectOnly,
            r#"structured_output = "off""#,
        ),
    );
    p.cmd("run")
        .env("OPENAI_API_KEY", KEY)
        .output()
        .assert_code(0);
    assert_eq!(formats(&server), ["none"; 2]);

    let p = pipeline(
        "llm-so-typo",
        1,
        &openai(&server, Scenario::Ok, r#"structured_output = "json""#),
    );
    let out = p.validate();
    out.assert_code(2);
    assert!(
        out.errors()
            .iter()
            .any(|l| l.contains("`json` is not a structured-output mode")),
        "{out}"
    );
}

/// A run ended by a fatal error names the item in its reason; the item's key comes from data,
/// and the summary file keeps it with the characters that would steer a terminal escaped (a
/// C1 CSI, a bidirectional override), its value unchanged.
#[test]
fn the_summary_file_escapes_what_would_steer_a_terminal_in_a_key() {
    // A key revoked after the run's check: models listed, calls refused (fatal: exit 3).
    let server = LlmServer::start(LlmConfig {
        lists_models_for_any_key: true,
        ..LlmConfig::default()
    });
    let p = pipeline("llm-steer", 0, &openai(&server, Scenario::Unauthorized, ""));
    let key = "csi\u{9b}2J-rlo\u{202e}-end";
    let line = json!({"id": key, "title": "t", "text": "The council met."});
    p.dir.write("articles.jsonl", format!("{line}\n"));
    let out = p.cmd("run").env("OPENAI_API_KEY", KEY).output();
    out.assert_code(3);
    let raw = String::from_utf8(p.dir.read(".stagewise/llm-steer.summary.json")).expect("UTF-8");
    assert!(
        !raw.chars()
            .any(|c| c.is_control() && c != '\n' || c == '\u{202e}'),
        "a raw control character in the summary file:\n{raw}"
    );
    let summary: Value = serde_json::from_str(&raw).expect("the summary is JSON");
    let reason = summary["reason"].as_str().expect("a reason");
    assert!(reason.contains(key), "{reason}");
}
