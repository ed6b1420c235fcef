//! `[telemetry]`: `/metrics`, `/healthz` and `/progress` served while a run goes on (from a
//! thread beside the runtime: a frozen runtime still answers 503), and the final metrics pushed
//! to a Pushgateway as the run ends, equal to the summary's figures. Every server here is on
//! 127.0.0.1: the runner's (on a port the system chooses, read from its log) and the test's
//! stand-ins for a Pushgateway.

mod util;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;
use util::{Pipeline, Running};

/// A `sleep` stage slow enough to be watched: `count` items of `nap` at 2 at once.
fn slow(name: &str, count: usize, nap: &str, telemetry: &str) -> Pipeline {
    Pipeline::new(&format!(
        r#"
        [pipeline]
        name = "{name}"
        heartbeat = "500ms"

        [telemetry]
        {telemetry}

        [[stage]]
        name = "src"
        kind = "generate"
        count = {count}

        [[stage]]
        name = "nap"
        kind = "sleep"
        duration = "{nap}"
        concurrency = 2

        [[stage]]
        name = "out"
        kind = "jsonl"
        path = "out.jsonl"
        "#
    ))
}

/// The address the runner serves on, from its log line (`listen = "127.0.0.1:0"` lets the
/// system choose the port).
fn served_at(running: &mut Running) -> SocketAddr {
    assert!(
        running.wait_for_stderr("serving /metrics", Duration::from_secs(20)),
        "the runner never said where it serves\n{}",
        running.stderr_so_far()
    );
    let stderr = running.stderr_so_far();
    let line = stderr
        .lines()
        .find(|l| l.contains("serving /metrics"))
        .expect("seen above");
    let at = line
        .split_whitespace()
        .find_map(|w| w.strip_prefix("listen="))
        .unwrap_or_else(|| panic!("no `listen=` in {line:?}"));
    at.trim_matches('"')
        .parse()
        .unwrap_or_else(|e| panic!("`{at}` is not an address: {e}"))
}

/// An answer of the runner's server.
struct Answer {
    status: u16,
    content_type: String,
    body: String,
}

/// `GET path` with a plain socket (`Connection: close`), bounded in time.
fn get(at: SocketAddr, path: &str) -> Answer {
    let mut stream =
        TcpStream::connect_timeout(&at, Duration::from_secs(5)).expect("connect to the runner");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("a read timeout");
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {at}\r\nConnection: close\r\n\r\n"
    )
    .expect("send the request");
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).expect("read the answer");
    let raw = String::from_utf8(raw).expect("an answer in UTF-8");
    let (head, body) = raw.split_once("\r\n\r\n").expect("a head and a body");
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status in {head:?}"));
    let content_type = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-type:")
                .map(|v| v.trim().to_owned())
        })
        .unwrap_or_default();
    Answer {
        status,
        content_type,
        body: body.to_owned(),
    }
}

/// One sample of the Prometheus text format: its name and labels, in order.
type Series = (String, Vec<(String, String)>);

/// The samples of a body in the Prometheus text format (0.0.4), by name and labels. Panics on
/// anything the format does not allow: a sample whose family was not declared by a `# TYPE`
/// line (histograms' `_bucket`, `_sum` and `_count` belong to theirs), a line that is not
/// `name{label="value",…} number`, a series given twice.
fn parse_prometheus(text: &str) -> BTreeMap<Series, f64> {
    let mut types: BTreeMap<String, String> = BTreeMap::new();
    let mut samples = BTreeMap::new();
    let valid_name = |n: &str| {
        !n.is_empty()
            && !n.starts_with(|c: char| c.is_ascii_digit())
            && n.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
    };
    for line in text.lines() {
        if line.is_empty() {
            continue;
        }
        if let Some(comment) = line.strip_prefix("# ") {
            let mut words = comment.splitn(3, ' ');
            match (words.next(), words.next(), words.next()) {
                (Some("TYPE"), Some(name), Some(kind)) => {
                    assert!(valid_name(name), "bad family name: {line}");
                    assert!(
                        ["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind),
                        "bad type: {line}"
                    );
                    assert!(
                        types.insert(name.to_owned(), kind.to_owned()).is_none(),
                        "a second TYPE for {name}"
                    );
                }
                (Some("HELP"), Some(name), _) => assert!(valid_name(name), "bad HELP: {line}"),
                _ => {}
            }
            continue;
        }
        let (series, value) = line
            .rsplit_once(' ')
            .unwrap_or_else(|| panic!("a sample without a value: {line}"));
        let value: f64 = match value {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            v => v.parse().unwrap_or_else(|_| panic!("not a number: {line}")),
        };
        let (name, labels) = match series.split_once('{') {
            None => (series, Vec::new()),
            Some((name, rest)) => {
                let inner = rest
                    .strip_suffix('}')
                    .unwrap_or_else(|| panic!("unclosed labels: {line}"));
                let labels = inner
                    .split(',')
                    .filter(|pair| !pair.is_empty())
                    .map(|pair| {
                        let (k, v) = pair
                            .split_once('=')
                            .unwrap_or_else(|| panic!("a label without a value: {line}"));
                        assert!(valid_name(k), "bad label name: {line}");
                        let v = v
                            .strip_prefix('"')
                            .and_then(|v| v.strip_suffix('"'))
                            .unwrap_or_else(|| panic!("an unquoted label value: {line}"));
                        (k.to_owned(), v.to_owned())
                    })
                    .collect();
                (name, labels)
            }
        };
        assert!(valid_name(name), "bad metric name: {line}");
        let family_declared = types.contains_key(name)
            || ["_bucket", "_sum", "_count"].iter().any(|suffix| {
                name.strip_suffix(suffix)
                    .is_some_and(|f| types.get(f).is_some_and(|t| t == "histogram"))
            });
        assert!(family_declared, "a sample before its TYPE line: {line}");
        assert!(
            samples.insert((name.to_owned(), labels), value).is_none(),
            "a series given twice: {line}"
        );
    }
    samples
}

/// The value of the series `name` whose labels include `labels`; panics unless exactly one has.
fn value(samples: &BTreeMap<Series, f64>, name: &str, labels: &[(&str, &str)]) -> f64 {
    let found: Vec<f64> = samples
        .iter()
        .filter(|((n, ls), _)| {
            n == name
                && labels
                    .iter()
                    .all(|(k, v)| ls.iter().any(|(lk, lv)| lk == k && lv == v))
        })
        .map(|(_, v)| *v)
        .collect();
    assert_eq!(
        found.len(),
        1,
        "{name}{labels:?}: {} series in\n{samples:#?}",
        found.len()
    );
    found[0]
}

#[test]
fn metrics_progress_and_health_are_served_while_the_run_goes_on() {
    let p = slow("served", 40, "150ms", r#"listen = "127.0.0.1:0""#);
    let mut running = p.cmd("run").spawn();
    let at = served_at(&mut running);

    // The stage's done counter appears, and grows.
    let done_at_nap = |answer: &Answer| {
        value(
            &parse_prometheus(&answer.body),
            "stagewise_items_total",
            &[("stage", "nap"), ("outcome", "done")],
        )
    };
    let mut first = None;
    assert!(
        util::wait_until(Duration::from_secs(20), || {
            let answer = get(at, "/metrics");
            assert_eq!(answer.status, 200, "{}", answer.body);
            if !answer.body.contains("stagewise_items_total") {
                return false;
            }
            let done = done_at_nap(&answer);
            first = Some(done);
            done >= 1.0
        }),
        "the stage never counted an item done\n{}",
        running.stderr_so_far()
    );
    let first = first.expect("read above");
    let answer = get(at, "/metrics");
    assert!(
        answer.content_type.starts_with("text/plain") && answer.content_type.contains("0.0.4"),
        "{}",
        answer.content_type
    );
    let samples = parse_prometheus(&answer.body);
    assert!(
        value(&samples, "stagewise_attempts_total", &[("stage", "nap")]) >= first,
        "{samples:#?}"
    );
    assert_eq!(
        value(&samples, "stagewise_run_batch_items", &[]),
        40.0,
        "{samples:#?}"
    );
    assert!(
        value(
            &samples,
            "stagewise_attempt_duration_seconds_count",
            &[("stage", "nap")]
        ) >= 1.0
    );
    assert!(
        util::wait_until(Duration::from_secs(20), || done_at_nap(&get(
            at, "/metrics"
        )) > first),
        "the done counter did not grow from {first}"
    );

    // `/progress`: the heartbeat's figures, numbers as numbers.
    let progress = get(at, "/progress");
    assert_eq!(progress.status, 200);
    assert_eq!(progress.content_type, "application/json");
    let json: Value = serde_json::from_str(&progress.body)
        .unwrap_or_else(|e| panic!("/progress is not JSON ({e}): {}", progress.body));
    for key in [
        "done",
        "failed",
        "skipped",
        "remaining",
        "in_flight",
        "items",
    ] {
        assert!(json[key].is_u64(), "`{key}` is not a whole number: {json}");
    }
    assert!(json["items_per_sec"].is_number(), "{json}");
    assert!(
        json["eta_secs"].is_number() || json["eta_secs"].is_null(),
        "{json}"
    );
    assert_eq!(json["items"], 40, "{json}");
    let stages = json["stages"].as_array().expect("stages as a list");
    let nap = stages
        .iter()
        .find(|s| s["name"] == "nap")
        .unwrap_or_else(|| panic!("no stage `nap`: {json}"));
    assert!(nap["done"].is_u64() && nap["in_flight"].is_u64(), "{nap}");

    // `/healthz`: the runtime answers.
    let health = get(at, "/healthz");
    assert_eq!((health.status, health.body.trim()), (200, "ok"));
    assert_eq!(get(at, "/nothing-here").status, 404);

    let out = running.wait();
    out.assert_code(0);
    out.assert_summary_last();
}

/// A request the stand-in Pushgateway got.
#[derive(Debug, Clone)]
struct Request {
    method: String,
    path: String,
    content_type: String,
    body: String,
}

/// A stand-in for a Pushgateway: the requests it got. It answers 200 to each, or never answers
/// (`silent`), holding the connection open.
struct Gateway {
    at: SocketAddr,
    requests: Arc<Mutex<Vec<Request>>>,
    accepted: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    thread: Option<thread::JoinHandle<()>>,
}

impl Gateway {
    fn start(silent: bool) -> Gateway {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the test gateway");
        listener.set_nonblocking(true).expect("non-blocking");
        let at = listener.local_addr().expect("its address");
        let requests = Arc::new(Mutex::new(Vec::new()));
        let accepted = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (requests, accepted, stop) = (requests.clone(), accepted.clone(), stop.clone());
            thread::spawn(move || {
                let mut held = Vec::new();
                let began = Instant::now();
                // Bounded: the gateway ends by itself after a minute.
                while !stop.load(Ordering::SeqCst) && began.elapsed() < Duration::from_secs(60) {
                    let Ok((mut stream, _)) = listener.accept() else {
                        thread::sleep(Duration::from_millis(10));
                        continue;
                    };
                    accepted.fetch_add(1, Ordering::SeqCst);
                    if silent {
                        held.push(stream);
                        continue;
                    }
                    if let Some(request) = read_request(&mut stream) {
                        requests.lock().expect("requests").push(request);
                    }
                    let _ = stream.write_all(
                        b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                    );
                }
            })
        };
        Gateway {
            at,
            requests,
            accepted,
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// One HTTP request with a `Content-Length` body.
fn read_request(stream: &mut TcpStream) -> Option<Request> {
    stream.set_nonblocking(false).ok()?;
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .ok()?;
    let mut raw = Vec::new();
    let mut buf = [0u8; 4096];
    let head_end = loop {
        let n = stream.read(&mut buf).ok()?;
        if n == 0 {
            return None;
        }
        raw.extend_from_slice(&buf[..n]);
        if let Some(at) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
            break at + 4;
        }
    };
    let head = String::from_utf8_lossy(&raw[..head_end]).into_owned();
    let header = |name: &str| {
        head.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim()
                .eq_ignore_ascii_case(name)
                .then(|| v.trim().to_owned())
        })
    };
    let length: usize = header("content-length")?.parse().ok()?;
    while raw.len() < head_end + length {
        let n = stream.read(&mut buf).ok()?;
        if n == 0 {
            return None;
        }
        raw.extend_from_slice(&buf[..n]);
    }
    let mut first = head.lines().next()?.split_whitespace();
    let (method, path) = (first.next()?.to_owned(), first.next()?.to_owned());
    let body = String::from_utf8(raw[head_end..head_end + length].to_vec()).ok()?;
    Some(Request {
        method,
        path,
        content_type: header("content-type").unwrap_or_default(),
        body,
    })
}

#[test]
fn the_final_metrics_are_pushed_and_equal_the_summary() {
    let gateway = Gateway::start(false);
    let p = Pipeline::new(&format!(
        r#"
        [pipeline]
        name = "pushed"

        [telemetry]
        push = "http://127.0.0.1:{port}/"

        [[stage]]
        name = "src"
        kind = "generate"
        count = 40

        [[stage]]
        name = "flaky"
        kind = "fault"
        permanent_rate = 0.3
        seed = 7

        [[stage]]
        name = "out"
        kind = "jsonl"
        path = "out.jsonl"
        "#,
        port = gateway.at.port()
    ));
    let out = p.run();
    out.assert_code(1);
    out.assert_stderr_contains("final metrics pushed");
    out.assert_summary_last();
    let requests = gateway.requests.lock().expect("requests").clone();
    assert_eq!(requests.len(), 1, "{requests:?}\n{out}");
    let push = &requests[0];
    assert_eq!(push.method, "PUT");
    assert_eq!(push.path, "/metrics/job/stagewise/pipeline/pushed");
    assert!(
        push.content_type.contains("version=0.0.4"),
        "{}",
        push.content_type
    );
    let body = &push.body;
    let samples = parse_prometheus(body);

    let summary = p.summary("pushed");
    assert!(
        summary["failed"].as_u64().is_some_and(|n| n > 0),
        "the run should have failed items: {summary}"
    );
    for stage in summary["stages"].as_array().expect("stages") {
        let name = stage["name"].as_str().expect("a name");
        for outcome in ["done", "failed", "skipped"] {
            assert_eq!(
                value(
                    &samples,
                    "stagewise_items_total",
                    &[("stage", name), ("outcome", outcome)]
                ),
                stage[outcome].as_f64().expect("a number"),
                "stage `{name}`, {outcome}"
            );
        }
        for (metric, key) in [
            ("stagewise_retries_total", "retries"),
            ("stagewise_timeouts_total", "timeouts"),
            ("stagewise_abandoned_calls_total", "abandoned"),
        ] {
            assert_eq!(
                value(&samples, metric, &[("stage", name)]),
                stage[key].as_f64().expect("a number"),
                "stage `{name}`, {key}"
            );
        }
    }
    for state in ["done", "failed", "skipped", "remaining"] {
        assert_eq!(
            value(&samples, "stagewise_run_items", &[("state", state)]),
            summary[state].as_f64().expect("a number"),
            "{state}"
        );
    }
    assert_eq!(value(&samples, "stagewise_exit_code", &[]), 1.0);
    assert!(
        value(
            &samples,
            "stagewise_checkpoint_commit_duration_seconds_count",
            &[]
        ) >= 1.0,
        "{body}"
    );
}

#[test]
fn a_listen_address_in_use_stops_the_run_before_it_starts() {
    let taken = TcpListener::bind("127.0.0.1:0").expect("bind a port");
    let at = taken.local_addr().expect("its address");
    let p = slow("taken", 3, "10ms", &format!("listen = \"{at}\""));
    let out = p.run();
    out.assert_code(2);
    out.assert_stderr_contains(&format!(
        "cannot serve metrics on `[telemetry] listen` = {at}"
    ));
    assert!(
        out.stderr
            .to_ascii_lowercase()
            .contains("address already in use"),
        "{out}"
    );
    assert!(
        !p.dir.exists(".stagewise/taken.db") && !p.dir.exists("out.jsonl"),
        "nothing may be opened or run\n{out}"
    );
    drop(taken);
}

#[test]
fn a_push_that_gets_no_answer_does_not_hold_the_exit() {
    let gateway = Gateway::start(true);
    let p = slow(
        "unanswered",
        4,
        "10ms",
        &format!(
            "push = \"http://stagewise:s3cr3t-pw@127.0.0.1:{}\"\npush_timeout = \"1s\"",
            gateway.at.port()
        ),
    );
    let began = Instant::now();
    let out = p.run();
    let took = began.elapsed();
    out.assert_code(0);
    out.assert_stderr_contains("could not push the final metrics; the exit code is unchanged");
    out.assert_stderr_contains("no answer within `push_timeout` (1s)");
    out.assert_summary_last();
    assert!(
        gateway.accepted.load(Ordering::SeqCst) >= 1,
        "the push never reached the gateway\n{out}"
    );
    assert!(
        !out.stderr.contains("s3cr3t-pw"),
        "the push's password was printed\n{out}"
    );
    // The push's 1s and a generous allowance for the run itself on a busy machine.
    assert!(
        took < Duration::from_secs(15),
        "the run took {took:?} with a 1s push timeout\n{out}"
    );
    let summary = p.summary("unanswered");
    assert_eq!(summary["exit_code"], 0, "{summary}");
}

#[test]
fn health_says_503_while_the_runtime_is_frozen_and_metrics_still_answer() {
    let p = Pipeline::new(
        r#"
        [pipeline]
        name = "frozen-health"
        heartbeat = "200ms"
        shutdown_grace = "1s"
        watchdog = "30s"

        [telemetry]
        listen = "127.0.0.1:0"

        [[stage]]
        name = "src"
        kind = "generate"
        count = 20

        [[stage]]
        name = "frz"
        kind = "fault"
        freeze_rate = 1.0
        concurrency = 8

        [[stage]]
        name = "out"
        kind = "jsonl"
        path = "out.jsonl"
        "#,
    );
    let mut running = p.cmd("run").spawn();
    let at = served_at(&mut running);
    let mut last = String::new();
    assert!(
        util::wait_until(Duration::from_secs(20), || {
            let health = get(at, "/healthz");
            last = format!("{} {}", health.status, health.body.trim());
            health.status == 503
        }),
        "/healthz never said 503 (last: {last})\n{}",
        running.stderr_so_far()
    );
    assert!(last.contains("stalled"), "{last}");
    let metrics = get(at, "/metrics");
    assert_eq!(metrics.status, 200);
    let samples = parse_prometheus(&metrics.body);
    assert!(value(&samples, "stagewise_in_flight", &[("stage", "frz")]) >= 1.0);
    assert!(!running.has_exited(), "the watchdog's 30s are not over yet");
    // Dropping `running` kills the frozen process.
}

#[test]
fn validate_and_plan_know_the_telemetry_keys() {
    let p = slow(
        "keys",
        3,
        "10ms",
        "listen = \"localhost\"\npush = \"ftp://gw:9091\"\npush_timeout = \"0s\"",
    );
    let out = p.validate();
    out.assert_code(2);
    out.assert_stderr_contains("`listen` must be an IP address and a port");
    out.assert_stderr_contains("`push` must be the http:// or https:// URL of a Pushgateway");
    out.assert_stderr_contains("`push_timeout` must be greater than 0");
    let (line, col) = util::locate(p.toml(), "\"localhost\"");
    out.assert_stderr_contains(&format!("pipeline.toml:{line}:{col}:"));

    let p = slow("keys", 3, "10ms", "push_timout = \"1s\"");
    let out = p.validate();
    out.assert_code(2);
    out.assert_stderr_contains("unknown key `push_timout` (did you mean `push_timeout`?)");

    let p = slow(
        "keys",
        3,
        "10ms",
        "listen = \"0.0.0.0:9464\"\npush = \"https://ops:hunter2@gw.example:9091\"",
    );
    p.validate().assert_code(0);
    let out = p.cmd("plan").arg("--json").output();
    out.assert_code(0);
    let plan: Value = serde_json::from_str(&out.stdout).expect("plan --json is JSON");
    let telemetry = &plan["telemetry"];
    assert_eq!(telemetry["listen"]["value"], "0.0.0.0:9464", "{plan}");
    assert_eq!(telemetry["push_timeout"]["value"], "5s", "{plan}");
    assert_eq!(
        telemetry["push_timeout"]["origin"], "built-in default",
        "{plan}"
    );
    let push = telemetry["push"]["value"].as_str().expect("push as text");
    assert!(
        push.contains("gw.example:9091") && !push.contains("hunter2"),
        "{push}"
    );
    // An override addresses the section too.
    let out = p
        .cmd("plan")
        .arg("--json")
        .env("STAGEWISE_TELEMETRY__LISTEN", "127.0.0.1:9999")
        .output();
    out.assert_code(0);
    let plan: Value = serde_json::from_str(&out.stdout).expect("plan --json is JSON");
    assert_eq!(plan["telemetry"]["listen"]["value"], "127.0.0.1:9999");
}
