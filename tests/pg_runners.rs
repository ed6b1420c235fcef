//! Many runners, one run, on a PostgreSQL store, seen from outside against a real server: the
//! runners share the run's items without doing one twice; a runner that dies leaves its items
//! to the others once its lease expires; a runner that lost its claim (its sessions killed, or
//! paused past its lease) never writes after it, and stops with 75; SIGTERM stops them all in
//! time, and one rerun finishes.
//!
//! The sink is a table that counts the writes of each key (an idempotent upsert), so work done
//! twice shows as extra writes.

mod util;

use std::time::{Duration, Instant};

use util::pg::Db;
use util::{Cmd, Output, Pipeline, Running};

/// `count` generated items → a sleep of `nap` (concurrency 8) → the counting sink, on the store
/// at `${DATABASE_URL}`; `checkpoint` adds keys to `[checkpoint]`, `settings` to `[pipeline]`.
fn pipeline(db: &Db, count: usize, nap: &str, checkpoint: &str, settings: &str) -> Pipeline {
    let url = db.url();
    Pipeline::new(&format!(
        r#"
        [pipeline]
        name = "shared"
        shutdown_grace = "3s"
        {settings}

        [checkpoint]
        store = "${{DATABASE_URL}}"
        commit_interval = "100ms"
        {checkpoint}

        [[stage]]
        name = "src"
        kind = "generate"
        count = {count}

        [[stage]]
        name = "nap"
        kind = "sleep"
        duration = "{nap}"
        concurrency = 8

        [[stage]]
        name = "sink"
        kind = "persist"
        url = "{url}"
        concurrency = 2
        statement = """
        INSERT INTO sink (key, writes) VALUES (:key, 1)
            ON CONFLICT (key) DO UPDATE SET writes = sink.writes + 1
        """
        "#
    ))
}

/// A fresh database with the counting sink.
fn db() -> Option<Db> {
    let mut db = Db::new()?;
    db.execute("CREATE TABLE sink (key text PRIMARY KEY, writes bigint NOT NULL)");
    Some(db)
}

fn cmd(p: &Pipeline, db: &Db, subcommand: &str) -> Cmd {
    p.cmd(subcommand).env("DATABASE_URL", db.url())
}

/// `(keys written, writes beyond the first of each key)`.
fn written(db: &mut Db) -> (i64, i64) {
    let keys = db.query_i64("SELECT count(*) FROM sink");
    let extra = db.query_i64("SELECT COALESCE(sum(writes - 1), 0)::bigint FROM sink");
    (keys, extra)
}

/// Wait until the sink has at least `n` keys.
fn until_written(db: &mut Db, n: i64, within: Duration) {
    assert!(
        util::wait_until(within, || written(db).0 >= n),
        "fewer than {n} keys within {within:?}"
    );
}

/// The runner registered by process `pid`, and the unfinished items it holds.
fn held_by(db: &mut Db, pid: u32) -> i64 {
    db.query_i64(&format!(
        "SELECT count(*) FROM stagewise.items i JOIN stagewise.runners r ON r.id = i.owner
         WHERE r.pid = {pid} AND i.state IN ('pending', 'in_flight')"
    ))
}

fn spawn_all(p: &Pipeline, db: &Db, n: usize) -> Vec<Running> {
    (0..n).map(|_| cmd(p, db, "run").spawn()).collect()
}

fn wait_all(runners: Vec<Running>) -> Vec<Output> {
    runners.into_iter().map(Running::wait).collect()
}

#[test]
fn three_runners_share_one_run_and_write_every_key_once() {
    let Some(mut db) = db() else { return };
    let p = pipeline(&db, 3000, "10ms", "", "");
    let outs = wait_all(spawn_all(&p, &db, 3));
    for out in &outs {
        out.assert_code(0);
    }
    assert_eq!(written(&mut db), (3000, 0), "every key once, none twice");
    let status = cmd(&p, &db, "status").arg("--json").output();
    status.assert_code(0);
    let status: serde_json::Value = serde_json::from_str(&status.stdout).expect("JSON");
    assert_eq!(status["run"]["status"], "finished", "{status}");
    assert_eq!(status["counts"]["done"], 3000, "{status}");
    let runners = status["runners"].as_array().expect("runners");
    assert_eq!(runners.len(), 3, "{status}");
    for r in runners {
        assert_eq!(r["state"], "stopped", "{status}");
        assert_eq!(r["items_held"], 0, "{status}");
    }
    // Each did part of the work: one run, not three.
    let runs = db.query_i64("SELECT count(*) FROM stagewise.runs WHERE items > 0");
    assert_eq!(runs, 1);
    let workers = db.query_i64(
        "SELECT count(DISTINCT r.pid) FROM stagewise.runners r WHERE r.run_id IS NOT NULL",
    );
    assert_eq!(workers, 3, "every runner claimed items");
}

/// The unfinished items held by a runner in another process id namespace than this process's:
/// one started with `in_own_pid_namespace`.
fn held_by_foreign(db: &mut Db) -> i64 {
    let ours = std::fs::read_link("/proc/self/ns/pid")
        .map(|p| p.to_string_lossy().into_owned())
        .unwrap_or_default();
    db.query_i64(&format!(
        "SELECT count(*) FROM stagewise.items i JOIN stagewise.runners r ON r.id = i.owner
         WHERE r.pidns NOT LIKE '{ours}@%' AND i.state IN ('pending', 'in_flight')"
    ))
}

/// Kill -9 one of three runners (in a process id namespace of its own: to the others, a runner
/// on another machine): its items stay its own until its lease expires, then the others finish
/// them; the extra writes are at most what it held.
#[test]
fn a_killed_runner_s_items_are_taken_over_after_its_lease() {
    let Some(mut db) = db() else { return };
    let p = pipeline(
        &db,
        3000,
        "20ms",
        r#"lease_ttl = "3s""#,
        r#"heartbeat = "1s""#,
    );
    let victim = cmd(&p, &db, "run").in_own_pid_namespace().spawn();
    let runners = spawn_all(&p, &db, 2);
    until_written(&mut db, 600, Duration::from_secs(60));
    victim.signal(libc::SIGKILL);
    let killed_at = Instant::now();
    let _ = victim.wait();
    let held = held_by_foreign(&mut db);
    assert!(held > 0, "the victim held nothing when killed");
    // Its items wait for its lease: its last renewal was at most a heartbeat before the kill.
    while held_by_foreign(&mut db) == held {
        assert!(
            killed_at.elapsed() < Duration::from_secs(30),
            "never taken over"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let taken_after = killed_at.elapsed();
    assert!(
        taken_after >= Duration::from_millis(1800),
        "taken over {taken_after:?} after the kill, before its lease (3s) could expire"
    );
    for out in wait_all(runners) {
        out.assert_code(0);
        out.assert_stderr_contains("nothing left to claim");
    }
    let (keys, extra) = written(&mut db);
    assert_eq!(keys, 3000, "every key written");
    assert!(
        extra <= held,
        "{extra} extra writes; the killed runner held {held} items"
    );
    assert_eq!(
        db.query_i64("SELECT count(*) FROM stagewise.items WHERE state <> 'done'"),
        0
    );
}

/// A runner on this machine whose process is gone is seen to be gone: its items are taken over
/// at once, not after its (long) lease.
#[test]
fn a_killed_runner_on_this_machine_is_taken_over_at_once() {
    let Some(mut db) = db() else { return };
    let p = pipeline(&db, 2000, "20ms", r#"lease_ttl = "5m""#, "");
    let mut runners = spawn_all(&p, &db, 2);
    until_written(&mut db, 300, Duration::from_secs(60));
    let victim = runners.remove(0);
    let pid = victim.pid();
    victim.signal(libc::SIGKILL);
    let killed_at = Instant::now();
    let _ = victim.wait();
    let held = held_by(&mut db, pid);
    let other = runners.remove(0).wait();
    other.assert_code(0);
    other.assert_stderr_contains("on this machine is gone");
    assert!(
        killed_at.elapsed() < Duration::from_secs(60),
        "waited for the 5-minute lease"
    );
    let (keys, extra) = written(&mut db);
    assert_eq!(keys, 2000);
    assert!(extra <= held, "{extra} extra writes; it held {held}");
}

#[test]
fn a_runner_whose_sessions_are_killed_does_no_work_twice() {
    let Some(mut db) = db() else { return };
    let p = pipeline(&db, 1500, "20ms", "", "");
    let mut first = cmd(&p, &db, "run").spawn();
    until_written(&mut db, 200, Duration::from_secs(60));
    // Every session of the first runner's store (what an idle timeout, a pooler's restart or
    // an operator does), and the second runner starts at once.
    let killed = db.query_i64(
        "SELECT count(pg_terminate_backend(pid))::bigint FROM pg_stat_activity
         WHERE application_name = 'stagewise/checkpoint' AND pid <> pg_backend_pid()
           AND datname = current_database()",
    );
    assert!(killed >= 2, "{killed} sessions");
    let second = cmd(&p, &db, "run").spawn();
    let second = second.wait();
    let first_out = {
        // The first either reconnected and finished its share, or was fenced: never both
        // working on one item.
        let deadline = Instant::now() + Duration::from_secs(60);
        while !first.has_exited() {
            assert!(Instant::now() < deadline, "{}", first.stderr_so_far());
            std::thread::sleep(Duration::from_millis(50));
        }
        first.wait()
    };
    assert!(
        matches!(first_out.code, Some(0 | 75)),
        "first runner: {first_out}"
    );
    if first_out.code == Some(75) {
        first_out.assert_stderr_contains("fenced");
    }
    second.assert_code(0);
    let (keys, extra) = written(&mut db);
    if first_out.code == Some(0) {
        assert_eq!(keys, 1500);
    }
    assert_eq!(extra, 0, "no key processed by both");
}

#[test]
fn a_runner_paused_past_its_lease_is_fenced_and_writes_nothing_more() {
    let Some(mut db) = db() else { return };
    let p = pipeline(
        &db,
        2000,
        "20ms",
        r#"lease_ttl = "2s""#,
        r#"heartbeat = "500ms""#,
    );
    let paused = cmd(&p, &db, "run").spawn();
    until_written(&mut db, 200, Duration::from_secs(60));
    paused.signal(libc::SIGSTOP);
    // A commit it sent just before may still be ending on the server.
    std::thread::sleep(Duration::from_millis(500));
    let held = held_by(&mut db, paused.pid());
    let pid = paused.pid();
    let done_by_it = |db: &mut Db| {
        db.query_i64(&format!(
            "SELECT count(*) FROM stagewise.items i JOIN stagewise.runners r ON r.id = i.owner
             WHERE r.pid = {pid} AND i.state = 'done'"
        ))
    };
    let done_before = done_by_it(&mut db);
    let other = cmd(&p, &db, "run").spawn();
    std::thread::sleep(Duration::from_secs(4));
    paused.signal(libc::SIGCONT);
    let started = Instant::now();
    let paused = paused.wait();
    paused.assert_code(75);
    paused.assert_stderr_contains("fenced");
    assert!(started.elapsed() < Duration::from_secs(10), "{paused}");
    // Nothing it writes after its lease ran out reaches the store: not even a commit it was
    // stopped in the middle of (its session ended by the server before the lease did).
    assert_eq!(
        done_by_it(&mut db),
        done_before,
        "items of the paused runner done after its lease ran out (it held {held})"
    );
    other.wait().assert_code(0);
    let (keys, extra) = written(&mut db);
    assert_eq!(keys, 2000);
    assert!(
        extra <= held,
        "{extra} extra writes; the paused runner held {held} items"
    );
}

#[test]
fn sigterm_stops_every_runner_in_time_and_one_rerun_finishes() {
    let Some(mut db) = db() else { return };
    let p = pipeline(&db, 2000, "20ms", "", "");
    let runners = spawn_all(&p, &db, 3);
    until_written(&mut db, 300, Duration::from_secs(60));
    let signalled = Instant::now();
    for r in &runners {
        r.signal(libc::SIGTERM);
    }
    for out in wait_all(runners) {
        out.assert_code(75);
    }
    assert!(
        signalled.elapsed() < Duration::from_secs(3 + 2 + 2),
        "within shutdown_grace + 2 s (and the processes' start)"
    );
    assert_eq!(
        db.query_i64(
            "SELECT count(*) FROM stagewise.items WHERE owner IS NOT NULL AND state IN ('pending', 'in_flight')"
        ),
        0,
        "every runner gave its items back"
    );
    cmd(&p, &db, "run").output().assert_code(0);
    let (keys, extra) = written(&mut db);
    assert_eq!(keys, 2000);
    assert_eq!(extra, 0, "items stopped in order are not redone");
}

/// `max_failures` holds for the run, not for each runner: three runners whose every item fails,
/// with a budget of 40, stop together near 40 (each counting only its own would stop at 3 × 41).
#[test]
fn max_failures_holds_for_the_whole_run_not_for_each_runner() {
    let Some(mut db) = db() else { return };
    let p = Pipeline::new(
        r#"
        [pipeline]
        name = "shared"
        shutdown_grace = "3s"
        max_failures = 40

        [checkpoint]
        store = "${DATABASE_URL}"
        commit_interval = "100ms"

        [[stage]]
        name = "src"
        kind = "generate"
        count = 600

        [[stage]]
        name = "nap"
        kind = "sleep"
        duration = "200ms"
        concurrency = 2

        [[stage]]
        name = "broken"
        kind = "fault"
        permanent_rate = 1.0
        "#,
    );
    let outs = wait_all(spawn_all(&p, &db, 3));
    for out in &outs {
        out.assert_code(3);
        out.assert_stderr_contains("more than `max_failures` (40) allows");
    }
    assert!(
        outs.iter()
            .any(|o| o.stderr.contains("counted over the whole run")),
        "no runner counted the others' failures"
    );
    let failed = db.query_i64("SELECT count(*) FROM stagewise.items WHERE state = 'failed'");
    // Each runner fails at most 10 items a second (two at a time, 200 ms each) and reads the
    // others' count every 250 ms, once committed (100 ms): a few past 40 each, not 3 × 41.
    assert!(
        (41..=90).contains(&failed),
        "{failed} items failed with a budget of 40 over 3 runners"
    );
}

/// A runner whose file has other stages than the live runners of the same pipeline is refused
/// (2), naming both; the running ones go on untouched.
#[test]
fn a_runner_with_other_stages_is_refused_while_others_run() {
    let Some(mut db) = db() else { return };
    let p = pipeline(&db, 400, "50ms", "", "");
    let first = cmd(&p, &db, "run").spawn();
    until_written(&mut db, 20, Duration::from_secs(60));
    let renamed = Pipeline::new(&p.toml().replace(r#"name = "nap""#, r#"name = "snooze""#));
    let other = cmd(&renamed, &db, "run").output();
    other.assert_code(2);
    other.assert_stderr_contains("is being run with other stages by runner");
    other.assert_stderr_contains(
        r#"its stages are "src" (generate) > "nap" (sleep) > "sink" (persist)"#,
    );
    other.assert_stderr_contains(
        r#"this file's are "src" (generate) > "snooze" (sleep) > "sink" (persist)"#,
    );
    // Stage names may hold what a list of them is written with: no two lists are taken as one.
    let nap_then_sink = "name = \"nap\"\nkind = \"sleep\"\nduration = \"50ms\"\nconcurrency = 8\n\n[[stage]]\nname = \"sink\"";
    assert!(p.toml().contains(nap_then_sink), "{}", p.toml());
    let merged = Pipeline::new(
        &p.toml()
            .replace(nap_then_sink, "name = \"nap:sleep > sink\""),
    );
    let other = cmd(&merged, &db, "run").output();
    other.assert_code(2);
    other.assert_stderr_contains("is being run with other stages by runner");
    first.wait().assert_code(0);
    assert_eq!(written(&mut db), (400, 0));
    assert_eq!(
        db.query_i64("SELECT count(*) FROM stagewise.items WHERE state <> 'done'"),
        0,
        "nothing of the run was touched by the refused runner"
    );
    // Once no runner of the old stages lives, the new file may run.
    cmd(&renamed, &db, "run").output().assert_code(0);
}

/// A runner of this machine that was killed runs nothing: a file with other stages is not
/// refused because of it.
#[test]
fn a_dead_runner_on_this_machine_does_not_hold_back_other_stages() {
    let Some(mut db) = db() else { return };
    let p = pipeline(&db, 400, "50ms", r#"lease_ttl = "5m""#, "");
    let victim = cmd(&p, &db, "run").spawn();
    until_written(&mut db, 20, Duration::from_secs(60));
    victim.signal(libc::SIGKILL);
    let _ = victim.wait();
    let renamed = Pipeline::new(&p.toml().replace(r#"name = "nap""#, r#"name = "snooze""#));
    let out = cmd(&renamed, &db, "run").output();
    assert!(
        !out.stderr.contains("other stages"),
        "refused because of a dead runner: {out}"
    );
    // Its items at `nap`, a stage the new file does not have, fail with the reason.
    out.assert_code(1);
    out.assert_stderr_contains("which is not in the pipeline");
}

/// A runner that fails nothing, and one that waits with nothing left to claim, both stop with 3
/// once the run's failed items (the others') cross `max_failures`, and the run is `aborted`.
#[test]
fn every_runner_aborts_when_the_others_cross_the_budget() {
    let Some(db) = db() else { return };
    let shared = |duration: &str, rate: f64, concurrency: usize| {
        Pipeline::new(&format!(
            r#"
            [pipeline]
            name = "budget"
            shutdown_grace = "3s"
            max_failures = 10

            [checkpoint]
            store = "${{DATABASE_URL}}"
            commit_interval = "100ms"

            [[stage]]
            name = "src"
            kind = "generate"
            count = 60

            [[stage]]
            name = "nap"
            kind = "sleep"
            duration = "{duration}"
            concurrency = {concurrency}

            [[stage]]
            name = "broken"
            kind = "fault"
            permanent_rate = {rate}
            seed = 7
            "#
        ))
    };
    // The slow one holds a few items for 3 s, most of which fail; the fast one does the rest
    // at once, fails none, and waits for the slow one's items.
    let (slow_file, fast_file) = (shared("3s", 0.6, 16), shared("50ms", 0.0, 16));
    let slow = cmd(&slow_file, &db, "run").spawn();
    std::thread::sleep(Duration::from_millis(1200));
    let fast = cmd(&fast_file, &db, "run").output();
    let slow = slow.wait();
    slow.assert_code(3);
    fast.assert_code(3);
    fast.assert_stderr_contains("more than `max_failures` (10) allows");
    let status = cmd(&fast_file, &db, "status").arg("--json").output();
    let status: serde_json::Value = serde_json::from_str(&status.stdout).expect("JSON");
    assert_eq!(status["run"]["status"], "aborted", "{status}");
}

/// A runner killed while another goes on is reported: by the one that takes its items over, by
/// `status` after that one stopped normally, and by the next run, once.
#[test]
fn a_killed_runner_is_reported_after_the_others_stop() {
    let Some(mut db) = db() else { return };
    let p = pipeline(&db, 1500, "20ms", r#"lease_ttl = "5m""#, "");
    let mut runners = spawn_all(&p, &db, 2);
    until_written(&mut db, 300, Duration::from_secs(60));
    let victim = runners.remove(0);
    let pid = victim.pid();
    victim.signal(libc::SIGKILL);
    let _ = victim.wait();
    let other = runners.remove(0).wait();
    other.assert_code(0);
    other.assert_stderr_contains("taking over the items of a runner whose lease ran out");
    other.assert_stderr_contains(&format!("pid={pid}"));
    let status = cmd(&p, &db, "status").output();
    status.assert_code(0);
    assert!(
        status
            .stdout
            .contains(&format!("the previous process (pid {pid} on")),
        "{status}"
    );
    let json = cmd(&p, &db, "status").arg("--json").output();
    let json: serde_json::Value = serde_json::from_str(&json.stdout).expect("JSON");
    assert_eq!(
        json["previous_process"]["pid"].as_u64(),
        Some(u64::from(pid))
    );
    let lost: Vec<&serde_json::Value> = json["runners"]
        .as_array()
        .expect("runners")
        .iter()
        .filter(|r| r["state"] == "lost")
        .collect();
    assert_eq!(lost.len(), 1, "{json}");
    assert_eq!(lost[0]["pid"].as_u64(), Some(u64::from(pid)), "{json}");
    // The next run says it first, then keeps it to itself.
    let next = cmd(&p, &db, "run").output();
    next.assert_code(0);
    next.assert_stderr_contains("the previous process ended without a summary");
    next.assert_stderr_contains(&format!("pid={pid}"));
    let after = cmd(&p, &db, "status").arg("--json").output();
    assert!(!after.stdout.contains("previous_process"), "{after}");
    let again = cmd(&p, &db, "run").output();
    again.assert_code(0);
    assert!(
        !again
            .stderr
            .contains("the previous process ended without a summary"),
        "{again}"
    );
}

/// The store's session killed while the batch is being taken: the batch is taken again, and the
/// run starts (it used to abort, exit 3).
#[test]
fn a_session_killed_while_the_batch_is_taken_does_not_abort_the_run() {
    let Some(mut db) = db() else { return };
    let p = pipeline(&db, 100_000, "10ms", "", "");
    let running = cmd(&p, &db, "run").spawn();
    let taking = || "SELECT count(*) FROM stagewise.runs WHERE status = 'taking'";
    assert!(
        util::wait_until(Duration::from_secs(60), || {
            db.query_i64("SELECT count(*) FROM pg_tables WHERE schemaname = 'stagewise' AND tablename = 'runs'") == 1
                && db.query_i64(taking()) == 1
        }),
        "the batch was never seen being taken\n{}",
        running.stderr_so_far()
    );
    let killed = db.query_i64(
        "SELECT count(pg_terminate_backend(pid))::bigint FROM pg_stat_activity
         WHERE application_name = 'stagewise/checkpoint' AND pid <> pg_backend_pid()
           AND datname = current_database()",
    );
    assert!(killed >= 1, "no session to kill");
    assert!(
        util::wait_until(Duration::from_secs(60), || running
            .stderr_so_far()
            .contains("run started")),
        "the run never started\n{}",
        running.stderr_so_far()
    );
    running.signal(libc::SIGTERM);
    let out = running.wait();
    out.assert_code(75);
    out.assert_stderr_contains(
        "the checkpoint store's session ended while taking the batch; taking it again",
    );
    assert_eq!(
        db.query_i64("SELECT count(*) FROM stagewise.runs WHERE items = 100000"),
        1
    );
}

/// A runner's summary and exit code are the run's as the store has it at the end: items that
/// failed in it and that `retry-failed` then did are not counted failed (it used to exit 1).
#[test]
fn a_runner_s_end_counts_what_retry_failed_put_right_meanwhile() {
    let Some(mut db) = db() else { return };
    db.execute("ALTER TABLE sink ADD CONSTRAINT no7 CHECK (key NOT LIKE '%7')");
    let fast = pipeline(&db, 100, "20ms", "", "");
    // The same stages, slower and one at a time: it holds a few items for seconds.
    let slow = Pipeline::new(&fast.toml().replace(
        "duration = \"20ms\"\nconcurrency = 8",
        "duration = \"3s\"\nconcurrency = 1",
    ));
    assert_ne!(slow.toml(), fast.toml());
    let slow_runner = cmd(&slow, &db, "run").spawn();
    let pid = slow_runner.pid();
    assert!(
        util::wait_until(Duration::from_secs(60), || {
            db.query_i64("SELECT count(*) FROM pg_tables WHERE schemaname = 'stagewise' AND tablename = 'runners'") == 1
                && held_by(&mut db, pid) > 0
        }),
        "the slow runner never held items"
    );
    let fast_runner = cmd(&fast, &db, "run").spawn();
    // The fast one ends its share, some failed at the sink, and waits for the slow one's.
    assert!(
        util::wait_until(Duration::from_secs(60), || fast_runner
            .stderr_so_far()
            .contains("nothing left to claim")),
        "{}",
        fast_runner.stderr_so_far()
    );
    let failed = db.query_i64("SELECT count(*) FROM stagewise.items WHERE state = 'failed'");
    assert!(failed > 0, "nothing failed at the sink");
    db.execute("ALTER TABLE sink DROP CONSTRAINT no7");
    cmd(&fast, &db, "retry-failed").output().assert_code(0);
    let fast_out = fast_runner.wait();
    slow_runner.wait().assert_code(0);
    assert_eq!(
        db.query_i64("SELECT count(*) FROM stagewise.items WHERE state <> 'done'"),
        0
    );
    fast_out.assert_code(0);
    fast_out.assert_stderr_contains("done=100 failed=0");
}

/// A store that keeps a runner's commit waiting on a lock for longer than its lease does not
/// fence it: the lease is renewed meanwhile (the commit does not hold it), and the run goes on.
#[test]
fn a_commit_held_by_a_lock_past_the_lease_does_not_fence_a_live_runner() {
    let Some(mut db) = db() else { return };
    let p = pipeline(
        &db,
        1500,
        "20ms",
        r#"lease_ttl = "2s""#,
        r#"heartbeat = "500ms""#,
    );
    let running = cmd(&p, &db, "run").spawn();
    until_written(&mut db, 200, Duration::from_secs(60));
    let mut locker = db.connect();
    let mut tx = locker.transaction().expect("begin");
    tx.batch_execute("LOCK TABLE stagewise.items IN EXCLUSIVE MODE")
        .expect("lock");
    std::thread::sleep(Duration::from_secs(3));
    tx.commit().expect("commit");
    let out = running.wait();
    out.assert_code(0);
    assert!(!out.stderr.contains("fenced"), "{out}");
    assert_eq!(written(&mut db), (1500, 0));
}

#[test]
fn validate_refuses_a_lease_shorter_than_three_heartbeats() {
    let Some(db) = db() else { return };
    let p = pipeline(
        &db,
        10,
        "1ms",
        r#"lease_ttl = "20s""#,
        r#"heartbeat = "10s""#,
    );
    let out = cmd(&p, &db, "validate").output();
    out.assert_code(2);
    out.assert_stderr_contains("`lease_ttl` (20s) must be at least three heartbeats");
    // Three heartbeats, but under a second: a renewal late by a few hundred milliseconds on a
    // loaded machine would fence the runner.
    let short = pipeline(
        &db,
        10,
        "1ms",
        r#"lease_ttl = "300ms""#,
        r#"heartbeat = "100ms""#,
    );
    let out = cmd(&short, &db, "validate").output();
    out.assert_code(2);
    out.assert_stderr_contains("`lease_ttl` (300ms) must be at least 1s");
    let plan = cmd(&pipeline(&db, 10, "1ms", "", ""), &db, "plan").output();
    plan.assert_code(0);
    assert!(plan.stdout.contains("lease_ttl"), "{plan}");
}

/// A TCP proxy on 127.0.0.1 in front of `upstream` that holds every new connection `delay`
/// before passing it on: a store whose sessions are slow to open, as on a loaded machine.
/// Returns its port; it serves until the test process ends.
fn slow_to_connect(upstream: u16, delay: Duration) -> u16 {
    use std::net::{TcpListener, TcpStream};
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind the proxy");
    let port = listener.local_addr().expect("its address").port();
    std::thread::spawn(move || {
        for client in listener.incoming().flatten() {
            std::thread::spawn(move || {
                std::thread::sleep(delay);
                let Ok(server) = TcpStream::connect(("127.0.0.1", upstream)) else {
                    return;
                };
                let pipe = |mut from: TcpStream, mut to: TcpStream| {
                    std::thread::spawn(move || {
                        let _ = std::io::copy(&mut from, &mut to);
                        let _ = to.shutdown(std::net::Shutdown::Both);
                    })
                };
                let (Ok(c2), Ok(s2)) = (client.try_clone(), server.try_clone()) else {
                    return;
                };
                pipe(client, server);
                pipe(s2, c2);
            });
        }
    });
    port
}

#[test]
fn a_runner_whose_store_sessions_are_slow_to_open_renews_its_first_lease_in_time() {
    let Some(mut db) = db() else { return };
    // Its first renewal is due a heartbeat (2 s) after the lease is granted, and must land
    // before the lease's last 700 ms (6 s, its commit margin and 100 ms). A session that takes
    // 3.5 s to open (and its password exchange, slow in a debug build, some more), if opened
    // only then, renews after 5.5 s: too late, and the runner is fenced. Opened with the lease,
    // it renews at once when open, with 1.8 s to spare.
    let p = pipeline(
        &db,
        300,
        "20ms",
        r#"lease_ttl = "6s""#,
        r#"heartbeat = "2s""#,
    );
    let real = util::pg::port_of(db.url());
    let slow = slow_to_connect(real, Duration::from_millis(3500));
    let url = db
        .url()
        .replacen(&format!(":{real}/"), &format!(":{slow}/"), 1);
    assert_ne!(url, db.url(), "the store's URL goes through the proxy");
    let out = p
        .cmd("run")
        .env("DATABASE_URL", &url)
        .timeout(Duration::from_secs(120))
        .output();
    out.assert_code(0);
    assert!(!out.stderr.contains("fenced"), "{out}");
    assert_eq!(written(&mut db), (300, 0));
}

/// The `fault` stage's draw for `key`'s attempt `attempt` under `seed`, in `[0, 1)`: as its
/// module's documentation fixes it (FNV-1a over the seed, key and attempt, then SplitMix64).
fn fault_draw(seed: u64, key: &str, attempt: u32) -> f64 {
    let bytes = seed
        .to_le_bytes()
        .into_iter()
        .chain(key.bytes())
        .chain(attempt.to_le_bytes());
    let hash = bytes.fold(0xcbf2_9ce4_8422_2325_u64, |hash, byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x0000_0100_0000_01b3)
    });
    let mut z = hash;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^= z >> 31;
    (z >> 11) as f64 / (1u64 << 53) as f64
}

#[test]
fn an_item_killed_after_its_last_allowed_attempt_succeeded_is_not_failed_by_the_death() {
    let Some(mut db) = db() else { return };
    // Item "0": its first two attempts at `flaky` fail (a transient error: 0.3 to 0.9), its
    // third, the last allowed, hangs 1.5 s and then succeeds (under 0.3); it passes `hold`
    // (at its first attempt, and at its second: a death counted there moves it on).
    // Item "1" passes `flaky` (0.9 and over) and hangs at `hold` (under 0.5) till its timeout:
    // the run goes on, its commits at their interval, after item "0" reached the sink. Its
    // second attempt there passes.
    let (flaky, hold) = (0..1_000_000u64)
        .map(|s| (s, s.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 40))
        .find(|&(f, h)| {
            let u = |seed, key, attempt| fault_draw(seed, key, attempt);
            let error = 0.3..0.9;
            error.contains(&u(f, "0", 1))
                && error.contains(&u(f, "0", 2))
                && u(f, "0", 3) < 0.3
                && u(f, "1", 1) >= 0.9
                && u(h, "0", 1) >= 0.5
                && u(h, "0", 2) >= 0.5
                && u(h, "1", 1) < 0.5
                && u(h, "1", 2) >= 0.5
        })
        .expect("seeds");
    let url = db.url().to_owned();
    // The backoff (3.5 s) outlasts the commit interval (3 s): each failed attempt is saved
    // before the next begins.
    let p = Pipeline::new(&format!(
        r#"
        [pipeline]
        name = "last"

        [checkpoint]
        store = "${{DATABASE_URL}}"
        commit_interval = "3s"

        [[stage]]
        name = "src"
        kind = "generate"
        count = 2

        [[stage]]
        name = "flaky"
        kind = "fault"
        error_rate = 0.6
        hang_rate = 0.3
        blocking = true
        hang_for = "1500ms"
        seed = {flaky}
        timeout = "20s"
        retry = {{ attempts = 3, initial = "3500ms", max = "3500ms" }}

        [[stage]]
        name = "hold"
        kind = "fault"
        hang_rate = 0.5
        seed = {hold}
        timeout = "30s"
        retry = {{ attempts = 2, initial = "10ms" }}

        [[stage]]
        name = "sink"
        kind = "persist"
        url = "{url}"
        statement = """
        INSERT INTO sink (key, writes) VALUES (:key, 1)
            ON CONFLICT (key) DO UPDATE SET writes = sink.writes + 1
        """
        "#
    ));
    let first = cmd(&p, &db, "run")
        .timeout(Duration::from_secs(120))
        .spawn();
    assert!(
        util::wait_until(Duration::from_secs(60), || written(&mut db).0 == 1),
        "item 0 never reached the sink"
    );
    first.signal(libc::SIGKILL);
    let first = first.wait();
    assert_eq!(first.code, None, "killed: {first}");
    let state = |db: &mut Db| {
        db.query_strings("SELECT key || ' ' || state FROM stagewise.items ORDER BY key")
    };
    assert_eq!(
        state(&mut db),
        vec!["0 in_flight", "1 in_flight"],
        "item 0's end was not saved before the kill"
    );
    // The next runner takes the items over, counting a death for each where the store had
    // it.
    let out = cmd(&p, &db, "run")
        .timeout(Duration::from_secs(120))
        .output();
    out.assert_code(0);
    assert_eq!(state(&mut db), vec!["0 done", "1 done"], "{out}");
    assert_eq!(written(&mut db), (2, 1), "item 0 written again once: {out}");
}

#[test]
fn a_stop_while_the_store_is_locked_ends_within_the_grace_and_two_seconds() {
    let Some(mut db) = db() else { return };
    // shutdown_grace = "3s" (the pipeline's).
    let p = pipeline(&db, 2000, "1ms", "", "");
    let running = cmd(&p, &db, "run")
        .timeout(Duration::from_secs(120))
        .spawn();
    until_written(&mut db, 200, Duration::from_secs(60));
    let mut locker = db.connect();
    let mut tx = locker.transaction().expect("begin");
    tx.batch_execute("LOCK TABLE stagewise.items IN ACCESS EXCLUSIVE MODE")
        .expect("lock");
    std::thread::sleep(Duration::from_secs(2));
    running.signal(libc::SIGTERM);
    let signalled = Instant::now();
    let out = running.wait();
    let took = signalled.elapsed();
    tx.rollback().expect("unlock");
    // The store did not answer before the deadline: 3 (its progress since is not saved), or
    // 75 had it answered in time; never past the bound, never killed.
    assert!(matches!(out.code, Some(3 | 75)), "{out}");
    assert!(
        took < Duration::from_millis(5300),
        "exited {took:?} after SIGTERM, past shutdown_grace + 2 s\n{out}"
    );
}
