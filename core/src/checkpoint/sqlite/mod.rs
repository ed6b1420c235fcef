//! The embedded default store: one SQLite file in WAL mode.
//!
//! Schema versions live in `PRAGMA user_version`. Opening a store upgrades an older schema in
//! place, one version at a time, each step in a transaction (version 2 added the response
//! cache, version 3 the process records, version 4 the attempts processes died in); it refuses a newer one, and refuses a file that is not
//! a SQLite database before writing a single byte to it.
//!
//! The store is split by role: this module opens and locks it and runs the model's run and item
//! queries, [`schema`] creates and migrates it, [`writers`] writes manifests and updates,
//! [`cache`] keeps the response cache and [`status`] reads what a report needs. What the rows
//! mean lives in [`model`](super::model).

mod cache;
mod schema;
mod status;
mod writers;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use rusqlite::{params, Connection, OpenFlags, OptionalExtension};

use crate::stage::SharedCache;
use crate::state_file;

use self::cache::SqliteCache;
use self::writers::{SqliteManifest, SqliteUpdates};
use super::model::{now, ItemRow, RunRow, Tables, PROCESS_LOCK_WAIT};
use super::{unpoisoned, StoreError};

/// How long a statement waits for another connection's write lock.
pub(super) const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

/// A checkpoint store in a SQLite file.
pub struct SqliteStore {
    /// The store's file.
    path: PathBuf,
    /// The connection of the store's reads; writers and the cache open their own.
    conn: Mutex<Connection>,
    /// The connection that saves process records, opened at the first.
    process: Mutex<Option<Connection>>,
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore")
            .field("path", &self.path)
            .finish()
    }
}

/// A database error as a store error.
fn db(e: rusqlite::Error) -> StoreError {
    StoreError::Db(e.to_string())
}

/// `e`, said to be the disk's when the file system holding the store at `path` is full or
/// read-only: SQLite's own words for that ("disk I/O error", "unable to open database file")
/// do not say so, nor name the store.
pub(super) fn on_disk(path: &Path, e: StoreError) -> StoreError {
    let cause = match &e {
        StoreError::Db(message) | StoreError::Corrupt { message, .. } => message.clone(),
        _ => return e,
    };
    match disk_problem(path) {
        Some(problem) => StoreError::Disk {
            path: path.display().to_string(),
            problem,
            cause,
        },
        None => e,
    }
}

/// What is wrong with the file system holding `path` (its nearest folder that is there), if
/// it is full or read-only: found by writing a small file there and removing it. (`statvfs`
/// does not always tell: ext4 turned read-only by an error still says it is writable.)
fn disk_problem(path: &Path) -> Option<&'static str> {
    use std::io::{ErrorKind, Write};
    let said = |e: &std::io::Error| match e.kind() {
        ErrorKind::ReadOnlyFilesystem => Some("is read-only"),
        ErrorKind::StorageFull | ErrorKind::QuotaExceeded => Some("is full (no space left)"),
        _ => None,
    };
    let mut folder = path.parent();
    while let Some(dir) = folder {
        let dir = if dir.as_os_str().is_empty() {
            Path::new(".")
        } else {
            dir
        };
        if dir.is_dir() {
            let probe = dir.join(format!(".stagewise-disk-check.{}", std::process::id()));
            return match std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&probe)
            {
                Err(e) => said(&e),
                Ok(mut file) => {
                    let wrote = file.write_all(&[0; 4096]).and_then(|()| file.sync_all());
                    drop(file);
                    let _ = std::fs::remove_file(&probe);
                    wrote.err().as_ref().and_then(said)
                }
            };
        }
        folder = dir.parent();
    }
    None
}

impl SqliteStore {
    /// The process record's connection (see [`Tables::put_process`]), connected if it is not:
    /// waiting for the write lock at most [`PROCESS_LOCK_WAIT`].
    fn process_connection(
        &self,
    ) -> Result<std::sync::MutexGuard<'_, Option<Connection>>, StoreError> {
        let mut slot = unpoisoned(&self.process);
        if slot.is_none() {
            *slot = Some(connect_waiting(&self.path, PROCESS_LOCK_WAIT)?);
        }
        Ok(slot)
    }

    /// Open (creating it and its folder if missing) and migrate the store at `path`.
    ///
    /// The store's files (the database, SQLite's `-wal` and `-shm` beside it, the lock) are made
    /// mode `0600` and a folder made for them `0700`; a symbolic link at any of their paths is
    /// refused (see `state_file`).
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        Self::open_unexplained(path).map_err(|e| on_disk(path, e))
    }

    fn open_unexplained(path: &Path) -> Result<Self, StoreError> {
        let shown = path.display().to_string();
        let unusable = |e: std::io::Error| StoreError::Db(e.to_string());
        for file in [
            path.to_path_buf(),
            beside(path, "-wal"),
            beside(path, "-shm"),
            beside(path, ".lock"),
        ] {
            state_file::refuse_link(&file).map_err(unusable)?;
        }
        check_header(path)?;
        if let Some(dir) = path.parent() {
            state_file::create_dir(dir).map_err(|e| StoreError::Corrupt {
                path: shown.clone(),
                message: format!("cannot create folder {}: {e}", dir.display()),
            })?;
        }
        // Made here, mode 0600, rather than by SQLite (0644): SQLite gives its `-wal` and `-shm`
        // files the database file's mode.
        match state_file::open(path, state_file::options().write(true).create_new(true)) {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(unusable(e)),
        }
        let conn = connect(path)?;
        schema::migrate(&conn, &shown)?;
        Ok(SqliteStore {
            path: path.to_path_buf(),
            conn: Mutex::new(conn),
            process: Mutex::new(None),
        })
    }

    /// Take the store for this process's run: an exclusive lock on `<store>.lock`, held until
    /// the returned guard drops (or the process dies: the OS releases it, so a `kill -9` leaves
    /// no stale lock).
    pub fn lock(&self) -> Result<RunnerLock, StoreError> {
        self.lock_unexplained().map_err(|e| on_disk(&self.path, e))
    }

    fn lock_unexplained(&self) -> Result<RunnerLock, StoreError> {
        use std::io::Write;
        let path = self.lock_path();
        let shown = self.path.display().to_string();
        let mut file = state_file::open(
            &path,
            state_file::options()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false),
        )
        .map_err(|e| match e.kind() {
            // Names the path already.
            std::io::ErrorKind::InvalidInput => StoreError::Db(e.to_string()),
            _ => StoreError::Db(format!("cannot open lock file {}: {e}", path.display())),
        })?;
        match file.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                // A pid; more is not what this process wrote.
                let mut holder = String::new();
                let _ = (&mut file).take(32).read_to_string(&mut holder);
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

    /// The runner lock's file, `<store>.lock`.
    fn lock_path(&self) -> PathBuf {
        beside(&self.path, ".lock")
    }

    /// Open an existing store; `None` when there is no file yet.
    pub fn open_existing(path: &Path) -> Result<Option<Self>, StoreError> {
        // A link, even a dangling one, is there: [`SqliteStore::open`] refuses it.
        if std::fs::symlink_metadata(path).is_err() {
            return Ok(None);
        }
        Self::open(path).map(Some)
    }

    /// The store's own connection.
    fn conn(&self) -> std::sync::MutexGuard<'_, Connection> {
        unpoisoned(&self.conn)
    }

    /// [`Tables::new_run`], its errors as the database said them.
    fn new_run_unexplained(
        &self,
        pipeline: &str,
        started: &str,
    ) -> Result<(i64, SqliteManifest), StoreError> {
        let conn = connect(&self.path)?;
        conn.execute_batch("BEGIN IMMEDIATE").map_err(db)?;
        conn.execute(
            "DELETE FROM items WHERE run_id IN (SELECT id FROM runs WHERE pipeline = ?1 AND status = 'taking')",
            [pipeline],
        )
        .map_err(db)?;
        conn.execute(
            "DELETE FROM runs WHERE pipeline = ?1 AND (status = 'taking' OR items = 0)",
            [pipeline],
        )
        .map_err(db)?;
        conn.execute(
            "INSERT INTO runs (pipeline, status, items, started_at, updated_at) VALUES (?1, 'taking', 0, ?2, ?2)",
            params![pipeline, started],
        )
        .map_err(db)?;
        let run = conn.last_insert_rowid();
        conn.execute_batch("COMMIT").map_err(db)?;
        Ok((
            run,
            SqliteManifest {
                conn,
                path: self.path.clone(),
            },
        ))
    }
}

/// Held while a run uses the store; see [`SqliteStore::lock`].
#[derive(Debug)]
pub struct RunnerLock {
    _file: std::fs::File,
}

/// `<store><suffix>`: the lock, and SQLite's `-wal` and `-shm`.
fn beside(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(suffix);
    PathBuf::from(name)
}

/// Refuse a file that is not SQLite before SQLite touches it (it would otherwise be
/// overwritten or half-read).
fn check_header(path: &Path) -> Result<(), StoreError> {
    let mut header = [0u8; 16];
    let mut file = match state_file::open(path, state_file::options().read(true)) {
        Ok(file) => file,
        // A FIFO, a device, a folder: refused by `state_file`, without waiting on it.
        Err(e) if e.kind() == std::io::ErrorKind::InvalidInput => {
            return Err(StoreError::Corrupt {
                path: path.display().to_string(),
                message: "not a regular file: move it away or point `[checkpoint] store` elsewhere; it was not modified".into(),
            });
        }
        // Missing, or unreadable: SQLite says what is wrong when it opens it.
        Err(_) => return Ok(()),
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

/// A connection to the store file, in WAL mode, waiting up to [`BUSY_TIMEOUT`] for a lock.
fn connect(path: &Path) -> Result<Connection, StoreError> {
    connect_waiting(path, BUSY_TIMEOUT)
}

/// A connection to the store file, in WAL mode, waiting up to `busy` for a lock.
fn connect_waiting(path: &Path, busy: Duration) -> Result<Connection, StoreError> {
    let shown = path.display().to_string();
    let corrupt = |e: rusqlite::Error| StoreError::Corrupt {
        path: shown.clone(),
        message: e.to_string(),
    };
    // Never through a link at the file itself (the checks before opening may have raced with
    // one being made). SQLite's no-follow flag refuses a link anywhere in the path, and a state
    // folder that is a link to a volume is fine: the folder is resolved first.
    let real = match (path.parent(), path.file_name()) {
        (Some(folder), Some(name)) if !folder.as_os_str().is_empty() => folder
            .canonicalize()
            .map(|folder| folder.join(name))
            .unwrap_or_else(|_| path.to_owned()),
        _ => path.to_owned(),
    };
    let conn = Connection::open_with_flags(
        &real,
        OpenFlags::default() | OpenFlags::SQLITE_OPEN_NOFOLLOW,
    )
    .map_err(corrupt)?;
    conn.busy_timeout(busy).map_err(corrupt)?;
    // WAL + NORMAL: a commit survives the process being killed; readers never block the writer.
    conn.pragma_update(None, "journal_mode", "WAL")
        .map_err(corrupt)?;
    conn.pragma_update(None, "synchronous", "NORMAL")
        .map_err(corrupt)?;
    Ok(conn)
}

impl Tables for SqliteStore {
    type Manifest = SqliteManifest;
    type Updates = SqliteUpdates;

    fn shown(&self) -> String {
        self.path.display().to_string()
    }

    fn newest_run(
        &self,
        pipeline: &str,
        at_most: Option<i64>,
    ) -> Result<Option<RunRow>, StoreError> {
        self.conn()
            .query_row(
                "SELECT id, status, items, started_at FROM runs WHERE pipeline = ?1 AND status != 'taking' AND items > 0 AND (?2 IS NULL OR id <= ?2) ORDER BY id DESC LIMIT 1",
                rusqlite::params![pipeline, at_most],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
            )
            .optional()
            .map_err(db)
    }

    fn newest_empty_take(&self, pipeline: &str) -> Result<Option<String>, StoreError> {
        self.conn()
            .query_row(
                "SELECT started_at FROM runs WHERE pipeline = ?1 AND status != 'taking' AND items = 0 ORDER BY id DESC LIMIT 1",
                [pipeline],
                |r| r.get(0),
            )
            .optional()
            .map_err(db)
    }

    /// One runner per store (its lock): nothing can have moved since it looked.
    fn new_run(
        &self,
        pipeline: &str,
        started: &str,
        _seen: Option<i64>,
    ) -> Result<(i64, SqliteManifest), StoreError> {
        self.new_run_unexplained(pipeline, started)
            .map_err(|e| on_disk(&self.path, e))
    }

    fn updates(&self, run: i64) -> Result<SqliteUpdates, StoreError> {
        Ok(SqliteUpdates {
            conn: connect(&self.path).map_err(|e| on_disk(&self.path, e))?,
            run,
            path: self.path.clone(),
        })
    }

    fn unfinished(&self, run: i64, after_seq: i64, limit: i64) -> Result<Vec<ItemRow>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn
            .prepare_cached(
                "SELECT seq, key, stage, record, attempts, since FROM items
                 WHERE run_id = ?1 AND seq > ?2 AND state IN ('pending', 'in_flight')
                 ORDER BY seq LIMIT ?3",
            )
            .map_err(db)?;
        let rows = stmt
            .query_map(params![run, after_seq, limit], |r| {
                Ok((
                    r.get(0)?,
                    r.get(1)?,
                    r.get(2)?,
                    r.get(3)?,
                    r.get(4)?,
                    r.get(5)?,
                ))
            })
            .map_err(db)?;
        rows.collect::<Result<_, _>>().map_err(db)
    }

    fn error_of(&self, run: i64, seq: i64) -> Result<Option<String>, StoreError> {
        self.conn()
            .query_row(
                "SELECT error FROM items WHERE run_id = ?1 AND seq = ?2",
                params![run, seq],
                |r| r.get(0),
            )
            .optional()
            .map(Option::flatten)
            .map_err(db)
    }

    fn count_keys_not_ended_before(&self, pipeline: &str, run: i64) -> Result<i64, StoreError> {
        self.conn()
            .query_row(
                "SELECT count(*) FROM items i WHERE i.run_id = ?2 AND NOT EXISTS (
                     SELECT 1 FROM runs r JOIN items j ON j.run_id = r.id AND j.key = i.key
                     WHERE r.pipeline = ?1 AND r.id < ?2 AND j.state IN ('failed', 'skipped')
                       AND j.stage = i.stage)",
                params![pipeline, run],
                |r| r.get(0),
            )
            .map_err(db)
    }

    fn raise_attempts(
        &self,
        run: i64,
        raised: &[(String, String, i64, String)],
    ) -> Result<u64, StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction().map_err(db)?;
        let mut n = 0;
        {
            let mut row = tx
                .prepare_cached(
                    "UPDATE items SET attempts = ?4, error = ?5
                     WHERE run_id = ?1 AND key = ?2 AND stage = ?3 AND attempts < ?4
                       AND state IN ('pending', 'in_flight')",
                )
                .map_err(db)?;
            let mut death = tx
                .prepare_cached(
                    "INSERT INTO deaths (run_id, key, stage, attempts, error)
                     VALUES (?1, ?2, ?3, ?4, ?5)
                     ON CONFLICT (run_id, key, stage) DO UPDATE
                     SET attempts = excluded.attempts, error = excluded.error
                     WHERE excluded.attempts > deaths.attempts",
                )
                .map_err(db)?;
            for (key, stage, attempts, error) in raised {
                row.execute(params![run, key, stage, attempts, error])
                    .map_err(db)?;
                n += death
                    .execute(params![run, key, stage, attempts, error])
                    .map_err(db)?;
            }
        }
        tx.commit().map_err(db)?;
        Ok(n as u64)
    }

    fn died_at(&self, run: i64) -> Result<Vec<(String, String, i64, String)>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn
            .prepare_cached("SELECT key, stage, attempts, error FROM deaths WHERE run_id = ?1")
            .map_err(db)?;
        let rows = stmt
            .query_map([run], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
            .map_err(db)?;
        rows.collect::<Result<_, _>>().map_err(db)
    }

    fn reset_failed_items(&self, run: i64) -> Result<u64, StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction().map_err(db)?;
        // The failed items' deaths go with their attempts; unfinished items keep theirs, so
        // that resuming a run this way again and again still ends an item that kills it.
        tx.execute(
            "DELETE FROM deaths WHERE run_id = ?1
               AND key IN (SELECT key FROM items WHERE run_id = ?1 AND state = 'failed')",
            [run],
        )
        .map_err(db)?;
        let n = tx
            .execute(
                "UPDATE items SET state = 'pending', attempts = 0, error = NULL, taken = 0, since = NULL WHERE run_id = ?1 AND state = 'failed'",
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

    fn cache(&self) -> Result<SharedCache, StoreError> {
        Ok(std::sync::Arc::new(SqliteCache::new(connect(&self.path)?)))
    }

    /// One autocommit statement on a connection of its own, so that neither the store's reads
    /// nor the update writer wait for it, and it waits for the write lock at most
    /// [`PROCESS_LOCK_WAIT`].
    fn put_process(&self, pipeline: &str, record: &str, updated: &str) -> Result<(), StoreError> {
        let mut slot = self.process_connection()?;
        let conn = slot.as_mut().expect("just connected");
        conn.execute(
            "INSERT INTO processes (pipeline, record, updated_at) VALUES (?1, ?2, ?3)
             ON CONFLICT (pipeline) DO UPDATE SET record = excluded.record, updated_at = excluded.updated_at",
            params![pipeline, record, updated],
        )
        .map(drop)
        .map_err(db)
    }

    /// On the process record's connection (see [`Tables::put_process`]).
    fn put_end(
        &self,
        pipeline: &str,
        end: Option<&crate::checkpoint::ProcessEnd>,
        at: &str,
    ) -> Result<(), StoreError> {
        let mut slot = self.process_connection()?;
        let conn = slot.as_mut().expect("just connected");
        match end {
            Some(e) => conn.execute(
                "INSERT INTO history (pipeline, run_id, pid, host, started_at, ended_at, outcome, exit_code, reason, items, done, failed, skipped)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)",
                params![pipeline, e.id, e.pid, e.host, e.started, at, e.outcome, e.exit_code, e.reason, e.items, e.done, e.failed, e.skipped],
            ),
            None => conn.execute(
                "INSERT INTO checks (pipeline, count, last_at) VALUES (?1, 1, ?2)
                 ON CONFLICT (pipeline) DO UPDATE SET count = count + 1, last_at = excluded.last_at",
                params![pipeline, at],
            ),
        }
        .map(drop)
        .map_err(db)
    }

    fn ends(
        &self,
        pipeline: &str,
        limit: i64,
    ) -> Result<Vec<crate::checkpoint::ProcessEnd>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn
            .prepare(
                "SELECT run_id, started_at, ended_at, outcome, exit_code, items, done, failed, skipped, reason, pid, host
                 FROM history WHERE pipeline = ?1 ORDER BY id DESC LIMIT ?2",
            )
            .map_err(db)?;
        let rows = stmt
            .query_map(params![pipeline, limit], |r| {
                Ok(crate::checkpoint::ProcessEnd {
                    id: r.get(0)?,
                    started: r.get(1)?,
                    ended: r.get(2)?,
                    outcome: r.get(3)?,
                    exit_code: r.get(4)?,
                    items: r.get(5)?,
                    done: r.get(6)?,
                    failed: r.get(7)?,
                    skipped: r.get(8)?,
                    reason: r.get(9)?,
                    pid: r.get(10)?,
                    host: r.get(11)?,
                })
            })
            .map_err(db)?;
        rows.collect::<Result<_, _>>().map_err(db)
    }

    fn checks(&self, pipeline: &str) -> Result<Option<(i64, String)>, StoreError> {
        self.conn()
            .query_row(
                "SELECT count, last_at FROM checks WHERE pipeline = ?1",
                [pipeline],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()
            .map_err(db)
    }

    fn process(&self, pipeline: &str) -> Result<Option<String>, StoreError> {
        self.conn()
            .query_row(
                "SELECT record FROM processes WHERE pipeline = ?1",
                [pipeline],
                |r| r.get(0),
            )
            .optional()
            .map_err(db)
    }

    /// The store's runner lock, whatever the pipeline: one runner per store file. Tried shared
    /// and let go at once, so that two readers asking at once do not see each other as a
    /// runner; a runner starting in that very moment would be refused as busy. No lock file:
    /// no runner has opened the store yet.
    fn runner_lock_held(&self, _pipeline: &str) -> Result<bool, StoreError> {
        let path = self.lock_path();
        let file = match state_file::open(&path, state_file::options().read(true)) {
            Ok(file) => file,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
            Err(e) => {
                return Err(StoreError::Db(format!(
                    "cannot open lock file {}: {e}",
                    path.display()
                )))
            }
        };
        match file.try_lock_shared() {
            // Dropping the file lets go of the lock.
            Ok(()) => Ok(false),
            Err(std::fs::TryLockError::WouldBlock) => Ok(true),
            Err(std::fs::TryLockError::Error(e)) => Err(StoreError::Db(format!(
                "cannot lock {}: {e}",
                path.display()
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    //! What only a store file can get wrong; the scenarios every store shares are in
    //! `checkpoint::tests`.

    use super::*;

    #[test]
    fn refuses_garbage_without_touching_it() {
        let dir = tempfile::Builder::new()
            .prefix("stagewise-sqlite-garbage-")
            .tempdir()
            .expect("temp dir");
        let path = dir.path().join("state.db");
        let garbage = b"this is not a database at all, not even close".repeat(20);
        std::fs::write(&path, &garbage).expect("write");
        let err = SqliteStore::open(&path).expect_err("garbage");
        assert!(err.to_string().contains("not a SQLite database"), "{err}");
        assert_eq!(std::fs::read(&path).expect("read"), garbage);
    }

    #[cfg(unix)]
    #[test]
    fn its_files_are_private_and_never_links() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::Builder::new()
            .prefix("stagewise-sqlite-files-")
            .tempdir()
            .expect("temp dir");
        let mode = |path: &Path| {
            std::fs::symlink_metadata(path)
                .expect("stat")
                .permissions()
                .mode()
                & 0o777
        };
        let path = dir.path().join("state/x.db");
        let store = SqliteStore::open(&path).expect("open");
        let _lock = store.lock().expect("lock");
        assert_eq!(mode(&dir.path().join("state")), 0o700);
        for file in ["x.db", "x.db-wal", "x.db-shm", "x.db.lock"] {
            assert_eq!(mode(&dir.path().join("state").join(file)), 0o600, "{file}");
        }

        // A link at the database's path or at any file beside it is refused; what it points
        // to is left as it was.
        let victim = dir.path().join("victim");
        for file in ["y.db", "y.db-wal", "y.db-shm", "y.db.lock"] {
            std::fs::write(&victim, b"someone else's").expect("write");
            let link = dir.path().join(file);
            std::os::unix::fs::symlink(&victim, &link).expect("symlink");
            let err = SqliteStore::open(&dir.path().join("y.db")).expect_err(file);
            assert_eq!(
                err.to_string(),
                format!(
                    "checkpoint store: {} is a symbolic link: stagewise keeps its state in files of its own and never writes through a link; remove the link (what it points to was not touched)",
                    link.display()
                )
            );
            assert_eq!(std::fs::read(&victim).expect("read"), b"someone else's");
            std::fs::remove_file(&link).expect("remove the link");
        }
        // Nor is anything but a file, which a FIFO would have it wait on forever.
        let made = std::process::Command::new("mkfifo")
            .arg(dir.path().join("fifo.db"))
            .status()
            .expect("mkfifo");
        assert!(made.success());
        let err = SqliteStore::open(&dir.path().join("fifo.db")).expect_err("a FIFO");
        assert!(err.to_string().contains("not a regular file"), "{err}");

        // Made after the store was opened, the lock's link is refused when it is taken.
        let store = SqliteStore::open(&dir.path().join("y.db")).expect("open");
        std::os::unix::fs::symlink(&victim, dir.path().join("y.db.lock")).expect("symlink");
        let err = store.lock().expect_err("a linked lock");
        assert!(
            err.to_string().contains("y.db.lock is a symbolic link"),
            "{err}"
        );
        assert_eq!(std::fs::read(&victim).expect("read"), b"someone else's");
    }
}
