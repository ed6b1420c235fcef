//! The seed's job and the digest pipeline side by side (issue 21, "The seed's job, side by
//! side"; figures and command in `BENCHMARKS.md`): `benches/seed_job.py`, a Python asyncio
//! script in the seed's style, and the shipped `pipeline.toml` (the digest pipeline), on the
//! same local page and LLM servers and the same items, in five scenarios.
//!
//! - Servers, fresh for every run, in this process on 127.0.0.1: the page server of
//!   `tests/util/http.rs` (`/slow/ID` answers its page after 100 ms; `/silent` reads the request
//!   and never answers) and the LLM server of `tests/util/llm.rs` (OpenAI chat completions,
//!   [`LLM_LATENCY`] per answer, no limit on requests at once), behind a small proxy here that
//!   sends the calls for the hanging items to the server's `silent` scenario (the server reads
//!   them and never answers). Both jobs put `Article <id>` at the head of the prompt; the proxy
//!   reads the id there. Every request is counted at the LLM server.
//! - Items: N articles (`SEED_BENCH_ITEMS`, default 200) in a SQLite database of the digest
//!   pipeline's schema (`examples/digest/articles.sql`), one copy per job, each URL a page of the
//!   page server. An item "hangs" when its id is 10 modulo 20: 5 %.
//! - The digest pipeline: `pipeline.toml` as shipped (download at concurrency 8 with a 20 s
//!   timeout, extract at 2, facts at 4 with the default 15 s timeout, 3 attempts, shutdown grace
//!   20 s, persist to SQLite), with environment overrides only where the bench needs them:
//!   the facts stage on the local server (`provider = "openai"`, its `base_url`, a prompt that
//!   starts `Article {{key}}`), `batch_size` = N, `allow_private_networks` (the servers are on
//!   127.0.0.1), `min_chars = 10` (the test page has a one-sentence article). The release
//!   binary `cargo bench` builds, `--log-format json`, log level `info`.
//! - The seed's job: `python3 benches/seed_job.py` (standard library only; its docstring says
//!   what is the seed's and what is simplified), `PYTHONUNBUFFERED=1` as in the seed's image,
//!   32 articles at once, the loop's default executor.
//!
//! Scenarios, each job run once in each (these are behaviours, not medians):
//!
//! - **a, healthy**: items digested per second, process start to exit.
//! - **b, 5 % of pages hang**: whether each finishes, how long it takes, items digested. Both
//!   get the same page timeout, [`PAGE_TIMEOUT`] (the script's `--fetch-timeout`; the pipeline's
//!   `download.timeout`, 20 s as shipped, lowered so the run fits the bench's time).
//! - **c, 5 % of LLM calls hang, then SIGTERM** [`TERM_AFTER`] after the start: exit code, time
//!   from SIGTERM to exit, what was logged after it, items recorded. A job still running
//!   [`PLATFORM_GRACE`] after the SIGTERM gets SIGKILL, as a container platform does.
//! - **d, `kill -9`** [`KILL_AFTER`] after the start, then run again to the end: LLM requests
//!   sent again for items whose answer the server had sent before the kill (the paid answers),
//!   counted at the server by the id in the prompt.
//! - **e, stderr to a slow reader**: stderr is a pipe of [`PIPE_CAPACITY`] bytes (Linux's
//!   smallest; its default of 64 KiB would fill later, as a longer run's does) that the bench
//!   reads at [`READER_RATE`] bytes a second. The script logs at its usual `INFO`; the digest
//!   pipeline runs twice, at its usual `info` and at `debug` (every library's debug events too:
//!   its worst case). Items/s, the longest wait for the next digest, log events dropped.
//!
//! Every run has a limit: a job still running then is killed and the row says so.
//!
//! `cargo bench --bench seed_side_by_side` runs all five (about 6 minutes with N = 200 on 2 cores);
//! `SEED_BENCH_ITEMS=2000` for a bigger run; `a`…`e` choose scenarios; `--python PATH` the
//! interpreter; `--keep` keeps the runs' directories. Without cargo's `--bench` flag (`cargo
//! test --benches` or `--all-targets`) it only smoke-tests itself: 20 items, shorter timeouts
//! and waits.

mod common;
// The servers, shared with the tests; this bench uses only part of them.
#[allow(dead_code)]
#[path = "../tests/util/llm.rs"]
mod llm_server;
#[allow(dead_code)]
#[path = "../tests/util/http.rs"]
mod page_server;

use common::cli;
use common::report::{load_average, print_load_average, progress};
use common::stagewise;
use llm_server::{LlmConfig, LlmServer, Scenario};
use page_server::Server as PageServer;
use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::fs::File;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;

/// Items per job and scenario unless `SEED_BENCH_ITEMS` says otherwise.
const DEFAULT_ITEMS: u64 = 200;
/// Items in the smoke run.
const SMOKE_ITEMS: u64 = 20;
/// An item hangs (its page in b, its LLM call in c) when its id is `HANG_EVERY / 2` modulo
/// `HANG_EVERY`: one in 20, 5 %.
const HANG_EVERY: u64 = 20;
/// The LLM server's answer time.
const LLM_LATENCY: Duration = Duration::from_millis(200);
/// The page timeout both jobs get in b.
const PAGE_TIMEOUT: Duration = Duration::from_secs(5);
/// c: SIGTERM this long after the start.
const TERM_AFTER: Duration = Duration::from_secs(20);
/// c: SIGKILL this long after the SIGTERM, if the job is still running (Render's default is
/// 30 s; the digest pipeline's `shutdown_grace` of 20 s fits in it).
const PLATFORM_GRACE: Duration = Duration::from_secs(30);
/// d: `kill -9` this long after the start.
const KILL_AFTER: Duration = Duration::from_secs(5);
/// e: the slow reader takes this many bytes a second of stderr.
const READER_RATE: u64 = 2048;
/// e: the pipe holds this many bytes (Linux's default is 64 KiB, which a 200-item run of the
/// script would not fill; the smallest, one page, shows the same sooner).
const PIPE_CAPACITY: i32 = 4096;
/// e: it reads this many bytes at a time.
const READER_CHUNK: usize = 256;
/// The script's articles at once (as `benches/seed_pattern.py`).
const SEED_CONCURRENCY: usize = 32;
/// The key both jobs send; the server only checks that there is one.
const KEY: &str = "sk-bench";
/// The seed's script.
const SEED_SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/benches/seed_job.py");
/// The digest pipeline's files in the workspace.
const PIPELINE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/pipeline.toml");
const SCHEMA: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/digest/articles.sql");
/// The prompt of the digest pipeline's facts stage in the bench: the default one with the item's
/// id in front, as the script sends it.
const PROMPT: &str = "Article {{key}}\n\nTitle: {{title}}\n\n{{text}}";

/// The times of one invocation: the full run's, or the smoke run's shorter ones.
struct Timing {
    llm_latency: Duration,
    page_timeout: Duration,
    term_after: Duration,
    platform_grace: Duration,
    /// Overrides of the digest pipeline's `shutdown_grace` and facts `timeout` (the smoke run's).
    shutdown_grace: Option<&'static str>,
    llm_timeout: Option<&'static str>,
    kill_after: Duration,
    reader_rate: u64,
}

/// What one invocation measures.
struct Plan {
    items: u64,
    python: String,
    scenarios: Vec<char>,
    keep: bool,
    full: bool,
    timing: Timing,
}

impl Plan {
    /// Items that hang in b and c.
    fn hanging(&self) -> u64 {
        (1..=self.items).filter(|&id| hangs(id)).count() as u64
    }
}

/// Whether item `id` is one of the 5 % that hang.
fn hangs(id: u64) -> bool {
    id % HANG_EVERY == HANG_EVERY / 2
}

/// The two jobs.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Job {
    Seed,
    Digest,
}

impl Job {
    fn name(self) -> &'static str {
        match self {
            Job::Seed => "seed job",
            Job::Digest => "digest pipeline",
        }
    }

    fn tag(self) -> &'static str {
        match self {
            Job::Seed => "seed",
            Job::Digest => "digest",
        }
    }
}

const JOBS: [Job; 2] = [Job::Seed, Job::Digest];

fn main() -> ExitCode {
    // `cargo bench` appends `--bench`; without it this is a smoke test (see the top of the file).
    let args = cli::args();
    let full = args.bench;
    let items = match std::env::var("SEED_BENCH_ITEMS") {
        Ok(v) => match v.parse::<u64>() {
            Ok(n) if n >= HANG_EVERY => n,
            _ => {
                eprintln!("SEED_BENCH_ITEMS must be a number of at least {HANG_EVERY}");
                return ExitCode::from(2);
            }
        },
        Err(_) if full => DEFAULT_ITEMS,
        Err(_) => SMOKE_ITEMS,
    };
    let timing = if full {
        Timing {
            llm_latency: LLM_LATENCY,
            page_timeout: PAGE_TIMEOUT,
            term_after: TERM_AFTER,
            platform_grace: PLATFORM_GRACE,
            shutdown_grace: None,
            llm_timeout: None,
            kill_after: KILL_AFTER,
            reader_rate: READER_RATE,
        }
    } else {
        Timing {
            llm_latency: Duration::from_millis(20),
            page_timeout: Duration::from_secs(1),
            term_after: Duration::from_secs(2),
            platform_grace: Duration::from_secs(5),
            shutdown_grace: Some("2s"),
            llm_timeout: Some("1s"),
            kill_after: Duration::from_secs(1),
            reader_rate: 4 * READER_RATE,
        }
    };
    let mut plan = Plan {
        items,
        python: "python3".to_owned(),
        scenarios: Vec::new(),
        keep: false,
        full,
        timing,
    };
    let read = args.read(1, |arg, rest| {
        match arg {
            "--python" => match rest.next() {
                Some(p) => plan.python = p,
                None => return false,
            },
            "--keep" => plan.keep = true,
            "a" | "b" | "c" | "d" | "e" => {
                let c = arg.chars().next().unwrap_or('a');
                if !plan.scenarios.contains(&c) {
                    plan.scenarios.push(c);
                }
            }
            _ => return false,
        }
        true
    });
    if read.is_err() {
        return cli::usage(
            "[SEED_BENCH_ITEMS=N] cargo bench --bench seed_side_by_side [-- [--python PATH] [--keep] [a] [b] [c] [d] [e]]",
        );
    }
    if plan.scenarios.is_empty() {
        plan.scenarios = vec!['a', 'b', 'c', 'd', 'e'];
    }

    let load_before = load_average();
    let began = Instant::now();
    progress(&format!(
        "{} items per job and scenario ({} hang in b and c); pages 100 ms each, LLM answers {} ms each",
        plan.items,
        plan.hanging(),
        plan.timing.llm_latency.as_millis()
    ));
    let mut report = Report::default();
    let result = bench(&plan, &mut report);
    report.print(&plan);
    print_load_average(&load_before);
    println!("bench wall time: {:.0} s", began.elapsed().as_secs_f64());
    if !plan.full {
        println!(
            "\nsmoke run (no `--bench` flag): {} items, shorter timeouts and waits",
            plan.items
        );
    }
    cli::exit(result)
}

// ---------------------------------------------------------------------------------------------
// The scenarios

fn bench(plan: &Plan, report: &mut Report) -> Result<(), String> {
    let python_found = Command::new(&plan.python)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !python_found {
        return Err(format!(
            "`{}` not found: cannot run the seed's job",
            plan.python
        ));
    }
    let work = stagewise::work_dir("seed-side-by-side")?;
    for &scenario in &plan.scenarios {
        for job in JOBS {
            progress(&format!("{scenario}: {}", job.name()));
            let dir = work.join(format!("{scenario}-{}", job.tag()));
            let cell = match scenario {
                'a' => healthy(plan, job, &dir)?,
                'b' => hanging_pages(plan, job, &dir)?,
                'c' => hanging_llm_and_sigterm(plan, job, &dir)?,
                'd' => kill_and_rerun(plan, job, &dir)?,
                _ => slow_reader(plan, job, &dir)?,
            };
            progress(&format!("  {}", cell.raw));
            report.add(scenario, job, cell);
            if !plan.keep {
                let _ = std::fs::remove_dir_all(&dir);
            }
        }
    }
    if plan.keep {
        progress(&format!("kept the runs' directories in {}", work.display()));
    } else {
        let _ = std::fs::remove_dir_all(&work);
    }
    Ok(())
}

/// One job in one scenario: the table's cell and the raw figures.
struct Outcome {
    table: String,
    raw: String,
}

/// a: both jobs on healthy servers.
fn healthy(plan: &Plan, job: Job, dir: &Path) -> Result<Outcome, String> {
    let servers = Servers::start(plan, false);
    let setup = Setup::new(plan, job, dir, &servers, |id| servers.page(id))?;
    let cap = Duration::from_secs(60) + Duration::from_millis(500 * plan.items);
    let run = setup.run(&Watch::until(cap), None)?;
    let rate = run.rows as f64 / run.wall.as_secs_f64();
    Ok(Outcome {
        table: format!(
            "**{rate:.1} items/s** ({} of {} in {:.1} s), exit {}",
            run.rows,
            plan.items,
            run.wall.as_secs_f64(),
            run.exit()
        ),
        raw: format!(
            "{}; {rate:.2} items/s; LLM calls {}; CPU {:.2} s; {}",
            run.summary(plan),
            servers.llm.calls(),
            run.cpu.as_secs_f64(),
            run.progress_note()
        ),
    })
}

/// b: the pages of 5 % of the items never answer.
fn hanging_pages(plan: &Plan, job: Job, dir: &Path) -> Result<Outcome, String> {
    let servers = Servers::start(plan, false);
    let setup = Setup::new(plan, job, dir, &servers, |id| {
        if hangs(id) {
            servers.pages.url("/silent")
        } else {
            servers.page(id)
        }
    })?;
    let t = &plan.timing;
    let expected = Duration::from_millis(100 * plan.items)
        + t.page_timeout * u32::try_from(plan.hanging()).unwrap_or(u32::MAX);
    let cap = Duration::from_secs(30) + expected.mul_f64(1.5);
    let run = setup.run(&Watch::until(cap), None)?;
    let page_hits = servers.pages.hits("/silent");
    let outcome = if run.capped {
        format!("**did not finish** in {:.0} s (stopped)", cap.as_secs_f64())
    } else {
        format!("**finished in {:.1} s**", run.wall.as_secs_f64())
    };
    Ok(Outcome {
        table: format!(
            "{outcome}: {} of {} digested, {}, exit {}",
            run.rows,
            plan.items,
            run.failures_told(job),
            run.exit()
        ),
        raw: format!(
            "{}; requests to the hanging page {page_hits}; LLM calls {}; {}",
            run.summary(plan),
            servers.llm.calls(),
            run.progress_note()
        ),
    })
}

/// c: the LLM calls of 5 % of the items never get an answer; SIGTERM after a while.
fn hanging_llm_and_sigterm(plan: &Plan, job: Job, dir: &Path) -> Result<Outcome, String> {
    let servers = Servers::start(plan, true);
    let setup = Setup::new(plan, job, dir, &servers, |id| servers.page(id))?;
    let t = &plan.timing;
    let watch = Watch {
        term: Some((t.term_after, t.platform_grace)),
        ..Watch::until(t.term_after + t.platform_grace + Duration::from_secs(10))
    };
    let run = setup.run(&watch, None)?;
    let after_term = run.term_to_exit.map_or_else(|| "-".to_owned(), secs);
    let hung_calls = servers
        .llm
        .requests()
        .iter()
        .filter(|r| r.scenario == Some(Scenario::Silent))
        .count();
    let exit = if run.platform_killed {
        format!(
            "**no exit: SIGKILL** {} s after SIGTERM (exit signal 9)",
            t.platform_grace.as_secs()
        )
    } else {
        format!("**exit {}** {after_term} after SIGTERM", run.exit())
    };
    let logged = run.logged_after_term(job);
    Ok(Outcome {
        table: format!(
            "{exit}; logged after SIGTERM: {}; {} of {} recorded",
            logged.short, run.rows, plan.items
        ),
        raw: format!(
            "{}; hung LLM calls at the server {hung_calls}; LLM calls {}; SIGTERM at {}; after it, {} bytes of stderr: {}",
            run.summary(plan),
            servers.llm.calls(),
            secs(t.term_after),
            logged.bytes,
            logged.long
        ),
    })
}

/// d: `kill -9` in the middle, then the same job again on the same servers, to its end.
fn kill_and_rerun(plan: &Plan, job: Job, dir: &Path) -> Result<Outcome, String> {
    let servers = Servers::start(plan, false);
    let setup = Setup::new(plan, job, dir, &servers, |id| servers.page(id))?;
    let t = &plan.timing;
    // The answers the server had sent when the process died, and how many requests it had seen.
    let at_kill: Mutex<Option<(BTreeSet<u64>, usize)>> = Mutex::new(None);
    let snapshot = || {
        let requests = servers.llm.requests();
        let answered: BTreeSet<u64> = requests
            .iter()
            .filter(|r| r.status == Some(200))
            .filter_map(|r| r.body.as_ref().and_then(article_id))
            .collect();
        *at_kill.lock().unwrap_or_else(|e| e.into_inner()) = Some((answered, requests.len()));
    };
    let watch = Watch {
        kill: Some(t.kill_after),
        ..Watch::until(t.kill_after + Duration::from_secs(30))
    };
    let first = setup.run(&watch, Some(&snapshot))?;
    let (answered, seen) = at_kill
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .take()
        .unwrap_or_default();
    let rows_at_kill = first.rows;
    let cap = Duration::from_secs(60) + Duration::from_millis(500 * plan.items);
    let second = setup.run(&Watch::until(cap), None)?;
    let requests = servers.llm.requests();
    let again: Vec<u64> = requests[seen.min(requests.len())..]
        .iter()
        .filter_map(|r| r.body.as_ref().and_then(article_id))
        .filter(|id| answered.contains(id))
        .collect();
    let again_items: BTreeSet<u64> = again.iter().copied().collect();
    let mut before: Vec<u64> = answered.iter().copied().collect();
    before.sort_unstable();
    let in_flight = requests[..seen.min(requests.len())]
        .iter()
        .filter(|r| {
            r.body
                .as_ref()
                .and_then(article_id)
                .is_some_and(|id| !answered.contains(&id))
        })
        .count();
    Ok(Outcome {
        table: format!(
            "**{} of the {} answers received before the kill requested again**; {} LLM calls in all for {} items; {} of {} recorded after the rerun (exit {})",
            again_items.len(),
            answered.len(),
            requests.len(),
            plan.items,
            second.rows,
            plan.items,
            second.exit()
        ),
        raw: format!(
            "killed at {}: {} recorded, {} answers sent by the server, {} more calls in flight; rerun: {}; calls in the rerun {}, of them for answered items {} ({} items){}",
            secs(first.wall),
            rows_at_kill,
            answered.len(),
            in_flight,
            second.summary(plan),
            requests.len() - seen.min(requests.len()),
            again.len(),
            again_items.len(),
            if again_items.is_empty() {
                String::new()
            } else {
                format!(
                    ": ids {}",
                    again_items
                        .iter()
                        .map(u64::to_string)
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            }
        ),
    })
}

/// e: stderr into a pipe that is read slowly. The digest pipeline runs twice: at its usual
/// level (`info`), as the script runs at its usual `INFO`, and at `debug`, its worst case.
fn slow_reader(plan: &Plan, job: Job, dir: &Path) -> Result<Outcome, String> {
    let levels: &[bool] = match job {
        Job::Seed => &[false],
        Job::Digest => &[false, true],
    };
    let mut table = Vec::new();
    let mut raw = Vec::new();
    for &debug in levels {
        let servers = Servers::start(plan, false);
        let dir = if debug {
            dir.with_extension("debug")
        } else {
            dir.to_owned()
        };
        let mut setup = Setup::new(plan, job, &dir, &servers, |id| servers.page(id))?;
        setup.debug_log = debug;
        let watch = Watch {
            reader_rate: Some(plan.timing.reader_rate),
            ..Watch::until(Duration::from_secs(120) + Duration::from_millis(500 * plan.items))
        };
        let run = setup.run(&watch, None)?;
        let rate = run.rows as f64 / run.wall.as_secs_f64();
        let finished = if run.capped {
            "**did not finish** (stopped)".to_owned()
        } else {
            format!("exit {}", run.exit())
        };
        let level = match (job, debug) {
            (Job::Seed, _) => "",
            (Job::Digest, false) => "`info`: ",
            (Job::Digest, true) => "`debug`: ",
        };
        let dropped = run
            .stagewise_summary()
            .and_then(|s| s["log_events_dropped"].as_u64());
        table.push(format!(
            "{level}**{rate:.1} items/s** ({} of {} in {:.1} s), longest wait for the next digest {}{}, {finished}",
            run.rows,
            plan.items,
            run.wall.as_secs_f64(),
            secs(run.longest_gap()),
            dropped.map_or_else(String::new, |d| format!(", {d} log events dropped"))
        ));
        raw.push(format!(
            "{level}{}; {rate:.2} items/s; stderr {} bytes, {} of them read while it ran; {}; last digest to exit {}",
            run.summary(plan),
            run.stderr_bytes,
            run.read_while_running,
            run.progress_note(),
            secs(run.wall.saturating_sub(run.progress.last().map_or(Duration::ZERO, |p| p.0)))
        ));
        if !plan.keep && debug {
            let _ = std::fs::remove_dir_all(&dir);
        }
    }
    Ok(Outcome {
        table: table.join("; "),
        raw: raw.join("\n  "),
    })
}

// ---------------------------------------------------------------------------------------------
// The servers

/// A run's page server, LLM server, and the proxy in front of the LLM server.
struct Servers {
    pages: PageServer,
    llm: LlmServer,
    proxy: SocketAddr,
}

impl Servers {
    /// Fresh servers; with `hang_llm`, the proxy sends the calls of the hanging items to the
    /// server's `silent` scenario.
    fn start(plan: &Plan, hang_llm: bool) -> Servers {
        let llm = LlmServer::start(LlmConfig {
            latency: plan.timing.llm_latency,
            ..LlmConfig::default()
        });
        let upstream = SocketAddr::from(([127, 0, 0, 1], llm.port()));
        let proxy = start_proxy(upstream, hang_llm).expect("start the LLM proxy");
        Servers {
            pages: PageServer::start(),
            llm,
            proxy,
        }
    }

    /// Item `id`'s page: 100 ms, then the test page.
    fn page(&self, id: u64) -> String {
        self.pages.url(&format!("/slow/{id}"))
    }

    /// The `base_url` both jobs get: the proxy, for the server's `ok` scenario.
    fn llm_base_url(&self) -> String {
        format!("http://{}/s/{}/v1", self.proxy, Scenario::Ok.name())
    }
}

/// The item id at the head of a chat-completions request's prompt (`Article <id>`).
fn article_id(body: &Value) -> Option<u64> {
    body["messages"].as_array()?.iter().find_map(|m| {
        let digits: String = m["content"]
            .as_str()?
            .strip_prefix("Article ")?
            .chars()
            .take_while(char::is_ascii_digit)
            .collect();
        digits.parse().ok()
    })
}

/// A proxy on 127.0.0.1 in front of the LLM server: each request goes to `upstream` on a
/// connection of its own (`Connection: close`) and its response comes back on the client's
/// connection (kept alive unless the client asked to close it). With `hang`, a request for a
/// hanging item goes to the `silent` scenario instead of `ok`. Its threads live as long as
/// this process.
fn start_proxy(upstream: SocketAddr, hang: bool) -> io::Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    thread::Builder::new()
        .name("llm-proxy-accept".into())
        .spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { continue };
                let _ = thread::Builder::new()
                    .name("llm-proxy".into())
                    .spawn(move || {
                        // A client that went away (killed, timed out) ends its connection.
                        let _ = proxy_connection(client, upstream, hang);
                    });
            }
        })?;
    Ok(addr)
}

fn proxy_connection(client: TcpStream, upstream: SocketAddr, hang: bool) -> io::Result<()> {
    client.set_nodelay(true)?;
    let mut reader = BufReader::new(client.try_clone()?);
    let mut client = client;
    loop {
        let mut head = Vec::new();
        loop {
            if reader.read_until(b'\n', &mut head)? == 0 {
                return Ok(());
            }
            if head.ends_with(b"\r\n\r\n") {
                break;
            }
        }
        let head = String::from_utf8_lossy(&head).into_owned();
        let mut lines = head.split("\r\n");
        let mut request_line = lines.next().unwrap_or("").to_owned();
        let mut headers = Vec::new();
        let mut length = 0usize;
        let mut close = false;
        for line in lines.filter(|l| !l.is_empty()) {
            let Some((name, value)) = line.split_once(':') else {
                continue;
            };
            let value = value.trim();
            if name.eq_ignore_ascii_case("content-length") {
                length = value.parse().unwrap_or(0);
            } else if name.eq_ignore_ascii_case("connection") {
                close = value.eq_ignore_ascii_case("close");
                continue;
            }
            headers.push(line.to_owned());
        }
        let mut body = vec![0; length];
        reader.read_exact(&mut body)?;
        let id = serde_json::from_slice::<Value>(&body)
            .ok()
            .as_ref()
            .and_then(article_id);
        if hang && id.is_some_and(hangs) {
            let ok = format!("/s/{}/", Scenario::Ok.name());
            let silent = format!("/s/{}/", Scenario::Silent.name());
            request_line = request_line.replacen(&ok, &silent, 1);
        }
        let mut out = format!("{request_line}\r\n");
        for h in &headers {
            out.push_str(h);
            out.push_str("\r\n");
        }
        out.push_str("Connection: close\r\n\r\n");
        let mut out = out.into_bytes();
        out.extend_from_slice(&body);
        let mut up = TcpStream::connect(upstream)?;
        up.set_nodelay(true)?;
        up.write_all(&out)?;
        let mut response = Vec::new();
        up.read_to_end(&mut response)?;
        if response.is_empty() {
            return Ok(());
        }
        if !close {
            // The client keeps its connection: drop the server's `Connection: close` from the
            // head (the response has its Content-Length).
            if let Some(end) = response.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&response[..end + 4])
                    .replace("Connection: close\r\n", "");
                let mut kept = head.into_bytes();
                kept.extend_from_slice(&response[end + 4..]);
                response = kept;
            }
        }
        client.write_all(&response)?;
        if close {
            return Ok(());
        }
    }
}

// ---------------------------------------------------------------------------------------------
// A job's run

/// A job ready to run in its directory, with its database of items.
struct Setup<'a> {
    plan: &'a Plan,
    job: Job,
    dir: PathBuf,
    /// The database the job reads its items from and writes its digests to.
    db: PathBuf,
    llm_base_url: String,
    /// The page server's root URL.
    pages_url: String,
    /// e: stagewise at log level `debug`.
    debug_log: bool,
    /// Runs so far (each writes its logs to files of its own).
    runs: std::cell::Cell<u32>,
}

impl<'a> Setup<'a> {
    /// A fresh `dir` with the job's files and a database of the plan's items, item `id`'s URL
    /// being `url(id)`.
    fn new(
        plan: &'a Plan,
        job: Job,
        dir: &Path,
        servers: &Servers,
        url: impl Fn(u64) -> String,
    ) -> Result<Setup<'a>, String> {
        let dir = stagewise::fresh_dir(dir.to_owned())?;
        let db = match job {
            Job::Digest => {
                let pipeline = std::fs::read_to_string(PIPELINE)
                    .map_err(|e| format!("cannot read {PIPELINE}: {e}"))?;
                stagewise::write(&dir.join("pipeline.toml"), &pipeline)?;
                let schema_dir = dir.join("examples/digest");
                std::fs::create_dir_all(&schema_dir)
                    .map_err(|e| format!("cannot create {}: {e}", schema_dir.display()))?;
                std::fs::copy(SCHEMA, schema_dir.join("articles.sql"))
                    .map_err(|e| format!("cannot copy {SCHEMA}: {e}"))?;
                std::fs::create_dir_all(dir.join("data"))
                    .map_err(|e| format!("cannot create {}/data: {e}", dir.display()))?;
                dir.join("data/digest.db")
            }
            Job::Seed => dir.join("digest.db"),
        };
        write_articles(&db, plan.items, url)?;
        Ok(Setup {
            plan,
            job,
            dir,
            db,
            llm_base_url: servers.llm_base_url(),
            pages_url: servers.pages.url("/"),
            debug_log: false,
            runs: std::cell::Cell::new(0),
        })
    }

    fn command(&self) -> Command {
        let t = &self.plan.timing;
        match self.job {
            Job::Digest => {
                let mut cmd = Command::new(env!("CARGO_BIN_EXE_stagewise"));
                cmd.args(["run", "pipeline.toml", "--log-format", "json"])
                    .current_dir(&self.dir);
                // A developer's overrides would change what is measured.
                for (key, _) in std::env::vars_os() {
                    if key.to_string_lossy().starts_with("STAGEWISE_") {
                        cmd.env_remove(key);
                    }
                }
                let log = if self.debug_log { "debug" } else { "info" };
                let mut env = vec![
                    ("STAGEWISE_LOG", log.to_owned()),
                    ("OPENAI_API_KEY", KEY.to_owned()),
                    (
                        "STAGEWISE_PIPELINE__BATCH_SIZE",
                        self.plan.items.to_string(),
                    ),
                    (
                        "STAGEWISE_STAGE__DOWNLOAD__ALLOW_PRIVATE_NETWORKS",
                        "true".to_owned(),
                    ),
                    // The shipped value is a folder of the repository's pages.
                    (
                        "STAGEWISE_STAGE__DOWNLOAD__BASE_URL",
                        self.pages_url.clone(),
                    ),
                    (
                        "STAGEWISE_STAGE__DOWNLOAD__TIMEOUT",
                        format!("{}ms", t.page_timeout.as_millis()),
                    ),
                    ("STAGEWISE_STAGE__EXTRACT__MIN_CHARS", "10".to_owned()),
                    ("STAGEWISE_STAGE__FACTS__PROVIDER", "openai".to_owned()),
                    ("STAGEWISE_STAGE__FACTS__MODEL", "bench".to_owned()),
                    (
                        "STAGEWISE_STAGE__FACTS__BASE_URL",
                        self.llm_base_url.clone(),
                    ),
                    ("STAGEWISE_STAGE__FACTS__PROMPT", PROMPT.to_owned()),
                ];
                if let Some(grace) = t.shutdown_grace {
                    env.push(("STAGEWISE_PIPELINE__SHUTDOWN_GRACE", grace.to_owned()));
                    env.push((
                        "STAGEWISE_PIPELINE__TIMEOUTS_OUTLAST_GRACE",
                        "true".to_owned(),
                    ));
                }
                if let Some(timeout) = t.llm_timeout {
                    env.push(("STAGEWISE_STAGE__FACTS__TIMEOUT", timeout.to_owned()));
                }
                cmd.envs(env);
                cmd
            }
            Job::Seed => {
                let mut cmd = Command::new(&self.plan.python);
                cmd.arg(SEED_SCRIPT)
                    .arg(&self.db)
                    .args(["--llm-base-url", &self.llm_base_url])
                    .args(["--concurrency", &SEED_CONCURRENCY.to_string()])
                    .args(["--batch-size", &self.plan.items.to_string()])
                    .args([
                        "--fetch-timeout",
                        &format!("{}", t.page_timeout.as_secs_f64()),
                    ])
                    .current_dir(&self.dir)
                    .env("PYTHONUNBUFFERED", "1")
                    .env("OPENAI_API_KEY", KEY);
                cmd
            }
        }
    }

    /// Run the job once under `watch`; `at_kill` is called the moment `watch.kill` fires.
    fn run(&self, watch: &Watch, at_kill: Option<&dyn Fn()>) -> Result<Run, String> {
        let n = self.runs.get() + 1;
        self.runs.set(n);
        let stderr_path = self.dir.join(format!("stderr-{n}.log"));
        let stdout_path = self.dir.join(format!("stdout-{n}.log"));
        run_job(self, watch, at_kill, &stderr_path, &stdout_path)
            .map_err(|e| format!("{}: cannot run: {e}", self.job.name()))
    }
}

/// Create `db` with the digest pipeline's tables (the schema file's, without its rows) and
/// `items` articles numbered from 1.
fn write_articles(db: &Path, items: u64, url: impl Fn(u64) -> String) -> Result<(), String> {
    let fail = |e: rusqlite::Error| format!("cannot write {}: {e}", db.display());
    let schema =
        std::fs::read_to_string(SCHEMA).map_err(|e| format!("cannot read {SCHEMA}: {e}"))?;
    let conn = rusqlite::Connection::open(db).map_err(fail)?;
    conn.execute_batch(&schema).map_err(fail)?;
    conn.execute_batch("BEGIN; DELETE FROM articles;")
        .map_err(fail)?;
    {
        let mut insert = conn
            .prepare("INSERT INTO articles (id, url, source, added_at) VALUES (?1, ?2, 'bench', '2026-12-07T00:00:00Z')")
            .map_err(fail)?;
        for id in 1..=items {
            insert
                .execute(rusqlite::params![id as i64, url(id)])
                .map_err(fail)?;
        }
    }
    conn.execute_batch("COMMIT").map_err(fail)?;
    Ok(())
}

/// Digests in `db` now; 0 if it cannot be read at the moment.
fn digests(db: &Path) -> u64 {
    let Ok(conn) =
        rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
    else {
        return 0;
    };
    let _ = conn.busy_timeout(Duration::from_millis(100));
    conn.query_row("SELECT count(*) FROM digests", [], |r| r.get::<_, i64>(0))
        .map_or(0, |n| u64::try_from(n).unwrap_or(0))
}

/// What the bench does to a running job.
struct Watch {
    /// SIGTERM this long after the start, then SIGKILL the second duration later if it still runs.
    term: Option<(Duration, Duration)>,
    /// SIGKILL this long after the start.
    kill: Option<Duration>,
    /// SIGKILL if it still runs this long after the start: the bench's limit.
    cap: Duration,
    /// stderr to a pipe read at this many bytes a second (else to a file).
    reader_rate: Option<u64>,
}

impl Watch {
    fn until(cap: Duration) -> Watch {
        Watch {
            term: None,
            kill: None,
            cap,
            reader_rate: None,
        }
    }
}

/// What one run of a job did.
struct Run {
    job: Job,
    status: ExitStatus,
    wall: Duration,
    cpu: Duration,
    /// Stopped by the bench's limit.
    capped: bool,
    /// Killed by the platform's SIGKILL after the SIGTERM.
    platform_killed: bool,
    /// From the SIGTERM to the exit.
    term_to_exit: Option<Duration>,
    /// Digests at the end.
    rows: u64,
    /// (time since the start, digests) at every change of the count.
    progress: Vec<(Duration, u64)>,
    stderr_path: PathBuf,
    stdout_path: PathBuf,
    /// Bytes of stderr before the SIGTERM.
    stderr_at_term: Option<u64>,
    /// e: stderr bytes in all, and those read before the job exited.
    stderr_bytes: u64,
    read_while_running: u64,
}

impl Run {
    /// "0", "75", "signal 9".
    fn exit(&self) -> String {
        match (self.status.code(), self.status.signal()) {
            (Some(code), _) => code.to_string(),
            (None, Some(sig)) => format!("signal {sig}"),
            _ => "unknown".to_owned(),
        }
    }

    /// The figures every scenario prints.
    fn summary(&self, plan: &Plan) -> String {
        let mut s = format!(
            "exit {}, wall {}, {} of {} digested",
            self.exit(),
            secs(self.wall),
            self.rows,
            plan.items
        );
        if self.capped {
            s.push_str(", stopped by the bench's limit");
        }
        if let Some(summary) = self.stagewise_summary() {
            let n = |k: &str| summary[k].as_u64().unwrap_or(0);
            let _ = write!(
                s,
                "; stagewise's summary: done {}, failed {}, skipped {}, outcome {}",
                n("done"),
                n("failed"),
                n("skipped"),
                summary["outcome"].as_str().unwrap_or("-")
            );
        }
        if let Some(totals) = self.seed_totals() {
            let _ = write!(s, "; the script's totals: {totals}");
        }
        s
    }

    /// The digest pipeline's summary file, if the run wrote one.
    fn stagewise_summary(&self) -> Option<Value> {
        if self.job != Job::Digest {
            return None;
        }
        let dir = self.stderr_path.parent()?;
        let text = std::fs::read_to_string(dir.join(".stagewise/digest.summary.json")).ok()?;
        serde_json::from_str(&text).ok()
    }

    /// The JSON line the script prints at the end, if it got there.
    fn seed_totals(&self) -> Option<String> {
        if self.job != Job::Seed {
            return None;
        }
        let out = std::fs::read_to_string(&self.stdout_path).ok()?;
        out.lines()
            .rev()
            .find(|l| l.starts_with('{'))
            .map(str::to_owned)
    }

    /// How the job tells of the items it could not do (b).
    fn failures_told(&self, job: Job) -> String {
        match job {
            Job::Digest => match self.stagewise_summary() {
                Some(s) => format!(
                    "{} failed in the summary",
                    s["failed"].as_u64().unwrap_or(0)
                ),
                None => "no summary".to_owned(),
            },
            Job::Seed => {
                let log = std::fs::read_to_string(&self.stderr_path).unwrap_or_default();
                format!(
                    "{} failures in the log only",
                    log.matches(" - ERROR - ").count()
                )
            }
        }
    }

    /// The longest time without a new digest, from the first to the last one.
    fn longest_gap(&self) -> Duration {
        self.progress
            .windows(2)
            .map(|w| w[1].0.saturating_sub(w[0].0))
            .max()
            .unwrap_or_default()
    }

    /// When the first and the last digest were seen, and the longest gap.
    fn progress_note(&self) -> String {
        let first = self.progress.first().map(|p| p.0);
        let last = self.progress.last().map(|p| p.0);
        format!(
            "first digest at {}, last at {}, longest wait for the next one {}",
            first.map_or_else(|| "-".to_owned(), secs),
            last.map_or_else(|| "-".to_owned(), secs),
            secs(self.longest_gap())
        )
    }

    /// What the job wrote to stderr (and the script to stdout) after the SIGTERM.
    fn logged_after_term(&self, job: Job) -> Logged {
        let text = std::fs::read(&self.stderr_path).unwrap_or_default();
        let from = usize::try_from(self.stderr_at_term.unwrap_or(0))
            .unwrap_or(0)
            .min(text.len());
        let after = String::from_utf8_lossy(&text[from..]).into_owned();
        let bytes = after.len();
        match job {
            Job::Digest => {
                let mut messages: Vec<String> = Vec::new();
                for line in after.lines() {
                    let Ok(v) = serde_json::from_str::<Value>(line) else {
                        continue;
                    };
                    let Some(m) = v["message"].as_str() else {
                        continue;
                    };
                    let m = m.to_owned();
                    if messages.last() != Some(&m) {
                        messages.push(m);
                    }
                }
                // For the table: the stop's own events, from the first one on (the progress
                // lines and other events are in the raw figures).
                let stop: Vec<&String> = messages
                    .iter()
                    .skip_while(|m| !m.starts_with("stopping"))
                    .filter(|m| !matches!(m.as_str(), "heartbeat" | "slow attempt"))
                    .collect();
                let short: Vec<String> = stop
                    .iter()
                    .take(4)
                    .map(|m| format!("`{}`", clip(m, 60)))
                    .collect();
                Logged {
                    short: if messages.is_empty() {
                        "nothing".to_owned()
                    } else {
                        format!(
                            "{} events ({}{})",
                            after.lines().count(),
                            short.join(", "),
                            if stop.len() > 4 { ", …" } else { "" }
                        )
                    },
                    long: messages.join(" | "),
                    bytes,
                }
            }
            Job::Seed => {
                let handler = after.contains("[SIGNAL-HANDLER]");
                let lines: Vec<&str> = after.lines().filter(|l| !l.trim().is_empty()).collect();
                Logged {
                    short: if handler {
                        "the handler's `[SIGNAL-HANDLER] Received signal - flushing and exiting gracefully`, then nothing"
                            .to_owned()
                    } else if lines.is_empty() {
                        "nothing".to_owned()
                    } else {
                        format!("{} lines, not the handler's", lines.len())
                    },
                    long: lines.join(" | "),
                    bytes,
                }
            }
        }
    }
}

/// What was logged after the SIGTERM: for the table, in full, its size.
struct Logged {
    short: String,
    long: String,
    bytes: usize,
}

fn run_job(
    setup: &Setup<'_>,
    watch: &Watch,
    at_kill: Option<&dyn Fn()>,
    stderr_path: &Path,
    stdout_path: &Path,
) -> io::Result<Run> {
    let mut cmd = setup.command();
    cmd.stdin(Stdio::null())
        .stdout(Stdio::from(File::create(stdout_path)?));
    // e: the read side of the pipe, read slowly by a thread of its own.
    let mut slow = None;
    if let Some(rate) = watch.reader_rate {
        let (reader, writer) = io::pipe()?;
        shrink_pipe(&writer, PIPE_CAPACITY);
        cmd.stderr(writer);
        slow = Some((reader, rate));
    } else {
        cmd.stderr(Stdio::from(File::create(stderr_path)?));
    }
    let began = Instant::now();
    let mut child = cmd.spawn()?;
    // The command holds the pipe's write end: the reader sees the end only once it is dropped.
    drop(cmd);
    let exited = Arc::new(AtomicBool::new(false));
    let read_while_running = Arc::new(AtomicU64::new(0));
    let reader = slow.map(|(pipe, rate)| {
        let exited = Arc::clone(&exited);
        let counted = Arc::clone(&read_while_running);
        let copy = File::create(stderr_path);
        thread::spawn(move || slow_read(pipe, rate, &exited, &counted, copy.ok()))
    });
    let pid = child.id();
    let mut progress = Vec::new();
    let mut rows = 0;
    let mut next_sample = Duration::ZERO;
    let mut termed: Option<Duration> = None;
    let mut stderr_at_term = None;
    let (mut capped, mut platform_killed, mut killed) = (false, false, false);
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        let now = began.elapsed();
        if now >= next_sample {
            let n = digests(&setup.db);
            if n > rows {
                rows = n;
                progress.push((now, n));
            }
            next_sample = now + Duration::from_millis(100);
        }
        if let Some((at, grace)) = watch.term {
            if termed.is_none() && now >= at {
                stderr_at_term = std::fs::metadata(stderr_path).ok().map(|m| m.len());
                send_signal(pid, libc::SIGTERM);
                termed = Some(now);
            }
            if !killed && termed.is_some_and(|t| now >= t + grace) {
                child.kill()?;
                killed = true;
                platform_killed = true;
            }
        }
        if let Some(at) = watch.kill {
            if !killed && now >= at {
                child.kill()?;
                killed = true;
                if let Some(f) = at_kill {
                    f();
                }
            }
        }
        if !killed && now >= watch.cap {
            child.kill()?;
            killed = true;
            capped = true;
        }
        thread::sleep(Duration::from_millis(10));
    };
    let wall = began.elapsed();
    exited.store(true, Ordering::SeqCst);
    let stderr_bytes = reader.map_or_else(
        || std::fs::metadata(stderr_path).map_or(0, |m| m.len()),
        |r| r.join().unwrap_or(0),
    );
    let n = digests(&setup.db);
    if n > rows {
        rows = n;
        progress.push((wall, n));
    }
    Ok(Run {
        job: setup.job,
        status,
        wall,
        cpu: children_cpu_since_last(),
        capped,
        platform_killed,
        term_to_exit: termed.map(|t| wall.saturating_sub(t)),
        rows,
        progress,
        stderr_path: stderr_path.to_owned(),
        stdout_path: stdout_path.to_owned(),
        stderr_at_term,
        stderr_bytes,
        read_while_running: read_while_running.load(Ordering::SeqCst),
    })
}

/// Read `pipe` at `rate` bytes a second, `READER_CHUNK` at a time, copying into `copy`, until
/// the job has exited; then the rest at once. Returns the bytes read in all.
fn slow_read(
    mut pipe: io::PipeReader,
    rate: u64,
    exited: &AtomicBool,
    while_running: &AtomicU64,
    mut copy: Option<File>,
) -> u64 {
    let pause = Duration::from_secs_f64(READER_CHUNK as f64 / rate as f64);
    let mut buf = [0u8; READER_CHUNK];
    let mut total = 0u64;
    loop {
        if exited.load(Ordering::SeqCst) {
            let mut rest = Vec::new();
            let _ = pipe.read_to_end(&mut rest);
            if let Some(c) = copy.as_mut() {
                let _ = c.write_all(&rest);
            }
            return total + rest.len() as u64;
        }
        match pipe.read(&mut buf) {
            Ok(0) | Err(_) => return total,
            Ok(n) => {
                total += n as u64;
                if !exited.load(Ordering::SeqCst) {
                    while_running.fetch_add(n as u64, Ordering::SeqCst);
                }
                if let Some(c) = copy.as_mut() {
                    let _ = c.write_all(&buf[..n]);
                }
            }
        }
        thread::sleep(pause);
    }
}

/// The CPU time (user + system) of the children reaped since the last call.
fn children_cpu_since_last() -> Duration {
    static LAST: Mutex<Duration> = Mutex::new(Duration::ZERO);
    let now = children_cpu();
    let mut last = LAST.lock().unwrap_or_else(|e| e.into_inner());
    let spent = now.saturating_sub(*last);
    *last = now;
    spent
}

/// Sending a signal and reading the children's rusage are the bench's only `unsafe`: libc has
/// no safe wrappers for them in std.
#[allow(unsafe_code)]
fn children_cpu() -> Duration {
    let mut usage = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: `usage` is valid and writable for the call.
    let ok = unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, usage.as_mut_ptr()) } == 0;
    if !ok {
        return Duration::ZERO;
    }
    // SAFETY: zero is a valid `rusage` (plain integers), and getrusage has filled it in.
    let usage = unsafe { usage.assume_init() };
    common::process::timeval(usage.ru_utime) + common::process::timeval(usage.ru_stime)
}

/// Make the pipe of `end` hold `bytes` (at least a page); left as it is if the kernel refuses.
#[allow(unsafe_code)]
fn shrink_pipe(end: &impl std::os::fd::AsRawFd, bytes: i32) {
    // SAFETY: fcntl(2) with F_SETPIPE_SZ takes the descriptor and an integer; `end` owns the
    // descriptor for the duration of the call.
    unsafe {
        libc::fcntl(end.as_raw_fd(), libc::F_SETPIPE_SZ, bytes);
    }
}

#[allow(unsafe_code)]
fn send_signal(pid: u32, signal: i32) {
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return;
    };
    // SAFETY: kill(2) takes plain integers and touches no memory of ours.
    unsafe {
        libc::kill(pid, signal);
    }
}

// ---------------------------------------------------------------------------------------------
// The report

/// The cells, by scenario, for each job.
#[derive(Default)]
struct Report {
    cells: Vec<(char, Job, Outcome)>,
}

impl Report {
    fn add(&mut self, scenario: char, job: Job, cell: Outcome) {
        self.cells.push((scenario, job, cell));
    }

    fn cell(&self, scenario: char, job: Job) -> Option<&Outcome> {
        self.cells
            .iter()
            .find(|(s, j, _)| *s == scenario && *j == job)
            .map(|(_, _, c)| c)
    }

    /// The markdown table, then the raw figures of each run.
    fn print(&self, plan: &Plan) {
        let t = &plan.timing;
        println!(
            "| scenario ({} items) | seed job (`benches/seed_job.py`) | digest pipeline (`pipeline.toml`, stagewise) |",
            plan.items
        );
        println!("|---|---|---|");
        let mut scenarios: Vec<char> = self.cells.iter().map(|(s, _, _)| *s).collect();
        scenarios.dedup();
        for s in &scenarios {
            let name = match s {
                'a' => "a: healthy".to_owned(),
                'b' => format!(
                    "b: 5 % of pages hang ({} s page timeout for both)",
                    t.page_timeout.as_secs_f64()
                ),
                'c' => format!(
                    "c: 5 % of LLM calls hang, SIGTERM at {} s (SIGKILL {} s later if still running)",
                    t.term_after.as_secs_f64(),
                    t.platform_grace.as_secs_f64()
                ),
                'd' => format!(
                    "d: `kill -9` at {} s, then run again",
                    t.kill_after.as_secs_f64()
                ),
                _ => format!(
                    "e: stderr to a {} KiB pipe read at {} KiB/s",
                    PIPE_CAPACITY / 1024,
                    t.reader_rate / 1024
                ),
            };
            let cell = |job| {
                self.cell(*s, job)
                    .map_or_else(|| "-".to_owned(), |c| c.table.clone())
            };
            println!("| {name} | {} | {} |", cell(Job::Seed), cell(Job::Digest));
        }
        println!();
        for (s, job, cell) in &self.cells {
            println!("{s}, {}: {}", job.name(), cell.raw);
        }
        println!(
            "(items are digests in the job's database; wall: process start to exit; calls are counted at the LLM server; LLM answers take {} ms, pages 100 ms)",
            t.llm_latency.as_millis()
        );
    }
}

/// A duration in seconds, to a tenth.
fn secs(d: Duration) -> String {
    format!("{:.1} s", d.as_secs_f64())
}

/// `text` cut to `max` characters.
fn clip(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        text.to_owned()
    } else {
        let mut s: String = text.chars().take(max).collect();
        s.push('…');
        s
    }
}
