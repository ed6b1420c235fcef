//! The figures of one run of a child process, and their medians over several runs of one
//! measurement, each figure taken on its own.

use std::time::Duration;

use serde_json::Value;

use super::process::Measured;

/// The median of `figures`: the middle one once sorted (of an even count, the upper of the two
/// in the middle); None if there are none.
pub fn median<T: Ord + Copy>(figures: impl IntoIterator<Item = T>) -> Option<T> {
    let mut v: Vec<T> = figures.into_iter().collect();
    v.sort();
    v.get(v.len() / 2).copied()
}

/// [`median`] of floating-point figures, in the order of `f64::total_cmp`.
pub fn median_f64(figures: impl IntoIterator<Item = f64>) -> Option<f64> {
    let mut v: Vec<f64> = figures.into_iter().collect();
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied()
}

/// The run with the median wall time (of an even count, the slower of the two in the middle).
/// Panics if there are no runs.
pub fn median_run<R>(runs: &[R], wall: impl Fn(&R) -> Duration) -> &R {
    let mut by_wall: Vec<&R> = runs.iter().collect();
    by_wall.sort_by_key(|r| wall(r));
    by_wall[by_wall.len() / 2]
}

/// One run of a child process: the figures every bench takes of it.
pub struct Run {
    /// Items the run did (all of its batch, or those done).
    pub items: u64,
    /// From spawn to exit.
    pub wall: Duration,
    /// `ru_maxrss`, in KiB on Linux.
    pub peak_rss_kib: u64,
    /// The child's user plus system CPU time.
    pub cpu: Duration,
    /// From spawn to the `taking a new batch` event (stagewise only): start-up.
    pub starting: Option<Duration>,
    /// From `taking a new batch` to `run started` (stagewise only): taking the batch.
    pub taking: Option<Duration>,
    /// From spawn to `run started` (stagewise only): start-up and taking the batch.
    pub started: Option<Duration>,
    /// The processing window: from `run started` to `summary` (stagewise: processing and the
    /// last commit), or what a client's own clock says.
    pub window: Option<Duration>,
    /// The run's `bench.summary.json` (stagewise only).
    pub summary: Option<Value>,
}

impl Run {
    /// The figures of a measured child that did `items`, with its summary if it has one.
    pub fn new(measured: &Measured, items: u64, summary: Option<Value>) -> Run {
        Run {
            items,
            wall: measured.wall,
            peak_rss_kib: measured.peak_rss_kib,
            cpu: measured.cpu,
            starting: measured.taking,
            taking: measured
                .started
                .zip(measured.taking)
                .and_then(|(s, t)| s.checked_sub(t)),
            started: measured.started,
            window: measured.window(),
            summary,
        }
    }

    /// Items per second, process start to exit.
    pub fn items_per_sec(&self) -> f64 {
        self.items as f64 / self.wall.as_secs_f64()
    }

    /// Items per second in the processing window.
    pub fn window_rate(&self) -> Option<f64> {
        self.window.map(|w| self.items as f64 / w.as_secs_f64())
    }
}

/// The median of each figure over several runs (taken per figure): of the phases, over the
/// runs that have them.
pub struct Median {
    /// How many runs there were.
    pub runs: usize,
    /// The median run's items.
    pub items: u64,
    /// The median run's wall time.
    pub wall: Duration,
    /// The fastest and slowest runs' wall times.
    pub wall_range: (Duration, Duration),
    /// `ru_maxrss`, in KiB.
    pub peak_rss_kib: u64,
    /// The largest peak RSS of the runs.
    pub peak_rss_max_kib: u64,
    /// User plus system CPU time of the child.
    pub cpu: Duration,
    /// Spawn to `taking a new batch` (stagewise only): start-up.
    pub starting: Option<Duration>,
    /// `taking a new batch` to `run started` (stagewise only): taking the batch.
    pub taking: Option<Duration>,
    /// Spawn to `run started` (stagewise only): start-up and taking the batch.
    pub started: Option<Duration>,
    /// The processing window, as in [`Run::window`].
    pub window: Option<Duration>,
    /// The shortest and the longest processing window of the runs.
    pub window_range: Option<(Duration, Duration)>,
    /// The summary of the run with the median wall time.
    pub summary: Option<Value>,
}

impl Median {
    /// The medians of `runs`. Panics if there are none.
    pub fn of<'a>(runs: impl IntoIterator<Item = &'a Run>) -> Median {
        let runs: Vec<&Run> = runs.into_iter().collect();
        let middle = median_run(&runs, |r| r.wall);
        let walls = || runs.iter().map(|r| r.wall);
        let windows = || runs.iter().filter_map(|r| r.window);
        Median {
            runs: runs.len(),
            items: middle.items,
            wall: middle.wall,
            wall_range: (
                walls().min().unwrap_or_default(),
                walls().max().unwrap_or_default(),
            ),
            peak_rss_kib: median(runs.iter().map(|r| r.peak_rss_kib)).unwrap_or(0),
            peak_rss_max_kib: runs.iter().map(|r| r.peak_rss_kib).max().unwrap_or(0),
            cpu: median(runs.iter().map(|r| r.cpu)).unwrap_or_default(),
            starting: median(runs.iter().filter_map(|r| r.starting)),
            taking: median(runs.iter().filter_map(|r| r.taking)),
            started: median(runs.iter().filter_map(|r| r.started)),
            window: median(windows()),
            window_range: windows().min().zip(windows().max()),
            summary: middle.summary.clone(),
        }
    }

    /// Items per second of the median run, process start to exit.
    pub fn items_per_sec(&self) -> f64 {
        self.items as f64 / self.wall.as_secs_f64()
    }

    /// Items/s of the slowest and the fastest run.
    pub fn items_per_sec_range(&self) -> (f64, f64) {
        let rate = |d: Duration| self.items as f64 / d.as_secs_f64();
        (rate(self.wall_range.1), rate(self.wall_range.0))
    }

    /// Items per second in the median processing window.
    pub fn window_rate(&self) -> Option<f64> {
        self.window.map(|w| self.items as f64 / w.as_secs_f64())
    }

    /// The median peak RSS, in bytes.
    pub fn peak_rss_bytes(&self) -> f64 {
        self.peak_rss_kib as f64 * 1024.0
    }

    /// The largest peak RSS of the runs, in bytes.
    pub fn peak_rss_max_bytes(&self) -> f64 {
        self.peak_rss_max_kib as f64 * 1024.0
    }

    /// A stage's attempt latency from the summary: "p50 … ms, p95 … ms, max … ms", p50 and p95
    /// with `decimals` decimals, max with one.
    pub fn stage_latency(&self, stage: &str, decimals: usize) -> Option<String> {
        let stages = self.summary.as_ref()?["stages"].as_array()?;
        let l = &stages.iter().find(|s| s["name"] == stage)?["latency"];
        Some(format!(
            "p50 {:.*} ms, p95 {:.*} ms, max {:.1} ms",
            decimals,
            l["p50_ms"].as_f64()?,
            decimals,
            l["p95_ms"].as_f64()?,
            l["max_ms"].as_f64()?
        ))
    }
}
