//! The embedded default store: one SQLite file in WAL mode.
//!
//! Schema versions live in `PRAGMA user_version`. Opening a store upgrades an older schema in
//! place, one version at a time, each step in a transaction (version 2 added the response
//! cache); it refuses a newer one, and refuses a file that is not a SQLite database before
//! writing a single byte to it.
//!
//! The store is split by role: this module opens, locks and reads it, [`schema`] creates and
//! migrates it, [`writers`] writes manifests and updates, [`cache`] keeps the response cache
//! and [`status`] reads what a report needs. What the rows mean lives in
//! [`model`](super::model).

mod cache;
mod schema;
mod status;
mod writers;

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use rusqlite::{params, Connection, OptionalExtension};

use crate::stage::SharedCache;

use self::cache::SqliteCache;
use self::writers::{SqliteManifest, SqliteUpdates};
use super::model::{self, now, Manifest, StatusRows};
use super::{
    unpoisoned, CheckpointStore, ManifestWriter, RunInfo, StatusReport, StoreError, StoredItem,
    UpdateWriter,
};

/// How long a statement waits for another connection's write lock.
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

/// A checkpoint store in a SQLite file.
pub struct SqliteStore {
    path: PathBuf,
    conn: Mutex<Connection>,
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore")
            .field("path", &self.path)
            .finish()
    }
}

fn db(e: rusqlite::Error) -> StoreError {
    StoreError::Db(e.to_string())
}

impl SqliteStore {
    /// Open (creating it and its folder if missing) and migrate the store at `path`.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let shown = path.display().to_string();
        check_header(path)?;
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| StoreError::Corrupt {
                path: shown.clone(),
                message: format!("cannot create folder {}: {e}", dir.display()),
            })?;
        }
        let conn = connect(path)?;
        schema::migrate(&conn, &shown)?;
        Ok(SqliteStore {
            path: path.to_path_buf(),
            conn: Mutex::new(conn),
        })
    }

    /// Take the store for this process's run: an exclusive lock on `<store>.lock`, held until
    /// the returned guard drops (or the process dies: the OS releases it, so a `kill -9` leaves
    /// no stale lock).
    pub fn lock(&self) -> Result<RunnerLock, StoreError> {
        use std::io::Write;
        let mut name = self.path.clone().into_os_string();
        name.push(".lock");
        let path = PathBuf::from(name);
        let shown = self.path.display().to_string();
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|e| {
                StoreError::Db(format!("cannot open lock file {}: {e}", path.display()))
            })?;
        match file.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                let mut holder = String::new();
                let _ = file.read_to_string(&mut holder);
                let holder = match holder.trim() {
                    "" => "process unknown".to_owned(),
                    pid => format!("pid {pid}"),
                };
                return Err(StoreError::Busy {
                    path: shown,
                    holder,
                });
            }
            Err(std::fs::TryLockError::Error(e)) => {
                return Err(StoreError::Db(format!(
                    "cannot lock {}: {e}",
                    path.display()
                )));
            }
        }
        let _ = file.set_len(0);
        let _ = write!(file, "{}", std::process::id());
        Ok(RunnerLock { _file: file })
    }

    /// Open an existing store; `None` when there is no file yet.
    pub fn open_existing(path: &Path) -> Result<Option<Self>, StoreError> {
        if !path.exists() {
            return Ok(None);
        }
        Self::open(path).map(Some)
    }

    fn conn(&self) -> std::sync::MutexGuard<'_, Connection> {
        unpoisoned(&self.conn)
    }
}

/// Held while a run uses the store; see [`SqliteStore::lock`].
#[derive(Debug)]
pub struct RunnerLock {
    _file: std::fs::File,
}

/// Refuse a file that is not SQLite before SQLite touches it (it would otherwise be
/// overwritten or half-read).
fn check_header(path: &Path) -> Result<(), StoreError> {
    let mut header = [0u8; 16];
    let Ok(mut file) = std::fs::File::open(path) else {
        return Ok(());
    };
    let n = file.read(&mut header).unwrap_or(0);
    if n == 0 {
        return Ok(());
    }
    if n < 16 || &header != b"SQLite format 3\0" {
        return Err(StoreError::Corrupt {
            path: path.display().to_string(),
            message: "not a SQLite database (corrupt, or another kind of file): move it away or point `[checkpoint] store` elsewhere; it was not modified".into(),
        });
    }
    Ok(())
}

fn connect(path: &Path) -> Result<Connection, StoreError> {
    let shown = path.display().to_string();
    let corrupt = |e: rusqlite::Error| StoreError::Corrupt {
        path: shown.clone(),
        message: e.to_string(),
    };
    let conn = Connection::open(path).map_err(corrupt)?;
    conn.busy_timeout(BUSY_TIMEOUT).map_err(corrupt)?;
    // WAL + NORMAL: a commit survives the process being killed; readers never block the writer.
    conn.pragma_update(None, "journal_mode", "WAL")
        .map_err(corrupt)?;
    conn.pragma_update(None, "synchronous", "NORMAL")
        .map_err(corrupt)?;
    Ok(conn)
}

impl CheckpointStore for SqliteStore {
    fn response_cache(&self) -> Result<SharedCache, StoreError> {
        Ok(std::sync::Arc::new(SqliteCache::new(connect(&self.path)?)))
    }

    fn latest_run(&self, pipeline: &str) -> Result<Option<RunInfo>, StoreError> {
        let row = self
            .conn()
            .query_row(
                "SELECT id, status, items, started_at FROM runs WHERE pipeline = ?1 AND status != 'taking' ORDER BY id DESC LIMIT 1",
                [pipeline],
                |r| {
                    Ok((
                        r.get::<_, i64>(0)?,
                        r.get::<_, String>(1)?,
                        r.get::<_, i64>(2)?,
                        r.get::<_, String>(3)?,
                    ))
                },
            )
            .optional()
            .map_err(db)?;
        let shown = self.path.display().to_string();
        row.map(|(id, status, items, started)| model::run_info(&shown, id, &status, items, started))
            .transpose()
    }

    fn begin_run(
        &self,
        pipeline: &str,
        first_stage: &str,
    ) -> Result<Box<dyn ManifestWriter>, StoreError> {
        let conn = connect(&self.path)?;
        // A read that failed, timed out or died left its rows under a run still `taking`.
        conn.execute_batch("BEGIN IMMEDIATE").map_err(db)?;
        conn.execute(
            "DELETE FROM items WHERE run_id IN (SELECT id FROM runs WHERE pipeline = ?1 AND status = 'taking')",
            [pipeline],
        )
        .map_err(db)?;
        conn.execute(
            "DELETE FROM runs WHERE pipeline = ?1 AND status = 'taking'",
            [pipeline],
        )
        .map_err(db)?;
        let started = now();
        conn.execute(
            "INSERT INTO runs (pipeline, status, items, started_at, updated_at) VALUES (?1, 'taking', 0, ?2, ?2)",
            params![pipeline, started],
        )
        .map_err(db)?;
        let run = conn.last_insert_rowid();
        conn.execute_batch("COMMIT").map_err(db)?;
        Ok(Box::new(Manifest::new(
            SqliteManifest { conn },
            run,
            started,
            first_stage,
        )))
    }

    fn pending(
        &self,
        run: i64,
        after_seq: i64,
        limit: usize,
    ) -> Result<Vec<StoredItem>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn
            .prepare_cached(
                "SELECT seq, key, stage, record FROM items
                 WHERE run_id = ?1 AND seq > ?2 AND state IN ('pending', 'in_flight')
                 ORDER BY seq LIMIT ?3",
            )
            .map_err(db)?;
        let rows = stmt
            .query_map(
                params![run, after_seq, i64::try_from(limit).unwrap_or(i64::MAX)],
                |r| {
                    Ok(model::stored_item(
                        r.get(0)?,
                        r.get(1)?,
                        r.get(2)?,
                        r.get(3)?,
                    ))
                },
            )
            .map_err(db)?;
        rows.collect::<Result<_, _>>().map_err(db)
    }

    fn counts(&self, run: i64) -> Result<BTreeMap<&'static str, u64>, StoreError> {
        Ok(model::counts(self.state_counts(run)?))
    }

    fn status(&self, run: &RunInfo) -> Result<StatusReport, StoreError> {
        model::status(self, run)
    }

    fn reset_failed(&self, run: i64) -> Result<u64, StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction().map_err(db)?;
        let n = tx
            .execute(
                "UPDATE items SET state = 'pending', attempts = 0, error = NULL WHERE run_id = ?1 AND state = 'failed'",
                [run],
            )
            .map_err(db)?;
        if n > 0 {
            tx.execute(
                "UPDATE runs SET status = 'interrupted', updated_at = ?2 WHERE id = ?1",
                params![run, now()],
            )
            .map_err(db)?;
        }
        tx.commit().map_err(db)?;
        Ok(n as u64)
    }

    fn update_writer(&self, run: i64) -> Result<Box<dyn UpdateWriter>, StoreError> {
        Ok(Box::new(SqliteUpdates {
            conn: connect(&self.path)?,
            run,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checkpoint::{Change, RunStatus, Update};

    /// A store path in a fresh folder of its own, deleted with the returned guard.
    fn temp_path(name: &str) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::Builder::new()
            .prefix(&format!("stagewise-sqlite-{name}-"))
            .tempdir()
            .expect("temp dir");
        let path = dir.path().join("state.db");
        (dir, path)
    }

    #[test]
    fn manifest_is_invisible_until_committed() {
        let (_dir, path) = temp_path("manifest");
        let store = SqliteStore::open(&path).expect("open");
        {
            let mut m = store.begin_run("p", "one").expect("begin");
            for i in 0..2500 {
                m.add(&i.to_string(), "{}").expect("add");
            }
            // dropped without commit, with two chunks written
        }
        assert!(store.latest_run("p").expect("latest").is_none());
        let mut m = store.begin_run("p", "one").expect("begin");
        m.add("a", "{}").expect("add");
        m.add("a", "{}").expect("add");
        m.add("b", r#"{"n":1}"#).expect("add");
        let (run, duplicates) = m.commit().expect("commit");
        assert_eq!(run.items, 2);
        assert_eq!(
            (duplicates.count, duplicates.first),
            (1, vec!["a".to_owned()])
        );
        let pending = store.pending(run.id, 0, 10).expect("pending");
        assert_eq!(
            pending.iter().map(|i| i.key.as_str()).collect::<Vec<_>>(),
            ["a", "b"]
        );
    }

    #[test]
    fn a_stuck_read_does_not_lock_out_the_next_attempt() {
        let (_dir, path) = temp_path("stuck");
        let store = SqliteStore::open(&path).expect("open");
        // The first attempt's source is stuck mid-chunk (rows buffered, none written) and its
        // manifest is never dropped while the second attempt takes the batch.
        let mut stuck = store.begin_run("p", "one").expect("begin");
        for i in 0..1500 {
            stuck.add(&format!("old-{i}"), "{}").expect("add");
        }
        let started = std::time::Instant::now();
        let mut m = store
            .begin_run("p", "one")
            .expect("a second attempt can begin");
        m.add("x", "{}").expect("add");
        let (run, _) = m.commit().expect("and commit");
        assert!(
            started.elapsed() < BUSY_TIMEOUT / 2,
            "it did not wait for a lock"
        );
        assert_eq!(run.items, 1, "the stuck attempt's rows are not part of it");
        drop(stuck);
        assert_eq!(
            store.latest_run("p").expect("latest").map(|r| r.id),
            Some(run.id)
        );
        assert_eq!(store.pending(run.id, 0, 10).expect("pending").len(), 1);
    }

    #[test]
    fn updates_move_items_through_states() {
        let (_dir, path) = temp_path("updates");
        let store = SqliteStore::open(&path).expect("open");
        let mut m = store.begin_run("p", "one").expect("begin");
        for k in ["a", "b", "c", "d"] {
            m.add(k, "{}").expect("add");
        }
        let (run, _) = m.commit().expect("commit");
        let mut w = store.update_writer(run.id).expect("writer");
        let s = |x: &str| x.to_owned();
        w.apply(
            &[
                Update {
                    seq: 1,
                    change: Change::Advanced {
                        stage: s("two"),
                        record: std::sync::Arc::new(crate::stage::Record::with_fields(
                            "a",
                            serde_json::json!({"x": 1})
                                .as_object()
                                .cloned()
                                .unwrap_or_default(),
                        )),
                    },
                },
                Update {
                    seq: 1,
                    change: Change::Interrupted { stage: s("two") },
                },
                Update {
                    seq: 2,
                    change: Change::Done,
                },
                Update {
                    seq: 3,
                    change: Change::Failed {
                        stage: s("one"),
                        error: s("boom"),
                        attempts: 3,
                    },
                },
                Update {
                    seq: 4,
                    change: Change::Skipped {
                        stage: s("one"),
                        reason: s("empty"),
                    },
                },
            ],
            Some(RunStatus::Interrupted),
        )
        .expect("apply");
        let pending = store.pending(run.id, 0, 10).expect("pending");
        assert_eq!(pending.len(), 1);
        assert_eq!(pending[0].stage.as_deref(), Some("two"));
        assert_eq!(
            pending[0].record, r#"{"x":1}"#,
            "the record survives a later update without one"
        );
        let report = store
            .status(&store.latest_run("p").expect("run").expect("some"))
            .expect("status");
        assert_eq!(report.run.status, RunStatus::Interrupted);
        assert_eq!(report.counts["done"], 1);
        assert_eq!(report.failed.len(), 1);
        assert_eq!(
            (report.failed[0].error.as_str(), report.failed[0].attempts),
            ("boom", 3)
        );
        assert_eq!(report.skipped[0].reason, "empty");
        assert_eq!(store.reset_failed(run.id).expect("reset"), 1);
        assert_eq!(store.pending(run.id, 0, 10).expect("pending").len(), 2);
    }

    #[test]
    fn refuses_garbage_without_touching_it() {
        let (_dir, path) = temp_path("garbage");
        let garbage = b"this is not a database at all, not even close".repeat(20);
        std::fs::write(&path, &garbage).expect("write");
        let err = SqliteStore::open(&path).expect_err("garbage");
        assert!(err.to_string().contains("not a SQLite database"), "{err}");
        assert_eq!(std::fs::read(&path).expect("read"), garbage);
    }

    #[test]
    fn one_runner_at_a_time() {
        let (_dir, path) = temp_path("lock");
        let store = SqliteStore::open(&path).expect("open");
        let held = store.lock().expect("first lock");
        let err = store.lock().expect_err("second lock");
        assert!(
            matches!(&err, StoreError::Busy { holder, .. } if holder.contains(&std::process::id().to_string())),
            "{err}"
        );
        drop(held);
        store.lock().expect("free again");
    }

    #[test]
    fn refuses_a_newer_schema() {
        let (_dir, path) = temp_path("newer");
        drop(SqliteStore::open(&path).expect("open"));
        let conn = Connection::open(&path).expect("conn");
        conn.pragma_update(None, "user_version", 99).expect("set");
        drop(conn);
        let err = SqliteStore::open(&path).expect_err("newer");
        assert!(matches!(err, StoreError::TooNew { found: 99, .. }), "{err}");
    }

    #[test]
    fn refuses_a_foreign_database() {
        let (_dir, path) = temp_path("foreign");
        let conn = Connection::open(&path).expect("conn");
        conn.execute_batch("CREATE TABLE customers (id INTEGER)")
            .expect("create");
        drop(conn);
        let err = SqliteStore::open(&path).expect_err("foreign");
        assert!(
            err.to_string().contains("not a stagewise checkpoint store"),
            "{err}"
        );
    }
}
