//! The benchmark of the `llm` stage (figures and command in `BENCHMARKS.md`): 1,000 articles
//! sent to the local OpenAI-compatible test server (`tests/util/llm.rs`), which takes 200 ms to
//! answer and admits at most 20 requests at once (429 with `Retry-After: 1` beyond), against the
//! ideal 20 / 0.2 s = 100 items/s, counting the 429s the stage received.
//!
//! - Each run starts a fresh server in this process on 127.0.0.1, so its counters (requests,
//!   429s, connections accepted, most requests admitted at once) are the run's alone.
//! - stagewise: like `benches/http.rs`, the release `stagewise run` process on a pipeline in a
//!   fresh directory: `jsonl` source of 1,000 articles `{"id", "title", "text"}` (text of
//!   1–2 KB) → `llm` (`provider = "openai"`, `cache = false` so that every item calls, the key
//!   in `OPENAI_API_KEY` on the child, every other key at the kind's default) → `blackhole`.
//!   Wall time is spawn to exit; the processing window runs from the `run started` to the
//!   `summary` log event (`--log-format json`).
//! - Variants, run interleaved (a, b, c, then again): (a) `concurrency = 20`, the server's
//!   limit; (b) `concurrency = 32` without a rate limit, over the limit; (c) `concurrency = 32`
//!   with `rate_limit = "95/s"`: 95/s × 0.2 s = 19 requests in flight on average, one below the
//!   limit, so that the server's latency overshoot and the spread of arrivals stay under it
//!   (100/s would be exactly 20, and any bunching a 429; `BENCHMARKS.md` has the rates tried).
//!
//! Every measurement is run 3 times and the medians are reported, with the peak RSS
//! (`ru_maxrss` from `wait4`) and CPU time of the stagewise process.
//!
//! The outage scenario: requests sent during a 10 s outage with and without the circuit
//! breaker, in one invocation. Each run starts a fresh server with `down_for` = 10 s (every
//! call arriving within 10 s of the server's start is answered 503 at once; then it answers as
//! for a, after 200 ms) and sends it 100 articles through `llm` at `concurrency = 4` with
//! `retry = { attempts = 30, initial = "200ms", max = "2s" }`, enough attempts for an item to
//! outlast the outage without a breaker. Variants, run interleaved (o, p, then again): (o) no
//! breaker; (p) `breaker = { failures = 5, window = "10s", cool_down = "2s" }`. Measured per
//! run: requests that arrived during the outage (those answered 503) and after it, items done
//! and failed, wall time, and from the outage's end to the first request answered 200 and to
//! the process's exit; reported as medians in a table of their own. The bench fails if an item
//! failed, if a run sent no request during the outage, or if p's median of requests during the
//! outage is not below o's.
//!
//! `cargo bench --bench llm` runs a, b and c (the outage pair would double its time);
//! `cargo bench --bench llm -- outage` runs o and p. `--runs N` changes the number of runs,
//! `--rate N` the rate limit of variant c (per second), `a`, `b`, `c`, `o`, `p` choose variants
//! (`outage` is `o p`), and `--keep` keeps each run's directory (pipeline, log, summary,
//! checkpoint) for inspection. Without cargo's `--bench` flag (`cargo test --benches` or
//! `--all-targets`) it only smoke-tests itself, once, on every variant by default: a, b and c
//! on 50 items with a 20 ms server, o and p on 20 items with a 2 s outage and a 500 ms
//! cool-down, with the same checks.

mod common;
// The test server, shared with `tests/llm.rs`; this bench uses only part of it.
#[allow(dead_code)]
#[path = "../tests/util/llm.rs"]
mod llm_server;

use common::cli::{self, positive};
use common::process::{measure, Stdout};
use common::report::{load_average, print_load_average, progress, thousands, Table};
use common::stagewise::{self, SINK};
use common::stats::{self, median, median_f64};
use llm_server::{LlmConfig, LlmServer, Scenario};
use std::collections::HashMap;
use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

/// Requests the server handles at once; beyond this it answers 429.
const MAX_IN_FLIGHT: usize = 20;
/// The stage's `concurrency` in variants b and c: more than the server admits.
const OVER_LIMIT: usize = 32;
/// Share of the ideal rate that variant c's `rate_limit` allows by default (see the top).
const RATE_SHARE: f64 = 0.95;
/// Runs of each measurement; the median is reported.
const DEFAULT_RUNS: usize = 3;
/// The key the child sends; the server only checks that there is one.
const KEY: &str = "sk-bench";
/// The stage's `concurrency` in the outage variants (as in `tests/breaker.rs`).
const OUTAGE_CONCURRENCY: usize = 4;
/// The stage's retry policy in the outage variants: enough attempts for an item to outlast the
/// outage without a breaker (full jitter: a wait is uniform up to 0.2, 0.4, 0.8, 1.6, then 2 s,
/// so 10 s take about 13 attempts on average).
const OUTAGE_RETRY: &str = r#"retry = { attempts = 30, initial = "200ms", max = "2s" }"#;
/// Variant p's `breaker.failures` and `breaker.window`.
const BREAKER_FAILURES: u32 = 5;
const BREAKER_WINDOW: &str = "10s";

/// What one invocation measures.
struct Plan {
    runs: usize,
    items: u64,
    latency: Duration,
    /// Variant c's rate limit, per second.
    rate: u32,
    variants: Vec<Variant>,
    /// Keep each run's directory (pipeline, log, summary) instead of removing it.
    keep: bool,
    full: bool,
    outage: Outage,
}

/// The outage variants' setup.
struct Outage {
    items: u64,
    /// The server's `down_for`: every call arriving this long after its start is answered 503.
    down: Duration,
    /// Variant p's `breaker.cool_down`.
    cool_down: Duration,
}

impl Plan {
    /// `MAX_IN_FLIGHT / latency`: the most items per second the server can answer.
    fn ideal(&self) -> f64 {
        MAX_IN_FLIGHT as f64 / self.latency.as_secs_f64()
    }
}

/// The stage's policy keys in one measurement.
#[derive(Clone, Copy, PartialEq)]
enum Variant {
    /// `concurrency` = the server's limit.
    A,
    /// `concurrency` over the limit, no rate limit.
    B,
    /// `concurrency` over the limit, with the rate limit.
    C,
    /// The outage, without a breaker.
    O,
    /// The outage, with the breaker.
    P,
}

impl Variant {
    fn concurrency(self) -> usize {
        match self {
            Variant::A => MAX_IN_FLIGHT,
            Variant::B | Variant::C => OVER_LIMIT,
            Variant::O | Variant::P => OUTAGE_CONCURRENCY,
        }
    }

    /// Whether it is one of the outage variants (a table of its own).
    fn is_outage(self) -> bool {
        matches!(self, Variant::O | Variant::P)
    }

    /// Variant p's `breaker` key.
    fn breaker(self, plan: &Plan) -> Option<String> {
        (self == Variant::P).then(|| {
            format!(
                "breaker = {{ failures = {BREAKER_FAILURES}, window = \"{BREAKER_WINDOW}\", cool_down = \"{}ms\" }}",
                plan.outage.cool_down.as_millis()
            )
        })
    }

    fn rate_limit(self, plan: &Plan) -> Option<u32> {
        (self == Variant::C).then_some(plan.rate)
    }

    /// The variant's letter, as the command line names it.
    fn letter(self) -> &'static str {
        match self {
            Variant::A => "a",
            Variant::B => "b",
            Variant::C => "c",
            Variant::O => "o",
            Variant::P => "p",
        }
    }

    fn name(self, plan: &Plan) -> String {
        let letter = self.letter();
        match self {
            Variant::O => return format!("{letter}: outage, no breaker"),
            Variant::P => {
                return format!(
                    "{letter}: outage, breaker {BREAKER_FAILURES}/{BREAKER_WINDOW}, cool_down {:?}",
                    plan.outage.cool_down
                )
            }
            _ => {}
        }
        match self.rate_limit(plan) {
            Some(rate) => format!(
                "{letter}: concurrency {}, rate_limit {rate}/s",
                self.concurrency()
            ),
            None => format!("{letter}: concurrency {}", self.concurrency()),
        }
    }
}

fn main() -> ExitCode {
    // `cargo bench` appends `--bench`; without it this is a smoke test (see the top of the file).
    let args = cli::args();
    let full = args.bench;
    let latency = Duration::from_millis(if full { 200 } else { 20 });
    let mut plan = Plan {
        runs: if full { DEFAULT_RUNS } else { 1 },
        items: if full { 1_000 } else { 50 },
        latency,
        rate: (RATE_SHARE * MAX_IN_FLIGHT as f64 / latency.as_secs_f64()) as u32,
        variants: Vec::new(),
        keep: false,
        full,
        outage: Outage {
            items: if full { 100 } else { 20 },
            down: Duration::from_secs(if full { 10 } else { 2 }),
            cool_down: Duration::from_millis(if full { 2_000 } else { 500 }),
        },
    };
    // A variant named twice runs once.
    fn add(variants: &mut Vec<Variant>, v: Variant) {
        if !variants.contains(&v) {
            variants.push(v);
        }
    }
    let read = args.read(plan.runs, |arg, rest| {
        match arg {
            "--rate" => match positive(rest.next()) {
                Some(n) => plan.rate = n,
                None => return false,
            },
            "--keep" => plan.keep = true,
            "a" => add(&mut plan.variants, Variant::A),
            "b" => add(&mut plan.variants, Variant::B),
            "c" => add(&mut plan.variants, Variant::C),
            "o" => add(&mut plan.variants, Variant::O),
            "p" => add(&mut plan.variants, Variant::P),
            "outage" => {
                add(&mut plan.variants, Variant::O);
                add(&mut plan.variants, Variant::P);
            }
            _ => return false,
        }
        true
    });
    let Ok(runs) = read else { return usage() };
    plan.runs = runs;
    if plan.variants.is_empty() {
        // The outage pair takes over 10 s a run: a full run asks for it by name.
        plan.variants = if plan.full {
            vec![Variant::A, Variant::B, Variant::C]
        } else {
            vec![Variant::A, Variant::B, Variant::C, Variant::O, Variant::P]
        };
    }
    let throughput = plan.variants.iter().any(|v| !v.is_outage());
    let outage = plan.variants.iter().any(|v| v.is_outage());

    let load_before = load_average();
    if throughput {
        progress(&format!(
            "{} items; server: {} ms per answer, {MAX_IN_FLIGHT} requests at once, 429 beyond",
            plan.items,
            plan.latency.as_millis()
        ));
    }
    if outage {
        progress(&format!(
            "outage: {} items at concurrency {OUTAGE_CONCURRENCY}; server: 503 to every call for {} s from its start, then {} ms per answer",
            plan.outage.items,
            plan.outage.down.as_secs_f64(),
            plan.latency.as_millis()
        ));
    }
    let mut table = Table::new(header(), FOOTNOTE);
    let mut outage_table = Table::new(outage_header(), OUTAGE_FOOTNOTE);
    let result = bench(&plan, &mut table, &mut outage_table);
    if throughput {
        table.print();
    }
    if outage {
        if throughput {
            println!();
        }
        outage_table.print();
    }
    print_load_average(&load_before);
    if !plan.full {
        println!(
            "\nsmoke run (no `--bench` flag): {} items, {} ms latency, once; outage: {} items, {} s down, cool_down {} ms",
            plan.items,
            plan.latency.as_millis(),
            plan.outage.items,
            plan.outage.down.as_secs_f64(),
            plan.outage.cool_down.as_millis()
        );
    }
    cli::exit(result)
}

/// Say how to call this bench.
fn usage() -> ExitCode {
    cli::usage(
        "cargo bench --bench llm [-- [--runs N] [--rate N] [--keep] [a] [b] [c] [o] [p] [outage]]",
    )
}

// ---------------------------------------------------------------------------------------------
// The measurement

fn bench(plan: &Plan, table: &mut Table, outage_table: &mut Table) -> Result<(), String> {
    let work = stagewise::work_dir("llm")?;
    let articles = work.join("articles.jsonl");
    let outage_articles = work.join("outage.jsonl");
    for (path, count, used) in [
        (
            &articles,
            plan.items,
            plan.variants.iter().any(|v| !v.is_outage()),
        ),
        (
            &outage_articles,
            plan.outage.items,
            plan.variants.iter().any(|v| v.is_outage()),
        ),
    ] {
        if !used {
            continue;
        }
        let lines: String = (0..count).map(|i| format!("{}\n", article(i))).collect();
        stagewise::write(path, &lines)?;
        progress(&format!(
            "{count} articles, {} bytes of JSON Lines",
            thousands(lines.len() as f64)
        ));
    }

    let mut runs: Vec<Vec<Run>> = plan.variants.iter().map(|_| Vec::new()).collect();
    let mut outages: Vec<Vec<OutageRun>> = plan.variants.iter().map(|_| Vec::new()).collect();
    for i in 0..plan.runs {
        for (v, variant) in plan.variants.iter().enumerate() {
            progress(&format!(
                "run {}/{}: {}",
                i + 1,
                plan.runs,
                variant.name(plan)
            ));
            if variant.is_outage() {
                let run = run_outage(plan, *variant, &work, &outage_articles, i)?;
                progress(&format!(
                    "  {:.3} s, {} requests during the outage, {} after, {} done, {} failed; exit {} after the outage's end",
                    run.wall.as_secs_f64(),
                    run.during,
                    run.after,
                    run.done,
                    run.failed,
                    seconds(run.finished_after)
                ));
                outages[v].push(run);
                continue;
            }
            let run = run_stagewise(plan, *variant, &work, &articles, i)?;
            progress(&format!(
                "  {:.3} s, {} 429s, {} calls, {} failed",
                run.base.wall.as_secs_f64(),
                run.count_429,
                run.calls,
                run.failed
            ));
            runs[v].push(run);
        }
    }
    // Kept after a failure: the logs of the failed run are in it.
    if plan.keep {
        progress(&format!("kept the runs' directories in {}", work.display()));
    } else {
        let _ = std::fs::remove_dir_all(&work);
    }

    let outage_medians: Vec<(Variant, OutageMedian)> = plan
        .variants
        .iter()
        .copied()
        .zip(outages)
        .filter(|(v, _)| v.is_outage())
        .map(|(v, runs)| (v, OutageMedian::of(runs)))
        .collect();
    report_outage(plan, &outage_medians, outage_table);

    let ideal = plan.ideal();
    let medians: Vec<(Variant, Median)> = plan
        .variants
        .iter()
        .copied()
        .zip(runs)
        .filter(|(v, _)| !v.is_outage())
        .map(|(v, runs)| (v, Median::of(runs)))
        .collect();
    if medians.is_empty() {
        return check_outage(&outage_medians);
    }
    for (variant, m) in &medians {
        table.line(row(&variant.name(plan), m, ideal));
    }
    let rounds = plan.items.div_ceil(MAX_IN_FLIGHT as u64);
    table.line(format!(
        "ideal {MAX_IN_FLIGHT} / {} s = {} items/s ({} items are {rounds} rounds of {MAX_IN_FLIGHT}: {:.1} s at the least)",
        plan.latency.as_secs_f64(),
        thousands(ideal),
        thousands(plan.items as f64),
        rounds as f64 * plan.latency.as_secs_f64()
    ));
    for (variant, m) in &medians {
        table.line(format!("{}:", variant.name(plan)));
        table.line(format!(
            "  per run: 429s {}; items that got a 429 {}; answered 200 {}; failed items {}; the most 429s one item got: {}",
            m.per_run(|r| r.count_429 as u64),
            m.per_run(|r| r.items_429),
            m.per_run(|r| r.answered_ok as u64),
            m.per_run(|r| r.failed),
            m.max_429s_per_item
        ));
        table.line(format!(
            "  requests arriving at the server, first to last (per run): {} requests/s",
            m.runs
                .iter()
                .map(|r| r
                    .arrival_rate
                    .map_or_else(|| "-".to_owned(), |a| format!("{a:.1}")))
                .collect::<Vec<_>>()
                .join(" / ")
        ));
        if let Some(l) = m.base.stage_latency("facts", 1) {
            table.line(format!(
                "  `facts` attempt latency (median run's summary): {l}"
            ));
        }
        if let (Some(first), Some(tail)) = (m.first_call, m.tail) {
            table.line(format!(
                "  `run started` to the first call: {:.3} s; the last call's arrival to `summary`: {:.3} s",
                first.as_secs_f64(),
                tail.as_secs_f64()
            ));
        }
    }
    check_outage(&outage_medians)
}

/// A short news article: a title and 1–2 KB of text that varies with `i`.
fn article(i: u64) -> Value {
    const SENTENCES: [&str; 12] = [
        "The city council approved a budget of {n}.2 million euros on 3 March 2026 by 7 votes to 2.",
        "Most of the money goes to the renovation of the northern bridge, closed to lorries since last winter.",
        "The mayor said the works would start in May and last about {n} months, weather permitting.",
        "Opposition members asked for an independent audit of the first phase before any further payment.",
        "Residents of the riverside district have complained for years about the noise of the ring road.",
        "A survey of {n}00 households found that two in three would use a new tram line if it ran every ten minutes.",
        "The regional transport authority has promised to publish its own figures before the summer recess.",
        "Local shops fear that months of roadworks will keep customers away during the busiest season.",
        "The council's finance officer warned that interest rates could add 300,000 euros to the bill.",
        "A public meeting is planned for 14 April in the town hall, and written comments are open until then.",
        "The last comparable project, the eastern bypass, finished eight months late and 12 per cent over budget.",
        "Several councillors said the vote was a compromise that nobody liked but everybody could accept.",
    ];
    let count = 9 + (i % 6) as usize;
    let text: Vec<String> = (0..count)
        .map(|k| {
            SENTENCES[(i as usize + k * 5) % SENTENCES.len()]
                .replace("{n}", &(i % 97 + 2).to_string())
        })
        .collect();
    json!({
        "id": format!("a{i}"),
        "title": format!("Council vote {i}: budget approved after a long debate"),
        "text": text.join(" "),
    })
}

/// One run of one variant.
struct Run {
    /// Its items are those done (answered and passed on), from the summary.
    base: stats::Run,
    /// From `run started` to the first request's arrival at the server.
    first_call: Option<Duration>,
    /// From the last request's arrival at the server to `summary`.
    tail: Option<Duration>,
    /// The server's counters.
    count_429: usize,
    calls: usize,
    answered_ok: usize,
    connections: u64,
    max_in_flight: usize,
    /// The most 429s any one item (request body) received.
    max_429s_per_item: usize,
    /// Items that received at least one 429.
    items_429: u64,
    /// Requests per second from the first request's arrival to the last one's.
    arrival_rate: Option<f64>,
    /// Items failed, from the summary.
    failed: u64,
}

/// `stagewise run` on the pipeline of `variant`, against a fresh server, in a fresh directory.
/// Fails unless every item ended done or failed (exit 0 or 1).
fn run_stagewise(
    plan: &Plan,
    variant: Variant,
    work: &Path,
    articles: &Path,
    i: usize,
) -> Result<Run, String> {
    let server = LlmServer::start(LlmConfig {
        latency: plan.latency,
        max_in_flight: Some(MAX_IN_FLIGHT),
        ..LlmConfig::default()
    });
    // Named by variant: b and c share a concurrency, and `--keep` keeps each one's folder.
    let name = format!(
        "stagewise-{}-{}-{i}",
        variant.letter(),
        variant.concurrency()
    );
    let dir = work.join(&name);
    let mut cmd = stagewise::prepare(
        &dir,
        &pipeline(&server.base_url(Scenario::Ok), variant, plan),
    )?;
    std::fs::copy(articles, dir.join("articles.jsonl"))
        .map_err(|e| format!("cannot copy the articles: {e}"))?;
    cmd.env("OPENAI_API_KEY", KEY);
    let log = dir.join(stagewise::LOG);
    let m = measure(cmd, Some(&log), Stdout::Discard)
        .map_err(|e| format!("{name}: cannot run stagewise: {e}"))?;

    let summary = stagewise::summary(&dir);
    let count = |field: &str| summary.as_ref().and_then(|s| s[field].as_u64());
    let (done, failed) = (count("done"), count("failed"));
    let ended = done.zip(failed).map(|(d, f)| d + f);
    if !matches!(m.status.code(), Some(0 | 1)) || ended != Some(plan.items) {
        return Err(format!(
            "{name}: stagewise exited with {}, {done:?} done and {failed:?} failed of {} items; see {}",
            m.status,
            plan.items,
            log.display()
        ));
    }
    if !plan.keep {
        let _ = std::fs::remove_dir_all(&dir);
    }

    let requests = server.requests();
    let started = m.started.map(|s| m.began + s);
    let summarized = m.summarized.map(|s| m.began + s);
    let first = requests.iter().map(|r| r.at).min();
    let last = requests.iter().map(|r| r.at).max();
    let mut per_item: HashMap<String, usize> = HashMap::new();
    for r in requests.iter().filter(|r| r.status == Some(429)) {
        let body = r.body.as_ref().map(|b| b["messages"].to_string());
        *per_item.entry(body.unwrap_or_default()).or_default() += 1;
    }
    let arrival_rate = first
        .zip(last)
        .map(|(f, l)| (l - f).as_secs_f64())
        .filter(|&s| s > 0.0)
        .map(|s| (requests.len() - 1) as f64 / s);
    Ok(Run {
        base: stats::Run::new(&m, done.unwrap_or(0), summary),
        first_call: started
            .zip(first)
            .map(|(s, f)| f.saturating_duration_since(s)),
        tail: last
            .zip(summarized)
            .map(|(l, s)| s.saturating_duration_since(l)),
        count_429: server.count_429(),
        calls: server.calls(),
        answered_ok: server.answered_ok(),
        connections: server.connections(),
        max_in_flight: server.max_in_flight_seen(),
        max_429s_per_item: per_item.values().copied().max().unwrap_or(0),
        items_429: per_item.len() as u64,
        arrival_rate,
        failed: failed.unwrap_or(0),
    })
}

/// One run of an outage variant.
struct OutageRun {
    /// Spawn to exit.
    wall: Duration,
    /// From the summary.
    done: u64,
    failed: u64,
    /// Requests the server received (`GET …/models` not counted).
    calls: usize,
    /// Requests that arrived while the server was down: those it answered 503 (it answers 503
    /// to a call that arrives within `down_for` of its start, and to nothing else here).
    during: usize,
    /// The others: requests that arrived after the outage.
    after: usize,
    /// Items (request bodies) that got at least one 503, and the most 503s one of them got.
    items_503: usize,
    max_503s_per_item: usize,
    /// From the first request's arrival to the outage's end: how much of it the run saw.
    seen: Option<Duration>,
    /// From the outage's end to the first request answered 200.
    first_ok_after: Option<Duration>,
    /// From the outage's end to the process's exit (`None`: it exited during the outage).
    finished_after: Option<Duration>,
    /// `circuit breaker opened` and `circuit breaker closed` events in the log.
    opened: usize,
    closed: usize,
    /// Stagewise's user + system CPU time.
    cpu: Duration,
}

/// `stagewise run` on the pipeline of outage variant `variant`, against a fresh server that is
/// down for the first `plan.outage.down`, in a fresh directory. Fails unless every item ended
/// done or failed (exit 0 or 1).
fn run_outage(
    plan: &Plan,
    variant: Variant,
    work: &Path,
    articles: &Path,
    i: usize,
) -> Result<OutageRun, String> {
    let server = LlmServer::start(LlmConfig {
        latency: plan.latency,
        max_in_flight: Some(MAX_IN_FLIGHT),
        down_for: plan.outage.down,
        ..LlmConfig::default()
    });
    // The server starts its outage clock inside `start`: this is at most microseconds later.
    let outage_end = Instant::now() + plan.outage.down;
    let name = format!("stagewise-{}-{i}", variant.letter());
    let dir = work.join(&name);
    let mut cmd = stagewise::prepare(
        &dir,
        &pipeline(&server.base_url(Scenario::Ok), variant, plan),
    )?;
    std::fs::copy(articles, dir.join("articles.jsonl"))
        .map_err(|e| format!("cannot copy the articles: {e}"))?;
    cmd.env("OPENAI_API_KEY", KEY);
    let log = dir.join(stagewise::LOG);
    let m = measure(cmd, Some(&log), Stdout::Discard)
        .map_err(|e| format!("{name}: cannot run stagewise: {e}"))?;
    let exited = m.began + m.wall;

    let summary = stagewise::summary(&dir);
    let count = |field: &str| summary.as_ref().and_then(|s| s[field].as_u64());
    let (done, failed) = (count("done"), count("failed"));
    let ended = done.zip(failed).map(|(d, f)| d + f);
    if !matches!(m.status.code(), Some(0 | 1)) || ended != Some(plan.outage.items) {
        return Err(format!(
            "{name}: stagewise exited with {}, {done:?} done and {failed:?} failed of {} items; see {}",
            m.status,
            plan.outage.items,
            log.display()
        ));
    }
    let log_text = std::fs::read_to_string(&log).unwrap_or_default();
    if !plan.keep {
        let _ = std::fs::remove_dir_all(&dir);
    }

    let requests = server.requests();
    let mut per_item: HashMap<String, usize> = HashMap::new();
    for r in requests.iter().filter(|r| r.status == Some(503)) {
        let body = r.body.as_ref().map(|b| b["messages"].to_string());
        *per_item.entry(body.unwrap_or_default()).or_default() += 1;
    }
    let during = per_item.values().sum();
    let first = requests.iter().map(|r| r.at).min();
    let first_ok = requests
        .iter()
        .filter(|r| r.status == Some(200))
        .map(|r| r.at)
        .min();
    Ok(OutageRun {
        wall: m.wall,
        done: done.unwrap_or(0),
        failed: failed.unwrap_or(0),
        calls: requests.len(),
        during,
        after: requests.len() - during,
        items_503: per_item.len(),
        max_503s_per_item: per_item.values().copied().max().unwrap_or(0),
        seen: first.map(|f| outage_end.saturating_duration_since(f)),
        first_ok_after: first_ok.map(|f| f.saturating_duration_since(outage_end)),
        finished_after: exited.checked_duration_since(outage_end),
        opened: log_text.matches("circuit breaker opened").count(),
        closed: log_text.matches("circuit breaker closed").count(),
        cpu: m.cpu,
    })
}

/// `jsonl` of the articles → `llm` with the policy keys of `variant` → `blackhole`.
fn pipeline(base_url: &str, variant: Variant, plan: &Plan) -> String {
    let mut policies = variant
        .rate_limit(plan)
        .map_or_else(String::new, |r| format!("rate_limit = \"{r}/s\"\n"));
    if variant.is_outage() {
        policies.push_str(OUTAGE_RETRY);
        policies.push('\n');
    }
    if let Some(breaker) = variant.breaker(plan) {
        policies.push_str(&breaker);
        policies.push('\n');
    }
    stagewise::pipeline(
        "",
        &stagewise::jsonl("articles.jsonl"),
        &format!(
            r#"[[stage]]
name = "facts"
kind = "llm"
provider = "openai"
model = "bench"
base_url = "{base_url}"
cache = false
concurrency = {}
{policies}
{SINK}"#,
            variant.concurrency()
        ),
    )
}

// ---------------------------------------------------------------------------------------------
// Reporting

/// The median of each figure over several runs (taken per figure), and the runs themselves.
/// Items done can differ from run to run, so the rates are each run's, then their medians.
struct Median {
    /// In the order they were measured.
    runs: Vec<Run>,
    base: stats::Median,
    /// Items done per second, process start to exit.
    rate_end_to_end: f64,
    /// Of the slowest and the fastest run, end to end.
    rate_range: (f64, f64),
    /// Items done per second in the processing window.
    rate_window: Option<f64>,
    first_call: Option<Duration>,
    tail: Option<Duration>,
    count_429: usize,
    calls: usize,
    connections: u64,
    max_in_flight: usize,
    failed: u64,
    /// Over all runs.
    max_429s_per_item: usize,
}

impl Median {
    /// The medians of `runs`, which it keeps. Panics if there are none.
    fn of(runs: Vec<Run>) -> Median {
        let rates = || runs.iter().map(|r| r.base.items_per_sec());
        Median {
            base: stats::Median::of(runs.iter().map(|r| &r.base)),
            rate_end_to_end: median_f64(rates()).unwrap_or(0.0),
            rate_range: (
                rates().fold(f64::INFINITY, f64::min),
                rates().fold(0.0, f64::max),
            ),
            rate_window: median_f64(runs.iter().filter_map(|r| r.base.window_rate())),
            first_call: median(runs.iter().filter_map(|r| r.first_call)),
            tail: median(runs.iter().filter_map(|r| r.tail)),
            count_429: median(runs.iter().map(|r| r.count_429)).unwrap_or(0),
            calls: median(runs.iter().map(|r| r.calls)).unwrap_or(0),
            connections: median(runs.iter().map(|r| r.connections)).unwrap_or(0),
            max_in_flight: median(runs.iter().map(|r| r.max_in_flight)).unwrap_or(0),
            failed: median(runs.iter().map(|r| r.failed)).unwrap_or(0),
            max_429s_per_item: runs.iter().map(|r| r.max_429s_per_item).max().unwrap_or(0),
            runs,
        }
    }

    /// A figure of each run, in the order the runs were measured: "3 / 0 / 1".
    fn per_run(&self, figure: impl Fn(&Run) -> u64) -> String {
        let figures: Vec<String> = self.runs.iter().map(|r| figure(r).to_string()).collect();
        figures.join(" / ")
    }
}

/// What each column of the table holds.
const FOOTNOTE: &str = "(medians of the runs, each figure on its own; items/s: items done (failed ones not counted) per second; wall and the first items/s: process start to exit; ideal: share of the ideal rate; \
     range: slowest–fastest run, end to end; window: `run started` to `summary`; 429s, calls (requests, 429s included), conns (connections accepted) \
     and maxif (most requests admitted at once) are the server's; failed: items failed; CPU: stagewise's user+system; MB = 10^6 bytes of ru_maxrss)";

/// The table's header line.
fn header() -> String {
    format!(
        "{:<36} {:>4} {:>8} {:>7} {:>5} {:>11} {:>8} {:>7} {:>5} {:>5} {:>5} {:>5} {:>5} {:>6} {:>8} {:>6}",
        "variant",
        "runs",
        "wall",
        "items/s",
        "ideal",
        "range",
        "window",
        "items/s",
        "ideal",
        "429s",
        "calls",
        "conns",
        "maxif",
        "failed",
        "peak RSS",
        "CPU"
    )
}

/// A row of the table: the medians of one variant, its rates also as shares of `ideal`.
fn row(name: &str, m: &Median, ideal: f64) -> String {
    let (low, high) = m.rate_range;
    let share = |rate: f64| format!("{:.1}%", 100.0 * rate / ideal);
    format!(
        "{:<36} {:>4} {:>6.3} s {:>7.1} {:>5} {:>11} {:>8} {:>7} {:>5} {:>5} {:>5} {:>5} {:>5} {:>6} {:>5.1} MB {:>4.2} s",
        name,
        m.runs.len(),
        m.base.wall.as_secs_f64(),
        m.rate_end_to_end,
        share(m.rate_end_to_end),
        format!("{low:.1}–{high:.1}"),
        m.base
            .window
            .map_or_else(|| "-".to_owned(), |w| format!("{:.3} s", w.as_secs_f64())),
        m.rate_window
            .map_or_else(|| "-".to_owned(), |r| format!("{r:.1}")),
        m.rate_window.map_or_else(|| "-".to_owned(), share),
        m.count_429,
        m.calls,
        m.connections,
        m.max_in_flight,
        m.failed,
        m.base.peak_rss_bytes() / 1e6,
        m.base.cpu.as_secs_f64()
    )
}

/// The medians of the outage runs, each figure on its own, and the runs themselves.
struct OutageMedian {
    /// In the order they were measured.
    runs: Vec<OutageRun>,
    wall: Duration,
    done: u64,
    failed: u64,
    calls: usize,
    during: usize,
    after: usize,
    items_503: usize,
    max_503s_per_item: usize,
    first_ok_after: Option<Duration>,
    finished_after: Option<Duration>,
    cpu: Duration,
}

impl OutageMedian {
    /// The medians of `runs`, which it keeps. Panics if there are none.
    fn of(runs: Vec<OutageRun>) -> OutageMedian {
        OutageMedian {
            wall: median(runs.iter().map(|r| r.wall)).unwrap_or_default(),
            done: median(runs.iter().map(|r| r.done)).unwrap_or(0),
            failed: median(runs.iter().map(|r| r.failed)).unwrap_or(0),
            calls: median(runs.iter().map(|r| r.calls)).unwrap_or(0),
            during: median(runs.iter().map(|r| r.during)).unwrap_or(0),
            after: median(runs.iter().map(|r| r.after)).unwrap_or(0),
            items_503: median(runs.iter().map(|r| r.items_503)).unwrap_or(0),
            max_503s_per_item: median(runs.iter().map(|r| r.max_503s_per_item)).unwrap_or(0),
            first_ok_after: median(runs.iter().filter_map(|r| r.first_ok_after)),
            finished_after: median(runs.iter().filter_map(|r| r.finished_after)),
            cpu: median(runs.iter().map(|r| r.cpu)).unwrap_or_default(),
            runs,
        }
    }

    /// A figure of each run, in the order the runs were measured: "3 / 0 / 1".
    fn per_run(&self, figure: impl Fn(&OutageRun) -> String) -> String {
        let figures: Vec<String> = self.runs.iter().map(figure).collect();
        figures.join(" / ")
    }
}

/// What each column of the outage table holds.
const OUTAGE_FOOTNOTE: &str = "(medians of the runs, each figure on its own; wall: stagewise's start to exit; done, failed: items, from the summary; \
     calls: requests the server received; during: those that arrived while it was down (answered 503), after: the others; \
     503 items: items that got a 503; max/item: the most 503s one item got; to 1st 200: from the outage's end to the first request answered 200; \
     to exit: from the outage's end to stagewise's exit; CPU: stagewise's user+system)";

/// The outage table's header line.
fn outage_header() -> String {
    format!(
        "{:<40} {:>4} {:>8} {:>5} {:>6} {:>6} {:>6} {:>6} {:>9} {:>8} {:>10} {:>8} {:>6}",
        "variant",
        "runs",
        "wall",
        "done",
        "failed",
        "calls",
        "during",
        "after",
        "503 items",
        "max/item",
        "to 1st 200",
        "to exit",
        "CPU"
    )
}

/// A duration in seconds with milliseconds, or "-".
fn seconds(d: Option<Duration>) -> String {
    d.map_or_else(|| "-".to_owned(), |d| format!("{:.3} s", d.as_secs_f64()))
}

/// The outage table: a row per variant, the figures of each run, and the two compared.
fn report_outage(plan: &Plan, medians: &[(Variant, OutageMedian)], table: &mut Table) {
    if medians.is_empty() {
        return;
    }
    for (variant, m) in medians {
        table.line(format!(
            "{:<40} {:>4} {:>6.3} s {:>5} {:>6} {:>6} {:>6} {:>6} {:>9} {:>8} {:>10} {:>8} {:>4.2} s",
            variant.name(plan),
            m.runs.len(),
            m.wall.as_secs_f64(),
            m.done,
            m.failed,
            m.calls,
            m.during,
            m.after,
            m.items_503,
            m.max_503s_per_item,
            seconds(m.first_ok_after),
            seconds(m.finished_after),
            m.cpu.as_secs_f64()
        ));
    }
    table.line(format!(
        "outage: the server answers 503 to every call for {} s from its start; then {} ms per answer. {} items, concurrency {OUTAGE_CONCURRENCY}, {OUTAGE_RETRY}",
        plan.outage.down.as_secs_f64(),
        plan.latency.as_millis(),
        plan.outage.items
    ));
    for (variant, m) in medians {
        table.line(format!("{}:", variant.name(plan)));
        table.line(format!(
            "  per run: requests during the outage {}; after {}; done {}; failed {}; wall {}",
            m.per_run(|r| r.during.to_string()),
            m.per_run(|r| r.after.to_string()),
            m.per_run(|r| r.done.to_string()),
            m.per_run(|r| r.failed.to_string()),
            m.per_run(|r| format!("{:.3} s", r.wall.as_secs_f64()))
        ));
        table.line(format!(
            "  per run: the outage's end to the first 200 {}; to exit {}; first request to the outage's end (the outage the run saw) {}",
            m.per_run(|r| seconds(r.first_ok_after)),
            m.per_run(|r| seconds(r.finished_after)),
            m.per_run(|r| seconds(r.seen))
        ));
        table.line(format!(
            "  per run: items that got a 503 {}; the most 503s one item got {}; `circuit breaker opened` / `closed` in the log {}",
            m.per_run(|r| r.items_503.to_string()),
            m.per_run(|r| r.max_503s_per_item.to_string()),
            m.per_run(|r| format!("{}/{}", r.opened, r.closed))
        ));
    }
    let find = |v: Variant| medians.iter().find(|(w, _)| *w == v).map(|(_, m)| m);
    if let (Some(o), Some(p)) = (find(Variant::O), find(Variant::P)) {
        table.line(format!(
            "with the breaker: {} requests during the outage against {} without ({}); exit {} after the outage's end against {}",
            p.during,
            o.during,
            if p.during > 0 {
                format!("{:.1}× fewer", o.during as f64 / p.during as f64)
            } else {
                "none".to_owned()
            },
            seconds(p.finished_after),
            seconds(o.finished_after)
        ));
    }
}

/// What the outage variants must show: every item done (the retry policy outlasts the outage),
/// every run saw the outage, and fewer requests during it with the breaker than without.
fn check_outage(medians: &[(Variant, OutageMedian)]) -> Result<(), String> {
    for (variant, m) in medians {
        let letter = variant.letter();
        let failed: u64 = m.runs.iter().map(|r| r.failed).sum();
        if failed > 0 {
            return Err(format!(
                "{letter}: {failed} items failed over {} runs: the retry policy did not outlast the outage",
                m.runs.len()
            ));
        }
        if m.runs.iter().any(|r| r.during == 0) {
            return Err(format!(
                "{letter}: a run sent no request during the outage (it started too late to see it)"
            ));
        }
    }
    let during = |v: Variant| medians.iter().find(|(w, _)| *w == v).map(|(_, m)| m.during);
    if let (Some(o), Some(p)) = (during(Variant::O), during(Variant::P)) {
        if p >= o {
            return Err(format!(
                "with the breaker, {p} requests during the outage (median); without, {o}: the breaker should have spared the server"
            ));
        }
    }
    Ok(())
}
