//! The PostgreSQL store, for platforms without a persistent disk (a cron job on Render, a
//! Kubernetes job without a volume): `[checkpoint] store = "postgres://…"`.
//!
//! It keeps the SQLite store's semantics exactly (the same item states, run statuses, reports
//! and the `taking` status that hides an unfinished manifest), in tables of the schema
//! `stagewise`, created if missing. The schema version lives in `stagewise.meta` with the same
//! meaning as SQLite's `user_version`: an older schema is upgraded in one transaction (under a
//! transaction-level advisory lock, so two processes upgrade it once), a newer one is refused.
//!
//! One runner per pipeline and store: [`PgStore::lock`] takes a session-level advisory lock keyed
//! by the pipeline's name on a connection of its own, held for the run. The server releases it
//! when that connection ends, so a `kill -9` leaves no stale lock.
//!
//! The `postgres` client is synchronous and runs a runtime of its own: calling it (or dropping
//! it) on an async runtime's thread panics. Every call goes through [`conn::off_runtime`], and
//! every client is wrapped in [`conn::Conn`], whose drop does the same.
//!
//! The store is split by role: this module opens and locks it and runs the model's run and item
//! queries, [`conn`] makes its sessions, [`schema`] creates and migrates it, [`writers`] writes manifests and updates,
//! [`cache`] keeps the response cache and [`status`] reads what a report needs. What the rows
//! mean lives in [`model`](super::model).

mod cache;
mod conn;
mod schema;
mod status;
mod writers;

use std::sync::Mutex;

use postgres::Client;

use crate::stage::SharedCache;

use self::cache::PgCache;
use self::conn::{config, connect, db, off_runtime, Conn};
use self::writers::{PgManifest, PgUpdates};
use super::model::{now, ItemRow, RunRow, Tables, PROCESS_LOCK_WAIT};
use super::{unpoisoned, StoreError};

/// The first half of every advisory lock key of stagewise ("stgw"), so that its locks do not
/// collide with an application's own single-key locks on the same database.
const LOCK_CLASS: i32 = 0x7374_6777;

/// Where `pg_locks` shows the runner lock of the pipeline whose key is `$2`, granted
/// (`$1`: [`LOCK_CLASS`]); a two-key advisory lock shows as `objsubid = 2`.
const RUNNER_LOCK_GRANTED: &str = "l.locktype = 'advisory' AND l.granted
    AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
    AND l.classid = ($1::int)::oid AND l.objid = ($2::int)::oid AND l.objsubid = 2";

/// FNV-1a of the pipeline's name: stable across builds and platforms, unlike `DefaultHasher`,
/// so that two versions of stagewise agree on a pipeline's lock.
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
}

impl std::fmt::Debug for PgStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgStore").field("url", &self.shown).finish()
    }
}

/// Held while a run uses the store; see [`PgStore::lock`]. Dropping it ends the session, which
/// releases the lock.
pub struct PgLock {
    _conn: Conn,
}

impl std::fmt::Debug for PgLock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PgLock")
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
        })
    }

    /// Connect to an existing store; `None` when the database has no stagewise schema yet.
    pub fn open_existing(url: &str) -> Result<Option<Self>, StoreError> {
        let shown = crate::text::redact_url(url);
        let config = config(url)?;
        let mut conn = connect(&config, &shown)?;
        let exists = off_runtime(|| {
            conn.client()
                .query_one("SELECT to_regclass('stagewise.meta') IS NOT NULL", &[])
                .map(|r| r.get::<_, bool>(0))
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
        }))
    }

    /// Take the store for this process's run of `pipeline`: a session-level advisory lock on a
    /// connection of its own, held until the returned guard drops or the process dies.
    pub fn lock(&self, pipeline: &str) -> Result<PgLock, StoreError> {
        let mut conn = connect(&self.config, &self.shown)?;
        let key = lock_key(pipeline);
        let taken = off_runtime(|| {
            conn.client()
                .query_one("SELECT pg_try_advisory_lock($1, $2)", &[&LOCK_CLASS, &key])
                .map(|r| r.get::<_, bool>(0))
        })
        .map_err(db)?;
        if taken {
            return Ok(PgLock { _conn: conn });
        }
        // Who holds it, as far as this role may see (other roles' addresses are hidden).
        let holder = off_runtime(|| {
            conn.client().query_opt(
                &format!(
                    "SELECT a.pid, COALESCE(host(a.client_addr), 'local socket'), COALESCE(a.application_name, '')
                     FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
                     WHERE {RUNNER_LOCK_GRANTED}
                     LIMIT 1"
                ),
                &[&LOCK_CLASS, &key],
            )
        });
        let holder = match holder {
            Ok(Some(r)) => format!(
                "the session of server pid {}, from {}, `{}`",
                r.get::<_, i32>(0),
                r.get::<_, String>(1),
                r.get::<_, String>(2)
            ),
            _ => "process unknown".to_owned(),
        };
        Err(StoreError::Busy {
            path: format!("{} (pipeline `{pipeline}`)", self.shown),
            holder,
        })
    }

    /// Run `f` on the store's own session, off the async runtime.
    fn with_conn<R: Send>(
        &self,
        f: impl FnOnce(&mut Client) -> Result<R, postgres::Error> + Send,
    ) -> Result<R, StoreError> {
        let mut conn = unpoisoned(&self.conn);
        let client = conn.client();
        off_runtime(|| f(client)).map_err(db)
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
        let row = self.with_conn(|c| {
            c.query_opt(
                "SELECT id, status, items, started_at FROM stagewise.runs
                 WHERE pipeline = $1 AND status <> 'taking' AND items > 0
                   AND ($2::bigint IS NULL OR id <= $2)
                 ORDER BY id DESC LIMIT 1",
                &[&pipeline, &at_most],
            )
        })?;
        Ok(row.map(|r| (r.get(0), r.get(1), r.get(2), r.get(3))))
    }

    fn newest_empty_take(&self, pipeline: &str) -> Result<Option<String>, StoreError> {
        let row = self.with_conn(|c| {
            c.query_opt(
                "SELECT started_at FROM stagewise.runs
                 WHERE pipeline = $1 AND status <> 'taking' AND items = 0 ORDER BY id DESC LIMIT 1",
                &[&pipeline],
            )
        })?;
        Ok(row.map(|r| r.get(0)))
    }

    fn new_run(&self, pipeline: &str, started: &str) -> Result<(i64, PgManifest), StoreError> {
        let mut conn = connect(&self.config, &self.shown)?;
        let run = off_runtime(|| {
            let mut tx = conn.client().transaction()?;
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
                    "INSERT INTO stagewise.runs (pipeline, status, items, started_at, updated_at)
                     VALUES ($1, 'taking', 0, $2, $2) RETURNING id",
                    &[&pipeline, &started],
                )?
                .get(0);
            tx.commit()?;
            Ok(run)
        })
        .map_err(db)?;
        Ok((run, PgManifest { conn }))
    }

    fn unfinished(&self, run: i64, after_seq: i64, limit: i64) -> Result<Vec<ItemRow>, StoreError> {
        let rows = self.with_conn(|c| {
            c.query(
                "SELECT seq, key, stage, record, attempts FROM stagewise.items
                 WHERE run_id = $1 AND seq > $2 AND state IN ('pending', 'in_flight')
                 ORDER BY seq LIMIT $3",
                &[&run, &after_seq, &limit],
            )
        })?;
        Ok(rows
            .iter()
            .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4)))
            .collect())
    }

    fn error_of(&self, run: i64, seq: i64) -> Result<Option<String>, StoreError> {
        let row = self.with_conn(|c| {
            c.query_opt(
                "SELECT error FROM stagewise.items WHERE run_id = $1 AND seq = $2",
                &[&run, &seq],
            )
        })?;
        Ok(row.and_then(|r| r.get(0)))
    }

    fn count_keys_not_ended_before(&self, pipeline: &str, run: i64) -> Result<i64, StoreError> {
        let row = self.with_conn(|c| {
            c.query_one(
                "SELECT count(*) FROM stagewise.items i WHERE i.run_id = $2 AND NOT EXISTS (
                     SELECT 1 FROM stagewise.runs r
                     JOIN stagewise.items j ON j.run_id = r.id AND j.key = i.key
                     WHERE r.pipeline = $1 AND r.id < $2 AND j.state IN ('failed', 'skipped')
                       AND j.stage = i.stage)",
                &[&pipeline, &run],
            )
        })?;
        Ok(row.get(0))
    }

    fn raise_attempts(
        &self,
        run: i64,
        raised: &[(String, String, i64, String)],
    ) -> Result<u64, StoreError> {
        self.with_conn(|c| {
            let mut tx = c.transaction()?;
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
            tx.commit()?;
            Ok(n)
        })
    }

    fn died_at(&self, run: i64) -> Result<Vec<(String, String, i64, String)>, StoreError> {
        let rows = self.with_conn(|c| {
            c.query(
                "SELECT key, stage, attempts, error FROM stagewise.deaths WHERE run_id = $1",
                &[&run],
            )
        })?;
        Ok(rows
            .iter()
            .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
            .collect())
    }

    fn taken_items(&self, run: i64) -> Result<Vec<(String, String, i64)>, StoreError> {
        let rows = self.with_conn(|c| {
            c.query(
                "SELECT key, stage, attempts FROM stagewise.items
                 WHERE run_id = $1 AND taken AND state IN ('pending', 'in_flight')
                   AND stage IS NOT NULL",
                &[&run],
            )
        })?;
        Ok(rows
            .iter()
            .map(|r| (r.get(0), r.get(1), r.get(2)))
            .collect())
    }

    fn clear_taken(&self, run: i64) -> Result<(), StoreError> {
        self.with_conn(|c| {
            c.execute(
                "UPDATE stagewise.items SET taken = false WHERE run_id = $1 AND taken",
                &[&run],
            )
            .map(|_| ())
        })
    }

    fn reset_failed_items(&self, run: i64) -> Result<u64, StoreError> {
        self.with_conn(|c| {
            let mut tx = c.transaction()?;
            // The failed items' deaths go with their attempts; unfinished items keep theirs, so
            // that resuming a run this way again and again still ends an item that kills it.
            tx.execute(
                "DELETE FROM stagewise.deaths WHERE run_id = $1
                   AND key IN (SELECT key FROM stagewise.items WHERE run_id = $1 AND state = 'failed')",
                &[&run],
            )?;
            let n = tx.execute(
                "UPDATE stagewise.items SET state = 'pending', attempts = 0, error = NULL, taken = false
                 WHERE run_id = $1 AND state = 'failed'",
                &[&run],
            )?;
            if n > 0 {
                tx.execute(
                    "UPDATE stagewise.runs SET status = 'interrupted', updated_at = $2 WHERE id = $1",
                    &[&run, &now()],
                )?;
            }
            tx.commit()?;
            Ok(n)
        })
    }

    fn updates(&self, run: i64) -> Result<PgUpdates, StoreError> {
        Ok(PgUpdates {
            conn: connect(&self.config, &self.shown)?,
            run,
            shown: self.shown.clone(),
            update: None,
        })
    }

    fn cache(&self) -> Result<SharedCache, StoreError> {
        let conn = connect(&self.config, &self.shown)?;
        Ok(std::sync::Arc::new(PgCache::new(conn)))
    }

    /// One autocommit statement on a session of its own, so that neither the store's reads nor
    /// the update writer wait for it; connecting, its lock waits and the statement itself each
    /// take at most [`PROCESS_LOCK_WAIT`]. A failed session is dropped, and the next save
    /// connects again.
    fn put_process(&self, pipeline: &str, record: &str, updated: &str) -> Result<(), StoreError> {
        let mut slot = unpoisoned(&self.process);
        let conn = match &mut *slot {
            Some(conn) => conn,
            None => {
                let mut config = self.config.clone();
                config.connect_timeout(PROCESS_LOCK_WAIT);
                let mut conn = connect(&config, &self.shown)?;
                let ms = PROCESS_LOCK_WAIT.as_millis();
                off_runtime(|| {
                    conn.client().batch_execute(&format!(
                        "SET statement_timeout = {ms}; SET lock_timeout = {ms}"
                    ))
                })
                .map_err(db)?;
                slot.insert(conn)
            }
        };
        let client = conn.client();
        let saved = off_runtime(|| {
            client.execute(
                "INSERT INTO stagewise.processes (pipeline, record, updated_at) VALUES ($1, $2, $3)
                 ON CONFLICT (pipeline) DO UPDATE SET record = EXCLUDED.record, updated_at = EXCLUDED.updated_at",
                &[&pipeline, &record, &updated],
            )
        });
        if saved.is_err() {
            *slot = None;
        }
        saved.map(drop).map_err(db)
    }

    fn process(&self, pipeline: &str) -> Result<Option<String>, StoreError> {
        let row = self.with_conn(|c| {
            c.query_opt(
                "SELECT record FROM stagewise.processes WHERE pipeline = $1",
                &[&pipeline],
            )
        })?;
        Ok(row.map(|r| r.get(0)))
    }

    /// Asks `pg_locks`: the lock is the session-level advisory lock of [`PgStore::lock`].
    fn runner_lock_held(&self, pipeline: &str) -> Result<bool, StoreError> {
        let key = lock_key(pipeline);
        let sql = format!("SELECT EXISTS (SELECT 1 FROM pg_locks l WHERE {RUNNER_LOCK_GRANTED})");
        self.with_conn(|c| {
            c.query_one(&sql, &[&LOCK_CLASS, &key])
                .map(|r| r.get::<_, bool>(0))
        })
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
