//! The fault campaign against real local servers (the issue "Fault campaign against real local
//! servers", its HTTP and LLM parts): each run ends by itself, every failed item carries the
//! right error class, nothing done is lost.
//!
//! The digest pipeline of the root `pipeline.toml`, on real stages and real servers of
//! 127.0.0.0/8: `db-fetch` (SQLite) → `http-download` → `extract` → `llm` (OpenAI API) →
//! `persist` (SQLite upsert counting each key's writes, marking failed and skipped rows). Each
//! item draws, from the campaign's seed, a page fault (tests/util/http.rs: hangs, slow drips,
//! resets, 5xx, 429 storms, huge bodies, bad encodings, redirect loops, or none) on one of two
//! page servers (127.0.0.1, 127.0.0.2), and an LLM fault (tests/util/llm.rs, `FaultLlmServer`:
//! hangs, 429 storms, 503s, invalid JSON, answers off the schema, or none), named in its system
//! prompt. On top of that the LLM server has outages in time: a 503 outage and a 429 storm with
//! `Retry-After`, windows of seconds that every call falls into, whatever its item, so that the
//! stage's circuit breaker and retry-after hints are exercised. Timeouts and retries are tight,
//! so a batch takes seconds.
//!
//! The first run is stopped with SIGTERM at a seeded moment, the second resumes it to its end,
//! the third finds nothing new. Asserted per item:
//!
//! - every run ends by itself (the stopped one within `shutdown_grace` + the watchdog's 2 s and
//!   a margin; the others under the harness's kill guard);
//! - every item is done (in the sink, written once, its answer the model's), skipped with a
//!   reason (a binary page), or failed with its reason at the stage its fault is at, with the
//!   class the product gives that fault after its retries (`transient` once the attempts are
//!   used up, `permanent` at once, or after `invalid_output_attempts` invalid answers), the
//!   attempts that class implies, and the fault's words in the error; the class is read from
//!   the `item failed` log event, the error and attempts from `status`. Which LLM error an
//!   item ends on follows from the server's log of its calls: an item healthy at the LLM whose
//!   last attempt fell in an outage ends `transient` with the outage's error (the report counts
//!   these as `healthy_failed_in_outage`), and invalid answers count per process, as the stage
//!   counts them;
//! - nothing done is lost or done again: every item the sink had after the first run is still
//!   there, written once, and neither server saw a request for it after that run; the third run
//!   makes no request at all;
//! - `status` agrees with the sink and with the rows `on_failure` and `on_skip` marked;
//! - no log line and no `status` output holds a raw control character, though the LLM server's
//!   errors and answers carry terminal escapes and carriage returns.
//!
//! Two campaigns run, on two seeds (two fault mixes, two outage plans): `fault-http-llm` and
//! `fault-http-llm-b`.

mod util;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::thread;
use std::time::{Duration, Instant};

use rusqlite::Connection;
use serde_json::Value;
use util::campaign::{scale, scaled, seed, Report};
use util::http::Server;
use util::llm::{default_answer, Answered, FaultCall, FaultLlmServer, LlmFault, Outage};
use util::{Output, Pipeline, Rng, Status};

/// Items of one campaign at scale 1.
const ITEMS: u64 = 250;
/// `shutdown_grace` of the pipeline.
const GRACE: Duration = Duration::from_secs(3);
/// Attempts of `download` and `facts` (their `retry.attempts`).
const HTTP_ATTEMPTS: u64 = 3;
const LLM_ATTEMPTS: u64 = 4;
/// `invalid_output_attempts` of `facts` (its default).
const INVALID_ANSWERS: usize = 2;
/// The key the LLM server expects (any will do; it must be sent).
const API_KEY: &str = "sk-campaign-5d1e";

/// A page fault: what the item's URL asks of a page server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Page {
    Ok,
    Once500,
    Once429,
    Redirected,
    BadUtf8,
    Latin1Bare,
    UnknownCharset,
    Hang,
    Drip,
    Trickle,
    Reset,
    ResetBody,
    Unavailable,
    RateLimited,
    Big,
    BigUndeclared,
    BadGzip,
    Loop,
    TooManyRedirects,
    NotFound,
    Binary,
}

/// How the product must end an item for a fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    /// It goes on to the next stage.
    Passes,
    /// Skipped at the stage, the reason containing the words.
    Skipped(&'static str),
    /// Failed at the stage after all its attempts, class `transient`, the error containing
    /// one of the words.
    Exhausted(&'static [&'static str]),
    /// Failed at the stage at its first attempt, class `permanent`, the error containing the
    /// words.
    Refused(&'static str),
}

impl Page {
    const ALL: [Page; 21] = [
        Page::Ok,
        Page::Once500,
        Page::Once429,
        Page::Redirected,
        Page::BadUtf8,
        Page::Latin1Bare,
        Page::UnknownCharset,
        Page::Hang,
        Page::Drip,
        Page::Trickle,
        Page::Reset,
        Page::ResetBody,
        Page::Unavailable,
        Page::RateLimited,
        Page::Big,
        Page::BigUndeclared,
        Page::BadGzip,
        Page::Loop,
        Page::TooManyRedirects,
        Page::NotFound,
        Page::Binary,
    ];

    fn name(self) -> &'static str {
        match self {
            Page::Ok => "ok",
            Page::Once500 => "once-500",
            Page::Once429 => "once-429",
            Page::Redirected => "redirected",
            Page::BadUtf8 => "bad-utf8",
            Page::Latin1Bare => "latin1-bare",
            Page::UnknownCharset => "unknown-charset",
            Page::Hang => "hang",
            Page::Drip => "drip",
            Page::Trickle => "trickle",
            Page::Reset => "reset",
            Page::ResetBody => "reset-body",
            Page::Unavailable => "always-503",
            Page::RateLimited => "always-429",
            Page::Big => "huge-body",
            Page::BigUndeclared => "huge-body-undeclared",
            Page::BadGzip => "bad-gzip",
            Page::Loop => "redirect-loop",
            Page::TooManyRedirects => "too-many-redirects",
            Page::NotFound => "not-found",
            Page::Binary => "binary",
        }
    }

    /// The item's path on a page server (those without the key are shared by every item).
    fn path(self, key: &str) -> String {
        match self {
            Page::Ok => format!("/article/{key}"),
            Page::Once500 => format!("/once-500/{key}"),
            Page::Once429 => format!("/once-429/{key}"),
            Page::Redirected => format!("/goto?/article/{key}"),
            Page::BadUtf8 => format!("/enc/bad-utf8/{key}"),
            Page::Latin1Bare => format!("/enc/latin1-bare/{key}"),
            Page::UnknownCharset => format!("/enc/unknown-charset/{key}"),
            Page::Hang => "/silent".into(),
            Page::Drip => "/drip".into(),
            Page::Trickle => format!("/trickle/{key}"),
            Page::Reset => format!("/reset/{key}"),
            Page::ResetBody => format!("/reset-body/{key}"),
            Page::Unavailable => format!("/always-503/{key}"),
            Page::RateLimited => format!("/always-429/{key}"),
            Page::Big => "/big".into(),
            Page::BigUndeclared => "/big-undeclared".into(),
            Page::BadGzip => format!("/enc/bad-gzip/{key}"),
            Page::Loop => "/loop/a".into(),
            Page::TooManyRedirects => "/redirect/5".into(),
            Page::NotFound => "/missing".into(),
            Page::Binary => "/pdf".into(),
        }
    }

    /// What `download` must do with it (`timeout = 1s`, `read_timeout = 400ms`,
    /// `max_bytes = 1MB`, `max_redirects = 3`, 3 attempts).
    fn end(self) -> End {
        match self {
            Page::Ok
            | Page::Once500
            | Page::Once429
            | Page::Redirected
            | Page::BadUtf8
            | Page::Latin1Bare
            | Page::UnknownCharset => End::Passes,
            // A silent server is cut by `read_timeout` first; a trickle by the attempt's.
            Page::Hang => End::Exhausted(&["`read_timeout`"]),
            Page::Trickle => End::Exhausted(&["timed out"]),
            Page::Drip => End::Exhausted(&["`read_timeout`"]),
            Page::Reset => End::Exhausted(&["reset"]),
            Page::ResetBody => End::Exhausted(&["reset", "disconnected"]),
            Page::Unavailable => End::Exhausted(&["HTTP 503"]),
            Page::RateLimited => End::Exhausted(&["HTTP 429"]),
            Page::Big => End::Refused("more than `max_bytes`"),
            Page::BigUndeclared => End::Refused("larger than `max_bytes`"),
            Page::BadGzip => End::Refused("does not decode: gzip"),
            Page::Loop => End::Refused("redirect loop"),
            Page::TooManyRedirects => End::Refused("too many redirects"),
            Page::NotFound => End::Refused("HTTP 404"),
            Page::Binary => End::Skipped("binary content"),
        }
    }
}

/// One item of a campaign.
#[derive(Debug, Clone)]
struct Item {
    key: String,
    page: Page,
    /// Which page server: 0 (127.0.0.1) or 1 (127.0.0.2).
    host: usize,
    llm: LlmFault,
}

/// Draws the items: half the pages and 60 % of the LLM calls healthy, the rest spread evenly
/// over the faults.
fn items(n: u64, rng: &mut Rng) -> Vec<Item> {
    (0..n)
        .map(|i| {
            let page = if rng.range(0, 99) < 50 {
                Page::Ok
            } else {
                Page::ALL[rng.range(1, Page::ALL.len() as u64 - 1) as usize]
            };
            let llm = if rng.range(0, 99) < 60 {
                LlmFault::Ok
            } else {
                LlmFault::ALL[rng.range(1, LlmFault::ALL.len() as u64 - 1) as usize]
            };
            Item {
                key: format!("k{i:05}"),
                page,
                host: rng.range(0, 1) as usize,
                llm,
            }
        })
        .collect()
}

/// The digest pipeline on the campaign's servers: `llm_base` is the LLM server's `base_url`.
fn pipeline(items: u64, llm_base: &str) -> Pipeline {
    Pipeline::new(&format!(
        r#"
        [pipeline]
        name = "fault"
        batch_size = {items}
        shutdown_grace = "{grace}s"
        heartbeat = "1s"

        [checkpoint]
        store = "sqlite:state.db"

        [[stage]]
        name = "articles"
        kind = "db-fetch"
        url = "sqlite:articles.db"
        query = "SELECT id, url, llm FROM articles WHERE processed_at IS NULL AND failed_at IS NULL AND skipped_at IS NULL ORDER BY id LIMIT $limit"
        key = "id"

        [[stage]]
        name = "download"
        kind = "http-download"
        allow_private_networks = true
        concurrency = 16
        per_host_concurrency = 8
        timeout = "1s"
        connect_timeout = "500ms"
        read_timeout = "400ms"
        max_bytes = "1MB"
        max_redirects = 3
        retry = {{ attempts = {HTTP_ATTEMPTS}, initial = "20ms", max = "100ms", max_retry_after = "300ms" }}

        [[stage]]
        name = "extract"
        kind = "extract"
        concurrency = 2
        timeout = "3s"

        [[stage]]
        name = "facts"
        kind = "llm"
        provider = "openai"
        model = "campaign-model"
        base_url = "{llm_base}"
        system = "item {{{{key}}}}; behaviour: {{{{llm}}}}"
        concurrency = 8
        timeout = "1s"
        connect_timeout = "500ms"
        retry = {{ attempts = {LLM_ATTEMPTS}, initial = "100ms", max = "400ms", max_retry_after = "500ms" }}
        breaker = {{ failures = 10, window = "1s", cool_down = "300ms" }}

        [[stage]]
        name = "save"
        kind = "persist"
        url = "sqlite:articles.db"
        timeout = "3s"
        statement = """
        INSERT INTO digests (article_id, title, text, facts, writes) VALUES (:key, :title, :text, :facts, 1)
        ON CONFLICT (article_id) DO UPDATE SET writes = digests.writes + 1;
        UPDATE articles SET processed_at = 'now' WHERE id = :key;
        """
        on_failure = "UPDATE articles SET failed_at = 'now', stage = :stage, error = :error WHERE id = :key"
        on_skip = "UPDATE articles SET skipped_at = 'now', stage = :stage, error = :error WHERE id = :key"
        "#,
        grace = GRACE.as_secs(),
    ))
}

/// The articles table, one row per item, and the empty digests table.
fn create_database(path: &Path, items: &[Item], servers: &[Server; 2]) {
    let mut db = Connection::open(path).expect("create the articles database");
    db.execute_batch(
        "PRAGMA journal_mode = WAL;
         CREATE TABLE articles (id TEXT PRIMARY KEY, url TEXT NOT NULL, llm TEXT NOT NULL,
             processed_at TEXT, failed_at TEXT, skipped_at TEXT, stage TEXT, error TEXT);
         CREATE TABLE digests (article_id TEXT PRIMARY KEY, title TEXT, text TEXT, facts TEXT,
             writes INTEGER NOT NULL);",
    )
    .expect("create the tables");
    let tx = db.transaction().expect("a transaction");
    for item in items {
        tx.execute(
            "INSERT INTO articles (id, url, llm) VALUES (?1, ?2, ?3)",
            (
                &item.key,
                servers[item.host].url(&item.page.path(&item.key)),
                item.llm.name(),
            ),
        )
        .expect("insert an article");
    }
    tx.commit().expect("commit the articles");
}

/// A digest row: title, text, facts, writes.
type Digest = (String, String, String, i64);

fn digests(path: &Path) -> BTreeMap<String, Digest> {
    let db = Connection::open(path).expect("open the articles database");
    let mut stmt = db
        .prepare("SELECT article_id, title, text, facts, writes FROM digests")
        .expect("read the digests");
    stmt.query_map([], |r| {
        Ok((
            r.get::<_, String>(0)?,
            (
                r.get::<_, Option<String>>(1)?.unwrap_or_default(),
                r.get::<_, Option<String>>(2)?.unwrap_or_default(),
                r.get::<_, Option<String>>(3)?.unwrap_or_default(),
                r.get(4)?,
            ),
        ))
    })
    .and_then(Iterator::collect)
    .expect("read the digests")
}

/// The rows `on_failure` (`failed_at`) or `on_skip` (`skipped_at`) marked: key → (stage, error).
fn marked(path: &Path, column: &str) -> BTreeMap<String, (String, String)> {
    let db = Connection::open(path).expect("open the articles database");
    let mut stmt = db
        .prepare(&format!(
            "SELECT id, stage, error FROM articles WHERE {column} IS NOT NULL"
        ))
        .expect("read the marks");
    stmt.query_map([], |r| Ok((r.get(0)?, (r.get(1)?, r.get(2)?))))
        .and_then(Iterator::collect)
        .expect("read the marks")
}

/// `status --json`, every failed and skipped item listed.
fn status(p: &Pipeline, items: u64) -> Status {
    let out = p
        .cmd("status")
        .arg("--json")
        .arg("--limit")
        .arg(&items.to_string())
        .output();
    out.assert_code(0);
    Status::parse(&out)
}

/// The `item failed` events of a JSON log: key → (stage, class, attempts).
fn failures_logged(out: &Output, into: &mut BTreeMap<String, (String, String, u64)>) {
    for line in out.stderr_lines().filter(|l| l.starts_with('{')) {
        let Ok(event) = serde_json::from_str::<Value>(line) else {
            panic!("a log line that is not JSON: {line:?}\n{out}");
        };
        if event["message"] != "item failed" {
            continue;
        }
        let text = |field: &str| event[field].as_str().unwrap_or_default().to_owned();
        into.insert(
            text("key"),
            (
                text("stage"),
                text("class"),
                event["attempts"].as_u64().unwrap_or(0),
            ),
        );
    }
}

/// Characters that steer a terminal or forge a line (tab and the line's own end aside).
fn raw_controls(text: &str) -> Vec<String> {
    text.lines()
        .filter(|l| l.chars().any(|c| c != '\t' && c.is_control()))
        .map(|l| format!("{l:?}"))
        .take(3)
        .collect()
}

/// How the LLM stage must end an item whose calls were `calls` (in order, with their places in
/// the server's log; those from `last_process_from` on made by the process it ended in): as
/// the stage classifies the last call's answer, invalid answers counted per process.
fn llm_end(fault: LlmFault, calls: &[(usize, &FaultCall)], last_process_from: usize) -> End {
    let Some((_, last)) = calls.last() else {
        return End::Passes;
    };
    // The stage counts invalid answers per process, from an item's first attempt there.
    let invalid = calls
        .iter()
        .filter(|(i, c)| {
            *i >= last_process_from
                && c.fault != Some(LlmFault::Garbled)
                && c.answered
                    == Answered::Item {
                        status: Some(200),
                        valid: false,
                    }
        })
        .count();
    if invalid >= INVALID_ANSWERS {
        return End::Refused("allowed by `invalid_output_attempts`");
    }
    match last.answered {
        Answered::Outage(_) => End::Exhausted(&["HTTP 503", "HTTP 429"]),
        Answered::Item { valid: true, .. } => End::Passes,
        Answered::Item { status, .. } => match (fault, status) {
            (LlmFault::BadRequest, _) => End::Refused("HTTP 400"),
            (_, None) => End::Exhausted(&["timed out", "deadline"]),
            (_, Some(429)) => End::Exhausted(&["HTTP 429"]),
            (_, Some(500)) => End::Exhausted(&["HTTP 500"]),
            (_, Some(503)) => End::Exhausted(&["HTTP 503"]),
            (LlmFault::Garbled, _) => End::Exhausted(&["not JSON"]),
            (LlmFault::Cut, _) => End::Exhausted(&["cut at `max_tokens`"]),
            (LlmFault::NotJson, _) => End::Exhausted(&["not JSON"]),
            _ => End::Exhausted(&["does not fit the schema"]),
        },
    }
}

/// What one campaign counted.
#[derive(Default)]
struct Figures {
    runs: u64,
    done: u64,
    skipped: u64,
    failed_by_class: BTreeMap<String, u64>,
    page_faults: BTreeMap<&'static str, u64>,
    llm_faults: BTreeMap<&'static str, u64>,
    outage_calls: u64,
    /// Items healthy at the LLM whose attempts all went in outages (the last one in a window).
    failed_in_outage: u64,
    breaker_opened: u64,
    stop_ms: u64,
}

/// One campaign of `scaled(ITEMS)` items, its faults and outages drawn from its seed (with
/// `variant`, so that the two campaigns differ on one `STAGEWISE_CAMPAIGN_SEED`).
fn campaign(name: &str, fixed_seed: u64, variant: u64) {
    let mut report = Report::new(name);
    let seed = seed(name, fixed_seed);
    let mut rng = Rng::new(seed ^ variant);
    let n = scaled(ITEMS);
    let items = items(n, &mut rng);
    // A 503 outage soon after the first call, then a 429 storm asking for 1 s, each 1.5–3 s.
    let ms = |lo, hi, rng: &mut Rng| Duration::from_millis(rng.range(lo, hi));
    let outage_from = ms(500, 2000, &mut rng);
    let outage_to = outage_from + ms(1500, 3000, &mut rng);
    let storm_from = outage_to + ms(1500, 3000, &mut rng);
    let storm_to = storm_from + ms(1500, 3000, &mut rng);
    let outages = vec![
        Outage {
            from: outage_from,
            to: outage_to,
            status: 503,
            retry_after: None,
        },
        Outage {
            from: storm_from,
            to: storm_to,
            status: 429,
            retry_after: Some(1),
        },
    ];
    let servers = [
        Server::start_campaign(),
        Server::start_campaign_at("127.0.0.2:0"),
    ];
    let llm = FaultLlmServer::start(outages.clone());
    let p = pipeline(n, &llm.base_url());
    let db = p.dir.join("articles.db");
    create_database(&db, &items, &servers);
    let by_key: BTreeMap<&str, &Item> = items.iter().map(|i| (i.key.as_str(), i)).collect();
    let mut figures = Figures::default();
    for item in &items {
        *figures.page_faults.entry(item.page.name()).or_default() += 1;
        *figures.llm_faults.entry(item.llm.name()).or_default() += 1;
    }
    let guard = Duration::from_secs(90 * scale());
    let run = |p: &Pipeline| {
        p.cmd("run")
            .arg("--log-format")
            .arg("json")
            .env("OPENAI_API_KEY", API_KEY)
            .timeout(guard)
    };
    let mut logged = BTreeMap::new();
    let mut outputs = Vec::new();

    // Run 1, stopped by SIGTERM at a seeded moment.
    let mut first = run(&p).spawn();
    assert!(
        first.wait_for_stderr("run started", Duration::from_secs(30)),
        "seed {seed}: the first run did not start\n{}",
        first.stderr_so_far()
    );
    thread::sleep(Duration::from_millis(rng.range(1500, 5000)));
    let stopped_at = Instant::now();
    let finished_first = first.has_exited();
    if !finished_first {
        first.signal(libc::SIGTERM);
    }
    let out = first.wait();
    let stop = stopped_at.elapsed();
    figures.runs += 1;
    figures.stop_ms = stop.as_millis() as u64;
    if finished_first {
        assert!(matches!(out.code, Some(0 | 1)), "seed {seed}\n{out}");
    } else {
        assert!(
            matches!(out.code, Some(75 | 0 | 1)),
            "seed {seed}: the stopped run\n{out}"
        );
        assert!(
            stop < GRACE + Duration::from_secs(5),
            "seed {seed}: the run ended {stop:?} after SIGTERM, `shutdown_grace` is {GRACE:?}\n{out}"
        );
    }
    failures_logged(&out, &mut logged);
    eprintln!(
        "run {}: exit {:?} after {:?}",
        outputs.len() + 1,
        out.code,
        out.elapsed
    );
    outputs.push(out);
    let after_first = digests(&db);
    let status_first = status(&p, n);
    assert_eq!(
        status_first.count("done"),
        after_first.len() as u64,
        "seed {seed}: after the stop, `status` and the sink"
    );
    let http_seen: Vec<usize> = servers.iter().map(|s| s.requests().len()).collect();
    let llm_seen = llm.calls().len();

    // Run 2 resumes it to its end.
    let out = run(&p).output();
    figures.runs += 1;
    assert!(
        matches!(out.code, Some(0 | 1)),
        "seed {seed}: the resumed run did not finish\n{out}"
    );
    failures_logged(&out, &mut logged);
    eprintln!(
        "run {}: exit {:?} after {:?}",
        outputs.len() + 1,
        out.code,
        out.elapsed
    );
    outputs.push(out);
    let http_second: Vec<usize> = servers.iter().map(|s| s.requests().len()).collect();
    let llm_second = llm.calls().len();

    // Run 3 finds nothing new, and asks nothing of anyone.
    let out = run(&p).output();
    figures.runs += 1;
    out.assert_code(0);
    out.assert_stderr_contains("nothing new");
    eprintln!(
        "run {}: exit {:?} after {:?}",
        outputs.len() + 1,
        out.code,
        out.elapsed
    );
    outputs.push(out);
    let http_third: Vec<usize> = servers.iter().map(|s| s.requests().len()).collect();
    assert_eq!(
        (http_third.clone(), llm.calls().len()),
        (http_second.clone(), llm_second),
        "seed {seed}: the run that found nothing new made requests"
    );

    // The end: every item in exactly one state, as its faults say.
    let sink = digests(&db);
    let failed_marks = marked(&db, "failed_at");
    let skipped_marks = marked(&db, "skipped_at");
    let status = status(&p, n);
    assert_eq!(
        status.raw["run"]["status"], "finished",
        "seed {seed}: {}",
        status.raw["run"]
    );
    assert_eq!(status.total(), n, "seed {seed}: {:?}", status.counts);
    assert_eq!(
        (status.count("pending"), status.count("in_flight")),
        (0, 0),
        "seed {seed}: {:?}",
        status.counts
    );
    let failed: BTreeMap<&str, &util::Failed> =
        status.failed.iter().map(|f| (f.key.as_str(), f)).collect();
    assert_eq!(
        failed.len() as u64,
        status.count("failed"),
        "seed {seed}: every failed item listed"
    );
    let skipped: BTreeMap<String, (String, String)> = status.raw["skipped"]
        .as_array()
        .expect("a `skipped` list")
        .iter()
        .map(|s| {
            let text = |f: &str| s[f].as_str().unwrap_or_default().to_owned();
            (text("key"), (text("stage"), text("reason")))
        })
        .collect();
    assert_eq!(skipped.len() as u64, status.count("skipped"), "seed {seed}");

    let calls = llm.calls();
    let mut violations = Vec::new();
    for item in &items {
        let key = item.key.as_str();
        let mut wrong = |what: String| {
            violations.push(format!(
                "{key} (page {}, llm {}): {what}",
                item.page.name(),
                item.llm.name()
            ))
        };
        let of_item: Vec<(usize, &FaultCall)> = calls
            .iter()
            .enumerate()
            .filter(|(_, c)| c.key == key)
            .collect();
        let last_process_from = if of_item.iter().any(|(i, _)| *i >= llm_seen) {
            llm_seen
        } else {
            0
        };
        let (stage, end) = match item.page.end() {
            End::Passes => ("facts", llm_end(item.llm, &of_item, last_process_from)),
            other => ("download", other),
        };
        let in_sink = sink.get(key);
        match (end, in_sink, failed.get(key), skipped.get(key)) {
            (End::Passes, Some((title, text, facts, writes)), None, None) => {
                if *writes != 1 {
                    wrong(format!("written {writes} times"));
                }
                if !title.contains(key) || !text.contains(&format!("item {key}")) {
                    wrong(format!("the sink's title {title:?} or text {text:?}"));
                }
                let facts: Value = serde_json::from_str(facts).unwrap_or(Value::Null);
                if facts != default_answer() {
                    wrong(format!("the sink's facts {facts}"));
                }
                figures.done += 1;
            }
            (End::Skipped(words), None, None, Some((at, reason))) => {
                if at != stage || !reason.contains(words) {
                    wrong(format!("skipped at {at}: {reason}"));
                }
                if skipped_marks.get(key).map(|(s, _)| s.as_str()) != Some(stage) {
                    wrong(format!("not marked skipped: {:?}", skipped_marks.get(key)));
                }
                figures.skipped += 1;
            }
            (End::Exhausted(_) | End::Refused(_), None, Some(f), None) => {
                let (class, attempts, words): (&str, Option<u64>, Vec<&str>) = match end {
                    End::Exhausted(words) => (
                        "transient",
                        Some(if stage == "download" {
                            HTTP_ATTEMPTS
                        } else {
                            LLM_ATTEMPTS
                        }),
                        words.to_vec(),
                    ),
                    End::Refused(words) => {
                        ("permanent", (stage == "download").then_some(1), vec![words])
                    }
                    _ => unreachable!("matched above"),
                };
                let logged_as = logged.get(key);
                if f.stage != stage
                    || attempts.is_some_and(|a| f.attempts != a)
                    || !words.iter().any(|w| f.error.contains(w))
                    || logged_as.map(|(s, c, a)| (s.as_str(), c.as_str(), *a))
                        != Some((stage, class, f.attempts))
                {
                    wrong(format!(
                        "expected {class} at {stage} after {attempts:?} attempts saying one of \
                         {words:?}; failed at {} after {} attempts ({:?} logged): {}",
                        f.stage, f.attempts, logged_as, f.error
                    ));
                }
                if failed_marks.get(key).map(|(s, _)| s.as_str()) != Some(stage) {
                    wrong(format!("not marked failed: {:?}", failed_marks.get(key)));
                }
                *figures.failed_by_class.entry(class.to_owned()).or_default() += 1;
                let healthy = matches!(
                    item.llm,
                    LlmFault::Ok
                        | LlmFault::RateLimitedOnce
                        | LlmFault::ErrorOnce
                        | LlmFault::InvalidOnce
                );
                if stage == "facts"
                    && healthy
                    && of_item
                        .last()
                        .is_some_and(|(_, c)| matches!(c.answered, Answered::Outage(_)))
                {
                    figures.failed_in_outage += 1;
                }
            }
            (end, sink, failed, skipped) => wrong(format!(
                "expected {end:?} at {stage}; in the sink: {}, failed: {failed:?}, skipped: \
                 {skipped:?}; its LLM calls: {:?}",
                sink.is_some(),
                of_item.iter().map(|(_, c)| c.answered).collect::<Vec<_>>()
            )),
        }
    }

    // Nothing done is lost, nor done again.
    for key in after_first.keys() {
        if !sink.contains_key(key) {
            violations.push(format!(
                "{key}: in the sink after the first run, lost since"
            ));
        }
        let again: usize = servers
            .iter()
            .zip(&http_seen)
            .map(|(s, &seen)| {
                s.requests()[seen..]
                    .iter()
                    .filter(|r| r.path.ends_with(&format!("/{key}")))
                    .count()
            })
            .sum();
        let asked_again = calls[llm_seen..].iter().filter(|c| &c.key == key).count();
        if again + asked_again > 0 {
            violations.push(format!(
                "{key}: done in the first run, yet {again} page request(s) and {asked_again} \
                 LLM call(s) after it (page {})",
                by_key[key.as_str()].page.name()
            ));
        }
    }
    // `status` agrees with the sink and the marks.
    if status.count("done") != sink.len() as u64 {
        violations.push(format!(
            "`status` says {} done, the sink has {}",
            status.count("done"),
            sink.len()
        ));
    }
    let failed_keys: BTreeSet<&str> = failed.keys().copied().collect();
    let marked_keys: BTreeSet<&str> = failed_marks.keys().map(String::as_str).collect();
    if failed_keys != marked_keys {
        violations.push(format!(
            "`status` failed and the rows marked failed differ: {:?}",
            failed_keys
                .symmetric_difference(&marked_keys)
                .collect::<Vec<_>>()
        ));
    }
    for (key, f) in &failed {
        if failed_marks
            .get(*key)
            .is_some_and(|(_, error)| error != &f.error)
        {
            violations.push(format!(
                "{key}: marked with another error than `status` says"
            ));
        }
    }
    // No raw control character in any log, nor in what `status` prints.
    let text_status = p.cmd("status").arg("--limit").arg(&n.to_string()).output();
    text_status.assert_code(0);
    for (what, text) in outputs
        .iter()
        .enumerate()
        .map(|(i, o)| (format!("run {} stderr", i + 1), o.stderr.as_str()))
        .chain([("status".to_owned(), text_status.stdout.as_str())])
    {
        let bad = raw_controls(text);
        if !bad.is_empty() {
            violations.push(format!("{what} holds raw control characters: {bad:?}"));
        }
    }

    figures.outage_calls = calls
        .iter()
        .filter(|c| matches!(c.answered, Answered::Outage(_)))
        .count() as u64;
    figures.breaker_opened = outputs
        .iter()
        .flat_map(|o| o.stderr_lines())
        .filter(|l| l.contains("circuit breaker opened"))
        .count() as u64;
    assert!(
        violations.is_empty(),
        "seed {seed}: {} item(s) or invariant(s) wrong of {n}:\n- {}",
        violations.len(),
        violations.join("\n- ")
    );
    assert!(
        figures.outage_calls > 0,
        "seed {seed}: no call fell into an outage: {outages:?}"
    );
    report
        .set("runs", figures.runs)
        .set("items", n)
        .set("seed", seed)
        .set("lost", 0)
        .set("duplicates", 0)
        .set("done", figures.done)
        .set("skipped", figures.skipped)
        .set(
            "failed_by_class",
            serde_json::json!(figures.failed_by_class),
        )
        .set("page_faults", serde_json::json!(figures.page_faults))
        .set("llm_faults", serde_json::json!(figures.llm_faults))
        .set(
            "faults",
            items
                .iter()
                .filter(|i| i.page != Page::Ok || i.llm != LlmFault::Ok)
                .count() as u64,
        )
        .set("llm_calls", calls.len() as u64)
        .set("llm_outage_calls", figures.outage_calls)
        .set("healthy_failed_in_outage", figures.failed_in_outage)
        .set("breaker_opened", figures.breaker_opened)
        .set(
            "page_requests",
            http_third.iter().map(|&n| n as u64).sum::<u64>(),
        )
        .set("max_exit_ms", figures.stop_ms);
    report.finish();
}

#[test]
fn http_and_llm_faults_end_each_item_with_its_class_and_lose_nothing() {
    campaign("fault-http-llm", 0xFA17_0001, 0);
}

#[test]
fn http_and_llm_faults_on_another_seed() {
    campaign("fault-http-llm-b", 0xFA17_0002, 0xB);
}
