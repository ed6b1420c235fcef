//! The benchmark of `http-download` (issue 4, "Benchmark"; figures and command in
//! `BENCHMARKS.md`): 2,000 pages from a local HTTP server that takes 20 ms to answer each
//! request, fetched at concurrency 32, against the ideal 32 / 0.02 s = 1,600 pages/s and
//! against the seed's pattern on the same server and machine.
//!
//! - The server runs in this process on 127.0.0.1 (std threads, a thread per connection,
//!   HTTP/1.1 keep-alive unless the client asks to close): it reads a request, sleeps 20 ms,
//!   and answers with a ~10 KB HTML page. It counts the connections it accepts and the requests
//!   it answers, so each run also says how many connections its client opened.
//! - stagewise: like `benches/runner.rs`, the release `stagewise run` process on a pipeline in a
//!   fresh directory: `jsonl` source of the URLs → `http-download` (`concurrency = 32`,
//!   `per_host_concurrency = 32`, `allow_private_networks = true`) → `blackhole`. Wall time is
//!   spawn to exit; the processing window runs from the `run started` to the `summary` log
//!   event (`--log-format json`).
//! - The seed's pattern: `benches/seed_pattern.py` under the machine's `python3` (standard
//!   library only): asyncio tasks calling `await loop.run_in_executor(None, fetch, url)` with a
//!   blocking `urllib` fetch, at most 32 in flight, on the loop's default executor, whose size is
//!   `min(32, cpus + 4)`. Its processing window is the one the script prints. A variant with a
//!   32-thread executor (not what the seed did) tells the executor's size from the rest.
//!
//! Every measurement is run 3 times, interleaved, and the medians are reported, with the peak
//! RSS (`ru_maxrss` from `wait4`) and CPU time of each child.
//!
//! `cargo bench --bench http` runs it; `--runs N` changes the number of runs, `--python PATH`
//! the interpreter. Without cargo's `--bench` flag (`cargo test --benches` or `--all-targets`)
//! it only smoke-tests itself on 200 pages, once.

mod common;

use common::cli;
use common::process::{measure_with, own_cpu, Measured, Stdout};
use common::report::{
    load_average, print_load_average, progress, thousands, thousands_range, Table,
};
use common::stagewise::{self, SINK};
use common::stats::{self, median, median_run};
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;

/// Requests in flight, for stagewise and the seed's pattern alike.
const CONCURRENCY: usize = 32;
/// How long the server takes to answer each request.
const LATENCY: Duration = Duration::from_millis(20);
/// Runs of each measurement; the median is reported.
const DEFAULT_RUNS: usize = 3;
/// The threads of the seed-pattern variant's executor (the seed used the default one).
const VARIANT_WORKERS: usize = 32;
/// The seed's script, run by `python3`.
const SEED_SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/benches/seed_pattern.py");

/// What one invocation measures.
struct Plan {
    runs: usize,
    pages: u64,
    python: String,
    full: bool,
}

fn main() -> ExitCode {
    // `cargo bench` appends `--bench`; without it this is a smoke test (see the top of the file).
    let args = cli::args();
    let full = args.bench;
    let mut python = "python3".to_owned();
    let read = args.read(if full { DEFAULT_RUNS } else { 1 }, |arg, rest| match arg {
        "--python" => rest.next().map(|p| python = p).is_some(),
        _ => false,
    });
    let Ok(runs) = read else { return usage() };
    let plan = Plan {
        runs,
        pages: if full { 2_000 } else { 200 },
        python,
        full,
    };

    let load_before = load_average();
    let server = match Server::start(LATENCY) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: cannot start the HTTP server: {e}");
            return ExitCode::FAILURE;
        }
    };
    progress(&format!(
        "server on {}: {} ms per response, {} byte pages",
        server.addr,
        LATENCY.as_millis(),
        page_body("/page/0").len()
    ));
    let mut table = Table::new(header(), FOOTNOTE);
    let result = bench(&plan, &server, &mut table);
    table.print();
    print_load_average(&load_before);
    if !plan.full {
        println!(
            "\nsmoke run (no `--bench` flag): {} pages, once",
            plan.pages
        );
    }
    cli::exit(result)
}

/// Say how to call this bench.
fn usage() -> ExitCode {
    cli::usage("cargo bench --bench http [-- [--runs N] [--python PATH]]")
}

// ---------------------------------------------------------------------------------------------
// The measurement

fn bench(plan: &Plan, server: &Server, table: &mut Table) -> Result<(), String> {
    let work = stagewise::work_dir("http")?;
    let urls = work.join("urls.jsonl");
    let lines: String = (0..plan.pages)
        .map(|i| {
            format!(
                "{}\n",
                serde_json::json!({"id": i, "url": format!("http://{}/page/{i}", server.addr)})
            )
        })
        .collect();
    stagewise::write(&urls, &lines)?;

    // Without python3 a smoke run still checks the stagewise side; a real run needs both.
    let python_found = Command::new(&plan.python)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !python_found {
        let message = format!("`{}` not found: cannot run the seed's pattern", plan.python);
        if plan.full {
            return Err(message);
        }
        eprintln!("SKIPPED the seed's pattern: {message}");
    }

    let (mut ours, mut seed, mut variant) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..plan.runs {
        let n = format!("run {}/{}", i + 1, plan.runs);
        if python_found {
            progress(&format!("{n}: seed pattern, default executor"));
            seed.push(run_seed(plan, server, &work, &urls, None)?);
        }
        progress(&format!("{n}: stagewise"));
        ours.push(run_stagewise(plan, server, &work, &urls, i)?);
        if python_found {
            progress(&format!(
                "{n}: seed pattern, executor of {VARIANT_WORKERS} threads"
            ));
            variant.push(run_seed(plan, server, &work, &urls, Some(VARIANT_WORKERS))?);
        }
    }
    // Kept after a failure: the logs of the failed run are in it.
    let _ = std::fs::remove_dir_all(&work);

    let ours = Median::of(&ours);
    let ideal = CONCURRENCY as f64 / LATENCY.as_secs_f64();
    table.line(row("stagewise http-download", &ours));
    let seed = (!seed.is_empty()).then(|| Median::of(&seed));
    let variant = (!variant.is_empty()).then(|| Median::of(&variant));
    let default_workers = seed.as_ref().and_then(|s| s.max_workers).unwrap_or(0);
    if let Some(seed) = &seed {
        table.line(row(
            &format!("seed pattern, default executor ({default_workers} thr.)"),
            seed,
        ));
    }
    if let Some(variant) = &variant {
        table.line(row(
            &format!("seed pattern, executor of {VARIANT_WORKERS} (variant)"),
            variant,
        ));
    }

    let pages = plan.pages as f64;
    let share = |rate: f64| {
        format!(
            "{} pages/s = {:.1}% of ideal",
            thousands(rate),
            100.0 * rate / ideal
        )
    };
    let rounds = plan.pages.div_ceil(CONCURRENCY as u64);
    table.line(format!(
        "ideal {CONCURRENCY} / {} s = {} pages/s ({} pages are {rounds} rounds of {CONCURRENCY}: at most {} pages/s with exact {} ms responses)",
        LATENCY.as_secs_f64(),
        thousands(ideal),
        thousands(pages),
        thousands(pages / (rounds as f64 * LATENCY.as_secs_f64())),
        LATENCY.as_millis()
    ));
    table.line(format!(
        "  stagewise end to end (process start to exit): {}",
        share(ours.base.items_per_sec())
    ));
    table.line(format!(
        "  stagewise processing window (`run started` to `summary`): {}",
        ours.base
            .window_rate()
            .map_or_else(|| "unknown".to_owned(), share)
    ));
    if let Some(l) = ours.base.stage_latency("download", 1) {
        table.line(format!(
            "  `download` attempt latency (median run's summary): {l}"
        ));
    }
    if let Some(seed) = &seed {
        table.line(format!(
            "  seed pattern end to end: {}",
            share(seed.base.items_per_sec())
        ));
        table.line(format!(
            "  seed pattern processing window (the script's own clock): {}",
            seed.base
                .window_rate()
                .map_or_else(|| "unknown".to_owned(), share)
        ));
        table.line(format!(
            "  seed pattern's ceiling with {default_workers} executor threads: {default_workers} / {} s = {} pages/s",
            LATENCY.as_secs_f64(),
            thousands(default_workers as f64 / LATENCY.as_secs_f64())
        ));
        let window_ratio = match (ours.base.window_rate(), seed.base.window_rate()) {
            (Some(a), Some(b)) => format!("{:.2}x", a / b),
            _ => "unknown".to_owned(),
        };
        table.line(format!(
            "  stagewise / seed pattern: end to end {:.2}x, processing window {window_ratio}, peak RSS {:.2}x, CPU time {:.2}x",
            ours.base.items_per_sec() / seed.base.items_per_sec(),
            ours.base.peak_rss_bytes() / seed.base.peak_rss_bytes(),
            ours.base.cpu.as_secs_f64() / seed.base.cpu.as_secs_f64()
        ));
    }
    if let Some(variant) = &variant {
        table.line(format!(
            "  seed pattern, {VARIANT_WORKERS}-thread executor (variant): end to end {}; window {}",
            share(variant.base.items_per_sec()),
            variant
                .base
                .window_rate()
                .map_or_else(|| "unknown".to_owned(), share)
        ));
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// The two clients

/// One run of a client, and what the server did meanwhile.
struct Run {
    /// The processing window is from the first request to the last page (stagewise: `run
    /// started` to `summary`).
    base: stats::Run,
    served: Served,
    /// The seed script's executor size.
    max_workers: Option<u64>,
}

/// `stagewise run` on the pipeline, in a fresh directory; fails unless every page is done.
fn run_stagewise(
    plan: &Plan,
    server: &Server,
    work: &Path,
    urls: &Path,
    i: usize,
) -> Result<Run, String> {
    let name = format!("stagewise-{i}");
    let dir = work.join(&name);
    let cmd = stagewise::prepare(&dir, &pipeline())?;
    std::fs::copy(urls, dir.join("urls.jsonl"))
        .map_err(|e| format!("cannot copy the URL list: {e}"))?;
    let (m, served) = measure(cmd, server, &dir.join(stagewise::LOG))
        .map_err(|e| format!("{name}: cannot run stagewise: {e}"))?;
    let summary = stagewise::all_done(&name, &dir, &m, plan.pages, "pages")?;
    let _ = std::fs::remove_dir_all(&dir);
    Ok(Run {
        base: stats::Run::new(&m, plan.pages, summary),
        served,
        max_workers: None,
    })
}

/// `benches/seed_pattern.py` on the URL list; fails unless every page was fetched.
fn run_seed(
    plan: &Plan,
    server: &Server,
    work: &Path,
    urls: &Path,
    workers: Option<usize>,
) -> Result<Run, String> {
    let mut cmd = Command::new(&plan.python);
    cmd.arg(SEED_SCRIPT).arg(urls).args([
        "--concurrency",
        &CONCURRENCY.to_string(),
        "--timeout",
        "30",
    ]);
    if let Some(w) = workers {
        cmd.args(["--workers", &w.to_string()]);
    }
    let log = work.join("seed-stderr.log");
    let (m, served) =
        measure(cmd, server, &log).map_err(|e| format!("cannot run the seed pattern: {e}"))?;
    let out = serde_json::from_str::<Value>(m.stdout.trim()).ok();
    let fetched = out.as_ref().and_then(|o| o["pages"].as_u64());
    if !m.status.success() || fetched != Some(plan.pages) {
        return Err(format!(
            "the seed pattern exited with {} and {fetched:?} of {} pages fetched; see {}",
            m.status,
            plan.pages,
            log.display()
        ));
    }
    let out = out.unwrap_or_default();
    let mut base = stats::Run::new(&m, plan.pages, None);
    base.window = out["seconds"].as_f64().map(Duration::from_secs_f64);
    Ok(Run {
        base,
        served,
        max_workers: out["max_workers"].as_u64(),
    })
}

/// `jsonl` of the URLs → `http-download` → `blackhole`.
fn pipeline() -> String {
    stagewise::pipeline(
        "",
        &stagewise::jsonl("urls.jsonl"),
        &format!(
            r#"[[stage]]
name = "download"
kind = "http-download"
allow_private_networks = true
concurrency = {CONCURRENCY}
per_host_concurrency = {CONCURRENCY}

{SINK}"#
        ),
    )
}

// ---------------------------------------------------------------------------------------------
// Measuring a client and the server

/// What the server did during a run.
struct Served {
    /// The server's (this process's) CPU time.
    cpu: Duration,
    /// Connections the server accepted.
    connections: u64,
}

/// Measure `cmd`, keeping its stdout and copying its stderr to `log`, and around it what the
/// server did.
fn measure(cmd: Command, server: &Server, log: &Path) -> io::Result<(Measured, Served)> {
    let connections_before = server.connections();
    let cpu_before = own_cpu();
    let (m, cpu) = measure_with(cmd, Some(log), Stdout::Keep, own_cpu)?;
    let served = Served {
        cpu: cpu.saturating_sub(cpu_before),
        connections: server.connections() - connections_before,
    };
    Ok((m, served))
}

// ---------------------------------------------------------------------------------------------
// The server

/// A slow HTTP/1.1 server on 127.0.0.1: every request is answered after `latency`. It lives as
/// long as this process (the accept thread is never joined; the bench exits when done).
struct Server {
    addr: SocketAddr,
    connections: Arc<AtomicU64>,
}

impl Server {
    fn start(latency: Duration) -> io::Result<Server> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let addr = listener.local_addr()?;
        let connections = Arc::new(AtomicU64::new(0));
        let accepted = connections.clone();
        std::thread::Builder::new()
            .name("accept".into())
            .spawn(move || {
                for stream in listener.incoming() {
                    let stream = match stream {
                        Ok(s) => s,
                        Err(e) => {
                            // Out of file descriptors, say: let connections close, try again.
                            eprintln!("[server] accept failed: {e}");
                            std::thread::sleep(Duration::from_millis(10));
                            continue;
                        }
                    };
                    accepted.fetch_add(1, Ordering::Relaxed);
                    let spawned = std::thread::Builder::new()
                        .name("conn".into())
                        .stack_size(256 * 1024)
                        .spawn(move || {
                            if let Err(e) = serve(stream, latency) {
                                // A client closing or resetting its end is its business.
                                if !matches!(
                                    e.kind(),
                                    io::ErrorKind::ConnectionReset | io::ErrorKind::BrokenPipe
                                ) {
                                    eprintln!("[server] connection failed: {e}");
                                }
                            }
                        });
                    if let Err(e) = spawned {
                        eprintln!("[server] cannot start a connection thread: {e}");
                    }
                }
            })?;
        Ok(Server { addr, connections })
    }

    /// Connections accepted so far.
    fn connections(&self) -> u64 {
        self.connections.load(Ordering::Relaxed)
    }
}

/// Answer the requests of one connection until the client closes it or asks to.
fn serve(stream: TcpStream, latency: Duration) -> io::Result<()> {
    // Each response goes out in one write; without this, a response split by the kernel could
    // wait on the client's delayed ACK.
    stream.set_nodelay(true)?;
    // A client that vanished without closing must not hold a thread for ever.
    stream.set_read_timeout(Some(Duration::from_secs(120)))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut writer = stream;
    let mut line = String::new();
    loop {
        line.clear();
        if reader.read_line(&mut line)? == 0 {
            return Ok(());
        }
        if line.trim().is_empty() {
            continue;
        }
        let mut parts = line.split_whitespace();
        let method = parts.next().unwrap_or("").to_owned();
        let target = parts.next().unwrap_or("").to_owned();
        let version = parts.next().unwrap_or("").to_owned();
        let mut close = version != "HTTP/1.1";
        let mut content_length = 0u64;
        loop {
            line.clear();
            if reader.read_line(&mut line)? == 0 {
                return Ok(());
            }
            let header = line.trim_end();
            if header.is_empty() {
                break;
            }
            let Some((name, value)) = header.split_once(':') else {
                continue;
            };
            let value = value.trim();
            if name.eq_ignore_ascii_case("connection") {
                if value.eq_ignore_ascii_case("close") {
                    close = true;
                } else if value.eq_ignore_ascii_case("keep-alive") {
                    close = false;
                }
            } else if name.eq_ignore_ascii_case("content-length") {
                content_length = value.parse().unwrap_or(0);
            }
        }
        io::copy(&mut (&mut reader).take(content_length), &mut io::sink())?;

        std::thread::sleep(latency);
        let (status, body) = if method == "GET" && target.starts_with("/page/") {
            ("200 OK", page_body(&target))
        } else {
            ("404 Not Found", "not found\n".to_owned())
        };
        let mut response = format!(
            "HTTP/1.1 {status}\r\nContent-Type: text/html; charset=utf-8\r\nContent-Length: {}\r\n{}\r\n",
            body.len(),
            if close { "Connection: close\r\n" } else { "" }
        );
        response.push_str(&body);
        writer.write_all(response.as_bytes())?;
        if close {
            return Ok(());
        }
    }
}

/// A ~10 KB HTML page that names its path.
fn page_body(path: &str) -> String {
    const PARAGRAPH: &str = "<p>Batch pipelines that must not die silently: every stage bounded, \
        every failure classified, every item checkpointed, and every run summarized.</p>\n";
    let mut body = format!(
        "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>{path}</title></head>\n<body><h1>{path}</h1>\n"
    );
    for _ in 0..68 {
        body.push_str(PARAGRAPH);
    }
    body.push_str("</body></html>\n");
    body
}

// ---------------------------------------------------------------------------------------------
// Reporting

/// The median of each figure over several runs (taken per figure).
struct Median {
    base: stats::Median,
    server_cpu: Duration,
    connections: u64,
    /// The seed script's executor size in the run with the median wall time.
    max_workers: Option<u64>,
}

impl Median {
    /// The medians of `runs`. Panics if there are none.
    fn of(runs: &[Run]) -> Median {
        Median {
            base: stats::Median::of(runs.iter().map(|r| &r.base)),
            server_cpu: median(runs.iter().map(|r| r.served.cpu)).unwrap_or_default(),
            connections: median(runs.iter().map(|r| r.served.connections)).unwrap_or(0),
            max_workers: median_run(runs, |r| r.base.wall).max_workers,
        }
    }
}

/// What each column of the table holds.
const FOOTNOTE: &str = "(medians of the runs; wall and the first pages/s: process start to exit; range: slowest–fastest run, end to end; \
     window: stagewise `run started` to `summary`, the seed script's own clock from its first task to its last; \
     CPU: the client's user+system; server: the in-process server's; conns: connections the server accepted; MB = 10^6 bytes of ru_maxrss)";

/// The table's header line.
fn header() -> String {
    format!(
        "{:<42} {:>4} {:>8} {:>8} {:>13} {:>8} {:>8} {:>9} {:>7} {:>7} {:>6}",
        "client",
        "runs",
        "wall",
        "pages/s",
        "range",
        "window",
        "pages/s",
        "peak RSS",
        "CPU",
        "server",
        "conns"
    )
}

/// A row of the table: the medians of one client's runs.
fn row(name: &str, m: &Median) -> String {
    let b = &m.base;
    format!(
        "{:<42} {:>4} {:>6.3} s {:>8} {:>13} {:>8} {:>8} {:>6.1} MB {:>5.2} s {:>5.2} s {:>6}",
        name,
        b.runs,
        b.wall.as_secs_f64(),
        thousands(b.items_per_sec()),
        thousands_range(b.items_per_sec_range()),
        b.window
            .map_or_else(|| "-".to_owned(), |w| format!("{:.3} s", w.as_secs_f64())),
        b.window_rate().map_or_else(|| "-".to_owned(), thousands),
        b.peak_rss_bytes() / 1e6,
        b.cpu.as_secs_f64(),
        m.server_cpu.as_secs_f64(),
        m.connections
    )
}
