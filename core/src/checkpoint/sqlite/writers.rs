//! The SQLite store's writers: a new run's manifest, chunk by chunk, and batches of item
//! updates, each batch in one transaction.

use rusqlite::{params, Connection};

use super::super::model::{now, Chunk, ManifestRows, RowUpdate, UpdateRows};
use super::super::{RunStatus, StoreError};
use super::db;

/// Writes a new run's manifest.
pub(in crate::checkpoint) struct SqliteManifest {
    /// A connection of its own.
    pub(super) conn: Connection,
}

impl ManifestRows for SqliteManifest {
    /// Row by row in one short transaction: `INSERT OR IGNORE` leaves a key already in the
    /// manifest as it is, and only an inserted row takes the next seq.
    fn insert(&mut self, chunk: Chunk<'_>) -> Result<Vec<usize>, StoreError> {
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

    fn publish(&mut self, run: i64, items: i64) -> Result<(), StoreError> {
        self.conn
            .execute(
                "UPDATE runs SET status = 'running', items = ?2 WHERE id = ?1",
                params![run, items],
            )
            .map(drop)
            .map_err(db)
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
}

impl UpdateRows for SqliteUpdates {
    /// One `UPDATE` per item, each column set only where the row says so.
    fn write(
        &mut self,
        rows: &[(i64, RowUpdate)],
        status: Option<RunStatus>,
    ) -> Result<(), StoreError> {
        let tx = self.conn.transaction().map_err(db)?;
        {
            let mut stmt = tx
                .prepare_cached(
                    "UPDATE items SET
                        state = ?3,
                        stage = ?4,
                        record = CASE WHEN ?5 THEN ?6 ELSE record END,
                        attempts = COALESCE(?7, attempts),
                        error = CASE WHEN ?8 THEN ?9 ELSE error END
                     WHERE run_id = ?1 AND seq = ?2",
                )
                .map_err(db)?;
            for (seq, row) in rows {
                stmt.execute(params![
                    self.run,
                    seq,
                    row.state.as_str(),
                    row.stage,
                    row.record.is_some(),
                    row.record.as_ref().and_then(Option::as_deref),
                    row.attempts,
                    row.error.is_some(),
                    row.error.as_ref().and_then(Option::as_deref),
                ])
                .map_err(db)?;
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
