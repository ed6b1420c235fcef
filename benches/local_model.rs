//! The benchmark of the `llm` stage on a real model (figures and command in `BENCHMARKS.md`):
//! SmolLM2-135M-Instruct behind llama-cpp-python's OpenAI-compatible server, installed and
//! served by `scripts/local-model`, on this machine's CPU. Where `benches/llm.rs` measures the
//! runner against a server that only sleeps, this one measures what a user of a local model
//! meets: how many articles a minute, how many tokens a second, and how much of the machine's
//! CPU is stagewise's own rather than the model's.
//!
//! - The server is started once per invocation (`scripts/local-model install`, which returns at
//!   once when it is installed, then `scripts/local-model serve PORT` on a free 127.0.0.1 port),
//!   and is up once `GET /v1/models` answers 200. It answers one request at a time. It is killed
//!   (SIGKILL) when the bench ends, also on a panic (a guard's `Drop`).
//! - stagewise: like `benches/llm.rs`, the release `stagewise run` process on a pipeline in a
//!   fresh directory: `jsonl` source of N articles `{"id", "title", "text"}` → `llm` with the
//!   settings of `examples/digest-local-model/pipeline.toml` (`provider = "openai"`,
//!   `model = "smollm2"`, the schema capped at 6 facts, `max_tokens = 512`,
//!   `invalid_output_attempts = 3`, `timeout = "300s"`, its retry policy), except
//!   `structured_output = "json_object"` (the server refuses `json_schema`: `auto` would send
//!   a refused request first) and `cache = false` (every item calls) → `blackhole`. No key is
//!   sent (`OPENAI_API_KEY` is removed from the child's environment).
//! - The articles: the hand-written article bodies of the extraction benchmark's development
//!   split (`../shared/bench/extract/ground-truth.json`, or `$EXTRACT_BENCH/ground-truth.json`;
//!   real news pages, mostly English, a few in other languages), those of 1,500 characters or
//!   more, in the order of their ids, each cut to at most 1,500 characters at a sentence's end.
//!   Without that file, a few short news-like texts written here, repeated.
//! - Measured per run: wall time (spawn to exit) and the processing window (`run started` to
//!   `summary` log events, `--log-format json`), items per second of the window; the stage's
//!   `tokens_in` and `tokens_out` from the run's summary, and output tokens per second of the
//!   window; stagewise's user+system CPU (`wait4`) and the server's over the same run (utime +
//!   stime of `/proc/<pid>/stat`, read before the spawn and when stagewise is reaped), and the
//!   share of the two that was stagewise's; items done and failed. The bench fails if an item
//!   failed.
//! - Variants, run interleaved (concurrency 1, then 2, then again): `concurrency = 1`, as the
//!   example, and `concurrency = 2`, a request queued at the server while one is answered.
//!
//! Every measurement is run 3 times and the medians are reported, each figure on its own.
//!
//! `cargo bench --bench local_model` runs it on 20 articles; `--items N` changes the number of
//! articles, `--runs N` the number of runs, and `--keep` keeps each run's directory (pipeline,
//! log, summary) and the server's log. Without cargo's `--bench` flag (`cargo test --benches`
//! or `--all-targets`) it only smoke-tests itself: concurrency 1 and 2 once each on 2 articles,
//! or, if the local model is not installed (`scripts/local-model bin` fails), nothing: it says
//! so in one line and succeeds.

mod common;

use common::cli::{self, positive};
use common::process::{measure_with, Stdout};
use common::report::{load_average, print_load_average, progress, thousands, Table};
use common::stagewise::{self, SINK};
use common::stats::{self, median, median_f64};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

/// The script that installs and serves the model.
const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/local-model");
/// The stage's `concurrency` in each variant: the example's 1, and one request waiting.
const CONCURRENCIES: [usize; 2] = [1, 2];
/// Runs of each variant; the median is reported.
const DEFAULT_RUNS: usize = 3;
/// Articles per run.
const DEFAULT_ITEMS: u64 = 20;
/// Articles per run in the smoke run.
const SMOKE_ITEMS: u64 = 2;
/// The most characters of an article's text sent to the model.
const ARTICLE_CHARS: usize = 1_500;
/// How long the server may take to load the model and list it.
const STARTUP: Duration = Duration::from_secs(180);
/// The stage's retry policy, as in `examples/digest-local-model/pipeline.toml`'s `[defaults]`.
const RETRY: &str =
    r#"retry = { attempts = 3, initial = "500ms", max = "30s", multiplier = 2.0, jitter = true }"#;
/// The example's schema: the default one with six facts at most.
const SCHEMA: &str = r#"schema = { type = "object", required = ["facts", "summary"], additionalProperties = false, properties = { facts = { type = "array", items = { type = "string" }, maxItems = 6 }, summary = { type = "string" } } }"#;

/// What one invocation measures.
struct Plan {
    runs: usize,
    items: u64,
    /// Keep each run's directory and the server's log instead of removing them.
    keep: bool,
    full: bool,
}

fn main() -> ExitCode {
    // `cargo bench` appends `--bench`; without it this is a smoke test (see the top of the file).
    let args = cli::args();
    let full = args.bench;
    let mut plan = Plan {
        runs: if full { DEFAULT_RUNS } else { 1 },
        items: if full { DEFAULT_ITEMS } else { SMOKE_ITEMS },
        keep: false,
        full,
    };
    let read = args.read(plan.runs, |arg, rest| {
        match arg {
            "--items" => match positive(rest.next()) {
                Some(n) => plan.items = n,
                None => return false,
            },
            "--keep" => plan.keep = true,
            _ => return false,
        }
        true
    });
    let Ok(runs) = read else {
        return cli::usage("cargo bench --bench local_model [-- [--runs N] [--items N] [--keep]]");
    };
    plan.runs = runs;
    if !plan.full && !installed() {
        println!("local_model: smoke run skipped: the local model is not installed (`scripts/local-model bin` fails; `scripts/local-model install` installs it)");
        return ExitCode::SUCCESS;
    }

    let load_before = load_average();
    let mut table = Table::new(header(), FOOTNOTE);
    let result = bench(&plan, &mut table);
    table.print();
    print_load_average(&load_before);
    if !plan.full {
        println!(
            "\nsmoke run (no `--bench` flag): {} articles, concurrency {CONCURRENCIES:?}, once",
            plan.items
        );
    }
    cli::exit(result)
}

/// Whether `scripts/local-model` finds the server installed.
fn installed() -> bool {
    Command::new(SCRIPT)
        .arg("bin")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

// ---------------------------------------------------------------------------------------------
// The server

/// The local model's server, killed (SIGKILL) and reaped when dropped: at the end of the bench,
/// on an early return and on a panic alike.
struct Server {
    child: Child,
    port: u16,
}

impl Drop for Server {
    fn drop(&mut self) {
        // `Child::kill` sends SIGKILL: the server would finish the answer it is writing first
        // on SIGTERM (see `scripts/local-model`).
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Server {
    /// Install the server if need be, start it on a free port with its output in `log`, and
    /// wait until it lists its model.
    fn start(log: &Path) -> Result<Server, String> {
        let install = Command::new(SCRIPT)
            .arg("install")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .output()
            .map_err(|e| format!("cannot run {SCRIPT} install: {e}"))?;
        if !install.status.success() {
            return Err(format!(
                "`scripts/local-model install` failed:\n{}",
                String::from_utf8_lossy(&install.stderr)
            ));
        }
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_err(|e| format!("no free port on 127.0.0.1: {e}"))?
            .port();
        let out = std::fs::File::create(log)
            .map_err(|e| format!("cannot create {}: {e}", log.display()))?;
        let err = out
            .try_clone()
            .map_err(|e| format!("cannot share {}: {e}", log.display()))?;
        // `serve` execs the server: the child is the server process itself, whose CPU time
        // `/proc/<pid>/stat` gives.
        let child = Command::new(SCRIPT)
            .args(["serve", &port.to_string()])
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .map_err(|e| format!("cannot run {SCRIPT} serve: {e}"))?;
        let mut server = Server { child, port };
        let began = Instant::now();
        loop {
            if get(port, "/v1/models") == Some(200) {
                return Ok(server);
            }
            if let Ok(Some(status)) = server.child.try_wait() {
                return Err(format!(
                    "the server exited with {status} before it answered; see {}",
                    log.display()
                ));
            }
            if began.elapsed() > STARTUP {
                return Err(format!(
                    "the server did not answer `GET /v1/models` within {} s; see {}",
                    STARTUP.as_secs(),
                    log.display()
                ));
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    /// The server process's user plus system CPU time so far, all threads: fields 14 and 15 of
    /// `/proc/<pid>/stat`, in clock ticks.
    fn cpu(&self) -> Result<Duration, String> {
        let path = format!("/proc/{}/stat", self.child.id());
        let stat =
            std::fs::read_to_string(&path).map_err(|e| format!("cannot read {path}: {e}"))?;
        // The command name (field 2) is in parentheses and may hold spaces: count from after it.
        let fields: Vec<&str> = stat
            .rsplit_once(')')
            .map(|(_, rest)| rest.split_whitespace().collect())
            .unwrap_or_default();
        let field = |n: usize| fields.get(n - 3).and_then(|f| f.parse::<u64>().ok());
        let ticks = field(14)
            .zip(field(15))
            .map(|(user, system)| user + system)
            .ok_or_else(|| format!("cannot read utime and stime from {path}: {stat}"))?;
        Ok(Duration::from_secs_f64(ticks as f64 / clock_ticks() as f64))
    }
}

/// Clock ticks per second, the unit of `/proc/<pid>/stat`'s CPU times.
#[allow(unsafe_code)]
fn clock_ticks() -> u64 {
    // SAFETY: sysconf reads a constant of the system; it takes no pointer.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    u64::try_from(ticks).ok().filter(|&t| t > 0).unwrap_or(100)
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

// ---------------------------------------------------------------------------------------------
// The articles

/// Short news-like texts, for a machine without the extraction benchmark's pages.
const FALLBACK: [&str; 4] = [
    "The city council of Lyon approved a budget of 4.2 million euros on 3 March 2026. The money will pay for two new libraries and the repair of the Pont Morand bridge. Mayor Anne Dubois said work starts in June and should last about eight months. Opposition members asked for an independent audit of the first phase before any further payment.",
    "A new rail line between Porto and Vigo opened on Monday. Trains take 90 minutes and run every two hours. The line cost 380 million euros, shared by Portugal and Spain. The operator expects 1.2 million passengers in the first year and plans an hourly service from 2028.",
    "Farmers in Kenya harvested 12 percent more maize this year than last, the ministry of agriculture said on Friday. Rains came early in March and lasted until May. Prices at the Nairobi market fell by a fifth, and the government said it would buy 200,000 tonnes for its reserve.",
    "The Norwegian wealth fund lost 2.1 percent in the third quarter as technology shares fell, its managers said on Tuesday. The fund, worth about 1,600 billion dollars, holds shares in some 9,000 companies. Its chief executive said the fund would keep its long-term strategy.",
];

/// `count` articles `{"id", "title", "text"}` as JSON Lines, and where their texts come from.
fn articles(count: u64) -> (String, String) {
    let dir = std::env::var_os("EXTRACT_BENCH").map_or_else(
        || Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/bench/extract"),
        PathBuf::from,
    );
    let truth = dir.join("ground-truth.json");
    let texts: Vec<(String, String)> = std::fs::read_to_string(&truth)
        .ok()
        .and_then(|s| serde_json::from_str::<serde_json::Map<String, Value>>(&s).ok())
        .map(|pages| {
            let mut texts: Vec<(String, String)> = pages
                .into_iter()
                .filter_map(|(id, page)| {
                    let body = page["articleBody"].as_str()?;
                    (body.chars().count() >= ARTICLE_CHARS)
                        .then(|| (id.chars().take(12).collect(), cut(body).to_owned()))
                })
                .collect();
            // In the order of their ids, whatever the order of the map.
            texts.sort();
            texts
        })
        .unwrap_or_default();
    let (texts, from) = if texts.is_empty() {
        let texts = FALLBACK
            .iter()
            .enumerate()
            .map(|(i, t)| (format!("news{i}"), (*t).to_owned()))
            .collect();
        (
            texts,
            format!(
                "{} short texts written in the bench ({} not found)",
                FALLBACK.len(),
                truth.display()
            ),
        )
    } else {
        let from = format!(
            "the {} article bodies of {} or more characters in {}, cut to {} at most",
            texts.len(),
            thousands(ARTICLE_CHARS as f64),
            truth.display(),
            thousands(ARTICLE_CHARS as f64)
        );
        (texts, from)
    };
    let lines: String = (0..count as usize)
        .map(|i| {
            let (id, text) = &texts[i % texts.len()];
            let line = json!({
                "id": format!("a{i}-{id}"),
                "title": format!("Article {i}"),
                "text": text,
            });
            format!("{line}\n")
        })
        .collect();
    (lines, from)
}

/// `text` cut to at most [`ARTICLE_CHARS`] characters: at the last sentence's end in its last
/// third or later, else at the last space.
fn cut(text: &str) -> &str {
    let Some((end, _)) = text.char_indices().nth(ARTICLE_CHARS) else {
        return text;
    };
    let head = &text[..end];
    let sentence = head
        .char_indices()
        .filter(|&(i, c)| {
            matches!(c, '.' | '!' | '?')
                && head[i + c.len_utf8()..]
                    .chars()
                    .next()
                    .is_some_and(char::is_whitespace)
        })
        .map(|(i, c)| i + c.len_utf8())
        .next_back()
        .filter(|&i| i >= head.len() * 2 / 3);
    let space = head.rfind(char::is_whitespace);
    &head[..sentence.or(space).unwrap_or(end)]
}

// ---------------------------------------------------------------------------------------------
// The measurement

fn bench(plan: &Plan, table: &mut Table) -> Result<(), String> {
    let work = stagewise::work_dir("local_model")?;
    let articles_path = work.join("articles.jsonl");
    let (lines, from) = articles(plan.items);
    stagewise::write(&articles_path, &lines)?;
    progress(&format!(
        "{} articles, {} bytes of JSON Lines: {from}",
        plan.items,
        thousands(lines.len() as f64)
    ));
    let server_log = work.join("server.log");
    let began = Instant::now();
    let server = Server::start(&server_log)?;
    progress(&format!(
        "server up on 127.0.0.1:{} after {:.1} s (pid {}; {} clock ticks a second)",
        server.port,
        began.elapsed().as_secs_f64(),
        server.child.id(),
        clock_ticks()
    ));

    let mut runs: Vec<Vec<Run>> = CONCURRENCIES.iter().map(|_| Vec::new()).collect();
    for i in 0..plan.runs {
        for (v, &concurrency) in CONCURRENCIES.iter().enumerate() {
            progress(&format!(
                "run {}/{}: concurrency {concurrency} (load average {})",
                i + 1,
                plan.runs,
                load_average()
            ));
            let run = run_stagewise(plan, &server, concurrency, &work, &articles_path, i)?;
            progress(&format!(
                "  {:.1} s, {} done, {} failed, {} calls, {} invalid answers, {} retries, {} tokens out; CPU: stagewise {:.2} s, server {:.1} s",
                run.base.wall.as_secs_f64(),
                run.base.items,
                run.failed,
                run.calls,
                run.invalid,
                run.retries,
                run.tokens_out,
                run.base.cpu.as_secs_f64(),
                run.server_cpu.as_secs_f64()
            ));
            runs[v].push(run);
        }
    }
    drop(server);
    // Kept after a failure (the `?`s above): the logs of the failed run are in it.
    if plan.keep {
        progress(&format!("kept the runs' directories in {}", work.display()));
    } else {
        let _ = std::fs::remove_dir_all(&work);
    }

    let medians: Vec<(usize, Median)> = CONCURRENCIES
        .iter()
        .copied()
        .zip(runs)
        .map(|(c, runs)| (c, Median::of(runs)))
        .collect();
    for (concurrency, m) in &medians {
        table.line(row(&name(*concurrency), m));
    }
    table.line(format!(
        "articles: {from}; {} runs of each variant, interleaved; the server's CPU in clock ticks of 1/{} s",
        plan.runs,
        clock_ticks()
    ));
    for (concurrency, m) in &medians {
        table.line(format!("{}:", name(*concurrency)));
        table.line(format!(
            "  per run: window {}; items/s {}; output tokens/s {}",
            m.per_run(|r| seconds(r.base.window)),
            m.per_run(|r| r
                .base
                .window_rate()
                .map_or("-".to_owned(), |x| format!("{x:.3}"))),
            m.per_run(|r| r
                .tokens_per_sec()
                .map_or("-".to_owned(), |x| format!("{x:.1}")))
        ));
        table.line(format!(
            "  per run: calls {}; invalid answers {}; retries {}; timeouts {}; done {}; failed {}",
            m.per_run(|r| r.calls.to_string()),
            m.per_run(|r| r.invalid.to_string()),
            m.per_run(|r| r.retries.to_string()),
            m.per_run(|r| r.timeouts.to_string()),
            m.per_run(|r| r.base.items.to_string()),
            m.per_run(|r| r.failed.to_string())
        ));
        table.line(format!(
            "  per run: CPU stagewise {}; server {}",
            m.per_run(|r| format!("{:.2} s", r.base.cpu.as_secs_f64())),
            m.per_run(|r| format!("{:.1} s", r.server_cpu.as_secs_f64()))
        ));
        if let Some(l) = m.base.stage_latency("facts", 0) {
            table.line(format!(
                "  `facts` attempt latency (median run's summary): {l}"
            ));
        }
    }
    let failed: u64 = medians
        .iter()
        .flat_map(|(_, m)| m.runs.iter().map(|r| r.failed))
        .sum();
    if failed > 0 {
        return Err(format!(
            "{failed} items failed over all runs (see the table; `--keep` keeps the logs)"
        ));
    }
    Ok(())
}

/// One run of one variant.
struct Run {
    /// Its items are those done, from the summary.
    base: stats::Run,
    failed: u64,
    /// The `facts` stage's figures, from the summary.
    tokens_in: u64,
    tokens_out: u64,
    calls: u64,
    invalid: u64,
    retries: u64,
    timeouts: u64,
    /// The server's user + system CPU time from before the spawn to stagewise's exit.
    server_cpu: Duration,
}

impl Run {
    /// Output tokens per second of the processing window.
    fn tokens_per_sec(&self) -> Option<f64> {
        self.base
            .window
            .map(|w| self.tokens_out as f64 / w.as_secs_f64())
    }

    /// Stagewise's share of the CPU time of the two processes, in percent.
    fn cpu_share(&self) -> f64 {
        let own = self.base.cpu.as_secs_f64();
        let all = own + self.server_cpu.as_secs_f64();
        if all > 0.0 {
            100.0 * own / all
        } else {
            0.0
        }
    }
}

/// `stagewise run` on the pipeline at `concurrency`, against the shared server, in a fresh
/// directory. Fails unless every item ended done or failed (exit 0 or 1).
fn run_stagewise(
    plan: &Plan,
    server: &Server,
    concurrency: usize,
    work: &Path,
    articles: &Path,
    i: usize,
) -> Result<Run, String> {
    let name = format!("stagewise-c{concurrency}-{i}");
    let dir = work.join(&name);
    let mut cmd = stagewise::prepare(&dir, &pipeline(server.port, concurrency))?;
    std::fs::copy(articles, dir.join("articles.jsonl"))
        .map_err(|e| format!("cannot copy the articles: {e}"))?;
    // The server asks for no key, and with none set the stage sends none.
    cmd.env_remove("OPENAI_API_KEY");
    let log = dir.join(stagewise::LOG);
    let server_before = server.cpu()?;
    let (m, server_after) = measure_with(cmd, Some(&log), Stdout::Discard, || server.cpu())
        .map_err(|e| format!("{name}: cannot run stagewise: {e}"))?;
    let server_cpu = server_after?.saturating_sub(server_before);

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
    let stage = summary
        .as_ref()
        .and_then(|s| s["stages"].as_array())
        .and_then(|stages| stages.iter().find(|s| s["name"] == "facts"))
        .cloned()
        .unwrap_or_default();
    let figure = |name: &str| stage["figures"][name].as_f64().unwrap_or(0.0) as u64;
    let run = Run {
        failed: failed.unwrap_or(0),
        tokens_in: figure("tokens_in"),
        tokens_out: figure("tokens_out"),
        calls: figure("calls"),
        invalid: figure("invalid_answers"),
        retries: stage["retries"].as_u64().unwrap_or(0),
        timeouts: stage["timeouts"].as_u64().unwrap_or(0),
        server_cpu,
        base: stats::Run::new(&m, done.unwrap_or(0), summary),
    };
    if !plan.keep {
        let _ = std::fs::remove_dir_all(&dir);
    }
    Ok(run)
}

/// `jsonl` of the articles → `llm` as in `examples/digest-local-model/pipeline.toml`, at
/// `concurrency` → `blackhole`.
fn pipeline(port: u16, concurrency: usize) -> String {
    stagewise::pipeline(
        "",
        &stagewise::jsonl("articles.jsonl"),
        &format!(
            r#"[[stage]]
name = "facts"
kind = "llm"
provider = "openai"
model = "smollm2"
base_url = "http://127.0.0.1:{port}/v1"
structured_output = "json_object"
{SCHEMA}
max_tokens = 512
invalid_output_attempts = 3
timeout = "300s"
{RETRY}
max_input_chars = 8000
cache = false
concurrency = {concurrency}
output = "facts"

{SINK}"#
        ),
    )
}

// ---------------------------------------------------------------------------------------------
// Reporting

/// A variant's name in the table.
fn name(concurrency: usize) -> String {
    format!("concurrency {concurrency}")
}

/// A duration in seconds with milliseconds, or "-".
fn seconds(d: Option<Duration>) -> String {
    d.map_or_else(|| "-".to_owned(), |d| format!("{:.3} s", d.as_secs_f64()))
}

/// The median of each figure over the runs of one variant (taken per figure), and the runs.
struct Median {
    /// In the order they were measured.
    runs: Vec<Run>,
    base: stats::Median,
    /// Items done per second of the window.
    rate: Option<f64>,
    tokens_in: u64,
    tokens_out: u64,
    tokens_per_sec: Option<f64>,
    done: u64,
    failed: u64,
    server_cpu: Duration,
    cpu_share: f64,
}

impl Median {
    /// The medians of `runs`, which it keeps. Panics if there are none.
    fn of(runs: Vec<Run>) -> Median {
        Median {
            base: stats::Median::of(runs.iter().map(|r| &r.base)),
            rate: median_f64(runs.iter().filter_map(|r| r.base.window_rate())),
            tokens_in: median(runs.iter().map(|r| r.tokens_in)).unwrap_or(0),
            tokens_out: median(runs.iter().map(|r| r.tokens_out)).unwrap_or(0),
            tokens_per_sec: median_f64(runs.iter().filter_map(Run::tokens_per_sec)),
            done: median(runs.iter().map(|r| r.base.items)).unwrap_or(0),
            failed: median(runs.iter().map(|r| r.failed)).unwrap_or(0),
            server_cpu: median(runs.iter().map(|r| r.server_cpu)).unwrap_or_default(),
            cpu_share: median_f64(runs.iter().map(Run::cpu_share)).unwrap_or(0.0),
            runs,
        }
    }

    /// A figure of each run, in the order the runs were measured: "3 / 0 / 1".
    fn per_run(&self, figure: impl Fn(&Run) -> String) -> String {
        let figures: Vec<String> = self.runs.iter().map(figure).collect();
        figures.join(" / ")
    }
}

/// What each column of the table holds.
const FOOTNOTE: &str = "(medians of the runs, each figure on its own; wall: stagewise's start to exit; window: `run started` to `summary`; \
     items/s: items done per second of the window; tok in, tok out: the `facts` stage's tokens_in and tokens_out (summary); \
     out tok/s: output tokens per second of the window; done, failed: items; CPU sw: stagewise's user+system (wait4); \
     CPU server: the server process's utime+stime (/proc/<pid>/stat) over the same run; sw share: stagewise's CPU / both processes' CPU)";

/// The table's header line.
fn header() -> String {
    format!(
        "{:<16} {:>4} {:>9} {:>9} {:>7} {:>6} {:>7} {:>10} {:>4} {:>6} {:>7} {:>10} {:>8}",
        "variant",
        "runs",
        "wall",
        "window",
        "items/s",
        "tok in",
        "tok out",
        "out tok/s",
        "done",
        "failed",
        "CPU sw",
        "CPU server",
        "sw share"
    )
}

/// A row of the table: the medians of one variant.
fn row(name: &str, m: &Median) -> String {
    format!(
        "{:<16} {:>4} {:>7.1} s {:>9} {:>7} {:>6} {:>7} {:>10} {:>4} {:>6} {:>5.2} s {:>8.1} s {:>7.2}%",
        name,
        m.runs.len(),
        m.base.wall.as_secs_f64(),
        m.base
            .window
            .map_or_else(|| "-".to_owned(), |w| format!("{:.1} s", w.as_secs_f64())),
        m.rate.map_or_else(|| "-".to_owned(), |r| format!("{r:.3}")),
        m.tokens_in,
        m.tokens_out,
        m.tokens_per_sec
            .map_or_else(|| "-".to_owned(), |t| format!("{t:.1}")),
        m.done,
        m.failed,
        m.base.cpu.as_secs_f64(),
        m.server_cpu.as_secs_f64(),
        m.cpu_share
    )
}
