//! One attempt of one stage on one item: the timeout, the panic guard and cancellation, for
//! async and blocking stages alike.
//!
//! A blocking call runs on `spawn_blocking` while holding a permit of the stage's pool, and the
//! permit moves into the closure: it is released only when the thread really returns. An
//! attempt that times out raises the call's cancel flag and waits a short grace for it; a call
//! that still has not returned is *abandoned* — counted, named in the heartbeat, and when a
//! stage has `max_abandoned` of them the run aborts as wedged. Threads are never multiplied.

use std::any::Any;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::FutureExt;

use super::{Shared, StageRt};
use crate::policy::timeout::{within, TimedOut};
use crate::runner::control::AbortReason;
use crate::stage::Record;
use crate::stage::{BlockingStage, CancelFlag, Context, Ending, Outcome, StageError, StageImpl};

/// How long a blocking call that reached its deadline gets to return before it counts as
/// abandoned. A call that keeps to its deadline by its own I/O timer (an HTTP client's) wakes
/// a little after it: the kernel's timer and the scheduler add tens of milliseconds on an idle
/// machine, and more on a loaded one. Only a call that is still out after this is taken to be
/// stuck, and with `concurrency = 1` one stuck call wedges the stage.
const TIMEOUT_GRACE: Duration = Duration::from_secs(2);

/// How long a blocking call cut off by a shutdown gets to notice its cancel flag before the
/// process goes on without it.
const CANCEL_GRACE: Duration = Duration::from_millis(250);

/// Why an attempt produced no outcome (`T`: what the call answers, an [`Outcome`] but for
/// marks).
#[derive(Debug)]
pub(crate) enum CallError<T = Outcome> {
    /// The stage answered with an error.
    Stage(StageError),
    /// The attempt timed out.
    Timeout(TimedOut),
    /// The attempt timed out and its blocking call was abandoned; `late` receives the call's
    /// outcome if it ever returns one (it closes if the call fails or panics).
    Abandoned {
        /// When the attempt timed out.
        timed_out: TimedOut,
        /// The call's outcome, should it return one.
        late: tokio::sync::oneshot::Receiver<T>,
    },
    /// The stage panicked; the message.
    Panic(String),
    /// The run cancelled in-flight work.
    Cancelled,
}

pub(crate) fn panic_message(payload: &(dyn Any + Send)) -> String {
    crate::text::panic_message(payload)
}

/// Run one attempt, under the stage's `timeout`, cut to the item's deadline `cut` if that
/// comes first.
pub(crate) async fn call(
    shared: &Arc<Shared>,
    stage: &StageRt,
    (key, record, attempt): (&Arc<str>, Record, u32),
    cut: Option<tokio::time::Instant>,
) -> Result<Outcome, CallError> {
    if shared.control.hard.is_cancelled() {
        return Err(CallError::Cancelled);
    }
    // One reading of the clock for the deadline, the stage's table and the flight recorder.
    let began = Instant::now();
    let timeout = match cut {
        Some(cut) => stage
            .policy
            .timeout
            .min(cut.into_std().saturating_duration_since(began)),
        None => stage.policy.timeout,
    };
    let deadline = began + timeout;
    let cx = Context::new(
        key.clone(),
        stage.name.clone(),
        attempt,
        deadline,
        CancelFlag::new(),
    );
    let _tracked = stage.stats.begin((key.clone(), attempt), timeout, began);
    let _recorded = shared.recorder.begin_at(key, &stage.name, attempt, began);
    match &stage.imp {
        StageImpl::Async(s) => {
            let fut = AssertUnwindSafe(s.process(record, &cx)).catch_unwind();
            // The call first: a stage that answers at once needs no cancellation waiter.
            tokio::select! {
                biased;
                r = within(deadline.into(), timeout, fut) => match r {
                    Err(timed_out) => Err(CallError::Timeout(timed_out)),
                    Ok(Err(panic)) => Err(CallError::Panic(panic_message(&*panic))),
                    Ok(Ok(result)) => result.map_err(CallError::Stage),
                },
                () = shared.control.hard.cancelled() => Err(CallError::Cancelled),
            }
        }
        StageImpl::Blocking(s) => {
            let s = s.clone();
            // Boxed: the blocking path's state is large, and an async stage's call need not
            // carry it.
            Box::pin(blocking(shared, stage, (cx, timeout), move |cx| {
                s.process(record, cx)
            }))
            .await
        }
        StageImpl::Source(_) => Err(CallError::Stage(StageError::fatal(
            "a source can only be the first stage",
        ))),
    }
}

/// Mark an item that ended failed or skipped at `stage` (a stage whose
/// [`BlockingStage::marks`] takes it): one attempt, on the stage's pool, under its timeout.
pub(crate) async fn mark(
    shared: &Arc<Shared>,
    stage: &StageRt,
    s: Arc<dyn BlockingStage>,
    ending: Arc<Ending>,
    attempt: u32,
) -> Result<(), CallError<()>> {
    if shared.control.hard.is_cancelled() {
        return Err(CallError::Cancelled);
    }
    let cx = Context::new(
        ending.record.key.as_str(),
        stage.name.clone(),
        attempt,
        Instant::now() + stage.policy.timeout,
        CancelFlag::new(),
    );
    let timeout = stage.policy.timeout;
    blocking(shared, stage, (cx, timeout), move |cx| s.mark(&ending, cx)).await
}

/// Run `work` on the stage's pool (see the module docs), within `timeout`, which ends at
/// `cx`'s deadline.
async fn blocking<T: Send + 'static>(
    shared: &Arc<Shared>,
    stage: &StageRt,
    (cx, timeout): (Context, Duration),
    work: impl FnOnce(&Context) -> Result<T, StageError> + Send + 'static,
) -> Result<T, CallError<T>> {
    let deadline = tokio::time::Instant::from_std(cx.deadline());
    let pool = stage
        .pool
        .clone()
        .expect("every blocking stage is built with a pool");
    // Waiting for a free thread counts against the attempt: a pool full of stuck calls makes
    // attempts time out rather than queue forever.
    let permit = tokio::select! {
        biased;
        () = shared.control.hard.cancelled() => return Err(CallError::Cancelled),
        p = within(deadline, timeout, pool.acquire_owned()) => match p {
            Err(timed_out) => return Err(CallError::Timeout(timed_out)),
            Ok(p) => p.expect("stage pools are never closed"),
        },
    };
    let thread_cx = cx.clone();
    // The stage's events on its thread are the item's too.
    let span = tracing::Span::current();
    let mut handle = tokio::task::spawn_blocking(move || {
        let _permit = permit;
        let _in = span.enter();
        std::panic::catch_unwind(AssertUnwindSafe(|| work(&thread_cx)))
    });
    let unfinished = tokio::select! {
        biased;
        () = shared.control.hard.cancelled() => CallError::Cancelled,
        r = within(deadline, timeout, &mut handle) => match r {
            Ok(joined) => return late_is_timeout(finish(joined), &cx, timeout),
            Err(timed_out) => CallError::Timeout(timed_out),
        },
    };
    cx.cancel_flag().cancel();
    let returned = match unfinished {
        CallError::Timeout(_) => tokio::select! {
            biased;
            // A shutdown does not wait out a timed-out call's grace: it is cut off like the
            // calls that had not timed out.
            () = shared.control.hard.cancelled() => None,
            r = tokio::time::timeout(TIMEOUT_GRACE, &mut handle) => r.ok(),
        },
        _ => tokio::time::timeout(CANCEL_GRACE, &mut handle).await.ok(),
    };
    if let Some(joined) = returned {
        // It returned within the grace. An answer is taken (a sink's write that landed is not
        // redone or called failed); an error only confirms that the attempt ended.
        return match finish(joined) {
            Ok(outcome) => {
                if matches!(unfinished, CallError::Timeout(_)) {
                    // Counted as the attempt it was: one past its deadline.
                    stage.stats.timeouts.incr();
                    tracing::info!(
                        stage = %stage.name,
                        key = %cx.key(),
                        "{}",
                        crate::telemetry::events::LATE_ANSWER
                    );
                }
                Ok(outcome)
            }
            Err(_) => Err(unfinished),
        };
    }
    if matches!(unfinished, CallError::Cancelled) || shared.control.hard.is_cancelled() {
        // Shutting down: the call is not known to be stuck (it had not reached its timeout, or
        // its grace was cut short), just cut off. The process exits without waiting for its
        // thread.
        tracing::info!(
            stage = %stage.name,
            key = %cx.key(),
            "a blocking call is still running at shutdown; its item goes back to pending"
        );
        return Err(CallError::Cancelled);
    }
    let since = cx.deadline() - timeout;
    let id = stage.stats.abandon(Arc::from(cx.key()), since);
    tracing::warn!(
        stage = %stage.name,
        key = %cx.key(),
        abandoned = stage.stats.abandoned_now(),
        max_abandoned = stage.policy.max_abandoned,
        "blocking call ignored its timeout; its thread stays taken until it returns"
    );
    let watched = shared.clone();
    let index = stage.index;
    let (answer, late) = tokio::sync::oneshot::channel();
    tokio::spawn(tracing::Instrument::in_current_span(async move {
        let joined = handle.await;
        let stage = &watched.stages[index];
        stage.stats.returned(id);
        tracing::info!(stage = %stage.name, "abandoned blocking call returned; its thread is free");
        if let Ok(outcome) = finish(joined) {
            // Taken only if the item still waits for its next attempt.
            let _ = answer.send(outcome);
        }
    }));
    Err(match unfinished {
        CallError::Timeout(timed_out) => CallError::Abandoned { timed_out, late },
        other => other,
    })
}

/// After an abandoned call's attempt has been recorded (its item's attempts, its mark): if the
/// stage now has `max_abandoned` calls abandoned, it is wedged and the run aborts. Checked after
/// the recording, so that the attempts the wedge ended count next run: an item that wedges the
/// stage every time still ends failed once they are used.
pub(crate) fn check_wedged(shared: &Shared, stage: &StageRt) {
    if stage.stats.abandoned_now() >= stage.policy.max_abandoned {
        shared.control.abort(AbortReason::Wedged {
            stage: stage.name.to_string(),
            stuck: stage.stats.stuck(),
        });
    }
}

/// A blocking call that gave up with a transient error at its deadline (seeing
/// [`Context::is_cancelled`] turn true) may return a moment before the runtime's timer fires:
/// that attempt timed out, whatever the stage called it.
fn late_is_timeout<T>(
    result: Result<T, CallError<T>>,
    cx: &Context,
    timeout: Duration,
) -> Result<T, CallError<T>> {
    match result {
        Err(CallError::Stage(e))
            if e.class == crate::stage::ErrorClass::Transient
                && Instant::now() >= cx.deadline() =>
        {
            Err(CallError::Timeout(TimedOut { after: timeout }))
        }
        other => other,
    }
}

type Joined<T> = Result<std::thread::Result<Result<T, StageError>>, tokio::task::JoinError>;

fn finish<T>(joined: Joined<T>) -> Result<T, CallError<T>> {
    match joined {
        Ok(Ok(result)) => result.map_err(CallError::Stage),
        Ok(Err(panic)) => Err(CallError::Panic(panic_message(&*panic))),
        Err(e) if e.is_panic() => Err(CallError::Panic(panic_message(&*e.into_panic()))),
        Err(_) => Err(CallError::Cancelled),
    }
}
