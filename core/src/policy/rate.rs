//! The rate-limit layer: attempts of a stage start no faster than its `rate_limit`, evenly
//! spaced (GCRA with no burst): at `"60/min"`, one a second, so no minute ever sees more than 60
//! starts (plus the one at its edge). Waiting for a slot does not count against the attempt's
//! timeout, and a stop request ends the wait at once.
//!
//! The limiter reads tokio's clock, so waits follow the runtime's timers (and paused time in
//! tests).

use std::time::Duration;

use governor::clock::Clock;
use governor::middleware::NoOpMiddleware;
use governor::state::{InMemoryState, NotKeyed};
use tokio_util::sync::CancellationToken;

use super::RateLimit;

/// A rate limit as a GCRA quota: attempts evenly spaced at `per / count`, with no burst.
fn quota(rate: RateLimit) -> governor::Quota {
    let period = (rate.per / rate.count).max(Duration::from_nanos(1));
    governor::Quota::with_period(period).expect("the period is at least 1ns")
}

/// Tokio's clock, as the limiter reads time.
#[derive(Debug, Clone, Copy, Default)]
struct TokioClock;

impl Clock for TokioClock {
    type Instant = std::time::Instant;

    fn now(&self) -> Self::Instant {
        tokio::time::Instant::now().into_std()
    }
}

type Limiter =
    governor::RateLimiter<NotKeyed, InMemoryState, TokioClock, NoOpMiddleware<std::time::Instant>>;

/// One stage's rate limit.
#[derive(Debug)]
pub(crate) struct RateGate {
    limiter: Limiter,
}

/// The run stopped while an attempt waited for its slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Stopped;

impl RateGate {
    pub(crate) fn new(rate: RateLimit) -> Self {
        RateGate {
            limiter: governor::RateLimiter::direct_with_clock(quota(rate), TokioClock),
        }
    }

    /// Wait for the next slot, or until `stop` is cancelled.
    pub(crate) async fn ready(&self, stop: &CancellationToken) -> Result<(), Stopped> {
        loop {
            let wait = match self.limiter.check() {
                Ok(()) => return Ok(()),
                Err(not_until) => not_until.wait_time_from(TokioClock.now()),
            };
            tokio::select! {
                biased;
                () = stop.cancelled() => return Err(Stopped),
                () = tokio::time::sleep(wait) => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use tokio::time::Instant;

    #[test]
    fn rate_limits_space_attempts_evenly() {
        use governor::clock::FakeRelativeClock;
        let clock = FakeRelativeClock::default();
        let rate = RateLimit {
            count: 60,
            per: Duration::from_secs(60),
        };
        let limiter = governor::RateLimiter::direct_with_clock(quota(rate), clock.clone());
        assert!(limiter.check().is_ok(), "the first attempt goes at once");
        assert!(limiter.check().is_err(), "no burst: the second waits");
        clock.advance(Duration::from_millis(999));
        assert!(limiter.check().is_err(), "60/min is one a second");
        clock.advance(Duration::from_millis(1));
        assert!(limiter.check().is_ok());
        // Over a minute, no more than 60 (+1 at the edge) get through.
        let mut allowed = 0;
        for _ in 0..600 {
            clock.advance(Duration::from_millis(100));
            allowed += usize::from(limiter.check().is_ok());
        }
        assert_eq!(allowed, 60);
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
