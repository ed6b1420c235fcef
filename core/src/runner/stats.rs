//! What the runner knows about each stage while it runs: counters, attempt latencies, the
//! attempts in flight (for the heartbeat and the stall watchdog) and the abandoned blocking calls.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::timings::{Timings, TimingsSnapshot};

static NEXT_ATTEMPT: AtomicU64 = AtomicU64::new(1);

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

pub(crate) struct InFlight {
    pub key: Arc<str>,
    pub attempt: u32,
    pub started: Instant,
    pub timeout: Duration,
    pub warned: bool,
}

#[derive(Default)]
pub(crate) struct Counter(AtomicU64);

impl Counter {
    pub(crate) fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }
    pub(crate) fn incr(&self) {
        self.add(1);
    }
    pub(crate) fn decr(&self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
    pub(crate) fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
    pub(crate) fn set(&self, n: u64) {
        self.0.store(n, Ordering::Relaxed);
    }
}

pub(crate) struct StageStats {
    /// Attempts begun.
    pub attempts: Counter,
    pub done: Counter,
    pub failed: Counter,
    pub skipped: Counter,
    pub retries: Counter,
    pub timeouts: Counter,
    pub panics: Counter,
    pub abandoned_total: Counter,
    /// Items waiting between attempts (backoff or a retry-after hint).
    pub backing_off: Counter,
    latency: Timings,
    in_flight: Mutex<HashMap<u64, InFlight>>,
    abandoned: Mutex<HashMap<u64, (Arc<str>, Instant)>>,
}

impl Default for StageStats {
    fn default() -> Self {
        StageStats {
            attempts: Counter::default(),
            done: Counter::default(),
            failed: Counter::default(),
            skipped: Counter::default(),
            retries: Counter::default(),
            timeouts: Counter::default(),
            panics: Counter::default(),
            abandoned_total: Counter::default(),
            backing_off: Counter::default(),
            latency: Timings::default(),
            in_flight: Mutex::new(HashMap::new()),
            abandoned: Mutex::new(HashMap::new()),
        }
    }
}

/// Removes its attempt from the in-flight table when dropped.
pub(crate) struct AttemptGuard<'a> {
    stats: &'a StageStats,
    id: u64,
}

impl Drop for AttemptGuard<'_> {
    fn drop(&mut self) {
        lock(&self.stats.in_flight).remove(&self.id);
    }
}

/// Latency figures of a stage, in milliseconds.
#[derive(Debug, Clone, Copy, Serialize, PartialEq)]
pub struct Latency {
    /// Median attempt.
    pub p50_ms: f64,
    /// 95th percentile attempt.
    pub p95_ms: f64,
    /// Slowest attempt.
    pub max_ms: f64,
}

impl StageStats {
    /// An attempt began at `started`.
    pub(crate) fn begin(
        &self,
        (key, attempt): (Arc<str>, u32),
        timeout: Duration,
        started: Instant,
    ) -> AttemptGuard<'_> {
        let id = NEXT_ATTEMPT.fetch_add(1, Ordering::Relaxed);
        self.attempts.incr();
        lock(&self.in_flight).insert(
            id,
            InFlight {
                key,
                attempt,
                started,
                timeout,
                warned: false,
            },
        );
        AttemptGuard { stats: self, id }
    }

    pub(crate) fn record_latency(&self, d: Duration) {
        self.latency.record(d);
    }

    pub(crate) fn latency(&self) -> Option<Latency> {
        let h = self.latency.snapshot();
        Some(Latency {
            p50_ms: h.quantile_ms(0.5)?,
            p95_ms: h.quantile_ms(0.95)?,
            max_ms: h.max_ms()?,
        })
    }

    /// Every attempt's latency so far (those cut short by a stop are not counted).
    pub(crate) fn latencies(&self) -> TimingsSnapshot {
        self.latency.snapshot()
    }

    pub(crate) fn in_flight_count(&self) -> usize {
        lock(&self.in_flight).len()
    }

    /// The oldest attempt in flight: key and age.
    pub(crate) fn oldest(&self) -> Option<(Arc<str>, Duration)> {
        lock(&self.in_flight)
            .values()
            .min_by_key(|a| a.started)
            .map(|a| (a.key.clone(), a.started.elapsed()))
    }

    /// Every attempt in flight, oldest first: key and age.
    pub(crate) fn in_flight(&self) -> Vec<(Arc<str>, Duration)> {
        let mut all: Vec<(Arc<str>, Instant)> = lock(&self.in_flight)
            .values()
            .map(|a| (a.key.clone(), a.started))
            .collect();
        all.sort_by_key(|(_, started)| *started);
        all.into_iter()
            .map(|(key, started)| (key, started.elapsed()))
            .collect()
    }

    /// Attempts past half their timeout that were not reported yet (key and attempt, age,
    /// timeout); marks them reported.
    pub(crate) fn newly_slow(&self) -> Vec<((Arc<str>, u32), Duration, Duration)> {
        let mut out = Vec::new();
        for a in lock(&self.in_flight).values_mut() {
            let age = a.started.elapsed();
            if !a.warned && age > a.timeout / 2 {
                a.warned = true;
                out.push(((a.key.clone(), a.attempt), age, a.timeout));
            }
        }
        out
    }

    /// Attempts still in flight `beyond` past their timeout, oldest first. An async attempt can
    /// only be there if it blocks the runtime thread its timeout would fire on.
    pub(crate) fn overdue(&self, beyond: Duration) -> Vec<(Arc<str>, Duration)> {
        let mut out: Vec<(Arc<str>, Duration)> = lock(&self.in_flight)
            .values()
            .map(|a| (a.key.clone(), a.started.elapsed(), a.timeout))
            .filter(|(_, age, timeout)| *age > timeout.saturating_add(beyond))
            .map(|(key, age, _)| (key, age))
            .collect();
        out.sort_by_key(|a| std::cmp::Reverse(a.1));
        out
    }

    /// Count a blocking call that outlived its attempt. Returns its id for [`Self::returned`].
    pub(crate) fn abandon(&self, key: Arc<str>, since: Instant) -> u64 {
        let id = NEXT_ATTEMPT.fetch_add(1, Ordering::Relaxed);
        self.abandoned_total.incr();
        lock(&self.abandoned).insert(id, (key, since));
        id
    }

    /// An abandoned call finally returned: its thread is free again.
    pub(crate) fn returned(&self, id: u64) {
        lock(&self.abandoned).remove(&id);
    }

    /// Abandoned calls whose threads are still busy.
    pub(crate) fn abandoned_now(&self) -> usize {
        lock(&self.abandoned).len()
    }

    /// Their keys and ages, oldest first.
    pub(crate) fn stuck(&self) -> Vec<(String, Duration)> {
        let mut v: Vec<(String, Duration)> = lock(&self.abandoned)
            .values()
            .map(|(k, since)| (k.to_string(), since.elapsed()))
            .collect();
        v.sort_by_key(|(_, age)| std::cmp::Reverse(*age));
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tracks_in_flight_and_abandoned() {
        let s = StageStats::default();
        {
            let _a = s.begin(("a".into(), 1), Duration::from_secs(10), Instant::now());
            let _b = s.begin(("b".into(), 2), Duration::ZERO, Instant::now());
            assert_eq!(s.in_flight_count(), 2);
            assert_eq!(s.oldest().map(|(k, _)| k.to_string()).as_deref(), Some("a"));
            std::thread::sleep(Duration::from_millis(2));
            let slow = s.newly_slow();
            assert_eq!(slow.len(), 1, "only `b` is past half its timeout");
            assert_eq!(
                (&*slow[0].0 .0, slow[0].0 .1),
                ("b", 2),
                "its key and attempt"
            );
            assert!(s.newly_slow().is_empty(), "reported once");
        }
        assert_eq!(s.in_flight_count(), 0);
        let id = s.abandon("c".into(), Instant::now());
        assert_eq!(s.abandoned_now(), 1);
        s.returned(id);
        assert_eq!((s.abandoned_now(), s.abandoned_total.get()), (0, 1));
    }

    #[test]
    fn latency_percentiles() {
        let s = StageStats::default();
        assert!(s.latency().is_none());
        for ms in 1..=100 {
            s.record_latency(Duration::from_millis(ms));
        }
        let l = s.latency().expect("some");
        assert!((45.0..=55.0).contains(&l.p50_ms), "{l:?}");
        assert!((90.0..=100.0).contains(&l.p95_ms), "{l:?}");
        assert!((99.0..=101.0).contains(&l.max_ms), "{l:?}");
    }
}
