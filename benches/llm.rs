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

// The child's rusage (peak RSS, CPU time) needs `libc::wait4` (in `common`): an FFI call, hence
// unsafe, and nothing else.
#![allow(unsafe_code)]

mod common;
// The test server, shared with `tests/llm.rs`; this bench uses only part of it.
#[allow(dead_code)]
#[path = "../tests/util/llm.rs"]
mod llm_server;

use common::{event_times, progress, thousands, timeval, wait4};
use llm_server::{LlmConfig, LlmServer, Scenario};
use std::collections::HashMap;
use std::io;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, ExitStatus, Stdio};
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

    fn name(self, plan: &Plan) -> String {
        let letter = match self {
            Variant::A => "a",
            Variant::B => "b",
            Variant::C => "c",
        };
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
    let raw: Vec<String> = std::env::args().skip(1).collect();
    let full = raw.iter().any(|a| a == "--bench");
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
    let mut args = raw.into_iter().filter(|a| a != "--bench");
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--runs" => match args.next().and_then(|n| n.parse().ok()).filter(|&n| n > 0) {
                Some(n) => plan.runs = n,
                None => return usage(),
            },
            "--rate" => match args.next().and_then(|n| n.parse().ok()).filter(|&n| n > 0) {
                Some(n) => plan.rate = n,
                None => return usage(),
            },
            "--keep" => plan.keep = true,
            "a" => plan.variants.push(Variant::A),
            "b" => plan.variants.push(Variant::B),
            "c" => plan.variants.push(Variant::C),
            _ => return usage(),
        }
    }
    if plan.variants.is_empty() {
        plan.variants = vec![Variant::A, Variant::B, Variant::C];
    }

    let load_before = load_average();
    progress(&format!(
        "{} items; server: {} ms per answer, {MAX_IN_FLIGHT} requests at once, 429 beyond",
        plan.items,
        plan.latency.as_millis()
    ));
    let mut table = Table::default();
    let result = bench(&plan, &mut table);
    table.print();
    println!(
        "load average (1 min) before: {load_before}, after: {}",
        load_average()
    );
    if !plan.full {
        println!(
            "\nsmoke run (no `--bench` flag): {} items, {} ms latency, once",
            plan.items,
            plan.latency.as_millis()
        );
    }
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn usage() -> ExitCode {
    eprintln!("usage: cargo bench --bench llm [-- [--runs N] [--rate N] [--keep] [a] [b] [c]]");
    ExitCode::from(2)
}

// ---------------------------------------------------------------------------------------------
// The measurement

fn bench(plan: &Plan, table: &mut Table) -> Result<(), String> {
    let work = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join("stagewise-bench-llm")
        .join(std::process::id().to_string());
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work).map_err(|e| format!("cannot create {}: {e}", work.display()))?;
    let articles = work.join("articles.jsonl");
    let lines: String = (0..plan.items)
        .map(|i| format!("{}\n", article(i)))
        .collect();
    std::fs::write(&articles, &lines)
        .map_err(|e| format!("cannot write {}: {e}", articles.display()))?;
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
                run.wall.as_secs_f64(),
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
        table.row(&variant.name(plan), m, ideal);
    }
    let rounds = plan.items.div_ceil(MAX_IN_FLIGHT as u64);
    table.line(&format!(
        "ideal {MAX_IN_FLIGHT} / {} s = {} items/s ({} items are {rounds} rounds of {MAX_IN_FLIGHT}: {:.1} s at the least)",
        plan.latency.as_secs_f64(),
        thousands(ideal),
        thousands(plan.items as f64),
        rounds as f64 * plan.latency.as_secs_f64()
    ));
    for (variant, m) in &medians {
        table.line(&format!("{}:", variant.name(plan)));
        table.line(&format!(
            "  per run: 429s {}; items that got a 429 {}; answered 200 {}; failed items {}; the most 429s one item got: {}",
            m.per_run(|r| r.count_429 as u64),
            m.per_run(|r| r.items_429),
            m.per_run(|r| r.answered_ok as u64),
            m.per_run(|r| r.failed),
            m.max_429s_per_item
        ));
        table.line(&format!(
            "  requests arriving at the server, first to last (per run): {} requests/s",
            m.runs
                .iter()
                .map(|r| r
                    .arrival_rate
                    .map_or_else(|| "-".to_owned(), |a| format!("{a:.1}")))
                .collect::<Vec<_>>()
                .join(" / ")
        ));
        if let Some(l) = m.stage_latency("facts") {
            table.line(&format!(
                "  `facts` attempt latency (median run's summary): {l}"
            ));
        }
        if let (Some(first), Some(tail)) = (m.first_call, m.tail) {
            table.line(&format!(
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
    /// Items done (answered and passed on), from the summary.
    done: u64,
    wall: Duration,
    /// `ru_maxrss`, in KiB on Linux.
    peak_rss_kib: u64,
    /// The child's user + system CPU time.
    cpu: Duration,
    /// From `run started` to `summary`.
    window: Option<Duration>,
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
    /// stagewise's `<name>.summary.json`.
    summary: Option<Value>,
}

impl Run {
    /// Items done per second, process start to exit.
    fn rate_end_to_end(&self) -> f64 {
        self.done as f64 / self.wall.as_secs_f64()
    }

    /// Items done per second in the processing window.
    fn rate_window(&self) -> Option<f64> {
        self.window.map(|w| self.done as f64 / w.as_secs_f64())
    }
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
    let name = format!("stagewise-{}-{i}", variant.concurrency());
    let dir = work.join(&name);
    std::fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    std::fs::copy(articles, dir.join("articles.jsonl"))
        .map_err(|e| format!("cannot copy the articles: {e}"))?;
    std::fs::write(
        dir.join("pipeline.toml"),
        pipeline(&server.base_url(Scenario::Ok), variant, plan),
    )
    .map_err(|e| format!("cannot write the pipeline: {e}"))?;

    let mut cmd = Command::new(env!("CARGO_BIN_EXE_stagewise"));
    cmd.args(["run", "pipeline.toml", "--log-format", "json"])
        .current_dir(&dir);
    // A developer's overrides (`STAGEWISE_STAGE__…`, a debug log level) would change what is measured.
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("STAGEWISE_") {
            cmd.env_remove(key);
        }
    }
    cmd.env("STAGEWISE_LOG", "info").env("OPENAI_API_KEY", KEY);
    let log = dir.join("stderr.log");
    let m = measure(cmd, &log).map_err(|e| format!("{name}: cannot run stagewise: {e}"))?;

    let summary = std::fs::read_to_string(dir.join("bench.summary.json"))
        .ok()
        .and_then(|s| serde_json::from_str::<Value>(&s).ok());
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
        done: done.unwrap_or(0),
        wall: m.wall,
        peak_rss_kib: m.peak_rss_kib,
        cpu: m.cpu,
        window: m
            .started
            .zip(m.summarized)
            .and_then(|(a, b)| b.checked_sub(a)),
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
        summary,
    })
}

fn pipeline(base_url: &str, variant: Variant, plan: &Plan) -> String {
    let rate_limit = variant
        .rate_limit(plan)
        .map_or_else(String::new, |r| format!("rate_limit = \"{r}/s\"\n"));
    format!(
        r#"[pipeline]
name = "bench"
heartbeat = "60s"

[checkpoint]
store = "sqlite:state.db"

[[stage]]
name = "src"
kind = "jsonl"
path = "articles.jsonl"
key = "id"
timeout = "5m"

[[stage]]
name = "facts"
kind = "llm"
provider = "openai"
model = "bench"
base_url = "{base_url}"
cache = false
concurrency = {}
{rate_limit}
[[stage]]
name = "sink"
kind = "blackhole"
"#,
        variant.concurrency()
    )
}

// ---------------------------------------------------------------------------------------------
// Measuring a child process

struct Measured {
    status: ExitStatus,
    /// When the child was spawned.
    began: Instant,
    wall: Duration,
    peak_rss_kib: u64,
    cpu: Duration,
    /// When the `run started` and `summary` JSON log events arrived, since spawn.
    started: Option<Duration>,
    summarized: Option<Duration>,
}

/// Spawn `cmd`, timestamp the JSON log events it writes to stderr (copying stderr to `log`),
/// and reap it with `wait4` for its peak RSS and CPU time.
fn measure(mut cmd: Command, log: &Path) -> io::Result<Measured> {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let log = std::fs::File::create(log)?;
    let began = Instant::now();
    let mut child = cmd.spawn()?;
    let stderr = child.stderr.take().expect("stderr is piped");
    let err_reader = event_times(stderr, began, Some(log), ["run started", "summary"]);
    // Once reaped, `child` is never waited on again: dropping a `Child` does not wait.
    let (status, usage) = wait4(child.id())?;
    let wall = began.elapsed();
    let [started, summarized] = err_reader.join().unwrap_or([None; 2]);
    Ok(Measured {
        status,
        began,
        wall,
        peak_rss_kib: u64::try_from(usage.ru_maxrss).unwrap_or(0),
        cpu: timeval(usage.ru_utime) + timeval(usage.ru_stime),
        started,
        summarized,
    })
}

/// The first field of `/proc/loadavg`, or "unknown".
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next().map(str::to_owned))
        .unwrap_or_else(|| "unknown".to_owned())
}

// ---------------------------------------------------------------------------------------------
// Reporting

/// The median of each figure over several runs (taken per figure), and the runs themselves.
struct Median {
    runs: Vec<Run>,
    wall: Duration,
    /// Items done per second, process start to exit.
    rate_end_to_end: f64,
    /// Of the slowest and the fastest run, end to end.
    rate_range: (f64, f64),
    window: Option<Duration>,
    rate_window: Option<f64>,
    first_call: Option<Duration>,
    tail: Option<Duration>,
    peak_rss_kib: u64,
    cpu: Duration,
    count_429: usize,
    calls: usize,
    connections: u64,
    max_in_flight: usize,
    failed: u64,
    /// Over all runs.
    max_429s_per_item: usize,
    /// The summary of the run with the median wall time.
    summary: Option<Value>,
}

impl Median {
    fn of(runs: Vec<Run>) -> Median {
        fn mid<T: Ord + Copy>(v: impl Iterator<Item = T>) -> Option<T> {
            let mut v: Vec<T> = v.collect();
            v.sort();
            v.get(v.len() / 2).copied()
        }
        fn mid_f64(v: impl Iterator<Item = f64>) -> Option<f64> {
            let mut v: Vec<f64> = v.collect();
            v.sort_by(f64::total_cmp);
            v.get(v.len() / 2).copied()
        }
        // `runs` stays in the order of measurement; `by_wall` ranks them.
        let mut by_wall: Vec<&Run> = runs.iter().collect();
        by_wall.sort_by_key(|r| r.wall);
        let middle = by_wall[by_wall.len() / 2];
        let rates = || runs.iter().map(Run::rate_end_to_end);
        Median {
            wall: middle.wall,
            rate_end_to_end: mid_f64(rates()).unwrap_or(0.0),
            rate_range: (
                rates().fold(f64::INFINITY, f64::min),
                rates().fold(0.0, f64::max),
            ),
            window: mid(runs.iter().filter_map(|r| r.window)),
            rate_window: mid_f64(runs.iter().filter_map(Run::rate_window)),
            first_call: mid(runs.iter().filter_map(|r| r.first_call)),
            tail: mid(runs.iter().filter_map(|r| r.tail)),
            peak_rss_kib: mid(runs.iter().map(|r| r.peak_rss_kib)).unwrap_or(0),
            cpu: mid(runs.iter().map(|r| r.cpu)).unwrap_or_default(),
            count_429: mid(runs.iter().map(|r| r.count_429)).unwrap_or(0),
            calls: mid(runs.iter().map(|r| r.calls)).unwrap_or(0),
            connections: mid(runs.iter().map(|r| r.connections)).unwrap_or(0),
            max_in_flight: mid(runs.iter().map(|r| r.max_in_flight)).unwrap_or(0),
            failed: mid(runs.iter().map(|r| r.failed)).unwrap_or(0),
            max_429s_per_item: runs.iter().map(|r| r.max_429s_per_item).max().unwrap_or(0),
            summary: middle.summary.clone(),
            runs,
        }
    }

    /// A figure of each run, in the order the runs were measured: "3 / 0 / 1".
    fn per_run(&self, figure: impl Fn(&Run) -> u64) -> String {
        let figures: Vec<String> = self.runs.iter().map(|r| figure(r).to_string()).collect();
        figures.join(" / ")
    }

    /// A stage's attempt latency from the summary: "p50 … p95 … max …".
    fn stage_latency(&self, stage: &str) -> Option<String> {
        common::stage_latency(self.summary.as_ref(), stage)
    }
}

#[derive(Default)]
struct Table {
    lines: Vec<String>,
}

impl Table {
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

    fn row(&mut self, name: &str, m: &Median, ideal: f64) {
        let (low, high) = m.rate_range;
        let share = |rate: f64| format!("{:.1}%", 100.0 * rate / ideal);
        self.lines.push(format!(
            "{:<36} {:>4} {:>6.3} s {:>7.1} {:>5} {:>11} {:>8} {:>7} {:>5} {:>5} {:>5} {:>5} {:>5} {:>6} {:>5.1} MB {:>4.2} s",
            name,
            m.runs.len(),
            m.wall.as_secs_f64(),
            m.rate_end_to_end,
            share(m.rate_end_to_end),
            format!("{low:.1}–{high:.1}"),
            m.window
                .map_or_else(|| "-".to_owned(), |w| format!("{:.3} s", w.as_secs_f64())),
            m.rate_window
                .map_or_else(|| "-".to_owned(), |r| format!("{r:.1}")),
            m.rate_window.map_or_else(|| "-".to_owned(), share),
            m.count_429,
            m.calls,
            m.connections,
            m.max_in_flight,
            m.failed,
            m.peak_rss_kib as f64 * 1024.0 / 1e6,
            m.cpu.as_secs_f64()
        ));
    }

    fn line(&mut self, text: &str) {
        self.lines.push(text.to_owned());
    }

    fn print(&self) {
        println!("{}", Self::header());
        for l in &self.lines {
            println!("{l}");
        }
        println!(
            "(medians of the runs, each figure on its own; items/s: items done (failed ones not counted) per second; wall and the first items/s: process start to exit; ideal: share of the ideal rate; \
             range: slowest–fastest run, end to end; window: `run started` to `summary`; 429s, calls (requests, 429s included), conns (connections accepted) \
             and maxif (most requests admitted at once) are the server's; failed: items failed; CPU: stagewise's user+system; MB = 10^6 bytes of ru_maxrss)"
        );
    }
}
