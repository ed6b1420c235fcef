//! How a run stops: an orderly drain on a signal or `max_run_time`, at once on a second signal
//! or an abort. No code runs in a signal handler: signals arrive as tokio streams and only flip
//! cancellation tokens.
//!
//! Two tokens: `soft` (stop taking new items) and `hard` (cancel what is in flight). A drain
//! cancels `soft`, then `hard` once `shutdown_grace` has passed; an abort cancels both.

use std::sync::Mutex;
use std::time::Duration;

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
    Checkpoint(String),
    Source {
        stage: String,
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
            AbortReason::Checkpoint(message) => write!(f, "checkpoint store failed: {message}"),
            AbortReason::Source { stage, error } => write!(f, "source `{stage}` failed: {error}"),
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
}

impl std::fmt::Display for Interrupt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Interrupt::Signal(name) => write!(f, "received {name}"),
            Interrupt::MaxRunTime => f.write_str("`max_run_time` reached"),
        }
    }
}

pub(crate) struct Control {
    /// Stop taking new items.
    pub soft: CancellationToken,
    /// Cancel in-flight attempts.
    pub hard: CancellationToken,
    grace: Duration,
    abort: Mutex<Option<AbortReason>>,
    interrupt: Mutex<Option<Interrupt>>,
    /// SIGUSR1 or SIGUSR2 asked for a status dump (see [`super::telemetry`]).
    pub dump: tokio::sync::Notify,
}

impl Control {
    pub(crate) fn new(grace: Duration) -> Self {
        Control {
            soft: CancellationToken::new(),
            hard: CancellationToken::new(),
            grace,
            abort: Mutex::new(None),
            interrupt: Mutex::new(None),
            dump: tokio::sync::Notify::new(),
        }
    }

    /// Stop everything now. The first reason is kept.
    pub(crate) fn abort(&self, reason: AbortReason) {
        let mut slot = self
            .abort
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if slot.is_none() {
            tracing::error!(reason = %reason, "aborting the run");
            *slot = Some(reason);
        }
        drop(slot);
        self.soft.cancel();
        self.hard.cancel();
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
    pub(crate) fn request_stop(self: &std::sync::Arc<Self>, why: Interrupt) {
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
            tracing::warn!(
                reason = %why,
                grace = %text::duration(self.grace),
                "stopping: no new items; in-flight items may finish within the grace period"
            );
            self.soft.cancel();
            let me = self.clone();
            tokio::spawn(async move {
                tokio::select! {
                    () = tokio::time::sleep(me.grace) => {
                        if !me.hard.is_cancelled() {
                            tracing::warn!("shutdown grace period over: cancelling in-flight items");
                            me.hard.cancel();
                        }
                    }
                    () = me.hard.cancelled() => {}
                }
            });
        } else if !self.hard.is_cancelled() {
            tracing::warn!(reason = %why, "second stop request: cancelling in-flight items now");
            self.hard.cancel();
        }
    }
}

/// Until `done` is cancelled: SIGTERM, SIGINT and SIGHUP (a closing terminal or ssh session,
/// some supervisors) are stop requests — the first drains, the next of any of them cancels at
/// once; SIGUSR1 and SIGUSR2 ask for a status dump and never stop the run. Without these
/// streams, each of those signals would end the process at once, without a word.
pub(crate) async fn watch_signals(control: std::sync::Arc<Control>, done: CancellationToken) {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int), Ok(mut hup), Ok(mut usr1), Ok(mut usr2)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
        signal(SignalKind::hangup()),
        signal(SignalKind::user_defined1()),
        signal(SignalKind::user_defined2()),
    ) else {
        tracing::error!(
            "cannot install signal streams: SIGTERM/SIGINT/SIGHUP will kill the process without saving"
        );
        return;
    };
    loop {
        let name = tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
            _ = hup.recv() => "SIGHUP",
            _ = usr1.recv() => {
                control.dump.notify_one();
                continue;
            }
            _ = usr2.recv() => {
                control.dump.notify_one();
                continue;
            }
            () = done.cancelled() => return,
        };
        control.request_stop(Interrupt::Signal(name));
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
