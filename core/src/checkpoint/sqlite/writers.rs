//! The SQLite store's writers: a new run's manifest, chunk by chunk, and batches of item
//! updates, each batch in one transaction.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use rusqlite::{params, Connection, ErrorCode, Transaction, TransactionBehavior};

use super::super::deadline::{Deadline, Interrupt};
use super::super::model::{now, Chunk, ManifestRows, RowUpdate, UpdateRows};
use super::super::{RunStatus, StoreError};
use super::{db, on_disk, BUSY_TIMEOUT};

/// The longest single wait for the write lock: between two, the update writer reads its
/// deadline again, so that a deadline set while it waits cuts the wait short.
const LOCK_WAIT_STEP: Duration = Duration::from_millis(100);

/// Writes a new run's manifest.
pub(in crate::checkpoint) struct SqliteManifest {
    /// A connection of its own.
    pub(super) conn: Connection,
    /// The store's file.
    pub(super) path: PathBuf,
}

impl SqliteManifest {
    /// [`ManifestRows::insert`], its errors as the database said them.
    fn insert_unexplained(&mut self, chunk: Chunk<'_>) -> Result<Vec<usize>, StoreError> {
        let tx = self
            .conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(db)?;
        let mut existing = Vec::new();
        {
            let mut stmt = tx
                .prepare_cached(
                    "INSERT OR IGNORE INTO items (run_id, seq, key, state, stage, record) VALUES (?1, ?2, ?3, 'pending', ?4, ?5)",
                )
                .map_err(db)?;
            let mut seq = chunk.after_seq;
            for (i, (key, record)) in chunk.rows.iter().enumerate() {
                let n = stmt
                    .execute(params![chunk.run, seq + 1, key, chunk.first_stage, record])
                    .map_err(db)?;
                if n == 1 {
                    seq += 1;
                } else {
                    existing.push(i);
                }
            }
        }
        tx.commit().map_err(db)?;
        Ok(existing)
    }
}

impl ManifestRows for SqliteManifest {
    /// Row by row in one short transaction: `INSERT OR IGNORE` leaves a key already in the
    /// manifest as it is, and only an inserted row takes the next seq.
    fn insert(&mut self, chunk: Chunk<'_>) -> Result<Vec<usize>, StoreError> {
        self.insert_unexplained(chunk)
            .map_err(|e| on_disk(&self.path, e))
    }

    fn publish(&mut self, run: i64, items: i64) -> Result<(), StoreError> {
        self.conn
            .execute(
                "UPDATE runs SET status = 'running', items = ?2 WHERE id = ?1",
                params![run, items],
            )
            .map(drop)
            .map_err(|e| on_disk(&self.path, db(e)))
    }

    fn discard(&mut self, run: i64) {
        let _ = self
            .conn
            .execute("DELETE FROM items WHERE run_id = ?1", [run]);
        let _ = self.conn.execute("DELETE FROM runs WHERE id = ?1", [run]);
    }
}

/// Writes batches of one run's item updates.
pub(in crate::checkpoint) struct SqliteUpdates {
    /// A connection of its own.
    pub(super) conn: Connection,
    /// The run whose items it updates.
    pub(super) run: i64,
    /// The store's file.
    pub(super) path: PathBuf,
}

impl SqliteUpdates {
    /// Take the write lock (`BEGIN IMMEDIATE`), waiting for another connection's commit at most
    /// [`BUSY_TIMEOUT`], and never past the deadline's cut: in steps of at most
    /// [`LOCK_WAIT_STEP`], each bounded by the cut as it is when the step begins. Once the lock
    /// is held, the commit waits for nothing else.
    fn begin(&self, deadline: &Deadline) -> Result<Transaction<'_>, StoreError> {
        let limit = Instant::now() + BUSY_TIMEOUT;
        loop {
            let cut = deadline.cut().filter(|cut| *cut < limit);
            let until = cut.unwrap_or(limit);
            let step = until
                .saturating_duration_since(Instant::now())
                .min(LOCK_WAIT_STEP);
            self.conn.busy_timeout(step).map_err(db)?;
            match Transaction::new_unchecked(&self.conn, TransactionBehavior::Immediate) {
                Ok(tx) => return Ok(tx),
                Err(e) if e.sqlite_error_code() == Some(ErrorCode::DatabaseBusy) => {
                    if Instant::now() < until {
                        continue;
                    }
                    if cut.is_some() {
                        return Err(StoreError::Unanswered {
                            path: self.path.display().to_string(),
                            cause: e.to_string(),
                        });
                    }
                    return Err(db(e));
                }
                Err(e) => return Err(db(e)),
            }
        }
    }
}

impl UpdateRows for SqliteUpdates {
    /// One `UPDATE` per item, each column set only where the row says so.
    fn write(
        &mut self,
        rows: &[(i64, RowUpdate)],
        status: Option<RunStatus>,
        deadline: &Deadline,
    ) -> Result<(), StoreError> {
        self.write_unexplained(rows, status, deadline)
            .map_err(|e| on_disk(&self.path, e))
    }

    /// None needed: the lock is waited for in short steps, each reading the deadline again.
    fn interrupt(&self) -> Option<Interrupt> {
        None
    }
}

impl SqliteUpdates {
    /// [`UpdateRows::write`], its errors as the database said them.
    fn write_unexplained(
        &mut self,
        rows: &[(i64, RowUpdate)],
        status: Option<RunStatus>,
        deadline: &Deadline,
    ) -> Result<(), StoreError> {
        let tx = self.begin(deadline)?;
        // Two statements: the one that sets `taken` only for the rows that do (take-ups are
        // for a PostgreSQL store; this is every row's path).
        for taken in [false, true] {
            let mut stmt = tx
                .prepare_cached(if taken {
                    "UPDATE items SET
                        state = ?3,
                        stage = ?4,
                        record = CASE WHEN ?5 THEN ?6 ELSE record END,
                        attempts = COALESCE(?7, attempts),
                        error = CASE WHEN ?8 THEN ?9 ELSE error END,
                        since = CASE ?11 WHEN 1 THEN ?12 WHEN 2 THEN (CASE WHEN since IS NULL OR since > ?12 THEN ?12 ELSE since END) ELSE since END,
                        taken = ?10
                     WHERE run_id = ?1 AND seq = ?2"
                } else {
                    "UPDATE items SET
                        state = ?3,
                        stage = ?4,
                        record = CASE WHEN ?5 THEN ?6 ELSE record END,
                        attempts = COALESCE(?7, attempts),
                        error = CASE WHEN ?8 THEN ?9 ELSE error END,
                        since = CASE ?11 WHEN 1 THEN ?12 WHEN 2 THEN (CASE WHEN since IS NULL OR since > ?12 THEN ?12 ELSE since END) ELSE since END
                     WHERE run_id = ?1 AND seq = ?2"
                })
                .map_err(db)?;
            for (seq, row) in rows.iter().filter(|(_, r)| r.taken.is_some() == taken) {
                stmt.raw_bind_parameter(1, self.run).map_err(db)?;
                stmt.raw_bind_parameter(2, seq).map_err(db)?;
                stmt.raw_bind_parameter(3, row.state.as_str()).map_err(db)?;
                stmt.raw_bind_parameter(4, &row.stage).map_err(db)?;
                stmt.raw_bind_parameter(5, row.record.is_some())
                    .map_err(db)?;
                stmt.raw_bind_parameter(6, row.record.as_ref().and_then(Option::as_deref))
                    .map_err(db)?;
                stmt.raw_bind_parameter(7, row.attempts).map_err(db)?;
                stmt.raw_bind_parameter(8, row.error.is_some())
                    .map_err(db)?;
                stmt.raw_bind_parameter(9, row.error.as_ref().and_then(Option::as_deref))
                    .map_err(db)?;
                if let Some(taken) = row.taken {
                    stmt.raw_bind_parameter(10, taken).map_err(db)?;
                }
                let (since_mode, since) = row.since.sql();
                stmt.raw_bind_parameter(11, since_mode).map_err(db)?;
                stmt.raw_bind_parameter(12, since).map_err(db)?;
                stmt.raw_execute().map_err(db)?;
            }
        }
        if let Some(status) = status {
            tx.execute(
                "UPDATE runs SET status = ?2, updated_at = ?3 WHERE id = ?1",
                params![self.run, status.as_str(), now()],
            )
            .map_err(db)?;
        }
        tx.commit().map_err(db)
    }
}
