//! The circuit breaker: a stage whose service is down stops starting attempts, instead of
//! spending every item's attempts on it and hammering it while it recovers.
//!
//! Closed, it counts the stage's transient failures; `failures` of them within `window` open
//! it. Open, no attempt starts: items wait (holding their places, using no attempt) until
//! `cool_down` has passed. Then one attempt, the probe, goes through (half-open): if it
//! succeeds the breaker closes and the waiting items go on; if it fails the breaker opens for
//! another `cool_down`. A failure of an attempt that began before the breaker opened changes
//! nothing.
//!
//! The state is a small machine under a mutex; waiting items are woken by a [`Notify`] when it
//! changes, or when the cool-down they wait for ends.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// What an open breaker does to the run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnOpen {
    /// Items wait for the service to come back (the default).
    Wait,
    /// The run ends (exit 3), its progress saved.
    Abort,
}

/// A stage's resolved `breaker` (the default: the built-in settings, for the lanes of a stage
/// that asks for a breaker per lane without setting `breaker`).
#[derive(Debug, Clone, PartialEq)]
pub struct BreakerPolicy {
    /// Transient failures within `window` that open it.
    pub failures: u32,
    /// The window the failures are counted in.
    pub window: Duration,
    /// How long it stays open before a probe goes through.
    pub cool_down: Duration,
    /// What opening it does to the run.
    pub on_open: OnOpen,
}

impl Default for BreakerPolicy {
    fn default() -> BreakerPolicy {
        BreakerPolicy {
            failures: super::builtin::BREAKER_FAILURES,
            window: super::builtin::BREAKER_WINDOW,
            cool_down: super::builtin::BREAKER_COOL_DOWN,
            on_open: OnOpen::Wait,
        }
    }
}

/// An attempt a breaker let through, until it is settled: [`Admitted::succeeded`] or
/// [`Admitted::failed`] tell the breaker how it ended; dropped unsettled (the run stopped it, or
/// the item's deadline passed before its call), a probe's place goes to the next item.
#[derive(Debug)]
pub(crate) struct Admitted {
    breaker: Arc<Breaker>,
    admission: Admission,
    settled: bool,
}

impl Admitted {
    /// The breaker that let the attempt through.
    pub(crate) fn breaker(&self) -> &Breaker {
        &self.breaker
    }

    /// The attempt answered.
    pub(crate) fn succeeded(mut self) -> Change {
        self.settled = true;
        self.breaker.succeeded(self.admission)
    }

    /// The attempt failed; `transient` whether its error counts.
    pub(crate) fn failed(mut self, transient: bool) -> Change {
        self.settled = true;
        self.breaker.failed(self.admission, transient)
    }
}

impl Drop for Admitted {
    fn drop(&mut self) {
        if !self.settled {
            self.breaker.released(self.admission);
        }
    }
}

#[derive(Debug)]
enum State {
    /// Attempts go through; the times of the recent transient failures.
    Closed(VecDeque<Instant>),
    /// No attempt starts before `until`.
    Open { until: Instant },
    /// One attempt, the probe, may go through; `probing` while it is under way.
    HalfOpen { probing: bool },
}

/// What an attempt was let through as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Admission {
    /// The breaker was closed.
    Normal,
    /// The one attempt of a half-open breaker.
    Probe,
}

/// How the breaker changed with an attempt's end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Change {
    /// It did not.
    None,
    /// It opened: the window's failures crossed `failures`.
    Opened,
    /// The probe failed: open again.
    Reopened,
    /// The probe succeeded: closed.
    Closed,
}

/// One stage's breaker.
#[derive(Debug)]
pub(crate) struct Breaker {
    pub policy: BreakerPolicy,
    state: Mutex<State>,
    changed: Notify,
}

impl Breaker {
    pub(crate) fn new(policy: BreakerPolicy) -> Breaker {
        Breaker {
            policy,
            state: Mutex::new(State::Closed(VecDeque::new())),
            changed: Notify::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Wait until an attempt may start, or `None` if `stop` is cancelled first.
    pub(crate) async fn admit_owned(
        self: &Arc<Self>,
        stop: &CancellationToken,
    ) -> Option<Admitted> {
        let admission = self.admit(stop).await?;
        Some(self.admitted(admission))
    }

    /// An attempt may start now: let it through; `None` if it would have to wait.
    pub(crate) fn try_admit_owned(self: &Arc<Self>) -> Option<Admitted> {
        let admission = self.try_admit().ok()?;
        Some(self.admitted(admission))
    }

    fn admitted(self: &Arc<Self>, admission: Admission) -> Admitted {
        Admitted {
            breaker: self.clone(),
            admission,
            settled: false,
        }
    }

    /// Let an attempt through now, or say until when it must wait (`None`: until the probe
    /// under way ends).
    fn try_admit(&self) -> Result<Admission, Option<Instant>> {
        let mut state = self.lock();
        match &mut *state {
            State::Closed(_) => Ok(Admission::Normal),
            State::Open { until } if Instant::now() >= *until => {
                *state = State::HalfOpen { probing: true };
                Ok(Admission::Probe)
            }
            State::Open { until } => Err(Some(*until)),
            State::HalfOpen { probing } if !*probing => {
                *probing = true;
                Ok(Admission::Probe)
            }
            State::HalfOpen { .. } => Err(None),
        }
    }

    /// Wait until an attempt may start, or `None` if `stop` is cancelled first.
    pub(crate) async fn admit(&self, stop: &CancellationToken) -> Option<Admission> {
        loop {
            // Registered before the state is read: a change in between still wakes it.
            let notified = self.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let until = match self.try_admit() {
                Ok(admission) => return Some(admission),
                Err(until) => until,
            };
            tokio::select! {
                biased;
                () = stop.cancelled() => return None,
                () = &mut notified => {}
                () = async {
                    match until {
                        Some(until) => tokio::time::sleep_until(until).await,
                        None => std::future::pending().await,
                    }
                } => {}
            }
        }
    }

    /// The attempt let through as `admission` answered.
    pub(crate) fn succeeded(&self, admission: Admission) -> Change {
        let mut state = self.lock();
        match (admission, &*state) {
            (Admission::Probe, State::HalfOpen { .. }) => {
                *state = State::Closed(VecDeque::new());
                drop(state);
                self.changed.notify_waiters();
                Change::Closed
            }
            _ => Change::None,
        }
    }

    /// The attempt let through as `admission` failed; `transient` whether its error counts.
    pub(crate) fn failed(&self, admission: Admission, transient: bool) -> Change {
        let now = Instant::now();
        let mut state = self.lock();
        let change = match (admission, &mut *state) {
            (Admission::Probe, State::HalfOpen { .. }) => {
                *state = State::Open {
                    until: now + self.policy.cool_down,
                };
                Change::Reopened
            }
            (Admission::Normal, State::Closed(failures)) if transient => {
                failures.push_back(now);
                while failures
                    .front()
                    .is_some_and(|t| now.duration_since(*t) > self.policy.window)
                {
                    failures.pop_front();
                }
                if failures.len() >= self.policy.failures as usize {
                    *state = State::Open {
                        until: now + self.policy.cool_down,
                    };
                    Change::Opened
                } else {
                    Change::None
                }
            }
            _ => Change::None,
        };
        drop(state);
        if change != Change::None {
            self.changed.notify_waiters();
        }
        change
    }

    /// The attempt let through as `admission` ended without an answer either way (the run
    /// stopped it): a probe's place goes to the next item.
    pub(crate) fn released(&self, admission: Admission) {
        if admission != Admission::Probe {
            return;
        }
        let mut state = self.lock();
        if let State::HalfOpen { probing } = &mut *state {
            *probing = false;
            drop(state);
            self.changed.notify_waiters();
        }
    }

    /// Whether attempts are held back now (open or half-open).
    pub(crate) fn is_open(&self) -> bool {
        !matches!(*self.lock(), State::Closed(_))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn breaker() -> Breaker {
        Breaker::new(BreakerPolicy {
            failures: 3,
            window: Duration::from_secs(10),
            cool_down: Duration::from_secs(5),
            on_open: OnOpen::Wait,
        })
    }

    #[tokio::test(start_paused = true)]
    async fn failures_in_the_window_open_it_and_a_probe_closes_it() {
        let b = breaker();
        let stop = CancellationToken::new();
        // Two failures, then the first leaves the window: still closed after a third.
        assert_eq!(b.admit(&stop).await, Some(Admission::Normal));
        assert_eq!(b.failed(Admission::Normal, true), Change::None);
        tokio::time::advance(Duration::from_secs(11)).await;
        assert_eq!(b.failed(Admission::Normal, true), Change::None);
        assert_eq!(
            b.failed(Admission::Normal, false),
            Change::None,
            "not transient"
        );
        assert_eq!(b.failed(Admission::Normal, true), Change::None);
        assert!(!b.is_open());
        assert_eq!(b.failed(Admission::Normal, true), Change::Opened);
        assert!(b.is_open());

        // Open: an attempt waits the cool-down, then goes as the probe; a second waits on.
        let began = Instant::now();
        assert_eq!(b.admit(&stop).await, Some(Admission::Probe));
        assert_eq!(began.elapsed(), Duration::from_secs(5));
        let second = tokio::time::timeout(Duration::from_secs(60), b.admit(&stop)).await;
        assert!(second.is_err(), "one probe at a time");

        // The probe fails: open for another cool-down; the next probe succeeds and closes it.
        assert_eq!(b.failed(Admission::Probe, true), Change::Reopened);
        let began = Instant::now();
        assert_eq!(b.admit(&stop).await, Some(Admission::Probe));
        assert_eq!(began.elapsed(), Duration::from_secs(5));
        assert_eq!(b.succeeded(Admission::Probe), Change::Closed);
        assert!(!b.is_open());
        assert_eq!(b.admit(&stop).await, Some(Admission::Normal));
    }

    #[tokio::test(start_paused = true)]
    async fn waiting_items_go_on_when_the_probe_succeeds_and_a_stop_ends_the_wait() {
        let b = std::sync::Arc::new(breaker());
        let stop = CancellationToken::new();
        for _ in 0..3 {
            b.failed(Admission::Normal, true);
        }
        let probe = b.admit(&stop).await;
        assert_eq!(probe, Some(Admission::Probe));
        let waiting = {
            let (b, stop) = (b.clone(), stop.clone());
            tokio::spawn(async move { b.admit(&stop).await })
        };
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(!waiting.is_finished());
        b.succeeded(Admission::Probe);
        assert_eq!(waiting.await.expect("joined"), Some(Admission::Normal));

        // Open again; a probe the run stopped gives its place to the next; a stop ends a wait.
        for _ in 0..3 {
            b.failed(Admission::Normal, true);
        }
        tokio::time::advance(Duration::from_secs(5)).await;
        let probe = b.admit(&stop).await.expect("the probe");
        b.released(probe);
        assert_eq!(b.admit(&stop).await, Some(Admission::Probe));
        let waiting = {
            let (b, stop) = (b.clone(), stop.clone());
            tokio::spawn(async move { b.admit(&stop).await })
        };
        stop.cancel();
        assert_eq!(waiting.await.expect("joined"), None);
    }

    /// An attempt let through and dropped unsettled (its item's deadline passed before the
    /// call, the run stopped it) gives a probe's place to the next; settled, it tells the
    /// breaker. `try_admit_owned` never waits.
    #[tokio::test(start_paused = true)]
    async fn an_unsettled_admission_gives_the_probe_back() {
        let b = std::sync::Arc::new(breaker());
        let stop = CancellationToken::new();
        assert!(b.try_admit_owned().is_some(), "closed: at once");
        for _ in 0..3 {
            b.try_admit_owned().expect("closed").failed(true);
        }
        assert!(b.is_open());
        assert!(b.try_admit_owned().is_none(), "open: it would wait");
        tokio::time::advance(Duration::from_secs(5)).await;
        let probe = b
            .try_admit_owned()
            .expect("the cool-down is over: the probe");
        assert!(b.try_admit_owned().is_none(), "one probe at a time");
        drop(probe);
        let probe = b
            .admit_owned(&stop)
            .await
            .expect("the probe's place, again");
        assert_eq!(probe.succeeded(), Change::Closed);
        assert!(!b.is_open());
    }
}
