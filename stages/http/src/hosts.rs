//! Politeness per host: at most `per_host_concurrency` requests to one host at once. (Safety,
//! the addresses a URL may reach, is `guard.rs`.)

use std::collections::HashMap;
use std::sync::{Condvar, Mutex};
use std::time::Instant;

/// Counts requests per host.
pub(crate) struct HostSlots {
    max: usize,
    busy: Mutex<HashMap<String, usize>>,
    freed: Condvar,
}

/// A request's place on its host; freed on drop.
pub(crate) struct Slot<'a> {
    slots: &'a HostSlots,
    host: String,
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        let mut busy = self.slots.lock();
        if let Some(n) = busy.get_mut(&self.host) {
            *n -= 1;
            if *n == 0 {
                busy.remove(&self.host);
            }
        }
        self.slots.freed.notify_all();
    }
}

impl HostSlots {
    pub(crate) fn new(max: usize) -> Self {
        HostSlots {
            max: max.max(1),
            busy: Mutex::new(HashMap::new()),
            freed: Condvar::new(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, usize>> {
        self.busy
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Wait for a free slot on `host` until `deadline` or until `stop()` says so; `None` then.
    pub(crate) fn acquire(
        &self,
        host: &str,
        deadline: Instant,
        stop: &dyn Fn() -> bool,
    ) -> Option<Slot<'_>> {
        let mut busy = self.lock();
        loop {
            let n = busy.entry(host.to_owned()).or_insert(0);
            if *n < self.max {
                *n += 1;
                return Some(Slot {
                    slots: self,
                    host: host.to_owned(),
                });
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() || stop() {
                return None;
            }
            // Wake now and then to notice a cancelled attempt.
            busy = self
                .freed
                .wait_timeout(busy, left.min(std::time::Duration::from_millis(50)))
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_slots_bound_requests_per_host() {
        let slots = HostSlots::new(2);
        let soon = Instant::now() + std::time::Duration::from_millis(50);
        let never = || false;
        let a = slots.acquire("a", soon, &never).expect("first");
        let _b = slots.acquire("a", soon, &never).expect("second");
        assert!(
            slots.acquire("a", soon, &never).is_none(),
            "a third waits and times out"
        );
        assert!(
            slots.acquire("b", soon, &never).is_some(),
            "another host is not held up"
        );
        let later = Instant::now() + std::time::Duration::from_secs(10);
        let started = Instant::now();
        assert!(
            slots.acquire("a", later, &|| true).is_none(),
            "a cancelled wait gives up"
        );
        assert!(started.elapsed() < std::time::Duration::from_secs(1));
        drop(a);
        let soon = Instant::now() + std::time::Duration::from_millis(50);
        assert!(slots.acquire("a", soon, &never).is_some());
    }
}
