//! The PostgreSQL store's runners under leases (see `postgres::lease`): claims never overlap,
//! an expired lease's items are taken over (with the attempt a death cut short counted), a
//! fenced runner writes nothing, an orderly stop gives items back, and a new batch is taken by
//! one runner at a time.

use std::time::Duration;

use super::backends::on_postgres;
use super::{apply, keys, s, seen, take, Backend};
use crate::checkpoint::postgres::conn::{begin, set_idle_limit};
use crate::checkpoint::postgres::live_to_commit;
use crate::checkpoint::{Change, CheckpointStore, LeaseTerms, PgStore, StoreError};
use crate::spec::StoreLocation;

/// The store at `b` opened and registered as a runner of pipeline `p` (the guard keeps it so).
fn runner(b: &dyn Backend, ttl: Duration) -> (PgStore, Box<dyn std::any::Any>) {
    let StoreLocation::Postgres(url) = b.location() else {
        panic!("a PostgreSQL place")
    };
    let store = PgStore::open(&url).expect("open");
    let guard = store
        .register("p", "a:x", LeaseTerms::new(ttl, Duration::from_secs(10)))
        .expect("register");
    (store, Box::new(guard))
}

/// Run `sql` on `b`'s database, behind the store's back.
fn behind(b: &dyn Backend, sql: &str) {
    let StoreLocation::Postgres(url) = b.location() else {
        panic!("a PostgreSQL place")
    };
    let mut client = url
        .parse::<postgres::Config>()
        .expect("url")
        .connect(postgres::NoTls)
        .expect("connect");
    client
        .batch_execute(sql)
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
}

/// The lease of every runner of `p` but the newest one ends now, as if they stopped renewing it.
fn expire_all_but_newest(b: &dyn Backend) {
    behind(
        b,
        "UPDATE stagewise.runners SET expires_at = now() - interval '1 second'
         WHERE id < (SELECT max(id) FROM stagewise.runners)",
    );
}

fn minute() -> Duration {
    Duration::from_secs(60)
}

#[test]
fn two_runners_claim_disjoint_items_and_wait_for_each_other() {
    on_postgres(|b| {
        let (a, _ga) = runner(b, minute());
        let (c, _gc) = runner(b, minute());
        let run = take(&a, "p", &["k1", "k2", "k3", "k4", "k5", "k6"]);
        assert_eq!(keys(&a.claim(run.id, 0, 2).expect("a")), ["k1", "k2"]);
        assert_eq!(keys(&c.claim(run.id, 0, 3).expect("c")), ["k3", "k4", "k5"]);
        assert_eq!(keys(&a.claim(run.id, 0, 10).expect("a again")), ["k6"]);
        assert!(a.claim(run.id, 0, 10).expect("nothing").is_empty());
        assert_eq!(a.held_by_others(run.id).expect("held"), 3, "c's three");
        assert_eq!(c.held_by_others(run.id).expect("held"), 3, "a's three");
        let report = a.status(&run, 1000).expect("status");
        let held: Vec<u64> = report.runners.iter().map(|r| r.items_held).collect();
        assert_eq!(held, [3, 3], "{:?}", report.runners);
        assert!(report.runners.iter().all(|r| r.state == "active"));
    });
}

#[test]
fn an_expired_lease_is_taken_over_with_the_attempt_it_cut_short() {
    on_postgres(|b| {
        let (dead, _gd) = runner(b, minute());
        let run = take(&dead, "p", &["a", "b", "c"]);
        assert_eq!(keys(&dead.claim(run.id, 0, 3).expect("claim")).len(), 3);
        apply(
            &dead,
            run.id,
            vec![
                (1, Change::TakenUp { stage: s("one") }),
                (2, Change::TakenUp { stage: s("one") }),
                (2, Change::Interrupted { stage: s("one") }),
            ],
            None,
        );
        let (heir, _gh) = runner(b, minute());
        assert!(
            heir.claim(run.id, 0, 10).expect("claim").is_empty(),
            "a live lease is respected"
        );
        expire_all_but_newest(b);
        let mut taken = heir.claim(run.id, 0, 10).expect("take over");
        taken.sort_by_key(|i| i.seq);
        let got: Vec<(String, u32)> = taken.iter().map(|i| (i.key.clone(), i.attempts)).collect();
        assert_eq!(
            got,
            [(s("a"), 1), (s("b"), 0), (s("c"), 0)],
            "the attempt under way at the death counts; one stopped in order does not"
        );
        let deaths = heir.deaths(run.id).expect("deaths");
        assert_eq!(deaths.len(), 1);
        assert!(deaths[0].error.contains("attempt 1"), "{}", deaths[0].error);
        // The dead runner's next word is refused, and it knows it was lost.
        let Err(StoreError::Fenced(why)) = dead.claim(run.id, 0, 1) else {
            panic!("the dead runner claimed again")
        };
        assert!(why.contains("lease"), "{why}");
        assert!(dead.lost().expect("a runner").is_cancelled());
    });
}

#[test]
fn a_fenced_runner_writes_nothing_not_even_for_items_it_still_holds() {
    on_postgres(|b| {
        let (old, _go) = runner(b, minute());
        let run = take(&old, "p", &["a", "b"]);
        old.claim(run.id, 0, 2).expect("claim");
        let (new, _gn) = runner(b, minute());
        expire_all_but_newest(b);
        // The new runner takes `a` only; `b` still names the old one as its owner.
        assert_eq!(keys(&new.claim(run.id, 0, 1).expect("claim")), ["a"]);
        // Revived (as after SIGCONT, before its renewal noticed): its lease looks live again,
        // but `a` is no longer its item, so the batch with `a` and `b` is refused whole.
        behind(
            b,
            "UPDATE stagewise.runners SET expires_at = now() + interval '1 minute'",
        );
        let mut writer = old.update_writer(run.id).expect("writer");
        let updates = [
            crate::checkpoint::Update {
                seq: 1,
                change: Change::Done,
            },
            crate::checkpoint::Update {
                seq: 2,
                change: Change::Done,
            },
        ];
        let Err(StoreError::Fenced(why)) = writer.apply(&updates, None) else {
            panic!("a write for another runner's item went through")
        };
        assert!(why.contains("held by another runner"), "{why}");
        assert_eq!(
            old.counts(run.id).expect("counts")["done"],
            0,
            "not even `b`, which it still held"
        );
        assert!(
            matches!(
                writer.apply(&updates[1..], None),
                Err(StoreError::Fenced(_))
            ),
            "once lost, always refused"
        );
        apply(&new, run.id, vec![(1, Change::Done)], None);
        assert_eq!(new.counts(run.id).expect("counts")["done"], 1);
    });
}

#[test]
fn an_orderly_stop_gives_its_items_back_without_counting_an_attempt() {
    on_postgres(|b| {
        let (first, guard) = runner(b, minute());
        let run = take(&first, "p", &["a", "b", "c"]);
        first.claim(run.id, 0, 3).expect("claim");
        apply(
            &first,
            run.id,
            vec![
                (1, Change::TakenUp { stage: s("one") }),
                (1, Change::Interrupted { stage: s("one") }),
            ],
            None,
        );
        let (second, _gs) = runner(b, minute());
        assert!(second.claim(run.id, 0, 3).expect("claim").is_empty());
        drop(guard);
        let taken = second.claim(run.id, 0, 3).expect("claim");
        let got: Vec<(String, u32)> = taken.iter().map(|i| (i.key.clone(), i.attempts)).collect();
        assert_eq!(got, [(s("a"), 0), (s("b"), 0), (s("c"), 0)]);
        let report = second.status(&run, 1000).expect("status");
        let states: Vec<&str> = report.runners.iter().map(|r| r.state.as_str()).collect();
        assert_eq!(states, ["active", "stopped"], "{:?}", report.runners);
    });
}

#[test]
fn a_new_batch_is_taken_by_one_runner_while_the_others_wait_and_join() {
    on_postgres(|b| {
        let (a, _ga) = runner(b, minute());
        let (c, _gc) = runner(b, minute());
        let mut taking = a.begin_run("p", "one", None).expect("a takes");
        taking.add("k", "{}").expect("add");
        assert!(
            matches!(c.begin_run("p", "one", None), Err(StoreError::Moved)),
            "c waits while a takes"
        );
        let (run, _) = taking.commit().expect("commit");
        assert!(
            matches!(c.begin_run("p", "one", None), Err(StoreError::Moved)),
            "c saw no run; there is one now"
        );
        assert_eq!(seen(&c, "p"), Some(run.id));
        a.claim(run.id, 0, 1).expect("a works on it");
        let Err(StoreError::RunInProgress {
            runners, run: busy, ..
        }) = c.begin_run("p", "one", Some(run.id))
        else {
            panic!("a fresh batch beside a live runner of an unfinished run")
        };
        assert_eq!((runners, busy), (1, run.id));
    });
}

#[test]
fn each_runner_keeps_its_own_record_and_the_last_gone_one_is_reported() {
    on_postgres(|b| {
        let (a, guard) = runner(b, minute());
        let (c, _gc) = runner(b, minute());
        a.save_process("p", r#"{"pid":1}"#).expect("save");
        c.save_process("p", r#"{"pid":2}"#).expect("save");
        assert_eq!(
            c.load_process("p").expect("load"),
            None,
            "a live runner is no previous process"
        );
        drop(guard);
        assert_eq!(
            c.load_process("p").expect("load").as_deref(),
            Some(r#"{"pid":1}"#)
        );
        assert!(c.runner_active("p").expect("ask"), "c still runs");
        assert!(!c.runner_active("q").expect("ask"));
    });
}

#[test]
fn failed_items_put_back_while_runners_hold_them_can_be_claimed() {
    on_postgres(|b| {
        let (a, _ga) = runner(b, minute());
        let run = take(&a, "p", &["x", "y"]);
        a.claim(run.id, 0, 2).expect("claim");
        apply(
            &a,
            run.id,
            vec![(
                1,
                Change::Failed {
                    stage: s("one"),
                    error: s("boom"),
                    attempts: 1,
                },
            )],
            None,
        );
        assert_eq!(a.reset_failed(run.id).expect("reset"), 1);
        // `a` is live and holds `y`; `x`, put back, is nobody's: another runner takes it.
        let (c, _gc) = runner(b, minute());
        assert_eq!(keys(&c.claim(run.id, 0, 5).expect("claim")), ["x"]);
    });
}

/// A session of `b`'s database, behind the store's back.
fn session(b: &dyn Backend) -> postgres::Client {
    let StoreLocation::Postgres(url) = b.location() else {
        panic!("a PostgreSQL place")
    };
    url.parse::<postgres::Config>()
        .expect("url")
        .connect(postgres::NoTls)
        .expect("connect")
}

/// A runner stopped (or cut off) after its last lease check and before its COMMIT lands
/// nothing once its lease has ended: the server ends the session first. One that commits at
/// once lands its write; one whose lease is (nearly) over is told not to commit.
#[test]
fn a_commit_that_comes_after_the_lease_ended_does_not_land() {
    on_postgres(|b| {
        let (store, _g) = runner(b, minute());
        drop(store);
        let mut c = session(b);
        // A runner row of its own, not renewed: its lease ends 1.5 s from now.
        let lease = |c: &mut postgres::Client, ms: i64| -> i64 {
            c.query_one(
                "INSERT INTO stagewise.runners (pipeline, host, pid, pidns, expires_at, state, stages)
                 VALUES ('p', 'h', 1, '', clock_timestamp() + $1::bigint * interval '1 millisecond', 'active', '')
                 RETURNING id",
                &[&ms],
            )
            .expect("insert")
            .get(0)
        };
        let ttl = Duration::from_millis(1500);
        let write = |tx: &mut postgres::Transaction<'_>, id: i64| {
            tx.execute(
                "UPDATE stagewise.runners SET host = 'written' WHERE id = $1",
                &[&id],
            )
            .expect("write");
        };
        let written = |c: &mut postgres::Client, id: i64| -> bool {
            c.query_one(
                "SELECT host = 'written' FROM stagewise.runners WHERE id = $1",
                &[&id],
            )
            .expect("read")
            .get(0)
        };

        let on_time = lease(&mut c, 1500);
        let mut tx = c.transaction().expect("begin");
        write(&mut tx, on_time);
        assert!(live_to_commit(&mut tx, on_time, ttl).expect("check"));
        tx.commit().expect("a COMMIT at once lands");
        assert!(written(&mut c, on_time));

        let late = lease(&mut c, 1500);
        let mut tx = c.transaction().expect("begin");
        write(&mut tx, late);
        assert!(live_to_commit(&mut tx, late, ttl).expect("check"));
        // Stopped here past the lease's end, as by SIGSTOP.
        std::thread::sleep(Duration::from_millis(2000));
        let Err(e) = tx.commit() else {
            panic!("a COMMIT after the lease ended landed")
        };
        drop(c);
        let mut c = session(b);
        assert!(
            !written(&mut c, late),
            "the late COMMIT was refused ({e}) and wrote nothing"
        );

        let nearly_over = lease(&mut c, 120);
        let mut tx = c.transaction().expect("begin");
        assert!(
            !live_to_commit(&mut tx, nearly_over, ttl).expect("check"),
            "less left than the margin and 100 ms"
        );
    });
}

/// A client stopped in the middle of a transaction of the store (before its last lease check:
/// its rows locked, no COMMIT coming) has its session ended by the server within half a lease,
/// so that the items it locked can be taken over once its lease ends.
#[test]
fn a_transaction_left_idle_is_ended_by_the_server() {
    on_postgres(|b| {
        let (store, _g) = runner(b, minute());
        drop(store);
        set_idle_limit(Duration::from_secs(1));
        let mut c = session(b);
        let mut tx = begin(&mut c).expect("begin");
        let limit: String = tx
            .query_one("SHOW idle_in_transaction_session_timeout", &[])
            .expect("show")
            .get(0);
        let ms: u64 = match limit.strip_suffix("ms") {
            Some(ms) => ms.parse().expect("ms"),
            None => limit.trim_end_matches('s').parse::<u64>().expect("s") * 1000,
        };
        assert!(ms > 0 && ms <= 30_000, "bounded: {limit}");
        tx.execute("UPDATE stagewise.runners SET host = 'held'", &[])
            .expect("lock the rows");
        // Stopped here, as by SIGSTOP.
        std::thread::sleep(Duration::from_millis(ms + 700));
        assert!(tx.commit().is_err(), "the session outlived {limit} idle");
        drop(c);
        let held: i64 = session(b)
            .query_one(
                "SELECT count(*) FROM stagewise.runners WHERE host = 'held'",
                &[],
            )
            .expect("read")
            .get(0);
        assert_eq!(held, 0, "rolled back, its locks gone");
    });
}

/// `status` lists a live runner of the pipeline that has not claimed any item yet beside the
/// ones that have; a runner of another pipeline is not the run's.
#[test]
fn status_lists_a_runner_that_has_not_claimed_yet() {
    on_postgres(|b| {
        let (a, _ga) = runner(b, minute());
        let run = take(&a, "p", &["k1", "k2"]);
        a.claim(run.id, 0, 2).expect("claim");
        let (_waiting, _gw) = runner(b, minute());
        let StoreLocation::Postgres(url) = b.location() else {
            panic!("a PostgreSQL place")
        };
        let other = PgStore::open(&url).expect("open");
        let _go = other
            .register(
                "q",
                "a:x",
                LeaseTerms::new(minute(), Duration::from_secs(10)),
            )
            .expect("register");
        let report = a.status(&run, 1000).expect("status");
        let held: Vec<(u64, &str)> = report
            .runners
            .iter()
            .map(|r| (r.items_held, r.state.as_str()))
            .collect();
        assert_eq!(held, [(0, "active"), (2, "active")], "{:?}", report.runners);
    });
}
