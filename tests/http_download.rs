//! `http-download` end to end, against a real HTTP server on 127.0.0.1 that misbehaves on
//! purpose (tests/util/http.rs): every failure mode of a network fetch must end bounded,
//! classified (retried or not) and visible in `status --json` with a useful error.
//!
//! Each test runs `jsonl` (one `{"id", "url"}` per line) → `http-download` → `jsonl` sink. Items
//! whose expectations are independent share a pipeline, so the slow cases wait side by side.
//! Durations are asserted only as generous upper bounds, except the `Retry-After` wait, which is
//! measured on the server's own request log.

mod util;

use std::time::Duration;

use serde_json::Value;
use util::http::{Server, BIG, GZIP_TEXT, PAGE};
use util::{Failed, Pipeline, Status};

/// `items` (key, URL) → `http-download` with `allow_private_networks` and `keys` → `out.jsonl`.
fn download(name: &str, items: &[(&str, String)], keys: &str) -> Pipeline {
    download_by_default(
        name,
        items,
        &format!("allow_private_networks = true\n{keys}"),
    )
}

/// As [`download`], with `allow_private_networks` left at its default (off).
fn download_by_default(name: &str, items: &[(&str, String)], keys: &str) -> Pipeline {
    pipeline(
        name,
        "",
        items,
        &format!("concurrency = 8\nper_host_concurrency = 8\n{keys}"),
    )
}

/// `items` (key, URL) → `http-download` (`keys`) → `out.jsonl`, with `pipeline_keys` in
/// `[pipeline]`.
fn pipeline(
    name: &str,
    pipeline_keys: &str,
    items: &[(impl AsRef<str>, String)],
    keys: &str,
) -> Pipeline {
    let p = Pipeline::new(&format!(
        r#"
[pipeline]
name = "{name}"
{pipeline_keys}

[[stage]]
name = "urls"
kind = "jsonl"
path = "urls.jsonl"
key = "id"

[[stage]]
name = "fetch"
kind = "http-download"
{keys}

[[stage]]
name = "out"
kind = "jsonl"
path = "out.jsonl"
"#
    ));
    let lines: String = items
        .iter()
        .map(|(id, url)| format!("{}\n", serde_json::json!({ "id": id.as_ref(), "url": url })))
        .collect();
    p.dir.write("urls.jsonl", lines);
    p
}

/// The failed item `key`, which must have failed at the download stage.
fn failed(status: &Status, key: &str) -> Failed {
    let f = status
        .failed
        .iter()
        .find(|f| f.key == key)
        .unwrap_or_else(|| panic!("`{key}` is not among the failed items: {:#}", status.raw))
        .clone();
    assert_eq!(f.stage, "fetch", "{f:?}");
    f
}

/// The skip reason of item `key`, which must have been skipped at the download stage.
fn skipped(status: &Status, key: &str) -> String {
    let item = status.raw["skipped"]
        .as_array()
        .unwrap_or_else(|| panic!("status --json has no `skipped` list: {:#}", status.raw))
        .iter()
        .find(|s| s["key"] == key)
        .unwrap_or_else(|| panic!("`{key}` is not among the skipped items: {:#}", status.raw));
    assert_eq!(item["stage"], "fetch", "{item}");
    item["reason"]
        .as_str()
        .unwrap_or_else(|| panic!("skipped item without a string `reason`: {item}"))
        .to_owned()
}

/// The sink's record for `key`, which must appear exactly once.
fn record(p: &Pipeline, key: &str) -> serde_json::Map<String, Value> {
    let sink = p.sink("out.jsonl");
    let mut found = sink.records.iter().filter(|r| r["key"] == key);
    let first = found
        .next()
        .unwrap_or_else(|| panic!("`{key}` is not in the sink: {:?}", sink.keys()))
        .clone();
    assert!(found.next().is_none(), "`{key}` written twice");
    first
}

/// The downloaded text of a sink record.
fn html(record: &serde_json::Map<String, Value>) -> &str {
    record["html"]
        .as_str()
        .unwrap_or_else(|| panic!("`html` is not text: {record:?}"))
}

/// Asserts the item counts of a run: `done`, `skipped` and `failed`, nothing left over.
fn assert_counts(status: &Status, done: u64, skipped: u64, failed: u64) {
    let want = [
        ("done", done),
        ("skipped", skipped),
        ("failed", failed),
        ("pending", 0),
        ("in_flight", 0),
    ];
    for (state, n) in want {
        assert_eq!(status.count(state), n, "`{state}`: {:#}", status.raw);
    }
}

/// `fetched_at` looks like RFC 3339 in UTC to the second: `2024-05-01T12:00:00Z`.
fn is_rfc3339_seconds(text: &str) -> bool {
    let b = text.as_bytes();
    b.len() == 20
        && b.iter().enumerate().all(|(i, c)| match i {
            4 | 7 => *c == b'-',
            10 => *c == b'T',
            13 | 16 => *c == b':',
            19 => *c == b'Z',
            _ => c.is_ascii_digit(),
        })
}

/// Largest peak resident set, in bytes, among the child processes this test process has waited
/// for. Under nextest every test is its own process, so that is the runs of this test; under
/// `cargo test` it includes other tests' children, which only makes it a looser upper bound.
/// The kernel keeps the exact peak, where sampling `/proc/PID/status` could miss the last
/// moments before exit.
// `getrusage` has no safe wrapper in std; this is the only `unsafe` here.
#[allow(unsafe_code)]
fn children_peak_rss() -> u64 {
    let mut usage = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: getrusage fills the struct it is given and touches nothing else.
    let rc = unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, usage.as_mut_ptr()) };
    assert_eq!(rc, 0, "getrusage: {}", std::io::Error::last_os_error());
    // SAFETY: getrusage succeeded, so it initialized the struct (and zeroed was valid anyway).
    let usage = unsafe { usage.assume_init() };
    // Kilobytes on Linux.
    u64::try_from(usage.ru_maxrss).expect("a peak is never negative") * 1024
}

const MB: u64 = 1024 * 1024;

#[test]
fn a_page_is_fetched_with_its_text_and_metadata() {
    let server = Server::start();
    let url = server.url("/page");
    let p = download("page", &[("article", url.clone())], "");
    p.run().assert_code(0);
    assert_counts(&p.status(), 1, 0, 0);
    let r = record(&p, "article");
    assert_eq!(html(&r), PAGE);
    assert_eq!(r["status"], 200);
    assert_eq!(r["final_url"], url.as_str());
    assert_eq!(r["content_type"], "text/html; charset=utf-8");
    assert_eq!(r["url"], url.as_str(), "the input fields are kept");
    let fetched_at = r["fetched_at"].as_str().unwrap_or("");
    assert!(is_rfc3339_seconds(fetched_at), "fetched_at: {r:?}");
    let requests = server.requests_to("/page");
    assert_eq!(requests.len(), 1, "{requests:?}");
    assert_eq!(requests[0].method, "GET");
    assert!(
        requests[0]
            .header("user-agent")
            .is_some_and(|ua| ua.starts_with("stagewise/")),
        "{requests:?}"
    );
}

#[test]
fn redirects_are_followed_up_to_max_redirects_and_loops_refused() {
    let server = Server::start();
    let p = download(
        "redirects",
        &[
            // /redirect/2 → /redirect/1 → /redirect/0 → /page: three redirects, the limit.
            ("chain", server.url("/redirect/2")),
            // Four redirects: one too many.
            ("too-long", server.url("/redirect/3")),
            ("loop", server.url("/loop/a")),
        ],
        "max_redirects = 3\nretry = { attempts = 3, initial = \"50ms\", max = \"200ms\" }",
    );
    p.run().assert_code(1);
    let status = p.status();
    assert_counts(&status, 1, 0, 2);

    let chain = record(&p, "chain");
    assert_eq!(chain["final_url"], server.url("/page").as_str());
    assert_eq!(chain["status"], 200);
    assert_eq!(html(&chain), PAGE);

    let too_long = failed(&status, "too-long");
    assert!(
        too_long.error.contains("too many redirects"),
        "{too_long:?}"
    );
    assert_eq!(too_long.attempts, 1, "a permanent error: {too_long:?}");

    let looped = failed(&status, "loop");
    assert!(looped.error.contains("redirect loop"), "{looped:?}");
    assert_eq!(looped.attempts, 1, "a permanent error: {looped:?}");
    // /loop/a, /loop/b, and the loop is seen at the second /loop/a without asking again.
    assert_eq!(server.hits("/loop/a"), 1);
    assert_eq!(server.hits("/loop/b"), 1);
    // The too-long chain got its fourth redirect from /redirect/0 and did not follow it: only
    // the chain of three reached /page.
    assert_eq!(server.hits("/redirect/3"), 1);
    assert_eq!(server.hits("/redirect/0"), 2);
    assert_eq!(server.hits("/page"), 1);
}

#[test]
fn a_404_fails_permanently_without_a_retry() {
    let server = Server::start();
    let p = download(
        "not-found",
        &[("gone", server.url("/missing"))],
        "retry = { attempts = 3, initial = \"50ms\", max = \"200ms\" }",
    );
    p.run().assert_code(1);
    let status = p.status();
    assert_counts(&status, 0, 0, 1);
    let f = failed(&status, "gone");
    assert_eq!(f.attempts, 1, "{f:?}");
    assert!(f.error.contains("HTTP 404"), "{f:?}");
    assert_eq!(server.hits("/missing"), 1);
    assert_eq!(p.sink("out.jsonl").len(), 0);
}

#[test]
fn a_500_is_retried_until_the_page_comes() {
    let server = Server::start();
    let p = download(
        "flaky",
        &[("a", server.url("/flaky/a")), ("b", server.url("/flaky/b"))],
        "retry = { attempts = 3, initial = \"50ms\", max = \"200ms\" }",
    );
    p.run().assert_code(0);
    assert_counts(&p.status(), 2, 0, 0);
    for id in ["a", "b"] {
        let r = record(&p, id);
        assert_eq!(r["status"], 200, "{r:?}");
        assert_eq!(html(&r), PAGE);
        assert_eq!(server.hits(&format!("/flaky/{id}")), 2, "one 500, one 200");
    }
}

#[test]
fn a_429_retry_after_sets_the_wait_before_the_next_attempt() {
    let server = Server::start();
    let p = download(
        "rate-limited",
        &[("slow-down", server.url("/ratelimited/x"))],
        "retry = { attempts = 3, initial = \"50ms\", max = \"200ms\" }",
    );
    p.run().assert_code(0);
    assert_counts(&p.status(), 1, 0, 0);
    assert_eq!(html(&record(&p, "slow-down")), PAGE);
    let requests = server.requests_to("/ratelimited/x");
    assert_eq!(requests.len(), 2, "one 429, one 200: {requests:?}");
    // The backoff alone would wait at most 200ms; `Retry-After: 2` must win.
    let waited = requests[1].at - requests[0].at;
    assert!(
        waited >= Duration::from_millis(1900),
        "the second request came {waited:?} after the 429 with `Retry-After: 2`"
    );
    assert!(waited < Duration::from_secs(10), "waited {waited:?}");
}

#[test]
fn a_server_that_never_answers_ends_at_the_attempt_timeout() {
    let server = Server::start();
    let p = download(
        "silent",
        &[("mute", server.url("/silent"))],
        "timeout = \"2s\"\nretry = { attempts = 2, initial = \"50ms\", max = \"200ms\" }",
    );
    let out = p.run();
    out.assert_code(1);
    assert!(
        out.elapsed < Duration::from_secs(15),
        "two 2 s attempts took {:?}\n{out}",
        out.elapsed
    );
    let status = p.status();
    assert_counts(&status, 0, 0, 1);
    let f = failed(&status, "mute");
    assert_eq!(f.attempts, 2, "a timeout is transient: {f:?}");
    assert!(f.error.contains("timed out"), "{f:?}");
    assert_eq!(server.hits("/silent"), 2, "one request per attempt");
}

#[test]
fn a_slow_drip_ends_at_read_timeout_not_at_the_attempt_timeout() {
    let server = Server::start();
    let p = download(
        "drip",
        &[
            // Headers at once, then a body byte every 3 s.
            ("body", server.url("/drip")),
            // The status line, then a header byte every 3 s.
            ("head", server.url("/drip-head")),
        ],
        "read_timeout = \"1s\"\ntimeout = \"30s\"\nretry = { attempts = 2, initial = \"50ms\", max = \"200ms\" }",
    );
    let out = p.run();
    out.assert_code(1);
    assert!(
        out.elapsed < Duration::from_secs(15),
        "the 1 s `read_timeout` should end both items long before the 30 s `timeout`: {:?}\n{out}",
        out.elapsed
    );
    let status = p.status();
    assert_counts(&status, 0, 0, 2);
    // Both items are checked before failing, so a message shows every one that is wrong.
    let wrong: Vec<Failed> = ["body", "head"]
        .into_iter()
        .map(|key| failed(&status, key))
        .filter(|f| f.attempts != 2 || !f.error.contains("read_timeout"))
        .collect();
    assert!(
        wrong.is_empty(),
        "each should fail after 2 attempts (a timeout is transient) with an error naming \
         `read_timeout`: {wrong:#?}"
    );
}

#[test]
fn a_body_over_max_bytes_is_refused_without_reading_it_all() {
    let server = Server::start();
    let p = download(
        "too-big",
        &[
            ("declared", server.url("/big")),
            ("undeclared", server.url("/big-undeclared")),
        ],
        "max_bytes = \"1MB\"\nretry = { attempts = 3, initial = \"50ms\", max = \"200ms\" }",
    );
    let out = p.run();
    out.assert_code(1);
    assert!(out.elapsed < Duration::from_secs(30), "{out}");
    let status = p.status();
    assert_counts(&status, 0, 0, 2);

    let declared = failed(&status, "declared");
    assert_eq!(declared.attempts, 1, "a permanent error: {declared:?}");
    assert!(
        declared.error.contains("more than `max_bytes`")
            && declared.error.contains(&BIG.to_string()),
        "{declared:?}"
    );
    let undeclared = failed(&status, "undeclared");
    assert_eq!(undeclared.attempts, 1, "a permanent error: {undeclared:?}");
    assert!(
        undeclared.error.contains("larger than `max_bytes`"),
        "{undeclared:?}"
    );

    // The client hung up early: what the server got rid of is what fits in the socket buffers
    // plus the 1 MB read, far from the 50 MB body.
    for path in ["/big", "/big-undeclared"] {
        assert_eq!(server.hits(path), 1, "{path}");
        let written = server.body_bytes_written(path, Duration::from_secs(10));
        assert!(
            written < 20 * MB,
            "the server wrote {written} bytes of {path} before the client hung up"
        );
    }
    let peak = children_peak_rss();
    assert!(
        peak < 40 * MB,
        "peak RSS of the run was {} MB; a 50 MB body must never be held in memory",
        peak / MB
    );
}

#[test]
fn a_gzip_body_is_decompressed() {
    let server = Server::start();
    let p = download("gzip", &[("zipped", server.url("/gzip"))], "");
    p.run().assert_code(0);
    assert_counts(&p.status(), 1, 0, 0);
    let r = record(&p, "zipped");
    assert_eq!(html(&r), GZIP_TEXT);
    assert_eq!(r["status"], 200);
}

#[test]
fn a_latin1_page_is_decoded_by_its_meta_charset() {
    let server = Server::start();
    let p = download("latin1", &[("cafe", server.url("/latin1"))], "");
    p.run().assert_code(0);
    assert_counts(&p.status(), 1, 0, 0);
    let r = record(&p, "cafe");
    let text = html(&r);
    for word in ["Café", "Müller", "crème brûlée"] {
        assert!(text.contains(word), "{word:?} not in {text:?}");
    }
    assert!(
        !text.contains('\u{fffd}'),
        "replacement characters: {text:?}"
    );
    assert_eq!(r["content_type"], "text/html");
}

#[test]
fn private_addresses_are_refused_by_default() {
    let server = Server::start();
    let p = download_by_default(
        "private",
        &[
            ("loopback", server.url("/page")),
            (
                "localhost",
                format!("http://localhost:{}/page", server.port()),
            ),
        ],
        "retry = { attempts = 3, initial = \"50ms\", max = \"200ms\" }",
    );
    p.run().assert_code(1);
    let status = p.status();
    assert_counts(&status, 0, 0, 2);
    let loopback = failed(&status, "loopback");
    assert_eq!(loopback.attempts, 1, "a permanent error: {loopback:?}");
    assert!(
        loopback.error.contains("127.0.0.1") && loopback.error.contains("allow_private_networks"),
        "{loopback:?}"
    );
    // A name is refused by what it resolves to.
    let localhost = failed(&status, "localhost");
    assert_eq!(localhost.attempts, 1, "a permanent error: {localhost:?}");
    assert!(
        (localhost.error.contains("127.0.0.1") || localhost.error.contains("::1"))
            && localhost.error.contains("allow_private_networks"),
        "{localhost:?}"
    );
    assert!(
        server.requests().is_empty(),
        "a refused address must not be contacted: {:?}",
        server.requests()
    );
}

/// Two servers on one port: 127.0.0.2 (which the test hook lets pass as public) and
/// 127.0.0.1. Retries with another port while the second bind finds it taken.
fn public_and_private_servers() -> (Server, Server) {
    for _ in 0..20 {
        let public = Server::start_at("127.0.0.2:0").expect("bind 127.0.0.2:0");
        if let Ok(private) = Server::start_at(&format!("127.0.0.1:{}", public.port())) {
            return (public, private);
        }
    }
    panic!("no port free on both 127.0.0.2 and 127.0.0.1 after 20 tries");
}

#[test]
fn a_name_is_connected_to_only_at_the_addresses_the_guard_approved() {
    let (public, private) = public_and_private_servers();
    let port = public.port();
    let p = download_by_default(
        "rebind",
        &[
            // Answers a public address first and a loopback one second: only the first is
            // connected to, whatever the order or a second lookup would say.
            ("rebound", format!("http://rebind.test:{port}/page")),
            // Answers only loopback: refused, naming the host, the address and why.
            ("loopback", format!("http://loopback.test:{port}/page")),
            // A redirect hop is checked as the first request is.
            (
                "hop",
                format!("http://rebind.test:{port}/goto?http://loopback.test:{port}/page"),
            ),
        ],
        "retry = { attempts = 3, initial = \"50ms\", max = \"200ms\" }",
    );
    let out = p
        .cmd("run")
        .env(
            "STAGEWISE_TEST_RESOLVE",
            "rebind.test=127.0.0.2,127.0.0.1;loopback.test=127.0.0.1",
        )
        .output();
    out.assert_code(1);
    let status = p.status();
    assert_counts(&status, 1, 0, 2);
    assert_eq!(html(&record(&p, "rebound")), PAGE);
    for key in ["loopback", "hop"] {
        let f = failed(&status, key);
        assert_eq!(f.attempts, 1, "a permanent error: {f:?}");
        assert!(
            f.error
                .contains("refused: `loopback.test` resolves to 127.0.0.1 (loopback)")
                && f.error.contains("allow_private_networks"),
            "{f:?}"
        );
    }
    assert_eq!(public.hits("/page"), 1, "{:?}", public.requests());
    assert!(
        private.requests().is_empty(),
        "a refused address must never be contacted: {:?}",
        private.requests()
    );
}

#[test]
fn configured_headers_never_follow_a_redirect_to_another_origin() {
    let first = Server::start();
    let second = Server::start();
    let away = format!("/goto?{}", second.url("/page"));
    let p = download(
        "headers",
        &[
            // Another port is another origin.
            ("away", first.url(&away)),
            // The same origin keeps them.
            ("home", first.url("/redirect/0")),
        ],
        "headers = { Authorization = \"Bearer s3cret\", Cookie = \"session=abc\", Accept-Language = \"en\" }",
    );
    p.run().assert_code(0);
    let status = p.status();
    assert_counts(&status, 2, 0, 0);
    let sent = |r: &util::http::Request| {
        ["authorization", "cookie", "accept-language"].map(|h| r.header(h).map(str::to_owned))
    };
    let all = [
        Some("Bearer s3cret".to_owned()),
        Some("session=abc".to_owned()),
        Some("en".to_owned()),
    ];
    let firsts = first.requests();
    assert_eq!(firsts.len(), 3, "{firsts:?}");
    for r in &firsts {
        assert_eq!(sent(r), all, "{r:?}");
    }
    let seconds = second.requests();
    assert_eq!(seconds.len(), 1, "{seconds:?}");
    assert_eq!(sent(&seconds[0]), [None, None, None], "{:?}", seconds[0]);
}

#[test]
fn binary_content_is_skipped_with_a_reason() {
    let server = Server::start();
    let p = download(
        "binary",
        &[("doc", server.url("/pdf")), ("page", server.url("/page"))],
        "",
    );
    p.run().assert_code(0);
    let status = p.status();
    assert_counts(&status, 1, 1, 0);
    let reason = skipped(&status, "doc");
    assert!(
        reason.contains("binary content") && reason.contains("application/pdf"),
        "{reason}"
    );
    assert_eq!(p.sink("out.jsonl").keys(), ["page"]);
}

#[test]
fn file_urls_read_local_files() {
    let dir = util::TestDir::new();
    dir.write("corpus/page.html", PAGE);
    let page = dir.join("corpus/page.html");
    let page_url = format!("file://{}", page.display());
    let missing_url = format!("file://{}", dir.join("corpus/missing.html").display());
    let outside_url = "file:///proc/self/environ".to_owned();
    let p = download(
        "files",
        &[
            ("here", page_url.clone()),
            ("absent", missing_url),
            ("outside", outside_url),
        ],
        &format!(
            "retry = {{ attempts = 3, initial = \"50ms\", max = \"200ms\" }}\nfiles_root = \"{}\"",
            dir.join("corpus").display()
        ),
    );
    p.run().assert_code(1);
    let status = p.status();
    assert_counts(&status, 1, 0, 2);
    let f = failed(&status, "outside");
    assert!(
        f.error.contains("outside `files_root`") && f.attempts == 1,
        "a file outside the root is refused: {f:?}"
    );
    let r = record(&p, "here");
    assert_eq!(html(&r), PAGE);
    assert_eq!(r["status"], 200);
    assert_eq!(r["final_url"], page_url.as_str());
    assert_eq!(r["content_type"], "text/html");
    let f = failed(&status, "absent");
    assert_eq!(f.attempts, 1, "a missing file is permanent: {f:?}");
    assert!(
        f.error.contains("missing.html") && f.error.contains("cannot open"),
        "{f:?}"
    );
}

#[test]
fn file_urls_are_refused_without_files_root() {
    let dir = util::TestDir::new();
    dir.write("corpus/page.html", PAGE);
    let page_url = format!("file://{}", dir.join("corpus/page.html").display());
    let p = download("no-files-root", &[("here", page_url)], "");
    p.run().assert_code(1);
    let f = failed(&p.status(), "here");
    assert!(
        f.error.contains("refused") && f.error.contains("files_root") && f.attempts == 1,
        "{f:?}"
    );
    assert!(p.sink("out.jsonl").keys().is_empty());
}

/// [`pipeline`] with `allow_private_networks` (the test servers are on loopback).
fn download_run(
    name: &str,
    pipeline_keys: &str,
    items: &[(String, String)],
    keys: &str,
) -> Pipeline {
    pipeline(
        name,
        pipeline_keys,
        items,
        &format!("allow_private_networks = true\n{keys}"),
    )
}

#[test]
fn hosts_asking_for_long_waits_hold_back_neither_the_stage_nor_other_hosts() {
    // 8 URLs of a host that answers every request with `429 Retry-After: 300`, among 80 of a
    // host that answers in 100 ms. The hostile items wait out their backoffs holding no slot of
    // the stage, and their hints slow down their own host only.
    let good = Server::start();
    let hostile = Server::start_at("127.0.0.2:0").expect("bind 127.0.0.2:0");
    let mut items: Vec<(String, String)> = (0..80)
        .map(|i| (format!("good-{i:02}"), good.url(&format!("/slow/{i}"))))
        .collect();
    for i in 0..8 {
        items.insert(
            i * 10,
            (
                format!("hostile-{i}"),
                hostile.url(&format!("/always-429/{i}")),
            ),
        );
    }
    let p = download_run(
        "hostile-hosts",
        "max_run_time = \"6s\"\nshutdown_grace = \"1s\"",
        &items,
        "concurrency = 8\nper_host_concurrency = 8",
    );
    let out = p.run();
    out.assert_code(75);
    let status = p.status();
    assert_eq!(
        status.count("done"),
        80,
        "every good page in the first run\n{out}"
    );
    assert_eq!(status.count("pending"), 8, "{:#}", status.raw);
    let hits = hostile.requests().len();
    assert!(
        (8..=16).contains(&hits),
        "each hostile URL tried, then waited: {hits}\n{out}"
    );
    assert!(
        out.stderr.contains("a service asks to slow down") && out.stderr.contains("127.0.0.2"),
        "the slow-down names the hostile host\n{out}"
    );
}

#[test]
fn a_host_that_always_answers_429_fails_the_item_once_its_attempts_are_used() {
    let hostile = Server::start();
    let p = download_run(
        "always-429",
        "",
        &[("pest".to_owned(), hostile.url("/always-429/x"))],
        "retry = { attempts = 3, max_retry_after = \"200ms\" }",
    );
    let out = p.run();
    out.assert_code(1);
    assert!(
        out.elapsed < Duration::from_secs(30),
        "the 300 s hint was capped\n{out}"
    );
    let f = failed(&p.status(), "pest");
    assert_eq!(f.attempts, 3, "{f:?}");
    assert!(f.error.contains("429"), "{f:?}");
    assert_eq!(hostile.hits("/always-429/x"), 3);
    let requests = hostile.requests();
    let waited = requests[1].at - requests[0].at;
    assert!(
        waited >= Duration::from_millis(190),
        "the hint, capped at `max_retry_after`, was waited: {waited:?}"
    );
}

#[test]
fn waiting_for_a_host_is_not_part_of_an_attempt() {
    // One request at a time to the host, 100 ms each, 10 items at once, a 500 ms timeout: the
    // last item waits about a second for its host, and must not time out doing so.
    let server = Server::start();
    let items: Vec<(String, String)> = (0..10)
        .map(|i| (format!("page-{i}"), server.url(&format!("/slow/{i}"))))
        .collect();
    let p = download_run(
        "host-queue",
        "",
        &items,
        "concurrency = 10\nper_host_concurrency = 1\ntimeout = \"500ms\"",
    );
    let out = p.run();
    out.assert_code(0);
    assert_counts(&p.status(), 10, 0, 0);
    let fetch = p.stage_summary("host-queue", "fetch");
    assert_eq!(
        (fetch["timeouts"].as_u64(), fetch["retries"].as_u64()),
        (Some(0), Some(0)),
        "{fetch}\n{out}"
    );
    // One request at a time: each began after the one before had been answered.
    let requests = server.requests();
    assert_eq!(requests.len(), 10);
    for pair in requests.windows(2) {
        assert!(
            pair[1].at - pair[0].at >= Duration::from_millis(90),
            "{requests:?}"
        );
    }
}

#[test]
fn items_waiting_for_a_busy_host_do_not_keep_other_hosts_items_out() {
    // 20 URLs of a host that never answers, then 20 of one that answers at once; the window of
    // items in flight is small (the stages' concurrency: 4 + 1). The items waiting for the silent
    // host's lane step aside, so the other host's items get in and are done in the first seconds.
    let silent = Server::start_at("127.0.0.2:0").expect("bind 127.0.0.2:0");
    let good = Server::start();
    let mut items: Vec<(String, String)> = (0..20)
        .map(|i| (format!("silent-{i:02}"), silent.url("/silent")))
        .collect();
    items.extend((0..20).map(|i| (format!("good-{i:02}"), good.url("/page"))));
    let p = download_run(
        "busy-host",
        "max_run_time = \"4s\"\nshutdown_grace = \"1s\"",
        &items,
        "concurrency = 4\nper_host_concurrency = 2\ntimeout = \"60s\"",
    );
    let out = p.run();
    out.assert_code(75);
    let status = p.status();
    assert_eq!(status.count("done"), 20, "every good page\n{out}");
    assert_eq!(status.count("pending"), 20, "{:#}", status.raw);
    assert_eq!(
        silent.requests().len(),
        2,
        "two at a time to the silent host"
    );
}

#[test]
fn an_error_quoting_a_huge_value_is_kept_at_a_bounded_size() {
    // The error quotes the URL, a megabyte of it: the log, the store and `status` keep 2 KB.
    let huge = format!("not a url {}", "x".repeat(1 << 20));
    let p = download("huge-url", &[("huge", huge)], "");
    let out = p.run();
    out.assert_code(1);
    let f = failed(&p.status(), "huge");
    assert!(
        f.error.starts_with("invalid URL \"not a url xxx"),
        "{}",
        &f.error[..80]
    );
    assert!(f.error.len() < 2200, "{} bytes kept", f.error.len());
    assert!(f.error.ends_with("more bytes)"), "it says it was cut");
    assert!(
        out.stderr.len() < 64 * 1024,
        "the log: {} bytes",
        out.stderr.len()
    );
}

#[test]
fn a_host_answering_429s_and_a_busy_lane_cannot_wedge_the_window() {
    // A window of 3 (2 + 1), one request at a time per host: 22 items of a host that answers
    // `429 Retry-After: 300` (capped at 20 s) between the items of a host that answers in
    // 100 ms. Items step out of the window to wait (backoff, lane) and back in to attempt;
    // whatever the order, the good host's items are all done in the first seconds.
    let good = Server::start();
    let hostile = Server::start_at("127.0.0.2:0").expect("bind 127.0.0.2:0");
    let mut items: Vec<(String, String)> = (0..3)
        .map(|i| (format!("a{i:02}"), good.url(&format!("/slow/{i}"))))
        .collect();
    items.extend((0..22).map(|i| (format!("b{i:02}"), hostile.url(&format!("/always-429/{i}")))));
    items.extend((3..23).map(|i| (format!("a{i:02}"), good.url(&format!("/slow/{i}")))));
    let p = download_run(
        "busy-window",
        "max_run_time = \"8s\"\nshutdown_grace = \"1s\"",
        &items,
        "concurrency = 2\nper_host_concurrency = 1\nretry = { attempts = 2, max_retry_after = \"20s\", jitter = false }",
    );
    let out = p.run();
    out.assert_code(75);
    let done = p.sink("out.jsonl").unique_keys();
    let good_done = done.iter().filter(|k| k.starts_with('a')).count();
    assert_eq!(good_done, 23, "every good page in the first run\n{out}");
}

#[test]
fn a_body_in_an_encoding_not_asked_for_fails_at_once() {
    let server = Server::start_campaign();
    let codings = ["deflate", "br", "x-unknown"];
    let items: Vec<(&str, String)> = codings
        .iter()
        .map(|c| (*c, server.url(&format!("/enc/{c}/1"))))
        .collect();
    let p = download("encodings", &items, "");
    p.run().assert_code(1);
    let status = p.status();
    assert_counts(&status, 0, 0, 3);
    for coding in codings {
        let f = failed(&status, coding);
        assert_eq!(f.attempts, 1, "{f:?}");
        assert!(f.error.contains(&format!("encoding `{coding}`")), "{f:?}");
    }
}
