//! Signal campaign (the issue "Signal campaign"; ARCHITECTURE.md "Run semantics" → Shutdown and
//! "Exit codes"; docs/running.md "Stopping"): SIGTERM, SIGINT, SIGHUP and SIGUSR1 at random
//! moments and in storms, under debug logging, with stderr read, read slowly, stuck or closed.
//! Every run ends within `shutdown_grace` + 2 s of its first stop signal with 75 (or 0/1 if it
//! had finished), never needs SIGKILL, and resuming loses nothing.
//!
//! One pipeline, logging at debug level (about 70 kB/s): `generate` → `sleep` with jitter →
//! `chatty` (a `fault` with 40 % transient errors retried at once: a debug line each, and a
//! heartbeat every 10 ms) → `stuck` (a blocking `fault` whose rare hangs never return and
//! ignore their cancel flag: the 1 s `timeout` ends the attempt, the thread is abandoned) → a
//! `jsonl` sink.
//!
//! `scaled(12)` rounds, each one `run` of the current batch: every pair of a stderr mode (read
//! by the harness / read 16 bytes every 50 ms / a full FIFO nobody reads / closed) and a plan
//! (one stop signal of TERM, INT or HUP at a random moment; a storm of 20–50 signals of TERM,
//! INT, HUP, USR1 and USR2 within 100 ms; SIGUSR1 alone 3–6 times, then nothing) once per
//! scale, in an order, moments and signals drawn from the seed. A round asserts:
//!
//! - the exit code: 75 after a stop signal, with the store saying `interrupted` (the signal
//!   named for a single stop); 0/1 only when the batch was complete (it finished before the
//!   signal took effect), and for SIGUSR1 only always 0/1;
//! - the time from the first stop signal to the exit: at most `shutdown_grace` + 2 s;
//! - no SIGKILL: the harness kill guard never fires (it would fail the test, naming the run);
//! - after an interrupted run: no item left in flight, no progress lost (`done` never goes
//!   down, every done key is in the sink), and the next run of the batch resumes the same run.
//!
//! When a run finishes the batch (and after the last round, by a plain run if needed): every
//! key is in the sink or failed with its reason, never neither (`lost`, which must be 0), each
//! record is its key's, and the sink lines written twice are within the items in flight per
//! interrupted run (an orderly stop saves its checkpoint: redone work is at most what was in
//! flight). The next batch starts in a fresh folder.
//!
//! A last test pins the worst case the campaign comes near (its stuck-stderr stops exit some
//! 3.85 s after the signal, against a bound of 4 s): a blocking call that never returns, begun
//! late in the drain, with stderr full.

mod util;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::fs::File;
use std::io::{Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;
use util::campaign::{scale, scaled, seed, Report};
use util::{keys, Output, Pipeline, Rng, Running};

const NAME: &str = "signal";
/// Items of a batch: about 4 s of work on the test machine, so that a batch sees a few
/// interrupted runs before one finishes it.
const ITEMS: u64 = 1000;
/// `[pipeline] shutdown_grace`.
const GRACE: Duration = Duration::from_secs(2);
/// The contract: from the first stop signal to the exit, `shutdown_grace` + 2 s. No start-up
/// allowance is needed: the clock starts after the run started, with a signal the process
/// already handles.
const EXIT_BOUND: Duration = Duration::from_secs(GRACE.as_secs() + 2);
/// The harness kill guard for one run: a whole batch under `SIGUSR1` with room for a loaded
/// machine. It firing (a SIGKILL was needed) fails the test with the run's output.
const GUARD: Duration = Duration::from_secs(60);
/// `concurrency` of the stages after the source: nap, chatty, stuck, out.
const IN_FLIGHT: u64 = 8 + 8 + 16 + 1;
/// The stop signals and all the signals a storm draws from.
const STOPS: [i32; 3] = [libc::SIGTERM, libc::SIGINT, libc::SIGHUP];
const STORM: [i32; 5] = [
    libc::SIGTERM,
    libc::SIGINT,
    libc::SIGHUP,
    libc::SIGUSR1,
    libc::SIGUSR2,
];

fn pipeline(fault_seed: u64) -> Pipeline {
    Pipeline::new(&format!(
        r#"
        [pipeline]
        name = "{NAME}"
        heartbeat = "10ms"
        shutdown_grace = "{grace}s"

        # No stage's timeout outlasts the grace.
        [defaults]
        timeout = "1s"

        [[stage]]
        name = "src"
        kind = "generate"
        count = {ITEMS}

        [[stage]]
        name = "nap"
        kind = "sleep"
        duration = "5ms"
        jitter = "20ms"
        concurrency = 8

        # A debug line for each retry: the log a stuck reader has to hold up.
        [[stage]]
        name = "chatty"
        kind = "fault"
        error_rate = 0.4
        seed = {fault_seed}
        concurrency = 8
        retry = {{ attempts = 10, initial = "1ms", max = "5ms" }}

        # A hang never returns (the default `hang_for`, an hour) and ignores its cancel flag:
        # the 1 s timeout ends the attempt, its thread is abandoned 2 s later and stays taken
        # for the process's life (rare enough to stay far below `max_abandoned`, 16).
        [[stage]]
        name = "stuck"
        kind = "fault"
        blocking = true
        hang_rate = 0.003
        seed = {fault_seed}
        concurrency = 16
        retry = {{ attempts = 4, initial = "10ms", max = "100ms" }}

        [[stage]]
        name = "out"
        kind = "jsonl"
        path = "out.jsonl"
        concurrency = 1
        "#,
        grace = GRACE.as_secs(),
    ))
}

/// Where the run's standard error goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stderr {
    /// The harness's pipe, read as fast as it comes.
    Read,
    /// A FIFO the test reads 16 bytes of every 50 ms.
    Slow,
    /// A FIFO nobody reads, already full (the test holds it open, so the process can open it).
    Unread,
    /// Closed before the binary starts (`2>&-`).
    Closed,
}

const MODES: [Stderr; 4] = [Stderr::Read, Stderr::Slow, Stderr::Unread, Stderr::Closed];

/// The kinds of signal plan.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Stop,
    Storm,
    Usr1,
}

const KINDS: [Kind; 3] = [Kind::Stop, Kind::Storm, Kind::Usr1];

/// What a round sends, with the moments counted from the run's start.
#[derive(Debug)]
enum Plan {
    /// One stop signal, `after` the run started.
    Stop { signal: i32, after: Duration },
    /// `after` the run started, each signal `gap` after the one before: 100 ms in all at most.
    Storm {
        after: Duration,
        signals: Vec<(i32, Duration)>,
    },
    /// SIGUSR1, each `gap` after the one before, then nothing: the run must finish by itself.
    Usr1 { gaps: Vec<Duration> },
}

impl Plan {
    fn draw(kind: Kind, rng: &mut Rng) -> Plan {
        match kind {
            Kind::Stop => Plan::Stop {
                signal: STOPS[rng.range(0, 2) as usize],
                after: ms(rng.range(0, 1500)),
            },
            Kind::Storm => {
                let n = rng.range(20, 50);
                let most_gap = 100_000 / n;
                Plan::Storm {
                    after: ms(rng.range(0, 1500)),
                    signals: (0..n)
                        .map(|i| {
                            let gap = if i == 0 { 0 } else { rng.range(0, most_gap) };
                            (STORM[rng.range(0, 4) as usize], Duration::from_micros(gap))
                        })
                        .collect(),
                }
            }
            Kind::Usr1 => Plan::Usr1 {
                gaps: (0..rng.range(3, 6))
                    .map(|_| ms(rng.range(50, 700)))
                    .collect(),
            },
        }
    }
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn signal_name(signal: i32) -> &'static str {
    match signal {
        libc::SIGTERM => "SIGTERM",
        libc::SIGINT => "SIGINT",
        libc::SIGHUP => "SIGHUP",
        libc::SIGUSR1 => "SIGUSR1",
        libc::SIGUSR2 => "SIGUSR2",
        _ => "another signal",
    }
}

/// A FIFO in the pipeline's folder.
fn mkfifo(p: &Pipeline, name: &str) -> PathBuf {
    let path = p.dir.join(name);
    let made = Command::new("mkfifo")
        .arg(&path)
        .status()
        .expect("run mkfifo");
    assert!(made.success(), "mkfifo {}", path.display());
    path
}

/// A reader that takes 16 bytes every 50 ms from a FIFO (a log collector that cannot keep up)
/// until told to stop or the writer is gone; what it read, for failure messages.
struct SlowReader {
    stop: Arc<AtomicBool>,
    read: Arc<Mutex<Vec<u8>>>,
}

impl SlowReader {
    fn start(path: PathBuf) -> SlowReader {
        let stop = Arc::new(AtomicBool::new(false));
        let read = Arc::new(Mutex::new(Vec::new()));
        let (stop_in, read_in) = (Arc::clone(&stop), Arc::clone(&read));
        // Detached: it ends at the writer's end or at `stop`; never joined, so that a process
        // that never opened the FIFO cannot hold the test.
        thread::spawn(move || {
            // Blocks until the process opens the FIFO to write.
            let Ok(mut fifo) = File::open(&path) else {
                return;
            };
            let mut buf = [0u8; 16];
            while !stop_in.load(Ordering::Relaxed) {
                match fifo.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => read_in
                        .lock()
                        .expect("slow reader buffer")
                        .extend_from_slice(&buf[..n]),
                }
                thread::sleep(ms(50));
            }
        });
        SlowReader { stop, read }
    }

    /// Stops reading; the head of the log it got.
    fn finish(&self) -> String {
        self.stop.store(true, Ordering::Relaxed);
        String::from_utf8_lossy(&self.read.lock().expect("slow reader buffer")).into_owned()
    }
}

/// One run of the binary, with its stderr where `mode` says.
struct Spawned {
    running: Running,
    slow: Option<SlowReader>,
    /// The unread FIFO, held open (read and write) for the process's life, never read.
    unread: Option<File>,
}

fn spawn(p: &Pipeline, mode: Stderr) -> Spawned {
    let cmd = p.cmd("run").env("STAGEWISE_LOG", "debug").timeout(GUARD);
    // The FIFOs and the closing are done by a shell that then `exec`s the binary: the process
    // the harness watches (and signals) is the binary itself.
    match mode {
        Stderr::Read => Spawned {
            running: cmd.spawn(),
            slow: None,
            unread: None,
        },
        Stderr::Slow => {
            let path = p.dir.join("slow.fifo");
            if !path.exists() {
                mkfifo(p, "slow.fifo");
            }
            let slow = SlowReader::start(path);
            Spawned {
                running: cmd.after_shell("exec 2>slow.fifo || exit 99").spawn(),
                slow: Some(slow),
                unread: None,
            }
        }
        Stderr::Unread => {
            // A fresh FIFO each time: what an earlier process left in it stays unread.
            let name = format!("unread-{}.fifo", std::process::id());
            let path = p.dir.join(&name);
            if path.exists() {
                std::fs::remove_file(&path).expect("remove the old FIFO");
            }
            mkfifo(p, &name);
            let fifo = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .custom_flags(libc::O_NONBLOCK)
                .open(&path)
                .expect("open the FIFO");
            // Full before the process starts: the collector stopped reading long ago, so the
            // log writer's very first write blocks.
            let chunk = [b'.'; 4096];
            loop {
                match (&fifo).write(&chunk) {
                    Ok(_) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                    Err(e) => panic!("fill the FIFO: {e}"),
                }
            }
            Spawned {
                running: cmd
                    .after_shell(&format!("exec 2>{name} || exit 99"))
                    .spawn(),
                slow: None,
                unread: Some(fifo),
            }
        }
        Stderr::Closed => Spawned {
            running: cmd.after_shell("exec 2>&-").spawn(),
            slow: None,
            unread: None,
        },
    }
}

/// `status --json` as JSON, every failed item listed; it must succeed.
fn status(p: &Pipeline) -> Value {
    let out = p
        .cmd("status")
        .arg("--json")
        .arg("--limit")
        .arg(&ITEMS.to_string())
        .output();
    out.assert_code(0);
    serde_json::from_str(out.stdout.trim())
        .unwrap_or_else(|e| panic!("status --json is not JSON ({e})\n{out}"))
}

fn count(status: &Value, state: &str) -> u64 {
    status["counts"][state]
        .as_u64()
        .unwrap_or_else(|| panic!("no `counts.{state}`: {status}"))
}

/// Waits until the run has started: `run started` in stderr where the harness reads it, else
/// `status` showing the batch's run taken up by a live process. False if the process ended or
/// 30 s passed first.
fn wait_started(p: &Pipeline, spawned: &mut Spawned, mode: Stderr) -> bool {
    let within = Duration::from_secs(30);
    if mode == Stderr::Read {
        return spawned.running.wait_for_stderr("run started", within);
    }
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if spawned.running.has_exited() {
            return false;
        }
        // A resumed run's outcome is cleared when the process takes it up (its `status` keeps
        // saying `interrupted` meanwhile).
        let s = status(p);
        if s["run"]["process"] == "alive" && s["run"]["outcome"].is_null() {
            return true;
        }
        thread::sleep(ms(50));
    }
    false
}

/// Sends `signal` unless the process has ended. (Until the harness reaps it — `has_exited` is
/// the only place that does before `wait` — a process that just ended is a zombie, and the
/// signal is harmlessly taken.)
fn send(running: &mut Running, signal: i32) -> bool {
    if running.has_exited() {
        return false;
    }
    running.signal(signal);
    true
}

/// What one round did, for its assertions and its failure messages.
struct Round<'a> {
    seed: u64,
    number: u64,
    batch: u64,
    mode: Stderr,
    plan: &'a Plan,
    /// Signals actually sent, in order.
    sent: Vec<i32>,
    first_stop: Option<Instant>,
    out: Option<Output>,
    /// The head of the log, as the slow reader got it.
    slow_head: String,
    status: Value,
}

impl fmt::Display for Round<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let sent: Vec<&str> = self.sent.iter().map(|&s| signal_name(s)).collect();
        writeln!(
            f,
            "seed {} (STAGEWISE_CAMPAIGN_SEED={}), round {}, batch {}: stderr {:?}, plan {:?}",
            self.seed, self.seed, self.number, self.batch, self.mode, self.plan
        )?;
        writeln!(f, "signals sent: {sent:?}")?;
        writeln!(f, "status after: {}", self.status["run"])?;
        writeln!(f, "counts after: {}", self.status["counts"])?;
        if !self.slow_head.is_empty() {
            let head: String = self
                .slow_head
                .lines()
                .take(20)
                .collect::<Vec<_>>()
                .join("\n");
            writeln!(f, "--- the slow reader's first lines ---\n{head}")?;
        }
        if matches!(self.mode, Stderr::Unread | Stderr::Closed | Stderr::Slow) {
            writeln!(
                f,
                "(stderr went {:?}: the harness output below has none of it; the summary is \
                 in the store's folder)",
                self.mode
            )?;
        }
        match &self.out {
            Some(out) => write!(f, "{out}"),
            None => write!(f, "(still running)"),
        }
    }
}

/// The batch under way: its pipeline and what its runs did so far.
struct Batch {
    number: u64,
    p: Pipeline,
    run_id: Option<u64>,
    done: u64,
    interrupted: u64,
}

/// What the campaign counts.
#[derive(Default)]
struct Tally {
    runs: u64,
    signals: u64,
    storms: u64,
    max_exit_ms: u64,
    interrupted: u64,
    finished_first: u64,
    batches: u64,
    items: u64,
    failed: u64,
    duplicates: u64,
    lost: u64,
}

/// Checks a finished batch: every key in the sink or failed, never neither, never both; each
/// record its key's; duplicates within the items in flight per interrupted run.
fn check_finished(batch: &Batch, status: &Value, code: Option<i32>, tally: &mut Tally, why: &str) {
    assert_eq!(count(status, "pending"), 0, "{why}");
    assert_eq!(count(status, "in_flight"), 0, "{why}");
    let run = &status["run"];
    assert!(
        run["outcome"] == "finished" || run["outcome"] == "finished_with_failures",
        "{why}"
    );
    let sink = batch.p.sink("out.jsonl");
    for record in &sink.records {
        let key = record["key"].as_str().expect("checked by Sink::read");
        assert_eq!(
            record
                .get("n")
                .and_then(Value::as_u64)
                .map(|n| n.to_string()),
            Some(key.to_owned()),
            "the record for key {key} must carry its generated `n`: {record:?}\n{why}"
        );
    }
    let written = sink.unique_keys();
    let failed: BTreeSet<String> = status["failed"]
        .as_array()
        .unwrap_or_else(|| panic!("no `failed` list\n{why}"))
        .iter()
        .map(|f| {
            assert!(
                f["error"].as_str().is_some_and(|e| !e.is_empty()),
                "a failed item without its reason: {f}\n{why}"
            );
            f["key"].as_str().expect("a failed item's key").to_owned()
        })
        .collect();
    let both: Vec<&String> = written.intersection(&failed).collect();
    assert!(both.is_empty(), "in the sink and failed: {both:?}\n{why}");
    let all = keys(ITEMS as usize);
    let lost: Vec<&String> = all
        .iter()
        .filter(|k| !written.contains(*k) && !failed.contains(*k))
        .collect();
    tally.lost += lost.len() as u64;
    assert!(
        lost.is_empty(),
        "{} keys neither in the sink nor failed: {:?}\n{why}",
        lost.len(),
        &lost[..lost.len().min(20)]
    );
    assert_eq!(written.len() + failed.len(), all.len(), "{why}");
    assert_eq!(count(status, "done"), written.len() as u64, "{why}");
    assert_eq!(count(status, "failed"), failed.len() as u64, "{why}");
    assert_eq!(
        code,
        Some(if failed.is_empty() { 0 } else { 1 }),
        "exit 1 exactly when items failed\n{why}"
    );

    let redone = (sink.len() - written.len()) as u64;
    let bound = batch.interrupted * IN_FLIGHT;
    assert!(
        redone <= bound,
        "{redone} sink lines written twice after {} interrupted runs; the bound is {bound} \
         ({IN_FLIGHT} in flight each)\n{why}",
        batch.interrupted
    );
    let mut writes: BTreeMap<&str, u64> = BTreeMap::new();
    for record in &sink.records {
        *writes
            .entry(record["key"].as_str().expect("checked"))
            .or_default() += 1;
    }
    let most = writes.values().max().copied().unwrap_or(0);
    assert!(
        most <= batch.interrupted + 1,
        "a key was written {most} times over {} interrupted runs\n{why}",
        batch.interrupted
    );
    tally.batches += 1;
    tally.items += ITEMS;
    tally.failed += failed.len() as u64;
    tally.duplicates += redone;
}

/// The run id of the batch, which every run of it must keep (a resume, never a new batch).
fn same_run(batch: &mut Batch, status: &Value, why: &str) {
    let id = status["run"]["id"]
        .as_u64()
        .unwrap_or_else(|| panic!("no run in `status`\n{why}"));
    match batch.run_id {
        None => batch.run_id = Some(id),
        Some(before) => assert_eq!(
            id, before,
            "the run after an interrupted one did not resume it\n{why}"
        ),
    }
    assert_eq!(status["run"]["items"].as_u64(), Some(ITEMS), "{why}");
}

#[test]
fn signals_at_random_moments_and_in_storms_always_end_in_time() {
    let mut campaign = Report::new("signal");
    let seed = seed("signal", 0x5167_0001);
    let mut rng = Rng::new(seed);
    let rounds = scaled(12);

    // Every pair of stderr mode and plan kind once per scale, in a seeded order.
    let mut schedule: Vec<(Stderr, Kind)> = (0..scale())
        .flat_map(|_| {
            MODES
                .iter()
                .flat_map(|&m| KINDS.iter().map(move |&k| (m, k)))
        })
        .collect();
    for i in (1..schedule.len()).rev() {
        schedule.swap(i, rng.range(0, i as u64) as usize);
    }
    assert_eq!(schedule.len() as u64, rounds);

    let mut tally = Tally::default();
    let mut batch: Option<Batch> = None;
    let mut batches = 0;
    for (number, &(mode, kind)) in schedule.iter().enumerate() {
        let number = number as u64;
        let b = batch.get_or_insert_with(|| {
            batches += 1;
            Batch {
                number: batches,
                p: pipeline(seed.wrapping_add(batches) % 10_000),
                run_id: None,
                done: 0,
                interrupted: 0,
            }
        });
        let plan = Plan::draw(kind, &mut rng);
        let mut spawned = spawn(&b.p, mode);
        tally.runs += 1;
        let mut round = Round {
            seed,
            number,
            batch: b.number,
            mode,
            plan: &plan,
            sent: Vec::new(),
            first_stop: None,
            out: None,
            slow_head: String::new(),
            status: Value::Null,
        };
        let started = wait_started(&b.p, &mut spawned, mode);
        if !started {
            round.out = Some(spawned.running.wait());
            panic!("the run did not start\n{round}");
        }

        let running = &mut spawned.running;
        match &plan {
            Plan::Stop { signal, after } => {
                thread::sleep(*after);
                let at = Instant::now();
                if send(running, *signal) {
                    round.first_stop = Some(at);
                    round.sent.push(*signal);
                }
            }
            Plan::Storm { after, signals } => {
                tally.storms += 1;
                thread::sleep(*after);
                for &(signal, gap) in signals {
                    thread::sleep(gap);
                    let at = Instant::now();
                    if !send(running, signal) {
                        break;
                    }
                    round.sent.push(signal);
                    if STOPS.contains(&signal) && round.first_stop.is_none() {
                        round.first_stop = Some(at);
                    }
                }
                // 20 or more signals of five kinds without a stop is all but impossible; if a
                // seed draws it, the storm still ends with one.
                if round.first_stop.is_none() {
                    let at = Instant::now();
                    if send(running, libc::SIGTERM) {
                        round.first_stop = Some(at);
                        round.sent.push(libc::SIGTERM);
                    }
                }
            }
            Plan::Usr1 { gaps } => {
                for gap in gaps {
                    thread::sleep(*gap);
                    if !send(running, libc::SIGUSR1) {
                        break;
                    }
                    round.sent.push(libc::SIGUSR1);
                }
            }
        }
        let out = spawned.running.wait();
        let took = round.first_stop.map(|at| at.elapsed());
        if let Some(slow) = &spawned.slow {
            round.slow_head = slow.finish();
        }
        drop(spawned.unread.take());
        tally.signals += round.sent.len() as u64;
        round.out = Some(out);
        round.status = status(&b.p);
        let out = round.out.as_ref().expect("set above");
        let code = out.code;
        eprintln!(
            "round {number} (batch {}): stderr {mode:?}, {kind:?}, {} signal(s), exit {code:?}{}",
            b.number,
            round.sent.len(),
            took.map_or(String::new(), |t| format!(
                " {} ms after the first stop",
                t.as_millis()
            ))
        );
        same_run(b, &round.status, &round.to_string());

        if let Some(took) = took {
            tally.max_exit_ms = tally.max_exit_ms.max(took.as_millis() as u64);
            assert!(
                took <= EXIT_BOUND,
                "the exit took {took:?} after the first stop signal; the bound is \
                 `shutdown_grace` + 2 s = {EXIT_BOUND:?}\n{round}"
            );
        }
        let complete =
            count(&round.status, "pending") == 0 && count(&round.status, "in_flight") == 0;
        match code {
            Some(75) if round.first_stop.is_some() => {
                let run = &round.status["run"];
                assert_eq!(run["outcome"], "interrupted", "{round}");
                assert_eq!(run["exit_code"], 75, "{round}");
                if let Plan::Stop { signal, .. } = plan {
                    assert_eq!(
                        run["reason"],
                        format!("received {}", signal_name(signal)),
                        "{round}"
                    );
                }
                // Interrupted items go back to pending; what was done stays done.
                assert_eq!(count(&round.status, "in_flight"), 0, "{round}");
                let done = count(&round.status, "done");
                assert!(
                    done >= b.done,
                    "done went from {} to {done}: progress lost\n{round}",
                    b.done
                );
                let in_sink = b.p.sink("out.jsonl").unique_keys().len() as u64;
                assert!(
                    in_sink >= done,
                    "{done} items done, {in_sink} keys in the sink\n{round}"
                );
                b.done = done;
                b.interrupted += 1;
                tally.interrupted += 1;
            }
            Some(0 | 1) if complete => {
                if round.first_stop.is_some() {
                    tally.finished_first += 1;
                }
                let why = round.to_string();
                check_finished(b, &round.status, code, &mut tally, &why);
                batch = None;
            }
            _ => panic!(
                "exit {code:?}: expected {}\n{round}",
                if round.first_stop.is_some() {
                    "75 (or 0/1 with the batch complete)"
                } else {
                    "0 or 1, the batch complete: SIGUSR1 never stops a run"
                }
            ),
        }
    }

    // A plain run finishes the last batch, resuming it.
    if let Some(mut b) = batch.take() {
        let out = b.p.cmd("run").timeout(GUARD).output();
        tally.runs += 1;
        let status = status(&b.p);
        let why = format!("seed {seed}: the plain run after the rounds\n{out}");
        same_run(&mut b, &status, &why);
        assert!(matches!(out.code, Some(0 | 1)), "{why}");
        assert!(
            out.stderr.contains("resumed=true"),
            "the run did not say it resumed\n{why}"
        );
        check_finished(&b, &status, out.code, &mut tally, &why);
    }

    campaign
        .set("runs", tally.runs)
        .set("signals", tally.signals)
        .set("storms", tally.storms)
        .set("max_exit_ms", tally.max_exit_ms)
        .set("lost", tally.lost)
        .set("interrupted", tally.interrupted)
        .set("finished_before_the_signal", tally.finished_first)
        .set("batches", tally.batches)
        .set("items", tally.items)
        .set("failed", tally.failed)
        .set("duplicates", tally.duplicates);
    campaign.finish();
}

/// The worst case of the campaign, made certain: stderr a full pipe nobody reads, and a
/// blocking call that never returns, begun during the drain (its item finishes `nap` 1.7 s into
/// the grace) so that it is still running when the grace ends. The run must still exit 75
/// within `shutdown_grace` + 2 s of SIGTERM.
#[test]
fn a_stop_with_stderr_stuck_and_a_call_that_never_returns_ends_in_time() {
    let p = Pipeline::new(&format!(
        r#"
        [pipeline]
        name = "late-call"
        shutdown_grace = "{grace}s"

        [defaults]
        timeout = "1s"

        [[stage]]
        name = "src"
        kind = "generate"
        count = 1

        [[stage]]
        name = "nap"
        kind = "sleep"
        duration = "1800ms"
        timeout = "2s"

        [[stage]]
        name = "stuck"
        kind = "fault"
        blocking = true
        hang_rate = 1.0

        [[stage]]
        name = "out"
        kind = "jsonl"
        path = "out.jsonl"
        "#,
        grace = GRACE.as_secs(),
    ));
    let mut spawned = spawn(&p, Stderr::Unread);
    assert!(
        wait_started(&p, &mut spawned, Stderr::Unread),
        "the run did not start\n{}",
        spawned.running.wait()
    );
    thread::sleep(ms(100));
    let signalled = Instant::now();
    assert!(send(&mut spawned.running, libc::SIGTERM), "it ended first");
    let out = spawned.running.wait();
    let took = signalled.elapsed();
    drop(spawned.unread.take());
    let status = status(&p);
    assert_eq!(out.code, Some(75), "store: {}\n{out}", status["run"]);
    assert!(
        took <= EXIT_BOUND,
        "the exit took {took:?} after SIGTERM; the bound is `shutdown_grace` + 2 s = \
         {EXIT_BOUND:?}\nstore: {}\n{out}",
        status["run"]
    );
    assert_eq!(count(&status, "pending"), 1, "{}", status["counts"]);
}
