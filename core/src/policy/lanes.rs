//! Lanes: a stage's places per destination (see [`crate::stage::Lane`]). Each lane is an
//! [`Adaptive`] gate of its own, as wide as the lane's `width`, narrowed by the overload
//! signals of that lane's service only; a lane that asks for one (`Lane::breaker`) also has a
//! circuit [`Breaker`] of its own, opened by that lane's failures only.
//!
//! The lane names come from data (a URL's host), so the table forgets a lane once nothing is
//! under way in it and its limit is back to its width (or, when there are many, once nothing is
//! under way in it): it holds the lanes in use or recently slowed down, not every name the
//! batch ever held.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use super::adaptive::Adaptive;
use super::breaker::{Breaker, BreakerPolicy};
use crate::stage::Lane;

/// Lanes kept before the idle ones are forgotten.
const KEEP: usize = 256;

/// The lanes of one stage.
#[derive(Debug, Default)]
pub(crate) struct Lanes {
    gates: Mutex<Table>,
}

#[derive(Debug, Default)]
struct Table {
    gates: HashMap<String, Arc<Adaptive>>,
    /// The size at which idle lanes are forgotten next: twice what the last pass kept, so the
    /// passes cost O(1) a lane however many stay.
    prune_at: usize,
    /// The lanes' breakers, for the lanes that have one.
    breakers: HashMap<String, Arc<Breaker>>,
    /// As `prune_at`, for `breakers`.
    breakers_prune_at: usize,
}

impl Lanes {
    fn lock(&self) -> MutexGuard<'_, Table> {
        self.gates
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The gate of `lane`, made on first use.
    pub(crate) fn gate(&self, lane: &Lane) -> Arc<Adaptive> {
        let mut table = self.lock();
        if let Some(gate) = table.gates.get(&lane.name) {
            return gate.clone();
        }
        if table.gates.len() >= table.prune_at.max(KEEP) {
            // A gate some item holds (an `Arc` besides the table's) stays; so does one slowed
            // down, while the table is small. Past that, a slowed lane nobody uses is forgotten
            // too (its next item finds out again what its host admits): data names the lanes.
            let keep_slowed = table.gates.len() < 4 * KEEP;
            table
                .gates
                .retain(|_, gate| Arc::strong_count(gate) > 1 || (keep_slowed && !gate.idle()));
            table.prune_at = table.gates.len() * 2;
        }
        let gate = Arc::new(Adaptive::new(lane.width));
        table.gates.insert(lane.name.clone(), gate.clone());
        gate
    }

    /// The breaker of `lane`, made on first use with `policy`. Forgotten, like a gate, once
    /// there are many and it is closed and unused (its next failures count from nothing).
    pub(crate) fn breaker(&self, lane: &Lane, policy: &BreakerPolicy) -> Arc<Breaker> {
        let mut table = self.lock();
        if let Some(breaker) = table.breakers.get(&lane.name) {
            return breaker.clone();
        }
        if table.breakers.len() >= table.breakers_prune_at.max(KEEP) {
            // An open breaker stays while the table is small: data names the lanes.
            let keep_open = table.breakers.len() < 4 * KEEP;
            table.breakers.retain(|_, breaker| {
                Arc::strong_count(breaker) > 1 || (keep_open && breaker.is_open())
            });
            table.breakers_prune_at = table.breakers.len() * 2;
        }
        let breaker = Arc::new(Breaker::new(policy.clone()));
        table.breakers.insert(lane.name.clone(), breaker.clone());
        breaker
    }

    /// The lanes whose breakers hold their attempts back (open or half-open), by name.
    pub(crate) fn open_breakers(&self) -> Vec<String> {
        let mut open: Vec<String> = self
            .lock()
            .breakers
            .iter()
            .filter(|(_, breaker)| breaker.is_open())
            .map(|(name, _)| name.clone())
            .collect();
        open.sort_unstable();
        open
    }

    /// Lanes slowed down by their service: name, current limit and width, narrowest first.
    pub(crate) fn slowed(&self) -> Vec<(String, usize, usize)> {
        let mut slowed: Vec<_> = self
            .lock()
            .gates
            .iter()
            .filter(|(_, gate)| gate.limit() < gate.max())
            .map(|(name, gate)| (name.clone(), gate.limit(), gate.max()))
            .collect();
        slowed.sort_by(|a, b| a.1.cmp(&b.1).then_with(|| a.0.cmp(&b.0)));
        slowed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lane(name: &str, width: usize) -> Lane {
        Lane {
            name: name.to_owned(),
            width,
            breaker: false,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_lane_takes_its_width_and_others_are_not_held_back() {
        let lanes = Lanes::default();
        let a = lanes.gate(&lane("a", 2));
        let _one = a.wait_owned().await;
        let two = a.wait_owned().await;
        let third = tokio::time::timeout(std::time::Duration::from_secs(1), a.wait_owned());
        assert!(third.await.is_err(), "lane `a` is full");
        let b = lanes.gate(&lane("b", 2));
        let free = tokio::time::timeout(std::time::Duration::from_secs(1), b.wait_owned());
        assert!(free.await.is_ok(), "lane `b` is free");
        drop(two);
        let freed = tokio::time::timeout(std::time::Duration::from_secs(1), a.wait_owned());
        assert!(freed.await.is_ok(), "a place of `a` freed");
        assert!(
            Arc::ptr_eq(&a, &lanes.gate(&lane("a", 2))),
            "one gate per lane"
        );
    }

    #[test]
    fn among_many_slowed_lanes_the_unused_ones_are_forgotten() {
        let lanes = Lanes::default();
        for i in 0..8 * KEEP {
            lanes.gate(&lane(&format!("slow{i}"), 4)).overloaded();
        }
        let kept = lanes.lock().gates.len();
        assert!(kept <= 4 * KEEP + 1, "{kept} lanes kept");
    }

    #[test]
    fn a_slowed_lane_is_reported_and_idle_lanes_are_forgotten() {
        let lanes = Lanes::default();
        lanes.gate(&lane("slow", 4)).overloaded();
        for i in 0..KEEP + 10 {
            lanes.gate(&lane(&format!("host{i}"), 4));
        }
        assert_eq!(lanes.slowed(), vec![("slow".to_owned(), 3, 4)]);
        let kept = lanes.lock().gates.len();
        assert!(kept <= KEEP + 1, "idle lanes are forgotten: {kept} kept");
        assert!(
            lanes.lock().gates.contains_key("slow"),
            "a slowed lane is kept"
        );
    }
}
