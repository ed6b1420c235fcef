//! PostgreSQL fault campaign (the issue "Fault campaign against real local servers", its
//! PostgreSQL part): restarts mid-run, `pg_terminate_backend` of the stages' and the store's
//! sessions, `max_connections` reached, and statements that sleep past their time limit.
//! Each run must end by itself with an exit code of ARCHITECTURE.md, every failed item must
//! carry the error class its fault explains, and nothing done may be lost.
//!
//! One pipeline on a cluster of the test's own (it is restarted, and its `max_connections`
//! lowered to [`MAX_CONNECTIONS`]): `db-fetch` reads unprocessed `articles` → `sleep` with
//! jitter → `persist` upserts each into `results` (counting its writes) after
//! `pg_sleep(nap)` and marks the article processed, in one transaction bounded by a
//! `statement_timeout`; `on_failure` marks an article that failed, with its error, so that the
//! next batch leaves it out. Most articles nap 0 s, one in ten a little; one in fifty
//! ("poison") naps 30 s, past the time limit on every attempt, so it must end failed as timed
//! out. The checkpoint store is on the same server (`fault-pg`, store `postgres`) or in a
//! SQLite file (store `sqlite`); both see the same faults on the stages' sessions, and the
//! first sees them on its own sessions too.
//!
//! Faults are drawn from the campaign's seed and injected while a run works, at seeded
//! moments: a restart (`pg_ctl stop -m fast`, then start), an outage (the same, the server
//! kept down 3 to 5 s: longer than `save`'s retries bridge, so some plain articles fail as
//! a lost connection, and their failure, unmarked while the server is away, sends them to a
//! later batch), the termination of a random part of the stages' sessions
//! (`application_name` `stagewise/fetch`, `stagewise/save`) or of the store's
//! (`stagewise/checkpoint`), and a squeeze: every free connection slot taken by idle
//! connections for one to three seconds (sometimes with sessions ended meanwhile, so that they
//! must connect again into a full server), then freed. After a fault that makes the server
//! refuse connections the next one waits [`CLEAR`]. Runs follow one another (each takes the
//! next batch, or resumes an interrupted one; articles are added when none are left) until
//! every planned fault is injected; then runs without faults until the source has nothing new.
//!
//! After every run: it ended by itself (the harness's guard, [`RUN_GUARD`], proves no hang)
//! with 0 or 1 (the faults are shorter than the store's 10 s of reconnecting, so nothing
//! should abort or be fenced); no panic; every item the store has done, in any run, is in the
//! sink with its article's values and marked processed; `status --json` agrees with the store.
//! At the end: every article is done (in the sink) or failed with a reason of its class —
//! a poison article always failed, as timed out (or as a lost connection, when a fault cut
//! its last attempt), after all its attempts; any other one only as a lost connection, after
//! all its attempts — and marked so in the source; no poison article was ever written;
//! `status` agrees with the sink; writes beyond the first are counted and reported.

mod util;

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fmt;
use std::path::Path;
use std::thread;
use std::time::{Duration, Instant};

use postgres::Client;
use util::campaign::{scale, scaled, seed, Report};
use util::pg::{self, Db, DbErr, PrivateCluster};
use util::{Output, Pipeline, Rng, Running, Status};

/// Articles at scale 1, taken [`BATCH`] at a time.
const ARTICLES: u64 = 300;
/// `[pipeline] batch_size`.
const BATCH: u64 = 150;
/// One article in this many is poison (sleeps past the time limit): 2 %.
const POISON_EVERY: u64 = 50;
/// What a poison article's `pg_sleep` asks for, in seconds: far past any time limit.
const POISON_NAP: f64 = 30.0;
/// The cluster's `max_connections` during the campaign.
const MAX_CONNECTIONS: usize = 25;
/// `save`'s `retry.attempts`: every failed item must have used them all.
const SAVE_ATTEMPTS: u64 = 6;
/// The pipeline's name, and its summary file's.
const NAME: &str = "pgfault";
/// The longest a run may take before the harness kills it and fails the campaign: a run of
/// one batch takes a few seconds, with its faults up to about fifteen.
const RUN_GUARD: Duration = Duration::from_secs(60);

/// How long the server is left alone after a fault that makes it refuse connections (a
/// restart, an outage, a squeeze) before the next fault. The store reconnects with pauses of up
/// to 2 s for at most 10 s from the call that found its session gone, so faults of that kind
/// piled up within 10 s with shorter clear spells between them (a 3.6 s outage, then two
/// squeezes 0.9 and 1.5 s apart) can end a run with exit 3, as documented ("for up to 10 s"):
/// not what this campaign asks of each fault.
const CLEAR: Duration = Duration::from_millis(2500);

/// The faults of the planned schedule, at scale 1.
const RESTARTS: u64 = 2;
/// Restarts with the server kept down for [`OUTAGE`]: longer than `save`'s retries bridge,
/// shorter than the store's 10 s of reconnecting.
const OUTAGES: u64 = 1;
const OUTAGE: (u64, u64) = (3000, 5000);
const STAGE_KILLS: u64 = 3;
const STORE_KILLS: u64 = 3;
const SQUEEZES: u64 = 2;

#[derive(Clone, Copy, PartialEq)]
enum Store {
    Postgres,
    Sqlite,
}

impl Store {
    fn label(self) -> &'static str {
        match self {
            Store::Postgres => "postgres",
            Store::Sqlite => "sqlite",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Fault {
    Restart,
    Outage,
    KillStage,
    KillStore,
    Squeeze,
}

/// The pipeline: its sources and sinks on `url`, its store at `store`.
fn pipeline(url: &str, store: &str) -> Pipeline {
    Pipeline::new(&format!(
        r#"
        [pipeline]
        name = "{NAME}"
        batch_size = {BATCH}
        heartbeat = "500ms"
        shutdown_grace = "5s"
        # Faults may fail many items of one batch: the campaign judges each by its reason.
        max_failures = "100%"

        [checkpoint]
        store = "{store}"
        commit_max_items = 20

        [[stage]]
        name = "fetch"
        kind = "db-fetch"
        url = "{url}"
        query = "SELECT id, nap, tag FROM articles WHERE processed_at IS NULL AND failed_at IS NULL ORDER BY id LIMIT $limit"
        key = "id"
        connect_timeout = "1s"
        retry = {{ attempts = 8, initial = "200ms", max = "2s" }}

        [[stage]]
        name = "nap"
        kind = "sleep"
        duration = "40ms"
        jitter = "80ms"
        concurrency = 8
        timeout = "2s"

        # The write sleeps `nap` seconds on the server first: a poison article's sleep is cut
        # by the statement timeout on every attempt, and nothing of it is written.
        [[stage]]
        name = "save"
        kind = "persist"
        url = "{url}"
        concurrency = 4
        connect_timeout = "1s"
        statement_timeout = "400ms"
        timeout = "2s"
        retry = {{ attempts = {SAVE_ATTEMPTS}, initial = "200ms", max = "2s" }}
        statement = """
        INSERT INTO results (id, nap, tag, writes)
            SELECT :key::int, :nap::float8, :tag::text, 1 FROM pg_sleep(:nap::float8)
            ON CONFLICT (id) DO UPDATE
            SET nap = excluded.nap, tag = excluded.tag, writes = results.writes + 1;
        UPDATE articles SET processed_at = now() WHERE id = :key::int
        """
        on_failure = "UPDATE articles SET failed_at = now(), error = :error WHERE id = :key::int"
        "#
    ))
}

/// What an item's recorded error says happened, from its words.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Class {
    /// The statement ran past its time limit: cancelled by the server's `statement_timeout`
    /// or at the attempt's deadline.
    Timeout,
    /// The connection: ended by the server (terminated, shut down), refused, reset, or the
    /// server full.
    Connection,
    /// Anything else: no fault of this campaign explains it.
    Other,
}

impl Class {
    fn of(error: &str) -> Class {
        // A failed mark adds its own error after the item's.
        let own = error
            .split(" (and marking it at")
            .next()
            .unwrap_or(error)
            .to_lowercase();
        const TIMEOUT: [&str; 4] = [
            "statement timeout",
            "timed out",
            "at the attempt's deadline",
            "(sqlstate 57014)",
        ];
        const CONNECTION: [&str; 14] = [
            "connection lost",
            "terminating connection",
            "could not connect",
            "connection refused",
            "connection reset",
            "broken pipe",
            "shutting down",
            "starting up",
            "too many clients",
            "connection slots",
            "server closed the connection",
            "connection closed",
            "(sqlstate 57p",
            "(sqlstate 08",
        ];
        if TIMEOUT.iter().any(|w| own.contains(w)) {
            Class::Timeout
        } else if CONNECTION.iter().any(|w| own.contains(w)) {
            Class::Connection
        } else {
            Class::Other
        }
    }

    fn label(self) -> &'static str {
        match self {
            Class::Timeout => "timeout",
            Class::Connection => "connection",
            Class::Other => "other",
        }
    }
}

/// An item as the store has it.
#[derive(Clone, Debug)]
struct Item {
    run: i64,
    key: String,
    state: String,
    attempts: i64,
    error: String,
}

/// Every item of every run of the store (none before the first run made it).
fn store_items(store: Store, db: &mut Db, dir: &Path) -> Vec<Item> {
    match store {
        Store::Postgres
            if db.query_i64("SELECT count(*) FROM pg_namespace WHERE nspname = 'stagewise'")
                == 0 =>
        {
            Vec::new()
        }
        Store::Sqlite if !dir.join(".stagewise/state.db").exists() => Vec::new(),
        Store::Postgres => db
            .query_rows(
                "SELECT run_id::text, key, state, attempts::text, coalesce(error, '')
                 FROM stagewise.items ORDER BY run_id, seq",
            )
            .into_iter()
            .map(|row| {
                let text = |i: usize| row[i].clone().unwrap_or_default();
                Item {
                    run: text(0).parse().expect("a run id"),
                    key: text(1),
                    state: text(2),
                    attempts: text(3).parse().expect("attempts"),
                    error: text(4),
                }
            })
            .collect(),
        Store::Sqlite => {
            let conn = rusqlite::Connection::open_with_flags(
                dir.join(".stagewise/state.db"),
                rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
            )
            .expect("open the store read-only");
            let mut stmt = conn
                .prepare(
                    "SELECT run_id, key, state, attempts, coalesce(error, '')
                     FROM items ORDER BY run_id, seq",
                )
                .expect("read the store's items");
            stmt.query_map([], |r| {
                Ok(Item {
                    run: r.get(0)?,
                    key: r.get(1)?,
                    state: r.get(2)?,
                    attempts: r.get(3)?,
                    error: r.get(4)?,
                })
            })
            .and_then(Iterator::collect)
            .expect("read the store's items")
        }
    }
}

/// An article as the source table has it, and its row in the sink if it has one.
#[derive(Debug)]
struct Article {
    nap: f64,
    processed: bool,
    failed: bool,
    error: String,
    /// (nap, tag, writes) of its row in `results`.
    result: Option<(f64, String, i64)>,
    /// Its tag matches its row's.
    tag_ok: bool,
}

fn articles(db: &mut Db) -> BTreeMap<String, Article> {
    db.query_rows(
        "SELECT a.id::text, a.nap::text, (a.processed_at IS NOT NULL)::text,
                (a.failed_at IS NOT NULL)::text, coalesce(a.error, ''),
                r.nap::text, r.tag, r.writes::text, (r.tag IS NOT DISTINCT FROM a.tag)::text
         FROM articles a LEFT JOIN results r ON r.id = a.id",
    )
    .into_iter()
    .map(|row| {
        let text = |i: usize| row[i].clone();
        let result = text(5).map(|nap| {
            (
                nap.parse().expect("a nap"),
                text(6).unwrap_or_default(),
                text(7).and_then(|w| w.parse().ok()).expect("writes"),
            )
        });
        (
            text(0).expect("an id"),
            Article {
                nap: text(1).and_then(|n| n.parse().ok()).expect("a nap"),
                processed: text(2).as_deref() == Some("true"),
                failed: text(3).as_deref() == Some("true"),
                error: text(4).unwrap_or_default(),
                tag_ok: text(8).as_deref() == Some("true"),
                result,
            },
        )
    })
    .collect()
}

/// Adds `n` articles after the last one; one in each [`POISON_EVERY`], at a seeded place,
/// sleeps [`POISON_NAP`], one in ten a little (20 to 150 ms), the others not at all.
fn add_articles(db: &mut Db, rng: &mut Rng, n: u64) {
    let first = db.query_i64("SELECT coalesce(max(id), 0) + 1 FROM articles") as u64;
    let mut values = Vec::new();
    let mut poison_at = first + rng.range(0, POISON_EVERY - 1);
    for id in first..first + n {
        let nap = if id == poison_at {
            POISON_NAP
        } else if rng.range(0, 9) == 0 {
            rng.range(20, 150) as f64 / 1000.0
        } else {
            0.0
        };
        if (id - first + 1).is_multiple_of(POISON_EVERY) {
            poison_at = id + 1 + rng.range(0, POISON_EVERY - 1);
        }
        values.push(format!(
            "({id}, {nap}, md5('{seed}:{id}'))",
            seed = rng.next_u64()
        ));
    }
    db.execute(&format!(
        "INSERT INTO articles (id, nap, tag) VALUES {}",
        values.join(", ")
    ));
}

/// The server, as the campaign acts on it: an admin session of its own (reopened after a
/// restart) to find and end sessions, and the connections of a squeeze.
struct Server<'a> {
    cluster: &'a PrivateCluster,
    /// The test database's name: the pipeline's sessions are there.
    database: String,
    admin: Option<Client>,
}

impl Server<'_> {
    /// The admin session (`stagewise_test`, not the pipeline's database), reopened if gone.
    fn admin(&mut self) -> &mut Client {
        if self.admin.as_ref().is_none_or(Client::is_closed) {
            self.admin = None;
            let until = Instant::now() + Duration::from_secs(30);
            loop {
                match pg::try_connect(self.cluster.url()) {
                    Ok(client) => {
                        self.admin = Some(client);
                        break;
                    }
                    Err(e) if Instant::now() < until => {
                        eprintln!("admin session: {}; trying again", DbErr(&e));
                        thread::sleep(Duration::from_millis(100));
                    }
                    Err(e) => panic!("the admin session: {}", DbErr(&e)),
                }
            }
        }
        self.admin.as_mut().expect("just connected")
    }

    /// The pids of the pipeline's sessions named `apps`.
    fn sessions(&mut self, apps: &[&str]) -> Vec<i32> {
        let database = self.database.clone();
        let apps: Vec<String> = apps.iter().map(|a| (*a).to_owned()).collect();
        self.admin()
            .query(
                "SELECT pid FROM pg_stat_activity
                 WHERE datname = $1 AND application_name = ANY($2)",
                &[&database, &apps],
            )
            .unwrap_or_else(|e| panic!("list sessions: {}", DbErr(&e)))
            .iter()
            .map(|row| row.get(0))
            .collect()
    }

    /// Ends a seeded, non-empty part of the sessions named `apps` (each with even odds);
    /// returns how many ended.
    fn terminate(&mut self, apps: &[&str], rng: &mut Rng) -> u64 {
        let all = self.sessions(apps);
        if all.is_empty() {
            return 0;
        }
        let keep_one = rng.range(0, all.len() as u64 - 1) as usize;
        let chosen: Vec<i32> = all
            .iter()
            .enumerate()
            .filter(|&(i, _)| i == keep_one || rng.range(0, 1) == 0)
            .map(|(_, &pid)| pid)
            .collect();
        let ended: i64 = self
            .admin()
            .query_one(
                "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) FROM unnest($1::int[]) AS pid",
                &[&chosen],
            )
            .unwrap_or_else(|e| panic!("pg_terminate_backend: {}", DbErr(&e)))
            .get(0);
        ended as u64
    }

    /// [`terminate`](Self::terminate) the stages' sessions among `apps`, then the store's;
    /// how many of each ended.
    fn terminate_each(&mut self, apps: &[&str], rng: &mut Rng) -> (u64, u64) {
        let (stage, store): (Vec<&str>, Vec<&str>) =
            apps.iter().partition(|a| STAGE_APPS.contains(a));
        let stage = if stage.is_empty() {
            0
        } else {
            self.terminate(&stage, rng)
        };
        let store = if store.is_empty() {
            0
        } else {
            self.terminate(&store, rng)
        };
        (stage, store)
    }

    /// Restarts the server (fast shutdown: every session ended, then a start on the same
    /// port) after `down` stopped; how long it was away.
    fn restart(&mut self, down: Duration) -> Duration {
        let began = Instant::now();
        self.admin = None;
        self.cluster.stop();
        thread::sleep(down);
        self.cluster.start();
        began.elapsed()
    }

    /// Connections of our own until the server refuses one as full: `max_connections` reached.
    /// Panics if it never refuses (the squeeze would prove nothing).
    fn fill(&mut self, held: &mut Vec<Client>) {
        loop {
            match pg::try_connect(self.cluster.url()) {
                Ok(client) => held.push(client),
                Err(e) => {
                    assert_eq!(
                        e.code(),
                        Some(&postgres::error::SqlState::TOO_MANY_CONNECTIONS),
                        "a squeeze's connection was refused for another reason: {}",
                        DbErr(&e)
                    );
                    return;
                }
            }
            assert!(
                held.len() <= MAX_CONNECTIONS,
                "{} connections held and the server still takes more",
                held.len()
            );
        }
    }
}

/// Counts of what the campaign did and saw.
#[derive(Default)]
struct Tally {
    runs: u64,
    exits: BTreeMap<String, u64>,
    restarts: u64,
    outages: u64,
    down: Duration,
    stage_kills: u64,
    stage_sessions: u64,
    store_kills: u64,
    store_sessions: u64,
    squeezes: u64,
    squeeze_held: u64,
    /// Sessions ended while the server was full.
    squeeze_stage_sessions: u64,
    squeeze_store_sessions: u64,
    retries: u64,
    timeouts: u64,
    longest_run: Duration,
}

impl fmt::Display for Tally {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} runs (exits {:?}), {} restarts, {} outages, {} stage kills ({} sessions), {} store kills \
             ({} sessions), {} squeezes ({} connections held; {} stage and {} store sessions \
             ended meanwhile)",
            self.runs,
            self.exits,
            self.restarts,
            self.outages,
            self.stage_kills,
            self.stage_sessions,
            self.store_kills,
            self.store_sessions,
            self.squeezes,
            self.squeeze_held,
            self.squeeze_stage_sessions,
            self.squeeze_store_sessions
        )
    }
}

/// Sleeps `wait` unless the run ends first; whether it still runs.
fn still_running_after(running: &mut Running, wait: Duration) -> bool {
    let until = Instant::now() + wait;
    while Instant::now() < until {
        if running.has_exited() {
            return false;
        }
        thread::sleep(Duration::from_millis(20));
    }
    !running.has_exited()
}

const STAGE_APPS: [&str; 2] = ["stagewise/fetch", "stagewise/save"];
const STORE_APPS: [&str; 1] = ["stagewise/checkpoint"];

/// Injects `fault` into the run; a line for the run's log of faults.
fn inject(
    fault: Fault,
    store: Store,
    server: &mut Server<'_>,
    running: &mut Running,
    rng: &mut Rng,
    tally: &mut Tally,
) -> String {
    match fault {
        Fault::Restart => {
            let down = server.restart(Duration::ZERO);
            tally.restarts += 1;
            tally.down += down;
            format!("restart ({} ms away)", down.as_millis())
        }
        Fault::Outage => {
            let down = server.restart(Duration::from_millis(rng.range(OUTAGE.0, OUTAGE.1)));
            tally.outages += 1;
            tally.down += down;
            format!("outage ({} ms away)", down.as_millis())
        }
        Fault::KillStage => {
            let ended = server.terminate(&STAGE_APPS, rng);
            tally.stage_kills += 1;
            tally.stage_sessions += ended;
            format!("{ended} stage session(s) terminated")
        }
        Fault::KillStore => {
            let ended = server.terminate(&STORE_APPS, rng);
            tally.store_kills += 1;
            tally.store_sessions += ended;
            format!("{ended} store session(s) terminated")
        }
        Fault::Squeeze => {
            let hold = Duration::from_millis(rng.range(1000, 3000));
            // Half the time sessions are ended while the server is full, so that they must
            // connect again into it: the stages', and with even odds the store's too (when it
            // is on this server).
            let kill: Vec<&str> = match rng.range(0, 3) {
                0 | 1 => Vec::new(),
                2 => STAGE_APPS.to_vec(),
                _ if store == Store::Postgres => [&STAGE_APPS[..], &STORE_APPS[..]].concat(),
                _ => STAGE_APPS.to_vec(),
            };
            // The admin session first: it is needed to end sessions while the server is full.
            server.admin();
            let mut held = Vec::new();
            server.fill(&mut held);
            let mut ended = (0, 0);
            if kill.is_empty() {
                still_running_after(running, hold);
            } else {
                still_running_after(running, hold / 3);
                ended = server.terminate_each(&kill, rng);
                // The slots they left are taken again at once.
                server.fill(&mut held);
                still_running_after(running, hold - hold / 3);
            }
            let n = held.len();
            drop(held);
            tally.squeezes += 1;
            tally.squeeze_held += n as u64;
            tally.squeeze_stage_sessions += ended.0;
            tally.squeeze_store_sessions += ended.1;
            format!(
                "squeeze: {n} connections held for {} ms{}",
                hold.as_millis(),
                if kill.is_empty() {
                    String::new()
                } else {
                    match store {
                        Store::Postgres => format!(
                            ", {} stage and {} store session(s) terminated meanwhile",
                            ended.0, ended.1
                        ),
                        Store::Sqlite => {
                            format!(", {} stage session(s) terminated meanwhile", ended.0)
                        }
                    }
                }
            )
        }
    }
}

/// `status --json` with every failed item listed.
fn status(p: &Pipeline) -> Status {
    let out = p
        .cmd("status")
        .arg("--json")
        .arg("--limit")
        .arg("100000")
        .output();
    out.assert_code(0);
    Status::parse(&out)
}

/// The checks after every run: nothing done lost, `status` agreeing with the store.
fn after_run(store: Store, p: &Pipeline, db: &mut Db, context: &str) {
    let items = store_items(store, db, p.dir.path());
    let articles = articles(db);
    for item in items.iter().filter(|i| i.state == "done") {
        let article = articles
            .get(&item.key)
            .unwrap_or_else(|| panic!("{context}: a done item of no article: {item:?}"));
        let Some((nap, _, writes)) = &article.result else {
            panic!(
                "{context}: done in the store (run {}), not in the sink: {item:?} {article:?}",
                item.run
            );
        };
        assert!(
            *nap == article.nap && article.tag_ok && *writes >= 1 && article.processed,
            "{context}: the sink's row of {} is not its article's: {article:?}",
            item.key
        );
    }
    let Some(latest) = items.iter().map(|i| i.run).max() else {
        return;
    };
    let status = status(p);
    assert_eq!(
        status.raw["run"]["id"], latest,
        "{context}: `status` reports another run than the store's latest"
    );
    for state in ["pending", "in_flight", "done", "skipped", "failed"] {
        let stored = items
            .iter()
            .filter(|i| i.run == latest && i.state == state)
            .count() as u64;
        let shown = status.count(state);
        // An item in flight is `pending` in the store's own column.
        if state != "in_flight" && state != "pending" {
            assert_eq!(
                shown, stored,
                "{context}: `status` says {shown} {state}, the store {stored}"
            );
        }
    }
    let listed: BTreeSet<&str> = status.failed.iter().map(|f| f.key.as_str()).collect();
    let stored: BTreeSet<&str> = items
        .iter()
        .filter(|i| i.run == latest && i.state == "failed")
        .map(|i| i.key.as_str())
        .collect();
    assert_eq!(listed, stored, "{context}: the failed items `status` lists");
}

/// One run with faults injected from `plan` while it works; its output and its faults.
fn faulted_run(
    p: &Pipeline,
    store: Store,
    server: &mut Server<'_>,
    plan: &mut VecDeque<Fault>,
    rng: &mut Rng,
    tally: &mut Tally,
) -> (Output, Vec<String>) {
    let mut running = p.cmd("run").timeout(RUN_GUARD).spawn();
    tally.runs += 1;
    let began = Instant::now();
    let mut log = Vec::new();
    assert!(
        running.wait_for_stderr("run started", Duration::from_secs(30)),
        "run {} did not start\n{}",
        tally.runs,
        running.stderr_so_far()
    );
    // Faults begin once the run has started, not while it opens its store: a store that
    // cannot be opened at the start is an error at the start (exit 2, tests/pg_store.rs), which
    // this campaign does not count on.
    let mut gap = Duration::from_millis(rng.range(100, 700));
    while let Some(&fault) = plan.front() {
        if !still_running_after(&mut running, gap) {
            break;
        }
        plan.pop_front();
        let at = began.elapsed();
        let what = inject(fault, store, server, &mut running, rng, tally);
        log.push(format!("{} ms: {what}", at.as_millis()));
        gap = Duration::from_millis(rng.range(300, 1200));
        if matches!(fault, Fault::Restart | Fault::Outage | Fault::Squeeze) {
            gap += CLEAR;
        }
    }
    let out = running.wait();
    tally.longest_run = tally.longest_run.max(out.elapsed);
    (out, log)
}

/// A run's exit code as the figures count it.
fn exit_label(out: &Output) -> String {
    out.code
        .map_or_else(|| "signal".to_owned(), |c| c.to_string())
}

fn campaign(store: Store, fixed_seed: u64) {
    let Some(cluster) = PrivateCluster::own() else {
        return;
    };
    let mut report = Report::new("fault-pg");
    let seed = seed(&format!("fault-pg-{}", store.label()), fixed_seed);
    let mut rng = Rng::new(seed);

    // Fewer slots, so that a squeeze takes them all in a moment. And no password check on
    // 127.0.0.1: SCRAM's key derivation costs the client about 0.3 s of CPU per connection in
    // a debug build, and the campaign opens hundreds (every reconnect, every squeeze's): it
    // would time the first attempts out and double the campaign's time, none of which is what
    // is tested here (tests/pg_store.rs and tests/connect.rs check passwords).
    cluster.psql(
        "postgres",
        &format!("ALTER SYSTEM SET max_connections = {MAX_CONNECTIONS}"),
    );
    std::fs::write(
        cluster.dir().join("data/pg_hba.conf"),
        "local all all trust\nhost all all 127.0.0.1/32 trust\n",
    )
    .expect("write pg_hba.conf");
    cluster.stop();
    cluster.start();
    let mut db = cluster.db();
    db.execute(
        "CREATE TABLE articles (
             id int PRIMARY KEY,
             nap float8 NOT NULL,
             tag text NOT NULL,
             processed_at timestamptz,
             failed_at timestamptz,
             error text
         );
         CREATE TABLE results (
             id int PRIMARY KEY,
             nap float8 NOT NULL,
             tag text NOT NULL,
             writes int NOT NULL
         )",
    );
    add_articles(&mut db, &mut rng, scaled(ARTICLES));
    let store_url = match store {
        Store::Postgres => db.url().to_owned(),
        Store::Sqlite => "sqlite:.stagewise/state.db".to_owned(),
    };
    let p = pipeline(db.url(), &store_url);
    let mut server = Server {
        cluster: &cluster,
        database: db.name().to_owned(),
        admin: None,
    };

    // The schedule: every fault of the plan, in a seeded order.
    let mut faults = Vec::new();
    for (fault, n) in [
        (Fault::Restart, RESTARTS),
        (Fault::Outage, OUTAGES),
        (Fault::KillStage, STAGE_KILLS),
        (Fault::KillStore, STORE_KILLS),
        (Fault::Squeeze, SQUEEZES),
    ] {
        if fault == Fault::KillStore && store == Store::Sqlite {
            continue;
        }
        faults.extend(std::iter::repeat_n(fault, scaled(n) as usize));
    }
    for i in (1..faults.len()).rev() {
        faults.swap(i, rng.range(0, i as u64) as usize);
    }
    let mut plan: VecDeque<Fault> = faults.into();
    eprintln!("campaign fault-pg ({} store): plan {plan:?}", store.label());

    let mut tally = Tally::default();
    let most_runs = 12 * scale();
    while !plan.is_empty() {
        assert!(
            tally.runs < most_runs,
            "seed {seed}: {most_runs} runs and faults still planned: {plan:?}; {tally}"
        );
        // A new batch for every run that would have none: more articles.
        let left = db.query_i64(
            "SELECT count(*) FROM articles WHERE processed_at IS NULL AND failed_at IS NULL",
        );
        let resumable = store_items(store, &mut db, p.dir.path())
            .iter()
            .any(|i| i.state != "done" && i.state != "failed" && i.state != "skipped");
        if left == 0 && !resumable {
            add_articles(&mut db, &mut rng, BATCH);
        }
        let (out, log) = faulted_run(&p, store, &mut server, &mut plan, &mut rng, &mut tally);
        let context = format!(
            "seed {seed}, {} store, run {} (faults: {})",
            store.label(),
            tally.runs,
            if log.is_empty() {
                "none".to_owned()
            } else {
                log.join("; ")
            }
        );
        eprintln!("{context}: exit {:?} after {:?}", out.code, out.elapsed);
        end_of_run(store, &p, &mut db, &mut tally, &out, &context);
    }
    // No more faults: runs until the source has nothing new (an article whose failure could
    // not be marked while the server was away is taken again).
    let mut quiet = 0;
    loop {
        quiet += 1;
        assert!(
            quiet <= 4,
            "seed {seed}: the source still had articles after 3 runs without faults; {tally}"
        );
        let out = p.cmd("run").timeout(RUN_GUARD).output();
        tally.runs += 1;
        let context = format!(
            "seed {seed}, {} store, run {} (no faults)",
            store.label(),
            tally.runs
        );
        end_of_run(store, &p, &mut db, &mut tally, &out, &context);
        if out.stderr.contains("the source has nothing new") {
            out.assert_code(0);
            break;
        }
    }

    let figures = assert_final(store, &p, &mut db, seed, &tally);
    let refused = cluster
        .log()
        .lines()
        .filter(|l| l.contains("too many clients") && l.contains(&format!("@{}", db.name())))
        .count();
    report
        .set("store", store.label())
        .set("seed", seed)
        .set("runs", tally.runs)
        .set("exits", serde_json::to_value(&tally.exits).expect("a map"))
        .set("restarts", tally.restarts)
        .set("outages", tally.outages)
        .set("down_ms", tally.down.as_millis() as u64)
        .set("stage_kills", tally.stage_kills)
        .set(
            "terminated_stage_sessions",
            tally.stage_sessions + tally.squeeze_stage_sessions,
        )
        .set("store_kills", tally.store_kills)
        .set(
            "terminated_store_sessions",
            tally.store_sessions + tally.squeeze_store_sessions,
        )
        .set("squeezes", tally.squeezes)
        .set("squeeze_connections", tally.squeeze_held)
        .set("refused_connections", refused as u64)
        .set("retries", tally.retries)
        .set("timeouts", tally.timeouts)
        .set("longest_run_ms", tally.longest_run.as_millis() as u64)
        .set("lost", 0);
    for (key, value) in figures {
        report.set(key, value);
    }
    report.finish();
}

/// The checks of every run's end, and its figures.
fn end_of_run(
    store: Store,
    p: &Pipeline,
    db: &mut Db,
    tally: &mut Tally,
    out: &Output,
    context: &str,
) {
    *tally.exits.entry(exit_label(out)).or_default() += 1;
    assert!(
        matches!(out.code, Some(0 | 1)),
        "{context}: the run did not finish (0 or 1): the faults were shorter than the store's \
         10 s of reconnecting and than every stage's retries\n{out}"
    );
    assert!(
        !out.stderr.contains("panicked"),
        "{context}: a panic\n{out}"
    );
    if p.dir.exists(&format!(".stagewise/{NAME}.summary.json")) {
        let save = p.stage_summary(NAME, "save");
        tally.retries += save["retries"].as_u64().unwrap_or(0);
        tally.timeouts += save["timeouts"].as_u64().unwrap_or(0);
    }
    after_run(store, p, db, context);
}

/// The end of a campaign: every article done or failed for a reason of its class, marked so
/// in the source; poison never written; `status` agreeing with the sink. Its figures.
fn assert_final(
    store: Store,
    p: &Pipeline,
    db: &mut Db,
    seed: u64,
    tally: &Tally,
) -> Vec<(&'static str, serde_json::Value)> {
    let items = store_items(store, db, p.dir.path());
    let articles = articles(db);
    // Each key's last run decides its end.
    let mut last: BTreeMap<&str, &Item> = BTreeMap::new();
    for item in &items {
        last.insert(&item.key, item);
    }
    let mut failed_by_class: BTreeMap<&str, u64> = BTreeMap::new();
    let mut poison_failed_by_class: BTreeMap<&str, u64> = BTreeMap::new();
    let (mut done, mut poison, mut retaken) = (0u64, 0u64, 0u64);
    let mut wrong = Vec::new();
    for (key, article) in &articles {
        let is_poison = article.nap >= POISON_NAP;
        poison += u64::from(is_poison);
        let Some(item) = last.get(key.as_str()) else {
            wrong.push(format!("article {key} was never taken: {article:?}"));
            continue;
        };
        retaken += items.iter().filter(|i| &i.key == key).count() as u64 - 1;
        match item.state.as_str() {
            "done" => {
                done += 1;
                if is_poison {
                    wrong.push(format!("poison article {key} done: {item:?}"));
                }
                if article.result.is_none() || !article.processed || article.failed {
                    wrong.push(format!("{key} done, but {article:?}"));
                }
            }
            "failed" => {
                let class = Class::of(&item.error);
                *failed_by_class.entry(class.label()).or_default() += 1;
                if is_poison {
                    *poison_failed_by_class.entry(class.label()).or_default() += 1;
                }
                let expected = if is_poison {
                    matches!(class, Class::Timeout | Class::Connection)
                } else {
                    class == Class::Connection
                };
                if !expected {
                    wrong.push(format!(
                        "{} article {key} failed as {}: {item:?}",
                        if is_poison { "poison" } else { "a plain" },
                        class.label()
                    ));
                }
                if item.attempts != SAVE_ATTEMPTS as i64 {
                    wrong.push(format!(
                        "{key} failed after {} attempts, not {SAVE_ATTEMPTS}: {item:?}",
                        item.attempts
                    ));
                }
                if !article.failed || article.error.is_empty() {
                    wrong.push(format!(
                        "{key} failed, not marked in the source: {article:?}"
                    ));
                }
                if article.result.is_some() {
                    wrong.push(format!(
                        "{key} failed, yet in the sink: {article:?} {item:?}"
                    ));
                }
            }
            other => wrong.push(format!("{key} ended {other}: {item:?}")),
        }
        if is_poison && article.result.is_some() {
            wrong.push(format!("poison article {key} written: {article:?}"));
        }
    }
    assert!(
        wrong.is_empty(),
        "seed {seed}, {} store: {} article(s) not as they should end ({tally}):\n- {}",
        store.label(),
        wrong.len(),
        wrong.join("\n- ")
    );
    assert!(
        poison_failed_by_class.get("timeout").copied().unwrap_or(0) > 0,
        "seed {seed}: no poison article failed as timed out: {poison_failed_by_class:?}"
    );

    // `status` (the latest run) agrees with the sink.
    let latest = items.iter().map(|i| i.run).max().expect("runs were made");
    let status = status(p);
    let in_sink = items
        .iter()
        .filter(|i| i.run == latest)
        .filter(|i| articles.get(&i.key).is_some_and(|a| a.result.is_some()))
        .count() as u64;
    assert_eq!(
        status.count("done"),
        in_sink,
        "seed {seed}: `status` says {} done in run {latest}, the sink has {in_sink} of its keys",
        status.count("done")
    );
    let rows = articles.values().filter(|a| a.result.is_some()).count() as u64;
    assert_eq!(rows, done, "seed {seed}: rows in the sink and items done");

    let writes: Vec<i64> = articles
        .values()
        .filter_map(|a| a.result.as_ref().map(|r| r.2))
        .collect();
    let extra: i64 = writes.iter().map(|w| w - 1).sum();
    let most = writes.iter().copied().max().unwrap_or(0);
    assert!(
        most <= SAVE_ATTEMPTS as i64,
        "seed {seed}: an article written {most} times, more than its {SAVE_ATTEMPTS} attempts"
    );
    let failed_total: u64 = failed_by_class.values().sum();
    eprintln!(
        "seed {seed}, {} store: {} articles ({poison} poison): {done} done, {failed_total} \
         failed {failed_by_class:?} (poison {poison_failed_by_class:?}), {retaken} taken again, \
         {extra} extra writes (at most {most} of one); {tally}",
        store.label(),
        articles.len()
    );
    vec![
        ("items", articles.len().into()),
        ("poison", poison.into()),
        ("done", done.into()),
        ("failed", failed_total.into()),
        (
            "failed_by_class",
            serde_json::to_value(&failed_by_class).expect("a map"),
        ),
        (
            "poison_failed_by_class",
            serde_json::to_value(&poison_failed_by_class).expect("a map"),
        ),
        ("taken_again", retaken.into()),
        ("duplicates", extra.into()),
        ("max_writes", most.into()),
    ]
}

#[test]
fn postgresql_faults_with_the_store_on_postgresql() {
    campaign(Store::Postgres, 0xFA17_0001);
}

#[test]
fn postgresql_faults_with_the_store_on_sqlite() {
    campaign(Store::Sqlite, 0xFA17_0002);
}
