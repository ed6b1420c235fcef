//! The rate-limit layer: attempts of a stage start no faster than its `rate_limit`, evenly
//! spaced with no burst: at `"60/min"`, one a second, so no minute ever sees more than 60 starts
//! (plus the one at its edge). Waiting for a slot does not count against the attempt's timeout,
//! and a stop request ends the wait at once.
//!
//! Each attempt reserves the next slot of the schedule — `period` after the last one reserved,
//! or now if the stage has been idle — and sleeps until it. The schedule advances from the
//! reserved slots, not from when the sleeping attempts happen to wake, so a timer that fires a
//! millisecond late (tokio's timers have millisecond resolution) delays one start, not every
//! later one: the rate holds at thousands per second. (A GCRA limiter re-anchors its schedule on
//! a late arrival, which costs about a millisecond a slot here.) Waiters start in the order
//! they asked. The schedule reads tokio's clock, so it follows paused time in tests.

use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::RateLimit;

/// One stage's rate limit.
#[derive(Debug)]
pub(crate) struct RateGate {
    period: Duration,
    /// The earliest start the next reservation may have.
    next: Mutex<Option<Instant>>,
}

/// The run stopped while an attempt waited for its slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Stopped;

impl RateGate {
    pub(crate) fn new(rate: RateLimit) -> Self {
        RateGate {
            period: (rate.per / rate.count).max(Duration::from_nanos(1)),
            next: Mutex::new(None),
        }
    }

    /// Reserve the next slot: now, if the schedule is behind; else the next one due.
    fn reserve(&self) -> Instant {
        let now = Instant::now();
        let mut next = self
            .next
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let slot = next.map_or(now, |due| due.max(now));
        *next = Some(slot + self.period);
        slot
    }

    /// Wait for the next slot, or until `stop` is cancelled.
    pub(crate) async fn ready(&self, stop: &CancellationToken) -> Result<(), Stopped> {
        let slot = self.reserve();
        if slot <= Instant::now() {
            return Ok(());
        }
        tokio::select! {
            biased;
            () = stop.cancelled() => Err(Stopped),
            () = tokio::time::sleep_until(slot) => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[tokio::test(start_paused = true)]
    async fn no_window_sees_more_starts_than_the_rate_allows() {
        let gate = RateGate::new(RateLimit {
            count: 60,
            per: Duration::from_secs(60),
        });
        let stop = CancellationToken::new();
        let began = Instant::now();
        let mut starts = Vec::new();
        for _ in 0..120 {
            gate.ready(&stop).await.expect("not stopped");
            starts.push(began.elapsed());
        }
        assert_eq!(starts[0], Duration::ZERO, "the first attempt goes at once");
        assert_eq!(
            starts[1],
            Duration::from_secs(1),
            "no burst: 60/min is one a second"
        );
        for window in starts.windows(61) {
            assert!(
                window[60] - window[0] >= Duration::from_secs(60),
                "61 starts within a minute"
            );
        }
    }

    #[tokio::test(start_paused = true)]
    async fn late_wakeups_do_not_push_later_slots_back() {
        let gate = RateGate::new(RateLimit {
            count: 1000,
            per: Duration::from_secs(1),
        });
        let ms = Duration::from_millis;
        let t0 = Instant::now();
        assert_eq!(gate.reserve(), t0);
        assert_eq!(gate.reserve(), t0 + ms(1));
        // The waiter for the 1 ms slot wakes 0.7 ms late; the next slot stays where it was.
        tokio::time::advance(Duration::from_micros(1700)).await;
        assert_eq!(gate.reserve(), t0 + ms(2));
        // Another wakes 0.9 ms late: still on schedule.
        tokio::time::advance(Duration::from_micros(1200)).await;
        assert_eq!(gate.reserve(), t0 + ms(3));
        // Only a caller past every reserved slot (the stage idle) starts from now.
        tokio::time::advance(ms(10)).await;
        assert_eq!(gate.reserve(), t0 + Duration::from_micros(12_900));
    }

    #[tokio::test(start_paused = true)]
    async fn an_idle_stage_starts_at_once_without_a_burst() {
        let gate = RateGate::new(RateLimit {
            count: 1000,
            per: Duration::from_secs(1),
        });
        let stop = CancellationToken::new();
        gate.ready(&stop).await.expect("not stopped");
        // Idle for a while: the next attempt does not wait, and no burst built up meanwhile.
        tokio::time::sleep(Duration::from_secs(5)).await;
        let began = Instant::now();
        gate.ready(&stop).await.expect("not stopped");
        assert_eq!(began.elapsed(), Duration::ZERO);
        gate.ready(&stop).await.expect("not stopped");
        assert_eq!(began.elapsed(), Duration::from_millis(1));
        // A thousand more take a second: one a millisecond.
        for _ in 0..1000 {
            gate.ready(&stop).await.expect("not stopped");
        }
        assert_eq!(began.elapsed(), Duration::from_millis(1001));
    }

    #[tokio::test(start_paused = true)]
    async fn waiting_attempts_start_one_period_apart() {
        let gate = Arc::new(RateGate::new(RateLimit {
            count: 10,
            per: Duration::from_secs(1),
        }));
        let stop = CancellationToken::new();
        let began = Instant::now();
        let mut waiters = Vec::new();
        for _ in 0..5 {
            let (gate, stop) = (gate.clone(), stop.clone());
            waiters.push(tokio::spawn(async move {
                gate.ready(&stop).await.expect("not stopped");
                began.elapsed()
            }));
        }
        let mut starts = Vec::new();
        for w in waiters {
            starts.push(w.await.expect("no panic").as_millis());
        }
        starts.sort_unstable();
        assert_eq!(starts, [0, 100, 200, 300, 400]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_stop_ends_the_wait_for_a_slot() {
        let gate = RateGate::new(RateLimit {
            count: 1,
            per: Duration::from_secs(3600),
        });
        let stop = CancellationToken::new();
        gate.ready(&stop).await.expect("the first slot is free");
        let canceller = stop.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(5)).await;
            canceller.cancel();
        });
        let began = Instant::now();
        assert_eq!(gate.ready(&stop).await, Err(Stopped));
        assert_eq!(began.elapsed(), Duration::from_secs(5));
    }
}
