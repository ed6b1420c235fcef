//! The LLM test server (tests/util/llm.rs) checked on its own, over real sockets with a plain
//! ureq client: the `llm` stage's tests trust its answers, counters and limits, so those must
//! hold before any stage is judged by them.

mod util;

use std::sync::Barrier;
use std::thread;
use std::time::{Duration, Instant, SystemTime};

use serde_json::{json, Value};
use util::llm::{bad_schema_answer, default_answer, Api, LlmConfig, LlmServer, Scenario, PROSE};

const OPENAI_KEY: &str = "sk-test-openai";
const ANTHROPIC_KEY: &str = "sk-ant-test";

/// An agent that hands back every status as a response, with a bound on every call.
fn agent(timeout: Duration) -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(timeout))
        .build()
        .into()
}

/// One response, read to the end.
struct Reply {
    status: u16,
    headers: ureq::http::HeaderMap,
    body: Value,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

fn post(
    agent: &ureq::Agent,
    url: &str,
    headers: &[(&str, &str)],
    body: &Value,
) -> Result<Reply, ureq::Error> {
    let mut request = agent.post(url);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let mut response = request.send(body.to_string())?;
    let text = response.body_mut().read_to_string()?;
    Ok(Reply {
        status: response.status().as_u16(),
        headers: response.headers().clone(),
        body: serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("response body is not JSON ({e}): {text}")),
    })
}

fn openai_headers() -> Vec<(&'static str, &'static str)> {
    vec![
        ("Authorization", "Bearer sk-test-openai"),
        ("Content-Type", "application/json"),
    ]
}

fn anthropic_headers() -> Vec<(&'static str, &'static str)> {
    vec![
        ("x-api-key", ANTHROPIC_KEY),
        ("anthropic-version", "2023-06-01"),
        ("Content-Type", "application/json"),
    ]
}

fn openai_body(text: &str) -> Value {
    json!({
        "model": "gpt-test",
        "messages": [{"role": "user", "content": text}],
        "response_format": {"type": "json_object"},
    })
}

fn anthropic_body(text: &str, tool: bool) -> Value {
    let mut body = json!({
        "model": "claude-test",
        "max_tokens": 1024,
        "messages": [{"role": "user", "content": text}],
    });
    if tool {
        body["tools"] = json!([{"name": "record_facts", "input_schema": {"type": "object"}}]);
        body["tool_choice"] = json!({"type": "tool", "name": "record_facts"});
    }
    body
}

fn openai(server: &LlmServer, scenario: Scenario, body: &Value) -> Reply {
    let url = format!("{}/chat/completions", server.base_url(scenario));
    post(
        &agent(Duration::from_secs(10)),
        &url,
        &openai_headers(),
        body,
    )
    .expect("openai call")
}

fn anthropic(server: &LlmServer, scenario: Scenario, body: &Value) -> Reply {
    let url = format!("{}/messages", server.base_url(scenario));
    post(
        &agent(Duration::from_secs(10)),
        &url,
        &anthropic_headers(),
        body,
    )
    .expect("anthropic call")
}

/// The OpenAI message content, which must be a string.
fn openai_content(reply: &Reply) -> &str {
    reply.body["choices"][0]["message"]["content"]
        .as_str()
        .unwrap_or_else(|| panic!("no string content: {}", reply.body))
}

/// The single content block of an Anthropic message.
fn anthropic_block(reply: &Reply) -> &Value {
    let content = reply.body["content"]
        .as_array()
        .unwrap_or_else(|| panic!("no content list: {}", reply.body));
    assert_eq!(content.len(), 1, "{}", reply.body);
    &content[0]
}

#[test]
fn openai_ok_is_a_chat_completion_carrying_the_configured_answer() {
    let answer = json!({"facts": ["one", "two"], "summary": "two facts"});
    let server = LlmServer::start(LlmConfig {
        answer: answer.clone(),
        usage: (321, 45),
        ..LlmConfig::default()
    });
    let body = openai_body("find the facts");
    let reply = openai(&server, Scenario::Ok, &body);

    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(reply.body["object"], "chat.completion");
    assert!(reply.body["id"].is_string());
    assert_eq!(reply.body["model"], "gpt-test");
    assert_eq!(reply.body["choices"][0]["index"], 0);
    assert_eq!(reply.body["choices"][0]["finish_reason"], "stop");
    assert_eq!(reply.body["choices"][0]["message"]["role"], "assistant");
    let parsed: Value = serde_json::from_str(openai_content(&reply)).expect("content is JSON");
    assert_eq!(parsed, answer);
    assert_eq!(
        reply.body["usage"],
        json!({"prompt_tokens": 321, "completion_tokens": 45, "total_tokens": 366})
    );

    let requests = server.requests();
    assert_eq!(requests.len(), 1);
    let request = &requests[0];
    assert_eq!(request.method, "POST");
    assert_eq!(request.path, "/s/ok/v1/chat/completions");
    assert_eq!(request.scenario, Some(Scenario::Ok));
    assert_eq!(
        request.header("authorization"),
        Some("Bearer sk-test-openai")
    );
    assert_eq!(request.api_key(), Some(OPENAI_KEY));
    assert_eq!(request.status, Some(200));
    assert_eq!(server.last_body(), Some(body));
    assert_eq!((server.calls(), server.answered_ok()), (1, 1));
}

#[test]
fn anthropic_ok_is_a_tool_use_when_a_tool_is_forced_and_text_otherwise() {
    let server = LlmServer::start(LlmConfig::default());

    let tool = anthropic(&server, Scenario::Ok, &anthropic_body("facts please", true));
    assert_eq!(tool.status, 200, "{}", tool.body);
    assert_eq!(tool.body["type"], "message");
    assert_eq!(tool.body["role"], "assistant");
    assert_eq!(tool.body["model"], "claude-test");
    assert_eq!(tool.body["stop_reason"], "tool_use");
    assert_eq!(
        tool.body["usage"],
        json!({"input_tokens": 1000, "output_tokens": 200})
    );
    let block = anthropic_block(&tool);
    assert_eq!(block["type"], "tool_use");
    assert_eq!(block["id"], "toolu_1");
    assert_eq!(block["name"], "record_facts");
    assert_eq!(block["input"], default_answer());

    let text = anthropic(
        &server,
        Scenario::Ok,
        &anthropic_body("facts please", false),
    );
    assert_eq!(text.status, 200, "{}", text.body);
    assert_eq!(text.body["stop_reason"], "end_turn");
    let block = anthropic_block(&text);
    assert_eq!(block["type"], "text");
    let parsed: Value =
        serde_json::from_str(block["text"].as_str().expect("text is a string")).expect("JSON");
    assert_eq!(parsed, default_answer());

    let requests = server.requests();
    assert_eq!(requests[0].header("x-api-key"), Some(ANTHROPIC_KEY));
    assert_eq!(requests[0].api_key(), Some(ANTHROPIC_KEY));
    assert_eq!(requests[0].header("anthropic-version"), Some("2023-06-01"));
}

/// A request a correct client would not send, and how the server must refuse it.
struct Refusal {
    name: &'static str,
    api: Api,
    headers: &'static [(&'static str, &'static str)],
    body: Value,
    status: u16,
    /// What the error message must name.
    names: &'static str,
}

#[test]
fn a_request_without_a_key_is_401_and_a_malformed_one_400_naming_the_problem() {
    const JSON: (&str, &str) = ("Content-Type", "application/json");
    const BEARER: (&str, &str) = ("Authorization", "Bearer sk-test-openai");
    const KEY: (&str, &str) = ("x-api-key", ANTHROPIC_KEY);
    const VERSION: (&str, &str) = ("anthropic-version", "2023-06-01");
    let user = json!([{"role": "user", "content": "x"}]);
    let cases = [
        Refusal {
            name: "openai, no key",
            api: Api::OpenAi,
            headers: &[JSON],
            body: openai_body("x"),
            status: 401,
            names: "Authorization",
        },
        Refusal {
            name: "openai, empty bearer",
            api: Api::OpenAi,
            headers: &[("Authorization", "Bearer "), JSON],
            body: openai_body("x"),
            status: 401,
            names: "Authorization",
        },
        Refusal {
            name: "openai, no content type",
            api: Api::OpenAi,
            headers: &[BEARER],
            body: openai_body("x"),
            status: 400,
            names: "Content-Type",
        },
        Refusal {
            name: "openai, no model",
            api: Api::OpenAi,
            headers: &[BEARER, JSON],
            body: json!({"messages": user}),
            status: 400,
            names: "`model`",
        },
        Refusal {
            name: "openai, no messages",
            api: Api::OpenAi,
            headers: &[BEARER, JSON],
            body: json!({"model": "gpt-test", "messages": []}),
            status: 400,
            names: "`messages`",
        },
        Refusal {
            name: "anthropic, no key",
            api: Api::Anthropic,
            headers: &[VERSION, JSON],
            body: anthropic_body("x", false),
            status: 401,
            names: "x-api-key",
        },
        Refusal {
            name: "anthropic, no version",
            api: Api::Anthropic,
            headers: &[KEY, JSON],
            body: anthropic_body("x", false),
            status: 400,
            names: "anthropic-version",
        },
        Refusal {
            name: "anthropic, no max_tokens",
            api: Api::Anthropic,
            headers: &[KEY, VERSION, JSON],
            body: json!({"model": "claude-test", "messages": user}),
            status: 400,
            names: "`max_tokens`",
        },
    ];
    let server = LlmServer::start(LlmConfig::default());
    let client = agent(Duration::from_secs(10));
    for case in &cases {
        let path = match case.api {
            Api::OpenAi => "/chat/completions",
            Api::Anthropic => "/messages",
        };
        let url = format!("{}{path}", server.base_url(Scenario::Ok));
        let name = case.name;
        let reply = post(&client, &url, case.headers, &case.body).expect(name);
        assert_eq!(reply.status, case.status, "{name}: {}", reply.body);
        let message = reply.body["error"]["message"]
            .as_str()
            .unwrap_or_else(|| panic!("{name}: no error message: {}", reply.body));
        assert!(
            message.contains(case.names),
            "{name}: {message:?} should name {}",
            case.names
        );
    }
    assert_eq!(server.calls(), cases.len());
    assert_eq!(server.answered_ok(), 0);
    assert_eq!(server.calls_with_status(401), 3);
    assert_eq!(server.calls_with_status(400), 5);
}

/// First and second status for the same body, per API; `silent` has its own test.
#[test]
fn every_scenario_answers_as_documented() {
    let server = LlmServer::start(LlmConfig::default());
    let cases = [
        (Scenario::Ok, [200, 200], [200, 200]),
        (Scenario::NotJson, [200, 200], [200, 200]),
        (Scenario::BadSchema, [200, 200], [200, 200]),
        (Scenario::InvalidThenOk, [200, 200], [200, 200]),
        (Scenario::RateLimitedOnce, [429, 200], [429, 200]),
        (Scenario::ErrorOnce, [500, 200], [500, 200]),
        (Scenario::Overloaded, [503, 503], [529, 529]),
        (Scenario::Unauthorized, [401, 401], [401, 401]),
        (Scenario::UnauthorizedEcho, [401, 401], [401, 401]),
        (Scenario::NotFound, [404, 404], [404, 404]),
        (Scenario::BadRequest, [400, 400], [400, 400]),
    ];
    for (scenario, openai_statuses, anthropic_statuses) in cases {
        let name = scenario.name();
        let openai_request = openai_body(name);
        let anthropic_request = anthropic_body(name, true);
        let o = [0, 1].map(|_| openai(&server, scenario, &openai_request));
        let a = [0, 1].map(|_| anthropic(&server, scenario, &anthropic_request));
        assert_eq!(
            o.each_ref().map(|r| r.status),
            openai_statuses,
            "{name} (OpenAI)"
        );
        assert_eq!(
            a.each_ref().map(|r| r.status),
            anthropic_statuses,
            "{name} (Anthropic)"
        );
        for reply in o.iter().filter(|r| r.status != 200) {
            assert!(
                reply.body["error"]["type"].is_string(),
                "{name}: {}",
                reply.body
            );
        }
        for reply in a.iter().filter(|r| r.status != 200) {
            assert_eq!(reply.body["type"], "error", "{name}: {}", reply.body);
            assert!(
                reply.body["error"]["type"].is_string(),
                "{name}: {}",
                reply.body
            );
        }
        // What the 200s carry, first and second time.
        let first_content = match scenario {
            Scenario::NotJson => Some(None),
            Scenario::BadSchema | Scenario::InvalidThenOk => Some(Some(bad_schema_answer())),
            Scenario::Ok | Scenario::RateLimitedOnce | Scenario::ErrorOnce => {
                Some(Some(default_answer()))
            }
            _ => None,
        };
        let second_content = match scenario {
            Scenario::InvalidThenOk => Some(Some(default_answer())),
            _ => first_content.clone(),
        };
        let expected = [first_content, second_content];
        for (i, expected) in expected.iter().enumerate() {
            match expected {
                Some(Some(answer)) if o[i].status == 200 => {
                    let parsed: Value = serde_json::from_str(openai_content(&o[i]))
                        .unwrap_or_else(|e| panic!("{name}: content is not JSON: {e}"));
                    assert_eq!(&parsed, answer, "{name} #{i} (OpenAI)");
                    let block = anthropic_block(&a[i]);
                    assert_eq!(block["type"], "tool_use", "{name} #{i}");
                    assert_eq!(&block["input"], answer, "{name} #{i} (Anthropic)");
                }
                Some(None) => {
                    assert_eq!(openai_content(&o[i]), PROSE, "{name} #{i}");
                    let block = anthropic_block(&a[i]);
                    assert_eq!(
                        block["type"], "text",
                        "{name}: a text block even for a tool"
                    );
                    assert_eq!(block["text"], PROSE, "{name} #{i}");
                }
                _ => {}
            }
        }
    }
    assert_eq!(server.calls(), cases.len() * 4);

    let reply = post(
        &agent(Duration::from_secs(10)),
        &server.url("/v1/chat/completions"),
        &openai_headers(),
        &openai_body("no scenario"),
    )
    .expect("unknown path");
    assert_eq!(reply.status, 404);
    let reply = openai(&server, Scenario::Ok, &openai_body("a new body"));
    assert_eq!(reply.status, 200);
    let unknown = post(
        &agent(Duration::from_secs(10)),
        &server.url("/s/no-such-scenario/v1/messages"),
        &anthropic_headers(),
        &anthropic_body("x", false),
    )
    .expect("unknown scenario");
    assert_eq!(unknown.status, 404);
}

#[test]
fn rate_limited_once_is_429_with_reset_headers_then_200_for_the_same_body() {
    let server = LlmServer::start(LlmConfig::default());
    let body = openai_body("item 1");

    let first = openai(&server, Scenario::RateLimitedOnce, &body);
    assert_eq!(first.status, 429, "{}", first.body);
    assert_eq!(first.header("retry-after"), Some("2"));
    assert_eq!(first.header("retry-after-ms"), Some("2000"));
    assert_eq!(first.header("x-ratelimit-reset-requests"), Some("2s"));
    assert_eq!(first.body["error"]["code"], "rate_limit_exceeded");
    let second = openai(&server, Scenario::RateLimitedOnce, &body);
    assert_eq!(second.status, 200, "{}", second.body);
    // Another body is another item: limited once too.
    let other = openai(&server, Scenario::RateLimitedOnce, &openai_body("item 2"));
    assert_eq!(other.status, 429);

    let before = SystemTime::now();
    let limited = anthropic(
        &server,
        Scenario::RateLimitedOnce,
        &anthropic_body("item 1", true),
    );
    assert_eq!(limited.status, 429, "{}", limited.body);
    assert_eq!(limited.body["error"]["type"], "rate_limit_error");
    assert_eq!(limited.header("retry-after"), Some("2"));
    assert_eq!(limited.header("retry-after-ms"), Some("2000"));
    let reset = limited
        .header("anthropic-ratelimit-requests-reset")
        .expect("anthropic reset header");
    let reset = SystemTime::from(
        chrono::DateTime::parse_from_rfc3339(reset).expect("the reset is RFC 3339"),
    );
    // Whole seconds, so between 1 and 3 s ahead of the request.
    let ahead = reset.duration_since(before).expect("the reset is ahead");
    assert!(
        (Duration::from_secs(1)..=Duration::from_secs(3)).contains(&ahead),
        "{ahead:?}"
    );
    let retried = anthropic(
        &server,
        Scenario::RateLimitedOnce,
        &anthropic_body("item 1", true),
    );
    assert_eq!(retried.status, 200, "{}", retried.body);

    assert_eq!(server.calls(), 5);
    assert_eq!(server.count_429(), 3);
    assert_eq!(server.answered_ok(), 2);
    let statuses: Vec<_> = server.requests().iter().map(|r| r.status).collect();
    assert_eq!(
        statuses,
        [Some(429), Some(200), Some(429), Some(429), Some(200)]
    );
}

#[test]
fn max_in_flight_turns_the_excess_away_with_429_at_once() {
    const LIMIT: usize = 4;
    const CALLS: usize = LIMIT + 5;
    let server = LlmServer::start(LlmConfig {
        latency: Duration::from_secs(1),
        max_in_flight: Some(LIMIT),
        ..LlmConfig::default()
    });
    let start = Barrier::new(CALLS);
    let replies: Vec<(Reply, Duration)> = thread::scope(|s| {
        let calls: Vec<_> = (0..CALLS)
            .map(|i| {
                let (server, start) = (&server, &start);
                s.spawn(move || {
                    start.wait();
                    let began = Instant::now();
                    let reply = openai(server, Scenario::Ok, &openai_body(&format!("item {i}")));
                    (reply, began.elapsed())
                })
            })
            .collect();
        calls
            .into_iter()
            .map(|c| c.join().expect("client thread"))
            .collect()
    });

    assert!(server.count_429() > 0, "nothing was turned away");
    assert!(
        server.max_in_flight_seen() <= LIMIT,
        "{} in flight at once",
        server.max_in_flight_seen()
    );
    assert_eq!(server.count_429() + server.answered_ok(), CALLS);
    for (reply, elapsed) in replies.iter().filter(|(r, _)| r.status == 429) {
        assert_eq!(reply.header("retry-after"), Some("1"));
        assert_eq!(reply.body["error"]["type"], "requests");
        // Turned away without the 1 s latency.
        assert!(*elapsed < Duration::from_millis(900), "{elapsed:?}");
    }
}

#[test]
fn silent_never_answers_and_drop_still_returns_promptly() {
    let server = LlmServer::start(LlmConfig::default());
    let url = format!("{}/chat/completions", server.base_url(Scenario::Silent));
    let began = Instant::now();
    let result = post(
        &agent(Duration::from_secs(1)),
        &url,
        &openai_headers(),
        &openai_body("anyone there?"),
    );
    match result {
        Err(ureq::Error::Timeout(_)) => {}
        Err(e) => panic!("expected a timeout, got {e}"),
        Ok(reply) => panic!("silent answered {}: {}", reply.status, reply.body),
    }
    assert!(began.elapsed() >= Duration::from_millis(900));
    let requests = server.requests();
    assert_eq!(requests.len(), 1);
    assert_eq!(requests[0].status, None);

    // A second silent call whose client is still waiting when the server goes away.
    let waiting = thread::spawn(move || {
        post(
            &agent(Duration::from_secs(30)),
            &url,
            &openai_headers(),
            &openai_body("still there?"),
        )
        .map(|r| r.status)
    });
    let deadline = Instant::now() + Duration::from_secs(5);
    while server.calls() < 2 {
        assert!(Instant::now() < deadline, "the second call never arrived");
        thread::sleep(Duration::from_millis(10));
    }
    let dropping = Instant::now();
    drop(server);
    assert!(
        dropping.elapsed() < Duration::from_secs(5),
        "drop took {:?}",
        dropping.elapsed()
    );
    let outcome = waiting.join().expect("client thread");
    assert!(outcome.is_err(), "{outcome:?}");
}

#[test]
fn keep_alive_serves_many_requests_on_one_connection() {
    let server = LlmServer::start(LlmConfig::default());
    let client = agent(Duration::from_secs(10));
    let url = format!("{}/messages", server.base_url(Scenario::Ok));
    for i in 0..5 {
        let reply = post(
            &client,
            &url,
            &anthropic_headers(),
            &anthropic_body(&format!("item {i}"), false),
        )
        .expect("call");
        assert_eq!(reply.status, 200, "{}", reply.body);
    }
    assert_eq!(server.answered_ok(), 5);
    assert!(
        server.connections() < 5,
        "{} connections for 5 requests",
        server.connections()
    );
    let connections: Vec<u64> = server.requests().iter().map(|r| r.connection).collect();
    assert_eq!(connections, [0; 5]);
}
