//! Runners sharing a run, each under a lease: the PostgreSQL store's coordination.
//!
//! Every `stagewise run` on a PostgreSQL store registers a row in `stagewise.runners` whose
//! `expires_at`, on the server's clock, is its lease; a thread of its own renews it every
//! [`LeaseTerms::renew_every`]. A runner claims the run's items a few at a time
//! (`FOR UPDATE SKIP LOCKED`: two runners never claim one item) and owns them (`items.owner`)
//! until they end or it releases them on an orderly stop. An item whose owner's lease expired
//! is claimed again by whoever asks next, from its last finished stage; if an attempt was under
//! way there (its take-up mark still set), that attempt counts as used, as any death does.
//!
//! Fencing: every write of a runner to the run's items is conditional on its lease being live
//! and on its still owning each item written, and is rolled back whole otherwise. The lease is
//! checked by the last statement before each COMMIT ([`live_to_commit`]), which also has the
//! server end the session should the COMMIT come too late: a runner stopped or cut off between
//! the check and its COMMIT cannot land a write after its lease ran out. A runner whose renewal
//! finds its lease expired, or whose write is refused, is *lost*: it stops at once and saves
//! nothing more (the run goes on in the other runners, or in the next one).
//! Nothing here needs a session of its own on the server, so it works through a pooler in
//! transaction mode.

use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use super::super::model::{died_during, ItemRow};
use super::super::{unpoisoned, LeaseTerms, RunnerInfo, StoreError};
use postgres::Transaction;

use super::conn::{begin, connect, db, describe, off_runtime, on_session, set_idle_limit, Conn};
use super::PgStore;

/// The live runners, as a condition on `stagewise.runners r`. `clock_timestamp()`, not `now()`:
/// a transaction's `now()` is when it began.
const LIVE: &str = "r.state = 'active' AND r.expires_at > clock_timestamp()";

/// The lease of runner `$1` as the last statement of a transaction that writes for it: a row
/// if the lease has more than `$2` milliseconds (the margin, [`commit_margin`]) and 100 more
/// left, and then the server ends the session, rolling the transaction back, should it sit idle
/// for longer than the time left less the margin: its COMMIT lands before the lease ends, or
/// not at all. (The margin covers the server's own moment between the check and waiting for
/// the COMMIT.)
const FENCE: &str =
    "SELECT set_config('idle_in_transaction_session_timeout', (l.left_ms - $2::bigint)::text, true)
     FROM (SELECT (extract(epoch FROM r.expires_at - clock_timestamp()) * 1000)::bigint AS left_ms
           FROM stagewise.runners r WHERE r.id = $1 AND r.state = 'active') l
     WHERE l.left_ms >= $2::bigint + 100";

/// How long before its lease ends a runner's COMMIT must come at the latest (see [`FENCE`]):
/// a tenth of the lease, at most a second.
fn commit_margin(ttl: Duration) -> i64 {
    i64::try_from((ttl / 10).min(Duration::from_secs(1)).as_millis()).unwrap_or(1000)
}

/// Whether `tx`, which writes for runner `id` under a lease of `ttl`, may commit: its lease
/// still live, checked as the last statement before the COMMIT, which must follow at once. The
/// COMMIT then lands only if it reaches the server before the lease ends (see [`FENCE`]);
/// later, it fails with its session, the transaction rolled back.
pub(in crate::checkpoint) fn live_to_commit(
    tx: &mut Transaction<'_>,
    id: i64,
    ttl: Duration,
) -> Result<bool, postgres::Error> {
    Ok(tx.query_opt(FENCE, &[&id, &commit_margin(ttl)])?.is_some())
}

/// The first half of the advisory lock under which runners of a pipeline register ("stgj"; the
/// second half is the pipeline's [`super::lock_key`]).
const JOIN_CLASS: i32 = 0x7374_676a;

/// This process's place among the runners of a PostgreSQL store.
#[derive(Debug)]
pub(super) struct Membership {
    /// Its row in `stagewise.runners`.
    pub(super) id: i64,
    /// Its lease's terms.
    terms: LeaseTerms,
    /// Cancelled once the runner is lost; the first reason is kept.
    lost: CancellationToken,
    why: OnceLock<String>,
    /// When the lease ends at the latest as far as this process can tell: a renewal's sending
    /// time plus the lease. Past it, the runner takes itself as lost without asking.
    valid_until: Mutex<Instant>,
    /// The number of this runner's last claim (see [`PgStore::claim`]).
    claims: std::sync::atomic::AtomicI64,
    /// The runners whose items it took over, each said once.
    taken_from: Mutex<std::collections::HashSet<i64>>,
}

impl Membership {
    /// The runner lost its claim: stop, and write nothing more. The first reason is kept.
    pub(super) fn fence(&self, why: String) {
        let _ = self.why.set(why);
        self.lost.cancel();
    }

    /// Why the runner was lost, if it was.
    pub(super) fn lost_because(&self) -> Option<String> {
        self.lost
            .is_cancelled()
            .then(|| self.why.get().cloned().unwrap_or_default())
    }

    /// The error of a write refused because the runner was lost (saying why), or `None`.
    pub(super) fn refused(&self) -> Option<StoreError> {
        if let Some(why) = self.lost_because() {
            return Some(StoreError::Fenced(why));
        }
        if Instant::now() >= *unpoisoned(&self.valid_until) {
            let why = format!(
                "its lease (`lease_ttl` = {}) ran out before it was renewed (the process was paused, or cut off from the store)",
                crate::text::duration(self.terms.ttl)
            );
            self.fence(why.clone());
            return Some(StoreError::Fenced(why));
        }
        None
    }

    /// What to watch for the runner being lost.
    pub(super) fn lost(&self) -> CancellationToken {
        self.lost.clone()
    }

    /// Its lease's length.
    pub(super) fn ttl(&self) -> Duration {
        self.terms.ttl
    }
}

/// Held while this process is a runner of the store; see [`PgStore::register`]. Dropping it
/// stops the renewals and releases the items the runner still holds (their attempts not
/// counted), unless it was lost.
pub struct PgRunner {
    stop: Option<std::sync::mpsc::Sender<()>>,
    done: std::sync::mpsc::Receiver<()>,
}

impl std::fmt::Debug for PgRunner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PgRunner")
    }
}

/// How long the release at exit may take: a store that does not answer leaves the items to
/// expire with the lease. It comes after the summary, when a stop has little of its
/// `shutdown_grace` + 2 s left (a release held by a lock once took the exit past it).
const RELEASE_WAIT: Duration = Duration::from_millis(500);

impl Drop for PgRunner {
    fn drop(&mut self) {
        drop(self.stop.take());
        let _ = self.done.recv_timeout(RELEASE_WAIT);
    }
}

impl PgStore {
    /// Register this process as a runner of `pipeline` running `stages` (its stages' names and
    /// kinds, in order, as [`crate::spec::Pipeline::stage_list`] gives them) under `terms`, and
    /// start renewing its lease on a thread of its own, with a session of its own. Refused
    /// ([`StoreError::OtherStages`]) while a live runner of the pipeline runs other stages: the
    /// two would move each other's items to stages the other does not have.
    pub fn register(
        &self,
        pipeline: &str,
        stages: &str,
        terms: LeaseTerms,
    ) -> Result<PgRunner, StoreError> {
        let ttl_ms = i64::try_from(terms.ttl.as_millis()).unwrap_or(i64::MAX);
        set_idle_limit(terms.ttl);
        let (host, pidns) = (crate::flight::hostname(), pid_namespace());
        let pid = i64::from(std::process::id());
        let sent = Instant::now();
        // A runner of this machine that is gone is no runner: neither of other stages, nor one
        // whose items must wait for its lease.
        self.end_dead_neighbours(pipeline)?;
        let joined = self.with_conn(|tx| {
            // Two runners registering at once with different stages: one sees the other.
            tx.execute(
                "SELECT pg_advisory_xact_lock($1, $2)",
                &[&JOIN_CLASS, &super::lock_key(pipeline)],
            )?;
            // Rows of runners long gone are history no one reads.
            tx.execute(
                "DELETE FROM stagewise.runners
                 WHERE pipeline = $1 AND expires_at < now() - interval '7 days'",
                &[&pipeline],
            )?;
            let other: Option<(i64, String, i64, String)> = tx
                .query_opt(
                    &format!(
                        "SELECT r.id, r.host, r.pid, r.stages FROM stagewise.runners r
                         WHERE r.pipeline = $1 AND {LIVE} AND r.stages IS DISTINCT FROM $2
                         ORDER BY r.id LIMIT 1"
                    ),
                    &[&pipeline, &stages],
                )?
                .map(|r| (r.get(0), r.get(1), r.get(2), r.get::<_, Option<String>>(3).unwrap_or_default()));
            if let Some(other) = other {
                return Ok(Err(other));
            }
            tx.query_one(
                "INSERT INTO stagewise.runners (pipeline, host, pid, pidns, expires_at, state, stages)
                 VALUES ($1, $2, $3, $5, clock_timestamp() + $4::bigint * interval '1 millisecond', 'active', $6)
                 RETURNING id",
                &[&pipeline, &host, &pid, &ttl_ms, &pidns, &stages],
            )
            .map(|r| Ok(r.get(0)))
        })?;
        let id: i64 = joined.map_err(|(runner, host, pid, theirs)| StoreError::OtherStages {
            path: self.shown.clone(),
            pipeline: pipeline.to_owned(),
            runner: format!(
                "runner {runner}, pid {pid} on {}",
                crate::text::printable(&host)
            ),
            theirs: crate::spec::show_stage_list(&theirs),
            ours: crate::spec::show_stage_list(stages),
        })?;
        let me = Arc::new(Membership {
            id,
            terms,
            lost: CancellationToken::new(),
            why: OnceLock::new(),
            valid_until: Mutex::new(sent + terms.ttl),
            claims: std::sync::atomic::AtomicI64::new(0),
            taken_from: Mutex::default(),
        });
        self.runner
            .set(me.clone())
            .map_err(|_| StoreError::Db("this store already has a runner".into()))?;
        let (stop, stopped) = std::sync::mpsc::channel::<()>();
        let (finished, done) = std::sync::mpsc::channel::<()>();
        let (config, shown) = (self.config.clone(), self.shown.clone());
        std::thread::Builder::new()
            .name("stagewise-lease".into())
            .spawn(move || {
                renew_until_stopped(&me, &config, &shown, &stopped);
                let _ = finished.send(());
            })
            .map_err(|e| StoreError::Db(format!("cannot start the lease's thread: {e}")))?;
        Ok(PgRunner {
            stop: Some(stop),
            done,
        })
    }

    /// This process's membership, once registered.
    pub(super) fn me(&self) -> Option<&Arc<Membership>> {
        self.runner.get()
    }

    /// Claim up to `limit` of `run`'s unfinished items that no live runner holds, in manifest
    /// order; an item taken over from a runner that died during an attempt has that attempt
    /// counted. Refused once the runner is lost.
    pub(super) fn claim(&self, run: i64, limit: i64) -> Result<Vec<ItemRow>, StoreError> {
        let Some(me) = self.me() else {
            return Err(StoreError::Db("claiming items before registering".into()));
        };
        if let Some(refused) = me.refused() {
            return Err(refused);
        }
        let id = me.id;
        // Each claim is numbered: tried again after its session was lost, it finds the items
        // an earlier try committed (its answer lost with the session) rather than claiming
        // more and leaving those behind.
        let claim = me.claims.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
        let tried = std::sync::atomic::AtomicBool::new(false);
        let mut conn = unpoisoned(&self.conn);
        let claimed = on_session(&mut conn, (&self.config, &self.shown), None, |client| {
            let mut tx = begin(client)?;
            // Only a try after the first can find what an earlier one committed: the first
            // does not look (the look reads the run's unfinished items).
            let again: Vec<ItemRow> = if tried.swap(true, std::sync::atomic::Ordering::Relaxed) {
                tx.query(
                    "SELECT seq, key, stage, record, attempts, since FROM stagewise.items
                     WHERE run_id = $1 AND owner = $2 AND claim = $3 AND state IN ('pending', 'in_flight')
                     ORDER BY seq",
                    &[&run, &id, &claim],
                )?
                .iter()
                .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4), r.get(5)))
                .collect()
            } else {
                Vec::new()
            };
            let claimed = if again.is_empty() {
                claim_new(&mut tx, (run, id, claim, limit), &me.taken_from)?
            } else {
                Some((again, Vec::new()))
            };
            match claimed {
                Some(claimed) if live_to_commit(&mut tx, id, me.ttl())? => {
                    tx.commit()?;
                    Ok(Some(claimed))
                }
                _ => Ok(None),
            }
        })
        .map_err(StoreError::from)?;
        drop(conn);
        let Some((items, from)) = claimed else {
            let why = "its lease had expired when it asked for more items".to_owned();
            me.fence(why.clone());
            return Err(StoreError::Fenced(why));
        };
        for (runner, host, pid) in from {
            if unpoisoned(&me.taken_from).insert(runner) {
                tracing::warn!(
                    run,
                    runner,
                    host = %crate::text::printable(&host),
                    pid,
                    "taking over the items of a runner whose lease ran out (it was killed, or cut off from the store); an attempt it had under way counts as used"
                );
            }
        }
        Ok(items)
    }

    /// End the leases of `pipeline`'s runners on this machine (its host name, and the same
    /// process id namespace: not another container's) whose process is gone: their items are
    /// taken over now rather than when their leases run out. A process id taken by another
    /// process since only makes this wait for the lease.
    pub(super) fn end_dead_neighbours(&self, pipeline: &str) -> Result<(), StoreError> {
        let (host, pidns) = (crate::flight::hostname(), pid_namespace());
        if pidns.is_empty() {
            return Ok(());
        }
        let me = self.me().map(|m| m.id);
        let neighbours: Vec<(i64, i64)> = self.with_conn(|tx| {
            tx.query(
                &format!(
                    "SELECT r.id, r.pid FROM stagewise.runners r
                     WHERE r.pipeline = $1 AND r.host = $2 AND r.pidns = $3
                       AND r.id IS DISTINCT FROM $4 AND {LIVE}"
                ),
                &[&pipeline, &host, &pidns, &me],
            )
            .map(|rows| rows.iter().map(|r| (r.get(0), r.get(1))).collect())
        })?;
        for (id, pid) in neighbours {
            if process_alive(pid) {
                continue;
            }
            self.with_conn(|tx| {
                tx.execute(
                    "UPDATE stagewise.runners SET expires_at = clock_timestamp()
                     WHERE id = $1 AND state = 'active'",
                    &[&id],
                )
            })?;
            tracing::info!(
                runner = id,
                pid,
                "a runner of this pipeline on this machine is gone (killed, or out of memory): its items are taken over now, not when its lease runs out"
            );
        }
        Ok(())
    }

    /// How many of `run`'s unfinished items other runners hold (live or not yet taken over).
    pub(super) fn held_by_others(&self, run: i64) -> Result<i64, StoreError> {
        if let Some(pipeline) = self.pipeline_of(run)? {
            self.end_dead_neighbours(&pipeline)?;
        }
        let me = self.me().map(|m| m.id);
        self.with_conn(|tx| {
            tx.query_one(
                "SELECT count(*) FROM stagewise.items
                 WHERE run_id = $1 AND state IN ('pending', 'in_flight') AND owner IS DISTINCT FROM $2",
                &[&run, &me],
            )
            .map(|r| r.get(0))
        })
    }

    /// The runners that worked on `run`, and the live ones of its pipeline that have not
    /// claimed yet, newest first (at most 100).
    pub(super) fn runner_rows(&self, run: i64) -> Result<Vec<RunnerInfo>, StoreError> {
        self.rows(
                &format!(
                    "SELECT r.id, r.host, r.pid, r.run_id,
                        to_char(r.started_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"'),
                        to_char(r.renewed_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"'),
                        CASE WHEN {LIVE} THEN 'active' WHEN r.state = 'active' THEN 'lost' ELSE r.state END,
                        (SELECT count(*) FROM stagewise.items i
                         WHERE i.run_id = r.run_id AND i.owner = r.id AND i.state IN ('pending', 'in_flight'))
                     FROM stagewise.runners r
                     WHERE r.run_id = $1
                        -- A live runner of the pipeline that has not claimed yet is the run's too.
                        OR (r.run_id IS NULL AND {LIVE}
                            AND r.pipeline = (SELECT pipeline FROM stagewise.runs WHERE id = $1))
                     ORDER BY r.id DESC LIMIT 100"
                ),
            &[&run],
            |r| RunnerInfo {
                id: r.get(0),
                host: r.get(1),
                pid: r.get(2),
                run: r.get(3),
                started_at: r.get(4),
                renewed_at: r.get(5),
                state: r.get(6),
                items_held: u64::try_from(r.get::<_, i64>(7)).unwrap_or(0),
            },
        )
    }

    /// The pipeline of `run`.
    fn pipeline_of(&self, run: i64) -> Result<Option<String>, StoreError> {
        self.with_conn(|tx| {
            tx.query_opt("SELECT pipeline FROM stagewise.runs WHERE id = $1", &[&run])
                .map(|r| r.map(|r| r.get(0)))
        })
    }

    /// Whether some runner of `pipeline` holds a live lease (this process's own too).
    pub(super) fn any_live(&self, pipeline: &str) -> Result<bool, StoreError> {
        self.with_conn(|tx| {
            tx.query_one(
                &format!(
                    "SELECT EXISTS (SELECT 1 FROM stagewise.runners r WHERE r.pipeline = $1 AND {LIVE})"
                ),
                &[&pipeline],
            )
            .map(|r| r.get(0))
        })
    }
}

/// Items claimed, and the runners `(id, host, pid)` some of them were taken over from.
type Claimed = (Vec<ItemRow>, Vec<(i64, String, i64)>);

/// The claim numbered `claim` of runner `id`: up to `limit` of `run`'s unfinished items that
/// no live runner holds, with the runners they are taken over from that `said` does not hold
/// yet; `None` if the runner's lease is no longer live.
fn claim_new(
    tx: &mut postgres::Transaction<'_>,
    (run, id, claim, limit): (i64, i64, i64, i64),
    said: &Mutex<std::collections::HashSet<i64>>,
) -> Result<Option<Claimed>, postgres::Error> {
    let live: bool = tx
        .query_opt(
            &format!("SELECT 1 FROM stagewise.runners r WHERE r.id = $1 AND {LIVE}"),
            &[&id],
        )?
        .is_some();
    if !live {
        return Ok(None);
    }
    tx.execute(
        "UPDATE stagewise.runners SET run_id = $2 WHERE id = $1 AND run_id IS DISTINCT FROM $2",
        &[&id, &run],
    )?;
    let rows = tx.query(
        &format!(
            "WITH c AS (
                 SELECT i.seq, i.taken, i.owner FROM stagewise.items i
                 WHERE i.run_id = $1 AND i.state IN ('pending', 'in_flight')
                   AND (i.owner IS NULL OR NOT EXISTS (
                       SELECT 1 FROM stagewise.runners r WHERE r.id = i.owner AND {LIVE}))
                 ORDER BY i.seq LIMIT $3
                 FOR UPDATE OF i SKIP LOCKED)
             UPDATE stagewise.items i SET owner = $2, taken = false, claim = $4 FROM c
             WHERE i.run_id = $1 AND i.seq = c.seq
             RETURNING i.seq, i.key, i.stage, i.record, i.attempts, c.taken, c.owner, i.since"
        ),
        &[&run, &id, &limit, &claim],
    )?;
    let mut out = Vec::with_capacity(rows.len());
    // Runners whose items these were: their leases ran out.
    let mut from: Vec<i64> = rows
        .iter()
        .filter_map(|r| r.get::<_, Option<i64>>(6))
        .filter(|owner| *owner != id)
        .collect();
    from.sort_unstable();
    from.dedup();
    from.retain(|owner| !unpoisoned(said).contains(owner));
    let from: Vec<(i64, String, i64)> = if from.is_empty() {
        Vec::new()
    } else {
        tx.query(
            "SELECT id, host, pid FROM stagewise.runners WHERE id = ANY($1)",
            &[&from],
        )?
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect()
    };
    for r in &rows {
        let (seq, key, stage, record, mut attempts, since): ItemRow =
            (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4), r.get(7));
        let was_taken: bool = r.get(5);
        if let (true, Some(stage)) = (was_taken, stage.as_deref().filter(|s| !s.is_empty())) {
            // Its owner died during an attempt here: that attempt counts.
            attempts += 1;
            let error = died_during(u32::try_from(attempts).unwrap_or(u32::MAX), stage);
            tx.execute(
                "UPDATE stagewise.items SET attempts = $3, error = $4 WHERE run_id = $1 AND seq = $2",
                &[&run, &seq, &attempts, &error],
            )?;
            tx.execute(
                "INSERT INTO stagewise.deaths (run_id, key, stage, attempts, error)
                 VALUES ($1, $2, $3, $4, $5)
                 ON CONFLICT (run_id, key, stage) DO UPDATE
                 SET attempts = EXCLUDED.attempts, error = EXCLUDED.error
                 WHERE stagewise.deaths.attempts < EXCLUDED.attempts",
                &[&run, &key, &stage, &attempts, &error],
            )?;
        }
        out.push((seq, key, stage, record, attempts, since));
    }
    out.sort_by_key(|row| row.0);
    Ok(Some((out, from)))
}

/// Which processes this one can see: its process id namespace (`pid:[…]`) on this boot of this
/// kernel (`boot_id`), or "" where either cannot be read. Two runners of one value see each
/// other's process ids; two machines, or two containers, never share one (a host name alone
/// does not tell machines apart, nor the root namespace's number, the same on every machine).
fn pid_namespace() -> String {
    let ns = std::fs::read_link("/proc/self/ns/pid")
        .map(|p| p.to_string_lossy().into_owned())
        .unwrap_or_default();
    let boot = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").unwrap_or_default();
    match (ns.is_empty(), boot.trim()) {
        (false, boot) if !boot.is_empty() => format!("{ns}@{boot}"),
        _ => String::new(),
    }
}

/// Whether process `pid` of this namespace exists, as `/proc` shows it (where there is no
/// `/proc`, it is taken as alive: the lease then decides).
fn process_alive(pid: i64) -> bool {
    if !std::path::Path::new("/proc/self").exists() {
        return true;
    }
    std::path::Path::new("/proc").join(pid.to_string()).exists()
}

/// Renew `me`'s lease every [`LeaseTerms::renew_every`] until told to stop (or the sender
/// drops), then release what it holds. A renewal that finds the lease expired, or no renewal
/// for a whole lease, loses the runner.
fn renew_until_stopped(
    me: &Membership,
    config: &crate::pg::PgTarget,
    shown: &str,
    stop: &std::sync::mpsc::Receiver<()>,
) {
    let ttl_ms = i64::try_from(me.terms.ttl.as_millis()).unwrap_or(i64::MAX);
    let renew_ms = me.terms.renew_every.as_millis().max(1000);
    let mut conn: Option<Conn> = None;
    // The session opened now, not at the first renewal: on a loaded machine connecting can take
    // a good part of a short lease, which the first renewal cannot spare. (Failing here is not
    // fatal: each renewal connects again if it must, and says so.)
    let _ = session(&mut conn, config, shown);
    let mut warned = false;
    // After a renewal that did not get through, the next is tried sooner: from 100 ms, doubling,
    // never later than the next renewal was due (a session ended twice within a renewal's
    // interval must not cost two renewals).
    // The first renewal is due a renewal's interval after the lease was granted, however long
    // this thread took to start and connect.
    let granted = unpoisoned(&me.valid_until).checked_sub(me.terms.ttl);
    let mut wait = granted.map_or(me.terms.renew_every, |at| {
        me.terms.renew_every.saturating_sub(at.elapsed())
    });
    let mut retry = Duration::from_millis(100);
    while let Err(std::sync::mpsc::RecvTimeoutError::Timeout) = stop.recv_timeout(wait) {
        if me.lost.is_cancelled() {
            continue;
        }
        let sent = Instant::now();
        let renewed = session(&mut conn, config, shown).and_then(|c| {
            off_runtime(|| {
                let mut tx = begin(c.client())?;
                // A renewal that does not answer by the next one is as good as failed.
                tx.batch_execute(&format!(
                    "SET LOCAL statement_timeout = {}; SET LOCAL lock_timeout = {}",
                    renew_ms, renew_ms
                ))?;
                // Fenced as every write is (see `FENCE`), against the lease it renews: the
                // renewal is the last statement, and lands before that lease ends or not at all.
                let n = tx.execute(
                    "UPDATE stagewise.runners r SET renewed_at = clock_timestamp(),
                         expires_at = clock_timestamp() + $2::bigint * interval '1 millisecond'
                     FROM (SELECT id, (extract(epoch FROM expires_at - clock_timestamp()) * 1000)::bigint AS left_ms
                           FROM stagewise.runners WHERE id = $1 AND state = 'active') old
                     WHERE r.id = old.id AND old.left_ms >= $3::bigint + 100
                     RETURNING set_config('idle_in_transaction_session_timeout', (old.left_ms - $3::bigint)::text, true)",
                    &[&me.id, &ttl_ms, &commit_margin(me.terms.ttl)],
                )?;
                tx.commit()?;
                Ok(n)
            })
            .map_err(db)
        });
        match renewed {
            Ok(1) => {
                (wait, retry) = (me.terms.renew_every, Duration::from_millis(100));
                *unpoisoned(&me.valid_until) = sent + me.terms.ttl;
                if warned {
                    tracing::info!(store = %shown, "the runner's lease is renewed again");
                    warned = false;
                }
            }
            Ok(_) => me.fence(format!(
                "its lease (`lease_ttl` = {}) had expired when it came to renew it (the process was paused, or cut off from the store, for that long); other runners may have taken its items",
                crate::text::duration(me.terms.ttl)
            )),
            Err(e) => {
                conn = None;
                wait = retry.min(me.terms.renew_every);
                retry = (retry * 2).min(me.terms.renew_every);
                if me.refused().is_none() && !warned {
                    tracing::warn!(store = %shown, error = %e, "cannot renew the runner's lease; trying again at the next renewal");
                    warned = true;
                }
            }
        }
    }
    if me.lost.is_cancelled() || me.refused().is_some() {
        return;
    }
    // An orderly end: what it still holds goes back at once, its attempts not counted (an
    // item still marked taken up had an attempt whose end was not saved: that one counts).
    let released = session(&mut conn, config, shown).and_then(|c| {
        off_runtime(|| {
            let mut tx = begin(c.client())?;
            tx.batch_execute("SET LOCAL statement_timeout = '500ms'")?;
            tx.execute(
                "UPDATE stagewise.items SET owner = NULL
                 WHERE owner = $1 AND state IN ('pending', 'in_flight')",
                &[&me.id],
            )?;
            tx.execute(
                "UPDATE stagewise.runners SET state = 'stopped', expires_at = clock_timestamp() WHERE id = $1",
                &[&me.id],
            )?;
            tx.commit()
        })
        .map_err(|e| StoreError::Db(describe(&e)))
    });
    if let Err(e) = released {
        tracing::warn!(store = %shown, error = %e, "cannot release the runner's items; other runners take them over once its lease expires");
    }
}

/// The lease thread's session, connected (again) if needed.
fn session<'a>(
    conn: &'a mut Option<Conn>,
    config: &crate::pg::PgTarget,
    shown: &str,
) -> Result<&'a mut Conn, StoreError> {
    if let Some(c) = conn {
        if !c.is_closed() {
            return Ok(conn.as_mut().expect("just checked"));
        }
    }
    Ok(conn.insert(connect(config, shown)?))
}
