//! One item's way through the stages, with the policies in their documented order (see
//! [`crate::policy`]): retry → lane → concurrency → breaker → adaptive gate → rate limit →
//! timeout → call, all within the item's deadline at the stage, if it has one.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use tokio::sync::OwnedSemaphorePermit;

use super::call::{self, call, CallError};
use super::control::AbortReason;
use super::window::InFlight;
use super::{Shared, StageRt};
use crate::checkpoint::Change;
use crate::policy::adaptive::{Adaptive, OwnedPlace};
use crate::policy::breaker::{Admitted, Breaker};
use crate::policy::retry::{retrying, retrying_by, Attempt, Ended, ItemDeadline, RetryEvents};
use crate::stage::{Ending, EndingKind, ErrorClass, Outcome, Record, StageError, StageImpl};
use crate::text;

/// An item ready to run from stage `stage` on.
pub(crate) struct WorkItem {
    pub seq: i64,
    pub key: Arc<str>,
    pub record: Record,
    pub stage: usize,
    /// Attempts already used at `stage` by earlier processes (failed, timed out, or ended by
    /// the process's death), and the last one's error.
    pub used: u32,
    pub last_error: Option<String>,
    /// When its first attempt at `stage` began, in an earlier process (see
    /// [`crate::checkpoint::StoredItem::since`]).
    pub since: Option<std::time::SystemTime>,
}

/// Process one item through its remaining stages. `window` is the item's place among the
/// items in flight (set aside while it only waits); it is released when the item leaves.
pub(crate) async fn run_item(shared: Arc<Shared>, item: WorkItem, window: InFlight) {
    use tracing::Instrument;
    // With JSON logs, every event of the item carries its run, key, stage and attempt (see
    // `telemetry::json`); text lines name the item's key and stage themselves.
    let span = if crate::telemetry::json() {
        tracing::error_span!(
            "item",
            run = shared.run,
            key = %item.key,
            stage = tracing::field::Empty,
            attempt = tracing::field::Empty
        )
    } else {
        tracing::Span::none()
    };
    through_stages(shared, item, window).instrument(span).await;
}

/// [`run_item`], in the item's span.
async fn through_stages(shared: Arc<Shared>, item: WorkItem, window: InFlight) {
    let WorkItem {
        seq,
        key,
        record,
        stage: mut index,
        mut used,
        mut last_error,
        since,
    } = item;
    // Its first attempt at the stage it resumes at, as kept; at every later stage, this
    // process's.
    let mut since = since;
    // Shared with the checkpoint writer, which serializes it only if it must.
    let mut record = Arc::new(record);
    let mut started = false;
    while index < shared.stages.len() {
        let stage = &shared.stages[index];
        tracing::Span::current().record("stage", &*stage.name);
        // Attempts used here before: stored with the item (its first stage only), or kept as
        // deaths of earlier processes (at any stage: the item's move here may not have been
        // committed before the process died).
        if let Some((attempt, error)) = shared.died_at(&key, &stage.name) {
            if attempt > used {
                used = attempt;
                last_error = Some(error.to_owned());
            }
        }
        let allowed = stage.policy.retry.attempts;
        tracing::Span::current().record("attempt", used.saturating_add(1).min(allowed.max(1)));
        if used >= allowed {
            // Its attempts were used up in earlier processes: it ends here, failed, saying so.
            let last = last_error.unwrap_or_else(|| "no error was kept".to_owned());
            let error = StageError::permanent(format!(
                "all {used} attempts (`retry.attempts` = {allowed}) used across processes; the last: {last}"
            ));
            Box::pin(fail(&shared, stage, seq, &record, error, used, false)).await;
            return;
        }
        // Back in the window if the last stage's wait (a late answer) left it aside.
        if !window.come_back(&shared.control.hard).await {
            interrupted(&shared, seq, stage).await;
            return;
        }
        let lane = stage.imp.lane(&record).map(|lane| {
            let gate = stage.lanes.gate(&lane);
            let breaker = lane.breaker.then(|| {
                let policy = stage.policy.breaker.clone().unwrap_or_default();
                stage.lanes.breaker(&lane, &policy)
            });
            (lane.name, gate, breaker)
        });
        let lane = lane.as_ref().map(|(name, gate, breaker)| LaneGate {
            name,
            gate,
            breaker: breaker.as_ref(),
        });
        // The item's deadline here, once its clock runs: from its first attempt (in an earlier
        // process, as kept, or now), or from its first wait at an open breaker if sooner.
        let due = std::sync::OnceLock::new();
        if let (Some(limit), Some(at)) = (stage.policy.item_deadline, since.take()) {
            // A time in the future (a clock set back) counts as now.
            let ago = std::time::SystemTime::now()
                .duration_since(at)
                .unwrap_or_default();
            let _ = due.set(tokio::time::Instant::now() + limit.saturating_sub(ago));
        }
        since = None;
        let clock = stage.policy.item_deadline.map(|limit| Clock {
            limit,
            due: &due,
            seq,
        });
        let first = match places(&shared, stage, lane.as_ref(), (!started, &window), clock).await {
            Ok(first) => first,
            Err(Missed::Stopped) => {
                interrupted(&shared, seq, stage).await;
                return;
            }
            Err(Missed::Expired(deadline)) => {
                // Held back past its deadline before its first attempt here.
                if !window.come_back(&shared.control.hard).await {
                    interrupted(&shared, seq, stage).await;
                    return;
                }
                let last = last_error.map(StageError::permanent);
                let error = deadline.passed(used, last.as_ref());
                Box::pin(fail(&shared, stage, seq, &record, error, used, true)).await;
                return;
            }
        };
        let deadline = clock.map(|clock| clock.start());
        // After the first stage, `Advanced` already recorded the item as in flight here; with
        // a deadline, the store keeps when its first attempt here began.
        if started && deadline.is_some() {
            let stage = stage.name.clone();
            if !checkpoint(&shared, seq, Change::Started { stage }).await {
                return;
            }
        }
        if !started {
            let stage = stage.name.clone();
            let recorded = if shared.take_ups {
                // Durable before the first attempt, for the next process to count should this
                // one die with its flight record. Cut short by the stop, the item, not started,
                // resumes next run as it is.
                checkpoint_durable(&shared, seq, Change::TakenUp { stage })
                    .await
                    .unwrap_or(false)
            } else {
                checkpoint(&shared, seq, Change::Started { stage }).await
            };
            if !recorded {
                return;
            }
            if shared.control.soft.is_cancelled() {
                // The stop came while the take-up was being committed: it does not start.
                interrupted(&shared, seq, &shared.stages[index]).await;
                return;
            }
        }
        started = true;
        let last_attempt = AtomicU32::new(0);
        let result = attempts(
            &shared,
            (stage, lane.as_ref(), &window),
            first,
            (&key, &record, seq),
            (std::mem::take(&mut used), deadline, &last_attempt),
        )
        .await;
        last_error = None;
        match result {
            Ok(Outcome::Continue(next)) => {
                stage.stats.done.incr();
                record = Arc::new(next);
                index += 1;
                let change = match shared.stages.get(index) {
                    Some(next_stage) => Change::Advanced {
                        stage: next_stage.name.clone(),
                        record: record.clone(),
                    },
                    None => Change::Done,
                };
                // With take-ups (a store of several runners), a runner that takes the item
                // over from this one, dead, counts an attempt where the store last saw it. Had
                // its last allowed attempt here just succeeded, that count would end the item
                // failed though it went on: its move is saved before it goes on.
                let last = last_attempt.load(Ordering::Relaxed) >= allowed;
                let saved = if shared.take_ups && last {
                    checkpoint_durable(&shared, seq, change)
                        .await
                        .unwrap_or(false)
                } else {
                    checkpoint(&shared, seq, change).await
                };
                if !saved {
                    return;
                }
            }
            Ok(Outcome::Skip { reason }) => {
                let reason = text::bounded(reason);
                tracing::debug!(stage = %stage.name, key = %key, reason = %reason, "item skipped");
                let Some(reason) = Box::pin(ending(
                    &shared,
                    stage,
                    seq,
                    &record,
                    EndingKind::Skipped,
                    reason,
                    1,
                ))
                .await
                else {
                    return;
                };
                stage.stats.skipped.incr();
                shared.totals.skipped.incr();
                checkpoint(
                    &shared,
                    seq,
                    Change::Skipped {
                        stage: stage.name.clone(),
                        reason,
                    },
                )
                .await;
                return;
            }
            Err(Ended::Interrupted) => {
                interrupted(&shared, seq, stage).await;
                return;
            }
            Err(Ended::Failed { error, attempts }) => {
                Box::pin(fail(&shared, stage, seq, &record, error, attempts, true)).await;
                return;
            }
        }
    }
    shared.totals.done.incr();
}

/// An item's lane at a stage (see [`crate::stage::Lane`]): the lane's name, its gate, and its
/// breaker if it has one.
struct LaneGate<'a> {
    name: &'a str,
    gate: &'a Arc<Adaptive>,
    breaker: Option<&'a Arc<Breaker>>,
}

/// What an attempt holds while it is under way: a place in its lane (taken first, so that an
/// item waiting for its lane holds no slot of the stage), its lane's breaker's leave to go,
/// then one of the stage's slots.
struct Places {
    _lane: Option<OwnedPlace>,
    /// Taken by the attempt, which tells the breaker how it ended.
    admitted: Option<Admitted>,
    _slot: OwnedSemaphorePermit,
}

/// An item's deadline at a stage before its first attempt there: `due` is set (once) when its
/// clock starts, at the first attempt or at its first wait at an open breaker.
#[derive(Clone, Copy)]
struct Clock<'a> {
    limit: std::time::Duration,
    due: &'a std::sync::OnceLock<tokio::time::Instant>,
    /// The item, whose clock's start is recorded when a wait at a breaker starts it.
    seq: i64,
}

impl Clock<'_> {
    /// The deadline, its clock started now if it was not.
    fn start(self) -> ItemDeadline {
        ItemDeadline {
            at: *self
                .due
                .get_or_init(|| tokio::time::Instant::now() + self.limit),
            limit: self.limit,
        }
    }

    /// The deadline if the clock runs (kept from an earlier process, or started by a wait).
    fn running(self) -> Option<ItemDeadline> {
        self.due.get().map(|at| ItemDeadline {
            at: *at,
            limit: self.limit,
        })
    }

    /// The item waits at an open breaker before its first attempt: its clock runs from now if
    /// it did not, and the store keeps when it started (a process that stops or dies leaves the
    /// next one the same deadline).
    async fn held(self, shared: &Shared, stage: &StageRt) -> ItemDeadline {
        if self.running().is_none() {
            let change = Change::Clock {
                stage: stage.name.clone(),
                at: crate::checkpoint::epoch_ms(std::time::SystemTime::now()),
            };
            checkpoint(shared, self.seq, change).await;
        }
        self.start()
    }
}

/// Why an attempt got no places.
enum Missed {
    /// The run stops (the hard stop; the soft one too for an item that has not started, or one
    /// waiting at an open breaker).
    Stopped,
    /// The item's deadline passed while it waited at its lane's open breaker.
    Expired(ItemDeadline),
}

/// Wait for an attempt's places. With a `clock` (before the item's first attempt at a stage
/// with `item_deadline`), a wait at the lane's open breaker starts it and ends by it.
async fn places(
    shared: &Shared,
    stage: &StageRt,
    lane: Option<&LaneGate<'_>>,
    (not_started, window): (bool, &InFlight),
    clock: Option<Clock<'_>>,
) -> Result<Places, Missed> {
    let control = &shared.control;
    if control.hard.is_cancelled() || (not_started && control.soft.is_cancelled()) {
        return Err(Missed::Stopped);
    }
    // A free slot and no lane, the common case: taken at once, with no future and no
    // cancellation waiter. (A slot is never free while others wait for one: no item jumps the
    // queue.)
    if lane.is_none() {
        if let Ok(slot) = stage.slots.clone().try_acquire_owned() {
            return Ok(Places {
                _lane: None,
                admitted: None,
                _slot: slot,
            });
        }
    }
    // Boxed: the waits are large, and an item's future need not carry them.
    Box::pin(wait_for_places(
        shared,
        stage,
        lane,
        (not_started, window),
        clock,
    ))
    .await
}

/// See [`places`]: the waits.
async fn wait_for_places(
    shared: &Shared,
    stage: &StageRt,
    lane: Option<&LaneGate<'_>>,
    (not_started, window): (bool, &InFlight),
    clock: Option<Clock<'_>>,
) -> Result<Places, Missed> {
    let control = &shared.control;
    let waiting = async {
        // The lane's own breaker first, before its places and a slot of the stage: the items
        // of a lane that is down wait there, aside, holding back no other lane's, their clocks
        // running (`item_deadline`).
        let admitted = match lane.and_then(|lane| lane.breaker) {
            Some(breaker) => match breaker.try_admit_owned() {
                Some(admitted) => Some(admitted),
                None => {
                    window.step_aside();
                    let deadline = match clock {
                        Some(clock) => Some(clock.held(shared, stage).await),
                        None => None,
                    };
                    let admitted = match by(deadline, admit(breaker, shared)).await {
                        Some(Some(admitted)) => admitted,
                        Some(None) => return Err(Missed::Stopped),
                        None => {
                            return Err(Missed::Expired(deadline.expect("only a deadline expires")))
                        }
                    };
                    if !window.come_back(&control.hard).await {
                        return Err(Missed::Stopped);
                    }
                    Some(admitted)
                }
            },
            None => None,
        };
        // A clock that runs already ends the waits below.
        let deadline = clock.and_then(Clock::running);
        let expired = || Err(Missed::Expired(deadline.expect("only a deadline expires")));
        let place = match lane {
            Some(lane) => match lane.gate.try_take_owned() {
                Some(place) => Some(place),
                None => {
                    // A busy lane: wait aside, letting other items into the window.
                    window.step_aside();
                    let Some(place) = by(deadline, lane.gate.wait_owned()).await else {
                        return expired();
                    };
                    if !window.come_back(&control.hard).await {
                        return Err(Missed::Stopped);
                    }
                    Some(place)
                }
            },
            None => None,
        };
        let Some(slot) = by(deadline, stage.slots.clone().acquire_owned()).await else {
            return expired();
        };
        let slot = slot.expect("stage semaphores are never closed");
        Ok(Places {
            _lane: place,
            admitted,
            _slot: slot,
        })
    };
    tokio::select! {
        biased;
        places = waiting => places,
        () = control.hard.cancelled() => Err(Missed::Stopped),
        () = control.soft.cancelled(), if not_started => Err(Missed::Stopped),
    }
}

/// Wait at an open breaker for leave to start an attempt, or `None` once the run is told to
/// stop: an item waiting there has nothing under way, so at a stop it goes back to pending at
/// once, using no attempt, rather than holding the process through its grace.
async fn admit(breaker: &Arc<Breaker>, shared: &Shared) -> Option<Admitted> {
    if let Some(admitted) = breaker.try_admit_owned() {
        return Some(admitted);
    }
    let control = &shared.control;
    tokio::select! {
        biased;
        () = control.soft.cancelled() => None,
        admitted = breaker.admit_owned(&control.hard) => admitted,
    }
}

/// The item stops in `stage` without an outcome: back to pending, its attempt not counted.
async fn interrupted(shared: &Shared, seq: i64, stage: &StageRt) {
    checkpoint(
        shared,
        seq,
        Change::Interrupted {
            stage: stage.name.clone(),
        },
    )
    .await;
}

/// Send an update and wait for its commit (see [`Checkpointer::send_durable`]); a dead writer
/// aborts the run. Returns whether the item may go on, or `None` when the run's hard stop came
/// first (a store that does not answer must not hold the stop).
///
/// [`Checkpointer::send_durable`]: crate::checkpoint::writer::Checkpointer::send_durable
async fn checkpoint_durable(shared: &Shared, seq: i64, change: Change) -> Option<bool> {
    tokio::select! {
        biased;
        r = shared.checkpoint.send_durable(seq, change) => Some(match r {
            Ok(()) => true,
            Err(e) => {
                shared.control.abort(AbortReason::Checkpoint(e.0));
                false
            }
        }),
        () = shared.control.hard.cancelled() => None,
    }
}

/// Send an update; a dead writer aborts the run. Returns whether the item may go on.
async fn checkpoint(shared: &Shared, seq: i64, change: Change) -> bool {
    match shared.checkpoint.send(seq, change).await {
        Ok(()) => true,
        Err(e) => {
            shared.control.abort(AbortReason::Checkpoint(e.0));
            false
        }
    }
}

async fn fail(
    shared: &Arc<Shared>,
    stage: &StageRt,
    seq: i64,
    record: &Record,
    error: StageError,
    attempts: u32,
    tried: bool,
) {
    let key = record.key.as_str();
    if error.class == ErrorClass::Fatal {
        // The error is the run's, not the item's (a refused password, say): the item goes back
        // to pending, uses no attempt, and runs again once the cause is fixed.
        interrupted(shared, seq, stage).await;
        shared.control.abort(AbortReason::Fatal {
            stage: stage.name.to_string(),
            key: key.to_owned(),
            error: error.message,
        });
        return;
    }
    tracing::warn!(
        stage = %stage.name,
        key = %key,
        attempts,
        class = %error.class,
        error = %error.message,
        "item failed"
    );
    let kind = EndingKind::Failed;
    // (An item that failed for attempts used up before this process has them so already, with
    // the error they ended on.)
    if tried && shared.marking(kind) && !exhaust(shared, stage, seq, &error.message, attempts).await
    {
        return;
    }
    let Some(error) = ending(shared, stage, seq, record, kind, error.message, attempts).await
    else {
        return;
    };
    stage.stats.failed.incr();
    checkpoint(
        shared,
        seq,
        Change::Failed {
            stage: stage.name.clone(),
            error,
            attempts,
        },
    )
    .await;
    count_failure(shared);
}

/// An item that cannot run (the source could not read it; or it cannot resume from its
/// checkpoint: a stage no longer in the pipeline, a record that does not read back) fails,
/// marked like any other. `why` is the log's message; `_window` the item's place among the
/// items in flight, held until it is marked (a batch of a million unreadable lines must not
/// start a million marks at once).
pub(crate) async fn fail_unresumable(
    shared: Arc<Shared>,
    (seq, record): (i64, Record),
    stage: String,
    error: String,
    (why, _window): (&'static str, InFlight),
) {
    tracing::warn!(
        run = shared.run,
        key = %record.key,
        stage = %stage,
        attempt = 0u32,
        error = %error,
        "{why}"
    );
    let ending_at = Ending {
        kind: EndingKind::Failed,
        stage: stage.clone(),
        message: error,
        attempts: 0,
        record,
    };
    let Some(error) = marked(&shared, seq, ending_at, None).await else {
        return;
    };
    if checkpoint(
        &shared,
        seq,
        Change::Failed {
            stage: stage.into(),
            error,
            attempts: 0,
        },
    )
    .await
    {
        count_failure(&shared);
    }
}

/// Before a failed item is marked: should the process die while it is being marked, the next
/// one must not try the stage again, so the item's attempts there are used up, durably, and it
/// leaves the process's hands. Returns whether the item may go on to its mark.
async fn exhaust(
    shared: &Arc<Shared>,
    stage: &StageRt,
    seq: i64,
    message: &str,
    attempts: u32,
) -> bool {
    let used_up = Change::Exhausted {
        stage: stage.name.clone(),
        attempts: attempts.max(stage.policy.retry.attempts),
        error: message.to_owned(),
    };
    match checkpoint_durable(shared, seq, used_up).await {
        Some(recorded) => recorded,
        None => {
            interrupted(shared, seq, stage).await;
            false
        }
    }
}

/// The item ends failed or skipped at `stage`: the stages that mark such endings are told
/// first. Returns the message to record with the ending (the error or reason, plus what went
/// wrong with a mark), or `None` when the item went back to pending instead (the run stopped
/// while it was being marked, or a mark hit a fatal error).
async fn ending(
    shared: &Arc<Shared>,
    stage: &StageRt,
    seq: i64,
    record: &Record,
    kind: EndingKind,
    message: String,
    attempts: u32,
) -> Option<String> {
    if !shared.marking(kind) {
        return Some(message);
    }
    let ending_at = Ending {
        kind,
        stage: stage.name.to_string(),
        message,
        attempts,
        record: record.clone(),
    };
    marked(shared, seq, ending_at, Some(stage)).await
}

/// Mark `ending_at` at every stage that takes it, each under its own retry policy and timeout.
/// See [`ending`]; `at` is the stage the item goes back to (pending) should marking stop.
async fn marked(
    shared: &Arc<Shared>,
    seq: i64,
    ending_at: Ending,
    at: Option<&StageRt>,
) -> Option<String> {
    let key = ending_at.record.key.clone();
    let mut message = ending_at.message.clone();
    let ending_at = Arc::new(ending_at);
    let stop = &shared.control.hard;
    for marker in &shared.stages {
        let StageImpl::Blocking(imp) = &marker.imp else {
            continue;
        };
        if !marker.marks.takes(ending_at.kind) {
            continue;
        }
        let events = MarkLog {
            stage: marker,
            key: &key,
        };
        let result = retrying(&marker.policy.retry, stop, &events, 0, |attempt| {
            let (imp, ending_at) = (imp.clone(), ending_at.clone());
            async move {
                match call::mark(shared, marker, imp, ending_at, attempt).await {
                    Ok(()) => Attempt::Done(()),
                    Err(CallError::Cancelled) => Attempt::Interrupted,
                    Err(CallError::Timeout(timed_out)) => Attempt::Failed(timed_out.into()),
                    Err(CallError::Abandoned { timed_out, late }) => {
                        call::check_wedged(shared, marker);
                        Attempt::TimedOut {
                            error: timed_out.into(),
                            late,
                        }
                    }
                    Err(CallError::Panic(message)) => {
                        Attempt::Failed(StageError::permanent(format!("panicked: {message}")))
                    }
                    Err(CallError::Stage(e)) => Attempt::Failed(e),
                }
            }
        })
        .await;
        match result {
            Ok(()) => {}
            Err(Ended::Interrupted) => {
                back_to_pending(shared, seq, at).await;
                return None;
            }
            Err(Ended::Failed { error, .. }) if error.class == ErrorClass::Fatal => {
                back_to_pending(shared, seq, at).await;
                shared.control.abort(AbortReason::Fatal {
                    stage: marker.name.to_string(),
                    key: key.clone(),
                    error: error.message,
                });
                return None;
            }
            Err(Ended::Failed { error, attempts }) => {
                shared.totals.unmarked.incr();
                tracing::warn!(
                    stage = %marker.name,
                    key = %key,
                    attempts,
                    error = %error.message,
                    "{}",
                    crate::telemetry::events::MARK_FAILED
                );
                message = format!(
                    "{message} (and marking it at `{}` failed: {})",
                    marker.name,
                    text::bounded(error.message)
                );
            }
        }
    }
    Some(message)
}

/// The item goes back to pending at `at` (or stays where its checkpoint has it).
async fn back_to_pending(shared: &Shared, seq: i64, at: Option<&StageRt>) {
    if let Some(stage) = at {
        interrupted(shared, seq, stage).await;
    }
}

/// What marking reports, as debug lines of the marking stage.
struct MarkLog<'a> {
    stage: &'a StageRt,
    key: &'a str,
}

impl RetryEvents for MarkLog<'_> {
    fn retrying(&self, attempt: u32, error: &StageError, delay: std::time::Duration) {
        tracing::debug!(
            stage = %self.stage.name,
            key = %self.key,
            attempt,
            error = %error.message,
            delay_secs = text::secs(delay),
            "retrying the mark"
        );
    }

    fn backing_off(&self, _waiting: bool) {}

    fn late_answer(&self, attempt: u32) {
        tracing::info!(stage = %self.stage.name, key = %self.key, attempt, "a mark that timed out landed");
    }
}

/// One more item failed: counted, and held against `max_failures`.
pub(crate) fn count_failure(shared: &Shared) {
    shared.totals.failed.incr();
    hold_to_budget(shared);
}

/// Abort the run if its failed items, this process's and (in a shared run) the other runners',
/// are more than `max_failures` allows.
pub(crate) fn hold_to_budget(shared: &Shared) {
    let Some(limit) = shared.max_failures else {
        return;
    };
    let own = shared.totals.failed.get();
    let failed = match &shared.run_failed {
        Some(run) => run.failed(own),
        None => own,
    };
    if limit.crossed(failed, shared.totals.items) {
        shared.control.abort(AbortReason::MaxFailures {
            failed,
            limit: limit.to_string(),
            hint: shared
                .run_failed
                .as_ref()
                .map(|_| "counted over the whole run, every runner's failed items"),
            by_the_end: None,
        });
    }
}

/// The service behind the stage (or the item's lane) asked it to wait (a transient error with
/// a retry-after hint): one place fewer for the attempts of the stage, or of the lane only (see
/// [`crate::policy::adaptive`]).
fn slow_down(stage: &StageRt, lane: Option<&LaneGate<'_>>, key: &str, error: &StageError) {
    let (limit, configured) = match lane {
        Some(lane) => (lane.gate.overloaded(), lane.gate.max()),
        None => (stage.adaptive.overloaded(), stage.adaptive.max()),
    };
    let first = !stage
        .slowed
        .swap(true, std::sync::atomic::Ordering::Relaxed);
    match lane {
        // Logged once per stage: lanes come from data, and so could thousands of warnings.
        Some(lane) if first => tracing::warn!(
            stage = %stage.name,
            key = %key,
            lane = %lane.name,
            error = %error.message,
            concurrency = limit,
            configured,
            "a service asks to slow down: fewer attempts at once to it, growing back as calls succeed; other lanes are not slowed"
        ),
        Some(lane) => {
            tracing::debug!(stage = %stage.name, lane = %lane.name, concurrency = limit, "lane concurrency lowered");
        }
        None if first => tracing::warn!(
            stage = %stage.name,
            key = %key,
            error = %error.message,
            concurrency = limit,
            configured,
            "the service asks to slow down: fewer attempts at once, growing back as calls succeed"
        ),
        None => tracing::debug!(stage = %stage.name, concurrency = limit, "concurrency lowered"),
    }
}

/// What the retry layer reports, as statistics and debug lines of the stage.
struct RetryLog<'a> {
    stage: &'a StageRt,
    key: &'a str,
}

impl RetryEvents for RetryLog<'_> {
    fn retrying(&self, attempt: u32, error: &StageError, delay: std::time::Duration) {
        self.stage.stats.retries.incr();
        tracing::debug!(
            stage = %self.stage.name,
            key = %self.key,
            attempt,
            error = %error.message,
            delay_secs = text::secs(delay),
            "retrying"
        );
    }

    fn backing_off(&self, waiting: bool) {
        if waiting {
            self.stage.stats.backing_off.incr();
        } else {
            self.stage.stats.backing_off.decr();
        }
    }

    fn late_answer(&self, attempt: u32) {
        // The retry counted when the wait began did not happen.
        self.stage.stats.retries.decr();
        tracing::info!(
            stage = %self.stage.name,
            key = %self.key,
            attempt,
            "{}",
            crate::telemetry::events::LATE_ANSWER
        );
    }
}

/// `wait`'s output, or `None` if the item's deadline passes first.
async fn by<F: std::future::Future>(deadline: Option<ItemDeadline>, wait: F) -> Option<F::Output> {
    match deadline {
        Some(deadline) => tokio::time::timeout_at(deadline.at, wait).await.ok(),
        None => Some(wait.await),
    }
}

/// An item's attempts at one stage, through the policy layers in their documented order:
/// retry → lane → concurrency → breaker → adaptive gate → rate limit → timeout (in [`call`]) →
/// the stage. `first` holds the first attempt's places; later attempts wait for theirs, so an
/// item waiting out a backoff holds none. With a `deadline`, every wait and call ends by it.
async fn attempts(
    shared: &Arc<Shared>,
    (stage, lane, window): (&StageRt, Option<&LaneGate<'_>>, &InFlight),
    first: Places,
    (key, record, seq): (&Arc<str>, &Record, i64),
    (used, deadline, last): (u32, Option<ItemDeadline>, &AtomicU32),
) -> Result<Outcome, Ended> {
    let stop = &shared.control.hard;
    let events = RetryLog { stage, key };
    let retry = &stage.policy.retry;
    // A failed attempt stays in the flight recorder's table while the item backs off: its
    // `Attempted` update is group-committed, and a process that dies before that commit must
    // still leave the attempt counted.
    let backing_off = BackingOff::default();
    let backing_off = &backing_off;
    let first = std::sync::Mutex::new(Some(first));
    let first = &first;
    retrying_by(
        retry,
        stop,
        &events,
        (used, deadline),
        |attempt| async move {
            tracing::Span::current().record("attempt", attempt);
            last.store(attempt, Ordering::Relaxed);
            backing_off.end();
            let held = first
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .take();
            // Each wait ends at the item's deadline, if it has one: the attempt then never began.
            let expired = || async {
                // Its place among the items in flight back, for its ending.
                if window.come_back(stop).await {
                    Attempt::Expired
                } else {
                    Attempt::Interrupted
                }
            };
            let mut places = match held {
                Some(places) => places,
                None => {
                    // Back in the window after the backoff, then the attempt's places.
                    match by(deadline, window.come_back(stop)).await {
                        Some(true) => {}
                        Some(false) => return Attempt::Interrupted,
                        None => return expired().await,
                    }
                    match by(deadline, places(shared, stage, lane, (false, window), None)).await {
                        Some(Ok(places)) => places,
                        Some(Err(Missed::Stopped)) => return Attempt::Interrupted,
                        Some(Err(Missed::Expired(_))) | None => return expired().await,
                    }
                }
            };
            // An open breaker holds the attempt back (using none of the item's attempts): its
            // lane's, taken with its places, or else the stage's. (Dropped unsettled, a probe's
            // place goes to the next item.)
            let admitted = match (places.admitted.take(), &stage.breaker) {
                (Some(admitted), _) => Some(admitted),
                (None, Some(breaker)) if lane.is_none_or(|lane| lane.breaker.is_none()) => {
                    match by(deadline, admit(breaker, shared)).await {
                        Some(Some(admitted)) => Some(admitted),
                        Some(None) => return Attempt::Interrupted,
                        None => return Attempt::Expired,
                    }
                }
                (None, _) => None,
            };
            let place = match by(deadline, stage.adaptive.enter(stop)).await {
                Some(Some(place)) => place,
                Some(None) => return Attempt::Interrupted,
                None => return Attempt::Expired,
            };
            if let Some(rate) = &stage.rate {
                match by(deadline, rate.ready(stop)).await {
                    Some(Ok(())) => {}
                    Some(Err(_)) => return Attempt::Interrupted,
                    None => return Attempt::Expired,
                }
            }
            let began = std::time::Instant::now();
            let cut = deadline.map(|d| d.at);
            let result = call(shared, stage, (key, record.clone(), attempt), cut).await;
            drop(place);
            drop(places);
            if !matches!(result, Err(CallError::Cancelled)) {
                stage.stats.record_latency(began.elapsed());
            }
            if let Some(admitted) = admitted {
                breaker_saw(shared, (stage, lane), admitted, &result);
            }
            let error = match result {
                Ok(outcome) => {
                    stage.adaptive.succeeded();
                    if let Some(lane) = lane {
                        lane.gate.succeeded();
                    }
                    return Attempt::Done(outcome);
                }
                Err(CallError::Cancelled) => return Attempt::Interrupted,
                Err(CallError::Timeout(timed_out)) => {
                    stage.stats.timeouts.incr();
                    StageError::from(timed_out)
                }
                Err(CallError::Abandoned { timed_out, late }) => {
                    stage.stats.timeouts.incr();
                    let error = StageError::from(timed_out);
                    if Box::pin(used_up(shared, stage, seq, attempt, &error)).await {
                        backing_off.hold(shared.recorder.begin(key, &stage.name, attempt));
                        window.step_aside();
                    }
                    call::check_wedged(shared, stage);
                    return Attempt::TimedOut { error, late };
                }
                Err(CallError::Panic(message)) => {
                    stage.stats.panics.incr();
                    StageError::permanent(format!("panicked: {message}"))
                        .with_kind(crate::stage::ErrorKind::Panic)
                }
                Err(CallError::Stage(e)) => e,
            };
            // A message that quotes data is kept at a bounded size.
            let error = StageError {
                message: text::bounded(error.message),
                ..error
            };
            if error.class == ErrorClass::Transient && error.retry_after.is_some() {
                slow_down(stage, lane, key, &error);
            }
            if Box::pin(used_up(shared, stage, seq, attempt, &error)).await {
                backing_off.hold(shared.recorder.begin(key, &stage.name, attempt));
                window.step_aside();
            }
            Attempt::Failed(error)
        },
    )
    .await
}

/// Tell the breaker that let an attempt through (the stage's, or its lane's) how the attempt
/// ended, and say what that changed: it opened (logged once, with the last error; with
/// `on_open = "abort"` the run ends), or it closed again.
fn breaker_saw<T>(
    shared: &Shared,
    (stage, lane): (&StageRt, Option<&LaneGate<'_>>),
    admitted: Admitted,
    result: &Result<T, CallError<T>>,
) {
    use crate::policy::breaker::Change;
    let policy = admitted.breaker().policy.clone();
    let (change, error) = match result {
        Ok(_) => (admitted.succeeded(), None),
        // Dropped unsettled: a probe's place goes to the next item.
        Err(CallError::Cancelled) => return,
        Err(CallError::Timeout(t) | CallError::Abandoned { timed_out: t, .. }) => {
            (admitted.failed(true), Some(StageError::from(*t).message))
        }
        Err(CallError::Panic(message)) => (admitted.failed(false), Some(message.clone())),
        Err(CallError::Stage(e)) => (
            admitted.failed(e.class == ErrorClass::Transient),
            Some(e.message.clone()),
        ),
    };
    // A lane's breaker is named by its lane (a host, from data: printable).
    let lane = lane
        .filter(|lane| lane.breaker.is_some())
        .map(|lane| text::printable(lane.name).into_owned());
    let last = text::bounded(error.unwrap_or_default());
    match change {
        Change::Opened if policy.on_open == crate::policy::OnOpen::Abort => {
            shared.control.abort(AbortReason::Breaker {
                stage: stage.name.to_string(),
                lane,
                failures: policy.failures,
                window: policy.window,
                error: last,
            });
        }
        Change::Opened => match lane {
            Some(lane) => tracing::warn!(
                stage = %stage.name,
                lane = %lane,
                failures = policy.failures,
                window_secs = policy.window.as_secs_f64(),
                cool_down_secs = policy.cool_down.as_secs_f64(),
                last_error = %last,
                "circuit breaker opened for one lane: the stage starts no attempt to it until a probe succeeds; its items wait without using attempts, the other lanes' go on"
            ),
            None => tracing::warn!(
                stage = %stage.name,
                failures = policy.failures,
                window_secs = policy.window.as_secs_f64(),
                cool_down_secs = policy.cool_down.as_secs_f64(),
                last_error = %last,
                "circuit breaker opened: the stage starts no attempt until a probe succeeds; its items wait without using attempts"
            ),
        },
        Change::Reopened => {
            tracing::debug!(stage = %stage.name, lane = lane.as_deref().unwrap_or("-"), error = %last, "circuit breaker: the probe failed; open again")
        }
        Change::Closed => {
            tracing::info!(stage = %stage.name, lane = lane.as_deref().unwrap_or("-"), "circuit breaker closed: a probe attempt succeeded")
        }
        Change::None => return,
    }
    // For `status` (through the flight record): what the breakers hold back now.
    shared
        .recorder
        .set_breakers(&super::telemetry::open_breakers(&shared.stages));
}

/// The flight recorder's slot of an item's failed attempt, held while it backs off; released
/// when the next attempt begins or the item leaves the stage. The flag spares the attempts
/// that never failed the lock.
#[derive(Default)]
struct BackingOff<'a> {
    held: std::sync::Mutex<Option<crate::flight::AttemptSlot<'a>>>,
    holding: std::sync::atomic::AtomicBool,
}

impl<'a> BackingOff<'a> {
    fn hold(&self, slot: crate::flight::AttemptSlot<'a>) {
        *self.lock() = Some(slot);
        self.holding
            .store(true, std::sync::atomic::Ordering::Relaxed);
    }

    fn end(&self) {
        if self
            .holding
            .swap(false, std::sync::atomic::Ordering::Relaxed)
        {
            drop(self.lock().take());
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<crate::flight::AttemptSlot<'a>>> {
        self.held
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// A failed attempt, transient: the attempts used stay with the item, in the store, should this
/// process stop or die before its next attempt or its ending is recorded (the last one too: an
/// abandoned call that wedges the stage stops the run before the item's failure is recorded, and
/// the next run must not try it again). Returns whether the item will try again.
async fn used_up(
    shared: &Shared,
    stage: &StageRt,
    seq: i64,
    attempt: u32,
    error: &StageError,
) -> bool {
    if !stage.policy.retry.retries(error) {
        return false;
    }
    let change = Change::Attempted {
        stage: stage.name.clone(),
        attempts: attempt,
        error: error.message.clone(),
    };
    checkpoint(shared, seq, change).await;
    attempt < stage.policy.retry.attempts
}
