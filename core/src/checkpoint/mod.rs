//! Checkpoint stores: where a run's manifest and every item's progress are saved, so a later
//! run resumes where this one stopped.
//!
//! A run's manifest (every item key with the record the source gave) is written before any item
//! is processed, and becomes visible all at once when it is complete. From then on, the runner sends item updates to a
//! group-committing [`writer`]; each update names the item's state, the stage it is at, and (after
//! a stage finished) the record as that stage left it.
//!
//! What the stored state means is written once, in [`model`]: the columns each [`Change`] sets,
//! how a manifest is chunked and cleared of repeated keys, how counts and reports are shaped,
//! and the one [`CheckpointStore`] implementation. The backends, [`sqlite`] and [`postgres`],
//! only run SQL for it (`model::Tables`), and one table of scenarios (`tests`) runs against
//! both.

mod deadline;
mod model;
mod postgres;
mod sqlite;
#[cfg(test)]
mod tests;
pub(crate) mod writer;

use std::collections::BTreeMap;

use serde::Serialize;

pub(crate) use model::epoch_ms;
pub use postgres::PgStore;
pub(crate) use postgres::RECONNECTING;
pub use sqlite::SqliteStore;

use crate::spec::StoreLocation;
use crate::stage::{CacheError, SharedCache};

/// Held while a run uses a store: the SQLite store's lock (one runner per store), or a
/// PostgreSQL store's runner registration and its lease's renewals (any number of runners per
/// run). Released when dropped, or by the OS or the lease's end when the process dies.
pub(crate) type RunnerGuard = Box<dyn std::any::Any + Send>;

/// The lease under which a runner of a PostgreSQL store holds its items.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaseTerms {
    /// How long a lease lasts unrenewed: `[checkpoint] lease_ttl`.
    pub ttl: std::time::Duration,
    /// How often it is renewed: `[pipeline] heartbeat`, at most a third of `ttl`.
    pub renew_every: std::time::Duration,
}

impl LeaseTerms {
    /// The terms of a lease of `ttl` renewed every `heartbeat`, or more often if that is not
    /// three renewals per lease.
    pub fn new(ttl: std::time::Duration, heartbeat: std::time::Duration) -> Self {
        LeaseTerms {
            ttl,
            renew_every: heartbeat
                .min(ttl / 3)
                .max(std::time::Duration::from_millis(10)),
        }
    }
}

/// Most dead runners [`CheckpointStore::dead_processes`] returns at once (older ones are
/// reported by a later process).
pub(crate) const DEAD_REPORTED: i64 = 20;

/// Open the store at `location` (creating it if missing) and take it for a run of `pipeline`:
/// a SQLite store's lock, or a place among a PostgreSQL store's runners under `lease`, beside
/// runners that run the same `stages` (see [`PgStore::register`]).
pub(crate) fn open_for_run(
    location: &StoreLocation,
    (pipeline, stages): (&str, &str),
    lease: LeaseTerms,
) -> Result<(std::sync::Arc<dyn CheckpointStore>, RunnerGuard), StoreError> {
    match location {
        StoreLocation::Sqlite(path) => {
            let store = SqliteStore::open(path)?;
            let lock = store.lock()?;
            Ok((std::sync::Arc::new(store), Box::new(lock)))
        }
        StoreLocation::Postgres(url) => {
            let store = PgStore::open(url)?;
            let runner = store.register(pipeline, stages, lease)?;
            Ok((std::sync::Arc::new(store), Box::new(runner)))
        }
    }
}

/// Open an existing store, for `status`; `None` when there is none yet.
pub(crate) fn open_existing(
    location: &StoreLocation,
) -> Result<Option<Box<dyn CheckpointStore>>, StoreError> {
    Ok(match location {
        StoreLocation::Sqlite(path) => {
            SqliteStore::open_existing(path)?.map(|s| Box::new(s) as Box<dyn CheckpointStore>)
        }
        StoreLocation::Postgres(url) => {
            PgStore::open_existing(url)?.map(|s| Box::new(s) as Box<dyn CheckpointStore>)
        }
    })
}

/// Check the store at `location` for `validate --connect`: connect to it (or open its file)
/// and read its schema version, as `status` does. What was found, in words; or whose fault the
/// trouble is (a server out of reach is an outage; a password or certificate refused, a file
/// that is not a store, a schema too new, the configuration's) and what it is.
pub(crate) fn check(location: &StoreLocation) -> Result<String, (crate::stage::Fault, String)> {
    use crate::stage::Fault;
    let shown = location.shown();
    match open_existing(location) {
        Ok(Some(_)) => Ok(format!("{shown}: opened")),
        Ok(None) => match location {
            StoreLocation::Sqlite(path) => {
                // The first run creates the file and its folders: the nearest folder that is
                // there must be one.
                let mut dir = path.parent();
                while let Some(d) = dir.filter(|d| !d.as_os_str().is_empty()) {
                    if d.exists() {
                        if !d.is_dir() {
                            return Err((
                                Fault::Config,
                                format!("{shown}: {} is not a folder, so the store cannot be made in it", d.display()),
                            ));
                        }
                        break;
                    }
                    dir = d.parent();
                }
                Ok(format!("{shown}: not there yet; the first run creates it"))
            }
            StoreLocation::Postgres(_) => Ok(format!(
                "{shown}: connected; no stagewise schema yet, the first run creates it"
            )),
        },
        Err(StoreError::Lost(why)) => Err((Fault::Outage, why)),
        Err(e) => Err((Fault::Config, e.to_string())),
    }
}

/// The value behind `m`, even if a thread panicked while holding it: a connection stays usable,
/// since the open transaction of a panicking thread is rolled back when its handle drops.
fn unpoisoned<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl From<StoreError> for CacheError {
    fn from(e: StoreError) -> Self {
        CacheError(e.to_string())
    }
}

/// What can go wrong with a store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The file is not a checkpoint store, or it is damaged.
    #[error("checkpoint store {path}: {message}")]
    Corrupt {
        /// The store's path.
        path: String,
        /// What is wrong.
        message: String,
    },
    /// The store was written by a newer version of stagewise.
    #[error("checkpoint store {path} has schema version {found}, newer than this build reads (up to {supported}): upgrade stagewise, or point `[checkpoint] store` elsewhere")]
    TooNew {
        /// The store's path.
        path: String,
        /// Its schema version.
        found: i64,
        /// The newest this build reads.
        supported: i64,
    },
    /// Another process is running this store's pipeline. (`path` is the store's URL, with its
    /// password hidden, for a PostgreSQL store.)
    #[error("checkpoint store {path} is in use by another `stagewise run` ({holder}); two runners on one store would do the same items twice")]
    Busy {
        /// The store's path.
        path: String,
        /// Who holds it, as far as known.
        holder: String,
    },
    /// The file system holding a SQLite store is full or read-only: what failed, explained.
    #[error("checkpoint store {path}: the file system holding it {problem} ({cause}); what was committed before is kept: make room or make it writable, then run again to resume")]
    Disk {
        /// The store's path.
        path: String,
        /// "is full (no space left)" or "is read-only".
        problem: &'static str,
        /// What the database said.
        cause: String,
    },
    /// The store did not answer a commit before the writer's shutdown deadline (see
    /// [`writer::Checkpointer::set_deadline`]); the commit was rolled back, and what was
    /// committed before is kept.
    #[error("checkpoint store {path} did not answer before the shutdown deadline ({cause}); what it committed before is kept, and the next run resumes from there")]
    Unanswered {
        /// The store's path, or its URL with the password hidden.
        path: String,
        /// What the commit was waiting for, as the database put it.
        cause: String,
    },
    /// `--fresh` on a PostgreSQL store while other runners still work on the unfinished run.
    #[error("run {run} of pipeline `{pipeline}` on {path} is still being worked on by {runners} runner(s) (`stagewise status` lists them): a new batch beside it would leave it unfinished; let them finish, or stop them first")]
    RunInProgress {
        /// The store's URL, with its password hidden.
        path: String,
        /// The pipeline.
        pipeline: String,
        /// The unfinished run.
        run: i64,
        /// Live runners working on it.
        runners: i64,
    },
    /// A live runner of the pipeline on a PostgreSQL store runs other stages than this one
    /// (another pipeline file under the same name, or an older version of it).
    #[error("pipeline `{pipeline}` on {path} is being run with other stages by {runner}: its stages are {theirs}; this file's are {ours}; runners that share a run must run the same stages (their settings may differ), so stop it first, or give this pipeline another `name`")]
    OtherStages {
        /// The store's URL, with its password hidden.
        path: String,
        /// The pipeline.
        pipeline: String,
        /// The live runner with other stages.
        runner: String,
        /// Its stages.
        theirs: String,
        /// This runner's stages.
        ours: String,
    },
    /// This runner lost its claim on the run (its lease expired, or another runner took over
    /// its items): what it would have written was not, and it must stop.
    #[error("this runner lost its claim on the run: {0}")]
    Fenced(String),
    /// Another runner took, or is taking, a new batch of the pipeline since this one looked:
    /// look again (and join it).
    #[error("another runner took a new batch of this pipeline meanwhile")]
    Moved,
    /// A database error.
    #[error("checkpoint store: {0}")]
    Db(String),
    /// The store's session ended, or none could be opened (a restart, a killed session, a
    /// network cut): what was not committed is not, and the call may be tried again.
    #[error("checkpoint store: {0}")]
    Lost(String),
}

/// The state of an item.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ItemState {
    /// Not started, or interrupted: will run.
    Pending,
    /// Being processed (or was, when the process died: treated as pending on resume).
    InFlight,
    /// Went through every stage.
    Done,
    /// Filtered out by a stage, with a reason.
    Skipped,
    /// Failed permanently, with its last error.
    Failed,
}

impl ItemState {
    /// All states, in display order.
    pub const ALL: [ItemState; 5] = [
        ItemState::Pending,
        ItemState::InFlight,
        ItemState::Done,
        ItemState::Skipped,
        ItemState::Failed,
    ];

    /// The name stored and shown.
    pub fn as_str(self) -> &'static str {
        match self {
            ItemState::Pending => "pending",
            ItemState::InFlight => "in_flight",
            ItemState::Done => "done",
            ItemState::Skipped => "skipped",
            ItemState::Failed => "failed",
        }
    }

    /// The state stored as `s`, if any.
    fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|st| st.as_str() == s)
    }
}

/// The state of a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RunStatus {
    /// Being processed, or the process died.
    Running,
    /// Stopped by a signal or `max_run_time`; resumes next time.
    Interrupted,
    /// Stopped by `max_failures`, a fatal error or a wedged stage; resumes next time.
    Aborted,
    /// Every item ended; the next run takes a new batch.
    Finished,
}

impl RunStatus {
    /// The name stored and shown.
    pub fn as_str(self) -> &'static str {
        match self {
            RunStatus::Running => "running",
            RunStatus::Interrupted => "interrupted",
            RunStatus::Aborted => "aborted",
            RunStatus::Finished => "finished",
        }
    }

    /// The status stored as `s`, if any.
    fn parse(s: &str) -> Option<Self> {
        [
            RunStatus::Running,
            RunStatus::Interrupted,
            RunStatus::Aborted,
            RunStatus::Finished,
        ]
        .into_iter()
        .find(|st| st.as_str() == s)
    }
}

/// A run as stored.
#[derive(Debug, Clone, Serialize)]
pub struct RunInfo {
    /// Run id, increasing.
    pub id: i64,
    /// Its status.
    pub status: RunStatus,
    /// Items in its manifest.
    pub items: u64,
    /// When it started (RFC 3339).
    pub started_at: String,
}

/// An item to (re)process, as stored.
#[derive(Debug, Clone)]
pub struct StoredItem {
    /// Position in the manifest.
    pub seq: i64,
    /// The item key.
    pub key: String,
    /// The stage to run next (`None`: the first stage after the source).
    pub stage: Option<String>,
    /// The record's fields as JSON, as the last finished stage left them.
    pub record: String,
    /// Attempts already used at `stage`: failed or timed out in an earlier process, or cut
    /// short by its death (not those an orderly stop interrupted). Their last error is
    /// [`CheckpointStore::last_error`]'s.
    pub attempts: u32,
    /// When its first attempt at `stage` began, as committed (`item_deadline` counts from it);
    /// `None` if none did yet.
    pub since: Option<std::time::SystemTime>,
}

/// An attempt a process died in, as kept.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Death {
    /// The item's key.
    pub key: String,
    /// The stage of the attempt.
    pub stage: String,
    /// The attempt's number.
    pub attempt: u32,
    /// What is kept as the item's last error.
    pub error: String,
}

/// A failed item, for `status`.
#[derive(Debug, Clone, Serialize)]
pub struct FailedItem {
    /// Item key.
    pub key: String,
    /// The stage it failed in.
    pub stage: String,
    /// Its last error.
    pub error: String,
    /// Attempts made in that stage.
    pub attempts: u32,
}

/// A skipped item, for `status`.
#[derive(Debug, Clone, Serialize)]
pub struct SkippedItem {
    /// Item key.
    pub key: String,
    /// The stage that skipped it.
    pub stage: String,
    /// Why.
    pub reason: String,
}

/// One process's end, kept in the store's history (`stagewise runs`): one entry per process
/// that ran a batch's items (with several runners, one per runner).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ProcessEnd {
    /// The run it worked on.
    pub id: i64,
    /// When the process started (RFC 3339).
    pub started: String,
    /// When it ended (RFC 3339).
    pub ended: String,
    /// How it ended: `finished`, `finished_with_failures`, `no_progress`, `aborted`,
    /// `interrupted`.
    pub outcome: String,
    /// Its exit code.
    pub exit_code: i64,
    /// The run's items, and where they stood at its end.
    pub items: i64,
    pub done: i64,
    pub failed: i64,
    pub skipped: i64,
    /// Why it stopped early, if it did.
    pub reason: Option<String>,
    /// The process: its id and its machine.
    pub pid: i64,
    pub host: String,
}

/// A pipeline's history in the store: the ends of its processes, newest first, and the
/// checks that found nothing new (counted, not listed).
#[derive(Debug, Clone, Default, Serialize)]
pub struct History {
    pub ends: Vec<ProcessEnd>,
    /// How many checks found nothing new.
    pub checks: u64,
    /// When the last one was (RFC 3339).
    pub last_checked: Option<String>,
}

/// A runner of a run on a PostgreSQL store, for `status`.
#[derive(Debug, Clone, Serialize)]
pub struct RunnerInfo {
    /// Its number in the store.
    pub id: i64,
    /// The machine it runs on.
    pub host: String,
    /// Its process id there.
    pub pid: i64,
    /// The run it works on, once it claimed items.
    pub run: Option<i64>,
    /// When it started (RFC 3339, the server's clock).
    pub started_at: String,
    /// When it last renewed its lease.
    pub renewed_at: String,
    /// `active` (its lease is live), `stopped` (it ended in order), or `lost` (its lease
    /// expired without it stopping: it died, or was cut off).
    pub state: String,
    /// The run's unfinished items it holds.
    pub items_held: u64,
}

/// What `status` shows of a run.
#[derive(Debug, Clone, Serialize)]
pub struct StatusReport {
    /// The run.
    pub run: RunInfo,
    /// Items per state (every state present).
    pub counts: BTreeMap<&'static str, u64>,
    /// Per stage: items per state that are at (pending, in flight) or ended in (skipped, failed)
    /// that stage.
    pub stages: BTreeMap<String, BTreeMap<&'static str, u64>>,
    /// Failed items (the first of them: `status --limit`, 1,000 unless given).
    pub failed: Vec<FailedItem>,
    /// Failed items not listed.
    pub failed_more: u64,
    /// Skipped items (the first of them, as `failed`).
    pub skipped: Vec<SkippedItem>,
    /// Skipped items not listed.
    pub skipped_more: u64,
    /// The runners of the run and the live runners of its pipeline (a PostgreSQL store's;
    /// empty for SQLite, whose one runner holds the store's lock).
    pub runners: Vec<RunnerInfo>,
}

/// A stage's name as changes carry it: shared, so that a change costs no allocation for it.
pub(crate) type StageName = std::sync::Arc<str>;

/// One change to one item, sent by the runner.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Change {
    /// An attempt at `stage` began.
    Started { stage: StageName },
    /// This process took the item up at `stage`, its first attempt here about to begin: as
    /// `Started`, and the item is marked taken until it leaves the process: a runner that takes
    /// the item over from a process that died counts that attempt (see
    /// [`CheckpointStore::claim`]). Sent with [`Checkpointer::send_durable`].
    ///
    /// [`Checkpointer::send_durable`]: writer::Checkpointer::send_durable
    TakenUp { stage: StageName },
    /// A stage finished; the item is next at `stage` with this record. The record is
    /// serialized only if this update is still the item's latest when its batch is written:
    /// a fast item's record is never serialized at all.
    Advanced {
        stage: StageName,
        record: std::sync::Arc<crate::stage::Record>,
    },
    /// The item went through every stage.
    Done,
    /// A stage skipped the item.
    Skipped { stage: StageName, reason: String },
    /// An attempt at `stage` failed with `error` (the item may try again): `attempts` are
    /// used, and stay with the item across processes.
    Attempted {
        stage: StageName,
        attempts: u32,
        error: String,
    },
    /// The item failed at `stage`, and is about to be marked so (see
    /// [`crate::stage::BlockingStage::mark`]): as `Attempted` with every attempt used, and it has
    /// left the process's hands (no longer taken up). Sent with `send_durable`.
    Exhausted {
        stage: StageName,
        attempts: u32,
        error: String,
    },
    /// The item failed at `stage`.
    Failed {
        stage: StageName,
        error: String,
        attempts: u32,
    },
    /// Shutdown stopped the item at `stage`: it goes back to pending, no attempt used.
    Interrupted { stage: StageName },
    /// The item's clock at `stage` (`item_deadline`) started at `at` (ms since the Unix epoch)
    /// before its first attempt there: it began waiting at an open breaker.
    Clock { stage: StageName, at: i64 },
}

/// An update of one item.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Update {
    pub seq: i64,
    pub change: Change,
}

/// Writes a new run's manifest; nothing is visible until [`ManifestWriter::commit`].
pub(crate) trait ManifestWriter: Send {
    /// Add an item. A key already in the manifest is not added again; [`ManifestWriter::commit`]
    /// counts such repeats.
    fn add(&mut self, key: &str, record: &str) -> Result<(), StoreError>;
    /// Make the run and its manifest visible.
    fn commit(self: Box<Self>) -> Result<(RunInfo, Duplicates), StoreError>;
}

/// Keys a source yielded more than once (each kept once).
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct Duplicates {
    /// How many repeats.
    pub count: u64,
    /// The first few repeated keys.
    pub first: Vec<String>,
}

/// Applies batches of updates, each batch in one transaction.
pub(crate) trait UpdateWriter: Send {
    /// Apply `updates` in order, then set the run's status if given: all or nothing.
    fn apply(&mut self, updates: &[Update], status: Option<RunStatus>) -> Result<(), StoreError>;
    /// The writer's shutdown deadline, to set from any thread, while a commit runs too: from
    /// then on each commit waits for the store at most until it (see [`deadline`]), and one
    /// that does not make it fails with [`StoreError::Unanswered`].
    fn deadline(&self) -> std::sync::Arc<deadline::Deadline>;
}

/// A checkpoint store.
pub(crate) trait CheckpointStore: Send + Sync {
    /// The newest run of a pipeline that had items: a take that found nothing is not a run
    /// that hides the last one.
    fn latest_run(&self, pipeline: &str) -> Result<Option<RunInfo>, StoreError>;
    /// `pipeline`'s run number `run`, if it has one with items.
    fn run_numbered(&self, pipeline: &str, run: i64) -> Result<Option<RunInfo>, StoreError>;
    /// When the source was last read and found nothing, if that was after the latest run with
    /// items began (RFC 3339).
    fn last_checked(&self, pipeline: &str) -> Result<Option<String>, StoreError>;
    /// Start writing a new run's manifest; its items start at stage `first_stage`. `seen` is
    /// the latest run the caller saw ([`CheckpointStore::latest_run`]): if another runner took
    /// a batch since, or is taking one, this fails with [`StoreError::Moved`] (look again);
    /// if runners still work on `seen`, unfinished, with [`StoreError::Busy`].
    fn begin_run(
        &self,
        pipeline: &str,
        first_stage: &str,
        seen: Option<i64>,
    ) -> Result<Box<dyn ManifestWriter>, StoreError>;
    /// Items of `run` still to process, in manifest order, after `after_seq`.
    #[cfg(test)]
    fn pending(
        &self,
        run: i64,
        after_seq: i64,
        limit: usize,
    ) -> Result<Vec<StoredItem>, StoreError>;
    /// The next items of `run` for this process to work on, at most `limit`: the pending page
    /// after `after_seq` (SQLite: one runner), or items claimed under this runner's lease,
    /// whatever `after_seq` (PostgreSQL). Empty: nothing is left that this process may take
    /// now; [`CheckpointStore::held_by_others`] says whether to ask again later.
    fn claim(&self, run: i64, after_seq: i64, limit: usize) -> Result<Vec<StoredItem>, StoreError>;
    /// How many of `run`'s unfinished items other runners hold (0 with one runner): once their
    /// leases expire, [`CheckpointStore::claim`] takes them over.
    fn held_by_others(&self, run: i64) -> Result<u64, StoreError>;
    /// How many of `run`'s items ended failed: read often by runners that share a run under
    /// `max_failures`, so cheap however many items the run has.
    fn failed_items(&self, run: i64) -> Result<u64, StoreError>;
    /// Cancelled when this runner lost its claim on the run (a PostgreSQL store's lease); never,
    /// for a store with one runner.
    fn lost(&self) -> Option<tokio_util::sync::CancellationToken>;
    /// Why this runner lost its claim on the run, once it did.
    fn lost_because(&self) -> Option<String>;
    /// Items per state.
    fn counts(&self, run: i64) -> Result<BTreeMap<&'static str, u64>, StoreError>;
    /// The status report of a run, listing at most `limit` failed and `limit` skipped items.
    fn status(&self, run: &RunInfo, limit: u64) -> Result<StatusReport, StoreError>;
    /// Put a run's failed items back to pending with their attempts reset; returns how many.
    fn reset_failed(&self, run: i64) -> Result<u64, StoreError>;
    /// The last error kept for `run`'s item `seq` (of its last failed attempt, or its death).
    fn last_error(&self, run: i64, seq: i64) -> Result<Option<String>, StoreError>;
    /// The attempts processes died in during `run`, per item and stage (the item's row may be
    /// at an earlier stage: its move was not committed when the process died).
    fn deaths(&self, run: i64) -> Result<Vec<Death>, StoreError>;
    /// How many of `run`'s items did not end failed or skipped at the stage where they are now
    /// in an earlier run of `pipeline` (a key that got further is progress).
    fn keys_not_ended_before(&self, pipeline: &str, run: i64) -> Result<u64, StoreError>;
    /// A process died (or was ended by the watchdog) during these attempts `(key, stage,
    /// attempt)` of `run`: each counts as used, durably, before anything else runs. Idempotent:
    /// an item's attempts only ever rise to the attempt's number. Returns how many items
    /// changed.
    fn count_died_attempts(
        &self,
        run: i64,
        died: &[(String, String, u32)],
    ) -> Result<u64, StoreError>;
    /// A writer of item updates for `run` (one at a time).
    fn update_writer(&self, run: i64) -> Result<Box<dyn UpdateWriter>, StoreError>;
    /// The store's response cache, on a connection of its own.
    fn response_cache(&self) -> Result<SharedCache, StoreError>;
    /// Keep `record_json` as `pipeline`'s process record (the flight record of the process
    /// running it), replacing the one before. Made to be called from a background thread while
    /// the run commits: it uses a connection of its own, never holds up the update writer, and
    /// waits for a lock at most 2 s, failing after.
    fn save_process(&self, pipeline: &str, record_json: &str) -> Result<(), StoreError>;
    /// The last process record saved for `pipeline`.
    fn load_process(&self, pipeline: &str) -> Result<Option<String>, StoreError>;
    /// The process records of `pipeline`'s runners that are gone without an orderly stop (their
    /// lease ran out: killed, or cut off) and that no later runner reported yet, with their
    /// ids, newest first, at most [`DEAD_REPORTED`]. None for a store with one runner, whose
    /// one record is [`CheckpointStore::load_process`]'s.
    fn dead_processes(&self, pipeline: &str) -> Result<Vec<(i64, String)>, StoreError>;
    /// The runners `ids` (of [`CheckpointStore::dead_processes`]) were reported: not again.
    fn processes_reported(&self, ids: &[i64]) -> Result<(), StoreError>;
    /// Whether some process holds `pipeline`'s runner lock right now (SQLite: the store's,
    /// whatever the pipeline). Never waits; a SQLite store's lock is tried and let go at once.
    fn runner_active(&self, pipeline: &str) -> Result<bool, StoreError>;
    /// Keep `end` in `pipeline`'s history; `None`: count a check that found nothing new.
    /// As [`CheckpointStore::save_process`]: a connection of its own, a lock waited for at
    /// most 2 s.
    fn record_end(&self, pipeline: &str, end: Option<&ProcessEnd>) -> Result<(), StoreError>;
    /// `pipeline`'s history: the last `limit` process ends, newest first, and its checks.
    fn history(&self, pipeline: &str, limit: i64) -> Result<History, StoreError>;
}
