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
//! `cargo bench --bench llm` runs it; `--runs N` changes the number of runs, `--rate N` the
//! rate limit of variant c (per second), `a`, `b`, `c` choose variants, and `--keep` keeps each
//! run's directory (pipeline, log, summary, checkpoint) for inspection. Without cargo's
//! `--bench` flag (`cargo test --benches` or `--all-targets`) it only smoke-tests itself on 50
//! items with a 20 ms server, once.

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
use std::time::Duration;

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
}

impl Variant {
    fn concurrency(self) -> usize {
        match self {
            Variant::A => MAX_IN_FLIGHT,
            Variant::B | Variant::C => OVER_LIMIT,
        }
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
        }
    }

    fn name(self, plan: &Plan) -> String {
        let letter = self.letter();
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
    };
    let read = args.read(plan.runs, |arg, rest| {
        match arg {
            "--rate" => match positive(rest.next()) {
                Some(n) => plan.rate = n,
                None => return false,
            },
            "--keep" => plan.keep = true,
            "a" => plan.variants.push(Variant::A),
            "b" => plan.variants.push(Variant::B),
            "c" => plan.variants.push(Variant::C),
            _ => return false,
        }
        true
    });
    let Ok(runs) = read else { return usage() };
    plan.runs = runs;
    if plan.variants.is_empty() {
        plan.variants = vec![Variant::A, Variant::B, Variant::C];
    }

    let load_before = load_average();
    progress(&format!(
        "{} items; server: {} ms per answer, {MAX_IN_FLIGHT} requests at once, 429 beyond",
        plan.items,
        plan.latency.as_millis()
    ));
    let mut table = Table::new(header(), FOOTNOTE);
    let result = bench(&plan, &mut table);
    table.print();
    print_load_average(&load_before);
    if !plan.full {
        println!(
            "\nsmoke run (no `--bench` flag): {} items, {} ms latency, once",
            plan.items,
            plan.latency.as_millis()
        );
    }
    cli::exit(result)
}

/// Say how to call this bench.
fn usage() -> ExitCode {
    cli::usage("cargo bench --bench llm [-- [--runs N] [--rate N] [--keep] [a] [b] [c]]")
}

// ---------------------------------------------------------------------------------------------
// The measurement

fn bench(plan: &Plan, table: &mut Table) -> Result<(), String> {
    let work = stagewise::work_dir("llm")?;
    let articles = work.join("articles.jsonl");
    let lines: String = (0..plan.items)
        .map(|i| format!("{}\n", article(i)))
        .collect();
    stagewise::write(&articles, &lines)?;
    progress(&format!(
        "{} articles, {} bytes of JSON Lines",
        plan.items,
        thousands(lines.len() as f64)
    ));

    let mut runs: Vec<Vec<Run>> = plan.variants.iter().map(|_| Vec::new()).collect();
    for i in 0..plan.runs {
        for (v, variant) in plan.variants.iter().enumerate() {
            progress(&format!(
                "run {}/{}: {}",
                i + 1,
                plan.runs,
                variant.name(plan)
            ));
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

    let ideal = plan.ideal();
    let medians: Vec<(Variant, Median)> = plan
        .variants
        .iter()
        .copied()
        .zip(runs.into_iter().map(Median::of))
        .collect();
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
    Ok(())
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

/// `jsonl` of the articles → `llm` with the policy keys of `variant` → `blackhole`.
fn pipeline(base_url: &str, variant: Variant, plan: &Plan) -> String {
    let rate_limit = variant
        .rate_limit(plan)
        .map_or_else(String::new, |r| format!("rate_limit = \"{r}/s\"\n"));
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
{rate_limit}
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
