//! Adaptive concurrency: how many attempts of a stage may be under way at once, lowered when
//! the service behind the stage says it is overloaded and raised back as calls succeed
//! (additive increase, additive decrease — the scheme TCP and Vector's adaptive request
//! concurrency use).
//!
//! The overload signal is a transient error that carries a retry-after hint: a 429 or a 503
//! with `Retry-After`, an LLM API's rate-limit reset. Without it, a stage set above the
//! service's own limit keeps the service full with fresh items while the items it turned away
//! wait, and those lose again when they retry, until their attempts run out. With it, each
//! such error takes one place away (down to 1), so the stage settles at what the service
//! admits; each success gives back a fraction `1 / limit` of a place, so the limit grows by
//! about one per round of successful calls, up to the stage's `concurrency`, probing whether the
//! service admits more.
//!
//! The gate is a counter under a mutex with a FIFO [`Notify`]: waiting items start in the
//! order they came.

use std::sync::{Mutex, MutexGuard};

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

#[derive(Debug)]
struct State {
    /// Attempts under way.
    active: usize,
    /// The current limit; the whole part counts.
    limit: f64,
    /// The lowest whole limit so far.
    lowest: usize,
}

/// One stage's gate.
#[derive(Debug)]
pub(crate) struct Adaptive {
    max: usize,
    state: Mutex<State>,
    notify: Notify,
}

/// A place in the gate, given back when dropped.
pub(crate) struct Place<'a>(&'a Adaptive);

impl Drop for Place<'_> {
    fn drop(&mut self) {
        self.0.leave();
    }
}

/// A place in a shared gate (a lane's), given back when dropped.
pub(crate) struct OwnedPlace(std::sync::Arc<Adaptive>);

impl Drop for OwnedPlace {
    fn drop(&mut self) {
        self.0.leave();
    }
}

impl Adaptive {
    pub(crate) fn new(max: usize) -> Self {
        let max = max.max(1);
        Adaptive {
            max,
            state: Mutex::new(State {
                active: 0,
                limit: max as f64,
                lowest: max,
            }),
            notify: Notify::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Wait for a place, or until `stop` is cancelled (`None`).
    pub(crate) async fn enter(&self, stop: &CancellationToken) -> Option<Place<'_>> {
        tokio::select! {
            biased;
            () = stop.cancelled() => None,
            place = self.acquire() => Some(place),
        }
    }

    /// Wait for a place.
    pub(crate) async fn acquire(&self) -> Place<'_> {
        self.wait().await;
        Place(self)
    }

    /// Wait for a place in a shared gate.
    ///
    /// # Cancel safety
    ///
    /// A place is taken only when the future completes.
    pub(crate) async fn wait_owned(self: &std::sync::Arc<Self>) -> OwnedPlace {
        self.wait().await;
        OwnedPlace(self.clone())
    }

    /// A place in a shared gate if one is free now.
    pub(crate) fn try_take_owned(self: &std::sync::Arc<Self>) -> Option<OwnedPlace> {
        let mut state = self.lock();
        if state.active < whole(state.limit) {
            state.active += 1;
            return Some(OwnedPlace(self.clone()));
        }
        None
    }

    /// Wait until a place is free, and take it.
    ///
    /// # Cancel safety
    ///
    /// A place is taken only when the future completes.
    async fn wait(&self) {
        loop {
            let notified = self.notify.notified();
            tokio::pin!(notified);
            // Registered before the check, so a place freed in between is not missed.
            notified.as_mut().enable();
            {
                let mut state = self.lock();
                if state.active < whole(state.limit) {
                    state.active += 1;
                    return;
                }
            }
            notified.await;
        }
    }

    fn leave(&self) {
        self.lock().active -= 1;
        self.notify.notify_one();
    }

    /// Whether no attempt holds a place and the limit is the configured one: the gate has
    /// nothing to remember.
    pub(crate) fn idle(&self) -> bool {
        let state = self.lock();
        state.active == 0 && whole(state.limit) >= self.max
    }

    /// A call went through: give back a fraction of a place. Returns the new whole limit when
    /// it grew.
    pub(crate) fn succeeded(&self) -> Option<usize> {
        let grew = {
            let mut state = self.lock();
            if whole(state.limit) >= self.max {
                return None;
            }
            let before = whole(state.limit);
            state.limit = (state.limit + 1.0 / state.limit).min(self.max as f64);
            let after = whole(state.limit);
            (after > before).then_some(after)
        };
        if grew.is_some() {
            self.notify.notify_one();
        }
        grew
    }

    /// The service said it is overloaded: take a place away (down to 1). Returns the new whole
    /// limit.
    pub(crate) fn overloaded(&self) -> usize {
        let mut state = self.lock();
        state.limit = (whole(state.limit) - 1).max(1) as f64;
        let now = whole(state.limit);
        state.lowest = state.lowest.min(now);
        now
    }

    /// The lowest limit so far, when it went under the configured concurrency.
    pub(crate) fn lowest(&self) -> Option<usize> {
        let lowest = self.lock().lowest;
        (lowest < self.max).then_some(lowest)
    }

    /// The current whole limit.
    pub(crate) fn limit(&self) -> usize {
        whole(self.lock().limit)
    }

    /// The configured concurrency.
    pub(crate) fn max(&self) -> usize {
        self.max
    }
}

fn whole(limit: f64) -> usize {
    (limit.floor() as usize).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::Duration;

    #[test]
    fn overload_takes_places_away_and_successes_give_them_back() {
        let gate = Adaptive::new(4);
        assert_eq!(gate.lowest(), None);
        assert_eq!(gate.overloaded(), 3);
        assert_eq!(gate.overloaded(), 2);
        assert_eq!(gate.overloaded(), 1);
        assert_eq!(gate.overloaded(), 1, "never below one");
        assert_eq!(gate.lowest(), Some(1));
        // From 1: one success makes 2 (1 + 1/1); from 2, about a round of successes makes 3
        // (2.5, 2.9, 3.24).
        assert_eq!(gate.succeeded(), Some(2));
        assert_eq!(gate.succeeded(), None);
        assert_eq!(gate.succeeded(), None);
        assert_eq!(gate.succeeded(), Some(3));
        for _ in 0..10 {
            gate.succeeded();
        }
        assert_eq!(
            whole(gate.lock().limit),
            4,
            "capped at the configured concurrency"
        );
        assert_eq!(gate.max(), 4);
    }

    #[tokio::test(start_paused = true)]
    async fn waiters_start_when_a_place_frees_or_the_limit_grows() {
        let gate = Arc::new(Adaptive::new(2));
        gate.overloaded();
        let first = gate.acquire().await;
        let g = gate.clone();
        let second = tokio::spawn(async move {
            let _place = g.acquire().await;
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(
            !second.is_finished(),
            "the limit is 1 and its place is taken"
        );
        // The limit grows back to 2: the waiter starts while `first` still holds its place.
        assert_eq!(gate.succeeded(), Some(2));
        tokio::time::timeout(Duration::from_secs(5), second)
            .await
            .expect("the waiter starts")
            .expect("no panic");
        drop(first);
        assert_eq!(gate.lock().active, 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_lowered_limit_holds_back_the_next_attempt_until_a_place_frees() {
        let gate = Arc::new(Adaptive::new(3));
        let stop = CancellationToken::new();
        let a = gate.enter(&stop).await.expect("a place");
        let b = gate.enter(&stop).await.expect("a place");
        // Overloaded twice: the limit is 1 while two attempts are under way.
        assert_eq!(gate.overloaded(), 2);
        assert_eq!(gate.overloaded(), 1);
        let (g, s) = (gate.clone(), stop.clone());
        let third = tokio::spawn(async move { g.enter(&s).await.is_some() });
        tokio::time::sleep(Duration::from_secs(1)).await;
        drop(a);
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert!(
            !third.is_finished(),
            "one attempt still holds the only place"
        );
        drop(b);
        let entered = tokio::time::timeout(Duration::from_secs(1), third)
            .await
            .expect("the waiter starts once the place frees")
            .expect("no panic");
        assert!(entered);
    }

    #[tokio::test(start_paused = true)]
    async fn a_stop_ends_the_wait_for_a_place() {
        let gate = Adaptive::new(1);
        let stop = CancellationToken::new();
        let _held = gate.enter(&stop).await.expect("a place");
        let canceller = stop.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(2)).await;
            canceller.cancel();
        });
        assert!(gate.enter(&stop).await.is_none());
    }
}
