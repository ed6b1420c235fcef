//! Many runners on one run, on one PostgreSQL (figures and commands in `BENCHMARKS.md`):
//!
//! - `scaling`: `generate` N → `sleep` 50 ms (a stage whose calls take 50 ms: a web server's or a
//!   model's answer, concurrency 8) → `blackhole`, shared by 1, 2 and 4 `stagewise run`
//!   processes started together on one PostgreSQL store. Items/s from the first spawn to the
//!   last exit, against the one runner's in the same invocation; the CPU time of the runners
//!   (from `wait4`) and of the server (its processes, from `/proc`). One runner does at most
//!   8 / 50 ms = 160 items/s, so four do at most 640.
//! - `ceiling`: `generate` M → `sleep` `"0s"` (concurrency 8) → `blackhole`, one runner: what
//!   the store's bookkeeping allows per item when the stages cost nothing, on the PostgreSQL
//!   store and on a SQLite store, run alternately.
//!
//! The bench starts its own throwaway cluster (`scripts/pg start`, fsync off) and stops it at
//! the end. `cargo bench --bench runners` runs both, 3 times each, and reports medians;
//! `-- scaling` or `-- ceiling` one; `--runs N`. Without cargo's `--bench` flag
//! (`cargo test --benches`) it smoke-tests itself on a few hundred items, once.

mod common;

use std::path::PathBuf;
use std::process::{Command, ExitCode};
use std::time::{Duration, Instant};

use common::cli;
use common::pg::{server_cpu, wait_for_sessions, Cluster};
use common::process::{measure, Measured, Stdout};
use common::report::{load_average, print_load_average, progress, thousands, Table};
use common::stagewise::{self, SINK};
use common::stats::median;

use postgres::{Client, NoTls};

/// Runner processes sharing the run, in turn.
const RUNNERS: [usize; 3] = [1, 2, 4];
/// Runs of each measurement; the median is reported.
const DEFAULT_RUNS: usize = 3;

struct Plan {
    runs: usize,
    /// Items of a `scaling` run.
    items: u64,
    /// Items of a `ceiling` run.
    ceiling_items: u64,
}

fn main() -> ExitCode {
    let args = cli::args();
    let full = args.bench;
    let mut chosen = Vec::new();
    let read = args.read(if full { DEFAULT_RUNS } else { 1 }, |arg, _| match arg {
        "scaling" | "ceiling" => {
            chosen.push(arg.to_owned());
            true
        }
        "all" => true,
        _ => false,
    });
    let Ok(runs) = read else {
        return cli::usage("cargo bench --bench runners [-- [scaling|ceiling|all]... [--runs N]]");
    };
    let plan = Plan {
        runs,
        items: if full { 4_000 } else { 320 },
        ceiling_items: if full { 20_000 } else { 500 },
    };
    let wants = |name: &str| chosen.is_empty() || chosen.iter().any(|c| c == name);
    let load_before = load_average();
    progress("starting a throwaway PostgreSQL cluster (scripts/pg start)");
    let cluster = match Cluster::start("runners") {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: cannot start PostgreSQL, so nothing was measured: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut table = Table::new(
        "what | runners | items/s (median) | vs 1 runner | wall s | runners' CPU s | server CPU s"
            .to_owned(),
        "(medians of the runs; wall is the first spawn to the last exit; CPU = user + system time; server CPU = all PostgreSQL processes)",
    );
    let result = Bench::new(&cluster, &plan).and_then(|mut bench| {
        if wants("scaling") {
            bench.scaling(&mut table)?;
        }
        if wants("ceiling") {
            bench.ceiling(&mut table)?;
        }
        let _ = std::fs::remove_dir_all(&bench.work);
        Ok(())
    });
    table.print();
    print_load_average(&load_before);
    if !full {
        println!(
            "\nsmoke run (no `--bench` flag): {} and {} items, once",
            plan.items, plan.ceiling_items
        );
    }
    progress("stopping the cluster (scripts/pg stop)");
    drop(cluster);
    cli::exit(result)
}

struct Bench<'a> {
    cluster: &'a Cluster,
    plan: &'a Plan,
    /// Clears the store between runs.
    admin: Client,
    work: PathBuf,
}

/// One measurement: every runner process of it, and the server.
struct Shared {
    wall: Duration,
    runners_cpu: Duration,
    server_cpu: Option<Duration>,
}

impl<'a> Bench<'a> {
    fn new(cluster: &'a Cluster, plan: &'a Plan) -> Result<Self, String> {
        let mut config: postgres::Config = cluster
            .url
            .parse()
            .map_err(|e| format!("scripts/pg printed no PostgreSQL URL: {e}"))?;
        config.connect_timeout(Duration::from_secs(10));
        let admin = config
            .connect(NoTls)
            .map_err(|e| format!("cannot connect to the cluster: {e}"))?;
        let work = stagewise::work_dir("runners")?;
        Ok(Bench {
            cluster,
            plan,
            admin,
            work,
        })
    }

    /// A pipeline of `items` through a `sleep` of `nap`, on `store`.
    fn pipeline(items: u64, nap: &str, store: &str) -> String {
        let stages = format!(
            "[[stage]]\nname = \"nap\"\nkind = \"sleep\"\nduration = \"{nap}\"\nconcurrency = 8\n\n{SINK}"
        );
        stagewise::pipeline("", &stagewise::generate(items), &stages).replace(
            "store = \"sqlite:state.db\"",
            &format!("{store}\nlease_ttl = \"5m\""),
        )
    }

    /// Start `n` runners of `pipeline` together (each in a folder of its own, sharing the
    /// store) and wait for them all; every one must exit 0, and the store must hold every item
    /// done.
    fn run_shared(&mut self, name: &str, pipeline: &str, n: usize) -> Result<Shared, String> {
        self.admin
            .batch_execute("DROP SCHEMA IF EXISTS stagewise CASCADE")
            .map_err(|e| format!("cannot clear the store: {e}"))?;
        let before = self.cluster.postmaster.and_then(server_cpu);
        let dirs: Vec<PathBuf> = (0..n)
            .map(|i| self.work.join(format!("{name}-{i}")))
            .collect();
        let commands: Vec<Command> = dirs
            .iter()
            .map(|dir| stagewise::prepare(dir, pipeline))
            .collect::<Result<_, _>>()?;
        let began = Instant::now();
        let measured: Vec<std::io::Result<Measured>> = std::thread::scope(|s| {
            let handles: Vec<_> = commands
                .into_iter()
                .zip(&dirs)
                .map(|(cmd, dir)| {
                    let log = dir.join(stagewise::LOG);
                    s.spawn(move || measure(cmd, Some(&log), Stdout::Discard))
                })
                .collect();
            handles
                .into_iter()
                .map(|h| {
                    h.join()
                        .unwrap_or_else(|_| Err(std::io::Error::other("panicked")))
                })
                .collect()
        });
        let wall = began.elapsed();
        let server_cpu = match (&before, self.cluster.postmaster) {
            (Some((cpu, sessions)), Some(pm)) => {
                wait_for_sessions(pm, sessions).map(|after| after.saturating_sub(*cpu))
            }
            _ => None,
        };
        let mut runners_cpu = Duration::ZERO;
        for (m, dir) in measured.into_iter().zip(&dirs) {
            let m = m.map_err(|e| format!("{name}: cannot run stagewise: {e}"))?;
            if m.status.code() != Some(0) {
                return Err(format!(
                    "{name}: a runner exited with {}; see {}",
                    m.status,
                    dir.join(stagewise::LOG).display()
                ));
            }
            runners_cpu += m.cpu;
        }
        self.check_done(name)?;
        Ok(Shared {
            wall,
            runners_cpu,
            server_cpu,
        })
    }

    /// Every item of the store's one run is done.
    fn check_done(&mut self, name: &str) -> Result<(), String> {
        let row = self
            .admin
            .query_one(
                "SELECT count(*), count(*) FILTER (WHERE state = 'done') FROM stagewise.items",
                &[],
            )
            .map_err(|e| format!("{name}: cannot count the items: {e}"))?;
        let (all, done): (i64, i64) = (row.get(0), row.get(1));
        if all != done || all == 0 {
            return Err(format!("{name}: {done} of {all} items done"));
        }
        Ok(())
    }

    fn scaling(&mut self, table: &mut Table) -> Result<(), String> {
        let (items, runs) = (self.plan.items, self.plan.runs);
        let pipeline = Self::pipeline(items, "50ms", &format!("store = \"{}\"", self.cluster.url));
        let mut results: Vec<Vec<Shared>> = RUNNERS.iter().map(|_| Vec::new()).collect();
        for i in 0..runs {
            for (&n, out) in RUNNERS.iter().zip(&mut results) {
                progress(&format!("scaling: run {}/{runs}: {n} runner(s)", i + 1));
                out.push(self.run_shared(&format!("scaling-{n}-{i}"), &pipeline, n)?);
            }
        }
        let mut one = None;
        for (&n, out) in RUNNERS.iter().zip(&results) {
            let wall = median(out.iter().map(|r| r.wall)).unwrap_or_default();
            let rate = items as f64 / wall.as_secs_f64();
            let base = *one.get_or_insert(rate);
            table.line(row(
                "scaling: sleep 50ms ×8 each, PostgreSQL store",
                n,
                (rate, rate / base),
                out,
            ));
        }
        Ok(())
    }

    fn ceiling(&mut self, table: &mut Table) -> Result<(), String> {
        let (items, runs) = (self.plan.ceiling_items, self.plan.runs);
        let pg = Self::pipeline(items, "0s", &format!("store = \"{}\"", self.cluster.url));
        let sqlite = Self::pipeline(items, "0s", "store = \"sqlite:state.db\"");
        let (mut on_pg, mut on_sqlite) = (Vec::new(), Vec::new());
        for i in 0..runs {
            progress(&format!("ceiling: run {}/{runs}: PostgreSQL store", i + 1));
            on_pg.push(self.run_shared(&format!("ceiling-pg-{i}"), &pg, 1)?);
            progress(&format!("ceiling: run {}/{runs}: SQLite store", i + 1));
            on_sqlite.push(self.run_sqlite(&format!("ceiling-sqlite-{i}"), &sqlite)?);
        }
        let rate = |out: &[Shared]| {
            items as f64
                / median(out.iter().map(|r| r.wall))
                    .unwrap_or_default()
                    .as_secs_f64()
        };
        let sqlite_rate = rate(&on_sqlite);
        table.line(row(
            "ceiling: no-op stages, SQLite store (the reference)",
            1,
            (sqlite_rate, 1.0),
            &on_sqlite,
        ));
        let pg_rate = rate(&on_pg);
        table.line(row(
            "ceiling: no-op stages, PostgreSQL store (vs SQLite)",
            1,
            (pg_rate, pg_rate / sqlite_rate),
            &on_pg,
        ));
        Ok(())
    }

    /// One runner on a SQLite store in a fresh folder.
    fn run_sqlite(&mut self, name: &str, pipeline: &str) -> Result<Shared, String> {
        let dir = self.work.join(name);
        let cmd = stagewise::prepare(&dir, pipeline)?;
        let m = measure(cmd, Some(&dir.join(stagewise::LOG)), Stdout::Discard)
            .map_err(|e| format!("{name}: cannot run stagewise: {e}"))?;
        stagewise::all_done(name, &dir, &m, self.plan.ceiling_items, "items")?;
        Ok(Shared {
            wall: m.wall,
            runners_cpu: m.cpu,
            server_cpu: None,
        })
    }
}

/// A line of the table: `what`, with `runners`, its items/s and ratio, and the medians of `out`.
fn row(what: &str, runners: usize, (rate, ratio): (f64, f64), out: &[Shared]) -> String {
    let wall = median(out.iter().map(|r| r.wall)).unwrap_or_default();
    let cpu = median(out.iter().map(|r| r.runners_cpu)).unwrap_or_default();
    let server = median(out.iter().filter_map(|r| r.server_cpu))
        .map_or_else(|| "-".to_owned(), |d| format!("{:.2}", d.as_secs_f64()));
    format!(
        "{what} | {runners} | {} | {ratio:.2}x | {:.2} | {:.2} | {server}",
        thousands(rate),
        wall.as_secs_f64(),
        cpu.as_secs_f64(),
    )
}
