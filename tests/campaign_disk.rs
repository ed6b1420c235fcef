//! Disk faults under the state folder (the issue "Disk faults"; ARCHITECTURE.md, "Exit codes":
//! the state store unusable — disk full, read-only — is exit 3, or 2 when found before work
//! starts): the run ends by itself, soon, with an error that says what is wrong with which
//! disk, never a panic; the checkpoint it leaves is intact, and once the disk is back the next
//! run resumes it and finishes with nothing lost.
//!
//! The whole state folder is a small filesystem of the test's own (see `util::disk`): with
//! `[checkpoint] store = "sqlite:state/state.db"`, the store, its `-wal`, `-shm` and lock, the
//! summary and the flight record all live in `state/` (docs/operations.md, "State files are
//! private"; `summary_path` and `flight_path` in core/src/runner/mod.rs). The sink, `out.jsonl`,
//! is outside it. Faults:
//!
//! - full: a tmpfs filled to `ENOSPC` while a run goes on, and before one starts;
//! - read-only before a run starts: the tmpfs remounted `ro`;
//! - read-only while a run goes on: `mount -o remount,ro` is refused by the kernel (`EBUSY`)
//!   while SQLite holds the store open for writing, so that one is ext4 on a loop device going
//!   read-only on an error of its own (`errors=remount-ro`), as a failing disk does.
//!
//! Scaled by `STAGEWISE_CAMPAIGN_SCALE`: the rounds mid-run (each a batch of 2,000 items),
//! and the items of the runs at the start (on a file system as much larger); the fault moments
//! come from the campaign's seed.

mod util;

use std::thread;
use std::time::{Duration, Instant};

use serde_json::json;
use util::campaign::{scale, seed, Report};
use util::disk::SmallFs;
use util::{keys, Output, Pipeline, Rng};

/// The state folder, relative to the pipeline file: the small filesystem's mountpoint.
const STATE: &str = "state";
/// The store in it, as the pipeline names it.
const STORE: &str = "state/state.db";
/// Items of a batch at scale 1: about a second of work (4 ms each, 8 at once).
const ITEMS: u64 = 2000;
/// Fault rounds while a run goes on, at scale 1.
const ROUNDS: u64 = 3;
/// The longest a run may take to end by itself once its disk failed (or, at the start, at all).
const ENDS_WITHIN: Duration = Duration::from_secs(20);
/// The harness's kill guard for each run: past it the run hung, and the test fails.
const GUARD: Duration = Duration::from_secs(45);

#[derive(Clone, Copy, Debug)]
enum Fault {
    /// No space left on the state folder's filesystem.
    Full,
    /// The state folder's filesystem is read-only.
    ReadOnly,
}

impl Fault {
    /// Whether `line` says what this fault is, in words an operator recognises.
    fn named_in(self, line: &str) -> bool {
        let line = line.to_lowercase();
        let words: &[&str] = match self {
            Fault::Full => &[
                "no space",
                "disk is full",
                "disk full",
                "filesystem is full",
            ],
            Fault::ReadOnly => &["read-only", "readonly", "read only"],
        };
        words.iter().any(|w| line.contains(w))
    }
}

fn pipeline(name: &str, items: u64) -> Pipeline {
    Pipeline::new(&format!(
        r#"
        [pipeline]
        name = "{name}"
        heartbeat = "1s"

        [checkpoint]
        store = "sqlite:{STORE}"
        commit_interval = "50ms"
        commit_max_items = 100

        [[stage]]
        name = "src"
        kind = "generate"
        count = {items}

        [[stage]]
        name = "nap"
        kind = "sleep"
        duration = "4ms"
        concurrency = 8

        [[stage]]
        name = "out"
        kind = "jsonl"
        path = "out.jsonl"
        "#
    ))
}

/// Redone sink writes one fault on a tmpfs may cause (as after `kill -9`, docs/pipeline.md
/// `commit_max_items`): the items in flight (8 + 1) plus three commits' worth.
const REDONE_PER_FAULT: usize = 9 + 3 * 100;

/// What the binary got wrong, collected so that a test checks everything it can — the resume
/// after a wrong message too — and then fails once, listing every defect it found.
#[derive(Default)]
struct Defects(Vec<String>);

impl Defects {
    fn check(&mut self, ok: bool, what: impl FnOnce() -> String) {
        if !ok {
            let what = what();
            eprintln!("DEFECT: {what}");
            self.0.push(what);
        }
    }

    fn assert_none(self) {
        assert!(
            self.0.is_empty(),
            "{} defect(s):\n\n{}",
            self.0.len(),
            self.0.join("\n\n")
        );
    }
}

/// The log's error lines.
fn error_lines(out: &Output) -> Vec<&str> {
    out.stderr_lines()
        .filter(|l| l.contains(" ERROR ") || l.starts_with("error"))
        .collect()
}

/// The run a disk fault ended: it ended with one of `codes`, by itself within [`ENDS_WITHIN`]
/// of the fault, without a panic, with an error line that says what `fault` is and one that
/// names the store (the operator must know which disk to see to).
fn check_ended_on_disk_fault(
    d: &mut Defects,
    out: &Output,
    fault: Fault,
    codes: &[i32],
    after_fault: Duration,
) {
    let errors = error_lines(out);
    d.check(out.code.is_some_and(|c| codes.contains(&c)), || {
        format!(
            "`{}` on a {fault:?} state folder exited {:?}, not one of {codes:?} (ARCHITECTURE.md: \
             the state store unusable); errors: {errors:#?}",
            out.line, out.code
        )
    });
    d.check(after_fault <= ENDS_WITHIN, || {
        format!("the run took {after_fault:?} to end after the fault (at most {ENDS_WITHIN:?})")
    });
    d.check(
        !["panicked", "stack backtrace", "RUST_BACKTRACE"]
            .iter()
            .any(|p| out.stderr.contains(p)),
        || format!("a {fault:?} state folder made the binary panic\n{out}"),
    );
    d.check(errors.iter().any(|l| fault.named_in(l)), || {
        format!(
            "`{}` on a {fault:?} state folder (exit {:?}): no error line says the disk is {}: \
             {errors:#?}",
            out.line,
            out.code,
            match fault {
                Fault::Full => "full (no space left)",
                Fault::ReadOnly => "read-only",
            }
        )
    });
    d.check(errors.iter().any(|l| l.contains(STORE)), || {
        format!(
            "`{}` on a {fault:?} state folder (exit {:?}): no error line names the store \
             (`{STORE}`), so which disk to see to is left to guess: {errors:#?}",
            out.line, out.code
        )
    });
}

/// `PRAGMA integrity_check` of the store says `ok`.
fn assert_store_intact(p: &Pipeline) {
    let conn = rusqlite::Connection::open(p.dir.join(STORE)).expect("open the store");
    let verdict: String = conn
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .expect("run integrity_check");
    assert_eq!(verdict, "ok", "the store is damaged");
}

/// After a disk fault (the disk back now): the checkpoint still holds the batch (all of it
/// done, if the run the fault hit said it finished); the next run resumes that run and
/// finishes (exit 0) with every key in the sink, `status` agreeing and the store intact. The
/// The tmpfs of the state folder at the start: 4 MiB a scale, for the store of the scale's
/// items once space is back.
fn fs_size() -> String {
    format!("{}m", 4 * scale())
}

/// sink's duplicate lines.
fn assert_resumes_and_finishes(p: &Pipeline, items: u64, said_finished: bool) -> usize {
    let before = p.status();
    assert_eq!(
        before.total(),
        items,
        "the checkpoint lost items of the batch: {:?}",
        before.counts
    );
    if said_finished {
        assert_eq!(
            before.count("done"),
            items,
            "the run exited 0 with items not done: {:?}",
            before.counts
        );
    }
    let out = p.cmd("run").timeout(GUARD).output();
    out.assert_code(0);
    let after = p.status();
    if !said_finished {
        assert_eq!(
            after.raw["run"]["id"], before.raw["run"]["id"],
            "the run was not resumed (a new batch was taken)\n{out}"
        );
    }
    assert_eq!(after.count("done"), items, "{:?}\n{out}", after.counts);
    let sink = p.sink("out.jsonl");
    assert_eq!(
        sink.unique_keys(),
        keys(items as usize),
        "every key must reach the sink"
    );
    assert_store_intact(p);
    sink.len() - sink.unique_keys().len()
}

/// What one round left.
struct Round {
    /// The exit code of the run the fault hit.
    code: Option<i32>,
    /// Whether the fault hit the run before it had finished.
    landed: bool,
    /// How long the run took to end after the fault.
    after_fault: Duration,
    /// Sink lines written twice.
    duplicates: usize,
}

/// Starts a run, and `delay` after it started puts `fault` on its state folder with `inflict`;
/// checks that the run ends as a disk fault should (or, if it had finished first, cleanly),
/// then with `restore` gives the disk back and asserts that the next run resumes and finishes.
fn round_mid_run(
    d: &mut Defects,
    p: &Pipeline,
    items: u64,
    (fault, delay): (Fault, Duration),
    inflict: impl FnOnce(),
    restore: impl FnOnce(),
) -> Round {
    let mut running = p.cmd("run").timeout(GUARD).spawn();
    assert!(
        running.wait_for_stderr("run started", Duration::from_secs(20)),
        "{}",
        running.stderr_so_far()
    );
    thread::sleep(delay);
    let finished_first = running.has_exited();
    let at = Instant::now();
    inflict();
    let out = running.wait();
    let after_fault = at.elapsed();
    eprintln!(
        "--- {fault:?} {delay:?} after the start: exit {:?}, {after_fault:?} later\n{}",
        out.code, out.stderr
    );
    // A run that ended before the fault, or had committed its last update just before it, has
    // nothing more to write: exit 0 is right then (checked below: everything done).
    let said_finished = out.code == Some(0);
    let landed = !(finished_first || said_finished);
    if landed {
        check_ended_on_disk_fault(d, &out, fault, &[3], after_fault);
    }
    restore();
    let duplicates = assert_resumes_and_finishes(p, items, said_finished);
    eprintln!("--- resumed and finished: {duplicates} sink lines written twice");
    Round {
        code: out.code,
        landed,
        after_fault,
        duplicates,
    }
}

/// A run interrupted with its progress saved (SIGTERM mid-run, exit 75): the checkpoint a disk
/// fault must leave intact. Items done so far.
fn interrupted_run(p: &Pipeline, items: u64) -> u64 {
    let mut running = p.cmd("run").timeout(GUARD).spawn();
    assert!(
        running.wait_for_stderr("run started", Duration::from_secs(20)),
        "{}",
        running.stderr_so_far()
    );
    thread::sleep(Duration::from_millis(300));
    running.signal(libc::SIGTERM);
    let out = running.wait();
    out.assert_code(75);
    let done = p.status().count("done");
    assert!(done > 0 && done < items, "{done} of {items} done\n{out}");
    done
}

/// A run started on a state folder that is already `fault`, after an interrupted run: a clear
/// error at once (exit 2 or 3; 2 only if nothing ran), the interrupted run's checkpoint
/// intact; once the disk is back, it resumes and finishes.
fn at_start(
    name: &str,
    fault: Fault,
    inflict: impl FnOnce(&SmallFs),
    restore: impl FnOnce(&SmallFs),
) {
    let mut report = Report::new("disk");
    let mut d = Defects::default();
    let items = ITEMS * scale();
    let p = pipeline(name, items);
    let Some(fs) = SmallFs::tmpfs(&p.dir.join(STATE), &fs_size()) else {
        return;
    };
    let done_before = interrupted_run(&p, items);
    let sink_before = p.sink("out.jsonl");

    inflict(&fs);
    let out = p.cmd("run").timeout(GUARD).output();
    eprintln!(
        "--- run on a {fault:?} state folder: exit {:?} after {:?}\n{}",
        out.code, out.elapsed, out.stderr
    );
    check_ended_on_disk_fault(&mut d, &out, fault, &[2, 3], out.elapsed);
    if out.code == Some(2) {
        d.check(p.sink("out.jsonl").len() == sink_before.len(), || {
            "exit 2 says nothing was run, yet the sink got lines".to_owned()
        });
    }
    // Whether `status` can read the store on this disk is reported, not required.
    let status = p.cmd("status").output();
    eprintln!(
        "--- status on a {fault:?} state folder: exit {:?}\n{}{}",
        status.code, status.stdout, status.stderr
    );

    restore(&fs);
    let status_after = p.status();
    assert!(
        status_after.count("done") >= done_before,
        "items done before the fault were lost: {done_before} then {:?}",
        status_after.counts
    );
    assert!(
        p.sink("out.jsonl")
            .unique_keys()
            .is_superset(&sink_before.unique_keys()),
        "the sink lost lines"
    );
    let duplicates = assert_resumes_and_finishes(&p, items, false);
    d.check(duplicates <= REDONE_PER_FAULT, || {
        format!("{duplicates} sink lines written twice (at most {REDONE_PER_FAULT})")
    });

    report
        .set("scenario", format!("{name}_at_start"))
        .set("runs", 3)
        .set("faults", 1)
        .set("items", items)
        .set("lost", 0)
        .set("duplicates", duplicates as u64)
        .set("status_exit_on_faulty_disk", json!(status.code))
        .set("exit_codes", json!([75, out.code, 0]));
    d.assert_none();
    report.finish();
}

/// Rounds of `fault` while a run goes on, each on a small filesystem of its own (`mount`),
/// at moments drawn from the seed; at least one must land before its run finished.
fn mid_run(
    scenario: &str,
    (fixed_seed, fault): (u64, Fault),
    mount: impl Fn(&Pipeline) -> Option<SmallFs>,
    inflict: impl Fn(&SmallFs),
    restore: impl Fn(&SmallFs),
) -> (Vec<Round>, Report, Defects) {
    let mut report = Report::new("disk");
    let mut d = Defects::default();
    // The scale multiplies the rounds; each round's batch stays a second or so of work.
    let items = ITEMS;
    let mut rng = Rng::new(seed(&format!("disk-{scenario}"), fixed_seed));
    let mut rounds = Vec::new();
    for round in 0..ROUNDS * scale() {
        let p = pipeline(&format!("{scenario}-{round}"), items);
        let Some(fs) = mount(&p) else {
            break;
        };
        // A batch takes a second or more: the fault lands in its first half.
        let delay = Duration::from_millis(rng.range(50, 600));
        rounds.push(round_mid_run(
            &mut d,
            &p,
            items,
            (fault, delay),
            || inflict(&fs),
            || restore(&fs),
        ));
    }
    let landed = rounds.iter().filter(|r| r.landed).count();
    if !rounds.is_empty() {
        assert!(
            landed >= 1,
            "no {fault:?} fault landed before its run finished: the test proved nothing"
        );
    }
    let slowest = rounds
        .iter()
        .map(|r| r.after_fault)
        .max()
        .unwrap_or_default();
    report
        .set("scenario", scenario)
        .set("runs", 2 * rounds.len() as u64)
        .set("faults", landed as u64)
        .set("items", items * rounds.len() as u64)
        .set("lost", 0)
        .set(
            "duplicates",
            rounds.iter().map(|r| r.duplicates as u64).sum::<u64>(),
        )
        .set("max_exit_ms", slowest.as_millis() as u64)
        .set(
            "exit_codes",
            json!(rounds.iter().map(|r| r.code).collect::<Vec<_>>()),
        );
    (rounds, report, d)
}

#[test]
fn a_state_folder_that_fills_up_mid_run_ends_the_run_with_exit_3_and_it_resumes() {
    let (rounds, mut report, mut d) = mid_run(
        "full_mid_run",
        (0xD15C_0001, Fault::Full),
        |p| SmallFs::tmpfs(&p.dir.join(STATE), "4m"),
        |fs| {
            fs.fill();
        },
        SmallFs::free,
    );
    if rounds.is_empty() {
        return; // Skipped (not root, not CI): `util::disk` said so.
    }
    // On a tmpfs whatever SQLite wrote before the fault stays: redone work is bounded as
    // after `kill -9`.
    for r in rounds.iter().filter(|r| r.landed) {
        d.check(r.duplicates <= REDONE_PER_FAULT, || {
            format!(
                "{} sink lines written twice after one fault (at most {REDONE_PER_FAULT})",
                r.duplicates
            )
        });
    }
    d.assert_none();
    report.finish();
}

/// `mount -o remount,ro` is refused (`EBUSY`) while SQLite holds the store open for writing:
/// ext4 going read-only on an error is how a filesystem turns read-only under a running
/// process. Its unwritten pages are then lost as at a power cut (the store syncs at its
/// checkpoints, `synchronous = NORMAL`), so redone work is not bounded here; lost work is
/// still none.
#[test]
fn a_state_folder_that_turns_read_only_mid_run_ends_the_run_with_exit_3_and_it_resumes() {
    let (rounds, mut report, d) = mid_run(
        "read_only_mid_run",
        (0xD15C_0002, Fault::ReadOnly),
        |p| SmallFs::ext4(&p.dir.join(STATE), 16),
        SmallFs::fail_read_only,
        SmallFs::repair,
    );
    if rounds.is_empty() {
        return; // Skipped (not root, not CI): `util::disk` said so.
    }
    d.assert_none();
    report.finish();
}

#[test]
fn a_full_state_folder_at_the_start_is_a_clear_error_and_the_run_resumes_later() {
    at_start(
        "full",
        Fault::Full,
        |fs| {
            fs.fill();
        },
        SmallFs::free,
    );
}

#[test]
fn a_read_only_state_folder_at_the_start_is_a_clear_error_and_the_run_resumes_later() {
    at_start(
        "read_only",
        Fault::ReadOnly,
        |fs| {
            fs.remount_ro()
                .expect("remount read-only (no process holds it)")
        },
        SmallFs::remount_rw,
    );
}
