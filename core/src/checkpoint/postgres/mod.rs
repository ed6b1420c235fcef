//! The PostgreSQL store, for platforms without a persistent disk (a cron job on Render, a
//! Kubernetes job without a volume): `[checkpoint] store = "postgres://…"`.
//!
//! It keeps the SQLite store's semantics exactly (the same item states, run statuses, reports
//! and the `taking` status that hides an unfinished manifest), in tables of the schema
//! `stagewise`, created if missing. The schema version lives in `stagewise.meta` with the same
//! meaning as SQLite's `user_version`: an older schema is upgraded in one transaction (under a
//! transaction-level advisory lock, so two processes upgrade it once), a newer one is refused.
//!
//! Any number of runners share a pipeline's run: each registers under a lease, claims items a
//! few at a time and is fenced off the moment its lease is gone ([`lease`]). A new batch is
//! taken by one of them at a time, under a transaction-level advisory lock keyed by the
//! pipeline's name; the others wait for its manifest and join. Every statement runs in a
//! transaction of its own with `SET LOCAL` timeouts ([`conn::begin`]), and no session keeps
//! state the store relies on, so the store works through a pooler in transaction mode.
//!
//! The `postgres` client is synchronous and runs a runtime of its own: calling it (or dropping
//! it) on an async runtime's thread panics. Every call goes through [`conn::off_runtime`], and
//! every client is wrapped in [`conn::Conn`], whose drop does the same.
//!
//! The store is split by role: this module opens it and runs the model's run and item
//! queries, [`conn`] makes its sessions, [`schema`] creates and migrates it, [`lease`] keeps
//! the runners and their claims, [`writers`] writes manifests and updates, [`cache`] keeps the
//! response cache and [`status`] reads what a report needs. What the rows
//! mean lives in [`model`](super::model).

mod cache;
pub(in crate::checkpoint) mod conn;
mod lease;
mod schema;
mod status;
mod writers;

use std::sync::{Arc, Mutex, OnceLock};

use postgres::types::ToSql;
use postgres::{Row, Transaction};

use crate::stage::SharedCache;

use self::cache::PgCache;
pub(crate) use self::conn::RECONNECTING;
use self::conn::{begin, config, connect, connect_again, db, in_transaction, off_runtime, Conn};
#[cfg(test)]
pub(in crate::checkpoint) use self::lease::live_to_commit;
use self::lease::Membership;
use self::writers::{PgManifest, PgUpdates};
use super::model::{now, ItemRow, RunRow, Tables, PROCESS_LOCK_WAIT};
use super::{unpoisoned, StoreError};

/// The first half of every advisory lock key of stagewise ("stgw"), so that its locks do not
/// collide with an application's own single-key locks on the same database.
const LOCK_CLASS: i32 = 0x7374_6777;

/// FNV-1a of the pipeline's name: stable across builds and platforms, unlike `DefaultHasher`,
/// so that two versions of stagewise agree on a pipeline's lock (the one that serializes the
/// taking of its batches).
fn lock_key(pipeline: &str) -> i32 {
    let mut h: u32 = 0x811c_9dc5;
    for b in pipeline.bytes() {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    i32::from_ne_bytes(h.to_ne_bytes())
}

/// A checkpoint store in a PostgreSQL database.
pub struct PgStore {
    /// The URL with its password hidden, for messages.
    shown: String,
    /// The settings of every session it opens, TLS included.
    config: crate::pg::PgTarget,
    /// The session of the store's reads; writers, the lock and the cache open their own.
    conn: Mutex<Conn>,
    /// The session that saves process records, opened at the first and again after a failure.
    process: Mutex<Option<Conn>>,
    /// This process's place among the runners, once registered ([`PgStore::register`]).
    runner: OnceLock<Arc<Membership>>,
}

impl std::fmt::Debug for PgStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgStore").field("url", &self.shown).finish()
    }
}

impl PgStore {
    /// Connect to the store at `url`, creating its schema if missing and upgrading an older one.
    pub fn open(url: &str) -> Result<Self, StoreError> {
        let shown = crate::text::redact_url(url);
        let config = config(url)?;
        let mut conn = connect(&config, &shown)?;
        off_runtime(|| schema::migrate(conn.client(), &shown))?;
        Ok(PgStore {
            shown,
            config,
            conn: Mutex::new(conn),
            process: Mutex::new(None),
            runner: OnceLock::new(),
        })
    }

    /// Connect to an existing store; `None` when the database has no stagewise schema yet.
    pub fn open_existing(url: &str) -> Result<Option<Self>, StoreError> {
        let shown = crate::text::redact_url(url);
        let config = config(url)?;
        let mut conn = connect(&config, &shown)?;
        let exists = off_runtime(|| {
            let mut tx = begin(conn.client())?;
            let exists = tx
                .query_one("SELECT to_regclass('stagewise.meta') IS NOT NULL", &[])?
                .get::<_, bool>(0);
            tx.commit()?;
            Ok(exists)
        })
        .map_err(db)?;
        if !exists {
            return Ok(None);
        }
        off_runtime(|| schema::migrate(conn.client(), &shown))?;
        Ok(Some(PgStore {
            shown,
            config,
            conn: Mutex::new(conn),
            process: Mutex::new(None),
            runner: OnceLock::new(),
        }))
    }

    /// The rows of `sql`, each made into a `T` by `map` within the transaction: a row holds its
    /// statement, whose closing must reach the server session before the transaction ends (a
    /// pooler in transaction mode may give the next transaction another one, and the statement
    /// would stay behind on this one).
    fn rows<T: Send>(
        &self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
        map: impl Fn(&Row) -> T + Send + Sync,
    ) -> Result<Vec<T>, StoreError> {
        self.with_conn(|tx| Ok(tx.query(sql, params)?.iter().map(&map).collect()))
    }

    /// The row of `sql`, if any, made into a `T` within the transaction (see [`PgStore::rows`]).
    fn row<T: Send>(
        &self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
        map: impl Fn(&Row) -> T + Send + Sync,
    ) -> Result<Option<T>, StoreError> {
        self.with_conn(|tx| Ok(tx.query_opt(sql, params)?.as_ref().map(&map)))
    }

    /// Run `f` in one short transaction on the process record's session, so that neither the
    /// store's reads nor the update writer wait for it; connecting, its lock waits and its
    /// statements each take at most [`PROCESS_LOCK_WAIT`]. A failed session is dropped, and the
    /// next call connects again.
    fn on_process_session(
        &self,
        f: impl FnOnce(&mut Transaction<'_>) -> Result<(), postgres::Error> + Send,
    ) -> Result<(), StoreError> {
        let mut slot = unpoisoned(&self.process);
        let conn = match &mut *slot {
            Some(conn) if !conn.is_closed() => conn,
            _ => {
                let mut config = self.config.clone();
                config.connect_timeout(PROCESS_LOCK_WAIT);
                slot.insert(connect(&config, &self.shown)?)
            }
        };
        let client = conn.client();
        let ms = PROCESS_LOCK_WAIT.as_millis();
        let saved = off_runtime(|| {
            let mut tx = begin(client)?;
            tx.batch_execute(&format!(
                "SET LOCAL statement_timeout = {ms}; SET LOCAL lock_timeout = {ms}"
            ))?;
            f(&mut tx)?;
            tx.commit()
        });
        if saved.is_err() {
            *slot = None;
        }
        saved.map_err(db)
    }

    /// Run `f` in a transaction of its own on the store's own session (see
    /// [`conn::in_transaction`]). What it returns must hold no row (see [`PgStore::rows`]).
    fn with_conn<R: Send>(
        &self,
        f: impl Fn(&mut Transaction<'_>) -> Result<R, postgres::Error> + Send + Sync,
    ) -> Result<R, StoreError> {
        let mut conn = unpoisoned(&self.conn);
        in_transaction(&mut conn, (&self.config, &self.shown), f)
    }
}

impl Tables for PgStore {
    type Manifest = PgManifest;
    type Updates = PgUpdates;

    fn shown(&self) -> String {
        self.shown.clone()
    }

    fn newest_run(
        &self,
        pipeline: &str,
        at_most: Option<i64>,
    ) -> Result<Option<RunRow>, StoreError> {
        self.row(
            "SELECT id, status, items, started_at FROM stagewise.runs
                 WHERE pipeline = $1 AND status <> 'taking' AND items > 0
                   AND ($2::bigint IS NULL OR id <= $2)
                 ORDER BY id DESC LIMIT 1",
            &[&pipeline, &at_most],
            |r| (r.get(0), r.get(1), r.get(2), r.get(3)),
        )
    }

    fn newest_empty_take(&self, pipeline: &str) -> Result<Option<String>, StoreError> {
        self.row(
            "SELECT started_at FROM stagewise.runs
                 WHERE pipeline = $1 AND status <> 'taking' AND items = 0 ORDER BY id DESC LIMIT 1",
            &[&pipeline],
            |r| r.get(0),
        )
    }

    /// Under a transaction-level advisory lock keyed by the pipeline, so that runners starting
    /// together take one batch: the first takes it (marked as its `taker`), the others are
    /// told to look again ([`StoreError::Moved`]) until it is published, then join it.
    fn new_run(
        &self,
        pipeline: &str,
        started: &str,
        seen: Option<i64>,
    ) -> Result<(i64, PgManifest), StoreError> {
        let me = self.me().map(|m| m.id);
        // A taker that died on this machine need not hold the others back for its lease.
        if me.is_some() {
            self.end_dead_neighbours(pipeline)?;
        }
        let mut conn = connect_again(&self.config, &self.shown)?;
        let key = lock_key(pipeline);
        let run = off_runtime(|| {
            let mut tx = begin(conn.client())?;
            tx.execute(
                "SELECT pg_advisory_xact_lock($1, $2)",
                &[&LOCK_CLASS, &key],
            )?;
            let taking: bool = tx
                .query_one(
                    "SELECT EXISTS (SELECT 1 FROM stagewise.runs t JOIN stagewise.runners r ON r.id = t.taker
                     WHERE t.pipeline = $1 AND t.status = 'taking' AND t.taker IS DISTINCT FROM $2
                       AND r.state = 'active' AND r.expires_at > clock_timestamp())",
                    &[&pipeline, &me],
                )?
                .get(0);
            let newest: Option<(i64, String)> = tx
                .query_opt(
                    "SELECT id, status FROM stagewise.runs
                     WHERE pipeline = $1 AND status <> 'taking' AND items > 0 ORDER BY id DESC LIMIT 1",
                    &[&pipeline],
                )?
                .map(|r| (r.get(0), r.get(1)));
            if taking || newest.as_ref().map(|n| n.0) != seen {
                return Ok(Err(StoreError::Moved));
            }
            if let Some((id, status)) = &newest {
                let working: i64 = tx
                    .query_one(
                        "SELECT count(*) FROM stagewise.runners r
                         WHERE r.run_id = $1 AND r.id IS DISTINCT FROM $2
                           AND r.state = 'active' AND r.expires_at > clock_timestamp()",
                        &[id, &me],
                    )?
                    .get(0);
                if status != "finished" && working > 0 {
                    return Ok(Err(StoreError::RunInProgress {
                        path: self.shown.clone(),
                        pipeline: pipeline.to_owned(),
                        run: *id,
                        runners: working,
                    }));
                }
            }
            tx.execute(
                "DELETE FROM stagewise.items WHERE run_id IN (SELECT id FROM stagewise.runs WHERE pipeline = $1 AND status = 'taking')",
                &[&pipeline],
            )?;
            tx.execute(
                "DELETE FROM stagewise.runs WHERE pipeline = $1 AND (status = 'taking' OR items = 0)",
                &[&pipeline],
            )?;
            let run: i64 = tx
                .query_one(
                    "INSERT INTO stagewise.runs (pipeline, status, items, started_at, updated_at, taker)
                     VALUES ($1, 'taking', 0, $2, $2, $3) RETURNING id",
                    &[&pipeline, &started, &me],
                )?
                .get(0);
            tx.commit()?;
            Ok(Ok(run))
        })
        .map_err(db)??;
        Ok((run, PgManifest { conn }))
    }

    fn unfinished(&self, run: i64, after_seq: i64, limit: i64) -> Result<Vec<ItemRow>, StoreError> {
        self.rows(
            "SELECT seq, key, stage, record, attempts, since FROM stagewise.items
                 WHERE run_id = $1 AND seq > $2 AND state IN ('pending', 'in_flight')
                 ORDER BY seq LIMIT $3",
            &[&run, &after_seq, &limit],
            |r| (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4), r.get(5)),
        )
    }

    fn error_of(&self, run: i64, seq: i64) -> Result<Option<String>, StoreError> {
        Ok(self
            .row(
                "SELECT error FROM stagewise.items WHERE run_id = $1 AND seq = $2",
                &[&run, &seq],
                |r| r.get(0),
            )?
            .flatten())
    }

    fn count_keys_not_ended_before(&self, pipeline: &str, run: i64) -> Result<i64, StoreError> {
        self.with_conn(|tx| {
            tx.query_one(
                "SELECT count(*) FROM stagewise.items i WHERE i.run_id = $2 AND NOT EXISTS (
                     SELECT 1 FROM stagewise.runs r
                     JOIN stagewise.items j ON j.run_id = r.id AND j.key = i.key
                     WHERE r.pipeline = $1 AND r.id < $2 AND j.state IN ('failed', 'skipped')
                       AND j.stage = i.stage)",
                &[&pipeline, &run],
            )
            .map(|r| r.get(0))
        })
    }

    fn raise_attempts(
        &self,
        run: i64,
        raised: &[(String, String, i64, String)],
    ) -> Result<u64, StoreError> {
        self.with_conn(|tx| {
            let row = tx.prepare(
                "UPDATE stagewise.items SET attempts = $4, error = $5
                 WHERE run_id = $1 AND key = $2 AND stage = $3 AND attempts < $4
                   AND state IN ('pending', 'in_flight')",
            )?;
            let death = tx.prepare(
                "INSERT INTO stagewise.deaths (run_id, key, stage, attempts, error)
                 VALUES ($1, $2, $3, $4, $5)
                 ON CONFLICT (run_id, key, stage) DO UPDATE
                 SET attempts = EXCLUDED.attempts, error = EXCLUDED.error
                 WHERE stagewise.deaths.attempts < EXCLUDED.attempts",
            )?;
            let mut n = 0;
            for (key, stage, attempts, error) in raised {
                tx.execute(&row, &[&run, key, stage, attempts, error])?;
                n += tx.execute(&death, &[&run, key, stage, attempts, error])?;
            }
            Ok(n)
        })
    }

    fn died_at(&self, run: i64) -> Result<Vec<(String, String, i64, String)>, StoreError> {
        self.rows(
            "SELECT key, stage, attempts, error FROM stagewise.deaths WHERE run_id = $1",
            &[&run],
            |r| (r.get(0), r.get(1), r.get(2), r.get(3)),
        )
    }

    fn reset_failed_items(&self, run: i64) -> Result<u64, StoreError> {
        self.with_conn(|tx| {
            // The failed items' deaths go with their attempts; unfinished items keep theirs, so
            // that resuming a run this way again and again still ends an item that kills it.
            tx.execute(
                "DELETE FROM stagewise.deaths WHERE run_id = $1
                   AND key IN (SELECT key FROM stagewise.items WHERE run_id = $1 AND state = 'failed')",
                &[&run],
            )?;
            let n = tx.execute(
                "UPDATE stagewise.items SET state = 'pending', attempts = 0, error = NULL, taken = false, owner = NULL, since = NULL
                 WHERE run_id = $1 AND state = 'failed'",
                &[&run],
            )?;
            if n > 0 {
                tx.execute(
                    "UPDATE stagewise.runs SET status = 'interrupted', updated_at = $2 WHERE id = $1",
                    &[&run, &now()],
                )?;
            }
            Ok(n)
        })
    }

    fn updates(&self, run: i64) -> Result<PgUpdates, StoreError> {
        Ok(PgUpdates {
            conn: connect_again(&self.config, &self.shown)?,
            config: self.config.clone(),
            run,
            shown: self.shown.clone(),
            me: self.me().cloned(),
        })
    }

    fn cache(&self) -> Result<SharedCache, StoreError> {
        let conn = connect_again(&self.config, &self.shown)?;
        Ok(std::sync::Arc::new(PgCache::new(
            conn,
            self.config.clone(),
            self.shown.clone(),
        )))
    }

    /// One short transaction on a session of its own, so that neither the store's reads nor
    /// the update writer wait for it; connecting, its lock waits and the statement itself each
    /// take at most [`PROCESS_LOCK_WAIT`]. The record is kept with this runner's row (runners
    /// of one pipeline each keep their own). A failed session is dropped, and the next save
    /// connects again.
    fn put_process(&self, _pipeline: &str, record: &str, _updated: &str) -> Result<(), StoreError> {
        let Some(me) = self.me().map(|m| m.id) else {
            return Ok(());
        };
        self.on_process_session(|tx| {
            tx.execute(
                "UPDATE stagewise.runners SET record = $2 WHERE id = $1",
                &[&me, &record],
            )
            .map(drop)
        })
    }

    /// As [`Tables::put_process`], on its session.
    fn put_end(
        &self,
        pipeline: &str,
        end: Option<&crate::checkpoint::ProcessEnd>,
        at: &str,
    ) -> Result<(), StoreError> {
        self.on_process_session(|tx| {
            match end {
                Some(e) => tx.execute(
                    "INSERT INTO stagewise.history (pipeline, run_id, pid, host, started_at, ended_at, outcome, exit_code, reason, items, done, failed, skipped)
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)",
                    &[&pipeline, &e.id, &e.pid, &e.host, &e.started, &at, &e.outcome, &e.exit_code, &e.reason, &e.items, &e.done, &e.failed, &e.skipped],
                ),
                None => tx.execute(
                    "INSERT INTO stagewise.checks (pipeline, count, last_at) VALUES ($1, 1, $2)
                     ON CONFLICT (pipeline) DO UPDATE SET count = stagewise.checks.count + 1, last_at = EXCLUDED.last_at",
                    &[&pipeline, &at],
                ),
            }
            .map(drop)
        })
    }

    fn ends(
        &self,
        pipeline: &str,
        limit: i64,
    ) -> Result<Vec<crate::checkpoint::ProcessEnd>, StoreError> {
        self.rows(
            "SELECT run_id, started_at, ended_at, outcome, exit_code, items, done, failed, skipped, reason, pid, host
             FROM stagewise.history WHERE pipeline = $1 ORDER BY id DESC LIMIT $2",
            &[&pipeline, &limit],
            |r| crate::checkpoint::ProcessEnd {
                id: r.get(0),
                started: r.get(1),
                ended: r.get(2),
                outcome: r.get(3),
                exit_code: r.get(4),
                items: r.get(5),
                done: r.get(6),
                failed: r.get(7),
                skipped: r.get(8),
                reason: r.get(9),
                pid: r.get(10),
                host: r.get(11),
            },
        )
    }

    fn checks(&self, pipeline: &str) -> Result<Option<(i64, String)>, StoreError> {
        self.row(
            "SELECT count, last_at FROM stagewise.checks WHERE pipeline = $1",
            &[&pipeline],
            |r| (r.get(0), r.get(1)),
        )
    }

    /// The record of `pipeline`'s last runner that is not live, not this process: the
    /// process that `status` and the next run report on.
    fn process(&self, pipeline: &str) -> Result<Option<String>, StoreError> {
        let me = self.me().map(|m| m.id);
        self.row(
            "SELECT record FROM stagewise.runners r
                 WHERE r.pipeline = $1 AND r.record IS NOT NULL AND r.id IS DISTINCT FROM $2
                   AND NOT (r.state = 'active' AND r.expires_at > clock_timestamp())
                 ORDER BY r.renewed_at DESC LIMIT 1",
            &[&pipeline, &me],
            |r| r.get(0),
        )
    }

    /// Whether a runner of `pipeline` holds a live lease.
    fn runner_lock_held(&self, pipeline: &str) -> Result<bool, StoreError> {
        self.any_live(pipeline)
    }

    fn claim_rows(&self, run: i64, after_seq: i64, limit: i64) -> Result<Vec<ItemRow>, StoreError> {
        match self.me() {
            Some(_) => self.claim(run, limit),
            None => self.unfinished(run, after_seq, limit),
        }
    }

    fn others_hold(&self, run: i64) -> Result<i64, StoreError> {
        self.held_by_others(run)
    }

    fn dead(&self, pipeline: &str) -> Result<Vec<(i64, String)>, StoreError> {
        let me = self.me().map(|m| m.id);
        self.rows(
            "SELECT r.id, r.record FROM stagewise.runners r
                 WHERE r.pipeline = $1 AND r.record IS NOT NULL AND r.id IS DISTINCT FROM $2
                   AND r.state = 'active' AND r.expires_at <= clock_timestamp()
                   AND r.reported_at IS NULL
                 ORDER BY r.renewed_at DESC LIMIT $3",
            &[&pipeline, &me, &super::DEAD_REPORTED],
            |r| (r.get(0), r.get(1)),
        )
    }

    fn reported(&self, ids: &[i64]) -> Result<(), StoreError> {
        self.with_conn(|tx| {
            tx.execute(
                "UPDATE stagewise.runners SET reported_at = clock_timestamp()
                 WHERE id = ANY($1) AND reported_at IS NULL",
                &[&ids],
            )
        })
        .map(drop)
    }

    /// Through the index of failed items: as cheap as the run has failed items.
    fn failed_count(&self, run: i64) -> Result<i64, StoreError> {
        self.with_conn(|tx| {
            tx.query_one(
                "SELECT count(*) FROM stagewise.items WHERE run_id = $1 AND state = 'failed'",
                &[&run],
            )
            .map(|r| r.get(0))
        })
    }

    fn lost_token(&self) -> Option<tokio_util::sync::CancellationToken> {
        self.me().map(|m| m.lost())
    }

    /// Also the lease's own clock: a runner whose renewals have not got through for a whole
    /// lease (a partition that holds its packets, a server that does not answer) is lost,
    /// whether or not it has written since.
    fn lost_reason(&self) -> Option<String> {
        self.me().and_then(|m| m.refused()).map(|e| match e {
            StoreError::Fenced(why) => why,
            other => other.to_string(),
        })
    }

    fn runners_of(&self, run: i64) -> Result<Vec<super::RunnerInfo>, StoreError> {
        self.runner_rows(run)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lock_keys_are_stable() {
        // Two builds must agree on a pipeline's lock: these values may never change.
        for (pipeline, want) in [("", 0x811c_9dc5u32), ("digest", 0xf924_55dd)] {
            assert_eq!(lock_key(pipeline), i32::from_ne_bytes(want.to_ne_bytes()));
        }
        assert_ne!(lock_key("digest"), lock_key("digest2"));
    }
}
