//! The items in flight: the feeder starts an item only when it gets a place among all the items
//! in the process (nine times the window) and then in the window (the sum of the stages'
//! `concurrency`), which bounds the records in memory. An item that only waits — out a backoff
//! or a retry-after, or for a busy lane — steps out of the window, so that another item can use
//! its place meanwhile, and takes a place in the window again before its next attempt.
//! Otherwise a few items of a host that answers slowly, or asks for long waits, would fill the
//! window and hold back every other host's items.

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;

/// Items in the process, waiting ones included, per place of the window.
const ITEMS_PER_PLACE: usize = 9;

/// The window's places, and the bound on all the items in the process.
///
/// Every item holds a place among all the items for its whole life (taken by the feeder, before
/// its place in the window), so an item that steps aside never needs room to do so, and never
/// waits for anything while it holds a window place that another waits on: an item in the
/// window is attempting, or waiting for a stage's slot that a running attempt frees.
#[derive(Debug)]
pub(crate) struct Window {
    active: Arc<Semaphore>,
    all: Arc<Semaphore>,
}

impl Window {
    /// A window of `places` items in flight (at least 1), with [`ITEMS_PER_PLACE`] times as
    /// many items in the process, waiting ones included.
    pub(crate) fn new(places: usize) -> Arc<Self> {
        let places = places.max(1);
        Arc::new(Window {
            active: Arc::new(Semaphore::new(places)),
            all: Arc::new(Semaphore::new(places.saturating_mul(ITEMS_PER_PLACE))),
        })
    }

    /// Places free in the window now.
    pub(crate) fn free(&self) -> usize {
        self.active.available_permits()
    }

    /// Wait for a place among the items, then in the window.
    ///
    /// # Cancel safety
    ///
    /// Places are taken only when the future completes.
    pub(crate) async fn enter(self: &Arc<Self>) -> InFlight {
        let all = self
            .all
            .clone()
            .acquire_owned()
            .await
            .expect("the window is never closed");
        let active = self
            .active
            .clone()
            .acquire_owned()
            .await
            .expect("the window is never closed");
        InFlight {
            window: self.clone(),
            _all: all,
            active: Mutex::new(Some(active)),
        }
    }
}

/// An item's places: among all the items, and in the window unless it stepped aside. Given
/// back when dropped.
#[derive(Debug)]
pub(crate) struct InFlight {
    window: Arc<Window>,
    _all: OwnedSemaphorePermit,
    active: Mutex<Option<OwnedSemaphorePermit>>,
}

impl InFlight {
    fn lock(&self) -> MutexGuard<'_, Option<OwnedSemaphorePermit>> {
        self.active.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The item is about to wait: give its place in the window to another item.
    pub(crate) fn step_aside(&self) {
        // Dropping it gives the place back.
        self.lock().take();
    }

    /// The item is done waiting: take a place in the window again. `false` if `stop` came
    /// first.
    pub(crate) async fn come_back(&self, stop: &CancellationToken) -> bool {
        if self.lock().is_some() {
            return true;
        }
        let active = tokio::select! {
            biased;
            () = stop.cancelled() => return false,
            p = self.window.active.clone().acquire_owned() => p.expect("the window is never closed"),
        };
        *self.lock() = Some(active);
        true
    }

    /// Whether the item holds a place in the window (not aside).
    #[cfg(test)]
    fn is_in_window(&self) -> bool {
        self.lock().is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test(start_paused = true)]
    async fn an_item_that_steps_aside_lets_another_in_and_comes_back_when_a_place_frees() {
        let window = Window::new(1);
        let stop = CancellationToken::new();
        let first = window.enter().await;
        let second = tokio::time::timeout(Duration::from_secs(1), window.enter());
        assert!(second.await.is_err(), "the window is full");
        first.step_aside();
        let second = tokio::time::timeout(Duration::from_secs(1), window.enter())
            .await
            .expect("the place the first item left");
        let back = tokio::time::timeout(Duration::from_secs(1), first.come_back(&stop));
        assert!(back.await.is_err(), "the first item waits for a place");
        drop(second);
        let back = tokio::time::timeout(Duration::from_secs(1), first.come_back(&stop))
            .await
            .expect("a place freed");
        assert!(back);
        assert!(first.is_in_window(), "in the window again");
    }

    #[tokio::test(start_paused = true)]
    async fn the_items_in_the_process_are_bounded_and_a_stop_ends_a_wait() {
        let window = Window::new(1);
        let stop = CancellationToken::new();
        let mut items = Vec::new();
        for _ in 0..ITEMS_PER_PLACE {
            let item = window.enter().await;
            item.step_aside();
            items.push(item);
        }
        let more = tokio::time::timeout(Duration::from_secs(1), window.enter());
        assert!(more.await.is_err(), "as many items as the bound allows");
        let _back = items[0].come_back(&stop).await;
        stop.cancel();
        assert!(!items[1].come_back(&stop).await, "a stop ends the wait");
    }
}
