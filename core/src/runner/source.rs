//! Taking the batch: the source's read, with its stage's timeout and retry policy, writes the
//! run's manifest in chunks under a run that stays invisible until the read completes. A failed,
//! timed-out or interrupted read leaves nothing that counts, and its rows are cleared by the
//! next attempt, so the next attempt (or the next run) starts clean.

use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::call::panic_message;
use super::control::{AbortReason, Control};
use super::StageRt;
use crate::checkpoint::{CheckpointStore, Duplicates, RunInfo, StoreError};
use crate::stage::{CancelFlag, Context, Emitted, StageError, StageImpl, Stop};
use crate::text;

enum TakeError {
    Stage(StageError),
    Store(StoreError),
    Cancelled,
}

struct Taken {
    run: RunInfo,
    duplicates: Duplicates,
}

/// What taking a batch came to.
pub(crate) enum Took {
    /// The batch, as a run.
    Run(RunInfo),
    /// A stop request came first; nothing was taken.
    Stopped,
    /// Another runner took or is taking a batch since `seen`: look again, and join it.
    Moved,
}

/// Take a new batch; `seen` is the latest run the caller saw (see
/// [`CheckpointStore::begin_run`]). A store that refuses to start it (runners still work on
/// the unfinished run `seen`) is an error of the store.
/// The heartbeat while the batch is read: how many records so far.
fn said_how_far(stage: &StageRt, attempt: u32, read: u64, elapsed: Duration) {
    let message = format!("{} (taking the batch)", crate::telemetry::events::HEARTBEAT);
    if crate::telemetry::json() {
        if tracing::enabled!(tracing::Level::INFO) {
            let fields = serde_json::json!({
                "stage": &*stage.name,
                "attempt": attempt,
                "records_read": read,
                "elapsed_secs": elapsed.as_secs_f64(),
            });
            if let serde_json::Value::Object(fields) = fields {
                crate::telemetry::json_event(false, &message, fields);
            }
        }
        return;
    }
    tracing::info!(
        stage = %stage.name,
        attempt,
        records_read = read,
        elapsed_secs = text::secs(elapsed),
        "{message}"
    );
}

pub(crate) async fn take(
    control: &Arc<Control>,
    stage: &StageRt,
    store: Arc<dyn CheckpointStore>,
    (pipeline, seen): (&str, Option<i64>),
    first_stage: &str,
    limit: Option<u64>,
    heartbeat: Duration,
) -> Result<Result<Took, AbortReason>, StoreError> {
    let StageImpl::Source(source) = &stage.imp else {
        return Ok(Err(AbortReason::Source {
            stage: stage.name.to_string(),
            error: "the first stage is not a source".into(),
        }));
    };
    let retry = &stage.policy.retry;
    let timeout = stage.policy.timeout;
    let mut attempt = 0;
    // While the store's sessions end (a restart, a killed session), the batch is taken again,
    // for as long as a store call is retried ([`crate::checkpoint::RECONNECTING`]).
    let mut lost_since: Option<Instant> = None;
    loop {
        attempt += 1;
        let deadline = Instant::now() + timeout;
        let cancel = CancelFlag::new();
        let cx = Context::new(
            "(batch)",
            stage.name.clone(),
            attempt,
            deadline,
            cancel.clone(),
        );
        let source = source.clone();
        let store = store.clone();
        let pipeline = pipeline.to_owned();
        let first_stage = first_stage.to_owned();
        let read_so_far = Arc::new(AtomicU64::new(0));
        let counter = read_so_far.clone();
        let mut handle = tokio::task::spawn_blocking(move || {
            read(
                &*source,
                &*store,
                (&pipeline, seen),
                &first_stage,
                limit,
                &cx,
                &counter,
            )
        });
        // A long read is not silent: the heartbeat says how far it got.
        let began = Instant::now();
        let mut beat = tokio::time::interval(heartbeat);
        beat.tick().await;
        let result = loop {
            tokio::select! {
                biased;
                () = control.soft.cancelled() => {
                    cancel.cancel();
                    return Ok(Ok(Took::Stopped));
                }
                r = tokio::time::timeout_at(deadline.into(), &mut handle) => break match r {
                    Ok(Ok(result)) => result,
                    Ok(Err(e)) => Err(TakeError::Stage(StageError::permanent(format!("panicked: {}", panic_message(&*e.into_panic()))))),
                    Err(_) => {
                        cancel.cancel();
                        Err(TakeError::Stage(StageError::transient(format!("timed out after {}", text::duration(timeout)))))
                    }
                },
                _ = beat.tick() => said_how_far(stage, attempt, read_so_far.load(Ordering::Relaxed), began.elapsed()),
            }
        };
        let error = match result {
            Ok(taken) => {
                if taken.duplicates.count > 0 {
                    tracing::warn!(
                        stage = %stage.name,
                        duplicates = taken.duplicates.count,
                        first = %taken.duplicates.first.join(", "),
                        "the source yielded repeated keys; each was kept once"
                    );
                }
                return Ok(Ok(Took::Run(taken.run)));
            }
            Err(TakeError::Cancelled) => return Ok(Ok(Took::Stopped)),
            Err(TakeError::Store(StoreError::Moved)) => return Ok(Ok(Took::Moved)),
            Err(TakeError::Store(e @ StoreError::RunInProgress { .. })) => return Err(e),
            Err(TakeError::Store(StoreError::Lost(why)))
                if lost_since.get_or_insert_with(Instant::now).elapsed()
                    < crate::checkpoint::RECONNECTING =>
            {
                // Not an attempt of the source's: nothing of this take counts.
                attempt -= 1;
                tracing::warn!(
                    stage = %stage.name,
                    error = %why,
                    "the checkpoint store's session ended while taking the batch; taking it again"
                );
                tokio::select! {
                    biased;
                    () = control.soft.cancelled() => return Ok(Ok(Took::Stopped)),
                    () = tokio::time::sleep(Duration::from_millis(500)) => {}
                }
                continue;
            }
            Err(TakeError::Store(e)) => return Ok(Err(AbortReason::Checkpoint(e.to_string()))),
            Err(TakeError::Stage(e)) => e,
        };
        if !retry.retries(&error) || attempt >= retry.attempts {
            return Ok(Err(AbortReason::Source {
                stage: stage.name.to_string(),
                error: format!("{} (after {attempt} attempt(s))", error.message),
            }));
        }
        let delay = retry.delay(attempt, error.retry_after, &mut rand::rng());
        tracing::warn!(stage = %stage.name, attempt, error = %error.message, delay_secs = text::secs(delay), "reading the batch failed; retrying");
        tokio::select! {
            biased;
            () = control.soft.cancelled() => return Ok(Ok(Took::Stopped)),
            () = tokio::time::sleep(delay) => {}
        }
    }
}

fn read(
    source: &dyn crate::stage::Source,
    store: &dyn CheckpointStore,
    (pipeline, seen): (&str, Option<i64>),
    first_stage: &str,
    limit: Option<u64>,
    cx: &Context,
    read_so_far: &AtomicU64,
) -> Result<Taken, TakeError> {
    let mut manifest = store
        .begin_run(pipeline, first_stage, seen)
        .map_err(TakeError::Store)?;
    let mut taken = 0u64;
    let mut store_error = None;
    let mut emit = |emitted: Emitted| -> Result<(), Stop> {
        if cx.cancel_flag().is_cancelled() || limit.is_some_and(|l| taken >= l) {
            return Err(Stop);
        }
        // A record is stored as its fields, a JSON object; an unreadable item as its error and
        // what fields it had, a JSON array, which no record can be (see [`unreadable`]).
        let (key, stored) = match emitted {
            Emitted::Record(record) => (
                record.key,
                serde_json::to_string(&record.fields).expect("JSON values always serialize"),
            ),
            Emitted::Unreadable { key, error, fields } => (
                key,
                serde_json::to_string(&(text::bounded(error), fields))
                    .expect("JSON values always serialize"),
            ),
        };
        if let Err(e) = manifest.add(&key, &stored) {
            store_error = Some(e);
            return Err(Stop);
        }
        taken += 1;
        read_so_far.store(taken, Ordering::Relaxed);
        Ok(())
    };
    let result = std::panic::catch_unwind(AssertUnwindSafe(|| source.read(limit, cx, &mut emit)));
    if let Some(e) = store_error {
        return Err(TakeError::Store(e));
    }
    if cx.cancel_flag().is_cancelled() {
        return Err(TakeError::Cancelled);
    }
    // A source stops quietly at its deadline too (`Context::is_cancelled`): what it read by
    // then is not the batch, and must not be committed as one.
    if cx.remaining().is_zero() {
        return Err(TakeError::Stage(StageError::transient(
            "timed out: the read stopped at its deadline (`timeout`)",
        )));
    }
    match result {
        Ok(Ok(())) => {}
        Ok(Err(e)) => return Err(TakeError::Stage(e)),
        Err(panic) => {
            return Err(TakeError::Stage(StageError::permanent(format!(
                "panicked: {}",
                panic_message(&*panic)
            ))))
        }
    }
    let (run, duplicates) = manifest.commit().map_err(TakeError::Store)?;
    Ok(Taken { run, duplicates })
}

/// The error and fields of an item the source could not read (stored as a JSON array where a
/// record stores its fields, an object), or `None` for a record.
pub(crate) fn unreadable(stored: &str) -> Option<(String, crate::stage::Fields)> {
    if !stored.starts_with('[') {
        return None;
    }
    serde_json::from_str(stored).ok()
}
