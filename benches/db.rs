//! Benchmarks of the database stages on a real PostgreSQL (issue 3, "Benchmark"; figures and
//! commands in `BENCHMARKS.md`). Like `benches/runner.rs`, each measurement spawns the release
//! `stagewise run` process on a pipeline in a fresh directory and times it from spawn to exit;
//! the ceiling is `psql`'s `\copy` of the same data on the same cluster, timed around the `psql`
//! process. Runs are interleaved with their ceiling's, and medians are reported.
//!
//! - `persist`: `generate` N → `persist` (an upsert, concurrency 8) with `batch_size` 1 (a
//!   transaction per item), 8 (the stage's concurrency: the largest group that can form) and
//!   64, into an emptied table; ceiling: `\copy t FROM` a CSV of the same N rows.
//! - `fetch`: `db-fetch` of N rows → `blackhole`, with the time of taking the batch (the fetch
//!   plus writing the manifest) from the JSON log; a `generate` N → `blackhole` run shows what
//!   the manifest alone costs; ceiling: `\copy (SELECT …) TO` a file.
//!
//! The bench starts its own throwaway cluster with `scripts/pg start` (fsync off, see its
//! header) and stops it at the end; if PostgreSQL cannot be started it says so and fails.
//! Besides wall time it reports the CPU time of the client process (from `wait4`) and of the
//! server (the postmaster's children, from `/proc`), and the transactions the server committed,
//! since on a small machine client and server share the CPUs.
//!
//! `cargo bench --bench db` runs both; `cargo bench --bench db -- fetch` one; `--runs N`
//! changes the number of runs. Without cargo's `--bench` flag (`cargo test --benches`) it only
//! smoke-tests itself on 2,000 rows, once.

mod common;

use common::cli;
use common::pg::{server_cpu, wait_for_sessions, Cluster};
use common::process::{measure, Measured, Stdout};
use common::report::{
    load_average, print_load_average, progress, thousands, thousands_range, Table,
};
use common::stagewise::{self, SINK};
use common::stats::{self, median};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::Duration;

use postgres::{Client, NoTls};

/// Threads of the `persist` stage (issue 3's benchmark setting).
const PERSIST_CONCURRENCY: usize = 8;
/// `persist` transactions: one per item, as many as the stage's threads, and more.
const BATCH_SIZES: [usize; 3] = [1, PERSIST_CONCURRENCY, 64];
/// Runs of each measurement; the median is reported.
const DEFAULT_RUNS: usize = 3;

/// `generate` gives `{"n": i}` keyed `"i"`; the payload is derived in SQL.
const PERSIST_STATEMENT: &str = "INSERT INTO t (id, n, payload) VALUES (:key, :n, 'item ' || :n::bigint) ON CONFLICT (id) DO UPDATE SET n = excluded.n, payload = excluded.payload";
const FETCH_QUERY: &str = "SELECT id, url, title FROM src ORDER BY id LIMIT $limit";
const COPY_OUT_QUERY: &str = "SELECT id, url, title FROM src ORDER BY id";

/// What one invocation measures.
struct Plan {
    runs: usize,
    rows: u64,
    full: bool,
}

fn main() -> ExitCode {
    // `cargo bench` appends `--bench`; without it this is a smoke test (see the top of the file).
    let args = cli::args();
    let full = args.bench;
    let mut chosen = Vec::new();
    let read = args.read(if full { DEFAULT_RUNS } else { 1 }, |arg, _| match arg {
        "persist" | "fetch" => {
            chosen.push(arg.to_owned());
            true
        }
        "all" => true,
        _ => false,
    });
    let Ok(runs) = read else { return usage() };
    let plan = Plan {
        runs,
        rows: if full { 100_000 } else { 2_000 },
        full,
    };
    let wants = |name: &str| chosen.is_empty() || chosen.iter().any(|c| c == name);

    // Client and server share the machine with whatever else runs: say how busy it was.
    let load_before = load_average();
    progress("starting a throwaway PostgreSQL cluster (scripts/pg start)");
    let cluster = match Cluster::start("db") {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: cannot start PostgreSQL, so nothing was measured: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut table = Table::new(header(), FOOTNOTE);
    let result = Bench::new(&cluster, &plan).and_then(|mut bench| {
        if wants("persist") {
            bench.persist(&mut table)?;
        }
        if wants("fetch") {
            bench.fetch(&mut table)?;
        }
        // Kept after a failure: the logs of the failed run are in it.
        let _ = std::fs::remove_dir_all(&bench.work);
        Ok(())
    });
    table.print();
    print_load_average(&load_before);
    if !plan.full {
        println!("\nsmoke run (no `--bench` flag): {} rows, once", plan.rows);
    }
    progress("stopping the cluster (scripts/pg stop)");
    drop(cluster);
    cli::exit(result)
}

/// Say how to call this bench.
fn usage() -> ExitCode {
    cli::usage("cargo bench --bench db [-- [persist|fetch|all]... [--runs N]]")
}

// ---------------------------------------------------------------------------------------------
// Scenarios

struct Bench<'a> {
    cluster: &'a Cluster,
    plan: &'a Plan,
    /// Sets up, empties and checks the tables; reads the server's statistics.
    admin: Client,
    /// Pipelines' directories, the CSV and the copied-out file.
    work: PathBuf,
}

impl<'a> Bench<'a> {
    fn new(cluster: &'a Cluster, plan: &'a Plan) -> Result<Self, String> {
        let mut config: postgres::Config = cluster
            .url
            .parse()
            .map_err(|e| format!("scripts/pg printed no PostgreSQL URL: {e}"))?;
        config.connect_timeout(Duration::from_secs(10));
        let mut admin = config
            .connect(NoTls)
            .map_err(|e| format!("cannot connect to the cluster: {e}"))?;
        let rows = plan.rows;
        progress(&format!("creating the tables; src gets {rows} rows"));
        // Autovacuum off on both tables: a worker waking in the middle of one run and not
        // another would be noise; TRUNCATE between runs leaves nothing to vacuum anyway.
        admin
            .batch_execute(&format!(
                "CREATE TABLE t (id int PRIMARY KEY, n bigint, payload text) WITH (autovacuum_enabled = off);
                 CREATE TABLE src (id int PRIMARY KEY, url text, title text) WITH (autovacuum_enabled = off);
                 INSERT INTO src SELECT i, 'https://example.com/articles/' || i,
                     'Article ' || i || ': a title of some forty characters'
                     FROM generate_series(1, {rows}) i"
            ))
            .and_then(|()| admin.batch_execute("VACUUM ANALYZE src"))
            .map_err(|e| format!("cannot create the tables: {e}"))?;
        let work = stagewise::fresh_dir(
            stagewise::target_tmp().join(format!("stagewise-bench-db-{}", std::process::id())),
        )?;
        Ok(Bench {
            cluster,
            plan,
            admin,
            work,
        })
    }

    fn persist(&mut self, table: &mut Table) -> Result<(), String> {
        let (rows, runs) = (self.plan.rows, self.plan.runs);
        let csv = self.work.join("t.csv");
        let text: String = (0..rows).map(|i| format!("{i},{i},item {i}\n")).collect();
        stagewise::write(&csv, &text)?;
        let copy_in = format!("\\copy t FROM '{}' WITH (FORMAT csv)", csv.display());

        let mut variants: Vec<Vec<Run>> = BATCH_SIZES.iter().map(|_| Vec::new()).collect();
        let mut ceiling = Vec::new();
        for i in 0..runs {
            for (&batch_size, results) in BATCH_SIZES.iter().zip(&mut variants) {
                progress(&format!(
                    "persist: run {}/{runs}: stagewise, batch_size {batch_size}",
                    i + 1
                ));
                self.empty_t()?;
                let pipeline = persist_pipeline(rows, &self.cluster.url, batch_size);
                results.push(self.run_stagewise(&format!("persist-{batch_size}-{i}"), &pipeline)?);
                self.check_t()?;
            }
            progress(&format!(
                "persist: run {}/{runs}: ceiling, psql \\copy FROM csv",
                i + 1
            ));
            self.empty_t()?;
            ceiling.push(self.run_psql(&format!("copy-in-{i}"), &copy_in)?);
            self.check_t()?;
        }

        let ceiling = Median::of(&ceiling);
        let top = ceiling.base.items_per_sec();
        let mut details = Vec::new();
        for (batch_size, results) in BATCH_SIZES.into_iter().zip(variants) {
            let m = Median::of(&results);
            let what = match batch_size {
                1 => " (per item)".to_owned(),
                _ => String::new(),
            };
            table.line(row(
                &format!("persist: stagewise, batch_size {batch_size}{what}"),
                &m,
                top,
            ));
            details.push(format!(
                "persist:   batch_size {batch_size}: {}; `save` attempt latency {}; {}; {}",
                m.transactions(),
                m.base
                    .stage_latency("save", 2)
                    .unwrap_or_else(|| "unknown".to_owned()),
                m.phases(),
                m.cpu_share()
            ));
        }
        table.line(row(
            "persist: ceiling, psql \\copy t FROM csv",
            &ceiling,
            top,
        ));
        for d in details {
            table.line(d);
        }
        table.line(format!("persist:   ceiling: {}", ceiling.transactions()));
        Ok(())
    }

    fn fetch(&mut self, table: &mut Table) -> Result<(), String> {
        let (rows, runs) = (self.plan.rows, self.plan.runs);
        let out = self.work.join("src.out");
        let copy_out = format!("\\copy ({COPY_OUT_QUERY}) TO '{}'", out.display());
        let mut fetched = Vec::new();
        let mut generated = Vec::new();
        let mut ceiling = Vec::new();
        for i in 0..runs {
            progress(&format!(
                "fetch: run {}/{runs}: stagewise, db-fetch → blackhole",
                i + 1
            ));
            let pipeline = fetch_pipeline(rows, Some(&self.cluster.url));
            fetched.push(self.run_stagewise(&format!("fetch-{i}"), &pipeline)?);
            progress(&format!(
                "fetch: run {}/{runs}: reference, generate → blackhole",
                i + 1
            ));
            let pipeline = fetch_pipeline(rows, None);
            generated.push(self.run_stagewise(&format!("generate-{i}"), &pipeline)?);
            progress(&format!(
                "fetch: run {}/{runs}: ceiling, psql \\copy (SELECT …) TO file",
                i + 1
            ));
            let _ = std::fs::remove_file(&out);
            ceiling.push(self.run_psql(&format!("copy-out-{i}"), &copy_out)?);
            let lines = std::fs::read_to_string(&out)
                .map_err(|e| format!("cannot read {}: {e}", out.display()))?
                .lines()
                .count();
            if lines as u64 != rows {
                return Err(format!("\\copy wrote {lines} rows, not {rows}"));
            }
        }
        let fetched = Median::of(&fetched);
        let generated = Median::of(&generated);
        let ceiling = Median::of(&ceiling);
        let top = ceiling.base.items_per_sec();
        table.line(row("fetch: stagewise, db-fetch → blackhole", &fetched, top));
        if let Some(take) = fetched.base.taking {
            table.line(window_row(
                "fetch:   taking the batch (fetch + manifest)",
                &fetched,
                take,
                top,
            ));
        }
        table.line(row(
            "fetch: reference, generate → blackhole",
            &generated,
            top,
        ));
        if let Some(take) = generated.base.taking {
            table.line(window_row(
                "fetch:   taking the batch (manifest only)",
                &generated,
                take,
                top,
            ));
        }
        table.line(row(
            "fetch: ceiling, psql \\copy (SELECT …) TO file",
            &ceiling,
            top,
        ));
        table.line(format!(
            "fetch:   db-fetch run: {}; {}",
            fetched.phases(),
            fetched.cpu_share()
        ));
        table.line(format!("fetch:   generate run: {}", generated.phases()));
        if let (Some(a), Some(b)) = (fetched.base.taking, generated.base.taking) {
            let alone = a.as_secs_f64() - b.as_secs_f64();
            table.line(format!(
                "fetch:   the fetch alone ≈ taking the batch minus the generate run's: {alone:.3} s = {} rows/s = {:.3}x the ceiling",
                thousands(rows as f64 / alone),
                rows as f64 / alone / top
            ));
        }
        Ok(())
    }

    fn empty_t(&mut self) -> Result<(), String> {
        self.admin
            .batch_execute("TRUNCATE t")
            .map_err(|e| format!("cannot empty t: {e}"))
    }

    /// Every row written, with the payload its `n` implies.
    fn check_t(&mut self) -> Result<(), String> {
        let row = self
            .admin
            .query_one(
                "SELECT count(*), count(*) FILTER (WHERE id = n AND payload = 'item ' || n) FROM t",
                &[],
            )
            .map_err(|e| format!("cannot count t: {e}"))?;
        let (all, right): (i64, i64) = (row.get(0), row.get(1));
        if all as u64 != self.plan.rows || right != all {
            return Err(format!(
                "t holds {all} rows ({right} as expected), not {}",
                self.plan.rows
            ));
        }
        Ok(())
    }

    fn commits(&mut self) -> Option<i64> {
        self.admin
            .query_one(
                "SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()",
                &[],
            )
            .ok()
            .map(|r| r.get(0))
    }

    /// Run the `stagewise` binary on `pipeline` in a fresh directory; fails unless every item
    /// is done.
    fn run_stagewise(&mut self, name: &str, pipeline: &str) -> Result<Run, String> {
        let dir = self.work.join(name);
        let cmd = stagewise::prepare(&dir, pipeline)?;
        let (measured, server) = self.measure(cmd, &dir.join(stagewise::LOG), name)?;
        let summary = stagewise::all_done(name, &dir, &measured, self.plan.rows, "items")?;
        let _ = std::fs::remove_dir_all(&dir);
        Ok(Run {
            base: stats::Run::new(&measured, self.plan.rows, summary),
            server,
        })
    }

    /// Run `psql -c COMMAND` against the cluster.
    fn run_psql(&mut self, name: &str, command: &str) -> Result<Run, String> {
        let mut cmd = Command::new(&self.cluster.psql);
        cmd.args([
            "-X",
            "-q",
            "-v",
            "ON_ERROR_STOP=1",
            "-d",
            &self.cluster.url,
            "-c",
            command,
        ]);
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("PG") {
                cmd.env_remove(key);
            }
        }
        let log = self.work.join(format!("{name}.log"));
        let (measured, server) = self.measure(cmd, &log, name)?;
        if !measured.status.success() {
            let stderr = std::fs::read_to_string(&log).unwrap_or_default();
            return Err(format!(
                "{name}: psql exited with {}: {}",
                measured.status,
                stderr.trim()
            ));
        }
        Ok(Run {
            base: stats::Run::new(&measured, self.plan.rows, None),
            server,
        })
    }

    /// Spawn `cmd` and measure it; around it, the server's CPU time and committed transactions,
    /// read once the sessions it opened have ended (their figures are only counted then).
    fn measure(
        &mut self,
        cmd: Command,
        log: &Path,
        name: &str,
    ) -> Result<(Measured, ServerUse), String> {
        let before = self.cluster.postmaster.and_then(server_cpu);
        let commits_before = self.commits();
        let measured = measure(cmd, Some(log), Stdout::Discard)
            .map_err(|e| format!("{name}: cannot run it: {e}"))?;
        let settled = match (&before, self.cluster.postmaster) {
            (Some((_, sessions)), Some(pm)) => wait_for_sessions(pm, sessions),
            _ => None,
        };
        let server = ServerUse {
            cpu: match (before, settled) {
                (Some((a, _)), Some(b)) => Some(b.saturating_sub(a)),
                _ => None,
            },
            transactions: match (commits_before, self.commits()) {
                (Some(a), Some(b)) => Some(b - a),
                _ => None,
            },
        };
        Ok((measured, server))
    }
}

// ---------------------------------------------------------------------------------------------
// Pipelines

/// `generate` → `persist` into `t` at `url`, `batch_size` items a transaction.
fn persist_pipeline(rows: u64, url: &str, batch_size: usize) -> String {
    stagewise::pipeline(
        "timeout = \"30s\"",
        &stagewise::generate(rows),
        &format!(
            r#"[[stage]]
name = "save"
kind = "persist"
url = "{url}"
statement = "{PERSIST_STATEMENT}"
concurrency = {PERSIST_CONCURRENCY}
batch_size = {batch_size}
"#
        ),
    )
}

/// `db-fetch` from `url`, or without one the same flow from `generate`.
fn fetch_pipeline(rows: u64, url: Option<&str>) -> String {
    let source = match url {
        Some(url) => {
            format!("kind = \"db-fetch\"\nurl = \"{url}\"\nquery = \"{FETCH_QUERY}\"\nkey = \"id\"")
        }
        None => stagewise::generate(rows),
    };
    stagewise::pipeline("timeout = \"30s\"\nconcurrency = 64", &source, SINK)
}

// ---------------------------------------------------------------------------------------------
// Measuring the server

/// One run of a child process, and what the server did meanwhile.
struct Run {
    base: stats::Run,
    server: ServerUse,
}

/// What the server did during a run.
struct ServerUse {
    /// CPU time of the server's processes.
    cpu: Option<Duration>,
    /// Transactions committed in the database.
    transactions: Option<i64>,
}

// ---------------------------------------------------------------------------------------------
// Reporting

/// The median of each figure over several runs (taken per figure).
struct Median {
    base: stats::Median,
    server_cpu: Option<Duration>,
    transactions: Option<i64>,
}

impl Median {
    /// The medians of `runs`. Panics if there are none.
    fn of(runs: &[Run]) -> Median {
        Median {
            base: stats::Median::of(runs.iter().map(|r| &r.base)),
            server_cpu: median(runs.iter().filter_map(|r| r.server.cpu)),
            transactions: median(runs.iter().filter_map(|r| r.server.transactions)),
        }
    }

    /// "N server transactions (R rows each)".
    fn transactions(&self) -> String {
        match self.transactions {
            Some(t) if t > 0 => format!(
                "{} server transactions ({:.2} rows each)",
                thousands(t as f64),
                self.base.items as f64 / t as f64
            ),
            _ => "server transactions unknown".to_owned(),
        }
    }

    /// Where a stagewise run's wall time went, from its log events.
    fn phases(&self) -> String {
        let secs = |d: Option<Duration>| {
            d.map_or_else(|| "?".to_owned(), |d| format!("{:.3} s", d.as_secs_f64()))
        };
        format!(
            "spawn to `taking a new batch` {}, taking the batch {}, processing {}",
            secs(self.base.starting),
            secs(self.base.taking),
            secs(self.base.window)
        )
    }

    /// How busy the machine's CPUs were: client and server CPU time over the wall time. Client
    /// and server share the CPUs, so near all of them means the run is CPU-bound.
    fn cpu_share(&self) -> String {
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        let Some(server) = self.server_cpu else {
            return "server CPU unknown".to_owned();
        };
        let busy = (self.base.cpu + server).as_secs_f64() / self.base.wall.as_secs_f64();
        format!("client + server CPU {busy:.2} of {cpus} CPUs")
    }
}

/// What each column of the table holds.
const FOOTNOTE: &str = "(medians of the runs; wall is process start to exit; rows/s = rows / wall; MB = 10^6 bytes of ru_maxrss; client CPU = user + system time of the process; server CPU = all PostgreSQL processes)";

/// The table's header line.
fn header() -> String {
    format!(
        "{:<48} {:>4} {:>9} {:>9} {:>17} {:>10} {:>8} {:>10} {:>10}",
        "benchmark",
        "runs",
        "wall",
        "rows/s",
        "rows/s range",
        "vs ceiling",
        "peak RSS",
        "client CPU",
        "server CPU"
    )
}

/// A row of the table: the medians of one measurement, its rows/s set against `ceiling`'s.
fn row(name: &str, m: &Median, ceiling: f64) -> String {
    let server = m
        .server_cpu
        .map_or_else(|| "?".to_owned(), |d| format!("{:.2} s", d.as_secs_f64()));
    let rate = m.base.items_per_sec();
    format!(
        "{:<48} {:>4} {:>7.3} s {:>9} {:>17} {:>9.3}x {:>5.1} MB {:>8.2} s {:>10}",
        name,
        m.base.runs,
        m.base.wall.as_secs_f64(),
        thousands(rate),
        thousands_range(m.base.items_per_sec_range()),
        rate / ceiling,
        m.base.peak_rss_bytes() / 1e6,
        m.base.cpu.as_secs_f64(),
        server
    )
}

/// A row of the table for a part of a run, timed from its log events.
fn window_row(name: &str, m: &Median, window: Duration, ceiling: f64) -> String {
    let rate = m.base.items as f64 / window.as_secs_f64();
    format!(
        "{:<48} {:>4} {:>7.3} s {:>9} {:>17} {:>9.3}x",
        name,
        m.base.runs,
        window.as_secs_f64(),
        thousands(rate),
        "",
        rate / ceiling
    )
}
