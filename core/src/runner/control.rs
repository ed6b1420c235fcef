//! How a run stops: an orderly drain on a signal or `max_run_time`, at once on a second signal
//! or an abort. No code runs in a signal handler: signals are picked up by the watchdog thread
//! ([`super::watchdog`]), outside the runtime, which only flips cancellation tokens.
//!
//! Two tokens: `soft` (stop taking new items) and `hard` (cancel what is in flight). A drain
//! cancels `soft`, then `hard` once `shutdown_grace` has passed; an abort cancels both. A stop
//! is acted on before it is logged, and the moment it was asked for is kept for the watchdog,
//! which ends the process if the drain outlives the grace.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use crate::text;

/// Why a run stops before its items are all done.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum AbortReason {
    MaxFailures {
        /// Items failed when the budget was crossed.
        failed: u64,
        limit: String,
        /// What to do about it, when the run is a resumed one that starts over the budget.
        hint: Option<&'static str>,
        /// Items failed by the time the run stopped, when more than `failed`: attempts in flight
        /// when the budget was crossed can still fail before they are cancelled.
        by_the_end: Option<u64>,
    },
    Fatal {
        stage: String,
        key: String,
        error: String,
    },
    Wedged {
        stage: String,
        stuck: Vec<(String, Duration)>,
    },
    /// An async attempt ran past its timeout by more than `[pipeline] watchdog`: it blocks the
    /// runtime thread its timeout would fire on.
    Frozen {
        stage: String,
        stuck: Vec<(String, Duration)>,
        timeout: Duration,
    },
    Checkpoint(String),
    Source {
        stage: String,
        error: String,
    },
    /// A stage's circuit breaker opened, with `breaker.on_open = "abort"`.
    Breaker {
        stage: String,
        /// The lane whose breaker it was (a host), for a breaker per lane.
        lane: Option<String>,
        failures: u32,
        window: Duration,
        error: String,
    },
}

impl std::fmt::Display for AbortReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AbortReason::MaxFailures {
                failed,
                limit,
                hint,
                by_the_end,
            } => {
                let total = by_the_end.unwrap_or(*failed).max(*failed);
                let items = if total == 1 { "item" } else { "items" };
                write!(
                    f,
                    "{total} {items} failed, more than `max_failures` ({limit}) allows"
                )?;
                if total > *failed {
                    write!(
                        f,
                        " (crossed at {failed}; {} more failed in flight)",
                        total - failed
                    )?;
                }
                match hint {
                    Some(hint) => write!(f, "; {hint}"),
                    None => Ok(()),
                }
            }
            AbortReason::Fatal { stage, key, error } => {
                write!(
                    f,
                    "stage `{stage}` returned a fatal error for item `{key}`: {error}"
                )
            }
            AbortReason::Wedged { stage, stuck } => {
                let items: Vec<String> = stuck
                    .iter()
                    .map(|(key, age)| format!("`{key}` (running for {})", text::duration(*age)))
                    .collect();
                write!(
                    f,
                    "stage `{stage}` is wedged: {} blocking calls ignored their timeout and still hold its threads: {}; restart the process to get fresh threads",
                    stuck.len(),
                    items.join(", ")
                )
            }
            AbortReason::Frozen {
                stage,
                stuck,
                timeout,
            } => {
                let items: Vec<String> = stuck
                    .iter()
                    .map(|(key, age)| {
                        format!(
                            "`{}` (running for {})",
                            text::printable(key),
                            text::duration(*age)
                        )
                    })
                    .collect();
                write!(
                    f,
                    "stage `{stage}` blocks the runtime: {} attempt(s) ran far past its timeout ({}), which cannot fire while they hold their threads: {}; restart the process to get fresh threads",
                    stuck.len(),
                    text::duration(*timeout),
                    items.join(", ")
                )
            }
            AbortReason::Checkpoint(message) => write!(f, "checkpoint store failed: {message}"),
            AbortReason::Source { stage, error } => write!(f, "source `{stage}` failed: {error}"),
            AbortReason::Breaker {
                stage,
                lane,
                failures,
                window,
                error,
            } => {
                let of = match lane {
                    Some(lane) => format!("stage `{stage}`'s lane `{}`", text::printable(lane)),
                    None => format!("stage `{stage}`"),
                };
                write!(
                    f,
                    "the circuit breaker of {of} opened after {failures} transient failures within {} (`breaker.on_open = \"abort\"`); the last: {error}",
                    text::duration(*window)
                )
            }
        }
    }
}

impl AbortReason {
    /// The reason as the summary states it beside the final counts: a crossed failure budget
    /// counts every item failed by the end.
    pub(crate) fn at_the_end(self, failed: u64) -> AbortReason {
        match self {
            AbortReason::MaxFailures {
                failed: at,
                limit,
                hint,
                ..
            } => AbortReason::MaxFailures {
                failed: at,
                limit,
                hint,
                by_the_end: Some(failed),
            },
            other => other,
        }
    }
}

/// Why a run was interrupted (progress saved; the next run resumes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Interrupt {
    Signal(&'static str),
    MaxRunTime,
    /// This runner lost its claim on the run (a PostgreSQL store's lease): the others, or the
    /// next run, carry on with its items.
    Fenced,
}

impl std::fmt::Display for Interrupt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Interrupt::Signal(name) => write!(f, "received {name}"),
            Interrupt::MaxRunTime => f.write_str("`max_run_time` reached"),
            Interrupt::Fenced => f.write_str("this runner lost its claim on the run (fenced)"),
        }
    }
}

/// No stop requested yet (see [`Control::stop_requested`]).
const NOT_YET: u64 = u64::MAX;

pub(crate) struct Control {
    /// Stop taking new items.
    pub soft: CancellationToken,
    /// Cancel in-flight attempts.
    pub hard: CancellationToken,
    grace: Duration,
    abort: Mutex<Option<AbortReason>>,
    interrupt: Mutex<Option<Interrupt>>,
    /// Cancelled when this runner lost its claim on the run (see [`Control::fence`]).
    lost: Option<CancellationToken>,
    /// SIGUSR1 or SIGUSR2 asked for a status dump (see [`super::telemetry`]).
    pub dump: tokio::sync::Notify,
    /// The runtime, for the grace timer of a stop asked for from outside it.
    runtime: tokio::runtime::Handle,
    /// Where the milliseconds below count from.
    origin: Instant,
    /// When the first stop (or abort) was asked for, or [`NOT_YET`].
    stop_ms: AtomicU64,
    /// The runtime's last sign of life (see [`Control::alive`]).
    alive_ms: AtomicU64,
    /// What the drain waits for at its end, for the watchdog to name (the checkpoint store).
    waiting_on: Mutex<Option<String>>,
    /// Held while a stop is acted on and logged; once `settled`, stops are no longer logged, so
    /// the summary stays the last event.
    gate: Mutex<bool>,
}

impl Control {
    /// `lost`: the store's sign that this runner lost its claim on the run, if it can.
    pub(crate) fn new(
        grace: Duration,
        runtime: tokio::runtime::Handle,
        lost: Option<CancellationToken>,
    ) -> Self {
        Control {
            soft: CancellationToken::new(),
            hard: CancellationToken::new(),
            lost,
            grace,
            abort: Mutex::new(None),
            interrupt: Mutex::new(None),
            dump: tokio::sync::Notify::new(),
            runtime,
            origin: Instant::now(),
            stop_ms: AtomicU64::new(NOT_YET),
            alive_ms: AtomicU64::new(0),
            waiting_on: Mutex::new(None),
            gate: Mutex::new(false),
        }
    }

    /// The summary comes next: a stop being logged now finishes first, and later ones are not
    /// logged (they still act: the process is ending anyway).
    pub(crate) fn settle(&self) {
        *self
            .gate
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = true;
    }

    /// The gate, and whether stops may still be logged.
    fn gate(&self) -> std::sync::MutexGuard<'_, bool> {
        self.gate
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The run now waits for `what` (the final commit) before it can end.
    pub(crate) fn waiting_on(&self, what: Option<String>) {
        *self
            .waiting_on
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = what;
    }

    /// What the run waits for before it can end, if it said.
    pub(crate) fn waits_for(&self) -> Option<String> {
        self.waiting_on
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    pub(crate) fn grace(&self) -> Duration {
        self.grace
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.origin.elapsed().as_millis()).unwrap_or(NOT_YET - 1)
    }

    /// Keep the moment of the first stop request.
    fn note_stop(&self) {
        let _ = self.stop_ms.compare_exchange(
            NOT_YET,
            self.now_ms(),
            Ordering::SeqCst,
            Ordering::SeqCst,
        );
    }

    /// How long ago the first stop (or abort) was asked for, if one was.
    pub(crate) fn stop_requested(&self) -> Option<Duration> {
        match self.stop_ms.load(Ordering::SeqCst) {
            NOT_YET => None,
            at => Some(Duration::from_millis(self.now_ms().saturating_sub(at))),
        }
    }

    /// The runtime answered (called by a task on it, a few times a second).
    pub(crate) fn alive(&self) {
        self.alive_ms.store(self.now_ms(), Ordering::SeqCst);
    }

    /// How long since the runtime last answered.
    pub(crate) fn silent_for(&self) -> Duration {
        Duration::from_millis(
            self.now_ms()
                .saturating_sub(self.alive_ms.load(Ordering::SeqCst)),
        )
    }

    /// Whether this runner lost its claim on the run.
    pub(crate) fn fenced(&self) -> bool {
        self.lost
            .as_ref()
            .is_some_and(CancellationToken::is_cancelled)
    }

    /// This runner lost its claim on the run, `why`: its items may be another runner's already,
    /// so nothing more of its work can be saved. Everything stops now (no grace), and the run
    /// ends interrupted (exit 75): nothing failed, and the others carry on.
    pub(crate) fn fence(&self, why: &str) {
        let settled = self.gate();
        self.note_stop();
        {
            let mut slot = self
                .interrupt
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if *slot == Some(Interrupt::Fenced) {
                return;
            }
            *slot = Some(Interrupt::Fenced);
        }
        self.soft.cancel();
        self.hard.cancel();
        if !*settled {
            tracing::warn!(
                why = %why,
                "this runner was fenced: it lost its claim on the run, stops now and saves nothing more; the other runners (or the next run) take over its items from their last finished stage"
            );
        }
    }

    /// Stop everything now. The first reason is kept. A checkpoint store that refused a write
    /// because this runner lost its claim is no abort: see [`Control::fence`].
    pub(crate) fn abort(&self, reason: AbortReason) {
        if let (AbortReason::Checkpoint(why), true) = (&reason, self.fenced()) {
            return self.fence(why);
        }
        let settled = self.gate();
        self.note_stop();
        // The reason first: whoever sees the stop must find why (an abort, not an interrupt).
        let first = {
            let mut slot = self
                .abort
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            slot.is_none() && {
                *slot = Some(reason.clone());
                true
            }
        };
        self.soft.cancel();
        self.hard.cancel();
        if first && !*settled {
            tracing::error!(reason = %reason, "aborting the run");
        }
    }

    pub(crate) fn abort_reason(&self) -> Option<AbortReason> {
        self.abort
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    pub(crate) fn interrupt_reason(&self) -> Option<Interrupt> {
        *self
            .interrupt
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// A stop request: the first drains (hard cancel after the grace), the second cancels now.
    /// Callable from any thread.
    pub(crate) fn request_stop(self: &std::sync::Arc<Self>, why: Interrupt) {
        let settled = self.gate();
        self.note_stop();
        let first = {
            let mut slot = self
                .interrupt
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let first = slot.is_none();
            if first {
                *slot = Some(why);
            }
            first
        };
        if first && !self.soft.is_cancelled() {
            self.soft.cancel();
            if !*settled {
                tracing::warn!(
                reason = %why,
                grace_secs = text::secs(self.grace),
                "stopping: no new items; in-flight items may finish within the grace period"
                );
            }
            let me = self.clone();
            self.runtime.spawn(async move {
                tokio::select! {
                    () = tokio::time::sleep(me.grace) => {
                        let settled = me.gate();
                        if !me.hard.is_cancelled() {
                            me.hard.cancel();
                            if !*settled {
                                tracing::warn!("shutdown grace period over: cancelling in-flight items");
                            }
                        }
                    }
                    () = me.hard.cancelled() => {}
                }
            });
        } else if !self.hard.is_cancelled() {
            self.hard.cancel();
            if !*settled {
                tracing::warn!(reason = %why, "second stop request: cancelling in-flight items now");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::AbortReason;

    #[test]
    fn a_crossed_budget_is_stated_with_the_final_count() {
        let crossed = AbortReason::MaxFailures {
            failed: 2,
            limit: "1".to_owned(),
            hint: None,
            by_the_end: None,
        };
        assert_eq!(
            crossed.to_string(),
            "2 items failed, more than `max_failures` (1) allows"
        );
        assert_eq!(
            crossed.clone().at_the_end(2).to_string(),
            "2 items failed, more than `max_failures` (1) allows"
        );
        assert_eq!(
            crossed.at_the_end(3).to_string(),
            "3 items failed, more than `max_failures` (1) allows (crossed at 2; 1 more failed in flight)"
        );
        let resumed = AbortReason::MaxFailures {
            failed: 1,
            limit: "0".to_owned(),
            hint: Some("fix the cause, then `stagewise retry-failed`"),
            by_the_end: None,
        };
        assert_eq!(
            resumed.at_the_end(1).to_string(),
            "1 item failed, more than `max_failures` (0) allows; fix the cause, then `stagewise retry-failed`"
        );
    }
}
