//! The `llm` stage against a real model: SmolLM2-135M-Instruct behind llama-cpp-python's
//! OpenAI-compatible server (`scripts/local-model`), which takes `response_format`
//! `json_object` with a `schema` and refuses `json_schema` with a 500.
//!
//! The first run on a machine installs the server into a virtualenv under
//! `target/local-model` (pip builds llama.cpp: minutes on 2 cores; see `scripts/local-model`);
//! later runs reuse it. Under CI (`CI` set) every step must work. Without `CI`, a machine that
//! cannot install it (no Python, no compiler, no registry) skips the test, saying so loudly.

mod util;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use util::{workspace_root, Pipeline};

/// How long the server may take to load the model and answer its model list.
const STARTUP: Duration = Duration::from_secs(180);
/// The most a run of three articles may take on a CPU (it takes seconds).
const RUN: Duration = Duration::from_secs(900);

/// Short news articles, each a few facts.
const ARTICLES: [(&str, &str); 3] = [
    (
        "council",
        "The city council of Lyon approved a budget of 4.2 million euros on 3 March 2026. The money will pay for two new libraries and the repair of the Pont Morand bridge. Mayor Anne Dubois said work starts in June.",
    ),
    (
        "rail",
        "A new rail line between Porto and Vigo opened on Monday. Trains take 90 minutes and run every two hours. The line cost 380 million euros, shared by Portugal and Spain.",
    ),
    (
        "harvest",
        "Farmers in Kenya harvested 12 percent more maize this year than last, the ministry of agriculture said on Friday. Rains came early in March and lasted until May.",
    ),
];

/// The local model's server, stopped (its process group killed) when dropped.
struct Server {
    child: Child,
    port: u16,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Whether this run must not skip.
fn under_ci() -> bool {
    std::env::var_os("CI").is_some_and(|v| !v.is_empty())
}

/// Install the server (once per machine), or say why it cannot be: a failure under CI, a loud
/// skip elsewhere (`None`).
fn install() -> Option<()> {
    let script = workspace_root().join("scripts/local-model");
    let began = Instant::now();
    let out = Command::new(&script)
        .arg("install")
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("run {}: {e}", script.display()));
    let log = String::from_utf8_lossy(&out.stderr).into_owned();
    if out.status.success() {
        eprintln!(
            "local model installed or found in {:.1} s:\n{log}",
            began.elapsed().as_secs_f64()
        );
        return Some(());
    }
    if under_ci() {
        panic!("`scripts/local-model install` failed under CI:\n{log}");
    }
    eprintln!(
        "\n########################################################################\n\
         SKIPPED: the local-model test: `scripts/local-model install` failed and `CI` is\n\
         unset. Under CI this is a failure. What it said:\n{log}\n\
         ########################################################################\n"
    );
    None
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port on 127.0.0.1")
        .port()
}

/// `GET path` on the server: the status, if it answered.
fn get(port: u16, path: &str) -> Option<u16> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .ok()?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut head = [0u8; 12];
    stream.read_exact(&mut head).ok()?;
    std::str::from_utf8(&head[9..12]).ok()?.parse().ok()
}

/// Start the server and wait until it lists its model.
fn serve() -> Server {
    let port = free_port();
    let child = Command::new(workspace_root().join("scripts/local-model"))
        .args(["serve", &port.to_string()])
        // One thread: llama.cpp's threads wait for each other spinning, so two of them beside
        // the suite's other tests on 2 cores are many times slower than one.
        .env("STAGEWISE_LOCAL_MODEL_THREADS", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start the local model's server");
    let mut server = Server { child, port };
    let began = Instant::now();
    while began.elapsed() < STARTUP {
        if get(port, "/v1/models") == Some(200) {
            return server;
        }
        if let Ok(Some(status)) = server.child.try_wait() {
            panic!("the local model's server exited ({status}) before it answered");
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    panic!("the local model's server did not answer within {STARTUP:?}");
}

/// The articles → `llm` on the local model with `structured_output = mode` → `out.jsonl`.
fn digest(name: &str, server: &Server, mode: &str) -> Pipeline {
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
        provider = "openai"
        model = "smollm2"
        base_url = "http://127.0.0.1:{port}/v1"
        structured_output = "{mode}"
        timeout = "120s"
        max_tokens = 512
        invalid_output_attempts = 3
        concurrency = 1
        # The example's schema: six facts at most, strings of bounded length. The server's grammar
        # then closes each string and the list, which a 135M model left to itself may write on
        # until `max_tokens` cuts the answer.
        schema = {{ type = "object", required = ["facts", "summary"], additionalProperties = false, properties = {{ facts = {{ type = "array", items = {{ type = "string", maxLength = 200 }}, maxItems = 6 }}, summary = {{ type = "string", maxLength = 400 }} }} }}

        [[stage]]
        name = "out"
        kind = "jsonl"
        path = "out.jsonl"
        "#,
        port = server.port
    ));
    let lines: String = ARTICLES
        .iter()
        .map(|(id, text)| format!("{}\n", json!({"id": id, "title": id, "text": text})))
        .collect();
    p.dir.write("articles.jsonl", lines);
    p
}

/// `stagewise ARGS` on `p`, as a user of a local model runs it: no key, and the time a CPU
/// needs.
fn local(p: &Pipeline, args: &[&str]) -> util::Output {
    args[1..]
        .iter()
        .fold(p.cmd(args[0]), |cmd, arg| cmd.arg(arg))
        .env_remove("OPENAI_API_KEY")
        .timeout(RUN)
        .output()
}

/// Each record's `facts` answer fits the schema: at most six facts of at most 200 characters,
/// a summary of at most 400, nothing else.
fn assert_answers_fit(p: &Pipeline, out: &util::Output) {
    let records = p.sink("out.jsonl").records;
    assert_eq!(records.len(), ARTICLES.len(), "{out}");
    for record in &records {
        let answer: &Value = &record["facts"];
        let facts = answer["facts"]
            .as_array()
            .unwrap_or_else(|| panic!("`facts` is a list: {answer}"));
        assert!(facts.len() <= 6, "{answer}");
        let chars = |v: &Value| v.as_str().map(|s| s.chars().count());
        assert!(
            facts.iter().all(|f| chars(f).is_some_and(|n| n <= 200)),
            "{answer}"
        );
        assert!(
            chars(&answer["summary"]).is_some_and(|n| n <= 400),
            "{answer}"
        );
        let keys: Vec<&String> = answer.as_object().expect("an object").keys().collect();
        assert_eq!(keys, ["facts", "summary"], "{answer}");
    }
}

#[test]
fn the_digest_runs_on_a_real_local_model_in_each_structured_output_mode() {
    if install().is_none() {
        return;
    }
    let server = serve();

    // `validate --connect` learns what the server takes (two requests of a few tokens).
    let p = digest("local-auto", &server, "auto");
    let out = local(&p, &["validate", "--connect"]);
    out.assert_code(0);
    out.assert_stderr_contains(
        "refuses `response_format` `json_schema` and takes `json_object` with the schema",
    );

    // `auto`: `json_schema` refused once, then `json_object` for the rest of the process.
    let out = local(&p, &["run"]);
    out.assert_code(0);
    assert_eq!(p.status().count("done"), ARTICLES.len() as u64, "{out}");
    assert_eq!(
        out.stderr
            .matches("does not take `response_format` of type `json_schema`")
            .count(),
        1,
        "{out}"
    );
    assert_answers_fit(&p, &out);
    // The fallback used no attempt and one request: every retry, and every request past one
    // per item and the refused one, is an invalid answer's (the model answers at random).
    let summary = p.stage_summary("local-auto", "facts");
    let figure = |name: &str| summary["figures"][name].as_f64().unwrap_or(0.0) as u64;
    let invalid = figure("invalid_answers");
    assert_eq!(
        summary["retries"].as_u64(),
        Some(invalid),
        "no attempt used: {summary}"
    );
    assert_eq!(
        figure("calls"),
        ARTICLES.len() as u64 + 1 + invalid,
        "{summary}"
    );

    // `json_object` from the first request.
    let p = digest("local-object", &server, "json_object");
    let out = local(&p, &["run"]);
    out.assert_code(0);
    assert!(
        !out.stderr.contains("does not take `response_format`"),
        "{out}"
    );
    assert_answers_fit(&p, &out);

    // `json_schema`: refused by this server. `validate --connect` says so at the key; a run
    // fails each item at once with the reason.
    let p = digest("local-schema", &server, "json_schema");
    let out = local(&p, &["validate", "--connect"]);
    out.assert_code(2);
    assert!(
        out.errors().iter().any(|l| l.contains("stage `facts`")
            && l.contains("HTTP 500")
            && l.contains("set `structured_output`")),
        "{out}"
    );
    let out = local(&p, &["run"]);
    out.assert_code(1);
    assert_eq!(
        out.stderr.matches("class=permanent").count(),
        ARTICLES.len(),
        "each item failed as permanent\n{out}"
    );
    let status = p.status();
    assert_eq!(status.failed.len(), ARTICLES.len(), "{out}");
    for f in &status.failed {
        assert_eq!(f.attempts, 1, "permanent, not retried: {f:?}");
        assert!(
            f.error.contains("HTTP 500")
                && f.error.contains("json_object")
                && f.error.contains("set `structured_output`"),
            "the server's reason: {f:?}"
        );
    }
}
