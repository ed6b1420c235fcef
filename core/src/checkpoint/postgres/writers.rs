//! The PostgreSQL store's writers: a new run's manifest, one statement per chunk, and batches
//! of item updates, one statement per batch.

use std::time::Instant;

use postgres::error::SqlState;
use postgres::Transaction;

use super::super::deadline::{Deadline, Interrupt};
use super::super::model::{now, Chunk, ManifestRows, RowUpdate, UpdateRows};
use super::super::{RunStatus, StoreError};
use super::conn::{db, describe, off_runtime, Conn};

/// Writes a new run's manifest.
pub(in crate::checkpoint) struct PgManifest {
    /// A session of its own.
    pub(super) conn: Conn,
}

impl ManifestRows for PgManifest {
    /// In one statement, which numbers the new rows densely in the order given: a remote
    /// server costs one round trip per chunk, not one per item.
    fn insert(&mut self, chunk: Chunk<'_>) -> Result<Vec<usize>, StoreError> {
        let Chunk {
            run,
            after_seq,
            first_stage,
            rows,
        } = chunk;
        let keys: Vec<&str> = rows.iter().map(|(k, _)| k.as_str()).collect();
        let records: Vec<&str> = rows.iter().map(|(_, r)| r.as_str()).collect();
        let positions: Vec<i64> = (0..rows.len())
            .map(|i| i64::try_from(i).expect("a chunk is small"))
            .collect();
        let client = self.conn.client();
        let existing = off_runtime(|| {
            let mut tx = client.transaction()?;
            let rows = tx.query(
                "WITH input AS (
                     SELECT k, r, pos, ord FROM unnest($2::text[], $3::text[], $4::bigint[]) WITH ORDINALITY AS t(k, r, pos, ord)
                 ), old AS (
                     SELECT pos FROM input WHERE EXISTS (SELECT 1 FROM stagewise.items i WHERE i.run_id = $1 AND i.key = input.k)
                 ), new AS (
                     INSERT INTO stagewise.items (run_id, seq, key, state, stage, record)
                     SELECT $1, $5 + row_number() OVER (ORDER BY ord), k, 'pending', $6, r FROM input
                     WHERE NOT EXISTS (SELECT 1 FROM stagewise.items i WHERE i.run_id = $1 AND i.key = input.k)
                 )
                 SELECT pos FROM old",
                &[&run, &keys, &records, &positions, &after_seq, &first_stage],
            )?;
            tx.commit()?;
            Ok(rows)
        })
        .map_err(db)?;
        Ok(existing
            .iter()
            .map(|r| usize::try_from(r.get::<_, i64>(0)).unwrap_or(0))
            .collect())
    }

    fn publish(&mut self, run: i64, items: i64) -> Result<(), StoreError> {
        let client = self.conn.client();
        off_runtime(|| {
            client.execute(
                "UPDATE stagewise.runs SET status = 'running', items = $2 WHERE id = $1",
                &[&run, &items],
            )
        })
        .map(drop)
        .map_err(db)
    }

    fn discard(&mut self, run: i64) {
        let client = self.conn.client();
        let _ = off_runtime(|| {
            client.execute("DELETE FROM stagewise.items WHERE run_id = $1", &[&run])?;
            client.execute("DELETE FROM stagewise.runs WHERE id = $1", &[&run])
        });
    }
}

/// Writes batches of one run's item updates.
pub(in crate::checkpoint) struct PgUpdates {
    /// A session of its own.
    pub(super) conn: Conn,
    /// The run whose items it updates.
    pub(super) run: i64,
    /// The store as messages name it.
    pub(super) shown: String,
    /// The items' `UPDATE`, prepared on the session once.
    pub(super) update: Option<postgres::Statement>,
}

/// Every row of a batch in one statement, from arrays.
const UPDATE_ITEMS: &str = "UPDATE stagewise.items AS i SET
        state = u.state,
        stage = u.stage,
        record = CASE WHEN u.set_record THEN u.record ELSE i.record END,
        attempts = COALESCE(u.attempts, i.attempts),
        error = CASE WHEN u.set_error THEN u.error ELSE i.error END,
        taken = COALESCE(u.taken, i.taken)
     FROM unnest($2::bigint[], $3::text[], $4::text[], $5::bool[], $6::text[], $7::bigint[], $8::bool[], $9::text[], $10::bool[])
          AS u(seq, state, stage, set_record, record, attempts, set_error, error, taken)
     WHERE i.run_id = $1 AND i.seq = u.seq";

/// Bound the transaction's next statement by the deadline's cut, if there is one: its lock
/// waits and its whole run. Costs a round trip, so only once a deadline is set.
fn bound(tx: &mut Transaction<'_>, deadline: &Deadline) -> Result<(), postgres::Error> {
    let Some(cut) = deadline.cut() else {
        return Ok(());
    };
    // 0 would mean no timeout at all.
    let ms = cut
        .saturating_duration_since(Instant::now())
        .as_millis()
        .max(1);
    tx.batch_execute(&format!(
        "SET LOCAL statement_timeout = {ms}; SET LOCAL lock_timeout = {ms}"
    ))
}

impl UpdateRows for PgUpdates {
    /// One statement per batch: a remote server costs one round trip, not one per item (one
    /// more, to bound it, once a deadline is set).
    fn write(
        &mut self,
        rows: &[(i64, RowUpdate)],
        status: Option<RunStatus>,
        deadline: &Deadline,
    ) -> Result<(), StoreError> {
        let mut seqs = Vec::with_capacity(rows.len());
        let mut states = Vec::with_capacity(rows.len());
        let mut stages = Vec::with_capacity(rows.len());
        let mut set_record = Vec::with_capacity(rows.len());
        let mut records = Vec::with_capacity(rows.len());
        let mut attempts = Vec::with_capacity(rows.len());
        let mut set_error = Vec::with_capacity(rows.len());
        let mut errors = Vec::with_capacity(rows.len());
        let mut taken = Vec::with_capacity(rows.len());
        for (seq, row) in rows {
            seqs.push(*seq);
            states.push(row.state.as_str());
            stages.push(row.stage.as_deref());
            set_record.push(row.record.is_some());
            records.push(row.record.as_ref().and_then(Option::as_deref));
            attempts.push(row.attempts);
            set_error.push(row.error.is_some());
            errors.push(row.error.as_ref().and_then(Option::as_deref));
            taken.push(row.taken);
        }
        let run = self.run;
        let (conn, prepared) = (&mut self.conn, &mut self.update);
        off_runtime(|| {
            let client = conn.client();
            let update = match prepared {
                Some(update) => update.clone(),
                None => prepared.insert(client.prepare(UPDATE_ITEMS)?).clone(),
            };
            let params: [&(dyn postgres::types::ToSql + Sync); 10] = [
                &run,
                &seqs,
                &states,
                &stages,
                &set_record,
                &records,
                &attempts,
                &set_error,
                &errors,
                &taken,
            ];
            if status.is_none() && deadline.cut().is_none() {
                // One statement is its own transaction: one round trip (what a take-up that
                // waits for its commit waits for), not three.
                if !seqs.is_empty() {
                    client.execute(&update, &params)?;
                }
                return Ok(());
            }
            let mut tx = client.transaction()?;
            if !seqs.is_empty() {
                bound(&mut tx, deadline)?;
                tx.execute(&update, &params)?;
            }
            if let Some(status) = status {
                bound(&mut tx, deadline)?;
                tx.execute(
                    "UPDATE stagewise.runs SET status = $2, updated_at = $3 WHERE id = $1",
                    &[&run, &status.as_str(), &now()],
                )?;
            }
            tx.commit()
        })
        .map_err(|e| {
            // A timeout, or the deadline's watcher cancelling the statement, once the deadline
            // is set: the store did not answer in time.
            let timed_out = matches!(
                e.code(),
                Some(&SqlState::QUERY_CANCELED | &SqlState::LOCK_NOT_AVAILABLE)
            );
            if timed_out && deadline.cut().is_some() {
                StoreError::Unanswered {
                    path: self.shown.clone(),
                    cause: describe(&e),
                }
            } else {
                db(e)
            }
        })
    }

    /// A cancel request for the session's statement in progress, on a connection of its own
    /// (with the session's TLS).
    fn interrupt(&self) -> Option<Interrupt> {
        let token = self.conn.cancel_token();
        let shown = self.shown.clone();
        Some(Box::new(move || {
            if let Err(e) = off_runtime(|| token.cancel_query()) {
                tracing::warn!(store = %shown, error = %describe(&e), "cannot cancel the checkpoint commit past the shutdown deadline");
            }
        }))
    }
}
