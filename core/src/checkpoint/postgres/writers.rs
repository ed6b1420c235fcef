//! The PostgreSQL store's writers: a new run's manifest, one statement per chunk, and batches
//! of item updates, one statement per batch.

use std::time::Instant;

use postgres::error::SqlState;
use postgres::Transaction;

use super::super::deadline::{Deadline, Interrupt};
use super::super::model::{now, Chunk, ManifestRows, RowUpdate, UpdateRows};
use super::super::{RunStatus, StoreError};
use super::conn::{begin, db, describe, off_runtime, on_session, Conn, Failed};
use super::lease::{live_to_commit, Membership};

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
            let mut tx = begin(client)?;
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
            // Read before the commit: a row holds its statement (see `PgStore::rows`).
            let existing: Vec<usize> = rows
                .iter()
                .map(|r| usize::try_from(r.get::<_, i64>(0)).unwrap_or(0))
                .collect();
            drop(rows);
            tx.commit()?;
            Ok(existing)
        })
        .map_err(db)?;
        Ok(existing)
    }

    fn publish(&mut self, run: i64, items: i64) -> Result<(), StoreError> {
        let client = self.conn.client();
        off_runtime(|| {
            let mut tx = begin(client)?;
            tx.execute(
                "UPDATE stagewise.runs SET status = 'running', items = $2 WHERE id = $1",
                &[&run, &items],
            )?;
            tx.commit()
        })
        .map_err(db)
    }

    fn discard(&mut self, run: i64) {
        let client = self.conn.client();
        let _ = off_runtime(|| {
            let mut tx = begin(client)?;
            tx.execute("DELETE FROM stagewise.items WHERE run_id = $1", &[&run])?;
            tx.execute("DELETE FROM stagewise.runs WHERE id = $1", &[&run])?;
            tx.commit()
        });
    }
}

/// Writes batches of one run's item updates.
pub(in crate::checkpoint) struct PgUpdates {
    /// A session of its own.
    pub(super) conn: Conn,
    /// Its settings, to connect again after the server ended the session.
    pub(super) config: crate::pg::PgTarget,
    /// The run whose items it updates.
    pub(super) run: i64,
    /// The store as messages name it.
    pub(super) shown: String,
    /// The runner whose items these are, when registered: each batch is written only while its
    /// lease is live and it still owns every item (see [`super::lease`]).
    pub(super) me: Option<std::sync::Arc<Membership>>,
}

/// Every row of a batch in one statement, from arrays.
const UPDATE_ITEMS: &str = "UPDATE stagewise.items AS i SET
        state = u.state,
        stage = u.stage,
        record = CASE WHEN u.set_record THEN u.record ELSE i.record END,
        attempts = COALESCE(u.attempts, i.attempts),
        error = CASE WHEN u.set_error THEN u.error ELSE i.error END,
        taken = COALESCE(u.taken, i.taken),
        since = CASE u.since_mode WHEN 1 THEN u.since
            WHEN 2 THEN (CASE WHEN i.since IS NULL OR i.since > u.since THEN u.since ELSE i.since END)
            ELSE i.since END
     FROM unnest($2::bigint[], $3::text[], $4::text[], $5::bool[], $6::text[], $7::bigint[], $8::bool[], $9::text[], $10::bool[], $12::smallint[], $13::bigint[])
          AS u(seq, state, stage, set_record, record, attempts, set_error, error, taken, since_mode, since)
     WHERE i.run_id = $1 AND i.seq = u.seq AND i.owner IS NOT DISTINCT FROM $11";

/// Whether the runner `$1` holds a live lease, checked as the transaction that writes for it
/// begins; checked again, and its COMMIT bounded, last ([`live_to_commit`]): a write that
/// waited on a lock past the lease is rolled back. (Not `FOR SHARE`: a write held by a lock
/// would hold the lease's renewals too. The items it updates are locked by the update itself:
/// no runner claims them meanwhile.)
const LIVE_ME: &str = "SELECT 1 FROM stagewise.runners
     WHERE id = $1 AND state = 'active' AND expires_at > clock_timestamp()";

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
    /// One transaction per batch, its items in one statement: a remote server costs a few
    /// round trips per batch, not one per item. Fenced: with a runner, nothing is written
    /// unless its lease is live and it owns every item of the batch.
    fn write(
        &mut self,
        rows: &[(i64, RowUpdate)],
        status: Option<RunStatus>,
        deadline: &Deadline,
    ) -> Result<(), StoreError> {
        if let Some(refused) = self.me.as_ref().and_then(|me| me.refused()) {
            return Err(refused);
        }
        let mut seqs = Vec::with_capacity(rows.len());
        let mut states = Vec::with_capacity(rows.len());
        let mut stages = Vec::with_capacity(rows.len());
        let mut set_record = Vec::with_capacity(rows.len());
        let mut records = Vec::with_capacity(rows.len());
        let mut attempts = Vec::with_capacity(rows.len());
        let mut set_error = Vec::with_capacity(rows.len());
        let mut errors = Vec::with_capacity(rows.len());
        let mut taken = Vec::with_capacity(rows.len());
        let mut since_modes = Vec::with_capacity(rows.len());
        let mut sinces = Vec::with_capacity(rows.len());
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
            let (mode, since) = row.since.sql();
            since_modes.push(mode);
            sinces.push(since);
        }
        let run = self.run;
        let me = self.me.as_ref().map(|m| (m.id, m.ttl()));
        let write = |client: &mut postgres::Client| -> Result<Result<(), String>, postgres::Error> {
            let mut tx = begin(client)?;
            if let Some((me, _)) = me {
                if tx.query_opt(LIVE_ME, &[&me])?.is_none() {
                    return Ok(Err(
                        "its lease had expired when it came to save its progress".to_owned(),
                    ));
                }
            }
            if !seqs.is_empty() {
                bound(&mut tx, deadline)?;
                let params: [&(dyn postgres::types::ToSql + Sync); 13] = [
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
                    &me.map(|(me, _)| me),
                    &since_modes,
                    &sinces,
                ];
                let n = tx.execute(UPDATE_ITEMS, &params)?;
                if usize::try_from(n).ok() != Some(seqs.len()) {
                    // Rolled back whole: the others' items are theirs now.
                    return Ok(Err(format!(
                        "{} of the {} items it came to save are held by another runner now",
                        seqs.len() - usize::try_from(n).unwrap_or(0),
                        seqs.len()
                    )));
                }
            }
            if let Some(status) = status {
                bound(&mut tx, deadline)?;
                // A run another runner finished stays finished.
                tx.execute(
                    "UPDATE stagewise.runs SET status = $2, updated_at = $3 WHERE id = $1 AND status <> 'finished'",
                    &[&run, &status.as_str(), &now()],
                )?;
            }
            let Some((me, ttl)) = me else {
                return tx.commit().map(Ok);
            };
            if !live_to_commit(&mut tx, me, ttl)? {
                return Ok(Err(
                    "its lease expired, or nearly, while it was saving its progress (the store kept it waiting)".to_owned(),
                ));
            }
            tx.commit().map(Ok)
        };
        // A session the server ended is opened again (see `on_session`): writing a batch
        // again sets the same. Not past the shutdown deadline, once it is set.
        let written = on_session(
            &mut self.conn,
            (&self.config, &self.shown),
            deadline.cut(),
            write,
        )
        .map_err(|failed| {
            let e = match failed {
                Failed::Statement(e) => e,
                Failed::Session(e) => return e,
            };
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
        })?;
        written.map_err(|why| match &self.me {
            Some(me) => {
                me.fence(why);
                me.refused()
                    .unwrap_or_else(|| StoreError::Fenced(String::new()))
            }
            None => StoreError::Db(why),
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
