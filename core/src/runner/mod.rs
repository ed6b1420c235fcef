//! The runner: builds the stages, takes or resumes a run, feeds its items through the stages,
//! and stops in order — on completion, a signal, `max_run_time`, or an abort — always saving
//! the checkpoint and writing a summary.
//!
//! Tasks: one per item in flight (bounded by the sum of the stages' concurrency), spawned
//! through one tracker; a checkpoint writer; the heartbeat; the liveness tick. Beside the
//! runtime, on threads of their own: the [`watchdog`] (signals, and the process's end when the
//! runtime or the drain is stuck) and the log writer. Shutdown is close → cancel → wait, driven
//! by [`control::Control`]. The [flight recorder](crate::flight) keeps what the process is doing
//! in a file, for the next run and `status` when this one dies without a summary.

mod blackbox;
mod call;
pub(crate) mod control;
mod item;
mod metrics;
mod source;
mod stats;
mod telemetry;
mod watchdog;
mod window;

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::checkpoint::writer::Checkpointer;
use crate::checkpoint::{CheckpointStore, RunStatus, StoreError};
use crate::flight::Recorder;
use crate::policy::adaptive::Adaptive;
use crate::policy::rate::RateGate;
use crate::policy::Policy;
use crate::registry::Registry;
use crate::spec::{MaxFailures, Pipeline, StoreLocation};
use crate::stage::BuildContext;
use crate::stage::Record;
use crate::stage::StageImpl;
pub(crate) use blackbox::{describe_in_flight, previous_process, unreadable_record};
use control::{AbortReason, Control};
use item::WorkItem;
pub use stats::Latency;
use stats::{Counter, StageStats};
pub use telemetry::{StageSummary, Summary};
pub use watchdog::{hold_signals, stop_requested_early};

/// Items read from the store per page when feeding, with one runner.
const PAGE: usize = 512;
/// Most items claimed at once, with several runners: few, so that runners starting together
/// share the work.
const CLAIM: usize = 16;
/// How often a runner with nothing left to claim looks again while others hold items.
const OTHERS_POLL: Duration = Duration::from_millis(500);
/// How long the runtime waits for stuck blocking threads at exit before leaving them.
const RUNTIME_SHUTDOWN: Duration = Duration::from_millis(500);

/// How a run ended, and the exit code it maps to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// Every item done or skipped.
    Finished,
    /// Finished; some items failed permanently (under `max_failures`).
    FinishedWithFailures,
    /// Finished without progress: every item failed or was skipped, each of them a key that
    /// already ended so in an earlier run; the source keeps taking them again.
    NoProgress,
    /// `max_failures` crossed, a fatal error, a wedged stage, or a broken store.
    Aborted,
    /// Stopped by a signal or `max_run_time`; progress saved.
    Interrupted,
}

impl Exit {
    /// The process exit code (see the exit-code table in the docs).
    pub fn code(self) -> i32 {
        match self {
            Exit::Finished => 0,
            Exit::FinishedWithFailures | Exit::NoProgress => 1,
            Exit::Aborted => 3,
            Exit::Interrupted => 75,
        }
    }
}

/// What `run` and `retry-failed` ask for.
#[derive(Debug, Clone, Copy, Default)]
pub struct RunOptions {
    /// Start a new run even if the last one is unfinished.
    pub fresh: bool,
    /// Put the latest run's failed items back to pending first.
    pub retry_failed: bool,
    /// With `retry_failed`: that run (by number) rather than the latest.
    pub run: Option<i64>,
    /// With `fresh`: leaving an unfinished run's items behind is agreed to (`--yes`, or no one
    /// at a terminal to ask). Without it, a fresh run beside an unfinished one is refused.
    pub leave_unfinished: bool,
}

/// A run that could not start: nothing was processed (exit 2).
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// A stage could not be built.
    #[error("stage `{stage}`: {message}")]
    Build {
        /// The stage.
        stage: String,
        /// Why.
        message: String,
    },
    /// The checkpoint store cannot be used.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A state file's path cannot be used (a symbolic link is there).
    #[error("{0}")]
    StateFile(std::io::Error),
    /// The async runtime could not start.
    #[error("cannot start the runtime: {0}")]
    Runtime(std::io::Error),
    /// `[telemetry] listen` cannot be served (the address is taken, or not this machine's).
    #[error("cannot serve metrics on `[telemetry] listen` = {listen}: {error}")]
    Telemetry {
        /// The address.
        listen: std::net::SocketAddr,
        /// Why.
        error: std::io::Error,
    },
    /// `retry-failed` with no run to retry.
    #[error("no run of pipeline `{0}` yet: nothing to retry")]
    NoRun(String),
    /// `run --fresh` at a terminal, without `--yes`, while the latest run is unfinished.
    #[error("run {run} of pipeline `{pipeline}` is unfinished: {left} of its items are not done yet, and `--fresh` would leave them behind for good; run without `--fresh` to finish it, or add `--yes` to leave them")]
    FreshWouldLeave {
        /// The pipeline.
        pipeline: String,
        /// The unfinished run.
        run: i64,
        /// Its items not ended.
        left: u64,
    },
    /// `retry-failed --run N` with no such run.
    #[error(
        "pipeline `{pipeline}` has no run {run} with items (`stagewise status` shows the latest)"
    )]
    NoSuchRun {
        /// The pipeline.
        pipeline: String,
        /// The run asked for.
        run: i64,
    },
}

/// One stage, built and ready.
pub(crate) struct StageRt {
    pub name: Arc<str>,
    pub index: usize,
    pub imp: StageImpl,
    pub policy: Policy,
    /// Items in the stage at once.
    pub slots: Arc<Semaphore>,
    /// Threads of a blocking stage; a permit lives as long as its thread's call.
    pub pool: Option<Arc<Semaphore>>,
    /// Attempts started no faster than `rate_limit`.
    pub rate: Option<RateGate>,
    pub stats: StageStats,
    /// The stage's own figures (see [`crate::stage::Meter`]).
    pub meter: crate::stage::Meter,
    /// How many attempts may be under way, adapted to the service's overload signals.
    pub adaptive: Adaptive,
    /// The circuit breaker (`breaker`), if the stage has one.
    pub breaker: Option<Arc<crate::policy::breaker::Breaker>>,
    /// The gates of the stage's lanes (see [`crate::stage::Lane`]).
    pub lanes: crate::policy::lanes::Lanes,
    /// Whether the stage has been told to slow down yet (logged once).
    pub slowed: std::sync::atomic::AtomicBool,
    /// The endings of items (at any stage) this stage marks.
    pub marks: crate::stage::Marks,
}

pub(crate) struct Totals {
    pub items: u64,
    pub done: Counter,
    pub failed: Counter,
    pub skipped: Counter,
    /// Items that ended failed or skipped while a stage could not mark them.
    pub unmarked: Counter,
}

impl Totals {
    fn remaining(&self) -> u64 {
        self.items
            .saturating_sub(self.done.get() + self.failed.get() + self.skipped.get())
    }
}

/// What every task of a run shares.
pub(crate) struct Shared {
    /// The run's id in the checkpoint store.
    pub run: i64,
    pub stages: Vec<StageRt>,
    pub control: Arc<Control>,
    pub checkpoint: Checkpointer,
    pub totals: Totals,
    pub max_failures: Option<MaxFailures>,
    /// The flight recorder: the attempts in flight, for whoever reads after a crash.
    pub recorder: Arc<Recorder>,
    /// Whether each item's take-up is made durable before its first attempt in this process
    /// (a PostgreSQL store: a runner that takes the item over after this one died counts
    /// that attempt, see [`CheckpointStore::claim`]).
    pub take_ups: bool,
    /// The attempts earlier processes died in, this run: item key → `(stage, attempt, error)`.
    pub deaths: std::collections::HashMap<String, Vec<(String, u32, String)>>,
    /// In a run shared with other runners, under `max_failures`: its failed items as the store
    /// counts them (see [`RunFailures`]).
    pub run_failed: Option<RunFailures>,
}

/// The failed items of a run shared with other runners: those the store had at its last read,
/// plus this process's own failures not committed before that read. The store's count goes
/// down when `retry-failed` puts items back, and nothing is counted twice.
pub(crate) struct RunFailures {
    /// The run's failed items when this process began: `totals.failed` started from them.
    at_start: u64,
    /// The run's failed items at the store's last read.
    in_store: std::sync::atomic::AtomicU64,
    /// How many of this process's failures were committed before that read began.
    committed_before: std::sync::atomic::AtomicU64,
}

impl RunFailures {
    fn new(at_start: u64) -> Self {
        RunFailures {
            at_start,
            in_store: std::sync::atomic::AtomicU64::new(at_start),
            committed_before: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// The run's failed items, given `totals`, this process's count (which began at
    /// `at_start`).
    pub(crate) fn failed(&self, totals: u64) -> u64 {
        let own = totals.saturating_sub(self.at_start);
        let uncommitted = own.saturating_sub(
            self.committed_before
                .load(std::sync::atomic::Ordering::SeqCst),
        );
        self.in_store.load(std::sync::atomic::Ordering::SeqCst) + uncommitted
    }
}

impl Shared {
    /// Whether some stage marks items that end `kind`.
    pub(crate) fn marking(&self, kind: crate::stage::EndingKind) -> bool {
        self.stages.iter().any(|s| s.marks.takes(kind))
    }

    /// The highest attempt an earlier process died in for item `key` at `stage`, and the error
    /// kept for it. (Empty, the common case: one length check.)
    pub(crate) fn died_at(&self, key: &str, stage: &str) -> Option<(u32, &str)> {
        if self.deaths.is_empty() {
            return None;
        }
        self.deaths
            .get(key)?
            .iter()
            .find(|(s, _, _)| s == stage)
            .map(|(_, attempt, error)| (*attempt, error.as_str()))
    }
}

fn build_stages(
    pipeline: &Pipeline,
    registry: &Registry,
    cache: &crate::stage::SharedCache,
) -> Result<Vec<StageRt>, RunError> {
    let mut out = Vec::with_capacity(pipeline.stages.len());
    for (index, stage) in pipeline.stages.iter().enumerate() {
        let build_error = |message: String| RunError::Build {
            stage: stage.name.clone(),
            message,
        };
        let kind = registry
            .get(&stage.kind)
            .ok_or_else(|| build_error(format!("unknown kind `{}`", stage.kind)))?;
        let cx = BuildContext {
            cache: Some(cache.clone()),
            ..BuildContext::new(
                stage.name.clone(),
                stage.role,
                pipeline.base_dir.clone(),
                stage.policy.concurrency,
                stage.policy.timeout,
            )
        };
        let imp = kind
            .build(&stage.config, &cx)
            .map_err(|e| build_error(e.message))?;
        let pool = matches!(imp, StageImpl::Blocking(_))
            .then(|| Arc::new(Semaphore::new(stage.policy.concurrency)));
        let rate = stage.policy.rate_limit.map(RateGate::new);
        let marks = match &imp {
            StageImpl::Blocking(s) => s.marks(),
            _ => crate::stage::Marks::default(),
        };
        out.push(StageRt {
            marks,
            name: Arc::from(stage.name.as_str()),
            index,
            imp,
            policy: stage.policy.clone(),
            slots: Arc::new(Semaphore::new(stage.policy.concurrency)),
            pool,
            rate,
            stats: StageStats::default(),
            meter: cx.meter,
            adaptive: Adaptive::new(stage.policy.concurrency),
            breaker: stage
                .policy
                .breaker
                .clone()
                .map(|policy| Arc::new(crate::policy::breaker::Breaker::new(policy))),
            lanes: crate::policy::lanes::Lanes::default(),
            slowed: std::sync::atomic::AtomicBool::new(false),
        });
    }
    Ok(out)
}

/// Where the summary of the last run is written: beside a SQLite store; for a PostgreSQL store,
/// in `.stagewise/` beside the pipeline file.
pub fn summary_path(pipeline: &Pipeline) -> std::path::PathBuf {
    beside_store(pipeline, "summary.json")
}

/// Where the flight recorder keeps what the running (or last) process is doing: beside a SQLite
/// store, named after it and the pipeline (two pipeline files of one name on two stores never
/// share it); for a PostgreSQL store, in `.stagewise/` beside the pipeline file.
pub fn flight_path(pipeline: &Pipeline) -> std::path::PathBuf {
    match &pipeline.checkpoint.store {
        StoreLocation::Sqlite(path) => {
            let mut name = path.file_name().unwrap_or_default().to_owned();
            name.push(format!(".{}.flight", pipeline.name));
            path.with_file_name(name)
        }
        // Named after the database too: same-named pipelines in one folder on two databases
        // hold two locks, and must not share one record.
        StoreLocation::Postgres(_) => beside_store(
            pipeline,
            &format!(
                "{:08x}.flight",
                store_hash(&pipeline.checkpoint.store) as u32
            ),
        ),
    }
}

/// Most runners of one PostgreSQL store's pipeline that keep flight records in one folder.
const FLIGHT_SLOTS: usize = 64;

/// The flight record file of this process, and the lock that keeps it its own while it lives:
/// with a SQLite store, [`flight_path`] (the store's lock makes this the one runner); with a
/// PostgreSQL store, whose runners may share a folder, the first of [`flight_path`],
/// `….1.flight`, … whose lock file no live process holds. `None`: no slot is free.
/// The flight record file of `slot` (see [`flight_slot`]) beside `base`, slot 0's.
fn flight_slot_path(base: &std::path::Path, slot: usize) -> std::path::PathBuf {
    match slot {
        0 => base.to_path_buf(),
        n => base.with_extension(format!("{n}.flight")),
    }
}

/// The flight record files of this pipeline's runners on this machine that are there: slot
/// 0's alone for a SQLite store (one runner), every slot's for a PostgreSQL store.
pub(crate) fn flight_paths(pipeline: &Pipeline) -> Vec<std::path::PathBuf> {
    let base = flight_path(pipeline);
    if !matches!(pipeline.checkpoint.store, StoreLocation::Postgres(_)) {
        return vec![base];
    }
    (0..FLIGHT_SLOTS)
        .map(|slot| flight_slot_path(&base, slot))
        .filter(|path| path.exists())
        .collect()
}

pub(crate) fn flight_slot(
    pipeline: &Pipeline,
) -> std::io::Result<Option<(std::path::PathBuf, Option<std::fs::File>)>> {
    let base = flight_path(pipeline);
    if !matches!(pipeline.checkpoint.store, StoreLocation::Postgres(_)) {
        return Ok(Some((base, None)));
    }
    if let Some(parent) = base.parent() {
        crate::state_file::create_dir(parent)?;
    }
    for slot in 0..FLIGHT_SLOTS {
        let path = flight_slot_path(&base, slot);
        let mut lock = path.clone().into_os_string();
        lock.push(".lock");
        let file = crate::state_file::open(
            std::path::Path::new(&lock),
            crate::state_file::options()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false),
        )?;
        match file.try_lock() {
            Ok(()) => return Ok(Some((path, Some(file)))),
            Err(std::fs::TryLockError::WouldBlock) => {}
            Err(std::fs::TryLockError::Error(e)) => return Err(e),
        }
    }
    Ok(None)
}

/// A stable hash (FNV-1a, 64 bits) of a store as messages show it (its URL without the
/// password), to tell files of same-named pipelines on different stores apart.
fn store_hash(store: &StoreLocation) -> u64 {
    store
        .shown()
        .bytes()
        .fold(0xcbf2_9ce4_8422_2325, |h: u64, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
        })
}

/// `<name>.<extension>` beside a SQLite store, or in `.stagewise/` beside the pipeline file.
fn beside_store(pipeline: &Pipeline, extension: &str) -> std::path::PathBuf {
    let file = format!("{}.{extension}", pipeline.name);
    match &pipeline.checkpoint.store {
        StoreLocation::Sqlite(path) => path
            .parent()
            .unwrap_or_else(|| std::path::Path::new("."))
            .join(file),
        StoreLocation::Postgres(_) => pipeline.base_dir.join(".stagewise").join(file),
    }
}

/// Run a pipeline to its end (or its interruption). Builds its own runtime, sized so that the
/// blocking threads are bounded by the stages' pools.
pub fn run(
    pipeline: &Pipeline,
    registry: &Registry,
    options: RunOptions,
) -> Result<Summary, RunError> {
    // A link planted where the runner writes its own files would have it write through it.
    for path in [summary_path(pipeline), flight_path(pipeline)] {
        crate::state_file::refuse_link(&path).map_err(RunError::StateFile)?;
    }
    // Bound before anything is opened: an address that cannot be served changes nothing.
    let (exposed, _server) = metrics::start(pipeline)?;
    // The store first: a store that cannot be used must stop the run before any stage opens
    // (and perhaps creates) its files. Its lock makes this the pipeline's only runner, so the
    // flight recorder's file is this process's to read and to overwrite.
    let (store, _lock) = crate::checkpoint::open_for_run(
        &pipeline.checkpoint.store,
        (&pipeline.name, &pipeline.stage_list()),
        pipeline.checkpoint.lease(pipeline.heartbeat),
    )?;
    let (recorder, _slot) = blackbox::open(pipeline, &*store).map_err(RunError::Runtime)?;
    let result = run_recorded(
        pipeline,
        registry,
        options,
        (store.clone(), &recorder),
        &exposed,
    );
    // Ended with a summary, or with a logged reason why nothing ran.
    blackbox::ended(pipeline, &store, &recorder);
    result
}

fn run_recorded(
    pipeline: &Pipeline,
    registry: &Registry,
    options: RunOptions,
    (store, recorder): (Arc<dyn CheckpointStore>, &Arc<Recorder>),
    exposed: &metrics::Exposed,
) -> Result<Summary, RunError> {
    let stages = build_stages(pipeline, registry, &store.response_cache()?)?;
    let pools: usize = stages
        .iter()
        .filter_map(|s| s.pool.as_ref().map(|_| s.policy.concurrency))
        .sum();
    // Pools, plus the source's read, the store's pages and commits, and one spare.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("stagewise")
        .max_blocking_threads(pools + 4)
        .build()
        .map_err(RunError::Runtime)?;
    let control = Arc::new(Control::new(
        pipeline.shutdown_grace,
        runtime.handle().clone(),
        store.lost(),
    ));
    exposed.controlled_by(&control);
    let watchdog = watchdog::start(
        control.clone(),
        pipeline.watchdog,
        pipeline.max_run_time,
        recorder.clone(),
    )
    .map_err(RunError::Runtime)?;
    // The runtime's sign of life, for the watchdog and the flight recorder, until the run has
    // ended (its summary written).
    let ticking = CancellationToken::new();
    {
        let (control, recorder, ticking) = (control.clone(), recorder.clone(), ticking.clone());
        runtime.spawn(async move {
            let mut tick = tokio::time::interval(watchdog::TICK);
            loop {
                tokio::select! {
                    _ = tick.tick() => {
                        control.alive();
                        recorder.touch();
                    }
                    () = ticking.cancelled() => return,
                }
            }
        });
    }
    let result = runtime.block_on(execute(
        pipeline,
        stages,
        store,
        options,
        (control, recorder.clone()),
        exposed,
    ));
    ticking.cancel();
    runtime.shutdown_timeout(RUNTIME_SHUTDOWN);
    drop(watchdog);
    result
}

async fn execute(
    pipeline: &Pipeline,
    stages: Vec<StageRt>,
    store: Arc<dyn CheckpointStore>,
    options: RunOptions,
    (control, recorder): (Arc<Control>, Arc<Recorder>),
    exposed: &metrics::Exposed,
) -> Result<Summary, RunError> {
    let began = Instant::now();
    let done = CancellationToken::new();
    // A runner that lost its claim on the run (a lease expired: paused, cut off) stops at once.
    // Its lease's clock is read a few times a second too: renewals that do not get through (a
    // partition that holds them, a server that does not answer) lose the runner all the same.
    if let Some(lost) = store.lost() {
        let (control, store, ended) = (control.clone(), store.clone(), done.clone());
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(LEASE_CHECK);
            loop {
                tokio::select! {
                    () = lost.cancelled() => {}
                    () = ended.cancelled() => return,
                    _ = tick.tick() => {
                        if store.lost_because().is_none() {
                            continue;
                        }
                    }
                }
                control.fence(&store.lost_because().unwrap_or_default());
                return;
            }
        });
    }
    let mut again = false;
    let (run, resumed) = loop {
        match decide(pipeline, &stages, &store, options, (&control, again)).await? {
            Decided::Again => {
                again = true;
                // Another runner is taking a batch: join it once its manifest is in.
                tokio::select! {
                    () = control.soft.cancelled() => break (None, false),
                    () = tokio::time::sleep(TAKING_POLL) => {}
                }
            }
            Decided::Run(run, resumed) => break (run, resumed),
        }
    };
    let Some(run) = run else {
        // Nothing was taken: a stop request or an abort came before the batch.
        let exit = if control.abort_reason().is_some() {
            Exit::Aborted
        } else {
            Exit::Interrupted
        };
        done.cancel();
        control.settle();
        let summary = telemetry::summarize(pipeline, None, &stages, None, exit, &control, began);
        tokio::task::block_in_place(|| exposed.end(pipeline, &summary, &control));
        telemetry::finish(pipeline, &summary, &recorder);
        return Ok(summary);
    };
    let counts = store.counts(run.id)?;
    // A take that found nothing was said so already: no run starts.
    if run.items > 0 || resumed {
        tracing::info!(
            pipeline = %pipeline.name,
            run = run.id,
            items = run.items,
            resumed,
            done = counts["done"],
            failed = counts["failed"],
            skipped = counts["skipped"],
            "run started"
        );
    }
    let (checkpoint, writer) = Checkpointer::start(
        &*store,
        run.id,
        pipeline.checkpoint.commit_interval,
        pipeline.checkpoint.commit_max_items,
    )?;
    // Once stopped, a store that does not answer may hold the run for the grace and a second
    // more, not for its own timeouts: a commit it does not take by then fails (exit 3).
    let (stopping, grace) = (checkpoint.clone(), pipeline.shutdown_grace);
    let (soft, ended) = (control.soft.clone(), done.clone());
    tokio::spawn(async move {
        tokio::select! {
            () = soft.cancelled() => {
                let now = Instant::now();
                let at = grace
                    .checked_add(Duration::from_secs(1))
                    .and_then(|wait| now.checked_add(wait));
                if let Some(at) = at {
                    stopping.set_deadline(at);
                }
            }
            () = ended.cancelled() => {}
        }
    });
    let window: usize = stages
        .iter()
        .skip(1)
        .map(|s| s.policy.concurrency)
        .sum::<usize>()
        .max(1);
    let shared = Arc::new(Shared {
        run: run.id,
        stages,
        control: control.clone(),
        checkpoint,
        totals: Totals {
            items: run.items,
            done: Counter::default(),
            failed: Counter::default(),
            skipped: Counter::default(),
            unmarked: Counter::default(),
        },
        max_failures: pipeline.max_failures,
        recorder: recorder.clone(),
        take_ups: blackbox::copied(pipeline),
        deaths: {
            let mut deaths: std::collections::HashMap<String, Vec<(String, u32, String)>> =
                std::collections::HashMap::new();
            for d in store.deaths(run.id)? {
                deaths
                    .entry(d.key)
                    .or_default()
                    .push((d.stage, d.attempt, d.error));
            }
            deaths
        },
        run_failed: (store.lost().is_some() && pipeline.max_failures.is_some())
            .then(|| RunFailures::new(counts["failed"])),
    });
    recorder.set_run(run.id);
    exposed.running(&shared, began);
    if blackbox::copied(pipeline) {
        // The store's copy names the run from the start: should this process die before its
        // first heartbeat with its disk, the next one counts the take-ups of the right run.
        blackbox::save(&*store, &pipeline.name, &recorder);
    }
    shared.totals.done.add(counts["done"]);
    shared.totals.failed.add(counts["failed"]);
    shared.totals.skipped.add(counts["skipped"]);
    if let Some(limit) = pipeline.max_failures {
        let failed = shared.totals.failed.get();
        if limit.crossed(failed, run.items) {
            control.abort(AbortReason::MaxFailures {
                failed,
                limit: limit.to_string(),
                hint: Some("fix the cause, then `stagewise retry-failed` or `run --fresh`"),
                by_the_end: None,
            });
        }
    }
    tokio::spawn(telemetry::heartbeat(
        shared.clone(),
        blackbox::copied(pipeline).then(|| store.clone()),
        pipeline.name.clone(),
        pipeline.heartbeat,
        pipeline.watchdog,
        done.clone(),
        began,
    ));

    let shared_run = store.lost().is_some();
    // Watched while items run: once they ended, the totals become the store's (see
    // `settle_shared`), which the watch would count twice.
    let fed = CancellationToken::new();
    if shared.run_failed.is_some() {
        tokio::spawn(watch_the_budget(
            shared.clone(),
            store.clone(),
            run.id,
            fed.clone(),
        ));
    }
    let tracker = TaskTracker::new();
    if let Err(e) = feed(&shared, &store, run.id, window, &tracker).await {
        control.abort(AbortReason::Checkpoint(e.to_string()));
    }
    tracker.close();
    let store_shown = pipeline.checkpoint.store.shown();
    tokio::select! {
        () = tracker.wait() => {}
        () = control.soft.cancelled() => {
            // Stopping: the items still here hand their last updates to the store's writer,
            // which a store that does not answer holds up (the watchdog names it).
            control.waiting_on(Some(format!(
                "the checkpoint store {store_shown} to take the last updates"
            )));
            tracker.wait().await;
        }
    }
    fed.cancel();

    // With other runners, where the run stands is in the store: their items too.
    let mut remaining = shared.totals.remaining();
    if shared_run && !control.soft.is_cancelled() {
        remaining = settle_shared(&shared, &*store, run.id).await;
    }
    let (exit, status) = if control.fenced() {
        (Exit::Interrupted, RunStatus::Interrupted)
    } else if control.abort_reason().is_some() {
        (Exit::Aborted, RunStatus::Aborted)
    } else if remaining == 0 {
        if shared.totals.failed.get() > 0 {
            (Exit::FinishedWithFailures, RunStatus::Finished)
        } else {
            (Exit::Finished, RunStatus::Finished)
        }
    } else {
        (Exit::Interrupted, RunStatus::Interrupted)
    };
    let mut exit = exit;
    control.waiting_on(Some(format!(
        "the checkpoint store {store_shown} to take the last updates"
    )));
    // A fenced runner saves nothing more, not even its status.
    let flushed = if control.fenced() {
        Ok(())
    } else {
        shared.checkpoint.flush(Some(status)).await
    };
    control.waiting_on(None);
    let store_answered = flushed.is_ok();
    if let Err(e) = flushed {
        control.abort(AbortReason::Checkpoint(e.0));
        exit = if control.fenced() {
            Exit::Interrupted
        } else {
            Exit::Aborted
        };
    }
    // Judged on the committed state: where each item ended.
    // (`retry-failed` took no batch from the source: it is judged as any run's end.)
    if matches!(exit, Exit::Finished | Exit::FinishedWithFailures)
        && !options.retry_failed
        && no_progress(&shared, &*store, &pipeline.name, run.id)
    {
        tracing::warn!(
            run = run.id,
            failed = shared.totals.failed.get(),
            skipped = shared.totals.skipped.get(),
            "{}",
            telemetry::no_progress(&shared.stages, &shared.totals)
        );
        exit = Exit::NoProgress;
    }
    done.cancel();
    // Everything is durable after the flush. The writer task ends when the last handle goes;
    // an abandoned call's watcher may keep one alive, so it is not waited for.
    drop(writer);
    control.settle();
    let summary = telemetry::summarize(
        pipeline,
        Some(&run),
        &shared.stages,
        Some(&shared.totals),
        exit,
        &control,
        began,
    );
    // Pushed before the summary is written and logged: the summary stays the last event.
    tokio::task::block_in_place(|| exposed.end(pipeline, &summary, &control));
    telemetry::finish(pipeline, &summary, &recorder);
    // A take that found nothing is a check, counted; a run's process is an entry. Not to a
    // store that did not take the last updates: the summary file has it.
    if store_answered {
        record_end(
            &store,
            pipeline,
            &summary,
            &recorder,
            run.items > 0 || resumed,
        );
    }
    Ok(summary)
}

/// Keep this process's end in the store's history (`stagewise runs`), or, where it found
/// nothing to do (`ran` false), count the check. A store that does not take it is said, and
/// changes nothing else: the summary file has it.
fn record_end(
    store: &Arc<dyn CheckpointStore>,
    pipeline: &Pipeline,
    summary: &telemetry::Summary,
    recorder: &crate::flight::Recorder,
    ran: bool,
) {
    let end = summary.run.filter(|_| ran).map(|id| {
        let count = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
        crate::checkpoint::ProcessEnd {
            id,
            started: recorder.snapshot().started_at,
            ended: String::new(),
            outcome: summary.outcome.to_owned(),
            exit_code: i64::from(summary.exit_code),
            items: count(summary.items),
            done: count(summary.done),
            failed: count(summary.failed),
            skipped: count(summary.skipped),
            reason: summary.reason.clone(),
            pid: i64::from(std::process::id()),
            host: crate::flight::hostname(),
        }
    });
    // On a thread of its own, waited for briefly: a store that stopped answering since the
    // last commit does not hold the exit.
    let (store, name) = (store.clone(), pipeline.name.clone());
    let (sent, kept) = std::sync::mpsc::channel();
    let started = std::thread::Builder::new()
        .name("stagewise-history".into())
        .spawn(move || {
            let _ = sent.send(store.record_end(&name, end.as_ref()));
        });
    let why = match started.map(|_| kept.recv_timeout(HISTORY_WAIT)) {
        Ok(Ok(Ok(()))) => return,
        Ok(Ok(Err(e))) => e.to_string(),
        Ok(Err(_)) => format!(
            "the store did not answer within {}",
            crate::text::duration(HISTORY_WAIT)
        ),
        Err(e) => e.to_string(),
    };
    tracing::warn!(error = %why, "cannot keep this process's end in the checkpoint store's history (the summary file has it)");
}

/// How long the end of a run waits for its entry in the store's history.
const HISTORY_WAIT: Duration = Duration::from_secs(1);

/// How often a runner sharing a run reads its lease's clock.
const LEASE_CHECK: Duration = Duration::from_millis(250);
/// How often a runner sharing a run with `max_failures` reads the run's failed items.
const BUDGET_CHECK: Duration = Duration::from_millis(250);

/// Keep `shared.run_failed` to the run's failed items in the store, every runner's, and abort
/// once they cross `max_failures`; until `ended`, or the run stops taking work. A store that
/// does not answer is skipped (the next read counts them).
async fn watch_the_budget(
    shared: Arc<Shared>,
    store: Arc<dyn CheckpointStore>,
    run: i64,
    ended: CancellationToken,
) {
    let Some(failures) = &shared.run_failed else {
        return;
    };
    let soft = shared.control.soft.clone();
    let mut tick = tokio::time::interval(BUDGET_CHECK);
    loop {
        tokio::select! {
            () = ended.cancelled() => return,
            _ = tick.tick() => {}
        }
        // Taken before the read: a failure committed meanwhile may be counted twice for a
        // moment, never not at all.
        let committed = shared.checkpoint.failed_committed();
        let store = store.clone();
        let read = off_the_runtime(&soft, move || store.failed_items(run)).await;
        if ended.is_cancelled() {
            return;
        }
        match read {
            None => return,
            Some(Err(e)) => tracing::debug!(run, error = %e, "cannot read the run's failed items"),
            Some(Ok(failed)) => {
                let ordering = std::sync::atomic::Ordering::SeqCst;
                failures.in_store.store(failed, ordering);
                failures.committed_before.store(committed, ordering);
                item::hold_to_budget(&shared);
            }
        }
    }
}
/// How often a runner waiting for another's batch looks again.
const TAKING_POLL: Duration = Duration::from_millis(250);

/// What [`decide`] came to.
enum Decided {
    /// The run to work on (`None`: nothing was taken, a stop or an abort came first), and
    /// whether it is resumed.
    Run(Option<crate::checkpoint::RunInfo>, bool),
    /// Another runner took or is taking a batch meanwhile: decide again.
    Again,
}

/// Resume the latest run, or take a new batch, as `options` ask.
async fn decide(
    pipeline: &Pipeline,
    stages: &[StageRt],
    store: &Arc<dyn CheckpointStore>,
    options: RunOptions,
    (control, again): (&Arc<Control>, bool),
) -> Result<Decided, RunError> {
    let mut latest =
        match options.run {
            Some(run) => Some(store.run_numbered(&pipeline.name, run)?.ok_or_else(|| {
                RunError::NoSuchRun {
                    pipeline: pipeline.name.clone(),
                    run,
                }
            })?),
            None => store.latest_run(&pipeline.name)?,
        };
    if options.retry_failed {
        let Some(run) = latest.as_mut() else {
            return Err(RunError::NoRun(pipeline.name.clone()));
        };
        let reset = store.reset_failed(run.id)?;
        tracing::info!(
            run = run.id,
            items = reset,
            "failed items put back to pending"
        );
        if reset > 0 {
            run.status = RunStatus::Interrupted;
        }
    }
    if let Some(run) = latest
        .as_ref()
        .filter(|r| options.fresh && r.status != RunStatus::Finished)
    {
        // Said before a new batch hides it: `status` and `run` show the new one from then on.
        let counts = store.counts(run.id)?;
        let left = counts["pending"] + counts["in_flight"];
        if left > 0 && !again {
            if !options.leave_unfinished {
                return Err(RunError::FreshWouldLeave {
                    pipeline: pipeline.name.clone(),
                    run: run.id,
                    left,
                });
            }
            tracing::warn!(
                run = run.id,
                left,
                "`--fresh`: the unfinished run's items not done yet are left behind (`retry-failed --run N` does not take them; they stay in the store)"
            );
        }
    }
    Ok(match latest {
        Some(run) if run.status != RunStatus::Finished && !options.fresh => {
            Decided::Run(Some(run), true)
        }
        // `retry-failed` on a finished run with nothing failed: nothing to do, and no new batch.
        Some(run) if options.retry_failed => {
            tracing::info!(run = run.id, "no failed items to retry");
            Decided::Run(Some(run), true)
        }
        _ => {
            // Items start at the stage after the source (or end at once in a one-stage pipeline).
            let first = stages.get(1).map_or("", |s| &*s.name);
            // Said once, not at each look while another runner takes the batch.
            if !again {
                tracing::info!(
                    pipeline = %pipeline.name,
                    source = %stages[0].name,
                    batch_size = pipeline.batch_size.map_or_else(|| "all".to_owned(), |n| n.to_string()),
                    "taking a new batch"
                );
            }
            let taken = source::take(
                control,
                &stages[0],
                store.clone(),
                (&pipeline.name, latest.as_ref().map(|r| r.id)),
                first,
                pipeline.batch_size,
                pipeline.heartbeat,
            )
            .await?;
            match taken {
                Ok(source::Took::Run(run)) if run.items == 0 => {
                    let latest = latest.as_ref().map_or_else(
                        || "none yet".to_owned(),
                        |r| format!("run {} ({} items)", r.id, r.items),
                    );
                    tracing::info!(
                        pipeline = %pipeline.name,
                        latest = %latest,
                        "the source has nothing new; `status` and `retry-failed` go on showing the latest run with items"
                    );
                    Decided::Run(Some(run), false)
                }
                Ok(source::Took::Run(run)) => Decided::Run(Some(run), false),
                Ok(source::Took::Stopped) => Decided::Run(None, false),
                Ok(source::Took::Moved) => {
                    tracing::debug!(
                        pipeline = %pipeline.name,
                        "another runner took a new batch meanwhile (or is taking one): joining it"
                    );
                    Decided::Again
                }
                Err(reason) => {
                    control.abort(reason);
                    Decided::Run(None, false)
                }
            }
        }
    })
}

/// `f` on a blocking thread; `None` if `stop` came first (the call is left to end by itself).
async fn off_the_runtime<R: Send + 'static>(
    stop: &CancellationToken,
    f: impl FnOnce() -> Result<R, StoreError> + Send + 'static,
) -> Option<Result<R, StoreError>> {
    let call = tokio::task::spawn_blocking(f);
    tokio::select! {
        biased;
        () = stop.cancelled() => None,
        r = call => Some(r.unwrap_or_else(|e| Err(StoreError::Db(format!("the store's call panicked: {e}"))))),
    }
}

/// Once a runner sharing the run has nothing left to claim and its own items ended: its
/// updates committed, the run's counts from the store, as the totals (the summary's); returns
/// how many items are unfinished (another runner's, which ended its lease since).
async fn settle_shared(shared: &Shared, store: &dyn CheckpointStore, run: i64) -> u64 {
    if shared.checkpoint.flush(None).await.is_err() {
        // The writer said why; the run's own end reports it.
        return shared.totals.remaining();
    }
    let counts = match tokio::task::block_in_place(|| store.counts(run)) {
        Ok(counts) => counts,
        Err(e) => {
            tracing::warn!(run, error = %e, "cannot read where the run stands");
            return shared.totals.remaining();
        }
    };
    // The store's, whether higher (the others' items) or lower (`retry-failed` put some back).
    let totals = &shared.totals;
    for (counter, state) in [
        (&totals.done, "done"),
        (&totals.failed, "failed"),
        (&totals.skipped, "skipped"),
    ] {
        counter.set(counts[state]);
    }
    counts["pending"] + counts["in_flight"]
}

/// Whether a finished run made no progress: it had items, none is done, and every one of them
/// is a key that already ended failed or skipped in an earlier run of the pipeline. A store
/// that cannot say is taken as progress (the run's own outcome stands).
fn no_progress(shared: &Shared, store: &dyn CheckpointStore, pipeline: &str, run: i64) -> bool {
    let totals = &shared.totals;
    if totals.items == 0 || totals.done.get() > 0 {
        return false;
    }
    match store.keys_not_ended_before(pipeline, run) {
        Ok(fresh) => fresh == 0,
        Err(e) => {
            tracing::debug!(error = %e, "cannot tell whether the run made progress");
            false
        }
    }
}

/// Take the run's items and start a task for each, keeping at most `window` in flight: page
/// by page with one runner; with several (a PostgreSQL store), claimed a few at a time, as
/// places free up, and waiting while others hold the rest (to take over from one that dies).
/// Stops early on a stop request.
async fn feed(
    shared: &Arc<Shared>,
    store: &Arc<dyn CheckpointStore>,
    run: i64,
    window: usize,
    tracker: &TaskTracker,
) -> Result<(), StoreError> {
    let window = window::Window::new(window);
    let soft = &shared.control.soft;
    let claims = store.lost().is_some();
    let mut after = 0;
    let mut waiting = false;
    loop {
        if soft.is_cancelled() {
            return Ok(());
        }
        // A claim is for items about to start: as many as the window has places for.
        let want = if claims {
            window.free().clamp(1, CLAIM)
        } else {
            PAGE
        };
        // On a thread of its own, so that a stop is not held up by a store that does not
        // answer (the drain then reports it, bounded by the grace).
        let page = {
            let store = store.clone();
            off_the_runtime(soft, move || store.claim(run, after, want)).await
        };
        let Some(page) = page else { return Ok(()) };
        let page = page?;
        if page.is_empty() {
            let others = {
                let store = store.clone();
                off_the_runtime(soft, move || store.held_by_others(run)).await
            };
            let Some(others) = others else { return Ok(()) };
            let others = others?;
            if others == 0 {
                return Ok(());
            }
            if !waiting {
                tracing::info!(
                    run,
                    held_by_others = others,
                    "nothing left to claim: waiting for the other runners' items to end (those of a runner that dies are taken over when its lease expires)"
                );
                waiting = true;
            }
            tokio::select! {
                () = soft.cancelled() => return Ok(()),
                () = tokio::time::sleep(OTHERS_POLL) => {}
            }
            continue;
        }
        waiting = false;
        for stored in page {
            after = stored.seq;
            if soft.is_cancelled() {
                return Ok(());
            }
            let permit = tokio::select! {
                biased;
                p = window.enter() => p,
                () = soft.cancelled() => return Ok(()),
            };
            let key: Arc<str> = Arc::from(stored.key.as_str());
            let stage = match stored.stage.as_deref() {
                None => Ok(1),
                // A pipeline that is only a source: nothing to do per item.
                Some("") => Ok(shared.stages.len()),
                Some(name) => shared
                    .stages
                    .iter()
                    .position(|s| &*s.name == name && s.index > 0)
                    .ok_or_else(|| format!("the checkpoint puts this item at stage `{name}`, which is not in the pipeline (run with --fresh to start over)")),
            };
            if let Some((error, fields)) = source::unreadable(&stored.record) {
                // The source could not read it: it fails there, marked like any other.
                tracker.spawn(item::fail_unresumable(
                    shared.clone(),
                    (stored.seq, Record::with_fields(stored.key, fields)),
                    shared.stages[0].name.to_string(),
                    error,
                    ("the source could not read this item", permit),
                ));
                continue;
            }
            let fields = serde_json::from_str::<crate::stage::Fields>(&stored.record)
                .map_err(|e| format!("the checkpointed record is not a JSON object: {e}"));
            match (stage, fields) {
                (Ok(stage), Ok(fields)) if stage < shared.stages.len() => {
                    let item = WorkItem {
                        seq: stored.seq,
                        key: key.clone(),
                        record: Record::with_fields(stored.key, fields),
                        stage,
                        used: stored.attempts,
                        // Read only where attempts were used (rare): not on every item's path.
                        last_error: if stored.attempts > 0 {
                            tokio::task::block_in_place(|| store.last_error(run, stored.seq))
                                .unwrap_or(None)
                        } else {
                            None
                        },
                        since: stored.since,
                    };
                    tracker.spawn(item::run_item(shared.clone(), item, permit));
                }
                (Ok(stage), Ok(_)) if stage == shared.stages.len() => {
                    shared.totals.done.incr();
                    shared
                        .checkpoint
                        .send(stored.seq, crate::checkpoint::Change::Done)
                        .await
                        .map_err(|e| StoreError::Db(e.0))?;
                }
                (stage, fields) => {
                    let error = stage
                        .err()
                        .or(fields.err())
                        .unwrap_or_else(|| "no stage left to run".into());
                    let stage_name = stored.stage.clone().unwrap_or_default();
                    tracker.spawn(item::fail_unresumable(
                        shared.clone(),
                        (stored.seq, Record::new(stored.key)),
                        stage_name,
                        error,
                        ("item cannot resume", permit),
                    ));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::RunFailures;
    use std::sync::atomic::Ordering::SeqCst;

    #[test]
    fn a_shared_run_s_failures_are_the_store_s_and_what_this_process_did_not_commit() {
        // 5 failed when this process began; its count starts there.
        let f = RunFailures::new(5);
        assert_eq!(f.failed(5), 5);
        // It fails 10, commits none yet: 15.
        assert_eq!(f.failed(15), 15);
        // The store then has its 10 and 20 of the others': its own are not counted twice.
        f.committed_before.store(10, SeqCst);
        f.in_store.store(35, SeqCst);
        assert_eq!(f.failed(15), 35);
        // `retry-failed` put 12 back to pending, its own among them: the store says 23.
        f.in_store.store(23, SeqCst);
        assert_eq!(f.failed(15), 23);
        // 3 more of its own, not committed yet, count at once.
        assert_eq!(f.failed(18), 26);
    }
}
