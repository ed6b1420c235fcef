//! The metric families of a run, read at each scrape from the same counters the heartbeat and
//! the summary read (nothing is counted twice, so the last values are the summary's). Every
//! metric name is here.

use prometheus::proto::{
    Bucket, Counter, Gauge, Histogram, LabelPair, Metric, MetricFamily, MetricType,
};

use super::super::{Shared, StageRt};
use super::Ended;
use crate::timings::TimingsSnapshot;

/// Items that ended at a stage in this process, by `outcome` (`done`: passed on).
pub(crate) const ITEMS: &str = "stagewise_items_total";
/// Attempts begun at a stage.
pub(crate) const ATTEMPTS: &str = "stagewise_attempts_total";
/// Attempts after an item's first at a stage.
pub(crate) const RETRIES: &str = "stagewise_retries_total";
/// Attempts that timed out.
pub(crate) const TIMEOUTS: &str = "stagewise_timeouts_total";
/// Attempts that panicked.
pub(crate) const PANICS: &str = "stagewise_panics_total";
/// Blocking calls abandoned after their deadline.
pub(crate) const ABANDONED: &str = "stagewise_abandoned_calls_total";
/// Abandoned calls whose threads are still busy.
pub(crate) const ABANDONED_NOW: &str = "stagewise_abandoned_calls";
/// Attempts under way.
pub(crate) const IN_FLIGHT: &str = "stagewise_in_flight";
/// Items waiting between attempts.
pub(crate) const BACKING_OFF: &str = "stagewise_backing_off";
/// Whether a stage's circuit breaker holds its attempts back (1) or not (0).
pub(crate) const BREAKER_OPEN: &str = "stagewise_breaker_open";
/// How many of a stage's lanes have an open circuit breaker.
pub(crate) const LANE_BREAKERS_OPEN: &str = "stagewise_lane_breakers_open";
/// Attempts a stage allows at once now (lowered when its service asks it to slow down).
pub(crate) const CONCURRENCY: &str = "stagewise_concurrency";
/// Attempt latency.
pub(crate) const ATTEMPT_SECONDS: &str = "stagewise_attempt_duration_seconds";
/// A stage's own figures (an `llm` stage's tokens and cost): `stagewise_stage_<figure>_total`.
pub(crate) const FIGURE_PREFIX: &str = "stagewise_stage_";
/// The run's items by state, all processes' (the summary's `done`, `failed`, `skipped`,
/// `remaining`).
pub(crate) const RUN_ITEMS: &str = "stagewise_run_items";
/// Items in the run's batch.
pub(crate) const RUN_BATCH: &str = "stagewise_run_batch_items";
/// The run's number in the checkpoint store.
pub(crate) const RUN_ID: &str = "stagewise_run_id";
/// How long a checkpoint commit took.
pub(crate) const COMMIT_SECONDS: &str = "stagewise_checkpoint_commit_duration_seconds";
/// The exit code, once the run has ended.
pub(crate) const EXIT_CODE: &str = "stagewise_exit_code";
/// How long the process ran, once the run has ended.
pub(crate) const ELAPSED: &str = "stagewise_run_elapsed_seconds";

/// Upper bounds of the attempt latency buckets, in seconds.
const ATTEMPT_BUCKETS: &[f64] = &[
    0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
    600.0,
];
/// Upper bounds of the commit latency buckets, in seconds.
const COMMIT_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Every family of the run: its stages' and its items' once it has a batch (`shared`), and its
/// exit once it has ended. A family without a metric is left out (the format has none).
pub(super) fn gather(shared: Option<&Shared>, ended: Option<&Ended>) -> Vec<MetricFamily> {
    let mut out = Vec::new();
    if let Some(shared) = shared {
        stages(&shared.stages, &mut out);
        let t = &shared.totals;
        out.push(family(
            RUN_ITEMS,
            "The run's items by state, in every process (the summary's figures).",
            MetricType::GAUGE,
            [
                ("done", t.done.get()),
                ("failed", t.failed.get()),
                ("skipped", t.skipped.get()),
                ("remaining", t.remaining()),
            ]
            .into_iter()
            .map(|(state, n)| gauge(&[("state", state)], n as f64))
            .collect(),
        ));
        out.push(family(
            RUN_BATCH,
            "Items in the run's batch.",
            MetricType::GAUGE,
            vec![gauge(&[], t.items as f64)],
        ));
        out.push(family(
            RUN_ID,
            "The run's number in the checkpoint store.",
            MetricType::GAUGE,
            vec![gauge(&[], shared.run as f64)],
        ));
        out.push(family(
            COMMIT_SECONDS,
            "How long each checkpoint commit took (group commits of item updates).",
            MetricType::HISTOGRAM,
            vec![histogram(
                &[],
                &shared.checkpoint.commit_latencies(),
                COMMIT_BUCKETS,
            )],
        ));
    }
    if let Some(ended) = ended {
        out.push(family(
            EXIT_CODE,
            "The process's exit code (0 finished, 1 finished with failures or no progress, 3 aborted, 75 interrupted).",
            MetricType::GAUGE,
            vec![gauge(&[], f64::from(ended.exit_code))],
        ));
        out.push(family(
            ELAPSED,
            "How long the process ran, in seconds.",
            MetricType::GAUGE,
            vec![gauge(&[], ended.elapsed_secs)],
        ));
    }
    out.retain(|f| !f.get_metric().is_empty());
    out
}

/// A family with a metric per stage: its name, help, type, and the stage's value.
type PerStage<'a> = (&'a str, &'a str, MetricType, &'a dyn Fn(&StageRt) -> f64);

/// The families with a metric per stage.
fn stages(stages: &[StageRt], out: &mut Vec<MetricFamily>) {
    let per_stage = |name: &str, help: &str, kind: MetricType, value: &dyn Fn(&StageRt) -> f64| {
        let metrics = stages
            .iter()
            .map(|s| {
                let labels = [("stage", &*s.name)];
                match kind {
                    MetricType::COUNTER => counter(&labels, value(s)),
                    _ => gauge(&labels, value(s)),
                }
            })
            .collect();
        family(name, help, kind, metrics)
    };
    out.push(family(
        ITEMS,
        "Items that ended at the stage in this process: passed on (done), failed, or skipped.",
        MetricType::COUNTER,
        stages
            .iter()
            .flat_map(|s| {
                let st = &s.stats;
                [
                    ("done", st.done.get()),
                    ("failed", st.failed.get()),
                    ("skipped", st.skipped.get()),
                ]
                .map(|(outcome, n)| counter(&[("stage", &s.name), ("outcome", outcome)], n as f64))
            })
            .collect(),
    ));
    use MetricType::{COUNTER, GAUGE};
    let rows: [PerStage<'_>; 11] = [
        (ATTEMPTS, "Attempts begun at the stage.", COUNTER, &|s| s.stats.attempts.get() as f64),
        (RETRIES, "Attempts after an item's first at the stage.", COUNTER, &|s| s.stats.retries.get() as f64),
        (TIMEOUTS, "Attempts that timed out.", COUNTER, &|s| s.stats.timeouts.get() as f64),
        (PANICS, "Attempts that panicked.", COUNTER, &|s| s.stats.panics.get() as f64),
        (ABANDONED, "Blocking calls abandoned after their deadline (their threads stay taken until they return).", COUNTER, &|s| s.stats.abandoned_total.get() as f64),
        (ABANDONED_NOW, "Abandoned blocking calls that have not returned yet.", GAUGE, &|s| s.stats.abandoned_now() as f64),
        (IN_FLIGHT, "Attempts under way.", GAUGE, &|s| s.stats.in_flight_count() as f64),
        (BACKING_OFF, "Items waiting between attempts (a backoff or a retry-after hint).", GAUGE, &|s| s.stats.backing_off.get() as f64),
        (CONCURRENCY, "Attempts the stage allows at once now: its `concurrency`, lower while its service asks it to slow down.", GAUGE, &|s| s.adaptive.limit() as f64),
        (BREAKER_OPEN, "1 while the stage's circuit breaker holds its attempts back (open or half-open), else 0.", GAUGE, &|s| f64::from(u8::from(s.breaker.as_ref().is_some_and(|b| b.is_open())))),
        (LANE_BREAKERS_OPEN, "Lanes (hosts, for `http-download` with `per_host_breaker`) whose circuit breakers hold their attempts back.", GAUGE, &|s| s.lanes.open_breakers().len() as f64),
    ];
    for (name, help, kind, value) in rows {
        out.push(per_stage(name, help, kind, value));
    }
    out.push(family(
        ATTEMPT_SECONDS,
        "How long the stage's attempts took (attempts cut short by a stop are not counted).",
        MetricType::HISTOGRAM,
        stages
            .iter()
            .map(|s| histogram(&[("stage", &s.name)], &s.stats.latencies(), ATTEMPT_BUCKETS))
            .collect(),
    ));
    // A stage's own figures, a family each (tokens and cost are not one unit), with a metric for
    // every stage that has the figure.
    let mut figures: std::collections::BTreeMap<String, Vec<Metric>> = Default::default();
    for s in stages {
        for (figure, value) in s.meter.snapshot() {
            figures
                .entry(figure)
                .or_default()
                .push(counter(&[("stage", &s.name)], value));
        }
    }
    for (figure, metrics) in figures {
        let name = format!("{FIGURE_PREFIX}{}_total", metric_word(&figure));
        let help = format!("The stage's own figure `{figure}`, as the summary's `figures` show it (an `llm` stage's calls, cache hits, tokens, cost).");
        out.push(family(&name, &help, MetricType::COUNTER, metrics));
    }
}

/// `word` as a part of a metric name: letters, digits and `_`, lower case.
fn metric_word(word: &str) -> String {
    word.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '_'
            }
        })
        .collect()
}

fn family(name: &str, help: &str, kind: MetricType, metrics: Vec<Metric>) -> MetricFamily {
    let mut f = MetricFamily::default();
    f.set_name(name.to_owned());
    f.set_help(help.to_owned());
    f.set_field_type(kind);
    f.set_metric(metrics);
    f
}

fn labelled(labels: &[(&str, &str)]) -> Metric {
    Metric::from_label(
        labels
            .iter()
            .map(|(name, value)| {
                let mut pair = LabelPair::default();
                pair.set_name((*name).to_owned());
                pair.set_value((*value).to_owned());
                pair
            })
            .collect(),
    )
}

fn counter(labels: &[(&str, &str)], value: f64) -> Metric {
    let mut m = labelled(labels);
    let mut c = Counter::default();
    c.set_value(value);
    m.set_counter(c);
    m
}

fn gauge(labels: &[(&str, &str)], value: f64) -> Metric {
    let mut m = labelled(labels);
    let mut g = Gauge::default();
    g.set_value(value);
    m.set_gauge(g);
    m
}

fn histogram(labels: &[(&str, &str)], timings: &TimingsSnapshot, bounds: &[f64]) -> Metric {
    let mut m = labelled(labels);
    let mut h = Histogram::default();
    h.set_sample_count(timings.count());
    h.set_sample_sum(timings.sum_secs());
    h.set_bucket(
        bounds
            .iter()
            .zip(timings.cumulative(bounds))
            .map(|(bound, count)| {
                let mut b = Bucket::default();
                b.set_upper_bound(*bound);
                b.set_cumulative_count(count);
                b
            })
            .collect(),
    );
    m.set_histogram(h);
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn figure_names_are_metric_words() {
        assert_eq!(metric_word("tokens_in"), "tokens_in");
        assert_eq!(metric_word("Cache-Hits.2"), "cache_hits_2");
    }
}
