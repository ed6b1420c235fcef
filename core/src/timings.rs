//! Durations recorded in bounded memory: a histogram (two significant digits, from a
//! microsecond to a day) and their exact sum. A stage's attempts and the checkpoint's commits
//! are timed with it; the summary reads percentiles from it, `/metrics` cumulative buckets.

use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use hdrhistogram::Histogram;

/// The longest duration kept as itself; longer ones are counted as this.
const LONGEST_US: u64 = 24 * 3600 * 1_000_000;

/// Durations recorded so far.
pub(crate) struct Timings(Mutex<Recorded>);

struct Recorded {
    micros: Histogram<u64>,
    /// The sum of every duration recorded, in microseconds (the histogram keeps none).
    sum_us: u128,
}

impl Default for Timings {
    fn default() -> Self {
        Timings(Mutex::new(Recorded {
            micros: Histogram::new_with_bounds(1, LONGEST_US, 2)
                .expect("static histogram bounds are valid"),
            sum_us: 0,
        }))
    }
}

/// What [`Timings`] held at one moment.
#[derive(Clone)]
pub(crate) struct TimingsSnapshot {
    micros: Histogram<u64>,
    sum_us: u128,
}

impl Timings {
    fn recorded(&self) -> MutexGuard<'_, Recorded> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Count `d`.
    pub(crate) fn record(&self, d: Duration) {
        let us = u64::try_from(d.as_micros())
            .unwrap_or(u64::MAX)
            .clamp(1, LONGEST_US);
        let mut r = self.recorded();
        r.sum_us += u128::from(us);
        let _ = r.micros.record(us);
    }

    /// A copy of what was recorded so far.
    pub(crate) fn snapshot(&self) -> TimingsSnapshot {
        let r = self.recorded();
        TimingsSnapshot {
            micros: r.micros.clone(),
            sum_us: r.sum_us,
        }
    }
}

impl TimingsSnapshot {
    /// How many durations.
    pub(crate) fn count(&self) -> u64 {
        self.micros.len()
    }

    /// Their sum, in seconds.
    pub(crate) fn sum_secs(&self) -> f64 {
        self.sum_us as f64 / 1e6
    }

    /// The duration at quantile `q` (0..=1), in milliseconds; `None` when none was recorded.
    pub(crate) fn quantile_ms(&self, q: f64) -> Option<f64> {
        (!self.micros.is_empty()).then(|| self.micros.value_at_quantile(q) as f64 / 1000.0)
    }

    /// The longest, in milliseconds; `None` when none was recorded.
    pub(crate) fn max_ms(&self) -> Option<f64> {
        (!self.micros.is_empty()).then(|| self.micros.max() as f64 / 1000.0)
    }

    /// How many durations were at most each of `bounds` (seconds, ascending): a histogram's
    /// cumulative buckets. Exact to the histogram's two significant digits.
    pub(crate) fn cumulative(&self, bounds: &[f64]) -> Vec<u64> {
        bounds
            .iter()
            .map(|bound| {
                let us = (bound * 1e6).clamp(0.0, LONGEST_US as f64) as u64;
                if us == 0 {
                    return 0;
                }
                self.micros.count_between(1, us)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_counts_and_buckets() {
        let t = Timings::default();
        for ms in [1, 2, 3, 40, 500, 500, 2_000] {
            t.record(Duration::from_millis(ms));
        }
        let s = t.snapshot();
        assert_eq!(s.count(), 7);
        assert!((s.sum_secs() - 3.046).abs() < 1e-9, "{}", s.sum_secs());
        assert_eq!(
            s.cumulative(&[0.001, 0.005, 0.05, 0.5, 1.0, 10.0]),
            [1, 3, 4, 6, 6, 7]
        );
        // To the histogram's two significant digits.
        let max = s.max_ms().expect("recorded");
        assert!((2000.0..2020.0).contains(&max), "{max}");
        assert!(Timings::default().snapshot().quantile_ms(0.5).is_none());
    }
}
