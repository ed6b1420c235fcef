//! The checkpoint model, written once for every backend: what a [`Change`](super::Change) sets
//! in an item's row ([`updates`]), how a new run's manifest is buffered, numbered and cleared of
//! repeated keys ([`manifest`]), how counts and status reports are shaped ([`status`]), and how
//! the [`CheckpointStore`] calls map onto those.
//!
//! A backend implements [`Tables`] (with [`StatusRows`], [`ManifestRows`] and [`UpdateRows`]):
//! the SQL of one kind of database and nothing of what the rows mean. Every [`Tables`] is a
//! [`CheckpointStore`] through the one implementation here, so the SQLite and the PostgreSQL
//! stores cannot drift apart in what a change, a repeated key or a report means.

mod manifest;
mod status;
mod updates;

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use crate::stage::SharedCache;

use self::manifest::Manifest;
use self::updates::Updates;
use super::{
    CheckpointStore, ItemState, ManifestWriter, RunInfo, RunStatus, StatusReport, StoreError,
    StoredItem, UpdateWriter,
};

pub(super) use self::manifest::{Chunk, ManifestRows};
pub(super) use self::status::{EndedRow, StatusRows};
#[cfg(test)]
pub(super) use self::updates::{fold, Since};
pub(super) use self::updates::{RowUpdate, UpdateRows};

/// `(id, status, items, started_at)` of a run, as stored.
pub(super) type RunRow = (i64, String, i64, String);

/// `(seq, key, stage, record, attempts, since)` of an item, as stored (`since`: milliseconds
/// since the Unix epoch).
pub(super) type ItemRow = (
    i64,
    String,
    Option<String>,
    Option<String>,
    i64,
    Option<i64>,
);

/// `at` as the store keeps an item's `since`: milliseconds since the Unix epoch.
pub(crate) fn epoch_ms(at: SystemTime) -> i64 {
    at.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// The message kept as an item's last error when its process died during an attempt.
pub(super) fn died_during(attempt: u32, stage: &str) -> String {
    format!(
        "the process ended during attempt {attempt} in stage `{stage}` (killed, out of memory, or ended by the watchdog)"
    )
}

/// The longest a process record's save waits for a lock: it comes from a background thread at
/// every heartbeat, and a late one is worth less than the commits it would hold up.
pub(super) const PROCESS_LOCK_WAIT: Duration = Duration::from_secs(2);

/// The time as stored in `started_at`, `updated_at` and `created_at`: RFC 3339, in seconds.
pub(super) fn now() -> String {
    humantime::format_rfc3339_seconds(SystemTime::now()).to_string()
}

/// What a backend runs for the model: its tables' SQL, each call its own transaction.
///
/// A run is stored `taking` while its manifest is written, hidden from every read, and becomes
/// `running` when the manifest commits; a run still `taking` at the next `begin_run` of its
/// pipeline belongs to a read that failed or died.
pub(super) trait Tables: StatusRows + Send + Sync {
    /// Writes a new run's manifest.
    type Manifest: ManifestRows;
    /// Writes batches of item updates.
    type Updates: UpdateRows;

    /// The store as messages name it (a URL with its password hidden).
    fn shown(&self) -> String;
    /// The newest run of `pipeline` that is not `taking` and has items.
    fn newest_run(
        &self,
        pipeline: &str,
        at_most: Option<i64>,
    ) -> Result<Option<RunRow>, StoreError>;
    /// When `pipeline`'s newest take that found nothing started, if one is kept (at most one
    /// is: [`Tables::new_run`] clears them).
    fn newest_empty_take(&self, pipeline: &str) -> Result<Option<String>, StoreError>;
    /// Delete `pipeline`'s runs still `taking` (and their items) and its runs of no items, then
    /// add a run `taking`, 0 items, started and updated at `started`; its manifest is written
    /// through what returns. With several runners, see [`CheckpointStore::begin_run`] for
    /// `seen`.
    fn new_run(
        &self,
        pipeline: &str,
        started: &str,
        seen: Option<i64>,
    ) -> Result<(i64, Self::Manifest), StoreError>;
    /// The first `limit` items of `run` after `after_seq` that are pending or in flight, by seq.
    fn unfinished(&self, run: i64, after_seq: i64, limit: i64) -> Result<Vec<ItemRow>, StoreError>;
    /// Put `run`'s failed items back to pending with attempts 0 and no error and, when there
    /// were any, the run to `interrupted`; returns how many. Their deaths are forgotten too;
    /// unfinished items keep their attempts and deaths.
    fn reset_failed_items(&self, run: i64) -> Result<u64, StoreError>;
    /// In one transaction, for each `(key, stage, attempt, error)`: keep it among `run`'s deaths
    /// (raising a kept one for the same key and stage to `attempt`), and if the item `key` is
    /// still unfinished at `stage` with fewer than `attempt` attempts used, set them to
    /// `attempt` and its last error to `error`. Returns how many deaths were new or raised.
    fn raise_attempts(
        &self,
        run: i64,
        raised: &[(String, String, i64, String)],
    ) -> Result<u64, StoreError>;
    /// How many of `run`'s items have a key that did not end failed or skipped, at the stage
    /// where the item is now, in an earlier run of `pipeline`.
    fn count_keys_not_ended_before(&self, pipeline: &str, run: i64) -> Result<i64, StoreError>;
    /// `run`'s deaths: `(key, stage, attempt, error)`.
    fn died_at(&self, run: i64) -> Result<Vec<(String, String, i64, String)>, StoreError>;
    /// The last error kept for `run`'s item `seq`, if any.
    fn error_of(&self, run: i64, seq: i64) -> Result<Option<String>, StoreError>;
    /// A writer of `run`'s item updates, on a connection of its own.
    fn updates(&self, run: i64) -> Result<Self::Updates, StoreError>;
    /// The response cache, on a connection of its own.
    fn cache(&self) -> Result<SharedCache, StoreError>;
    /// Insert or replace `pipeline`'s process record, updated at `updated`: one short
    /// statement, on a connection that neither the store's reads nor the update writer wait
    /// for, waiting for a lock at most [`PROCESS_LOCK_WAIT`].
    fn put_process(&self, pipeline: &str, record: &str, updated: &str) -> Result<(), StoreError>;
    /// Add `end` to `pipeline`'s history (`None`: count a check), at `at`; as
    /// [`Tables::put_process`].
    fn put_end(
        &self,
        pipeline: &str,
        end: Option<&super::ProcessEnd>,
        at: &str,
    ) -> Result<(), StoreError>;
    /// `pipeline`'s last `limit` process ends, newest first.
    fn ends(&self, pipeline: &str, limit: i64) -> Result<Vec<super::ProcessEnd>, StoreError>;
    /// `pipeline`'s checks that found nothing new: how many, and the last one's time.
    fn checks(&self, pipeline: &str) -> Result<Option<(i64, String)>, StoreError>;
    /// `pipeline`'s process record, if one was saved.
    fn process(&self, pipeline: &str) -> Result<Option<String>, StoreError>;
    /// Whether some process holds the runner lock that `pipeline`'s run takes, now; without
    /// waiting, and without holding it after.
    fn runner_lock_held(&self, pipeline: &str) -> Result<bool, StoreError>;
    /// See [`CheckpointStore::claim`]: with one runner, the unfinished page.
    fn claim_rows(&self, run: i64, after_seq: i64, limit: i64) -> Result<Vec<ItemRow>, StoreError> {
        self.unfinished(run, after_seq, limit)
    }
    /// See [`CheckpointStore::held_by_others`].
    fn others_hold(&self, _run: i64) -> Result<i64, StoreError> {
        Ok(0)
    }
    /// See [`CheckpointStore::dead_processes`].
    fn dead(&self, _pipeline: &str) -> Result<Vec<(i64, String)>, StoreError> {
        Ok(Vec::new())
    }
    /// See [`CheckpointStore::processes_reported`].
    fn reported(&self, _ids: &[i64]) -> Result<(), StoreError> {
        Ok(())
    }
    /// See [`CheckpointStore::failed_items`].
    fn failed_count(&self, run: i64) -> Result<i64, StoreError> {
        Ok(self
            .state_counts(run)?
            .into_iter()
            .find(|(state, _)| state == "failed")
            .map_or(0, |(_, n)| n))
    }
    /// See [`CheckpointStore::lost`].
    fn lost_token(&self) -> Option<tokio_util::sync::CancellationToken> {
        None
    }
    /// See [`CheckpointStore::lost_because`].
    fn lost_reason(&self) -> Option<String> {
        None
    }
    /// The runners that worked on `run`, for `status` (none kept with one runner).
    fn runners_of(&self, _run: i64) -> Result<Vec<super::RunnerInfo>, StoreError> {
        Ok(Vec::new())
    }
}

/// Items as stored, from their rows.
fn stored_items(rows: Vec<ItemRow>) -> Vec<StoredItem> {
    rows.into_iter()
        .map(|(seq, key, stage, record, attempts, since)| StoredItem {
            seq,
            key,
            stage,
            // A manifest row without a record: a record without fields.
            record: record.unwrap_or_else(|| "{}".into()),
            attempts: u32::try_from(attempts).unwrap_or(u32::MAX),
            since: since
                .and_then(|ms| u64::try_from(ms).ok())
                .map(|ms| SystemTime::UNIX_EPOCH + Duration::from_millis(ms)),
        })
        .collect()
}

/// A run from its row; a status this build does not know means the store is damaged.
fn run_info(shown: String, (id, status, items, started_at): RunRow) -> Result<RunInfo, StoreError> {
    let status = RunStatus::parse(&status).ok_or_else(|| StoreError::Corrupt {
        path: shown,
        message: format!("run {id} has an unknown status `{status}`"),
    })?;
    Ok(RunInfo {
        id,
        status,
        items: u64::try_from(items).unwrap_or(0),
        started_at,
    })
}

impl<T: Tables> CheckpointStore for T {
    fn latest_run(&self, pipeline: &str) -> Result<Option<RunInfo>, StoreError> {
        self.newest_run(pipeline, None)?
            .map(|row| run_info(self.shown(), row))
            .transpose()
    }

    fn run_numbered(&self, pipeline: &str, run: i64) -> Result<Option<RunInfo>, StoreError> {
        self.newest_run(pipeline, Some(run))?
            .filter(|row| row.0 == run)
            .map(|row| run_info(self.shown(), row))
            .transpose()
    }

    fn last_checked(&self, pipeline: &str) -> Result<Option<String>, StoreError> {
        self.newest_empty_take(pipeline)
    }

    fn begin_run(
        &self,
        pipeline: &str,
        first_stage: &str,
        seen: Option<i64>,
    ) -> Result<Box<dyn ManifestWriter>, StoreError> {
        let started = now();
        let (run, rows) = self.new_run(pipeline, &started, seen)?;
        Ok(Box::new(Manifest::new(rows, run, started, first_stage)))
    }

    #[cfg(test)]
    fn pending(
        &self,
        run: i64,
        after_seq: i64,
        limit: usize,
    ) -> Result<Vec<StoredItem>, StoreError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        Ok(stored_items(self.unfinished(run, after_seq, limit)?))
    }

    fn claim(&self, run: i64, after_seq: i64, limit: usize) -> Result<Vec<StoredItem>, StoreError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        Ok(stored_items(self.claim_rows(run, after_seq, limit)?))
    }

    fn held_by_others(&self, run: i64) -> Result<u64, StoreError> {
        Ok(u64::try_from(self.others_hold(run)?).unwrap_or(0))
    }

    fn failed_items(&self, run: i64) -> Result<u64, StoreError> {
        Ok(u64::try_from(self.failed_count(run)?).unwrap_or(0))
    }

    fn lost(&self) -> Option<tokio_util::sync::CancellationToken> {
        self.lost_token()
    }

    fn lost_because(&self) -> Option<String> {
        self.lost_reason()
    }

    fn counts(&self, run: i64) -> Result<BTreeMap<&'static str, u64>, StoreError> {
        let rows = self.state_counts(run)?;
        // An item in a state this build does not know is never taken up and never ends: the
        // run would stop "interrupted, run again" every time, forever.
        if let Some((state, n)) = rows.iter().find(|(s, _)| ItemState::parse(s).is_none()) {
            return Err(StoreError::Corrupt {
                path: self.shown(),
                message: format!("{n} item(s) of run {run} have an unknown state `{state}`"),
            });
        }
        Ok(status::counts(rows))
    }

    fn status(&self, run: &RunInfo, limit: u64) -> Result<StatusReport, StoreError> {
        let mut report = status::status(self, run, limit)?;
        report.runners = self.runners_of(run.id)?;
        Ok(report)
    }

    fn count_died_attempts(
        &self,
        run: i64,
        died: &[(String, String, u32)],
    ) -> Result<u64, StoreError> {
        let raised: Vec<(String, String, i64, String)> = died
            .iter()
            .map(|(key, stage, attempt)| {
                (
                    key.clone(),
                    stage.clone(),
                    i64::from(*attempt),
                    died_during(*attempt, stage),
                )
            })
            .collect();
        self.raise_attempts(run, &raised)
    }

    fn last_error(&self, run: i64, seq: i64) -> Result<Option<String>, StoreError> {
        self.error_of(run, seq)
    }

    fn deaths(&self, run: i64) -> Result<Vec<super::Death>, StoreError> {
        Ok(self
            .died_at(run)?
            .into_iter()
            .map(|(key, stage, attempt, error)| super::Death {
                key,
                stage,
                attempt: u32::try_from(attempt).unwrap_or(u32::MAX),
                error,
            })
            .collect())
    }

    fn keys_not_ended_before(&self, pipeline: &str, run: i64) -> Result<u64, StoreError> {
        Ok(u64::try_from(self.count_keys_not_ended_before(pipeline, run)?).unwrap_or(0))
    }

    fn reset_failed(&self, run: i64) -> Result<u64, StoreError> {
        self.reset_failed_items(run)
    }

    fn update_writer(&self, run: i64) -> Result<Box<dyn UpdateWriter>, StoreError> {
        Ok(Box::new(Updates::new(self.updates(run)?)))
    }

    fn response_cache(&self) -> Result<SharedCache, StoreError> {
        self.cache()
    }

    fn save_process(&self, pipeline: &str, record_json: &str) -> Result<(), StoreError> {
        self.put_process(pipeline, record_json, &now())
    }

    fn load_process(&self, pipeline: &str) -> Result<Option<String>, StoreError> {
        self.process(pipeline)
    }

    fn dead_processes(&self, pipeline: &str) -> Result<Vec<(i64, String)>, StoreError> {
        self.dead(pipeline)
    }

    fn processes_reported(&self, ids: &[i64]) -> Result<(), StoreError> {
        self.reported(ids)
    }

    fn runner_active(&self, pipeline: &str) -> Result<bool, StoreError> {
        self.runner_lock_held(pipeline)
    }

    fn record_end(
        &self,
        pipeline: &str,
        end: Option<&super::ProcessEnd>,
    ) -> Result<(), StoreError> {
        // To the millisecond, as the process's start is.
        let at = humantime::format_rfc3339_millis(SystemTime::now()).to_string();
        self.put_end(pipeline, end, &at)
    }

    fn history(&self, pipeline: &str, limit: i64) -> Result<super::History, StoreError> {
        let checks = self.checks(pipeline)?;
        Ok(super::History {
            ends: self.ends(pipeline, limit)?,
            checks: checks
                .as_ref()
                .map_or(0, |(n, _)| u64::try_from(*n).unwrap_or(0)),
            last_checked: checks.map(|(_, at)| at),
        })
    }
}
