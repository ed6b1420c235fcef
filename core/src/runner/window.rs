//! The items in flight: the feeder starts an item only when it gets a place in the window (the
//! sum of the stages' `concurrency`), which bounds the records in memory. An item that only
//! waits — out a backoff or a retry-after, or for a busy lane — steps aside: it trades its
//! place for one among the waiting items (a larger, separate bound), so that the feeder can
//! start another item meanwhile, and takes a place in the window again before its next
//! attempt. Otherwise a few items of a host that answers slowly, or asks for long waits, would
//! fill the window and hold back every other host's items.

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;

/// Waiting items allowed per place of the window.
const WAITING_PER_PLACE: usize = 8;

/// The window's places, and the waiting items'.
#[derive(Debug)]
pub(crate) struct Window {
    active: Arc<Semaphore>,
    waiting: Arc<Semaphore>,
}

impl Window {
    /// A window of `places` items in flight (at least 1), and room for
    /// [`WAITING_PER_PLACE`] times as many waiting aside.
    pub(crate) fn new(places: usize) -> Arc<Self> {
        let places = places.max(1);
        Arc::new(Window {
            active: Arc::new(Semaphore::new(places)),
            waiting: Arc::new(Semaphore::new(places.saturating_mul(WAITING_PER_PLACE))),
        })
    }

    /// Wait for a place in the window.
    ///
    /// # Cancel safety
    ///
    /// A place is taken only when the future completes.
    pub(crate) async fn enter(self: &Arc<Self>) -> InFlight {
        let permit = self
            .active
            .clone()
            .acquire_owned()
            .await
            .expect("the window is never closed");
        InFlight {
            window: self.clone(),
            held: Mutex::new(Held {
                active: Some(permit),
                aside: None,
            }),
        }
    }
}

/// An item's place: in the window, or aside among the waiting items. Given back when dropped.
#[derive(Debug)]
pub(crate) struct InFlight {
    window: Arc<Window>,
    held: Mutex<Held>,
}

/// One of the two, never both.
#[derive(Debug)]
struct Held {
    active: Option<OwnedSemaphorePermit>,
    aside: Option<OwnedSemaphorePermit>,
}

impl InFlight {
    fn lock(&self) -> MutexGuard<'_, Held> {
        self.held.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The item is about to wait: give its place in the window to another item, if there is room
    /// among the waiting ones (else it keeps its place and waits there, as before).
    pub(crate) fn step_aside(&self) {
        let mut held = self.lock();
        if held.active.is_none() {
            return;
        }
        if let Ok(aside) = self.window.waiting.clone().try_acquire_owned() {
            held.aside = Some(aside);
            // Dropping it gives the place back.
            held.active = None;
        }
    }

    /// The item is done waiting: take a place in the window again. `false` if `stop` came
    /// first (the item keeps its place aside, and leaves).
    pub(crate) async fn come_back(&self, stop: &CancellationToken) -> bool {
        if self.lock().aside.is_none() {
            return true;
        }
        let active = tokio::select! {
            biased;
            () = stop.cancelled() => return false,
            p = self.window.active.clone().acquire_owned() => p.expect("the window is never closed"),
        };
        let mut held = self.lock();
        held.active = Some(active);
        held.aside = None;
        true
    }

    /// Whether the item holds a place in the window (not aside).
    #[cfg(test)]
    fn is_in_window(&self) -> bool {
        self.lock().active.is_some()
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
    async fn with_no_room_aside_an_item_keeps_its_place_and_a_stop_ends_a_wait() {
        let window = Window::new(1);
        let stop = CancellationToken::new();
        let items: Vec<InFlight> = {
            let mut items = vec![window.enter().await];
            for _ in 0..WAITING_PER_PLACE {
                items[0].step_aside();
                items.insert(0, window.enter().await);
            }
            items
        };
        // Every place aside is taken: the item in the window stays there.
        items[0].step_aside();
        let full = tokio::time::timeout(Duration::from_secs(1), window.enter());
        assert!(full.await.is_err(), "no place was given up");
        stop.cancel();
        assert!(!items[1].come_back(&stop).await, "a stop ends the wait");
    }
}
